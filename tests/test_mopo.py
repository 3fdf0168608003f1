"""MOPO: SAC on penalised ensemble rollouts, run by the ordinary Trainer (fitting its own
dynamics ensemble, or using a dynamics run's), resumed bit-identically and exported like any
MLP policy. Small and fast: the linear system of test_dynamics, no env evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_dynamics import linear_dataset

from offrl_robot import cli
from offrl_robot.algos import REGISTRY
from offrl_robot.algos.dynamics import fit_dynamics
from offrl_robot.algos.mopo import MOPO
from offrl_robot.errors import ConfigError
from offrl_robot.registry import register_termination
from offrl_robot.train import TrainConfig, Trainer, list_checkpoints, load_checkpoint

# The self-fitted ensemble of these tests: small, a short step cap; 2 of its 3 members are elites.
OWN_DYNAMICS = {"members": 3, "hidden_sizes": [32, 32]}
ELITES = 2


def x0_positive(obs: object, act: object, next_obs: object) -> object:
    """A termination rule for the linear system of these tests: the task ends when x0 > 0.3."""
    return next_obs[..., 0] > 0.3  # type: ignore[index]


register_termination("test_x0_positive", x0_positive)


@pytest.fixture(scope="module")
def dynamics_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    dataset = linear_dataset(2000)
    run = tmp_path_factory.mktemp("mopo") / "dyn"
    config = TrainConfig(
        algo="dynamics",
        steps=300,
        threads=1,
        progress=False,
        algo_config={"members": 3, "hidden_sizes": [32, 32]},
    )
    fit_dynamics(config, dataset, run_dir=run)
    return run, dataset


def mopo_config(dynamics: Path, penalty: float, steps: int = 60, **algo_config: object) -> TrainConfig:
    return TrainConfig(
        algo="mopo",
        steps=steps,
        seeds=[0, 1],
        batch_size=64,
        eval_every=0,
        log_every=20,
        checkpoint_every=0,
        progress=False,
        threads=1,
        algo_config={
            "dynamics_checkpoint": str(dynamics),
            "hidden_sizes": [32, 32],
            "penalty": penalty,
            "rollout_length": 3,
            "rollout_every": 5,
            "model_buffer_size": 1000,
            "elites": ELITES,
            **algo_config,
        },
    )


def test_mopo_trains_on_penalised_rollouts_and_exports(
    dynamics_run: tuple[Path, object], tmp_path: Path
) -> None:
    from offrl_robot.export import export_checkpoint

    dynamics, dataset = dynamics_run
    summary = Trainer(mopo_config(dynamics, penalty=1.0), dataset=dataset, run_dir=tmp_path / "run").fit()
    state = load_checkpoint(summary["checkpoint"])
    # 60 updates, a rollout of 3 steps x 64 states every 5: 12 rollouts -> 1000 (full ring)
    full = {"cursor": [(12 * 3 * 64) % 1000] * 2, "filled": [1000] * 2}  # no terminals: every row kept
    assert state["optimizer_state"]["model_buffer"] == full
    assert state["optimizer_state"]["termination"] == "none"  # auto: no task, no terminals in the data
    rewards = state["algo_state"]["model_rewards"]
    assert rewards.shape == (2, 1000) and torch.isfinite(rewards).all()
    # the penalty lowers the model reward below the reward head's own prediction
    algo = Trainer(mopo_config(dynamics, penalty=1.0), dataset=dataset, run_dir=tmp_path / "x")._build_algo()
    algo.load_state_dict(state["algo_state"])
    obs_n, actions = algo.model_obs[:, :200], algo.model_actions[:, :200]
    torch.manual_seed(0)
    _, penalised, _ = algo._model_step(obs_n, actions)
    algo.config.penalty = 0.0
    torch.manual_seed(0)
    _, unpenalised, _ = algo._model_step(obs_n, actions)
    assert bool((penalised < unpenalised).all())
    result = export_checkpoint(summary["checkpoint"], tmp_path / "mopo.onnx", dataset=dataset)
    assert result.algorithm == "mopo" and result.parity.max_unit_diff <= 1e-5


def test_mopo_is_deterministic_per_seed(dynamics_run: tuple[Path, object], tmp_path: Path) -> None:
    dynamics, dataset = dynamics_run
    first = Trainer(mopo_config(dynamics, 1.0, steps=20), dataset=dataset, run_dir=tmp_path / "a").fit()
    second = Trainer(mopo_config(dynamics, 1.0, steps=20), dataset=dataset, run_dir=tmp_path / "b").fit()
    a = load_checkpoint(first["checkpoint"])["algo_state"]
    b = load_checkpoint(second["checkpoint"])["algo_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mopo_config_errors(dynamics_run: tuple[Path, object], tmp_path: Path) -> None:
    from offrl_robot.algos.mopo import MOPOConfig

    with pytest.raises(ConfigError, match="both set"):
        MOPOConfig(dynamics_checkpoint="x", dynamics={"members": 3})
    with pytest.raises(ConfigError, match=r"algo_config\.dynamics: .*unknown key\(s\) \['memebrs'\]"):
        MOPOConfig(dynamics={"memebrs": 3})
    with pytest.raises(ConfigError, match=r"algo_config\.dynamics: .*members 1"):
        MOPOConfig(dynamics={"members": 1})
    with pytest.raises(ConfigError, match="dynamics_steps"):
        MOPOConfig(dynamics_steps=0)
    with pytest.raises(ConfigError, match="real_fraction"):
        MOPOConfig(dynamics_checkpoint="x", real_fraction=1.0)
    dynamics, _ = dynamics_run
    with pytest.raises(ConfigError, match="models obs 4"):
        MOPO(5, 2, 1, MOPOConfig(dynamics_checkpoint=str(dynamics)))
    with pytest.raises(ConfigError, match=r"elites 5 exceeds the 3 members of dynamics_checkpoint"):
        MOPO(4, 2, 1, MOPOConfig(dynamics_checkpoint=str(dynamics)))
    with pytest.raises(ConfigError, match=r"algo_config\.elites 4: must be between 1 and the ensemble's 3"):
        MOPOConfig(dynamics=OWN_DYNAMICS, elites=4)
    with pytest.raises(ConfigError, match=r"termination 'hoper' is not a registered termination function"):
        MOPOConfig(termination="hoper")
    with pytest.raises(ConfigError, match=r"uncertainty 'epistemic'"):
        MOPOConfig(uncertainty="epistemic")
    defaults = MOPOConfig()
    assert np.isfinite(defaults.penalty) and defaults.backup_entropy
    assert (defaults.dynamics_config().members, defaults.elites) == (7, 5)  # the paper's 5 of 7


def own_config(steps: int, seeds: list[int], checkpoint_every: int = 0, **algo_config: object) -> TrainConfig:
    """MOPO from its defaults plus small nets: no dynamics_checkpoint, so it fits its own."""
    return TrainConfig(
        algo="mopo",
        steps=steps,
        seeds=seeds,
        batch_size=64,
        eval_every=0,
        log_every=10,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=10,
        progress=False,
        threads=1,
        algo_config={
            "hidden_sizes": [32, 32],
            "dynamics": OWN_DYNAMICS,
            "dynamics_steps": 150,
            "elites": ELITES,
            "rollout_length": 2,
            "rollout_every": 5,
            "model_buffer_size": 500,
            **algo_config,
        },
    )


def test_mopo_registered_and_fits_its_own_dynamics_per_seed(tmp_path: Path) -> None:
    """`--algo mopo` with no dynamics checkpoint: each seed's ensemble is exactly what
    `train --algo dynamics --seeds s` fits on the same data, so seed 1 of a 2-seed run has the
    model of a 1-seed run with seed 1, and the model is in the checkpoint."""
    assert REGISTRY["mopo"] is MOPO
    dataset = linear_dataset(1500)
    trainer = Trainer(own_config(10, [0, 1]), dataset=dataset, run_dir=tmp_path / "two")
    state = load_checkpoint(trainer.fit()["checkpoint"])
    fits = state["optimizer_state"]["dynamics_fit"]
    assert len(fits) == 2 and all(f["steps_run"] <= 150 and f["holdout_mse"] < 1.0 for f in fits), fits
    alone = fit_dynamics(
        TrainConfig(
            algo="dynamics", steps=150, seeds=[1], algo_config=OWN_DYNAMICS, progress=False, threads=1
        ),
        dataset,
        write=False,
    ).model.state_dict()
    for name, value in alone.items():
        assert torch.equal(state["algo_state"][f"dynamics.1.{name}"], value), name
    assert not torch.equal(
        state["algo_state"]["dynamics.0.net.layers.0.weight"], alone["net.layers.0.weight"]
    )
    single = Trainer(own_config(10, [1]), dataset=dataset, run_dir=tmp_path / "one")
    single_state = load_checkpoint(single.fit()["checkpoint"])["algo_state"]
    for name, value in alone.items():
        assert torch.equal(single_state[f"dynamics.0.{name}"], value), name


def test_mopo_resume_is_bit_identical_and_does_not_refit(tmp_path: Path) -> None:
    """Stop after the first checkpoint (as a SIGKILL would leave it), resume, compare with a
    straight run: weights (dynamics included), optimiser, model buffer, sampler, RNG."""
    from test_resume import assert_same

    dataset = linear_dataset(1500)
    rule = {"termination": "test_x0_positive"}  # rollouts that end: per-seed buffer fill levels differ
    straight = Trainer(
        own_config(40, [0, 1], checkpoint_every=20, **rule), dataset=dataset, run_dir=tmp_path / "a"
    )
    straight.fit()
    Trainer(
        own_config(20, [0, 1], checkpoint_every=20, **rule), dataset=dataset, run_dir=tmp_path / "b"
    ).fit()
    resumed = Trainer(
        own_config(40, [0, 1], checkpoint_every=20, **rule),
        dataset=dataset,
        run_dir=tmp_path / "b",
        resume=True,
    )

    def no_refit(_dataset: object) -> None:
        raise AssertionError("a resumed MOPO run must restore its dynamics model, not fit it again")

    original_build = resumed._build_algo

    def build() -> MOPO:
        algo = original_build()
        algo.prepare = no_refit  # type: ignore[method-assign]
        return algo

    resumed._build_algo = build  # type: ignore[method-assign]
    summary = resumed.fit()
    assert summary["resumed_from_step"] == 20
    a = load_checkpoint(list_checkpoints(tmp_path / "a")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    assert a["step"] == b["step"] == 40
    for key in ("algo_state", "optimizer_state", "sampler", "rng"):
        assert_same(a[key], b[key], key)


def test_mopo_from_defaults_exports_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`offrl-robot train --algo mopo` then `offrl-robot export RUN`: one ONNX policy + card,
    parity-checked, acting like the trained actor's mean in onnxruntime."""
    import onnxruntime as ort

    from offrl_robot.data.minari_io import save_dataset

    dataset = linear_dataset(1500)
    save_dataset(dataset, "mopo-test")
    config = own_config(20, [0])
    config.dataset = "mopo-test"
    config_path = tmp_path / "mopo.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    run = tmp_path / "run"
    assert cli.main(["train", "--config", str(config_path), "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "models" / "mopo.onnx"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    assert "parity" in capsys.readouterr().out
    card = yaml.safe_load(out.with_suffix(".card.yaml").read_text())
    assert card["training"]["algorithm"] == "mopo"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    state = load_checkpoint(list_checkpoints(run)[-1])
    algo = Trainer(config, dataset=dataset, run_dir=tmp_path / "x")._build_algo()
    algo.load_state_dict(state["algo_state"])
    obs = dataset.observations[:50]
    normed = (torch.from_numpy(obs) - state["normalizer"]["obs_mean"]) / state["normalizer"]["obs_std"]
    expected = algo.act(normed.unsqueeze(0))[0].numpy()  # actions in [-1, 1] == physical here
    (got,) = session.run(None, {session.get_inputs()[0].name: obs})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_mopo_policy_runs_through_the_validation_gate(tmp_path: Path) -> None:
    """A MOPO policy trained on ArmReach data goes through `offrl-robot validate` like any MLP
    policy: the gate evaluates it in MuJoCo and writes its verdict into the card. (A 40-update
    policy fails the success threshold: exit 3, verdict recorded, nothing else changed.)"""
    from offrl_robot.data.collect import collect

    dataset = collect("ArmReach-v0", "scripted-expert", episodes=4, seed=0, noise=0.3).dataset
    config = own_config(40, [0])
    config.task = "ArmReach-v0"
    run = tmp_path / "run"
    Trainer(config, dataset=dataset, run_dir=run).fit()
    model = tmp_path / "mopo.onnx"
    assert cli.main(["export", str(run), "--out", str(model)]) == 0
    code = cli.main(["validate", str(model), "--episodes", "2", "--no-report"])
    assert code in (0, 3)  # 0 = passed, 3 = a threshold failed; anything else is an error
    card = yaml.safe_load(model.with_suffix(".card.yaml").read_text())
    assert card["training"]["algorithm"] == "mopo"
    assert card["validation"]["passed"] is (code == 0)
    assert card["validation"]["metrics"]["success_rate"] is not None


# ------------------------------------------------------------------ MOPO as the paper runs it (issue 17)
def checkpoint_mopo(dynamics: Path, **overrides: object) -> MOPO:
    """MOPO on the fixture's fitted 3-member ensemble, built directly (no Trainer)."""
    from offrl_robot.algos.mopo import MOPOConfig

    values = {"dynamics_checkpoint": str(dynamics), "hidden_sizes": (32, 32), "elites": ELITES}
    return MOPO(4, 2, 2, MOPOConfig(**{**values, **overrides}))


def normalised_states(algo: MOPO, dataset: object, rows: int) -> torch.Tensor:
    dyn = algo.dynamics[0]
    obs = torch.from_numpy(dataset.observations[:rows])  # type: ignore[attr-defined]
    return ((obs - dyn.obs_mean) / dyn.obs_std).expand(2, -1, -1).contiguous()


def test_rollouts_stop_at_terminal_states(dynamics_run: tuple[Path, object]) -> None:
    """A transition into a terminal state (here x0 > 0.3) is stored with terminal = 1, and no
    rollout continues from that state; rows that did not terminate run all h steps."""
    dynamics, dataset = dynamics_run
    torch.manual_seed(0)
    algo = checkpoint_mopo(dynamics, termination="test_x0_positive", rollout_length=4, model_buffer_size=4000)
    start = normalised_states(algo, dataset, 300)
    algo._rollout(start)
    dyn = algo.dynamics[0]
    for seed in range(2):
        n = algo.filled[seed]
        obs = algo.model_obs[seed, :n]
        next_obs = algo.model_next_obs[seed, :n]
        terminal = algo.model_terminals[seed, :n].bool()
        physical_next = next_obs * dyn.obs_std + dyn.obs_mean
        assert torch.equal(terminal, physical_next[:, 0] > 0.3)  # the rule decided each flag
        assert 0 < int(terminal.sum()) < n  # both kinds occur
        assert 300 < n < 4 * 300  # some rows stopped early, none ran past h steps
        # Nothing starts from a terminal next state; every other next state (but the last step's) is a start.
        starts = {tuple(row.tolist()) for row in obs}
        assert not any(tuple(row.tolist()) in starts for row in next_obs[terminal])
        continued = sum(tuple(row.tolist()) in starts for row in next_obs[~terminal])
        assert continued == n - 300  # each stored row after step 0 continues a non-terminal one
    # The same rollout without the rule runs every row for all h steps.
    torch.manual_seed(0)
    free = checkpoint_mopo(dynamics, termination="none", rollout_length=4, model_buffer_size=4000)
    free._rollout(start)
    assert free.filled == [1200, 1200] and not free.model_terminals.any()


def test_model_steps_sample_each_elite_members_gaussian(dynamics_run: tuple[Path, object]) -> None:
    """Next states are mean + std * eps of ONE elite member per row: identical inputs give
    varying outputs with the member's predicted spread, and a non-elite member is never used."""
    dynamics, dataset = dynamics_run
    algo = checkpoint_mopo(dynamics, penalty=0.0)
    algo.elite_members.copy_(torch.tensor([[0, 2], [0, 2]]))  # member 1 is not an elite
    dyn = algo.dynamics[0]
    with torch.no_grad():  # move members 1 and 2 far apart in x0' (50 target stds each way)
        dyn.net.layers[-1].bias[1, 0, 0] += 50.0
        dyn.net.layers[-1].bias[2, 0, 0] -= 50.0
    rows = 4000
    state = torch.from_numpy(dataset.observations[:1]).expand(rows, -1)
    action = torch.from_numpy(dataset.actions[:1]).expand(rows, -1)
    obs_n = ((state - dyn.obs_mean) / dyn.obs_std).expand(2, -1, -1)
    actions = ((action - dyn.action_low) / (dyn.action_high - dyn.action_low) * 2 - 1).expand(2, -1, -1)
    torch.manual_seed(1)
    next_n, reward, terminal = algo._model_step(obs_n, actions)
    next_obs = next_n[0] * dyn.obs_std + dyn.obs_mean
    with torch.no_grad():
        mean, std = dyn.predict_distribution(state[:1], action[:1])  # [3, 1, O + 1]
    means = state[0, 0] + mean[:, 0, 0]
    distance = (next_obs[:, 0, None] - means) / std[:, 0, 0]  # in each member's own std
    nearest = distance.abs().argmin(1)
    assert set(nearest.tolist()) == {0, 2}  # both elites, never member 1
    assert bool((distance[:, 1].abs() > 20).all())
    for member in (0, 2):  # the spread of each member's rows is its predicted std (sampled, not the mean)
        mine = next_obs[nearest == member]
        assert len(mine) > rows // 4
        torch.testing.assert_close(mine[:, 0].std(), std[member, 0, 0], rtol=0.1, atol=0.0)
        torch.testing.assert_close(
            mine.mean(0)[0], means[member], rtol=0.0, atol=float(4 * std[member, 0, 0] / 30)
        )
    assert not terminal.any() and torch.isfinite(reward).all()


def test_a_dynamics_checkpoint_of_another_dataset_is_refused(
    dynamics_run: tuple[Path, object], tmp_path: Path
) -> None:
    dynamics, data = dynamics_run
    other = linear_dataset(1500, seed=4)
    assert other.sha256() != data.sha256()  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as err:
        Trainer(mopo_config(dynamics, 1.0), dataset=other, run_dir=tmp_path / "run").fit()
    message = str(err.value)
    assert "\n" not in message and f"dynamics_checkpoint {dynamics} was fitted on dataset" in message
    assert data.sha256()[:12] in message and other.sha256()[:12] in message  # type: ignore[attr-defined]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_sac_backup_includes_the_entropy_term(dynamics_run: tuple[Path, object]) -> None:
    """y = r + gamma * (1 - d) * (min Q'(s', a') - alpha * log pi(a'|s')): with Q = 0, r = 0 and
    alpha = 1 the TD error is exactly gamma * log pi(a'|s') for MOPO (SAC), 0 with the backup off."""
    from offrl_robot.algos import Batch
    from offrl_robot.algos.cql import CQL

    dynamics, _ = dynamics_run
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        torch.randn(2, 64, 4, generator=g),
        torch.rand(2, 64, 2, generator=g) * 2 - 1,
        torch.zeros(2, 64),
        torch.randn(2, 64, 4, generator=g),
        torch.zeros(2, 64),
    )
    torch.manual_seed(3)  # the policy sample the update draws for a' (its first use of the RNG)
    _, log_prob = checkpoint_mopo(dynamics).actor.sample(
        torch.cat([batch.observations, batch.next_observations], 1)
    )
    next_log_prob = log_prob[:, 64:].detach()
    losses = {}
    for backup in (True, False):
        algo = checkpoint_mopo(dynamics) if backup else checkpoint_mopo(dynamics, backup_entropy=False)
        with torch.no_grad():
            for net in (algo.critic, algo.target_critic):
                net.net.layers[-1].weight.zero_()
                net.net.layers[-1].bias.zero_()
        torch.manual_seed(3)
        losses[backup] = CQL.update(algo, batch).metrics["td_loss"]  # the SAC step MOPO runs on its batch
    expected = (2 * (0.99 * next_log_prob).square()).mean(-1)  # twin critics, each (0 - y)^2
    torch.testing.assert_close(losses[True], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(losses[False], torch.zeros(2))


def test_mopo_on_hopper_data_ends_model_rollouts_at_falls(tmp_path: Path) -> None:
    """Real Hopper-v5 data (random episodes, each ending in a fall): `termination: auto` picks the
    hopper rule, and the model buffer holds terminal transitions that the critic does not bootstrap."""
    from offrl_robot.data.collect import collect

    data = collect("Hopper-v5", "random", episodes=60, seed=0).dataset
    config = own_config(30, [0], checkpoint_every=0)
    config.algo_config |= {"dynamics_steps": 300, "rollout_every": 1}
    trainer = Trainer(config, dataset=data, run_dir=tmp_path / "run")
    summary = trainer.fit()
    state = load_checkpoint(summary["checkpoint"])
    assert state["optimizer_state"]["termination"] == "hopper"
    algo = trainer.algo
    n = algo.filled[0]
    terminal = algo.model_terminals[0, :n].bool()
    dyn = algo.dynamics[0]
    next_obs = algo.model_next_obs[0, :n] * dyn.obs_std + dyn.obs_mean
    from offrl_robot.sim.terminations import hopper_terminated

    assert torch.equal(terminal, hopper_terminated(None, None, next_obs))
    assert 0 < int(terminal.sum()) < n, (int(terminal.sum()), n)


@pytest.mark.parametrize("uncertainty", ["disagreement", "aleatoric"])
def test_the_penalty_is_the_chosen_uncertainty_over_all_members(
    dynamics_run: tuple[Path, object], uncertainty: str
) -> None:
    """r~ = r - lambda * u, u over ALL members (elites only choose where samples come from), in
    observation-std units: disagreement = max_k |mean_k - mean| (MOPO code's default), aleatoric =
    max_k |std_k| (the paper's max_i ||Sigma_i||)."""
    dynamics, dataset = dynamics_run
    algo = checkpoint_mopo(dynamics, uncertainty=uncertainty)
    obs_n = normalised_states(algo, dataset, 50)
    actions = torch.zeros(2, 50, 2)
    rewards = {}
    for penalty in (2.0, 0.0):
        algo.config.penalty = penalty
        torch.manual_seed(5)
        rewards[penalty] = algo._model_step(obs_n, actions)[1][0]
    dyn = algo.dynamics[0]
    with torch.no_grad():
        mean, std = dyn.predict_distribution(obs_n[0] * dyn.obs_std + dyn.obs_mean, torch.zeros(50, 2))
    if uncertainty == "disagreement":
        spread = (mean[..., :4] - mean[..., :4].mean(0)) / dyn.obs_std
    else:
        spread = std[..., :4] / dyn.obs_std
    expected = spread.norm(dim=-1).amax(0)
    torch.testing.assert_close(rewards[0.0] - rewards[2.0], 2.0 * expected, rtol=1e-4, atol=1e-5)

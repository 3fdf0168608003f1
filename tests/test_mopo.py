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
from offrl_robot.train import TrainConfig, Trainer, list_checkpoints, load_checkpoint

# The self-fitted ensemble of these tests: small, a short step cap.
OWN_DYNAMICS = {"members": 3, "hidden_sizes": [32, 32]}


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


def mopo_config(dynamics: Path, penalty: float, steps: int = 60) -> TrainConfig:
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
    assert state["optimizer_state"]["model_buffer"] == {"cursor": (12 * 3 * 64) % 1000, "filled": 1000}
    rewards = state["algo_state"]["model_rewards"]
    assert rewards.shape == (2, 1000) and torch.isfinite(rewards).all()
    # the penalty lowers the model reward below the reward head's own prediction
    algo = Trainer(mopo_config(dynamics, penalty=1.0), dataset=dataset, run_dir=tmp_path / "x")._build_algo()
    algo.load_state_dict(state["algo_state"])
    obs_n, actions = algo.model_obs[:, :200], algo.model_actions[:, :200]
    torch.manual_seed(0)
    _, penalised = algo._model_step(obs_n, actions)
    algo.config.penalty = 0.0
    torch.manual_seed(0)
    _, unpenalised = algo._model_step(obs_n, actions)
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
    assert np.isfinite(MOPOConfig().penalty)


def own_config(steps: int, seeds: list[int], checkpoint_every: int = 0) -> TrainConfig:
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
            "rollout_length": 2,
            "rollout_every": 5,
            "model_buffer_size": 500,
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
    from test_resume import _assert_same

    dataset = linear_dataset(1500)
    straight = Trainer(own_config(40, [0, 1], checkpoint_every=20), dataset=dataset, run_dir=tmp_path / "a")
    straight.fit()
    Trainer(own_config(20, [0, 1], checkpoint_every=20), dataset=dataset, run_dir=tmp_path / "b").fit()
    resumed = Trainer(
        own_config(40, [0, 1], checkpoint_every=20), dataset=dataset, run_dir=tmp_path / "b", resume=True
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
        _assert_same(a[key], b[key], key)


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

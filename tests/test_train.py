"""Trainer: configs, user errors, logs/checkpoints/summary, save-load round trip, prioritised
replay wiring, vectorised seeds vs single-seed runs, the `train` CLI."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import offrl_robot.algos  # noqa: F401  (fills the registry)
from offrl_robot import cli
from offrl_robot.algos import REGISTRY
from offrl_robot.data.collect import collect
from offrl_robot.data.dataset import Dataset
from offrl_robot.data.minari_io import save_dataset
from offrl_robot.errors import ConfigError, DatasetError
from offrl_robot.train import (
    TrainConfig,
    Trainer,
    build_algo_config,
    list_checkpoints,
    load_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = {"hidden_sizes": [32, 32]}


@pytest.fixture(scope="module")
def arm_data() -> Dataset:
    """A few noisy scripted-expert ArmReach episodes (600 transitions), via the collect API."""
    return collect("ArmReach-v0", "scripted-expert", episodes=4, seed=3, noise=0.1).dataset


def small_config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "algo": "bc",
        "algo_config": dict(SMALL),
        "steps": 60,
        "seeds": [0],
        "batch_size": 32,
        "eval_every": 0,
        "eval_episodes": 1,
        "log_every": 20,
        "checkpoint_every": 30,
        "progress": False,
        "threads": 1,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ configs and errors
def test_every_shipped_config_loads_and_builds_its_algorithm() -> None:
    paths = sorted((REPO / "config" / "train").glob("*.yaml"))
    names = {p.name for p in paths}
    assert {f"arm_reach_{a}.yaml" for a in ("bc", "cql", "iql", "td3bc", "bcq")} <= names
    assert any(name.startswith("hopper") for name in names)
    for path in paths:
        config = TrainConfig.from_yaml(path)
        algo_config = build_algo_config(REGISTRY[config.algo], config.algo_config, config.batch_size)
        assert isinstance(algo_config, REGISTRY[config.algo].config_class)


def test_config_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"cannot read train config .*nope\.yaml"):
        TrainConfig.from_yaml(missing)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("algo: bc\nsteps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml line \d+ is not valid YAML"):
        TrainConfig.from_yaml(bad_yaml)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- algo\n- bc\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        TrainConfig.from_yaml(not_mapping)
    typo = tmp_path / "typo.yaml"
    typo.write_text("algo: bc\nstpes: 10\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*unknown key\(s\) \['stpes'\]"):
        TrainConfig.from_yaml(typo)
    wrong_type = tmp_path / "type.yaml"
    wrong_type.write_text("steps: ten\n")
    with pytest.raises(ConfigError, match=r"type\.yaml.*'steps' must be an integer"):
        TrainConfig.from_yaml(wrong_type)
    for err in ("seeds: []", "batch_size: 0", "eval_every: -1"):
        path = tmp_path / "range.yaml"
        path.write_text(err + "\n")
        with pytest.raises(ConfigError, match=err.split(":")[0]):
            TrainConfig.from_yaml(path)


def test_exponent_numbers_yaml_reads_as_strings_are_numbers(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads `1e-3` as the string '1e-3': a learning rate written that way
    trains at 1e-3, and a word where a number belongs is a one-line error naming the field."""
    path = tmp_path / "lr.yaml"
    path.write_text("algo: bc\nalgo_config:\n  learning_rate: 1e-3\n")
    config = TrainConfig.from_yaml(path)
    assert config.algo_config["learning_rate"] == "1e-3"  # what YAML hands over
    built = build_algo_config(REGISTRY["bc"], config.algo_config, config.batch_size)
    assert isinstance(built.learning_rate, float) and built.learning_rate == 1e-3
    with pytest.raises(ConfigError, match=r"'algo_config.learning_rate' must be a finite number, got 'fast'"):
        build_algo_config(REGISTRY["bc"], {"learning_rate": "fast"}, 256)
    with pytest.raises(ConfigError, match=r"'algo_config.learning_rate' must be a finite number"):
        build_algo_config(REGISTRY["bc"], {"learning_rate": "nan"}, 256)


def test_config_error_is_one_line_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("algo: bc\nbatchsize: 10\n")
    assert cli.main(["train", "--config", str(typo)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "batchsize" in err and "typo.yaml" in err


def test_unknown_algorithm_and_hyper_parameter(arm_data: Dataset) -> None:
    with pytest.raises(ConfigError, match=r"unknown algorithm 'sac'; choose one of: .*bc.*cql"):
        Trainer(small_config(algo="sac"), dataset=arm_data)
    with pytest.raises(ConfigError, match=r"algo_config for 'bc' has unknown key\(s\) \['lr'\]"):
        Trainer(small_config(algo_config={"lr": 1e-3}), dataset=arm_data)
    with pytest.raises(ConfigError, match="prioritized replay needs TD errors"):
        Trainer(small_config(prioritized=True), dataset=arm_data)


def test_dims_that_disagree_with_the_dataset(arm_data: Dataset, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"task 'Hopper-v5' has observation dim 11 and action dim 3.*15 and 6"
    ):
        Trainer(small_config(task="Hopper-v5"), dataset=arm_data, run_dir=tmp_path / "a")
    # resuming a run with data of other dims is refused before any work
    Trainer(small_config(steps=30), dataset=arm_data, run_dir=tmp_path / "b").fit()
    narrow = copy.deepcopy(arm_data)
    narrow.observations = narrow.observations[:, :12]
    narrow.next_observations = narrow.next_observations[:, :12]
    narrow.metadata.observation_names = narrow.metadata.observation_names[:12]
    narrow.metadata.task = None
    with pytest.raises(
        ConfigError,
        match=r"--resume: checkpoint dims \(obs 15, act 6\) disagree with dataset .*obs 12, act 6",
    ):
        Trainer(small_config(steps=60, task=None), dataset=narrow, run_dir=tmp_path / "b", resume=True)


@pytest.mark.parametrize(("field", "row", "value"), [("observations", 7, np.nan), ("rewards", 42, np.inf)])
def test_non_finite_dataset_values_name_field_and_row(
    arm_data: Dataset, field: str, row: int, value: float
) -> None:
    broken = copy.deepcopy(arm_data)
    array = getattr(broken, field)
    if array.ndim == 2:
        array[row, 2] = value
    else:
        array[row] = value
    with pytest.raises(DatasetError, match=rf"field '{field}' row {row} .* is {value}"):
        Trainer(small_config(), dataset=broken)


def test_existing_run_needs_resume_and_missing_run_cannot_resume(arm_data: Dataset, tmp_path: Path) -> None:
    Trainer(small_config(steps=30), dataset=arm_data, run_dir=tmp_path / "run").fit()
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume"):
        Trainer(small_config(steps=30), dataset=arm_data, run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="no checkpoint in"):
        Trainer(small_config(), dataset=arm_data, run_dir=tmp_path / "empty", resume=True)
    with pytest.raises(ConfigError, match=r"config differs from the run's in \['batch_size'\]"):
        Trainer(
            small_config(steps=60, batch_size=16), dataset=arm_data, run_dir=tmp_path / "run", resume=True
        )
    # algo_config is compared resolved: a changed value is named; the defaults spelled out are not a change
    changed = small_config(steps=60, algo_config={**SMALL, "learning_rate": 1e-3})
    with pytest.raises(
        ConfigError, match=r"trained with algo_config learning_rate: 0\.0003, .* learning_rate: 0\.001"
    ):
        Trainer(changed, dataset=arm_data, run_dir=tmp_path / "run", resume=True)
    spelled_out = small_config(steps=60, algo_config={**SMALL, "learning_rate": 3e-4, "loss": "mse"})
    assert Trainer(spelled_out, dataset=arm_data, run_dir=tmp_path / "run", resume=True).fit()["steps"] == 60


# ------------------------------------------------------------------------------ a real run
def test_fit_writes_logs_checkpoints_and_summary(arm_data: Dataset, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = small_config(seeds=[4, 5], steps=90, eval_every=45, checkpoint_every=30, keep_checkpoints=2)
    summary = Trainer(config, dataset=arm_data, run_dir=run_dir).fit()

    # checkpoints: every 30 steps, only the last two kept
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000060.pt", "step_00000090.pt"]
    # CSV: one row per log interval and seed, finite losses
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["step"]), int(r["seed"])) for r in rows] == [
        (s, seed) for s in (20, 40, 60, 80, 90) for seed in (4, 5)
    ]
    assert all(np.isfinite(float(r["actor_loss"])) for r in rows)
    # loss falls on the expert data
    first, last = float(rows[0]["actor_loss"]), float(rows[-2]["actor_loss"])
    assert last < first
    with (run_dir / "eval.csv").open() as handle:
        evals = list(csv.DictReader(handle))
    assert [(int(r["step"]), int(r["seed"])) for r in evals] == [(45, 4), (45, 5), (90, 4), (90, 5)]
    assert all(r["success_rate"] != "" for r in evals)  # ArmReach is an arm task
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seeds"] == [4, 5]

    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["steps"] == 90 and summary["seeds"] == [4, 5] and summary["updates_per_s"] > 0
    final = summary["final_eval"]
    assert [s["seed"] for s in final["per_seed"]] == [4, 5]
    assert set(final) >= {"mean_return", "normalized_score", "success_rate", "final_distance"}
    assert final["mean_return"]["mean"] == pytest.approx(
        np.mean([s["mean_return"] for s in final["per_seed"]])
    )
    assert summary["checkpoint"] == str(run_dir / "checkpoints" / "step_00000090.pt")


def test_progress_bar_shows_rate_and_eta(
    arm_data: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Trainer(small_config(steps=30, progress=True), dataset=arm_data, run_dir=tmp_path / "run").fit()
    bar = capsys.readouterr().err
    assert "30/30" in bar and "upd/s" in bar and "<00:00" in bar  # count, rate, remaining time


def test_checkpoint_alone_is_enough_to_rebuild_the_policy(arm_data: Dataset, tmp_path: Path) -> None:
    """Save/load round trip: a fresh algorithm built from the checkpoint acts identically, and
    the checkpoint carries the normaliser, action bounds and dataset identity export needs."""
    run_dir = tmp_path / "run"
    trainer = Trainer(small_config(seeds=[0, 1], steps=40), dataset=arm_data, run_dir=run_dir)
    trainer.fit()
    state = load_checkpoint(list_checkpoints(run_dir)[-1])

    obs = arm_data.observations.astype(np.float64)
    np.testing.assert_allclose(state["normalizer"]["obs_mean"].numpy(), obs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        state["normalizer"]["obs_std"].numpy(), np.maximum(obs.std(0), 1e-3), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(
        state["action_scale"]["low"].numpy(), np.float32(arm_data.metadata.action_low)
    )
    np.testing.assert_array_equal(
        state["action_scale"]["high"].numpy(), np.float32(arm_data.metadata.action_high)
    )
    assert state["dataset"]["sha256"] == arm_data.sha256()
    assert state["dataset"]["metadata"]["observation_names"] == arm_data.metadata.observation_names
    assert state["dataset"]["metadata"]["control_rate_hz"] == arm_data.metadata.control_rate_hz
    assert state["step"] == 40 and state["seeds"] == [0, 1] and state["algo"] == "bc"

    algo_cls = REGISTRY[state["algo"]]
    config = build_algo_config(algo_cls, state["algo_config"], state["config"]["batch_size"])
    rebuilt = algo_cls(
        state["observation_dim"], state["action_dim"], state["num_seeds"], config, seeds=state["seeds"]
    )
    rebuilt.load_state_dict(state["algo_state"])
    rebuilt.load_optimizer_state_dict(state["optimizer_state"])
    normed = (torch.from_numpy(arm_data.observations[:50]) - state["normalizer"]["obs_mean"]) / state[
        "normalizer"
    ]["obs_std"]
    batch = normed.expand(2, -1, -1)
    # the same module on the same kernels: rebuilt from the checkpoint it must act bit for bit alike
    assert torch.equal(rebuilt.act(batch), trainer.algo.act(batch))
    # the export module is plain nn.Linear layers, `act` one batched [S, B, in] matmul: another
    # kernel, another summation order, so float32 rounding differs (measured: at most 6e-8 on
    # all 600 rows, AMD EPYC). atol 1e-6 is ~20x that and far below any real mismatch (a wrong
    # seed slice, normaliser or tanh scaling moves actions by >= 1e-2); as in test_algos' export check.
    torch.testing.assert_close(
        rebuilt.policy_for_export(1)(normed), trainer.algo.act(batch)[1], rtol=1e-5, atol=1e-6
    )


VALUE_BASED = sorted(name for name, cls in REGISTRY.items() if cls.value_based)


def test_every_critic_based_algorithm_is_value_based() -> None:
    assert {"cql", "iql", "td3bc", "bcq"} <= set(VALUE_BASED)


@pytest.mark.parametrize("algo", VALUE_BASED)
def test_prioritized_replay_switch_updates_priorities(algo: str, arm_data: Dataset, tmp_path: Path) -> None:
    """One config switch turns on PER for every value-based algorithm; TD errors reach the trees."""
    params = {**SMALL, "vae_hidden_sizes": [32, 32]} if algo == "bcq" else dict(SMALL)
    config = small_config(
        algo=algo,
        algo_config=params,
        prioritized=True,
        steps=12,
        seeds=[0, 1],
        checkpoint_every=0,
        log_every=12,
    )
    trainer = Trainer(config, dataset=arm_data, run_dir=tmp_path / "run")
    trainer.fit()
    probs = trainer.sampler.probabilities()
    assert probs.shape == (2, len(arm_data))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs.std(axis=1).min() > 0  # TD errors made them non-uniform, per seed
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert state["sampler"]["kind"] == "prioritized"


def test_vectorised_seeds_match_single_seed_runs_for_deterministic_bc(
    arm_data: Dataset, tmp_path: Path
) -> None:
    """BC has no algorithm-internal randomness: seed s of `--seeds 0,1,2` starts from exactly the
    weights of a `--seeds s` run and sees exactly the same batches, so it follows the same
    trajectory; it is equal up to float rounding (batched [S, B, in] kernels reduce in another
    order than [1, B, in] ones), not bit for bit. Seeds stay independent of each other."""
    vectorised = Trainer(small_config(seeds=[0, 1, 2], steps=40), dataset=arm_data, run_dir=tmp_path / "v")
    single = Trainer(small_config(seeds=[1], steps=40), dataset=arm_data, run_dir=tmp_path / "s")
    vectorised._build_algo()  # construction only: compare the initial weights exactly
    initial_multi, initial_single = vectorised._build_algo().state_dict(), single._build_algo().state_dict()
    for name, value in initial_single.items():
        assert torch.equal(initial_multi[name][1:2], value), name
    vectorised.fit()
    single.fit()
    multi_state, single_state = vectorised.algo.state_dict(), single.algo.state_dict()
    for name, value in single_state.items():
        torch.testing.assert_close(multi_state[name][1:2], value, rtol=0, atol=1e-5)
    moved = max((multi_state[n][1:2] - initial_single[n]).abs().max().item() for n in single_state)
    assert moved > 1e-3  # training did move the weights far beyond the tolerance
    assert not torch.equal(
        multi_state["actor.net.layers.0.weight"][0], multi_state["actor.net.layers.0.weight"][1]
    )


def test_evaluation_scores_the_scripted_expert_as_expert() -> None:
    """evaluate() maps normalised observations back and [-1, 1] actions to physical units exactly:
    the scripted expert wrapped that way reaches every goal; holding still (zero velocity) does
    not. (Holding still still scores ~80 normalised: ArmReach's return is dominated by the
    initial distance, which is why success and final distance are reported too.)"""
    from offrl_robot.evaluation import evaluate
    from offrl_robot.sim import task_info
    from offrl_robot.sim.experts import ArmReachExpert

    info = task_info("ArmReach-v0")
    low, high = np.asarray(info.action_low), np.asarray(info.action_high)
    mean, std = np.linspace(-1, 1, 15).astype(np.float32), np.linspace(0.5, 2, 15).astype(np.float32)
    expert = ArmReachExpert()

    def expert_act(normed: torch.Tensor) -> torch.Tensor:
        obs = normed.numpy() * std + mean  # [S, 1, O] back to physical units
        unit = [(expert(o[0]) - low) / (high - low) * 2 - 1 for o in obs]
        return torch.tensor(np.stack(unit)[:, None, :], dtype=torch.float32)

    def zero_velocity(normed: torch.Tensor) -> torch.Tensor:
        return torch.tensor(((0 - low) / (high - low) * 2 - 1)[None, None, :].repeat(normed.shape[0], 0))

    common = ("ArmReach-v0", [0, 1], 2, 123, mean, std, low, high, torch.device("cpu"))
    expert_eval = evaluate(expert_act, *common)
    idle_eval = evaluate(zero_velocity, *common)
    for res in expert_eval:
        # the scripted expert reaches 200 of 200 gate episodes within 1 mm: 2 at 1.0 is not luck
        assert res.success_rate == 1.0 and res.final_distance < 0.02 and res.episode_lengths == [150, 150]
        assert res.normalized_score > 95
    assert expert_eval[0].returns == expert_eval[1].returns  # seeds share episode start states
    for res in idle_eval:
        assert res.success_rate == 0.0 and res.final_distance > 0.1
        assert res.mean_return < expert_eval[0].mean_return


# ------------------------------------------------------------------------------ CLI
def test_train_cli_end_to_end(arm_data: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_dataset(arm_data, "arm_reach/test-expert")
    config = tmp_path / "bc.yaml"
    config.write_text(yaml.safe_dump(small_config(steps=1000).to_dict()))
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--dataset", "arm_reach/test-expert", "--steps", "30"]
    argv += ["--seeds", "2,3", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "trained bc on arm_reach/test-expert for 30 steps, seeds [2, 3]" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "arm_reach/test-expert" and summary["seeds"] == [2, 3]
    assert summary["task"] == "ArmReach-v0"  # taken from the dataset's metadata
    # a second start in the same run dir is a user error, one line, exit 2
    assert cli.main(argv) == 2
    assert "pass --resume" in capsys.readouterr().err
    # --resume --steps N extends the run from its saved config
    assert cli.main(["train", "--resume", "--out", str(out), "--steps", "45", "--no-progress"]) == 0
    assert load_checkpoint(list_checkpoints(out)[-1])["step"] == 45
    assert (
        cli.main(
            ["train", "--algo", "nope", "--dataset", "arm_reach/test-expert", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "unknown algorithm 'nope'" in capsys.readouterr().err


def test_on_checkpoint_hook_gets_each_checkpoint_with_its_same_step_evaluation(
    arm_data: Dataset, tmp_path: Path
) -> None:
    """The public hook schedulers report through (the Ray sweep does): one call per checkpoint,
    in order, with the evaluation made at that step, or None when there was none."""
    calls: list[tuple[int, Path, dict | None]] = []
    config = small_config(task="ArmReach-v0", steps=60, eval_every=20, checkpoint_every=30)
    Trainer(
        config, dataset=arm_data, run_dir=tmp_path / "run", on_checkpoint=lambda *a: calls.append(a)
    ).fit()
    assert [step for step, _, _ in calls] == [30, 60]
    assert [path.name for _, path, _ in calls] == ["step_00000030.pt", "step_00000060.pt"]
    assert all(path.is_file() for _, path, _ in calls)
    assert calls[0][2] is None  # evaluations ran at 20, 40, 60: none at step 30
    assert calls[1][2] is not None and calls[1][2]["step"] == 60

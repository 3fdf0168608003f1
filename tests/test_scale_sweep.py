"""`offrl-robot sweep` on a real local Ray Tune (2 CPUs, loopback only).

One 4-trial sweep runs once for the module (Ray + 4 trainings cost tens of seconds on a shared
CPU). Trials t000 and t001 are identical (same learning rate, same seed group); while the sweep
runs, t000's worker process is SIGKILLed right after its first checkpoint reached Tune. Tune must
restart it from that checkpoint, the sweep must complete, and t000 must end with exactly the
weights of the uninterrupted t001.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

pytest.importorskip("ray", reason="the scale extra (requirements-scale.txt) is not installed")

from offrl_robot.data.collect import collect
from offrl_robot.data.minari_io import save_dataset
from offrl_robot.errors import ConfigError
from offrl_robot.scale.ray_local import Listener, exposed_listeners, listening_sockets
from offrl_robot.scale.sweep import (
    SweepResult,
    check_trials,
    expand_trials,
    load_sweep,
    run_sweep,
    sweep_from_dict,
)
from offrl_robot.train import TrainConfig, list_checkpoints, load_checkpoint

STEPS = 400
EVAL_EVERY = 100
KILLED, TWIN = "t000_bc_learning_rate0.001_s3-4", "t001_bc_learning_rate0.001_s3-4"


@dataclass
class Watch:
    """What the watcher thread saw while the sweep ran."""

    killed_pid: int | None = None
    listeners: list[Listener] = field(default_factory=list)
    exposed: list[Listener] = field(default_factory=list)


def _killer(out_dir: Path, watch: Watch) -> Any:
    """A Tune callback that SIGKILLs the worker running KILLED once Tune has recorded (on the
    driver) its first checkpoint: a kill before that would test a restart from scratch."""
    from ray.tune import Callback

    class KillOnFirstCheckpoint(Callback):
        def on_checkpoint(
            self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any
        ) -> None:
            if watch.killed_pid is not None or trial.config["trial"]["name"] != KILLED:
                return
            attempts = (out_dir / "runs" / KILLED / "attempts.jsonl").read_text().splitlines()
            watch.killed_pid = json.loads(attempts[0])["pid"]
            os.kill(watch.killed_pid, signal.SIGKILL)

    return KillOnFirstCheckpoint()


def _watch_sockets(watch: Watch, stop: threading.Event) -> None:
    """Sample what our process tree listens on while the sweep runs."""
    while not stop.wait(0.5):
        watch.listeners += listening_sockets()
        watch.exposed += exposed_listeners()


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SweepResult, Watch, Path]]:
    root = tmp_path_factory.mktemp("sweep")
    dataset = collect("ArmReach-v0", "scripted-expert", episodes=3, seed=11, noise=0.1).dataset
    dataset_dir = save_dataset(dataset, "arm_reach/sweep-test", root=root / "minari")
    config = {
        "name": "tiny",
        "train": {
            "steps": STEPS,
            "batch_size": 32,
            "eval_every": EVAL_EVERY,
            "eval_episodes": 1,
            "log_every": EVAL_EVERY,
            "keep_checkpoints": 10,
            "threads": 1,
        },
        "datasets": [str(dataset_dir)],
        "algorithms": {"bc": {"hidden_sizes": [32, 32], "learning_rate": {"grid": [1.0e-3, 3.0e-4]}}},
        "seeds": [[3, 4], [3, 4]],  # a repeated seed group: the twin of the trial we kill
        "metric": "mean_return",
        "storage": str(root / "store"),
        "max_failures": 2,
    }
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    spec = load_sweep(path)
    watch, stop = Watch(), threading.Event()
    watcher = threading.Thread(target=_watch_sockets, args=(watch, stop), daemon=True)
    watcher.start()
    try:
        result = run_sweep(spec, workers=2, callbacks=[_killer(root / "store" / "tiny", watch)])
    finally:
        stop.set()
        watcher.join(timeout=10)
    yield result, watch, path


@pytest.mark.slow
def test_sweep_writes_table_best_config_and_plots(sweep_run: tuple[SweepResult, Watch, Path]) -> None:
    result, watch, _ = sweep_run
    assert [r["trial"] for r in result.rows] == [
        KILLED,
        TWIN,
        "t002_bc_learning_rate0.0003_s3-4",
        "t003_bc_learning_rate0.0003_s3-4",
    ]
    assert all(r["status"] == "ok" and r["step"] == STEPS for r in result.rows)
    csv_lines = result.files["csv"].read_text().splitlines()
    assert len(csv_lines) == 5 and "mean_return" in csv_lines[0] and "param.learning_rate" in csv_lines[0]
    best = result.best
    assert best is not None
    assert best["mean_return"] == max(r["mean_return"] for r in result.rows)
    assert f"Best: **{best['trial']}**" in result.files["markdown"].read_text()
    best_config = yaml.safe_load(result.files["best_config"].read_text())
    assert best_config["algo"] == "bc" and best_config["seeds"] == [3, 4]
    assert best_config["algo_config"]["learning_rate"] == float(best["param.learning_rate"])
    for name in ("learning_curves", "score_vs_learning_rate"):
        assert result.files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ready = TrainConfig.from_yaml(result.files["best_config"])  # a ready train config, as it is
    assert ready.algo_config == best_config["algo_config"] and ready.steps == STEPS
    # Ray listened while the sweep ran, and only on loopback
    assert watch.listeners, "no Ray listener was seen: the socket check did not run"
    assert watch.exposed == [], f"Ray listened beyond loopback: {set(watch.exposed)}"


@pytest.mark.slow
def test_killed_trial_resumes_from_its_checkpoint_and_matches_its_twin(
    sweep_run: tuple[SweepResult, Watch, Path],
) -> None:
    result, watch, _ = sweep_run
    assert watch.killed_pid is not None, "the trial finished before it could be killed"
    attempts = [
        json.loads(line)
        for line in (result.out_dir / "runs" / KILLED / "attempts.jsonl").read_text().splitlines()
    ]
    assert len(attempts) == 2 and attempts[0]["pid"] == watch.killed_pid
    assert attempts[0]["resumed_from_step"] is None
    resumed = attempts[1]["resumed_from_step"]
    assert resumed is not None and resumed % EVAL_EVERY == 0 and EVAL_EVERY <= resumed < STEPS
    rows = {r["trial"]: r for r in result.rows}
    assert rows[KILLED]["attempts"] == 2 and rows[TWIN]["attempts"] == 1
    assert rows[KILLED]["mean_return"] == rows[TWIN]["mean_return"]
    killed = load_checkpoint(list_checkpoints(result.out_dir / "runs" / KILLED)[-1])
    twin = load_checkpoint(list_checkpoints(result.out_dir / "runs" / TWIN)[-1])
    assert killed["step"] == twin["step"] == STEPS
    for name, tensor in twin["algo_state"].items():
        assert torch.equal(killed["algo_state"][name], tensor), name
    assert killed["sampler"].keys() == twin["sampler"].keys()


def test_grid_and_random_expansion_is_deterministic(tmp_path: Path) -> None:
    data = {
        "datasets": ["a", "b"],
        "algorithms": {
            "bc": {"learning_rate": {"grid": [1e-3, 1e-4]}},
            "iql": {"expectile": {"uniform": [0.6, 0.9]}, "actor_lr": {"loguniform": [1e-5, 1e-3]}},
        },
        "params": {"batch_size": {"choice": [64, 128]}},
        "seeds": [[0, 1], 2],
        "num_samples": 3,
        "search_seed": 7,
    }
    trials = expand_trials(sweep_from_dict(data, tmp_path / "s.yaml"))
    again = expand_trials(sweep_from_dict(data, tmp_path / "s.yaml"))
    assert [t.to_dict() for t in trials] == [t.to_dict() for t in again]
    # 2 datasets x (bc: 2 grid points + iql: 1) x 3 samples x 2 seed groups
    assert len(trials) == 2 * (2 + 1) * 3 * 2
    iql = [t for t in trials if t.algo == "iql"]
    assert all(0.6 <= t.train["algo_config"]["expectile"] < 0.9 for t in iql)
    assert len({t.train["algo_config"]["expectile"] for t in iql}) == 6  # drawn per sample and dataset
    assert {t.train["batch_size"] for t in trials} <= {64, 128}
    assert all(t.train["checkpoint_every"] == t.train["eval_every"] for t in trials)
    assert trials[0].train["seeds"] == [0, 1] and trials[1].train["seeds"] == [2]
    bad = dict(data, algorithms={"bc": {"learning_rat": 1e-3}})
    with pytest.raises(ConfigError, match="learning_rat"):
        check_trials(expand_trials(sweep_from_dict(bad, tmp_path / "s.yaml")))


def test_shipped_sweep_configs_are_valid() -> None:
    configs = sorted((Path(__file__).resolve().parents[1] / "config" / "sweep").glob("*.yaml"))
    assert configs
    for path in configs:
        trials = expand_trials(load_sweep(path))
        check_trials(trials)
        assert len({t.name for t in trials}) == len(trials), f"{path}: trial names collide"
    small = expand_trials(load_sweep(configs[0].with_name("arm_reach_small.yaml")))
    assert len(small) == 16 and {t.algo for t in small} == {"bc", "iql"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"algoritms": {"bc": {}}}, "unknown key"),
        ({"metric": "reward"}, "metric 'reward' is not one of"),
        ({"algorithms": {"bc": {"learning_rate": {"loguniform": [0, 1e-3]}}}}, "loguniform needs low > 0"),
        ({"algorithms": {"bc": {"learning_rate": {"uniform": [1e-3]}}}}, "uniform needs \\[low, high\\]"),
        ({"params": {"seeds": {"grid": [[0], [1]]}}}, "set by the sweep itself"),
        ({"seeds": [[]]}, "non-empty lists of integers"),
    ],
)
def test_bad_sweep_files_fail_in_one_line(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    data = {"datasets": ["a"], "algorithms": {"bc": {}}, **change}
    with pytest.raises(ConfigError, match=message) as err:
        sweep_from_dict(data, tmp_path / "bad.yaml")
    assert "\n" not in str(err.value) and "bad.yaml" in str(err.value)

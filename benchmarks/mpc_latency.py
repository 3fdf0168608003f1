"""MPC planning-step latency on this CPU: MPCController.act over exported ArmReach ensembles,
over a grid of configurations (samples x horizon x iterations x ensemble members x hidden).

    .venv/bin/python benchmarks/mpc_latency.py [--ticks 300] [--rounds 3] [--threads 1]

One tick = what policy_node and the gate call at 50 Hz: plan (`iterations` rounds of `samples`
candidate sequences, each round ONE onnxruntime call of the horizon-unrolled ensemble graph,
batched over candidates x members; reward from the learned head or the named reward over all
candidates x horizon rows at once; disagreement penalty), return the first action, shift the
plan (warm start). The models are real: scripted-expert ArmReach data (20 episodes, 30 % action
noise) -> fit_dynamics (short fit: latency does not depend on the weights' values) ->
export_dynamics (parity-checked ONNX + card) -> MPCController, one per ensemble shape.
Observations are dataset rows, in order.

Rows alternate between configurations in every round so that load from other processes on this
shared machine hits all of them alike. Reports p50 / p99 / mean in ms, whether p99 fits a
50 Hz control period (20 ms), and marks, per reward source, the largest configuration (by
samples x horizon x iterations x members) whose p99 fits. Target (model-based issue): >= 256
samples x horizon 10 within 20 ms p99.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from offrl_robot.algos.dynamics import fit_dynamics  # noqa: E402
from offrl_robot.data.collect import collect  # noqa: E402
from offrl_robot.export.dynamics import export_dynamics  # noqa: E402
from offrl_robot.mpc import MPCConfig, MPCController  # noqa: E402
from offrl_robot.train import TrainConfig  # noqa: E402

PERIOD_MS = 20.0
NAMED_REWARD = "offrl_robot.sim.rewards:arm_reach_reward"
# label -> (members, hidden sizes); 5 x 64 x 64 is config/dynamics/arm_reach.yaml's shape.
ENSEMBLES = {"5x128x128": (5, [128, 128]), "5x64x64": (5, [64, 64]), "3x64x64": (3, [64, 64])}
# (method, samples, horizon, iterations, ensemble, reward)
GRID: list[tuple[str, int, int, int, str, str]] = [
    ("mppi", 256, 10, 1, "5x128x128", "learned"),
    ("mppi", 256, 10, 1, "5x64x64", "learned"),
    ("mppi", 256, 10, 1, "3x64x64", "learned"),
    ("mppi", 512, 10, 1, "5x64x64", "learned"),
    ("mppi", 1024, 10, 1, "5x64x64", "learned"),
    ("mppi", 1024, 10, 1, "3x64x64", "learned"),
    ("mppi", 2048, 10, 1, "3x64x64", "learned"),
    ("mppi", 256, 20, 1, "5x64x64", "learned"),
    ("mppi", 512, 20, 1, "5x64x64", "learned"),
    ("cem", 256, 10, 2, "5x64x64", "learned"),
    ("cem", 256, 10, 3, "5x64x64", "learned"),
    ("cem", 256, 10, 3, "5x128x128", "learned"),
    ("mppi", 256, 10, 1, "5x128x128", "named"),
    ("mppi", 256, 10, 1, "5x64x64", "named"),
    ("mppi", 128, 20, 1, "5x64x64", "named"),  # config/dynamics/arm_reach.yaml
    ("mppi", 256, 20, 1, "5x64x64", "named"),
    ("mppi", 512, 10, 1, "3x64x64", "named"),
]


def label(row: tuple[str, int, int, int, str, str]) -> str:
    method, samples, horizon, iterations, ensemble, reward = row
    return f"{method} {samples}x{horizon}x{iterations} it, {ensemble}, {reward}"


def size(row: tuple[str, int, int, int, str, str]) -> tuple[int, int]:
    """samples x horizon x iterations x members (the planner's work), then the hidden width."""
    _, samples, horizon, iterations, ensemble, _ = row
    members, hidden = ENSEMBLES[ensemble]
    return samples * horizon * iterations * members, sum(hidden)


def build_models(folder: Path) -> tuple[dict[str, Path], np.ndarray]:
    dataset = collect("ArmReach-v0", "scripted-expert", episodes=20, seed=0, noise=0.3).dataset
    models = {}
    for name, (members, hidden) in ENSEMBLES.items():
        config = TrainConfig(
            algo="dynamics",
            steps=200,
            batch_size=256,
            threads=1,
            progress=False,
            algo_config={"members": members, "hidden_sizes": hidden},
        )
        fit = fit_dynamics(config, dataset, run_dir=folder / f"run_{name}")
        models[name] = folder / f"arm_reach_{name}.onnx"
        export_dynamics(fit.checkpoint, models[name], dataset=dataset)
    return models, dataset.observations


def time_ticks(controller: MPCController, observations: np.ndarray, start: int, ticks: int) -> np.ndarray:
    out = np.empty(ticks)
    clock = time.perf_counter_ns
    for i in range(ticks):
        obs = observations[(start + i) % len(observations)]
        t0 = clock()
        controller.act(obs)
        out[i] = clock() - t0
    return out / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ticks", type=int, default=300, help="timed ticks per configuration per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (configurations alternate within each)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="offrl-mpc-bench-") as scratch:
        models, observations = build_models(Path(scratch))
        controllers = {
            label(row): MPCController(
                models[row[4]],
                config=MPCConfig(
                    method=row[0],
                    samples=row[1],
                    horizon=row[2],
                    iterations=row[3],
                    reward=NAMED_REWARD if row[5] == "named" else "learned",
                    threads=args.threads,
                ),
            )
            for row in GRID
        }
        for controller in controllers.values():  # warm-up: first runs allocate arenas
            time_ticks(controller, observations, 0, 20)
        samples: dict[str, list[np.ndarray]] = {name: [] for name in controllers}
        for r in range(args.rounds):
            for name, controller in controllers.items():
                samples[name].append(time_ticks(controller, observations, r * args.ticks, args.ticks))
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
        f"python {platform.python_version()}, onnxruntime {ort.__version__}, numpy {np.__version__}, "
        f"torch {torch.__version__}, onnxruntime threads {args.threads}, {args.rounds} x {args.ticks} "
        f"ticks per row, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    stats = {}
    for row in GRID:
        ms = np.concatenate(samples[label(row)])
        stats[label(row)] = (*np.percentile(ms, [50, 99]), ms.mean())
    largest = {}
    for reward in ("learned", "named"):
        fitting = [r for r in GRID if r[5] == reward and stats[label(r)][1] <= PERIOD_MS]
        if fitting:
            largest[reward] = label(max(fitting, key=size))
    print(
        "| method | samples x horizon x iterations | ensemble K x hidden | reward | p50 ms | p99 ms | mean ms "
        f"| p99 <= {PERIOD_MS:g} ms |"
    )
    print("|---|---|---|---|---:|---:|---:|:---:|")
    for row in GRID:
        method, samples_, horizon, iterations, ensemble, reward = row
        p50, p99, mean = stats[label(row)]
        fits = "yes" if p99 <= PERIOD_MS else "no"
        if largest.get(reward) == label(row):
            fits += " **largest**"
        print(
            f"| {method} | {samples_} x {horizon} x {iterations} | {ensemble} | {reward} | {p50:.2f} | {p99:.2f} "
            f"| {mean:.2f} | {fits} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

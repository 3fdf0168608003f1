"""MPC planning-step latency on this CPU: MPCController.act over an exported ArmReach ensemble.

    .venv/bin/python benchmarks/mpc_latency.py [--ticks 300] [--rounds 3] [--threads 1]

One tick = what policy_node and the gate call at 50 Hz: plan (samples x horizon candidates,
`iterations` rounds, one onnxruntime call per horizon step batched over candidates x members,
reward + disagreement penalty), return the first action, shift the plan (warm start). The
models are real: scripted-expert ArmReach data (20 episodes, 30 % action noise) -> fit_dynamics
(short fit: latency does not depend on the weights' values) -> export_dynamics (parity-checked
ONNX + card) -> MPCController, one per ensemble shape. Observations are dataset rows, in order.

Rows alternate between configurations in every round so that load from other processes on this
shared machine hits all of them alike. Reports p50 / p99 / mean in ms and whether p99 fits a
50 Hz control period (20 ms); the target (model-based issue): >= 256 samples x horizon 10.
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
from offrl_robot.export_dynamics import export_dynamics  # noqa: E402
from offrl_robot.mpc import MPCConfig, MPCController  # noqa: E402
from offrl_robot.train import TrainConfig  # noqa: E402

PERIOD_MS = 20.0
NAMED_REWARD = "offrl_robot.sim.rewards:arm_reach_reward"
# (label, ensemble (members, hidden), planner settings)
ENSEMBLES = {"5x128x128": (5, [128, 128]), "5x200x200": (5, [200, 200]), "3x64x64": (3, [64, 64])}
CONFIGS: list[tuple[str, str, dict[str, object]]] = [
    ("mppi 128x10 learned", "5x128x128", {"samples": 128, "horizon": 10}),
    ("mppi 256x10 learned", "5x128x128", {"samples": 256, "horizon": 10}),
    ("mppi 256x10 named reward", "5x128x128", {"samples": 256, "horizon": 10, "reward": NAMED_REWARD}),
    (
        "mppi 128x20 named (ArmReach config)",
        "5x128x128",
        {"samples": 128, "horizon": 20, "reward": NAMED_REWARD},
    ),
    ("mppi 512x10 learned", "5x128x128", {"samples": 512, "horizon": 10}),
    ("mppi 1024x10 learned", "5x128x128", {"samples": 1024, "horizon": 10}),
    ("mppi 256x20 learned", "5x128x128", {"samples": 256, "horizon": 20}),
    (
        "cem 256x10 x3 iters learned",
        "5x128x128",
        {"method": "cem", "samples": 256, "horizon": 10, "iterations": 3},
    ),
    ("mppi 256x10 learned, 5x200x200", "5x200x200", {"samples": 256, "horizon": 10}),
    ("mppi 256x10 learned, 3x64x64", "3x64x64", {"samples": 256, "horizon": 10}),
    ("mppi 512x10 learned, 3x64x64", "3x64x64", {"samples": 512, "horizon": 10}),
    ("mppi 1024x10 learned, 3x64x64", "3x64x64", {"samples": 1024, "horizon": 10}),
]


def build_models(folder: Path) -> tuple[dict[str, Path], np.ndarray]:
    dataset = collect("ArmReach-v0", "scripted-expert", episodes=20, seed=0, noise=0.3).dataset
    models = {}
    for label, (members, hidden) in ENSEMBLES.items():
        config = TrainConfig(
            algo="dynamics",
            steps=200,
            batch_size=256,
            threads=1,
            progress=False,
            algo_config={"members": members, "hidden_sizes": hidden},
        )
        fit = fit_dynamics(config, dataset, run_dir=folder / f"run_{label}")
        models[label] = folder / f"arm_reach_{label}.onnx"
        export_dynamics(fit.checkpoint, models[label], dataset=dataset)
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
            name: MPCController(models[ensemble], config=MPCConfig(threads=args.threads, **settings))
            for name, ensemble, settings in CONFIGS
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
        f"onnxruntime threads {args.threads}, {args.rounds} x {args.ticks} ticks per row, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"| configuration (planner samples x horizon, reward, ensemble K x hidden) | p50 ms | p99 ms | mean ms | p99 <= {PERIOD_MS:g} ms |"
    )
    print("|---|---:|---:|---:|:---:|")
    for name, _, _ in CONFIGS:
        ms = np.concatenate(samples[name])
        p50, p99 = np.percentile(ms, [50, 99])
        suffix = "" if "," in name else ", 5x128x128"
        fits = "yes" if p99 <= PERIOD_MS else "no"
        print(f"| {name}{suffix} | {p50:.2f} | {p99:.2f} | {ms.mean():.2f} | {fits} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Vectorised seeds vs separate single-seed runs, side by side in one process.

For each algorithm: N separate `Trainer` runs with `seeds=[s]` against one run with
`seeds=[s_0..s_N-1]` (ensemble-shaped weights, one optimiser step for all seeds), same data,
same hyper-parameters. Prints (1) training throughput — wall time of the update loop only,
evaluation and checkpointing excluded — and (2) how close seed s of the vectorised run is to
the single-seed run of s: max |Δweight| after training and both final evaluations.

    .venv/bin/python benchmarks/vectorised_seeds.py --algos bc,td3bc --seeds 0,1,2,3 --steps 500
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import offrl_robot.algos  # noqa: F401
from offrl_robot.data.collect import collect
from offrl_robot.stats import sample_std
from offrl_robot.train import TrainConfig, Trainer


def _config(algo: str, seeds: list[int], args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        algo=algo,
        algo_config={"hidden_sizes": [args.hidden, args.hidden]},
        task="ArmReach-v0",
        steps=args.steps,
        seeds=seeds,
        batch_size=args.batch,
        eval_every=0,
        eval_episodes=args.eval_episodes,
        log_every=args.steps,
        checkpoint_every=0,
        progress=False,
        threads=args.threads,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="bc,td3bc")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=20, help="expert episodes in the dataset")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    data = collect("ArmReach-v0", "scripted-expert", episodes=args.episodes, seed=0, noise=0.1).dataset
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, "
        f"python {sys.version.split()[0]}; ArmReach expert data {len(data)} transitions; "
        f"{args.hidden}x{args.hidden} nets, batch {args.batch}, {args.steps} updates"
    )
    speed_rows, equal_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos.split(","):
            singles = []
            single_time = 0.0
            for seed in seeds:
                trainer = Trainer(
                    _config(algo, [seed], args), dataset=data, run_dir=Path(tmp) / f"{algo}_{seed}"
                )
                summary = trainer.fit()
                single_time += summary["train_time_s"]
                singles.append((trainer.algo.state_dict(), summary["final_eval"]["per_seed"][0]))
            vec = Trainer(_config(algo, seeds, args), dataset=data, run_dir=Path(tmp) / f"{algo}_vec")
            vec_summary = vec.fit()
            vec_time = vec_summary["train_time_s"]
            n = len(seeds)
            speed_rows.append((algo, f"{n} runs x 1 seed", single_time, n * args.steps / single_time, 1.0))
            speed_rows.append(
                (algo, f"1 run x {n} seeds", vec_time, n * args.steps / vec_time, single_time / vec_time)
            )
            vec_state = vec.algo.state_dict()
            for index, (seed, (state, single_eval)) in enumerate(zip(seeds, singles, strict=True)):
                diff = max(
                    (vec_state[name][index : index + 1] - value).abs().max().item()
                    for name, value in state.items()
                    if value.is_floating_point() and value.shape[:1] == (1,) and vec_state[name].shape[0] == n
                )
                vec_eval = vec_summary["final_eval"]["per_seed"][index]
                equal_rows.append(
                    (algo, seed, diff, single_eval["normalized_score"], vec_eval["normalized_score"])
                )
    print("\n## Throughput (update loop only)")
    print(f"| {'algo':<6} | {'mode':<16} | {'train s':>8} | {'seed-updates/s':>14} | {'speed-up':>8} |")
    print(f"|{'-' * 8}|{'-' * 18}|{'-' * 10}|{'-' * 16}|{'-' * 10}|")
    for algo, mode, secs, rate, speedup in speed_rows:
        print(f"| {algo:<6} | {mode:<16} | {secs:>8.2f} | {rate:>14.1f} | {speedup:>7.2f}x |")
    print("\n## Seed s of the vectorised run vs the single-seed run of s")
    print(
        f"| {'algo':<6} | {'seed':>4} | {'max |dw|':>10} | {'score single':>12} | {'score vectorised':>16} |"
    )
    print(f"|{'-' * 8}|{'-' * 6}|{'-' * 12}|{'-' * 14}|{'-' * 18}|")
    for algo, seed, diff, single_score, vec_score in equal_rows:
        print(f"| {algo:<6} | {seed:>4} | {diff:>10.2e} | {single_score:>12.1f} | {vec_score:>16.1f} |")
    by_algo: dict[str, list[tuple[float, float]]] = {}
    for algo, _, _, single_score, vec_score in equal_rows:
        by_algo.setdefault(algo, []).append((single_score, vec_score))
    for algo, pairs in by_algo.items():
        single_scores, vec_scores = np.array(pairs).T
        print(
            f"{algo}: score mean±std (ddof=1) over seeds: single runs "
            f"{single_scores.mean():.1f}±{sample_std(single_scores):.1f}, "
            f"vectorised {vec_scores.mean():.1f}±{sample_std(vec_scores):.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

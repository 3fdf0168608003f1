"""`offrl-robot demo` / `make demo`: the whole pipeline on one machine, end to end.

Stages (each one the same CLI command a user would run, called in-process so one failure
stops the demo with that command's one-line error):
  1. collect  — ArmReach-v0 with the noisy scripted expert, recorded as a rosbag2 log too;
  2. ingest   — the rosbag2 log back into a dataset with config/ingest/arm_reach.yaml
                (prints the sync report);
later stages (train -> export -> validate -> deploy) are appended as they land.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from offrl_robot import cli
from offrl_robot.errors import OffrlError

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for every artefact of the demo")
    parser.add_argument("--episodes", type=int, default=60, help="episodes of the scripted expert to collect")
    parser.add_argument(
        "--noise", type=float, default=0.1, help="expert action noise (fraction of the action range)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")


def _stage(name: str, argv: list[str], timings: dict[str, float]) -> None:
    print(f"\n=== {name}: offrl-robot {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    code = cli.main(argv)
    timings[name] = time.perf_counter() - start
    if code != 0:
        raise OffrlError(f"demo stage {name!r} failed (exit {code}); see the line above")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bag = out / "bags" / "arm_reach_demo"
    collected = "offrl_demo/arm_reach_collected-v0"
    ingested = "offrl_demo/arm_reach_ingested-v0"
    datasets = out / "datasets"
    shutil.rmtree(bag, ignore_errors=True)  # a re-run replaces the previous demo's log
    timings: dict[str, float] = {}
    _stage(
        "collect",
        [
            "collect",
            "--task",
            "ArmReach-v0",
            "--policy",
            "scripted-expert",
            "--noise",
            str(args.noise),
            "--episodes",
            str(args.episodes),
            "--seed",
            str(args.seed),
            "--out",
            collected,
            "--root",
            str(datasets),
            "--overwrite",
            "--bag",
            str(bag),
            "--storage",
            args.storage,
        ],
        timings,
    )
    _stage(
        "ingest",
        [
            "ingest",
            str(bag),
            "--spec",
            str(REPO_CONFIG / "ingest" / "arm_reach.yaml"),
            "--out",
            ingested,
            "--root",
            str(datasets),
            "--overwrite",
        ],
        timings,
    )
    print("\n=== summary")
    for name, seconds in timings.items():
        print(f"  {name:<10} {seconds:8.1f} s")
    print(f"  artefacts: {out}  (datasets {collected}, {ingested} under {datasets})")
    return 0

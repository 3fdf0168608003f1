"""`offrl-robot demo` / `make demo`: the whole pipeline on one machine, end to end.

Stages, each the same CLI command a user would run (called in-process, so a failing stage stops
the demo with that command's one-line error):
  1. collect   ArmReach-v0 with the noisy scripted expert, recorded as a rosbag2 log too;
  2. ingest    the rosbag2 log back into a dataset (config/ingest/arm_reach.yaml; prints the
               sync report): the policy is trained from the robot log, not from sim memory;
  3. train     behaviour cloning (config/train/arm_reach_bc.yaml), see README for why BC;
  4. export    the checkpoint to one self-contained ONNX file + card (parity-checked);
  5. validate  the MuJoCo gate (config/validate.yaml); on pass the card gets its validation block;
  6. deploy    policy_node + sim_node as separate processes over DDS for --node-seconds;
then one summary table and where every artefact is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from offrl_robot import cli
from offrl_robot.errors import OffrlError
from offrl_robot.paths import share_path


def _config(*parts: str) -> Path:
    """The package's own config file (source tree or installed share/offrl_robot/config)."""
    return share_path("config", *parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for every artefact of the demo")
    parser.add_argument(
        "--episodes", type=int, default=500, help="episodes of the scripted expert to collect"
    )
    parser.add_argument(
        "--noise", type=float, default=0.05, help="expert action noise (fraction of the range)"
    )
    parser.add_argument("--steps", type=int, default=30_000, help="training updates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    parser.add_argument(
        "--gate-config", default=None, help="validation gate thresholds (default: config/validate.yaml)"
    )
    parser.add_argument("--gate-episodes", type=int, default=20)
    parser.add_argument("--node-seconds", type=float, default=10.0, help="closed loop over DDS (0 = skip)")
    parser.add_argument("--domain-id", type=int, default=73, help="ROS_DOMAIN_ID of the closed-loop stage")
    parser.add_argument(
        "--min-thresholds",
        nargs="*",
        default=None,
        help="policy_node's floor on the gate thresholds (default: config/policy.yaml's), e.g. for a "
        "reduced run whose gate does not test success: nan_events<=0 intervention_rate<=0.05",
    )


def _stage(name: str, argv: list[str], timings: dict[str, float]) -> None:
    print(f"\n=== {name}: offrl-robot {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    code = cli.main(argv)
    timings[name] = time.perf_counter() - start
    if code != 0:
        raise OffrlError(f"demo stage {name!r} failed (exit {code}); see the line above")


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    datasets, bag = out / "datasets", out / "bags" / "arm_reach_demo"
    run_dir, model = out / "runs" / "bc", out / "models" / "arm_reach.onnx"
    reports = out / "reports"
    os.environ["MINARI_DATASETS_PATH"] = str(datasets)  # every stage reads/writes datasets here
    collected, ingested = "offrl_demo/arm_reach_collected-v0", "offrl_demo/arm_reach_ingested-v0"
    for stale in (bag, run_dir):  # a re-run replaces the previous demo's log and run
        shutil.rmtree(stale, ignore_errors=True)
    timings: dict[str, float] = {}
    seed = str(args.seed)
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
            seed,
            "--out",
            collected,
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
            str(_config("ingest", "arm_reach.yaml")),
            "--out",
            ingested,
            "--overwrite",
        ],
        timings,
    )
    _stage(
        "train",
        [
            "train",
            "--config",
            str(_config("train", "arm_reach_bc.yaml")),
            "--dataset",
            ingested,
            "--steps",
            str(args.steps),
            "--seeds",
            seed,
            "--out",
            str(run_dir),
            "--no-progress",
        ],
        timings,
    )
    _stage("export", ["export", str(run_dir), "--out", str(model)], timings)
    _stage(
        "validate",
        [
            "validate",
            str(model),
            "--task",
            "ArmReach-v0",
            "--episodes",
            str(args.gate_episodes),
            "--seed",
            seed,
            "--config",
            args.gate_config or str(_config("validate.yaml")),
            "--reports",
            str(reports),
        ],
        timings,
    )
    nodes = None
    if args.node_seconds > 0:
        from offrl_robot.ros.closed_loop import run_closed_loop

        print(f"\n=== deploy: policy_node + sim_node over DDS for {args.node_seconds:g} s", flush=True)
        start = time.perf_counter()
        nodes = run_closed_loop(
            model,
            _config("policy.yaml"),
            _config("sim.yaml"),
            seconds=args.node_seconds,
            domain_id=args.domain_id,
            log_dir=out / "logs",
            policy_overrides=(
                [] if args.min_thresholds is None else [f"min_thresholds:={json.dumps(args.min_thresholds)}"]
            ),
        )
        timings["deploy"] = time.perf_counter() - start
    summary = _summary(out, ingested, run_dir, model, reports, timings, nodes)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0


def _summary(
    out: Path, ingested: str, run_dir: Path, model: Path, reports: Path, timings: dict[str, float], nodes: Any
) -> dict[str, Any]:
    from offrl_robot.data.minari_io import load_dataset

    dataset = load_dataset(ingested)
    train = json.loads((run_dir / "summary.json").read_text())
    gate = json.loads((reports / model.stem / "report.json").read_text())
    metrics = gate["metrics"]
    rows = [
        ("dataset (from the bag)", f"{len(dataset)} transitions, {dataset.num_episodes} episodes"),
        (
            "training",
            f"{train['algo']} {train['steps']} updates in {train['train_time_s']:.0f} s "
            f"({train['updates_per_s']:.0f} updates/s)",
        ),
        (
            "gate",
            f"{'PASSED' if gate['passed'] else 'FAILED'}: success {metrics['success_rate']:.2f}, "
            f"final distance {metrics.get('final_distance_mean', float('nan')) * 100:.1f} cm, "
            f"interventions {metrics['intervention_rate'] * 100:.2f} % of ticks, "
            f"NaN events {metrics['nan_events']:.0f}",
        ),
    ]
    if nodes is not None:
        rows += [
            (
                "nodes over DDS",
                f"{nodes.seconds:g} s, {len(nodes.episodes)} episodes, success {nodes.success_rate:.2f}, "
                f"{nodes.commands} /cmd, rate {nodes.diag_float('control_rate_achieved_hz'):.1f} Hz",
            ),
            (
                "node tick latency",
                f"p50 {nodes.diag_float('tick_latency_p50_us'):.0f} us, "
                f"p99 {nodes.diag_float('tick_latency_p99_us'):.0f} us",
            ),
            ("node interventions", ", ".join(f"{k} {v}" for k, v in nodes.interventions.items()) or "none"),
        ]
    rows += [("stage times", ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))]
    artefacts = [
        ("rosbag2 log", out / "bags" / "arm_reach_demo"),
        ("datasets", out / "datasets"),
        ("training run", run_dir),
        ("model + card", model.parent),
        ("gate report", reports / model.stem),
        ("node logs", out / "logs"),
    ]
    print(
        "\n=== summary\n" + _table(rows) + "\n\n=== artefacts\n" + _table([(k, str(v)) for k, v in artefacts])
    )
    return {
        "rows": dict(rows),
        "artefacts": {k: str(v) for k, v in artefacts},
        "gate_passed": gate["passed"],
        "node_success_rate": None if nodes is None else nodes.success_rate,
    }

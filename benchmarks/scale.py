"""Scale-out benchmark: bag-fleet ingestion and a hyper-parameter sweep at 1 and 2 Ray workers.

    .venv/bin/python benchmarks/scale.py [--bags 32] [--trials 16] [--workers 1,2] [--workdir DIR]

Side by side in one run, on this machine:

- ingestion of `--bags` bags (each of `--ticks` control ticks written with the project's
  RobotLogWriter, one seed per bag: ingest refuses byte-identical copies, as it would count
  one recording twice; bags are cached in --workdir): the serial path
  (`ingest`, no Ray: the peer every speed-up is also compared with) and
  `fleet_ingest.ingest_parallel` at each worker count. The parallel datasets are checked to be
  identical (sha256) to the serial one. Ray start-up is timed separately from the work.
- a `--trials`-trial sweep (tiny BC nets, one evaluation per trial) through `run_sweep` at each
  worker count (a fresh loopback-only Ray each time; wall time includes Ray start and shutdown).

Ingest also prints its serial phases (per-bag work vs the merge on the driver, which no worker
count speeds up) and the bytes per bag, the inputs of the 10/100-node estimate in BENCHMARKS.md.
With `--repeat N` every configuration runs N times, interleaved, and the best time is kept.

Prints wall times, speed-up against 1 worker and against the ideal (= workers), and efficiency.
The machine is shared: run it when the load is low and look at the load average it prints.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # bagkit: the arm-bag writer the ingest tests use


def _make_bags(workdir: Path, count: int, ticks: int) -> list[str]:
    from bagkit import write_arm_bag

    episodes = max(1, ticks // 400)
    bags = []
    for i in range(count):
        path = workdir / f"robot_{i:03d}_seed{i}"
        if not path.exists():
            write_arm_bag(path, episodes=episodes, steps=400, seed=i)
        bags.append(str(path))
    return bags


def bench_ingest(bags: list[str], workers: list[int], repeat: int) -> list[tuple[str, int, float, float]]:
    """(label, workers, work seconds, seconds incl. Ray start) per configuration; best of `repeat`."""
    from offrl_robot.data.ingest_spec import load_spec
    from offrl_robot.data.rosbag_ingest import ingest, ingest_bag, merge_bag_parts
    from offrl_robot.scale.fleet_ingest import ingest_parallel
    from offrl_robot.scale.ray_local import ray_session

    spec = load_spec(REPO / "config" / "ingest" / "arm_reach.yaml")
    ingest(bags[:1], spec)  # warm imports (MuJoCo for the reward) outside the timings
    serial_s, per_bag_s, merge_s = [], [], []
    for _ in range(repeat):
        start = time.perf_counter()
        serial, _ = ingest(bags, spec)
        serial_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        parts = [ingest_bag(b, spec) for b in bags]
        per_bag_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        merge_bag_parts(parts, spec)
        merge_s.append(time.perf_counter() - start)
        del parts
    rows = [("serial ingest (no Ray)", 1, min(serial_s), min(serial_s))]
    reference = serial.sha256()
    from offrl_robot.data.minari_io import save_dataset

    start = time.perf_counter()
    save_dataset(serial, "bench/fleet", root=Path(bags[0]).parent / "minari", overwrite=True)
    save_s = time.perf_counter() - start
    bag_mb = sum(f.stat().st_size for f in Path(bags[0]).rglob("*") if f.is_file()) / 1e6
    out_mb = sum(getattr(serial, k).nbytes for k in ("observations", "actions", "next_observations")) / 1e6
    print(
        f"  serial phases: per-bag work {min(per_bag_s):.2f} s ({min(per_bag_s) / len(bags) * 1e3:.0f} ms/bag), "
        f"merge on the driver {min(merge_s):.2f} s (serial fraction {min(merge_s) / min(serial_s):.1%}), "
        f"then saving the Minari dataset on the driver {save_s:.2f} s; "
        f"bag {bag_mb:.1f} MB on disk, dataset arrays {out_mb / len(bags):.1f} MB/bag, {out_mb:.0f} MB total"
    )
    work: dict[int, list[float]] = {n: [] for n in workers}
    total: dict[int, list[float]] = {n: [] for n in workers}
    for _ in range(repeat):  # interleaved, so a change in the machine's load hits every count
        for n in workers:
            t0 = time.perf_counter()
            with ray_session(num_cpus=n):
                t1 = time.perf_counter()
                dataset, _ = ingest_parallel(bags, spec, workers=n)
                t2 = time.perf_counter()
            work[n].append(t2 - t1)
            total[n].append(t2 - t0)
            if dataset.sha256() != reference:
                raise SystemExit(f"parallel ingest at {n} workers differs from serial ingest")
    rows += [(f"Ray ingest, {n} worker(s)", n, min(work[n]), min(total[n])) for n in workers]
    return rows


def bench_sweep(
    workdir: Path, trials: int, steps: int, workers: list[int], repeat: int
) -> list[tuple[str, int, float, float]]:
    from offrl_robot.data.collect import collect
    from offrl_robot.data.minari_io import save_dataset
    from offrl_robot.scale.sweep import run_sweep, sweep_from_dict

    dataset_dir = workdir / "minari" / "arm_reach" / "bench-v0"
    if not dataset_dir.exists():
        data = collect("ArmReach-v0", "scripted-expert", episodes=5, seed=0, noise=0.1).dataset
        dataset_dir = save_dataset(data, "arm_reach/bench", root=workdir / "minari")
    rates = [10 ** (-2.5 - 1.5 * i / max(trials - 1, 1)) for i in range(trials)]
    times: dict[int, list[float]] = {n: [] for n in workers}
    for n in [n for _ in range(repeat) for n in workers]:  # interleaved repeats
        config = {
            "name": f"bench_w{n}",
            "train": {
                "steps": steps,
                "batch_size": 64,
                "eval_every": steps,
                "eval_episodes": 1,
                "log_every": steps,
                "threads": 1,
            },
            "datasets": [str(dataset_dir)],
            "algorithms": {"bc": {"hidden_sizes": [64, 64], "learning_rate": {"grid": rates}}},
            "seeds": [[0]],
            "storage": str(workdir / "sweeps"),
            "max_failures": 0,
        }
        shutil.rmtree(workdir / "sweeps" / f"bench_w{n}", ignore_errors=True)
        spec = sweep_from_dict(config, workdir / "bench.yaml")
        start = time.perf_counter()
        result = run_sweep(spec, workers=n)
        wall = time.perf_counter() - start
        failed = [r["trial"] for r in result.rows if r["status"] != "ok"]
        if failed:
            raise SystemExit(f"sweep at {n} workers: trials failed: {failed}")
        times[n].append(wall)
    return [(f"{trials}-trial sweep, {n} worker(s)", n, min(times[n]), min(times[n])) for n in workers]


def _table(title: str, rows: list[tuple[str, int, float, float]], base: int, serial: bool) -> str:
    """Speed-up of each row against row `base` (1 Ray worker), with the ideal (= workers)."""
    ref = rows[base][2]
    lines = [
        title,
        f"  {'configuration':<32} {'work s':>8} {'incl. Ray start s':>18} {'speed-up vs 1 worker':>21} "
        f"{'ideal':>6} {'efficiency':>10}" + (f" {'vs serial':>10}" if serial else ""),
    ]
    for i, (label, n, work, total) in enumerate(rows):
        speedup = (
            f"{ref / work:>21.2f} {n:>6} {ref / work / n:>10.0%}"
            if i >= base
            else f"{'':>21} {'':>6} {'':>10}"
        )
        extra = f" {rows[0][2] / work:>10.2f}" if serial else ""
        lines.append(f"  {label:<32} {work:>8.2f} {total:>18.2f} {speedup}{extra}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=32)
    parser.add_argument("--ticks", type=int, default=40_000, help="control ticks per bag")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--trial-steps", type=int, default=2000, help="update steps per sweep trial")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--workdir", default=None, help="cache for bags and dataset (default: a temp dir)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per configuration, interleaved (best kept)"
    )
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="offrl-scale-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MINARI_DATASETS_PATH", str(workdir / "minari"))

    import ray
    import torch

    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"python {platform.python_version()}, ray {ray.__version__}, torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    if not args.skip_ingest:
        bags = _make_bags(workdir, args.bags, args.ticks)
        rows = bench_ingest(bags, workers, args.repeat)
        print(_table(f"ingestion of {args.bags} bags x {args.ticks} ticks", rows, base=1, serial=True))
        print(f"  load average after: {os.getloadavg()[0]:.1f}")
    if not args.skip_sweep:
        rows = bench_sweep(workdir, args.trials, args.trial_steps, workers, args.repeat)
        print(
            _table(
                f"sweep: {args.trials} trials (BC 64x64, {args.trial_steps} steps, 1 eval episode)",
                rows,
                base=0,
                serial=False,
            )
        )
        print(f"  load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

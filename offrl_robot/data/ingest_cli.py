"""`offrl-robot ingest`: the command line of rosbag ingestion.

Why a module of its own: the command picks the serial path (`rosbag_ingest.ingest`) or, with
`--workers`/`--address`, the Ray one (`scale.fleet_ingest.ingest_parallel`, which runs
`rosbag_ingest.ingest_bag` per bag). Living above both keeps `rosbag_ingest` free of any
import of the scale-out layer (tests/test_layering.py), so the two never import each other.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from offrl_robot.data.ingest_spec import load_spec
from offrl_robot.data.rosbag_ingest import ingest
from offrl_robot.errors import ConfigError, OffrlError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", metavar="BAG", help="rosbag2 directories or .mcap/.db3 files")
    parser.add_argument("--spec", required=True, help="ingest spec YAML (see config/ingest/)")
    parser.add_argument("--out", required=True, help="dataset name, e.g. arm_reach/robot-v0")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    parser.add_argument("--root", default=None, help="Minari datasets root (default: $MINARI_DATASETS_PATH)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="bags ingested in parallel on Ray (needs the scale extra); default: serial, no Ray "
        "(with --address: all of the cluster's CPUs)",
    )
    parser.add_argument(
        "--address", default=None, help="join this Ray cluster (e.g. 10.0.0.5:6379) instead of a local one"
    )


def _check_output(args: argparse.Namespace) -> None:
    """Fail before a long ingest, not after it: the dataset name, the --root folder (a usable
    directory, or creatable under one) and an existing dataset without --overwrite."""
    from offrl_robot.data.minari_io import dataset_id_from_name, datasets_root

    dataset_id = dataset_id_from_name(args.out)
    root = datasets_root(args.root)
    given = (
        f"--root {root}"
        if args.root is not None
        else f"datasets root {root} ($MINARI_DATASETS_PATH or default)"
    )
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == root else f"cannot be created: {probe} is a file"
        raise ConfigError(f"{given} {where}, not a directory; pass a directory for the datasets")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{given} is not writable ({probe} denies writes); pass a directory you can write to"
        )
    target = root / dataset_id
    if target.exists() and not args.overwrite:
        raise ConfigError(
            f"dataset {dataset_id} already exists at {target}; pass --overwrite or choose another --out"
        )


def _emit(text: str, written: Path | None = None) -> None:
    """Print to stdout; a closed stdout (`| head`) is a one-line error, not a traceback."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # the interpreter would fail again flushing stdout at exit: point it at /dev/null
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        state = f"the dataset was written to {written}" if written else "no dataset was written"
        raise OffrlError(
            f"standard output closed early (broken pipe); {state}; redirect the report to a file instead of a pipe that exits early"
        ) from None


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    _check_output(args)
    if (args.workers or 1) > 1 or args.address:
        from offrl_robot.scale.fleet_ingest import ingest_parallel

        dataset, report = ingest_parallel(args.bags, spec, workers=args.workers, address=args.address)
    else:
        dataset, report = ingest(args.bags, spec)
    _emit(report.format())
    from offrl_robot.data.minari_io import save_dataset

    try:
        path = save_dataset(dataset, args.out, root=args.root, overwrite=args.overwrite)
    except FileExistsError:
        raise ConfigError(
            f"dataset {args.out} already exists; pass --overwrite or choose another --out"
        ) from None
    _emit(f"wrote {len(dataset)} transitions in {dataset.num_episodes} episodes to {path}", written=path)
    return 0

"""`offrl-robot dataset-info NAME|PATH` (or `--list`): what a local Minari dataset holds.

Why: before training on a dataset you want to see, without opening Python, that it is the one
you think it is — its size, dimensions and names, where it came from, and how good the
behaviour in it was (mean return, success rate for arm tasks).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from offrl_robot.data.dataset import Dataset
from offrl_robot.stats import sample_std


def summarize(dataset: Dataset) -> dict[str, object]:
    """The facts `dataset-info` prints, as a dict (also handy in tests and notebooks)."""
    returns = [float(dataset.rewards[start:stop].sum()) for start, stop in dataset.episode_bounds()]
    lengths = [stop - start for start, stop in dataset.episode_bounds()]
    meta = dataset.metadata
    summary: dict[str, object] = {
        "episodes": dataset.num_episodes,
        "transitions": len(dataset),
        "episode_length": {
            "min": int(min(lengths)),
            "mean": float(np.mean(lengths)),
            "max": int(max(lengths)),
        },
        "observation_dim": dataset.observation_dim,
        "action_dim": dataset.action_dim,
        "observation_names": list(meta.observation_names),
        "action_names": list(meta.action_names),
        "action_low": list(meta.action_low),
        "action_high": list(meta.action_high),
        "control_rate_hz": meta.control_rate_hz,
        "source": meta.source,
        "reward": meta.reward,
        "task": meta.task,
        "mean_return": float(np.mean(returns)),
        "std_return": sample_std(returns),  # ddof = 1, as every report (offrl_robot.stats)
        "terminals": int(dataset.terminals.sum()),
        "timeouts": int(dataset.timeouts.sum()),
        "sha256": dataset.sha256(),
    }
    success = _success_rate(dataset)
    if success is not None:
        summary["success_rate"] = success
    return summary


def _success_rate(dataset: Dataset) -> float | None:
    """Arm tasks only: share of episodes whose final state is within the success distance."""
    task = dataset.metadata.task
    if task is None:
        return None
    from offrl_robot.errors import ConfigError
    from offrl_robot.sim.tasks import task_info

    try:
        info = task_info(task)
    except ConfigError:
        return None
    if info.definition is not None:  # a task file: its own success function on each final transition
        if list(dataset.metadata.observation_names) != list(info.observation_names):
            return None
        from offrl_robot.registry import resolve_success

        success = resolve_success(info.definition.success, task=info.definition)
        last = np.array([stop - 1 for _, stop in dataset.episode_bounds()])
        hits = success(dataset.observations[last], dataset.actions[last], dataset.next_observations[last])
        return float(np.mean(np.asarray(hits, dtype=bool)))
    if not info.is_arm_task or info.name != "ArmReach-v0":
        return None
    from offrl_robot.sim.arm_kinematics import default_kinematics

    finals = np.stack([dataset.next_observations[stop - 1] for _, stop in dataset.episode_bounds()])
    ee = default_kinematics().site_position(finals[:, :6].astype(np.float64))
    distance = np.linalg.norm(ee - finals[:, 12:15], axis=-1)
    return float(np.mean(distance < info.extra["success_distance_m"]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="dataset id (e.g. arm_reach/expert-v0) or a dataset folder")
    parser.add_argument(
        "--root", default=None, help="datasets root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"
    )
    parser.add_argument("--list", action="store_true", help="list the local Minari datasets and exit")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from offrl_robot.data.minari_io import datasets_root, list_local, load_dataset
    from offrl_robot.errors import ConfigError

    if args.list:
        names = list_local(args.root)
        print("\n".join(names) if names else f"no local Minari datasets under {datasets_root(args.root)}")
        return 0
    if not args.name:
        raise ConfigError("dataset-info: give a dataset NAME or PATH, or --list to see the local ones")
    summary = summarize(load_dataset(args.name, root=args.root))
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
        return 0
    length = summary["episode_length"]
    assert isinstance(length, dict)
    lines = [
        f"dataset      {args.name}",
        f"task         {summary['task'] or 'n/a'}",
        f"episodes     {summary['episodes']}  (length {length['min']}..{length['max']}, mean {length['mean']:.1f})",
        f"transitions  {summary['transitions']}  (terminals {summary['terminals']}, timeouts {summary['timeouts']})",
        f"observation  {summary['observation_dim']}: {', '.join(summary['observation_names'])}",  # type: ignore[arg-type]
        f"action       {summary['action_dim']}: {', '.join(summary['action_names'])}",  # type: ignore[arg-type]
        f"action low   {summary['action_low']}",
        f"action high  {summary['action_high']}",
        f"control rate {summary['control_rate_hz']:g} Hz",
        f"source       {json.dumps(summary['source'], default=str)}",
        f"reward       {summary['reward'] or 'n/a'}",
        f"return       mean {summary['mean_return']:.3f}, std {summary['std_return']:.3f}",
    ]
    if "success_rate" in summary:
        lines.append(f"success rate {summary['success_rate']:.2f}")
    lines.append(f"sha256       {summary['sha256']}")
    print("\n".join(lines))
    return 0

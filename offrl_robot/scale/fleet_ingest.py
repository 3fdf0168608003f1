"""Parallel ingestion of a fleet's bags on Ray: one bag per task, merged like a serial ingest.

Bags are independent (episodes never span bags), so each Ray task runs exactly what the serial
path runs for one bag (`rosbag_ingest.ingest_bag`) and sends back its `BagPart`; the driver then
calls the same `merge_bag_parts` the serial path calls, with the parts in the order the bags
were given. Everything that could differ between the two paths — the order of rows, episode
splits at bag boundaries, the sync report's counters and their key order, the per-topic rate
averages, the source list — is therefore computed by the same code on the same inputs in the
same order, and the dataset is byte-for-byte the one `ingest` makes (tests/test_scale_ingest.py).

Bags are read where they lie: on a cluster every worker must see them at the same path
(shared storage), and each part's arrays travel back to the driver through Ray's object store.
One difference from the serial path remains by design: there, a message type that one bag embeds
is also used to decode later bags (one shared type resolver); here each bag must carry the
definitions of its own custom types (ROS 2 bags normally do).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from offrl_robot.data.dataset import Dataset
from offrl_robot.data.ingest_spec import IngestSpec
from offrl_robot.data.rosbag_ingest import BagPart, SyncReport, ingest_bag, merge_bag_parts
from offrl_robot.errors import BagError, ConfigError, OffrlError
from offrl_robot.scale.ray_local import ray_session


def _ingest_bag_task(path: str, spec: IngestSpec, cwd: str) -> BagPart:
    """Ray task body: the serial per-bag step, run from the driver's working directory so a
    relative bag path means (and is reported as) the same thing it does for a serial ingest."""
    with contextlib.chdir(cwd) if os.path.isdir(cwd) else contextlib.nullcontext():
        return ingest_bag(path, spec)


def ingest_parallel(
    bags: Sequence[str | os.PathLike[str]],
    spec: IngestSpec,
    workers: int | None = None,
    address: str | None = None,
) -> tuple[Dataset, SyncReport]:
    """Ingest `bags` with up to `workers` Ray tasks at a time; same result as `ingest(bags, spec)`.

    Locally this starts a loopback-only Ray with `workers` CPUs (default: all of this machine);
    with `address` it joins that cluster and keeps at most `workers` bags in flight (default:
    as many as the cluster has CPUs).
    """
    if not bags:
        raise BagError("no bag given; pass one or more rosbag2 directories or files")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    paths = [str(path) for path in bags]
    cwd = os.getcwd()
    with ray_session(address, num_cpus=workers if not address else None) as session:
        ray = session.ray
        workers = workers or session.num_cpus
        task = ray.remote(num_cpus=1, max_retries=1)(_ingest_bag_task)
        spec_ref = ray.put(spec)
        parts: list[BagPart | None] = [None] * len(paths)
        pending: dict[object, int] = {}
        next_index = 0
        while next_index < len(paths) or pending:
            while next_index < len(paths) and len(pending) < workers:
                pending[task.remote(paths[next_index], spec_ref, cwd)] = next_index
                next_index += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                parts[index] = _get(ray, ref)
    return merge_bag_parts([part for part in parts if part is not None], spec)


def _get(ray: object, ref: object) -> BagPart:
    """A task's result; a user error raised on a worker is re-raised here as that one line."""
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)  # type: ignore[attr-defined]
    except RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, OffrlError):
            raise type(cause)(str(cause)) from None
        raise

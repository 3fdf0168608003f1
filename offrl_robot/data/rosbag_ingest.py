"""rosbag2 logs -> Dataset, following an ingest spec; also the `offrl-robot ingest` command.

Alignment is as-of (zero-order hold): at each control tick every input is the last message at
or before the tick, so a step never sees the future. A tick whose input is older than its
freshness window (or that has no message yet) is dropped and counted per topic, and a dropped
tick also drops the row before it (that row has no valid next observation) and splits the
episode there (the row before the gap is marked a timeout: bootstrapping is allowed).

Ticks come from a reference topic (typically the command: one tick per command, so each
action is paired with the state the controller acted on) or from a fixed grid at the control
rate. The next observation of tick i is the observation at tick i+1; for the last tick of an
episode it is the observation at the first message of the primary (first) observation topic
after the tick — the state the last command produced.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import hashlib
import importlib
import itertools
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offrl_robot.data.bag_reader import (
    BULK_TYPES,
    JOINT_STATE,
    Bag,
    Layout,
    RawBatch,
    TopicInfo,
    TypeResolver,
    bulk_decode,
    get_path,
    normalise_msgtype,
)
from offrl_robot.data.dataset import Dataset, DatasetMetadata
from offrl_robot.data.ingest_spec import IngestSpec, TopicFields, load_spec
from offrl_robot.errors import BagError, ConfigError

NS = 1_000_000_000


# ---------------------------------------------------------------------------------- report
@dataclass
class TopicStats:
    topic: str
    msgtype: str
    messages: int
    rate_hz: float
    max_gap_s: float


@dataclass
class SyncReport:
    """What alignment did: ticks, kept rows, drops by reason, per-topic rates."""

    bags: list[str] = field(default_factory=list)
    ticks: int = 0
    transitions: int = 0
    episodes: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    stale: Counter[str] = field(default_factory=Counter)
    topics: dict[str, TopicStats] = field(default_factory=dict)
    time_source: str = "receive"

    def merge_topic(self, stats: TopicStats) -> None:
        old = self.topics.get(stats.topic)
        if old is None:
            self.topics[stats.topic] = stats
        else:
            total = old.messages + stats.messages
            rate = (old.rate_hz * old.messages + stats.rate_hz * stats.messages) / max(total, 1)
            self.topics[stats.topic] = TopicStats(
                stats.topic, stats.msgtype, total, rate, max(old.max_gap_s, stats.max_gap_s)
            )

    def merge(self, other: SyncReport) -> None:
        """Add another bag's report, in bag order: the same numbers (and key order) as if both
        bags had been counted into one report, so a parallel ingest reports what a serial one does."""
        self.bags.extend(other.bags)
        self.ticks += other.ticks
        self.dropped.update(other.dropped)  # update() keeps zero counts, as `+= 0` does
        self.stale.update(other.stale)
        for stats in other.topics.values():
            self.merge_topic(stats)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (stored in the dataset metadata's `extra`)."""
        return {
            "ticks": self.ticks,
            "transitions": self.transitions,
            "episodes": self.episodes,
            "time_source": self.time_source,
            "dropped": {k: int(v) for k, v in self.dropped.items() if v},
            "stale": {k: int(v) for k, v in self.stale.items() if v},
            "topics": {
                t: {
                    "type": st.msgtype,
                    "messages": st.messages,
                    "rate_hz": st.rate_hz,
                    "max_gap_s": st.max_gap_s,
                }
                for t, st in self.topics.items()
            },
        }

    def format(self) -> str:
        lines = [
            f"sync report ({len(self.bags)} bag(s), time source: {self.time_source})",
            f"  ticks {self.ticks}  kept {self.transitions}  dropped {sum(self.dropped.values())}  episodes {self.episodes}",
        ]
        for reason, count in sorted(self.dropped.items()):
            if count:
                lines.append(f"  dropped: {reason}: {count}")
        for topic, count in sorted(self.stale.items()):
            if count:
                lines.append(f"  stale or missing at tick: {topic}: {count}")
        lines.append(f"  {'topic':<40} {'type':<36} {'msgs':>8} {'rate Hz':>9} {'max gap s':>10}")
        for st in self.topics.values():
            lines.append(
                f"  {st.topic:<40} {st.msgtype:<36} {st.messages:>8} {st.rate_hz:>9.2f} {st.max_gap_s:>10.3f}"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- decoding
@dataclass
class TopicData:
    """One decoded topic: times (ns, chosen clock) and float32 columns."""

    times: np.ndarray
    values: np.ndarray


def _column_names(src: TopicFields, width: int, where: str) -> list[str]:
    if src.names is not None:
        if len(src.names) != width:
            raise ConfigError(
                f"ingest spec: {where}.names has {len(src.names)} names but the topic gives {width} values"
            )
        return list(src.names)
    if src.joints is not None:
        return [f"{j}.{f}" for f in src.fields for j in src.joints]
    base = src.topic.strip("/").replace("/", ".") or "topic"
    if src.indices is not None:
        return [f"{base}.{f}[{k}]" for f in src.fields for k in src.indices]
    if width == len(src.fields):
        return [f"{base}.{f}" for f in src.fields]
    return [f"{base}.{i}" for i in range(width)]


def _joint_state_picker(src: TopicFields, bag: str) -> Callable[[Layout], list[int]]:
    for f in src.fields:
        if f not in ("position", "velocity", "effort"):
            raise ConfigError(
                f"ingest spec: topic {src.topic}: JointState field {f!r} is not position, velocity or effort"
            )
    if not src.by_index and not src.joints:
        raise ConfigError(
            f"ingest spec: topic {src.topic}: list the joints by name (joints: [...]), or set by_index: true with indices"
        )

    def pick(layout: Layout) -> list[int]:
        if src.by_index:
            slots = list(src.indices or [])
        else:
            slots = []
            for joint in src.joints or []:
                if joint not in layout.names:
                    shown = layout.names or "an empty name list"
                    hint = "; use by_index: true with indices" if not layout.names else ""
                    raise BagError(
                        f"bag {bag}: topic {src.topic}: joint {joint!r} is absent from JointState (names in bag: {shown}){hint}"
                    )
                slots.append(layout.names.index(joint))
        offsets = []
        for f in src.fields:
            start, count = layout.arrays[f]
            for slot in slots:
                if slot >= count:
                    raise BagError(
                        f"bag {bag}: topic {src.topic}: field {f} has {count} values, index {slot} is missing; drop {f} from the spec"
                    )
                offsets.append(start + 8 * slot)
        return offsets

    return pick


def _array_picker(src: TopicFields, bag: str) -> Callable[[Layout], list[int]]:
    if list(src.fields) != ["data"]:
        raise ConfigError(f"ingest spec: topic {src.topic}: Float64MultiArray has only the field 'data'")

    def pick(layout: Layout) -> list[int]:
        start, count = layout.arrays["data"]
        slots = list(src.indices) if src.indices is not None else list(range(count))
        for slot in slots:
            if slot >= count:
                raise BagError(
                    f"bag {bag}: topic {src.topic}: data has {count} values, index {slot} is missing; fix indices in the spec"
                )
        return [start + 8 * s for s in slots]

    return pick


def _generic_row(msg: Any, src: TopicFields, topic: str, bag: str) -> list[float]:
    row: list[float] = []
    for f in src.fields:
        try:
            value = get_path(msg, f)
        except AttributeError:
            raise BagError(
                f"bag {bag}: topic {topic}: field {f!r} does not exist on {type(msg).__name__}; fix fields in the spec"
            ) from None
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            row.append(float(value))
            continue
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if src.indices is not None:
            if any(k >= arr.size for k in src.indices):
                raise BagError(
                    f"bag {bag}: topic {topic}: field {f} has {arr.size} values; fix indices in the spec"
                )
            arr = arr[list(src.indices)]
        row.extend(arr.tolist())
    return row


def _header_ns(msg: Any) -> int | None:
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return int(header.stamp.sec) * NS + int(header.stamp.nanosec)


class _Growing:
    """Append-only rows, preallocated to the count the bag reports: no concatenate copy at the
    end (for a million-message bag that copy would double the decoded data's memory)."""

    def __init__(self, capacity: int | None, dtype: type) -> None:
        self.capacity, self.dtype = max(capacity or 0, 1), dtype
        self.data: np.ndarray | None = None
        self.size = 0

    def append(self, block: np.ndarray) -> None:
        if self.data is None:
            self.data = np.empty((self.capacity, *block.shape[1:]), self.dtype)
        if self.size + len(block) > len(self.data):  # more than reported: grow (checked later)
            grown = np.empty((max(2 * len(self.data), self.size + len(block)), *block.shape[1:]), self.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : self.size + len(block)] = block
        self.size += len(block)

    def array(self, empty_shape: tuple[int, ...]) -> np.ndarray:
        if self.data is None:
            return np.empty(empty_shape, self.dtype)
        return self.data[: self.size]


class _TopicDecoder:
    """Accumulates decoded batches of one topic (bulk numpy path or rosbags fallback)."""

    def __init__(
        self, bag: Bag, info: TopicInfo, src: TopicFields | None, use_header: bool, resolver: TypeResolver
    ) -> None:
        self.bag, self.info, self.src = bag, info, src
        self.msgtype = normalise_msgtype(info.msgtype)
        self.use_header = use_header
        self.resolver = resolver
        self.times = _Growing(info.reported_count, np.int64)
        self.values = _Growing(info.reported_count, np.float32)
        self.count = 0
        self.pick: Callable[[Layout], list[int]] | None = None
        if src is not None and self.msgtype in BULK_TYPES:
            self.pick = (_joint_state_picker if self.msgtype == JOINT_STATE else _array_picker)(src, bag.name)
        elif src is not None:
            self.msgtype = resolver.ensure(info, bag.name)

    def add(self, raw: RawBatch) -> None:
        self.count += len(raw)
        recv = np.asarray(raw.times, dtype=np.int64)
        if self.src is None:  # marker topic: times only
            self.times.append(recv)
            return
        if self.pick is not None:
            has_header = self.msgtype == JOINT_STATE  # Float64MultiArray has none: receive time
            values, stamps = bulk_decode(
                self.msgtype,
                raw,
                self.pick,
                self.use_header and has_header,
                self.info.name,
                self.bag.name,
            )
            self.times.append(stamps if stamps is not None else recv)
            self.values.append(values)
            return
        rows, stamps = [], recv.copy()
        for k, data in enumerate(raw.messages()):
            try:
                msg = self.resolver.deserialize(data, self.msgtype)
            except Exception as err:
                raise BagError(
                    f"bag {self.bag.name}: topic {self.info.name}: message {self.count - len(raw) + k} does not decode as {self.info.msgtype} ({type(err).__name__}: {err})"
                ) from None
            rows.append(_generic_row(msg, self.src, self.info.name, self.bag.name))
            if self.use_header:
                stamp = _header_ns(msg)
                if stamp is not None:
                    stamps[k] = stamp
        width = len(rows[0]) if rows else 0
        if any(len(r) != width for r in rows):
            raise BagError(
                f"bag {self.bag.name}: topic {self.info.name}: array length changes between messages"
            )
        self.times.append(stamps)
        self.values.append(np.asarray(rows, dtype=np.float32).reshape(len(rows), width))

    def finish(self) -> TopicData:
        times = self.times.array((0,))
        values = self.values.array((0, 0))
        back = np.flatnonzero(np.diff(times) < 0)
        if back.size:
            k = int(back[0]) + 1
            clock = "header stamps" if self.use_header else "receive timestamps"
            fix = "set alignment.time_source: receive" if self.use_header else "re-record or reorder the bag"
            raise BagError(
                f"bag {self.bag.name}: topic {self.info.name}: {clock} go backwards at message {k} "
                f"({(times[k - 1] - times[k]) / 1e6:.3f} ms); {fix}"
            )
        return TopicData(times, values)


def _return_freed_memory() -> None:
    """Give the decode phase's freed scratch (chunk buffers, byte matrices) back to the OS.

    glibc keeps freed mid-sized blocks in its heap after raising its mmap threshold, so without
    this the large output arrays allocated next stack on top of dead scratch and peak RSS grows
    by tens of MiB on a million-message bag. No-op where malloc_trim does not exist.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---------------------------------------------------------------------------------- alignment
def _as_of(data: TopicData, ticks: np.ndarray, max_age_ns: float) -> tuple[np.ndarray, np.ndarray]:
    """Index of the last message at or before each tick, and whether it is fresh enough."""
    idx = np.searchsorted(data.times, ticks, side="right") - 1
    ok = idx >= 0
    safe = np.maximum(idx, 0)
    if np.isfinite(max_age_ns):
        ok &= (ticks - data.times[safe]) <= max_age_ns
    return safe, ok


def _load_reward_function(name: str, task: str | None = None) -> Callable[..., Any]:
    """A registered reward name (`reach`, `arm_reach`, entry points) or a `module:function` (the
    user's own code: ingest runs what the user's spec names). A reward that takes the task
    (`task=`, e.g. `reach`: forward kinematics of the task's MJCF) is bound to the spec's `task:`."""
    from offrl_robot.registry import is_registered_reward, lookup_reward, needs_task

    if is_registered_reward(name) or ":" not in name:
        function = lookup_reward(name)
    else:
        module_name, _, func_name = name.partition(":")
        try:
            module = importlib.import_module(module_name)
            function = getattr(module, func_name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(
                f"ingest spec: reward.function {name!r} cannot be imported ({err}); fix the name"
            ) from None
    if callable(function) and needs_task(function):
        if not task:
            raise ConfigError(
                f"ingest spec: reward.function {name} computes from the task (its MJCF); set task: to the task file"
            )
        from offrl_robot.sim.tasks import task_definition

        definition = task_definition(task)
        if definition is None:
            raise ConfigError(f"ingest spec: reward.function {name} needs a task file as task:, not {task}")
        return functools.partial(function, task=definition)
    return function


@dataclass
class _BagResult:
    observations: np.ndarray
    actions: np.ndarray
    next_observations: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_starts: np.ndarray
    obs_names: list[str]
    act_names: list[str]


def _needed_topics(bag: Bag, spec: IngestSpec) -> dict[str, TopicFields | None]:
    """Every topic the spec reads (None: times only), checked against what the bag holds."""
    srcs: list[TopicFields] = [*spec.observations, spec.action]
    al, ep = spec.alignment, spec.episodes
    needed: dict[str, TopicFields | None] = {}
    for src in srcs:
        if src.topic in needed:
            raise ConfigError(
                f"ingest spec: topic {src.topic} is listed twice; merge its fields into one entry"
            )
        needed[src.topic] = src
    extra = [t for t in (ep.marker_topic, spec.reward.topic) if t]
    if al.reference != "rate":
        extra.append(al.reference)
    for topic in extra:
        needed.setdefault(topic, None)
    if spec.reward.topic:
        if needed.get(spec.reward.topic) is not None:
            raise ConfigError(
                f"ingest spec: reward.topic {spec.reward.topic} is also an observation/action topic; log the reward on its own topic"
            )
        needed[spec.reward.topic] = TopicFields(topic=spec.reward.topic, fields=[spec.reward.field])
    for topic, src in needed.items():
        info = bag.topics.get(topic)
        if info is None:
            raise BagError(
                f"bag {bag.name}: topic {topic} not found (bag has: {', '.join(sorted(bag.topics)) or 'no topics'}); fix the topic in the spec"
            )
        if src is not None and info.serialization_format != "cdr":
            raise BagError(
                f"bag {bag.name}: topic {topic} is serialized as {info.serialization_format!r}; only ROS 2 CDR can be ingested"
            )
        if src is not None and src.type and normalise_msgtype(src.type) != normalise_msgtype(info.msgtype):
            raise BagError(
                f"bag {bag.name}: topic {topic} has type {info.msgtype}, the spec expects {src.type}; fix type in the spec"
            )
    return needed


def _decode_topics(
    bag: Bag,
    needed: dict[str, TopicFields | None],
    use_header: bool,
    resolver: TypeResolver,
    report: SyncReport,
) -> dict[str, TopicData]:
    """One pass over the bag: decoded columns per topic, counts verified, rates reported."""
    decoders = {t: _TopicDecoder(bag, bag.topics[t], s, use_header, resolver) for t, s in needed.items()}
    for raw in bag.iter_batches(list(needed)):
        decoders[raw.topic].add(raw)
    counts = {t: d.count for t, d in decoders.items()}
    bag.verify_counts(counts)
    for topic, count in counts.items():
        if count == 0:
            raise BagError(
                f"bag {bag.name}: topic {topic} holds no messages; record it or remove it from the spec"
            )
    data = {t: d.finish() for t, d in decoders.items()}
    del decoders  # `data` holds the only references now, so columns can be freed one by one
    _return_freed_memory()
    for topic, d in data.items():
        gaps = np.diff(d.times) / NS
        median = float(np.median(gaps)) if gaps.size else 0.0
        report.merge_topic(
            TopicStats(
                topic,
                bag.topics[topic].msgtype,
                len(d.times),
                1.0 / median if median > 0 else 0.0,  # median period: robust to episode gaps
                float(gaps.max()) if gaps.size else 0.0,
            )
        )
    return data


def _ticks_and_episodes(
    data: dict[str, TopicData], spec: IngestSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Control ticks (ns), the episode index of each tick (-1: before the first marker), and
    the episode start times."""
    al, ep = spec.alignment, spec.episodes
    period_ns = NS / spec.control_rate_hz
    act_data = data[spec.action.topic]
    if ep.marker_topic:
        markers = data[ep.marker_topic].times
    else:
        ref_times = data[al.reference].times if al.reference != "rate" else act_data.times
        gap_ns = (ep.gap_s if ep.gap_s is not None else 1.0) * NS
        breaks = np.flatnonzero(np.diff(ref_times) > gap_ns) + 1
        markers = ref_times[np.concatenate([[0], breaks])].astype(np.int64)
    end_of_bag = max(int(d.times[-1]) for d in data.values())
    if al.reference != "rate":
        ticks = data[al.reference].times  # already int64: no copy
    else:
        parts = []
        bounds = [*markers.tolist(), end_of_bag + 1]
        for lo, hi in itertools.pairwise(bounds):
            inside = act_data.times[(act_data.times >= lo) & (act_data.times < hi)]
            if inside.size:  # integer ns: float64 cannot hold epoch nanoseconds exactly
                steps = int((int(inside[-1]) - int(inside[0])) // period_ns) + 1
                parts.append(int(inside[0]) + np.round(np.arange(steps) * period_ns).astype(np.int64))
        ticks = np.concatenate(parts) if parts else np.empty(0, np.int64)
    episode = np.searchsorted(markers, ticks, side="right") - 1
    return ticks, episode, markers


def _ingest_one(bag: Bag, spec: IngestSpec, report: SyncReport, resolver: TypeResolver) -> _BagResult:
    """Decode, tick, align and assemble the transitions of one bag."""
    al, ep = spec.alignment, spec.episodes
    needed = _needed_topics(bag, spec)
    data = _decode_topics(bag, needed, al.time_source == "header", resolver, report)
    period_ns = NS / spec.control_rate_hz
    act_data = data[spec.action.topic]
    ticks, episode, markers = _ticks_and_episodes(data, spec)
    before = episode < 0
    if before.any():
        report.dropped["tick before the first episode marker"] += int(before.sum())
    report.ticks += len(ticks)

    # ---- as-of sampling at the ticks
    # (indices only: values are gathered once, for the kept rows, straight into the output)
    def sample(times: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        indices, ok_all, per_topic = [], np.ones(len(times), bool), {}
        for src in spec.observations:
            max_age = (src.max_age_s if src.max_age_s is not None else al.max_age_s) * NS
            idx, ok = _as_of(data[src.topic], times, max_age)
            indices.append(idx)
            ok_all &= ok
            per_topic[src.topic] = ok
        return indices, ok_all, per_topic

    def gather(indices: list[np.ndarray]) -> np.ndarray:
        """Observation rows at the given per-source message indices, written in place."""
        width = sum(data[src.topic].values.shape[1] for src in spec.observations)
        out = np.empty((len(indices[0]), width), np.float32)
        col = 0
        for src, idx in zip(spec.observations, indices, strict=True):
            values = data[src.topic].values
            if values.shape[1] == width:  # mode="clip": unbuffered (indices are valid by construction)
                np.take(values, idx, axis=0, out=out, mode="clip")
            else:
                out[:, col : col + values.shape[1]] = values[idx]
            col += values.shape[1]
        return out

    obs_cols, obs_ok, obs_ok_by_topic = sample(ticks)
    act_age = (spec.action.max_age_s if spec.action.max_age_s is not None else al.max_age_s) * NS
    act_idx, act_ok = _as_of(act_data, ticks, act_age)
    valid_tick = obs_ok & act_ok & ~before
    for topic, ok in obs_ok_by_topic.items():
        report.stale[topic] += int((~ok & ~before).sum())
    report.stale[spec.action.topic] += int((~act_ok & ~before).sum())

    # next-observation times: the next tick in the same episode, else the primary topic's next message
    same_next = np.zeros(len(ticks), bool)
    same_next[:-1] = episode[1:] == episode[:-1]
    primary = data[spec.observations[0].topic].times
    nxt = np.searchsorted(primary, ticks, side="right")
    has_msg = nxt < len(primary)
    next_msg = primary[np.minimum(nxt, len(primary) - 1)]
    next_marker = np.append(markers, np.iinfo(np.int64).max)[np.minimum(episode + 1, len(markers))]
    primary_age = (
        spec.observations[0].max_age_s if spec.observations[0].max_age_s is not None else al.max_age_s
    ) * NS
    final_ok = has_msg & (next_msg < next_marker) & (next_msg - ticks <= period_ns + primary_age)
    next_times = np.where(same_next, np.append(ticks[1:], 0), next_msg)
    next_cols, next_ok, _ = sample(next_times)
    next_valid = np.where(same_next, np.append(valid_tick[1:], False) & next_ok, final_ok & next_ok)
    row_ok = valid_tick & next_valid
    report.dropped["stale or missing input at the tick"] += int((~valid_tick & ~before).sum())
    report.dropped["no valid next observation"] += int((valid_tick & ~next_valid).sum())

    keep = np.flatnonzero(row_ok)
    # From here on only kept rows matter: shrink the per-tick arrays before the big gathers,
    # so peak memory stays near decoded data + output (a million-message bag is the target).
    obs_rows = [idx[keep] for idx in obs_cols]
    next_rows = [idx[keep] for idx in next_cols]
    act_rows = act_idx[keep]
    kept_episode = episode[keep]
    true_end = ~same_next[keep]  # the last tick of its episode
    kept_ticks, kept_next = (ticks[keep], next_times[keep]) if spec.reward.topic else (None, None)
    segment_break = np.diff(keep) != 1
    del obs_cols, next_cols, act_idx, episode, same_next, ticks, next_times, keep, row_ok
    del nxt, has_msg, next_msg, next_marker, final_ok, next_ok, next_valid, valid_tick, obs_ok, act_ok, before
    _return_freed_memory()

    obs_names: list[str] = []
    for i, src in enumerate(spec.observations):
        obs_names += _column_names(src, data[src.topic].values.shape[1], f"observations[{i}]")
    observations = gather(obs_rows)
    next_observations = gather(next_rows)
    del obs_rows, next_rows
    for src in spec.observations:  # decoded observation columns are no longer needed
        if src.topic not in (spec.action.topic, spec.reward.topic):
            data[src.topic] = TopicData(data[src.topic].times, np.empty((0, 0), np.float32))
    actions = act_data.values[act_rows]
    starts = np.ones(len(actions), bool)
    starts[1:] = (kept_episode[1:] != kept_episode[:-1]) | segment_break
    ends = np.ones(len(actions), bool)
    ends[:-1] = starts[1:]
    terminals = ends & true_end & (ep.end == "terminal")
    timeouts = ends & ~terminals

    act_names = _column_names(spec.action, actions.shape[1], "action")
    if len(spec.action.low) != actions.shape[1]:
        raise ConfigError(
            f"ingest spec: action.low/high have {len(spec.action.low)} values but topic {spec.action.topic} gives {actions.shape[1]}"
        )

    if spec.reward.topic:
        rsrc = spec.reward.topic
        # the reward of tick i is the last one logged after tick i and at or before tick i+1
        assert kept_next is not None and kept_ticks is not None
        ridx, rok = _as_of(data[rsrc], kept_next, np.inf)
        rok &= data[rsrc].times[ridx] > kept_ticks
        rvals = data[rsrc].values
        if rvals.shape[1] != 1:
            raise BagError(
                f"bag {bag.name}: topic {rsrc}: reward field {spec.reward.field} must be one number"
            )
        rewards = rvals[ridx, 0]
        if not rok.all():
            report.dropped["stale reward"] += int((~rok).sum())
            sel = np.flatnonzero(rok)
            observations, next_observations, actions = observations[sel], next_observations[sel], actions[sel]
            rewards, terminals, timeouts = rewards[sel], terminals[sel], timeouts[sel]
            starts = starts[sel] | np.r_[True, np.diff(sel) != 1]
            timeouts |= np.r_[starts[1:], True] & ~terminals  # a row before a gap ends its segment
    else:
        rewards = np.zeros(len(observations), np.float32)

    return _BagResult(
        observations, actions, next_observations, rewards, terminals, timeouts, starts, obs_names, act_names
    )


def _sha256(bag: Bag) -> str:
    digest = hashlib.sha256()
    for file in bag.files:
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class BagPart:
    """One bag ingested on its own: its transitions, its sync report and its source entry.

    The unit of work of a parallel ingest (`offrl_robot.scale.fleet_ingest` runs `ingest_bag`
    on workers) and the input of `merge_bag_parts`, which serial and parallel ingestion share,
    so both produce the same dataset byte for byte.
    """

    result: _BagResult
    report: SyncReport
    source: dict[str, str]


def ingest_bag(
    path: str | os.PathLike[str], spec: IngestSpec, resolver: TypeResolver | None = None
) -> BagPart:
    """Decode, align and assemble one bag (episodes never span bags, so bags are independent)."""
    bag = Bag(path)
    report = SyncReport(time_source=spec.alignment.time_source, bags=[bag.name])
    result = _ingest_one(bag, spec, report, resolver or TypeResolver())
    if spec.reward.function and len(result.observations):
        # Per bag, not on the merged dataset: a reward is a function of one transition, and
        # computing it here lets parallel ingestion spread it over the workers (it can be the
        # costliest step, e.g. forward kinematics) instead of leaving it to the serial merge.
        func = _load_reward_function(spec.reward.function, spec.task)
        rows = len(result.observations)
        rewards = func(result.observations, result.actions, result.next_observations)
        result.rewards = np.asarray(rewards, dtype=np.float32).reshape(-1)
        if result.rewards.shape != (rows,):
            raise ConfigError(
                f"ingest spec: reward.function {spec.reward.function} returned shape "
                f"{np.shape(rewards)} for bag {bag.name}, expected ({rows},)"
            )
    return BagPart(result, report, {"path": str(Path(path).resolve()), "sha256": _sha256(bag)})


def ingest(bags: Sequence[str | os.PathLike[str]], spec: IngestSpec) -> tuple[Dataset, SyncReport]:
    """Turn one or more bags into one Dataset (episodes never span bags)."""
    if not bags:
        raise BagError("no bag given; pass one or more rosbag2 directories or files")
    resolver = TypeResolver()  # shared: a type one bag embeds also decodes the next bags
    return merge_bag_parts([ingest_bag(path, spec, resolver) for path in bags], spec)


def merge_bag_parts(parts: Sequence[BagPart], spec: IngestSpec) -> tuple[Dataset, SyncReport]:
    """Concatenate per-bag parts, in the given order, into one validated Dataset + sync report."""
    if not parts:
        raise BagError("no bag given; pass one or more rosbag2 directories or files")
    report = SyncReport(time_source=spec.alignment.time_source)
    for part in parts:
        report.merge(part.report)
    results = [part.result for part in parts]
    sources = [part.source for part in parts]
    if any(r.obs_names != results[0].obs_names for r in results):
        raise BagError("bags give different observation columns; ingest them separately")
    total = sum(len(r.observations) for r in results)
    if total == 0:
        raise BagError(
            f"bag {report.bags[0]}: no transition survives alignment ({report.ticks} ticks, "
            f"dropped {dict(report.dropped)}); widen alignment.max_age_s or check the topics"
        )

    def cat(name: str) -> np.ndarray:
        if len(results) == 1:  # no copy: the arrays can be large
            return getattr(results[0], name)
        return np.concatenate([getattr(r, name) for r in results])

    rewards = cat("rewards")
    observations, actions, next_observations = cat("observations"), cat("actions"), cat("next_observations")
    metadata = DatasetMetadata(
        observation_names=results[0].obs_names,
        action_names=results[0].act_names,
        action_low=[float(v) for v in spec.action.low],
        action_high=[float(v) for v in spec.action.high],
        control_rate_hz=float(spec.control_rate_hz),
        source={"kind": "rosbag", "bags": sources, "spec": spec.to_dict()},
        reward=spec.reward.function or f"topic {spec.reward.topic} field {spec.reward.field}",
        task=spec.task,
    )
    dataset = Dataset(
        observations=observations,
        actions=actions,
        rewards=rewards,
        next_observations=next_observations,
        terminals=cat("terminals"),
        timeouts=cat("timeouts"),
        episode_starts=cat("episode_starts"),
        metadata=metadata,
    )
    report.transitions = len(dataset)
    report.episodes = dataset.num_episodes
    metadata.extra["sync_report"] = report.to_dict()  # what alignment dropped travels with the data
    return dataset.validate(f"ingest of {', '.join(report.bags)}"), report


# ---------------------------------------------------------------------------------- CLI
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


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if (args.workers or 1) > 1 or args.address:
        from offrl_robot.scale.fleet_ingest import ingest_parallel

        dataset, report = ingest_parallel(args.bags, spec, workers=args.workers, address=args.address)
    else:
        dataset, report = ingest(args.bags, spec)
    print(report.format())
    from offrl_robot.data.minari_io import save_dataset

    try:
        path = save_dataset(dataset, args.out, root=args.root, overwrite=args.overwrite)
    except FileExistsError:
        raise ConfigError(
            f"dataset {args.out} already exists; pass --overwrite or choose another --out"
        ) from None
    print(f"wrote {len(dataset)} transitions in {dataset.num_episodes} episodes to {path}")
    return 0

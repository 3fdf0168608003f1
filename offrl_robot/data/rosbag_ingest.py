"""rosbag2 logs -> Dataset, following an ingest spec (the `offrl-robot ingest` command: ingest_cli.py).

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

A JointState topic fed by several publishers (arm broadcaster + gripper, disjoint `name[]`
sets) splits into *streams*: the columns carried by the same messages. Each stream is sampled
as-of on its own message times with its own freshness window, so a column always comes from the
latest message that carries it and joints never mix (`joint_state_columns.py`).

Clocks: `time_source: receive` (bag time) is one clock for every topic and must never go
backwards. `time_source: header` uses header stamps where a type has a header; publishers
stamp independently, so stamps that go backwards are sorted (and counted in the report).
Headerless topics keep their receive time: when they mix with header-stamped ones the report
warns that ticks and states are on two clocks, and ingest refuses when those clocks are
visibly different (median receive-minus-header offset over 1 s: sim time, unsynced machines).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offrl_robot.data.bag_reader import (
    FLOAT64_MULTI_ARRAY,
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
from offrl_robot.data.ingest_spec import IngestSpec, TopicFields
from offrl_robot.data.joint_state_columns import Column, JointStateColumns
from offrl_robot.errors import BagError, ConfigError, OffrlError
from offrl_robot.registry import lookup_reward, needs_task

NS = 1_000_000_000
CLOCK_MISMATCH_S = 1.0  # header vs receive clocks further apart than this are different clocks


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
    # per stream of a topic that several publishers feed ("/joint_states [fr3_finger_joint1.position, ...]")
    streams: dict[str, TopicStats] = field(default_factory=dict)
    sorted_stamps: Counter[str] = field(default_factory=Counter)  # header stamps that went backwards
    warnings: list[str] = field(default_factory=list)

    def merge_topic(self, stats: TopicStats, table: dict[str, TopicStats] | None = None) -> None:
        table = self.topics if table is None else table
        old = table.get(stats.topic)
        if old is None:
            table[stats.topic] = stats
        else:
            total = old.messages + stats.messages
            rate = (old.rate_hz * old.messages + stats.rate_hz * stats.messages) / max(total, 1)
            table[stats.topic] = TopicStats(
                stats.topic, stats.msgtype, total, rate, max(old.max_gap_s, stats.max_gap_s)
            )

    def merge(self, other: SyncReport) -> None:
        """Add another bag's report, in bag order: the same numbers (and key order) as if both
        bags had been counted into one report, so a parallel ingest reports what a serial one does."""
        self.bags.extend(other.bags)
        self.ticks += other.ticks
        self.dropped.update(other.dropped)  # update() keeps zero counts, as `+= 0` does
        self.stale.update(other.stale)
        self.sorted_stamps.update(other.sorted_stamps)
        self.warnings.extend(other.warnings)
        for stats in other.topics.values():
            self.merge_topic(stats)
        for stats in other.streams.values():
            self.merge_topic(stats, self.streams)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (stored in the dataset metadata's `extra`)."""

        def table(stats: dict[str, TopicStats]) -> dict[str, Any]:
            return {
                t: {
                    "type": st.msgtype,
                    "messages": st.messages,
                    "rate_hz": st.rate_hz,
                    "max_gap_s": st.max_gap_s,
                }
                for t, st in stats.items()
            }

        out: dict[str, Any] = {
            "ticks": self.ticks,
            "transitions": self.transitions,
            "episodes": self.episodes,
            "time_source": self.time_source,
            "dropped": {k: int(v) for k, v in self.dropped.items() if v},
            "stale": {k: int(v) for k, v in self.stale.items() if v},
            "topics": table(self.topics),
        }
        if self.streams:
            out["streams"] = table(self.streams)
        if any(self.sorted_stamps.values()):
            out["sorted_header_stamps"] = {k: int(v) for k, v in self.sorted_stamps.items() if v}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

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
        for topic, count in sorted(self.sorted_stamps.items()):
            if count:
                lines.append(f"  header stamps out of order (sorted): {topic}: {count}")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        lines.append(f"  {'topic':<40} {'type':<36} {'msgs':>8} {'rate Hz':>9} {'max gap s':>10}")
        for st in self.topics.values():
            lines.append(
                f"  {st.topic:<40} {st.msgtype:<36} {st.messages:>8} {st.rate_hz:>9.2f} {st.max_gap_s:>10.3f}"
            )
        for st in self.streams.values():
            lines.append(
                f"    stream {st.topic}: {st.messages} msgs, {st.rate_hz:.2f} Hz, max gap {st.max_gap_s:.3f} s"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- decoding
@dataclass
class Stream:
    """Messages of one topic that carry the same columns, sampled as-of on their own times.

    A topic whose every message carries every column is one stream (`columns` None: all, in
    order); a JointState topic fed by several publishers is one stream per publisher's columns.
    """

    times: np.ndarray
    values: np.ndarray
    columns: np.ndarray | None = None  # positions among the topic's columns
    label: str = ""
    max_age_s: float | None = None  # a joint group's own freshness window, else the topic's


@dataclass
class TopicData:
    """One decoded topic: every message's time (ns, on `clock`) and its columns as streams."""

    times: np.ndarray
    streams: list[Stream]
    width: int
    clock: str = "receive"  # or "header"

    @property
    def values(self) -> np.ndarray:
        """All columns, for a topic whose every message carries every column."""
        if len(self.streams) != 1 or self.streams[0].columns is not None:
            raise ValueError("values of a topic split into streams")
        return self.streams[0].values


def _column_names(src: TopicFields, width: int, where: str) -> list[str]:
    if src.names is not None:
        if len(src.names) != width:
            raise ConfigError(
                f"ingest spec: {where}.names has {len(src.names)} names but the topic gives {width} values"
            )
        return list(src.names)
    if src.joint_groups is not None:
        return [f"{j}.{f}" for g in src.joint_groups for f in g.fields for j in g.joints]
    if src.joints is not None:
        return [f"{j}.{f}" for f in src.fields for j in src.joints]
    base = src.topic.strip("/").replace("/", ".") or "topic"
    if src.indices is not None:
        return [f"{base}.{f}[{k}]" for f in src.fields for k in src.indices]
    if width == len(src.fields):
        return [f"{base}.{f}" for f in src.fields]
    return [f"{base}.{i}" for i in range(width)]


def _stream_label(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 3 else f"{names[0]} ... {names[-1]} ({len(names)} columns)"


def _joint_state_columns(src: TopicFields) -> tuple[list[Column], list[float | None]]:
    """Columns (joint or slot, field) in output order, and each column's group freshness window."""
    groups = src.joint_state_groups()
    for group in groups:
        for f in group.fields:
            if f not in ("position", "velocity", "effort"):
                raise ConfigError(
                    f"ingest spec: topic {src.topic}: JointState field {f!r} is not position, velocity or effort"
                )
    if not src.by_index and not any(g.joints for g in groups):
        raise ConfigError(
            f"ingest spec: topic {src.topic}: list the joints by name (joints: [...]), or set by_index: true with indices"
        )
    columns: list[Column] = []
    ages: list[float | None] = []
    for group in groups:
        slots: list[str | int] = list(src.indices or []) if src.by_index else list(group.joints)
        for f in group.fields:
            for slot in slots:
                columns.append(Column(slot, f))
                ages.append(group.max_age_s)
    return columns, ages


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
        arr = _numeric(value, f, topic, bag)
        if src.indices is not None:
            if any(k >= arr.size for k in src.indices):
                raise BagError(
                    f"bag {bag}: topic {topic}: field {f} has {arr.size} values; fix indices in the spec"
                )
            arr = arr[list(src.indices)]
        row.extend(arr.tolist())
    return row


def _numeric(value: Any, f: str, topic: str, bag: str) -> np.ndarray:
    """A field's value as float64 numbers, or a one-line error saying what it is instead."""
    if isinstance(value, (str, bytes)):
        raise BagError(
            f"bag {bag}: topic {topic}: field {f!r} is text ({str(value)[:40]!r}), not a number; "
            "pick a numeric field in the spec"
        )
    if hasattr(value, "__msgtype__"):
        raise BagError(
            f"bag {bag}: topic {topic}: field {f!r} is a whole {value.__msgtype__} message, not a number; "
            f"name one of its numeric fields (e.g. {f}.x)"
        )
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise BagError(
            f"bag {bag}: topic {topic}: field {f!r} holds {type(value).__name__} values that are not numbers; "
            "pick a numeric field in the spec"
        ) from None
    return arr


def _header_ns(msg: Any) -> int | None:
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return int(header.stamp.sec) * NS + int(header.stamp.nanosec)


def _header_fields(resolver: TypeResolver, info: TopicInfo, bag: str) -> tuple[bool, bool]:
    """(has a std_msgs/Header field named header, it is the first field) of a topic's type;
    (False, False) when the type cannot be resolved (its times stay receive times)."""
    msgtype = normalise_msgtype(info.msgtype)
    if msgtype == JOINT_STATE:
        return True, True
    if msgtype == FLOAT64_MULTI_ARRAY:
        return False, False
    try:
        msgtype = resolver.ensure(info, bag)
        fields = resolver.store.fielddefs[msgtype][1]
    except (BagError, KeyError):
        return False, False
    headers = [
        k for k, (name, desc) in enumerate(fields) if name == "header" and desc[-1] == "std_msgs/msg/Header"
    ]
    return bool(headers), headers[:1] == [0]


def _leading_stamps(raw: RawBatch, topic: str, bag: str) -> np.ndarray:
    """header.stamp of a type whose first field is the header: bytes 4..12 of the CDR."""
    if raw.payloads is not None:
        if any(len(p) < 12 or p[1] != 1 for p in raw.payloads):
            raise BagError(f"bag {bag}: topic {topic}: a message is not little-endian CDR; re-record it")
        head = np.frombuffer(b"".join(bytes(p[4:12]) for p in raw.payloads), np.uint8).reshape(-1, 8)
    else:
        assert raw.buffer is not None and raw.starts is not None and raw.lengths is not None
        if np.any(raw.lengths < 12) or np.any(raw.buffer[raw.starts + 1] != 1):
            raise BagError(f"bag {bag}: topic {topic}: a message is not little-endian CDR; re-record it")
        head = raw.buffer[raw.starts[:, None] + np.arange(4, 12)]
    sec = head[:, :4].copy().view("<i4").reshape(-1).astype(np.int64)
    nsec = head[:, 4:].copy().view("<u4").reshape(-1).astype(np.int64)
    return sec * NS + nsec


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
    """Accumulates decoded batches of one topic: JointState by columns (any publishers, any
    name order), Float64MultiArray in bulk, everything else through rosbags."""

    def __init__(
        self, bag: Bag, info: TopicInfo, src: TopicFields | None, use_header: bool, resolver: TypeResolver
    ) -> None:
        self.bag, self.info, self.src = bag, info, src
        self.msgtype = normalise_msgtype(info.msgtype)
        self.resolver = resolver
        self.times = _Growing(info.reported_count, np.int64)
        self.values = _Growing(info.reported_count, np.float32)
        self.count = 0
        self.joint_columns: JointStateColumns | None = None
        self.column_ages: list[float | None] = []
        self.pick: Callable[[Layout], list[int]] | None = None
        self.first_pattern: int | None = None
        self.patterns: _Growing | None = None  # per-message pattern ids, once a second pattern shows up
        self.offsets: list[float] = []  # per batch: median receive time minus header stamp (ns)
        if src is not None and src.joint_groups is not None and self.msgtype != JOINT_STATE:
            raise BagError(
                f"bag {bag.name}: topic {info.name} has type {info.msgtype}; joint_groups needs sensor_msgs/msg/JointState"
            )
        if src is None:
            self.stamped = use_header and _header_fields(resolver, info, bag.name)[1]
        elif self.msgtype == JOINT_STATE:
            columns, self.column_ages = _joint_state_columns(src)
            self.joint_columns = JointStateColumns(columns, src.by_index, info.name, bag.name)
            self.stamped = use_header
        elif self.msgtype == FLOAT64_MULTI_ARRAY:
            self.pick = _array_picker(src, bag.name)
            self.stamped = False  # no header: receive time
        else:
            self.msgtype = resolver.ensure(info, bag.name)
            self.stamped = use_header and _header_fields(resolver, info, bag.name)[0]

    def _append_times(self, recv: np.ndarray, stamps: np.ndarray | None) -> None:
        if stamps is None:
            self.times.append(recv)
            return
        if len(stamps):
            self.offsets.append(float(np.median(recv - stamps)))
        self.times.append(stamps)

    def _append_patterns(self, pids: np.ndarray, before: int) -> None:
        """Per-message pattern ids are stored only once a topic shows more than one pattern."""
        if not len(pids):
            return
        if self.patterns is None:
            if self.first_pattern is None:
                self.first_pattern = int(pids[0])
            if (pids == self.first_pattern).all():
                return
            self.patterns = _Growing(self.info.reported_count, np.int32)
            self.patterns.append(np.full(before, self.first_pattern, np.int32))
        self.patterns.append(pids)

    def add(self, raw: RawBatch) -> None:
        before = self.count
        self.count += len(raw)
        recv = np.asarray(raw.times, dtype=np.int64)
        if self.src is None:  # marker/reference topic: times only
            self._append_times(
                recv, _leading_stamps(raw, self.info.name, self.bag.name) if self.stamped else None
            )
            return
        if self.joint_columns is not None:
            decoded = self.joint_columns.decode(raw, self.stamped)
            self._append_times(recv, decoded.stamps)
            self.values.append(decoded.values)
            self._append_patterns(decoded.pattern_ids, before)
            return
        if self.pick is not None:
            values, _ = bulk_decode(self.msgtype, raw, self.pick, False, self.info.name, self.bag.name)
            self.times.append(recv)
            self.values.append(values)
            return
        rows, stamps = [], recv.copy()
        for k, data in enumerate(raw.messages()):
            try:
                msg = self.resolver.deserialize(data, self.msgtype)
            except Exception as err:
                raise BagError(
                    f"bag {self.bag.name}: topic {self.info.name}: message {before + k} does not decode as {self.info.msgtype} ({type(err).__name__}: {err})"
                ) from None
            rows.append(_generic_row(msg, self.src, self.info.name, self.bag.name))
            if self.stamped:
                stamp = _header_ns(msg)
                if stamp is not None:
                    stamps[k] = stamp
        width = len(rows[0]) if rows else 0
        if any(len(r) != width for r in rows):
            raise BagError(
                f"bag {self.bag.name}: topic {self.info.name}: array length changes between messages"
            )
        self._append_times(recv, stamps if self.stamped else None)
        self.values.append(np.asarray(rows, dtype=np.float32).reshape(len(rows), width))

    def finish(self, report: SyncReport) -> TopicData:
        times = self.times.array((0,))
        values = self.values.array((0, 0))
        pids = self.patterns.array((0,)) if self.patterns is not None else None
        back = np.flatnonzero(np.diff(times) < 0)
        if back.size and self.stamped:
            # publishers stamp independently (and a gripper's stamps lag the arm's): sort, count
            order = np.argsort(times, kind="stable")
            times = times[order]
            if self.src is not None:
                values = values[order]
            if pids is not None:
                pids = pids[order]
            report.sorted_stamps[self.info.name] += int(back.size)
        elif back.size:
            k = int(back[0]) + 1
            raise BagError(
                f"bag {self.bag.name}: topic {self.info.name}: receive timestamps go backwards at message {k} "
                f"({(times[k - 1] - times[k]) / 1e6:.3f} ms); re-record or reorder the bag"
            )
        clock = "header" if self.stamped else "receive"
        if self.src is None:
            return TopicData(times, [], 0, clock)
        if self.joint_columns is None:
            return TopicData(times, [Stream(times, values)], values.shape[1], clock)
        return TopicData(times, self._streams(times, values, pids), len(self.joint_columns.columns), clock)

    def _streams(self, times: np.ndarray, values: np.ndarray, pids: np.ndarray | None) -> list[Stream]:
        """Columns carried by the same messages (and sharing a freshness window) form a stream."""
        assert self.joint_columns is not None and self.src is not None
        self.joint_columns.check_complete()
        patterns = np.array(self.joint_columns.patterns)  # [patterns, columns]
        width = patterns.shape[1]
        groups: dict[tuple[tuple[int, ...], float | None], list[int]] = {}
        for c in range(width):
            carriers = tuple(np.flatnonzero(patterns[:, c]).tolist())
            groups.setdefault((carriers, self.column_ages[c]), []).append(c)
        if len(groups) == 1 and pids is None:  # one publisher, fixed structure: no copy
            return [Stream(times, values, None, "", self.column_ages[0])]
        names = _column_names(self.src, width, self.info.name)
        streams = []
        for (carriers, age), cols in groups.items():
            if pids is None or len(carriers) == len(patterns):
                rows = None
            else:
                rows = np.flatnonzero(np.isin(pids, carriers))
            every = cols == list(range(width))
            if rows is None:
                st_times, st_values = times, values if every else values[:, cols]
            else:
                st_times, st_values = times[rows], values[rows] if every else values[np.ix_(rows, cols)]
            label = _stream_label([names[c] for c in cols])
            streams.append(Stream(st_times, st_values, None if every else np.array(cols), label, age))
        return streams


def _return_freed_memory() -> None:
    """Give the decode phase's freed scratch (chunk buffers, byte matrices) back to the OS.

    glibc keeps freed mid-sized blocks in its heap after raising its mmap threshold, so without
    this the large output arrays allocated next stack on top of dead scratch and peak RSS grows
    by tens of MiB on a million-message bag. No-op where malloc_trim does not exist.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---------------------------------------------------------------------------------- alignment
def _as_of(data: TopicData | Stream, ticks: np.ndarray, max_age_ns: float) -> tuple[np.ndarray, np.ndarray]:
    """Index of the last message at or before each tick, and whether it is fresh enough."""
    idx = np.searchsorted(data.times, ticks, side="right") - 1
    ok = idx >= 0
    safe = np.maximum(idx, 0)
    if np.isfinite(max_age_ns):
        ok &= (ticks - data.times[safe]) <= max_age_ns
    return safe, ok


def load_reward_function(name: str, task: str | None = None) -> Callable[..., Any]:
    """A registered reward (offrl_robot/registry.py), or the user's own `module:function`: ingest is
    the user running their own spec offline, so an unregistered import is allowed here (never in
    the deployed path). A reward that takes the task (`task=`, e.g. `reach`: forward kinematics of
    the task's MJCF) is bound to the spec's `task:`."""
    try:
        function = lookup_reward(name, allow_import=True)
        if not needs_task(function):
            return function
        if not task:
            raise ConfigError(f"reward {name!r} computes from the task (its MJCF); set task: to the task file")
        from offrl_robot.sim.tasks import task_definition

        definition = task_definition(task)
        if definition is None:
            raise ConfigError(f"reward {name!r} needs a task file as task:, not {task}")
        return functools.partial(function, task=definition)
    except ConfigError as err:
        raise ConfigError(f"ingest spec: reward.function: {err}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


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


def decode_topics(
    bag: Bag,
    needed: dict[str, TopicFields | None],
    use_header: bool,
    resolver: TypeResolver,
    report: SyncReport,
) -> tuple[dict[str, TopicData], dict[str, float]]:
    """One pass over the bag: decoded streams per topic, counts verified, rates reported; also
    the median receive-minus-header offset (ns) of each header-stamped topic."""
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
    data = {t: d.finish(report) for t, d in decoders.items()}
    offsets = {t: float(np.median(d.offsets)) for t, d in decoders.items() if d.offsets}
    del decoders  # `data` holds the only references now, so columns can be freed one by one
    _return_freed_memory()

    def stats(name: str, times: np.ndarray, msgtype: str) -> TopicStats:
        gaps = np.diff(times) / NS
        median = float(np.median(gaps)) if gaps.size else 0.0
        return TopicStats(
            name,
            msgtype,
            len(times),
            1.0 / median if median > 0 else 0.0,  # median period: robust to episode gaps
            float(gaps.max()) if gaps.size else 0.0,
        )

    for topic, d in data.items():
        msgtype = bag.topics[topic].msgtype
        report.merge_topic(stats(topic, d.times, msgtype))
        if len(d.streams) > 1:
            for st in d.streams:
                report.merge_topic(stats(f"{topic} [{st.label}]", st.times, msgtype), report.streams)
    return data, offsets


def _check_clocks(
    bag: Bag, spec: IngestSpec, data: dict[str, TopicData], offsets: dict[str, float], report: SyncReport
) -> None:
    """time_source: header with headerless topics mixes two clocks: warn, or refuse when the
    header stamps are visibly on another clock than the receive times (sim time, no sync)."""
    if spec.alignment.time_source != "header":
        return
    tick_topic = spec.alignment.reference if spec.alignment.reference != "rate" else spec.action.topic
    used = [tick_topic, *(s.topic for s in spec.observations), spec.action.topic]
    if spec.reward.topic:
        used.append(spec.reward.topic)
    used = list(dict.fromkeys(used))
    receive = [t for t in used if data[t].clock == "receive"]
    stamped = [t for t in used if data[t].clock == "header"]
    if not receive:
        return
    if not stamped:
        report.warnings.append(
            f"bag {bag.name}: time_source: header, but no topic used has a header ({', '.join(receive)}): all on receive time"
        )
        return
    worst = max(stamped, key=lambda t: abs(offsets.get(t, 0.0)))
    offset_s = offsets.get(worst, 0.0) / NS
    if tick_topic in receive:
        what = f"ticks come from {tick_topic}, which has no header (receive time), while {', '.join(stamped)} use header stamps"
    else:
        what = f"{', '.join(receive)} have no header (receive time) while ticks from {tick_topic} use header stamps"
    if abs(offset_s) > CLOCK_MISMATCH_S:
        raise BagError(
            f"bag {bag.name}: time_source: header mixes two clocks: {what}, and the header stamps of {worst} are "
            f"{offset_s:+.3f} s from its receive times (sim time, or an unsynchronised clock); set alignment.time_source: receive"
        )
    report.warnings.append(
        f"bag {bag.name}: ticks and states on different clocks: {what} (median receive - header of {worst}: "
        f"{offset_s * 1e3:.1f} ms); the pairing assumes the two clocks agree"
    )


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


@dataclass
class _Unit:
    """One observation stream placed in the observation vector."""

    topic: str
    stream: Stream
    max_age_ns: float
    columns: np.ndarray  # positions in the observation vector
    span: slice | None  # the same positions when contiguous


def _observation_units(spec: IngestSpec, data: dict[str, TopicData]) -> tuple[list[_Unit], list[str], int]:
    units: list[_Unit] = []
    names: list[str] = []
    col = 0
    for i, src in enumerate(spec.observations):
        d = data[src.topic]
        names += _column_names(src, d.width, f"observations[{i}]")
        base_age = src.max_age_s if src.max_age_s is not None else spec.alignment.max_age_s
        for st in d.streams:
            age = (st.max_age_s if st.max_age_s is not None else base_age) * NS
            cols = col + (np.arange(d.width) if st.columns is None else st.columns)
            contiguous = cols.size > 0 and bool(np.all(np.diff(cols) == 1))
            span = slice(int(cols[0]), int(cols[-1]) + 1) if contiguous else None
            units.append(_Unit(src.topic, st, age, cols, span))
        col += d.width
    return units, names, col


def _first_nonfinite(block: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the first NaN/inf, checked in chunks (no full-size mask in memory)."""
    if block.size == 0:
        return None
    flat = block.reshape(len(block), -1)
    step = 1 << 16
    for start in range(0, len(flat), step):
        chunk = flat[start : start + step]
        if not np.isfinite(chunk).all():
            row, col = np.argwhere(~np.isfinite(chunk))[0]
            return start + int(row), int(col)
    return None


def _time_text(ns: int, clock: str) -> str:
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)  # exact: float seconds would round epoch ns
    return f"{sign}{ns // NS}.{ns % NS:09d} s ({'header stamp' if clock == 'header' else 'receive time'})"


def _ingest_one(bag: Bag, spec: IngestSpec, report: SyncReport, resolver: TypeResolver) -> _BagResult:
    """Decode, tick, align and assemble the transitions of one bag."""
    al, ep = spec.alignment, spec.episodes
    needed = _needed_topics(bag, spec)
    data, offsets = decode_topics(bag, needed, al.time_source == "header", resolver, report)
    _check_clocks(bag, spec, data, offsets, report)
    period_ns = NS / spec.control_rate_hz
    act_data = data[spec.action.topic]
    if len(act_data.streams) != 1 or act_data.streams[0].columns is not None:
        labels = "; ".join(st.label for st in act_data.streams)
        raise BagError(
            f"bag {bag.name}: topic {spec.action.topic}: the action's columns come from different messages ({labels}); "
            "every action message must carry the whole action (and one max_age_s)"
        )
    ticks, episode, markers = _ticks_and_episodes(data, spec)
    before = episode < 0
    if before.any():
        report.dropped["tick before the first episode marker"] += int(before.sum())
    report.ticks += len(ticks)

    units, obs_names, width = _observation_units(spec, data)

    # ---- as-of sampling at the ticks
    # (indices only: values are gathered once, for the kept rows, straight into the output)
    def sample(times: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        indices, ok_all, per_topic = [], np.ones(len(times), bool), {}
        for unit in units:
            idx, ok = _as_of(unit.stream, times, unit.max_age_ns)
            indices.append(idx)
            ok_all &= ok
            per_topic[unit.topic] = per_topic[unit.topic] & ok if unit.topic in per_topic else ok
        return indices, ok_all, per_topic

    def gather(indices: list[np.ndarray], what: str) -> np.ndarray:
        """Observation rows at the given per-stream message indices, written in place."""
        out = np.empty((len(indices[0]), width), np.float32)
        for unit, idx in zip(units, indices, strict=True):
            values = unit.stream.values
            if values.shape[1] == width:  # mode="clip": unbuffered (indices are valid by construction)
                np.take(values, idx, axis=0, out=out, mode="clip")
            elif unit.span is not None:
                out[:, unit.span] = values[idx]
            else:
                out[:, unit.columns] = values[idx]
        bad = _first_nonfinite(out)
        if bad is not None:
            row, col = bad
            k = next(i for i, u in enumerate(units) if col in u.columns)
            unit = units[k]
            stamp = int(unit.stream.times[indices[k][row]])
            raise BagError(
                f"bag {bag.name}: topic {unit.topic}: {obs_names[col]} is {out[row, col]} in the message at "
                f"{_time_text(stamp, data[unit.topic].clock)} ({what}); fix the publisher, or leave "
                f"{obs_names[col]} out of the spec"
            )
        return out

    obs_cols, obs_ok, obs_ok_by_topic = sample(ticks)
    act_age = (spec.action.max_age_s if spec.action.max_age_s is not None else al.max_age_s) * NS
    act_idx, act_ok = _as_of(act_data, ticks, act_age)
    valid_tick = obs_ok & act_ok & ~before
    for topic, ok in obs_ok_by_topic.items():
        report.stale[topic] += int((~ok & ~before).sum())
    report.stale[spec.action.topic] += int((~act_ok & ~before).sum())

    # next-observation times: the next tick in the same episode, else the primary stream's next message
    same_next = np.zeros(len(ticks), bool)
    same_next[:-1] = episode[1:] == episode[:-1]
    primary = units[0].stream.times
    nxt = np.searchsorted(primary, ticks, side="right")
    has_msg = nxt < len(primary)
    next_msg = primary[np.minimum(nxt, len(primary) - 1)]
    next_marker = np.append(markers, np.iinfo(np.int64).max)[np.minimum(episode + 1, len(markers))]
    primary_age = units[0].max_age_ns
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

    observations = gather(obs_rows, "observation")
    next_observations = gather(next_rows, "next observation")
    del obs_rows, next_rows
    for unit in units:  # decoded observation columns are no longer needed
        if unit.topic not in (spec.action.topic, spec.reward.topic):
            unit.stream.values = np.empty((0, 0), np.float32)
    actions = act_data.values[act_rows]
    act_names = _column_names(spec.action, actions.shape[1], "action")
    if len(spec.action.low) != actions.shape[1]:
        raise ConfigError(
            f"ingest spec: action.low/high have {len(spec.action.low)} values but topic {spec.action.topic} gives {actions.shape[1]}"
        )
    bad = _first_nonfinite(actions)
    if bad is not None:
        row, col = bad
        raise BagError(
            f"bag {bag.name}: topic {spec.action.topic}: {act_names[col]} is {actions[row, col]} in the message at "
            f"{_time_text(int(act_data.times[act_rows[row]]), act_data.clock)}; fix the publisher or drop that log"
        )
    starts = np.ones(len(actions), bool)
    starts[1:] = (kept_episode[1:] != kept_episode[:-1]) | segment_break
    ends = np.ones(len(actions), bool)
    ends[:-1] = starts[1:]
    terminals = ends & true_end & (ep.end == "terminal")
    timeouts = ends & ~terminals

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
            ridx = ridx[sel]
            starts = starts[sel] | np.r_[True, np.diff(sel) != 1]
            timeouts |= np.r_[starts[1:], True] & ~terminals  # a row before a gap ends its segment
        bad = _first_nonfinite(rewards)
        if bad is not None:
            stamp = int(data[rsrc].times[ridx[bad[0]]])
            raise BagError(
                f"bag {bag.name}: topic {rsrc}: reward field {spec.reward.field} is {rewards[bad[0]]} in the message at "
                f"{_time_text(stamp, data[rsrc].clock)}; fix the reward publisher"
            )
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
        result.rewards = _function_rewards(spec.reward.function, result, bag.name, spec.task)
    return BagPart(result, report, {"path": str(Path(path).resolve()), "sha256": _sha256(bag)})


def _function_rewards(name: str, result: _BagResult, bag: str, task: str | None = None) -> np.ndarray:
    """Call the named reward function on one bag's arrays; whatever goes wrong is one line."""
    func = load_reward_function(name, task)
    rows = len(result.observations)
    try:
        rewards = func(result.observations, result.actions, result.next_observations)
    except OffrlError:
        raise
    except Exception as err:
        raise ConfigError(
            f"ingest spec: reward.function {name} raised {type(err).__name__} on bag {bag} "
            f"({_one_line(err)}); fix the function (it gets obs, act, next_obs arrays of {rows} rows)"
        ) from None
    try:
        out = np.asarray(rewards, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(
            f"ingest spec: reward.function {name} returned {type(rewards).__name__}, not numbers, for bag {bag}"
        ) from None
    if out.shape != (rows,):
        raise ConfigError(
            f"ingest spec: reward.function {name} returned shape {np.shape(rewards)} for bag {bag}, expected ({rows},)"
        )
    bad = _first_nonfinite(out)
    if bad is not None:
        raise ConfigError(
            f"ingest spec: reward.function {name} returned {out[bad[0]]} for row {bad[0]} of bag {bag}; "
            "it must return finite numbers"
        )
    return out


def _check_distinct(bags: Sequence[str | os.PathLike[str]]) -> None:
    """The same path twice is refused before any decoding (the same content is refused at merge)."""
    seen: dict[Path, str] = {}
    for bag in bags:
        key = Path(bag).resolve()
        if key.name == "metadata.yaml":
            key = key.parent
        if key in seen:
            raise BagError(f"bag {bag}: given twice (also as {seen[key]}); pass each log once")
        seen[key] = str(bag)


def ingest(bags: Sequence[str | os.PathLike[str]], spec: IngestSpec) -> tuple[Dataset, SyncReport]:
    """Turn one or more bags into one Dataset (episodes never span bags)."""
    if not bags:
        raise BagError("no bag given; pass one or more rosbag2 directories or files")
    _check_distinct(bags)
    resolver = TypeResolver()  # shared: a type one bag embeds also decodes the next bags
    return merge_bag_parts([ingest_bag(path, spec, resolver) for path in bags], spec)


def merge_bag_parts(parts: Sequence[BagPart], spec: IngestSpec) -> tuple[Dataset, SyncReport]:
    """Concatenate per-bag parts, in the given order, into one validated Dataset + sync report."""
    if not parts:
        raise BagError("no bag given; pass one or more rosbag2 directories or files")
    report = SyncReport(time_source=spec.alignment.time_source)
    first_of: dict[str, str] = {}
    for part in parts:
        sha, name = part.source["sha256"], part.report.bags[0]
        if sha in first_of:
            raise BagError(
                f"bag {name}: same content as bag {first_of[sha]} (sha256 {sha[:16]}...); "
                "pass each log once (a copy would count its transitions twice)"
            )
        first_of[sha] = name
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

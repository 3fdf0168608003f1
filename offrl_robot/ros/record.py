"""`offrl-robot record TOPIC[:TYPE]... --out DIR`: log ROS 2 topics to rosbag2 without a ROS install.

For machines that have the rclpy wheels but not `ros2 bag` (with a ROS 2 install,
`ros2 bag record -s mcap ...` does the same job and its bags ingest the same way). What it
writes, and why:

- **bytes as they arrived**: rclpy `raw=True` subscriptions hand over each message's CDR
  bytes, which go into the bag untouched (nothing is decoded or re-encoded);
- **receive time** as the bag timestamp: when the middleware received the message (the rmw
  `received_timestamp`, system clock), not when the executor got round to its callback. A
  recorder that falls behind takes one message per topic per executor pass, so callback times
  would put a latched /episode marker tens of ticks before the backlog of /joint_states and
  /cmd that came before it (measured: episodes of 83 and 215 ticks instead of 149 on a loaded
  2-core machine). Reception is still per topic: under heavy load a latched marker arrived up
  to 75 ticks after the states published after it. `--stamp publish` takes the publisher's
  send time (`source_timestamp`) instead: the order messages were published in, across topics,
  exact for publishers on one machine (a simulator and its controller; measured: every episode
  149 ticks at load 6 on 2 cores). `--use-sim-time`: the /clock time at the callback, as
  `ros2 bag record --use-sim-time` does;
- **the offered QoS** of every publisher of a topic (from the ROS graph), which rosbags writes
  as the same text into metadata.yaml and the storage file; when those two differ, rosbags'
  reader silently yields 0 messages. The subscription adapts to the offers like rosbag2 does:
  reliable only if every publisher is, transient-local (latched: the current /goal and
  /episode arrive at start) only if every publisher is;
- **the message definitions** (+ RIHS01 hash) from the installed message package's .msg files
  (AMENT_PREFIX_PATH), else rosbags' Kilted typestore; a publisher announcing a different type
  hash is refused, since its bytes would not match the definition stored in the bag.

Types come from the graph, or from the user as `TOPIC:pkg/msg/Type` (then the topic may
appear later). Stops on Ctrl-C/SIGTERM, `--duration` (seconds of the bag's clock),
`--max-messages`, or `--episodes N`: every message on `--episode-topic` (default `/episode`,
which sim_node publishes at each episode start, latched) starts an episode; recording stops
when episode N+1 starts (that marker is not written), so the bag holds exactly N markers and
ingest yields N episodes. The first one is the episode in progress when recording began (its
latched marker arrives first), so it can be a tail. Whatever the stop, the bag is finalized;
it is written in a hidden temporary directory and renamed to `--out` only when complete, so
an error (or SIGKILL) never leaves a half-written bag at `--out`.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offrl_robot.data.rosbag_write import STORAGES, RawBagWriter
from offrl_robot.errors import ConfigError, OffrlError

NS = 1_000_000_000
DEFAULT_EPISODE_TOPIC = "/episode"
UNKNOWN_HASH_PREFIX = "RIHS01_" + "0" * 8  # what rmw reports when a publisher sends no type hash


# ---------------------------------------------------------------------------------- topics
@dataclass
class TopicRequest:
    """One `TOPIC[:TYPE]` argument."""

    name: str
    msgtype: str | None = None


def normalise_type(msgtype: str, what: str) -> str:
    """`pkg/Type` or `pkg/msg/Type` -> `pkg/msg/Type`; anything else is a one-line error."""
    parts = msgtype.strip().split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"{what}: type {msgtype!r} is not pkg/msg/Type (e.g. sensor_msgs/msg/JointState)")
    return "/".join(parts)


def parse_topics(args: Sequence[str]) -> list[TopicRequest]:
    """Parse `TOPIC[:TYPE]` arguments (relative names become absolute; duplicates are an error)."""
    from rclpy.validate_full_topic_name import validate_full_topic_name

    requests: dict[str, TopicRequest] = {}
    for arg in args:
        name, sep, msgtype = arg.partition(":")
        name = name.strip()
        if name and not name.startswith("/"):
            name = "/" + name
        try:
            validate_full_topic_name(name)
        except Exception as err:  # rclpy's InvalidTopicNameException carries a multi-line message
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"topic {arg!r}: not a valid ROS 2 topic name ({reason})") from None
        if name in requests:
            raise ConfigError(f"topic {name}: given twice; name each topic once")
        requests[name] = TopicRequest(name, normalise_type(msgtype, f"topic {name}") if sep else None)
    if not requests:
        raise ConfigError(
            "no topics given; name at least one, e.g. offrl-robot record /joint_states --out DIR"
        )
    return list(requests.values())


def message_class(msgtype: str, topic: str) -> Any:
    """The rclpy message class of `pkg/msg/Type` (raw subscriptions still need its type support)."""
    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError):
        raise OffrlError(
            f"topic {topic}: message type {msgtype} is not installed for this Python "
            f"(no {pkg}.{kind}.{name}); install the package that defines it"
        ) from None


# ---------------------------------------------------------------------------------- definitions
@dataclass
class Definition:
    """A message definition as rosbag2 stores it: concatenated .msg text + RIHS01 hash."""

    msgtype: str
    msgdef: str
    rihs01: str
    source: str


def _type_refs(spec: Any) -> Iterable[str]:
    """Type names a rosbags field spec refers to (through arrays and sequences)."""
    from rosbags.interfaces import Nodetype

    kind, rest = spec
    if kind == Nodetype.NAME:
        yield rest
    elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        yield from _type_refs(rest[0])


def _installed_definition(msgtype: str, prefixes: Sequence[str]) -> Definition | None:
    """The definition built from the installed .msg files (`PREFIX/share/PKG/msg/TYPE.msg`)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.EMPTY)
    found: dict[str, Any] = {}
    todo = [msgtype]
    while todo:
        name = todo.pop()
        if name in found or name in store.types:
            continue
        pkg, kind, typ = name.split("/")
        path = next(
            (p for prefix in prefixes if (p := Path(prefix, "share", pkg, kind, f"{typ}.msg")).is_file()),
            None,
        )
        if path is None:
            return None
        try:
            parsed = get_types_from_msg(path.read_text(encoding="utf-8"), name)
        except Exception:  # an .msg rosbags cannot parse: leave it to the typestore
            return None
        found.update(parsed)
        for _consts, fields in parsed.values():
            todo.extend(ref for _fname, spec in fields for ref in _type_refs(spec))
    store.register(found)
    msgdef, _ = store.generate_msgdef(msgtype, ros_version=2)
    return Definition(msgtype, msgdef, store.hash_rihs01(msgtype), "installed .msg files")


def _typestore_definition(msgtype: str) -> Definition | None:
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    if msgtype not in store.types:
        return None
    msgdef, _ = store.generate_msgdef(msgtype, ros_version=2)
    return Definition(msgtype, msgdef, store.hash_rihs01(msgtype), "rosbags Kilted typestore")


def message_definition(
    msgtype: str,
    topic: str,
    publisher_hashes: Iterable[str] = (),
    prefixes: Sequence[str] | None = None,
) -> Definition:
    """The definition to store for `msgtype`, matching the publishers' type hash when they send one."""
    if prefixes is None:
        prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates = [d for d in (_installed_definition(msgtype, prefixes), _typestore_definition(msgtype)) if d]
    if not candidates:
        raise OffrlError(
            f"topic {topic}: no message definition for {msgtype} (no share/{msgtype}.msg under "
            "AMENT_PREFIX_PATH, not in rosbags' typestore); add its package's install prefix to AMENT_PREFIX_PATH"
        )
    announced = {h for h in publisher_hashes if h and not h.startswith(UNKNOWN_HASH_PREFIX)}
    if not announced:
        return candidates[0]
    if len(announced) > 1:
        raise OffrlError(
            f"topic {topic}: publishers announce {len(announced)} different versions of {msgtype}; "
            "record them separately or align their message packages"
        )
    (wanted,) = announced
    for candidate in candidates:
        if candidate.rihs01 == wanted:
            return candidate
    raise OffrlError(
        f"topic {topic}: the publisher's {msgtype} (hash {wanted}) differs from every definition "
        f"known here ({', '.join(c.rihs01 for c in candidates)}); install the message package the "
        "publisher was built with"
    )


# ---------------------------------------------------------------------------------- QoS
def bag_qos(profile: Any) -> Any:
    """rclpy `QoSProfile` (as offered, from the graph) -> rosbags `Qos` for the bag's metadata."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    def enum(cls: Any, value: Any) -> Any:
        try:
            return cls(int(value))
        except ValueError:
            return cls.UNKNOWN

    def duration(value: Any) -> Any:
        sec, nsec = divmod(int(value.nanoseconds), NS)  # infinite: 9223372036 s 854775807 ns, as rmw
        return QosTime(sec, nsec)

    return Qos(
        enum(QosHistory, profile.history),
        int(profile.depth),
        enum(QosReliability, profile.reliability),
        enum(QosDurability, profile.durability),
        duration(profile.deadline),
        duration(profile.lifespan),
        enum(QosLiveliness, profile.liveliness),
        duration(profile.liveliness_lease_duration),
        bool(profile.avoid_ros_namespace_conventions),
    )


def subscription_qos(offers: Sequence[Any], depth: int) -> Any:
    """Request what every publisher can serve (rosbag2's rule): reliable / transient-local only
    when all offers are, so no publisher is left unmatched and latched messages still arrive."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = not offers or all(o.reliability == ReliabilityPolicy.RELIABLE for o in offers)
    latched = bool(offers) and all(o.durability == DurabilityPolicy.TRANSIENT_LOCAL for o in offers)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


# ---------------------------------------------------------------------------------- recorder
# --stamp -> the rmw MessageInfo field the bag timestamp comes from (system clock, ns)
STAMPS = {"receive": "received_timestamp", "publish": "source_timestamp"}


@dataclass
class Limits:
    """When to stop (0 / None = no limit)."""

    duration_s: float = 0.0
    max_messages: int = 0
    episodes: int = 0
    episode_topic: str = DEFAULT_EPISODE_TOPIC


@dataclass
class ResolvedTopic:
    name: str
    msgtype: str
    definition: Definition
    offers: list[Any] = field(default_factory=list)


class Recorder:
    """Raw subscriptions -> `RawBagWriter`; `stop_reason` is set by a limit or by `request_stop`."""

    def __init__(
        self,
        node: Any,
        writer: RawBagWriter,
        topics: Sequence[ResolvedTopic],
        limits: Limits,
        depth: int,
        stamp: str = "receive",
    ) -> None:
        self.node, self.writer, self.limits = node, writer, limits
        self.clock = node.get_clock()
        # MessageInfo field the bag time comes from ("" = the node clock at the callback: sim time)
        if stamp not in STAMPS:
            raise ConfigError(f"--stamp {stamp!r}: choose one of {', '.join(STAMPS)}")
        sim_time = bool(node.get_parameter("use_sim_time").value)
        self.stamp_key = "" if sim_time else STAMPS[stamp]
        self.stop_reason: str | None = None
        self.total = 0
        self.episodes_seen = 0
        self.start_ns = self.clock.now().nanoseconds
        for topic in topics:
            writer.add_topic(
                topic.name,
                topic.msgtype,
                msgdef=topic.definition.msgdef,
                rihs01=topic.definition.rihs01,
                offered_qos=[bag_qos(o) for o in topic.offers],
            )
        for topic in topics:  # subscribe only once every topic is declared in the bag
            node.create_subscription(
                message_class(topic.msgtype, topic.name),
                topic.name,
                self._callback(topic.name),
                subscription_qos(topic.offers, depth),
                raw=True,
            )

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def elapsed_ns(self) -> int:
        return self.clock.now().nanoseconds - self.start_ns

    def check_duration(self) -> None:
        if self.limits.duration_s and self.elapsed_ns() >= self.limits.duration_s * NS:
            self.request_stop(f"--duration {self.limits.duration_s:g} s")

    def _callback(self, topic: str) -> Callable[[bytes, Any], None]:
        limits = self.limits
        counts_episodes = bool(limits.episodes) and topic == limits.episode_topic

        def on_message(data: bytes, info: Any) -> None:
            if self.stop_reason is not None:
                return
            self.check_duration()
            if self.stop_reason is not None:
                return
            if counts_episodes:
                if self.episodes_seen == limits.episodes:  # episode N+1 starts: stop before it
                    self.request_stop(f"--episodes {limits.episodes}")
                    return
                self.episodes_seen += 1
            stamp = int(info[self.stamp_key]) if self.stamp_key else 0
            self.writer.write(topic, stamp if stamp > 0 else self.clock.now().nanoseconds, data)
            self.total += 1
            if limits.max_messages and self.total >= limits.max_messages:
                self.request_stop(f"--max-messages {limits.max_messages}")

        return on_message


def _spin_until(executor: Any, done: Callable[[], bool], timeout_s: float, stop: Callable[[], bool]) -> bool:
    end = time.monotonic() + timeout_s
    while not done():
        if stop() or time.monotonic() >= end:
            return done()
        executor.spin_once(timeout_sec=0.05)
    return True


def resolve_topics(
    node: Any, executor: Any, requests: Sequence[TopicRequest], wait_s: float, stop: Callable[[], bool]
) -> list[ResolvedTopic]:
    """Wait (up to `wait_s`) for every topic to have a publisher; take types and offered QoS from the graph."""

    def published() -> bool:
        return all(node.count_publishers(r.name) > 0 for r in requests)

    _spin_until(executor, published, wait_s, stop)
    if stop():
        return []
    resolved = []
    for request in requests:
        infos = node.get_publishers_info_by_topic(request.name)
        types = sorted({normalise_type(i.topic_type, f"topic {request.name}") for i in infos})
        if not infos and request.msgtype is None:
            visible = sorted(
                name for name, _ in node.get_topic_names_and_types() if node.count_publishers(name)
            )
            shown = ", ".join(visible[:8]) + (", ..." if len(visible) > 8 else "") or "none"
            raise OffrlError(
                f"topic {request.name}: no publisher appeared within {wait_s:g} s (topics with publishers: "
                f"{shown}); check the name, raise --wait, or give the type as {request.name}:pkg/msg/Type "
                "to record it before it appears"
            )
        if len(types) > 1:
            raise OffrlError(f"topic {request.name}: publishers disagree on the type ({', '.join(types)})")
        if request.msgtype is not None and types and types[0] != request.msgtype:
            raise OffrlError(
                f"topic {request.name}: given as {request.msgtype} but published as {types[0]}; fix the type"
            )
        msgtype = request.msgtype or types[0]
        message_class(msgtype, request.name)  # fail before recording starts, not at subscribe time
        hashes = [str(getattr(i, "topic_type_hash", "") or "") for i in infos]
        definition = message_definition(msgtype, request.name, hashes)
        if not infos:
            print(
                f"offrl-robot record: note: topic {request.name} has no publisher yet; subscribing "
                "reliable/volatile (a best-effort publisher will not be matched), offered QoS not recorded",
                file=sys.stderr,
            )
        resolved.append(ResolvedTopic(request.name, msgtype, definition, [i.qos_profile for i in infos]))
    return resolved


# ---------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "topics",
        nargs="+",
        metavar="TOPIC[:TYPE]",
        help="topics to record; the type (pkg/msg/Type) comes from the graph unless given",
    )
    parser.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    parser.add_argument("--storage", default="mcap", help="rosbag2 storage: mcap (default) or sqlite3")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after S seconds of the bag's clock (0 = no limit)"
    )
    parser.add_argument(
        "--max-messages", type=int, default=0, help="stop after N messages in total (0 = no limit)"
    )
    parser.add_argument(
        "--episodes",
        type=int,
        default=0,
        help="stop when episode N+1 starts: N markers on --episode-topic (recorded too); 0 = no limit",
    )
    parser.add_argument(
        "--episode-topic",
        default=DEFAULT_EPISODE_TOPIC,
        help="every message on it starts an episode (default /episode: sim_node's latched std_msgs/Int32)",
    )
    parser.add_argument(
        "--use-sim-time", action="store_true", help="stamp with /clock time (waits for /clock first)"
    )
    parser.add_argument(
        "--stamp",
        default="receive",
        choices=sorted(STAMPS),
        help="bag time: receive (when the middleware received it, default) or publish (when its "
        "publisher sent it: the order messages were published in, across topics, for publishers on "
        "this machine, e.g. a simulator and its controller)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=5.0,
        help="seconds to wait for every topic to have a publisher (default 5)",
    )
    parser.add_argument(
        "--depth", type=int, default=100, help="subscription queue depth per topic (default 100)"
    )


def _check_args(args: argparse.Namespace) -> tuple[list[TopicRequest], Limits]:
    if args.storage not in STORAGES:
        raise ConfigError(f"--storage {args.storage!r}: choose one of {', '.join(STORAGES)}")
    if Path(args.out).exists():
        raise ConfigError(
            f"--out {args.out}: already exists; choose a new directory (a bag is never overwritten)"
        )
    for flag, value in (("--duration", args.duration), ("--wait", args.wait)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{flag} {value}: must be a finite number of seconds >= 0")
    for flag, value in (("--max-messages", args.max_messages), ("--episodes", args.episodes)):
        if value < 0:
            raise ConfigError(f"{flag} {value}: must be >= 0 (0 = no limit)")
    if args.stamp == "publish" and args.use_sim_time:
        raise ConfigError(
            "--stamp publish is the publishers' system time; it cannot be combined with --use-sim-time"
        )
    if args.depth < 1:
        raise ConfigError(f"--depth {args.depth}: must be at least 1")
    requests = parse_topics(args.topics)
    limits = Limits(args.duration, args.max_messages, args.episodes)
    if args.episodes:
        (episode,) = parse_topics([args.episode_topic])
        limits.episode_topic = episode.name
        if all(r.name != episode.name for r in requests):  # ingest splits on the markers: keep them
            requests.append(episode)
    return requests, limits


def run(args: argparse.Namespace) -> int:
    requests, limits = _check_args(args)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    context = rclpy.Context()
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    signals: list[str] = []

    def on_signal(signum: int, frame: object) -> None:  # a flag, never an exception mid-write
        signals.append(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stopped = lambda: bool(signals)  # noqa: E731
    node = Node(
        f"offrl_record_{os.getpid()}",
        context=context,
        parameter_overrides=[Parameter("use_sim_time", value=bool(args.use_sim_time))],
    )
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        topics = resolve_topics(node, executor, requests, args.wait, stopped)
        if args.use_sim_time and not stopped():
            clock = node.get_clock()
            ticking = _spin_until(executor, lambda: clock.now().nanoseconds > 0, max(args.wait, 1.0), stopped)
            if not ticking and not stopped():
                raise OffrlError(
                    f"--use-sim-time: no /clock message within {max(args.wait, 1.0):g} s; start the "
                    "simulator (sim_node publishes /clock) or drop --use-sim-time"
                )
        if stopped():
            print(
                f"offrl-robot record: {signals[0]} before recording started; nothing written", file=sys.stderr
            )
            return 130
        with RawBagWriter(args.out, storage=args.storage) as writer:
            recorder = Recorder(node, writer, topics, limits, args.depth, args.stamp)
            print(
                f"recording {len(topics)} topics ({', '.join(t.name for t in topics)}) -> {args.out} "
                f"[{args.storage}, {'sim time' if args.use_sim_time else args.stamp + ' time'}]; Ctrl-C to stop",
                flush=True,
            )
            while recorder.stop_reason is None:
                if signals:
                    recorder.request_stop(signals[0])
                    break
                executor.spin_once(timeout_sec=0.1)
                recorder.check_duration()
            elapsed = recorder.elapsed_ns() / NS
            executor.remove_node(node)
            node.destroy_node()  # no callback runs while the bag is finalized
            node = None
        counts = ", ".join(f"{topic} {n}" for topic, n in writer.counts.items())
        print(
            f"stopped by {recorder.stop_reason} after {elapsed:.2f} s: {recorder.total} messages ({counts}) "
            f"-> {args.out}"
        )
        return 0
    finally:
        if node is not None:
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown(context=context)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

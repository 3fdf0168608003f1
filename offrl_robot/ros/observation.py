"""Build the model's observation vector from ROS messages, by joint *name*, never by index.

A model declares its inputs as names (`joint_3.position`, `joint_3.velocity`, `goal.x`). On a
real robot the order of `sensor_msgs/JointState.name` is whatever the driver chose, can change
between drivers, and the message can be malformed (empty `name`, arrays of the wrong length,
NaN from a failed encoder read, a joint missing). Mapping by index would silently feed the
policy the wrong joint; here every message is checked and mapped by name, and anything wrong
makes the observation *invalid* with a one-line reason, so the node publishes the safe action
and reports the reason in `/diagnostics` instead of commanding from garbage.

Pure Python/numpy (no rclpy types): the node passes the message's arrays in, so this logic is
tested without DDS and reused by the in-process deploy runner.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from offrl_robot.errors import ConfigError

JOINT_FIELDS = ("position", "velocity", "effort")
POINT_FIELDS = ("x", "y", "z")


@dataclass(frozen=True)
class _JointSlot:
    """observation[index] = JointState.<field>[position of `joint` in JointState.name]."""

    index: int
    joint: str
    field: str


@dataclass(frozen=True)
class _ExtraSlot:
    """observation[index] = <message on the topic for `prefix`>.<field>."""

    index: int
    prefix: str
    field: str


def split_name(name: str) -> tuple[str, str]:
    """`joint_1.position` -> (`joint_1`, `position`); the last dot separates, joint names may hold dots."""
    head, dot, tail = name.rpartition(".")
    if not dot or not head or not tail:
        raise ConfigError(
            f"observation name {name!r} is not '<joint>.<position|velocity|effort>' or '<prefix>.<x|y|z>'; "
            "fix the model's offrl.observation_names"
        )
    return head, tail


# Largest magnitude an observation entry may have: the model takes float32, and a value beyond
# float32's range (a driver sending 1e300) would become inf inside the model.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Distinct JointState name lists remembered (per-message shuffled orders, several publishers);
# beyond this the cache starts over, so a hostile stream of fresh orders cannot grow memory.
MAX_LAYOUTS = 256


@dataclass(frozen=True)
class _Layout:
    """Where the joints a JointState with this `name` list carries go: computed once per list."""

    count: int
    takes: dict[str, tuple[np.ndarray, np.ndarray]]  # field -> (message indices, vector indices)
    rows: np.ndarray  # tracked-joint rows this message updates
    names: tuple[str, ...]  # the joints it updates, for error messages and invalidation
    hold_take: np.ndarray  # message indices of the hold joints' positions
    hold_dest: np.ndarray  # their rows in `hold_positions`


class ObservationAssembler:
    """Keeps the latest valid value of every observation entry and says whether the vector is usable.

    `extra_prefixes` are the observation-name prefixes served by extra topics (e.g. `goal` from a
    geometry_msgs/PointStamped); every other `<name>.<field>` must be a JointState field.
    `hold_joints`: joints whose measured position the node needs for the safe command of a
    position-controlled arm (tracked even when the model does not observe their position).

    Several publishers on one JointState topic (an arm broadcaster and a gripper driver, each
    naming its own joints) are normal: each message updates the joints it carries, every joint is
    taken as-of from the latest message that carried it, and freshness is per joint (the
    observation is as old as its oldest joint). A message that is malformed invalidates the
    joints it names (or every joint, when its names cannot be read) until a good one arrives.
    """

    def __init__(
        self,
        observation_names: Sequence[str],
        extra_prefixes: Iterable[str] = (),
        hold_joints: Sequence[str] | None = None,
    ) -> None:
        extras = set(extra_prefixes)
        self.observation_names = list(observation_names)
        self._joint_slots: list[_JointSlot] = []
        self._extra_slots: list[_ExtraSlot] = []
        for index, name in enumerate(self.observation_names):
            head, field = split_name(name)
            if head in extras:
                if field not in POINT_FIELDS:
                    raise ConfigError(
                        f"observation {name!r}: extra topic '{head}' carries a point, field must be one of {POINT_FIELDS}"
                    )
                self._extra_slots.append(_ExtraSlot(index, head, field))
            elif field in JOINT_FIELDS:
                self._joint_slots.append(_JointSlot(index, head, field))
            else:
                raise ConfigError(
                    f"observation {name!r}: '{head}' is neither a joint field ({'/'.join(JOINT_FIELDS)}) "
                    f"nor a configured extra topic prefix ({sorted(extras) or 'none configured'}); "
                    "add it to extra_observation_topics in the params file"
                )
        self.joint_names: list[str] = list(dict.fromkeys(slot.joint for slot in self._joint_slots))
        self.extra_prefixes: list[str] = list(dict.fromkeys(slot.prefix for slot in self._extra_slots))
        self.hold_joints: list[str] = list(hold_joints or [])
        # observed joints first, then hold-only joints: rows of the per-joint clocks
        self._tracked: list[str] = list(dict.fromkeys([*self.joint_names, *self.hold_joints]))
        self._row = {joint: i for i, joint in enumerate(self._tracked)}
        self._observed_rows = np.arange(len(self.joint_names), dtype=np.intp)
        self._fields_needed = sorted({slot.field for slot in self._joint_slots})
        self._vector = np.zeros(len(self.observation_names), dtype=np.float32)
        self._hold_positions = np.full(len(self.hold_joints), np.nan)
        self._received = np.full(len(self._tracked), -np.inf)  # monotonic time of each joint's last value
        self._stamps = np.full(len(self._tracked), np.nan)  # header stamp (s) of each joint's last value
        self._layouts: dict[tuple[str, ...], _Layout | str] = {}
        self._message_error: str | None = None  # a message whose names could not be read
        self._invalid: dict[str, str] = {}  # joint -> why its latest message was rejected
        self._extra_seen: set[str] = set()
        self._extra_error: str | None = None

    @property
    def vector(self) -> np.ndarray:
        """The observation (float32, model order). Only meaningful while `error` is None."""
        return self._vector

    @property
    def hold_positions(self) -> np.ndarray | None:
        """Latest measured positions of `hold_joints` (float64), or None until every one is known."""
        if not self.hold_joints or not np.isfinite(self._hold_positions).all():
            return None
        return self._hold_positions.copy()

    @property
    def error(self) -> str | None:
        """Why the observation cannot be used right now, or None when every entry is valid."""
        if self._message_error is not None:
            return self._message_error
        for joint in self.joint_names:
            if joint in self._invalid:
                return self._invalid[joint]
        if self.joint_names and not np.isfinite(self._received[self._observed_rows]).all():
            missing = [j for j in self.joint_names if not np.isfinite(self._received[self._row[j]])]
            return f"no /joint_states value yet for joint(s) {missing}; check joint_names / the driver's joint names"
        if self._extra_error is not None:
            return self._extra_error
        for prefix in self.extra_prefixes:
            if prefix not in self._extra_seen:
                return f"no message received yet for observation prefix '{prefix}'"
        return None

    def oldest_update(self) -> tuple[float, float]:
        """(monotonic receive time, header stamp in s) of the observed joint updated longest ago:
        the observation is as old as its oldest joint. (-inf, nan) while any was never received."""
        if not self.joint_names:
            return np.inf, np.nan
        rows = self._observed_rows
        return float(self._received[rows].min()), float(self._stamps[rows].min())

    def _layout(self, names: tuple[str, ...]) -> _Layout | str:
        """Where each tracked joint sits in this name list (cached per list), or why it cannot be read."""
        cached = self._layouts.get(names)
        if cached is not None:
            return cached
        position_of: dict[str, int] = {}
        layout: _Layout | str | None = None
        for i, name in enumerate(names):
            if name in position_of:
                layout = f"/joint_states names joint '{name}' twice"
                break
            position_of[name] = i
        if layout is None:
            takes = {}
            for field in self._fields_needed:
                slots = [s for s in self._joint_slots if s.field == field and s.joint in position_of]
                takes[field] = (
                    np.array([position_of[s.joint] for s in slots], dtype=np.intp),
                    np.array([s.index for s in slots], dtype=np.intp),
                )
            present = [j for j in self._tracked if j in position_of]
            holds = [(k, j) for k, j in enumerate(self.hold_joints) if j in position_of]
            layout = _Layout(
                count=len(names),
                takes=takes,
                rows=np.array([self._row[j] for j in present], dtype=np.intp),
                names=tuple(present),
                hold_take=np.array([position_of[j] for _, j in holds], dtype=np.intp),
                hold_dest=np.array([k for k, _ in holds], dtype=np.intp),
            )
        if len(self._layouts) >= MAX_LAYOUTS:
            self._layouts.clear()
        self._layouts[names] = layout
        return layout

    def update_joint_state(
        self,
        names: Sequence[str],
        position: Sequence[float],
        velocity: Sequence[float],
        effort: Sequence[float],
        received: float = 0.0,
        stamp: float = math.nan,
    ) -> str | None:
        """Take one JointState; return None if it was used (or carries no joint of ours), else the
        one-line reason it was rejected. `received`: monotonic receive time; `stamp`: its header stamp (s).

        A rejected message invalidates the joints it names (all joints when its names are
        unreadable): the last good values are stale by definition once the driver sends garbage.
        """
        if not self._tracked:
            return None
        if len(names) == 0:
            self._message_error = (
                "/joint_states has an empty name list (unnamed joints cannot be mapped); fix the driver"
            )
            return self._message_error
        layout = self._layout(tuple(names))
        if isinstance(layout, str):
            self._message_error = layout
            return layout
        if not layout.names:
            return None  # another publisher's joints (e.g. a gripper the model does not use)
        error = self._check_and_store(
            layout, names, {"position": position, "velocity": velocity, "effort": effort}
        )
        if error is not None:
            for joint in layout.names:
                self._invalid[joint] = error
            return error
        self._message_error = None
        for joint in layout.names:
            self._invalid.pop(joint, None)
        self._received[layout.rows] = received
        self._stamps[layout.rows] = stamp
        return None

    def _check_and_store(
        self, layout: _Layout, names: Sequence[str], arrays: dict[str, Sequence[float]]
    ) -> str | None:
        count = layout.count
        staged: list[tuple[np.ndarray, np.ndarray]] = []
        wanted = [(field, *layout.takes[field]) for field in self._fields_needed]
        if layout.hold_take.size:
            wanted.append(("position", layout.hold_take, layout.hold_dest))
        for field, take, dest in wanted:
            if not take.size:
                continue  # this message carries no joint that needs this field (e.g. a gripper's velocity)
            array = np.asarray(arrays[field], dtype=np.float64)
            if array.shape != (count,):
                return (
                    f"/joint_states.{field} has {array.size} values for {count} names; "
                    "every field the model uses must have one value per name"
                )
            picked = array[take]
            usable = np.isfinite(picked) & (np.abs(picked) <= FLOAT32_MAX)
            if not usable.all():
                bad = take[~usable][0]
                why = "is not finite" if not np.isfinite(array[bad]) else "overflows float32"
                return f"/joint_states.{field} of joint '{names[bad]}' {why} ({array[bad]})"
            staged.append((dest, picked))
        hold_stage = staged.pop() if layout.hold_take.size else None
        for dest, picked in staged:
            self._vector[dest] = picked
        if hold_stage is not None:
            self._hold_positions[hold_stage[0]] = hold_stage[1]
        return None

    def update_extra(self, prefix: str, fields: dict[str, float]) -> str | None:
        """Take one extra-topic message (as field -> value); return None or why it was rejected."""
        slots = [slot for slot in self._extra_slots if slot.prefix == prefix]
        staged = {}
        for slot in slots:
            value = float(fields[slot.field])
            if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
                self._extra_error = f"observation '{prefix}.{slot.field}' is not finite in float32 ({value})"
                return self._extra_error
            staged[slot.index] = value
        for index, value in staged.items():
            self._vector[index] = value
        self._extra_seen.add(prefix)
        self._extra_error = None
        return None


def parse_extra_topics(entries: Iterable[str]) -> dict[str, str]:
    """Parse the `extra_observation_topics` parameter: ["goal:/goal", ...] -> {"goal": "/goal"}."""
    mapping: dict[str, str] = {}
    for entry in entries:
        if not entry:
            continue
        prefix, sep, topic = entry.partition(":")
        if not sep or not prefix or not topic:
            raise ConfigError(
                f"extra_observation_topics entry {entry!r} must look like 'PREFIX:/topic' (e.g. 'goal:/goal')"
            )
        mapping[prefix.strip()] = topic.strip()
    return mapping

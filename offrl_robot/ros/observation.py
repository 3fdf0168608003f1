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


class ObservationAssembler:
    """Keeps the latest valid value of every observation entry and says whether the vector is usable.

    `extra_prefixes` are the observation-name prefixes served by extra topics (e.g. `goal` from a
    geometry_msgs/PointStamped); every other `<name>.<field>` must be a JointState field.
    """

    def __init__(self, observation_names: Sequence[str], extra_prefixes: Iterable[str] = ()) -> None:
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
        self._fields_needed = {slot.field for slot in self._joint_slots}
        self._vector = np.zeros(len(self.observation_names), dtype=np.float32)
        # The JointState `name` list of the last message and the indices derived from it: drivers
        # publish the same list every tick, so the name lookup runs once, not at 500 Hz.
        self._cached_names: tuple[str, ...] | None = None
        self._cached_take: dict[str, np.ndarray] = {}
        self._cached_dest: dict[str, np.ndarray] = {}
        self._joint_error: str | None = "no /joint_states received yet" if self._joint_slots else None
        self._extra_seen: set[str] = set()
        self._extra_error: str | None = None

    @property
    def vector(self) -> np.ndarray:
        """The observation (float32, model order). Only meaningful while `error` is None."""
        return self._vector

    @property
    def error(self) -> str | None:
        """Why the observation cannot be used right now, or None when every entry is valid."""
        if self._joint_error is not None:
            return self._joint_error
        if self._extra_error is not None:
            return self._extra_error
        for prefix in self.extra_prefixes:
            if prefix not in self._extra_seen:
                return f"no message received yet for observation prefix '{prefix}'"
        return None

    def _index_names(self, names: tuple[str, ...]) -> str | None:
        """Derive (and cache) where each needed joint sits in this JointState's name list."""
        position_of: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in position_of:
                return f"/joint_states names joint '{name}' twice"
            position_of[name] = i
        missing = [joint for joint in self.joint_names if joint not in position_of]
        if missing:
            return (
                f"/joint_states lacks joint(s) {missing} (it names {list(names)[:8]}); "
                "check joint_names / the driver's joint names"
            )
        self._cached_take = {}
        self._cached_dest = {}
        for field in self._fields_needed:
            slots = [slot for slot in self._joint_slots if slot.field == field]
            self._cached_take[field] = np.array([position_of[s.joint] for s in slots], dtype=np.intp)
            self._cached_dest[field] = np.array([s.index for s in slots], dtype=np.intp)
        self._cached_names = names
        return None

    def update_joint_state(
        self,
        names: Sequence[str],
        position: Sequence[float],
        velocity: Sequence[float],
        effort: Sequence[float],
    ) -> str | None:
        """Take one JointState; return None if it was used, else the one-line reason it was rejected.

        A rejected message invalidates the observation (the last good values are stale by
        definition once the driver sends garbage) until a good message arrives.
        """
        error = self._check_and_store(names, {"position": position, "velocity": velocity, "effort": effort})
        self._joint_error = error
        return error

    def _check_and_store(self, names: Sequence[str], arrays: dict[str, Sequence[float]]) -> str | None:
        if not self._joint_slots:
            return None
        count = len(names)
        if count == 0:
            return "/joint_states has an empty name list (unnamed joints cannot be mapped); fix the driver"
        name_tuple = tuple(names)
        if name_tuple != self._cached_names:
            error = self._index_names(name_tuple)
            if error is not None:
                self._cached_names = None
                return error
        values: dict[str, np.ndarray] = {}
        for field in self._fields_needed:
            array = np.asarray(arrays[field], dtype=np.float64)
            if array.shape != (count,):
                return (
                    f"/joint_states.{field} has {array.size} values for {count} names; "
                    "every field the model uses must have one value per name"
                )
            picked = array[self._cached_take[field]]
            if not np.all(np.isfinite(picked)):
                bad = self._cached_take[field][~np.isfinite(picked)][0]
                return f"/joint_states.{field} of joint '{names[bad]}' is not finite ({array[bad]})"
            values[field] = picked
        for field, picked in values.items():
            self._vector[self._cached_dest[field]] = picked
        return None

    def update_extra(self, prefix: str, fields: dict[str, float]) -> str | None:
        """Take one extra-topic message (as field -> value); return None or why it was rejected."""
        slots = [slot for slot in self._extra_slots if slot.prefix == prefix]
        staged = {}
        for slot in slots:
            value = float(fields[slot.field])
            if not np.isfinite(value):
                self._extra_error = f"observation '{prefix}.{slot.field}' is not finite ({value})"
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

"""The YAML ingest spec: how a rosbag2 log becomes a Dataset, as typed dataclasses.

Loading is strict on purpose: a misspelt key (`max_age` for `max_age_s`) silently falling back
to a default would change which steps are dropped without anyone noticing, so every unknown
key is a one-line ConfigError naming the file and the key. JointState columns are mapped by
joint *name*; index mapping (for drivers that publish an empty `name[]`) needs an explicit
`by_index: true`, because joint order differs between drivers and silently mixing two joints
is the worst failure a robot dataset can have.

Example (`config/ingest/arm_reach.yaml`)::

    control_rate_hz: 50
    alignment: {reference: /cmd, max_age_s: 0.04, time_source: receive}
    episodes: {marker_topic: /episode, end: timeout}
    observations:
      - topic: /joint_states
        type: sensor_msgs/msg/JointState
        joints: [joint_1, joint_2, joint_3, joint_4, joint_5, joint_6]
        fields: [position, velocity]
      - topic: /goal
        type: geometry_msgs/msg/PointStamped
        fields: [point.x, point.y, point.z]
        names: [goal.x, goal.y, goal.z]
        max_age_s: .inf        # latched: published once per episode
    action:
      topic: /cmd
      type: std_msgs/msg/Float64MultiArray
      fields: [data]
      names: [joint_1.velocity_cmd, ...]
      low: [-1.5, ...]
      high: [1.5, ...]
    reward: {function: "offrl_robot.sim.rewards:arm_reach_reward"}

One JointState topic fed by several publishers (an arm broadcaster and a gripper with disjoint
`name[]` sets, each with its own fields and rate) takes `joint_groups` instead of
`joints` + `fields` (`config/ingest/fr3_gripper.yaml`)::

      - topic: /joint_states
        type: sensor_msgs/msg/JointState
        joint_groups:
          - joints: [fr3_joint1, fr3_joint2, ..., fr3_joint7]
            fields: [position, velocity]
          - joints: [fr3_finger_joint1, fr3_finger_joint2]
            fields: [position]          # the gripper publishes positions only
            max_age_s: 0.1              # ... and at 30 Hz, not 1 kHz

Every column (joint, field) is taken as-of from the latest message that carries it (names the
joint and has that field), so the arm's and the gripper's messages never mix, whatever order
`name[]` comes in. Columns: group by group, field-major within a group (`fr3_joint1.position`
... `fr3_joint7.position`, `fr3_joint1.velocity` ..., `fr3_finger_joint1.position`, ...).
`joints: [...]` + `fields: [...]` is the one-group shorthand.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from offrl_robot.errors import ConfigError
from offrl_robot.registry import is_registered_reward

JOINT_STATE_FIELDS = ("position", "velocity", "effort")
TIME_SOURCES = ("receive", "header")
EPISODE_ENDS = ("timeout", "terminal")


@dataclass
class JointGroup:
    """Joints of one JointState topic that share fields (and a freshness window), e.g. the
    arm's joints with position + velocity and the gripper's fingers with position only."""

    joints: list[str]
    fields: list[str]
    max_age_s: float | None = None


@dataclass
class TopicFields:
    """Columns taken from one topic.

    `fields`: for JointState, any of position/velocity/effort (columns are field-major: all
    joints' positions, then all velocities); for other types, dotted paths (`point.x`,
    `linear.x`, `data`) whose value is a number or an array. `indices` picks array elements
    (for JointState only with `by_index: true`). `max_age_s` overrides the freshness window
    for this topic (`.inf` for latched topics such as a goal published once per episode).
    `joint_groups` (JointState only) replaces `joints` + `fields` when joints differ in
    fields or freshness (several publishers on one topic).
    """

    topic: str
    fields: list[str] = field(default_factory=list)
    type: str | None = None
    joints: list[str] | None = None
    by_index: bool = False
    indices: list[int] | None = None
    names: list[str] | None = None
    max_age_s: float | None = None
    joint_groups: list[JointGroup] | None = None

    def joint_state_groups(self) -> list[JointGroup]:
        """The JointState columns as groups (`joints` + `fields` is one group); joint labels
        stand for array slots with `by_index`."""
        if self.joint_groups is not None:
            return self.joint_groups
        return [JointGroup(list(self.joints or []), list(self.fields), None)]


@dataclass
class ActionSpec(TopicFields):
    """The action topic plus the physical bounds the exported policy will be clamped to."""

    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)


@dataclass
class AlignmentSpec:
    """`reference`: a topic (one tick per message, e.g. the command) or `rate` (fixed grid).

    `max_age_s`: a tick whose inputs are older than this is dropped and counted.
    `time_source`: `receive` (bag time, one clock for all topics) or `header` (header.stamp
    where the type has one; headerless types keep their receive time).
    """

    reference: str = "rate"
    max_age_s: float = 0.1
    time_source: str = "receive"


@dataclass
class EpisodeSplitSpec:
    """Episodes start at each message of `marker_topic`, or after a gap longer than `gap_s`."""

    marker_topic: str | None = None
    gap_s: float | None = None
    end: str = "timeout"


@dataclass
class RewardSpec:
    """Either a logged `topic` (+ numeric `field`) or a `function`: a registered reward name
    (`reach`, `arm_reach`, entry points; offrl_robot/registry.py) or `module:function(obs, act, next_obs)`.
    A function that takes `task=` (e.g. `reach`) is bound to the spec's `task:` (a task file path is
    relative to the spec).

    A logged reward belongs to the action it follows: for tick i it is the last reward message
    after tick i and at or before tick i+1 (rows without one are dropped and counted). A
    function is called once on the whole arrays and must return one value per row.
    """

    function: str | None = None
    topic: str | None = None
    field: str = "data"


@dataclass
class IngestSpec:
    control_rate_hz: float
    observations: list[TopicFields]
    action: ActionSpec
    reward: RewardSpec
    alignment: AlignmentSpec = field(default_factory=AlignmentSpec)
    episodes: EpisodeSplitSpec = field(default_factory=EpisodeSplitSpec)
    task: str | None = None
    source_file: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (stored in the dataset's source metadata; `source_file` left out)."""
        data = dataclasses.asdict(self)
        data.pop("source_file", None)
        return _jsonable(data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- loading
def load_spec(path: str | os.PathLike[str]) -> IngestSpec:
    """Read and strictly validate a spec file; every problem is one ConfigError line."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"ingest spec {file}: file not found; pass --spec with an existing YAML file"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"ingest spec {file}: cannot read it ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"ingest spec {file}: invalid YAML{where}; fix the syntax") from None
    spec = spec_from_dict(data, str(file))
    if spec.task is not None and spec.task.lower().endswith((".yaml", ".yml")):
        # a task file named in the spec is relative to the spec (like the MJCF in a task file), and
        # stored absolute in the dataset, so training and the gate find it from anywhere
        spec.task = str((file.parent / Path(spec.task).expanduser()).resolve())
    return spec


def spec_from_dict(data: Any, source: str = "<spec>") -> IngestSpec:
    spec = _build(IngestSpec, data, "", source)
    spec.source_file = source
    _check(spec, source)
    return spec


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"ingest spec {source}: {where or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields_ = {f.name: f for f in dataclasses.fields(cls) if f.name != "source_file"}
    for key in data:
        if key not in fields_:
            raise ConfigError(
                f"ingest spec {source}: unknown key {where}{key!r}; allowed here: {', '.join(sorted(fields_))}"
            )
    kwargs = {}
    for name, f in fields_.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"ingest spec {source}: missing required key {where}{name!r}")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{where}{name}", source)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where, source)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"ingest spec {source}: {where} must be a list")
        return [_convert(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.", source)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"ingest spec {source}: {where} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"ingest spec {source}: {where} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"ingest spec {source}: {where} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"ingest spec {source}: {where} must be a non-empty string, got {value!r}")
        return value
    return value


def _check(spec: IngestSpec, source: str) -> None:
    """Cross-field rules the types alone cannot express."""

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"ingest spec {source}: {msg}")

    if not spec.control_rate_hz > 0:
        raise bad("control_rate_hz must be positive")
    if not spec.observations:
        raise bad("observations must list at least one topic")
    al = spec.alignment
    if al.time_source not in TIME_SOURCES:
        raise bad(f"alignment.time_source must be one of {', '.join(TIME_SOURCES)}, got {al.time_source!r}")
    if not al.max_age_s > 0:
        raise bad("alignment.max_age_s must be positive")
    if al.reference != "rate" and not al.reference.startswith("/") and al.reference not in _topics(spec):
        raise bad(f"alignment.reference {al.reference!r} must be 'rate' or a topic name")
    ep = spec.episodes
    if ep.marker_topic is not None and ep.gap_s is not None:
        raise bad("episodes: give either marker_topic or gap_s, not both")
    if ep.gap_s is not None and not ep.gap_s > 0:
        raise bad("episodes.gap_s must be positive")
    if ep.end not in EPISODE_ENDS:
        raise bad(f"episodes.end must be one of {', '.join(EPISODE_ENDS)}, got {ep.end!r}")
    rw = spec.reward
    if (rw.function is None) == (rw.topic is None):
        raise bad("reward needs exactly one of function (module:function) or topic")
    if rw.function is not None and ":" not in rw.function and not is_registered_reward(rw.function):
        raise bad(
            f"reward.function {rw.function!r} must be a registered reward (e.g. arm_reach) or package.module:function"
        )
    for i, src in enumerate([*spec.observations, spec.action]):
        where = "action" if src is spec.action else f"observations[{i}]"
        if src.joint_groups is not None:
            _check_joint_groups(src, where, bad)
        elif not src.fields:
            raise bad(f"{where}.fields must not be empty")
        if src.max_age_s is not None and not src.max_age_s > 0:
            raise bad(f"{where}.max_age_s must be positive (.inf for latched topics)")
        if src.by_index and src.indices is None:
            raise bad(f"{where}: by_index: true needs indices: [...] (positions in the JointState arrays)")
        if src.indices is not None and any(k < 0 for k in src.indices):
            raise bad(f"{where}.indices must be non-negative")
        if src.joints is not None and src.by_index and len(src.joints) != len(src.indices or []):
            raise bad(f"{where}: joints (labels) and indices must have the same length")
        if len(set(src.fields)) != len(src.fields):
            raise bad(f"{where}.fields has duplicates")
    act = spec.action
    if len(act.low) != len(act.high) or not act.low:
        raise bad("action.low and action.high must be non-empty lists of the same length")
    if any(
        not (lo < hi) or math.isinf(lo) or math.isinf(hi) for lo, hi in zip(act.low, act.high, strict=True)
    ):
        raise bad("action.low must be finite and below action.high for every action")


def _check_joint_groups(src: TopicFields, where: str, bad: Callable[[str], ConfigError]) -> None:
    if src.fields or src.joints is not None or src.by_index or src.indices is not None:
        raise bad(
            f"{where}: joint_groups replaces joints/fields (and cannot be combined with by_index/indices); "
            "move them into the groups"
        )
    if src.type is not None and src.type.replace("/msg/", "/") != "sensor_msgs/JointState":
        raise bad(f"{where}: joint_groups is for sensor_msgs/msg/JointState topics, not {src.type}")
    if not src.joint_groups:
        raise bad(f"{where}.joint_groups must list at least one group")
    seen: set[tuple[str, str]] = set()
    for k, group in enumerate(src.joint_groups):
        at = f"{where}.joint_groups[{k}]"
        if not group.joints:
            raise bad(f"{at}.joints must not be empty")
        if not group.fields:
            raise bad(f"{at}.fields must not be empty")
        for fname in group.fields:
            if fname not in JOINT_STATE_FIELDS:
                raise bad(f"{at}.fields: {fname!r} is not one of {', '.join(JOINT_STATE_FIELDS)}")
        if group.max_age_s is not None and not group.max_age_s > 0:
            raise bad(f"{at}.max_age_s must be positive (.inf for latched joints)")
        for joint in group.joints:
            for fname in group.fields:
                if (joint, fname) in seen:
                    raise bad(f"{at}: {joint}.{fname} is already taken by an earlier group")
                seen.add((joint, fname))


def _topics(spec: IngestSpec) -> set[str]:
    return {s.topic for s in spec.observations} | {spec.action.topic}

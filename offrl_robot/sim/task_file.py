"""Task definitions as data: `config/tasks/NAME.yaml` describes a reaching task on any MJCF arm.

A task file is what the project needs to know about a user's robot to simulate it, gate a policy
on it and compute its reward from a log: the MJCF, which joints and actuators the policy sees and
commands and how (`command: position | velocity | effort`), the observation layout (the same
names the ingest spec and the model card use: `<joint>.position`, `<joint>.velocity`, `goal.x`),
where goals are drawn (a box, reached by a site), the reward and success functions by registered
name, the episode length and the control rate. Example (config/tasks/vx300s_reach.yaml)::

    name: vx300s_reach
    mjcf: ${OFFRL_ROBOTS:-../../../shared/data/robots}/trossen_vx300s/scene.xml
    command: position
    control_rate_hz: 50
    episode_steps: 150
    joints: [waist, shoulder, elbow, forearm_roll, wrist_angle, wrist_rotate]
    actuators: [waist, shoulder, elbow, forearm_roll, wrist_angle, wrist_rotate]
    start: {keyframe: home, noise: 0.05}
    goal: {site: pinch, low: [0.2, -0.2, 0.1], high: [0.4, 0.2, 0.35], success_distance_m: 0.02}
    reward: reach
    success: reach

`mjcf` is resolved relative to the task file (so a checkout with ../shared beside it works from
any working directory), may be absolute, and may use `$VAR`, `${VAR}` or `${VAR:-default}` (an
unset variable without a default is an error naming it). Loading is strict: an unknown key, a
joint or actuator the MJCF does not have, an actuator whose kind does not match `command`, or a
command without finite limits is one ConfigError line naming the file and the field.

Actions are named `<joint>.<command>_cmd` after the joint each actuator drives (the dataset's and
the ROS node's convention; a position command's safe "hold" looks up `<joint>.position`).
Limits: the actuator's ctrlrange, else `command_limits` (by joint or actuator name), else, for a
position command, the joint's range.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import yaml

from offrl_robot.errors import ConfigError
from offrl_robot.safety import COMMAND_KINDS

TASK_FILE_SUFFIXES = (".yaml", ".yml")
GOAL_BODY = "offrl_goal"  # the mocap marker added to the model (drawn in videos, never collides)
GOAL_FIELDS = ("x", "y", "z")
OBSERVED_FIELDS = ("position", "velocity", "effort")
_ONE_DOF = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_KEYS = {
    "name",
    "mjcf",
    "command",
    "control_rate_hz",
    "episode_steps",
    "joints",
    "actuators",
    "command_limits",
    "observations",
    "start",
    "goal",
    "reward",
    "success",
    "expert",
}
_REQUIRED = ("mjcf", "command", "control_rate_hz", "episode_steps", "joints", "goal", "reward", "success")


@dataclass(frozen=True)
class GoalSpec:
    """Goals are drawn uniformly in the box [low, high] (m, world frame); `site` must reach them."""

    site: str
    low: tuple[float, float, float]
    high: tuple[float, float, float]
    success_distance_m: float = 0.02


@dataclass(frozen=True)
class ExpertSpec:
    """Gains of the scripted damped-least-squares expert (offrl_robot.sim.experts.ReachExpert)."""

    # 1/s: Cartesian error -> site velocity. Stiff on purpose (as ArmReachExpert): a policy cloned
    # from it stops where its fit error balances gain x error, so the offset shrinks with the gain
    # (ViperX BC on 150 demonstrations, same data and training otherwise: 0.85 success at gain 10,
    # 0.95 at 30; the expert itself stays stable at 30 on all three shipped arms)
    gain: float = 30.0
    max_speed: float = 0.5  # m/s: cap on the commanded site speed
    max_joint_speed: float = 1.5  # rad/s (or m/s): cap on every joint's speed, uniform scaling
    damping: float = 0.05  # DLS damping (lambda)
    posture_gain: float = 0.5  # 1/s: null-space pull toward the start pose


@dataclass(frozen=True)
class TaskDefinition:
    """A parsed, checked task file (or the same built in code, for the `offrl_robot.tasks` entry points).

    Hashable (tuples only), so the compiled model is cached per definition (`compiled_task`).
    """

    name: str
    mjcf: str  # absolute path
    command: str
    control_rate_hz: float
    episode_steps: int
    joints: tuple[str, ...]
    actuators: tuple[str, ...]
    observations: tuple[str, ...]
    goal: GoalSpec
    reward: str
    success: str
    start_keyframe: str | None = None
    start_noise: float = 0.0
    command_limits: tuple[tuple[str, float, float], ...] = ()
    expert: ExpertSpec = field(default_factory=ExpertSpec)
    source: str = ""  # where it came from (file path or entry point), for messages

    def column(self, name: str) -> int:
        """Index of observation `name` (ConfigError when the task does not observe it)."""
        try:
            return self.observations.index(name)
        except ValueError:
            raise ConfigError(f"{self.source}: observations has no {name!r}") from None


# ---------------------------------------------------------------------------------- loading
def looks_like_task_file(text: str) -> bool:
    return text.lower().endswith(TASK_FILE_SUFFIXES)


def expand_path(raw: str, base: Path, source: str, field_name: str = "mjcf") -> Path:
    """`$VAR` / `${VAR}` / `${VAR:-default}` expanded, `~` expanded, relative to `base`."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        value = os.environ.get(name)
        if value:
            return value
        if match.group(2) is not None:
            return match.group(2)
        raise ConfigError(
            f"{source}: {field_name} uses ${{{name}}} but {name} is not set; export it or write "
            f"${{{name}:-default}}"
        )

    path = Path(_VARIABLE.sub(substitute, raw)).expanduser()
    return path if path.is_absolute() else base / path


def load_task_file(path: str | os.PathLike[str]) -> TaskDefinition:
    """Read and check a task file; every problem is one ConfigError line naming the file and field."""
    file = Path(path)
    src = str(file)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"task file {src} not found; pass an existing config/tasks/NAME.yaml") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"task file {src}: cannot read it ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"task file {src}: invalid YAML{where}; fix the syntax") from None
    return definition_from_dict(data, file.resolve().parent, src, default_name=file.stem)


def _number(data: dict[str, Any], key: str, src: str, low: float, integer: bool = False) -> Any:
    value = data[key]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value < low:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{src}: {key} must be {kind} >= {low:g}, got {value!r}")
    return value


def _names(value: Any, src: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{src}: {key} must be a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{src}: {key} lists a name twice: {value!r}")
    return tuple(value)


def _vector3(value: Any, src: str, key: str) -> tuple[float, float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        )
    ):
        raise ConfigError(f"{src}: {key} must be [x, y, z] in metres, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _mapping(value: Any, src: str, key: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: {key} must be a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{src}: unknown keys {key}.{unknown}; allowed: {sorted(allowed)}")
    return value


def definition_from_dict(data: Any, base: Path, src: str, default_name: str = "task") -> TaskDefinition:
    """Build a TaskDefinition from a task file's mapping (`base`: folder relative paths start from)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: a task file must be a YAML mapping")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"{src}: unknown keys {unknown}; allowed: {sorted(_KEYS)}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ConfigError(f"{src}: missing required keys {missing}")
    if not isinstance(data["mjcf"], str) or not data["mjcf"]:
        raise ConfigError(f"{src}: mjcf must be a path to the robot's MJCF file")
    mjcf = expand_path(data["mjcf"], base, src)
    if not mjcf.is_file():
        raise ConfigError(
            f"{src}: mjcf {data['mjcf']!r} -> {mjcf} not found; a relative mjcf is relative to the task file "
            "(an absolute path or ${VAR} work too)"
        )
    command = data["command"]
    if command not in COMMAND_KINDS:
        raise ConfigError(f"{src}: command must be one of {', '.join(COMMAND_KINDS)}, got {command!r}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{src}: name must be a non-empty string")
    joints = _names(data["joints"], src, "joints")
    actuators = _names(data["actuators"], src, "actuators") if "actuators" in data else ()
    observations = _names(data["observations"], src, "observations") if "observations" in data else ()
    goal = _mapping(data["goal"], src, "goal", {"site", "low", "high", "success_distance_m"})
    if not isinstance(goal.get("site"), str) or "low" not in goal or "high" not in goal:
        raise ConfigError(f"{src}: goal needs site (a site name), low and high ([x, y, z] in m)")
    low, high = _vector3(goal["low"], src, "goal.low"), _vector3(goal["high"], src, "goal.high")
    if any(lo > hi for lo, hi in zip(low, high, strict=True)):
        raise ConfigError(f"{src}: goal.low must be <= goal.high in every axis, got {low} and {high}")
    tolerance = goal.get("success_distance_m", 0.02)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < math.inf:
        raise ConfigError(f"{src}: goal.success_distance_m must be a number > 0, got {tolerance!r}")
    start = _mapping(data.get("start") or {}, src, "start", {"keyframe", "noise"})
    keyframe = start.get("keyframe")
    if keyframe is not None and not isinstance(keyframe, str):
        raise ConfigError(f"{src}: start.keyframe must be a keyframe name, got {keyframe!r}")
    noise = start.get("noise", 0.0)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < math.inf:
        raise ConfigError(f"{src}: start.noise must be a number >= 0 (rad or m), got {noise!r}")
    limits = []
    for key, bounds in (data.get("command_limits") or {}).items():
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bounds
            )
            or bounds[0] >= bounds[1]
        ):
            raise ConfigError(
                f"{src}: command_limits.{key} must be [low, high] with low < high, got {bounds!r}"
            )
        limits.append((str(key), float(bounds[0]), float(bounds[1])))
    expert_raw = _mapping(data.get("expert") or {}, src, "expert", set(ExpertSpec.__dataclass_fields__))
    for key, value in expert_raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ConfigError(f"{src}: expert.{key} must be a number >= 0, got {value!r}")
    for key in ("reward", "success"):
        if not isinstance(data[key], str) or not data[key]:
            raise ConfigError(f"{src}: {key} must be a registered {key} function name (e.g. reach)")
    definition = TaskDefinition(
        name=name,
        mjcf=str(mjcf.resolve()),
        command=command,
        control_rate_hz=float(_number(data, "control_rate_hz", src, 1e-9)),
        episode_steps=int(_number(data, "episode_steps", src, 1, integer=True)),
        joints=joints,
        actuators=actuators,
        observations=observations,
        goal=GoalSpec(site=goal["site"], low=low, high=high, success_distance_m=float(tolerance)),
        reward=data["reward"],
        success=data["success"],
        start_keyframe=keyframe,
        start_noise=float(noise),
        command_limits=tuple(limits),
        expert=ExpertSpec(**{k: float(v) for k, v in expert_raw.items()}),
        source=src,
    )
    compiled_task(definition)  # every MJCF-level check now, in one line, before anything runs
    return definition


# ---------------------------------------------------------------------------------- the compiled task
@dataclass(frozen=True)
class CompiledTask:
    """What the env, the expert and the reward need, resolved once against the compiled MJCF."""

    definition: TaskDefinition
    model: mujoco.MjModel
    observation_names: tuple[str, ...]
    action_names: tuple[str, ...]
    action_low: np.ndarray
    action_high: np.ndarray
    actuator_ids: np.ndarray  # [A] MuJoCo actuator ids, in action order
    action_qpos: np.ndarray  # [A] qpos address of each action's joint
    action_dof: np.ndarray  # [A] dof address of each action's joint
    joint_qpos: np.ndarray  # [J] qpos address of each task joint
    joint_dof: np.ndarray  # [J] dof address of each task joint
    start_qpos: np.ndarray  # [nq] the start pose (keyframe or qpos0)
    start_ctrl: np.ndarray  # [nu] the start controls (keyframe ctrl, else a hold of the start pose)
    site_id: int
    goal_mocap: int
    frame_skip: int
    # observation gathers: (observation column, source array name, index into it)
    gathers: tuple[tuple[int, str, int], ...]

    @property
    def dt(self) -> float:
        return self.frame_skip * float(self.model.opt.timestep)


def _actuator_kind(model: mujoco.MjModel, a: int) -> str:
    """What an actuator's control means: position / velocity setpoint or effort (force/torque)."""
    bias, prm = int(model.actuator_biastype[a]), model.actuator_biasprm[a]
    if bias == int(mujoco.mjtBias.mjBIAS_AFFINE) and prm[1] < 0:
        return "position"
    if bias == int(mujoco.mjtBias.mjBIAS_AFFINE) and prm[1] == 0 and prm[2] < 0:
        return "velocity"
    if bias == int(mujoco.mjtBias.mjBIAS_NONE):
        return "effort"
    return "other"


def _load_spec_with_goal(definition: TaskDefinition) -> mujoco.MjModel:
    src = definition.source
    try:
        spec = mujoco.MjSpec.from_file(definition.mjcf)
    except ValueError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{src}: mjcf {definition.mjcf} does not load in MuJoCo: {first}") from None
    center = [(lo + hi) / 2 for lo, hi in zip(definition.goal.low, definition.goal.high, strict=True)]
    body = spec.worldbody.add_body(name=GOAL_BODY, mocap=True, pos=center)
    body.add_geom(
        type=mujoco.mjtGeom.mjGEOM_SPHERE,
        size=[max(definition.goal.success_distance_m, 0.01), 0, 0],
        rgba=[0.9, 0.2, 0.2, 0.6],
        contype=0,
        conaffinity=0,
    )
    try:
        return spec.compile()
    except ValueError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{src}: mjcf {definition.mjcf} does not compile with the goal marker: {first}"
        ) from None


@functools.lru_cache(maxsize=16)
def compiled_task(definition: TaskDefinition) -> CompiledTask:
    """Check a definition against its MJCF and precompute addresses, limits and names (cached)."""
    src = definition.source or definition.name
    model = _load_spec_with_goal(definition)

    def joint_id(name: str, where: str) -> int:
        j = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if j < 0:
            known = [model.joint(k).name for k in range(model.njnt) if model.joint(k).name]
            raise ConfigError(
                f"{src}: {where} {name!r} is not a joint of {definition.mjcf} (joints: {known})"
            )
        if int(model.jnt_type[j]) not in _ONE_DOF:
            raise ConfigError(f"{src}: {where} {name!r} is not a hinge or slide joint")
        return j

    joint_ids = [joint_id(name, "joints entry") for name in definition.joints]
    # actuators: listed, else the one actuator on each task joint
    actuator_names = definition.actuators
    if not actuator_names:
        found = []
        for name, j in zip(definition.joints, joint_ids, strict=True):
            on = [
                a
                for a in range(model.nu)
                if model.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT and model.actuator_trnid[a, 0] == j
            ]
            if len(on) != 1:
                raise ConfigError(
                    f"{src}: joint {name!r} has {len(on)} actuators; list actuators: explicitly"
                )
            found.append(model.actuator(on[0]).name)
        actuator_names = tuple(found)
    actuator_ids, action_joints = [], []
    for name in actuator_names:
        a = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, name)
        if a < 0:
            known = [model.actuator(k).name for k in range(model.nu)]
            raise ConfigError(
                f"{src}: actuators entry {name!r} is not an actuator of the MJCF (actuators: {known})"
            )
        if model.actuator_trntype[a] != mujoco.mjtTrn.mjTRN_JOINT:
            raise ConfigError(
                f"{src}: actuator {name!r} does not drive a joint (tendon/site transmission); a task commands "
                "joint actuators only"
            )
        j = int(model.actuator_trnid[a, 0])
        if j not in joint_ids:
            raise ConfigError(
                f"{src}: actuator {name!r} drives joint {model.joint(j).name!r}, which is not in joints"
            )
        kind = _actuator_kind(model, a)
        if kind != definition.command:
            raise ConfigError(
                f"{src}: actuator {name!r} takes a {kind} command but the task says command: "
                f"{definition.command}; fix command: or list the right actuators"
            )
        actuator_ids.append(a)
        action_joints.append(j)
    action_names = tuple(f"{model.joint(j).name}.{definition.command}_cmd" for j in action_joints)
    # limits: ctrlrange, else command_limits, else (positions) the joint range
    overrides = {key: (lo, hi) for key, lo, hi in definition.command_limits}
    known_keys = {*definition.joints, *actuator_names}
    stray = sorted(set(overrides) - known_keys)
    if stray:
        raise ConfigError(f"{src}: command_limits names {stray}, which are not task joints or actuators")
    low, high = [], []
    for a, j, name in zip(actuator_ids, action_joints, actuator_names, strict=True):
        joint_name = model.joint(j).name
        given = overrides.get(name, overrides.get(joint_name))
        if given is not None:
            lo, hi = given
            if model.actuator_ctrllimited[a] and (
                lo < model.actuator_ctrlrange[a, 0] - 1e-12 or hi > model.actuator_ctrlrange[a, 1] + 1e-12
            ):
                raise ConfigError(
                    f"{src}: command_limits for {name!r} {[lo, hi]} exceed its ctrlrange "
                    f"{model.actuator_ctrlrange[a].tolist()}; limits may only tighten it"
                )
        elif model.actuator_ctrllimited[a]:
            lo, hi = (float(v) for v in model.actuator_ctrlrange[a])
        elif definition.command == "position" and model.jnt_limited[j]:
            lo, hi = (float(v) for v in model.jnt_range[j])
        else:
            raise ConfigError(
                f"{src}: actuator {name!r} has no ctrlrange and joint {joint_name!r} no range; give "
                f"command_limits: {{{joint_name}: [low, high]}}"
            )
        low.append(lo)
        high.append(hi)
    # observations: listed, else positions, velocities, goal
    observations = definition.observations or (
        *(f"{n}.position" for n in definition.joints),
        *(f"{n}.velocity" for n in definition.joints),
        *(f"goal.{f}" for f in GOAL_FIELDS),
    )
    gathers = []
    for col, name in enumerate(observations):
        head, _, tail = name.rpartition(".")
        if head == "goal" and tail in GOAL_FIELDS:
            gathers.append((col, "goal", GOAL_FIELDS.index(tail)))
            continue
        if tail not in OBSERVED_FIELDS or not head:
            raise ConfigError(
                f"{src}: observation {name!r} is not '<joint>.position|velocity|effort' or 'goal.x|y|z'"
            )
        j = joint_id(head, "observation of joint")
        source = {"position": "qpos", "velocity": "qvel", "effort": "qfrc_actuator"}[tail]
        index = int(model.jnt_qposadr[j]) if tail == "position" else int(model.jnt_dofadr[j])
        gathers.append((col, source, index))
    if [g for g in gathers if g[1] == "goal"] and len({g[2] for g in gathers if g[1] == "goal"}) != 3:
        raise ConfigError(f"{src}: observations must hold all of goal.x, goal.y, goal.z (or none)")
    site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, definition.goal.site)
    if site_id < 0:
        known = [model.site(k).name for k in range(model.nsite)]
        raise ConfigError(
            f"{src}: goal.site {definition.goal.site!r} is not a site of the MJCF (sites: {known})"
        )
    frame_skip = max(1, round(1.0 / (definition.control_rate_hz * model.opt.timestep)))
    if abs(frame_skip * model.opt.timestep * definition.control_rate_hz - 1.0) > 1e-6:
        raise ConfigError(
            f"{src}: control_rate_hz {definition.control_rate_hz:g} is not a whole number of MJCF timesteps "
            f"({model.opt.timestep:g} s); choose a rate whose period is a multiple of it"
        )
    start_qpos, start_ctrl = _start_pose(model, definition, src)
    return CompiledTask(
        definition=definition,
        model=model,
        observation_names=tuple(observations),
        action_names=action_names,
        action_low=np.array(low),
        action_high=np.array(high),
        actuator_ids=np.array(actuator_ids, dtype=np.intp),
        action_qpos=np.array([model.jnt_qposadr[j] for j in action_joints], dtype=np.intp),
        action_dof=np.array([model.jnt_dofadr[j] for j in action_joints], dtype=np.intp),
        joint_qpos=np.array([model.jnt_qposadr[j] for j in joint_ids], dtype=np.intp),
        joint_dof=np.array([model.jnt_dofadr[j] for j in joint_ids], dtype=np.intp),
        start_qpos=start_qpos,
        start_ctrl=start_ctrl,
        site_id=int(site_id),
        goal_mocap=int(model.body_mocapid[model.body(GOAL_BODY).id]),
        frame_skip=int(frame_skip),
        gathers=tuple(gathers),
    )


def _start_pose(model: mujoco.MjModel, definition: TaskDefinition, src: str) -> tuple[np.ndarray, np.ndarray]:
    """The start qpos and ctrl: the keyframe's (a keyframe without ctrl: position servos hold the pose)."""
    data = mujoco.MjData(model)
    has_ctrl = False
    if definition.start_keyframe is not None:
        key = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, definition.start_keyframe)
        if key < 0:
            known = [model.key(k).name for k in range(model.nkey)]
            raise ConfigError(
                f"{src}: start.keyframe {definition.start_keyframe!r} is not in the MJCF (keyframes: {known})"
            )
        mujoco.mj_resetDataKeyframe(model, data, key)
        has_ctrl = bool(np.any(model.key_ctrl[key] != 0))
    if not has_ctrl:
        for a in range(model.nu):
            if (
                _actuator_kind(model, a) == "position"
                and model.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT
            ):
                data.ctrl[a] = data.qpos[model.jnt_qposadr[model.actuator_trnid[a, 0]]]
    return data.qpos.copy(), data.ctrl.copy()


__all__ = [
    "TASK_FILE_SUFFIXES",
    "CompiledTask",
    "ExpertSpec",
    "GoalSpec",
    "TaskDefinition",
    "compiled_task",
    "definition_from_dict",
    "expand_path",
    "load_task_file",
    "looks_like_task_file",
]

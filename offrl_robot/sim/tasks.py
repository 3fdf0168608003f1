"""The task table and resolver: every task the project accepts, and what each stage needs to know about it.

Why a table and not `gym.make` everywhere: the trainer, the validation gate, dataset loading and
the CLI all need names, bounds, control rate and reference returns *without* building an env
(building one costs a MuJoCo compile); and one place maps user spellings (`ArmReach-v0`,
`offrl_robot/ArmReach-v0`, `Hopper-v5`) to gymnasium ids, so an unknown name fails the same
way everywhere.

Besides the built-in table, a task can be data: a task file (`config/tasks/NAME.yaml`, see
offrl_robot/sim/task_file.py), a task installed by a package (entry-point group
`offrl_robot.tasks`), or a shipped task file by its NAME. `resolve_task` is the one resolver;
`task_info` / `make_env` / the gate / collect / evaluation / the report's video renderer and
sim_node all go through it, so a task file path works wherever a task name does.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

from offrl_robot.errors import ConfigError
from offrl_robot.sim.task_file import (
    TASK_FILE_SUFFIXES,
    TaskDefinition,
    compiled_task,
    load_task_file,
    looks_like_task_file,
)

ARM_REACH_ID = "offrl_robot/ArmReach-v0"
# Mean return of ArmReach-v0 over 100 episodes (env seeds 0..99, policy seed 0), measured with
# `measure_arm_reach_references()` below: uniform random actions / noise-free scripted expert.
ARM_REACH_RANDOM_RETURN = -92.132
ARM_REACH_EXPERT_RETURN = -17.206


@dataclass(frozen=True)
class TaskInfo:
    """Static facts about a task.

    `ref_min_return` / `ref_max_return` define the normalised score
    100 * (return - min) / (max - min): D4RL's random/expert references for the locomotion
    tasks (measured on the v2 envs; v5 has the same dynamics and reward), our own measured
    random / scripted-expert mean returns for ArmReach, None where no reference exists.
    `is_arm_task`: the env reports `info["is_success"]`, so success rate is a metric.
    `termination`: the registered termination function (`offrl_robot.registry`) that says from
    an observation when the task ends, "" for a task that only ends by time (what model rollouts
    in MOPO use to stop where the real task would).
    """

    name: str
    env_id: str
    observation_names: tuple[str, ...]
    action_names: tuple[str, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_rate_hz: float
    max_episode_steps: int
    ref_min_return: float | None = None
    ref_max_return: float | None = None
    is_arm_task: bool = False
    reward: str = ""
    termination: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    definition: TaskDefinition | None = None  # the task file behind a task-file task

    def normalized_score(self, episode_return: float) -> float | None:
        """D4RL-style normalised score (0 = random, 100 = expert), or None without references."""
        if self.ref_min_return is None or self.ref_max_return is None:
            return None
        return 100.0 * (episode_return - self.ref_min_return) / (self.ref_max_return - self.ref_min_return)


def _generic(
    name: str,
    obs_dim: int,
    act_dim: int,
    bound: float,
    dt: float,
    episode_steps: int,
    refs: tuple[float, float] | None = None,
    termination: str = "",
) -> TaskInfo:
    return TaskInfo(
        name=name,
        env_id=name,
        observation_names=tuple(f"obs_{i}" for i in range(obs_dim)),
        action_names=tuple(f"act_{i}" for i in range(act_dim)),
        action_low=(-bound,) * act_dim,
        action_high=(bound,) * act_dim,
        control_rate_hz=1.0 / dt,
        max_episode_steps=episode_steps,
        ref_min_return=refs[0] if refs else None,
        ref_max_return=refs[1] if refs else None,
        is_arm_task=False,
        reward=f"gymnasium {name} reward",
        termination=termination,
    )


def _arm_reach() -> TaskInfo:
    from offrl_robot.sim import arm_reach

    model = arm_reach.load_model()
    return TaskInfo(
        name="ArmReach-v0",
        env_id=ARM_REACH_ID,
        observation_names=arm_reach.OBSERVATION_NAMES,
        action_names=arm_reach.ACTION_NAMES,
        action_low=tuple(float(v) for v in model.actuator_ctrlrange[:, 0]),
        action_high=tuple(float(v) for v in model.actuator_ctrlrange[:, 1]),
        control_rate_hz=arm_reach.CONTROL_RATE_HZ,
        max_episode_steps=arm_reach.EPISODE_STEPS,
        ref_min_return=ARM_REACH_RANDOM_RETURN,
        ref_max_return=ARM_REACH_EXPERT_RETURN,
        is_arm_task=True,
        reward="offrl_robot.sim.rewards:arm_reach_reward",
        extra={"success_distance_m": arm_reach.SUCCESS_DISTANCE_M},
    )


# D4RL reference returns (d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE).
_GYM_TASKS: dict[str, TaskInfo] = {
    "Hopper-v5": _generic("Hopper-v5", 11, 3, 1.0, 0.008, 1000, (-20.272305, 3234.3), "hopper"),
    "HalfCheetah-v5": _generic("HalfCheetah-v5", 17, 6, 1.0, 0.05, 1000, (-280.178953, 12135.0)),
    "Walker2d-v5": _generic("Walker2d-v5", 17, 6, 1.0, 0.008, 1000, (1.629008, 4592.3), "walker2d"),
    "Reacher-v5": _generic("Reacher-v5", 10, 2, 1.0, 0.02, 50),
    "Pusher-v5": _generic("Pusher-v5", 23, 7, 2.0, 0.05, 100),
}

_ALIASES = {"ArmReach-v0": "ArmReach-v0", ARM_REACH_ID: "ArmReach-v0", "ArmReach": "ArmReach-v0"}


def _builtin(task: str) -> str | None:
    """The table key of a built-in spelling (ArmReach, gymnasium tasks), or None."""
    if task in _ALIASES:
        return _ALIASES[task]
    if task in _GYM_TASKS:
        return task
    if task.startswith("gymnasium/") and task.split("/", 1)[1] in _GYM_TASKS:
        return task.split("/", 1)[1]
    return None


def shipped_task_files() -> dict[str, Path]:
    """Task files shipped with the package (config/tasks/NAME.yaml), by NAME."""
    from offrl_robot.paths import share_roots

    found: dict[str, Path] = {}
    for root in share_roots():
        folder = root / "config" / "tasks"
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix in TASK_FILE_SUFFIXES and path.is_file():
                    found.setdefault(path.stem, path)
    return found


def known_tasks() -> list[str]:
    """Every task name (built-in, shipped task file, installed entry point); any task file path works too."""
    from offrl_robot.registry import task_entry_points

    names = ["ArmReach-v0", *_GYM_TASKS, *shipped_task_files()]
    names += [name for name in task_entry_points() if name not in names]
    return names


def _unknown(task: str) -> ConfigError:
    return ConfigError(
        f"unknown task {task!r}; known tasks: {', '.join(known_tasks())}, or a task file path "
        "(config/tasks/NAME.yaml)"
    )


def resolve_task(task: str) -> tuple[str, TaskDefinition | None]:
    """(canonical name, definition) of any accepted spelling; the one resolver every stage uses.

    Accepted, in this order: a built-in name (`ArmReach-v0`, `offrl_robot/ArmReach-v0`,
    `Hopper-v5`, ...); a task file path (`*.yaml`, relative to the working directory; its
    canonical name is the absolute path, so a child process or a card finds it again); an
    installed task (entry-point group `offrl_robot.tasks`); a shipped task file by name
    (`vx300s_reach` = config/tasks/vx300s_reach.yaml). Unknown -> one-line ConfigError.
    """
    if not isinstance(task, str) or not task:
        raise ConfigError(f"task must be a non-empty string, got {task!r}")
    builtin = _builtin(task)
    if builtin is not None:
        return builtin, None
    if looks_like_task_file(task) or Path(task).is_file():
        path = Path(task).expanduser().resolve()
        return str(path), _task_file(str(path))
    from offrl_robot.registry import task_entry_points

    if task in task_entry_points():
        return task, _entry_point_task(task)
    shipped = shipped_task_files()
    if task in shipped:
        return task, _task_file(str(shipped[task]))
    raise _unknown(task)


def _task_file(path: str) -> TaskDefinition:
    """A task file, parsed and checked once per content (the cache key includes mtime and size)."""
    try:
        stat = Path(path).stat()
    except OSError:
        raise ConfigError(f"task file {path} not found; pass an existing config/tasks/NAME.yaml") from None
    return _cached_task_file(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _cached_task_file(path: str, mtime_ns: int, size: int) -> TaskDefinition:
    return load_task_file(path)


@functools.lru_cache(maxsize=32)
def _entry_point_task(name: str) -> TaskDefinition:
    from offrl_robot.registry import load_task_entry_point

    value = load_task_entry_point(name)
    if isinstance(value, TaskDefinition):
        return value
    if isinstance(value, (str, os.PathLike)):
        return _task_file(str(Path(value).resolve()))
    raise ConfigError(
        f"task {name!r} (entry-point group offrl_robot.tasks) gave {type(value).__name__}; it must name a "
        "TaskDefinition, a task file path, or a function returning one"
    )


def portable_task_name(task: str) -> str:
    """`task` as it should be recorded (dataset, card): a task file path made absolute, any other
    spelling unchanged (no MJCF is loaded)."""
    if isinstance(task, str) and looks_like_task_file(task):
        return str(Path(task).expanduser().resolve())
    return task


def canonical_task(task: str) -> str:
    """Map a user spelling to its canonical name; unknown names -> one-line ConfigError listing the known ones."""
    return resolve_task(task)[0]


def task_definition(task: str) -> TaskDefinition | None:
    """The task file behind `task` (None for the built-in tasks)."""
    return resolve_task(task)[1]


def _definition_info(name: str, definition: TaskDefinition) -> TaskInfo:
    compiled = compiled_task(definition)
    return TaskInfo(
        name=name,
        env_id=name,
        observation_names=compiled.observation_names,
        action_names=compiled.action_names,
        action_low=tuple(float(v) for v in compiled.action_low),
        action_high=tuple(float(v) for v in compiled.action_high),
        control_rate_hz=1.0 / compiled.dt,
        max_episode_steps=definition.episode_steps,
        is_arm_task=True,
        reward=definition.reward,
        extra={
            "success": definition.success,
            "success_distance_m": definition.goal.success_distance_m,
            "command": definition.command,
            "mjcf": definition.mjcf,
        },
        definition=definition,
    )


def task_info(task: str) -> TaskInfo:
    """Static facts (names, bounds, rate, references) about a task, without building its env."""
    name, definition = resolve_task(task)
    if definition is not None:
        return _definition_info(name, definition)
    return _arm_reach() if name == "ArmReach-v0" else _GYM_TASKS[name]


def register_arm_reach() -> None:
    """Register `offrl_robot/ArmReach-v0` with gymnasium (idempotent)."""
    from offrl_robot.sim import arm_reach

    if ARM_REACH_ID not in gym.registry:
        gym.register(
            id=ARM_REACH_ID,
            entry_point="offrl_robot.sim.arm_reach:ArmReachEnv",
            max_episode_steps=arm_reach.EPISODE_STEPS,
        )


def make_env(task: str, **kwargs: Any) -> gym.Env:
    """Build a task's env by any accepted name (`ArmReach-v0`, `Hopper-v5`, a task file, ...).

    Returns the gymnasium-wrapped env (TimeLimit etc.) for the built-in tasks and the bare
    `MjcfReachEnv` for a task file (it truncates at its own episode_steps); our extra attributes
    (`set_goal`, `joint_names`, ...) live on `env.unwrapped` either way.
    """
    info = task_info(task)
    if info.definition is not None:
        from offrl_robot.sim.mjcf_reach import MjcfReachEnv

        return MjcfReachEnv(info.definition, **kwargs)
    if info.env_id == ARM_REACH_ID:
        register_arm_reach()
    return gym.make(info.env_id, **kwargs)


def measure_arm_reach_references(episodes: int = 100) -> tuple[float, float]:
    """Mean returns of the random and the noise-free expert policy (how the constants above were made)."""
    import numpy as np

    from offrl_robot.sim.arm_reach import ArmReachEnv
    from offrl_robot.sim.experts import ArmReachExpert, RandomPolicy

    env = ArmReachEnv()
    means = []
    for policy in (RandomPolicy(env.action_low, env.action_high, seed=0), ArmReachExpert()):
        returns = []
        for episode in range(episodes):
            obs, _ = env.reset(seed=episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy(obs))
                total += reward
                done = terminated or truncated
            returns.append(total)
        means.append(float(np.mean(returns)))
    return means[0], means[1]

"""The task table: every task name the project accepts, and what each stage needs to know about it.

Why a table and not `gym.make` everywhere: the trainer, the validation gate, dataset loading and
the CLI all need names, bounds, control rate and reference returns *without* building an env
(building one costs a MuJoCo compile); and one place maps user spellings (`ArmReach-v0`,
`offrl_robot/ArmReach-v0`, `Hopper-v5`) to gymnasium ids, so an unknown name fails the same
way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from offrl_robot.errors import ConfigError

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


def known_tasks() -> list[str]:
    return ["ArmReach-v0", *_GYM_TASKS]


def canonical_task(task: str) -> str:
    """Map a user spelling to the table key; unknown names -> one-line ConfigError listing the known ones."""
    if task in _ALIASES:
        return _ALIASES[task]
    if task in _GYM_TASKS:
        return task
    if task.startswith("gymnasium/") and task.split("/", 1)[1] in _GYM_TASKS:
        return task.split("/", 1)[1]
    raise ConfigError(f"unknown task {task!r}; known tasks: {', '.join(known_tasks())}")


def task_info(task: str) -> TaskInfo:
    """Static facts (names, bounds, rate, references) about a task, without building its env."""
    name = canonical_task(task)
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
    """Build a task's env by any accepted name (`ArmReach-v0`, `offrl_robot/ArmReach-v0`, `Hopper-v5`, ...).

    Returns the gymnasium-wrapped env (TimeLimit etc.); our extra attributes (`set_goal`,
    `joint_names`, ...) live on `env.unwrapped`.
    """
    info = task_info(task)
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

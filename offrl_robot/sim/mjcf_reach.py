"""The generic reaching env built from a task file, and its data-only reward and success functions.

`MjcfReachEnv(definition)` is a gymnasium env on any MJCF arm described by a `TaskDefinition`
(offrl_robot/sim/task_file.py): reset puts the arm at the start pose (+ uniform noise on the task
joints) and draws a goal in the task's box; each step holds the action on the task's actuators
for one control period (other actuators keep their start controls, e.g. a gripper stays where
its keyframe put it). The goal is a mocap marker the task loader adds to the model, so videos
show it and `mocap_pos` replays it.

Reward and success are the task's *named* functions (registry: `reach` by default), called on
the transition exactly as rosbag ingest calls them on a log: `fn(obs, act, next_obs, task=...)`.
So the env's reward and the reward recomputed from a recording of the same motion are one code
path, not two that could drift. `reach` needs forward kinematics of the site from the observed
joint positions: `ReachKinematics` (vectorised, from the same compiled model the env steps).

It exposes what sim_node and the validation gate use on ArmReach too: `joint_names`,
`observation_names`, `action_names`, `action_low/high`, `control_rate_hz`, `model`/`data`,
`set_goal`, `goal_position`, `ee_position`, `distance`, `observation`, `hold_action`.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from offrl_robot.errors import ConfigError
from offrl_robot.registry import resolve_reward, resolve_success
from offrl_robot.sim.task_file import CompiledTask, TaskDefinition, compiled_task


class ReachKinematics:
    """Site position [N, 3] from observation rows [N, O]: the site's kinematic chain, batched.

    Every joint between the world and the site must be observed as `<joint>.position` (a log
    without them cannot say where the site was). Hinge-only chains use the batched Rodrigues
    chain of ArmKinematics (exact to float rounding); other chains, and calls with a few rows (the
    env's one per step: the batched chain costs ~0.5 ms of numpy overhead per call), use MuJoCo's
    own kinematics row by row.
    """

    BATCHED_FROM = 16  # rows; fewer go through mj_kinematics one by one

    def __init__(self, task: CompiledTask) -> None:
        from offrl_robot.sim.arm_kinematics import ArmKinematics

        definition, model = task.definition, task.model
        body = int(model.site_bodyid[task.site_id])
        chain = []
        while body != 0:
            chain.extend(j for j in range(model.njnt) if model.jnt_bodyid[j] == body)
            body = int(model.body_parentid[body])
        self.columns: list[tuple[int, int]] = []  # (observation column, qpos address)
        for j in chain:
            if int(model.jnt_type[j]) not in (
                int(mujoco.mjtJoint.mjJNT_HINGE),
                int(mujoco.mjtJoint.mjJNT_SLIDE),
            ):
                raise ConfigError(
                    f"{definition.source}: the goal site {definition.goal.site!r} moves with a free/ball joint; "
                    "the reach reward needs a chain of hinge/slide joints"
                )
            name = f"{model.joint(j).name}.position"
            if name not in task.observation_names:
                raise ConfigError(
                    f"{definition.source}: the reach reward needs {name!r} in observations (joint "
                    f"{model.joint(j).name!r} moves the goal site {definition.goal.site!r})"
                )
            self.columns.append((task.observation_names.index(name), int(model.jnt_qposadr[j])))
        self.goal_columns = [task.observation_names.index(f"goal.{f}") for f in ("x", "y", "z")]
        self.qpos0 = task.start_qpos.copy()
        self.model = model
        self.site_id = task.site_id
        self._site = model.site(task.site_id).name
        self._data = mujoco.MjData(model)
        try:
            self._fast: ArmKinematics | None = ArmKinematics(model, self._site)
        except ValueError:
            self._fast = None

    def site_position(self, obs: np.ndarray) -> np.ndarray:
        obs = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        qpos = np.tile(self.qpos0, (len(obs), 1))
        for col, adr in self.columns:
            qpos[:, adr] = obs[:, col]
        if self._fast is not None and len(obs) > self.BATCHED_FROM:
            return self._fast.site_position(qpos)
        out = np.empty((len(obs), 3))
        for row, q in enumerate(qpos):
            self._data.qpos[:] = q
            mujoco.mj_kinematics(self.model, self._data)
            out[row] = self._data.site_xpos[self.site_id]
        return out

    def distance(self, obs: np.ndarray) -> np.ndarray:
        """Site-to-goal distance (m) of each row, from the observation alone."""
        obs = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        return np.linalg.norm(self.site_position(obs) - obs[:, self.goal_columns], axis=-1)


@functools.lru_cache(maxsize=16)
def reach_kinematics(definition: TaskDefinition) -> ReachKinematics:
    """One per task and process (building it compiles the MJCF)."""
    return ReachKinematics(compiled_task(definition))


def reach_reward(
    obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, *, task: TaskDefinition
) -> np.ndarray:
    """-(distance from the task's goal site to the goal after the step), in m, per row [N].

    No action cost: for position commands the action is a joint target, whose size says nothing
    about effort; the SafetyFilter and the gate bound how the arm moves.
    """
    return (-reach_kinematics(task).distance(next_obs)).astype(np.float32)


def reach_success(
    obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray, *, task: TaskDefinition
) -> np.ndarray:
    """Whether the goal site is within `goal.success_distance_m` of the goal after the step, per row [N]."""
    return reach_kinematics(task).distance(next_obs) < task.goal.success_distance_m


class MjcfReachEnv(gym.Env):
    """Gymnasium env for a task file's reaching task (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 50}
    render_camera = -1  # the model's free camera: Menagerie scenes set it up (statistic, global azimuth)

    def __init__(
        self,
        definition: TaskDefinition,
        episode_steps: int | None = -1,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        self.task = compiled_task(definition)
        self.definition = definition
        self.model = copy.deepcopy(self.task.model)  # per env: the gate may randomise its masses
        self.data = mujoco.MjData(self.model)
        self.episode_steps = definition.episode_steps if episode_steps == -1 else episode_steps
        self.frame_skip = self.task.frame_skip
        self.dt = self.task.dt
        self.control_rate_hz = 1.0 / self.dt
        self.metadata = {**self.metadata, "render_fps": round(self.control_rate_hz)}
        self.render_mode = render_mode
        self._size = (width, height)
        self._renderer: mujoco.Renderer | None = None
        self.joint_names = tuple(definition.joints)
        self.observation_names = self.task.observation_names
        self.action_names = self.task.action_names
        self.action_low = self.task.action_low.copy()
        self.action_high = self.task.action_high.copy()
        jnt = [self.model.joint(name).id for name in definition.joints]
        self.joint_limits = self.model.jnt_range[jnt, 0].copy(), self.model.jnt_range[jnt, 1].copy()
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(len(self.observation_names),), dtype=np.float64
        )
        self.action_space = spaces.Box(self.action_low, self.action_high, dtype=np.float64)
        self._reward = resolve_reward(definition.reward, task=definition)
        self._success = resolve_success(definition.success, task=definition)
        self._limited = self.model.jnt_limited[jnt].astype(bool)
        self._steps = 0

    # ------------------------------------------------------------------ task state
    def set_goal(self, xyz: np.ndarray | list[float]) -> None:
        goal = np.asarray(xyz, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(goal)):
            raise ValueError(f"goal must be finite, got {goal}")
        self.data.mocap_pos[self.task.goal_mocap] = goal

    def goal_position(self) -> np.ndarray:
        return self.data.mocap_pos[self.task.goal_mocap].copy()

    def ee_position(self) -> np.ndarray:
        return self.data.site_xpos[self.task.site_id].copy()

    def distance(self) -> float:
        return float(np.linalg.norm(self.ee_position() - self.goal_position()))

    def observation(self) -> np.ndarray:
        out = np.empty(len(self.observation_names))
        goal = self.data.mocap_pos[self.task.goal_mocap]
        arrays = {"qpos": self.data.qpos, "qvel": self.data.qvel, "qfrc_actuator": self.data.qfrc_actuator}
        for col, source, index in self.task.gathers:
            out[col] = goal[index] if source == "goal" else arrays[source][index]
        return out

    def sample_goal(self) -> np.ndarray:
        return self.np_random.uniform(self.definition.goal.low, self.definition.goal.high)

    def hold_action(self) -> np.ndarray:
        """The action that keeps the arm where it is: the measured positions (position commands), else 0."""
        if self.definition.command == "position":
            return np.clip(self.data.qpos[self.task.action_qpos], self.action_low, self.action_high)
        return np.clip(np.zeros(len(self.action_names)), self.action_low, self.action_high)

    def apply_control(self, action: np.ndarray) -> None:
        """Hold `action` (clipped to the limits) on the task's actuators for one control period."""
        command = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), self.action_low, self.action_high)
        if command.shape != self.action_low.shape or not np.all(np.isfinite(command)):
            raise ValueError(f"action must be {self.action_low.size} finite values, got {action!r}")
        self.data.ctrl[self.task.actuator_ids] = command
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        mujoco.mj_forward(self.model, self.data)  # site_xpos and observation of the same state

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = self.task.start_qpos
        self.data.ctrl[:] = self.task.start_ctrl
        noise = self.definition.start_noise
        if noise > 0:
            adr = self.task.joint_qpos
            q = self.data.qpos[adr] + self.np_random.uniform(-noise, noise, size=adr.size)
            low, high = self.joint_limits
            self.data.qpos[adr] = np.where(self._limited, np.clip(q, low, high), q)
        mujoco.mj_forward(self.model, self.data)
        if self.definition.command == "position":  # the servos hold the (noisy) start pose
            self.data.ctrl[self.task.actuator_ids] = self.hold_action()
        self.set_goal(self.sample_goal())
        mujoco.mj_forward(self.model, self.data)
        self._steps = 0
        return self.observation(), self._info(None)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs = self.observation()
        applied = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), self.action_low, self.action_high)
        self.apply_control(applied)
        self._steps += 1
        next_obs = self.observation()
        reward = float(self._reward(obs[None], applied[None], next_obs[None])[0])
        info = self._info((obs, applied, next_obs))
        truncated = self.episode_steps is not None and self._steps >= self.episode_steps
        return next_obs, reward, False, truncated, info

    def _info(self, transition: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> dict[str, Any]:
        if transition is None:
            obs = self.observation()
            transition = (obs, self.hold_action(), obs)
        obs, act, next_obs = transition
        success = bool(np.asarray(self._success(obs[None], act[None], next_obs[None])).reshape(-1)[0])
        return {"distance": self.distance(), "is_success": success}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            width, height = self._size
            self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, width)
            self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, height)
            self._renderer = mujoco.Renderer(self.model, height=height, width=width)
        self._renderer.update_scene(self.data, camera=self.render_camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


__all__ = ["MjcfReachEnv", "ReachKinematics", "reach_kinematics", "reach_reward", "reach_success"]

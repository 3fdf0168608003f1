"""`offrl_robot/ArmReach-v0`: our own 6-DoF arm reaching random goals, commanded by joint velocity.

Why this task: it is the smallest robot task that has what a real arm deployment has — named
joints with limits, a velocity command interface (what ros2_control's velocity forward
controller takes), gravity compensation so that a zero command holds the arm still (a
physically safe action), a fixed control rate, and a success criterion in metres.

Observation (15, float64): joint positions (rad), joint velocities (rad/s), goal xyz (m, base
frame). Action (6): joint velocity commands (rad/s), clipped to the actuator ctrlrange.
Reward: `offrl_robot.sim.rewards.arm_reach_reward` — computable from logged data alone.
Episodes truncate after `episode_steps` ticks (no termination); an episode is a success when
the end effector is within 2 cm of the goal at its last tick.
"""

from __future__ import annotations

from typing import Any, ClassVar

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

from offrl_robot.sim.arm_kinematics import EE_SITE, ArmKinematics, default_model_path, load_model
from offrl_robot.sim.rewards import arm_reach_reward_from_distance

JOINT_NAMES: tuple[str, ...] = tuple(f"joint_{i}" for i in range(1, 7))
OBSERVATION_NAMES: tuple[str, ...] = (
    *(f"{j}.position" for j in JOINT_NAMES),
    *(f"{j}.velocity" for j in JOINT_NAMES),
    "goal.x",
    "goal.y",
    "goal.z",
)
ACTION_NAMES: tuple[str, ...] = tuple(f"{j}.velocity_cmd" for j in JOINT_NAMES)
CONTROL_RATE_HZ = 50.0
EPISODE_STEPS = 150  # 3 s at 50 Hz
SUCCESS_DISTANCE_M = 0.02
GOAL_BODY = "goal"

# Start posture (rad): elbow bent, tool pointing forward-down, well inside every joint range.
HOME_QPOS = np.array([0.0, 0.5, 1.2, 0.0, 0.9, 0.0])
INIT_QPOS_NOISE = 0.1  # uniform +- rad around HOME_QPOS at reset
# Goal region (m): a cylindrical shell around the base, checked against the arm's reach
# (0.72 m from the shoulder, fully stretched) with margin, so every goal is reachable.
GOAL_RADIUS_RANGE = (0.25, 0.55)
GOAL_AZIMUTH_RANGE = (-2.2, 2.2)
GOAL_HEIGHT_RANGE = (0.08, 0.55)
SHOULDER_XYZ = np.array([0.0, 0.0, 0.16])
GOAL_SHOULDER_DISTANCE_RANGE = (0.2, 0.6)


class ArmReachEnv(MujocoEnv):
    """Gymnasium env for the arm6 reaching task. See the module docstring for the spaces.

    Besides the gymnasium API it exposes what the sim node and the validation gate need:
    `joint_names`, `observation_names`, `action_names`, `action_low/high`, `control_rate_hz`,
    `joint_limits`, `model`/`data`, `set_goal(xyz)`, `apply_control(ctrl)`, `ee_position()`,
    `goal_position()`, `distance()` and `observation()`.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"],
        "render_fps": 50,
    }

    def __init__(
        self,
        model_path: str | None = None,
        episode_steps: int | None = EPISODE_STEPS,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ) -> None:
        path = str(model_path or default_model_path())
        model = load_model(path)
        frame_skip = round(1.0 / (CONTROL_RATE_HZ * model.opt.timestep))
        obs_space = spaces.Box(-np.inf, np.inf, shape=(len(OBSERVATION_NAMES),), dtype=np.float64)
        super().__init__(
            path,
            frame_skip,
            observation_space=obs_space,
            render_mode=render_mode,
            width=width,
            height=height,
            camera_name="side" if render_mode else None,
        )
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.dt)}
        self.episode_steps = episode_steps
        self.joint_names: tuple[str, ...] = JOINT_NAMES
        self.observation_names: tuple[str, ...] = OBSERVATION_NAMES
        self.action_names: tuple[str, ...] = ACTION_NAMES
        self.action_low = self.model.actuator_ctrlrange[:, 0].copy()
        self.action_high = self.model.actuator_ctrlrange[:, 1].copy()
        self.control_rate_hz = 1.0 / self.dt
        self.joint_limits = self.model.jnt_range[:, 0].copy(), self.model.jnt_range[:, 1].copy()
        self.kinematics = ArmKinematics(self.model)
        self._ee_site = self.model.site(EE_SITE).id
        self._goal_mocap = int(self.model.body_mocapid[self.model.body(GOAL_BODY).id])
        self._steps = 0

    # ------------------------------------------------------------------ task state
    def set_goal(self, xyz: np.ndarray | list[float]) -> None:
        """Move the goal marker (m, base frame); the next observation carries it."""
        goal = np.asarray(xyz, dtype=np.float64).reshape(3)
        if not np.all(np.isfinite(goal)):
            raise ValueError(f"goal must be finite, got {goal}")
        self.data.mocap_pos[self._goal_mocap] = goal

    def goal_position(self) -> np.ndarray:
        return self.data.mocap_pos[self._goal_mocap].copy()

    def ee_position(self) -> np.ndarray:
        return self.data.site_xpos[self._ee_site].copy()

    def distance(self) -> float:
        return float(np.linalg.norm(self.ee_position() - self.goal_position()))

    def observation(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel, self.goal_position()]).astype(np.float64)

    def sample_goal(self) -> np.ndarray:
        """A reachable goal from the env's seeded RNG (rejection sampling in a cylindrical shell)."""
        rng = self.np_random
        while True:
            radius = rng.uniform(*GOAL_RADIUS_RANGE)
            azimuth = rng.uniform(*GOAL_AZIMUTH_RANGE)
            height = rng.uniform(*GOAL_HEIGHT_RANGE)
            goal = np.array([radius * np.cos(azimuth), radius * np.sin(azimuth), height])
            reach = np.linalg.norm(goal - SHOULDER_XYZ)
            if GOAL_SHOULDER_DISTANCE_RANGE[0] <= reach <= GOAL_SHOULDER_DISTANCE_RANGE[1]:
                return goal

    def apply_control(self, ctrl: np.ndarray) -> None:
        """Hold `ctrl` (rad/s, clipped to the actuator limits) for one control period."""
        command = np.clip(np.asarray(ctrl, dtype=np.float64).reshape(-1), self.action_low, self.action_high)
        if command.shape != (self.model.nu,) or not np.all(np.isfinite(command)):
            raise ValueError(f"control must be {self.model.nu} finite values, got {ctrl!r}")
        self.do_simulation(command, self.frame_skip)
        # mj_step leaves positions integrated but kinematics (site_xpos) from before the last
        # substep; recompute so distance, reward and observation describe the same state.
        mujoco.mj_forward(self.model, self.data)

    # ------------------------------------------------------------------ gymnasium API
    def reset_model(self) -> np.ndarray:
        noise = self.np_random.uniform(-INIT_QPOS_NOISE, INIT_QPOS_NOISE, size=self.model.nq)
        self.set_state(HOME_QPOS + noise, np.zeros(self.model.nv))
        self.set_goal(self.sample_goal())
        mujoco.mj_forward(self.model, self.data)
        self._steps = 0
        return self.observation()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        applied = np.clip(action, self.action_low, self.action_high)
        self.apply_control(applied)
        self._steps += 1
        obs = self.observation()
        distance = self.distance()
        reward = float(arm_reach_reward_from_distance(np.array([distance]), applied[None])[0])
        truncated = self.episode_steps is not None and self._steps >= self.episode_steps
        info = {"distance": distance, "is_success": bool(distance < SUCCESS_DISTANCE_M)}
        if self.render_mode == "human":
            self.render()
        return obs, reward, False, truncated, info

    def _get_reset_info(self) -> dict[str, Any]:
        distance = self.distance()
        return {"distance": distance, "is_success": bool(distance < SUCCESS_DISTANCE_M)}

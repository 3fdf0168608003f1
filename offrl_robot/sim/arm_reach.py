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

import functools
from pathlib import Path
from typing import Any, ClassVar

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

from offrl_robot.paths import share_path
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
EE_SITE = "ee"
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


def default_model_path() -> Path:
    """The scene MJCF: in the source tree (`sim/arm6`) or installed (`share/offrl_robot/sim/arm6`)."""
    return share_path("sim", "arm6", "scene.xml")


def _quat_to_mat(quat: np.ndarray) -> np.ndarray:
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, np.asarray(quat, dtype=np.float64))
    return mat.reshape(3, 3)


class ArmKinematics:
    """Vectorised forward kinematics of the end-effector site, read from the MjModel.

    Why not call MuJoCo per row: reward recomputation runs over whole datasets (10^5-10^6 rows);
    a batched numpy chain is exact to float rounding and orders of magnitude faster than a Python
    loop over `mj_kinematics`. The chain constants (body offsets, joint axes, site offset) come
    from the same compiled model the simulator uses, so the two cannot drift apart.
    """

    def __init__(self, model: mujoco.MjModel, site: str = EE_SITE) -> None:
        site_id = model.site(site).id
        body = int(model.site_bodyid[site_id])
        chain: list[int] = []
        while body != 0:
            chain.append(body)
            body = int(model.body_parentid[body])
        chain.reverse()
        self.links: list[tuple[np.ndarray, np.ndarray, int | None, np.ndarray, np.ndarray]] = []
        for b in chain:
            joints = [j for j in range(model.njnt) if model.jnt_bodyid[j] == b]
            if len(joints) > 1 or any(model.jnt_type[j] != mujoco.mjtJoint.mjJNT_HINGE for j in joints):
                raise ValueError(f"body {model.body(b).name!r}: only one hinge joint per body is supported")
            qadr = int(model.jnt_qposadr[joints[0]]) if joints else None
            axis = model.jnt_axis[joints[0]].copy() if joints else np.zeros(3)
            anchor = model.jnt_pos[joints[0]].copy() if joints else np.zeros(3)
            self.links.append(
                (model.body_pos[b].copy(), _quat_to_mat(model.body_quat[b]), qadr, axis, anchor)
            )
        self.site_pos = model.site_pos[site_id].copy()

    def site_position(self, qpos: np.ndarray) -> np.ndarray:
        """EE position [N, 3] (world frame, m) for joint positions [N, nq] (or [nq] -> [3]).

        A hinge about unit axis k is R(q) = I + sin(q) K + (1 - cos(q)) K^2 (Rodrigues), so
        rot @ R(q) = rot + sin(q) (rot @ K) + (1 - cos(q)) (rot @ K^2): two products with a
        CONSTANT 3x3 (one GEMM over all rows each) instead of N stacked 3x3 products, which numpy
        runs one tiny matrix at a time. Why it matters: MPC evaluates this reward on every
        candidate x horizon row of every planning tick (BENCHMARKS.md "MPC latency")."""
        q = np.asarray(qpos, dtype=np.float64)
        single = q.ndim == 1
        q = q.reshape(-1, q.shape[-1])
        n = q.shape[0]
        # rows of every rotation stacked: rot [N * 3, 3], so "rot @ constant" is one GEMM
        rot = np.tile(np.eye(3), (n, 1))
        pos = np.zeros((n, 3))
        for body_pos, body_rot, qadr, axis, anchor in self.links:
            pos = pos + (rot @ body_pos).reshape(n, 3)
            rot = rot @ body_rot
            if qadr is not None:
                k = _skew(axis / np.linalg.norm(axis))
                k2 = k @ k
                s = np.sin(q[:, qadr])
                c1 = 1.0 - np.cos(q[:, qadr])
                # rotation about an axis through `anchor` (body frame): p -> anchor + R (p - anchor),
                # i.e. a shift anchor - R anchor = -(sin K + (1 - cos) K^2) anchor, and
                # rot @ shift = -(sin (rot @ K anchor) + (1 - cos) (rot @ K^2 anchor))
                pos = pos - s[:, None] * (rot @ (k @ anchor)).reshape(n, 3)
                pos = pos - c1[:, None] * (rot @ (k2 @ anchor)).reshape(n, 3)
                s3, c3 = np.repeat(s, 3)[:, None], np.repeat(c1, 3)[:, None]
                rot = rot + s3 * (rot @ k) + c3 * (rot @ k2)
        out = pos + (rot @ self.site_pos).reshape(n, 3)
        return out[0] if single else out


def _skew(axis: np.ndarray) -> np.ndarray:
    """The cross-product matrix K of a unit axis (K v = axis x v)."""
    x, y, z = axis
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


@functools.lru_cache(maxsize=4)
def load_model(path: str | None = None) -> mujoco.MjModel:
    """Compiled arm model (cached: experts and reward functions share one per process)."""
    return mujoco.MjModel.from_xml_path(str(path or default_model_path()))


@functools.lru_cache(maxsize=1)
def default_kinematics() -> ArmKinematics:
    """EE kinematics of the default arm6 model (one per process: building it parses the MJCF)."""
    return ArmKinematics(load_model())


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

"""Scripted policies for dataset collection: the ArmReach expert, a random policy, and noise.

The expert is a damped-least-squares (DLS) Jacobian velocity controller: a Cartesian P-law
toward the goal (speed-capped), mapped to joint velocities through J^T (J J^T + lambda^2 I)^-1,
plus a null-space pull toward the home posture that keeps the redundant wrist away from its
limits, then scaled uniformly into the velocity limits (uniform scaling keeps the Cartesian
direction). Why DLS: it stays well-behaved near singularities where a pseudo-inverse explodes.

It is a pure function of the observation (joint positions + goal), computed on its own
MjData, so it works on any ArmReach observation — from the env, a bag, or a dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mujoco
import numpy as np

from offrl_robot.sim.arm_reach import EE_SITE, HOME_QPOS, load_model

Policy = Callable[[np.ndarray], np.ndarray]


class ArmReachExpert:
    """Noise-free scripted expert for ArmReach: `expert(obs[15]) -> joint velocity command[6]`."""

    def __init__(
        self,
        gain: float = 10.0,
        max_speed: float = 0.6,
        damping: float = 0.05,
        posture_gain: float = 0.5,
        model_path: str | None = None,
    ) -> None:
        # 1/s: Cartesian error -> EE velocity. Stiff on purpose: a policy learned from this expert
        # stops where its small command bias b balances gain * error, so the offset shrinks as
        # b / gain (BC on equal data: 37 % of episodes within 2 cm at gain 4, 63 % at gain 10).
        self.gain = gain
        self.max_speed = max_speed  # m/s: cap on the commanded EE speed
        self.damping = damping  # m/s-scale DLS damping (lambda)
        self.posture_gain = posture_gain  # 1/s: null-space pull toward HOME_QPOS
        self.model = load_model(model_path)
        self.data = mujoco.MjData(self.model)
        self._site = self.model.site(EE_SITE).id
        self._jacp = np.zeros((3, self.model.nv))
        self.action_low = self.model.actuator_ctrlrange[:, 0].copy()
        self.action_high = self.model.actuator_ctrlrange[:, 1].copy()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64).reshape(-1)
        nq = self.model.nq
        qpos, goal = obs[:nq], obs[-3:]
        self.data.qpos[:] = qpos
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_jacSite(self.model, self.data, self._jacp, None, self._site)
        error = goal - self.data.site_xpos[self._site]
        velocity = self.gain * error
        speed = float(np.linalg.norm(velocity))
        if speed > self.max_speed:
            velocity *= self.max_speed / speed
        jac = self._jacp
        jjt = jac @ jac.T + (self.damping**2) * np.eye(3)
        dq = jac.T @ np.linalg.solve(jjt, velocity)
        # null-space posture term: project onto the space that does not move the EE
        pinv = jac.T @ np.linalg.solve(jjt, np.eye(3))
        null = np.eye(nq) - pinv @ jac
        dq += null @ (self.posture_gain * (HOME_QPOS - qpos))
        return self._scale_into_limits(dq)

    def _scale_into_limits(self, dq: np.ndarray) -> np.ndarray:
        """Shrink the whole vector until every joint is within its limit (keeps its direction)."""
        ratio = np.max(np.where(dq >= 0, dq / self.action_high, dq / self.action_low))
        if ratio > 1.0:
            dq = dq / ratio
        return np.clip(dq, self.action_low, self.action_high)


class RandomPolicy:
    """Uniform actions within the bounds, from its own seeded RNG."""

    def __init__(self, low: np.ndarray, high: np.ndarray, seed: int) -> None:
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(self.low, self.high)


class GaussianNoise:
    """Adds N(0, (sigma * (high - low))^2) per joint and clips to the bounds.

    `sigma` is a fraction of each joint's full action range, so one number means the same
    thing for every joint: 0 = the policy as is, 0.1 = 10 % of the range as std ("medium").
    """

    def __init__(self, policy: Policy, sigma: float, low: np.ndarray, high: np.ndarray, seed: int) -> None:
        if not (np.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"noise sigma must be finite and >= 0, got {sigma}")
        self.policy, self.sigma = policy, float(sigma)
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = np.asarray(self.policy(obs), dtype=np.float64)
        if self.sigma > 0:
            action = action + self.rng.normal(0.0, self.sigma * (self.high - self.low))
        return np.clip(action, self.low, self.high)


class ReachExpert:
    """Scripted expert for a task file's reaching task: `expert(obs) -> command` of the task's kind.

    The same damped-least-squares law as ArmReachExpert, on the task's goal site and joints: a
    speed-capped Cartesian P-law toward the goal, J^T (J J^T + lambda^2 I)^-1, a null-space pull
    toward the start pose, then uniform scaling into `max_joint_speed` (rate limit; keeps the
    Cartesian direction). That joint velocity dq is then emitted as the task's command:

    - velocity: dq itself (clipped to the limits);
    - position: the target a position servo (force = kp (target - q) - kv qdot - damping qdot)
      must be given to move at dq while holding the arm up: q + tau_bias / kp + (kv + damping) / kp * dq,
      tau_bias being gravity (and passive) forces at q from the model. Without the bias term a
      servo sags (2 cm on the ViperX at its home pose) and a stateless law never removes it.

    A pure function of the observation (by name: `<joint>.position`, `goal.*`), on its own
    MjData, so it runs on observations from the env, a log, or ROS messages.
    """

    def __init__(self, definition: Any) -> None:
        from offrl_robot.errors import ConfigError
        from offrl_robot.sim.task_file import compiled_task

        task = compiled_task(definition)
        if definition.command not in ("position", "velocity"):
            raise ConfigError(
                f"{definition.source}: the scripted expert emits position or velocity commands, not "
                f"{definition.command}; collect with a policy of your own (an ONNX model) instead"
            )
        self.definition, self.task, self.spec = definition, task, definition.expert
        self.model = task.model
        self.data = mujoco.MjData(self.model)
        names = task.observation_names
        missing = [f"{j}.position" for j in definition.joints if f"{j}.position" not in names]
        missing += [f"goal.{f}" for f in "xyz" if f"goal.{f}" not in names]
        if missing:
            raise ConfigError(f"{definition.source}: the scripted expert needs observations {missing}")
        self.position_columns = np.array([names.index(f"{j}.position") for j in definition.joints])
        self.goal_columns = np.array([names.index(f"goal.{f}") for f in "xyz"])
        self.qpos_adr, self.dof_adr = task.joint_qpos, task.joint_dof
        self.home = task.start_qpos[self.qpos_adr].copy()
        self.low, self.high = task.action_low, task.action_high
        # action k drives task joint index action_joint[k]
        self.action_joint = np.array([int(np.flatnonzero(self.qpos_adr == adr)[0]) for adr in task.action_qpos])
        kp = self.model.actuator_gainprm[task.actuator_ids, 0]
        self.kp = kp
        self.lead = (-self.model.actuator_biasprm[task.actuator_ids, 2] + self.model.dof_damping[task.action_dof]) / kp
        # the servo's drive beyond the bias stays inside 80 % of its force limit: a saturated servo
        # no longer damps (the xArm7's coaxial joint1/joint3 then spin against each other)
        limited = self.model.actuator_forcelimited[task.actuator_ids].astype(bool)
        span = np.min(np.abs(self.model.actuator_forcerange[task.actuator_ids]), axis=1)
        self.max_drive = np.where(limited, 0.8 * span, np.inf)
        self._jacp = np.zeros((3, self.model.nv))

    def joint_velocity(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q of the task joints, the DLS joint velocity toward the goal), with qpos set for `obs`."""
        obs = np.asarray(obs, dtype=np.float64).reshape(-1)
        spec, model, data = self.spec, self.model, self.data
        q = obs[self.position_columns]
        goal = obs[self.goal_columns]
        data.qpos[:] = self.task.start_qpos
        data.qpos[self.qpos_adr] = q
        data.qvel[:] = 0.0
        mujoco.mj_forward(model, data)  # kinematics, Jacobian inputs and the bias forces at rest
        mujoco.mj_jacSite(model, data, self._jacp, None, self.task.site_id)
        velocity = spec.gain * (goal - data.site_xpos[self.task.site_id])
        speed = float(np.linalg.norm(velocity))
        if speed > spec.max_speed:
            velocity *= spec.max_speed / speed
        jac = self._jacp[:, self.dof_adr]
        jjt = jac @ jac.T + (spec.damping**2) * np.eye(3)
        dq = jac.T @ np.linalg.solve(jjt, velocity)
        pinv = jac.T @ np.linalg.solve(jjt, np.eye(3))
        dq += (np.eye(len(q)) - pinv @ jac) @ (spec.posture_gain * (self.home - q))
        fastest = float(np.max(np.abs(dq))) if dq.size else 0.0
        if fastest > spec.max_joint_speed > 0:
            dq *= spec.max_joint_speed / fastest
        return q, dq

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        q, dq = self.joint_velocity(obs)
        dq_action = dq[self.action_joint]
        if self.definition.command == "velocity":
            return np.clip(dq_action, self.low, self.high)
        bias = self.data.qfrc_bias[self.task.action_dof]  # gravity at q (qvel = 0)
        drive = np.clip(self.kp * self.lead * dq_action, -self.max_drive - bias, self.max_drive - bias)
        target = q[self.action_joint] + (bias + drive) / self.kp
        return np.clip(target, self.low, self.high)

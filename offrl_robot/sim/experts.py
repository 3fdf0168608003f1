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

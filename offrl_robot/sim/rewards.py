"""Named, vectorised reward functions that need only logged data: `fn(obs, act, next_obs) -> [N]`.

Why data-only: rosbag ingestion (and relabelling) recomputes the reward by name
(`offrl_robot.sim.rewards:arm_reach_reward`) from observations and actions, so a robot log
without a reward topic trains on exactly the reward the simulator would have given.
"""

from __future__ import annotations

import numpy as np

# Cost on the squared joint-velocity command (rad/s)^2: small, so reaching dominates, but it
# prefers calm motions and stillness once the goal is reached.
ARM_REACH_ACTION_COST = 0.01


def arm_reach_reward_from_distance(distance: np.ndarray, act: np.ndarray) -> np.ndarray:
    """-distance (m) - ARM_REACH_ACTION_COST * ||act||^2, per row. Shared by the env and the data path."""
    act = np.asarray(act, dtype=np.float64)
    return -np.asarray(distance, dtype=np.float64) - ARM_REACH_ACTION_COST * np.sum(act * act, axis=-1)


def arm_reach_reward(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """ArmReach reward of transitions [N] from obs [N, 15], act [N, 6], next_obs [N, 15].

    The end-effector position after the step comes from forward kinematics of the joint
    positions in `next_obs` (columns 0..5) on the arm6 MuJoCo model; the goal is columns 12..14.
    Equals the env's reward to float rounding (the env measures the distance in MuJoCo directly).
    """
    from offrl_robot.sim.arm_kinematics import default_kinematics  # lazy: MuJoCo only when needed

    next_obs = np.atleast_2d(np.asarray(next_obs, dtype=np.float64))
    act = np.atleast_2d(np.asarray(act, dtype=np.float64))
    if next_obs.shape[-1] != 15 or act.shape[-1] != 6 or len(next_obs) != len(act):
        raise ValueError(
            f"arm_reach_reward expects next_obs [N, 15] and act [N, 6], got {next_obs.shape} and {act.shape}"
        )
    ee = default_kinematics().site_position(next_obs[:, :6])
    distance = np.linalg.norm(ee - next_obs[:, 12:15], axis=-1)
    return arm_reach_reward_from_distance(distance, act).astype(np.float32)

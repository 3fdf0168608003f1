"""Named, vectorised reward functions for the real-robot bags in `config/ingest/`.

Real logs carry no reward topic, so the ingest spec names a function
`module:function(obs, act, next_obs) -> [N]` computed from logged data alone. Each function
states the column layout it assumes; that layout is fixed by the spec that names it (the
spec's observation order), so changing one means changing the other.
"""

from __future__ import annotations

import numpy as np

# TurtleBot3 Burger wheel radius (m), from its URDF.
TB3_WHEEL_RADIUS_M = 0.033


def diff_drive_forward_progress(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """Forward speed actually achieved (m/s) minus a small turning cost.

    Layout (config/ingest/tb3_walker.yaml): next_obs columns 2, 3 are the left/right wheel
    velocities (rad/s); act column 1 is the commanded yaw rate (rad/s). Rewards moving forward
    from what the wheels did, not from what was commanded.
    """
    wheels = np.asarray(next_obs, dtype=np.float64)[:, 2:4]
    forward = TB3_WHEEL_RADIUS_M * wheels.mean(axis=1)
    turn = np.abs(np.asarray(act, dtype=np.float64)[:, 1])
    return (forward - 0.01 * turn).astype(np.float32)


def joint_tracking_reward(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """-||q_next - q_ref||: how close the joints came to the commanded position setpoints.

    Layout (config/ingest/servo_arm.yaml): act holds A position setpoints (rad); the first A
    columns of next_obs are the measured joint positions in the same joint order.
    """
    act = np.asarray(act, dtype=np.float32)  # float32 like the dataset: no float64 copies of big arrays
    q_next = np.asarray(next_obs, dtype=np.float32)[:, : act.shape[1]]
    return -np.sqrt(np.einsum("ij,ij->i", q_next - act, q_next - act))

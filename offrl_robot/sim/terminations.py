"""When a locomotion task ends: gymnasium's `is_healthy` rules of the v5 MuJoCo tasks, written
on observations so that a learned model's predicted states can be judged the same way.

Why: model-based learners (MOPO) roll a learned model forward from dataset states; a rollout
that continues past a fall trains the critic on states the real task never reaches (and on the
healthy reward the model keeps predicting there). The env decides termination from the
simulator state; with the default `exclude_current_positions_from_observation=True` the
observation is `qpos[1:]` followed by `clip(qvel, -10, 10)`, so observation[0] is the torso
height z, observation[1] the torso angle and observation[1:] the rest of `state_vector()[2:]`.

One approximation, for Hopper only: its rule also ends the episode when any |qvel| reaches 100,
but the observation clips velocities to ±10, so that case cannot be seen here (the height and
angle rules are exact). Falls, the terminations of Hopper data, are height/angle terminations.

Every function is `fn(obs [N, O], act [N, A], next_obs [N, O]) -> bool [N]` (True = terminal),
using operators only, so it runs on numpy arrays and on torch tensors (on any device) alike.
Registered by name in `offrl_robot.registry.BUILTIN_TERMINATIONS`.
"""

from __future__ import annotations

from typing import Any

# gymnasium 1.x Hopper-v5 / Walker2d-v5 defaults (healthy_z_range, healthy_angle_range,
# healthy_state_range). Open intervals, as gymnasium compares them (min < x < max).
HOPPER_Z_MIN = 0.7
HOPPER_ANGLE = 0.2
HOPPER_STATE = 100.0
WALKER2D_Z = (0.8, 2.0)
WALKER2D_ANGLE = 1.0


def hopper_terminated(obs: Any, act: Any, next_obs: Any) -> Any:
    """Hopper-v5: not (|next_obs[1:]| < 100 and z > 0.7 and |angle| < 0.2). NaN is terminal."""
    z, angle = next_obs[..., 0], next_obs[..., 1]
    healthy = (
        (abs(next_obs[..., 1:]) < HOPPER_STATE).all(-1) & (z > HOPPER_Z_MIN) & (abs(angle) < HOPPER_ANGLE)
    )
    return ~healthy


def walker2d_terminated(obs: Any, act: Any, next_obs: Any) -> Any:
    """Walker2d-v5: not (0.8 < z < 2.0 and |angle| < 1.0). NaN is terminal."""
    z, angle = next_obs[..., 0], next_obs[..., 1]
    healthy = (z > WALKER2D_Z[0]) & (z < WALKER2D_Z[1]) & (abs(angle) < WALKER2D_ANGLE)
    return ~healthy

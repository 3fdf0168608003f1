"""Model and forward kinematics of the arm6 robot of `offrl_robot/ArmReach-v0`.

Why its own module: the env (`arm_reach.py`) and the data-only reward (`rewards.py`, which
recomputes the reward of logged transitions from joint positions) both need the same compiled
model and end-effector kinematics, and the env needs the reward. With the kinematics here, below
both, neither imports the other back (tests/test_layering.py forbids import cycles).
"""

from __future__ import annotations

import functools
from pathlib import Path

import mujoco
import numpy as np

from offrl_robot.paths import share_path

EE_SITE = "ee"


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

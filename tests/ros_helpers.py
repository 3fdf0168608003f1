"""Shared pieces of the policy_node/sim_node tests over real DDS (test_ros_nodes.py,
test_policy_node_faults.py): the P-controller policy, the node command lines, and the probe
playing the robot driver.

Why a module of its own: both test files drive the same nodes the same way; the helpers live
once, under public names, instead of one test module importing another's private functions
(tests/test_layering.py). Importing it needs no rclpy (RosProbe is only a type here); the tests
that use it skip without rclpy first.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from offrl_robot.ros.linear_policy import write_linear_policy
from offrl_robot.sim.arm_reach import ACTION_NAMES, HOME_QPOS, JOINT_NAMES, OBSERVATION_NAMES

if TYPE_CHECKING:
    from offrl_robot.ros.probe import RosProbe

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POLICY_YAML = REPO / "config" / "policy.yaml"
PERIOD = 1.0 / 50.0
WATCHDOG = 0.2
# Test tweaks on top of config/policy.yaml: no slew limit and no blend-in, so "safe action" and
# "policy action" are told apart on the very next tick.
FAST_SAFETY = ["-p", "max_slew_rate:=[.inf]", "-p", "blend_in_ticks:=0", "-p", f"watchdog_timeout:={WATCHDOG}"]


ARM_JOINTS = list(JOINT_NAMES)
# q*: the P-controller's target joint angles, away from the sim's start posture (HOME +- 0.1).
HOME_TARGET = [float(q) for q in HOME_QPOS + np.array([0.35, -0.25, 0.3, 0.3, -0.3, 0.2])]
KP = 3.0  # 1/s: joint velocity command per rad of error
OFF_TARGET = [q + 0.3 for q in HOME_TARGET]  # the controller commands a clearly non-zero action here


def goal_for(joint_angles: list[float]) -> list[float]:
    """End-effector position (m) at these joint angles: forward kinematics of the sim's own MJCF."""
    from offrl_robot.sim.arm_kinematics import ArmKinematics, load_model

    return [float(v) for v in ArmKinematics(load_model()).site_position(np.asarray(joint_angles))]


def write_p_controller(path: Path, validated: bool) -> Path:
    """action = KP (q* - q) over the ArmReach observation layout, as a real ONNX model + card.

    The card's validation block is written here (passed or failed on purpose) to exercise the
    node's gate; this controller was not run through the MuJoCo validation gate."""
    from offrl_robot.sim import make_env

    env = make_env("ArmReach-v0").unwrapped
    weights = np.zeros((len(ACTION_NAMES), len(OBSERVATION_NAMES)))
    weights[:, :6] = -KP * np.eye(6)
    validation = {
        "passed": validated,
        "task": "ArmReach-v0",
        "episodes": 10,
        "metrics": {"success_rate": 1.0 if validated else 0.2},
        "thresholds": {"success_rate": {"min": 0.8}},
        "date": "2026-11-26T00:00:00Z",
    }
    return write_linear_policy(
        path,
        observation_names=OBSERVATION_NAMES,
        action_names=ACTION_NAMES,
        weights=weights,
        bias=KP * np.asarray(HOME_TARGET),
        action_low=env.action_low.tolist(),
        action_high=env.action_high.tolist(),
        control_rate_hz=env.control_rate_hz,
        validation=validation,
    )


def policy_cmd(model: Path, *extra: str) -> list[str]:
    """The policy_node console script with config/policy.yaml and this model, plus `extra` ROS args."""
    return [
        str(BIN / "policy_node"),
        "--ros-args",
        "--params-file",
        str(POLICY_YAML),
        "-p",
        f"model_path:={model}",
        *extra,
    ]


def domain_id(env: dict[str, str]) -> int:
    """The ROS_DOMAIN_ID of a test's `ros_env`."""
    return int(env["ROS_DOMAIN_ID"])


def child_output(proc: Any) -> str:
    """Everything a (killed) child printed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=10)
    return out or ""


def is_zero(values: list[float]) -> bool:
    return all(v == 0.0 for v in values)


def drive(probe: RosProbe, seconds: float, position=HOME_TARGET, velocity=None, names=ARM_JOINTS) -> None:  # type: ignore[no-untyped-def]
    """Play the robot driver: publish JointState at ~50 Hz for `seconds`."""
    velocity = [0.0] * len(position) if velocity is None else velocity
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        probe.publish_joint_state(names, position, velocity)
        probe.spin_for(PERIOD)


def wait_commanding(probe: RosProbe, proc: Any, timeout: float = 30.0) -> None:
    """Drive with an off-target posture until /cmd carries the (non-zero) policy action."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        drive(probe, 0.1, position=OFF_TARGET)
        if probe.cmds and not is_zero(probe.cmds[-1].data):
            return
        assert proc.poll() is None, child_output(proc)
    pytest.fail(f"policy_node never commanded; output:\n{child_output(proc)}")

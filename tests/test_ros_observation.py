"""JointState -> observation mapping by name, and the sim backend on real Menagerie MJCF files.

No DDS here: these are the rules the nodes apply, tested directly (the DDS tests in
test_ros_nodes.py check the same behaviour end to end through real processes).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from offrl_robot.errors import ConfigError
from offrl_robot.ros.observation import ObservationAssembler, parse_extra_topics

NAMES = [
    "joint_1.position",
    "joint_2.position",
    "joint_1.velocity",
    "joint_2.velocity",
    "goal.x",
    "goal.y",
    "goal.z",
]


def _assembler() -> ObservationAssembler:
    obs = ObservationAssembler(NAMES, extra_prefixes=["goal"])
    assert obs.update_extra("goal", {"x": 0.1, "y": 0.2, "z": 0.3}) is None
    return obs


def test_maps_by_name_whatever_the_message_order() -> None:
    obs = _assembler()
    # The driver lists joints in another order and has an extra joint the model does not use.
    err = obs.update_joint_state(["gripper", "joint_2", "joint_1"], [9.0, 2.0, 1.0], [99.0, -2.0, -1.0], [])
    assert err is None and obs.error is None
    np.testing.assert_array_equal(obs.vector, np.float32([1.0, 2.0, -1.0, -2.0, 0.1, 0.2, 0.3]))
    # Same names, new order: the cached index must be rebuilt, not reused.
    assert (
        obs.update_joint_state(["joint_1", "joint_2", "gripper"], [5.0, 6.0, 7.0], [0.5, 0.6, 0.7], [])
        is None
    )
    np.testing.assert_array_equal(obs.vector[:4], np.float32([5.0, 6.0, 0.5, 0.6]))


@pytest.mark.parametrize(
    ("names", "position", "velocity", "needle"),
    [
        ([], [1.0, 2.0], [0.0, 0.0], "empty name list"),
        (["joint_1", "joint_2"], [1.0], [0.0, 0.0], "position has 1 values for 2 names"),
        (["joint_1", "joint_2"], [1.0, 2.0], [], "velocity has 0 values for 2 names"),
        (["joint_1", "joint_2"], [1.0, math.nan], [0.0, 0.0], "joint 'joint_2' is not finite"),
        (["joint_1", "joint_2"], [1.0, 2.0], [math.inf, 0.0], "velocity of joint 'joint_1' is not finite"),
        (["joint_1", "joint_2"], [1.0, 1e300], [0.0, 0.0], "joint 'joint_2' overflows float32 (1e+300)"),
        (["joint_1", "joint_1", "joint_2"], [1.0, 1.0, 2.0], [0.0, 0.0, 0.0], "names joint 'joint_1' twice"),
    ],
)
def test_bad_joint_state_invalidates_until_a_good_one(names, position, velocity, needle) -> None:
    obs = _assembler()
    assert obs.update_joint_state(["joint_1", "joint_2"], [1.0, 2.0], [0.0, 0.0], []) is None
    err = obs.update_joint_state(names, position, velocity, [])
    assert err is not None and needle in err, err
    assert obs.error == err  # the observation is unusable, with the reason
    assert obs.update_joint_state(["joint_2", "joint_1"], [2.0, 1.0], [0.0, 0.0], []) is None
    assert obs.error is None


def test_several_publishers_each_update_their_own_joints() -> None:
    """An arm broadcaster and a gripper driver on one topic, each with its own name[] (and a field
    the other leaves empty): every joint is taken from the latest message carrying it, and the
    observation is as old as its oldest joint."""
    obs = ObservationAssembler(
        ["j1.position", "j1.velocity", "finger.position"], hold_joints=["j1", "finger"]
    )
    assert obs.error is not None and "no /joint_states value yet" in obs.error
    assert obs.update_joint_state(["j1"], [0.5], [0.1], [], received=10.0, stamp=1.0) is None
    assert "['finger']" in obs.error
    # the gripper publishes position only (empty velocity): fine, nothing needs its velocity
    assert obs.update_joint_state(["finger"], [0.02], [], [], received=10.5, stamp=1.5) is None
    assert obs.error is None
    np.testing.assert_array_equal(obs.vector, np.float32([0.5, 0.1, 0.02]))
    np.testing.assert_array_equal(obs.hold_positions, [0.5, 0.02])
    assert obs.oldest_update() == (10.0, 1.0)  # the arm's message is the older one
    # a message of a publisher the model does not use changes nothing
    assert obs.update_joint_state(["base_wheel"], [3.0], [3.0], [], received=11.0) is None
    assert obs.oldest_update() == (10.0, 1.0)
    # a bad gripper message invalidates the gripper joints only until the next good one
    assert "not finite" in obs.update_joint_state(["finger"], [math.nan], [], [], received=11.0)
    assert obs.error is not None and "finger" in obs.error
    assert obs.update_joint_state(["finger"], [0.03], [], [], received=11.5) is None
    assert obs.error is None


def test_shuffled_name_order_every_message_maps_by_name() -> None:
    names = ["a.position", "b.position", "c.position"]
    obs = ObservationAssembler(names)
    rng = np.random.default_rng(0)
    for t in range(300):  # more distinct orders than one cached layout, fewer than the cache size
        order = rng.permutation(["a", "b", "c"]).tolist()
        values = {"a": t + 0.1, "b": t + 0.2, "c": t + 0.3}
        assert obs.update_joint_state(order, [values[j] for j in order], [], [], received=float(t)) is None
        np.testing.assert_array_equal(obs.vector, np.float32([values["a"], values["b"], values["c"]]))


def test_needs_every_extra_topic_and_rejects_nan_goal() -> None:
    obs = ObservationAssembler(NAMES, extra_prefixes=["goal"])
    obs.update_joint_state(["joint_1", "joint_2"], [1.0, 2.0], [0.0, 0.0], [])
    assert obs.error is not None and "'goal'" in obs.error
    assert "not finite" in obs.update_extra("goal", {"x": math.nan, "y": 0.0, "z": 0.0})
    assert obs.error is not None
    assert obs.update_extra("goal", {"x": 0.4, "y": 0.0, "z": 0.0}) is None
    assert obs.error is None and obs.vector[4] == np.float32(0.4)


def test_unmappable_observation_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"goal\.x"):
        ObservationAssembler(["joint_1.position", "goal.x"])  # no extra topic for 'goal'
    with pytest.raises(ConfigError, match="not '<joint>"):
        ObservationAssembler(["bare_name"])
    assert parse_extra_topics(["goal:/goal", " target : /t "]) == {"goal": "/goal", "target": "/t"}
    with pytest.raises(ConfigError, match="PREFIX:/topic"):
        parse_extra_topics(["/goal"])


MENAGERIE = ["kinova_gen3/scene.xml", "ufactory_xarm7/scene.xml", "trossen_vx300s/scene.xml"]


@pytest.mark.parametrize("scene", MENAGERIE)
def test_sim_backend_runs_menagerie_arms(shared_data: Path, scene: str) -> None:
    """Any MJCF with actuators: named joints out, one command per actuator in, clipped to ctrlrange."""
    from offrl_robot.ros.sim_backend import make_backend

    backend = make_backend(str(shared_data / "robots" / scene), 0.0, None)
    backend.reset(seed=0)
    assert backend.control_rate_hz == 50.0
    assert backend.num_commands == backend.model.nu > 0
    assert len(backend.joint_names) >= 6 and all(backend.joint_names)
    position, velocity, effort = backend.joint_state()
    assert position.shape == velocity.shape == effort.shape == (len(backend.joint_names),)
    start_time = backend.sim_time
    limited = np.isfinite(backend.ctrl_high)
    mid = np.zeros(backend.num_commands)
    mid[limited] = (backend.ctrl_low[limited] + backend.ctrl_high[limited]) / 2
    for _ in range(10):
        metrics = backend.step(mid)
    assert backend.sim_time == pytest.approx(start_time + 10 / 50.0)
    assert math.isnan(metrics.reward)  # a bare robot has no task
    assert np.all(np.isfinite(backend.joint_state()[0]))
    # A huge command is clipped where the model declares a ctrlrange.
    backend.step(np.full(backend.num_commands, 1e9))
    np.testing.assert_array_equal(backend.data.ctrl[limited], backend.ctrl_high[limited])


@pytest.mark.parametrize(
    "scene", ["kinova_gen3/scene.xml", "trossen_vx300s/scene.xml", "ufactory_xarm7/scene.xml"]
)
def test_position_servos_start_and_stay_at_their_pose_without_commands(shared_data: Path, scene: str) -> None:
    """A position servo with control 0 drives its joint to q = 0 (a Gen3 reached 363 rad/s at
    start-up that way). Without /cmd the backend holds every servo where it starts (keyframe pose),
    and when commands stop, where the arm is at that moment."""
    from offrl_robot.ros.sim_backend import make_backend

    backend = make_backend(str(shared_data / "robots" / scene), 0.0, None)
    backend.reset(seed=0)
    assert backend.position_actuators.any()
    start = backend.joint_state()[0]
    peak = 0.0
    for _ in range(100):  # 2 s with no command at all
        backend.step(None)
        peak = max(peak, float(np.abs(backend.joint_state()[1]).max()))
    assert peak < 1.0, f"peak joint speed {peak:.1f} rad/s with no command"
    assert np.abs(backend.joint_state()[0] - start).max() < 0.1  # held (a little gravity sag)
    target = backend.data.ctrl.copy()
    servo_on_joint = backend.position_actuators & (backend._servo_qpos >= 0)
    target[servo_on_joint] += 0.3
    for _ in range(25):
        backend.step(target)
    moved_to = backend.joint_state()[0]
    for _ in range(50):  # /cmd stops: frozen where it is, not sent back to the start or to 0
        backend.step(None)
    assert np.abs(backend.joint_state()[0] - moved_to).max() < 0.1


def test_sim_backend_rejects_bad_models(tmp_path: Path) -> None:
    from offrl_robot.ros.sim_backend import make_backend

    with pytest.raises(ConfigError, match="not found"):
        make_backend(str(tmp_path / "missing.xml"), 0.0, None)
    no_actuators = tmp_path / "free.xml"
    no_actuators.write_text(
        "<mujoco><worldbody><body><joint name='j' type='hinge'/><geom size='0.1'/></body></worldbody></mujoco>"
    )
    with pytest.raises(ConfigError, match="no actuators"):
        make_backend(str(no_actuators), 0.0, None)
    broken = tmp_path / "broken.xml"
    broken.write_text("<mujoco><worldbody><body>")
    with pytest.raises(ConfigError, match="does not load"):
        make_backend(str(broken), 0.0, None)

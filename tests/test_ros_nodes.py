"""policy_node and sim_node over real DDS, each in its own process (Fast DDS, loopback only).

Every test gets its own ROS_DOMAIN_ID (`ros_env`) and every child a hard SIGKILL timeout
(`run_child`). The test process itself is the "rest of the robot": `RosProbe` publishes
JointStates / goal / e-stop like a driver and an operator would, and records what arrives on
/cmd and /diagnostics.

The policy: a joint-space P-controller exported as a real ONNX model (action = Kp (q* - q),
the target joint angles q* in the graph's bias), observing the 6 joint positions and
velocities and the goal (unused by the controller, but the goal topic must still arrive for the
observation to be valid). The simulator's goal is the end-effector position at q* (forward
kinematics of the same MJCF), so "the arm reaches its goal" is measured by the simulator's own
distance/success metric. It is not a learned policy: the closed loop is what is tested here.
The last test adds a learned one: BC trained and exported by the project's own pipeline,
chasing goals the simulator samples (slow: it trains first).
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")


from ros_helpers import (
    ARM_JOINTS,
    BIN,
    FAST_SAFETY,
    HOME_TARGET,
    KP,
    OFF_TARGET,
    PERIOD,
    POLICY_YAML,
    WATCHDOG,
    child_output,
    domain_id,
    drive,
    goal_for,
    is_zero,
    policy_cmd,
    wait_commanding,
    write_p_controller,
)

from offrl_robot.card import card_path_for
from offrl_robot.ros.probe import RosProbe

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
SIM_YAML = REPO / "config" / "sim.yaml"


def _sim_cmd(*extra: str) -> list[str]:
    return [str(BIN / "sim_node"), "--ros-args", "--params-file", str(SIM_YAML), *extra]


@pytest.fixture
def p_controller(tmp_path: Path) -> Path:
    return write_p_controller(tmp_path / "p_controller.onnx", validated=True)


# --------------------------------------------------------------------------- (a), (b): with sim_node
def test_closed_loop_reaches_goal(ros_env, run_child, p_controller: Path) -> None:
    goal = goal_for(HOME_TARGET)
    sim = run_child.start(
        _sim_cmd("-p", f"goal:=[{goal[0]:.6f},{goal[1]:.6f},{goal[2]:.6f}]", "-p", "real_time_factor:=2.0"),
        env=ros_env,
    )
    policy = run_child.start(policy_cmd(p_controller, "-p", "use_sim_time:=true"), env=ros_env)
    with RosProbe(domain_id(ros_env)) as probe:
        # Wait for both nodes to be up, then start a fresh episode (start posture away from q*),
        # so the whole approach is observed, however late discovery was.
        up = probe.spin_until(lambda: len(probe.metrics) > 2 and len(probe.cmds) > 2, timeout=60.0)
        assert up, f"sim:\n{child_output(sim)}\npolicy:\n{child_output(policy)}"
        response = probe.trigger("/sim_node/reset")
        assert response is not None and response.success, response
        reached = probe.spin_until(
            lambda: any(m.data["success"] == 1.0 and m.data["episode"] == 1.0 for m in probe.metrics),
            timeout=30.0,
        )
        episode = [m.data for m in probe.metrics if m.data["episode"] == 1.0]
        assert reached, f"arm did not reach the goal; last metrics {episode[-1:]}\npolicy:\n{child_output(policy)}"
        assert episode[0]["distance_to_goal"] > 0.05, "the episode must start away from the goal"
        assert episode[-1]["distance_to_goal"] < 0.02
        assert any(not is_zero(c.data) for c in probe.cmds), "the policy must have moved the arm"
        assert probe.spin_until(
            lambda: bool(probe.diags) and probe.diags[-1].message == "active: commanding", 5.0
        )
        # The node reports its achieved control rate (wall ticks/s: up to ~100 with the sim at 2x;
        # 57 on the loaded 2-core dev VM). Not asserted against a speed (a loaded CI machine ticks
        # slower, and says so) but against what the probe itself counts on /cmd (one message per
        # tick): the two agree within 2x however fast the machine is; a meter that is off (0 while
        # ticking, a stale window, per-second counts off by a unit) does not. The probe counts in
        # a window of plain spinning: the predicates above scan growing lists after every
        # callback, so the probe lags and stamps queued messages late; 0.5 s drains that first.
        probe.spin_for(0.5)
        start = time.monotonic()
        probe.spin_for(2.5)
        stamps = [c.t for c in probe.cmds_since(start)]
        reports = probe.diags_since(start + 1.0)  # every 0.5 s (diagnostics_period)
        assert len(stamps) >= 5 and reports, f"{len(stamps)} /cmd, {len(reports)} diagnostics in 2.5 s"
        reported = float(reports[-1].data["control_rate_achieved_hz"])
        counted = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        assert 0.5 * counted < reported < 2.0 * counted, (reported, counted)


def test_sim_killed_policy_publishes_safe_action(ros_env, run_child, p_controller: Path) -> None:
    far_goal = goal_for([q + 0.6 for q in HOME_TARGET])  # far: the arm is still moving when the sim dies
    sim = run_child.start(_sim_cmd("-p", f"goal:=[{far_goal[0]},{far_goal[1]},{far_goal[2]}]"), env=ros_env)
    policy = run_child.start(policy_cmd(p_controller, "-p", "use_sim_time:=true", *FAST_SAFETY), env=ros_env)
    with RosProbe(domain_id(ros_env)) as probe:
        commanding = probe.spin_until(lambda: bool(probe.cmds) and not is_zero(probe.cmds[-1].data), 60.0)
        assert commanding, f"no policy command; policy:\n{child_output(policy)}"
        os.killpg(sim.pid, signal.SIGKILL)  # the robot side dies without a word (and /clock stops)
        killed = time.monotonic()
        safe = probe.spin_until(lambda: any(is_zero(c.data) for c in probe.cmds_since(killed)), 5.0)
        assert safe, f"no safe action after the sim died; policy:\n{child_output(policy)}"
        first_safe = next(c.t for c in probe.cmds_since(killed) if is_zero(c.data))
        # Within the watchdog timeout + one check period; + 0.5 s slack for a 2-core CI machine shared
        # with other jobs (the design bound is WATCHDOG + PERIOD).
        assert first_safe - killed < WATCHDOG + PERIOD + 0.5, (
            f"safe action {first_safe - killed:.3f} s after the kill"
        )
        tripped = probe.spin_until(
            lambda: any(d.data.get("watchdog") == "tripped" for d in probe.diags_since(killed)), 3.0
        )
        assert tripped, [d.message for d in probe.diags_since(killed)]
        diag = next(d for d in probe.diags_since(killed) if d.data.get("watchdog") == "tripped")
        assert diag.level == 2 and "watchdog" in diag.message
        # and it keeps the safe action going while nothing comes back
        probe.spin_for(1.0)  # 50 checks at the watchdog's 50 Hz; >= 5 leaves room for a loaded CI
        later = probe.cmds_since(first_safe)
        assert len(later) >= 5 and all(is_zero(c.data) for c in later)
        assert policy.poll() is None, "policy_node must stay up"


# --------------------------------------------------------------------------- (c), (d): the test plays the driver
def test_estop_latches_until_reset(ros_env, run_child, p_controller: Path) -> None:
    policy = run_child.start(policy_cmd(p_controller, *FAST_SAFETY), env=ros_env)
    with RosProbe(domain_id(ros_env)) as probe:
        probe.publish_goal(goal_for(HOME_TARGET))
        wait_commanding(probe, policy)
        probe.publish_estop(True)
        pressed = time.monotonic()
        drive(probe, 0.6, position=OFF_TARGET)
        after = probe.cmds_since(pressed)
        assert len(after) >= 10
        # At most one tick can race the e-stop message; everything from then on is the safe action.
        assert sum(not is_zero(c.data) for c in after) <= 1, [c.data for c in after[:3]]
        assert all(is_zero(c.data) for c in after[1:])
        latched = [d for d in probe.diags_since(pressed) if d.data.get("estop") == "latched"]
        assert latched and latched[-1].level == 2, [d.data for d in probe.diags_since(pressed)]
        # interventions are counted by kind, with the tick latency percentiles beside them
        assert int(latched[-1].data["interventions.estop"]) >= 1
        assert float(latched[-1].data["tick_latency_p99_us"]) > 0.0
        # Releasing the button (False) does not release the latch.
        probe.publish_estop(False)
        released = time.monotonic()
        drive(probe, 0.4, position=OFF_TARGET)
        assert all(is_zero(c.data) for c in probe.cmds_since(released))
        response = probe.trigger("/policy_node/reset_estop", idempotent=True)
        assert response is not None and response.success, response
        reset = time.monotonic()
        drive(probe, 0.4, position=OFF_TARGET)
        assert any(not is_zero(c.data) for c in probe.cmds_since(reset)), "policy must resume after reset"
        assert policy.poll() is None
        # SIGTERM (what `ros2 launch` sends on shutdown): the last word on /cmd is the safe action.
        policy.send_signal(signal.SIGTERM)
        probe.spin_until(lambda: policy.poll() is not None, 10.0)
        probe.spin_for(0.3)
        assert policy.returncode == 0, child_output(policy)
        assert is_zero(probe.cmds[-1].data), probe.cmds[-1].data


@pytest.mark.parametrize(
    ("names", "position", "needle"),
    [
        (ARM_JOINTS, [*HOME_TARGET[:2], float("nan"), *HOME_TARGET[3:]], "not finite"),
        (ARM_JOINTS, HOME_TARGET[:5], "5 values for 6 names"),
        ([], HOME_TARGET, "empty name list"),
        (ARM_JOINTS, [*HOME_TARGET[:2], 1e300, *HOME_TARGET[3:]], "overflows float32"),
    ],
    ids=["nan", "wrong_length", "unnamed", "overflow"],
)
def test_bad_joint_state_gives_safe_action_and_diagnostic(
    ros_env, run_child, p_controller: Path, names, position, needle
) -> None:
    policy = run_child.start(policy_cmd(p_controller, *FAST_SAFETY), env=ros_env)
    with RosProbe(domain_id(ros_env)) as probe:
        probe.publish_goal(goal_for(HOME_TARGET))
        wait_commanding(probe, policy)
        bad = time.monotonic()
        velocity = [0.0] * len(position)
        drive(probe, 0.15, position=position, velocity=velocity, names=names)  # shorter than the watchdog
        after = probe.cmds_since(bad)
        assert after and sum(not is_zero(c.data) for c in after) <= 1, [c.data for c in after]
        assert is_zero(after[-1].data)
        probe.spin_until(
            lambda: any(needle in d.data.get("observation_error", "") for d in probe.diags_since(bad)), 2.0
        )
        reports = [d for d in probe.diags_since(bad) if needle in d.data.get("observation_error", "")]
        assert reports, [d.data.get("observation_error") for d in probe.diags_since(bad)]
        assert reports[0].level == 2 and "observation invalid" in reports[0].message
        # The node stays up and resumes on the next good message.
        good = time.monotonic()
        drive(probe, 0.3, position=OFF_TARGET)
        assert any(not is_zero(c.data) for c in probe.cmds_since(good))
        assert policy.poll() is None


# --------------------------------------------------------------------------- (e), (f): lifecycle
def test_lifecycle_transitions_through_standard_services(ros_env, run_child, p_controller: Path) -> None:
    policy = run_child.start(policy_cmd(p_controller, "-p", "autostart:=false", *FAST_SAFETY), env=ros_env)
    with RosProbe(domain_id(ros_env)) as probe:
        probe.publish_goal(goal_for(HOME_TARGET))
        assert probe.lifecycle_state("policy_node", timeout=30.0) == "unconfigured", child_output(policy)
        drive(probe, 0.2, position=OFF_TARGET)
        assert probe.cmds == [], "an unconfigured node must not command"
        assert probe.lifecycle("policy_node", "configure") is True
        assert probe.lifecycle_state("policy_node") == "inactive"
        drive(probe, 0.2, position=OFF_TARGET)
        assert probe.cmds == [], "an inactive node must not command"
        assert probe.lifecycle("policy_node", "activate") is True
        assert probe.lifecycle_state("policy_node") == "active"
        wait_commanding(probe, policy, timeout=5.0)
        assert probe.lifecycle("policy_node", "deactivate") is True
        assert probe.lifecycle_state("policy_node") == "inactive"
        # No wall-clock window on delivery: let what was in flight arrive (0.3 s of driving), then
        # the last word is the safe action and 0.3 s more of JointState input (which would tick
        # an active node 15 times) brings no /cmd at all.
        drive(probe, 0.3, position=OFF_TARGET)
        assert probe.cmds and is_zero(probe.cmds[-1].data), "deactivate must leave the safe action on /cmd"
        settled = len(probe.cmds)
        drive(probe, 0.3, position=OFF_TARGET)
        assert len(probe.cmds) == settled, "no commands while inactive"
        assert probe.lifecycle("policy_node", "cleanup") is True
        assert probe.lifecycle_state("policy_node") == "unconfigured"
        # and it can be configured again after cleanup
        assert probe.lifecycle("policy_node", "configure") is True
        assert policy.poll() is None


def test_unvalidated_model_refused_at_configure(ros_env, run_child, tmp_path: Path) -> None:
    model = write_p_controller(tmp_path / "failed_gate.onnx", validated=False)
    policy = run_child.start(policy_cmd(model, "-p", "autostart:=false"), env=ros_env)
    with RosProbe(domain_id(ros_env)) as probe:
        assert probe.lifecycle_state("policy_node", timeout=30.0) == "unconfigured", child_output(policy)
        assert probe.lifecycle("policy_node", "configure") is False
        assert probe.lifecycle_state("policy_node") == "unconfigured"
        assert probe.spin_until(lambda: any(d.level == 2 for d in probe.diags), 3.0)
        assert "validation" in probe.diags[-1].message
    out = child_output(policy)
    line = next((ln for ln in out.splitlines() if "configure failed" in ln), "")
    assert str(card_path_for(model)) in line and "validation" in line and "allow_unvalidated" in line, out


def test_autostart_with_tampered_model_exits_with_one_line(ros_env, run_child, tmp_path: Path) -> None:
    model = write_p_controller(tmp_path / "tampered.onnx", validated=True)
    onnx_model = onnx.load(str(model))
    onnx_model.doc_string = "edited after export"  # still valid ONNX, but no longer the bytes the card hashed
    onnx.save(onnx_model, str(model))
    result = run_child.run(policy_cmd(model), timeout=60.0, env=ros_env)
    assert result.returncode == 2, result.stdout
    lines = [ln for ln in result.stdout.splitlines() if "configure failed" in ln]
    assert len(lines) == 1 and str(model) in lines[0], result.stdout
    assert "sha256" in lines[0].lower(), lines[0]


# --------------------------------------------------------------------------- deploy: both nodes, one process
def test_deploy_in_one_process_reaches_goal_over_real_dds(
    ros_env, run_child, p_controller: Path, tmp_path: Path
) -> None:
    goal = goal_for(HOME_TARGET)
    sim_params = tmp_path / "sim.yaml"
    sim_params.write_text(
        "sim_node:\n  ros__parameters:\n    model: ArmReach-v0\n    real_time_factor: 2.0\n"
        f"    goal: [{goal[0]}, {goal[1]}, {goal[2]}]\n"
    )
    args = [sys.executable, "-m", "offrl_robot.cli", "deploy", "--params", str(POLICY_YAML), "--sim"]
    args += ["--sim-params", str(sim_params), "--model", str(p_controller), "--duration", "12"]
    deploy = run_child.start(args, env=ros_env)
    with RosProbe(domain_id(ros_env)) as probe:
        # Another process on the network sees the in-process nodes' topics.
        assert probe.spin_until(lambda: len(probe.cmds) > 10 and len(probe.metrics) > 10, 40.0), child_output(
            deploy
        )
    out, _ = deploy.communicate(timeout=60)
    assert deploy.returncode == 0, out
    sim_line = next(ln for ln in out.splitlines() if ln.startswith("sim: "))
    assert "success=1" in sim_line, out
    assert next(ln for ln in out.splitlines() if ln.startswith("policy: ")), out


def test_deploy_refuses_unvalidated_model_with_one_line(ros_env, run_child, tmp_path: Path) -> None:
    model = write_p_controller(tmp_path / "unvalidated.onnx", validated=False)
    args = [
        sys.executable,
        "-m",
        "offrl_robot.cli",
        "deploy",
        "--params",
        str(POLICY_YAML),
        "--model",
        str(model),
    ]
    result = run_child.run(args, timeout=60.0, env=ros_env)
    assert result.returncode == 2, result.stdout
    errors = [ln for ln in result.stdout.splitlines() if ln.startswith("offrl-robot deploy: error:")]
    assert len(errors) == 1 and "validation" in errors[0] and str(card_path_for(model)) in errors[0], (
        result.stdout
    )


# --------------------------------------------------------------------------- sim_node alone
def test_sim_node_stale_command_means_zero_control(ros_env, run_child) -> None:
    sim = run_child.start(_sim_cmd("-p", "cmd_timeout:=0.1"), env=ros_env)
    with RosProbe(domain_id(ros_env)) as probe:
        probe.record_joint_states()
        from std_msgs.msg import Float64MultiArray

        cmd_pub = probe.node.create_publisher(Float64MultiArray, "/cmd", 10)
        assert probe.spin_until(lambda: len(probe.joint_states) > 2, 60.0), child_output(sim)
        assert list(probe.joint_states[-1].data.name) == ARM_JOINTS
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            cmd_pub.publish(Float64MultiArray(data=[0.5, 0.0, 0.0, 0.0, 0.0, 0.0]))
            probe.spin_for(PERIOD)
        moving = probe.joint_states[-1].data.velocity[0]
        assert moving == pytest.approx(0.5, abs=0.1), "the velocity command must be applied"
        stopped_at = time.monotonic()
        probe.spin_for(0.5)  # no /cmd for 0.5 s > cmd_timeout: zero velocity command
        later = [js.data for js in probe.joint_states if js.t > stopped_at + 0.3]
        assert later and all(abs(js.velocity[0]) < 0.05 for js in later), [js.velocity[0] for js in later]
        stamps = [js.data.header.stamp.sec + js.data.header.stamp.nanosec * 1e-9 for js in probe.joint_states]
        assert all(b > a for a, b in itertools.pairwise(stamps)), "sim time must advance"


def test_sim_node_runs_a_menagerie_arm(ros_env, run_child, shared_data: Path) -> None:
    scene = shared_data / "robots" / "kinova_gen3" / "scene.xml"
    sim = run_child.start(_sim_cmd("-p", f"model:={scene}", "-p", "real_time_factor:=2.0"), env=ros_env)
    with RosProbe(domain_id(ros_env)) as probe:
        probe.record_joint_states()
        assert probe.spin_until(lambda: len(probe.joint_states) > 20, 60.0), child_output(sim)
        msg = probe.joint_states[-1].data
        assert list(msg.name) == [f"joint_{i}" for i in range(1, 8)]
        assert len(msg.position) == len(msg.velocity) == len(msg.effort) == 7
        assert all(np.isfinite(msg.position))
        # No task: metrics carry NaN reward/success instead of made-up numbers.
        assert probe.spin_until(lambda: bool(probe.metrics), 5.0)
        assert np.isnan(probe.metrics[-1].data["reward"])
        response = probe.trigger("/sim_node/reset")
        assert response is not None and response.success
        assert sim.poll() is None


def test_maps_joints_by_name_and_publishes_joint_trajectory(ros_env, run_child, p_controller: Path) -> None:
    """Driver lists joints in reverse order; the command must still be KP * (q* - q) per *named* joint."""
    from trajectory_msgs.msg import JointTrajectory

    policy = run_child.start(
        policy_cmd(
            p_controller,
            "-p",
            "command_type:=joint_trajectory",
            "-r",
            "/cmd:=/arm_controller/joint_trajectory",
            *FAST_SAFETY,
        ),
        env=ros_env,
    )
    offsets = [0.1 * (i + 1) for i in range(6)]  # q*_i - q_i
    position = [q - d for q, d in zip(HOME_TARGET, offsets, strict=True)]
    expected = [KP * d for d in offsets]  # 0.3 .. 1.8 rad/s, inside the action bounds
    with RosProbe(domain_id(ros_env)) as probe:
        received: list[JointTrajectory] = []
        # (remapped: one DDS participant cannot hold two types on /cmd)
        probe.node.create_subscription(
            JointTrajectory, "/arm_controller/joint_trajectory", received.append, 10
        )
        probe.publish_goal(goal_for(HOME_TARGET))
        end = time.monotonic() + 40.0
        while time.monotonic() < end and not (received and any(received[-1].points[0].velocities)):
            drive(probe, 0.1, position=position[::-1], names=ARM_JOINTS[::-1])
        assert received, child_output(policy)
        msg = received[-1]
        assert list(msg.joint_names) == ARM_JOINTS
        np.testing.assert_allclose(msg.points[0].velocities, expected, rtol=1e-5)
        duration = msg.points[0].time_from_start
        assert duration.sec == 0 and duration.nanosec == 20_000_000  # one control period


# --------------------------------------------------------------------------- a trained policy, end to end
@pytest.fixture(scope="module")
def trained_bc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """collect (scripted expert) -> train BC (2000 updates, 64x64) -> export: the project's own pipeline."""
    import offrl_robot.algos  # noqa: F401  (fills the registry)
    from offrl_robot.data.collect import collect
    from offrl_robot.export import export_checkpoint
    from offrl_robot.train import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("bc")
    dataset = collect("ArmReach-v0", "scripted-expert", episodes=40, seed=0, noise=0.1).dataset
    config = TrainConfig(
        algo="bc",
        algo_config={"hidden_sizes": [64, 64]},
        task="ArmReach-v0",
        steps=2000,
        seeds=[0],
        batch_size=128,
        eval_every=0,
        eval_episodes=1,
        log_every=2000,
        checkpoint_every=2000,
        progress=False,
        threads=1,
    )
    Trainer(config, dataset=dataset, run_dir=root / "run").fit()
    return Path(export_checkpoint(root / "run", root / "bc.onnx", dataset=dataset).model_path)


@pytest.mark.slow
def test_trained_bc_policy_moves_arm_towards_sampled_goals(
    ros_env, run_child, trained_bc_model: Path
) -> None:
    """A learned policy over DDS: goals sampled by the sim reach the policy only via /goal.

    Honest bound: at this tiny training budget BC does not hit the 2 cm success radius (see
    test_train_learns.py), and config/policy.yaml's slew limit slows it further, so the check is
    that every episode ends much closer to its goal than it started. The model has no validation
    block (the MuJoCo gate is separate), hence allow_unvalidated for this supervised test.
    """
    sim = run_child.start(_sim_cmd("-p", "real_time_factor:=2.0", "-p", "seed:=1"), env=ros_env)
    policy_args = ["-p", "use_sim_time:=true", "-p", "allow_unvalidated:=true"]
    policy = run_child.start(policy_cmd(trained_bc_model, *policy_args), env=ros_env)
    with RosProbe(domain_id(ros_env)) as probe:
        up = probe.spin_until(lambda: len(probe.metrics) > 2 and len(probe.cmds) > 2, timeout=60.0)
        assert up, f"sim:\n{child_output(sim)}\npolicy:\n{child_output(policy)}"
        for episode in (1.0, 2.0):
            response = probe.trigger("/sim_node/reset")
            assert response is not None and response.success
            probe.spin_until(
                lambda ep=episode: sum(m.data["episode"] == ep for m in probe.metrics) >= 150, 30.0
            )
            distances = [m.data["distance_to_goal"] for m in probe.metrics if m.data["episode"] == episode]
            assert len(distances) >= 150, f"episode {episode}: only {len(distances)} steps seen"
            assert distances[0] > 0.15, "a sampled goal should start well away from the arm"
            assert distances[-1] < 0.5 * distances[0], (
                f"episode {episode}: {distances[0]:.3f} -> {distances[-1]:.3f} m"
            )
        assert policy.poll() is None

"""`offrl-robot expert --task TASK`: a scripted controller on the robot's ROS interface, for demonstrations.

It plays the operator who drives the arm while `offrl-robot record` (or `ros2 bag record`) logs
it: subscribes `/joint_states` and `/goal` (geometry_msgs/PointStamped, latched, what sim_node
publishes), builds the task's observation by joint *name* (the same `ObservationAssembler`
policy_node uses), and answers every JointState with one `/cmd` (std_msgs/Float64MultiArray in
the task's action order) from the task's scripted expert (offrl_robot.sim.experts: damped least
squares toward the goal, emitted as the task's command kind, rate-limited), optionally with
Gaussian action noise. Ticking on each JointState (not a timer) keeps one command per simulated
tick at any sim_node `real_time_factor`, so the log pairs each command with the state it came from.

Not a safety layer: there is no SafetyFilter here. It is for a simulator (or a robot behind its
own limits) to collect data; trained policies run in policy_node.
"""

from __future__ import annotations

import argparse
import math
import signal
import time

import numpy as np

from offrl_robot.errors import ConfigError

POLICIES = ("scripted-expert", "random")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task file (config/tasks/NAME.yaml) or task name")
    parser.add_argument(
        "--policy",
        default="scripted-expert",
        help="scripted-expert (default) or random (uniform in the limits)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="Gaussian action noise std as a fraction of each action's range (as collect --noise)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise / random policy")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after S wall seconds (0 = until Ctrl-C)"
    )
    parser.add_argument(
        "--joint-states", default="/joint_states", help="JointState topic (default /joint_states)"
    )
    parser.add_argument(
        "--goal", default="/goal", help="goal topic, geometry_msgs/PointStamped (default /goal)"
    )
    parser.add_argument("--cmd", default="/cmd", help="command topic (default /cmd)")


def run(args: argparse.Namespace) -> int:
    from offrl_robot.data.collect import make_policy
    from offrl_robot.ros.observation import ObservationAssembler
    from offrl_robot.sim.tasks import task_info

    if args.policy not in POLICIES:
        raise ConfigError(
            f"--policy {args.policy!r}: choose {' or '.join(POLICIES)} (models run in policy_node)"
        )
    if not (math.isfinite(args.duration) and args.duration >= 0):
        raise ConfigError(f"--duration {args.duration}: must be a finite number of seconds >= 0")
    info = task_info(args.task)
    policy = make_policy(args.policy, info, args.noise, args.seed)
    assembler = ObservationAssembler(info.observation_names, extra_prefixes=["goal"])

    import rclpy
    from geometry_msgs.msg import PointStamped
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    context = rclpy.Context()
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    # Ctrl-C / SIGTERM set a flag the loop checks: an exception raised by a signal handler can land
    # inside rclpy's C++ calls (seen: "Unable to convert call argument" from spin_once, exit 1)
    signals: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: signals.append(signum)) for s in STOP_SIGNALS}
    node = Node("scripted_expert", context=context)
    publisher = node.create_publisher(Float64MultiArray, args.cmd, 10)
    sent = [0]
    last_error = [""]

    def on_goal(msg: PointStamped) -> None:
        assembler.update_extra("goal", {"x": msg.point.x, "y": msg.point.y, "z": msg.point.z})

    def on_joint_state(msg: JointState) -> None:
        assembler.update_joint_state(msg.name, msg.position, msg.velocity, msg.effort, time.monotonic())
        error = assembler.error
        if error is not None:  # not a full observation yet (e.g. no goal): send nothing, the sim holds
            if error != last_error[0]:
                node.get_logger().warning(f"no command: {error}")
                last_error[0] = error
            return
        action = np.asarray(policy(assembler.vector.astype(np.float64)), dtype=np.float64)
        publisher.publish(Float64MultiArray(data=action.tolist()))
        sent[0] += 1

    latched = QoSProfile(
        depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
    )
    node.create_subscription(PointStamped, args.goal, on_goal, latched)
    node.create_subscription(JointState, args.joint_states, on_joint_state, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    print(
        f"scripted expert ({args.policy}, noise {args.noise:g}) on {info.name}: {len(info.action_names)} "
        f"{info.action_names[0].rpartition('.')[2]} commands on {args.cmd}; Ctrl-C to stop",
        flush=True,
    )
    deadline = time.monotonic() + args.duration if args.duration > 0 else math.inf
    try:
        while not signals and context.ok() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        executor.remove_node(node)
        node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown(context=context)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"scripted expert stopped: {sent[0]} commands sent")
    return 0

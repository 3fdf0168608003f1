"""`offrl-robot deploy --params config/policy.yaml [--sim]`: the ROS nodes in one process.

For machines without the ROS 2 launch system (e.g. a venv with the PyPI rclpy wheels): the same
`PolicyNode` (and, with `--sim`, the same `SimNode`) that `ros2 launch offrl_robot
policy.launch.py` starts, spun by one executor from the main thread. The nodes still talk over
real DDS, so other processes (an e-stop button, a recorder) see the usual topics. With
`--sim` the policy runs on the simulator's /clock (use_sim_time), as `use_sim:=true` does in
the launch file. `--duration S` stops after S seconds and prints a summary line per node.

The executor is policy_node's `executor` parameter (chosen by measurement, see BENCHMARKS.md,
"ROS 2 node latency"), spun with `spin_once` from the main thread: rclpy 9.1's
EventsExecutor.spin() never runs callbacks, its spin_once does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from offrl_robot.errors import ConfigError, ModelError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", required=True, help="ROS 2 parameter file for policy_node (config/policy.yaml)"
    )
    parser.add_argument("--model", help="override model_path from the params file")
    parser.add_argument("--sim", action="store_true", help="also run sim_node (MuJoCo) in this process")
    parser.add_argument(
        "--sim-params", help="ROS 2 parameter file for sim_node (default: config/sim.yaml beside --params)"
    )
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)"
    )
    parser.add_argument(
        "--allow-unvalidated", action="store_true", help="run a model whose card has no passing validation"
    )


def _ros_args(args: argparse.Namespace) -> list[str]:
    """rclpy arguments: each params file applies to the node it names (policy_node / sim_node)."""
    params = Path(args.params)
    if not params.is_file():
        raise ConfigError(f"params file {params} not found; pass --params config/policy.yaml")
    ros_args = ["offrl-robot-deploy", "--ros-args", "--params-file", str(params)]
    if args.sim:
        # Never a silent default: without a sim.yaml sim_node would simulate ArmReach-v0, whatever
        # robot the model is for.
        sim_params = Path(args.sim_params) if args.sim_params else params.with_name("sim.yaml")
        if not sim_params.is_file():
            raise ConfigError(
                f"--sim needs a sim.yaml for the model's robot: {sim_params} not found; pass --sim-params "
                "FILE (config/sim.yaml simulates ArmReach-v0; for your arm set model: to its MJCF)"
            )
        ros_args += ["--params-file", str(sim_params)]
    return ros_args


def check_sim_matches_model(
    sim_joints: list[str], sim_commands: int, model_joints: list[str], source: str
) -> None:
    """The simulated robot must be the model's: every commanded joint simulated, one actuator per action."""
    missing = [joint for joint in model_joints if joint not in sim_joints]
    if missing or sim_commands != len(model_joints):
        raise ConfigError(
            f"{source}: the simulated robot ({sim_commands} actuators, joints {sim_joints[:8]}) is not the "
            f"model's ({len(model_joints)} actions on {model_joints[:8]}"
            f"{f', missing {missing[:8]}' if missing else ''}); point sim.yaml's model: at this robot's MJCF"
        )


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from offrl_robot.ros.policy_node import PolicyNode, make_executor
    from offrl_robot.ros.process import init_ros

    ros_args = _ros_args(args)
    context = rclpy.Context()
    init_ros(ros_args, context=context)
    executor = None
    nodes = []
    try:
        overrides = []
        if args.model:
            overrides.append(Parameter("model_path", value=str(args.model)))
        if args.allow_unvalidated:
            overrides.append(Parameter("allow_unvalidated", value=True))
        if args.sim:
            from offrl_robot.ros.sim_node import SimNode

            sim = SimNode(context=context)
            nodes.append(sim)
            # The policy follows the simulator's clock, so real_time_factor != 1 stays consistent.
            overrides.append(Parameter("use_sim_time", value=True))
        policy = PolicyNode(context=context, parameter_overrides=overrides)
        nodes.append(policy)
        if policy.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise policy.configure_error or ModelError("policy_node failed to configure (see the log above)")
        if args.sim:
            setup = policy.setup
            assert setup is not None
            check_sim_matches_model(
                sim.backend.joint_names, sim.backend.num_commands, setup.action_joints, ros_args[-1]
            )
        policy.trigger_activate()
        executor = make_executor(str(policy.get_parameter("executor").value), context=context)
        for node in nodes:
            executor.add_node(node)
        deadline = time.monotonic() + args.duration if args.duration > 0 else float("inf")
        try:
            while context.ok() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=min(0.1, max(0.0, deadline - time.monotonic())))
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        if context.ok():
            policy.trigger_deactivate()  # leaves the safe action on /cmd
            policy.flush_commands()
        print(policy.summary())
        if args.sim:
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in sim.last_metrics.items())
            print(f"sim: {metrics}, steps={sim.steps}, zero_control_steps={sim.stale_steps}")
    finally:
        for node in nodes:
            if executor is not None:
                executor.remove_node(node)
            node.destroy_node()
        if executor is not None:
            executor.shutdown()
        rclpy.try_shutdown(context=context)
    return 0

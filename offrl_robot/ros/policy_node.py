"""`policy_node`: run an exported ONNX policy on a robot, behind the SafetyFilter, as a ROS 2 lifecycle node.

Data path per control tick: latest `/joint_states` (mapped by joint *name*) + extra observation
topics (e.g. the goal) -> PolicyRuntime -> SafetyFilter -> `/cmd`. Everything that can go wrong
on a robot makes the tick publish the *safe action* instead of a policy action, and says why in
`/diagnostics`: a malformed or missing JointState, a stale one (the watchdog), NaN out of the
model, `/estop` (latched until `~/reset_estop`), deactivation.

Why the watchdog runs on the steady clock: with `use_sim_time` the control timer follows `/clock`;
if the simulator (or the robot driver publishing the clock) dies, simulated time stops, the
control timer stops, and a watchdog on that clock would never fire. The watchdog therefore
measures the age of the last JointState on the monotonic clock and, if the control tick has
not run, runs a tick itself, which then publishes the safe action.

Lifecycle: configure = load the model + card and check them against the parameters (refusing
a model whose card has no passing `validation:` block unless `allow_unvalidated`); activate =
start commanding (the SafetyFilter blends in from the safe action); deactivate = publish the
safe action and stop; cleanup = drop the model. `autostart: true` walks configure -> activate at
start-up, for use without a lifecycle manager.

Tick source: `timer` (default) ticks at the model's control rate; `joint_states` ticks on every
JointState (lowest latency when the robot or simulator already publishes at the control rate;
the steady-clock watchdog still guards against silence).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import rclpy
import rclpy.executors
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.publisher import Publisher
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from offrl_robot.errors import OffrlError
from offrl_robot.ros.diagnostics import (
    LEVEL_ERROR,
    LEVEL_OK,
    LEVEL_WARN,
    RateMeter,
    SlidingWindow,
    build_diagnostics,
)
from offrl_robot.ros.observation import ObservationAssembler, parse_extra_topics
from offrl_robot.ros.policy_setup import PolicySetup, load_policy_setup
from offrl_robot.ros.process import init_ros

NODE_NAME = "policy_node"

# name -> (default, description). The single list of parameters: declared here, documented in
# config/policy.yaml, checked by tests/test_launch_files.py. Default None marks a list parameter,
# declared with dynamic typing because a ROS parameter file cannot type an empty list and users
# write `[1, 2]` as often as `[1.0, 2.0]`; unset or `[]` means "not set".
PARAMETERS: dict[str, tuple[Any, str]] = {
    "model_path": ("", "exported policy (.onnx); its card NAME.card.yaml must sit beside it"),
    "card_path": ("", "model card; empty = NAME.card.yaml beside the model"),
    "allow_unvalidated": (False, "accept a model whose card has no passing validation: block"),
    "joint_names": (None, "the robot's joints; every joint the model uses must be among them"),
    "extra_observation_topics": (None, "PREFIX:/topic (geometry_msgs/PointStamped) serving PREFIX.x/y/z"),
    "control_rate_hz": (0.0, "0 = the model's control rate"),
    "tick_source": ("timer", "timer | joint_states"),
    "watchdog_timeout": (0.2, "seconds without a valid /joint_states before the safe action (steady clock)"),
    "safe_action": ("zero", "zero | hold"),
    "safe_action_vector": (None, "fixed safe action (one value per action); overrides safe_action"),
    "action_low": (None, "per-action lower limit (may only tighten the model's)"),
    "action_high": (None, "per-action upper limit (may only tighten the model's)"),
    "max_slew_rate": (None, "per-action max change per second (0 = unlimited)"),
    "blend_in_ticks": (10, "ticks to ramp from the safe action to the policy after activate/reset"),
    "command_type": ("float64_multi_array", "float64_multi_array | joint_trajectory"),
    "autostart": (False, "configure + activate at start-up (no lifecycle manager needed)"),
    "diagnostics_period": (0.5, "seconds between /diagnostics messages"),
    "executor": (
        "events",
        "events | single_threaded | multi_threaded (chosen by measurement: BENCHMARKS.md)",
    ),
}

EXECUTORS = ("events", "single_threaded", "multi_threaded")


def make_executor(kind: str, context: rclpy.context.Context | None = None) -> rclpy.executors.Executor:
    """The executor that spins the node (parameter `executor`; why the default: BENCHMARKS.md,
    "ROS 2 node latency"). Spin it with `spin_once` in a loop: rclpy 9.1's EventsExecutor.spin()
    never runs callbacks."""
    if kind == "single_threaded":
        return rclpy.executors.SingleThreadedExecutor(context=context)
    if kind == "multi_threaded":
        return rclpy.executors.MultiThreadedExecutor(num_threads=2, context=context)
    if kind == "events":
        from rclpy.experimental import EventsExecutor

        return EventsExecutor(context=context)
    raise OffrlError(f"policy parameter executor {kind!r} must be one of {EXECUTORS}")


class PolicyNode(LifecycleNode):
    """The guarded policy runner. See the module docstring for the why of each part."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for name, (default, description) in PARAMETERS.items():
            self.declare_parameter(
                name, default, ParameterDescriptor(description=description, dynamic_typing=default is None)
            )
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._setup: PolicySetup | None = None
        self.configure_error: OffrlError | None = None  # why the last configure failed
        self._assembler: ObservationAssembler | None = None
        self._active = False
        self._last_obs_time = -float("inf")  # monotonic time of the last *valid* JointState
        self._control_ticked = False  # a non-watchdog tick ran since the last watchdog check
        self._obs_errors = 0
        self._last_obs_error = ""
        self._last_obs_error_log = -float("inf")
        self._watchdog_tripped = False
        self._estop_requests = 0
        self._latency = SlidingWindow()
        self._rate = RateMeter()
        self._cmd_msg = Float64MultiArray()
        self._entities: list[Any] = []
        self._control_timer = None
        # Diagnostics exist in every lifecycle state: an operator must see why a node is not commanding.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(
            float(self.get_parameter("diagnostics_period").value),
            self._publish_diagnostics,
            clock=self._steady,
        )
        self._status_message = "unconfigured"

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            setup = load_policy_setup(self._read_parameters())
            assembler = ObservationAssembler(setup.observation_names, setup.extra_topics.keys())
        except OffrlError as err:
            # One line, naming the file and what to do: the operator's only clue.
            self.get_logger().error(f"configure failed: {err}")
            self._status_message = f"configure failed: {err}"
            self.configure_error = err
            return TransitionCallbackReturn.FAILURE
        self.configure_error = None
        self._setup = setup
        self._assembler = assembler
        self._no_action = np.full(len(setup.action_names), np.nan)
        self._cmd_pub = self.create_publisher(
            JointTrajectory if setup.command_type == "joint_trajectory" else Float64MultiArray, "/cmd", 10
        )
        self._entities = [
            self._cmd_pub,
            self.create_subscription(JointState, "/joint_states", self._on_joint_state, _joint_state_qos()),
            self.create_subscription(Bool, "/estop", self._on_estop, 10),
            self.create_service(Trigger, "~/reset_estop", self._on_reset_estop),
        ]
        latched = QoSProfile(
            depth=1,
            reliability=QoSReliabilityPolicy.RELIABLE,
            durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
        )
        for prefix, topic in setup.extra_topics.items():
            self._entities.append(
                self.create_subscription(
                    PointStamped, topic, lambda msg, p=prefix: self._on_point(p, msg), latched
                )
            )
        period = 1.0 / setup.control_rate_hz
        if setup.tick_source == "timer":
            self._control_timer = self.create_timer(period, self._control_tick)
            self._control_timer.cancel()
            self._entities.append(self._control_timer)
        # The steady-clock watchdog (see module docstring). Checked 10x per timeout but never
        # faster than the control rate: at 500 Hz a 500 Hz check would double the executor's work.
        check_period = max(period, setup.watchdog_timeout / 10.0)
        self._watchdog_timer = self.create_timer(check_period, self._watchdog_check, clock=self._steady)
        self._entities.append(self._watchdog_timer)
        self.get_logger().info(
            f"configured: model {setup.model_path} ({len(setup.observation_names)} obs -> "
            f"{len(setup.action_names)} actions at {setup.control_rate_hz:g} Hz, tick on {setup.tick_source}, "
            f"validation {setup.validation_summary})"
        )
        self._status_message = "configured (inactive): publishing nothing"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._setup is not None
        if not self._setup.safety.latched:  # an e-stop pressed while inactive stays latched
            self._setup.safety.reset()  # restart the blend-in from the safe action
        self._watchdog_tripped = False
        self._active = True
        if self._control_timer is not None:
            self._control_timer.reset()
        self.get_logger().info("activated: commanding /cmd")
        self._status_message = "active"
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_commanding("deactivated")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._status_message = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self.stop_commanding("shutting down")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self.stop_commanding("error")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def stop_commanding(self, why: str) -> None:
        """Leave the robot in the safe action: the last thing /cmd said must not be a policy action."""
        self._active = False
        if self._control_timer is not None:
            self._control_timer.cancel()
        if self._setup is not None:
            self._publish_command(self._setup.safe_command())
        self.get_logger().info(f"{why}: published the safe action, commanding stopped")
        self._status_message = f"{why} (inactive): safe action published"

    def _release(self) -> None:
        for entity in self._entities:
            self.destroy_entity(entity)
        self._entities = []
        self._control_timer = None
        self._setup = None
        self._assembler = None

    def destroy_entity(self, entity: Any) -> None:
        """Destroy a publisher/subscription/service/timer created at configure."""
        if isinstance(entity, Publisher):
            self.destroy_publisher(entity)
        elif isinstance(entity, Subscription):
            self.destroy_subscription(entity)
        elif isinstance(entity, Service):
            self.destroy_service(entity)
        elif isinstance(entity, Timer):
            self.destroy_timer(entity)

    # ---------------------------------------------------------------- inputs
    def _read_parameters(self) -> dict[str, Any]:
        params = {name: self.get_parameter(name).value for name in PARAMETERS}
        for name, (default, _) in PARAMETERS.items():
            if default is None:  # list parameter (see PARAMETERS)
                value = params[name]
                params[name] = (
                    [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
                )
        params["extra_topics"] = parse_extra_topics(params.pop("extra_observation_topics"))
        return params

    def _on_joint_state(self, msg: JointState) -> None:
        if self._assembler is None:
            return
        error = self._assembler.update_joint_state(msg.name, msg.position, msg.velocity, msg.effort)
        if error is None:
            self._last_obs_time = time.monotonic()
        else:
            self._note_obs_error(error)
        if self._active and self._setup is not None and self._setup.tick_source == "joint_states":
            self._control_tick()

    def _on_point(self, prefix: str, msg: PointStamped) -> None:
        if self._assembler is None:
            return
        p = msg.point
        error = self._assembler.update_extra(prefix, {"x": p.x, "y": p.y, "z": p.z})
        if error is not None:
            self._note_obs_error(error)

    def _note_obs_error(self, error: str) -> None:
        """Count every rejected message; log + publish diagnostics on a new reason or once a second
        (a driver sending NaN at 500 Hz must not flood the log)."""
        self._obs_errors += 1
        now = time.monotonic()
        if error != self._last_obs_error or now - self._last_obs_error_log > 1.0:
            self.get_logger().warning(f"observation rejected, publishing the safe action: {error}")
            self._last_obs_error, self._last_obs_error_log = error, now
            self._publish_diagnostics()

    def _on_estop(self, msg: Bool) -> None:
        if not msg.data or self._setup is None:
            return
        self._estop_requests += 1
        if not self._setup.safety.latched:
            self._setup.safety.estop()
            self.get_logger().warning("E-STOP latched: publishing the safe action until ~/reset_estop")
        if self._active:
            # Don't wait for the next tick: the safe action goes out now.
            self._control_tick()
        self._publish_diagnostics()

    def _on_reset_estop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._setup is None:
            response.success = False
            response.message = "node is not configured"
            return response
        was = self._setup.safety.latched
        self._setup.safety.reset()
        response.success = True
        response.message = (
            "e-stop released; blending in from the safe action" if was else "e-stop was not latched"
        )
        self.get_logger().info(response.message)
        self._publish_diagnostics()
        return response

    # ---------------------------------------------------------------- control
    def _watchdog_check(self) -> None:
        if not self._active or self._setup is None:
            return
        stale = time.monotonic() - self._last_obs_time > self._setup.watchdog_timeout
        control_ticked, self._control_ticked = self._control_ticked, False
        if stale and not self._watchdog_tripped:
            self._watchdog_tripped = True
            self.get_logger().warning(
                f"watchdog: no valid /joint_states for more than {self._setup.watchdog_timeout:g} s, "
                "publishing the safe action"
            )
            self._control_tick(from_watchdog=True)
            self._publish_diagnostics()
        elif stale and not control_ticked:
            # The control tick stopped (sim time froze, or no JointState to tick on): keep the
            # safe action going out, at the watchdog's check rate.
            self._control_tick(from_watchdog=True)

    def _control_tick(self, from_watchdog: bool = False) -> None:
        """One guarded tick: observation -> policy -> SafetyFilter -> /cmd."""
        setup, assembler = self._setup, self._assembler
        if not self._active or setup is None or assembler is None:
            return
        start = time.perf_counter()
        now = time.monotonic()
        fresh = now - self._last_obs_time <= setup.watchdog_timeout
        if fresh and self._watchdog_tripped:
            self._watchdog_tripped = False
            self.get_logger().info("watchdog: /joint_states back, policy resumes (blending in)")
            if not setup.safety.latched:
                setup.safety.reset()  # blend in again from the safe action
        age = now - self._last_obs_time
        observation = assembler.vector if assembler.error is None else None
        raw = setup.runtime.act(observation) if observation is not None and fresh else self._no_action
        command = setup.safety.step(raw, observation, age)
        self._publish_command(command)
        self._control_ticked = self._control_ticked or not from_watchdog
        self._latency.add(time.perf_counter() - start)
        self._rate.tick(now)

    def _publish_command(self, command: np.ndarray) -> None:
        assert self._setup is not None
        if self._setup.command_type == "joint_trajectory":
            self._cmd_pub.publish(self._trajectory(command))
        else:
            self._cmd_msg.data = command.tolist()
            self._cmd_pub.publish(self._cmd_msg)

    def _trajectory(self, command: np.ndarray) -> JointTrajectory:
        """One-point JointTrajectory reaching `command` one control period from now."""
        assert self._setup is not None
        msg = JointTrajectory()
        msg.joint_names = list(self._setup.action_joints)
        point = JointTrajectoryPoint()
        values = command.tolist()
        field = self._setup.action_field
        if field == "position":
            point.positions = values
        elif field == "velocity":
            point.velocities = values
        else:
            point.effort = values
        nanos = int(self._setup.period * 1e9)
        point.time_from_start.sec, point.time_from_start.nanosec = divmod(nanos, 1_000_000_000)
        msg.points = [point]
        return msg

    # ---------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        values: dict[str, object] = {"lifecycle_state": self._state_label(), "status": self._status_message}
        level, message = LEVEL_OK, self._status_message
        setup = self._setup
        if setup is not None:
            p50, p99, pmax = self._latency.percentiles()
            obs_age = now - self._last_obs_time
            obs_error = self._assembler.error if self._assembler is not None else None
            values.update(
                {
                    "control_rate_target_hz": setup.control_rate_hz,
                    "control_rate_achieved_hz": self._rate.rate_hz(now) if self._active else 0.0,
                    "tick_latency_p50_us": p50 * 1e6,
                    "tick_latency_p99_us": p99 * 1e6,
                    "tick_latency_max_us": pmax * 1e6,
                    "observation_age_s": obs_age if np.isfinite(obs_age) else -1.0,
                    "watchdog": "tripped" if self._watchdog_tripped else "ok",
                    "watchdog_timeout_s": setup.watchdog_timeout,
                    "estop": "latched" if setup.safety.latched else "clear",
                    "observation_error": obs_error or "",
                    "observation_errors_total": self._obs_errors,
                    "estop_requests": self._estop_requests,
                    "model": str(setup.model_path),
                    "validation": setup.validation_summary,
                }
            )
            for kind, count in setup.safety.counters.items():
                values[f"interventions.{kind}"] = count
            if self._active:
                if setup.safety.latched:
                    level, message = LEVEL_ERROR, "e-stop latched: safe action until ~/reset_estop"
                elif self._watchdog_tripped:
                    level, message = (
                        LEVEL_ERROR,
                        f"watchdog tripped: no valid /joint_states for {obs_age:.3g} s: safe action",
                    )
                elif obs_error is not None:
                    level, message = LEVEL_ERROR, f"observation invalid: {obs_error}: safe action"
                else:
                    level, message = LEVEL_OK, "active: commanding"
        if not self._active:
            # Not commanding: worth a look (WARN), an alarm only if configuring failed.
            level = LEVEL_ERROR if self._status_message.startswith("configure failed") else LEVEL_WARN
        self._diag_pub.publish(
            build_diagnostics(
                self.get_clock().now().to_msg(),
                f"{self.get_name()}: control",
                self.get_name(),
                level,
                message,
                values,
            )
        )

    def summary(self) -> str:
        """One line for the end of a run: ticks, interventions, observation errors, tick latency."""
        p50, p99, pmax = self._latency.percentiles()
        counters = dict(self._setup.safety.counters) if self._setup is not None else {}
        ticks = counters.pop("ticks", 0)
        fired = ", ".join(f"{k}={v}" for k, v in counters.items() if v) or "none"
        return (
            f"policy: {ticks} ticks, interventions: {fired}, observation errors: {self._obs_errors}, "
            f"tick latency p50 {p50 * 1e6:.0f} us / p99 {p99 * 1e6:.0f} us / max {pmax * 1e6:.0f} us"
        )

    @property
    def is_active(self) -> bool:
        return self._active

    def _state_label(self) -> str:
        if self._active:
            return "active"
        return "inactive" if self._setup is not None else "unconfigured"


def _joint_state_qos() -> QoSProfile:
    """Best effort, shallow: matches both reliable and sensor-data (best-effort) drivers; only the
    newest state matters, an old one is never worth a retransmission."""
    return qos_profile_sensor_data


def main(argv: Sequence[str] | None = None) -> int:
    """Console script: `policy_node --ros-args --params-file config/policy.yaml [-p model_path:=...]`.

    SIGINT/SIGTERM: the safe action goes out on a live context first (see ros/process.py).
    """
    init_ros(sys.argv if argv is None else argv)
    node = PolicyNode()
    try:
        executor = make_executor(str(node.get_parameter("executor").value))
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error(
                    "autostart: the node could not be configured (error above); exiting with status 2"
                )
                return 2
            node.trigger_activate()
        executor.add_node(node)
        # spin_once in a loop, not spin(): rclpy 9.1's EventsExecutor.spin() never runs callbacks
        # (measured; its spin_once does), and for the other executors the two are equivalent.
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except OffrlError as err:
        node.get_logger().error(str(err))
        return 2
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        if node.is_active and rclpy.ok():
            node.stop_commanding("shutting down")
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


__all__ = ["NODE_NAME", "PARAMETERS", "PolicyNode", "main"]

if __name__ == "__main__":
    sys.exit(main())

"""`policy_node`: run an exported ONNX policy on a robot, behind the SafetyFilter, as a ROS 2 lifecycle node.

Data path per control tick: latest `/joint_states` (mapped by joint *name*, several publishers
allowed) + extra observation topics (e.g. the goal) -> PolicyRuntime -> SafetyFilter -> `/cmd`.
Everything that can go wrong on a robot makes the tick publish the *safe action* instead of a
policy action, and says why in `/diagnostics` (WARN when some ticks were the safe action, ERROR
when all were): a malformed or missing JointState, a stale one (the watchdog; header stamps
from the future or older than the watchdog), NaN or overflow in the observation or the model
output, an inference slower than `max_inference_s`, `/estop` (latched until `~/reset_estop`),
deactivation.

Threads, and why: the control loop runs on the node's executor; a *guard* thread with its own
small node (`<name>_guard`) and executor serves `/estop`, the optional e-stop heartbeat and the
inference deadline. A slow or hung model blocks only the control thread, so an e-stop is latched
and the safe action published at once, and a tick whose inference overruns its budget is
replaced by the safe action at the deadline (its late result is discarded). A callback group on
a MultiThreadedExecutor would give the same separation, but that executor stalls on 2 cores
(BENCHMARKS.md, "ROS 2 node latency"); one lock guards the SafetyFilter and every /cmd publish.

E-stop latch: it survives deactivate -> cleanup -> configure -> activate and a process restart,
because it is persisted in a small state file (`estop_state_file`, default
`$ROS_HOME/offrl_robot/<node>.estop_latched`); only `~/reset_estop` clears it. `/estop` is heard
with reliable + transient-local QoS (an e-stop published before this node started still
arrives) and also best-effort + volatile (a publisher with other QoS is never incompatible).
Such a latched e-stop arrives only once discovery has matched its publisher, which on a loaded
machine can take longer than configure + activate; so for `estop_discovery_s` (1 s) after start-up
the node sends the safe action until the first /estop message arrives, and says so on /diagnostics.

Position commands: the safe action is the *measured* joint position ("hold"), never zero;
nothing is published before the first measurement, and every blend-in starts from it.

Why the watchdog runs on the steady clock: with `use_sim_time` the control timer follows `/clock`;
if the simulator (or the robot driver publishing the clock) dies, simulated time stops, the
control timer stops, and a watchdog on that clock would never fire. The watchdog therefore
measures the age of the last JointState on the monotonic clock and, if the control tick has
not run, runs a tick itself, which then publishes the safe action. The observation's age for
the filter also uses the JointState header stamps (`use_header_stamp`), per joint.

Parameters: every safety parameter is read-only after start-up (`ros2 param set` is refused);
`model_path`, `card_path`, `joint_names` and `extra_observation_topics` may be set while the node
is unconfigured (they are read at configure). Every set, accepted or refused, is logged.

Lifecycle: configure = load the model + card and check them against the parameters (refusing
a model whose card has no verdict for these exact bytes unless `allow_unvalidated`); activate =
start commanding (the SafetyFilter blends in from the safe action); deactivate = publish the
safe action and stop; cleanup = drop the model. `autostart: true` walks configure -> activate at
start-up, for use without a lifecycle manager.

Tick source: `timer` (default) ticks at the model's control rate; `joint_states` ticks on every
JointState (lowest latency when the robot or simulator already publishes at the control rate;
the slew limit applies per second of measured time, so a faster tick does not ramp faster).
"""

from __future__ import annotations

import array
import collections
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import rclpy.executors
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from offrl_robot.atomic import atomic_write_text
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
from offrl_robot.ros.process import init_ros, interrupted, wants_help
from offrl_robot.ros.process import usage as process_usage
from offrl_robot.safety import Intervention

NODE_NAME = "policy_node"

# name -> (default, description). The single list of parameters: declared here, documented in
# config/policy.yaml, checked by tests/test_launch_files.py. Default None marks a list parameter,
# declared with dynamic typing because a ROS parameter file cannot type an empty list and users
# write `[1, 2]` as often as `[1.0, 2.0]`; unset or `[]` means "not set".
PARAMETERS: dict[str, tuple[Any, str]] = {
    "model_path": ("", "exported policy (.onnx); its card NAME.card.yaml must sit beside it"),
    "card_path": ("", "model card; empty = NAME.card.yaml beside the model"),
    "allow_unvalidated": (False, "accept a model whose card has no verdict for its exact bytes"),
    "min_thresholds": (
        None,
        "floor on the validation thresholds, e.g. ['success_rate>=0.8', 'nan_events<=0', "
        "'intervention_rate<=0.05'] (unset = that default)",
    ),
    "joint_names": (None, "the robot's joints; every joint the model uses must be among them"),
    "extra_observation_topics": (None, "PREFIX:/topic (geometry_msgs/PointStamped) serving PREFIX.x/y/z"),
    "control_rate_hz": (0.0, "0 = the model's control rate; else in [1, 2000] Hz"),
    "tick_source": ("timer", "timer | joint_states"),
    "watchdog_timeout": (0.2, "seconds without a valid /joint_states before the safe action (steady clock)"),
    "use_header_stamp": (
        "auto",
        "auto | true | false: observation age from JointState header stamps (auto: when they are plausible)",
    ),
    "safe_action": ("auto", "auto | zero | hold (auto: hold for position commands, zero otherwise)"),
    "safe_action_vector": (None, "fixed safe action (one value per action); overrides safe_action"),
    "action_low": (None, "per-action lower limit (may only tighten the model's)"),
    "action_high": (None, "per-action upper limit (may only tighten the model's)"),
    "max_slew_rate": (None, "per-action max change per second (> 0; .inf = no limit); required"),
    "blend_in_ticks": (10, "ticks to ramp from the safe action to the policy after activate/reset"),
    "max_inference_s": (0.0, "inference budget per tick (s); slower = safe action; 0 = two control periods"),
    "estop_heartbeat_timeout": (0.0, "s of /estop silence that latch the e-stop while active; 0 = off"),
    "estop_discovery_s": (
        1.0,
        "s after start-up of safe action until the first /estop message (a latched e-stop pressed "
        "before this node started may still be in discovery); 0 = off",
    ),
    "estop_state_file": (
        "",
        "where the e-stop latch persists; '' = $ROS_HOME/offrl_robot/<node>.estop_latched",
    ),
    "command_type": ("float64_multi_array", "float64_multi_array | joint_trajectory"),
    "autostart": (False, "configure + activate at start-up (no lifecycle manager needed)"),
    "diagnostics_period": (0.5, "seconds between /diagnostics messages"),
    "executor": (
        "events",
        "events | single_threaded | multi_threaded (chosen by measurement: BENCHMARKS.md)",
    ),
}

# Read at configure and harmless to change while unconfigured; everything else is read-only.
SETTABLE_WHILE_UNCONFIGURED = ("model_path", "card_path", "joint_names", "extra_observation_topics")

EXECUTORS = ("events", "single_threaded", "multi_threaded")
# Shortest period of the guard thread's checks (inference deadline, heartbeat): a faster Python
# timer would compete with the control thread for the GIL at high control rates.
MIN_GUARD_PERIOD_S = 0.005

_UNTRUSTED = int(Intervention.ESTOP | Intervention.STALE_OR_BAD_OBSERVATION | Intervention.BAD_ACTION)


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


def _as_list(value: Any) -> list[Any]:
    """A list parameter's value as a list: rclpy gives lists, tuples or `array.array` (a double
    array set at runtime); a lone value is a one-element list; None/unset is []."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, array.array)):
        return list(value)
    return [value]


def default_estop_state_file(node_fqn: str) -> Path:
    """$ROS_HOME/offrl_robot/<node>.estop_latched (ROS_HOME defaults to ~/.ros, as in ROS 2)."""
    ros_home = Path(os.environ.get("ROS_HOME") or Path.home() / ".ros").expanduser()
    return ros_home / "offrl_robot" / f"{node_fqn.strip('/').replace('/', '__') or NODE_NAME}.estop_latched"


class PolicyNode(LifecycleNode):
    """The guarded policy runner. See the module docstring for the why of each part."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for name, (default, description) in PARAMETERS.items():
            self.declare_parameter(
                name,
                default,
                ParameterDescriptor(
                    description=description,
                    # lists: see PARAMETERS; use_header_stamp: YAML reads `true` as a bool
                    dynamic_typing=default is None or name == "use_header_stamp",
                    read_only=name not in SETTABLE_WHILE_UNCONFIGURED,
                ),
            )
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        # One lock for the SafetyFilter and every /cmd publish: the control and guard threads share them.
        self._lock = threading.RLock()
        self._setup: PolicySetup | None = None
        self.configure_error: OffrlError | None = None  # why the last configure failed
        self._assembler: ObservationAssembler | None = None
        self._active = False
        self._control_ticked = False  # a non-watchdog tick ran since the last watchdog check
        self._obs_errors = 0
        self._last_obs_error = ""
        self._last_obs_error_log = -float("inf")
        self._watchdog_tripped = False
        self._estop_requests = 0
        self._estop_reason = ""
        self._last_estop_msg = -float("inf")  # monotonic time of the last /estop message (heartbeat)
        self._latency = SlidingWindow()
        self._inference = SlidingWindow()
        self._rate = RateMeter()
        self._cmd_msg = Float64MultiArray()
        self._entities: list[Any] = []
        self._control_timer = None
        self._last_command_time: float | None = None  # monotonic time of the last /cmd
        self._blend_from_measured = False  # the next measured position restarts the blend-in
        self._header_mode = "receipt"  # receipt | header (decided per configure; see _observation_age)
        self._header_pending = False  # use_header_stamp auto: not decided yet
        self._header_note = ""
        # the tick whose inference is in flight: (sequence, start time); the guard expires it at the deadline
        self._tick_seq = 0
        self._inflight: tuple[int, float] | None = None
        self._expired_seq = -1
        self._overruns = 0
        # what the ticks since the last periodic /diagnostics were: policy output or the safe action (and why)
        self._window_policy = 0
        self._window_safe = 0
        self._window_waiting = 0
        self._window_reasons: collections.Counter[str] = collections.Counter()
        state_file = str(self.get_parameter("estop_state_file").value)
        self._estop_file = (
            Path(state_file).expanduser()
            if state_file
            else default_estop_state_file(self.get_fully_qualified_name())
        )
        self._estop_latched = self._estop_file.is_file()  # a latch from before a restart holds
        if self._estop_latched:
            self._estop_reason = f"latched before this process started ({self._estop_file})"
            self.get_logger().warning(
                f"E-STOP latched from a previous run ({self._estop_file}): safe action until ~/reset_estop"
            )
        # Diagnostics exist in every lifecycle state: an operator must see why a node is not commanding.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(
            float(self.get_parameter("diagnostics_period").value),
            self._periodic_diagnostics,
            clock=self._steady,
        )
        self._status_message = "unconfigured"
        self._start_guard()

    # ---------------------------------------------------------------- parameters
    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Settable parameters: only while unconfigured, with the right type (read-only ones never
        get here: rclpy refuses them first, and `set_parameters_atomically` logs that)."""
        for param in parameters:
            if param.name not in SETTABLE_WHILE_UNCONFIGURED:
                continue
            if self._setup is not None:
                return SetParametersResult(
                    successful=False,
                    reason=f"{param.name} is read at configure; clean the node up (cleanup) before changing it",
                )
            value = param.value
            if param.name in ("model_path", "card_path"):
                ok = isinstance(value, str)
            else:
                ok = value is None or all(isinstance(v, str) for v in _as_list(value))
            if not ok:
                return SetParametersResult(
                    successful=False,
                    reason=f"{param.name} must be a string{'' if 'path' in param.name else ' list'}",
                )
        return SetParametersResult(successful=True)

    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        """Every remote `ros2 param set` lands here: log what was asked and what became of it."""
        result = super().set_parameters_atomically(parameter_list)
        asked = ", ".join(f"{p.name}={p.value!r}" for p in parameter_list)
        if result.successful:
            self.get_logger().info(f"parameter set: {asked}")
        else:
            self.get_logger().warning(f"parameter set refused: {asked}: {result.reason}")
        return result

    def _read_parameters(self) -> dict[str, Any]:
        params = {name: self.get_parameter(name).value for name in PARAMETERS}
        for name, (default, _) in PARAMETERS.items():
            if default is None:  # list parameter (see PARAMETERS)
                params[name] = _as_list(params[name])
        params["extra_topics"] = parse_extra_topics(params.pop("extra_observation_topics"))
        return params

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            setup = load_policy_setup(self._read_parameters())
            assembler = ObservationAssembler(
                setup.observation_names, setup.extra_topics.keys(), setup.hold_joints
            )
        except OffrlError as err:
            # One line, naming the file and what to do: the operator's only clue.
            self.get_logger().error(f"configure failed: {err}")
            self._status_message = f"configure failed: {err}"
            self.configure_error = err
            return TransitionCallbackReturn.FAILURE
        self.configure_error = None
        with self._lock:
            if self._estop_latched:  # the persisted latch holds across cleanup/configure and restarts
                setup.safety.estop()
            self._setup = setup
            self._assembler = assembler
        self._no_action = np.full(len(setup.action_names), np.nan)
        self._header_mode = "header" if setup.use_header_stamp == "true" else "receipt"
        self._header_pending = setup.use_header_stamp == "auto"
        self._header_note = {"true": "header (forced)", "false": "receipt (forced)"}.get(
            setup.use_header_stamp, "receipt (auto: no plausible stamp yet)"
        )
        self._cmd_pub = self.create_publisher(
            JointTrajectory if setup.command_type == "joint_trajectory" else Float64MultiArray, "/cmd", 10
        )
        self._entities = [
            self._cmd_pub,
            self.create_subscription(
                JointState, "/joint_states", self._on_joint_state, qos_profile_sensor_data
            ),
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
        self._reset_guard_timer(setup)
        self.get_logger().info(
            f"configured: model {setup.model_path} ({len(setup.observation_names)} obs -> "
            f"{len(setup.action_names)} actions at {setup.control_rate_hz:g} Hz, tick on {setup.tick_source}, "
            f"safe action {setup.safety.config.safe_action}, inference budget {setup.max_inference_s * 1e3:.3g} ms, "
            f"validation {setup.validation_summary})"
        )
        self._status_message = "configured (inactive): publishing nothing"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._setup is not None and self._assembler is not None
        with self._lock:
            if not self._setup.safety.latched:  # an e-stop pressed while inactive stays latched
                self._restart_blend_in()
            self._watchdog_tripped = False
            self._last_command_time = None
            self._last_estop_msg = time.monotonic()  # the heartbeat gets one timeout from now
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
        with self._lock:
            self._active = False
            if self._control_timer is not None:
                self._control_timer.cancel()
            sent = self._publish_safe_action() if self._setup is not None else False
        self.get_logger().info(
            f"{why}: {'published the safe action' if sent else 'sent nothing (no measured position yet)'}, "
            "commanding stopped"
        )
        self._status_message = f"{why} (inactive): safe action published"

    def flush_commands(self, timeout_s: float = 0.5) -> None:
        """Wait until subscribers acknowledged every /cmd (reliable QoS), so the safe action sent on
        shutdown is delivered before the process exits, not dropped with it."""
        publisher = getattr(self, "_cmd_pub", None)
        if publisher is not None and self._setup is not None:
            publisher.wait_for_all_acked(Duration(nanoseconds=int(timeout_s * 1e9)))

    def _release(self) -> None:
        with self._lock:
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

    def destroy_node(self) -> None:
        self._stop_guard()
        super().destroy_node()

    # ---------------------------------------------------------------- guard thread
    def _start_guard(self) -> None:
        """The guard's own node + executor + thread: /estop, the heartbeat and the inference deadline
        never wait for the control thread (module docstring)."""
        self._guard_started = time.monotonic()
        self._estop_heard = False
        self._guard_node = Node(
            f"{self.get_name()}_guard",
            namespace=self.get_namespace(),
            context=self.context,
            cli_args=["--ros-args", "-r", f"__node:={self.get_name()}_guard"],
            start_parameter_services=False,
        )
        reliable_latched = QoSProfile(
            depth=10,
            reliability=QoSReliabilityPolicy.RELIABLE,
            durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
        )
        any_publisher = QoSProfile(
            depth=10, reliability=QoSReliabilityPolicy.BEST_EFFORT, durability=QoSDurabilityPolicy.VOLATILE
        )
        # Each publisher matches one of the two; the other reports an incompatible QoS, which is
        # expected here and so logged at debug level only (rclpy would warn once per publisher).
        quiet = SubscriptionEventCallbacks(
            incompatible_qos=lambda event: self._guard_node.get_logger().debug(f"/estop QoS: {event}")
        )
        for qos in (reliable_latched, any_publisher):
            self._guard_node.create_subscription(Bool, "/estop", self._on_estop, qos, event_callbacks=quiet)
        self._guard_timer = self._guard_node.create_timer(0.05, self._guard_check, clock=self._steady)
        self._guard_executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self._guard_executor.add_node(self._guard_node)
        self._guard_stop = threading.Event()
        self._guard_thread = threading.Thread(target=self._guard_spin, name="policy_node_guard", daemon=True)
        self._guard_thread.start()

    def _guard_spin(self) -> None:
        while not self._guard_stop.is_set() and self.context.ok():
            try:
                self._guard_executor.spin_once(timeout_sec=0.05)
            except (rclpy.executors.ExternalShutdownException, rclpy.executors.ShutdownException):
                return

    def _stop_guard(self) -> None:
        if getattr(self, "_guard_thread", None) is None:
            return
        self._guard_stop.set()
        self._guard_thread.join(timeout=2.0)
        self._guard_executor.remove_node(self._guard_node)
        self._guard_executor.shutdown(timeout_sec=0.5)
        self._guard_node.destroy_node()
        self._guard_thread = None

    def _reset_guard_timer(self, setup: PolicySetup) -> None:
        """Check the inference deadline at half the budget (and the heartbeat at a quarter of its
        timeout), never faster than MIN_GUARD_PERIOD_S."""
        period = setup.max_inference_s / 2.0
        if setup.estop_heartbeat_timeout > 0:
            period = min(period, setup.estop_heartbeat_timeout / 4.0)
        period = max(period, MIN_GUARD_PERIOD_S)
        self._guard_node.destroy_timer(self._guard_timer)
        self._guard_timer = self._guard_node.create_timer(period, self._guard_check, clock=self._steady)

    def _guard_check(self) -> None:
        now = time.monotonic()
        with self._lock:
            setup = self._setup
            if setup is None or not self._active:
                return
            timeout = setup.estop_heartbeat_timeout
            if timeout > 0 and now - self._last_estop_msg > timeout and not setup.safety.latched:
                self._latch_estop(
                    f"e-stop heartbeat lost: no /estop message for {now - self._last_estop_msg:.3g} s"
                )
            inflight = self._inflight
            if inflight is not None and now - inflight[1] > setup.max_inference_s:
                # The model is still computing: the safe action goes out now, its late result is dropped.
                if self._expired_seq != inflight[0]:
                    self._expired_seq = inflight[0]
                    self._overruns += 1
                    self.get_logger().warning(
                        f"inference exceeded {setup.max_inference_s * 1e3:.3g} ms: safe action published, "
                        "the late result will be discarded"
                    )
                self._publish_safe_action()
                self._note_tick(
                    safe=True, reason=f"inference slower than {setup.max_inference_s * 1e3:.3g} ms"
                )

    # ---------------------------------------------------------------- inputs
    def _on_joint_state(self, msg: JointState) -> None:
        assembler = self._assembler
        if assembler is None:
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        error = assembler.update_joint_state(
            msg.name, msg.position, msg.velocity, msg.effort, received=time.monotonic(), stamp=stamp
        )
        if error is not None:
            self._note_obs_error(error)
        elif self._header_pending:
            self._decide_header_mode(stamp)
        if self._active and self._setup is not None and self._setup.tick_source == "joint_states":
            self._control_tick()

    def _decide_header_mode(self, stamp: float) -> None:
        """`use_header_stamp: auto`: use header stamps once one is plausible (non-zero and within
        the watchdog of this node's clock, which must be running). Decided once per configure."""
        now = self.get_clock().now().nanoseconds * 1e-9
        if now <= 0.0:
            return  # use_sim_time and no /clock yet: decide later
        assert self._setup is not None
        self._header_pending = False
        if stamp > 0.0 and abs(now - stamp) <= self._setup.watchdog_timeout:
            self._header_mode, self._header_note = "header", "header (auto: stamps plausible)"
            self.get_logger().info("observation age: from JointState header stamps (plausible)")
        else:
            self._header_note = f"receipt (auto: stamp {stamp:.6g} s vs clock {now:.6g} s is implausible)"
            self.get_logger().warning(
                f"JointState header stamps look implausible (stamp {stamp:.6g} s, clock {now:.6g} s): "
                "observation age uses receipt time"
            )

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

    # ---------------------------------------------------------------- e-stop
    def _on_estop(self, msg: Bool) -> None:
        """Guard thread. True latches (and the safe action goes out now); every message, True or
        False, is a heartbeat of the e-stop source."""
        with self._lock:
            self._last_estop_msg = time.monotonic()
            self._estop_heard = True
            if msg.data:
                self._estop_requests += 1
                if not self._estop_latched or (self._setup is not None and not self._setup.safety.latched):
                    self._latch_estop("/estop")
        self._publish_diagnostics()

    def _latch_estop(self, reason: str) -> None:
        """Latch in the filter AND on disk (survives cleanup/configure and a restart); publish the
        safe action at once when commanding. Caller holds the lock."""
        first = not self._estop_latched
        self._estop_latched, self._estop_reason = True, reason
        try:
            atomic_write_text(self._estop_file, f"latched {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {reason}\n")
        except OSError as err:
            self.get_logger().error(
                f"cannot persist the e-stop latch to {self._estop_file} ({err}); latched in memory"
            )
        if self._setup is not None:
            self._setup.safety.estop()
            if self._active:
                self._publish_safe_action()
                self._note_tick(safe=True, reason="e-stop latched")
        if first:
            self.get_logger().warning(
                f"E-STOP latched ({reason}): publishing the safe action until ~/reset_estop"
            )

    def _on_reset_estop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            if self._setup is None:
                response.success = False
                response.message = "node is not configured"
                return response
            was = self._estop_latched or self._setup.safety.latched
            try:
                self._estop_file.unlink(missing_ok=True)
            except OSError as err:
                response.success = False
                response.message = (
                    f"cannot clear the persisted latch {self._estop_file} ({err}); still latched"
                )
                return response
            self._estop_latched, self._estop_reason = False, ""
            self._last_estop_msg = time.monotonic()
            self._restart_blend_in()
        response.success = True
        response.message = (
            "e-stop released; blending in from the safe action" if was else "e-stop was not latched"
        )
        self.get_logger().info(response.message)
        self._publish_diagnostics()
        return response

    def _restart_blend_in(self) -> None:
        """Reset the filter (releases its latch, restarts the blend-in) from the measured position
        when commanding positions; without one yet, the first measurement restarts it. Caller holds the lock."""
        assert self._setup is not None and self._assembler is not None
        measured = self._assembler.hold_positions
        self._setup.safety.reset(initial_command=measured)
        self._blend_from_measured = self._setup.hold_joints is not None and measured is None

    # ---------------------------------------------------------------- control
    def _observation_age(self, now: float) -> float:
        """Age (s) of the oldest observed joint: steady-clock receipt age, and with header stamps
        the node clock minus the stamp too (the larger wins). A stamp more than one control period
        in the future is a clock fault: -1 (stale); within one period it counts as age 0 (the sim
        publishes the state just before its clock)."""
        assert self._assembler is not None and self._setup is not None
        if not self._assembler.joint_names:
            return 0.0  # the model observes no joint: nothing on /joint_states can be stale
        received, stamp = self._assembler.oldest_update()
        age = now - received
        if self._header_mode == "header":
            header_age = self.get_clock().now().nanoseconds * 1e-9 - stamp
            if not math.isfinite(header_age) or header_age < -self._setup.period:
                return -1.0
            age = max(age, header_age)
        return age

    def _watchdog_check(self) -> None:
        if not self._active or self._setup is None or self._assembler is None:
            return
        stale = time.monotonic() - self._assembler.oldest_update()[0] > self._setup.watchdog_timeout
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
        age = self._observation_age(now)
        fresh = 0.0 <= age <= setup.watchdog_timeout
        if fresh and self._watchdog_tripped:
            self._watchdog_tripped = False
            self.get_logger().info("watchdog: /joint_states back, policy resumes (blending in)")
            if not setup.safety.latched:
                with self._lock:
                    self._restart_blend_in()  # blend in again from the safe action
        measured = assembler.hold_positions
        if setup.hold_joints is not None and measured is None:
            # position commands and the arm's position unknown: any command could move it; send none
            self._note_tick(safe=None, reason="waiting for the measured position of every commanded joint")
            return
        if self._blend_from_measured:
            with self._lock:
                setup.safety.reset(initial_command=measured)
                self._blend_from_measured = False
        observation = assembler.vector if assembler.error is None else None
        raw, overran, seq = self._no_action, False, -1
        # Just started and nothing heard on /estop yet: an e-stop latched (transient local) before
        # this process started may still be in discovery, so no policy output goes out yet.
        discovering = not self._estop_heard and now - self._guard_started < setup.estop_discovery_s
        if observation is not None and fresh and not setup.safety.latched and not discovering:
            with self._lock:
                self._tick_seq += 1
                seq = self._tick_seq
                self._inflight = (seq, now)
            t0 = time.perf_counter()
            raw = setup.runtime.act(observation)
            elapsed = time.perf_counter() - t0
            self._inference.add(elapsed)
            if elapsed > setup.max_inference_s:
                raw, overran = self._no_action, True  # too late to be this tick's action
        with self._lock:
            if seq >= 0:
                self._inflight = None
                if self._expired_seq == seq:
                    return  # the guard already sent the safe action for this tick at the deadline
                if overran:
                    self._overruns += 1
            if self._setup is not setup or not self._active:
                return  # deactivated or cleaned up while the model was computing
            dt = None if self._last_command_time is None else now - self._last_command_time
            command = setup.safety.step(raw, observation, age, dt=dt, hold_reference=measured)
            self._publish_command(command, now)
            flags = setup.safety.last_flags
        if discovering and not flags & Intervention.ESTOP:
            self._note_tick(
                safe=True,
                reason=f"waiting up to {setup.estop_discovery_s:g} s after start-up for /estop publishers",
            )
        elif flags & _UNTRUSTED or overran:
            self._note_tick(safe=True, reason=self._safe_reason(flags, overran, age, assembler.error))
        else:
            self._note_tick(safe=False)
        self._control_ticked = self._control_ticked or not from_watchdog
        self._latency.add(time.perf_counter() - start)
        self._rate.tick(now)

    def _safe_reason(self, flags: int, overran: bool, age: float, obs_error: str | None) -> str:
        """Why this tick sent the safe action, for /diagnostics."""
        assert self._setup is not None
        if flags & Intervention.ESTOP:
            return f"e-stop latched ({self._estop_reason or '/estop'})"
        if overran:
            return f"inference slower than {self._setup.max_inference_s * 1e3:.3g} ms"
        if obs_error is not None:
            return f"observation invalid: {obs_error}"
        if flags & Intervention.STALE_OR_BAD_OBSERVATION:
            if age < 0:
                return "observation stamped in the future (clock fault)"
            return f"observation stale ({age:.3g} s > {self._setup.watchdog_timeout:g} s)"
        return "model output not finite (NaN/inf)"

    def _note_tick(self, safe: bool | None, reason: str = "") -> None:
        """Count a tick for the diagnostics window: policy output (False), safe action (True) or
        nothing sent (None, e.g. waiting for the first measured position)."""
        with self._lock:
            if safe is False:
                self._window_policy += 1
                return
            if safe is None:
                self._window_waiting += 1
            else:
                self._window_safe += 1
            self._window_reasons[reason] += 1

    def _publish_safe_action(self) -> bool:
        """Send the safe action through the filter (slew limit still holds); False when it cannot
        be known (position commands before the first measurement). Caller holds the lock."""
        assert self._setup is not None
        measured = self._assembler.hold_positions if self._assembler is not None else None
        if self._setup.hold_joints is not None and measured is None:
            return False
        self._publish_command(self._setup.safe_command(hold_reference=measured), time.monotonic())
        return True

    def _publish_command(self, command: np.ndarray, now: float) -> None:
        assert self._setup is not None
        if self._setup.command_type == "joint_trajectory":
            self._cmd_pub.publish(self._trajectory(command))
        else:
            self._cmd_msg.data = command.tolist()
            self._cmd_pub.publish(self._cmd_msg)
        self._last_command_time = now

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
    def _periodic_diagnostics(self) -> None:
        self._publish_diagnostics()
        with self._lock:
            self._window_policy, self._window_safe, self._window_waiting = 0, 0, 0
            self._window_reasons.clear()

    def _publish_diagnostics(self) -> None:
        with self._lock:
            level, message, values = self._diagnostic_status()
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

    def _diagnostic_status(self) -> tuple[bytes, str, dict[str, object]]:
        """Level, message and values. Never OK while ticks were the safe action: WARN when some
        ticks in the window were, ERROR when all were (or the e-stop/watchdog holds)."""
        now = time.monotonic()
        values: dict[str, object] = {
            "lifecycle_state": self._state_label(),
            "status": self._status_message,
            "estop": "latched" if self._estop_latched else "clear",
            "estop_reason": self._estop_reason,
            "estop_state_file": str(self._estop_file),
        }
        level, message = LEVEL_OK, self._status_message
        setup = self._setup
        if setup is not None and self._assembler is not None:
            p50, p99, pmax = self._latency.percentiles()
            i50, i99, imax = self._inference.percentiles()
            obs_age = now - self._assembler.oldest_update()[0]
            obs_error = self._assembler.error
            reasons = "; ".join(f"{why} ({n})" for why, n in self._window_reasons.most_common(3))
            values.update(
                {
                    "control_rate_target_hz": setup.control_rate_hz,
                    "control_rate_achieved_hz": self._rate.rate_hz(now) if self._active else 0.0,
                    "tick_latency_p50_us": p50 * 1e6,
                    "tick_latency_p99_us": p99 * 1e6,
                    "tick_latency_max_us": pmax * 1e6,
                    "inference_p50_us": i50 * 1e6,
                    "inference_p99_us": i99 * 1e6,
                    "inference_max_us": imax * 1e6,
                    "inference_budget_us": setup.max_inference_s * 1e6,
                    "inference_overruns": self._overruns,
                    "observation_age_s": obs_age if np.isfinite(obs_age) else -1.0,
                    "observation_age_source": self._header_note,
                    "watchdog": "tripped" if self._watchdog_tripped else "ok",
                    "watchdog_timeout_s": setup.watchdog_timeout,
                    "observation_error": obs_error or "",
                    "observation_errors_total": self._obs_errors,
                    "estop_requests": self._estop_requests,
                    "estop_heartbeat_timeout_s": setup.estop_heartbeat_timeout,
                    "estop_discovery_s": setup.estop_discovery_s,
                    "safe_action": str(setup.safety.config.safe_action),
                    "ticks_policy_in_window": self._window_policy,
                    "ticks_safe_action_in_window": self._window_safe,
                    "ticks_waiting_in_window": self._window_waiting,
                    "safe_action_reasons": reasons,
                    "model": str(setup.model_path),
                    "validation": setup.validation_summary,
                }
            )
            for kind, count in setup.safety.counters.items():
                values[f"interventions.{kind}"] = count
            if self._active:
                if setup.safety.latched:
                    level, message = (
                        LEVEL_ERROR,
                        f"e-stop latched ({self._estop_reason}): safe action until ~/reset_estop",
                    )
                elif self._watchdog_tripped:
                    waiting = setup.hold_joints is not None and self._assembler.hold_positions is None
                    level, message = (
                        LEVEL_ERROR,
                        f"watchdog tripped: no valid /joint_states for {obs_age:.3g} s: "
                        + (
                            "sending nothing until the arm's position is measured"
                            if waiting
                            else "safe action"
                        ),
                    )
                elif obs_error is not None:
                    level, message = LEVEL_ERROR, f"observation invalid: {obs_error}: safe action"
                elif self._window_waiting and not (self._window_policy or self._window_safe):
                    level, message = LEVEL_WARN, f"active, sending nothing: {reasons}"
                elif self._window_safe and not self._window_policy:
                    level, message = (
                        LEVEL_ERROR,
                        f"no policy output, every tick was the safe action: {reasons}",
                    )
                elif self._window_safe:
                    total = self._window_safe + self._window_policy
                    level, message = (
                        LEVEL_WARN,
                        f"{self._window_safe} of {total} ticks were the safe action: {reasons}",
                    )
                else:
                    level, message = LEVEL_OK, "active: commanding"
        if not self._active:
            # Not commanding: worth a look (WARN), an alarm only if configuring failed or e-stopped.
            failed = self._status_message.startswith("configure failed") or self._estop_latched
            level = LEVEL_ERROR if failed else LEVEL_WARN
            if self._estop_latched:
                message = f"{self._status_message}; e-stop latched ({self._estop_reason})"
        return level, message, values

    def summary(self) -> str:
        """One line for the end of a run: ticks, interventions, observation errors, tick latency."""
        p50, p99, pmax = self._latency.percentiles()
        counters = dict(self._setup.safety.counters) if self._setup is not None else {}
        ticks = counters.pop("ticks", 0)
        fired = ", ".join(f"{k}={v}" for k, v in counters.items() if v) or "none"
        return (
            f"policy: {ticks} ticks, interventions: {fired}, observation errors: {self._obs_errors}, "
            f"inference overruns: {self._overruns}, "
            f"tick latency p50 {p50 * 1e6:.0f} us / p99 {p99 * 1e6:.0f} us / max {pmax * 1e6:.0f} us"
        )

    @property
    def is_active(self) -> bool:
        return self._active

    @property
    def setup(self) -> PolicySetup | None:
        """The configured policy (None while unconfigured)."""
        return self._setup

    def _state_label(self) -> str:
        if self._active:
            return "active"
        return "inactive" if self._setup is not None else "unconfigured"


def usage() -> str:
    """`policy_node --help`."""
    return process_usage(
        "policy_node --ros-args --params-file config/policy.yaml [-p NAME:=VALUE ...]",
        "Runs an exported ONNX policy behind the SafetyFilter as a ROS 2 lifecycle node\n"
        "(sub /joint_states, /estop; pub /cmd, /diagnostics; srv ~/reset_estop).",
        PARAMETERS,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console script: `policy_node --ros-args --params-file config/policy.yaml [-p model_path:=...]`.

    SIGINT/SIGTERM: the safe action goes out on a live context first (see ros/process.py).
    """
    args = sys.argv if argv is None else list(argv)
    if wants_help(args):
        print(usage())
        return 0
    init_ros(args)
    try:
        node = PolicyNode()
    except (ParameterException, ValueError, TypeError) as err:
        # a parameter of the wrong type in the params file or on the command line: one line, not a traceback
        print(f"policy_node: error: {err}; check the params file", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
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
    except RuntimeError:
        if not interrupted():  # the interrupt landed inside an rclpy C++ call: still a clean stop
            raise
    finally:
        if node.is_active and rclpy.ok():
            node.stop_commanding("shutting down")
            node.flush_commands()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


__all__ = ["NODE_NAME", "PARAMETERS", "PolicyNode", "main", "usage"]

if __name__ == "__main__":
    sys.exit(main())

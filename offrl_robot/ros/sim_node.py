"""`sim_node`: MuJoCo physics behind the same ROS 2 interface a real arm driver offers.

Publishes `/joint_states` (sensor_msgs/JointState, every named 1-DoF joint) at the control rate
and `/clock` (so other nodes can run with `use_sim_time`), subscribes `/cmd`
(std_msgs/Float64MultiArray, one value per actuator, as ros2_control's forward_command_controller
takes), and publishes the goal on `/goal` (geometry_msgs/PointStamped, latched) and task metrics
on `~/metrics`. `~/reset` (std_srvs/Trigger) starts a new episode (and, with `episode_steps: N`,
every N ticks does); each episode start is marked
on `/episode` (std_msgs/Int32, the episode index, latched): the marker `collect --bag` writes and
`config/ingest/arm_reach.yaml` splits on, so `offrl-robot record` of the sim ingests like a
collected log (and `record --episodes N` counts these markers).

Time: the node owns simulated time. Each wall-clock tick (period = 1 / (control rate x
real_time_factor)) advances physics by exactly one control period, so `real_time_factor: 5.0`
runs five times faster than real time and everything on `/clock` stays consistent. A command
older than `cmd_timeout` seconds of *simulated* time is dropped and the hold control applied (zero
velocity for ArmReach; a position servo holds its joint where it is: sim_backend.py), as a real
drive would do when its controller goes silent.

`model:` may be a task file (config/tasks/NAME.yaml): a user's arm then gets a goal on `/goal`,
task metrics on `~/metrics`, and `/cmd` carries the task's actions (its `actuators`, in order).

`lockstep: true` (recording demonstrations from a scripted controller, e.g. `offrl-robot expert`)
steps once per `/cmd` that answers the state just published, as fast as the controller answers,
so every logged command was computed from the state it is applied to, whatever the machine's
load; an answer to an older state is stored, not stepped on. The last state of an auto-reset
episode is not published (the next state to answer is the new episode's first), and the timer
steps with the hold control only when no answer came for `lockstep_timeout` s of wall time (long:
a controller that answers after such a step has its answer applied to the newer state).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, Int32, MultiArrayDimension
from std_srvs.srv import Trigger

from offrl_robot.errors import OffrlError
from offrl_robot.ros.process import init_ros, interrupted, wants_help
from offrl_robot.ros.process import usage as process_usage
from offrl_robot.ros.sim_backend import METRIC_NAMES, SimBackend, make_backend

NODE_NAME = "sim_node"

PARAMETERS: dict[str, tuple[Any, str]] = {
    "model": (
        "ArmReach-v0",
        "task (ArmReach-v0, a task file config/tasks/NAME.yaml, an installed task) or any MJCF file with actuators",
    ),
    "control_rate_hz": (0.0, "0 = the task's rate (50 Hz for a bare MJCF)"),
    "real_time_factor": (1.0, "simulated seconds per wall second (e.g. 5.0 = 5x faster)"),
    "publish_clock": (True, "publish /clock for nodes running with use_sim_time"),
    "cmd_timeout": (0.1, "seconds of simulated time after which a /cmd is stale -> hold control"),
    "seed": (0, "seed of the first episode (episode k uses seed + k)"),
    "episode_steps": (0, "a new episode every N ticks (0 = only on ~/reset)"),
    "lockstep": (
        False,
        "step on each /cmd answering the state just published, as fast as the controller answers "
        "(recording demonstrations); the timer steps only after lockstep_timeout without one",
    ),
    "lockstep_timeout": (1.0, "lockstep: wall seconds without an answer before the timer steps (hold)"),
    "goal": (None, "fixed goal [x, y, z] (m) for task models; unset = sampled from the seed"),
    "frame_id": ("base_link", "frame of the published goal"),
}

METRICS_LABEL = ",".join(METRIC_NAMES)


def _time_msg(seconds: float) -> Time:
    sec, nanosec = divmod(round(seconds * 1e9), 1_000_000_000)
    return Time(sec=int(sec), nanosec=int(nanosec))


class SimNode(Node):
    """Steps a `SimBackend` on a wall-clock timer and speaks the robot's ROS interface."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for name, (default, description) in PARAMETERS.items():
            self.declare_parameter(
                name, default, ParameterDescriptor(description=description, dynamic_typing=default is None)
            )
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        goal = [float(v) for v in p["goal"]] if p["goal"] else None
        if goal is not None and len(goal) != 3:
            raise OffrlError(f"sim_node parameter goal must be [x, y, z], got {goal}")
        if float(p["real_time_factor"]) <= 0:
            raise OffrlError(f"sim_node parameter real_time_factor must be > 0, got {p['real_time_factor']}")
        self.backend: SimBackend = make_backend(str(p["model"]), float(p["control_rate_hz"]), goal)
        self._seed = int(p["seed"])
        self._episode = 0
        self._cmd_timeout = float(p["cmd_timeout"])
        self._episode_steps = int(p["episode_steps"])
        if self._episode_steps < 0:
            raise OffrlError(f"sim_node parameter episode_steps must be >= 0, got {self._episode_steps}")
        self._ticks_in_episode = 0
        self._lockstep = bool(p["lockstep"])
        self._answered = True  # lockstep: the last published state already got its command
        self._last_step_wall = time.monotonic()
        self._stall_s = float(p["lockstep_timeout"])
        if self._stall_s <= 0:
            raise OffrlError(f"sim_node parameter lockstep_timeout must be > 0, got {self._stall_s}")
        self._frame_id = str(p["frame_id"])
        self._clock_base = 0.0
        self._command: np.ndarray | None = None
        self._command_time = -float("inf")  # simulated time the command arrived
        self._wrong_length_warned = False
        self.steps = 0
        self.stale_steps = 0  # steps run with zero control because /cmd was missing or too old
        self.last_metrics: dict[str, float] = {}

        self._joint_pub = self.create_publisher(JointState, "/joint_states", 10)
        self._clock_pub = self.create_publisher(ClockMsg, "/clock", 10) if p["publish_clock"] else None
        latched = QoSProfile(
            depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
        )
        self._goal_pub = self.create_publisher(PointStamped, "/goal", latched)
        self._episode_pub = self.create_publisher(Int32, "/episode", latched)
        self._metrics_pub = self.create_publisher(Float64MultiArray, "~/metrics", 10)
        self.create_subscription(Float64MultiArray, "/cmd", self._on_cmd, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self._joint_msg = JointState()
        self._joint_msg.name = list(self.backend.joint_names)
        self._metrics_msg = Float64MultiArray()
        self._metrics_msg.layout.dim = [
            MultiArrayDimension(label=METRICS_LABEL, size=len(METRIC_NAMES), stride=len(METRIC_NAMES))
        ]
        self._reset_episode()
        period = 1.0 / (self.backend.control_rate_hz * float(p["real_time_factor"]))
        self._timer = self.create_timer(period, self._on_timer, clock=Clock(clock_type=ClockType.STEADY_TIME))
        pace = "in lockstep with /cmd" if self._lockstep else f"x{float(p['real_time_factor']):g} real time"
        self.get_logger().info(
            f"simulating {p['model']} ({len(self.backend.joint_names)} joints, {self.backend.num_commands} "
            f"actuators) at {self.backend.control_rate_hz:g} Hz {pace}"
        )

    @property
    def clock(self) -> float:
        """Simulated seconds since the node started: monotonic across episodes (MuJoCo's own
        time restarts at 0 on reset; a /clock jumping back would confuse use_sim_time timers and stamps)."""
        return self._clock_base + self.backend.sim_time

    def _reset_episode(self) -> None:
        self._clock_base += self.backend.sim_time
        self.backend.reset(self._seed + self._episode)
        self._clock_base -= self.backend.sim_time
        self._command = None
        self._ticks_in_episode = 0
        # The marker first: a recorder counting episodes sees it before the new episode's data;
        # then the goal, so a controller has it when the episode's first state arrives.
        self._episode_pub.publish(Int32(data=self._episode))
        goal = self.backend.goal()
        if goal is not None:
            msg = PointStamped()
            msg.header.stamp = _time_msg(self.clock)
            msg.header.frame_id = self._frame_id
            msg.point.x, msg.point.y, msg.point.z = (float(v) for v in goal)
            self._goal_pub.publish(msg)
        self._publish_state()

    def _on_cmd(self, msg: Float64MultiArray) -> None:
        values = np.asarray(msg.data, dtype=np.float64)
        if values.shape != (self.backend.num_commands,) or not np.all(np.isfinite(values)):
            if not self._wrong_length_warned:
                self.get_logger().warning(
                    f"/cmd ignored: needs {self.backend.num_commands} finite values (actuator order), "
                    f"got {values.size}"
                )
                self._wrong_length_warned = True
            return
        self._command = values
        self._command_time = self.clock
        if self._lockstep and not self._answered:  # the answer to the state just published: step now
            self._answered = True
            self._tick()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._episode += 1
        self._reset_episode()
        response.success = True
        response.message = f"episode {self._episode} (seed {self._seed + self._episode})"
        return response

    def _on_timer(self) -> None:
        if not self._lockstep:
            self._tick()
        elif time.monotonic() - self._last_step_wall > self._stall_s:
            self._tick(hold=True)  # no controller answered: time goes on with the hold control

    def _tick(self, hold: bool = False) -> None:
        fresh = (
            not hold and self._command is not None and self.clock - self._command_time <= self._cmd_timeout
        )
        if not fresh:
            self.stale_steps += 1
        metrics = self.backend.step(self._command if fresh else None)
        self.steps += 1
        self._last_step_wall = time.monotonic()
        self._ticks_in_episode += 1
        ending = bool(self._episode_steps) and self._ticks_in_episode >= self._episode_steps
        if not (ending and self._lockstep):  # lockstep: the next state to answer is the new episode's
            self._publish_state()
        values = (
            metrics.reward,
            metrics.success,
            metrics.distance_to_goal,
            self.backend.episode_return,
            float(self._episode),
            self.clock,
        )
        self.last_metrics = dict(zip(METRIC_NAMES, values, strict=True))
        self._metrics_msg.data = [float(v) for v in values]
        self._metrics_pub.publish(self._metrics_msg)
        if ending:
            self._episode += 1  # the metrics above closed the episode; the next one starts now
            self._reset_episode()

    def _publish_state(self) -> None:
        stamp = _time_msg(self.clock)
        position, velocity, effort = self.backend.joint_state()
        msg = self._joint_msg
        msg.header.stamp = stamp
        msg.position, msg.velocity, msg.effort = position.tolist(), velocity.tolist(), effort.tolist()
        self._joint_pub.publish(msg)
        self._answered = False
        # The state first, then the clock: a use_sim_time controller whose timer fires on this
        # clock tick then most likely computes from this state, not the previous one.
        if self._clock_pub is not None:
            self._clock_pub.publish(ClockMsg(clock=stamp))


def metrics_from_msg(msg: Float64MultiArray) -> dict[str, float]:
    """Decode `~/metrics` by the labels it carries (for tools and tests)."""
    labels = msg.layout.dim[0].label.split(",") if msg.layout.dim else list(METRIC_NAMES)
    return dict(zip(labels, msg.data, strict=False))


def usage() -> str:
    """`sim_node --help`."""
    return process_usage(
        "sim_node --ros-args --params-file config/sim.yaml [-p model:=path/to/scene.xml ...]",
        "MuJoCo physics behind a robot's ROS 2 interface (pub /joint_states, /clock, /goal, ~/metrics;\n"
        "sub /cmd; srv ~/reset).",
        PARAMETERS,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console script: `sim_node --ros-args --params-file config/sim.yaml [-p model:=path/to/scene.xml]`."""
    args = sys.argv if argv is None else list(argv)
    if wants_help(args):
        print(usage())
        return 0
    init_ros(args)
    try:
        node = SimNode()
    except OffrlError as err:
        print(f"sim_node: error: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    except RuntimeError:
        if not interrupted():  # the interrupt landed inside rclpy: still a clean stop
            raise
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


__all__ = ["NODE_NAME", "PARAMETERS", "SimNode", "main", "metrics_from_msg"]

if __name__ == "__main__":
    sys.exit(main())

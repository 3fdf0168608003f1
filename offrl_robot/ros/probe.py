"""A robot-side test client: plays the robot driver and the operator against policy_node over real DDS.

Used by the integration tests and `benchmarks/node_latency.py`: it publishes `/joint_states`,
`/goal` and `/estop`, records every `/cmd`, `/diagnostics` and `~/metrics` message with its
receipt time, and calls the nodes' services (including the standard lifecycle services), so a
check is "what does another process on the network see", not "what does the object say".

It owns its own rclpy Context (domain id explicit), so several probes or a probe and an
in-process node never share global state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger

from offrl_robot.ros.diagnostics import diagnostic_values
from offrl_robot.ros.sim_node import metrics_from_msg

TRANSITIONS = {
    "configure": Transition.TRANSITION_CONFIGURE,
    "activate": Transition.TRANSITION_ACTIVATE,
    "deactivate": Transition.TRANSITION_DEACTIVATE,
    "cleanup": Transition.TRANSITION_CLEANUP,
}
# The primary state each transition ends in when it succeeds.
TRANSITION_GOALS = {
    "configure": "inactive",
    "activate": "active",
    "deactivate": "inactive",
    "cleanup": "unconfigured",
}


@dataclass
class Received:
    """One received message: monotonic receipt time + decoded content."""

    t: float
    data: Any
    level: int = 0
    message: str = ""


class RosProbe:
    """See the module docstring. Call `close()` (or use as a context manager)."""

    def __init__(
        self, domain_id: int, name: str = "offrl_probe", metrics_topic: str = "/sim_node/metrics"
    ) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.cmds: list[Received] = []
        self.diags: list[Received] = []
        self.metrics: list[Received] = []
        self.joint_states: list[Received] = []
        latched = QoSProfile(
            depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
        )
        self.joint_pub = self.node.create_publisher(JointState, "/joint_states", 10)
        self.goal_pub = self.node.create_publisher(PointStamped, "/goal", latched)
        self.estop_pub = self.node.create_publisher(Bool, "/estop", 10)
        self.node.create_subscription(
            Float64MultiArray,
            "/cmd",
            lambda m: self.cmds.append(Received(time.monotonic(), list(m.data))),
            100,
        )
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.node.create_subscription(
            Float64MultiArray,
            metrics_topic,
            lambda m: self.metrics.append(Received(time.monotonic(), metrics_from_msg(m))),
            50,
        )
        self._js_msg = JointState()
        self._clients: dict[tuple[Any, str], Any] = {}

    def _on_diag(self, msg: DiagnosticArray) -> None:
        if not msg.status:
            return
        status = msg.status[0]
        # `byte` fields arrive as bytes of length 1 in rclpy.
        level = status.level[0] if isinstance(status.level, bytes) else int(status.level)
        self.diags.append(Received(time.monotonic(), diagnostic_values(msg), level, status.message))

    def record_joint_states(self) -> None:
        """Also record /joint_states (off by default: at 500 Hz it is noise)."""
        self.node.create_subscription(
            JointState, "/joint_states", lambda m: self.joint_states.append(Received(time.monotonic(), m)), 50
        )

    # ------------------------------------------------------------------ spinning
    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.02, max(0.0, end - time.monotonic())))

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Spin until `predicate()` is true (checked after every callback) or `timeout` s pass."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return predicate()

    # ------------------------------------------------------------------ publishing
    def publish_joint_state(
        self,
        names: Sequence[str],
        position: Sequence[float],
        velocity: Sequence[float] = (),
        effort: Sequence[float] = (),
        stamp_offset: float = 0.0,
    ) -> None:
        """`stamp_offset`: seconds added to the header stamp (a driver whose clock is off)."""
        msg = self._js_msg
        now = self.node.get_clock().now().nanoseconds + round(stamp_offset * 1e9)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(max(now, 0), 1_000_000_000)
        msg.name = list(names)
        msg.position, msg.velocity, msg.effort = list(position), list(velocity), list(effort)
        self.joint_pub.publish(msg)

    def publish_goal(self, xyz: Sequence[float]) -> None:
        msg = PointStamped()
        msg.header.frame_id = "base_link"
        msg.point.x, msg.point.y, msg.point.z = (float(v) for v in xyz)
        self.goal_pub.publish(msg)

    def publish_estop(self, on: bool = True) -> None:
        self.estop_pub.publish(Bool(data=on))

    # ------------------------------------------------------------------ services
    def call(
        self,
        srv_type: Any,
        name: str,
        request: Any,
        timeout: float = 10.0,
        idempotent: bool = True,
        attempt_s: float = 3.0,
    ) -> Any:
        """Call a service and wait for the answer (None on timeout).

        `service_is_ready()` only says this client has matched the server's request reader; the
        server may not yet have matched this client's response reader, and then Fast DDS drops
        the response ("failed to send response (timeout)"). An idempotent request is therefore
        re-sent every `attempt_s` seconds on the same client (its discovery state is kept) until
        one answer arrives or `timeout` passes; a non-idempotent one is sent once. Clients are
        kept for the probe's lifetime so a second call does not start discovery again.
        """
        key = (srv_type, name)
        if key not in self._clients:
            self._clients[key] = self.node.create_client(srv_type, name)
        client = self._clients[key]
        end = time.monotonic() + timeout
        if not self.spin_until(client.service_is_ready, timeout):
            return None
        futures = [client.call_async(request)]
        while True:
            remaining = end - time.monotonic()
            window = min(remaining, attempt_s) if idempotent else remaining
            if self.spin_until(lambda: any(f.done() for f in futures), max(window, 0.0)):
                return next(f.result() for f in futures if f.done())
            if time.monotonic() >= end or not idempotent:
                return None
            futures.append(client.call_async(request))

    def set_parameters(self, node: str, values: dict[str, Any], timeout: float = 10.0) -> list[Any] | None:
        """`ros2 param set` for each value via `/<node>/set_parameters`: the SetParametersResult list."""
        request = SetParameters.Request()
        request.parameters = [
            Parameter(name, value=value).to_parameter_msg() for name, value in values.items()
        ]
        response = self.call(SetParameters, f"/{node}/set_parameters", request, timeout)
        return None if response is None else list(response.results)

    def trigger(self, name: str, timeout: float = 10.0, idempotent: bool = False) -> Any:
        """Call a std_srvs/Trigger service. Sent once unless the caller says calling it twice is
        harmless (`~/reset_estop` is; `/sim_node/reset` is not: a second call starts another
        episode), because a re-sent request whose first answer was only lost runs twice."""
        return self.call(Trigger, name, Trigger.Request(), timeout, idempotent=idempotent)

    def lifecycle(self, node: str, transition: str, timeout: float = 15.0) -> bool | None:
        """Request a standard lifecycle transition via `/<node>/change_state`; the service's success flag.

        A transition is not idempotent, so a lost response is resolved by asking the node for its
        state: moved to the transition's goal state means it happened; still in the start state
        means the request was lost (or failed and rolled back) and it is sent again, so a
        failing transition answers False once one response gets through.
        """
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[transition]
        goal = TRANSITION_GOALS[transition]
        end = time.monotonic() + timeout
        start_state = self.lifecycle_state(node, timeout=min(timeout, 10.0))
        while time.monotonic() < end:
            remaining = end - time.monotonic()
            response = self.call(
                ChangeState, f"/{node}/change_state", request, min(remaining, 5.0), idempotent=False
            )
            if response is not None:
                return bool(response.success)
            state = self.lifecycle_state(node, timeout=max(end - time.monotonic(), 1.0))
            if state is None or state == start_state:
                continue  # no answer yet, or the request was lost: ask again
            return state == goal
        return None

    def lifecycle_state(self, node: str, timeout: float = 10.0) -> str | None:
        response = self.call(GetState, f"/{node}/get_state", GetState.Request(), timeout)
        return None if response is None else response.current_state.label

    # ------------------------------------------------------------------ queries
    def cmds_since(self, t: float) -> list[Received]:
        return [c for c in self.cmds if c.t >= t]

    def diags_since(self, t: float) -> list[Received]:
        return [d for d in self.diags if d.t >= t]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> RosProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

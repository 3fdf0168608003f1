"""ROS 2 node latency: JointState publish -> /cmd receipt over DDS, between separate processes.

    .venv/bin/python benchmarks/node_latency.py [--seconds 10] [--rates 100 500] [--peers all]

This process plays the robot driver: it publishes `/joint_states` at a fixed rate and receives
`/cmd`. The responder is a separate process: either a bare rclpy echo node (the floor: what
two Python rclpy processes cost on this machine, no policy, no safety) or `policy_node` (the
real console script with config/policy.yaml, a real ONNX model through PolicyRuntime and the
SafetyFilter) with each executor and both tick sources, side by side in one run.

Matching: the model is a linear "echo" policy (action_i = joint_i.position), and the driver
writes SEQ_OFFSET + the message's sequence number into joint_1.position, so each /cmd names the
JointState it was computed from. Latency = DDS receive time of the /cmd (rmw MessageInfo, so this process's own
scheduling does not count) minus the wall time just before the JointState was published.
A *missed tick* is a JointState that never produced a /cmd. With `tick_source: timer` the node
ticks on its own clock, so a JointState waits up to one period for the next tick and two
JointStates can fall into one tick (the first is then "missed"): that is the cost of a free-running
timer, shown for comparison.

Every child gets a hard SIGKILL timeout (a hung rclpy process can ignore SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOINTS = [f"joint_{i}" for i in range(1, 7)]
# joint_1.position = SEQ_OFFSET + sequence number (exact in float32 up to 2^24): never 0.0, which
# is the node's safe action (the watchdog publishes it when the driver stops).
SEQ_OFFSET = 10_000
ECHO_SOURCE = """
import sys, rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
rclpy.init()
node = Node("latency_echo")
pub = node.create_publisher(Float64MultiArray, "/cmd", 10)
out = Float64MultiArray()
def on_js(msg):
    out.data = list(msg.position)
    pub.publish(out)
node.create_subscription(JointState, "/joint_states", on_js, qos_profile_sensor_data)
if sys.argv[1] == "events":
    from rclpy.experimental import EventsExecutor
    ex = EventsExecutor()
else:
    ex = SingleThreadedExecutor()
ex.add_node(node)
while rclpy.ok():
    ex.spin_once(timeout_sec=0.1)  # (EventsExecutor.spin() never runs callbacks in rclpy 9.1)
"""


@dataclass
class Peer:
    label: str
    kind: str  # "echo" | "policy"
    tick_source: str = "joint_states"
    executor: str = "single_threaded"


PEERS = {
    "echo": Peer("bare rclpy echo, SingleThreaded (floor)", "echo"),
    "echo_events": Peer("bare rclpy echo, EventsExecutor (floor)", "echo", executor="events"),
    "single": Peer("policy_node, tick on JointState, SingleThreaded", "policy"),
    "events": Peer("policy_node, tick on JointState, EventsExecutor", "policy", executor="events"),
    "multi": Peer("policy_node, tick on JointState, MultiThreaded(2)", "policy", executor="multi_threaded"),
    "timer": Peer(
        "policy_node, timer tick, EventsExecutor", "policy", tick_source="timer", executor="events"
    ),
}


@dataclass
class Result:
    peer: str
    rate_hz: float
    sent: int
    received: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    missed: int
    publish_rate_hz: float
    note: str = ""


def _env(domain: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=str(domain),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        AMENT_PREFIX_PATH=str(Path(sys.prefix)),
        RMW_IMPLEMENTATION=env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
        PYTHONUNBUFFERED="1",
    )
    return env


def _responder(
    peer: Peer, rate: float, model: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    if peer.kind == "echo":
        args = [sys.executable, "-c", ECHO_SOURCE, peer.executor]
    else:
        args = [
            str(BIN / "policy_node"),
            "--ros-args",
            "--params-file",
            str(REPO / "config" / "policy.yaml"),
            "-p", f"model_path:={model}",
            "-p", "allow_unvalidated:=true",
            "-p", f"tick_source:={peer.tick_source}",
            "-p", f"executor:={peer.executor}",
            "-p", f"control_rate_hz:={rate}",
            "-p", "max_slew_rate:=[.inf]",
            "-p", "blend_in_ticks:=0",
            "-p", "watchdog_timeout:=0.5",
        ]  # fmt: skip
    handle = log.open("wb")
    return subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def measure(peer: Peer, rate: float, seconds: float, model: Path, domain: int, workdir: Path) -> Result:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    env = _env(domain)
    log = workdir / f"{peer.kind}_{peer.executor}_{peer.tick_source}_{int(rate)}.log"
    proc = _responder(peer, rate, model, env, log)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = Node("latency_driver", context=context)
    n = round(rate * seconds)
    publish_ns = np.zeros(n, dtype=np.int64)
    first_rx = np.full(n, -1, dtype=np.int64)
    last_rx = [time.monotonic()]
    warm = threading.Event()

    def on_cmd(msg: Float64MultiArray, info: dict[str, int]) -> None:
        value = msg.data[0] if msg.data else 0.0
        last_rx[0] = time.monotonic()
        if value >= SEQ_OFFSET - 0.5:
            seq = round(value - SEQ_OFFSET)
            if 0 <= seq < n and first_rx[seq] < 0:
                first_rx[seq] = info["received_timestamp"]
        elif value > 0.5:  # a warm-up echo; 0.0 is the node's safe action, never a sequence number
            warm.set()

    node.create_subscription(Float64MultiArray, "/cmd", on_cmd, 1000)
    pub = node.create_publisher(JointState, "/joint_states", 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    msg = JointState()
    msg.name = JOINTS
    msg.velocity = [0.0] * 6
    note = ""
    try:
        # Warm-up: positions 1..999 (not sequence numbers) until the responder answers.
        deadline = time.monotonic() + 60.0
        k = 0
        while not warm.is_set():
            if time.monotonic() > deadline or proc.poll() is not None:
                return Result(
                    peer.label, rate, 0, 0, *(float("nan"),) * 3, 0, 0.0, "responder never answered"
                )
            msg.position = [1.0 + (k % 998), 0.0, 0.0, 0.0, 0.0, 0.0]
            pub.publish(msg)
            k += 1
            time.sleep(1.0 / rate if k > 50 else 0.05)
        period_ns = int(1e9 / rate)
        start = time.monotonic_ns() + 200_000_000
        for seq in range(n):
            target = start + seq * period_ns
            while True:
                remaining = target - time.monotonic_ns()
                if remaining <= 0:
                    break
                if remaining > 400_000:
                    time.sleep((remaining - 300_000) / 1e9)
            msg.position = [float(SEQ_OFFSET + seq), 0.0, 0.0, 0.0, 0.0, 0.0]
            publish_ns[seq] = time.time_ns()
            pub.publish(msg)
        sent_span = (publish_ns[-1] - publish_ns[0]) / 1e9 if n > 1 else 1.0
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle:
            time.sleep(0.05)
        if time.monotonic() - last_rx[0] > 0.9:
            note = "stalled" if (first_rx >= 0).sum() < n // 2 else ""
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        _kill(proc)
    got = first_rx >= 0
    latency_ms = (first_rx[got] - publish_ns[got]) / 1e6
    if latency_ms.size:
        p50, p99, pmax = (float(v) for v in np.percentile(latency_ms, [50, 99, 100]))
    else:
        p50 = p99 = pmax = float("nan")
        note = note or "no /cmd received"
    return Result(
        peer.label, rate, n, int(got.sum()), p50, p99, pmax, int(n - got.sum()), (n - 1) / sent_span, note
    )


def write_echo_model(path: Path) -> Path:
    """Linear policy action_i = joint_i.position with wide bounds, through the project's own writer."""
    from offrl_robot.ros.linear_policy import write_linear_policy

    observation_names = [f"{j}.position" for j in JOINTS] + [f"{j}.velocity" for j in JOINTS]
    weights = np.zeros((6, 12))
    weights[:, :6] = np.eye(6)
    return write_linear_policy(
        path,
        observation_names=observation_names,
        action_names=[f"{j}.velocity_cmd" for j in JOINTS],
        weights=weights,
        bias=np.zeros(6),
        action_low=[-1e7] * 6,
        action_high=[1e7] * 6,
        control_rate_hz=500.0,
        validation=None,
    )


def _machine() -> str:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for dist in ("ros-rclpy", "ros-rmw-fastrtps-cpp", "ros-fastdds", "onnxruntime"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
    load = os.getloadavg()
    return (
        f"{cpu}, {os.cpu_count()} cores, load avg {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}; "
        f"Python {platform.python_version()}; {', '.join(versions)}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="measured seconds per row (>= 10 for the record)"
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0])
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--domain", type=int, default=77, help="first ROS_DOMAIN_ID (one per row)")
    args = parser.parse_args(argv)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="offrl_latency_") as tmp:
        workdir = Path(tmp)
        model = write_echo_model(workdir / "echo.onnx")
        domain = args.domain
        for rate in args.rates:
            for key in args.peers:
                result = measure(PEERS[key], rate, args.seconds, model, domain, workdir)
                domain += 1
                results.append(result)
                print(
                    f"  done: {result.peer} @ {rate:g} Hz: p99 {result.p99_ms:.3f} ms, missed {result.missed}",
                    flush=True,
                )
    print(f"\nmachine: {_machine()}")
    print(
        f"{args.seconds:g} s per row; latency = JointState publish -> /cmd DDS receipt, separate processes\n"
    )
    header = f"| {'responder':<50} | rate Hz | sent | p50 ms | p99 ms | max ms | missed (%) | pub Hz | note |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in results:
        missed_pct = 100.0 * r.missed / r.sent if r.sent else float("nan")
        print(
            f"| {r.peer:<50} | {r.rate_hz:7g} | {r.sent:4d} | {r.p50_ms:6.3f} | {r.p99_ms:6.3f} | {r.max_ms:6.2f} "
            f"| {r.missed:4d} ({missed_pct:5.2f}) | {r.publish_rate_hz:6.1f} | {r.note} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

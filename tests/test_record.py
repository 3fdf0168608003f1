"""`offrl-robot record`: real rclpy over DDS (loopback), real MCAP/sqlite3 files read back twice.

The robot is `offrl-robot deploy --sim` (sim_node + policy_node with the example ArmReach model,
one process): /joint_states, /cmd, /goal and /episode on the wire, as on a robot running the
project's policy. The recorder runs as a child process like a user would start it, and every
bag it leaves is read back with the project's reader *and* with rosbags' AnyReader, each topic's
count compared with the count the bag reports (rosbags silently yields 0 messages when the QoS
in metadata.yaml and the storage file differ; a mismatch here would show as a count of 0).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, offrl_cli

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")

from offrl_robot.cli import main as cli_main
from offrl_robot.data.bag_reader import Bag, TypeResolver
from offrl_robot.data.minari_io import load_dataset
from offrl_robot.data.rosbag_write import RawBagWriter
from offrl_robot.errors import OffrlError
from offrl_robot.ros.probe import RosProbe
from offrl_robot.ros.record import bag_qos, message_definition, subscription_qos
from offrl_robot.sim.arm_reach import JOINT_NAMES, OBSERVATION_NAMES

TYPES = {
    "/joint_states": "sensor_msgs/msg/JointState",
    "/cmd": "std_msgs/msg/Float64MultiArray",
    "/goal": "geometry_msgs/msg/PointStamped",
    "/episode": "std_msgs/msg/Int32",
}
VENV_PREFIX = Path(sys.prefix)
SIM_PERIOD_NS = 20_000_000  # ArmReach: 50 Hz of simulated time


class Output:
    """Collects a child's stdout lines on a thread, so the test can wait for one without blocking."""

    def __init__(self, proc) -> None:  # type: ignore[no-untyped-def]
        self.proc, self.lines = proc, []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            hit = next((ln for ln in self.lines if ln.startswith(prefix)), None)
            if hit is not None:
                return hit
            if self.proc.poll() is not None:
                self._thread.join(timeout=5)
                hit = next((ln for ln in self.lines if ln.startswith(prefix)), None)
                if hit is not None:
                    return hit
                break
            time.sleep(0.05)
        pytest.fail(f"no line starting {prefix!r}; output:\n{self.text()}")

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._thread.join(timeout=5)
        return rc

    def text(self) -> str:
        return "\n".join(self.lines)


def _deploy(run_child, ros_env, tmp_path: Path, real_time_factor: float = 1.0) -> Output:  # type: ignore[no-untyped-def]
    sim_params = tmp_path / "sim.yaml"
    sim_params.write_text(
        f"sim_node:\n  ros__parameters:\n    model: ArmReach-v0\n    real_time_factor: {real_time_factor}\n"
    )
    args = [*offrl_cli(), "deploy", "--params", str(REPO / "config/policy.yaml"), "--sim"]
    args += ["--sim-params", str(sim_params), "--model", str(REPO / "models/arm_reach.onnx")]
    return Output(run_child.start(args, env=ros_env, cwd=REPO))


def _record(run_child, ros_env, *args: str) -> Output:  # type: ignore[no-untyped-def]
    return Output(run_child.start([*offrl_cli(), "record", *args, "--wait", "60"], env=ros_env))


def _read_back(path: Path) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Every message of the bag through both readers; per-topic counts and receive times.

    Asserts both readers agree with each other and with the counts the bag reports."""
    from rosbags.highlevel import AnyReader

    bag = Bag(path)
    counts, _ = bag.count_messages()
    bag.verify_counts(counts)  # the project's reader: a short read raises
    assert {t: i.reported_count for t, i in bag.topics.items()} == counts
    times: dict[str, list[int]] = {}
    for raw in bag.iter_batches():
        times.setdefault(raw.topic, []).extend(int(t) for t in raw.times)
    with AnyReader([path]) as reader:
        reported = {c.topic: c.msgcount for c in reader.connections}
        seen = Counter(conn.topic for conn, _, _ in reader.messages())
        rosbags_times: dict[str, list[int]] = {}
        for conn, stamp, _ in reader.messages():
            rosbags_times.setdefault(conn.topic, []).append(stamp)
    assert reported == counts, (reported, counts)
    assert dict(seen) == {t: n for t, n in counts.items() if n}, (seen, counts)
    assert rosbags_times == times
    return counts, times


def _decoded(path: Path, topic: str) -> list:  # type: ignore[type-arg]
    bag, resolver = Bag(path), TypeResolver()
    msgtype = resolver.ensure(bag.topics[topic], bag.name)
    return [resolver.deserialize(p, msgtype) for raw in bag.iter_batches([topic]) for p in raw.messages()]


def _monotonic(values: list[int]) -> bool:
    return all(b >= a for a, b in itertools.pairwise(values))


def _no_leftovers(parent: Path, expected: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} == expected, "a half-written temporary bag was left behind"


# --------------------------------------------------------------------------- over DDS
@pytest.mark.ros
def test_sigint_finalizes_a_bag_both_readers_read_completely_and_ingest_accepts(
    ros_env, run_child, tmp_path: Path, minari_root: Path
) -> None:
    robot = _deploy(run_child, ros_env, tmp_path)
    out = tmp_path / "bags" / "run"
    rec = _record(run_child, ros_env, "/joint_states", "/cmd", "goal", "/episode", "--out", str(out))
    rec.wait_for("recording 4 topics", 90)
    with RosProbe(int(ros_env["ROS_DOMAIN_ID"])) as probe:
        probe.spin_for(2.0)
        response = probe.trigger("/sim_node/reset", timeout=30)
        assert response is not None and response.success, robot.text()
        probe.spin_for(2.0)
    rec.proc.send_signal(signal.SIGINT)
    assert rec.finish(30) == 0, rec.text()
    assert rec.lines[-1].startswith("stopped by SIGINT"), rec.text()
    _no_leftovers(out.parent, {"run"})

    counts, times = _read_back(out)
    bag = Bag(out)
    assert bag.storage == "mcap"
    assert {t: i.msgtype for t, i in bag.topics.items()} == TYPES
    assert counts["/joint_states"] > 50 and counts["/cmd"] > 50, counts  # ~4 s at 50 Hz
    assert all(_monotonic(t) for t in times.values()), "receive times must not go backwards"
    assert [m.data for m in _decoded(out, "/episode")] == [0, 1]  # the latched marker, then the reset
    assert list(_decoded(out, "/joint_states")[0].name) == list(JOINT_NAMES)
    metadata = (out / "metadata.yaml").read_text()
    assert (
        "reliability: reliable" in metadata and "durability: transient_local" in metadata
    )  # /goal, /episode

    # What `collect --bag` logs, recorded live: the ArmReach spec ingests it.
    rc = cli_main(
        ["ingest", str(out), "--spec", str(REPO / "config/ingest/arm_reach.yaml"), "--out", "rec/live"]
    )
    assert rc == 0
    dataset = load_dataset("rec/live")
    assert dataset.num_episodes == 2
    assert len(dataset) > 50
    assert dataset.metadata.observation_names == list(OBSERVATION_NAMES)


@pytest.mark.ros
def test_episodes_limit_with_sim_time_then_max_messages_in_sqlite3_then_sigkill_leaves_nothing(
    ros_env, run_child, tmp_path: Path
) -> None:
    robot = _deploy(run_child, ros_env, tmp_path, real_time_factor=2.0)
    # --episodes 1: the bag holds episode 0 (its latched marker arrives first) and stops when
    # episode 1 starts; /episode is recorded although not named. Stamps are /clock time.
    episodes = tmp_path / "episodes"
    rec = _record(
        run_child, ros_env, "/joint_states", "--out", str(episodes), "--episodes", "1", "--use-sim-time"
    )
    rec.wait_for("recording 2 topics", 90)
    with RosProbe(int(ros_env["ROS_DOMAIN_ID"])) as probe:
        probe.spin_for(1.5)
        response = probe.trigger("/sim_node/reset", timeout=30)
        assert response is not None and response.success, robot.text()
        assert rec.finish(30) == 0, rec.text()  # stops by itself at the second marker
    assert rec.lines[-1].startswith("stopped by --episodes 1"), rec.text()
    counts, times = _read_back(episodes)
    assert counts["/episode"] == 1 and counts["/joint_states"] > 20, counts
    assert [m.data for m in _decoded(episodes, "/episode")] == [0]
    states = _decoded(episodes, "/joint_states")
    header_ns = np.array([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in states])
    received_ns = np.array(times["/joint_states"])
    # Sim time: seconds since sim_node started (not ~1.7e18 ns of wall time). The receive stamp
    # is the recorder's /clock: the tick the state was published on, or one before it (sim_node
    # publishes the state just before that tick's /clock), or a later one.
    assert received_ns.max() < 3600 * 10**9, received_ns.max()
    lag = received_ns - header_ns
    assert lag.min() >= -SIM_PERIOD_NS and lag.max() < 10**9, (lag.min(), lag.max())
    assert _monotonic(times["/joint_states"])

    limited = tmp_path / "limited"
    rec = _record(
        run_child, ros_env, "/joint_states", "/cmd", "--out", str(limited), "--max-messages", "25",
        "--storage", "sqlite3",
    )  # fmt: skip
    assert rec.finish(90) == 0, rec.text()
    assert rec.lines[-1].startswith("stopped by --max-messages 25"), rec.text()
    counts, _ = _read_back(limited)
    assert Bag(limited).storage == "sqlite3" and sum(counts.values()) == 25, counts

    killed = tmp_path / "killed"
    rec = _record(run_child, ros_env, "/joint_states", "--out", str(killed))
    rec.wait_for("recording 1 topics", 90)
    time.sleep(0.5)
    os.killpg(rec.proc.pid, signal.SIGKILL)
    rec.finish(30)
    assert not killed.exists(), "a killed recorder must not leave a bag at --out"


@pytest.mark.ros
def test_bad_input_is_one_line_and_writes_nothing(
    ros_env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    cases = [
        (["/joint_states", "--out", str(existing)], "already exists"),
        (["/a b", "--out", str(tmp_path / "x")], "not a valid ROS 2 topic name"),
        (["/a:not_a_type", "--out", str(tmp_path / "x")], "is not pkg/msg/Type"),
        (["/a", "/a", "--out", str(tmp_path / "x")], "given twice"),
        (["/a", "--out", str(tmp_path / "x"), "--storage", "rosbag1"], "choose one of mcap, sqlite3"),
        (["/a", "--out", str(tmp_path / "x"), "--duration", "nan"], "--duration nan"),
        (["/nobody_publishes", "--out", str(tmp_path / "x"), "--wait", "0.5"], "no publisher appeared"),
        (["/a:no_such_pkg/msg/T", "--out", str(tmp_path / "x"), "--wait", "0"], "not installed"),
        (
            ["/a:std_msgs/msg/Int32", "--out", str(tmp_path / "x"), "--wait", "0", "--use-sim-time"],
            "no /clock message",
        ),
    ]
    for args, needle in cases:
        rc = cli_main(["record", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, (args, err)
        errors = [ln for ln in err if ln.startswith("offrl-robot record: error:")]
        assert len(errors) == 1 and needle in errors[0], (args, err)
    _no_leftovers(tmp_path, {"existing"})
    assert list(existing.iterdir()) == []


# --------------------------------------------------------------------------- without DDS
def test_definitions_match_rosidl_hashes_and_custom_types_load_from_the_install(tmp_path: Path) -> None:
    share = VENV_PREFIX / "share"
    for msgtype in TYPES.values():
        pkg, _, name = msgtype.split("/")
        rosidl = json.loads((share / pkg / "msg" / f"{name}.json").read_text())["type_hashes"][0]
        definition = message_definition(msgtype, "/t")
        assert definition.rihs01 == rosidl["hash_string"], msgtype

    # A robot's own message package, known to no typestore, installed under another prefix.
    prefix = tmp_path / "install"
    (prefix / "share" / "arm_msgs" / "msg").mkdir(parents=True)
    (prefix / "share" / "arm_msgs" / "msg" / "Gripper.msg").write_text(
        "uint8 OPEN=0\nuint8 CLOSED=1\nstd_msgs/Header header\nuint8 state\nfloat64[] finger_positions\n"
    )
    prefixes = [str(prefix), str(VENV_PREFIX)]
    definition = message_definition("arm_msgs/msg/Gripper", "/gripper", prefixes=prefixes)
    assert definition.source == "installed .msg files"
    assert "float64[] finger_positions" in definition.msgdef and "MSG: std_msgs/Header" in definition.msgdef
    with pytest.raises(OffrlError, match="no message definition"):
        message_definition("arm_msgs/msg/Gripper", "/gripper", prefixes=[str(VENV_PREFIX)])
    with pytest.raises(OffrlError, match="differs from every definition"):
        message_definition("arm_msgs/msg/Gripper", "/gripper", ["RIHS01_" + "ab" * 32], prefixes)
    # A publisher without a type hash (pre-Iron) is accepted.
    assert message_definition("arm_msgs/msg/Gripper", "/g", ["RIHS01_" + "00" * 32], prefixes) == definition

    # Written raw with that definition + a QoS, read back: the bytes decode with the embedded definition.
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(
        get_types_from_msg((prefix / "share/arm_msgs/msg/Gripper.msg").read_text(), "arm_msgs/msg/Gripper")
    )
    gripper = store.types["arm_msgs/msg/Gripper"]
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="hand"
    )
    payloads = [
        bytes(store.serialize_cdr(gripper(header=header, state=k % 2, finger_positions=np.array([0.01 * k, 0.0])), "arm_msgs/msg/Gripper"))
        for k in range(5)
    ]  # fmt: skip
    from rclpy.duration import Duration, Infinite
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    offered = QoSProfile(
        depth=1,
        reliability=ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
        deadline=Duration(seconds=1, nanoseconds=500_000_000),
        lifespan=Infinite,  # what the graph reports for a publisher that sets none
    )
    path = tmp_path / "custom"
    with RawBagWriter(path) as writer:
        writer.add_topic(
            "/gripper",
            "arm_msgs/msg/Gripper",
            msgdef=definition.msgdef,
            rihs01=definition.rihs01,
            offered_qos=[bag_qos(offered)],
        )
        for k, data in enumerate(payloads):
            writer.write("/gripper", 1000 + k, data)
    counts, times = _read_back(path)
    assert counts == {"/gripper": 5} and times["/gripper"] == [1000, 1001, 1002, 1003, 1004]
    assert [list(m.finger_positions) for m in _decoded(path, "/gripper")] == [
        [0.01 * k, 0.0] for k in range(5)
    ]
    with Reader(path) as reader:  # the QoS went in as offered
        (qos,) = reader.connections[0].ext.offered_qos_profiles
    assert (qos.reliability.name, qos.durability.name, qos.depth) == ("BEST_EFFORT", "TRANSIENT_LOCAL", 1)
    assert (qos.deadline.sec, qos.deadline.nsec) == (1, 500_000_000)
    assert (qos.lifespan.sec, qos.lifespan.nsec) == (9223372036, 854775807)  # infinite, as rmw writes it


def test_subscription_qos_matches_every_publisher() -> None:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    reliable_latched = QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )
    best_effort = QoSProfile(
        depth=5, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE
    )
    latched = subscription_qos([reliable_latched, reliable_latched], depth=100)
    assert (latched.reliability, latched.durability, latched.depth) == (
        ReliabilityPolicy.RELIABLE,
        DurabilityPolicy.TRANSIENT_LOCAL,
        100,
    )
    mixed = subscription_qos([reliable_latched, best_effort], depth=100)
    assert (mixed.reliability, mixed.durability) == (ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE)


def test_raw_writer_is_atomic_on_error(tmp_path: Path) -> None:
    target = tmp_path / "bag"
    with pytest.raises(RuntimeError), RawBagWriter(target) as writer:
        from rosbags.typesys import Stores, get_typestore

        writer.add_topic("/n", "std_msgs/msg/Int32", typestore=get_typestore(Stores.ROS2_KILTED))
        writer.write("/n", 1, b"\x00\x01\x00\x00\x03\x00\x00\x00")
        raise RuntimeError("recorder crashed")
    _no_leftovers(tmp_path, set())

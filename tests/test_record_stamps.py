"""`offrl-robot record` stamps each message with when it arrived (or was sent), not when its callback ran.

Found by tests/test_own_robot_e2e.py on a loaded machine: a recorder that falls behind takes one
message per subscription per executor pass, so with callback-time stamps a latched /episode
marker published after 40 /joint_states landed before most of them, and ingest moved 40 ticks
of one episode into the next. Here the backlog is made on purpose (publish, then spin) over
real DDS (loopback) in one process, and the bag is read back.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray, Int32

from offrl_robot.data.bag_reader import Bag
from offrl_robot.data.rosbag_write import RawBagWriter
from offrl_robot.ros.record import Limits, Recorder, parse_topics, resolve_topics

pytestmark = pytest.mark.ros


@pytest.mark.parametrize("stamp", ["receive", "publish"])
def test_a_backlog_keeps_the_order_messages_arrived_in_across_topics(
    stamp: str, ros_env: dict[str, str], tmp_path: Path
) -> None:
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    try:
        talker = Node("talker", context=context)
        cmd = talker.create_publisher(Float64MultiArray, "/cmd", 100)
        marker = talker.create_publisher(Int32, "/episode", 10)
        node = Node("recorder", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        topics = resolve_topics(node, executor, parse_topics(["/cmd", "/episode"]), 10.0, lambda: False)
        with RawBagWriter(tmp_path / "bag", storage="mcap") as writer:
            recorder = Recorder(node, writer, topics, Limits(), depth=100, stamp=stamp)
            executor.spin_once(timeout_sec=0.5)  # discovery of the subscriptions
            time.sleep(1.0)
            for k in range(30):  # nobody spins the recorder meanwhile: a backlog of 30 commands,
                cmd.publish(Float64MultiArray(data=[float(k)]))
                time.sleep(0.002)
            marker.publish(Int32(data=1))  # then the marker, then 30 more commands
            for k in range(30, 60):
                time.sleep(0.002)
                cmd.publish(Float64MultiArray(data=[float(k)]))
            time.sleep(0.5)
            end = time.monotonic() + 10.0
            while recorder.total < 61 and time.monotonic() < end:
                executor.spin_once(timeout_sec=0.1)
        assert recorder.total == 61
    finally:
        rclpy.try_shutdown(context=context)
    bag = Bag(tmp_path / "bag")
    times = {}
    for raw in bag.iter_batches():
        times.setdefault(raw.topic, []).extend(int(t) for t in raw.times)
    commands, (episode,) = sorted(times["/cmd"]), times["/episode"]
    assert commands == times["/cmd"]  # per topic in arrival order
    # the marker sits between the 30 commands published before it and the 30 after
    assert commands[29] < episode < commands[30], (episode - commands[29], commands[30] - episode)

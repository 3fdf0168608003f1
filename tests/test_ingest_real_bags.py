"""Real rosbag2 files written by other projects (../shared/data/real_bags): every one opens and
reads every message it reports (where rosbags silently yields 0 of 20 on the talker bags), and
the TurtleBot and servo-arm bags ingest with the committed specs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from offrl_robot.cli import main
from offrl_robot.data.bag_info import describe
from offrl_robot.data.bag_reader import Bag
from offrl_robot.data.ingest_spec import load_spec
from offrl_robot.data.rosbag_ingest import ingest
from offrl_robot.errors import BagError

# message totals from each fixture's README (verified there with rosbags, or by direct file reads)
TOTALS = {
    "ats_aerial_manipulator_px4_mcap": 5481,
    "ats_servo_arm_jointstate_sqlite3": 1294,
    "rosbag2_cdr_test_mcap": 7,
    "rosbag2_cdr_test_sqlite3": 7,
    "rosbag2_convert_b_mcap": 75,
    "rosbag2_cpp_mcap_no_metadata/only_services.mcap": 12,
    "rosbag2_cpp_mcap_no_metadata/only_topics.mcap": 7,
    "rosbag2_cpp_mcap_no_metadata/topics_and_services.mcap": 13,
    "rosbag2_empty_bag_sqlite3": 0,
    "rosbag2_file_compression_zstd_sqlite3": 775,
    "rosbag2_message_compression_zstd_sqlite3": 1127,
    "rosbag2_talker_mcap": 20,
    "rosbag2_talker_sqlite3": 20,
    "rosbag2_test_bag_for_seek_mcap": 5,
    "rosbag2_topics_and_service_events_mcap": 10,
    "rosbag2_topics_and_service_events_sqlite3": 10,
    "rosbag2_wbag_split_mcap": 6074,
    "rosbag2_wbag_split_sqlite3": 6074,
    "rosbag2_wrong_rmw_test_mcap": 7,
    "tb3_walker_gazebo_sqlite3": 9432,
}


def test_every_fixture_is_listed(shared_data: Path) -> None:
    folders = {p.name for p in (shared_data / "real_bags").iterdir() if p.is_dir()}
    assert folders == {name.split("/")[0] for name in TOTALS}


@pytest.mark.parametrize("name", sorted(TOTALS))
def test_bag_info_reads_every_reported_message(name: str, shared_data: Path, capsys) -> None:
    path = shared_data / "real_bags" / name
    assert main(["bag-info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"total: {TOTALS[name]} messages read, every reported message accounted for" in out
    bag = Bag(path)
    counts, _ = bag.count_messages()
    assert sum(counts.values()) == TOTALS[name]
    assert all(bag.topics[t].reported_count in (None, n) for t, n in counts.items())


@pytest.mark.parametrize("name", ["rosbag2_talker_sqlite3", "rosbag2_talker_mcap"])
def test_talker_bags_where_rosbags_reads_nothing(name: str, shared_data: Path) -> None:
    path = shared_data / "real_bags" / name
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        assert reader.message_count == 20
        assert sum(1 for _ in reader.messages()) == 0  # rosbags' silent short read (README note 1)
    text = describe(str(path), decode=True)
    assert "/topic" in text and "total: 20 messages read" in text
    # ours decodes all 20, including /rosout whose embedded definition in the db3 is truncated
    for topic in ("/rosout", "/topic"):  # reported, read, decoded
        assert re.search(rf"{topic}\s+\S+\s+10\s+10\s+10\n", text), text


def test_metadata_duration_is_not_trusted(shared_data: Path) -> None:
    text = describe(str(shared_data / "real_bags" / "rosbag2_file_compression_zstd_sqlite3"))
    assert "duration (data): 191.001 s" in text and "duration (metadata): 59.998 s" in text


@pytest.mark.parametrize(
    "name",
    [
        "rosbag2_topics_and_service_events_mcap",  # rosbags cannot open it (srv-style schema)
        "rosbag2_cpp_mcap_no_metadata/topics_and_services.mcap",
        "rosbag2_talker_sqlite3",  # rosbags fails 10 /rosout (truncated embedded msgdef)
        "ats_aerial_manipulator_px4_mcap",  # custom px4_msgs from embedded schemas
        "rosbag2_message_compression_zstd_sqlite3",
    ],
)
def test_decode_where_rosbags_fails(name: str, shared_data: Path, capsys) -> None:
    assert main(["bag-info", "--decode", str(shared_data / "real_bags" / name)]) == 0
    assert f"total: {TOTALS[name]} messages read" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (
            "tb3_walker_gazebo_sqlite3",
            "topic /performance_metrics: type gazebo_msgs/msg/PerformanceMetrics is unknown",
        ),
        ("rosbag2_topics_and_service_events_sqlite3", "type test_msgs/srv/BasicTypes_Event is unknown"),
    ],
)
def test_decode_failure_names_bag_and_reason(name: str, reason: str, shared_data: Path, capsys) -> None:
    assert main(["bag-info", "--decode", str(shared_data / "real_bags" / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and reason in err


def _rosbags_messages(path: Path, topic: str) -> list[tuple[int, object]]:
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages(connections=conns)]


def test_turtlebot_bag_ingests(shared_data: Path) -> None:
    path = shared_data / "real_bags" / "tb3_walker_gazebo_sqlite3"
    ds, report = ingest([path], load_spec(REPO / "config" / "ingest" / "tb3_walker.yaml"))
    assert report.ticks == 140 and len(ds) == 140 and ds.num_episodes == 1
    assert ds.metadata.observation_names[:4] == [
        "wheel_left_joint.position",
        "wheel_right_joint.position",
        "wheel_left_joint.velocity",
        "wheel_right_joint.velocity",
    ]
    assert ds.metadata.action_names == ["base.linear_x_cmd", "base.angular_z_cmd"]
    twists = _rosbags_messages(path, "/cmd_vel")
    np.testing.assert_array_equal(
        ds.actions, np.array([[m.linear.x, m.angular.z] for _, m in twists], np.float32)
    )
    # observation of tick 70: the last /joint_states and /imu at or before the 70th command
    t_cmd = twists[70][0]
    js = [m for t, m in _rosbags_messages(path, "/joint_states") if t <= t_cmd][-1]
    imu = [m for t, m in _rosbags_messages(path, "/imu") if t <= t_cmd][-1]
    want = [
        *js.position,
        *js.velocity,
        imu.angular_velocity.z,
        imu.linear_acceleration.x,
        imu.linear_acceleration.y,
    ]
    np.testing.assert_array_equal(ds.observations[70], np.array(want, np.float32))
    assert report.topics["/imu"].rate_hz == pytest.approx(200, rel=0.05)
    assert np.all(np.isfinite(ds.rewards)) and ds.rewards.max() > 0  # it does drive forward


def test_servo_arm_bag_ingests_by_index(shared_data: Path) -> None:
    path = shared_data / "real_bags" / "ats_servo_arm_jointstate_sqlite3"
    ds, report = ingest([path], load_spec(REPO / "config" / "ingest" / "servo_arm.yaml"))
    states = _rosbags_messages(path, "/servo/out/state")
    refs = _rosbags_messages(path, "/servo/in/references/joint_references")
    assert all(len(m.name) == 0 for _, m in states)  # why by_index is needed
    assert report.ticks == len(states) == 1262
    # ticks before the first setpoint (t = 30 s) have no action: dropped and counted
    before = sum(1 for t, _ in states if t < refs[0][0])
    assert report.stale["/servo/in/references/joint_references"] == before
    assert len(ds) == report.ticks - sum(report.dropped.values())
    first = next(i for i, (t, _) in enumerate(states) if t >= refs[0][0])
    np.testing.assert_array_equal(
        ds.observations[0], np.r_[states[first][1].position, states[first][1].velocity].astype(np.float32)
    )
    np.testing.assert_array_equal(ds.actions[0], refs[0][1].position.astype(np.float32))
    assert ds.metadata.observation_names[0] == "servo_1.position"


def test_servo_bag_rejects_spec_for_a_joint_field_it_lacks(shared_data: Path) -> None:
    spec = load_spec(REPO / "config" / "ingest" / "servo_arm.yaml")
    spec.observations[0].fields = ["position", "effort"]
    with pytest.raises(BagError, match=r"field effort has 0 values, index 0 is missing"):
        ingest([shared_data / "real_bags" / "ats_servo_arm_jointstate_sqlite3"], spec)

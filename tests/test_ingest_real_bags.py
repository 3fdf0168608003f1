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


# ------------------------------------------------------------------ joints by name across name sets
ATS = "ats_aerial_manipulator_px4_mcap"


def _ats_spec(**changes: object):
    """The aerial manipulator's servo arm: its state names the joints q0..q2 (position, velocity,
    effort, ~16 Hz) while the controller's setpoints name the same arm q1..q3 (positions only,
    ~9 Hz). One tick per setpoint; each side is mapped by its own names."""
    from offrl_robot.data.ingest_spec import spec_from_dict

    data = {
        "control_rate_hz": 9,
        "alignment": {
            "reference": "/controller/out/servo_positions",
            "max_age_s": 0.13,
            "time_source": "receive",
        },
        "episodes": {"gap_s": 1.0},
        "observations": [
            {
                "topic": "/servo/out/state",
                "type": "sensor_msgs/msg/JointState",
                "joints": ["q0", "q1", "q2"],
                "fields": ["position", "velocity"],
            }
        ],
        "action": {
            "topic": "/controller/out/servo_positions",
            "type": "sensor_msgs/msg/JointState",
            "joints": ["q1", "q2", "q3"],
            "fields": ["position"],
            "names": ["servo_1.position_cmd", "servo_2.position_cmd", "servo_3.position_cmd"],
            "low": [-3.1416] * 3,
            "high": [3.1416] * 3,
        },
        "reward": {"function": "offrl_robot.data.robot_rewards:joint_tracking_reward"},
    }
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if section == "obs":
            data["observations"][0][sub] = value
        elif sub:
            data[section][sub] = value
        else:
            data[section] = value
    return spec_from_dict(data, "ats-spec")


@pytest.mark.parametrize("time_source", ["receive", "header"])
def test_aerial_manipulator_joints_by_name_under_two_name_sets(shared_data: Path, time_source: str) -> None:
    path = shared_data / "real_bags" / ATS
    ds, report = ingest([path], _ats_spec(alignment__time_source=time_source))
    states = _rosbags_messages(path, "/servo/out/state")
    setpoints = _rosbags_messages(path, "/controller/out/servo_positions")
    assert report.ticks == len(setpoints) == 55 and not report.warnings  # both sides stamped

    def when(t: int, m) -> int:
        return t if time_source == "receive" else m.header.stamp.sec * 10**9 + m.header.stamp.nanosec

    ticks = [when(t, m) for t, m in setpoints]
    state_times = [when(t, m) for t, m in states]
    expected_obs, expected_act = [], []
    for k, tick in enumerate(ticks[:-1]):  # the last setpoint has no later state: dropped
        i = max(j for j, t in enumerate(state_times) if t <= tick)
        assert tick - state_times[i] <= 0.13e9
        s = states[i][1]
        order = [list(s.name).index(q) for q in ("q0", "q1", "q2")]
        expected_obs.append(np.r_[s.position[order], s.velocity[order]])
        a = setpoints[k][1]
        expected_act.append(a.position[[list(a.name).index(q) for q in ("q1", "q2", "q3")]])
    assert len(ds) == len(ticks) - 1
    np.testing.assert_array_equal(ds.observations, np.array(expected_obs, np.float32))
    np.testing.assert_array_equal(ds.actions, np.array(expected_act, np.float32))
    assert ds.metadata.observation_names[:3] == ["q0.position", "q1.position", "q2.position"]


def test_aerial_manipulator_by_index_on_constant_names(shared_data: Path) -> None:
    """by_index stays allowed where name[] is non-empty but never changes: same columns."""
    path = shared_data / "real_bags" / ATS
    by_name, _ = ingest([path], _ats_spec())
    by_index, _ = ingest(
        [path], _ats_spec(obs__joints=["q0", "q1", "q2"], obs__by_index=True, obs__indices=[0, 1, 2])
    )
    np.testing.assert_array_equal(by_index.observations, by_name.observations)


def test_aerial_manipulator_refuses_the_other_name_set(shared_data: Path) -> None:
    path = shared_data / "real_bags" / ATS
    with pytest.raises(
        BagError, match=r"joint 'q0' is absent from JointState \(names in bag: \['q1', 'q2', 'q3'\]\)"
    ):
        ingest([path], _ats_spec(action__joints=["q0", "q1", "q2"]))
    with pytest.raises(BagError, match=r"joint 'q1' has no velocity value in any message that names it"):
        ingest([path], _ats_spec(action__fields=["position", "velocity"], action__names=None))


def test_turtlebot_effort_is_empty_in_every_message(shared_data: Path) -> None:
    spec = load_spec(REPO / "config" / "ingest" / "tb3_walker.yaml")
    spec.observations[0].fields = ["position", "effort"]
    with pytest.raises(
        BagError, match=r"joint 'wheel_left_joint' has no effort value in any message that names it"
    ):
        ingest([shared_data / "real_bags" / "tb3_walker_gazebo_sqlite3"], spec)


def test_turtlebot_header_time_is_another_clock(shared_data: Path) -> None:
    """Gazebo stamps /joint_states with sim time, /cmd_vel (Twist) has no header: header mode
    would compare sim-time states with wall-clock ticks. Refused, naming both."""
    spec = load_spec(REPO / "config" / "ingest" / "tb3_walker.yaml")
    spec.alignment.time_source = "header"
    with pytest.raises(BagError) as err:
        ingest([shared_data / "real_bags" / "tb3_walker_gazebo_sqlite3"], spec)
    text = str(err.value)
    assert "time_source: header mixes two clocks: ticks come from /cmd_vel, which has no header" in text
    assert "set alignment.time_source: receive" in text


def test_times_only_reference_ticks_on_its_header_stamps(shared_data: Path) -> None:
    """A reference topic read for its times only (/servo/in/state, 9 JointStates) ticks on its
    header stamps in header mode (read from the CDR without decoding), on receive time otherwise."""
    path = shared_data / "real_bags" / ATS
    refs = _rosbags_messages(path, "/servo/in/state")
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in refs]
    assert all(t != s for (t, _), s in zip(refs, stamps, strict=True))  # the two clocks differ here
    from offrl_robot.data.bag_reader import TypeResolver
    from offrl_robot.data.rosbag_ingest import SyncReport, decode_topics

    for use_header, want in ((True, stamps), (False, [t for t, _ in refs])):
        data, _ = decode_topics(
            Bag(path), {"/servo/in/state": None}, use_header, TypeResolver(), SyncReport()
        )
        assert data["/servo/in/state"].times.tolist() == want
        assert data["/servo/in/state"].clock == ("header" if use_header else "receive")
    setpoints = _rosbags_messages(path, "/controller/out/servo_positions")
    states = _rosbags_messages(path, "/servo/out/state")

    def clock(t: int, m, time_source: str) -> int:
        return m.header.stamp.sec * 10**9 + m.header.stamp.nanosec if time_source == "header" else t

    for time_source, ticks in (("header", stamps), ("receive", [t for t, _ in refs])):
        spec = _ats_spec(
            alignment__reference="/servo/in/state",
            alignment__time_source=time_source,
            action__max_age_s=float("inf"),  # a setpoint holds until the next one
        )
        ds, report = ingest([path], spec)
        first_setpoint = clock(*setpoints[0], time_source)
        tick = next(t for t in ticks if t >= first_setpoint)  # earlier ticks have no action: dropped
        when = [clock(t, s, time_source) for t, s in states]
        state = states[max(j for j, t in enumerate(when) if t <= tick)][1]
        assert report.ticks == 9 and not report.warnings
        assert report.stale["/controller/out/servo_positions"] == sum(t < first_setpoint for t in ticks)
        np.testing.assert_array_equal(ds.observations[0, :3], state.position.astype(np.float32))

"""Alignment semantics of `ingest`: exact pairing, no future leakage, stale drops counted,
jitter, episode splitting by marker and by gap, fixed-rate ticks, reward sources."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from bagkit import EPOCH_NS, JOINTS, PERIOD_NS, write_arm_bag

from offrl_robot.data.ingest_spec import spec_from_dict
from offrl_robot.data.rosbag_ingest import ingest
from offrl_robot.data.rosbag_write import RobotLogWriter
from offrl_robot.errors import BagError

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "config" / "ingest" / "arm_reach.yaml").read_text())
# data-only reward that needs no MuJoCo: keeps these tests fast
BASE["reward"] = {"function": "offrl_robot.data.robot_rewards:joint_tracking_reward"}


def spec(**changes: object):
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            data[section][sub] = value
        else:
            data[section] = value
    return spec_from_dict(data, "test-spec")


@pytest.mark.parametrize(
    ("storage", "compression"), [("mcap", None), ("sqlite3", None), ("mcap", "file"), ("sqlite3", "message")]
)
def test_reproduces_logged_transitions_exactly(tmp_path: Path, storage: str, compression: str | None) -> None:
    log = write_arm_bag(
        tmp_path / "bag", storage=storage, episodes=3, steps=12, seed=1, compression=compression
    )
    ds, report = ingest([tmp_path / "bag"], spec())
    assert ds.num_episodes == 3 and len(ds) == 36
    np.testing.assert_array_equal(ds.observations, log.observations)
    np.testing.assert_array_equal(ds.actions, log.actions)
    np.testing.assert_array_equal(ds.next_observations, log.next_observations)
    assert [b - a for a, b in ds.episode_bounds()] == [12, 12, 12]
    assert ds.timeouts.sum() == 3 and not ds.terminals.any()
    assert ds.metadata.observation_names[:2] == ["joint_1.position", "joint_2.position"]
    assert ds.metadata.observation_names[6] == "joint_1.velocity"
    assert ds.metadata.observation_names[-3:] == ["goal.x", "goal.y", "goal.z"]
    expected_reward = -np.linalg.norm(log.next_observations[:, :6].astype(float) - log.actions, axis=1)
    np.testing.assert_allclose(ds.rewards, expected_reward, rtol=1e-5)
    assert report.ticks == 36 and report.transitions == 36 and sum(report.dropped.values()) == 0
    assert ds.metadata.source["kind"] == "rosbag" and len(ds.metadata.source["bags"][0]["sha256"]) == 64
    text = report.format()
    assert "/joint_states" in text and "ticks 36" in text


def test_never_sees_the_future(tmp_path: Path) -> None:
    """A joint state stamped 1 ns after a command is not that command's observation."""
    path = tmp_path / "bag"
    with RobotLogWriter(path, storage="mcap") as log:
        log.episode(0, 0)
        log.goal(0, [0.1, 0.2, 0.3])
        for k in range(6):
            t = 10_000_000 + k * PERIOD_NS
            log.joint_state(t, JOINTS, np.full(6, k), np.zeros(6))
            log.command(t + 5_000_000, np.full(6, 0.1 * k))
            # a "future" state just after the command: must never be paired with it
            log.joint_state(t + 5_000_001, JOINTS, np.full(6, 100.0 + k), np.zeros(6))
    ds, _ = ingest([path], spec(alignment__max_age_s=0.02))
    assert len(ds) == 6
    np.testing.assert_array_equal(ds.observations[:, 0], np.arange(6))
    # next observation = the observation of the next tick (as-of at the next command)
    np.testing.assert_array_equal(ds.next_observations[:5, 0], np.arange(1, 6))
    # the last row's next observation is the first state logged after its command
    assert ds.next_observations[5, 0] == 105.0


def test_stale_steps_are_dropped_and_counted(tmp_path: Path) -> None:
    """A missing joint state makes its tick stale: that tick and the row before it drop, the
    episode splits there and the row before the gap becomes a timeout."""
    log = write_arm_bag(
        tmp_path / "bag",
        storage="mcap",
        episodes=1,
        steps=10,
        latency_ns=4_000_000,
        jitter_ns=0,
        skip_joint_ticks=frozenset({(0, 5)}),
    )
    # max age 10 ms: the state before the gap is 24 ms old at tick 5
    ds, report = ingest([tmp_path / "bag"], spec(alignment__max_age_s=0.01))
    assert report.ticks == 10
    assert report.stale["/joint_states"] == 1
    assert report.dropped["stale or missing input at the tick"] == 1
    assert report.dropped["no valid next observation"] == 1
    assert len(ds) == 8 and ds.num_episodes == 2
    keep = [0, 1, 2, 3, 6, 7, 8, 9]
    np.testing.assert_array_equal(ds.observations, log.observations[keep])
    np.testing.assert_array_equal(ds.next_observations, log.next_observations[keep])
    assert ds.timeouts.tolist() == [False, False, False, True, False, False, False, True]
    # with a wide window the same bag keeps every tick (zero-order hold across the gap)
    ds_wide, report_wide = ingest([tmp_path / "bag"], spec(alignment__max_age_s=0.05))
    assert len(ds_wide) == 10 and sum(report_wide.dropped.values()) == 0
    np.testing.assert_array_equal(ds_wide.observations[5], log.observations[4])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jitter_up_to_almost_a_period_keeps_exact_pairing(tmp_path: Path, seed: int) -> None:
    log = write_arm_bag(
        tmp_path / "bag",
        storage="sqlite3",
        episodes=2,
        steps=20,
        seed=seed,
        jitter_ns=6_000_000,
        latency_ns=7_000_000,
    )
    ds, report = ingest([tmp_path / "bag"], spec())
    np.testing.assert_array_equal(ds.observations, log.observations)
    np.testing.assert_array_equal(ds.next_observations, log.next_observations)
    assert report.topics["/joint_states"].rate_hz == pytest.approx(50.0, rel=0.2)


def test_gap_split_and_fixed_rate_ticks(tmp_path: Path) -> None:
    log = write_arm_bag(
        tmp_path / "bag", storage="mcap", episodes=2, steps=10, jitter_ns=0, latency_ns=1_000_000
    )
    data = copy.deepcopy(BASE)
    data["episodes"] = {"gap_s": 0.5}
    data["alignment"] = {"reference": "rate", "max_age_s": 0.025, "time_source": "receive"}
    ds, report = ingest([tmp_path / "bag"], spec_from_dict(data, "rate-spec"))
    # ticks every 20 ms from the first to the last command of each episode: 10 per episode
    assert report.ticks == 20 and ds.num_episodes == 2
    np.testing.assert_array_equal(ds.actions, log.actions)
    np.testing.assert_array_equal(ds.observations, log.observations)


def test_header_time_source_and_reward_topic(tmp_path: Path) -> None:
    """Header stamps drive alignment when asked; a logged reward is taken after the action."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    path = tmp_path / "bag"
    js_cls, f64 = store.types["sensor_msgs/msg/JointState"], store.types["std_msgs/msg/Float64"]
    arr_cls = store.types["std_msgs/msg/Float64MultiArray"]
    layout = store.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    time_cls, header_cls = store.types["builtin_interfaces/msg/Time"], store.types["std_msgs/msg/Header"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_js = w.add_connection("/joint_states", js_cls.__msgtype__, typestore=store)
        c_cmd = w.add_connection("/cmd", arr_cls.__msgtype__, typestore=store)
        c_rew = w.add_connection("/reward", f64.__msgtype__, typestore=store)
        for k in range(8):
            sensed = 1_000_000_000 + k * PERIOD_NS
            # received 30 ms late: by receive time it would be stale at max_age 10 ms
            header = header_cls(stamp=time_cls(sec=1, nanosec=k * PERIOD_NS), frame_id="")
            msg = js_cls(
                header=header,
                name=JOINTS,
                position=np.full(6, float(k)),
                velocity=np.zeros(6),
                effort=np.zeros(0),
            )
            w.write(c_js, sensed + 30_000_000, store.serialize_cdr(msg, js_cls.__msgtype__))
            w.write(
                c_cmd,
                sensed + 5_000_000,
                store.serialize_cdr(arr_cls(layout=layout, data=np.zeros(6)), arr_cls.__msgtype__),
            )
            if k != 3:  # command 3 gets no reward message: its row must go, not borrow a reward
                w.write(c_rew, sensed + 6_000_000, store.serialize_cdr(f64(data=-float(k)), f64.__msgtype__))
    data = copy.deepcopy(BASE)
    data["observations"] = data["observations"][:1]
    data["episodes"] = {"gap_s": 1.0}
    data["reward"] = {"topic": "/reward", "field": "data"}
    data["alignment"] = {"reference": "/cmd", "max_age_s": 0.01, "time_source": "header"}
    ds, report = ingest([path], spec_from_dict(data, "header-spec"))
    kept = [0, 1, 2, 4, 5, 6]  # tick 7: no later state; tick 3: no reward logged after it
    np.testing.assert_array_equal(ds.observations[:, 0], kept)
    # reward of tick k is the one logged after command k, as-of the next tick
    np.testing.assert_array_equal(ds.rewards, -np.array(kept, dtype=np.float32))
    assert report.dropped["stale reward"] == 1
    assert ds.episode_starts.tolist() == [True, False, False, True, False, False]
    assert ds.timeouts.tolist() == [False, False, True, False, False, True]
    data["alignment"]["time_source"] = "receive"
    with pytest.raises(Exception, match="no transition survives alignment"):
        ingest([path], spec_from_dict(data, "receive-spec"))


def test_multiple_bags_concatenate_without_crossing(tmp_path: Path) -> None:
    a = write_arm_bag(tmp_path / "a", storage="mcap", episodes=1, steps=5, seed=4)
    b = write_arm_bag(tmp_path / "b", storage="sqlite3", episodes=2, steps=5, seed=5)
    ds, report = ingest([tmp_path / "a", tmp_path / "b"], spec())
    assert ds.num_episodes == 3 and len(report.bags) == 2
    np.testing.assert_array_equal(ds.observations, np.concatenate([a.observations, b.observations]))
    assert len(ds.metadata.source["bags"]) == 2


@pytest.mark.parametrize("seed", range(4))
def test_each_row_uses_the_latest_fresh_state_at_or_before_its_tick(tmp_path: Path, seed: int) -> None:
    """Invariant on random logs (jitter, latency, missing states): the observation of every row
    is the newest joint state stamped at or before its command, never a later one, and rows
    whose newest state is older than the window are absent."""
    rng = np.random.default_rng(seed)
    skip = frozenset((0, int(k)) for k in rng.choice(30, size=5, replace=False))
    log = write_arm_bag(
        tmp_path / "bag",
        storage="mcap",
        episodes=1,
        steps=30,
        seed=seed,
        jitter_ns=int(rng.integers(0, 8_000_000)),
        latency_ns=int(rng.integers(1_000_000, 9_000_000)),
        skip_joint_ticks=skip,
    )
    max_age_ns = 30_000_000
    ds, report = ingest([tmp_path / "bag"], spec(alignment__max_age_s=max_age_ns / 1e9))
    states = np.array(log.joint_times)
    # joint_1.position is unique per logged state: map each row back to the state it used
    logged = {}
    for (ep, k), row in zip(
        [(0, k) for k in range(31)],
        np.concatenate([log.observations[:1], log.next_observations]),
        strict=True,
    ):
        if (ep, k) not in skip:
            logged[float(row[0])] = len(logged)
    used = np.array([logged[float(v)] for v in ds.observations[:, 0]])
    commands = np.array(log.command_times)
    latest = np.searchsorted(states, commands, side="right") - 1
    fresh = (latest >= 0) & (commands - states[np.maximum(latest, 0)] <= max_age_ns)
    # a row survives when its tick and the next tick (its next observation) are both fresh;
    # the last tick's next observation is the final state, always logged here
    tick_of_row = [t for t in range(30) if fresh[t] and (t == 29 or fresh[t + 1])]
    assert len(ds) == len(tick_of_row)
    for row, tick in enumerate(tick_of_row):
        assert states[used[row]] <= commands[tick]  # never the future
        assert used[row] == latest[tick]  # and the newest one available
    assert report.ticks == 30
    assert report.stale["/joint_states"] == int((~fresh).sum())


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_split_bag_reads_files_in_order(tmp_path: Path, storage: str) -> None:
    """A split bag (one metadata.yaml, several storage files, as `ros2 bag record
    --max-bag-duration` writes) ingests as one log; episodes continue across the file boundary."""
    first = write_arm_bag(tmp_path / "a", storage=storage, episodes=2, steps=8, seed=7)
    later = EPOCH_NS + 60 * 1_000_000_000
    second = write_arm_bag(
        tmp_path / "b", storage=storage, episodes=1, steps=8, seed=8, start_ns=later, first_episode=2
    )
    split = tmp_path / "split"
    split.mkdir()
    meta_a = yaml.safe_load((tmp_path / "a" / "metadata.yaml").read_text())
    meta_b = yaml.safe_load((tmp_path / "b" / "metadata.yaml").read_text())
    info_a, info_b = meta_a["rosbag2_bagfile_information"], meta_b["rosbag2_bagfile_information"]
    files = []
    for i, (src, info) in enumerate([(tmp_path / "a", info_a), (tmp_path / "b", info_b)]):
        (name,) = info["relative_file_paths"]
        target = f"split_{i}{Path(name).suffix}"
        shutil.copy(src / name, split / target)
        files.append(target)
    counts_b = {e["topic_metadata"]["name"]: e["message_count"] for e in info_b["topics_with_message_count"]}
    for entry in info_a["topics_with_message_count"]:
        entry["message_count"] += counts_b[entry["topic_metadata"]["name"]]
    info_a["relative_file_paths"] = files
    info_a["files"] = []
    info_a["message_count"] += info_b["message_count"]
    (split / "metadata.yaml").write_text(yaml.safe_dump(meta_a))

    ds, _ = ingest([split], spec())
    assert ds.num_episodes == 3
    np.testing.assert_array_equal(ds.observations, np.concatenate([first.observations, second.observations]))
    np.testing.assert_array_equal(ds.actions, np.concatenate([first.actions, second.actions]))


def test_header_stamps_out_of_order_are_sorted(tmp_path: Path) -> None:
    """Stamps that go backwards in arrival order (a lagging publisher on the same topic) are
    sorted in header mode, not refused: each tick takes the latest stamp at or before it."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    js_cls, arr_cls = store.types["sensor_msgs/msg/JointState"], store.types["std_msgs/msg/Float64MultiArray"]
    time_cls, header_cls = store.types["builtin_interfaces/msg/Time"], store.types["std_msgs/msg/Header"]
    layout = store.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    ms = 1_000_000
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_js = w.add_connection("/joint_states", js_cls.__msgtype__, typestore=store)
        c_cmd = w.add_connection("/cmd", arr_cls.__msgtype__, typestore=store)
        for k, (received, stamped) in enumerate([(10, 10), (30, 50), (50, 30), (70, 70)]):
            header = header_cls(stamp=time_cls(sec=0, nanosec=stamped * ms), frame_id="")
            msg = js_cls(
                header=header,
                name=JOINTS,
                position=np.full(6, float(k)),
                velocity=np.zeros(6),
                effort=np.zeros(0),
            )
            w.write(c_js, received * ms, store.serialize_cdr(msg, js_cls.__msgtype__))
            cmd = arr_cls(layout=layout, data=np.zeros(6))
            w.write(c_cmd, (received + 5) * ms, store.serialize_cdr(cmd, arr_cls.__msgtype__))
    data = copy.deepcopy(BASE)
    data["observations"] = data["observations"][:1]
    data["episodes"] = {"gap_s": 1.0}
    data["alignment"] = {"reference": "/cmd", "max_age_s": 0.03, "time_source": "header"}
    ds, report = ingest([tmp_path / "bag"], spec_from_dict(data, "sorted-spec"))
    # ticks at 15, 35, 55, 75 ms -> stamps 10, 30, 50, 70 = messages 0, 2, 1, 3 (the last has no next)
    np.testing.assert_array_equal(ds.observations[:, 0], [0, 2, 1])
    np.testing.assert_array_equal(ds.next_observations[:, 0], [2, 1, 3])
    assert report.sorted_stamps["/joint_states"] == 1
    assert "header stamps out of order (sorted): /joint_states: 1" in report.format()
    assert report.warnings and "ticks come from /cmd, which has no header" in report.warnings[0]
    # receive time keeps arrival order: 0, 1, 2
    data["alignment"]["time_source"] = "receive"
    ds, report = ingest([tmp_path / "bag"], spec_from_dict(data, "receive-spec"))
    np.testing.assert_array_equal(ds.observations[:, 0], [0, 1, 2])
    assert not report.sorted_stamps and not report.warnings


def test_header_clock_far_from_receive_clock_is_refused(tmp_path: Path) -> None:
    """Header stamps 100 s behind the receive clock (sim time, unsynced machine) while the ticks
    come from a headerless command: refused, not silently all-stale."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    js_cls, arr_cls = store.types["sensor_msgs/msg/JointState"], store.types["std_msgs/msg/Float64MultiArray"]
    time_cls, header_cls = store.types["builtin_interfaces/msg/Time"], store.types["std_msgs/msg/Header"]
    layout = store.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.SQLITE3) as w:
        c_js = w.add_connection("/joint_states", js_cls.__msgtype__, typestore=store)
        c_cmd = w.add_connection("/cmd", arr_cls.__msgtype__, typestore=store)
        for k in range(5):
            received = EPOCH_NS + k * PERIOD_NS
            stamp = received - 100 * 10**9
            header = header_cls(stamp=time_cls(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="")
            msg = js_cls(
                header=header, name=JOINTS, position=np.zeros(6), velocity=np.zeros(6), effort=np.zeros(0)
            )
            w.write(c_js, received, store.serialize_cdr(msg, js_cls.__msgtype__))
            cmd = arr_cls(layout=layout, data=np.zeros(6))
            w.write(c_cmd, received + 5_000_000, store.serialize_cdr(cmd, arr_cls.__msgtype__))
    data = copy.deepcopy(BASE)
    data["observations"] = data["observations"][:1]
    data["episodes"] = {"gap_s": 1.0}
    data["alignment"] = {"reference": "/cmd", "max_age_s": 0.03, "time_source": "header"}
    with pytest.raises(BagError, match=r"mixes two clocks: ticks come from /cmd, .* are \+100\.000 s from"):
        ingest([tmp_path / "bag"], spec_from_dict(data, "clock-spec"))

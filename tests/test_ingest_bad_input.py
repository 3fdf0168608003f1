"""Bad input never produces a dataset: one line naming the bag/topic/field and what to do,
exit code 2, and nothing left in the datasets root."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from bagkit import JOINTS, write_arm_bag
from conftest import REPO
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from offrl_robot.cli import main
from offrl_robot.data.rosbag_write import RobotLogWriter

SPEC = REPO / "config" / "ingest" / "arm_reach.yaml"


@pytest.fixture(scope="module")
def good_bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("good")
    bags = {}
    for storage in ("mcap", "sqlite3"):
        bags[storage] = root / storage
        write_arm_bag(bags[storage], storage=storage, episodes=2, steps=60)
    return bags


def run_ingest(
    capsys: pytest.CaptureFixture[str], minari_root: Path, bag: Path | str, spec: Path = SPEC
) -> str:
    code = main(["ingest", str(bag), "--spec", str(spec), "--out", "bad/never"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("offrl-robot ingest: error: ")
    assert list(minari_root.iterdir()) == [], "a failed ingest left something in the datasets root"
    return err


def storage_file(bag: Path) -> Path:
    (file,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    return file


def damaged_copy(src: Path, dst: Path, damage) -> Path:
    shutil.copytree(src, dst)
    file = storage_file(dst)
    data = bytearray(file.read_bytes())
    file.write_bytes(bytes(damage(data)))
    return dst


def test_missing_path(capsys, minari_root, tmp_path):
    err = run_ingest(capsys, minari_root, tmp_path / "nope")
    assert "nope: path does not exist" in err


def test_not_a_bag(capsys, minari_root, tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("hello")
    assert "not a rosbag2 bag" in run_ingest(capsys, minari_root, tmp_path / "dir")
    (tmp_path / "fake.mcap").write_text("this is text, not MCAP")
    assert "neither MCAP nor SQLite3" in run_ingest(capsys, minari_root, tmp_path / "fake.mcap")


def test_metadata_listing_a_missing_file_or_garbage(capsys, minari_root, tmp_path, good_bags):
    bag = tmp_path / "bag"
    shutil.copytree(good_bags["mcap"], bag)
    storage_file(bag).unlink()
    assert "listed in metadata.yaml is missing" in run_ingest(capsys, minari_root, bag)
    (bag / "metadata.yaml").write_text("just: [a, list\n")
    assert "metadata.yaml is not rosbag2 metadata" in run_ingest(capsys, minari_root, bag)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_storage_file(capsys, minari_root, tmp_path, good_bags, storage):
    bag = damaged_copy(good_bags[storage], tmp_path / "bag", lambda d: d[: len(d) // 2])
    err = run_ingest(capsys, minari_root, bag)
    assert str(bag) in err and "truncated or corrupt" in err


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_tail_is_not_a_silent_short_read(capsys, minari_root, tmp_path, good_bags, storage):
    bag = damaged_copy(good_bags[storage], tmp_path / "bag", lambda d: d[: len(d) - 200])
    err = run_ingest(capsys, minari_root, bag)
    assert str(bag) in err and ("truncated" in err or "corrupt" in err)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_corrupt_bytes_in_the_middle(capsys, minari_root, tmp_path, good_bags, storage):
    def damage(data: bytearray) -> bytearray:
        mid = len(data) // 2
        data[mid : mid + 64] = b"\xff" * 64
        return data

    err = run_ingest(capsys, minari_root, damaged_copy(good_bags[storage], tmp_path / "bag", damage))
    assert "corrupt" in err


def test_corrupt_zstd_file(capsys, minari_root, tmp_path):
    write_arm_bag(tmp_path / "z", storage="sqlite3", episodes=1, steps=5, compression="file")
    (zfile,) = (tmp_path / "z").glob("*.zstd")
    data = bytearray(zfile.read_bytes())
    data[10:40] = b"\x00" * 30
    zfile.write_bytes(bytes(data))
    assert "corrupt zstd" in run_ingest(capsys, minari_root, tmp_path / "z")


def _spec_with(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(SPEC.read_text())
    edit(data)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_missing_topic(capsys, minari_root, tmp_path, good_bags):
    spec = _spec_with(tmp_path, lambda d: d["observations"][1].update(topic="/target"))
    err = run_ingest(capsys, minari_root, good_bags["mcap"], spec)
    assert "topic /target not found" in err and "/goal" in err


def test_wrong_message_type(capsys, minari_root, tmp_path, good_bags):
    spec = _spec_with(tmp_path, lambda d: d["observations"][1].update(type="geometry_msgs/msg/PoseStamped"))
    err = run_ingest(capsys, minari_root, good_bags["sqlite3"], spec)
    assert "topic /goal has type geometry_msgs/msg/PointStamped" in err and "PoseStamped" in err


def test_joint_absent_from_joint_state(capsys, minari_root, tmp_path, good_bags):
    spec = _spec_with(tmp_path, lambda d: d["observations"][0]["joints"].__setitem__(5, "wrist_3"))
    err = run_ingest(capsys, minari_root, good_bags["mcap"], spec)
    assert "topic /joint_states: joint 'wrist_3' is absent from JointState" in err and "joint_6" in err


def test_empty_bags(capsys, minari_root, tmp_path, shared_data):
    with RobotLogWriter(tmp_path / "empty", storage="mcap"):
        pass
    err = run_ingest(capsys, minari_root, tmp_path / "empty")
    assert "holds no messages" in err
    real_empty = shared_data / "real_bags" / "rosbag2_empty_bag_sqlite3"
    err = run_ingest(capsys, minari_root, real_empty)
    assert "rosbag2_empty_bag_sqlite3" in err and "not found" in err  # no /joint_states at all


def _bag_with_joint_times(path: Path, receive_ms: list[int], header_ms: list[int]) -> Path:
    """An arm bag whose /joint_states carry the given receive times and header stamps."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    js = types["sensor_msgs/msg/JointState"]
    header_cls, time_cls = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]

    def header(ms: int):
        return header_cls(stamp=time_cls(sec=0, nanosec=ms * 1_000_000), frame_id="")

    cmd = types["std_msgs/msg/Float64MultiArray"](
        layout=types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0), data=np.zeros(6)
    )
    goal = types["geometry_msgs/msg/PointStamped"](
        header=header(0), point=types["geometry_msgs/msg/Point"](x=0, y=0, z=0)
    )
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as w:

        def put(topic: str, ms: int, msg) -> None:
            conn = next((c for c in w.connections if c.topic == topic), None)
            conn = conn or w.add_connection(topic, msg.__msgtype__, typestore=store)
            w.write(conn, ms * 1_000_000, store.serialize_cdr(msg, msg.__msgtype__))

        put("/episode", 0, types["std_msgs/msg/Int32"](data=0))
        put("/goal", 0, goal)
        for recv, stamp in zip(receive_ms, header_ms, strict=True):
            put(
                "/joint_states",
                recv,
                js(
                    header=header(stamp),
                    name=JOINTS,
                    position=np.zeros(6),
                    velocity=np.zeros(6),
                    effort=np.zeros(0),
                ),
            )
            put("/cmd", recv + 5, cmd)
    return path


def test_receive_timestamps_going_backwards(capsys, minari_root, tmp_path):
    bag = _bag_with_joint_times(tmp_path / "back", [10, 50, 30, 70], [10, 50, 30, 70])
    err = run_ingest(capsys, minari_root, bag)
    assert "topic /joint_states: receive timestamps go backwards at message 2 (20.000 ms)" in err


def test_header_stamps_going_backwards(capsys, minari_root, tmp_path):
    bag = _bag_with_joint_times(tmp_path / "hdr", [10, 30, 50, 70], [10, 50, 30, 70])
    spec = _spec_with(tmp_path, lambda d: d["alignment"].update(time_source="header"))
    err = run_ingest(capsys, minari_root, bag, spec)
    assert "topic /joint_states: header stamps go backwards at message 2" in err
    assert "time_source: receive" in err


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.update(contol_rate_hz=50), "unknown key 'contol_rate_hz'"),
        (lambda d: d["alignment"].update(max_age=0.1), "unknown key alignment.'max_age'"),
        (lambda d: d["observations"][0].update(joint=["a"]), "unknown key observations[0].'joint'"),
        (lambda d: d["action"].pop("low"), "action.low and action.high"),
        (lambda d: d["alignment"].update(time_source="gps"), "alignment.time_source must be one of"),
        (lambda d: d.update(reward={"function": "x:y", "topic": "/r"}), "reward needs exactly one"),
        (lambda d: d["observations"][0].update(by_index=True), "by_index: true needs indices"),
    ],
)
def test_spec_errors(capsys, minari_root, tmp_path, good_bags, edit, expected):
    spec = _spec_with(tmp_path, edit)
    err = run_ingest(capsys, minari_root, good_bags["mcap"], spec)
    assert str(spec) in err and expected in err


def test_missing_and_unparsable_spec(capsys, minari_root, tmp_path, good_bags):
    assert "file not found" in run_ingest(capsys, minari_root, good_bags["mcap"], tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("control_rate_hz: [50\n")
    assert "invalid YAML" in run_ingest(capsys, minari_root, good_bags["mcap"], bad)


def test_bag_info_fails_on_damaged_bag(capsys, tmp_path, good_bags):
    bag = damaged_copy(good_bags["mcap"], tmp_path / "bag", lambda d: d[: len(d) - 200])
    code = main(["bag-info", str(bag)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(bag) in err


def test_by_index_is_required_for_unnamed_joint_states(capsys, minari_root, tmp_path, shared_data):
    """The servo arm's JointState has an empty name[]: by-name mapping must refuse, not guess."""
    servo = REPO / "config" / "ingest" / "servo_arm.yaml"
    data = yaml.safe_load(servo.read_text())
    obs = copy.deepcopy(data["observations"][0])
    obs.pop("indices")
    obs["by_index"] = False
    data["observations"][0] = obs
    spec = tmp_path / "servo.yaml"
    spec.write_text(yaml.safe_dump(data))
    err = run_ingest(
        capsys, minari_root, shared_data / "real_bags" / "ats_servo_arm_jointstate_sqlite3", spec
    )
    assert "joint 'servo_1' is absent from JointState (names in bag: an empty name list)" in err
    assert "by_index: true" in err

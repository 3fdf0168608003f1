"""Bad input never produces a dataset: one line naming the bag/topic/field and what to do,
exit code 2, and nothing left in the datasets root."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from bagkit import FR3_ARM, JOINTS, write_arm_bag, write_fr3_bag
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
    capsys: pytest.CaptureFixture[str],
    minari_root: Path,
    bag: Path | str | list[Path],
    spec: Path = SPEC,
    extra: tuple[str, ...] = (),
) -> str:
    bags = [str(b) for b in bag] if isinstance(bag, list) else [str(bag)]
    code = main(["ingest", *bags, "--spec", str(spec), "--out", "bad/never", *extra])
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


# ------------------------------------------------------------------ issue 15: named user errors
FR3_SPEC = REPO / "config" / "ingest" / "fr3_gripper.yaml"


def _fr3_spec_with(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(FR3_SPEC.read_text())
    edit(data)
    path = tmp_path / "fr3.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_by_index_refuses_a_topic_whose_names_vary(capsys, minari_root, tmp_path):
    write_fr3_bag(tmp_path / "fr3", episodes=1, seconds=0.2, seed=1)

    def by_index(d):
        d["observations"][0] = {
            "topic": "/joint_states",
            "by_index": True,
            "indices": [0, 1, 2],
            "fields": ["position"],
        }

    err = run_ingest(capsys, minari_root, tmp_path / "fr3", _fr3_spec_with(tmp_path, by_index))
    assert "topic /joint_states: by_index: true, but name[] changes between messages" in err
    assert "map joints by name" in err


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (["header.frame_id"], "field 'header.frame_id' is text ('base_link'), not a number"),
        (["point"], "field 'point' is a whole geometry_msgs/msg/Point message, not a number"),
    ],
)
def test_non_numeric_field(capsys, minari_root, tmp_path, good_bags, fields, expected):
    spec = _spec_with(tmp_path, lambda d: d["observations"][1].update(fields=fields, names=None))
    err = run_ingest(capsys, minari_root, good_bags["mcap"], spec)
    assert "topic /goal: " + expected in err


@pytest.fixture
def reward_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "offrl_test_rewards.py").write_text(
        "import numpy as np\n"
        "def boom(obs, act, nxt):\n    return 1 / 0\n"
        "def nan_at_3(obs, act, nxt):\n    r = np.zeros(len(obs)); r[3] = np.nan; return r\n"
        "def text(obs, act, nxt):\n    return 'fast'\n"
        "def short(obs, act, nxt):\n    return np.zeros(2)\n"
    )
    (tmp_path / "offrl_test_broken.py").write_text("raise RuntimeError('half-written\\nmodule')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "offrl_test_rewards"


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        (":boom", "reward.function offrl_test_rewards:boom raised ZeroDivisionError on bag"),
        (":nan_at_3", "reward.function offrl_test_rewards:nan_at_3 returned nan for row 3 of bag"),
        (":text", "reward.function offrl_test_rewards:text returned str, not numbers"),
        (":short", "returned shape (2,)"),
        (":missing", "cannot be imported (AttributeError"),
    ],
)
def test_reward_function_failures(
    capsys, minari_root, tmp_path, good_bags, reward_module, function, expected
):
    spec = _spec_with(tmp_path, lambda d: d.update(reward={"function": reward_module + function}))
    assert expected in run_ingest(capsys, minari_root, good_bags["mcap"], spec)


def test_reward_module_that_fails_to_import(capsys, minari_root, tmp_path, good_bags, reward_module):
    spec = _spec_with(tmp_path, lambda d: d.update(reward={"function": "offrl_test_broken:f"}))
    err = run_ingest(capsys, minari_root, good_bags["mcap"], spec)
    assert (
        "reward.function: reward 'offrl_test_broken:f' cannot be imported (RuntimeError: half-written module)" in err
    )


def test_unusable_root_is_refused_before_ingest(capsys, minari_root, tmp_path, good_bags):
    """A truncated bag would fail too: the --root error comes first, so it was checked first."""
    truncated = damaged_copy(good_bags["mcap"], tmp_path / "bag", lambda d: d[: len(d) // 2])
    a_file = tmp_path / "datasets.txt"
    a_file.write_text("not a folder")
    err = run_ingest(capsys, minari_root, truncated, extra=("--root", str(a_file)))
    assert f"--root {a_file} is a file, not a directory" in err
    err = run_ingest(capsys, minari_root, truncated, extra=("--root", str(a_file / "sub")))
    assert f"--root {a_file / 'sub'} cannot be created: {a_file} is a file" in err
    assert a_file.read_text() == "not a folder"


def test_existing_dataset_is_refused_before_ingest(capsys, minari_root, tmp_path, good_bags):
    truncated = damaged_copy(good_bags["mcap"], tmp_path / "bag", lambda d: d[: len(d) // 2])
    existing = minari_root / "bad" / "never-v0"
    existing.mkdir(parents=True)
    code = main(["ingest", str(truncated), "--spec", str(SPEC), "--out", "bad/never"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "dataset bad/never-v0 already exists" in err and "--overwrite" in err
    assert list(existing.iterdir()) == []


def test_broken_stdout_pipe(minari_root, tmp_path, good_bags):
    """`offrl-robot ingest ... | head -0`: one line on stderr, exit 2, no dataset, no traceback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    spec = _spec_with(
        tmp_path,
        lambda d: d.update(reward={"function": "offrl_robot.data.robot_rewards:joint_tracking_reward"}),
    )
    cmd = [sys.executable, "-m", "offrl_robot.cli", "ingest", str(good_bags["mcap"]), "--spec", str(spec)]
    proc = subprocess.Popen(
        [*cmd, "--out", "bad/never"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the report is printed
    err = proc.stderr.read().decode().strip()
    assert proc.wait(timeout=300) == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("offrl-robot ingest: error: standard output closed early (broken pipe)")
    assert "no dataset was written" in err
    assert list(minari_root.iterdir()) == []


def test_broken_stdout_pipe_in_any_command(tmp_path, good_bags):
    """`offrl-robot bag-info BAG | head -0` (any command, not only ingest): one line on stderr,
    exit 1, no traceback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "offrl_robot.cli", "bag-info", str(good_bags["mcap"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the report is printed
    err = proc.stderr.read().decode().strip()
    assert proc.wait(timeout=300) == 1, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("offrl-robot bag-info: error: standard output closed early (broken pipe)")


def test_nan_names_joint_field_topic_and_time(capsys, minari_root, tmp_path):
    """A NaN fr3_joint5 position in the arm messages around command 10 (rows 0-9 are clean)."""
    probe = write_fr3_bag(tmp_path / "probe", episodes=1, seconds=0.3, seed=4)
    tick = probe.command_times[10]
    window = (tick - 3_000_000, tick)

    def poison(m):
        if "fr3_joint5" in m.names and window[0] <= m.receive_ns <= window[1]:
            m.position[m.names.index("fr3_joint5")] = np.nan

    log = write_fr3_bag(tmp_path / "fr3", episodes=1, seconds=0.3, seed=4, edit=poison)
    used = max(m.receive_ns for m in log.joint_messages if FR3_ARM[0] in m.names and m.receive_ns <= tick)
    err = run_ingest(capsys, minari_root, tmp_path / "fr3", FR3_SPEC)
    assert "topic /joint_states: fr3_joint5.position is nan in the message at " in err
    assert f"{used // 10**9}.{used % 10**9:09d} s (receive time)" in err
    assert "row" not in err and "column" not in err


def test_nan_in_an_action_names_the_action(capsys, minari_root, tmp_path):
    with RobotLogWriter(tmp_path / "bag", storage="mcap") as log:
        log.episode(0, 0)
        log.goal(0, [0.1, 0.2, 0.3])
        for k in range(6):
            t = 10_000_000 + k * 20_000_000
            log.joint_state(t, JOINTS, np.full(6, k), np.zeros(6))
            log.command(t + 5_000_000, [0.1, 0.1, np.nan if k == 4 else 0.1, 0.1, 0.1, 0.1])
    err = run_ingest(capsys, minari_root, tmp_path / "bag")
    assert f"topic /cmd: joint_3.velocity_cmd is nan in the message at {0.095:.9f} s (receive time)" in err


def test_same_bag_twice(capsys, minari_root, tmp_path, good_bags):
    err = run_ingest(capsys, minari_root, [good_bags["mcap"], good_bags["sqlite3"], good_bags["mcap"]])
    assert f"bag {good_bags['mcap']}: given twice" in err
    copy_of = tmp_path / "copy"
    shutil.copytree(good_bags["sqlite3"], copy_of)
    err = run_ingest(capsys, minari_root, [good_bags["sqlite3"], copy_of])
    assert f"bag {copy_of}: same content as bag {good_bags['sqlite3']}" in err

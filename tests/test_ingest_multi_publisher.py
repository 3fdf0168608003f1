"""One JointState topic, several publishers: a Franka FR3 arm broadcaster (7 joints, position +
velocity + effort, 1 kHz) and its gripper (2 fingers, positions only, ~30 Hz, later header
stamps) on /joint_states, optionally with name[] in a fresh order in every message.

Every column must be the value of the latest message that carries that joint and field, at or
before the tick, on the chosen clock — checked row by row against a plain-Python reference built
from the messages as they were written — so joints never mix."""

from __future__ import annotations

import bisect
import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from bagkit import FR3_ARM, FR3_FINGERS, Fr3Log, write_fr3_bag
from conftest import REPO

from offrl_robot.data.ingest_spec import load_spec, spec_from_dict
from offrl_robot.data.rosbag_ingest import ingest
from offrl_robot.errors import BagError, ConfigError

FR3_SPEC = REPO / "config" / "ingest" / "fr3_gripper.yaml"
BASE = yaml.safe_load(FR3_SPEC.read_text())


def fr3_spec(edit=None, time_source: str = "receive"):
    data = copy.deepcopy(BASE)
    data["alignment"]["time_source"] = time_source
    if edit:
        edit(data)
    return spec_from_dict(data, "fr3-test")


def expected_rows(log: Fr3Log, spec, clock: str) -> tuple[np.ndarray, np.ndarray]:
    """Observations and next observations at every command, from the written messages: for each
    (joint, field) the latest message naming that joint with a non-empty field, at or before
    the tick on `clock`, within its group's window (every tick is fresh in these logs)."""
    columns, ages = [], []
    for group in spec.observations[0].joint_groups:
        for field in group.fields:
            for joint in group.joints:
                columns.append((joint, field))
                ages.append(group.max_age_s or spec.alignment.max_age_s)
    series = []
    for joint, field in columns:
        points = []
        for m in log.joint_messages:
            values = getattr(m, field)
            if joint in m.names and values.size:
                t = m.header_ns if clock == "header" else m.receive_ns
                points.append((t, float(values[m.names.index(joint)])))
        points.sort(key=lambda p: p[0])
        series.append(([p[0] for p in points], [p[1] for p in points]))

    def at(tick: int) -> list[float]:
        row = []
        for (times, values), age in zip(series, ages, strict=True):
            k = bisect.bisect_right(times, tick) - 1
            assert k >= 0 and tick - times[k] <= age * 1e9, "the fixture keeps every tick fresh"
            row.append(values[k])
        return row

    ticks = log.command_times
    episode = np.searchsorted(log.episode_starts, ticks, side="right") - 1
    arm_times = sorted(
        m.header_ns if clock == "header" else m.receive_ns
        for m in log.joint_messages
        if FR3_ARM[0] in m.names
    )
    obs, nxt = [], []
    for i, tick in enumerate(ticks):
        obs.append(at(tick))
        if i + 1 < len(ticks) and episode[i + 1] == episode[i]:
            nxt.append(at(ticks[i + 1]))
        else:  # last tick of an episode: the first arm message after it
            nxt.append(at(arm_times[bisect.bisect_right(arm_times, tick)]))
    return np.array(obs, np.float32), np.array(nxt, np.float32)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["fixed-order", "shuffled-order"])
@pytest.mark.parametrize("clock", ["receive", "header"])
def test_each_joint_comes_from_the_latest_message_carrying_it(
    tmp_path: Path, storage: str, shuffle: bool, clock: str
) -> None:
    log = write_fr3_bag(tmp_path / "bag", storage=storage, episodes=2, seconds=0.4, seed=3, shuffle=shuffle)
    spec = fr3_spec(time_source=clock)
    ds, report = ingest([tmp_path / "bag"], spec)
    obs, nxt = expected_rows(log, spec, clock)
    assert len(ds) == len(log.command_times) == 80 and ds.num_episodes == 2
    np.testing.assert_array_equal(ds.observations, obs)
    np.testing.assert_array_equal(ds.next_observations, nxt)
    np.testing.assert_array_equal(ds.actions, log.commands.astype(np.float32))
    assert ds.metadata.observation_names == [
        *(f"{j}.position" for j in FR3_ARM),
        *(f"{j}.velocity" for j in FR3_ARM),
        *(f"{j}.position" for j in FR3_FINGERS),
    ]
    # the topic split into the arm's and the gripper's streams, each at its own rate
    arm, grip = report.streams.values()
    assert arm.rate_hz == pytest.approx(1000, rel=0.05) and grip.rate_hz == pytest.approx(30, rel=0.1)
    if clock == "header":
        # the gripper's stamps lag its arrival: in header order the topic goes backwards (sorted)
        assert report.sorted_stamps["/joint_states"] > 0
        assert any("ticks come from /cmd, which has no header" in w for w in report.warnings)
        assert "warning: " in report.format()
    else:
        assert not report.sorted_stamps and not report.warnings


def test_joints_never_mix(tmp_path: Path) -> None:
    """Every finger value is a gripper message's finger value, every arm value an arm message's
    value of that very joint (the values of different joints and publishers are distinct)."""
    log = write_fr3_bag(tmp_path / "bag", episodes=1, seconds=0.5, seed=5, shuffle=True)
    ds, _ = ingest([tmp_path / "bag"], fr3_spec())
    names = ds.metadata.observation_names
    for col, name in enumerate(names):
        joint, field = name.rsplit(".", 1)
        logged = {
            np.float32(getattr(m, field)[m.names.index(joint)])
            for m in log.joint_messages
            if joint in m.names and getattr(m, field).size
        }
        assert set(ds.observations[:, col].tolist()) <= logged, name


def test_shuffled_order_ingests_like_the_fixed_order(tmp_path: Path) -> None:
    """Same values, same seed; only the order of name[] differs: the same dataset."""
    write_fr3_bag(tmp_path / "fixed", episodes=2, seconds=0.3, seed=9)
    write_fr3_bag(tmp_path / "shuffled", episodes=2, seconds=0.3, seed=9, shuffle=True)
    a, _ = ingest([tmp_path / "fixed"], fr3_spec())
    b, _ = ingest([tmp_path / "shuffled"], fr3_spec())
    for name in ("observations", "next_observations", "actions", "rewards", "episode_starts", "timeouts"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_committed_spec_loads_and_names_groups() -> None:
    spec = load_spec(FR3_SPEC)
    groups = spec.observations[0].joint_groups
    assert [g.joints for g in groups] == [FR3_ARM, FR3_FINGERS]
    assert [g.fields for g in groups] == [["position", "velocity"], ["position"]]
    assert groups[1].max_age_s == 0.1 and groups[0].max_age_s is None


def test_gripper_window_applies_to_the_gripper_only(tmp_path: Path) -> None:
    """With the topic's 5 ms window for the fingers too, ticks more than 5 ms after a gripper
    message are stale for the gripper stream, never for the arm: counted under /joint_states."""
    write_fr3_bag(tmp_path / "bag", episodes=1, seconds=0.5, seed=2)

    def no_group_window(d):
        d["observations"][0]["joint_groups"][1].pop("max_age_s")

    ds, report = ingest([tmp_path / "bag"], fr3_spec(no_group_window))
    full, _ = ingest([tmp_path / "bag"], fr3_spec())
    assert report.stale["/joint_states"] > 0 and len(ds) < len(full)
    assert report.stale["/cmd"] == 0


def test_by_index_refuses_names_that_vary(tmp_path: Path) -> None:
    """by_index would put a gripper finger where the spec expects fr3_joint1: refused."""
    write_fr3_bag(tmp_path / "bag", episodes=1, seconds=0.2, seed=1)

    def by_index(d):
        d["observations"][0] = {
            "topic": "/joint_states",
            "by_index": True,
            "indices": [0, 1],
            "joints": ["a", "b"],
            "fields": ["position"],
        }

    with pytest.raises(BagError, match=r"by_index: true, but name\[\] changes between messages"):
        ingest([tmp_path / "bag"], fr3_spec(by_index))
    # the same for one publisher whose order changes: slot 0 is a different joint each time
    write_fr3_bag(tmp_path / "one", episodes=1, seconds=0.2, seed=1, shuffle=True, gripper_hz=0)
    with pytest.raises(BagError, match=r"name\[\] changes between messages .*map joints by name"):
        ingest([tmp_path / "one"], fr3_spec(by_index))


def test_field_the_publisher_never_sends(tmp_path: Path) -> None:
    write_fr3_bag(tmp_path / "bag", episodes=1, seconds=0.2, seed=1)

    def finger_velocity(d):
        d["observations"][0]["joint_groups"][1]["fields"] = ["position", "velocity"]

    with pytest.raises(
        BagError, match=r"joint 'fr3_finger_joint1' has no velocity value in any message that names it"
    ):
        ingest([tmp_path / "bag"], fr3_spec(finger_velocity))


@pytest.mark.parametrize("shuffle", [False, True])
def test_joint_in_no_message_lists_every_name_set(tmp_path: Path, shuffle: bool) -> None:
    """The error lists both publishers' names (shuffled orders of one set count once)."""
    write_fr3_bag(tmp_path / "bag", episodes=1, seconds=0.2, seed=1, shuffle=shuffle)

    def typo(d):
        d["observations"][0]["joint_groups"][0]["joints"][6] = "fr3_joint8"

    with pytest.raises(BagError) as err:
        ingest([tmp_path / "bag"], fr3_spec(typo))
    text = str(err.value)
    assert "joint 'fr3_joint8' is absent from JointState" in text
    assert "'fr3_joint7'" in text and "'fr3_finger_joint1'" in text  # both publishers' names


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda o: o.update(joints=["fr3_joint1"]), "joint_groups replaces joints/fields"),
        (lambda o: o.update(fields=["position"]), "joint_groups replaces joints/fields"),
        (lambda o: o["joint_groups"][1].update(fields=["torque"]), "'torque' is not one of"),
        (
            lambda o: o["joint_groups"][1].update(joints=["fr3_joint1"]),
            "fr3_joint1.position is already taken",
        ),
        (lambda o: o["joint_groups"][0].update(max_age_s=0), "max_age_s must be positive"),
        (lambda o: o.update(joint_groups=[]), "must list at least one group"),
        (
            lambda o: o.update(type="std_msgs/msg/Float64MultiArray"),
            "joint_groups is for sensor_msgs/msg/JointState",
        ),
        (
            lambda o: o["joint_groups"][0].update(fingers=1),
            "unknown key observations[0].joint_groups[0].'fingers'",
        ),
    ],
)
def test_joint_group_spec_errors(edit, expected) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        fr3_spec(lambda d: edit(d["observations"][0]))
    assert expected in str(err.value)

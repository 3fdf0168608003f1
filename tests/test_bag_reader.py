"""bag_reader: raw reads of both storages (plain, zstd FILE, zstd MESSAGE), count verification,
and the numpy bulk decoder checked value-for-value against rosbags' own deserializer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from bagkit import JOINTS, write_arm_bag
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from offrl_robot.data.bag_reader import (
    FLOAT64_MULTI_ARRAY,
    JOINT_STATE,
    Bag,
    TypeResolver,
    bulk_decode,
)
from offrl_robot.data.rosbag_write import RobotLogWriter
from offrl_robot.errors import BagError

STORE = get_typestore(Stores.ROS2_KILTED)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compression", [None, "file", "message"])
def test_writer_bag_reads_every_message(tmp_path: Path, storage: str, compression: str | None) -> None:
    log = write_arm_bag(tmp_path / "bag", storage=storage, episodes=2, steps=10, compression=compression)
    bag = Bag(tmp_path / "bag")
    assert bag.storage == storage
    counts, spans = bag.count_messages()
    assert counts == {"/joint_states": 22, "/cmd": 20, "/goal": 2, "/episode": 2}
    assert {t: i.reported_count for t, i in bag.topics.items()} == counts
    bag.verify_counts(counts)
    assert spans["/cmd"] == (log.command_times[0], log.command_times[-1])
    # the writer leaves nothing but the finished bag behind
    assert [p.name for p in tmp_path.iterdir()] == ["bag"]


def _js(stamp: int, names: list[str], pos, vel, eff, frame: str = "") -> bytes:
    cls = STORE.types[JOINT_STATE]
    header = STORE.types["std_msgs/msg/Header"](
        stamp=STORE.types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
        frame_id=frame,
    )
    msg = cls(
        header=header,
        name=names,
        position=np.asarray(pos, float),
        velocity=np.asarray(vel, float),
        effort=np.asarray(eff, float),
    )
    return bytes(STORE.serialize_cdr(msg, JOINT_STATE))


def test_bulk_joint_state_matches_rosbags_across_changing_layouts() -> None:
    """Names reordered, frame ids of different length, empty effort: every message picks by name."""
    rng = np.random.default_rng(3)
    payloads, expected = [], []
    layouts = [
        (["a", "b", "c"], ""),
        (["c", "a", "b"], "base_link"),
        (["b", "c", "a", "extra_joint"], "x"),
    ]
    for i in range(300):
        names, frame = layouts[i % 3]
        pos, vel = rng.normal(size=len(names)), rng.normal(size=len(names))
        eff = rng.normal(size=len(names)) if i % 2 else []
        payloads.append(_js(10**9 * 5 + i, names, pos, vel, eff, frame))
        want = {n: (p, v) for n, p, v in zip(names, pos, vel, strict=True)}
        expected.append([want[j][0] for j in "abc"] + [want[j][1] for j in "abc"])

    def pick(layout):
        slots = [layout.names.index(j) for j in "abc"]
        return [layout.arrays[f][0] + 8 * s for f in ("position", "velocity") for s in slots]

    values, stamps = bulk_decode(JOINT_STATE, payloads, pick, True, "/js", "test")
    np.testing.assert_array_equal(values, np.asarray(expected, np.float32))
    np.testing.assert_array_equal(stamps, 10**9 * 5 + np.arange(300))
    # and the same numbers as rosbags' deserializer
    for payload, row in zip(payloads[:30], values[:30], strict=True):
        msg = STORE.deserialize_cdr(payload, JOINT_STATE)
        order = [list(msg.name).index(j) for j in "abc"]
        np.testing.assert_array_equal(row, np.r_[msg.position[order], msg.velocity[order]].astype(np.float32))


def test_bulk_float64_multi_array_with_layout_dims() -> None:
    cls = STORE.types[FLOAT64_MULTI_ARRAY]
    dim = STORE.types["std_msgs/msg/MultiArrayDimension"](label="joints", size=4, stride=4)
    payloads, rows = [], []
    for i in range(50):
        data = np.arange(4, dtype=float) * i + 0.25
        dims = [dim] if i % 2 else []
        layout = STORE.types["std_msgs/msg/MultiArrayLayout"](dim=dims, data_offset=0)
        payloads.append(bytes(STORE.serialize_cdr(cls(layout=layout, data=data), FLOAT64_MULTI_ARRAY)))
        rows.append(data)

    def pick(layout):
        start, count = layout.arrays["data"]
        return [start + 8 * k for k in range(count)]

    values, stamps = bulk_decode(FLOAT64_MULTI_ARRAY, payloads, pick, False, "/cmd", "test")
    assert stamps is None
    np.testing.assert_array_equal(values, np.asarray(rows, np.float32))


def test_count_mismatch_is_an_error_never_a_short_read(tmp_path: Path) -> None:
    write_arm_bag(tmp_path / "bag", storage="sqlite3", episodes=1, steps=5)
    meta = tmp_path / "bag" / "metadata.yaml"
    doc = yaml.safe_load(meta.read_text())
    for entry in doc["rosbag2_bagfile_information"]["topics_with_message_count"]:
        if entry["topic_metadata"]["name"] == "/cmd":
            entry["message_count"] = 9
    meta.write_text(yaml.safe_dump(doc))
    bag = Bag(tmp_path / "bag")
    counts, _ = bag.count_messages()
    with pytest.raises(BagError, match=r"topic /cmd reports 9 messages but 5 could be read"):
        bag.verify_counts(counts)


def test_single_storage_file_without_metadata(tmp_path: Path) -> None:
    write_arm_bag(tmp_path / "bag", storage="mcap", episodes=1, steps=4)
    (mcap,) = (tmp_path / "bag").glob("*.mcap")
    lone = tmp_path / "lone.mcap"
    shutil.copy(mcap, lone)
    bag = Bag(lone)
    counts, _ = bag.count_messages()
    assert counts["/cmd"] == 4 and counts["/joint_states"] == 5
    assert bag.topics["/cmd"].reported_count == 4  # from the MCAP summary statistics
    assert bag.topics["/joint_states"].msgtype == JOINT_STATE
    assert "float64[] position" in bag.topics["/joint_states"].msgdef


def test_resolver_prefers_own_types_and_decodes_unknown_embedded_ones(tmp_path: Path) -> None:
    """A type no typestore knows decodes from the MCAP's embedded schema."""
    path = tmp_path / "custom"
    msgdef = "float64 speed\nstring label\n"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(
            "/custom", "my_pkg/msg/Speed", msgdef=msgdef, rihs01="RIHS01_" + "0" * 64
        )
        from rosbags.typesys import get_types_from_msg

        store = get_typestore(Stores.EMPTY)
        store.register(get_types_from_msg(msgdef, "my_pkg/msg/Speed"))
        cls = store.types["my_pkg/msg/Speed"]
        for i in range(3):
            writer.write(
                conn, 1000 + i, store.serialize_cdr(cls(speed=i * 0.5, label=f"m{i}"), "my_pkg/msg/Speed")
            )
    bag = Bag(path)
    resolver = TypeResolver()
    msgtype = resolver.ensure(bag.topics["/custom"], bag.name)
    (raw,) = list(bag.iter_batches(["/custom"]))
    assert [resolver.deserialize(p, msgtype).speed for p in raw.messages()] == [0.0, 0.5, 1.0]


def test_writer_is_atomic_on_error(tmp_path: Path) -> None:
    target = tmp_path / "bag"
    with pytest.raises(RuntimeError), RobotLogWriter(target) as log:
        log.joint_state(1000, JOINTS, np.zeros(6), np.zeros(6))
        raise RuntimeError("collector crashed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_backwards_stamps(tmp_path: Path) -> None:
    with (
        pytest.raises(BagError, match=r"topic /cmd: stamp 5 goes backwards"),
        RobotLogWriter(tmp_path / "b") as log,
    ):
        log.command(10, np.zeros(6))
        log.command(5, np.zeros(6))
    assert not (tmp_path / "b").exists()


def _strip_mcap_indexes(src: Path, dst: Path) -> None:
    """Rewrite an MCAP keeping only the data section without Message Index records and with a
    footer that points at no summary: what a minimal MCAP writer may produce."""
    import struct

    data = src.read_bytes()
    out = bytearray(data[:8])
    pos = 8
    while True:
        opcode = data[pos]
        (length,) = struct.unpack_from("<Q", data, pos + 1)
        end = pos + 9 + length
        if opcode == 0x0F:  # data end: stop before the summary
            break
        if opcode != 0x07:
            out += data[pos:end]
        pos = end
    out += bytes([0x0F]) + struct.pack("<Q", 4) + struct.pack("<I", 0)
    out += bytes([0x02]) + struct.pack("<Q", 20) + struct.pack("<QQI", 0, 0, 0)
    out += data[:8]
    dst.write_bytes(bytes(out))


def test_mcap_without_indexes_reads_the_same_as_with(tmp_path: Path) -> None:
    """The sequential scanner (no Message Index records, no summary) and the indexed numpy fast
    path yield the same messages in the same order."""
    write_arm_bag(tmp_path / "bag", storage="mcap", episodes=2, steps=40)
    (mcap,) = (tmp_path / "bag").glob("*.mcap")
    lone = tmp_path / "noindex.mcap"
    _strip_mcap_indexes(mcap, lone)
    indexed, plain = Bag(tmp_path / "bag"), Bag(lone)
    assert plain.topics["/cmd"].reported_count is None  # nothing reports a count here
    for topic in ("/joint_states", "/cmd", "/goal"):
        a = [b for b in indexed.iter_batches([topic])]
        b = [b for b in plain.iter_batches([topic])]
        assert a[0].payloads is None and b[0].payloads is not None  # fast path vs scanner
        assert [int(t) for x in a for t in x.times] == [int(t) for x in b for t in x.times]
        assert [bytes(m) for x in a for m in x.messages()] == [bytes(m) for x in b for m in x.messages()]

"""Write rosbag2 logs with rosbags: CDR bytes as they are (`RawBagWriter`), or a simulated run
"as a robot would have recorded it" (`RobotLogWriter`).

`RawBagWriter` is what `offrl-robot record` writes through: it takes each message's CDR bytes
exactly as they arrived from DDS (no re-serialisation) with its receive time, and the offered
QoS of each topic, which rosbags writes identically into metadata.yaml and the storage file
(when the two differ, rosbags' reader silently yields 0 messages).

`collect --bag` uses `RobotLogWriter` so that the sim path and the real-robot path meet in the
same place: the bag it writes goes through exactly the ingestion a real robot log goes through
(`offrl-robot ingest`), and the round-trip test checks that ingestion reproduces the
collected dataset. Messages are serialized with rosbags' typestore (the same CDR a ROS 2
node publishes).

Both write into a temporary directory that is renamed into place only when the writer closes
without error, so a crashed run never leaves a half-written bag where ingest would pick it up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from offrl_robot.errors import BagError

STORAGES = ("mcap", "sqlite3")
COMPRESSIONS = (None, "file", "message")


class RawBagWriter:
    """Context manager: `with RawBagWriter(path) as w: w.add_topic(...); w.write(topic, t_ns, cdr)`.

    The bag appears at `path` only when the block ends without an exception (a
    KeyboardInterrupt caught inside the block still finalizes what was written).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        storage: str = "mcap",
        *,
        compression: str | None = None,
        overwrite: bool = False,
    ) -> None:
        if storage not in STORAGES:
            raise BagError(
                f"bag {path}: storage {storage!r} is not supported; choose one of {', '.join(STORAGES)}"
            )
        if compression not in COMPRESSIONS:
            raise BagError(
                f"bag {path}: compression {compression!r} is not supported; use file, message or none"
            )
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise BagError(f"bag {self.path}: already exists; choose another directory or delete it")
        self.storage = storage
        self.compression = compression
        self.overwrite = overwrite
        self.counts: dict[str, int] = {}
        self._writer: Any = None
        self._tmpdir: Path | None = None
        self._connections: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> RawBagWriter:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmpdir = Path(
            tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        )
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._tmpdir / self.path.name, version=9, storage_plugin=plugin)
        if self.compression:
            mode = CompressionMode.FILE if self.compression == "file" else CompressionMode.MESSAGE
            self._writer.set_compression(mode, CompressionFormat.ZSTD)
        self._writer.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tmpdir is not None
        try:
            if exc_type is None:
                self._writer.close()
                if self.path.exists() and self.overwrite:
                    shutil.rmtree(self.path)
                os.replace(self._tmpdir / self.path.name, self.path)
        finally:
            self._writer = None
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    # ------------------------------------------------------------------ topics and messages
    def add_topic(
        self,
        topic: str,
        msgtype: str,
        *,
        typestore: Any = None,
        msgdef: str | None = None,
        rihs01: str | None = None,
        offered_qos: Sequence[Any] = (),
    ) -> None:
        """Declare a topic: its type's definition comes from `typestore`, or `msgdef` + `rihs01`.

        `offered_qos` (rosbags `Qos` tuples, one per publisher) is what `ros2 bag play` offers
        again; it is written once and rosbags puts the same text into both metadata files."""
        if self._writer is None:
            raise RuntimeError("RawBagWriter is used outside its `with` block")
        if topic in self._connections:
            raise BagError(f"bag {self.path}: topic {topic} is declared twice")
        self._connections[topic] = self._writer.add_connection(
            topic,
            msgtype,
            typestore=typestore,
            msgdef=msgdef,
            rihs01=rihs01,
            offered_qos_profiles=list(offered_qos),
        )
        self.counts[topic] = 0

    def write(self, topic: str, stamp_ns: int, data: bytes | memoryview) -> None:
        """Append one serialized message with its bag timestamp (receive time, ns)."""
        if self._writer is None:
            raise RuntimeError("RawBagWriter is used outside its `with` block")
        self._writer.write(self._connections[topic], int(stamp_ns), data)
        self.counts[topic] += 1


class RobotLogWriter(RawBagWriter):
    """Context manager: `with RobotLogWriter(path, storage="mcap") as w: w.joint_state(...)`.

    Bag receive time (the rosbag2 timestamp) and the header stamp of stamped messages are both
    `stamp_ns`: a simulated robot has no transport delay, and ingest can use either clock.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        storage: str = "mcap",
        *,
        joint_states_topic: str = "/joint_states",
        command_topic: str = "/cmd",
        goal_topic: str = "/goal",
        episode_topic: str = "/episode",
        compression: str | None = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__(path, storage, compression=compression, overwrite=overwrite)
        self.topics = {
            "joint_state": joint_states_topic,
            "command": command_topic,
            "goal": goal_topic,
            "episode": episode_topic,
        }
        self._last_stamp: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> RobotLogWriter:
        from rosbags.typesys import Stores, get_typestore

        self._store = get_typestore(Stores.ROS2_KILTED)
        super().__enter__()
        types = {
            "joint_state": "sensor_msgs/msg/JointState",
            "command": "std_msgs/msg/Float64MultiArray",
            "goal": "geometry_msgs/msg/PointStamped",
            "episode": "std_msgs/msg/Int32",
        }
        for key, msgtype in types.items():
            self.add_topic(self.topics[key], msgtype, typestore=self._store)
        return self

    # ------------------------------------------------------------------ messages
    def _stamp(self, stamp_ns: int) -> Any:
        time_cls = self._store.types["builtin_interfaces/msg/Time"]
        return time_cls(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        return self._store.types["std_msgs/msg/Header"](stamp=self._stamp(stamp_ns), frame_id=frame_id)

    def _write(self, key: str, stamp_ns: int, msg: Any) -> None:
        if self._writer is None:
            raise RuntimeError("RobotLogWriter is used outside its `with` block")
        stamp_ns = int(stamp_ns)
        last = self._last_stamp.get(key)
        if last is not None and stamp_ns < last:
            raise BagError(
                f"bag {self.path}: topic {self.topics[key]}: stamp {stamp_ns} goes backwards (last {last}); write in time order"
            )
        self._last_stamp[key] = stamp_ns
        topic = self.topics[key]
        self.write(topic, stamp_ns, self._store.serialize_cdr(msg, self._connections[topic].msgtype))

    def joint_state(
        self,
        stamp_ns: int,
        names: list[str],
        position: Any,
        velocity: Any,
        effort: Any = None,
        header_ns: int | None = None,
    ) -> None:
        """`sensor_msgs/msg/JointState` on the joint-states topic (effort empty when None).

        `header_ns`: a header stamp other than the receive time (a real driver stamps the
        sample before transport; a gripper on another node stamps with its own lag)."""
        cls = self._store.types["sensor_msgs/msg/JointState"]
        msg = cls(
            header=self._header(stamp_ns if header_ns is None else header_ns, ""),
            name=list(names),
            position=np.asarray(position, dtype=np.float64).reshape(-1),
            velocity=np.asarray(velocity, dtype=np.float64).reshape(-1),
            effort=np.asarray([] if effort is None else effort, dtype=np.float64).reshape(-1),
        )
        self._write("joint_state", stamp_ns, msg)

    def command(self, stamp_ns: int, values: Any) -> None:
        """`std_msgs/msg/Float64MultiArray` on the command topic (what forward_command_controller takes)."""
        layout = self._store.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        cls = self._store.types["std_msgs/msg/Float64MultiArray"]
        self._write("command", stamp_ns, cls(layout=layout, data=np.asarray(values, np.float64).reshape(-1)))

    def goal(self, stamp_ns: int, xyz: Any, frame_id: str = "base_link") -> None:
        """`geometry_msgs/msg/PointStamped` on the goal topic."""
        x, y, z = (float(v) for v in np.asarray(xyz, dtype=np.float64).reshape(3))
        point = self._store.types["geometry_msgs/msg/Point"](x=x, y=y, z=z)
        cls = self._store.types["geometry_msgs/msg/PointStamped"]
        self._write("goal", stamp_ns, cls(header=self._header(stamp_ns, frame_id), point=point))

    def episode(self, stamp_ns: int, index: int) -> None:
        """`std_msgs/msg/Int32` marker, published at each episode start."""
        self._write("episode", stamp_ns, self._store.types["std_msgs/msg/Int32"](data=int(index)))

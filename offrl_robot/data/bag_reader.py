"""Read rosbag2 logs completely, or fail loudly: sqlite3 and MCAP, split files, zstd compression.

Why not just rosbags' `AnyReader`: on real bags it silently yields 0 of 20 messages when the
QoS in metadata.yaml differs from the one in the storage file, it cannot open MCAP files that
embed service-event schemas, and it prefers truncated embedded message definitions over its
own correct ones. So this module reads the storage files itself (sqlite3 tables, MCAP records),
uses metadata.yaml only for the file list, compression and the *reported* counts, and compares
every topic's messages read with the count the bag reports: a short read is an error, never a
silent success.

Decoding: `sensor_msgs/msg/JointState` and `std_msgs/msg/Float64MultiArray` (the two layouts a
robot log is mostly made of) are decoded in bulk with numpy: messages with identical structure
(same names, same lengths) share byte offsets, so the float64 fields are a strided view of a
[messages, bytes] matrix. (Ingest reads JointState through `joint_state_columns`, which also
handles several publishers and a name order that changes every message.) Everything else goes
through rosbags' `deserialize_cdr`, with a typestore that trusts its own definitions first and
the bag's embedded ones only for types it does not know.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml

from offrl_robot.errors import BagError

if sys.version_info >= (3, 14):  # pragma: no cover
    from compression import zstd
else:
    from backports import zstd

MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
JOINT_STATE = "sensor_msgs/msg/JointState"
FLOAT64_MULTI_ARRAY = "std_msgs/msg/Float64MultiArray"
BULK_TYPES = (JOINT_STATE, FLOAT64_MULTI_ARRAY)
DEFAULT_BATCH = 16384


# ---------------------------------------------------------------------------------- bag model
@dataclass
class TopicInfo:
    """One topic as the bag describes it; `reported_count` is None when nothing reports one."""

    name: str
    msgtype: str
    serialization_format: str = "cdr"
    reported_count: int | None = None
    msgdef: str = ""
    msgdef_encoding: str = ""


@dataclass
class RawBatch:
    """Raw messages of one topic, in storage order.

    Either `payloads` (one bytes object per message) or, on the MCAP fast path, one decompressed
    chunk `buffer` (uint8) with per-message `starts`/`lengths`, which the bulk decoder gathers
    without creating a Python object per message.
    """

    topic: str
    times: Any = field(default_factory=list)  # list[int] or int64 array (ns)
    payloads: list[Any] | None = field(default_factory=list)
    buffer: np.ndarray | None = None
    starts: np.ndarray | None = None
    lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.times)

    def messages(self) -> list[Any]:
        """One bytes-like object per message (materialised from the buffer if needed)."""
        if self.payloads is None:
            assert self.buffer is not None and self.starts is not None and self.lengths is not None
            buf = self.buffer
            self.payloads = [
                buf[s : s + n].tobytes()
                for s, n in zip(self.starts.tolist(), self.lengths.tolist(), strict=True)
            ]
        return self.payloads


def normalise_msgtype(msgtype: str) -> str:
    """`pkg/Type` (legacy rosbag2 names) -> `pkg/msg/Type`, so typestores find it."""
    parts = msgtype.split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 else msgtype


class Bag:
    """A rosbag2 log on disk: a bag directory, or one .mcap/.db3 file. Reads only, never writes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.name == "metadata.yaml":  # users often point at the metadata file
            self.path = self.path.parent
        self.name = str(path)
        self.storage = ""
        self.files: list[Path] = []
        self.compression_format = ""
        self.compression_mode = ""
        self.metadata_duration_ns: int | None = None
        self.metadata_message_count: int | None = None
        self.topics: dict[str, TopicInfo] = {}
        self._discover()
        self._load_storage_topics()

    # ------------------------------------------------------------------ discovery
    def _discover(self) -> None:
        path = self.path
        if not path.exists():
            raise BagError(
                f"bag {self.name}: path does not exist; pass a rosbag2 directory or a .mcap/.db3 file"
            )
        if path.is_dir():
            meta = path / "metadata.yaml"
            if meta.is_file():
                self._read_metadata(meta)
                return
            files = sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3") and p.is_file())
            if not files:
                raise BagError(
                    f"bag {self.name}: not a rosbag2 bag (no metadata.yaml and no .mcap/.db3 file); pass a bag directory"
                )
            self.files = files
        else:
            self.files = [path]
        self.storage = self._sniff_storage(self.files[0])
        if self.files[0].name.endswith(".zstd"):
            self.compression_format, self.compression_mode = "zstd", "FILE"

    def _read_metadata(self, meta_path: Path) -> None:
        try:
            doc = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
            info = doc["rosbag2_bagfile_information"]
        except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, KeyError) as err:
            raise BagError(
                f"bag {self.name}: metadata.yaml is not rosbag2 metadata ({type(err).__name__}); fix or delete it"
            ) from None
        self.storage = str(info.get("storage_identifier") or "")
        self.compression_format = str(info.get("compression_format") or "")
        self.compression_mode = str(info.get("compression_mode") or "")
        self.metadata_duration_ns = int((info.get("duration") or {}).get("nanoseconds", 0))
        self.metadata_message_count = info.get("message_count")
        files = []
        for rel in info.get("relative_file_paths") or []:
            candidate = self.path / rel
            if not candidate.is_file():  # reindexed bags list "subdir/file" for a flat folder
                candidate = self.path / Path(rel).name
            if not candidate.is_file():
                raise BagError(
                    f"bag {self.name}: storage file {rel!r} listed in metadata.yaml is missing; restore it"
                )
            files.append(candidate)
        if not files:
            raise BagError(f"bag {self.name}: metadata.yaml lists no storage files")
        self.files = files
        for entry in info.get("topics_with_message_count") or []:
            tm = entry["topic_metadata"]
            self.topics[tm["name"]] = TopicInfo(
                name=tm["name"],
                msgtype=tm["type"],
                serialization_format=tm.get("serialization_format", "cdr"),
                reported_count=int(entry.get("message_count", 0)),
            )
        if self.storage not in ("sqlite3", "mcap"):
            self.storage = self._sniff_storage(files[0])

    def _sniff_storage(self, file: Path) -> str:
        try:
            with open(file, "rb") as handle:
                head = handle.read(16)
        except OSError as err:
            raise BagError(f"bag {self.name}: cannot read {file.name}: {err.strerror}") from None
        if head.startswith(MCAP_MAGIC):
            return "mcap"
        if head.startswith(SQLITE_MAGIC):
            return "sqlite3"
        if head.startswith(ZSTD_MAGIC):
            return "mcap" if ".mcap" in file.name else "sqlite3"
        raise BagError(
            f"bag {self.name}: {file.name} is neither MCAP nor SQLite3 (bad magic bytes); pass a rosbag2 bag"
        )

    # ------------------------------------------------------------------ storage files
    @contextlib.contextmanager
    def _storage_file(self, file: Path) -> Iterator[Path]:
        """Yield a plain (decompressed) storage file path for `file`."""
        with open(file, "rb") as handle:
            compressed = handle.read(4) == ZSTD_MAGIC
        if not compressed:
            yield file
            return
        tmpdir = Path(tempfile.mkdtemp(prefix="offrl-bag-"))
        try:
            out = tmpdir / file.name.removesuffix(".zstd")
            try:
                with open(file, "rb") as src, open(out, "wb") as dst:
                    dst.write(zstd.decompress(src.read()))
            except zstd.ZstdError as err:
                raise BagError(
                    f"bag {self.name}: {file.name} is corrupt zstd ({err}); re-copy the bag"
                ) from None
            yield out
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    @contextlib.contextmanager
    def _sqlite(self, file: Path) -> Iterator[sqlite3.Connection]:
        """Open read-only without creating -shm/-wal beside the bag (shared fixtures stay untouched)."""
        wal = Path(str(file) + "-wal")
        tmpdir = None
        target = file
        if wal.is_file() and wal.stat().st_size > 0:  # un-checkpointed data: read it from a copy
            tmpdir = Path(tempfile.mkdtemp(prefix="offrl-bag-"))
            target = tmpdir / file.name
            shutil.copyfile(file, target)
            shutil.copyfile(wal, Path(str(target) + "-wal"))
        uri = f"file:{target}?mode=ro" if tmpdir else f"file:{target}?immutable=1"
        conn = None
        try:
            conn = sqlite3.connect(uri, uri=True)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            yield conn
        except sqlite3.DatabaseError as err:
            raise BagError(
                f"bag {self.name}: {file.name} is not a readable rosbag2 sqlite3 file ({err}); the file is truncated or corrupt"
            ) from None
        finally:
            if conn is not None:
                conn.close()
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)

    def _load_storage_topics(self) -> None:
        """Fill types/definitions from the storage files (and counts when there is no metadata)."""
        has_metadata = bool(self.topics)  # per-topic counts from metadata.yaml
        storage_counts: dict[str, int] = {}
        for file in self.files:
            with self._storage_file(file) as plain:
                if self.storage == "sqlite3":
                    found, counts = self._sqlite_topics(plain, file)
                else:
                    found, counts = _McapFile(plain, self.name, file.name).topics()
            for name, info in found.items():
                known = self.topics.get(name)
                if known is None:
                    self.topics[name] = info
                    if has_metadata:
                        info.reported_count = 0
                else:
                    if (info.msgdef or info.msgdef_encoding) and not (known.msgdef or known.msgdef_encoding):
                        known.msgdef, known.msgdef_encoding = info.msgdef, info.msgdef_encoding
                    if info.serialization_format:  # what the data really is beats metadata.yaml
                        known.serialization_format = info.serialization_format
            for name, count in counts.items():
                storage_counts[name] = storage_counts.get(name, 0) + count
        if not has_metadata:
            for name, info in self.topics.items():
                info.reported_count = storage_counts.get(name)

    def _sqlite_topics(self, plain: Path, file: Path) -> tuple[dict[str, TopicInfo], dict[str, int]]:
        with self._sqlite(plain) as conn:
            try:
                rows = conn.execute("SELECT id, name, type, serialization_format FROM topics").fetchall()
                defs: dict[str, tuple[str, str]] = {}
                has_defs = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type='table' AND name='message_definitions'"
                ).fetchone()
                if has_defs:
                    for ttype, enc, text in conn.execute(
                        "SELECT topic_type, encoding, encoded_message_definition FROM message_definitions"
                    ):
                        defs[ttype] = (text, enc)
                counts = dict(
                    conn.execute("SELECT topic_id, count(*) FROM messages GROUP BY topic_id").fetchall()
                )
            except sqlite3.DatabaseError as err:
                raise BagError(
                    f"bag {self.name}: {file.name} has no readable rosbag2 tables ({err}); the file is truncated or corrupt"
                ) from None
        found = {}
        by_name = {}
        for tid, name, ttype, fmt in rows:
            text, enc = defs.get(ttype, ("", ""))
            found[name] = TopicInfo(name, ttype, fmt, None, text, enc)
            by_name[name] = counts.get(tid, 0)
        return found, by_name

    # ------------------------------------------------------------------ reading
    def iter_batches(
        self, topics: Sequence[str] | None = None, batch: int = DEFAULT_BATCH
    ) -> Iterator[RawBatch]:
        """Yield raw (receive time ns, CDR bytes) batches per topic, in storage order, decompressed."""
        wanted = set(self.topics if topics is None else topics)
        message_zstd = self.compression_mode.upper() == "MESSAGE"
        for file in self.files:
            with self._storage_file(file) as plain:
                source = (
                    self._sqlite_batches(plain, file, wanted, batch)
                    if self.storage == "sqlite3"
                    else _McapFile(plain, self.name, file.name).batches(wanted, batch)
                )
                for raw in source:
                    if message_zstd:
                        raw.payloads = [self._unzstd(p, raw.topic) for p in raw.messages()]
                        raw.buffer = raw.starts = raw.lengths = None
                    yield raw

    def _unzstd(self, payload: bytes, topic: str) -> bytes:
        try:
            return zstd.decompress(payload)
        except zstd.ZstdError as err:
            raise BagError(f"bag {self.name}: topic {topic}: a message is corrupt zstd ({err})") from None

    def _sqlite_batches(self, plain: Path, file: Path, wanted: set[str], batch: int) -> Iterator[RawBatch]:
        with self._sqlite(plain) as conn:
            try:
                # sqlite has no data checksums; quick_check at least catches damaged pages/records
                (check,) = conn.execute("PRAGMA quick_check(1)").fetchone()
                if check != "ok":
                    check = " ".join(check.replace("*** in database main ***", "").split())
                    raise BagError(
                        f"bag {self.name}: {file.name} fails sqlite's integrity check ({check}); the file is corrupt"
                    )
                ids = {
                    tid: name for tid, name in conn.execute("SELECT id, name FROM topics") if name in wanted
                }
                if not ids:
                    return
                marks = ",".join("?" * len(ids))
                cursor = conn.execute(
                    f"SELECT topic_id, timestamp, data FROM messages WHERE topic_id IN ({marks}) ORDER BY id",
                    list(ids),
                )
                while rows := cursor.fetchmany(batch):
                    tids, stamps, datas = zip(*rows, strict=True)  # columns at C speed, no per-row loop
                    tid_arr = np.fromiter(tids, dtype=np.int64, count=len(rows))
                    stamp_arr = np.fromiter(stamps, dtype=np.int64, count=len(rows))
                    for tid in np.unique(tid_arr).tolist():
                        if len(ids) == 1:
                            yield RawBatch(ids[tid], stamp_arr, list(datas))
                            continue
                        sel = np.flatnonzero(tid_arr == tid)
                        yield RawBatch(ids[tid], stamp_arr[sel], [datas[i] for i in sel.tolist()])
            except sqlite3.DatabaseError as err:
                raise BagError(
                    f"bag {self.name}: {file.name} fails while reading messages ({err}); the file is truncated or corrupt"
                ) from None

    def count_messages(
        self, topics: Sequence[str] | None = None
    ) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
        """Read every message: counts per topic and (first, last) receive time per topic."""
        counts: dict[str, int] = dict.fromkeys(self.topics if topics is None else topics, 0)
        spans: dict[str, tuple[int, int]] = {}
        for raw in self.iter_batches(topics):
            counts[raw.topic] += len(raw.times)
            lo, hi = int(np.min(raw.times)), int(np.max(raw.times))
            old = spans.get(raw.topic)
            spans[raw.topic] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        return counts, spans

    def verify_counts(self, counts: dict[str, int]) -> None:
        """Raise BagError when any topic yielded fewer (or more) messages than the bag reports."""
        for topic, read in counts.items():
            reported = self.topics[topic].reported_count
            if reported is not None and read != reported:
                raise BagError(
                    f"bag {self.name}: topic {topic} reports {reported} messages but {read} could be read; "
                    "the bag is truncated or its metadata.yaml is stale (re-index it with `ros2 bag reindex`)"
                )


# ---------------------------------------------------------------------------------- MCAP
class _McapFile:
    """Sequential MCAP record scanner (no index needed, so truncation is detected, not skipped)."""

    def __init__(self, path: Path, bag: str, shown: str) -> None:
        self.path, self.bag, self.shown = path, bag, shown

    def _fail(self, why: str) -> BagError:
        return BagError(f"bag {self.bag}: {self.shown} {why}; the MCAP file is truncated or corrupt")

    def _records(self, handle: BinaryIO, size: int, start: int = 8) -> Iterator[tuple[int, memoryview]]:
        """Top-level records read one at a time (a chunk is ~1 MiB), so memory stays flat.

        Chunks are yielded as opcode 0x06 for the caller to open. Reading stops at the footer;
        a file that ends before one is truncated.
        """
        handle.seek(0)
        if handle.read(8) != MCAP_MAGIC:
            raise self._fail("does not start with the MCAP magic")
        pos = start
        handle.seek(pos)
        while True:
            head = handle.read(9)
            if len(head) < 9:
                raise self._fail(f"ends at byte {size} inside a record header (no footer)")
            opcode = head[0]
            (length,) = struct.unpack_from("<Q", head, 1)
            body_start = pos + 9
            if body_start + length > size:
                raise self._fail(f"record at byte {pos} claims {length} bytes past the end of the file")
            yield opcode, memoryview(handle.read(length))
            pos = body_start + length
            if opcode == 0x02:  # footer
                if handle.read(8) != MCAP_MAGIC:
                    raise self._fail("has no closing MCAP magic")
                return

    @contextlib.contextmanager
    def _open(self) -> Iterator[tuple[BinaryIO, int]]:
        with open(self.path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 8:
                raise self._fail("is shorter than the MCAP magic")
            yield handle, size

    def _summary_start(self, handle: BinaryIO, size: int) -> int:
        """Offset of the summary section from the footer, or 0 when there is none/no footer."""
        if size < 8 + 37:
            return 0
        handle.seek(size - 37)
        tail = handle.read(37)
        if tail[0] != 0x02 or tail[-8:] != MCAP_MAGIC:
            return 0
        (start,) = struct.unpack_from("<Q", tail, 9)
        return int(start) if 8 < start < size else 0

    @staticmethod
    def _string(rec: memoryview, pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<I", rec, pos)
        return bytes(rec[pos + 4 : pos + 4 + n]).decode("utf-8", "replace"), pos + 4 + n

    def _chunk_data(self, rec: memoryview) -> memoryview:
        """Decompressed (and CRC-checked) records of one chunk."""
        _, _, usize, crc = struct.unpack_from("<QQQI", rec, 0)
        compression, pos = self._string(rec, 28)
        (csize,) = struct.unpack_from("<Q", rec, pos)
        data = rec[pos + 8 : pos + 8 + csize]
        if len(data) != csize:
            raise self._fail("has a chunk shorter than it claims")
        try:
            if compression == "zstd":
                raw = memoryview(zstd.decompress(data))
            elif compression == "lz4":
                import lz4.frame

                raw = memoryview(lz4.frame.decompress(data))
            elif compression == "":
                raw = data
            else:
                raise self._fail(f"uses unsupported chunk compression {compression!r}")
        except (zstd.ZstdError, RuntimeError) as err:
            raise self._fail(f"has a chunk that fails to decompress ({err})") from None
        if len(raw) != usize:
            raise self._fail(f"has a chunk of {len(raw)} bytes where {usize} were recorded")
        if crc:
            import zlib

            if zlib.crc32(raw) != crc:
                raise self._fail("has a chunk whose CRC does not match")
        return raw

    def _chunk_records(self, rec: memoryview) -> Iterator[tuple[int, memoryview]]:
        raw = self._chunk_data(rec)
        pos, end = 0, len(raw)
        while pos < end:
            if pos + 9 > end:
                raise self._fail("has a chunk that ends inside a record")
            opcode = raw[pos]
            (length,) = struct.unpack_from("<Q", raw, pos + 1)
            start = pos + 9
            if start + length > end:
                raise self._fail("has a chunk record longer than its chunk")
            yield opcode, raw[start : start + length]
            pos = start + length

    def topics(self) -> tuple[dict[str, TopicInfo], dict[str, int]]:
        schemas: dict[int, tuple[str, str, str]] = {}
        channels: dict[int, tuple[str, int, str]] = {}
        stats: dict[int, int] | None = None
        with self._open() as (handle, size):
            summary = self._summary_start(handle, size)
            if summary:  # schemas, channels and counts without reading the data section
                try:
                    for opcode, rec in self._records(handle, size, start=summary):
                        if opcode == 0x03:
                            self._schema(rec, schemas)
                        elif opcode == 0x04:
                            self._channel(rec, channels)
                        elif opcode == 0x0B:
                            stats = self._statistics(rec)
                except (BagError, struct.error):
                    summary, stats = 0, None  # a damaged summary: scan the data section instead
            if not summary or stats is None:
                schemas, channels = {}, {}
                for opcode, rec in self._records(handle, size):
                    if opcode == 0x03:
                        self._schema(rec, schemas)
                    elif opcode == 0x04:
                        self._channel(rec, channels)
                    elif opcode == 0x0B:
                        stats = self._statistics(rec)
                    elif opcode == 0x06:
                        for sub_op, sub in self._chunk_records(rec):
                            if sub_op == 0x03:
                                self._schema(sub, schemas)
                            elif sub_op == 0x04:
                                self._channel(sub, channels)
        found = {}
        counts = {}
        for cid, (topic, sid, encoding) in channels.items():
            name, enc, text = schemas.get(sid, ("", "", ""))
            found[topic] = TopicInfo(topic, name, encoding, None, text, enc)
            if stats is not None:
                counts[topic] = counts.get(topic, 0) + stats.get(cid, 0)
        return found, counts

    def _schema(self, rec: memoryview, schemas: dict[int, tuple[str, str, str]]) -> None:
        (sid,) = struct.unpack_from("<H", rec, 0)
        name, pos = self._string(rec, 2)
        enc, pos = self._string(rec, pos)
        text, _ = self._string(rec, pos)
        schemas[sid] = (name, enc, text)

    def _channel(self, rec: memoryview, channels: dict[int, tuple[str, int, str]]) -> None:
        cid, sid = struct.unpack_from("<HH", rec, 0)
        topic, pos = self._string(rec, 4)
        enc, _ = self._string(rec, pos)
        channels[cid] = (topic, sid, enc)

    @staticmethod
    def _statistics(rec: memoryview) -> dict[int, int]:
        pos = 8 + 2 + 4 + 4 + 4 + 4 + 8 + 8
        (nbytes,) = struct.unpack_from("<I", rec, pos)
        pos += 4
        out = {}
        for cid, count in struct.iter_unpack("<HQ", rec[pos : pos + nbytes]):
            out[cid] = count
        return out

    def batches(self, wanted: set[str], batch: int) -> Iterator[RawBatch]:
        """Messages of the wanted topics in file order.

        Fast path: a chunk followed by its Message Index records (what rosbag2 and rosbags
        write) is decoded with numpy from the index offsets, without a Python step per message.
        Chunks without an index, and top-level messages, go through the sequential scanner.
        """
        channels: dict[int, tuple[str, int, str]] = {}
        pending: dict[str, RawBatch] = {}
        unpack = struct.Struct("<HIQ").unpack_from

        def take(rec: memoryview) -> RawBatch | None:
            cid, _, log_time = unpack(rec, 0)
            chan = channels.get(cid)
            if chan is None:
                raise self._fail(f"has a message on unknown channel {cid}")
            if chan[0] not in wanted:
                return None
            out = pending.get(chan[0])
            if out is None:
                out = pending[chan[0]] = RawBatch(chan[0])
            out.times.append(log_time)
            out.payloads.append(bytes(rec[22:]))
            return out if len(out.times) >= batch else None

        def sequential(chunk: memoryview) -> Iterator[RawBatch]:
            for sub_op, sub in self._chunk_records(chunk):
                if sub_op == 0x04:
                    self._channel(sub, channels)
                elif sub_op == 0x05:
                    full = take(sub)
                    if full is not None:
                        yield pending.pop(full.topic)

        def flush_chunk(chunk: memoryview, index: dict[int, np.ndarray]) -> Iterator[RawBatch]:
            if not index or any(cid not in channels for cid in index):
                yield from sequential(chunk)
                return
            raw = np.frombuffer(self._chunk_data(chunk), dtype=np.uint8)
            for cid, offsets in sorted(index.items()):
                topic = channels[cid][0]
                if topic not in wanted or offsets.size == 0:
                    continue
                if topic in pending:  # keep file order with earlier sequential batches
                    yield pending.pop(topic)
                yield self._indexed_batch(raw, np.sort(offsets), topic, cid)

        with self._open() as (handle, size):
            summary = self._summary_start(handle, size)
            if summary:
                with contextlib.suppress(BagError):  # summary is an optimisation only
                    for opcode, rec in self._records(handle, size, start=summary):
                        if opcode == 0x04:
                            self._channel(rec, channels)
            chunk: memoryview | None = None
            index: dict[int, np.ndarray] = {}
            for opcode, rec in self._records(handle, size):
                if opcode == 0x07 and chunk is not None:
                    (cid,) = struct.unpack_from("<H", rec, 0)
                    (nbytes,) = struct.unpack_from("<I", rec, 2)
                    pairs = np.frombuffer(rec, dtype="<u8", count=nbytes // 8, offset=6)
                    index[cid] = pairs[1::2].astype(np.int64)
                    continue
                if chunk is not None:
                    yield from flush_chunk(chunk, index)
                    chunk, index = None, {}
                if opcode == 0x04:
                    self._channel(rec, channels)
                elif opcode == 0x05:
                    full = take(rec)
                    if full is not None:
                        yield pending.pop(full.topic)
                elif opcode == 0x06:
                    chunk = rec
            if chunk is not None:
                yield from flush_chunk(chunk, index)
        yield from pending.values()

    def _indexed_batch(self, raw: np.ndarray, offsets: np.ndarray, topic: str, cid: int) -> RawBatch:
        """Gather message headers at the index offsets with numpy and check they are messages."""
        end = raw.size
        if offsets.size and (offsets[0] < 0 or offsets[-1] + 31 > end):
            raise self._fail("has a message index pointing outside its chunk")
        if np.any(raw[offsets] != 0x05):
            raise self._fail("has a message index pointing at a non-message record")
        head = raw[offsets[:, None] + np.arange(1, 31)]  # length u64, channel u16, seq u32, log u64, pub u64
        lengths = head[:, 0:8].copy().view("<u8").reshape(-1).astype(np.int64)
        chans = head[:, 8:10].copy().view("<u2").reshape(-1)
        times = head[:, 14:22].copy().view("<u8").reshape(-1).astype(np.int64)
        if np.any(chans != cid):
            raise self._fail("has a message index that disagrees with its messages' channel")
        starts = offsets + 31
        data_len = lengths - 22
        if np.any(data_len < 0) or np.any(starts + data_len > end):
            raise self._fail("has a message longer than its chunk")
        return RawBatch(topic, times, None, raw, starts, data_len)


# ---------------------------------------------------------------------------------- decoding
def _align(pos: int, size: int) -> int:
    """CDR alignment is relative to the end of the 4-byte encapsulation header."""
    rel = pos - 4
    return 4 + ((rel + size - 1) // size) * size


class Layout:
    """Byte layout of one message: float64 arrays by field, and the regions that may vary."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.arrays: dict[str, tuple[int, int]] = {}  # field -> (byte offset, count)
        self.varying: list[tuple[int, int]] = []  # byte ranges that differ between messages
        self.names: list[str] = []

    def structure_columns(self) -> np.ndarray:
        mask = np.ones(self.length, dtype=bool)
        for lo, hi in self.varying:
            mask[lo:hi] = False
        return np.flatnonzero(mask)


def _read_u32(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    if pos + 4 > len(buf):
        raise ValueError(f"{what} runs past the end")
    return struct.unpack_from("<I", buf, pos)[0], pos + 4


def _float_array(buf: bytes, pos: int, layout: Layout, name: str) -> int:
    pos = _align(pos, 4)
    count, pos = _read_u32(buf, pos, name)
    if count:
        pos = _align(pos, 8)
    end = pos + 8 * count
    if end > len(buf):
        raise ValueError(f"{name} runs past the end")
    layout.arrays[name] = (pos, count)
    layout.varying.append((pos, end))
    return end


def joint_state_layout(buf: bytes) -> Layout:
    """Offsets of stamp, names and position/velocity/effort in one little-endian JointState."""
    layout = Layout(len(buf))
    layout.varying.append((4, 12))  # header.stamp
    pos = 12
    flen, pos = _read_u32(buf, pos, "frame_id")
    pos += flen
    count, pos = _read_u32(buf, _align(pos, 4), "name")
    for _ in range(count):
        n, pos = _read_u32(buf, _align(pos, 4), "name[]")
        layout.names.append(bytes(buf[pos : pos + n - 1]).decode("utf-8", "replace"))
        pos += n
    for name in ("position", "velocity", "effort"):
        pos = _float_array(buf, pos, layout, name)
    if pos != len(buf):
        raise ValueError(f"{len(buf) - pos} unexpected trailing bytes")
    return layout


def float64_multi_array_layout(buf: bytes) -> Layout:
    """Offsets of `data` in one little-endian Float64MultiArray (layout dims are structure)."""
    layout = Layout(len(buf))
    count, pos = _read_u32(buf, 4, "layout.dim")
    for _ in range(count):
        n, pos = _read_u32(buf, _align(pos, 4), "layout.dim[].label")
        pos = _align(pos + n, 4) + 8
    _, pos = _read_u32(buf, _align(pos, 4), "layout.data_offset")
    pos = _float_array(buf, pos, layout, "data")
    if pos != len(buf):
        raise ValueError(f"{len(buf) - pos} unexpected trailing bytes")
    return layout


LAYOUTS: dict[str, Callable[[bytes], Layout]] = {
    JOINT_STATE: joint_state_layout,
    FLOAT64_MULTI_ARRAY: float64_multi_array_layout,
}

# A field extractor turns (layout) into the float64 byte offsets of the requested columns, or
# raises BagError naming what is missing. It is called once per distinct message structure.
ColumnPicker = Callable[[Layout], list[int]]


def bulk_decode(
    msgtype: str,
    batch: RawBatch | Sequence[bytes],
    pick: ColumnPicker,
    want_stamp: bool,
    topic: str,
    bag: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode a batch of one topic in bulk: values [n, k] float32 and header stamps (int64 ns).

    Messages are grouped by byte length, then by identical structure bytes (names, lengths);
    each group is one numpy gather of [messages, bytes]. A topic whose structure changes from
    message to message still decodes correctly, one template at a time.
    """
    if not isinstance(batch, RawBatch):
        batch = RawBatch(topic, [], list(batch))
    layout_of = LAYOUTS[msgtype]
    n = len(batch.payloads) if batch.payloads is not None else len(batch.times)
    if batch.payloads is not None:
        payloads = batch.payloads
        lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=n)

        def matrix(rows: np.ndarray, length: int) -> np.ndarray:
            joined = b"".join([payloads[i] for i in rows])
            return np.frombuffer(joined, dtype=np.uint8).reshape(len(rows), length)

    else:
        assert batch.buffer is not None and batch.starts is not None and batch.lengths is not None
        buffer, starts, lengths = batch.buffer, batch.starts, batch.lengths

        def matrix(rows: np.ndarray, length: int) -> np.ndarray:
            return buffer[starts[rows][:, None] + np.arange(length)]

    values = np.empty((n, 0), dtype=np.float32)
    stamps = np.empty(n, dtype=np.int64) if want_stamp else None
    width = -1
    unique = np.unique(lengths)
    for length in unique.tolist():
        rows = np.arange(n) if unique.size == 1 else np.flatnonzero(lengths == length)
        mat = matrix(rows, int(length))
        if length < 4 or np.any(mat[:, 1] != 1):  # not little-endian CDR
            raise BagError(
                f"bag {bag}: topic {topic}: a message is not little-endian CDR (big-endian or damaged); re-record it"
            )
        left = np.arange(len(rows))
        templates = 0
        while left.size:
            template = mat[left[0]]
            layout = _safe_layout(layout_of, template.tobytes(), topic, bag)
            templates += 1
            if templates > 256:  # every message differs: no point comparing, take one at a time
                same = np.zeros(left.size, bool)
                same[0] = True
            else:
                cols = layout.structure_columns()
                sub = mat if left.size == len(rows) else mat[left]
                same = np.all(sub[:, cols] == template[cols], axis=1)
            group, left = left[same], left[~same]
            offsets = pick(layout)
            if width < 0:
                width = len(offsets)
                values = np.empty((n, width), dtype=np.float32)
            if len(offsets) != width:
                raise BagError(
                    f"bag {bag}: topic {topic}: message layout changes mid-bag ({len(offsets)} vs {width} values)"
                )
            gmat = mat if group.size == len(rows) else mat[group]
            target = rows if group.size == len(rows) else rows[group]
            if offsets:
                byte_idx = (np.asarray(offsets)[:, None] + np.arange(8)[None, :]).reshape(-1)
                values[target] = gmat[:, byte_idx].copy().view("<f8").reshape(len(group), -1)
            if stamps is not None:
                sec = gmat[:, 4:8].copy().view("<i4").reshape(-1).astype(np.int64)
                nsec = gmat[:, 8:12].copy().view("<u4").reshape(-1).astype(np.int64)
                stamps[target] = sec * 1_000_000_000 + nsec
    return values, stamps


def _safe_layout(layout_of: Callable[[bytes], Layout], buf: bytes, topic: str, bag: str) -> Layout:
    try:
        if len(buf) < 4 or buf[1] != 1:
            raise ValueError("not little-endian CDR")
        return layout_of(bytes(buf))
    except (ValueError, struct.error) as err:
        raise BagError(f"bag {bag}: topic {topic}: a message does not parse as its type ({err})") from None


# ---------------------------------------------------------------------------------- typestore
class TypeResolver:
    """A rosbags typestore that knows its own types first and the bag's embedded ones second."""

    def __init__(self) -> None:
        self._store: Any = None
        self._failed: dict[str, str] = {}
        self._aliases: dict[str, str] = {}

    @property
    def store(self) -> Any:
        """The typestore, built on first use (importing it costs ~0.2 s)."""
        if self._store is None:
            from rosbags.typesys import Stores, get_typestore

            self._store = get_typestore(Stores.ROS2_KILTED)
        return self._store

    def ensure(self, info: TopicInfo, bag: str) -> str:
        """Return the normalised type name, registering the bag's definition if needed."""
        msgtype = normalise_msgtype(info.msgtype)
        if msgtype in self._aliases:
            return self._aliases[msgtype]
        if msgtype in self.store.types:
            return msgtype
        if msgtype in self._failed:
            raise BagError(self._failed[msgtype])
        why = f"bag {bag}: topic {info.name}: type {info.msgtype} is unknown and the bag embeds no usable definition; register the type or drop the topic"
        has_definition = bool(info.msgdef) or bool(info.msgdef_encoding)  # "" is a valid empty message
        if has_definition and info.msgdef_encoding in ("ros2msg", "msg", ""):
            from rosbags.typesys import get_types_from_msg

            try:
                if "/srv/" in msgtype and msgtype.endswith("_Event"):
                    return self._register_service_event(info.msgdef, msgtype, get_types_from_msg)
                self.store.register(_types_from_embedded(info.msgdef, msgtype, get_types_from_msg))
            except Exception as err:
                why = f"bag {bag}: topic {info.name}: embedded definition of {info.msgtype} does not parse ({type(err).__name__}); register the type"
        if msgtype not in self.store.types:
            self._failed[msgtype] = why
            raise BagError(why)
        return msgtype

    def _register_service_event(
        self, text: str, msgtype: str, parse: Callable[[str, str], dict[str, Any]]
    ) -> str:
        """rosbag2 service events embed the .srv text (request `---` response); rosbags cannot
        parse that, so build the Event message (ServiceEventInfo + request[<=1] + response[<=1])
        under a `pkg/msg/` alias with the same CDR layout and decode with that."""
        pkg, _, name = msgtype.split("/")
        base = name.removesuffix("_Event")
        request, sep, response = text.partition("\n---\n") if "\n---\n" in text else text.partition("---\n")
        if not sep:
            raise ValueError("service definition has no --- separator")
        alias = f"{pkg}/msg/{base}_SrvEvent"
        types = dict(parse(request, f"{pkg}/msg/{base}_SrvRequest"))
        types.update(parse(response, f"{pkg}/msg/{base}_SrvResponse"))
        self.store.register(types)
        event = (
            "service_msgs/msg/ServiceEventInfo info\n"
            f"{pkg}/msg/{base}_SrvRequest[<=1] request\n{pkg}/msg/{base}_SrvResponse[<=1] response\n"
        )
        self.store.register(parse(event, alias))
        self._aliases[msgtype] = alias
        return alias

    def deserialize(self, data: bytes, msgtype: str) -> Any:
        return self.store.deserialize_cdr(data, msgtype)


def _types_from_embedded(
    text: str, msgtype: str, parse: Callable[[str, str], dict[str, Any]]
) -> dict[str, Any]:
    """Embedded rosbag2 definitions: the main type, then `MSG: pkg/Type` sections of dependencies."""
    sep = "=" * 80
    parts = text.split(sep)
    types = dict(parse(parts[0], msgtype))
    for part in parts[1:]:
        body = part.strip("\n")
        if body.startswith("MSG: "):
            head, _, rest = body.partition("\n")
            types.update(parse(rest, normalise_msgtype(head[5:].strip())))
    return types


def get_path(msg: Any, path: str) -> Any:
    """`point.x`, `angular_velocity.z`, `data` on a deserialized message."""
    value = msg
    for part in path.split("."):
        value = getattr(value, part)
    return value

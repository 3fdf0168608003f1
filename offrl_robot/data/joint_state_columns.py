"""`sensor_msgs/msg/JointState` columns by joint name, from topics that several publishers feed.

A real arm log rarely has one JointState layout per topic: the arm's joint_state_broadcaster and
the gripper publish on the same `/joint_states` with disjoint `name[]` sets (and the gripper
often with positions only), and some drivers emit `name[]` in a different order in every
message. Each requested column (joint, field) is therefore located per message: a message
*carries* a column when it names the joint and its field array is not empty. The ingest then
takes every column as-of from the latest message that carries it; joints are never mixed.

Speed without a per-message Python loop:

- a group of messages with identical structure bytes (same length, same names in the same
  order, same array lengths: one publisher with a fixed order) shares byte offsets and decodes
  as one strided numpy gather, as before;
- everything else (shuffled order, mixed publishers, ...) is parsed in bulk: the CDR walk over
  frame_id, the name strings and the three arrays is done for all messages at once with numpy
  (one step per name slot, not per message), reading counts, names and values through unaligned
  stride-1 views of the batch buffer (one index per 4- or 8-byte word, not per byte). Names are
  matched to the requested joints exactly, as whole 8-byte words, and values are gathered with
  per-message offsets. Nothing is cached per name order, so a log whose every message has a new
  order costs the same as one with a few orders.

`by_index: true` (drivers that publish an empty `name[]`) takes array slots instead of names and
refuses a topic whose non-empty `name[]` varies: then the same slot holds different joints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from offrl_robot.data.bag_reader import Layout, RawBatch, joint_state_layout
from offrl_robot.errors import BagError

FIELDS = ("position", "velocity", "effort")
_AR4 = np.arange(4)
_AR8 = np.arange(8)
_UNIFORM_PROBE = 64  # rows compared before a whole length group is (maybe wrongly) assumed uniform
_MAX_UNIFORM_GROUPS = 8  # more distinct lengths than this: parse in bulk, skip the uniform tries
_NAMES_SEEN = 4  # distinct name lists remembered for error messages


@dataclass(frozen=True)
class Column:
    """One output column: a joint (name, or array slot with by_index) and a field."""

    joint: str | int
    field: str


@dataclass
class DecodedBatch:
    """One batch: values [m, C] float32 (NaN where not carried), the presence pattern id of each
    message ([m] int32, ids into `JointStateColumns.patterns`), header stamps (ns) if asked."""

    values: np.ndarray
    pattern_ids: np.ndarray
    stamps: np.ndarray | None


class JointStateColumns:
    """Decodes batches of one JointState topic into the requested columns; keeps what it saw
    (presence patterns, joints seen, a few name lists) across batches for the final checks."""

    def __init__(self, columns: Sequence[Column], by_index: bool, topic: str, bag: str) -> None:
        for col in columns:
            if col.field not in FIELDS:
                raise ValueError(f"JointState field {col.field!r} is not one of {FIELDS}")
        self.columns = list(columns)
        self.by_index = by_index
        self.topic, self.bag = topic, bag
        self.joints: list[str | int] = list(dict.fromkeys(c.joint for c in self.columns))
        self._joint_of = np.array([self.joints.index(c.joint) for c in self.columns], np.int64)
        self._field_of = [c.field for c in self.columns]
        self.patterns: list[np.ndarray] = []  # presence [C] bool per pattern id
        self._pattern_ids: dict[bytes, int] = {}
        self.joint_seen = np.zeros(len(self.joints), bool)
        self.names_seen: list[tuple[str, ...]] = []  # one name list per distinct set of names
        self._name_sets: set[frozenset[str]] = set()
        # by_index: the name list every message must repeat, and for a column whose slot was
        # missing, that message's field length (for the error message)
        self._first_names: tuple[str, ...] | None = None
        self._first_names_bytes: bytes | None = None
        self._missing_count: dict[int, int] = {}
        # requested names by CDR string length (incl. NUL): joint ids and their 8-byte words
        self._by_length: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if not by_index:
            lengths: dict[int, list[int]] = {}
            encoded = [str(j).encode("utf-8") + b"\0" for j in self.joints]
            for k, b in enumerate(encoded):
                lengths.setdefault(len(b), []).append(k)
            for size, ids in lengths.items():
                nwords = -(-size // 8)
                words = np.zeros((len(ids), 8 * nwords), np.uint8)
                for row, k in enumerate(ids):
                    words[row, :size] = np.frombuffer(encoded[k], np.uint8)
                self._by_length[size] = (np.array(ids, np.int64), words.view("<u8"))

    # ------------------------------------------------------------------ errors
    def _fail(self, why: str) -> BagError:
        return BagError(f"bag {self.bag}: topic {self.topic}: {why}")

    def _remember_names(self, names: Sequence[str]) -> None:
        key = frozenset(names)  # shuffled orders of one publisher's names are one entry
        if key not in self._name_sets and len(self.names_seen) < _NAMES_SEEN:
            self._name_sets.add(key)
            self.names_seen.append(tuple(names))

    def shown_names(self) -> str:
        """The name lists seen, for an error message."""
        if not self.names_seen:
            return "none"
        shown = [list(n) if n else "an empty name list" for n in self.names_seen]
        return " / ".join(str(s) for s in shown)

    # ------------------------------------------------------------------ patterns
    def _pattern(self, present: np.ndarray) -> int:
        key = np.packbits(present).tobytes()
        pid = self._pattern_ids.get(key)
        if pid is None:
            pid = self._pattern_ids[key] = len(self.patterns)
            self.patterns.append(present.copy())
        return pid

    def _pattern_rows(self, present: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Global pattern id of every row of a [m, C] presence matrix, and the first row of each
        distinct pattern (a topic has a handful: one per publisher)."""
        m = len(present)
        if present.all():
            return np.full(m, self._pattern(np.ones(present.shape[1], bool)), np.int32), [0]
        packed = np.packbits(present, axis=1, bitorder="little")
        if packed.shape[1] <= 8:  # up to 64 columns: one integer key per row
            keys = np.zeros((m, 8), np.uint8)
            keys[:, : packed.shape[1]] = packed
            key = keys.view("<u8").reshape(m)
            distinct = np.unique(key)
            if distinct.size <= 16:  # a few publishers: one mask per pattern beats an argsort
                ids = np.empty(m, np.int32)
                firsts = []
                for value in distinct.tolist():
                    mask = key == value
                    first = int(mask.argmax())
                    ids[mask] = self._pattern(present[first])
                    firsts.append(first)
                return ids, firsts
        _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
        table = np.array([self._pattern(present[f]) for f in first.tolist()], np.int32)
        return table[inverse.reshape(-1)], first.tolist()

    # ------------------------------------------------------------------ decoding
    def decode(self, batch: RawBatch, want_stamp: bool) -> DecodedBatch:
        if batch.payloads is not None:
            payloads = batch.payloads
            n = len(payloads)
            lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=n)
            buf = np.frombuffer(b"".join(payloads), dtype=np.uint8)
            starts = np.zeros(n, np.int64)
            np.cumsum(lengths[:-1], out=starts[1:])
        else:
            assert batch.buffer is not None and batch.starts is not None and batch.lengths is not None
            buf, starts, lengths = batch.buffer, batch.starts, batch.lengths
            n = len(starts)
        values = np.empty((n, len(self.columns)), np.float32)
        pattern_ids = np.empty(n, np.int32)
        if n == 0:
            return DecodedBatch(values, pattern_ids, np.empty(0, np.int64) if want_stamp else None)
        if np.any(lengths < 12) or np.any(buf[starts + 1] != 1):
            raise self._fail("a message is not little-endian CDR (big-endian or damaged); re-record it")
        unique = np.unique(lengths)
        pool: list[np.ndarray] = []  # rows left for the bulk parse
        if unique.size <= _MAX_UNIFORM_GROUPS:
            for length in unique.tolist():
                rows = np.arange(n) if unique.size == 1 else np.flatnonzero(lengths == length)
                if not self._decode_uniform(buf, starts, rows, int(length), values, pattern_ids):
                    pool.append(rows)
        else:
            pool.append(np.arange(n))
        if pool:
            rows = pool[0] if len(pool) == 1 else np.sort(np.concatenate(pool))
            self._decode_parsed(buf, starts[rows], lengths[rows], rows, values, pattern_ids)
        stamps = None
        if want_stamp:
            head = buf[starts[:, None] + np.arange(4, 12)]
            sec = head[:, :4].copy().view("<i4").reshape(-1).astype(np.int64)
            nsec = head[:, 4:].copy().view("<u4").reshape(-1).astype(np.int64)
            stamps = sec * 1_000_000_000 + nsec
        return DecodedBatch(values, pattern_ids, stamps)

    def _decode_uniform(
        self,
        buf: np.ndarray,
        starts: np.ndarray,
        rows: np.ndarray,
        length: int,
        values: np.ndarray,
        pattern_ids: np.ndarray,
    ) -> bool:
        """Decode `rows` with one set of offsets if they all share the first row's structure."""
        first = buf[starts[rows[0]] : starts[rows[0]] + length]
        try:
            layout = joint_state_layout(first.tobytes())
        except (ValueError, IndexError):
            return False  # the bulk parse names the problem
        cols = layout.structure_columns()
        template = first[cols]
        probe = rows[:_UNIFORM_PROBE]
        if not np.array_equal(
            buf[starts[probe][:, None] + cols], np.broadcast_to(template, (len(probe), cols.size))
        ):
            return False
        if len(rows) * length == buf.size:  # the whole batch, back to back: a view, no copy
            mat = buf.reshape(len(rows), length)
        else:
            mat = buf[starts[rows][:, None] + np.arange(length)]
        if not (mat[:, cols] == template).all():
            return False
        offsets, present = self._layout_columns(layout)
        target = slice(None) if len(rows) == len(values) else rows
        if present.all() and offsets.size:
            byte_idx = (offsets[:, None] + _AR8).reshape(-1)
            block = mat[:, byte_idx].copy().view("<f8").reshape(len(rows), -1)
            values[target] = block  # float64 -> float32 on assignment: no intermediate copy
        elif offsets.size:
            values[target] = np.nan
            carried = np.flatnonzero(present)
            if carried.size:
                byte_idx = (offsets[carried][:, None] + _AR8).reshape(-1)
                block = mat[:, byte_idx].copy().view("<f8").reshape(len(rows), -1)
                if isinstance(target, slice):
                    values[:, carried] = block
                else:
                    values[np.ix_(rows, carried)] = block
        pattern_ids[rows] = self._pattern(present)
        return True

    def _layout_columns(self, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
        """Byte offsets (-1: not carried) and presence of every column in one message layout."""
        names = layout.names
        self._remember_names(names)
        if self.by_index:
            self._check_names_constant(tuple(names))
            slots = [int(j) for j in self.joints]  # type: ignore[arg-type]
        else:
            where: dict[str, int] = {}
            for k, name in enumerate(names):
                if name in where and name in self.joints:
                    raise self._fail(
                        f"joint {name!r} appears twice in one message's name[]; fix the publisher"
                    )
                where.setdefault(name, k)
            slots = [where.get(str(j), -1) for j in self.joints]
            self.joint_seen |= np.array(slots) >= 0
        offsets = np.full(len(self.columns), -1, np.int64)
        for c, (j, fname) in enumerate(zip(self._joint_of.tolist(), self._field_of, strict=True)):
            slot = slots[j]
            start, count = layout.arrays[fname]
            if self.by_index and slot >= count:
                self._missing_count.setdefault(c, count)
            if slot < 0 or count == 0:
                continue
            if not self.by_index and count != len(names):
                raise self._fail(
                    f"a message names {len(names)} joints but has {count} {fname} values "
                    "(JointState arrays are empty or one per name); fix the publisher"
                )
            if slot < count:
                offsets[c] = start + 8 * slot
        return offsets, offsets >= 0

    def _check_names_constant(self, names: tuple[str, ...]) -> None:
        if self._first_names is None:
            self._first_names = names
        elif names != self._first_names:
            raise self._fail(
                f"by_index: true, but name[] changes between messages ({list(self._first_names)} then "
                f"{list(names)}), so one array slot holds different joints; map joints by name "
                "(joints: [...] or joint_groups) instead"
            )

    def _decode_parsed(
        self,
        buf: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        rows: np.ndarray,
        values: np.ndarray,
        pattern_ids: np.ndarray,
    ) -> None:
        """Walk the CDR of all `rows` at once and gather their columns with per-row offsets."""
        m = len(rows)
        u32_at = _words(buf, "<u4")  # unaligned views: element k is the word starting at byte k
        u64_at = _words(buf, "<u8")

        def malformed(why: str, bad: np.ndarray) -> BagError:
            k = int(np.flatnonzero(bad)[0])
            return self._fail(f"a message does not parse as its type ({why}, {int(lengths[k])}-byte message)")

        def u32(rel: np.ndarray, what: str, active: np.ndarray | None = None) -> np.ndarray:
            bad = rel + 4 > lengths
            if active is not None:
                bad &= active
                rel = np.where(active, rel, 0)
            if bad.any():
                raise malformed(f"{what} runs past the end", bad)
            return u32_at[starts + rel].astype(np.int64)

        def align(rel: np.ndarray, size: int) -> np.ndarray:
            return 4 + ((rel - 4 + size - 1) // size) * size

        frame_len = u32(np.full(m, 12, np.int64), "frame_id")
        rel = align(16 + frame_len, 4)
        count = u32(rel, "name")
        names_from = rel.copy()
        rel = rel + 4
        too_many = 4 * count > lengths - rel
        if too_many.any():
            raise malformed("name[] runs past the end", too_many)
        slots: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for i in range(int(count.max(initial=0))):
            active = count > i
            rel = np.where(active, align(rel, 4), rel)
            size = np.where(active, u32(rel, "name[]", active), 0)
            past = active & (rel + 4 + size > lengths)
            if past.any():
                raise malformed("name[] runs past the end", past)
            slots.append((rel + 4, size, active))
            rel = np.where(active, rel + 4 + size, rel)
        names_to = rel
        arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for fname in FIELDS:
            rel = align(rel, 4)
            cnt = u32(rel, fname)
            rel = rel + 4
            rel = np.where(cnt > 0, align(rel, 8), rel)
            past = rel + 8 * cnt > lengths
            if past.any():
                raise malformed(f"{fname} runs past the end", past)
            arrays[fname] = (rel, cnt)
            rel = rel + 8 * cnt
        trailing = rel != lengths
        if trailing.any():
            raise malformed("unexpected trailing bytes", trailing)

        # which slot of each message holds each requested joint
        if self.by_index:
            self._check_parsed_names_constant(buf, starts, names_from, names_to)
            slot_of = np.broadcast_to(np.array(self.joints, np.int64), (m, len(self.joints)))
        else:
            slot_of = self._match_names(u64_at, starts, slots)
            self.joint_seen |= (slot_of >= 0).any(axis=0)
        f64_at = _words(buf, "<f8")
        present = np.empty((m, len(self.columns)), bool)
        block = np.empty((m, len(self.columns)), np.float32)
        for c, (j, fname) in enumerate(zip(self._joint_of.tolist(), self._field_of, strict=True)):
            slot = slot_of[:, j]
            start, cnt = arrays[fname]
            carried = (slot >= 0) & (cnt > 0)
            if not self.by_index:
                short = carried & (cnt != count)
                if short.any():
                    k = int(np.flatnonzero(short)[0])
                    raise self._fail(
                        f"a message names {int(count[k])} joints but has {int(cnt[k])} {fname} values "
                        "(JointState arrays are empty or one per name); fix the publisher"
                    )
            ok = carried & (slot < cnt)
            if self.by_index and not ok.all():
                self._missing_count.setdefault(c, int(cnt[np.flatnonzero(~ok)[0]]))
            present[:, c] = ok
            gathered = f64_at[np.where(ok, starts + start + 8 * slot, 0)]
            block[:, c] = gathered if ok.all() else np.where(ok, gathered, np.nan)
        values[rows] = block
        known = len(self.patterns)
        pattern_ids[rows], firsts = self._pattern_rows(present)
        if len(self.patterns) > known or not self.names_seen:  # a new publisher (or the first batch)
            self._sample_names(buf, starts, lengths, firsts)

    def _match_names(
        self, u64_at: np.ndarray, starts: np.ndarray, slots: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        """[m, J] slot of each requested joint in each message (-1: not named). Exact: a name
        matches when its CDR length (incl. NUL) and all its bytes, read as 8-byte words (the
        last one masked to the name), equal a requested joint's."""
        m = len(starts)
        slot_of = np.full((m, len(self.joints)), -1, np.int64)
        for i, (start, size, active) in enumerate(slots):
            for length, (ids, jwords) in self._by_length.items():
                rows = np.flatnonzero(active & (size == length))
                if rows.size == 0:
                    continue
                at = starts[rows] + start[rows]
                eq = np.ones((rows.size, len(ids)), bool)
                for q in range(jwords.shape[1]):
                    word = u64_at[at + 8 * q]  # in bounds: a name is followed by >= 12 bytes of counts
                    tail = length - 8 * q
                    if tail < 8:
                        word = word & np.uint64((1 << (8 * tail)) - 1)
                    eq &= word[:, None] == jwords[None, :, q]
                hit = eq.any(axis=1)  # requested names of one length are distinct: at most one hit
                target, joint = rows[hit], ids[eq.argmax(axis=1)[hit]]
                taken = slot_of[target, joint] >= 0
                if taken.any():
                    k = int(np.flatnonzero(taken)[0])
                    raise self._fail(
                        f"joint {self.joints[int(joint[k])]!r} appears twice in one message's name[]; fix the publisher"
                    )
                slot_of[target, joint] = i
        return slot_of

    def _check_parsed_names_constant(
        self, buf: np.ndarray, starts: np.ndarray, names_from: np.ndarray, names_to: np.ndarray
    ) -> None:
        """by_index: every message's name[] region must equal the first message's, byte for byte."""
        span = names_to - names_from
        if self._first_names_bytes is None:
            first = buf[starts[0] + names_from[0] : starts[0] + names_to[0]].tobytes()
            self._check_names_constant(_names_of_region(first))  # against a uniform group's names
            self._first_names_bytes = first
        ref = np.frombuffer(self._first_names_bytes, np.uint8)
        differs = span != ref.size
        same_len = np.flatnonzero(~differs)
        if same_len.size and ref.size:
            region = buf[(starts[same_len] + names_from[same_len])[:, None] + np.arange(ref.size)]
            differs[same_len] = (region != ref).any(axis=1)
        if differs.any():
            k = int(np.flatnonzero(differs)[0])
            raw = buf[starts[k] + names_from[k] : starts[k] + names_to[k]].tobytes()
            self._check_names_constant(_names_of_region(raw))

    def _sample_names(
        self, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, rows: list[int]
    ) -> None:
        """Remember the name lists of a few rows (one per presence pattern), for error messages."""
        for k in rows[:_NAMES_SEEN]:
            if len(self.names_seen) >= _NAMES_SEEN:
                return
            raw = buf[starts[k] : starts[k] + lengths[k]].tobytes()
            try:
                self._remember_names(joint_state_layout(raw).names)
            except (ValueError, IndexError):
                continue

    # ------------------------------------------------------------------ after the last batch
    def check_complete(self) -> None:
        """Every requested column is carried by at least one message, else a one-line error."""
        carried = np.zeros(len(self.columns), bool)
        for pattern in self.patterns:
            carried |= pattern
        if carried.all():
            return
        c = int(np.flatnonzero(~carried)[0])
        col = self.columns[c]
        if self.by_index:
            count = self._missing_count.get(c, 0)
            raise self._fail(
                f"field {col.field} has {count} values, index {col.joint} is missing in every message; "
                f"drop {col.field} from the spec"
            )
        j = self.joints.index(col.joint)
        if not self.joint_seen[j]:
            empty = self.names_seen == [()]
            hint = "; use by_index: true with indices" if empty else ""
            shown = "an empty name list" if empty else self.shown_names()
            raise self._fail(f"joint {col.joint!r} is absent from JointState (names in bag: {shown}){hint}")
        raise self._fail(
            f"joint {col.joint!r} has no {col.field} value in any message that names it ({col.field} is empty "
            f"there); drop {col.field} for that joint (joint_groups give each joint group its own fields)"
        )


def _words(buf: np.ndarray, dtype: str) -> np.ndarray:
    """Unaligned read-only view: element k is the little-endian word starting at byte k."""
    size = np.dtype(dtype).itemsize
    return np.ndarray((max(buf.size - size + 1, 0),), dtype=dtype, buffer=buf, strides=(1,))


def _names_of_region(raw: bytes) -> tuple[str, ...]:
    """Names from the bytes of a name[] sequence (count, then length-prefixed strings)."""
    if len(raw) < 4:
        return ()
    count = int.from_bytes(raw[:4], "little")
    names, pos = [], 4
    for _ in range(count):
        pos = ((pos + 3) // 4) * 4  # alignment is relative; the region starts 4-aligned
        size = int.from_bytes(raw[pos : pos + 4], "little")
        names.append(raw[pos + 4 : pos + 3 + size].decode("utf-8", "replace"))
        pos += 4 + size
    return tuple(names)

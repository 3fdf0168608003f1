"""`offrl-robot bag-info BAG...`: open a rosbag2 log, read every message it reports, and say so.

The point is to never trust a bag silently: each topic's messages are counted by reading the
storage files themselves and compared with the count metadata.yaml (or the MCAP summary)
reports; the duration shown is the span of the data, not the metadata's claim (they differ
on real bags). `--decode` also deserializes every message. Any bag that cannot be read
completely makes the command exit non-zero with one line naming the bag and the reason.
"""

from __future__ import annotations

import argparse
import sys

from offrl_robot.data.bag_reader import Bag, TypeResolver
from offrl_robot.errors import BagError, OffrlError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", metavar="BAG", help="rosbag2 directories or .mcap/.db3 files")
    parser.add_argument(
        "--decode", action="store_true", help="also deserialize every message (fails on unknown types)"
    )


def describe(path: str, decode: bool = False) -> str:
    """Read the whole bag; return its summary table, or raise BagError naming bag and reason."""
    bag = Bag(path)
    counts, spans = bag.count_messages()
    decoded = _decode_all(bag) if decode else {}
    lines = [
        f"bag {bag.name}",
        f"  storage: {bag.storage}   files: {len(bag.files)}   compression: "
        f"{(bag.compression_format + ' ' + bag.compression_mode).strip() or 'none'}",
    ]
    if spans:
        first = min(s[0] for s in spans.values())
        last = max(s[1] for s in spans.values())
        data_s = (last - first) / 1e9
        meta = f"{bag.metadata_duration_ns / 1e9:.3f} s" if bag.metadata_duration_ns is not None else "n/a"
        lines.append(f"  duration (data): {data_s:.3f} s   duration (metadata): {meta}   start: {first} ns")
    else:
        lines.append("  duration (data): 0 s (no messages)")
    header = f"  {'topic':<44} {'type':<44} {'reported':>9} {'read':>9}"
    lines.append(header + (f" {'decoded':>9}" if decode else ""))
    for name, info in sorted(bag.topics.items()):
        reported = "-" if info.reported_count is None else str(info.reported_count)
        row = f"  {name:<44} {info.msgtype:<44} {reported:>9} {counts.get(name, 0):>9}"
        lines.append(row + (f" {decoded.get(name, 0):>9}" if decode else ""))
    odd = sorted({i.serialization_format for i in bag.topics.values()} - {"cdr"})
    if odd:
        lines.append(f"  note: serialization format {', '.join(odd)} (not cdr): ingest refuses these topics")
    lines.append(f"  total: {sum(counts.values())} messages read, every reported message accounted for")
    bag.verify_counts(counts)
    return "\n".join(lines)


def _decode_all(bag: Bag) -> dict[str, int]:
    resolver = TypeResolver()
    decoded: dict[str, int] = {}
    for raw in bag.iter_batches():
        info = bag.topics[raw.topic]
        msgtype = resolver.ensure(info, bag.name)
        for k, data in enumerate(raw.messages()):
            try:
                resolver.deserialize(data, msgtype)
            except Exception as err:
                raise BagError(
                    f"bag {bag.name}: topic {raw.topic}: message {decoded.get(raw.topic, 0) + k} does not decode as {info.msgtype} ({type(err).__name__}: {err})"
                ) from None
        decoded[raw.topic] = decoded.get(raw.topic, 0) + len(raw)
    return decoded


def run(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.bags:
        try:
            print(describe(path, decode=args.decode))
        except OffrlError as err:
            failed += 1
            print(f"offrl-robot bag-info: error: {err}", file=sys.stderr)
    return 2 if failed else 0

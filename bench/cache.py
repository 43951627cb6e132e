"""The sqlite read cache: what a fill costs once the cache is full, against one that is not.

    python bench/cache.py [--fills 200000]

On a store bigger than the cache (bench/scale.py: 1,000,000 keys), nearly every GET misses, reads
sqlite, and fills the cache, which then drops its oldest entry. This times fills into a full cache
(each one evicts) against fills into a cache with room (none evicts), in the same process, and
prints the ratio. Dropping the oldest entry of a plain dict with ``next(iter(...))`` made it
28x (15 us a fill); with the OrderedDict it is 1.2x. Takes a few seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins" / "navistore_sqlite"))

from navistore.record import Record, make_stamp  # noqa: E402
from navistore_sqlite.cache import ReadCache  # noqa: E402


def fill_time(cache: ReadCache, records: list[Record]) -> float:
    """Seconds per fill of ``records`` into ``cache``."""
    started = time.perf_counter()
    for record in records:
        cache.fill(record.key, record, cache.generation)
    return (time.perf_counter() - started) / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--fills", type=int, default=200_000)
    args = parser.parse_args()
    stamp = make_stamp(1_700_000_000_000, 0, "bench")
    records = [Record(f"k/{i:07d}", b"x" * 100, stamp=stamp, seq=i) for i in range(args.fills)]
    full = ReadCache()  # the store's default budget
    for record in records:  # fill it past its budget: from here on every fill evicts
        full.fill("warm/" + record.key, record, full.generation)
    rounds = {"room": [], "full": []}
    for _ in range(3):  # alternating, medians
        roomy = ReadCache(budget_bytes=2**40)  # a fresh one each round: it never fills up
        rounds["room"].append(fill_time(roomy, records))
        rounds["full"].append(fill_time(full, records))
    room, evicting = (sorted(times)[1] for times in rounds.values())
    print(f"read cache, {args.fills:,} fills of 100-byte values, medians of 3 rounds:")
    print(f"  with room (no eviction)     {room * 1e6:6.2f} us a fill  (the baseline)")
    print(f"  full (each fill evicts)     {evicting * 1e6:6.2f} us a fill  {evicting / room:.1f}x")
    print(f"  entries held when full: {len(full._entries):,}")


if __name__ == "__main__":
    main()

"""What a value's size costs the sqlite store: reads, sizing reads and writes, against 100 bytes.

    python bench/values.py [--keys 1000] [--sizes 100,2000,10000,100000]

In this process, one thread, no server: for each value size, a fresh SqliteStore with ``--keys``
keys of that size, then CPU per operation:

- GET: ``store.get`` of a random key, the read cache off, so that every read goes to sqlite;
- feed sized: ``store.changes(0, 1000, values=False)``, what watches and peer-push read to size
  changes before they read values;
- listing: ``store.scan_listing`` of a page of 100 from a random key;
- write: ``store.commit_many`` of 4 random keys, a group commit as under load.

Prints each, and its ratio to the same operation on 100-byte values (the first size) in the same
run. To compare the store at another revision, run this file with that revision's tree first on
PYTHONPATH (the tree and its plugins/navistore_sqlite). About a minute.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _scratch import scratch

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH

from navistore.record import ANY, Record, make_stamp  # noqa: E402
from navistore_sqlite.cache import ReadCache  # noqa: E402
from navistore_sqlite.store import SqliteStore  # noqa: E402


def cpu_per_call(call: Callable[[], object], seconds: float = 0.5) -> float:
    """Median CPU microseconds a call over 3 runs of about ``seconds`` each."""
    runs = []
    for _ in range(3):
        count, started, deadline = 0, time.process_time(), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            call()
            count += 1
        runs.append((time.process_time() - started) / count * 1e6)
    return statistics.median(runs)


def measure(size: int, keys: int) -> dict[str, float]:
    store = SqliteStore(str(scratch("navistore-values-") / "v.db"))
    names = [f"k/{i:06d}" for i in range(keys)]
    stamps = iter(range(1, 1 << 40))

    def record(key: str) -> Record:
        return Record(key, os.urandom(size), stamp=make_stamp(1_000_000 + next(stamps), 0, "a"))

    try:
        for start in range(0, keys, 100):
            store.commit_many([(record(key), ANY) for key in names[start : start + 100]])
        store._cache = ReadCache(budget_bytes=0)  # every GET reads sqlite
        return {
            "GET": cpu_per_call(lambda: store.get(random.choice(names))),
            "feed sized": cpu_per_call(lambda: store.changes(0, 1000, values=False)),
            "listing": cpu_per_call(
                lambda: store.scan_listing(after=random.choice(names), limit=100)
            ),
            "write": cpu_per_call(
                lambda: store.commit_many([(record(k), ANY) for k in random.sample(names, 4)])
            )
            / 4,
        }
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--sizes", default="100,2000,10000,100000")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"navistore_sqlite from {Path(sys.modules[SqliteStore.__module__].__file__).parent}")
    print(f"{args.keys} keys; us of CPU per operation (ratio to {sizes[0]}-byte values)")
    print(f"{'value':>9}  {'GET':>16}  {'feed sized':>18}  {'listing':>16}  {'write/row':>16}")
    base: dict[str, float] = {}
    for size in sizes:
        costs = measure(size, args.keys)
        base = base or costs
        print(
            f"{size:>7} B  "
            + "  ".join(
                f"{costs[name]:8.1f} ({costs[name] / base[name]:5.1f}x)"
                for name in ("GET", "feed sized", "listing", "write")
            )
        )


if __name__ == "__main__":
    main()

"""What a commit pays to find the watches it wakes, when many prefixes are watched: in this process.

    python bench/wake_prefixes.py [--puts 3000] [--rounds 3]

A fleet whose machines each watch a prefix of their own (``hosts/NAME/``) has as many prefixes
watched as machines. A commit finds the watches it matches by looking its key's own prefixes up
(``Node._wake_watches``) when the key is shorter than the prefixes watched are many; it used to try
every prefix watched. One thread, no server: a Node on a scratch sqlite file, 0 to 10,000 watches
held (``Node.watch_parked``, as ``navistore serve`` holds them), each on a prefix of its own that
no PUT matches, then PUTs of 1,000 keys. Prints the CPU per PUT (``time.thread_time``, least of
``--rounds``), against no watch in the same run, with the lookup and with the scan it replaced
(patched in, in this process only). About 30 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _scratch import scratch  # noqa: E402

from navistore.node import Node  # noqa: E402
from navistore.parking import Deadlines, Park  # noqa: E402
from navistore.settings import Settings  # noqa: E402

COUNTS = (0, 100, 1_000, 10_000)


class NoPool:
    """Stands in for the server a held watch's ``Park`` hands its connection back to: no PUT of
    this bench matches a watch, so none may."""

    server: Any = None

    def add_task(self, channel: Any) -> None:
        raise SystemExit("a PUT woke a watch it does not match")


NoPool.server = NoPool()


def scan(self: Node, keys: Any) -> None:
    """``Node._wake_watches`` as it was: every prefix watched tried against each key."""
    with self._watch_lock:
        groups = []
        for key in keys:
            groups += [g for p, g in self._prefix_watches.items() if key.startswith(p)]
            if key in self._key_watches:
                groups.append(self._key_watches[key])
        for group in groups:
            for woken in group:
                woken.set()


def cpu_per_put(node: Node, puts: int, rounds: int) -> float:
    best = float("inf")
    for r in range(rounds):
        started = time.thread_time()
        for n in range(puts):
            node.put(f"config/service{n % 1000}/setting", b"%d" % r)
        best = min(best, time.thread_time() - started)
    return best / puts * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--puts", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    store = f"sqlite:///{scratch('navistore-wake-')}/bench.db"
    node = Node(Settings(store=store, max_watchers=max(COUNTS)))
    lookup = Node._wake_watches
    rows = []
    try:
        for count in COUNTS:
            held = [Park(NoPool(), Deadlines()) for _ in range(count)]
            for n, park in enumerate(held):
                node.watch_parked(park, node.last_seq(), prefix=f"hosts/host{n:05d}/", wait=600)
                park.let_go()  # held, as navistore serve holds it
            assert node.watchers == count
            measured = []
            for wake in (lookup, scan):
                Node._wake_watches = wake  # type: ignore[method-assign]
                measured.append(cpu_per_put(node, args.puts, args.rounds))
            Node._wake_watches = lookup  # type: ignore[method-assign]
            rows.append((count, *measured))
            for park in held:
                park.done()
    finally:
        node.close()
    print(
        "CPU per PUT in one thread (us, least of the rounds) with prefix watches held that no "
        "PUT matches; ratio: against no watch, in this run"
    )
    print(f"{'watches':>8} {'lookup (now)':>20} {'scan (before)':>20}")
    base = rows[0][1]
    for count, now, before in rows:
        print(
            f"{count:>8} {now:>10.1f} us {now / base:5.2f}x "
            f"{before:>10.1f} us {before / base:5.2f}x"
        )


if __name__ == "__main__":
    main()

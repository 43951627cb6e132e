"""What waiting watches cost: GET and PUT throughput with 0 and with 50 watches waiting.

    python bench/watchers.py [--seconds 5] [--watchers 50] [--postgres]

Starts `navistore serve` (sqlite, 8 threads, room for the watches; with --postgres, on a throwaway
PostgreSQL server, where commits reach the watches through LISTEN/NOTIFY), loads 1,000 keys, and
drives GETs with wrk (16 connections) three times in the same run: with no watch waiting (the
baseline), with 50 watches waiting on a prefix nobody writes, and with 50 watches on a prefix
written 20 times a second (each write wakes them all). Then PUTs to those 1,000 keys, with no watch
waiting and with 50 watches waiting on another prefix (a write must not wake them). Prints req/s,
p50, p99 and the ratio to each baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _wrk  # noqa: E402
from _scratch import scratch  # noqa: E402

from navistore.client import Client  # noqa: E402
from navistore.testing.servers import ServerProcess  # noqa: E402


@contextlib.contextmanager
def watchers(client: Client, count: int, prefix: str) -> Iterator[None]:
    """``count`` watchers on ``prefix``, watching again and again, all waiting (up to 10 s) before
    the body runs; after it, they are woken and leave (else they would keep max_watchers' slots
    until their wait ends)."""
    stop = threading.Event()

    def watch() -> None:
        with Client(client.url, timeout=120) as watcher:
            since = watcher.status()["last_seq"]
            while not stop.is_set():
                changes, last = watcher.changes(since, prefix=prefix, wait=30)
                since = changes[-1].seq if changes else last

    for _ in range(count):
        threading.Thread(target=watch, daemon=True).start()
    deadline = time.monotonic() + 10
    while waiting(client) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield
    finally:
        stop.set()
        client.put(f"{prefix}stop", b"")  # wake them: they see stop and leave


def waiting(client: Client) -> int:
    _, _, body = client.request("GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("navistore_watchers_waiting "):
            return int(float(line.split()[1]))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument(
        "--postgres", action="store_true", help="on PostgreSQL (needs its server binaries)"
    )
    args = parser.parse_args()
    _wrk.ensure_wrk()
    with contextlib.ExitStack() as stack:
        store = []
        if args.postgres:
            from navistore_postgres.throwaway import ThrowawayPostgres

            postgres = stack.enter_context(ThrowawayPostgres(fsync=True))
            store = ["--store", postgres.url + "?schema=bench"]
        run(args, store)


def run(args: argparse.Namespace, store: list[str]) -> None:
    folder = scratch("navistore-bench-")
    server = ServerProcess(
        ["--threads", "8", "--max-watchers", str(args.watchers + 8), *store], folder
    )
    results: dict[str, _wrk.Result] = {}
    writes: dict[str, _wrk.Result] = {}
    try:
        client = Client(server.url)
        for start in range(0, 1000, 128):
            client.batch(
                [
                    {"op": "put", "key": f"k/{i:06d}", "value": b"x" * 100}
                    for i in range(start, min(start + 128, 1000))
                ]
            )
        lua = _wrk.get_random_keys("k/", 1000)
        _wrk.run(server.url, lua, 16, 1)  # warm up
        results["no watchers"] = _wrk.run(server.url, lua, 16, args.seconds)

        with watchers(client, args.watchers, "quiet/"):
            results[f"{args.watchers} watchers waiting"] = _wrk.run(
                server.url, lua, 16, args.seconds
            )

        with watchers(client, args.watchers, "busy/"):
            ticking = threading.Event()

            def ticker() -> None:
                with Client(server.url) as writer:
                    i = 0
                    while not ticking.is_set():
                        writer.put(f"busy/{i % 10}", b"tick")
                        i += 1
                        time.sleep(0.05)

            thread = threading.Thread(target=ticker, daemon=True)
            thread.start()
            results[f"{args.watchers} watchers woken 20x/s"] = _wrk.run(
                server.url, lua, 16, args.seconds
            )
            ticking.set()
            thread.join()

        put = _wrk.put_random_keys("k/", 1000)
        writes["no watchers"] = _wrk.run(server.url, put, 16, args.seconds)
        with watchers(client, args.watchers, "quiet/"):
            writes[f"{args.watchers} watchers elsewhere"] = _wrk.run(
                server.url, put, 16, args.seconds
            )
    finally:
        server.stop()
    for name, runs in (("GET", results), ("PUT", writes)):
        base = runs["no watchers"].requests_per_second
        backend = "postgresql" if store else "sqlite"
        print(f"{name}, {backend}, 1,000 keys, wrk -c16, {args.seconds:g} s each, same server")
        for label, result in runs.items():
            ratio = result.requests_per_second / base
            print(f"  {label:<28} {result.row()}  {ratio:5.2f}x  errors {result.errors}")


if __name__ == "__main__":
    main()

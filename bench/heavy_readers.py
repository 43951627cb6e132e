"""Head of line: GET throughput beside clients that read large pages of values, in the same run.

    python bench/heavy_readers.py [--seconds 5] [--rounds 3] [--cpus N]

Starts `navistore serve` (sqlite, anywhere unless ``--cpus``), loads 1,000 keys of 100 bytes and
40 values of 100 KB under ``big/``, then drives GET of the small keys with wrk (16 connections)
beside 0, 1 and 2 clients that each read ``GET /v1/keys?prefix=big/&values=true`` (a page of
4 MiB of values, 5.5 MB of JSON) in a loop, in alternating rounds. Prints GET's req/s, p50 and
p99, its ratio to the run with no reader, and how long a page took.

Only a few requests run at a time (``navistore.server.running_at_once``), so a request that held
its slot for a page's 20 ms of encoding made every GET wait behind it; such pages step aside
(``navistore.slots.waiting``). About 1 minute. Needs wrk.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _wrk  # noqa: E402
from _scratch import scratch  # noqa: E402
from load import load_keys, median_result  # noqa: E402

from navistore.client import Client  # noqa: E402
from navistore.testing.servers import ServerProcess  # noqa: E402

PAGE = "/v1/keys?prefix=big/&values=true&limit=1000"


def read_pages(server: ServerProcess, stop: threading.Event, took: list[float]) -> None:
    """Read the page of large values again and again until ``stop``; note each one's time."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            conn.request("GET", PAGE)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200, answer.status
            took.append(time.perf_counter() - started)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", default="", help="navistore serve --cpus (default: none)")
    args = parser.parse_args()
    _wrk.ensure_wrk()
    folder = scratch("navistore-heavy-readers-")
    pinned = ["--cpus", args.cpus] if args.cpus else []
    server = ServerProcess(["--store", "sqlite:///heavy.db", *pinned], folder)
    runs: dict[int, list[_wrk.Result]] = {0: [], 1: [], 2: []}
    pages: dict[int, list[float]] = {1: [], 2: []}
    try:
        load_keys(server.url)
        with Client(server.url) as client:
            for i in range(40):
                client.put(f"big/{i:03d}", bytes(range(256)) * 400)
        get = _wrk.get_random_keys("k/", 1000)
        _wrk.run(server.url, get, 16, 1)  # warm up
        for round_ in range(args.rounds):
            order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
            for readers in order:
                stop = threading.Event()
                took: list[float] = []
                threads = [
                    threading.Thread(target=read_pages, args=(server, stop, took))
                    for _ in range(readers)
                ]
                for thread in threads:
                    thread.start()
                runs[readers].append(_wrk.run(server.url, get, 16, args.seconds))
                stop.set()
                for thread in threads:
                    thread.join()
                if readers:
                    pages[readers].append(statistics.median(took) * 1000)
    finally:
        server.stop()
    alone = median_result(runs[0]).requests_per_second
    print(
        f"GET of 1,000 keys, wrk -c16, {args.seconds:g} s a run, medians of {args.rounds} rounds, "
        f"server on CPUs {args.cpus or 'any'}; beside clients reading {PAGE} (4 MiB of values)"
    )
    for readers, results in runs.items():
        result = median_result(results)
        page = f"  a page {statistics.median(pages[readers]):5.0f} ms" if readers else ""
        print(
            f"  {readers} reader{'s' if readers != 1 else ' '}  {result.row()}  "
            f"{result.requests_per_second / alone:.2f}x{page}"
        )


if __name__ == "__main__":
    main()

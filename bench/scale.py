"""Scale run: 1,000,000 keys in one `navistore serve` (sqlite), then what it costs.

    python bench/scale.py [--keys 1000000] [--seconds 5] [--rounds 3] [--cpus N]

Measures GET throughput on a store of 1,000 keys first, loads the keys through POST /v1/batch
(128 per request, 8 client threads), then prints the server's RSS, and, in alternating rounds
(medians; the machine is noisy): GET on 1,000 of the keys (the baseline, same server, same
moment), GET on random keys among all of them, and listing pages of 100 keys; and the size of the
database files. Each of the rounds' rows also gives the server's CPU per request and its
voluntary context switches per request (all threads; a thread that gives the GIL up, for a step of
sqlite, and must wait to take it back switches out). The server runs anywhere unless ``--cpus`` is
given (as navistore serve --cpus). Needs wrk. Takes about 3 minutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _wrk  # noqa: E402
from _proc import cpu_seconds, rss_mb, voluntary_switches  # noqa: E402
from _scratch import scratch  # noqa: E402
from load import median_result  # noqa: E402

from navistore.client import Client  # noqa: E402
from navistore.testing.servers import ServerProcess  # noqa: E402

LISTING = """
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/v1/keys?after=k/%07d&limit=100", math.random(0, {n})))
end
"""


def load(url: str, count: int, threads: int = 8) -> float:
    def work(n: int) -> None:
        with Client(url, timeout=120) as client:
            for start in range(n * 128, count, 128 * threads):
                client.batch(
                    [
                        {"op": "put", "key": f"k/{i:07d}", "value": b"x" * 100}
                        for i in range(start, min(start + 128, count))
                    ]
                )

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", default="", help="navistore serve --cpus (default: none)")
    args = parser.parse_args()
    _wrk.ensure_wrk()
    folder = scratch("navistore-scale-")
    pinned = ["--cpus", args.cpus] if args.cpus else []
    server = ServerProcess(["--store", "sqlite:///scale.db", *pinned], folder)
    try:
        load(server.url, 1000)
        small = _wrk.run(
            server.url, _wrk.get_random_keys("k/", 1000).replace("%06d", "%07d"), 16, args.seconds
        )
        rate = load(server.url, args.keys)
        time.sleep(2)
        rss = rss_mb(server.proc.pid)
        scripts = {
            "small": _wrk.get_random_keys("k/", 1000).replace("%06d", "%07d"),
            "big": _wrk.get_random_keys("k/", args.keys).replace("%06d", "%07d"),
            "listing": LISTING.replace("{n}", str(args.keys - 200)),
        }
        runs: dict[str, list[_wrk.Result]] = {name: [] for name in scripts}
        costs: dict[str, list[tuple[float, float]]] = {name: [] for name in scripts}
        pid = server.proc.pid
        for _ in range(args.rounds):
            for name, lua in scripts.items():
                cpu, switches = cpu_seconds(pid), voluntary_switches(pid)
                result = _wrk.run(server.url, lua, 16, args.seconds)
                requests = result.requests_per_second * _wrk.duration(args.seconds)
                cpu, switches = cpu_seconds(pid) - cpu, voluntary_switches(pid) - switches
                costs[name].append((cpu / requests * 1e6, switches / requests))
                runs[name].append(result)
        subset, big, listing = (median_result(runs[name]) for name in scripts)
        cost = {
            name: (
                statistics.median(us for us, _ in costs[name]),
                statistics.median(switches for _, switches in costs[name]),
            )
            for name in scripts
        }
        rss_after = rss_mb(pid)
    finally:
        server.stop()
    size = sum(os.path.getsize(p) for p in folder.glob("scale.db*")) / 2**20
    print(f"{args.keys:,} keys of 100 bytes, loaded at {rate:,.0f} keys/s through /v1/batch")
    print(f"  server RSS after loading {rss:.0f} MB, after the reads {rss_after:.0f} MB")
    print(f"  database files {size:.0f} MB")
    print(f"  GET, a store of 1,000 keys  {small.row()}")
    print(f"  medians of {args.rounds} alternating rounds of {args.seconds:g} s:")
    print(f"  GET, 1,000 of the keys      {subset.row()}  (the baseline)")
    ratio = big.requests_per_second / subset.requests_per_second
    print(f"  GET, all keys               {big.row()}  {ratio:.2f}x")
    print(
        f"  listing pages of 100        {listing.row()}  "
        f"{listing.requests_per_second / big.requests_per_second:.2f}x of GET"
    )
    print("  the server, a request (medians of the rounds):")
    labels = {
        "small": "GET, 1,000 of the keys",
        "big": "GET, all keys",
        "listing": "listing pages of 100",
    }
    for name, label in labels.items():
        us, switches = cost[name]
        print(f"    {label:<24} {us:6.1f} us CPU  {switches:4.2f} voluntary context switches")


if __name__ == "__main__":
    main()

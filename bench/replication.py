"""Replication benchmark: lag under a steady write load, and catch-up throughput after an outage.

    python bench/replication.py [--seconds 10] [--rate 200] [--backlog 20000]

Starts two `navistore serve` processes on 127.0.0.1 (a pushes to b) and prints:

- lag: the time from a write's acknowledgement on a to its appearance in b's change feed, p50 and
  p99, under a steady load of --rate writes/s; its baseline is the write's own round trip on a;
- catch-up: b is stopped, --backlog records are written to a, b is started; the records/s at
  which b catches up; its baseline is the rate at which the same client writes them into a.

Absolute numbers depend on the machine: read the ratios. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from _scratch import scratch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from navistore.testing.servers import ServerProcess, free_port  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=body)
        response = self.conn.getresponse()
        return response.status, response.read()


def measure_lag(a: ServerProcess, b: ServerProcess, seconds: float, rate: int) -> dict:
    acked: dict[str, float] = {}
    seen: dict[str, float] = {}
    round_trips: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        client = Client(b.port)
        since = json.loads(client.call("GET", "/v1/changes?limit=1")[1])["last_seq"]
        while not stop.is_set() or len(seen) < len(acked):
            status, body = client.call("GET", f"/v1/changes?since={since}&limit=1000&prefix=lag/")
            changes = json.loads(body)["changes"]
            now = time.perf_counter()
            for change in changes:
                seen.setdefault(change["key"], now)
                since = change["seq"]
            if not changes:
                time.sleep(0.002)
            if stop.is_set() and time.perf_counter() > deadline_after_stop[0]:
                break

    deadline_after_stop = [float("inf")]
    watcher = threading.Thread(target=watch)
    watcher.start()
    client = Client(a.port)
    interval = 1.0 / rate
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        key = f"lag/{i:07d}"
        t0 = time.perf_counter()
        status, _ = client.call("PUT", f"/v1/keys/{key}", b"x" * 100)
        t1 = time.perf_counter()
        if status == 201:
            acked[key] = t1
            round_trips.append(t1 - t0)
        i += 1
        pause = start + i * interval - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    deadline_after_stop[0] = time.perf_counter() + 15
    stop.set()
    watcher.join()
    lags = [seen[k] - acked[k] for k in acked if k in seen]
    return {
        "writes": len(acked),
        "arrived": len(lags),
        "p50_ms": percentile(lags, 0.5) * 1000,
        "p99_ms": percentile(lags, 0.99) * 1000,
        "write_p50_ms": statistics.median(round_trips) * 1000,
    }


def write_many(port: int, prefix: str, count: int, threads: int = 8) -> float:
    """Write ``count`` records with ``threads`` clients; return records/s."""

    def work(n: int) -> None:
        client = Client(port)
        for i in range(n, count, threads):
            client.call("PUT", f"/v1/keys/{prefix}/{i:07d}", b"y" * 100)

    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return count / (time.perf_counter() - start)


def measure_catch_up(a: ServerProcess, b: ServerProcess, backlog: int) -> dict:
    b.stop()
    direct = write_many(a.port, "backlog", backlog)
    target = json.loads(Client(a.port).call("GET", "/v1/status")[1])["last_seq"]
    b.start()
    start = time.perf_counter()
    client = Client(a.port)
    while True:
        peers = json.loads(client.call("GET", "/v1/replication/status")[1])["peers"]
        if peers and peers[0]["cursor"] >= target:
            break
        if time.perf_counter() - start > 120:
            raise SystemExit("b did not catch up within 120 s")
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    return {"records": backlog, "seconds": elapsed, "rate": backlog / elapsed, "direct": direct}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--backlog", type=int, default=20000)
    args = parser.parse_args()
    folder = scratch("navistore-bench-")
    port_a, port_b = free_port(), free_port()
    quiet = {"NAVISTORE_PEER_PUSH_BACKOFF_MAX": "0.5"}
    a = ServerProcess(
        [
            "--port",
            str(port_a),
            "--node-id",
            "a",
            "--store",
            f"sqlite:///{folder}/a.db",
            "--peer",
            f"http://127.0.0.1:{port_b}",
        ],
        folder,
        quiet,
    )
    b = ServerProcess(
        ["--port", str(port_b), "--node-id", "b", "--store", f"sqlite:///{folder}/b.db"],
        folder,
        quiet,
    )
    try:
        lag = measure_lag(a, b, args.seconds, args.rate)
        catch_up = measure_catch_up(a, b, args.backlog)
    finally:
        a.stop()
        b.stop()
    print(
        f"steady load: {lag['writes']} writes at {args.rate}/s for {args.seconds:g} s, "
        f"{lag['arrived']} arrived on the peer"
    )
    print(f"  replication lag   p50 {lag['p50_ms']:7.2f} ms   p99 {lag['p99_ms']:7.2f} ms")
    print(
        f"  baseline: the write's own round trip p50 {lag['write_p50_ms']:.2f} ms; "
        f"lag p50 / write p50 = {lag['p50_ms'] / lag['write_p50_ms']:.2f}x"
    )
    print(
        f"catch-up after an outage: {catch_up['records']} records in {catch_up['seconds']:.2f} s "
        f"= {catch_up['rate']:,.0f} records/s"
    )
    print(
        f"  baseline: writing them over HTTP with 8 clients ran at {catch_up['direct']:,.0f} "
        f"records/s; catch-up / direct = {catch_up['rate'] / catch_up['direct']:.2f}x"
    )


if __name__ == "__main__":
    main()

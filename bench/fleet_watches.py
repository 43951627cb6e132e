"""A fleet that follows its configuration: many watches on one prefix, woken by one write.

    python bench/fleet_watches.py [--fleet 5000] [--writes 5] [--cpus N]

A waiting watch holds its connection, not a thread (``navistore.parking``). Starts `navistore
serve` (sqlite, on ``--cpus``, the last CPU by default), and on it, 32 watches, then ``--fleet``
watches, wait on ``app/``; a PUT under it wakes them all, and the bench times until every one has
its answer (median of ``--writes`` writes). Prints the server's threads and RSS before and with
the watches waiting, and the fleet's time against the 32's, in the same run. About 30 s.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _proc import room_for_files, rss_mb  # noqa: E402
from _scratch import scratch  # noqa: E402

from navistore.client import Client  # noqa: E402
from navistore.testing.servers import ServerProcess  # noqa: E402


def waiting(server: ServerProcess) -> int:
    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    return int(float(re.search(r"^navistore_watchers_waiting (\S+)$", text, re.M).group(1)))


def wake_all(server: ServerProcess, client: Client, count: int) -> tuple[float, float, int]:
    """Seconds from a PUT under app/ until ``count`` watches on app/ all have their answer, and
    the server's RSS (MB) and threads while they waited."""
    since = client.status()["last_seq"]
    request = f"GET /v1/changes?since={since}&prefix=app/&wait=60 HTTP/1.1\r\nHost: b\r\n\r\n"
    watches = [socket.create_connection((server.host, server.port)) for _ in range(count)]
    try:
        for sock in watches:
            sock.sendall(request.encode())
        deadline = time.monotonic() + 60
        while waiting(server) < count:  # every watch waits
            if time.monotonic() > deadline:
                raise SystemExit(f"{waiting(server)} of {count} watches wait after 60 s")
            time.sleep(0.05)
        waiting_rss = rss_mb(server.proc.pid)
        threads = len(os.listdir(f"/proc/{server.proc.pid}/task"))
        started = time.monotonic()
        client.put("app/config", b"%d" % since)
        for sock in watches:
            sock.settimeout(30)
            answer = sock.recv(65536)
            if b"app/config" not in answer:
                raise SystemExit(f"a watch answered without the change: {answer[:200]!r}")
        return time.monotonic() - started, waiting_rss, threads
    finally:
        for sock in watches:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--fleet", type=int, default=5000)
    parser.add_argument("--writes", type=int, default=5)
    parser.add_argument("--cpus", default=str(max(os.sched_getaffinity(0))))
    args = parser.parse_args()
    room_for_files(args.fleet + 500)
    rows = []
    folder = scratch("navistore-fleet-")
    pinned = ["--cpus", args.cpus] if args.cpus else []
    most = ["--max-watchers", str(args.fleet)] if args.fleet > 10_000 else []
    server = ServerProcess(["--store", "sqlite:///bench.db", *most, *pinned], folder)
    try:
        pid = server.proc.pid
        idle_rss = rss_mb(pid)
        with Client(server.url) as client:
            for watchers in (32, args.fleet):
                rounds = [wake_all(server, client, watchers) for _ in range(args.writes)]
                times = [seconds for seconds, _, _ in rounds]
                waiting_rss = max(rss for _, rss, _ in rounds)
                threads = max(threads for _, _, threads in rounds)
                rows.append((watchers, threads, idle_rss, waiting_rss, statistics.median(times)))
    finally:
        server.stop()
    print(
        f"watches on one prefix, all woken by one PUT; median of {args.writes} writes; server on "
        f"CPUs {args.cpus or 'any'}; ratio: against 32 watches, in this run"
    )
    print(f"{'watches':>8} {'threads':>8} {'RSS idle':>9} {'waiting':>10} {'all answered':>13}")
    base = rows[0][4]
    for watchers, threads, idle_rss, waiting_rss, seconds in rows:
        print(
            f"{watchers:>8} {threads:>8} {idle_rss:>6.0f} MB {waiting_rss:>7.0f} MB "
            f"{seconds * 1000:>8.1f} ms  {seconds / base:5.1f}x"
        )


if __name__ == "__main__":
    main()

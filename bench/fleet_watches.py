"""A fleet that follows its configuration: many watches on one prefix, woken by one write.

    python bench/fleet_watches.py [--fleet 500] [--writes 5] [--cpus N]

Each waiting watch holds a server thread (``max_watchers``). Starts `navistore serve` (sqlite, on
``--cpus``, the last CPU by default) with ``--max-watchers 32`` (the default), then another with
``--max-watchers`` the fleet's size. On each, as many watches as it allows wait on ``app/``, a PUT
under it wakes them all, and the bench times until every one has its answer (median of
``--writes`` writes). Prints the server's threads and RSS before and with the watches waiting, and
the time against the default server's, in the same run. About 30 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _proc import room_for_files, rss_mb  # noqa: E402
from _scratch import scratch  # noqa: E402

from navistore.client import Client  # noqa: E402
from navistore.testing.servers import ServerProcess  # noqa: E402


def wake_all(server: ServerProcess, client: Client, count: int) -> tuple[float, float]:
    """Seconds from a PUT under app/ until ``count`` watches on app/ all have their answer, and
    the server's RSS (MB) while they waited."""
    since = client.status()["last_seq"]
    request = f"GET /v1/changes?since={since}&prefix=app/&wait=60 HTTP/1.1\r\nHost: b\r\n\r\n"
    watches = [socket.create_connection((server.host, server.port)) for _ in range(count)]
    try:
        for sock in watches:
            sock.sendall(request.encode())
        time.sleep(1.0)  # let every watch reach its wait
        waiting_rss = rss_mb(server.proc.pid)
        started = time.monotonic()
        client.put("app/config", b"%d" % since)
        for sock in watches:
            sock.settimeout(30)
            answer = sock.recv(65536)
            if b"app/config" not in answer:
                raise SystemExit(f"a watch answered without the change: {answer[:200]!r}")
        return time.monotonic() - started, waiting_rss
    finally:
        for sock in watches:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--fleet", type=int, default=500)
    parser.add_argument("--writes", type=int, default=5)
    parser.add_argument("--cpus", default=str(max(os.sched_getaffinity(0))))
    args = parser.parse_args()
    room_for_files(args.fleet + 500)
    rows = []
    for watchers in (32, args.fleet):
        folder = scratch("navistore-fleet-")
        pinned = ["--cpus", args.cpus] if args.cpus else []
        server = ServerProcess(
            ["--store", "sqlite:///bench.db", "--max-watchers", str(watchers), *pinned], folder
        )
        try:
            pid = server.proc.pid
            threads = len(os.listdir(f"/proc/{pid}/task"))
            idle_rss = rss_mb(pid)
            with Client(server.url) as client:
                rounds = [wake_all(server, client, watchers) for _ in range(args.writes)]
            times = [seconds for seconds, _ in rounds]
            waiting_rss = max(rss for _, rss in rounds)
        finally:
            server.stop()
        rows.append((watchers, threads, idle_rss, waiting_rss, statistics.median(times)))
    print(
        f"watches on one prefix, all woken by one PUT; median of {args.writes} writes; server on "
        f"CPUs {args.cpus or 'any'}; ratio: against --max-watchers 32, in this run"
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

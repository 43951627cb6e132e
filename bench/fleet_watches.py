"""A fleet that follows its configuration: many watches on one prefix, woken by one write.

    python bench/fleet_watches.py [--fleet 5000] [--writes 5] [--cpus N]

A waiting watch holds its connection, not a thread (``navistore.parking``). Starts `navistore
serve` (sqlite, on ``--cpus``, the last CPU by default), and on it, 32 watches, then ``--fleet``
watches, wait on ``app/``; a PUT under it wakes them all, and the bench times until every one has
its answer (median of ``--writes`` writes). Prints the server's threads and RSS before and with
the watches waiting, the fleet's time against the 32's, in the same run, the slowest GET another
client sent meanwhile (one after another, on a keep-alive connection), and the server's CPU per
answer (with that client's GETs: its share is small beside thousands of answers), and of it the
loop's, which writes the answers out (from /proc). About 30 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _proc import cpu_seconds, room_for_files, rss_mb  # noqa: E402
from _scratch import scratch  # noqa: E402
from watchers import waiting  # noqa: E402

from navistore.client import Client  # noqa: E402
from navistore.settings import Settings  # noqa: E402
from navistore.testing.servers import ServerProcess  # noqa: E402


class Reader:
    """GETs one after another on a keep-alive connection, each timed: what an ordinary client
    sees while the fleet is answered."""

    def __init__(self, url: str) -> None:
        self.times: list[tuple[float, float]] = []  # (started, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        with Client(url) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                client.get("reader/key")
                self.times.append((started, time.monotonic() - started))

    def slowest_between(self, start: float, end: float) -> float:
        """The longest GET that was under way at some point between ``start`` and ``end``."""
        return max((s for t, s in self.times if t <= end and t + s >= start), default=0.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def wake_all(server: ServerProcess, client: Client, count: int) -> tuple[float, ...]:
    """Seconds from a PUT under app/ until ``count`` watches on app/ all have their answer; the
    server's RSS (MB) and threads while they waited; the slowest GET of another client meanwhile
    (seconds); and the server's CPU per answer (seconds, with the reader's GETs), all of it and
    its loop's (the main thread, which writes the answers out)."""
    since = client.status()["last_seq"]
    request = f"GET /v1/changes?since={since}&prefix=app/&wait=60 HTTP/1.1\r\nHost: b\r\n\r\n"
    watches = [socket.create_connection((server.host, server.port)) for _ in range(count)]
    reader = None
    try:
        for sock in watches:
            sock.sendall(request.encode())
        deadline = time.monotonic() + 60
        while waiting(client) < count:  # every watch waits
            if time.monotonic() > deadline:
                raise SystemExit(f"{waiting(client)} of {count} watches wait after 60 s")
            time.sleep(0.05)
        waiting_rss = rss_mb(server.proc.pid)
        threads = len(os.listdir(f"/proc/{server.proc.pid}/task"))
        reader = Reader(server.url)
        time.sleep(0.2)
        pid = server.proc.pid
        cpu_before = cpu_seconds(pid), cpu_seconds(pid, pid)
        started = time.monotonic()
        client.put("app/config", b"%d" % since)
        for sock in watches:
            sock.settimeout(30)
            answer = sock.recv(65536)
            if b"app/config" not in answer:
                raise SystemExit(f"a watch answered without the change: {answer[:200]!r}")
        ended = time.monotonic()
        used = cpu_seconds(pid) - cpu_before[0]
        in_loop = cpu_seconds(pid, pid) - cpu_before[1]
        time.sleep(0.1)
        reader.stop()
        slowest = reader.slowest_between(started, ended)
        return ended - started, waiting_rss, threads, slowest, used / count, in_loop / count
    finally:
        if reader is not None:
            reader.stop()
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
    most = ["--max-watchers", str(args.fleet)] if args.fleet > Settings().max_watchers else []
    server = ServerProcess(["--store", "sqlite:///bench.db", *most, *pinned], folder)
    try:
        pid = server.proc.pid
        idle_rss = rss_mb(pid)
        with Client(server.url) as client:
            client.put("reader/key", b"x" * 100)
            for watchers in (32, args.fleet):
                rounds = [wake_all(server, client, watchers) for _ in range(args.writes)]
                times = [r[0] for r in rounds]
                waiting_rss = max(r[1] for r in rounds)
                threads = max(r[2] for r in rounds)
                slowest = max(r[3] for r in rounds)
                median = statistics.median(times)
                cpu = statistics.median(r[4] for r in rounds)
                loop = statistics.median(r[5] for r in rounds)
                rows.append((watchers, threads, idle_rss, waiting_rss, median, slowest, cpu, loop))
    finally:
        server.stop()
    print(
        f"watches on one prefix, all woken by one PUT; median of {args.writes} writes; server on "
        f"CPUs {args.cpus or 'any'}; ratio: against 32 watches, in this run"
    )
    print(
        f"{'watches':>8} {'threads':>8} {'RSS idle':>9} {'waiting':>10} {'all answered':>13}"
        f"{'':>8} {'slowest GET meanwhile':>22} {'CPU per answer (loop)':>22}"
    )
    base = rows[0][4]
    for watchers, threads, idle_rss, waiting_rss, seconds, slowest, cpu, loop in rows:
        print(
            f"{watchers:>8} {threads:>8} {idle_rss:>6.0f} MB {waiting_rss:>7.0f} MB "
            f"{seconds * 1000:>8.1f} ms  {seconds / base:5.1f}x {slowest * 1000:>18.1f} ms "
            + (  # /proc counts CPU in 10 ms ticks: too coarse for a short fan-out
                f"{cpu * 1e6:>12.0f} us ({loop * 1e6:.0f})"
                if cpu * watchers >= 0.2
                else f"{'(too short to time)':>22}"
            )
        )


if __name__ == "__main__":
    main()

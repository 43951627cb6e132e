"""Idle keep-alive connections: what they cost the requests of the others, in the same run.

    python bench/connections.py [--idle 0,1000,5000] [--watching] [--seconds 4] [--rounds 2]
                                [--cpus N]

A fleet of clients holds a keep-alive connection each, idle between their requests. Starts two
`navistore serve` (sqlite, 1,000 keys of 100 bytes, on ``--cpus``, the last CPU by default): one
on Navistore's event loop (``navistore.eventloop``, epoll), one on waitress's own (``poll()``,
which asks every connection on every turn). For each count of idle connections (each has sent a
GET and had its answer), drives both with wrk (GET on random keys, 16 connections) and prints
req/s, p99 and the server's RSS, and each server's req/s as a ratio of its own with no idle
connection, measured in the same run. Also the time a new client's first GET takes with them
all open. With ``--watching`` each idle connection holds a watch instead, waiting on a prefix
nobody writes (as a fleet that follows its configuration does). Takes about a minute.
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

import _wrk  # noqa: E402
from _proc import room_for_files, rss_mb  # noqa: E402
from _scratch import scratch  # noqa: E402
from watchers import waiting  # noqa: E402

from navistore.client import Client  # noqa: E402
from navistore.testing.servers import ServerProcess  # noqa: E402

KEYS = 1000
# navistore serve, with waitress's own loop where it would run ours (as where there is no epoll)
WAITRESS_LOOP = (
    "import sys, navistore.eventloop as e; e.EventLoop.available = staticmethod(lambda: False); "
    "from navistore.cli import main; sys.exit(main(sys.argv[1:]))"
)


class WaitressLoopServer(ServerProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-c", WAITRESS_LOOP, "serve", "--port", "0", *self.args]


def open_idle(
    server: ServerProcess, sockets: list[socket.socket], count: int, watching: bool
) -> None:
    """Open connections until ``count`` are open, each answered once and then left idle; or, with
    ``watching``, each holding a watch that waits."""
    request = b"GET /v1/keys/k/000000 HTTP/1.1\r\nHost: bench\r\n\r\n"
    if watching:
        request = b"GET /v1/changes?prefix=quiet/&since=999999&wait=600 HTTP/1.1\r\nHost: b\r\n\r\n"
        with Client(server.url) as client:
            since = client.status()["last_seq"]
        request = request.replace(b"999999", b"%d" % since)
    fresh = []
    while len(sockets) + len(fresh) < count:
        sock = socket.create_connection((server.host, server.port), timeout=120)
        sock.sendall(request)
        fresh.append(sock)
    if watching:
        deadline = time.monotonic() + 60
        with Client(server.url) as client:
            while waiting(client) < count:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{waiting(client)} of {count} watches wait after 60 s")
                time.sleep(0.05)
    else:
        for sock in fresh:
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"x" * 100):
                chunk = sock.recv(65536)
                if not chunk:
                    raise SystemExit("the server closed an idle connection while opening them")
                answer += chunk
    sockets.extend(fresh)


def rate(row: dict, name: str) -> float:
    return statistics.median(r.requests_per_second for r in row[name])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--idle", default="0,1000,5000", help="counts of idle connections")
    parser.add_argument(
        "--watching", action="store_true", help="each idle connection holds a watch that waits"
    )
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", default=str(max(os.sched_getaffinity(0))))
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.idle.split(",")})
    _wrk.ensure_wrk()
    room_for_files(2 * max(counts) + 1000)  # this process holds both servers' idle connections
    folder = scratch("navistore-connections-")
    pinned = ["--cpus", args.cpus] if args.cpus else []
    servers = {}
    for name, kind in (("epoll", ServerProcess), ("waitress", WaitressLoopServer)):
        (folder / name).mkdir()
        servers[name] = kind(["--store", "sqlite:///bench.db", *pinned], folder / name)
    idle: dict[str, list[socket.socket]] = {name: [] for name in servers}
    rows = []
    try:
        for server in servers.values():
            with Client(server.url) as client:
                for i in range(KEYS):
                    client.put(f"k/{i:06d}", b"x" * 100)
        lua = _wrk.get_random_keys("k/", KEYS)
        for count in counts:
            row = {"count": count}
            for name, server in servers.items():
                open_idle(server, idle[name], count, args.watching)
                started = time.monotonic()
                with Client(server.url, timeout=120) as newcomer:
                    newcomer.get("k/000001")
                row[name, "newcomer"] = time.monotonic() - started
                _wrk.run(server.url, lua, 16, 1)  # warm up
            for name in servers:
                row[name] = []
            for round_ in range(args.rounds):
                order = list(servers) if round_ % 2 == 0 else list(servers)[::-1]
                for name in order:
                    row[name].append(_wrk.run(servers[name].url, lua, 16, args.seconds))
                    time.sleep(0.5)
            for name, server in servers.items():
                row[name, "rss"] = rss_mb(server.proc.pid)
            rows.append(row)
    finally:
        for sockets in idle.values():
            for sock in sockets:
                sock.close()
        for server in servers.values():
            server.stop()
    print(
        f"GET on random keys of {KEYS}, wrk -t2 -c16, {args.seconds:g} s runs, medians of "
        f"{args.rounds} rounds; servers on CPUs {args.cpus or 'any'}; ratio: req/s against the "
        "same server with no idle connection, in this run; newcomer: a new client's first GET"
        + ("; each idle connection holds a watch" if args.watching else "")
    )
    print(
        f"{'idle':>6}  {'loop':<9} {'req/s':>8} {'ratio':>6} {'p99':>9} {'RSS':>8} {'newcomer':>9}"
    )
    for row in rows:
        for name in servers:
            p99 = statistics.median(r.p99_ms for r in row[name])
            newcomer = row[name, "newcomer"] * 1000
            print(
                f"{row['count']:>6}  {name:<9} {rate(row, name):>8,.0f} "
                f"{rate(row, name) / rate(rows[0], name):>5.2f}x {p99:>6.2f} ms "
                f"{row[name, 'rss']:>5.0f} MB {newcomer:>6.1f} ms"
            )


if __name__ == "__main__":
    main()

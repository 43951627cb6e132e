"""Where a PUT's CPU goes: navistore against the stub, and against itself with sqlite's write left
out, in the same run.

    python bench/put_floor.py [--seconds 4] [--rounds 3] [--cpus N]

Under load, on one CPU, req/s follows CPU per request, so a PUT's CPU is what to take apart:

- Over HTTP: bench/stub.py, `navistore serve` (sqlite), and two `navistore serve`s with parts
  left out (patched in that server's process by this bench, not in navistore):
  - "no write": the sqlite store skips its INSERT statement (``SqliteStore._insert``).
    Everything else runs as usual: the request, the checks, the stamps, the seqs, the group
    commit and its hand-overs, the read cache, the hooks. The most a storage that cost nothing
    could give.
  - "no index/hooks/metrics": the write, but every departure from DESIGN.md proposed to speed
    PUT up, at once: no index on ``seq`` (which the change feed reads), no ``committed`` step
    (the ``navistore_committed`` hook, waking watches) and no metrics middleware.
  And two stubs that also write each PUT to sqlite the simplest durable way (bench/stub.py
  --sqlite: writers one at a time, each its own autocommitted INSERT): "stub + sqlite kv" into a
  table of (key, value), "stub + sqlite row" navistore's own row into navistore's own schema
  (eight columns, the unique seq the change feed reads). The second is what navistore's data
  model costs a server that does nothing else: no checks, stamps, hooks, metrics or group commit.
  All on ``--cpus`` (the last CPU by default; wrk gets the others), driven by wrk PUT of random
  keys at 16 and 64 connections, the order turned round every round. Prints median req/s, median
  CPU per request (user + system, from /proc), and the median of the rounds' req/s ratios to the
  stub.
- In this process, one thread, no server: CPU per PUT of each WSGI app, called directly (the
  stub's, navistore's with its sqlite write, navistore's without): the Python a PUT runs besides
  waitress, and the sqlite statement's share when nothing else competes.

About 5 minutes with the defaults. Needs wrk (installed when missing, as root).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import falcon.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _wrk  # noqa: E402
import stub  # noqa: E402
from _proc import cpu_seconds  # noqa: E402
from _scratch import scratch  # noqa: E402
from load import KEYS, WORKLOADS, load_keys, start_stub  # noqa: E402

from navistore.testing.servers import ServerProcess  # noqa: E402

# `navistore serve` with parts of it left out, named by NAVISTORE_BENCH_LEAVE_OUT (good for this
# bench and nothing else: without the write, a commit is "committed" to the read cache only).
_LEAVING_OUT = """
import os, sys
from navistore_sqlite import store
leave_out = os.environ["NAVISTORE_BENCH_LEAVE_OUT"].split(",")
if "write" in leave_out:
    store.SqliteStore._insert = staticmethod(lambda conn, records, replaced: None)
if "index" in leave_out:  # the database is new: made without the unique index on seq
    unique = "seq INTEGER NOT NULL UNIQUE"
    assert unique in store._SCHEMA, "the schema changed: update bench/put_floor.py"
    store._SCHEMA = store._SCHEMA.replace(unique, "seq INTEGER NOT NULL")
if "hooks" in leave_out:
    from navistore.node import Node
    Node.committed = lambda self, record, origin: None
if "metrics" in leave_out:
    from navistore.metrics import Metrics
    Metrics.process_request = lambda self, req, resp: None
    Metrics.process_response = lambda self, req, resp, resource, req_succeeded: None
from navistore.cli import main
sys.exit(main(sys.argv[1:]))
"""


class LeavingOut(ServerProcess):
    def __init__(self, leave_out: str, args: list[str], cwd: Path) -> None:
        super().__init__(args, cwd, env={"NAVISTORE_BENCH_LEAVE_OUT": leave_out})

    def command(self) -> list[str]:
        return [sys.executable, "-c", _LEAVING_OUT, "serve", "--port", "0", *self.args]


def over_http(seconds: float, rounds: int, cpus: str) -> None:
    folder = scratch("navistore-put-floor-")
    pinned = ["--cpus", cpus] if cpus else []
    navistore = ServerProcess(["--store", "sqlite:///bench.db", *pinned], folder)
    no_write = LeavingOut("write", ["--store", "sqlite:///nowrite.db", *pinned], folder)
    departures = LeavingOut(
        "index,hooks,metrics", ["--store", "sqlite:///departures.db", *pinned], folder
    )
    stub_process, stub_url = start_stub(8, folder, cpus)
    kv_process, kv_url = start_stub(8, folder, cpus, sqlite="kv")
    row_process, row_url = start_stub(8, folder, cpus, sqlite="records")
    stubs = (stub_process, kv_process, row_process)
    servers = {
        "stub": (stub_url, stub_process.pid),
        "stub + sqlite kv": (kv_url, kv_process.pid),
        "stub + sqlite row": (row_url, row_process.pid),
        "navistore, no write": (no_write.url, no_write.proc.pid),
        "no index/hooks/metrics": (departures.url, departures.proc.pid),
        "navistore": (navistore.url, navistore.proc.pid),
    }
    lua = WORKLOADS["PUT"]
    try:
        for url, _ in servers.values():
            load_keys(url)
        print(
            f"PUT of random keys ({KEYS} keys, 100 bytes), wrk -t2, {seconds:g} s a run, medians "
            f"of {rounds} rounds, servers on CPUs {cpus or 'any'}"
        )
        print(f"{'server':<22} {'conns':>5} {'req/s':>9} {'us CPU/req':>11} {'vs stub':>8}")
        for connections in (16, 64):
            rates: dict[str, list[float]] = {name: [] for name in servers}
            costs: dict[str, list[float]] = {name: [] for name in servers}
            for round_ in range(rounds):
                turn = round_ % len(servers)
                order = list(servers)[turn:] + list(servers)[:turn]
                for name in order:
                    url, pid = servers[name]
                    _wrk.run(url, lua, connections, 1)  # warm up
                    before = cpu_seconds(pid)
                    result = _wrk.run(url, lua, connections, seconds)
                    used = cpu_seconds(pid) - before
                    rates[name].append(result.requests_per_second)
                    requests = result.requests_per_second * _wrk.duration(seconds)
                    costs[name].append(used / requests * 1e6)
                    time.sleep(0.3)
            for name in servers:
                ratio = statistics.median(
                    ours / base for ours, base in zip(rates[name], rates["stub"], strict=True)
                )
                print(
                    f"{name:<22} {connections:>5} {statistics.median(rates[name]):9,.0f} "
                    f"{statistics.median(costs[name]):11.1f} {ratio:7.2f}x"
                )
    finally:
        navistore.stop()
        no_write.stop()
        departures.stop()
        for process in stubs:
            process.terminate()
            process.wait(timeout=10)


def _environ(key: str, body: bytes) -> dict:
    """A PUT's WSGI environ, with the raw URI waitress passes on (navistore reads keys from it)."""
    path = f"/v1/keys/{key}"
    environ = falcon.testing.create_environ(
        path=path, method="PUT", body=body, headers={"Content-Type": "application/octet-stream"}
    )
    environ["REQUEST_URI"] = path
    return environ


def _cpu_per_put(app, requests: int = 20000, repeats: int = 5) -> float:
    """The least CPU per PUT of ``repeats`` runs (the least is the least disturbed)."""

    def start_response(status: str, headers: list, exc_info=None) -> None:
        assert status[:3] in ("200", "201"), status

    best = float("inf")
    for _ in range(repeats):
        environs = [
            _environ(f"k/{random.randrange(KEYS):06d}", b"x" * 100) for _ in range(requests)
        ]
        started = time.process_time()
        for environ in environs:
            b"".join(app(environ, start_response))
        best = min(best, (time.process_time() - started) / requests * 1e6)
    return best


def in_process() -> None:
    from navistore.app import create_app
    from navistore.node import Node
    from navistore.settings import load_settings
    from navistore_sqlite.store import SqliteStore

    folder = str(scratch("navistore-put-floor-"))
    store = f"sqlite:///{os.path.join(folder, 'inprocess.db')}"
    node = Node(load_settings(flags={"store": store}, environ={}))
    node.start()
    try:
        app = create_app(node)
        _cpu_per_put(app, repeats=1)  # warm up: every key in the read cache
        stub_cost = _cpu_per_put(stub.make_app())
        with_write = _cpu_per_put(app)
        insert = SqliteStore.__dict__["_insert"]  # the staticmethod itself, to put back
        SqliteStore._insert = staticmethod(lambda conn, records, replaced: None)
        try:
            without = _cpu_per_put(app)
        finally:
            SqliteStore._insert = insert
    finally:
        node.close()
    print("\nIn this process, one thread, the WSGI app called directly (least of 5 runs):")
    print(f"  stub app                   {stub_cost:6.1f} us CPU per PUT")
    print(f"  navistore, no write        {without:6.1f} us")
    print(f"  navistore                  {with_write:6.1f} us (each commit alone: one row)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cpus",
        default=str(max(os.sched_getaffinity(0))),
        help="the --cpus the servers run with (default: the last CPU; '' for none)",
    )
    args = parser.parse_args()
    _wrk.ensure_wrk()
    over_http(args.seconds, args.rounds, args.cpus)
    in_process()


if __name__ == "__main__":
    main()

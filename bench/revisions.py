"""CPU per request of `navistore serve` at a git revision against the working tree, interleaved.

    python bench/revisions.py REVISION [--workload PUT] [--connections 64] [--seconds 3]
                                       [--rounds 6] [--cpus N]

Checks REVISION out into a temporary git worktree, starts `navistore serve` (sqlite) from it and
from the working tree side by side (each imports navistore and the in-tree plugins from its own
tree, through PYTHONPATH; entry points come from the installed metadata), loads 1,000 keys into
each, and drives them in turn with the same wrk load, the order turned round every other round.
For each run it takes the server's CPU time (user + system, from /proc) over the requests wrk
counted, and prints both servers' median CPU per request and the median of the rounds' ratios
working tree / REVISION.

CPU per request is what to compare when a change is small: with both servers on one CPU
(``--cpus``, the default the last CPU) the server's CPU is the bottleneck, so req/s follows it,
but req/s varies by 10-20% from run to run and CPU per request by 2-3%. A ratio of 0.97 is a
change of 3%; below about 2% it is noise. About a minute with the defaults.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _wrk  # noqa: E402
from _proc import cpu_seconds  # noqa: E402
from _scratch import scratch  # noqa: E402
from load import WORKLOADS, load_keys  # noqa: E402

from navistore.testing.servers import ServerProcess  # noqa: E402

PLUGINS = ("navistore_sqlite", "navistore_peer_push")  # the plugins that live in the tree


def serve(tree: Path, cpus: str) -> ServerProcess:
    path = [str(tree), *(str(tree / "plugins" / name) for name in PLUGINS)]
    folder = scratch("navistore-revisions-")
    return ServerProcess(
        ["--store", "sqlite:///bench.db", *(["--cpus", cpus] if cpus else [])],
        folder,
        env={"PYTHONPATH": os.pathsep.join(path)},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("revision")
    parser.add_argument("--workload", choices=list(WORKLOADS), default="PUT")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--cpus", default=str(max(os.sched_getaffinity(0))))
    args = parser.parse_args()
    _wrk.ensure_wrk()
    lua = WORKLOADS[args.workload]
    worktree = scratch("navistore-revision-") / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.revision],
        check=True,
        capture_output=True,
    )
    servers: dict[str, ServerProcess] = {}
    try:
        servers = {"revision": serve(worktree, args.cpus), "tree": serve(ROOT, args.cpus)}
        for server in servers.values():
            load_keys(server.url)
            _wrk.run(server.url, lua, args.connections, 1)  # warm up
        costs: dict[str, list[float]] = {name: [] for name in servers}
        rates: dict[str, list[float]] = {name: [] for name in servers}
        for round_ in range(args.rounds):
            names = list(servers) if round_ % 2 == 0 else list(servers)[::-1]
            for name in names:
                server = servers[name]
                before = cpu_seconds(server.proc.pid)
                result = _wrk.run(server.url, lua, args.connections, args.seconds)
                used = cpu_seconds(server.proc.pid) - before
                requests = result.requests_per_second * _wrk.duration(args.seconds)
                costs[name].append(used / requests * 1e6)
                rates[name].append(result.requests_per_second)
                time.sleep(0.3)
    finally:
        for server in servers.values():
            server.stop()
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
            check=False,
            capture_output=True,
        )
    ratio = statistics.median(
        ours / theirs for ours, theirs in zip(costs["tree"], costs["revision"], strict=True)
    )
    print(
        f"{args.workload} at {args.connections} connections, {args.rounds} rounds of "
        f"{args.seconds:g} s, both servers on CPUs {args.cpus or 'any'}"
    )
    for name, label in (("revision", args.revision), ("tree", "working tree")):
        print(
            f"  {label:>14}: {statistics.median(costs[name]):6.1f} us CPU per request, "
            f"{statistics.median(rates[name]):8,.0f} req/s   "
            + " ".join(f"{cost:.1f}" for cost in costs[name])
        )
    print(f"  CPU per request, working tree / {args.revision}: {ratio:.3f} (median of the rounds)")


if __name__ == "__main__":
    main()

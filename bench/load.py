"""Load benchmark: navistore serve (sqlite) against the stack's own ceiling, in the same run.

    python bench/load.py [--seconds 5] [--rounds 3] [--threads 8] [--cpus N]

Starts `navistore serve` on sqlite and bench/stub.py (a stub Falcon app on waitress with the same
thread count and the same waitress tuning, from navistore.server), loads 1,000 keys of 100 bytes
into each, and drives both with the same wrk load (2 threads; wrk shares the 2 cores with the
servers, which both run with ``--cpus`` on the last CPU, as README recommends; ``--cpus ''`` lets
them run anywhere): GET, PUT, mixed 90% GET / 10% PUT, and listing pages of 100, at 16 and 64
connections.
Each cell runs ``--rounds`` rounds of one navistore run and one stub run, back to back, the order
turned round every other round (the machine drifts: the same server measured five times in a row
slowed down by 20%, so whoever always went first was favoured). Prints the medians of req/s, p50
and p99 for each, and the median of the rounds' ratios navistore / stub (each ratio from two runs
next to each other in time; the machine is noisy: one run of the stub alone varies by 10-20%).
Takes about 6 minutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _wrk  # noqa: E402
from _scratch import scratch  # noqa: E402

from navistore.client import Client  # noqa: E402
from navistore.testing.servers import ServerProcess, free_port, wait_until  # noqa: E402

KEYS = 1000

MIXED = f"""
math.randomseed(os.time())
local body = string.rep("x", 100)
request = function()
  local path = string.format("/v1/keys/k/%06d", math.random(0, {KEYS - 1}))
  if math.random(1, 10) == 1 then
    return wrk.format("PUT", path, nil, body)
  end
  return wrk.format("GET", path)
end
"""

LISTING = """
request = function()
  return wrk.format("GET", "/v1/keys?prefix=k/&limit=100")
end
"""

WORKLOADS = {
    "GET": _wrk.get_random_keys("k/", KEYS),
    "PUT": _wrk.put_random_keys("k/", KEYS),
    "mixed 90/10": MIXED,
    "list 100": LISTING,
}


def load_keys(url: str) -> None:
    with Client(url) as client:
        for i in range(KEYS):
            client.put(f"k/{i:06d}", b"x" * 100)


def start_stub(
    threads: int, folder: Path, cpus: str = "", sqlite: str = ""
) -> tuple[subprocess.Popen, str]:
    """bench/stub.py on a free port, in ``folder`` (``sqlite``: its --sqlite); and its URL."""
    port = free_port()
    stub = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("stub.py")),
            "--port",
            str(port),
            "--threads",
            str(threads),
            *(["--cpus", cpus] if cpus else []),
            *(["--sqlite", sqlite] if sqlite else []),
        ],
        cwd=folder,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            Client(url).request("GET", "/v1/keys")
            return True
        except Exception:
            return False

    wait_until(up, timeout=20)
    return stub, url


def median_result(runs: list[_wrk.Result]) -> _wrk.Result:
    return _wrk.Result(
        statistics.median(r.requests_per_second for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.errors for r in runs),
    )


def measure(
    seconds: float, threads: int, rounds: int, cpus: str = ""
) -> tuple[dict[tuple[str, str, int], _wrk.Result], dict[tuple[str, int], float]]:
    """Medians per (workload, server, connections), and the median ratio per (workload, conns)."""
    folder = scratch("navistore-bench-")
    pinned = ["--cpus", cpus] if cpus else []
    navistore = ServerProcess(
        ["--threads", str(threads), "--store", "sqlite:///bench.db", *pinned], folder
    )
    stub, stub_url = start_stub(threads, folder, cpus)
    results = {}
    ratios = {}
    try:
        for url in (navistore.url, stub_url):
            load_keys(url)
        for workload, lua in WORKLOADS.items():
            for connections in (16, 64):
                runs: dict[str, list[_wrk.Result]] = {"navistore": [], "stub": []}
                servers = [("navistore", navistore.url), ("stub", stub_url)]
                for round_ in range(rounds):
                    for name, url in servers if round_ % 2 == 0 else servers[::-1]:
                        _wrk.run(url, lua, connections, 1)  # warm up
                        runs[name].append(_wrk.run(url, lua, connections, seconds))
                        time.sleep(0.5)
                for name, found in runs.items():
                    results[(workload, name, connections)] = median_result(found)
                ratios[(workload, connections)] = statistics.median(
                    ours.requests_per_second / base.requests_per_second
                    for ours, base in zip(runs["navistore"], runs["stub"], strict=True)
                )
    finally:
        navistore.stop()
        stub.terminate()
        stub.wait(timeout=10)
    return results, ratios


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--cpus",
        default=str(max(os.sched_getaffinity(0))),
        help="the --cpus both servers run with (default: the last CPU; '' for none)",
    )
    args = parser.parse_args()
    _wrk.ensure_wrk()
    results, ratios = measure(args.seconds, args.threads, args.rounds, args.cpus)
    print(
        f"wrk -t2, {args.seconds:g} s per run, medians of {args.rounds} rounds (navistore and "
        f"stub back to back, the order turned round every other round), {KEYS} keys of 100 "
        f"bytes, threads={args.threads}, both servers on CPUs {args.cpus or 'any'}; req/s ratio "
        "= median of the rounds' navistore / stub; p99 ratio = of the medians"
    )
    print(
        f"{'workload':<12} {'conns':>5}  {'navistore':>44}  {'stub':>44}  {'req/s':>6} {'p99':>6}"
    )
    for workload in WORKLOADS:
        for connections in (16, 64):
            ours = results[(workload, "navistore", connections)]
            base = results[(workload, "stub", connections)]
            print(
                f"{workload:<12} {connections:>5}  {ours.row()}  {base.row()}  "
                f"{ratios[(workload, connections)]:5.2f}x "
                f"{ours.p99_ms / base.p99_ms:5.1f}x"
                + (f"  errors {ours.errors}/{base.errors}" if ours.errors or base.errors else "")
            )


if __name__ == "__main__":
    main()

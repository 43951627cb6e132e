"""GET and PUT throughput on PostgreSQL against sqlite, measured in the same run.

    python bench/backends.py [--seconds 5] [--connections 16]

Starts a throwaway PostgreSQL server (its defaults: fsync on, synchronous_commit on) and two
`navistore serve` processes, one on sqlite (its default: WAL, synchronous=normal) and one on
PostgreSQL, loads 1,000 keys of 100 bytes into each, and drives each with wrk: GET of random keys,
then PUT of random keys. Prints req/s, p50, p99, and postgres/sqlite ratios.
Needs wrk and PostgreSQL's server binaries (apt-get install wrk postgresql).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _wrk  # noqa: E402
from _scratch import scratch  # noqa: E402

from navistore.client import Client  # noqa: E402
from navistore.testing.servers import ServerProcess  # noqa: E402


def load_keys(url: str, count: int = 1000) -> None:
    with Client(url) as client:
        for start in range(0, count, 128):
            client.batch(
                [
                    {"op": "put", "key": f"k/{i:06d}", "value": b"x" * 100}
                    for i in range(start, min(start + 128, count))
                ]
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    _wrk.ensure_wrk()
    from navistore_postgres.throwaway import ThrowawayPostgres

    folder = scratch("navistore-bench-")
    results: dict[tuple[str, str], _wrk.Result] = {}
    with ThrowawayPostgres(fsync=True) as postgres:
        servers = {
            "sqlite": ServerProcess(["--store", f"sqlite:///{folder}/bench.db"], folder),
            "postgres": ServerProcess(["--store", postgres.url + "?schema=bench"], folder),
        }
        try:
            for name, server in servers.items():
                load_keys(server.url)
                get = _wrk.get_random_keys("k/", 1000)
                _wrk.run(server.url, get, args.connections, 1)  # warm up
                results[(name, "GET")] = _wrk.run(server.url, get, args.connections, args.seconds)
                put = _wrk.put_random_keys("k/", 1000)
                results[(name, "PUT")] = _wrk.run(server.url, put, args.connections, args.seconds)
        finally:
            for server in servers.values():
                server.stop()
    print(f"wrk -c{args.connections}, {args.seconds:g} s each, 1,000 keys of 100 bytes, same run")
    for (name, method), result in results.items():
        print(f"  {name:<9} {method:<4} {result.row()}  errors {result.errors}")
    for method in ("GET", "PUT"):
        ratio = (
            results[("postgres", method)].requests_per_second
            / results[("sqlite", method)].requests_per_second
        )
        print(f"  postgres/sqlite {method}: {ratio:.2f}x")


if __name__ == "__main__":
    main()

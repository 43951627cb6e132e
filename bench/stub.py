"""The baseline for bench/load.py: a stub Falcon app on waitress, run as `navistore serve` is.

It keeps values in a dict and answers the same shapes as Navistore (a value with an ETag, a small
JSON body for a write, a JSON page of 100 keys), with nothing behind: the ceiling of the stack.

    python bench/stub.py --port 9000 --threads 8 [--cpus 1] [--sqlite kv|records]

With ``--sqlite`` (for bench/put_floor.py), a PUT also writes its value to sqlite in the folder it
runs in, the simplest durable way: WAL, synchronous=NORMAL (as navistore's sqlite store), a
connection per thread, writers one at a time under the stub's lock, each PUT its own autocommitted
``INSERT OR REPLACE``. ``kv`` writes a table of (key, value); ``records`` writes navistore's own
row (eight columns, a unique seq) into navistore's own schema, with its indexes. GET still reads
the dict. Nothing else of navistore runs: no checks, stamps, hooks, read cache or group commit.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import threading
from pathlib import Path

import falcon

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from navistore.server import make_server, pin_cpus, poll_once  # noqa: E402
from navistore.settings import Settings, load_settings  # noqa: E402


class Keys:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.counter = 0

    def on_get(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        value = self.values.get(key)
        if value is None:
            raise falcon.HTTPNotFound()
        resp.etag = '"0000000000000000-stub"'
        resp.content_type = "application/octet-stream"
        resp.data = value

    def on_put(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        value = req.bounded_stream.read()
        with self.lock:
            self.counter += 1
            created = key not in self.values
            etag = f'"{self.counter:016x}-stub"'
            self.write(key, value, etag)
            self.values[key] = value
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.etag = etag
        resp.media = {"key": key, "etag": etag}

    def write(self, key: str, value: bytes, etag: str) -> None:
        """Make a PUT durable, under the lock (here: nothing; see SqliteKeys)."""


_OCTETS = "application/octet-stream"  # what navistore stores for bench/load.py's PUT


class SqliteKeys(Keys):
    """Keys whose PUT also commits the value to sqlite (see the module's docstring)."""

    def __init__(self, path: str, table: str) -> None:
        super().__init__()
        self.path = path
        self.table = table
        self.local = threading.local()
        if table == "kv":
            self.connection().execute(
                "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) "
                "WITHOUT ROWID"
            )
            self.insert = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"
        else:  # the database as navistore makes it: its pragmas, schema and indexes
            from navistore_sqlite.store import _COLUMNS, SqliteStore

            SqliteStore(path).close()
            marks = ", ".join("?" * len(_COLUMNS.split(",")))
            self.insert = f"INSERT OR REPLACE INTO records ({_COLUMNS}) VALUES ({marks})"

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self.local.conn = conn
        return conn

    def write(self, key: str, value: bytes, etag: str) -> None:
        if self.table == "kv":
            row: tuple = (key.encode(), value)
        else:  # key, value, content_type, stamp, deleted, expires_at, seq, size
            row = (key.encode(), value, _OCTETS, etag[1:-1], 0, None, self.counter, None)
        self.connection().execute(self.insert, row)


class Listing:
    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        names = sorted(self.keys.values)[:100]
        resp.media = {
            "keys": [
                {"key": k, "etag": '"0-stub"', "size": 100, "content_type": "x", "expires_at": None}
                for k in names
            ],
            "next": names[-1] if names else None,
        }


def make_app(sqlite: str = "") -> falcon.App:
    keys = SqliteKeys(f"stub-{sqlite}.db", sqlite) if sqlite else Keys()
    app = falcon.App()
    app.add_route("/v1/keys/{key:path}", keys)
    app.add_route("/v1/keys", Listing(keys))
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--cpus", default="", help="as navistore serve --cpus")
    parser.add_argument("--sqlite", choices=("kv", "records"), help="PUT writes to sqlite too")
    args = parser.parse_args()
    if args.cpus:
        pin_cpus(load_settings(flags={"cpus": args.cpus}, environ={}).cpus)
    app = make_app(args.sqlite or "")
    settings = Settings(port=args.port, threads=args.threads)
    server = make_server(app, settings)
    print(f"stub serving on http://127.0.0.1:{server.effective_port}", file=sys.stderr, flush=True)
    while True:  # the loop navistore serve turns (navistore.eventloop where there is epoll)
        poll_once(server, 0.2)


if __name__ == "__main__":
    main()

"""SqliteStore: the Store protocol on one sqlite3 file in WAL mode.

Concurrency: every thread reads through its own connection, so reads never queue behind a lock.
Writers in this process take a Python lock first, then ``BEGIN IMMEDIATE`` (which also keeps other
processes on the same file out): writers that queue on sqlite's own lock sleep in its retry loop
and ruin tail latency, a Python lock hands over at once. Python's sqlite3 opens no transaction for
a SELECT, so every check-then-write runs inside the explicit ``BEGIN IMMEDIATE``.

Seqs come from a counter row updated in the committing transaction, so they follow commit order
and are never reused, even after the newest record is purged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO
from urllib.parse import parse_qsl, unquote, urlsplit

from navistore.errors import (
    PreconditionFailed,
    SettingsError,
    StaleStamp,
    StoreBusy,
    StoreError,
    StoreFull,
)
from navistore.record import Expect, Record
from navistore.store import check_write, prefix_end
from navistore_sqlite.cache import MISS, ReadCache

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    content_type TEXT NOT NULL,
    stamp TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    expires_at REAL,
    seq INTEGER NOT NULL UNIQUE
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_expiry ON records (expires_at)
    WHERE expires_at IS NOT NULL AND deleted = 0;
CREATE TABLE IF NOT EXISTS counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter (id, last_seq) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "key, value, content_type, stamp, deleted, expires_at, seq"
_UPSERT = f"INSERT OR REPLACE INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_SYNCHRONOUS = ("off", "normal", "full", "extra")
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``sqlite:///relative.db`` or ``sqlite:////absolute.db?synchronous=full``."""
    parts = urlsplit(url)
    if parts.netloc:
        raise SettingsError(
            f"store: {url!r} names a host ({parts.netloc!r}); a sqlite URL has none: "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path:
        raise SettingsError(f"store: {url!r} has no file path; try sqlite:///navistore.db")
    if path == ":memory:":
        raise SettingsError("store: sqlite :memory: is not supported; name a file")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(options) - {"synchronous", "busy_timeout"}
    if unknown:
        raise SettingsError(
            f"store: unknown sqlite option(s) {', '.join(sorted(unknown))}; "
            "known: synchronous (off|normal|full|extra), busy_timeout (milliseconds)"
        )
    if options.get("synchronous", "normal").lower() not in _SYNCHRONOUS:
        raise SettingsError(f"store: synchronous must be one of {', '.join(_SYNCHRONOUS)}")
    if not options.get("busy_timeout", "5000").isdigit():
        raise SettingsError("store: busy_timeout must be a whole number of milliseconds")
    return path, options


_GROUP_MAX = 64  # writers committed in one transaction at most


class _Waiter:
    """A writer in the group-commit queue."""

    __slots__ = ("items", "done", "result", "error")

    def __init__(self, items: Sequence[tuple[Record, Expect | str]]) -> None:
        self.items = items
        self.done = False
        self.result: list[tuple[Record, Record | None]] | None = None
        self.error: BaseException | None = None


def _lock_exclusively(path: str) -> IO[bytes]:
    """Hold ``PATH.lock`` for this store's lifetime: one process (and one store) per database.

    The read cache sees every commit only if every commit goes through this store. A separate lock
    file, because closing any descriptor of the database file itself would drop sqlite's own
    POSIX locks on it.
    """
    handle = open(f"{path}.lock", "ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreError(
            f"{path} is open in another navistore process or store: a sqlite store belongs to one "
            "process at a time (for several nodes on one database, use PostgreSQL)"
        ) from None
    return handle


def _translate(exc: sqlite3.Error) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        code &= 0xFF  # extended result codes keep the primary code in the low byte
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreBusy(f"the sqlite database is busy ({exc}); retry shortly")
    if code == _SQLITE_FULL:
        return StoreFull(f"the sqlite database cannot grow: {exc}")
    return StoreError(f"sqlite failed: {exc}")


def _row(row: tuple) -> Record:
    key, value, content_type, stamp, deleted, expires_at, seq, *size = row
    return Record(
        key=key.decode("utf-8"),
        value=value,
        content_type=content_type,
        stamp=stamp,
        deleted=bool(deleted),
        expires_at=expires_at,
        seq=seq,
        size=size[0] if size else -1,
    )


def _bounds(prefix: str) -> tuple[str, list[bytes]]:
    """SQL and parameters restricting ``key`` to those starting with ``prefix``."""
    if not prefix:
        return "", []
    low = prefix.encode("utf-8")
    high = prefix_end(low)
    return " AND key >= ? AND key < ?", [low, high]


class SqliteStore:
    """The embedded default backend."""

    def __init__(self, path: str, synchronous: str = "normal", busy_timeout: int = 5000) -> None:
        self.path = path
        self._synchronous = synchronous.upper()
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._group = threading.Condition()
        self._queue: list[_Waiter] = []
        self._closed = False
        self._lock_file = _lock_exclusively(path)
        self._cache = ReadCache()
        conn = self._conn()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            with self._writing() as conn:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (name, value) VALUES ('sqlite.schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.Error as exc:
            self.close()
            raise _translate(exc) from exc

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        path, options = parse_url(url)
        return cls(
            path,
            synchronous=options.get("synchronous", "normal"),
            busy_timeout=int(options.get("busy_timeout", "5000")),
        )

    # -- connections and transactions ------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError("the store is closed")
            try:
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=self._busy_timeout / 1000,
                )
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                conn.execute(f"PRAGMA busy_timeout={self._busy_timeout}")
            except sqlite3.Error as exc:
                raise _translate(exc) from exc
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        with self._write_lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _translate(exc) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _translate(exc) from exc
                raise

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    @staticmethod
    def _next_seqs(conn: sqlite3.Connection, count: int) -> int:
        """Reserve ``count`` seqs in the current transaction; return the first."""
        (last,) = conn.execute(
            "UPDATE counter SET last_seq = last_seq + ? WHERE id = 1 RETURNING last_seq", (count,)
        ).fetchone()
        return last - count + 1

    @staticmethod
    def _stored(conn: sqlite3.Connection, key: bytes) -> Record | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM records WHERE key = ?", (key,)).fetchone()
        return _row(row) if row else None

    @staticmethod
    def _write(conn: sqlite3.Connection, record: Record, seq: int) -> Record:
        value = b"" if record.deleted else bytes(record.value or b"")
        conn.execute(
            _UPSERT,
            (
                record.key.encode("utf-8"),
                value,
                record.content_type,
                record.stamp,
                int(record.deleted),
                record.expires_at,
                seq,
            ),
        )
        return record.replace(value=value, seq=seq)

    # -- the Store protocol ----------------------------------------------------------------

    def get(self, key: str) -> Record | None:
        record = self._cache.lookup(key)
        if record is MISS:
            generation = self._cache.generation
            rows = self._read(
                f"SELECT {_COLUMNS} FROM records WHERE key = ?", (key.encode("utf-8"),)
            )
            record = _row(rows[0]) if rows else None
            self._cache.fill(key, record, generation)
        return record if record is not None and record.live() else None

    def commit(self, record: Record, expect: Expect | str) -> tuple[Record, Record | None]:
        return self.commit_many([(record, expect)])[0]

    def commit_many(
        self, items: Sequence[tuple[Record, Expect | str]]
    ) -> list[tuple[Record, Record | None]]:
        """Commit through a group commit: writers that arrive while a transaction runs queue up,
        and the first of them commits them all in the next transaction, each in a savepoint of its
        own (a failed precondition rolls back that writer only). Every writer returns only after
        the COMMIT that holds its write, so an acknowledged write means what it always meant."""
        if not items:
            return []
        waiter = _Waiter(items)
        with self._group:
            self._queue.append(waiter)
            while not waiter.done and self._queue[0] is not waiter:
                self._group.wait()
            if not waiter.done:  # first in line: lead the next group
                group = self._queue[:_GROUP_MAX]
        if not waiter.done:
            try:
                self._commit_group(group)
            except BaseException as exc:
                # The transaction failed (or, alone, its one writer's check did): nothing of it
                # committed, so every writer in it gets the error.
                for other in group:
                    if other.error is not exc:
                        other.result, other.error = None, exc
            finally:
                with self._group:
                    del self._queue[: len(group)]
                    for other in group:
                        other.done = True
                    self._group.notify_all()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def _commit_group(self, group: list[_Waiter]) -> None:
        now = time.time()
        keys = [record.key for waiter in group for record, _ in waiter.items]
        alone = len(group) == 1
        with self._cache.committing(keys) as committed, self._writing() as conn:
            for waiter in group:
                if not alone:
                    conn.execute("SAVEPOINT writer")
                try:
                    waiter.result = self._apply(conn, waiter.items, now)
                except (PreconditionFailed, StaleStamp) as exc:
                    if alone:
                        waiter.error = exc
                        raise
                    conn.execute("ROLLBACK TO writer")
                    conn.execute("RELEASE writer")
                    waiter.error = exc
                    continue
                if not alone:
                    conn.execute("RELEASE writer")
                committed.extend(stored for stored, _ in waiter.result)

    def _apply(
        self, conn: sqlite3.Connection, items: Sequence[tuple[Record, Expect | str]], now: float
    ) -> list[tuple[Record, Record | None]]:
        """One writer's records, checked and written in the open transaction."""
        results = []
        seq = self._next_seqs(conn, len(items))
        for index, (record, expect) in enumerate(items):
            stored = self._stored(conn, record.key.encode("utf-8"))
            live = check_write(record, stored, expect, now, index if len(items) > 1 else None)
            results.append((self._write(conn, record, seq + index), live))
        return results

    def merge(self, record: Record) -> Record | None:
        with self._cache.committing([record.key]) as committed, self._writing() as conn:
            row = conn.execute(
                "SELECT stamp FROM records WHERE key = ?", (record.key.encode("utf-8"),)
            ).fetchone()
            if row is not None and record.stamp <= row[0]:
                return None
            stored = self._write(conn, record, self._next_seqs(conn, 1))
            committed.append(stored)
        return stored

    def scan(
        self, prefix: str = "", after: str = "", limit: int = 100, values: bool = True
    ) -> list[Record]:
        where, params = _bounds(prefix)
        if after:
            where += " AND key > ?"
            params.append(after.encode("utf-8"))
        page = (
            "FROM records WHERE deleted = 0 AND (expires_at IS NULL OR expires_at > ?)"
            f"{where} ORDER BY key LIMIT ?"
        )
        params = [time.time(), *params, limit]
        if values:
            return [_row(row) for row in self._read(f"SELECT {_COLUMNS} {page}", params)]
        # A listing page as one row of JSON: sqlite3 drops and retakes the GIL for every row it
        # steps through, and under load each retake waits its turn (bench/load.py: listing pages
        # fell to 0.07x of the stub at 64 connections). Keys are valid UTF-8, so they cast to text.
        (packed,) = self._read(
            "SELECT json_group_array(json_array(CAST(key AS TEXT), content_type, stamp, "
            f"expires_at, seq, length(value))) FROM (SELECT key, content_type, stamp, expires_at, "
            f"seq, value {page})",
            params,
        )[0]
        return [
            Record(
                key=key,
                value=None,
                content_type=content_type,
                stamp=stamp,
                expires_at=expires_at,
                seq=seq,
                size=size,
            )
            for key, content_type, stamp, expires_at, seq, size in json.loads(packed)
        ]

    def changes(self, since: int = 0, limit: int = 100, prefix: str = "") -> list[Record]:
        where, params = _bounds(prefix)
        rows = self._read(
            f"SELECT {_COLUMNS} FROM records WHERE seq > ?{where} ORDER BY seq LIMIT ?",
            [since, *params, limit],
        )
        return [_row(row) for row in rows]

    def count(self) -> int:
        """Live keys (optional in the protocol: for the navistore_keys metric)."""
        live = "deleted = 0 AND (expires_at IS NULL OR expires_at > ?)"
        return self._read(f"SELECT COUNT(*) FROM records WHERE {live}", (time.time(),))[0][0]

    def last_seq(self) -> int:
        return self._read("SELECT last_seq FROM counter WHERE id = 1")[0][0]

    def meta_get(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def meta_set(self, name: str, value: str) -> None:
        with self._writing() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def purge(self, now: float, tombstones_upto_seq: int, tombstones_before_stamp: str) -> int:
        with self._writing() as conn:
            self._cache.clear()
            expired = conn.execute(
                "SELECT key FROM records WHERE deleted = 0 AND expires_at IS NOT NULL "
                "AND expires_at <= ? ORDER BY seq",
                (now,),
            ).fetchall()
            if expired:
                first = self._next_seqs(conn, len(expired))
                conn.executemany(
                    "UPDATE records SET deleted = 1, value = x'', expires_at = NULL, seq = ? "
                    "WHERE key = ?",
                    [(first + i, key) for i, (key,) in enumerate(expired)],
                )
            dropped = conn.execute(
                "DELETE FROM records WHERE deleted = 1 AND seq <= ? AND stamp < ?",
                (tombstones_upto_seq, tombstones_before_stamp),
            ).rowcount
        self._cache.clear()
        return len(expired) + dropped

    def close(self) -> None:
        self._closed = True
        self._cache.clear()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

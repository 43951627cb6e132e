"""SqliteStore: the Store protocol on one sqlite3 file in WAL mode.

Concurrency: every thread reads through its own connection, so reads never queue behind a lock.
Writers take a Python lock (writers that queue on sqlite's own lock sleep in its retry loop and
ruin tail latency; a Python lock hands over at once), and the process holds ``PATH.lock``, so no
other process writes the file. Under the write lock, then, what a writer reads stays true until it
writes: a check-then-write needs no ``BEGIN IMMEDIATE`` of its own, and a group commit whose rows
fit one statement is that one autocommitted statement (see ``_commit_group``).

Writes go through a group commit (see ``commit_many``). Seqs are handed out under the write lock
from a counter kept in memory (the process owns the file, see ``_lock_exclusively``), published
only once the transaction has committed, so they follow commit order. At start the counter is the
larger of the ``counter`` row and the newest record's seq; a purge that drops tombstones writes it
to the ``counter`` row, so a seq is never reused even after the newest record is purged.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from navistore import slots, turns
from navistore.errors import (
    PreconditionFailed,
    SettingsError,
    StaleStamp,
    StoreBusy,
    StoreError,
    StoreFull,
)
from navistore.record import Check, Expect, Record
from navistore.store import check_writes, prefix_end
from navistore_sqlite.cache import MISS, ReadCache

SCHEMA_VERSION = 2  # 2: values over _INLINE_MAX bytes kept apart, in blobs
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    content_type TEXT NOT NULL,
    stamp TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    expires_at REAL,
    seq INTEGER NOT NULL UNIQUE,
    size INTEGER,
    entry TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, value BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS records_expiry ON records (expires_at)
    WHERE expires_at IS NOT NULL AND deleted = 0;
CREATE INDEX IF NOT EXISTS records_tombstones ON records (seq) WHERE deleted = 1;
CREATE TABLE IF NOT EXISTS counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter (id, last_seq) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# records_tombstones serves the purge that drops old tombstones: without it, that DELETE walked
# every record by seq, 290-550 ms on 1,000,000 keys under the write lock, every purge_interval.
# Opening a database made before it builds it (62 ms for 1,000,000 records).
#
# A value over _INLINE_MAX bytes is kept apart, in ``blobs`` under the seq of the row that holds
# it; that row's value is empty and its ``size`` column holds the value's length (NULL: the value
# is inline). ``records`` is WITHOUT ROWID, clustered on the key: a row that overflows its page
# is read whole, overflow pages and all, by every seek that compares its key and by every read of
# any of its columns. With values of 100 KB, in one thread (bench/values.py), a GET from sqlite
# took 152 us instead of 25.5, sizing 1,000 changes (watches, peer-push) 36 ms instead of 1.1, a
# listing page 2.2 ms instead of 0.07. Values of up to 900 bytes keep the row under a page's
# local payload (1,002 bytes for an index b-tree on 4 KiB pages) and are cheaper inline: in
# sqlite alone, 17.5 us a write at 900 bytes against 26.8 apart.
# Rows written before schema 2 keep their values inline.
_INLINE_MAX = 900
_COLUMNS = "key, value, content_type, stamp, deleted, expires_at, seq, size"  # as written
# Read with the value wherever it is kept: FROM _WITH_BLOBS SELECT _READ.
_WITH_BLOBS = "records LEFT JOIN blobs ON records.size IS NOT NULL AND blobs.id = records.seq"
_READ = "key, coalesce(blobs.value, records.value), content_type, stamp, deleted, expires_at, seq"


def _size_sql(at: Mapping[str, str]) -> str:
    """A value's size, from the columns (or the parameters, see ``_insert_sql``) that ``at`` names:
    ``size`` for a value kept apart, else the inline value's length."""
    return f"coalesce({at['size']}, length({at['value']}))"


_STORED = {column: column for column in _COLUMNS.split(", ")}  # each column where it is stored
_SIZE = _size_sql(_STORED)
_SIZED = f"key, content_type, stamp, deleted, expires_at, seq, {_SIZE}"  # without the value
_LIVE = "deleted = 0 AND (expires_at IS NULL OR expires_at > ?)"


def _entry_sql(at: Mapping[str, str]) -> str:
    """A listing entry (navistore.store.listing_entry) in sqlite's JSON, from the columns (or the
    parameters that write them) that ``at`` names. Keys are valid UTF-8."""
    return (
        f"json_object('key', CAST({at['key']} AS TEXT), 'etag', '\"' || {at['stamp']} || '\"', "
        f"'size', {_size_sql(at)}, 'content_type', {at['content_type']}, "
        f"'expires_at', {at['expires_at']})"
    )


_ENTRY = _entry_sql(_STORED)
# A row not deleted keeps its listing entry, written by sqlite with the row (``_insert_sql``): a
# listing page is then its rows' entries joined, not 100 JSON objects built, 44 us in sqlite
# instead of 110 on 1,000,000 keys. Served by the event loop (navistore.server.quick_read), a page
# costs the loop less than the hand-over to a thread saved, where with the objects built it cost
# more. About 150 bytes a row (224 -> 377 MB for 1,000,000 keys of 100 bytes loaded through
# /v1/batch), and 1.5-2.5 us a row written (19 us in one thread). Rows written before the column
# (or by an older navistore-sqlite, which leaves it NULL) are listed through _ENTRY, as before.
_LISTED = f"coalesce(entry, {_ENTRY})"
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
_PURGE_CHUNK = 500  # rows a purge expires or drops in one transaction at most (see purge)
_SHRINK_PAGES = 256  # free pages given back to the file system in one go (see _shrink)
_INCREMENTAL = 2  # PRAGMA auto_vacuum's answer for INCREMENTAL
# The WAL is reused from its start after each checkpoint, and kept at the largest it grew to
# (a burst of large values, a long read holding checkpoints back): above this size it is cut
# back when reused. Twice the 1,000 pages (4 MiB) that set off a checkpoint, so that under a
# steady load it never is.
_WAL_KEPT = 8 * 1024 * 1024


_CHUNK = 256  # rows per multi-row statement at most (7 parameters a row)
# Rows written by one statement of exactly that many, with no transaction around it. A
# statement is prepared once per size and connection (sqlite3 keeps 128 per connection).
_ONE_STATEMENT = 32


class _Waiter:
    """A writer in the group-commit queue; it sleeps on a lock of its own until committed."""

    __slots__ = ("items", "result", "error", "_wake")

    def __init__(self, items: Sequence[tuple[Record, Expect | str]]) -> None:
        self.items = items
        self.result: list[tuple[Record, Record | None]] | None = None
        self.error: BaseException | None = None
        self._wake = threading.Lock()
        self._wake.acquire()

    def sleep(self) -> None:
        self._wake.acquire()

    def wake(self) -> None:
        self._wake.release()


@functools.cache
def _insert_sql(rows: int) -> str:
    """The statement that writes ``rows`` records (made once per size), each with its listing
    entry (none for a tombstone), built from the row's own parameters."""
    values = []
    for row in range(rows):
        at = {column: f"?{len(_STORED) * row + n}" for n, column in enumerate(_STORED, 1)}
        entry = f"CASE WHEN {at['deleted']} THEN NULL ELSE {_entry_sql(at)} END"
        values.append(f"({', '.join(at.values())}, {entry})")
    return f"INSERT OR REPLACE INTO records ({_COLUMNS}, entry) VALUES {', '.join(values)}"


def _powers_of_two(count: int) -> Iterator[tuple[int, int]]:
    """Split ``count`` rows into (start, size) chunks whose sizes are powers of two up to _CHUNK,
    so a few prepared statements (one per size) serve every group."""
    start = 0
    while start < count:
        size = min(_CHUNK, 1 << ((count - start).bit_length() - 1))
        yield start, size
        start += size


def _in_chunks(chunk: Callable[[], int]) -> int:
    """Run ``chunk`` (one transaction of up to ``_PURGE_CHUNK`` rows, answering how many) until
    it does fewer; the rows of them all."""
    total = 0
    while True:
        rows = chunk()
        total += rows
        if rows < _PURGE_CHUNK:
            return total


def _lock_exclusively(path: str) -> IO[bytes]:
    """Hold ``PATH.lock`` for this store's lifetime: one process (and one store) per database.

    The read cache sees every commit only if every commit goes through this store. A separate lock
    file, because closing any descriptor of the database file itself would drop sqlite's own
    POSIX locks on it.
    """
    try:
        handle = open(f"{path}.lock", "ab")
    except OSError as exc:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise StoreError(
                f"cannot open {path}: the directory {folder} does not exist (create it first)"
            ) from None
        raise StoreError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreError(
            f"{path} is open in another navistore process or store: a sqlite store belongs to one "
            "process at a time (for several nodes on one database, use PostgreSQL)"
        ) from None
    return handle


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database made by an older version to ``SCHEMA_VERSION`` (inside the transaction
    that created the tables); refuse one made by a newer version, which may keep values where
    this one would not look."""
    found = conn.execute("SELECT value FROM meta WHERE name = 'sqlite.schema_version'").fetchone()
    version = int(found[0]) if found else SCHEMA_VERSION
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, written by a newer navistore-sqlite; "
            f"this one reads up to version {SCHEMA_VERSION}: upgrade navistore"
        )
    columns = {name for _, name, *_ in conn.execute("PRAGMA table_info(records)")}
    if "size" not in columns:  # version 1: every value inline
        conn.execute("ALTER TABLE records ADD COLUMN size INTEGER")
    # Not a new version: an older navistore-sqlite reads and writes such a database as its own
    # (the rows it writes have no entry, and are listed as before). The rows already there are
    # left without one: writing them all would make opening a large store take seconds.
    if "entry" not in columns:
        conn.execute("ALTER TABLE records ADD COLUMN entry TEXT")
    conn.execute(
        "INSERT OR REPLACE INTO meta (name, value) VALUES ('sqlite.schema_version', ?)",
        (str(SCHEMA_VERSION),),
    )


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
    key, value, content_type, stamp, deleted, expires_at, seq = row
    return Record(key.decode("utf-8"), value, content_type, stamp, bool(deleted), expires_at, seq)


def _as_stored(record: Record, seq: int) -> Record:
    """``record`` as a row holds it: its seq, and no value if it is a tombstone."""
    key, value, content_type, stamp, deleted, expires_at, _, _ = record
    value = b"" if deleted else value if type(value) is bytes else bytes(value or b"")
    return Record._make((key, value, content_type, stamp, deleted, expires_at, seq, len(value)))


def _bounds(prefix: str, after: str = "") -> tuple[str, list[bytes | None]]:
    """SQL and parameters restricting ``key`` to those starting with ``prefix`` (and, with
    ``after``, sorting after it)."""
    where, params = "", []
    if prefix:
        low = prefix.encode("utf-8")
        where, params = " AND key >= ? AND key < ?", [low, prefix_end(low)]
    if after:
        where += " AND key > ?"
        params.append(after.encode("utf-8"))
    return where, params


class SqliteStore:
    """The embedded default backend."""

    def __init__(self, path: str, synchronous: str = "normal", busy_timeout: int = 5000) -> None:
        self.path = path
        self._synchronous = synchronous.upper()
        self._busy_timeout = busy_timeout
        #: A commit of one row writes to the WAL and waits for no flush to the disk (but with
        #: synchronous=full or extra): navistore serve may run it in its event loop
        #: (navistore.server.quick_commits). With a flush each, writers must share it in a group.
        self.quick_commits = self._synchronous in ("OFF", "NORMAL")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._work = threading.Lock()  # guards the queue, _committing, _idle and _closed
        self._queue: list[_Waiter] = []
        self._turn: list[_Waiter] = []  # writers waiting for the end of the loop's turn
        self._committer: threading.Thread | None = None
        # The committer sleeps on the bell (held) with _idle set; whoever clears _idle rings it.
        # A plain lock: a threading.Condition's enter, exit, wait and notify are Python code.
        self._bell = threading.Lock()
        self._bell.acquire()
        self._idle = False
        self._committing = 0  # groups being committed (by the committer, or a writer alone)
        self._last_seq = 0  # committed
        self._pending_seq: int | None = None  # handed out in the open transaction
        # Rows not deleted: counted on the first count(), then kept by every commit (see count).
        self._not_deleted: int | None = None
        self._pending_not_deleted = 0  # what the open transaction adds to it
        self._closed = False
        self._lock_file: IO[bytes] | None = _lock_exclusively(path)
        self._cache = ReadCache()
        self._shrinks = False  # the file can give pages back (see _shrink): set below
        try:
            # Before the first table, or it does nothing (a database made before keeps NONE):
            # pages freed by deletions can then be given back to the file system (see _shrink).
            self._conn().execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._conn().execute("PRAGMA journal_mode=WAL")
            with self._writing() as conn:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                _migrate(conn)
                (counted,) = conn.execute("SELECT last_seq FROM counter WHERE id = 1").fetchone()
                (newest,) = conn.execute("SELECT max(seq) FROM records").fetchone()
                (vacuum,) = conn.execute("PRAGMA auto_vacuum").fetchone()  # fixed from here on
            self._last_seq = max(counted, newest or 0)
            self._shrinks = vacuum == _INCREMENTAL
        except (sqlite3.Error, StoreError) as exc:
            self.close()  # and the lock file with it
            error = exc if isinstance(exc, StoreError) else _translate(exc)
            raise type(error)(f"cannot open {path}: {error.description}") from exc

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
                conn.execute(f"PRAGMA journal_size_limit={_WAL_KEPT}")
            except sqlite3.Error as exc:
                raise _translate(exc) from exc
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _writing(self, transaction: bool = True) -> Iterator[sqlite3.Connection]:
        """Hold the write lock; with ``transaction``, inside ``BEGIN IMMEDIATE`` .. ``COMMIT``
        (without, the body may open one itself; it is committed at the end all the same)."""
        conn = self._conn()
        with self._write_lock:
            try:
                if transaction:
                    conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _translate(exc) from exc
            try:
                yield conn
                if conn.in_transaction:
                    conn.execute("COMMIT")
            except BaseException as exc:
                self._pending_seq, self._pending_not_deleted = None, 0
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _translate(exc) from exc
                raise
            if self._pending_seq is not None:  # committed: publish the seqs it used
                self._last_seq, self._pending_seq = self._pending_seq, None
            if self._not_deleted is not None:
                self._not_deleted += self._pending_not_deleted
            self._pending_not_deleted = 0

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    def _next_seqs(self, count: int) -> int:
        """Hand out ``count`` seqs in the open transaction (under the write lock); the first."""
        first = (self._last_seq if self._pending_seq is None else self._pending_seq) + 1
        self._pending_seq = first + count - 1
        return first

    @staticmethod
    def _fetch(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, Record]:
        """The stored rows of ``keys``, in one statement per chunk."""
        found: dict[str, Record] = {}
        encoded = [key.encode("utf-8") for key in dict.fromkeys(keys)]
        for start, size in _powers_of_two(len(encoded)):
            marks = ", ".join("?" * size)
            sql = f"SELECT {_READ} FROM {_WITH_BLOBS} WHERE key IN ({marks})"
            for row in conn.execute(sql, encoded[start : start + size]):
                record = _row(row)
                found[record.key] = record
        return found

    def _current(self, conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, Record | None]:
        """What each of ``keys`` holds (None: nothing), under the write lock inside
        ``committing``: taken from the read cache where it has the key, else read from sqlite."""
        current: dict[str, Record | None] = self._cache.take(keys)
        missing = [key for key in keys if key not in current]
        if missing:
            found = self._fetch(conn, missing)
            for key in missing:
                current[key] = found.get(key)
        return current

    @staticmethod
    def _insert(
        conn: sqlite3.Connection, records: Sequence[Record], replaced: Sequence[Record | None]
    ) -> None:
        """Write ``records`` (in order: a later one for the same key replaces an earlier one) in
        place of ``replaced`` (the rows they overwrite, None for none), with as few multi-row
        statements as fit: each statement is one trip into sqlite, and each trip gives up the
        GIL and must win it back, which under load costs more than the write. Up to
        ``_ONE_STATEMENT`` rows with inline values are one statement of exactly that many rows,
        which needs no transaction around it (it commits by itself, atomically, and a group
        commit is one commit); more, or values kept apart, take several statements in a
        transaction, which ``_writing`` commits, so that a statement that fails leaves none of
        the others behind."""
        count = len(records)
        blobs = [(r.seq, r.value) for r in records if r.size > _INLINE_MAX]
        # Rows written before schema 2 kept every value inline: deleting by their seq is a no-op.
        gone = [(r.seq,) for r in replaced if r is not None and r.size > _INLINE_MAX]
        if (count > _ONE_STATEMENT or blobs or gone) and not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        if blobs:
            conn.executemany("INSERT INTO blobs (id, value) VALUES (?, ?)", blobs)
        if gone:  # after the inserts: a group may write a key twice, the first apart
            conn.executemany("DELETE FROM blobs WHERE id = ?", gone)
        for start, size in [(0, count)] if count <= _ONE_STATEMENT else _powers_of_two(count):
            params: list = []
            for key, value, content_type, stamp, deleted, expires, seq, length in records[
                start : start + size
            ]:
                apart = length > _INLINE_MAX  # then the value went to blobs above
                params += (
                    key.encode("utf-8"),
                    b"" if apart else value,
                    content_type,
                    stamp,
                    deleted,
                    expires,
                    seq,
                    length if apart else None,
                )
            conn.execute(_insert_sql(size), params)

    # -- the Store protocol ----------------------------------------------------------------

    def get(self, key: str) -> Record | None:
        record: Any = self._cache.lookup(key)
        if record is MISS:
            generation = self._cache.generation
            rows = self._read(
                f"SELECT {_READ} FROM {_WITH_BLOBS} WHERE key = ?", (key.encode("utf-8"),)
            )
            record = _row(rows[0]) if rows else None
            self._cache.fill(key, record, generation)
        return record if record is not None and record.live() else None

    def commit(self, record: Record, expect: Expect | str) -> tuple[Record, Record | None]:
        return self.commit_many([(record, expect)])[0]

    def commit_many(
        self, items: Sequence[tuple[Record, Expect | str]]
    ) -> list[tuple[Record, Record | None]]:
        """Commit through a group commit: a writer alone (nobody writing, and no other request in
        hand: ``navistore.slots.crowded``) commits at once, itself; otherwise it queues up, and
        the store's committer thread commits every writer waiting (up to 64) together. A writer
        that ``navistore serve``'s event loop serves waits for the end of the loop's turn
        instead, when the loop commits the turn's writers together (``navistore.turns``). Each
        writer's checks run against what the database holds after the writers before it, before
        any of its rows is written: a writer whose check fails is left out, the others commit.
        Every writer returns only after the commit that holds its write, so an acknowledged write
        means what it always meant.

        Why other requests count: with the process on one CPU nothing else runs while sqlite
        writes, so a writer almost always found nobody writing, and 13,730 of 16,800 writes in
        2 s committed alone, one commit each. Queueing whenever other requests are in hand makes
        groups of about 4: PUT at 64 connections 8,300 -> 9,300 req/s. A lone writer still
        commits without handing over to the committer (60 us in-process, against 112)."""
        if not items:
            return []
        waiter = _Waiter(items)
        in_turn = turns.may_wait()  # served by the event loop: it commits the turn's writes
        with self._work:
            if self._closed:
                raise StoreError("the store is closed")
            alone = not in_turn and not self._queue and not self._committing and not slots.crowded()
            if in_turn:
                self._turn.append(waiter)
            elif alone:
                self._committing += 1  # nobody else writing: commit here, with no hand-over
            else:
                self._queue.append(waiter)
                if self._committer is None:
                    self._committer = threading.Thread(
                        target=self._commit_loop, name="navistore-sqlite-commit", daemon=True
                    )
                    self._committer.start()
                else:
                    self._ring()
        if in_turn:
            turns.wait_for(self._commit_turn)  # together, at the end of the loop's turn
        elif alone:
            self._commit_and_finish([waiter], wake=False)
        else:
            waiter.sleep()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[return-value]  # set, as error was not

    def _commit_loop(self) -> None:
        """The committer: one thread, so that handing the next group over costs no thread a
        wake-up (each wake-up waits its turn for the GIL, which under load took longer than the
        commit itself)."""
        while True:
            with self._work:
                group = self._queue[:_GROUP_MAX]
                if group:
                    del self._queue[:_GROUP_MAX]
                    self._committing += 1
                elif self._closed:
                    return
                else:
                    self._idle = True
            if group:
                self._commit_and_finish(group, wake=True)
            else:
                self._bell.acquire()  # until a writer queues up (or the store closes)

    def _commit_turn(self) -> None:
        """Commit the writers that waited for the end of the event loop's turn
        (``navistore.turns``), in the order they came, up to ``_GROUP_MAX`` a group."""
        with self._work:
            waiting, self._turn = self._turn, []
        for start in range(0, len(waiting), _GROUP_MAX):
            with self._work:
                self._committing += 1  # a writer in a thread meanwhile queues for the committer
            self._commit_and_finish(waiting[start : start + _GROUP_MAX], wake=False)

    def _ring(self) -> None:
        """Wake the committer if it sleeps (under ``self._work``). Every writer that queues up
        rings, and the committer sleeps only after finding the queue empty, under the same lock:
        so it never sleeps with a writer waiting, and nobody else need ring."""
        if self._idle:
            self._idle = False
            self._bell.release()

    def _commit_and_finish(self, group: list[_Waiter], wake: bool) -> None:
        try:
            if self._closed:
                raise StoreError("the store is closed")
            self._commit_group(group)
        except BaseException as exc:
            # The commit failed: nothing of it committed, every writer gets the error.
            for waiter in group:
                if waiter.error is None:
                    waiter.result, waiter.error = None, exc
        finally:
            with self._work:
                self._committing -= 1
            if wake:
                for waiter in group:
                    waiter.wake()

    def _commit_group(self, group: list[_Waiter]) -> None:
        now = time.time()
        keys = [record.key for waiter in group for record, _ in waiter.items]
        # No BEGIN: under the write lock nothing changes between the reads and the insert, and
        # the insert is one autocommitted statement (or a transaction of several, see _insert).
        # With every key cached, the commit is a single trip into sqlite.
        with self._cache.committing() as committed, self._writing(transaction=False) as conn:
            current = self._current(conn, keys)
            rows: list[Record] = []
            replaced: list[Record | None] = []
            for waiter in group:
                try:
                    waiter.result = check_writes(waiter.items, current, now)
                except (PreconditionFailed, StaleStamp) as exc:
                    waiter.error = exc
                    continue
                # A Check is a condition only: it writes nothing (see navistore.Store).
                writes = [n for n, (r, _) in enumerate(waiter.result) if not isinstance(r, Check)]
                first = self._next_seqs(len(writes))
                for offset, n in enumerate(writes):
                    record, live = waiter.result[n]
                    stored = _as_stored(record, first + offset)
                    waiter.result[n] = (stored, live)
                    self._note_replaced(current[record.key], stored)
                    replaced.append(current[record.key])
                    current[record.key] = stored
                    rows.append(stored)
            if rows:
                self._insert(conn, rows, replaced)
            committed.extend(rows)

    def merge(self, record: Record) -> Record | None:
        with self._cache.committing() as committed, self._writing(transaction=False) as conn:
            before = self._current(conn, [record.key])[record.key]
            if before is not None and record.stamp <= before.stamp:
                return None
            stored = self._put_row(conn, record, before)
            self._note_replaced(before, stored)
            committed.append(stored)
        return stored

    def _note_replaced(self, before: Record | None, after: Record) -> None:
        """Count a row written over ``before`` in the open transaction (see ``count``)."""
        self._pending_not_deleted += (not after.deleted) - (
            before is not None and not before.deleted
        )

    def _put_row(self, conn: sqlite3.Connection, record: Record, before: Record | None) -> Record:
        """Write one record with the next seq in place of ``before``; return it as stored."""
        stored = _as_stored(record, self._next_seqs(1))
        self._insert(conn, [stored], [before])
        return stored

    def scan(
        self, prefix: str = "", after: str = "", limit: int = 100, values: bool = True
    ) -> list[Record]:
        where, bounds = _bounds(prefix, after)
        page = f"WHERE {_LIVE}{where} ORDER BY key LIMIT ?"
        params = [time.time(), *bounds, limit]
        if values:
            return [
                _row(row) for row in self._read(f"SELECT {_READ} FROM {_WITH_BLOBS} {page}", params)
            ]
        # A listing page as one row of JSON: sqlite3 drops and retakes the GIL for every row it
        # steps through, and under load each retake waits its turn (bench/load.py: listing pages
        # fell to 0.07x of the stub at 64 connections). Keys are valid UTF-8, so they cast to text.
        (packed,) = self._read(
            "SELECT json_group_array(json_array(CAST(key AS TEXT), content_type, stamp, "
            f"expires_at, seq, {_SIZE})) FROM (SELECT key, content_type, stamp, expires_at, "
            f"seq, value, size FROM records {page})",
            params,
        )[0]
        return [
            Record(key, None, content_type, stamp, False, expires_at, seq, size)
            for key, content_type, stamp, expires_at, seq, size in json.loads(packed)
        ]

    def scan_listing(
        self, prefix: str = "", after: str = "", limit: int = 100
    ) -> tuple[str, str | None]:
        """A listing page with its JSON written by sqlite (see ``navistore.store``): the rows'
        stored entries joined (see ``_LISTED``), 44 us for a page of 100 on a store of 1,000,000
        keys, where building each entry's JSON took 110, and the query, 100 records, 100 dicts
        and the JSON encoder 200. Whether more keys follow is one more index probe."""
        where, params = _bounds(prefix)
        page_where, page_params = _bounds(prefix, after)
        now = time.time()
        (page, last, more), *_ = self._read(
            f"SELECT coalesce('[' || page || ']', '[]'), last, EXISTS (SELECT 1 FROM records "
            f"WHERE {_LIVE}{where} AND key > last) FROM (SELECT group_concat({_LISTED}, ',') "
            f"AS page, max(key) AS last FROM (SELECT key, value, size, content_type, stamp, "
            f"expires_at, entry FROM records WHERE {_LIVE}{page_where} ORDER BY key LIMIT ?))",
            [now, *params, now, *page_params, limit],
        )
        return page, last.decode("utf-8") if more else None

    def changes(
        self, since: int = 0, limit: int = 100, prefix: str = "", values: bool = True
    ) -> list[Record]:
        where, params = _bounds(prefix)
        columns = f"{_READ} FROM {_WITH_BLOBS}" if values else f"{_SIZED} FROM records"
        rows = self._read(
            f"SELECT {columns} WHERE seq > ?{where} ORDER BY seq LIMIT ?",
            [since, *params, limit],
        )
        if values:
            return [_row(row) for row in rows]
        return [
            Record(
                key.decode("utf-8"), None, content_type, stamp, bool(deleted), expires, seq, size
            )
            for key, content_type, stamp, deleted, expires, seq, size in rows
        ]

    def count(self) -> int:
        """Live keys (optional in the protocol: for the navistore_keys metric, on every scrape).

        The rows not deleted are counted once, on the first call (under the write lock, so that
        no commit slips past), and every commit since keeps the number; the expired among them,
        not purged yet, are counted through the expiry index. (A commit that lands between the
        two may skew that one answer by its own rows.) Counting the live rows each time scanned
        the table: 75-180 ms on 1,000,000 keys, and scraping /metrics 4 times a second cost GET
        18% of its throughput and tripled its p99."""
        if self._not_deleted is None:
            with self._writing(transaction=False) as conn:
                (self._not_deleted,) = conn.execute(
                    "SELECT COUNT(*) FROM records WHERE deleted = 0"
                ).fetchone()
        not_deleted = self._not_deleted
        (expired,) = self._read(
            "SELECT COUNT(*) FROM records WHERE expires_at IS NOT NULL AND deleted = 0 "
            "AND expires_at <= ?",
            (time.time(),),
        )[0]
        return not_deleted - expired

    def next_expiry(self) -> float | None:
        """The soonest expiry of a record not deleted yet (optional in the protocol: so that the
        Node purges expiries it did not see committed as they fall due). The expiry index's
        first entry."""
        return self._read(
            "SELECT min(expires_at) FROM records WHERE expires_at IS NOT NULL AND deleted = 0"
        )[0][0]

    def last_seq(self) -> int:
        return self._last_seq

    def disk_bytes(self) -> int:
        """The database file with its WAL and WAL index (optional in the protocol: for the
        navistore_store_bytes metric): what ``du`` counts, read from the file system."""
        size = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                size += os.path.getsize(self.path + suffix)
        return size

    def meta_get(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def meta_set(self, name: str, value: str) -> None:
        with self._writing() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def purge(self, now: float, tombstones_upto_seq: int, tombstones_before_stamp: str) -> int:
        """Expired records become tombstones, old tombstones go. The read cache loses the keys
        that expired (Node purges expiries as they fall due, up to once a second), and all of its
        entries only when tombstones were dropped (a cached tombstone would outlive its row).

        Up to ``_PURGE_CHUNK`` rows a transaction, each under the write lock on its own, so that
        writers go on in between: 100,000 keys that expired together held the lock for 830 ms,
        and ``navistore serve``'s event loop, which commits small writes itself
        (``quick_commits``), would have stopped every connection that long."""
        expired = _in_chunks(lambda: self._expire_some(now))
        dropped = _in_chunks(lambda: self._drop_some(tombstones_upto_seq, tombstones_before_stamp))
        self._shrink()
        return expired + dropped

    def _expire_some(self, now: float) -> int:
        """Turn up to ``_PURGE_CHUNK`` of the records expired by ``now`` into tombstones, in one
        transaction, in the order they fell due (the order of the expiry index: no sort)."""
        with self._cache.committing(), self._writing() as conn:
            expired = conn.execute(
                "SELECT key, seq, size FROM records WHERE deleted = 0 AND expires_at IS NOT NULL "
                "AND expires_at <= ? ORDER BY expires_at LIMIT ?",
                (now, _PURGE_CHUNK),
            ).fetchall()
            if not expired:
                return 0
            self._cache.take([key.decode("utf-8") for key, _, _ in expired])
            self._pending_not_deleted -= len(expired)
            first = self._next_seqs(len(expired))
            conn.executemany(
                "DELETE FROM blobs WHERE id = ?",
                [(seq,) for _, seq, size in expired if size is not None],
            )
            conn.executemany(
                "UPDATE records SET deleted = 1, value = x'', size = NULL, expires_at = NULL, "
                "entry = NULL, seq = ? WHERE key = ?",
                [(first + i, key) for i, (key, _, _) in enumerate(expired)],
            )
        return len(expired)

    def _drop_some(self, upto_seq: int, before_stamp: str) -> int:
        """Drop up to ``_PURGE_CHUNK`` of the tombstones up to ``upto_seq`` stamped before
        ``before_stamp``, in one transaction (through the tombstones index)."""
        with self._cache.committing(), self._writing() as conn:
            dropped = conn.execute(
                "DELETE FROM records WHERE key IN (SELECT key FROM records WHERE deleted = 1 "
                "AND seq <= ? AND stamp < ? LIMIT ?)",
                (upto_seq, before_stamp, _PURGE_CHUNK),
            ).rowcount
            if dropped:
                self._cache.clear()
                # The newest seq may have gone with a tombstone: keep it, so it is never reused.
                conn.execute("UPDATE counter SET last_seq = ? WHERE id = 1", (self._last_seq,))
        return dropped

    def _shrink(self) -> None:
        """Give free pages back to the file system once they are over a quarter of the file:
        without it, a database keeps the size of the most it ever held (etcd asks for a
        ``defrag``). ``_SHRINK_PAGES`` at a time, each under the write lock on its own, so writers
        go on in between: 256 pages took 1.3 ms (4 KiB pages, 200,000 keys, 3 of 4 deleted).
        In a database made before auto-vacuum was on, free pages stay free for reuse: sqlite can
        give them back only after a VACUUM (README says how)."""
        if not self._shrinks:
            return
        conn = self._conn()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        if free <= _SHRINK_PAGES or free * 4 <= pages:
            return
        for _ in range(free // _SHRINK_PAGES + 1):  # what writers free meanwhile waits its turn
            with self._writing(transaction=False) as conn:
                # executescript steps the pragma to its end; execute frees one page a step
                conn.executescript(f"PRAGMA incremental_vacuum({_SHRINK_PAGES});")
        # The file itself is cut at the next checkpoint, which small writes would put off for
        # long (1,000 pages of WAL): run one now. PASSIVE: it waits for nobody.
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        with self._work:
            self._closed = True
            self._ring()
        if self._committer is not None and self._committer is not threading.current_thread():
            self._committer.join(timeout=10)
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

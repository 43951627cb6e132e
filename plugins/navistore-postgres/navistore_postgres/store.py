"""PostgresStore: the Store protocol on PostgreSQL, through psycopg 3 and a connection pool.

Every write transaction first locks the one counter row (``SELECT ... FOR UPDATE``). That
serialises writers across every node on the database, and it is what keeps the change feed
gap-free: a seq is taken inside the committing transaction, so no record with a lower seq can
commit after one with a higher seq is visible. (A PostgreSQL sequence hands numbers out in call
order, not commit order: a reader of ``changes(since)`` could skip a record that commits late.)

Writers on one node commit in groups: those that arrive while a write transaction is open queue
up, and the next transaction commits them all (up to 64), each checked against what the ones
before it wrote; a writer whose check fails is left out, and the others commit. One commit, one
flush of PostgreSQL's log and one hold of the counter lock serve the whole group.

Each commit sends ``NOTIFY`` on the store's channel, naming the store instance that made it and
the keys it wrote; a listener thread on every other node wakes the watches on those keys, and
replication, so a watch on one node wakes on a write made through another (and only on a write
it asked about).

Keys are stored as ``bytea`` (bytewise order, as UTF-8), stamps with the "C" collation (bytewise
too), values as ``bytea``. The schema is created on first use and versioned in the meta table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from navistore import slots
from navistore.errors import (
    PreconditionFailed,
    SettingsError,
    StaleStamp,
    StoreBusy,
    StoreError,
    StoreFull,
)
from navistore.record import Check, Expect, Record
from navistore.store import check_writes, listing_json, prefix_end, scan_page

log = logging.getLogger("navistore.postgres")

SCHEMA_VERSION = 1
NODE_LEASE_SECONDS = 30.0
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
_OPTIONS = {"schema", "pool_min", "pool_max", "pool_timeout"}
_COLUMNS = "key, value, content_type, stamp, deleted, expires_at, seq"
_LISTING = "key, NULL, content_type, stamp, deleted, expires_at, seq, length(value)"
_LIVE = "NOT deleted AND (expires_at IS NULL OR expires_at > %s)"
_NUL = "position('\\x00'::bytea IN key)"  # where a key's first NUL byte is (0: it has none)

# Version 1. A later version adds a migration from the one before to _MIGRATIONS.
_CREATE = """
CREATE TABLE IF NOT EXISTS {s}.records (
    key bytea PRIMARY KEY,
    value bytea NOT NULL,
    content_type text NOT NULL,
    stamp text COLLATE "C" NOT NULL,
    deleted boolean NOT NULL,
    expires_at double precision,
    seq bigint NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS records_expiry ON {s}.records (expires_at)
    WHERE expires_at IS NOT NULL AND NOT deleted;
CREATE TABLE IF NOT EXISTS {s}.counter (
    id integer PRIMARY KEY CHECK (id = 1),
    last_seq bigint NOT NULL
);
INSERT INTO {s}.counter (id, last_seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.meta (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.nodes (
    node_id text PRIMARY KEY,
    instance text NOT NULL,
    host text NOT NULL,
    started double precision NOT NULL,
    heartbeat double precision NOT NULL
);
"""
_MIGRATIONS: dict[int, str] = {}
#: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more. A commit whose keys do not fit
#: notifies without them, and wakes every watch.
NOTIFY_PAYLOAD_BYTES = 7900


_GROUP_MAX = 64  # writers committed in one transaction at most


class _Writer:
    """A writer in line: a leader commits it, or hands it the lead."""

    __slots__ = ("items", "result", "error", "leads", "woken")

    def __init__(self, items: Sequence[tuple[Record, Expect | str]]) -> None:
        self.items = items
        self.result: list[tuple[Record, Record | None]] | None = None
        self.error: BaseException | None = None
        self.leads = False
        self.woken = threading.Event()


class _Writes:
    """What a write transaction wrote: its newest seq, and the keys, for the notification."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.keys: list[str] = []

    def next_seq(self, key: str) -> int:
        self.seq += 1
        self.keys.append(key)
        return self.seq


def notice(instance: str, seq: int, keys: Sequence[str]) -> str:
    """The NOTIFY payload of a commit: who made it, its newest seq and its keys (None when they
    would not fit, which means "any key")."""
    payload = json.dumps({"from": instance, "seq": seq, "keys": list(keys)}, ensure_ascii=False)
    if len(payload.encode("utf-8")) > NOTIFY_PAYLOAD_BYTES:
        payload = json.dumps({"from": instance, "seq": seq, "keys": None})
    return payload


def read_notice(payload: str) -> tuple[str | None, list[str] | None]:
    """(the instance that committed, the keys written) from a NOTIFY payload; (None, None) for one
    this version cannot read (an older plugin's bare seq, say): someone wrote something."""
    try:
        data = json.loads(payload)
        sender, keys = data["from"], data["keys"]
    except (ValueError, TypeError, KeyError):
        return None, None
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        keys = None
    return (sender if isinstance(sender, str) else None), keys


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split our options (schema, pool sizes) from the libpq connection URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OPTIONS}
    theirs = [(k, v) for k, v in query if k not in _OPTIONS]
    schema = ours.setdefault("schema", "navistore")
    if not _SCHEMA_NAME.match(schema):
        raise SettingsError(
            f"store: schema {schema!r} must be a lowercase SQL name: letters, digits and _"
        )
    for name in ("pool_min", "pool_max", "pool_timeout"):
        if name in ours and not ours[name].isdigit():
            raise SettingsError(f"store: {name} must be a whole number")
    conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(theirs)))
    return conninfo, ours


def _translate(exc: Exception) -> StoreError:
    if isinstance(exc, pg_errors.DiskFull):
        return StoreFull(f"PostgreSQL cannot grow: {exc}")
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return StoreBusy("every PostgreSQL connection is busy; retry shortly")
    if isinstance(
        exc,
        pg_errors.SerializationFailure
        | pg_errors.DeadlockDetected
        | pg_errors.LockNotAvailable
        | pg_errors.QueryCanceled,
    ):
        return StoreBusy(f"PostgreSQL is busy ({type(exc).__name__}); retry shortly")
    if isinstance(exc, psycopg.OperationalError):
        return StoreBusy(f"PostgreSQL does not answer: {exc}")
    return StoreError(f"PostgreSQL failed: {exc}")


def _record(row: Sequence[Any]) -> Record:
    key, value, content_type, stamp, deleted, expires_at, seq, *size = row
    return Record(
        key=bytes(key).decode("utf-8"),
        value=bytes(value) if value is not None else None,
        content_type=content_type,
        stamp=stamp,
        deleted=deleted,
        expires_at=expires_at,
        seq=seq,
        size=size[0] if size else -1,
    )


def _bounds(prefix: str, after: str = "") -> tuple[str, list[bytes | None]]:
    """SQL and parameters restricting ``key`` to those starting with ``prefix`` (and, with
    ``after``, sorting after it)."""
    where, params = "", []
    if prefix:
        low = prefix.encode("utf-8")
        where, params = " AND key >= %s AND key < %s", [low, prefix_end(low)]
    if after:
        where += " AND key > %s"
        params.append(after.encode("utf-8"))
    return where, params


class PostgresStore:
    """The backend for when one machine is not enough."""

    def __init__(
        self,
        conninfo: str,
        schema: str = "navistore",
        pool_min: int = 1,
        pool_max: int = 16,
        pool_timeout: float = 10.0,
    ) -> None:
        self.schema = schema
        self._conninfo = conninfo
        self._channel = f"navistore_{schema}"
        self._listeners: list[Callable[[Sequence[str] | None], None]] = []
        self._closed = threading.Event()
        self._instance = hashlib.sha1(f"{id(self)}{time.time()}".encode()).hexdigest()[:16]
        self._line: list[_Writer] = []  # writers waiting for a transaction (see commit_many)
        self._line_lock = threading.Lock()
        self._leading = False  # a writer is committing the line
        self._node_id: str | None = None
        try:
            self._pool = psycopg_pool.ConnectionPool(
                conninfo,
                min_size=pool_min,
                max_size=max(pool_min, pool_max),
                timeout=pool_timeout,
                kwargs={"autocommit": True},
                open=True,
                name=f"navistore-{schema}",
            )
            self._pool.wait(timeout=pool_timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            with contextlib.suppress(Exception):
                self._pool.close()
            reason = str(exc)
            if isinstance(exc, psycopg_pool.PoolTimeout):
                # The pool says only that it timed out (its workers log why): ask once more, alone.
                try:
                    psycopg.connect(conninfo, connect_timeout=max(2, int(pool_timeout))).close()
                except psycopg.Error as error:
                    lines = [line.strip() for line in str(error).strip().splitlines()]
                    reason = f"{'; '.join(lines)} (tried for {pool_timeout:g} s)"
            raise StoreError(f"cannot connect to PostgreSQL: {reason}") from None
        try:
            self._create_schema()
        except Exception:
            self._pool.close()
            raise
        self._listener = threading.Thread(
            target=self._listen, name="navistore-pg-listen", daemon=True
        )
        self._listener.start()
        self._heartbeat: threading.Thread | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        conninfo, options = parse_url(url)
        return cls(
            conninfo,
            schema=options["schema"],
            pool_min=int(options.get("pool_min", 1)),
            pool_max=int(options.get("pool_max", 16)),
            pool_timeout=float(options.get("pool_timeout", 10)),
        )

    def _sql(self, text: str) -> str:
        return text.replace("{s}", self.schema)

    # -- schema -----------------------------------------------------------------------------

    def _create_schema(self) -> None:
        """Create or migrate the schema, one node at a time (an advisory lock per schema)."""
        lock = int.from_bytes(hashlib.sha1(self.schema.encode()).digest()[:8], "big", signed=True)
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            cur.execute(self._sql("CREATE SCHEMA IF NOT EXISTS {s}"))
            for statement in _CREATE.split(";"):
                if statement.strip():
                    cur.execute(self._sql(statement))
            cur.execute(
                self._sql("SELECT value FROM {s}.meta WHERE name = 'postgres.schema_version'")
            )
            row = cur.fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the schema {self.schema} is at version {version}, newer than this "
                    f"navistore-postgres knows ({SCHEMA_VERSION}): upgrade the plugin"
                )
            for target in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                cur.execute(self._sql(_MIGRATIONS[target]))
            cur.execute(
                self._sql(
                    "INSERT INTO {s}.meta (name, value) VALUES ('postgres.schema_version', %s) "
                    "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
                ),
                (str(SCHEMA_VERSION),),
            )

    # -- connections and transactions ------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor]:
        if self._closed.is_set():
            raise StoreError("the store is closed")
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield cur
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc) from exc

    @contextlib.contextmanager
    def _writing(self) -> Iterator[tuple[psycopg.Cursor, _Writes]]:
        """A write transaction holding the counter lock; yields (cursor, writes): take each
        record's seq from ``writes.next_seq(key)``."""
        with self._transaction() as cur:
            cur.execute(self._sql("SELECT last_seq FROM {s}.counter WHERE id = 1 FOR UPDATE"))
            counter = cur.fetchone()
            if counter is None:  # made with the schema, never deleted
                raise StoreError(f"the table {self.schema}.counter has lost its row")
            writes = _Writes(counter[0])
            yield cur, writes
            if writes.keys:
                cur.execute(
                    self._sql("UPDATE {s}.counter SET last_seq = %s WHERE id = 1"), (writes.seq,)
                )
                payload = notice(self._instance, writes.seq, writes.keys)
                cur.execute("SELECT pg_notify(%s, %s)", (self._channel, payload))

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        if self._closed.is_set():
            raise StoreError("the store is closed")
        try:
            # A round trip to the server: let another request run meanwhile (navistore.slots).
            with slots.waiting(), self._pool.connection() as conn:
                return conn.execute(self._sql(sql), params).fetchall()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _translate(exc) from exc

    def _stored(self, cur: psycopg.Cursor, keys: Sequence[str]) -> dict[str, Record | None]:
        """What each of ``keys`` holds (None: nothing), in one round trip."""
        found: dict[str, Record | None] = dict.fromkeys(keys)
        cur.execute(
            self._sql(f"SELECT {_COLUMNS} FROM {{s}}.records WHERE key = ANY(%s)"),
            ([key.encode("utf-8") for key in found],),
        )
        for row in cur.fetchall():
            record = _record(row)
            found[record.key] = record
        return found

    def _write(self, cur: psycopg.Cursor, records: Sequence[Record]) -> None:
        """Write ``records`` (as stored: with their seqs), in order, in one round trip."""
        cur.executemany(
            self._sql(
                f"INSERT INTO {{s}}.records ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, "
                "content_type = EXCLUDED.content_type, stamp = EXCLUDED.stamp, "
                "deleted = EXCLUDED.deleted, expires_at = EXCLUDED.expires_at, seq = EXCLUDED.seq"
            ),
            [
                (
                    r.key.encode("utf-8"),
                    r.value,
                    r.content_type,
                    r.stamp,
                    r.deleted,
                    r.expires_at,
                    r.seq,
                )
                for r in records
            ],
        )

    @staticmethod
    def _as_stored(record: Record, seq: int) -> Record:
        """``record`` as its row holds it: its seq, and no value if it is a tombstone."""
        value = b"" if record.deleted else bytes(record.value or b"")
        return record.replace(value=value, seq=seq)

    # -- the Store protocol ----------------------------------------------------------------

    def get(self, key: str) -> Record | None:
        rows = self._read(
            f"SELECT {_COLUMNS} FROM {{s}}.records WHERE key = %s", (key.encode("utf-8"),)
        )
        record = _record(rows[0]) if rows else None
        return record if record is not None and record.live() else None

    def commit(self, record: Record, expect: Expect | str) -> tuple[Record, Record | None]:
        return self.commit_many([(record, expect)])[0]

    def commit_many(
        self, items: Sequence[tuple[Record, Expect | str]]
    ) -> list[tuple[Record, Record | None]]:
        """Commit through a group commit (see the module's docstring): the writer first in line
        leads, commits everyone in line (itself among them) in one transaction, and hands the
        lead to the first writer that queued up meanwhile. Each returns only after the commit
        that holds its write."""
        if not items:
            return []
        writer = _Writer(items)
        with self._line_lock:
            self._line.append(writer)
            writer.leads = not self._leading
            self._leading = True
        if not writer.leads:
            writer.woken.wait()  # committed, or handed the lead
        if writer.leads:
            self._lead()
        if writer.error is not None:
            raise writer.error
        return writer.result  # type: ignore[return-value]  # set, as error was not

    def _lead(self) -> None:
        """Commit the writers in line (this one is first), then hand the lead on."""
        with self._line_lock:
            group = self._line[:_GROUP_MAX]
            del self._line[:_GROUP_MAX]
        try:
            self._commit_group(group)
        except BaseException as exc:  # nothing of it committed: every writer gets the error
            for writer in group:
                if writer.error is None:
                    writer.result, writer.error = None, exc
        finally:
            with self._line_lock:
                successor = self._line[0] if self._line else None
                if successor is None:
                    self._leading = False
                else:
                    successor.leads = True
            for writer in group:
                writer.woken.set()
            if successor is not None:
                successor.woken.set()

    def _commit_group(self, group: list[_Writer]) -> None:
        now = time.time()
        with self._writing() as (cur, writes):
            current = self._stored(cur, [record.key for w in group for record, _ in w.items])
            rows: list[Record] = []
            for writer in group:
                try:
                    checked = check_writes(writer.items, current, now)
                except (PreconditionFailed, StaleStamp) as exc:
                    writer.error = exc
                    continue
                writer.result = []
                for record, live in checked:
                    if isinstance(record, Check):  # a condition only: nothing to write
                        writer.result.append((record, live))
                        continue
                    stored = self._as_stored(record, writes.next_seq(record.key))
                    current[record.key] = stored
                    rows.append(stored)
                    writer.result.append((stored, live))
            if rows:
                self._write(cur, rows)

    def merge(self, record: Record) -> Record | None:
        with self._writing() as (cur, writes):
            stored = self._stored(cur, [record.key])[record.key]
            if stored is not None and record.stamp <= stored.stamp:
                return None
            stored = self._as_stored(record, writes.next_seq(record.key))
            self._write(cur, [stored])
            return stored

    def scan(
        self, prefix: str = "", after: str = "", limit: int = 100, values: bool = True
    ) -> list[Record]:
        where, params = _bounds(prefix, after)
        rows = self._read(
            f"SELECT {_COLUMNS if values else _LISTING} FROM {{s}}.records "
            f"WHERE {_LIVE}{where} ORDER BY key LIMIT %s",
            [time.time(), *params, limit],
        )
        return [_record(row) for row in rows]

    def scan_listing(
        self, prefix: str = "", after: str = "", limit: int = 100
    ) -> tuple[str, str | None]:
        """A listing page with its JSON written by PostgreSQL (see ``navistore.store``). A key
        holding a NUL byte cannot become PostgreSQL text: a page with one is built in Python."""
        where, params = _bounds(prefix)
        page_where, page_params = _bounds(prefix, after)
        now = time.time()
        text_key = f"CASE WHEN {_NUL} = 0 THEN convert_from(key, 'UTF8') END"
        ((page, last, more, nul),) = self._read(
            f"SELECT page, last, EXISTS (SELECT 1 FROM {{s}}.records WHERE {_LIVE}{where} "
            "AND key > last), nul FROM (SELECT coalesce(json_agg(json_build_object("
            f"'key', {text_key}, 'etag', '\"' || stamp || '\"', 'size', length(value), "
            "'content_type', content_type, 'expires_at', expires_at) ORDER BY key), '[]')::text "
            "AS page, (array_agg(key ORDER BY key DESC))[1] AS last, "
            f"coalesce(bool_or({_NUL} > 0), false) AS nul "
            f"FROM (SELECT key, value, content_type, stamp, expires_at FROM {{s}}.records "
            f"WHERE {_LIVE}{page_where} ORDER BY key LIMIT %s) AS listed) AS packed",
            [now, *params, now, *page_params, limit],
        )
        if nul:
            records, next_key = scan_page(self, prefix, after, limit)
            return listing_json(records), next_key
        return page, bytes(last).decode("utf-8") if more else None

    def changes(
        self, since: int = 0, limit: int = 100, prefix: str = "", values: bool = True
    ) -> list[Record]:
        where, params = _bounds(prefix)
        rows = self._read(
            f"SELECT {_COLUMNS if values else _LISTING} FROM {{s}}.records "
            f"WHERE seq > %s{where} ORDER BY seq LIMIT %s",
            [since, *params, limit],
        )
        return [_record(row) for row in rows]

    def last_seq(self) -> int:
        return self._read("SELECT last_seq FROM {s}.counter WHERE id = 1")[0][0]

    def count(self) -> int:
        """Live keys (optional in the protocol: for the navistore_keys metric)."""
        return self._read(f"SELECT count(*) FROM {{s}}.records WHERE {_LIVE}", (time.time(),))[0][0]

    def disk_bytes(self) -> int:
        """The schema's tables with their indexes and TOAST (optional in the protocol: for the
        navistore_store_bytes metric), from PostgreSQL's own account of their files."""
        return self._read(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            (self.schema,),
        )[0][0]

    def next_expiry(self) -> float | None:
        """The soonest expiry of a record not deleted yet (optional in the protocol). The expiry
        index's first entry."""
        return self._read(
            "SELECT min(expires_at) FROM {s}.records WHERE expires_at IS NOT NULL AND NOT deleted"
        )[0][0]

    def meta_get(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM {s}.meta WHERE name = %s", (name,))
        return rows[0][0] if rows else None

    def meta_set(self, name: str, value: str) -> None:
        with self._transaction() as cur:
            cur.execute(
                self._sql(
                    "INSERT INTO {s}.meta (name, value) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
                ),
                (name, value),
            )

    def purge(self, now: float, tombstones_upto_seq: int, tombstones_before_stamp: str) -> int:
        with self._writing() as (cur, writes):
            cur.execute(
                self._sql(
                    "SELECT key FROM {s}.records WHERE NOT deleted AND expires_at IS NOT NULL "
                    "AND expires_at <= %s ORDER BY seq"
                ),
                (now,),
            )
            expired = [row[0] for row in cur.fetchall()]
            for key in expired:
                cur.execute(
                    self._sql(
                        "UPDATE {s}.records SET deleted = true, value = ''::bytea, "
                        "expires_at = NULL, seq = %s WHERE key = %s"
                    ),
                    (writes.next_seq(bytes(key).decode("utf-8")), key),
                )
            cur.execute(
                self._sql("DELETE FROM {s}.records WHERE deleted AND seq <= %s AND stamp < %s"),
                (tombstones_upto_seq, tombstones_before_stamp),
            )
            dropped = cur.rowcount
        return len(expired) + dropped

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._node_id is not None:
            with contextlib.suppress(Exception), self._pool.connection() as conn:
                conn.execute(
                    self._sql("DELETE FROM {s}.nodes WHERE node_id = %s AND instance = %s"),
                    (self._node_id, self._instance),
                )
        self._pool.close()
        self._listener.join(timeout=5)
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)

    # -- shared stores: node ids and notifications ------------------------------------------

    def claim_node_id(self, node_id: str) -> None:
        """Hold ``node_id`` for this process while it runs: refused while another live node holds
        it (its heartbeat is younger than the lease). A heartbeat thread keeps the claim fresh."""
        now = time.time()
        with self._transaction() as cur:
            cur.execute(
                self._sql(
                    "SELECT instance, host, heartbeat FROM {s}.nodes WHERE node_id = %s FOR UPDATE"
                ),
                (node_id,),
            )
            row = cur.fetchone()
            if row and row[0] != self._instance and now - row[2] < NODE_LEASE_SECONDS:
                raise SettingsError(
                    f"node id {node_id!r} is in use by a live node on this database (on host "
                    f"{row[1]}, seen {now - row[2]:.0f} s ago): give every node its own "
                    "--node-id, or leave it out and let each node generate one"
                )
            cur.execute(
                self._sql(
                    "INSERT INTO {s}.nodes (node_id, instance, host, started, heartbeat) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (node_id) DO UPDATE SET "
                    "instance = EXCLUDED.instance, host = EXCLUDED.host, "
                    "started = EXCLUDED.started, heartbeat = EXCLUDED.heartbeat"
                ),
                (node_id, self._instance, socket.gethostname(), now, now),
            )
        self._node_id = node_id
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(
                target=self._beat, name="navistore-pg-heartbeat", daemon=True
            )
            self._heartbeat.start()

    def _beat(self) -> None:
        while not self._closed.wait(NODE_LEASE_SECONDS / 3):
            try:
                with self._pool.connection() as conn:
                    conn.execute(
                        self._sql(
                            "UPDATE {s}.nodes SET heartbeat = %s "
                            "WHERE node_id = %s AND instance = %s"
                        ),
                        (time.time(), self._node_id, self._instance),
                    )
            except Exception as exc:  # the database is away: try again at the next beat
                log.warning("node heartbeat failed: %s", exc)

    def subscribe(self, callback: Callable[[Sequence[str] | None], None]) -> None:
        """Call ``callback(keys)`` after every commit on this database by another node (another
        store instance): ``keys`` are the keys it wrote, or None for "any key" (too many keys to
        name, or the listener reconnected and may have missed commits)."""
        self._listeners.append(callback)

    def _tell(self, keys: Sequence[str] | None) -> None:
        for callback in list(self._listeners):
            callback(keys)

    def _listen(self) -> None:
        """LISTEN on the store's channel, reconnecting when the connection drops."""
        while not self._closed.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    # Commits made while nobody listened went unheard: anything may have changed.
                    self._tell(None)
                    while not self._closed.is_set():
                        # Back at once on a notification; at least twice a second to see whether
                        # the store is closing.
                        for notification in conn.notifies(timeout=0.5, stop_after=1):
                            sender, keys = read_notice(notification.payload)
                            if sender != self._instance:  # the Node saw its own commits
                                self._tell(keys)
            except Exception as exc:  # the database went away: listen again soon
                if not self._closed.is_set():
                    log.warning("LISTEN on %s failed (%s); retrying", self._channel, exc)
                    self._closed.wait(1.0)

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r})"

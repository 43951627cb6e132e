"""The pushing side: one worker thread per peer, the change feed as the outbox.

For each peer a durable cursor (in the store's meta) says up to which seq the peer has confirmed
our records. A worker sends ``changes(cursor)`` in batches bounded in records and bytes, and moves
the cursor only when the peer answers that it committed the batch. A handshake first learns the
peer's node id and store id: a peer whose store id changed (wiped, restored) gets everything again
from seq 0. A peer that does not answer is retried with exponential backoff and jitter.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from navistore.errors import SettingsError
from navistore.record import stamp_seconds
from navistore_peer_push import wire

if TYPE_CHECKING:
    from navistore import Node, Record

log = logging.getLogger("navistore.peer_push")

CURSOR_META = "peer-push.cursor."
IDLE_HELLO_SECONDS = 2.0  # how often an idle worker checks that its peer's store is the same


@dataclass(frozen=True)
class Options:
    """Tuning, from ``NAVISTORE_PEER_PUSH_*`` environment variables."""

    batch_records: int = 500
    batch_bytes: int = 4 * 1024 * 1024
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    max_skew: float = 60.0
    timeout: float = 10.0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Options:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, default in cls.__dataclass_fields__.items():
            variable = f"NAVISTORE_PEER_PUSH_{name.upper()}"
            if variable in environ:
                kind: Any = type(default.default)
                try:
                    values[name] = kind(environ[variable])
                except ValueError:
                    raise SettingsError(f"{variable} must be a {kind.__name__}") from None
                if values[name] <= 0:
                    raise SettingsError(f"{variable} must be greater than 0")
        return cls(**values)


class PeerError(Exception):
    """A push or handshake failed; the worker backs off and tries again."""


class PeerPush:
    """The ``peer-push`` replication strategy of one Node."""

    def __init__(self, node: Node, options: Options | None = None) -> None:
        self.node = node
        self.options = options or Options.from_environment()
        self._workers: dict[str, PeerWorker] = {}
        self._lock = threading.Lock()
        self._running = False

    # -- the Replication protocol -----------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._running = True
        self.peers_changed()

    def stop(self) -> None:
        with self._lock:
            self._running = False
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join(timeout=self.options.timeout + 1)

    def peers_changed(self) -> None:
        """Start a worker for each new peer, stop the workers of peers no longer listed."""
        with self._lock:
            if not self._running:
                return
            wanted = self.node.peers()
            gone = [w for url, w in self._workers.items() if url not in wanted]
            for worker in gone:
                del self._workers[worker.url]
                worker.stop()
            for url in wanted:
                if url not in self._workers:
                    worker = PeerWorker(self, url)
                    self._workers[url] = worker
                    worker.start()

    def status(self) -> dict[str, Any]:
        with self._lock:
            workers = dict(self._workers)
        peers = []
        for url in self.node.peers():
            worker = workers.get(url)
            cursor = self.cursor(url)
            lag_records, lag_seconds = self._lag(cursor["seq"])
            peers.append(
                {
                    "url": url,
                    "node_id": worker.peer_node_id if worker else None,
                    "cursor": cursor["seq"],
                    "lag_records": lag_records,
                    "lag_seconds": lag_seconds,
                    "last_success": worker.last_success if worker else None,
                    "last_error": worker.last_error if worker else None,
                }
            )
        return {"peers": peers}

    def purge_upto(self) -> int:
        """Tombstones above the lowest cursor of the listed peers are still owed to someone."""
        cursors = [self.cursor(url)["seq"] for url in self.node.peers()]
        return min(cursors, default=self.node.last_seq())

    # -- helpers for the workers ------------------------------------------------------------

    def wake(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.wake.set()

    def cursor(self, url: str) -> dict[str, Any]:
        saved = self.node.store.meta_get(CURSOR_META + url)
        return json.loads(saved) if saved else {"store_id": None, "seq": 0, "full_until": 0}

    def save_cursor(self, url: str, cursor: dict[str, Any]) -> None:
        self.node.store.meta_set(CURSOR_META + url, json.dumps(cursor))

    def _lag(self, seq: int) -> tuple[int, float]:
        pending = self.node.store_changes(seq, 1000, values=False)
        if not pending:
            return 0, 0.0
        count = len(pending) if len(pending) < 1000 else self.node.last_seq() - seq
        return count, round(max(0.0, time.time() - stamp_seconds(pending[0].stamp)), 3)

    def token(self) -> str | None:
        return self.node.settings.peer_token or self.node.settings.token


class PeerWorker(threading.Thread):
    """Pushes one node's change feed to one peer, for as long as the peer is listed."""

    def __init__(self, push: PeerPush, url: str) -> None:
        super().__init__(name=f"peer-push {url}", daemon=True)
        self.push, self.node, self.url = push, push.node, url
        self.options = push.options
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._base = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None
        self.wake = threading.Event()
        self._stopping = threading.Event()
        self.peer_node_id: str | None = None
        self.peer_store_id: str | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._last_hello = 0.0
        self._sizing = self.options.batch_records  # records whose sizes a batch reads first

    def stop(self) -> None:
        self._stopping.set()
        self.wake.set()

    def run(self) -> None:
        backoff = self.options.backoff_initial
        while not self._stopping.is_set():
            try:
                more = self._step()
                backoff = self.options.backoff_initial
                if more:
                    continue
                self.wake.wait(IDLE_HELLO_SECONDS)
                self.wake.clear()
            except PeerError as exc:
                self.last_error = str(exc)
                log.warning("peer %s: %s; retrying in up to %.1fs", self.url, exc, backoff)
                self._close()
                # Full jitter, so that peers coming back are not hit by everyone at once.
                self._stopping.wait(random.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, self.options.backoff_max)
            except Exception as exc:  # a bug or a store failure: say so, back off, carry on
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("peer %s: push failed", self.url)
                self._close()
                self._stopping.wait(self.options.backoff_max)
        self._close()

    # -- one round --------------------------------------------------------------------------

    def _step(self) -> bool:
        """Push one batch; return True when there may be more to push at once."""
        if self.peer_store_id is None or time.monotonic() - self._last_hello > IDLE_HELLO_SECONDS:
            self._hello()
        cursor = self.push.cursor(self.url)
        batch = self._batch(cursor["seq"])
        if not batch:
            self._succeeded()
            return False
        # The peer already has what it wrote itself into its current store; a record it wrote
        # before its store was replaced (below full_until) must go back to it all the same.
        to_send = [
            r
            for r in batch
            if r.seq <= cursor["full_until"] or r.stamp.partition("-")[2] != self.peer_node_id
        ]
        if to_send:
            self._push(to_send)
        cursor["seq"] = batch[-1].seq
        self.push.save_cursor(self.url, cursor)
        self._succeeded()
        return True

    def _batch(self, since: int) -> list[Record]:
        """The next batch after ``since``: the sizes first, then the values of as many records
        as fit ``batch_bytes``, so that 500 records of 1 MiB are not read to send 3 of them.
        (Read again, the records may be later versions, and larger: they are cut again.) The
        sizes read follow what fitted last time: with values of 1 MiB, sqlite reads a whole
        row to size it."""
        sized = self.node.store_changes(since, self._sizing, values=False)
        if not sized:
            return []
        fitting = len(self._fitting(sized))
        if fitting < len(sized):  # cut by bytes: read the sizes of about twice as many next
            self._sizing = min(self.options.batch_records, max(16, 2 * fitting))
        else:
            self._sizing = min(self.options.batch_records, 2 * self._sizing)
        return self._fitting(self.node.store_changes(since, fitting))

    def _fitting(self, records: list[Record]) -> list[Record]:
        """The first of ``records`` that fit one batch of ``batch_bytes`` (at least one)."""
        size = 0
        kept: list[Record] = []
        for record in records:
            size += record.size * 4 // 3 + len(record.key) + 200
            if kept and size > self.options.batch_bytes:
                break
            kept.append(record)
        return kept

    def _succeeded(self) -> None:
        self.last_success = time.time()
        self.last_error = None

    def _hello(self) -> None:
        status, body = self._request("GET", "/v1/replication/hello")
        if status != 200:
            raise PeerError(f"hello answered {status}: {_description(body)}")
        node_id, store_id = body.get("node_id"), body.get("store_id")
        if node_id == self.node.node_id:
            raise PeerError(
                f"the peer has our own node id {node_id!r}: give each node its own --node-id "
                "(or remove ourselves from the peer list)"
            )
        if store_id == self.node.store_id:
            raise PeerError("the peer is this very store (it lists ourselves as a peer)")
        cursor = self.push.cursor(self.url)
        if cursor["store_id"] != store_id:
            if cursor["store_id"] is not None:
                log.info(
                    "peer %s has a new store (%s): sending everything again", self.url, store_id
                )
            cursor = {"store_id": store_id, "seq": 0, "full_until": self.node.last_seq()}
            self.push.save_cursor(self.url, cursor)
        self.peer_node_id, self.peer_store_id = node_id, store_id
        self._last_hello = time.monotonic()

    def _push(self, records: list[Record]) -> None:
        payload = {
            "source": {"node_id": self.node.node_id, "store_id": self.node.store_id},
            "target_store_id": self.peer_store_id,
            "records": [wire.encode(r) for r in records],
        }
        status, body = self._request("POST", "/v1/replication/records", payload)
        if status == 409:
            self.peer_store_id = None  # its store changed under us: handshake again
        if status != 200:
            raise PeerError(
                f"the peer refused a batch of {len(records)} ({status}): {_description(body)}"
            )

    # -- HTTP -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        token = self.push.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if payload is not None:
            data = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):  # a kept-alive connection the peer closed gets one fresh retry
            try:
                conn = self._connection()
                conn.request(method, self._base + path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                if attempt == 2 or isinstance(exc, TimeoutError):
                    raise PeerError(
                        f"cannot reach {self.url}: {exc or type(exc).__name__}"
                    ) from None
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"description": raw[:200].decode("utf-8", "replace")}
        return response.status, body

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = kind(self._host, self._port, timeout=self.options.timeout)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _description(body: Any) -> str:
    if isinstance(body, dict) and (body.get("title") or body.get("description")):
        return ": ".join(str(body[k]) for k in ("title", "description") if body.get(k))
    return str(body)

"""A Python client for the Navistore REST API.

    from navistore.client import Client

    with Client() as store:  # $NAVISTORE_URL, else http://127.0.0.1:8888; $NAVISTORE_TOKEN
        etag = store.put("app/db/host", b"10.0.0.5", content_type="text/plain").etag
        store.put("app/db/host", b"10.0.0.6", if_match=etag)       # compare-and-set
        print(store.get("app/db/host").value)
        for entry in store.list("app/"):                           # pages automatically
            print(entry.key, entry.size)
        for change in store.watch(prefix="app/"):                  # blocks; a long poll
            print(change.seq, change.key, change.deleted)

Each thread reuses one keep-alive connection. Errors are the classes of ``navistore.errors``:
``KeyNotFound`` (404), ``PreconditionFailed`` (412), ``InvalidRequest`` (400), ``ValueTooLarge``
(413), ``ChangesGone`` (410), ``TooManyWatchers`` (429), ``StoreBusy`` (503), ``StoreFull`` (507),
``Unauthorized`` (401), ``Forbidden`` (403: a read-only token used to write), and
``ClientError`` for anything else (including an unreachable server).
"""

from __future__ import annotations

import base64
import builtins  # in Client's annotations, `list` is the method Client.list: say builtins.list
import dataclasses
import http.client
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from navistore import errors

__all__ = [
    "Change",
    "Client",
    "ClientError",
    "Entry",
    "Forbidden",
    "Listed",
    "Unauthorized",
    "Written",
]

#: A watch that lost its server tries again this long after, then twice as long each time, up to
#: ``WATCH_RETRY_MAX`` (the backoff peer-push replication uses for a peer that is down).
WATCH_RETRY_FIRST, WATCH_RETRY_MAX = 0.1, 5.0


DEFAULT_URL = "http://127.0.0.1:8888"


class ClientError(errors.NavistoreError):
    """The server could not be reached, or answered something unexpected."""

    title = "Client error"

    def __init__(self, description: str = "", *, status: int | None = None, **kwargs: Any) -> None:
        super().__init__(description, **kwargs)
        self.status = status


class Unauthorized(ClientError):
    title = "Unauthorized"


class Forbidden(ClientError):
    """The token given may not do this: the server's read token, used to write."""

    title = "Forbidden"


_ERRORS: dict[int, type[errors.NavistoreError]] = {
    400: errors.InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: errors.KeyNotFound,
    410: errors.ChangesGone,
    412: errors.PreconditionFailed,
    413: errors.ValueTooLarge,
    429: errors.TooManyWatchers,
    503: errors.StoreBusy,
    507: errors.StoreFull,
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """A value as ``get`` and ``get_prefix`` return it; ``expires_at`` (seconds since the epoch)
    is None for a key that does not expire."""

    key: str
    value: bytes
    content_type: str
    etag: str
    expires_at: float | None = None

    @property
    def text(self) -> str:
        """The value as text: in the charset its content type names (``text/plain;
        charset=latin-1``), else UTF-8. ``UnicodeDecodeError`` when it is not that, and
        ``LookupError`` for a charset Python does not know."""
        charset = "utf-8"
        for parameter in self.content_type.split(";")[1:]:
            name, _, given = parameter.partition("=")
            if name.strip().lower() == "charset" and given.strip():
                charset = given.strip().strip('"')
        return self.value.decode(charset)

    def json(self) -> Any:
        """The value parsed as JSON (``ValueError`` when it is not), as a configuration kept
        as ``application/json`` is read: ``store.get("app/limits").json()["rate"]``."""
        return json.loads(self.value)


@dataclasses.dataclass(frozen=True)
class Written:
    """What a write answered: the new etag, and whether the key was created."""

    key: str
    etag: str
    created: bool = False


@dataclasses.dataclass(frozen=True)
class Listed:
    """A listing entry; with a separator, ``is_prefix`` marks a folded sub-tree."""

    key: str
    etag: str | None = None
    size: int | None = None
    content_type: str | None = None
    expires_at: float | None = None
    is_prefix: bool = False


@dataclasses.dataclass(frozen=True)
class Change:
    """A change in the feed; with ``values=True``, also what the key holds since (a deletion
    holds nothing: None)."""

    seq: int
    key: str
    etag: str
    deleted: bool
    value: bytes | None = None
    content_type: str | None = None
    expires_at: float | None = None

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Change:
        value = item.get("value")
        return cls(**{**item, "value": None if value is None else base64.b64decode(value)})


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Every key under a prefix with its value (``Client.snapshot``), and ``index``: the store's
    newest seq when the first page was read. A watch from ``index`` brings every change the read
    may have missed (and some it saw: applied in order, they end in the same state)."""

    entries: list[Entry]
    index: int


def key_path(key: str) -> str:
    """The request path of a key: every segment percent-encoded, ``.`` and ``..`` included (HTTP
    libraries and proxies drop dot segments unless they are escaped)."""
    segments = []
    for segment in key.split("/"):
        encoded = quote(segment, safe="")
        if segment in (".", ".."):
            encoded = segment.replace(".", "%2E")
        segments.append(encoded)
    return "/v1/keys/" + "/".join(segments)


class Client:
    """A connection-reusing client for one Navistore server."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30.0
    ) -> None:
        """``url`` defaults to ``$NAVISTORE_URL``, else http://127.0.0.1:8888, and ``token`` to
        ``$NAVISTORE_TOKEN``, as for the ``navistore`` commands (and as Consul's client reads
        ``CONSUL_HTTP_ADDR`` and ``CONSUL_HTTP_TOKEN``): a program deployed to many machines
        finds its server the way the shell there does. ``token=""`` sends no token."""
        url = url or os.environ.get("NAVISTORE_URL") or DEFAULT_URL
        if token is None:
            token = os.environ.get("NAVISTORE_TOKEN")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"{url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._all_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = kind(self._host, self._port, timeout=timeout)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; return (status, lower-cased headers, body). Raises on error status."""
        headers = dict(headers or {})
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        target = self._base + path
        if query:
            clean = {k: v for k, v in query.items() if v is not None}
            if clean:
                target += "?" + urlencode(clean, quote_via=quote)
        # A kept-alive connection the server closed in between fails before any answer: retry
        # once on a fresh one, except for POST, which is not safe to repeat.
        attempts = 1 if method == "POST" else 2
        for attempt in range(1, attempts + 1):
            conn = self._connection(timeout or self.timeout)
            try:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop_connection()
                if attempt == attempts:
                    raise ClientError(f"{self.url} closed the connection: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                raise ClientError(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        if response.will_close:
            self._drop_connection()
        if response.status >= 400:
            raise self._error(response.status, answer_headers, data)
        return response.status, answer_headers, data

    @staticmethod
    def _error(status: int, headers: dict[str, str], data: bytes) -> errors.NavistoreError:
        try:
            body = json.loads(data)
            description = body.get("description") or body.get("title") or ""
            index = body.get("index")
        except (ValueError, AttributeError):
            description, index = data[:200].decode("utf-8", "replace"), None
        kind = _ERRORS.get(status)
        if kind is None:
            return ClientError(f"{status}: {description}", status=status)
        error: errors.NavistoreError
        if issubclass(kind, ClientError):
            error = kind(description, status=status)
        else:
            error = kind(description, index=index)
        if "retry-after" in headers and headers["retry-after"].isdigit():
            error.retry_after = int(headers["retry-after"])
        return error

    def _json(self, *args: Any, **kwargs: Any) -> Any:
        return json.loads(self.request(*args, **kwargs)[2])

    def close(self) -> None:
        with self._all_lock:
            connections, self._all = self._all, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys -------------------------------------------------------------------------------

    def get(self, key: str) -> Entry:
        _, headers, data = self.request("GET", key_path(key))
        expires = headers.get("x-navistore-expires-at")
        return Entry(
            key,
            data,
            headers.get("content-type", ""),
            headers.get("etag", ""),
            float(expires) if expires else None,
        )

    def put(
        self,
        key: str,
        value: bytes,
        content_type: str | None = None,
        ttl: int | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Written:
        """Write ``value``; ``if_match``: an etag or ``*``; ``if_none_match="*"``: create only."""
        headers = {"Content-Type": content_type or "application/octet-stream"}
        if if_match is not None:
            headers["If-Match"] = if_match
        if if_none_match is not None:
            headers["If-None-Match"] = if_none_match
        status, answer, _ = self.request(
            "PUT", key_path(key), bytes(value), headers, query={"ttl": ttl}
        )
        return Written(key, answer.get("etag", ""), created=status == 201)

    def update(
        self,
        key: str,
        change: Callable[[Entry | None], bytes],
        content_type: str | None = None,
        ttl: int | None = None,
        attempts: int = 10,
    ) -> Written:
        """Read ``key``, write ``change(entry)`` over exactly what was read, and return the write:
        a read-modify-write that no other writer's write can slip into, as the compare-and-set
        loops of etcd's STM or Consul's ``cas=`` give::

            store.update("counters/runs", lambda e: b"%d" % (int(e.value) + 1 if e else 1))

        ``entry`` is None when the key is absent; the write then only creates it. When another
        write lands between the read and the write (412), read again and call ``change`` again,
        after a short random pause, up to ``attempts`` calls in all; then ``PreconditionFailed``.
        ``change`` may raise to give up: nothing is written. The content type stays the entry's
        unless given; an expiry does not carry over (``ttl`` sets one, as for ``put``)."""
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        for attempt in range(attempts):
            if attempt:  # spread the writers that keep colliding: up to 1, 2, 4 ... 64 ms
                time.sleep(random.random() * 0.001 * 2 ** min(attempt - 1, 6))
            try:
                current: Entry | None = self.get(key)
            except errors.KeyNotFound:
                current = None
            value = change(current)
            try:
                if current is None:
                    return self.put(key, value, content_type, ttl, if_none_match="*")
                kept = content_type or current.content_type
                return self.put(key, value, kept, ttl, if_match=current.etag)
            except errors.PreconditionFailed:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def delete(self, key: str, if_match: str | None = None) -> None:
        self.request("DELETE", key_path(key), headers={"If-Match": if_match} if if_match else None)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` (an empty prefix deletes everything)."""
        query = {"prefix": prefix} if prefix else {"all": "true"}
        return self._json("DELETE", "/v1/keys", query=query)["deleted"]

    def list(
        self, prefix: str = "", separator: str | None = None, page_size: int = 1000, after: str = ""
    ) -> Iterator[Listed]:
        """Every key under ``prefix`` in key order, a page at a time; with ``separator``, one level
        (sub-trees come as entries with ``is_prefix``)."""
        while True:
            page = self._json(
                "GET",
                "/v1/keys",
                query={
                    "prefix": prefix,
                    "after": after,
                    "limit": page_size,
                    "separator": separator,
                },
            )
            entries = [Listed(**item) for item in page["keys"]]
            entries += [Listed(key=p, is_prefix=True) for p in page.get("prefixes", [])]
            yield from sorted(entries, key=lambda e: e.key.encode("utf-8"))
            if page["next"] is None:
                return
            after = page["next"]

    def get_prefix(
        self, prefix: str = "", page_size: int = 1000, after: str = ""
    ) -> Iterator[Entry]:
        """Every key under ``prefix`` with its value, in key order, a page at a time (etcd's
        ``get --prefix``, Consul's ``?recurse``). Each page is read at one moment; keys written
        while later pages are read may show their newer value, or not at all if deleted. To
        follow what was read with a watch, read it with ``snapshot``."""
        for _, entries in self.value_pages(prefix, page_size, after):
            yield from entries

    def snapshot(self, prefix: str = "", page_size: int = 1000) -> Snapshot:
        """Every key under ``prefix`` with its value, and the index to watch from so as to miss
        no change since (etcd's revision of a ``get``, Consul's ``X-Consul-Index``)::

            config = store.snapshot("app/")
            for change in store.watch("app/", since=config.index, values=True): ...
        """
        pages = self.value_pages(prefix, page_size)
        index, entries = next(pages)
        for _, more in pages:
            entries += more
        return Snapshot(entries, index)

    def value_pages(
        self, prefix: str = "", page_size: int = 1000, after: str = ""
    ) -> Iterator[tuple[int, builtins.list[Entry]]]:
        """``get_prefix`` a page at a time, each with the store's newest seq as it was read: the
        first page's is the index to watch from, as ``snapshot`` gives, for a reader that streams
        the keys rather than hold them all (``navistore dump`` keeps it in its header)."""
        while True:
            query = {"prefix": prefix, "after": after, "limit": page_size, "values": "true"}
            _, headers, data = self.request("GET", "/v1/keys", query=query)
            page = json.loads(data)
            entries = [
                Entry(
                    item["key"],
                    base64.b64decode(item["value"]),
                    item["content_type"],
                    item["etag"],
                    item["expires_at"],
                )
                for item in page["keys"]
            ]
            yield int(headers["x-navistore-index"]), entries
            if page["next"] is None:
                return
            after = page["next"]

    def batch(self, ops: Sequence[dict[str, Any]]) -> builtins.list[Written]:
        """Write and delete several keys, all or nothing, if every check holds. Each op is a dict
        as in the REST API; a ``value`` given as bytes is base64-encoded for you. A check's
        result carries the etag the key holds ("" when absent)::

            store.batch([
                {"op": "check", "key": "app/schema", "if_match": schema.etag},
                {"op": "put", "key": "app/db/host", "value": b"10.0.0.6"},
            ])"""
        encoded = []
        for op in ops:
            op = dict(op)
            if isinstance(op.get("value"), bytes | bytearray):
                op["value"] = base64.b64encode(op["value"]).decode("ascii")
            encoded.append(op)
        body = json.dumps({"ops": encoded}).encode()
        answer = self._json("POST", "/v1/batch", body, {"Content-Type": "application/json"})
        return [Written(r["key"], r["etag"] or "") for r in answer["results"]]

    # -- changes ----------------------------------------------------------------------------

    def changes(
        self,
        since: int = 0,
        prefix: str = "",
        key: str | None = None,
        limit: int = 100,
        wait: int = 0,
        values: bool = False,
    ) -> tuple[builtins.list[Change], int]:
        """One page of the change feed after ``since``: (changes, the store's newest seq); with
        ``values``, each change carries the value it wrote."""
        query: dict[str, Any] = {"since": since, "limit": limit, "wait": wait or None}
        query.update(key=key, prefix=prefix or None)  # both: the server says which to choose
        if values:
            query["values"] = "true"
        body = self._json("GET", "/v1/changes", query=query, timeout=self.timeout + wait)
        return [Change.from_json(c) for c in body["changes"]], body["last_seq"]

    def watch(
        self,
        prefix: str = "",
        key: str | None = None,
        since: int | None = None,
        wait: int = 60,
        values: bool = False,
        reconnect: bool = True,
        on_retry: Callable[[errors.NavistoreError, float], None] | None = None,
        on_reconnect: Callable[[int], None] | None = None,
    ) -> Iterator[Change]:
        """Yield changes as they commit, from ``since`` (default: from now on), forever; with
        ``values``, each with the value it wrote.

        Raises ``ChangesGone`` when the feed no longer reaches back to the position (resync from a
        listing). When every watcher slot is taken, it waits as the server says, and goes on.
        Once the watch has reached the server, when the server cannot be reached (it restarts,
        say) or answers 5xx, the watch tries again from where it was, as etcd's and Consul's do:
        0.1 s later, then twice as long each time, up to 5 s, for as long as it takes.
        ``on_retry(error, delay)`` hears of each failed try, and ``on_reconnect(seq)`` of the
        first that answered again (the watch goes on after ``seq``); with ``reconnect=False`` the
        error is raised instead. Any other error (401, 400, 410), and any error before the server
        first answered (a wrong URL, say), is raised at once.
        """
        batches = self.watch_batches(
            prefix, key, since, wait, values, reconnect, on_retry, on_reconnect
        )
        for changes in batches:
            yield from changes

    def watch_batches(
        self,
        prefix: str = "",
        key: str | None = None,
        since: int | None = None,
        wait: int = 60,
        values: bool = False,
        reconnect: bool = True,
        on_retry: Callable[[errors.NavistoreError, float], None] | None = None,
        on_reconnect: Callable[[int], None] | None = None,
    ) -> Iterator[builtins.list[Change]]:
        """``watch``, a batch at a time: each a non-empty list of the changes one answer of the
        server brought. A burst of writes comes together, and what commits while you handle one
        batch comes in the next: for work to do once per burst (reload a service, rewrite a
        file), as ``navistore watch PREFIX -- COMMAND`` does."""
        reached = since is None  # then the status read below must answer first
        if since is None:
            since = self.status()["last_seq"]
        delay = WATCH_RETRY_FIRST  # grows only while the server cannot be reached
        while True:
            try:
                changes, last_seq = self.changes(
                    since, prefix, key, limit=1000, wait=wait, values=values
                )
            except errors.TooManyWatchers as busy:
                time.sleep(busy.retry_after or 1)
                continue
            except (ClientError, errors.StoreError) as exc:
                lost = isinstance(exc, errors.StoreError) or (
                    not isinstance(exc, Unauthorized) and (exc.status or 500) >= 500
                )
                if not (reconnect and reached and lost):
                    raise
                if on_retry is not None:
                    on_retry(exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, WATCH_RETRY_MAX)
                continue
            if delay > WATCH_RETRY_FIRST and on_reconnect is not None:  # it had tried again
                on_reconnect(since)
            reached, delay = True, WATCH_RETRY_FIRST
            if changes:
                yield changes
            # Nothing matched up to last_seq (read before the feed): go on from there. That is
            # also where to go on from when the store was reset below our position.
            since = changes[-1].seq if changes else last_seq

    def follow(
        self,
        prefix: str = "",
        wait: int = 60,
        on_retry: Callable[[errors.NavistoreError, float], None] | None = None,
        on_reconnect: Callable[[int], None] | None = None,
        page_size: int = 1000,
    ) -> Iterator[dict[str, Entry]]:
        """Every key under ``prefix`` with its value, ``{key: Entry}``: first as it is now, then
        again each time it changes, forever, as Consul's ``watch -type keyprefix`` gives it; what
        a service that takes its configuration from the store loops on::

            for config in store.follow("app/"):
                apply({key: entry.value for key, entry in config.items()})

        Changes that arrive in one answer of the server come in one dict, and an answer that
        changes nothing (a change the first read had already seen) yields none. It reads a
        ``snapshot`` and watches from its index, so it misses nothing; when the feed no longer
        reaches back that far (the server purged the tombstones, ``ChangesGone``), it reads the
        snapshot again. Across a server restart it goes on as ``watch`` does. Each dict is new:
        keep the last one as long as you like."""
        while True:
            snapshot = self.snapshot(prefix, page_size)
            state = {entry.key: entry for entry in snapshot.entries}
            yield dict(state)
            pages = self.watch_batches(
                prefix,
                since=snapshot.index,
                wait=wait,
                values=True,
                on_retry=on_retry,
                on_reconnect=on_reconnect,
            )
            try:
                for changes in pages:
                    changed = False
                    for change in changes:
                        held = state.get(change.key)
                        if change.deleted:
                            changed |= state.pop(change.key, None) is not None
                        elif held is None or held.etag != change.etag:
                            state[change.key] = Entry(
                                change.key,
                                change.value or b"",
                                change.content_type or "",
                                change.etag,
                                change.expires_at,
                            )
                            changed = True
                    if changed:
                        yield dict(state)
            except errors.ChangesGone:
                continue  # read it all again

    # -- the node ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self._json("GET", "/v1/status")

    def replication_status(self) -> dict[str, Any] | None:
        """``GET /v1/replication/status``: each peer's cursor, lag and last error; None when the
        server runs no replicator."""
        try:
            return self._json("GET", "/v1/replication/status")
        except errors.KeyNotFound:  # no such route
            return None

    def health(self) -> bool:
        try:
            return self._json("GET", "/healthz").get("status") == "ok"
        except errors.NavistoreError:
            return False

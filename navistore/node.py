"""The Node: one running Navistore instance, and the one place where the rules live.

Resources parse HTTP and call a Node; backends store what a Node hands them. Key rules, limits,
TTL, preconditions and stamps are checked and made here, once, so every route and every backend
gets them.
"""

from __future__ import annotations

import base64
import binascii
import builtins  # in Node's annotations, `list` is the method Node.list: say builtins.list
import functools
import heapq
import inspect
import json
import logging
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from navistore import slots
from navistore._version import __version__
from navistore.errors import (
    ChangesGone,
    InvalidKey,
    InvalidRequest,
    KeyNotFound,
    PreconditionFailed,
    StaleStamp,
    TooManyWatchers,
    ValueTooLarge,
)
from navistore.limits import (
    DEFAULT_LIMIT,
    MAX_BATCH_BYTES,
    MAX_BATCH_OPS,
    MAX_CONTENT_TYPE,
    MAX_KEY_BYTES,
    MAX_LIMIT,
    MAX_PAGE_VALUE_BYTES,
    MAX_TTL,
)
from navistore.plugins import Plugins, get_plugin_manager, plugins_report, resolve_replicator_name
from navistore.record import (
    ABSENT,
    ANY,
    DEFAULT_CONTENT_TYPE,
    NODE_ID_PATTERN,
    PRESENT,
    Check,
    Clock,
    Expect,
    Record,
    make_stamp,
    parse_stamp,
)
from navistore.settings import BY_NAME, Settings
from navistore.shared import SharedCalls
from navistore.store import Backend, Store, listing_json, scan_page, url_scheme

log = logging.getLogger("navistore")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_STALE_RETRIES = 8
#: Expiries are purged this long apart at the least (each purge is a write transaction).
EXPIRY_GRANULARITY = 1.0
#: Expiry times remembered for a prompt purge. Past this many, the node learns of the others from
#: the store (its optional ``next_expiry``) after each purge, or else at the regular purge.
MAX_TRACKED_EXPIRIES = 100_000

# Meta names the core owns; plugins should prefix theirs with their own name.
META_NODE_ID = "navistore.node_id"
META_STORE_ID = "navistore.store_id"
META_CLOCK = "navistore.clock"
META_PURGED_SEQ = "navistore.purged_seq"
META_PEERS = "navistore.peers"


def check_key(key: str) -> None:
    """Raise ``InvalidKey`` unless ``key`` is 1 to 1024 UTF-8 bytes without control characters."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("the key is empty; a key is 1 to 1024 bytes of UTF-8")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey("the key is not valid Unicode (it holds a lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(
            f"the key is {size} bytes long; the limit is {MAX_KEY_BYTES} bytes of UTF-8"
        )
    match = _CONTROL.search(key)
    if match:
        raise InvalidKey(
            f"the key holds the control character U+{ord(match.group()):04X} at position "
            f"{match.start()}; keys may not hold U+0000-U+001F or U+007F"
        )


def past_prefix(prefix: str) -> str:
    """An ``after`` bound that sorts after every legal key starting with ``prefix``.

    Keys are at most 1024 bytes, and U+10FFFF is the largest character (4 bytes of UTF-8), so no
    legal key that starts with ``prefix`` reaches ``prefix`` followed by 256 of them.
    """
    return prefix + "\U0010ffff" * (MAX_KEY_BYTES // 4)


def _generated_node_id() -> str:
    host = re.sub(r"[^a-z0-9_.-]", "-", socket.gethostname().lower()).strip("-._")[:20]
    return f"{host or 'node'}-{secrets.token_hex(3)}"


class Node:
    """One Navistore instance: its settings, store, clock, plugins and replication."""

    def __init__(
        self,
        settings: Settings | None = None,
        plugins: Plugins | None = None,
        store: Store | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.plugins = plugins or get_plugin_manager()
        self._committed_hook = self.plugins.hook.navistore_committed  # looked up once: every write
        if store is None:
            self.backend, store = self._open_store(self.settings.store)
        else:
            self.backend = Backend(name=type(store).__name__, schemes=(), factory=lambda url: store)
        self.store: Store = store
        # Whether the store's changes can leave the values out (an optional keyword).
        self._changes_sized = "values" in inspect.signature(store.changes).parameters
        self.replication: Any = None
        self.replicator_name: str | None = None
        self._started = False
        self._stopping = threading.Event()
        self._replication_lock = threading.Lock()
        # Waiting watches, by the key or the prefix they watch: a commit wakes only those it
        # matches (woken, every watch on a quiet prefix looked at the store again after every
        # write: PUT at 0.14x with 50 of them, bench/watchers.py). Under _watch_lock.
        self._watch_lock = threading.Lock()
        # Each watch is there by what wakes it: a threading.Event (``watch``) or a Park
        # (``watch_parked``); a commit calls its ``set()``.
        self._key_watches: dict[str, set[Any]] = {}
        self._prefix_watches: dict[str, set[Any]] = {}
        # How many of the prefixes watched have each length: a commit looks its key's prefixes
        # of those lengths up, rather than trying every prefix watched (a fleet whose machines
        # each watch a prefix of their own has thousands, mostly of one or two lengths).
        self._prefix_lengths: dict[int, int] = {}
        self._watching = 0  # watches waiting, for max_watchers
        #: Client connections open now, and the most the server holds at once: set by the server
        #: that serves this node (``make_server``), for /metrics; None when none does.
        self.connections: Callable[[], tuple[int, int]] | None = None
        # A watch's looks at the feed (self.changes, looked up at each call): the watches that
        # one commit woke ask the same question at the same moment, and share the answer.
        self._looks = SharedCalls(lambda *args: self.changes(*args))
        # Expiry times of records committed through this node (and the store's soonest, see
        # _ask_store), soonest first, so that the purge loop turns them into tombstones (changes
        # a watch sees) when they fall due rather than at the next regular purge. The event tells
        # the loop of a sooner one.
        self._expiries: list[float] = []
        self._expiries_lock = threading.Lock()
        self._expiry_noted = threading.Event()
        # Whether to ask the store for its soonest expiry (``next_expiry``): records this node
        # did not see committed (before a restart, through another node, past the bound).
        self._ask_store = True
        self._purger: threading.Thread | None = None
        try:
            self.node_id = self._node_id()
            self.store_id = self._meta_default(META_STORE_ID, lambda: uuid.uuid4().hex)
            self.clock = Clock(self.node_id)
            self._start_clock()
            self._make_replication()
            subscribe = getattr(self.store, "subscribe", None)
            if callable(subscribe):
                subscribe(self._changed_elsewhere)
        except BaseException:
            self.store.close()
            raise

    # -- life cycle -------------------------------------------------------------------------

    def _open_store(self, url: str) -> tuple[Backend, Store]:
        backend, _ = self.plugins.backend_for(url_scheme(url))
        return backend, backend.factory(url)

    def _meta_default(self, name: str, make) -> str:
        value = self.store.meta_get(name)
        if value is None:
            value = make()
            self.store.meta_set(name, value)
        return value

    def _node_id(self) -> str:
        claim = getattr(self.store, "claim_node_id", None)
        if callable(claim):
            # A store shared by several nodes: each node holds its own id while it runs (the
            # meta is shared, so an id kept there would be everyone's).
            node_id = self.settings.node_id or _generated_node_id()
            claim(node_id)
            return node_id
        if self.settings.node_id:
            return self.settings.node_id
        node_id = self._meta_default(META_NODE_ID, _generated_node_id)
        if not NODE_ID_PATTERN.match(node_id):
            raise InvalidRequest(f"the store holds a malformed node id {node_id!r}")
        return node_id

    def _start_clock(self) -> None:
        """Start the clock past the largest stamp in the store.

        Local stamps follow wall time, which moves on across a restart; only stamps observed from
        peers can be ahead of it, and ``merge`` records the furthest in the meta. The newest
        changes are observed too, in case the wall clock went back.
        """
        saved = self.store.meta_get(META_CLOCK)
        if saved:
            self.clock.observe(saved)
        last = self.store.last_seq()
        for record in self.store.changes(max(0, last - 100), 100):
            self.clock.observe(record.stamp)

    def start(self) -> None:
        """Start background work: replication, and the purge of expired records and tombstones."""
        self._started = True
        if self.replication is not None:
            self.replication.start()
        self._purger = threading.Thread(
            target=self._purge_loop, name="navistore-purge", daemon=True
        )
        self._purger.start()

    def begin_shutdown(self) -> None:
        """Wake every waiting watch so it answers now; new watches answer at once."""
        self._stopping.set()
        self._expiry_noted.set()  # the purge loop sleeps on it
        self._wake_watches(None)

    def close(self) -> None:
        """Stop replication and background work, then close the store."""
        self.begin_shutdown()
        if self.replication is not None:
            self.replication.stop()
        if self._purger is not None:
            self._purger.join(timeout=5)
        self.store.close()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- peers ------------------------------------------------------------------------------

    def runtime_peers(self) -> list[str]:
        """The peers set at runtime (``PUT /v1/replication/peers``), kept in the store."""
        return json.loads(self.store.meta_get(META_PEERS) or "[]")

    def peers(self) -> list[str]:
        """Every peer to replicate with: configured ones first, then runtime ones."""
        return list(dict.fromkeys([*self.settings.peer, *self.runtime_peers()]))

    def set_runtime_peers(self, urls: Sequence[str]) -> list[str]:
        """Replace the runtime peers (kept across restarts); start replication if need be."""
        checked = []
        for url in urls:
            try:
                checked.append(BY_NAME["peer"].convert(url))
            except (ValueError, TypeError) as exc:
                raise InvalidRequest(f"peer {url!r}: {exc}") from None
        self.store.meta_set(META_PEERS, json.dumps(list(dict.fromkeys(checked))))
        with self._replication_lock:
            if self.replication is not None:
                self.replication.peers_changed()
            elif (made := self._make_replication()) is not None and self._started:
                made.start()
        return self.peers()

    def _make_replication(self) -> Any:
        """Build the replication strategy the settings and peers call for; return it (None:
        there is none)."""
        self.replicator_name = resolve_replicator_name(self.settings.replicator, self.peers())
        if self.replicator_name:
            replicator, _ = self.plugins.replicator(self.replicator_name)
            self.replication = replicator.factory(self)
        return self.replication

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: str) -> Record:
        """Return the live record for ``key``; ``KeyNotFound`` when absent, deleted or expired."""
        check_key(key)
        record = self.store.get(key)
        if record is None:
            raise KeyNotFound(f"no key {key!r}")
        return record

    def list(
        self, prefix: str = "", after: str = "", limit: int = DEFAULT_LIMIT, separator: str = ""
    ) -> tuple[builtins.list[Record], builtins.list[str], str | None]:
        """List live keys (without values) in key order: (records, folded prefixes, next)."""
        _check_limit(limit)
        if not separator:
            records, next_after = scan_page(self.store, prefix, after, limit)
            return records, [], next_after
        return self._list_folded(prefix, after, limit, separator)

    def list_json(
        self, prefix: str = "", after: str = "", limit: int = DEFAULT_LIMIT
    ) -> tuple[str, str | None]:
        """A listing page (no separator) as the JSON array text of its entries, and ``next``:
        from the store's ``scan_listing`` when it has one, else built from ``list``."""
        _check_limit(limit)
        scan_listing = getattr(self.store, "scan_listing", None)
        if callable(scan_listing):
            return scan_listing(prefix, after, limit)
        records, next_after = scan_page(self.store, prefix, after, limit)
        return listing_json(records), next_after

    def read_page(
        self,
        prefix: str = "",
        after: str = "",
        limit: int = DEFAULT_LIMIT,
        max_bytes: int = MAX_PAGE_VALUE_BYTES,
    ) -> tuple[builtins.list[Record], str | None]:
        """A listing page with the values (``GET /v1/keys?values=true``): live records in key
        order, all read by one ``store.scan``, so the page is one moment of the store, and
        ``next`` when more follow. A page ends early rather than carry more than ``max_bytes``
        of values, though never before its first record.

        The sizes come first, from a scan without values, so that a page of ``limit`` large
        values is never loaded only to be cut; the page is cut again by the sizes it was read
        with, should values have grown in between."""
        _check_limit(limit)
        count = len(within_bytes(self.store.scan(prefix, after, limit, values=False), max_bytes))
        if not count:
            return [], None
        records = self.store.scan(prefix, after, count + 1, values=True)
        page = within_bytes(records[:count], max_bytes)
        more = len(records) > len(page)
        return page, (page[-1].key if more else None)

    def _list_folded(
        self, prefix: str, after: str, limit: int, separator: str
    ) -> tuple[builtins.list[Record], builtins.list[str], str | None]:
        """One level of a hierarchy: keys below the next separator fold into a prefix, and the
        scan jumps past a folded prefix instead of reading every key under it."""

        def folded(key: str) -> str | None:
            cut = key.find(separator, len(prefix))
            return key[: cut + len(separator)] if cut >= 0 else None

        # An `after` that is itself a folded prefix (the `next` of a previous page) skips it.
        if after.startswith(prefix) and folded(after) == after:
            after = past_prefix(after)
        records: builtins.list[Record] = []
        prefixes: builtins.list[str] = []
        last = ""
        size = 8  # small reads first: a folded prefix may hide many keys; grow while none folds
        while len(records) + len(prefixes) < limit:
            wanted = limit - len(records) - len(prefixes)
            batch = self.store.scan(prefix, after, min(size, wanted), values=False)
            if not batch:
                return records, prefixes, None
            size *= 2
            for record in batch:
                head = folded(record.key)
                if head is None:
                    records.append(record)
                    last = after = record.key
                    continue
                prefixes.append(head)
                last, after, size = head, past_prefix(head), 8
                break  # rescan past the folded prefix rather than read what lies under it
        more = bool(self.store.scan(prefix, after, 1, values=False))
        return records, prefixes, (last if more else None)

    def changes(
        self,
        since: int = 0,
        limit: int = DEFAULT_LIMIT,
        prefix: str = "",
        key: str | None = None,
        values: bool = True,
    ) -> tuple[builtins.list[Record], int]:
        """Return (changes after ``since``, the store's newest seq), tombstones included. With
        ``values=False``, a store that can leave the values out does (see ``Store.changes``)."""
        _check_limit(limit)
        if since < 0:
            raise InvalidRequest("since must be 0 or more")
        if key is not None:
            check_key(key)
        # Read the newest seq first: a client that got no change may resume from it safely.
        last_seq = self.store.last_seq()
        purged = int(self.store.meta_get(META_PURGED_SEQ) or 0)
        if since < purged:
            raise ChangesGone(
                f"changes up to seq {purged} have been purged; since={since} is older. "
                "Resync from a listing, then watch from its X-Navistore-Index"
            )
        if key is None:
            return self.store_changes(since, limit, prefix, values), last_seq
        found: builtins.list[Record] = []
        cursor = since
        while len(found) < limit:
            batch = self.store_changes(cursor, MAX_LIMIT, key, values)
            found.extend(r for r in batch if r.key == key)
            if len(batch) < MAX_LIMIT:
                break
            cursor = batch[-1].seq
        return found[:limit], last_seq

    def store_changes(
        self, since: int, limit: int, prefix: str = "", values: bool = True
    ) -> builtins.list[Record]:
        """``store.changes``, without the values when asked and the store can leave them out
        (an optional keyword, see ``navistore.store``): with no check of ``since`` against
        purged tombstones, for replication strategies that keep their own cursors."""
        if values or not self._changes_sized:
            return self.store.changes(since, limit, prefix)
        return self.store.changes(since, limit, prefix, values=False)  # type: ignore[call-arg]

    def fill_values(
        self,
        sized: Sequence[Record],
        since: int,
        prefix: str = "",
        key: str | None = None,
        max_bytes: int = MAX_PAGE_VALUE_BYTES,
    ) -> builtins.list[Record]:
        """Changes after ``since`` with their values (``GET /v1/changes?values=true``), from
        ``sized``, the same page read without them: as many as fit ``max_bytes`` of values
        (never fewer than one) are read again with the values, and cut again, should values
        have grown in between. So a page of large values is never loaded only to be cut. The
        second read may find later versions of the same keys, never fewer changes: a key
        written in between moved to a later seq, still after ``since``."""
        count = len(within_bytes(sized, max_bytes))
        if not count:
            return []
        records, _ = self.changes(since, count, prefix, key)
        return within_bytes(records, max_bytes)

    def watch(
        self,
        since: int = 0,
        limit: int = DEFAULT_LIMIT,
        prefix: str = "",
        key: str | None = None,
        wait: float = 0.0,
        values: bool = True,
    ) -> tuple[builtins.list[Record], int]:
        """Like ``changes``, but hold on up to ``wait`` seconds for a matching change.

        Answers at once when there are changes already, when ``since`` is past the newest seq
        (the store was reset), or when the node is stopping. Each waiting watch holds a slot of
        ``max_watchers`` (``TooManyWatchers`` beyond it). A commit wakes only the watches on its
        key or on a prefix of it; one woken by several commits looks at the store once.

        The calling thread waits: ``watch_parked``'s looks, with this thread for its park.
        """
        wakeup = _Wakeup()
        look = functools.partial(self.watch_parked, wakeup, since, limit, prefix, key, wait, values)
        try:
            while (answer := look()) is None:
                wakeup.wait()
            return answer
        finally:
            wakeup.done()  # however it ended (done already when it answered)

    def watch_parked(
        self,
        park: Any,
        since: int = 0,
        limit: int = DEFAULT_LIMIT,
        prefix: str = "",
        key: str | None = None,
        wait: float = 0.0,
        values: bool = True,
    ) -> tuple[builtins.list[Record], int] | None:
        """``watch``, for a server that can hold a waiting watch without a thread: one look,
        called again each time ``park`` (a ``navistore.parking.Park``) is set. Returns the answer,
        or None: nothing to answer yet, and ``park.hold()`` was called. A matching commit, the
        node stopping, or ``park.deadline`` then sets the park (as ``watch`` sets a waiting
        thread's ``threading.Event``), and the server calls this again."""
        if wait <= 0:
            return self.changes(since, limit, prefix, key, values)
        first = park.deadline is None
        if first:
            park.deadline = time.monotonic() + wait
            self._add_watch(park, prefix, key)
            counted = False

            def release() -> None:
                if counted:
                    with self._watch_lock:
                        self._watching -= 1
                self._drop_watch(park, prefix, key)

            park.release = release
        try:
            # The first look, after the registration; or a look after a set (cleared before it
            # by the server: a commit during the look sets it again).
            records, last_seq = self._looks.call(since, limit, prefix, key, values)
            if first and not (records or since > last_seq or self.stopping):
                self._count_watch()
                counted = True
        except BaseException:
            park.done()
            raise
        if records or since > last_seq or self.stopping or time.monotonic() >= park.deadline:
            park.done()
            return records, last_seq
        park.hold()
        return None

    def _add_watch(self, woken: Any, prefix: str, key: str | None) -> None:
        """Register ``woken`` (its ``set()`` is called) for commits on ``key``, or under
        ``prefix`` when ``key`` is None."""
        with self._watch_lock:
            if key is not None:
                self._key_watches.setdefault(key, set()).add(woken)
                return
            group = self._prefix_watches.get(prefix)
            if group is None:
                group = self._prefix_watches[prefix] = set()
                lengths = self._prefix_lengths
                lengths[len(prefix)] = lengths.get(len(prefix), 0) + 1
            group.add(woken)

    def _drop_watch(self, woken: Any, prefix: str, key: str | None) -> None:
        watches, name = (
            (self._key_watches, key) if key is not None else (self._prefix_watches, prefix)
        )
        with self._watch_lock:
            group = watches[name]
            group.discard(woken)
            if group:
                return
            del watches[name]
            if key is None:
                lengths = self._prefix_lengths
                lengths[len(prefix)] -= 1
                if not lengths[len(prefix)]:
                    del lengths[len(prefix)]

    def _count_watch(self) -> None:
        """Count a watch that waits, or raise ``TooManyWatchers`` at ``max_watchers``."""
        with self._watch_lock:
            if self._watching >= self.settings.max_watchers:
                raise TooManyWatchers(
                    f"{self._watching} watches are waiting, the limit (max_watchers) is "
                    f"{self.settings.max_watchers}; retry, or poll without wait"
                )
            self._watching += 1

    @property
    def watchers(self) -> int:
        """How many watches are waiting now."""
        return self._watching

    def last_seq(self) -> int:
        return self.store.last_seq()

    def key_count(self) -> int | None:
        """Live keys, when the backend can count them (the optional ``count()`` method)."""
        count = getattr(self.store, "count", None)
        return count() if callable(count) else None

    def disk_bytes(self) -> int | None:
        """What the store takes on disk, when the backend can say (optional ``disk_bytes()``)."""
        measure = getattr(self.store, "disk_bytes", None)
        return measure() if callable(measure) else None

    # -- writes -----------------------------------------------------------------------------

    def put(
        self,
        key: str,
        value: bytes,
        content_type: str | None = None,
        ttl: int | None = None,
        expect: Expect | str = ANY,
    ) -> tuple[Record, Record | None]:
        """Write ``value`` under ``key``; return (stored record, previous live record or None)."""
        record = self.make_record(key, value, content_type, ttl)
        return self._commit(record, expect)

    def delete(self, key: str, expect: Expect | str = PRESENT) -> Record:
        """Delete ``key`` (a tombstone, so it replicates); ``KeyNotFound`` when absent."""
        check_key(key)
        try:
            stored, _ = self._commit(Record(key=key, deleted=True), expect)
        except PreconditionFailed as exc:
            if expect is PRESENT and exc.current is None:
                raise KeyNotFound(f"no key {key!r}") from None
            raise
        return stored

    def check_size(self, size: int) -> None:
        """Raise ``ValueTooLarge`` when a value of ``size`` bytes is over the limit."""
        if size > self.settings.max_value_size:
            raise ValueTooLarge(
                f"the value is {size} bytes; the limit (max_value_size) is "
                f"{self.settings.max_value_size} bytes"
            )

    def delete_prefix(self, prefix: str) -> int:
        """Delete every live key under ``prefix`` (as tombstones, which replicate); count them.

        A page of keys at a time, each page one commit, on the condition that no key in it has
        changed since the page was read; when one has, the newer write stands, and that page's
        keys go one by one. 10,000 keys on sqlite: 0.44 s key by key, 0.12 s a page at a time."""
        if prefix:
            check_key(prefix)
        deleted = 0
        after = ""
        while page := self.store.scan(prefix, after, DEFAULT_LIMIT, values=False):
            after = page[-1].key
            items = [(Record(key=record.key, deleted=True), record.stamp) for record in page]
            try:
                self.commit_many(items)
                deleted += len(items)
                continue
            except PreconditionFailed:
                pass
            for tombstone, stamp in items:
                try:
                    self._commit(tombstone, stamp)
                    deleted += 1
                except PreconditionFailed:
                    pass  # written or deleted meanwhile: the newer write stands
        return deleted

    def make_record(
        self, key: str, value: bytes, content_type: str | None = None, ttl: int | None = None
    ) -> Record:
        """Check a write against the rules and build its (unstamped) record."""
        check_key(key)
        self.check_size(len(value))
        content_type = check_content_type(content_type)
        expires_at = None
        if ttl is not None:
            check_ttl(ttl)
            expires_at = time.time() + ttl
        return Record(key=key, value=value, content_type=content_type, expires_at=expires_at)

    def _commit(self, record: Record, expect: Expect | str) -> tuple[Record, Record | None]:
        for _ in range(_STALE_RETRIES):
            try:
                stamped = record._replace(stamp=self.clock.now())  # no other field changes
                with slots.waiting():  # a commit waits for the disk: another request may run
                    stored, previous = self.store.commit(stamped, expect)
            except StaleStamp as exc:
                # The key holds a newer stamp (a peer's clock runs ahead): stamp again past it.
                self.clock.observe(exc.stored)
                continue
            self.committed(stored, "local")
            return stored, previous
        raise StaleStamp(f"could not stamp a write to {record.key!r} past the stored stamp")

    def commit_many(
        self, items: Sequence[tuple[Record, Expect | str]]
    ) -> builtins.list[tuple[Record, Record | None]]:
        """Commit checked records all or nothing (``PreconditionFailed.index`` names the op)."""
        for _ in range(_STALE_RETRIES):
            stamped = [(record.replace(stamp=self.clock.now()), expect) for record, expect in items]
            try:
                with slots.waiting():
                    results = self.store.commit_many(stamped)
            except StaleStamp as exc:
                self.clock.observe(exc.stored)
                continue
            for stored, _ in results:
                if not isinstance(stored, Check):  # a condition only: nothing was written
                    self.committed(stored, "local")
            return results
        raise StaleStamp("could not stamp the batch past the stored stamps")

    def batch(self, ops: Any) -> builtins.list[Record | None]:
        """Check and commit a batch of put, delete and check operations, all or nothing
        (``POST /v1/batch``). Return what each operation leaves under its key: the record a put
        or delete wrote, or the live record a check found (None: the key is absent).

        Every error names the index of the first operation that failed; nothing is written then.
        A check needs a backend with the ``checks`` capability (``InvalidRequest`` otherwise).
        """
        if not isinstance(ops, list) or not ops:
            raise InvalidRequest('a batch is {"ops": [...]} with 1 to 128 operations')
        if len(ops) > MAX_BATCH_OPS:
            raise InvalidRequest(
                f"a batch holds at most {MAX_BATCH_OPS} operations; this one has {len(ops)}"
            )
        items = []
        for index, op in enumerate(ops):
            try:
                items.append(self._batch_item(op))
            except (InvalidRequest, ValueTooLarge) as exc:
                raise type(exc)(f"operation {index}: {exc.description}", index=index) from None
        try:
            results = self.commit_many(items)
        except PreconditionFailed as exc:
            index = exc.index or 0
            raise PreconditionFailed(
                f"operation {index} ({items[index][0].key!r}): {exc.description}",
                current=exc.current,
                index=index,
            ) from None
        return [live if isinstance(stored, Check) else stored for stored, live in results]

    def _batch_item(self, op: Any) -> tuple[Record, Expect | str]:
        if not isinstance(op, dict):
            raise InvalidRequest("an operation is a JSON object")
        unknown = set(op) - _BATCH_FIELDS
        if unknown:
            raise InvalidRequest(f"unknown fields {', '.join(sorted(unknown))}")
        kind, key = op.get("op"), op.get("key")
        if kind not in ("put", "delete", "check"):
            raise InvalidRequest('"op" must be "put", "delete" or "check"')
        if not isinstance(key, str):
            raise InvalidRequest('"key" must be a string')
        if kind == "check":
            return self._batch_check(op, key)
        expect = _batch_expect(op, PRESENT if kind == "delete" else ANY)
        if kind == "delete":
            check_key(key)
            return Record(key=key, deleted=True), expect
        value = op.get("value", "")
        if not isinstance(value, str):
            raise InvalidRequest('"value" must be a base64 string')
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise InvalidRequest('"value" is not valid base64') from None
        ttl = op.get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int)):
            raise InvalidRequest(f"ttl must be a whole number of seconds from 1 to {MAX_TTL}")
        content_type = op.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise InvalidRequest('"content_type" must be a string')
        return self.make_record(key, raw, content_type, ttl), expect

    def _batch_check(self, op: dict, key: str) -> tuple[Record, Expect | str]:
        """A check operation: a condition on a key that the batch does not write."""
        if "checks" not in self.backend.capabilities:
            raise InvalidRequest(
                f"the {self.backend.name} backend cannot check a key it does not write "
                "(it does not declare the checks capability): write the key with if_match"
            )
        unknown = set(op) - {"op", "key", "if_match", "if_none_match"}
        if unknown:
            raise InvalidRequest(
                f"a check takes if_match or if_none_match, not {', '.join(sorted(unknown))}"
            )
        if op.get("if_match") is None and op.get("if_none_match") is None:
            raise InvalidRequest("a check needs if_match (an etag, or *) or if_none_match (*)")
        check_key(key)
        return Check(key=key), _batch_expect(op, ANY)

    def merge(self, record: Record, origin: str = "peer") -> Record | None:
        """Apply a replicated record: stored only if its stamp wins. Return it, or None."""
        check_key(record.key)
        parse_stamp(record.stamp)
        if self.clock.observe(record.stamp):
            # Ahead of wall time: remember it, so a restart starts the clock past it.
            self.store.meta_set(META_CLOCK, record.stamp)
        with slots.waiting():
            stored = self.store.merge(record)
        if stored is not None:
            self.committed(stored, origin)
        return stored

    def _changed_elsewhere(self, keys: Iterable[str] | None = None) -> None:
        """Another node committed ``keys`` (None: something) to the store we share."""
        if not self._ask_store:  # it may have written an expiry this node should purge on time
            self._ask_store = True
            self._expiry_noted.set()
        self._changed_outside(keys)

    def _changed_outside(self, keys: Iterable[str] | None = None) -> None:
        """The store changed other than by a commit of ours (another node committed ``keys`` to
        the store we share, or a purge turned expired records into tombstones): wake the watches
        on those keys (None: every watch), and replication."""
        self._wake_watches(keys)
        wake = getattr(self.replication, "wake", None)
        if callable(wake):
            wake()

    def committed(self, record: Record, origin: str) -> None:
        """Tell plugins and waiting watches about a commit."""
        if self._key_watches or self._prefix_watches:  # a watch registers before it looks
            self._wake_watches((record.key,))
        if record.expires_at is not None:
            self._note_expiry(record.expires_at)
        try:
            self._committed_hook(node=self, record=record, origin=origin)
        except Exception:  # the write is committed; a plugin's failure must not undo the answer
            log.exception("a navistore_committed hook failed for %r", record.key)

    def _wake_watches(self, keys: Iterable[str] | None) -> None:
        """Wake the watches on any of ``keys`` or on a prefix of one (None: every watch)."""
        with self._watch_lock:
            if keys is None:
                groups = [*self._key_watches.values(), *self._prefix_watches.values()]
            else:
                groups = []
                prefixes, lengths = self._prefix_watches, self._prefix_lengths
                for key in keys:
                    for length in lengths:  # the key's prefixes of the lengths watched
                        if length <= len(key):
                            group = prefixes.get(key[:length])
                            if group is not None:
                                groups.append(group)
                    if key in self._key_watches:
                        groups.append(self._key_watches[key])
            for group in groups:
                for woken in group:
                    woken.set()

    # -- housekeeping -----------------------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Turn the records expired by ``now`` into tombstones, and wake the watches: each is a
        change in the feed. Return how many."""
        now = time.time() if now is None else now
        expired = self.store.purge(now, 0, "")
        if expired:
            self._changed_outside()
        return expired

    def purge(self, now: float | None = None, grace: float | None = None) -> int:
        """Expire records into tombstones, then drop tombstones every peer has and that are older
        than ``grace`` seconds. Record how far the change feed is now incomplete."""
        now = time.time() if now is None else now
        grace = self.settings.tombstone_grace if grace is None else grace
        expired = self.expire(now)
        upto = self.store.last_seq()
        if self.replication is not None and hasattr(self.replication, "purge_upto"):
            upto = min(upto, self.replication.purge_upto())
        before = make_stamp(max(0, int((now - grace) * 1000)), 0, "")
        dropped = self.store.purge(now, upto, before)
        if dropped:
            purged = int(self.store.meta_get(META_PURGED_SEQ) or 0)
            if upto > purged:
                self.store.meta_set(META_PURGED_SEQ, str(upto))
        return expired + dropped

    def _note_expiry(self, expires_at: float) -> None:
        with self._expiries_lock:
            if len(self._expiries) >= MAX_TRACKED_EXPIRIES:
                return  # the store's next_expiry, or the regular purge, takes it
            heapq.heappush(self._expiries, expires_at)
            if self._expiries[0] == expires_at:  # sooner than the purge loop sleeps for
                self._expiry_noted.set()

    def _note_store_expiry(self) -> None:
        """Track the store's soonest expiry too (its optional ``next_expiry``): one this node did
        not commit (before a restart, through another node) or did not track (past the bound)."""
        next_expiry = getattr(self.store, "next_expiry", None)
        if not callable(next_expiry):
            return
        soonest = next_expiry()
        if soonest is None:
            return
        with self._expiries_lock:
            if not self._expiries or soonest < self._expiries[0]:
                heapq.heappush(self._expiries, soonest)  # one entry, even past the bound

    def _purge_loop(self) -> None:
        """The regular purge every ``purge_interval``, and in between, a purge of expiries as they
        fall due: those this node committed, and the store's soonest, asked at start, after each
        purge and after other nodes' commits (at most once every ``EXPIRY_GRANULARITY`` seconds,
        as the expiry purges)."""
        next_purge = time.monotonic() + self.settings.purge_interval
        earliest = 0.0  # monotonic time the next expiry purge may run
        ask_after = 0.0  # monotonic time the store may be asked again
        while True:
            self._expiry_noted.clear()
            if self._ask_store and time.monotonic() >= ask_after:
                self._ask_store = False
                ask_after = time.monotonic() + EXPIRY_GRANULARITY
                try:
                    self._note_store_expiry()
                except Exception:
                    log.exception("could not read the store's next expiry")
            with self._expiries_lock:
                soonest = self._expiries[0] if self._expiries else None
            expire_at = None
            if soonest is not None:
                expire_at = max(time.monotonic() + max(0.0, soonest - time.time()), earliest)
            wake = next_purge
            if expire_at is not None:
                wake = min(wake, expire_at)
            if self._ask_store:
                wake = min(wake, ask_after)
            self._expiry_noted.wait(max(0.0, wake - time.monotonic()))
            if self._stopping.is_set():
                return
            now = time.time()
            try:
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + self.settings.purge_interval
                    self.purge(now)
                elif expire_at is not None and time.monotonic() >= expire_at:
                    earliest = time.monotonic() + EXPIRY_GRANULARITY
                    self.expire(now)
                else:
                    continue  # a sooner expiry was noted, or the store is to be asked
            except Exception:
                log.exception("purge failed; will try again")
                earliest = time.monotonic() + self.settings.purge_interval  # not every second
                continue
            with self._expiries_lock:  # purged: forget what fell due by then
                while self._expiries and self._expiries[0] <= now:
                    heapq.heappop(self._expiries)
            self._ask_store = True  # what falls due next, of what this node did not see written

    # -- reporting --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "store_id": self.store_id,
            "version": __version__,
            "last_seq": self.store.last_seq(),
            "backend": self.backend.name,
            "replicator": self.replicator_name,
            "disk_bytes": self.disk_bytes(),
        }

    def plugins_report(self) -> dict[str, Any]:
        return plugins_report(self.plugins, self.backend.name, self.replicator_name)

    def resolve_if_match(self, key: str, etags: builtins.list[str]) -> str:
        """Turn several If-Match candidates into the one stamp the live record has, or fail."""
        live = self.store.get(key)
        if live is not None and live.stamp in etags:
            return live.stamp
        raise PreconditionFailed(
            "none of the If-Match etags is current" if live else "the key does not exist",
            current=live,
        )


class _Wakeup:
    """What ``Node.watch`` holds in ``watch_parked``'s place of a server's park: a thread that
    waits itself, on an event, until a matching commit, the node stopping or the deadline."""

    __slots__ = ("deadline", "release", "_event")

    def __init__(self) -> None:
        self.deadline: float | None = None  # set by watch_parked at the first look
        self.release: Callable[[], None] | None = None
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def hold(self) -> None:
        pass  # the thread waits in ``wait``

    def done(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()

    def wait(self) -> None:
        """Until set, or the deadline; cleared before the next look, so that a commit during it
        sets it again."""
        assert self.deadline is not None  # watch_parked held it
        self._event.wait(max(0.0, self.deadline - time.monotonic()))
        self._event.clear()


_BATCH_FIELDS = {"op", "key", "value", "content_type", "ttl", "if_match", "if_none_match"}


def _batch_expect(op: dict, default: Expect) -> Expect | str:
    """A batch operation's condition: ``if_match`` (an etag, quotes included, or ``*``) or
    ``if_none_match`` (``*``)."""
    if_match, if_none_match = op.get("if_match"), op.get("if_none_match")
    if if_match is not None and if_none_match is not None:
        raise InvalidRequest("use if_match or if_none_match, not both")
    if if_none_match is not None:
        if if_none_match != "*":
            raise InvalidRequest('if_none_match takes only "*"')
        return ABSENT
    if if_match is None:
        return default
    if if_match == "*":
        return PRESENT
    if not isinstance(if_match, str) or not re.fullmatch(r'"[\x21\x23-\x7e]*"', if_match):
        raise InvalidRequest(
            'if_match must be "*" or an etag with its quotes, like the ETag header'
        )
    return if_match[1:-1]


def largest_request(settings: Settings) -> int:
    """The largest legal request body: a batch (8 MiB), or a replication batch carrying one value
    at the limit in base64. waitress's own cap sits just above it, so the app answers the rest."""
    return max(MAX_BATCH_BYTES, settings.max_value_size * 4 // 3 + 64 * 1024)


def check_ttl(ttl: int) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise InvalidRequest(f"ttl must be a whole number of seconds from 1 to {MAX_TTL}")


def printable_ascii(text: str) -> bool:
    """Whether ``text`` is printable ASCII (U+0020-U+007E): what a content type may hold, as it
    goes back out in a header."""
    return text.isascii() and text.isprintable()


def check_content_type(content_type: str | None) -> str:
    """The content type to store (the default for none); ``InvalidRequest`` unless it is at most
    255 characters of printable ASCII. It goes back out in the Content-Type header of every read,
    and a header carries nothing else: a batch or a peer could send any JSON string. Spaces
    around it go, as they do around a header's value."""
    content_type = content_type.strip(" ") if content_type else content_type
    if not content_type:
        return DEFAULT_CONTENT_TYPE
    if len(content_type) > MAX_CONTENT_TYPE:
        raise InvalidRequest(
            f"the content type is {len(content_type)} characters; the limit is {MAX_CONTENT_TYPE}"
        )
    if not printable_ascii(content_type):
        position, char = next((i, c) for i, c in enumerate(content_type) if not printable_ascii(c))
        raise InvalidRequest(
            f"the content type holds U+{ord(char):04X} at position {position}; a content type "
            "is printable ASCII (U+0020-U+007E), such as text/plain; charset=utf-8"
        )
    return content_type


def within_bytes(records: Sequence[Record], max_bytes: int = MAX_PAGE_VALUE_BYTES) -> list[Record]:
    """The first of ``records`` whose values add up to at most ``max_bytes`` bytes (at least one:
    a page never stops before it starts)."""
    total = 0
    for count, record in enumerate(records):
        total += record.size
        if count and total > max_bytes:
            return list(records[:count])
    return list(records)


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be from 1 to {MAX_LIMIT}")

"""The storage contract: the ``Store`` protocol every backend implements, and ``Backend``.

A backend is a class with the methods of ``Store``, plus a ``Backend`` entry that a plugin returns
from its ``navistore_backends`` hook. Stores are synchronous, thread-safe, and every method is
atomic. They never make stamps: the Node does; a store keeps and compares what it is given.

Optional methods, which the Node uses when a backend has them:

- ``count() -> int``: the number of live keys, for the ``navistore_keys`` metric.
- ``disk_bytes() -> int``: what the store's data takes on disk (its files; a server's tables
  with their indexes), for the ``navistore_store_bytes`` metric and ``/v1/status``: what an
  operator watches to see the disk fill (etcd's ``etcd_mvcc_db_total_size_in_bytes``). Every
  scrape calls it, so it should be cheap.
- ``next_expiry() -> float | None``: the soonest ``expires_at`` of a record not deleted (due or
  not: purge has not run), None when no such record has one. The Node purges expiries as they
  fall due; it tracks those it commits, and with this method it learns of the others: written
  before a restart, through another node of a shared store, or past the number it tracks. It
  asks after every purge, so it should be cheap (an index on ``expires_at``).
- ``claim_node_id(node_id)`` (stores that several nodes share): hold a node id while this process
  runs, raising ``SettingsError`` when a live node holds it. The Node then generates an id per
  process instead of keeping one in the (shared) meta.
- ``subscribe(callback)`` (shared stores): call ``callback(keys)`` after commits made by other
  nodes, so watches and replication wake on their writes. ``keys`` are the keys the commit wrote
  (only the watches on them wake), or None when the store cannot name them (every watch wakes).
  Calling it for this node's own commits as well is harmless, but wasted: the Node saw them.
- ``scan_listing(prefix, after, limit) -> (entries, next)``: a listing page of live keys as
  ``scan(prefix, after, limit, values=False)`` would return it, already as JSON text: ``entries``
  is the JSON array of ``listing_entry(record)`` for each record, ``next`` the page's last key when
  more live keys with the prefix follow, else None. For a store that can write JSON itself (sqlite
  does): building records, then dicts, then JSON in Python cost as much as the rest of a listing
  request. The conformance suite checks it against ``scan``.

An optional attribute, which ``navistore serve`` reads when a backend has it:

- ``quick_commits`` (True or False): True says a commit of one row is quick: it writes to this
  machine and waits for no network and no flush to the disk. Where the event loop serves quick
  reads (the ``local`` capability, and the process may run on several CPUs), it then serves a
  PUT or DELETE of one key itself (``navistore.server.quick_write``), each one commit of its own:
  no request thread, and no hand-over between threads. sqlite says True unless its commits
  flush (synchronous=full or extra): a flush each must be shared by writers in a group commit.

An optional keyword, which the Node passes only to a backend whose method has it:

- ``changes(since, limit, prefix, values=False)``: the same records without their values (None,
  ``size`` still set), as ``scan`` does. A feed request or a watch that does not show values then
  reads none: without it, a page of 1,000 changes of 1 MiB values loaded 1 GB to answer keys and
  etags.

Errors a store raises (all in ``navistore.errors``): ``PreconditionFailed`` when ``expect`` does not
hold, ``StaleStamp`` when ``commit`` gets a stamp not greater than the stored one, ``StoreBusy``
when it is locked or overloaded (retryable), ``StoreFull`` when the disk is full.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from navistore.errors import PreconditionFailed, SettingsError, StaleStamp
from navistore.record import Check, Expect, Record, holds

#: Capabilities a backend may declare. The conformance suite skips (with this reason) what is not.
CAPABILITIES = {
    "ttl": "records expire (expires_at) and purge turns them into tombstones",
    "batch": "commit_many is all or nothing",
    "persistent": "data survives close() and reopening the same URL",
    "concurrent": "several threads may commit at once, each commit atomic",
    "shared": "several stores (nodes) may open one URL at once; seqs stay gap-free among them",
    "checks": "commit_many takes Check items: a condition on a key, nothing written for it",
    "local": "get and the scans read this machine's memory or disks, never the network: "
    "navistore serve may run them in its event loop's thread (navistore.server.quick_read)",
}


@runtime_checkable
class Store(Protocol):
    """What the Node needs from storage. Every method is atomic and safe from any thread."""

    def get(self, key: str) -> Record | None:
        """Return the live record for ``key``: None when absent, deleted or expired."""
        ...

    def commit(self, record: Record, expect: Expect | str) -> tuple[Record, Record | None]:
        """Store a local write or delete if ``expect`` holds against the live record.

        Check and write are one atomic step; raise ``PreconditionFailed`` (with ``current``, the
        live record or None) and change nothing when the check fails. Raise ``StaleStamp`` when the
        record's stamp is not greater than the stamp stored for the key, live or not. Return the
        stored record (with its new seq) and the previous live record, or None.
        """
        ...

    def commit_many(
        self, items: Sequence[tuple[Record, Expect | str]]
    ) -> list[tuple[Record, Record | None]]:
        """Commit several records, all or nothing, in order (a later item sees an earlier one).

        A failing precondition raises ``PreconditionFailed`` with ``index`` set to its position.
        With the ``checks`` capability, an item's record may be a ``Check``: its condition holds
        or the whole call fails as for a write, nothing is written for it (no seq, no stamp
        check), and its answer is (the ``Check``, the live record it found or None).
        """
        ...

    def merge(self, record: Record) -> Record | None:
        """Store a replicated record if its stamp is greater than the stored one's, else ignore it.

        Tombstones and expired records count as stored. Idempotent. Return the stored record, with
        its new seq, or None when it lost.
        """
        ...

    def scan(
        self, prefix: str = "", after: str = "", limit: int = 100, values: bool = True
    ) -> list[Record]:
        """Return up to ``limit`` live records whose key starts with ``prefix`` and sorts after
        ``after``, in bytewise UTF-8 key order. ``values=False`` returns records whose value is
        None (``size`` still set), so a listing never loads values."""
        ...

    def changes(self, since: int = 0, limit: int = 100, prefix: str = "") -> list[Record]:
        """Return records with seq greater than ``since``, in seq order, tombstones and expired
        records included. Only the newest version of each key needs to remain."""
        ...

    def last_seq(self) -> int:
        """Return the newest seq this store handed out (0 for a new store)."""
        ...

    def meta_get(self, name: str) -> str | None:
        """Return a small durable value, or None."""
        ...

    def meta_set(self, name: str, value: str) -> None:
        """Store a small durable value."""
        ...

    def purge(self, now: float, tombstones_upto_seq: int, tombstones_before_stamp: str) -> int:
        """Turn records expired at ``now`` into tombstones (same stamp, new seq), then drop
        tombstones with seq <= ``tombstones_upto_seq`` and stamp < ``tombstones_before_stamp``.
        Return how many records changed or went. Seqs are never reused afterwards. A store may
        do it in several transactions (the same as several purges in a row: each expired record
        is a tombstone or not yet, and reads do not show it either way), so that writers need
        not wait for a large one; sqlite does, 500 rows at a time."""
        ...

    def close(self) -> None:
        """Release everything; the store is not used again."""
        ...


def listing_entry(record: Record) -> dict[str, Any]:
    """A key as a listing shows it (``GET /v1/keys``)."""
    return {
        "key": record.key,
        "etag": record.etag,
        "size": record.size,
        "content_type": record.content_type,
        "expires_at": record.expires_at,
    }


#: JSON as the API writes it: compact, UTF-8 as is, no cycle check (bodies are plain data). One
#: encoder made once: ``json.dumps`` with options builds a new one per call (1.75 us against 1.0
#: for a write's small answer).
dump_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def scan_page(store: Store, prefix: str, after: str, limit: int) -> tuple[list[Record], str | None]:
    """A listing page from ``store.scan`` (without values): up to ``limit`` live records, and the
    last one's key when more follow (else None)."""
    records = store.scan(prefix, after, limit + 1, values=False)
    more = len(records) > limit
    records = records[:limit]
    return records, (records[-1].key if more else None)


def listing_json(records: Sequence[Record]) -> str:
    """The JSON array of ``listing_entry`` for ``records``: what ``scan_listing`` returns."""
    return dump_json([listing_entry(record) for record in records])


@dataclasses.dataclass(frozen=True)
class Backend:
    """A storage backend, as a plugin's ``navistore_backends`` hook returns it.

    ``factory(url)`` opens a Store for a URL with one of ``schemes``; ``capabilities`` names the
    optional features it has (see ``CAPABILITIES``).
    """

    name: str
    schemes: tuple[str, ...]
    factory: Callable[[str], Store]
    description: str = ""
    capabilities: AbstractSet[str] = frozenset()  # kept as a frozenset

    def __post_init__(self) -> None:
        object.__setattr__(self, "schemes", tuple(self.schemes))
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))


def check_precondition(expect: Expect | str, live: Record | None, index: int | None = None) -> None:
    """Raise ``PreconditionFailed`` unless ``expect`` holds against ``live``: for backends."""
    if not holds(expect, live):
        if expect is Expect.ABSENT:
            why = "the key exists"
        elif live is None:
            why = "the key does not exist"
        else:
            why = f"the current etag is {live.etag}"
        raise PreconditionFailed(why, current=live, index=index)


def check_write(
    record: Record,
    stored: Record | None,
    expect: Expect | str,
    now: float,
    index: int | None = None,
) -> Record | None:
    """The checks of ``commit`` against what the store holds for the key (live or not): raise
    ``PreconditionFailed`` or ``StaleStamp``; return the live record (None when there is none).
    A ``Check`` writes nothing, so only its condition counts, not its stamp."""
    live = stored if stored is not None and stored.live(now) else None
    check_precondition(expect, live, index)
    if stored is not None and record.stamp <= stored.stamp and not isinstance(record, Check):
        raise StaleStamp(
            f"stamp {record.stamp} is not newer than {stored.stamp}", stored=stored.stamp
        )
    return live


def check_writes(
    items: Sequence[tuple[Record, Expect | str]],
    current: dict[str, Record | None],
    now: float,
) -> list[tuple[Record, Record | None]]:
    """One writer's checks (``commit_many``'s items), each item against what its key holds after
    the writer's items before it, for a backend that commits several writers in one transaction:
    ``current`` is what the store holds for every key (None: nothing). Raise as ``check_write``
    does, naming the item's index in a batch; return (record, live record it replaces) per item.
    A ``Check`` item is held to its condition only, and is not to be written (see ``commit_many``).
    ``current`` is left as it was: the caller writes the items, then records them there."""
    results = []
    mine: dict[str, Record] = {}
    for index, (record, expect) in enumerate(items):
        stored = mine.get(record.key) or current[record.key]
        live = check_write(record, stored, expect, now, index if len(items) > 1 else None)
        if not isinstance(record, Check):
            mine[record.key] = record
        results.append((record, live))
    return results


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with ``prefix``.

    None when there is none (empty prefix, or all 0xff). UTF-8 never contains 0xff, so for encoded
    keys this is simply the prefix with its last byte incremented.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def url_scheme(url: str) -> str:
    """The scheme of a store URL (``sqlite`` in ``sqlite:///navistore.db``)."""
    scheme = urlsplit(url).scheme
    if not scheme or "://" not in url:
        raise SettingsError(
            f"store: {url!r} is not a store URL; write it as scheme://..., "
            "for example sqlite:///navistore.db"
        )
    return scheme.lower()

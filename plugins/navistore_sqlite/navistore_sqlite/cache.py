"""A read cache for SqliteStore.get that never serves a value older than the last commit.

A commit runs inside ``committing()``, which bumps the generation and marks a commit in flight;
under the store's write lock, before its COMMIT, the commit ``take``s its keys out of the cache
(learning what was cached for them); afterwards ``committing`` puts the committed records in and
bumps the generation again. A read that missed fills the cache only if the generation did not move
while it read and no commit is in flight: a read that raced a commit goes to sqlite, as if there
were no cache. (Without the in-flight rule, a read that saw the old row just before a COMMIT could
fill the cache between the COMMIT and the update, while another reader had already seen the new
row.) So, under the write lock, what the cache holds for a key is what the database holds, and
a commit need not read back the rows it found cached. The store's file is locked to one process
(see SqliteStore), so every commit goes through here.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable
from typing import Any

from navistore.record import Record

_MISS = object()
_OVERHEAD = 400  # bytes a cached entry costs beyond its key and value, roughly


class ReadCache:
    def __init__(self, budget_bytes: int = 32 * 1024 * 1024) -> None:
        self.budget = budget_bytes
        self.generation = 0
        # FIFO eviction from an OrderedDict: popping a plain dict's oldest entry with
        # next(iter(...)) walks over the holes earlier pops left at its front, 20 us an eviction
        # with 66,000 entries (every read that missed, on a store bigger than the cache).
        self._entries: collections.OrderedDict[str, Record | None] = collections.OrderedDict()
        self._bytes = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    def lookup(self, key: str) -> object:
        """The cached record (None: known absent), or ``MISS``."""
        return self._entries.get(key, _MISS)

    def fill(self, key: str, record: Record | None, generation: int) -> None:
        """Cache what a read found, unless a commit began, ended or is running since it began."""
        with self._lock:
            if generation == self.generation and not self._in_flight:
                self._put(key, record)

    def committing(self) -> _Committing:
        """Wrap a commit (``with cache.committing() as committed``); append the committed
        records to the list it yields."""
        return _Committing(self)

    def take(self, keys: Iterable[str]) -> dict[str, Record | None]:
        """Drop ``keys`` (inside ``committing``, under the write lock, before the COMMIT) and
        return what was cached for them: the database's rows, None for a known-absent key."""
        known: dict[str, Record | None] = {}
        with self._lock:
            for key in keys:
                entry: Any = self._entries.get(key, _MISS)
                if entry is not _MISS:
                    known[key] = entry
                    self._drop(key)
        return known

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()
            self._bytes = 0

    def _cost(self, key: str, record: Record | None) -> int:
        return len(key) + _OVERHEAD + (record.size if record is not None else 0)

    def _drop(self, key: str) -> None:
        old: Any = self._entries.pop(key, _MISS)
        if old is not _MISS:
            self._bytes -= self._cost(key, old)

    def _put(self, key: str, record: Record | None) -> None:
        self._drop(key)
        cost = self._cost(key, record)
        if cost > self.budget:
            return
        self._entries[key] = record
        self._bytes += cost
        while self._bytes > self.budget:  # oldest first
            oldest, record = self._entries.popitem(last=False)
            self._bytes -= self._cost(oldest, record)


class _Committing:
    """``ReadCache.committing``: a class rather than a generator, as it wraps every commit (about
    1 us less to enter and leave than a ``contextlib.contextmanager``)."""

    __slots__ = ("_cache", "_records")

    def __init__(self, cache: ReadCache) -> None:
        self._cache = cache
        self._records: list[Record] = []

    def __enter__(self) -> list[Record]:
        cache = self._cache
        with cache._lock:
            cache.generation += 1
            cache._in_flight += 1
        return self._records

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        cache = self._cache
        committed = self._records if exc_type is None else ()  # nothing committed: cache nothing
        with cache._lock:
            cache.generation += 1
            cache._in_flight -= 1
            for record in committed:
                cache._put(record.key, record)


MISS = _MISS

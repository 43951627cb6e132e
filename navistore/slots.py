"""Run slots: how many requests run Python at once, and how a request gives its slot up to wait.

Python runs one thread at a time (the GIL). Every thread that gives the GIL up (for a socket, or a
step of sqlite) and takes it back waits behind the other runnable threads, and the hand-over costs
a context switch or two: with 8 requests running at once, a GET on a store whose keys miss the
read cache cost 60-70 us more CPU than one that hits. So ``navistore serve`` runs only a few
ordinary requests at once (``navistore.server.Dispatcher``), and a request that waits for
something slow, a commit above all, steps aside while it waits: ``with waiting(): ...``. So does a
request that works on megabytes (a page of values, a batch), so that it cannot hold the few slots
while small requests queue behind it (``bench/heavy_readers.py``). Outside a request that holds a
slot (a replication thread, a test), ``waiting`` does nothing.
"""

from __future__ import annotations

import threading
from typing import Protocol


class SlotPool(Protocol):
    def crowded(self) -> bool:
        """Whether requests besides the current one are in hand or waiting for a thread (a hint,
        read without a lock)."""

    def pause(self) -> None:
        """The current request waits: its slot may go to another request meanwhile."""

    def resume(self) -> None:
        """The current request runs again (it does not wait for a slot to do so)."""


_local = threading.local()


def hold(pool: SlotPool | None) -> None:
    """Mark the current thread as running a request in one of ``pool``'s slots (None: not)."""
    _local.pool = pool


def crowded() -> bool:
    """Whether other requests are in hand besides the current one, or waiting for a thread: a
    hint (read without a lock) that a store may wait for company, to commit several writers at
    once, rather than commit a write alone. Outside a request that holds a slot, False (and for
    a pool that cannot tell)."""
    pool = getattr(_local, "pool", None)
    crowded = getattr(pool, "crowded", None)
    return crowded is not None and crowded()


class waiting:  # lowercase: used as a function, ``with waiting(): ...``
    """Wrap a wait for I/O (a commit, a database round trip) in a request. Nested waits (a store
    that wraps its own round trips, inside Node's wrap of a commit) step aside once.

    A class rather than a generator: it wraps every commit, and entering and leaving a
    ``contextlib.contextmanager`` costs about 1 us more."""

    __slots__ = ("_pool",)

    def __enter__(self) -> None:
        pool = getattr(_local, "pool", None)
        if pool is None or getattr(_local, "paused", False):
            self._pool = None
            return
        pool.pause()
        _local.paused = True
        self._pool = pool

    def __exit__(self, *exc_info: object) -> None:
        pool = self._pool
        if pool is not None:
            _local.paused = False
            pool.resume()

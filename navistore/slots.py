"""Run slots: how many requests run Python at once, and how a request gives its slot up to wait.

Python runs one thread at a time (the GIL). Every thread that gives the GIL up (for a socket, or a
step of sqlite) and takes it back waits behind the other runnable threads, and the hand-over costs
a context switch or two: with 8 requests running at once, a GET on a store whose keys miss the
read cache cost 60-70 us more CPU than one that hits. So ``navistore serve`` runs only a few
ordinary requests at once (``navistore.server.Dispatcher``), and a request that waits for
something slow, a commit above all, steps aside while it waits: ``with waiting(): ...``. Outside
a request that holds a slot (a replication thread, a test), ``waiting`` does nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
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


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Wrap a wait for I/O (a commit, a database round trip) in a request. Nested waits (a store
    that wraps its own round trips, inside Node's wrap of a commit) step aside once."""
    pool = getattr(_local, "pool", None)
    if pool is None or getattr(_local, "paused", False):
        yield
        return
    pool.pause()
    _local.paused = True
    try:
        yield
    finally:
        _local.paused = False
        pool.resume()

"""Writes the event loop serves in one turn, committed together: a group commit with no thread.

Where the event loop serves writes of one key itself (``navistore.server.quick_commits``), it
serves each in a greenlet of its own (``Turn.serve``). A store that commits in groups asks, in its
commit, whether the request may wait for the turn to end (``may_wait``); if so, it queues the
write and waits (``wait_for``), and the loop serves the next request of the turn. When the turn
has served every request it was handed (or 16 writes wait), the loop runs each store's flush once
(``Turn.end``), which commits every write queued in one group, and lets the waiting requests go
on, each to answer with the outcome of its own write. Nothing is answered before the commit that
holds it.

Why: a write the loop served was a commit of its own, one trip into sqlite each (about 50 us of CPU
in the server). The writes that arrive in one turn now share a commit, up to
``navistore.eventloop.WRITES_A_COMMIT`` (16) of them: anywhere on 2 cores that wrk shares, PUT of
1,000 keys went from 4,590 to 5,441 req/s at 16 connections and from 4,710 to 5,468 at 64 (0.51x
-> 0.61x and 0.54x -> 0.64x of the stub), at 180 us of CPU a PUT against 210; p99 at 64
connections 20.1 -> 18.2 ms (one server of each, in the same run, ``bench/load.py``'s load).
Committing a whole turn at once (up to 64 writes) bought 2-7% more and took p99 at 64 connections
to 24-26 ms, over 3x the stub's. A thread could group writes only by waking another thread, and
each hand-over between threads on two CPUs wakes the other CPU (see
``navistore.server.loop_serves_reads``); a greenlet switch is a few stack copies.

A greenlet shares its thread's ``threading.local`` with every other greenlet of the thread: what a
request keeps there (``navistore.eventloop.serving``) the loop sets again before it lets the
request go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import greenlet  # type: ignore[import-untyped]  # ships no types

log = logging.getLogger(__name__)


class _Served(greenlet.greenlet):
    """A request the loop serves in a turn: it may wait for the turn's end (``wait_for``)."""

    def __init__(self, run: Callable[[], None], turn: Turn) -> None:
        super().__init__(run)
        self.turn = turn


class Turn:
    """The writes one turn of the event loop serves. ``serve`` each, then ``end`` the turn."""

    def __init__(self) -> None:
        self._flushes: dict[Callable[[], None], None] = {}  # in the order first asked for
        #: The requests that wait for the turn's end, each with what the loop serves it for.
        self.waiting: list[tuple[_Served, Any]] = []

    def serve(self, run: Callable[[], None], tag: Any) -> bool:
        """Run ``run`` (a request) until it finishes or waits for the turn's end (``wait_for``):
        True if it finished. One that waits is in ``waiting``, with ``tag``."""
        served = _Served(run, self)
        served.switch()
        if served.dead:
            return True
        self.waiting.append((served, tag))
        return False

    def end(self) -> list[tuple[_Served, Any]]:
        """Run each flush asked for, once, in the order first asked for; then hand back the
        requests that wait, each with its tag, for the loop to let go on (``go_on``)."""
        flushes, self._flushes = self._flushes, {}
        for flush in flushes:
            try:
                flush()
            except Exception:  # a flush hands its errors to its writers: this is a bug
                log.exception("a flush at the end of the event loop's turn failed")
        waiting, self.waiting = self.waiting, []
        return waiting

    def go_on(self, served: _Served, tag: Any) -> bool:
        """Let a request that waited go on: True if it finished. One that waits again (a write
        retried) is in ``waiting`` again, for the next ``end``."""
        served.switch()
        if served.dead:
            return True
        self.waiting.append((served, tag))
        return False


def may_wait() -> bool:
    """Whether the current request may wait for the end of the event loop's turn (``wait_for``):
    it is one the loop serves in a turn (``Turn.serve``)."""
    return isinstance(greenlet.getcurrent(), _Served)


def wait_for(flush: Callable[[], None]) -> None:
    """Wait for the end of the loop's turn, when the loop runs ``flush`` (once, however many
    requests of the turn asked for it; equal bound methods are one flush). Call only where
    ``may_wait``. ``flush`` must not raise: it hands each writer its outcome."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Served):
        raise RuntimeError("only a request the event loop serves in a turn may wait for its end")
    current.turn._flushes[flush] = None
    current.parent.switch()

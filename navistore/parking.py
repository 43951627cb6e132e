"""Watches that wait without a thread: held by the event loop between their looks at the store.

A watch (``GET /v1/changes?wait=SECONDS``) that finds nothing new used to wait in the thread that
served it, so a server had as many watches as threads to spare: ``max_watchers`` was 32, and each
machine of a fleet that follows its configuration holds a watch. Under ``navistore serve`` the
request now lets its thread go instead:

1. A thread serves the request as any other. The app's look finds nothing, so it registers the
   watch's ``Park`` with the node (a matching commit calls ``park.set()``, as it sets a waiting
   thread's ``threading.Event``) and ``hold``s it: the app returns, the task raises ``Parked``
   before anything is written, and ``Channel.service`` (``navistore.server``) lets the thread go,
   with the request still first in its connection's queue.
2. A matching commit, the node stopping, or the deadline (``Deadlines``, fired by the loop in
   ``navistore.server.poll_once``) hands the connection to the thread pool again, and the app
   looks again: it answers, or holds the park once more (woken by a change it does not match).

While held, the connection is readable, so a client that hangs up is seen at once and its watch
dropped (a thread waiting could not tell). Each park is in one of four states, under its lock:
``RUNNING`` (a thread serves it), ``HELD`` (no thread), ``QUEUED`` (handed to the pool), ``CLOSED``
(its connection closed: the watch is dropped, by its thread if one serves it). A set while it runs
is remembered and hands it back as soon as its thread lets go, so no commit between a look and the
hold is missed.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from waitress.task import WSGITask

#: The WSGI environ key of a watch request's ``Park``, where the server can hold watches.
PARK = "navistore.park"

RUNNING, HELD, QUEUED, CLOSED = "running", "held", "queued", "closed"


class Parked(BaseException):
    """Raised by the task of a watch that holds its park, after the app returned and before
    anything is written, up to ``Channel.service``. A BaseException, so that waitress's handlers
    (which answer 500 to an ``Exception``) let it through."""

    def __init__(self, park: Park) -> None:
        super().__init__()
        self.park = park


class Park:
    """One watch request, from its first look to its answer."""

    __slots__ = (
        "_channel",
        "_deadlines",
        "_lock",
        "_state",
        "_pending",
        "holding",
        "deadline",
        "started",
        "release",
        "_timed",
    )

    def __init__(self, channel: Any, deadlines: Deadlines) -> None:
        self._channel = channel
        self._deadlines = deadlines
        self._lock = threading.Lock()
        self._state = RUNNING
        self._pending = False  # set while running: hand it back as soon as it lets go
        #: Whether the app held the park in the current look (the task then raises ``Parked``).
        self.holding = False
        #: When the wait ends (``time.monotonic``), set by the node at the first look.
        self.deadline: float | None = None
        #: When the request came (``time.perf_counter``), for its duration in metrics and logs.
        self.started = time.perf_counter()
        #: Set by the node that registered the watch: unregisters it (called once, at the end).
        self.release: Callable[[], None] | None = None
        self._timed = False  # its deadline is in ``Deadlines``

    # -- what the node calls ------------------------------------------------------------------

    def set(self) -> None:
        """A matching change committed, the node stops, or the deadline came: look again."""
        with self._lock:
            if self._state == RUNNING:
                self._pending = True
                return
            if self._state != HELD:
                return
            self._state = QUEUED
        self._channel.server.add_task(self._channel)

    def hold(self) -> None:
        """Wait without a thread until ``set`` (or the deadline): the app returns, answering
        nothing yet."""
        if not self._timed and self.deadline is not None:
            self._deadlines.add(self.deadline, self)
            self._timed = True
        self.holding = True

    def done(self) -> None:
        """The watch answers (or is dropped): unregister it from the node, once."""
        release, self.release = self.release, None
        if release is not None:
            release()
            if self._timed:
                self._deadlines.discard()

    # -- what the server calls ----------------------------------------------------------------

    def running(self) -> None:
        """A thread takes the request up (again)."""
        with self._lock:
            if self._state != CLOSED:
                self._state = RUNNING
            self._pending = False
        self.holding = False

    def let_go(self) -> None:
        """The thread lets the held request go: it waits with no thread, or, if set while it ran,
        goes back to the pool at once."""
        with self._lock:
            if self._state == CLOSED:
                closed = True
            elif self._pending:
                self._pending, self._state, closed = False, QUEUED, False
            else:
                self._state, closed = HELD, False
                return
        if closed:
            self.done()
        else:
            self._channel.server.add_task(self._channel)

    def waiting(self) -> bool:
        """Whether no thread serves it (held, or queued for a thread)."""
        return self._state in (HELD, QUEUED)

    def close(self) -> None:
        """The connection closed: drop the watch (its thread does, if one serves it now)."""
        with self._lock:
            state, self._state = self._state, CLOSED
        if state != RUNNING:
            self.done()


class Deadlines:
    """The held watches' deadlines, soonest first, fired by the server's loop (``poll_once``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, Park]] = []
        self._order = itertools.count()
        self._stale = 0  # entries of parks done before their deadline, dropped now and then

    def add(self, deadline: float, park: Park) -> None:
        with self._lock:
            heapq.heappush(self._heap, (deadline, next(self._order), park))

    def discard(self) -> None:
        """A park with an entry (or none) is done: count it, and drop the entries of parks done
        once they are half the heap, so a fleet re-watching often does not grow it."""
        with self._lock:
            self._stale += 1
            if self._stale > 64 and 2 * self._stale > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2].release is not None]
                heapq.heapify(self._heap)
                self._stale = 0

    def timeout(self, longest: float) -> float:
        """How long the loop may wait for events: at most ``longest``, and not past the soonest
        deadline."""
        heap = self._heap
        if not heap:
            return longest
        return max(0.0, min(longest, heap[0][0] - time.monotonic()))

    def fire(self) -> None:
        """Hand the watches whose deadline came back to the pool, to answer."""
        if not self._heap:
            return
        now = time.monotonic()
        due: list[Park] = []
        with self._lock:
            heap = self._heap
            while heap and heap[0][0] <= now:
                due.append(heapq.heappop(heap)[2])
        for park in due:
            park.set()

    def __len__(self) -> int:
        return len(self._heap)


def is_watch(request: Any) -> bool:
    """Whether a waitress request is a watch (``/v1/changes`` with ``wait``): names decoded as the
    app decodes them, so that a watch spelled ``%77ait=`` cannot take an ordinary request's
    slot."""
    if getattr(request, "path", None) != "/v1/changes":  # waitress has unquoted it
        return False
    if getattr(request, "navistore_park", None) is not None:
        return True
    query = getattr(request, "query", "") or ""
    return "wait" in urllib.parse.parse_qs(query, keep_blank_values=True)


def first_request(task: Any) -> Any:
    """The request a task handed to the pool is for: a connection's first in hand (its
    ``request`` is the next one, still arriving, once the first is complete), or a task's own."""
    requests = getattr(task, "requests", None)
    return requests[0] if requests else getattr(task, "request", None)


class ParkingTask(WSGITask):
    """waitress's WSGI task, giving a watch request its ``Park`` (kept on the request, so that the
    same one comes back at each look) and raising ``Parked`` when the app held it."""

    park: Park | None = None

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        request = self.request
        if request.path != "/v1/changes":  # the rest pay one comparison
            return environ
        park = getattr(request, "navistore_park", None)
        if park is None and is_watch(request):
            park = request.navistore_park = Park(self.channel, self.channel.server.deadlines)
        if park is not None:
            park.running()
            self.channel.__dict__.pop("readable", None)  # see Channel.service
            environ[PARK] = self.park = park
        return environ

    def execute(self) -> None:
        try:
            super().execute()
        except BaseException:
            if self.park is not None:  # whatever failed, the watch waits no more
                self.park.holding = False
                self.park.done()
            raise
        park = self.park
        if park is not None:
            if park.holding:
                raise Parked(park)
            park.done()  # answered, by the node or by an error before it: registered no more

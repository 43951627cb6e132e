"""waitress's event loop, turned by the connections that changed rather than by all of them.

Each turn, waitress's own loop (``wasyncore.poll2``) asks every open connection whether it wants to
read or to write, and registers each with a fresh ``poll()``: Python work for every connection,
busy or idle, on every turn. The idle keep-alive connections of a fleet of clients then tax every
request: beside 5,000 idle ones, GET at 16 connections kept 0.13x of its throughput
(``bench/connections.py``; 0.46x beside 1,000).

This loop keeps one epoll set from turn to turn and looks again only at what may have changed:

- a connection that had an event in the turn before (waitress's handlers change its state);
- a new connection (``add_channel``);
- a connection a request thread served: the thread wakes the loop through ``pull_trigger`` after
  every change it makes to its connection, so that pull marks the connection the thread is serving
  (``serving``);
- the connections waitress's maintenance marks to close, idle too long (it runs every
  ``cleanup_interval``);
- the listening sockets and the trigger, which are few, every turn.

Events are handed on only as ``poll2`` would: a connection that wants neither to read nor to
write (a request of its own is being served) is not told of a hang-up or of more data until it
wants to read again. It stays in the set meanwhile, and comes out only if such an event comes:
three epoll calls a request fewer. An answer is sent as soon as it is ready, without waiting for
epoll to say the socket has room (it nearly always has); only if it had not does the socket wait
for room. Linux only (epoll); elsewhere waitress's loop runs.

The loop can also serve a request itself, between turns (``serve_soon``), with no request thread:
the server hands it the reads of one key, and listing pages of keys, where the process may run
on several CPUs (see ``navistore.server.Dispatcher``), and writes of one key where the store's
commits are quick; the writes of one turn commit together (``navistore.turns``). A request
thread would take the GIL from the loop's thread, and give it back, on another CPU: a context
switch each way, each an interrupt across CPUs.
"""

from __future__ import annotations

import collections
import contextlib
import select
import threading
from typing import Any

from waitress.wasyncore import readwrite

from navistore.turns import Turn

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
#: The writes the loop serves before it commits them together and answers them (see
#: ``navistore.turns``): a write waits for those served after it in the turn.
WRITES_A_COMMIT = 16
_WRITES = frozenset(("PUT", "DELETE"))  # what the loop may be handed to write (quick_write)
#: Connections a listening socket takes in one turn at most. waitress takes one an event, and a
#: turn lasts as long as the requests the loop serves in it: wrk opening 64 connections at once
#: on a server whose loop serves listing pages took them in one a turn, each turn longer than the
#: last, and their first requests waited up to 500 ms (p99 over 5 s: 198-209 ms, against 15-17
#: with this; GET on 1,000,000 keys 58-87 ms against 10.3-10.6).
ACCEPTS_PER_TURN = 64
_local = threading.local()


def serving(channel: Any) -> None:
    """Mark the current thread as serving ``channel`` (None: none), for the loop's pull_trigger."""
    _local.channel = channel


class EventLoop:
    """One epoll set over waitress's socket map. ``install`` it on a waitress server, and call
    ``turn`` where waitress's ``loop(count=1)`` was called."""

    def __init__(self, socket_map: dict[int, Any]) -> None:
        self._map = socket_map
        self._epoll = select.epoll()
        # fd: (dispatcher, the events registered, the events it wanted when last looked at)
        self._registered: dict[int, tuple[Any, int, int]] = {}
        # Listening sockets and the trigger: everything in the map before the first connection.
        self._fixed = list(socket_map.values())
        self._changed: collections.deque = collections.deque()  # appended from any thread
        self._soon: collections.deque = collections.deque()  # served by the loop (serve_soon)
        self._thread: int | None = None  # the thread that turns the loop
        #: The server's thread pool (``navistore.server.Dispatcher``), where a read the loop was
        #: handed goes when the loop may not serve it (``serve_soon``).
        self.pool: Any = None
        #: Whether the writes the loop serves in a turn may wait for its end, to commit together
        #: (``navistore.turns``; set where the store commits in groups).
        self.batches_writes = False

    @staticmethod
    def available() -> bool:
        return hasattr(select, "epoll")

    def install(self, server: Any) -> None:
        """Hook the loop into ``server`` (a waitress ``BaseWSGIServer``): its connections tell the
        loop when they open and close, request threads mark what they served, and waitress's
        maintenance marks the connections it times out."""
        server.event_loop = self
        trigger = server.pull_trigger
        maintenance = server.maintenance

        def pull_trigger() -> None:
            channel = getattr(_local, "channel", None)
            if channel is not None:
                self._changed.append(channel)  # before the pull, so the turn it wakes sees it
                if self.in_loop():
                    return  # served by the loop itself (serve_soon), which looks at it next
            trigger()

        def maintain(now: float) -> None:
            maintenance(now)  # marks the connections idle too long to close
            self._changed.extend([c for c in server.active_channels.values() if c.will_close])

        server.pull_trigger = pull_trigger
        server.maintenance = maintain

    def in_loop(self) -> bool:
        """Whether the current thread is the one that turns the loop."""
        return self._thread == threading.get_ident()

    def serve_soon(self, channel: Any) -> None:
        """Serve ``channel``'s request in this turn, after its events, in the loop's thread
        (call from that thread: ``in_loop``)."""
        self._soon.append(channel)

    def _serve(self) -> None:
        """Serve what was handed to the loop (``serve_soon``). With ``batches_writes``, each
        write in a greenlet of its own (``navistore.turns``): a write that waits for its commit
        lets the loop serve the next request, and at the end the writes commit together."""
        soon = self._soon
        turn = Turn() if self.batches_writes else None
        while True:
            while soon:
                channel = soon.popleft()
                if (
                    len(channel.requests) != 1
                    or channel.total_outbufs_len
                    or not channel.connected
                    or not self.pool.loop_may_serve()
                ):
                    # A thread may have to wait for the answers before it to drain (waitress's
                    # outbuf_high_watermark): the loop cannot, as it is what sends them. And
                    # since the read was handed over, another request may have gone to a thread.
                    self.pool.to_pool(channel)
                    continue
                if turn is not None and channel.requests[0].command in _WRITES:
                    if not turn.serve(channel.service, channel):
                        if len(turn.waiting) >= WRITES_A_COMMIT:
                            break  # commit these now, and answer them, before serving more
                        continue  # it waits for its commit, at the end of the turn
                else:
                    channel.service()  # a request behind it comes back through serve_soon
                self._look(channel)  # and the answer goes out now
            if turn is None or not turn.waiting:
                return
            for served, channel in turn.end():  # the commits, then the answers
                serving(channel)  # Channel.service set it, and the next request unset it
                if turn.go_on(served, channel):
                    self._look(channel)

    def _accept(self, listener: Any) -> None:
        """Take the connections waiting on ``listener``, up to ``ACCEPTS_PER_TURN`` and within
        waitress's ``connection_limit`` (which its ``readable`` keeps), one ``handle_accept``
        each, as waitress does."""
        for _ in range(ACCEPTS_PER_TURN):
            known = len(self._map)
            readwrite(listener, _READ)
            if len(self._map) == known or not listener.readable():
                return  # none was waiting (or it failed), or the limit is reached

    def opened(self, channel: Any) -> None:
        self._changed.append(channel)

    def closing(self, channel: Any) -> None:
        """``channel`` leaves the map (before its socket closes, while it still has its fd)."""
        fd = channel._fileno
        known = self._registered.get(fd)
        if known is not None and known[0] is channel:
            del self._registered[fd]
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def close(self) -> None:
        self._epoll.close()

    def _look(self, dispatcher: Any, exact: bool = False) -> None:
        """Bring ``dispatcher``'s registration in line with what it wants now. An answer waiting
        to go out is sent at once (the socket can nearly always take it), and the socket waits
        for room only if it could not. A connection that stops wanting to read (a request came
        in) keeps its registration unless ``exact``: it is put right only if an event comes that
        it does not want, which saves three epoll calls a request."""
        fd = dispatcher._fileno
        if fd is None or self._map.get(fd) is not dispatcher:
            return  # closed (``closing`` dropped it), or a listener taken out of the map
        wants = self._wants(dispatcher)
        if wants & _WRITE:
            readwrite(dispatcher, _WRITE)
            if self._map.get(fd) is not dispatcher:
                return  # the write closed it
            wants = self._wants(dispatcher)
        known = self._registered.get(fd)
        if known is None or known[0] is not dispatcher:  # new, or a reused fd's old entry
            known = None
        have = 0 if known is None else known[1]
        events = wants if exact else wants | (have & _READ)
        if known is not None and events == have:
            if known[2] != wants:
                self._registered[fd] = (dispatcher, have, wants)
            return
        self._set(fd, dispatcher, events, wants)

    def _set(self, fd: int, dispatcher: Any, events: int, wants: int) -> None:
        """Register ``fd`` for ``events`` (none: leave it out), whatever epoll holds for it now:
        the kernel drops a socket closed without ``closing`` (a listener at shutdown), and a new
        socket may take its fd."""
        epoll = self._epoll
        if not events:
            self._registered.pop(fd, None)
            with contextlib.suppress(OSError):
                epoll.unregister(fd)
            return
        try:
            epoll.modify(fd, events)
        except FileNotFoundError:  # not registered
            epoll.register(fd, events)
        self._registered[fd] = (dispatcher, events, wants)

    @staticmethod
    def _wants(dispatcher: Any) -> int:
        events = _READ if dispatcher.readable() else 0
        if dispatcher.writable() and not dispatcher.accepting:
            events |= _WRITE
        return events

    def turn(self, timeout: float) -> None:
        """One turn: look at what may have changed, wait up to ``timeout`` seconds for events,
        and hand each to its dispatcher, as ``wasyncore.poll2`` does; then serve what those
        handed to the loop (``serve_soon``)."""
        self._thread = threading.get_ident()
        for dispatcher in self._fixed:
            self._look(dispatcher)
        changed = self._changed
        for _ in range(len(changed)):  # what threads add meanwhile waits for the next turn
            self._look(changed.popleft())
        socket_map, registered = self._map, self._registered
        for fd, events in self._epoll.poll(timeout):
            dispatcher = socket_map.get(fd)
            if dispatcher is None:
                continue
            known = registered.get(fd)
            wanted = known[2] if known is not None and known[0] is dispatcher else 0
            if not wanted or (events & _READ and not wanted & _READ):
                self._look(dispatcher, exact=True)  # an event it no longer wants: not handed on
                continue
            if dispatcher.accepting:
                self._accept(dispatcher)
            else:
                readwrite(dispatcher, events)
            changed.append(dispatcher)
        if self._soon:
            self._serve()

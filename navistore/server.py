"""``navistore serve``: the app on waitress, with a clean stop on SIGTERM and Ctrl-C."""

from __future__ import annotations

import collections
import contextlib
import errno
import ipaddress
import json
import logging
import logging.handlers
import os
import queue
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import waitress
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import RequestEntityTooLarge, RequestHeaderFieldsTooLarge

from navistore import eventloop, slots
from navistore._version import __version__
from navistore.accesslog import flush_access_logs
from navistore.app import create_app
from navistore.errors import SettingsError
from navistore.eventloop import EventLoop
from navistore.node import Node, largest_request
from navistore.parking import Deadlines, Parked, ParkingTask, first_request, is_watch
from navistore.resources.keys import KEY_ROUTE, KEYS_ROUTE
from navistore.settings import Settings, read_token_files
from navistore.store import dump_json

log = logging.getLogger("navistore")

#: waitress sends headers and body in one syscall only when it may buffer this much first; its
#: default (1) costs 1.5-7x on GET throughput. Deprecated upstream but honoured in waitress 3.x,
#: which pyproject pins; ``check_tuning`` proves it is in effect.
SEND_BYTES = 18000
DRAIN_SECONDS = 10.0
#: Where there is no epoll (not Linux), waitress's own loop runs (``navistore.eventloop``). Its
#: select() loop costs less Python per turn than its poll() loop (which builds a poll object and
#: registers every descriptor each time): poll cost about 8% of GET throughput at 64 connections
#: (bench/load.py). But select() cannot watch descriptors from FD_SETSIZE up, so poll is used when
#: the connections, plus the files kept for the rest (``reserved_files``), could reach it.
FD_SETSIZE = 1024
#: Ordinary requests that run at once (the rest of ``threads`` wait for their commits) when the
#: process runs on one CPU (``--cpus``). On 2 cores that wrk shares, against 8 at once: GET 10,000
#: -> 12,800 req/s and a listing page 4,300 -> 6,100 (bench/load.py, 16 connections), GET on
#: 1,000,000 keys 7,000 -> 10,000 (bench/scale.py), PUT unchanged; 3 and 4 measured in between.
#: Python runs one thread at a time: each runnable thread more only adds GIL hand-overs (context
#: switches: 8 a GET with 8 running, 3 with 2). Against 1, on one CPU: GET 5-12% faster, listing
#: pages 9-11% (bench/load.py's workloads, one server of each in the same run).
RUNNING = 2
#: The same where the process may run on several CPUs: there a thread that takes the GIL back
#: from a thread on another CPU wakes it there, and every runnable thread more makes that more
#: frequent. Against 2, anywhere on the 2 cores, one server of each in the same run: GET on
#: 1,000,000 keys 5,131 -> 5,782 req/s (4.0 -> 2.9 voluntary context switches a GET), its listing
#: pages 3,117 -> 3,478, GET on 1,000 keys 3-4% faster, listing pages 7-9%, mixed 3-9%, PUT 2-4%
#: slower.
RUNNING_SPREAD = 1
#: Threads for watches, besides ``threads``: a watch waits with no thread (``navistore.parking``),
#: and holds one only to look at the store, and to answer.
WATCH_THREADS = 4


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str) -> logging.handlers.QueueListener:
    """Log to stderr from a thread of its own: a request thread only puts its record on a queue.

    (Writing from every worker thread made them queue on the stream handler's lock: a fifth of the
    time of a GET under load, measured with py-spy.) Stop the returned listener to flush.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    records: queue.SimpleQueue = queue.SimpleQueue()
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(logging.INFO)
    # waitress warns "Task queue depth is N" for every request that waits for a free thread:
    # normal with more clients than threads, and under load a log line per request.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    return listener


def reserved_files(settings: Settings) -> int:
    """Open files kept for other than client connections: a few per worker thread (the store's
    files), the listening socket, logs, peers."""
    return 4 * (settings.threads + WATCH_THREADS) + 64


def raise_open_file_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files toward ``wanted``, as far as the hard limit
    lets it (as Go's runtime does for etcd and Consul: a shell's soft limit is often 1,024);
    return the soft limit now."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft
    return wanted


def server_options(settings: Settings, open_files: int | None = None) -> dict[str, Any]:
    """waitress's settings for these Navistore settings; ``open_files``: the most this process
    may have open (the connections are held below it)."""
    threads = settings.threads + WATCH_THREADS
    connections = settings.max_connections
    if open_files is not None:
        connections = min(connections, max(16, open_files - reserved_files(settings)))
    # waitress counts the listening socket and its trigger as connections too.
    connection_limit = connections + 2
    return {
        "host": settings.host,
        "port": settings.port,
        "threads": threads,
        "connection_limit": connection_limit,
        "asyncore_use_poll": connection_limit + reserved_files(settings) >= FD_SETSIZE,
        # waitress refuses bodies at or above this itself, unread (JsonErrorTask), before the app
        # can say which limit a request broke: keep it just above the largest legal request.
        "max_request_body_size": largest_request(settings) + 64 * 1024,
        "max_request_header_size": 64 * 1024,
        "channel_timeout": 60,
        "send_bytes": SEND_BYTES,
        "ident": "navistore",
        "clear_untrusted_proxy_headers": True,
    }


class Dispatcher(ThreadedTaskDispatcher):
    """waitress's thread pool, with ``threads`` + ``WATCH_THREADS`` threads, that takes on at most
    ``threads`` ordinary requests at once and lets only ``running`` of them run at a time
    (``running_at_once``: 1 or 2, by the CPUs the process may run on): the others are waiting
    (``navistore.slots.waiting``, around a commit). Watches (``/v1/changes?wait=...``, which hold
    a thread only to look and to answer) have the other threads and queue apart; with both
    waiting, the two queues take turns.

    Why so few at a time: every thread that gives the GIL up and takes it back waits behind the
    runnable threads (see ``navistore.slots``). With waitress's pool all 40 threads took ordinary
    requests, and the idle thread woken was the one that had slept longest, each with a cold sqlite
    page cache. Here idle threads sleep on a stack, the last one to go idle is woken first, and a
    thread that finishes an ordinary request takes the next one itself.

    With ``loop`` set (``loop_serves_reads``), a quick read (``quick_read``: one key, or a page of
    keys) that the event loop hands over is served by the loop itself, with no thread at all
    (``EventLoop.serve_soon``); with ``loop_writes`` set too (``quick_commits``), so is a quick
    write (``quick_write``: a PUT or DELETE of one key).
    """

    def __init__(self, ordinary: int, running: int | None = None) -> None:
        super().__init__()
        self.ordinary = ordinary
        self.running_limit = min(ordinary, RUNNING if running is None else running)
        self.admitted = 0  # ordinary requests taken on and not finished
        self.running = 0  # of those, the ones not waiting
        self.watches: collections.deque = collections.deque()
        self.ordinary_turn = False  # with both kinds waiting, whose turn it is (_next_task)
        self.idle: list[threading.Lock] = []  # each sleeping thread's wake-up, latest last
        self.waking = 0  # threads woken that have not yet looked for a task
        #: The event loop that serves quick reads itself (``loop_serves_reads``), if any.
        self.loop: EventLoop | None = None
        #: Whether that loop serves quick writes too (``quick_write``, ``quick_commits``).
        self.loop_writes = False

    def _wake_one(self) -> None:
        """Wake the thread that went idle last (under ``self.lock``)."""
        if self.idle:
            self.idle.pop().release()
            self.waking += 1

    def _slot_free(self) -> bool:
        """Whether an ordinary request could start with no thread already on its way to it."""
        return (
            self.running + self.waking < self.running_limit
            and self.admitted + self.waking < self.ordinary
        )

    def _next_task(self) -> tuple[Any, bool]:
        """(task, whether it is ordinary), or (None, False); under ``self.lock``. With both
        kinds waiting, they take turns: one commit may wake thousands of watches, and ordinary
        requests waited for all of them (a GET for 644 ms, while one PUT woke 5,000)."""
        ordinary = (
            self.queue and self.running < self.running_limit and self.admitted < self.ordinary
        )
        if self.watches and not (ordinary and self.ordinary_turn):
            self.ordinary_turn = True
            return self.watches.popleft(), False
        if ordinary:
            self.ordinary_turn = False
            self.running += 1
            self.admitted += 1
            return self.queue.popleft(), True
        return None, False

    def crowded(self) -> bool:
        """Whether requests besides the caller's are in hand, or on their way to a thread.

        Counting the tasks not yet taken matters: the slot a writer gives up in ``pause`` wakes
        a thread for the next task, which is not admitted until that thread runs, so at 16
        connections a writer that counted only ``admitted`` mostly found itself alone and
        committed alone (12,000 of 15,500 writes in 2 s, pinned; now 550)."""
        return self.admitted > 1 or self.waking > 0 or bool(self.queue)

    def pause(self) -> None:
        with self.lock:
            self.running -= 1
            if self.queue and self._slot_free():
                self._wake_one()

    def resume(self) -> None:
        with self.lock:
            self.running += 1

    def handler_thread(self, thread_no: int) -> None:
        wake = threading.Lock()
        wake.acquire()
        ordinary = False
        while True:
            with self.lock:
                if ordinary:
                    self.running -= 1
                    self.admitted -= 1
                if self.stop_count > 0:
                    self.active_count -= 1
                    self.stop_count -= 1
                    self.threads.discard(thread_no)
                    self.thread_exit_cv.notify()
                    return
                task, ordinary = self._next_task()
                if task is None:
                    self.active_count -= 1
                    self.idle.append(wake)
                elif self.queue and self._slot_free():
                    self._wake_one()  # a slot is free (this thread took a watch instead)
            if task is None:
                wake.acquire()
                with self.lock:
                    self.active_count += 1
                    self.waking -= 1
                continue
            slots.hold(self if ordinary else None)
            try:
                task.service()
            except BaseException:
                self.logger.exception("Exception when servicing %r", task)
            finally:
                slots.hold(None)

    def add_task(self, task: Any) -> None:
        request = first_request(task)
        loop = self.loop
        if (
            loop is not None
            and self.loop_may_serve()
            and loop.in_loop()
            and (quick_read(request) or (self.loop_writes and quick_write(request)))
        ):
            loop.serve_soon(task)  # see loop_serves_reads and quick_commits
            return
        with self.lock:
            if is_watch(request):
                self.watches.append(task)
                self._wake_one()
            else:
                self._queue(task)

    def loop_may_serve(self) -> bool:
        """Whether the loop may serve a read itself: only while no ordinary request is in a
        thread or waiting for one (a hint, read without the lock). A thread that gives the GIL up
        (for a commit, a step of sqlite) takes it back from a loop busy serving reads only when
        the loop waits for the network or the switch interval (5 ms) runs out: in mixed 90/10
        anywhere, served by the loop all along, p99 went from 5.0 to 12.9 ms at 16 connections
        and from 18.7 to 44.8 at 64; with this rule, 5.2 and 18.6, and the req/s of threads
        alone."""
        return not self.admitted and not self.queue

    def _queue(self, task: Any) -> None:
        """Queue an ordinary request for a thread (under ``self.lock``)."""
        self.queue.append(task)
        # With every slot busy, a thread that finishes takes it itself.
        if self._slot_free():
            self._wake_one()

    def to_pool(self, task: Any) -> None:
        """Queue an ordinary request for a thread, whatever it is (what the loop hands back)."""
        with self.lock:
            self._queue(task)

    def set_thread_count(self, count: int) -> None:
        super().set_thread_count(count)
        with self.lock:
            if self.stop_count > 0:  # wake the sleepers, so they see it
                while self.idle:
                    self._wake_one()

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        with self.lock:
            self.queue.extend(self.watches)  # so that waitress cancels them as well
            self.watches.clear()
        return super().shutdown(cancel_pending, timeout)


class JsonErrorTask(ErrorTask):
    """waitress's own answer to a request it does not hand to the app (malformed: 400; over its
    caps: 413, 431; a Transfer-Encoding it cannot decode: 501), in JSON like every other error.
    waitress wrote these in plain text."""

    max_value_size = 0  # set per server, see json_error_channel

    def execute(self) -> None:
        error = self.request.error
        adj = self.channel.server.adj
        if isinstance(error, RequestEntityTooLarge):
            description = (
                f"the request body reaches {adj.max_request_body_size} bytes, the most this "
                f"server reads for one request; a value may be at most {self.max_value_size} "
                "bytes (max_value_size)"
            )
        elif isinstance(error, RequestHeaderFieldsTooLarge):
            description = (
                f"the request's headers reach {adj.max_request_header_size} bytes, the most "
                "this server reads"
            )
        else:
            description = f"the request cannot be read: {error.body}"
        body = dump_json({"title": error.reason, "description": description}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class Channel(HTTPChannel):
    """waitress's connection, telling the server's ``EventLoop`` (when it has one) when it opens,
    when it closes, and which thread serves it; and holding a watch request without a thread
    while it waits (``navistore.parking``)."""

    task_class = ParkingTask

    def add_channel(self, map: Any = None) -> None:
        super().add_channel(map)
        loop = getattr(self.server, "event_loop", None)
        if loop is not None:
            loop.opened(self)

    def del_channel(self, map: Any = None) -> None:
        loop = getattr(self.server, "event_loop", None)
        if loop is not None:
            loop.closing(self)
        super().del_channel(map)
        for park in self._parks():  # a watch waiting for a change waits no more
            park.close()

    def handle_close(self) -> None:
        # The parks are taken before waitress marks the connection closed: a thread that finds
        # it closed then (a watch set meanwhile, handed to the pool) skips the request and
        # empties the list, and del_channel, after it, would find no watch to drop. One was left
        # waiting for good, about once in 15 runs of the soak test in test_parking.
        parks = self._parks()
        super().handle_close()
        for park in parks:
            park.close()

    def _parks(self) -> list[Any]:
        """The watches among the requests in hand."""
        found = (getattr(request, "navistore_park", None) for request in list(self.requests))
        return [park for park in found if park is not None]

    def service(self) -> None:
        eventloop.serving(self)
        try:
            super().service()
        except Parked as parked:  # the watch waits with no thread; nothing was written
            # Readable while it waits, so that a client that hangs up is seen at once: set on
            # this connection only (the task takes it off when the watch runs again), so that
            # the others' readable() stays waitress's own.
            self.readable = self._readable_while_held
            parked.park.let_go()
            self.server.pull_trigger()  # the loop looks again: readable, and the deadline
        finally:
            eventloop.serving(None)

    def _readable_while_held(self) -> bool:
        """As waitress's ``readable``, and also while the one request in hand is a watch that
        waits with no thread (more data, a request behind it, stays in the buffer)."""
        requests = self.requests
        if len(requests) == 1 and not (
            self.will_close or self.close_when_flushed or self.total_outbufs_len
        ):
            park = getattr(requests[0], "navistore_park", None)
            if park is not None and park.waiting():
                return True
        return bool(HTTPChannel.readable(self))


def json_error_channel(settings: Settings) -> type[HTTPChannel]:
    """waitress's connection class, answering what it refuses with ``JsonErrorTask``."""
    task = type("JsonErrorTask", (JsonErrorTask,), {"max_value_size": settings.max_value_size})
    return type("JsonErrorChannel", (Channel,), {"error_task_class": task})


def make_server(
    app: Any, settings: Settings, node: Node | None = None
) -> BaseWSGIServer | MultiSocketServer:
    """waitress serving ``app`` as ``settings`` say, on Navistore's event loop where there is
    epoll; ``node``, when given, learns the connections open (for /metrics)."""
    open_files = raise_open_file_limit(settings.max_connections + reserved_files(settings))
    options = server_options(settings, open_files)
    if options["connection_limit"] - 2 < settings.max_connections:
        log.warning(
            "serving at most %d connections at once, not %d (max_connections): this process "
            "may open %d files (ulimit -n); raise its hard limit (ulimit -Hn, systemd's "
            "LimitNOFILE=) for more",
            options["connection_limit"] - 2,
            settings.max_connections,
            open_files,
        )
    running = running_at_once()
    dispatcher = Dispatcher(ordinary=settings.threads, running=running)
    dispatcher.set_thread_count(options["threads"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # send_bytes, see SEND_BYTES
        server = waitress.create_server(app, _dispatcher=dispatcher, **options)
    channel = json_error_channel(settings)
    loop = EventLoop(socket_map(server)) if EventLoop.available() else None
    server.deadlines = Deadlines()  # of the watches waiting with no thread (navistore.parking)
    serving = listeners(server)
    for listener in serving:
        listener.channel_class = channel
        listener.deadlines = server.deadlines
        if loop is not None:
            loop.install(listener)
    server.event_loop = loop
    capabilities = node.backend.capabilities if node is not None else None
    if loop is not None and loop_serves_reads(running, capabilities):
        dispatcher.loop, loop.pool = loop, dispatcher
        dispatcher.loop_writes = node is None or quick_commits(node.store)
        loop.batches_writes = node is not None and dispatcher.loop_writes  # the stub: no store
    if node is not None:
        most = options["connection_limit"] - 2
        node.connections = lambda: (sum(len(s.active_channels) for s in serving), most)
    return server


def socket_map(server: Any) -> dict[int, Any]:
    """waitress's map of sockets: the listening ones, the trigger and the connections."""
    return server.map if isinstance(server, MultiSocketServer) else server._map


def listeners(server: Any) -> list[BaseWSGIServer]:
    """The listening sockets' servers: one for each address the host resolves to ("localhost"
    may be 127.0.0.1 and ::1, and then waitress makes a ``MultiSocketServer`` of two)."""
    return [d for d in socket_map(server).values() if isinstance(d, BaseWSGIServer)]


def _url(listener: BaseWSGIServer) -> str:
    host = str(listener.effective_host)
    return f"http://{f'[{host}]' if ':' in host else host}:{listener.effective_port}"


def poll_once(server: Any, timeout: float) -> None:
    """One turn of the event loop on ``server``: ours (``EventLoop``), or where there is no epoll,
    waitress's, with the loop that its settings chose."""
    deadlines = getattr(server, "deadlines", None)
    if deadlines is not None:
        timeout = deadlines.timeout(timeout)
    loop = getattr(server, "event_loop", None)
    if loop is not None:
        loop.turn(timeout)
    else:
        server.asyncore.loop(
            timeout=timeout, map=socket_map(server), use_poll=server.adj.asyncore_use_poll, count=1
        )
    if deadlines is not None:
        deadlines.fire()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _busy(server: Any) -> bool:
    """Whether any connection is receiving a request, serving one, or has an answer to send."""
    return any(
        getattr(channel, "request", None) is not None
        or getattr(channel, "requests", None)
        or getattr(channel, "total_outbufs_len", 0)
        for channel in list(socket_map(server).values())
    )


def _ranges(cpus: Iterable[int]) -> str:
    """``0-3,6`` for {0, 1, 2, 3, 6}."""
    spans: list[list[int]] = []
    for cpu in sorted(cpus):
        if spans and cpu == spans[-1][1] + 1:
            spans[-1][1] = cpu
        else:
            spans.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def running_at_once() -> int:
    """How many ordinary requests run at once: ``RUNNING`` when this process runs on one CPU,
    ``RUNNING_SPREAD`` when it may run on several (read after ``pin_cpus``)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    cpus = len(getaffinity(0)) if getaffinity is not None else os.cpu_count() or 1
    return RUNNING if cpus == 1 else RUNNING_SPREAD


def quick_read(request: Any) -> bool:
    """Whether a waitress request is a read the event loop may serve itself (``loop_serves_reads``):
    a GET or HEAD of one key (one value of at most ``max_value_size``), or a GET of a listing page
    of keys (at most ``MAX_LIMIT`` entries; sqlite keeps each one written, see navistore_sqlite's
    ``_LISTED``). Not a page with ``values`` (up to 4 MiB of them) nor with a ``separator`` (which
    may skip through many keys to fold them). Bounded work that waits for nothing but the store's
    read."""
    path = getattr(request, "path", None)
    if path is None:
        return False
    if path.startswith(KEY_ROUTE):
        return _one_key(path) and request.command in ("GET", "HEAD")
    if path != KEYS_ROUTE or request.command != "GET":
        return False
    names = (part.partition("=")[0] for part in request.query.split("&"))
    return not any(name in _SLOW_PAGE or "%" in name for name in names)


_SLOW_PAGE = frozenset(("values", "separator"))


def _one_key(path: str | None) -> bool:
    """Whether a request's path names one key (``/v1/keys/`` and a key after it)."""
    return path is not None and path.startswith(KEY_ROUTE) and len(path) > len(KEY_ROUTE)


#: The largest body of a write the event loop serves itself (``quick_write``): a larger value
#: goes to a request thread, as do the batches (up to 128 writes) and the deletes by prefix.
QUICK_WRITE_MAX = 64 * 1024


def quick_write(request: Any) -> bool:
    """Whether a waitress request is a write the event loop may serve itself (with a store whose
    commits are quick, ``quick_commits``): a PUT of one key with a body of at most
    ``QUICK_WRITE_MAX`` bytes (not chunked, so its length is known), or a DELETE of one key. One
    commit of one row: bounded work that waits for nothing but the store's write."""
    if not _one_key(getattr(request, "path", None)):
        return False
    if request.command == "DELETE":
        return True
    return (
        request.command == "PUT"
        and not request.chunked
        and request.content_length <= QUICK_WRITE_MAX
    )


def quick_commits(store: Any) -> bool:
    """Whether ``store`` says a commit of one row is quick: it writes to this machine and does
    not wait for the disk to flush (the optional ``quick_commits`` attribute; sqlite's, unless
    synchronous is full or extra). Then, where the loop serves reads (``loop_serves_reads``), it
    serves quick writes too: anywhere on 2 cores that wrk shares, PUT of 1,000 keys 3,314 ->
    4,931 req/s at 16 connections and 3,473 -> 4,889 at 64, at 197 us of CPU a PUT against 335;
    mixed 90/10 7,051 -> 8,603 and 7,509 -> 9,707; p99 at 64 connections 26.9 -> 18.6 ms (one
    server of each, in the same run), each write one commit of its own. A writer in a thread
    waits for the group commit, and each hand-over between threads on two CPUs wakes the other
    CPU. The writes the loop serves in one turn now share a commit too (``navistore.turns``).
    A commit that waits for the disk to flush must share the flush with other writers in one
    group commit, which the loop, serving one request at a time, cannot: with sqlite's
    synchronous=full, PUT fell from 3,415 to 2,159 req/s served by the loop."""
    return getattr(store, "quick_commits", False) is True


def loop_serves_reads(running: int, capabilities: AbstractSet[str] | None) -> bool:
    """Whether the event loop serves reads of one key and pages of keys itself (``quick_read``),
    rather than a request thread (while no other request is in a thread:
    ``Dispatcher.loop_may_serve``): where the process may run on several CPUs (one request
    running at a time, ``running``), with a backend that reads from this machine (the ``local``
    capability; None: no backend, as for bench/stub.py). A request thread takes the GIL from the
    loop's thread and gives it back, and where the two run on different CPUs each hand-over wakes
    the other CPU. Anywhere on 2 cores that wrk shares, GET on 1,000 keys: 9,735 -> 12,939 req/s
    at 16 connections (2.25 -> 0 context switches a GET), 10,488 -> 13,031 at 64; on 1,000,000
    keys 7,324 -> 10,018. Listing pages of 100 on 1,000,000 keys, with each row's entry kept
    written: 3,967 -> 4,629 req/s, at 216 us of CPU a page against 337 (served by the loop with
    the entries built in the query, 3,850 against 4,300 by a thread: the query's 110 us no longer
    ran beside the loop). On one CPU a hand-over costs little, and the pool serves faster (GET
    13,275 against 11,579 req/s; PUT 6,637 against 5,081 served by the loop). A backend that
    reads over the network (PostgreSQL) would stop the loop for each round trip. With a store
    whose commits are quick, the loop serves quick writes too (``quick_commits``)."""
    return running == RUNNING_SPREAD and (capabilities is None or "local" in capabilities)


def _served_by_loop(dispatcher: Dispatcher) -> str:
    """What the serving log line says the event loop serves itself (nothing: "")."""
    if dispatcher.loop is None:
        return ""
    if dispatcher.loop_writes:
        return ", reads and writes of one key and pages of keys served by the event loop"
    return ", reads of one key and pages of keys served by the event loop"


def pin_cpus(cpus: Sequence[int]) -> None:
    """Run every thread of this process, and every thread it starts later, on ``cpus`` only.

    Why: Python runs one thread at a time, and a thread that takes the GIL from a thread on
    another CPU wakes it there (an inter-processor interrupt, dear in a virtual machine). With the
    process on one CPU of the 2-core bench machine: PUT about 5,000 -> 8,000 req/s, GET 14,000 ->
    18,000 (bench/load.py); what runs without the GIL (sqlite, the kernel's TCP) loses the second
    CPU, so a listing page was 9-13% slower.
    """
    setaffinity = getattr(os, "sched_setaffinity", None)
    if setaffinity is None:
        raise SettingsError("setting 'cpus': this platform cannot pin a process (Linux can)")
    available = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - available)
    if missing:
        raise SettingsError(
            f"setting 'cpus': CPU {_ranges(missing)} is not available to this process; "
            f"it may run on {_ranges(available)}"
        )
    setaffinity(0, cpus)  # this thread, and the threads it starts from now on
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = []
    for tid in threads:  # threads started before (a plugin's, the log writer)
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            setaffinity(tid, cpus)


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or Ctrl-C, then stop cleanly; return the exit status."""
    if settings.cpus:
        pin_cpus(settings.cpus)
    listener = configure_logging(settings.log_format)
    try:
        return _serve(settings)
    finally:
        listener.stop()


_LISTEN_HINTS = {
    errno.EADDRINUSE: "another server has that port: choose another with --port",
    errno.EADDRNOTAVAIL: "that address is not one of this machine's: see --host",
    errno.EACCES: "ports below 1024 need privileges: choose another with --port",
}


def _serve(settings: Settings) -> int:
    node = Node(settings)
    try:
        app = create_app(node)
        try:
            server = make_server(app, settings, node)
        except OSError as exc:  # the port is taken, the address is not this machine's, ...
            hint = _LISTEN_HINTS.get(exc.errno or 0, "settings 'host' and 'port'")
            raise SettingsError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc} ({hint})"
            ) from None
        except ValueError:  # waitress: the host name did not resolve
            raise SettingsError(
                f"cannot listen on {settings.host}:{settings.port}: the host name does not "
                "resolve to an address (setting 'host')"
            ) from None
    except BaseException:
        node.close()
        raise
    if not _is_loopback(settings.host) and not settings.token:
        log.warning(
            "listening on %s without a token: anyone who can reach it can read and write. "
            "Set --token (or NAVISTORE_TOKEN)",
            settings.host,
        )
    node.start()
    log.info(
        "navistore %s serving on %s (store %s, backend %s, node %s; %d threads, %d running "
        "at a time%s)",
        __version__,
        " and ".join(_url(listener) for listener in listeners(server)),
        settings.store,
        node.backend.name,
        node.node_id,
        settings.threads,
        server.task_dispatcher.running_limit,
        _served_by_loop(server.task_dispatcher),
    )

    # The handler only takes note: an exception raised from it could land inside a connection's
    # handler, where waitress's loop would catch it and carry on.
    received: list[str] = []
    hangups: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)

    def hang_up(signum: int, frame: Any) -> None:
        hangups.append(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hang_up)
    try:
        while not received:
            poll_once(server, 0.2)
            if hangups:
                hangups.clear()
                _reread_tokens(node)
        log.info("received %s: finishing requests in flight, then stopping", received[0])
        _drain(server, node)
        flush_access_logs()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        node.close()
    log.info("stopped")
    return 0


def _reread_tokens(node: Node) -> None:
    """SIGHUP: read the token files again, so a token is rotated without a restart (as
    ``consul reload`` does). A file that cannot be read, or tokens that no longer hold together,
    keep the tokens as they were, and the log says why."""
    settings = node.settings
    files = [path for path in (settings.token_file, settings.read_token_file) if path]
    if not files:
        log.warning(
            "received SIGHUP: no token file to read again (--token-file, --read-token-file)"
        )
        return
    try:
        node.settings = read_token_files(settings)
    except SettingsError as exc:
        log.error("received SIGHUP: the tokens stay as they were: %s", exc.description)
        return
    log.info("received SIGHUP: tokens read again from %s", ", ".join(files))


def _drain(server: Any, node: Node) -> None:
    """Stop accepting, wake the watches, let requests in flight finish and their answers go out."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for listener in listeners(server):
        listener.del_channel()
        listener.socket.close()
    node.begin_shutdown()
    deadline = time.monotonic() + DRAIN_SECONDS
    while _busy(server) and time.monotonic() < deadline:
        poll_once(server, 0.05)
    close_server(server, timeout=1)


def close_server(server: Any, timeout: float) -> None:
    """Stop the server's threads (cancelling the requests still queued), and close its sockets
    and its event loop."""
    server.task_dispatcher.shutdown(timeout=timeout)
    for dispatcher in list(socket_map(server).values()):
        dispatcher.close()
    if server.event_loop is not None:
        server.event_loop.close()

"""navistore.server: waitress's settings follow Navistore's, and the tuning is in effect."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import falcon
import pytest
from waitress.server import BaseWSGIServer, MultiSocketServer

import navistore.server
from navistore.client import Client, Forbidden, Unauthorized
from navistore.eventloop import WRITES_A_COMMIT
from navistore.node import largest_request
from navistore.server import (
    QUICK_WRITE_MAX,
    SEND_BYTES,
    WATCH_THREADS,
    JsonErrorTask,
    make_server,
    server_options,
)
from navistore.settings import Settings
from navistore.testing.servers import RunSlotRecorder, ServerProcess, wait_until


def test_waitress_is_tuned_from_the_settings():
    settings = Settings(threads=8, max_watchers=32, max_value_size=1024 * 1024)
    options = server_options(settings)
    # a waiting watch holds no thread (navistore.parking): a few more for watches to look
    assert options["threads"] == 8 + WATCH_THREADS
    assert server_options(Settings(threads=8, max_watchers=100_000))["threads"] == 8 + WATCH_THREADS
    # each waiting watch holds a connection: by default watches leave connections for the rest
    # (a watch past max_watchers gets 429, which clients retry; past max_connections one waits)
    assert Settings().max_watchers < Settings().max_connections
    # a fleet of clients, each with a keep-alive connection, is served (test_many_connections)
    assert options["connection_limit"] == settings.max_connections + 2  # + listener and trigger
    assert options["max_request_body_size"] == 8 * 1024 * 1024 + 64 * 1024
    assert options["channel_timeout"] == 60  # slow clients are dropped
    assert options["max_request_header_size"] == 64 * 1024
    # Where there is no epoll, waitress's loop: select() is cheaper, but cannot watch descriptors
    # from 1024 up: poll once connections could get there
    assert options["asyncore_use_poll"] is True
    assert server_options(Settings(max_connections=500))["asyncore_use_poll"] is False
    assert server_options(Settings(max_connections=500, threads=256))["asyncore_use_poll"] is True
    # held below the open files this process may have, less those kept for the rest
    assert server_options(settings, open_files=1024)["connection_limit"] == 1024 - 112 + 2
    # ... and never above max_connections, however few it asks for
    assert server_options(Settings(max_connections=5), open_files=20000)["connection_limit"] == 7
    big = Settings(max_value_size=32 * 1024 * 1024)
    # a replication batch may carry one value at the limit, in base64
    assert largest_request(big) >= 32 * 1024 * 1024 * 4 // 3
    assert server_options(big)["max_request_body_size"] == largest_request(big) + 64 * 1024


def test_send_bytes_is_in_effect():
    settings = Settings(port=0)
    server = make_server(falcon.App(), settings)
    try:
        # waitress deprecated send_bytes but honours it in 3.x, which pyproject pins: if a new
        # waitress drops it, this fails instead of GETs silently getting slower.
        assert server.adj.send_bytes == SEND_BYTES
        assert server.adj.threads == settings.threads + WATCH_THREADS
        # our pool, through waitress's create_server(_dispatcher=...): if a waitress release
        # stops honouring it, this fails instead of the pool silently becoming waitress's own
        from navistore.server import Dispatcher

        assert isinstance(server.task_dispatcher, Dispatcher)
        assert server.task_dispatcher.ordinary == settings.threads
        assert len(server.task_dispatcher.threads) == server.adj.threads
    finally:
        server.close()


@pytest.mark.parametrize("sockets", [1, 2])
def test_every_listening_socket_answers_waitress_errors_in_json(monkeypatch, sockets):
    # Several sockets ("localhost" where it is both 127.0.0.1 and ::1) make a MultiSocketServer,
    # one waitress server per socket; each must have our channel. What it answers is tested end
    # to end in test_reliability.
    def two_sockets(settings, open_files=None):
        options = server_options(settings, open_files)
        del options["host"], options["port"]
        return {**options, "listen": "127.0.0.1:0 127.0.0.1:0"}

    if sockets == 2:
        monkeypatch.setattr(navistore.server, "server_options", two_sockets)
    server = make_server(falcon.App(), Settings(port=0, max_value_size=1000))
    socket_map = server.map if isinstance(server, MultiSocketServer) else server._map
    listeners = [x for x in socket_map.values() if isinstance(x, BaseWSGIServer)]
    try:
        assert len(listeners) == sockets
        for listener in listeners:
            task = listener.channel_class.error_task_class
            assert issubclass(task, JsonErrorTask) and task.max_value_size == 1000
            assert listener.event_loop is server.event_loop  # one loop over every socket
    finally:
        for listener in listeners:
            listener.close()
        server.task_dispatcher.shutdown()


class _Task:
    """A waitress task as the dispatcher sees it: a request (path, query) and service()."""

    def __init__(self, path: str, query: str, work, command: str = "GET") -> None:
        fields = {"path": path, "query": query, "command": command}
        self.request = type("Request", (), {**fields, "content_length": 1, "chunked": False})()
        self.work = work

    def service(self) -> None:
        self.work()

    def cancel(self) -> None:
        pass


def test_the_loop_serves_a_quick_read_only_while_no_request_is_in_a_thread():
    # A thread would take the GIL back from a loop busy serving reads only every 5 ms (the
    # switch interval): a PUT beside them waited that long for each hand-over.
    import threading

    from navistore.server import Dispatcher

    class Loop:  # what the dispatcher asks of navistore.eventloop.EventLoop; records the reads
        def __init__(self) -> None:
            self.served: list = []

        def in_loop(self) -> bool:
            return True

        def serve_soon(self, task) -> None:
            self.served.append(task)

    dispatcher = Dispatcher(ordinary=2, running=1)
    dispatcher.set_thread_count(2)
    loop = dispatcher.loop = Loop()
    release = threading.Event()
    ran: list[str] = []
    try:
        first = _Task("/v1/keys/k", "", lambda: ran.append("first"))
        head = _Task("/v1/keys/k", "", lambda: ran.append("head"), command="HEAD")
        page = _Task("/v1/keys", "limit=5", lambda: ran.append("page"))
        dispatcher.add_task(first)
        dispatcher.add_task(head)
        dispatcher.add_task(page)
        assert loop.served == [first, head, page] and not ran
        dispatcher.add_task(_Task("/v1/keys", "values=true", lambda: ran.append("values")))
        wait_until(lambda: "values" in ran)  # a page of values is no quick read: a thread's
        dispatcher.add_task(_Task("/v1/keys/k", "", lambda: release.wait(10), command="PUT"))
        wait_until(lambda: dispatcher.admitted == 1)
        dispatcher.add_task(_Task("/v1/keys/k", "", lambda: ran.append("beside the PUT")))
        assert loop.served == [first, head, page]  # it went to the threads, behind the PUT
        release.set()
        wait_until(lambda: "beside the PUT" in ran and not dispatcher.admitted)
        last = _Task("/v1/keys/k", "", lambda: ran.append("last"))
        dispatcher.add_task(last)
        assert loop.served[-1] is last and "last" not in ran
        # A write of one key goes to the loop only where its store's commits are quick.
        write = _Task("/v1/keys/k", "", lambda: ran.append("write"), command="PUT")
        dispatcher.add_task(write)
        wait_until(lambda: "write" in ran)  # loop_writes is off: a thread's
        dispatcher.loop_writes = True
        wait_until(lambda: not dispatcher.admitted)
        quick = _Task("/v1/keys/k", "", lambda: ran.append("quick"), command="PUT")
        dispatcher.add_task(quick)
        assert loop.served[-1] is quick and "quick" not in ran
    finally:
        release.set()
        dispatcher.shutdown(timeout=5)


def test_the_dispatcher_runs_at_most_threads_ordinary_requests_and_keeps_threads_for_watches():
    import threading
    import time

    from navistore.server import Dispatcher

    dispatcher = Dispatcher(ordinary=2)
    dispatcher.set_thread_count(2 + 3)
    lock = threading.Lock()
    running = {"now": 0, "most": 0}
    release_watches = threading.Event()
    done = []

    def ordinary() -> None:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        time.sleep(0.01)
        with lock:
            running["now"] -= 1
            done.append("ordinary")

    def watch() -> None:
        release_watches.wait(10)
        done.append("watch")

    try:
        for _ in range(40):
            dispatcher.add_task(_Task("/v1/keys/k", "", ordinary))
        for _ in range(3):  # three watches, each holding a thread while it waits
            dispatcher.add_task(_Task("/v1/changes", "since=0&wait=30", watch))
        deadline = time.monotonic() + 10
        while done.count("ordinary") < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        # every ordinary request ran while the watches waited, never more than 2 at once
        assert done.count("ordinary") == 40 and "watch" not in done
        assert running["most"] == 2
        release_watches.set()
        deadline = time.monotonic() + 10
        while done.count("watch") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done.count("watch") == 3
    finally:
        release_watches.set()
        dispatcher.shutdown(timeout=5)
    assert not dispatcher.threads


def test_watches_and_ordinary_requests_waiting_together_take_turns():
    # One commit may hand thousands of held watches back at once: ordinary requests must not
    # wait for all of them (a GET waited 644 ms while one PUT woke 5,000 watches).
    from navistore.server import Dispatcher

    dispatcher = Dispatcher(ordinary=1)
    order: list[str] = []
    for n in range(4):
        dispatcher.add_task(_Task("/v1/changes", "wait=5", lambda n=n: order.append(f"w{n}")))
    for n in range(3):
        dispatcher.add_task(_Task("/v1/keys/k", "", lambda n=n: order.append(f"o{n}")))
    dispatcher.set_thread_count(1)  # one thread: the order it takes them in
    try:
        deadline = time.monotonic() + 10
        while len(order) < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        dispatcher.shutdown(timeout=5)
    assert order == ["w0", "o0", "w1", "o1", "w2", "o2", "w3"]


def test_a_watch_finds_a_thread_when_ordinary_requests_fill_their_slots():
    import threading
    import time

    from navistore.server import Dispatcher

    dispatcher = Dispatcher(ordinary=1)
    dispatcher.set_thread_count(1 + 1)
    blocker = threading.Event()
    answered = threading.Event()
    try:
        dispatcher.add_task(_Task("/v1/keys/slow", "", lambda: blocker.wait(10)))
        dispatcher.add_task(_Task("/v1/keys/next", "", lambda: None))  # queued behind it
        time.sleep(0.05)
        dispatcher.add_task(_Task("/v1/changes", "wait=5", answered.set))
        assert answered.wait(5)  # the watch thread took it while the ordinary slot was busy
    finally:
        blocker.set()
        dispatcher.shutdown(timeout=5)


@pytest.mark.parametrize(
    ("path", "query", "watch"),
    [
        ("/v1/changes", "since=3&wait=30", True),
        ("/v1/changes", "wait=5", True),
        ("/v1/changes", "%77ait=5", True),  # decoded as the app decodes it
        ("/v1/changes", "wait", True),
        ("/v1/changes", "since=3", False),
        ("/v1/changes", "await=5", False),
        ("/v1/keys/k", "wait=5", False),
    ],
)
def test_watches_are_told_apart_as_the_app_reads_them(path, query, watch):
    from navistore.parking import first_request, is_watch

    assert is_watch(first_request(_Task(path, query, lambda: None))) is watch


def test_a_request_waiting_for_a_commit_gives_its_run_slot_to_the_next():
    """With one run slot (and four admitted), a request inside slots.waiting() lets the next one
    run, and the requests that run never number more than one outside waiting()."""
    import threading
    import time

    from navistore import slots
    from navistore.server import Dispatcher

    dispatcher = Dispatcher(ordinary=4, running=1)
    dispatcher.set_thread_count(4)
    lock = threading.Lock()
    running = {"now": 0, "most": 0}
    committed = threading.Event()
    started = []

    def run(name: str, wait: bool) -> None:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
            started.append(name)
        time.sleep(0.005)
        with lock:
            running["now"] -= 1
        if wait:
            with slots.waiting():  # as Node does around store.commit
                committed.wait(10)

    try:
        dispatcher.add_task(_Task("/v1/keys/a", "", lambda: run("writer", True)))
        for i in range(5):
            dispatcher.add_task(_Task("/v1/keys/b", "", lambda i=i: run(f"reader{i}", False)))
        deadline = time.monotonic() + 10
        while len(started) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        # all five readers ran while the writer waited for its commit, one at a time
        assert started == ["writer"] + [f"reader{i}" for i in range(5)]
        assert running["most"] == 1
        while dispatcher.admitted > 1 and time.monotonic() < deadline:  # the last reader ends
            time.sleep(0.01)
        assert dispatcher.admitted == 1 and dispatcher.running == 0  # the writer, waiting
    finally:
        committed.set()
        dispatcher.shutdown(timeout=5)


def test_a_request_is_crowded_by_a_task_no_thread_has_taken_yet():
    """slots.crowded() counts the tasks still queued: with the only thread busy, the next request
    is not admitted yet, and a writer that looked only at admitted requests would commit alone."""
    import threading

    from navistore import slots
    from navistore.server import Dispatcher

    dispatcher = Dispatcher(ordinary=4, running=1)
    dispatcher.set_thread_count(1)
    queued, go, seen = threading.Event(), threading.Event(), []

    def first() -> None:
        seen.append(slots.crowded())
        queued.wait(10)
        seen.append(slots.crowded())
        go.wait(10)

    try:
        dispatcher.add_task(_Task("/v1/keys/a", "", first))
        while not seen:
            go.wait(0.01)
        dispatcher.add_task(_Task("/v1/keys/b", "", lambda: seen.append("second ran")))
        assert dispatcher.admitted == 1 and len(dispatcher.queue) == 1
        queued.set()
        while len(seen) < 2:
            go.wait(0.01)
        assert seen == [False, True]
        assert slots.crowded() is False  # outside a request
        go.set()
        while len(seen) < 3:
            queued.wait(0.01)
        assert seen[-1] == "second ran"
    finally:
        go.set()
        dispatcher.shutdown(timeout=5)


def test_without_waiting_a_request_keeps_its_run_slot():
    import threading
    import time

    from navistore.server import Dispatcher

    dispatcher = Dispatcher(ordinary=4, running=1)
    dispatcher.set_thread_count(4)
    release = threading.Event()
    started = []
    try:
        slow = _Task("/v1/keys/a", "", lambda: (started.append("a"), release.wait(10)))
        dispatcher.add_task(slow)
        dispatcher.add_task(_Task("/v1/keys/b", "", lambda: started.append("b")))
        time.sleep(0.1)
        assert started == ["a"]  # b waits for the one run slot
        release.set()
        deadline = time.monotonic() + 5
        while started != ["a", "b"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started == ["a", "b"]
    finally:
        release.set()
        dispatcher.shutdown(timeout=5)


def test_pages_of_values_and_batches_step_aside_while_they_work(tmp_path, monkeypatch):
    """A page of values (up to 4 MiB, about 20 ms to encode) gives its run slot up meanwhile, so
    that such pages cannot hold the run slots while small requests queue (bench: GET beside two
    readers of 4 MiB pages, 506-525 -> 1,336-1,420 req/s); so does a batch (up to 8 MiB to
    decode), for its decoding as well as its commit. Pages without values do not."""
    import falcon.testing

    from navistore.app import create_app
    from navistore.node import Node
    from navistore.resources import batch, changes, keys
    from navistore.store import listing_entry

    recorder = RunSlotRecorder()
    calls = recorder.calls
    for module in (keys, changes):
        encode = module._with_value
        monkeypatch.setattr(
            module, "_with_value", lambda r, encode=encode: calls.append("encode") or encode(r)
        )
    read_json = batch.read_json
    monkeypatch.setattr(
        batch, "read_json", lambda *args: calls.append("decode") or read_json(*args)
    )
    node = Node(Settings(store=f"sqlite:///{tmp_path}/n.db"))
    node.start()
    try:
        node.put("k", b"v")
        client = falcon.testing.TestClient(create_app(node))
        with recorder.held():
            for path, query, stepped in [
                ("/v1/keys", "values=true", ["pause", "encode", "resume"]),
                ("/v1/changes", "values=true", ["pause", "encode", "resume"]),
                ("/v1/keys", "", []),
                ("/v1/changes", "", []),
                ("/v1/keys/k", "", []),
            ]:
                calls.clear()
                result = client.simulate_get(path, query_string=query)
                assert result.status_code == 200, result.text
                assert calls == stepped, (path, query)
            calls.clear()  # a batch steps aside once, for its decoding and its commit together
            written = client.simulate_post(
                "/v1/batch", json={"ops": [{"op": "put", "key": "b", "value": "dg=="}]}
            )
            assert written.status_code == 200, written.text
            assert calls == ["pause", "decode", "resume"]
            assert node.get("b").value == b"v"
            page = client.simulate_get("/v1/keys", query_string="values=true")
            assert page.headers["Content-Type"] == "application/json"
            entries = [{**listing_entry(node.get(k)), "value": "dg=="} for k in ("b", "k")]
            assert page.json == {"keys": entries, "next": None}
            feed = client.simulate_get("/v1/changes", query_string="values=true")
            assert feed.headers["Content-Type"] == "application/json"
            assert feed.headers["X-Navistore-Index"] == str(node.last_seq())
            assert [c["value"] for c in feed.json["changes"]] == ["dg==", "dg=="]
    finally:
        node.close()


def test_node_writes_step_aside_while_they_commit(tmp_path):
    """Node wraps every commit (put, batch, merge) in slots.waiting(); outside a request that
    holds a slot, waiting() does nothing."""
    from navistore import slots
    from navistore.node import Node
    from navistore.record import Record

    recorder = RunSlotRecorder()
    node = Node(Settings(store=f"sqlite:///{tmp_path}/n.db"))
    node.start()
    try:
        node.put("k", b"v")  # no pool held: nothing to step aside from
        assert recorder.calls == []
        with recorder.held() as calls:
            node.put("k", b"v2")
            node.get("k")  # a read does not step aside
            assert calls == ["pause", "resume"]
            node.merge(Record("m", b"v", stamp="0000000000010000-peer"), "peer")
            assert calls == ["pause", "resume"] * 2
            with slots.waiting(), slots.waiting():  # a store's own wait inside Node's
                pass
            assert calls == ["pause", "resume"] * 3
    finally:
        node.close()


def _thread_cpus(pid: int) -> set[str]:
    """Each thread's allowed CPUs, as /proc lists them."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.add(line.split(":", 1)[1].strip())
    return found


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pinning to CPUs is Linux-only")
def test_serve_keeps_every_thread_to_the_cpus_it_is_given(tmp_path):
    cpu = max(os.sched_getaffinity(0))
    server = ServerProcess(["--store", "sqlite:///p.db", "--cpus", str(cpu)], tmp_path)
    try:
        for i in range(20):  # threads that start on demand (the group committer) inherit it
            assert server.request("PUT", f"/v1/keys/k{i}", b"v").status in (200, 201)
        assert _thread_cpus(server.proc.pid) == {str(cpu)}
        assert len(list(Path(f"/proc/{server.proc.pid}/task").iterdir())) > 8
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs 2 CPUs to run on, to serve unpinned and pinned",
)
def test_serve_runs_one_request_at_a_time_anywhere_and_two_on_one_cpu(tmp_path):
    # Anywhere, each runnable thread more adds GIL hand-overs across CPUs (RUNNING_SPREAD); on one
    # CPU a second running request pays (RUNNING). Both from the affinity after --cpus.
    cpu = max(os.sched_getaffinity(0))
    for pinned, running in (([], 1), (["--cpus", str(cpu)], 2)):
        server = ServerProcess(["--store", "sqlite:///r.db", "--threads", "6", *pinned], tmp_path)
        try:
            started = next(line for line in server.log if "serving on" in line)
            assert f"6 threads, {running} running at a time" in started, started
            assert server.request("PUT", "/v1/keys/k", b"v").status in (200, 201)
        finally:
            assert server.stop() == 0


def _request_thread_switches(pid: int) -> int:
    """Context switches so far of the server's threads other than its main one (which turns the
    event loop): a request a request thread serves wakes one."""
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        if task.name == str(pid):
            continue
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                switches += int(line.split()[1])
    return switches


def _switches_for(
    server: ServerProcess, method: str, count: int, path: str = "/v1/keys/k", body: bytes = b"v"
) -> int:
    """The request threads' context switches for ``count`` requests, one after another on one
    keep-alive connection (a PUT sends ``body``)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("PUT", "/v1/keys/k", body=b"v")  # the connection open, the key there
        assert conn.getresponse().read()
        before = _request_thread_switches(server.proc.pid)
        for _ in range(count):
            conn.request(method, path, body=body if method == "PUT" else None)
            response = conn.getresponse()
            # A DELETE of the key deleted already: 404, served all the same.
            assert response.status in (200, 201, 404), response.read()
            response.read()
        return _request_thread_switches(server.proc.pid) - before
    finally:
        conn.close()


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs 2 CPUs to run on, to serve unpinned and pinned",
)
@pytest.mark.parametrize(
    ("store", "pinned", "reads_by_loop", "writes_by_loop"),
    [
        ("sqlite:///l.db", False, True, True),
        # Each commit waits for a flush to the disk: writers share it in a thread's group commit.
        ("sqlite:///f.db?synchronous=full", False, True, False),
        ("sqlite:///p.db", True, False, False),
    ],
)
def test_reads_and_writes_of_one_key_are_served_by_the_event_loop_anywhere_with_sqlite(
    tmp_path, store, pinned, reads_by_loop, writes_by_loop
):
    # Anywhere, a GET of one key with a local backend (sqlite) is served by the loop's own thread:
    # no request thread wakes for it; so is a PUT or a DELETE of one key, while sqlite's commits
    # wait for no flush. Pinned, where a hand-over costs little, the threads serve them all.
    cpus = ["--cpus", str(max(os.sched_getaffinity(0)))] if pinned else []
    server = ServerProcess(["--store", store, *cpus], tmp_path)
    try:
        started = next(line for line in server.log if "serving on" in line)
        reads = ", reads of one key and pages of keys served by the event loop"
        writes = ", reads and writes of one key and pages of keys served by the event loop"
        assert (reads in started) is (reads_by_loop and not writes_by_loop), started
        assert (writes in started) is writes_by_loop, started
        gets = _switches_for(server, "GET", 300)
        heads = _switches_for(server, "HEAD", 100)
        pages = _switches_for(server, "GET", 100, "/v1/keys?prefix=k&limit=10")
        puts = _switches_for(server, "PUT", 100)
        deletes = _switches_for(server, "DELETE", 100)
        # Anywhere, a page of values (up to 4 MiB), one that folds keys, a value over
        # QUICK_WRITE_MAX and a delete by prefix go to a thread.
        values = _switches_for(server, "GET", 50, "/v1/keys?values=true")
        folded = _switches_for(server, "GET", 50, "/v1/keys?separator=/")
        large = _switches_for(server, "PUT", 50, body=b"v" * (QUICK_WRITE_MAX + 1))
        by_prefix = _switches_for(server, "DELETE", 50, "/v1/keys?prefix=k")
        # The purge thread, the committer and the like may wake a few times meanwhile.
        if reads_by_loop:
            assert gets < 60 and heads < 30 and pages < 30, (gets, heads, pages)
        else:
            assert gets >= 300 and heads >= 100 and pages >= 100, (gets, heads, pages)
        if writes_by_loop:
            assert puts < 30 and deletes < 30, (puts, deletes)
        else:
            assert puts >= 100 and deletes >= 100, (puts, deletes)
        assert values >= 50 and folded >= 50, (values, folded)
        assert large >= 50 and by_prefix >= 50, (large, by_prefix)
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs 2 CPUs to run on, for the loop to serve writes",
)
def test_the_writes_the_loop_serves_in_one_turn_share_a_commit(tmp_path, wal_commits):
    # Anywhere, the event loop serves writes of one key; those it is handed in one turn wait for
    # each other and commit together, up to WRITES_A_COMMIT a commit (navistore.turns). The
    # server is stopped while the writes are sent, so that one turn finds them all.
    server = ServerProcess(["--store", "sqlite:///t.db"], tmp_path)
    count = 2 * WRITES_A_COMMIT
    socks = [socket.create_connection((server.host, server.port), 30) for _ in range(count)]
    try:
        for sock in socks:  # each connection accepted, and its first answer read
            sock.sendall(b"GET /v1/keys/none HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _answer(sock)[0] == 404
        before = wal_commits(tmp_path / "t.db")
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: _stopped(server.proc.pid))  # a signal takes effect a little later
            for n, sock in enumerate(socks):
                # The last two write the same key, if it is absent: one of them only.
                key, condition = (
                    (f"k{n}", "") if n < count - 2 else ("same", "If-None-Match: *\r\n")
                )
                sock.sendall(
                    f"PUT /v1/keys/{key} HTTP/1.1\r\nHost: x\r\n{condition}"
                    f"Content-Length: 2\r\n\r\nv{n % 10}".encode()
                )
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        statuses = [_answer(sock)[0] for sock in socks]
        assert statuses[:-2] == [201] * (count - 2) and sorted(statuses[-2:]) == [201, 412]
        assert wal_commits(tmp_path / "t.db") - before == 2  # 32 writes, 16 a commit
        client = Client(server.url)
        assert [client.get(f"k{n}").value for n in range(3)] == [b"v0", b"v1", b"v2"]
    finally:
        for sock in socks:
            sock.close()
        assert server.stop() == 0


def _stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (by SIGSTOP)."""
    states = [
        (task / "stat").read_text().rpartition(")")[2].split()[0]
        for task in Path(f"/proc/{pid}/task").iterdir()
    ]
    return all(state == "T" for state in states)


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP answer from ``sock`` (a keep-alive connection): its status and body."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.read()


def test_the_loop_hands_pipelined_reads_of_large_values_to_the_threads(tmp_path):
    # The loop sends what it serves, so it must not serve a request that could have to wait for
    # the answers before it to drain (waitress waits above outbuf_high_watermark, 16 MiB): with
    # requests pipelined behind it, a read goes to a thread. Served by the loop, this hangs.
    size = 30 * 1024 * 1024
    server = ServerProcess(
        ["--store", "sqlite:///big.db", "--max-value-size", str(32 * 1024 * 1024)], tmp_path
    )
    try:
        value = os.urandom(1024) * (size // 1024)
        assert server.request("PUT", "/v1/keys/big", value).status == 201
        with socket.create_connection((server.host, server.port), timeout=20) as sock:
            sock.sendall(b"GET /v1/keys/big HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
            time.sleep(1)  # a slow client: the answers pile up until it reads
            reader = sock.makefile("rb")
            for _ in range(3):
                status = reader.readline()
                assert status.startswith(b"HTTP/1.1 200"), status
                headers = dict(
                    line.decode().lower().split(": ", 1) for line in iter(reader.readline, b"\r\n")
                )
                assert int(headers["content-length"]) == size
                assert reader.read(size) == value
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("command", "path", "query", "quick"),
    [
        ("GET", "/v1/keys/a/b", "", True),
        ("HEAD", "/v1/keys/a", "", True),
        ("GET", "/v1/keys", "", True),
        ("GET", "/v1/keys", "prefix=a/&after=a/1&limit=1000", True),
        ("GET", "/v1/keys", "values=true", False),
        ("GET", "/v1/keys", "limit=5&values=false", False),  # the name alone sends it away
        ("GET", "/v1/keys", "prefix=a&separator=/", False),
        ("GET", "/v1/keys", "prefix=a&separat%6Fr=/", False),  # a name in escapes: not read here
        ("HEAD", "/v1/keys", "", False),
        ("DELETE", "/v1/keys", "prefix=a", False),
        ("PUT", "/v1/keys/a", "", False),
        ("GET", "/v1/keys/", "", False),
        ("GET", "/v1/changes", "", False),
        ("GET", "/v1/keysx", "", False),
    ],
)
def test_the_loop_serves_reads_of_one_key_and_pages_of_keys_only(command, path, query, quick):
    request = types.SimpleNamespace(command=command, path=path, query=query)
    assert navistore.server.quick_read(request) is quick


@pytest.mark.parametrize(
    ("command", "path", "query", "length", "chunked", "quick"),
    [
        ("PUT", "/v1/keys/a/b", "", 100, False, True),
        ("PUT", "/v1/keys/a", "ttl=30", 0, False, True),
        ("PUT", "/v1/keys/a", "", QUICK_WRITE_MAX, False, True),
        ("PUT", "/v1/keys/a", "", QUICK_WRITE_MAX + 1, False, False),
        ("PUT", "/v1/keys/a", "", 0, True, False),  # its length is known only once received
        ("DELETE", "/v1/keys/a", "", 0, False, True),
        ("DELETE", "/v1/keys", "prefix=a", 0, False, False),
        ("POST", "/v1/batch", "", 100, False, False),
        ("PUT", "/v1/keys/", "", 1, False, False),
        ("POST", "/v1/keys/a", "", 1, False, False),
        ("GET", "/v1/keys/a", "", 0, False, False),  # a read: quick_read's
    ],
)
def test_the_loop_serves_writes_of_one_key_and_small_values_only(
    command, path, query, length, chunked, quick
):
    request = types.SimpleNamespace(
        command=command, path=path, query=query, content_length=length, chunked=chunked
    )
    assert navistore.server.quick_write(request) is quick


def test_the_loop_serves_writes_only_to_a_store_whose_commits_are_quick(tmp_path):
    from navistore_sqlite.store import SqliteStore

    for synchronous, quick in (("normal", True), ("off", True), ("full", False), ("extra", False)):
        store = SqliteStore(str(tmp_path / f"{synchronous}.db"), synchronous=synchronous)
        try:
            assert navistore.server.quick_commits(store) is quick, synchronous
        finally:
            store.close()
    assert not navistore.server.quick_commits(object())  # a store that does not say
    assert not navistore.server.quick_commits(types.SimpleNamespace(quick_commits="yes"))


def test_the_loop_serves_reads_only_anywhere_and_only_from_a_local_backend():
    assert navistore.server.loop_serves_reads(1, frozenset({"ttl", "local"}))
    assert navistore.server.loop_serves_reads(1, None)  # no backend at all (bench/stub.py)
    assert not navistore.server.loop_serves_reads(1, frozenset({"ttl", "shared"}))  # PostgreSQL
    assert not navistore.server.loop_serves_reads(2, frozenset({"local"}))  # on one CPU


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pinning to CPUs is Linux-only")
def test_serve_refuses_cpus_it_may_not_run_on(tmp_path):
    available = os.sched_getaffinity(0)
    missing = max(available) + 1
    done = subprocess.run(
        [sys.executable, "-m", "navistore", "serve", "--port", "0", "--cpus", f"0,{missing}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert f"CPU {missing} is not available" in done.stderr
    assert "it may run on" in done.stderr


def test_a_server_process_starts_with_the_command_a_subclass_gives(tmp_path):
    """bench/put_floor.py starts a patched `navistore serve` through ``command()``."""

    class Named(ServerProcess):
        def command(self) -> list[str]:
            return [*super().command(), "--node-id", "from-the-command"]

    server = Named(["--store", "sqlite:///n.db"], tmp_path)
    try:
        assert server.request("GET", "/v1/status").json()["node_id"] == "from-the-command"
    finally:
        assert server.stop() == 0


def test_serve_on_a_store_it_cannot_open_says_why_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "navistore", "serve", "--port", "0"]
        + ["--store", "sqlite:///no-such-folder/x.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot open no-such-folder/x.db: the directory" in done.stderr
    assert not (tmp_path / "no-such-folder").exists()  # nothing made in its place


@pytest.mark.parametrize("host", ["127.0.0.1", "no-such-host.invalid"])
def test_serve_on_an_address_it_cannot_take_says_why_without_a_traceback(tmp_path, host):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "navistore", "serve", "--host", host, "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"cannot listen on {host}:{port}" in done.stderr
    assert ("another server has that port" if host == "127.0.0.1" else "does not resolve") in (
        done.stderr
    )
    # the store was opened first, and closed again: another server may have it now
    ServerProcess(["--port", "0"], tmp_path).stop()


def test_sighup_reads_the_token_files_again(serve, tmp_path):
    # Rotating a token without a restart (watches waiting stay), as `consul reload` does
    token, reading = tmp_path / "token", tmp_path / "read-token"
    token.write_text("first\n")
    reading.write_text("r-first\n")
    server = serve("--token-file", str(token), "--read-token-file", str(reading))
    Client(server.url, token="first").put("k", b"v")
    token.write_text("second\n")
    reading.write_text("r-second\n")
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "tokens read again from" in "".join(server.log), 10)
    with pytest.raises(Unauthorized):
        Client(server.url, token="first").get("k")
    assert Client(server.url, token="second").get("k").value == b"v"
    assert Client(server.url, token="r-second").get("k").value == b"v"
    with pytest.raises(Forbidden):
        Client(server.url, token="r-second").put("k", b"w")
    # files that no longer make a pair (the read token the same as the token) change nothing
    reading.write_text("second\n")
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "the tokens stay as they were" in "".join(server.log), 10)
    assert Client(server.url, token="r-second").get("k").value == b"v"
    assert server.stop() == 0


def test_a_token_given_outright_wins_over_its_file_on_sighup_too(serve, tmp_path):
    (tmp_path / "token").write_text("from-file\n")
    server = serve("--token", "outright", "--token-file", str(tmp_path / "token"))
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "no token file to read" in "".join(server.log), 10)
    assert Client(server.url, token="outright").put("k", b"v").created
    with pytest.raises(Unauthorized):
        Client(server.url, token="from-file").get("k")


_SERVE_ON_TWO_SOCKETS = """
import sys
import navistore.server as server
from navistore.settings import Settings

options = server.server_options


def two_sockets(settings, open_files=None):  # what waitress makes of a host of two addresses
    found = options(settings, open_files)
    del found["host"], found["port"]
    return {**found, "listen": "127.0.0.1:0 127.0.0.1:0"}


server.server_options = two_sockets
sys.exit(server.serve(Settings(store="sqlite:///two.db", port=0)))
"""


def test_serve_listens_on_every_address_the_host_resolves_to(tmp_path):
    # "localhost" is 127.0.0.1 and ::1 on many machines (Debian's /etc/hosts): waitress listens on
    # both, behind a MultiSocketServer, and `navistore serve` crashed at start on it.
    script = tmp_path / "serve_two.py"
    script.write_text(_SERVE_ON_TWO_SOCKETS)
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "serving on http://127.0.0.1:" in line, line
        urls = re.findall(r"http://127\.0\.0\.1:\d+", line)
        assert len(set(urls)) == 2
        with Client(urls[0]) as first, Client(urls[1]) as second:
            first.put("k", b"one store")
            assert second.get("k").value == b"one store"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_serve_on_ipv6_says_its_url_in_brackets(serve):
    server = serve("--host", "::1")
    assert any(f"serving on http://[::1]:{server.port} " in line for line in server.log)
    with Client(f"http://[::1]:{server.port}") as client:
        assert client.put("k", b"v").etag

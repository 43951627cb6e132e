"""Many clients at once: a fleet's keep-alive connections are served, and idle ones cost nothing.

The event loop (``navistore.eventloop``) keeps one epoll set and looks only at the connections
that changed; these tests hold it to waitress's behaviour on the paths a connection can take.
"""

from __future__ import annotations

import re
import resource
import socket
import sys
import threading
import time

import pytest

import navistore.eventloop
import navistore.server
from navistore.client import Client
from navistore.settings import Settings
from navistore.testing.servers import (
    InProcessServer,
    ServerProcess,
    need_open_files,
    read_responses,
    wait_until,
)

FLEET = 400  # waitress's limit was 180 (threads + watchers, doubled, + 100)


def _get(key: str) -> bytes:
    return f"GET /v1/keys/{key} HTTP/1.1\r\nHost: navistore\r\n\r\n".encode()


def _answer(sock: socket.socket) -> bytes:
    return read_responses(sock, 1)[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_open_files(FLEET + 200)
    server = ServerProcess([], tmp_path_factory.mktemp("connections"))
    Client(server.url).put("k", b"v")
    yield server
    server.stop()


def test_a_fleet_of_keep_alive_clients_is_served_and_a_newcomer_too(server):
    fleet = []
    try:
        for _ in range(FLEET):
            sock = socket.create_connection((server.host, server.port), timeout=10)
            sock.sendall(_get("k"))
            fleet.append(sock)
        # Every one answered, on a connection that stays open (before: the 179th on waited for
        # an idle connection to time out, 60 s)
        for sock in fleet:
            assert _answer(sock).startswith(b"HTTP/1.1 200")
        for sock in fleet:
            sock.sendall(_get("k"))
        for sock in fleet:
            assert _answer(sock).endswith(b"\r\n\r\nv")
        with Client(server.url, timeout=10) as newcomer:
            assert newcomer.get("k").value == b"v"
    finally:
        for sock in fleet:
            sock.close()


def test_idle_connections_are_not_looked_at_while_others_are_served(tmp_path, monkeypatch):
    # waitress's loop asks every connection whether it is readable on every turn: with 200 idle
    # connections, each request costs 200 calls or more. This loop asks only what changed.
    idle_count, requests = 200, 50
    need_open_files(idle_count + 200)
    server = InProcessServer(Settings(store=f"sqlite:///{tmp_path / 'x.db'}", port=0))
    idle = []
    try:
        Client(server.url).put("k", b"v")
        for _ in range(idle_count):
            sock = socket.create_connection((server.host, server.port), timeout=10)
            sock.sendall(_get("k"))
            idle.append(sock)
        for sock in idle:
            _answer(sock)
        asked = {"idle": 0, "busy": 0}
        idle_ports = {sock.getsockname()[1] for sock in idle}
        readable = navistore.server.Channel.readable

        def counted(channel):
            asked["idle" if channel.addr[1] in idle_ports else "busy"] += 1
            return readable(channel)

        monkeypatch.setattr(navistore.server.Channel, "readable", counted)
        with Client(server.url) as busy:
            for _ in range(requests):
                assert busy.get("k").value == b"v"
        assert asked["busy"] >= requests  # the requests were counted: the count works
        # waitress's maintenance marks every connection once every 30 s (to time the idle out)
        assert asked["idle"] <= idle_count, asked
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_connections_waiting_together_are_all_taken_in_one_turn(tmp_path, monkeypatch):
    # waitress takes one connection an event: behind a loop busy serving reads, 64 connections
    # opened at once got in one a turn, and their first requests waited up to 500 ms.
    count = 40
    need_open_files(count + 100)
    gate = threading.Event()
    gate.set()
    taken: list[int] = []  # connections each turn took
    turn = navistore.eventloop.EventLoop.turn

    def held(loop, timeout):
        gate.wait(10)
        before = len(loop._map)
        turn(loop, timeout)
        taken.append(len(loop._map) - before)

    monkeypatch.setattr(navistore.eventloop.EventLoop, "turn", held)
    server = InProcessServer(Settings(store=f"sqlite:///{tmp_path / 'x.db'}", port=0))
    socks = []
    try:
        gate.clear()  # the loop stops before its next turn
        time.sleep(0.2)  # the turn under way ends (it waits 50 ms at most)
        socks = [
            socket.create_connection((server.host, server.port), timeout=10) for _ in range(count)
        ]
        gate.set()
        for sock in socks:
            sock.sendall(_get("k"))
        for sock in socks:
            assert _answer(sock).startswith(b"HTTP/1.1 404")
        assert max(taken) == count, taken  # one turn took them all
    finally:
        gate.set()
        for sock in socks:
            sock.close()
        server.stop()


def _gauge(metrics: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", metrics, re.M).group(1))


def test_metrics_count_the_connections_open_and_the_most_served(server):
    with Client(server.url) as client:

        def gauge(name: str) -> float:
            return _gauge(client.request("GET", "/metrics")[2].decode(), name)

        idle = [socket.create_connection((server.host, server.port)) for _ in range(30)]
        try:
            for sock in idle:
                sock.sendall(_get("k"))
                _answer(sock)
            during = gauge("navistore_connections")
            assert gauge("navistore_connections_max") == 10_000
        finally:
            for sock in idle:
                sock.close()
        assert during >= 30 + 1  # and the client's own
        wait_until(lambda: gauge("navistore_connections") <= during - 30)


def test_pipelined_requests_are_answered_in_order(server):
    Client(server.url).put("p/2", b"two")
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(_get("k") + _get("p/2") + _get("missing"))
        answers = read_responses(sock, 3)
    assert answers[0].endswith(b"\r\n\r\nv")
    assert answers[1].endswith(b"\r\n\r\ntwo")
    assert answers[2].startswith(b"HTTP/1.1 404")


def test_a_large_value_reaches_a_slow_reader_whole(server):
    # More than the socket buffers hold: the answer goes out as the reader makes room
    value = bytes(range(256)) * 4096  # 1 MiB, the default max_value_size
    Client(server.url).put("big", value)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    with sock:
        sock.sendall(_get("big"))
        time.sleep(0.5)  # the server fills the buffers and waits for room
        data = b""
        while len(data) < len(value):
            chunk = sock.recv(8192)
            assert chunk, "closed before the whole value"
            data += chunk
            if len(data) < 65536:
                time.sleep(0.001)
        sock.sendall(_get("k"))  # and the connection goes on
        rest = data + _answer(sock)
    assert rest.count(b"HTTP/1.1 200") == 1 + 1
    assert value in rest


def test_connection_close_is_honoured_and_hangups_cost_nothing(server):
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/keys/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nv")
    for _ in range(20):  # a hang-up before, while and after the request, and half a body
        for message in (b"", b"GET /v1/keys/k HTTP/1.1\r\n", _get("k")):
            socket.create_connection((server.host, server.port), timeout=10).close()
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(message)
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(b"PUT /v1/keys/h HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
    with Client(server.url, timeout=10) as client:
        assert client.get("k").value == b"v"
        assert list(client.list("h")) == []  # half a body wrote nothing


def test_connections_come_and_go_and_every_one_is_answered(server):
    # Each new socket takes the descriptor the last one freed: the loop's registrations follow
    for _ in range(300):
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(_get("k"))
            assert _answer(sock).endswith(b"\r\n\r\nv")


def test_max_connections_holds_the_rest_until_one_closes(serve):
    server = serve("--max-connections", "20")
    held = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(20)]
    try:
        for sock in held:
            sock.sendall(_get("k"))
            assert _answer(sock).startswith(b"HTTP/1.1 404")
        late = socket.create_connection((server.host, server.port), timeout=10)
        held.append(late)
        late.sendall(_get("k"))
        late.settimeout(1)
        with pytest.raises(TimeoutError):
            late.recv(1)  # not taken on: the kernel holds it in the listen queue
        held.pop(0).close()
        late.settimeout(10)
        assert _answer(late).startswith(b"HTTP/1.1 404")
    finally:
        for sock in held:
            sock.close()


class _Limited(ServerProcess):
    """``navistore serve`` started under ``prlimit --nofile=SOFT:HARD``."""

    def __init__(self, nofile: str, args: list[str], cwd) -> None:
        self.nofile = nofile
        super().__init__(args, cwd)

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}", *super().command()]


def _open_files(pid: int) -> tuple[int, int]:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            soft, hard = (
                resource.RLIM_INFINITY if word == "unlimited" else int(word)
                for word in line.split()[3:5]
            )
            return soft, hard
    raise AssertionError("no open-file limit in /proc")


@pytest.mark.skipif(sys.platform != "linux", reason="prlimit and /proc/PID/limits are Linux's")
def test_the_open_file_limit_is_raised_for_max_connections_or_the_log_says_why_not(tmp_path):
    # A shell's soft limit is often 1,024: raised toward the hard limit, as Go does for etcd
    reserved = navistore.server.reserved_files(Settings())
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 5000 + reserved:
        pytest.skip(f"this process may open {hard} files (ulimit -Hn); the test needs 5,500")
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    server = _Limited(f"1024:{hard_text}", ["--max-connections", "5000"], tmp_path)
    try:
        assert _open_files(server.proc.pid) == (5000 + reserved, hard)
        assert not any("serving at most" in line for line in server.log)
    finally:
        server.stop()
    # A hard limit below what max_connections needs: served within it, and the log says so
    low = _Limited("512:600", [], tmp_path)
    try:
        assert _open_files(low.proc.pid) == (600, 600)
        said = next(line for line in low.log if "serving at most" in line)
        assert f"serving at most {600 - reserved} connections at once, not 10000" in said
        assert "ulimit -n" in said and "LimitNOFILE" in said
        with Client(low.url, timeout=10) as client:
            assert client.health()
    finally:
        low.stop()


def test_where_there_is_no_epoll_waitress_loop_serves(tmp_path, monkeypatch):
    # macOS and Windows have no epoll: make_server leaves waitress's own loop in place
    monkeypatch.setattr(navistore.server.EventLoop, "available", staticmethod(lambda: False))
    server = InProcessServer(
        Settings(store=f"sqlite:///{tmp_path / 'x.db'}", port=0, max_connections=500)
    )
    try:
        assert server.server.event_loop is None
        with Client(server.url) as client:
            client.put("k", b"v")
            assert client.get("k").value == b"v"
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(_get("k") + _get("k"))
            assert [a.endswith(b"\r\n\r\nv") for a in read_responses(sock, 2)] == [True, True]
        # watches wait without a thread on this loop too: woken by a commit, or at the deadline
        since = Client(server.url).status()["last_seq"]
        watch = "GET /v1/changes?since={}&key={}&wait={} HTTP/1.1\r\nHost: n\r\n\r\n"
        with (
            socket.create_connection((server.host, server.port), timeout=10) as woken,
            socket.create_connection((server.host, server.port), timeout=10) as waits,
        ):
            woken.sendall(watch.format(since, "w", 30).encode())
            started = time.monotonic()
            waits.sendall(watch.format(since, "quiet", 1).encode())
            wait_until(lambda: server.node.watchers == 2)
            pool = server.server.task_dispatcher
            wait_until(lambda: len(pool.idle) == len(pool.threads))  # no thread holds them
            Client(server.url).put("w", b"1")
            assert b'"key":"w"' in _answer(woken)
            assert b'"changes":[]' in _answer(waits)
            assert 0.95 <= time.monotonic() - started < 3
    finally:
        server.stop()

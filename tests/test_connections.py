"""Many clients at once: a fleet's keep-alive connections are served, up to max_connections."""

from __future__ import annotations

import resource
import socket
import sys

import pytest

import navistore.server
from navistore.client import Client
from navistore.settings import Settings
from navistore.testing.servers import ServerProcess

FLEET = 400  # waitress's limit was 180 (threads + watchers, doubled, + 100)


def _room_for(files: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < files:
        if hard != resource.RLIM_INFINITY and hard < files:
            pytest.skip(f"this process may open {hard} files (ulimit -Hn); the test needs {files}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, hard))


def _get(key: str) -> bytes:
    return f"GET /v1/keys/{key} HTTP/1.1\r\nHost: navistore\r\n\r\n".encode()


def _answers(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` whole responses (headers and a Content-Length body) from ``sock``, and no more."""
    data, answers = b"", []
    while len(answers) < count:
        head, found, rest = data.partition(b"\r\n\r\n")
        if found:
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if len(rest) >= length:
                answers.append(head + found + rest[:length])
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    assert not data, f"more than {count} answers arrived"
    return answers


def _answer(sock: socket.socket) -> bytes:
    return _answers(sock, 1)[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _room_for(FLEET + 200)
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

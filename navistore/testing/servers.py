"""Real Navistore servers for tests: a ``navistore serve`` child process, or a Node served by
waitress in this process, both on 127.0.0.1, with a small HTTP client that sends paths as given."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_SERVING = re.compile(r"serving on http://(?:\[([^\]]+)\]|([^:/\s]+)):(\d+)")


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (for peers that must know it in advance)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not true after {timeout} s: {getattr(predicate, '__name__', predicate)}"
            )
        time.sleep(interval)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


class HttpClient:
    """Requests to one server, paths sent exactly as given (no normalisation)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, headers=None) -> Response:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()


class ServerProcess(HttpClient):
    """A real ``navistore serve`` in a child process."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.cwd = args, cwd
        self.env = {**os.environ, **(env or {})}
        self.log: list[str] = []
        self.proc: subprocess.Popen[str]
        self.start()

    def command(self) -> list[str]:
        """The command line that starts the server (a benchmark may start it another way)."""
        return [sys.executable, "-m", "navistore", "serve", "--port", "0", *self.args]

    def start(self, timeout: float = 20.0) -> None:
        self.log = []
        self._address: tuple[str, int] | None = None
        self._serving = threading.Event()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # A thread reads the log from the start: a server that says nothing more (or not where it
        # serves) fails the start in time, where reading here would wait for its next line.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not self._serving.wait(timeout):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"navistore serve did not start in time: {''.join(self.log)}")
        if self._address is None:
            self._reader.join(timeout=5)
            raise RuntimeError(f"navistore serve exited: {''.join(self.log)}")
        self.host, self.port = self._address

    def _drain(self) -> None:
        assert self.proc.stderr is not None  # started with stderr=PIPE
        for line in self.proc.stderr:
            self.log.append(line)
            if self._address is None and (match := _SERVING.search(line)):
                self._address = (match.group(1) or match.group(2), int(match.group(3)))  # [::1]
                self._serving.set()
        self._serving.set()  # it exited

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)


class InProcessServer(HttpClient):
    """A Node served by waitress on a thread of this process, on 127.0.0.1."""

    def __init__(self, settings: Any, plugins: Any = None) -> None:
        from navistore.app import create_app
        from navistore.node import Node
        from navistore.server import make_server

        self.settings = settings
        self.node = Node(settings, plugins=plugins)
        try:
            self.server = make_server(create_app(self.node), settings, self.node)
        except BaseException:
            self.node.close()
            raise
        self.host, self.port = "127.0.0.1", self.server.effective_port
        self._stop = threading.Event()
        self.node.start()
        self._thread = threading.Thread(
            target=self._loop, name=f"navistore :{self.port}", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        from navistore.server import close_server, poll_once

        while not self._stop.is_set():
            poll_once(self.server, 0.05)
        close_server(self.server, timeout=2)

    def stop(self) -> None:
        """Stop serving and close the Node (and its store)."""
        if self._stop.is_set():
            return
        self.node.begin_shutdown()
        self._stop.set()
        self._thread.join(timeout=10)
        self.node.close()


def read_responses(sock: socket.socket, count: int, timeout: float | None = None) -> list[bytes]:
    """``count`` whole HTTP responses (headers and a Content-Length body) read from ``sock``, and
    no more arrived: for tests that speak HTTP on a socket of their own (pipelining, hang-ups,
    watches). ``timeout``, when given, bounds each read."""
    if timeout is not None:
        sock.settimeout(timeout)
    data = b""
    responses: list[bytes] = []
    while len(responses) < count:
        head, found, rest = data.partition(b"\r\n\r\n")
        if found:
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if len(rest) >= length:
                responses.append(head + found + rest[:length])
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    assert not data, f"more than {count} responses arrived"
    return responses


class RunSlotRecorder:
    """A run-slot pool (``navistore.slots``) that records what a request does with its slot:
    "pause" when it steps aside (``slots.waiting()``), "resume" when it runs on. A test may add
    entries of its own to ``calls``, to see that some work happened in between (a route of yours
    that works on megabytes should step aside for it, as pages of values do)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")

    def crowded(self) -> bool:
        return False  # no other request in hand

    @contextlib.contextmanager
    def held(self) -> Iterator[list[str]]:
        """Hold this pool on the current thread, as the server holds its own around a request."""
        from navistore import slots

        slots.hold(self)
        try:
            yield self.calls
        finally:
            slots.hold(None)


def need_open_files(files: int) -> None:
    """Raise this process's limit on open files to ``files`` (as ``navistore serve`` raises its
    own), or skip the test, naming the hard limit that stops it."""
    import pytest

    from navistore.server import raise_open_file_limit

    have = raise_open_file_limit(files)
    if have < files:
        pytest.skip(f"this process may open {have} files (ulimit -Hn); the test needs {files}")


def increment(url: str, key: str, times: int) -> None:
    """Add 1 to the integer stored under ``key``, ``times`` times, by compare-and-set (If-Match),
    retrying whenever another writer got there first; a missing key counts as 0."""
    from navistore import errors
    from navistore.client import Client

    with Client(url) as client:
        done = 0
        while done < times:
            try:
                current = client.get(key)
                client.put(key, str(int(current.value) + 1).encode(), if_match=current.etag)
            except errors.KeyNotFound:
                try:
                    client.put(key, b"1", if_none_match="*")
                except errors.PreconditionFailed:
                    continue
            except errors.PreconditionFailed:
                continue
            done += 1


def writes_between_pages(url: str, write: Callable[[Any], None]) -> Any:
    """A ``navistore.client.Client`` for ``url`` that, once it has read its first page of
    ``GET /v1/keys`` and before it reads on, lets ``write`` change the store through another
    client: what a reader of several pages must not lose. ``pages`` counts the pages read."""
    from navistore.client import Client

    class WritesBetweenPages(Client):
        pages = 0

        def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            answer = super().request(method, path, *args, **kwargs)
            if path == "/v1/keys":
                self.pages += 1
                if self.pages == 1:
                    with Client(url) as other:
                        write(other)
            return answer

    return WritesBetweenPages(url)


class WriteLoad:
    """Writer threads that PUT new keys (``PREFIX<thread>/<n>``) until stopped, and remember every
    write the server acknowledged (201) in ``acked``. A write that failed (the server died, say)
    was not acknowledged; the writer reconnects and goes on with a new key."""

    def __init__(self, url: str, prefix: str, threads: int = 4) -> None:
        self.url, self.prefix = url, prefix
        self.acked: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(n,)) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def _connect(self) -> http.client.HTTPConnection:
        host, _, port = self.url.removeprefix("http://").partition(":")
        return http.client.HTTPConnection(host, int(port), timeout=10)

    def _write(self, n: int) -> None:
        conn = self._connect()
        i = 0
        while not self._stop.is_set():
            key, value = f"{self.prefix}{n}/{i}", f"value-{n}-{i}".encode()
            i += 1
            try:
                conn.request("PUT", f"/v1/keys/{key}", body=value)
                answer = conn.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = self._connect()
                self._stop.wait(0.05)
                continue
            if answer.status == 201:
                with self._lock:
                    self.acked[key] = value
        conn.close()

    def stop(self) -> dict[str, bytes]:
        """Stop the writers; return the acknowledged writes."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.acked

"""Root conftest: shared fixtures for the core's tests and the shipped plugins' tests.

``serve`` starts a real ``navistore serve`` process on 127.0.0.1, on a free port.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# The conformance suite, loaded once here so that the shipped plugins adopt it from their own tests
# exactly as a third party would (pytest accepts pytest_plugins only in the rootdir conftest).
pytest_plugins = ["navistore.testing", "pytester"]

_SERVING = re.compile(r"serving on http://([^:]+):(\d+)")


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


class ServerProcess:
    """A real ``navistore serve`` in a child process, and a small HTTP client for it."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.cwd = args, cwd
        self.env = {**os.environ, **(env or {})}
        self.log: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self, timeout: float = 20.0) -> None:
        self.log = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "navistore", "serve", "--port", "0", *self.args],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"navistore serve exited: {''.join(self.log)}")
            self.log.append(line)
            match = _SERVING.search(line)
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                break
        else:
            raise RuntimeError("navistore serve did not start in time")
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

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

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)


@pytest.fixture
def serve(tmp_path):
    """Start ``navistore serve`` with extra arguments; every server is stopped afterwards."""
    started: list[ServerProcess] = []

    def start(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
        server = ServerProcess(list(args), cwd or tmp_path, env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc and server.proc.poll() is None:
            server.kill()


@pytest.fixture
def make_node(tmp_path):
    """Open Nodes on sqlite files under tmp_path (same name, same file); closed afterwards."""
    from navistore.node import Node
    from navistore.settings import Settings

    nodes = []

    def make(name: str = "node.db", **settings):
        settings.setdefault("store", f"sqlite:///{tmp_path / name}")
        node = Node(Settings(**settings))
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def node(make_node):
    return make_node()

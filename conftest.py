"""Root conftest: shared fixtures for the core's tests and the shipped plugins' tests.

``serve`` starts a real ``navistore serve`` process on 127.0.0.1, on a free port.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The conformance suite, loaded once here so that the shipped plugins adopt it from their own tests
# exactly as a third party would (pytest accepts pytest_plugins only in the rootdir conftest).
pytest_plugins = ["navistore.testing", "pytester"]


@pytest.fixture
def serve(tmp_path):
    """Start ``navistore serve`` with extra arguments; every server is stopped afterwards."""
    from navistore.testing.servers import ServerProcess

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


@pytest.fixture
def wal_commits():
    """Count the commits in a sqlite database's write-ahead log (``path``-wal) since it last
    began again: the frames whose header holds the database's size after the commit (other
    frames hold 0), stopping at the first frame left from before (its salts differ)."""

    def count(path: Path) -> int:
        wal = Path(f"{path}-wal").read_bytes()
        if len(wal) < 32:
            return 0
        page_size = int.from_bytes(wal[8:12], "big")
        salts = wal[16:24]
        commits = 0
        for at in range(32, len(wal) - 24 - page_size + 1, 24 + page_size):
            if wal[at + 8 : at + 16] != salts:
                break
            commits += int.from_bytes(wal[at + 4 : at + 8], "big") != 0
        return commits

    return count

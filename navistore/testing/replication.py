"""``ReplicationSuite``: several Nodes with your replication strategy, on real HTTP, in one process.

Adopt it with a class that names the strategy::

    class TestMyReplication(ReplicationSuite):
        replicator = "my-strategy"

Nodes run on free ports of 127.0.0.1, on sqlite stores under ``tmp_path`` (override
``make_store_url`` to use another backend), and every node lists every other as a peer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from urllib.parse import quote

import pytest

from navistore.settings import Settings
from navistore.testing.servers import InProcessServer, free_port, wait_until

CONVERGE_SECONDS = 15.0


class Cluster:
    """A few nodes that peer each other; each can be stopped and started again on its port."""

    def __init__(self, replicator: str, urls: list[str], extra: dict) -> None:
        self.ports = [free_port() for _ in urls]
        self.urls = urls
        self.replicator = replicator
        self.extra = extra
        self.nodes: list[InProcessServer | None] = [None] * len(urls)
        for i in range(len(urls)):
            self.start(i)

    def settings(self, i: int) -> Settings:
        peers = tuple(f"http://127.0.0.1:{p}" for j, p in enumerate(self.ports) if j != i)
        return Settings(
            store=self.urls[i],
            port=self.ports[i],
            node_id=f"node{i}",
            peer=peers,
            replicator=self.replicator,
            **self.extra,
        )

    def start(self, i: int) -> InProcessServer:
        server = InProcessServer(self.settings(i))
        self.nodes[i] = server
        return server

    def stop(self, i: int) -> None:
        node, self.nodes[i] = self.nodes[i], None
        if node is not None:
            node.stop()

    def close(self) -> None:
        for i in range(len(self.nodes)):
            self.stop(i)

    def running(self) -> list[InProcessServer]:
        return [n for n in self.nodes if n is not None]

    def snapshot(self, node: InProcessServer) -> dict[str, tuple[str, bytes, str]]:
        """Every live key on a node: key -> (etag, value, content type)."""
        found, after = {}, ""
        while True:
            page = node.request("GET", "/v1/keys?limit=1000&after=" + quote(after, safe="")).json()
            for entry in page["keys"]:
                value = node.request("GET", "/v1/keys/" + quote(entry["key"], safe=""))
                if value.status == 200:
                    found[entry["key"]] = (entry["etag"], value.body, entry["content_type"])
            if page["next"] is None:
                return found
            after = page["next"]

    def converged(self) -> dict[str, tuple[str, bytes, str]]:
        """Wait until every running node holds the same keys, etags, values and content types."""

        def same() -> tuple[dict] | None:
            snapshots = [self.snapshot(node) for node in self.running()]
            return (snapshots[0],) if all(s == snapshots[0] for s in snapshots) else None

        return wait_until(same, timeout=CONVERGE_SECONDS, interval=0.1)[0]


class ReplicationSuite:
    """Adopt with a subclass that sets ``replicator`` to your strategy's name."""

    replicator: str | None = None
    nodes = 3

    @pytest.fixture
    def make_store_url(self, tmp_path) -> Callable[[], str]:
        return lambda: f"sqlite:///{tmp_path}/{uuid.uuid4().hex}.db"

    @pytest.fixture
    def cluster(self, make_store_url):
        if not self.replicator:
            pytest.fail(
                f"{type(self).__name__} needs a `replicator` class attribute: the name of your "
                "replication strategy, as your navistore_replicators hook returns it",
                pytrace=False,
            )
        urls = [make_store_url() for _ in range(self.nodes)]
        cluster = Cluster(self.replicator, urls, {"purge_interval": 1})
        yield cluster
        cluster.close()

    def test_a_write_on_any_node_reaches_every_node(self, cluster):
        for i, node in enumerate(cluster.running()):
            answer = node.request(
                "PUT", f"/v1/keys/from/{i}", f"v{i}".encode(), {"Content-Type": "text/x"}
            )
            assert answer.status == 201
        state = cluster.converged()
        assert {k: v[1] for k, v in state.items()} == {
            f"from/{i}": f"v{i}".encode() for i in range(len(cluster.nodes))
        }
        assert all(content_type == "text/x" for _, _, content_type in state.values())

    def test_deletes_propagate(self, cluster):
        first, second = cluster.running()[:2]
        first.request("PUT", "/v1/keys/doomed", b"v")
        cluster.converged()
        assert second.request("DELETE", "/v1/keys/doomed").status == 200
        assert "doomed" not in cluster.converged()
        for node in cluster.running():
            assert node.request("GET", "/v1/keys/doomed").status == 404

    def test_conflicting_writes_resolve_the_same_way_everywhere(self, cluster):
        for round_ in range(5):
            for i, node in enumerate(cluster.running()):
                node.request("PUT", f"/v1/keys/contested/{round_}", f"node{i}".encode())
        state = cluster.converged()
        assert len([k for k in state if k.startswith("contested/")]) == 5
        for key, (etag, value, _) in state.items():
            writer = etag.strip('"').partition("-")[2]
            assert value == writer.encode(), f"{key}: the value is not the newest stamp's"

    def test_a_stopped_node_catches_up(self, cluster):
        cluster.stop(2)
        first = cluster.running()[0]
        for i in range(50):
            first.request("PUT", f"/v1/keys/while-down/{i:02d}", f"{i}".encode())
        first.request("DELETE", "/v1/keys/while-down/00")
        time.sleep(0.2)
        cluster.start(2)
        state = cluster.converged()
        assert sorted(k for k in state if k.startswith("while-down/")) == [
            f"while-down/{i:02d}" for i in range(1, 50)
        ]

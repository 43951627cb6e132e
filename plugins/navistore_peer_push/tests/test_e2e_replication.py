"""Peer-push end to end: real `navistore serve` processes on 127.0.0.1 that replicate."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from navistore.testing.servers import free_port, wait_until

FAST = {"NAVISTORE_PEER_PUSH_BACKOFF_MAX": "0.5"}


@pytest.fixture
def cluster(serve, tmp_path):
    """Start nodes that list each other as peers: cluster(n, topology="mesh"|"ring")."""

    def start(n: int, topology: str = "mesh", extra: tuple[str, ...] = ()):
        ports = [free_port() for _ in range(n)]
        nodes = []
        for i, port in enumerate(ports):
            if topology == "ring":
                peers = [ports[(i + 1) % n]]
            else:
                peers = [p for p in ports if p != port]
            args = [
                "--port",
                str(port),
                "--node-id",
                f"n{i}",
                "--store",
                f"sqlite:///{tmp_path}/n{i}.db",
                "--access-log",  # the tests count pushes from the receivers' access lines
                "true",
            ]
            for p in peers:
                args += ["--peer", f"http://127.0.0.1:{p}"]
            nodes.append(serve(*args, *extra, env=FAST))
        return nodes

    return start


def get(node, key):
    return node.request("GET", f"/v1/keys/{key}")


def status(node) -> dict:
    return node.request("GET", "/v1/replication/status").json()


def snapshot(node) -> dict[str, str]:
    keys = node.request("GET", "/v1/keys?limit=1000").json()["keys"]
    return {k["key"]: k["etag"] for k in keys}


def converged(nodes, timeout: float = 15.0) -> dict[str, str]:
    def same():
        views = [snapshot(n) for n in nodes]
        return (views[0],) if all(v == views[0] for v in views) else None

    return wait_until(same, timeout=timeout, interval=0.1)[0]


def test_two_peers_exchange_writes_and_deletes_within_a_second(cluster):
    a, b = cluster(2)
    put = a.request("PUT", "/v1/keys/conf/db", b"10.0.0.5", {"Content-Type": "text/plain"})
    started = time.monotonic()
    wait_until(lambda: get(b, "conf/db").status == 200, timeout=1.0, interval=0.01)
    seen = get(b, "conf/db")
    assert seen.body == b"10.0.0.5" and seen.headers["content-type"] == "text/plain"
    assert seen.headers["etag"] == put.headers["etag"]
    b.request("PUT", "/v1/keys/from-b", b"x")
    wait_until(lambda: get(a, "from-b").status == 200, timeout=1.0, interval=0.01)
    assert b.request("DELETE", "/v1/keys/conf/db").status == 200
    wait_until(lambda: get(a, "conf/db").status == 404, timeout=1.0, interval=0.01)
    assert time.monotonic() - started < 3
    # b's deletion took a seq of a's own when a merged it: a's lag counts it until a's pusher
    # moves its cursor past it (it need not send b what came from b), a moment later
    wait_until(lambda: status(a)["peers"][0]["lag_records"] == 0, timeout=2.0, interval=0.01)
    peer = status(a)["peers"][0]
    assert peer["node_id"] == "n1" and peer["last_error"] is None


def test_a_peer_killed_during_1000_writes_gets_all_of_them_once(cluster):
    a, b = cluster(2)
    errors = []

    def write():
        for i in range(1000):
            answer = a.request("PUT", f"/v1/keys/load/{i:04d}", f"value-{i}".encode())
            if answer.status != 201:
                errors.append(answer)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.3)
    b.kill()
    time.sleep(0.5)
    b.start()
    writer.join()
    assert errors == []
    wait_until(lambda: len(snapshot(b)) == 1000, timeout=20)
    feed = b.request("GET", "/v1/changes?limit=1000&prefix=load/").json()
    keys = [c["key"] for c in feed["changes"]]
    assert len(keys) == len(set(keys)) == 1000  # each key once: nothing duplicated
    for i in (0, 499, 999):
        assert get(b, f"load/{i:04d}").body == f"value-{i}".encode()
    assert snapshot(a) == snapshot(b)
    last_seq = a.request("GET", "/v1/status").json()["last_seq"]
    wait_until(lambda: status(a)["peers"][0]["cursor"] == last_seq, timeout=5)


@pytest.mark.parametrize("topology", ["ring", "mesh"])
def test_conflicting_writes_converge_and_traffic_stops(cluster, topology):
    nodes = cluster(3, topology)
    barrier = threading.Barrier(3)

    def write(i: int) -> None:
        barrier.wait()
        for round_ in range(20):
            nodes[i].request("PUT", f"/v1/keys/hot/{round_ % 5}", f"n{i}-{round_}".encode())

    threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = converged(nodes)
    assert sorted(state) == [f"hot/{i}" for i in range(5)]
    for key, etag in state.items():
        writer = etag.strip('"').partition("-")[2]
        assert get(nodes[0], key).body.startswith(f"{writer}-".encode())
    # Quiet: after convergence, no node commits anything more and no batch is pushed.
    time.sleep(1.0)
    seqs = [n.request("GET", "/v1/status").json()["last_seq"] for n in nodes]
    pushes = [sum("POST /v1/replication/records" in line for line in n.log) for n in nodes]
    time.sleep(3.0)
    assert [n.request("GET", "/v1/status").json()["last_seq"] for n in nodes] == seqs
    assert [sum("POST /v1/replication/records" in line for line in n.log) for n in nodes] == pushes


def test_a_new_node_joins_and_a_wiped_node_catches_up(cluster, serve, tmp_path):
    a, b = cluster(2)
    for i in range(50):
        a.request("PUT", f"/v1/keys/k{i:02d}", b"v")
    converged([a, b])
    # A new, empty node, added to a's peers at runtime, gets everything from the start.
    port = free_port()
    c = serve("--port", str(port), "--node-id", "n2", "--store", f"sqlite:///{tmp_path}/n2.db")
    peers = a.request("GET", "/v1/replication/peers").json()["peers"]
    body = json.dumps({"peers": [f"http://127.0.0.1:{port}"]}).encode()
    answer = a.request("PUT", "/v1/replication/peers", body, {"Content-Type": "application/json"})
    assert answer.json()["peers"] == [*peers, f"http://127.0.0.1:{port}"]
    assert len(converged([a, c])) == 50
    # b loses its database and comes back under the same URL: its store id changed.
    old_store = b.request("GET", "/v1/status").json()["store_id"]
    assert b.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path}/n1.db{suffix}").unlink(missing_ok=True)
    b.start()
    assert b.request("GET", "/v1/status").json()["store_id"] != old_store
    assert len(converged([a, b, c])) == 50


def test_an_expired_write_purged_while_a_peer_was_down_still_deletes_there(cluster):
    a, b = cluster(2, extra=("--purge-interval", "1"))
    a.request("PUT", "/v1/keys/session", b"old value")
    wait_until(lambda: get(b, "session").status == 200)
    b.kill()
    a.request("PUT", "/v1/keys/session?ttl=1", b"short-lived")

    # It expires, and a's purge turns it into a tombstone before b is back.
    def purged():
        return a.request("GET", "/v1/changes?key=session").json()["changes"][0]["deleted"]

    wait_until(purged, timeout=10)
    b.start()
    wait_until(lambda: get(b, "session").status == 404, timeout=10)
    change = b.request("GET", "/v1/changes?key=session").json()["changes"][0]
    assert change["deleted"] is True

"""The pushing side, with in-process nodes on real HTTP."""

from __future__ import annotations

import time

import pytest

from navistore.record import Record, make_stamp
from navistore.settings import Settings
from navistore.testing.servers import InProcessServer, free_port, wait_until


@pytest.fixture
def servers(tmp_path):
    started = []

    def start(name: str, **settings) -> InProcessServer:
        settings.setdefault("store", f"sqlite:///{tmp_path}/{name}.db")
        settings.setdefault("port", 0)
        server = InProcessServer(Settings(**settings))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def peer_status(server) -> dict:
    return server.node.replication.status()["peers"][0]


def test_a_batch_refused_for_clock_skew_shows_in_the_senders_status(servers):
    receiver = servers("b", node_id="b")
    sender = servers("a", node_id="a", peer=(receiver.url,))
    future = make_stamp(int((time.time() + 3600) * 1000), 0, "a")
    sender.node.store.merge(Record("from-the-future", b"x", stamp=future))  # a bad clock
    sender.node.replication.wake()
    wait_until(lambda: "Clock skew" in (peer_status(sender)["last_error"] or "") or None)
    assert "ahead of this node's clock" in peer_status(sender)["last_error"]
    assert receiver.node.last_seq() == 0
    assert peer_status(sender)["cursor"] == 0 and peer_status(sender)["lag_records"] == 1


def test_a_batch_reads_the_values_of_only_what_it_sends(servers, monkeypatch):
    monkeypatch.setenv("NAVISTORE_PEER_PUSH_BATCH_BYTES", str(200_000))  # 2 values of 64 KiB
    receiver = servers("b", node_id="b")
    sender = servers("a", node_id="a")
    values = {f"big/{i:02d}": bytes([i]) * 65536 for i in range(40)}
    for key, value in values.items():
        sender.node.put(key, value)
    read = []  # (limit, values, records returned)
    changes = sender.node.store.changes

    def recording(since=0, limit=100, prefix="", values=True):
        found = changes(since, limit, prefix, values=values)
        read.append((limit, values, len(found)))
        return found

    sender.node.store.changes = recording
    sender.node.set_runtime_peers([receiver.url])
    wait_until(lambda: receiver.node.last_seq() == 40 or None)
    assert {key: receiver.node.get(key).value for key in values} == values
    with_values = [count for _, values_read, count in read if values_read]
    assert sum(with_values) == 40  # each value read once, to be sent; before, 500 at a time
    sized = [limit for limit, values_read, _ in read if not values_read and limit != 1000]
    # Then about twice what fitted (16 at least), doubling again once everything fits.
    assert sized[0] == 500 and sized[1] == 16 and max(sized[1:]) <= 32


def test_a_batch_is_cut_again_when_its_values_grew_after_they_were_sized(servers, monkeypatch):
    monkeypatch.setenv("NAVISTORE_PEER_PUSH_BATCH_BYTES", str(200_000))
    unreachable = f"http://127.0.0.1:{free_port()}"  # its worker never gets to push
    sender = servers("a", node_id="a", peer=(unreachable,))
    for i in range(4):
        sender.node.put(f"g/{i}", b"x" * 65536)
    changes = sender.node.store.changes

    def grow_after_sizing(since=0, limit=100, prefix="", values=True):
        found = changes(since, limit, prefix, values=values)
        if not values and limit != 1000:  # a batch's sizes (not the lag): now every value grows
            sender.node.store.changes = changes
            for i in range(4):
                sender.node.put(f"g/{i}", b"y" * 150_000)
        return found

    sender.node.store.changes = grow_after_sizing
    worker = sender.node.replication._workers[unreachable]
    batch = worker._batch(0)  # two fitted by their sizes; of the grown ones, only the first
    assert [(r.key, r.size) for r in batch] == [("g/0", 150_000)]


def test_a_peer_with_our_node_id_is_refused_with_a_clear_error(servers):
    twin = servers("twin", node_id="same")
    me = servers("me", node_id="same", peer=(twin.url,))
    me.node.put("k", b"v")
    wait_until(lambda: "our own node id" in (peer_status(me)["last_error"] or "") or None)
    assert twin.node.last_seq() == 0


def test_an_unreachable_peer_delays_nothing_and_is_retried(servers):
    port = free_port()
    started = time.monotonic()
    node = servers("a", node_id="a", peer=(f"http://127.0.0.1:{port}",))
    assert time.monotonic() - started < 2
    node.node.put("k", b"v")
    wait_until(lambda: peer_status(node)["last_error"])
    assert "cannot reach" in peer_status(node)["last_error"]
    late = servers("late", node_id="late", port=port)
    wait_until(lambda: late.node.store.get("k") is not None)
    # The peer commits the push before the pusher reads its answer and records the success.
    wait_until(lambda: peer_status(node)["last_error"] is None)
    assert peer_status(node)["last_error"] is None and peer_status(node)["lag_records"] == 0


def test_tombstones_wait_for_every_listed_peer(servers):
    b = servers("b", node_id="b")
    down = f"http://127.0.0.1:{free_port()}"
    a = servers("a", node_id="a", peer=(b.url,))
    a.node.put("k", b"v")
    a.node.delete("k")
    wait_until(lambda: peer_status(a)["cursor"] == a.node.last_seq())
    a.node.set_runtime_peers([down])  # a second peer that has nothing yet
    later = time.time() + 10 * 86400
    assert a.node.purge(now=later) == 0
    assert a.node.changes(0)[0][0].deleted  # kept: the down peer still needs it
    a.node.set_runtime_peers([])  # removed from the list: it no longer holds purging back
    assert a.node.purge(now=later) == 1
    assert a.node.store.changes(0) == []

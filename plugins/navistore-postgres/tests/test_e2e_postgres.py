"""Two `navistore serve` processes on one PostgreSQL database."""

from __future__ import annotations

import threading
import time

import pytest

from navistore.client import Client
from navistore.testing.servers import increment


@pytest.fixture
def pair(serve, fresh_url):
    url = fresh_url()
    return serve("--store", url), serve("--store", url)


def test_a_write_through_one_node_is_read_through_the_other(pair):
    a, b = pair
    put = a.request("PUT", "/v1/keys/shared/x", b"hello", {"Content-Type": "text/plain"})
    assert put.status == 201
    got = b.request("GET", "/v1/keys/shared/x")
    assert (got.status, got.body, got.headers["etag"]) == (200, b"hello", put.headers["etag"])
    assert b.request("DELETE", "/v1/keys/shared/x").status == 200
    assert a.request("GET", "/v1/keys/shared/x").status == 404
    ids = {n.request("GET", "/v1/status").json()["node_id"] for n in pair}
    assert len(ids) == 2


def test_reads_go_to_request_threads_not_the_event_loop(pair):
    # PostgreSQL is a network round trip away: it does not declare the `local` capability, so the
    # event loop never waits for it (navistore.server.loop_serves_reads), pinned or not.
    for server in pair:
        started = next(line for line in server.log if "serving on" in line)
        assert "running at a time" in started and "event loop" not in started, started


def test_a_watch_on_one_node_wakes_on_a_write_through_the_other(pair):
    a, b = pair
    since = b.request("GET", "/v1/status").json()["last_seq"]
    answer = {}

    def watch():
        started = time.monotonic()
        answer["r"] = b.request("GET", f"/v1/changes?since={since}&prefix=w/&wait=20")
        answer["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.5)
    a.request("PUT", "/v1/keys/w/1", b"v")
    thread.join(timeout=20)
    assert [c["key"] for c in answer["r"].json()["changes"]] == ["w/1"]
    assert answer["seconds"] < 5


def test_if_match_increments_from_8_clients_over_both_nodes_lose_nothing(pair):
    a, b = pair
    per_client, clients = 25, 8
    threads = [
        threading.Thread(target=increment, args=((a, b)[i % 2].url, "counter", per_client))
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Client(b.url).get("counter").value == str(per_client * clients).encode()

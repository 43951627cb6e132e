"""GET /metrics: Prometheus text from prometheus-client, series bounded by route template."""

from __future__ import annotations

import os
import sqlite3
import threading

import falcon
import falcon.testing
import pytest
from prometheus_client.parser import text_string_to_metric_families

from navistore.app import create_app


def scrape(client) -> dict[tuple[str, tuple], float]:
    answer = client.simulate_get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def client(node):
    return falcon.testing.TestClient(create_app(node))


def test_requests_are_counted_by_route_template_not_path(client):
    for i in range(5):
        client.simulate_put(f"/v1/keys/user/{i}", body=b"v")
    client.simulate_get("/v1/keys/missing")
    client.simulate_get("/no/such/route")
    samples = scrape(client)
    key_route = "/v1/keys/{key:path}"
    put = ("navistore_requests_total", (("method", "PUT"), ("route", key_route), ("status", "201")))
    assert samples[put] == 5
    missing = (
        "navistore_requests_total",
        (("method", "GET"), ("route", key_route), ("status", "404")),
    )
    assert samples[missing] == 1
    unmatched = (
        "navistore_requests_total",
        (("method", "GET"), ("route", "unmatched"), ("status", "404")),
    )
    assert samples[unmatched] == 1
    assert not any("user/" in str(labels) for _, labels in samples)
    count = ("navistore_request_duration_seconds_count", (("method", "PUT"), ("route", key_route)))
    assert samples[count] == 5


def test_keys_watchers_and_seq_gauges(client):
    client.simulate_put("/v1/keys/a", body=b"v")
    client.simulate_put("/v1/keys/b", body=b"v")
    client.simulate_delete("/v1/keys/a")
    samples = scrape(client)
    assert samples[("navistore_keys", ())] == 1
    assert samples[("navistore_last_seq", ())] == 3
    assert samples[("navistore_watchers_waiting", ())] == 0
    # the sqlite files, as `du` counts them; the status says the same
    stored = samples[("navistore_store_bytes", ())]
    assert stored > 0 and stored == client.simulate_get("/v1/status").json["disk_bytes"]
    client.simulate_put("/v1/keys/big", body=os.urandom(512 * 1024))
    assert scrape(client)[("navistore_store_bytes", ())] >= stored + 512 * 1024


def test_store_errors_are_counted(make_node, tmp_path):
    node = make_node(store=f"sqlite:///{tmp_path}/busy.db?busy_timeout=20")
    client = falcon.testing.TestClient(create_app(node))
    other = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert client.simulate_put("/v1/keys/k", body=b"v").status_code == 503
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert scrape(client)[("navistore_store_errors_total", (("kind", "StoreBusy"),))] == 1


def test_replication_lag_per_peer(make_node):
    node = make_node(peer=("http://127.0.0.1:9",))  # nobody listens there
    client = falcon.testing.TestClient(create_app(node))
    client.simulate_put("/v1/keys/a", body=b"v")
    samples = scrape(client)
    assert samples[("navistore_replication_lag_records", (("peer", "http://127.0.0.1:9"),))] == 1
    assert ("navistore_replication_lag_seconds", (("peer", "http://127.0.0.1:9"),)) in samples


def test_latency_buckets_are_cumulative_and_tallies_from_every_thread_count():
    from navistore.metrics import _RequestCollector

    collector = _RequestCollector()
    collector.observe("/r", "GET", "200", 0.0004)  # le 0.0005 and up
    collector.observe("/r", "GET", "200", 0.001)  # exactly on a bound: le 0.001 and up
    collector.observe("/r", "GET", "404", 3.0)  # le 5 and up
    threads = [
        threading.Thread(
            target=lambda: [collector.observe("/r", "GET", "200", 0.02) for _ in range(1000)]
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    families = {family.name: family for family in collector.collect()}
    counts = {s.labels["status"]: s.value for s in families["navistore_requests"].samples}
    assert counts == {"200": 4002, "404": 1}
    samples = families["navistore_request_duration_seconds"].samples
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert buckets["0.0005"] == 1
    assert buckets["0.001"] == 2
    assert buckets["0.01"] == 2
    assert buckets["0.025"] == 4002
    assert buckets["2.5"] == 4002
    assert buckets["5.0"] == buckets["+Inf"] == 4003
    total = next(s.value for s in samples if s.name.endswith("_sum"))
    assert total == pytest.approx(0.0004 + 0.001 + 3.0 + 4000 * 0.02)


def test_requests_served_by_many_threads_are_all_counted(client):
    def put_many(n: int) -> None:
        # Keys by thread number, not thread ident: a finished thread's ident may be reused, and
        # a PUT to a key that exists answers 200, not the 201 counted here.
        for i in range(50):
            client.simulate_put(f"/v1/keys/t/{n}/{i}", body=b"v")

    threads = [threading.Thread(target=put_many, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    put = (
        "navistore_requests_total",
        (("method", "PUT"), ("route", "/v1/keys/{key:path}"), ("status", "201")),
    )
    assert scrape(client)[put] == 300


def test_a_status_counts_as_its_code_however_falcon_holds_it():
    """Requests are tallied with the status as the response holds it (Falcon takes a string, an
    int or an HTTPStatus); a scrape counts them by code, in one series per code."""
    import http

    from navistore.metrics import _RequestCollector

    collector = _RequestCollector()
    for status in (falcon.HTTP_200, 200, http.HTTPStatus.OK, "404 Not Found", 404):
        collector.observe("/r", "GET", status, 0.001)
    families = {family.name: family for family in collector.collect()}
    counts = {s.labels["status"]: s.value for s in families["navistore_requests"].samples}
    assert counts == {"200": 3, "404": 2}

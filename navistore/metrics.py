"""Prometheus metrics (prometheus-client), one registry per app: ``GET /metrics``.

Requests are counted by route template (``/v1/keys/{key}``), never by raw path, so the number of
series stays bounded whatever keys clients use.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from navistore.node import Node

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600)


class _NodeCollector:
    """Gauges read from the Node at scrape time: keys, watchers, seq, replication lag."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        keys = self.node.key_count()
        if keys is not None:
            yield GaugeMetricFamily("navistore_keys", "Live keys in the store", value=keys)
        yield GaugeMetricFamily(
            "navistore_watchers_waiting", "Watches waiting for a change", value=self.node.watchers
        )
        yield GaugeMetricFamily(
            "navistore_last_seq", "The store's newest change number", value=self.node.last_seq()
        )
        replication = self.node.replication
        if replication is None:
            return
        records = GaugeMetricFamily(
            "navistore_replication_lag_records",
            "Changes not yet confirmed by a peer",
            labels=["peer"],
        )
        seconds = GaugeMetricFamily(
            "navistore_replication_lag_seconds",
            "Age of the oldest change a peer has not confirmed",
            labels=["peer"],
        )
        for peer in replication.status().get("peers", []):
            records.add_metric([peer["url"]], peer["lag_records"])
            seconds.add_metric([peer["url"]], peer["lag_seconds"])
        yield records
        yield seconds


class Metrics:
    """The app's metrics: a middleware that counts and times requests, and the /metrics route."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "navistore_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "navistore_request_duration_seconds",
            "Time to answer, by route template and method",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "navistore_store_errors",
            "Storage failures by kind (busy, full, ...)",
            ["kind"],
            registry=self.registry,
        )
        self.registry.register(_NodeCollector(node))

    # -- middleware -------------------------------------------------------------------------

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.metrics_started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        route = req.uri_template or "unmatched"
        elapsed = time.perf_counter() - req.context.get("metrics_started", time.perf_counter())
        self.requests.labels(route, req.method, str(resp.status_code)).inc()
        self.latency.labels(route, req.method).observe(elapsed)

    # -- the route --------------------------------------------------------------------------

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self.registry)

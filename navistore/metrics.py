"""Prometheus metrics (prometheus-client), one registry per app: ``GET /metrics``.

Requests are counted by route template (``/v1/keys/{key}``), never by raw path, so the number of
series stays bounded whatever keys clients use.

Request counts and latencies are tallied per worker thread, without a lock, and summed when
``/metrics`` is scraped: prometheus-client's ``labels().inc()`` and ``observe()`` take several
locks per request, which cost a tenth of GET throughput under load (bench/load.py).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator
from typing import Any

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from navistore.node import Node
from navistore.parking import PARK

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600)


class _NodeCollector:
    """Gauges read from the Node at scrape time: keys, watchers, seq, replication lag."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        keys = self.node.key_count()
        if keys is not None:
            yield GaugeMetricFamily("navistore_keys", "Live keys in the store", value=keys)
        size = self.node.disk_bytes()
        if size is not None:
            yield GaugeMetricFamily(
                "navistore_store_bytes", "What the store takes on disk, in bytes", value=size
            )
        yield GaugeMetricFamily(
            "navistore_watchers_waiting", "Watches waiting for a change", value=self.node.watchers
        )
        yield GaugeMetricFamily(
            "navistore_last_seq", "The store's newest change number", value=self.node.last_seq()
        )
        if self.node.connections is not None:
            open_now, most = self.node.connections()
            yield GaugeMetricFamily(
                "navistore_connections",
                "Client connections open, idle keep-alive ones included",
                value=open_now,
            )
            yield GaugeMetricFamily(
                "navistore_connections_max",
                "The most client connections served at once (max_connections, or fewer where "
                "the open-file limit holds it)",
                value=most,
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


class _Tally:
    """One thread's requests: counts by (route, method, status as Falcon holds it: a string, an
    int or an HTTPStatus, turned into a code at scrape time), and by (route, method) a list of
    per-bucket counts (the last bucket is +Inf) followed by the sum of seconds. Only its thread
    writes it; a scrape copies it (a dict or list copy is atomic under the GIL)."""

    __slots__ = ("counts", "latency")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, Any], int] = {}
        self.latency: dict[tuple[str, str], list] = {}


class _RequestCollector:
    """``navistore_requests_total`` and ``navistore_request_duration_seconds`` from the tallies."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._tallies: list[_Tally] = []  # kept when a thread ends: counters never go back
        self._lock = threading.Lock()

    def tally(self) -> _Tally:
        tally = getattr(self._local, "tally", None)
        if tally is None:
            tally = self._local.tally = _Tally()
            with self._lock:
                self._tallies.append(tally)
        return tally

    def observe(self, route: str, method: str, status: Any, seconds: float) -> None:
        tally = getattr(self._local, "tally", None) or self.tally()
        counts = tally.counts
        key = (route, method, status)
        counts[key] = counts.get(key, 0) + 1
        series = tally.latency.get((route, method))
        if series is None:
            series = tally.latency[(route, method)] = [0] * (len(_BUCKETS) + 1) + [0.0]
        series[bisect.bisect_left(_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            tallies = list(self._tallies)
        counts: dict[tuple[str, str, str], int] = {}
        latency: dict[tuple[str, str], list] = {}
        for tally in tallies:
            for (route, method, status), count in dict(tally.counts).items():
                key = (route, method, str(falcon.util.http_status_to_code(status)))
                counts[key] = counts.get(key, 0) + count
            for key, series in dict(tally.latency).items():
                total = latency.setdefault(key, [0] * len(series))
                for i, value in enumerate(list(series)):
                    total[i] += value
        requests = CounterMetricFamily(
            "navistore_requests",
            "HTTP requests by route template, method and status",
            labels=["route", "method", "status"],
        )
        for key, count in sorted(counts.items()):
            requests.add_metric(list(key), count)
        yield requests
        durations = HistogramMetricFamily(
            "navistore_request_duration_seconds",
            "Time to answer, by route template and method",
            labels=["route", "method"],
        )
        bounds = [floatToGoString(b) for b in _BUCKETS] + ["+Inf"]
        for route_method, series in sorted(latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, series[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            durations.add_metric(list(route_method), buckets, series[-1])
        yield durations


class Metrics:
    """The app's metrics: a middleware that counts and times requests, and the /metrics route."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry()
        self.requests = _RequestCollector()
        self.registry.register(self.requests)
        self.store_errors = Counter(
            "navistore_store_errors",
            "Storage failures by kind (busy, full, ...)",
            ["kind"],
            registry=self.registry,
        )
        self.registry.register(_NodeCollector(node))

    # -- middleware -------------------------------------------------------------------------

    # Both run on every request: kept to plain attribute reads (0.4 us, where Context.get,
    # Response.status_code and str() made it 0.8 us).

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.metrics_started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        started = getattr(req.context, "metrics_started", None)
        park = req.env.get(PARK)
        if park is not None:  # a watch held without a thread: counted once, when it answers
            if park.holding:
                return
            started = park.started
        elapsed = time.perf_counter() - started if started is not None else 0.0
        self.requests.observe(req.uri_template or "unmatched", req.method, resp.status, elapsed)

    # -- the route --------------------------------------------------------------------------

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self.registry)

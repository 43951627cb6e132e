"""The access log: one line per request on stderr, written from a thread of its own.

A request thread only appends a tuple to a deque; a writer thread formats what piled up and
writes it in one go, about ten times a second. Going through ``logging`` from every request
thread cost about 30% of GET throughput (measured with bench/load.py: LogRecords, the handler's
lock, a write per line). No header is logged, so no token is either.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import sys
import threading
import time
import weakref
from typing import Any, TextIO

import falcon

from navistore.parking import PARK

FLUSH_SECONDS = 0.1
_logger = logging.getLogger("navistore.access")
_WRITERS: weakref.WeakSet[AccessLogWriter] = weakref.WeakSet()


def flush_access_logs() -> None:
    """Write every pending access line now (at shutdown)."""
    for writer in list(_WRITERS):
        writer.flush()


class AccessLogWriter:
    """Formats and writes access lines in the background; ``flush()`` writes what is pending."""

    def __init__(self, stream: TextIO | None = None, json_format: bool = False) -> None:
        self._stream = stream
        self._json = json_format
        self._pending: collections.deque[tuple] = collections.deque()
        self._lock = threading.Lock()  # one writer at a time: the thread, or flush()
        self._thread: threading.Thread | None = None
        self._second, self._stamp = -1, ""
        _WRITERS.add(self)

    def add(self, entry: tuple) -> None:
        self._pending.append(entry)
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="navistore-access-log", daemon=True
                )
                self._thread.start()
                atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines = []
            while self._pending:
                lines.append(self._format(self._pending.popleft()))
            if lines:
                stream = self._stream or sys.stderr
                stream.write("".join(lines))
                stream.flush()

    def _format(self, entry: tuple) -> str:
        when, client, method, uri, status, size, ms = entry
        if self._json:
            return (
                json.dumps(
                    {
                        "time": round(when, 3),
                        "level": "info",
                        "logger": "navistore.access",
                        "message": f'{client} "{method} {uri}" {status} {size} {ms:.1f}ms',
                        "client": client,
                        "method": method,
                        "uri": uri,
                        "status": status,
                        "bytes": size,
                        "ms": round(ms, 2),
                    }
                )
                + "\n"
            )
        second = int(when)
        if second != self._second:  # lines come in bursts from the same second
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return (
            f"{self._stamp},{int(when * 1000) % 1000:03d} INFO navistore.access: "
            f'{client} "{method} {uri}" {status} {size} {ms:.1f}ms\n'
        )


class AccessLog:
    """Falcon middleware that records every request in an AccessLogWriter."""

    def __init__(self, writer: AccessLogWriter) -> None:
        self.writer = writer

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        # Logged when the "navistore.access" logger is on at INFO, as `navistore serve` sets up
        # (pytest, say, leaves it at WARNING): the lines go to stderr, not through logging.
        if not _logger.isEnabledFor(logging.INFO):
            return
        started: float = req.context.get("started") or time.perf_counter()
        park = req.env.get(PARK)
        if park is not None:  # a watch held without a thread: logged once, when it answers
            if park.holding:
                return
            started = park.started
        elapsed_ms = (time.perf_counter() - started) * 1000
        if resp.content_length is not None:
            size = resp.content_length
        else:
            size = len(resp.render_body() or b"")
        env = req.env
        self.writer.add(
            (
                time.time(),
                env.get("REMOTE_ADDR", "-"),
                req.method,
                env.get("REQUEST_URI") or req.relative_uri,
                resp.status_code,
                size,
                elapsed_ms,
            )
        )

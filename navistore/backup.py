"""``navistore dump`` and ``navistore load``: JSON Lines backups over the REST API.

A dump's first line is a header (``{"navistore_dump": 1, ..., "index": N}``, N the source's
newest seq when the dump began: a watch from it sees every change the dump may miss); every
other line is one key:
``{"key", "value" (base64), "content_type", "etag", "expires_at"}``. Binary-safe, and readable with
``jq``. Loading writes through ``POST /v1/batch``, so it is idempotent (loading twice leaves the
same keys, values, content types and expiry times), and resumable: the number of lines done is
kept in ``FILE.progress`` and a load interrupted goes on from there.

``load`` also reads what etcd and Consul export, to move a store over: ``consul kv export``'s
JSON array of ``{"key", "flags", "value" (base64)}``, and ``etcdctl get --prefix "" -w json``'s
``{"kvs": [{"key" (base64), "value" (base64), ...}]}``. Neither has content types; Consul's
flags and etcd's leases have no counterpart here and are left behind.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from navistore import errors
from navistore.client import Client
from navistore.limits import MAX_BATCH_OPS

FORMAT_VERSION = 1
_BATCH_BYTES = 4 * 1024 * 1024  # well under the server's 8 MiB, base64 included


class Progress:
    """A progress bar on a terminal; one line at the end otherwise."""

    def __init__(self, verb: str, total: int | None, stream: IO[str] | None = None) -> None:
        self.verb, self.total = verb, total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self._shown = 0.0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.tty and now - self._shown > 0.1:
            self._shown = now
            self._draw()

    def _draw(self) -> None:
        if self.total:
            share = min(1.0, self.done / self.total)
            bar = "#" * int(share * 30)
            text = f"\r{self.verb} [{bar:<30}] {self.done}/{self.total} keys {share:4.0%}"
        else:
            text = f"\r{self.verb} {self.done} keys"
        self.stream.write(text)
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self._draw()
            self.stream.write("\n")
        else:
            self.stream.write(f"{self.verb} {self.done} keys\n")
        self.stream.flush()


def dump(client: Client, out: IO[bytes], prefix: str = "") -> int:
    """Write every live key under ``prefix`` as JSON Lines; return how many."""
    progress = Progress("dumped", None)
    created = time.time()
    pages = client.value_pages(prefix)
    index, first = next(pages)
    header = {
        "navistore_dump": FORMAT_VERSION,
        "source": client.url,
        "prefix": prefix,
        "created": created,
        "index": index,  # watch the source from here to follow it on past the dump
    }
    out.write(json.dumps(header).encode() + b"\n")
    for entry in itertools.chain(first, (entry for _, page in pages for entry in page)):
        line = {
            "key": entry.key,
            "value": base64.b64encode(entry.value).decode("ascii"),
            "content_type": entry.content_type,
            "etag": entry.etag,
            "expires_at": entry.expires_at,
        }
        out.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
        progress.advance()
    out.flush()
    progress.finish()
    return progress.done


def _records(source: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, record) for every line; the header and blank lines give None."""
    for number, raw in enumerate(source, start=1):
        if not raw.strip():
            yield number, None
            continue
        try:
            item = json.loads(raw)
        except ValueError as exc:
            raise errors.InvalidRequest(f"line {number} is not JSON: {exc}") from None
        if not isinstance(item, dict):
            raise errors.InvalidRequest(f"line {number} is not a JSON object")
        if "navistore_dump" in item:
            if item["navistore_dump"] != FORMAT_VERSION:
                raise errors.InvalidRequest(
                    f"dump format {item['navistore_dump']} is not supported"
                )
            yield number, None
            continue
        if not isinstance(item.get("key"), str) or not isinstance(item.get("value", ""), str):
            raise errors.InvalidRequest(f"line {number} needs a string key and a base64 value")
        yield number, item


SOURCES = ("navistore", "consul", "etcd")  # what load reads: navistore's dump, or an export


def counted_in(source: str) -> str:
    """What ``load`` counts a ``source`` in, in its errors and its progress: a dump's lines (the
    first of which is its header), or an export's entries."""
    return "line" if source == "navistore" else "entry"


def _exported(path: str, source: str) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(entry number, the entry as a dumped key) from what ``consul kv export`` or
    ``etcdctl get --prefix "" -w json`` wrote."""
    shape = {
        "consul": 'what `consul kv export` writes: a JSON array of {"key", "flags", "value"}',
        "etcd": "what `etcdctl get --prefix '' -w json` writes: {\"kvs\": [...]}",
    }[source]
    with open(path, "rb") as handle:
        try:
            document = json.load(handle)
        except ValueError as exc:
            raise errors.InvalidRequest(
                f"{path} is not JSON ({exc}); load --from {source} reads {shape}"
            ) from None
    if source == "consul":
        entries = document
    else:  # an empty etcd leaves "kvs" out
        entries = document.get("kvs", []) if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise errors.InvalidRequest(f"{path} is not {shape}")
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise errors.InvalidRequest(f"entry {number} has no key; {path} should be {shape}")
        value = entry.get("value") or ""  # Consul writes null, etcd leaves out, an empty value
        if not isinstance(value, str):
            raise errors.InvalidRequest(
                f"entry {number} ({entry['key']!r}): the value is not base64 text"
            )
        key = entry["key"]
        if source == "etcd":  # etcd's keys are bytes, in base64 too
            try:
                key = base64.b64decode(key, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise errors.InvalidRequest(
                    f"entry {number}: the key {entry['key']!r} is not base64 of UTF-8 text "
                    "(navistore keys are text)"
                ) from None
        yield number, {"key": key, "value": value}


def _operation(item: dict[str, Any], now: float) -> dict[str, Any] | None:
    """The batch operation that restores one dumped key; None when it has expired since."""
    op: dict[str, Any] = {"op": "put", "key": item["key"], "value": item.get("value", "")}
    if item.get("content_type"):
        op["content_type"] = item["content_type"]
    expires_at = item.get("expires_at")
    if expires_at is not None:
        ttl = math.ceil(expires_at - now)
        if ttl < 1:
            return None
        op["ttl"] = ttl
    return op


def _say_where(
    exc: errors.NavistoreError, ops: list[dict[str, Any]], lines: list[int], unit: str = "line"
) -> None:
    """A batch failed: say which line of the dump (or ``unit`` of an export) the refused
    operation came from (the server can only say which operation of the batch) and how far the
    load got, in the error itself."""
    index = exc.index
    if index is not None and 0 <= index < len(ops):
        key = ops[index]["key"]
        for said in (f"operation {index}: ", f"operation {index} ({key!r}): "):
            exc.description = exc.description.removeprefix(said)
        shown = repr(key) if len(key) <= 60 else f"{key[:60]!r}..."
        exc.description = f"{unit} {lines[index]} ({shown}): {exc.description}"
    loaded = lines[0] - 1  # what the progress file says
    if loaded > (1 if unit == "line" else 0):  # past the header, which an export has not
        exc.description += (
            f" ({unit}s up to {loaded} are loaded; run the same command to go on from there)"
        )
    exc.args = (exc.description,)


def load(
    client: Client, path: str, restart: bool = False, source: str = "navistore"
) -> tuple[int, int]:
    """Restore a dump, or an export of another store (``source``: ``SOURCES``); return (keys
    written, lines or entries skipped because done before). Resumable."""
    unit = counted_in(source)
    checkpoint = path + ".progress"
    done_before = 0
    if os.path.exists(checkpoint) and not restart:
        with open(checkpoint) as handle:
            done_before = int(handle.read().strip() or 0)
    progress = Progress("loaded", None)
    written = 0
    pending: list[dict[str, Any]] = []
    pending_lines: list[int] = []  # the line each pending operation came from
    pending_bytes = 0
    last_line = done_before

    def flush(upto_line: int) -> None:
        nonlocal pending, pending_lines, pending_bytes, written
        if pending:
            try:
                client.batch(pending)
            except errors.NavistoreError as exc:
                _say_where(exc, pending, pending_lines, unit)
                raise
            written += len(pending)
            progress.advance(len(pending))
        pending, pending_lines, pending_bytes = [], [], 0
        with open(checkpoint, "w") as handle:
            handle.write(str(upto_line))

    with open(path, "rb") as dumped:
        items = _records(dumped) if source == "navistore" else _exported(path, source)
        for number, item in items:
            if number <= done_before:
                continue
            last_line = number
            op = _operation(item, time.time()) if item is not None else None
            if op is None:
                continue
            size = len(op["value"]) + len(op["key"]) + 200
            if len(pending) == MAX_BATCH_OPS or (pending and pending_bytes + size > _BATCH_BYTES):
                flush(number - 1)
            pending.append(op)
            pending_lines.append(number)
            pending_bytes += size
        flush(last_line)
    os.remove(checkpoint)
    progress.finish()
    return written, done_before

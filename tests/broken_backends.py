"""Deliberately broken backends: the conformance suite must fail every one of them.

Each breaks one rule of the Store contract, deterministically (the racy one sleeps between its
check and its write, so every racer passes the check). They are sqlite underneath, registered as
one plugin with one scheme each, and installed by tests/test_testing.py into pytester's path.
"""

from __future__ import annotations

import json
import time

from navistore import Backend, Check, Record, check_precondition, hookimpl
from navistore_sqlite.store import SqliteStore


class OlderMergeWins(SqliteStore):
    """merge lets an older stamp win."""

    def merge(self, record):
        with self._writing() as conn:
            return self._put_row(conn, record, None)


class InsertionOrderScan(SqliteStore):
    """scan returns keys in the order they were written."""

    scan_listing = None  # so that listings, too, go through the broken scan

    def scan(self, prefix="", after="", limit=100, values=True):
        found = super().scan(prefix, "", 10**6, values)
        found.sort(key=lambda r: r.seq)
        if after:
            found = [r for r in found if r.key > after]
        return found[:limit]


class IgnoresPrecondition(SqliteStore):
    """commit writes whatever expect says."""

    def commit_many(self, items):
        from navistore.record import ANY

        return super().commit_many([(record, ANY) for record, _ in items])


class ChangesWithoutTombstones(SqliteStore):
    """the change feed leaves deletes out."""

    def changes(self, since=0, limit=100, prefix=""):
        return [r for r in super().changes(since, limit, prefix) if not r.deleted]


class LostUpdate(SqliteStore):
    """commit checks, sleeps, then writes: no atomicity."""

    def commit(self, record, expect):
        live = self.get(record.key)
        check_precondition(expect, live)
        time.sleep(0.05)
        with self._writing() as conn:
            return self._put_row(conn, record, None), live


class TruncatesAtNul(SqliteStore):
    """values lose everything from the first NUL byte."""

    def commit_many(self, items):
        cut = [(r.replace(value=(r.value or b"").split(b"\x00")[0]), e) for r, e in items]
        return super().commit_many(cut)


class ReusesSeqAfterPurge(SqliteStore):
    """the next seq is the largest stored one plus one: a purge of the newest hands it out again."""

    def _next_seqs(self, count):
        # inside the write transaction: this thread's connection sees its own writes
        (largest,) = self._read("SELECT COALESCE(MAX(seq), 0) FROM records")[0]
        self._pending_seq = largest + count
        return largest + 1

    def last_seq(self):
        return self._read("SELECT COALESCE(MAX(seq), 0) FROM records")[0][0]


class ListingNextWhenFull(SqliteStore):
    """scan_listing says that more keys follow whenever a page is full."""

    def scan_listing(self, prefix="", after="", limit=100):
        text, _ = super().scan_listing(prefix, after, limit)
        entries = json.loads(text)
        return text, entries[-1]["key"] if len(entries) == limit else None


class WritesItsChecks(SqliteStore):
    """commit_many writes a Check as if it were a put of an empty value."""

    def commit_many(self, items):
        return super().commit_many([(Record(*record), expect) for record, expect in items])


class ChecksOutsideTheCommit(SqliteStore):
    """commit_many holds its Checks to their conditions, sleeps, then commits the writes."""

    def commit_many(self, items):
        checks = [n for n, (record, _) in enumerate(items) if isinstance(record, Check)]
        if not checks:
            return super().commit_many(items)
        found = {}
        for n in checks:
            record, expect = items[n]
            found[n] = self.get(record.key)
            check_precondition(expect, found[n], n)
        time.sleep(0.05)
        written = iter(
            super().commit_many([item for n, item in enumerate(items) if n not in found])
        )
        return [(items[n][0], found[n]) if n in found else next(written) for n in range(len(items))]


BROKEN = {
    "broken-merge": OlderMergeWins,
    "broken-scan": InsertionOrderScan,
    "broken-precondition": IgnoresPrecondition,
    "broken-changes": ChangesWithoutTombstones,
    "broken-race": LostUpdate,
    "broken-nul": TruncatesAtNul,
    "broken-seq": ReusesSeqAfterPurge,
    "broken-listing": ListingNextWhenFull,
    "broken-check-written": WritesItsChecks,
    "broken-check-race": ChecksOutsideTheCommit,
}
ALL = {"ttl", "batch", "checks", "persistent", "concurrent"}


def _factory(cls, scheme):
    return lambda url: cls.from_url("sqlite" + url[len(scheme) :])


@hookimpl
def navistore_backends():
    backends = [
        Backend(name=scheme, schemes=(scheme,), factory=_factory(cls, scheme), capabilities=ALL)
        for scheme, cls in BROKEN.items()
    ]
    # Correct, but declares nothing: every capability-gated test must skip, naming the capability.
    backends.append(Backend(name="bare", schemes=("bare",), factory=_factory(SqliteStore, "bare")))
    return backends

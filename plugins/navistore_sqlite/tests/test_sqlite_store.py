"""SqliteStore specifics: URLs, options, transactions, busy handling, concurrency.

The behaviour every backend shares is proven by the conformance suite; these are sqlite's own.
"""

from __future__ import annotations

import sqlite3
import threading

import pytest
from navistore_sqlite.store import SqliteStore, parse_url

from navistore.errors import PreconditionFailed, SettingsError, StaleStamp, StoreBusy
from navistore.record import ABSENT, ANY, PRESENT, Record, make_stamp


def stamp(n: int, node: str = "a") -> str:
    return make_stamp(1_000_000 + n, 0, node)


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(str(tmp_path / "s.db"))
    yield s
    s.close()


@pytest.mark.parametrize(
    ("url", "path", "options"),
    [
        ("sqlite:///navistore.db", "navistore.db", {}),
        ("sqlite:///data/n.db", "data/n.db", {}),
        ("sqlite:////var/lib/n.db", "/var/lib/n.db", {}),
        ("sqlite:///n.db?synchronous=full", "n.db", {"synchronous": "full"}),
        ("sqlite:///my%20db.db", "my db.db", {}),
    ],
)
def test_urls_follow_sqlalchemy(url, path, options):
    assert parse_url(url) == (path, options)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite://host/n.db", "host"),
        ("sqlite:///", "no file path"),
        ("sqlite:///n.db?fsync=yes", "unknown sqlite option"),
        ("sqlite:///n.db?synchronous=maybe", "synchronous"),
        ("sqlite:///:memory:", "memory"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, problem):
    with pytest.raises(SettingsError, match=problem):
        parse_url(url)


def test_synchronous_option_is_applied(tmp_path):
    store = SqliteStore.from_url(f"sqlite:///{tmp_path}/f.db?synchronous=full")
    try:
        assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_commit_checks_and_refuses_stale_stamps(store):
    stored, previous = store.commit(Record("k", b"1", stamp=stamp(2)), ABSENT)
    assert previous is None and stored.seq == 1
    with pytest.raises(StaleStamp) as caught:
        store.commit(Record("k", b"2", stamp=stamp(1)), ANY)
    assert caught.value.stored == stamp(2)
    with pytest.raises(PreconditionFailed) as failed:
        store.commit(Record("k", b"2", stamp=stamp(3)), ABSENT)
    assert failed.value.current.stamp == stamp(2)
    assert store.get("k").value == b"1" and store.last_seq() == 1


def test_commit_many_is_all_or_nothing(store):
    store.commit(Record("a", b"1", stamp=stamp(1)), ANY)
    with pytest.raises(PreconditionFailed) as failed:
        store.commit_many(
            [
                (Record("b", b"1", stamp=stamp(2)), ABSENT),
                (Record("a", b"2", stamp=stamp(3)), ABSENT),
            ]
        )
    assert failed.value.index == 1
    assert store.get("b") is None and store.last_seq() == 1
    results = store.commit_many(
        [(Record("b", b"1", stamp=stamp(4)), ABSENT), (Record("b", b"2", stamp=stamp(5)), PRESENT)]
    )
    assert [r.seq for r, _ in results] == [2, 3] and results[1][1].value == b"1"


def test_a_seq_is_never_reused_after_the_newest_record_is_purged(tmp_path):
    path = str(tmp_path / "p.db")
    store = SqliteStore(path)
    store.commit(Record("k", b"", stamp=stamp(1)), ANY)
    store.commit(Record("k", deleted=True, stamp=stamp(2)), ANY)
    assert store.purge(0.0, 10, stamp(100)) == 1
    assert store.changes(0) == []
    store.close()
    store = SqliteStore(path)
    stored, _ = store.commit(Record("k", b"", stamp=stamp(3)), ANY)
    assert stored.seq == 3
    store.close()


def test_scan_is_bytewise_utf8_and_can_leave_values_out(store):
    keys = ["b", "a", "Z", "é", "日本", "\U0001f600", "a/b", "a\u00a0"]
    for i, key in enumerate(keys):
        store.commit(Record(key, key.encode() * 3, stamp=stamp(i)), ANY)
    scanned = store.scan(limit=100, values=False)
    assert [r.key for r in scanned] == sorted(keys, key=lambda k: k.encode())
    assert all(r.value is None and r.size == len(r.key.encode()) * 3 for r in scanned)
    assert [r.key for r in store.scan("a")] == ["a", "a/b", "a\u00a0"]


def test_a_locked_database_is_busy_not_an_error(tmp_path):
    path = str(tmp_path / "busy.db")
    store = SqliteStore(path, busy_timeout=50)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy, match="retry"):
            store.commit(Record("k", b"v", stamp=stamp(1)), ANY)
        assert store.get("k") is None  # reads go on while a writer holds the lock
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.commit(Record("k", b"v", stamp=stamp(1)), ANY)
    store.close()


def test_conditional_commits_from_many_threads_lose_no_update(store):
    """Eight threads increment one counter with If-Match: every success counts exactly once."""
    from navistore.record import Clock

    clock = Clock("n")
    store.commit(Record("counter", b"0", stamp=clock.now()), ABSENT)
    successes = []

    def work():
        done = 0
        while done < 25:
            current = store.get("counter")
            new = Record("counter", str(int(current.value) + 1).encode(), stamp=clock.now())
            try:
                store.commit(new, current.stamp)
            except PreconditionFailed:
                continue
            done += 1
        successes.append(done)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(successes) == 200
    assert store.get("counter").value == b"200"


def test_closing_closes_every_thread_connection(store):
    threads = [threading.Thread(target=store.get, args=("k",)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    connections = list(store._connections)
    assert len(connections) >= 4
    store.close()
    for conn in connections:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")

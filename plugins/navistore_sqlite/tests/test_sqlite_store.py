"""SqliteStore specifics: URLs, options, busy handling, connections, seqs across reopening.

The behaviour every backend shares is proven by the conformance suite; these are sqlite's own.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

import pytest

from navistore.errors import SettingsError, StoreBusy, StoreError
from navistore.record import ANY, Record, make_stamp
from navistore.store import listing_entry
from navistore_sqlite.cache import MISS, ReadCache
from navistore_sqlite.store import SqliteStore, parse_url


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


def test_closing_closes_every_thread_connection(store):
    threads = [threading.Thread(target=store.count) for _ in range(3)]
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


def test_a_database_belongs_to_one_store_at_a_time(tmp_path):
    from navistore.errors import StoreError

    path = str(tmp_path / "one.db")
    first = SqliteStore(path)
    with pytest.raises(StoreError, match="another navistore process"):
        SqliteStore(path)
    first.close()
    SqliteStore(path).close()  # free again once closed


def test_the_read_cache_never_serves_a_value_older_than_the_last_commit(store):
    """Readers hammer one key while a writer counts up: a reader never sees the count go back,
    and the writer reads each count back as soon as its commit returns."""
    from navistore.record import Clock

    clock = Clock("w")
    store.commit(Record("n", b"0", stamp=clock.now()), ANY)
    stop = threading.Event()
    problems: list[str] = []

    def read() -> None:
        last = 0
        while not stop.is_set():
            seen = int(store.get("n").value)
            if seen < last:
                problems.append(f"went back from {last} to {seen}")
            last = seen
            time.sleep(0)  # as a server thread would, between requests: let the writer in

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    for i in range(1, 1500):
        store.commit(Record("n", str(i).encode(), stamp=clock.now()), ANY)
        got = int(store.get("n").value)
        if got != i:
            problems.append(f"wrote {i}, read back {got}")
    stop.set()
    for t in readers:
        t.join()
    assert problems == []


def test_the_read_cache_follows_deletes_merges_and_purges(store):
    from navistore.record import make_stamp

    store.commit(Record("k", b"1", stamp=stamp(1)), ANY)
    assert store.get("k").value == b"1"  # now cached
    store.merge(Record("k", b"2", stamp=stamp(2, "peer")))
    assert store.get("k").value == b"2"
    store.commit(Record("k", deleted=True, stamp=stamp(3)), ANY)
    assert store.get("k") is None
    store.commit(Record("e", b"x", stamp=stamp(4), expires_at=10.0**10), ANY)
    assert store.get("e") is not None
    store.purge(10.0**10 + 1, 0, make_stamp(0, 0, "x"))
    assert store.get("e") is None


def test_a_purge_of_expiries_keeps_the_other_keys_cached(store):
    # Node purges expiries as they fall due (up to once a second): each must not empty the cache.
    store.commit(Record("stays", b"1", stamp=stamp(1)), ANY)
    store.commit(Record("goes", b"2", stamp=stamp(2), expires_at=10.0**10), ANY)
    store.commit(Record("gone", deleted=True, stamp=stamp(3)), ANY)
    assert store._cache.lookup("stays") is not MISS
    assert store.purge(10.0**10 + 1, 0, "") == 1  # one expiry, no tombstone dropped
    assert store._cache.lookup("stays") is not MISS
    assert store._cache.lookup("goes") is MISS and store.get("goes") is None
    (tomb,) = [r for r in store.changes(0) if r.key == "goes"]
    assert tomb.deleted and tomb.seq == store.last_seq()
    # Dropping tombstones empties it: a cached tombstone would outlive its row.
    assert store.purge(10.0**10 + 1, store.last_seq(), stamp(10)) == 2
    assert store._cache.lookup("stays") is MISS
    assert store.get("stays").value == b"1"


def test_a_purge_lets_writers_in_between_its_chunks(store, monkeypatch):
    # 100,000 keys that expired together held the write lock for 830 ms in one transaction, and
    # with it every writer, and navistore serve's event loop, which commits small writes itself.
    import navistore_sqlite.store

    monkeypatch.setattr(navistore_sqlite.store, "_PURGE_CHUNK", 10)
    for n in range(25):  # due in the reverse order of their keys and seqs
        store.commit(Record(f"e{n:02d}", b"v", stamp=stamp(n), expires_at=100.0 - n), ANY)
    for n in range(25):
        store.commit(Record(f"d{n:02d}", deleted=True, stamp=stamp(100 + n)), ANY)
    store.commit(Record("stays", b"v", stamp=stamp(200)), ANY)
    before = store.last_seq()
    taken = []

    class Counting:  # the write lock, counting the times it is taken
        def __init__(self, lock) -> None:
            self.lock = lock

        def __enter__(self) -> None:
            taken.append(1)
            self.lock.acquire()

        def __exit__(self, *exc_info) -> None:
            self.lock.release()

    store._write_lock = Counting(store._write_lock)
    assert store.purge(1000.0, before, stamp(1000)) == 50
    assert len(taken) >= 6  # 10 + 10 + 5 expiries, 10 + 10 + 5 tombstones; 1 all at once
    # Every expiry is a tombstone with a seq of its own, in the order they fell due.
    tombstones = store.changes(before, 100)
    assert [r.key for r in tombstones] == [f"e{n:02d}" for n in reversed(range(25))]
    assert [r.seq for r in tombstones] == list(range(before + 1, before + 26))
    assert all(r.deleted for r in tombstones) and store.last_seq() == before + 25
    assert not [r for r in store.changes(0, 1000) if r.key.startswith("d")]  # dropped
    assert store.get("stays").value == b"v" and store.get("e00") is None


def test_the_read_cache_keeps_to_its_budget_dropping_the_oldest_first():
    cache = ReadCache(budget_bytes=10_000)
    records = [Record(f"k{i:03d}", b"x" * 100, stamp=stamp(i)) for i in range(200)]
    for record in records:
        cache.fill(record.key, record, cache.generation)
    kept = [r.key for r in records if cache.lookup(r.key) is not MISS]
    assert kept == [r.key for r in records[-len(kept) :]]  # the newest, none missing between
    assert 0 < len(kept) < 200
    assert cache._bytes == sum(cache._cost(key, cache.lookup(key)) for key in kept)
    assert cache._bytes <= 10_000
    cache.fill("k000", records[0], cache.generation)  # back in, as the newest: the oldest goes
    assert cache.lookup("k000") is records[0] and cache.lookup(kept[0]) is MISS
    assert cache.take(["k000", "missing"]) == {"k000": records[0]}
    assert cache._bytes == sum(cache._cost(key, cache.lookup(key)) for key in kept[1:])


def test_seqs_go_on_from_the_newest_record_after_reopening(tmp_path):
    path = str(tmp_path / "r.db")
    store = SqliteStore(path)
    for n in range(1, 6):
        store.commit(Record(f"k{n}", b"v", stamp=stamp(n)), ANY)
    store.close()
    store = SqliteStore(path)
    try:
        assert store.last_seq() == 5
        stored, _ = store.commit(Record("k9", b"v", stamp=stamp(9)), ANY)
        assert stored.seq == 6
    finally:
        store.close()


def test_a_writer_sees_its_own_earlier_items_and_big_batches_commit_whole(store):
    from navistore.errors import PreconditionFailed
    from navistore.record import ABSENT

    first = Record("same", b"1", stamp=stamp(1))
    second = Record("same", b"2", stamp=stamp(2))
    results = store.commit_many([(first, ABSENT), (second, first.stamp)])
    assert [r.seq for r, _ in results] == [1, 2]
    assert results[1][1].value == b"1"  # the second item replaced the first
    assert store.get("same").value == b"2"
    # More rows than one statement holds: one transaction of several statements.
    many = [(Record(f"m/{i:04d}", b"x", stamp=stamp(10 + i)), ANY) for i in range(700)]
    assert [r.seq for r, _ in store.commit_many(many)] == list(range(3, 703))
    assert len(store.scan("m/", limit=1000)) == 700
    # A failing item anywhere leaves the whole batch out.
    late = [(Record(f"n/{i:04d}", b"x", stamp=stamp(800 + i)), ANY) for i in range(600)]
    late.append((Record("same", b"3", stamp=stamp(2000)), ABSENT))
    with pytest.raises(PreconditionFailed) as caught:
        store.commit_many(late)
    assert caught.value.index == 600
    assert store.scan("n/") == [] and store.last_seq() == 702


def test_uncached_keys_are_read_back_in_chunks(store):
    """Checks of keys the read cache does not hold read them from the database."""
    from navistore.errors import PreconditionFailed
    from navistore.record import ABSENT

    store.commit_many([(Record(f"c/{i:04d}", b"x", stamp=stamp(i)), ANY) for i in range(300)])
    store._cache.clear()
    again = [(Record(f"c/{i:04d}", b"y", stamp=stamp(1000 + i)), ABSENT) for i in range(300)]
    with pytest.raises(PreconditionFailed):
        store.commit_many(again)
    store._cache.clear()
    replaced = store.commit_many(
        [(Record(f"c/{i:04d}", b"y", stamp=stamp(1000 + i)), stamp(i)) for i in range(300)]
    )
    assert all(previous.value == b"x" for _, previous in replaced)


def test_writers_waiting_when_the_store_closes_get_an_error(tmp_path):
    from navistore.errors import StoreError

    store = SqliteStore(str(tmp_path / "c.db"))
    store.commit(Record("k", b"v", stamp=stamp(1)), ANY)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.commit(Record("k", b"w", stamp=stamp(2)), ANY)
    assert store._committer is None or not store._committer.is_alive()


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 300, 513])
def test_a_batch_that_fails_inside_sqlite_leaves_nothing_behind(tmp_path, count):
    """All or nothing even when sqlite itself refuses a row (here a trigger aborts on the last
    one, as a full disk might): a batch whose rows take several statements must not commit the
    statements before the one that failed."""
    from navistore.errors import StoreError

    path = str(tmp_path / "t.db")
    store = SqliteStore(path)
    try:
        with sqlite3.connect(path) as other:
            other.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.key = CAST('z' AS BLOB) "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        items = [(Record(f"a/{i:04d}", b"x", stamp=stamp(i)), ANY) for i in range(count - 1)]
        items.append((Record("z", b"x", stamp=stamp(count)), ANY))
        with pytest.raises(StoreError, match="refused by the test"):
            store.commit_many(items)
        assert store.scan("a/", limit=1000) == []
        assert store.last_seq() == 0
        # The store goes on: the next write takes the next seq.
        stored, _ = store.commit(Record("b", b"y", stamp=stamp(5000)), ANY)
        assert stored.seq == 1 and store.get("b").value == b"y"
    finally:
        store.close()


def test_a_lone_writer_commits_itself_and_one_among_other_requests_queues(store):
    """Alone (no other request in hand), a writer commits in its own thread, with no hand-over;
    with other requests in hand it queues for the committer thread, so that writers group."""
    from navistore import slots

    class Pool:  # the request slots, as navistore.server.Dispatcher keeps them
        admitted = 1

        def crowded(self) -> bool:
            return self.admitted > 1

        def pause(self) -> None:
            pass

        def resume(self) -> None:
            pass

    pool = Pool()
    slots.hold(pool)
    try:
        store.commit(Record("a", b"1", stamp=stamp(1)), ANY)
        assert store._committer is None  # committed by the writer itself
        pool.admitted = 2
        stored, _ = store.commit(Record("b", b"2", stamp=stamp(2)), ANY)
        assert store._committer is not None and store._committer.is_alive()
        assert stored.seq == 2 and store.get("b").value == b"2"
    finally:
        slots.hold(None)


def test_the_committer_sleeps_between_writers_and_wakes_for_each(tmp_path):
    """Writers that queue one after another, each after the committer has gone back to sleep,
    are each committed (a lost wake-up would leave one waiting for ever), and close() wakes the
    sleeping committer so that it ends."""
    from navistore import slots

    class Pool:
        def crowded(self) -> bool:
            return True  # every writer queues for the committer

        def pause(self) -> None:
            pass

        def resume(self) -> None:
            pass

    store = SqliteStore(str(tmp_path / "t.db"))
    done: list[int] = []

    def writers() -> None:
        slots.hold(Pool())
        try:
            for i in range(50):
                stored, _ = store.commit(Record(f"k{i}", b"v", stamp=stamp(i + 1)), ANY)
                done.append(stored.seq)
                while not store._idle:  # let the committer go back to sleep
                    time.sleep(0.0005)
        finally:
            slots.hold(None)

    thread = threading.Thread(target=writers, daemon=True)
    thread.start()
    thread.join(timeout=30)
    try:
        assert not thread.is_alive(), f"a writer was never woken after {len(done)} commits"
        assert done == list(range(1, 51))
        committer = store._committer
        assert committer is not None and committer.is_alive()  # asleep, not gone
    finally:
        store.close()
    assert not committer.is_alive()


def test_dropping_old_tombstones_reads_only_tombstones(store):
    # The regular purge runs under the write lock: walking every record by seq stalled every
    # writer for 290-550 ms on 1,000,000 keys. Count the rows sqlite visits for it.
    for n in range(2000):
        store.commit(Record(f"k{n:04d}", b"v", stamp=stamp(n)), ANY)
    store.commit(Record("k0000", deleted=True, stamp=stamp(5000)), ANY)
    conn = store._conn()
    visited = []
    conn.set_progress_handler(lambda: visited.append(1), 1)  # once per virtual machine step
    try:
        assert store.purge(0.0, store.last_seq(), stamp(9000)) == 1
    finally:
        conn.set_progress_handler(None, 1)
    assert 0 < len(visited) < 500  # 69 with the tombstones index, 12,063 without
    assert store.get("k0000") is None and store.get("k0001").value == b"v"


def live_rows(store) -> int:
    """What count() must answer, the slow way: every row, looked at."""
    return store._read(
        "SELECT COUNT(*) FROM records WHERE deleted = 0 AND (expires_at IS NULL OR expires_at > ?)",
        (time.time(),),
    )[0][0]


def test_count_follows_every_kind_of_write_without_scanning_the_table(tmp_path):
    import random

    from navistore.errors import PreconditionFailed
    from navistore.record import ABSENT, PRESENT

    store = SqliteStore(str(tmp_path / "c.db"))
    for n in range(300):  # rows from before the first count
        store.commit(Record(f"k{n % 40:02d}", b"v", stamp=stamp(n)), ANY)
    rng = random.Random(7)
    clock = 1000
    try:
        assert store.count() == live_rows(store) == 40
        for _ in range(400):
            clock += 1
            key = f"k{rng.randrange(60):02d}"
            kind = rng.choice(["put", "put", "ttl", "delete", "merge", "tombstone", "batch"])
            try:
                if kind == "put":
                    store.commit(Record(key, b"v", stamp=stamp(clock)), rng.choice([ANY, ABSENT]))
                elif kind == "ttl":  # some expire at once, some later
                    expires = time.time() + rng.choice([-5, 600])
                    store.commit(Record(key, b"v", stamp=stamp(clock), expires_at=expires), ANY)
                elif kind == "delete":
                    store.commit(Record(key, deleted=True, stamp=stamp(clock)), PRESENT)
                elif kind == "merge":  # a peer's write, older or newer than what is stored
                    peer = stamp(clock + rng.choice([-500, 0]), "p")
                    store.merge(Record(key, b"p", stamp=peer, deleted=rng.random() < 0.3))
                elif kind == "tombstone":
                    store.purge(time.time(), store.last_seq(), stamp(clock))
                else:  # one key twice in a batch, then a delete of it
                    store.commit_many(
                        [
                            (Record(key, b"1", stamp=stamp(clock)), ANY),
                            (Record(key, b"2", stamp=stamp(clock + 1)), ANY),
                            (Record(key, deleted=True, stamp=stamp(clock + 2)), PRESENT),
                            (Record(f"{key}x", b"3", stamp=stamp(clock + 3)), ANY),
                        ]
                    )
                    clock += 3
            except PreconditionFailed:
                pass
            assert store.count() == live_rows(store), kind
        # A commit that fails inside sqlite counts for nothing.
        with sqlite3.connect(store.path) as other:
            other.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON records "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        before = store.count()
        with pytest.raises(Exception, match="refused by the test"):
            store.commit(Record("new-key", b"v", stamp=stamp(clock + 1)), ANY)
        assert store.count() == before == live_rows(store)
        with sqlite3.connect(store.path) as other:
            other.execute("DROP TRIGGER refuse")
        store.commit(Record("k00", b"v", stamp=stamp(clock + 2)), ANY)  # and the next one counts
        assert store.count() == live_rows(store)
        # Counting again reads the expiry index, not every row.
        visited = []
        conn = store._conn()
        conn.set_progress_handler(lambda: visited.append(1), 1)
        try:
            store.count()
        finally:
            conn.set_progress_handler(None, 1)
        assert len(visited) < 100  # a scan of the table: 1,500 steps here
    finally:
        store.close()
    reopened = SqliteStore(str(tmp_path / "c.db"))
    try:
        assert reopened.count() == live_rows(reopened)
    finally:
        reopened.close()


def _layout(path) -> tuple[dict[str, tuple[int, int | None]], set[int], set[int]]:
    """What the file holds: key -> (length of the row's value, its size column), the ids in
    blobs, and the seqs of the rows whose value is kept apart."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT key, length(value), size, seq FROM records").fetchall()
        blobs = {id_ for (id_,) in conn.execute("SELECT id FROM blobs")}
    finally:
        conn.close()
    inline = {key.decode(): (length, size) for key, length, size, _ in rows}
    return inline, blobs, {seq for _, _, size, seq in rows if size is not None}


def test_values_over_900_bytes_are_kept_apart_and_read_back_wherever_read(tmp_path):
    # records is clustered on the key: a row that overflows its page is read whole by every
    # seek and every read of a column. Large values live in blobs, so sizing reads skip them.
    path = str(tmp_path / "apart.db")
    store = SqliteStore(path)
    values = {"a": b"s" * 100, "b": b"e" * 900, "c": b"o" * 901, "d": bytes(range(256)) * 200}
    for n, (key, value) in enumerate(values.items()):
        store.commit(Record(key, value, stamp=stamp(n)), ANY)
    inline, blobs, apart = _layout(path)
    assert inline == {"a": (100, None), "b": (900, None), "c": (0, 901), "d": (0, 51200)}
    assert blobs == apart and len(blobs) == 2
    store.close()
    store = SqliteStore(path)  # nothing cached: every read goes to sqlite
    try:
        assert {k: store.get(k).value for k in values} == values
        assert {r.key: r.value for r in store.scan()} == values
        assert {r.key: r.value for r in store.changes(0)} == values
        sizes = {k: len(v) for k, v in values.items()}
        assert {r.key: r.size for r in store.scan(values=False)} == sizes
        assert {r.key: r.size for r in store.changes(0, values=False)} == sizes
        page, _ = store.scan_listing()
        assert {e["key"]: e["size"] for e in json.loads(page)} == sizes
        assert store._fetch(store._conn(), list(values))["d"].value == values["d"]
    finally:
        store.close()


def test_no_value_kept_apart_outlives_its_row(tmp_path):
    path = str(tmp_path / "gone.db")
    store = SqliteStore(path)
    big, other = b"x" * 5000, b"y" * 3000

    def blobs_match_rows():
        _, blobs, apart = _layout(path)
        assert blobs == apart
        return len(blobs)

    try:
        store.commit(Record("k", big, stamp=stamp(1)), ANY)
        store.commit(Record("k", other, stamp=stamp(2)), ANY)  # big over big
        assert blobs_match_rows() == 1
        store.commit(Record("k", b"small", stamp=stamp(3)), ANY)
        assert blobs_match_rows() == 0
        store.commit(Record("k", big, stamp=stamp(4)), ANY)
        store.commit(Record("k", deleted=True, stamp=stamp(5)), ANY)
        assert blobs_match_rows() == 0
        # One group writing a key twice, both apart: only the second value stays.
        store.commit_many(
            [(Record("k", big, stamp=stamp(6)), ANY), (Record("k", other, stamp=stamp(7)), ANY)]
        )
        assert blobs_match_rows() == 1
        assert store.merge(Record("k", big, stamp=stamp(8, "peer"))) is not None
        assert blobs_match_rows() == 1
        store._cache.clear()
        assert store.get("k").value == big
        store.commit(Record("e", big, stamp=stamp(9), expires_at=10.0**10), ANY)
        assert blobs_match_rows() == 2
        assert store.purge(10.0**10 + 1, 0, stamp(0)) == 1  # expired: a tombstone, no value
        assert blobs_match_rows() == 1
        assert store.get("k").value == big
    finally:
        store.close()


def _pages(path) -> tuple[int, int]:
    """(pages in the database, of which free), as another connection sees them."""
    conn = sqlite3.connect(path)
    try:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    finally:
        conn.close()
    return pages, free


def _fill_and_empty(store: SqliteStore) -> tuple[int, int]:
    """Write 60 values of 100 KB and one small, delete the 60 and purge every tombstone; the
    database's pages when full."""
    big = b"v" * 100_000
    for n in range(60):
        store.commit(Record(f"big/{n}", big, stamp=stamp(n)), ANY)
    store.commit(Record("keep", b"kept", stamp=stamp(100)), ANY)
    full = _pages(store.path)
    for n in range(60):
        store.commit(Record(f"big/{n}", deleted=True, stamp=stamp(200 + n)), ANY)
    assert store.purge(time.time(), store.last_seq(), stamp(10**6)) == 60
    return full


def test_a_purge_gives_the_space_deleted_values_held_back_to_the_file_system(tmp_path):
    # etcd keeps the most it ever held until `etcdctl defrag`; sqlite reuses free pages, but
    # without auto_vacuum the file never shrinks.
    path = str(tmp_path / "shrink.db")
    store = SqliteStore(path)
    try:
        full = _fill_and_empty(store)
        assert full[0] > 1400 and full[1] == 0  # 6 MB of 4 KiB pages
        pages, free = _pages(path)
        assert pages < full[0] / 20 and free <= 256
        assert os.path.getsize(path) < full[0] * 4096 / 20  # the file too, checkpointed
        assert store.get("keep").value == b"kept"
        store.commit(Record("big/0", b"w" * 100_000, stamp=stamp(500)), ANY)  # room again
        assert store.get("big/0").value == b"w" * 100_000
        files = [path, f"{path}-wal", f"{path}-shm"]
        assert store.disk_bytes() == sum(os.path.getsize(f) for f in files)
    finally:
        store.close()


def test_the_wal_is_cut_back_after_a_burst(tmp_path):
    # sqlite reuses the WAL from its start after a checkpoint, at the largest it ever grew
    path = str(tmp_path / "wal.db")
    store = SqliteStore(path)
    try:
        burst = [(Record(f"b/{n}", os.urandom(100_000), stamp=stamp(n)), ANY) for n in range(100)]
        store.commit_many(burst)  # one transaction of 10 MB: the WAL grows past it
        assert os.path.getsize(f"{path}-wal") > 10_000_000
        for n in range(3):  # the checkpoint has run; the next writes start the WAL again
            store.commit(Record("small", b"v", stamp=stamp(1000 + n)), ANY)
        assert os.path.getsize(f"{path}-wal") <= 8 * 1024 * 1024
        assert store.get("b/99").value == burst[99][0].value
    finally:
        store.close()


def test_a_database_made_without_auto_vacuum_keeps_its_pages_free_for_reuse(tmp_path):
    # auto_vacuum takes effect only before the first table: such a file stays as large
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.close()
    store = SqliteStore(path)
    try:
        full = _fill_and_empty(store)
        pages, free = _pages(path)
        assert pages == full[0] and free > full[0] * 0.9
        assert store.get("keep").value == b"kept"
    finally:
        store.close()


_VERSION_1 = """
CREATE TABLE records (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, content_type TEXT NOT NULL, stamp TEXT NOT NULL,
    deleted INTEGER NOT NULL, expires_at REAL, seq INTEGER NOT NULL UNIQUE
) WITHOUT ROWID;
CREATE TABLE counter (id INTEGER PRIMARY KEY CHECK (id = 1), last_seq INTEGER NOT NULL);
INSERT INTO counter (id, last_seq) VALUES (1, 1);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (name, value) VALUES ('sqlite.schema_version', '1');
"""


def test_a_database_of_schema_1_opens_with_its_large_values_inline(tmp_path):
    path = str(tmp_path / "v1.db")
    conn = sqlite3.connect(path)
    conn.executescript(_VERSION_1)
    conn.execute(
        "INSERT INTO records VALUES (?, ?, 'application/octet-stream', ?, 0, NULL, 1)",
        (b"old", b"v" * 5000, stamp(1)),
    )
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    try:
        assert store.get("old").value == b"v" * 5000
        assert [r.size for r in store.changes(0, values=False)] == [5000]
        store.commit(Record("old", b"w" * 6000, stamp=stamp(2)), ANY)  # now kept apart
        store._cache.clear()
        assert store.get("old").value == b"w" * 6000
        assert store.meta_get("sqlite.schema_version") == "2"
    finally:
        store.close()
    inline, blobs, apart = _layout(path)
    assert inline == {"old": (0, 6000)} and blobs == apart


def test_a_store_that_cannot_open_says_which_file_and_why(tmp_path):
    missing = tmp_path / "no-such-folder" / "x.db"
    with pytest.raises(StoreError, match=f"cannot open {missing}: the directory .* does not exist"):
        SqliteStore(str(missing))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database, " * 400)
    with pytest.raises(StoreError, match=f"cannot open {garbage}: .*not a database"):
        SqliteStore(str(garbage))
    assert garbage.read_bytes() == b"not a database, " * 400  # left as it was
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(StoreError, match="cannot open .*folder.db"):
        SqliteStore(str(tmp_path / "folder.db"))


def test_a_database_of_a_newer_schema_is_refused(tmp_path):
    from navistore.errors import StoreError

    path = str(tmp_path / "new.db")
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '3' WHERE name = 'sqlite.schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 3.*newer.*up to version 2"):
        SqliteStore(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '2' WHERE name = 'sqlite.schema_version'")
    conn.commit()
    conn.close()
    SqliteStore(path).close()  # the refusal let go of the file


def _entries(path) -> dict[str, str | None]:
    conn = sqlite3.connect(path)
    try:
        return {
            key.decode(): entry for key, entry in conn.execute("SELECT key, entry FROM records")
        }
    finally:
        conn.close()


def test_each_row_keeps_its_listing_entry_as_written_and_tombstones_none(tmp_path):
    # A listing page joins the rows' stored entries (44 us a page of 100 on 1,000,000 keys,
    # against 110 building them): each must say what the row says now, whoever wrote the row.
    path = str(tmp_path / "e.db")
    store = SqliteStore(path)
    try:
        store.commit(Record("ttl", b"v", "text/plain", stamp(1), expires_at=10.0**10 + 0.25), ANY)
        store.commit(Record("apart", b"a" * 5000, "application/x-\u00e9", stamp(2)), ANY)
        store.commit(Record('q"\\', b"", "text/x", stamp(3)), ANY)
        store.commit(Record("gone", b"v", stamp=stamp(4)), ANY)
        store.commit(Record("gone", b"", stamp=stamp(5), deleted=True), ANY)
        store.commit(Record("soon", b"v", stamp=stamp(6), expires_at=100.0), ANY)
        store.merge(Record("peer", b"pp", "text/p", stamp(7)))
        store.commit(Record("ttl", b"vv", "text/y", stamp(8)), ANY)  # rewritten: no expiry now
        assert store.purge(101.0, 0, "") == 1  # "soon" expires: a tombstone
        stored = _entries(path)
        assert stored["gone"] is None and stored["soon"] is None
        assert {key: json.loads(entry) for key, entry in stored.items() if entry} == {
            record.key: listing_entry(record) for record in store.scan(values=False)
        }
        assert json.loads(stored["ttl"]) == {
            "key": "ttl",
            "etag": f'"{stamp(8)}"',
            "size": 2,
            "content_type": "text/y",
            "expires_at": None,
        }
        assert json.loads(stored["apart"])["size"] == 5000
        # What the listing shows is the stored entry, not one built again.
        conn = sqlite3.connect(path)
        conn.execute("UPDATE records SET entry = '{\"stored\":1}' WHERE key = ?", (b"peer",))
        conn.commit()
        conn.close()
        page, _ = store.scan_listing("peer", "", 10)
        assert json.loads(page) == [{"stored": 1}]
    finally:
        store.close()


def test_rows_written_without_an_entry_are_listed_as_before(tmp_path):
    # A database from before the column (or rows an older navistore-sqlite wrote into one that
    # has it): opening adds the column, and rows with no entry are listed from their columns.
    path = str(tmp_path / "old.db")
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE records DROP COLUMN entry")
    conn.execute(
        "INSERT INTO records VALUES (?, ?, 'text/old', ?, 0, NULL, 1, NULL)",
        (b"old", b"12345", stamp(1)),
    )
    conn.execute("UPDATE counter SET last_seq = 1")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    try:
        store.commit(Record("new", b"123", "text/new", stamp(2)), ANY)
        assert _entries(path)["old"] is None
        page, more = store.scan_listing("", "", 10)
        assert more is None
        assert json.loads(page) == [
            {
                "key": "new",
                "etag": f'"{stamp(2)}"',
                "size": 3,
                "content_type": "text/new",
                "expires_at": None,
            },
            {
                "key": "old",
                "etag": f'"{stamp(1)}"',
                "size": 5,
                "content_type": "text/old",
                "expires_at": None,
            },
        ]
        assert json.loads(store.scan_listing("x", "", 10)[0]) == []
        assert store.meta_get("sqlite.schema_version") == "2"  # readable by the version before
    finally:
        store.close()


def test_writers_the_event_loop_serves_in_one_turn_commit_together(tmp_path, wal_commits):
    """Served by navistore serve's event loop in one turn (navistore.turns), writers queue and
    wait for the end of the turn, when one commit holds them all; each is checked against what
    the writers before it left, and a writer whose check fails is left out alone."""
    from navistore.errors import PreconditionFailed
    from navistore.record import ABSENT
    from navistore.turns import Turn

    path = tmp_path / "t.db"
    store = SqliteStore(str(path))
    outcomes: dict[str, object] = {}

    def writer(name: str, key: str, expect) -> None:
        try:
            record = Record(key, name.encode(), stamp=stamp(1 + int(name[1:])))
            outcomes[name] = store.commit(record, expect)
        except PreconditionFailed as exc:
            outcomes[name] = exc

    try:
        store.commit(Record("old", b"v", stamp=stamp(0)), ANY)
        before = wal_commits(path)
        turn = Turn()
        writers = [("w0", "k0", ANY), ("w1", "k1", ABSENT), ("w2", "k1", ABSENT)]
        writers += [("w3", "old", ABSENT), ("w4", "old", ANY), ("w5", "k2", ANY)]
        for name, key, expect in writers:
            assert not turn.serve(lambda a=(name, key, expect): writer(*a), name)  # waits
        assert outcomes == {} and store.get("k0") is None and wal_commits(path) == before
        waiting = turn.end()
        assert wal_commits(path) == before + 1  # one commit for the turn's writers
        assert all(turn.go_on(served, name) for served, name in waiting)
        assert isinstance(outcomes["w2"], PreconditionFailed)  # w1 wrote k1 before it
        assert isinstance(outcomes["w3"], PreconditionFailed)
        assert [outcomes[n][0].seq for n in ("w0", "w1", "w4", "w5")] == [2, 3, 4, 5]
        assert outcomes["w4"][1].value == b"v"  # it replaced the row written before the turn
        assert store.get("k1").value == b"w1" and store.get("old").value == b"w4"
    finally:
        store.close()

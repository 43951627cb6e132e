"""PostgresStore specifics: URLs, the schema version, node ids and notifications across nodes."""

from __future__ import annotations

import threading
import time

import pytest

from navistore.errors import SettingsError, StoreError
from navistore.node import Node
from navistore.settings import Settings


def test_url_options_are_ours_the_rest_goes_to_libpq():
    from navistore_postgres.store import parse_url

    conninfo, options = parse_url("postgresql://u:p@h:5/db?schema=app_1&pool_max=4&sslmode=require")
    assert conninfo == "postgresql://u:p@h:5/db?sslmode=require"
    assert options == {"schema": "app_1", "pool_max": "4"}
    assert parse_url("postgres://h/db")[1] == {"schema": "navistore"}
    with pytest.raises(SettingsError, match="lowercase SQL name"):
        parse_url("postgresql://h/db?schema=Robert');DROP")
    with pytest.raises(SettingsError, match="pool_max"):
        parse_url("postgresql://h/db?pool_max=lots")


def test_an_unreachable_database_is_a_clear_error():
    from navistore_postgres.store import PostgresStore

    # the reason, not only the pool's "initialization incomplete"
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL: .*refused.*tried for 1 s"):
        PostgresStore.from_url("postgresql://nobody@127.0.0.1:9/x?pool_timeout=1")


def test_a_newer_schema_is_refused(fresh_url):
    from navistore_postgres.store import PostgresStore

    url = fresh_url()
    store = PostgresStore.from_url(url)
    store.meta_set("postgres.schema_version", "99")
    store.close()
    with pytest.raises(StoreError, match="version 99, newer than this navistore-postgres knows"):
        PostgresStore.from_url(url)


def listening(listener: Node, writer: Node) -> None:
    """Wait until ``listener``'s store hears ``writer``'s commits (its LISTEN is in place)."""
    heard = []
    listener.store.subscribe(heard.append)
    writer.put("navistore-test/ready", b"")
    assert eventually(lambda: ["navistore-test/ready"] in heard)


def eventually(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def nodes():
    opened = []

    def open_node(url: str, **settings) -> Node:
        node = Node(Settings(store=url, **settings))
        opened.append(node)
        return node

    yield open_node
    for node in opened:
        node.close()


def test_nodes_on_one_database_get_distinct_ids(fresh_url, nodes):
    url = fresh_url()
    first, second = nodes(url), nodes(url)
    assert first.node_id != second.node_id
    assert first.store_id == second.store_id  # one store
    stamp_a = first.put("k", b"1")[0].stamp
    stamp_b = second.put("k", b"2")[0].stamp
    assert stamp_b > stamp_a and second.get("k").value == b"2"


def test_a_node_id_held_by_a_live_node_is_refused(fresh_url, nodes):
    url = fresh_url()
    holder = nodes(url, node_id="web-1")
    with pytest.raises(SettingsError, match="'web-1' is in use by a live node"):
        nodes(url, node_id="web-1")
    holder.close()
    assert nodes(url, node_id="web-1").node_id == "web-1"  # released on close


def test_a_watch_on_one_node_wakes_on_a_write_through_another(fresh_url, nodes):
    url = fresh_url()
    watcher_node, writer_node = nodes(url), nodes(url)
    since = watcher_node.last_seq()
    result = {}

    def watch():
        started = time.monotonic()
        result["changes"] = watcher_node.watch(since, prefix="cfg/", wait=10)[0]
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.3)
    writer_node.put("cfg/x", b"v")
    thread.join(timeout=10)
    assert [r.key for r in result["changes"]] == ["cfg/x"]
    assert result["seconds"] < 2


def test_a_watch_wakes_only_on_the_other_nodes_writes_it_asked_about(fresh_url, nodes):
    """Each node's listener hears every commit on the database. Before notifications named their
    keys, each one woke every watch on every node, and each watch queried the database again."""
    url = fresh_url()
    watcher_node, writer_node = nodes(url), nodes(url)
    listening(watcher_node, writer_node)
    look = watcher_node.changes
    looks = []

    def counted(*args, **kwargs):
        looks.append(args)
        return look(*args, **kwargs)

    watcher_node.changes = counted
    since = watcher_node.last_seq()
    results = {}
    watches = [
        threading.Thread(
            target=lambda: results.update(key=watcher_node.watch(since, key="w/one", wait=10))
        ),
        threading.Thread(
            target=lambda: results.update(prefix=watcher_node.watch(since, prefix="w/", wait=10))
        ),
    ]
    for thread in watches:
        thread.start()
    assert eventually(lambda: len(looks) == 2)  # each watch looked once, and waits
    for n in range(20):
        writer_node.put(f"k/{n}", b"elsewhere")
    writer_node.batch([{"op": "put", "key": f"b/{n}", "value": "eA=="} for n in range(3)])
    time.sleep(0.5)  # time for the listener to hear them
    assert len(looks) == 2, "a watch looked again after writes to keys it does not watch"
    writer_node.put("w/one", b"this one")
    for thread in watches:
        thread.join(timeout=5)
    assert [r.key for r in results["key"][0]] == ["w/one"]
    assert [r.key for r in results["prefix"][0]] == ["w/one"]
    assert len(looks) == 4


def test_the_listener_hears_other_nodes_keys_and_not_its_own_commits(fresh_url, nodes):
    url = fresh_url()
    first, second = nodes(url), nodes(url)
    listening(first, second)
    heard = []
    first.store.subscribe(heard.append)
    first.put("mine", b"1")
    first.delete("mine")
    second.put("theirs", b"1")
    second.batch([{"op": "put", "key": "b/1", "value": "eA=="}, {"op": "delete", "key": "theirs"}])
    second.store.purge(time.time(), 0, "")  # nothing expired: no commit, nothing to hear

    def named():
        return [keys for keys in heard if keys is not None]  # None: the listener (re)connected

    assert eventually(lambda: len(named()) >= 2)
    time.sleep(0.3)
    assert named() == [["theirs"], ["b/1", "theirs"]]


def test_expired_keys_are_named_to_the_other_nodes(fresh_url, nodes):
    url = fresh_url()
    first, second = nodes(url), nodes(url)
    heard = []
    first.store.subscribe(heard.append)
    second.put("lease/a", b"1", ttl=1)
    assert eventually(lambda: ["lease/a"] in heard)
    heard.clear()
    assert second.store.purge(time.time() + 2, 0, "") == 1
    assert eventually(lambda: ["lease/a"] in heard)
    assert [keys for keys in heard if keys is not None] == [["lease/a"]]


def test_a_commit_with_too_many_keys_to_name_wakes_everything():
    from navistore_postgres.store import NOTIFY_PAYLOAD_BYTES, notice, read_notice

    assert read_notice(notice("me", 7, ["a", "b/ü"])) == ("me", ["a", "b/ü"])
    keys = [f"k/{n:04d}" for n in range(NOTIFY_PAYLOAD_BYTES // 8)]
    assert len(notice("me", 7, keys).encode()) <= NOTIFY_PAYLOAD_BYTES
    assert read_notice(notice("me", 7, keys)) == ("me", None)
    assert read_notice("12") == (None, None)  # an older plugin's payload: a bare seq
    assert read_notice("not json") == (None, None)


def test_a_listener_that_reconnects_wakes_every_watch(fresh_url, nodes, postgres_url):
    """Commits made while the listener was away were not heard: after it listens again, every
    watch looks at the store."""
    import psycopg

    node = nodes(fresh_url())
    heard = []
    node.store.subscribe(heard.append)
    with psycopg.connect(postgres_url, autocommit=True) as conn:

        def listener():
            return conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE query = %s",
                (f"LISTEN {node.store._channel}",),
            ).fetchall()

        assert eventually(lambda: len(listener()) == 1)
        time.sleep(0.2)
        heard.clear()
        (pid,) = listener()[0]
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        assert eventually(lambda: listener() not in ([], [(pid,)]), timeout=10)  # listens again
    assert eventually(lambda: heard == [None])


def test_an_expiry_written_through_a_node_that_stopped_is_purged_when_due(fresh_url, nodes):
    """Each node purges on time the expiries it committed. One written through a node that then
    stopped (here: never ran its purge loop) is purged on time by another: it asks the store for
    its soonest expiry after other nodes' commits."""
    url = fresh_url()
    survivor = nodes(url, purge_interval=3600)
    survivor.start()
    writer = nodes(url)  # not started: no purge loop, as if it had stopped
    listening(survivor, writer)
    writer.put("lease/a", b"held", ttl=2)
    since = writer.last_seq()
    started = time.monotonic()
    changes, _ = survivor.watch(since, key="lease/a", wait=10)
    assert [(r.key, r.deleted) for r in changes] == [("lease/a", True)]
    assert time.monotonic() - started < 4


def test_writers_that_arrive_together_commit_in_one_transaction(fresh_url):
    """16 writers at once: those that arrive while a transaction is open are committed together by
    the next one (one flush of the log each group: PUT at 16 connections 1,034 -> 2,600-2,700
    req/s, bench/backends.py). That only the writers whose checks fail fail, the conformance
    suite proves for every backend."""
    from navistore.record import ANY, Clock, Record
    from navistore_postgres.store import PostgresStore

    store = PostgresStore.from_url(fresh_url())
    transactions = []
    writing = store._writing

    def counted():
        transactions.append(1)
        return writing()

    store._writing = counted
    try:
        clock = Clock("g")
        barrier = threading.Barrier(16)

        def write(i: int) -> None:
            barrier.wait()
            for round_ in range(20):
                store.commit(Record(f"k/{i}", f"{round_}".encode(), stamp=clock.now()), ANY)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.last_seq() == 320
        print(f"320 commits in {len(transactions)} transactions")
        assert len(transactions) < 320 / 2  # one each, before
    finally:
        store.close()


def test_a_group_that_fails_inside_postgresql_fails_whole_and_the_next_one_commits(fresh_url):
    import psycopg

    from navistore.record import ANY, Clock, Record
    from navistore_postgres.store import PostgresStore

    url = fresh_url()
    store = PostgresStore.from_url(url)
    try:
        conninfo, schema = url.split("?")[0], store.schema
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                f"CREATE FUNCTION {schema}.refuse() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql"
            )
            conn.execute(
                f"CREATE TRIGGER refuse BEFORE INSERT ON {schema}.records FOR EACH ROW "
                f"WHEN (NEW.key = 'z'::bytea) EXECUTE FUNCTION {schema}.refuse()"
            )
        clock = Clock("g")
        with pytest.raises(StoreError, match="refused by the test"):
            store.commit_many(
                [
                    (Record("a", b"1", stamp=clock.now()), ANY),
                    (Record("z", b"2", stamp=clock.now()), ANY),
                ]
            )
        assert store.get("a") is None and store.last_seq() == 0
        done = []
        writer = threading.Thread(
            target=lambda: done.append(store.commit(Record("b", b"3", stamp=clock.now()), ANY)),
            daemon=True,
        )
        writer.start()
        writer.join(timeout=10)
        assert done and done[0][0].seq == 1  # the line moves on: no writer waits for a lead
    finally:
        store.close()

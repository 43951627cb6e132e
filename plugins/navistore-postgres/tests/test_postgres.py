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

    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        PostgresStore.from_url("postgresql://nobody@127.0.0.1:9/x?pool_timeout=1")


def test_a_newer_schema_is_refused(fresh_url):
    from navistore_postgres.store import PostgresStore

    url = fresh_url()
    store = PostgresStore.from_url(url)
    store.meta_set("postgres.schema_version", "99")
    store.close()
    with pytest.raises(StoreError, match="version 99, newer than this navistore-postgres knows"):
        PostgresStore.from_url(url)


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

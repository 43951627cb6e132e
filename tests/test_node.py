from __future__ import annotations

import base64
import itertools
import threading
import time

import falcon.testing
import pytest

from navistore import errors
from navistore.app import create_app
from navistore.hookspecs import hookimpl
from navistore.node import META_PURGED_SEQ, Node, check_key, past_prefix
from navistore.record import ABSENT, ANY, PRESENT, Record, make_stamp, parse_stamp
from navistore.settings import Settings


@pytest.mark.parametrize(
    "key",
    ["", "a\x00b", "tab\there", "new\nline", "del\x7f", "\x1f", "x" * 1025, "é" * 513, "\ud800"],
)
def test_check_key_refuses(key):
    with pytest.raises(errors.InvalidKey):
        check_key(key)


@pytest.mark.parametrize(
    "key", ["a", "x" * 1024, "é" * 512, "app/db/host", "/", "..", "日本/語", " "]
)
def test_check_key_accepts(key):
    check_key(key)


def test_key_error_names_the_limit():
    with pytest.raises(errors.InvalidKey, match="1025 bytes.*limit.*1024"):
        check_key("x" * 1025)


def test_put_reports_created_then_replaced(node):
    first, previous = node.put("k", b"one")
    assert previous is None
    second, previous = node.put("k", b"two")
    assert previous.stamp == first.stamp and second.stamp > first.stamp
    assert node.get("k").value == b"two"
    assert second.seq > first.seq


def test_value_limit_is_configurable(make_node):
    node = make_node(max_value_size=10)
    node.put("k", b"x" * 10)
    with pytest.raises(errors.ValueTooLarge, match="11 bytes.*max_value_size.*10"):
        node.put("k", b"x" * 11)
    assert node.get("k").value == b"x" * 10


def test_preconditions(node):
    with pytest.raises(errors.PreconditionFailed):
        node.put("k", b"v", expect=PRESENT)
    stored, _ = node.put("k", b"v", expect=ABSENT)
    with pytest.raises(errors.PreconditionFailed):
        node.put("k", b"v2", expect=ABSENT)
    with pytest.raises(errors.PreconditionFailed):
        node.put("k", b"v2", expect=make_stamp(1, 0, "x"))
    node.put("k", b"v2", expect=stored.stamp)
    assert node.get("k").value == b"v2"
    with pytest.raises(errors.PreconditionFailed):
        node.delete("k", expect=stored.stamp)  # no longer current
    assert node.get("k").value == b"v2"


def test_delete_absent_is_not_found_and_delete_leaves_a_tombstone(node):
    with pytest.raises(errors.KeyNotFound):
        node.delete("nothing")
    node.put("k", b"v")
    tomb = node.delete("k")
    assert tomb.deleted
    with pytest.raises(errors.KeyNotFound):
        node.get("k")
    changes, last = node.changes(0)
    assert [(c.key, c.deleted) for c in changes] == [("k", True)]
    assert last == tomb.seq


def test_ttl_expires_reads_but_stays_in_the_feed(node):
    with pytest.raises(errors.InvalidRequest):
        node.put("k", b"v", ttl=0)
    with pytest.raises(errors.InvalidRequest):
        node.put("k", b"v", ttl=31_536_001)
    before = time.time()
    stored, _ = node.put("k", b"v", ttl=1)
    assert stored.expires_at >= before + 1
    assert node.get("k").value == b"v"
    time.sleep(1.1)
    with pytest.raises(errors.KeyNotFound):
        node.get("k")
    assert node.list()[0] == []
    changes, _ = node.changes(0)
    assert [c.key for c in changes] == ["k"] and not changes[0].deleted
    node.purge()
    changes, _ = node.changes(0)
    assert changes[0].deleted and changes[0].stamp == stored.stamp


def test_purge_drops_old_tombstones_and_the_feed_says_gone(node):
    node.put("a", b"1")
    node.delete("a")
    node.put("b", b"2")
    assert node.purge(grace=3600) == 0  # the tombstone is too young
    node.purge(now=time.time() + 7200, grace=3600)
    assert int(node.store.meta_get(META_PURGED_SEQ)) == node.last_seq()
    with pytest.raises(errors.ChangesGone):
        node.changes(0)
    changes, _ = node.changes(node.last_seq())
    assert changes == []


def test_a_write_after_a_future_stamp_still_wins(node):
    future = make_stamp(int((time.time() + 3600) * 1000), 0, "peer")
    node.store.merge(Record("k", b"peer", stamp=future))  # behind the Node's back: no observe
    stored, _ = node.put("k", b"mine")
    assert stored.stamp > future
    assert node.get("k").value == b"mine"


def test_the_clock_restarts_past_an_observed_future_stamp(make_node):
    node = make_node("c.db")
    future = make_stamp(int((time.time() + 3600) * 1000), 5, "peer")
    assert node.merge(Record("far", b"x", stamp=future)) is not None
    for i in range(150):  # push it out of the newest changes
        node.put(f"k{i}", b"v")
    node.close()
    again = make_node("c.db")
    stored, _ = again.put("other", b"v")
    assert stored.stamp > future


def test_node_id_is_generated_once_and_kept(make_node):
    node = make_node("id.db")
    node_id, store_id = node.node_id, node.store_id
    node.close()
    again = make_node("id.db")
    assert (again.node_id, again.store_id) == (node_id, store_id)
    again.close()
    assert make_node("id.db", node_id="chosen").node_id == "chosen"


def test_merge_keeps_the_newest_stamp(node):
    old = Record("k", b"old", stamp=make_stamp(1000, 0, "a"))
    new = Record("k", b"new", stamp=make_stamp(2000, 0, "a"))
    assert node.merge(new) is not None
    assert node.merge(old) is None
    assert node.merge(new) is None  # idempotent
    assert node.get("k").value == b"new"
    with pytest.raises(ValueError):
        node.merge(Record("k", b"x", stamp="nonsense"))


def test_listing_pages(node):
    for key in ["b", "a", "é", "c", "ab"]:
        node.put(key, key.encode())
    records, prefixes, next_after = node.list(limit=2)
    assert [r.key for r in records] == ["a", "ab"] and next_after == "ab"
    assert records[0].value is None and records[0].size == 1
    records, _, next_after = node.list(after="ab", limit=2)
    assert [r.key for r in records] == ["b", "c"] and next_after == "c"
    records, _, next_after = node.list(after="c", limit=2)
    assert [r.key for r in records] == ["é"] and next_after is None
    with pytest.raises(errors.InvalidRequest):
        node.list(limit=1001)


def test_listing_one_level_with_a_separator(node):
    for key in ["a/1", "a/2", "a/x/y", "b", "c/1", "d"]:
        node.put(key, b"v")
    records, prefixes, next_after = node.list(separator="/")
    assert [r.key for r in records] == ["b", "d"] and prefixes == ["a/", "c/"]
    assert next_after is None
    seen, after = [], ""
    while True:
        records, prefixes, after = node.list(after=after, limit=1, separator="/")
        seen += [r.key for r in records] + prefixes
        if after is None:
            break
    assert seen == ["a/", "b", "c/", "d"]
    records, prefixes, _ = node.list(prefix="a/", separator="/")
    assert [r.key for r in records] == ["a/1", "a/2"] and prefixes == ["a/x/"]


def test_a_page_with_values_is_cut_by_their_bytes(node):
    for i, size in enumerate([300, 300, 300, 1000, 10]):
        node.put(f"v/{i}", bytes([i]) * size)
    node.put("w", b"not under the prefix")
    records, next_after = node.read_page("v/", max_bytes=700)
    assert [r.key for r in records] == ["v/0", "v/1"] and next_after == "v/1"
    assert [r.value for r in records] == [b"\x00" * 300, b"\x01" * 300]
    # A value larger than the bound still goes, alone: the page never stops before it starts.
    records, next_after = node.read_page("v/", after="v/2", max_bytes=700)
    assert [r.key for r in records] == ["v/3"] and next_after == "v/3"
    records, next_after = node.read_page("v/", after="v/3", max_bytes=700)
    assert [r.key for r in records] == ["v/4"] and next_after is None
    records, next_after = node.read_page("v/", limit=2)
    assert [r.key for r in records] == ["v/0", "v/1"] and next_after == "v/1"
    assert node.read_page("none/") == ([], None)
    with pytest.raises(errors.InvalidRequest):
        node.read_page(limit=0)


def test_a_page_with_values_is_one_moment_of_the_store(node):
    """Two keys written together by batches are never read from different batches."""
    node.batch([{"op": "put", "key": k, "value": "MA=="} for k in ("pair/a", "pair/b")])
    stop = threading.Event()

    def write():
        for i in itertools.count(1):
            if stop.is_set():
                return
            value = base64.b64encode(str(i).encode()).decode()
            node.batch([{"op": "put", "key": k, "value": value} for k in ("pair/a", "pair/b")])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen = set()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            records, _ = node.read_page("pair/")
            assert [r.key for r in records] == ["pair/a", "pair/b"]
            assert records[0].value == records[1].value
            seen.add(records[0].value)
    finally:
        stop.set()
        writer.join()
    assert len(seen) > 10  # the reads really ran while the writes did


def test_a_page_with_values_is_cut_again_when_they_grew_between_its_two_reads(node):
    for i in range(4):
        node.put(f"g/{i}", b"x" * 100)
    scan = node.store.scan

    def scan_then_grow(prefix, after, limit, values=True):
        found = scan(prefix, after, limit, values)
        if not values:  # the sizes were read: a writer makes g/1 larger before the values are
            node.put("g/1", b"y" * 1000)
        return found

    node.store.scan = scan_then_grow
    records, next_after = node.read_page("g/", max_bytes=500)
    assert [(r.key, r.size) for r in records] == [("g/0", 100)] and next_after == "g/0"


def test_changes_leave_values_out_only_when_asked_and_the_store_can(node, tmp_path):
    node.put("a", b"1234")
    node.delete("a")
    node.put("b", b"xy")
    (sized, _), (full, _) = node.changes(values=False), node.changes()
    assert [(r.key, r.value, r.size) for r in sized] == [("a", None, 0), ("b", None, 2)]
    assert [(r.key, r.value) for r in full] == [("a", b""), ("b", b"xy")]

    class OlderStore:  # a third party's store whose changes has no values keyword
        def __init__(self, store):
            self.store = store

        def changes(self, since=0, limit=100, prefix=""):
            return self.store.changes(since, limit, prefix)

        def __getattr__(self, name):
            return getattr(self.store, name)

    older = Node(Settings(node_id="older"), store=OlderStore(node.store))
    assert [r.value for r in older.changes(values=False)[0]] == [b"", b"xy"]
    assert [r.value for r in older.watch(0, key="b", values=False)[0]] == [b"xy"]


def test_a_feed_page_with_values_is_cut_again_when_they_grew_between_its_two_reads(node):
    for i in range(4):
        node.put(f"g/{i}", b"x" * 100)
    sized, _ = node.changes(values=False)
    for i in range(4):  # after the sizes were read: every key rewritten, larger, in order
        node.put(f"g/{i}", b"y" * 1000)
    filled = node.fill_values(sized, 0, max_bytes=250)  # two fitted; one of the new ones does
    assert [(r.key, r.value) for r in filled] == [("g/0", b"y" * 1000)]
    assert node.fill_values([], 0) == []


def test_a_feed_request_without_values_reads_none(node):
    client = falcon.testing.TestClient(create_app(node))
    node.put("k", b"v")
    asked = []
    changes = node.store.changes

    def recording(since=0, limit=100, prefix="", values=True):
        asked.append(values)
        return changes(since, limit, prefix, values=values)

    node.store.changes = recording
    assert client.simulate_get("/v1/changes").json["changes"][0]["key"] == "k"
    assert client.simulate_get("/v1/changes", params={"wait": "1"}).json["changes"]
    assert asked == [False, False]
    value = client.simulate_get("/v1/changes", params={"values": "true"}).json["changes"][0]
    assert value["value"] == "dg==" and asked[2:] == [False, True]


def test_folded_prefixes_are_skipped_not_read(make_node):
    node = make_node()
    for i in range(300):
        node.put(f"big/{i:04d}", b"v")
    node.put("z", b"v")
    read = []
    scan = node.store.scan

    def counting_scan(*args, **kwargs):
        result = scan(*args, **kwargs)
        read.extend(result)
        return result

    node.store.scan = counting_scan
    records, prefixes, _ = node.list(separator="/")
    assert prefixes == ["big/"] and [r.key for r in records] == ["z"]
    assert len(read) <= 9  # one small read, then one past the folded prefix


def test_past_prefix_sorts_after_every_key_under_the_prefix():
    longest = "p/" + "\U0010ffff" * 255
    assert len(longest.encode()) <= 1024
    assert longest < past_prefix("p/")
    assert "p0" > past_prefix("p/")


def test_changes_by_key_and_prefix(node):
    for key in ["a/1", "a/2", "b", "a/1"]:
        node.put(key, b"v")
    changes, last = node.changes(0, key="a/1")
    assert [c.key for c in changes] == ["a/1"] and last == 4
    changes, _ = node.changes(0, prefix="a/")
    assert [c.key for c in changes] == ["a/2", "a/1"]
    changes, _ = node.changes(2)
    assert [c.seq for c in changes] == [3, 4]


def test_committed_hook_sees_every_commit(node):
    seen = []

    class Watcher:
        @hookimpl
        def navistore_committed(self, node, record, origin):
            seen.append((record.key, origin))

    node.plugins.pm.register(Watcher())
    node.put("a", b"1")
    node.delete("a")
    node.merge(Record("b", b"x", stamp=make_stamp(5, 0, "p")))
    assert seen == [("a", "local"), ("a", "local"), ("b", "peer")]


def test_delete_prefix(node):
    for key in ["a/1", "a/2", "ab", "b"]:
        node.put(key, b"v")
    assert node.delete_prefix("a/") == 2
    assert [r.key for r in node.list()[0]] == ["ab", "b"]


def test_delete_prefix_commits_a_page_of_keys_at_a_time(node, monkeypatch):
    node.commit_many([(node.make_record(f"p/{i:03d}", b"v"), ANY) for i in range(250)])
    node.put("q", b"kept")
    commits = []
    commit_many = node.store.commit_many
    monkeypatch.setattr(
        node.store, "commit_many", lambda items: commits.append(items) or commit_many(items)
    )
    assert node.delete_prefix("p/") == 250
    assert [len(items) for items in commits] == [100, 100, 50]
    assert [r.key for r in node.list()[0]] == ["q"]
    tombstones, _ = node.changes(node.last_seq() - 250, limit=1000)
    assert len(tombstones) == 250 and all(record.deleted for record in tombstones)


def test_delete_prefix_leaves_a_key_written_meanwhile(node, monkeypatch):
    for key in ["a/1", "a/2", "a/3"]:
        node.put(key, b"old")
    scan = node.store.scan

    def scan_then_write(*args, **kwargs):
        page = scan(*args, **kwargs)
        if page:
            node.put("a/2", b"newer")  # after the page was read, before its delete
        return page

    monkeypatch.setattr(node.store, "scan", scan_then_write)
    assert node.delete_prefix("a/") == 2
    assert node.get("a/2").value == b"newer"
    assert [r.key for r in node.list()[0]] == ["a/2"]


def test_status(node):
    status = node.status()
    assert status["backend"] == "sqlite" and status["replicator"] is None
    assert parse_stamp(node.clock.now())[2] == status["node_id"]


def test_the_expiry_times_kept_for_a_prompt_purge_are_bounded(node, monkeypatch):
    import navistore.node

    monkeypatch.setattr(navistore.node, "MAX_TRACKED_EXPIRIES", 3)
    for n in range(5):
        node.put(f"k{n}", b"v", ttl=100 + n)
    node.put("plain", b"v")
    # past the bound, expiries are not tracked (the store's next_expiry finds them later)
    assert sorted(node._expiries) == [pytest.approx(time.time() + 100 + n, abs=5) for n in range(3)]

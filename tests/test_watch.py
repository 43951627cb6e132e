"""Watches: GET /v1/changes?wait=SECONDS holds until a matching change commits."""

from __future__ import annotations

import threading
import time

import falcon.testing
import pytest

from navistore.app import create_app


@pytest.fixture
def client(node):
    return falcon.testing.TestClient(create_app(node))


def watch_in_thread(client, query):
    result = {}

    def run():
        started = time.monotonic()
        result["answer"] = client.simulate_get("/v1/changes", query_string=query)
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_watch_returns_at_once_when_there_are_changes(client):
    client.simulate_put("/v1/keys/a", body=b"1")
    started = time.monotonic()
    answer = client.simulate_get("/v1/changes", query_string="since=0&wait=30")
    assert time.monotonic() - started < 1 and len(answer.json["changes"]) == 1


def test_a_watch_wakes_on_a_matching_commit_only(client, node):
    client.simulate_put("/v1/keys/other", body=b"x")
    since = node.last_seq()
    thread, result = watch_in_thread(client, f"since={since}&key=app/db&wait=10")
    time.sleep(0.3)
    client.simulate_put("/v1/keys/app/dbx", body=b"not this one")
    time.sleep(0.3)
    assert thread.is_alive()
    client.simulate_put("/v1/keys/app/db", body=b"this one")
    thread.join(timeout=5)
    answer = result["answer"]
    assert [c["key"] for c in answer.json["changes"]] == ["app/db"]
    assert answer.headers["x-navistore-index"] == str(answer.json["last_seq"])
    assert 0.5 < result["seconds"] < 5


def test_a_watch_ends_empty_when_the_wait_runs_out(client, node):
    since = node.last_seq()
    started = time.monotonic()
    answer = client.simulate_get("/v1/changes", query_string=f"since={since}&wait=1")
    assert 0.9 < time.monotonic() - started < 3
    assert answer.status_code == 200 and answer.json["changes"] == []


def test_a_since_beyond_the_newest_seq_answers_at_once(client):
    started = time.monotonic()
    answer = client.simulate_get("/v1/changes", query_string="since=999&wait=30")
    assert time.monotonic() - started < 1 and answer.json == {"changes": [], "last_seq": 0}


def test_a_watch_since_purged_tombstones_is_410(client, node):
    client.simulate_put("/v1/keys/a", body=b"1")
    client.simulate_delete("/v1/keys/a")
    client.simulate_put("/v1/keys/b", body=b"1")
    node.purge(now=time.time() + 30 * 86400)
    gone = client.simulate_get("/v1/changes", query_string="since=0&wait=5")
    assert gone.status_code == 410 and "Resync" in gone.json["description"]


def test_wait_is_bounded(client):
    for bad in ["601", "-1", "x"]:
        answer = client.simulate_get("/v1/changes", query_string=f"wait={bad}")
        assert answer.status_code == 400 and "600" in answer.json["description"]


def test_watchers_beyond_the_cap_get_429(make_node):
    node = make_node(max_watchers=2)
    client = falcon.testing.TestClient(create_app(node))
    waiting = [watch_in_thread(client, "since=0&wait=10") for _ in range(2)]
    time.sleep(0.3)
    assert node.watchers == 2
    refused = client.simulate_get("/v1/changes", query_string="since=0&wait=10")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "max_watchers" in refused.json["description"]
    client.simulate_put("/v1/keys/k", body=b"v")
    for thread, result in waiting:
        thread.join(timeout=5)
        assert [c["key"] for c in result["answer"].json["changes"]] == ["k"]
    assert node.watchers == 0


def test_shutting_down_answers_every_watch(client, node):
    waiting = [watch_in_thread(client, "since=0&wait=60") for _ in range(5)]
    time.sleep(0.3)
    node.begin_shutdown()
    for thread, result in waiting:
        thread.join(timeout=5)
        assert result["answer"].status_code == 200 and result["seconds"] < 5


def test_a_commit_between_the_first_look_and_the_wait_wakes_the_watch(node):
    """A write that commits after the watch looked at the store, but before it started waiting,
    must end the wait: the watch registers for its key or prefix before it looks."""
    since = node.last_seq()
    look = node.changes
    looks = []

    def changes_then_a_commit(*args, **kwargs):
        found = look(*args, **kwargs)
        looks.append(found)
        if len(looks) == 1:
            node.put("late", b"committed in the gap")
        return found

    node.changes = changes_then_a_commit
    started = time.monotonic()
    records, _ = node.watch(since=since, wait=5)
    assert [record.key for record in records] == ["late"]
    assert time.monotonic() - started < 2


def test_an_expiry_wakes_a_watch_when_the_purge_turns_it_into_a_tombstone(client, node):
    client.simulate_put("/v1/keys/lease", body=b"held", params={"ttl": "1"})
    since = node.last_seq()
    thread, result = watch_in_thread(client, f"since={since}&key=lease&wait=20")
    time.sleep(1.3)
    assert thread.is_alive()  # expired, but not yet a change: the purge makes the tombstone
    node.purge()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the watch slept through the expiry"
    changes = result["answer"].json["changes"]
    assert [(c["key"], c["deleted"]) for c in changes] == [("lease", True)]
    assert result["seconds"] < 5


def test_a_watch_sees_an_expiry_within_seconds_not_at_the_next_regular_purge(make_node):
    node = make_node(purge_interval=3600)
    node.start()
    client = falcon.testing.TestClient(create_app(node))
    client.simulate_put("/v1/keys/lease/a", body=b"held", params={"ttl": "1"})
    client.simulate_put("/v1/keys/lease/b", body=b"held", params={"ttl": "2"})
    since = node.last_seq()
    thread, result = watch_in_thread(client, f"since={since}&prefix=lease/&wait=20")
    thread.join(timeout=10)
    assert not thread.is_alive(), "the expiry waited for the regular purge"
    first = result["answer"].json["changes"]
    assert [(c["key"], c["deleted"]) for c in first] == [("lease/a", True)]
    assert 0.5 < result["seconds"] < 4
    # The later expiry is not forgotten once the first is purged.
    thread, result = watch_in_thread(client, f"since={first[-1]['seq']}&prefix=lease/&wait=20")
    thread.join(timeout=10)
    assert [(c["key"], c["deleted"]) for c in result["answer"].json["changes"]] == [
        ("lease/b", True)
    ]
    assert result["seconds"] < 4


def test_an_expiry_committed_before_a_restart_reaches_a_watch_when_due(make_node):
    """The node tracks the expiries it commits; those from before a restart it learns of from the
    store (``next_expiry``). Before, they waited for the regular purge."""
    before = make_node(purge_interval=3600)
    before.put("lease/a", b"held", ttl=2)
    before.close()
    node = make_node(purge_interval=3600)
    node.start()
    client = falcon.testing.TestClient(create_app(node))
    thread, result = watch_in_thread(client, f"since={node.last_seq()}&key=lease/a&wait=20")
    thread.join(timeout=10)
    assert not thread.is_alive(), "the expiry waited for the regular purge"
    changes = result["answer"].json["changes"]
    assert [(c["key"], c["deleted"]) for c in changes] == [("lease/a", True)]
    assert result["seconds"] < 4


def test_expiries_past_the_tracked_bound_reach_a_watch_when_due(make_node, monkeypatch):
    import navistore.node

    monkeypatch.setattr(navistore.node, "MAX_TRACKED_EXPIRIES", 1)
    node = make_node(purge_interval=3600)
    node.start()
    node.put("lease/a", b"held", ttl=1)
    node.put("lease/b", b"held", ttl=2)  # past the bound: not tracked
    assert len(node._expiries) == 1
    client = falcon.testing.TestClient(create_app(node))
    since = node.last_seq()
    for key in ("lease/a", "lease/b"):
        thread, result = watch_in_thread(client, f"since={since}&prefix=lease/&wait=20")
        thread.join(timeout=10)
        assert not thread.is_alive(), f"the expiry of {key} waited for the regular purge"
        changes = result["answer"].json["changes"]
        assert [(c["key"], c["deleted"]) for c in changes] == [(key, True)]
        assert result["seconds"] < 4
        since = changes[-1]["seq"]


def count_looks(node) -> list:
    """The arguments of every look a watch takes at the feed (``node.changes``), from now on."""
    look = node.changes
    looks = []

    def counted(*args, **kwargs):
        looks.append(args)
        return look(*args, **kwargs)

    node.changes = counted
    return looks


def test_watches_woken_by_one_commit_share_their_looks_at_the_feed(node):
    """Fifty watches on one prefix each read the feed after a commit woke them (three round trips
    each on PostgreSQL: GET fell to 0.17x, bench/watchers.py); those that ask at the same time
    share one read, begun after they asked."""
    looks = count_looks(node)
    counted = node.changes
    woken_at = []

    def slow_first_look(*args):
        if woken_at and len(looks) == woken_at[0]:  # the first look after the commit: every
            time.sleep(0.3)  # other woken watch asks meanwhile, whatever the machine's load
        return counted(*args)

    node.changes = slow_first_look
    since = node.last_seq()
    answers = []
    watches = [
        threading.Thread(target=lambda: answers.append(node.watch(since, prefix="cfg/", wait=10)))
        for _ in range(20)
    ]
    for watch in watches:
        watch.start()
    deadline = time.monotonic() + 5
    while node.watchers < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert node.watchers == 20
    before = len(looks)
    woken_at.append(before)
    node.put("cfg/flag", b"on")
    for watch in watches:
        watch.join(timeout=5)
    assert [[r.key for r in records] for records, _ in answers] == [["cfg/flag"]] * 20
    # The first look, and one more for all those that asked while it ran (it may have read
    # before the commit that woke them); with a look each, 20.
    assert len(looks) - before == 2


def test_a_write_elsewhere_does_not_wake_a_watch(node):
    """Only writes the watch asked about wake it: with every write waking every watch, 50
    watches on a quiet prefix cut PUT throughput to 0.14x (bench/watchers.py)."""
    looks = count_looks(node)
    results = {}
    for name, kwargs in (("prefix", {"prefix": "w/"}), ("key", {"key": "w/one"})):
        since = node.last_seq()
        thread = threading.Thread(
            target=lambda n=name, k=kwargs, s=since: results.update(
                {n: node.watch(s, wait=10, **k)}
            )
        )
        looks.clear()
        thread.start()
        time.sleep(0.2)
        for n in range(20):
            node.put(f"k/{n}", b"elsewhere")
        node.put("w/other" if name == "key" else "x/w/one", b"nor this")
        time.sleep(0.2)
        assert len(looks) == 1, f"a {name} watch looked again after writes it does not watch"
        node.put("w/one", b"this one")
        thread.join(timeout=5)
        assert [r.key for r in results[name][0]] == ["w/one"]
        assert len(looks) == 2

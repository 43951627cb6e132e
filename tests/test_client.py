"""navistore.client.Client against a real `navistore serve`."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from navistore import errors
from navistore.client import Client, ClientError, Forbidden, Unauthorized, key_path
from navistore.testing.servers import ServerProcess, wait_until, writes_between_pages


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ServerProcess(["--max-watchers", "4"], tmp_path_factory.mktemp("client"))
    yield server
    server.stop()


@pytest.fixture
def client(server):
    with Client(server.url) as client:
        client.delete_prefix("")
        yield client


@pytest.mark.parametrize(
    "key",
    [
        "plain",
        "a/b/c",
        ".",
        "..",
        "a/./b",
        "a/../b",
        "./x",
        "sp ace",
        "q?x",
        "h#sh",
        "per%25cent",
        "100%",
        "日本/語",
        "\U0001f600",
        "trailing/",
        "a//b",
        "+plus+",
        "semi;colon",
        "~tilde",
    ],
)
def test_awkward_keys_survive_the_round_trip(client, key):
    written = client.put(key, key.encode(), content_type="text/plain")
    assert written.created and written.etag.startswith('"')
    entry = client.get(key)
    assert (entry.key, entry.value, entry.content_type, entry.etag) == (
        key,
        key.encode(),
        "text/plain",
        written.etag,
    )
    assert [e.key for e in client.list()] == [key]


def test_a_value_reads_as_text_in_its_charset_or_as_json(client):
    client.put("cfg/limits", b'{"rate": 5, "name": "caf\xc3\xa9"}', "application/json")
    limits = client.get("cfg/limits")
    assert limits.json() == {"rate": 5, "name": "caf\u00e9"}
    assert limits.text == '{"rate": 5, "name": "caf\u00e9"}'
    client.put("cfg/motd", "caf\u00e9".encode("latin-1"), 'text/plain; charset="latin-1"')
    assert client.get("cfg/motd").text == "caf\u00e9"  # not UTF-8: read in its own charset
    client.put("cfg/raw", b"\xff", "application/octet-stream")
    with pytest.raises(UnicodeDecodeError):
        _ = client.get("cfg/raw").text
    with pytest.raises(ValueError):
        client.get("cfg/raw").json()
    assert [e.json() for e in client.get_prefix("cfg/limits")] == [{"rate": 5, "name": "caf\u00e9"}]


def test_dot_segments_are_escaped():
    assert key_path("a/../b") == "/v1/keys/a/%2E%2E/b"
    assert key_path(".") == "/v1/keys/%2E"
    assert key_path("a.b/c.") == "/v1/keys/a.b/c."


def test_typed_errors(client):
    with pytest.raises(errors.KeyNotFound):
        client.get("missing")
    with pytest.raises(errors.KeyNotFound):
        client.delete("missing")
    etag = client.put("k", b"1").etag
    assert not client.put("k", b"2", if_match=etag).created
    with pytest.raises(errors.PreconditionFailed):
        client.put("k", b"3", if_match=etag)
    with pytest.raises(errors.PreconditionFailed):
        client.put("k", b"3", if_none_match="*")
    with pytest.raises(errors.InvalidRequest, match="1024"):
        client.put("x" * 1025, b"v")
    with pytest.raises(errors.ValueTooLarge):
        client.put("big", b"x" * (1024 * 1024 + 1))
    with pytest.raises(errors.PreconditionFailed) as failed:
        client.batch([{"op": "put", "key": "n", "value": b"v"}, {"op": "delete", "key": "none"}])
    assert failed.value.index == 1


def test_listing_pages_automatically(client):
    client.batch([{"op": "put", "key": f"p/{i:04d}", "value": b"v"} for i in range(128)])
    client.batch([{"op": "put", "key": f"p/{i:04d}", "value": b"v"} for i in range(128, 250)])
    keys = [e.key for e in client.list("p/", page_size=7)]
    assert keys == [f"p/{i:04d}" for i in range(250)]
    client.put("p/sub/x", b"v")
    level = list(client.list("p/s", separator="/"))
    assert [(e.key, e.is_prefix) for e in level] == [("p/sub/", True)]
    assert client.delete_prefix("p/") == 251
    assert list(client.list("p/")) == []


def _requests(server, method: str, route: str) -> float:
    """How many ``method`` requests to ``route`` the server has answered, from /metrics."""
    text = server.request("GET", "/metrics").body.decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "navistore_requests_total"
        and (sample.labels["method"], sample.labels["route"]) == (method, route)
    )


def test_get_prefix_reads_values_a_page_per_request(server, client):
    values = {f"cfg/{i:04d}": bytes([i % 256, 0, 255]) * (i % 5) for i in range(250)}
    keys = list(values)
    for start in range(0, 250, 125):
        client.batch(
            [
                {"op": "put", "key": k, "value": values[k], "content_type": "x/y", "ttl": 600}
                for k in keys[start : start + 125]
            ]
        )
    client.put("cfh", b"outside the prefix")
    pages_before = _requests(server, "GET", "/v1/keys")
    gets_before = _requests(server, "GET", "/v1/keys/{key:path}")
    entries = list(client.get_prefix("cfg/", page_size=100))
    assert _requests(server, "GET", "/v1/keys") - pages_before == 3
    assert _requests(server, "GET", "/v1/keys/{key:path}") == gets_before
    assert {e.key: e.value for e in entries} == values
    assert [e.key for e in entries] == keys
    first = client.get("cfg/0001")
    assert (entries[1].etag, entries[1].content_type) == (first.etag, "x/y")
    assert 0 < entries[1].expires_at - time.time() <= 600


def test_get_says_when_a_key_expires(client, server):
    client.put("session/web-1", b"alive", ttl=60)
    client.put("app/forever", b"x")
    entry = client.get("session/web-1")
    assert entry.expires_at is not None and abs(entry.expires_at - (time.time() + 60)) < 5
    assert client.get("app/forever").expires_at is None
    listed = {e.key: e.expires_at for e in client.list("")}
    assert listed == {
        "session/web-1": pytest.approx(entry.expires_at, abs=1e-3),
        "app/forever": None,
    }
    head = server.request("HEAD", "/v1/keys/session/web-1")
    assert float(head.headers["x-navistore-expires-at"]) == entry.expires_at


def _increment(entry):
    return b"%d" % (int(entry.value) + 1 if entry else 1)


def test_update_loses_no_increment_to_writers_racing_it(client):
    def bump() -> None:
        for _ in range(25):
            client.update("counters/runs", _increment)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.get("counters/runs").value == b"100"


def test_update_creates_keeps_the_content_type_and_gives_up_when_told(client):
    created = client.update("cfg", lambda entry: b"1" if entry is None else b"wrong")
    assert created.created and client.get("cfg").value == b"1"
    client.put("cfg", b'{"rate": 1}', content_type="application/json")
    written = client.update("cfg", lambda entry: entry.value.replace(b"1", b"2"))
    entry = client.get("cfg")
    assert (entry.value, entry.content_type, entry.etag) == (
        b'{"rate": 2}',
        "application/json",
        written.etag,
    )

    def refuse(entry):
        raise LookupError("not this time")

    with pytest.raises(LookupError):
        client.update("cfg", refuse)
    assert client.get("cfg").etag == written.etag


def test_update_reads_again_after_a_conflict_and_stops_after_its_attempts(client):
    seen = []

    def collide(entry):  # another writer lands between each read and its write
        seen.append(entry.value)
        client.put("contended", b"%d" % (int(entry.value) + 10))
        return entry.value + b"!"

    client.put("contended", b"0")
    with pytest.raises(errors.PreconditionFailed):
        client.update("contended", collide, attempts=3)
    assert seen == [b"0", b"10", b"20"]  # each attempt saw the write that beat the one before
    assert client.get("contended").value == b"30"


def test_batch_encodes_values(client):
    results = client.batch(
        [
            {"op": "put", "key": "b1", "value": b"\x00\xff", "content_type": "x/y"},
            {"op": "put", "key": "b2", "value": b"", "ttl": 60},
        ]
    )
    assert [r.key for r in results] == ["b1", "b2"]
    assert client.get("b1").value == b"\x00\xff" and client.get("b1").etag == results[0].etag


def test_batch_checks_keys_it_does_not_write(client):
    schema = client.put("app/schema", b"3")
    ops = [
        {"op": "check", "key": "app/schema", "if_match": schema.etag},
        {"op": "check", "key": "app/lock", "if_none_match": "*"},
        {"op": "put", "key": "app/db/host", "value": b"10.0.0.6"},
    ]
    checked, absent, written = client.batch(ops)
    assert (checked.etag, absent.etag) == (schema.etag, "")
    assert client.get("app/db/host").etag == written.etag
    client.put("app/lock", b"mine")
    with pytest.raises(errors.PreconditionFailed) as failed:
        client.batch(ops)
    assert failed.value.index == 1
    assert client.get("app/db/host").etag == written.etag


def test_watch_yields_changes_as_they_commit(client):
    seen = []

    def watch():
        for change in client.watch(prefix="w/", wait=5):
            seen.append(change)
            if len(seen) == 3:
                return

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.3)
    client.put("other", b"not watched")
    client.put("w/1", b"a")
    client.put("w/2", b"b")
    client.delete("w/1")
    thread.join(timeout=10)
    assert [(c.key, c.deleted) for c in seen] == [("w/1", False), ("w/2", False), ("w/1", True)]


def test_watch_batches_gives_what_commits_together_in_one_batch(client):
    since = client.status()["last_seq"]
    client.put("wb/a", b"1")
    client.put("wb/b", b"2")
    client.put("elsewhere", b"3")
    batches = client.watch_batches("wb/", since=since, wait=5)
    assert [[c.key for c in batch] for batch in [next(batches)]] == [["wb/a", "wb/b"]]
    client.delete("wb/a")
    assert [(c.key, c.deleted) for c in next(batches)] == [("wb/a", True)]


def test_watch_with_values_yields_what_each_change_wrote(client):
    since = client.status()["last_seq"]
    client.put("v/1", b"\x00one", content_type="x/y", ttl=600)
    client.delete("v/1")
    client.put("v/2", b"two")
    changes = client.watch(prefix="v/", since=since, wait=1, values=True)
    seen = [next(changes) for _ in range(2)]
    assert [(c.key, c.value, c.content_type, c.deleted) for c in seen] == [
        ("v/1", None, None, True),
        ("v/2", b"two", "application/octet-stream", False),
    ]
    plain, _ = client.changes(since, prefix="v/")
    assert [c.value for c in plain] == [None, None]  # no values unless asked


def test_a_snapshot_then_a_watch_from_its_index_misses_nothing(client, server):
    keys = [f"s/{i:03d}" for i in range(120)]
    client.batch([{"op": "put", "key": k, "value": b"0"} for k in keys])

    def write(other: Client) -> None:
        other.put("s/000", b"changed")  # on the page read already
        other.delete("s/001")
        other.put("s/119", b"changed too")  # on a page still to read

    with writes_between_pages(server.url, write) as reader:
        snapshot = reader.snapshot("s/", page_size=50)
    assert reader.pages == 3
    state = {e.key: e.value for e in snapshot.entries}
    assert (state["s/000"], state["s/001"], state["s/119"]) == (b"0", b"0", b"changed too")
    # A watch from the snapshot's index brings what the read missed; from the index of the last
    # page, the changes to s/000 and s/001 were lost.
    changes, _ = client.changes(snapshot.index, prefix="s/", values=True)
    for change in changes:
        if change.deleted:
            state.pop(change.key, None)
        else:
            state[change.key] = change.value
    assert state == {e.key: e.value for e in client.get_prefix("s/")}
    assert state["s/000"] == b"changed" and "s/001" not in state


def _values(config: dict) -> dict:
    return {key: entry.value for key, entry in config.items()}


def test_follow_gives_the_whole_prefix_now_and_again_after_each_change(client, server):
    client.batch([{"op": "put", "key": k, "value": v} for k, v in [("f/a", b"1"), ("f/b", b"2")]])
    client.put("outside", b"x")
    with Client(server.url) as follower:
        configs = follower.follow("f/", wait=5)
        assert _values(next(configs)) == {"f/a": b"1", "f/b": b"2"}
        written = client.put("f/c", b"3", content_type="text/plain")
        config = next(configs)
        assert _values(config) == {"f/a": b"1", "f/b": b"2", "f/c": b"3"}
        assert (config["f/c"].etag, config["f/c"].content_type) == (written.etag, "text/plain")
        # Changes that arrive together come in one dict; one outside the prefix changes nothing.
        client.batch([{"op": "delete", "key": "f/a"}, {"op": "put", "key": "f/b", "value": b"20"}])
        client.put("outside", b"y")
        client.put("f/d", b"4")
        assert _values(next(configs)) == {"f/b": b"20", "f/c": b"3", "f/d": b"4"}


def test_follow_yields_nothing_for_a_change_its_first_read_had_seen(client, server):
    client.batch([{"op": "put", "key": f"o/{i:03d}", "value": b"0"} for i in range(120)])

    def write(other: Client) -> None:
        other.put("o/119", b"seen")  # on a page still to read: the snapshot has it, and the feed

    later = threading.Timer(1.0, lambda: client.put("o/new", b"new"))
    with writes_between_pages(server.url, write) as follower:
        configs = follower.follow("o/", wait=5, page_size=50)
        first = _values(next(configs))
        assert first["o/119"] == b"seen" and len(first) == 120
        later.start()
        try:
            # The feed's first answer holds only o/119, which the snapshot had: no dict for it.
            assert _values(next(configs)) == {**first, "o/new": b"new"}
        finally:
            later.join()


def test_follow_reads_it_all_again_when_the_feed_no_longer_reaches_back(serve):
    server = serve("--tombstone-grace", "0", "--purge-interval", "1")
    with Client(server.url) as client, Client(server.url) as follower:
        client.put("g/a", b"1")
        client.put("g/b", b"2")
        before = client.status()["last_seq"]
        configs = follower.follow("g/", wait=5)
        assert _values(next(configs)) == {"g/a": b"1", "g/b": b"2"}
        client.delete("g/a")

        def purged() -> bool:
            try:
                client.changes(before)
            except errors.ChangesGone:
                return True
            return False

        wait_until(purged, 15)
        client.put("g/c", b"3")
        assert _values(next(configs)) == {"g/b": b"2", "g/c": b"3"}


def test_the_connection_is_reused(client, server):
    client.put("r", b"1")
    conn = client._local.conn
    for _ in range(5):
        client.get("r")
    assert client._local.conn is conn and conn.sock is not None


def test_the_server_and_token_come_from_the_environment_as_for_the_commands(serve, monkeypatch):
    server = serve("--token", "s3cret")
    monkeypatch.setenv("NAVISTORE_URL", server.url)
    monkeypatch.setenv("NAVISTORE_TOKEN", "s3cret")
    with Client() as client:
        assert client.url == server.url
        client.put("env", b"found")
    with Client(server.url) as client:  # the token still comes from the environment
        assert client.get("env").value == b"found"
    with Client(token="") as client, pytest.raises(Unauthorized):
        client.get("env")
    with Client(token="wrong") as client, pytest.raises(Unauthorized):
        client.get("env")
    monkeypatch.delenv("NAVISTORE_URL")
    monkeypatch.delenv("NAVISTORE_TOKEN")
    assert Client().url == "http://127.0.0.1:8888"


def test_an_unreachable_server_is_a_client_error():
    with pytest.raises(ClientError, match="cannot reach"):
        Client("http://127.0.0.1:9").get("k")


def test_the_read_token_reads_everything_and_writes_nothing(serve):
    # a Consul ACL token with read on the keys, an etcd user with a read-only role: what the
    # machines that take their configuration get, while whoever changes it keeps the token
    server = serve(
        "--token", "w-secret", "--read-token", "r-secret", "--peer", "http://127.0.0.1:9"
    )
    writer, reader = Client(server.url, token="w-secret"), Client(server.url, token="r-secret")
    written = writer.put("app/k", b"v")
    assert reader.get("app/k").value == b"v"
    assert [e.key for e in reader.get_prefix("app/")] == ["app/k"]
    assert [c.key for c in reader.changes(0)[0]] == ["app/k"]
    assert reader.status()["last_seq"] == 1
    assert reader.replication_status() is not None
    assert server.request("HEAD", "/v1/keys/app/k", headers=_bearer("r-secret")).status == 200
    refused = [
        lambda: reader.put("app/k", b"changed"),
        lambda: reader.put("app/new", b"x"),
        lambda: reader.delete("app/k"),
        lambda: reader.delete_prefix("app/"),
        lambda: reader.batch([{"op": "delete", "key": "app/k"}]),
    ]
    for write in refused:
        with pytest.raises(Forbidden, match="the read token may read"):
            write()
    answer = server.request("PUT", "/v1/replication/peers", b'{"peers": []}', _json("r-secret"))
    assert answer.status == 403 and "writing needs the token" in answer.json()["description"]
    # the replication endpoints take the peer token (here the token): not the read token
    records = b'{"source": {}, "target_store_id": "x", "records": []}'
    answer = server.request("POST", "/v1/replication/records", records, _json("r-secret"))
    assert answer.status == 401
    assert writer.get("app/k").etag == written.etag
    assert [e.key for e in writer.get_prefix("app/")] == ["app/k"]
    assert writer.status()["last_seq"] == 1  # nothing the read token tried was written
    with pytest.raises(Unauthorized):
        Client(server.url, token="guess").get("app/k")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _json(token: str) -> dict[str, str]:
    return {**_bearer(token), "Content-Type": "application/json"}


def test_a_token_is_sent(serve):
    server = serve("--token", "s3cret")
    with pytest.raises(Unauthorized):
        Client(server.url).get("k")
    with Client(server.url, token="s3cret") as client:
        client.put("k", b"v")
        assert client.get("k").value == b"v"

"""The receiving side and the peer list, through falcon.testing on a real sqlite Node."""

from __future__ import annotations

import base64
import time

import falcon.testing
import pytest

from navistore.app import create_app
from navistore.record import make_stamp
from navistore_peer_push.pusher import Options


def now_stamp(offset_s: float = 0.0, node: str = "peer") -> str:
    return make_stamp(int((time.time() + offset_s) * 1000), 0, node)


def record(key: str, value: bytes = b"v", stamp: str | None = None, **extra) -> dict:
    return {
        "key": key,
        "value": base64.b64encode(value).decode(),
        "content_type": "text/plain",
        "stamp": stamp or now_stamp(),
        "deleted": False,
        "expires_at": None,
        **extra,
    }


@pytest.fixture
def client(node):
    return falcon.testing.TestClient(create_app(node))


def batch(node, records, **overrides) -> dict:
    return {
        "source": {"node_id": "peer", "store_id": "elsewhere"},
        "target_store_id": node.store_id,
        "records": records,
        **overrides,
    }


def test_hello_says_who_we_are(client, node):
    hello = client.simulate_get("/v1/replication/hello").json
    assert (hello["node_id"], hello["store_id"]) == (node.node_id, node.store_id)


def test_a_batch_is_merged_once_however_often_it_is_sent(client, node):
    body = batch(node, [record("a", b"\x00\xff"), record("b", deleted=True)])
    first = client.simulate_post("/v1/replication/records", json=body)
    assert first.status_code == 200 and first.json["merged"] == 2
    seq = node.last_seq()
    again = client.simulate_post("/v1/replication/records", json=body)
    assert again.json == {"merged": 0, "ignored": 2, "last_seq": seq}
    assert node.get("a").value == b"\x00\xff" and node.get("a").content_type == "text/plain"
    assert node.changes(0)[0][1].deleted


def test_merging_moves_the_clock_past_the_stamps_seen(client, node):
    ahead = now_stamp(30)
    client.simulate_post("/v1/replication/records", json=batch(node, [record("a", stamp=ahead)]))
    assert node.clock.now() > ahead


def test_a_batch_for_another_store_is_409(client, node):
    wrong = batch(node, [record("a")], target_store_id="not-this-one")
    answer = client.simulate_post("/v1/replication/records", json=wrong)
    assert answer.status_code == 409 and node.store_id in answer.json["description"]
    assert node.last_seq() == 0


@pytest.mark.parametrize("target", [None, 7, ["x"]])
def test_a_batch_without_a_store_id_is_a_bad_request(client, node, target):
    body = batch(node, [record("a")], target_store_id=target)
    if target is None:
        del body["target_store_id"]
    answer = client.simulate_post("/v1/replication/records", json=body)
    assert answer.status_code == 400 and "target_store_id" in answer.json["description"]
    assert node.last_seq() == 0


def test_a_sender_with_our_node_id_is_refused(client, node):
    body = batch(node, [record("a")], source={"node_id": node.node_id, "store_id": "x"})
    answer = client.simulate_post("/v1/replication/records", json=body)
    assert answer.status_code == 409 and "--node-id" in answer.json["description"]


def test_a_batch_with_a_stamp_too_far_ahead_is_refused_whole(client, node):
    body = batch(node, [record("fine"), record("future", stamp=now_stamp(120))])
    answer = client.simulate_post("/v1/replication/records", json=body)
    assert answer.status_code == 409
    assert "ahead" in answer.json["description"] and "60 s" in answer.json["description"]
    assert node.last_seq() == 0


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({**record("k"), "value": "not base64!"}, "record 1"),
        (record("", b"v"), "key is empty"),
        (record("a\x00b"), "control character"),
        (record("k", stamp="yesterday"), "stamp"),
        (record("k", deleted="yes"), "boolean"),
        (record("k", expires_at="soon"), "expires_at"),
        (record("k", expires_at=float("inf")), "expires_at"),
        (record("k", expires_at=float("nan")), "expires_at"),
        (record("k", content_type="text/\u2603"), "content type"),
        (record("k", content_type="a\nb"), "content type"),
        (record("k", content_type="x" * 300), "content type"),
        ("not an object", "JSON object"),
    ],
)
def test_malformed_records_are_400_and_nothing_is_merged(client, node, bad, problem):
    answer = client.simulate_post("/v1/replication/records", json=batch(node, [record("ok"), bad]))
    assert answer.status_code == 400 and problem in answer.json["description"]
    assert node.last_seq() == 0


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"records": 5}', b'{"records": [], "source": 3}'])
def test_malformed_batches_are_400(client, node, body):
    json_type = {"Content-Type": "application/json"}
    answer = client.simulate_post("/v1/replication/records", body=body, headers=json_type)
    assert answer.status_code == 400 and answer.json["description"]


def test_a_batch_not_sent_as_json_is_415(client, node):
    answer = client.simulate_post("/v1/replication/records", body=b"{}")
    assert answer.status_code == 415 and "application/json" in answer.json["description"]


def test_the_peer_token_guards_the_peer_endpoints_and_only_them(make_node):
    node = make_node(token="client-secret", peer_token="peer-secret")
    client = falcon.testing.TestClient(create_app(node))
    as_peer = {"Authorization": "Bearer peer-secret"}
    as_client = {"Authorization": "Bearer client-secret"}
    body = batch(node, [record("a")])

    def push(headers=None):
        return client.simulate_post("/v1/replication/records", json=body, headers=headers)

    assert push().status_code == 401
    assert push(as_client).status_code == 401
    assert push(as_peer).status_code == 200
    assert client.simulate_get("/v1/replication/hello", headers=as_peer).status_code == 200
    assert client.simulate_get("/v1/keys/a", headers=as_peer).status_code == 401
    assert client.simulate_get("/v1/keys/a", headers=as_client).status_code == 200
    assert client.simulate_get("/v1/replication/peers", headers=as_client).status_code == 200


def test_runtime_peers_are_checked_kept_and_listed(make_node):
    node = make_node("peers.db", peer=("http://10.0.0.1:8888",))
    client = falcon.testing.TestClient(create_app(node))
    bad = client.simulate_put("/v1/replication/peers", json={"peers": ["ftp://x"]})
    assert bad.status_code == 400 and "ftp://x" in bad.json["description"]
    assert client.simulate_put("/v1/replication/peers", json={"nope": 1}).status_code == 400
    put = client.simulate_put("/v1/replication/peers", json={"peers": ["http://127.0.0.1:1/"]})
    assert put.json == {
        "peers": ["http://10.0.0.1:8888", "http://127.0.0.1:1"],
        "configured": ["http://10.0.0.1:8888"],
        "runtime": ["http://127.0.0.1:1"],
    }
    node.close()
    again = make_node("peers.db")
    assert again.peers() == ["http://127.0.0.1:1"]
    assert again.replicator_name == "peer-push"


def test_setting_peers_at_runtime_starts_replication(make_node):
    node = make_node()
    node.start()
    assert node.replication is None
    node.set_runtime_peers(["http://127.0.0.1:1"])
    assert node.replicator_name == "peer-push" and node.replication is not None
    assert [p["url"] for p in node.replication.status()["peers"]] == ["http://127.0.0.1:1"]


def test_options_from_the_environment():
    options = Options.from_environment({"NAVISTORE_PEER_PUSH_BACKOFF_MAX": "0.5"})
    assert options.backoff_max == 0.5 and options.backoff_initial == 0.1
    from navistore.errors import SettingsError

    with pytest.raises(SettingsError, match="NAVISTORE_PEER_PUSH_BATCH_RECORDS"):
        Options.from_environment({"NAVISTORE_PEER_PUSH_BATCH_RECORDS": "many"})
    with pytest.raises(SettingsError, match="greater than 0"):
        Options.from_environment({"NAVISTORE_PEER_PUSH_MAX_SKEW": "-1"})


def test_a_batch_received_steps_aside_while_it_is_decoded_and_merged(client, node, monkeypatch):
    # Up to megabytes of JSON and base64: with one request running at a time (navistore serve
    # unpinned), small requests would queue behind the decoding, not only behind the merges.
    from navistore.testing.servers import RunSlotRecorder
    from navistore_peer_push import resources

    recorder = RunSlotRecorder()
    calls = recorder.calls
    read_json = resources.read_json
    monkeypatch.setattr(
        resources, "read_json", lambda *args: calls.append("decode") or read_json(*args)
    )
    with recorder.held():
        body = batch(node, [record("a"), record("b")])
        answer = client.simulate_post("/v1/replication/records", json=body)
    assert answer.status_code == 200 and answer.json["merged"] == 2
    assert calls == ["pause", "decode", "resume"]  # once, around both merges as well

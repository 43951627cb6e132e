"""The REST contract through falcon.testing, over a real Node on sqlite."""

from __future__ import annotations

import base64
import io
import json
import time

import falcon.testing
import pytest

from navistore import _http
from navistore.app import create_app


@pytest.fixture
def client(node):
    return falcon.testing.TestClient(create_app(node))


def put(client, path, body=b"v", **kwargs):
    return client.simulate_put(path, body=body, **kwargs)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/v1/keys/a%2Fb", "a/b"),
        ("/v1/keys/%E6%97%A5%E6%9C%AC", "日本"),
        ("/v1/keys/q%3Fx%23y%25z", "q?x#y%z"),
        ("/v1/keys/a//b/", "a//b/"),
        ("/v1/keys/caf%C3%A9", "café"),
        ("/v1/keys/plus+sign", "plus+sign"),
    ],
)
def test_keys_come_from_the_raw_path(client, node, path, key):
    assert put(client, path, b"x").status_code == 201
    assert node.get(key).value == b"x"
    # As waitress hands it over: REQUEST_URI holds the raw bytes as latin-1 characters.
    raw = path.encode("utf-8").decode("latin-1")
    for uri in (raw, raw + "?ttl=5"):
        assert _http.key_from_path({"REQUEST_URI": uri}, "/v1/keys/") == key
    assert _http.key_from_path({"REQUEST_URI": "/v1/keys/\xe6\x97\xa5"}, "/v1/keys/") == "日"


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("/v1/keys/%ff", "UTF-8"),
        ("/v1/keys/%C3", "UTF-8"),
        ("/v1/keys/%zz", "percent-escape"),
        ("/v1/keys/a%2", "percent-escape"),
        ("/v1/keys/a%00b", "control character"),
        ("/v1/keys/a%0Ab", "control character"),
        ("/v1/keys/a%7F", "control character"),
        ("/v1/keys/", "empty"),
        ("/v1/keys/" + "x" * 1025, "1024"),
    ],
)
def test_bad_keys_are_400_with_a_json_description(client, node, path, what):
    for method in ("PUT", "GET", "DELETE"):
        result = client.simulate_request(method, path, body=b"v", headers={"Accept": "text/html"})
        assert result.status_code == 400, (method, result.text)
        assert result.headers["content-type"] == "application/json"
        assert what in result.json["description"]
    assert node.last_seq() == 0


def test_weak_and_multiple_etags_in_if_match(client):
    etag = put(client, "/v1/keys/k").headers["etag"]
    assert put(client, "/v1/keys/k", headers={"If-Match": f"W/{etag}"}).status_code == 412
    both = f'"0000000000000000-x", {etag}'
    assert put(client, "/v1/keys/k", b"2", headers={"If-Match": both}).status_code == 200
    assert put(client, "/v1/keys/k", b"3", headers={"If-Match": both}).status_code == 412
    assert (
        put(client, "/v1/keys/k", headers={"If-Match": "*", "If-None-Match": "*"}).status_code
        == 400
    )
    assert put(client, "/v1/keys/k", headers={"If-None-Match": etag}).status_code == 400
    assert client.simulate_delete("/v1/keys/k", headers={"If-None-Match": "*"}).status_code == 400
    assert client.simulate_get("/v1/keys/k").content == b"2"


@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
@pytest.mark.parametrize("value", ["nonsense", '"unterminated', '"a" "b"', ",", '"a",,'])
def test_an_unparseable_precondition_is_400(client, node, header, value):
    result = put(client, "/v1/keys/k", headers={header: value})
    assert result.status_code == 400 and header in result.json["description"]
    assert node.last_seq() == 0


def test_ttl(client, node):
    assert put(client, "/v1/keys/k", params={"ttl": "1"}).status_code == 201
    assert node.get("k").expires_at is not None
    for bad in ["0", "31536001", "-1", "1.5", "abc", ""]:
        result = client.simulate_put("/v1/keys/other", body=b"v", query_string=f"ttl={bad}")
        assert result.status_code == 400, bad
        assert "31536000" in result.json["description"]
    time.sleep(1.1)
    assert client.simulate_get("/v1/keys/k").status_code == 404


class ReadCountingStream(io.BytesIO):
    reads = 0

    def read(self, *args):
        ReadCountingStream.reads += 1
        return super().read(*args)


def test_an_oversized_body_is_refused_from_its_length_before_it_is_read(make_node):
    node = make_node(max_value_size=100)
    client = falcon.testing.TestClient(create_app(node))
    ReadCountingStream.reads = 0
    stream = ReadCountingStream(b"x" * 101)
    result = client.simulate_put(
        "/v1/keys/k", headers={"Content-Length": "101"}, extras={"wsgi.input": stream}
    )
    assert result.status_code == 413
    assert "limit (max_value_size) is 100" in result.json["description"]
    assert ReadCountingStream.reads == 0
    assert client.simulate_put("/v1/keys/k", body=b"x" * 100).status_code == 201


def test_listing_limits(client):
    for bad in ["0", "1001", "x", "-1"]:
        result = client.simulate_get("/v1/keys", query_string=f"limit={bad}")
        assert result.status_code == 400 and "1000" in result.json["description"]
    assert client.simulate_get("/v1/keys", query_string="limit=1000").status_code == 200


def test_reading_values_takes_a_boolean_and_no_separator(client):
    put(client, "/v1/keys/a/1")
    for query, named in [
        ("values=yes", "values must be true or false"),
        ("values=true&separator=/", "drop separator"),
    ]:
        result = client.simulate_get("/v1/keys", query_string=query)
        assert result.status_code == 400 and named in result.json["description"]
    for query in ["values=false", "values=0", "values=false&prefix=a/&separator=/"]:
        entry = client.simulate_get("/v1/keys", query_string=query).json["keys"][0]
        assert "value" not in entry
    entry = client.simulate_get("/v1/keys", query_string="values=1").json["keys"][0]
    assert entry["value"] == "dg=="  # b"v"


def test_a_page_of_values_stops_at_4_mib(make_node):
    node = make_node()
    client = falcon.testing.TestClient(create_app(node))
    for i in range(6):
        node.put(f"big/{i}", bytes([i]) * (1024 * 1024))
    first = client.simulate_get("/v1/keys", params={"values": "true"})
    assert [e["key"] for e in first.json["keys"]] == [f"big/{i}" for i in range(4)]
    assert first.json["next"] == "big/3"
    rest = client.simulate_get("/v1/keys", params={"values": "true", "after": "big/3"}).json
    assert [e["key"] for e in rest["keys"]] == ["big/4", "big/5"] and rest["next"] is None
    assert base64.b64decode(rest["keys"][1]["value"]) == b"\x05" * (1024 * 1024)


def test_a_page_of_changes_with_values_stops_at_4_mib(make_node):
    node = make_node()
    client = falcon.testing.TestClient(create_app(node))
    for i in range(6):
        node.put(f"big/{i}", bytes([i]) * (1024 * 1024))
    node.delete("big/0")
    first = client.simulate_get("/v1/changes", params={"values": "true"}).json
    assert [c["key"] for c in first["changes"]] == [f"big/{i}" for i in range(1, 5)]
    since = first["changes"][-1]["seq"]
    rest = client.simulate_get("/v1/changes", params={"values": "true", "since": since}).json
    assert [(c["key"], c["deleted"]) for c in rest["changes"]] == [
        ("big/5", False),
        ("big/0", True),
    ]
    assert base64.b64decode(rest["changes"][0]["value"]) == b"\x05" * (1024 * 1024)
    without = client.simulate_get("/v1/changes").json["changes"]
    assert len(without) == 6 and "value" not in without[0]
    bad = client.simulate_get("/v1/changes", query_string="values=all")
    assert bad.status_code == 400 and "values must be true or false" in bad.json["description"]


def test_deleting_everything_must_be_meant(client):
    put(client, "/v1/keys/a")
    refused = client.simulate_delete("/v1/keys")
    assert refused.status_code == 400 and "all=true" in refused.json["description"]
    assert client.simulate_get("/v1/keys/a").status_code == 200
    assert client.simulate_delete("/v1/keys", params={"all": "true"}).json == {"deleted": 1}


def test_change_feed_parameters(client):
    for query in ["since=-1", "since=x", "limit=0", "key=a&prefix=b", "key=%00"]:
        result = client.simulate_get("/v1/changes", query_string=query)
        assert result.status_code == 400, query
        assert result.json["description"]


def test_unknown_routes_and_methods_are_json(client):
    missing = client.simulate_get("/nope", headers={"Accept": "application/xml"})
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
    assert "description" in missing.json
    wrong = client.simulate_post("/v1/keys/k")
    assert wrong.status_code == 405 and "POST" in wrong.json["description"]


def test_query_values_are_decoded_strictly(client):
    result = client.simulate_get("/v1/keys", query_string="prefix=%ff")
    assert result.status_code == 400 and "UTF-8" in result.json["description"]
    assert client.simulate_get("/v1/keys", query_string="prefix=%zz").status_code == 400


def test_a_token_guards_v1_but_not_healthz(make_node):
    client = falcon.testing.TestClient(create_app(make_node(token="s3cret")))
    denied = client.simulate_get("/v1/keys")
    assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
    wrong = client.simulate_get("/v1/keys", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = client.simulate_get("/v1/keys", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.simulate_get("/healthz").status_code == 200


def test_a_busy_store_is_503_with_retry_after(make_node, tmp_path):
    import sqlite3

    node = make_node(store=f"sqlite:///{tmp_path}/busy.db?busy_timeout=50")
    client = falcon.testing.TestClient(create_app(node))
    other = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        busy = put(client, "/v1/keys/k")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "busy" in busy.json["description"]
        assert client.simulate_get("/v1/keys/k").status_code == 404  # reads still answer
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert put(client, "/v1/keys/k").status_code == 201


def test_json_answers_are_compact_and_keep_non_ascii_keys_readable(client):
    put(client, "/v1/keys/caf%C3%A9/a")
    text = client.simulate_get("/v1/keys").text
    assert '"key":"café/a"' in text  # UTF-8, not \u escapes
    assert ", " not in text and '": ' not in text  # no spaces after separators
    assert json.loads(text)["keys"][0]["key"] == "café/a"

"""The REST contract through falcon.testing, over a real Node on sqlite."""

from __future__ import annotations

import io
import time

import falcon.testing
import pytest

from navistore.app import create_app


@pytest.fixture
def client(node):
    return falcon.testing.TestClient(create_app(node))


def put(client, path, body=b"v", **kwargs):
    return client.simulate_put(path, body=body, **kwargs)


def test_put_get_head_delete(client):
    created = put(
        client, "/v1/keys/app/db%20host", b"hello", headers={"Content-Type": "text/plain"}
    )
    assert created.status_code == 201
    etag = created.headers["etag"]
    assert created.json == {"key": "app/db host", "etag": etag}
    assert etag.startswith('"') and etag.endswith('"')
    got = client.simulate_get("/v1/keys/app/db%20host")
    assert (got.status_code, got.content, got.headers["content-type"]) == (
        200,
        b"hello",
        "text/plain",
    )
    assert got.headers["etag"] == etag
    head = client.simulate_head("/v1/keys/app/db%20host")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "5"
    replaced = put(client, "/v1/keys/app/db%20host", b"again")
    assert replaced.status_code == 200 and replaced.json["etag"] != etag
    assert client.simulate_get("/v1/keys/app/db%20host").headers["content-type"] == (
        "application/octet-stream"
    )
    deleted = client.simulate_delete("/v1/keys/app/db%20host")
    assert deleted.status_code == 200 and deleted.json == {"key": "app/db host", "deleted": True}
    assert client.simulate_get("/v1/keys/app/db%20host").status_code == 404
    assert client.simulate_delete("/v1/keys/app/db%20host").status_code == 404


def test_binary_values_are_kept_byte_for_byte(client):
    value = bytes(range(256)) * 4
    put(client, "/v1/keys/bin", value)
    assert client.simulate_get("/v1/keys/bin").content == value
    put(client, "/v1/keys/empty", b"")
    got = client.simulate_get("/v1/keys/empty")
    assert got.status_code == 200 and got.content == b""


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


def test_preconditions(client):
    assert put(client, "/v1/keys/k", headers={"If-Match": "*"}).status_code == 412
    first = put(client, "/v1/keys/k", headers={"If-None-Match": "*"})
    assert first.status_code == 201
    etag = first.headers["etag"]
    assert put(client, "/v1/keys/k", headers={"If-None-Match": "*"}).status_code == 412
    assert (
        put(client, "/v1/keys/k", headers={"If-Match": '"0000000000000000-x"'}).status_code == 412
    )
    assert put(client, "/v1/keys/k", headers={"If-Match": f"W/{etag}"}).status_code == 412
    second = put(client, "/v1/keys/k", b"2", headers={"If-Match": etag})
    assert second.status_code == 200
    both = f'"0000000000000000-x", {second.headers["etag"]}'
    third = put(client, "/v1/keys/k", b"3", headers={"If-Match": both})
    assert third.status_code == 200
    assert client.simulate_delete("/v1/keys/k", headers={"If-Match": etag}).status_code == 412
    assert client.simulate_get("/v1/keys/k").content == b"3"
    assert client.simulate_delete("/v1/keys/k", headers={"If-Match": "*"}).status_code == 200


@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
@pytest.mark.parametrize("value", ["nonsense", '"unterminated', '"a" "b"', ",", '"a",,'])
def test_an_unparseable_precondition_is_400(client, node, header, value):
    result = put(client, "/v1/keys/k", headers={header: value})
    assert result.status_code == 400 and header in result.json["description"]
    assert node.last_seq() == 0


def test_if_none_match_on_get_gives_304(client):
    etag = put(client, "/v1/keys/k").headers["etag"]
    result = client.simulate_get("/v1/keys/k", headers={"If-None-Match": etag})
    assert result.status_code == 304 and result.content == b""
    other = client.simulate_get("/v1/keys/k", headers={"If-None-Match": '"x"'})
    assert other.status_code == 200


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


def test_listing(client):
    for key in ["a/1", "a/2", "b", "c/d/e"]:
        put(client, f"/v1/keys/{key}", b"xyz", headers={"Content-Type": "text/plain"})
    page = client.simulate_get("/v1/keys", params={"limit": "2"})
    assert page.status_code == 200
    assert [k["key"] for k in page.json["keys"]] == ["a/1", "a/2"]
    assert page.json["next"] == "a/2"
    entry = page.json["keys"][0]
    assert set(entry) == {"key", "etag", "size", "content_type", "expires_at"}
    assert (entry["size"], entry["content_type"]) == (3, "text/plain")
    rest = client.simulate_get("/v1/keys", params={"after": "a/2"})
    assert [k["key"] for k in rest.json["keys"]] == ["b", "c/d/e"] and rest.json["next"] is None
    folded = client.simulate_get("/v1/keys", params={"separator": "/"})
    assert folded.json["prefixes"] == ["a/", "c/"]
    assert [k["key"] for k in folded.json["keys"]] == ["b"]
    assert int(page.headers["x-navistore-index"]) == 4
    for bad in ["0", "1001", "x"]:
        result = client.simulate_get("/v1/keys", query_string=f"limit={bad}")
        assert result.status_code == 400 and "1000" in result.json["description"]


def test_delete_by_prefix(client):
    for key in ["a/1", "a/2", "b"]:
        put(client, f"/v1/keys/{key}")
    assert client.simulate_delete("/v1/keys").status_code == 400
    assert client.simulate_delete("/v1/keys", params={"prefix": "a/"}).json == {"deleted": 2}
    assert client.simulate_delete("/v1/keys", params={"all": "true"}).json == {"deleted": 1}


def test_changes(client):
    put(client, "/v1/keys/a")
    put(client, "/v1/keys/b")
    client.simulate_delete("/v1/keys/a")
    feed = client.simulate_get("/v1/changes")
    assert feed.headers["x-navistore-index"] == "3"
    assert feed.json["last_seq"] == 3
    assert [(c["key"], c["deleted"]) for c in feed.json["changes"]] == [("b", False), ("a", True)]
    assert client.simulate_get("/v1/changes", params={"since": "2"}).json["changes"][0]["seq"] == 3
    assert [
        c["key"] for c in client.simulate_get("/v1/changes", params={"key": "b"}).json["changes"]
    ] == ["b"]
    assert client.simulate_get("/v1/changes", query_string="since=-1").status_code == 400
    assert client.simulate_get("/v1/changes", query_string="key=a&prefix=b").status_code == 400


def test_system_routes(client, node):
    assert client.simulate_get("/healthz").json == {"status": "ok"}
    status = client.simulate_get("/v1/status").json
    assert set(status) == {"node_id", "store_id", "version", "last_seq", "backend", "replicator"}
    assert status["node_id"] == node.node_id
    plugins = client.simulate_get("/v1/plugins").json
    assert plugins["active"]["backend"] == "sqlite"
    assert any(p["name"] == "sqlite" for p in plugins["plugins"])


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

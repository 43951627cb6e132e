"""``HttpSuite``: the REST contract (DESIGN section 5), the whole Falcon app over your backend."""

from __future__ import annotations

import base64
import threading
import time
from urllib.parse import quote

import falcon.testing
import pytest

from navistore.app import create_app
from navistore.node import Node
from navistore.settings import Settings
from navistore.testing._plugin import SuiteFixtures, requires


class HttpSuite(SuiteFixtures):
    """Adopt with a subclass that overrides ``make_store_url``."""

    @pytest.fixture
    def node(self, make_store_url, navistore_plugins):
        node = Node(Settings(store=make_store_url(), node_id="suite"), plugins=navistore_plugins)
        yield node
        node.close()

    @pytest.fixture
    def client(self, node) -> falcon.testing.TestClient:
        return falcon.testing.TestClient(create_app(node))

    # -- one key ----------------------------------------------------------------------------

    def test_put_get_head_delete(self, client):
        created = client.simulate_put(
            "/v1/keys/app/db%20host", body=b"10.0.0.5", headers={"Content-Type": "text/plain"}
        )
        assert created.status_code == 201
        etag = created.headers["etag"]
        assert created.json == {"key": "app/db host", "etag": etag}
        got = client.simulate_get("/v1/keys/app/db%20host")
        assert (got.status_code, got.content) == (200, b"10.0.0.5")
        assert (got.headers["content-type"], got.headers["etag"]) == ("text/plain", etag)
        head = client.simulate_head("/v1/keys/app/db%20host")
        assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "8")
        replaced = client.simulate_put("/v1/keys/app/db%20host", body=b"10.0.0.6")
        assert replaced.status_code == 200 and replaced.json["etag"] != etag
        deleted = client.simulate_delete("/v1/keys/app/db%20host")
        assert (deleted.status_code, deleted.json) == (200, {"key": "app/db host", "deleted": True})
        assert client.simulate_get("/v1/keys/app/db%20host").status_code == 404
        assert client.simulate_delete("/v1/keys/app/db%20host").status_code == 404

    def test_default_content_type(self, client):
        client.simulate_put("/v1/keys/k", body=b"v")
        assert (
            client.simulate_get("/v1/keys/k").headers["content-type"] == "application/octet-stream"
        )

    def test_values_are_binary_safe(self, client):
        value = bytes(range(256)) * 8
        client.simulate_put("/v1/keys/bin", body=value)
        assert client.simulate_get("/v1/keys/bin").content == value
        client.simulate_put("/v1/keys/empty", body=b"")
        empty = client.simulate_get("/v1/keys/empty")
        assert (empty.status_code, empty.content) == (200, b"")

    @pytest.mark.parametrize(
        ("path", "key"),
        [
            ("/v1/keys/a%2Fb", "a/b"),
            ("/v1/keys/%E6%97%A5%E6%9C%AC/%F0%9F%98%80", "日本/😀"),
            ("/v1/keys/q%3Fx%23y%25z", "q?x#y%z"),
            ("/v1/keys/a//b/", "a//b/"),
        ],
        ids=["escaped-slash", "utf8", "escaped-query-chars", "empty-segments"],
    )
    def test_keys_round_trip(self, client, path, key):
        assert client.simulate_put(path, body=key.encode()).status_code == 201
        assert client.simulate_get(path).content == key.encode()
        listed = client.simulate_get("/v1/keys").json["keys"]
        assert [k["key"] for k in listed] == [key]

    # -- preconditions ----------------------------------------------------------------------

    def test_conditional_writes(self, client):
        assert client.simulate_put("/v1/keys/k", headers={"If-Match": "*"}).status_code == 412
        first = client.simulate_put("/v1/keys/k", body=b"1", headers={"If-None-Match": "*"})
        assert first.status_code == 201
        etag = first.headers["etag"]
        again = client.simulate_put("/v1/keys/k", body=b"x", headers={"If-None-Match": "*"})
        assert again.status_code == 412
        stale = client.simulate_put(
            "/v1/keys/k", body=b"x", headers={"If-Match": '"0000000000000000-x"'}
        )
        assert stale.status_code == 412
        second = client.simulate_put("/v1/keys/k", body=b"2", headers={"If-Match": etag})
        assert second.status_code == 200
        assert client.simulate_delete("/v1/keys/k", headers={"If-Match": etag}).status_code == 412
        assert client.simulate_get("/v1/keys/k").content == b"2"
        ok = client.simulate_delete("/v1/keys/k", headers={"If-Match": second.headers["etag"]})
        assert ok.status_code == 200

    def test_if_none_match_gives_304(self, client):
        etag = client.simulate_put("/v1/keys/k", body=b"v").headers["etag"]
        unchanged = client.simulate_get("/v1/keys/k", headers={"If-None-Match": etag})
        assert unchanged.status_code == 304 and unchanged.content == b""
        client.simulate_put("/v1/keys/k", body=b"w")
        changed = client.simulate_get("/v1/keys/k", headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.content == b"w"

    # -- ttl --------------------------------------------------------------------------------

    @requires("ttl")
    def test_ttl_expires_the_key(self, client, node):
        assert client.simulate_put("/v1/keys/k", body=b"v", params={"ttl": "1"}).status_code == 201
        listed = client.simulate_get("/v1/keys").json["keys"][0]
        assert listed["expires_at"] > time.time()
        time.sleep(1.2)
        assert client.simulate_get("/v1/keys/k").status_code == 404
        assert client.simulate_get("/v1/keys").json["keys"] == []
        node.purge()
        feed = client.simulate_get("/v1/changes").json["changes"]
        assert [(c["key"], c["deleted"]) for c in feed] == [("k", True)]

    # -- listing ----------------------------------------------------------------------------

    def test_listing_pages_in_key_order(self, client):
        keys = ["b", "a", "é", "a/1", "日本", "Z"]
        for key in keys:
            path = "/v1/keys/" + quote(key, safe="/")
            client.simulate_put(path, body=b"xyz", headers={"Content-Type": "text/x"})
        seen, after = [], None
        while True:
            params = {"limit": "2", **({"after": after} if after else {})}
            page = client.simulate_get("/v1/keys", params=params).json
            seen += [k["key"] for k in page["keys"]]
            after = page["next"]
            if after is None:
                break
        assert seen == sorted(keys, key=lambda k: k.encode())
        entry = client.simulate_get("/v1/keys", params={"prefix": "b"}).json["keys"][0]
        assert (
            entry["size"] == 3
            and entry["content_type"] == "text/x"
            and entry["etag"].startswith('"')
        )

    def test_listing_one_level(self, client):
        for key in ["a/1", "a/2", "a/x/y", "b", "c/1"]:
            client.simulate_put(f"/v1/keys/{key}", body=b"v")
        top = client.simulate_get("/v1/keys", params={"separator": "/"}).json
        assert top["prefixes"] == ["a/", "c/"] and [k["key"] for k in top["keys"]] == ["b"]
        inner = client.simulate_get("/v1/keys", params={"prefix": "a/", "separator": "/"}).json
        assert inner["prefixes"] == ["a/x/"] and [k["key"] for k in inner["keys"]] == ["a/1", "a/2"]

    def test_reading_a_subtree_with_values(self, client):
        values = {"a/1": bytes(range(256)), "a/2": b"", "a/3": b"\x00three", "ab": b"no", "b": b"x"}
        for key, value in values.items():
            client.simulate_put(f"/v1/keys/{key}", body=value, headers={"Content-Type": "x/y"})
        client.simulate_delete("/v1/keys/a/3")  # a tombstone is not read
        seen, after = [], None
        while True:
            params = {
                "prefix": "a/",
                "values": "true",
                "limit": "1",
                **({"after": after} if after else {}),
            }
            page = client.simulate_get("/v1/keys", params=params).json
            seen += page["keys"]
            after = page["next"]
            if after is None:
                break
        assert [entry["key"] for entry in seen] == ["a/1", "a/2"]
        assert [base64.b64decode(entry["value"]) for entry in seen] == [values["a/1"], b""]
        etag = client.simulate_get("/v1/keys/a/1").headers["etag"]
        assert seen[0] == {
            "key": "a/1",
            "etag": etag,
            "size": 256,
            "content_type": "x/y",
            "expires_at": None,
            "value": base64.b64encode(values["a/1"]).decode(),
        }
        everything = client.simulate_get("/v1/keys", params={"values": "true"}).json
        assert [entry["key"] for entry in everything["keys"]] == ["a/1", "a/2", "ab", "b"]
        assert everything["next"] is None

    def test_delete_by_prefix(self, client):
        for key in ["a/1", "a/2", "b"]:
            client.simulate_put(f"/v1/keys/{key}", body=b"v")
        assert client.simulate_delete("/v1/keys", params={"prefix": "a/"}).json == {"deleted": 2}
        assert [k["key"] for k in client.simulate_get("/v1/keys").json["keys"]] == ["b"]

    # -- changes and status -----------------------------------------------------------------

    def test_the_change_feed(self, client):
        client.simulate_put("/v1/keys/a", body=b"1")
        client.simulate_put("/v1/keys/b", body=b"1")
        client.simulate_delete("/v1/keys/a")
        feed = client.simulate_get("/v1/changes")
        body = feed.json
        assert feed.headers["x-navistore-index"] == str(body["last_seq"])
        assert [(c["key"], c["deleted"]) for c in body["changes"]] == [("b", False), ("a", True)]
        first = body["changes"][0]["seq"]
        rest = client.simulate_get("/v1/changes", params={"since": str(first)}).json["changes"]
        assert [c["key"] for c in rest] == ["a"]
        only_b = client.simulate_get("/v1/changes", params={"key": "b"}).json["changes"]
        assert [c["key"] for c in only_b] == ["b"]

    def test_the_change_feed_with_values(self, client):
        client.simulate_put("/v1/keys/a", body=b"\x00\xff", headers={"Content-Type": "x/y"})
        etag = client.simulate_put("/v1/keys/b", body=b"").headers["etag"]
        client.simulate_delete("/v1/keys/a")
        feed = client.simulate_get("/v1/changes", params={"values": "true"}).json["changes"]
        assert [{k: v for k, v in c.items() if k != "seq"} for c in feed] == [
            {
                "key": "b",
                "etag": etag,
                "deleted": False,
                "content_type": "application/octet-stream",
                "expires_at": None,
                "value": "",
            },
            {
                "key": "a",
                "etag": feed[1]["etag"],
                "deleted": True,
                "content_type": None,
                "expires_at": None,
                "value": None,
            },
        ]
        client.simulate_put("/v1/keys/a", body=b"\x00\xff", headers={"Content-Type": "x/y"})
        since = str(feed[-1]["seq"])
        (again,) = client.simulate_get(
            "/v1/changes", params={"since": since, "values": "true", "key": "a"}
        ).json["changes"]
        assert (again["value"], again["content_type"]) == ("AP8=", "x/y")

    @requires("batch")
    def test_a_batch_is_all_or_nothing(self, client, node):
        etag = client.simulate_put("/v1/keys/a", body=b"1").headers["etag"]
        ops = [
            {"op": "put", "key": "b", "value": "Mg=="},
            {"op": "put", "key": "a", "value": "Mw==", "if_match": '"0000000000000000-x"'},
        ]
        failed = client.simulate_post("/v1/batch", json={"ops": ops})
        assert failed.status_code == 412 and failed.json["index"] == 1
        assert client.simulate_get("/v1/keys/b").status_code == 404
        ops[1]["if_match"] = etag
        done = client.simulate_post("/v1/batch", json={"ops": ops})
        assert done.status_code == 200
        assert [r["key"] for r in done.json["results"]] == ["b", "a"]
        assert client.simulate_get("/v1/keys/a").content == b"3"

    @requires("batch", "checks")
    def test_a_batch_writes_only_while_its_checks_hold(self, client, node):
        etag = client.simulate_put("/v1/keys/schema", body=b"3").headers["etag"]
        ops = [
            {"op": "check", "key": "schema", "if_match": etag},
            {"op": "check", "key": "lock", "if_none_match": "*"},
            {"op": "put", "key": "db/host", "value": "MTAuMC4wLjY="},
        ]
        since = node.last_seq()
        done = client.simulate_post("/v1/batch", json={"ops": ops})
        assert done.status_code == 200, done.text
        results = done.json["results"]
        assert [(r["key"], r["etag"]) for r in results[:2]] == [("schema", etag), ("lock", None)]
        assert results[2]["etag"] == client.simulate_get("/v1/keys/db/host").headers["etag"]
        feed = client.simulate_get("/v1/changes", params={"since": str(since)}).json["changes"]
        assert [change["key"] for change in feed] == ["db/host"]  # a check writes nothing
        client.simulate_put("/v1/keys/schema", body=b"4")
        ops[2]["value"] = "MTAuMC4wLjc="
        failed = client.simulate_post("/v1/batch", json={"ops": ops})
        assert failed.status_code == 412 and failed.json["index"] == 0
        assert client.simulate_get("/v1/keys/db/host").content == b"10.0.0.6"
        before = node.last_seq()
        only = [{"op": "check", "key": "db/host", "if_match": results[2]["etag"]}]
        alone = client.simulate_post("/v1/batch", json={"ops": only})  # checks and no write
        assert alone.json == {"results": [{"key": "db/host", "etag": results[2]["etag"]}]}
        assert node.last_seq() == before

    def test_a_watch_wakes_on_a_write(self, client, node):
        client.simulate_put("/v1/keys/seed", body=b"x")
        since = node.last_seq()
        answer = {}

        def watch():
            query = f"since={since}&prefix=w/&wait=10"
            answer["r"] = client.simulate_get("/v1/changes", query_string=query)

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(0.3)
        client.simulate_put("/v1/keys/other", body=b"x")
        client.simulate_put("/v1/keys/w/1", body=b"x")
        watcher.join(timeout=10)
        assert [c["key"] for c in answer["r"].json["changes"]] == ["w/1"]

    def test_health_and_status(self, client, backend):
        assert client.simulate_get("/healthz").json == {"status": "ok"}
        status = client.simulate_get("/v1/status").json
        assert status["backend"] == backend.name and status["node_id"] == "suite"
        assert status["last_seq"] == 0

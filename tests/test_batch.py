"""POST /v1/batch: all or nothing on this node, errors naming the failing operation."""

from __future__ import annotations

import base64

import falcon.testing
import pytest

from navistore.app import create_app


@pytest.fixture
def client(node):
    return falcon.testing.TestClient(create_app(node))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(client, ops, **kwargs):
    return client.simulate_post("/v1/batch", json={"ops": ops}, **kwargs)


def test_a_batch_writes_everything_and_answers_each_etag(client, node):
    client.simulate_put("/v1/keys/gone", body=b"x")
    answer = post(
        client,
        [
            {"op": "put", "key": "a", "value": b64(b"\x00one"), "content_type": "text/x"},
            {"op": "put", "key": "b", "value": b64(b"two"), "ttl": 60, "if_none_match": "*"},
            {"op": "delete", "key": "gone"},
        ],
    )
    assert answer.status_code == 200
    results = answer.json["results"]
    assert [r["key"] for r in results] == ["a", "b", "gone"]
    got = client.simulate_get("/v1/keys/a")
    assert got.content == b"\x00one" and got.headers["content-type"] == "text/x"
    assert got.headers["etag"] == results[0]["etag"]
    assert node.get("b").expires_at is not None
    assert client.simulate_get("/v1/keys/gone").status_code == 404


def test_a_content_type_is_stored_as_a_header_would_carry_it(client, node):
    # HTTP drops the spaces around a header's value, so a PUT never stores them: nor does a batch.
    ops = [
        {"op": "put", "key": "spaced", "value": b64(b"1"), "content_type": "  text/x  "},
        {"op": "put", "key": "blank", "value": b64(b"2"), "content_type": "   "},
    ]
    assert post(client, ops).status_code == 200
    assert node.get("spaced").content_type == "text/x"
    assert node.get("blank").content_type == "application/octet-stream"


def test_a_failed_condition_names_the_operation_and_writes_nothing(client, node):
    etag = client.simulate_put("/v1/keys/a", body=b"1").headers["etag"]
    before = node.last_seq()
    answer = post(
        client,
        [
            {"op": "put", "key": "new", "value": b64(b"x")},
            {"op": "put", "key": "a", "value": b64(b"2"), "if_match": etag},
            {"op": "put", "key": "a", "value": b64(b"3"), "if_match": etag},
        ],
    )
    assert answer.status_code == 412 and answer.json["index"] == 2
    assert "operation 2" in answer.json["description"]
    assert node.last_seq() == before and client.simulate_get("/v1/keys/new").status_code == 404
    deleting_nothing = post(client, [{"op": "delete", "key": "never"}])
    assert deleting_nothing.status_code == 412 and deleting_nothing.json["index"] == 0


@pytest.mark.parametrize(
    ("op", "problem"),
    [
        ({"op": "put", "key": "", "value": ""}, "empty"),
        ({"op": "put", "key": "k", "value": "not base64!"}, "base64"),
        ({"op": "put", "key": "k", "value": 5}, "base64 string"),
        ({"op": "put", "key": "k", "ttl": 0}, "31536000"),
        ({"op": "put", "key": "k", "ttl": "60"}, "31536000"),
        ({"op": "upsert", "key": "k"}, '"put", "delete" or "check"'),
        ({"op": "check", "key": "k"}, "a check needs if_match"),
        ({"op": "check", "key": "k", "if_match": None}, "a check needs if_match"),
        ({"op": "check", "key": "k", "if_match": "*", "value": ""}, "not value"),
        ({"op": "check", "key": "", "if_match": "*"}, "the key is empty"),
        ({"op": "check", "key": "k", "if_match": "abc"}, "etag with its quotes"),
        ({"op": "put", "key": 7}, '"key" must be a string'),
        ({"op": "put", "key": "k", "if_match": "abc"}, "etag with its quotes"),
        ({"op": "put", "key": "k", "if_none_match": '"x"'}, 'only "*"'),
        ({"op": "put", "key": "k", "if_match": "*", "if_none_match": "*"}, "not both"),
        ({"op": "put", "key": "k", "colour": "red"}, "unknown fields colour"),
        ({"op": "put", "key": "k", "content_type": ["x"]}, "content_type"),
        ("put k", "JSON object"),
    ],
)
def test_a_malformed_operation_is_400_naming_its_index(client, node, op, problem):
    answer = post(client, [{"op": "put", "key": "fine", "value": ""}, op])
    assert answer.status_code == 400, answer.json
    assert answer.json["index"] == 1 and problem in answer.json["description"]
    assert node.last_seq() == 0


def test_batch_limits(client, make_node):
    too_many = [{"op": "put", "key": f"k{i}"} for i in range(129)]
    answer = post(client, too_many)
    assert answer.status_code == 400 and "128" in answer.json["description"]
    assert post(client, too_many[:128]).status_code == 200
    assert post(client, []).status_code == 400
    small = falcon.testing.TestClient(create_app(make_node("small.db", max_value_size=10)))
    big = post(small, [{"op": "put", "key": "k", "value": b64(b"x" * 11)}])
    assert big.status_code == 413 and big.json["index"] == 0
    huge = client.simulate_post(
        "/v1/batch",
        body=b"{}",
        headers={"Content-Type": "application/json", "Content-Length": str(9 * 1024 * 1024)},
    )
    assert huge.status_code == 413 and "8388608" in huge.json["description"]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b'{"ops": [', {"Content-Type": "application/json"}, 400),
        (b'{"ops": []', {"Content-Type": "application/json"}, 400),
        (b"[]", {"Content-Type": "application/json"}, 400),
        (b'{"ops": [], "extra": 1}', {"Content-Type": "application/json"}, 400),
        (b'{"ops": []}', {"Content-Type": "text/plain"}, 415),
        (b'{"ops": []}', {}, 415),
    ],
)
def test_a_malformed_body_is_refused(client, body, headers, status):
    answer = client.simulate_post("/v1/batch", body=body, headers=headers)
    assert answer.status_code == status and answer.json["description"]


def test_a_check_needs_a_backend_that_declares_checks(tmp_path):
    from navistore.node import Node
    from navistore_sqlite.store import SqliteStore

    # The same store, handed over without its Backend: no capability is declared.
    node = Node(store=SqliteStore(str(tmp_path / "bare.db")))
    try:
        answer = post(
            falcon.testing.TestClient(create_app(node)),
            [{"op": "put", "key": "k", "value": ""}, {"op": "check", "key": "k", "if_match": "*"}],
        )
        assert answer.status_code == 400 and answer.json["index"] == 1
        assert "checks capability" in answer.json["description"]
        assert node.last_seq() == 0
    finally:
        node.close()

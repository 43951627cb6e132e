"""Promises that tests try to break: bad input changes nothing, crashes lose nothing acknowledged,
contention loses no update, a long mixed load leaks nothing, replication survives a flapping peer.

Every server here is a real `navistore serve` on 127.0.0.1; every load is bounded in time.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from navistore import errors
from navistore.client import Client
from navistore.testing.servers import WriteLoad, free_port, increment, wait_until

SOAK_SECONDS = float(os.environ.get("NAVISTORE_SOAK_SECONDS", "60"))
JSON = {"Content-Type": "application/json"}

# (method, raw path, body, headers, status): each must answer that status with a JSON
# description, and change nothing.
BAD_INPUTS = [
    # keys: control characters, invalid UTF-8, overlong, percent tricks
    ("PUT", "/v1/keys/a%00b", b"v", {}, 400),
    ("PUT", "/v1/keys/a%0Db", b"v", {}, 400),
    ("PUT", "/v1/keys/a%1Fb", b"v", {}, 400),
    ("PUT", "/v1/keys/a%7F", b"v", {}, 400),
    ("PUT", "/v1/keys/%FF", b"v", {}, 400),
    ("PUT", "/v1/keys/%C0%AF", b"v", {}, 400),  # overlong UTF-8 for '/'
    ("PUT", "/v1/keys/%ED%A0%80", b"v", {}, 400),  # a UTF-16 surrogate in UTF-8
    ("PUT", "/v1/keys/%F4%90%80%80", b"v", {}, 400),  # past U+10FFFF
    ("PUT", "/v1/keys/%E6%97", b"v", {}, 400),  # truncated sequence
    ("PUT", "/v1/keys/%zz", b"v", {}, 400),
    ("PUT", "/v1/keys/%", b"v", {}, 400),
    ("PUT", "/v1/keys/a%2", b"v", {}, 400),
    ("PUT", "/v1/keys/", b"v", {}, 400),
    ("PUT", "/v1/keys/" + "k" * 1025, b"v", {}, 400),
    ("PUT", "/v1/keys/" + "%C3%A9" * 513, b"v", {}, 400),  # 513 characters, 1026 bytes
    ("GET", "/v1/keys/%FF", None, {}, 400),
    ("DELETE", "/v1/keys/%00", None, {}, 400),
    ("HEAD", "/v1/keys/%FF", None, {}, 400),
    # values
    ("PUT", "/v1/keys/big", b"x" * (1024 * 1024 + 1), {}, 413),
    ("PUT", "/v1/keys/big", b"x" * (3 * 1024 * 1024), {}, 413),
    ("PUT", "/v1/keys/ct", b"v", {"Content-Type": "x" * 300}, 400),
    ("PUT", "/v1/keys/ct", b"v", {"Content-Type": "t\u00e9xt/plain"}, 400),  # sent as latin-1
    # ttl
    ("PUT", "/v1/keys/t?ttl=0", b"v", {}, 400),
    ("PUT", "/v1/keys/t?ttl=-5", b"v", {}, 400),
    ("PUT", "/v1/keys/t?ttl=31536001", b"v", {}, 400),
    ("PUT", "/v1/keys/t?ttl=1.5", b"v", {}, 400),
    ("PUT", "/v1/keys/t?ttl=1e3", b"v", {}, 400),
    ("PUT", "/v1/keys/t?ttl=", b"v", {}, 400),
    ("PUT", "/v1/keys/t?ttl=%FF", b"v", {}, 400),
    ("PUT", "/v1/keys/t?ttl=99999999999999999999", b"v", {}, 400),
    ("PUT", "/v1/keys/t?ttl=5&ttl=60", b"v", {}, 400),  # which one? refused, not guessed
    # a name the route does not take: a typo is not ignored (the key would live for ever), and
    # etcd v2's ?recursive on one key deletes nothing
    ("PUT", "/v1/keys/t?tll=60", b"v", {}, 400),
    ("PUT", "/v1/keys/p?ttl=60&recursive=true", b"v", {}, 400),
    ("DELETE", "/v1/keys/p?recursive=true", None, {}, 400),
    ("DELETE", "/v1/keys?prefix=p&recursive=true", None, {}, 400),
    ("GET", "/v1/keys/p?recurse", None, {}, 400),
    ("HEAD", "/v1/keys/p?wait=5", None, {}, 400),
    ("GET", "/v1/keys?prefx=p", None, {}, 400),
    ("GET", "/v1/changes?index=1", None, {}, 400),
    # a batch has no dry run: one asked for writes nothing, rather than everything
    ("POST", "/v1/batch?dry_run=true", b'{"ops": [{"op": "put", "key": "b"}]}', JSON, 400),
    ("PUT", "/v1/replication/peers?append=true", b'{"peers": []}', JSON, 400),
    # preconditions
    ("PUT", "/v1/keys/p", b"v", {"If-Match": "not-quoted"}, 400),
    ("PUT", "/v1/keys/p", b"v", {"If-Match": '"open'}, 400),
    ("PUT", "/v1/keys/p", b"v", {"If-Match": '"a" "b"'}, 400),
    ("PUT", "/v1/keys/p", b"v", {"If-Match": ""}, 400),
    ("PUT", "/v1/keys/p", b"v", {"If-None-Match": '"x"'}, 400),
    ("PUT", "/v1/keys/p", b"v", {"If-Match": "*", "If-None-Match": "*"}, 400),
    ("PUT", "/v1/keys/p", b"v", {"If-Match": '"0000000000000000-nobody"'}, 412),
    ("DELETE", "/v1/keys/p", None, {"If-Match": "garbage"}, 400),
    ("DELETE", "/v1/keys/p", None, {"If-None-Match": "*"}, 400),
    ("GET", "/v1/keys/p", None, {"If-None-Match": "garbage"}, 400),
    # listings and the feed
    ("GET", "/v1/keys?limit=0", None, {}, 400),
    ("GET", "/v1/keys?limit=1001", None, {}, 400),
    ("GET", "/v1/keys?limit=ten", None, {}, 400),
    ("GET", "/v1/keys?prefix=%FF", None, {}, 400),
    ("GET", "/v1/keys?after=%00", None, {}, 200),  # any text may be an `after`
    ("GET", "/v1/keys?prefix=a%zz", None, {}, 400),
    ("GET", "/v1/keys?prefix=a&prefix=b", None, {}, 400),
    ("DELETE", "/v1/keys?prefix=p&prefix=", None, {}, 400),
    ("DELETE", "/v1/keys", None, {}, 400),
    ("DELETE", "/v1/keys?prefix=%00", None, {}, 400),
    ("GET", "/v1/changes?since=-1", None, {}, 400),
    ("GET", "/v1/changes?since=x", None, {}, 400),
    ("GET", "/v1/changes?wait=601", None, {}, 400),
    ("GET", "/v1/changes?limit=0", None, {}, 400),
    ("GET", "/v1/changes?key=a&prefix=b", None, {}, 400),
    ("GET", "/v1/changes?key=%00", None, {}, 400),
    ("GET", "/v1/changes?since=1&since=0", None, {}, 400),
    # batches
    ("POST", "/v1/batch", b'{"ops": [', JSON, 400),
    ("POST", "/v1/batch", b"[]", JSON, 400),
    ("POST", "/v1/batch", b'{"ops": []}', JSON, 400),
    ("POST", "/v1/batch", b'{"ops": [{"op": "put", "key": "k"}]}', {}, 415),
    (
        "POST",
        "/v1/batch",
        b'{"ops": [{"op": "put", "key": "k"}]}',
        {"Content-Type": "text/plain"},
        415,
    ),
    ("POST", "/v1/batch", b'{"ops": [{"op": "zap", "key": "k"}]}', JSON, 400),
    ("POST", "/v1/batch", b'{"ops": [{"op": "put", "key": "\\u0000"}]}', JSON, 400),
    ("POST", "/v1/batch", b'{"ops": [{"op": "put", "key": "\\ud800"}]}', JSON, 400),
    ("POST", "/v1/batch", b'{"ops": [{"op": "put", "key": "k", "value": "!!"}]}', JSON, 400),
    ("POST", "/v1/batch", b'{"ops": [{"op": "put", "key": "k", "ttl": true}]}', JSON, 400),
    # a content type goes into a header when the value is read: printable ASCII only
    (
        "POST",
        "/v1/batch",
        b'{"ops": [{"op": "put", "key": "k", "content_type": "text/\\u2603"}]}',
        JSON,
        400,
    ),
    (
        "POST",
        "/v1/batch",
        b'{"ops": [{"op": "put", "key": "k", "content_type": "\\ud800"}]}',
        JSON,
        400,
    ),
    (
        "POST",
        "/v1/batch",
        b'{"ops": [{"op": "put", "key": "k", "content_type": "a\\nb"}]}',
        JSON,
        400,
    ),
    ("POST", "/v1/batch", b'{"ops": [{"op": "put", "key": "k", "if_match": 5}]}', JSON, 400),
    (
        "POST",
        "/v1/batch",
        json.dumps({"ops": [{"op": "put", "key": f"{i}"} for i in range(129)]}).encode(),
        JSON,
        400,
    ),
    ("POST", "/v1/batch", b"\xff\xfe", JSON, 400),
    ("POST", "/v1/batch", b"[" * 100000 + b"]" * 100000, JSON, 400),
    # replication endpoints, methods and routes
    ("POST", "/v1/replication/records", b"{}", JSON, 400),
    ("PUT", "/v1/replication/peers", b'{"peers": ["gopher://x"]}', JSON, 400),
    ("PUT", "/v1/replication/peers", b'{"peers": "http://x"}', JSON, 400),
    ("POST", "/v1/keys/k", b"v", {}, 405),
    ("PATCH", "/v1/keys/k", b"v", {}, 405),
    ("GET", "/v2/keys/k", None, {}, 404),
    ("GET", "/v1/nothing", None, {}, 404),
]


def ids(case):
    method, path, _, headers, status = case
    return f"{method} {path[:40]} {sorted(headers)} -> {status}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from navistore.testing.servers import ServerProcess

    server = ServerProcess([], tmp_path_factory.mktemp("bad"))
    server.request("PUT", "/v1/keys/p", b"original")
    yield server
    server.stop()


def state(server) -> tuple:
    status = server.request("GET", "/v1/status").json()
    listing = server.request("GET", "/v1/keys?limit=1000").json()
    return status["last_seq"], [(k["key"], k["etag"]) for k in listing["keys"]]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[ids(c) for c in BAD_INPUTS])
def test_bad_input_gets_the_right_4xx_with_a_json_description_and_changes_nothing(server, case):
    method, path, body, headers, status = case
    before = state(server)
    answer = server.request(method, path, body, headers)
    assert answer.status == status, answer
    if method != "HEAD":
        assert answer.headers["content-type"].startswith("application/json")
        if status >= 400:
            assert answer.json()["description"]
    assert state(server) == before
    assert server.request("GET", "/v1/keys/p").body == b"original"


@pytest.mark.parametrize(
    ("method", "path", "said"),
    [
        ("PUT", "/v1/keys/t?tll=60", "unknown query parameter 'tll': PUT on this route takes ttl"),
        ("GET", "/v1/keys/p?recurse", "GET /v1/keys?prefix=P&values=true"),
        ("GET", "/v1/keys/p?index=7&wait=5", "GET /v1/changes?key=K&wait=S"),
        ("DELETE", "/v1/keys?prefix=p&recursive", "DELETE on this route takes prefix, all"),
        ("GET", "/v1/changes?index=1", "'index': GET on this route takes since, prefix, key,"),
    ],
)
def test_an_unknown_query_parameter_is_named_with_what_the_route_takes(server, method, path, said):
    answer = server.request(method, path, b"v" if method == "PUT" else None)
    assert answer.status == 400 and said in answer.json()["description"]


@pytest.mark.parametrize("path", ["/", "/v1", "/v2/keys/k"])
def test_an_unknown_route_points_to_the_description_of_the_api(server, path):
    answer = server.request("GET", path)
    assert answer.status == 404
    assert "GET /openapi.json lists the routes" in answer.json()["description"]
    assert "/v1/keys/{key}" in server.request("GET", "/openapi.json").json()["paths"]


def test_control_characters_in_headers_are_refused_by_waitress_and_change_nothing(server):
    # HTTP forbids them; waitress answers 400 itself (in plain text) before the app runs.
    before = state(server)
    answer = server.request("PUT", "/v1/keys/ct", b"v", {"Content-Type": "text/plain\x01"})
    assert answer.status == 400
    assert state(server) == before


def test_a_stored_content_type_no_header_can_carry_is_served_as_octet_stream(serve, tmp_path):
    # Written before content types were held to printable ASCII (a batch or a peer could send any
    # string): the value stays readable, where the header failed and the GET answered 500.
    from navistore.record import ANY, Record, make_stamp
    from navistore_sqlite.store import SqliteStore

    store = SqliteStore(str(tmp_path / "old.db"))
    stamp = make_stamp(int(time.time() * 1000), 0, "old")
    legacy = {"snow": "text/\u2603", "accent": "t\u00e9xt/plain", "split": "a\nb"}
    for key, content_type in legacy.items():
        store.commit(Record(key, b"kept", content_type, stamp), ANY)
    store.close()
    server = serve("--store", "sqlite:///old.db")
    for key in legacy:
        answer = server.request("GET", f"/v1/keys/{key}")
        assert answer.status == 200 and answer.body == b"kept"
        assert answer.headers["content-type"] == "application/octet-stream"
        assert server.request("HEAD", f"/v1/keys/{key}").status == 200


def test_the_bad_input_table_is_wide(server):
    print(f"{len(BAD_INPUTS)} bad inputs tried")
    assert len(BAD_INPUTS) >= 70


def raw_answer(server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is on a new connection; (status, headers, body) of the answer."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, body


def test_waitress_refuses_only_bodies_past_the_largest_legal_request(server):
    # Over the value limit but under waitress's cap: our JSON 413.
    assert server.request("PUT", "/v1/keys/x", b"x" * (2 * 1024 * 1024)).status == 413
    # At waitress's cap (8 MiB + 64 KiB): waitress answers, from the Content-Length, unread, in
    # JSON like the app, naming the cap and the value limit.
    status, headers, body = raw_answer(
        server, b"PUT /v1/keys/x HTTP/1.1\r\nHost: x\r\nContent-Length: 8454144\r\n\r\n"
    )
    assert status == 413 and headers["content-type"] == "application/json"
    description = json.loads(body)["description"]
    assert "8454144" in description and "max_value_size" in description
    assert "1048576" in description
    assert server.request("GET", "/v1/keys/x").status == 404


@pytest.mark.parametrize(
    "framing, status, named",
    [
        (b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400, "chunk size"),
        (b"Content-Length: -5\r\n\r\nabc", 400, "Content-Length"),
        (b"Content-Length: 3\r\nBad Header\r\n\r\nabc", 400, "header"),
        (b"Transfer-Encoding: gzip\r\n\r\nabc", 501, "Transfer-Encoding"),
    ],
)
def test_requests_waitress_cannot_parse_get_json_errors(server, framing, status, named):
    answer = raw_answer(server, b"PUT /v1/keys/x HTTP/1.1\r\nHost: x\r\n" + framing)
    assert answer[0] == status and answer[1]["content-type"] == "application/json"
    assert named in json.loads(answer[2])["description"]
    assert server.request("GET", "/v1/keys/x").status == 404


def test_oversized_headers_are_refused(server):
    answer = server.request("GET", "/v1/keys/p", headers={"X-Big": "x" * (70 * 1024)})
    assert answer.status == 431
    assert answer.headers["content-type"] == "application/json"
    assert "65536" in answer.json()["description"]
    assert server.request("GET", "/v1/keys/p").status == 200


def test_tokens_never_reach_the_log_and_open_binding_warns(serve):
    server = serve(
        "--token", "super-secret-token", "--read-token", "reading-token", "--host", "0.0.0.0",
        "--access-log", "true",
    )  # fmt: skip
    server.host = "127.0.0.1"
    auth = {"Authorization": "Bearer super-secret-token"}
    assert server.request("PUT", "/v1/keys/k", b"v", auth).status == 201
    assert (
        server.request("GET", "/v1/keys/k", headers={"Authorization": "Bearer wrong"}).status == 401
    )
    reading = {"Authorization": "Bearer reading-token"}
    assert server.request("DELETE", "/v1/keys/k", headers=reading).status == 403
    assert server.request("GET", "/healthz").status == 200
    time.sleep(0.3)
    server.stop()
    log = "".join(server.log)
    assert "super-secret-token" not in log and '"PUT /v1/keys/k" 201' in log
    assert "reading-token" not in log and '"DELETE /v1/keys/k" 403' in log
    serve_open = serve("--host", "0.0.0.0")
    serve_open.stop()
    assert "without a token" in "".join(serve_open.log)


def test_a_receiving_peer_killed_mid_batch_repeatedly_loses_nothing(serve, tmp_path):
    """Writes go to a; b, its peer, is killed with SIGKILL five times while batches arrive.
    Afterwards b has every write a acknowledged, and its database passes an integrity check."""
    port_a, port_b = free_port(), free_port()
    fast = {"NAVISTORE_PEER_PUSH_BACKOFF_MAX": "0.3", "NAVISTORE_PEER_PUSH_BATCH_RECORDS": "50"}
    a = serve(
        "--port",
        str(port_a),
        "--node-id",
        "a",
        "--store",
        "sqlite:///a.db",
        "--peer",
        f"http://127.0.0.1:{port_b}",
        env=fast,
    )
    b = serve("--port", str(port_b), "--node-id", "b", "--store", "sqlite:///b.db", env=fast)
    load = WriteLoad(a.url, "load/", threads=4)
    for _ in range(5):
        time.sleep(0.6)
        b.kill()
        time.sleep(0.3)
        b.start()
    acked = load.stop()
    last = a.request("GET", "/v1/status").json()["last_seq"]
    wait_until(
        lambda: a.request("GET", "/v1/replication/status").json()["peers"][0]["cursor"] >= last,
        timeout=30,
    )
    print(f"{len(acked)} acknowledged writes checked on the peer after 5 kills")
    assert len(acked) > 200
    with Client(a.url) as on_a, Client(b.url) as client:
        listing_a = {e.key: e.etag for e in on_a.list("load/")}
        listing_b = {e.key: e.etag for e in client.list("load/")}
        assert listing_a == listing_b  # every node holds the same data
        on_b = set(listing_b)
        assert set(acked) <= on_b
        for key in list(acked)[:: max(1, len(acked) // 50)]:
            assert client.get(key).value == acked[key]
    b.stop()
    with sqlite3.connect(tmp_path / "b.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_if_match_increments_through_one_node_lose_no_update(serve):
    server = serve()
    clients, each = 8, 25
    threads = [
        threading.Thread(target=increment, args=(server.url, "counter", each))
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Client(server.url).get("counter").value == str(clients * each).encode()


def test_with_replication_each_node_counts_its_own_counter_exactly(serve, tmp_path):
    ports = [free_port() for _ in range(3)]
    nodes = []
    for i, port in enumerate(ports):
        peers = [a for p in ports if p != port for a in ("--peer", f"http://127.0.0.1:{p}")]
        nodes.append(
            serve(
                "--port",
                str(port),
                "--node-id",
                f"n{i}",
                "--store",
                f"sqlite:///n{i}.db",
                *peers,
                env={"NAVISTORE_PEER_PUSH_BACKOFF_MAX": "0.3"},
            )
        )
    each, per_node = 30, 3
    threads = [
        threading.Thread(target=increment, args=(node.url, f"count/{i}", each))
        for i, node in enumerate(nodes)
        for _ in range(per_node)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def everywhere() -> bool:
        return all(
            Client(node.url).get(f"count/{i}").value == str(each * per_node).encode()
            for node in nodes
            for i in range(3)
        )

    wait_until(everywhere, timeout=20)


def _fds(pid: int) -> tuple[int, int]:
    """(descriptors on the store's files, all others): a thread opens its sqlite connection the
    first time the pool gives it work, so the first count grows, up to two per thread."""
    store = other = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if ".db" in target:
            store += 1
        else:
            other += 1
    return store, other


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_soak_a_mixed_load_has_no_errors_and_leaks_nothing(serve):
    """Writes, reads, listings and watches for SOAK_SECONDS; memory and descriptors stay flat."""
    server = serve("--max-watchers", "16")
    pid = server.proc.pid
    stop = threading.Event()
    counts = {"requests": 0, "errors": 0}
    lock = threading.Lock()

    def tally(ok: bool) -> None:
        with lock:
            counts["requests"] += 1
            counts["errors"] += not ok

    def writer(n: int) -> None:
        with Client(server.url) as client:
            i = 0
            while not stop.is_set():
                try:
                    client.put(
                        f"soak/{n}/{i % 500}", os.urandom(64), ttl=30 if i % 7 == 0 else None
                    )
                    if i % 11 == 0:
                        client.delete(f"soak/{n}/{(i * 7) % 500}")
                    tally(True)
                except errors.KeyNotFound:
                    tally(True)
                except errors.NavistoreError:
                    tally(False)
                i += 1

    def reader() -> None:
        with Client(server.url) as client:
            i = 0
            while not stop.is_set():
                try:
                    if i % 10 == 0:
                        sum(1 for _ in client.list("soak/", page_size=200))
                    else:
                        client.get(f"soak/{i % 3}/{i % 500}")
                    tally(True)
                except errors.KeyNotFound:
                    tally(True)
                except errors.NavistoreError:
                    tally(False)
                i += 1

    def watcher() -> None:
        with Client(server.url) as client:
            since = client.status()["last_seq"]
            while not stop.is_set():
                try:
                    changes, last = client.changes(since, prefix="soak/1/", limit=1000, wait=2)
                    since = changes[-1].seq if changes else last
                    tally(True)
                except errors.NavistoreError:
                    tally(False)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    threads += [threading.Thread(target=watcher) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(min(10.0, SOAK_SECONDS / 4))  # warm: caches, connections, threads
    rss_start, fds_start = _rss_mb(pid), _fds(pid)
    time.sleep(SOAK_SECONDS)
    rss_end, fds_end = _rss_mb(pid), _fds(pid)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    print(
        f"soak: {counts['requests']} requests in {SOAK_SECONDS:g} s (+ warm-up), "
        f"{counts['errors']} errors; RSS {rss_start:.1f} -> {rss_end:.1f} MB; "
        f"open fds {fds_start} -> {fds_end}"
    )
    assert counts["errors"] == 0 and counts["requests"] > 1000
    assert rss_end - rss_start < 25, (rss_start, rss_end)
    # sockets, pipes, files other than the store's: none leaks
    assert fds_end[1] - fds_start[1] <= 4, (fds_start, fds_end)
    # the store's: at most a database and a WAL descriptor for each thread of the pool
    assert fds_end[0] <= 2 * (8 + 16) + 4, (fds_start, fds_end)
    assert server.stop() == 0

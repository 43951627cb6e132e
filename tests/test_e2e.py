"""End to end: real `navistore serve` processes on 127.0.0.1, spoken to over HTTP."""

from __future__ import annotations

import http.client
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from navistore.testing.servers import ServerProcess, WriteLoad, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the route tests of this module."""

    server = ServerProcess(["--access-log", "true"], tmp_path_factory.mktemp("e2e"))
    yield server
    server.stop()


def test_put_get_head_delete_over_http(server):
    created = server.request(
        "PUT", "/v1/keys/app/db%20host", b"10.0.0.5", {"Content-Type": "text/plain"}
    )
    assert created.status == 201
    etag = created.headers["etag"]
    assert created.json() == {"key": "app/db host", "etag": etag}
    assert created.headers["content-type"] == "application/json"
    got = server.request("GET", "/v1/keys/app/db%20host")
    assert (got.status, got.body, got.headers["content-type"]) == (200, b"10.0.0.5", "text/plain")
    assert got.headers["etag"] == etag
    head = server.request("HEAD", "/v1/keys/app/db%20host")
    assert head.status == 200 and head.headers["content-length"] == "8" and head.body == b""
    assert (
        server.request("GET", "/v1/keys/app/db%20host", headers={"If-None-Match": etag}).status
        == 304
    )
    stale = server.request(
        "PUT", "/v1/keys/app/db%20host", b"x", {"If-Match": '"0000000000000000-x"'}
    )
    assert stale.status == 412 and "etag" in stale.json()["description"]
    assert (
        server.request("PUT", "/v1/keys/app/db%20host", b"10.0.0.6", {"If-Match": etag}).status
        == 200
    )
    assert server.request("DELETE", "/v1/keys/app/db%20host").json() == {
        "key": "app/db host",
        "deleted": True,
    }
    assert server.request("GET", "/v1/keys/app/db%20host").status == 404
    time.sleep(0.2)
    assert any('"DELETE /v1/keys/app/db%20host" 200' in line for line in server.log)


def test_listing_changes_and_system_routes_over_http(server):
    for key in ["l/a", "l/b/c", "l/d"]:
        assert server.request("PUT", f"/v1/keys/{key}", b"v").status == 201
    listing = server.request("GET", "/v1/keys?prefix=l/&separator=/")
    assert listing.json()["prefixes"] == ["l/b/"]
    assert [k["key"] for k in listing.json()["keys"]] == ["l/a", "l/d"]
    index = int(listing.headers["x-navistore-index"])
    server.request("DELETE", "/v1/keys/l/a")
    feed = server.request("GET", f"/v1/changes?since={index}&prefix=l/")
    assert [(c["key"], c["deleted"]) for c in feed.json()["changes"]] == [("l/a", True)]
    assert server.request("GET", "/healthz").json() == {"status": "ok"}
    assert server.request("GET", "/v1/status").json()["backend"] == "sqlite"
    assert server.request("GET", "/v1/plugins").json()["active"]["backend"] == "sqlite"


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",
        "/v1/status",
        "/v1/keys?prefix=l/",
        "/v1/changes?since=0",
        "/v1/plugins",
        "/v1/replication/status",
        "/v1/replication/peers",
        "/openapi.json",
    ],
)
def test_every_route_that_answers_get_answers_head(server, path):
    # HTTP asks it of every server: a load balancer's health check may send HEAD /healthz.
    got = server.request("GET", path)
    head = server.request("HEAD", path)
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == str(len(got.body))
    assert head.headers["content-type"] == got.headers["content-type"]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("PUT", "/v1/keys/%ff", b"v", {}, 400),
        ("PUT", "/v1/keys/%zz", b"v", {}, 400),
        ("PUT", "/v1/keys/a%01", b"v", {}, 400),
        ("PUT", "/v1/keys/" + "k" * 1025, b"v", {}, 400),
        ("PUT", "/v1/keys/k?ttl=0", b"v", {}, 400),
        ("PUT", "/v1/keys/k", b"v", {"If-Match": "garbage"}, 400),
        ("PUT", "/v1/keys/k", b"x" * (1024 * 1024 + 1), {}, 413),
        ("GET", "/v1/keys?limit=5000", None, {}, 400),
        ("GET", "/v1/changes?since=x", None, {}, 400),
        ("POST", "/v1/keys/k", b"", {}, 405),
        ("GET", "/v2/keys/k", None, {}, 404),
    ],
)
def test_bad_requests_get_json_errors_and_change_nothing(
    server, method, path, body, headers, status
):
    before = server.request("GET", "/v1/status").json()["last_seq"]
    result = server.request(method, path, body, headers)
    assert result.status == status
    assert result.headers["content-type"] == "application/json"
    assert result.json()["description"]
    assert server.request("GET", "/v1/status").json()["last_seq"] == before


def test_a_chunked_body_over_the_limit_is_413(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    chunks = (b"x" * 65536 for _ in range(20))  # 1.25 MiB, no Content-Length
    conn.request("PUT", "/v1/keys/chunked", body=chunks, encode_chunked=True)
    result = conn.getresponse()
    assert result.status == 413
    result.read()
    conn.close()
    assert server.request("GET", "/v1/keys/chunked").status == 404


def test_data_and_deletes_survive_a_restart(serve):
    server = serve()
    server.request("PUT", "/v1/keys/kept", b"1")
    server.request("PUT", "/v1/keys/gone", b"2")
    server.request("DELETE", "/v1/keys/gone")
    node_id = server.request("GET", "/v1/status").json()["node_id"]
    assert server.stop() == 0
    server.start()
    assert server.request("GET", "/v1/keys/kept").body == b"1"
    assert server.request("GET", "/v1/keys/gone").status == 404
    status = server.request("GET", "/v1/status").json()
    assert status["node_id"] == node_id and status["last_seq"] == 3


def test_sigterm_lets_a_request_in_flight_finish_and_exits_zero(serve):
    server = serve()
    sock = socket.create_connection((server.host, server.port))
    body = b"x" * 1000
    # Send the headers and half the body, stop the server, then send the rest.
    sock.sendall(
        b"PUT /v1/keys/late HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + body[:500]
    )
    time.sleep(0.3)
    server.proc.send_signal(15)
    time.sleep(0.3)
    sock.sendall(body[500:])
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 201")
    assert server.proc.wait(timeout=20) == 0
    assert "stopped" in "".join(server.log)


def test_ctrl_c_exits_zero(serve):
    server = serve()
    assert server.stop(sig=2) == 0


def test_a_bad_setting_stops_serve_with_a_message_naming_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "navistore", "serve", "--threads", "lots"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    assert "'threads'" in result.stderr


def test_every_acknowledged_write_survives_kill_9(serve, tmp_path):
    server = serve()
    load = WriteLoad(server.url, "w", threads=6)
    time.sleep(1.5)
    server.kill()
    acknowledged = load.stop()
    assert len(acknowledged) > 100
    print(f"{len(acknowledged)} acknowledged writes checked after kill -9")
    with sqlite3.connect(tmp_path / "navistore.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    server.start()
    for key, value in acknowledged.items():
        got = server.request("GET", f"/v1/keys/{key}")
        assert (got.status, got.body) == (200, value), key


def test_sigterm_answers_every_waiting_watch(serve):
    server = serve("--max-watchers", "20")
    answers = []

    def watch():
        answers.append(server.request("GET", "/v1/changes?since=0&wait=60"))

    threads = [threading.Thread(target=watch) for _ in range(20)]
    for t in threads:
        t.start()

    def all_waiting():  # read the gauge: a probing watch would take a slot itself
        return b"navistore_watchers_waiting 20.0" in server.request("GET", "/metrics").body

    wait_until(all_waiting, timeout=10)
    assert server.request("GET", "/v1/changes?since=0&wait=1").status == 429
    started = time.monotonic()
    assert server.stop() == 0
    for t in threads:
        t.join(timeout=10)
    assert time.monotonic() - started < 8
    assert [a.status for a in answers] == [200] * 20


def test_a_watch_over_http_wakes_on_a_write(serve):
    server = serve()
    got = {}
    thread = threading.Thread(
        target=lambda: got.setdefault(
            "r", server.request("GET", "/v1/changes?since=0&prefix=cfg/&wait=30")
        )
    )
    thread.start()
    time.sleep(0.3)
    server.request("PUT", "/v1/keys/cfg/x", b"1")
    thread.join(timeout=5)
    assert [c["key"] for c in got["r"].json()["changes"]] == ["cfg/x"]


def test_waitress_serve_call_reads_settings_from_the_environment(tmp_path):
    import os
    import subprocess
    import sys

    from navistore.testing.servers import free_port

    port = free_port()
    env = {
        **os.environ,
        "NAVISTORE_STORE": f"sqlite:///{tmp_path}/w.db",
        "NAVISTORE_NODE_ID": "from-env",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "waitress",
            f"--listen=127.0.0.1:{port}",
            "--call",
            "navistore:create_app",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        client = ServerProcess.__new__(ServerProcess)
        client.host, client.port = "127.0.0.1", port

        def up():
            try:
                return client.request("GET", "/healthz").status == 200
            except OSError:
                return False

        wait_until(up, timeout=20)
        assert client.request("PUT", "/v1/keys/k", b"v").status == 201
        assert client.request("GET", "/v1/status").json()["node_id"] == "from-env"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert (tmp_path / "w.db").exists()


def test_json_logs(serve):
    import json

    server = serve("--log-format", "json", "--access-log", "true")
    server.request("GET", "/v1/keys/nothing")
    time.sleep(0.3)
    entries = [json.loads(line) for line in server.log if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "navistore.access"]
    assert access and access[-1]["status"] == 404 and access[-1]["uri"] == "/v1/keys/nothing"
    assert any("serving on" in e["message"] for e in entries)


def test_no_access_log_unless_asked(serve):
    server = serve()
    server.request("GET", "/v1/keys/nothing")
    time.sleep(0.3)
    assert any("serving on" in line for line in server.log)
    assert not any("navistore.access" in line or "/v1/keys/nothing" in line for line in server.log)

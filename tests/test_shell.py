"""The client commands (get, put, delete, batch, ls, watch, dump, load) against real servers."""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import pty
import re
import stat
import subprocess
import sys
import threading
import time

import pytest

import navistore
from navistore import errors
from navistore.backup import dump
from navistore.client import Client, ClientError, Unauthorized
from navistore.testing.servers import (
    ServerProcess,
    free_port,
    wait_until,
    writes_between_pages,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ServerProcess([], tmp_path_factory.mktemp("shell"))
    yield server
    server.stop()


@pytest.fixture
def nav(server, tmp_path):
    Client(server.url).delete_prefix("")

    def run(*args: str, stdin: bytes = b"", url: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "NAVISTORE_URL": url or server.url}
        return subprocess.run(
            [sys.executable, "-m", "navistore", *args],
            input=stdin,
            capture_output=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    return run


def test_the_client_commands_do_not_import_the_server():
    # Falcon and prometheus-client were 40% of the time `navistore get` took (177 -> 133 ms);
    # navistore.node, for the batch limit that `navistore load` reads, 12 ms more.
    code = (
        "import sys, navistore.cli\n"
        "print(sorted(m for m in ('falcon', 'prometheus_client', 'waitress', 'navistore.app',"
        " 'navistore.node') if m in sys.modules))\n"
        "import navistore as n\n"
        "print(n.create_app.__module__, n.Node.__module__, 'Node' in dir(n))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["[]", "navistore.app navistore.node True"], done.stderr


def test_put_and_get_are_byte_for_byte(nav, tmp_path):
    value = bytes(range(256))
    put = nav("put", "bin/all-bytes", stdin=value)
    assert put.returncode == 0 and put.stdout.decode().strip().startswith('"')
    got = nav("get", "bin/all-bytes")
    assert got.returncode == 0 and got.stdout == value
    (tmp_path / "f").write_bytes(b"from a file\n")
    assert nav("put", "f", "--file", "f", "-t", "text/plain").returncode == 0
    assert nav("get", "f").stdout == b"from a file\n"
    assert nav("put", "arg", "a value").returncode == 0
    assert nav("get", "arg", "-o", "out").returncode == 0
    assert (tmp_path / "out").read_bytes() == b"a value"


def test_exit_codes(nav, server):
    missing = nav("get", "missing")
    assert missing.returncode == 1 and b"not found" in missing.stderr
    assert nav("delete", "missing").returncode == 1
    etag = nav("put", "k", "1").stdout.decode().strip()
    assert nav("put", "k", "2", "--if-match", etag).returncode == 0
    stale = nav("put", "k", "3", "--if-match", etag)
    assert stale.returncode == 3 and b"precondition failed" in stale.stderr
    assert nav("put", "k", "4", "--create").returncode == 3
    assert nav("get", "k").stdout == b"2"
    assert nav("get").returncode == 2  # usage
    assert nav("put", "x" * 1025, "v").returncode == 2  # the server says 400
    down = nav("get", "k", url="http://127.0.0.1:9")
    assert down.returncode == 4 and b"cannot reach" in down.stderr


def test_a_missing_key_with_keys_under_it_says_how_to_reach_them(nav):
    # `navistore get app/` for the subtree: point to --prefix, as the user likely meant it.
    nav("put", "my cfg/db/host", "h")
    for command, key, said in [
        ("get", "my cfg/", "navistore get --prefix 'my cfg/' reads them"),
        ("get", "my cfg/db", "navistore get --prefix 'my cfg/db' reads them"),
        ("delete", "my cfg", "navistore delete --prefix 'my cfg' deletes them"),
    ]:
        missing = nav(command, key)
        assert missing.returncode == 1
        assert missing.stderr.decode() == (
            f"navistore: not found: no key {key!r}, but keys live under it: {said}\n"
        )
    alone = nav("get", "my cfg/db/host/more")
    assert (alone.returncode, alone.stderr) == (
        1,
        b"navistore: not found: no key 'my cfg/db/host/more'\n",
    )
    assert nav("get", "my cfg/db/host").stdout == b"h"  # nothing was deleted


def test_get_output_replaces_the_file_whole_keeping_its_mode(nav, server, tmp_path):
    # A watch handler renders a service's configuration with get -o while the service may read
    # it: the service must see the old file or the new one, never a half-written one.
    values = [os.urandom(1 << 20), os.urandom(1 << 20)]
    rendered, link = tmp_path / "app.conf", tmp_path / "current.conf"
    rendered.write_bytes(b"old")
    rendered.chmod(0o640)
    link.symlink_to(rendered)
    seen: set[bytes] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(link.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(8):
            Client(server.url).put("conf", values[n % 2])
            got = nav("get", "conf", "-o", str(link))
            assert got.returncode == 0, got.stderr
    finally:
        done.set()
        reader.join()
    assert seen <= {b"old", *values} and len(seen) >= 2
    assert link.is_symlink() and rendered.read_bytes() == values[1]
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf", "current.conf"]
    assert nav("get", "conf", "-o", "/dev/null").returncode == 0  # not a file: written in place


def test_a_dump_that_fails_leaves_the_file_as_it_was(nav, tmp_path):
    (tmp_path / "guarded").mkdir()
    guarded = ServerProcess(["--token", "s3cret"], tmp_path / "guarded")
    try:
        (tmp_path / "backup.jsonl").write_bytes(b"yesterday's backup\n")
        failed = nav("dump", "-o", "backup.jsonl", url=guarded.url)  # no token: 401
        assert failed.returncode == 4
    finally:
        guarded.stop()
    assert (tmp_path / "backup.jsonl").read_bytes() == b"yesterday's backup\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.jsonl", "guarded"]


def test_get_on_a_terminal_ends_the_line_the_value_leaves_open(server, tmp_path):
    # Byte for byte into a pipe or a file; on a terminal, the prompt must not follow the value
    # on its line.
    with Client(server.url) as client:
        client.put("open", b"no newline")
        client.put("closed", b"a line\n")
        client.put("empty", b"")

    def on_a_terminal(key: str) -> bytes:
        leader, follower = pty.openpty()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "navistore", "get", key],
                env={**os.environ, "NAVISTORE_URL": server.url},
                stdout=follower,
                stderr=subprocess.PIPE,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            os.close(follower)
            follower = -1
            out = b""
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: the terminal's other end is closed and drained
                    break
                if not chunk:
                    break
                out += chunk
            return out
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)

    assert on_a_terminal("open") == b"no newline\r\n"  # the terminal turns \n into \r\n
    assert on_a_terminal("closed") == b"a line\r\n"
    assert on_a_terminal("empty") == b""


def test_put_says_it_reads_the_value_from_a_terminal(server):
    # `navistore put k` typed alone waits for stdin; on a terminal it says so, and how to end.
    leader, follower = pty.openpty()
    try:
        writer = subprocess.Popen(
            [sys.executable, "-m", "navistore", "put", "typed"],
            env={**os.environ, "NAVISTORE_URL": server.url},
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.write(leader, b"typed in\n\x04")  # a line, then Ctrl-D at the start of the next
        out, err = writer.communicate(timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    assert writer.returncode == 0, err
    assert err == b"navistore: reading the value from the terminal; Ctrl-D ends it\n"
    with Client(server.url) as client:
        assert client.get("typed").value == b"typed in\n"
        assert out.decode().strip() == client.get("typed").etag


def test_options_may_come_between_the_key_and_the_value(nav):
    # argparse took KEY and an empty VALUE together at the first option, then refused VALUE
    assert nav("put", "k", "--ttl", "3600", "v").returncode == 0
    assert nav("get", "k").stdout == b"v"
    assert nav("ls", "-l", "k").stdout.decode().split()[2].endswith("Z")  # it has an expiry
    taken = nav("put", "k", "--create", "w")
    assert taken.returncode == 3 and b"precondition failed" in taken.stderr
    assert nav("put", "t", "-t", "text/plain", "--", "-v").returncode == 0
    assert nav("get", "t").stdout == b"-v"
    assert nav("ls", "-l", "t").stdout.decode().split()[1] == "text/plain"
    unknown = nav("put", "k", "--bogus", "v")
    assert unknown.returncode == 2 and b"unrecognized arguments: --bogus" in unknown.stderr
    assert nav("get", "k", "extra").returncode == 2
    assert nav("get", "k").stdout == b"v"


def test_ls_and_delete(nav):
    for key in ["a/1", "a/2", "a/sub/3", "b"]:
        nav("put", key, "v", "-t", "text/plain")
    assert nav("ls").stdout.decode().split() == ["a/1", "a/2", "a/sub/3", "b"]
    assert nav("ls", "a/", "--separator", "/").stdout.decode().split() == ["a/1", "a/2", "a/sub/"]
    long = nav("ls", "-l", "b").stdout.decode()
    assert "text/plain" in long and long.strip().endswith(" b") and long.split()[0] == "1"
    nav("put", "brief", "v", "--ttl", "3600")
    size, content_type, expires, etag, key = nav("ls", "-l", "brief").stdout.decode().split()
    # the expiry in UTC, to the second, as etcd and Consul print times; not seconds since 1970
    left = datetime.datetime.fromisoformat(expires) - datetime.datetime.now(datetime.UTC)
    # (to the second, rounded: up to half a second past the expiry itself)
    assert expires.endswith("Z") and 3590 < left.total_seconds() <= 3601 and key == "brief"
    nav("delete", "brief")
    assert nav("delete", "a/", "--prefix").stdout.decode().strip() == "3"
    assert nav("delete", "b").returncode == 0
    assert nav("ls").stdout == b""


def _put_many(url: str, keys: list[str], value: bytes = b"v") -> None:
    encoded = base64.b64encode(value).decode()
    with Client(url) as client:
        for start in range(0, len(keys), 128):
            client.batch(
                [{"op": "put", "key": k, "value": encoded} for k in keys[start : start + 128]]
            )


def test_get_prefix_prints_each_key_with_its_value_on_a_line(nav, server):
    # etcd's `get --prefix`, Consul's `kv get -recurse` (KEY:VALUE); a value that would not keep
    # to its line, or would read as something else, is shown as a JSON string.
    nav("put", "cfg/db/host", "10.0.0.5")
    nav("put", "cfg/empty", "")
    nav("put", "cfg/motd", stdin=b"line 1\nline 2\ttabbed")
    nav("put", "cfg/quoted", '"as JSON"')
    nav("put", "cfg/bin", stdin=b"\xff\xfe\x00")
    nav("put", "cfg/été:x", "ünïcode")
    nav("put", "other", "not under cfg/")
    shown = nav("get", "--prefix", "cfg/")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.decode().splitlines() == [
        "cfg/bin:(3 bytes, not UTF-8: navistore get prints them)",
        "cfg/db/host:10.0.0.5",
        "cfg/empty:",
        'cfg/motd:"line 1\\nline 2\\ttabbed"',
        'cfg/quoted:"\\"as JSON\\""',
        "cfg/été:x:ünïcode",
    ]
    assert json.loads(shown.stdout.decode().splitlines()[3][len("cfg/motd:") :]) == (
        "line 1\nline 2\ttabbed"
    )
    nothing = nav("get", "--prefix", "none/")
    assert nothing.returncode == 0 and nothing.stdout == b""
    for extra in (["-o", "out"], ["--etag"]):
        refused = nav("get", "--prefix", "cfg/", *extra)
        assert refused.returncode == 2 and b"-o and --etag are for one key" in refused.stderr
    # More keys than a page (1000): every one, in key order.
    keys = [f"page/{i:05d}" for i in range(1100)]
    _put_many(server.url, keys)
    lines = nav("get", "--prefix", "page/").stdout.decode().splitlines()
    assert lines == [f"{key}:v" for key in keys]


@pytest.mark.parametrize(
    "command", [["ls"], ["get", "--prefix", ""], ["dump"], ["watch", "--since", "0"]]
)
def test_a_reader_that_stops_early_ends_the_command_quietly(nav, server, command):
    # `navistore ls | head`: stop as a command killed by SIGPIPE does (status 141), not with a
    # traceback or "Broken pipe" on stderr. The output (over 100 KB) outgrows the pipe's buffer.
    _put_many(server.url, [f"pipe/{i:04d}/{'x' * 100}" for i in range(1100)])
    reader = subprocess.Popen(
        [sys.executable, "-m", "navistore", *command],
        env={**os.environ, "NAVISTORE_URL": server.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout.readline().endswith(b"\n")  # it has begun
    reader.stdout.close()
    stderr = reader.stderr.read()
    assert reader.wait(timeout=60) == 141, stderr
    assert stderr == b""


def test_ls_json_gives_scripts_every_field_a_line_a_key(nav, server):
    # ls -l lines up for eyes, and a content type may hold spaces; scripts take JSON lines.
    nav("put", "j/a", "v", "-t", "text/plain; charset=utf-8")
    nav("put", "j/sub/b", "vv", "--ttl", "3600")
    lines = [json.loads(line) for line in nav("ls", "j/", "--json").stdout.splitlines()]
    with Client(server.url) as client:
        listed = {entry.key: entry for entry in client.list("j/")}
    assert [line["key"] for line in lines] == ["j/a", "j/sub/b"]
    for line in lines:
        entry = listed[line["key"]]
        assert line == {
            "key": entry.key,
            "etag": entry.etag,
            "size": entry.size,
            "content_type": entry.content_type,
            "expires_at": entry.expires_at,
        }
    assert lines[0]["content_type"] == "text/plain; charset=utf-8" and lines[1]["size"] == 2
    assert lines[1]["expires_at"] > time.time() + 3590
    folded = nav("ls", "j/", "-s", "/", "--json").stdout.splitlines()
    assert [json.loads(line) for line in folded] == [lines[0], {"prefix": "j/sub/"}]
    both = nav("ls", "-l", "--json")
    assert both.returncode == 2 and b"not allowed with argument" in both.stderr


@pytest.mark.parametrize(
    ("ttl", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800)]
)
def test_put_takes_a_ttl_in_seconds_or_with_a_unit(nav, server, ttl, seconds):
    assert nav("put", "brief", "v", "--ttl", ttl).returncode == 0
    with Client(server.url) as client:
        (entry,) = client.list("brief")
    assert seconds - 2 < entry.expires_at - time.time() <= seconds


@pytest.mark.parametrize("ttl", ["", "m", "1.5h", "-5", "5y", "1e3", "١"])
def test_put_refuses_a_ttl_it_cannot_read(nav, ttl):
    refused = nav("put", "brief", "v", "--ttl", ttl)
    assert refused.returncode == 2 and b"(90, 90s, 15m, 2h, 7d)" in refused.stderr
    assert nav("get", "brief").returncode == 1  # nothing written


def test_if_match_takes_the_etag_with_or_without_its_quotes(nav):
    # `--if-match "01a2...-node"` in a shell passes the etag without its quotes.
    first = nav("put", "cas", "1").stdout.decode().strip()
    bare = first.strip('"')
    assert first == f'"{bare}"'
    second = nav("put", "cas", "2", "--if-match", bare)
    assert second.returncode == 0, second.stderr
    stale = nav("put", "cas", "3", "--if-match", bare)
    assert stale.returncode == 3 and b"precondition failed" in stale.stderr
    latest = second.stdout.decode().strip()
    assert nav("delete", "cas", "--if-match", latest).returncode == 0
    assert nav("get", "cas").returncode == 1


def test_batch_writes_deletes_and_checks_all_or_nothing_in_the_order_given(nav, server, tmp_path):
    schema = nav("put", "app/schema", "3").stdout.decode().strip()
    nav("put", "app/old", "x")
    (tmp_path / "motd").write_bytes(b"\x00hello\n")
    done = nav(
        "batch",
        "--check", "app/schema", schema.strip('"'),  # bare, as a shell passes it
        "--absent", "app/lock",
        "--put", "app/db/host", "10.0.0.6",
        "--put-file", "app/motd", "motd",
        "--delete", "app/old",
        "-t", "text/plain",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line.split(" ", 2) for line in done.stdout.decode().splitlines()]
    assert [(op, key) for _, op, key in lines] == [
        ("check", "app/schema"),
        ("check", "app/lock"),
        ("put", "app/db/host"),
        ("put", "app/motd"),
        ("delete", "app/old"),
    ]
    assert lines[0][0] == schema and lines[1][0] == "-"
    assert nav("get", "app/motd").stdout == b"\x00hello\n"
    assert nav("get", "app/old").returncode == 1
    assert Client(server.url).get("app/db/host").content_type == "text/plain"
    # A check that fails: exit 3, the operation named, nothing written.
    stale = nav("batch", "--check", "app/schema", '"0000000000000000-x"', "--put", "app/x", "1")
    assert stale.returncode == 3 and b"operation 0 ('app/schema')" in stale.stderr
    taken = nav("batch", "--put", "app/y", "1", "--absent", "app/db/host")
    assert taken.returncode == 3 and b"operation 1" in taken.stderr
    assert nav("get", "app/x").returncode == 1 and nav("get", "app/y").returncode == 1
    nothing = nav("batch")
    assert nothing.returncode == 2 and b"--put KEY VALUE" in nothing.stderr


def test_watch_takes_a_prefix_or_a_key_not_both(nav, server):
    both = nav("watch", "a/", "--key", "b", "--wait", "1")
    assert both.returncode == 2 and b"watch a PREFIX or one --key, not both" in both.stderr
    with Client(server.url) as client, pytest.raises(errors.InvalidRequest, match="not both"):
        client.changes(prefix="a/", key="b")


def test_watch_prints_json_lines(nav, server):
    watcher = subprocess.Popen(
        [sys.executable, "-m", "navistore", "watch", "w/", "--count", "2", "--wait", "5"],
        env={**os.environ, "NAVISTORE_URL": server.url},
        stdout=subprocess.PIPE,
    )
    time.sleep(1.0)
    nav("put", "w/1", "a")
    nav("delete", "w/1")
    out, _ = watcher.communicate(timeout=30)
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [(c["key"], c["deleted"]) for c in lines] == [("w/1", False), ("w/1", True)]
    assert watcher.returncode == 0


# Records each run: its environment and the lines on its stdin; the first run is slow and fails.
_HANDLER = """
import json, os, sys, time
runs = sys.argv[1]
first = not os.path.exists(runs)
with open(runs, "a") as out:
    names = ("NAVISTORE_URL", "NAVISTORE_WATCH_SEQ", "NAVISTORE_WATCH_COUNT")
    lines = [json.loads(line) for line in sys.stdin]
    out.write(json.dumps({"env": [os.environ.get(n) for n in names], "lines": lines}) + "\\n")
if first:
    time.sleep(1.5)
    sys.exit(7)
"""


def test_watch_runs_a_command_for_each_batch_of_changes(nav, server, tmp_path):
    # etcdctl watch KEY -- COMMAND, Consul's watch handlers: reload a service when its keys change
    runs = tmp_path / "runs.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "NAVISTORE_URL"}  # --url is passed on
    watcher = subprocess.Popen(
        [sys.executable, "-m", "navistore", "watch", "--url", server.url, "w/", "-n", "3"]
        + ["--", sys.executable, "-c", _HANDLER, str(runs)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        client = Client(server.url)
        first = client.put("w/1", b"a")
        wait_until(runs.exists, 20)
        # while the first run works, more commit (and one elsewhere): one run for them all (the feed
        # keeps a key's newest change only: w/2's deletion)
        client.put("w/2", b"b")
        client.put("x/1", b"c")
        client.put("w/3", b"d")
        client.delete("w/2")
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    got = [json.loads(line) for line in runs.read_text().splitlines()]
    assert [[(c["key"], c["deleted"]) for c in run["lines"]] for run in got] == [
        [("w/1", False)],
        [("w/3", False), ("w/2", True)],
    ]
    assert got[0]["lines"][0]["etag"] == first.etag
    seq = got[0]["lines"][0]["seq"]
    assert got[0]["env"] == [server.url, str(seq), "1"]
    assert got[1]["env"] == [server.url, str(got[1]["lines"][-1]["seq"]), "2"]
    assert out == b"" and watcher.returncode == 0
    assert f"exited with status 7 (changes up to seq {seq}); watching on".encode() in err


def test_watch_at_start_runs_the_command_once_before_any_change(nav, server, tmp_path):
    # Consul runs a watch's handler at once, so a configuration changed while no watch ran is
    # applied all the same
    runs = tmp_path / "runs.jsonl"
    Client(server.url).put("w/before", b"1")
    index = Client(server.url).status()["last_seq"]
    record = (
        "import json, os, sys; open(sys.argv[1], 'a').write(json.dumps("
        "[os.environ['NAVISTORE_WATCH_SEQ'], os.environ['NAVISTORE_WATCH_COUNT'], "
        "[json.loads(line)['key'] for line in sys.stdin]]) + '\\n')"
    )
    watcher = subprocess.Popen(
        [sys.executable, "-m", "navistore", "watch", "--url", server.url, "w/", "-n", "1"]
        + ["--at-start", "--", sys.executable, "-c", record, str(runs)],
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(runs.exists, 20)
        Client(server.url).put("w/after", b"2")
        _, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, err
    got = [json.loads(line) for line in runs.read_text().splitlines()]
    assert got == [[str(index), "0", []], [str(index + 1), "1", ["w/after"]]]
    alone = nav("watch", "w/", "--at-start")
    assert alone.returncode == 2 and b"--at-start runs the command after --" in alone.stderr


def test_watch_refuses_a_command_it_cannot_run(nav):
    missing = nav("watch", "w/", "--", "no-such-command-here", "arg")
    assert missing.returncode == 2 and b"no command 'no-such-command-here' to run" in missing.stderr
    nothing = nav("watch", "w/", "--")
    assert nothing.returncode == 2 and b"give the command to run after --" in nothing.stderr


def test_watch_goes_on_across_a_server_restart(tmp_path):
    # as etcdctl watch and consul watch do: a restart is not the end of a watch
    server = ServerProcess(["--port", str(free_port())], tmp_path)
    watcher = None
    try:
        Client(server.url).put("w/before", b"1")
        watcher = subprocess.Popen(
            [sys.executable, "-m", "navistore", "watch", "w/", "--count", "2", "--wait", "5"],
            env={**os.environ, "NAVISTORE_URL": server.url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)
        Client(server.url).put("w/1", b"a")
        assert server.stop() == 0
        time.sleep(1.0)  # the watch finds nobody there, and tries again
        server.start()
        Client(server.url).put("w/2", b"b")
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
        server.stop()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [c["key"] for c in lines] == ["w/1", "w/2"] and lines[1]["seq"] == lines[0]["seq"] + 1
    assert watcher.returncode == 0
    assert b"cannot reach" in err and b"trying again" in err
    assert f"{server.url} answers again; going on after seq {lines[0]['seq']}".encode() in err


def test_watch_does_not_retry_what_a_retry_cannot_mend(server, tmp_path):
    def refuse(error, delay):
        raise AssertionError(f"retried {error!r}")

    with pytest.raises(errors.InvalidRequest):
        next(Client(server.url).watch(since=-1, wait=1, on_retry=refuse))
    guarded = ServerProcess(["--token", "secret"], tmp_path)
    try:
        with pytest.raises(Unauthorized):
            next(Client(guarded.url, token="wrong").watch(since=0, wait=1, on_retry=refuse))
    finally:
        guarded.stop()
    # a server never reached is a wrong URL, not a restart: said at once
    with pytest.raises(ClientError, match="cannot reach"):
        next(Client(f"http://127.0.0.1:{free_port()}").watch(since=0, wait=1, on_retry=refuse))


def test_a_watch_that_lost_its_server_backs_off(tmp_path):
    server = ServerProcess(["--port", str(free_port())], tmp_path)  # the same port on restart
    try:
        client = Client(server.url)
        client.put("k", b"v")
        tries: list[float] = []

        def retried(error, delay):
            tries.append(delay)
            if len(tries) == 4:
                raise KeyboardInterrupt

        changes = client.watch(since=0, wait=1, on_retry=retried)
        assert next(changes).key == "k"
        assert server.stop() == 0
        with pytest.raises(KeyboardInterrupt):
            next(changes)
        assert tries == [0.1, 0.2, 0.4, 0.8]
        down = client.watch(since=0, wait=1, reconnect=False)
        server.start()
        assert next(down).key == "k"
        server.stop()
        with pytest.raises(ClientError, match="cannot reach"):
            next(down)
    finally:
        server.stop()


def test_watch_prints_values_when_asked(nav, server):
    since = Client(server.url).status()["last_seq"]
    nav("put", "w/1", "-t", "text/plain", stdin=b"\x00a")
    nav("put", "w/2", "b")
    nav("delete", "w/2")
    watched = nav("watch", "w/", "--since", str(since), "--values", "--count", "2", "--wait", "1")
    lines = [json.loads(line) for line in watched.stdout.decode().splitlines()]
    assert [(c["key"], c["value"], c["content_type"]) for c in lines] == [
        ("w/1", "AGE=", "text/plain"),
        ("w/2", None, None),
    ]


def test_status_shows_the_node_and_how_far_behind_each_peer_is(serve, tmp_path):
    def status(url: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "navistore", "status", "--url", url],
            capture_output=True,
            timeout=60,
        )

    second = serve("--store", "sqlite:///second.db", "--node-id", "second")
    first = serve("--store", "sqlite:///first.db", "--node-id", "first", "--peer", second.url)
    with Client(first.url) as client:
        client.put("k", b"1")
        wait_until(lambda: client.replication_status()["peers"][0]["lag_records"] == 0, 30)
        last_seq = client.status()["last_seq"]
    shown = status(first.url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.decode().splitlines()
    assert lines[:5] == [
        f"{first.url}: healthy",
        f"node        first (navistore {navistore.__version__})",
        lines[2],
        f"last seq    {last_seq}",
        "replicator  peer-push",
    ]
    assert re.fullmatch(r"store       sqlite, id \S+, [\d.]+ (KiB|MiB) on disk", lines[2])
    assert re.fullmatch(
        rf"peer        {second.url} \(node second\): 0 changes behind; last success [\d.]+ s ago",
        lines[5],
    )
    second.stop()
    with Client(first.url) as client:
        client.put("k", b"2")
        wait_until(lambda: client.replication_status()["peers"][0]["last_error"], 30)
    behind = status(first.url).stdout.decode().splitlines()[5]
    assert "(node second): 1 change behind (the oldest " in behind
    assert f"; last error: cannot reach {second.url}" in behind
    # A server without a replicator has no peers to show; one that does not answer fails.
    alone = status(serve("--store", "sqlite:///alone.db").url)
    assert alone.returncode == 0 and alone.stdout.decode().splitlines()[-1] == "replicator  none"
    down = status(second.url)
    assert down.returncode == 4 and b"cannot reach" in down.stderr


def test_dump_and_load_10000_keys(serve, tmp_path):
    source, target = (
        serve("--store", "sqlite:///source.db"),
        serve("--store", "sqlite:///target.db"),
    )
    with Client(source.url) as client:
        for start in range(0, 10_000, 128):
            client.batch(
                [
                    {
                        "op": "put",
                        "key": f"k/{i:05d}/é",
                        "value": bytes([i % 256, 0, 255]) * (i % 7),
                        "content_type": f"type/{i % 3}",
                        **({"ttl": 3600} if i % 5 == 0 else {}),
                    }
                    for i in range(start, min(start + 128, 10_000))
                ]
            )
    env = {**os.environ, "NAVISTORE_URL": source.url}
    run = {"capture_output": True, "cwd": tmp_path, "timeout": 300}
    dumped = subprocess.run(
        [sys.executable, "-m", "navistore", "dump", "-o", "d.jsonl"], env=env, **run
    )
    assert dumped.returncode == 0 and b"dumped 10000 keys" in dumped.stderr
    env["NAVISTORE_URL"] = target.url
    for _ in range(2):  # idempotent: loading twice changes nothing that a dump shows
        loaded = subprocess.run(
            [sys.executable, "-m", "navistore", "load", "d.jsonl"], env=env, **run
        )
        assert loaded.returncode == 0 and b"loaded 10000 keys" in loaded.stderr
    assert not (tmp_path / "d.jsonl.progress").exists()

    def contents(url: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "navistore", "dump"], env={**env, "NAVISTORE_URL": url}, **run
        ).stdout
        lines = [json.loads(line) for line in out.splitlines()[1:]]
        return {
            line["key"]: (line["value"], line["content_type"], line["expires_at"] is not None)
            for line in lines
        }

    original, restored = contents(source.url), contents(target.url)
    assert len(original) == 10_000 and restored == original
    assert base64.b64decode(original["k/00006/é"][0]) == bytes([6, 0, 255]) * 6
    with Client(source.url) as a, Client(target.url) as b:
        listed_a = {e.key: e.expires_at for e in a.list()}
        listed_b = {e.key: e.expires_at for e in b.list()}
    for key, expires in listed_a.items():
        if expires is not None:  # the expiry is kept (to the second)
            assert abs(listed_b[key] - expires) < 2


def test_a_dump_keeps_the_index_to_follow_its_source_from(nav, server):
    # Restore a dump elsewhere, then follow the source from the header's index: nothing missed,
    # even what changed while the dump was being read (here, between its two pages).
    keys = [f"d/{i:04d}" for i in range(1100)]
    _put_many(server.url, keys, b"0")

    def write(other: Client) -> None:
        other.put("d/0000", b"changed")  # on the page read already
        other.put("d/1099", b"changed too")  # on the page still to read

    out = io.BytesIO()
    with writes_between_pages(server.url, write) as reader:
        assert dump(reader, out, "d/") == 1100
    assert reader.pages == 2
    header, *lines = (json.loads(line) for line in out.getvalue().splitlines())
    with Client(server.url) as client:
        assert header["index"] == client.status()["last_seq"] - 2
        state = {line["key"]: base64.b64decode(line["value"]) for line in lines}
        assert (state["d/0000"], state["d/1099"]) == (b"0", b"changed too")
        changes, _ = client.changes(header["index"], prefix="d/", values=True)
        for change in changes:
            state[change.key] = change.value
        assert state == {entry.key: entry.value for entry in client.get_prefix("d/")}


def test_load_resumes_after_an_interruption(serve, tmp_path):
    server = serve()
    lines = [json.dumps({"navistore_dump": 1})] + [
        json.dumps({"key": f"r/{i:03d}", "value": base64.b64encode(b"v").decode()})
        for i in range(300)
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "d.jsonl.progress").write_text("201")  # lines 1-201 were loaded before
    env = {**os.environ, "NAVISTORE_URL": server.url}
    loaded = subprocess.run(
        [sys.executable, "-m", "navistore", "load", "d.jsonl"],
        env=env,
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert loaded.returncode == 0 and b"resumed after line 201" in loaded.stderr
    keys = [e.key for e in Client(server.url).list("r/")]
    assert keys == [f"r/{i:03d}" for i in range(200, 300)]


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        ({"key": "k/bad", "value": "!!"}, "line 203 ('k/bad'): \"value\" is not valid base64"),
        ({"key": "k/" + "x" * 2000, "value": ""}, "line 203 ('k/" + "x" * 58 + "'...): the key is"),
    ],
)
def test_load_names_the_line_the_server_refused(nav, tmp_path, server, bad, said):
    # The server can only say which operation of a batch it refused; a dump has 1,000,000 lines.
    lines = [json.dumps({"navistore_dump": 1})]
    lines += [json.dumps({"key": f"k/{i:03d}", "value": "dg=="}) for i in range(201)]
    lines += [json.dumps(bad), json.dumps({"key": "k/after", "value": "dg=="})]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    loaded = nav("load", "d.jsonl")
    assert loaded.returncode == 2, loaded.stderr
    assert said in loaded.stderr.decode(), loaded.stderr
    assert b"operation" not in loaded.stderr
    # The batches before the bad line's are in; its own is not, all or nothing.
    assert len(list(Client(server.url).list("k/"))) == 128
    assert b"(lines up to 129 are loaded; run the same command to go on from there)" in (
        loaded.stderr
    )
    lines[203 - 1] = json.dumps({"key": "k/mended", "value": "dg=="})
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    again = nav("load", "d.jsonl")
    assert again.returncode == 0 and b"resumed after line 129" in again.stderr, again.stderr
    assert len(list(Client(server.url).list("k/"))) == 203


def test_a_server_that_wants_a_token_says_how_to_give_it(nav, tmp_path):
    (tmp_path / "guarded").mkdir()
    guarded = ServerProcess(["--token", "s3cret", "--read-token", "r3ad"], tmp_path / "guarded")
    try:
        missing = nav("ls", url=guarded.url)
        assert missing.returncode == 4
        assert (
            f"{guarded.url} needs a token: give it with --token or $NAVISTORE_TOKEN".encode()
            in (missing.stderr)
        )
        wrong = nav("get", "k", "--token", "wrong", url=guarded.url)
        assert wrong.returncode == 4 and b"refused the token given" in wrong.stderr
        right = nav("put", "k", "v", "--token", "s3cret", url=guarded.url)
        assert right.returncode == 0, right.stderr
        read = nav("get", "k", "--token", "r3ad", url=guarded.url)
        assert read.returncode == 0 and read.stdout == b"v"
        write = nav("put", "k", "w", "--token", "r3ad", url=guarded.url)
        assert write.returncode == 4
        assert write.stderr == (
            b"navistore: forbidden: the read token may read (GET, HEAD), not PUT /v1/keys/k; "
            b"writing needs the token\n"
        )
    finally:
        guarded.stop()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# What `consul kv export` and `etcdctl get --prefix "" -w json` print, in their own shapes: a
# folder key with a null value, flags; etcd's header, base64 keys, a lease, an empty value left out
_CONSUL_EXPORT = [
    {"key": "app/", "flags": 0, "value": None},
    {"key": "app/db/host", "flags": 0, "value": _b64(b"10.0.0.5")},
    {"key": "app/blob", "flags": 42, "value": _b64(bytes(range(256)))},
    {"key": "app/caf\u00e9", "flags": 0, "value": _b64("cr\u00e8me".encode())},
]
_ETCD_EXPORT = {
    "header": {"cluster_id": 14841639068965178418, "member_id": 10276657743932975437,
               "revision": 9, "raft_term": 2},
    "kvs": [
        {"key": _b64(b"svc/a"), "create_revision": 2, "mod_revision": 7, "version": 3,
         "value": _b64(b"one")},
        {"key": _b64("svc/\u00e9".encode()), "create_revision": 8, "mod_revision": 8,
         "version": 1, "value": _b64(b"\x00\xff")},
        {"key": _b64(b"svc/empty"), "create_revision": 9, "mod_revision": 9, "version": 1},
        {"key": _b64(b"svc/leased"), "create_revision": 5, "mod_revision": 5, "version": 1,
         "value": _b64(b"x"), "lease": 7587875829451870000},
    ],
    "count": 4,
}  # fmt: skip


@pytest.mark.parametrize(
    ("source", "export", "expected"),
    [
        (
            "consul",
            _CONSUL_EXPORT,
            {"app/": b"", "app/db/host": b"10.0.0.5", "app/blob": bytes(range(256)),
             "app/caf\u00e9": "cr\u00e8me".encode()},
        ),
        (
            "etcd",
            _ETCD_EXPORT,
            {"svc/a": b"one", "svc/\u00e9": b"\x00\xff", "svc/empty": b"", "svc/leased": b"x"},
        ),
    ],
)  # fmt: skip
def test_load_moves_a_store_over_from_consul_or_etcd(
    nav, tmp_path, server, source, export, expected
):
    (tmp_path / "export.json").write_text(json.dumps(export))
    loaded = nav("load", "export.json", "--from", source)
    assert loaded.returncode == 0, loaded.stderr
    with Client(server.url) as client:
        held = {entry.key: entry.value for entry in client.get_prefix("")}
    assert held == expected
    again = nav("load", "export.json", "--from", source)  # idempotent, as a dump's load
    assert again.returncode == 0
    with Client(server.url) as client:
        assert {e.key: e.value for e in client.get_prefix("")} == expected


@pytest.mark.parametrize(
    ("source", "export", "said"),
    [
        ("consul", {"navistore_dump": 1}, "is not what `consul kv export` writes"),
        ("etcd", _CONSUL_EXPORT, "is not what `etcdctl get --prefix '' -w json` writes"),
        ("consul", [{"key": "a", "value": 5}], "entry 1 ('a'): the value is not base64 text"),
        ("etcd", {"kvs": [{"key": _b64(b"\xff")}]}, "entry 1: the key '/w==' is not base64 of"),
        (
            "consul",
            [{"key": "ok", "value": "dg=="}, {"key": "bad\u0001", "value": "dg=="}],
            "entry 2 ('bad\\x01'): ",
        ),
    ],
)
def test_load_from_an_export_names_the_entry_it_cannot_take(
    nav, tmp_path, server, source, export, said
):
    (tmp_path / "export.json").write_text(json.dumps(export))
    loaded = nav("load", "export.json", "--from", source)
    assert loaded.returncode == 2 and said in loaded.stderr.decode(), loaded.stderr
    assert list(Client(server.url).list("")) == []  # the batch is all or nothing


def test_load_refuses_a_file_that_is_not_a_dump(nav, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"navistore_dump": 1}\nnot json\n')
    bad = nav("load", "bad.jsonl")
    assert bad.returncode == 2 and b"line 2 is not JSON" in bad.stderr

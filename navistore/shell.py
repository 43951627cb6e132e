"""The client commands of ``navistore``: get, put, delete, batch, ls, watch, status, dump, load.

They talk to a server over HTTP (``--url`` or ``NAVISTORE_URL``; ``--token`` or
``NAVISTORE_TOKEN``) and behave as a shell user expects: values go to stdout byte for byte (on a
terminal, a value that does not end its line is followed by a newline), ``put``
reads stdin when no value is given, and the exit status says what happened: 0 done, 1 not found,
2 usage, 3 precondition failed, 4 any other error (the server unreachable, say), and 141 (as
for SIGPIPE), quietly, when whoever reads the output stops reading (``navistore ls | head``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO

from navistore import errors
from navistore.backup import SOURCES, counted_in, dump, load
from navistore.client import DEFAULT_URL, Change, Client, ClientError, Listed, Unauthorized

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_PRECONDITION, EXIT_ERROR = 0, 1, 2, 3, 4
EXIT_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a command killed by SIGPIPE


def _etag(text: str) -> str:
    """An etag as ``--if-match`` takes it: quoted, as the server gives it, or bare, as a shell
    leaves ``--if-match "01a2...-node"`` (the quotes are the shell's); ``*``: any version."""
    if text == "*" or text.startswith(('"', 'W/"')):
        return text
    return f'"{text}"'


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> int:
    """A ``--ttl`` in seconds, or with a unit as Consul's TTLs take them: 90, 90s, 15m, 2h, 7d."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _SECONDS else (text, "s")
    if not number.isdigit() or not number.isascii():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds, nor one with a unit (90, 90s, 15m, 2h, 7d)"
        )
    return int(number) * _SECONDS[unit]


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, token=args.token)


def _one_line(value: bytes) -> str:
    """A value as ``get --prefix`` shows it on its key's line: as it is, when it is one line of
    printable UTF-8 that does not start with a quote; else as a JSON string (``"a\\nb"``), or
    for bytes that are not UTF-8, their count."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(value)} bytes, not UTF-8: navistore get prints them)"
    if text.isprintable() and not text.startswith('"'):
        return text
    return json.dumps(text, ensure_ascii=False)


def cmd_get(args: argparse.Namespace) -> int:
    if args.prefix:
        if args.output or args.etag:
            raise errors.InvalidRequest(
                "get --prefix prints KEY:VALUE lines; -o and --etag are for one key "
                "(navistore dump --prefix writes values byte for byte)"
            )
        with _client(args) as client:
            for entry in client.get_prefix(args.key):
                print(f"{entry.key}:{_one_line(entry.value)}")
        return EXIT_OK
    with _client(args) as client:
        try:
            entry = client.get(args.key)
        except errors.KeyNotFound as exc:
            raise _said_what_is_under(client, args.key, exc, "get --prefix", "reads") from None
    if args.output:
        with _replacing(args.output) as out:
            out.write(entry.value)
    else:
        sys.stdout.buffer.write(entry.value)
        if entry.value[-1:] not in (b"", b"\n") and sys.stdout.isatty():
            sys.stdout.buffer.write(b"\n")  # on a terminal, so that the prompt starts a line
        sys.stdout.buffer.flush()
    if args.etag:
        print(entry.etag, file=sys.stderr)
    return EXIT_OK


@contextlib.contextmanager
def _replacing(path: str) -> Iterator[IO[bytes]]:
    """A file to write that replaces ``path`` whole when the block ends, and leaves it as it was
    if the block fails: written beside it, then renamed over it, as consul-template writes the
    files it renders. A service that reads ``get -o``'s file while it is written sees the old
    value or the new one, never half; a dump cut short leaves no file that looks complete. The
    file keeps its mode (and owner, when allowed); through a symlink, the file it points to is
    replaced. A path that is not a regular file (``/dev/stdout``, a FIFO) is written in place."""
    target = os.path.realpath(path)
    try:
        existing: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        with open(target, "wb") as out:
            yield out
        return
    fd, temporary = tempfile.mkstemp(
        dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        if existing is None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)  # as open() would have made it
        else:
            os.chmod(temporary, stat.S_IMODE(existing.st_mode))
            with contextlib.suppress(PermissionError):
                os.chown(temporary, existing.st_uid, existing.st_gid)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def cmd_put(args: argparse.Namespace) -> int:
    if args.value is not None and args.file:
        raise errors.InvalidRequest("give the value as an argument or with --file, not both")
    if args.value is not None:
        value = os.fsencode(args.value)
    elif args.file:
        with open(args.file, "rb") as handle:
            value = handle.read()
    else:
        if sys.stdin.isatty():  # else the command seems to hang
            print("navistore: reading the value from the terminal; Ctrl-D ends it", file=sys.stderr)
        value = sys.stdin.buffer.read()
    with _client(args) as client:
        written = client.put(
            args.key,
            value,
            content_type=args.content_type,
            ttl=args.ttl,
            if_match=args.if_match,
            if_none_match="*" if args.create else None,
        )
    print(written.etag)
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.prefix:
            print(client.delete_prefix(args.key))
        else:
            try:
                client.delete(args.key, if_match=args.if_match)
            except errors.KeyNotFound as exc:
                raise _said_what_is_under(
                    client, args.key, exc, "delete --prefix", "deletes"
                ) from None
    return EXIT_OK


class _Op(argparse.Action):
    """Append ``(option, values)`` to ``ops``: the batch's operations, in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        ops = getattr(namespace, "ops", None) or []
        ops.append((self.dest, values))
        namespace.ops = ops


def cmd_batch(args: argparse.Namespace) -> int:
    if not getattr(args, "ops", None):
        raise errors.InvalidRequest(
            "a batch needs operations: --put KEY VALUE, --put-file KEY PATH, --delete KEY, "
            "--check KEY ETAG, --absent KEY"
        )
    ops: list[dict] = []
    for kind, given in args.ops:
        key = given[0]
        if kind in ("put", "put_file"):
            if kind == "put":
                value = os.fsencode(given[1])
            else:
                with open(given[1], "rb") as handle:
                    value = handle.read()
            op = {"op": "put", "key": key, "value": value}
            if args.content_type is not None:
                op["content_type"] = args.content_type
            if args.ttl is not None:
                op["ttl"] = args.ttl
            ops.append(op)
        elif kind == "delete":
            ops.append({"op": "delete", "key": key})
        elif kind == "check":
            ops.append({"op": "check", "key": key, "if_match": _etag(given[1])})
        else:  # absent
            ops.append({"op": "check", "key": key, "if_none_match": "*"})
    with _client(args) as client:
        results = client.batch(ops)
    for op, written in zip(ops, results, strict=True):
        print(f"{written.etag or '-'} {op['op']} {written.key}")
    return EXIT_OK


def _said_what_is_under(
    client: Client, key: str, exc: errors.KeyNotFound, command: str, does: str
) -> errors.KeyNotFound:
    """``exc``, for a key that does not exist; when keys live under it (``app/`` for
    ``app/db/host``), also how to reach them, as the user may have meant the prefix."""
    if next(client.list(key, page_size=1), None) is None:
        return exc
    return errors.KeyNotFound(
        f"{exc.description}, but keys live under it: navistore {command} {shlex.quote(key)} "
        f"{does} them"
    )


def _utc(seconds: float) -> str:
    """A time as ISO 8601 in UTC, to the second: 2026-11-27T19:04:05Z."""
    moment = datetime.datetime.fromtimestamp(round(seconds), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _listed(entry: Listed) -> dict:
    """A listing entry as ``ls --json`` prints it: the REST API's fields."""
    return {
        "key": entry.key,
        "etag": entry.etag,
        "size": entry.size,
        "content_type": entry.content_type,
        "expires_at": entry.expires_at,
    }


def cmd_ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for entry in client.list(args.prefix, separator=args.separator):
            if args.json:
                line = {"prefix": entry.key} if entry.is_prefix else _listed(entry)
                print(json.dumps(line, ensure_ascii=False))
            elif args.long and not entry.is_prefix:
                expires = "-" if entry.expires_at is None else _utc(entry.expires_at)
                columns = f"{entry.size:>10} {entry.content_type:<28} {expires:>20} {entry.etag}"
                print(f"{columns} {entry.key}")
            elif args.long:
                print(f"{'PREFIX':>10} {'':<28} {'':>20} {'':<20} {entry.key}")
            else:
                print(entry.key)
    return EXIT_OK


def _retrying(error: errors.NavistoreError, delay: float) -> None:
    print(
        f"navistore: watch: {error.title.lower()}: {error.description}; "
        f"trying again in {delay:g} s (Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )


def _reconnected(url: str) -> Callable[[int], None]:
    def say(seq: int) -> None:
        print(f"navistore: watch: {url} answers again; going on after seq {seq}", file=sys.stderr)

    return say


def _change_line(change: Change, values: bool) -> str:
    """A change as ``navistore watch`` prints it: a JSON line."""
    line = {"seq": change.seq, "key": change.key, "etag": change.etag, "deleted": change.deleted}
    if values:
        value = change.value
        line["value"] = None if value is None else base64.b64encode(value).decode()
        line["content_type"] = change.content_type
    return json.dumps(line, ensure_ascii=False)


def cmd_watch(args: argparse.Namespace) -> int:
    """Print each change as a JSON line; or, given a command after ``--``, run it for each answer
    that brings changes (as ``etcdctl watch KEY -- COMMAND`` and Consul's watch handlers do)."""
    if args.key is not None and args.prefix:
        raise errors.InvalidRequest("watch a PREFIX or one --key, not both")
    if args.run and shutil.which(args.run[0]) is None:
        raise errors.InvalidRequest(f"watch: no command {args.run[0]!r} to run")
    if args.at_start and not args.run:
        raise errors.InvalidRequest("watch: --at-start runs the command after --; give one")
    seen = 0
    with _client(args) as client:
        try:
            since = args.since
            if args.at_start:  # from the index it ran at: nothing after it is missed
                since = client.status()["last_seq"] if since is None else since
                _run_on(args, [], since)
            answers = client.watch_batches(
                args.prefix,
                key=args.key,
                since=since,
                wait=args.wait,
                values=args.values,
                on_retry=_retrying,
                on_reconnect=_reconnected(args.url),
            )
            for changes in answers:
                if args.count:
                    changes = changes[: args.count - seen]
                if args.run:
                    _run_on(args, changes, changes[-1].seq)
                else:
                    for change in changes:
                        print(_change_line(change, args.values), flush=True)
                seen += len(changes)
                if args.count and seen >= args.count:
                    break
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def _run_on(args: argparse.Namespace, changes: list[Change], seq: int) -> None:
    """Run the watch's command once for ``changes`` (what one answer brought: a burst of writes
    is one run, and what commits while it runs comes in the next; none for ``--at-start``), with
    their JSON lines on its stdin, and ``seq`` (the last change's) in its environment. It finds
    the server in ``NAVISTORE_URL`` (and the token), so ``navistore get`` in it reads from the
    server watched. A command that fails is said on stderr; the watch goes on."""
    env = {
        **os.environ,
        "NAVISTORE_URL": args.url,
        "NAVISTORE_WATCH_SEQ": str(seq),
        "NAVISTORE_WATCH_COUNT": str(len(changes)),
    }
    if args.token:
        env["NAVISTORE_TOKEN"] = args.token
    lines = "".join(_change_line(change, args.values) + "\n" for change in changes)
    done = subprocess.run(args.run, input=lines.encode(), env=env, check=False)
    if done.returncode:
        how = (
            f"was killed by signal {-done.returncode}"
            if done.returncode < 0
            else f"exited with status {done.returncode}"
        )
        print(
            f"navistore: watch: {shlex.join(args.run)} {how} (changes up to seq {seq}); "
            "watching on",
            file=sys.stderr,
            flush=True,
        )


def _ago(moment: float | None) -> str:
    return "never" if moment is None else f"{max(0.0, time.time() - moment):.1f} s ago"


def _bytes(size: int) -> str:
    """A size as people read it: 512 B, 4.0 KiB, 208.3 MiB."""
    if size < 1024:
        return f"{size} B"
    amount = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        amount /= 1024
        if amount < 1024 or unit == "GiB":
            break
    return f"{amount:.1f} {unit}"


def cmd_status(args: argparse.Namespace) -> int:
    """The node and its peers at a glance (etcdctl endpoint status, consul members); exit 0
    when the server answers and its store does, 4 otherwise: usable as a health check."""
    with _client(args) as client:
        status = client.status()
        healthy = client.health()
        replication = client.replication_status()
    print(f"{args.url}: {'healthy' if healthy else 'UNHEALTHY: the store does not answer'}")
    print(f"node        {status['node_id']} (navistore {status['version']})")
    size = status.get("disk_bytes")  # None: the backend cannot say; absent: an older server
    on_disk = "" if size is None else f", {_bytes(size)} on disk"
    print(f"store       {status['backend']}, id {status['store_id']}{on_disk}")
    print(f"last seq    {status['last_seq']}")
    print(f"replicator  {status['replicator'] or 'none'}")
    for peer in (replication or {}).get("peers", []):
        lag = peer["lag_seconds"]
        count = peer["lag_records"]
        behind = f"{count} change{'' if count == 1 else 's'} behind"
        if count and lag is not None:
            behind += f" (the oldest {lag:.1f} s old)"
        line = (
            f"peer        {peer['url']} (node {peer['node_id'] or 'not yet known'}): {behind}; "
            f"last success {_ago(peer['last_success'])}"
        )
        if peer["last_error"]:
            line += f"; last error: {peer['last_error']}"
        print(line)
    return EXIT_OK if healthy else EXIT_ERROR


def cmd_dump(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.output in (None, "-"):
            dump(client, sys.stdout.buffer, args.prefix)
        else:
            with _replacing(args.output) as out:
                dump(client, out, args.prefix)
    return EXIT_OK


def cmd_load(args: argparse.Namespace) -> int:
    with _client(args) as client:
        written, resumed = load(client, args.file, restart=args.restart, source=args.source)
    if resumed:
        print(f"resumed after {counted_in(args.source)} {resumed}", file=sys.stderr)
    return EXIT_OK


def run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a client command; turn errors into a message and an exit status."""
    try:
        return func(args)
    except errors.KeyNotFound as exc:
        print(f"navistore: not found: {exc.description}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except errors.PreconditionFailed as exc:
        print(f"navistore: precondition failed: {exc.description}", file=sys.stderr)
        return EXIT_PRECONDITION
    except BrokenPipeError:
        # The reader went away (`navistore ls | head`): stop quietly, as a command killed by
        # SIGPIPE does, and keep Python from complaining as it flushes stdout on the way out.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE
    except (errors.InvalidRequest, OSError) as exc:
        print(f"navistore: {getattr(exc, 'description', None) or exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, errors.InvalidRequest) else EXIT_ERROR
    except Unauthorized:
        if args.token:
            said = "the server refused the token given (--token or $NAVISTORE_TOKEN)"
        else:
            said = f"{args.url} needs a token: give it with --token or $NAVISTORE_TOKEN"
        print(f"navistore: unauthorized: {said}", file=sys.stderr)
        return EXIT_ERROR
    except (ClientError, errors.NavistoreError) as exc:
        print(f"navistore: {exc.title.lower()}: {exc.description}", file=sys.stderr)
        return EXIT_ERROR


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the client commands to the ``navistore`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("NAVISTORE_URL") or DEFAULT_URL,
        help="the server (default: $NAVISTORE_URL or http://127.0.0.1:8888)",
    )
    common.add_argument(
        "--token", default=os.environ.get("NAVISTORE_TOKEN"), help="bearer token ($NAVISTORE_TOKEN)"
    )

    get = commands.add_parser(
        "get", parents=[common], help="print a value, byte for byte (or a prefix's, a line each)"
    )
    get.add_argument("key")
    get.add_argument(
        "--prefix", action="store_true", help="every key under KEY with its value: KEY:VALUE lines"
    )
    get.add_argument("-o", "--output", help="write the value to this file instead of stdout")
    get.add_argument("--etag", action="store_true", help="also print the etag, on stderr")
    get.set_defaults(func=cmd_get)

    put = commands.add_parser(
        "put", parents=[common], help="write a value (argument, --file or stdin)"
    )
    put.add_argument("key")
    put.add_argument("value", nargs="?", help="the value (default: read stdin)")
    put.add_argument("-f", "--file", help="read the value from this file")
    put.add_argument("-t", "--content-type", help="the value's content type")
    put.add_argument(
        "--ttl", type=_seconds, help="time to live: seconds, or with a unit (90s, 15m, 2h, 7d)"
    )
    put.add_argument(
        "--if-match", metavar="ETAG", type=_etag, help="only over this version (compare-and-set)"
    )
    put.add_argument("--create", action="store_true", help="only if the key does not exist")
    put.set_defaults(func=cmd_put)

    delete = commands.add_parser("delete", parents=[common], help="delete a key (or a prefix)")
    delete.add_argument("key")
    delete.add_argument("--if-match", metavar="ETAG", type=_etag, help="only this version")
    delete.add_argument("--prefix", action="store_true", help="delete every key under KEY")
    delete.set_defaults(func=cmd_delete)

    batch = commands.add_parser(
        "batch",
        parents=[common],
        help="write, delete and check several keys, all or nothing",
        description="Write, delete and check several keys in one all-or-nothing batch, the "
        "operations in the order given (as etcdctl txn). A check writes nothing: the batch "
        "fails (exit 3) unless the key holds that version (--check) or is absent (--absent). "
        "Prints a line per operation: the etag the key holds after it ('-': none), the "
        "operation and the key.",
    )
    batch.add_argument(
        "--put", nargs=2, action=_Op, metavar=("KEY", "VALUE"), help="write VALUE under KEY"
    )
    batch.add_argument(
        "--put-file", nargs=2, action=_Op, metavar=("KEY", "PATH"), help="write a file's bytes"
    )
    batch.add_argument("--delete", nargs=1, action=_Op, metavar="KEY", help="delete KEY")
    batch.add_argument(
        "--check",
        nargs=2,
        action=_Op,
        metavar=("KEY", "ETAG"),
        help="only if KEY is at this version (ETAG as put prints it; *: any)",
    )
    batch.add_argument("--absent", nargs=1, action=_Op, metavar="KEY", help="only if KEY is absent")
    batch.add_argument("-t", "--content-type", help="the content type of every value written")
    batch.add_argument(
        "--ttl", type=_seconds, help="every value written expires: seconds, or 90s, 15m, 2h, 7d"
    )
    batch.set_defaults(func=cmd_batch)

    ls = commands.add_parser("ls", parents=[common], help="list keys in key order")
    ls.add_argument("prefix", nargs="?", default="")
    ls.add_argument("-s", "--separator", help="one level: fold keys below the next separator")
    shown = ls.add_mutually_exclusive_group()
    shown.add_argument(
        "-l", "--long", action="store_true", help="size, content type, expiry (UTC), etag"
    )
    shown.add_argument(
        "--json",
        action="store_true",
        help="a JSON line per key (key, etag, size, content_type, expires_at; prefix when folded)",
    )
    ls.set_defaults(func=cmd_ls)

    watch = commands.add_parser(
        "watch",
        parents=[common],
        help="print changes as they commit (or run a command on them)",
        usage="navistore watch [options] [PREFIX] [-- COMMAND [ARG ...]]",
        epilog="With -- COMMAND, runs COMMAND once for each batch of changes that arrive "
        "together instead of printing them: their JSON lines on its stdin; NAVISTORE_URL, "
        "NAVISTORE_WATCH_SEQ (the last change's seq) and NAVISTORE_WATCH_COUNT in its "
        "environment. Changes that commit while it runs come in the next run. A command that "
        "fails is reported on stderr, and the watch goes on.",
    )
    watch.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="only keys under it")
    watch.add_argument("--key", help="watch one exact key")
    watch.add_argument("--since", type=int, help="start after this seq (default: now)")
    watch.add_argument("--wait", type=int, default=60, help="seconds per long poll (default 60)")
    watch.add_argument("-n", "--count", type=int, help="stop after this many changes")
    watch.add_argument(
        "--values", action="store_true", help="with each change, the value (base64) it wrote"
    )
    watch.add_argument(
        "--at-start",
        action="store_true",
        help="run the command once at start too, before any change (as Consul's watch does)",
    )
    watch.set_defaults(func=cmd_watch, run=[])

    status = commands.add_parser(
        "status",
        parents=[common],
        help="the node, its store and its peers' lag (exit 4: unhealthy)",
    )
    status.set_defaults(func=cmd_status)

    dump_ = commands.add_parser("dump", parents=[common], help="back up keys as JSON Lines")
    dump_.add_argument("-o", "--output", help="file to write (default: stdout)")
    dump_.add_argument("--prefix", default="", help="only keys under this prefix")
    dump_.set_defaults(func=cmd_dump)

    load_ = commands.add_parser("load", parents=[common], help="restore a dump (resumable)")
    load_.add_argument("file")
    load_.add_argument("--restart", action="store_true", help="ignore FILE.progress; start over")
    load_.add_argument(
        "--from",
        dest="source",
        choices=SOURCES,
        default="navistore",
        help="what FILE is: a navistore dump (the default), `consul kv export`'s output, or "
        "`etcdctl get --prefix '' -w json`'s",
    )
    load_.set_defaults(func=cmd_load)

    for parser in (get, put, delete, batch, ls, watch, status, dump_, load_):
        parser.set_defaults(client_command=True)

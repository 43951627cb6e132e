"""Settings: one table, each with a flag, an environment variable and a config-file key.

Precedence: flag > ``NAVISTORE_<NAME>`` environment variable > ``--config FILE.toml`` > default.
Every value is converted and checked at start-up; a bad one raises ``SettingsError`` naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from navistore.errors import SettingsError
from navistore.record import NODE_ID_PATTERN
from navistore.store import url_scheme

MIB = 1024 * 1024
MAX_CPUS = 4096  # as Linux builds it at most (CONFIG_NR_CPUS)


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _int_between(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("must be a whole number")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a whole number from {low} to {high}") from None
        if not low <= number <= high:
            raise ValueError(f"must be from {low} to {high}")
        return number

    return convert


def _store_url(value: str) -> str:
    url_scheme(value)  # raises with a readable message
    return value


def _node_id(value: str) -> str:
    if not NODE_ID_PATTERN.match(value):
        raise ValueError(
            "must match [a-z0-9][a-z0-9_.-]{0,31}: lowercase letters, digits, '_', '.', '-'"
        )
    return value


def _token(value: str) -> str:
    if not value or any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise ValueError("must be printable ASCII without spaces")
    return value


def _peer_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)}")
        return value

    return convert


def _cpu_list(value: Any) -> tuple[int, ...]:
    """CPU numbers as ``taskset -c`` takes them (``1``, ``0,2``, ``0-3``; a TOML list of numbers
    too), sorted and without repeats."""
    if isinstance(value, bool):
        raise ValueError("must be CPU numbers, as in 1, 0,2 or 0-3")
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = (piece.strip() for piece in part.partition("-"))
        if not (low.isascii() and low.isdigit()) or (
            dash and not (high.isascii() and high.isdigit())
        ):
            raise ValueError(f"{part!r} is not a CPU number or range (as in 1, 0,2 or 0-3)")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"{part!r} is an empty range")
        if last >= MAX_CPUS:
            raise ValueError(f"CPU {last} is past the largest CPU number ({MAX_CPUS - 1})")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError("names no CPU (as in 1, 0,2 or 0-3)")
    return tuple(sorted(cpus))


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    convert: Callable[[Any], Any]
    default: Any
    help: str
    repeatable: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return "NAVISTORE_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("store", _store_url, "sqlite:///navistore.db", "store URL (sqlite:///navistore.db)"),
    Setting("host", _text, "127.0.0.1", "address to listen on"),
    Setting("port", _int_between(0, 65535), 8888, "port to listen on (0 picks a free one)"),
    Setting(
        "threads",
        _int_between(1, 256),
        8,
        "ordinary requests taken on at once (2 run; the others wait for their commits)",
    ),
    Setting(
        "cpus",
        _cpu_list,
        None,
        "run on these CPUs only (Linux; as in 1 or 0-3); one CPU per process serves most",
    ),
    Setting(
        "node_id", _node_id, None, "this node's id (default: generated once, kept in the store)"
    ),
    Setting("token", _token, None, "require 'Authorization: Bearer TOKEN' on every /v1 request"),
    Setting("token_file", _text, None, "read the token from this file"),
    Setting(
        "read_token",
        _token,
        None,
        "a second token, that may only read: GET and HEAD on /v1 (needs --token)",
    ),
    Setting("read_token_file", _text, None, "read the read-only token from this file"),
    Setting("peer", _peer_url, (), "a peer to replicate to (repeatable)", repeatable=True),
    Setting("peer_token", _token, None, "the token peers use on the replication endpoints"),
    Setting(
        "replicator", _text, None, "replication strategy (default: peer-push when peers are set)"
    ),
    Setting("max_value_size", _int_between(1, 64 * MIB), MIB, "largest value in bytes"),
    Setting(
        "max_watchers",
        _int_between(0, 1_000_000),
        8_000,
        "most watches waiting at once (each holds a connection while it waits, not a thread)",
    ),
    Setting(
        "max_connections",
        _int_between(1, 1_000_000),
        10_000,
        "most client connections open at once, idle keep-alive ones included",
    ),
    Setting("log_format", _choice("text", "json"), "text", "access and server log format"),
    Setting("access_log", _boolean, False, "log a line per request on stderr (true or false)"),
    Setting(
        "purge_interval",
        _int_between(1, 86400),
        60,
        "seconds between purges of tombstones (and of expiries not purged as they fell due)",
    ),
    Setting(
        "tombstone_grace",
        _int_between(0, 10 * 365 * 86400),
        7 * 86400,
        "seconds a tombstone is kept (and longer, until every peer has it)",
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True)
class Settings:
    store: str = "sqlite:///navistore.db"
    host: str = "127.0.0.1"
    port: int = 8888
    threads: int = 8
    cpus: tuple[int, ...] | None = None
    node_id: str | None = None
    token: str | None = None
    token_file: str | None = None
    read_token: str | None = None
    read_token_file: str | None = None
    peer: tuple[str, ...] = ()
    peer_token: str | None = None
    replicator: str | None = None
    max_value_size: int = MIB
    max_watchers: int = 8_000  # below max_connections: the rest get 429, not a wait to connect
    max_connections: int = 10_000
    log_format: str = "text"
    access_log: bool = False
    purge_interval: int = 60
    tombstone_grace: int = 7 * 86400

    def __post_init__(self) -> None:
        if self.read_token is not None and self.token is None:
            raise SettingsError(
                "setting 'read_token' needs 'token' too: without it, anyone may write"
            )
        if self.read_token is not None and self.read_token == self.token:
            raise SettingsError("setting 'read_token' must differ from 'token'")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _convert(setting: Setting, raw: Any, source: str) -> Any:
    try:
        if setting.repeatable:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(setting.convert(str(i).strip()) for i in items if str(i).strip())
        return setting.convert(raw if not isinstance(raw, str) else raw.strip())
    except (ValueError, TypeError, SettingsError) as exc:
        why = exc.description if isinstance(exc, SettingsError) else str(exc)
        raise SettingsError(f"setting {setting.name!r} ({source}): {why}") from None


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise SettingsError(f"setting 'config': cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"setting 'config': {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(BY_NAME))
    if unknown:
        raise SettingsError(
            f"setting 'config': {path} has unknown keys {', '.join(unknown)}; "
            f"known: {', '.join(BY_NAME)}"
        )
    return data


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config: str | None = None,
) -> Settings:
    """Resolve every setting from flags, environment, config file and defaults, in that order."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != []}
    environ = os.environ if environ is None else environ
    config = config or environ.get("NAVISTORE_CONFIG")
    file_values = _read_config(config) if config else {}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in flags:
            values[setting.name] = _convert(setting, flags[setting.name], setting.flag)
        elif environ.get(setting.variable, "").strip():
            values[setting.name] = _convert(setting, environ[setting.variable], setting.variable)
        elif setting.name in file_values:
            values[setting.name] = _convert(setting, file_values[setting.name], f"in {config}")
    for name in ("token", "read_token"):
        if name in values:  # the token itself was given, and wins: its file is not read,
            values.pop(f"{name}_file", None)  # then or on SIGHUP
    values.update(_from_files(values.get("token_file"), values.get("read_token_file")))
    return Settings(**values)


def read_token_files(settings: Settings) -> Settings:
    """``settings`` with ``token`` and ``read_token`` read from their files (those given by
    file; one given by flag or environment stays): at start, and again when ``navistore serve``
    gets a SIGHUP, to rotate a token without a restart. ``SettingsError`` when a file cannot be
    read or the pair does not hold (the read token the same as the token, say)."""
    return settings.replace(**_from_files(settings.token_file, settings.read_token_file))


def _from_files(token_file: str | None, read_token_file: str | None) -> dict[str, str]:
    """The tokens the files given hold, by setting name."""
    return {
        name: _convert(BY_NAME[name], _read_token(path, f"{name}_file"), f"{name}_file")
        for name, path in (("token", token_file), ("read_token", read_token_file))
        if path
    }


def _read_token(path: str, setting: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError as exc:
        raise SettingsError(f"setting '{setting}': cannot read {path}: {exc.strerror}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a flag for every setting (each defaults to None: 'not given')."""
    parser.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file")
    for setting in SETTINGS:
        metavar = setting.name.upper()
        if setting.repeatable:
            parser.add_argument(setting.flag, action="append", metavar=metavar, help=setting.help)
        else:
            parser.add_argument(setting.flag, metavar=metavar, help=setting.help)

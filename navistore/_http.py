"""Strict decoding of what arrives over HTTP: keys from the raw URI, query values, etag headers.

Falcon's route parameters and query parsing are lenient (invalid UTF-8 becomes U+FFFD, a
malformed escape passes through), and waitress hands ``%zz`` on literally: a key store must
refuse such input, not store something other than what the client meant.
"""

from __future__ import annotations

import re
from typing import overload
from urllib.parse import urlsplit

from navistore.errors import InvalidKey, InvalidRequest

_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_HEX = re.compile(rb"%([0-9A-Fa-f]{2})")
_ETAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|\Z)')


def percent_decode(raw: bytes, what: str, plus_is_space: bool = False) -> str:
    """Decode ``%XX`` escapes strictly, then UTF-8 strictly; InvalidRequest naming ``what``."""
    if b"%" not in raw and (not plus_is_space or b"+" not in raw):
        try:
            return raw.decode("utf-8")  # nothing escaped: the common case, kept cheap
        except UnicodeDecodeError:
            pass  # reported below, with the same words as an escaped invalid byte
    error = InvalidKey if what == "key" else InvalidRequest
    if plus_is_space:
        raw = raw.replace(b"+", b" ")
    if _ESCAPE.search(raw):
        raise error(
            f"the {what} holds a malformed percent-escape (a '%' not followed by 2 hex digits)"
        )
    decoded = _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"the {what} is not valid UTF-8 (byte {exc.start} of the decoded {what})"
        ) from None


def raw_path(env: dict) -> bytes:
    """The request path exactly as the client sent it, still percent-encoded."""
    uri = env.get("REQUEST_URI") or env.get("RAW_URI")
    if uri:
        path = uri.split("?", 1)[0]
        if not path.startswith("/"):  # absolute-form: http://host/path
            path = urlsplit(path).path
        return path.encode("latin-1", "replace")
    # No raw URI: PATH_INFO is already unescaped, as latin-1 characters standing for bytes.
    path = env.get("SCRIPT_NAME", "") + env.get("PATH_INFO", "")
    return path.encode("latin-1", "replace").replace(b"%", b"%25")


def key_from_path(env: dict, route_prefix: str) -> str:
    """The key of ``/v1/keys/{key}``, decoded from the raw URI."""
    uri = env.get("REQUEST_URI")
    if uri and uri.startswith(route_prefix) and uri.isascii() and "%" not in uri and "?" not in uri:
        return uri[len(route_prefix) :]  # nothing to decode: the common case, kept cheap
    path = raw_path(env)
    prefix = route_prefix.encode()
    start = path.find(prefix)
    if start < 0:
        raise InvalidKey(f"the path does not start with {route_prefix}")
    return percent_decode(path[start + len(prefix) :], "key")


def query(env: dict, known: tuple[str, ...], hint: str = "") -> dict[str, str]:
    """The query string's parameters, decoded strictly. Each takes one value, so a name given
    twice (``?ttl=5&ttl=60``) is refused: which one the client meant is anybody's guess. A name
    not ``known`` is refused too: a typo (``?tll=60``) would otherwise pass unnoticed, and the key
    live for ever. ``hint`` ends that error's description."""
    raw = env.get("QUERY_STRING", "")
    params: dict[str, str] = {}
    if not raw:
        return params
    for part in raw.encode("latin-1", "replace").split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        name_text = percent_decode(name, "query parameter name", plus_is_space=True)
        if name_text in params:
            raise InvalidRequest(f"the query parameter {name_text!r} is given twice; give it once")
        params[name_text] = percent_decode(
            value, f"query parameter {name_text!r}", plus_is_space=True
        )
        if name_text not in known:
            takes = f"takes {', '.join(known)}" if known else "takes no query parameters"
            raise InvalidRequest(
                f"unknown query parameter {name_text!r}: {env.get('REQUEST_METHOD')} on this "
                f"route {takes}{hint}"
            )
    return params


def parse_etags(header: str | None, name: str) -> list[tuple[bool, str]] | str | None:
    """Parse If-Match / If-None-Match: None when absent, ``"*"``, or [(weak, opaque), ...]."""
    if header is None:
        return None
    text = header.strip()
    if text == "*":
        return "*"
    tags: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(text):
        match = _ETAG.match(text, pos)
        if not match:
            raise InvalidRequest(
                f"the {name} header is neither * nor a list of quoted entity-tags "
                '(for example "0001895c3f1a0000-node1")'
            )
        tags.append((bool(match.group(1)), match.group(2)))
        pos = match.end()
    if not tags:
        raise InvalidRequest(f"the {name} header is empty; send * or quoted entity-tags")
    return tags


@overload
def integer(params: dict[str, str], name: str, default: int, low: int, high: int) -> int: ...


@overload
def integer(
    params: dict[str, str], name: str, default: None, low: int, high: int
) -> int | None: ...


def integer(
    params: dict[str, str], name: str, default: int | None, low: int, high: int
) -> int | None:
    """An integer query parameter from ``low`` to ``high``; InvalidRequest naming the range."""
    text = params.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}; got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be from {low} to {high}; got {value}")
    return value


def boolean(params: dict[str, str], name: str) -> bool:
    text = params.get(name, "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise InvalidRequest(f"{name} must be true or false; got {text!r}")
    return text in ("true", "1")

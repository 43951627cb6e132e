"""``/v1/keys/{key}`` (one key) and ``/v1/keys`` (listing, delete by prefix)."""

from __future__ import annotations

import base64

import falcon

from navistore import _http, slots
from navistore.errors import InvalidRequest, PreconditionFailed
from navistore.limits import DEFAULT_LIMIT, MAX_LIMIT, MAX_TTL
from navistore.node import Node, printable_ascii
from navistore.record import ABSENT, ANY, DEFAULT_CONTENT_TYPE, PRESENT, Expect, Record
from navistore.store import dump_json, listing_entry

KEYS_ROUTE = "/v1/keys"
KEY_ROUTE = f"{KEYS_ROUTE}/"
# For whoever brings etcd v2's ?recursive or ?wait, or Consul's ?recurse or ?index, to one key.
_ONE_KEY_HINT = (
    " (a subtree: GET /v1/keys?prefix=P&values=true; to wait for a change: "
    "GET /v1/changes?key=K&wait=S)"
)


def write_condition(req: falcon.Request, node: Node, key: str, default: Expect) -> Expect | str:
    """Turn If-Match / If-None-Match into what the store must find before writing."""
    if "HTTP_IF_MATCH" not in req.env and "HTTP_IF_NONE_MATCH" not in req.env:
        return default  # the common case, kept cheap
    if_match = _http.parse_etags(req.get_header("If-Match"), "If-Match")
    if_none_match = _http.parse_etags(req.get_header("If-None-Match"), "If-None-Match")
    if if_match is not None and if_none_match is not None:
        raise InvalidRequest("send If-Match or If-None-Match, not both")
    if isinstance(if_match, str):  # "*"
        return PRESENT
    if if_match:
        # If-Match compares strongly: a weak entity-tag never matches.
        stamps = [opaque for weak, opaque in if_match if not weak]
        if not stamps:
            raise PreconditionFailed("a weak entity-tag never satisfies If-Match")
        return stamps[0] if len(stamps) == 1 else node.resolve_if_match(key, stamps)
    if isinstance(if_none_match, str):  # "*"
        return ABSENT
    if if_none_match:
        raise InvalidRequest("on a write, If-None-Match takes only *")
    return default


def _with_value(record: Record) -> dict:
    """A listing entry with the value, base64 as in a batch (``GET /v1/keys?values=true``)."""
    entry = listing_entry(record)
    entry["value"] = base64.b64encode(record.value or b"").decode("ascii")
    return entry


class KeyResource:
    """One key: GET, HEAD, PUT, DELETE."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _key(self, req: falcon.Request) -> str:
        return _http.key_from_path(req.env, KEY_ROUTE)

    def on_get(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        if req.env.get("QUERY_STRING"):
            _http.query(req.env, (), _ONE_KEY_HINT)
        record = self.node.get(self._key(req))
        resp.etag = record.etag
        if_none_match = _http.parse_etags(req.env.get("HTTP_IF_NONE_MATCH"), "If-None-Match")
        if isinstance(if_none_match, str) or (  # "*"
            if_none_match and any(opaque == record.stamp for _, opaque in if_none_match)
        ):
            resp.status = falcon.HTTP_304
            return
        content_type = record.content_type
        if not printable_ascii(content_type):
            # Stored before content types were held to printable ASCII: no header carries it.
            content_type = DEFAULT_CONTENT_TYPE
        resp.content_type = content_type
        if record.expires_at is not None:  # as the listing's expires_at: seconds since the epoch
            resp.set_header("X-Navistore-Expires-At", repr(record.expires_at))
        resp.data = record.value

    def on_head(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        self.on_get(req, resp, key)
        if resp.status != falcon.HTTP_304:
            resp.content_length = len(resp.data or b"")
            resp.data = None

    def on_put(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        key = self._key(req)
        params = _http.query(req.env, ("ttl",))
        ttl = _http.integer(params, "ttl", None, 1, MAX_TTL)
        expect = write_condition(req, self.node, key, ANY)
        length = req.content_length
        if length is not None:
            self.node.check_size(length)  # before a byte of the body is read
        value = req.bounded_stream.read(self.node.settings.max_value_size + 1)
        record, previous = self.node.put(key, value, req.content_type, ttl, expect)
        etag = record.etag
        resp.status = falcon.HTTP_200 if previous is not None else falcon.HTTP_201
        resp.etag = etag
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dump_json({"key": key, "etag": etag}).encode()

    def on_delete(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        key = self._key(req)
        if req.env.get("QUERY_STRING"):
            _http.query(req.env, (), _ONE_KEY_HINT)
        if req.get_header("If-None-Match") is not None:
            raise InvalidRequest("DELETE takes If-Match, not If-None-Match")
        self.node.delete(key, write_condition(req, self.node, key, PRESENT))
        resp.media = {"key": key, "deleted": True}


class KeysResource:
    """The key space: a listing page (GET), or a delete by prefix (DELETE)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = _http.query(req.env, ("prefix", "after", "limit", "separator", "values"))
        limit = _http.integer(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        separator = params.get("separator", "")
        prefix, after = params.get("prefix", ""), params.get("after", "")
        values = _http.boolean(params, "values")
        if values and separator:
            raise InvalidRequest("values=true reads every key under the prefix: drop separator")
        # Read before the page: a watch from this index sees every change the page may miss.
        resp.set_header("X-Navistore-Index", str(self.node.last_seq()))
        if values:
            # Up to 4 MiB of values, read and encoded in about 20 ms: the page steps aside for it,
            # as a request waiting for a commit does (see navistore.slots), so that pages of
            # values cannot hold every run slot while small requests queue behind them.
            with slots.waiting():
                records, next_after = self.node.read_page(prefix, after, limit)
                body = {"keys": [_with_value(r) for r in records], "next": next_after}
                resp.data = dump_json(body).encode()
            resp.content_type = falcon.MEDIA_JSON
            return
        if separator:
            records, prefixes, next_after = self.node.list(prefix, after, limit, separator)
            resp.media = {
                "keys": [listing_entry(r) for r in records],
                "next": next_after,
                "prefixes": prefixes,
            }
            return
        # The entries arrive as JSON text (see Store.scan_listing): spliced in, not re-encoded.
        entries, next_after = self.node.list_json(prefix, after, limit)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = f'{{"keys":{entries},"next":{dump_json(next_after)}}}'.encode()

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = _http.query(req.env, ("prefix", "all"))
        prefix = params.get("prefix", "")
        if not prefix and not _http.boolean(params, "all"):
            raise InvalidRequest("an empty prefix deletes every key: add all=true to mean it")
        resp.media = {"deleted": self.node.delete_prefix(prefix)}

"""``/v1/changes``: the change feed of this node, and watches (``wait=SECONDS``)."""

from __future__ import annotations

import base64

import falcon

from navistore import _http
from navistore.errors import InvalidRequest
from navistore.node import DEFAULT_LIMIT, MAX_LIMIT, Node, within_bytes
from navistore.record import Record

MAX_WAIT = 600


class ChangesResource:
    def __init__(self, node: Node) -> None:
        self.node = node

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = _http.query(req.env)
        since = _http.integer(params, "since", 0, 0, 2**63 - 1)
        limit = _http.integer(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        if "key" in params and "prefix" in params:
            raise InvalidRequest("use key= (one key) or prefix= (a subtree), not both")
        wait = _http.integer(params, "wait", 0, 0, MAX_WAIT)
        values = _http.boolean(params, "values")
        records, last_seq = self.node.watch(
            since, limit, prefix=params.get("prefix", ""), key=params.get("key"), wait=wait
        )
        resp.set_header("X-Navistore-Index", str(last_seq))
        if values:
            # Cut before 4 MiB of values: the client goes on from the last seq it got.
            changes = [_with_value(r) for r in within_bytes(records)]
        else:
            changes = [
                {"seq": r.seq, "key": r.key, "etag": r.etag, "deleted": r.deleted} for r in records
            ]
        resp.media = {"changes": changes, "last_seq": last_seq}


def _with_value(record: Record) -> dict:
    """A change with what the key holds since (``values=true``); a deletion holds nothing."""
    live = not record.deleted
    return {
        "seq": record.seq,
        "key": record.key,
        "etag": record.etag,
        "deleted": record.deleted,
        "content_type": record.content_type if live else None,
        "expires_at": record.expires_at if live else None,
        "value": base64.b64encode(record.value or b"").decode("ascii") if live else None,
    }

"""``/v1/changes``: the change feed of this node, and watches (``wait=SECONDS``)."""

from __future__ import annotations

import base64

import falcon

from navistore import _http, slots
from navistore.errors import InvalidRequest
from navistore.limits import DEFAULT_LIMIT, MAX_LIMIT
from navistore.node import Node
from navistore.parking import PARK
from navistore.record import Record
from navistore.store import dump_json

MAX_WAIT = 600


class ChangesResource:
    def __init__(self, node: Node) -> None:
        self.node = node

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = _http.query(req.env, ("since", "prefix", "key", "limit", "wait", "values"))
        since = _http.integer(params, "since", 0, 0, 2**63 - 1)
        limit = _http.integer(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        if "key" in params and "prefix" in params:
            raise InvalidRequest("use key= (one key) or prefix= (a subtree), not both")
        wait = _http.integer(params, "wait", 0, 0, MAX_WAIT)
        values = _http.boolean(params, "values")
        prefix, key = params.get("prefix", ""), params.get("key")
        # The wait, and the look the watches share, read no values; with values=true, the page
        # found is read again with them, cut before 4 MiB (the client goes on from its last seq).
        park = req.env.get(PARK)
        if park is None:  # a server that cannot hold a watch without a thread: wait in this one
            records, last_seq = self.node.watch(
                since, limit, prefix=prefix, key=key, wait=wait, values=False
            )
        else:
            answer = self.node.watch_parked(
                park, since, limit, prefix=prefix, key=key, wait=wait, values=False
            )
            if answer is None:  # it waits, with no thread: the server asks again when woken
                return
            records, last_seq = answer
        if not values:
            changes = [
                {"seq": r.seq, "key": r.key, "etag": r.etag, "deleted": r.deleted} for r in records
            ]
            resp.media = {"changes": changes, "last_seq": last_seq}
        else:
            # Up to 4 MiB of values: stepping aside meanwhile, as a page of keys with values does.
            with slots.waiting():
                if records:
                    records = self.node.fill_values(records, since, prefix, key)
                    if not records:  # cannot happen (see fill_values); if so, stay where we are
                        last_seq = since
                body = {"changes": [_with_value(r) for r in records], "last_seq": last_seq}
                resp.data = dump_json(body).encode()
            resp.content_type = falcon.MEDIA_JSON
        resp.set_header("X-Navistore-Index", str(last_seq))


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

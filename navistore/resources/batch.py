"""``POST /v1/batch``: several writes, all or nothing on this node."""

from __future__ import annotations

import falcon

from navistore import slots
from navistore.errors import InvalidRequest
from navistore.limits import MAX_BATCH_BYTES
from navistore.node import Node
from navistore.resources import query, read_json


class BatchResource:
    def __init__(self, node: Node) -> None:
        self.node = node

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        query(req)
        # Up to 8 MiB of JSON and base64 to decode: the batch steps aside for all of it, as a
        # page of values does (see KeysResource), not only for its commit.
        with slots.waiting():
            body = read_json(req, MAX_BATCH_BYTES)
            if not isinstance(body, dict) or set(body) != {"ops"}:
                raise InvalidRequest('the body must be {"ops": [...]}')
            records = self.node.batch(body["ops"])  # a check of an absent key: None
        resp.media = {
            "results": [
                {"key": op["key"], "etag": None if record is None else record.etag}
                for op, record in zip(body["ops"], records, strict=True)
            ]
        }

"""``POST /v1/batch``: several writes, all or nothing on this node."""

from __future__ import annotations

import falcon

from navistore.errors import InvalidRequest
from navistore.limits import MAX_BATCH_BYTES
from navistore.node import Node
from navistore.resources import query, read_json


class BatchResource:
    def __init__(self, node: Node) -> None:
        self.node = node

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        query(req)
        body = read_json(req, MAX_BATCH_BYTES)
        if not isinstance(body, dict) or set(body) != {"ops"}:
            raise InvalidRequest('the body must be {"ops": [...]}')
        records = self.node.batch(body["ops"])
        resp.media = {"results": [{"key": r.key, "etag": r.etag} for r in records]}

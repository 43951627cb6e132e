"""The replication endpoints, under ``/v1/replication/``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon

from navistore import __version__, slots
from navistore.errors import InvalidRequest
from navistore.node import largest_request
from navistore.openapi import errors
from navistore.resources import query, read_json
from navistore_peer_push import wire
from navistore_peer_push.pusher import Options

if TYPE_CHECKING:
    from navistore import Node

MAX_RECORDS = 10_000


class HelloResource:
    """``GET /v1/replication/hello``: who we are, for the handshake."""

    navistore_auth = "peer"
    openapi = {
        "get": {
            "summary": "Replication handshake: this node's id and store id (peer token)",
            "responses": {
                "200": {
                    "description": "Who we are",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **errors(401, 405, 503),
            },
        }
    }

    def __init__(self, node: Node) -> None:
        self.node = node

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {
            "node_id": self.node.node_id,
            "store_id": self.node.store_id,
            "version": __version__,
        }


class RecordsResource:
    """``POST /v1/replication/records``: merge a peer's batch, all of it or none of it."""

    navistore_auth = "peer"
    openapi = {
        "post": {
            "summary": "Merge a peer's batch of records (peer token)",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": {
                    "description": "Merged (and ignored: older or equal stamps)",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "409": {
                    "description": "Store id changed, same node id, or clock skew: nothing merged",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **errors(400, 401, 405, 413, 415, 503, 507),
            },
        }
    }

    def __init__(self, node: Node, max_skew: float) -> None:
        self.node = node
        self.max_skew = max_skew

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        query(req)
        # Megabytes of JSON and base64 to decode, then a merge per record: stepping aside for all
        # of it (see navistore.slots), as POST /v1/batch does, not only for each merge.
        with slots.waiting():
            self._receive(req, resp)

    def _receive(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, largest_request(self.node.settings))
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise InvalidRequest('the body must be {"source", "target_store_id", "records": [...]}')
        source = body.get("source") or {}
        if not isinstance(source, dict):
            raise InvalidRequest("source must be an object with node_id and store_id")
        target = body.get("target_store_id")
        if not isinstance(target, str):
            raise InvalidRequest(
                "target_store_id must be the store id this node's /v1/replication/hello gave "
                "(a string): handshake first"
            )
        if target != self.node.store_id:
            raise falcon.HTTPConflict(
                title="Store changed",
                description=f"this node's store id is {self.node.store_id}, not {target!r}: "
                "handshake again",
            )
        if source.get("node_id") == self.node.node_id:
            raise falcon.HTTPConflict(
                title="Same node id",
                description=f"the sender has this node's id {self.node.node_id!r}; "
                "every node needs its own --node-id",
            )
        if len(body["records"]) > MAX_RECORDS:
            raise InvalidRequest(f"a batch holds at most {MAX_RECORDS} records")
        records = [wire.decode(item, index) for index, item in enumerate(body["records"])]
        # One bad clock must not poison the cluster: refuse the whole batch, before any merge.
        for record in records:
            ahead = self.node.clock.ahead_by(record.stamp)
            if ahead > self.max_skew:
                raise falcon.HTTPConflict(
                    title="Clock skew",
                    description=f"record {record.key!r} has stamp {record.stamp}, {ahead:.1f} s "
                    f"ahead of this node's clock; the limit (max_skew) is {self.max_skew:g} s. "
                    "Fix the sender's clock",
                )
        merged = sum(self.node.merge(record, origin="peer") is not None for record in records)
        resp.media = {
            "merged": merged,
            "ignored": len(records) - merged,
            "last_seq": self.node.last_seq(),
        }


class PeersResource:
    """``GET``/``PUT /v1/replication/peers``: the peer list; PUT replaces the runtime part."""

    openapi = {
        method: {
            "summary": summary,
            **(
                {
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                }
                if method == "put"
                else {}
            ),
            "responses": {
                "200": {
                    "description": "The peers: all, configured, set at runtime",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **errors(400, 401, 405, 413, 415, 503, *((403,) if method == "put" else ())),
            },
        }
        for method, summary in (
            ("get", "The peer list"),
            ("put", "Replace the runtime peers (kept across restarts)"),
        )
    }

    def __init__(self, node: Node) -> None:
        self.node = node

    def _answer(self, resp: falcon.Response) -> None:
        resp.media = {
            "peers": self.node.peers(),
            "configured": list(self.node.settings.peer),
            "runtime": self.node.runtime_peers(),
        }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._answer(resp)

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        query(req)
        body = read_json(req, 1024 * 1024)
        peers = body.get("peers") if isinstance(body, dict) else None
        if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
            raise InvalidRequest('the body must be {"peers": ["http://host:port", ...]}')
        self.node.set_runtime_peers(peers)
        self._answer(resp)


class StatusResource:
    """``GET /v1/replication/status``: each peer's cursor, lag and last error."""

    openapi = {
        "get": {
            "summary": "Each peer's cursor, lag and last error",
            "responses": {
                "200": {
                    "description": "Replication status",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **errors(401, 405, 503),
            },
        }
    }

    def __init__(self, node: Node) -> None:
        self.node = node

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        replication = self.node.replication
        resp.media = replication.status() if replication is not None else {"peers": []}


def routes(node: Node) -> list[tuple[str, object]]:
    options = getattr(node.replication, "options", None) or Options.from_environment()
    return [
        ("/v1/replication/hello", HelloResource(node)),
        ("/v1/replication/records", RecordsResource(node, options.max_skew)),
        ("/v1/replication/peers", PeersResource(node)),
        ("/v1/replication/status", StatusResource(node)),
    ]

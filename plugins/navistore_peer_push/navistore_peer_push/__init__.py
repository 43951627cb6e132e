"""Peer-push replication: every node takes writes and pushes its change feed to its peers."""

from __future__ import annotations

from navistore import Replicator, hookimpl
from navistore_peer_push.pusher import PeerPush
from navistore_peer_push.resources import routes


@hookimpl
def navistore_replicators() -> list[Replicator]:
    return [
        Replicator(
            name="peer-push",
            factory=PeerPush,
            description="push the change feed to every peer; last writer wins by stamp",
        )
    ]


@hookimpl
def navistore_routes(node) -> list:
    return routes(node)


@hookimpl
def navistore_committed(node, record, origin) -> None:
    if isinstance(node.replication, PeerPush):
        node.replication.wake()

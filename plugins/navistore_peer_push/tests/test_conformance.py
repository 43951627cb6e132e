"""Peer-push adopts the replication suite exactly as a third-party strategy would."""

from __future__ import annotations

from navistore.testing import ReplicationSuite


class TestPeerPush(ReplicationSuite):
    replicator = "peer-push"

"""What a replication strategy provides: a ``Replicator`` entry, a running ``Replication``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from navistore.node import Node


class Replication(Protocol):
    """A running replication strategy, started and stopped with its Node."""

    def start(self) -> None:
        """Start working in the background; never block on an unreachable peer."""
        ...

    def stop(self) -> None:
        """Stop, and wait for background work to end."""
        ...

    def status(self) -> dict:
        """Describe the strategy's state as JSON-ready data."""
        ...

    def peers_changed(self) -> None:
        """``node.peers()`` changed at runtime: start or stop working with peers to match."""
        ...

    def purge_upto(self) -> int:
        """The highest seq every peer already has: tombstones above it must be kept."""
        ...


@dataclasses.dataclass(frozen=True)
class Replicator:
    """A replication strategy, as a plugin's ``navistore_replicators`` hook returns it.

    ``factory(node)`` builds a ``Replication`` for a Node; it reads the core's generic settings
    from the Node: ``node.peers()`` (configured and runtime peers) and ``node.settings.peer_token``.
    """

    name: str
    factory: Callable[[Node], Replication]
    description: str = ""

"""The plugin contract: every hook a Navistore plugin can implement.

A plugin is a module registered under the ``navistore`` entry-point group::

    [project.entry-points.navistore]
    mybackend = "navistore_mybackend"

whose functions are marked with ``navistore.hookimpl``. A hook published here is never removed or
changed incompatibly; it is deprecated instead (pluggy's ``warn_on_impl``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from navistore.node import Node
    from navistore.record import Record
    from navistore.store import Backend

hookspec = pluggy.HookspecMarker("navistore")
hookimpl = pluggy.HookimplMarker("navistore")


@hookspec
def navistore_backends() -> list[Backend]:
    """Return the storage backends this plugin provides, as ``navistore.Backend`` entries.

    Each names its URL schemes, a one-line description, its capabilities and a factory that opens a
    ``navistore.Store`` from a store URL. The core collects every plugin's list and picks by the
    store URL's scheme; two plugins claiming one scheme is an error that names both.
    """


@hookspec
def navistore_replicators() -> list[Any]:
    """Return the replication strategies this plugin provides, as ``navistore.Replicator`` entries.

    The Node starts the one the ``replicator`` setting names (``peer-push`` by default when any peer
    is configured) and stops it when the Node closes.
    """


@hookspec
def navistore_routes(node: Node) -> list[tuple[str, Any]]:
    """Return extra REST routes as ``(uri_template, falcon_resource)`` pairs to mount on the app.

    The replication endpoints live here, not in the core. Templates should start with ``/v1/``.
    """


@hookspec
def navistore_committed(node: Node, record: Record, origin: str) -> None:
    """Run after every commit: ``origin`` is ``"local"`` for a client's write, ``"peer"`` for a
    replicated one. Keep it quick; it runs on the thread that committed: a request's thread, or
    ``navistore serve``'s event loop, which serves small writes itself (see
    ``navistore.server.quick_write``) and stops every connection until the hook returns."""

"""Navistore: a key-value store that speaks HTTP, with storage and replication as plugins.

The public API is what ``__all__`` lists; everything else may change between releases.
"""

from __future__ import annotations

from navistore import errors
from navistore._version import __version__
from navistore.app import create_app
from navistore.hookspecs import hookimpl
from navistore.node import Node
from navistore.record import ABSENT, ANY, PRESENT, Clock, Expect, Record
from navistore.replication import Replication, Replicator
from navistore.settings import Settings, load_settings
from navistore.store import (
    Backend,
    Store,
    check_precondition,
    check_write,
    check_writes,
    prefix_end,
)

__all__ = [
    "ABSENT",
    "ANY",
    "Backend",
    "Clock",
    "Expect",
    "Node",
    "PRESENT",
    "Record",
    "Replication",
    "Replicator",
    "Settings",
    "Store",
    "__version__",
    "check_precondition",
    "check_write",
    "check_writes",
    "create_app",
    "errors",
    "hookimpl",
    "load_settings",
    "prefix_end",
]

"""Navistore: a key-value store that speaks HTTP, with storage and replication as plugins.

The public API is what ``__all__`` lists; everything else may change between releases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from navistore import errors
from navistore._version import __version__
from navistore.hookspecs import hookimpl
from navistore.record import ABSENT, ANY, PRESENT, Check, Clock, Expect, Record
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

if TYPE_CHECKING:
    from navistore.app import create_app
    from navistore.node import Node

# Imported when first asked for: the app brings Falcon and prometheus-client, which the client
# commands do not need (``navistore get`` took 177 ms with them, 133 without, ten in a row).
_LAZY = {"create_app": "navistore.app", "Node": "navistore.node"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'navistore' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ABSENT",
    "ANY",
    "Backend",
    "Check",
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

"""The embedded default backend: one sqlite3 file, ``sqlite:///navistore.db``."""

from __future__ import annotations

from navistore import Backend, hookimpl
from navistore_sqlite.store import SqliteStore


@hookimpl
def navistore_backends() -> list[Backend]:
    return [
        Backend(
            name="sqlite",
            schemes=("sqlite",),
            factory=SqliteStore.from_url,
            description="sqlite3 in WAL mode, embedded: one file, no server",
            capabilities={"ttl", "batch", "checks", "persistent", "concurrent", "local"},
        )
    ]

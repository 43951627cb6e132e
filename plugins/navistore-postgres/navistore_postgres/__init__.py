"""PostgreSQL storage for Navistore: ``postgresql://user:password@host/db?schema=navistore``."""

from __future__ import annotations

from navistore import Backend, hookimpl
from navistore_postgres.store import PostgresStore


@hookimpl
def navistore_backends() -> list[Backend]:
    return [
        Backend(
            name="postgres",
            schemes=("postgresql", "postgres"),
            factory=PostgresStore.from_url,
            description="PostgreSQL via psycopg 3: many stateless nodes can share one database",
            capabilities={"ttl", "batch", "checks", "persistent", "concurrent", "shared"},
        )
    ]

"""A PostgreSQL server for these tests: $NAVISTORE_TEST_POSTGRES_URL, or a throwaway one.

Without PostgreSQL on the machine the tests are skipped, saying why, except under CI (CI=true),
where a skip would hide that nothing was tested: there they fail.
"""

from __future__ import annotations

import os
import uuid

import pytest


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must test PostgreSQL, but: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of a database these tests may create schemas in."""
    try:
        import navistore_postgres  # noqa: F401
    except ImportError:
        _unavailable(
            "navistore-postgres is not installed: pip install -e plugins/navistore-postgres"
        )
    url = os.environ.get("NAVISTORE_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    from navistore_postgres.throwaway import ThrowawayPostgres

    try:
        server = ThrowawayPostgres().start()
    except (FileNotFoundError, PermissionError, RuntimeError) as exc:
        _unavailable(f"no PostgreSQL to test against ({exc}); or set NAVISTORE_TEST_POSTGRES_URL")
    yield server.url
    server.stop()


@pytest.fixture
def fresh_url(postgres_url):
    """A function that returns the URL of a fresh, empty store (its own schema)."""
    return lambda: f"{postgres_url}?schema=t_{uuid.uuid4().hex[:16]}"

"""navistore-postgres adopts the conformance suite exactly as a third party would."""

from __future__ import annotations

import pytest

from navistore.testing import BackendSuite, HttpSuite


class TestPostgresBackend(BackendSuite):
    # Each example opens a store (a pool, a schema, a listener): fewer, to keep CI's run short.
    hypothesis_examples = 60

    @pytest.fixture
    def make_store_url(self, fresh_url):
        return fresh_url


class TestPostgresOverHttp(HttpSuite):
    @pytest.fixture
    def make_store_url(self, fresh_url):
        return fresh_url

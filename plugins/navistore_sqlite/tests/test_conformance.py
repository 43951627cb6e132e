"""The sqlite backend adopts the conformance suite exactly as a third-party backend would."""

from __future__ import annotations

import uuid

import pytest

from navistore.testing import BackendSuite, HttpSuite


class TestSqliteBackend(BackendSuite):
    @pytest.fixture
    def make_store_url(self, tmp_path):
        return lambda: f"sqlite:///{tmp_path}/{uuid.uuid4().hex}.db"


class TestSqliteOverHttp(HttpSuite):
    @pytest.fixture
    def make_store_url(self, tmp_path):
        return lambda: f"sqlite:///{tmp_path}/{uuid.uuid4().hex}.db"

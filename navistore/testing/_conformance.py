"""The suite adopted for ``navistore conformance URL``: any store URL, no test code needed."""

from __future__ import annotations

import pytest

from navistore.testing.backend import BackendSuite
from navistore.testing.http import HttpSuite


@pytest.fixture
def conformance_urls(request):
    return request.config.navistore_fresh_url


class TestBackend(BackendSuite):
    @pytest.fixture
    def make_store_url(self, conformance_urls):
        return conformance_urls


class TestHttp(HttpSuite):
    @pytest.fixture
    def make_store_url(self, conformance_urls):
        return conformance_urls

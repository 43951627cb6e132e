"""The Navistore conformance suite: an opt-in pytest plugin for storage and replication plugins.

Load it from your rootdir ``conftest.py`` (pytest refuses ``pytest_plugins`` in a nested one)::

    pytest_plugins = ["navistore.testing"]

or run ``pytest -p navistore.testing``. Then adopt each part with one class::

    from navistore.testing import BackendSuite, HttpSuite

    class TestMyBackend(BackendSuite):
        @pytest.fixture
        def make_store_url(self, tmp_path):
            return lambda: f"mybackend://{tmp_path}/{uuid.uuid4().hex}"

    class TestMyBackendOverHttp(HttpSuite):
        make_store_url = TestMyBackend.make_store_url

The suite uses only the public Store API, and finds your backend the way ``navistore serve``
does: through the ``navistore`` entry points, by the URL's scheme. Tests for a capability your
backend does not declare are skipped with that reason. ``SUITE_VERSION`` changes when the suite
does (see CHANGELOG.md): a new test can fail a backend that passed before.
"""

from __future__ import annotations

import pytest

# Plain asserts in the suite's modules must explain themselves: rewrite them before importing.
pytest.register_assert_rewrite(
    "navistore.testing.backend", "navistore.testing.http", "navistore.testing.statemachine"
)

from navistore.testing._plugin import (  # noqa: E402
    HYPOTHESIS_EXAMPLES_VARIABLE,
    pytest_addoption,
    pytest_configure,
    requires,
)
from navistore.testing.backend import BackendSuite  # noqa: E402
from navistore.testing.http import HttpSuite  # noqa: E402

SUITE_VERSION = "1.0"

__all__ = [
    "HYPOTHESIS_EXAMPLES_VARIABLE",
    "SUITE_VERSION",
    "BackendSuite",
    "HttpSuite",
    "pytest_addoption",
    "pytest_configure",
    "requires",
]

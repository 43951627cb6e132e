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

from typing import TYPE_CHECKING

from navistore.testing._plugin import (
    HYPOTHESIS_EXAMPLES_VARIABLE,
    pytest_addoption,
    pytest_configure,
    requires,
)

if TYPE_CHECKING:
    from navistore.testing.backend import BackendSuite
    from navistore.testing.http import HttpSuite
    from navistore.testing.replication import ReplicationSuite

SUITE_VERSION = "1.5"

# The suite's modules are imported on first use, not with this package: pytest rewrites their
# asserts (so failures explain themselves) only when it imports them after loading the plugin.
_LAZY = {
    "BackendSuite": "navistore.testing.backend",
    "HttpSuite": "navistore.testing.http",
    "ReplicationSuite": "navistore.testing.replication",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'navistore.testing' has no attribute {name!r}")


__all__ = [
    "HYPOTHESIS_EXAMPLES_VARIABLE",
    "SUITE_VERSION",
    "BackendSuite",
    "HttpSuite",
    "ReplicationSuite",
    "pytest_addoption",
    "pytest_configure",
    "requires",
]

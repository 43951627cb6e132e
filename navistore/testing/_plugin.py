"""The pytest side of the suite: its marker, its options, and the fixtures every part shares."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from navistore.plugins import Plugins, get_plugin_manager
from navistore.store import Backend, Store, url_scheme

HYPOTHESIS_EXAMPLES_VARIABLE = "NAVISTORE_SUITE_EXAMPLES"
DEFAULT_EXAMPLES = 200
_MARKER = "navistore_requires"


def requires(*capabilities: str) -> pytest.MarkDecorator:
    """Mark a suite test as needing backend capabilities; it is skipped, with that reason,
    for a backend that does not declare them."""
    return getattr(pytest.mark, _MARKER)(*capabilities)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("navistore", "Navistore conformance suite")
    group.addoption(
        "--navistore-examples",
        type=int,
        default=None,
        help=f"Hypothesis examples per state-machine test (default {DEFAULT_EXAMPLES}, "
        f"or ${HYPOTHESIS_EXAMPLES_VARIABLE})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{_MARKER}(*capabilities): skip unless the backend declares the capabilities"
    )


def hypothesis_examples(config: pytest.Config, default: int | None = None) -> int:
    """The option, else the environment variable, else the suite's ``default``, else 200."""
    chosen = config.getoption("--navistore-examples", default=None)
    if chosen is None and HYPOTHESIS_EXAMPLES_VARIABLE in os.environ:
        chosen = int(os.environ[HYPOTHESIS_EXAMPLES_VARIABLE])
    return chosen or default or DEFAULT_EXAMPLES


class SuiteFixtures:
    """Fixtures shared by every part of the suite; ``make_store_url`` is the adopter's."""

    @pytest.fixture
    def make_store_url(self) -> Callable[[], str]:
        pytest.fail(
            f"{type(self).__name__} needs a `make_store_url` fixture. Override it in your class: "
            "a fixture that returns a function returning the URL of a fresh, empty store at each "
            "call, for example `return lambda: f'mybackend://{tmp_path}/{uuid.uuid4().hex}'`",
            pytrace=False,
        )

    @pytest.fixture
    def navistore_plugins(self) -> Plugins:
        return get_plugin_manager()

    @pytest.fixture
    def backend(self, make_store_url: Callable[[], str], navistore_plugins: Plugins) -> Backend:
        """The backend that the URLs' scheme selects, found through the entry points."""
        return navistore_plugins.backend_for(url_scheme(make_store_url()))[0]

    @pytest.fixture(autouse=True)
    def _required_capabilities(self, request: pytest.FixtureRequest, backend: Backend) -> None:
        for marker in request.node.iter_markers(_MARKER):
            missing = [c for c in marker.args if c not in backend.capabilities]
            if missing:
                pytest.skip(
                    f"backend {backend.name!r} does not declare capability "
                    f"{', '.join(repr(c) for c in missing)}"
                )

    @pytest.fixture
    def open_store(self, backend: Backend) -> Iterator[Callable[[str], Store]]:
        """Open a store from a URL; every store opened is closed after the test."""
        opened: list[Store] = []

        def open_(url: str) -> Store:
            store = backend.factory(url)
            opened.append(store)
            return store

        yield open_
        for store in reversed(opened):
            try:
                store.close()
            except Exception:  # closing twice is the test's business, not a failure here
                pass

    @pytest.fixture
    def store(self, open_store: Callable[[str], Store], make_store_url: Callable[[], str]) -> Store:
        """A fresh store."""
        return open_store(make_store_url())

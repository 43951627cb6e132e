"""``navistore conformance URL``: BackendSuite and HttpSuite on any store URL, and a report."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import pytest

from navistore.errors import NavistoreError, SettingsError
from navistore.plugins import get_plugin_manager
from navistore.store import url_scheme


def fresh_url_factory(url: str) -> Callable[[], str]:
    """URLs of fresh stores like ``url``: ``{n}`` in it is replaced by a new name at each call;
    without ``{n}``, the new name goes before the path's extension (``x.db`` -> ``x-<n>.db``)."""
    url_scheme(url)
    if "{n}" not in url:
        base, mark, query = url.partition("?")
        head, slash, last = base.rpartition("/")
        if not last or head.endswith(":/"):
            raise SettingsError(
                f"cannot tell where a fresh store's name goes in {url!r}: put {{n}} in it, "
                "for example postgresql://host/db?schema=conformance_{n}"
            )
        stem, dot, ext = last.rpartition(".") if "." in last else (last, "", "")
        url = f"{head}{slash}{stem}-{{n}}{dot}{ext}{mark}{query}"
    return lambda: url.replace("{n}", uuid.uuid4().hex[:12])


@dataclasses.dataclass
class Outcome:
    part: str
    name: str
    outcome: str
    detail: str = ""


class _Collector:
    """Records each test's outcome for the report."""

    def __init__(self, fresh_url: Callable[[], str]) -> None:
        self.fresh_url = fresh_url
        self.outcomes: list[Outcome] = []

    def pytest_configure(self, config: pytest.Config) -> None:
        config.navistore_fresh_url = self.fresh_url  # type: ignore[attr-defined]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            _, _, rest = report.nodeid.partition("::")
            part, _, name = rest.partition("::")
            detail = ""
            if report.skipped and isinstance(report.longrepr, tuple):
                detail = str(report.longrepr[2]).removeprefix("Skipped: ")
            elif report.failed:
                crash = getattr(report.longrepr, "reprcrash", None)
                detail = crash.message.splitlines()[0] if crash else str(report.longrepr)[:200]
            part = {"TestBackend": "BackendSuite", "TestHttp": "HttpSuite"}.get(part, part)
            self.outcomes.append(Outcome(part, name, report.outcome, detail))


def run(
    url: str | None, out: TextIO, examples: int | None = None, select: str | None = None
) -> int:
    """Run the suite on ``url`` (default: sqlite, in a temporary folder); return pytest's code.
    A URL that no installed plugin can open is a ``PluginError`` before any test runs (else every
    test failed with it)."""
    if url is not None:
        get_plugin_manager().backend_for(url_scheme(url))
    with tempfile.TemporaryDirectory(prefix="navistore-conformance-") as scratch:
        if url is None:
            url = f"sqlite:///{scratch}/conformance-{{n}}.db"
        collector = _Collector(fresh_url_factory(url))
        # Our own, empty configuration: not the ini file of whatever project we are run in.
        config = Path(scratch) / "pytest.ini"
        config.write_text("[pytest]\n")
        args = [
            str(Path(__file__).with_name("_conformance.py")),
            *("-c", str(config), "--rootdir", scratch),
            *("-p", "navistore.testing", "-p", "no:cacheprovider", "-q", "--tb=short"),
        ]
        if examples is not None:
            args += ["--navistore-examples", str(examples)]
        if select:
            args += ["-k", select]
        # pytest's own output is replaced by the report; it is shown only if pytest itself failed.
        with contextlib.redirect_stdout(io.StringIO()) as pytest_output:
            code = pytest.main(args, plugins=[collector])
    if code in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.USAGE_ERROR):
        print(pytest_output.getvalue(), file=sys.stderr)
    _report(url, collector.outcomes, out)
    return int(code)


def _report(url: str, outcomes: list[Outcome], out: TextIO) -> None:
    from navistore.testing import SUITE_VERSION

    print(f"Navistore conformance suite {SUITE_VERSION} against {url}", file=out)
    try:
        backend = get_plugin_manager().backend_for(url_scheme(url))[0]
        capabilities = ", ".join(sorted(backend.capabilities)) or "none"
        print(f"backend {backend.name}; capabilities: {capabilities}", file=out)
    except NavistoreError as exc:
        print(f"no backend: {exc.description}", file=out)
    labels = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}
    for part in ("BackendSuite", "HttpSuite"):
        mine = [o for o in outcomes if o.part == part]
        if not mine:
            continue
        print(f"\n{part}", file=out)
        for o in mine:
            line = f"  {labels.get(o.outcome, o.outcome.upper())}  {o.name}"
            print(line + (f"  -- {o.detail}" if o.detail else ""), file=out)
    counts = {k: sum(o.outcome == k for o in outcomes) for k in ("passed", "failed", "skipped")}
    print(
        f"\n{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped",
        file=out,
    )

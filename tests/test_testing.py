"""The conformance suite itself: it must fail broken backends, each for the right reason."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BROKEN_SOURCE = (Path(__file__).parent / "broken_backends.py").read_text()

ADOPTION = """
import uuid
import pytest
from navistore.testing import BackendSuite, HttpSuite

class TestBackend(BackendSuite):
    @pytest.fixture
    def make_store_url(self, tmp_path):
        return lambda: f"{scheme}:///{{tmp_path}}/{{uuid.uuid4().hex}}.db"

class TestHttp(HttpSuite):
    @pytest.fixture
    def make_store_url(self, tmp_path):
        return lambda: f"{scheme}:///{{tmp_path}}/{{uuid.uuid4().hex}}.db"
"""


@pytest.fixture
def suite_run(pytester):
    """Install the broken backends as a plugin in pytester's path; run the suite on a scheme."""
    pytester.makepyfile(navistore_broken=BROKEN_SOURCE)
    info = pytester.mkdir("navistore_broken-1.0.dist-info")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: navistore-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[navistore]\nbroken = navistore_broken\n")
    pytester.syspathinsert()

    def run(scheme: str, *args: str):
        pytester.makepyfile(test_adoption=ADOPTION.format(scheme=scheme))
        return pytester.runpytest_subprocess(
            "-p", "navistore.testing", "--navistore-examples", "20", "-q", "-rfs", *args
        )

    return run


def failed_tests(result) -> set[str]:
    return {
        line.split("::")[-1].split(" ")[0].split("[")[0]
        for line in result.outlines
        if line.startswith("FAILED ")
    }


@pytest.mark.parametrize(
    ("scheme", "must_fail"),
    [
        (
            "broken-merge",
            {
                "test_merge_stores_a_newer_record_and_ignores_older_and_equal",
                "test_merge_is_idempotent",
                "test_merged_tombstones_win_and_lose_by_the_same_rule",
            },
        ),
        (
            "broken-scan",
            {"test_scan_orders_keys_bytewise_as_utf8", "test_listing_pages_in_key_order"},
        ),
        (
            "broken-precondition",
            {
                "test_expect_absent",
                "test_expect_present",
                "test_expect_a_stamp",
                "test_conditional_writes",
            },
        ),
        (
            "broken-changes",
            {"test_changes_come_in_seq_order_with_tombstones", "test_the_change_feed"},
        ),
        (
            "broken-race",
            {
                "test_racing_conditional_commits_let_exactly_one_win",
                "test_if_match_increments_from_threads_lose_no_update",
            },
        ),
        (
            "broken-nul",
            {
                "test_awkward_values_survive",
                "test_every_byte_value_survives",
                "test_values_are_binary_safe",
            },
        ),
        ("broken-seq", {"test_a_seq_is_never_reused_after_a_purge"}),
        (
            "broken-check-written",
            {
                "test_a_check_holds_its_key_to_a_condition_and_writes_nothing",
                "test_a_batch_writes_only_while_its_checks_hold",
            },
        ),
        ("broken-check-race", {"test_a_check_that_holds_commits_before_the_write_that_breaks_it"}),
        (
            "broken-listing",
            {
                "test_scan_listing_agrees_with_scan",
                "test_scan_listing_skips_expired_keys_and_shows_expiry",
            },
        ),
    ],
)
def test_the_suite_fails_a_broken_backend_for_the_right_reason(suite_run, scheme, must_fail):
    # The racy backend sleeps in every commit: spare it the state machine's thousands of them.
    result = suite_run(scheme, *(["-k", "not random_operation"] if scheme == "broken-race" else []))
    assert result.ret == 1
    failed = failed_tests(result)
    assert must_fail <= failed, f"expected failures missing: {must_fail - failed}"


@pytest.mark.parametrize("scheme", ["broken-merge", "broken-precondition"])
def test_the_state_machine_alone_catches_a_broken_backend(suite_run, scheme):
    result = suite_run(scheme, "-k", "random_operation", "--navistore-examples", "200")
    assert failed_tests(result) == {"test_random_operation_sequences_match_a_dict_model"}
    result.stdout.fnmatch_lines(["*Falsifying example*"])


def test_a_backend_without_capabilities_skips_their_tests_with_the_reason(suite_run):
    result = suite_run("bare")
    assert result.ret == 0
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] > 30 and outcomes["skipped"] >= 8
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert skipped and all("does not declare capability" in line for line in skipped)
    for capability in ("ttl", "batch", "checks", "persistent", "concurrent"):
        assert any(f"'{capability}'" in line for line in skipped), capability


def test_the_suite_passes_a_correct_backend(suite_run):
    result = suite_run("sqlite")
    assert result.ret == 0
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] > 60 and "failed" not in outcomes
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "capability 'shared'" in skipped[0]  # sqlite is one process's


def test_an_adoption_without_make_store_url_says_which_fixture_to_write(pytester):
    pytester.makepyfile(
        """
        from navistore.testing import BackendSuite

        class TestForgot(BackendSuite):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "navistore.testing", "-q", "-x")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*TestForgot needs a `make_store_url` fixture*"])


def test_the_suite_does_not_load_unless_asked(pytester):
    pytester.makepyfile(
        """
        def test_nothing_loaded(request):
            assert not request.config.pluginmanager.hasplugin("navistore.testing")
        """
    )
    pytester.runpytest_subprocess("-q").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///data/n.db", r"sqlite:///data/n-[0-9a-f]{12}\.db"),
        (
            "sqlite:////abs/n.db?synchronous=full",
            r"sqlite:////abs/n-[0-9a-f]{12}\.db\?synchronous=full",
        ),
        ("postgresql://h/db?schema=s_{n}", r"postgresql://h/db\?schema=s_[0-9a-f]{12}"),
        ("mem://h/store", r"mem://h/store-[0-9a-f]{12}"),
    ],
)
def test_conformance_makes_fresh_urls(url, expected):
    from navistore.testing.conformance import fresh_url_factory

    fresh = fresh_url_factory(url)
    first, second = fresh(), fresh()
    assert re.fullmatch(expected, first) and first != second


def test_conformance_needs_a_place_for_the_name():
    from navistore.errors import SettingsError
    from navistore.testing.conformance import fresh_url_factory

    with pytest.raises(SettingsError, match=r"put \{n\} in it"):
        fresh_url_factory("postgresql://host/")


def conformance(args, tmp_path, pythonpath=None):
    env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    return subprocess.run(
        [sys.executable, "-m", "navistore", "conformance", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )


def test_navistore_conformance_reports_on_sqlite(tmp_path):
    result = conformance(["--examples", "20", f"sqlite:///{tmp_path}/c.db"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "backend sqlite; capabilities: batch, checks, concurrent, local, persistent, ttl" in out
    assert "  PASS  test_merge_is_idempotent" in out and "  PASS  test_the_change_feed" in out
    passed = int(re.search(r"^(\d+) passed, 0 failed, 1 skipped$", out, re.M).group(1))
    assert passed > 60
    assert re.search(r"SKIP  test_two_stores_on_one_url.*capability 'shared'", out)


def test_navistore_conformance_on_a_scheme_nobody_provides_says_so_once(tmp_path):
    result = conformance([f"nosuch:///{tmp_path}/x{{n}}.db"], tmp_path)
    assert result.returncode == 2
    assert "no plugin provides the scheme 'nosuch'; installed:" in result.stderr
    assert "FAIL" not in result.stdout


def test_navistore_conformance_reports_failures_and_skips(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "navistore_broken.py").write_text(BROKEN_SOURCE)
    info = site / "navistore_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: navistore-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[navistore]\nbroken = navistore_broken\n")
    broken = conformance(["--examples", "10", f"broken-merge:///{tmp_path}/b.db"], tmp_path, site)
    assert broken.returncode == 1
    assert re.search(r"FAIL  test_merge_is_idempotent  -- .*assert", broken.stdout)
    bare = conformance(["--examples", "10", f"bare:///{tmp_path}/b.db"], tmp_path, site)
    assert bare.returncode == 0
    assert re.search(
        r"SKIP  test_meta|SKIP  test_ttl_expires_the_key  -- backend 'bare' does not "
        r"declare capability 'ttl'",
        bare.stdout,
    )

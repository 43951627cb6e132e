"""CONTRIBUTING.md's example backend is real: install it, run the conformance suite on it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

GUIDE = Path(__file__).parent.parent / "CONTRIBUTING.md"
_BLOCK = re.compile(r"```(?:python|toml)\n# file: (\S+)\n(.*?)```", re.S)


def test_the_guide_plugin_installs_and_passes_the_suite(tmp_path):
    package, site = tmp_path / "navistore-dictstore", tmp_path / "site"
    files = _BLOCK.findall(GUIDE.read_text())
    assert {name for name, _ in files} >= {
        "pyproject.toml",
        "navistore_dictstore/__init__.py",
        "navistore_dictstore/store.py",
        "conftest.py",
        "tests/test_conformance.py",
    }
    for name, text in files:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(package),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(site), "NAVISTORE_SUITE_EXAMPLES": "50"}
    (package / "navistore_dictstore").rename(tmp_path / "source")  # only the installed copy counts
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed, \d+ skipped", summary), summary
    assert "does not declare capability 'persistent'" in run.stdout
    assert "capability 'checks'" not in run.stdout  # the example declares it: its tests ran
    listed = subprocess.run(
        [sys.executable, "-m", "navistore", "plugins"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "dictstore  (navistore-dictstore 0.1.0)  loaded" in listed.stdout

"""The types a Python team's own mypy reads: the packages type-check, and an installed navistore
carries its annotations (PEP 561's ``py.typed``), so a wrong call is caught before it runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_USER_CODE = """
    from navistore import Record, Store
    from navistore.client import Client, Entry

    client = Client()
    client.put("app/db/host", "10.0.0.5")  # a str where the value is bytes
    reveal_type(client.get("app/db/host").value)
    for entry in client.get_prefix("app/"):
        reveal_type(entry)
    for config in client.follow("app/"):
        reveal_type(config)
    reveal_type(client.changes(0))

    def first(store: Store) -> Record | None:
        return store.get(b"k")  # a key is text
"""


def test_the_packages_type_check(tmp_path):
    # pyproject.toml's [tool.mypy] names the packages: the core and the three shipped plugins
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Success: no issues found" in run.stdout


def test_an_installed_navistore_gives_its_types_to_the_users_mypy(tmp_path):
    # Installed from a wheel (not editable: mypy cannot see through setuptools' editable finder)
    # into a virtual environment of its own, as a user's project would have it.
    # From a copy of the sources: setuptools would take files left in ./build by an earlier build.
    venv, user, source = tmp_path / "venv", tmp_path / "user", tmp_path / "source"
    leftovers = ("build", "*.egg-info", ".*", "__pycache__", "*.db", "*.db-*", "*.lock")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*leftovers))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site)]
        + [str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (site / "navistore" / "py.typed").exists()
    assert (site / "navistore_sqlite" / "py.typed").exists()
    user.mkdir()
    (user / "app.py").write_text(textwrap.dedent(_USER_CODE))
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--python-executable", str(venv / "bin" / "python")]
        + ["--cache-dir", str(tmp_path / "cache"), "app.py"],
        cwd=user,
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = run.stdout
    assert 'Argument 2 to "put" of "Client" has incompatible type "str"; expected "bytes"' in said
    assert 'Revealed type is "bytes"' in said
    assert 'Revealed type is "navistore.client.Entry"' in said
    assert 'Revealed type is "dict[str, navistore.client.Entry]"' in said
    assert 'Revealed type is "tuple[list[navistore.client.Change], int]"' in said
    assert 'Argument 1 to "get" of "Store" has incompatible type "bytes"; expected "str"' in said
    assert "Found 2 errors" in said, said

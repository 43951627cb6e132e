"""The plugin manager: entry points loaded one by one, failures isolated and reported."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from navistore import errors
from navistore.plugins import get_plugin_manager

GOOD = """
from navistore import Backend, hookimpl
from navistore_sqlite.store import SqliteStore

@hookimpl
def navistore_backends():
    return [Backend(name="memx", schemes=("memx",), factory=SqliteStore.from_url,
                    description="a test backend", capabilities={"ttl"})]
"""
BROKEN_IMPORT = "raise ImportError('this plugin needs libfoo, which is missing')\n"
MISSPELT = """
from navistore import hookimpl

@hookimpl
def navistore_backend():  # missing "s": check_pending must refuse it
    return []
"""
WRONG_TYPE = """
from navistore import hookimpl

@hookimpl
def navistore_backends():
    return ["not a Backend"]
"""


def make_distribution(root: Path, name: str, source: str, ep_name: str | None = None) -> None:
    """Write a module and a dist-info with a navistore entry point: an installed plugin."""
    (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[navistore]\n{ep_name or name} = {name}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in ["goodplug", "brokenplug", "typoplug", "wrongplug", "clashplug"]:
        sys.modules.pop(name, None)


def by_name(plugins):
    return {info.name: info for info in plugins.infos}


def test_the_shipped_sqlite_plugin_is_found_through_its_entry_point():
    info = by_name(get_plugin_manager(disabled=set()))["sqlite"]
    assert info.distribution == "navistore" and info.error is None
    assert info.hooks == ["navistore_backends"]
    assert [b.name for b in info.backends] == ["sqlite"]


def test_a_broken_plugin_is_reported_and_does_not_stop_the_others(site):
    make_distribution(site, "goodplug", GOOD)
    make_distribution(site, "brokenplug", BROKEN_IMPORT)
    plugins = get_plugin_manager(disabled=set())
    infos = by_name(plugins)
    assert "libfoo" in infos["brokenplug"].error
    assert infos["goodplug"].error is None
    assert plugins.backend_for("memx")[0].name == "memx"
    assert plugins.backend_for("sqlite")[0].name == "sqlite"


def test_a_misspelt_hook_is_rejected(site):
    make_distribution(site, "typoplug", MISSPELT)
    plugins = get_plugin_manager(disabled=set())
    info = by_name(plugins)["typoplug"]
    assert "navistore_backend" in info.error
    assert plugins.pm.get_plugin("typoplug") is None


def test_a_hook_returning_the_wrong_type_is_a_load_error(site):
    make_distribution(site, "wrongplug", WRONG_TYPE)
    info = by_name(get_plugin_manager(disabled=set()))["wrongplug"]
    assert "navistore.Backend" in info.error


def test_two_plugins_claiming_one_scheme_is_an_error_naming_both(site):
    make_distribution(site, "goodplug", GOOD)
    make_distribution(site, "clashplug", GOOD)
    plugins = get_plugin_manager(disabled=set())
    with pytest.raises(errors.PluginError, match="goodplug.*clashplug|clashplug.*goodplug"):
        plugins.backend_for("memx")


def test_disabled_plugins_are_blocked(site, monkeypatch):
    make_distribution(site, "goodplug", GOOD)
    monkeypatch.setenv("NAVISTORE_DISABLE_PLUGINS", "goodplug, sqlite")
    plugins = get_plugin_manager()
    infos = by_name(plugins)
    assert infos["goodplug"].disabled and infos["sqlite"].disabled
    with pytest.raises(errors.PluginError, match="disabled by NAVISTORE_DISABLE_PLUGINS"):
        plugins.backend_for("sqlite")


def test_an_unknown_scheme_names_the_installed_ones():
    with pytest.raises(errors.PluginError, match="installed: .*sqlite.*may not be installed"):
        get_plugin_manager(disabled=set()).backend_for("redis")


def test_the_core_never_imports_a_plugin():
    core = Path(__file__).parent.parent / "navistore"
    for path in core.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(
                    ("navistore_sqlite", "navistore_peer_push", "navistore_postgres")
                ), f"{path} imports {name}"


def run(args, env_extra, cwd):
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def test_with_sqlite_blocked_the_core_still_imports_lists_and_refuses_to_serve(tmp_path, site):
    make_distribution(site, "goodplug", GOOD)
    env = {"NAVISTORE_DISABLE_PLUGINS": "sqlite", "PYTHONPATH": str(site)}
    imported = run(
        [
            "-c",
            "import sys, navistore, navistore.cli, navistore.server, navistore.app;"
            "print('navistore_sqlite' in sys.modules)",
        ],
        env,
        tmp_path,
    )
    assert imported.returncode == 0 and imported.stdout.strip() == "False"
    listed = run(["-m", "navistore", "plugins"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "sqlite" in listed.stdout and "disabled" in listed.stdout
    served = run(["-m", "navistore", "serve", "--port", "0"], env, tmp_path)
    assert served.returncode == 2
    assert "installed: memx" in served.stderr and "'sqlite'" in served.stderr
    assert not (tmp_path / "navistore.db").exists()

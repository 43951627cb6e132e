from __future__ import annotations

import pytest

from navistore.errors import SettingsError
from navistore.settings import SETTINGS, Settings, load_settings


def test_defaults_need_no_configuration():
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.store == "sqlite:///navistore.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 8888)


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    config = tmp_path / "navistore.toml"
    config.write_text('port = 7001\nthreads = 3\nnode_id = "from-file"\npeer = ["http://a:1"]\n')
    env = {"NAVISTORE_PORT": "7002", "NAVISTORE_THREADS": "5"}
    settings = load_settings(flags={"port": "7003"}, environ=env, config=str(config))
    assert settings.port == 7003
    assert settings.threads == 5
    assert settings.node_id == "from-file"
    assert settings.peer == ("http://a:1",)
    assert settings.max_value_size == 1024 * 1024


def test_config_path_from_the_environment(tmp_path):
    config = tmp_path / "n.toml"
    config.write_text('host = "0.0.0.0"\n')
    assert load_settings(environ={"NAVISTORE_CONFIG": str(config)}).host == "0.0.0.0"


def test_repeatable_settings_from_flags_and_environment():
    assert load_settings(flags={"peer": ["http://a:1", "http://b:2/"]}, environ={}).peer == (
        "http://a:1",
        "http://b:2",
    )
    env = {"NAVISTORE_PEER": "http://a:1, http://b:2"}
    assert load_settings(environ=env).peer == ("http://a:1", "http://b:2")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"port": "eighty"}, "port"),
        ({"port": "70000"}, "port"),
        ({"threads": "0"}, "threads"),
        ({"node_id": "Upper"}, "node_id"),
        ({"store": "navistore.db"}, "store"),
        ({"peer": ["ftp://x"]}, "peer"),
        ({"log_format": "xml"}, "log_format"),
        ({"max_value_size": "-1"}, "max_value_size"),
        ({"token": "has space"}, "token"),
        ({"access_log": "sometimes"}, "access_log"),
        ({"cpus": "one"}, "cpus"),
        ({"cpus": "3-1"}, "cpus"),
        ({"cpus": ","}, "cpus"),
        ({"cpus": "4096"}, "cpus"),
    ],
)
def test_a_bad_value_names_the_setting(flags, named):
    with pytest.raises(SettingsError, match=f"'{named}'"):
        load_settings(flags=flags, environ={})


def test_booleans_from_flags_environment_and_toml(tmp_path):
    assert load_settings(environ={}).access_log is False
    assert load_settings(flags={"access_log": "true"}, environ={}).access_log is True
    assert load_settings(environ={"NAVISTORE_ACCESS_LOG": "on"}).access_log is True
    config = tmp_path / "n.toml"
    config.write_text("access_log = true\n")
    assert load_settings(environ={}, config=str(config)).access_log is True
    assert (
        load_settings(flags={"access_log": "0"}, environ={}, config=str(config)).access_log is False
    )


def test_a_bad_environment_value_names_the_variable():
    with pytest.raises(SettingsError, match="NAVISTORE_PORT"):
        load_settings(environ={"NAVISTORE_PORT": "x"})


def test_unknown_or_broken_config_files_are_refused(tmp_path):
    config = tmp_path / "n.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="unknown keys prot"):
        load_settings(environ={}, config=str(config))
    config.write_text("port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(environ={}, config=str(config))
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(environ={}, config=str(tmp_path / "missing.toml"))


def test_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    assert load_settings(flags={"token_file": str(path)}, environ={}).token == "s3cret"


def test_the_read_token_comes_with_a_token_and_differs_from_it(tmp_path):
    path = tmp_path / "read"
    path.write_text("r-secret\n")
    settings = load_settings(flags={"token": "w", "read_token_file": str(path)}, environ={})
    assert settings.read_token == "r-secret"
    (tmp_path / "token").write_text("w-secret\n")  # the token from its file, the read one given
    both = load_settings(
        flags={"token_file": str(tmp_path / "token"), "read_token": "r"}, environ={}
    )
    assert (both.token, both.read_token) == ("w-secret", "r")
    with pytest.raises(SettingsError, match="'read_token' needs 'token' too"):
        load_settings(flags={"read_token": "r"}, environ={})
    with pytest.raises(SettingsError, match="'read_token' must differ from 'token'"):
        load_settings(environ={"NAVISTORE_TOKEN": "t", "NAVISTORE_READ_TOKEN": "t"})
    with pytest.raises(SettingsError, match="'read_token_file': cannot read"):
        load_settings(flags={"token": "w", "read_token_file": str(tmp_path / "no")}, environ={})


def test_every_setting_is_a_field_with_the_same_default():
    for setting in SETTINGS:
        assert getattr(Settings(), setting.name) == setting.default


@pytest.mark.parametrize(
    ("given", "cpus"),
    [("1", (1,)), ("0,2-3", (0, 2, 3)), (" 3 , 1-2 ,1", (1, 2, 3)), ([2, 0], (0, 2))],
)
def test_cpus_are_read_as_taskset_writes_them(given, cpus, tmp_path):
    assert load_settings(flags={"cpus": given}, environ={}).cpus == cpus
    if isinstance(given, str):
        assert load_settings(environ={"NAVISTORE_CPUS": given}).cpus == cpus
    else:  # a TOML list of numbers
        config = tmp_path / "n.toml"
        config.write_text(f"cpus = {given}\n")
        assert load_settings(environ={}, config=str(config)).cpus == cpus
    assert load_settings(environ={}).cpus is None  # by default the OS decides

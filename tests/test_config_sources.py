"""Configuration conventions: MQTTD_<SECTION>__<KEY> environment settings (same conversion and
checks as the file, errors naming the variable), durations everywhere, `mqttd config show`
(the settings in force and where each came from) and the shipped `mqttd config example`."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from support import uid
from support.clients import Client
from support.process import BrokerProcess, run_mqttd
from support.raw import RawClient

from mqttd import config as C
from mqttd.config import ConfigError, Settings, load_config, load_settings, parse_settings
from mqttd.config_sources import effective, example

ROOT = Path(__file__).resolve().parent.parent


# --- environment ------------------------------------------------------------------------

def test_env_sets_keys_of_every_kind_of_table(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text('[listeners.Main]\nbind = "127.0.0.1"\nport = 1883\n'
                 '[zones.ext]\nmax_inflight = 8\n')
    s = load_settings(str(f), {
        "MQTTD_NODE__NAME": "x",
        "MQTTD_NODE__SYS_INTERVAL": "30s",
        "MQTTD_MQTT__MAX_PACKET_SIZE": "1MB",
        "MQTTD_MQTT__RETAIN_AVAILABLE": "false",
        "MQTTD_MQTT__DENY_SUBSCRIBE": "a/#, b/+",
        "MQTTD_ZONES__EXT__MAX_INFLIGHT": "64",
        "MQTTD_LISTENERS__MAIN__PORT": "1884",  # the file's name, whatever the case
        "MQTTD_STORE__DURABILITY": "off",
        "MQTTD_AUTHZ__NO_MATCH": "allow",
        "MQTTD_LOG__FORMAT": "json",
        "MQTTD_DATA_DIR": "/not/a/setting",  # no "__": not a setting
        "MQTTD_NO_EXTENSIONS": "1",
        "PATH": "/bin",
    })
    assert (s.node, s.sys_interval) == ("x", 30)
    assert s.zones["default"].max_packet_size == 1 << 20
    assert s.zones["default"].retain_available is False
    assert s.zones["default"].deny_subscribe == ["a/#", "b/+"]
    assert s.zones["ext"].max_inflight == 64 and s.zones["ext"].retain_available is False
    assert [(lst.name, lst.port) for lst in s.listeners] == [("Main", 1884)]
    assert s.store.durability == "off" and s.authz.no_match == "allow"
    assert s.log.format == "json"


def test_env_without_a_file_and_a_toml_array() -> None:
    s = load_settings(None, {"MQTTD_LISTENERS__DEFAULT__PORT": "1884",
                             "MQTTD_MQTT__DENY_SUBSCRIBE": '["x/#"]'})
    assert s.listeners[0].port == 1884 and s.listeners[0].bind == "127.0.0.1"
    assert s.zones["default"].deny_subscribe == ["x/#"]


@pytest.mark.parametrize("env,line", [
    ({"MQTTD_MQTT__MAX_PACKET_SIZE": "huge"},
     "MQTTD_MQTT__MAX_PACKET_SIZE (mqtt.max_packet_size): not a size: 'huge'"),
    ({"MQTTD_MQTT__MAX_PAKET_SIZE": "1"},
     "MQTTD_MQTT__MAX_PAKET_SIZE (mqtt.max_paket_size): unknown key (did you mean "
     "max_packet_size?)"),
    ({"MQTTD_LISTENERS__DEFAULT__PORT": "99999"},
     "MQTTD_LISTENERS__DEFAULT__PORT (listeners.default.port): 99999 is out of range"),
    ({"MQTTD_LISTENERS__DEFAULT__PORT": "http"},
     "MQTTD_LISTENERS__DEFAULT__PORT (listeners.default.port): expected an integer, "
     "got 'http'"),
    ({"MQTTD_MQTT__RETAIN_AVAILABLE": "maybe"},
     "MQTTD_MQTT__RETAIN_AVAILABLE (mqtt.retain_available): expected true or false, "
     "got 'maybe'"),
    ({"MQTTD_NODE__SYS_INTERVAL": "soon"},
     "MQTTD_NODE__SYS_INTERVAL (node.sys_interval): not a duration: 'soon'"),
    ({"MQTTD_NOPE__KEY": "1"}, "MQTTD_NOPE__KEY (nope): unknown key"),
    ({"MQTTD_MQTT____X": "1"}, "MQTTD_MQTT____X: not a setting"),
])
def test_env_errors_name_the_variable(env: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env)
    assert err.value.errors[0].startswith(line), err.value.errors


def test_file_and_env_errors_are_all_reported_each_naming_its_source(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[mqtt]\nmax_inflight = 0\n")
    with pytest.raises(ConfigError) as err:
        load_settings(str(f), {"MQTTD_MQTT__IDLE_TIMEOUT": "never"})
    assert sorted(err.value.errors) == sorted([
        f"{f}: mqtt.max_inflight: 0 is out of range (1..65535)",
        "MQTTD_MQTT__IDLE_TIMEOUT (mqtt.idle_timeout): not a duration: 'never' (use seconds "
        "or e.g. \"30s\", \"2h\")"])


def test_real_start_takes_env_settings(tmp_path: Path) -> None:
    """The real daemon: a node name and a zone limit from the environment apply."""
    node = uid("env@")
    with BrokerProcess(env={"MQTTD_NODE__NAME": node,
                            "MQTTD_MQTT__MAX_PACKET_SIZE": "200"}) as b:
        c = Client(b, uid("env-"), version=5)
        try:
            c.connect()
            c.subscribe("$SYS/brokers", 0)
            assert c.expect_message().payload == node.encode()
        finally:
            c.close()
        with RawClient(b.port, 5) as raw:
            assert raw.connect(uid("env-")).properties["maximum_packet_size"] == 200


def test_a_bad_env_setting_stops_start_and_check_with_one_line(tmp_path: Path) -> None:
    f = tmp_path / "ok.toml"
    f.write_text("")
    env = {"MQTTD_MQTT__MAX_INFLIGHT": "lots"}
    for args in (["start", "-c", str(f), "--data-dir", str(tmp_path / "d")],
                 ["config", "check", "-c", str(f)]):
        done = run_mqttd(*args, env=env)
        assert done.returncode == 2, done
        assert "MQTTD_MQTT__MAX_INFLIGHT (mqtt.max_inflight): expected an integer, got " \
               "'lots'" in done.stderr
        assert "Traceback" not in done.stderr


# --- durations --------------------------------------------------------------------------

def _duration_keys() -> list[tuple[str, str]]:
    """Every (section, key) whose value is a duration, found from the dataclasses."""
    sections: list[tuple[str, Any]] = [
        ("mqtt", C.Zone), ("auth", C.AuthSettings), ("authz", C.AuthzSettings),
        ("flapping", C.FlappingSettings), ("store", C.StoreSettings),
        ("listeners.l", C.Listener), ("log", C.LogSettings), ("http", C.HttpSettings)]
    keys = [(name, f.name) for name, cls in sections for f in dataclasses.fields(cls)
            if f.name in C._DURATIONS]
    keys += [("node", k) for k in C._NODE_FIELDS if k in C._DURATIONS]
    return keys


def test_the_duration_keys_are_the_ones_that_take_seconds() -> None:
    keys = {k for _, k in _duration_keys()}
    assert keys >= {"sys_interval", "await_rel_timeout", "idle_timeout",
                    "session_expiry_interval", "max_session_expiry_interval",
                    "server_keepalive", "max_keepalive", "cache_ttl", "window", "ban_time",
                    "apply_interval"}


@pytest.mark.parametrize("section,key", _duration_keys())
def test_every_duration_key_takes_a_duration_string(section: str, key: str) -> None:
    data: dict[str, Any] = {}
    table = data
    for part in section.split("."):
        table = table.setdefault(part, {})
    # (busy_poll's range ends at 10 ms)
    text, seconds = ("2ms", 0.002) if key == "busy_poll" else ("2m", 120)
    table[key] = text
    s = parse_settings(data)
    obj: Any = {"mqtt": s.zones["default"], "node": s, "listeners.l": s.listeners[0]}.get(
        section) or getattr(s, section)
    value = getattr(obj, key if section != "node" else C._NODE_FIELDS[key])
    assert value == seconds
    table[key] = "2 fortnights"
    with pytest.raises(ConfigError) as err:
        parse_settings(data)
    assert f"{section}.{key}: not a duration: '2 fortnights'" in err.value.errors[0]


def test_zone_durations_in_zones_too() -> None:
    s = parse_settings({"zones": {"z": {"idle_timeout": "1500ms",
                                        "session_expiry_interval": "1d"}}})
    assert s.zones["z"].idle_timeout == 1.5 and s.zones["z"].session_expiry_interval == 86400


# --- config show ------------------------------------------------------------------------

def test_config_show_says_where_each_value_came_from(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text('[mqtt]\nmax_inflight = 10\n[zones.ext]\nmax_qos_allowed = 1\n'
                 '[listeners.default]\nbind = "127.0.0.1"\nport = 1883\nzone = "ext"\n'
                 '[listeners.tls]\nbind = "127.0.0.1"\nport = 8883\ntype = "ssl"\n'
                 'certfile = "c.pem"\nkeyfile = "k.pem"\nkeyfile_password = "hunter2"\n')
    done = run_mqttd("config", "show", "-c", str(f), "--json", "--port", "1999",
                     env={"MQTTD_NODE__NAME": "from-env", "MQTTD_DATA_DIR": ""})
    assert done.returncode == 0, done
    rows = {r["key"]: r for r in json.loads(done.stdout)}
    assert rows["mqtt.max_inflight"] == {"key": "mqtt.max_inflight", "value": 10,
                                         "source": "file"}
    assert rows["mqtt.max_packet_size"]["source"] == "default"
    assert rows["zones.ext.max_qos_allowed"]["source"] == "file"
    assert rows["zones.ext.max_inflight"] == {"key": "zones.ext.max_inflight", "value": 10,
                                              "source": "file ([mqtt])"}
    assert rows["node.name"] == {"key": "node.name", "value": "from-env",
                                 "source": "env MQTTD_NODE__NAME"}
    assert rows["listeners.default.port"] == {"key": "listeners.default.port", "value": 1999,
                                              "source": "command line (--port)"}
    assert rows["listeners.tls.certfile"]["value"] == str(tmp_path / "c.pem")
    assert rows["listeners.tls.keyfile_password"]["value"] == "(set, not shown)"
    assert "hunter2" not in done.stdout
    assert rows["log.level"]["source"] == "default"
    # every key of every section is there
    for section, cls in (("store", C.StoreSettings), ("flapping", C.FlappingSettings),
                         ("log", C.LogSettings), ("http", C.HttpSettings)):
        for fld in dataclasses.fields(cls):
            assert f"{section}.{fld.name}" in rows
    human = run_mqttd("config", "show", "-c", str(f), env={"MQTTD_NODE__NAME": "from-env"})
    assert human.returncode == 0, human
    lines = human.stdout.splitlines()
    assert lines[0].split() == ["Key", "Value", "Source"]
    assert any(line.split()[:2] == ["node.name", '"from-env"']
               and line.endswith("env MQTTD_NODE__NAME") for line in lines)


def test_config_show_without_a_file_and_with_a_bad_one(tmp_path: Path) -> None:
    done = run_mqttd("config", "show", "--json")
    assert done.returncode == 0, done
    assert {r["source"] for r in json.loads(done.stdout)} <= {"default", "env MQTTD_DATA_DIR"}
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nmax_inflight = 'x'\n")
    done = run_mqttd("config", "show", "-c", str(bad))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{bad}: mqtt.max_inflight: expected an integer, got a string" in done.stderr


def test_effective_rows_carry_every_setting() -> None:
    rows = effective(load_config(None, {}), {})
    keys = {r.key for r in rows}
    assert {f"mqtt.{f.name}" for f in dataclasses.fields(C.Zone) if f.name != "name"} <= keys
    assert all(r.source == "default" for r in rows)


# --- config example ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def example_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    done = run_mqttd("config", "example")
    assert done.returncode == 0, done
    assert done.stdout == example()
    path = tmp_path_factory.mktemp("example") / "mqttd.toml"
    path.write_text(done.stdout)
    return path


def test_the_example_passes_config_check(example_file: Path) -> None:
    done = run_mqttd("config", "check", "-c", str(example_file))
    assert done.returncode == 0, done
    assert done.stdout == f"{example_file}: ok (1 zones, 1 listeners)\n"


def test_the_example_holds_the_defaults(example_file: Path) -> None:
    """Its values are the embedded defaults: starting from it changes nothing."""
    s = parse_settings(tomllib.loads(example_file.read_text()))
    defaults = Settings()
    for fld in dataclasses.fields(Settings):
        assert getattr(s, fld.name) == getattr(defaults, fld.name), fld.name


def test_the_example_names_every_key(example_file: Path) -> None:
    """Every key appears, set or as a commented example."""
    text = example_file.read_text()

    def named(key: str) -> bool:
        return any(line.lstrip("#").startswith(f"{key} =") for line in text.splitlines())

    missing = [f"{cls.__name__}.{f.name}" for cls in (
        C.Zone, C.Listener, C.AuthSettings, C.AuthzSettings, C.FlappingSettings,
        C.StoreSettings, C.LogSettings, C.HttpSettings)
        for f in dataclasses.fields(cls)
        if f.name not in ("name", "providers", "sources") and not named(f.name)]
    missing += [k for k in C._NODE_FIELDS if k != "log_level" and not named(k)]
    missing += [k for k in ("password_file", "acl_file", "level") if not named(k)]
    assert not missing, f"mqttd/mqttd.toml does not show {missing}"


def test_the_example_is_package_data() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "mqttd.toml" in data["tool"]["setuptools"]["package-data"]["mqttd"]
    assert (ROOT / "mqttd" / "mqttd.toml").read_text() == example()

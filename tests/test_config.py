"""Configuration: `mqttd config check`, errors at start, zone precedence on a real broker, docs.

Precedence is Zone > Global ``[mqtt]`` > embedded default (EMQX's emqx_zone): checked
through what a real broker announces in its MQTT 5 CONNACK on two listeners bound to
two zones.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from support.process import BrokerProcess, run_mqttd
from support.raw import RawClient

from mqttd.config import Listener, LogSettings, Zone, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_check_accepts_a_good_file(tmp_path: Path) -> None:
    f = tmp_path / "good.toml"
    f.write_text('[mqtt]\nmax_inflight = 10\nidle_timeout = "15s"\nmax_packet_size = "64KB"\n'
                 '[zones.ext]\nmax_qos_allowed = 1\n'
                 '[listeners.a]\nbind = "127.0.0.1"\nport = 1884\nzone = "ext"\n')
    r = run_mqttd("config", "check", "-c", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{f}: ok (2 zones, 1 listeners)"


BAD = {
    "[mqtt]\nmax_inflihgt = 3\n":
        "mqtt.max_inflihgt: unknown key (did you mean max_inflight?)",
    "[mqtt]\nmax_qos_allowed = 3\n": "mqtt.max_qos_allowed: 3 is out of range (0..2)",
    "[mqtt]\nretain_available = \"yes\"\n":
        "mqtt.retain_available: expected true or false, got a string",
    "[mqtt]\nmax_inflight = 1.5\n": "mqtt.max_inflight: expected an integer, got a number",
    "[mqtt]\nidle_timeout = \"soon\"\n": "mqtt.idle_timeout: not a duration: 'soon'",
    "[mqtt]\nshared_subscription_strategy = \"fair\"\n":
        "mqtt.shared_subscription_strategy: 'fair' is not one of random, round_robin, "
        "sticky, hash",
    "[zones.z]\nmax_packet_size = \"lots\"\n": "zones.z.max_packet_size: not a size: 'lots'",
    "[listeners.a]\nport = 70000\n": "listeners.a.port: 70000 is out of range (0..65535)",
    "[listeners.a]\nzone = \"nope\"\n":
        "listeners.a.zone: no zone named 'nope' (zones: default)",
    "[mqtt]\nmax_inflight = 0\n": "mqtt.max_inflight: 0 is out of range (1..65535)",
    "[nodes]\nname = \"x\"\n": "nodes: unknown key (did you mean node?)",
}


@pytest.mark.parametrize("text,line", list(BAD.items()), ids=[v.split(":")[0] for v in BAD.values()])
def test_check_reports_each_problem(tmp_path: Path, text: str, line: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    r = run_mqttd("config", "check", "-c", str(f))
    assert r.returncode == 2
    assert r.stderr.splitlines()[0].startswith(f"{f}: {line}"), r.stderr
    assert "Traceback" not in r.stderr


def test_check_reports_every_problem_at_once(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[mqtt]\nmax_inflihgt = 3\nmax_qos_allowed = 7\n[listeners.a]\nzone = \"x\"\n")
    r = run_mqttd("config", "check", "-c", str(f))
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 3, r.stderr


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    r = run_mqttd("config", "check", "-c", str(missing))
    assert r.returncode == 2
    assert r.stderr.strip() == f"{missing}: cannot read: No such file or directory"
    broken = tmp_path / "broken.toml"
    broken.write_text("[mqtt\nmax_inflight = 3\n")
    r = run_mqttd("config", "check", "-c", str(broken))
    assert r.returncode == 2
    assert r.stderr.startswith(f"{broken}: not valid TOML: "), r.stderr
    assert "Traceback" not in r.stderr


def test_start_refuses_a_bad_file_before_listening(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[mqtt]\nmax_qos_allowed = 3\n")
    r = run_mqttd("start", "-c", str(f), "--port", "0", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2
    # one log line (stamped: start-up errors are log records like any other)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR mqttd: "
                        + re.escape(f"{f}: mqtt.max_qos_allowed: 3 is out of range (0..2)"),
                        r.stderr.strip()), r.stderr


def _connack_props(port: int) -> dict[str, object]:
    with RawClient(port, 5) as c:
        connack = c.connect("zone-probe")  # its reason code must be 0
    return connack.properties  # type: ignore[no-any-return]


def test_zone_over_global_over_default() -> None:
    config = (
        "[mqtt]\n"
        "max_qos_allowed = 1\n"           # global: overrides the default 2
        "max_packet_size = \"64KB\"\n"    # global only: inherited by every zone
        "[zones.strict]\n"
        "max_qos_allowed = 0\n"           # zone: overrides the global 1
        "max_topic_alias = 5\n"
        "[listeners.plain]\nbind = \"127.0.0.1\"\nport = 0\n"
        "[listeners.strict]\nbind = \"127.0.0.1\"\nport = 0\nzone = \"strict\"\n"
    )
    with BrokerProcess(config) as broker:
        plain = _connack_props(broker.ports["plain"])
        strict = _connack_props(broker.ports["strict"])
    assert plain["maximum_qos"] == 1
    assert strict["maximum_qos"] == 0
    assert plain["maximum_packet_size"] == strict["maximum_packet_size"] == 65536
    assert plain["topic_alias_maximum"] == Zone().max_topic_alias  # the embedded default
    assert strict["topic_alias_maximum"] == 5


def test_every_key_is_documented() -> None:
    doc = (ROOT / "docs" / "CONFIG.md").read_text()
    keys = [f.name for f in dataclasses.fields(Zone) + dataclasses.fields(Listener)
            + dataclasses.fields(LogSettings) if f.name != "name"]
    missing = [k for k in keys if f"| `{k}` |" not in doc]
    assert not missing, f"docs/CONFIG.md does not describe {missing}"


def test_relative_files_of_access_options_are_taken_from_the_config_files_directory(
        tmp_path: Any, monkeypatch: Any) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "mqttd.toml").write_text(
        '[auth]\npassword_file = "passwd"\n\n[[auth.providers]]\ntype = "jwt"\n'
        'public_key_file = "keys/jwt.pem"\n\n[authz]\nacl_file = "/abs/acl"\n')
    monkeypatch.chdir(tmp_path)  # somewhere else: the working directory must not matter
    settings = load_settings(str(conf_dir / "mqttd.toml"))
    paths = [spec.options.get("path") or spec.options.get("public_key_file")
             for spec in settings.auth.providers]
    assert paths == [str(conf_dir / "passwd"), str(conf_dir / "keys" / "jwt.pem")]
    assert settings.authz.sources[0].options["path"] == "/abs/acl"

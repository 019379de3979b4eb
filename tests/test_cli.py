"""The command line as a new operator meets it: help with defaults, --version, -h, the short
forms ``mqttd status``/``mqttd stop``, and ``mqttd ctl``'s one error form (text or a JSON
object), exit codes, listings that always end with their count, and payloads printed as
text or hex. Real processes and a real daemon."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import WAIT, uid
from support.clients import Client
from support.ctlrun import ctl
from support.process import BrokerProcess, broker_fixture, run_mqttd

from mqttd import SYSDESCR, __version__
from mqttd.ctl.commands import build_table

pytest_plugins = ["support.fixtures"]

# Every module with a listing loaded, so that every `<noun> list` has something to list.
broker = broker_fixture('[modules.delayed]\nenable = true\n[modules.topic_metrics]\n'
                        'enable = true\n[modules.slow_subs]\nenable = true\n')


def mqttd(*args: str) -> subprocess.CompletedProcess[str]:
    return run_mqttd(*args, env={"COLUMNS": "200"})


# --- mqttd itself -----------------------------------------------------------------------------

def test_start_help_shows_defaults_and_no_type_noise() -> None:
    done = mqttd("start", "--help")
    assert done.returncode == 0, done
    text = " ".join(done.stdout.split())  # click wraps at the terminal's width
    for line in ("--bind ADDRESS", "[default: 127.0.0.1]", "--port PORT", "[default: 1883]",
                 "[default: $MQTTD_DATA_DIR or ~/.local/state/mqttd]", "--log-level LEVEL",
                 "--log-format FORMAT", "--log-file FILE", "-d, --daemon", "-h, --help"):
        assert line in text, (line, text)
    for noise in ("<bool>", "<str>", "<int", "╭", "│"):
        assert noise not in text, (noise, text)


def test_version_and_short_help() -> None:
    done = mqttd("--version")
    assert (done.returncode, done.stdout) == (0, f"mqttd {__version__}\n"), done
    assert mqttd("-V").stdout == done.stdout
    for flag in ("-h", "--help"):
        done = mqttd(flag)
        assert done.returncode == 0, done
        assert SYSDESCR in done.stdout
        commands = re.findall(r"^  (\S+)", done.stdout.split("Commands:")[1], re.M)
        assert {"start", "stop", "status", "ctl", "config", "version"} <= set(commands)
    assert mqttd("ctl", "-h").stdout == build_table().help_text()


def test_status_and_stop_are_short_for_ctl(tmp_path: Path) -> None:
    data = tmp_path / "data"
    conf = tmp_path / "m.toml"
    conf.write_text('[listeners.default]\nbind = "127.0.0.1"\nport = 0\n')
    done = mqttd("start", "--daemon", "-c", str(conf), "--data-dir", str(data))
    assert done.returncode == 0, done
    try:
        done = mqttd("status", "--data-dir", str(data))
        assert done.returncode == 0, done
        assert done.stdout.startswith(f"Node mqttd@127.0.0.1 {__version__} is started\n")
        # The same lines but uptime, which may have crossed a second between the two.
        uptime = re.compile(r"uptime +: .*\n")
        assert uptime.sub("", done.stdout) == uptime.sub(
            "", mqttd("ctl", "--data-dir", str(data), "status").stdout)
        data_json = json.loads(mqttd("status", "--json", "--data-dir", str(data)).stdout)
        assert data_json["node"] == "mqttd@127.0.0.1"
    finally:
        done = mqttd("stop", "--data-dir", str(data))
    assert done.returncode == 0, done
    assert "mqttd@127.0.0.1 stopped" in done.stdout
    done = mqttd("status", "--data-dir", str(data))
    assert done.returncode == 69
    assert done.stderr == (f"mqttd ctl: cannot connect to {data / 'mqttd.sock'}: is mqttd "
                           "running?\n")


# --- mqttd ctl: errors --------------------------------------------------------------------------

def test_an_unknown_command_is_a_usage_error_with_or_without_a_daemon(
        tmp_path: Path, broker: BrokerProcess) -> None:
    for where in (tmp_path / "nothing", broker):
        r = ctl(where, "bogus", "list")
        assert r.code == 2, (where, r)
        assert r.err.startswith("mqttd ctl: unknown command 'bogus'"), r
        assert r.out == ""
        r = ctl(where, "clinets", "list")
        assert r.code == 2 and "did you mean clients?" in r.err, r


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_timeout_must_be_positive(broker: BrokerProcess, value: str) -> None:
    r = ctl(broker, "--timeout", value, "status")
    assert r == (2, "", f"mqttd ctl: --timeout must be a positive number of seconds, not "
                        f"{value!r}\n")
    r = ctl(broker, f"--timeout={value}", "--json", "status")
    assert r.code == 2 and json.loads(r.out)["error"]["reason"] == "usage", r


def test_errors_have_one_form_and_a_json_object_under_json(
        tmp_path: Path, broker: BrokerProcess) -> None:
    missing = tmp_path / "nothing"
    cases: list[tuple[BrokerProcess | Path, tuple[str, ...], int, str, str]] = [
        (missing, ("status",), 69, "not_running",
         f"cannot connect to {missing / 'mqttd.sock'}: is mqttd running?"),
        (broker, ("clients", "show", "nobody"), 1, "not_found", "client 'nobody' not found"),
        (broker, ("sessions", "clean", "nobody"), 1, "not_found", "session 'nobody' not found"),
        (broker, ("banned", "del", "clientid", "nobody"), 1, "not_found",
         "ban 'clientid nobody' not found"),
        (broker, ("listeners", "stop", "nope"), 1, "not_found",
         "cannot stop listener nope: not_found"),
        (broker, ("plugins", "unload", "nope"), 1, "not_found",
         "cannot unload plugin nope: not_found"),
        (broker, ("trace", "stop", "topic", "x/y"), 1, "not_found",
         "cannot stop tracing topic x/y: not_found"),
        (broker, ("clients", "show"), 2, "usage", "missing <ClientId>"),
    ]
    for where, args, code, reason, message in cases:
        r = ctl(where, *args)
        assert r.code == code and r.out == "", (args, r)
        assert r.err.splitlines()[0] == f"mqttd ctl: {message}", (args, r)
        r = ctl(where, "--json", *args)
        assert r.code == code and r.err == "", (args, r)
        error = json.loads(r.out)["error"]
        assert {k: error[k] for k in ("code", "reason", "message")} == {
            "code": code, "reason": reason, "message": message}, (args, error)
    # a usage error carries the usage lines, as text and in JSON
    r = ctl(broker, "clients", "bogus")
    lines = r.err.splitlines()
    assert lines[1] == "Usage:" and lines[2].split("#")[0].strip() == "clients list [--local]", r.err
    error = json.loads(ctl(broker, "--json", "clients", "bogus").out)["error"]
    assert error["usage"][0].split("#")[0].strip() == "clients list [--local]" and error["code"] == 2


# --- mqttd ctl: what it prints --------------------------------------------------------------------

def _listings() -> list[str]:
    return sorted({d["command"] for d in build_table().help_data()
                   if d["usage"] == f"{d['command']} list"
                   or d["usage"].startswith(f"{d['command']} list [")})


def test_every_listing_ends_with_its_count_and_says_0_when_empty(
        broker: BrokerProcess) -> None:
    nouns = _listings()
    assert {"clients", "sessions", "subscriptions", "routes", "retained", "banned", "trace",
            "plugins", "listeners", "users"} <= set(nouns)
    empty = {"clients": "0 clients", "sessions": "0 sessions",
             "subscriptions": "0 subscriptions", "routes": "0 routes", "banned": "0 bans",
             "trace": "0 traces", "plugins": "0 plugins", "users": "0 users",
             "topic-metrics": "0 topics", "slow-subs": "0 slow subscriptions"}
    for noun in nouns:
        r = ctl(broker, noun, "list")
        assert r.code == 0, (noun, r)
        last = r.out.splitlines()[-1]
        assert re.fullmatch(r"\d+ [A-Za-z ]+", last), (noun, r.out)
        if noun in empty:
            assert last == empty[noun], (noun, r.out)


@contextlib.contextmanager
def _client(b: BrokerProcess, **kwargs: Any) -> Iterator[Client]:
    c = Client(b, uid("cli-"), **kwargs)
    c.connect()
    try:
        yield c
    finally:
        c.close()


def test_clients_list_and_show_count_sent_messages_alike(broker: BrokerProcess) -> None:
    with _client(broker, version=5) as sub, _client(broker, version=5) as pub:
        sub.subscribe("cli/sent/#", qos=1)
        for i in range(3):
            pub.publish(f"cli/sent/{i}", b"x", qos=i % 2)
        sub.expect_messages(3)
        cid = sub.c._client_id.decode()
        shown = json.loads(ctl(broker, "--json", "clients", "show", cid).out)
        lines = ctl(broker, "clients", "list").out.splitlines()
        header = re.split(r" {2,}", lines[0])
        assert "Delivered" not in header and "Sent" in header
        row = next(ln for ln in lines if ln.startswith(cid + " "))
        cells = re.split(r" {2,}", row.strip())
        assert cells[header.index("Sent")].strip() == str(shown["send_msg"]) == "3"
        text = ctl(broker, "clients", "show", cid).out
        assert re.search(r"^send_msg +: 3$", text, re.M), text
        assert re.search(r"^delivered +: 1$", text, re.M), text  # the one QoS 1 acked


def test_retained_show_prints_text_or_hex_not_python_reprs(broker: BrokerProcess) -> None:
    topic = uid("cli/ret/")
    with _client(broker, version=5) as pub:
        pub.publish(topic + "/text", "héllo wörld", qos=1, retain=True)
        pub.publish(topic + "/bin", b"\x00\x01\xff", qos=1, retain=True,
                    properties=_user_props([("unit", "°C"), ("k", "v")]))
        r = ctl(broker, "retained", "show", topic + "/text")
        assert r.code == 0 and "payload      : héllo wörld\n" in r.out, r
        r = ctl(broker, "retained", "show", topic + "/bin")
        assert "payload      : hex:0001ff\n" in r.out, r
        assert "properties   : {user_property=[unit=°C, k=v]}" in r.out, r
        assert "b'" not in r.out and "[('" not in r.out
        ctl(broker, "retained", "clean", topic + "/#")


def _user_props(pairs: list[tuple[str, str]]) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = pairs
    return props


def test_one_sysdescr(broker: BrokerProcess) -> None:
    with _client(broker, version=5) as c:
        c.subscribe("$SYS/brokers/+/sysdescr", qos=0)
        sysdescr = c.expect_message(WAIT).payload.decode()
    broker_kv = ctl(broker, "broker").out
    assert re.search(r"^sysdescr +: (.*)$", broker_kv, re.M)[1] == sysdescr == SYSDESCR  # type: ignore[index]
    assert SYSDESCR in mqttd("--help").stdout

"""Live configuration reload against the real daemon: ``mqttd ctl conf reload`` and SIGHUP
re-read the file it was started with, check all of it first (a bad file changes nothing),
apply what can change live and report what needs a restart (docs/OPERATIONS.md "Reload")."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from typing import Any

import pytest
from support import uid
from support.clients import Client, prop
from support.process import BrokerProcess, checked_broker, log_size, run_mqttd, wait_log

pytest_plugins = ["support.fixtures"]

#: The listener every test keeps ([listeners.*] given: BrokerProcess adds none).
DEFAULT = '[listeners.default]\nbind = "127.0.0.1"\nport = 0\n'
#: A QoS 1 publish taken: 0, or MQTT 5's 0x10 (no subscriber matched).
ACCEPTED = (0, 0x10)


def ctl(b: BrokerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_mqttd("ctl", "--data-dir", str(b.data_dir), *args)


def reload_json(b: BrokerProcess) -> Any:
    done = ctl(b, "--json", "conf", "reload")
    assert done.returncode == 0, (done.stdout, done.stderr)
    return json.loads(done.stdout)


def keys(report: Any, part: str) -> dict[str, str]:
    field = "change" if part == "applied" else "why"
    return {row["key"]: row[field] for row in report[part]}


def rc(value: Any) -> int:
    return int(value.value) if hasattr(value, "value") else int(value)


def test_sighup_applies_a_zone_limit_while_a_client_publishes() -> None:
    base = '[mqtt]\nmax_packet_size = "64KB"\n' + DEFAULT
    with checked_broker(base) as b:
        a = Client(b, uid("a-"), version=5)
        a.connect()
        assert a.subscribe("load/#", 1) == [1]
        for i in range(20):
            assert a.publish("load/x", f"m{i}".encode() * 100, 1) == 0
        start = log_size(b)
        b.config_path.write_text('[mqtt]\nmax_packet_size = 1024\n'
                                 'deny_subscribe = ["secret/#"]\n' + DEFAULT)
        b.proc.send_signal(signal.SIGHUP)
        wait_log(b, "configuration reloaded by SIGHUP", start=start)
        log = b.log()[start:]
        assert "reload: mqtt.max_packet_size: 65536 → 1024 (clients that connect from now " \
               "on)" in log
        assert "reload: mqtt.deny_subscribe: [] → [\"secret/#\"] (connected clients too)" in log
        # The connected client stays: it keeps publishing what its CONNACK allowed...
        for _ in range(20):
            assert a.publish("load/x", b"y" * 2000, 1) == 0
        assert a.disconnected is None
        received = [a.expect_message() for _ in range(40)]
        assert len(received[-1].payload) == 2000
        # ... and a value its channel reads at each use applies to it at once.
        assert a.subscribe("secret/x", 1) == [0x80]
        # A client connecting now is told the new limit and held to it.
        c = Client(b, uid("c-"), version=5)
        _flags, code, props = c.connect()
        assert prop(props, "MaximumPacketSize") == 1024
        c.publish("load/x", b"z" * 2000, 1, wait=False)
        code, _props = c.wait_disconnected()
        assert rc(code) == 0x95  # packet too large
        c.close()
        assert a.publish("load/x", b"still here", 1) == 0
        a.close()


def test_ctl_conf_reload_reports_applied_and_restart_keys() -> None:
    with checked_broker(DEFAULT) as b:
        a = Client(b, uid("a-"), version=4)
        a.connect()
        b.config_path.write_text(
            '[node]\nname = "other@127.0.0.1"\nsys_interval = "2s"\n'
            '[mqtt]\nmax_inflight = 8\nshared_subscription_strategy = "sticky"\n'
            '[store]\ndurability = "off"\nmax_size = "64MB"\n'
            '[log]\nconnection_messages = false\n' + DEFAULT)
        done = ctl(b, "conf", "reload")
        assert done.returncode == 0, done.stderr
        text = done.stdout
        assert text.startswith(f"Reloaded {b.config_path}:")
        assert "  applied: mqtt.max_inflight: 32 → 8 (clients that connect from now on)" in text
        assert "  applied: node.sys_interval: 10s → 2s" in text
        assert "  applied: store.max_size: 0 → 67108864" in text
        assert "  applied: log.connection_messages: true → false" in text
        assert "  needs a restart: node.name: read at start" in text
        assert "  needs a restart: store.durability: the store is opened at start" in text
        assert "  needs a restart: mqtt.shared_subscription_strategy: " in text
        # Once applied, the same file again changes nothing; the restart keys stay reported.
        report = reload_json(b)
        assert report["file"] == str(b.config_path)
        assert report["applied"] == [] and report["failed"] == []
        assert set(keys(report, "restart")) == {"node.name", "store.durability",
                                                "mqtt.shared_subscription_strategy"}
        # The connected client never noticed; the $SYS worker runs at the new interval.
        assert a.publish("t", b"x", 1) == 0 and a.disconnected is None
        wait_log(b, "reload: node.sys_interval: 10s → 2s")
        s = Client(b, uid("s-"), version=4)
        s.connect()
        assert s.subscribe("$SYS/brokers/+/uptime", 0) == [0]
        s.expect_message()  # within the bounded wait: published every 2 s now
        s.close()
        a.close()


def test_listeners_added_changed_and_removed() -> None:
    with checked_broker(DEFAULT) as b:
        old_port = b.port
        a = Client(b, uid("a-"), version=5)
        a.connect()
        b.config_path.write_text(DEFAULT + '[listeners.extra]\nbind = "127.0.0.1"\nport = 0\n'
                                 "max_connections = 10\n")
        report = reload_json(b)
        added = keys(report, "applied")["listeners.extra"]
        assert added.startswith("added: listening on 127.0.0.1:")
        extra_port = int(added.rsplit(":", 1)[1])
        e = Client(b, uid("e-"), version=5, port=extra_port)
        e.connect()
        # An in-place change keeps the listener and its clients.
        b.config_path.write_text(DEFAULT + '[listeners.extra]\nbind = "127.0.0.1"\nport = 0\n'
                                 "max_connections = 20\n")
        report = reload_json(b)
        assert keys(report, "applied") == {"listeners.extra": "max_connections 10 → 20"}
        assert e.publish("t", b"x", 1) in ACCEPTED and e.disconnected is None
        # Removing the first listener stops it: its client is closed, its port refuses.
        b.config_path.write_text('[listeners.extra]\nbind = "127.0.0.1"\nport = 0\n'
                                 "max_connections = 20\n")
        report = reload_json(b)
        assert keys(report, "applied") == {
            "listeners.default": f"removed: no longer listening on 127.0.0.1:{old_port}"}
        code, _props = a.wait_disconnected()
        assert rc(code) == 0x8B  # server shutting down
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", old_port), timeout=5).close()
        assert e.publish("t", b"still", 1) in ACCEPTED and e.disconnected is None
        # A changed port is a stop and a start: the listener moves.
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        new_port = free.getsockname()[1]
        free.close()
        b.config_path.write_text(f'[listeners.extra]\nbind = "127.0.0.1"\nport = {new_port}\n'
                                 "max_connections = 20\n")
        report = reload_json(b)
        change = keys(report, "applied")["listeners.extra"]
        assert change.startswith(f"port changed: restarted on 127.0.0.1:{new_port}"), change
        e.wait_disconnected()
        m = Client(b, uid("m-"), version=5, port=new_port)
        m.connect()
        m.close()
        a.close()
        e.close()


def test_a_bad_file_changes_nothing_and_says_why() -> None:
    with checked_broker('[mqtt]\nmax_inflight = 16\n' + DEFAULT) as b:
        a = Client(b, uid("a-"), version=5)
        a.connect()
        path = b.config_path
        path.write_text('[mqtt]\nmax_inflight = 4\nmax_packet_size = "huge"\n'
                        "max_qos_allowd = 1\n" + DEFAULT
                        + '[listeners.tls]\nbind = "127.0.0.1"\nport = 0\ntype = "ssl"\n'
                          'certfile = "missing.pem"\nkeyfile = "missing.key"\n')
        done = ctl(b, "conf", "reload")
        assert done.returncode == 1, done
        err = done.stderr
        assert err.startswith("mqttd ctl: the configuration was not reloaded, nothing changed:")
        assert f"{path}: mqtt.max_packet_size: not a size: 'huge'" in err
        assert f"{path}: mqtt.max_qos_allowd: unknown key (did you mean max_qos_allowed?)" in err
        assert "Traceback" not in err
        # Past the parser, the files are checked too: still nothing changes.
        path.write_text('[mqtt]\nmax_inflight = 4\n' + DEFAULT
                        + '[listeners.tls]\nbind = "127.0.0.1"\nport = 0\ntype = "ssl"\n'
                          'certfile = "missing.pem"\nkeyfile = "missing.key"\n')
        done = ctl(b, "--json", "conf", "reload")
        assert done.returncode == 1
        error = json.loads(done.stdout)["error"]
        assert error["reason"] == "bad_config"
        assert f"{path}: listeners.tls.certfile: " in error["message"]
        # SIGHUP with the bad file: logged, the daemon stays, nothing changed.
        start = log_size(b)
        b.proc.send_signal(signal.SIGHUP)
        wait_log(b, "reload asked by SIGHUP failed, nothing changed: ", start=start)
        assert b.proc.poll() is None
        assert "listener tls on" not in b.log()
        # The old settings are in force: a good file shows max_inflight 16 → 4.
        path.write_text('[mqtt]\nmax_inflight = 4\n' + DEFAULT)
        report = reload_json(b)
        assert keys(report, "applied") == {
            "mqtt.max_inflight": "16 → 4 (clients that connect from now on)"}
        assert a.publish("t", b"x", 1) in ACCEPTED and a.disconnected is None
        a.close()

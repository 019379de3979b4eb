"""The broker's log as an operator reads it: one line per client connect, refusal and
disconnect (with why), ``[log]``'s outputs (text or JSON lines, standard error, a file
reopened on SIGHUP or rotated by size, syslog) and stamped start-up errors. Real daemons,
real clients."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from support import WAIT, builder as B, uid
from support.clients import Client
from support.process import MQTTD, BrokerProcess, checked_broker, log_size, run_mqttd, wait_log
from support.raw import RawClient

from mqttd.access.password_file import hash_password
from mqttd.cli.ctl import main as ctl_main

pytest_plugins = ["support.fixtures"]

#: A text log line: date, time with milliseconds, level, logger.
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+: ")
PASSWORD = "pa55-never-logged"


def _passwd(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    path.write_text(f"alice:{hash_password(PASSWORD.encode(), 1000).encode()}\n")
    return path


def _line(b: BrokerProcess, text: str, start: int) -> str:
    """The whole log line holding ``text`` (after offset ``start``), once it is logged."""
    wait_log(b, text, start=start)
    return next(ln for ln in b.log()[start:].splitlines() if text in ln)


def test_connect_refusal_and_every_disconnect_reason_get_one_info_line(tmp_path: Path) -> None:
    config = (f'[auth]\npassword_file = "{_passwd(tmp_path)}"\n'
              "[zones.default]\nallow_anonymous = true\n")
    with checked_broker(config, extra_args=["--log-level", "info"]) as b:
        # connect and a normal disconnect: who, from where, how; the user name, no password
        cid = uid("log-")
        start = log_size(b)
        c = Client(b, cid, version=5, keepalive=30, username="alice", password=PASSWORD)
        c.connect()
        line = _line(b, f"client {cid} connected from 127.0.0.1:", start)
        assert STAMP.match(line) and " INFO mqttd.clients: " in line, line
        assert line.endswith("(listener default, tcp, MQTT 5, clean start 1, keepalive 30, "
                             "username alice)"), line
        c.disconnect()
        line = _line(b, f"client {cid} disconnected from 127.0.0.1:", start)
        assert line.endswith("(listener default): normal (client disconnected)"), line

        # 3.1.1, persistent session, no user name
        cid = uid("log-")
        with RawClient(b, 4) as r:
            r.connect(cid, clean=False, keepalive=0)
            line = _line(b, f"client {cid} connected", start)
            assert line.endswith("(listener default, tcp, MQTT 3.1.1, clean start 0, "
                                 "keepalive 0, no username)"), line

        # a wrong password: the refusal with its CONNACK code and the provider's reason
        cid = uid("log-")
        c = Client(b, cid, version=5, username="alice", password="wrong-" + PASSWORD)
        assert c.connect(expect_ok=False)[1] == 0x86
        c.close()
        line = _line(b, f"client {cid} refused from 127.0.0.1:", start)
        assert "(listener default, tcp, MQTT 5): CONNACK 0x86 " in line, line

        # a protocol error, with the code the client was sent
        cid = uid("log-")
        with RawClient(b, 5) as r:
            r.connect(cid)
            r.send(B.connect(cid, level=5))
            r.expect_closed()
        line = _line(b, f"client {cid} disconnected", start)
        assert line.endswith("protocol_error 0x82 (second CONNECT)"), line

        # a keepalive timeout (1.5 x 1 s of silence)
        cid = uid("log-")
        with RawClient(b, 4) as r:
            r.connect(cid, keepalive=1)
            line = _line(b, f"client {cid} disconnected", start)
        assert "keepalive_timeout 0x8D (keepalive timeout)" in line, line

        # a takeover and an operator's kick
        cid = uid("log-")
        first = Client(b, cid, version=5)
        first.connect()
        second = Client(b, cid, version=5)
        second.connect()
        line = _line(b, f"client {cid} disconnected", start)
        assert "takeovered 0x8E (session taken over)" in line, line
        first.close()
        assert ctl_main(["--data-dir", str(b.data_dir), "clients", "kick", cid]) == 0
        after = b.log().index(line) + len(line)
        line = _line(b, f"client {cid} disconnected", after)
        assert "kicked 0x98 (kicked by the operator)" in line, line
        second.close()
        assert PASSWORD not in b.log()


def test_connect_and_close_lines_name_the_clients_own_address(tmp_path: Path) -> None:
    # The address is made when a line asks for it (not kept per idle client): the close
    # lines, written after the socket is gone, still name the client's own port, also
    # after a reset (RST), when the kernel no longer gives a socket's peer (ENOTCONN).
    with checked_broker("", extra_args=["--log-level", "info"]) as b:
        start = log_size(b)
        for how in ("disconnect", "drop", "reset"):
            cid = uid("addr-")
            r = RawClient(b, 4)
            try:
                r.connect(cid, keepalive=0)
                peer = "127.0.0.1:%d" % r.sock.getsockname()[1]
                line = _line(b, f"client {cid} connected", start)
                assert f"client {cid} connected from {peer} (" in line, line
                if how == "disconnect":
                    r.send(B.disconnect())
                elif how == "reset":  # (SO_LINGER 0: the close sends RST, not FIN)
                    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
            finally:
                r.close()
            line = _line(b, f"client {cid} disconnected", start)
            assert f"client {cid} disconnected from {peer} (" in line, line
            assert ("connection lost" in line) == (how == "reset"), line


def test_connection_messages_off_keeps_only_refusals(tmp_path: Path) -> None:
    config = (f'[auth]\npassword_file = "{_passwd(tmp_path)}"\n'
              "[zones.default]\nallow_anonymous = true\n"
              "[log]\nconnection_messages = false\n")
    with checked_broker(config, extra_args=["--log-level", "info"]) as b:
        cid = uid("quiet-")
        c = Client(b, cid, version=5, username="alice", password=PASSWORD)
        c.connect()
        c.disconnect()
        refused = uid("quiet-")
        c = Client(b, refused, version=4, username="alice", password="nope")
        c.connect(expect_ok=False)
        c.close()
        wait_log(b, f"client {refused} refused")  # always logged: an operator's question
        assert f"client {cid} " not in b.log()


def _start(tmp_path: Path, config: str, *args: str, log: str = "data/broker.log"
           ) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``mqttd start`` whose log goes to a file of its own: wait until it listens there."""
    conf = tmp_path / "mqttd.toml"
    conf.write_text(config + '\n[listeners.default]\nbind = "127.0.0.1"\nport = 0\n')
    out = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115 (the process's own output)
    proc = subprocess.Popen([*MQTTD, "start", "-c", str(conf), "--data-dir",
                             str(tmp_path / "data"), *args], stdout=out, stderr=out)
    out.close()
    path = tmp_path / log
    deadline = time.monotonic() + WAIT * 3
    while True:
        text = path.read_text() if path.exists() else ""
        m = re.search(r"listener default on 127\.0\.0\.1:(\d+)", text)
        if m:
            return proc, int(m.group(1)), path
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no listener in {path}:\n{text}\n"
                                 f"{(tmp_path / 'stderr.txt').read_text()}")
        time.sleep(0.02)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(WAIT * 2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def _wait_file(path: Path, text: str) -> str:
    deadline = time.monotonic() + WAIT
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        assert time.monotonic() < deadline, f"{text!r} not in {path}:\n{content}"
        time.sleep(0.02)


def test_json_lines_to_a_file_reopened_on_sighup_with_the_client_still_connected(
        tmp_path: Path) -> None:
    # The file says text; the command line's --log-format wins.
    proc, port, path = _start(tmp_path, '[log]\nformat = "text"\nfile = "broker.log"\n',
                              "--log-format", "json", "--log-level", "info")
    try:
        b = _Port(port)
        cid = uid("json-")
        c = Client(b, cid, version=5, keepalive=20, username="carol")  # type: ignore[arg-type]
        c.connect()
        c.subscribe("hup/#", qos=1)
        _wait_file(path, f'"client_id": "{cid}"')
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for rec in records:
            assert set(rec) >= {"time", "level", "logger", "message"}, rec
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"]), rec
        connected = next(r for r in records if r.get("event") == "connected")
        assert connected["level"] == "info" and connected["logger"] == "mqttd.clients"
        assert {k: connected[k] for k in ("client_id", "listener", "transport", "protocol",
                                          "clean_start", "keepalive", "username")} == {
            "client_id": cid, "listener": "default", "transport": "tcp", "protocol": "MQTT 5",
            "clean_start": True, "keepalive": 20, "username": "carol"}
        assert connected["peer"].startswith("127.0.0.1:")

        # logrotate: move the file away, SIGHUP; the broker writes a new one and lives on
        rotated = path.with_name("broker.log.1")
        path.rename(rotated)
        proc.send_signal(signal.SIGHUP)
        _wait_file(path, "SIGHUP received: log file reopened")
        c.publish("hup/1", b"after", qos=1)
        assert c.expect_message().payload == b"after"  # still connected through it
        c.disconnect()
        _wait_file(path, f"client {cid} disconnected")
        assert f"client {cid} disconnected" not in rotated.read_text()
        assert _stop(proc) == 0
        assert "mqttd stopped" in path.read_text()
        assert (tmp_path / "stderr.txt").read_text() == ""  # everything went to the file
    finally:
        if proc.poll() is None:
            _stop(proc)


class _Port:
    """What support.clients.Client needs of a broker: its host and port."""

    def __init__(self, port: int) -> None:
        self.host = "127.0.0.1"
        self.port = port


def test_size_rotation_keeps_the_configured_number_of_files(tmp_path: Path) -> None:
    proc, port, path = _start(
        tmp_path, '[log]\nfile = "logs/mqttd.log"\nmax_size = "1KB"\nrotate = 2\n',
        "--log-level", "info", log="data/logs/mqttd.log")
    try:
        for _ in range(20):
            with RawClient(port, 4) as r:
                r.connect(uid("rot-"))
        last = uid("rot-")
        with RawClient(port, 4) as r:
            r.connect(last)
        _wait_file(path, f"client {last} connected")
        # Listed once the broker has stopped: a rollover renames .1 to .2 before the live file to
        # .1, so a listing taken while the broker still logs (its client's disconnect) can fall
        # between the two renames.
        assert _stop(proc) == 0
        names = sorted(p.name for p in path.parent.iterdir())
        assert names == ["mqttd.log", "mqttd.log.1", "mqttd.log.2"], names
        for p in path.parent.iterdir():
            assert p.stat().st_size <= 1024 + 400, p  # a line past the limit at most
            assert all(STAMP.match(ln) for ln in p.read_text().splitlines()), p.read_text()
    finally:
        if proc.poll() is None:
            _stop(proc)


def test_syslog_gets_every_line_too() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(WAIT)
        addr = "127.0.0.1:%d" % server.getsockname()[1]
        config = f'[log]\nsyslog = true\nsyslog_address = "{addr}"\nsyslog_facility = "local3"\n'
        with checked_broker(config, extra_args=["--log-level", "info"]) as b:
            seen = []
            for _ in range(50):
                seen.append(server.recv(65536).decode())
                if "listener default on" in seen[-1]:
                    break
            # <PRI> = local3 (19) * 8 + info (6); syslog stamps the time itself
            line = seen[-1]
            assert line.startswith("<158>mqttd[%d]: INFO mqttd: listener default on"
                                   % b.proc.pid), seen
            assert "listener default on" in b.log()  # and standard error still


def test_start_up_errors_are_stamped_log_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[log]\nformat = "xml"\nrotate = 0\n')
    done = run_mqttd("start", "-c", str(bad), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2, done
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and all(STAMP.match(ln) and " ERROR mqttd: " in ln for ln in lines)
    assert lines[0].endswith(f"{bad}: log.format: 'xml' is not one of text, json"), lines
    assert lines[1].endswith(f"{bad}: log.rotate: 0 is out of range (1..1000)"), lines

    # a log file that cannot be opened
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    conf = tmp_path / "m.toml"
    conf.write_text(f'[log]\nfile = "{blocker}/mqttd.log"\n')
    done = run_mqttd("start", "-c", str(conf), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 1, done
    assert STAMP.match(done.stderr) and "ERROR mqttd: log.file: cannot open " in done.stderr
    assert "Traceback" not in done.stderr

    # a start that fails later (the port is taken) is a stamped line too
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = run_mqttd("start", "--port", str(taken.getsockname()[1]), "--data-dir",
                         str(tmp_path / "d"))
    assert done.returncode == 1, done
    errors = [ln for ln in done.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and STAMP.match(errors[0]), done.stderr
    assert all(STAMP.match(ln) for ln in done.stderr.splitlines()), done.stderr


@pytest.mark.parametrize("value", ["yes", "loud"])
def test_log_options_on_the_command_line_are_checked(tmp_path: Path, value: str) -> None:
    flag = "--log-format" if value == "yes" else "--log-level"
    done = run_mqttd("start", flag, value, "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"mqttd: {flag} must be one of "), done.stderr


def test_daemon_log_file_is_reopened_on_sighup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    conf = tmp_path / "m.toml"
    conf.write_text('[listeners.default]\nbind = "127.0.0.1"\nport = 0\n')
    done = run_mqttd("start", "--daemon", "-c", str(conf), "--data-dir", str(data))
    assert done.returncode == 0, done
    pid = int((data / "mqttd.pid").read_text())
    try:
        log = data / "mqttd.log"
        assert STAMP.match(log.read_text()), log.read_text()
        log.rename(data / "mqttd.log.1")
        os.kill(pid, signal.SIGHUP)
        _wait_file(log, "SIGHUP received: log file reopened")
    finally:
        done = run_mqttd("stop", "--data-dir", str(data))
    assert done.returncode == 0, done
    assert "mqttd stopped" in log.read_text()

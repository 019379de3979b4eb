"""``mqttd ctl`` against a real daemon (``mqttd start`` in a subprocess) with real clients.

Most commands run the CLI in this process (``mqttd.cli.ctl.main`` with stdout and
stderr captured: the same code as the ``mqttd ctl`` entry point, without a Python
start-up per call); exit codes, the not-running message, Ctrl-C, ``stop`` and
``start --daemon`` run the real executable. Every wait is bounded; processes are
stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import WAIT, uid
from support.clients import Clients, mosquitto_pub
from support.ctlrun import ctl, ctl_json, ok
from support.process import BrokerProcess, assert_clean_log, broker_fixture, run_mqttd

from mqttd.ctl import protocol as P
from mqttd.ctl.commands import build_table


def data_dir(broker: BrokerProcess) -> str:
    return str(broker.dir / "data")


#: The real ``python -m mqttd <args>``, output captured.
mqttd = run_mqttd


def ctl_proc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``python -m mqttd ctl <args>``."""
    return mqttd("ctl", *args, env=env)


def wait_until(predicate: Any, what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


broker = broker_fixture()


@pytest.fixture
def paho(broker: BrokerProcess) -> Iterator[Clients]:
    """``paho(client_id, **kwargs)``: a connected paho client, stopped after the test."""
    made = Clients(broker)
    yield made
    made.close_all()


# --- the socket, the data directory, exit codes ---------------------------------------------

def test_socket_and_data_dir_permissions(broker: BrokerProcess) -> None:
    d = Path(data_dir(broker))
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    sock = d / P.SOCKET_NAME
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert (d / P.PID_NAME).read_text().strip() == str(broker.proc.pid)


def test_not_running_exits_69(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    r = ctl_proc("--data-dir", str(missing), "status")
    assert r.returncode == 69
    assert r.stderr == (f"mqttd ctl: cannot connect to {missing / P.SOCKET_NAME}: is mqttd "
                        "running?\n")
    assert r.stdout == ""
    # MQTTD_DATA_DIR is where it looks without --data-dir (as mqttd start places it)
    r = ctl_proc("clients", "list", env={"MQTTD_DATA_DIR": str(missing)})
    assert r.returncode == 69, r
    assert f"cannot connect to {missing / P.SOCKET_NAME}" in r.stderr
    # -c FILE: the configuration's node.data_dir, as mqttd start -c FILE would use
    cfg = tmp_path / "mqttd.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "from-config"}"\n')
    r = ctl_proc("-c", str(cfg), "status")
    assert r.returncode == 69
    assert f"cannot connect to {tmp_path / 'from-config' / P.SOCKET_NAME}" in r.stderr
    # a stale socket file (nobody listening) is "not running" too
    stale = tmp_path / "stale"
    stale.mkdir(mode=0o700)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale / P.SOCKET_NAME))
    s.close()
    r = ctl(str(stale), "status")
    assert r.code == 69 and "is mqttd running?" in r.err


def test_bad_arguments_exit_2_with_usage(tmp_path: Path, broker: BrokerProcess) -> None:
    # checked before connecting: a typo is a usage error even when nothing runs
    r = ctl_proc("--data-dir", str(tmp_path), "clients", "bogus")
    assert r.returncode == 2
    assert "unknown subcommand 'bogus' of clients" in r.stderr
    assert "clients show <ClientId>" in r.stderr and "# Show a client" in r.stderr
    for args, text in [(("clients", "show"), "missing <ClientId>"),
                       (("sessions", "list", "sometimes"), "is not one of persistent"),
                       (("clients", "show", "a", "b"), "unexpected argument 'b'"),
                       (("trace", "client", "c", "--bogus"), "unknown option --bogus"),
                       (("clinets", "list"), "did you mean clients?"),
                       (("subscriptions", "add", "c", "t", "3"), "QoS should be 0, 1, 2"),
                       (("log", "level", "loud"), "level must be one of"),
                       (("trace", "topic", "a/#/b"), "bad topic filter"),
                       (("--timeout",), "--timeout needs a value")]:
        r = ctl(broker, *args)
        assert r.code == 2, (args, r)
        assert text in r.err, (args, r.err)
        assert r.out == ""


def test_other_failures_exit_1_on_stderr(broker: BrokerProcess) -> None:
    for args, text in [(("clients", "show", "nobody"), "client 'nobody' not found"),
                       (("clients", "kick", "nobody"), "client 'nobody' not found"),
                       (("sessions", "show", "nobody"), "session 'nobody' not found"),
                       (("subscriptions", "add", "nobody", "t", "1"),
                        "session 'nobody' not found"),
                       (("routes", "show", "no/such/topic"), "route 'no/such/topic' not found"),
                       (("listeners", "stop", "nope"), "cannot stop listener nope: not_found"),
                       (("trace", "stop", "client", "nobody"),
                        "cannot stop tracing clientid nobody: not_found")]:
        r = ctl(broker, *args)
        assert r.code == 1, (args, r)
        assert r.err == f"mqttd ctl: {text}\n" and r.out == "", (args, r)


def test_help_is_the_registry(tmp_path: Path, broker: BrokerProcess) -> None:
    expected = build_table().help_text()
    assert ok(broker, "help") == expected  # from the daemon
    r = ctl_proc("--data-dir", str(tmp_path), "help")  # no daemon: the same registry
    assert r.returncode == 0 and r.stdout == expected
    assert ok(broker, "--help") == expected
    assert ok(broker) == expected
    lines = ok(broker, "help", "trace").splitlines()
    assert lines[0].startswith("trace client <ClientId> [--file <File>]")
    data = ctl_json(broker, "help")
    usages = [d["usage"] for d in data]
    assert "clients list [--local]" in usages and "stop" in usages
    # every usage line of the help is accepted by the parser (the same text is the grammar)
    table = build_table()
    for cmd in table.commands():
        assert table.usage_lines(cmd.noun)


def test_protocol_version_is_checked(broker: BrokerProcess) -> None:
    path = os.path.join(data_dir(broker), P.SOCKET_NAME)

    def talk(request: bytes) -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(WAIT)
            s.connect(path)
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return [json.loads(line) for line in data.splitlines()]

    frames = talk(P.encode({"proto": P.PROTOCOL, "v": 99, "argv": ["status"]}))
    assert frames[0]["t"] == "hello" and frames[0]["v"] == P.VERSION
    assert "control protocol v99 is not supported" in frames[1]["s"]
    assert frames[-1] == {"t": "exit", "code": 1}
    frames = talk(b"GET / HTTP/1.0\r\n\r\n")
    assert frames[1]["t"] == "err" and frames[-1] == {"t": "exit", "code": 1}
    frames = talk(P.encode({"proto": P.PROTOCOL, "v": P.VERSION, "argv": ["status"],
                            "json": True}))
    assert [f["t"] for f in frames] == ["hello", "out", "exit"]
    assert json.loads(frames[1]["s"])["pid"] == broker.proc.pid


# --- node commands --------------------------------------------------------------------------

def test_status_broker_vm_log(broker: BrokerProcess) -> None:
    out = ok(broker, "status")
    assert out.startswith("Node mqttd@127.0.0.1 0.1.0 is started\n")
    assert "speedups  : codec=" in out and "uptime    : " in out
    data = ctl_json(broker, "status")
    assert data["pid"] == broker.proc.pid and data["status"] == "started"
    from mqttd._accel import LOADED
    assert data["speedups"] == LOADED
    out = ok(broker, "broker")
    assert [line.split(":")[0].strip() for line in out.splitlines()] == [
        "sysdescr", "version", "uptime", "datetime"]
    assert ctl_json(broker, "broker")["version"] == "0.1.0"
    out = ok(broker, "vm")
    for key in ("memory/rss", "cpu/load1", "io/active_fds", "asyncio/tasks", "asyncio/lag_ms"):
        assert key in out
    vm = ctl_json(broker, "vm")
    assert vm["memory"]["rss"] > 1 << 20 and vm["io"]["active_fds"] > 3
    assert vm["asyncio"]["tasks"] >= 1 and vm["asyncio"]["lag_ms"] >= 0
    assert ok(broker, "log", "level") == "debug\n"
    try:
        assert ok(broker, "log", "level", "warning") == "warning\n"
        assert ctl_json(broker, "log", "level") == {"level": "warning"}
    finally:
        assert ok(broker, "log", "level", "debug") == "debug\n"


def test_broker_stats_and_metrics(broker: BrokerProcess, paho: Any) -> None:
    paho(uid("stats-"))
    out = ok(broker, "broker", "stats")
    assert "connections.count" in out and "subscriptions.count" in out
    data = ctl_json(broker, "broker", "stats")
    assert data["source"] in ("stats", "computed")
    assert data["stats"]["sessions.count"] >= 1 or data["source"] == "stats"
    out = ok(broker, "broker", "metrics")
    data = ctl_json(broker, "broker", "metrics")
    assert data["source"] in ("metrics", "computed")
    assert all(isinstance(v, int) for v in data["metrics"].values())
    assert "messages.dropped.no_subscribers" in out


# --- clients, sessions, subscriptions, routes ------------------------------------------------

def test_clients(broker: BrokerProcess, paho: Any) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 300
    c5 = paho(uid("c5-"), version=5, clean=False, username="alice", password="pw",
              properties=p)
    c5.subscribe("ctl/t/#", 1)
    c3 = paho(uid("c3-"), version=4)
    out = ok(broker, "clients", "list")
    header = out.splitlines()[0].split()
    assert header[:4] == ["Client", "ID", "Username", "Peer"]
    assert c5.c._client_id.decode() in out and c3.c._client_id.decode() in out
    rows = {r["clientid"]: r for r in ctl_json(broker, "clients", "list")}
    r5 = rows[c5.c._client_id.decode()]
    for key in ("clientid", "username", "peername", "proto_ver", "clean_start", "keepalive",
                "expiry_interval", "subscriptions", "inflight", "awaiting_rel", "delivered",
                "enqueued", "dropped", "connected", "created_at", "connected_at"):
        assert key in r5, key
    assert (r5["username"], r5["proto_ver"], r5["expiry_interval"], r5["subscriptions"],
            r5["clean_start"], r5["connected"]) == ("alice", 5, 300, 1, False, True)
    assert r5["connected_at"].startswith(time.strftime("%Y-"))
    shown = ctl_json(broker, "clients", "show", r5["clientid"])
    assert shown["clientid"] == r5["clientid"] and shown["username"] == "alice"
    out = ok(broker, "clients", "show", r5["clientid"])
    assert "username        : alice" in out and "proto_ver       : 5.0" in out
    # kick: ok, the client is disconnected, and it is gone
    c3id = c3.c._client_id.decode()
    assert ok(broker, "clients", "kick", c3id) == "ok\n"
    c3.wait_disconnected()
    r = ctl(broker, "clients", "show", c3id)
    assert r.code == 1 and r.err == f"mqttd ctl: client '{c3id}' not found\n"
    # a persistent session whose client is away is found under sessions
    c5.drop()
    r = ctl(broker, "clients", "show", r5["clientid"])
    assert r.code == 1 and "sessions show" in r.err


def test_sessions(broker: BrokerProcess, paho: Any) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 600
    persistent = paho(uid("sp-"), version=5, clean=False, properties=p)
    transient = paho(uid("st-"), version=4)
    pid, tid = persistent.c._client_id.decode(), transient.c._client_id.decode()
    persistent.drop()
    out = ok(broker, "sessions", "list")
    assert pid in out and tid in out and out.splitlines()[0].startswith("Client ID")
    assert {s["clientid"] for s in ctl_json(broker, "sessions", "list", "persistent")} >= {pid}
    assert tid not in {s["clientid"] for s in ctl_json(broker, "sessions", "list",
                                                        "persistent")}
    assert tid in {s["clientid"] for s in ctl_json(broker, "sessions", "list", "transient")}
    s = ctl_json(broker, "sessions", "show", pid)
    assert (s["connected"], s["persistent"], s["expiry_interval"]) == (False, True, 600)
    assert 0 < s["expires_in"] <= 600
    assert "persistent      : true" in ok(broker, "sessions", "show", pid)
    assert ok(broker, "sessions", "clean", pid) == "ok\n"
    assert ctl(broker, "sessions", "show", pid).code == 1
    assert ctl_json(broker, "sessions", "clean", tid) == {"clientid": tid, "cleaned": True}
    transient.wait_disconnected()


def test_subscriptions_and_routes(broker: BrokerProcess, paho: Any) -> None:
    c = paho(uid("sub-"), version=5)
    cid = c.c._client_id.decode()
    c.subscribe("ctl/r/+", 1)
    c.subscribe("$share/g1/ctl/shared", 0)
    rows = ctl_json(broker, "subscriptions", "show", cid)
    assert {(r["topic"], r["qos"]) for r in rows} == {("ctl/r/+", 1),
                                                      ("$share/g1/ctl/shared", 0)}
    out = ok(broker, "subscriptions", "list")
    assert out.splitlines()[0].split()[:3] == ["Client", "ID", "Topic"]
    assert f"{cid}" in out and "ctl/r/+" in out
    assert "2 subscriptions" in ok(broker, "subscriptions", "show", cid)
    # add: the session gets messages on the new filter at once
    assert ok(broker, "subscriptions", "add", cid, "ctl/added/#", "2") == "ok\n"
    mosquitto_pub(broker, "-t", "ctl/added/x", "-m", "hello", "-q", "1")
    msg = c.expect_message()
    assert (msg.topic, msg.payload, msg.qos) == ("ctl/added/x", b"hello", 1)
    # routes: a message to ctl/r/1 takes the ctl/r/+ route; list shows every route
    assert ok(broker, "routes", "show", "ctl/r/1") == "ctl/r/+ -> mqttd@127.0.0.1\n1 route\n"
    assert ok(broker, "routes", "show", "ctl/r/+") == "ctl/r/+ -> mqttd@127.0.0.1\n1 route\n"
    routes = {r["topic"]: r for r in ctl_json(broker, "routes", "list")}
    assert routes["ctl/shared"]["shared"] == {"g1": 1}
    assert routes["ctl/added/#"]["subscribers"] == 1
    assert "ctl/added/# -> mqttd@127.0.0.1" in ok(broker, "routes", "list").splitlines()
    # del
    assert ctl_json(broker, "subscriptions", "del", cid, "ctl/added/#")["deleted"] is True
    assert ctl(broker, "subscriptions", "del", cid, "ctl/added/#").code == 1
    assert "ctl/added/#" not in ok(broker, "routes", "list")


def test_retained(broker: BrokerProcess) -> None:
    t = uid("ctl/ret/")
    mosquitto_pub(broker, "-t", f"{t}/a", "-m", "alpha", "-r", "-q", "1")
    mosquitto_pub(broker, "-t", f"{t}/b", "-m", "x" * 100, "-r")
    rows = {r["topic"]: r for r in ctl_json(broker, "retained", "list")}
    assert rows[f"{t}/a"]["payload_size"] == 5 and rows[f"{t}/a"]["qos"] == 1
    out = ok(broker, "retained", "list")
    assert f"{t}/b" in out and out.splitlines()[0].split()[:3] == ["Topic", "QoS", "Size"]
    shown = ctl_json(broker, "retained", "show", f"{t}/a")
    assert shown[0]["payload"] == "alpha" and shown[0]["payload_base64"] == "YWxwaGE="
    out = ok(broker, "retained", "show", f"{t}/b", "--payload-limit", "4")
    assert "payload      : xxxx...(100 bytes)" in out
    assert len(ctl_json(broker, "retained", "show", f"{t}/#")) == 2
    assert ok(broker, "retained", "clean", f"{t}/a") == "Cleaned 1 retained messages\n"
    assert ctl_json(broker, "retained", "clean", f"{t}/+") == {"cleaned": 1}
    assert ctl(broker, "retained", "show", f"{t}/#").code == 1
    mosquitto_pub(broker, "-t", f"{t}/c", "-m", "c", "-r")
    n = ctl_json(broker, "retained", "clean")["cleaned"]
    assert n >= 1
    # the broker's own $SYS values stay (test_sys.py)
    assert all(r["topic"].startswith("$SYS/") for r in ctl_json(broker, "retained", "list"))


def test_listeners_stop_and_restart(broker: BrokerProcess, paho: Any) -> None:
    c = paho(uid("l-"), version=5)
    rows = ctl_json(broker, "listeners", "list")
    assert rows == [{"name": "default", "type": "tcp", "listen_on": f"127.0.0.1:{broker.port}",
                     "zone": "default", "running": True, "current_conn": rows[0]["current_conn"],
                     "max_conns": 1024000, "max_conn_rate": rows[0]["max_conn_rate"]}]
    assert rows[0]["current_conn"] >= 1
    assert "default   tcp    127.0.0.1:" in ok(broker, "listeners", "list")
    out = ok(broker, "listeners", "stop", "default")
    assert out == f"Stop default listener on 127.0.0.1:{broker.port} successfully.\n"
    c.wait_disconnected()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker.port), timeout=WAIT).close()
    assert ctl_json(broker, "listeners", "list")[0]["running"] is False
    r = ctl(broker, "listeners", "stop", "default")
    assert r.code == 1 and "not_running" in r.err
    assert ok(broker, "listeners", "restart", "default") == \
        "Restarted default listener successfully.\n"
    again = paho(uid("l2-"))  # same port (it was configured as 0)
    assert again.connack is not None
    assert ctl_json(broker, "listeners", "list")[0]["running"] is True


# --- stop, the pid lock, stale sockets, --daemon --------------------------------------------

def test_stop_by_ctl() -> None:
    b = BrokerProcess()
    try:
        sock = Path(data_dir(b)) / P.SOCKET_NAME
        r = ctl_proc("--data-dir", data_dir(b), "stop")
        assert r.returncode == 0, r
        assert r.stdout == "mqttd@127.0.0.1 stopped\n"
        assert r.stderr.startswith(f"Stopping mqttd@127.0.0.1 (pid {b.proc.pid})")
        assert b.proc.wait(WAIT) == 0
        assert not sock.exists() and not (sock.parent / P.PID_NAME).exists()
        assert "stop requested by mqttd ctl, shutting down" in b.log()
    finally:
        b.stop()
    assert_clean_log(b)


def test_stale_socket_replaced_and_second_daemon_refused(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(d / P.SOCKET_NAME))
    stale.close()  # the file stays: what a killed daemon leaves behind
    b = BrokerProcess(extra_args=["--data-dir", str(d)])
    try:
        assert "replaced stale control socket" in b.log()
        assert stat.S_IMODE(d.stat().st_mode) == 0o700  # tightened
        assert ctl_json(str(d), "status")["pid"] == b.proc.pid
        second = mqttd("start", "--port", "0", "--data-dir", str(d))
        assert second.returncode == 1
        assert f"another mqttd (pid {b.proc.pid}) is running with data directory" in \
            second.stderr
        assert ctl_json(str(d), "status")["pid"] == b.proc.pid  # untouched
    finally:
        assert b.stop() == 0
    assert_clean_log(b)
    # a file that is not a socket is never deleted
    (d / P.SOCKET_NAME).write_text("precious")
    r = mqttd("start", "--port", "0", "--data-dir", str(d))
    assert r.returncode == 1 and "exists and is not a socket" in r.stderr
    assert (d / P.SOCKET_NAME).read_text() == "precious"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_daemon(tmp_path: Path) -> None:
    d = tmp_path / "daemon"
    cfg = tmp_path / "mqttd.toml"
    cfg.write_text('[listeners.default]\nbind = "127.0.0.1"\nport = 0\n')
    started = time.monotonic()
    r = mqttd("start", "--daemon", "-c", str(cfg), "--data-dir", str(d))
    assert r.returncode == 0, r
    assert time.monotonic() - started < 20
    log_path = d / P.LOG_NAME
    assert f"log: {log_path}" in r.stdout
    pid = int((d / P.PID_NAME).read_text())
    assert f"pid {pid}" in r.stdout and _pid_alive(pid)
    try:
        status = ctl_json(str(d), "status")
        assert status["pid"] == pid
        assert "listener default on 127.0.0.1:" in log_path.read_text()
        listen = ctl_json(str(d), "listeners", "list")[0]["listen_on"]
        host, port = listen.split(":")
        socket.create_connection((host, int(port)), timeout=WAIT).close()
        # a second --daemon on the same directory fails, says why, and exits 1
        again = mqttd("start", "--daemon", "-c", str(cfg), "--data-dir", str(d))
        assert again.returncode == 1
        assert "mqttd failed to start" in again.stderr
        assert "another mqttd" in again.stderr and str(log_path) in again.stderr
        assert ok(str(d), "stop") == "mqttd@127.0.0.1 stopped\n"
        wait_until(lambda: not _pid_alive(pid), "the daemon to exit", 10)
    finally:
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not (d / P.PID_NAME).exists() and not (d / P.SOCKET_NAME).exists()
    text = log_path.read_text()
    assert "Traceback" not in text and "mqttd stopped" in text


def test_start_daemon_failure_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = mqttd("start", "--daemon", "--bind", "127.0.0.1", "--port", str(port),
                  "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 1
    assert "mqttd failed to start: exited with code 1" in r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert not (tmp_path / "d" / P.SOCKET_NAME).exists()


def test_socket_path_too_long() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "x" * 120)
        r = mqttd("start", "--port", "0", "--data-dir", d)
        assert r.returncode == 1 and "use a shorter --data-dir" in r.stderr

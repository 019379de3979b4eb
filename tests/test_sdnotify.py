"""systemd notification (mqttd.sdnotify): the real broker under a test notification socket
says READY=1 once it listens, pings WATCHDOG=1 every half of WATCHDOG_USEC, and says
STOPPING=1 when it shuts down; the systemd unit in contrib/ asks for exactly that."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import WAIT, uid
from support.clients import Client
from support.process import BrokerProcess

from mqttd.sdnotify import Notifier

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket, as systemd's, at a short path (sun_path has 108 bytes)."""
    d = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    try:
        yield s, path
    finally:
        s.close()
        shutil.rmtree(d, ignore_errors=True)


def _receive(s: socket.socket, until: str, timeout: float = WAIT) -> list[dict[str, str]]:
    """Datagrams as {KEY: value} until one carries ``until`` (bounded)."""
    got: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while not any(until in m for m in got):
        left = deadline - time.monotonic()
        assert left > 0, f"no {until} within {timeout}s: {got}"
        s.settimeout(left)
        data = s.recv(4096).decode()
        got.append(dict(line.split("=", 1) for line in data.splitlines()))
    return got


def _broker_lifecycle(s: socket.socket, env: dict[str, str]) -> None:
    b = BrokerProcess(env=env)
    try:
        ready = _receive(s, "READY")
        # READY=1 only once the listener is up: a client connects right away
        assert ready[-1]["READY"] == "1" and ready[-1]["MAINPID"] == str(b.proc.pid)
        assert "serving 1 listeners" in ready[-1]["STATUS"]
        c = Client(b, uid("sdn-"))
        c.connect()
        c.close()
        pings = [m for _ in range(3) for m in _receive(s, "WATCHDOG")]
        assert all(m.get("WATCHDOG", "1") == "1" for m in pings)
        assert b.stop() == 0
        stopping = _receive(s, "STOPPING")
        assert stopping[-1]["STOPPING"] == "1"
        assert "Traceback" not in b.log()
    finally:
        b.stop()
        b.cleanup()


def test_ready_watchdog_and_stopping_reach_the_socket(
        notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    _broker_lifecycle(s, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})


def test_an_abstract_socket_name_with_at(notify_socket: tuple[socket.socket, str]) -> None:
    """systemd may give an abstract socket, written "@name"."""
    name = uid("mqttd-test-notify-")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    try:
        _broker_lifecycle(s, {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "200000"})
    finally:
        s.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_interval == 15.0
    # a watchdog meant for another process (WATCHDOG_PID) is not ours
    other = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000",
                               "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval is None
    mine = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000",
                              "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 1.0
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "x"}
                             ).watchdog_interval is None
    assert Notifier.from_env({"WATCHDOG_USEC": "2000000"}).watchdog_interval is None


def test_without_notify_socket_nothing_is_sent() -> None:
    n = Notifier.from_env({})
    assert not n.enabled and not n.ready() and not n.watchdog() and not n.stopping()


def test_a_missing_socket_is_logged_once_and_never_stops_the_broker(tmp_path: Path) -> None:
    gone = "/tmp/" + uid("sdn-gone-")
    b = BrokerProcess(env={"NOTIFY_SOCKET": gone, "WATCHDOG_USEC": "100000"})
    try:
        c = Client(b, uid("sdn-"))
        c.connect()
        c.close()
        assert b.stop() == 0
        assert b.log().count("cannot notify systemd at " + gone) == 1, b.log()
    finally:
        b.cleanup()


UNIT = ROOT / "contrib" / "systemd" / "mqttd.service"


def test_the_unit_asks_for_notify_reload_by_hup_and_a_watchdog() -> None:
    keys: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            k, v = line.split("=", 1)
            keys[k.strip()] = v.strip()
    assert keys["Type"] == "notify"
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert keys["WatchdogSec"] and keys["ExecStart"].split()[1:3] == ["start", "--config"]
    assert keys["NotifyAccess"] == "main"

"""Running out of file descriptors: the broker, started under a low RLIMIT_NOFILE (prlimit
on its real process), refuses clients past its reserve with a CONNACK they can read, counts
and logs it, keeps the control socket answering while the clients hold their descriptors, and
admits clients again once they leave."""

from __future__ import annotations

import json
import socket
import time

from support import WAIT, builder as B
from support.process import BrokerProcess, run_mqttd

LIMIT = 128
CLIENTS = 160


def connack_or_close(s: socket.socket) -> bytes:
    """The broker's first bytes (a CONNACK), or b"" when it closed without one."""
    try:
        return s.recv(5)
    except (TimeoutError, ConnectionResetError):
        return b""


def ctl(b: BrokerProcess, *args: str) -> dict:  # type: ignore[type-arg]
    r = run_mqttd("ctl", "--data-dir", str(b.data_dir), "--json", *args, timeout=30)
    assert r.returncode == 0, r
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_clients_past_the_descriptor_reserve_are_refused_and_ctl_still_answers() -> None:
    b = BrokerProcess("[store]\ndurability = \"off\"\n",
                      wrapper=["prlimit", f"--nofile={LIMIT}:{LIMIT}"])
    socks: list[socket.socket] = []
    try:
        accepted = refused = 0
        for i in range(CLIENTS):
            s = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
            socks.append(s)
            s.sendall(B.connect(f"fd-{i}", level=5, keepalive=60))
            reply = connack_or_close(s)
            if reply[:1] == b"\x20" and reply[3:4] == b"\x00":
                accepted += 1
            else:
                # refused: CONNACK 0x88 (server unavailable), or closed at once past the
                # answer budget
                assert reply in (b"", bytes((0x20, 3, 0, 0x88, 0))), reply
                refused += 1
        assert accepted >= 40 and refused >= CLIENTS - LIMIT, (accepted, refused)
        # the operator is not locked out while the clients hold their descriptors
        status = ctl(b, "status")
        assert status["node"]
        metrics = ctl(b, "broker", "metrics")["metrics"]
        assert metrics["connections.refused.max_fds"] >= refused
        assert "refusing connections over the file descriptor limit" in b.log()
        # recovery: once clients leave, new ones get in
        for s in socks:
            s.close()
        socks.clear()
        deadline = time.monotonic() + WAIT * 2
        while True:
            s = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
            s.sendall(B.connect("fd-again", level=5, keepalive=60))
            reply = connack_or_close(s)
            s.close()
            if reply[:1] == b"\x20" and reply[3:4] == b"\x00":
                break
            assert time.monotonic() < deadline, "never admitted again"
            time.sleep(0.1)
        assert "Traceback" not in b.log()
    finally:
        for s in socks:
            s.close()
        b.stop()
        b.cleanup()

"""A plain TCP listener listens through several sockets bound to its one address
(the listener's ``accept_sockets``, 8 by default, SO_REUSEPORT on Linux), so that one
event-loop turn accepts several clients: every socket belongs to the broker, clients spread
over them are all served, a port in use still refuses a second broker, and stopping the
listener frees the port; ``accept_sockets = 1`` listens through one socket nothing else can
join. Through a real broker process and real sockets."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
from support import WAIT, builder as B
from support.process import checked_broker, run_mqttd
from support.raw import recv_exact

from mqttd.config import Listener

ACCEPT_SOCKETS = Listener().accept_sockets

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc; several sockets only on Linux")

def _listening(port: int) -> set[int]:
    """Inodes of the sockets listening on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], int(fields[9])
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    found.add(inode)
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def test_listener_accepts_through_several_sockets() -> None:
    with checked_broker() as b:
        listening = _listening(b.port)
        assert len(listening) == ACCEPT_SOCKETS == 8
        assert listening <= _socket_inodes(b.proc.pid)  # all of them the broker's
        # More clients than sockets, all connected before any CONNECT is sent: the kernel
        # queues them over the sockets, and every one is answered.
        clients = [socket.create_connection((b.host, b.port), timeout=WAIT)
                   for _ in range(8 * ACCEPT_SOCKETS)]
        try:
            for n, c in enumerate(clients):
                c.sendall(B.connect(f"s{n}"))
            for c in clients:
                assert recv_exact(c, 4) == b"\x20\x02\x00\x00"
        finally:
            for c in clients:
                c.sendall(b"\xe0\x00")
                c.close()


def test_port_in_use_still_refuses_a_second_broker() -> None:
    with checked_broker() as b:
        done = run_mqttd("start", "--bind", "127.0.0.1", "--port", str(b.port),
                         "--data-dir", str(b.dir / "data2"), timeout=WAIT * 2)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert f"cannot listen on 127.0.0.1:{b.port}" in done.stderr
        # ... and a plain socket cannot slip into the broker's group either.
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", b.port))


def test_stopping_the_listener_closes_every_socket() -> None:
    with checked_broker() as b:
        port = b.port
        done = run_mqttd("ctl", "--data-dir", str(b.data_dir), "listeners", "stop", "default",
                         timeout=WAIT * 2)
        assert done.returncode == 0, (done.stdout, done.stderr)
        deadline = time.monotonic() + WAIT
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _listening(port)
        with socket.socket() as free:  # the port is free again
            free.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            free.bind(("127.0.0.1", port))



def _joins(port: int) -> bool:
    """Whether a socket of this (the broker's) user that sets SO_REUSEPORT itself can bind
    the broker's port."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            other.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_one_accept_socket_is_not_a_group_anyone_can_join() -> None:
    with checked_broker() as b:  # the default: the group, as CONFIG.md says
        assert _joins(b.port)
    config = '[listeners.default]\nbind = "127.0.0.1"\nport = 0\naccept_sockets = 1\n'
    with checked_broker(config) as b:
        assert len(_listening(b.port)) == 1
        assert not _joins(b.port)
        with socket.create_connection((b.host, b.port), timeout=WAIT) as c:
            c.sendall(B.connect("one-socket"))
            assert recv_exact(c, 4) == b"\x20\x02\x00\x00"
            c.sendall(b"\xe0\x00")


@pytest.mark.parametrize("value", ["0", "65", "\"8\""])
def test_accept_sockets_out_of_range_is_a_config_error(tmp_path: Path, value: str) -> None:
    conf = tmp_path / "mqttd.toml"
    conf.write_text(f'[listeners.default]\nbind = "127.0.0.1"\nport = 0\n'
                    f'accept_sockets = {value}\n')
    done = run_mqttd("config", "check", "-c", str(conf), timeout=WAIT * 2)
    assert done.returncode != 0
    assert "accept_sockets" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout

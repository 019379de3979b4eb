"""The daemon's descriptor table is grown once at start (transport/fdguard.py's
``presize_fd_table``): in a process with threads, Linux makes the thread whose ``accept4``
needs a bigger table wait for an RCU grace period, i.e. the event loop stood still at the
256th, 512th, ... client of a connect storm (issue 17). Read from the kernel's own account,
``FDSize`` in /proc/PID/status (the slots the table has), of a real daemon."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from support import WAIT, builder as B
from support.process import BrokerProcess, wait_log

from mqttd.transport.fdguard import presize_fd_table

LIMIT = 4096
#: More clients than the table a process starts with (64 slots, then 256, 512, 1024).
CLIENTS = 600


def fd_slots(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("FDSize:"):
            return int(line.split()[1])
    raise AssertionError("no FDSize in /proc/PID/status")


def test_the_daemon_starts_with_a_table_for_its_limit_and_never_grows_it() -> None:
    b = BrokerProcess('[store]\ndurability = "process"\n',
                      wrapper=["prlimit", f"--nofile={LIMIT}:{LIMIT}"])
    socks: list[socket.socket] = []
    try:
        # the case that needs it: more than one thread shares the table (the store's writer)
        assert len(os.listdir(f"/proc/{b.proc.pid}/task")) > 1
        at_start = fd_slots(b.proc.pid)
        assert at_start >= LIMIT
        for i in range(CLIENTS):
            s = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
            socks.append(s)
            s.sendall(B.connect(f"fdt-{i}", level=4, keepalive=60))
            assert s.recv(4) == b"\x20\x02\x00\x00"
        assert len(os.listdir(f"/proc/{b.proc.pid}/fd")) > CLIENTS
        assert fd_slots(b.proc.pid) == at_start  # no growth while the clients came
        assert "Traceback" not in b.log()
    finally:
        for s in socks:
            s.close()
        b.stop()
        b.cleanup()


def test_presizing_never_closes_a_descriptor_open_at_the_top() -> None:
    # F_DUPFD, not dup2: a descriptor already open where the probe goes stays as it was.
    with open(os.devnull, "rb") as f:
        top = max(fd_slots(os.getpid()), 1024) * 2
        os.dup2(f.fileno(), top - 1)
        try:
            before = os.fstat(top - 1)
            assert presize_fd_table(top) == top
            after = os.fstat(top - 1)
            assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
            assert fd_slots(os.getpid()) >= top
        finally:
            os.close(top - 1)


def python_threads(pid: int) -> list[int]:
    """The daemon's threads that Python started (libuv's own are named libuv-worker)."""
    tasks = Path(f"/proc/{pid}/task")
    return [int(t.name) for t in tasks.iterdir()
            if (t / "comm").read_text().strip() != "libuv-worker"]


def test_the_monitor_counts_descriptors_on_the_loop_thread() -> None:
    """sysmon's descriptor count is one stat of /proc/self/fd (Linux >= 6.2), made on the
    loop: no worker thread exists to take the GIL from the loop once a check. The count is
    seen to happen (the alarm it raises); the broker without a store runs one Python
    thread."""
    config = ('[sysmon]\ncheck_interval = "100ms"\nfd_high = 0.02\nfd_clear = 0.01\n'
              '[store]\ndurability = "off"\n')
    b = BrokerProcess(config, wrapper=["prlimit", "--nofile=256:256"])
    try:
        wait_log(b, "alarm high_fd_usage activated")  # a count was made (~20 of 256 open)
        assert python_threads(b.proc.pid) == [b.proc.pid]
        assert "Traceback" not in b.log()
    finally:
        assert b.stop() == 0
        b.cleanup()

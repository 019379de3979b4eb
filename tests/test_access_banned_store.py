"""Bans in the durable store: a real broker (durability ``process``, the default) killed with
SIGKILL right after ``mqttd ctl banned`` answered, started again on the same data directory.

What is checked: bans added with ``mqttd ctl banned add`` (client id, user name, a CIDR
network with an end) are refused after kill -9 and a restart, a lifted ban stays lifted, a
ban that ended while no broker ran is gone; no ``banned.json`` is written while the store
keeps them; a ``banned.json`` from before (written by a broker with durability off) is
moved into the store once, said in the log, and renamed ``banned.json.migrated``; with
durability off bans still live in ``banned.json``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable
from typing import Any

from support import WAIT, uid
from support.ctlrun import ctl_json, ok
from support.process import BrokerProcess, log_size, wait_log
from support.raw import RawClient

BANNED = 0x8A
OFF = '[store]\ndurability = "off"\n'


def bans(b: BrokerProcess) -> list[tuple[str, str, str]]:
    rows = ctl_json(b, "banned", "list")
    return sorted((r["as"], r["who"], r["reason"]) for r in rows)


def connack(b: BrokerProcess, client_id: str, **kwargs: Any) -> int:
    with RawClient(b, 5) as r:
        return int(r.connect(client_id, expect_rc=None, **kwargs).reason_code)


def wait_until(check: Callable[[], bool]) -> None:
    """Until ``check()`` holds (at most WAIT seconds, looked at every 50 ms)."""
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Brokers:
    """Brokers one after another on one data directory; all cleaned up at the end."""

    def __init__(self, config: str = "") -> None:
        self.config = config
        self.all: list[BrokerProcess] = []
        self.data_dir: Any = None

    def start(self) -> BrokerProcess:
        extra = ["--data-dir", str(self.data_dir)] if self.data_dir is not None else None
        b = BrokerProcess(self.config, extra_args=extra)
        if self.data_dir is None:
            self.data_dir = b.data_dir
        b.data_dir = self.data_dir
        self.all.append(b)
        return b

    def close(self) -> None:
        for b in self.all:
            if b.proc.poll() is None:
                b.stop()
        try:
            for b in self.all:
                assert "Traceback" not in b.log(), b.log()
                assert " ERROR " not in b.log(), b.log()
        finally:
            for b in self.all:
                b.cleanup()


@contextlib.contextmanager
def brokers(config: str = "") -> Any:
    made = Brokers(config)
    try:
        yield made
    finally:
        made.close()


def test_bans_survive_kill_9_in_the_store() -> None:
    with brokers() as chain:
        first = chain.start()
        ok(first, "banned", "add", "clientid", "kept", "--reason", "r1")
        ok(first, "banned", "add", "username", "mallory", "--reason", "r2")
        ok(first, "banned", "add", "peerhost", "192.0.2.0/24", "--duration", "1h")
        ok(first, "banned", "add", "clientid", "lifted")
        ok(first, "banned", "del", "clientid", "lifted")
        ok(first, "banned", "add", "clientid", "brief", "--duration", "1")
        first.stop(signal.SIGKILL)  # at once after the last answer
        assert not (chain.data_dir / "banned.json").exists()
        time.sleep(1.0)  # the 1 s ban ends while no broker runs
        second = chain.start()
        assert bans(second) == [("clientid", "kept", "r1"), ("peerhost", "192.0.2.0/24", ""),
                                ("username", "mallory", "r2")]
        assert connack(second, "kept") == BANNED
        assert connack(second, uid(), username="mallory") == BANNED
        assert connack(second, "lifted") == 0
        assert connack(second, "brief") == 0
        # a lift after a restart holds across the next kill -9 too
        ok(second, "banned", "del", "username", "mallory")
        second.stop(signal.SIGKILL)
        third = chain.start()
        assert bans(third) == [("clientid", "kept", "r1"), ("peerhost", "192.0.2.0/24", "")]
        assert connack(third, uid(), username="mallory") == 0
        assert not (chain.data_dir / "banned.json").exists()


def test_a_banned_json_from_before_is_moved_into_the_store_once() -> None:
    with brokers(OFF) as chain:
        old = chain.start()
        ok(old, "banned", "add", "clientid", "legacy", "--reason", "from the file")
        ok(old, "banned", "add", "peerhost", "198.51.100.7")
        assert old.stop() == 0
        path = chain.data_dir / "banned.json"
        assert len(json.loads(path.read_text())["banned"]) == 2
        chain.config = ""  # durability back on (the default)
        new = chain.start()
        wait_log(new, f"banned: 2 bans moved from {path} into the store")
        wait_until(lambda: (chain.data_dir / "banned.json.migrated").exists())
        assert not path.exists()
        assert connack(new, "legacy") == BANNED
        ok(new, "banned", "add", "clientid", "newer")
        new.stop(signal.SIGKILL)
        again = chain.start()
        assert "bans moved from" not in again.log()
        assert bans(again) == [("clientid", "legacy", "from the file"),
                               ("clientid", "newer", ""), ("peerhost", "198.51.100.7", "")]
        assert connack(again, "legacy") == BANNED
        assert not path.exists()


def test_with_durability_off_bans_live_in_banned_json() -> None:
    with brokers(OFF) as chain:
        b = chain.start()
        start = log_size(b)
        ok(b, "banned", "add", "clientid", "filed")
        rows = json.loads((chain.data_dir / "banned.json").read_text())["banned"]
        assert [r["who"] for r in rows] == ["filed"]
        assert connack(b, "filed") == BANNED
        assert "into the store" not in b.log()[start:]

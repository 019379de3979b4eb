"""Overload protection against a real daemon: real publishers flood it until its event loop
lags past a (very low) threshold; it raises ``loop_lag`` and ``overload``, refuses new clients
with a CONNACK they can read (MQTT 5: 0x89, 3.1.1: 0x03), pauses the heaviest publishers, keeps
answering ``mqttd ctl``, and recovers by itself once the flood stops."""

from __future__ import annotations

import socket
import threading
import time

from support import WAIT, builder as B
from support.process import BrokerProcess, checked_broker, run_mqttd, wait_log
from test_alarms import ctl_json, watching

CONFIG = """
[sysmon]
check_interval = "200ms"
loop_lag_high = "5ms"
loop_lag_clear = "2ms"
[overload_protection]
lag = "5ms"
lag_for = "400ms"
recover_lag = "2ms"
recover_for = "600ms"
pause_publishers = 2
pause_time = "300ms"
[store]
durability = "off"
"""

PUBLISHERS = 4
#: Upper bound on how long the flood runs (it stops as soon as the test has seen enough).
FLOOD_SECONDS = 60.0


class Flood:
    """Raw-socket publishers, each writing batches of QoS 0 PUBLISH packets as fast as the
    broker takes them, on its own thread, until stopped (or FLOOD_SECONDS)."""

    def __init__(self, b: BrokerProcess, n: int) -> None:
        self.stop = threading.Event()
        self.sent = [0] * n
        batch = b"".join(B.publish(f"flood/{i % 50}", b"x" * 40) for i in range(2000))
        self.socks = []
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
            s.sendall(B.connect(f"flood-{i}", level=4, keepalive=0))
            assert s.recv(4) == b"\x20\x02\x00\x00"
            s.settimeout(0.5)
            self.socks.append(s)
        self.threads = [threading.Thread(target=self._run, args=(i, batch), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i: int, batch: bytes) -> None:
        s = self.socks[i]
        deadline = time.monotonic() + FLOOD_SECONDS
        view = memoryview(batch)
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                sent = s.send(view)  # partial writes while the broker pushes back
            except TimeoutError:
                continue
            except OSError:
                return
            self.sent[i] += sent
            view = view[sent:] or memoryview(batch)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(WAIT)
        for s in self.socks:
            s.close()


def connack(b: BrokerProcess, level: int) -> bytes:
    """The broker's answer to a new client's CONNECT (b"" when closed unanswered)."""
    with socket.create_connection(("127.0.0.1", b.port), timeout=WAIT * 2) as s:
        s.sendall(B.connect("late-" + str(level), level=level, keepalive=30))
        try:
            return s.recv(5)
        except (TimeoutError, ConnectionResetError):
            return b""


def test_overload_sheds_in_order_keeps_ctl_answering_and_recovers() -> None:
    with checked_broker(CONFIG) as b, watching(b) as watcher:
        watcher.settle(b)  # no alarm left from the start (5 ms is a low watermark)
        flood = Flood(b, PUBLISHERS)
        try:
            lag = watcher.next("activate", "loop_lag", timeout=FLOOD_SECONDS)
            assert lag["details"]["lag_ms"] >= 5
            over = watcher.next("activate", "overload", timeout=FLOOD_SECONDS)
            assert watcher.state["loop_lag"] is True  # lagging for lag_for before this
            assert over["details"]["level"] == 1
            assert "refusing new connections" in over["message"]
            # Step 1: new clients get a CONNACK they can read. The flood goes on, but the
            # protection may already have let go in between: try a bounded number of times.
            answers5, answers4 = set(), set()
            for _ in range(40):
                answers5.add(connack(b, 5))
                answers4.add(connack(b, 4))
                if bytes((0x20, 3, 0, 0x89, 0)) in answers5 and b"\x20\x02\x00\x03" in answers4:
                    break
            assert bytes((0x20, 3, 0, 0x89, 0)) in answers5, answers5
            assert b"\x20\x02\x00\x03" in answers4, answers4
            # mqttd ctl answers while the broker sheds (its socket is no listener).
            assert ctl_json(b, "status")["node"]
            # Step 2, the flood going on: the heaviest publishers are paused at each check.
            wait_log(b, "overload: event loop lag", timeout=FLOOD_SECONDS)
            assert "pausing the 2 heaviest publishers" in b.log()
        finally:
            flood.close()
        down = watcher.next("deactivate", "overload", timeout=WAIT * 4)
        assert "accepting connections again" in down["message"]
        assert down["details"]["refused"] >= 2 and down["details"]["paused"] >= 1
        # The same counts in the metrics (one episode: the alarm activated once, below).
        metrics = ctl_json(b, "broker", "metrics")["metrics"]
        assert (metrics["connections.refused.overload"], metrics["connections.paused.overload"]
                ) == (down["details"]["refused"], down["details"]["paused"])
        watcher.until("loop_lag", False, timeout=WAIT * 4)
        # Recovered: a new client gets in.
        assert connack(b, 5)[3:4] == b"\x00"
        assert "overload" not in [a["name"] for a in ctl_json(b, "alarms", "list")]
        history = [a["name"] for a in ctl_json(b, "alarms", "list", "--history")]
        assert "overload" in history and "loop_lag" in history
        log = b.log()
        assert log.count("alarm overload activated") == 1
        assert "refusing connections over overload protection" in log
        assert sum(flood.sent) > 0


def test_overload_protection_off_refuses_nobody() -> None:
    config = CONFIG.replace("[overload_protection]\n", "[overload_protection]\nenable = false\n")
    with checked_broker(config) as b, watching(b) as watcher:
        flood = Flood(b, PUBLISHERS)
        try:
            watcher.next("activate", "loop_lag", timeout=FLOOD_SECONDS)
            assert connack(b, 5)[3:4] == b"\x00"
        finally:
            flood.close()
        assert "overload" not in b.log().replace("overload_protection", "")
        assert run_mqttd("ctl", "--data-dir", str(b.data_dir), "alarms", "list").returncode == 0

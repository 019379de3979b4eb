"""Alarms against a real daemon: each monitor's alarm activates when its watermark is
crossed by real load and clears under its clear watermark, with one log line each way, a
JSON message on ``$SYS/brokers/<node>/alarms/activate|deactivate`` (read by a real MQTT
client) and a row in ``mqttd ctl alarms list [--history]``."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support import WAIT, builder as B
from support.clients import Client
from support.process import BrokerProcess, assert_clean_log, checked_broker, run_mqttd, wait_log

NODE = "mqttd@127.0.0.1"
#: Alarms checked five times a second, so each wait below is short.
FAST = '[sysmon]\ncheck_interval = "200ms"\n'
MIB = 1 << 20


def ctl_json(b: BrokerProcess, *args: str) -> Any:
    r = run_mqttd("ctl", "--data-dir", str(b.data_dir), "--json", *args, timeout=30)
    assert r.returncode == 0, r
    return json.loads(r.stdout)


def alarm_names(b: BrokerProcess, *history: str) -> list[str]:
    return [a["name"] for a in ctl_json(b, "alarms", "list", *history)]


class AlarmWatcher:
    """A real MQTT client subscribed to the node's alarm topics; ``state`` is what the
    messages read so far say of each alarm (True: active)."""

    def __init__(self, b: BrokerProcess) -> None:
        self.client = Client(b, "alarm-watcher", version=5)
        self.client.connect()
        self.client.subscribe(f"$SYS/brokers/{NODE}/alarms/#", 0)
        self.state: dict[str, bool] = {}
        #: Every alarm message read, in order: (event, its JSON).
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._sentinel = False

    def _record(self, msg: Any) -> tuple[str, dict[str, Any]]:
        data = json.loads(msg.payload)
        event = msg.topic.rsplit("/", 1)[1]
        assert msg.topic == f"$SYS/brokers/{NODE}/alarms/{event}", msg.topic
        assert data["activated"] is (event == "activate"), data
        self.state[data["name"]] = data["activated"]
        self.events.append((event, data))
        return event, data

    def _read(self, timeout: float) -> tuple[str, dict[str, Any]]:
        return self._record(self.client.expect_message(timeout))

    def next(self, event: str, name: str, timeout: float = WAIT * 3) -> dict[str, Any]:
        """The next message about ``name`` (others skipped), which must be ``event``."""
        while True:
            got, data = self._read(timeout)
            if data["name"] == name:
                assert got == event, (got, data)
                return data

    def until(self, name: str, active: bool, timeout: float = WAIT * 3) -> None:
        """Read messages until the last one about ``name`` says ``active`` (a value near
        a watermark may flap meanwhile: it is the state that counts here)."""
        while self.state.get(name, False) is not active:
            self._read(timeout)

    def settle(self, b: BrokerProcess) -> None:
        """Wait until no alarm is active (a loaded machine can lag the loop past a low
        watermark while the broker starts), then read every message that said so: a
        sentinel published through the same broker arrives after them."""
        deadline = time.monotonic() + WAIT * 4
        while (active := ctl_json(b, "alarms", "list")) != []:
            assert time.monotonic() < deadline, active
            time.sleep(0.2)
        self.sync()

    def sync(self) -> None:
        """Read every alarm message the broker published before now: a sentinel published
        through the same broker to this client arrives after them."""
        if not self._sentinel:
            self.client.subscribe("alarm-watcher/sentinel", 0)
            self._sentinel = True
        self.client.publish("alarm-watcher/sentinel", b"s")
        while True:
            msg = self.client.expect_message(WAIT * 3)
            if msg.topic == "alarm-watcher/sentinel":
                return
            self._record(msg)

    def close(self) -> None:
        self.client.close()


@contextmanager
def watching(b: BrokerProcess) -> Iterator[AlarmWatcher]:
    w = AlarmWatcher(b)
    try:
        yield w
    finally:
        w.close()


def test_memory_alarm_activates_under_load_and_clears_when_it_is_freed() -> None:
    # Large payloads are mmap'ed by malloc at any size from 64 KiB (a fixed threshold, not
    # glibc's sliding one), so freeing them gives the memory back to the system at once.
    env = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    base_config = '[store]\ndurability = "off"\n[mqtt]\nmax_packet_size = "32MB"\n'
    with checked_broker(base_config, env=env) as probe:
        baseline = ctl_json(probe, "vm")["memory"]["rss"]
    high, clear = baseline + 50 * MIB, baseline + 25 * MIB
    config = base_config + FAST + f"process_memory_high = {high}\nprocess_memory_clear = {clear}\n"
    with checked_broker(config, env=env) as b, watching(b) as watcher:
        assert "high_process_memory" not in alarm_names(b)
        publisher = Client(b, "big-retained", version=5)
        publisher.connect()
        try:
            for i in range(4):  # 80 MiB held by the retainer
                # 0x10: no subscriber matched (the retainer keeps it all the same)
                assert publisher.publish(f"big/{i}", b"m" * (20 * MIB), qos=1,
                                         retain=True) in (0, 0x10)
        finally:
            publisher.close()
        up = watcher.next("activate", "high_process_memory")
        assert up["activated"] is True and up["node"] == NODE
        assert up["details"]["rss"] >= high and up["details"]["high_watermark"] == high
        assert isinstance(up["activate_at"], int) and up["deactivate_at"] is None
        assert "resident memory" in up["message"]
        (row,) = [a for a in ctl_json(b, "alarms", "list") if a["name"] == "high_process_memory"]
        assert row["activated"] is True and row["details"]["clear_watermark"] == clear
        text = run_mqttd("ctl", "--data-dir", str(b.data_dir), "alarms", "list")
        assert "high_process_memory" in text.stdout and "active alarm" in text.stdout

        assert "Cleaned 4" in run_mqttd("ctl", "--data-dir", str(b.data_dir), "retained",
                                        "clean").stdout
        down = watcher.next("deactivate", "high_process_memory")
        assert down["activated"] is False and down["deactivate_at"] >= down["activate_at"]
        assert down["details"]["rss"] < clear
        assert "high_process_memory" not in alarm_names(b)
        history = ctl_json(b, "alarms", "list", "--history")
        assert history[0]["name"] == "high_process_memory" and history[0]["deactivate_at"]
        log = b.log()
        assert log.count("alarm high_process_memory activated") == 1
        assert log.count("alarm high_process_memory deactivated") == 1
        assert " WARNING mqttd.alarms: alarm high_process_memory activated" in log
        assert " INFO mqttd.alarms: alarm high_process_memory deactivated" in log


def test_fd_alarm_under_a_low_descriptor_limit() -> None:
    limit = 64
    config = FAST + 'fd_high = 0.6\nfd_clear = 0.45\n[store]\ndurability = "off"\n'
    b = BrokerProcess(config, wrapper=["prlimit", f"--nofile={limit}:{limit}"])
    socks: list[socket.socket] = []
    try:
        base = ctl_json(b, "vm")["io"]
        assert base["max_fds"] == limit and base["active_fds"] < 0.45 * limit, base
        with watching(b) as watcher:
            # Clients until the descriptors cross 60 % of the limit (they stay under the
            # reserve the listeners keep, so every one is accepted).
            for i in range(int(0.6 * limit) - base["active_fds"] + 2):
                s = socket.create_connection(("127.0.0.1", b.port), timeout=WAIT)
                socks.append(s)
                s.sendall(B.connect(f"fd-{i}", level=5, keepalive=60))
                assert s.recv(5)[3:4] == b"\x00"
            up = watcher.next("activate", "high_fd_usage")
            assert up["details"]["max_fds"] == limit
            assert up["details"]["fds"] >= 0.6 * limit
            assert "high_fd_usage" in alarm_names(b)
            for s in socks:
                s.close()
            socks.clear()
            down = watcher.next("deactivate", "high_fd_usage")
            assert down["details"]["fds"] < 0.45 * limit
        assert "high_fd_usage" in alarm_names(b, "--history")
    finally:
        for s in socks:
            s.close()
        code = b.stop()
        try:
            assert_clean_log(b)
            assert code == 0
        finally:
            b.cleanup()


def test_connections_alarm_near_a_listeners_max_connections() -> None:
    config = (FAST + "connections_high = 0.8\nconnections_clear = 0.5\n"
              '[listeners.default]\nbind = "127.0.0.1"\nport = 0\n'
              '[listeners.small]\nbind = "127.0.0.1"\nport = 0\nmax_connections = 10\n')
    with checked_broker(config) as b, watching(b) as watcher:
        port = b.ports["small"]
        made = []
        try:
            for i in range(8):
                c = Client(b, f"near-max-{i}", port=port)
                made.append(c)
                c.connect()
            up = watcher.next("activate", "high_connections/small")
            assert up["details"] == {"listener": "small", "connections": 8,
                                     "max_connections": 10, "high_watermark": 0.8,
                                     "clear_watermark": 0.5}
            for c in made[:4]:
                c.disconnect()
            down = watcher.next("deactivate", "high_connections/small")
            assert down["details"]["connections"] == 4
        finally:
            for c in made:
                c.close()


def test_store_commit_latency_alarm() -> None:
    # Any commit takes longer than a microsecond; an idle store has nothing waiting.
    config = FAST + 'store_latency_high = "0.001ms"\n'
    with checked_broker(config) as b, watching(b) as watcher:
        durable = Client(b, "durable-311", version=4, clean=False)  # a session kept on disk
        durable.connect()
        pub = Client(b, "store-pub", version=5)
        pub.connect()
        try:
            durable.subscribe("stored/t", 1)
            durable.disconnect()
            assert pub.publish("stored/t", b"kept", qos=1) == 0  # queued for it: stored
            up = watcher.next("activate", "slow_store_commit")
            assert up["details"]["commits"] >= 1 and up["details"]["latency_ms"] > 0.001
            down = watcher.next("deactivate", "slow_store_commit")
            assert down["details"]["latency_ms"] == 0
        finally:
            pub.close()
            durable.close()


def test_config_check_names_bad_sysmon_keys(tmp_path: Path) -> None:
    path = tmp_path / "mqttd.toml"
    path.write_text('[sysmon]\nfd_high = 0.5\nfd_clear = 0.6\nloop_lag_high = "soon"\n'
                    "[overload_protection]\nlag = \"10ms\"\nrecover_lag = \"20ms\"\n")
    r = run_mqttd("config", "check", "-c", str(path))
    assert r.returncode == 2, r
    out = r.stdout + r.stderr
    assert "sysmon.fd_clear: 0.6 must be below fd_high (0.5)" in out
    assert "sysmon.loop_lag_high: not a duration: 'soon'" in out
    assert "overload_protection.recover_lag: 0.02 must be below lag (0.01)" in out
    assert "Traceback" not in out


def test_long_gc_alarm_from_real_work_clears_after_a_quiet_period() -> None:
    # Every collection of a busy broker takes more than a microsecond.
    config = FAST + 'long_gc = "0.001ms"\nlong_gc_clear = "1s"\n'
    with checked_broker(config) as b:
        start = wait_log(b, "alarm long_gc deactivated")  # the start's own collection
        with watching(b) as watcher:
            pub = Client(b, "gc-load", version=4)
            pub.connect()
            try:
                # Retained messages stay: enough new objects for young collections.
                for i in range(6000):
                    pub.publish(f"gc/{i}", b"p", retain=True, wait=False)
                assert pub.publish("gc/done", b"", qos=1) == 0
                up = watcher.next("activate", "long_gc")
                assert up["details"]["duration_ms"] > 0.001
                down = watcher.next("deactivate", "long_gc")
                assert "no garbage collection" in down["message"]
            finally:
                pub.close()
        assert start

"""MQTT bridges (``[bridges.<name>]``, mqttd/bridge, docs/BRIDGE.md) between real processes:
two mqttd daemons and mqttd with Debian's mosquitto, both directions, QoS 0/1/2 on MQTT
3.1.1 and 5; loop prevention; the remote restarted while QoS 1 messages flow (every message
the local broker acknowledged arrives); an unreachable remote retried with its reason in
``mqttd ctl bridges status`` while another bridge works; ctl start/stop and bad config."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import WAIT, uid
from support.certs import make_pki
from support.clients import Client, PacketTypes, props
from support.ctlrun import ctl, ctl_json, ok
from support.mosquitto import MOSQUITTO, Mosquitto, free_port
from support.process import BrokerProcess, checked_broker, run_mqttd

from mqttd.store.journal import Journal, replay
from mqttd.store.kv import KVStore
from mqttd.store.oplog import OpLog
from mqttd.store.sqlite import SqliteBackend

pytest_plugins = ["support.fixtures"]


class _Peer:
    """Where a paho client connects (a mosquitto has no BrokerProcess)."""

    def __init__(self, port: int) -> None:
        self.host, self.port = "127.0.0.1", port


def bridge_config(name: str, port: int, version: int, **extra: Any) -> str:
    lines = [f"[bridges.{name}]", f'address = "127.0.0.1:{port}"',
             f"protocol_version = {version}", "reconnect_min = 0.1", "reconnect_max = 0.5",
             *(f"{k} = {v}" for k, v in extra.items()),
             f"[[bridges.{name}.egress]]", 'filter = "out/#"', 'prefix = "from-local/"',
             "qos = 2",
             f"[[bridges.{name}.egress]]", 'filter = "both/#"', "qos = 2",
             f"[[bridges.{name}.ingress]]", 'filter = "in/#"', 'prefix = "from-remote/"',
             "qos = 2",
             f"[[bridges.{name}.ingress]]", 'filter = "both/#"', "qos = 2", ""]
    return "\n".join(lines)


def wait_state(broker: BrokerProcess, name: str, state: str, timeout: float = 3 * WAIT
               ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row: dict[str, Any] = ctl_json(broker, "bridges", "status", name)
        if row["state"] == state:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"bridge {name} not {state}: {row}\n{broker.log()}")
        time.sleep(0.05)


def client(peer: Any, version: int, client_id: str = "", **kw: Any) -> Client:
    c = Client(peer, client_id, version=version, **kw)
    c.connect()
    return c


def wait_ingress(remote_pub: Client, local_sub: Client, topic: str) -> None:
    """The bridge's ingress subscription is in place once a probe comes through (it is
    made after CONNACK, so 'connected' alone does not say so)."""
    for _ in range(50):
        remote_pub.publish(topic, b"probe", 0)
        try:
            local_sub.expect_message(0.2)
        except AssertionError:
            continue
        # Drain the probes still on their way, up to the sentinel.
        remote_pub.publish(topic, b"sentinel", 1)
        while local_sub.expect_message().payload != b"sentinel":
            pass
        return
    raise AssertionError("the bridge's ingress subscription never came through")


def exchange(local: Any, remote: Any, version: int, no_echo: bool) -> None:
    """Both directions at QoS 0, 1 and 2; and a topic bridged both ways arrives once."""
    u = uid()
    remote_sub = client(remote, version)
    local_sub = client(local, version)
    assert remote_sub.subscribe(f"from-local/out/{u}/#", 2) == [2]
    assert local_sub.subscribe(f"from-remote/in/{u}/#", 2) == [2]
    local_pub, remote_pub = client(local, version), client(remote, version)
    wait_ingress(remote_pub, local_sub, f"in/{u}/probe")
    for qos in (0, 1, 2):
        local_pub.publish(f"out/{u}/{qos}", f"egress {qos}".encode(), qos)
        msg = remote_sub.expect_message()
        assert (msg.topic, msg.payload, msg.qos) == (f"from-local/out/{u}/{qos}",
                                                     f"egress {qos}".encode(), qos)
        remote_pub.publish(f"in/{u}/{qos}", f"ingress {qos}".encode(), qos)
        msg = local_sub.expect_message()
        assert (msg.topic, msg.payload, msg.qos) == (f"from-remote/in/{u}/{qos}",
                                                     f"ingress {qos}".encode(), qos)
    if no_echo:
        # both/# goes out and comes in unchanged: No Local keeps the remote from sending
        # back what the bridge published, and what came in is never sent out again.
        assert local_sub.subscribe(f"both/{u}", 1) == [1]
        assert remote_sub.subscribe(f"both/{u}", 1) == [1]
        local_pub.publish(f"both/{u}", b"from local", 1)
        assert remote_sub.expect_message().payload == b"from local"
        remote_pub.publish(f"both/{u}", b"from remote", 1)
        assert local_sub.expect_message().payload == b"from local"
        assert local_sub.expect_message().payload == b"from remote"
        assert remote_sub.expect_message().payload == b"from remote"
        local_pub.publish(f"both/{u}", b"sentinel", 1)
        remote_pub.publish(f"both/{u}", b"sentinel 2", 1)
        # (two publishers: no order between them; the bridge writes at the end of its turn)
        assert sorted(m.payload for m in local_sub.expect_messages(2)) == [b"sentinel",
                                                                           b"sentinel 2"]
        assert sorted(m.payload for m in remote_sub.expect_messages(2)) == [b"sentinel",
                                                                            b"sentinel 2"]
        local_sub.assert_no_message()
        remote_sub.assert_no_message()
    for c in (remote_sub, local_sub, local_pub, remote_pub):
        c.close()


@pytest.mark.parametrize("version", [4, 5])
def test_mqttd_to_mqttd_both_directions(version: int) -> None:
    with checked_broker() as remote, \
            checked_broker(bridge_config("r", remote.port, version)) as local:
        row = wait_state(local, "r", "connected")
        assert row["protocol"] == ("5" if version == 5 else "3.1.1")
        exchange(local, remote, version, no_echo=version == 5)
        row = ctl_json(local, "bridges", "status", "r")
        assert row["sent"] >= 2 and row["received"] >= 2 and row["last_error"] is None
        assert row["queued"] == 0 and row["inflight"] == 0


@pytest.mark.parametrize(("version", "try_private"), [(4, False), (4, True), (5, False)])
def test_mqttd_and_mosquitto_both_directions(version: int, try_private: bool) -> None:
    """On 3.1.1 with try_private mosquitto knows the bridge for one and sends nothing back
    to it, so a topic bridged both ways arrives once, as with No Local on 5."""
    with Mosquitto() as mosq, checked_broker(bridge_config(
            "m", mosq.port, version, try_private=str(try_private).lower())) as local:
        wait_state(local, "m", "connected")
        exchange(local, _Peer(mosq.port), version, no_echo=version == 5 or try_private)
        assert "mqttd@127.0.0.1-bridge-m" in mosq.log()


class _Remote:
    """A remote broker that can be stopped and started again on the same port with its
    state kept: mqttd with its durable store, or mosquitto with persistence (saved at
    SIGTERM). Stopped by its PID."""

    def __init__(self, kind: str, directory: Path, *, started: bool = True) -> None:
        self.kind, self.dir = kind, directory
        self.port = free_port()
        self.host = "127.0.0.1"
        self.mqttd: BrokerProcess | None = None
        self.mosq: subprocess.Popen[bytes] | None = None
        if started:
            self.start()

    def start(self) -> None:
        if self.kind == "mqttd":
            if self.mqttd is not None:
                self.mqttd.cleanup()  # stopped: its log and config go, the data stays
            conf = f'[listeners.default]\nbind = "127.0.0.1"\nport = {self.port}\n'
            self.mqttd = BrokerProcess(conf, extra_args=["--data-dir", str(self.dir)])
            return
        self.dir.mkdir(exist_ok=True)
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join([
            "allow_anonymous true", "persistence true", f"persistence_location {self.dir}/",
            "log_type all", "log_dest stderr", *(["user root"] if os.geteuid() == 0 else []),
            f"listener {self.port} 127.0.0.1", ""]))
        log = self.dir / "mosquitto.log"
        before = log.read_bytes().count(b" running") if log.exists() else 0
        with open(log, "ab") as out:
            self.mosq = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 2 * WAIT
        while log.read_bytes().count(b" running") <= before:
            assert self.mosq.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)

    def stop(self) -> None:
        if self.mqttd is not None:
            self.mqttd.stop()
        if self.mosq is not None and self.mosq.poll() is None:
            self.mosq.send_signal(signal.SIGTERM)
            self.mosq.wait(2 * WAIT)

    def close(self) -> None:
        self.stop()
        if self.mqttd is not None:
            self.mqttd.cleanup()


@pytest.mark.parametrize(("kind", "qos", "version", "resume"), [
    ("mqttd", 1, 4, False), ("mosquitto", 1, 4, False), ("mqttd", 2, 5, True),
    ("mosquitto", 2, 5, True)])
def test_remote_restarted_while_messages_flow(tmp_path: Path, kind: str, qos: int,
                                              version: int, resume: bool) -> None:
    """A remote (mqttd with its durable store, or mosquitto with persistence) stopped and
    started again on the same port while a publisher sends QoS 1 (or 2) messages to the
    local broker: every message the local broker acknowledged reaches the remote's
    subscriber (buffered by the bridge while the remote is down). ``resume``: the bridge's
    session on the remote is kept (clean_start = false, session_expiry), so what was in
    flight is resent in it (PUBLISH with DUP, or PUBREL)."""
    total = 400
    remote = _Remote(kind, tmp_path / "remote")
    extra = {"clean_start": "false", "session_expiry": 300} if resume else {}
    try:
        with checked_broker(bridge_config("r", remote.port, version, **extra)) as local:
            wait_state(local, "r", "connected")
            u = uid()
            sub = Client(remote, f"sub-{u}", version=4, clean=False)
            sub.connect()
            assert sub.subscribe(f"from-local/out/{u}/#", qos) == [qos]
            pub = client(local, version)
            acked: list[int] = []
            failed: queue.Queue[BaseException] = queue.Queue()
            down_seen = threading.Event()

            def publish() -> None:
                try:
                    for i in range(total):
                        if i == total // 2:
                            # The second half at least is published with the remote down.
                            assert down_seen.wait(6 * WAIT)
                        pub.publish(f"out/{u}/{i}", str(i).encode(), qos)
                        acked.append(i)
                        time.sleep(0.002)
                except BaseException as err:  # reported by the main thread
                    failed.put(err)

            t = threading.Thread(target=publish)
            t.start()
            got: set[int] = set()
            while len(got) < 50:
                got.add(int(sub.expect_message().payload))
            remote.stop()
            sub.wait_disconnected()
            # What this connection received after the 50th (acknowledged by paho) counts.
            while not sub.messages.empty():
                got.add(int(sub.messages.get_nowait().payload))
            row = wait_state(local, "r", "waiting")
            assert row["last_error"], row
            down_seen.set()
            # What the local broker acknowledges now waits in the bridge's queue.
            deadline = time.monotonic() + 3 * WAIT
            while ctl_json(local, "bridges", "status", "r")["queued"] < 20:
                assert time.monotonic() < deadline, ctl_json(local, "bridges", "status", "r")
                time.sleep(0.02)
            remote.start()
            t.join(60)
            assert not t.is_alive() and failed.empty(), list(failed.queue)
            assert acked == list(range(total))
            sub = Client(remote, f"sub-{u}", version=4, clean=False)
            sub.connect()
            assert sub.session_present
            deadline = time.monotonic() + 6 * WAIT
            while len(got) < total and time.monotonic() < deadline:
                try:
                    got.add(int(sub.expect_message(2 * WAIT).payload))
                except AssertionError:
                    break
            assert got == set(range(total)), (sorted(set(range(total)) - got)[:20],
                                              ctl_json(local, "bridges", "status", "r"))
            row = wait_state(local, "r", "connected")
            assert row["queued"] == 0 and row["dropped_queue_full"] == 0
            assert row["connects"] >= 2
            assert row["session_present"] is resume, row
            sub.close()
            pub.close()
    finally:
        remote.close()


@contextmanager
def _generations(remote: _Remote, config: str) -> Iterator[list[BrokerProcess]]:
    """The local broker's processes on one data directory, the first started on ``config``
    (a test appends the next ones, ``_restarted``). At the end the remote is closed, the
    last one stopped, every one's files removed; the last must have exited 0 with no
    traceback in its log."""
    brokers: list[BrokerProcess] = []
    try:
        brokers.append(BrokerProcess(config))
        yield brokers
    finally:
        remote.close()
        if brokers:
            code = brokers[-1].stop()
            log = brokers[-1].log()
            for b in brokers:
                b.cleanup()
    assert code == 0, log
    assert "Traceback" not in log, log


def _restarted(previous: BrokerProcess, config: str) -> BrokerProcess:
    """A broker on ``previous``'s data directory (``previous`` has stopped)."""
    assert previous.proc.poll() is not None
    b = BrokerProcess(config, extra_args=["--data-dir", str(previous.data_dir)])
    b.data_dir = previous.data_dir  # (its control socket is there)
    return b


async def _as_earlier_version(data_dir: Path, space: str) -> int:
    """Store the records of ``space`` under keys as mqttd wrote them before 0106331 (the
    number zero-padded to 12 hex digits), through the store's own classes; how many."""
    path = str(data_dir / "mqttd.db")
    backend = SqliteBackend(path)
    restored = backend.open()
    oplog = OpLog(path)
    restored, _ = replay(oplog, backend, restored)
    journal = Journal(backend, "process", oplog, restored.last_msg_id)
    journal.start(asyncio.get_running_loop())
    kv = KVStore(journal, restored.kv).space(space)
    records = dict(kv.records)
    for key, value in records.items():
        kv.delete(key)
        kv.put(f"{int(key, 16):012x}", value)
    await journal.aclose()
    return len(records)


def test_queue_stored_by_an_earlier_version_keeps_its_order(tmp_path: Path) -> None:
    """A queue stored under the earlier keys (zero-padded hex) is sent first and in its
    order, and what this version queues after it follows it, across restarts."""
    remote = _Remote("mosquitto", tmp_path / "remote", started=False)
    u = uid()
    with _generations(remote, bridge_config("r", remote.port, 4)) as brokers:
        wait_state(brokers[0], "r", "waiting")
        pub = client(brokers[0], 4)
        for i in range(10):
            assert pub.publish(f"out/{u}", str(i).encode(), 1) in (0, 0x10)
        pub.close()
        brokers[0].stop()
        assert asyncio.run(_as_earlier_version(brokers[0].data_dir, "bridge/r")) == 10
        brokers.append(_restarted(brokers[-1], bridge_config("r", remote.port, 4)))
        assert "bridge r: 10 stored messages queued for the remote" in brokers[1].log()
        wait_state(brokers[1], "r", "waiting")
        pub = client(brokers[1], 4)
        for i in range(10, 30):  # keys after the earlier ones: hex(seq), 0xb to 0x1e
            # (in string order 0x10 would come before 0xb)
            assert pub.publish(f"out/{u}", str(i).encode(), 1) in (0, 0x10)
        pub.close()
        brokers[1].stop(signal.SIGKILL)
        # Started again, the bridge off until the remote's subscriber is there.
        brokers.append(_restarted(brokers[-1], bridge_config("r", remote.port, 4,
                                                             enable="false")))
        assert "bridge r: 30 stored messages queued for the remote" in brokers[2].log()
        remote.start()
        sub = Client(remote, f"sub-{u}", version=4)
        sub.connect()
        assert sub.subscribe(f"from-local/out/{u}", 1) == [1]
        ok(brokers[2], "bridges", "start", "r")
        got = [int(m.payload) for m in sub.expect_messages(30)]
        assert got == list(range(30))  # one topic and QoS: the order MQTT promises
        sub.close()


@pytest.mark.parametrize("version", [4, 5])
def test_queue_survives_kill_9_of_the_local_broker(tmp_path: Path, version: int) -> None:
    """The local mqttd (durable store, the default) bridged to a mosquitto that is not
    running: QoS 1 and 2 messages it acknowledges wait in the bridge's queue, in the store;
    kill -9, restart: they are queued again, and once mosquitto runs every one of them
    reaches its subscriber. Acknowledged by the remote, they leave the store: a second kill
    -9 and restart finds nothing queued."""
    total = 120
    remote = _Remote("mosquitto", tmp_path / "remote", started=False)
    u = uid()
    with _generations(remote, bridge_config("r", remote.port, version)) as brokers:
        row = wait_state(brokers[0], "r", "waiting")
        assert row["last_error"], row
        pub = client(brokers[0], version)
        for i in range(total):  # one topic per QoS: the order MQTT promises is per topic
            # and QoS (MQTT-4.6.0-6), which the remote keeps; a topic per message, as
            # before, asked mosquitto for more than that
            qos = 1 + i % 2
            assert pub.publish(f"out/{u}/q{qos}", str(i).encode(), qos) in (0, 0x10)
        assert ctl_json(brokers[0], "bridges", "status", "r")["queued"] == total
        brokers[0].stop(signal.SIGKILL)
        # Started again, the bridge off until the remote's subscriber is there.
        again = bridge_config("r", remote.port, version, enable="false")
        brokers.append(_restarted(brokers[-1], again))
        assert f"bridge r: {total} stored messages queued for the remote" in brokers[1].log()
        assert ctl_json(brokers[1], "bridges", "status", "r")["queued"] == total
        remote.start()
        sub = Client(remote, f"sub-{u}", version=4)
        sub.connect()
        assert sub.subscribe(f"from-local/out/{u}/#", 2) == [2]
        ok(brokers[1], "bridges", "start", "r")
        got = [int(m.payload) for m in sub.expect_messages(total)]
        assert sorted(got) == list(range(total))
        for qos in (1, 2):  # in the order they were published, per topic and QoS
            # (mosquitto delivers a QoS 2 message at PUBREL: the two interleave otherwise)
            assert [i for i in got if i % 2 != qos % 2] == list(range(qos - 1, total, 2))
        deadline = time.monotonic() + 3 * WAIT
        while (row := ctl_json(brokers[1], "bridges", "status", "r"))["acked"] < total:
            assert time.monotonic() < deadline, row
            time.sleep(0.02)
        assert row["queued"] == row["inflight"] == 0, row
        brokers[1].stop(signal.SIGKILL)
        brokers.append(_restarted(brokers[-1], again))
        assert ctl_json(brokers[2], "bridges", "status", "r")["queued"] == 0
        assert "stored messages queued" not in brokers[2].log()
        ok(brokers[2], "bridges", "start", "r")
        wait_state(brokers[2], "r", "connected")
        sub.assert_no_message()
        sub.close()
        pub.close()


def test_removed_bridges_queue_is_kept_listed_and_purged(tmp_path: Path) -> None:
    """Bridges removed from the configuration (restart) with messages they had not sent:
    their stored queues are kept, said in the log and listed by ``bridges orphans``; one
    added again (conf reload) sends them to a real mosquitto, the other is dropped by
    ``bridges purge`` (logged with its count); after a restart nothing of it is left."""
    dead = free_port()
    remote = _Remote("mosquitto", tmp_path / "remote")
    u = uid()
    three = "".join(bridge_config(n, dead, 4) for n in ("keep", "back", "gone"))
    with _generations(remote, three) as brokers:
        pub = client(brokers[0], 4)
        for i in range(5):  # each bridge queues each message (their remote is down)
            assert pub.publish(f"out/{u}/{i}", str(i).encode(), 1 + i % 2) == 0
        assert all(r["queued"] == 5 for r in ctl_json(brokers[0], "bridges", "list"))
        pub.close()
        assert brokers[0].stop() == 0
        brokers.append(_restarted(brokers[0], bridge_config("keep", dead, 4)))
        log = brokers[1].log()
        for name in ("back", "gone"):
            assert (f"bridge {name}: not in the configuration, but 5 messages it had not "
                    "sent are in the store: kept") in log, log
        assert ctl_json(brokers[1], "bridges", "orphans") == [
            {"name": "back", "stored": 5}, {"name": "gone", "stored": 5}]
        assert [r["name"] for r in ctl_json(brokers[1], "bridges", "list")] == ["keep"]
        r = ctl(brokers[1], "bridges", "purge", "keep")  # configured: its queue is in use
        assert r.code == 1 and "in the configuration" in r.err, r
        r = ctl(brokers[1], "bridges", "purge", "nosuch")
        assert r.code == 1 and "not found" in r.err, r
        assert "5 messages dropped" in ok(brokers[1], "bridges", "purge", "gone")
        assert ("bridge gone: 5 stored messages it had not sent purged"
                in brokers[1].log())
        assert ctl_json(brokers[1], "bridges", "orphans") == [{"name": "back", "stored": 5}]
        # "back" added again, to a running mosquitto: its stored messages reach it.
        sub = Client(remote, f"sub-{u}", version=4)
        sub.connect()
        assert sub.subscribe(f"from-local/out/{u}/#", 2) == [2]
        config = brokers[1].config_path.read_text()
        brokers[1].config_path.write_text(bridge_config("back", remote.port, 4) + config)
        applied = {r["key"]: r["change"] for r in
                   ctl_json(brokers[1], "conf", "reload")["applied"]}
        assert applied == {"bridges.back": "added"}, applied
        assert sorted(int(m.payload) for m in sub.expect_messages(5)) == list(range(5))
        deadline = time.monotonic() + 3 * WAIT
        while (row := ctl_json(brokers[1], "bridges", "status", "back"))["acked"] < 5:
            assert time.monotonic() < deadline, row
            time.sleep(0.02)
        assert ctl_json(brokers[1], "bridges", "orphans") == []
        sub.assert_no_message()
        sub.close()
        # Restarted with all three configured: "gone" and "back" have nothing stored.
        assert brokers[1].stop() == 0
        brokers.append(_restarted(brokers[1], three))
        for name in ("back", "gone"):
            assert ctl_json(brokers[2], "bridges", "status", name)["queued"] == 0
        assert ctl_json(brokers[2], "bridges", "status", "keep")["queued"] == 5
        assert ctl_json(brokers[2], "bridges", "orphans") == []
        assert "not in the configuration" not in brokers[2].log()


def test_publishers_wait_while_the_bridge_queue_is_at_pause_queued() -> None:
    """The remote stops reading (mosquitto stopped with SIGSTOP): a QoS 1 publisher of
    bridged topics gets no more acknowledgements once the bridge's queue holds
    ``pause_queued`` messages, and the queue stays there (the publisher waits instead of the
    queue growing); the remote going on, every message arrives and none was dropped."""
    count, window, pause = 300, 10, 20
    conf = ('[mqtt]\nmqueue_backpressure_timeout = "10m"\n'  # only room ends the wait
            + bridge_config("m", 0, 4, max_inflight=window, pause_queued=pause))
    with Mosquitto() as mosq, checked_broker(conf.replace(
            '"127.0.0.1:0"', f'"127.0.0.1:{mosq.port}"')) as local:
        wait_state(local, "m", "connected")
        u = uid()
        sub = client(_Peer(mosq.port), 4)
        assert sub.subscribe(f"from-local/out/{u}/#", 1) == [1]
        assert mosq.proc is not None
        os.kill(mosq.proc.pid, signal.SIGSTOP)
        try:
            pub = Client(local, f"pub-{u}")
            pub.c.max_inflight_messages_set(count)  # everything sent at once
            pub.connect()
            mids = [pub.c.publish(f"out/{u}/{i}", str(i).encode(), 1).mid
                    for i in range(count)]

            def acked() -> int:
                with pub._cond:
                    return sum(m in pub._pubacks for m in mids)

            deadline = time.monotonic() + 3 * WAIT
            while (row := ctl_json(local, "bridges", "status", "m"))["queued"] < pause:
                assert time.monotonic() < deadline, row
                time.sleep(0.02)
            time.sleep(0.5)  # (the remote still stopped: nothing may move meanwhile)
            row = ctl_json(local, "bridges", "status", "m")
            assert (row["queued"], row["inflight"]) == (pause, window), row
            # The message that filled the queue waits for its PUBACK, and all after it.
            assert acked() <= window + pause - 1, row
        finally:
            os.kill(mosq.proc.pid, signal.SIGCONT)
        got = {int(m.payload) for m in sub.expect_messages(count)}
        assert got == set(range(count))
        pub._wait(lambda: acked() == count, "every PUBACK", 3 * WAIT)
        deadline = time.monotonic() + 3 * WAIT
        while (row := ctl_json(local, "bridges", "status", "m"))["acked"] < count:
            assert time.monotonic() < deadline, row
            time.sleep(0.02)
        assert row["dropped_queue_full"] == 0 and row["acked"] == count, row
        sub.close()
        pub.close()


def test_qos0_publisher_waits_while_the_remote_reads_nothing() -> None:
    """QoS 0 has no acknowledgement to hold: a publisher flooding a bridged topic while the
    remote reads nothing (mosquitto stopped with SIGSTOP) has its reading paused once 1 MB
    waits unwritten, instead of the bridge dropping what does not fit (past 4 MB); the
    remote going on, every message is written to it and none was dropped."""
    total = 400_000  # 28 MB: more than the sockets' buffers and the bridge's 4 MB
    conf = ('[mqtt]\nmqueue_backpressure_timeout = "10m"\n'
            '[bridges.m]\naddress = "127.0.0.1:{port}"\n'
            '[[bridges.m.egress]]\nfilter = "out/#"\nqos = 0\n')
    with Mosquitto() as mosq, checked_broker(conf.format(port=mosq.port)) as local:
        wait_state(local, "m", "connected")
        assert mosq.proc is not None
        os.kill(mosq.proc.pid, signal.SIGSTOP)
        try:
            raw = socket.create_connection(("127.0.0.1", local.port), timeout=30)
            raw.sendall(bytes.fromhex("100e00044d5154540402003c00027071"))  # CONNECT "pq"
            assert raw.recv(4) == bytes.fromhex("20020000")
            body = b"\x00\x05out/x" + b"p" * 64
            batch = (b"\x30" + bytes([len(body)]) + body) * 1000
            done = threading.Event()

            def flood() -> None:
                for _ in range(total // 1000):
                    raw.sendall(batch)  # blocks while mqttd does not read
                done.set()

            t = threading.Thread(target=flood, daemon=True)
            t.start()
            # Until the bridge stops taking messages (the remote reads nothing).
            last, deadline = -1, time.monotonic() + 6 * WAIT
            while (sent := ctl_json(local, "bridges", "status", "m")["sent"]) != last:
                assert time.monotonic() < deadline and not done.is_set(), sent
                last = sent
                time.sleep(0.5)
            assert 0 < sent < total
        finally:
            os.kill(mosq.proc.pid, signal.SIGCONT)
        t.join(6 * WAIT)
        assert done.is_set()
        deadline = time.monotonic() + 6 * WAIT
        while (row := ctl_json(local, "bridges", "status", "m"))["sent"] < total:
            assert time.monotonic() < deadline, row
            time.sleep(0.05)
        assert row["dropped_qos0_offline"] == 0 and row["sent"] == total, row
        raw.sendall(b"\xe0\x00")
        raw.close()


def test_unreachable_remote_says_why_and_others_work() -> None:
    dead = free_port()  # nothing listens there
    with checked_broker() as remote:
        conf = (bridge_config("dead", dead, 5, max_queued=3)
                + bridge_config("live", remote.port, 5))
        with checked_broker(conf) as local:
            wait_state(local, "live", "connected")
            # The dead bridge keeps trying: each failure counted, the reason kept.
            deadline = time.monotonic() + 3 * WAIT
            while True:
                row = ctl_json(local, "bridges", "status", "dead")
                if row["connect_failures"] >= 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert row["connect_failures"] >= 3, row
            assert row["state"] in ("waiting", "connecting")
            assert "Connect call failed" in row["last_error"] or \
                "refused" in row["last_error"].lower(), row
            # Its buffer is bounded: the oldest QoS 1 messages are dropped and counted.
            u = uid()
            remote_sub = client(remote, 5)
            assert remote_sub.subscribe(f"from-local/out/{u}/#", 1) == [1]
            pub = client(local, 5)
            for i in range(5):
                pub.publish(f"out/{u}/{i}", str(i).encode(), 1)
            # The other bridge was not held up by it.
            assert [int(m.payload) for m in remote_sub.expect_messages(5)] == list(range(5))
            row = ctl_json(local, "bridges", "status", "dead")
            assert (row["queued"], row["dropped_queue_full"]) == (3, 2)
            out = ok(local, "bridges", "list")
            assert "dead" in out and "live" in out and "connected" in out
            rows = {r["name"]: r for r in ctl_json(local, "bridges", "list")}
            assert rows["live"]["state"] == "connected" and rows["dead"]["last_error"]
            # ctl stop / start.
            assert ctl_json(local, "bridges", "stop", "dead") == {"name": "dead",
                                                                  "stopped": True}
            assert ctl_json(local, "bridges", "status", "dead")["state"] == "stopped"
            r = ctl(local, "bridges", "stop", "dead")
            assert r.code == 1 and "stopped already" in r.err, r
            ok(local, "bridges", "start", "dead")
            assert ctl_json(local, "bridges", "status", "dead")["state"] != "stopped"
            r = ctl(local, "bridges", "status", "nope")
            assert r.code == 1 and "nope" in r.err, r
            remote_sub.close()
            pub.close()


def test_stop_and_start_a_connected_bridge_keeps_its_queue() -> None:
    with checked_broker() as remote, \
            checked_broker(bridge_config("r", remote.port, 5)) as local:
        wait_state(local, "r", "connected")
        u = uid()
        remote_sub = client(remote, 5)
        assert remote_sub.subscribe(f"from-local/out/{u}/#", 1) == [1]
        ok(local, "bridges", "stop", "r")
        pub = client(local, 5)
        # A stopped bridge forwards nothing.
        for i in range(3):
            pub.publish(f"out/{u}/{i}", str(i).encode(), 1)
        assert ctl_json(local, "bridges", "status", "r")["queued"] == 0
        ok(local, "bridges", "start", "r")
        wait_state(local, "r", "connected")
        pub.publish(f"out/{u}/after", b"after", 1)
        assert remote_sub.expect_message().payload == b"after"
        remote_sub.close()
        pub.close()


@pytest.mark.parametrize(("table", "expected"), [
    ('address = "nowhere"\n[[bridges.b.egress]]\nfilter = "a/#"',
     "bridges.b.address: expected host:port"),
    ('address = "127.0.0.1:1883"\nprotocol_version = 3\n[[bridges.b.egress]]\nfilter = "a"',
     "bridges.b.protocol_version: 4 (MQTT 3.1.1) or 5"),
    ('address = "127.0.0.1:1883"\n[[bridges.b.ingress]]\nfilter = "a/#/b"',
     "bridges.b.ingress[0].filter: 'a/#/b'"),
    ('address = "127.0.0.1:1883"\n[[bridges.b.egress]]\nfilter = "a"\nqos = 3',
     "bridges.b.egress[0].qos"),
    ('address = "127.0.0.1:1883"', "bridges.b: no egress and no ingress mapping"),
    ('address = "127.0.0.1:1883"\nkeepalives = 3\n[[bridges.b.egress]]\nfilter = "a"',
     "bridges.b.keepalives: unknown key (did you mean keepalive?)"),
])
def test_bad_bridge_config_is_refused(tmp_path: Path, table: str, expected: str) -> None:
    conf = tmp_path / "mqttd.toml"
    conf.write_text(f"[bridges.b]\n{table}\n")
    r = run_mqttd("config", "check", "-c", str(conf))
    assert r.returncode != 0, r
    assert expected in r.stderr + r.stdout, r
    assert "Traceback" not in r.stderr


def test_tls_to_mosquitto_with_client_certificate(tmp_path: Path) -> None:
    """The bridge over TLS to a mosquitto that requires a client certificate (both ways);
    a bridge that does not trust the server's CA keeps retrying and says why."""
    pki = make_pki(tmp_path)
    cert, key = pki.client("bridge")
    lines = [f"cafile {pki.ca_cert}", f"certfile {pki.server_cert}",
             f"keyfile {pki.server_key}", "require_certificate true"]
    with Mosquitto(lines) as mosq:
        good = bridge_config("tls", mosq.port, 5, tls="true", cafile=f'"{pki.ca_cert}"',
                             certfile=f'"{cert}"', keyfile=f'"{key}"')
        wrong = bridge_config("wrongca", mosq.port, 5, tls="true",
                              cafile=f'"{pki.other_ca_cert}"', certfile=f'"{cert}"',
                              keyfile=f'"{key}"')
        missing = bridge_config("missing", mosq.port, 5, tls="true",
                                cafile=f'"{tmp_path / "nope.pem"}"')
        with checked_broker(good + wrong + missing) as local:
            wait_state(local, "tls", "connected")
            exchange(local, _Peer(mosq.tcp_port), 5, no_echo=False)
            deadline = time.monotonic() + 3 * WAIT
            while True:
                row = ctl_json(local, "bridges", "status", "wrongca")
                if row["last_error"] or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert "CERTIFICATE_VERIFY_FAILED" in (row["last_error"] or ""), row
            assert row["state"] != "connected"
            row = ctl_json(local, "bridges", "status", "missing")
            assert row["last_error"] == (f"TLS files: cafile: cannot read "
                                         f"{tmp_path / 'nope.pem'}: No such file or "
                                         "directory"), row


def test_config_check_reads_bridge_tls_files(tmp_path: Path) -> None:
    """`mqttd config check` reads a bridge's TLS files as the bridge will: a missing file,
    a CA file without a certificate, a certificate that is not one: each problem on its
    own line naming the bridge, the key and the file; exit 2. Good files pass."""
    pki = make_pki(tmp_path)
    cert, key = pki.client("bridge")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    conf = tmp_path / "mqttd.toml"
    conf.write_text(
        bridge_config("missing", 1883, 4, tls="true", cafile=f'"{tmp_path / "nope.pem"}"')
        + bridge_config("badca", 1883, 4, tls="true", cafile=f'"{junk}"')
        + bridge_config("badcert", 1883, 4, tls="true", cafile=f'"{pki.ca_cert}"',
                        certfile=f'"{junk}"', keyfile=f'"{key}"')
        + bridge_config("good", 1883, 4, tls="true", cafile=f'"{pki.ca_cert}"',
                        certfile=f'"{cert}"', keyfile=f'"{key}"'))
    r = run_mqttd("config", "check", "-c", str(conf))
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert lines[0] == (f"{conf}: bridges.missing.cafile: cannot read {tmp_path / 'nope.pem'}: "
                        "No such file or directory"), lines
    assert lines[1].startswith(f"{conf}: bridges.badca.cafile: {junk}: no PEM certificate "
                               "in it"), lines
    assert lines[2].startswith(f"{conf}: bridges.badcert.certfile/keyfile: {junk} with {key}: "
                               "not a certificate and its key"), lines
    assert len(lines) == 3 and "Traceback" not in r.stderr, lines


def test_refused_credentials_are_the_reason() -> None:
    with checked_broker("[mqtt]\nallow_anonymous = false\n") as remote, \
            checked_broker(bridge_config("r", remote.port, 5, username='"nobody"',
                                         password='"pw-9f3c1e"')) as local:
        deadline = time.monotonic() + 3 * WAIT
        while True:
            row = ctl_json(local, "bridges", "status", "r")
            if row["last_error"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert row["last_error"] == "the remote refused the connection: CONNACK 0x86", row
        assert row["state"] in ("waiting", "connecting") and row["connects"] == 0
        assert "pw-9f3c1e" not in local.log()  # the password is never logged


def test_conf_reload_applies_bridges() -> None:
    """`mqttd ctl conf reload` with [bridges] changed: a removed bridge goes, an added one
    starts, a changed one reconnects with its new settings (here another remote and a new
    prefix) and keeps its queue (what it queued while its old remote was unreachable
    reaches the new one, under the topic it was mapped to when taken)."""
    dead = free_port()
    with checked_broker() as remote, checked_broker(
            bridge_config("b", dead, 4) + bridge_config("gone", dead, 4)) as local:
        u = uid()
        pub = client(local, 4)
        assert pub.publish(f"out/{u}/queued", b"queued", 1) == 0  # b's remote: unreachable
        assert ctl_json(local, "bridges", "status", "b")["queued"] == 1
        sub = client(remote, 4)
        assert sub.subscribe(f"+/out/{u}/#", 1) == [1]
        text = local.config_path.read_text()
        local.config_path.write_text(  # (the listener as it was)
            bridge_config("b", remote.port, 4).replace('"from-local/"', '"v2/"')
            + bridge_config("added", remote.port, 5).replace('"out/#"', '"other/#"')
            + text[text.index("[listeners.default]"):])
        data = ctl_json(local, "conf", "reload")
        applied = {r["key"]: r["change"] for r in data["applied"]}
        assert applied["bridges.b"].startswith("changed"), data
        assert applied["bridges.added"] == "added", data
        # (the message went to both bridges: "gone" keeps its copy in the store)
        assert applied["bridges.gone"] == ("removed (1 messages not sent, kept in the "
                                           "store: 'mqttd ctl bridges purge gone' drops "
                                           "them)"), data
        assert not data["restart"] and len(applied) == 3, data
        assert sorted(r["name"] for r in ctl_json(local, "bridges", "list")) == ["added", "b"]
        wait_state(local, "b", "connected")
        wait_state(local, "added", "connected")
        # Queued before: mapped when taken (the old prefix); taken after: the new one.
        msg = sub.expect_message()
        assert (msg.topic, msg.payload) == (f"from-local/out/{u}/queued", b"queued")
        assert pub.publish(f"out/{u}/new", b"new", 1) == 0
        msg = sub.expect_message()
        assert (msg.topic, msg.payload) == (f"v2/out/{u}/new", b"new")
        sub.assert_no_message()
        for c in (pub, sub):
            c.close()


def test_try_private_refused_by_mqttd_says_so() -> None:
    with checked_broker() as remote, \
            checked_broker(bridge_config("r", remote.port, 4, try_private="true")) as local:
        deadline = time.monotonic() + 3 * WAIT
        while True:
            row = ctl_json(local, "bridges", "status", "r")
            if row["last_error"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert row["last_error"] == "the remote refused the connection: CONNACK 0x01", row


def test_message_expiry_while_queued(tmp_path: Path) -> None:
    """MQTT 5: a message that expires while it waits for the remote is not sent (counted);
    one that does not is sent with what is left of its Message Expiry Interval."""
    remote = _Remote("mqttd", tmp_path / "remote")
    try:
        with checked_broker(bridge_config("r", remote.port, 5)) as local:
            wait_state(local, "r", "connected")
            u = uid()
            sub = Client(remote, f"sub-{u}", version=5,
                         properties=props(PacketTypes.CONNECT, SessionExpiryInterval=300))
            sub.connect(clean_start=False)
            assert sub.subscribe(f"from-local/out/{u}/#", 1) == [1]
            remote.stop()
            sub.wait_disconnected()
            wait_state(local, "r", "waiting")
            pub = client(local, 5)
            pub.publish(f"out/{u}/short", b"short", 1, properties=props(
                PacketTypes.PUBLISH, MessageExpiryInterval=1))
            pub.publish(f"out/{u}/long", b"long", 1, properties=props(
                PacketTypes.PUBLISH, MessageExpiryInterval=600))
            assert ctl_json(local, "bridges", "status", "r")["queued"] == 2
            time.sleep(1.2)  # the short one's interval runs out while the remote is down
            remote.start()
            wait_state(local, "r", "connected")
            sub = Client(remote, f"sub-{u}", version=5,
                         properties=props(PacketTypes.CONNECT, SessionExpiryInterval=300))
            sub.connect(clean_start=False)
            msg = sub.expect_message()
            assert msg.payload == b"long"
            assert 590 <= msg.properties.MessageExpiryInterval < 600
            pub.publish(f"out/{u}/sentinel", b"sentinel", 1)
            assert sub.expect_message().payload == b"sentinel"
            sub.assert_no_message()
            row = ctl_json(local, "bridges", "status", "r")
            assert row["expired"] == 1 and row["queued"] == 0, row
            sub.close()
            pub.close()
    finally:
        remote.close()


class _ScriptedRemote:
    """A remote broker played by the test over a raw socket (MQTT 3.1.1): it accepts the
    bridge, answers its CONNECT and acknowledges exactly what the test says."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.buf = b""

    def accept(self) -> None:
        self.listener.settimeout(3 * WAIT)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(3 * WAIT)
        kind, _ = self.packet()
        assert kind >> 4 == 1, kind  # CONNECT
        self.conn.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted

    def packet(self) -> tuple[int, bytes]:
        """The next packet the bridge sent: its first byte and its body."""
        assert self.conn is not None
        while True:
            if len(self.buf) >= 2:
                length, mult, i = 0, 1, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    length += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        break
                else:
                    i = 0
                if i and len(self.buf) >= i + length:
                    kind, body = self.buf[0], self.buf[i:i + length]
                    self.buf = self.buf[i + length:]
                    return kind, body
            data = self.conn.recv(65536)
            assert data, "the bridge closed its connection"
            self.buf += data

    def publish(self) -> tuple[int, bytes]:
        """The next PUBLISH (QoS 1): its packet id and payload."""
        kind, body = self.packet()
        assert kind >> 4 == 3 and (kind >> 1) & 3 == 1, kind
        tl = int.from_bytes(body[:2], "big")
        return int.from_bytes(body[2 + tl:4 + tl], "big"), body[4 + tl:]

    def puback(self, *pids: int) -> None:
        assert self.conn is not None
        self.conn.sendall(b"".join(b"\x40\x02" + p.to_bytes(2, "big") for p in pids))

    def close(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()


@pytest.mark.parametrize("window", [16, 8])
def test_a_small_refill_of_a_full_window_waits_a_bounded_time(window: int) -> None:
    """With more queued than the window has room for, an acknowledgement that frees less
    than a batch of the window (an eighth of ``max_inflight``) does not send one message at
    once: the refill waits for more acknowledgements (counted as ``held``), at most a
    millisecond (HOLD_WITHIN), so it still goes out with nothing more from the remote; one
    freeing a batch refills at once; once the queue is shorter than the room, nothing
    waits; nor with a window under 16 (no batch). The window is never exceeded and every
    message arrives once, in order (at least once; with no reconnect in between, exactly
    once)."""
    count = 40
    holds = window >= 16  # a batch: 2 messages of 16
    remote = _ScriptedRemote()
    conf = "\n".join([
        "[bridges.s]", f'address = "127.0.0.1:{remote.port}"', "protocol_version = 4",
        f"max_inflight = {window}", "reconnect_min = 0.1", "reconnect_max = 0.5",
        "[[bridges.s.egress]]", 'filter = "out/#"', "qos = 1", ""])
    try:
        with checked_broker(conf) as local:
            remote.accept()
            wait_state(local, "s", "connected")
            u = uid()
            pub = client(local, 4)
            for i in range(count):
                assert pub.publish(f"out/{u}", str(i).encode(), 1) == 0
            got: list[tuple[int, bytes]] = [remote.publish() for _ in range(window)]
            row = ctl_json(local, "bridges", "status", "s")
            assert (row["inflight"], row["queued"]) == (window, count - window), row
            # One acknowledgement: a refill of one, smaller than a batch, held; the hold
            # ends by itself (nothing more comes from the remote until it is here).
            remote.puback(got[0][0])
            got.append(remote.publish())
            row = ctl_json(local, "bridges", "status", "s")
            assert (row["inflight"], row["queued"]) == (window, count - window - 1), row
            assert row["held"] == holds, row
            # A batch acknowledged: refilled (the window full again, no more than that).
            remote.puback(*(pid for pid, _ in got[1:4]))
            got.extend(remote.publish() for _ in range(3))
            row = ctl_json(local, "bridges", "status", "s")
            assert (row["inflight"], row["queued"]) == (window, count - window - 4), row
            # The rest, acknowledged one at a time as each arrives: every refill is
            # smaller than a batch until the queue is shorter than the room.
            acked = 4
            while len(got) < count:
                remote.puback(got[acked][0])
                acked += 1
                got.append(remote.publish())
            remote.puback(*(pid for pid, _ in got[acked:]))
            assert [p for _, p in got] == [str(i).encode() for i in range(count)]
            pids = [pid for pid, _ in got]
            assert all(pids[i] not in pids[i + 1:i + window] for i in range(count)), pids
            deadline = time.monotonic() + 3 * WAIT
            while (row := ctl_json(local, "bridges", "status", "s"))["acked"] < count:
                assert time.monotonic() < deadline, row
                time.sleep(0.02)
            assert (row["sent"], row["acked"], row["queued"], row["inflight"]) == (
                count, count, 0, 0), row
            # Held: the first single acknowledgement and each one after the batch while two
            # or more were queued (the three of the batch came in one read: one write).
            assert row["held"] == (count - window - 4 if holds else 0), row
            pub.close()
    finally:
        remote.close()

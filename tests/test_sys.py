"""$SYS (mqttd.sys_topics): the periodic topics, presence events, and clients kept out of $SYS."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import uid
from support.clients import Client
from support.process import BrokerProcess

from mqttd import __version__
from mqttd.config import Settings, parse_settings
from mqttd.core.services import CloseReason
from mqttd.metrics import NAMES as METRIC_NAMES
from mqttd.stats import NAMES as STAT_NAMES
from mqttd.sys_topics import MOSQUITTO_NAMES, format_uptime

NODE = "mqttd@127.0.0.1"
PREFIX = f"$SYS/brokers/{NODE}/"


@pytest.mark.parametrize("seconds,text", [
    (0, "0 seconds"), (59.9, "59 seconds"), (60, "1 minutes, 0 seconds"),
    (292, "4 minutes, 52 seconds"), (3600, "1 hours, 0 minutes, 0 seconds"),
    (93784, "1 days, 2 hours, 3 minutes, 4 seconds"), (86400 * 400 + 5,
                                                       "400 days, 0 hours, 0 minutes, 5 seconds"),
])
def test_uptime_format(seconds: float, text: str) -> None:
    assert format_uptime(seconds) == text


def test_close_reasons_are_emqx_reason_names() -> None:
    """client.disconnected and presence carry EMQX's disconnect reason names."""
    assert {r.value for r in CloseReason} >= {"normal", "takeovered", "kicked",
                                              "keepalive_timeout", "shutdown", "closed"}
    assert str(CloseReason.TAKEN_OVER) == "takeovered"


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    b = BrokerProcess("[node]\nsys_interval = 0.2\n")
    try:
        yield b
    finally:
        assert b.stop() == 0
        assert "Traceback" not in b.log(), b.log()


def _collect(c: Client, want: set[str], timeout: float = 5.0) -> dict[str, Any]:
    """Messages by topic until every topic of ``want`` arrived."""
    got: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while not want <= set(got):
        assert time.monotonic() < deadline, f"missing: {sorted(want - set(got))[:5]}"
        msg = c.expect_message(timeout=max(0.01, deadline - time.monotonic()))
        got[msg.topic] = msg
    return got


def test_periodic_topics(broker: BrokerProcess) -> None:
    c = Client(broker, uid("sys-"))
    try:
        c.connect()
        c.subscribe("$SYS/#", 0)
        want = ({PREFIX + t for t in ("version", "sysdescr", "uptime", "datetime")}
                | {"$SYS/brokers"}
                | {PREFIX + "stats/" + s for s in STAT_NAMES}
                | {PREFIX + "metrics/" + m.replace(".", "/") for m in METRIC_NAMES})
        got = _collect(c, want)
        assert got[PREFIX + "version"].payload == __version__.encode()
        assert got[PREFIX + "sysdescr"].payload.startswith(b"mqttd")
        assert got["$SYS/brokers"].payload == NODE.encode()
        assert re.fullmatch(rb"\d+ seconds|\d+ minutes, \d+ seconds",
                            got[PREFIX + "uptime"].payload)
        assert re.fullmatch(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", got[PREFIX + "datetime"].payload)
        for topic, msg in got.items():
            if "/stats/" in topic or "/metrics/" in topic:
                assert msg.payload.isdigit(), topic
        assert int(got[PREFIX + "metrics/packets/subscribe/received"].payload) >= 1
    finally:
        c.close()


def test_retained_topics_are_there_for_a_late_subscriber(broker: BrokerProcess) -> None:
    c = Client(broker, uid("late-"))
    try:
        c.connect()
        c.subscribe(PREFIX + "version", 0)
        msg = c.expect_message()  # the retained copy comes at once, with the flag set
        assert msg.retain and msg.payload == __version__.encode()
    finally:
        c.close()


@pytest.mark.parametrize("version", [4, 5])
def test_clients_cannot_publish_to_sys(broker: BrokerProcess, version: int) -> None:
    watcher = Client(broker, uid("w-"), version=version)
    pub = Client(broker, uid("p-"), version=version)
    try:
        watcher.connect()
        watcher.subscribe(PREFIX + "fake/#", 1)
        watcher.subscribe("sentinel/" + pub.c._client_id.decode(), 1)
        pub.connect()
        rc = pub.publish(PREFIX + "fake/uptime", b"forged", qos=1)
        assert rc == (0x87 if version == 5 else 0)  # NOT_AUTHORIZED; 3.1.1 cannot say it
        pub.publish(PREFIX + "fake/x", b"forged too", qos=0)
        pub.publish("sentinel/" + pub.c._client_id.decode(), b"end", qos=1)
        assert watcher.expect_message().payload == b"end"
        watcher.assert_no_message()
    finally:
        watcher.close()
        pub.close()


def test_presence_events(broker: BrokerProcess) -> None:
    watcher = Client(broker, uid("watch-"), version=5)
    cid = uid("presence-")
    try:
        watcher.connect()
        watcher.subscribe(PREFIX + f"clients/{cid}/#", 1)
        before = time.time()
        c = Client(broker, cid, version=5, username="bob", password="x", keepalive=42,
                   properties=_expiry(30))
        c.connect()
        msg = watcher.expect_message()
        assert msg.topic == PREFIX + f"clients/{cid}/connected" and msg.qos == 1
        info = json.loads(msg.payload)
        assert set(info) == {"clientid", "username", "ipaddress", "sockport", "proto_name",
                             "proto_ver", "connected_at", "ts", "connack", "keepalive",
                             "clean_start", "expiry_interval"}
        assert info["clientid"] == cid and info["username"] == "bob"
        assert info["ipaddress"] == "127.0.0.1" and info["sockport"] == broker.port
        assert (info["proto_name"], info["proto_ver"]) == ("MQTT", 5)
        assert info["connack"] == 0 and info["keepalive"] == 42
        assert info["clean_start"] is True and info["expiry_interval"] == 30
        assert before * 1000 - 1000 <= info["connected_at"] <= info["ts"] <= time.time() * 1000
        c.disconnect()
        msg = watcher.expect_message()
        assert msg.topic == PREFIX + f"clients/{cid}/disconnected"
        info = json.loads(msg.payload)
        assert set(info) == {"clientid", "username", "ipaddress", "sockport", "proto_name",
                             "proto_ver", "connected_at", "ts", "reason", "disconnected_at"}
        assert info["reason"] == "normal" and info["clientid"] == cid
        assert info["disconnected_at"] >= info["connected_at"]

        c2 = Client(broker, cid, version=4)
        c2.connect()
        assert json.loads(watcher.expect_message().payload)["proto_ver"] == 4
        c2.drop()  # no DISCONNECT: the connection was closed
        msg = watcher.expect_message()
        assert json.loads(msg.payload)["reason"] == "closed"
    finally:
        watcher.close()


def test_presence_follows_its_subscribers_coming_and_going() -> None:
    """Presence is published exactly while someone subscribes to it: after the last "$"
    filter went (its hooks came off) and a new one came (they came back on), each
    subscriber gets every event from its SUBACK on, and an event with no subscriber
    reaches the next one not at all."""
    b = BrokerProcess()
    try:
        def cycle(watcher: Client, cid: str) -> list[tuple[str, str]]:
            c = Client(b, cid, version=4)
            c.connect()
            c.disconnect()
            got = [watcher.expect_message(), watcher.expect_message()]
            return [(m.topic, json.loads(m.payload).get("reason", "")) for m in got]

        for round_ in range(3):
            w = Client(b, uid("watch-"), version=5)
            w.connect()
            topic = ["$SYS/brokers/+/clients/#", PREFIX + "clients/+/#",
                     "$share/g/" + PREFIX + "clients/#"][round_]
            w.subscribe(topic, 1)
            cid = uid("pres-")
            events = cycle(w, cid)
            assert events == [(PREFIX + f"clients/{cid}/connected", ""),
                              (PREFIX + f"clients/{cid}/disconnected", "normal")], events
            if round_ == 0:
                w.disconnect()  # leaves with its filter: the hooks come off
            else:
                w.unsubscribe(topic)
                w.disconnect()
            # Nobody subscribes now: these events go nowhere (not to the next watcher).
            quiet = Client(b, uid("unseen-"), version=4)
            quiet.connect()
            quiet.disconnect()
        w = Client(b, uid("watch-"), version=5)
        w.connect()
        w.subscribe(PREFIX + "clients/#", 1)
        cid = uid("last-")
        assert cycle(w, cid)[0][0] == PREFIX + f"clients/{cid}/connected"  # not "unseen-"
        w.disconnect()
    finally:
        assert b.stop() == 0
        assert "Traceback" not in b.log(), b.log()


def _expiry(seconds: int) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from support.clients import props

    return props(PacketTypes.CONNECT, SessionExpiryInterval=seconds)


# --- mosquitto's $SYS/broker/... tree ------------------------------------------------

def test_the_mosquitto_names_a_dashboard_reads_are_all_there() -> None:
    """The names mosquitto dashboards read (mosquitto 2.0's $SYS/broker/...)."""
    assert MOSQUITTO_NAMES >= {
        "clients/connected", "clients/total", "clients/disconnected", "clients/maximum",
        "messages/received", "messages/sent", "bytes/received", "bytes/sent",
        "publish/messages/received", "publish/messages/sent", "subscriptions/count",
        "retained messages/count", "uptime", "version",
        *(f"load/{kind}/{d}/{w}" for kind in ("messages", "bytes") for d in ("received", "sent")
          for w in ("1min", "5min", "15min"))}


def _mosquitto_sub(broker: BrokerProcess, topic: str, count: int) -> dict[str, tuple[str, str]]:
    """``mosquitto_sub -t TOPIC -C count``: {topic below $SYS/broker/: (retain flag, payload)}
    of the first message per topic."""
    done = subprocess.run(
        ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", topic,
         "-C", str(count), "-W", "10", "-F", "%r|%t|%p"],
        capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    got: dict[str, tuple[str, str]] = {}
    for line in done.stdout.splitlines():
        retain, topic_name, payload = line.split("|", 2)
        got.setdefault(topic_name.removeprefix("$SYS/broker/"), (retain, payload))
    return got


def test_mosquitto_sub_reads_the_mosquitto_tree_retained(broker: BrokerProcess) -> None:
    """A mosquitto client subscribing to $SYS/broker/# gets every value at once, retained
    (as mosquitto retains them), in mosquitto's formats."""
    got = _mosquitto_sub(broker, "$SYS/broker/#", len(MOSQUITTO_NAMES))
    assert set(got) == MOSQUITTO_NAMES
    assert {retain for retain, _ in got.values()} == {"1"}
    values = {name: payload for name, (_, payload) in got.items()}
    assert values["version"] == f"mqttd version {__version__}"
    assert re.fullmatch(r"\d+ seconds", values["uptime"])
    for name, payload in values.items():
        if name.startswith("load/"):
            assert re.fullmatch(r"\d+\.\d\d", payload), (name, payload)
        elif name not in ("version", "uptime"):
            assert payload.isdigit(), (name, payload)


def test_mosquitto_tree_counts_clients_and_traffic(broker: BrokerProcess) -> None:
    """clients/connected follows connections; the load averages rise under traffic; the
    counters match the EMQX tree's."""
    pub = Client(broker, uid("load-"))
    watcher = Client(broker, uid("watch-"))
    try:
        pub.connect()
        watcher.connect()
        for name in ("load/publish/received/1min", "clients/connected",
                     "retained messages/count"):
            watcher.subscribe("$SYS/broker/" + name, 0)
        for _ in range(200):
            pub.publish(uid("load/t/"), b"x" * 100, qos=0)
        pub.publish("load/end", b"end", qos=1)
        deadline = time.monotonic() + 10
        latest: dict[str, float] = {}

        def done() -> bool:
            return (latest.get("load/publish/received/1min", 0) > 0
                    and latest.get("clients/connected", 0) >= 2
                    # $SYS values are retained messages too, counted as mosquitto counts
                    and latest.get("retained messages/count", 0) >= len(MOSQUITTO_NAMES))

        while not done():  # each topic is published again when its value changes
            assert time.monotonic() < deadline, latest
            msg = watcher.expect_message(timeout=max(0.01, deadline - time.monotonic()))
            latest[msg.topic.removeprefix("$SYS/broker/")] = float(msg.payload)
    finally:
        pub.close()
        watcher.close()


def test_retained_clean_keeps_the_brokers_own_sys_values(broker: BrokerProcess) -> None:
    """`mqttd ctl retained clean` deletes the operators' retained messages, not $SYS."""
    from support.clients import mosquitto_pub
    from support.process import run_mqttd

    topic = uid("keep/")
    mosquitto_pub(broker, "-t", topic, "-m", "mine", "-r")
    done = run_mqttd("ctl", "--data-dir", str(broker.data_dir), "--json", "retained", "clean")
    assert done.returncode == 0, done
    assert json.loads(done.stdout)["cleaned"] >= 1
    done = run_mqttd("ctl", "--data-dir", str(broker.data_dir), "--json", "retained", "list")
    topics = {row["topic"] for row in json.loads(done.stdout)}
    assert topic not in topics
    assert topics and all(t.startswith("$SYS/") for t in topics), topics
    assert {"$SYS/broker/version", PREFIX + "version", "$SYS/brokers"} <= topics
    got = _mosquitto_sub(broker, "$SYS/broker/version", 1)
    assert got["version"] == ("1", f"mqttd version {__version__}")


def test_sys_interval_defaults_to_mosquittos_and_takes_a_duration() -> None:
    assert Settings().sys_interval == 10
    assert parse_settings({"node": {"sys_interval": "10s"}}).sys_interval == 10
    assert parse_settings({"node": {"sys_interval": "1m"}}).sys_interval == 60
    assert parse_settings({"node": {"sys_interval": "500ms"}}).sys_interval == 0.5

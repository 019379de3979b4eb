"""$SYS (mqttd.sys_topics): the periodic topics, presence events, and clients kept out of $SYS."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import uid
from support.clients import Client
from support.process import BrokerProcess

from mqttd import __version__
from mqttd.metrics import NAMES as METRIC_NAMES
from mqttd.stats import NAMES as STAT_NAMES
from mqttd.core.services import CloseReason
from mqttd.sys_topics import format_uptime

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


def _expiry(seconds: int) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from support.clients import props

    return props(PacketTypes.CONNECT, SessionExpiryInterval=seconds)

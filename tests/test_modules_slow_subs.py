"""Slow subscriptions (``[modules.slow_subs]``, mqttd/modules/slow_subs.py) against a real
daemon: a raw MQTT client that waits before its PUBACK / PUBREC..PUBCOMP shows up with a
latency of at least its wait, a client that answers at once does not; the top-N bound,
``mqttd ctl slow-subs list|clear``, ``$SYS/brokers/<node>/slow_subs``, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support import builder as B, uid
from support.clients import Clients
from support.ctlrun import ctl, ctl_json, ok
from support.process import BrokerProcess, broker_fixture, checked_broker, run_mqttd
from support.raw import RawClient

from mqttd.mqtt.packets import Pingresp, Publish, Pubrel, Suback

pytest_plugins = ["support.fixtures"]

CONFIG = """
[modules.slow_subs]
enable = true
threshold = "500ms"
top_k = 2
expire_interval = "1h"
notice_interval = 1
"""


broker = broker_fixture(CONFIG)


def _subscriber(raws: Any, broker: BrokerProcess, client_id: str, topic: str, qos: int
                ) -> RawClient:
    raw: RawClient = raws(broker, 4)
    raw.connect(client_id)
    raw.send(B.subscribe(1, [(topic, qos)]))
    assert raw.expect(Suback).reason_codes == [qos]
    return raw


def _receive_and_ack(raw: RawClient, wait: float) -> None:
    """Take one PUBLISH, wait ``wait`` seconds, acknowledge it (the whole QoS 2 flow), and
    make sure the broker has read the acknowledgement (a PINGREQ answered after it)."""
    pub = raw.expect(Publish)
    time.sleep(wait)
    if pub.qos == 1:
        raw.send(B.puback(pub.packet_id))
    else:
        raw.send(B.pubrec(pub.packet_id))
        assert raw.expect(Pubrel).packet_id == pub.packet_id
        raw.send(B.pubcomp(pub.packet_id))
    raw.send(B.pingreq())
    raw.expect(Pingresp)


def _rows(broker: BrokerProcess) -> dict[str, dict[str, Any]]:
    return {r["clientid"]: r for r in ctl_json(broker, "slow-subs", "list")}


@pytest.mark.parametrize("qos", [1, 2])
def test_a_slow_acknowledgement_is_recorded_a_fast_one_is_not(
        qos: int, clients: Clients, raws: Any, broker: BrokerProcess) -> None:
    ok(broker, "slow-subs", "clear")
    u = uid()
    topic = f"slow/{u}"
    slow = _subscriber(raws, broker, f"slow-{u}", topic, qos)
    fast = _subscriber(raws, broker, f"fast-{u}", topic, qos)
    clients(version=5).publish(topic, b"x", qos)
    _receive_and_ack(fast, 0)
    _receive_and_ack(slow, 1.0)
    rows = _rows(broker)
    assert f"fast-{u}" not in rows
    row = rows[f"slow-{u}"]
    assert row["topic"] == topic and row["latency_ms"] >= 1000, row
    human = ok(broker, "slow-subs", "list")
    assert f"slow-{u}" in human and " ms" in human and "1 slow subscription" in human


def test_the_top_k_slowest_are_kept_and_clear_empties(clients: Clients, raws: Any,
                                                      broker: BrokerProcess) -> None:
    ok(broker, "slow-subs", "clear")
    u = uid()
    pub = clients(version=5)
    waits = {f"a-{u}": 0.6, f"b-{u}": 1.6, f"c-{u}": 1.0}
    for client_id, wait in waits.items():
        topic = f"top/{client_id}"
        raw = _subscriber(raws, broker, client_id, topic, 1)
        pub.publish(topic, b"x", 1)
        _receive_and_ack(raw, wait)
    rows = ctl_json(broker, "slow-subs", "list")
    assert len(rows) == 2  # top_k
    assert rows[0]["clientid"] == f"b-{u}" and rows[0]["latency_ms"] >= 1600, rows
    assert rows[0]["latency_ms"] >= rows[1]["latency_ms"]
    assert ctl_json(broker, "slow-subs", "clear") == {"cleared": 2}
    assert ctl_json(broker, "slow-subs", "list") == []


def test_sys_topic_carries_the_records(clients: Clients, raws: Any, broker: BrokerProcess
                                       ) -> None:
    ok(broker, "slow-subs", "clear")
    u = uid()
    watcher = clients(version=5)
    assert watcher.subscribe("$SYS/brokers/+/slow_subs", 0) == [0]
    topic = f"sys/{u}"
    raw = _subscriber(raws, broker, f"sys-{u}", topic, 1)
    clients(version=5).publish(topic, b"x", 1)
    _receive_and_ack(raw, 0.7)
    # Published every second while there are records: the next ones carry this one.
    for _ in range(5):
        msg = watcher.expect_message()
        data = json.loads(msg.payload)
        if any(r["clientid"] == f"sys-{u}" for r in data["slow_subs"]):
            break
    else:
        raise AssertionError("the record never reached $SYS")
    assert msg.topic == f"$SYS/brokers/{data['node']}/slow_subs"
    (row,) = [r for r in data["slow_subs"] if r["clientid"] == f"sys-{u}"]
    assert row["topic"] == topic and row["latency_ms"] >= 700
    ok(broker, "slow-subs", "clear")


def test_not_loaded_and_reloaded(broker: BrokerProcess) -> None:
    ok(broker, "modules", "unload", "slow_subs")
    try:
        for args in (("slow-subs", "list"), ("slow-subs", "clear")):
            r = ctl(broker, *args)
            assert r.code == 1 and "slow_subs module is not loaded" in r.err, r
    finally:
        ok(broker, "modules", "load", "slow_subs")
    rows = {r["name"]: r for r in ctl_json(broker, "modules", "list")}
    assert rows["slow_subs"]["loaded"] is True and rows["slow_subs"]["threshold_ms"] == 500


@pytest.mark.parametrize("table, reason", [
    ('threshold = "soon"', "modules.slow_subs.threshold: not a duration: 'soon'"),
    ("threshold = 0", "modules.slow_subs.threshold: must be above 0"),
    ("top_k = 0", "modules.slow_subs.top_k: must be at least 1"),
    ("top_k = 5000", "modules.slow_subs.top_k: 5000 is out of range"),
    ('expire_interval = "0s"', "modules.slow_subs.expire_interval: must be at least 1"),
    ("thresold = 1", "modules.slow_subs"),
])
def test_bad_configuration_is_refused(table: str, reason: str, tmp_path: Path) -> None:
    conf = tmp_path / "mqttd.toml"
    conf.write_text(f"[modules.slow_subs]\nenable = true\n{table}\n")
    checked = run_mqttd("config", "check", "-c", str(conf))
    assert checked.returncode == 2, checked
    assert reason in checked.stderr and "Traceback" not in checked.stderr, checked


def test_only_deliveries_waiting_for_an_acknowledgement_are_timed(raws: Any) -> None:
    """A QoS 1 message to a QoS 0 subscription goes out at QoS 0: never timed (no
    acknowledgement will come). A QoS 1 delivery is timed from its PUBLISH to its PUBACK
    (``timing`` in ``modules list``), and no longer after."""
    with checked_broker('[modules.slow_subs]\nenable = true\nexpire_interval = "1h"\n') as b:
        cs = Clients(b)
        try:
            def timing() -> int:
                rows = {r["name"]: r for r in ctl_json(b, "modules", "list")}
                return int(rows["slow_subs"]["timing"])

            sub = cs(version=5)
            assert sub.subscribe("never/acked", 0) == [0]
            cs(version=5).publish("never/acked", b"x", 1)
            assert sub.expect_message().qos == 0
            assert timing() == 0
            raw = _subscriber(raws, b, f"timed-{uid()}", "timed/t", 1)
            cs(version=5).publish("timed/t", b"y", 1)
            pub = raw.expect(Publish)
            assert timing() == 1  # sent, not acknowledged yet
            raw.send(B.puback(pub.packet_id))
            raw.send(B.pingreq())
            raw.expect(Pingresp)
            assert timing() == 0
        finally:
            cs.close_all()

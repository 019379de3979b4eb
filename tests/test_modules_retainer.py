"""Retainer limits (``[modules.retainer]``, mqttd/modules/retainer.py) and the zone key
``upgrade_qos``, against a real daemon with paho and mosquitto clients: a message over a
limit is delivered but not kept, and the reason counted; the default expiry; a listener
whose retained messages are never kept; deletion always works; run-time unload."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support import uid
from support.clients import Clients, MosquittoSub, mosquitto_pub, prop
from support.ctlrun import ctl_json, ok
from support.process import BrokerProcess, broker_fixture

pytest_plugins = ["support.fixtures"]

CONFIG = """
[modules.retainer]
enable = true
max_retained_messages = 3
max_payload_size = "16b"
msg_expiry_interval = "1h"
disabled_listeners = ["noretain"]

[zones.upgraded]
upgrade_qos = true

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.noretain]
bind = "127.0.0.1"
port = 0

[listeners.upgraded]
bind = "127.0.0.1"
port = 0
zone = "upgraded"
"""


broker = broker_fixture(CONFIG)


@pytest.fixture
def clean(broker: BrokerProcess) -> Iterator[None]:
    ok(broker, "retained", "clean")
    yield
    ok(broker, "retained", "clean")


def _kept(broker: BrokerProcess) -> list[str]:
    return sorted(r["topic"] for r in ctl_json(broker, "retained", "list")
                  if not r["topic"].startswith("$SYS/"))


def _counter(broker: BrokerProcess, key: str) -> int:
    row = next(m for m in ctl_json(broker, "modules", "list") if m["name"] == "retainer")
    return int(row[key])


def test_payload_over_the_limit_is_delivered_not_kept(clients: Clients, broker: BrokerProcess,
                                                      clean: None) -> None:
    u = uid()
    sub = clients(version=5)
    assert sub.subscribe(f"big/{u}", 1) == [1]
    before = _counter(broker, "refused_payload_too_large")
    pub = clients(version=5)
    pub.publish(f"big/{u}", b"x" * 17, 1, retain=True)
    assert sub.expect_message().payload == b"x" * 17  # still delivered
    assert _kept(broker) == []
    assert _counter(broker, "refused_payload_too_large") == before + 1
    metrics = ctl_json(broker, "broker", "metrics")["metrics"]
    assert metrics["retainer.refused.payload_too_large"] == before + 1
    pub.publish(f"big/{u}", b"x" * 16, 1, retain=True)  # at the limit: kept
    assert _kept(broker) == [f"big/{u}"]


def test_max_retained_messages_keeps_replacing_and_deleting(clients: Clients,
                                                            broker: BrokerProcess,
                                                            clean: None) -> None:
    u = uid()
    pub = clients(version=5)
    for i in range(3):
        pub.publish(f"n/{u}/{i}", b"v1", 1, retain=True)
    before = _counter(broker, "refused_max_messages")
    pub.publish(f"n/{u}/3", b"v1", 1, retain=True)  # a fourth topic: not kept
    assert _kept(broker) == [f"n/{u}/0", f"n/{u}/1", f"n/{u}/2"]
    assert _counter(broker, "refused_max_messages") == before + 1
    pub.publish(f"n/{u}/0", b"v2", 1, retain=True)  # replacing one: kept
    pub.publish(f"n/{u}/1", b"", 1, retain=True)    # deleting: always
    assert _kept(broker) == [f"n/{u}/0", f"n/{u}/2"]
    sub = clients(version=5)
    assert sub.subscribe(f"n/{u}/0", 1) == [1]
    assert sub.expect_message().payload == b"v2"


def test_default_expiry_given_to_retained_messages(clients: Clients, broker: BrokerProcess,
                                                   clean: None) -> None:
    u = uid()
    mosquitto_pub(broker, "-t", f"e/{u}", "-m", "ttl", "-r", "-q", "1")
    sub = clients(version=5)
    assert sub.subscribe(f"e/{u}", 1) == [1]
    msg = sub.expect_message()
    assert msg.retain and 0 < prop(msg.properties, "MessageExpiryInterval") <= 3600


def test_listener_with_retain_off(clients: Clients, broker: BrokerProcess, clean: None
                                  ) -> None:
    u = uid()
    sub = clients(version=5)
    assert sub.subscribe(f"l/{u}/#", 1) == [1]
    before = _counter(broker, "refused_listener")
    off = clients(version=5, port=broker.ports["noretain"])
    off.publish(f"l/{u}/off", b"live only", 1, retain=True)
    assert sub.expect_message().payload == b"live only"
    on = clients(version=5)
    on.publish(f"l/{u}/on", b"kept", 1, retain=True)
    assert sub.expect_message().payload == b"kept"
    assert _kept(broker) == [f"l/{u}/on"]
    assert _counter(broker, "refused_listener") == before + 1
    # The same client id on another listener later: its messages are kept again.
    cid = off.c._client_id.decode()
    off.disconnect()
    again = clients(cid, version=5)
    again.publish(f"l/{u}/again", b"kept", 1, retain=True)
    assert sub.expect_message().topic == f"l/{u}/again"
    assert _kept(broker) == [f"l/{u}/again", f"l/{u}/on"]


def test_a_client_of_a_retain_off_listener_is_forgotten_when_it_leaves(
        clients: Clients, broker: BrokerProcess) -> None:
    """The module keeps a client of a ``disabled_listeners`` listener only while it is
    connected (a new session's connection: the CONNECT's time and the session's agree)."""
    base = _counter(broker, "clients_on_disabled_listeners")
    port = broker.ports["noretain"]
    offs = [clients(version=v, port=port) for v in (5, 4, 5)]
    assert _counter(broker, "clients_on_disabled_listeners") == base + 3
    for c in offs[:2]:
        c.disconnect()
    offs[2].drop()  # the socket only
    deadline = time.monotonic() + 10
    while _counter(broker, "clients_on_disabled_listeners") != base \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _counter(broker, "clients_on_disabled_listeners") == base


def test_unload_lifts_the_limits(clients: Clients, broker: BrokerProcess, clean: None) -> None:
    u = uid()
    pub = clients(version=5)
    ok(broker, "modules", "unload", "retainer")
    try:
        pub.publish(f"big/{u}", b"y" * 100, 1, retain=True)
        assert _kept(broker) == [f"big/{u}"]
    finally:
        ok(broker, "modules", "load", "retainer")
    pub.publish(f"big/{u}/2", b"y" * 100, 1, retain=True)
    assert _kept(broker) == [f"big/{u}"]


def test_upgrade_qos_per_zone(clients: Clients, broker: BrokerProcess) -> None:
    u = uid()
    upgraded = clients(version=5, port=broker.ports["upgraded"])
    plain = clients(version=5)
    assert upgraded.subscribe(f"q/{u}", 2) == [2]
    assert plain.subscribe(f"q/{u}", 2) == [2]
    mosquitto_pub(broker, "-t", f"q/{u}", "-m", "zero", "-q", "0")
    assert upgraded.expect_message().qos == 2   # the subscription's QoS
    assert plain.expect_message().qos == 0      # the lower of the two
    sub = MosquittoSub(broker, "-t", f"q/{u}", "-q", "1", "-p",
                       str(broker.ports["upgraded"]))
    try:
        sub.wait_subscribed()
        clients(version=4).publish(f"q/{u}", b"one", 0)
        assert sub.message() == (f"q/{u}", 1, 0, "one")
    finally:
        sub.stop()

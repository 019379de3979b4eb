"""Retained messages end to end: set, replace, delete with an empty payload, delivery on
subscribe with RETAIN=1 at the lower QoS, wildcards, and Message Expiry for retained and
queued messages (the remaining interval is what the subscriber is told)."""

from __future__ import annotations

import math
import time

import pytest
from support import builder as B, uid
from support.clients import PacketTypes, prop, props
from support.process import broker_fixture

from mqttd.mqtt.packets import Disconnect

pytest_plugins = ["support.fixtures"]

CONFIG = """
[zones.noretain]
retain_available = false

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.noretain]
bind = "127.0.0.1"
port = 0
zone = "noretain"
"""

broker = broker_fixture(CONFIG)


def retained_now(clients, topic_filter: str, version: int = 5) -> list:
    """The retained messages a new subscriber to ``topic_filter`` gets (sentinel-bounded)."""
    c = clients(version=version)
    sentinel = uid("sentinel/")
    c.subscribe(sentinel, 1)
    c.subscribe(topic_filter, 2)
    clients().publish(sentinel, b"sentinel", 1)
    got = []
    while True:
        m = c.expect_message()
        if m.topic == sentinel:
            return got
        got.append(m)


@pytest.mark.parametrize("version", [4, 5])
def test_set_replace_delete(clients, version):
    topic = uid("ret/")
    pub = clients(version=version)
    pub.publish(topic, b"one", 1, retain=True)
    got = retained_now(clients, topic, version)
    assert [(m.payload, m.retain) for m in got] == [(b"one", True)]
    pub.publish(topic, b"two", 1, retain=True)
    assert [m.payload for m in retained_now(clients, topic, version)] == [b"two"]
    pub.publish(topic, b"", 0, retain=True)  # an empty payload deletes, even at QoS 0
    assert retained_now(clients, topic, version) == []


def test_delete_is_still_delivered_to_existing_subscribers(clients):
    topic = uid("ret/")
    c = clients(version=5)
    c.subscribe(topic, options=None, qos=1)
    pub = clients(version=5)
    pub.publish(topic, b"", 1, retain=True)
    m = c.expect_message()
    assert (m.payload, m.retain) == (b"", False)


@pytest.mark.parametrize("pub_qos, sub_qos", [(2, 1), (1, 2), (0, 2), (2, 0)])
def test_retained_delivered_at_the_lower_qos(clients, pub_qos, sub_qos):
    topic = uid("retq/")
    clients().publish(topic, b"q", pub_qos, retain=True)
    c = clients()
    c.subscribe(topic, sub_qos)
    m = c.expect_message()
    assert (m.payload, m.qos, m.retain) == (b"q", min(pub_qos, sub_qos), True)


def test_wildcard_subscription_gets_every_matching_retained_message(clients):
    root = uid("retw/")
    pub = clients()
    for t in ("a", "b/c", "b/d/e"):
        pub.publish(f"{root}/{t}", t.encode(), 1, retain=True)
    got = retained_now(clients, f"{root}/b/#")
    assert sorted(m.topic for m in got) == [f"{root}/b/c", f"{root}/b/d/e"]
    assert all(m.retain for m in got)
    got = retained_now(clients, f"{root}/+")
    assert [m.payload for m in got] == [b"a"]


def test_retained_properties_are_kept(clients):
    topic = uid("retp/")
    p = props(PacketTypes.PUBLISH, ContentType="text/plain", UserProperty=[("k", "v")])
    clients(version=5).publish(topic, b"x", 1, retain=True, properties=p)
    (m,) = retained_now(clients, topic)
    assert prop(m.properties, "ContentType") == "text/plain"
    assert prop(m.properties, "UserProperty") == [("k", "v")]


def _left(interval: int, elapsed_min: float, elapsed_max: float) -> range:
    """What the broker may say is left of ``interval`` (whole seconds, rounded up) when it
    sends between ``elapsed_min`` and ``elapsed_max`` seconds after it took the message."""
    return range(math.ceil(interval - elapsed_max), math.ceil(interval - elapsed_min) + 1)


def test_message_expiry_for_retained_and_queued_messages(clients):
    """A retained message and a queued one with Message Expiry Interval 3: after ~1.2 s the
    subscriber is told 2 s remain (1 on a machine too slow to ask within the second); after
    3 s both are gone. A message without an interval and one with interval 0 never expire.
    What is left is bounded by the times read before and after each step (the broker takes
    the message between ``published`` and ``start``, and sends during ``retained_now``), so
    a loaded machine moves the bounds, not the verdict."""
    topic, queued_topic, cid = uid("exp/"), uid("expq/"), uid()
    offline = clients(cid, version=5, clean=False,
                      properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    offline.subscribe(queued_topic, 1)
    offline.disconnect()
    pub = clients(version=5)
    three = props(PacketTypes.PUBLISH, MessageExpiryInterval=3)
    zero = props(PacketTypes.PUBLISH, MessageExpiryInterval=0)
    published = time.monotonic()
    pub.publish(topic, b"retained", 1, retain=True, properties=three)
    start = time.monotonic()
    pub.publish(queued_topic, b"queued-3s", 1, properties=three)
    pub.publish(queued_topic, b"queued-0", 1, properties=zero)
    queued = time.monotonic()  # the broker took the queued ones before this
    # At once: the full interval is left.
    before = time.monotonic()
    (m,) = retained_now(clients, topic)
    left = prop(m.properties, "MessageExpiryInterval")
    assert left in _left(3, before - start, time.monotonic() - published), left
    time.sleep(1.2)  # the broker's clock is what is under test
    before = time.monotonic()
    (m,) = retained_now(clients, topic)
    left = prop(m.properties, "MessageExpiryInterval")
    assert left in _left(3, before - start, time.monotonic() - published), left
    time.sleep(max(0.0, 3.1 - (time.monotonic() - queued)))
    assert retained_now(clients, topic) == []
    c = clients(cid, version=5, clean=False,
                properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    assert c.session_present
    m = c.expect_message()  # the expired one is dropped; interval 0 means none
    assert m.payload == b"queued-0"
    assert prop(m.properties, "MessageExpiryInterval") == 0


def test_live_delivery_forwards_the_interval(clients):
    topic = uid("expl/")
    c = clients(version=5)
    c.subscribe(topic, 1)
    clients(version=5).publish(topic, b"x", 0,
                               properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=30))
    m = c.expect_message()
    assert prop(m.properties, "MessageExpiryInterval") == 30


def test_retain_not_available(raws, clients, broker):
    port = broker.ports["noretain"]
    c = clients(version=5, port=port)
    assert prop(c.connack[2], "RetainAvailable") == 0
    r = raws(broker, 5, port=port)
    r.connect(uid())
    r.send(B.publish(uid("nr/"), b"x", retain=True, properties=B.EMPTY_PROPS))
    assert r.expect(Disconnect).reason_code == 0x9A
    assert r.expect_closed() == []
    # A will that asks for retain is refused at CONNECT.
    r = raws(broker, 5, port=port)
    r.send(B.connect(uid(), level=5, will_topic="w/t", will_retain=True))
    assert [p.reason_code for p in r.expect_closed()] == [0x9A]

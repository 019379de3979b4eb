"""MQTT 5 features end to end: Topic Aliases both ways, Maximum Packet Size both ways,
properties passed through unchanged, Reason Strings, and the PUBACK reason codes."""

from __future__ import annotations

import pytest
from support import builder as B, uid
from support.clients import PacketTypes, prop, props
from support.process import broker_fixture

from mqttd.mqtt.packets import Disconnect, Pingresp, Puback, Publish, Suback

pytest_plugins = ["support.fixtures"]

CONFIG = """
[zones.alias]
max_topic_alias = 2

[zones.small]
max_packet_size = 256

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.alias]
bind = "127.0.0.1"
port = 0
zone = "alias"

[listeners.small]
bind = "127.0.0.1"
port = 0
zone = "small"
"""

broker = broker_fixture(CONFIG)


def raw5(raws, broker, port=None, **connect_props):
    r = raws(broker, 5, port=port)
    items = tuple(connect_props.items())
    r.connect(uid(), properties=B.props(*items) if items else B.EMPTY_PROPS)
    return r


def subscribe_raw(r, *entries: tuple[str, int]) -> None:
    r.send(B.subscribe(1, list(entries), properties=B.EMPTY_PROPS))
    assert r.expect(Suback).reason_codes == [q for _, q in entries]


# --- topic aliases, client to server --------------------------------------------------------

def test_topic_alias_from_client(clients):
    t1, t2 = uid("al/"), uid("al/")
    sub = clients(version=5)
    sub.subscribe(t1, 1)
    sub.subscribe(t2, 1)
    pub = clients(version=5)
    assert prop(pub.connack[2], "TopicAliasMaximum") == 65535

    def alias(n: int) -> object:
        return props(PacketTypes.PUBLISH, TopicAlias=n)

    pub.publish(t1, b"set", 1, properties=alias(1))
    pub.publish("", b"use", 1, properties=alias(1))
    pub.publish(t2, b"remap", 1, properties=alias(1))
    pub.publish("", b"use again", 1, properties=alias(1))
    got = [(m.topic, m.payload) for m in sub.expect_messages(4)]
    assert got == [(t1, b"set"), (t1, b"use"), (t2, b"remap"), (t2, b"use again")]
    # The alias property is the broker's business: subscribers do not see it.
    sub.publish(t1, b"x", 1)
    assert prop(sub.expect_message().properties, "TopicAlias") is None


@pytest.mark.parametrize("listener, alias", [("alias", 3), ("alias", 0), ("default", 0)])
def test_topic_alias_out_of_range_is_0x94(raws, broker, listener, alias):
    r = raw5(raws, broker, port=broker.ports[listener])
    r.send(B.publish(uid("al/"), b"x", properties=B.props(("topic_alias", alias))))
    d = r.expect(Disconnect)
    assert d.reason_code == 0x94
    assert d.properties.get("reason_string")
    assert r.expect_closed() == []


def test_unknown_topic_alias_is_0x82(raws, broker):
    r = raw5(raws, broker)
    r.send(B.publish("", b"x", properties=B.props(("topic_alias", 1))))
    assert r.expect(Disconnect).reason_code == 0x82


def test_topic_aliases_do_not_outlive_the_connection(raws, broker):
    """[MQTT-3.3.2-7]: a new connection starts without mappings."""
    cid = uid()
    r = raws(broker, 5)
    r.connect(cid, clean=False, properties=B.props(("session_expiry_interval", 60)))
    r.send(B.publish(uid("al/"), b"x", properties=B.props(("topic_alias", 1))), B.pingreq())
    r.expect(Pingresp)
    r.close()
    r = raws(broker, 5)
    assert r.connect(cid, clean=False,
                     properties=B.props(("session_expiry_interval", 60))).session_present
    r.send(B.publish("", b"x", properties=B.props(("topic_alias", 1))))
    assert r.expect(Disconnect).reason_code == 0x82


# --- topic aliases, server to client ---------------------------------------------------------

def test_server_uses_topic_aliases_the_client_allows(raws, clients, broker):
    root = uid("sal/")
    r = raw5(raws, broker, topic_alias_maximum=2)
    subscribe_raw(r, (f"{root}/#", 0))
    pub = clients()
    for t in ("a", "a", "b", "c", "a", "c", "b"):
        pub.publish(f"{root}/{t}", t.encode(), 0)
    got = []
    for _ in range(7):
        p = r.expect(Publish)
        got.append((p.topic.rsplit("/", 1)[-1] if p.topic else "", p.payload,
                    p.properties.get("topic_alias")))
    assert got == [("a", b"a", 1), ("", b"a", 1), ("b", b"b", 2), ("c", b"c", None),
                   ("", b"a", 1), ("c", b"c", None), ("", b"b", 2)]


def test_no_aliases_without_client_topic_alias_maximum(raws, clients, broker):
    topic = uid("nal/")
    r = raw5(raws, broker)
    subscribe_raw(r, (topic, 1))
    pub = clients()
    for _ in range(2):
        pub.publish(topic, b"x", 1)
        p = r.expect(Publish)
        assert p.topic == topic and "topic_alias" not in p.properties
        r.send(B.puback(p.packet_id))


# --- maximum packet size ------------------------------------------------------------------

def test_packet_larger_than_server_maximum_is_0x95(raws, broker):
    r = raws(broker, 5, port=broker.ports["small"])
    ack = r.connect(uid())
    assert ack.properties["maximum_packet_size"] == 256
    r.send(B.publish(uid("big/"), b"x" * 300, properties=B.EMPTY_PROPS))
    assert r.expect(Disconnect).reason_code == 0x95
    assert r.expect_closed() == []


def test_packet_at_server_maximum_is_accepted(raws, broker):
    r = raws(broker, 5, port=broker.ports["small"])
    r.connect(uid())
    size = 0
    for n in range(300):  # the payload that makes the whole packet exactly 256 bytes
        pkt = B.publish("t", b"x" * n, qos=1, packet_id=1, properties=B.EMPTY_PROPS)
        if len(pkt) == 256:
            size = len(pkt)
            break
    assert size == 256
    r.send(pkt)
    assert r.expect(Puback).packet_id == 1


def frame_sizes(data: bytes) -> list[int]:
    """The size of each MQTT packet in a byte stream (fixed header included)."""
    sizes, i = [], 0
    while i < len(data):
        n, mult, j = 0, 1, i + 1
        while True:
            b = data[j]
            n += (b & 0x7F) * mult
            mult *= 128
            j += 1
            if not b & 0x80:
                break
        sizes.append(j - i + n)
        i = j + n
    return sizes


def test_broker_never_sends_more_than_the_client_maximum(raws, clients, broker):
    """Too-large messages are dropped (as if delivered, [MQTT-3.1.2-25]): a QoS 1 one does
    not stay in flight, and a new topic alias is not spent on a packet never sent."""
    topic = uid("cmax/")
    r = raw5(raws, broker, maximum_packet_size=120, receive_maximum=1, topic_alias_maximum=1)
    subscribe_raw(r, (topic, 1))
    pub = clients()
    for qos, payload in [(1, b"B" * 200), (0, b"b" * 200), (1, b"small-1"), (0, b"C" * 200),
                         (1, b"small-2")]:
        pub.publish(topic, payload, qos)
    first = r.expect(Publish)
    # The first packet sent on this topic introduces the alias with the topic name.
    assert (first.topic, first.payload, first.properties.get("topic_alias")) == (
        topic, b"small-1", 1)
    r.send(B.puback(first.packet_id))
    second = r.expect(Publish)
    assert (second.topic, second.payload) == ("", b"small-2")
    r.send(B.puback(second.packet_id), B.pingreq())
    assert r.recv() == Pingresp()
    sizes = frame_sizes(bytes(r.received))  # every packet it sent
    assert max(sizes) <= 120, sizes


# --- properties passed through -----------------------------------------------------------------

def test_publish_properties_pass_through_unchanged(clients):
    topic = uid("pp/")
    sub5 = clients(version=5)
    sub5.subscribe(topic, 1)
    sub3 = clients(version=4)
    sub3.subscribe(topic, 1)
    p = props(PacketTypes.PUBLISH, ResponseTopic="reply/here", CorrelationData=b"\x00\xffid",
              UserProperty=[("k", "v1"), ("k", "v2"), ("other", "x")],
              PayloadFormatIndicator=1, ContentType="application/json")
    clients(version=5).publish(topic, b'{"a": 1}', 1, properties=p)
    m = sub5.expect_message()
    assert m.payload == b'{"a": 1}'
    got = m.properties
    assert prop(got, "ResponseTopic") == "reply/here"
    assert prop(got, "CorrelationData") == b"\x00\xffid"
    assert prop(got, "UserProperty") == [("k", "v1"), ("k", "v2"), ("other", "x")]
    assert prop(got, "PayloadFormatIndicator") == 1
    assert prop(got, "ContentType") == "application/json"
    m3 = sub3.expect_message()  # a 3.1.1 subscriber gets the message without them
    assert m3.payload == b'{"a": 1}'


def test_request_response_round_trip(clients):
    req_topic, resp_topic = uid("req/"), uid("resp/")
    responder = clients(version=5)
    responder.subscribe(req_topic, 1)
    requester = clients(version=5)
    requester.subscribe(resp_topic, 1)
    requester.publish(req_topic, b"ping", 1, properties=props(
        PacketTypes.PUBLISH, ResponseTopic=resp_topic, CorrelationData=b"42"))
    req = responder.expect_message()
    responder.publish(prop(req.properties, "ResponseTopic"), b"pong", 1, properties=props(
        PacketTypes.PUBLISH, CorrelationData=prop(req.properties, "CorrelationData")))
    resp = requester.expect_message()
    assert (resp.payload, prop(resp.properties, "CorrelationData")) == (b"pong", b"42")


# --- reason codes and reason strings -------------------------------------------------------

def test_payload_format_invalid_is_0x99(clients):
    c = clients(version=5)
    p = props(PacketTypes.PUBLISH, PayloadFormatIndicator=1)
    assert c.publish(uid("pf/"), b"\xff\xfe not utf-8", 1, properties=p) == 0x99
    assert c.publish(uid("pf/"), "grüße".encode(), 1, properties=p) == 0x10  # valid


def test_publish_to_sys_is_not_authorized(raws, clients, broker):
    watcher = clients()
    watcher.subscribe("$SYS/#", 0)
    c = clients(version=5)
    assert c.publish("$SYS/fake", b"x", 1) == 0x87
    r = raws(broker, 4)
    r.connect(uid())
    r.send(B.publish("$SYS/fake", b"x", qos=1, packet_id=1))
    assert r.expect(Puback) == Puback(1)  # 3.1.1: acknowledged, dropped
    got = []  # the broker's own $SYS messages may arrive; a client's never
    sentinel = uid("sentinel/")
    watcher.subscribe(sentinel, 0)
    clients().publish(sentinel, b"s", 1)
    while True:
        m = watcher.expect_message()
        if m.topic == sentinel:
            break
        got.append(m)
    assert all(m.topic != "$SYS/fake" for m in got)


def test_disconnect_reason_string_reaches_paho(clients, broker):
    c = clients(version=5, port=broker.ports["alias"])
    c.publish(uid("al/"), b"x", 0, properties=props(PacketTypes.PUBLISH, TopicAlias=3),
              wait=False)
    rc, properties = c.wait_disconnected()
    assert rc == 0x94
    assert "alias" in prop(properties, "ReasonString", "")


def test_reason_string_dropped_when_client_maximum_is_too_small(raws, broker):
    r = raws(broker, 5, port=broker.ports["alias"])
    r.connect(uid(), properties=B.props(("maximum_packet_size", 16)))
    r.send(B.publish(uid("al/"), b"x", properties=B.props(("topic_alias", 9))))
    d = r.expect(Disconnect)
    assert d == Disconnect(0x94)  # no Reason String: it would not fit
    sizes = frame_sizes(bytes(r.received))
    assert max(sizes[1:]) <= 16, sizes  # (the CONNACK is exempt: see Channel._in_connect)

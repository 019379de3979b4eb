"""Subscriptions end to end: `+`/`#` matching, `$` topics, overlapping subscriptions,
Subscription Identifiers, No Local, Retain As Published, Retain Handling, SUBACK failure
codes and UNSUBSCRIBE."""

from __future__ import annotations

import pytest
from support import builder as B, uid
from support.clients import PacketTypes, prop, props, sub_opts
from support.process import broker_fixture

from mqttd.mqtt.packets import Suback, Unsuback

pytest_plugins = ["support.fixtures"]

CONFIG = """
[zones.restricted]
wildcard_subscription = false
shared_subscription = false
deny_subscribe = ["deny/me", "deny/#"]
max_qos_allowed = 1

[zones.mounted]
mountpoint = "tenant/"

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.mounted]
bind = "127.0.0.1"
port = 0
zone = "mounted"

[listeners.restricted]
bind = "127.0.0.1"
port = 0
zone = "restricted"
"""

broker = broker_fixture(CONFIG)


def subid(n: int) -> object:
    return props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=n)


def drain_until_sentinel(c, pub, sentinel_topic: str) -> list:
    """Publish a sentinel and return every message that arrived before it."""
    pub.publish(sentinel_topic, b"sentinel", 1)
    got = []
    while True:
        m = c.expect_message()
        if m.topic == sentinel_topic:
            return got
        got.append(m)


# --- matching -----------------------------------------------------------------------------

TOPICS = ["a", "a/", "a/b", "a/c", "a/b/", "a/b/c", "a/b/x/c", "a/b/c/d", "ab/c", "A/b",
          "x", "x/y", "/x"]
#: filter -> the topics above it matches, written out by hand from the spec (4.7.1)
MATCHES = {
    "a/+/c": {"a/b/c"},
    "a/+": {"a/", "a/b", "a/c"},                   # an empty level is a level
    "+/+": {"a/", "a/b", "a/c", "ab/c", "A/b", "x/y", "/x"},
    "a/#": {"a", "a/", "a/b", "a/c", "a/b/", "a/b/c", "a/b/x/c", "a/b/c/d"},  # parent too
    "#": set(TOPICS),
    "+/#": set(TOPICS),
    "+": {"a", "x"},
    "a/b": {"a/b"},                                # exact and case sensitive
    "/+": {"/x"},
}


@pytest.mark.parametrize("version", [4, 5])
def test_wildcard_matching(clients, version):
    root = uid("m")
    subs = {}
    for f in MATCHES:  # one subscriber per filter: what it receives is what its filter matched
        s = clients(version=version)
        s.subscribe(f"{root}/{f}", 0)
        subs[f] = s
    pub = clients(version=version)
    for t in TOPICS:
        pub.publish(f"{root}/{t}", t.encode(), 1)
    for f, s in subs.items():
        sentinel = uid("sent/")
        s.subscribe(sentinel, 1)
        received = [m.payload.decode() for m in drain_until_sentinel(s, pub, sentinel)]
        assert sorted(received) == sorted(MATCHES[f]), f


def test_dollar_topics_not_matched_by_leading_wildcards(clients):
    """[MQTT-4.7.2-1]: '#' and '+/...' do not match topics starting with '$'."""
    name = uid("$x")
    hash_sub = clients()
    hash_sub.subscribe("#", 0)
    plus_sub = clients()
    plus_sub.subscribe("+/t", 0)
    explicit = clients()
    explicit.subscribe(f"{name}/#", 0)
    pub = clients()
    pub.publish(f"{name}/t", b"dollar", 1)
    m = explicit.expect_message()
    assert (m.topic, m.payload) == (f"{name}/t", b"dollar")
    sentinel = uid("sent/")
    for s in (hash_sub, plus_sub):
        s.subscribe(sentinel, 1)
        got = drain_until_sentinel(s, pub, sentinel)
        assert all(not m.topic.startswith("$") for m in got), [m.topic for m in got]


# --- overlapping subscriptions ----------------------------------------------------------------

def test_overlapping_subscriptions_one_delivery_max_qos_all_ids_v5(clients):
    root = uid("ov/") + "/"
    c = clients(version=5)
    c.subscribe(f"{root}#", options=sub_opts(0), properties=subid(1))
    c.subscribe(f"{root}a/+", options=sub_opts(2), properties=subid(2))
    c.subscribe(f"{root}a/b", options=sub_opts(1), properties=subid(3))
    c.subscribe(f"{root}x", options=sub_opts(1))  # no identifier
    pub = clients(version=5)
    pub.publish(f"{root}a/b", b"both", 2)
    m = c.expect_message()
    assert (m.payload, m.qos) == (b"both", 2)
    assert sorted(prop(m.properties, "SubscriptionIdentifier")) == [1, 2, 3]
    pub.publish(f"{root}x", b"one id", 1)
    m = c.expect_message()
    assert m.payload == b"one id" and m.qos == 1
    assert prop(m.properties, "SubscriptionIdentifier") == [1]
    c.assert_no_message()


def test_overlapping_subscriptions_one_delivery_311(clients):
    root = uid("ov/") + "/"
    c = clients()
    c.subscribe(f"{root}#", 0)
    c.subscribe(f"{root}a", 1)
    pub = clients()
    pub.publish(f"{root}a", b"x", 1)
    sentinel = f"{root}sentinel"
    got = drain_until_sentinel(c, pub, sentinel)
    assert [(m.payload, m.qos) for m in got] == [(b"x", 1)]


def test_resubscribe_replaces_options_and_identifier(clients):
    topic = uid("re/")
    c = clients(version=5)
    assert c.subscribe(topic, options=sub_opts(2), properties=subid(7)) == [2]
    assert c.subscribe(topic, options=sub_opts(1), properties=subid(9)) == [1]
    clients(version=5).publish(topic, b"x", 2)
    m = c.expect_message()
    assert m.qos == 1 and prop(m.properties, "SubscriptionIdentifier") == [9]


def test_subscription_identifier_on_retained_delivery(clients):
    topic = uid("ret/")
    clients(version=5).publish(topic, b"kept", 1, retain=True)
    c = clients(version=5)
    c.subscribe(topic, options=sub_opts(1), properties=subid(268435455))  # largest VBI
    m = c.expect_message()
    assert m.retain and prop(m.properties, "SubscriptionIdentifier") == [268435455]


# --- No Local, Retain As Published, Retain Handling ---------------------------------------------

def test_no_local(clients):
    topic = uid("nl/")
    me = clients(version=5)
    me.subscribe(topic, options=sub_opts(1, no_local=True))
    other = clients(version=5)
    other.subscribe(topic, 1)
    me.publish(topic, b"mine", 1)
    assert other.expect_message().payload == b"mine"
    other.publish(topic, b"theirs", 1)
    assert me.expect_message().payload == b"theirs"  # not "mine" first
    assert other.expect_message().payload == b"theirs"
    me.assert_no_message()


@pytest.mark.parametrize("rap", [True, False])
def test_retain_as_published(clients, rap):
    topic = uid("rap/")
    c = clients(version=5)
    c.subscribe(topic, options=sub_opts(1, rap=rap))
    pub = clients(version=5)
    pub.publish(topic, b"r", 1, retain=True)
    pub.publish(topic, b"n", 1, retain=False)
    got = c.expect_messages(2)
    assert [(m.payload, m.retain) for m in got] == [(b"r", rap), (b"n", False)]
    pub.publish(topic, b"", 1, retain=True)  # clean up the retained message


def test_retain_flag_cleared_for_live_delivery_311(clients):
    """3.1.1 3.3.1.3: RETAIN is 0 on messages forwarded to existing subscriptions."""
    topic = uid("r311/")
    c = clients()
    c.subscribe(topic, 1)
    clients().publish(topic, b"r", 1, retain=True)
    assert c.expect_message().retain is False
    later = clients()
    later.subscribe(topic, 1)
    assert later.expect_message().retain is True


@pytest.mark.parametrize("rh, first, again", [(0, True, True), (1, True, False),
                                              (2, False, False)])
def test_retain_handling(clients, rh, first, again):
    topic = uid("rh/")
    clients(version=5).publish(topic, b"kept", 1, retain=True)
    c = clients(version=5)
    sentinel = uid("sent/")
    c.subscribe(sentinel, 1)
    pub = clients(version=5)
    for expect in (first, again):  # subscribe, then the same subscription once more
        c.subscribe(topic, options=sub_opts(1, rh=rh))
        got = drain_until_sentinel(c, pub, sentinel)
        assert [(m.payload, m.retain) for m in got] == ([(b"kept", True)] if expect else [])


# --- SUBACK failure codes ----------------------------------------------------------------------

def test_suback_codes_v5_mixed_packet(raws, broker):
    r = raws(broker, 5, port=broker.ports["restricted"])
    r.connect(uid())
    entries = [("ok/plain", 1), ("ok/+", 1), ("$share/g/ok", 1), ("a/#/b", 1),
               ("deny/me", 1), ("deny/x/y", 0), ("ok/qos2", 2), ("a+", 0)]
    r.send(B.subscribe(5, entries, properties=B.EMPTY_PROPS))
    ack = r.expect(Suback)
    assert ack.packet_id == 5
    assert ack.reason_codes == [1, 0xA2, 0x9E, 0x8F, 0x80, 0x80, 1, 0x8F]


def test_suback_codes_311_mixed_packet(raws, broker):
    r = raws(broker, 4, port=broker.ports["restricted"])
    r.connect(uid())
    entries = [("ok/plain", 1), ("ok/+", 1), ("$share/g/ok", 1), ("a/#/b", 1),
               ("deny/me", 1), ("ok/qos2", 2)]
    r.send(B.subscribe(6, entries))
    assert r.expect(Suback).reason_codes == [1, 0x80, 0x80, 0x80, 0x80, 1]


def test_connack_announces_restrictions(clients, broker):
    c = clients(version=5, port=broker.ports["restricted"])
    p = c.connack[2]
    assert prop(p, "WildcardSubscriptionAvailable") == 0
    assert prop(p, "SharedSubscriptionAvailable") == 0
    assert prop(p, "MaximumQoS") == 1


def test_invalid_filter_keeps_the_connection(raws, broker):
    r = raws(broker, 5)
    r.connect(uid())
    r.send(B.subscribe(1, [("x/#/y", 0)], properties=B.EMPTY_PROPS))
    assert r.expect(Suback).reason_codes == [0x8F]
    r.send(B.subscribe(2, [(uid("fine/"), 0)], properties=B.EMPTY_PROPS))
    assert r.expect(Suback).reason_codes == [0]


# --- UNSUBSCRIBE ---------------------------------------------------------------------------

def test_unsubscribe_v5_reason_codes(clients):
    topic = uid("un/")
    c = clients(version=5)
    c.subscribe(topic, 1)
    assert c.unsubscribe([topic, uid("never/")]) == [0x00, 0x11]
    assert c.unsubscribe(topic) == [0x11]


def test_unsubscribe_stops_delivery(clients):
    topic, sentinel = uid("un/"), uid("sent/")
    c = clients()
    c.subscribe(topic, 1)
    c.subscribe(sentinel, 1)
    c.unsubscribe(topic)
    pub = clients()
    pub.publish(topic, b"after", 1)
    assert drain_until_sentinel(c, pub, sentinel) == []


def test_unsuback_311_has_no_reason_codes(raws, broker):
    r = raws(broker, 4)
    r.connect(uid())
    r.send(B.unsubscribe(3, ["never/subscribed"]))
    assert r.expect(Unsuback) == Unsuback(3, [])
    assert bytes(r.received[-4:]) == b"\xb0\x02\x00\x03"


def test_shared_filter_unsubscribe_is_by_full_filter(clients):
    topic = uid("sh/")
    c = clients(version=5)
    c.subscribe(f"$share/g/{topic}", 1)
    assert c.unsubscribe(topic) == [0x11]  # a plain filter is a different subscription
    assert c.unsubscribe(f"$share/g/{topic}") == [0]


# --- mountpoints -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
def test_mountpoint_prefixes_what_the_zone_sends_and_strips_what_it_gets(clients, broker,
                                                                          version):
    t = uid("mp")
    port = broker.ports["mounted"]
    inside = clients(version=version, port=port)
    inside.subscribe(f"{t}/#", 1)
    outside = clients(version=version)
    outside.subscribe(f"tenant/{t}/#", 1)
    outside.publish(f"tenant/{t}/from-outside", b"1", 0)
    outside.publish(f"tenant/{t}/from-outside", b"2", 1)
    got = [(m.topic, m.payload) for m in inside.expect_messages(2)]
    assert got == [(f"{t}/from-outside", b"1"), (f"{t}/from-outside", b"2")]
    inside.publish(f"{t}/from-inside", b"3", 1, retain=True)
    assert inside.expect_message().topic == f"{t}/from-inside"
    got = [(m.topic, m.payload) for m in outside.expect_messages(3)]
    assert got == [(f"tenant/{t}/from-outside", b"1"), (f"tenant/{t}/from-outside", b"2"),
                   (f"tenant/{t}/from-inside", b"3")]
    late = clients(version=version, port=port)  # retained, delivered on subscribe
    late.subscribe(f"{t}/+", 1)
    m = late.expect_message()
    assert (m.topic, m.payload, m.retain) == (f"{t}/from-inside", b"3", True)
    assert late.unsubscribe(f"{t}/+") == ([0] if version == 5 else [])
    inside.publish(f"{t}/from-inside", b"", 1, retain=True)

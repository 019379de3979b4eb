"""Will messages end to end: published on an abnormal disconnect, a protocol error and a
takeover that ends the session; not on a normal DISCONNECT unless its reason is 0x04;
Will Delay Interval (cancelled by a reconnect in time, cut short by the session's end);
will QoS, retain and properties."""

from __future__ import annotations

import time

import pytest
from support import WAIT, builder as B, uid
from support.clients import PacketTypes, prop, props
from support.process import broker_fixture

from mqttd.mqtt.packets import Connack

pytest_plugins = ["support.fixtures"]

broker = broker_fixture()


def watch(clients, topic: str, qos: int = 2):
    w = clients(version=5)
    w.subscribe(topic, qos)
    return w


def no_will(watcher, clients, topic: str) -> None:
    """Nothing arrived on ``topic`` before a sentinel published on it now."""
    clients().publish(topic, b"sentinel", 1)
    assert watcher.expect_message().payload == b"sentinel"


def will_kw(topic: str, payload: bytes = b"will", qos: int = 1, retain: bool = False,
            **properties: object) -> dict:
    kw = {"topic": topic, "payload": payload, "qos": qos, "retain": retain}
    if properties:
        kw["properties"] = props(PacketTypes.WILLMESSAGE, **properties)
    return kw


@pytest.mark.parametrize("version", [3, 4, 5])
def test_abnormal_disconnect_publishes_will(clients, version):
    topic = uid("will/")
    w = watch(clients, topic)
    c = clients(version=version, will=will_kw(topic, b"gone", qos=2))
    c.drop()
    m = w.expect_message()
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"gone", 2, False)


@pytest.mark.parametrize("version", [4, 5])
def test_normal_disconnect_discards_will(clients, version):
    topic = uid("will/")
    w = watch(clients, topic)
    c = clients(version=version, will=will_kw(topic))
    c.disconnect()
    no_will(w, clients, topic)


def test_disconnect_with_will_message_0x04_publishes_it(clients):
    topic = uid("will/")
    w = watch(clients, topic)
    c = clients(version=5, will=will_kw(topic, b"on purpose"))
    c.disconnect(reason_code=0x04)
    assert w.expect_message().payload == b"on purpose"


@pytest.mark.parametrize("version", [4, 5])
def test_protocol_error_publishes_will(raws, clients, broker, version):
    topic = uid("will/")
    w = watch(clients, topic)
    r = raws(broker, version)
    r.connect(uid(), will_topic=topic, will_payload=b"broken", will_qos=1)
    r.send(B.connect(uid(), level=version))  # a second CONNECT
    r.expect_closed()
    assert w.expect_message().payload == b"broken"


def test_will_retain_and_properties(clients):
    topic = uid("will/")
    c = clients(version=5, will=will_kw(topic, b"r", qos=1, retain=True,
                                        ContentType="text/plain", ResponseTopic="resp/x",
                                        CorrelationData=b"\x01\x02",
                                        UserProperty=[("a", "1"), ("a", "2")],
                                        PayloadFormatIndicator=1))
    c.drop()
    later = clients(version=5)  # subscribes after the will: gets it as retained
    later.subscribe(topic, 1)
    m = later.expect_message()
    assert (m.payload, m.qos, m.retain) == (b"r", 1, True)
    p = m.properties
    assert prop(p, "ContentType") == "text/plain"
    assert prop(p, "ResponseTopic") == "resp/x"
    assert prop(p, "CorrelationData") == b"\x01\x02"
    assert prop(p, "UserProperty") == [("a", "1"), ("a", "2")]
    assert prop(p, "PayloadFormatIndicator") == 1
    clients().publish(topic, b"", 0, retain=True)


# --- takeover ------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("clean1, clean2", [(True, True), (False, True), (True, False),
                                            (False, False)])
def test_takeover_publishes_will_only_if_the_session_ends(raws, clients, broker, version,
                                                          clean1, clean2):
    """As mosquitto (07-will-takeover): the new connection arrives before any delay could
    pass, so the old will goes out only when the takeover ends the session."""
    topic, cid = uid("will/"), uid()
    w = watch(clients, topic)

    def session(clean: bool) -> dict:
        if version == 4:
            return {"clean": clean}
        return {"clean": clean,
                "properties": B.props(("session_expiry_interval", 0 if clean else 60))}

    old = raws(broker, version)
    old.connect(cid, will_topic=topic, will_payload=b"LWT", **session(clean1))
    new = raws(broker, version)
    ack = new.connect(cid, **session(clean2))
    assert ack.session_present is (not clean1 and not clean2)
    old.expect_closed()
    if clean1 or clean2:
        assert w.expect_message().payload == b"LWT"
    no_will(w, clients, topic)


# --- will delay ------------------------------------------------------------------------------

def _delayed(clients, cid: str, topic: str, delay: int, expiry: int, **will_props: object):
    return clients(cid, version=5, clean=False,
                   will=will_kw(topic, b"delayed", WillDelayInterval=delay, **will_props),
                   properties=props(PacketTypes.CONNECT, SessionExpiryInterval=expiry))


def test_will_delay_then_published_with_full_message_expiry(clients):
    """The will waits out its delay; its Message Expiry Interval counts from publication,
    so a 1 s expiry behind a 1 s delay still arrives, carrying 1."""
    topic, cid = uid("will/"), uid()
    w = watch(clients, topic)
    c = _delayed(clients, cid, topic, delay=1, expiry=60, MessageExpiryInterval=1)
    dropped_at = time.monotonic()
    c.drop()
    m = w.expect_message()
    assert time.monotonic() - dropped_at >= 0.9
    assert m.payload == b"delayed"
    assert prop(m.properties, "MessageExpiryInterval") == 1
    assert prop(m.properties, "WillDelayInterval") is None


def test_reconnect_within_will_delay_cancels_the_will(clients):
    """Will Delay 3 s: the client is back well within it (a loaded machine's reconnect
    included), and once the will would have been due, a sentinel comes first."""
    topic, cid = uid("will/"), uid()
    w = watch(clients, topic)
    c = _delayed(clients, cid, topic, delay=3, expiry=60)
    c.drop()
    again = clients(cid, version=5, clean=False,
                    properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    assert again.session_present
    # Past the delay (it began before the reconnect): the cancelled will must not appear.
    time.sleep(3.3)
    no_will(w, clients, topic)


def test_session_end_before_will_delay_sends_the_will_then(clients):
    """Will Delay 30 s, Session Expiry 1 s: the will goes when the session ends."""
    topic, cid = uid("will/"), uid()
    w = watch(clients, topic)
    c = _delayed(clients, cid, topic, delay=30, expiry=1)
    dropped_at = time.monotonic()
    c.drop()
    assert w.expect_message().payload == b"delayed"
    assert 0.9 <= time.monotonic() - dropped_at <= 5


def test_will_delay_with_session_expiry_zero_is_immediate(clients):
    topic = uid("will/")
    w = watch(clients, topic)
    c = _delayed(clients, uid(), topic, delay=30, expiry=0)
    c.drop()
    # Within WAIT, not the 30 s delay (a tighter bound would time a loaded machine).
    assert w.expect_message(timeout=WAIT).payload == b"delayed"


def test_clean_start_within_will_delay_ends_session_and_sends_will(clients):
    topic, cid = uid("will/"), uid()
    w = watch(clients, topic)
    c = _delayed(clients, cid, topic, delay=30, expiry=60)
    c.drop()
    clients(cid, version=5, clean=True)
    assert w.expect_message(timeout=WAIT).payload == b"delayed"  # (not after 30 s)


@pytest.mark.parametrize("version, rc", [(5, 0x90), (4, 0x05)])
def test_will_topic_in_sys_refused(raws, broker, version, rc):
    r = raws(broker, version)
    r.send(B.connect(uid(), level=version, will_topic="$SYS/x"))
    packets = r.expect_closed()
    assert [(type(p), p.reason_code) for p in packets] == [(Connack, rc)]

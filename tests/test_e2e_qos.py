"""QoS 0/1/2 end to end: both directions at every QoS pair, the wire flows, packet
identifiers, the inflight window (client Receive Maximum / max_inflight), redelivery with
DUP after a reconnect, the bounded awaiting-PUBREL state (max_awaiting_rel ->
Receive Maximum -> DISCONNECT 0x93) and its timeout, and acks that do not fit.

The module runs against mqttd on uvloop and on asyncio's own loop."""

from __future__ import annotations

import pytest
from support import builder as B, uid
from support.process import BrokerProcess, checked_broker, log_size, wait_log

from mqttd.mqtt.packets import (
    Disconnect,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
)

pytest_plugins = ["support.fixtures"]

CONFIG = """
[zones.window]
max_inflight = 2

[zones.rel]
max_awaiting_rel = 2
await_rel_timeout = 1

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.window]
bind = "127.0.0.1"
port = 0
zone = "window"

[listeners.rel]
bind = "127.0.0.1"
port = 0
zone = "rel"
"""


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def broker(request):
    with checked_broker(CONFIG,
                        extra_args=["--no-uvloop"] if request.param == "asyncio" else []) as b:
        yield b


def sub_raw(raws, broker: BrokerProcess, topic: str, qos: int, version: int = 4,
            port: int | None = None, client_id: str | None = None, **connect: object):
    r = raws(broker, version, port=port)
    r.connect(client_id or uid(), **connect)
    r.send(B.subscribe(1, [(topic, qos)], properties=B.EMPTY_PROPS if version == 5 else b""))
    assert r.expect(Suback).reason_codes == [qos]
    return r


# --- every QoS pair, with paho ------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_qos_pairs_deliver_at_the_lower_qos(clients, version, pub_qos, sub_qos):
    topic = uid("qos/")
    sub = clients(version=version)
    assert sub.subscribe(topic, sub_qos) == [sub_qos]
    pub = clients(version=version)
    rc = pub.publish(topic, b"payload", pub_qos)  # returns once the flow completed
    assert rc == 0
    msg = sub.expect_message()
    assert (msg.topic, msg.payload, msg.qos) == (topic, b"payload", min(pub_qos, sub_qos))
    assert msg.retain is False and msg.dup is False
    assert (msg.mid != 0) == (msg.qos > 0)


# --- the wire flows -----------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
def test_inbound_qos1_and_qos2_flows(raws, broker, version):
    props = B.EMPTY_PROPS if version == 5 else b""
    r = raws(broker, version)
    r.connect(uid())
    r.send(B.publish(uid("in/"), b"1", qos=1, packet_id=7, properties=props))
    assert r.expect(Puback).packet_id == 7
    r.send(B.publish(uid("in/"), b"2", qos=2, packet_id=9, properties=props))
    assert r.expect(Pubrec).packet_id == 9
    r.send(B.pubrel(9))
    assert r.expect(Pubcomp) == Pubcomp(9)


def test_outbound_qos2_flow_and_packet_ids(raws, clients, broker):
    topic = uid("out/")
    r = sub_raw(raws, broker, topic, 2)
    pub = clients()
    ids = set()
    for i in range(3):
        pub.publish(topic, b"%d" % i, 2)
        p = r.expect(Publish)
        assert (p.qos, p.payload, p.dup) == (2, b"%d" % i, False)
        assert p.packet_id not in ids and 0 < p.packet_id <= 0xFFFF
        ids.add(p.packet_id)
        r.send(B.pubrec(p.packet_id))
        assert r.expect(Pubrel) == Pubrel(p.packet_id)
        r.send(B.pubcomp(p.packet_id))
    r.send(B.pingreq())
    r.expect(Pingresp)


@pytest.mark.parametrize("version", [4, 5])
def test_qos2_resent_before_pubrel_is_delivered_once(raws, clients, broker, version):
    """[MQTT-4.3.3-10]: PUBREC each time, one delivery."""
    topic = uid("once/")
    sub = clients()
    sub.subscribe(topic, 2)
    props = B.EMPTY_PROPS if version == 5 else b""
    r = raws(broker, version)
    r.connect(uid())
    r.send(B.publish(topic, b"x", qos=2, packet_id=3, properties=props))
    r.expect(Pubrec)
    r.send(B.publish(topic, b"x", qos=2, packet_id=3, dup=True, properties=props))
    r.expect(Pubrec)
    r.send(B.pubrel(3))
    r.expect(Pubcomp)
    sub.publish(topic, b"sentinel", 2)  # QoS 2 as well: paho hands QoS 2 over at PUBREL
    assert [m.payload for m in sub.expect_messages(2)] == [b"x", b"sentinel"]
    sub.assert_no_message()


# --- the inflight window --------------------------------------------------------------------

def _window_check(r, pub, topic: str, sentinel: str, window: int, total: int) -> None:
    """``total`` QoS 1 messages to a client whose window is ``window``: never more than
    ``window`` unacknowledged, in order, each ack letting exactly one more through."""
    for i in range(total):
        pub.publish(topic, b"%d" % i, 1)
    pub.publish(sentinel, b"s0", 0)  # QoS 0 is not held back by the window
    inflight = []
    while True:
        p = r.expect(Publish)
        if p.topic == sentinel:
            break
        inflight.append(p)
    assert [p.payload for p in inflight] == [b"%d" % i for i in range(window)]
    received = len(inflight)
    while inflight:
        r.send(B.puback(inflight.pop(0).packet_id))
        if received < total:
            p = r.expect(Publish)
            assert p.payload == b"%d" % received
            inflight.append(p)
            received += 1
        pub.publish(sentinel, b"s", 0)
        assert r.expect(Publish).topic == sentinel  # nothing more was let through
        assert len(inflight) <= window
    assert received == total


def test_inflight_window_is_the_client_receive_maximum(raws, clients, broker):
    topic, sentinel = uid("win/"), uid("sentinel/")
    r = raws(broker, 5)
    r.connect(uid(), properties=B.props(("receive_maximum", 2)))
    r.send(B.subscribe(1, [(topic, 1), (sentinel, 0)], properties=B.EMPTY_PROPS))
    r.expect(Suback)
    _window_check(r, clients(), topic, sentinel, 2, 5)


def test_inflight_window_is_max_inflight_for_311(raws, clients, broker):
    topic, sentinel = uid("win/"), uid("sentinel/")
    r = raws(broker, 4, port=broker.ports["window"])
    r.connect(uid())
    r.send(B.subscribe(1, [(topic, 1), (sentinel, 0)]))
    r.expect(Suback)
    _window_check(r, clients(), topic, sentinel, 2, 5)


# --- redelivery after reconnect ------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
def test_unacked_messages_redelivered_with_dup_on_reconnect(raws, clients, broker, version):
    cid, topic = uid(), uid("dup/")
    extra = {"properties": B.props(("session_expiry_interval", 60))} if version == 5 else {}
    r = sub_raw(raws, broker, topic, 2, version, client_id=cid, clean=False, **extra)
    pub = clients()
    pub.publish(topic, b"q1", 1)
    pub.publish(topic, b"q2", 2)
    pub.publish(topic, b"q2-rec", 2)
    q1, q2, q2rec = r.expect(Publish), r.expect(Publish), r.expect(Publish)
    r.send(B.pubrec(q2rec.packet_id))
    assert r.expect(Pubrel).packet_id == q2rec.packet_id
    r.close()  # no acks for q1/q2, no PUBCOMP for q2-rec
    r = raws(broker, version)
    assert r.connect(cid, clean=False, **extra).session_present
    again = [r.expect(Publish), r.expect(Publish)]
    assert [(p.packet_id, p.payload, p.qos, p.dup) for p in again] == [
        (q1.packet_id, b"q1", 1, True), (q2.packet_id, b"q2", 2, True)]
    # The QoS 2 message whose PUBREC arrived is not resent: its PUBREL is.
    assert r.expect(Pubrel) == Pubrel(q2rec.packet_id)
    r.send(B.puback(q1.packet_id), B.pubrec(q2.packet_id))
    assert r.expect(Pubrel) == Pubrel(q2.packet_id)
    r.send(B.pubcomp(q2.packet_id), B.pubcomp(q2rec.packet_id), B.pingreq())
    r.expect(Pingresp)
    r.close()
    # Everything completed: a further reconnect resends nothing.
    r = raws(broker, version)
    assert r.connect(cid, clean=False, **extra).session_present
    r.send(B.pingreq())
    assert r.recv() == Pingresp()


# --- awaiting PUBREL ---------------------------------------------------------------------

def test_max_awaiting_rel_is_advertised_and_enforced_v5(raws, broker):
    r = raws(broker, 5, port=broker.ports["rel"])
    ack = r.connect(uid())
    assert ack.properties["receive_maximum"] == 2
    for pid in (1, 2):
        r.send(B.publish(uid("rel/"), b"x", qos=2, packet_id=pid, properties=B.EMPTY_PROPS))
        assert r.expect(Pubrec).packet_id == pid
    # A resend of one already held is not a new one.
    r.send(B.publish(uid("rel/"), b"x", qos=2, packet_id=2, dup=True, properties=B.EMPTY_PROPS))
    assert r.expect(Pubrec).packet_id == 2
    r.send(B.publish(uid("rel/"), b"x", qos=2, packet_id=3, properties=B.EMPTY_PROPS))
    d = r.expect(Disconnect)
    assert d.reason_code == 0x93
    assert r.expect_closed() == []


def test_max_awaiting_rel_releases_make_room(raws, broker):
    r = raws(broker, 5, port=broker.ports["rel"])
    r.connect(uid())
    for pid in range(1, 8):  # never more than one unreleased at a time: fine
        r.send(B.publish(uid("rel/"), b"x", qos=2, packet_id=pid, properties=B.EMPTY_PROPS))
        r.expect(Pubrec)
        r.send(B.pubrel(pid))
        assert r.expect(Pubcomp) == Pubcomp(pid)


def test_max_awaiting_rel_exceeded_closes_311(raws, broker):
    r = raws(broker, 4, port=broker.ports["rel"])
    r.connect(uid())
    for pid in (1, 2):
        r.send(B.publish(uid("rel/"), b"x", qos=2, packet_id=pid))
        r.expect(Pubrec)
    r.send(B.publish(uid("rel/"), b"x", qos=2, packet_id=3))
    assert r.expect_closed() == []


def test_await_rel_timeout_forgets_unreleased_packet_ids(raws, broker):
    r = raws(broker, 5, port=broker.ports["rel"])
    r.connect(uid())
    start = log_size(broker)
    r.send(B.publish(uid("rel/"), b"x", qos=2, packet_id=1, properties=B.EMPTY_PROPS))
    r.expect(Pubrec)
    wait_log(broker, "forgot 1 QoS 2 packet ids", start=start)
    # The id is free again: a PUBREL for it is unknown now...
    r.send(B.pubrel(1))
    assert r.expect(Pubcomp) == Pubcomp(1, 0x92)
    # ...and the window has room for two new ones again.
    for pid in (2, 3):
        r.send(B.publish(uid("rel/"), b"x", qos=2, packet_id=pid, properties=B.EMPTY_PROPS))
        r.expect(Pubrec)
    r.send(B.pubrel(2), B.pubrel(3))
    assert [r.expect(Pubcomp), r.expect(Pubcomp)] == [Pubcomp(2), Pubcomp(3)]


# --- acks that do not fit -------------------------------------------------------------------

def test_unknown_pubrel_gets_pubcomp_0x92_v5(raws, broker):
    r = raws(broker, 5)
    r.connect(uid())
    r.send(B.pubrel(42))
    assert r.expect(Pubcomp) == Pubcomp(42, 0x92)


def test_unknown_pubrel_gets_plain_pubcomp_311(raws, broker):
    r = raws(broker, 4)
    r.connect(uid())
    r.send(B.pubrel(42))
    r.expect(Pubcomp)
    assert bytes(r.received[-4:]) == b"\x70\x02\x00\x2a"


@pytest.mark.parametrize("version", [4, 5])
def test_unknown_puback_and_pubcomp_are_ignored(raws, broker, version):
    r = raws(broker, version)
    r.connect(uid())
    r.send(B.puback(5), B.pubcomp(6), B.pingreq())
    assert r.recv() == Pingresp()


def test_unknown_pubrec_gets_pubrel_0x92_v5(raws, broker):
    r = raws(broker, 5)
    r.connect(uid())
    r.send(B.pubrec(8))
    assert r.expect(Pubrel) == Pubrel(8, 0x92)


@pytest.mark.parametrize("sub_qos, wrong", [(1, "pubrec"), (2, "puback"), (2, "pubcomp")])
def test_ack_of_the_wrong_kind_is_a_protocol_error(raws, clients, broker, sub_qos, wrong):
    topic = uid("wrong/")
    r = sub_raw(raws, broker, topic, sub_qos, 5)
    clients().publish(topic, b"x", sub_qos)
    p = r.expect(Publish)
    r.send(getattr(B, wrong)(p.packet_id))
    d = r.expect(Disconnect)
    assert d.reason_code == 0x82
    assert r.expect_closed() == []


def test_repeated_pubrec_is_answered_with_pubrel_again(raws, clients, broker):
    """A 3.1.1 client may retransmit PUBREC; the broker repeats PUBREL, it does not close."""
    topic = uid("rec/")
    r = sub_raw(raws, broker, topic, 2)
    clients().publish(topic, b"x", 2)
    p = r.expect(Publish)
    r.send(B.pubrec(p.packet_id))
    r.expect(Pubrel)
    r.send(B.pubrec(p.packet_id))
    assert r.expect(Pubrel) == Pubrel(p.packet_id)
    r.send(B.pubcomp(p.packet_id), B.pingreq())
    assert r.recv() == Pingresp()


def test_refused_pubrec_ends_the_flow_v5(raws, clients, broker):
    """PUBREC >= 0x80: the receiver refused the message; no PUBREL, the window frees."""
    topic = uid("refuse/")
    r = raws(broker, 5)
    r.connect(uid(), properties=B.props(("receive_maximum", 1)))
    r.send(B.subscribe(1, [(topic, 2)], properties=B.EMPTY_PROPS))
    r.expect(Suback)
    pub = clients()
    pub.publish(topic, b"refused", 2)
    pub.publish(topic, b"next", 2)
    p = r.expect(Publish)
    assert p.payload == b"refused"
    r.send(B.pubrec(p.packet_id, 0x80))
    p2 = r.expect(Publish)
    assert p2.payload == b"next"

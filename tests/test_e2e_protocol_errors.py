"""Bad input at the protocol level (the codec parses it; the channel refuses it): packets only
a server may send, a second CONNECT, a first packet that is not CONNECT, a Subscription
Identifier from a client, AUTH without an authentication method, QoS and retain beyond
what the zone allows. One client's bad input never affects another client, and the broker
log never holds a traceback (checked after every test)."""

from __future__ import annotations

import pytest
from support import builder as B, uid
from support.process import broker_fixture

from mqttd.mqtt.packets import Disconnect, Pingresp, Suback

pytest_plugins = ["support.fixtures"]

CONFIG = """
[zones.qos1]
max_qos_allowed = 1

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.qos1]
bind = "127.0.0.1"
port = 0
zone = "qos1"
"""

broker = broker_fixture(CONFIG)

SERVER_ONLY = {
    "CONNACK": lambda v: B.connack(0, properties=B.EMPTY_PROPS if v == 5 else b""),
    "SUBACK": lambda v: B.suback(1, [0], properties=B.EMPTY_PROPS if v == 5 else b""),
    "UNSUBACK": lambda v: (B.unsuback(1, [0], properties=B.EMPTY_PROPS) if v == 5
                           else B.unsuback(1)),
    "PINGRESP": lambda v: B.pingresp(),
}


def connected(raws, broker, version: int, **kw):
    r = raws(broker, version, **kw)
    r.connect(uid())
    return r


def expect_protocol_close(r, version: int, code: int = 0x82) -> None:
    """5.0: DISCONNECT with ``code`` (and a Reason String), then close; 3.x: just close."""
    packets = r.expect_closed()
    if version == 5:
        assert len(packets) == 1 and isinstance(packets[0], Disconnect), packets
        assert packets[0].reason_code == code
        assert packets[0].properties.get("reason_string")
    else:
        assert packets == []


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("kind", sorted(SERVER_ONLY))
def test_server_only_packet_from_client(raws, broker, version, kind):
    r = connected(raws, broker, version)
    r.send(SERVER_ONLY[kind](version))
    expect_protocol_close(r, version)


@pytest.mark.parametrize("version", [3, 4, 5])
def test_second_connect(raws, broker, version):
    r = connected(raws, broker, version)
    r.send(B.connect(uid(), level=version))
    expect_protocol_close(r, version)


FIRST = {
    "PUBLISH": B.publish("t", b"x"),
    "SUBSCRIBE": B.subscribe(1, [("t", 0)]),
    "PINGREQ": B.pingreq(),
    "DISCONNECT": B.disconnect(),
    "PUBREL": B.pubrel(1),
    "CONNACK": B.connack(0),
    # Only a header announcing a 100 kB body: refused at once, the body never awaited.
    "PUBLISH-header-only": b"\x30\xa0\x8d\x06",
}


@pytest.mark.parametrize("kind", sorted(FIRST))
def test_first_packet_not_connect_closes_without_a_reply(raws, broker, kind):
    r = raws(broker, 5)
    r.send(FIRST[kind])
    assert r.expect_closed(timeout=2) == []  # well before the 10 s connect timeout
    assert bytes(r.received) == b""


def test_first_packet_auth_closes_without_a_reply(raws, broker):
    r = raws(broker, 5)
    r.send(B.auth(0x18, B.props(("authentication_method", "x"))))
    assert r.expect_closed() == []
    assert bytes(r.received) == b""


def test_subscription_identifier_in_client_publish(raws, broker):
    r = connected(raws, broker, 5)
    r.send(B.publish(uid("t/"), b"x", properties=B.props(("subscription_identifier", 3))))
    expect_protocol_close(r, 5)


def test_auth_without_authentication_method(raws, broker):
    r = connected(raws, broker, 5)
    r.send(B.auth(0x18, B.props(("authentication_method", "SCRAM-SHA-1"))))
    expect_protocol_close(r, 5)


def test_qos_above_maximum_is_0x9b(raws, broker):
    port = broker.ports["qos1"]
    r = connected(raws, broker, 5, port=port)
    r.send(B.subscribe(1, [(uid("q/"), 2)], properties=B.EMPTY_PROPS))
    assert r.expect(Suback).reason_codes == [1]  # granted the zone's maximum
    r.send(B.publish(uid("q/"), b"x", qos=2, packet_id=1, properties=B.EMPTY_PROPS))
    expect_protocol_close(r, 5, 0x9B)
    r = raws(broker, 5, port=port)
    r.send(B.connect(uid(), level=5, will_topic="w/t", will_qos=2))
    assert [p.reason_code for p in r.expect_closed()] == [0x9B]


def test_malformed_packet_after_connect_is_0x81(raws, broker):
    r = connected(raws, broker, 5)
    r.send(B.pingreq(extra=b"\x00"))
    expect_protocol_close(r, 5, 0x81)


def test_bad_clients_do_not_disturb_a_good_one(raws, clients, broker):
    """Every kind of bad input above, interleaved with a good client's traffic."""
    topic = uid("good/")
    good = clients(version=5)
    good.subscribe(topic, 1)
    pub = clients(version=4)
    bad_inputs = [
        (5, SERVER_ONLY["CONNACK"](5)), (4, SERVER_ONLY["SUBACK"](4)),
        (5, B.connect(uid(), level=5)), (5, B.auth(0x18, B.EMPTY_PROPS)),
        (5, B.publish("x", b"", properties=B.props(("subscription_identifier", 1)))),
        (5, B.publish("", b"", properties=B.props(("topic_alias", 7)))),
        (4, b"\xff\xff\xff\xff\xff"), (5, B.publish("a/+", b"")),
        (5, B.subscribe(1, [("t", 3)], properties=B.EMPTY_PROPS)),
    ]
    for i, (version, data) in enumerate(bad_inputs):
        r = connected(raws, broker, version)
        r.send(data)
        r.expect_closed()
        pub.publish(topic, b"%d" % i, 1)
        assert good.expect_message().payload == b"%d" % i
    # Bad bytes as the very first packet, too.
    r = raws(broker, 4)
    r.send(b"\x00\x00\x00\x00")
    r.expect_closed()
    good.publish(topic, b"still here", 1)
    assert good.expect_message().payload == b"still here"
    assert good.disconnected is None


def test_connection_survives_everything_that_is_not_an_error(raws, broker):
    """The neighbours of the errors above are accepted: PINGREQ, an empty-topic PUBLISH
    with a known alias, an UNSUBSCRIBE of nothing, a PUBACK for an unknown id."""
    r = connected(raws, broker, 5)
    r.send(B.publish(uid("t/"), b"x", properties=B.props(("topic_alias", 1))),
           B.publish("", b"y", properties=B.props(("topic_alias", 1))),
           B.unsubscribe(2, ["nothing"], properties=B.EMPTY_PROPS), B.puback(9),
           B.pingreq())
    r.recv()  # UNSUBACK
    assert r.recv() == Pingresp()

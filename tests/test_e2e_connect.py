"""CONNECT / CONNACK end to end: protocol levels, client identifiers, the session present
flag, keep alive (1.5x, Server Keep Alive, max_keepalive), the connect timeout, refused
protocol levels, authentication methods and anonymous clients."""

from __future__ import annotations

import time

import pytest
from support import builder as B, uid
from support.clients import PacketTypes, prop, props
from support.process import broker_fixture

from mqttd.mqtt.packets import Connack, Disconnect, Pingresp, Publish

pytest_plugins = ["support.fixtures"]

CONFIG = """
[zones.limits]
max_keepalive = 10

[zones.serverka]
server_keepalive = 1

[zones.strict]
allow_anonymous = false
idle_timeout = 0.5

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.limits]
bind = "127.0.0.1"
port = 0
zone = "limits"

[listeners.serverka]
bind = "127.0.0.1"
port = 0
zone = "serverka"

[listeners.strict]
bind = "127.0.0.1"
port = 0
zone = "strict"
"""

broker = broker_fixture(CONFIG)


@pytest.mark.parametrize("version", [3, 4, 5])
def test_each_protocol_level_connects_and_exchanges_messages(clients, version):
    topic = uid("lvl/")
    c = clients(version=version)
    assert not c.session_present
    assert c.subscribe(topic, 1) == [1]
    assert c.publish(topic, b"hello", 1) == 0
    msg = c.expect_message()
    assert (msg.topic, msg.payload, msg.qos) == (topic, b"hello", 1)


@pytest.mark.parametrize("version", [3, 4])
def test_connack_wire_form_3x(raws, broker, version):
    r = raws(broker, version)
    r.connect(uid())
    assert bytes(r.received) == b"\x20\x02\x00\x00"


def test_connack_properties_v5(raws, broker):
    r = raws(broker, 5)
    ack = r.connect(uid())
    assert ack.session_present is False
    p = ack.properties
    assert p["receive_maximum"] == 100  # max_awaiting_rel
    assert p["maximum_packet_size"] == 1024 * 1024
    assert p["topic_alias_maximum"] == 65535
    # Everything else is available: the properties saying otherwise are absent.
    for absent in ("maximum_qos", "retain_available", "wildcard_subscription_available",
                   "shared_subscription_available", "assigned_client_identifier",
                   "server_keep_alive"):
        assert absent not in p


# --- client identifiers --------------------------------------------------------------------

def test_empty_client_id_311_clean_session_is_assigned(clients):
    """[MQTT-3.1.3-6]: each empty-id client gets its own unique id, so two of them do not
    take each other over."""
    topic = uid("anon/")
    a = clients("")
    b = clients("")
    for c in (a, b):
        assert c.subscribe(topic, 1) == [1]
    a.publish(topic, b"x", 1)
    for c in (a, b):
        assert c.expect_message().payload == b"x"
    assert a.disconnected is None and b.disconnected is None


@pytest.mark.parametrize("version, clean", [(4, False), (3, True), (3, False)])
def test_empty_client_id_refused_with_0x02(raws, broker, version, clean):
    """3.1.1 with clean session 0 [MQTT-3.1.3-8] and 3.1 always: CONNACK 0x02, then close."""
    r = raws(broker, version)
    r.send(B.connect("", level=version, clean=clean))
    assert r.expect_closed() == [Connack(False, 2)]
    assert bytes(r.received) == b"\x20\x02\x00\x02"


def test_empty_client_id_v5_gets_assigned_client_identifier(clients):
    a = clients("", version=5, properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    b = clients("", version=5)
    ida = prop(a.connack[2], "AssignedClientIdentifier")
    idb = prop(b.connack[2], "AssignedClientIdentifier")
    assert ida and idb and ida != idb
    # The assigned id names a real session: resuming it finds the session.
    assert a.subscribe(uid("t/"), 1) == [1]
    a.disconnect()
    again = clients(ida, version=5, clean=False,
                    properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
    assert again.session_present
    assert prop(again.connack[2], "AssignedClientIdentifier") is None


@pytest.mark.parametrize("version, expected", [(5, 0x85), (4, 0x02)])
def test_client_id_with_control_character_refused(raws, broker, version, expected):
    r = raws(broker, version)
    r.send(B.connect("bad\x01id", level=version))
    packets = r.expect_closed()
    assert len(packets) == 1 and packets[0].reason_code == expected


# --- session present ------------------------------------------------------------------------

def test_session_present_311(clients):
    cid = uid()
    c = clients(cid, clean=False)
    assert not c.session_present
    c.disconnect()
    c = clients(cid, clean=False)
    assert c.session_present
    c.disconnect()
    c = clients(cid, clean=True)  # discards the session
    assert not c.session_present
    c.disconnect()
    c = clients(cid, clean=False)
    assert not c.session_present


def test_session_present_v5(clients):
    cid = uid()
    expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=30)
    c = clients(cid, version=5, clean=False, properties=expiry)
    assert not c.session_present
    c.disconnect()
    c = clients(cid, version=5, clean=False, properties=expiry)
    assert c.session_present
    c.disconnect()
    c = clients(cid, version=5, clean=True)
    assert not c.session_present


# --- keep alive ---------------------------------------------------------------------------

def test_keepalive_v5_traffic_keeps_alive_then_silence_gets_0x8d(raws, broker):
    r = raws(broker, 5)
    r.connect(uid(), keepalive=1)
    for _ in range(4):  # 2 s of traffic in all, past the 1.5 s window of silence
        time.sleep(0.5)  # well inside the window (a loaded machine may sleep longer)
        r.send(B.pingreq())
        r.expect(Pingresp)
    silent_since = time.monotonic()
    d = r.expect(Disconnect, timeout=5)
    waited = time.monotonic() - silent_since
    assert d.reason_code == 0x8D
    assert 1.3 <= waited <= 2.5, waited  # 1.5 x keepalive
    assert r.expect_closed() == []


def test_keepalive_311_silent_client_dropped_and_will_sent(raws, clients, broker):
    will_topic = uid("will/")
    watcher = clients()
    watcher.subscribe(will_topic, 1)
    r = raws(broker, 4)
    silent_since = time.monotonic()
    r.connect(uid(), keepalive=1, will_topic=will_topic, will_payload=b"gone", will_qos=1)
    msg = watcher.expect_message()
    # The will goes out when the broker gives up on the client, not when the socket is
    # finally gone (this client never closes its side).
    assert 1.3 <= time.monotonic() - silent_since <= 2.5
    assert (msg.topic, msg.payload, msg.qos) == (will_topic, b"gone", 1)
    assert r.expect_closed(timeout=5) == []  # 3.1.1: closed, nothing sent


@pytest.mark.parametrize("asked, granted", [(60, 10), (0, 10), (11, 10), (5, None), (10, None)])
def test_max_keepalive_gives_server_keep_alive_v5(clients, broker, asked, granted):
    c = clients(version=5, keepalive=asked, port=broker.ports["limits"])
    assert prop(c.connack[2], "ServerKeepAlive") == granted


@pytest.mark.parametrize("asked, rc", [(60, 2), (11, 2), (10, 0), (1, 0), (0, 0)])
def test_max_keepalive_refuses_311_above_limit(raws, broker, asked, rc):
    r = raws(broker, 4, port=broker.ports["limits"])
    ack = r.connect(uid(), keepalive=asked, expect_rc=rc)
    if rc:
        assert r.expect_closed() == [] and ack.reason_code == rc


def test_server_keepalive_is_announced_and_enforced(raws, broker):
    r = raws(broker, 5, port=broker.ports["serverka"])
    silent_since = time.monotonic()
    ack = r.connect(uid(), keepalive=0)  # the client asks for none; the server imposes 1 s
    assert ack.properties["server_keep_alive"] == 1
    d = r.expect(Disconnect, timeout=5)
    assert d.reason_code == 0x8D
    assert 1.3 <= time.monotonic() - silent_since <= 2.5


# --- connect timeout ----------------------------------------------------------------------

@pytest.mark.parametrize("sent", [b"", B.connect("partial")[:5]], ids=["nothing", "partial"])
def test_connect_timeout_closes_silent_socket(raws, broker, sent):
    r = raws(broker, 4, port=broker.ports["strict"])
    start = time.monotonic()
    if sent:
        r.send(sent)
    assert r.expect_closed(timeout=5) == []
    assert bytes(r.received) == b""
    assert 0.4 <= time.monotonic() - start <= 3.0  # idle_timeout = 0.5


# --- refused connections ------------------------------------------------------------------

@pytest.mark.parametrize("name, level", [("MQTT", 6), ("MQTT", 3), ("MQTT", 2),
                                         ("MQIsdp", 4), ("MQTT", 0x85)])
def test_unsupported_protocol_level_gets_0x01(raws, broker, name, level):
    r = raws(broker, 4)
    r.send(B.connect(uid(), level=level, proto_name=name))
    assert r.expect_closed() == [Connack(False, 1)]
    assert bytes(r.received) == b"\x20\x02\x00\x01"


def test_authentication_method_refused_0x8c(raws, broker):
    r = raws(broker, 5)
    r.send(B.connect(uid(), level=5, properties=B.props(("authentication_method", "SCRAM"))))
    packets = r.expect_closed()
    assert len(packets) == 1
    assert packets[0].reason_code == 0x8C
    assert packets[0].properties.get("reason_string")


@pytest.mark.parametrize("version, rc", [(5, 0x87), (4, 5), (3, 5)])
def test_anonymous_refused_when_not_allowed(raws, broker, version, rc):
    port = broker.ports["strict"]
    r = raws(broker, version, port=port)
    r.send(B.connect(uid(), level=version))
    packets = r.expect_closed()
    assert [p.reason_code for p in packets] == [rc]
    # A user name alone does not get in: no provider vouches for it (mosquitto's old hole,
    # its issue 1545): 0x86 bad user name or password (3.x: 4).
    r = raws(broker, version, port=port)
    r.send(B.connect(uid(), level=version, username="alice", password=b"pw"))
    packets = r.expect_closed()
    assert [p.reason_code for p in packets] == [0x86 if version == 5 else 4]


def test_packets_pipelined_after_a_refused_connect_are_ignored(raws, clients, broker):
    """[MQTT-3.1.4-5]: nothing after a refused CONNECT is processed."""
    topic = uid("pipe/")
    watcher = clients()
    watcher.subscribe(topic)
    r = raws(broker, 4, port=broker.ports["strict"])
    r.send(B.connect(uid()), B.publish(topic, b"must not pass"))
    assert r.expect_closed() == [Connack(False, 5)]
    watcher.publish(topic, b"sentinel")
    assert watcher.expect_message().payload == b"sentinel"
    watcher.assert_no_message()


def test_connected_raw_client_gets_published_messages(raws, broker):
    """Sanity of the raw client itself: what it decodes is what the broker sent."""
    r = raws(broker, 5)
    r.connect(uid())
    topic = uid("raw/")
    r.send(B.subscribe(1, [(topic, 0)], properties=B.EMPTY_PROPS))
    r.recv()  # SUBACK
    r.send(B.publish(topic, b"p", properties=B.EMPTY_PROPS))
    p = r.expect(Publish)
    assert (p.topic, p.payload) == (topic, b"p")

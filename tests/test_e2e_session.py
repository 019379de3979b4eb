"""Sessions end to end: clean start / clean session, 3.1.1 persistent sessions, MQTT 5
Session Expiry Interval, takeover, concurrent connects of one client id, and the bounded
offline queue."""

from __future__ import annotations

import pytest
from support import builder as B, uid
from support.clients import PacketTypes, prop, props
from support.process import broker_fixture, log_size, wait_log
from support.raw import Closed

from mqttd.mqtt.packets import Connack, Disconnect, Pingresp, Publish, Suback

pytest_plugins = ["support.fixtures"]

CONFIG = """
[zones.small]
max_mqueue_len = 3

[zones.noqos0]
mqueue_store_qos0 = false

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.small]
bind = "127.0.0.1"
port = 0
zone = "small"

[listeners.noqos0]
bind = "127.0.0.1"
port = 0
zone = "noqos0"
"""

broker = broker_fixture(CONFIG)


def expiry(seconds: int) -> object:
    return props(PacketTypes.CONNECT, SessionExpiryInterval=seconds)


def sentinel_check(sub, pub, topic: str) -> None:
    """Publish a sentinel on ``topic`` (which ``sub`` subscribes to) and expect it next."""
    pub.publish(topic, b"sentinel", 1)
    assert sub.expect_message().payload == b"sentinel"
    sub.assert_no_message()


# --- clean session / clean start ------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
def test_clean_start_discards_subscriptions(clients, version):
    cid, topic, check = uid(), uid("cs/"), uid("check/")
    kw = {"properties": expiry(60)} if version == 5 else {}
    c = clients(cid, version=version, clean=False, **kw)
    c.subscribe(topic, 1)
    c.disconnect()
    c = clients(cid, version=version, clean=True)
    assert not c.session_present
    c.subscribe(check, 1)
    pub = clients()
    pub.publish(topic, b"old subscription", 1)
    sentinel_check(c, pub, check)


def test_311_persistent_session_keeps_subscriptions_and_queues_offline_messages(clients):
    cid, topic = uid(), uid("p/")
    c = clients(cid, clean=False)
    assert c.subscribe(topic, 2) == [2]
    c.disconnect()
    pub = clients()
    for qos in (0, 1, 2):
        pub.publish(topic, b"m%d" % qos, qos)
    c = clients(cid, clean=False)
    assert c.session_present
    got = c.expect_messages(3)
    assert [(m.payload, m.qos) for m in got] == [(b"m0", 0), (b"m1", 1), (b"m2", 2)]
    # The subscription is still there without subscribing again.
    pub.publish(topic, b"live", 1)
    assert c.expect_message().payload == b"live"


def test_v5_session_expiry_zero_ends_the_session_at_disconnect(clients):
    cid, topic = uid(), uid("e0/")
    c = clients(cid, version=5, clean=False, properties=expiry(0))
    c.subscribe(topic, 1)
    c.disconnect()
    c = clients(cid, version=5, clean=False, properties=expiry(0))
    assert not c.session_present


def test_v5_session_expiry_interval_expires_and_is_gone(clients, broker):
    cid, topic, check = uid(), uid("e1/"), uid("check/")
    c = clients(cid, version=5, clean=False, properties=expiry(1))
    c.subscribe(topic, 1)
    c.disconnect()
    pub = clients()
    pub.publish(topic, b"queued", 1)
    # Reconnecting within the interval resumes it, with the queued message.
    c = clients(cid, version=5, clean=False, properties=expiry(1))
    assert c.session_present
    assert c.expect_message().payload == b"queued"
    start = log_size(broker)
    c.disconnect()
    wait_log(broker, f"session {cid} expired", start=start)
    pub.publish(topic, b"after expiry", 1)  # no session subscribes any more
    c = clients(cid, version=5, clean=False, properties=expiry(1))
    assert not c.session_present
    c.subscribe(check, 1)
    sentinel_check(c, pub, check)


def test_v5_session_expiry_never(clients):
    cid, topic = uid(), uid("never/")
    c = clients(cid, version=5, clean=False, properties=expiry(0xFFFFFFFF))
    assert prop(c.connack[2], "SessionExpiryInterval") is None  # granted as asked
    c.subscribe(topic, 1)
    c.disconnect()
    clients().publish(topic, b"kept", 1)
    c = clients(cid, version=5, clean=False, properties=expiry(0xFFFFFFFF))
    assert c.session_present
    assert c.expect_message().payload == b"kept"


def test_v5_disconnect_can_shorten_session_expiry(clients):
    cid = uid()
    c = clients(cid, version=5, clean=False, properties=expiry(60))
    c.subscribe(uid("t/"), 1)
    c.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    c = clients(cid, version=5, clean=False, properties=expiry(60))
    assert not c.session_present


def test_v5_disconnect_setting_expiry_after_zero_is_a_protocol_error(raws, broker):
    r = raws(broker, 5)
    r.connect(uid())  # Session Expiry Interval absent: 0
    r.send(B.disconnect(0, B.props(("session_expiry_interval", 10))))
    packets = r.expect_closed()
    assert len(packets) == 1 and packets[0].reason_code == 0x82


# --- takeover -------------------------------------------------------------------------------

@pytest.mark.parametrize("resume", [True, False], ids=["resume", "clean"])
def test_v5_takeover_kicks_old_connection_with_0x8e(clients, resume):
    cid, topic = uid(), uid("to/")
    old = clients(cid, version=5, clean=False, properties=expiry(60))
    old.subscribe(topic, 1)
    new = clients(cid, version=5, clean=not resume, properties=expiry(60))
    rc, _ = old.wait_disconnected()
    assert rc == 0x8E
    assert new.session_present is resume
    pub = clients()
    pub.publish(topic, b"after takeover", 1)
    if resume:  # the subscription came along with the session
        assert new.expect_message().payload == b"after takeover"
    else:
        check = uid("check/")
        new.subscribe(check, 1)
        sentinel_check(new, pub, check)


@pytest.mark.parametrize("clean", [True, False])
def test_311_takeover_closes_old_connection(raws, broker, clean):
    cid = uid()
    old = raws(broker, 4)
    old.connect(cid, clean=False)
    new = raws(broker, 4)
    ack = new.connect(cid, clean=clean)
    assert ack.session_present is (not clean)
    assert old.expect_closed() == []  # 3.1.1 has no DISCONNECT from the server
    new.send(B.pingreq())
    new.expect(Pingresp)


def test_concurrent_connects_leave_one_session_and_one_connection(raws, clients, broker):
    cid, topic = uid(), uid("many/")
    socks = [raws(broker, 5) for _ in range(12)]
    connect = B.connect(cid, level=5, clean=False,
                        properties=B.props(("session_expiry_interval", 60)))
    for r in socks:  # every CONNECT on the wire before any answer is read
        r.send(connect)
    for r in socks:
        assert r.expect(Connack).reason_code == 0
    # Every CONNECT has been handled, so every takeover has happened: exactly one lives.
    alive = []
    for r in socks:
        try:
            r.send(B.pingreq())
        except OSError:
            pass
        packets = []
        try:
            packets.append(r.recv())
        except Closed:
            pass
        if packets == [Pingresp()]:
            alive.append(r)
        else:
            assert packets == [] or (isinstance(packets[0], Disconnect)
                                     and packets[0].reason_code == 0x8E), packets
            r.expect_closed()
    assert len(alive) == 1
    live = alive[0]
    live.send(B.subscribe(1, [(topic, 1)], properties=B.EMPTY_PROPS))
    assert live.expect(Suback).reason_codes == [1]
    clients().publish(topic, b"once", 1)
    p = live.expect(Publish)
    assert p.payload == b"once"
    live.send(B.puback(p.packet_id), B.pingreq())
    live.expect(Pingresp)  # a second copy of the message would have come first


# --- the offline queue ---------------------------------------------------------------------

def test_offline_queue_bounded_drops_oldest(clients, broker):
    cid, topic = uid(), uid("q/")
    port = broker.ports["small"]
    c = clients(cid, clean=False, port=port)
    c.subscribe(topic, 1)
    c.disconnect()
    pub = clients()
    for i in range(6):
        pub.publish(topic, b"%d" % i, 1)
    c = clients(cid, clean=False, port=port)
    assert [m.payload for m in c.expect_messages(3)] == [b"3", b"4", b"5"]
    check = uid("check/")
    c.subscribe(check, 1)
    sentinel_check(c, pub, check)


@pytest.mark.parametrize("listener, stored", [("noqos0", False), ("default", True)])
def test_mqueue_store_qos0(clients, broker, listener, stored):
    cid, topic = uid(), uid("q0/")
    port = broker.ports[listener]
    c = clients(cid, clean=False, port=port)
    c.subscribe(topic, 1)
    c.disconnect()
    pub = clients()
    pub.publish(topic, b"qos0", 0)
    pub.publish(topic, b"qos1", 1)
    c = clients(cid, clean=False, port=port)
    got = [m.payload for m in c.expect_messages(2 if stored else 1)]
    assert got == ([b"qos0", b"qos1"] if stored else [b"qos1"])


def test_messages_queued_while_online_window_is_full_are_delivered_in_order(raws, clients,
                                                                            broker):
    """Receive Maximum 1: the rest wait in the queue and come out in publish order."""
    cid, topic = uid(), uid("order/")
    r = raws(broker, 5)
    r.connect(cid, properties=B.props(("receive_maximum", 1)))
    r.send(B.subscribe(1, [(topic, 1)], properties=B.EMPTY_PROPS))
    r.expect(Suback)
    pub = clients()
    for i in range(5):
        pub.publish(topic, b"%d" % i, 1)
    got = []
    for _ in range(5):
        p = r.expect(Publish)
        got.append(p.payload)
        r.send(B.puback(p.packet_id))
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    r.send(B.pingreq())
    r.expect(Pingresp)


def test_v5_puback_reason_for_no_subscribers(clients):
    pub = clients(version=5)
    assert pub.publish(uid("nobody/"), b"x", 1) == 0x10
    # A 3.1.1 PUBACK has no reason code: plain success.
    assert clients().publish(uid("nobody/"), b"x", 1) == 0


def test_puback_after_resume_is_accepted(raws, clients, broker):
    """Acks for messages resent after a reconnect complete their flows."""
    cid, topic = uid(), uid("r/")
    r = raws(broker, 4)
    r.connect(cid, clean=False)
    r.send(B.subscribe(1, [(topic, 1)]))
    r.expect(Suback)
    clients().publish(topic, b"unacked", 1)
    first = r.expect(Publish)
    r.close()
    r = raws(broker, 4)
    assert r.connect(cid, clean=False).session_present
    again = r.expect(Publish)
    assert (again.packet_id, again.payload, again.dup) == (first.packet_id, b"unacked", True)
    r.send(B.puback(again.packet_id))
    r.close()
    r = raws(broker, 4)
    assert r.connect(cid, clean=False).session_present
    r.send(B.pingreq())
    assert r.recv() == Pingresp()  # acknowledged: not resent again

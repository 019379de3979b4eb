"""Shared subscriptions end to end: `$share/<group>/<filter>` and `$queue/<filter>` with
each strategy (random, round_robin, sticky, hash): exactly one member of each group gets
each message; a member whose session ends hands its unacknowledged and queued QoS 1/2
messages to another member (but not a QoS 2 message it has already received)."""

from __future__ import annotations

import queue
import time

import pytest
from support import WAIT, builder as B, uid
from support.process import broker_fixture, checked_broker

from mqttd.mqtt.packets import Publish, Pubrel, Suback

pytest_plugins = ["support.fixtures"]

N = 30  # messages per run


@pytest.fixture(scope="module", params=["random", "round_robin", "sticky", "hash"])
def strategy_broker(request):
    """One broker per strategy (the strategy is node-wide)."""
    with checked_broker(f'[mqtt]\nshared_subscription_strategy = "{request.param}"\n') as b:
        b.strategy = request.param
        yield b


#: round_robin splits deterministically, which the hand-over tests rely on.
broker = broker_fixture('[mqtt]\nshared_subscription_strategy = "round_robin"\n')


def collect(members, pub, expected_total: int) -> list[list[bytes]]:
    """Everything each member received: wait until ``expected_total`` arrived in all, then a
    per-member sentinel (plain subscription) proves nothing else is on its way."""
    got: list[list[bytes]] = [[] for _ in members]
    deadline = time.monotonic() + WAIT
    while sum(map(len, got)) < expected_total:
        assert time.monotonic() < deadline, got
        for i, m in enumerate(members):
            try:
                got[i].append(m.messages.get(timeout=0.01).payload)
            except queue.Empty:
                pass
    for i, m in enumerate(members):
        sentinel = uid("sentinel/")
        m.subscribe(sentinel, 1)
        pub.publish(sentinel, b"sentinel", 1)
        while True:
            payload = m.expect_message().payload
            if payload == b"sentinel":
                break
            got[i].append(payload)
    return got


def test_exactly_one_member_per_group_gets_each_message(clients, strategy_broker):
    sb = strategy_broker
    topic = uid("sh/")
    g1 = [clients(version=5, broker=sb), clients(version=4, broker=sb),
          clients(version=5, broker=sb)]
    g2 = [clients(version=4, broker=sb), clients(version=5, broker=sb)]
    queue_members = [clients(version=5, broker=sb), clients(version=4, broker=sb)]
    plain = clients(version=5, broker=sb)
    for m in g1:
        assert m.subscribe(f"$share/g1/{topic}", 1) == [1]
    for m in g2:
        assert m.subscribe(f"$share/g2/{topic}", 1) == [1]
    for m in queue_members:
        assert m.subscribe(f"$queue/{topic}", 1) == [1]
    plain.subscribe(topic, 1)
    pub = clients(version=5, broker=sb)
    sent = [b"%02d" % i for i in range(N)]
    for payload in sent:
        pub.publish(topic, payload, 1)
    assert [m.payload for m in plain.expect_messages(N)] == sent
    for group in (g1, g2, queue_members):
        got = collect(group, pub, N)
        assert sorted(p for member in got for p in member) == sent  # each exactly once
        counts = sorted(len(member) for member in got)
        if sb.strategy == "round_robin":
            assert counts[-1] - counts[0] <= 1, counts  # even
        elif sb.strategy in ("sticky", "hash"):  # one publisher: one member
            assert counts[:-1] == [0] * (len(got) - 1), counts
        else:  # random: with 30 messages every member gets some (P(fail) ~ 1e-5)
            assert counts[0] > 0, counts


def test_shared_subscription_gets_no_retained_message(clients, broker):
    topic = uid("shr/")
    pub = clients()
    pub.publish(topic, b"retained", 1, retain=True)
    member = clients(version=5)
    member.subscribe(f"$share/g/{topic}", 1)
    sentinel = uid("sentinel/")
    member.subscribe(sentinel, 1)
    pub.publish(sentinel, b"sentinel", 1)
    assert member.expect_message().payload == b"sentinel"
    pub.publish(topic, b"", 1, retain=True)


def test_member_qos_is_its_own_subscription_qos(clients, broker):
    topic = uid("shq/")
    a = clients(version=5)
    a.subscribe(f"$share/g/{topic}", 0)
    pub = clients()
    pub.publish(topic, b"x", 2)
    m = a.expect_message()
    assert (m.payload, m.qos) == (b"x", 0)


# --- a member leaving ------------------------------------------------------------------------

def _raw_member(raws, broker, topic: str, qos: int, expiry: int = 0, cid: str | None = None):
    r = raws(broker, 5)
    r.connect(cid or uid(), properties=B.props(("receive_maximum", 1),
                                                ("session_expiry_interval", expiry)))
    r.send(B.subscribe(1, [(f"$share/g/{topic}", qos)], properties=B.EMPTY_PROPS))
    assert r.expect(Suback).reason_codes == [qos]
    return r


@pytest.mark.parametrize("qos", [1, 2])
def test_ended_session_hands_unacked_and_queued_messages_to_another_member(
        raws, clients, broker, qos):
    topic = uid("leave/")
    a = _raw_member(raws, broker, topic, qos)  # window of 1: the rest of its share waits
    b = clients(version=5)
    b.subscribe(f"$share/g/{topic}", qos)
    pub = clients()
    sent = [b"%d" % i for i in range(6)]
    for payload in sent:
        pub.publish(topic, payload, qos)
    first = a.expect(Publish)  # in flight to a, never acknowledged
    got_b = []
    while len(got_b) < 3:  # round robin: b has its half
        got_b.append(b.expect_message().payload)
    a.close()  # a's session (expiry 0) ends: its 3 messages go to b
    got_b += [m.payload for m in b.expect_messages(3)]
    assert sorted(got_b) == sent
    assert first.payload in got_b


def test_received_qos2_message_is_not_handed_on(raws, clients, broker):
    topic = uid("leave2/")
    a = _raw_member(raws, broker, topic, 2)
    b = clients(version=5)
    b.subscribe(f"$share/g/{topic}", 2)
    pub = clients()
    sent = [b"%d" % i for i in range(4)]
    for payload in sent:
        pub.publish(topic, payload, 2)
    first = a.expect(Publish)
    a.send(B.pubrec(first.packet_id))  # a has the message now (PUBCOMP still owed)
    assert a.expect(Pubrel).packet_id == first.packet_id
    got_b = [m.payload for m in b.expect_messages(2)]
    a.close()
    got_b += [m.payload for m in b.expect_messages(1)]  # only a's queued one
    assert sorted(got_b + [first.payload]) == sent
    sentinel = uid("sentinel/")
    b.subscribe(sentinel, 1)
    pub.publish(sentinel, b"sentinel", 1)
    assert b.expect_message().payload == b"sentinel"
    b.assert_no_message()


def test_offline_member_with_a_session_keeps_its_messages(raws, clients, broker):
    topic, cid = uid("keep/"), uid()
    a = _raw_member(raws, broker, topic, 1, expiry=60, cid=cid)
    b = clients(version=5)
    b.subscribe(f"$share/g/{topic}", 1)
    pub = clients()
    for i in range(4):
        pub.publish(topic, b"%d" % i, 1)
    first = a.expect(Publish)
    got_b = [m.payload for m in b.expect_messages(2)]
    a.close()  # the session stays: so do its two messages
    pub.publish(topic, b"while a is away", 1)  # online members come first
    assert b.expect_message().payload == b"while a is away"
    a = raws(broker, 5)
    ack = a.connect(cid, clean=False, properties=B.props(("session_expiry_interval", 60)))
    assert ack.session_present
    again = a.expect(Publish)
    assert (again.payload, again.dup) == (first.payload, True)
    a.send(B.puback(again.packet_id))
    rest = a.expect(Publish)
    assert sorted(got_b + [first.payload, rest.payload]) == [b"0", b"1", b"2", b"3"]

"""The Channel state machine driven without sockets: packet objects in, encoded packets out
(decoded again with mqttd's pure-Python parser), with the node's registry, broker and sessions in the
same process so their state can be looked at directly. For the flows where a socket test
would see less: QoS 2 states, the inflight window, takeover, topic alias maps, the
awaiting-PUBREL sweep and the shared hand-over.

The registry arms timers (session expiry, the sweep), so each test runs in an event loop.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import pytest

from mqttd.core.channel import CONNECTED, Channel
from mqttd.mqtt._codec_py import ParserPy
from mqttd.config import Settings, Zone
from mqttd.core.message import Message
from mqttd.node import Node
from mqttd.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    SubOpts,
    Subscribe,
    Unsubscribe,
    Will,
)
from mqttd.core.session import WAIT_ACK, WAIT_COMP


def in_loop(fn: Any) -> Any:
    """Run the test body inside a fresh event loop (the registry arms loop timers)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        async def body() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run(body())

    return run


class Probe:
    """A channel plus a parser for what it writes."""

    def __init__(self, node: Node, zone: Zone, version: int) -> None:
        self.channel = Channel(node.broker, zone, "test:1")
        self.version = version
        self.parser = ParserPy(version=version)

    def out(self) -> list[Any]:
        out = self.channel.out
        data = b"".join(out)
        out.clear()
        return self.parser.feed(data)

    def send(self, *packets: Any) -> list[Any]:
        for p in packets:
            self.channel.handle_in(p)
        return self.out()

    def connect(self, client_id: str, *, clean: bool = True, expiry: int | None = None,
                **props: Any) -> Connack:
        if expiry is not None:
            props["session_expiry_interval"] = expiry
        out = self.send(Connect("MQTT", self.version, clean, 60, client_id, None, None, None,
                                props if self.version == 5 else {}))
        assert len(out) == 1 and isinstance(out[0], Connack), out
        return out[0]

    @property
    def session(self) -> Any:
        return self.channel.session


class World:
    """One node with one zone."""

    def __init__(self, **zone: Any) -> None:
        self.zone = Zone(**zone)
        self.node = Node(Settings(zones={"default": self.zone}))
        self.registry = self.node.registry

    def client(self, client_id: str, version: int = 5, **kw: Any) -> Probe:
        p = Probe(self.node, self.zone, version)
        assert p.connect(client_id, **kw).reason_code == 0
        return p

    def subscriber(self, client_id: str, topic: str, qos: int, version: int = 5,
                   **kw: Any) -> Probe:
        p = self.client(client_id, version, **kw)
        (ack,) = p.send(Subscribe(1, [(topic, SubOpts(qos))]))
        assert ack == Suback(1, [qos])
        return p

    def lost(self, probe: Probe) -> None:
        """What the connection does when its socket closes."""
        probe.channel.handle_close()



# --- QoS 2 flow states -----------------------------------------------------------------------

@in_loop
def test_inbound_qos2_states():
    w = World()
    sub = w.subscriber("sub", "t", 2)
    pub = w.client("pub")
    assert pub.send(Publish("t", b"x", 2, packet_id=5)) == [Pubrec(5)]
    assert list(pub.session.awaiting_rel) == [5]
    # Resent before PUBREL: acknowledged again, delivered once.
    assert pub.send(Publish("t", b"x", 2, dup=True, packet_id=5)) == [Pubrec(5)]
    delivered = sub.out()
    assert [(p.payload, p.qos) for p in delivered] == [(b"x", 2)]
    assert pub.send(Pubrel(5)) == [Pubcomp(5)]
    assert pub.session.awaiting_rel == {}
    assert pub.send(Pubrel(5)) == [Pubcomp(5, 0x92)]  # now unknown


@in_loop
def test_inbound_qos2_unknown_pubrel_311():
    w = World()
    c = w.client("c", 4)
    assert c.send(Pubrel(9)) == [Pubcomp(9)]


@in_loop
def test_outbound_qos2_states():
    w = World()
    sub = w.subscriber("sub", "t", 2)
    w.node.broker.publish(Message("t", b"x", 2))
    (p,) = sub.out()
    assert p.qos == 2 and p.packet_id
    assert sub.session.inflight_state(p.packet_id) == WAIT_ACK
    assert sub.send(Pubrec(p.packet_id)) == [Pubrel(p.packet_id)]
    assert sub.session.inflight_state(p.packet_id) == WAIT_COMP
    assert sub.send(Pubrec(p.packet_id)) == [Pubrel(p.packet_id)]  # repeated: PUBREL again
    assert sub.send(Pubcomp(p.packet_id)) == []
    assert sub.session.inflight == {}
    assert sub.session.delivered == 1
    assert sub.send(Pubcomp(p.packet_id), Puback(77)) == []  # unknown ids: ignored
    assert not sub.channel.closing


@pytest.mark.parametrize("ack", [Puback, Pubcomp])
@in_loop
def test_wrong_ack_for_qos2_delivery_is_a_protocol_error(ack):
    w = World()
    sub = w.subscriber("sub", "t", 2)
    w.node.broker.publish(Message("t", b"x", 2))
    (p,) = sub.out()
    (d,) = sub.send(ack(p.packet_id))
    assert isinstance(d, Disconnect) and d.reason_code == 0x82
    assert sub.channel.closing


@in_loop
def test_refused_pubrec_ends_the_flow():
    w = World()
    sub = w.subscriber("sub", "t", 2)
    w.node.broker.publish(Message("t", b"x", 2))
    (p,) = sub.out()
    assert sub.send(Pubrec(p.packet_id, 0x80)) == []
    assert sub.session.inflight == {}


# --- the inflight window ---------------------------------------------------------------------

@in_loop
def test_inflight_window_and_queue_order():
    w = World()
    sub = w.subscriber("sub", "t", 1, receive_maximum=2)
    for i in range(5):
        w.node.broker.publish(Message("t", b"%d" % i, 1))
    first = sub.out()
    assert [p.payload for p in first] == [b"0", b"1"]
    assert len(sub.session.inflight) == 2 and len(sub.session.mqueue) == 3
    nxt = sub.send(Puback(first[0].packet_id))
    assert [p.payload for p in nxt] == [b"2"]
    nxt = sub.send(Puback(first[1].packet_id))
    assert [p.payload for p in nxt] == [b"3"]
    # QoS 0 is not held back by a full window.
    w.node.broker.publish(Message("t", b"q0", 0))
    assert [p.payload for p in sub.out()] == [b"q0"]


@in_loop
def test_max_inflight_caps_the_client_receive_maximum():
    w = World(max_inflight=3)
    sub = w.subscriber("sub", "t", 1, receive_maximum=100)
    assert sub.session.max_inflight == 3


@in_loop
def test_offline_queue_drops_oldest():
    w = World(max_mqueue_len=2)
    sub = w.subscriber("sub", "t", 1, clean=False, expiry=60)
    w.lost(sub)
    for i in range(4):
        w.node.broker.publish(Message("t", b"%d" % i, 1))
    s = w.registry.sessions["sub"]
    assert [d[0].payload for d in s.mqueue] == [b"2", b"3"]
    assert s.dropped == 2


@in_loop
def test_redelivery_on_resume_has_dup_and_same_ids():
    w = World()
    sub = w.subscriber("sub", "t", 2, clean=False, expiry=60)
    w.node.broker.publish(Message("t", b"a", 1))
    w.node.broker.publish(Message("t", b"b", 2))
    a, b = sub.out()
    sub.send(Pubrec(b.packet_id))
    w.lost(sub)
    again = Probe(w.node, w.zone, 5)
    again.channel.handle_in(Connect("MQTT", 5, False, 60, "sub", None, None, None,
                                    {"session_expiry_interval": 60}))
    ack, pa, rel = again.out()
    assert ack.session_present
    assert (pa.packet_id, pa.dup, pa.payload) == (a.packet_id, True, b"a")
    assert rel == Pubrel(b.packet_id)


# --- awaiting PUBREL -------------------------------------------------------------------------

@in_loop
def test_awaiting_rel_bounded_by_receive_maximum():
    w = World(max_awaiting_rel=2)
    c = w.client("c")
    acks = c.send(Publish("t", b"", 2, packet_id=1), Publish("t", b"", 2, packet_id=2))
    assert [(type(a), a.packet_id) for a in acks] == [(Pubrec, 1), (Pubrec, 2)]
    (d,) = c.send(Publish("t", b"", 2, packet_id=3))
    assert d.reason_code == 0x93


@in_loop
def test_awaiting_rel_sweep_forgets_old_ids():
    w = World(await_rel_timeout=10)
    c = w.client("c")
    c.send(Publish("t", b"", 2, packet_id=1), Publish("t", b"", 2, packet_id=2))
    s = c.session
    s.awaiting_rel[1] -= 11  # pretend it has waited 11 s
    w.registry._sweep(5.0)
    assert list(s.awaiting_rel) == [2]
    assert w.registry.awaiting_rel_expired == 1
    assert c.send(Pubrel(1)) == [Pubcomp(1, 0x92)]
    assert c.send(Pubrel(2)) == [Pubcomp(2)]


@in_loop
def test_awaiting_rel_timeout_zero_never_expires():
    w = World(await_rel_timeout=0)
    c = w.client("c")
    c.send(Publish("t", b"", 2, packet_id=1))
    c.session.awaiting_rel[1] -= 10 ** 6
    w.registry._sweep(5.0)
    assert list(c.session.awaiting_rel) == [1]


# --- takeover -------------------------------------------------------------------------------

@pytest.mark.parametrize("clean", [False, True])
@in_loop
def test_takeover(clean):
    w = World()
    old = w.subscriber("id", "t", 1, clean=False, expiry=60)
    new = Probe(w.node, w.zone, 5)
    ack = new.connect("id", clean=clean, expiry=60)
    assert ack.session_present is (not clean)
    (d,) = old.out()
    assert d.reason_code == 0x8E and old.channel.closing
    assert w.registry.channels["id"] is new.channel
    assert len(w.registry.sessions) == 1
    assert ("t" in new.session.subscriptions) is (not clean)
    # The old connection's socket closing later changes nothing.
    w.lost(old)
    assert w.registry.channels["id"] is new.channel
    assert new.session.channel is new.channel


@in_loop
def test_many_connects_of_one_id_leave_one_session_and_one_channel():
    w = World()
    probes = [w.client("same", clean=False, expiry=60) for _ in range(50)]
    assert len(w.registry.sessions) == 1
    assert w.registry.channels["same"] is probes[-1].channel
    assert [p.channel.closing for p in probes] == [True] * 49 + [False]
    for p in probes[:-1]:
        w.lost(p)
    assert w.registry.sessions["same"].channel is probes[-1].channel


@pytest.mark.parametrize("clean1, clean2, sent", [(True, True, True), (False, True, True),
                                                  (True, False, True), (False, False, False)])
@in_loop
def test_takeover_will(clean1, clean2, sent):
    w = World()
    watcher = w.subscriber("watcher", "will", 0)
    old = Probe(w.node, w.zone, 5)
    old.channel.handle_in(Connect("MQTT", 5, clean1, 60, "id", Will("will", b"LWT"), None,
                                  None, {"session_expiry_interval": 0 if clean1 else 60}))
    old.out()
    w.client("id", clean=clean2, expiry=0 if clean2 else 60)
    got = [p.payload for p in watcher.out()]
    assert got == ([b"LWT"] if sent else [])
    w.lost(old)  # the socket closing afterwards sends nothing either
    assert watcher.out() == []


# --- topic aliases ------------------------------------------------------------------------

@in_loop
def test_inbound_topic_alias_map():
    w = World(max_topic_alias=2)
    sub = w.subscriber("sub", "#", 0)
    c = w.client("c")
    c.send(Publish("a", b"1", properties={"topic_alias": 1}),
           Publish("", b"2", properties={"topic_alias": 1}),
           Publish("b", b"3", properties={"topic_alias": 1}),
           Publish("", b"4", properties={"topic_alias": 1}))
    assert c.channel.alias_in == {1: "b"}
    got = sub.out()
    assert [(p.topic, p.payload) for p in got] == [("a", b"1"), ("a", b"2"), ("b", b"3"),
                                                   ("b", b"4")]
    assert all("topic_alias" not in p.properties for p in got)
    (d,) = c.send(Publish("x", b"", properties={"topic_alias": 3}))
    assert d.reason_code == 0x94 and d.properties["reason_string"]


@in_loop
def test_unknown_inbound_alias():
    w = World()
    c = w.client("c")
    (d,) = c.send(Publish("", b"", properties={"topic_alias": 4}))
    assert d.reason_code == 0x82


@in_loop
def test_outbound_topic_alias_map():
    w = World()
    sub = w.subscriber("sub", "#", 0, topic_alias_maximum=2)
    for t in ("a", "b", "c", "a", "b", "c"):
        w.node.broker.publish(Message(t, t.encode(), 0))
    got = [(p.topic, p.properties.get("topic_alias")) for p in sub.out()]
    assert got == [("a", 1), ("b", 2), ("c", None), ("", 1), ("", 2), ("c", None)]
    assert sub.channel.alias_out == {"a": 1, "b": 2}


@in_loop
def test_alias_maps_are_each_channels_own():
    # Both directions start as one shared empty pair: the first alias either way gives the
    # channel its own maps; no other channel sees them.
    w = World(max_topic_alias=2)
    sub = w.subscriber("sub", "#", 0, topic_alias_maximum=2)
    other = w.subscriber("other", "#", 0, topic_alias_maximum=2)
    pub = w.client("pub")
    quiet = w.client("quiet")
    pub.send(Publish("a", b"1", properties={"topic_alias": 1}))
    assert (pub.channel.alias_in, pub.channel.alias_out) == ({1: "a"}, {})
    assert sub.channel.alias_out == {"a": 1} and other.channel.alias_out == {"a": 1}
    assert sub.channel.aliases is not other.channel.aliases
    assert (quiet.channel.alias_in, quiet.channel.alias_out) == ({}, {})
    assert (sub.channel.alias_in, w.client("late").channel.alias_out) == ({}, {})
    [p] = sub.out()
    assert (p.topic, p.properties["topic_alias"]) == ("a", 1)


@in_loop
def test_too_large_packet_is_dropped_counted_and_spends_no_alias():
    w = World()
    sub = w.subscriber("sub", "t", 1, topic_alias_maximum=5, maximum_packet_size=60)
    w.node.broker.publish(Message("t", b"x" * 100, 1))
    assert sub.out() == []
    assert sub.channel.dropped == 1
    assert sub.session.inflight == {}  # as if delivered [MQTT-3.1.2-25]
    assert sub.channel.alias_out == {}
    w.node.broker.publish(Message("t", b"small", 1))
    (p,) = sub.out()
    assert (p.topic, p.properties["topic_alias"]) == ("t", 1)


@in_loop
def test_reason_string_omitted_when_too_large():
    w = World(max_topic_alias=1)
    c = w.client("c", maximum_packet_size=10)  # the CONNACK is larger, and still sent
    (d,) = c.send(Publish("x", b"", properties={"topic_alias": 2}))
    assert d == Disconnect(0x94)
    c2 = w.client("c2")
    (d,) = c2.send(Publish("x", b"", properties={"topic_alias": 2}))
    assert d.reason_code == 0x94 and "alias" in d.properties["reason_string"]


# --- shared subscriptions ----------------------------------------------------------------------

@in_loop
def test_shared_handover_skips_messages_the_client_already_received():
    w = World(shared_subscription_strategy="round_robin")
    a = w.subscriber("a", "$share/g/t", 2, receive_maximum=1)
    b = w.subscriber("b", "$share/g/t", 2)
    for i in range(4):
        w.node.broker.publish(Message("t", b"%d" % i, 2))
    got_a, got_b = a.out(), b.out()
    assert len(got_a) == 1 and len(got_b) == 2 and len(a.session.mqueue) == 1
    a.send(Pubrec(got_a[0].packet_id))  # a has it now: WAIT_COMP
    assert a.session.pending() == list(a.session.mqueue)
    w.lost(a)  # expiry 0: the session ends, its queued message goes to b
    moved = b.out()
    assert len(moved) == 1
    payloads = sorted(p.payload for p in got_a + got_b + moved)
    assert payloads == [b"0", b"1", b"2", b"3"]


# --- CONNECT decisions -------------------------------------------------------------------------

@pytest.mark.parametrize("keepalive, rc", [(11, 2), (10, 0), (0, 0)])
@in_loop
def test_max_keepalive_311(keepalive, rc):
    w = World(max_keepalive=10)
    p = Probe(w.node, w.zone, 4)
    (ack,) = p.send(Connect("MQTT", 4, True, keepalive, "c"))
    assert ack.reason_code == rc
    assert p.channel.closing is bool(rc)


@pytest.mark.parametrize("keepalive, granted", [(11, 10), (0, 10), (5, None)])
@in_loop
def test_max_keepalive_v5(keepalive, granted):
    w = World(max_keepalive=10)
    p = Probe(w.node, w.zone, 5)
    (ack,) = p.send(Connect("MQTT", 5, True, keepalive, "c"))
    assert ack.properties.get("server_keep_alive") == granted
    assert p.channel.keepalive == (granted or keepalive)


@in_loop
def test_deny_subscribe_covers_filters_under_a_listed_wildcard():
    w = World(deny_subscribe=["deny/#", "exact"])
    c = w.client("c")
    topics = ["deny/a", "deny/+", "deny", "exact", "exact/x", "$share/g/deny/a", "ok"]
    (ack,) = c.send(Subscribe(1, [(t, SubOpts(0)) for t in topics]))
    assert ack.reason_codes == [0x80, 0x80, 0x80, 0x80, 0, 0x80, 0]


@in_loop
def test_unsubscribe_codes():
    w = World()
    c = w.subscriber("c", "t", 0)
    (ack,) = c.send(Unsubscribe(2, ["t", "t"]))
    assert ack.reason_codes == [0, 0x11]


@in_loop
def test_pingreq_and_state():
    w = World()
    c = w.client("c")
    assert c.channel.state == CONNECTED
    assert c.send(Pingreq()) == [Pingresp()]


# --- messages -------------------------------------------------------------------------------

def test_message_expiry_interval_zero_never_expires():
    m = Message("t", b"", 0, False, {"message_expiry_interval": 0})
    assert m.expiry == 0.0 and not m.expired(time.monotonic() + 10 ** 6)


def test_restamp_restarts_the_expiry_clock():
    m = Message("t", b"", 0, False, {"message_expiry_interval": 5})
    m.expiry -= 100  # built long ago: already expired
    assert m.expired(time.monotonic())
    m.restamp()
    assert m.remaining_expiry(time.monotonic()) == 5


@in_loop
def test_delayed_will_keeps_its_full_message_expiry():
    w = World()
    watcher = w.subscriber("watcher", "will", 0)
    p = Probe(w.node, w.zone, 5)
    p.channel.handle_in(Connect("MQTT", 5, True, 60, "c",
                                Will("will", b"w", 0, False,
                                     {"will_delay_interval": 0,
                                      "message_expiry_interval": 3}),
                                None, None, {}))
    p.out()
    p.channel.will.expiry -= 100  # the connection lived long
    w.lost(p)
    (m,) = watcher.out()
    assert m.properties["message_expiry_interval"] == 3
    assert "will_delay_interval" not in m.properties


# --- any sequence of packets -------------------------------------------------------------------

def _packets(version: int) -> Any:
    """Packets the codec could hand the channel at ``version`` (so the parser's own checks
    hold: no empty topic without an alias, no alias or properties before 5.0, ...)."""
    from hypothesis import strategies as st

    v5 = version == 5
    pid = st.integers(1, 3)

    def props(**choices: Any) -> Any:
        if not v5:
            return st.just({})
        return st.fixed_dictionaries({}, optional=choices)

    publish = st.builds(
        lambda topic, payload, qos, retain, pid, props: Publish(
            topic if topic or "topic_alias" in props else "t", payload, qos, retain,
            False, pid if qos else 0, props),
        st.sampled_from(["t", "t/x", "$SYS/x", "", "a/b"]), st.binary(max_size=40),
        st.integers(0, 2), st.booleans(), pid,
        props(topic_alias=st.integers(1, 3), message_expiry_interval=st.integers(0, 2),
              payload_format_indicator=st.just(1), user_property=st.just([("k", "v")])))
    opts = st.builds(lambda q, nl, rap, rh: SubOpts(q, nl and v5, rap and v5, rh if v5 else 0),
                     st.integers(0, 2), st.booleans(), st.booleans(), st.integers(0, 2))
    filters = st.sampled_from(["t", "#", "t/+", "$share/g/t", "$queue/t", "a/#/b", "+/x"])
    subscribe = st.builds(
        lambda pid, entries, props: Subscribe(pid, [
            (f, SubOpts(o.qos, False, o.retain_as_published, o.retain_handling)
             if f.startswith("$share/") else o) for f, o in entries], props),
        pid, st.lists(st.tuples(filters, opts), min_size=1, max_size=3),
        props(subscription_identifier=st.just([5])))
    acks = st.builds(lambda cls, pid, rc: cls(pid, rc if v5 else 0),
                     st.sampled_from([Puback, Pubrec, Pubrel, Pubcomp]), pid,
                     st.sampled_from([0, 0x80]))
    fixed = [Pingreq(), Unsubscribe(1, ["t", "#"]), Disconnect(0), Connack(False, 0),
             Suback(1, [0]), Pingresp()]
    if v5:
        fixed += [Disconnect(4), Disconnect(0, {"session_expiry_interval": 5}),
                  Auth(0x18, {})]
    connect = st.builds(
        lambda cid, clean, will, props: Connect("MQTT", version, clean, 30, cid,
                                                Will("w", b"will", 1) if will else None,
                                                None, None, props),
        st.sampled_from(["a", "b", ""]), st.booleans(), st.booleans(),
        props(session_expiry_interval=st.sampled_from([0, 60]),
              receive_maximum=st.integers(1, 2), topic_alias_maximum=st.integers(0, 2),
              maximum_packet_size=st.sampled_from([20, 60, 1000])))
    return st.one_of(publish, subscribe, acks, st.sampled_from(fixed), connect)


def _script() -> Any:
    from hypothesis import strategies as st

    step = st.one_of(
        st.tuples(st.integers(0, 2), st.just("lost"), st.none()),
        st.integers(0, 2).flatmap(
            lambda i: st.tuples(st.just(i), st.just("packet"), _packets(4 if i == 2 else 5))),
    )
    return st.lists(step, max_size=25)


def test_any_packet_sequence_keeps_the_registry_consistent():
    """Three connections (two 5.0, one 3.1.1) and any interleaving of packets the parser could
    deliver, sockets closing in between: nothing raises, every output parses, and the
    registry keeps one session and at most one live channel per client id."""
    from hypothesis import given

    @given(_script())
    def check(script: list[Any]) -> None:
        async def body() -> None:
            w = World(max_topic_alias=2, max_awaiting_rel=2, max_mqueue_len=3,
                      shared_subscription_strategy="round_robin")
            versions = [5, 5, 4]
            probes = [Probe(w.node, w.zone, v) for v in versions]

            def first_connect(i: int) -> None:
                probes[i].channel.handle_in(Connect("MQTT", versions[i], True, 30, "abc"[i]))

            for i in range(3):
                first_connect(i)
            for i, action, packet in script:
                p = probes[i]
                if action == "lost" or p.channel.closing:
                    if p.channel.state == CONNECTED:
                        w.lost(p)
                    probes[i] = Probe(w.node, w.zone, versions[i])
                    first_connect(i)
                    if action == "lost":
                        continue
                    p = probes[i]
                p.channel.handle_in(packet)
                for q in probes:
                    q.out()  # every byte written must parse
                reg = w.registry
                for cid, ch in reg.channels.items():
                    assert reg.sessions[cid] is ch.session
                    assert ch.session.channel is ch
                for cid, s in reg.sessions.items():
                    assert s.client_id == cid
                    assert len(s.inflight) <= 65535 and len(s.awaiting_rel) <= 2
                    if s.channel is not None:
                        assert reg.channels[cid] is s.channel
                live = [q.channel.client_id for q in probes
                        if q.channel.state == CONNECTED and not q.channel.closing]
                assert len(live) == len(set(live))

        asyncio.run(body())

    check()


# --- hook points the registry runs ---------------------------------------------------------

@in_loop
def test_session_hooks_get_their_documented_arguments():
    """docs/OPERATIONS.md: session.terminated gets (session, reason), the others (session)."""
    w = World()
    calls: list[tuple[Any, ...]] = []
    for point in ("session.created", "session.resumed", "session.takeovered",
                  "session.discarded"):
        w.node.hooks.add(point, lambda s, point=point: calls.append((point, s.client_id)))
    w.node.hooks.add("session.terminated",
                     lambda s, reason: calls.append(("session.terminated", s.client_id, reason)))
    w.client("a", clean=False, expiry=60)
    w.client("a", clean=False, expiry=60)  # takes over, resumes
    last = w.client("a", clean=True)  # a clean start discards it (EMQX: no takeover)
    w.lost(last)  # expiry 0: the session ends with its connection
    assert calls == [
        ("session.created", "a"), ("session.takeovered", "a"), ("session.resumed", "a"),
        ("session.discarded", "a"), ("session.created", "a"),
        ("session.terminated", "a", "terminated"),
    ]
    assert w.node.hooks.failures == 0


# --- per-client memory: rarely set fields (core/rare.py) --------------------------------------

def test_rare_fields_read_as_their_default_until_set():
    from mqttd.core.rare import Rare

    class Holder:
        __slots__ = ("_rare",)
        count = Rare(0)
        name = Rare[str | None](None)

        def __init__(self) -> None:
            self._rare: dict[str, object] | None = None

    h = Holder()
    assert (h.count, h.name) == (0, None)
    h.count = 0  # the default: nothing is made
    h.name = None
    assert h._rare is None
    h.count = 3
    assert h._rare == {"count": 3} and (h.count, h.name) == (3, None)
    h.name = "x"
    h.count = 0
    assert (h.count, h.name) == (0, "x")
    assert Holder().count == 0 and Holder()._rare is None  # per object, not per class


@in_loop
@pytest.mark.parametrize("version", [3, 4, 5])
def test_a_plain_client_sets_no_rare_field(version):
    w = World()
    p = Probe(w.node, w.zone, version)
    assert p.channel.proto_name == ""
    name = "MQIsdp" if version == 3 else "MQTT"
    out = p.send(Connect(name, version, True, 60, "plain", None, None, None, {}))
    assert out[0].reason_code == 0
    ch = p.channel
    if version == 3:  # MQTT 3.1's protocol name is the rare one
        assert ch._rare is not None and ch._rare["_proto_name"] == "MQIsdp"
    else:
        assert ch._rare is None
    assert (ch.proto_name, ch.will_delay, ch.superuser, ch.auth_method, ch.close_reason) == (
        name, 0, False, None, None)
    p.send(Disconnect())
    assert ch.normal_disconnect and ch.close_reason is not None
    assert ch._rare is not None

"""core.dispatch.Dispatcher without a loop: one delivery per session however many of its
filters match, No Local, Retain As Published, shared groups (exactly one member, and the
hand-over of a leaving member's work), offline queues and the counters and hooks of every
drop. Subscribers are recording stand-ins, or real channels where the wire form matters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from core_util import HookLog, Recorder, World, forbid_event_loop

from mqttd.core.dispatch import Dispatcher
from mqttd.core.message import Message
from mqttd.core.router import SharedGroup
from mqttd.core.session import Session
from mqttd.hooks import Hooks
from mqttd.metrics import (
    DELIVERY_DROPPED_NO_LOCAL,
    DELIVERY_DROPPED_QOS0_MSG,
    DELIVERY_DROPPED_QUEUE_FULL,
    MESSAGES_DELIVERED,
    MESSAGES_DROPPED_NO_SUBSCRIBERS,
    Metrics,
)
from mqttd.mqtt.packets import Puback, Publish, Suback, SubOpts, Subscribe


@pytest.fixture(autouse=True)
def _no_event_loop() -> Iterator[None]:
    with forbid_event_loop():
        yield


def dispatcher(strategy: str = "round_robin") -> Dispatcher:
    return Dispatcher(Metrics(), Hooks(), shared_strategy=strategy)


def online(client_id: str) -> tuple[Session, Recorder]:
    s = Session(client_id)
    rec = Recorder()
    s.channel = rec
    return s, rec


def msg(topic: str = "a/b", qos: int = 2, *, retain: bool = False, sender: str | None = "pub",
        payload: bytes = b"m") -> Message:
    return Message(topic, payload, qos, retain, None, sender)


# --- subscribe / unsubscribe ---------------------------------------------------------------

def test_subscribe_reports_new_then_replaced():
    dp = dispatcher()
    s = Session("s")
    assert dp.subscribe(s, "a/+", SubOpts(1), 0)
    assert not dp.subscribe(s, "a/+", SubOpts(2), 7)
    assert s.subscriptions == {"a/+": (SubOpts(2), 7)}
    assert dp.router.count_subscriptions() == (1, 0)
    assert dp.router.routes["a/+"].plain()[s] == (SubOpts(2), 7)


def test_route_moves_between_one_subscriber_and_a_dict_without_losing_anyone():
    # A route keeps a single subscriber without a dict (Route.one); a second one moves
    # both into a dict, and back at one the route returns to the single form.
    dp = dispatcher()
    (a, ra), (b, rb), (c, rc) = online("a"), online("b"), online("c")
    route_of = lambda: dp.router.routes["t"]  # noqa: E731
    dp.subscribe(a, "t", SubOpts(1), 0)
    assert route_of().one is a and not route_of().subs
    dp.subscribe(a, "t", SubOpts(2), 3)  # replaced in place
    assert route_of().plain() == {a: (SubOpts(2), 3)}
    dp.subscribe(b, "t", SubOpts(0), 0)
    dp.subscribe(c, "t", SubOpts(1), 0)
    assert route_of().one is None and set(route_of().subs) == {a, b, c}
    assert dp.publish(msg("t", 2)) == 3
    dp.unsubscribe(a, "t")
    dp.unsubscribe(c, "t")
    assert route_of().one is b and not route_of().subs
    assert dp.publish(msg("t", 1, payload=b"2")) == 1
    dp.subscribe(a, "t", SubOpts(1), 0)
    dp.unsubscribe(b, "t")
    assert route_of().one is a and dp.publish(msg("t", 1, payload=b"3")) == 1
    assert [(d[0].payload, d[1], d[3]) for d in ra.got] == [(b"m", 2, (3,)), (b"3", 1, ())]
    assert [(d[0].payload, d[1]) for d in rb.got] == [(b"m", 0), (b"2", 0)]
    assert rc.payloads() == [b"m"]
    assert dp.router.count_subscriptions() == (1, 0)
    dp.unsubscribe(a, "t")
    assert "t" not in dp.router.routes and not dp.router.match("t")
    assert dp.router.count_subscriptions() == (0, 0)


def test_shared_subscription_is_routed_on_the_real_filter():
    dp = dispatcher()
    s = Session("s")
    dp.subscribe(s, "$share/g/a/+", SubOpts(1), 0)
    route = dp.router.routes["a/+"]
    assert not route.plain() and list(route.groups["g"].members) == [s]
    assert dp.router.count_subscriptions() == (1, 1)


def test_unsubscribe_and_unsubscribe_all():
    dp = dispatcher()
    s = Session("s")
    for f in ("a", "b/#", "$share/g/c"):
        dp.subscribe(s, f, SubOpts(1), 0)
    assert dp.unsubscribe(s, "a") and not dp.unsubscribe(s, "a")
    dp.unsubscribe_all(s)
    assert s.subscriptions == {} and dp.router.routes == {}
    assert dp.router.count_subscriptions() == (0, 0)


# --- no subscribers ----------------------------------------------------------------------------

def test_no_subscribers_counts_and_runs_message_dropped():
    dp = dispatcher()
    log = HookLog(dp.hooks, "message.dropped")
    m = msg()
    assert dp.publish(m) == 0
    assert dp.metrics.get(MESSAGES_DROPPED_NO_SUBSCRIBERS) == 1
    assert dp.dropped_no_subscribers == 1
    assert log.calls == [("message.dropped", (m, "no_subscribers"))]


def test_sys_message_without_subscribers_is_not_a_dropped_message():
    dp = dispatcher()
    log = HookLog(dp.hooks, "message.dropped")
    assert dp.publish(msg("$SYS/brokers/x", 0, sender=None)) == 0
    assert dp.metrics.get(MESSAGES_DROPPED_NO_SUBSCRIBERS) == 0 and log.calls == []
    assert dp.dropped_no_subscribers == 1


def test_retained_message_is_stored_without_subscribers():
    dp = dispatcher()
    m = msg(retain=True)
    dp.publish(m)
    assert dp.retainer.get("a/b") is m


# --- plain subscribers ---------------------------------------------------------------------

def test_delivery_qos_is_the_lower_of_message_and_subscription():
    dp = dispatcher()
    s0, r0 = online("s0")
    s2, r2 = online("s2")
    dp.subscribe(s0, "a/b", SubOpts(0), 0)
    dp.subscribe(s2, "a/b", SubOpts(2), 0)
    assert dp.publish(msg(qos=1)) == 2
    assert [x[1] for x in r0.got] == [0] and [x[1] for x in r2.got] == [1]
    assert dp.metrics.get(MESSAGES_DELIVERED) == 2


def test_overlapping_subscriptions_merge_into_one_delivery():
    dp = dispatcher()
    s, rec = online("s")
    dp.subscribe(s, "a/b", SubOpts(0), 1)
    dp.subscribe(s, "a/+", SubOpts(2), 2)
    dp.subscribe(s, "#", SubOpts(1), 0)  # no identifier: adds none
    m = msg(qos=2)
    assert dp.publish(m) == 1
    (delivery,) = rec.got
    assert delivery[0] is m and delivery[1] == 2 and delivery[4] is None
    assert sorted(delivery[3]) == [1, 2]
    assert dp.metrics.get(MESSAGES_DELIVERED) == 1


def test_merged_qos_is_capped_by_the_message():
    dp = dispatcher()
    s, rec = online("s")
    dp.subscribe(s, "a/b", SubOpts(2), 0)
    dp.subscribe(s, "a/#", SubOpts(1), 0)
    dp.publish(msg(qos=1))
    assert [x[1] for x in rec.got] == [1]


def test_merge_is_per_session():
    dp = dispatcher()
    s1, r1 = online("s1")
    s2, r2 = online("s2")
    dp.subscribe(s1, "a/b", SubOpts(1), 1)
    dp.subscribe(s1, "a/+", SubOpts(1), 2)
    dp.subscribe(s2, "a/+", SubOpts(0), 3)
    assert dp.publish(msg()) == 2
    assert [sorted(x[3]) for x in r1.got] == [[1, 2]]
    assert [(x[1], x[3]) for x in r2.got] == [(0, (3,))]


@pytest.mark.parametrize("rap, expected", [(False, False), (True, True)])
def test_retain_as_published(rap, expected):
    dp = dispatcher()
    s, rec = online("s")
    dp.subscribe(s, "a/b", SubOpts(1, retain_as_published=rap), 0)
    dp.publish(msg(retain=True))
    assert [x[2] for x in rec.got] == [expected]


def test_merged_retain_flag_is_kept_if_any_subscription_keeps_it():
    dp = dispatcher()
    s, rec = online("s")
    dp.subscribe(s, "a/b", SubOpts(1), 0)
    dp.subscribe(s, "a/+", SubOpts(1, retain_as_published=True), 0)
    dp.publish(msg(retain=True))
    assert [x[2] for x in rec.got] == [True]
    rec.got.clear()
    dp.publish(msg(retain=False))
    assert [x[2] for x in rec.got] == [False]


# --- No Local ---------------------------------------------------------------------------------

@pytest.mark.parametrize("filters", [["a/b"], ["a/b", "a/+"]], ids=["one_route", "merged"])
def test_no_local_skips_the_senders_own_message_and_counts_it(filters):
    dp = dispatcher()
    log = HookLog(dp.hooks, "delivery.dropped")
    me, mine = online("me")
    other, theirs = online("other")
    for f in filters:
        dp.subscribe(me, f, SubOpts(1, no_local=True), 0)
        dp.subscribe(other, f, SubOpts(1, no_local=True), 0)
    m = msg(sender="me")
    assert dp.publish(m) == 1
    assert mine.got == [] and len(theirs.got) == 1
    # Counted once per matching No Local filter, although deliveries are merged per session.
    assert dp.metrics.get(DELIVERY_DROPPED_NO_LOCAL) == len(filters)
    assert log.calls == [("delivery.dropped", (me, m, "no_local"))] * len(filters)
    assert dp.metrics.get(MESSAGES_DELIVERED) == 1


def test_no_local_on_one_of_two_overlapping_filters_delivers_through_the_other():
    dp = dispatcher()
    me, mine = online("me")
    dp.subscribe(me, "a/b", SubOpts(2, no_local=True), 1)
    dp.subscribe(me, "a/+", SubOpts(1), 2)
    assert dp.publish(msg(sender="me")) == 1
    assert [(x[1], x[3]) for x in mine.got] == [(1, (2,))]  # only a/+'s QoS and identifier
    assert dp.metrics.get(DELIVERY_DROPPED_NO_LOCAL) == 1


def test_no_local_off_delivers_back_to_the_sender():
    dp = dispatcher()
    me, mine = online("me")
    dp.subscribe(me, "a/b", SubOpts(1), 0)
    assert dp.publish(msg(sender="me")) == 1 and len(mine.got) == 1
    assert dp.metrics.get(DELIVERY_DROPPED_NO_LOCAL) == 0


# --- publish_except (a cluster node's relayed message) -----------------------------------------

@pytest.mark.parametrize("filters", [["a/b"], ["a/b", "a/+"]], ids=["one_route", "merged"])
def test_publish_except_is_publish_without_the_skipped_sessions_groups_or_retainer(filters):
    dp = dispatcher()
    (kept, got), (skipped, missed), (me, mine) = online("kept"), online("skipped"), online("me")
    member, member_rec = online("member")
    for i, f in enumerate(filters):
        dp.subscribe(kept, f, SubOpts(2 - i), i + 1)
        dp.subscribe(skipped, f, SubOpts(1), 0)
        dp.subscribe(me, f, SubOpts(1, no_local=True), 0)
    dp.subscribe(member, "$share/g/a/b", SubOpts(1), 0)
    m = msg(qos=1, retain=True, sender="me")
    assert dp.publish_except(m, {skipped}) == 1
    (delivery,) = got.got
    # One delivery however many filters match: the message's QoS (it is the cap), every
    # subscription identifier; groups are left to their own copy, nothing is retained.
    assert delivery[0] is m and delivery[1] == 1 and sorted(delivery[3]) == list(
        range(1, len(filters) + 1))
    assert missed.got == [] and mine.got == [] and member_rec.got == []
    assert dp.retainer.match("a/b") == []
    assert dp.metrics.get(MESSAGES_DELIVERED) == 1
    assert dp.metrics.get(DELIVERY_DROPPED_NO_LOCAL) == len(filters)


# --- shared groups ----------------------------------------------------------------------------

def test_shared_group_delivers_each_message_to_exactly_one_member():
    dp = dispatcher("round_robin")
    members = [online(f"m{i}") for i in range(3)]
    for s, _ in members:
        dp.subscribe(s, "$share/g/a/+", SubOpts(1), 0)
    plain, plain_rec = online("plain")
    dp.subscribe(plain, "a/b", SubOpts(1), 0)
    for i in range(6):
        assert dp.publish(msg(payload=bytes([i]))) == 2  # the plain subscriber + one member
    assert len(plain_rec.got) == 6
    assert [len(r.got) for _, r in members] == [2, 2, 2]
    got = sorted(p for _, r in members for p in r.payloads())
    assert got == [bytes([i]) for i in range(6)]
    assert dp.metrics.get(MESSAGES_DELIVERED) == 12


def test_each_group_gets_its_own_copy():
    dp = dispatcher()
    g1, r1 = online("g1")
    g2, r2 = online("g2")
    dp.subscribe(g1, "$share/one/a/b", SubOpts(1), 0)
    dp.subscribe(g2, "$share/two/a/b", SubOpts(1), 0)
    assert dp.publish(msg()) == 2
    assert len(r1.got) == len(r2.got) == 1


def test_shared_delivery_carries_its_group_and_options():
    dp = dispatcher()
    s, rec = online("s")
    dp.subscribe(s, "$share/g/a/b", SubOpts(1, retain_as_published=True), 4)
    dp.publish(msg(qos=2, retain=True))
    (delivery,) = rec.got
    assert isinstance(delivery[4], SharedGroup) and delivery[4].name == "g"
    assert (delivery[1], delivery[2], delivery[3]) == (1, True, (4,))


def test_shared_group_prefers_an_online_member_over_a_queue():
    dp = dispatcher()
    offline = Session("offline")
    on, rec = online("on")
    dp.subscribe(offline, "$share/g/a/b", SubOpts(1), 0)
    dp.subscribe(on, "$share/g/a/b", SubOpts(1), 0)
    for _ in range(4):
        dp.publish(msg())
    assert len(rec.got) == 4 and not offline.mqueue


# --- offline sessions -----------------------------------------------------------------------

def test_offline_session_queues_the_delivery():
    dp = dispatcher()
    s = Session("s")
    dp.subscribe(s, "a/b", SubOpts(1), 9)
    m = msg()
    assert dp.publish(m) == 1
    assert list(s.mqueue) == [(m, 1, False, (9,), None)]
    assert dp.metrics.get(MESSAGES_DELIVERED) == 1


@pytest.mark.parametrize("filters", [["a/b"], ["a/b", "a/+"]], ids=["one_route", "merged"])
def test_full_offline_queue_drops_the_oldest_with_its_hook(filters):
    dp = dispatcher()
    log = HookLog(dp.hooks, "delivery.dropped")
    s = Session("s", max_mqueue_len=1)
    for f in filters:
        dp.subscribe(s, f, SubOpts(1), 0)
    first, second = msg(payload=b"1"), msg(payload=b"2")
    dp.publish(first)
    dp.publish(second)
    assert [x[0] for x in s.mqueue] == [second]
    assert dp.metrics.get(DELIVERY_DROPPED_QUEUE_FULL) == 1
    assert log.calls == [("delivery.dropped", (s, first, "queue_full"))]


def test_offline_qos0_refused_counts_qos0_msg():
    dp = dispatcher()
    log = HookLog(dp.hooks, "delivery.dropped")
    s = Session("s", mqueue_store_qos0=False)
    dp.subscribe(s, "a/b", SubOpts(1), 0)
    m = msg(qos=0)
    dp.publish(m)
    assert not s.mqueue
    assert dp.metrics.get(DELIVERY_DROPPED_QOS0_MSG) == 1
    assert dp.metrics.get(DELIVERY_DROPPED_QUEUE_FULL) == 0
    assert log.calls == [("delivery.dropped", (s, m, "qos0_msg"))]


# --- redispatch of a leaving member's shared work ---------------------------------------------

def test_redispatch_hands_qos1_and_qos2_shared_messages_to_another_member():
    dp = dispatcher()
    leaving = Session("leaving")
    stay, rec = online("stay")
    dp.subscribe(leaving, "$share/g/a/b", SubOpts(2), 0)
    dp.subscribe(stay, "$share/g/a/b", SubOpts(2), 0)
    group = dp.router.routes["a/b"].groups["g"]
    q1, q2, q0, plain = msg(qos=1), msg(qos=2), msg(qos=0), msg(qos=1)
    pending = [(q1, 1, False, (), group), (q2, 2, False, (), group),
               (q0, 0, False, (), group), (plain, 1, False, (), None)]
    assert dp.redispatch_shared(leaving, pending) == 2
    assert [(x[0], x[1], x[4]) for x in rec.got] == [(q1, 1, group), (q2, 2, group)]
    assert dp.metrics.get(MESSAGES_DELIVERED) == 2


def test_redispatch_never_returns_work_to_the_leaving_member():
    dp = dispatcher()
    leaving, rec = online("leaving")
    dp.subscribe(leaving, "$share/g/a/b", SubOpts(1), 0)
    group = dp.router.routes["a/b"].groups["g"]
    assert dp.redispatch_shared(leaving, [(msg(), 1, False, (), group)]) == 0
    assert rec.got == [] and dp.metrics.get(MESSAGES_DELIVERED) == 0


def test_redispatch_to_an_offline_member_queues_it():
    dp = dispatcher()
    leaving, other = Session("leaving"), Session("other")
    dp.subscribe(leaving, "$share/g/a/b", SubOpts(1), 0)
    dp.subscribe(other, "$share/g/a/b", SubOpts(1), 0)
    group = dp.router.routes["a/b"].groups["g"]
    m = msg(qos=1)
    dp.redispatch_shared(leaving, [(m, 1, False, (), group)])
    assert [x[0] for x in other.mqueue] == [m] and not leaving.mqueue


# --- through real channels ---------------------------------------------------------------------

def test_merged_delivery_reaches_a_channel_as_one_publish_with_both_identifiers():
    w = World()
    sub = w.client("sub")
    assert sub.send(Subscribe(1, [("a/b", SubOpts(1))], {"subscription_identifier": [11]}),
                    Subscribe(2, [("a/+", SubOpts(2))], {"subscription_identifier": [22]})) \
        == [Suback(1, [1]), Suback(2, [2])]
    pub = w.client("pub")
    assert pub.send(Publish("a/b", b"x", 1, packet_id=3)) == [Puback(3)]
    (p,) = sub.out()
    assert (p.topic, p.payload, p.qos) == ("a/b", b"x", 1)
    assert sorted(p.properties["subscription_identifier"]) == [11, 22]
    assert w.metrics.get(MESSAGES_DELIVERED) == 1


def test_qos0_bytes_are_encoded_once_for_every_subscriber():
    w = World()
    subs = [w.subscriber(f"s{i}", "t", 0) for i in range(3)]
    w.broker.publish(msg("t", 0, payload=b"same"))
    outs = [s.channel.out[-1] for s in subs]
    assert outs[0] is outs[1] is outs[2]
    assert [p.payload for s in subs for p in s.out()] == [b"same"] * 3


def test_no_local_through_a_channel():
    w = World()
    me = w.client("me")
    me.send(Subscribe(1, [("t", SubOpts(1, no_local=True))]))
    w.broker.publish(msg("t", 1, sender="me"))
    assert me.out() == []
    assert w.metrics.get(DELIVERY_DROPPED_NO_LOCAL) == 1



class _Refuses(Recorder):
    """A subscriber whose client authorization refuses every message (what a channel's
    deliver says then: False)."""

    def deliver(self, delivery: Any, encoded: Any) -> bool:  # type: ignore[override]
        super().deliver(delivery, encoded)
        return False


def test_a_shared_message_a_member_may_not_receive_goes_to_another_member():
    dp = dispatcher("round_robin")
    a = Session("a")
    a.channel = _Refuses()
    b, taking = online("b")
    dp.subscribe(a, "$share/g/t", SubOpts(1), 0)
    dp.subscribe(b, "$share/g/t", SubOpts(1), 0)
    for i in range(6):
        assert dp.publish(msg("t", 1, payload=b"%d" % i)) == 1
    assert taking.payloads() == [b"%d" % i for i in range(6)]  # every one, none lost
    alone = Session("alone")
    alone.channel = _Refuses()
    dp.subscribe(alone, "$share/h/u", SubOpts(1), 0)
    assert dp.publish(msg("u", 1)) == 0  # no member may have it: nobody got it

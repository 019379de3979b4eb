"""core.registry.Registry on manual timers, without a loop: takeover, resume and clean start
with their hooks and counters, wills (at once, after their delay, cancelled by a reconnect,
sent early when the session ends), session expiry, the awaiting-PUBREL sweep on an injected
clock, kick and clean_session. Owners are recording stand-ins, or real channels where the
wire form matters. The last tests check that the core needs no event loop at all."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from core_util import HookLog, ManualTimers, Owner, Probe, World, forbid_event_loop

from mqttd.config import Zone
from mqttd.core.dispatch import Dispatcher
from mqttd.core.message import Message
from mqttd.core.registry import NEVER, Registry
from mqttd.core.services import CloseReason
from mqttd.core.session import Session
from mqttd.hooks import Hooks
from mqttd.metrics import (
    SESSION_CREATED,
    SESSION_DISCARDED,
    SESSION_RESUMED,
    SESSION_TAKEOVERED,
    SESSION_TERMINATED,
    Metrics,
)
from mqttd.mqtt.packets import (
    Disconnect,
    Puback,
    Publish,
    Pubrec,
    Pubrel,
    SubOpts,
    Will,
)
from mqttd.mqtt.reasons import ReasonCode as RC


@pytest.fixture(autouse=True)
def _no_event_loop() -> Iterator[None]:
    with forbid_event_loop():
        yield


SESSION_POINTS = ("session.created", "session.resumed", "session.takeovered",
                  "session.discarded", "session.terminated")


class Env:
    """A Registry with its own dispatcher, manual timers as timers and clock, and a list
    for the wills it publishes."""

    def __init__(self, **zone: Any) -> None:
        self.zone = Zone(**zone)
        self.timers = ManualTimers()
        self.metrics = Metrics()
        self.hooks = Hooks()
        self.log = HookLog(self.hooks, *SESSION_POINTS)
        self.dispatcher = Dispatcher(self.metrics, self.hooks)
        self.wills: list[Message] = []
        self.registry = Registry(self.dispatcher, self.metrics, self.hooks, self.timers,
                                 self.wills.append, [self.zone.await_rel_timeout],
                                 clock=self.timers.clock)

    def open(self, owner: Owner, *, clean: bool = True, expiry: int = 0,
             max_inflight: int = 32, zone: Zone | None = None) -> tuple[Session, bool]:
        return self.registry.open_session(owner, zone or self.zone, clean, expiry,
                                          max_inflight=max_inflight)

    def counts(self) -> tuple[int, ...]:
        return tuple(self.metrics.get(i) for i in (SESSION_CREATED, SESSION_RESUMED,
                     SESSION_TAKEOVERED, SESSION_DISCARDED, SESSION_TERMINATED))

    def expiry_timers(self) -> list[Any]:
        return self.timers.pending_for("_expire")


def will(topic: str = "will/t") -> Message:
    return Message(topic, b"bye", 1, False, None, "c")


# --- open_session: new, takeover, resume, clean start --------------------------------------

def test_new_session_is_created():
    env = Env()
    owner = Owner("c")
    session, present = env.open(owner, expiry=30)
    assert not present and session.channel is owner
    assert env.registry.sessions == {"c": session} and env.registry.channels == {"c": owner}
    assert session.expiry_interval == 30 and session.persistent
    assert env.log.calls == [("session.created", (session,))]
    assert env.counts() == (1, 0, 0, 0, 0)


def test_takeover_kicks_the_old_owner_with_session_taken_over():
    env = Env()
    old, new = Owner("c"), Owner("c")
    env.open(old, expiry=100)
    session, _ = env.open(new, clean=False, expiry=100)
    assert old.kicks == [(RC.SESSION_TAKEN_OVER, CloseReason.TAKEN_OVER, "session taken over")]
    assert new.kicks == []
    assert env.registry.channels["c"] is new and session.channel is new


def test_takeover_with_resume_keeps_the_session():
    env = Env()
    old, new = Owner("c"), Owner("c")
    first, _ = env.open(old, expiry=100)
    session, present = env.open(new, clean=False, expiry=100)
    assert present and session is first
    assert env.log.points() == ["session.created", "session.takeovered", "session.resumed"]
    assert env.log.args("session.takeovered") == [(session,)]
    assert env.counts() == (1, 1, 1, 0, 0)
    assert env.expiry_timers() == []  # the takeover's detach armed it; the resume cancelled it


def test_takeover_with_clean_start_discards_the_old_session():
    env = Env()
    old, new = Owner("c"), Owner("c")
    first, _ = env.open(old, expiry=100)
    env.dispatcher.subscribe(first, "a/#", SubOpts(1), 0)
    second, present = env.open(new, clean=True, expiry=100)
    assert not present and second is not first
    assert env.log.calls == [("session.created", (first,)), ("session.discarded", (first,)),
                             ("session.created", (second,))]
    assert env.counts() == (2, 0, 0, 1, 0)
    assert env.dispatcher.router.routes == {} and second.subscriptions == {}
    assert env.expiry_timers() == []


def test_takeover_of_a_transient_session_terminates_it():
    env = Env()
    first, _ = env.open(Owner("c"), expiry=0)
    second, present = env.open(Owner("c"), clean=False, expiry=0)
    assert not present and second is not first
    assert env.log.calls == [("session.created", (first,)),
                             ("session.terminated", (first, "terminated")),
                             ("session.created", (second,))]
    assert env.counts() == (2, 0, 0, 0, 1)


def test_taken_over_will_is_dropped_when_the_session_is_resumed():
    env = Env()
    w = will()
    env.open(Owner("c", will=w), expiry=100)
    env.open(Owner("c"), clean=False, expiry=100)
    env.timers.advance(1000)
    assert env.wills == []


def test_taken_over_will_is_sent_when_the_session_ends_with_the_takeover():
    env = Env()
    w = will()
    old = Owner("c", will=w, will_delay=30)
    env.open(old, expiry=100)
    env.open(Owner("c"), clean=True, expiry=100)
    assert env.wills == [w] and old.will is None


def test_resume_of_an_offline_session_cancels_its_expiry():
    env = Env()
    o1 = Owner("c")
    first, _ = env.open(o1, expiry=100)
    env.registry.detach(o1)
    assert [h.when for h in env.expiry_timers()] == [100.0]
    env.timers.advance(50)
    session, present = env.open(Owner("c"), clean=False, expiry=100)
    assert present and session is first
    assert env.log.points() == ["session.created", "session.resumed"]  # no takeover
    env.timers.advance(1000)
    assert env.registry.sessions == {"c": session}


def test_clean_start_discards_an_offline_session():
    env = Env()
    o1 = Owner("c")
    first, _ = env.open(o1, expiry=100)
    first.enqueue((will(), 1, False, (), None))
    env.registry.detach(o1)
    second, present = env.open(Owner("c"), clean=True, expiry=100)
    assert not present and second is not first and not second.mqueue
    assert env.log.points() == ["session.created", "session.discarded", "session.created"]
    assert env.expiry_timers() == []


def test_resumed_session_takes_the_new_connections_limits():
    env = Env()
    o1 = Owner("c")
    session, _ = env.open(o1, expiry=100, max_inflight=10, zone=Zone(max_mqueue_len=5))
    env.registry.detach(o1)
    zone2 = Zone(max_mqueue_len=9, mqueue_store_qos0=False, await_rel_timeout=7.0)
    again, _ = env.open(Owner("c"), clean=False, expiry=50, max_inflight=3, zone=zone2)
    assert again is session
    assert (session.expiry_interval, session.max_inflight, session.max_mqueue_len,
            session.mqueue_store_qos0, session.await_rel_timeout) == (50, 3, 9, False, 7.0)
    assert session.persistent


# --- detach ------------------------------------------------------------------------------

def test_detach_of_a_transient_session_terminates_it():
    env = Env()
    owner = Owner("c")
    session, _ = env.open(owner, expiry=0)
    env.dispatcher.subscribe(session, "t", SubOpts(1), 0)
    env.registry.detach(owner)
    assert env.registry.sessions == {} and env.registry.channels == {}
    assert env.log.calls[-1] == ("session.terminated", (session, "terminated"))
    assert env.counts() == (1, 0, 0, 0, 1)
    assert env.dispatcher.router.routes == {}


def test_detach_of_an_owner_no_longer_attached_does_nothing():
    env = Env()
    old, new = Owner("c", will=will()), Owner("c")
    env.open(old, expiry=100)
    session, _ = env.open(new, clean=False, expiry=100)
    calls = list(env.log.calls)
    env.registry.detach(old)  # the old connection closes after the takeover
    assert session.channel is new and env.registry.channels == {"c": new}
    assert env.log.calls == calls and env.wills == [] and env.expiry_timers() == []


# --- wills -------------------------------------------------------------------------------

def test_will_is_published_when_the_connection_ends():
    env = Env()
    w = will()
    owner = Owner("c", will=w)
    env.open(owner, expiry=100)
    env.registry.detach(owner)
    assert env.wills == [w] and owner.will is None


def test_will_delay_publishes_after_the_delay():
    env = Env()
    w = will()
    owner = Owner("c", will=w, will_delay=10)
    env.open(owner, expiry=100)
    env.registry.detach(owner)
    env.timers.advance(9.5)
    assert env.wills == []
    env.timers.advance(0.5)
    assert env.wills == [w]
    env.timers.advance(1000)  # the session expires later: the will is not sent again
    assert env.wills == [w] and env.registry.sessions == {}


def test_will_delay_is_cancelled_by_a_reconnect():
    env = Env()
    owner = Owner("c", will=will(), will_delay=10)
    env.open(owner, expiry=100)
    env.registry.detach(owner)
    env.timers.advance(5)
    env.open(Owner("c"), clean=False, expiry=100)
    env.timers.advance(1000)
    assert env.wills == []
    assert env.timers.pending_for("_fire_will") == []


def test_delayed_will_goes_when_the_session_expires_first():
    env = Env()
    w = will()
    owner = Owner("c", will=w, will_delay=30)
    session, _ = env.open(owner, expiry=5)
    env.registry.detach(owner)
    env.timers.advance(4.5)
    assert env.wills == []
    env.timers.advance(0.5)
    assert env.wills == [w] and env.timers.now == 5.0
    assert env.log.calls[-1] == ("session.terminated", (session, "expired"))
    env.timers.advance(100)
    assert env.wills == [w]


def test_delayed_will_goes_at_once_when_a_clean_start_ends_the_session():
    env = Env()
    w = will()
    owner = Owner("c", will=w, will_delay=30)
    env.open(owner, expiry=100)
    env.registry.detach(owner)
    env.timers.advance(1)
    env.open(Owner("c"), clean=True, expiry=100)
    assert env.wills == [w]
    env.timers.advance(100)
    assert env.wills == [w]


def test_will_delay_without_session_expiry_publishes_at_once():
    env = Env()
    w = will()
    owner = Owner("c", will=w, will_delay=30)
    env.open(owner, expiry=0)
    env.registry.detach(owner)
    assert env.wills == [w]


def test_will_message_expiry_counts_from_publication():
    env = Env()
    w = Message("will/t", b"bye", 1, False, {"message_expiry_interval": 60}, "c")
    w.expiry -= 3600  # built an hour ago at CONNECT: long expired by its CONNECT-time stamp
    stale = w.expiry
    owner = Owner("c", will=w, will_delay=10)
    env.open(owner, expiry=100)
    env.registry.detach(owner)
    env.timers.advance(10)
    # Restamped when sent (Message keeps time.monotonic(), not the injected clock).
    assert env.wills == [w] and w.expiry >= stale + 3600


# --- session expiry -----------------------------------------------------------------------

def test_expiry_timer_discards_the_offline_session():
    env = Env()
    owner = Owner("c")
    session, _ = env.open(owner, expiry=60)
    env.dispatcher.subscribe(session, "t", SubOpts(1), 0)
    env.registry.detach(owner)
    env.timers.advance(59.5)
    assert env.registry.sessions == {"c": session}
    env.timers.advance(0.5)
    assert env.registry.sessions == {}
    assert env.log.calls[-1] == ("session.terminated", (session, "expired"))
    assert env.counts()[-1] == 1 and env.dispatcher.router.routes == {}


def test_never_expiring_session_arms_no_timer():
    env = Env(await_rel_timeout=0.0)  # no sweep: no timer at all
    owner = Owner("c")
    session, _ = env.open(owner, expiry=NEVER)
    env.registry.detach(owner)
    assert env.timers.pending() == []
    env.timers.advance(10.0 * NEVER)
    assert env.registry.sessions == {"c": session}
    assert env.counts()[-2:] == (0, 0)


def test_stale_expiry_timer_does_not_end_a_reconnected_session():
    env = Env()
    o1 = Owner("c")
    session, _ = env.open(o1, expiry=10)
    env.registry.detach(o1)
    (handle,) = env.expiry_timers()
    env.open(Owner("c"), clean=False, expiry=10)
    handle.callback(*handle.args)  # as if the cancelled timer still ran (a late loop timer)
    assert env.registry.sessions == {"c": session} and handle.cancelled


# --- the awaiting-PUBREL sweep --------------------------------------------------------------

def test_sweep_forgets_ids_older_than_the_timeout_by_the_injected_clock():
    env = Env(await_rel_timeout=10.0)
    owner = Owner("c")
    session, _ = env.open(owner, expiry=100)
    assert [h.when for h in env.timers.pending_for("_sweep")] == [5.0]  # half the timeout
    session.await_rel(1, env.timers.clock())
    env.timers.advance_to(12.0)
    session.await_rel(2, env.timers.clock())
    env.registry.detach(owner)  # offline sessions are swept too
    env.timers.advance_to(14.5)
    assert set(session.awaiting_rel) == {1, 2}  # swept at 10: id 1 is exactly 10 s old
    env.timers.advance_to(15.0)
    assert set(session.awaiting_rel) == {2} and env.registry.awaiting_rel_expired == 1
    env.timers.advance_to(25.0)
    assert session.awaiting_rel == {} and env.registry.awaiting_rel_expired == 2


def test_sweep_keeps_ids_of_sessions_whose_zone_never_expires_them():
    env = Env(await_rel_timeout=10.0)
    session, _ = env.open(Owner("c"), expiry=100, zone=Zone(await_rel_timeout=0.0))
    session.await_rel(1, env.timers.clock())
    env.timers.advance(1000)
    assert list(session.awaiting_rel) == [1] and env.registry.awaiting_rel_expired == 0


def test_no_sweep_when_no_zone_expires_awaiting_ids():
    env = Env(await_rel_timeout=0.0)
    env.open(Owner("c"))
    assert env.timers.pending() == []


@pytest.mark.parametrize("timeout, period", [(1000.0, 60.0), (0.05, 0.1), (30.0, 15.0)])
def test_sweep_period_is_half_the_timeout_within_bounds(timeout, period):
    env = Env(await_rel_timeout=timeout)
    env.open(Owner("c"))
    assert [h.when for h in env.timers.pending_for("_sweep")] == [period]
    env.timers.advance(period)
    assert [h.when for h in env.timers.pending_for("_sweep")] == [2 * period]  # rearmed


def test_close_stops_the_sweep():
    env = Env(await_rel_timeout=10.0)
    env.open(Owner("c"))
    env.registry.close()
    assert env.timers.pending_for("_sweep") == []


# --- kick and clean_session ---------------------------------------------------------------------

def test_kick_closes_the_client_and_keeps_a_persistent_session():
    env = Env()
    owner = Owner("c")
    session, _ = env.open(owner, expiry=100)
    assert env.registry.kick("c")
    assert owner.kicks == [(RC.ADMINISTRATIVE_ACTION, CloseReason.KICKED,
                            "kicked by the operator")]
    assert env.registry.channels == {} and session.channel is None
    assert env.registry.sessions == {"c": session} and len(env.expiry_timers()) == 1


def test_kick_of_a_transient_session_ends_it():
    env = Env()
    session, _ = env.open(Owner("c"), expiry=0)
    assert env.registry.kick("c")
    assert env.registry.sessions == {}
    assert env.log.calls[-1] == ("session.terminated", (session, "terminated"))


def test_kick_of_an_unknown_client_is_false():
    env = Env()
    session, _ = env.open(Owner("c"), expiry=100)
    env.registry.detach(session.channel)
    assert not env.registry.kick("c") and not env.registry.kick("nobody")


def test_clean_session_kicks_and_discards():
    env = Env()
    owner = Owner("c")
    session, _ = env.open(owner, expiry=100)
    env.dispatcher.subscribe(session, "t", SubOpts(1), 0)
    assert env.registry.clean_session("c")
    assert [k[1] for k in owner.kicks] == [CloseReason.KICKED]
    assert env.registry.sessions == {} and env.dispatcher.router.routes == {}
    assert env.log.calls[-1] == ("session.discarded", (session,))
    assert env.expiry_timers() == []


def test_clean_session_of_an_offline_session_sends_its_delayed_will():
    env = Env()
    w = will()
    owner = Owner("c", will=w, will_delay=30)
    env.open(owner, expiry=100)
    env.registry.detach(owner)
    assert env.registry.clean_session("c")
    assert env.wills == [w] and env.registry.sessions == {}
    assert not env.registry.clean_session("c")


def test_ending_a_session_hands_its_shared_messages_to_another_member():
    env = Env()
    leaving, _ = env.open(Owner("leaving"), expiry=100)
    stay_owner = Owner("stay")
    stay, _ = env.open(stay_owner, expiry=100)
    env.dispatcher.subscribe(leaving, "$share/g/t", SubOpts(1), 0)
    env.dispatcher.subscribe(stay, "$share/g/t", SubOpts(1), 0)
    group = env.dispatcher.router.routes["t"].groups["g"]
    m = Message("t", b"work", 1)
    leaving.start_inflight((m, 1, False, (), group))
    env.registry.clean_session("leaving")
    assert [(d[0], d[4]) for d in stay_owner.got] == [(m, group)]


# --- through real channels ------------------------------------------------------------------

def test_channel_takeover_sends_disconnect_0x8e_and_resumes():
    w = World()
    hooks = HookLog(w.hooks, "client.disconnected")
    a1 = w.client("c", expiry=100)
    a2 = Probe(w)
    assert a2.connect("c", clean=False, expiry=100).session_present
    (disc,) = a1.out()
    assert isinstance(disc, Disconnect) and disc.reason_code == RC.SESSION_TAKEN_OVER
    assert a1.channel.closing and a1.channel.close_reason is CloseReason.TAKEN_OVER
    a1.channel.handle_close()  # the old connection's socket closes afterwards
    assert w.registry.channels["c"] is a2.channel and a2.session.channel is a2.channel
    assert [a[1] for a in hooks.args("client.disconnected")] == [CloseReason.TAKEN_OVER]


def test_channel_will_reaches_a_subscriber_when_the_connection_is_lost():
    w = World()
    sub = w.subscriber("s", "will/#", 1)
    c = w.client("c", will=Will("will/c", b"bye", 1))
    c.channel.handle_close()
    (p,) = sub.out()
    assert (p.topic, p.payload, p.qos) == ("will/c", b"bye", 1)


def test_channel_normal_disconnect_sends_no_will():
    w = World()
    sub = w.subscriber("s", "will/#", 1)
    c = w.client("c", will=Will("will/c", b"bye", 1))
    c.send(Disconnect(0))
    c.channel.handle_close(CloseReason.NORMAL)
    assert sub.out() == []


def test_channel_will_delay_fires_on_the_manual_clock():
    w = World()
    sub = w.subscriber("s", "will/#", 1)
    c = w.client("c", expiry=100,
                 will=Will("will/c", b"bye", 1, properties={"will_delay_interval": 10}))
    c.channel.handle_close()
    w.timers.advance(9.5)
    assert sub.out() == []
    w.timers.advance(0.5)
    assert [p.payload for p in sub.out()] == [b"bye"]


def test_channel_session_expiry_removes_its_subscriptions():
    w = World()
    c = w.subscriber("c", "t/#", 1, expiry=30)
    c.channel.handle_close()
    assert "t/#" in w.dispatcher.router.routes
    w.broker.publish(Message("t/1", b"queued", 1))
    assert len(c.session.mqueue) == 1
    w.timers.advance(30)
    assert w.registry.sessions == {} and w.dispatcher.router.routes == {}


def test_channel_shared_message_moves_on_when_its_member_goes():
    w = World()
    m1 = w.subscriber("m1", "$share/g/t", 1)
    m2 = w.subscriber("m2", "$share/g/t", 1)
    w.broker.publish(Message("t", b"job", 1))
    got = {name: p.out() for name, p in (("m1", m1), ("m2", m2))}
    (first,) = [n for n, out in got.items() if out]
    holder, other = (m1, m2) if first == "m1" else (m2, m1)
    holder.channel.handle_close()  # never acknowledged it; expiry 0 ends the session
    (p,) = other.out()
    assert (p.payload, p.qos) == (b"job", 1)


# --- no event loop -----------------------------------------------------------------------

CORE = Path(__file__).resolve().parent.parent / "mqttd" / "core"


def test_core_modules_never_import_asyncio():
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "asyncio" for n in names), \
                f"{path.name}:{node.lineno} imports asyncio"


def test_a_client_life_runs_with_no_event_loop():
    with pytest.raises(AssertionError, match="asyncio.get_running_loop"):
        asyncio.get_running_loop()  # the guard is on: any loop use fails the test
    w = World(await_rel_timeout=4.0)
    sub = w.subscriber("s", "t/#", 2, expiry=60)
    pub = w.client("p", will=Will("t/will", b"bye", 1, properties={"will_delay_interval": 5}),
                   expiry=60)
    assert pub.send(Publish("t/1", b"a", 1, packet_id=1)) == [Puback(1)]
    assert pub.send(Publish("t/2", b"b", 2, packet_id=2)) == [Pubrec(2)]
    (p1, p2) = sub.out()
    assert (p1.payload, p2.payload) == (b"a", b"b")
    sub.send(Puback(p1.packet_id), Pubrec(p2.packet_id))
    pub.channel.handle_close()  # will delay armed on the manual timers
    w.timers.advance(5)
    assert [(p.topic, p.payload) for p in sub.out()] == [("t/will", b"bye")]
    sub.channel.handle_close()
    w.broker.publish(Message("t/3", b"queued", 1))
    sub2 = Probe(w)
    assert sub2.connect("s", clean=False, expiry=60).session_present
    out = sub2.out()  # PUBREL for b; the unacknowledged will again (DUP); then the queue
    assert isinstance(out[0], Pubrel) and out[0].packet_id == p2.packet_id
    assert [(p.payload, p.dup) for p in out[1:]] == [(b"bye", True), (b"queued", False)]
    w.timers.advance(100)  # the publisher's session expires, the sweep runs
    assert set(w.registry.sessions) == {"s"}

"""Connection and session manager (EMQX's emqx_cm + emqx_sm): one live channel per client id.

Everything runs on the event loop's thread, so opening a session is atomic:
when a client id connects again, the old channel is kicked (MQTT 5
DISCONNECT 0x8E), its session is resumed or discarded as the new CONNECT
asks, and no second session can appear for the same id. Offline sessions
expire on a timer; delayed wills are published when their delay passes or
their session ends, whichever is first.

A taken-over connection's will follows the same rule as a delayed will: the
new connection for the client id arrives before any delay could pass, so the
will is published only if the session ends with the takeover (either side
asked for a clean start / expiry 0), as mosquitto does (test 07-will-takeover).

QoS 2 packet ids a client never releases are forgotten after
``await_rel_timeout`` by one periodic sweep over the sessions (a timer, not a
task; started with the first session), so no per-message timer exists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..config import Zone
from ..hooks import Hooks
from ..metrics import (
    SESSION_CREATED,
    SESSION_DISCARDED,
    SESSION_RESUMED,
    SESSION_TAKEOVERED,
    SESSION_TERMINATED,
    Metrics,
)
from ..mqtt.packets import SubOpts
from ..mqtt.reasons import ReasonCode as RC
from ..mqtt.topics import parse_shared
from ..stats import Stats
from .dispatch import Dispatcher
from .message import Message
from .services import CloseReason, SessionOwner, SessionStore, TimerHandle, Timers
from .session import OVERFLOW_POLICIES, Limits, Session

log = logging.getLogger("mqttd.registry")

#: Session Expiry Interval meaning "never expires".
NEVER = 0xFFFFFFFF

#: Bounds on the awaiting-PUBREL sweep period (half the shortest zone timeout).
_SWEEP_MIN = 0.1
_SWEEP_MAX = 60.0


class Registry:
    """Client id -> live channel, and client id -> session (connected or offline)."""

    def __init__(self, dispatcher: Dispatcher, metrics: Metrics, hooks: Hooks, timers: Timers,
                 publish_will: Callable[[Message], object], await_rel_timeouts: list[float],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.hooks = hooks
        self.timers = timers
        self.clock = clock
        self._publish_will = publish_will
        #: Every zone's await_rel_timeout: the sweep runs at half the shortest.
        self._await_rel_timeouts = await_rel_timeouts
        self.channels: dict[str, SessionOwner] = {}
        self.sessions: dict[str, Session] = {}
        #: Sessions here that are persistent, and that have a subscription: kept up to date
        #: as sessions come, go and change, so the stats need no walk over every session
        #: (which grew with the client count: a stall every second at 100,000 clients).
        self.persistent_count = 0
        self.subscriber_count = 0
        dispatcher.on_subscribers = self._subscribers_changed
        #: client id -> (will message, timer handle) for wills waiting out their delay
        self._wills: dict[str, tuple[Message, TimerHandle]] = {}
        #: None: not started; False: no zone ever expires awaiting PUBREL ids.
        self._sweep_handle: TimerHandle | bool | None = None
        self.awaiting_rel_expired = 0
        #: The durable store (None: durability off). Sessions with an expiry are kept in it.
        self.store: SessionStore | None = None
        #: The transport's hook: runs a channel's close that it deferred (a mass departure
        #: is worked off in slices), True if one was pending.
        self.finish_close: Callable[[SessionOwner], bool] | None = None

    def open_session(self, channel: SessionOwner, zone: Zone, clean_start: bool, expiry: int,
                     *, max_inflight: int) -> tuple[Session, bool]:
        """Attach ``channel`` to a new or resumed session; returns (session, present)."""
        client_id = channel.client_id
        if self._sweep_handle is None:
            self._start_sweep()
        old = self.channels.get(client_id)
        if old is not None and old is not channel and self.finish_close is not None \
                and self.finish_close(old):
            old = self.channels.get(client_id)  # closed as it would have been already
        taken_will = None
        if old is not None and old is not channel:
            # The old connection's will waits for the outcome (see the module docstring).
            taken_will = old.will
            old.will = None
            self._takeover(old)
        session = self.sessions.get(client_id)
        present = False
        if session is not None:
            self._cancel_expiry(session)
            if clean_start:
                self.discard(session, "discarded")
                session = None
            else:
                present = True
                # A new connection for the session before the will delay passed:
                # the will is not sent [MQTT-3.1.3-9].
                self._cancel_will(client_id)
                if old is not None and old is not channel:
                    # A live session handed from one connection to the next (EMQX's
                    # takeover); a clean start instead discards it (session.discarded).
                    self._event(SESSION_TAKEOVERED, "session.takeovered", session)
                self._event(SESSION_RESUMED, "session.resumed", session)
        if taken_will is not None and not present:
            self._send_will(taken_will)  # the taken-over session ended
        if session is None:
            session = Session(client_id, expiry_interval=expiry, max_inflight=max_inflight,
                              max_mqueue_len=zone.max_mqueue_len,
                              mqueue_store_qos0=zone.mqueue_store_qos0,
                              await_rel_timeout=zone.await_rel_timeout)
            # One float for both times (24 B less per client), and the one the
            # client.connected hook already saw (the retainer module keys on it).
            session.created_at = channel.connected_at
            self._add(session)
            self._event(SESSION_CREATED, "session.created", session)
        else:  # a resumed session takes the limits of the zone it is connected through now
            session.expiry_interval = expiry
            session.max_inflight = max_inflight
        persistent = expiry > 0
        if persistent != session.persistent:
            self.persistent_count += 1 if persistent else -1
            session.persistent = persistent
        # Every zone-derived limit at once: one shared object per zone (session.Limits).
        session.limits = Limits.of(zone.name, zone.max_mqueue_len, zone.mqueue_store_qos0,
                                   zone.await_rel_timeout, OVERFLOW_POLICIES[zone.mqueue_overflow],
                                   OVERFLOW_POLICIES[zone.mqueue_backpressure_fallback],
                                   zone.mqueue_flow_limit, zone.upgrade_qos)
        session.flow_stalled = False
        session.channel = channel
        self.channels[client_id] = channel
        store = self.store
        if store is not None:
            if expiry > 0:
                if session.store is None:
                    self._make_durable(session, store)
                store.save_session(client_id, expiry, session.created_at, 0.0, channel.will,
                                   channel.will_delay, session.zone)
            elif session.store is not None:  # resumed without an expiry: no longer kept
                store.delete_session(client_id)
                self._unstore(session)
        return session, present

    def _make_durable(self, session: Session, store: SessionStore) -> None:
        """A session gets an expiry (new, or taken over / resumed with one): write what it
        holds, so that the store has all of it from here on."""
        session.store = store
        session.own_maps()
        cid = session.client_id
        for topic_filter, (opts, subid) in session.subscriptions.items():
            store.save_subscription(cid, topic_filter, opts, subid)
        wait_comp = session.wait_comp or ()
        for pid, delivery in session.inflight.items():
            if delivery[1]:
                session._qseq = qseq = session._qseq + 1
                session.refs[id(delivery)] = qseq
                store.add_delivery(cid, qseq, delivery, pid)
                if pid in wait_comp:
                    store.set_released(cid, qseq)
        for delivery in session.mqueue:
            if delivery[1]:
                session._qseq = qseq = session._qseq + 1
                session.refs[id(delivery)] = qseq
                store.add_delivery(cid, qseq, delivery, 0)
        for pid in session.awaiting_rel:
            store.await_rel(cid, pid)

    def _unstore(self, session: Session) -> None:
        """The session leaves the store (its rows are deleted by the caller): the messages
        its stored deliveries referenced lose a reference."""
        store = session.store
        if store is None:
            return
        refs = session.refs
        cid = session.client_id
        if refs:
            for delivery in [*session.inflight.values(), *session.mqueue]:
                qseq = refs.pop(id(delivery), 0)
                if qseq:
                    store.remove_delivery(cid, qseq, delivery[0])
        refs.clear()
        session.store = None

    def _takeover(self, old: SessionOwner) -> None:
        log.debug("client %s taken over by a new connection", old.client_id)  # + disconnect line
        old.kick(RC.SESSION_TAKEN_OVER, CloseReason.TAKEN_OVER, "session taken over")
        self.detach(old)

    def detach(self, channel: SessionOwner) -> None:
        """The channel's connection ended (or was taken over): deal with will and session."""
        client_id = channel.client_id
        session = self.sessions.get(client_id)
        if session is None or session.channel is not channel:
            return
        session.channel = None
        if self.channels.get(client_id) is channel:
            del self.channels[client_id]
        will = channel.will
        channel.will = None
        if will is not None:
            delay = channel.will_delay
            if delay and session.expiry_interval:
                self._schedule_will(client_id, will, delay)
            else:
                self._send_will(will)
        if session.expiry_interval == 0:
            self.discard(session, "terminated")
            return
        if session.store is not None:
            entry = self._wills.get(client_id)
            session.store.save_session(client_id, session.expiry_interval, session.created_at,
                                       time.time(), entry[0] if entry is not None else None,
                                       channel.will_delay, session.zone)
        if session.expiry_interval != NEVER:
            session.expire_handle = self.timers.call_later(session.expiry_interval,
                                                           self._expire, session)

    def _schedule_will(self, client_id: str, will: Message, delay: float) -> None:
        handle = self.timers.call_later(delay, self._fire_will, client_id)
        self._wills[client_id] = (will, handle)

    def _fire_will(self, client_id: str) -> None:
        entry = self._wills.pop(client_id, None)
        if entry is not None:
            self._send_will(entry[0])
            session = self.sessions.get(client_id)
            if session is not None and session.store is not None and session.channel is None:
                session.store.save_session(client_id, session.expiry_interval,
                                           session.created_at, time.time(), None, 0,
                                           session.zone)

    def _send_will(self, will: Message) -> None:
        will.restamp()  # its Message Expiry Interval starts now, not at CONNECT
        self._publish_will(will)

    def pending_will(self, client_id: str) -> Message | None:
        """The will of the client's ended connection while it waits out its delay."""
        entry = self._wills.get(client_id)
        return entry[0] if entry is not None else None

    def _cancel_will(self, client_id: str) -> None:
        entry = self._wills.pop(client_id, None)
        if entry is not None:
            entry[1].cancel()

    def _cancel_expiry(self, session: Session) -> None:
        if session.expire_handle is not None:
            session.expire_handle.cancel()
            session.expire_handle = None

    def _expire(self, session: Session) -> None:
        session.expire_handle = None
        if session.channel is None and self.sessions.get(session.client_id) is session:
            log.info("session %s expired", session.client_id)
            self.discard(session, "expired")

    def discard(self, session: Session, why: str) -> None:
        """End a session: drop its subscriptions, hand shared work on, send a pending will."""
        if session.expire_handle is not None:  # (inline: every clean client's leave)
            self._cancel_expiry(session)
        if self.sessions.get(session.client_id) is session:
            self._remove(session)
        # The session ends: a will still waiting out its delay goes now [MQTT-3.1.3-9].
        entry = self._wills.pop(session.client_id, None)
        if entry is not None:
            entry[1].cancel()
            self._send_will(entry[0])
        dispatcher = self.dispatcher
        store = session.store
        if store is not None:
            # Its rows go at once; the messages it held lose a reference each.
            store.delete_session(session.client_id)
            self._unstore(session)
        dispatcher.unsubscribe_all(session)
        if session.inflight or session.mqueue:
            dispatcher.redispatch_shared(session, session.pending())
        session.clear()
        if why == "discarded":
            self._event(SESSION_DISCARDED, "session.discarded", session)
        else:  # "terminated", "expired", ...: the reason is part of the hook's arguments
            # (inline: every clean client's leave; the chain run only when it has callbacks)
            self.metrics.inc(SESSION_TERMINATED)
            hooks = self.hooks
            if hooks.session_terminated:
                hooks.run("session.terminated", session, why)

    # --- hand-over between cluster nodes (docs/CLUSTER.md, "Session hand-over") ---------

    def hand_off(self, client_id: str) -> Session | None:
        """Take an offline session out of service for another node: no longer routed to,
        no timers, its will (waiting out its delay) not sent (a new connection to the
        session is on its way [MQTT-3.1.3-9]); its stored rows stay until ``handed_over``
        (or it comes back with ``take_back``). None if there is none to hand over."""
        session = self.sessions.get(client_id)
        if session is None or session.channel is not None or session.expiry_interval == 0:
            return None
        self._cancel_expiry(session)
        self._cancel_will(client_id)
        self._remove(session)
        # Out of the routes only: its subscriptions (and their stored rows) stay with it.
        router = self.dispatcher.router
        for topic_filter in session.subscriptions:
            share = parse_shared(topic_filter)
            if share is not None:
                router.remove(share[1], share[0], True, session)
            else:
                router.remove(topic_filter, None, False, session)
        return session

    def handed_over(self, session: Session) -> None:
        """The other node has the session (committed): this node's copy goes, without a
        will and without handing its messages to shared groups (the other node has them)."""
        store = session.store
        if store is not None:
            store.delete_session(session.client_id)
            self._unstore(session)
        session.clear()
        self._event(SESSION_TAKEOVERED, "session.takeovered", session)

    def take_back(self, session: Session) -> bool:
        """A hand-over that did not complete: the session is this node's again, offline
        (False if the client id has a session here again meanwhile: then that one stays
        and this one ends)."""
        cid = session.client_id
        if cid in self.sessions:
            self.discard(session, "discarded")
            return False
        subscriptions = [(f, opts, subid) for f, (opts, subid) in session.subscriptions.items()]
        self.install(session, subscriptions, stored=True)
        return True

    def install(self, session: Session, subscriptions: list[tuple[str, SubOpts, int]],
                stored: bool = False) -> None:
        """An offline session from elsewhere (another node's hand-over) becomes this node's:
        routed to, written to the store (unless ``stored``: its rows are there already),
        its expiry running until a connection resumes it. A session this node held for the
        client id is replaced (discarded)."""
        cid = session.client_id
        old = self.sessions.get(cid)
        if old is not None and old is not session:
            self.kick(cid, RC.SESSION_TAKEN_OVER, "session taken over")
            old = self.sessions.get(cid)
            if old is not None:
                self.discard(old, "discarded")
        if self._sweep_handle is None:
            self._start_sweep()
        self._add(session)
        for topic_filter, opts, subid in subscriptions:
            self.dispatcher.subscribe(session, topic_filter, opts, subid)
        store = self.store
        if store is not None and not stored:
            self._make_durable(session, store)
            store.save_session(cid, session.expiry_interval, session.created_at, time.time(),
                               None, 0, session.zone)
        if session.expiry_interval != NEVER:
            session.expire_handle = self.timers.call_later(session.expiry_interval,
                                                           self._expire, session)

    def restore(self, restored: list[tuple[Session, list[tuple[str, SubOpts, int]],
                                           Message | None, int, float]]) -> None:
        """Install sessions read back from the store at start, each with its subscriptions,
        its will (or None), its will delay and how long it has been offline (seconds): every
        session and route first; ``resume_restored`` then starts their timers and wills
        (once the routes are all there: a will sent at once reaches every restored
        subscriber, and a shared delivery of an expired session finds its group)."""
        store = self.store
        dispatcher = self.dispatcher
        for session, subscriptions, _will, _delay, _offline in restored:
            self._add(session)
            for topic_filter, opts, subid in subscriptions:
                dispatcher.subscribe(session, topic_filter, opts, subid)
            session.store = store  # after the routes: they are stored already

    def resume_restored(self, restored: list[tuple[Session, list[tuple[str, SubOpts, int]],
                                                   Message | None, int, float]]) -> int:
        """The restored sessions' timers and wills. Returns the number of sessions kept
        (expired ones end here, their wills sent, their shared deliveries handed on)."""
        store = self.store
        if self._sweep_handle is None and restored:
            self._start_sweep()
        kept = 0
        for session, _subs, will, will_delay, offline in restored:
            cid = session.client_id
            if will is not None:
                left = will_delay - offline
                if will_delay and left > 0 and session.expiry_interval > offline:
                    self._schedule_will(cid, will, left)
                else:
                    self._send_will(will)
                    if store is not None and session.expiry_interval > offline:
                        store.save_session(cid, session.expiry_interval, session.created_at,
                                           time.time() - offline, None, 0, session.zone)
            if session.expiry_interval == NEVER:
                kept += 1
                continue
            left = session.expiry_interval - offline
            if left <= 0:
                self.discard(session, "expired")
                continue
            session.expire_handle = self.timers.call_later(left, self._expire, session)
            kept += 1
        return kept

    def _add(self, session: Session) -> None:
        """Put ``session`` in ``sessions`` (replacing one of the same client id), counted."""
        old = self.sessions.get(session.client_id)
        if old is not None:
            self._remove(old)
        self.sessions[session.client_id] = session
        if session.persistent:
            self.persistent_count += 1
        if session.subscriptions:
            self.subscriber_count += 1

    def _remove(self, session: Session) -> None:
        """Take ``session`` (the one in ``sessions`` for its client id) out, counted."""
        del self.sessions[session.client_id]
        if session.persistent:
            self.persistent_count -= 1
        if session.subscriptions:
            self.subscriber_count -= 1

    def _subscribers_changed(self, session: Session, delta: int) -> None:
        """The dispatcher's word that ``session`` got its first subscription (+1) or lost
        its last (-1); counted only for a session here (a discarded one unsubscribes after
        it left)."""
        if self.sessions.get(session.client_id) is session:
            self.subscriber_count += delta

    def _event(self, idx: int, point: str, *args: object) -> None:
        """A session lifecycle event: its counter, then its hook point."""
        self.metrics.inc(idx)
        self.hooks.run(point, *args)

    def register_stats(self, stats: Stats) -> None:
        """Keep connections, channels and sessions in the node's stats (every second):
        counts kept up to date, no walk over the sessions."""

        def update() -> dict[str, int]:
            n = len(self.sessions)
            return {"connections": len(self.channels), "channels": n, "sessions": n,
                    "sessions.persistent": self.persistent_count,
                    "subscribers": self.subscriber_count}

        stats.update_interval("registry", update)

    def kick(self, client_id: str, code: int = RC.ADMINISTRATIVE_ACTION,
             detail: str = "kicked by the operator") -> bool:
        """Close a connected client (MQTT 5: DISCONNECT ``code`` with ``detail`` as its
        Reason String); False if it is not connected. A ban passes its reason."""
        channel = self.channels.get(client_id)
        if channel is None:
            return False
        channel.kick(code, CloseReason.KICKED, detail)
        self.detach(channel)
        return True

    def clean_session(self, client_id: str) -> bool:
        """Kick the client if connected and discard its session."""
        self.kick(client_id)
        session = self.sessions.get(client_id)
        if session is None:
            return False
        self.discard(session, "discarded")
        return True

    # --- awaiting-PUBREL sweep ----------------------------------------------------------

    def _start_sweep(self) -> None:
        timeouts = [t for t in self._await_rel_timeouts if t > 0]
        if not timeouts:
            self._sweep_handle = False  # nothing ever expires: never sweep
            return
        period = min(max(min(timeouts) / 2, _SWEEP_MIN), _SWEEP_MAX)
        self._sweep_handle = self.timers.call_later(period, self._sweep, period)

    def _sweep(self, period: float) -> None:
        """Forget incoming QoS 2 packet ids that waited too long for PUBREL (online or not)."""
        # Rearmed first, so that one failure cannot end the sweeping for good.
        self._sweep_handle = self.timers.call_later(period, self._sweep, period)
        expired = 0
        now = self.clock()
        for session in self.sessions.values():
            if session.awaiting_rel and session.await_rel_timeout > 0:
                expired += session.expire_awaiting_rel(session.await_rel_timeout, now)
        if expired:
            self.awaiting_rel_expired += expired
            log.debug("forgot %d QoS 2 packet ids not released in time", expired)

    def close(self) -> None:
        """Stop the registry's timers (the node is shutting down)."""
        handle = self._sweep_handle
        if handle is not None and not isinstance(handle, bool):
            handle.cancel()
        self._sweep_handle = None

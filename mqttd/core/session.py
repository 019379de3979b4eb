"""Session state (EMQX's emqx_session): plain data and the bookkeeping of the QoS flows.

Nothing here touches a socket or the event loop, so a session can be kept
while its client is offline, resumed by a new connection, and later saved
to and restored from a durable store. The channel decides what to send;
the session remembers what is in flight, queued, and awaiting release.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from typing import Final, cast

from ..mqtt.packets import Publish, SubOpts
from .services import Backlog, Delivery, SessionOwner, SessionStore, TimerHandle

__all__ = ["OVERFLOW_POLICIES", "OVERFULL", "WAIT_ACK", "WAIT_COMP", "AckFault", "Delivery",
           "Session"]


#: Inflight states of an outgoing QoS 1/2 message (``Session.inflight_state``).
WAIT_ACK = 0  # PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2)
WAIT_COMP = 1  # PUBREL sent, waiting for PUBCOMP

class AckFault(enum.Enum):
    """Why an acknowledgement of ours did not complete a flow step."""

    UNKNOWN = "unknown"  # no message in flight under that packet id
    MISMATCH = "mismatch"  # the ack does not fit the message's QoS or its state


#: What a full queue does with one more message (zone key ``mqueue_overflow``).
DROP_OLDEST: Final = 0  # the oldest queued message makes room (EMQX)
DROP_NEWEST: Final = 1  # the new message is refused (mosquitto)
BACKPRESSURE: Final = 2  # queued past the limit; its publisher waits for room
OVERFLOW_POLICIES: Final = {"drop_oldest": DROP_OLDEST, "drop_newest": DROP_NEWEST,
                            "backpressure": BACKPRESSURE}

#: Sessions that took a QoS 1/2 message past their limit under ``backpressure`` (and other
#: backlogs: a bridge's queue) since the
#: publishing channel last looked: it holds its acknowledgement until they have room. One
#: list for the process: dispatch is synchronous on one loop, so what a publish appends is
#: read by that publish's channel before anything else runs.
OVERFULL: list[Backlog] = []

# Module constants: an enum member looked up on its class costs ~60 ns, every ack.
_UNKNOWN: Final = AckFault.UNKNOWN
_MISMATCH: Final = AckFault.MISMATCH


class _NoQueue(deque["Delivery"]):
    """The queue of a session that has never queued anything: empty and shared (an empty
    deque costs 760 B, and most sessions never queue). Reading it is reading an empty
    queue; adding to it is a bug (``Session.queue_for`` gives a session its own first),
    so it fails loudly instead of losing the message."""

    __slots__ = ()

    def _refuse(self, *_args: object) -> None:
        raise TypeError("the shared empty queue cannot hold deliveries")

    append = appendleft = extend = extendleft = insert = _refuse


#: Every session's ``mqueue`` until its first queued delivery.
NO_QUEUE: Final[deque[Delivery]] = _NoQueue()


class _NoMap(dict[object, object]):
    """Likewise the subscriptions, inflight window, awaiting-PUBREL ids and stored
    references of a session that has had none yet (64 B each): read as an empty dict,
    written to never (``Session.own_maps``, or an ``is NO_MAP`` test, gives a session
    its own first)."""

    __slots__ = ()

    def _refuse(self, *_args: object, **_kwargs: object) -> None:
        raise TypeError("the shared empty mapping cannot hold entries")

    __setitem__ = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]


NO_MAP: Final[dict[object, object]] = _NoMap()
_NO_SUBS: Final = cast("dict[str, tuple[SubOpts, int]]", NO_MAP)
_NO_INFLIGHT: Final = cast("dict[int, Delivery]", NO_MAP)
_NO_REL: Final = cast("dict[int, float]", NO_MAP)
_NO_REFS: Final = cast("dict[int, int]", NO_MAP)


class Limits:
    """What a session takes from the zone it is connected through and reads only when
    queueing or sweeping (or a delivery's QoS, ``upgrade_qos``, when the subscription's is
    above the message's): one shared object per distinct set of values (``Limits.of``), so
    a session holds one slot for them, not eight (56 B less per session). Never changed
    in place: setting one on a session gives it another shared object."""

    __slots__ = ("zone", "max_mqueue_len", "mqueue_store_qos0", "await_rel_timeout",
                 "overflow", "overflow_fallback", "flow_limit", "upgrade_qos")

    zone: str
    max_mqueue_len: int
    mqueue_store_qos0: bool
    await_rel_timeout: float
    overflow: int
    overflow_fallback: int
    flow_limit: int
    upgrade_qos: bool

    @staticmethod
    def of(zone: str, max_mqueue_len: int, mqueue_store_qos0: bool, await_rel_timeout: float,
           overflow: int, overflow_fallback: int, flow_limit: int, upgrade_qos: bool = False
           ) -> Limits:
        """The shared object with these values (made on first use)."""
        key = (zone, max_mqueue_len, mqueue_store_qos0, await_rel_timeout, overflow,
               overflow_fallback, flow_limit, upgrade_qos)
        found = _LIMITS.get(key)
        if found is None:
            found = Limits()
            for name, value in zip(Limits.__slots__, key, strict=True):
                object.__setattr__(found, name, value)
            if len(_LIMITS) < 1024:  # distinct zone configurations: a handful
                _LIMITS[key] = found
        return found

    def replace(self, name: str, value: object) -> Limits:
        """The shared object with ``name`` set to ``value`` and the rest as here."""
        values = {n: getattr(self, n) for n in Limits.__slots__}
        values[name] = value
        return Limits.of(**values)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Limits are shared between sessions: use replace()")


_LIMITS: dict[tuple[str, int, bool, float, int, int, int, bool], Limits] = {}


class Session:
    """One client's session: subscriptions, inflight window, message queue, QoS 2 state."""

    __slots__ = (
        "client_id", "expiry_interval", "created_at", "subscriptions", "inflight", "mqueue",
        "wait_comp", "awaiting_rel", "max_inflight", "limits", "_next_pid",
        "channel", "persistent", "delivered", "enqueued", "dropped", "expire_handle",
        "store", "refs", "_qseq", "sent_at", "flow_stalled",
    )

    #: The zone-derived limits, shared (``Limits``); the properties below read them, and
    #: setting one swaps the object.
    limits: Limits

    @property
    def zone(self) -> str:
        """The name of the zone the session was last connected through."""
        return self.limits.zone

    @zone.setter
    def zone(self, value: str) -> None:
        self.limits = self.limits.replace("zone", value)

    @property
    def max_mqueue_len(self) -> int:
        """That zone's max_mqueue_len (0: no limit)."""
        return self.limits.max_mqueue_len

    @max_mqueue_len.setter
    def max_mqueue_len(self, value: int) -> None:
        self.limits = self.limits.replace("max_mqueue_len", value)

    @property
    def mqueue_store_qos0(self) -> bool:
        """That zone's mqueue_store_qos0."""
        return self.limits.mqueue_store_qos0

    @mqueue_store_qos0.setter
    def mqueue_store_qos0(self, value: bool) -> None:
        self.limits = self.limits.replace("mqueue_store_qos0", value)

    @property
    def await_rel_timeout(self) -> float:
        """Seconds an incoming QoS 2 packet id may wait for PUBREL (0 = forever); the
        registry's sweep applies it, so a client that never sends PUBREL cannot pin ids."""
        return self.limits.await_rel_timeout

    @await_rel_timeout.setter
    def await_rel_timeout(self, value: float) -> None:
        self.limits = self.limits.replace("await_rel_timeout", value)

    @property
    def overflow(self) -> int:
        """That zone's mqueue_overflow (DROP_OLDEST, ...)."""
        return self.limits.overflow

    @overflow.setter
    def overflow(self, value: int) -> None:
        self.limits = self.limits.replace("overflow", value)

    @property
    def overflow_fallback(self) -> int:
        """That zone's mqueue_backpressure_fallback."""
        return self.limits.overflow_fallback

    @overflow_fallback.setter
    def overflow_fallback(self, value: int) -> None:
        self.limits = self.limits.replace("overflow_fallback", value)

    @property
    def upgrade_qos(self) -> bool:
        """That zone's upgrade_qos: deliveries at the subscription's QoS, not the lower of
        the subscription's and the message's (the dispatcher asks only when they differ)."""
        return self.limits.upgrade_qos

    @upgrade_qos.setter
    def upgrade_qos(self, value: bool) -> None:
        self.limits = self.limits.replace("upgrade_qos", value)

    @property
    def flow_limit(self) -> int:
        """That zone's mqueue_flow_limit: while connected, a QoS 1/2 message queued past it
        holds its publisher (as OVERFULL does) until the queue is down to half of it (0: off)."""
        return self.limits.flow_limit

    @flow_limit.setter
    def flow_limit(self, value: int) -> None:
        self.limits = self.limits.replace("flow_limit", value)

    def __init__(self, client_id: str, *, expiry_interval: int = 0, max_inflight: int = 32,
                 max_mqueue_len: int = 1000, mqueue_store_qos0: bool = True,
                 await_rel_timeout: float = 300.0) -> None:
        self.client_id = client_id
        self.expiry_interval = expiry_interval
        self.created_at = time.time()
        #: topic filter as subscribed (with any $share/ prefix) -> (options, subscription id)
        self.subscriptions: dict[str, tuple[SubOpts, int]] = _NO_SUBS
        #: packet id -> the delivery in flight under it; insertion order is send order
        self.inflight: dict[int, Delivery] = _NO_INFLIGHT
        #: Packet ids of QoS 2 deliveries whose PUBREC arrived (PUBREL sent): WAIT_COMP.
        #: A set beside the dict, not a state per entry: the common QoS 1 flow allocates
        #: nothing but the dict slot; None (not an empty set, 216 B) until the first PUBREC.
        self.wait_comp: set[int] | None = None
        #: Deliveries waiting for the inflight window (or for the client to come back);
        #: the shared empty NO_QUEUE until the first one (``queue_for``).
        self.mqueue: deque[Delivery] = NO_QUEUE
        #: packet id of a QoS 2 message received from the client -> time received
        self.awaiting_rel: dict[int, float] = _NO_REL
        self.max_inflight = max_inflight
        self.limits = Limits.of("default", max_mqueue_len, mqueue_store_qos0, await_rel_timeout,
                                DROP_OLDEST, DROP_OLDEST, 0)
        self._next_pid = 1
        #: The connected channel, or None while offline.
        self.channel: SessionOwner | None = None
        self.persistent = expiry_interval > 0
        self.delivered = 0
        self.enqueued = 0
        self.dropped = 0
        self.expire_handle: TimerHandle | None = None
        #: The durable store while the session has an expiry (the registry sets it), else
        #: None: a clean session pays one ``is None`` test per change.
        self.store: SessionStore | None = None
        #: id(delivery) -> its qseq in the store, for each stored QoS 1/2 delivery the
        #: session holds (queued or in flight): the tuple itself is the key's owner, alive
        #: for as long as the session holds it.
        self.refs: dict[int, int] = _NO_REFS
        self._qseq = 0
        #: packet id -> monotonic time its PUBLISH was sent, while the channel times
        #: deliveries for the ``delivery.slow`` hook (slow_subs); None otherwise.
        self.sent_at: dict[int, float] | None = None
        #: A publisher's wait for this queue timed out (the client does not take what it
        #: is sent): publishers are not held for it again until its queue is below the limit.
        self.flow_stalled = False

    def own_maps(self) -> None:
        """Give the session dicts of its own where it still has the shared empty ones
        (before writing to them from outside: a restore, the store taking it on)."""
        if self.subscriptions is NO_MAP:
            self.subscriptions = {}
        if self.inflight is NO_MAP:
            self.inflight = {}
        if self.awaiting_rel is NO_MAP:
            self.awaiting_rel = {}
        if self.refs is NO_MAP:
            self.refs = {}

    def queue_for(self) -> deque[Delivery]:
        """The session's own queue, made on first use: what adds to ``mqueue`` takes it
        from here."""
        mq = self.mqueue
        if mq is NO_QUEUE:
            mq = self.mqueue = deque()
        return mq

    def set_overflow(self, policy: str, fallback: str) -> None:
        """Apply a zone's ``mqueue_overflow`` and ``mqueue_backpressure_fallback``."""
        lim = self.limits
        self.limits = Limits.of(lim.zone, lim.max_mqueue_len, lim.mqueue_store_qos0,
                                lim.await_rel_timeout, OVERFLOW_POLICIES[policy],
                                OVERFLOW_POLICIES[fallback], lim.flow_limit, lim.upgrade_qos)

    # --- outgoing ---------------------------------------------------------------------

    def next_packet_id(self) -> int:
        pid = self._next_pid
        inflight = self.inflight
        while pid in inflight:
            pid = pid + 1 if pid < 0xFFFF else 1
        self._next_pid = pid + 1 if pid < 0xFFFF else 1
        return pid

    def window_open(self) -> bool:
        return len(self.inflight) < self.max_inflight

    def enqueue(self, delivery: Delivery) -> Delivery | None:
        """Queue a delivery; returns the delivery dropped to make room (or refused), if any."""
        lim = self.limits
        if delivery[1] == 0 and not lim.mqueue_store_qos0:
            self.dropped += 1
            return delivery
        mq = self.mqueue
        if mq is NO_QUEUE:
            mq = self.mqueue = deque()
        flow = lim.flow_limit
        if flow:
            # Flow control: a connected client's window is full and its queue past the
            # limit: the QoS 1/2 publisher waits (its PUBACK, its reading) for the queue to
            # go down, so publishers go at the pace the subscriber takes messages instead of
            # outrunning it (the loop's turns then stay short: the window is refilled often).
            if len(mq) >= flow:
                if (not self.flow_stalled and delivery[1] and delivery[0].qos
                        and self.channel is not None):
                    OVERFULL.append(self)
            elif self.flow_stalled:
                self.flow_stalled = False
        dropped = None
        limit = lim.max_mqueue_len
        if limit and len(mq) >= limit:
            policy = lim.overflow
            if policy == BACKPRESSURE:
                # Past the limit by at most one message per waiting publisher (each stops
                # reading at its first such message); the cap bounds memory should
                # thousands wait, or should a publisher with no acknowledgement to hold
                # (QoS 0 sent, a will, the HTTP API) fill it.
                if (delivery[1] and delivery[0].qos
                        and len(mq) < 2 * limit + 256):
                    OVERFULL.append(self)
                else:
                    policy = lim.overflow_fallback
            if policy == DROP_NEWEST:
                self.dropped += 1
                return delivery  # refused, as mosquitto does
            if policy == DROP_OLDEST:
                dropped = mq.popleft()  # like EMQX: the oldest message makes room
                self.dropped += 1
        mq.append(delivery)
        self.enqueued += 1
        store = self.store
        if store is not None:
            if dropped is not None:
                self.forget(dropped)
            if delivery[1]:
                self._qseq = qseq = self._qseq + 1
                if self.refs is NO_MAP:
                    self.refs = {}
                self.refs[id(delivery)] = qseq
                store.add_delivery(self.client_id, qseq, delivery, 0)
        return dropped

    def has_room(self) -> bool:
        n = len(self.mqueue)
        # Flow control lets its publishers go once the queue is down to half its limit, not
        # at the first message under it: a release admits many messages, not one per turn
        # (each wait costs a pause and a resume of reading), and half a limit is still
        # many windows for the subscriber.
        lim = self.limits
        flow = lim.flow_limit
        if flow and n >= (flow + 1) // 2 and not self.flow_stalled \
                and self.channel is not None:
            return False
        limit = lim.max_mqueue_len
        return not limit or n < limit

    def past_limit(self) -> bool:
        """Whether the queue holds more than ``max_mqueue_len`` (backpressure let it)."""
        return bool(self.max_mqueue_len) and len(self.mqueue) > self.max_mqueue_len

    def trim(self) -> list[Delivery]:
        """A backpressured publisher waited too long: bring the queue back to its limit by
        the fallback policy; returns the deliveries dropped (counted in ``dropped``)."""
        mq = self.mqueue
        if self.flow_limit and len(mq) >= self.flow_limit:
            self.flow_stalled = True  # not taking its messages: hold no publisher again yet
        limit = self.max_mqueue_len
        dropped: list[Delivery] = []
        if not limit:
            return dropped
        newest = self.overflow_fallback == DROP_NEWEST
        while len(mq) > limit:
            delivery = mq.pop() if newest else mq.popleft()
            self.forget(delivery)
            dropped.append(delivery)
        self.dropped += len(dropped)
        return dropped

    def forget(self, delivery: Delivery) -> None:
        """The session no longer holds ``delivery`` (acknowledged, dropped, expired): its
        stored copy goes too. Every way out of the queue and the window comes here."""
        store = self.store
        if store is not None:
            qseq = self.refs.pop(id(delivery), 0)
            if qseq:
                store.remove_delivery(self.client_id, qseq, delivery[0])

    def start_inflight(self, delivery: Delivery) -> int:
        pid = self.next_packet_id()
        if self.inflight is NO_MAP:
            self.inflight = {}
        self.inflight[pid] = delivery
        store = self.store
        if store is not None:
            qseq = self.refs.get(id(delivery))
            if qseq is not None:  # from the queue: stored already
                if delivery[1] == 2:
                    # Only QoS 2 needs its packet id kept: after a restart a QoS 1 delivery
                    # is sent again anyway (a duplicate QoS 1 allows), under a new id.
                    store.set_inflight(self.client_id, qseq, pid)
            else:
                self._qseq = qseq = self._qseq + 1
                if self.refs is NO_MAP:
                    self.refs = {}
                self.refs[id(delivery)] = qseq
                store.add_delivery(self.client_id, qseq, delivery, pid)
        return pid

    def build_publish(self, delivery: Delivery, packet_id: int, now: float,
                      dup: bool = False) -> Publish | None:
        """The PUBLISH for a delivery, or None if its message has expired."""
        msg, qos, retain, subids, _ = delivery
        props = msg.properties
        if msg.expiry or subids:
            props = dict(props)
            if msg.expiry:
                left = msg.remaining_expiry(now)
                if left is not None and left <= 0:
                    self.dropped += 1  # expired while queued or in flight
                    return None
                props["message_expiry_interval"] = left
            if subids:
                props["subscription_identifier"] = list(subids)
        return Publish(msg.topic, msg.payload, qos, retain, dup, packet_id, props)

    def ack(self, packet_id: int, expected_qos: int) -> Delivery | AckFault:
        """Handle PUBACK (expected_qos 1) or PUBREC (2) for an inflight packet id.

        Returns the delivery in flight, or why the ack fits none (:class:`AckFault`).
        """
        entry = self.inflight.get(packet_id)
        if entry is None:
            return _UNKNOWN
        wait_comp = self.wait_comp
        if entry[1] != expected_qos or (wait_comp is not None and packet_id in wait_comp):
            return _MISMATCH
        if expected_qos == 1:
            del self.inflight[packet_id]
            self.delivered += 1
            if self.store is not None:
                self.forget(entry)
        return entry

    def released(self, packet_id: int) -> None:
        """PUBREC accepted: the message now waits for PUBCOMP."""
        if self.wait_comp is None:
            self.wait_comp = set()
        self.wait_comp.add(packet_id)
        store = self.store
        if store is not None:
            qseq = self.refs.get(id(self.inflight[packet_id]))
            if qseq is not None:
                store.set_released(self.client_id, qseq)

    def complete(self, packet_id: int) -> Delivery | AckFault:
        """Handle PUBCOMP: the delivery it completes, or why it completes none."""
        entry = self.inflight.get(packet_id)
        if entry is None:
            return _UNKNOWN
        wait_comp = self.wait_comp
        if wait_comp is None or packet_id not in wait_comp:
            return _MISMATCH
        wait_comp.discard(packet_id)
        del self.inflight[packet_id]
        self.delivered += 1
        if self.store is not None:
            self.forget(entry)
        return entry

    def drop_inflight(self, packet_id: int) -> None:
        entry = self.inflight.pop(packet_id, None)
        if self.wait_comp is not None:
            self.wait_comp.discard(packet_id)
        if entry is not None and self.store is not None:
            self.forget(entry)

    def inflight_state(self, packet_id: int) -> int:
        """WAIT_ACK or WAIT_COMP for a packet id in flight."""
        wait_comp = self.wait_comp
        return WAIT_COMP if wait_comp is not None and packet_id in wait_comp else WAIT_ACK

    def clear(self) -> None:
        """Forget every delivery (the session ended; its stored rows go with the session)."""
        self.inflight.clear()
        self.wait_comp = None
        self.mqueue = NO_QUEUE
        self.refs.clear()

    # --- incoming QoS 2 -----------------------------------------------------------------

    def await_rel(self, packet_id: int, now: float) -> bool:
        """Record an incoming QoS 2 packet id received at ``now`` (monotonic); False if it
        is already awaiting PUBREL."""
        if packet_id in self.awaiting_rel:
            return False
        if self.awaiting_rel is NO_MAP:
            self.awaiting_rel = {}
        self.awaiting_rel[packet_id] = now
        if self.store is not None:
            self.store.await_rel(self.client_id, packet_id)
        return True

    def release(self, packet_id: int) -> bool:
        if self.awaiting_rel.pop(packet_id, None) is None:
            return False
        if self.store is not None:
            self.store.release(self.client_id, packet_id)
        return True

    def expire_awaiting_rel(self, timeout: float, now: float) -> int:
        """Forget QoS 2 packet ids that waited longer than ``timeout`` at ``now``
        (monotonic); returns how many."""
        if not self.awaiting_rel:
            return 0
        deadline = now - timeout
        stale = [pid for pid, t in self.awaiting_rel.items() if t < deadline]
        for pid in stale:
            del self.awaiting_rel[pid]
            if self.store is not None:
                self.store.release(self.client_id, pid)
        return len(stale)

    def pending(self) -> list[Delivery]:
        """Every delivery the client may not have received: inflight first (send order),
        then queued. A QoS 2 message whose PUBREC arrived (WAIT_COMP) is the client's
        already, so it is not among them: handing it to another member would duplicate it."""
        wait_comp = self.wait_comp or ()
        return ([d for pid, d in self.inflight.items() if pid not in wait_comp]
                + list(self.mqueue))

    def info(self) -> dict[str, object]:
        return {
            "clientid": self.client_id,
            "expiry_interval": self.expiry_interval,
            "created_at": self.created_at,
            "subscriptions": len(self.subscriptions),
            "inflight": len(self.inflight),
            "max_inflight": self.max_inflight,
            "mqueue_len": len(self.mqueue),
            "max_mqueue": self.max_mqueue_len,
            "awaiting_rel": len(self.awaiting_rel),
            "delivered": self.delivered,
            "enqueued": self.enqueued,
            "dropped": self.dropped,
        }

"""The connection (EMQX's emqx_connection): the only place that touches a socket.

An ``asyncio.Protocol``: each read is parsed whole, every packet goes through
the channel, and everything the read produced is written in one call.
Deliveries from other clients append to this connection's output and ask the
:class:`Flusher` for one write at the end of the loop turn, however many
messages arrived in it. Except for a loop turn's first read when it is small
(``PROMPT_READ``) and starts with a PUBLISH: each of its messages is written to
its subscribers as soon as it is handled (``Connection._apply_promptly``).

Bytes are counted here (``bytes.received`` per read, ``bytes.sent`` per write),
and ``packets.received`` once per read. An unexpected exception while handling
a read (a bug) is logged once with the client id, counted
(``connections.crashed``) and closes this connection only. A zone with inbound
rate limits gets a :class:`~mqttd.limiter.ConnLimiter`: over budget, reading
pauses for as long as the budget needs to recover.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
from collections.abc import Callable, MutableSet
from time import perf_counter
from typing import Any, cast

from ..config import Zone
from ..core.channel import (
    AUTHENTICATING,
    CONNECTED,
    IDLE,
    NO_OUT,
    Channel,
    ChannelServices,
    Origin,
)
from ..core.pubpath import build_run as _build_packet_run
from ..core.rare import Rare
from ..core.services import CloseReason, SessionOwner
from ..metrics import (
    BYTES_RECEIVED,
    BYTES_SENT,
    CONNECTIONS_CRASHED,
    CONNECTIONS_RATE_LIMITED,
    PACKETS_RECEIVED,
    Metrics,
)
from ..mqtt.codec import Parser
from ..mqtt.errors import PacketError
from ..mqtt.packets import PUBLISH
from .busypoll import BusyPoll
from .limiter import ConnLimiter
from .tls import cert_identity

log = logging.getLogger("mqttd.connection")

#: The PUBLISH fast path (mqttd/core/pubpath.py): applies one read's packets, the common
#: QoS 0/1 PUBLISH itself and every other packet through the channel's state machine.
_apply_packets = _build_packet_run()

#: Seconds a closing connection keeps draining the client's input before it is aborted.
LINGER = 2.0
#: Channel closes run per loop turn when many clients leave at once (~20 us each: ~5 ms).
CLOSE_SLICE = 256
#: Seconds of reads handled in one event-loop turn before the DISCONNECTs and ends of input
#: that come after wait, their sockets paused, for a later turn (and of put-off ones, and of
#: closes, handled per turn). When 19,000 clients leave at once, libuv hands every ready
#: socket to one turn: their DISCONNECTs, closes and EOFs were 0.1-0.2 s in which no other
#: client was answered.
READ_BUDGET = 0.001
#: Packets of one client handled per loop turn (EMQX's active_n) while flow control or
#: backpressure holds some publisher: a read of more (a flood, a backlog read after a
#: wait) is worked off this many per turn, its socket paused meanwhile, so that the reads
#: that release the holds (a subscriber's PUBACKs, which refill its window) are not
#: answered after all of it. (Not otherwise: a QoS 0 flood's reads stay whole, and loop
#: lag still tells overload protection of a flood.) 32, not 64: four released publishers'
#: pieces make a shorter turn, so the subscriber's window comes round sooner (fan-in QoS 1
#: beside 64 in three sittings: faster in 12 of 15 paired runs; 16 was slower).
PACKET_BUDGET = 32
#: Output entries (a slice's PUBACKs) a connection worked off PACKET_BUDGET packets a turn
#: carries to its next slice instead of writing them after each; written when the slices
#: end (its socket is paused meanwhile, so a later acknowledgement lets the client send
#: nothing sooner) or the carried output reaches this many. Every write to a client wakes
#: its reader: fan-in QoS 1 wrote a released publisher's PUBACKs once per slice, each write
#: a wake-up that costs the writing loop ~9 us on this VM (the IPI to a halted vCPU, paid in
#: loopback's softirq), and the generator woke twice per subscriber round trip.
SLICE_CARRY = 16 * PACKET_BUDGET
#: Most packets in a read whose deliveries are written one PUBLISH at a time, as each is
#: handled, when it is the first read of a loop turn: a few messages in one read are the
#: backlog of a late wake-up (the host gives the vCPU back 250-350 us late now and then),
#: and each goes out without waiting for its successors' handling; a bigger read (a fan-in
#: burst: ~1,000 packets a read) keeps one write per turn.
PROMPT_READ = 16
#: The first byte of a DISCONNECT packet, and of a CONNECT packet.
_DISCONNECT = 0xE0
_CONNECT = 0x10
#: Seconds between looks at the queues a backpressured publisher waits for.
PRESSURE_POLL = 0.02
#: Resolution of the connections' deadlines (connect timeout, keepalive): a deadline is
#: acted on up to this much after it passed, never before.
TICK = 0.5

#: A parser per max_packet_size shared by the connections that have no packet half read:
#: a connection owns one only while a packet of its is incomplete (96 B per idle client).
#: Feeds never interleave (each runs to its end before any packet is handled).
_SHARED_PARSERS: dict[int, Parser] = {}


class Deadlines:
    """Every connection's next deadline (connect timeout, keepalive) on one timer.

    A timer handle per client costs ~600 B and a heap operation at every connect;
    here a connection sits in the set of its deadline's tick (``TICK`` seconds wide), and
    when that tick comes due it looks at its real deadline: a client heard from since
    just moves on to a later tick. One event-loop timer serves them all.
    """

    __slots__ = ("_loop", "_buckets", "_slots", "_handle", "_armed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: tick number -> the connections whose deadline falls in it
        self._buckets: dict[int, set[Connection]] = {}
        #: The tick numbers that have (or had) a bucket, as a heap: the next one due first.
        self._slots: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        #: The tick the timer is armed for (0: not armed).
        self._armed = 0

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def add(self, conn: Connection, when: float) -> int:
        """Call ``conn.deadline()`` at ``when`` (loop time) or up to TICK later; returns the
        tick to :meth:`remove` it from."""
        slot = int(when / TICK) + 1
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = set()
            heapq.heappush(self._slots, slot)
            if not self._armed or slot < self._armed:
                self._arm(slot)
        bucket.add(conn)
        return slot

    def remove(self, conn: Connection, slot: int) -> None:
        bucket = self._buckets.get(slot)
        if bucket is not None:
            # An empty bucket stays until its tick: deleted, the next client with a deadline
            # in it would make it again and push its tick again, once per connect.
            bucket.discard(conn)

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = slot
        self._handle = self._loop.call_at(slot * TICK, self._tick)

    def _tick(self) -> None:
        self._handle = None
        self._armed = 0
        now_slot = int(self._loop.time() / TICK)
        slots = self._slots
        buckets = self._buckets
        # (A deadline not passed yet moves to a later tick than now_slot: no loop.)
        while slots and slots[0] <= now_slot:
            bucket = buckets.pop(heapq.heappop(slots), None)
            if bucket is None:
                continue
            for conn in bucket:
                conn._slot = 0
                try:
                    conn.deadline()
                except Exception:  # one connection's bug must not stop the others' timers
                    conn.crashed("handling its timer")
        while slots and slots[0] not in buckets:
            heapq.heappop(slots)
        if slots and not self._armed:
            self._arm(slots[0])


class Flusher:
    """Writes every connection that has output, once per event-loop turn; and, after each
    commit of the durable store, the connections whose acknowledgements waited for it."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_held", "deadlines", "_closes",
                 "_close_order", "_closing_scheduled", "_turn_reads", "_turn_start",
                 "_deferring", "_deferred", "_deferred_scheduled", "_pressed",
                 "_later", "_later_scheduled", "_waiting", "_now", "loop", "busy")

    def __init__(self, loop: asyncio.AbstractEventLoop, busy_poll: float = 0.0) -> None:
        self._loop = self.loop = loop
        #: Polls instead of sleeping after a busy turn, for an adaptive window.
        self.busy = BusyPoll(loop, busy_poll)
        #: The connections' connect and keepalive deadlines (one timer for all of them).
        self.deadlines = Deadlines(loop)
        self._pending: list[Connection] = []
        self._scheduled = False
        #: Connections with output held for the store (``Channel.hold``).
        self._held: set[Connection] = set()
        #: Channels whose close (will, session, hooks, $SYS, log line) is still to run ->
        #: (reason, detail); a mass departure is worked off CLOSE_SLICE per loop turn.
        self._closes: dict[Channel, tuple[CloseReason, str]] = {}
        self._close_order: collections.deque[Channel] = collections.deque()
        self._closing_scheduled = False
        #: Reads admitted in this loop turn, when the first was, and whether the turn's
        #: READ_BUDGET is spent (the rest are put off).
        self._turn_reads = 0
        self._turn_start = 0.0
        self._deferring = False
        #: Connections whose read (False) or end of input (True) was put off, in order.
        self._deferred: collections.deque[tuple[Connection, bool]] = collections.deque()
        self._deferred_scheduled = False
        #: Connections waiting under backpressure or flow control (Channel.pressure), in the
        #: order they started: looked at after every turn's writes, since what frees a queue
        #: (a subscriber's PUBACK refilling its window) writes in that turn.
        self._pressed: dict[Connection, None] = {}
        #: Every connection under such a wait (those in ``_pressed`` and those left to their
        #: PRESSURE_POLL): while there are any, reads keep to PACKET_BUDGET.
        self._waiting: dict[Connection, None] = {}
        #: Connections with packets left over their PACKET_BUDGET, for the next turn.
        self._later: list[Connection] = []
        self._later_scheduled = False
        #: The last ``now()``: the float the connections heard from meanwhile share.
        self._now = 0.0

    def tables(self) -> list[dict[Any, Any] | set[Any]]:
        """The tables that had an entry per client (for ``sysmon.shrink``)."""
        return [self._closes, self._held, self._pressed, self._waiting]

    def now(self) -> float:
        """``loop.time()``, as the same float object while the clock reads the same:
        uvloop's clock counts whole milliseconds, so the connections heard from within one
        share one ``last_recv`` float (32 B per idle client otherwise)."""
        now = self._loop.time()
        if now == self._now:
            return self._now
        self._now = now
        return now

    def admit(self) -> bool:
        """May a read (or an end of input) be handled in this loop turn? False once the
        turn's reads took READ_BUDGET: the caller puts it off (``defer``)."""
        n = self._turn_reads
        self._turn_reads = n + 1
        if n == 0:
            self._turn_start = start = perf_counter()
            self.busy.started(start)
            if not self._scheduled:  # (_run, after this turn's I/O callbacks, ends the turn;
                # one call_soon per turn for it and the writes)
                self._scheduled = True
                self._loop.call_soon(self._run)
            return True
        if self._deferring:
            return False
        if n & 15 == 0 and perf_counter() - self._turn_start > READ_BUDGET:
            self._deferring = True
            return False
        return True

    def defer(self, conn: Connection, eof: bool) -> None:
        """Handle ``conn``'s put-off read (or end of input) in a later slice."""
        self._deferred.append((conn, eof))
        if not self._deferred_scheduled:
            self._deferred_scheduled = True
            self._loop.call_soon(self._run_deferred)

    def later(self, conn: Connection) -> None:
        """Go on with ``conn``'s packets past its PACKET_BUDGET in the next loop turn."""
        self._later.append(conn)
        if not self._later_scheduled:
            self._later_scheduled = True
            self._loop.call_soon(self._run_later)

    def _run_later(self) -> None:
        self._later_scheduled = False
        conns = self._later
        self._later = []
        for conn in conns:
            conn.take_later()

    def _run_deferred(self) -> None:
        self._deferred_scheduled = False
        queue = self._deferred
        start = perf_counter()
        n = 0
        while queue:
            conn, eof = queue.popleft()
            conn.take_deferred(eof)
            n += 1
            if n & 15 == 0 and perf_counter() - start > READ_BUDGET:
                break
        if queue and not self._deferred_scheduled:
            self._deferred_scheduled = True
            self._loop.call_soon(self._run_deferred)  # (the next loop turn)

    def close_later(self, channel: Channel, reason: CloseReason, detail: str) -> None:
        """Run ``channel.handle_close`` in a later loop turn, in order, CLOSE_SLICE at a
        time: 19,000 clients leaving at once cost ~20 us each, 0.4 s in one turn."""
        if channel in self._closes:
            return
        self._closes[channel] = (reason, detail)
        self._close_order.append(channel)
        if not self._closing_scheduled:
            self._closing_scheduled = True
            self._loop.call_soon(self._run_closes)

    def finish_close(self, channel: SessionOwner) -> bool:
        """Run the channel's pending close now (a new connection for its client id must
        find it closed, as without the deferral); False if none was pending."""
        args = self._closes.pop(cast("Channel", channel), None)
        if args is None:
            return False
        cast("Channel", channel).handle_close(*args)
        return True

    def finish_closes(self) -> None:
        """Run every pending close (the server stops)."""
        while self._close_order:
            self._run_closes(len(self._close_order))

    def _run_closes(self, limit: int = 0) -> None:
        self._closing_scheduled = False
        order = self._close_order
        closes = self._closes
        n = limit or CLOSE_SLICE
        start = perf_counter()
        while order and n:
            channel = order.popleft()
            args = closes.pop(channel, None)
            if args is None:
                continue  # finished early (finish_close)
            n -= 1
            try:
                channel.handle_close(*args)
            except Exception:
                log.exception("closing client %s failed", channel.client_id)
            if not limit and n & 15 == 0 and perf_counter() - start > READ_BUDGET:
                break  # (a close with hooks or a busy log costs more than ~20 us)
        if order and not self._closing_scheduled:
            self._closing_scheduled = True
            self._loop.call_soon(self._run_closes)

    def hold(self, conn: Connection) -> None:
        self._held.add(conn)

    def committed(self) -> None:
        """The store committed: write what the held connections may write now."""
        held = self._held
        if not held:
            return
        self._held = set()
        for conn in held:
            try:
                conn.flush()
            except Exception:
                conn.crashed("writing")
        self.busy.ended()  # (the clients answer these writes: their answers end the gap)

    def add(self, conn: Connection) -> None:
        self._pending.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def schedule(self) -> None:
        """Run the end of this turn (the look at waiting connections) with no write asked:
        a read wrote its own output, which may have made room for them."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def write_now(self) -> None:
        """Write the connections that have output now, before the end of the turn (a small
        read's deliveries, one message at a time: ``Connection._apply_promptly``); the
        turn's own run still comes, for what is added after."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        for conn in pending:
            try:
                conn.flush()
            except Exception:  # one connection's bug must not cost the others their write
                conn.crashed("writing")

    def holding(self) -> bool:
        """Whether some connection waits under backpressure or flow control."""
        return bool(self._waiting)

    def press(self, conn: Connection) -> None:
        self._pressed[conn] = None
        self._waiting[conn] = None

    def still_waiting(self, conn: Connection) -> None:
        """``conn``'s wait goes on, looked at every PRESSURE_POLL from now."""
        self._waiting[conn] = None

    def release(self, conn: Connection) -> None:
        self._pressed.pop(conn, None)
        self._waiting.pop(conn, None)

    def _run(self) -> None:
        """The end of a loop turn: its reads' budget starts over, every connection with
        output writes it, and the connections waiting for room are looked at."""
        if not self._turn_reads:  # (a turn of writes only: it ends the idle gap too)
            self.busy.started(perf_counter())
        self._turn_reads = 0
        self._deferring = False
        pending = self._pending
        self._pending = []
        self._scheduled = False
        for conn in pending:
            try:
                conn.flush()
            except Exception:  # one connection's bug must not cost the others their write
                conn.crashed("writing")
        if self._pressed:
            # A publisher waits no longer than the turn that made room for it (not for the
            # next PRESSURE_POLL): under flow control that is every turn of a busy subscriber.
            for conn in list(self._pressed):
                channel = conn.channel
                if channel is not None and conn._pressure_timer is not None \
                        and not conn._lost and not channel.closing \
                        and not channel.pressure_room():
                    continue  # (still no room: recheck_pressure's test, without its call)
                conn.recheck_pressure()
        # The idle gap starts: poll, unless acknowledgements wait for the store's commit
        # (then its commit starts the poll: ``committed``).
        self.busy.ended(not self._held)


class Connection(asyncio.Protocol):
    """One client socket: bytes in → parser → channel; channel output → one write."""

    # Slotted: thousands of idle clients each hold one (a __dict__ costs ~1.2 KiB).
    __slots__ = (
        "flusher", "connections", "transport", "parser", "channel",
        "last_recv", "_slot", "_queued", "_lost", "_closing",
        "_keepalive_armed", "limiter", "_paused_until", "bytes_in", "bytes_mark",
        "_pressure_timer", "_deferred", "_rare", "_later", "max_packet",
    )

    # Fields most connections never change, off the slots (core/rare.py); none is read
    # per read. Set by the listener before the socket arrives: the client address a PROXY
    # header gave (None: the socket's), and which names a verified client certificate
    # gives (peer_cert_as_username, peer_cert_as_clientid).
    peer_address = Rare[tuple[str, int] | None](None)
    cert_as = Rare[tuple[str, str] | None](None)
    #: Told of the new channel (a client trace waiting for its CONNECT), or None.
    watch = Rare[Callable[[Channel], None] | None](None)
    _crashed = Rare(False)
    #: Backpressure (Channel.pressure): packets parsed but not handled yet, and when the
    #: wait gives up.
    _stash = Rare[list[Any] | None](None)
    #: How many output entries a slice carried (its acknowledgements, unwritten: see
    #: _carry); more than that at the next slice is a delivery to this client, which
    #: found the list non-empty and so did not wake the flusher: written then.
    _carried = Rare(0)
    _pressure_deadline = Rare(0.0)
    #: Bytes that arrived during the wait anyway (a WebSocket read's later frames).
    _unread = Rare(b"")

    def __init__(self, services: ChannelServices, zone: Zone, flusher: Flusher,
                 connections: MutableSet[Connection],
                 watch: Callable[[Channel], None] | None = None, origin: Origin | None = None
                 ) -> None:
        #: The rare fields set (see the ``Rare`` declarations above), None until one is.
        self._rare: dict[str, object] | None = None
        #: Its client's MQTT state, made with it (the services, the zone and the origin are
        #: read from there: no slots here). Its peer address is asked of this connection
        #: when needed (``peername``), not kept as a string per idle client.
        channel = self.channel = Channel(services, zone, self)
        channel.wakeup = self  # (callable: a bound method would be 64 B more per client)
        if origin is not None:
            channel.origin = origin
        self.flusher = flusher
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        #: Its own parser while a packet is incomplete, else None (a shared one reads).
        self.parser: Parser | None = None
        #: The zone's max_packet_size when the socket came: a reload changes it only for
        #: clients that connect afterwards (their CONNACK told them the limit).
        self.max_packet = zone.max_packet_size
        self.last_recv = 0.0
        #: The tick of ``flusher.deadlines`` this connection's next deadline (connect
        #: timeout, keepalive, the end of a closing connection's linger) sits in (0: none).
        self._slot = 0
        self._queued = False
        self._lost = False
        self._closing = False
        if watch is not None:
            self.watch = watch
        #: The keepalive timer runs (armed at the first flush after CONNACK).
        self._keepalive_armed = False
        #: Inbound rate limits (None when the zone sets none: zero cost).
        self.limiter = ConnLimiter.for_zone(zone)
        #: The timer that resumes reading after a rate-limit pause.
        self._paused_until: asyncio.TimerHandle | None = None
        #: Bytes received, and the count at the start of overload protection's window
        #: (mqttd.overload measures the heaviest publishers with them).
        self.bytes_in = 0
        self.bytes_mark = 0
        #: Backpressure: the timer polling for room (Channel.pressure).
        self._pressure_timer: asyncio.TimerHandle | None = None
        #: A read put off to a later loop turn (Flusher.admit), its socket paused meanwhile.
        self._deferred: bytes | None = None
        #: ``_stash`` holds packets past PACKET_BUDGET (not a backpressure wait's), to be
        #: handled in the next turns (Flusher.later), the socket paused meanwhile.
        self._later = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop (the flusher's: no slot per connection)."""
        return self.flusher.loop

    @property
    def zone(self) -> Zone:
        """The zone of its listener (its channel's)."""
        return self.channel.zone

    @property
    def metrics(self) -> Metrics:
        """The node's counters (its channel's)."""
        return self.channel.metrics

    @property
    def transport_name(self) -> str:
        """Its transport: "tcp", "ssl", "ws" or "wss"."""
        return self.channel.origin.transport

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # TCP_NODELAY: uvloop and asyncio both set it on every TCP transport already.
        channel = self.channel
        origin = channel.origin
        # A plain TCP client has no rare field set: none is read (a Python call each).
        rare = self._rare is not None
        # A plain TCP socket's peer address stays readable from the transport until the
        # end (uvloop keeps it in C, asyncio in its extra info): the channel asks this
        # connection for it when a log line or a view needs it. TLS and WebSocket
        # transports lose it at close: their string is made now.
        if origin.transport != "tcp":
            channel.peer = self.peername()
        # (An accepted socket's local port is its listener's, set with the origin: no syscall.)
        if not origin.sockport:
            sockname = transport.get_extra_info("sockname")
            if isinstance(sockname, tuple):
                channel.origin = Origin.of(origin.listener, origin.transport, sockname[1])
        if rare and self.cert_as is not None:
            cert = transport.get_extra_info("peercert")
            as_user, as_client = self.cert_as
            if as_user:
                channel.cert_username = cert_identity(cert, as_user)
            if as_client:
                channel.cert_clientid = cert_identity(cert, as_client)
        self.connections.add(self)
        self.last_recv = now = self.flusher.now()
        self._slot = self.flusher.deadlines.add(self, now + self.zone.idle_timeout)
        if rare and self.watch is not None:
            self.watch(channel)

    def peername(self) -> str:
        """The client's address as "host:port" (the PROXY header's, else the socket's)."""
        peer = self.peer_address if self._rare is not None else None
        if peer is None and self.transport is not None:
            peer = self.transport.get_extra_info("peername")
        return "%s:%s" % (peer[0], peer[1]) if isinstance(peer, tuple) else str(peer)

    def data_received(self, data: bytes) -> None:
        if self._deferred is not None:  # (TLS, WebSocket: more of the read put off)
            self._deferred += data
            return
        if not self.flusher.admit() and (data[0] == _DISCONNECT or data[0] == _CONNECT):
            # This loop turn has read enough, and this client is leaving (or arriving): its
            # DISCONNECT and close (its CONNECT: ~80 us, with its session, CONNACK and log
            # line) wait for a later turn, its socket paused; a client that is connected
            # (a PINGREQ, a PUBLISH) is served now, not behind thousands leaving or 256
            # arriving at once.
            self._deferred = data
            if self.transport is not None and self._paused_until is None \
                    and self._pressure_timer is None:
                self.transport.pause_reading()
            self.flusher.defer(self, False)
            return
        try:
            self._received(data)
        except Exception:
            self.crashed("handling its input")

    def take_deferred(self, eof: bool) -> None:
        """Handle the read (or the end of input) put off by ``data_received``
        (``eof_received``), and read on."""
        transport = self.transport
        if eof:
            if transport is not None and not self._lost:
                transport.close()
            return
        data = self._deferred
        self._deferred = None
        if data is None or self._lost:
            return
        try:
            self._received(data)
        except Exception:
            self.crashed("handling its input")
            return
        transport = self.transport
        if transport is not None and not self._lost and self._paused_until is None \
                and self._pressure_timer is None and not self._later:
            transport.resume_reading()

    def crashed(self, doing: str) -> None:
        """An unexpected exception (a bug) in this connection's handling: log it once with
        the client id, count it, and close this connection only."""
        if self._lost or self._crashed:
            return
        self._crashed = True
        channel = self.channel
        who = (channel.client_id or channel.peer) if channel is not None else "?"
        log.exception("connection of %s crashed while %s; closing it", who, doing)
        self.metrics.inc(CONNECTIONS_CRASHED)
        if channel is not None:
            channel.out.clear()
            channel.hold = None
            try:
                channel.handle_close(CloseReason.INTERNAL_ERROR, "internal error")
            except Exception:
                log.exception("closing the crashed connection of %s failed", who)
            channel.out.clear()
        if self.transport is not None:
            self.transport.abort()

    def _received(self, data: bytes) -> None:
        channel = self.channel
        assert channel is not None
        if channel.pressure is not None or self._later:
            # A backpressure wait, or packets left over the budget: reading is paused, but a
            # WebSocket read's later frames still come; they wait too, in order.
            self._unread += data
            return
        metrics = channel.metrics
        nbytes = len(data)
        metrics.inc(BYTES_RECEIVED, nbytes)
        self.bytes_in += nbytes
        if channel.closing:
            return
        flusher = self.flusher
        now = flusher.loop.time()  # (Flusher.now, inline: this runs per read)
        if now == flusher._now:
            now = flusher._now
        else:
            flusher._now = now
        self.last_recv = now
        was_idle = channel.state == IDLE
        parser = self.parser
        if was_idle and data and parser is None and data[0] & 0xF0 != 0x10:
            # The stream's first packet is not a CONNECT: refuse it on its first byte,
            # before buffering whatever body its header announces (CVE-2023-0809).
            log.info("closing %s: first packet is not CONNECT", channel.peer)
            channel.handle_first_packet_type(data[0] >> 4)
            self.flush()
            return
        error = None
        if parser is None:
            size = self.max_packet
            parser = _SHARED_PARSERS.get(size)
            if parser is None:
                parser = _SHARED_PARSERS[size] = Parser(max_packet_size=size)
            parser.version = channel.version  # (a CONNECT read sets the channel's)
            shared = True
        else:
            shared = False
        try:
            packets = parser.feed(data)
        except PacketError as err:
            packets = err.packets
            # Kept past the except block: without its traceback, which holds this frame
            # (and through it the connection, channel and session) in a reference cycle.
            error = err.with_traceback(None)
        if parser.buffered:
            if shared:  # a packet half read: this connection keeps the parser
                self.parser = parser
                size = self.max_packet
                _SHARED_PARSERS[size] = Parser(max_packet_size=size)
        elif not shared:
            self.parser = None
        # Each packet in order (the common PUBLISH through the fast path), up to one that
        # closes the channel or puts it under backpressure; while someone is held, past
        # PACKET_BUDGET of a connected client's (not rate-limited, not ending in a
        # malformed packet), the rest in the next turns.
        # What they queue for this client is written by the flush below: marked queued,
        # its wakeup (a subscriber's refill) asks the flusher for no write of its own,
        # which found nothing left to write (a call_soon and two calls per read).
        self._queued = True
        if len(packets) > PACKET_BUDGET and error is None and self.limiter is None \
                and channel.state == CONNECTED and self.flusher.holding():
            n = self._apply(channel, packets)
        elif flusher._turn_reads == 1 and 0 < len(packets) <= PROMPT_READ \
                and packets[0].packet_type == PUBLISH:
            n = self._apply_promptly(channel, packets)
            if n < len(packets) and not channel.closing and channel.pressure is not None:
                self._stash = packets[n:]
        else:
            n = _apply_packets(channel, packets)
            if n < len(packets) and not channel.closing and channel.pressure is not None:
                self._stash = packets[n:]  # backpressure: the rest waits with the socket
        if n:
            metrics.inc(PACKETS_RECEIVED, n)
        if error is not None and not channel.closing:
            # A connected client's end is logged by its disconnect line (mqttd.clients).
            log.log(logging.DEBUG if channel.state == CONNECTED else logging.INFO,
                    "closing %s (%s): %s", channel.client_id or channel.peer,
                    "0x%02X" % error.reason_code, error.message)
            channel.handle_frame_error(error, parser.version)
        if not (self._later and self._carry(channel)):  # (the first slice's: see _carry)
            self.flush()
        if flusher._pressed and not flusher._scheduled:
            flusher.schedule()  # (the look at the waiting publishers after the turn's writes)
        limiter = self.limiter
        if limiter is not None and not channel.closing:
            messages = 0
            for packet in packets[:n]:
                if packet.packet_type == PUBLISH:
                    messages += 1
            pause = limiter.check(messages, len(data), self.flusher.loop.time())
            if pause > 0:
                self._pause_reading(pause)

    def _apply_promptly(self, channel: Channel, packets: list[Any]) -> int:
        """Apply a small read's ``packets`` one at a time, writing what each queued (its
        deliveries; before the next, its acknowledgement) as soon as it is handled: a
        message that came with a few others after a late wake-up is not held for their
        handling (~50 us each at 5k msg/s), and a lone one is written now, not after the
        rest of the loop turn. Stops as ``_apply_packets`` does; returns how many were
        applied."""
        flusher = self.flusher
        last = len(packets) - 1
        n = 0
        for i, packet in enumerate(packets):
            n += _apply_packets(channel, [packet])
            if channel.closing or channel.pressure is not None:
                break
            flusher.write_now()
            if i < last and channel.out:
                self.flush()  # (the last one's goes with the read's own flush)
                self._queued = True  # (as _received marks it: no write of its own asked)
        return n

    # --- backpressure --------------------------------------------------------------------

    def _start_pressure(self) -> None:
        """The client's message went past a queue's limit: stop reading (TCP pushes back)
        until the queues it waits for have room, or the zone's timeout passes."""
        if self._pressure_timer is not None or self.transport is None or self._closing:
            return
        if self._paused_until is None:
            self.transport.pause_reading()
        self._pressure_deadline = self.loop.time() + self.zone.mqueue_backpressure_timeout
        self._pressure_timer = self.loop.call_later(PRESSURE_POLL, self._check_pressure)
        self.flusher.press(self)

    def recheck_pressure(self) -> None:
        """The flusher's look after a turn's writes: end the wait now if there is room."""
        channel = self.channel
        timer = self._pressure_timer
        if timer is None or channel is None or self._lost:
            self.flusher.release(self)
            return
        if channel.closing or channel.pressure is None or channel.pressure_room():
            timer.cancel()
            self._check_pressure()

    def _check_pressure(self) -> None:
        self._pressure_timer = None
        self.flusher.release(self)
        channel = self.channel
        if self._lost or channel is None or channel.pressure is None:
            return
        try:
            if channel.closing or channel.pressure_room():
                channel.end_pressure(False)
            elif self.loop.time() >= self._pressure_deadline:
                channel.end_pressure(True)
            else:
                self._pressure_timer = self.loop.call_later(PRESSURE_POLL,
                                                            self._check_pressure)
                self.flusher.still_waiting(self)
                return
            stash = self._stash
            self._stash = None
            if stash and not channel.closing:
                # The acknowledgements the wait held go out in one write with those of the
                # stash's packets (one write per release, not two: under flow control a
                # publisher is let go every few of the subscriber's round trips).
                self._handle_stash(channel, stash)
            else:
                self.flush()
            if self._unread and channel.pressure is None and not channel.closing \
                    and not self._later:
                data = self._unread
                self._unread = b""
                self._received(data)
        except Exception:
            self.crashed("handling its input")
            return
        if channel.pressure is None and self._paused_until is None and not self._closing \
                and self.transport is not None and not self._later:
            # The client was not idle, we were not reading: its keepalive counts from now.
            self.last_recv = self.flusher.now()
            self.transport.resume_reading()

    def _handle_stash(self, channel: Channel, packets: list[Any]) -> None:
        """Handle the packets a backpressure wait left from its read (the common PUBLISH
        through the fast path, as a read's), stopping again if one of them has to wait."""
        self._queued = True  # (written just below: see _received)
        n = self._apply(channel, packets)
        channel.metrics.inc(PACKETS_RECEIVED, n)
        if not (self._later and self._carry(channel)):
            self.flush()
        flusher = self.flusher
        if flusher._pressed and not flusher._scheduled:
            flusher.schedule()

    def _carry(self, channel: Channel) -> bool:
        """More slices come next turn: leave this one's output (its acknowledgements) for
        their write, one wake-up of the client per SLICE_CARRY packets, not per
        PACKET_BUDGET; False when it must be written now. A delivery to this client
        meanwhile finds the list non-empty and asks for no write: the next slice sees the
        list longer than carried and writes it first (take_later)."""
        if channel.hold is not None or channel.pressure is not None or channel.closing:
            return False
        n = len(channel.out)
        if n >= SLICE_CARRY:
            return False
        self._queued = False
        self._carried = n
        return True

    def _apply(self, channel: Channel, packets: list[Any]) -> int:
        """Apply ``packets`` (up to PACKET_BUDGET while someone is held); what is left
        waits in ``_stash``, for room (backpressure) or for the next turn (``_later``, the
        socket paused)."""
        if len(packets) <= PACKET_BUDGET or not self.flusher.holding():
            n = _apply_packets(channel, packets)
        else:
            n = _apply_packets(channel, packets[:PACKET_BUDGET])
        if n < len(packets) and not channel.closing:
            if channel.pressure is not None:
                self._stash = packets[n:]
            elif n == PACKET_BUDGET and channel.state == CONNECTED:
                self._stash = packets[n:]
                if not self._later:
                    self._later = True
                    transport = self.transport
                    if transport is not None and self._paused_until is None \
                            and self._pressure_timer is None:
                        transport.pause_reading()
                self.flusher.later(self)
        return n

    def take_later(self) -> None:
        """The next turn of the packets left over PACKET_BUDGET (Flusher.later); once they
        are all handled, the bytes that came meanwhile and reading go on."""
        channel = self.channel
        if not self._later or channel is None:
            return
        self._later = False
        stash = self._stash
        self._stash = None
        carried = self._carried
        if carried:
            self._carried = 0
            if len(channel.out) > carried and not self._lost:
                self.flush()  # (a delivery came in behind the carried acknowledgements)
        if self._lost or channel.closing:
            if channel.out:
                self.flush()  # (what the slices carried: see _carry)
            return
        try:
            if stash:
                self._handle_stash(channel, stash)
            if self._later or channel.pressure is not None or channel.closing:
                return  # (more next turn; or a wait, which resumes reading when it ends)
            if self._unread:
                data = self._unread
                self._unread = b""
                self._received(data)
                if self._later or channel.pressure is not None or channel.closing:
                    return
        except Exception:
            self.crashed("handling its input")
            return
        transport = self.transport
        if transport is not None and self._paused_until is None and not self._closing \
                and self._pressure_timer is None:
            transport.resume_reading()

    # --- rate limit ----------------------------------------------------------------------

    def _pause_reading(self, seconds: float) -> None:
        """Over the inbound budget: stop reading until it has recovered (TCP pushes back)."""
        if self._paused_until is not None or self.transport is None:
            return
        self.metrics.inc(CONNECTIONS_RATE_LIMITED)
        self.transport.pause_reading()
        self._paused_until = self.loop.call_later(seconds, self._resume_reading)

    def shed(self, seconds: float) -> bool:
        """Overload protection: stop reading for ``seconds`` (not counted as rate limiting);
        False if closing or already paused."""
        if self._paused_until is not None or self.transport is None or self._closing \
                or self._lost:
            return False
        self.transport.pause_reading()
        self._paused_until = self.loop.call_later(seconds, self._resume_reading)
        return True

    def _resume_reading(self) -> None:
        self._paused_until = None
        if self._lost or self.transport is None or self._pressure_timer is not None \
                or self._later:
            return  # (a backpressure wait, or the packets over the budget, resume it)
        # The client was not idle, we were not reading: its keepalive counts from now.
        self.last_recv = self.flusher.now()
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        # The client closed its side: close ours too, now or, past this loop turn's read
        # budget, in a later turn (the close and connection_lost are most of an EOF's cost).
        if self.flusher.admit():
            return False
        self.flusher.defer(self, True)
        return True

    def pause_writing(self) -> None:
        if self.channel is not None:
            self.channel.set_paused(True)

    def resume_writing(self) -> None:
        if self.channel is not None:
            self.channel.set_paused(False)
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._deferred is not None:
            # A read still put off (the socket was lost meanwhile): its DISCONNECT, if it
            # holds one, still counts (no will); nothing is written any more. A CONNECT
            # put off goes unread, as if it had still been in the socket.
            data = self._deferred
            self._deferred = None
            channel = self.channel
            if not (data[0] == _CONNECT and channel is not None and channel.state == IDLE):
                try:
                    self._received(data)
                except Exception:
                    log.exception("handling the last input of a lost connection failed")
        if self._later:
            # Packets left over the budget: handled now, as a put-off read is (a DISCONNECT
            # among them still counts); nothing is written any more.
            self._later = False
            stash = self._stash
            self._stash = None
            channel = self.channel
            if stash and channel is not None and not channel.closing \
                    and channel.pressure is None:
                try:
                    n = _apply_packets(channel, stash)
                    self.metrics.inc(PACKETS_RECEIVED, n)
                except Exception:
                    log.exception("handling the last input of a lost connection failed")
        if self._slot:
            self.flusher.deadlines.remove(self, self._slot)
            self._slot = 0
        if self._paused_until is not None:
            self._paused_until.cancel()
            self._paused_until = None
        if self._pressure_timer is not None:
            self._pressure_timer.cancel()
            self._pressure_timer = None
        flusher = self.flusher
        if flusher._pressed or flusher._waiting:  # (empty but under backpressure: no call)
            flusher.release(self)
        if self._rare is not None:  # (else both are at their defaults: no descriptor calls)
            self._stash = None
            self._unread = b""
        self.connections.discard(self)
        channel = self.channel
        if channel is not None:
            if not self._closing:  # (else flush asked for the close already, the channel
                # closing: this one's reason would not apply; a DISCONNECT's leave)
                flusher.close_later(channel, CloseReason.CLOSED, "connection lost: %s" % exc
                                    if exc else "connection closed by the client")
            # Break the cycles (transport <-> connection -> channel -> its wakeup, which is
            # this connection): the client's objects go at once, by reference counting,
            # not at the collector's next full pass, when thousands have piled up.
            channel.wakeup = None
            if channel.origin.transport == "tcp":  # its peer is asked of this connection, which
                channel.peer = self.peername()  # lets go of the transport: kept now
        self.transport = None

    # --- output ------------------------------------------------------------------------

    def __call__(self) -> None:
        """The channel's wakeup: it has output for this connection to write."""
        if not self._queued and not self._lost:
            self._queued = True
            self.flusher.add(self)

    def flush(self) -> None:
        """Write everything pending in one call; close if the channel has ended."""
        self._queued = False
        transport = self.transport
        channel = self.channel
        if channel is None:  # (no socket yet: nothing to write)
            return
        out = channel.out  # (the channel's output list: the only one, no slot here)
        if transport is None or self._lost:
            out.clear()
            return
        held = False
        if out:
            n = len(out)
            if channel.hold is not None or channel.pressure is not None:
                if channel.closing and channel.pressure is not None:
                    channel.end_pressure(False)  # the acknowledgements go with the close
                # Acknowledgements of what the store has not committed yet wait for it;
                # under backpressure, for room in the queues (Channel.pressure).
                n = channel.releasable()
                if n < len(out):
                    held = True
                    if channel.hold is not None:
                        self.flusher.hold(self)
            if n == len(out):
                data = out[0] if n == 1 else b"".join(out)
                out.clear()
                channel.out = NO_OUT  # (an idle client holds no list: the next packet makes one)
            elif n:
                data = b"".join(out[:n])
                del out[:n]
            else:
                data = b""
            if data:
                transport.write(data)
                channel.metrics.inc(BYTES_SENT, len(data))
        if channel is not None and channel.pressure is not None \
                and self._pressure_timer is None and not channel.closing:
            # Here, not after a read only: packets held through authentication are
            # handled after CONNACK, outside any read.
            self._start_pressure()
        if not self._keepalive_armed and channel is not None and channel.state == CONNECTED:
            # After CONNACK, whether it went out in this read's turn or when an
            # authentication running off the loop answered.
            self._keepalive_armed = True
            self._start_keepalive()
        if channel is not None and channel.closing and not self._closing and not held:
            # The channel is finished now, not when the peer gets round to closing its
            # side (the linger can take seconds; a dead peer never does): its will and
            # its session's expiry start at once (in a later turn, a slice at a time).
            self.flusher.close_later(channel, CloseReason.CLOSED, "")
            rare = channel._rare  # (the Rare field read from the dict: no descriptor call)
            if rare is not None and rare.get("normal_disconnect"):
                # The client said goodbye and sends nothing after its DISCONNECT
                # [MQTT-3.14.4-1]: close now (FIN after what is pending), no half-close, no
                # linger, no EOF to wait for (an event per socket when thousands leave).
                self._closing = True
                if self._slot:
                    self.flusher.deadlines.remove(self, self._slot)
                    self._slot = 0
                transport.close()
            else:
                self._close_lingering(transport)

    def _close_lingering(self, transport: Any) -> None:
        """Close our side, but keep reading (and discarding) a little while.

        Closing a socket that still receives data makes the kernel answer with
        RST, which can destroy our last DISCONNECT in the client's receive
        buffer and break its pending writes. Half-close instead (FIN after the
        pending output), discard what arrives, and abort after LINGER seconds.
        """
        self._closing = True
        if self._slot:
            self.flusher.deadlines.remove(self, self._slot)
            self._slot = 0
        if self._pressure_timer is not None:
            self._pressure_timer.cancel()
            self._pressure_timer = None
            self.flusher.release(self)
            if self._paused_until is None:
                transport.resume_reading()
        if self._paused_until is not None:  # drain what the client sends while we linger
            self._paused_until.cancel()
            self._paused_until = None
            transport.resume_reading()
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                # The peer is gone already (asyncio's selector transport shuts the socket
                # down at once and says ENOTCONN): nothing to linger for.
                transport.abort()
                return
            # On the deadlines' one timer, not a timer each: 19,000 clients leaving at once
            # made 19,000 timer handles and heap insertions in the turns of their closes.
            self._slot = self.flusher.deadlines.add(self, self.loop.time() + LINGER)
        else:
            transport.close()

    # --- timers ------------------------------------------------------------------------

    def deadline(self) -> None:
        """This connection's tick in ``flusher.deadlines`` came due: the connect timeout
        before CONNACK, the keepalive after, the end of the linger once closing."""
        if self._lost:
            return
        if self._closing:
            if self.transport is not None:
                self.transport.abort()  # the client did not close its side in time
            return
        if self._keepalive_armed:
            self._on_keepalive()
        else:
            self._on_connect_timeout()

    def _on_connect_timeout(self) -> None:
        channel = self.channel
        if channel is not None and channel.state in (IDLE, AUTHENTICATING):
            log.info("closing %s: %s within %ss", channel.peer,
                     "authentication did not answer" if channel.state == AUTHENTICATING
                     else "no CONNECT", self.zone.idle_timeout)
            channel.handle_timeout("connect")
            self.flush()

    def _start_keepalive(self) -> None:
        deadlines = self.flusher.deadlines
        if self._slot:
            deadlines.remove(self, self._slot)
            self._slot = 0
        channel = self.channel
        assert channel is not None
        if channel.keepalive:
            self._slot = deadlines.add(self, self.last_recv + self._keepalive_window())

    def _keepalive_window(self) -> float:
        assert self.channel is not None
        return self.channel.keepalive * self.zone.keepalive_backoff * 2

    def _on_keepalive(self) -> None:
        channel = self.channel
        if channel is None or channel.closing or self._lost:
            return
        deadline = self.last_recv + self._keepalive_window()
        if self._paused_until is not None or self._pressure_timer is not None:
            # The rate limiter or a backpressure wait holds the client: not idle.
            deadline = self.loop.time() + self._keepalive_window()
        if self.loop.time() >= deadline:
            log.debug("client %s: keepalive timeout", channel.client_id)  # and its disconnect line
            channel.handle_timeout("keepalive")
            self.flush()
        else:
            self._slot = self.flusher.deadlines.add(self, deadline)

    def shutdown(self, code: int) -> None:
        """Server shutdown: tell the client (MQTT 5) and close."""
        if self.channel is not None:
            self.channel.kick(code, CloseReason.SHUTDOWN, "server shutting down")
        self.flush()

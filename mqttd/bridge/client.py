"""One bridge: an MQTT client connection to a remote broker over an asyncio protocol.

Egress: :meth:`Bridge.offer` is given every message the local broker publishes (through
``Broker.egress``, which the PUBLISH fast path calls too); a match of an egress filter is
encoded at once (QoS 0) or queued (QoS 1/2) and sent within the in-flight window, so
nothing waits on the remote and no task is created per message. What a loop turn produces
goes out in one ``transport.write`` (after the turn's reads, or from one ``call_soon``); a
bridge that is behind refills its window by batches, a small refill waiting at most 1 ms
(``flush``). The
queue is bounded (``max_queued``): past it the oldest message is dropped and counted. While
connected, a queue at ``pause_queued`` makes the local publisher of one more wait (the
core's backpressure: ``session.OVERFULL``, its PUBACK held and its reading paused) until the
queue is below it again, so publishers cannot outrun the remote. Ingress: the remote's
PUBLISHes are published locally with the broker's publish, acknowledged once the broker has
taken them.

Loop prevention: messages that came in through this bridge carry the sender
``$bridge/<name>`` and are never sent back out by it; on MQTT 5 the ingress subscriptions
also have No Local, so the remote does not return what the bridge published.

The connection is retried forever with exponential back-off (``reconnect_min`` doubled up
to ``reconnect_max``); the reason of the last failure is kept for ``mqttd ctl bridges``.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import math
import ssl
import sys
import time
from array import array
from collections import deque
from typing import Any, cast

from ..config import BridgeMapping, BridgeSettings
from ..core.broker import Broker
from ..core.message import Message
from ..core.services import Delivery
from ..core.session import OVERFULL
from ..mqtt.codec import MAX_PACKET_SIZE, PacketError, Parser, encode, encode_publish
from ..mqtt.packets import (
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
)
from ..mqtt.topics import match
from ..store.kv import KVSpace

__all__ = ["Bridge", "TlsFilesError", "tls_context"]

log = logging.getLogger("mqttd.bridge")

#: Seconds a TCP/TLS connect and then the CONNACK may take before the attempt fails.
CONNECT_TIMEOUT = 10.0
#: Bytes waiting in the socket's write buffer past which QoS 0 messages are dropped (the
#: remote is not reading; QoS 1/2 wait in the bounded queue instead).
WRITE_BUFFER_LIMIT = 4 * 1024 * 1024
#: Bytes waiting in it at which a publisher of one more QoS 0 message waits for the remote
#: to read (unless ``pause_queued`` is 0), well before the drops above.
PAUSE_BUFFERED = 1024 * 1024
#: Encoded QoS 0 PUBLISHes that are written at once rather than at the end of the loop
#: turn: one turn can bring megabytes from publishers (libuv reads a socket up to 32
#: times per wake-up), and the socket's buffer must show them to the checks above.
WRITE_BATCH = 256
#: Seconds the records of acknowledged messages wait at most for a commit to join.
FORGET_WITHIN = 0.01
#: Seconds a refill of the in-flight window smaller than a batch (an eighth of the window;
#: a window under 16 never waits) waits at most for more acknowledgements, while more
#: messages are queued than there is room for (``flush``). Not less: uvloop's timers count
#: whole milliseconds (a shorter delay is the next loop turn).
HOLD_WITHIN = 0.001
#: Packet ids are big-endian; ``array("H")`` reads in the machine's order.
_LITTLE = sys.byteorder == "little"
#: Properties that belong to one hop and are not carried to the other side.
_HOP_PROPERTIES = ("topic_alias", "subscription_identifier")
#: Topics whose egress route (remote topic and QoS cap, or none) is remembered; past it
#: the memory starts again (a lookup instead of matching every mapping per message).
ROUTE_CACHE = 4096
#: The format of a stored message: marshal of (_RECORD, remote topic, payload, QoS, retain,
#: MQTT 5 properties, wall-clock expiry or 0). Written as version 2 (no back-references:
#: faster to write, and read by the same ``marshal.loads`` as the version 4 written before).
_RECORD = 1
#: ``_routes.get``'s answer for a topic not looked at yet.
_UNSET: tuple[int, str] = (-1, "")


class _Out:
    """A QoS 1/2 message on its way to the remote."""

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "expiry", "pubrel", "key")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool,
                 properties: dict[str, Any], expiry: float, key: str = "") -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        #: The message's monotonic deadline (Message Expiry Interval), 0.0: none.
        self.expiry = expiry
        #: QoS 2: PUBREC received, PUBREL sent (the remote has the message).
        self.pubrel = False
        #: Its record in the store's KV space ("": not stored).
        self.key = key

    def record(self) -> bytes:
        """What the store keeps: the expiry as a wall-clock time (monotonic restarts)."""
        expiry = time.time() + (self.expiry - time.monotonic()) if self.expiry else 0.0
        return marshal.dumps((_RECORD, self.topic, self.payload, self.qos, self.retain,
                              self.properties, expiry), 2)

    @classmethod
    def from_record(cls, key: str, value: bytes) -> _Out:
        """The message a record holds (ValueError, TypeError: not one of ours)."""
        version, topic, payload, qos, retain, props, expiry = marshal.loads(value)
        if version != _RECORD or not isinstance(topic, str) or qos not in (1, 2) \
                or not isinstance(payload, bytes) or not isinstance(props, dict):
            raise ValueError("not a bridge record")
        if expiry:
            expiry = time.monotonic() + (expiry - time.time())
        return cls(topic, payload, qos, bool(retain), props, float(expiry), key)


class _Protocol(asyncio.Protocol):
    """The socket's end: bytes in to the parser, packets to the bridge."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.parser = Parser(MAX_PACKET_SIZE, bridge.settings.protocol_version)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        bridge = self.bridge
        inflight, acked = bridge.inflight, bridge._acked
        n = 0
        k = len(data) >> 2
        pids = None
        if not len(data) & 3 and self is bridge._proto and not self.parser.buffered \
                and data[0::4].count(0x40) == k and data[1::4].count(2) == k:
            # The common read: PUBACKs of success only (40 02 id id; MQTT 5 leaves out
            # reason code 0), their packet ids read at once, no packet object each (id 0,
            # a protocol error, goes to the parser, which says so).
            ids = array("H", data)
            if _LITTLE:
                ids.byteswap()
            pids = ids[1::2]
            if 0 in pids:
                pids = None
        if pids is not None:
            bridge._ping_due = False
            for pid in pids:
                out = inflight.pop(pid, None)
                if out is not None:
                    n += 1
                    if out.key:
                        acked.append(out.key)
        else:
            try:
                packets = self.parser.feed(data)
            except PacketError as err:
                for packet in err.packets or ():
                    bridge.on_packet(self, packet)
                bridge._forget_acked(now=True)
                bridge.fail(self, f"the remote sent a bad packet: {err}")
                return
            for packet in packets:
                # A PUBACK of an egress message without on_packet's and _done's frames
                # (as they handle it).
                if type(packet) is Puback and packet.reason_code < 0x80 \
                        and self is bridge._proto:
                    bridge._ping_due = False
                    out = inflight.pop(packet.packet_id, None)
                    if out is not None:
                        n += 1
                        if out.key:
                            acked.append(out.key)
                else:
                    bridge.on_packet(self, packet)
        if n:
            bridge._acked_n += n
        if acked or n:
            bridge._forget_acked()
        if self is bridge._proto:  # what the turn's reads produced (the window refilled
            bridge._flush_soon()  # after every acknowledgement of the turn): one write

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.on_lost(self, exc)


class Bridge:
    """One ``[bridges.<name>]``: its connection, queue, state and counters."""

    def __init__(self, settings: BridgeSettings, broker: Broker, node: str) -> None:
        self.settings = s = settings
        self.broker = broker
        self.name = s.name
        #: The sender of what came in through this bridge: never sent back out by it.
        self.marker = f"$bridge/{s.name}"
        self.client_id = s.client_id or f"{node}-bridge-{s.name}"
        host, _, port = s.address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.version = s.protocol_version
        #: stopped | connecting | connected | waiting (for the next attempt)
        self.state = "stopped"
        self.last_error = ""
        self.last_error_at = 0.0
        self.connected_since = 0.0
        #: The last CONNACK's Session Present: the remote kept the bridge's session.
        self.session_present = False
        self.next_attempt_at = 0.0
        self.attempts = 0
        self.queue: deque[_Out] = deque()
        self.inflight: dict[int, _Out] = {}
        self.counters = dict.fromkeys(
            ("sent", "acked", "received", "dropped_queue_full", "dropped_qos0_offline",
             "dropped_refused", "expired", "ingress_refused", "connects", "connect_failures",
             "held"),
            0)
        self._proto: _Protocol | None = None
        #: Encoded packets to write at the end of the loop turn (``flush``).
        self._wbuf: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        #: A refill waiting for more acknowledgements (``flush``).
        self._hold: asyncio.TimerHandle | None = None
        #: topic -> (QoS cap, remote topic), None: no egress mapping matches.
        self._routes: dict[str, tuple[int, str] | None] = {}
        #: The queue depth at which publishers wait (``pause_queued`` while connected,
        #: else never: while the remote is down the queue is the buffer).
        self._pause_at: float = math.inf
        #: The store's space for the queue and the window (None: durability off), and the
        #: last key given (keys sort in queue order).
        self._kv: KVSpace | None = None
        self._seq = 0
        #: Keys of the messages the remote acknowledged in this read: deleted from the
        #: store together at its end (one operation of the store's log for all of them).
        self._acked: list[str] = []
        #: Acknowledgements not counted yet (``_forget_acked`` counts them with the deletes).
        self._acked_n = 0
        self._forget_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_due = False
        self._window = s.max_inflight
        self._max_queued = s.max_queued
        self._next_id = 0
        self._rx_qos2: set[int] = set()
        self._keepalive = s.keepalive
        #: Why the current connection is being ended (said when it is gone).
        self._why = ""

    def restore(self, kv: KVSpace | None) -> int:
        """Keep the queue and the window in ``kv`` from now on, and queue what it held
        (the messages of a previous run not acknowledged by the remote); how many."""
        self._kv = kv
        if kv is None or not kv.records:
            return 0
        restored: list[_Out] = []
        now = time.monotonic()
        for key in sorted(kv.records, key=_key_order):
            try:
                out = _Out.from_record(key, kv.records[key])
            except (ValueError, TypeError, EOFError) as err:
                log.warning("bridge %s: stored record %s is not a message (%s): dropped",
                            self.name, key, err)
                kv.delete(key)
                continue
            if out.expiry and out.expiry <= now:
                self.counters["expired"] += 1
                kv.delete(key)
                continue
            restored.append(out)
        for key in kv.records:  # new keys after every stored one (ours are hex numbers)
            self._seq = max(self._seq, _key_order(key)[0])
        self.queue.extend(restored)
        return len(restored)

    @property
    def stored(self) -> bool:
        """Whether its queue is kept in the durable store."""
        return self._kv is not None

    def take_over(self, old: Bridge) -> None:
        """Carry on from ``old`` (stopped; the same bridge before a reload changed its
        settings): its queue, what it had in flight (sent again), its store space and
        counters."""
        pending = [o for o in old.inflight.values() if not o.pubrel]
        for out in old.inflight.values():
            if out.pubrel:  # the remote has it
                old._forget(out)
        self.queue.extend(pending)
        self.queue.extend(old.queue)
        old.queue.clear()
        old.inflight.clear()
        self._kv, self._seq = old._kv, old._seq
        self.counters.update(old.counters)

    def _forget(self, out: _Out) -> None:
        """``out`` is done with (acknowledged, refused, dropped, expired): its record goes."""
        if out.key and self._kv is not None:
            self._kv.delete(out.key)

    def _forget_acked(self, now: bool = False) -> None:
        """The records of what the remote acknowledged go, together, and are counted as
        acknowledged. With the store they join a commit of the loop turn that happens
        anyway (new messages) or wait for more of them (a window's worth, or
        ``FORGET_WITHIN``): a read of a few PUBACKs does not cost a commit of its own. A
        record left by a crash meanwhile is sent again (at least once, as for what is in
        flight); the ``acked`` count is never ahead of the store."""
        acked = self._acked
        kv = self._kv
        if kv is not None and acked and not now and len(acked) < self._window \
                and not kv.committing:
            if self._forget_timer is None:
                self._forget_timer = asyncio.get_running_loop().call_later(
                    FORGET_WITHIN, self._forget_acked, True)
            return
        if self._forget_timer is not None:
            self._forget_timer.cancel()
            self._forget_timer = None
        if acked:
            if kv is not None:
                kv.delete_many(acked)
            acked.clear()
        if self._acked_n:
            self.counters["acked"] += self._acked_n
            self._acked_n = 0

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.state != "stopped"

    def start(self) -> None:
        """Connect (in the background); nothing waits for the remote."""
        if self.running:
            return
        self.attempts = 0
        self._connect_soon(0.0)

    def stop(self) -> None:
        """Disconnect and stop retrying; queued messages are kept for the next start."""
        self.state = "stopped"
        self._cancel_timers()
        self._forget_acked(now=True)
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._proto is not None and self.connected_since:
            self.flush(pump=False)  # what is pending, not more of the queue
        proto, self._proto = self._proto, None
        self._disconnected()
        if proto is not None and proto.transport is not None:
            if self.connected_since:
                proto.transport.write(encode(Disconnect(), self.version))
            proto.transport.close()
        self.connected_since = 0.0

    def _disconnected(self) -> None:
        """The connection is gone: what was to be written on it goes, publishers go on."""
        self._wbuf.clear()
        self._pause_at = math.inf
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None

    async def aclose(self) -> None:
        task = self._task
        self.stop()
        if task is not None:
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._ping_timer = None

    def _connect_soon(self, delay: float) -> None:
        self._cancel_timers()
        loop = asyncio.get_running_loop()
        if delay <= 0:
            self.state = "connecting"
            self._task = loop.create_task(self._connect(), name=f"bridge {self.name} connect")
            return
        self.state = "waiting"
        self.next_attempt_at = time.time() + delay
        self._timer = loop.call_later(delay, self._connect_soon, 0.0)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            ctx = tls_context(self.settings)  # the files are read at each attempt
        except TlsFilesError as err:
            self._failed("TLS files: " + "; ".join(err.problems))
            if self._task is asyncio.current_task():
                self._task = None
            return
        try:
            _, proto = await asyncio.wait_for(loop.create_connection(
                lambda: _Protocol(self), self.host, self.port, ssl=ctx,
                server_hostname=self.host if ctx is not None else None), CONNECT_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self._failed(f"connect to {self.settings.address}: timed out after "
                         f"{CONNECT_TIMEOUT:g} s")
            return
        except (OSError, ssl.SSLError, ValueError) as err:
            self._failed(f"connect to {self.settings.address}: "
                         f"{getattr(err, 'strerror', None) or err}")
            return
        finally:
            if self._task is asyncio.current_task():  # not a newer one after stop/start
                self._task = None
        if self.state != "connecting":  # stopped meanwhile
            if proto.transport is not None:
                proto.transport.close()
            return
        self._proto = proto
        self._wbuf.clear()
        s = self.settings
        props: dict[str, Any] = {}
        if self.version == 5 and s.session_expiry:
            props["session_expiry_interval"] = s.session_expiry
        # 0x80 | level: mosquitto's bridge marker (try_private), on 3.1.1 only.
        level = 0x84 if self.version == 4 and s.try_private else self.version
        self._write(proto, Connect(
            proto_level=level, clean_start=s.clean_start, keepalive=s.keepalive,
            client_id=self.client_id, username=s.username or None,
            password=s.password.encode() if s.password else None, properties=props))
        # The CONNACK must come in time, or the attempt fails.
        self._timer = loop.call_later(CONNECT_TIMEOUT, self.fail, proto,
                                      f"no CONNACK within {CONNECT_TIMEOUT:g} s")

    def _failed(self, why: str) -> None:
        """An attempt failed (or the connection ended): note why and retry later."""
        self.counters["connect_failures"] += 1
        if why != self.last_error:
            log.warning("bridge %s: %s; retrying with back-off", self.name, why)
        self.last_error = why
        self.last_error_at = time.time()
        if self.state == "stopped":
            return
        s = self.settings
        delay = min(s.reconnect_max, s.reconnect_min * 2 ** min(self.attempts, 30))
        self.attempts += 1
        self._connect_soon(delay)

    def fail(self, proto: _Protocol, why: str) -> None:
        """End this connection for ``why`` (on_lost then schedules the retry)."""
        if proto is not self._proto:
            return
        self._why = why
        if proto.transport is not None:
            proto.transport.abort()

    def on_lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        self._forget_acked(now=True)
        self._disconnected()
        if self.connected_since:
            self.attempts = 0
        self.connected_since = 0.0
        why = self._why or (f"connection lost: {exc}" if exc else
                            "connection closed by the remote")
        self._why = ""
        if self.state == "stopped":
            return
        if self.state == "connected":
            self.last_error = ""  # logged again: the bridge was up meanwhile
        self._failed(why)

    # --- the wire -----------------------------------------------------------------------

    def _write(self, proto: _Protocol, packet: Any) -> None:
        """Encode ``packet`` for the end of this loop turn's write."""
        if proto is self._proto:
            self._wbuf.append(encode(packet, self.version))
            self._flush_soon()
        elif proto.transport is not None:  # (the CONNECT, before the connection is ours)
            proto.transport.write(encode(packet, self.version))

    def _flush_soon(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flushed)

    def _flushed(self) -> None:
        self._flush_handle = None
        self.flush()

    def _held(self) -> None:
        self._hold = None
        self.flush(hold=False)

    def flush(self, pump: bool = True, hold: bool = True) -> None:
        """Fill the in-flight window from the queue (``pump``) and write everything pending
        at once.

        While more messages are queued than the window has room for, a refill of less than
        a batch (an eighth of the window; one under 16 never waits) waits up to
        ``HOLD_WITHIN`` for more acknowledgements (``hold``: it may; the timer's call may
        not), unless something else is to be written anyway. Without it a remote on the
        same machine wakes this loop with every few PUBACKs it writes, and each wake-up
        takes the CPU from it (bench/RESULTS.md, issue 16); with Nagle's algorithm at the
        remote (mosquitto's default) its next PUBACKs wait for our ACK, which rides on the
        refill, so the bound is what keeps the bridge going. Never waits with fewer queued
        than there is room for (a bridge that is not behind sends at once)."""
        if self._acked:  # (the turn may commit now: new messages came after the read)
            self._forget_acked()
        proto = self._proto
        if proto is None or proto.transport is None:
            self._wbuf.clear()
            return
        if pump and self.queue and len(self.inflight) < self._window:
            free = self._window - len(self.inflight)
            if hold and free < self._window >> 3 and len(self.queue) > free \
                    and not self._wbuf:
                if self._hold is None:
                    self.counters["held"] += 1
                    self._hold = asyncio.get_running_loop().call_later(
                        HOLD_WITHIN, self._held)
                return
            if self._hold is not None:
                self._hold.cancel()
                self._hold = None
            self._pump()
        wbuf = self._wbuf
        if wbuf:
            data = wbuf[0] if len(wbuf) == 1 else b"".join(wbuf)
            wbuf.clear()
            proto.transport.write(data)

    def on_packet(self, proto: _Protocol, packet: Any) -> None:
        if proto is not self._proto:
            return
        self._ping_due = False
        if isinstance(packet, Publish):
            self._ingress(proto, packet)
        elif isinstance(packet, Puback):
            self._done(packet.packet_id, packet.reason_code)
        elif isinstance(packet, Pubrec):
            out = self.inflight.get(packet.packet_id)
            if out is None:
                self._write(proto, Pubrel(packet.packet_id, 0x92))
            elif packet.reason_code >= 0x80:
                self._done(packet.packet_id, packet.reason_code)
            else:
                out.pubrel = True
                self._write(proto, Pubrel(packet.packet_id))
        elif isinstance(packet, Pubcomp):
            self._done(packet.packet_id, packet.reason_code)
        elif isinstance(packet, Pubrel):
            self._rx_qos2.discard(packet.packet_id)
            self._write(proto, Pubcomp(packet.packet_id))
        elif isinstance(packet, Connack):
            self._connack(proto, packet)
        elif isinstance(packet, Suback):
            refused = [i for i, rc in enumerate(packet.reason_codes) if rc >= 0x80]
            for i in refused:
                if i < len(self.settings.ingress):
                    self.last_error = (f"subscription to {self.settings.ingress[i].filter!r} "
                                       f"refused by the remote (0x{packet.reason_codes[i]:02X})")
                    self.last_error_at = time.time()
                    log.warning("bridge %s: %s", self.name, self.last_error)
        elif isinstance(packet, Disconnect):
            self._why = f"the remote disconnected (reason 0x{packet.reason_code:02X})"
        elif isinstance(packet, Pingresp):
            pass
        else:
            self.fail(proto, f"the remote sent an unexpected {type(packet).__name__}")

    def _connack(self, proto: _Protocol, ack: Connack) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if ack.reason_code:
            self.fail(proto, f"the remote refused the connection: CONNACK "
                             f"0x{ack.reason_code:02X}")
            return
        self.state = "connected"
        self._pause_at = self.settings.pause_queued or math.inf
        self.connected_since = time.time()
        self.session_present = ack.session_present
        self.attempts = 0
        self.counters["connects"] += 1
        self.last_error = ""
        log.info("bridge %s connected to %s as %s (MQTT %s)", self.name,
                 self.settings.address, self.client_id, "5" if self.version == 5 else "3.1.1")
        props = ack.properties
        self._window = min(self.settings.max_inflight,
                           props.get("receive_maximum", 65535) or 65535)
        self._keepalive = props.get("server_keep_alive", self.settings.keepalive)
        ingress = self.settings.ingress
        if ingress:
            self._write(proto, Subscribe(self._packet_id(), [
                (m.filter, SubOpts(m.qos, no_local=self.version == 5,
                                   retain_as_published=self.version == 5))
                for m in ingress]))
        # What was in flight: resent in the resumed session, else sent again from the
        # queue's front (a QoS 2 message whose PUBREC came is the remote's already).
        if ack.session_present:
            for pid, out in self.inflight.items():
                self._wbuf.append(encode(Pubrel(pid), self.version) if out.pubrel
                                  else self._encode(out, pid, True))
        else:
            pending = [o for o in self.inflight.values() if not o.pubrel]
            for out in self.inflight.values():
                if out.pubrel:
                    self._forget(out)
            self.counters["acked"] += len(self.inflight) - len(pending)
            self.inflight.clear()
            self.queue.extendleft(reversed(pending))
            self._rx_qos2.clear()
        self.flush()
        if self._keepalive:
            self._ping_timer = asyncio.get_running_loop().call_later(
                self._keepalive, self._ping)

    def _ping(self) -> None:
        proto = self._proto
        if proto is None or self.state != "connected":
            return
        if self._ping_due:
            self.fail(proto, f"no answer from the remote within the keepalive "
                             f"({self._keepalive} s)")
            return
        self._ping_due = True
        self._write(proto, Pingreq())
        self._ping_timer = asyncio.get_running_loop().call_later(self._keepalive, self._ping)

    def _packet_id(self) -> int:
        pid = self._next_id
        while True:
            pid = pid % 65535 + 1
            if pid not in self.inflight:
                self._next_id = pid
                return pid

    def _encode(self, out: _Out, pid: int, dup: bool) -> bytes:
        props = out.properties
        if out.expiry and self.version == 5:
            props = _left(props, out.expiry)
        return encode_publish(out.topic, out.payload, out.qos, out.retain, dup, pid, props,
                              self.version)

    def _pump(self) -> None:
        """Move queued messages into the in-flight window, encoded into the pending write."""
        if self.state != "connected":
            return
        queue, inflight, wbuf = self.queue, self.inflight, self._wbuf
        window = self._window
        version = self.version
        now = time.monotonic()
        sent = expired = 0
        while queue and len(inflight) < window:
            out = queue.popleft()
            if out.expiry and now >= out.expiry:  # expired while it waited: not sent
                expired += 1
                self._forget(out)
                continue
            pid = self._next_id % 65535 + 1  # _packet_id inlined: the next free id
            while pid in inflight:
                pid = pid % 65535 + 1
            self._next_id = pid
            inflight[pid] = out
            wbuf.append(self._encode(out, pid, False) if out.expiry and version == 5 else
                        encode_publish(out.topic, out.payload, out.qos, out.retain, False, pid,
                                       out.properties, version))
            sent += 1
        self.counters["sent"] += sent
        if expired:
            self.counters["expired"] += expired

    def _done(self, pid: int, reason: int) -> None:
        """The remote acknowledged ``pid`` (the read's ``flush`` refills the window)."""
        out = self.inflight.pop(pid, None)
        if out is None:
            return
        if out.key:
            self._acked.append(out.key)  # deleted after the read (_forget_acked)
        if reason >= 0x80:
            self.counters["dropped_refused"] += 1
            log.info("bridge %s: the remote refused a message (0x%02X)", self.name, reason)
        else:
            self._acked_n += 1  # counted with the deletes

    # --- backpressure (core.services.Backlog) ----------------------------------------------

    def has_room(self) -> bool:
        """Whether a publisher waiting for this bridge may go on."""
        if len(self.queue) >= self._pause_at:
            return False
        proto = self._proto
        return proto is None or proto.transport is None or self._pause_at == math.inf \
            or proto.transport.get_write_buffer_size() < PAUSE_BUFFERED

    def trim(self) -> list[Delivery]:
        """A publisher's wait timed out: nothing is dropped (``max_queued`` bounds the
        queue), the publisher just goes on."""
        return []

    # --- egress -------------------------------------------------------------------------

    def offer(self, msg: Message) -> None:
        """A message published locally: forward it if an egress filter matches."""
        if msg.sender == self.marker:
            return  # came in through this bridge: never sent back
        topic = msg.topic
        route = self._routes.get(topic, _UNSET)
        if route is _UNSET:
            route = self._route(topic)
        if route is None:
            return
        cap, remote_topic = route
        qos = msg.qos if msg.qos < cap else cap
        props = msg.properties
        if props and any(k in props for k in _HOP_PROPERTIES):
            props = {k: v for k, v in props.items() if k not in _HOP_PROPERTIES}
        if qos == 0:
            proto = self._proto
            if proto is None or self.state != "connected" or proto.transport is None:
                self.counters["dropped_qos0_offline"] += 1
                return
            buffered = proto.transport.get_write_buffer_size()
            if buffered >= PAUSE_BUFFERED:
                if buffered > WRITE_BUFFER_LIMIT:
                    self.counters["dropped_qos0_offline"] += 1
                    return
                if self._pause_at != math.inf:
                    OVERFULL.append(self)  # the publisher waits for the remote to read
            if msg.expiry and self.version == 5:
                props = _left(props, msg.expiry)
            wbuf = self._wbuf
            wbuf.append(encode_publish(remote_topic, msg.payload, 0, msg.retain, False, 0,
                                       props, self.version))
            self.counters["sent"] += 1
            if len(wbuf) >= WRITE_BATCH:
                self.flush()
            elif self._flush_handle is None:
                self._flush_soon()
            return
        queue = self.queue
        kv = self._kv
        payload, retain = msg.payload, msg.retain
        if kv is not None:  # committed before the publisher's PUBACK goes (Channel.hold)
            self._seq = seq = self._seq + 1
            key = hex(seq)  # (restore orders the keys by their number)
            out = _Out(remote_topic, payload, qos, retain, props, msg.expiry, key)
            kv.put_new(key, out.record() if msg.expiry else marshal.dumps(
                (_RECORD, remote_topic, payload, qos, retain, props, 0.0), 2))
        else:
            out = _Out(remote_topic, payload, qos, retain, props, msg.expiry)
        queue.append(out)
        n = len(queue)
        if n > self._max_queued:
            self._forget(queue.popleft())
            n = self.counters["dropped_queue_full"] = self.counters["dropped_queue_full"] + 1
            if n == 1 or n % 1000 == 0:
                log.warning("bridge %s: queue full (max_queued %d): oldest message dropped "
                            "(%d so far)", self.name, self.settings.max_queued, n)
        elif n >= self._pause_at:
            OVERFULL.append(self)  # the publisher waits for room (Channel._press)
        if self._flush_handle is None and len(self.inflight) < self._window:
            self._flush_soon()

    def _route(self, topic: str) -> tuple[int, str] | None:
        mapping = _first(self.settings.egress, topic)
        route = None if mapping is None else (mapping.qos, mapping.prefix + topic)
        routes = self._routes
        if len(routes) >= ROUTE_CACHE:
            routes.clear()
        routes[topic] = route
        return route

    # --- ingress ------------------------------------------------------------------------

    def _ingress(self, proto: _Protocol, p: Publish) -> None:
        self.counters["received"] += 1
        if p.qos == 2:
            if p.packet_id in self._rx_qos2:  # a resend of one already published
                self._write(proto, Pubrec(p.packet_id))
                return
        mapping = _first(self.settings.ingress, p.topic)
        prefix = mapping.prefix if mapping is not None else ""
        props = p.properties
        if props and any(k in props for k in _HOP_PROPERTIES):
            props = {k: v for k, v in props.items() if k not in _HOP_PROPERTIES}
        n = self.broker.publish(Message(prefix + p.topic, p.payload, p.qos, p.retain,
                                        props or None, self.marker))
        # -1: the store is full. MQTT 5 says so (0x97 quota exceeded); 3.1.1 has no way
        # to, and the message is acknowledged and lost, as for a client's.
        code = 0x97 if n < 0 and self.version == 5 else 0
        if n < 0:
            self.counters["ingress_refused"] += 1
        if p.qos == 1:
            self._write(proto, Puback(p.packet_id, code))
        elif p.qos == 2:
            if not code:
                self._rx_qos2.add(p.packet_id)
            self._write(proto, Pubrec(p.packet_id, code))

    # --- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.time()
        s = self.settings
        return {
            "name": self.name, "state": self.state, "address": s.address,
            "protocol": "5" if self.version == 5 else "3.1.1", "tls": s.tls,
            "client_id": self.client_id, "queued": len(self.queue),
            "inflight": len(self.inflight), "max_queued": s.max_queued,
            "last_error": self.last_error or None,
            "last_error_at": self.last_error_at or None,
            "connected_since": self.connected_since or None,
            "session_present": self.session_present,
            "next_attempt_in": round(max(0.0, self.next_attempt_at - now), 1)
            if self.state == "waiting" else None,
            "egress": [f"{m.filter} -> {m.prefix}<topic> qos<={m.qos}" for m in s.egress],
            "ingress": [f"{m.filter} -> {m.prefix}<topic> qos<={m.qos}" for m in s.ingress],
            **self.counters,
        }


class TlsFilesError(Exception):
    """A bridge's TLS files cannot be used: one line per problem, each naming the key and
    the file."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _no_password() -> bytes:
    raise ValueError("the key is encrypted (a bridge's keyfile cannot have a password)")


def tls_context(s: BridgeSettings) -> ssl.SSLContext | None:
    """The bridge's client TLS context (None without ``tls``); TlsFilesError says what is
    wrong with which file (``mqttd config check`` asks too)."""
    if not s.tls:
        return None
    problems = []
    for key in ("cafile", "certfile", "keyfile"):
        name = getattr(s, key)
        if name:
            try:
                with open(name, "rb"):
                    pass
            except OSError as err:
                problems.append(f"{key}: cannot read {name}: {err.strerror or err}")
    if problems:
        raise TlsFilesError(problems)
    try:
        ctx = ssl.create_default_context(cafile=s.cafile or None)
    except (ssl.SSLError, ValueError) as err:
        raise TlsFilesError([f"cafile: {s.cafile}: no PEM certificate in it "
                             f"({getattr(err, 'reason', None) or err})"]) from None
    if not s.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if s.certfile:
        try:
            ctx.load_cert_chain(s.certfile, s.keyfile, password=_no_password)
        except ValueError as err:
            raise TlsFilesError([f"keyfile: {s.keyfile}: {err}"]) from None
        except ssl.SSLError as err:
            raise TlsFilesError([f"certfile/keyfile: {s.certfile} with {s.keyfile}: not a "
                                 f"certificate and its key ({err.reason or err})"]) from None
    return ctx


def _left(props: dict[str, Any], expiry: float) -> dict[str, Any]:
    """``props`` with what is left of the Message Expiry Interval, as a broker passes it on
    (MQTT 5.0 3.3.2.3.3)."""
    return {**props, "message_expiry_interval": max(1, math.ceil(expiry - time.monotonic()))}


def _key_order(key: str) -> tuple[int, str]:
    """A stored message's place in the queue: its key's number (hex: ``0x1f`` now,
    ``00000000001f`` as written before, so not in the keys' string order)."""
    try:
        return int(key, 16), key
    except ValueError:
        return -1, key  # not one of ours (its record says so)


def _first(mappings: list[BridgeMapping], topic: str) -> BridgeMapping | None:
    for m in mappings:
        if match(m.filter, topic):
            return m
    return None

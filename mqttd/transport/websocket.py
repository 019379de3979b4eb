"""MQTT over WebSocket (RFC 6455; MQTT 5.0 §6): the ``ws`` and ``wss`` listeners.

:class:`WsFront` is the asyncio protocol of a WebSocket socket. It runs the websockets
package's sans-I/O state machine (the upgrade handshake, frame parsing and unmasking, ping,
close handshake, size limit, optional per-message deflate) and hands the payload of every
binary frame to an ordinary :class:`~mqttd.transport.connection.Connection`, as TCP hands
it a read: the same incremental parser, the same channel, the same once-per-loop-turn flush.
The connection writes through a :class:`WsTransport`, which puts each flush in one binary
frame. MQTT packets may be split across frames or packed several to a frame (the parser
does not care).

The upgrade must arrive within the zone's ``idle_timeout``, at the listener's ``path``,
naming the subprotocol ``mqtt`` (or the pre-standard ``mqttv3.1``); anything else is
answered with an HTTP error (400, 403, 404, 426) and closed, and counted in
``connections.refused.websocket``. A text frame closes the connection with 1003.

Once open, the frames on the measured hot path skip the state machine's per-frame work: a
complete, final, masked binary frame within the size limit is unmasked here (the library's C
``apply_mask``) and its payload handed to the connection (all such frames of one read in one
call), and each flush goes out as one binary frame framed here (client-bound frames are not
masked). Every other frame (control frames, text, fragments, reserved bits or opcodes, an
unmasked or oversized frame) goes to the state machine, whole, at a frame boundary: small
ones one at a time, after which the fast path carries on if the connection is still open with
no fragmented message under way; anything else hands the rest of the stream to the library for
good. Not with per-message deflate, nor when bytes followed the upgrade request in its read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol

from ..metrics import CONNECTIONS_REFUSED_WEBSOCKET

try:  # the library's C unmasking, as its own frame parser uses (pure Python if not built)
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

if TYPE_CHECKING:
    from ..config import Listener, Zone
    from ..core.channel import ChannelServices
    from .connection import Connection

__all__ = ["SUBPROTOCOLS", "WsFront", "WsTransport"]

log = logging.getLogger("mqttd.websocket")
#: The state machine's own logger: kept at WARNING, so a broker started with debug logging
#: does not log every frame (nor every connection at info).
_frames_log = logging.getLogger("mqttd.websocket.frames")
_frames_log.setLevel(logging.WARNING)

#: "mqtt" is the registered name (MQTT 5.0 §6, 3.1.1 §6); "mqttv3.1" is what MQTT 3.1
#: clients (old Paho JavaScript) ask for.
SUBPROTOCOLS = (Subprotocol("mqtt"), Subprotocol("mqttv3.1"))

#: Seconds a server-initiated close waits for the client's close frame before aborting.
CLOSE_TIMEOUT = 2.0

_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_TEXT = Opcode.TEXT
_OPEN = State.OPEN

#: First header byte of a final binary frame with no reserved bits: the fast path's frames.
_FIN_BINARY = 0x82
#: Frames not taken by the fast path up to this payload size (every valid control frame) are
#: handed to the state machine one by one and the fast path goes on after them.
_SMALL = 125


class Pending(Protocol):
    pending: int


class WsOwner(Protocol):
    """What a WebSocket front needs of its listener (``listener.MqttListener``)."""

    config: Listener
    zone: Zone
    services: ChannelServices

    @property
    def connections(self) -> Pending: ...

    def connection(self, peer: tuple[str, int] | None) -> Connection: ...

    def handshake_failed(self, stage: str, who: str, why: str) -> None: ...


class WsTransport:
    """The transport a WebSocket connection's :class:`Connection` writes to: every write is
    one binary frame; closing is the WebSocket close handshake."""

    __slots__ = ("_front", "_raw", "_peer")

    def __init__(self, front: WsFront, raw: asyncio.Transport,
                 peer: tuple[str, int] | None) -> None:
        self._front = front
        self._raw = raw
        self._peer = peer

    def write(self, data: bytes) -> None:
        front = self._front
        if front._fast and front.ws.state is _OPEN:
            # WsFront.send's fast path without its call (once per flush): a server frame
            # is not masked, a header and the payload.
            size = len(data)
            if size < 126:
                self._raw.write(bytes((_FIN_BINARY, size)) + data)
                return
            if size < 65536:
                self._raw.write(b"\x82\x7e" + size.to_bytes(2, "big") + data)
                return
        front.send(data)

    def can_write_eof(self) -> bool:
        return False  # closing is the close handshake, not a TCP half-close

    def write_eof(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._front.close_ws()

    def abort(self) -> None:
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._raw.is_closing() or self._front.ws.state is not State.OPEN

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:  # noqa: ANN401
        if name == "peername" and self._peer is not None:
            return self._peer
        return self._raw.get_extra_info(name, default)


class WsFront(asyncio.Protocol):
    """One WebSocket socket: the upgrade, then frames in and out around a Connection."""

    def __init__(self, listener: WsOwner, peer: tuple[str, int] | None) -> None:
        self.listener = listener
        config = listener.config
        self.config = config
        #: The client address a PROXY protocol header gave (X-Forwarded-For may replace it).
        self.peer = peer
        self.ws = ServerProtocol(
            origins=[Origin(o) for o in config.allowed_origins] or None,
            extensions=[ServerPerMessageDeflateFactory()] if config.compress else None,
            subprotocols=list(SUBPROTOCOLS),
            max_size=listener.zone.max_packet_size,
            logger=_frames_log)
        self.raw: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._started = False
        self._peername: object = None
        #: Frames are parsed here (see the module docstring), not by the state machine.
        self._fast = False
        #: The start of a frame not complete yet (fast path only).
        self._rest = bytearray()
        self._max = listener.zone.max_packet_size

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        # Asked now: a closed transport no longer knows it (uvloop), and _who logs it then.
        self._peername = transport.get_extra_info("peername")
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.listener.zone.idle_timeout, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self._fast:
            self._fast_in(data)
            return
        ws = self.ws
        if self.conn is None and not self._started:
            # An upgrade is a GET: anything else (an MQTT client on a WebSocket port, a TLS
            # ClientHello) is refused now, not after the idle timeout.
            self._started = True
            head = data[:4]
            if not b"GET ".startswith(head) and not head.startswith(b"GET "):
                self._refuse(f"not an HTTP upgrade request (first bytes {data[:8]!r})")
                if self.raw is not None:
                    self.raw.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                                   b"Content-Length: 0\r\n\r\n")
                    self.raw.close()
                return
        upgrading = self.conn is None
        self._library(data)
        # The fast path starts only at a known frame boundary: the read that completed the
        # upgrade request ended with it (a client that sent frames before the 101 stays
        # with the library).
        if upgrading and self.conn is not None and not ws.extensions \
                and ws.state is _OPEN and not ws.reader.buffer \
                and data.find(b"\r\n\r\n") == len(data) - 4:
            self._fast = True

    def _library(self, data: bytes | bytearray) -> None:
        """Feed the state machine and take its events."""
        ws = self.ws
        ws.receive_data(data)
        conn = self.conn
        for event in ws.events_received():
            if conn is not None:
                frame: Frame = event  # type: ignore[assignment]
                opcode = frame.opcode
                if opcode is _BINARY or opcode is _CONT:
                    if frame.data:
                        conn.data_received(bytes(frame.data))
                elif opcode is _TEXT:
                    log.info("closing %s: a text frame (MQTT travels in binary frames)",
                             self._who())
                    ws.fail(1003, "MQTT needs binary frames")
                    break  # the frames after it, parsed from the same read, are not taken
                # ping, pong and close: the state machine answers them itself
            elif isinstance(event, Request):
                self._upgrade(event)
                conn = self.conn
        self._write_out()

    def _fast_in(self, data: bytes) -> None:
        """Take complete final masked binary frames here (see the module docstring)."""
        rest = self._rest
        end = len(data)
        if not rest and end > 6 and data[0] == _FIN_BINARY:
            # The usual read: exactly one such frame (a client writes a frame per write),
            # its payload handed on without the loop below.
            b1 = data[1]
            if b1 < 0xFE:
                head = 6
                size = b1 - 0x80
            else:
                head = 8
                size = (data[2] << 8 | data[3]) if b1 == 0xFE and end > 8 else -1
            if size == end - head and size <= self._max:
                conn = self.conn
                assert conn is not None
                conn.data_received(apply_mask(data[head:], data[head - 4:head]))
                if self.ws.state is not _OPEN:  # the connection closed: the library ends it
                    self._leave(b"")
                return
        if rest:
            rest += data
            buf: bytes | bytearray = rest
        else:
            buf = data
        end = len(buf)
        pos = 0
        payloads: list[bytes] = []
        conn = self.conn
        assert conn is not None
        while end - pos >= 2:
            b1 = buf[pos + 1]
            size = b1 & 0x7F
            head = pos + 2
            if size >= 126:
                if size == 126:
                    head += 2
                else:
                    head += 8
                if head > end:
                    break
                size = int.from_bytes(buf[pos + 2:head], "big")
            if buf[pos] != _FIN_BINARY or b1 < 0x80 or size > self._max:
                # Not ours: the state machine takes it, whole, at this frame boundary.
                if payloads:
                    conn.data_received(b"".join(payloads))
                    payloads = []
                if size <= _SMALL:
                    stop = head + (4 if b1 >= 0x80 else 0) + size
                    if stop > end:
                        break
                    self._library(buf[pos:stop])
                    pos = stop
                    ws = self.ws
                    if ws.state is _OPEN and ws.current_size is None and ws.parser_exc is None:
                        continue
                self._leave(buf[pos:])
                return
            stop = head + 4 + size
            if stop > end:
                break
            if size:
                payloads.append(apply_mask(buf[head + 4:stop], buf[head:head + 4]))
            pos = stop
        if payloads:
            conn.data_received(payloads[0] if len(payloads) == 1 else b"".join(payloads))
        if pos == 0 and rest:
            return  # still one incomplete frame, already in self._rest
        if pos < end:
            self._rest = bytearray(buf[pos:])
        elif rest:
            self._rest = bytearray()
        if self.ws.state is not _OPEN:  # the connection closed: the library ends it
            self._leave(bytes(self._rest))

    def _leave(self, data: bytes | bytearray) -> None:
        """Hand the rest of the stream, from a frame boundary, to the state machine."""
        self._fast = False
        self._rest = bytearray()
        if data:
            self._library(data)

    def eof_received(self) -> bool:
        if self._fast:
            self._leave(bytes(self._rest))
        self.ws.receive_eof()
        self._write_out()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn = self.conn
        if conn is not None:
            conn.connection_lost(exc)
        else:
            self._refuse(None)
            self.listener.connections.pending -= 1

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.pause_writing()

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.resume_writing()

    # --- the upgrade --------------------------------------------------------------------

    def _upgrade(self, request: Request) -> None:
        ws = self.ws
        path = request.path.split("?", 1)[0]
        if path != self.config.path:
            response = ws.reject(404, f"No MQTT endpoint at {path}\n")
            ws.handshake_exc = ValueError(f"path {path} (the endpoint is {self.config.path})")
        else:
            response = ws.accept(request)
        ws.send_response(response)
        if response.status_code != 101:
            self._refuse(f"HTTP {response.status_code}: {ws.handshake_exc}")
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        peer = self.peer
        if self.config.forwarded_for:
            peer = _forwarded_for(request.headers) or peer
        raw = self.raw
        assert raw is not None
        conn = self.listener.connection(peer)
        self.conn = conn
        conn.connection_made(WsTransport(self, raw, peer))  # type: ignore[arg-type]

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.conn is None and self.raw is not None:
            self._refuse(f"no WebSocket upgrade within {self.listener.zone.idle_timeout}s")
            self.raw.abort()

    def _refuse(self, why: str | None) -> None:
        """Count (once) a socket that never became an MQTT connection; log why."""
        if self._refused:
            return
        self._refused = True
        self.listener.services.metrics.inc(CONNECTIONS_REFUSED_WEBSOCKET)
        self.listener.handshake_failed("WebSocket", self._who(),
                                       why or "closed before the WebSocket upgrade")

    def _who(self) -> str:
        peer = self.peer or self._peername
        return "%s:%s" % peer[:2] if isinstance(peer, tuple) else str(peer)

    # --- output -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """One binary frame with what the connection flushed (dropped once closing)."""
        ws = self.ws
        if ws.state is _OPEN:
            raw = self.raw
            if self._fast and raw is not None:
                # Server frames are not masked: a header and the payload.
                size = len(data)
                if size < 126:
                    raw.write(bytes((_FIN_BINARY, size)) + data)
                elif size < 65536:
                    raw.write(b"\x82\x7e" + size.to_bytes(2, "big") + data)
                else:
                    raw.write(b"\x82\x7f" + size.to_bytes(8, "big") + data)
                return
            ws.send_binary(data)
            self._write_out()

    def close_ws(self) -> None:
        """The channel has ended: start the close handshake; abort if the client never
        answers it."""
        ws = self.ws
        raw = self.raw
        if raw is None:
            return
        if ws.state is State.OPEN:
            ws.send_close(1000)
            self._write_out()
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, raw.abort)
        elif ws.state is not State.CLOSING:
            raw.close()

    def _write_out(self) -> None:
        raw = self.raw
        if raw is None:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                raw.write(chunk)
            else:  # the state machine says the stream ends here
                raw.close()


def _forwarded_for(headers: Headers) -> tuple[str, int] | None:
    """The address the (trusted) proxy in front saw: the last X-Forwarded-For entry."""
    # Every line: a proxy may add its own after the client's (HAProxy's option forwardfor),
    # and Headers.get raises on a header given twice.
    values = headers.get_all("X-Forwarded-For")
    if not values:
        return None
    host = values[-1].rsplit(",", 1)[-1].strip()
    return (host, 0) if host else None

"""The connection (EMQX's emqx_connection): the only place that touches a socket.

An ``asyncio.Protocol``: each read is parsed whole, every packet goes through
the channel, and everything the read produced is written in one call.
Deliveries from other clients append to this connection's output and ask the
:class:`Flusher` for one write at the end of the loop turn, however many
messages arrived in it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from .channel import CONNECTED, IDLE, Channel
from .codec import Parser
from .errors import PacketError

if TYPE_CHECKING:
    from .config import Zone
    from .node import Node

log = logging.getLogger("mqttd.connection")

#: Seconds a closing connection keeps draining the client's input before it is aborted.
LINGER = 2.0


class Flusher:
    """Writes every connection that has output, once per event-loop turn."""

    __slots__ = ("_loop", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Connection] = []
        self._scheduled = False

    def add(self, conn: Connection) -> None:
        self._pending.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        pending = self._pending
        self._pending = []
        self._scheduled = False
        for conn in pending:
            conn.flush()


class Connection(asyncio.Protocol):
    """One client socket: bytes in → parser → channel; channel output → one write."""

    def __init__(self, node: Node, zone: Zone, flusher: Flusher,
                 connections: set[Connection]) -> None:
        self.node = node
        self.zone = zone
        self.flusher = flusher
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.parser = Parser(max_packet_size=zone.max_packet_size)
        self.channel: Channel | None = None
        self.loop = asyncio.get_running_loop()
        self.last_recv = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._queued = False
        self._lost = False
        self._closing = False

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        peer_s = "%s:%s" % (peer[0], peer[1]) if isinstance(peer, tuple) else str(peer)
        channel = Channel(self.node, self.zone, peer_s, self.out)
        channel.wakeup = self._wakeup
        self.channel = channel
        self.connections.add(self)
        self.last_recv = self.loop.time()
        self._timer = self.loop.call_later(self.zone.idle_timeout, self._on_connect_timeout)

    def data_received(self, data: bytes) -> None:
        channel = self.channel
        assert channel is not None
        if channel.closing:
            return
        self.last_recv = self.loop.time()
        was_idle = channel.state == IDLE
        if was_idle and data and not self.parser.buffered and data[0] & 0xF0 != 0x10:
            # The stream's first packet is not a CONNECT: refuse it on its first byte,
            # before buffering whatever body its header announces (CVE-2023-0809).
            log.info("closing %s: first packet is not CONNECT", channel.peer)
            channel.handle_first_packet_type(data[0] >> 4)
            self.flush()
            return
        error = None
        try:
            packets = self.parser.feed(data)
        except PacketError as err:
            packets = err.packets
            error = err
        handle = channel.handle_in
        for packet in packets:
            handle(packet)
            if channel.closing:
                break
        if error is not None and not channel.closing:
            log.info("closing %s (%s): %s", channel.client_id or channel.peer,
                     "0x%02X" % error.reason_code, error.message)
            channel.handle_frame_error(error, self.parser.version)
        if was_idle and channel.state == CONNECTED:
            self._start_keepalive()
        self.flush()

    def eof_received(self) -> bool:
        return False  # the client closed its side: close ours too

    def pause_writing(self) -> None:
        if self.channel is not None:
            self.channel.set_paused(True)

    def resume_writing(self) -> None:
        if self.channel is not None:
            self.channel.set_paused(False)
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.connections.discard(self)
        channel = self.channel
        if channel is None:
            return
        if channel.state == CONNECTED:
            self.node.registry.detach(channel)
            reason = channel.close_reason or ("connection lost: %s" % exc if exc else
                                              "connection closed by the client")
            log.debug("client %s disconnected: %s", channel.client_id, reason)
        channel.state = 2

    # --- output ------------------------------------------------------------------------

    def _wakeup(self) -> None:
        if not self._queued and not self._lost:
            self._queued = True
            self.flusher.add(self)

    def flush(self) -> None:
        """Write everything pending in one call; close if the channel has ended."""
        self._queued = False
        transport = self.transport
        if transport is None or self._lost:
            self.out.clear()
            return
        out = self.out
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        channel = self.channel
        if channel is not None and channel.closing and not self._closing:
            if channel.state == CONNECTED:
                # The channel is finished now, not when the peer gets round to closing its
                # side (the linger can take seconds; a dead peer never does): its will and
                # its session's expiry start at once.
                self.node.registry.detach(channel)
            self._close_lingering(transport)

    def _close_lingering(self, transport: Any) -> None:
        """Close our side, but keep reading (and discarding) a little while.

        Closing a socket that still receives data makes the kernel answer with
        RST, which can destroy our last DISCONNECT in the client's receive
        buffer and break its pending writes. Half-close instead (FIN after the
        pending output), discard what arrives, and abort after LINGER seconds.
        """
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        if transport.can_write_eof():
            transport.write_eof()
            self._timer = self.loop.call_later(LINGER, transport.abort)
        else:
            transport.close()

    # --- timers ------------------------------------------------------------------------

    def _on_connect_timeout(self) -> None:
        self._timer = None
        channel = self.channel
        if channel is not None and channel.state == IDLE:
            log.info("closing %s: no CONNECT within %ss", channel.peer, self.zone.idle_timeout)
            channel.handle_timeout("connect")
            self.flush()

    def _start_keepalive(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        channel = self.channel
        assert channel is not None
        if channel.keepalive:
            self._timer = self.loop.call_at(self.last_recv + self._keepalive_window(),
                                            self._on_keepalive)

    def _keepalive_window(self) -> float:
        assert self.channel is not None
        return self.channel.keepalive * self.zone.keepalive_backoff * 2

    def _on_keepalive(self) -> None:
        self._timer = None
        channel = self.channel
        if channel is None or channel.closing or self._lost:
            return
        deadline = self.last_recv + self._keepalive_window()
        if self.loop.time() >= deadline:
            log.info("client %s: keepalive timeout", channel.client_id)
            channel.handle_timeout("keepalive")
            self.flush()
        else:
            self._timer = self.loop.call_at(deadline, self._on_keepalive)

    def shutdown(self, code: int) -> None:
        """Server shutdown: tell the client (MQTT 5) and close."""
        if self.channel is not None:
            self.channel.kick(code, "server shutting down")
        self.flush()

    def info(self) -> dict[str, Any]:
        assert self.channel is not None
        return self.channel.info()

"""One listener (EMQX's esockd listener): a bound socket that accepts clients into connections.

Limits are applied in the accept path, before any per-connection state exists:
``max_connections`` (live plus accepted-but-not-yet-made connections) and
``max_conn_rate`` (a token bucket). A refused socket is closed at once, counted,
and logged at most every ``REFUSED_LOG_EVERY`` seconds per listener.

Every transport ends in the same :class:`Connection`:

- ``tcp``: the event loop's server hands each socket to a Connection (nothing in between);
  on Linux through ``accept_sockets`` listening sockets bound to the one address;
- ``ws``: to a :class:`~mqttd.transport.websocket.WsFront`, which makes the Connection
  after the upgrade;
- ``ssl``/``wss``, and any listener with ``proxy_protocol``: the listener accepts itself,
  and for each socket a short task reads the PROXY header (exactly, leaving the rest in
  the socket) and has the loop run the TLS handshake (``connect_accepted_socket``), both
  within the zone's ``idle_timeout``. A failed handshake is known here (the event loop's
  server would drop it silently), so it is counted (``connections.refused.tls`` /
  ``.proxy_protocol``), logged, and its slot under ``max_connections`` given back.

The TLS context is swapped by :meth:`MqttListener.reload_tls`: handshakes from then on use
the new certificate, live connections keep theirs.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import ssl
import sys
from collections.abc import Callable, Iterator, MutableSet
from typing import cast

from ..config import Listener, Zone
from ..core.channel import Channel, ChannelServices, Origin
from ..metrics import (
    CONNECTIONS_REFUSED_MAX_CONN_RATE,
    CONNECTIONS_REFUSED_MAX_CONNECTIONS,
    CONNECTIONS_REFUSED_MAX_FDS,
    CONNECTIONS_REFUSED_PROXY_PROTOCOL,
    CONNECTIONS_REFUSED_TLS,
)
from ..mqtt.reasons import ReasonCode as RC
from .connection import Connection, Flusher
from .fdguard import FdGuard
from .limiter import TokenBucket
from .proxy import ProxyError, read_header
from .tls import TlsError, build_context, expiry
from .websocket import WsFront

log = logging.getLogger("mqttd")

#: Seconds between two log lines about refused sockets on one listener.
REFUSED_LOG_EVERY = 10.0
#: A TLS certificate expiring within this many days is logged as a warning.
EXPIRY_WARNING_DAYS = 14
#: Listening sockets of a plain TCP (or ws) listener. libuv (under uvloop, since 1.45)
#: accepts one connection per listening socket per event-loop turn, so in a connect storm
#: every client cost a turn of its own (an epoll wait, the turn's callbacks; strace: one
#: accept4 per epoll_pwait where mosquitto accepts ~13 per wait). Sockets bound to the one
#: address with SO_REUSEPORT, among which the kernel spreads new connections, accept up to
#: that many per turn: the listener's ``accept_sockets`` (default 8), at most this. Linux
#: only (elsewhere SO_REUSEPORT does not spread connections).
ACCEPT_SOCKETS = 64 if sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT") \
    else 1


class ListenerError(Exception):
    """A listener could not be opened (address in use, permission denied, ...)."""


#: Refused sockets answered at once (CONNECT read, CONNACK written); past it a refused
#: socket is closed unanswered, so a flood costs no more than the refusal itself.
REFUSE_BUDGET = 64
#: Seconds a refused socket has to send its CONNECT, and then to close after the CONNACK.
REFUSE_WAIT = 2.0


class _Refused(asyncio.Protocol):
    """A socket accepted over a listener's limits: its CONNECT is answered with a refusal
    (MQTT 5: ``code``, 0x97 quota exceeded or 0x9F connection rate exceeded; 3.1/3.1.1:
    0x03 server unavailable) instead of a bare TCP reset the client cannot tell from a
    crash, then closed. Within a budget (REFUSE_BUDGET sockets at once, REFUSE_WAIT
    seconds each); past it, or for anything but a CONNECT, closed at once."""

    def __init__(self, listener: MqttListener, code: int, budget: int = REFUSE_BUDGET) -> None:
        self.listener = listener
        self.code = code
        self.budget = budget
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)
        listener = self.listener
        if listener.refusing >= self.budget:
            tr.abort()
            return
        listener.refusing += 1
        self.transport = tr
        self.timer = asyncio.get_running_loop().call_later(REFUSE_WAIT, tr.abort)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.answered:
            return  # after the CONNACK: read and dropped until the client closes
        self.buf += data
        level = connect_level(self.buf)
        if level is None:
            if len(self.buf) > 512:
                transport.abort()
            return
        self.answered = True
        if level == 5:
            transport.write(bytes((0x20, 3, 0, self.code, 0)))
        elif level in (3, 4):
            transport.write(b"\x20\x02\x00\x03")
        else:
            transport.abort()
            return
        # Half-close, and drain until the client closes (or the timer aborts): closing
        # over unread input would reset the connection under the CONNACK.
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.listener.refusing -= 1
            self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Closed(asyncio.Protocol):
    """A refused socket that cannot be answered in MQTT (WebSocket): closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def connect_level(buf: bytes) -> int | None:
    """The protocol level of the CONNECT ``buf`` starts with (3, 4, 5, or another number);
    None while too little has arrived; -1 when it is not a CONNECT."""
    if not buf:
        return None
    if buf[0] != 0x10:
        return -1
    i = 1
    while True:  # the remaining length, a variable byte integer
        if i >= len(buf):
            return None
        if i > 4:
            return -1
        more = buf[i] & 0x80
        i += 1
        if not more:
            break
    if i + 2 > len(buf):
        return None
    name_len = (buf[i] << 8) | buf[i + 1]
    if name_len > 6:  # "MQTT" or "MQIsdp"
        return -1
    at = i + 2 + name_len
    return buf[at] if at < len(buf) else None


class LiveConnections(MutableSet[Connection]):
    """One listener's live connections: they are in the server-wide table, and here only
    counted (a set of its own cost every client a second table entry, ~50 B at 10,000
    clients); iterating (stopping the listener) picks them out of the server-wide table.

    ``pending`` counts sockets accepted (a Connection made) whose connection_made
    has not run yet: asyncio accepts a whole backlog burst in one turn, before any
    of them is added here, so the limit check must count them too.
    """

    __slots__ = ("everyone", "pending", "_count")

    def __init__(self, everyone: dict[Connection, None]) -> None:
        self.everyone = everyone
        self.pending = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, conn: object) -> bool:
        return conn in self.everyone and getattr(conn, "connections", None) is self

    def __iter__(self) -> Iterator[Connection]:
        return iter([c for c in self.everyone if c.connections is self])

    def add(self, conn: Connection) -> None:
        if self.pending:
            self.pending -= 1
        everyone = self.everyone
        n = len(everyone)
        everyone[conn] = None
        self._count += len(everyone) - n

    def discard(self, conn: Connection) -> None:
        everyone = self.everyone
        if conn in everyone:  # (no len() calls: every client's leave)
            del everyone[conn]
            self._count -= 1


class MqttListener:
    """A configured listener: its socket, its transport, its limits and its live
    connections."""

    #: SO_REUSEPORT on the socket: several worker processes (`mqttd start --workers N`)
    #: listen on one port and the kernel spreads the connections among them.
    reuse_port = False

    def __init__(self, config: Listener, zone: Zone, services: ChannelServices,
                 flusher: Flusher, everyone: dict[Connection, None],
                 watcher: Callable[[], Callable[[Channel], None] | None],
                 fd_guard: FdGuard | None = None,
                 overloaded: Callable[[], bool] | None = None) -> None:
        self.config = config
        #: Asked at every accept under the limits: refuse it for overload protection?
        self.overloaded = overloaded
        #: The process's file descriptor reserve (shared by every listener), or None.
        self.fd_guard = fd_guard
        self.zone = zone
        self.services = services
        self.flusher = flusher
        #: Asked at every accept: who is told of the new channel (a client trace waiting
        #: for its client), or None.
        self.watcher = watcher
        self.connections = LiveConnections(everyone)
        self.server: asyncio.base_events.Server | None = None
        #: The servers of the listener's further sockets (``accept_sockets``), if any.
        self._more: list[asyncio.base_events.Server] = []
        #: The address bound (port 0 resolved), once started.
        self.address: tuple[str, int] = (config.bind, config.port)
        self._bucket = TokenBucket(config.max_conn_rate) if config.max_conn_rate > 0 else None
        self._refused_logged = -REFUSED_LOG_EVERY
        #: Refused sockets being answered now (bounded by REFUSE_BUDGET).
        self.refusing = 0
        self._failed_logged = -REFUSED_LOG_EVERY
        self._failed_quiet = 0
        self.tls = config.type in ("ssl", "wss")
        self.websocket = config.type in ("ws", "wss")
        #: The TLS context new handshakes use (ssl and wss).
        self.ssl_context: ssl.SSLContext | None = None
        #: ssl/wss/proxy_protocol: the listening socket and the task accepting on it.
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        # What a Connection of this listener is told about its socket.
        self._cert_as = (config.peer_cert_as_username, config.peer_cert_as_clientid) \
            if config.peer_cert_as_username or config.peer_cert_as_clientid else None

    @property
    def running(self) -> bool:
        return self.server is not None or self._accepting is not None

    async def start(self, port: int | None = None) -> tuple[str, int]:
        """Bind (on ``port`` if given, else the configured one) and accept; the address.

        Raises ListenerError when the socket cannot be opened or the TLS files are bad.
        """
        config = self.config
        port = config.port if port is None else port
        if self.tls:
            try:
                self.ssl_context = build_context(config)
            except TlsError as err:
                raise ListenerError("; ".join(err.errors)) from None
        loop = asyncio.get_running_loop()
        try:
            if self.tls or config.proxy_protocol:
                self._sock = sock = _bind(config.bind, port, config.backlog, self.reuse_port)
                self._accepting = loop.create_task(self._accept_loop(sock))
                host, bound = sock.getsockname()[:2]
            else:
                host, bound = await self._serve(loop, port)
        except OSError as err:
            raise ListenerError(
                f"cannot listen on {config.bind}:{port} "
                f"(listener {config.name}): {err.strerror or err}") from None
        self.address = (host, bound)
        extra = " + PROXY protocol" if config.proxy_protocol else ""
        log.info("listener %s on %s:%d (%s%s, zone %s)", config.name, host, bound, config.type,
                 extra, config.zone)
        if self.tls:
            self._log_expiry()
        return self.address

    async def _serve(self, loop: asyncio.AbstractEventLoop, port: int) -> tuple[str, int]:
        """Listen for tcp/ws clients on ``port`` through ``accept_sockets`` sockets where the
        configured address is one address (else as the event loop binds a name: one
        socket per address it resolves to); the address bound."""
        config = self.config
        count = min(config.accept_sockets, ACCEPT_SOCKETS)
        socks = _bind_group(config.bind, port, config.backlog, self.reuse_port, count) \
            if count > 1 else None
        if socks is None:
            self.server = await loop.create_server(self._accept, config.bind, port,
                                                   backlog=config.backlog,
                                                   reuse_address=True,
                                                   reuse_port=self.reuse_port or None)
            host, bound = self.server.sockets[0].getsockname()[:2]
            return host, bound
        servers: list[asyncio.base_events.Server] = []
        try:
            for sock in socks:
                servers.append(await loop.create_server(self._accept, sock=sock,
                                                        backlog=config.backlog))
        except BaseException:
            for server in servers:
                server.close()
            for sock in socks[len(servers):]:
                sock.close()
            raise
        self.server, self._more = servers[0], servers[1:]
        host, bound = socks[0].getsockname()[:2]
        return host, bound

    def _log_expiry(self) -> None:
        """Say when the certificate expires; warn when that is near (renew, then reload)."""
        expires = expiry(self.config.certfile)
        if expires is None:
            return
        days = (expires - datetime.datetime.now(datetime.UTC)).days
        level = logging.WARNING if days < EXPIRY_WARNING_DAYS else logging.INFO
        log.log(level, "listener %s: TLS certificate %s valid until %s UTC (%d days)%s",
                self.config.name, self.config.certfile, f"{expires:%Y-%m-%d %H:%M}", days,
                "; renew it and run `mqttd ctl listeners reload %s`" % self.config.name
                if level == logging.WARNING else "")

    def reload_tls(self) -> str:
        """Build the TLS context again from the files (new handshakes use it; live
        connections keep theirs); TlsError, the old context kept, when they are bad."""
        if not self.tls:
            raise TlsError([f"listeners.{self.config.name}: not a TLS listener "
                            f"(type {self.config.type!r})"])
        self.ssl_context = build_context(self.config)
        log.info("listener %s: TLS certificate and key reloaded from %s", self.config.name,
                 self.config.certfile)
        self._log_expiry()
        return self.config.certfile

    def close(self) -> None:
        """Stop accepting (the live connections stay)."""
        if self.server is not None:
            self.server.close()
        for server in self._more:
            server.close()
        if self._accepting is not None:
            self._accepting.cancel()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def wait_closed(self, timeout: float = 2.0) -> None:
        server, self.server = self.server, None
        servers = ([server] if server is not None else []) + self._more
        self._more = []
        if servers:  # (all at once: each waits for its live connections, up to ``timeout``)
            try:
                await asyncio.wait_for(asyncio.gather(*(s.wait_closed() for s in servers)),
                                       timeout)
            except TimeoutError:
                pass
        task, self._accepting = self._accepting, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for handshake in list(self._handshakes):  # sockets still in their handshake
            handshake.cancel()
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)

    # --- accepting ---------------------------------------------------------------------

    def _over_limits(self) -> int:
        """0, or the MQTT 5 reason code a new socket is refused with (counted and logged)."""
        live = self.connections
        config = self.config
        if live._count + live.pending >= config.max_connections:  # (len(live): a call)
            self._refuse(CONNECTIONS_REFUSED_MAX_CONNECTIONS,
                         f"max_connections ({config.max_connections})")
            return RC.QUOTA_EXCEEDED
        guard = self.fd_guard
        if guard is not None and (n := len(live.everyone) + live.pending) \
                >= guard.quiet_below and guard.exhausted(n):  # (far from it: no call)
            self._refuse(CONNECTIONS_REFUSED_MAX_FDS,
                         f"the file descriptor limit ({guard.used} of {guard.limit} open, "
                         f"{guard.reserve} kept for the control socket and the store; raise "
                         "it: ulimit -n, or LimitNOFILE= in the systemd unit)")
            return RC.SERVER_UNAVAILABLE
        bucket = self._bucket
        if bucket is not None and not bucket.try_take(1, asyncio.get_running_loop().time()):
            self._refuse(CONNECTIONS_REFUSED_MAX_CONN_RATE,
                         f"max_conn_rate ({config.max_conn_rate:g}/s)")
            return RC.CONNECTION_RATE_EXCEEDED
        overloaded = self.overloaded
        if overloaded is not None and overloaded():
            self._refuse(None, "overload protection (the event loop lags; mqttd ctl alarms "
                         "list)")
            return RC.SERVER_BUSY
        return 0

    def _accept(self) -> asyncio.Protocol:
        """The event loop server's protocol factory (tcp, ws): refuse over the limits,
        else a new Connection (or WebSocket front)."""
        code = self._over_limits()
        if code:
            if self.websocket:  # a CONNACK would need the upgrade first: closed
                return _Closed()
            if code == RC.SERVER_UNAVAILABLE:  # out of descriptors: answer within the reserve
                guard = self.fd_guard
                return _Refused(self, code, guard.reserve // 2 if guard is not None else 0)
            return _Refused(self, code)
        self.connections.pending += 1
        return WsFront(self, None) if self.websocket else self.connection(None)

    def _protocol(self, peer: tuple[str, int] | None) -> asyncio.Protocol:
        return WsFront(self, peer) if self.websocket else self.connection(peer)

    def connection(self, peer: tuple[str, int] | None) -> Connection:
        """A Connection of this listener (its slot is already counted as pending)."""
        config = self.config
        conn = Connection(self.services, self.zone, self.flusher, self.connections,
                          self.watcher(), Origin.of(config.name, config.type, self.address[1]))
        # (Rare fields: written only when not their default, no descriptor call otherwise)
        if peer is not None:
            conn.peer_address = peer
        if self._cert_as is not None:
            conn.cert_as = self._cert_as
        return conn

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as err:
                # Out of file descriptors, say: wait a little rather than spin.
                log.warning("listener %s: accept failed: %s", self.config.name,
                            err.strerror or err)
                await asyncio.sleep(0.1)
                continue
            if self._over_limits():
                client.close()  # TLS or PROXY first: no CONNACK without the handshake
                continue
            self.connections.pending += 1
            task = loop.create_task(self._handshake(client))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket) -> None:
        """PROXY header, then TLS, within the zone's idle timeout; the protocol after."""
        loop = asyncio.get_running_loop()
        config = self.config
        timeout = self.zone.idle_timeout
        peer: tuple[str, int] | None = None
        made: list[asyncio.Protocol] = []
        stage = "PROXY protocol" if config.proxy_protocol else "TLS"
        who = _peer_of(sock)

        def factory() -> asyncio.Protocol:
            protocol = self._protocol(peer)
            made.append(protocol)
            return protocol

        try:
            sock.setblocking(False)
            if config.proxy_protocol:
                async with asyncio.timeout(timeout):
                    peer = await read_header(sock)
                if peer is not None:
                    who = "%s:%d" % peer
                stage = "TLS"
            if self.tls:
                await loop.connect_accepted_socket(factory, sock, ssl=self.ssl_context,
                                                   ssl_handshake_timeout=timeout)
            else:
                await loop.connect_accepted_socket(factory, sock)
            return
        except asyncio.CancelledError:
            sock.close()
            if not made or not _was_made(made[0]):  # else the Connection gave it back
                self.connections.pending -= 1
            raise
        except ProxyError as err:
            why = str(err)
        except TimeoutError:
            why = f"did not finish within {timeout:g}s"
        except (OSError, ssl.SSLError) as err:
            why = _tls_reason(err)
        except Exception as err:  # noqa: BLE001  (uvloop raises a few others on abort)
            why = f"{type(err).__name__}: {err}"
        _close_quietly(sock)
        if not made or not _was_made(made[0]):
            self.connections.pending -= 1
        self.services.metrics.inc(CONNECTIONS_REFUSED_PROXY_PROTOCOL
                                  if stage == "PROXY protocol" else CONNECTIONS_REFUSED_TLS)
        self.handshake_failed(stage, who, why)

    def handshake_failed(self, stage: str, who: str, why: str) -> None:
        """Log a failed transport handshake: each at debug, and at info at most every
        ``REFUSED_LOG_EVERY`` seconds per listener (scanners must not flood the log)."""
        now = asyncio.get_running_loop().time()
        if now - self._failed_logged < REFUSED_LOG_EVERY:
            log.debug("listener %s: %s handshake with %s failed: %s", self.config.name, stage,
                      who, why)
            self._failed_quiet += 1
        else:
            more = (f" ({self._failed_quiet} more since the last such line; counted in "
                    "metrics)") if self._failed_quiet else ""
            self._failed_logged = now
            self._failed_quiet = 0
            log.info("listener %s: %s handshake with %s failed: %s%s", self.config.name,
                     stage, who, why, more)

    def _refuse(self, idx: int | None, why: str) -> None:
        if idx is not None:  # overload protection counts its own refusals
            self.services.metrics.inc(idx)
        now = asyncio.get_running_loop().time()
        if now - self._refused_logged >= REFUSED_LOG_EVERY:
            self._refused_logged = now
            log.warning("listener %s: refusing connections over %s (logged at most every "
                        "%gs; counted in metrics)", self.config.name, why, REFUSED_LOG_EVERY)


def _bind(host: str, port: int, backlog: int, reuse_port: bool = False,
          group: bool = False) -> socket.socket:
    """A non-blocking listening socket on (host, port), as the event loop's server binds
    (SO_REUSEADDR, SO_REUSEPORT if asked, the first address the name resolves to).
    ``group``: SO_REUSEPORT set after the bind, so the bind still fails on a port in use
    (by anyone, a SO_REUSEPORT group included) and the listen lets further sockets of this
    process join it (``_bind_group``)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if group and not reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_group(host: str, port: int, backlog: int, reuse_port: bool, count: int
                ) -> list[socket.socket] | None:
    """``count`` listening sockets on the one address ``host`` names (port 0: the
    port the first got), or None where ``host`` names several (both IP versions, say).
    A port in use fails the first bind as a single socket's would (``_bind``), so a
    second broker on the port is still refused; ``reuse_port`` (``--workers``) puts the
    group in the workers' common one."""
    if not host:  # every interface: the event loop binds each address family
        return None
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if len({info[4] for info in infos}) != 1:
        return None
    first = _bind(host, port, backlog, reuse_port, group=True)
    socks = [first]
    address, bound = first.getsockname()[:2]
    try:
        for _ in range(count - 1):
            socks.append(_bind(address, bound, backlog, reuse_port=True))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _close_quietly(sock: socket.socket) -> None:
    """Close with a FIN, not a reset: read off what the client already sent (closing over
    unread input makes the kernel answer RST, which the client sees as an error)."""
    try:
        for _ in range(16):
            if not sock.recv(65536):
                break
    except OSError:
        pass
    sock.close()


def _peer_of(sock: socket.socket) -> str:
    try:
        peer = sock.getpeername()
    except OSError:
        return "?"
    return "%s:%s" % peer[:2]


def _was_made(protocol: asyncio.Protocol) -> bool:
    """Whether the protocol got its socket (its slot is then the Connection's to free)."""
    if isinstance(protocol, Connection):
        return protocol.transport is not None
    return getattr(protocol, "raw", None) is not None


#: OpenSSL's reasons an operator meets most, said plainly.
_TLS_REASONS = {
    "WRONG_VERSION_NUMBER": "not TLS (a plain MQTT client on a TLS port?)",
    "HTTP_REQUEST": "not TLS (a plain HTTP request on a TLS port)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate (verify = required)",
    "CERTIFICATE_VERIFY_FAILED": "the client's certificate did not verify against cafile",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this server's certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client rejected this server's certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the client says a certificate expired",
    "UNSUPPORTED_PROTOCOL": "the client offers no TLS version this listener allows",
    "NO_SHARED_CIPHER": "no cipher in common with the client",
    "UNEXPECTED_EOF_WHILE_READING": "the client closed during the handshake",
}


def _tls_reason(err: BaseException) -> str:
    if isinstance(err, ssl.SSLError):
        reason = err.reason or ""
        text = _TLS_REASONS.get(reason)
        if text:
            return f"{text} [{reason}]"
        if isinstance(err, ssl.SSLCertVerificationError) and err.verify_message:
            return f"the client's certificate: {err.verify_message} [{reason}]"
        return reason or err.strerror or str(err)
    return str(err) or type(err).__name__

"""One listener (EMQX's esockd listener): a bound socket that accepts clients into connections.

Limits are applied in the accept path, before any per-connection state exists:
``max_connections`` (live plus accepted-but-not-yet-made connections) and
``max_conn_rate`` (a token bucket). A refused socket is closed at once, counted,
and logged at most every ``REFUSED_LOG_EVERY`` seconds per listener. TLS and
WebSocket listeners will share this shape with another protocol factory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..config import Listener, Zone
from ..core.channel import Channel, ChannelServices
from ..metrics import CONNECTIONS_REFUSED_MAX_CONN_RATE, CONNECTIONS_REFUSED_MAX_CONNECTIONS
from .connection import Connection, Flusher
from .limiter import TokenBucket

log = logging.getLogger("mqttd")

#: Seconds between two log lines about refused sockets on one listener.
REFUSED_LOG_EVERY = 10.0


class ListenerError(Exception):
    """A listener could not be opened (address in use, permission denied, ...)."""


class _Refused(asyncio.Protocol):
    """A socket accepted over a listener's limits: closed at once, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class LiveConnections(set[Connection]):
    """One listener's live connections, mirrored into the server-wide set.

    ``pending`` counts sockets accepted (a Connection made) whose connection_made
    has not run yet: asyncio accepts a whole backlog burst in one turn, before any
    of them is added here, so the limit check must count them too.
    """

    def __init__(self, everyone: set[Connection]) -> None:
        super().__init__()
        self.everyone = everyone
        self.pending = 0

    def add(self, conn: Connection) -> None:
        if self.pending:
            self.pending -= 1
        super().add(conn)
        self.everyone.add(conn)

    def discard(self, conn: object) -> None:
        super().discard(conn)
        self.everyone.discard(conn)


class TcpListener:
    """A configured TCP listener: its socket, its limits and its live connections."""

    def __init__(self, config: Listener, zone: Zone, services: ChannelServices,
                 flusher: Flusher, everyone: set[Connection],
                 watcher: Callable[[], Callable[[Channel], None] | None]) -> None:
        self.config = config
        self.zone = zone
        self.services = services
        self.flusher = flusher
        #: Asked at every accept: who is told of the new channel (a client trace waiting
        #: for its client), or None.
        self.watcher = watcher
        self.connections = LiveConnections(everyone)
        self.server: asyncio.base_events.Server | None = None
        #: The address bound (port 0 resolved), once started.
        self.address: tuple[str, int] = (config.bind, config.port)
        self._bucket = TokenBucket(config.max_conn_rate) if config.max_conn_rate > 0 else None
        self._refused_logged = -REFUSED_LOG_EVERY

    @property
    def running(self) -> bool:
        return self.server is not None

    async def start(self, port: int | None = None) -> tuple[str, int]:
        """Bind (on ``port`` if given, else the configured one) and accept; the address.

        Raises ListenerError when the socket cannot be opened.
        """
        config = self.config
        port = config.port if port is None else port
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(self._accept, config.bind, port,
                                                   backlog=config.backlog,
                                                   reuse_address=True)
        except OSError as err:
            raise ListenerError(
                f"cannot listen on {config.bind}:{port} "
                f"(listener {config.name}): {err.strerror or err}") from None
        host, bound = self.server.sockets[0].getsockname()[:2]
        self.address = (host, bound)
        log.info("listener %s on %s:%d (zone %s)", config.name, host, bound, config.zone)
        return self.address

    def close(self) -> None:
        """Stop accepting (the live connections stay)."""
        if self.server is not None:
            self.server.close()

    async def wait_closed(self, timeout: float = 2.0) -> None:
        server, self.server = self.server, None
        if server is not None:
            try:
                await asyncio.wait_for(server.wait_closed(), timeout)
            except TimeoutError:
                pass

    def _accept(self) -> asyncio.Protocol:
        """The protocol factory: refuse over the limits, else a new Connection."""
        live = self.connections
        config = self.config
        if len(live) + live.pending >= config.max_connections:
            return self._refuse(CONNECTIONS_REFUSED_MAX_CONNECTIONS,
                                f"max_connections ({config.max_connections})")
        bucket = self._bucket
        if bucket is not None and not bucket.try_take(1, asyncio.get_running_loop().time()):
            return self._refuse(CONNECTIONS_REFUSED_MAX_CONN_RATE,
                                f"max_conn_rate ({config.max_conn_rate:g}/s)")
        live.pending += 1
        return Connection(self.services, self.zone, self.flusher, live, self.watcher(),
                          config.name)

    def _refuse(self, idx: int, why: str) -> asyncio.Protocol:
        self.services.metrics.inc(idx)
        now = asyncio.get_running_loop().time()
        if now - self._refused_logged >= REFUSED_LOG_EVERY:
            self._refused_logged = now
            log.warning("listener %s: refusing connections over %s (logged at most every "
                        "%gs; counted in metrics)", self.config.name, why, REFUSED_LOG_EVERY)
        return _Refused()

"""The running broker: listeners, lifecycle and graceful shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
from collections.abc import Callable
from typing import Any

from . import __version__
from ._accel import LOADED
from .config import Listener, Settings
from .ctl.commands import build_table
from .ctl.server import CtlServer
from .metrics import CONNECTIONS_REFUSED_MAX_CONN_RATE, CONNECTIONS_REFUSED_MAX_CONNECTIONS
from .mgmt.api import Management
from .mgmt.control import ListenerStatus
from .mgmt.errors import Failed
from .mqtt.reasons import ReasonCode as RC
from .node import Node
from .plugins import PluginError
from .transport.connection import Connection, Flusher
from .transport.limiter import TokenBucket

log = logging.getLogger("mqttd")


class ListenerError(Exception):
    """The server could not start: a listener could not be opened (address in use,
    permission denied, ...) or a configured plugin could not be loaded."""


class _Refused(asyncio.Protocol):
    """A socket accepted over a listener's limits: closed at once, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Live(set[Connection]):
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


#: Seconds between two log lines about refused sockets on one listener.
_REFUSED_LOG_EVERY = 10.0


class Server:
    """An mqttd node serving its configured TCP listeners."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.node = Node(self.settings)
        self.connections: set[Connection] = set()
        self.listeners: dict[str, asyncio.base_events.Server] = {}
        self._stopped: asyncio.Event | None = None
        self._flusher: Flusher | None = None
        #: The control socket, when settings.data_dir is set.
        self.ctl: CtlServer | None = None
        #: Per listener: its configuration, its bound address, its live connections.
        self.listener_config: dict[str, Listener] = {}
        self.listener_addr: dict[str, tuple[str, int]] = {}
        self.listener_conns: dict[str, set[Connection]] = {}
        self._shutdown: asyncio.Event | None = None
        self._stop_reason = "signal received"
        node = self.node
        #: Every operator query and action, for the control socket (and later front ends).
        self.mgmt = Management(self.settings, node.started_at, node.metrics, node.stats,
                               node.broker, node.trace, node.plugins, node.supervisor,
                               _ServerControl(self))

    def bound(self, name: str) -> tuple[str, int]:
        """The address a listener actually bound (port 0 resolved)."""
        sock = self.listeners[name].sockets[0]
        host, port = sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._flusher = Flusher(loop)
        log.info("mqttd %s starting, speedups: %s", __version__,
                 ", ".join(f"{k}={v}" for k, v in LOADED.items()))
        self.mgmt.start()
        if self.settings.data_dir:
            # First: a second daemon on the same data directory fails before binding.
            self.ctl = CtlServer(self.mgmt, self.settings.data_dir, build_table())
            await self.ctl.start()
        try:
            self.node.start()
        except PluginError as err:
            raise ListenerError(str(err)) from None
        for listener in self.settings.listeners:
            await self.start_listener(listener)

    async def start_listener(self, listener: Listener) -> None:
        loop = asyncio.get_running_loop()
        zone = self.settings.zone(listener.zone)
        flusher = self._flusher
        assert flusher is not None

        live = _Live(self.connections)
        self.listener_conns[listener.name] = live
        bucket = TokenBucket(listener.max_conn_rate) if listener.max_conn_rate > 0 else None
        metrics = self.node.metrics
        max_conns = listener.max_connections
        refused_log = [-_REFUSED_LOG_EVERY]

        def refuse(idx: int, why: str) -> asyncio.Protocol:
            metrics.inc(idx)
            now = loop.time()
            if now - refused_log[0] >= _REFUSED_LOG_EVERY:
                refused_log[0] = now
                log.warning("listener %s: refusing connections over %s (logged at most "
                            "every %gs; counted in metrics)", listener.name, why,
                            _REFUSED_LOG_EVERY)
            return _Refused()

        def factory() -> asyncio.Protocol:
            # Refuse in the accept path, before any per-connection state exists.
            if len(live) + live.pending >= max_conns:
                return refuse(CONNECTIONS_REFUSED_MAX_CONNECTIONS,
                              f"max_connections ({max_conns})")
            if bucket is not None and not bucket.try_take(1, loop.time()):
                return refuse(CONNECTIONS_REFUSED_MAX_CONN_RATE,
                              f"max_conn_rate ({listener.max_conn_rate:g}/s)")
            live.pending += 1
            trace = self.node.trace
            # While a client trace waits for its client, each new channel is shown to it.
            return Connection(self.node.broker, zone, flusher, live,
                              trace.watch if trace.clients else None)

        try:
            server = await loop.create_server(factory, listener.bind, listener.port,
                                              backlog=listener.backlog, reuse_address=True)
        except OSError as err:
            raise ListenerError(
                f"cannot listen on {listener.bind}:{listener.port} "
                f"(listener {listener.name}): {err.strerror or err}") from None
        self.listeners[listener.name] = server
        host, port = self.bound(listener.name)
        self.listener_config[listener.name] = listener
        self.listener_addr[listener.name] = (host, port)
        log.info("listener %s on %s:%d (zone %s)", listener.name, host, port, listener.zone)

    async def stop(self) -> None:
        """Stop accepting, tell MQTT 5 clients the server is shutting down, flush, close."""
        for server in self.listeners.values():
            server.close()
        for conn in list(self.connections):
            conn.shutdown(RC.SERVER_SHUTTING_DOWN)
        for server in self.listeners.values():
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                pass
        deadline = asyncio.get_running_loop().time() + 2.0
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await self.node.stop()
        if self._stopped is not None:
            self._stopped.set()
        log.info("mqttd stopped")
        if self.ctl is not None:
            await self.ctl.close()  # last: `mqttd ctl stop` is told when all is done
        self.mgmt.close()

    # --- listeners at run time (mqttd ctl listeners) ----------------------------------

    async def stop_listener(self, name: str) -> tuple[str, int]:
        """Stop accepting on a running listener and close its clients (MQTT 5 clients get
        DISCONNECT 0x8B); returns the address it was bound to. KeyError if not running."""
        server = self.listeners.pop(name)
        server.close()
        for conn in list(self.listener_conns.get(name, ())):
            conn.shutdown(RC.SERVER_SHUTTING_DOWN)
        try:
            await asyncio.wait_for(server.wait_closed(), 2.0)
        except TimeoutError:
            pass
        host, port = self.listener_addr[name]
        log.info("listener %s on %s:%d stopped", name, host, port)
        return host, port

    async def restart_listener(self, name: str) -> tuple[str, int]:
        """(Re)start a configured listener on the port it had (a configured port 0 keeps
        the port it was given, so clients can come back); KeyError if unknown."""
        listener = self.listener_config[name]
        if name in self.listeners:
            await self.stop_listener(name)
        port = listener.port or self.listener_addr[name][1]
        await self.start_listener(dataclasses.replace(listener, port=port))
        self.listener_config[name] = listener
        return self.listener_addr[name]

    # --- lifecycle ------------------------------------------------------------------

    def request_stop(self, reason: str = "stop requested") -> None:
        """Shut down gracefully, as SIGTERM does (``mqttd ctl stop``)."""
        self._stop_reason = reason
        if self._shutdown is not None:
            self._shutdown.set()
        else:  # started with start(), not serve_forever(): stop directly
            log.info("%s, shutting down", reason)
            asyncio.ensure_future(self.stop())

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start, run until SIGINT/SIGTERM or ``request_stop()``, then shut down gracefully.

        ``on_ready`` is called once every listener and the control socket are up.
        """
        self._shutdown = asyncio.Event()
        try:
            await self.start()
        except BaseException:
            if self.ctl is not None:
                await self.ctl.close()
            self.mgmt.close()
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, "signal received")
        if on_ready is not None:
            on_ready()
        await self._shutdown.wait()
        log.info("%s, shutting down", self._stop_reason)
        await self.stop()


class _ServerControl:
    """The server as management sees it (:class:`mqttd.mgmt.control.ServerControl`)."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def listeners(self) -> list[ListenerStatus]:
        server = self._server
        out = []
        for name, cfg in server.listener_config.items():
            host, port = server.listener_addr.get(name, (cfg.bind, cfg.port))
            out.append(ListenerStatus(name, host, port, cfg.zone, name in server.listeners,
                                      len(server.listener_conns.get(name, ())),
                                      cfg.max_connections, cfg.max_conn_rate))
        return out

    async def stop_listener(self, name: str) -> tuple[str, int]:
        return await self._server.stop_listener(name)

    async def restart_listener(self, name: str) -> tuple[str, int]:
        try:
            return await self._server.restart_listener(name)
        except ListenerError as err:
            raise Failed(str(err), str(err)) from None

    def request_stop(self, reason: str) -> None:
        self._server.request_stop(reason)

    async def wait_stopped(self) -> None:
        await self._server.wait_stopped()

    def connection_count(self) -> int:
        return len(self._server.connections)


#: Young-generation threshold of the cyclic collector in a broker process (CPython: 700).
#: A read of a busy publisher parses ~1,500 packets that are alive together; at 700 the
#: collector ran ~500 times a second under fan-in load and promoted those short-lived
#: packets, which then triggered 2-3 full collections a second (10,000: ~100 a second).
#: Almost nothing on the message path forms cycles (reference counting frees it), so rarer
#: young collections cost nothing.
GC_THRESHOLD0 = 10_000


def tune_gc() -> None:
    """Once the broker has started: move everything that exists now (modules, config,
    plugins: ~35,000 objects) out of the collector's reach, and collect young objects
    less often.

    Measured in the end-to-end fan-in QoS 0 benchmark (bench/run.py, timed with
    gc.callbacks): without this, 6-9 full collections per 3 s run took 17-28 ms each
    (the event loop stops that long; ~7 % of the core went to the collector in all).
    Frozen, a full collection scans only what was created after start (~50 µs there);
    with the higher threshold no collection ran at all during the measured runs.
    """
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD0, g1, g2)


def run(settings: Settings, *, use_uvloop: bool = True,
        on_ready: Callable[[], None] | None = None) -> Any:
    """Run the broker in this process until it is told to stop.

    This is the process entry point (the command line), so it also tunes the process's
    garbage collector once the listeners are up (``tune_gc``); a Server embedded in
    another program (the tests) leaves that program's collector alone.
    """
    server = Server(settings)

    def ready() -> None:
        tune_gc()
        if on_ready is not None:
            on_ready()

    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            uvloop = None  # type: ignore[assignment]
        if uvloop is not None:
            return uvloop.run(server.serve_forever(ready))
    return asyncio.run(server.serve_forever(ready))

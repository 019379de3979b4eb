"""The running broker: listeners, lifecycle and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from . import __version__
from ._accel import LOADED
from .config import Listener, Settings
from .connection import Connection, Flusher
from .node import Node
from .reasons import ReasonCode as RC

log = logging.getLogger("mqttd")


class ListenerError(Exception):
    """A listener could not be opened (address in use, permission denied, ...)."""


class Server:
    """An mqttd node serving its configured TCP listeners."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.node = Node(self.settings)
        self.connections: set[Connection] = set()
        self.listeners: dict[str, asyncio.base_events.Server] = {}
        self._stopped: asyncio.Event | None = None
        self._flusher: Flusher | None = None

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
        for listener in self.settings.listeners:
            await self.start_listener(listener)

    async def start_listener(self, listener: Listener) -> None:
        loop = asyncio.get_running_loop()
        zone = self.settings.zone(listener.zone)
        flusher = self._flusher
        assert flusher is not None

        def factory() -> Connection:
            return Connection(self.node, zone, flusher, self.connections)

        try:
            server = await loop.create_server(factory, listener.bind, listener.port,
                                              backlog=listener.backlog, reuse_address=True)
        except OSError as err:
            raise ListenerError(
                f"cannot listen on {listener.bind}:{listener.port} "
                f"(listener {listener.name}): {err.strerror or err}") from None
        self.listeners[listener.name] = server
        host, port = self.bound(listener.name)
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
            except asyncio.TimeoutError:
                pass
        deadline = asyncio.get_running_loop().time() + 2.0
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._stopped is not None:
            self._stopped.set()
        log.info("mqttd stopped")

    async def serve_forever(self) -> None:
        """Start, run until SIGINT/SIGTERM, then shut down gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received, shutting down")
        await self.stop()


def run(settings: Settings, *, use_uvloop: bool = True) -> Any:
    """Run the broker in this process until it is told to stop."""
    server = Server(settings)
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            uvloop = None  # type: ignore[assignment]
        if uvloop is not None:
            return uvloop.run(server.serve_forever())
    return asyncio.run(server.serve_forever())

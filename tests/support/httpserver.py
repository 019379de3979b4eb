"""A real HTTP service beside the broker under test (an authentication server, a JWKS
endpoint): an aiohttp application on 127.0.0.1, port 0, served by an event loop on a thread
of its own, so the test's blocking code runs beside it."""

from __future__ import annotations

import asyncio
import ssl
import threading

from aiohttp import web

__all__ = ["ThreadedHttpServer"]


class ThreadedHttpServer:
    """Subclasses add their handlers in :meth:`routes` (run on the server's loop) and set
    what the handlers use before calling ``super().__init__()``, which returns once the
    server listens on ``self.port``. :meth:`close` stops it."""

    #: Named in the failure if it does not start.
    NAME = "the HTTP server"

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10), f"{self.NAME} did not start"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        self.routes(app)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        self.loop.run_until_complete(site.start())
        self.port: int = self.runner.addresses[0][1]
        started.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

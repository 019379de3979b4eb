"""The HTTP listener: aiohttp in the broker's own event loop, serving the REST API
(``/api/v1/``), ``/metrics`` and the dashboard (``/``).

aiohttp runs each request in its own task and writes through flow-controlled transports,
so a slow or stuck HTTP client waits alone: listings are streamed page by page (each
page bounded in rows and time, as ``mqttd ctl`` pages), and nothing an HTTP request does
holds the loop for longer than one page.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from ..config import is_loopback
from ..mgmt.apikeys import ApiKeys
from ..mgmt.errors import MgmtError
from .api import PREFIX, Api, add_routes
from .auth import Authenticator
from .prometheus import CONTENT_TYPE, registry_for, render
from .respond import ApiError, error_response, mgmt_error_response
from .trace import TraceFiles

if TYPE_CHECKING:
    from ..config import HttpSettings
    from ..mgmt.api import Management
    from ..mgmt.publish import Publisher

__all__ = ["STATIC", "HttpError", "HttpServer"]

log = logging.getLogger("mqttd.http")

#: The dashboard's files (served as they are: no build step).
STATIC = Path(__file__).resolve().parent / "static"

#: What a middleware calls next.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large",
          400: "bad_request"}


class HttpError(Exception):
    """The HTTP listener cannot start (address in use, permission denied, ...)."""


class HttpServer:
    """The ``[http]`` listener of one node."""

    def __init__(self, mgmt: Management, publisher: Publisher, settings: HttpSettings,
                 data_dir: str | None) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self.keys = ApiKeys(data_dir)
        self.auth = Authenticator(mgmt, settings, self.keys)
        self.registry = registry_for(mgmt)
        self.api = Api(mgmt, publisher, TraceFiles(data_dir))
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] = (settings.bind, settings.port)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_size,
                              middlewares=[self._errors, self._authenticate])
        add_routes(app, self.api)
        app.router.add_get("/metrics", self._metrics)
        if STATIC.is_dir():
            app.router.add_get("/", self._index)
            app.router.add_static("/static/", STATIC, append_version=False)
        return app

    async def start(self) -> None:
        """Bind and serve; HttpError if the address cannot be bound."""
        settings = self.settings
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            sock = socket.create_server((settings.bind, settings.port), reuse_port=False,
                                        backlog=128)
        except OSError as err:
            await runner.cleanup()
            raise HttpError(f"http: cannot listen on {settings.bind}:{settings.port}: "
                            f"{err.strerror or err}") from None
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner
        host, port = sock.getsockname()[:2]
        self.address = (host, port)
        log.info("http api on %s:%d", host, port)
        if settings.allow_anonymous:
            where = "on loopback only" if is_loopback(settings.bind) else \
                f"on {settings.bind}, beyond loopback"
            log.warning("http: allow_anonymous = true: anyone who reaches %s:%d (%s) may "
                        "manage this node", host, port, where)

    async def close(self) -> None:
        """Stop serving (requests in progress get a moment to finish)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            # live trace streams would otherwise hold the shutdown until they time out
            await self.api.end_streams("the HTTP listener is closing")
            await runner.cleanup()

    # --- middlewares ------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure as ``{"code", "message"}`` with its status."""
        try:
            resp = await handler(request)
        except ApiError as err:
            resp = error_response(err.status, err.code, err.message, err.headers)
        except MgmtError as err:
            resp = mgmt_error_response(err)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _CODES.get(exc.status, "http_error")
            if exc.status == 404:
                message = f"no such endpoint: {request.method} {request.path}"
            elif exc.status == 405:
                message = (f"{request.method} is not allowed on {request.path} (allowed: "
                           f"{exc.headers.get('Allow', '')})")
            elif exc.status == 413:
                message = (f"the request body is larger than {self.settings.max_body_size} "
                           "bytes ([http] max_body_size)")
            else:
                message = exc.text or exc.reason
            resp = error_response(exc.status, code, message)
        log.debug("http %s %s -> %d (%s)", request.method, request.path, resp.status,
                  request.get("who", "-"))
        return resp

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler
                            ) -> web.StreamResponse:
        path = request.path
        metrics = path == "/metrics"
        if metrics or path.startswith(PREFIX + "/") or path == PREFIX:
            request["who"] = await self.auth.identify(request.headers.get("Authorization"),
                                                      metrics=metrics)
        return await handler(request)

    # --- /metrics and the dashboard ------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        body = render(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html",
                                headers={"Cache-Control": "no-cache"})

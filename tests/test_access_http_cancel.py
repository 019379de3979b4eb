"""A remote (http) authentication whose client leaves is cancelled, not run to its timeout.

A real aiohttp server on 127.0.0.1 (its own loop on a thread) holds every request without
answering and watches its connection; a real broker asks it with a 30 s timeout; raw
socket clients send CONNECT and leave. The server must see the broker close the request's
connection long before those 30 s (the check was cancelled), and the place the check held
under ``max_pending_per_address = 1`` must be free again for the next client from the same
address. A client that stays still gets its answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from support import builder as B, uid
from support.httpserver import ThreadedHttpServer
from support.process import BrokerProcess, checked_broker

from mqttd.mqtt.packets import Connack

pytest_plugins = ["support.fixtures"]

TIMEOUT = 30.0


class HoldingServer(ThreadedHttpServer):
    """Answers ``allow`` at once to user ``allow``; holds every other request until its
    connection closes (then records how long it was held) or ``release`` is set."""

    NAME = "the auth server"

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.closed = threading.Event()
        self.held_for: list[float] = []
        self.release = False
        super().__init__()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/auth", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("username") == "allow":
            return web.json_response({"result": "allow"})
        start = time.monotonic()
        self.arrived.set()
        # Watch the request's connection (bounded well past the broker's timeout).
        while time.monotonic() - start < TIMEOUT + 10:
            transport = request.transport
            if transport is None or transport.is_closing():
                self.held_for.append(time.monotonic() - start)
                self.closed.set()
                return web.Response(status=499)
            if self.release:
                return web.json_response({"result": "allow"})
            await asyncio.sleep(0.02)
        return web.json_response({"result": "allow"})


@pytest.fixture(scope="module")
def server() -> Iterator[HoldingServer]:
    s = HoldingServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def broker(server: HoldingServer) -> Iterator[BrokerProcess]:
    config = f"""
[auth]
max_pending_per_address = 1

[[auth.providers]]
type = "http"
url = "http://127.0.0.1:{server.port}/auth"
timeout = "{TIMEOUT}s"

[zones.default]
allow_anonymous = false
"""
    with checked_broker(config) as b:
        yield b


def test_a_check_whose_client_left_is_cancelled(broker: BrokerProcess, server: HoldingServer,
                                                raws: Any) -> None:
    server.arrived.clear()
    server.closed.clear()
    gone = raws(broker, 5)
    gone.send(B.connect(uid("gone-"), level=5, username="hold", password=b"pw"))
    assert server.arrived.wait(10), "the broker did not ask the server"
    # While the check runs it holds this address's only place: the next CONNECT from
    # 127.0.0.1 is refused with 0x89 (server busy).
    busy = raws(broker, 5)
    busy.send(B.connect(uid("busy-"), level=5, username="allow", password=b"pw"))
    assert busy.expect(Connack).reason_code == 0x89
    gone.close()  # the client leaves while the server still thinks
    # The broker cancels the request: the server sees its connection closed, long before
    # the provider's timeout would have ended it.
    assert server.closed.wait(TIMEOUT / 2), "the request ran on after its client left"
    assert server.held_for[-1] < TIMEOUT / 2
    # and the place it held is free again
    after = raws(broker, 5)
    after.send(B.connect(uid("after-"), level=5, username="allow", password=b"pw"))
    assert after.expect(Connack).reason_code == 0


def test_a_client_that_stays_gets_its_answer(broker: BrokerProcess, server: HoldingServer,
                                             raws: Any) -> None:
    server.arrived.clear()
    server.closed.clear()
    server.release = False
    stays = raws(broker, 5)
    stays.send(B.connect(uid("stays-"), level=5, username="hold", password=b"pw"))
    assert server.arrived.wait(10), "the broker did not ask the server"
    # several of the broker's looks at the client pass; the request is not touched
    with pytest.raises(AssertionError, match="nothing arrived"):
        stays.recv(timeout=1.0)
    assert not server.closed.is_set()
    server.release = True
    assert stays.expect(Connack).reason_code == 0
    server.release = False

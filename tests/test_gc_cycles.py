"""A client's objects never wait for the garbage collector (issue 17).

The daemon runs no middle or full collection by itself (server.tune_gc): what survives a
young collection stays until sysmon's full collection in a quiet moment. So a client that
comes and goes, however it goes, must leave no reference cycle holding its connection,
channel, session or parser: reference counting frees them when it leaves. A real in-process
server on uvloop (as the daemon runs), raw clients from a worker thread, the collector off
while they come and go; then one collection, keeping what it found, says what was garbage.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable, Iterator

import pytest
import uvloop
from support import WAIT, builder as B

from mqttd.config import Listener, Settings
from mqttd.server import Server

#: The broker's per-client types: none of them may be found in a cycle.
PER_CLIENT = {"Connection", "Channel", "Session", "Parser", "ParserPy", "WsFront"}


def _client(port: int, first: bytes, then: bytes = b"", *, read: bool = True,
            close_first: bool = False) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        s.sendall(first)
        if read:
            s.recv(256)  # the CONNACK (or the close)
        if close_first:
            return
        if then:
            s.sendall(then)
            s.settimeout(WAIT)
            try:
                while s.recv(256):  # until the broker closes
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
    finally:
        s.close()


def _takeover(port: int, client_id: str) -> None:
    old = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    new = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        old.sendall(B.connect(client_id, level=5))
        old.recv(256)
        new.sendall(B.connect(client_id, level=5))
        new.recv(256)
        old.recv(256)  # DISCONNECT 0x8E, then the close
        new.sendall(B.disconnect())
    finally:
        old.close()
        new.close()


def _pubsub(port: int, client_id: str, level: int) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        s.sendall(B.connect(client_id, level=level))
        s.recv(256)
        topic = f"cycles/{client_id}"
        s.sendall(B.subscribe(1, [(topic, 1)], properties=b"\x00" if level == 5 else b""))
        s.recv(256)
        s.sendall(B.publish(topic, b"hello", properties=b"\x00" if level == 5 else b""))
        got = b""
        while b"hello" not in got:
            chunk = s.recv(256)
            assert chunk, "the broker closed before delivering"
            got += chunk
        s.sendall(B.disconnect())
    finally:
        s.close()


#: Every way a client comes and goes that the broker handles differently.
WAYS: dict[str, Callable[[int, int], None]] = {
    "disconnect 3.1.1": lambda p, i: _client(p, B.connect(f"c4-{i}", level=4), B.disconnect()),
    "disconnect 5": lambda p, i: _client(p, B.connect(f"c5-{i}", level=5), B.disconnect()),
    "closed without DISCONNECT": lambda p, i: _client(p, B.connect(f"ab-{i}"),
                                                      close_first=True),
    "malformed CONNECT": lambda p, i: _client(p, b"\x10\x02\x00\x00"),
    "malformed packet after CONNECT": lambda p, i: _client(
        p, B.connect(f"bad-{i}", level=5), b"\x82\x02\x00\x01"),
    "first packet not CONNECT": lambda p, i: _client(p, B.pingreq()),
    "taken over": lambda p, i: _takeover(p, f"take-{i}"),
    "subscribe and publish 3.1.1": lambda p, i: _pubsub(p, f"ps4-{i}", 4),
    "subscribe and publish 5": lambda p, i: _pubsub(p, f"ps5-{i}", 5),
}


@pytest.fixture
def no_collector() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _garbage_types() -> dict[str, int]:
    """One collection keeping what it found: the type names of the garbage, counted."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found: dict[str, int] = {}
        for o in gc.garbage:
            name = type(o).__name__
            found[name] = found.get(name, 0) + 1
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()  # the cycles that were kept, freed for good
    return found


async def _until(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT * 4
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("way", list(WAYS))
def test_a_client_leaves_no_cycle(way: str, no_collector: None) -> None:
    async def main() -> dict[str, int]:
        server = Server(Settings(listeners=[Listener(port=0)]))
        await server.start()
        try:
            port = server.bound("default")[1]
            loop = asyncio.get_running_loop()
            stats = server.mgmt.status.computed_stats
            await _until(lambda: stats()["connections.count"] == 0, "a quiet start")
            before = _garbage_types()  # the server's own start-up, not counted
            assert not PER_CLIENT & before.keys(), before
            for i in range(20):
                await loop.run_in_executor(None, WAYS[way], port, i)
            await _until(lambda: stats()["connections.count"] == 0, "every client gone")
            for _ in range(20):  # the closes' last loop turns (deferred closes, lingers)
                await asyncio.sleep(0.01)
            return _garbage_types()
        finally:
            await server.stop()

    found = uvloop.run(main())
    assert not PER_CLIENT & found.keys(), f"{way}: cycles left by clients: {found}"

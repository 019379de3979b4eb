"""The floor under a uvloop broker's connect: a "broker" that only accepts and answers.

Listens on 127.0.0.1:PORT through 8 SO_REUSEPORT sockets (as mqttd's tcp listener does,
``listener.accept_sockets``), answers a client's first read with a CONNACK (accepted) and
holds the socket until the client closes; no parsing, no session, no hooks, one Python call
per connect (``data_received``), the collector tuned as ``mqttd.server.tune_gc`` does. Run
as a peer of bench/run.py's idle-10k scenario, it shows what uvloop, the kernel and the
load generator cost per connect with no broker logic at all (issue 17)::

    python3 bench/run.py --brokers mqttd,mosquitto \\
        --broker "uvfloor=python3 bench/connect_floor.py {port}" --scenarios idle-10k

Only idle-10k makes sense against it (it answers nothing but the CONNECT).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys

import uvloop

CONNACK = b"\x20\x02\x00\x00"
SOCKETS = 8


class _Client(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport | None = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(CONNACK)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(SOCKETS):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        sock.setblocking(False)
        await loop.create_server(_Client, sock=sock)
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 1_000_000_000, 1_000_000_000)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))

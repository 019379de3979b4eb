"""A raw-socket MQTT client for end-to-end tests: send exact bytes, read the broker's reaction.

The bytes sent come from ``builder`` (the tests' wire truth); what the broker
sends back is read with mqttd's reference parser (``ParserPy``) at the
protocol level the client expects, and summarised as plain tuples so a test
can compare a whole reaction with ``==``.

Every read is bounded: a reaction ends when the broker closes the connection
(EOF or RST), when a PINGRESP arrives (the connection is still open), or when
the timeout passes (a hang, which a test reports as such).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Self

import builder as B

from mqttd.mqtt.codec import ParserPy
from mqttd.mqtt.errors import PacketError
from mqttd.mqtt.packets import (
    Auth,
    Connack,
    Disconnect,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Unsuback,
)

#: Seconds a read waits for the broker before calling it a hang.
TIMEOUT = 2.0

CLOSED, OPEN, TIMEOUT_END = "closed", "open", "timeout"

PINGREQ = B.pingreq()


class Unparseable(NamedTuple):
    """Stands for bytes from the broker that its own reference parser rejects."""

    message: str


def summarize(pkt: Any) -> tuple[Any, ...]:
    """A packet from the broker as a comparable tuple: its name and what identifies the reaction."""
    if isinstance(pkt, (Connack, Disconnect, Auth, Puback, Pubrec, Pubrel, Pubcomp)):
        return (type(pkt).__name__.upper(), pkt.reason_code)
    if isinstance(pkt, (Suback, Unsuback)):
        return (type(pkt).__name__.upper(), tuple(pkt.reason_codes))
    if isinstance(pkt, Unparseable):
        return ("UNPARSEABLE", pkt.message)
    if isinstance(pkt, Publish):
        return ("PUBLISH", pkt.topic, pkt.payload)
    return (type(pkt).__name__.upper(),)


class Reaction(NamedTuple):
    """What the broker did after some input: its packets, how the read ended, the raw bytes."""

    packets: tuple[tuple[Any, ...], ...]
    end: str  # CLOSED (EOF/RST), OPEN (a PINGRESP arrived) or TIMEOUT_END
    raw: bytes
    elapsed: float
    objects: tuple[Any, ...] = ()  # the parsed packets themselves (``packets`` summarises them)

    def describe(self) -> str:
        return (f"packets={list(self.packets)} end={self.end} after {self.elapsed:.2f}s "
                f"raw={self.raw.hex(' ') or '(nothing)'}")


class RawClient:
    """One TCP connection to the broker, with the parser for the level its replies use."""

    def __init__(self, port: int, version: int = 4, *, host: str = "127.0.0.1",
                 timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.parser = ParserPy(version=version)
        self.unparsed = False  # the parser gave up: the broker sent bytes it cannot parse
        self.pending: list[Any] = []  # parsed, but after the packet the last read stopped at

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send everything; False if the broker had already closed (its reaction is still read)."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def read(self, until: Callable[[Any], bool] | None = None,
             timeout: float | None = None) -> Reaction:
        """Read until the broker closes, until a packet satisfies ``until`` (kept out of the
        result), or until ``timeout``; never longer."""
        start = time.monotonic()
        deadline = start + (self.timeout if timeout is None else timeout)
        objects: list[Any] = []
        raw = bytearray()
        end = TIMEOUT_END
        parsed, self.pending = self.pending, []
        while True:
            for i, pkt in enumerate(parsed):
                if until is not None and until(pkt):
                    self.pending = parsed[i + 1:]
                    return self._reaction(objects, OPEN, raw, start)
                objects.append(pkt)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                end = CLOSED
                break
            if not chunk:
                end = CLOSED
                break
            raw += chunk
            parsed = []
            if not self.unparsed:
                try:
                    parsed = self.parser.feed(chunk)
                except PacketError as err:
                    parsed = [*err.packets, Unparseable(err.message)]
                    self.unparsed = True
        return self._reaction(objects, end, raw, start)

    @staticmethod
    def _reaction(objects: list[Any], end: str, raw: bytearray, start: float) -> Reaction:
        return Reaction(tuple(summarize(p) for p in objects), end, bytes(raw),
                        time.monotonic() - start, tuple(objects))

    def sync(self, timeout: float | None = None) -> Reaction:
        """PINGREQ, then read up to its PINGRESP: everything the broker had to say so far."""
        self.send(PINGREQ)
        return self.read(lambda p: isinstance(p, Pingresp), timeout)

    def connect(self, connect_packet: bytes) -> Reaction:
        """Send a CONNECT and read up to its CONNACK (included)."""
        self.send(connect_packet)
        got: list[Any] = []

        def is_connack(p: Any) -> bool:
            if isinstance(p, Connack):
                got.append(p)
                return True
            return False

        reaction = self.read(is_connack)
        return reaction._replace(packets=reaction.packets + tuple(summarize(p) for p in got),
                                 objects=reaction.objects + tuple(got))

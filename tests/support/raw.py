"""The one raw-socket MQTT client: exact bytes out (from ``builder``), the broker's packets in.

For what a client library refuses to produce (malformed packets, protocol violations, exact
wire forms) and for readers that must account for every byte. What the broker sends back is
decoded with ``ParserPy``, mqttd's pure-Python reference parser, never the compiled parser
the broker itself may be running: a bug in the compiled codec must not be able to check,
and agree with, its own output.

Two ways to read, on the same buffered stream:

* packet by packet (:meth:`RawClient.recv`, :meth:`~RawClient.expect`,
  :meth:`~RawClient.expect_closed`): each wait is bounded, a timeout is an
  ``AssertionError``, the end of the connection is :class:`Closed`;
* a whole reaction (:meth:`RawClient.read`, :meth:`~RawClient.sync`,
  :meth:`~RawClient.handshake`): everything until the broker closes (EOF or RST), until a
  packet a test waits for (a PINGRESP: the connection is still open), or until the timeout
  (a hang, which a test reports as such), summarised as plain tuples so a test can compare a
  whole reaction with ``==``. Bytes the reference parser rejects show up as
  :class:`Unparseable` there, where the packet-by-packet reads fail instead.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from mqttd.mqtt._codec_py import ParserPy
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

from . import WAIT, builder as B

if TYPE_CHECKING:
    from .process import BrokerProcess

#: How a :class:`Reaction` ended: the broker closed (EOF/RST), a waited-for packet arrived
#: (the connection is open), or the time ran out.
CLOSED, OPEN, TIMEOUT_END = "closed", "open", "timeout"

PINGREQ = B.pingreq()

#: A timeout for reads that may wait as long as the broker is silent (a reader's own thread).
FOREVER = float("inf")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes off a blocking socket, or fewer if the broker closed first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


class Closed(Exception):
    """The broker closed the connection."""


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
    end: str  # CLOSED (EOF/RST), OPEN (a waited-for packet arrived) or TIMEOUT_END
    raw: bytes
    elapsed: float
    objects: tuple[Any, ...] = ()  # the parsed packets themselves (``packets`` summarises them)

    def describe(self) -> str:
        return (f"packets={list(self.packets)} end={self.end} after {self.elapsed:.2f}s "
                f"raw={self.raw.hex(' ') or '(nothing)'}")


class RawClient:
    """One TCP connection to the broker, parsing its replies at protocol level ``version``.

    ``target`` is a :class:`~support.process.BrokerProcess` (its ``port`` unless ``port`` is
    given) or a port on 127.0.0.1. ``timeout`` bounds the connect and is the default of every
    read. ``received`` keeps every byte the broker sent, for checks of the exact wire form.
    """

    def __init__(self, target: BrokerProcess | int, version: int = 4, *,
                 port: int | None = None, host: str | None = None, timeout: float = WAIT
                 ) -> None:
        if isinstance(target, int):
            address = (host or "127.0.0.1", target)
        else:
            address = (host or target.host, port or target.port)
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.version = version
        self.timeout = timeout
        self.parser = ParserPy(version=version)
        #: Parsed, not yet handed out by a read.
        self.packets: deque[Any] = deque()
        #: Every byte the broker sent.
        self.received = bytearray()
        self.closed = False  # the broker closed its side (EOF or RST)
        self.unparsed = False  # the parser gave up: the broker sent bytes it cannot parse

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # --- sending ----------------------------------------------------------------------------

    def send(self, *chunks: bytes) -> None:
        """Send everything; an error (the broker closed) is raised."""
        self.sock.sendall(b"".join(chunks))

    def try_send(self, data: bytes) -> bool:
        """Send everything; False if the broker had already closed (its reaction is still
        there to read), for inputs the broker may rightly cut short."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    # --- receiving --------------------------------------------------------------------------

    def _fill(self, timeout: float) -> bool:
        """One socket read into ``packets``; False if nothing came within ``timeout``."""
        self.sock.settimeout(None if timeout == FOREVER else timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return True
        self.received += data
        if not self.unparsed:
            try:
                self.packets.extend(self.parser.feed(data))
            except PacketError as err:
                self.packets.extend([*err.packets, Unparseable(err.message)])
                self.unparsed = True
        return True

    def _next(self) -> Any:
        p = self.packets.popleft()
        assert not isinstance(p, Unparseable), (
            f"the broker sent bytes its reference parser rejects: {p.message} "
            f"(received: {bytes(self.received).hex(' ')})")
        return p

    def recv(self, timeout: float | None = None) -> Any:
        """The next packet from the broker (AssertionError on timeout, Closed on EOF)."""
        while not self.packets:
            if self.closed:
                raise Closed()
            if not self._fill(self.timeout if timeout is None else timeout):
                raise AssertionError("nothing arrived from the broker in time")
        return self._next()

    def expect(self, cls: type, timeout: float | None = None) -> Any:
        """The next packet, which must be a ``cls``."""
        try:
            p = self.recv(timeout)
        except Closed:
            raise AssertionError(f"connection closed while expecting {cls.__name__}") from None
        assert isinstance(p, cls), f"expected {cls.__name__}, got {p!r}"
        return p

    def expect_closed(self, timeout: float | None = None) -> list[Any]:
        """Read until the broker closes the connection; returns the packets before it."""
        got: list[Any] = []
        while True:
            while self.packets:
                got.append(self._next())
            if self.closed:
                return got
            if not self._fill(self.timeout if timeout is None else timeout):
                raise AssertionError("nothing arrived from the broker in time")

    def connect(self, client_id: str = "", *, expect_rc: int | None = 0, **kwargs: Any
                ) -> Connack:
        """Send a CONNECT (``builder.connect``) at this client's level and return the CONNACK,
        whose reason code must be ``expect_rc`` (unless None)."""
        self.send(B.connect(client_id, level=self.version, **kwargs))
        ack = self.expect(Connack)
        if expect_rc is not None:
            assert ack.reason_code == expect_rc, ack
        return ack

    # --- whole reactions --------------------------------------------------------------------

    def read(self, until: Callable[[Any], bool] | None = None,
             timeout: float | None = None) -> Reaction:
        """Read until the broker closes, until a packet satisfies ``until`` (kept out of the
        result; what came after it stays for the next read), or until ``timeout``; never
        longer."""
        start = time.monotonic()
        deadline = start + (self.timeout if timeout is None else timeout)
        first = len(self.received)
        objects: list[Any] = []
        end = TIMEOUT_END
        while True:
            while self.packets:
                p = self.packets.popleft()
                if until is not None and until(p):
                    return self._reaction(objects, OPEN, first, start)
                objects.append(p)
            if self.closed:
                end = CLOSED
                break
            left = deadline - time.monotonic()
            if left <= 0 or not self._fill(left):
                break
        return self._reaction(objects, end, first, start)

    def _reaction(self, objects: list[Any], end: str, first: int, start: float) -> Reaction:
        return Reaction(tuple(summarize(p) for p in objects), end, bytes(self.received[first:]),
                        time.monotonic() - start, tuple(objects))

    def sync(self, timeout: float | None = None) -> Reaction:
        """PINGREQ, then read up to its PINGRESP: everything the broker had to say so far."""
        self.try_send(PINGREQ)
        return self.read(lambda p: isinstance(p, Pingresp), timeout)

    def handshake(self, connect_packet: bytes) -> Reaction:
        """Send a CONNECT given as bytes (possibly a bad one) and read up to its CONNACK,
        which is included in the reaction."""
        self.try_send(connect_packet)
        got: list[Any] = []

        def is_connack(p: Any) -> bool:
            if isinstance(p, Connack):
                got.append(p)
                return True
            return False

        reaction = self.read(is_connack)
        return reaction._replace(packets=reaction.packets + tuple(summarize(p) for p in got),
                                 objects=reaction.objects + tuple(got))

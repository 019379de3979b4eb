"""The PROXY protocol (HAProxy's, versions 1 and 2): the client address a load balancer
puts in front of the stream.

:func:`parse` is free of I/O; :func:`read_header` takes exactly the header off an accepted
socket (peeking first), so what follows it (a TLS ClientHello, a WebSocket upgrade, a
CONNECT) stays in the socket for the layer above. A malformed or missing header is a
:class:`ProxyError`: that connection is closed, no other.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

__all__ = ["MAX_HEADER", "ProxyError", "parse", "read_header"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: A v1 line is at most 107 bytes; a v2 header is 16 bytes plus what it announces, bounded
#: here (addresses take 36 at most; TLVs such as AWS's VPC endpoint id a few dozen more).
V1_MAX = 107
MAX_HEADER = 4096

#: (host, port) of the client as the header gives it; None when the header says the
#: connection is the proxy's own (v2 LOCAL, v1 UNKNOWN): the socket's address stands.
Address = tuple[str, int] | None


class ProxyError(Exception):
    """Not a valid PROXY protocol header."""


def parse(buf: bytes) -> tuple[int, Address] | None:
    """(header length, client address) when ``buf`` starts with a whole header; None when
    it is a valid beginning of one; ProxyError otherwise."""
    n = len(buf)
    if not n:
        return None
    if V2_SIGNATURE.startswith(buf[:12]):
        return _parse_v2(buf) if n >= 16 else None
    if V1_PREFIX.startswith(buf[:6]):
        return _parse_v1(buf)
    raise ProxyError("no PROXY protocol header (the listener expects one)")


def _parse_v1(buf: bytes) -> tuple[int, Address] | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyError("PROXY v1 line longer than 107 bytes")
        return None
    try:
        parts = buf[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 line is not ASCII") from None
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return end + 2, None
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyError(f"malformed PROXY v1 line: {buf[:end]!r}")
    _, family, src, dst, sport, dport = parts
    try:
        src_ip = ipaddress.ip_address(src)
        ipaddress.ip_address(dst)
        port = int(sport)
        if not (0 <= port <= 65535 and 0 <= int(dport) <= 65535) or not sport.isdigit():
            raise ValueError
    except ValueError:
        raise ProxyError(f"malformed PROXY v1 addresses: {buf[:end]!r}") from None
    if (family == "TCP4") != (src_ip.version == 4):
        raise ProxyError(f"PROXY v1 {family} with address {src}")
    return end + 2, (str(src_ip), port)


def _parse_v2(buf: bytes) -> tuple[int, Address] | None:
    if buf[:12] != V2_SIGNATURE:
        raise ProxyError("malformed PROXY v2 signature")
    ver_cmd, fam = buf[12], buf[13]
    length = int.from_bytes(buf[14:16], "big")
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"PROXY v2 header with version {ver_cmd >> 4}")
    if 16 + length > MAX_HEADER:
        raise ProxyError(f"PROXY v2 header of {16 + length} bytes (at most {MAX_HEADER})")
    if len(buf) < 16 + length:
        return None
    cmd = ver_cmd & 0x0F
    if cmd == 0x0:  # LOCAL: the proxy's own connection (a health check)
        return 16 + length, None
    if cmd != 0x1:
        raise ProxyError(f"PROXY v2 command {cmd:#x}")
    body = buf[16:16 + length]
    family = fam >> 4
    if family == 0x1:  # AF_INET: src, dst (4 each), sport, dport
        if length < 12:
            raise ProxyError("PROXY v2 IPv4 addresses truncated")
        return 16 + length, (socket.inet_ntop(socket.AF_INET, body[0:4]),
                             int.from_bytes(body[8:10], "big"))
    if family == 0x2:  # AF_INET6
        if length < 36:
            raise ProxyError("PROXY v2 IPv6 addresses truncated")
        return 16 + length, (socket.inet_ntop(socket.AF_INET6, body[0:16]),
                             int.from_bytes(body[32:34], "big"))
    return 16 + length, None  # AF_UNSPEC or AF_UNIX: no usable address


async def read_header(sock: socket.socket) -> Address:
    """Take the PROXY header off a non-blocking accepted socket; its address.

    Peeks, and consumes only header bytes, so the stream after it is left for the next
    layer. Bounded by the caller's timeout. ProxyError for a bad or missing header, or
    when the client closes first.
    """
    loop = asyncio.get_running_loop()
    got = b""
    while True:
        await _readable(loop, sock)
        try:
            data = sock.recv(MAX_HEADER - len(got), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not data:
            raise ProxyError("connection closed before the PROXY header ended")
        result = parse(got + data)
        if result is None:
            # All of it belongs to the unfinished header: take it, wait for more.
            got += sock.recv(len(data))
            if len(got) >= MAX_HEADER:
                raise ProxyError(f"PROXY header longer than {MAX_HEADER} bytes")
            continue
        length, address = result
        need = length - len(got)
        while need:
            chunk = sock.recv(need)  # peeked: already there
            if not chunk:
                raise ProxyError("connection closed inside the PROXY header")
            need -= len(chunk)
        return address


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)

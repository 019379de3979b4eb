"""A raw WebSocket client (RFC 6455) for frame-level tests of the ws/wss listeners.

Unlike a browser or paho, it lets a test choose every byte: the handshake's headers (or drop
one), each frame's FIN, opcode, RSV bits and masking, how an MQTT packet is cut into frames.
What the server sends is checked against the RFC where the server has no choice (the
``Sec-WebSocket-Accept`` value, unmasked frames, no RSV bits without an extension) and
otherwise handed back as it came: the HTTP status and headers of a refused handshake, each
frame, the close code.

Standard library only (``socket``, ``ssl``); every read is bounded by a timeout.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Self

__all__ = ["BINARY", "CLOSE", "CONTINUATION", "PING", "PONG", "TEXT", "ConnectionClosed",
           "WsClient", "WsProtocolError", "accept_key"]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
#: Close code for "closed without a close frame" (RFC 6455 7.1.5); never sent on the wire.
ABNORMAL_CLOSURE = 1006


class WsProtocolError(Exception):
    """The server broke RFC 6455 (wrong accept key, a masked frame, RSV bits, ...)."""


class ConnectionClosed(Exception):
    """The connection ended where a frame or an MQTT packet was expected; ``code`` is the
    close frame's code (None if it had none), or 1006 if the TCP connection just ended."""

    def __init__(self, code: int | None, reason: bytes = b"") -> None:
        super().__init__(f"connection closed: code {code} {reason!r}")
        self.code = code
        self.reason = reason


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``Sec-WebSocket-Key: key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def _mask(data: bytes, key: bytes) -> bytes:
    # XOR with the 4-byte key repeated, as one big integer operation (fast enough for tests).
    n = len(data)
    if not n:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def _mqtt_length(buf: bytes | bytearray) -> int | None:
    """Total length of the MQTT packet at the start of ``buf``, or None if its fixed header
    is not complete yet."""
    multiplier, remaining = 1, 0
    for i in range(1, 5):
        if i >= len(buf):
            return None
        byte = buf[i]
        remaining += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return 1 + i + remaining
        multiplier *= 128
    raise WsProtocolError(f"malformed MQTT remaining length: {bytes(buf[:5]).hex()}")


class WsClient:
    """One WebSocket connection. Make it with :meth:`connect`.

    After the handshake ``status``, ``reason`` and ``headers`` (lower-case names; repeated
    headers joined with ", ") describe the server's HTTP response; ``upgraded`` is True for
    a checked 101, and ``body`` holds a refusal's body (by its Content-Length). Frames can be
    sent only on an upgraded connection. ``subprotocol`` is what the server chose.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self._buf = bytearray()  # bytes received, not yet parsed
        self._mqtt = bytearray()  # payload of binary frames, not yet a whole MQTT packet
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.body = b""
        self.upgraded = False
        self.subprotocol: str | None = None
        #: Close code and reason of the close frame received, once one was.
        self.close_code: int | None = None
        self.close_reason = b""

    # --- handshake -------------------------------------------------------------------------

    @classmethod
    def connect(cls, host: str, port: int, path: str = "/mqtt",
                subprotocols: Sequence[str] = ("mqtt",), origin: str | None = None,
                headers: Mapping[str, str | None] | None = None,
                ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                timeout: float = 5.0) -> Self:
        """Open a TCP (``ssl_context``: TLS) connection and send the opening handshake.

        ``headers`` are added to the request, replacing a default one of the same name; a
        value of None removes that default (e.g. ``{"Upgrade": None}``). An empty
        ``subprotocols`` sends no ``Sec-WebSocket-Protocol``. Returns the client whatever the
        status; a 101 whose accept key, Upgrade/Connection headers or subprotocol are wrong
        raises :class:`WsProtocolError`.
        """
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
            client = cls(sock, timeout)
            client._handshake(host, port, path, subprotocols, origin, headers or {})
        except BaseException:
            sock.close()
            raise
        return client

    def _handshake(self, host: str, port: int, path: str, subprotocols: Sequence[str],
                   origin: str | None, extra: Mapping[str, str | None]) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        fields: dict[str, str | None] = {
            "Host": f"{host}:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
        if subprotocols:
            fields["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
        if origin is not None:
            fields["Origin"] = origin
        lower = {k.lower(): k for k in fields}
        for name, value in extra.items():
            fields.pop(lower.get(name.lower(), name), None)
            fields[name] = value
        request = f"GET {path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in fields.items() if v is not None) + "\r\n"
        self.sock.sendall(request.encode("latin-1"))

        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > 65536:
                raise WsProtocolError("no end of the HTTP response headers in 64 KiB")
            self._fill(deadline)
        head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
        self._buf = bytearray(rest)  # frames the server sent right after the 101
        status_line, *lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise WsProtocolError(f"not an HTTP response: {status_line!r}")
        self.status, self.reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
        for line in lines:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers \
                else value
        if self.status != 101:
            length = int(self.headers.get("content-length", "0") or 0)
            while len(self._buf) < length:
                self._fill(deadline)
            self.body = bytes(self._buf[:length])
            return

        got = self.headers.get("sec-websocket-accept")
        if got != accept_key(key):
            raise WsProtocolError(f"Sec-WebSocket-Accept {got!r} is not {accept_key(key)!r}")
        if self.headers.get("upgrade", "").lower() != "websocket":
            raise WsProtocolError(f"Upgrade: {self.headers.get('upgrade')!r}")
        if "upgrade" not in [t.strip().lower() for t in self.headers.get("connection", "")
                             .split(",")]:
            raise WsProtocolError(f"Connection: {self.headers.get('connection')!r}")
        self.subprotocol = self.headers.get("sec-websocket-protocol")
        if self.subprotocol is not None and self.subprotocol not in subprotocols:
            raise WsProtocolError(f"subprotocol {self.subprotocol!r} was not offered")
        self.upgraded = True

    # --- bytes in ----------------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        """Read what is there into the buffer; TimeoutError past ``deadline``,
        ConnectionClosed(1006) on end of stream."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("nothing more from the server in time")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("nothing more from the server in time") from None
        except (ConnectionResetError, ssl.SSLEOFError):
            data = b""
        if not data:
            raise ConnectionClosed(ABNORMAL_CLOSURE)
        self._buf += data

    def _take(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    # --- frames --------------------------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True,
                   mask: bool = True, rsv: int = 0) -> None:
        """Send one frame exactly as asked: ``rsv`` is the three RSV bits (0-7) and
        ``mask=False`` sends it unmasked (which a server must refuse)."""
        if not self.upgraded:
            raise RuntimeError(f"not a WebSocket connection (HTTP {self.status})")
        self.sock.sendall(self.frame_bytes(opcode, payload, fin=fin, mask=mask, rsv=rsv))

    @staticmethod
    def frame_bytes(opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True,
                    rsv: int = 0) -> bytes:
        """The bytes of one client frame (for tests that send several in one write)."""
        head = bytearray([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0x0F])
        n = len(payload)
        mbit = 0x80 if mask else 0
        if n < 126:
            head.append(mbit | n)
        elif n < 65536:
            head += bytes([mbit | 126]) + struct.pack("!H", n)
        else:
            head += bytes([mbit | 127]) + struct.pack("!Q", n)
        if not mask:
            return bytes(head) + payload
        key = os.urandom(4)
        return bytes(head) + key + _mask(payload, key)

    def send_binary(self, data: bytes) -> None:
        self.send_frame(BINARY, data)

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are (a malformed frame, half a frame, ...)."""
        self.sock.sendall(data)

    def ping(self, payload: bytes = b"") -> None:
        self.send_frame(PING, payload)

    def recv_frame(self, timeout: float | None = None) -> tuple[bool, int, bytes]:
        """The next frame as ``(fin, opcode, payload)``, whatever its opcode. A close frame
        also sets ``close_code``/``close_reason``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        b0, b1 = self._take(2, deadline)
        if b0 & 0x70:
            raise WsProtocolError(f"server frame with RSV bits {b0 >> 4 & 7:#x}")
        if b1 & 0x80:
            raise WsProtocolError("server frame is masked (RFC 6455 5.1: it must not be)")
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._take(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._take(8, deadline))[0]
        fin, opcode, payload = bool(b0 & 0x80), b0 & 0x0F, self._take(n, deadline)
        if opcode == CLOSE:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            self.close_reason = payload[2:]
        return fin, opcode, payload

    def recv_mqtt(self, timeout: float | None = None) -> bytes:
        """The next whole MQTT packet (its bytes), put together from binary and continuation
        frames however the server cut them; several packets in one frame come one per call.
        A ping is answered with a pong on the way; a close frame raises ConnectionClosed, a
        text frame WsProtocolError (MQTT travels in binary frames only)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            total = _mqtt_length(self._mqtt)
            if total is not None and len(self._mqtt) >= total:
                packet = bytes(self._mqtt[:total])
                del self._mqtt[:total]
                return packet
            _fin, opcode, payload = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if opcode in (BINARY, CONTINUATION):
                self._mqtt += payload
            elif opcode == PING:
                self.send_frame(PONG, payload)
            elif opcode == CLOSE:
                raise ConnectionClosed(self.close_code, self.close_reason)
            elif opcode != PONG:
                raise WsProtocolError(f"opcode {opcode:#x} where MQTT data was expected")

    # --- closing -------------------------------------------------------------------------------

    def close(self, code: int | None = 1000, reason: bytes = b"") -> None:
        """Send a close frame (``code=None``: one with no payload). The socket stays open so
        the server's answer can be read with :meth:`wait_closed`."""
        payload = b"" if code is None else struct.pack("!H", code) + reason
        self.send_frame(CLOSE, payload)

    def wait_closed(self, timeout: float | None = None) -> int | None:
        """Read (and drop) frames until the server closes; return the code of its close frame
        (None if it had no code) or 1006 if the connection ended without one. A server's
        close is echoed, as RFC 6455 5.5.1 asks. The socket is closed afterwards."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                try:
                    _fin, opcode, payload = self.recv_frame(
                        max(0.0, deadline - time.monotonic()))
                except ConnectionClosed as closed:
                    return closed.code
                if opcode == CLOSE:
                    try:
                        self.sock.sendall(self.frame_bytes(CLOSE, payload[:2]))
                    except OSError:
                        pass  # it may have closed the TCP connection already
                    return self.close_code
        finally:
            self.sock.close()

    def shutdown(self) -> None:
        """Close the socket, without a close frame."""
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

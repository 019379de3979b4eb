"""``support.wsclient`` speaks RFC 6455 correctly: against Debian's mosquitto's websockets
listener (ws and wss) a CONNECT in one frame, in two frames and in a fragmented message all
get their CONNACK, a ping gets its pong, a close gets its close. Against small loopback
servers scripted here it shows a refused handshake's status, headers and body, refuses a
wrong accept key and a masked server frame, and puts MQTT packets together however the
server cut them into frames.

What mosquitto 2.0.11 (libwebsockets 4.1) does beyond that is recorded, not endorsed: it
upgrades whatever the path, closes without an HTTP answer when Upgrade or a known
subprotocol is missing, and accepts unmasked and text frames from a client."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from support import WAIT
from support.certs import make_pki
from support.mosquitto import MOSQUITTO, Mosquitto
from support.wsclient import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    ConnectionClosed,
    WsClient,
    WsProtocolError,
    accept_key,
)

needs_mosquitto = pytest.mark.skipif(not os.path.exists(MOSQUITTO),
                                     reason="Debian's mosquitto is not installed")

# MQTT 3.1.1 CONNECT (clean session, keep-alive 30, empty client id) and its CONNACK.
CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0])
CONNACK = bytes([0x20, 2, 0, 0])
PINGREQ, PINGRESP = bytes([0xC0, 0]), bytes([0xD0, 0])


@pytest.fixture(scope="module")
def mosq() -> Iterator[Mosquitto]:
    if not os.path.exists(MOSQUITTO):
        pytest.skip("Debian's mosquitto is not installed")
    with Mosquitto(["protocol websockets"]) as broker:
        yield broker


@needs_mosquitto
def test_connect_connack_in_one_frame(mosq: Mosquitto) -> None:
    with WsClient.connect("127.0.0.1", mosq.port) as ws:
        assert (ws.status, ws.upgraded, ws.subprotocol) == (101, True, "mqtt")
        ws.send_binary(CONNECT)
        assert ws.recv_mqtt() == CONNACK
        ws.send_binary(PINGREQ)
        assert ws.recv_mqtt() == PINGRESP


@needs_mosquitto
def test_a_packet_split_across_two_frames(mosq: Mosquitto) -> None:
    with WsClient.connect("127.0.0.1", mosq.port) as ws:  # two whole binary messages
        ws.send_binary(CONNECT[:5])
        ws.send_binary(CONNECT[5:])
        assert ws.recv_mqtt() == CONNACK
    with WsClient.connect("127.0.0.1", mosq.port) as ws:  # one message in two fragments
        ws.send_frame(BINARY, CONNECT[:5], fin=False)
        ws.send_frame(CONTINUATION, CONNECT[5:])
        assert ws.recv_mqtt() == CONNACK


@needs_mosquitto
def test_ping_is_answered_with_the_same_payload_and_close_with_close(mosq: Mosquitto) -> None:
    with WsClient.connect("127.0.0.1", mosq.port) as ws:
        ws.send_binary(CONNECT)
        assert ws.recv_mqtt() == CONNACK
        ws.ping(b"are you there \x00\xff")
        assert ws.recv_frame() == (True, PONG, b"are you there \x00\xff")
        ws.close(1000)
        assert ws.wait_closed() == 1000


@needs_mosquitto
def test_wss_and_the_other_subprotocol(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    lines = ["protocol websockets", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}"]
    with Mosquitto(lines) as broker:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        with WsClient.connect("127.0.0.1", broker.port, subprotocols=("mqttv3.1",),
                              ssl_context=ctx) as ws:
            assert (ws.status, ws.subprotocol) == (101, "mqttv3.1")
            ws.send_binary(CONNECT)
            assert ws.recv_mqtt() == CONNACK


@needs_mosquitto
def test_what_mosquitto_does_with_odd_handshakes_and_frames(mosq: Mosquitto) -> None:
    # Any path is upgraded.
    with WsClient.connect("127.0.0.1", mosq.port, path="/not-mqtt") as ws:
        assert ws.status == 101
    # No Upgrade header, or no subprotocol it knows: the connection ends, no HTTP answer.
    for kwargs in ({"headers": {"Upgrade": None}}, {"subprotocols": ("foo",)}):
        with pytest.raises(ConnectionClosed) as closed:
            WsClient.connect("127.0.0.1", mosq.port, **kwargs)
        assert closed.value.code == 1006
    # An unmasked frame and a text frame are taken as MQTT data anyway.
    for opcode, mask in ((BINARY, False), (TEXT, True)):
        with WsClient.connect("127.0.0.1", mosq.port) as ws:
            ws.send_frame(opcode, CONNECT, mask=mask)
            assert ws.recv_mqtt() == CONNACK


# --- scripted loopback servers ---------------------------------------------------------------

@contextmanager
def ws_server(script: Callable[[socket.socket, str], None]) -> Iterator[int]:
    """A one-connection server on 127.0.0.1 port 0: reads the request, then runs
    ``script(conn, key)`` (``key``: the request's Sec-WebSocket-Key)."""
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(WAIT)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                key = next(line.split(b":", 1)[1].strip().decode()
                           for line in request.split(b"\r\n")
                           if line.lower().startswith(b"sec-websocket-key:"))
                script(conn, key)
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            errors.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(WAIT)
    assert not errors, errors


def upgrade(key: str, accept: str | None = None) -> bytes:
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Protocol: mqtt\r\n"
            f"Sec-WebSocket-Accept: {accept or accept_key(key)}\r\n\r\n").encode()


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return WsClient.frame_bytes(opcode, payload, fin=fin, mask=False)


def test_recv_mqtt_puts_packets_together_however_they_are_framed() -> None:
    publish = bytes([0x30, 130, 1, 0, 1]) + b"t" + b"x" * 127  # 2-byte remaining length
    pongs: list[bytes] = []

    def script(conn: socket.socket, key: str) -> None:
        # The 101 and the first frames in one write; a packet over three frames (the length
        # bytes cut too), two packets in one frame, a ping and a fragmented message between.
        conn.sendall(upgrade(key) + server_frame(BINARY, CONNACK + publish[:1]))
        conn.sendall(server_frame(BINARY, publish[1:2]) + server_frame(PING, b"p1"))
        conn.sendall(server_frame(BINARY, publish[2:] + PINGRESP + PINGRESP[:1], fin=False))
        conn.sendall(server_frame(CONTINUATION, PINGRESP[1:]))
        pong = b""
        while len(pong) < 8:  # the client's pong: 2 header bytes, mask key, 2 payload bytes
            chunk = conn.recv(8 - len(pong))
            if not chunk:
                break
            pong += chunk
        pongs.append(pong)
        conn.sendall(server_frame(CLOSE, (1001).to_bytes(2, "big") + b"bye"))

    with ws_server(script) as port, WsClient.connect("127.0.0.1", port) as ws:
        assert ws.recv_mqtt() == CONNACK
        assert ws.recv_mqtt() == publish
        assert ws.recv_mqtt() == PINGRESP
        assert ws.recv_mqtt() == PINGRESP
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv_mqtt()
        assert (closed.value.code, closed.value.reason) == (1001, b"bye")
    (pong,) = pongs
    assert pong[0] == 0x80 | PONG and pong[1] == 0x80 | 2  # FIN, masked, 2 bytes
    assert bytes(b ^ pong[2 + i % 4] for i, b in enumerate(pong[6:])) == b"p1"


def test_server_breaking_rfc6455_is_refused() -> None:
    with ws_server(lambda conn, key: conn.sendall(upgrade(key, "d3Jvbmc="))) as port, \
            pytest.raises(WsProtocolError, match="Sec-WebSocket-Accept"):
        WsClient.connect("127.0.0.1", port)

    def masked(conn: socket.socket, key: str) -> None:
        conn.sendall(upgrade(key) + WsClient.frame_bytes(BINARY, CONNACK, mask=True))

    with ws_server(masked) as port, WsClient.connect("127.0.0.1", port) as ws, \
            pytest.raises(WsProtocolError, match="masked"):
        ws.recv_frame()


def test_refused_handshake_shows_status_headers_and_body() -> None:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            seen.append({k.lower(): v for k, v in self.headers.items()})
            body = b"no such path\n"
            self.send_response(404, "Not Found")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Test", "a")
            self.send_header("X-Test", "b")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.handle_request, daemon=True)
    thread.start()
    try:
        ws = WsClient.connect("127.0.0.1", httpd.server_address[1], path="/nope",
                              origin="http://example.test",
                              headers={"Sec-WebSocket-Version": None, "X-Forwarded-For": "1.2.3.4"})
        with ws:
            assert (ws.status, ws.reason, ws.upgraded) == (404, "Not Found", False)
            assert ws.headers["x-test"] == "a, b" and ws.body == b"no such path\n"
            with pytest.raises(RuntimeError, match="HTTP 404"):
                ws.send_binary(CONNECT)
    finally:
        thread.join(WAIT)
        httpd.server_close()
    (request,) = seen
    assert request["origin"] == "http://example.test"
    assert request["x-forwarded-for"] == "1.2.3.4"
    assert "sec-websocket-version" not in request
    assert request["sec-websocket-protocol"] == "mqtt" and request["upgrade"] == "websocket"

"""The WebSocket listener's fast path (mqttd/transport/websocket.py) and every way out of it,
with a raw RFC 6455 client against a real broker: many final masked binary frames in one
write and one frame over many writes, 7-, 16- and 64-bit lengths both ways (server frames
unmasked), control frames between data frames (the fast path goes on after them), a
fragmented message (the library takes the rest of the stream), and each frame the state
machine must refuse: reserved opcode, RSV bits, unmasked, a continuation with nothing to
continue, an oversized control frame (1002), an oversized data frame (1009), text (1003);
the client's close; frames sent with the upgrade request (the library path from the start).
Real clients (paho, MQTT.js in Chromium) run over the fast path in test_transport_websocket.py.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from support import WAIT, builder as b, uid
from support.process import BrokerProcess, checked_broker
from support.wsclient import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, WsClient, accept_key

pytest_plugins = ["support.fixtures"]

CONNACK_OK = b"\x20\x02\x00\x00"
MAX = 100_000  # max_packet_size: room for a 64-bit-length frame (> 65,535 bytes)


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    config = f"""
[mqtt]
idle_timeout = 5
max_packet_size = {MAX}

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.ws]
type = "ws"
bind = "127.0.0.1"
port = 0
"""
    with checked_broker(config) as br:
        yield br


def frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True,
          rsv: int = 0) -> bytes:
    return WsClient.frame_bytes(opcode, payload, fin=fin, mask=mask, rsv=rsv)


def client(broker: BrokerProcess, topic: str | None = None) -> WsClient:
    """Upgraded, connected and (with ``topic``) subscribed to it at QoS 0."""
    c = WsClient.connect("127.0.0.1", broker.ports["ws"])
    assert c.upgraded, (c.status, c.reason)
    c.send_binary(b.connect(uid("fast-"), keepalive=30))
    assert c.recv_mqtt() == CONNACK_OK
    if topic is not None:
        c.send_binary(b.subscribe(1, [(topic, 0)]))
        assert c.recv_mqtt() == b"\x90\x03\x00\x01\x00"
    return c


def still_works(c: WsClient, topic: str) -> None:
    """A PUBLISH to its own subscription comes back, and PINGREQ is answered."""
    c.send_binary(b.publish(topic, b"still here") + b.pingreq())
    assert c.recv_mqtt() == b.publish(topic, b"still here")
    assert c.recv_mqtt() == b"\xd0\x00"


def test_many_frames_in_one_write_and_one_frame_in_many(broker: BrokerProcess) -> None:
    topic = uid("fast/")
    c = client(broker, topic)
    pubs = [b.publish(topic, b"m%03d" % i) for i in range(200)]
    c.send_raw(b"".join(frame(BINARY, p) for p in pubs))
    for p in pubs:
        assert c.recv_mqtt() == p
    # one frame a byte per write: the fast path keeps the partial frame between reads
    one = b.publish(topic, b"dribbled")
    for byte in frame(BINARY, one):
        c.send_raw(bytes([byte]))
    assert c.recv_mqtt() == one
    # packets cut across frames at any point, the frames packed into one write
    packed = b"".join(pubs[:5])
    c.send_raw(b"".join(frame(BINARY, packed[i:i + 7]) for i in range(0, len(packed), 7)))
    for p in pubs[:5]:
        assert c.recv_mqtt() == p
    c.send_raw(frame(BINARY, b""))  # an empty data frame carries nothing and harms nothing
    still_works(c, topic)
    c.close()
    assert c.wait_closed() == 1000


@pytest.mark.parametrize("size", [300, 70_000], ids=["16-bit", "64-bit"])
def test_long_frames_both_ways(broker: BrokerProcess, size: int) -> None:
    topic = uid("long/")
    c = client(broker, topic)
    pub = b.publish(topic, os.urandom(size))
    whole = frame(BINARY, pub)
    c.send_raw(whole[:3])  # split inside the extended length
    c.send_raw(whole[3:])
    fin, opcode, payload = c.recv_frame()
    assert (fin, opcode) == (True, BINARY)  # recv_frame refuses a masked server frame
    assert payload == pub
    still_works(c, topic)
    c.shutdown()


def test_control_frames_between_data_frames(broker: BrokerProcess) -> None:
    topic = uid("ctl/")
    c = client(broker, topic)
    pubs = [b.publish(topic, b"p%d" % i) for i in range(3)]
    c.send_raw(frame(BINARY, pubs[0]) + frame(PING, b"one") + frame(BINARY, pubs[1])
               + frame(PONG, b"unasked") + frame(PING, b"two") + frame(BINARY, pubs[2]))
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + WAIT
    while len(got) < 5:
        assert time.monotonic() < deadline, got
        _fin, opcode, payload = c.recv_frame()
        got.append((opcode, payload))
    assert [p for op, p in got if op == PONG] == [b"one", b"two"]
    assert b"".join(p for op, p in got if op == BINARY) == b"".join(pubs)
    still_works(c, topic)
    c.close()
    assert c.wait_closed() == 1000


def test_fragmented_message_then_the_library_carries_on(broker: BrokerProcess) -> None:
    topic = uid("frag/")
    c = client(broker, topic)
    first = b.publish(topic, b"before")
    pub = b.publish(topic, b"in fragments")
    c.send_raw(frame(BINARY, first) + frame(BINARY, pub[:4], fin=False)
               + frame(PING, b"mid") + frame(CONTINUATION, pub[4:9], fin=False)
               + frame(CONTINUATION, pub[9:]))
    assert c.recv_mqtt() == first  # (recv_mqtt answers the pong's ping on the way)
    assert c.recv_mqtt() == pub
    for _ in range(3):
        still_works(c, topic)
    c.close()
    assert c.wait_closed() == 1000


@pytest.mark.parametrize("bad", [
    pytest.param(frame(0x3, b"\x30\x00"), id="reserved-data-opcode"),
    pytest.param(frame(0xB, b""), id="reserved-control-opcode"),
    pytest.param(frame(BINARY, b"\xd0\x00", rsv=4), id="rsv1-without-deflate"),
    pytest.param(frame(BINARY, b"\xd0\x00", mask=False), id="unmasked"),
    pytest.param(frame(CONTINUATION, b"\xd0\x00"), id="continuation-of-nothing"),
    pytest.param(frame(PING, b"x" * 126), id="control-frame-over-125"),
    pytest.param(frame(PING, b"x", fin=False), id="fragmented-control-frame"),
])
def test_protocol_errors_close_with_1002(broker: BrokerProcess, bad: bytes) -> None:
    topic = uid("bad/")
    watcher = client(broker, topic)
    c = client(broker)
    # the PUBLISH before the bad frame, in the same write, is still taken
    c.send_raw(frame(BINARY, b.publish(topic, b"first")) + bad
               + frame(BINARY, b.publish(topic, b"never")))
    assert watcher.recv_mqtt() == b.publish(topic, b"first")
    assert c.wait_closed() == 1002
    still_works(watcher, topic)  # nothing after the bad frame reached anyone
    watcher.shutdown()


def test_oversized_data_frame_closes_with_1009_from_its_header(broker: BrokerProcess) -> None:
    c = client(broker)
    # only the header of a frame over max_packet_size: refused without waiting for it
    c.send_raw(frame(BINARY, b"\x30" + b"x" * (MAX + 10))[:14])
    assert c.wait_closed() == 1009


def test_text_frame_after_data_in_one_write_closes_with_1003(broker: BrokerProcess) -> None:
    topic = uid("text/")
    watcher = client(broker, topic)
    c = client(broker)
    c.send_raw(frame(BINARY, b.publish(topic, b"ok")) + frame(TEXT, b"hi")
               + frame(BINARY, b.publish(topic, b"never")))
    assert watcher.recv_mqtt() == b.publish(topic, b"ok")
    assert c.wait_closed() == 1003
    still_works(watcher, topic)
    watcher.shutdown()


def test_client_close_after_data_in_one_write(broker: BrokerProcess) -> None:
    topic = uid("close/")
    watcher = client(broker, topic)
    c = client(broker)
    c.send_raw(frame(BINARY, b.publish(topic, b"last words"))
               + frame(CLOSE, struct.pack("!H", 1000)))
    assert watcher.recv_mqtt() == b.publish(topic, b"last words")
    fin, opcode, _payload = c.recv_frame()
    assert (fin, opcode, c.close_code) == (True, CLOSE, 1000)  # the close echoed
    c.shutdown()
    still_works(watcher, topic)
    watcher.shutdown()


def test_half_a_frame_then_eof_harms_nobody(broker: BrokerProcess) -> None:
    topic = uid("eof/")
    watcher = client(broker, topic)
    c = client(broker)
    c.send_raw(frame(BINARY, b.publish(topic, b"cut"))[:5])
    c.sock.shutdown(socket.SHUT_WR)
    assert c.wait_closed() in (1006, 1002)
    still_works(watcher, topic)  # the cut PUBLISH went nowhere
    watcher.shutdown()


def test_frames_sent_with_the_upgrade_request(broker: BrokerProcess) -> None:
    """A client that does not wait for the 101: the library path from the start."""
    topic = uid("eager/")
    key = base64.b64encode(os.urandom(16)).decode()
    port = broker.ports["ws"]
    request = (f"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n").encode()
    connect = b.connect(uid("eager-"), keepalive=30)
    sub = b.subscribe(1, [(topic, 0)])
    pub = b.publish(topic, b"eager")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request + frame(BINARY, connect) + frame(BINARY, sub[:3]))
        sock.sendall(frame(BINARY, sub[3:]) + frame(BINARY, pub))
        want = (b"\x82\x04" + CONNACK_OK + b"\x82\x05\x90\x03\x00\x01\x00"
                + b"\x82" + bytes([len(pub)]) + pub)
        data = b""
        deadline = time.monotonic() + WAIT
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < len(want):
            assert time.monotonic() < deadline, data
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert accept_key(key).encode() in head
        # the server may frame CONNACK, SUBACK and PUBLISH together or apart
        assert _payloads(rest) == CONNACK_OK + b"\x90\x03\x00\x01\x00" + pub


def _payloads(data: bytes) -> bytes:
    """The payloads of unmasked binary frames, joined."""
    out = b""
    while data:
        assert data[0] == 0x82 and data[1] < 126, data
        n = data[1]
        out += data[2:2 + n]
        data = data[2 + n:]
    return out

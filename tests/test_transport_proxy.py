"""PROXY protocol listeners end to end: v1 and v2 headers give the client's address (shown
by ``mqttd ctl clients show``), also in front of TLS (the header and the ClientHello in one
segment) and WebSocket; a missing, malformed, oversized or unfinished header closes that
connection only, counted in ``connections.refused.proxy_protocol``. The parser's own cases
run on :func:`mqttd.transport.proxy.parse` directly."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import WAIT, builder as b, uid
from support.certs import Pki, make_pki
from support.clients import Client
from support.process import BrokerProcess, assert_clean_log, checked_broker, run_mqttd
from support.raw import recv_exact

from mqttd.transport.proxy import ProxyError, parse

pytest_plugins = ["support.fixtures"]

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
CONNACK_OK = b"\x20\x02\x00\x00"


def v2(cmd: int, fam: int, body: bytes) -> bytes:
    return V2_SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def v2_inet(src: str, sport: int, dst: str = "10.0.0.1", dport: int = 1883,
            tlv: bytes = b"") -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return v2(0x1, 0x11, body + tlv)


def v2_inet6(src: str, sport: int) -> bytes:
    body = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1")
            + struct.pack("!HH", sport, 1883))
    return v2(0x1, 0x21, body)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki) -> Iterator[BrokerProcess]:
    config = f"""
[mqtt]
idle_timeout = 2

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.lb]
bind = "127.0.0.1"
port = 0
proxy_protocol = true

[listeners.lbtls]
type = "ssl"
bind = "127.0.0.1"
port = 0
proxy_protocol = true
certfile = "{pki.server_cert}"
keyfile = "{pki.server_key}"

[listeners.lbws]
type = "ws"
bind = "127.0.0.1"
port = 0
proxy_protocol = true
"""
    with checked_broker(config) as br:
        yield br


def ctl_json(broker: BrokerProcess, *args: str) -> Any:
    r = run_mqttd("ctl", "--data-dir", str(broker.data_dir), "--json", *args)
    assert r.returncode == 0, r
    return json.loads(r.stdout)


def metric(broker: BrokerProcess) -> int:
    metrics = ctl_json(broker, "broker", "metrics")["metrics"]
    return int(metrics["connections.refused.proxy_protocol"])


def proxied(broker: BrokerProcess, header: bytes, cid: str) -> socket.socket:
    """A client through the ``lb`` listener: the header and CONNECT in one segment."""
    s = socket.create_connection(("127.0.0.1", broker.ports["lb"]), timeout=WAIT)
    s.sendall(header + b.connect(cid, keepalive=30))
    assert recv_exact(s, 4) == CONNACK_OK
    return s


# --- the header gives the address -------------------------------------------------------------


@pytest.mark.parametrize(("header", "peer"), [
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n", "203.0.113.7:51234"),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 1883\r\n", "2001:db8::7:4000"),
    (v2_inet("198.51.100.20", 60000), "198.51.100.20:60000"),
    (v2_inet("198.51.100.21", 60001, tlv=b"\x04\x00\x03abc"), "198.51.100.21:60001"),
    (v2_inet6("2001:db8::99", 7000), "2001:db8::99:7000"),
], ids=["v1-tcp4", "v1-tcp6", "v2-inet", "v2-inet-tlv", "v2-inet6"])
def test_header_gives_the_client_address(broker: BrokerProcess, header: bytes,
                                          peer: str) -> None:
    cid = uid("px-")
    s = proxied(broker, header, cid)
    assert ctl_json(broker, "clients", "show", cid)["peername"] == peer
    s.close()


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", v2(0x0, 0x00, b"")],
                         ids=["v1-unknown", "v2-local"])
def test_local_and_unknown_keep_the_socket_address(broker: BrokerProcess, header: bytes
                                                   ) -> None:
    cid = uid("local-")
    s = proxied(broker, header, cid)
    peer = ctl_json(broker, "clients", "show", cid)["peername"]
    assert peer == "127.0.0.1:%d" % s.getsockname()[1]
    s.close()


def test_header_in_its_own_segments_then_connect(broker: BrokerProcess) -> None:
    cid = uid("slow-")
    s = socket.create_connection(("127.0.0.1", broker.ports["lb"]), timeout=WAIT)
    header = b"PROXY TCP4 192.0.2.1 10.0.0.1 1111 1883\r\n"
    for i in range(0, len(header), 7):  # dribbled: the reader waits for the rest
        s.sendall(header[i:i + 7])
        time.sleep(0.01)
    s.sendall(b.connect(cid, keepalive=30))
    assert recv_exact(s, 4) == CONNACK_OK
    assert ctl_json(broker, "clients", "show", cid)["peername"] == "192.0.2.1:1111"
    s.close()


def test_proxy_header_then_tls_in_one_segment(broker: BrokerProcess, pki: Pki) -> None:
    """The ClientHello travels with the header: the header must be taken off exactly."""
    cid = uid("pxtls-")
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    s = socket.create_connection(("127.0.0.1", broker.ports["lbtls"]), timeout=WAIT)
    first = True
    deadline = time.monotonic() + WAIT
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if first:
                pending = v2_inet("192.0.2.44", 4444) + pending
                first = False
            if pending:
                s.sendall(pending)
            data = s.recv(65536)
            assert data, "closed during the handshake"
            incoming.write(data)
        assert time.monotonic() < deadline
    s.sendall(outgoing.read())
    tls.write(b.connect(cid, keepalive=30))
    s.sendall(outgoing.read())
    got = b""
    while len(got) < 4:
        try:
            got += tls.read(4 - len(got))
        except ssl.SSLWantReadError:
            data = s.recv(65536)
            assert data
            incoming.write(data)
    assert got == CONNACK_OK
    row = ctl_json(broker, "clients", "show", cid)
    assert (row["peername"], row["transport"]) == ("192.0.2.44:4444", "ssl")
    s.close()


def test_proxy_header_then_websocket_upgrade(broker: BrokerProcess) -> None:
    cid = uid("pxws-")
    s = socket.create_connection(("127.0.0.1", broker.ports["lbws"]), timeout=WAIT)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(b"PROXY TCP4 192.0.2.9 10.0.0.1 9999 80\r\n"
              b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: " + key.encode() + b"\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Protocol: mqtt\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk
        head += chunk
    assert head.startswith(b"HTTP/1.1 101")
    connect = b.connect(cid, keepalive=30)
    s.sendall(bytes([0x82, 0x80 | len(connect)]) + b"\0\0\0\0" + connect)  # zero mask
    assert recv_exact(s, 6) == b"\x82\x04" + CONNACK_OK
    assert ctl_json(broker, "clients", "show", cid)["peername"] == "192.0.2.9:9999"
    s.close()


# --- bad headers: that connection only ---------------------------------------------------------


def test_missing_malformed_and_unfinished_headers_close_that_connection_only(
        broker: BrokerProcess) -> None:
    topic = uid("live/")
    live = Client(broker, uid("live-"))
    live.connect()
    live.subscribe(topic, 0)
    before = metric(broker)
    bad = [
        b.connect(uid("noheader-")),                     # no header: MQTT straight away
        b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n",         # malformed v1
        b"PROXY TCP4 " + b"1" * 200 + b"\r\n",            # v1 line too long
        V2_SIG + b"\x31\x11\x00\x0c" + b"\0" * 12,        # v2 version 3
        V2_SIG + b"\x21\x11\xff\xff",                      # v2 announcing 64 KiB
    ]
    for data in bad:
        with socket.create_connection(("127.0.0.1", broker.ports["lb"]), timeout=WAIT) as s:
            s.sendall(data)
            assert s.recv(100) == b""
    t0 = time.monotonic()  # half a header, then nothing: the idle timeout (2 s) ends it
    with socket.create_connection(("127.0.0.1", broker.ports["lb"]), timeout=WAIT * 2) as s:
        s.sendall(b"PROXY TCP4 192.0.2.1")
        assert s.recv(100) == b""
    assert time.monotonic() - t0 < 2 + WAIT
    deadline = time.monotonic() + WAIT
    while metric(broker) < before + len(bad) + 1:
        assert time.monotonic() < deadline, metric(broker)
        time.sleep(0.05)
    pub = Client(broker, uid("pub-"))
    pub.connect()
    pub.publish(topic, b"unharmed")
    assert live.expect_message().payload == b"unharmed"
    assert "PROXY protocol handshake with" in broker.log()
    assert_clean_log(broker)
    live.close()
    pub.close()


# --- the parser -------------------------------------------------------------------------------


def test_parse_needs_more_for_every_prefix_of_a_header() -> None:
    for header in (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", v2_inet("1.2.3.4", 1)):
        for i in range(len(header)):
            assert parse(header[:i]) is None, header[:i]
        assert parse(header + b"\x10rest") == (len(header), ("1.2.3.4", 1))


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n", b"\x10\x0c\x00\x04MQTT", b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
    b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"\r\n\r\n\x00\r\nQUIX\n", v2(0x1, 0x11, b"\0" * 4), v2(0x7, 0x11, b"\0" * 12),
])
def test_parse_refuses_what_is_not_a_header(data: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(data)

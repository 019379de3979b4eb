"""Regression tests from the review of the transports (TLS, WebSocket, PROXY protocol), the
certificate identity and credential revocation: each case is a defect found and proven against
a real broker process before it was fixed."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import WAIT, builder as b, uid
from support.certs import Pki, make_pki
from support.clients import Client
from support.process import BrokerProcess, assert_clean_log, checked_broker, run_mqttd, wait_log
from support.wsclient import BINARY, TEXT, WsClient

from mqttd.access.password_file import hash_password

pytest_plugins = ["support.fixtures"]

CONNACK_OK = b"\x20\x02\x00\x00"


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

[listeners.ws]
type = "ws"
bind = "127.0.0.1"
port = 0
forwarded_for = true
max_connections = 2

[listeners.wss]
type = "wss"
bind = "127.0.0.1"
port = 0
certfile = "{pki.server_cert}"
keyfile = "{pki.server_key}"
max_connections = 2
"""
    with checked_broker(config) as br:
        yield br


def ctl_json(broker: BrokerProcess, *args: str) -> Any:
    r = run_mqttd("ctl", "--data-dir", str(broker.data_dir), "--json", *args)
    assert r.returncode == 0, r
    return json.loads(r.stdout)


def metric(broker: BrokerProcess, name: str) -> int:
    return int(ctl_json(broker, "broker", "metrics")["metrics"][name])


# --- WebSocket --------------------------------------------------------------------------------


def test_forwarded_for_in_several_header_lines(broker: BrokerProcess) -> None:
    # HAProxy's `option forwardfor` adds its own X-Forwarded-For line after the client's:
    # two lines of one header made the upgrade raise (a traceback, the client dropped).
    cid = uid("fwd2-")
    c = WsClient.connect("127.0.0.1", broker.ports["ws"],
                         headers={"X-Forwarded-For": "203.0.113.7",
                                  "x-forwarded-for": "198.51.100.20, 192.0.2.33"})
    assert c.upgraded, (c.status, c.body)
    c.send_binary(b.connect(cid, keepalive=30))
    assert c.recv_mqtt() == CONNACK_OK
    # the last entry of the last line: what the proxy in front wrote
    assert ctl_json(broker, "clients", "show", cid)["peername"] == "192.0.2.33:0"
    c.shutdown()
    assert_clean_log(broker)


def test_frames_after_a_text_frame_in_the_same_read_are_not_taken(broker: BrokerProcess
                                                                    ) -> None:
    # A text frame fails the connection (1003); a PUBLISH in a binary frame parsed from the
    # same read was still handed to the channel and published.
    topic = uid("after-text/")
    sub = Client(broker, uid("sub-"))
    sub.connect()
    sub.subscribe(topic + "/#", 0)
    c = WsClient.connect("127.0.0.1", broker.ports["ws"])
    c.send_binary(b.connect(uid("txt-"), keepalive=30))
    assert c.recv_mqtt() == CONNACK_OK
    c.send_raw(WsClient.frame_bytes(TEXT, b"hello")
               + WsClient.frame_bytes(BINARY, b.publish(topic + "/smuggled", b"x")))
    assert c.wait_closed() == 1003
    c.shutdown()
    marker = Client(broker, uid("marker-"))
    marker.connect()
    marker.publish(topic + "/marker", b"m")
    assert sub.expect_message().topic == topic + "/marker"
    sub.assert_no_message()
    marker.close()
    sub.close()


def test_a_socket_closed_before_the_upgrade_is_logged_with_its_address(broker: BrokerProcess,
                                                                       pki: Pki) -> None:
    # The address was asked of the closed transport, which (uvloop) no longer knows it: the
    # log said "WebSocket handshake with None failed".
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    raw = socket.create_connection(("127.0.0.1", broker.ports["wss"]), timeout=WAIT)
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    port = s.getsockname()[1]
    s.close()
    wait_log(broker, f"WebSocket handshake with 127.0.0.1:{port} failed: closed before the "
             "WebSocket upgrade")
    assert "WebSocket handshake with None" not in broker.log()


# --- credential revocation --------------------------------------------------------------------


def test_credentials_revoked_while_their_check_runs_do_not_let_the_client_in(
        tmp_path: Path) -> None:
    # A reload that removes a user while that user's password is being hashed: the check
    # answers from the entry it read before the reload, and the client got in (and stayed:
    # the reload's sweep of connected clients ran before it had connected).
    passwd = tmp_path / "passwd"
    # slow enough that the reload surely finishes while the hash runs
    passwd.write_text(f"alice:{hash_password(b'pw', iterations=4_000_000).encode()}\n")
    passwd.chmod(0o600)
    config = f"""
[auth]
password_file = "{passwd}"
hash_threads = 1
"""
    with checked_broker(config) as br:
        before = metric(br, "client.connect")
        s = socket.create_connection(("127.0.0.1", br.port), timeout=WAIT * 4)
        s.sendall(b.connect(uid("alice-"), username="alice", password=b"pw", keepalive=30))
        # the CONNECT is read and its check handed to the (idle) hashing thread
        deadline = time.monotonic() + WAIT
        while metric(br, "client.connect") == before:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        passwd.write_text("")
        ctl_json(br, "acl", "reload")
        reply = s.recv(16)
        # refused: CONNACK 0x05 (not authorized), not 0x00
        assert reply[:2] == b"\x20\x02" and reply[3] != 0, reply
        s.close()

"""WebSocket listeners end to end: paho-mqtt's WebSocket transport over ws and wss, MQTT.js
in a real headless Chromium, and a raw WebSocket client for the frame-level cases (packets
split across frames and packed into one, continuation frames, ping, close handshake, text
frames, oversize frames) and every refused upgrade (wrong path, missing Upgrade, missing or
wrong subprotocol, foreign Origin, not HTTP at all, no upgrade in time)."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import WAIT, builder as b, uid
from support.browser import browser_round_trip
from support.certs import Pki, make_pki
from support.clients import Client
from support.process import BrokerProcess, assert_clean_log, checked_broker, run_mqttd
from support.wsclient import BINARY, CONTINUATION, PONG, TEXT, WsClient

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
max_packet_size = 4096

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.ws]
type = "ws"
bind = "127.0.0.1"
port = 0

[listeners.wss]
type = "wss"
bind = "127.0.0.1"
port = 0
certfile = "{pki.server_cert}"
keyfile = "{pki.server_key}"

[listeners.guarded]
type = "ws"
bind = "127.0.0.1"
port = 0
path = "/broker"
allowed_origins = ["https://app.example.com"]
forwarded_for = true
compress = true
"""
    with checked_broker(config) as br:
        yield br


def ctl_json(broker: BrokerProcess, *args: str) -> Any:
    r = run_mqttd("ctl", "--data-dir", str(broker.data_dir), "--json", *args)
    assert r.returncode == 0, r
    return json.loads(r.stdout)


def metric(broker: BrokerProcess, name: str) -> int:
    return int(ctl_json(broker, "broker", "metrics")["metrics"][name])


def wait_metric(broker: BrokerProcess, name: str, at_least: int) -> None:
    deadline = time.monotonic() + WAIT
    while metric(broker, name) < at_least:
        assert time.monotonic() < deadline, (name, metric(broker, name), at_least)
        time.sleep(0.05)


def ws(broker: BrokerProcess, listener: str = "ws", **kwargs: Any) -> WsClient:
    return WsClient.connect("127.0.0.1", broker.ports[listener], **kwargs)


def mqtt_ws(broker: BrokerProcess, client_id: str, listener: str = "ws", **kwargs: Any
            ) -> WsClient:
    """An upgraded raw client that has sent CONNECT and read its CONNACK."""
    c = ws(broker, listener, **kwargs)
    assert c.upgraded and c.subprotocol == "mqtt", (c.status, c.reason, c.body)
    c.send_binary(b.connect(client_id, keepalive=30))
    assert c.recv_mqtt() == CONNACK_OK
    return c


# --- real clients -----------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["ws", "wss"])
@pytest.mark.parametrize("version", [4, 5])
def test_paho_websockets_round_trip(broker: BrokerProcess, pki: Pki, listener: str,
                                    version: int) -> None:
    tls = {"ca_certs": str(pki.ca_cert)} if listener == "wss" else None
    topic = uid("pahows/")
    c = Client(broker, uid("pws-"), version=version, port=broker.ports[listener],
               transport="websockets", tls=tls)
    c.connect()
    c.subscribe(topic, 1)
    tcp = Client(broker, uid("tcp-"))
    tcp.connect()
    tcp.publish(topic, b"x" * 3000, qos=1)  # several TCP segments, one WebSocket frame
    assert c.expect_message().payload == b"x" * 3000
    c.publish(topic, b"from websocket", qos=1)
    assert c.expect_message().payload == b"from websocket"
    row = ctl_json(broker, "clients", "show", c.c._client_id.decode())
    assert (row["listener"], row["transport"]) == (listener, listener)
    c.close()
    tcp.close()


@pytest.mark.parametrize("version", [4, 5])
def test_mqttjs_in_chromium_round_trip_over_ws(broker: BrokerProcess, version: int) -> None:
    topic = uid("browser/")
    result = browser_round_trip(f"ws://127.0.0.1:{broker.ports['ws']}/mqtt", topic,
                                "hello from chromium", protocol_version=version)
    assert result["error"] is None, result
    assert (result["topic"], result["payload"]) == (topic, "hello from chromium")


def test_mqttjs_in_chromium_round_trip_over_wss(broker: BrokerProcess, pki: Pki) -> None:
    topic = uid("browser-tls/")
    result = browser_round_trip(f"wss://127.0.0.1:{broker.ports['wss']}/mqtt", topic,
                                "secure hello", trust_certs=(pki.server_cert,))
    assert result["error"] is None, result
    assert result["payload"] == "secure hello"


# --- frames -----------------------------------------------------------------------------------


def test_packets_split_across_frames_and_packed_into_one(broker: BrokerProcess) -> None:
    topic = uid("frames/")
    c = ws(broker)
    connect = b.connect(uid("split-"), keepalive=30)
    c.send_frame(BINARY, connect[:3])  # split inside the header
    c.send_frame(BINARY, connect[3:9])
    c.send_frame(BINARY, connect[9:])
    assert c.recv_mqtt() == CONNACK_OK
    # SUBSCRIBE + PINGREQ + PUBLISH in one frame
    c.send_binary(b.subscribe(1, [(topic, 0)]) + b.pingreq() + b.publish(topic, b"packed"))
    assert c.recv_mqtt() == b"\x90\x03\x00\x01\x00"
    assert c.recv_mqtt() == b"\xd0\x00"
    assert c.recv_mqtt() == b.publish(topic, b"packed")
    # a fragmented message: BINARY (not final) then CONTINUATION frames
    pub = b.publish(topic, b"fragmented")
    c.send_frame(BINARY, pub[:4], fin=False)
    c.send_frame(CONTINUATION, pub[4:10], fin=False)
    c.send_frame(CONTINUATION, pub[10:], fin=True)
    assert c.recv_mqtt() == pub
    c.close()
    assert c.wait_closed() == 1000


def test_ping_is_answered_with_its_payload(broker: BrokerProcess) -> None:
    c = mqtt_ws(broker, uid("ping-"))
    c.ping(b"are you there")
    fin, opcode, payload = c.recv_frame()
    assert (fin, opcode, payload) == (True, PONG, b"are you there")
    c.send_binary(b.pingreq())
    assert c.recv_mqtt() == b"\xd0\x00"
    c.shutdown()


def test_text_frame_closes_with_1003_and_harms_nobody(broker: BrokerProcess) -> None:
    topic = uid("text/")
    other = mqtt_ws(broker, uid("other-"))
    other.send_binary(b.subscribe(1, [(topic, 0)]))
    assert other.recv_mqtt()[:1] == b"\x90"
    c = mqtt_ws(broker, uid("text-"))
    c.send_frame(TEXT, b"\x30\x05\x00\x01a" + b"hi")
    assert c.wait_closed() == 1003
    pub = mqtt_ws(broker, uid("pub-"))
    pub.send_binary(b.publish(topic, b"after text"))
    assert other.recv_mqtt() == b.publish(topic, b"after text")
    for x in (other, pub):
        x.shutdown()


def test_frame_over_the_maximum_packet_size_closes_with_1009(broker: BrokerProcess) -> None:
    c = mqtt_ws(broker, uid("big-"))
    c.send_frame(BINARY, b.publish("big", b"x" * 8000))  # max_packet_size = 4096
    assert c.wait_closed() == 1009


def test_server_closes_with_the_close_handshake(broker: BrokerProcess) -> None:
    cid = uid("kick-")
    c = ws(broker)
    c.send_binary(b.connect(cid, level=5, keepalive=30))
    assert c.recv_mqtt()[:1] == b"\x20"
    r = run_mqttd("ctl", "--data-dir", str(broker.data_dir), "clients", "kick", cid)
    assert r.returncode == 0, r
    assert c.recv_mqtt()[:1] == b"\xe0"  # DISCONNECT (MQTT 5) first
    assert c.wait_closed() == 1000


def test_permessage_deflate_only_where_configured(broker: BrokerProcess) -> None:
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    plain = ws(broker, headers=offer)
    assert plain.upgraded and "sec-websocket-extensions" not in plain.headers
    plain.shutdown()
    deflating = ws(broker, "guarded", path="/broker", origin="https://app.example.com",
                   headers=offer)
    assert deflating.upgraded
    assert "permessage-deflate" in deflating.headers["sec-websocket-extensions"]
    deflating.shutdown()


# --- refused upgrades -------------------------------------------------------------------------


def test_refused_upgrades_get_their_http_status_and_are_counted(broker: BrokerProcess) -> None:
    before = metric(broker, "connections.refused.websocket")
    cases = [
        (ws(broker, path="/nope"), 404),
        (ws(broker, headers={"Upgrade": None}), 426),
        (ws(broker, subprotocols=()), 400),
        (ws(broker, subprotocols=("chat",)), 400),
        (ws(broker, "guarded", path="/broker", origin="https://evil.example.com"), 403),
    ]
    for client, status in cases:
        assert (client.status, client.upgraded) == (status, False), (status, client.status)
        client.shutdown()
    wait_metric(broker, "connections.refused.websocket", before + len(cases))


def test_legacy_subprotocol_mqttv31_is_accepted(broker: BrokerProcess) -> None:
    c = ws(broker, subprotocols=("mqttv3.1",))
    assert c.upgraded and c.subprotocol == "mqttv3.1"
    c.send_binary(b.connect(uid("v31-"), level=3, keepalive=30))
    assert c.recv_mqtt() == CONNACK_OK
    c.shutdown()


def test_not_http_and_no_upgrade_in_time_are_closed(broker: BrokerProcess) -> None:
    before = metric(broker, "connections.refused.websocket")
    # an MQTT client on the WebSocket port: refused at once with 400
    with socket.create_connection(("127.0.0.1", broker.ports["ws"]), timeout=WAIT) as s:
        s.sendall(b.connect(uid("raw-")))
        reply = s.recv(200)
        assert reply.startswith(b"HTTP/1.1 400"), reply
    # a TLS ClientHello on a ws port, likewise
    ctx = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", broker.ports["ws"]), timeout=WAIT) as s, \
            pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(s, server_hostname="127.0.0.1")
    # nothing at all: closed within the zone's idle timeout (2 s)
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", broker.ports["ws"]), timeout=WAIT * 2) as s:
        assert s.recv(100) == b""
    assert time.monotonic() - t0 < 2 + WAIT
    wait_metric(broker, "connections.refused.websocket", before + 3)
    assert_clean_log(broker)


def test_forwarded_for_gives_the_client_address(broker: BrokerProcess) -> None:
    cid = uid("fwd-")
    c = mqtt_ws(broker, cid, "guarded", path="/broker", origin="https://app.example.com",
                headers={"X-Forwarded-For": "203.0.113.50, 198.51.100.9"})
    assert ctl_json(broker, "clients", "show", cid)["peername"] == "198.51.100.9:0"
    plain = mqtt_ws(broker, uid("direct-"))
    c.shutdown()
    plain.shutdown()

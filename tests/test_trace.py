"""Traces (``mqttd ctl trace``): the packet format, the cost model, and live/file traces of
real clients against a real daemon."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from support import WAIT, uid
from support.clients import Client, mosquitto_pub
from support.ctlrun import ctl, ctl_json, ok
from support.livetrace import LiveTrace
from support.process import BrokerProcess, assert_clean_log, broker_fixture
from test_ctl import wait_until

from mqttd.config import Settings
from mqttd.core.channel import Channel
from mqttd.core.message import Message
from mqttd.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Puback,
    Publish,
    Pubrel,
    Suback,
    SubOpts,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)
from mqttd.node import Node
from mqttd.trace.format import format_bytes, format_packet, format_properties
from mqttd.trace.manager import ChannelTracer, ConnectProbe

# --- the packet format ----------------------------------------------------------------------


def test_format_connect_hides_the_password() -> None:
    p = Connect(proto_level=5, clean_start=True, keepalive=60, client_id="c1", username="u",
                password=b"hunter2", will=Will("w/t", b"bye", 1, True),
                properties={"session_expiry_interval": 30, "authentication_method": "X",
                            "authentication_data": b"secret-token"})
    text = format_packet(p)
    assert text == ("CONNECT(Q0, R0, D0, ClientId=c1, ProtoVer=5, CleanStart=true, KeepAlive=60, "
                    "Username=u, Password=******, Will(Q1, R1, Topic=w/t, Payload=bye), "
                    "Properties={session_expiry_interval=30, authentication_method=X, "
                    "authentication_data=******})")
    assert "hunter2" not in text and "secret-token" not in text
    assert "Password" not in format_packet(Connect(client_id="c2"))
    assert "secret" not in format_packet(Auth(0x18, {"authentication_data": b"secret"}))


def test_format_every_packet() -> None:
    cases = [
        (Publish("t", b"hi", 1, False, False, 1),
         "PUBLISH(Q1, R0, D0, Topic=t, PacketId=1, Payload=hi)"),
        (Publish("t/0", b"", 0, True), "PUBLISH(Q0, R1, D0, Topic=t/0, Payload=)"),
        (Publish("t", b"x", 2, False, True, 7, {"topic_alias": 3}),
         "PUBLISH(Q2, R0, D1, Topic=t, PacketId=7, Payload=x, Properties={topic_alias=3})"),
        (Connack(True, 0), "CONNACK(Q0, R0, D0, SessionPresent=true, ReasonCode=0x00)"),
        (Puback(5, 0x10), "PUBACK(Q0, R0, D0, PacketId=5, ReasonCode=0x10)"),
        (Pubrel(5), "PUBREL(Q1, R0, D0, PacketId=5, ReasonCode=0x00)"),
        (Subscribe(2, [("a/#", SubOpts(1, True, True, 2)), ("b", SubOpts(0))]),
         "SUBSCRIBE(Q1, R0, D0, PacketId=2, TopicFilters=[a/#(Q1, NL, RAP, RH2), b(Q0)])"),
        (Suback(2, [1, 0x80]), "SUBACK(Q0, R0, D0, PacketId=2, ReasonCodes=[0x01, 0x80])"),
        (Unsubscribe(3, ["a/#"]), "UNSUBSCRIBE(Q1, R0, D0, PacketId=3, TopicFilters=[a/#])"),
        (Unsuback(3), "UNSUBACK(Q0, R0, D0, PacketId=3)"),
        (Pingreq(), "PINGREQ(Q0, R0, D0)"),
        (Disconnect(0x8E), "DISCONNECT(Q0, R0, D0, ReasonCode=0x8E)"),
    ]
    for packet, text in cases:
        assert format_packet(packet) == text


def test_payload_is_cut_at_the_limit() -> None:
    p = Publish("t", b"a" * 1000, 0)
    assert format_packet(p, 8).endswith("Payload=aaaaaaaa...(1000 bytes))")
    assert format_packet(p, 0).endswith("Payload=...(1000 bytes))")
    assert "a" * 1000 in format_packet(p, 1000)


def test_payloads_and_properties_print_as_text_or_hex_never_python_reprs() -> None:
    assert format_bytes("héllo".encode(), 256) == "héllo"
    assert format_bytes(b"\x00\x01\xff", 256) == "hex:0001ff"
    assert format_bytes(b'{\n\t"a": 1\r\n}', 256) == '{\\n\\t"a": 1\\r\\n}'  # one line
    assert format_bytes(b"\x1b[31m", 256) == "hex:1b5b33316d"  # no terminal escapes
    # a cut inside a character keeps the text whole up to it
    assert format_bytes("héllo".encode(), 2) == "h...(6 bytes)"
    assert format_bytes(b"\xff" * 10, 4) == "hex:ffffffff...(10 bytes)"
    props = {"user_property": [("k", "v"), ("unit", "°C")], "content_type": "text/plain",
             "correlation_data": b"\x01\x02", "authentication_data": b"secret"}
    assert format_properties(props, 16) == (
        "{user_property=[k=v, unit=°C], content_type=text/plain, correlation_data=hex:0102, "
        "authentication_data=******}")
    p = Publish("t", b"\xff\xfe", 0, False, False, 0, {"user_property": [("a", "b")]})
    assert format_packet(p) == ("PUBLISH(Q0, R0, D0, Topic=t, Payload=hex:fffe, "
                                "Properties={user_property=[a=b]})")


def test_payload_limit_setting() -> None:
    from mqttd.config import ConfigError, parse_settings

    settings = parse_settings({"node": {"trace_payload_limit": 8}})
    node = Node(settings)
    assert node.trace.payload_limit == 8
    assert Node(Settings()).trace.payload_limit == 256
    with pytest.raises(ConfigError, match="trace_payload_limit"):
        parse_settings({"node": {"trace_payload_limit": -1}})


# --- the cost model, in process ------------------------------------------------------------

class Sink:
    json = False
    destination = "test"

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.closed: str | None = None

    def write(self, text: str, event: dict[str, Any]) -> None:
        self.lines.append(text)

    def close(self, reason: str | None) -> None:
        self.closed = reason or "closed"


def test_untraced_channels_carry_no_tracer() -> None:
    node = Node(Settings())
    zone = node.settings.zone("default")
    manager = node.trace
    ch = Channel(node.broker, zone, "127.0.0.1:1")
    manager.watch(ch)  # no client trace: nothing is attached
    assert ch.tracer is None
    assert not node.broker.topic_traces  # the publish path's only test is this dict's truth
    sink = Sink()
    trace = manager.start_client("c1", sink)
    other, traced = Channel(node.broker, zone, "127.0.0.1:2"), Channel(node.broker, zone, "127.0.0.1:3")
    manager.watch(other)
    manager.watch(traced)
    assert isinstance(other.tracer, ConnectProbe)
    other.tracer("RECV", Connect(client_id="someone-else"))
    assert other.tracer is None  # removed itself at CONNECT: no per-packet cost from here
    traced.tracer("RECV", Connect(client_id="c1", password=b"pw"))
    assert isinstance(traced.tracer, ChannelTracer)
    traced.tracer("SEND", Connack(False, 0))
    assert len(sink.lines) == 2
    assert " c1@127.0.0.1:3 RECV CONNECT(" in sink.lines[0]
    assert "Password=******" in sink.lines[0] and "pw'" not in sink.lines[0]
    assert " SEND CONNACK(" in sink.lines[1]
    manager.stop(trace, "done")
    assert sink.closed == "done" and not manager.clients
    late = Channel(node.broker, zone, "127.0.0.1:4")
    manager.watch(late)
    assert late.tracer is None


def test_topic_trace_matches_wildcards() -> None:
    node = Node(Settings())
    sink = Sink()
    node.trace.start_topic("a/+/c", sink, payload_limit=4)
    assert node.broker.topic_traces
    node.broker.publish(Message("a/b/c", b"payload", 1, False, None, "pub1"))
    node.broker.publish(Message("a/b/d", b"no", 0))
    node.broker.publish(Message("$SYS/a/b/c", b"no", 0))
    assert len(sink.lines) == 1
    line = sink.lines[0]
    assert "PUBLISH(Q1, R0, Topic=a/b/c, Payload=payl...(7 bytes)) from pub1 -> 0 " \
           "subscribers" in line
    assert node.trace.stop_target("topic", "a/+/c") == 1
    assert not node.broker.topic_traces


# --- against a real daemon ------------------------------------------------------------------

broker = broker_fixture()


def test_live_client_trace_starts_at_connect(broker: BrokerProcess) -> None:
    cid = uid("traced-")
    live = LiveTrace(broker, "client", cid)
    assert live.banner.startswith(f"Tracing client {cid} (not connected: tracing starts")
    bystander = Client(broker, uid("bystander-"))
    c = Client(broker, cid, version=5, username="alice", password="hunter2-secret")
    try:
        bystander.connect()
        c.connect()
        c.subscribe("tr/#", 1)
        c.publish("tr/x", b"hello trace", qos=1)
        bystander.publish("tr/y", b"from the bystander", qos=0)
        lines = live.until("SEND PUBLISH(Q0, R0, D0, Topic=tr/y")
        text = "\n".join(lines)
        assert lines[0].split(" ", 2)[2].startswith(f"{cid}@127.0.0.1:")
        connect = next(line for line in lines if " RECV CONNECT(" in line)
        assert f"ClientId={cid}, ProtoVer=5, CleanStart=true, KeepAlive=60, Username=alice, " \
               "Password=******" in connect
        for expected in ("SEND CONNACK(Q0, R0, D0, SessionPresent=false, ReasonCode=0x00",
                         "RECV SUBSCRIBE(Q1, R0, D0, PacketId=1, TopicFilters=[tr/#(Q1)]",
                         "SEND SUBACK(Q0, R0, D0, PacketId=1, ReasonCodes=[0x01]",
                         ("RECV PUBLISH(Q1, R0, D0, Topic=tr/x, PacketId=2, "
                          "Payload=hello trace)"),
                         ("SEND PUBLISH(Q1, R0, D0, Topic=tr/x, PacketId=1, "
                          "Payload=hello trace)"),
                         "SEND PUBACK(Q0, R0, D0, PacketId=2, ReasonCode=0x00)"):
            assert expected in text, (expected, text)
        assert "hunter2" not in text
        assert bystander.c._client_id.decode() + "@" not in text  # only the traced client
        # a date and a time with milliseconds start each line
        assert time.strptime(lines[0][:19], "%Y-%m-%d %H:%M:%S") and lines[0][19] == "."
        listed = ctl_json(broker, "trace", "list")
        assert {"type": "clientid", "target": cid, "live": True} .items() <= listed[0].items()
        c.disconnect()
        live.until("RECV DISCONNECT(Q0, R0, D0, ReasonCode=0x00)")
    finally:
        c.close()
        bystander.close()
        code, _ = live.interrupt()
    assert code == 0
    wait_until(lambda: ctl_json(broker, "trace", "list") == [], "the live trace to end")
    assert "hunter2" not in broker.log()


def test_file_trace_of_a_connected_client(broker: BrokerProcess, tmp_path: Path) -> None:
    cid = uid("ft-")
    c = Client(broker, cid, version=4, username="bob", password="topsecret")
    c.connect()
    path = tmp_path / "client.log"
    try:
        assert ok(broker, "trace", "client", cid, "--file", str(path)) == \
            f"trace clientid {cid} successfully\n"
        r = ctl(broker, "trace", "client", cid, "--file", str(path))
        assert r.code == 1 and "already_existed" in r.err
        assert ok(broker, "trace", "list") == \
            f'Trace(clientid={cid}, destination="{path}", lines=0)\n1 trace\n'
        c.subscribe("ft/a", 0)
        c.publish("ft/a", b"z" * 500, qos=0)
        c.expect_message()
        assert ok(broker, "trace", "stop", "client", cid) == \
            f"stop tracing clientid {cid} successfully\n"
        # reconnecting later: no longer traced
        c.disconnect()
        c2 = Client(broker, cid, version=4, username="bob", password="topsecret")
        c2.connect()
        c2.close()
    finally:
        c.close()
    text = path.read_text()
    assert " RECV SUBSCRIBE(" in text and " SEND SUBACK(" in text
    assert "Payload=" + "z" * 256 + "...(500 bytes)" in text  # the configured default
    assert "RECV CONNECT" not in text and "topsecret" not in text
    assert len(text.splitlines()) == 4  # SUBSCRIBE, SUBACK, PUBLISH in, PUBLISH out


def test_topic_traces_live_json_and_file(broker: BrokerProcess, tmp_path: Path) -> None:
    base = uid("tt/")
    live = LiveTrace(broker, "topic", f"{base}/+/temp", "--payload-limit", "3", "--json")
    assert live.banner.startswith(f"Tracing messages published to {base}/+/temp")
    path = tmp_path / "topic.log"
    assert ok(broker, "trace", "start", "topic", f"{base}/#", str(path)) == \
        f"trace topic {base}/# successfully\n"
    try:
        mosquitto_pub(broker, "-t", f"{base}/room1/temp", "-m", "21.5", "-q", "1", "-i", "pub-1")
        mosquitto_pub(broker, "-t", f"{base}/room1/humidity", "-m", "40")
        mosquitto_pub(broker, "-t", f"{base}/room2/temp", "-m", "19", "-r")
        first = json.loads(live.until("room1/temp")[0])
        assert (first["topic"], first["from"], first["qos"], first["retain"],
                first["payload_size"], first["subscribers"]) == \
            (f"{base}/room1/temp", "pub-1", 1, False, 4, 0)
        assert "Payload=21....(4 bytes)" in first["text"]
        second = json.loads(live.until("room2")[0])
        assert second["retain"] is True and second["topic"] == f"{base}/room2/temp"
        assert not any("humidity" in line for line in live.seen)
        # stopping it from elsewhere ends the live stream (exit 0, reason on stderr)
        assert ok(broker, "trace", "stop", "topic", f"{base}/+/temp").startswith(
            "stop tracing topic")
        code, rest = live.finish()
        assert code == 0 and "stopped by mqttd ctl trace stop" in rest
    finally:
        if live.proc.poll() is None:
            live.interrupt()
        ctl(broker, "trace", "stop", "topic", f"{base}/#")
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and "humidity" in lines[1]
    assert f"PUBLISH(Q1, R0, Topic={base}/room1/temp, Payload=21.5) from pub-1 -> 0 " \
           "subscribers" in lines[0]


def test_live_trace_ends_when_the_daemon_stops() -> None:
    b = BrokerProcess()
    try:
        live = LiveTrace(b, "client", "never-connects")
        assert ok(str(b.dir / "data"), "stop").endswith("stopped\n")
        code, rest = live.finish()
        assert code == 0 and "mqttd is stopping" in rest
        assert b.proc.wait(WAIT) == 0
    finally:
        b.stop()
    assert_clean_log(b)


def test_a_failing_sink_stops_its_trace() -> None:
    """A trace sink that raises never breaks the traced client's packet handling."""
    node = Node(Settings())
    zone = node.settings.zone("default")

    class Broken(Sink):
        def write(self, text: str, event: dict[str, Any]) -> None:
            raise OSError("disk full")

    async def run() -> None:
        trace = node.trace.start_client("c1", Broken())
        ch = Channel(node.broker, zone, "127.0.0.1:9")
        node.trace.watch(ch)
        ch.tracer("RECV", Connect(client_id="c1"))  # the write fails: the trace stops
        assert not node.trace.clients
        ch.tracer("RECV", Pingreq())  # the channel drops its tracer at its next packet
        assert ch.tracer is None
        node.trace.stop(trace)  # idempotent

    asyncio.run(run())

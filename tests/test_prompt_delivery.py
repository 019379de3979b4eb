"""A small read's deliveries go out one message at a time (transport/connection.py's
PROMPT_READ): a few PUBLISHes that arrive in one read (the backlog of a broker woken late)
are each written to the subscriber as soon as handled, not held for their successors'
handling until the end of the loop turn; a bigger read (a fan-in burst) is still written
in one piece. Seen on the subscriber's socket: how many data segments the kernel counted
coming in (TCP_INFO's tcpi_data_segs_in). One write from the broker is one segment on
loopback with Nagle off; several writes are as many segments, except that the kernel may
merge a write into the previous one still on its way (TCP autocorking, seen once in 16
writes): so "more than one segment" is what tells writes per message from one write.
Compiled and pure twins alike.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from support import builder as B, uid
from support.process import BrokerProcess, checked_broker
from support.raw import RawClient

from mqttd.mqtt.packets import Puback, Publish, Suback
from mqttd.transport.connection import PROMPT_READ

#: struct tcp_info (linux/tcp.h): the offset of tcpi_data_segs_in, segments with data received.
_DATA_SEGS_IN = 152


@pytest.fixture(scope="module", params=["c", "py"])
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    env = {"MQTTD_NO_EXTENSIONS": "1"} if request.param == "py" else None
    with checked_broker(env=env) as b:
        yield b


def _data_segments_in(client: RawClient) -> int:
    info = client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(info) >= _DATA_SEGS_IN + 4, "this kernel's tcp_info has no tcpi_data_segs_in"
    count: int = struct.unpack_from("I", info, _DATA_SEGS_IN)[0]
    return count


def _pair(broker: BrokerProcess, topic: str) -> tuple[RawClient, RawClient]:
    sub = RawClient(broker)
    sub.connect(uid("sub"))
    sub.send(B.subscribe(1, [(topic, 1)]))
    sub.expect(Suback)
    pub = RawClient(broker)
    pub.connect(uid("pub"))
    return sub, pub


def _deliveries(broker: BrokerProcess, count: int, qos: int) -> tuple[int, int]:
    """``count`` PUBLISHes sent in one segment (one read for the broker): the payloads
    arrive in order, and how many data segments they (and, at QoS 1, their PUBACKs) came in."""
    topic = uid("prompt")
    sub, pub = _pair(broker, topic)
    try:
        payloads = [b"message %d" % i for i in range(count)]
        sub_before = _data_segments_in(sub)
        pub_before = _data_segments_in(pub)
        pub.send(*(B.publish(topic, p, qos=qos, packet_id=i + 1 if qos else None)
                   for i, p in enumerate(payloads)))
        got = [sub.expect(Publish) for _ in payloads]
        assert [p.payload for p in got] == payloads
        if qos:
            acks = [pub.expect(Puback).packet_id for _ in payloads]
            assert acks == list(range(1, count + 1))
            for p in got:
                sub.send(B.puback(p.packet_id))
        sub_segments = _data_segments_in(sub) - sub_before
        pub_segments = _data_segments_in(pub) - pub_before
        # Nothing else was on its way: the counts above were complete.
        assert sub.sync().packets == ()
        assert pub.sync().packets == ()
        return sub_segments, pub_segments
    finally:
        pub.close()
        sub.close()


@pytest.mark.parametrize("count", [2, 3, PROMPT_READ])
def test_each_message_of_a_small_read_is_written_when_handled(broker: BrokerProcess,
                                                              count: int) -> None:
    sub_segments, pub_segments = _deliveries(broker, count, 0)
    assert 1 < sub_segments <= count
    assert pub_segments == 0


def test_qos1_small_read_delivers_and_acknowledges_each_message_when_handled(
        broker: BrokerProcess) -> None:
    sub_segments, pub_segments = _deliveries(broker, 3, 1)
    assert 1 < sub_segments <= 3
    assert 1 < pub_segments <= 3


@pytest.mark.parametrize("qos", [0, 1])
def test_a_bigger_read_is_written_once(broker: BrokerProcess, qos: int) -> None:
    sub_segments, pub_segments = _deliveries(broker, PROMPT_READ + 1, qos)
    assert sub_segments == 1
    assert pub_segments == qos

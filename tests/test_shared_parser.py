"""Connections share one parser between packets (transport/connection.py's _SHARED_PARSERS)
and own one only while a packet of theirs is half read: clients of different protocol
levels, each with a packet cut in the middle while the others send theirs, must each get
exactly their own bytes parsed at their own level, compiled codec or pure.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import builder as B, uid
from support.process import BrokerProcess, checked_broker
from support.raw import OPEN, RawClient

from mqttd.mqtt.packets import Publish, Suback


@pytest.fixture(scope="module", params=["c", "py"])
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    env = {"MQTTD_NO_EXTENSIONS": "1"} if request.param == "py" else None
    with checked_broker(env=env) as b:
        yield b


def _publish(version: int, topic: str, payload: bytes, n: int) -> bytes:
    # MQTT 5: a user property whose bytes a 3.1.1 reading would take for the payload.
    properties = B.props(("user_property", ("n", str(n)))) if version == 5 else b""
    return B.publish(topic, payload, properties=properties)


def _subscriber(broker: BrokerProcess, prefix: str) -> RawClient:
    sub = RawClient(broker, 5)
    sub.connect(uid("sub"))
    sub.send(B.subscribe(1, [(prefix + "/#", 0)], properties=B.EMPTY_PROPS))
    sub.expect(Suback)
    return sub


def _received(sub: RawClient, count: int) -> list[tuple[str, bytes, object]]:
    got = []
    for _ in range(count):
        p = sub.expect(Publish)
        got.append((p.topic, p.payload, p.properties.get("user_property")))
    return got


def test_halves_of_packets_from_many_clients_interleaved(broker: BrokerProcess) -> None:
    prefix = uid("halves")
    sub = _subscriber(broker, prefix)
    clients = []
    expected = set()
    try:
        for i in range(12):
            version = 5 if i % 2 else 4
            c = RawClient(broker, version)
            c.connect(uid("pub"))
            clients.append(c)
        packets = []
        for i, c in enumerate(clients):
            payload = b"payload %d " % i + bytes(range(256)) * (i + 1)
            packets.append(_publish(c.version, f"{prefix}/{i}", payload, i))
            expected.add((f"{prefix}/{i}", payload, (("n", str(i)),) if c.version == 5 else None))
        # Every client sends the first part of its PUBLISH (cut inside the header of some,
        # inside the properties or payload of others), then every client the rest; a
        # complete packet from each client between the two rounds.
        for i, (c, pkt) in enumerate(zip(clients, packets, strict=True)):
            c.send(pkt[:1 + i * 7 % (len(pkt) - 1)])
        for i, (c, pkt) in enumerate(zip(clients, packets, strict=True)):
            c.send(pkt[1 + i * 7 % (len(pkt) - 1):])
            assert c.sync().end == OPEN
        got = _received(sub, len(clients))
        assert len(got) == len(clients)
        assert {(t, p, tuple(u) if u else None) for t, p, u in got} == expected
    finally:
        for c in clients:
            c.close()
        sub.close()


def test_a_complete_packet_between_the_halves_of_another_clients(broker: BrokerProcess
                                                                  ) -> None:
    prefix = uid("between")
    sub = _subscriber(broker, prefix)
    with RawClient(broker, 5) as a, RawClient(broker, 4) as b:
        a.connect(uid("a"))
        b.connect(uid("b"))
        half = _publish(5, prefix + "/a", b"from a", 1)
        a.send(half[:9])
        b.send(_publish(4, prefix + "/b", b"from b", 2))
        assert b.sync().end == OPEN
        a.send(half[9:])
        assert a.sync().end == OPEN
        b.send(_publish(4, prefix + "/b", b"again", 3))
        assert b.sync().end == OPEN
        got = _received(sub, 3)
        assert sorted(got, key=repr) == sorted([
            (prefix + "/b", b"from b", None),
            (prefix + "/a", b"from a", [("n", "1")]),
            (prefix + "/b", b"again", None),
        ], key=repr)
        # Each publisher's messages in its order.
        assert [p for t, p, _ in got if t.endswith("/b")] == [b"from b", b"again"]
    sub.close()

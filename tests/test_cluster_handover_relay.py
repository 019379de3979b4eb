"""Messages published while a session moves between nodes (docs/CLUSTER.md, "Messages
published while the session moves"): the old node keeps the session's routes until every
other node has the new node's, and relays what it gets for the session meanwhile, so a QoS 1
message acknowledged to its publisher reaches the session whichever node it was published
on and whenever during the takeover. Real nats-server, three real mqttd nodes, paho clients.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from paho.mqtt.packettypes import PacketTypes
from support import uid
from support.clients import Client, props
from support.cluster import node_config, running_nats, running_nodes, until
from support.natsserver import NatsServer
from support.process import BrokerProcess

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"

#: Takeovers back and forth while the publishers run (each leaves a window on the old code).
MOVES = 12


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


@pytest.fixture(scope="module")
def nodes(nats_server: NatsServer) -> Iterator[dict[str, BrokerProcess]]:
    configs = {n: node_config(n, nats_server.url) for n in (A, B, C)}
    with running_nodes(nats_server, configs, wait="up") as nodes:
        yield nodes


class Publisher(threading.Thread):
    """Publishes QoS 1 messages numbered 0, 1, ... one after the other until stopped,
    keeping each one's acknowledgement reason code."""

    def __init__(self, node: BrokerProcess, topic: str, tag: str) -> None:
        super().__init__(daemon=True)
        self.client = Client(node, uid("pub"), version=5)
        self.topic, self.tag = topic, tag
        self.acks: dict[str, int] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(100_000):
                if self.stop.is_set():
                    return
                payload = f"{self.tag}{i}"
                self.acks[payload] = self.client.publish(self.topic, payload, 1)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err


def test_every_acknowledged_message_reaches_the_session_across_takeovers(
        nodes: dict[str, BrokerProcess]) -> None:
    cid, t = uid("moving"), uid("relay")
    expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=3600)
    clients: list[Client] = []
    first = Client(nodes[A], cid, version=5, clean=False, properties=expiry)
    clients.append(first)
    first.connect()
    first.subscribe(t, 1)
    # A publisher on a third node and one on the node the session starts on.
    pubs = [Publisher(nodes[C], t, "c"), Publisher(nodes[A], t, "a")]
    try:
        for p in pubs:
            p.client.connect()
            p.start()
        for k in range(MOVES):
            done = sum(len(p.acks) for p in pubs)
            until("the publishers to go on", lambda d=done: sum(len(p.acks) for p in pubs)
                  >= d + 20 or any(p.error for p in pubs))
            moved = Client(nodes[(B, A)[k % 2]], cid, version=5, clean=False,
                           properties=expiry)
            clients.append(moved)
            moved.connect()
            assert moved.session_present, k
        done = sum(len(p.acks) for p in pubs)
        until("the publishers to go on after the last move",
              lambda: sum(len(p.acks) for p in pubs) >= done + 20 or any(p.error for p in pubs))
    finally:
        for p in pubs:
            p.stop.set()
        for p in pubs:
            p.join(30)
    for p in pubs:
        assert p.error is None, p.error
        assert not p.is_alive()
    codes = {m: rc for p in pubs for m, rc in p.acks.items()}
    # Acknowledged as delivered (0) or as wanted by nobody (0x10, which the old code gave
    # while no node had the session's routes): all must be there.
    acked = {m for m, rc in codes.items() if rc < 0x80}
    got: set[str] = set()

    def drain() -> bool:
        for c in clients:
            while not c.messages.empty():
                got.add(c.messages.get_nowait().payload.decode())
        return acked <= got

    try:
        until("every acknowledged message at the session", drain)
    except AssertionError:
        missing = sorted(acked - got, key=lambda m: (m[0], int(m[1:])))
        raise AssertionError(f"{len(missing)} of {len(acked)} acknowledged messages "
                             f"never reached the session: {missing[:40]}") from None
    finally:
        for c in [*clients, *(p.client for p in pubs)]:
            c.close()
    # The session had a route somewhere at every moment (no 0x10), and every copy was
    # confirmed (no 0x80).
    assert set(codes.values()) == {0}, sorted((m, rc) for m, rc in codes.items() if rc)

"""A cluster node's local traffic (docs/CLUSTER.md): what no other node wants stays on the
node, delivered once to its subscribers and its shared group, and counted as local
(``mqttd ctl cluster status``: ``local_only``); what another node wants crosses once. Real
nodes on a real nats-server; the common PUBLISH here is the compiled fast path's
(mqttd/core/pubpath.py), which takes the local messages and leaves the others to
``Broker.publish``.
"""

from __future__ import annotations

import json
from typing import Any

from support import uid
from support.clients import Client
from support.cluster import nats_fixture, nodes_fixture
from support.ctlrun import ctl
from support.natsserver import NatsServer
from support.process import BrokerProcess

A = "a@127.0.0.1"
B = "b@127.0.0.1"


nats_server = nats_fixture()
nodes = nodes_fixture((A, B), wait="settled")


def _status(node: BrokerProcess) -> dict[str, Any]:
    r = ctl(node, "--json", "cluster", "status")
    assert r.code == 0, r
    data: dict[str, Any] = json.loads(r.out)
    return data


def _until_marker(sub: Client, marker: bytes) -> list[tuple[str, bytes]]:
    """(topic, payload) of every message before the one carrying ``marker``."""
    got = []
    for _ in range(1000):
        msg = sub.expect_message()
        if msg.payload == marker:
            return got
        got.append((msg.topic, msg.payload))
    raise AssertionError("marker never came")


def test_local_and_cross_node_messages_are_delivered_once(
        nats_server: NatsServer, nodes: dict[str, BrokerProcess]) -> None:
    local, cross = uid("lo"), uid("cross")
    made: list[Client] = []

    def client(node: str, version: int = 5) -> Client:
        c = Client(nodes[node], uid("c"), version=version)
        made.append(c)
        c.connect()
        return c

    try:
        here = client(A)  # a plain subscriber and a shared group's only member, on A
        here.subscribe(local, 1)
        member = client(A)
        member.subscribe(f"$share/g/{local}", 1)
        there = client(B)  # the cross-node topic's only subscriber, on B
        there.subscribe(cross, 1)
        nats_server.wait_interest(A, local)
        nats_server.wait_interest(B, cross)  # (and A has read B's routes)
        pub = client(A, 4)
        before = _status(nodes[A])
        sent: list[tuple[str, bytes]] = []
        for i in range(10):
            for topic in (local, cross):
                payload = b"%d" % i
                pub.publish(topic, payload, i % 2)  # QoS 0 and QoS 1
                sent.append((topic, payload))
        pub.publish(local, b"end", 1)
        pub.publish(cross, b"end", 1)
        want_local = [m for m in sent if m[0] == local]
        assert _until_marker(here, b"end") == want_local
        assert _until_marker(member, b"end") == want_local
        assert _until_marker(there, b"end") == [m for m in sent if m[0] == cross]
        after = _status(nodes[A])
        # The local ones never went to NATS, the others each once.
        assert after["local_only"] - before["local_only"] == 11
        assert after["forwarded"] - before["forwarded"] == 11
        for sub in (here, member, there):
            sub.assert_no_message()
    finally:
        for c in made:
            c.close()

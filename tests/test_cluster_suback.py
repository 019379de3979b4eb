"""A subscription's route across nodes before its SUBACK (docs/CLUSTER.md, "What is
guaranteed"): a cluster node sends the SUBACK of a subscription that adds a route (a filter's
first plain subscriber, a shared group's first member there) once every other node up has
applied the route-table delta announcing it, so a message published on another node after
the SUBACK reaches the subscriber; a node that does not answer delays it at most until it
would be counted down; a session handed over from another node gets its CONNACK likewise.
Real nats-server, real mqttd nodes, real paho clients.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from paho.mqtt.packettypes import PacketTypes
from support import uid
from support.clients import Client, props
from support.cluster import clients_fixture, nats_fixture, nodes_fixture, until
from support.ctlrun import ctl
from support.process import BrokerProcess, stopped

A = "a@127.0.0.1"
B = "b@127.0.0.1"


nats_server = nats_fixture()
# Settled: A keeps to itself (and answers 0x10 for) what it knows no other node wants.
nodes = nodes_fixture((A, B), wait="settled", heartbeat=None)
connect = clients_fixture()


def _knows(node: BrokerProcess, other: str) -> bool:
    r = ctl(node, "--json", "cluster", "nodes")
    assert r.code == 0, r.err
    row = next((r for r in json.loads(r.out) if r["node"] == other), None)
    return row is not None and row["status"] == "up" and int(row["routes_version"]) >= 0


def test_a_message_published_on_another_node_after_the_suback_arrives(
        connect: Callable[..., Client]) -> None:
    pub, sub = connect(A), connect(B)
    for i in range(20):
        t = uid("r")
        shared = i % 2 == 1
        sub.subscribe(f"$share/g/{t}" if shared else t, 1)  # back at the SUBACK
        payload = f"m{i}".encode()
        # 0x10 would say A did not know B's route yet (and kept the message).
        assert pub.publish(t, payload, 1) == 0, (i, shared)
        assert sub.expect_message().payload == payload


def test_a_stopped_node_does_not_keep_the_suback(
        nodes: dict[str, BrokerProcess], connect: Callable[..., Client]) -> None:
    sub = connect(B)
    a = nodes[A]
    with stopped(a.proc):
        sub.subscribe(uid("s"), 1)  # (held at most until A would be counted down)
    # Each may have counted the other down meanwhile: back once both are up again and
    # each has read the other's routes.
    for node, other in ((nodes[A], B), (nodes[B], A)):
        until(f"{other} up again with its routes read",
              lambda n=node, o=other: _knows(n, o))
    pub = connect(A)
    t = uid("after")
    sub.subscribe(t, 1)
    assert pub.publish(t, b"x", 1) == 0
    assert sub.expect_message().payload == b"x"


def test_a_session_handed_over_gets_what_is_published_after_its_connack(
        nodes: dict[str, BrokerProcess], connect: Callable[..., Client]) -> None:
    """A session resumed on B from A: its CONNACK waits as a SUBACK does until A has B's
    routes for it, so a message published on A right after the CONNACK reaches it."""
    pub = connect(A)
    expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=3600)
    for i in range(30):
        cid, t = uid("moving"), uid("mt")
        first = Client(nodes[A], cid, version=5, clean=False, properties=expiry)
        first.connect()
        first.subscribe(t, 1)
        first.close()
        moved = Client(nodes[B], cid, version=5, clean=False, properties=expiry)
        moved.connect()
        try:
            assert moved.session_present
            payload = f"after{i}".encode()
            assert pub.publish(t, payload, 1) == 0, i  # 0x10: A did not know B's route
            assert moved.expect_message().payload == payload
        finally:
            moved.close()

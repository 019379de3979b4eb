"""Retained messages replicated to every node through a JetStream key-value bucket
(docs/CLUSTER.md, issue 15): real ``mqttd start`` nodes on a real nats-server (JetStream in
a temp directory), real paho clients, ``mqttd ctl retained show`` to see a node's copy.

Replication is asynchronous: a test waits until a node's copy is there (or gone) by asking
the node, bounded in count and time, and then checks what a new subscriber gets.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import WAIT, uid
from support.clients import Client
from support.cluster import clients_fixture, nats_fixture, node_config, nodes_fixture
from support.ctlrun import ctl
from support.natsserver import NatsServer
from support.process import BrokerProcess, checked_broker, wait_log

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"


nats_server = nats_fixture()
# Settled: three heartbeats after its join a node knows the others' routes (before,
# it takes any other node to want anything, and a publish gets 0x00, not 0x10).
nodes = nodes_fixture((A, B, C), wait="settled")
connect = clients_fixture()


def held(node: BrokerProcess, topic: str) -> bytes | None:
    """The payload of ``node``'s retained message on ``topic`` (None: it has none)."""
    r = ctl(node, "--json", "retained", "show", topic)
    if r.code != 0:
        return None
    return base64.b64decode(json.loads(r.out)[0]["payload_base64"])


def wait_held(node: BrokerProcess, topic: str, payload: bytes | None) -> None:
    deadline = time.monotonic() + WAIT
    while (now := held(node, topic)) != payload:
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic} holds {now!r} on {node.dir}, not {payload!r}")
        time.sleep(0.05)


def test_retained_reaches_every_node_and_one_started_later(
        nats_server: NatsServer, nodes: dict[str, BrokerProcess],
        connect: Callable[..., Client]) -> None:
    t = uid("rr")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v")]
    props.MessageExpiryInterval = 300
    pub = connect(A)
    assert pub.publish(t, b"kept", 1, retain=True, properties=props) == 0x10  # no one yet
    for name in (B, C):
        wait_held(nodes[name], t, b"kept")
        sub = connect(name)
        sub.subscribe(t, 1)
        m = sub.expect_message()
        assert (m.payload, m.retain, m.qos) == (b"kept", True, 1)
        assert m.properties.UserProperty == [("k", "v")]
        assert 0 < m.properties.MessageExpiryInterval <= 300
    with checked_broker(node_config("d@127.0.0.1", nats_server.url)) as d:
        wait_log(d, "joined through NATS")
        # Loaded before the node counted itself joined: there at once.
        assert held(d, t) == b"kept"
        sub = connect(d)
        sub.subscribe(t, 1)
        m = sub.expect_message()
        assert (m.payload, m.retain) == (b"kept", True)


def test_a_delete_on_another_node_is_replicated(
        nodes: dict[str, BrokerProcess], connect: Callable[..., Client]) -> None:
    t = uid("rd")
    connect(B).publish(t, b"soon gone", 1, retain=True)
    for name in (A, C):
        wait_held(nodes[name], t, b"soon gone")
    connect(C).publish(t, b"", 1, retain=True)  # deleted from another node than B
    for name in (A, B, C):
        wait_held(nodes[name], t, None)
    sub = connect(A)
    sub.subscribe(t, 1)
    connect(A).publish(t, b"live", 1)
    assert sub.expect_message().payload == b"live"  # nothing retained came first


def test_expiry_is_honoured_on_every_node(
        nats_server: NatsServer, nodes: dict[str, BrokerProcess],
        connect: Callable[..., Client]) -> None:
    t = uid("re")
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 1
    pub = connect(A)
    pub.publish(f"{t}/short", b"short", 1, retain=True, properties=props)
    pub.publish(f"{t}/long", b"long", 1, retain=True)
    wait_held(nodes[B], f"{t}/short", b"short")
    wait_held(nodes[B], f"{t}/long", b"long")
    time.sleep(1.2)  # past the short one's expiry
    with checked_broker(node_config("e@127.0.0.1", nats_server.url)) as e:
        wait_log(e, "joined through NATS")
        nats_server.nodes["e@127.0.0.1"] = e
        for name, node in ((B, nodes[B]), ("e@127.0.0.1", e)):
            sub = connect(node)
            sub.subscribe(f"{t}/#", 1)
            nats_server.wait_interest(name, f"{t}/#")
            pub.publish(f"{t}/end", b"end", 1)
            got = []
            for _ in range(3):
                m = sub.expect_message()
                got.append(m.payload)
                if m.payload == b"end":
                    break
            assert got == [b"long", b"end"]


def test_writes_from_two_nodes_converge(nodes: dict[str, BrokerProcess],
                                        connect: Callable[..., Client]) -> None:
    t = uid("rc")
    on_a, on_b = connect(A), connect(B)
    for i in range(30):
        on_a.publish(t, f"a{i}".encode(), 1, retain=True)
        on_b.publish(t, f"b{i}".encode(), 1, retain=True)
    # Every node ends with the same value: the bucket's last write (a node's own write
    # may still be on its way on a loaded machine: a longer bound).
    deadline = time.monotonic() + 4 * WAIT
    while True:
        values = {name: held(node, t) for name, node in nodes.items()}
        if len(set(values.values())) == 1:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the nodes disagree: {values}; " + "; ".join(
                ctl(node, "cluster", "status").out for node in nodes.values()))
        time.sleep(0.05)
    assert values[A] in (b"a29", b"b29")


def test_without_jetstream_routing_still_works_and_the_log_says_why() -> None:
    server = NatsServer(jetstream=False)
    try:
        with BrokerProcess(node_config("j1@127.0.0.1", server.url)) as j1, \
                BrokerProcess(node_config("j2@127.0.0.1", server.url)) as j2:
            for node in (j1, j2):
                wait_log(node, "retained messages are not replicated: the bucket "
                               "mqttd_retained cannot be used")
                wait_log(node, "joined through NATS")
            server.nodes = {"j1@127.0.0.1": j1, "j2@127.0.0.1": j2}
            assert "nats-server -js" in j1.log()
            assert ctl(j1, "--json", "cluster", "status").out.count("not replicated") == 1
            t = uid("nj")
            sub, pub = Client(j1, uid("s")), Client(j2, uid("p"))
            try:
                sub.connect()
                pub.connect()
                sub.subscribe(t, 1)
                server.wait_interest("j1@127.0.0.1", t)
                pub.publish(t, b"routed", 1, retain=True)
                assert sub.expect_message().payload == b"routed"
                assert held(j2, t) == b"routed"  # its own node keeps it, as a single node
            finally:
                sub.close()
                pub.close()
            assert "Traceback" not in j1.log() + j2.log()
    finally:
        server.stop()

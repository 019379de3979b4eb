"""Shared subscriptions across nodes and the publisher's acknowledgement in a cluster
(docs/CLUSTER.md, issue 15): three real ``mqttd start`` nodes on a real nats-server, real
paho clients.

A group's members on several nodes share its messages through a NATS queue group: each
message reaches exactly one member cluster-wide. An MQTT 5 publisher gets 0x10 (no matching
subscribers) only when no node is known to have one.
"""

from __future__ import annotations

import queue
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from support import WAIT, uid
from support.clients import Client
from support.cluster import clients_fixture, nats_fixture, nodes_fixture
from support.natsserver import NatsServer

from mqttd.cluster.subjects import encode_filter

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"


nats_server = nats_fixture()
nodes = nodes_fixture((A, B, C))
connect = clients_fixture()


def _collect(members: list[Client], n: int) -> list[tuple[int, Any]]:
    """(member index, message) until ``n`` messages arrived in all (bounded in time)."""
    got: list[tuple[int, Any]] = []
    deadline = time.monotonic() + 4 * WAIT
    while len(got) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(got)} of {n} messages arrived")
        for i, m in enumerate(members):
            try:
                got.append((i, m.messages.get(timeout=0.02)))
            except queue.Empty:
                pass
    return got


def _wait_groups(nats_server: NatsServer, node: str, *filters: str) -> None:
    wanted = {encode_filter(f) for f in filters}
    nats_server.wait_queue_subs(node, lambda q: wanted <= {s for s, _ in q},
                                f"{node}'s queue subscriptions for {filters}")


def _ends(members: list[Client], t: str, pub: Client) -> None:
    """Every member's own end marker (a group of its own, so it comes the way the group's
    messages came) arrived: whatever was sent before it has been delivered."""
    for i in range(len(members)):
        pub.publish(f"{t}-end/{i}", b"end", 1)
    for m in members:
        assert m.expect_message().payload == b"end"
        m.assert_no_message()


def _members(connect: Callable[..., Client], nats_server: NatsServer, t: str,
             where: list[str]) -> list[Client]:
    members = []
    for i, node in enumerate(where):
        m = connect(node)
        m.subscribe([(f"$share/g/{t}/+", 1), (f"$share/end/{t}-end/{i}", 1)])
        members.append(m)
    for node in set(where):
        _wait_groups(nats_server, node, f"{t}/+")
    for i, node in enumerate(where):
        _wait_groups(nats_server, node, f"{t}-end/{i}")
    return members


def test_group_over_two_nodes_gets_each_message_once(
        nats_server: NatsServer, connect: Callable[..., Client]) -> None:
    t = uid("sh")
    where = [A, A, B, B]
    members = _members(connect, nats_server, t, where)
    pub = connect(A)  # on a node with members: they must not get a copy of their own
    n = 200
    for i in range(n):
        assert pub.publish(f"{t}/x", str(i).encode(), 1) == 0
    got = _collect(members, n)
    _ends(members, t, pub)
    payloads = Counter(m.payload for _, m in got)
    assert payloads == Counter(str(i).encode() for i in range(n))  # each exactly once
    per_member = Counter(i for i, _ in got)
    # NATS spreads over the nodes, each node's strategy over its own members.
    assert all(per_member[i] > 0 for i in range(len(members))), per_member
    per_node = Counter(where[i] for i, _ in got)
    assert per_node[A] > 0 and per_node[B] > 0


def test_last_member_leaving_drops_the_nodes_queue_subscription(
        nats_server: NatsServer, connect: Callable[..., Client]) -> None:
    t = uid("sl")
    where = [A, B]
    members = _members(connect, nats_server, t, where)
    subject = encode_filter(f"{t}/+")
    members[0].unsubscribe(f"$share/g/{t}/+")
    nats_server.wait_queue_subs(A, lambda q: all(s != subject for s, _ in q),
                                "A's queue subscription to go")
    pub = connect(C)
    n = 50
    for i in range(n):
        assert pub.publish(f"{t}/x", str(i).encode(), 1) == 0
    got = _collect(members, n)
    _ends(members, t, pub)
    assert [i for i, _ in got] == [1] * n  # all on B, the group's only node left
    assert [m.payload for _, m in got] == [str(i).encode() for i in range(n)]


def test_queue_group_and_plain_subscribers_on_the_same_filter(
        nats_server: NatsServer, connect: Callable[..., Client]) -> None:
    t = uid("sp")
    members = _members(connect, nats_server, t, [B, C])
    plain_a, plain_b = connect(A), connect(B)
    for p in (plain_a, plain_b):
        p.subscribe(f"{t}/+", 1)
    nats_server.wait_interest(A, f"{t}/+")
    nats_server.wait_interest(B, f"{t}/+")
    pub = connect(C)
    n = 40
    for i in range(n):
        pub.publish(f"{t}/x", str(i).encode(), 1)
    pub.publish(f"{t}/x", b"end", 1)
    for p in (plain_a, plain_b):  # every plain subscriber: every message, in order
        assert [p.expect_message().payload for _ in range(n + 1)] == \
            [str(i).encode() for i in range(n)] + [b"end"]
    got = _collect(members, n + 1)
    _ends(members, t, pub)
    assert sorted(m.payload for _, m in got) == sorted(
        [str(i).encode() for i in range(n)] + [b"end"])


def _rc_becomes(pub: Client, topic: str, rc: int) -> None:
    """Publish QoS 1 until the PUBACK's reason code is ``rc`` (what the node knows of the
    others arrives asynchronously: bounded in count and time)."""
    deadline = time.monotonic() + WAIT
    last = -1
    while time.monotonic() < deadline:
        last = pub.publish(topic, b"probe", 1)
        if last == rc:
            return
        time.sleep(0.05)
    raise AssertionError(f"PUBACK stayed {last:#x}, not {rc:#x}")


def test_puback_says_no_subscribers_only_when_no_node_has_one(
        nats_server: NatsServer, connect: Callable[..., Client]) -> None:
    t = uid("ack")
    pub = connect(C)
    _rc_becomes(pub, f"{t}/nobody", 0x10)  # every node's routes known: nobody anywhere
    sub = connect(A)
    sub.subscribe(f"{t}/+", 1)
    nats_server.wait_interest(A, f"{t}/+")
    _rc_becomes(pub, f"{t}/x", 0x00)  # A has one: success, and the message arrives
    assert pub.publish(f"{t}/y", b"two", 1) == 0x00
    # Probes answered 0x10 before C read A's new route may have arrived too (NATS had A's
    # interest a moment before C had the route: docs/CLUSTER.md says so).
    got: list[bytes] = []
    while not got or got[-1] != b"two":
        assert len(got) < 1000
        got.append(sub.expect_message().payload)
    assert set(got[:-1]) == {b"probe"}
    assert pub.publish(f"{t}/a/b", b"x", 1) == 0x10  # does not match t/+
    sub.unsubscribe(f"{t}/+")
    _rc_becomes(pub, f"{t}/x", 0x10)
    # A shared group's member on the publisher's own node: its copy goes through NATS,
    # and the publisher still hears there is a subscriber.
    member = connect(C)
    member.subscribe(f"$share/g/{t}/s", 1)
    _wait_groups(nats_server, C, f"{t}/s")
    assert pub.publish(f"{t}/s", b"shared", 2) == 0x00
    assert member.expect_message().payload == b"shared"
    # 3.1.1 has no such code: always success.
    old = connect(B, version=4)
    assert old.publish(f"{t}/nobody", b"x", 1) == 0

"""The acknowledged-message rule across nodes for shared groups (docs/CLUSTER.md,
"Acknowledged messages across nodes"): a QoS 1 publisher's PUBACK waits until the node NATS
picked for each matching shared group has taken the group's copy (queued, and committed
for a durable session), the publishing node included. Real nats-server with JetStream, real
mqttd nodes, real paho clients.

No sleeps: a held acknowledgement is observed through ``mqttd ctl cluster status``
(``awaiting_confirmation``) before it is checked not to have arrived; a SIGSTOPped node is
the node that does not answer; a node learning the other's group is observed through
``mqttd ctl cluster nodes`` (its count of the other's routes).
"""

from __future__ import annotations

from typing import Any

from support import uid
from support.clients import Client
from support.cluster import (
    check_kill_9_after_puback,
    clients,
    nats_fixture,
    node_config,
    nodes_fixture,
    publish_nowait,
    status,
    until,
    wait_ack,
)
from support.ctlrun import ctl_json
from support.natsserver import NatsServer
from support.process import BrokerProcess, stopped

from mqttd.cluster.subjects import encode_filter

A = "a@127.0.0.1"
B = "b@127.0.0.1"


def routes_known(node: BrokerProcess, other: str) -> int:
    """How many routes of node ``other`` ``node`` holds (-1: not seen)."""
    rows = ctl_json(node, "cluster", "nodes")
    return next((int(r["routes"]) for r in rows if r["node"] == other), -1)


nats_server = nats_fixture()


def pair(extra: str) -> Any:
    """A fixture of nodes A and B (the default heartbeat, then ``extra`` TOML) for one
    test, handed over once both settled (each knows the other's groups)."""
    return nodes_fixture((A, B), wait="settled", scope="function", heartbeat=None,
                         extra=extra)


#: Nodes that wait a minute for a confirmation and never count a stopped node down
#: during a test.
patient = pair("forward_timeout = 60\nheartbeat_misses = 600\n")
impatient = pair("forward_timeout = 1\nheartbeat_misses = 600\n")


def _group_on(nats_server: NatsServer, nodes: dict[str, BrokerProcess], member: Client,
              node: str, group_filter: str, known_by: str) -> None:
    """``member`` joins ``$share/g/<group_filter>`` on ``node``; back once NATS has the
    node's queue subscription and node ``known_by`` holds the group's route."""
    member.subscribe(f"$share/g/{group_filter}", 1)
    subject = encode_filter(group_filter)
    nats_server.wait_queue_subs(node, lambda q: subject in {s for s, _ in q},
                                f"{node}'s queue subscription on {group_filter}")
    until(f"{known_by} to know {node}'s group",
          lambda: routes_known(nodes[known_by], node) >= 1)


def test_puback_waits_for_the_node_picked_for_a_shared_group(
        nats_server: NatsServer, patient: dict[str, BrokerProcess]) -> None:
    for connect in clients(patient):
        t = uid("g")
        member = connect(B)
        _group_on(nats_server, patient, member, B, t, A)
        pub = connect(A)
        assert pub.publish(t, b"first", 1) == 0  # both up: confirmed at once
        assert member.expect_message().payload == b"first"
        b = patient[B]
        with stopped(b.proc):
            mid1 = publish_nowait(pub, t, b"q1", 1)
            mid2 = publish_nowait(pub, t, b"q2", 1)
            until("A to hold both messages for B's group member",
                  lambda: status(patient[A])["awaiting_confirmation"] == 2)
            with pub._cond:  # held while B cannot take them
                assert mid1 not in pub._pubacks and mid2 not in pub._pubacks
        assert wait_ack(pub, mid1) == 0
        assert wait_ack(pub, mid2) == 0
        assert sorted(m.payload for m in member.expect_messages(2)) == [b"q1", b"q2"]
        assert status(patient[A])["awaiting_confirmation"] == 0


def test_a_group_copy_not_confirmed_in_time_is_0x80(
        nats_server: NatsServer, impatient: dict[str, BrokerProcess]) -> None:
    for connect in clients(impatient):
        t = uid("t")
        member = connect(B)
        _group_on(nats_server, impatient, member, B, t, A)
        pub = connect(A)
        b = impatient[B]
        with stopped(b.proc):
            assert pub.publish(t, b"v5-q1", 1) == 0x80
            assert status(impatient[A])["confirm_timeouts"] == 1
        assert pub.publish(t, b"after", 1) == 0  # B answers again: a success again


def test_groups_on_both_nodes_each_message_once_every_ack_a_success(
        nats_server: NatsServer, impatient: dict[str, BrokerProcess]) -> None:
    """Members on the publisher's node and on the other: NATS picks either node per
    message; the publishing node confirms the copies it is picked for to itself (no
    confirmation would mean 0x80 within a second here)."""
    for connect in clients(impatient):
        t = uid("both")
        here, there = connect(A), connect(B)
        _group_on(nats_server, impatient, there, B, t, A)
        _group_on(nats_server, impatient, here, A, t, B)
        pub = connect(A)
        sent = [f"m{i}".encode() for i in range(40)]
        mids = [publish_nowait(pub, t, p, 1) for p in sent]
        assert [wait_ack(pub, m) for m in mids] == [0] * len(sent)
        got: list[bytes] = []
        n = len(sent)
        until("every message at one member",
              lambda h=here, th=there, g=got, n=n: _drain(h, th, g, n))
        assert sorted(got) == sorted(sent)  # each exactly once, cluster-wide
        st = status(impatient[A])
        assert st["confirm_timeouts"] == 0 and st["awaiting_confirmation"] == 0


def _drain(a: Client, b: Client, got: list[bytes], n: int) -> bool:
    for c in (a, b):
        while not c.messages.empty():
            got.append(c.messages.get().payload)
    return len(got) >= n


def test_kill_9_after_puback_keeps_a_group_members_message(nats_server: NatsServer) -> None:
    """The node picked for the group confirms once its store committed: killed right after
    the publisher's PUBACKs, it has every message for its offline, persistent member at
    restart."""
    def subscribe(nodes: dict[str, BrokerProcess], member: Client, t: str) -> None:
        _group_on(nats_server, nodes, member, B, t, A)

    configs = {n: node_config(n, nats_server.url, heartbeat=None) for n in (A, B)}
    check_kill_9_after_puback(nats_server, configs, subscribe)

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

import json
import os
import signal
from collections.abc import Iterator

import pytest
from paho.mqtt.packettypes import PacketTypes
from support import uid
from support.clients import Client, props
from support.cluster import (
    clients,
    node_config,
    publish_nowait,
    running_nats,
    running_nodes,
    until,
    wait_ack,
)
from support.ctlrun import ctl
from support.natsserver import NatsServer
from support.process import BrokerProcess, assert_clean_log, checked_broker, wait_log

from mqttd.cluster.subjects import encode_filter

A = "a@127.0.0.1"
B = "b@127.0.0.1"


def _ctl(node: BrokerProcess, what: str) -> object:
    r = ctl(node, "--json", "cluster", what)
    assert r.code == 0, r.err
    return json.loads(r.out)


def status(node: BrokerProcess) -> dict[str, object]:
    data = _ctl(node, "status")
    assert isinstance(data, dict)
    return data


def routes_known(node: BrokerProcess, other: str) -> int:
    """How many routes of node ``other`` ``node`` holds (-1: not seen)."""
    rows = _ctl(node, "nodes")
    assert isinstance(rows, list)
    return next((int(r["routes"]) for r in rows if r["node"] == other), -1)


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


def _pair(nats_server: NatsServer, extra: str) -> Iterator[dict[str, BrokerProcess]]:
    configs = {n: node_config(n, nats_server.url, heartbeat=None, extra=extra)
               for n in (A, B)}
    with running_nodes(nats_server, configs, wait="settled") as nodes:
        yield nodes


@pytest.fixture
def patient(nats_server: NatsServer) -> Iterator[dict[str, BrokerProcess]]:
    """Nodes that wait a minute for a confirmation and never count a stopped node down
    during a test."""
    yield from _pair(nats_server, "forward_timeout = 60\nheartbeat_misses = 600\n")


@pytest.fixture
def impatient(nats_server: NatsServer) -> Iterator[dict[str, BrokerProcess]]:
    yield from _pair(nats_server, "forward_timeout = 1\nheartbeat_misses = 600\n")


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
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            mid1 = publish_nowait(pub, t, b"q1", 1)
            mid2 = publish_nowait(pub, t, b"q2", 1)
            until("A to hold both messages for B's group member",
                  lambda: status(patient[A])["awaiting_confirmation"] == 2)
            with pub._cond:  # held while B cannot take them
                assert mid1 not in pub._pubacks and mid2 not in pub._pubacks
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
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
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            assert pub.publish(t, b"v5-q1", 1) == 0x80
            assert status(impatient[A])["confirm_timeouts"] == 1
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
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
    config_b = node_config(B, nats_server.url, heartbeat=None)
    b = BrokerProcess(config_b)
    b2: BrokerProcess | None = None
    try:
        with checked_broker(node_config(A, nats_server.url, heartbeat=None)) as a:
            for node in (a, b):
                wait_log(node, "joined through NATS")
            nats_server.nodes = {A: a, B: b}
            t = uid("k")
            sid = uid("persistent")
            expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=3600)
            member = Client(b, sid, version=5, clean=False, properties=expiry)
            member.connect()
            _group_on(nats_server, {A: a, B: b}, member, B, t, A)
            member.close()  # offline: what the group gets on B is queued in B's store
            pub = Client(a, uid("p"), version=5)
            pub.connect()
            try:
                sent = [f"m{i}".encode() for i in range(50)]
                for payload in sent:
                    assert pub.publish(t, payload, 1) == 0
                b.stop(signal.SIGKILL)
                nats_server.nodes = {A: a}
                b2 = BrokerProcess(config_b, extra_args=["--data-dir", str(b.data_dir)])
                wait_log(b2, "joined through NATS")
                member2 = Client(b2, sid, version=5, clean=False, properties=expiry)
                member2.connect()
                try:
                    assert member2.session_present
                    got = {m.payload for m in member2.expect_messages(len(sent))}
                    assert got == set(sent)
                finally:
                    member2.close()
            finally:
                pub.close()
            nats_server.nodes = {}
    finally:
        if b2 is not None:
            assert b2.stop() == 0
            assert_clean_log(b2)
            b2.cleanup()
        b.stop(signal.SIGKILL)
        b.cleanup()

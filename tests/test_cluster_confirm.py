"""The acknowledged-message rule across nodes (docs/CLUSTER.md, "Acknowledged messages
across nodes"): a QoS 1/2 publisher's PUBACK/PUBREC waits until every other node with a
plain subscriber for it has confirmed it (queued, and committed where its durability
needs), and flow control between nodes. Real nats-server with JetStream, real mqttd nodes,
real paho clients.

No sleeps: a held acknowledgement is observed through ``mqttd ctl cluster status``
(``awaiting_confirmation``) before it is checked not to have arrived; a SIGSTOPped node is
the "node that does not answer".
"""

from __future__ import annotations

import time
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
from support.natsserver import NatsServer
from support.process import BrokerProcess, stopped, wait_log

A = "a@127.0.0.1"
B = "b@127.0.0.1"

nats_server = nats_fixture()


def pair(extra: str) -> Any:
    """A fixture of nodes A and B (the default heartbeat, then ``extra`` TOML) for one
    test, handed over once both joined."""
    return nodes_fixture((A, B), scope="function", heartbeat=None, extra=extra)


#: Nodes that wait a minute for a confirmation, and never count a stopped node down
#: during a test.
patient = pair("forward_timeout = 60\nheartbeat_misses = 600\n")
impatient = pair("forward_timeout = 1\nheartbeat_misses = 600\n")


def test_puback_waits_for_the_remote_node(nats_server: NatsServer,
                                          patient: dict[str, BrokerProcess]) -> None:
    for connect in clients(patient):
        t = uid("w")
        sub = connect(B)
        sub.subscribe(t, 1)
        nats_server.wait_interest(B, t)
        pub = connect(A)
        assert pub.publish(t, b"first", 1) == 0  # both up: confirmed at once
        assert sub.expect_message().payload == b"first"
        b = patient[B]
        with stopped(b.proc):
            mid1 = publish_nowait(pub, t, b"q1", 1)
            mid2 = publish_nowait(pub, t, b"q2", 2)
            until("A to hold both messages for B",
                  lambda: status(patient[A])["awaiting_confirmation"] == 2)
            # Held while B cannot answer: neither acknowledgement has come.
            with pub._cond:
                assert mid1 not in pub._pubacks and mid2 not in pub._pubacks
        assert wait_ack(pub, mid1) == 0
        assert wait_ack(pub, mid2) == 0
        got = sorted(m.payload for m in sub.expect_messages(2))
        assert got == [b"q1", b"q2"]
        assert status(patient[A])["awaiting_confirmation"] == 0


def test_no_confirmation_in_time_is_0x80_or_a_disconnect(
        nats_server: NatsServer, impatient: dict[str, BrokerProcess]) -> None:
    for connect in clients(impatient):
        t = uid("t")
        sub = connect(B)
        sub.subscribe(t, 1)
        nats_server.wait_interest(B, t)
        pub5 = connect(A)
        pub3 = connect(A, version=4)
        local = connect(A)  # a subscriber on the publisher's node gets it all the same
        local.subscribe(t, 1)
        b = impatient[B]
        with stopped(b.proc):
            assert pub5.publish(t, b"v5-q1", 1) == 0x80
            # QoS 2: PUBREC 0x80 ends the flow. paho ignores a PUBREC's reason and sends
            # PUBREL anyway; its id is unknown by then, so what paho reports is PUBCOMP's
            # 0x92 (Packet Identifier not found), proof that the PUBREC was an error.
            assert pub5.publish(t, b"v5-q2", 2) == 0x92
            # 3.1.1 has no reason codes: no acknowledgement, the connection is closed.
            mid = publish_nowait(pub3, t, b"v3-q1", 1)
            pub3.wait_disconnected()
            with pub3._cond:
                assert mid not in pub3._pubacks
            assert status(impatient[A])["confirm_timeouts"] == 3
        got = sorted(m.payload for m in local.expect_messages(3))
        assert got == [b"v3-q1", b"v5-q1", b"v5-q2"]
        # Once B answers again, acknowledgements are successes again.
        assert pub5.publish(t, b"after", 1) == 0
    log = impatient[A].log()
    assert "forwarded messages not confirmed within 1 s by another node" in log


def test_kill_9_after_puback_keeps_the_message(nats_server: NatsServer) -> None:
    """The receiving node confirms once its store committed: killed right after the
    publisher's PUBACKs, it has every message for its persistent subscriber at restart."""
    def subscribe(nodes: dict[str, BrokerProcess], sub: Client, t: str) -> None:
        sub.subscribe(t, 1)
        nats_server.wait_interest(B, t)

    configs = {n: node_config(n, nats_server.url, heartbeat=None) for n in (A, B)}
    check_kill_9_after_puback(nats_server, configs, subscribe)


small_window = pair("forward_window = 64\n\n[mqtt]\nmax_mqueue_len = 0\n")


def test_flood_across_nodes_loses_nothing(nats_server: NatsServer,
                                          small_window: dict[str, BrokerProcess]) -> None:
    """A flood far past the window between nodes: the publishers wait (flow control)
    instead of anything being dropped; every message is counted at the subscriber."""
    for connect in clients(small_window):
        t = uid("f")
        sub = connect(B)
        sub.subscribe(f"{t}/#", 1)
        nats_server.wait_interest(B, f"{t}/#")
        pub0 = connect(A)
        n0 = 20000
        for i in range(n0):
            pub0.c.publish(f"{t}/q0", str(i).encode(), 0)
        pubs = [connect(A) for _ in range(4)]
        n1 = 1000
        mids = [[publish_nowait(p, f"{t}/q1/{k}", str(i).encode(), 1) for i in range(n1)]
                for k, p in enumerate(pubs)]
        for p, ms in zip(pubs, mids, strict=True):
            assert [wait_ack(p, m) for m in ms] == [0] * n1
        pub0.publish(f"{t}/q0", b"end", 1)
        q0: set[bytes] = set()
        q1: dict[str, set[bytes]] = {}
        deadline = time.monotonic() + 120
        while (len(q0) < n0 + 1 or sum(len(v) for v in q1.values()) < 4 * n1) \
                and time.monotonic() < deadline:
            m = sub.expect_message()
            if m.topic == f"{t}/q0":
                q0.add(m.payload)
            else:
                q1.setdefault(m.topic, set()).add(m.payload)
        assert len(q0) == n0 + 1
        assert {k: len(v) for k, v in q1.items()} == {f"{t}/q1/{k}": n1 for k in range(4)}
        st = status(small_window[A])
        assert st["dropped"] == 0 and st["confirm_timeouts"] == 0
        assert status(small_window[B])["dropped"] == 0


#: Nodes that wait a minute for a confirmation but count a silent node down after three
#: missed heartbeats (the defaults).
watchful = pair("forward_timeout = 60\n")


def test_a_node_counted_down_fails_what_it_did_not_confirm(
        nats_server: NatsServer, watchful: dict[str, BrokerProcess]) -> None:
    for connect in clients(watchful):
        t = uid("d")
        sub = connect(B)
        sub.subscribe(t, 1)
        nats_server.wait_interest(B, t)
        pub = connect(A)
        b = watchful[B]
        with stopped(b.proc):
            mid = publish_nowait(pub, t, b"lost?", 1)
            # Well before forward_timeout: B is counted down after 3 missed heartbeats.
            assert wait_ack(pub, mid, timeout=45) == 0x80
            wait_log(watchful[A], "which is gone")
        assert status(watchful[A])["confirm_timeouts"] == 1

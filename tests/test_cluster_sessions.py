"""The cluster's session registry and takeover across nodes (docs/CLUSTER.md, "Sessions"):
real ``mqttd start`` nodes on a real nats-server with JetStream, real paho clients, the real
``mqttd ctl`` against each node.

A client id belongs to one node at a time (a key-value bucket changed by compare-and-set);
the same client id connecting to another node takes it over: the old connection gets
DISCONNECT 0x8E and its node ends the session there.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import WAIT, uid
from support.clients import Client
from support.cluster import clients_fixture, nats_fixture, node_config, nodes_fixture, until
from support.ctlrun import ctl
from support.natslink import HeldLink
from support.natsserver import NatsServer
from support.process import BrokerProcess, checked_broker, wait_log

from mqttd.cluster.retained import topic_key
from mqttd.cluster.sessions import TAKEOVER

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"


nats_server = nats_fixture()
nodes = nodes_fixture((A, B, C))
#: ``client(node, client_id, **kwargs)``: a client not yet connected.
client = clients_fixture(connect=False)


#: Every ``mqttd ctl`` call here waits at most this long for its answer (its own default is
#: 60 s: polled by until(), one slow answer would outlast until()'s bound and the test's).
CTL = ("--timeout", str(WAIT))


def connected_on(node: BrokerProcess, cid: str) -> bool:
    return ctl(node, *CTL, "clients", "show", cid, "--local").code == 0  # on that node itself


def has_session(node: BrokerProcess, cid: str) -> bool:
    return ctl(node, *CTL, "sessions", "show", cid, "--local").code == 0


def status(node: BrokerProcess) -> dict[str, Any]:
    """``mqttd ctl cluster status`` of that node."""
    return dict(json.loads(ctl(node, *CTL, "--json", "cluster", "status").out))


def alive(c: Client) -> bool:
    """A round trip through the broker works (the connection is still served)."""
    t = uid("alive")
    c.subscribe(t, 1)
    c.publish(t, b"ping", 1)
    return bool(c.expect_message().payload == b"ping")


def test_connecting_to_another_node_takes_the_client_over(
        nodes: dict[str, BrokerProcess], client: Callable[..., Client]) -> None:
    cid = uid("tk")
    old = client(A, cid)
    old.connect()
    new = client(B, cid)
    new.connect()
    rc, _props = old.wait_disconnected()
    assert int(rc.value if hasattr(rc, "value") else rc) == 0x8E  # Session taken over
    until("A to let the client go", lambda: not connected_on(nodes[A], cid))
    assert not has_session(nodes[A], cid)
    assert connected_on(nodes[B], cid) and alive(new)
    wait_log(nodes[A], f"cluster: client {cid} taken over by node {B}")
    # And back: the newest connection stays, wherever it is.
    again = client(A, cid)
    again.connect()
    rc, _props = new.wait_disconnected()
    assert int(rc.value if hasattr(rc, "value") else rc) == 0x8E
    assert alive(again)
    until("B to let it go", lambda: not connected_on(nodes[B], cid))
    assert connected_on(nodes[A], cid)


def test_the_old_connections_will_is_published_on_takeover(
        nats_server: NatsServer, nodes: dict[str, BrokerProcess],
        client: Callable[..., Client]) -> None:
    cid = uid("tw")
    t = uid("will")
    watcher = client(C, uid("w"))
    watcher.connect()
    watcher.subscribe(t, 1)
    nats_server.wait_interest(C, t)
    old = client(A, cid, will={"topic": t, "payload": b"gone", "qos": 1})
    old.connect()
    client(B, cid).connect()
    old.wait_disconnected()
    assert watcher.expect_message().payload == b"gone"


def test_an_offline_session_on_the_old_node_ends(
        nodes: dict[str, BrokerProcess], client: Callable[..., Client]) -> None:
    cid = uid("to")
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    first = client(A, cid, clean=False, properties=props)
    first.connect()
    first.subscribe(uid("x"), 1)
    first.disconnect()
    assert has_session(nodes[A], cid)  # kept on A, offline
    # Clean start: a new session on B, and A's ends (a resumed one is handed over:
    # tests/test_cluster_handover.py).
    moved = client(B, cid, clean=True, properties=props)
    moved.connect()
    assert not moved.session_present
    until("A to end the session it held", lambda: not has_session(nodes[A], cid))
    assert alive(moved)


def _race(nodes: dict[str, BrokerProcess], client: Callable[..., Client]) -> None:
    cid = uid("tc")
    one, two = client(A, cid), client(B, cid)
    go = threading.Barrier(2, timeout=WAIT)

    def connect(c: Client) -> None:
        go.wait()
        c.connect()

    threads = [threading.Thread(target=connect, args=(c,)) for c in (one, two)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(2 * WAIT)
    # One of the two is taken over; the other stays.
    until("one of the two to be taken over",
          lambda: (one.disconnected is not None) != (two.disconnected is not None))
    survivor, loser = (one, two) if two.disconnected is not None else (two, one)
    rc = loser.wait_disconnected()[0]
    assert int(rc.value if hasattr(rc, "value") else rc) == 0x8E
    assert alive(survivor)
    assert survivor.disconnected is None
    where = nodes[A] if survivor is one else nodes[B]
    other = nodes[B] if survivor is one else nodes[A]
    assert connected_on(where, cid)
    until("the loser's node to let it go", lambda: not connected_on(other, cid))


def test_concurrent_connects_leave_exactly_one(
        nodes: dict[str, BrokerProcess], client: Callable[..., Client]) -> None:
    for _ in range(5):
        _race(nodes, client)


def test_status_counts_claims(nodes: dict[str, BrokerProcess],
                              client: Callable[..., Client]) -> None:
    before = json.loads(ctl(nodes[C], "--json", "cluster", "status").out)
    assert before["session_registry"] == "in use"
    client(C, uid("cs")).connect()
    until("C to count its claim", lambda: json.loads(ctl(
        nodes[C], "--json", "cluster", "status").out)["sessions_claimed"]
        > before["sessions_claimed"])


def test_a_dead_nodes_clients_wills_are_published_once_by_a_survivor() -> None:
    server = NatsServer()
    try:
        with checked_broker(node_config("s1@127.0.0.1", server.url)) as s1, \
                checked_broker(node_config("s2@127.0.0.1", server.url)) as s2:
            doomed = BrokerProcess(node_config("doomed@127.0.0.1", server.url))
            made: list[Client] = []
            try:
                for node in (s1, s2, doomed):
                    wait_log(node, "joined through NATS")
                server.nodes = {"s1@127.0.0.1": s1, "s2@127.0.0.1": s2,
                                "doomed@127.0.0.1": doomed}
                t = uid("dw")
                watchers = []
                for node, name in ((s1, "s1@127.0.0.1"), (s2, "s2@127.0.0.1")):
                    w = Client(node, uid("w"), version=5)
                    made.append(w)
                    w.connect()
                    w.subscribe(f"{t}/#", 1)
                    watchers.append(w)
                    server.wait_interest(name, f"{t}/#")
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = [("why", "node died")]
                victim = Client(doomed, uid("v"), version=5, will={
                    "topic": f"{t}/will", "payload": b"my node died", "qos": 1,
                    "properties": props})
                polite = Client(doomed, uid("p"), version=5, will={
                    "topic": f"{t}/polite", "payload": b"never sent", "qos": 1})
                made += [victim, polite]
                victim.connect()
                polite.connect()
                polite.disconnect()  # a normal DISCONNECT: its will is dropped
                # The victim's will kept in the bucket, the polite one's gone again.
                until("the wills to be in the registry", lambda: json.loads(ctl(
                    doomed, "--json", "cluster", "status").out)["wills_kept"] == 1
                    and json.loads(ctl(doomed, "--json", "cluster", "status").out)[
                        "sessions_claimed"] >= 2)
                doomed.stop(signal.SIGKILL)
                for w in watchers:
                    m = w.expect_message(timeout=4 * WAIT)
                    assert (m.topic, m.payload) == (f"{t}/will", b"my node died")
                    assert m.properties.UserProperty == [("why", "node died")]
                # Exactly once: a marker published after it comes next on both.
                marker = Client(s1, uid("m"))
                made.append(marker)
                marker.connect()
                marker.publish(f"{t}/end", b"end", 1)
                for w in watchers:
                    assert w.expect_message().payload == b"end"
                published = sum(json.loads(ctl(n, "--json", "cluster", "status").out)
                                ["wills_of_dead_nodes"] for n in (s1, s2))
                assert published == 1
            finally:
                for c in made:
                    c.close()
                doomed.stop()
                doomed.cleanup()
    finally:
        server.stop()


def test_a_takeover_read_with_the_answer_to_the_claim_it_displaced(
        nats_server: NatsServer) -> None:
    """A's claim is written, but A has not read the answer yet when B's newer claim replaces
    it and B's takeover reaches A: A reads both at once (the link holds what the server
    sends A, then gives it all in one write). The takeover must still end A's connection."""
    cid = uid("th")
    link = HeldLink(nats_server.port)
    made: list[Client] = []
    key = f"PUB $KV.mqttd_sessions.{topic_key(cid)} ".encode()
    try:
        with checked_broker(node_config("ha@127.0.0.1", link.url, heartbeat=None)) as a, \
                checked_broker(node_config("hb@127.0.0.1", nats_server.url,
                                           heartbeat=None)) as b:
            for node in (a, b):
                wait_log(node, "joined through NATS")
            link.hold_after(key)
            old = Client(a, cid, version=5)
            new = Client(b, cid, version=5)
            made += [old, new]
            old.connect()
            link.wait_held()  # A's claim is in the bucket; A has not read the answer
            displaced = status(b)["sessions_displaced"]
            new.connect()
            # B's newer claim replaced A's, and B's takeover waits for A behind the answer.
            link.wait_held(f"MSG {TAKEOVER}".encode())
            assert status(b)["sessions_displaced"] == displaced + 1
            link.release()
            rc, _props = old.wait_disconnected()
            assert int(rc.value if hasattr(rc, "value") else rc) == 0x8E
            until("A to let the client go", lambda: not connected_on(a, cid))
            assert alive(new) and connected_on(b, cid)
    finally:
        for c in made:
            c.close()
        link.close()

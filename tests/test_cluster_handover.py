"""Session hand-over between cluster nodes (docs/CLUSTER.md, "Session hand-over"), the 0x88
refusal of persistent sessions while NATS is away, and a dead node's clients' delayed wills:
a real nats-server with JetStream, real ``mqttd start`` nodes, paho clients and the raw
client (to hold acknowledgements back and read the exact packets, DUP flags and packet
ids), ``mqttd ctl`` against each node.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import WAIT, builder as B, uid
from support.clients import Client
from support.cluster import clients_fixture, nats_fixture, node_config, nodes_fixture, until
from support.ctlrun import ctl
from support.natsserver import NatsServer
from support.process import BrokerProcess, checked_broker, wait_log
from support.raw import RawClient

from mqttd.cluster.subjects import encode_filter
from mqttd.mqtt.packets import Connack, Disconnect, Pubcomp, Publish, Pubrec, Pubrel, Suback

A, B_ = "a@127.0.0.1", "b@127.0.0.1"

PERSISTENT = B.props(("session_expiry_interval", 3600))


nats_server = nats_fixture()
# Each node has heard the other (a hand-over is asked only of a node up).
nodes = nodes_fixture((A, B_), wait="up")
#: ``client(node, client_id, **kwargs)``: a client not yet connected.
client = clients_fixture(connect=False)


def has_session(node: BrokerProcess, cid: str) -> bool:
    return ctl(node, "sessions", "show", cid, "--local").code == 0


def status(node: BrokerProcess) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ctl(node, "--json", "cluster", "status").out)
    return data


def test_takeover_hands_over_in_flight_and_queued_messages(
        nodes: dict[str, BrokerProcess], client: Callable[..., Client]) -> None:
    cid, t = uid("ho"), uid("hot")
    before = status(nodes[B_])["sessions_handed_in"]
    # The holder on A: receive maximum 3, so that three deliveries fill its window and the
    # next ones are queued; it acknowledges nothing.
    old = RawClient(nodes[A], version=5)
    try:
        old.connect(cid, clean=False, properties=B.props(
            ("session_expiry_interval", 3600), ("receive_maximum", 3)))
        old.send(B.subscribe(1, [(f"{t}/#", 2)],
                             properties=B.props(("subscription_identifier", 7))))
        assert old.expect(Suback).reason_codes == [2]
        # An incoming QoS 2 message of its own, PUBREC'd, never released.
        old.send(B.publish(f"{uid('in')}", b"mine", qos=2, packet_id=77,
                           properties=B.EMPTY_PROPS))
        assert old.expect(Pubrec).packet_id == 77
        pub = client(A, uid("pub"))
        pub.connect()
        pub.publish(f"{t}/1", b"m1", 1)
        m1 = old.expect(Publish)
        pub.publish(f"{t}/2", b"m2", 2)
        m2 = old.expect(Publish)
        old.send(B.pubrec(m2.packet_id))  # m2: PUBREC'd, waiting for PUBCOMP
        assert old.expect(Pubrel).packet_id == m2.packet_id
        pub.publish(f"{t}/3", b"m3", 2)
        m3 = old.expect(Publish)
        pub.publish(f"{t}/4", b"m4", 1)  # the window is full: queued
        pub.publish(f"{t}/5", b"m5", 2)
        assert [(m.payload, m.qos, m.dup) for m in (m1, m2, m3)] == [
            (b"m1", 1, False), (b"m2", 2, False), (b"m3", 2, False)]
        until("A to hold two queued messages", lambda: json.loads(ctl(
            nodes[A], "--json", "sessions", "show", cid, "--local").out)["mqueue_len"] == 2)

        new = RawClient(nodes[B_], version=5)
        try:
            ack = new.connect(cid, clean=False, properties=PERSISTENT)
            assert isinstance(ack, Connack) and ack.session_present
            # The old connection is told.
            got = old.expect_closed()
            assert [p.reason_code for p in got if isinstance(p, Disconnect)] == [0x8E]
            # In flight again with DUP under the same ids, PUBREL for the PUBREC'd one,
            # then the queued ones.
            r1 = new.expect(Publish)
            assert (r1.payload, r1.qos, r1.dup, r1.packet_id) == (b"m1", 1, True, m1.packet_id)
            assert r1.properties["subscription_identifier"] == [7]
            assert new.expect(Pubrel).packet_id == m2.packet_id
            r3 = new.expect(Publish)
            assert (r3.payload, r3.qos, r3.dup, r3.packet_id) == (b"m3", 2, True, m3.packet_id)
            r4, r5 = new.expect(Publish), new.expect(Publish)
            assert [(r.payload, r.qos, r.dup) for r in (r4, r5)] == [
                (b"m4", 1, False), (b"m5", 2, False)]
            # The flows complete on B.
            new.send(B.puback(m1.packet_id), B.pubcomp(m2.packet_id),
                     B.pubrec(m3.packet_id), B.puback(r4.packet_id), B.pubrec(r5.packet_id))
            assert new.expect(Pubrel).packet_id == m3.packet_id
            assert new.expect(Pubrel).packet_id == r5.packet_id
            new.send(B.pubcomp(m3.packet_id), B.pubcomp(r5.packet_id))
            # The incoming QoS 2 id came along: released on B (not "not found").
            new.send(B.pubrel(77))
            comp = new.expect(Pubcomp)
            assert (comp.packet_id, comp.reason_code) == (77, 0)
            # Nothing more (nothing twice), and the subscription works on B.
            pub.publish(f"{t}/6", b"m6", 1)
            r6 = new.expect(Publish)
            assert (r6.payload, r6.properties["subscription_identifier"]) == (b"m6", [7])
            new.send(B.puback(r6.packet_id))
            assert new.sync().packets == ()
            until("A to drop its copy", lambda: not has_session(nodes[A], cid))
            shown = json.loads(ctl(nodes[B_], "--json", "sessions", "show", cid, "--local").out)
            assert (shown["inflight"], shown["mqueue_len"], shown["awaiting_rel"]) == (0, 0, 0)
            assert status(nodes[B_])["sessions_handed_in"] == before + 1
            wait_log(nodes[A], f"cluster: session of client {cid} handed over to node {B_}")
        finally:
            new.close()
    finally:
        old.close()


def test_an_offline_session_on_another_node_resumes_here(
        nats_server: NatsServer, nodes: dict[str, BrokerProcess],
        client: Callable[..., Client]) -> None:
    cid, t = uid("hoff"), uid("hofft")
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    first = client(A, cid, clean=False, properties=props)
    first.connect()
    first.subscribe(t, 2)
    first.disconnect()
    until("A to keep it offline", lambda: has_session(nodes[A], cid))
    pub = client(A, uid("pub"))
    pub.connect()
    sent = [(b"q%d" % i, 1 + i % 2) for i in range(6)]
    for payload, qos in sent:
        pub.publish(t, payload, qos)
    moved = client(B_, cid, clean=False, properties=props)
    moved.connect()
    assert moved.session_present
    got = moved.expect_messages(len(sent))
    # (paho hands a QoS 2 message over at its PUBREL: QoS 1 and 2 may interleave.)
    assert sorted((m.payload, m.qos) for m in got) == sent
    moved.assert_no_message()
    until("A to drop its copy", lambda: not has_session(nodes[A], cid))
    # Its subscription is B's now: a message published on A reaches it through NATS.
    nats_server.wait_interest(B_, t)
    pub.publish(t, b"after", 1)
    assert moved.expect_message().payload == b"after"


def test_a_handed_over_session_is_in_the_new_nodes_store() -> None:
    """The new node commits the session before the old one lets it go: killed -9 right
    after, it restores it from its own store, and the old node has none."""
    server = NatsServer()
    b2: BrokerProcess | None = None
    try:
        with checked_broker(node_config(A, server.url)) as a:
            b = BrokerProcess(node_config(B_, server.url))
            try:
                for node in (a, b):
                    wait_log(node, "joined through NATS")
                until("A to see B", lambda: any(
                    r["node"] == B_ and r["status"] == "up"
                    for r in json.loads(ctl(a, "--json", "cluster", "nodes").out)))
                cid, t = uid("hod"), uid("hodt")
                with RawClient(a, version=5) as first:
                    first.connect(cid, clean=False, properties=PERSISTENT)
                    first.send(B.subscribe(1, [(t, 1)], properties=B.EMPTY_PROPS))
                    first.expect(Suback)
                    first.send(B.disconnect(0))
                    first.expect_closed()
                pub = Client(a, uid("pub"), version=5)
                try:
                    pub.connect()
                    for i in range(3):
                        pub.publish(t, b"d%d" % i, 1)
                finally:
                    pub.close()
                with RawClient(b, version=5) as moved:
                    assert moved.connect(cid, clean=False, properties=PERSISTENT
                                         ).session_present
                    got = [moved.expect(Publish) for _ in range(3)]
                    assert [p.payload for p in got] == [b"d0", b"d1", b"d2"]
                    wait_log(a, f"cluster: session of client {cid} handed over to node {B_}")
                    b.stop(signal.SIGKILL)  # nothing acknowledged on B
                assert not has_session(a, cid)
                b2 = BrokerProcess(node_config(B_, server.url),
                                   extra_args=["--data-dir", str(b.data_dir)])
                wait_log(b2, "joined through NATS")
                with RawClient(b2, version=5) as back:
                    assert back.connect(cid, clean=False, properties=PERSISTENT
                                        ).session_present
                    # (The store keeps a QoS 1 delivery's place, not its packet id: after a
                    # restart it is sent again as a new PUBLISH, docs/DURABILITY.md.)
                    again = [back.expect(Publish) for _ in range(3)]
                    assert [p.payload for p in again] == [b"d0", b"d1", b"d2"]
                    back.send(*(B.puback(p.packet_id) for p in again))
                    assert back.sync().packets == ()
            finally:
                b.stop()
                if b2 is not None:
                    b2.stop()
                    b2.cleanup()
                b.cleanup()
    finally:
        server.stop()


def test_a_session_larger_than_one_nats_message_moves_in_parts(
        nodes: dict[str, BrokerProcess], client: Callable[..., Client]) -> None:
    """300 queued messages of 4 KiB (1.2 MB, above NATS's 1 MiB maximum payload): the
    answer comes in parts, every message arrives, in order."""
    cid, t = uid("hobig"), uid("hobigt")
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    first = client(A, cid, clean=False, properties=props)
    first.connect()
    first.subscribe(t, 1)
    first.disconnect()
    pub = client(A, uid("pub"))
    pub.connect()
    sent = [b"%04d" % i + b"x" * 4092 for i in range(300)]
    for payload in sent:
        pub.publish(t, payload, 1)
    moved = client(B_, cid, clean=False, properties=props)
    moved.connect()
    assert moved.session_present
    got = moved.expect_messages(len(sent))
    assert [m.payload for m in got] == sent
    until("A to drop its copy", lambda: not has_session(nodes[A], cid))


def test_a_3_1_1_session_with_a_shared_subscription_moves(
        nats_server: NatsServer, nodes: dict[str, BrokerProcess],
        client: Callable[..., Client]) -> None:
    """3.1.1 clean session 0, a plain and a shared subscription: the queued messages of
    both are handed over, and both subscriptions are B's afterwards."""
    cid, t = uid("ho4"), uid("ho4t")
    shared = f"$share/g{uid('')}/{t}/s"
    first = client(A, cid, version=4, clean=False)
    first.connect()
    first.subscribe([(f"{t}/p", 1), (shared, 1)])
    first.disconnect()
    subject = encode_filter(f"{t}/s")
    nats_server.wait_queue_subs(A, lambda subs: any(x == subject for x, _ in subs),
                                "A's queue subscription")
    pub = client(A, uid("pub"))
    pub.connect()
    pub.publish(f"{t}/p", b"plain", 1)
    pub.publish(f"{t}/s", b"shared", 1)
    until("A to queue both", lambda: json.loads(ctl(
        nodes[A], "--json", "sessions", "show", cid, "--local").out)["mqueue_len"] == 2)
    moved = client(B_, cid, version=4, clean=False)
    moved.connect()
    assert moved.session_present
    got = moved.expect_messages(2)
    assert sorted((m.topic, m.payload) for m in got) == [(f"{t}/p", b"plain"),
                                                         (f"{t}/s", b"shared")]
    until("A to drop its copy", lambda: not has_session(nodes[A], cid))
    nats_server.wait_interest(B_, f"{t}/p")
    nats_server.wait_queue_subs(B_, lambda subs: any(x == subject for x, _ in subs),
                                "B's queue subscription")
    pub.publish(f"{t}/p", b"plain2", 1)
    pub.publish(f"{t}/s", b"shared2", 1)
    got = moved.expect_messages(2)
    assert sorted(m.payload for m in got) == [b"plain2", b"shared2"]


def test_no_session_elsewhere_starts_anew(nodes: dict[str, BrokerProcess],
                                          client: Callable[..., Client]) -> None:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 60
    cid = uid("hnew")
    c = client(B_, cid, clean=False, properties=props)
    c.connect()
    assert not c.session_present
    c.disconnect()
    # Back to the same node: its own session, present.
    again = client(B_, cid, clean=False, properties=props)
    again.connect()
    assert again.session_present


def test_persistent_sessions_are_refused_while_nats_is_away() -> None:
    server = NatsServer()
    try:
        with checked_broker(node_config("lone@127.0.0.1", server.url)) as node:
            wait_log(node, "joined through NATS")
            assert status(node)["persistent_sessions"] == "accepted"
            server._terminate()
            wait_log(node, "lost the connection to NATS")
            # MQTT 5, clean start 0 and an expiry: 0x88.
            with RawClient(node, version=5) as r:
                ack = r.connect(uid("p5"), clean=False, properties=PERSISTENT,
                                expect_rc=0x88)
                assert not ack.session_present
                r.expect_closed()
            # MQTT 5, clean start 1 but an expiry: the session would outlive the connection.
            with RawClient(node, version=5) as r:
                r.connect(uid("p5e"), clean=True, properties=PERSISTENT, expect_rc=0x88)
            # 3.1.1 clean session 0: return code 3 (Server unavailable).
            with RawClient(node, version=4) as r:
                r.connect(uid("p4"), clean=False, expect_rc=3)
            # Clean sessions are served, locally.
            c = Client(node, uid("clean"), version=5)
            try:
                c.connect()
                t = uid("local")
                c.subscribe(t, 1)
                c.publish(t, b"here", 1)
                assert c.expect_message().payload == b"here"
            finally:
                c.close()
            wait_log(node, "refusing persistent-session CONNECTs (0x88 Server unavailable)")
            st = status(node)
            assert st["persistent_sessions"].startswith("refused (0x88)")
            assert st["persistent_refused"] >= 3
            text = ctl(node, "cluster", "status").out
            assert "refused (0x88)" in text
            # NATS back: accepted again.
            server._start()
            wait_log(node, "connected to NATS again")
            until("persistent sessions to be accepted", lambda: status(
                node)["persistent_sessions"] == "accepted")
            with RawClient(node, version=5) as r:
                r.connect(uid("p5b"), clean=False, properties=PERSISTENT)
    finally:
        server.stop()


def test_a_dead_nodes_delayed_will_waits_for_its_delay() -> None:
    server = NatsServer()
    made: list[Client] = []
    try:
        with checked_broker(node_config("s1@127.0.0.1", server.url)) as s1:
            doomed = BrokerProcess(node_config("doomed@127.0.0.1", server.url))
            try:
                for node in (s1, doomed):
                    wait_log(node, "joined through NATS")
                server.nodes = {"s1@127.0.0.1": s1, "doomed@127.0.0.1": doomed}
                t = uid("dw")
                watcher = Client(s1, uid("w"), version=5)
                made.append(watcher)
                watcher.connect()
                watcher.subscribe(f"{t}/#", 1)
                server.wait_interest("s1@127.0.0.1", f"{t}/#")
                connect = Properties(PacketTypes.CONNECT)
                connect.SessionExpiryInterval = 3600
                delayed = Properties(PacketTypes.WILLMESSAGE)
                delayed.WillDelayInterval = 3
                victim = Client(doomed, uid("v"), version=5, clean=False, properties=connect,
                                will={"topic": f"{t}/will", "payload": b"late", "qos": 1,
                                      "properties": delayed})
                back = Client(doomed, uid("b"), version=5, clean=False, properties=connect,
                              will={"topic": f"{t}/back", "payload": b"never", "qos": 1,
                                    "properties": delayed})
                # A client already gone, its will waiting out its delay on doomed.
                longer = Properties(PacketTypes.WILLMESSAGE)
                longer.WillDelayInterval = 8
                gone = Client(doomed, uid("g"), version=5, clean=False, properties=connect,
                              will={"topic": f"{t}/gone", "payload": b"waited", "qos": 1,
                                    "properties": longer})
                made += [victim, back, gone]
                victim.connect()
                back.connect()
                gone.connect()
                gone.drop()
                until("the wills to be in the registry", lambda: (
                    lambda st: (st["wills_kept"], st["wills_delayed"]) == (3, 1))(
                    status(doomed)))
                doomed.stop(signal.SIGKILL)
                wait_log(s1, "cluster: node doomed@127.0.0.1 is down")
                # Not at once: a message published now comes first.
                marker = Client(s1, uid("m"), version=5)
                made.append(marker)
                marker.connect()
                marker.publish(f"{t}/now", b"now", 1)
                # The second client comes back (to s1) before its delay passes.
                again = Client(s1, back.c._client_id.decode(), version=5, clean=False,
                               properties=connect)
                made.append(again)
                again.connect()
                first = watcher.expect_message()
                assert (first.topic, first.payload) == (f"{t}/now", b"now")
                wills = {(m.topic, m.payload) for m in (watcher.expect_message(
                    timeout=4 * WAIT), watcher.expect_message(timeout=4 * WAIT))}
                assert wills == {(f"{t}/will", b"late"), (f"{t}/gone", b"waited")}
                wait_log(s1, "the delayed will of client %s of node doomed@127.0.0.1 is "
                         "not sent: the client connected again" % back.c._client_id.decode())
                marker.publish(f"{t}/end", b"end", 1)
                assert watcher.expect_message().payload == b"end"
                assert status(s1)["wills_of_dead_nodes"] == 2
            finally:
                for c in made:
                    c.close()
                doomed.stop()
                doomed.cleanup()
    finally:
        server.stop()

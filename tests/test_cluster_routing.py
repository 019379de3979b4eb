"""Routing between mqttd nodes over a real nats-server (docs/CLUSTER.md, issue 15's first
slice): real ``mqttd start`` nodes with ``[cluster] nats_url``, real paho clients.

When a node's interest is in place is read from nats-server's own monitoring endpoint
(``/connz?subs=1``: each connection, named after its node, with its subjects), so no test
guesses with a sleep; "nothing else arrived" is checked after a marker published later by
the same publisher has arrived.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import WAIT, uid
from support.clients import Client, sub_opts
from support.cluster import clients_fixture, nats_fixture, nodes_fixture
from support.ctlrun import ctl
from support.natsserver import NatsServer, free_port
from support.process import BrokerProcess, checked_broker, run_mqttd, wait_log

from mqttd.cluster.subjects import encode_filter


def node_config(name: str, url: str) -> str:
    return f'[node]\nname = "{name}"\n\n[cluster]\nnats_url = "{url}"\n'


A = "a@127.0.0.1"
B = "b@127.0.0.1"


nats_server = nats_fixture()
nodes = nodes_fixture((A, B), config=node_config)
connect = clients_fixture(version=4)


def _until_marker(sub: Client, marker: bytes) -> list[Any]:
    """Every message before the one carrying ``marker`` (bounded by WAIT per message)."""
    got = []
    for _ in range(1000):
        msg = sub.expect_message()
        if msg.payload == marker:
            return got
        got.append(msg)
    raise AssertionError("marker never came")


def test_cross_node_qos0_qos1_qos2(nats_server: NatsServer, connect: Callable[..., Client]
                                   ) -> None:
    sub = connect(A)
    t = uid("x")
    sub.subscribe(f"{t}/q0", 0)
    sub.subscribe(f"{t}/q1", 1)
    sub.subscribe(f"{t}/q2", 2)
    nats_server.wait_interest(A, f"{t}/q0", f"{t}/q1", f"{t}/q2")
    pub = connect(B)
    pub.publish(f"{t}/q0", b"zero", 0)
    assert pub.publish(f"{t}/q1", b"one", 1) == 0
    pub.publish(f"{t}/q2", b"two", 2)
    got = {m.topic: (m.payload, m.qos) for m in sub.expect_messages(3)}
    assert got == {f"{t}/q0": (b"zero", 0), f"{t}/q1": (b"one", 1), f"{t}/q2": (b"two", 2)}


def test_wildcards_and_dollar_topics(nats_server: NatsServer, connect: Callable[..., Client]
                                     ) -> None:
    t = uid("w")
    plus = connect(A)
    plus.subscribe(f"{t}/+/x", 1)
    hash_ = connect(A)
    hash_.subscribe("#", 1)
    parent = connect(A)
    parent.subscribe(f"{t}/#", 1)
    dollar = connect(A)
    dollar.subscribe(f"${t}/#", 1)
    nats_server.wait_interest(A, f"{t}/+/x", "#", f"{t}/#", f"${t}/#")
    pub = connect(B)
    for topic in (f"{t}/a/x", f"{t}/a/y", t, f"${t}/q", f"{t}/end"):
        pub.publish(topic, topic.encode(), 1)
    assert [m.topic for m in _until_marker(parent, f"{t}/end".encode())] == \
        [f"{t}/a/x", f"{t}/a/y", t]
    seen_by_hash = [m.topic for m in _until_marker(hash_, f"{t}/end".encode())]
    # '#' sees other tests' traffic on this shared node pair too; not '$' topics.
    assert [x for x in seen_by_hash if x.startswith((t, f"${t}"))] == \
        [f"{t}/a/x", f"{t}/a/y", t]
    assert plus.expect_message().topic == f"{t}/a/x"
    assert dollar.expect_message().topic == f"${t}/q"


def test_overlapping_filters_deliver_once(nats_server: NatsServer,
                                          connect: Callable[..., Client]) -> None:
    t = uid("d")
    sub = connect(A)
    sub.subscribe([(f"{t}/#", 1), (f"{t}/+", 1), (f"{t}/m", 1)])
    nats_server.wait_interest(A, f"{t}/#", f"{t}/+", f"{t}/m")
    pub = connect(B)
    for i in range(50):
        pub.publish(f"{t}/m", str(i).encode(), 1)
    pub.publish(f"{t}/m", b"end", 1)
    pub.publish(f"{t}/m", b"end2", 1)
    got = _until_marker(sub, b"end")
    assert [m.payload for m in got] == [str(i).encode() for i in range(50)]
    # Copies of "end" itself would come before "end2".
    assert _until_marker(sub, b"end2") == []


def test_own_publishes_are_not_echoed(nats_server: NatsServer, connect: Callable[..., Client]
                                      ) -> None:
    t = uid("e")
    sub = connect(A)
    sub.subscribe(f"{t}/#", 1)
    nats_server.wait_interest(A, f"{t}/#")
    pub = connect(A)
    for i in range(20):
        pub.publish(f"{t}/x", str(i).encode(), 1)
    pub.publish(f"{t}/x", b"end", 1)
    pub.publish(f"{t}/x", b"end2", 1)
    assert [m.payload for m in _until_marker(sub, b"end")] == \
        [str(i).encode() for i in range(20)]
    assert _until_marker(sub, b"end2") == []


def test_interest_is_reference_counted_and_dropped(nats_server: NatsServer,
                                                    connect: Callable[..., Client]) -> None:
    t = uid("u")
    subject = encode_filter(f"{t}/+")
    one, two, three = connect(A), connect(A), connect(A)
    one.subscribe(f"{t}/+", 1)
    three.subscribe(f"{t}/+", 1)
    two.subscribe(f"$share/g/{t}/+", 1)  # a shared group: a queue subscription of its own
    subs = nats_server.wait_subjects(A, lambda s: subject in s, "the subscription")
    assert subs.count(subject) == 1  # two plain subscribers, one NATS subscription
    queues = nats_server.wait_queue_subs(A, lambda q: any(s == subject for s, _ in q),
                                         "the group's queue subscription")
    assert [s for s, _ in queues].count(subject) == 1
    pub = connect(B)
    pub.publish(f"{t}/1", b"a", 1)
    assert one.expect_message().payload == b"a"
    assert two.expect_message().payload == b"a"
    assert three.expect_message().payload == b"a"
    one.unsubscribe(f"{t}/+")
    # Still wanted by another plain subscriber: the node keeps its one subscription.
    marker = uid("m")
    one.subscribe(marker, 1)  # sent on the node's NATS connection after any unsubscribe
    nats_server.wait_interest(A, marker)
    assert subject in nats_server.subjects(A)
    three.unsubscribe(f"{t}/+")
    nats_server.wait_subjects(A, lambda s: subject not in s, "the interest to go")
    # The group keeps its queue subscription until its last member here leaves.
    assert any(s == subject for s, _ in nats_server.queue_subs(A))
    pub.publish(f"{t}/1", b"b", 1)
    assert two.expect_message().payload == b"b"
    two.unsubscribe(f"$share/g/{t}/+")
    nats_server.wait_queue_subs(A, lambda q: all(s != subject for s, _ in q),
                                "the queue subscription to go")
    # Gone from NATS: nothing published on B reaches node A for it any more.
    watcher = connect(A)
    watcher.subscribe(marker, 1)
    pub.publish(f"{t}/1", b"c", 1)
    pub.publish(marker, b"end", 1)
    assert watcher.expect_message().payload == b"end"
    assert one.expect_message().payload == b"end"
    one.assert_no_message()
    two.assert_no_message()
    three.assert_no_message()


def test_sys_topics_stay_on_their_node(nats_server: NatsServer,
                                       connect: Callable[..., Client]) -> None:
    t = uid("s")
    on_a = connect(A)
    on_a.subscribe([("$SYS/brokers/+/clients/+/connected", 0), (f"{t}/end", 0)])
    nats_server.wait_interest(A, "$SYS/brokers/+/clients/+/connected", f"{t}/end")
    on_b = connect(B)
    on_b.subscribe("$SYS/brokers/+/clients/+/connected", 0)
    newcomer = uid("n")
    connect(B, client_id=newcomer)
    assert newcomer in on_b.expect_message().topic  # B published its presence event
    connect(B).publish(f"{t}/end", b"end", 0)
    got = _until_marker(on_a, b"end")
    assert [m.topic for m in got if B in m.topic] == []


def test_mqtt5_properties_cross_nodes(nats_server: NatsServer,
                                      connect: Callable[..., Client]) -> None:
    t = uid("p")
    sub = connect(A, version=5)
    sub_props = Properties(PacketTypes.SUBSCRIBE)
    sub_props.SubscriptionIdentifier = 7
    sub.subscribe(t, options=sub_opts(1), properties=sub_props)
    nats_server.wait_interest(A, t)
    pub = connect(B, version=5)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v"), ("k", " two ")]
    props.CorrelationData = b"\x00\x01corr"
    props.ContentType = "text/plain"
    props.ResponseTopic = "r/t"
    props.MessageExpiryInterval = 300
    pub.publish(t, b"hello", 1, properties=props)
    m = sub.expect_message()
    assert m.payload == b"hello" and m.qos == 1
    assert m.properties.UserProperty == [("k", "v"), ("k", " two ")]
    assert m.properties.CorrelationData == b"\x00\x01corr"
    assert m.properties.ContentType == "text/plain"
    assert m.properties.ResponseTopic == "r/t"
    assert 0 < m.properties.MessageExpiryInterval <= 300
    assert m.properties.SubscriptionIdentifier == [7]  # the receiving node's subscription


def test_retained_crosses_live_and_is_replicated(
        nats_server: NatsServer, connect: Callable[..., Client]) -> None:
    t = uid("r")
    plain = connect(A, version=5)
    plain.subscribe(t, options=sub_opts(1))
    rap = connect(A, version=5)
    rap.subscribe(t, options=sub_opts(1, rap=True))
    nats_server.wait_interest(A, t)
    pub = connect(B)
    pub.publish(t, b"kept", 1, retain=True)
    first, second = plain.expect_message(), rap.expect_message()
    assert (first.payload, first.retain) == (b"kept", False)
    assert (second.payload, second.retain) == (b"kept", True)  # retain as published
    on_b = connect(B)
    on_b.subscribe(t, 1)
    got = on_b.expect_message()
    assert (got.payload, got.retain) == (b"kept", True)  # stored on B, where it was published
    # Replicated to A through the bucket (test_cluster_retained.py says more).


def test_overlong_topics_stay_local(nats_server: NatsServer,
                                    connect: Callable[..., Client]) -> None:
    t = uid("l")
    long_topic = f"{t}/" + "x" * 4000
    far = connect(A)
    far.subscribe([(long_topic, 1), (f"{t}/#", 1)])
    nats_server.wait_interest(A, f"{t}/#")
    near = connect(B)
    near.subscribe(long_topic, 1)
    pub = connect(B)
    pub.publish(long_topic, b"long", 1)
    assert near.expect_message().payload == b"long"  # local delivery is unaffected
    pub.publish(f"{t}/short", b"short", 1)
    # The long one never crossed, and B's NATS connection survived it.
    assert far.expect_message().payload == b"short"
    far.assert_no_message()


def test_three_nodes_each_get_one_copy(nats_server: NatsServer,
                                       nodes: dict[str, BrokerProcess]) -> None:
    c_name = "c@127.0.0.1"
    t = uid("3")
    with checked_broker(node_config(c_name, nats_server.url)) as c_node:
        wait_log(c_node, "joined through NATS")
        nats_server.nodes[c_name] = c_node
        subs = []
        try:
            for broker in (nodes[A], c_node):
                sub = Client(broker, uid("s"))
                subs.append(sub)
                sub.connect()
                sub.subscribe([(f"{t}/#", 1), (f"{t}/+", 1)])
            nats_server.wait_interest(A, f"{t}/#", f"{t}/+")
            nats_server.wait_interest(c_name, f"{t}/#", f"{t}/+")
            pub = Client(nodes[B], uid("p"))
            subs.append(pub)
            pub.connect()
            for i in range(10):
                pub.publish(f"{t}/x", str(i).encode(), 1)
            pub.publish(f"{t}/x", b"end", 1)
            for sub in subs[:2]:
                assert [m.payload for m in _until_marker(sub, b"end")] == \
                    [str(i).encode() for i in range(10)]
        finally:
            for client in subs:
                client.close()
            del nats_server.nodes[c_name]


def test_nats_restart_nodes_resubscribe() -> None:
    server = NatsServer()
    try:
        fast = "heartbeat_interval = 0.2\n"  # an outage far longer than 3 heartbeats
        with checked_broker(node_config("r1@127.0.0.1", server.url) + fast) as r1, \
                checked_broker(node_config("r2@127.0.0.1", server.url) + fast) as r2:
            for node in (r1, r2):
                wait_log(node, "joined through NATS")
            server.nodes = {"r1@127.0.0.1": r1, "r2@127.0.0.1": r2}
            t = uid("k")
            sub, pub = Client(r1, uid("s")), Client(r2, uid("p"))
            # A client with a will on r2: r2 is not dead, so no one may publish it.
            willing = Client(r2, uid("w"), version=5,
                             will={"topic": f"{t}/will", "payload": b"wrong", "qos": 1})
            try:
                sub.connect()
                pub.connect()
                willing.connect()
                sub.subscribe([(t, 1), (f"{t}/will", 1)])
                server.wait_interest("r1@127.0.0.1", t)
                server.restart()
                for node in (r1, r2):
                    wait_log(node, "lost the connection to NATS")
                    wait_log(node, "connected to NATS again", timeout=30)
                # The subscription was made again by the node itself.
                server.wait_interest("r1@127.0.0.1", t)
                pub.publish(t, b"after", 1)
                assert sub.expect_message().payload == b"after"  # and no will before it
                # A node cut off from NATS does not count the others down (their wills).
                assert "is down" not in r1.log() + r2.log()
                # The retained bucket (in the server's store dir) is followed again too.
                pub.publish(f"{t}/r", b"kept", 1, retain=True)
                deadline = time.monotonic() + 4 * WAIT
                while ctl(r1, "retained", "show", f"{t}/r").code != 0:
                    assert time.monotonic() < deadline, "not replicated after the restart"
                    time.sleep(0.05)
            finally:
                sub.close()
                pub.close()
                willing.close()
    finally:
        server.stop()


def test_unreachable_nats_runs_single_node_then_joins() -> None:
    port = free_port()  # nothing listens there yet
    config = node_config("alone@127.0.0.1", f"nats://127.0.0.1:{port}") + \
        "rejoin_interval = 0.2\n"
    with checked_broker(config) as node:
        wait_log(node, "cannot reach NATS at nats://127.0.0.1:")
        assert "running as a single node until it can join" in node.log()
        sub_id = uid("s")
        sub = Client(node, sub_id, version=5)
        pub = Client(node, uid("p"))
        try:
            sub.connect()
            pub.connect()
            sub.subscribe("alone/x", 1)
            pub.publish("alone/x", b"local", 1)
            assert sub.expect_message().payload == b"local"
            pub.publish("alone/kept", b"retained alone", 1, retain=True)
            # NATS comes: the node joins by itself, with its subscription and retained.
            server = NatsServer(port=port)
            try:
                wait_log(node, "joined through NATS", timeout=4 * WAIT)
                assert node.log().count("cannot reach NATS") == 1  # logged once
                server.wait_interest("alone@127.0.0.1", "alone/x")
                with checked_broker(node_config("other@127.0.0.1", server.url)) as other:
                    wait_log(other, "joined through NATS")
                    server.nodes = {"alone@127.0.0.1": node, "other@127.0.0.1": other}
                    server.wait_routes()
                    far = Client(other, uid("f"))
                    try:
                        far.connect()
                        far.publish("alone/x", b"from afar", 1)
                        assert sub.expect_message().payload == b"from afar"
                        far.subscribe("alone/kept", 1)
                        assert far.expect_message().payload == b"retained alone"
                        # Its clients from before the join were claimed at the join: the
                        # same client id on the other node takes this one over.
                        twin = Client(other, sub_id, version=5)
                        try:
                            twin.connect()
                            rc = sub.wait_disconnected()[0]
                            assert int(rc.value if hasattr(rc, "value") else rc) == 0x8E
                        finally:
                            twin.close()
                    finally:
                        far.close()
            finally:
                server.stop()
        finally:
            sub.close()
            pub.close()


def test_rejoin_interval_0_stays_single() -> None:
    port = free_port()
    config = node_config("never@127.0.0.1", f"nats://127.0.0.1:{port}") + \
        "rejoin_interval = 0\n"
    with checked_broker(config) as node:
        wait_log(node, "cannot reach NATS at nats://127.0.0.1:")
        log = node.log()
        assert "running as a single node" in log and "until it can join" not in log


def test_bad_nats_url_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('[cluster]\nnats_url = "127.0.0.1:4222"\n')
    r = run_mqttd("config", "check", "-c", str(cfg))
    assert r.returncode != 0
    assert "cluster.nats_url" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_what_no_other_node_wants_stays_on_its_node(
        nats_server: NatsServer, nodes: dict[str, BrokerProcess],
        connect: Callable[..., Client]) -> None:
    def status() -> dict[str, Any]:
        data: dict[str, Any] = json.loads(ctl(nodes[A], "--json", "cluster", "status").out)
        return data

    deadline = time.monotonic() + 2 * WAIT
    while not status()["settled"]:  # three heartbeats after its join
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t = uid("lo")
    here = connect(A)
    here.subscribe(t, 1)
    nats_server.wait_interest(A, t)
    pub = connect(A)
    before = status()
    for i in range(20):
        pub.publish(t, str(i).encode(), 1)
    assert [here.expect_message().payload for _ in range(20)] == \
        [str(i).encode() for i in range(20)]
    after = status()
    # B has no route for it: nothing went to NATS (EMQX forwards only to matching nodes).
    assert after["local_only"] - before["local_only"] == 20
    assert after["forwarded"] == before["forwarded"]
    there = connect(B)
    there.subscribe(t, 1)
    nats_server.wait_interest(B, t)  # and A has read B's new route
    pub.publish(t, b"now", 1)
    assert there.expect_message().payload == b"now"
    assert here.expect_message().payload == b"now"
    assert status()["forwarded"] == after["forwarded"] + 1

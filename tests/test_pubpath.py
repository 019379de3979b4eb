"""The PUBLISH fast path (mqttd/core/pubpath.py): the pure reference and the compiled twin
against the channel's state machine.

Three brokers get the same random traffic: one through ``Channel.handle_in`` alone (the
state machine, the reference behaviour), one through ``PublishPathPy.take`` first, one
through the compiled ``PublishPath.take`` first. Every byte each client is sent, every
counter, every hook call and each session's state must be the same in all three, with
hooks, pauses, offline sessions, No Local, shared groups, properties, retain and $-topics
coming and going (so the fast path both takes and declines). The same on a cluster node
(a real ``Cluster`` wired as the node wires it, without a NATS connection): the fast path
takes what stays on the node and declines what goes to other nodes.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from core_util import Probe, World
from hypothesis import HealthCheck, given, settings, strategies as st
from nats.aio.client import Client as NatsClient

from mqttd import _accel
from mqttd.cluster.routing import Cluster
from mqttd.config import ClusterSettings, Settings
from mqttd.core import pubpath
from mqttd.core._pubpath_py import PublishPathPy
from mqttd.core.channel import NO_OUT
from mqttd.core.message import Message
from mqttd.core.session import NO_QUEUE
from mqttd.modules.base import ModuleContext
from mqttd.modules.topic_metrics import TopicMetrics
from mqttd.mqtt.packets import (
    Connect,
    Disconnect,
    Pingreq,
    Puback,
    Publish,
    Pubrel,
    SubOpts,
    Subscribe,
    Unsubscribe,
)
from mqttd.store.journal import Journal
from mqttd.store.memory import MemoryBackend
from mqttd.store.oplog import OpLog

_NO_C_REASON = "MQTTD_NO_EXTENSIONS is set: the compiled fast path is not built"

TOPICS = ["a/b", "a/c", "x", "$SYS/x", "$delayed/1/a/b", "a/b/c/d/e/f", "q"]
FILTERS = ["a/#", "a/b", "+/b", "#", "x", "$share/g/a/b", "$share/g/x", "q"]
#: (client id, MQTT version, clean start) of the clients every world connects.
CLIENTS = [("c0", 4, True), ("c1", 5, True), ("c2", 4, False), ("c3", 5, False)]
HOOK_POINTS = ["message.delivered", "message.dropped", "message.publish", "client.publish",
               "delivery.dropped", "client.check_acl", "message.acked"]


def _compiled() -> type:
    # Imported directly, not through the facade, so a missing build fails loudly.
    return importlib.import_module("mqttd._speedups._pubpath").PublishPath  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=["py", "c"])
def impl(request: pytest.FixtureRequest) -> type:
    """The fast path under test: ``PublishPathPy`` or the compiled ``PublishPath``."""
    if request.param == "py":
        return PublishPathPy
    if _accel.NO_EXTENSIONS:
        pytest.skip(_NO_C_REASON)
    return _compiled()


def test_facade_uses_compiled_path() -> None:
    if _accel.NO_EXTENSIONS:
        assert pubpath.PublishPath is PublishPathPy
    else:
        assert pubpath.PublishPath is _compiled()


#: Another node's routes, for a cluster node that knows them: "+/b" (a shared group's
#: only: nothing to confirm) and "x" (a plain subscriber's: it confirms what it gets).
PEER_FILTERS = ["+/b", "x"]
PEER_PLAIN = ["x"]


def join(world: World, state: str) -> Cluster:
    """A real cluster link on ``world``'s broker, wired as mqttd/node.py wires it, with no
    NATS connection. ``"alone"``: NATS was never reached (everything stays on the node);
    ``"settled"``: joined, its connection to NATS down (a real nats-py client, not
    connected: what goes out is queued), settled, knowing another node's routes
    (PEER_FILTERS); ``"joining"``: the same before it has settled (everything goes out)."""
    cluster = Cluster(ClusterSettings(nats_url="nats://127.0.0.1:1"), "a", world.dispatcher,
                      world.metrics)
    broker = world.broker
    broker.cluster = cluster
    broker.remote_gate = cluster.gate
    broker.router.on_change = cluster.route_changed
    broker.router.on_group = cluster.group_changed
    if state != "alone":
        cluster.nc = NatsClient()
        cluster.members.table("b", "b1", 1, PEER_FILTERS, time.monotonic(), time.time(),
                              plain=PEER_PLAIN)
        cluster._settled = state == "settled"  # (what run() sets three heartbeats in)
    return cluster


def peer_route(cluster: Cluster, topic_filter: str, added: bool, plain: bool = True) -> None:
    """Node b's route delta, as ``mqttd.c.routes`` brings it: ``topic_filter`` added (with
    a plain subscriber, or a shared group's only) or removed."""
    peer = cluster.members.peers["b"]
    change = [topic_filter]
    cluster.members.delta("b", "b1", peer.version + 1, change if added else [],
                          [] if added else change, time.monotonic(), time.time(),
                          plain_added=change if added and plain else [],
                          plain_removed=[] if added else change)


class Run:
    """One broker, its clients and what they were sent, driven through ``take``."""

    def __init__(self, take: Callable[[Any, Any], bool] | None, max_levels: int,
                 max_inflight: int = 32, cluster: str | None = None) -> None:
        # (max_inflight 2: windows fill, so PUBACKs refill them from the queue.)
        self.world = World(max_topic_levels=max_levels, max_mqueue_len=3,
                           max_inflight=max_inflight)
        self.cluster = join(self.world, cluster) if cluster is not None else None
        self.take = take
        self.log: list[tuple[Any, ...]] = []
        self.probes: list[Probe] = []
        self.next_id: list[int] = []
        for cid, version, clean in CLIENTS:
            probe = self.world.client(cid, version, clean=clean,
                                      expiry=None if clean else 300)
            probe.out()
            self.probes.append(probe)
            self.next_id.append(0)
        self.sent: list[list[bytes]] = [[] for _ in CLIENTS]
        self.callbacks: dict[str, Callable[..., Any]] = {}
        # The topic metrics module (Dispatcher.watched while a topic is registered).
        w = self.world
        self.topic_metrics = TopicMetrics(ModuleContext(w.hooks, w.metrics, Settings(),
                                                        w.broker, w.timers))
        self.topic_metrics.load()

    def rewrite(self, client: Any, props: Any, topic: str) -> None:
        """A client.publish callback for the prefix "a/" only (as a topic rewrite rule's)."""
        self.log.append(("rewrite", topic))

    def prefixed(self, on: bool) -> None:
        hooks = self.world.hooks
        if on and not any(c.action == self.rewrite for c in hooks.callbacks("client.publish")):
            hooks.add("client.publish", self.rewrite, prefixes=("a/",))
        elif not on:
            hooks.delete("client.publish", self.rewrite)

    def watch(self, topic: str, on: bool) -> None:
        tm = self.topic_metrics
        if on and topic not in tm.topics:
            tm.add(topic)
        elif not on:
            tm.delete(topic)

    def egress(self, msg: Message) -> None:
        """Broker.egress, as a bridge has it: what it is given, in order."""
        self.log.append(("egress", msg.topic, msg.payload, msg.qos, msg.retain,
                         msg.properties, msg.sender, msg.expiry))

    def feed(self, i: int, packet: Any) -> None:
        channel = self.probes[i].channel
        if self.take is None or not self.take(channel, packet):
            channel.handle_in(packet)
        self.collect()

    def collect(self) -> None:
        for i, probe in enumerate(self.probes):
            out = probe.channel.out
            if out:
                self.sent[i].append(b"".join(out))
                out.clear()
                # As the connection does after a complete write: the channel holds no list
                # until its next packet (both twins must make it one, as the channel does).
                probe.channel.out = NO_OUT

    def hook(self, point: str, on: bool) -> None:
        hooks = self.world.hooks
        if on and point not in self.callbacks:
            def record(*args: Any) -> None:
                self.log.append((point, *(repr(a) for a in args[-1:])))
            self.callbacks[point] = record
            hooks.add(point, record)
        elif not on and point in self.callbacks:
            hooks.delete(point, self.callbacks.pop(point))

    def state(self) -> dict[str, Any]:
        sessions = {}
        for probe in self.probes:
            ch = probe.channel
            s = ch.session
            sessions[ch.client_id] = (
                ch.recv_pkt, ch.send_pkt, ch.recv_msg, ch.send_msg, ch.dropped, ch.closing,
                None if s is None else (sorted(s.inflight), len(s.mqueue) if s.mqueue
                                        is not NO_QUEUE else 0, s.dropped,
                                        sorted(s.awaiting_rel)))
        c = self.cluster
        return {"metrics": self.world.metrics.snapshot(), "sessions": sessions,
                "sent": self.sent, "log": self.log,
                "topic_metrics": {t: st.counts for t, st in self.topic_metrics.topics.items()},
                "retained": sorted(m.topic for m in self.world.broker.retained("#")),
                # What the cluster counted and queued for NATS (the frames carry the
                # node's random id: kinds and subjects), and the holds for confirmations.
                "cluster": None if c is None else (
                    c.local_only, c.failed, [op[:2] for op in c._ops],
                    sorted((seq, e[1], sorted(e[2]), e[3]) for seq, e in c._awaiting.items()),
                    [p.channel.hold for p in self.probes])}


_client = st.integers(0, len(CLIENTS) - 1)
OPS = st.one_of(
    st.tuples(st.just("sub"), _client, st.sampled_from(FILTERS), st.integers(0, 2),
              st.booleans()),
    st.tuples(st.just("unsub"), _client, st.sampled_from(FILTERS)),
    st.tuples(st.just("pub"), _client, st.sampled_from(TOPICS), st.integers(0, 2),
              st.booleans(), st.sampled_from([None, "user", "content"])),
    st.tuples(st.just("pub"), _client, st.sampled_from(TOPICS[:3]), st.integers(0, 1),
              st.just(False), st.just(None)),
    # QoS 0 frames the compiled twin writes itself: Remaining Length of 1 to 4 bytes,
    # non-ASCII topics (a size picks the payload's length).
    st.tuples(st.just("pub"), _client, st.sampled_from(["a/b", "\u00e9/b", "a/\u20ac", "x"]),
              st.just(0), st.just(False), st.just(None),
              st.sampled_from([0, 121, 122, 123, 124, 16376, 16377, 16378, 2097145, 2097146])),
    st.tuples(st.just("ack"), _client),
    st.tuples(st.just("pause"), _client, st.booleans()),
    st.tuples(st.just("hook"), st.sampled_from(HOOK_POINTS), st.booleans()),
    # Idle modules' tests the compiled twin remembers per topic: a rewrite rule's prefix,
    # topic metrics' registered names.
    st.tuples(st.just("prefixed"), st.booleans()),
    st.tuples(st.just("watch"), st.sampled_from(["a/b", "x", "q"]), st.booleans()),
    # The bridges' egress slot (Broker.egress) set or cleared.
    st.tuples(st.just("egress"), st.booleans()),
    st.tuples(st.just("close"), _client),
    # Another node's route comes or goes (a cluster node's fast path must see it at once).
    st.tuples(st.just("peer"), st.sampled_from(["a/c", "a/#", "q", "+/b"]), st.booleans(),
              st.booleans()),
)


def _apply(run: Run, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "sub":
        _, i, topic_filter, qos, no_local = op
        run.next_id[i] += 1
        run.feed(i, Subscribe(run.next_id[i] % 65535 + 1,
                              [(topic_filter, SubOpts(qos, no_local=no_local))]))
    elif kind == "unsub":
        _, i, topic_filter = op
        run.next_id[i] += 1
        run.feed(i, Unsubscribe(run.next_id[i] % 65535 + 1, [topic_filter]))
    elif kind == "pub":
        _, i, topic, qos, retain, props, *size = op
        properties: dict[str, Any] = {}
        if props == "user" and CLIENTS[i][1] == 5:
            properties["user_property"] = [("k", "v")]
        elif props == "content" and CLIENTS[i][1] == 5:
            properties["content_type"] = "text/plain"
        packet_id = 0
        if qos:
            run.next_id[i] += 1
            packet_id = run.next_id[i] % 65535 + 1
        payload = b"payload-%d" % len(run.log) if not size else b"s" * size[0]
        run.feed(i, Publish(topic, payload, qos, retain, False, packet_id, properties))
        if qos == 2:
            run.feed(i, Pubrel(packet_id))
    elif kind == "ack":
        _, i = op
        session = run.probes[i].channel.session
        if session is not None:
            for packet_id, entry in sorted(session.inflight.items()):
                if entry[1] == 1:  # WAIT_ACK of a QoS 1 delivery
                    run.feed(i, Puback(packet_id))
    elif kind == "pause":
        _, i, paused = op
        channel = run.probes[i].channel
        if not channel.closing:
            channel.set_paused(paused)
            run.collect()
    elif kind == "hook":
        run.hook(op[1], op[2])
    elif kind == "prefixed":
        run.prefixed(op[1])
    elif kind == "watch":
        run.watch(op[1], op[2])
    elif kind == "egress":
        run.world.broker.egress = run.egress if op[1] else None
    elif kind == "close":
        _, i = op
        run.feed(i, Disconnect())
    elif kind == "peer":
        _, topic_filter, added, plain = op
        if run.cluster is not None and run.cluster.nc is not None:
            peer_route(run.cluster, topic_filter, added, plain)
    else:  # pragma: no cover
        raise AssertionError(op)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, min_size=1, max_size=40), max_levels=st.sampled_from([0, 3]),
       max_inflight=st.sampled_from([32, 2]),
       cluster=st.sampled_from([None, None, "alone", "settled", "joining"]))
def test_fast_path_matches_state_machine(impl: type, ops: list[tuple[Any, ...]],
                                         max_levels: int, max_inflight: int,
                                         cluster: str | None) -> None:
    slow = Run(None, max_levels, max_inflight, cluster)
    fast = Run(pubpath.build(impl), max_levels, max_inflight, cluster)
    for op in ops:
        _apply(slow, op)
        _apply(fast, op)
    assert fast.state() == slow.state()


def test_fast_path_takes_the_common_publish(impl: type) -> None:
    """Not only equal: the plain QoS 0/1 PUBLISH is the fast path's, the others are not."""
    run = Run(pubpath.build(impl), 0)
    take = run.take
    assert take is not None
    run.feed(1, Subscribe(1, [("a/#", SubOpts(1))]))
    publisher = run.probes[0].channel
    assert take(publisher, Publish("a/b", b"x", 0))
    assert take(publisher, Publish("a/b", b"x", 1, False, False, 7))
    assert not take(publisher, Publish("a/b", b"x", 2, False, False, 8))
    assert not take(publisher, Publish("a/b", b"x", 0, True))
    assert not take(publisher, Publish("$SYS/a", b"x", 0))
    assert not take(publisher, Puback(3))
    run.collect()
    # c0 (3.1.1) got its PUBACK, c1 (MQTT 5) both messages: one QoS 0, one QoS 1.
    assert run.sent[0] == [bytes((0x40, 2, 0, 7))]
    assert run.sent[1][1] == (bytes((0x30, 7, 0, 3)) + b"a/b\0x"
                              + bytes((0x32, 9, 0, 3)) + b"a/b\0\1\0x")


def test_a_prefixed_client_publish_callback_leaves_other_topics_to_it(impl: type) -> None:
    """A client.publish callback for some prefixes only (a topic rewrite rule's) turns the
    fast path off for those topics alone, as the channel skips the chain for the others; one
    for every topic turns it off for all."""
    run = Run(pubpath.build(impl), 0)
    take = run.take
    assert take is not None
    run.feed(1, Subscribe(1, [("#", SubOpts(1))]))
    publisher = run.probes[0].channel
    hooks = run.world.hooks
    seen: list[str] = []

    def rewrite(client: Any, props: Any, topic: str) -> None:
        seen.append(topic)

    hooks.add("client.publish", rewrite, prefixes=("nomatch/",))
    assert take(publisher, Publish("a/b", b"x", 0))
    assert not take(publisher, Publish("nomatch/b", b"x", 0))
    run.feed(0, Publish("nomatch/b", b"x", 0))  # the slow path runs the callback
    assert seen == ["nomatch/b"]
    hooks.delete("client.publish", rewrite)
    hooks.add("client.publish", rewrite)
    assert not take(publisher, Publish("a/b", b"x", 0))
    hooks.delete("client.publish", rewrite)
    assert take(publisher, Publish("a/b", b"x", 0))


def test_idle_modules_tests_are_remembered_only_while_they_are_unchanged(impl: type
                                                                          ) -> None:
    """A topic that passed a rewrite rule's prefixes and topic metrics' names (the compiled
    twin remembers it for the connection's repeated topic str) is tested again as soon as
    either changes: registering the topic, or a rule for its prefix, sends the very next
    PUBLISH to the slow path, where it is counted or rewritten."""
    run = Run(pubpath.build(impl), 0)
    take = run.take
    assert take is not None
    run.feed(1, Subscribe(1, [("#", SubOpts(0))]))
    publisher = run.probes[0].channel
    topic = "".join(["a/", "b"])  # one str object for every PUBLISH, as the parser reuses it
    tm = run.topic_metrics

    def publish(expect_taken: bool) -> None:
        packet = Publish(topic, b"x", 0)
        taken = take(publisher, packet)
        assert taken == expect_taken
        if not taken:
            run.feed(0, packet)

    publish(True)
    publish(True)
    tm.add("x")  # another name: still taken
    publish(True)
    tm.add("a/b")
    publish(False)
    assert tm.topics["a/b"].counts["in"] == [1, 0, 0]
    tm.delete("a/b")
    publish(True)
    hooks = run.world.hooks
    hooks.add("client.publish", run.rewrite, prefixes=("a/",))
    publish(False)
    assert run.log[-1] == ("rewrite", "a/b")
    hooks.delete("client.publish", run.rewrite)
    hooks.add("client.publish", run.rewrite, prefixes=("b/",))
    publish(True)
    tm.delete("x")  # the last name: watched is None again
    publish(True)
    assert tm.topics == {}


def test_fast_path_takes_the_puback_and_refills_the_window(impl: type) -> None:
    """A subscriber's PUBACK of a QoS 1 delivery is the fast path's too, with the refill of
    the window from the queue: the same bytes as the state machine sends, the next packet
    id, and the PUBACK of an unknown packet id left to the state machine."""
    runs = [Run(None, 0, 2), Run(pubpath.build(impl), 0, 2)]
    for run in runs:
        run.feed(1, Subscribe(1, [("a/#", SubOpts(1))]))
        for k in range(5):
            run.feed(0, Publish("a/b", b"m%d" % k, 1, False, False, k + 1))
    slow, fast = runs
    take = fast.take
    assert take is not None
    subscriber = fast.probes[1].channel
    assert sorted(subscriber.session.inflight) == [1, 2]
    assert not take(subscriber, Puback(9))  # unknown: the state machine counts it
    subscriber.handle_in(Puback(9))
    slow.feed(1, Puback(9))
    fast.collect()
    assert take(subscriber, Puback(1))
    slow.feed(1, Puback(1))
    fast.collect()
    assert sorted(subscriber.session.inflight) == [2, 3]
    assert fast.sent[1][-1] == bytes((0x32, 10, 0, 3)) + b"a/b\0\3\0m2"  # (MQTT 5)
    assert fast.state() == slow.state()


def _plain(value: Any) -> Any:
    """An operation's field as compared across two brokers (objects and times by type)."""
    if value is None or isinstance(value, (int, str, bytes)):
        return value
    return type(value).__name__


def _durable_run(take: Callable[[Any, Any], bool] | None, tmp_path: Any,
                 stored_publisher: bool = False) -> tuple[Any, ...]:
    """A broker with durability (a real Journal, not started: what the core tells it is
    gathered in its batch), a persistent 3.1.1 subscriber and a clean MQTT 5 one (window
    2), a publisher of 6 QoS 1 messages (and 2 no one subscribed to, which store nothing:
    a stored publisher's PUBACK still waits, for what its session stored before), then the
    subscribers' PUBACKs (one unknown): everything sent, the sessions, the counters and the
    store's operations."""
    world = World(max_inflight=2, max_mqueue_len=20)
    journal = Journal(MemoryBackend(), "process", OpLog(str(tmp_path / "mqttd.db")))
    world.broker.use_store(journal)
    stored = world.subscriber("s", "a/#", version=4, clean=False, expiry=300)
    clean = world.subscriber("k", "a/#", version=5)
    publisher = (world.client("p", version=5, clean=False, expiry=300) if stored_publisher
                 else world.client("p", version=5))
    sent: list[list[bytes]] = [[], [], []]
    probes = [stored, clean, publisher]

    def feed(probe: Probe, packet: Any, collect: bool = True) -> None:
        if take is None or not take(probe.channel, packet):
            probe.channel.handle_in(packet)
        if not collect:
            return
        for i, pr in enumerate(probes):
            if pr.channel.out:
                sent[i].append(b"".join(pr.channel.out))
                pr.channel.out.clear()

    for k in range(6):
        feed(publisher, Publish("a/b", b"m%d" % k, 1, False, False, k + 1))
    # (One read's worth: the second PUBACK joins the first in the output, and in the hold.)
    feed(publisher, Publish("z/none", b"n0", 1, False, False, 7), collect=False)
    feed(publisher, Publish("z/none", b"n1", 1, False, False, 8))
    for packet_id in (1, 9, 2, 3, 4, 5, 6, 7):
        for probe in (stored, clean):
            feed(probe, Puback(packet_id))
    sessions = [(sorted(p.channel.session.inflight), len(p.channel.session.mqueue),
                 sorted(p.channel.session.refs.values()), p.channel.session.delivered,
                 p.channel.recv_pkt, p.channel.send_pkt, p.channel.hold) for p in probes]
    ops = [None if op is None else tuple(_plain(v) for v in op) for op in journal._ops]
    return (sent, sessions, world.metrics.snapshot(), ops, journal.gate.issued)


@pytest.mark.parametrize("stored_publisher", [False, True])
def test_fast_path_takes_the_puback_of_a_durable_broker(impl: type, tmp_path: Any,
                                                        stored_publisher: bool) -> None:
    """With durability on, the subscriber's PUBACK and its refill are the fast path's too:
    for a stored session the stored delivery is forgotten and the refill's packet id kept
    as the state machine does it (the same operations for the store, in the same order),
    for a clean session on the same broker nothing is stored; the same bytes, sessions and
    counters; the publisher's PUBACKs still wait for the commit (``hold``)."""
    take = pubpath.build(impl)
    acked: list[bool] = []

    def counted(channel: Any, packet: Any) -> bool:
        taken = take(channel, packet)
        if isinstance(packet, Puback):
            acked.append(taken)
        return taken

    slow = _durable_run(None, tmp_path / "slow", stored_publisher)
    fast = _durable_run(counted, tmp_path / "fast", stored_publisher)
    assert fast == slow
    sent, sessions, _metrics, ops, _issued = fast
    assert sum(acked) == 12 and len(acked) == 16  # (ids 9 and 7: unknown, declined)
    # Each acknowledged delivery's stored row went (its put cancelled in the open batch),
    # the publisher's PUBACKs wait for the commit, every message reached both.
    assert ops.count(None) == 6 and sessions[2][6]
    assert sessions[0][3] == sessions[1][3] == 6


@pytest.mark.parametrize("threshold", [0.0, 3600.0])
def test_fast_path_takes_the_puback_of_a_timed_delivery(impl: type, threshold: float) -> None:
    """With a delivery.slow callback (slow_subs) every QoS 1 delivery is timed: the fast
    path still takes its PUBACK, reports it as slow as the state machine does (threshold 0:
    every one; an hour: none), and times what it sends to refill the window."""
    runs = [Run(None, 0, 2), Run(pubpath.build(impl), 0, 2)]
    reports: list[list[bytes]] = []
    for run in runs:
        got: list[bytes] = []
        reports.append(got)
        run.world.hooks.add("delivery.slow",
                            lambda _client, msg, _latency, got=got: got.append(msg.payload))
        run.world.hooks.slow_threshold = threshold
        run.feed(1, Subscribe(1, [("a/#", SubOpts(1))]))
        for k in range(5):
            run.feed(0, Publish("a/b", b"m%d" % k, 1, False, False, k + 1))
    slow, fast = runs
    take = fast.take
    assert take is not None
    subscriber = fast.probes[1].channel
    assert sorted(subscriber.session.sent_at or ()) == [1, 2]
    for pid in (1, 2, 3):
        assert take(subscriber, Puback(pid))
        slow.feed(1, Puback(pid))
        fast.collect()
    for run in runs:
        assert sorted(run.probes[1].channel.session.sent_at or ()) == [4, 5]
    assert fast.state() == slow.state()
    assert reports[0] == reports[1] == ([b"m0", b"m1", b"m2"] if threshold == 0 else [])


def test_fast_path_gives_the_bridges_egress_the_message(impl: type) -> None:
    """Broker.egress (the bridges) does not turn the fast path off: it is given the message
    there, as Broker.publish gives it, also when no session subscribes."""
    run = Run(pubpath.build(impl), 0)
    got: list[Message] = []
    run.world.broker.egress = got.append
    run.feed(1, Subscribe(1, [("a/#", SubOpts(1))]))
    publisher = run.probes[0].channel
    assert run.take is not None
    assert run.take(publisher, Publish("a/b", b"x", 1, False, False, 9))
    assert run.take(publisher, Publish("z", b"y", 0))
    ref = [Message("a/b", b"x", 1, False, {}, "c0"), Message("z", b"y", 0, False, {}, "c0")]
    assert [type(m) for m in got] == [Message, Message]
    for name in Message.__slots__:
        if name != "timestamp":
            assert [getattr(m, name) for m in got] == [getattr(m, name) for m in ref], name
    run.collect()
    assert run.sent[0] == [bytes((0x40, 2, 0, 9))]
    assert run.sent[1][1] == bytes((0x32, 9, 0, 3)) + b"a/b\0\1\0x"


def test_fast_path_message_is_what_message_init_makes(impl: type) -> None:
    """The compiled twin fills a Message's slots itself: the same values as Message(...)
    (the timestamp from the same clock: between two time.time() readings around it)."""
    run = Run(pubpath.build(impl), 0)
    got: list[Message] = []
    run.world.hooks.add("message.delivered", lambda _client, msg: got.append(msg))
    run.feed(1, Subscribe(1, [("a/#", SubOpts(0))]))
    before = time.time()
    assert run.take is not None and run.take(run.probes[0].channel,
                                             Publish("a/b", b"x", 1, False, False, 9))
    after = time.time()
    ref = Message("a/b", b"x", 1, False, {}, "c0")
    assert len(got) == 1 and type(got[0]) is Message
    for name in Message.__slots__:
        if name != "timestamp":
            assert getattr(got[0], name) == getattr(ref, name), name
    # 1 µs either side: the two clocks' float roundings may differ by an ulp (~0.24 µs).
    assert before - 1e-6 <= got[0].timestamp <= after + 1e-6


_READ = st.lists(st.one_of(
    st.tuples(st.just("pub"), st.sampled_from(TOPICS), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("ping")), st.tuples(st.just("sub"), st.sampled_from(FILTERS)),
    st.tuples(st.just("end"), st.sampled_from(["disconnect", "connect"]))), max_size=30)


def _packets(read: list[tuple[Any, ...]]) -> list[Any]:
    packets: list[Any] = []
    for i, item in enumerate(read):
        if item[0] == "pub":
            packets.append(Publish(item[1], b"r%d" % i, item[2], item[3], False,
                                   i + 1 if item[2] else 0))
        elif item[0] == "ping":
            packets.append(Pingreq())
        elif item[0] == "sub":
            packets.append(Subscribe(i + 1, [(item[1], SubOpts(1))]))
        elif item[1] == "disconnect":
            packets.append(Disconnect())
        else:  # a second CONNECT: a protocol error that closes the channel
            packets.append(Connect("MQTT", 4, True, 60, "again", None, None, None, {}))
    return packets


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(reads=st.lists(_READ, min_size=1, max_size=4))
def test_run_applies_a_read_as_the_connection_loop_did(impl: type,
                                                       reads: list[list[tuple[Any, ...]]]) -> None:
    """``run`` applies a read's packets in order up to one that closes the channel: as the
    loop over ``handle_in`` it replaced, with the same count applied."""
    slow = Run(None, 0)
    fast = Run(None, 0)
    run = pubpath.build_run(impl)
    for read in reads:
        packets = _packets(read)
        channel = slow.probes[0].channel
        n = 0
        for packet in packets:
            n += 1
            channel.handle_in(packet)
            if channel.closing or channel.pressure is not None:
                break
        assert run(fast.probes[0].channel, _packets(read)) == n
        slow.collect()
        fast.collect()
    assert fast.state() == slow.state()


def test_counters_move_and_a_value_held_elsewhere_does_not(impl: type) -> None:
    """The compiled twin adds to a channel's counter in place when only the channel holds
    the int: an int someone else holds must keep its value, and the counters still move."""
    run = Run(pubpath.build(impl), 0)
    take = run.take
    assert take is not None
    run.feed(1, Subscribe(1, [("a/#", SubOpts(0))]))
    publisher, subscriber = run.probes[0].channel, run.probes[1].channel
    for _ in range(300):  # past the small ints CPython shares
        assert take(publisher, Publish("a/b", b"x", 0))
    held = (publisher.recv_pkt, publisher.recv_msg, subscriber.send_pkt, subscriber.send_msg)
    copy = tuple(int(str(v)) for v in held)
    for _ in range(3):
        assert take(publisher, Publish("a/b", b"x", 0))
    assert held == copy
    assert (publisher.recv_pkt, publisher.recv_msg, subscriber.send_pkt,
            subscriber.send_msg) == tuple(v + 3 for v in copy)
    del held
    where = id(publisher.recv_pkt)
    assert take(publisher, Publish("a/b", b"x", 0))
    if impl is not PublishPathPy:  # in place: the same int object, one more
        assert id(publisher.recv_pkt) == where
    assert publisher.recv_pkt == copy[0] + 4


def test_declines_as_soon_as_the_broker_or_dispatcher_changes(impl: type) -> None:
    """The compiled twin keeps the Broker's and Dispatcher's attributes while their dicts
    are unchanged: an attribute set (or set back) between two messages counts at once."""
    run = Run(pubpath.build(impl), 0)
    take = run.take
    assert take is not None
    run.feed(1, Subscribe(1, [("a/#", SubOpts(0))]))
    publisher = run.probes[0].channel
    broker, dispatcher = run.world.broker, run.world.dispatcher
    assert take(publisher, Publish("a/b", b"x", 0))
    forwarding = Cluster(ClusterSettings(nats_url="nats://127.0.0.1:1"), "a", dispatcher,
                         run.world.metrics)
    forwarding.nc = NatsClient()  # joined, not settled: everything goes to NATS
    for obj, name, value in ((broker, "topic_traces", {"a/b": object()}),
                             (broker, "cluster", forwarding),
                             (dispatcher, "watched", {"a/b": print})):
        old = getattr(obj, name)
        setattr(obj, name, value)
        assert not take(publisher, Publish("a/b", b"x", 0)), name
        setattr(obj, name, old)
        assert take(publisher, Publish("a/b", b"x", 0)), name
    # The router's cache: a new subscriber is reached by the next message.
    run.feed(3, Subscribe(1, [("a/b", SubOpts(0))]))
    run.collect()
    before = len(run.sent[3])
    assert take(publisher, Publish("a/b", b"y", 0))
    run.collect()
    assert run.sent[3][before:] == [bytes((0x30, 7, 0, 3)) + b"a/b\0y"]  # (c3: MQTT 5)


def _set_traces(broker: Any, value: Any) -> None:
    broker.topic_traces = value  # (a plain attribute store: the interpreter specializes it)


def test_declines_after_attribute_stores_the_interpreter_specialized(impl: type) -> None:
    """The same through a store run often enough to be specialized (CPython writes such a
    store into the dict directly; its version tag must move all the same)."""
    run = Run(pubpath.build(impl), 0)
    take = run.take
    assert take is not None
    run.feed(1, Subscribe(1, [("a/#", SubOpts(0))]))
    publisher, broker = run.probes[0].channel, run.world.broker
    traced = {"a/b": object()}
    for i in range(200):
        _set_traces(broker, traced if i % 2 else {})
        assert take(publisher, Publish("a/b", b"x", 0)) is not bool(i % 2), i
    _set_traces(broker, {})


def test_cluster_node_takes_what_stays_local(impl: type) -> None:
    """On a cluster node the fast path takes a message no other node is known to want (and
    counts it as Cluster.forward does) and one while NATS is not there (not counted, as
    forward), and declines one another node's route matches (Broker.publish forwards it);
    the node's shared group gets its copy of a local message, as through handle_in."""
    runs = {}
    for state in ("settled", "alone"):
        run = runs[state] = Run(pubpath.build(impl), 0, cluster=state)
        run.feed(1, Subscribe(1, [("a/#", SubOpts(0)), ("x", SubOpts(0))]))
        run.feed(3, Subscribe(2, [("$share/g/a/c", SubOpts(0))]))
        run.collect()
    settled, alone = runs["settled"], runs["alone"]
    assert settled.cluster is not None and alone.cluster is not None
    take = settled.take
    assert take is not None
    publisher = settled.probes[0].channel
    queued = list(settled.cluster._ops)  # the subscriptions' (NATS is down)
    assert take(publisher, Publish("a/c", b"1", 0))
    assert take(publisher, Publish("a/c", b"2", 1, False, False, 5))
    assert settled.cluster.local_only == 2 and settled.cluster._ops == queued
    assert not take(publisher, Publish("a/b", b"3", 0))  # node b holds "+/b"
    assert not take(publisher, Publish("x", b"4", 1, False, False, 6))
    assert settled.cluster.local_only == 2
    settled.collect()
    # c1 (MQTT 5) got both, c3 (the group's only member) both: as a single node's dispatch.
    assert settled.sent[1][-1] == (bytes((0x30, 7, 0, 3)) + b"a/c\0" + b"1"
                                   + bytes((0x30, 7, 0, 3)) + b"a/c\0" + b"2")
    assert settled.sent[3][-1] == settled.sent[1][-1]
    take = alone.take
    assert take is not None
    for topic in ("a/b", "x", "a/c"):
        assert take(alone.probes[0].channel, Publish(topic, b"y", 0)), topic
    assert alone.cluster.local_only == 0 and not alone.cluster._ops  # (forward's too)


def test_cluster_node_sees_another_nodes_route_at_once(impl: type) -> None:
    """A topic the fast path takes as local (remembered in the cluster's lane) goes to the
    other node from the moment that node's route for it arrives, and stays here again once
    the route is gone; the lane forgets everything when NATS goes (then nothing counts)."""
    run = Run(pubpath.build(impl), 0, cluster="settled")
    cluster = run.cluster
    take = run.take
    assert cluster is not None and take is not None
    run.feed(1, Subscribe(1, [("a/#", SubOpts(0))]))
    publisher = run.probes[0].channel
    queued = len(cluster._ops)
    assert take(publisher, Publish("a/c", b"1", 0))
    assert take(publisher, Publish("a/c", b"2", 0))
    assert cluster.lane.topics == {"a/c": True} and cluster.local_only == 2
    peer_route(cluster, "a/#", True)
    assert not cluster.lane.topics
    assert not take(publisher, Publish("a/c", b"3", 0))
    run.feed(0, Publish("a/c", b"3", 0))  # the slow path forwards it
    assert [op[0] for op in cluster._ops[queued:]] == ["pub"] and cluster.local_only == 2
    peer_route(cluster, "a/#", False)
    assert take(publisher, Publish("a/c", b"4", 0))
    assert cluster.local_only == 3 and "a/c" in cluster.lane.topics
    cluster.members.check(time.monotonic() + 3600)  # node b counted down: forgotten too
    assert not cluster.lane.topics
    run.collect()
    assert run.sent[1][-1].endswith(b"a/c\0" + b"4")


def _flow_run(take: Callable[[Any, Any], bool] | None, upgrade: bool,
              stalled: bool) -> tuple[Any, ...]:
    """A subscriber with a full window (2) and a queue under flow control (limit 3, hard
    limit 6, drop_oldest), ``stalled`` twice as a backpressure timeout leaves it (trim), a
    QoS 0 and QoS 1 publisher (``upgrade``: QoS 0 delivered at 1), and a second publisher
    once the first is held: after each PUBLISH, the queue, its counters, who is held, and
    everything sent."""
    world = World(max_inflight=2, max_mqueue_len=6, mqueue_flow_limit=3, upgrade_qos=upgrade)
    sub = world.subscriber("s", "a/#", version=5)
    pubs = [world.client("p", version=5), world.client("q", version=4)]
    session = sub.channel.session
    probes = [sub, *pubs]
    steps = []
    for k in range(16):
        probe = pubs[k // 8]
        if stalled and k in (4, 7):  # the queue under its flow limit, then at it
            session.flow_stalled = True
        qos = 0 if k % 3 == 2 else 1
        packet = Publish("a/b", b"m%d" % k, qos, False, False, k + 1 if qos else 0)
        if take is None or not take(probe.channel, packet):
            probe.channel.handle_in(packet)
        steps.append((len(session.mqueue), session.enqueued, session.dropped,
                      session.flow_stalled, [p.channel.pressure is not None for p in pubs],
                      [b"".join(p.channel.out) for p in probes]))
        for p in probes:
            p.channel.out.clear()
    return steps, world.metrics.snapshot()


@pytest.mark.parametrize("upgrade", [False, True])
@pytest.mark.parametrize("stalled", [False, True])
def test_fast_path_queues_to_a_full_window_as_session_enqueue(impl: type, upgrade: bool,
                                                              stalled: bool) -> None:
    """The compiled twin queues a QoS 1 delivery to a full window itself (not through
    Session.enqueue): flow control holds the publisher (not for a QoS 0 message delivered
    at 1, nor while the queue is stalled), the hard limit drops the oldest, as the state
    machine does."""
    slow = _flow_run(None, upgrade, stalled)
    fast = _flow_run(pubpath.build(impl), upgrade, stalled)
    assert fast == slow
    steps = slow[0]
    assert steps[4][3] is False  # (a queue under the limit un-stalls)
    assert steps[7][3] == stalled
    if not upgrade:  # (with it the queue is at the limit, the publisher held, sooner)
        assert any(step[4][0] for step in steps) == (not stalled)
    assert steps[-1][2] > 0  # (the hard limit dropped)

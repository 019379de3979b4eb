"""Metrics (mqttd.metrics): the table, the two counter arrays (``py`` and ``c``, which must
agree), and per family a scripted client session against a real broker whose exact counts
are read back over $SYS (tests/support/sysreader.py)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from hypothesis import given, strategies as st
from support import builder as B
from support.process import BrokerProcess
from support.raw import RawClient
from support.sysreader import SysMetrics

from mqttd import _accel, metrics as facade
from mqttd._metric_names import ALL_NAMES, COUNT, DERIVED, FAMILIES, NAMES
from mqttd._metrics_py import MetricsPy
from mqttd.mqtt.packets import (
    Connack,
    Disconnect,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Unsuback,
)

_NO_C_REASON = "MQTTD_NO_EXTENSIONS is set: the compiled metrics are not in use"


def _compiled() -> type:
    # Imported directly, not through the facade, so a missing build fails loudly.
    return importlib.import_module("mqttd._speedups._metrics").Metrics  # type: ignore[no-any-return]


@pytest.fixture(scope="session", params=["py", "c"])
def metrics_cls(request: pytest.FixtureRequest) -> type:
    """The implementation under test: ``MetricsPy`` or the compiled ``Metrics``."""
    if request.param == "py":
        return MetricsPy
    if _accel.NO_EXTENSIONS:
        pytest.skip(_NO_C_REASON)
    return _compiled()


def test_facade_uses_compiled_metrics() -> None:
    if _accel.NO_EXTENSIONS:
        assert _accel.LOADED["metrics"] == "py"
        assert facade.Metrics is MetricsPy
    else:
        assert _accel.LOADED["metrics"] == "c"
        assert facade.Metrics is _compiled()
        assert facade.MetricsC is facade.Metrics


# --- the table ----------------------------------------------------------------------------------

#: The seeds' tables (EMQX's metrics docs), rules.* and actions.* left out.
SEED_METRICS = ["bytes.received", "bytes.sent", "packets.received", "packets.sent", "packets.connect.received", "packets.connack.auth_error", "packets.connack.error", "packets.connack.sent", "packets.publish.received", "packets.publish.sent", "packets.publish.inuse", "packets.publish.auth_error", "packets.publish.error", "packets.publish.dropped", "packets.puback.received", "packets.puback.sent", "packets.puback.inuse", "packets.puback.missed", "packets.pubrec.received", "packets.pubrec.sent", "packets.pubrec.inuse", "packets.pubrec.missed", "packets.pubrel.received", "packets.pubrel.sent", "packets.pubrel.missed", "packets.pubcomp.received", "packets.pubcomp.sent", "packets.pubcomp.inuse", "packets.pubcomp.missed", "packets.subscribe.received", "packets.subscribe.error", "packets.subscribe.auth_error", "packets.suback.sent", "packets.unsubscribe.received", "packets.unsubscribe.error", "packets.unsuback.sent", "packets.pingreq.received", "packets.pingresp.sent", "packets.disconnect.received", "packets.disconnect.sent", "packets.auth.received", "packets.auth.sent", "delivery.dropped.too_large", "delivery.dropped.queue_full", "delivery.dropped.qos0_msg", "delivery.dropped.expired", "delivery.dropped.no_local", "delivery.dropped", "messages.delayed", "messages.delivered", "messages.dropped", "messages.dropped.expired", "messages.dropped.no_subscribers", "messages.forward", "messages.publish", "messages.qos0.received", "messages.qos2.received", "messages.qos1.received", "messages.qos0.sent", "messages.qos1.sent", "messages.qos2.sent", "messages.received", "messages.sent", "messages.retained", "messages.acked", "client.auth.anonymous", "client.connect", "client.authenticate", "client.connack", "client.connected", "client.disconnected", "client.check_acl", "client.subscribe", "client.unsubscribe", "client.auth.success", "client.auth.failure", "client.auth.ignore", "client.acl.allow", "client.acl.deny", "client.acl.ignore", "session.created", "session.discarded", "session.resumed", "session.takeovered", "session.terminated"]


def test_every_seed_metric_is_there_and_nothing_of_the_rule_engine() -> None:
    assert set(SEED_METRICS) <= set(ALL_NAMES)
    # beyond EMQX's: the node family, and refused deliveries (mosquitto-style read ACLs)
    assert set(ALL_NAMES) - set(SEED_METRICS) == set(FAMILIES["node"]) | set(
        FAMILIES["cluster"]) | {"delivery.dropped.not_authorized"}
    assert not any(n.startswith(("rules.", "actions.")) for n in ALL_NAMES)
    assert set(facade.Metrics().snapshot()) == set(ALL_NAMES)


def test_constants_are_the_indices() -> None:
    assert len(NAMES) == len(set(NAMES)) == COUNT
    for i, name in enumerate(NAMES):
        assert getattr(facade, name.upper().replace(".", "_")) == i, name
    for name in DERIVED:  # a sum has no index: nothing can increment it by mistake
        assert not hasattr(facade, name.upper().replace(".", "_")), name
    assert sorted(n for fam in FAMILIES.values() for n in fam) == sorted(ALL_NAMES)
    assert len(ALL_NAMES) == len(set(ALL_NAMES))
    assert all(n.startswith(fam) for fam, names in FAMILIES.items() if fam != "node"
               for n in names)


def test_derived_are_the_sums_emqx_keeps_equal() -> None:
    def parts(name: str) -> set[str]:
        return {NAMES[i] for i in DERIVED[name]}

    qos_in = {f"messages.qos{q}.received" for q in range(3)}
    qos_out = {f"messages.qos{q}.sent" for q in range(3)}
    assert parts("messages.received") == parts("packets.publish.received") == qos_in
    assert parts("messages.sent") == parts("packets.publish.sent") == qos_out
    assert parts("packets.sent") == qos_out | {n for n in NAMES if n.startswith("packets.")
                                               and n.endswith(".sent")}
    assert parts("delivery.dropped") == set(FAMILIES["delivery"]) - {"delivery.dropped"}
    assert parts("messages.dropped") == {"messages.dropped.expired",
                                         "messages.dropped.no_subscribers"}
    assert parts("client.authenticate") == {"client.auth.success", "client.auth.failure",
                                            "client.auth.ignore"}
    assert parts("client.check_acl") == {"client.acl.allow", "client.acl.deny",
                                         "client.acl.ignore"}
    assert len(DERIVED) == 9


# --- the counter arrays ---------------------------------------------------------------------------

def test_inc_get_val_snapshot(metrics_cls: type) -> None:
    m = metrics_cls()
    assert len(m) == COUNT and m.names == NAMES and m.derived == tuple(DERIVED)
    assert m.snapshot() == dict.fromkeys(ALL_NAMES, 0)
    m.inc(facade.PACKETS_PUBLISH_INUSE)
    m.inc(facade.PACKETS_PUBLISH_INUSE, 4)
    m.inc(facade.BYTES_SENT, 2 ** 40)
    m.inc(facade.MESSAGES_QOS1_RECEIVED, 2)
    m.inc(facade.MESSAGES_QOS2_RECEIVED)
    assert m.get(facade.PACKETS_PUBLISH_INUSE) == 5
    assert m.val("bytes.sent") == 2 ** 40
    assert m.val("messages.received") == m.val("packets.publish.received") == 3
    assert m.index("bytes.sent") == facade.BYTES_SENT
    with pytest.raises(KeyError):
        m.index("messages.received")  # derived: no index
    with pytest.raises(ValueError):
        m.new("messages.received")
    snap = m.snapshot()
    assert list(snap) == list(ALL_NAMES)
    assert snap["packets.publish.inuse"] == 5 and snap["messages.received"] == 3
    assert snap["packets.sent"] == 0
    m.reset()
    assert set(m.snapshot().values()) == {0}


def test_index_rules(metrics_cls: type) -> None:
    m = metrics_cls(["a", "b"], {})
    m.inc(-1)  # Python's rule: -1 is the last counter
    assert m.snapshot() == {"a": 0, "b": 1}
    for bad in (2, -3, 10 ** 6):
        with pytest.raises(IndexError):
            m.inc(bad)
        with pytest.raises(IndexError):
            m.get(bad)
    with pytest.raises(KeyError):
        m.val("c")
    with pytest.raises(TypeError):
        m.new(3)


def test_new_counters_for_plugins(metrics_cls: type) -> None:
    m = metrics_cls()
    idx = m.new("myplugin.hits")
    assert idx == COUNT and m.new("myplugin.hits") == idx and m.new("bytes.sent") == 1
    for i in range(300):  # grows past any initial capacity
        m.inc(m.new(f"x.{i}"), i)
    m.inc(idx, 3)
    assert m.val("myplugin.hits") == 3 and m.val("x.299") == 299
    assert len(m) == COUNT + 301 and m.names[-1] == "x.299"


def test_derived_validation(metrics_cls: type) -> None:
    m = metrics_cls(["a", "b", "c"], {"ab": (0, 1), "all": [0, 1, 2]})
    m.inc(0)
    m.inc(2, 5)
    assert m.snapshot() == {"a": 1, "b": 0, "c": 5, "ab": 1, "all": 6}
    assert m.val("all") == 6
    with pytest.raises(ValueError):
        metrics_cls(["a"], {"x": (1,)})
    with pytest.raises(ValueError):
        metrics_cls(["a"], {"a": (0,)})


_OPS = st.lists(st.one_of(
    st.tuples(st.just("inc"), st.integers(-12, 12), st.integers(-(2 ** 40), 2 ** 40)),
    st.tuples(st.just("new"), st.sampled_from(["a", "b", "c", "xy", "x"]), st.just(0)),
    st.tuples(st.just("reset"), st.just(0), st.just(0)),
), max_size=60)


@given(ops=_OPS)
def test_py_equals_c(ops: list[tuple[str, Any, int]]) -> None:
    if _accel.NO_EXTENSIONS:
        pytest.skip(_NO_C_REASON)
    derived = {"xy": (0, 1), "z2": (2, 2)}
    impls = [MetricsPy(["x", "y", "z"], derived), _compiled()(["x", "y", "z"], derived)]
    for op, arg, n in ops:
        results = []
        for m in impls:
            try:
                if op == "inc":
                    results.append(("ok", m.inc(arg, n)))
                elif op == "new":
                    results.append(("ok", m.new(arg)))
                else:
                    results.append(("ok", m.reset()))
            except Exception as err:
                results.append(("err", type(err)))
        assert results[0] == results[1], (op, arg, n)
        assert impls[0].snapshot() == impls[1].snapshot()
        assert impls[0].val("xy") == impls[1].val("xy")
        assert impls[0].names == impls[1].names and len(impls[0]) == len(impls[1])


# --- the node's seams, in process ---------------------------------------------------------------

def test_auth_and_acl_counters_with_and_without_callbacks() -> None:
    from mqttd.hooks import Stop
    from mqttd.node import Node

    from mqttd.core.services import ClientInfo

    node = Node()
    broker = node.broker

    def auth(client_id: str, username: str | None, password: bytes | None) -> int:
        result = broker.authenticate(ClientInfo(client_id, username, "p"), password,
                                     lambda r: None)
        assert result is not None  # no provider configured: answered at once
        return result.code

    anyone = ClientInfo("x", None, "p")
    assert auth("a", None, None) == 0
    assert broker.check_acl(anyone, "publish", "t") == 0
    node.hooks.add("client.authenticate",
                   lambda cid, user, pw, peer, acc: Stop(0x86) if user == "bad" else None)
    node.hooks.add("client.check_acl",
                   lambda ch, action, topic, acc: 0x87 if topic == "secret" else None)
    assert auth("b", "good", b"") == 0
    assert auth("c", "bad", b"") == 0x86
    assert auth("d", None, None) == 0
    assert broker.check_acl(anyone, "subscribe", "secret") == 0x87
    assert broker.check_acl(anyone, "publish", "open") == 0
    snap = node.metrics.snapshot()
    assert {k: v for k, v in snap.items() if k.startswith("client.")} == {
        "client.connect": 0, "client.connack": 0, "client.authenticate": 4,
        "client.auth.success": 2, "client.auth.failure": 1, "client.auth.ignore": 1,
        "client.auth.anonymous": 2, "client.check_acl": 3, "client.acl.allow": 1,
        "client.acl.deny": 1, "client.acl.ignore": 1, "client.connected": 0,
        "client.disconnected": 0, "client.subscribe": 0, "client.unsubscribe": 0}


# --- per family, a scripted session against a real broker -----------------------------------------

P5 = B.EMPTY_PROPS


@pytest.fixture(scope="module")
def broker() -> Any:
    b = BrokerProcess("[node]\nsys_interval = 0.1\n[mqtt]\nmax_mqueue_len = 2\n")
    try:
        yield b
    finally:
        assert b.stop() == 0
        assert "Traceback" not in b.log(), b.log()


@pytest.fixture()
def reader(broker: BrokerProcess) -> Any:
    r = SysMetrics(broker)
    try:
        yield r
    finally:
        r.close()


class Script:
    """A raw client that remembers every byte it sent."""

    def __init__(self, broker: BrokerProcess, version: int) -> None:
        self.raw = RawClient(broker, version)
        self.version = version
        self.sent = 0

    def send(self, *chunks: bytes) -> None:
        for c in chunks:
            self.sent += len(c)
        self.raw.send(*chunks)

    def expect(self, cls: type) -> Any:
        return self.raw.expect(cls)

    def connect(self, client_id: str, **kw: Any) -> Any:
        self.send(B.connect(client_id, level=self.version, **kw))
        return self.expect(Connack)

    def close(self) -> None:
        self.raw.close()


def test_bytes(broker: BrokerProcess, reader: SysMetrics) -> None:
    base = reader.next_round()
    s = Script(broker, 4)
    assert s.connect("bytes-1").reason_code == 0
    s.send(B.publish("nobody/listens", b"hello"), B.pingreq())
    s.expect(Pingresp)
    s.send(B.disconnect())
    s.raw.expect_closed()
    s.close()
    reader.wait_for({"bytes.received": s.sent, "bytes.sent": len(s.raw.received)},
                    family=("bytes.",), baseline=base)
    assert len(s.raw.received) == 4 + 2  # CONNACK, PINGRESP


def test_packets(broker: BrokerProcess, reader: SysMetrics) -> None:
    base = reader.next_round()
    s = Script(broker, 5)
    assert s.connect("pk").reason_code == 0
    s.send(B.subscribe(1, [("p/a", 1), ("p/q2", 2), ("bad/#/x", 0)], properties=P5))
    assert s.expect(Suback).reason_codes == [1, 2, 0x8F]
    # QoS 1 to ourselves: PUBACK for ours, the delivery, our PUBACK for it
    s.send(B.publish("p/a", b"1", qos=1, packet_id=10, properties=P5))
    got = [s.raw.recv(), s.raw.recv()]
    pub = next(p for p in got if isinstance(p, Publish))
    assert pub.qos == 1 and any(isinstance(p, Puback) and p.packet_id == 10 for p in got)
    s.send(B.puback(pub.packet_id))
    # QoS 2 both ways, with a duplicate of ours (inuse)
    s.send(B.publish("p/q2", b"2", qos=2, packet_id=11, properties=P5))
    got = [s.raw.recv(), s.raw.recv()]
    pub = next(p for p in got if isinstance(p, Publish))
    assert pub.qos == 2 and any(isinstance(p, Pubrec) and p.packet_id == 11 for p in got)
    s.send(B.pubrec(pub.packet_id))
    assert s.expect(Pubrel).packet_id == pub.packet_id
    s.send(B.pubcomp(pub.packet_id))
    s.send(B.publish("p/q2", b"2", qos=2, dup=True, packet_id=11, properties=P5))
    assert s.expect(Pubrec).packet_id == 11
    s.send(B.pubrel(11))
    assert s.expect(Pubcomp).packet_id == 11
    # acks for packet ids nobody knows
    s.send(B.puback(77), B.pubrec(78))
    assert s.expect(Pubrel).reason_code == 0x92
    s.send(B.pubrel(79))
    assert s.expect(Pubcomp).reason_code == 0x92
    s.send(B.pubcomp(80))
    s.send(B.unsubscribe(3, ["p/a", "nope"], properties=P5))
    assert s.expect(Unsuback).reason_codes == [0, 0x11]
    s.send(B.pingreq())
    s.expect(Pingresp)
    s.send(B.publish("$SYS/forged", b"x", qos=1, packet_id=12, properties=P5))
    assert s.expect(Puback).reason_code == 0x87
    # a QoS 2 delivery answered with PUBCOMP before PUBREL: inuse, and the broker disconnects
    s.send(B.publish("p/q2", b"3", qos=2, packet_id=13, properties=P5))
    got = [s.raw.recv(), s.raw.recv()]
    pub = next(p for p in got if isinstance(p, Publish))
    s.send(B.pubcomp(pub.packet_id))
    assert s.expect(Disconnect).reason_code == 0x82
    s.raw.expect_closed()
    s.close()
    reader.wait_for({
        "packets.received": 18, "packets.sent": 17,
        "packets.connect.received": 1, "packets.connack.sent": 1,
        "packets.publish.received": 5, "packets.publish.sent": 3,
        "packets.publish.inuse": 1, "packets.publish.auth_error": 1,
        "packets.puback.received": 2, "packets.puback.sent": 2, "packets.puback.missed": 1,
        "packets.pubrec.received": 2, "packets.pubrec.sent": 3, "packets.pubrec.missed": 1,
        "packets.pubrel.received": 2, "packets.pubrel.sent": 2, "packets.pubrel.missed": 1,
        "packets.pubcomp.received": 3, "packets.pubcomp.sent": 2, "packets.pubcomp.inuse": 1,
        "packets.pubcomp.missed": 1,
        "packets.subscribe.received": 1, "packets.subscribe.error": 1, "packets.suback.sent": 1,
        "packets.unsubscribe.received": 1, "packets.unsubscribe.error": 1,
        "packets.unsuback.sent": 1,
        "packets.pingreq.received": 1, "packets.pingresp.sent": 1,
        "packets.disconnect.sent": 1,
    }, family=("packets.",), baseline=base)


def test_packets_connack_errors(broker: BrokerProcess, reader: SysMetrics) -> None:
    base = reader.next_round()
    bad_id = Script(broker, 4)  # 3.1.1, no client id and no clean session: 0x02
    assert bad_id.connect("", clean=False).reason_code == 2
    bad_id.close()
    bad_level = Script(broker, 4)
    bad_level.send(B.connect("lvl", level=9))
    assert bad_level.expect(Connack).reason_code == 1
    bad_level.close()
    reader.wait_for({"packets.received": 1, "packets.sent": 2, "packets.connect.received": 1,
                     "packets.connack.sent": 2, "packets.connack.error": 2},
                    family=("packets.",), baseline=base)


def test_messages(broker: BrokerProcess, reader: SysMetrics) -> None:
    base = reader.next_round()
    sub = Script(broker, 4)
    assert sub.connect("m-sub").reason_code == 0
    sub.send(B.subscribe(1, [("m/+", 1)]))
    sub.expect(Suback)
    pub = Script(broker, 4)
    assert pub.connect("m-pub").reason_code == 0
    pub.send(B.publish("m/a", b"0"), B.publish("m/b", b"1", qos=1, packet_id=1))
    pub.expect(Puback)
    pub.send(B.publish("m/c", b"2", qos=2, packet_id=2))
    pub.expect(Pubrec)
    pub.send(B.pubrel(2))
    pub.expect(Pubcomp)
    pub.send(B.publish("none/here", b"x", qos=1, packet_id=3))
    pub.expect(Puback)
    pub.send(B.publish("m/r", b"keep", retain=True), B.disconnect())
    pub.raw.expect_closed()
    seen = []
    for _ in range(4):
        p = sub.expect(Publish)
        seen.append((p.topic, p.qos))
        if p.qos:
            sub.send(B.puback(p.packet_id))
    assert seen == [("m/a", 0), ("m/b", 1), ("m/c", 1), ("m/r", 0)]
    sub.send(B.unsubscribe(2, ["m/+"]), B.publish("m/r", b""))  # the retained one goes again
    sub.send(B.disconnect())
    sub.raw.expect_closed()
    for s in (sub, pub):
        s.close()
    reader.wait_for({
        "messages.received": 6, "messages.qos0.received": 3, "messages.qos1.received": 2,
        "messages.qos2.received": 1, "messages.sent": 4, "messages.qos0.sent": 2,
        "messages.qos1.sent": 2, "messages.publish": 6, "messages.delivered": 4,
        "messages.acked": 2, "messages.retained": 1, "messages.dropped": 2,
        "messages.dropped.no_subscribers": 2,
    }, family=("messages.",), baseline=base)


def _expiry_props(seconds: int, **more: Any) -> bytes:
    return B.props(("session_expiry_interval", seconds), *more.items())


def test_delivery_dropped(broker: BrokerProcess, reader: SysMetrics) -> None:
    import time

    base = reader.next_round()
    # no_local: our own message is not sent back
    nl = Script(broker, 5)
    assert nl.connect("d-nl").reason_code == 0
    nl.send(B.subscribe(1, [("d/nl", B.sub_options(0, no_local=True))], properties=P5))
    nl.expect(Suback)
    nl.send(B.publish("d/nl", b"mine", properties=P5), B.pingreq())
    nl.expect(Pingresp)  # nothing came before it
    # too_large: the client takes 64 bytes at most (a QoS 0 and a QoS 1)
    small = Script(broker, 5)
    assert small.connect("d-small", properties=B.props(("maximum_packet_size", 64))
                         ).reason_code == 0
    small.send(B.subscribe(1, [("d/big", 1)], properties=P5))
    small.expect(Suback)
    # queue_full / qos0_msg: an offline session with room for 2 (max_mqueue_len = 2)
    q = Script(broker, 5)
    assert q.connect("d-queue", clean=False, properties=_expiry_props(60)).reason_code == 0
    q.send(B.subscribe(1, [("d/q", 1)], properties=P5))
    q.expect(Suback)
    q.send(B.disconnect())
    q.raw.expect_closed()
    # expired: an offline session gets a message that expires before it comes back
    e = Script(broker, 5)
    assert e.connect("d-exp", clean=False, properties=_expiry_props(60)).reason_code == 0
    e.send(B.subscribe(1, [("d/exp", 1)], properties=P5))
    e.expect(Suback)
    e.send(B.disconnect())
    e.raw.expect_closed()
    p = Script(broker, 5)
    assert p.connect("d-pub").reason_code == 0
    big = b"x" * 200
    p.send(B.publish("d/big", big, properties=P5),
           B.publish("d/big", big, qos=1, packet_id=1, properties=P5))
    p.expect(Puback)
    p.send(B.publish("d/q", b"q0", properties=P5))  # queued as QoS 0
    for pid in (2, 3, 4):  # the 2nd pushes the QoS 0 out, the 3rd the oldest QoS 1
        p.send(B.publish("d/q", b"q1", qos=1, packet_id=pid, properties=P5))
        p.expect(Puback)
    p.send(B.publish("d/exp", b"soon gone", qos=1, packet_id=5,
                     properties=B.props(("message_expiry_interval", 1))))
    p.expect(Puback)
    time.sleep(1.2)
    e2 = Script(broker, 5)
    ack = e2.connect("d-exp", clean=False, properties=_expiry_props(0))
    assert ack.session_present
    e2.send(B.pingreq())
    e2.expect(Pingresp)  # the expired message was not sent
    for s in (nl, small, q, e, p, e2):
        s.close()
    reader.wait_for({
        "delivery.dropped": 6, "delivery.dropped.no_local": 1, "delivery.dropped.too_large": 2,
        "delivery.dropped.qos0_msg": 1, "delivery.dropped.queue_full": 1,
        "delivery.dropped.expired": 1,
    }, family=("delivery.",), baseline=base)


def test_client_and_session_events(broker: BrokerProcess, reader: SysMetrics) -> None:
    base = reader.next_round()
    c1 = Script(broker, 4)
    assert c1.connect("cs-1").reason_code == 0  # anonymous
    c1.send(B.subscribe(1, [("cs/x", 0)]))
    c1.expect(Suback)
    c1.send(B.unsubscribe(2, ["cs/x"]))
    c1.expect(Unsuback)
    c1.send(B.publish("cs/y", b"p"), B.disconnect())
    c1.raw.expect_closed()
    c2 = Script(broker, 5)
    assert c2.connect("cs-2", username="u", properties=_expiry_props(60)).reason_code == 0
    c2.close()  # dropped, the session stays
    # the broker must have seen the drop, or the reconnection would be a takeover
    reader.wait_for({"client.disconnected": 2}, baseline=base)
    c2r = Script(broker, 5)
    assert c2r.connect("cs-2", clean=False, username="u",
                       properties=_expiry_props(60)).session_present
    c3 = Script(broker, 5)
    ack = c3.connect("cs-2", clean=False, username="u", properties=_expiry_props(60))
    assert ack.session_present  # taken over from c2r
    assert c2r.expect(Disconnect).reason_code == 0x8E
    c4 = Script(broker, 5)
    assert not c4.connect("cs-2", clean=True, username="u").session_present  # discards
    assert c3.expect(Disconnect).reason_code == 0x8E
    c4.send(B.disconnect())
    c4.raw.expect_closed()
    bad = Script(broker, 4)
    assert bad.connect("", clean=False).reason_code == 2
    for s in (c1, c2, c2r, c3, c4, bad):
        s.close()
    reader.wait_for({
        "client.connect": 6, "client.connack": 6, "client.authenticate": 5,
        "client.auth.ignore": 5, "client.auth.anonymous": 1, "client.connected": 5,
        "client.disconnected": 5, "client.check_acl": 2, "client.acl.ignore": 2,
        "client.subscribe": 1, "client.unsubscribe": 1,
        "session.created": 3, "session.resumed": 2, "session.takeovered": 1,
        "session.discarded": 1, "session.terminated": 2,
    }, family=("client.", "session."), baseline=base)

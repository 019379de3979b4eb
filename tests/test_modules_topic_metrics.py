"""Topic metrics (``[modules.topic_metrics]``, mqttd/modules/topic_metrics.py) against a
real daemon with paho clients: counts in/out/dropped by QoS for registered topics match what
was sent, unregistered topics are not counted and cost no hook, ``mqttd ctl topic-metrics
add|del|list`` with bad input, and bad configuration refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import uid
from support.clients import Clients
from support.ctlrun import ctl, ctl_json, ok
from support.process import BrokerProcess, broker_fixture, run_mqttd

pytest_plugins = ["support.fixtures"]

CONFIG = """
[modules.topic_metrics]
enable = true
max_topics = 4
topics = ["init/one"]
"""


broker = broker_fixture(CONFIG)


def _metrics(broker: BrokerProcess, topic: str) -> dict[str, float]:
    rows = {r["topic"]: r for r in ctl_json(broker, "topic-metrics", "list")}
    return rows[topic]["metrics"]  # type: ignore[no-any-return]


def _by_qos(m: dict[str, float], kind: str) -> list[float]:
    return [m[f"messages.qos{q}.{kind}.count"] for q in range(3)]


def _module(broker: BrokerProcess) -> dict[str, object]:
    rows = {r["name"]: r for r in ctl_json(broker, "modules", "list")}
    return rows["topic_metrics"]  # type: ignore[no-any-return]


def _reset(broker: BrokerProcess) -> None:
    for row in ctl_json(broker, "topic-metrics", "list"):
        ok(broker, "topic-metrics", "del", row["topic"])


def test_counts_in_out_dropped_by_qos(clients: Clients, broker: BrokerProcess) -> None:
    _reset(broker)
    u = uid()
    topic, lonely, other = f"tm/{u}", f"tm/{u}/nobody", f"tm/{u}/other"
    for t in (topic, lonely):
        assert ctl_json(broker, "topic-metrics", "add", t) == {"topic": t,
                                                                "registered": True}
    high, low = clients(version=5), clients(version=4)
    assert high.subscribe([(topic, 2), (other, 2)]) == [2, 2]
    assert low.subscribe(topic, 0) == [0]
    pub = clients(version=5)
    sent = {0: 1, 1: 2, 2: 3}
    for qos, n in sent.items():
        for i in range(n):
            pub.publish(topic, f"{qos}-{i}".encode(), qos)
    pub.publish(other, b"unregistered", 1)
    # Every delivery has arrived: both subscribers got all six (and high the other one).
    assert len(high.expect_messages(7)) == 7
    assert len(low.expect_messages(6)) == 6
    # Nobody subscribes to lonely: dropped. The QoS 1 PUBACK comes after the QoS 0 one
    # was dispatched (one connection, in order).
    pub.publish(lonely, b"a", 0)
    pub.publish(lonely, b"b", 1)
    pub.publish(lonely, b"c", 1)
    m = _metrics(broker, topic)
    assert _by_qos(m, "in") == [1, 2, 3]
    assert _by_qos(m, "out") == [2, 4, 6]  # to two subscribers, by the published QoS
    assert _by_qos(m, "dropped") == [0, 0, 0]
    assert (m["messages.in.count"], m["messages.out.count"],
            m["messages.dropped.count"]) == (6, 12, 0)
    for kind in ("in", "out", "dropped"):
        assert m[f"messages.{kind}.rate"] >= 0
    d = _metrics(broker, lonely)
    assert _by_qos(d, "in") == [1, 2, 0]
    assert _by_qos(d, "dropped") == [1, 2, 0]
    assert _by_qos(d, "out") == [0, 0, 0]
    # The unregistered topic is nowhere.
    assert {r["topic"] for r in ctl_json(broker, "topic-metrics", "list")} == {topic, lonely}
    human = ok(broker, "topic-metrics", "list")
    assert topic in human and "1/2/3" in human and "2/4/6" in human and "2 topics" in human


def test_hooks_are_on_the_chains_only_while_a_topic_is_registered(
        broker: BrokerProcess) -> None:
    _reset(broker)
    assert _module(broker)["hooked"] is False and _module(broker)["topics"] == 0
    t = f"h/{uid()}"
    ok(broker, "topic-metrics", "add", t)
    assert _module(broker)["hooked"] is True
    assert ctl_json(broker, "topic-metrics", "del", t) == {"topic": t, "deleted": True}
    assert _module(broker)["hooked"] is False


def test_configured_topics_are_registered_at_load(broker: BrokerProcess) -> None:
    ok(broker, "modules", "unload", "topic_metrics")
    try:
        r = ctl(broker, "topic-metrics", "list")
        assert r.code == 1 and "not loaded" in r.err, r
    finally:
        ok(broker, "modules", "load", "topic_metrics")
    assert [r["topic"] for r in ctl_json(broker, "topic-metrics", "list")] == ["init/one"]
    assert _module(broker)["hooked"] is True


@pytest.mark.parametrize("topic", ["a/+", "a/#", "#", "+/b"])
def test_wildcards_are_refused(topic: str, broker: BrokerProcess) -> None:
    r = ctl(broker, "topic-metrics", "add", topic)
    assert r.code == 2 and "a filter, not a topic name" in r.err and "Traceback" not in r.err, r
    assert topic not in {x["topic"] for x in ctl_json(broker, "topic-metrics", "list")}


def test_bad_ctl_input(broker: BrokerProcess) -> None:
    _reset(broker)
    r = ctl(broker, "topic-metrics", "del", "never/registered")
    assert r.code == 1 and "'never/registered' not found" in r.err, r
    t = f"dup/{uid()}"
    ok(broker, "topic-metrics", "add", t)
    r = ctl(broker, "topic-metrics", "add", t)
    assert r.code == 1 and "registered already" in r.err, r
    for i in range(3):
        ok(broker, "topic-metrics", "add", f"{t}/{i}")
    r = ctl(broker, "topic-metrics", "add", f"{t}/over")
    assert r.code == 1 and "max_topics" in r.err, r
    r = ctl(broker, "--json", "topic-metrics", "add", f"{t}/over")
    assert r.code == 1 and '"quota_exceeded"' in r.out, r
    _reset(broker)


@pytest.mark.parametrize("table, reason", [
    ('topics = ["a/#"]', "modules.topic_metrics.topics: 'a/#': a filter, not a topic name"),
    ('max_topics = 1\ntopics = ["a", "b"]', "2 topics, more than max_topics (1)"),
    ('max_topics = -1', "modules.topic_metrics.max_topics: -1 is out of range"),
    ('topic = ["a"]', "modules.topic_metrics"),
])
def test_bad_configuration_is_refused(table: str, reason: str, tmp_path: Path) -> None:
    conf = tmp_path / "mqttd.toml"
    conf.write_text(f"[modules.topic_metrics]\nenable = true\n{table}\n")
    checked = run_mqttd("config", "check", "-c", str(conf))
    assert checked.returncode == 2, checked
    assert reason in checked.stderr and "Traceback" not in checked.stderr, checked

"""Stats (mqttd.stats): count/max pairs, update functions on a tick, and the node's stats of
a real broker read over $SYS."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mqttd.stats import NAMES, STATS, Stats
from mqttd.sys_topics import MOSQUITTO_NAMES


def test_names_are_emqx_pairs() -> None:
    assert STATS == ("connections", "channels", "sessions", "sessions.persistent", "topics",
                     "suboptions", "subscribers", "subscriptions", "subscriptions.shared",
                     "routes", "retained", "publishers.held")  # the last one is mqttd's
    assert len(NAMES) == 24
    assert Stats().snapshot() == dict.fromkeys(sorted(NAMES), 0)


def test_set_keeps_the_maximum() -> None:
    stats = Stats()
    for value in (3, 7, 2, 0):
        stats.set("connections", value)
    assert stats.get("connections.count") == 0
    assert stats.get("connections.max") == 7
    stats.set("routes.count", 4)  # the .count form is accepted too
    assert (stats.get("routes.count"), stats.get("routes.max")) == (4, 4)
    stats.setstat("retained.count", 5)  # EMQX's setstat/2: no max kept
    assert (stats.get("retained.count"), stats.get("retained.max")) == (5, 0)
    stats.setstat("retained.count", 6, "retained.max")
    assert stats.get("retained.max") == 6
    with pytest.raises(TypeError):
        stats.set("topics", 1.5)  # type: ignore[arg-type]
    assert list(stats.snapshot()) == sorted(NAMES)


def test_updates_run_on_their_interval() -> None:
    stats = Stats()
    calls: list[str] = []

    def every() -> dict[str, int]:
        calls.append("every")
        return {"sessions": len(calls)}

    def third() -> None:
        calls.append("third")
        stats.set("topics", 9)

    assert stats.update_interval("every", every)
    assert stats.update_interval("third", third, interval=3)
    for _ in range(6):
        stats.tick()
    assert calls.count("every") == 6 and calls.count("third") == 2
    assert stats.get("topics.count") == 9
    assert stats.cancel_update("every") and not stats.cancel_update("every")
    stats.tick()
    assert calls.count("every") == 6
    with pytest.raises(ValueError):
        stats.update_interval("zero", every, interval=0)


def test_duplicate_update_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    stats = Stats()
    with caplog.at_level(logging.WARNING, logger="mqttd.stats"):
        assert stats.update_interval("x", dict)
        assert not stats.update_interval("x", dict)
    assert "duplicated stats update: x" in caplog.text
    assert stats.updates() == ["x"]


def test_failing_update_is_logged_once_and_others_run(caplog: pytest.LogCaptureFixture) -> None:
    stats = Stats()

    def broken() -> None:
        raise KeyError("gone")

    stats.update_interval("broken", broken)
    stats.update_interval("good", lambda: {"routes": 2})
    with caplog.at_level(logging.ERROR, logger="mqttd.stats"):
        for _ in range(3):
            stats.tick()
    assert stats.failures == 3
    assert stats.get("routes.count") == 2
    assert [r.getMessage() for r in caplog.records] == [
        "stats update broken failed (logged once)"]


def test_run_ticks() -> None:
    stats = Stats()
    seen: list[int] = []
    stats.update_interval("n", lambda: seen.append(1))  # type: ignore[arg-type,func-returns-value]

    async def main() -> None:
        task = asyncio.ensure_future(stats.run(tick=0.01))
        while len(seen) < 3:
            await asyncio.sleep(0.005)
        task.cancel()

    asyncio.run(asyncio.wait_for(main(), 5))
    assert len(seen) >= 3


def test_node_registers_the_components_updates() -> None:
    from mqttd.node import Node

    node = Node()
    assert node.stats.updates() == []  # registered when the node starts
    node._register_stats()
    assert set(node.stats.updates()) == {"registry", "router", "retainer", "backpressure"}
    node.stats.refresh()
    assert node.stats.snapshot() == dict.fromkeys(sorted(NAMES), 0)


# --- a real broker ----------------------------------------------------------------------------

def test_broker_stats_over_sys() -> None:
    from support import uid
    from support.clients import Client
    from support.process import BrokerProcess
    from support.sysreader import SysReader

    b = BrokerProcess("[node]\nsys_interval = 0.2\n")
    clients: list[Any] = []
    try:
        reader = SysReader(b, "stats/#")
        clients.append(reader.client)
        a = Client(b, uid("a-"), version=5)
        a.connect()
        clients.append(a)
        a.subscribe("s/+/x", 1)
        a.subscribe("s/exact", 0)
        a.subscribe("$share/g/s/shared", 1)
        p = Client(b, uid("p-"), version=5, clean=False,
                   properties=_expiry(300))
        p.connect()
        clients.append(p)
        p.subscribe("s/exact", 1)
        p.publish("r/1", b"kept", retain=True, qos=1)
        p.publish("r/2", b"kept", retain=True, qos=1)
        want = {
            "connections.count": 3, "channels.count": 3, "sessions.count": 3,
            "sessions.persistent.count": 1,
            # routes: $SYS/brokers/+/stats/# (the reader), s/+/x, s/exact, s/shared
            "routes.count": 4, "topics.count": 4,
            "subscriptions.count": 5, "suboptions.count": 5, "subscriptions.shared.count": 1,
            "subscribers.count": 3,
            # r/1, r/2, the three retained EMQX $SYS topics (version, sysdescr,
            # $SYS/brokers) and mosquitto's $SYS/broker/... values, all retained
            "retained.count": 5 + len(MOSQUITTO_NAMES),
        }
        got = reader.wait_for(want)
        assert {k: got[k] for k in want} == want
        p.drop()
        a.disconnect()
        want2 = {"connections.count": 1, "connections.max": 3, "sessions.count": 2,
                 "sessions.persistent.count": 1, "subscriptions.count": 2, "routes.count": 2}
        got = reader.wait_for(want2)
        assert {k: got[k] for k in want2} == want2
    finally:
        for c in clients:
            c.close()
        assert b.stop() == 0


def _expiry(seconds: int) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from support.clients import props

    return props(PacketTypes.CONNECT, SessionExpiryInterval=seconds)

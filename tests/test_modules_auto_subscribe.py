"""Auto-subscribe (``[modules.auto_subscribe]``, mqttd/modules/auto_subscribe.py) against a
real daemon with paho and mosquitto clients: placeholders, options (QoS, No Local, Retain
As Published, Retain Handling), retained messages at connect, the zone's mountpoint and
maximum QoS, unsafe client ids skipped, and run-time unload."""

from __future__ import annotations

from support import uid
from support.clients import Clients, mosquitto_pub
from support.ctlrun import ctl_json, ok
from support.process import BrokerProcess, broker_fixture

pytest_plugins = ["support.fixtures"]

CONFIG = """
[modules.auto_subscribe]
enable = true

[[modules.auto_subscribe.topics]]
topic = "cmd/${clientid}"
qos = 2
no_local = true

[[modules.auto_subscribe.topics]]
topic = "news/#"
qos = 1
retain_as_published = true
retain_handling = 1

[[modules.auto_subscribe.topics]]
topic = "users/${username}/inbox"
qos = 1

[zones.mounted]
mountpoint = "tenant/"
max_qos_allowed = 1

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.mounted]
bind = "127.0.0.1"
port = 0
zone = "mounted"
"""


broker = broker_fixture(CONFIG)


def _topics(broker: BrokerProcess, cid: str) -> dict[str, int]:
    return {s["topic"]: s["qos"] for s in ctl_json(broker, "subscriptions", "show", cid)}


def test_subscribed_at_connect_with_options(clients: Clients, broker: BrokerProcess) -> None:
    cid = uid("as-")
    me = clients(cid, version=5, username="carol")
    assert _topics(broker, cid) == {f"cmd/{cid}": 2, "news/#": 1, "users/carol/inbox": 1}
    other = clients(version=5)
    other.publish(f"cmd/{cid}", b"do it", 2)
    msg = me.expect_message()
    assert (msg.topic, msg.payload, msg.qos) == (f"cmd/{cid}", b"do it", 2)
    other.publish("users/carol/inbox", b"mail", 1)
    assert me.expect_message().payload == b"mail"
    # No Local: its own message to cmd/<id> does not come back; the sentinel does.
    me.publish(f"cmd/{cid}", b"own", 1)
    other.publish(f"cmd/{cid}", b"sentinel", 1)
    assert me.expect_message().payload == b"sentinel"
    me.assert_no_message()


def test_retained_messages_at_connect_and_retain_as_published(clients: Clients,
                                                              broker: BrokerProcess) -> None:
    u = uid()
    mosquitto_pub(broker, "-t", f"news/{u}", "-m", "kept", "-r", "-q", "1")
    me = clients(version=5)
    msg = me.expect_message()
    assert (msg.topic, msg.payload, msg.retain) == (f"news/{u}", b"kept", True)
    clients(version=4).publish(f"news/{u}/live", b"live", 1, retain=True)
    live = me.expect_message()
    assert (live.payload, live.retain) == (b"live", True)  # retain_as_published
    ok(broker, "retained", "clean", f"news/{u}")
    ok(broker, "retained", "clean", f"news/{u}/live")


def test_unsafe_or_missing_placeholder_values_are_skipped(clients: Clients,
                                                          broker: BrokerProcess) -> None:
    cid = f"a/{uid()}"  # a "/" would reach into another client's cmd/ tree
    clients(cid, version=5)
    assert _topics(broker, cid) == {"news/#": 1}  # no user name: no users/.../inbox either
    wild = f"{uid()}+"
    clients(wild, version=4, username="x#")
    assert _topics(broker, wild) == {"news/#": 1}
    row = next(m for m in ctl_json(broker, "modules", "list")
               if m["name"] == "auto_subscribe")
    assert row["skipped"] >= 4


def test_mountpoint_and_zone_max_qos(clients: Clients, broker: BrokerProcess) -> None:
    cid = uid("mnt-")
    me = clients(cid, version=5, port=broker.ports["mounted"])
    assert _topics(broker, cid) == {f"tenant/cmd/{cid}": 1, "tenant/news/#": 1}
    other = clients(version=5, port=broker.ports["mounted"])
    other.publish(f"cmd/{cid}", b"mounted", 1)
    msg = me.expect_message()
    assert (msg.topic, msg.qos) == (f"cmd/{cid}", 1)


def test_unload_and_load(clients: Clients, broker: BrokerProcess) -> None:
    ok(broker, "modules", "unload", "auto_subscribe")
    try:
        cid = uid("off-")
        clients(cid, version=5)
        assert _topics(broker, cid) == {}
    finally:
        ok(broker, "modules", "load", "auto_subscribe")
    cid = uid("on-")
    clients(cid, version=3)
    assert f"cmd/{cid}" in _topics(broker, cid)

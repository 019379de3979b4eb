"""Delayed publish (``[modules.delayed]``, mqttd/modules/delayed.py) against a real daemon
with paho and mosquitto clients: delivery after the delay, refusals with their reason codes
(never delivered to ``$delayed/...`` subscribers), the bound, authorization of the real
topic, ``mqttd ctl delayed list|del`` and ``modules load|unload``."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from support import builder as B, uid
from support.clients import Client, Clients, MosquittoSub, mosquitto_pub, props
from support.ctlrun import ctl, ctl_json, ok
from support.httpapi import HttpApi
from support.process import BrokerProcess, broker_fixture, checked_broker, run_mqttd

from mqttd.http.api import PREFIX
from mqttd.mqtt.packets import Pubrec

pytest_plugins = ["support.fixtures"]

TOPIC_NAME_INVALID = 0x90
QUOTA_EXCEEDED = 0x97
NOT_AUTHORIZED = 0x87
NO_MATCHING_SUBSCRIBERS = 0x10

CONFIG = """
[modules.delayed]
enable = true
max_delayed_messages = 3
"""


broker = broker_fixture(CONFIG)


def _clear(broker: BrokerProcess) -> None:
    for row in ctl_json(broker, "delayed", "list"):
        ok(broker, "delayed", "del", str(row["id"]))


def test_delivered_to_the_topic_after_the_delay(clients: Clients, broker: BrokerProcess
                                                ) -> None:
    u = uid()
    sub = clients(version=5)
    assert sub.subscribe([(f"d/{u}", 2), ("$delayed/#", 2)]) == [2, 2]
    pub = clients(version=5)
    # Accepted: nobody received it yet (EMQX answers the same).
    assert pub.publish(f"$delayed/1/d/{u}", b"later", 1) in (0, NO_MATCHING_SUBSCRIBERS)
    msg = sub.expect_message()
    assert (msg.topic, msg.payload, msg.qos) == (f"d/{u}", b"later", 1)
    # The $delayed/ form itself reached nobody: the next message is the sentinel.
    pub.publish(f"d/{u}", b"sentinel", 1)
    assert sub.expect_message().payload == b"sentinel"
    sub.assert_no_message()


def test_zero_seconds_and_qos2_with_mosquitto_clients(broker: BrokerProcess) -> None:
    u = uid()
    sub = MosquittoSub(broker, "-t", f"m/{u}", "-q", "2")
    try:
        sub.wait_subscribed()
        mosquitto_pub(broker, "-t", f"$delayed/0/m/{u}", "-m", "now", "-q", "2")
        assert sub.message() == (f"m/{u}", 2, 0, "now")
    finally:
        sub.stop()


@pytest.mark.parametrize("topic", [
    "$delayed/abc/t", "$delayed/4294968/t", "$delayed/-1/t", "$delayed/1.5/t",
    "$delayed/10", "$delayed/10/", "$delayed//t", "$delayed/1/$SYS/x",
    "$delayed/1/$delayed/1/t", "$delayed/ 1/t",
])
def test_invalid_delayed_topic_is_refused_with_0x90(topic: str, clients: Clients,
                                                    raws: Any, broker: BrokerProcess) -> None:
    watcher = clients(version=5)
    assert watcher.subscribe([("$delayed/#", 1), (f"s/{topic}", 1)]) == [1, 1]
    pub = clients(version=5)
    assert pub.publish(topic, b"bad", 1) == TOPIC_NAME_INVALID
    pub.publish(topic, b"bad", 0)
    # QoS 2: PUBREC 0x90 ends the flow (paho would answer it with a PUBREL anyway).
    raw = raws(broker, 5)
    raw.connect(uid("raw-"))
    raw.send(B.publish(topic, b"bad", qos=2, packet_id=7, properties=B.EMPTY_PROPS))
    assert raw.expect(Pubrec) == Pubrec(7, TOPIC_NAME_INVALID)
    old = clients(version=4)  # 3.1.1 cannot be told: acknowledged, and dropped
    assert old.publish(topic, b"bad", 1) == 0
    pub.publish(f"s/{topic}", b"sentinel", 1)
    assert watcher.expect_message().payload == b"sentinel"
    watcher.assert_no_message()
    assert ctl_json(broker, "delayed", "list") == [] or all(
        r["topic"] != topic for r in ctl_json(broker, "delayed", "list"))


def test_the_largest_delay_is_accepted_listed_and_deleted(clients: Clients,
                                                          broker: BrokerProcess) -> None:
    _clear(broker)
    u = uid()
    pub = clients(u, version=5)
    assert pub.publish(f"$delayed/4294967/far/{u}", b"x", 1) in (0, NO_MATCHING_SUBSCRIBERS)
    rows = ctl_json(broker, "delayed", "list")
    assert [(r["topic"], r["qos"], r["from"], r["delay"]) for r in rows] == [
        (f"far/{u}", 1, u, 4294967)]
    human = ok(broker, "delayed", "list")
    assert f"far/{u}" in human and "4294967s" in human and "1 delayed message" in human
    entry = str(rows[0]["id"])
    assert ctl_json(broker, "delayed", "del", entry) == {"id": int(entry), "deleted": True}
    assert ctl_json(broker, "delayed", "list") == []
    r = ctl(broker, "delayed", "del", entry)
    assert r.code == 1 and "not found" in r.err, r
    r = ctl(broker, "delayed", "del", "nope")
    assert r.code == 2 and "is a number" in r.err, r


def test_max_delayed_messages_refuses_with_0x97(clients: Clients, broker: BrokerProcess
                                                ) -> None:
    _clear(broker)
    u = uid()
    pub = clients(version=5)
    for i in range(3):
        assert pub.publish(f"$delayed/600/q/{u}", str(i), 1) in (0, NO_MATCHING_SUBSCRIBERS)
    assert pub.publish(f"$delayed/600/q/{u}", b"over", 1) == QUOTA_EXCEEDED
    assert len(ctl_json(broker, "delayed", "list")) == 3
    row = next(m for m in ctl_json(broker, "modules", "list") if m["name"] == "delayed")
    assert row["loaded"] and row["pending"] == 3 and row["refused_quota_exceeded"] >= 1
    _clear(broker)
    assert pub.publish(f"$delayed/600/q/{u}", b"room", 1) in (0, NO_MATCHING_SUBSCRIBERS)
    _clear(broker)


def test_unload_and_load_at_run_time(clients: Clients, broker: BrokerProcess) -> None:
    _clear(broker)
    u = uid()
    pub = clients(version=5)
    assert pub.publish(f"$delayed/600/p/{u}", b"pending", 1) in (0, NO_MATCHING_SUBSCRIBERS)
    assert ctl_json(broker, "modules", "unload", "delayed") == {"name": "delayed",
                                                                 "unloaded": True}
    try:
        # The store is on: the pending message stays there for the next load.
        assert "1 pending delayed messages stay in the store" in broker.log()
        row = next(m for m in ctl_json(broker, "modules", "list") if m["name"] == "delayed")
        assert (row["loaded"], row["enabled"]) == (False, True)
        r = ctl(broker, "delayed", "list")
        assert r.code == 1 and "not loaded" in r.err, r
        r = ctl(broker, "modules", "unload", "delayed")
        assert r.code == 1 and "not_loaded" in r.err, r
        # Off: $delayed/... is an ordinary topic again.
        sub = clients(version=5)
        assert sub.subscribe("$delayed/#", 1) == [1]
        assert pub.publish(f"$delayed/1/p/{u}", b"plain", 1) == 0
        assert sub.expect_message().topic == f"$delayed/1/p/{u}"
    finally:
        assert "loaded successfully" in ok(broker, "modules", "load", "delayed")
    assert [(r["topic"], r["delay"]) for r in ctl_json(broker, "delayed", "list")] == [
        (f"p/{u}", 600)]
    _clear(broker)
    r = ctl(broker, "modules", "load", "delayed")
    assert r.code == 1 and "already loaded" in r.err, r
    r = ctl(broker, "modules", "load", "nosuch")
    assert r.code == 1 and "no module called 'nosuch'" in r.err, r
    sub2 = clients(version=5)
    assert sub2.subscribe(f"p/{u}", 1) == [1]
    pub.publish(f"$delayed/0/p/{u}", b"again", 1)
    assert sub2.expect_message().payload == b"again"


def test_the_real_topic_must_be_authorized(tmp_path: Path) -> None:
    """$delayed/ cannot carry a message where its sender may not publish."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite open/#\ntopic write $delayed/#\n")
    with checked_broker(f'{CONFIG}\n[authz]\nacl_file = "{acl}"\n') as b:
        made = Clients(b)
        try:
            u = uid()
            sub = made(version=5)
            assert sub.subscribe(f"open/{u}", 1) == [1]
            pub = made(version=5)
            assert pub.publish(f"$delayed/0/closed/{u}", b"no", 1) == NOT_AUTHORIZED
            assert pub.publish(f"$delayed/0/open/{u}", b"yes", 1) in (
                0, NO_MATCHING_SUBSCRIBERS)
            assert sub.expect_message().payload == b"yes"
            # A will's real topic likewise (checked when it is sent, its client gone).
            assert sub.subscribe(f"closed/{u}", 1) == [0x87]
            for where in ("closed", "open"):
                left = Client(b, f"will-{where}-{u}", version=5, will={
                    "topic": f"$delayed/0/{where}/{u}", "payload": where, "qos": 1})
                left.connect()
                left.drop()
                left.close()
            assert sub.expect_message().payload == b"open"
            assert f"will of will-closed-{u} to $delayed/0/closed/{u} refused (0x87)" in b.log()
            sub.assert_no_message()
        finally:
            made.close_all()


HTTP_CONFIG = CONFIG + """
[http]
enabled = true
port = 0

[zones.mounted]
mountpoint = "tenant/"

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.mounted]
bind = "127.0.0.1"
port = 0
zone = "mounted"
"""


def test_http_api_publish_and_wills_are_delayed_too() -> None:
    """A ``$delayed/`` message published with the HTTP API's publish or left as a will is
    delayed like a client's PUBLISH (never delivered to ``$delayed/...`` subscribers); a bad
    one is refused over HTTP with the reason; with the module unloaded, ``$delayed/...`` is
    an ordinary topic for them too."""
    with checked_broker(HTTP_CONFIG) as b:
        made = Clients(b)
        try:
            api = HttpApi(b, str(ctl_json(b, "apikey", "add", "delayed")["key"]))
            u = uid()
            watcher = made(version=5)
            assert watcher.subscribe([(f"h/{u}/#", 1), ("$delayed/#", 1)]) == [1, 1]
            # Through the API: pending (listed, from nobody), then published when due.
            data = api.ok("POST", PREFIX + "/publish",
                          {"topic": f"$delayed/600/h/{u}/later", "payload": "x", "qos": 1})
            assert (data["taken"], data["delivered"]) == (True, 0), data
            assert [(r["topic"], r["delay"], r["from"]) for r in
                    ctl_json(b, "delayed", "list")] == [(f"h/{u}/later", 600, None)]
            _clear(b)
            api.ok("POST", PREFIX + "/publish",
                   {"topic": f"$delayed/0/h/{u}/api", "payload": "from api", "qos": 1})
            msg = watcher.expect_message()
            assert (msg.topic, msg.payload, msg.qos) == (f"h/{u}/api", b"from api", 1)
            for bad in ("$delayed/abc/t", "$delayed/4294968/t", "$delayed/1/$SYS/x"):
                r = api.call("POST", PREFIX + "/publish", {"topic": bad, "payload": "no"})
                assert r.status == 400 and b"0x90" in r.body, (bad, r.status, r.body)
            # A will, sent at an abnormal disconnect: delayed (a pending one is listed with
            # its client), then published to its real topic.
            for delay, payload in ((600, b"pending will"), (0, b"will")):
                left = Client(b, f"will-{delay}-{u}", version=5, will={
                    "topic": f"$delayed/{delay}/h/{u}/will", "payload": payload, "qos": 1})
                left.connect()
                left.drop()
                left.close()
            msg = watcher.expect_message()
            assert (msg.topic, msg.payload) == (f"h/{u}/will", b"will")
            assert [(r["topic"], r["delay"], r["from"]) for r in
                    ctl_json(b, "delayed", "list")] == [(f"h/{u}/will", 600, f"will-600-{u}")]
            _clear(b)
            # A will of a client in a zone with a mountpoint: delayed under the mountpoint.
            assert watcher.subscribe(f"tenant/h/{u}/#", 1) == [1]
            left = Client(b, f"will-mounted-{u}", version=5, port=b.ports["mounted"], will={
                "topic": f"$delayed/0/h/{u}/mounted", "payload": b"mounted", "qos": 1})
            left.connect()
            left.drop()
            left.close()
            msg = watcher.expect_message()
            assert (msg.topic, msg.payload) == (f"tenant/h/{u}/mounted", b"mounted")
            # Unloaded: an ordinary topic, for the API as for a client.
            ok(b, "modules", "unload", "delayed")
            api.ok("POST", PREFIX + "/publish",
                   {"topic": f"$delayed/0/h/{u}/plain", "payload": "plain", "qos": 1})
            msg = watcher.expect_message()
            assert (msg.topic, msg.payload) == (f"$delayed/0/h/{u}/plain", b"plain")
            watcher.assert_no_message()
        finally:
            made.close_all()


def test_without_the_store_unload_drops_pending_messages() -> None:
    with checked_broker(CONFIG + '\n[store]\ndurability = "off"\n') as b:
        made = Clients(b)
        try:
            pub = made(version=5)
            assert pub.publish("$delayed/600/t", b"x", 1) in (0, NO_MATCHING_SUBSCRIBERS)
            ok(b, "modules", "unload", "delayed")
            assert "1 pending delayed messages dropped" in b.log()
            ok(b, "modules", "load", "delayed")
            assert ctl_json(b, "delayed", "list") == []
        finally:
            made.close_all()


KILL_CONFIG = "[modules.delayed]\nenable = true\n"


def _next_broker(previous: BrokerProcess) -> BrokerProcess:
    """A broker on ``previous``'s data directory (``previous`` has stopped)."""
    assert previous.proc.poll() is not None
    b = BrokerProcess(KILL_CONFIG, extra_args=["--data-dir", str(previous.data_dir)])
    b.data_dir = previous.data_dir
    return b


def test_pending_delayed_messages_survive_kill_9(tmp_path: Path) -> None:
    """QoS 1/2 delayed messages PUBACKed/PUBRECed, then kill -9 at once: after the restart
    they are pending with the same publication time, an overdue one is published at once,
    the others when due (to a persistent session, which gets them when it resumes); one
    published or deleted is not stored any more (kill -9 again: not published twice)."""
    u = uid()
    brokers = [BrokerProcess(KILL_CONFIG)]
    clients: list[Client] = []

    def client(cid: str, **kwargs: object) -> Client:
        c = Client(brokers[-1], cid, **kwargs)  # type: ignore[arg-type]
        clients.append(c)
        c.connect()
        return c

    session = props(PacketTypes.CONNECT, SessionExpiryInterval=3600)
    try:
        sub = client(f"sub-{u}", version=5, clean=False, properties=session)
        assert sub.subscribe(f"r/{u}", 2) == [2]
        sub.disconnect()
        pub = client(f"pub-{u}", version=5)
        for delay, payload, qos in ((1, b"overdue", 1), (4, b"soon", 2), (1000, b"later", 1),
                                    (1000, b"deleted", 1)):
            assert pub.publish(f"$delayed/{delay}/r/{u}", payload, qos) in (
                0, NO_MATCHING_SUBSCRIBERS)
        rows = ctl_json(brokers[-1], "delayed", "list")
        assert len(rows) == 4
        gone = max(rows, key=lambda r: r["id"])  # the last one published: "deleted"
        assert ctl_json(brokers[-1], "delayed", "del", str(gone["id"]))["deleted"]
        brokers[-1].stop(signal.SIGKILL)
        time.sleep(1.2)  # "overdue" is due while mqttd is down
        brokers.append(_next_broker(brokers[-1]))
        log = brokers[-1].log()
        assert "pending delayed messages restored from the store" in log, log
        after = ctl_json(brokers[-1], "delayed", "list")
        by_id = {r["id"]: r for r in after}
        assert gone["id"] not in by_id
        later = [r for r in rows if r["delay"] == 1000 and r["id"] != gone["id"]]
        assert len(later) == 1
        # Due at the same time as before the crash: the delay was not restarted.
        assert by_id[later[0]["id"]]["publish_at"] == later[0]["publish_at"]
        assert by_id[later[0]["id"]]["from"] == f"pub-{u}"
        assert 990 <= by_id[later[0]["id"]]["remaining"] <= 1000
        assert all(r["delay"] in (4, 1000) for r in after)  # "overdue" was published
        sub = client(f"sub-{u}", version=5, clean=False, properties=session)
        got = sorted((m.payload, m.qos) for m in sub.expect_messages(2))
        assert got == [(b"overdue", 1), (b"soon", 2)]
        sub.assert_no_message()
        sub.disconnect()
        assert [r["delay"] for r in ctl_json(brokers[-1], "delayed", "list")] == [1000]
        # Again: what was published is not stored any more.
        brokers[-1].stop(signal.SIGKILL)
        brokers.append(_next_broker(brokers[-1]))
        assert [(r["id"], r["publish_at"]) for r in ctl_json(brokers[-1], "delayed", "list")
                ] == [(later[0]["id"], later[0]["publish_at"])]
        sub = client(f"sub-{u}", version=5, clean=False, properties=session)
        sub.assert_no_message()
        ok(brokers[-1], "delayed", "del", str(later[0]["id"]))
    finally:
        for c in clients:
            c.close()
        last = brokers[-1]
        code = last.stop()
        log = last.log()
        for b in brokers:
            b.cleanup()
    assert code == 0, log
    assert "Traceback" not in log and " ERROR " not in log, log


def test_config_show_lists_modules_and_load_takes_reloaded_settings() -> None:
    """`mqttd config show` lists [modules.*]; after `ctl conf reload` a module loaded again
    (`modules unload` + `modules load`) runs with the file's new settings."""
    with checked_broker(CONFIG) as b:
        shown = {r["key"]: r for r in json.loads(run_mqttd(
            "config", "show", "-c", str(b.config_path), "--json").stdout)}
        assert shown["modules.delayed.enable"] == {
            "key": "modules.delayed.enable", "value": True, "source": "file"}
        assert shown["modules.delayed.max_delayed_messages"]["value"] == 3
        assert shown["modules.rewrite.rules"] == {
            "key": "modules.rewrite.rules", "value": [], "source": "default"}
        b.config_path.write_text(b.config_path.read_text().replace(
            "max_delayed_messages = 3", "max_delayed_messages = 1"))
        data = ctl_json(b, "conf", "reload")
        assert [c["key"] for c in data["applied"]] == ["modules.delayed"], data
        assert not [r for r in data["restart"] if r["key"].startswith("modules")], data

        def row() -> dict[str, Any]:
            return next(m for m in ctl_json(b, "modules", "list") if m["name"] == "delayed")

        assert row()["max_delayed_messages"] == 3  # loaded: keeps what it was loaded with
        ok(b, "modules", "unload", "delayed")
        ok(b, "modules", "load", "delayed")
        assert row()["max_delayed_messages"] == 1
        made = Clients(b)
        try:
            pub = made(version=5)
            assert pub.publish("$delayed/600/r", b"1", 1) in (0, NO_MATCHING_SUBSCRIBERS)
            assert pub.publish("$delayed/600/r", b"2", 1) == QUOTA_EXCEEDED
        finally:
            made.close_all()
            _clear(b)

"""``mqttd ctl store status`` and ``mqttd ctl store compact`` against real daemons
(``mqttd start`` in a subprocess, its store in its own data directory) with real clients.

The commands run the CLI in this process (``mqttd.cli.ctl.main``, as tests/test_ctl.py
does). Row counts are read after the clients' acknowledgements: SUBACK and PUBACK are
sent only once what they acknowledge is committed, and the store answers ``status``
after the writes handed over before it, so no wait is needed between them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from support import WAIT, uid
from support.clients import Client, Clients, props
from support.ctlrun import ctl
from support.process import BrokerProcess, broker_fixture

pytest_plugins = ["support.fixtures"]

broker = broker_fixture()
off_broker = broker_fixture('[store]\ndurability = "off"\n')

ROW_TABLES = {"sessions", "subscriptions", "messages", "queue", "awaiting_rel", "retained",
              "users", "banned", "kv"}
STATUS_KEYS = {"path", "size", "rows", "durability", "schema", "page_size", "free_pages",
               "commits", "ops_written", "ops_cancelled", "pending", "commit_p50_ms",
               "commit_p99_ms", "full", "last_error", "last_compaction", "log_bytes",
               "applications", "ops_applied"}


def ok(b: BrokerProcess, *args: str) -> str:
    """stdout of a command that must succeed and say nothing on stderr."""
    r = ctl(b, *args)
    assert r.code == 0, r
    assert r.err == "", r
    return r.out


def status(b: BrokerProcess) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(b, "--json", "store", "status"))
    return data


def kv(text: str) -> dict[str, str]:
    """``key : value`` lines as a dict."""
    pairs = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" : ")
        assert sep, f"not a key : value line: {line!r}"
        pairs[key.strip()] = value.strip()
    return pairs


def persistent(clients: Clients, client_id: str) -> Client:
    """A connected MQTT 5 client whose session outlives the connection (expiry 1 h)."""
    return clients(client_id, version=5, clean=False,
                   properties=props(PacketTypes.CONNECT, SessionExpiryInterval=3600))


def queue_offline(b: BrokerProcess, clients: Clients, n: int, payload: bytes) -> str:
    """A persistent session subscribed to ``<id>/#`` QoS 1, disconnected, with ``n`` QoS 1
    messages queued for it (each PUBACKed, so committed); its client id."""
    sub_id = uid("sink-")
    sub = persistent(clients, sub_id)
    assert sub.subscribe(f"{sub_id}/#", 1) == [1]
    sub.disconnect()
    pub = clients(version=5)
    for i in range(n):
        assert pub.publish(f"{sub_id}/{i}", payload, 1) == 0
    pub.disconnect()
    return sub_id


# --- status ---------------------------------------------------------------------------------

def test_status_on_a_fresh_broker(broker: BrokerProcess) -> None:
    data = status(broker)
    assert set(data) == STATUS_KEYS
    assert os.path.realpath(data["path"]) == os.path.realpath(broker.data_dir / "mqttd.db")
    assert os.path.exists(data["path"])
    assert data["size"] >= os.path.getsize(data["path"]) > 0
    assert data["durability"] == "process"
    assert data["rows"] == dict.fromkeys(ROW_TABLES, 0)
    assert data["full"] is False
    assert data["last_error"] == ""
    assert data["last_compaction"] is None
    assert data["schema"] == 1
    assert data["page_size"] > 0


def test_status_counts_a_persistent_session_and_its_offline_queue(
        broker: BrokerProcess, clients: Clients) -> None:
    before = status(broker)["rows"]
    n = 25
    queue_offline(broker, clients, n, b"queued")
    data = status(broker)
    rows = data["rows"]
    assert rows["sessions"] - before["sessions"] == 1
    assert rows["subscriptions"] - before["subscriptions"] == 1
    assert rows["queue"] - before["queue"] == n
    # Each message is held by one session only: kept inline in its queue row, no msgs row.
    assert rows["messages"] == before["messages"]
    assert rows["awaiting_rel"] == before["awaiting_rel"]
    assert data["commits"] > 0
    assert data["ops_written"] >= 2 + n
    assert data["commit_p99_ms"] >= data["commit_p50_ms"] > 0


def test_status_counts_retained_messages(broker: BrokerProcess, clients: Clients) -> None:
    before = status(broker)["rows"]["retained"]
    topic = uid("retained-")
    pub = clients(version=5)
    no_subscribers = 0x10
    assert pub.publish(topic, b"on", 1, retain=True) == no_subscribers
    assert status(broker)["rows"]["retained"] == before + 1
    assert pub.publish(topic, b"", 1, retain=True) == no_subscribers  # deletes it
    assert status(broker)["rows"]["retained"] == before


def test_status_json_shape(broker: BrokerProcess) -> None:
    data = status(broker)
    assert set(data) == STATUS_KEYS
    assert isinstance(data["path"], str) and isinstance(data["size"], int)
    assert set(data["rows"]) == ROW_TABLES
    assert all(isinstance(v, int) and v >= 0 for v in data["rows"].values())
    for key in ("commits", "ops_written", "ops_cancelled", "pending", "free_pages"):
        assert isinstance(data[key], int) and data[key] >= 0, key
    for key in ("commit_p50_ms", "commit_p99_ms"):
        assert isinstance(data[key], (int, float)), key
    assert isinstance(data["full"], bool)
    assert isinstance(data["last_error"], str)


def test_status_human_output(broker: BrokerProcess, clients: Clients) -> None:
    queue_offline(broker, clients, 3, b"x")
    data = status(broker)
    pairs = kv(ok(broker, "store", "status"))
    assert pairs["file"] == data["path"]
    assert re.fullmatch(r"[0-9.]+ (KiB|MiB|GiB) \([0-9]+ bytes\)", pairs["size"]), pairs
    assert pairs["durability"] == "process"
    assert pairs["state"] == "ok"
    for table in ROW_TABLES:
        assert pairs[f"rows/{table}"] == str(data["rows"][table])
    assert re.fullmatch(r"[0-9.e+-]+ ms", pairs["commit_p50"]), pairs
    assert re.fullmatch(r"[0-9.e+-]+ ms", pairs["commit_p99"]), pairs
    assert pairs["schema"] == "1"
    if data["last_compaction"] is None:
        assert pairs["last_compaction"] == "never"


# --- compact --------------------------------------------------------------------------------

def test_compact_after_deleting(broker: BrokerProcess, clients: Clients) -> None:
    sub_id = queue_offline(broker, clients, 200, os.urandom(2000))
    grown = status(broker)
    assert grown["size"] > 200 * 2000
    assert ok(broker, "sessions", "clean", sub_id) == "ok\n"
    # The session's rows are gone (committed before the status answers); the file keeps
    # their pages until it is compacted.
    cleaned = status(broker)
    assert cleaned["rows"]["queue"] == grown["rows"]["queue"] - 200
    assert cleaned["rows"]["messages"] == grown["rows"]["messages"]  # they were inline
    assert cleaned["rows"]["sessions"] == grown["rows"]["sessions"] - 1

    result = json.loads(ok(broker, "--json", "store", "compact"))
    assert set(result) == {"path", "before", "after", "seconds"}
    assert result["path"] == cleaned["path"]
    assert result["before"] > 200 * 2000
    assert 0 < result["after"] <= result["before"]
    assert result["after"] < 200 * 2000  # the deleted messages' pages were given back
    assert 0 <= result["seconds"] < WAIT

    after = status(broker)
    assert after["size"] == result["after"]
    assert after["rows"] == cleaned["rows"]
    last = after["last_compaction"]
    assert last["before"] == result["before"] and last["after"] == result["after"]
    at = time.mktime(time.strptime(last["at"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(at - time.time()) < 60
    assert re.search(r"store \S+mqttd\.db compacted by mqttd ctl", broker.log())

    # human output: before -> after and the seconds; the status shows when
    text = ok(broker, "store", "compact")
    assert re.fullmatch(rf"Compacted {re.escape(cleaned['path'])}: [0-9.]+ (B|KiB|MiB) -> "
                        r"[0-9.]+ (B|KiB|MiB) in [0-9]+\.[0-9]{3} s\n", text), text
    line = kv(ok(broker, "store", "status"))["last_compaction"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(.+ -> .+ in [0-9.]+ s\)", line), line


def test_the_store_keeps_working_after_compaction(broker: BrokerProcess,
                                                  clients: Clients) -> None:
    ok(broker, "store", "compact")
    sub_id = queue_offline(broker, clients, 5, b"after")
    sub = persistent(clients, sub_id)
    assert sub.session_present
    got = sorted(m.payload for m in sub.expect_messages(5))
    assert got == [b"after"] * 5


# --- durability off -------------------------------------------------------------------------

def test_status_with_durability_off(off_broker: BrokerProcess) -> None:
    data = json.loads(ok(off_broker, "--json", "store", "status"))
    assert data["durability"] == "off"
    assert data["path"] is None
    assert "memory" in data["note"]
    pairs = kv(ok(off_broker, "store", "status"))
    assert pairs["durability"] == "off"
    assert pairs["file"] == "none"
    assert not list(off_broker.data_dir.glob("*.db*"))


def test_compact_with_durability_off_fails(off_broker: BrokerProcess) -> None:
    r = ctl(off_broker, "store", "compact")
    assert (r.code, r.out) == (1, ""), r
    assert r.err == "mqttd ctl: durability is off: there is no store to compact\n"
    r = ctl(off_broker, "--json", "store", "compact")  # the error as a JSON object on stdout
    assert (r.code, r.err) == (1, ""), r
    assert json.loads(r.out) == {"error": {"code": 1, "reason": "durability_off", "message":
                                           "durability is off: there is no store to compact"}}


# --- a full store ---------------------------------------------------------------------------

def test_status_and_compact_while_the_store_is_full() -> None:
    """Past ``max_size`` the writer retries the batch that does not fit: status answers at
    once from what the loop knows (full, the error), compact refuses."""
    b = BrokerProcess("[store]\nmax_size = 200000\n")
    made = Clients(b)
    try:
        sub_id = uid("sink-")
        sub = persistent(made, sub_id)
        assert sub.subscribe(f"{sub_id}/#", 1) == [1]
        sub.disconnect()
        pub = made(version=5)
        payload = os.urandom(1000)
        for i in range(400):  # 400 kB: more than the store may hold
            pub.publish(f"{sub_id}/{i}", payload, 1, wait=False)
        deadline = time.monotonic() + WAIT
        while not (data := status(b))["full"]:
            assert time.monotonic() < deadline, data
            time.sleep(0.05)
        data = status(b)  # asked while full (the one before may have become full meanwhile)
        assert set(data) == STATUS_KEYS | {"note"}
        assert "full" in data["last_error"] and "mqttd.db" in data["last_error"]
        assert data["rows"] is None
        assert data["size"] > 0

        start = time.monotonic()
        pairs = kv(ok(b, "store", "status"))
        assert time.monotonic() - start < WAIT / 2
        assert pairs["state"].startswith("FULL: writes fail and are retried: ")
        assert data["last_error"] in pairs["state"]
        assert pairs["rows"] == "not counted"

        r = ctl(b, "store", "compact")
        assert r.code == 1, r
        assert r.err.startswith("mqttd ctl: cannot compact while writes to the store fail (")
        assert "ALARM store" in b.log()
    finally:
        made.close_all()
        b.stop(signal.SIGKILL)  # a clean stop would wait for the write that cannot be done
        b.cleanup()

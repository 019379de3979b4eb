"""The REST API (``[http]``) against a real daemon with real clients: every endpoint's answer
equals ``mqttd ctl --json``'s, authentication (API keys, basic with the built-in users,
anonymous only when configured), every kind of bad input, paging, and MQTT unaffected by
an HTTP client that stops reading."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import WAIT, uid
from support.clients import Clients, PacketTypes, props
from support.httpapi import HttpApi, ctl, ctl_json, http_port
from support.process import BrokerProcess, broker_fixture, checked_broker

from mqttd.http.api import PREFIX, ROUTES

pytest_plugins = ["support.fixtures"]

CONFIG = """
[http]
enabled = true
port = 0

[listeners.default]
bind = "127.0.0.1"
port = 0

[listeners.spare]
bind = "127.0.0.1"
port = 0
"""

#: Every (method, route path) a test called, to check that none was left out.
CALLED: set[tuple[str, str]] = set()


broker = broker_fixture(CONFIG)


@pytest.fixture(scope="module")
def key(broker: BrokerProcess) -> str:
    data = ctl_json(broker, "apikey", "add", "tests")
    assert set(data) == {"key"}
    return str(data["key"])


@pytest.fixture
def api(broker: BrokerProcess, key: str) -> HttpApi:
    return HttpApi(broker, key)


def q(topic: str) -> str:
    """A topic as one path segment or query value (``/`` and ``#`` percent-encoded)."""
    return urllib.parse.quote(topic, safe="")


def called(method: str, route: str) -> None:
    CALLED.add((method, route))


#: Keys whose values move with the clock between two calls.
CLOCK_KEYS = {"uptime", "uptime_seconds", "datetime", "started_at"}


def stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in CLOCK_KEYS}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def same_as_ctl(http: Callable[[], Any], *args: str) -> Any:
    """The HTTP answer equals ctl's (clock-driven values aside); a counter may move once
    between the two reads (the stats tick, $SYS), so a mismatch is read again, at most
    three times."""
    for _ in range(3):
        got, want = stable(http()), stable(ctl_json_broker(*args))
        if got == want:
            return got
    assert got == want
    return got


_CURRENT: list[BrokerProcess] = []


def ctl_json_broker(*args: str) -> Any:
    return ctl_json(_CURRENT[0], *args)


@pytest.fixture(autouse=True)
def _current(broker: BrokerProcess) -> Iterator[None]:
    _CURRENT[:] = [broker]
    yield


# --- every read equals the ctl's ---------------------------------------------------------------

def test_node_endpoints_equal_ctl(api: HttpApi) -> None:
    for route, args in [("/status", ("status",)), ("/broker", ("broker",)),
                        ("/stats", ("broker", "stats")), ("/metrics", ("broker", "metrics")),
                        ("/listeners", ("listeners", "list")), ("/trace", ("trace", "list")),
                        ("/plugins", ("plugins", "list")), ("/log/level", ("log", "level"))]:
        same_as_ctl(lambda route=route: api.get(PREFIX + route), *args)
        called("GET", route)
    # vm and store: figures that move (CPU, lag, commits); the same keys, groups and files
    vm, vm_ctl = api.get(PREFIX + "/vm"), ctl_json_broker("vm")
    assert {k: set(v) for k, v in vm.items()} == {k: set(v) for k, v in vm_ctl.items()}
    assert vm["process"]["pid"] == vm_ctl["process"]["pid"]
    called("GET", "/vm")
    store, store_ctl = api.get(PREFIX + "/store"), ctl_json_broker("store", "status")
    assert set(store) == set(store_ctl) and store["path"] == store_ctl["path"]
    called("GET", "/store")


def test_clients_sessions_subscriptions_routes_equal_ctl(api: HttpApi, clients: Clients
                                                         ) -> None:
    a = clients(uid("eq-"), username="alice", version=5)
    a.subscribe("eq/+/x", 1)
    a.subscribe("eq/#", 0)
    cid = a.c._client_id.decode()
    pairs: list[tuple[str, str, tuple[str, ...]]] = [
        ("/clients", "/clients", ("clients", "list")),
        (f"/clients/{q(cid)}", "/clients/{clientid}", ("clients", "show", cid)),
        ("/sessions", "/sessions", ("sessions", "list")),
        ("/sessions?kind=transient", "/sessions", ("sessions", "list", "transient")),
        (f"/sessions/{q(cid)}", "/sessions/{clientid}", ("sessions", "show", cid)),
        ("/subscriptions", "/subscriptions", ("subscriptions", "list")),
        (f"/subscriptions?clientid={q(cid)}", "/subscriptions",
         ("subscriptions", "show", cid)),
        (f"/clients/{q(cid)}/subscriptions", "/clients/{clientid}/subscriptions",
         ("subscriptions", "show", cid)),
        ("/routes", "/routes", ("routes", "list")),
        ("/topics", "/topics", ("routes", "list")),
        (f"/routes/{q('eq/1/x')}", "/routes/{topic:.+}", ("routes", "show", "eq/1/x")),
        (f"/routes/{q('eq/#')}", "/routes/{topic:.+}", ("routes", "show", "eq/#")),
    ]
    for path, route, args in pairs:
        got = same_as_ctl(lambda path=path: api.get(PREFIX + path), *args)
        called("GET", route)
        assert got, path
    row = api.get(f"{PREFIX}/clients/{q(cid)}")
    assert row["username"] == "alice" and row["subscriptions"] == 2
    # unknown things: 404 with the ctl's kind of error
    for path in (f"/clients/{q('nobody')}", f"/sessions/{q('nobody')}",
                 f"/routes/{q('no/route')}", f"/clients/{q('nobody')}/subscriptions"):
        r = api.call("GET", PREFIX + path)
        assert r.status == 404 and r.json["code"] == "not_found", (path, r.body)


def test_retained_publish_equal_ctl(api: HttpApi, clients: Clients) -> None:
    sub = clients(uid("rsub-"), version=5)
    topic = f"ret/{uid()}"
    sub.subscribe(topic + "/#", 1)
    # text payload, retained, with properties: the subscriber gets exactly that
    data = api.ok("POST", PREFIX + "/publish", {
        "topic": topic + "/a", "payload": "héllo", "qos": 1, "retain": True,
        "properties": {"user_property": [["k", "v"]], "content_type": "text/plain",
                       "message_expiry_interval": 600, "correlation_data": "c1"}})
    called("POST", "/publish")
    assert data == {"topic": topic + "/a", "qos": 1, "retain": True, "payload_size": 6,
                    "delivered": 1}
    msg = sub.expect_message()
    assert msg.topic == topic + "/a" and msg.payload == "héllo".encode() and msg.qos == 1
    assert msg.properties.UserProperty == [("k", "v")]
    assert msg.properties.ContentType == "text/plain"
    assert msg.properties.CorrelationData == b"c1"
    # base64 payload, not retained
    api.ok("POST", PREFIX + "/publish", {"topic": topic + "/b", "payload_encoding": "base64",
                                         "payload": base64.b64encode(b"\x00\xff").decode()})
    assert sub.expect_message().payload == b"\x00\xff"
    same_as_ctl(lambda: api.get(PREFIX + "/retained"), "retained", "list")
    called("GET", "/retained")
    for t in (topic + "/a", topic + "/#"):
        shown = same_as_ctl(lambda t=t: api.get(f"{PREFIX}/retained/{q(t)}"),
                            "retained", "show", t)
        assert shown[0]["payload"] == "héllo"
    called("GET", "/retained/{topic:.+}")
    r = api.call("GET", f"{PREFIX}/retained/{q(topic + '/none')}")
    assert r.status == 404 and r.json["code"] == "not_found"
    assert api.ok("DELETE", f"{PREFIX}/retained/{q(topic + '/#')}") == {"cleaned": 1}
    called("DELETE", "/retained/{topic:.+}")
    assert api.call("GET", f"{PREFIX}/retained/{q(topic + '/a')}").status == 404
    api.ok("POST", PREFIX + "/publish", {"topic": topic + "/c", "payload": "x",
                                         "retain": True})
    sub.expect_message()
    cleaned = api.ok("DELETE", PREFIX + "/retained")["cleaned"]
    called("DELETE", "/retained")
    assert cleaned >= 1
    assert [r for r in api.get(PREFIX + "/retained") if not r["topic"].startswith("$")] == []


# --- actions ------------------------------------------------------------------------------------

def test_kick_subscribe_unsubscribe_clean(api: HttpApi, clients: Clients) -> None:
    c = clients(uid("act-"), version=5,
                properties=props(PacketTypes.CONNECT, SessionExpiryInterval=300))
    cid = c.c._client_id.decode()
    added = api.ok("POST", f"{PREFIX}/clients/{q(cid)}/subscriptions",
                   {"topic": "act/+", "qos": 1})
    called("POST", "/clients/{clientid}/subscriptions")
    assert added == {"clientid": cid, "topic": "act/+", "qos": 1, "new": True}
    subs = api.get(f"{PREFIX}/clients/{q(cid)}/subscriptions")
    assert [s["topic"] for s in subs] == ["act/+"]
    # the subscription works: a publish through the API reaches the client
    api.ok("POST", PREFIX + "/publish", {"topic": "act/1", "payload": "p"})
    assert c.expect_message().payload == b"p"
    r = api.call("POST", f"{PREFIX}/clients/{q(cid)}/subscriptions",
                 {"topic": "act/#/x", "qos": 0})
    assert r.status == 400 and "act/#/x" in r.json["message"], r.body
    r = api.call("POST", f"{PREFIX}/clients/{q(cid)}/subscriptions", {"topic": "a", "qos": 3})
    assert r.status == 400 and "QoS" in r.json["message"]
    gone = api.ok("DELETE", f"{PREFIX}/clients/{q(cid)}/subscriptions?topic={q('act/+')}")
    called("DELETE", "/clients/{clientid}/subscriptions")
    assert gone == {"clientid": cid, "topic": "act/+", "deleted": True}
    r = api.call("DELETE", f"{PREFIX}/clients/{q(cid)}/subscriptions?topic={q('act/+')}")
    assert r.status == 404
    r = api.call("DELETE", f"{PREFIX}/clients/{q(cid)}/subscriptions")
    assert r.status == 400 and "topic" in r.json["message"]
    # kick: the client is disconnected (MQTT 5: 0x98); its session stays
    assert api.ok("DELETE", f"{PREFIX}/clients/{q(cid)}") == {"clientid": cid,
                                                              "kicked": True}
    called("DELETE", "/clients/{clientid}")
    rc, _ = c.wait_disconnected()
    assert int(rc.value if hasattr(rc, "value") else rc) == 0x98
    assert api.call("DELETE", f"{PREFIX}/clients/{q(cid)}").status == 404
    assert api.get(f"{PREFIX}/sessions/{q(cid)}")["connected"] is False
    assert api.ok("DELETE", f"{PREFIX}/sessions/{q(cid)}") == {"clientid": cid,
                                                               "cleaned": True}
    called("DELETE", "/sessions/{clientid}")
    assert api.call("GET", f"{PREFIX}/sessions/{q(cid)}").status == 404


def test_listeners_stop_restart_reload(api: HttpApi, broker: BrokerProcess,
                                       clients: Clients) -> None:
    spare = broker.ports["spare"]
    stopped = api.ok("POST", PREFIX + "/listeners/spare/stop")
    called("POST", "/listeners/{name}/stop")
    assert stopped == {"name": "spare", "listen_on": f"127.0.0.1:{spare}", "running": False}
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", spare), timeout=WAIT).close()
    r = api.call("POST", PREFIX + "/listeners/spare/stop")
    assert r.status == 409 and r.json["code"] == "not_running"
    started = api.ok("POST", PREFIX + "/listeners/spare/restart")
    called("POST", "/listeners/{name}/restart")
    assert started == {"name": "spare", "listen_on": f"127.0.0.1:{spare}", "running": True}
    clients(uid("spare-"), port=spare)  # it accepts again
    r = api.call("POST", PREFIX + "/listeners/spare/reload")
    called("POST", "/listeners/{name}/reload")
    assert r.status == 409 and r.json["code"] == "not_tls", r.body
    r = api.call("POST", PREFIX + "/listeners/nope/restart")
    assert r.status == 404 and r.json == {"code": "not_found",
                                          "message": "listener 'nope' not found"}


def test_banned(api: HttpApi, clients: Clients) -> None:
    c = clients(uid("ban-"))
    cid = c.c._client_id.decode()
    row = api.ok("POST", PREFIX + "/banned", {"as": "clientid", "who": cid,
                                              "reason": "test", "duration": "1h"})
    called("POST", "/banned")
    assert row["kicked"] == [cid] and row["reason"] == "test"
    c.wait_disconnected()
    same_as_ctl(lambda: api.get(PREFIX + "/banned"), "banned", "list")
    called("GET", "/banned")
    r = api.call("POST", PREFIX + "/banned", {"as": "nose", "who": "x"})
    assert r.status == 400, r.body
    r = api.call("POST", PREFIX + "/banned", {"as": "clientid", "who": "x", "duration": "soon"})
    assert r.status == 400 and "duration" in r.json["message"]
    assert api.ok("DELETE", f"{PREFIX}/banned/clientid/{q(cid)}") == {
        "as": "clientid", "who": cid, "deleted": True}
    called("DELETE", "/banned/{as}/{who}")
    assert api.call("DELETE", f"{PREFIX}/banned/clientid/{q(cid)}").status == 404


def test_users_and_basic_auth(api: HttpApi, broker: BrokerProcess) -> None:
    admin, plain = uid("admin-"), uid("plain-")
    assert api.ok("POST", PREFIX + "/users", {"username": admin, "password": "s3cret",
                                              "is_superuser": True}) == {
        "username": admin, "is_superuser": True}
    called("POST", "/users")
    api.ok("POST", PREFIX + "/users", {"username": plain, "password": "pw"})
    r = api.call("POST", PREFIX + "/users", {"username": plain, "password": "pw"})
    assert r.status == 409 and r.json["code"] == "already_exists"
    same_as_ctl(lambda: api.get(PREFIX + "/users"), "users", "list")
    called("GET", "/users")
    # basic: a superuser may, a plain user is refused (403), a wrong password is 401
    as_admin = HttpApi(broker, basic=(admin, "s3cret"))
    assert as_admin.get(PREFIX + "/status")["node"] == "mqttd@127.0.0.1"
    assert as_admin.get(PREFIX + "/status")["node"] == "mqttd@127.0.0.1"  # cached check
    r = HttpApi(broker, basic=(plain, "pw")).call("GET", PREFIX + "/status")
    assert r.status == 403 and r.json["code"] == "forbidden"
    for who in ((admin, "wrong"), ("nobody", "pw")):
        r = HttpApi(broker, basic=who).call("GET", PREFIX + "/status")
        assert r.status == 401 and r.json["code"] == "bad_credentials"
        assert "Basic" in r.headers["WWW-Authenticate"]
    # a new password: the old one is refused at once (the cached check is not used)
    api.ok("PUT", f"{PREFIX}/users/{q(admin)}", {"password": "n3w"})
    called("PUT", "/users/{username}")
    assert as_admin.call("GET", PREFIX + "/status").status == 401
    assert HttpApi(broker, basic=(admin, "n3w")).call("GET", PREFIX + "/status").status == 200
    for name in (admin, plain):
        assert api.ok("DELETE", f"{PREFIX}/users/{q(name)}") == {"username": name}
    called("DELETE", "/users/{username}")
    assert api.call("DELETE", f"{PREFIX}/users/{q(admin)}").status == 404
    assert "s3cret" not in broker.log() and "n3w" not in broker.log()


def test_log_level(api: HttpApi) -> None:
    assert api.ok("PUT", PREFIX + "/log/level", {"level": "debug"}) == {"level": "debug"}
    called("PUT", "/log/level")
    r = api.call("PUT", PREFIX + "/log/level", {"level": "loud"})
    assert r.status == 400 and "debug" in r.json["message"]


# --- paging and filters ---------------------------------------------------------------------

def test_clients_paging_and_filters(api: HttpApi, broker: BrokerProcess,
                                    clients: Clients) -> None:
    prefix = uid("pg-")
    made = [clients(f"{prefix}-{i:02d}", username="pager" if i % 2 else "other")
            for i in range(23)]
    clients(uid("spare-"), port=broker.ports["spare"], username="pager")
    want = sorted(c.c._client_id.decode() for c in made)
    every = api.get(f"{PREFIX}/clients?clientid_prefix={prefix}")
    assert sorted(r["clientid"] for r in every) == want
    # paged: 5 at a time, following the cursor, gives the same rows in the same order
    pages: list[list[str]] = []
    path = f"{PREFIX}/clients?clientid_prefix={prefix}&limit=5"
    for _ in range(10):
        r = api.call("GET", path)
        assert r.status == 200
        pages.append([row["clientid"] for row in r.json])
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            break
        assert r.headers["Link"].endswith('; rel="next"')
        path = f"{PREFIX}/clients?clientid_prefix={prefix}&limit=5&cursor={cursor}"
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert sum(pages, []) == [r["clientid"] for r in every]
    # a client before the cursor goes away: the next page resumes after the cursor's row
    r = api.call("GET", f"{PREFIX}/clients?clientid_prefix={prefix}&limit=5")
    made[0].disconnect()
    r2 = api.call("GET", f"{PREFIX}/clients?clientid_prefix={prefix}&limit=5&cursor="
                  f"{r.headers['X-Next-Cursor']}")
    assert [x["clientid"] for x in r2.json] == [x["clientid"] for x in every[5:10]]
    # filters
    pager = api.get(f"{PREFIX}/clients?clientid_prefix={prefix}&username=pager")
    assert {x["clientid"] for x in pager} == set(want[1::2])
    on_spare = api.get(f"{PREFIX}/clients?listener=spare&username=pager")
    assert len(on_spare) == 1 and on_spare[0]["listener"] == "spare"
    one = every[3]
    by_peer = api.get(f"{PREFIX}/clients?peer={q(one['peername'])}")
    assert [x["clientid"] for x in by_peer] == [one["clientid"]]
    host = api.get(f"{PREFIX}/clients?peer=127.0.0.1&clientid_prefix={prefix}")
    assert len(host) == 22
    assert api.get(f"{PREFIX}/clients?peer=10.9.9.9") == []


def test_every_listing_pages(api: HttpApi, clients: Clients) -> None:
    """Each listing route takes limit/cursor and pages to the same rows as unpaged."""
    c = clients(uid("lp-"))
    for i in range(7):
        c.subscribe(f"lp/{i}", 0)
        api.ok("POST", PREFIX + "/publish", {"topic": f"lp/r{i}", "payload": "x",
                                             "retain": True})
    for route in [r for r in ROUTES if r.listing and "{" not in r.path]:
        whole = api.get(PREFIX + route.path)
        rows: list[Any] = []
        path = PREFIX + route.path + "?limit=3"
        for _ in range(len(whole) + 2):
            r = api.call("GET", path)
            rows += r.json
            cursor = r.headers.get("X-Next-Cursor")
            if cursor is None:
                break
            path = f"{PREFIX}{route.path}?limit=3&cursor={cursor}"
        assert stable(rows) == stable(whole), route.path
    api.ok("DELETE", PREFIX + "/retained")


# --- authentication ----------------------------------------------------------------------------

def test_api_keys(broker: BrokerProcess, key: str) -> None:
    port = http_port(broker)
    anonymous = HttpApi(broker)
    r = anonymous.call("GET", PREFIX + "/status")
    assert r.status == 401 and r.json["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    for header in ("Bearer nope", "Bearer ", "Token abc", "Basic !!!"):
        r = anonymous.call("GET", PREFIX + "/status", headers={"Authorization": header})
        assert r.status == 401, (header, r.body)
    assert anonymous.call("GET", PREFIX + "/nothing").status == 401  # no hint what exists
    assert anonymous.call("GET", "/metrics").status == 401
    # a second key; both work; deleted, it is refused at once
    second = ctl_json(broker, "apikey", "add", "second")["key"]
    assert second != key and second.startswith("mqttd_")
    assert HttpApi(broker, second).call("GET", PREFIX + "/status").status == 200
    names = [k["name"] for k in ctl_json(broker, "apikey", "list")]
    assert names == ["second", "tests"]
    code, out, err = ctl(broker, "apikey", "add", "second")
    assert code == 1 and "exists" in err
    code, out, err = ctl(broker, "apikey", "add", "bad name!")
    assert code == 2 and "name" in err
    code, out, err = ctl(broker, "apikey", "add", "human")
    assert code == 0 and out.strip().startswith("mqttd_") and "shown only now" in err
    assert ctl_json(broker, "apikey", "del", "second") == {"name": "second", "deleted": True}
    assert HttpApi(broker, second).call("GET", PREFIX + "/status").status == 401
    assert ctl(broker, "apikey", "del", "second")[0] == 1
    # stored hashed, 0600, never logged
    path = broker.data_dir / "apikeys.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stored = path.read_text()
    assert key not in stored and second not in stored and "sha256" in stored
    assert key not in broker.log() and second not in broker.log()
    assert port == HttpApi(broker, key).port


def test_anonymous_only_when_configured(tmp_path: Any) -> None:
    config = "[http]\nenabled = true\nport = 0\nallow_anonymous = true\n"
    with checked_broker(config) as b:
        anonymous = HttpApi(b)
        assert anonymous.get(PREFIX + "/status")["node"] == "mqttd@127.0.0.1"
        assert "allow_anonymous = true" in b.log()
    config = "[http]\nenabled = true\nport = 0\nmetrics_allow_anonymous = true\n"
    with checked_broker(config) as b:
        anonymous = HttpApi(b)
        assert anonymous.call("GET", "/metrics").status == 200
        assert anonymous.call("GET", PREFIX + "/status").status == 401


def test_disabled_by_default_and_bad_config(tmp_path: Any) -> None:
    with checked_broker("") as b:
        assert "http api on" not in b.log()
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nenabled = true\nport = 70000\nbnd = \"x\"\n")
    from support.process import run_mqttd
    r = run_mqttd("config", "check", "-c", str(bad))
    assert r.returncode == 2
    assert "http.port: " in r.stderr and "http.bnd: unknown key (did you mean bind?)" in r.stderr
    assert "Traceback" not in r.stderr


def test_port_in_use_refuses_to_start(tmp_path: Any) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        cfg = tmp_path / "m.toml"
        cfg.write_text(f"[http]\nenabled = true\nport = {port}\n[listeners.default]\n"
                       "bind = \"127.0.0.1\"\nport = 0\n")
        from support.process import run_mqttd
        r = run_mqttd("start", "-c", str(cfg), "--data-dir", str(tmp_path / "d"))
        assert r.returncode != 0
        assert f"http: cannot listen on 127.0.0.1:{port}" in r.stderr + r.stdout
        assert "Traceback" not in r.stderr + r.stdout
    finally:
        taken.close()


# --- bad input -------------------------------------------------------------------------------

def test_bad_input(api: HttpApi, broker: BrokerProcess) -> None:
    pub = PREFIX + "/publish"
    cases: list[tuple[str, str, Any, int, str, str]] = [
        # method, path, raw body, status, code, words in the message
        ("GET", PREFIX + "/nothing", None, 404, "not_found", "GET /api/v1/nothing"),
        ("GET", "/nothing", None, 404, "not_found", "/nothing"),
        ("PATCH", PREFIX + "/status", None, 405, "method_not_allowed", "PATCH"),
        ("POST", pub, b"{", 400, "bad_json", "line 1 column 2"),
        ("POST", pub, b"", 400, "bad_request", "JSON object"),
        ("POST", pub, b"[1]", 400, "bad_request", "not list"),
        ("POST", pub, b"\xff\xfe", 400, "bad_json", "UTF-8"),
        ("POST", pub, b'{"topic": "a", "colour": 1}', 400, "bad_request", "'colour'"),
        ("POST", pub, b'{"payload": "x"}', 400, "bad_request", "'topic'"),
        ("POST", pub, b'{"topic": "a/#"}', 400, "bad_argument", "wildcard"),
        ("POST", pub, b'{"topic": ""}', 400, "bad_argument", "empty topic"),
        ("POST", pub, b'{"topic": "a\\u0000b"}', 400, "bad_argument", "control"),
        ("POST", pub, b'{"topic": "$SYS/x"}', 400, "bad_argument", "$SYS"),
        ("POST", pub, b'{"topic": "a", "qos": 3}', 400, "bad_argument", "qos"),
        ("POST", pub, b'{"topic": "a", "retain": "yes"}', 400, "bad_argument", "retain"),
        ("POST", pub, b'{"topic": "a", "payload": "!", "payload_encoding": "base64"}', 400,
         "bad_argument", "base64"),
        ("POST", pub, b'{"topic": "a", "payload_encoding": "hex"}', 400, "bad_argument",
         "payload_encoding"),
        ("POST", pub, b'{"topic": "a", "properties": {"topic_alias": 1}}', 400,
         "bad_argument", "properties.topic_alias"),
        ("POST", pub, b'{"topic": "a", "properties": {"message_expiry_interval": -1}}', 400,
         "bad_argument", "properties.message_expiry_interval"),
        ("POST", pub, b'{"topic": "a", "properties": {"user_property": [["a"]]}}', 400,
         "bad_argument", "properties.user_property"),
        ("POST", pub, b'{"topic": "a", "properties": {"response_topic": "r/+"}}', 400,
         "bad_argument", "wildcard"),
        ("POST", pub, b"x" * (1024 * 1024 + 1), 413, "too_large", "max_body_size"),
        ("GET", PREFIX + "/clients?limit=0", None, 400, "bad_request", "limit"),
        ("GET", PREFIX + "/clients?limit=x", None, 400, "bad_request", "limit"),
        ("GET", PREFIX + "/clients?limit=2&cursor=zz!", None, 400, "bad_request", "cursor"),
        ("GET", PREFIX + "/clients?cursor=WzEsImEiXQ", None, 400, "bad_request", "limit"),
        ("GET", PREFIX + "/clients?colour=red", None, 400, "bad_request", "'colour'"),
        ("GET", PREFIX + "/sessions?kind=odd", None, 400, "bad_argument", "persistent"),
    ]
    for method, path, raw, status, code, words in cases:
        r = api.call(method, path, raw=raw)
        assert r.status == status, (method, path, raw and raw[:40], r.status, r.body)
        body = r.json
        assert set(body) == {"code", "message"}, body
        assert body["code"] == code and words in body["message"], (path, raw and raw[:40],
                                                                  body)
        assert r.headers["Content-Type"].startswith("application/json")
    assert "Traceback" not in broker.log()


def test_openapi_lists_every_route(api: HttpApi) -> None:
    doc = api.get(PREFIX + "/openapi.json")
    called("GET", "/openapi.json")
    assert doc["openapi"].startswith("3.")
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    for route in ROUTES:
        path = PREFIX + route.path.replace(":.+}", "}")
        assert (route.method, path) in ops, (route.method, path)
    assert ("GET", "/metrics") in ops
    json.dumps(doc)  # plain JSON all through


# --- MQTT is never held up by HTTP ---------------------------------------------------------

def test_a_stuck_http_reader_does_not_delay_mqtt(api: HttpApi, broker: BrokerProcess,
                                                 clients: Clients, key: str) -> None:
    """A client asks for a listing of megabytes and stops reading: the loop goes on
    serving MQTT (a round trip) and other HTTP requests, and ctl."""
    pub = clients(uid("fill-"))
    n = 30_000
    filler = "f" * 150
    for i in range(n):
        pub.c.publish(f"stuck/{filler}/{i}", b"x", 0, True)
    pub.publish("stuck/last", b"x", 1, True)  # QoS 1, acked: every earlier one is stored
    assert len(api.get(PREFIX + "/retained?limit=10")) == 10
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    stuck.settimeout(WAIT)
    stuck.connect(("127.0.0.1", api.port))
    try:
        stuck.sendall(f"GET {PREFIX}/retained HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                      f"{key}\r\n\r\n".encode())
        assert stuck.recv(64).startswith(b"HTTP/1.1 200")
        # MQTT round trips, HTTP and ctl keep working while that response is stuck
        sub = clients(uid("live-"))
        sub.subscribe("live/x", 1)
        for i in range(20):
            pub.publish("live/x", str(i).encode(), 1)
            assert sub.expect_message().payload == str(i).encode()
        assert api.get(PREFIX + "/status")["status"] == "started"
        assert ctl_json(broker, "status")["status"] == "started"
    finally:
        stuck.close()
    assert api.ok("DELETE", PREFIX + "/retained")["cleaned"] == n + 1


# --- traces ----------------------------------------------------------------------------------

def test_file_traces_start_list_download_stop(api: HttpApi, broker: BrokerProcess,
                                              clients: Clients) -> None:
    cid, topic = uid("traced-"), f"tr/{uid()}"
    name = uid("t")
    row = api.ok("POST", f"{PREFIX}/trace/clients/{q(cid)}", {"name": name})
    called("POST", "/trace/clients/{clientid}")
    path = str(broker.data_dir / "trace" / f"{name}.log")
    assert row == {"type": "clientid", "target": cid, "destination": path, "started": True,
                   "name": name}
    # a topic trace, JSON Lines, default name from the filter
    trow = api.ok("POST", f"{PREFIX}/trace/topics/{q(topic + '/#')}",
                  {"json": True, "payload_limit": 4})
    called("POST", "/trace/topics/{topic:.+}")
    assert trow["type"] == "topic" and trow["target"] == topic + "/#"
    # the same trace again: 409 as ctl's already_existed
    again = api.call("POST", f"{PREFIX}/trace/clients/{q(cid)}", {"name": name})
    assert again.status == 409 and again.json["code"] == "already_existed"
    c = clients(cid)
    c.publish(topic + "/a", b"hello world", 1)
    listed = same_as_ctl(lambda: api.get(PREFIX + "/trace"), "trace", "list")
    assert {(t["type"], t["target"], t["live"]) for t in listed} >= {
        ("clientid", cid, False), ("topic", topic + "/#", False)}
    files = {f["name"]: f for f in api.get(PREFIX + "/trace/files")}
    called("GET", "/trace/files")
    assert files[name]["running"] and files[trow["name"]]["running"]
    # stopping flushes and closes the file; the answer is ctl's
    assert api.ok("DELETE", f"{PREFIX}/trace/clients/{q(cid)}") == {
        "type": "clientid", "target": cid, "stopped": 1}
    called("DELETE", "/trace/clients/{clientid}")
    assert api.ok("DELETE", f"{PREFIX}/trace/topics/{q(topic + '/#')}")["stopped"] == 1
    called("DELETE", "/trace/topics/{topic:.+}")
    r = api.call("GET", f"{PREFIX}/trace/files/{name}")
    called("GET", "/trace/files/{name}")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert any(f"{cid}@" in ln and "RECV CONNECT" in ln for ln in lines), lines
    assert any("RECV PUBLISH" in ln and "hello world" in ln for ln in lines), lines
    events = [json.loads(ln) for ln in
              api.call("GET", f"{PREFIX}/trace/files/{trow['name']}").text.splitlines()]
    assert [(e["topic"], e["from"]) for e in events] == [(topic + "/a", cid)]
    assert "hell...(11 bytes)" in events[0]["text"]
    assert not api.get(PREFIX + "/trace/files") or not any(
        f["running"] for f in api.get(PREFIX + "/trace/files") if f["name"] == name)
    # stopped now: 404 as ctl's not_found
    for path in (f"/trace/clients/{q(cid)}", f"/trace/topics/{q(topic + '/#')}"):
        r = api.call("DELETE", PREFIX + path)
        assert r.status == 404 and r.json["code"] == "not_found", r.body
    # bad input: names that are not plain file names, a bad filter, an unknown file
    for bad in ("../x", ".hidden", "a/b", "x" * 65, ""):
        r = api.call("POST", f"{PREFIX}/trace/clients/{q(cid)}", {"name": bad})
        assert r.status == 400 and r.json["code"] in ("bad_argument", "bad_request"), (bad,
                                                                                      r.body)
    r = api.call("POST", f"{PREFIX}/trace/topics/{q('a/#/b')}")
    assert r.status == 400 and "bad topic filter" in r.json["message"], r.body
    r = api.call("POST", f"{PREFIX}/trace/clients/{q(cid)}", {"payload_limit": -1})
    assert r.status == 400, r.body
    r = api.call("GET", f"{PREFIX}/trace/files/{uid('none')}")
    assert r.status == 404 and r.json["code"] == "not_found"
    r = api.call("GET", f"{PREFIX}/trace/files/..%2Fapikeys.json")
    assert r.status in (400, 404) and b"mqttd_" not in r.body


def test_live_trace_streams_a_clients_packets(api: HttpApi, key: str,
                                              clients: Clients) -> None:
    cid = uid("live-")
    stream = api.events(f"{PREFIX}/trace/clients/{q(cid)}/stream")
    called("GET", "/trace/clients/{clientid}/stream")
    try:
        start = stream.until("start")
        assert start == {"type": "clientid", "target": cid, "connected": None,
                         "payload_limit": start["payload_limit"]}
        listed = same_as_ctl(lambda: api.get(PREFIX + "/trace"), "trace", "list")
        mine = [t for t in listed if t["target"] == cid]
        assert len(mine) == 1 and mine[0]["live"] is True
        assert mine[0]["destination"] == "http api (apikey tests)"
        c = clients(cid, version=5)
        ev = stream.until("trace")
        assert (ev["clientid"], ev["dir"], ev["packet"]) == (cid, "RECV", "CONNECT")
        assert stream.until("trace")["packet"] == "CONNACK"
        c.publish("live/t", b"payload-1", 1)
        pub = stream.until("trace", lambda e: e["packet"] == "PUBLISH")
        assert pub["dir"] == "RECV" and "payload-1" in pub["text"]
        assert stream.until("trace")["packet"] == "PUBACK"
        # stopped by someone: an end event, then the response ends
        api.ok("DELETE", f"{PREFIX}/trace/clients/{q(cid)}")
        end = stream.until("end")
        assert "trace stopped by http api" in end["reason"]
        assert stream.next() is None
    finally:
        stream.close()
    assert not [t for t in api.get(PREFIX + "/trace") if t["target"] == cid]
    # a topic stream, and bad input before any stream starts
    topic = f"lt/{uid()}"
    stream = api.events(f"{PREFIX}/trace/topics/{q(topic + '/+')}/stream?payload_limit=3")
    called("GET", "/trace/topics/{topic:.+}/stream")
    try:
        assert stream.until("start")["payload_limit"] == 3
        api.ok("POST", PREFIX + "/publish", {"topic": topic + "/x", "payload": "abcdef"})
        ev = stream.until("trace")
        assert ev["topic"] == topic + "/x" and ev["from"] is None and "abc..." in ev["text"]
    finally:
        stream.close()
    for path, code in ((f"/trace/topics/{q('a/#/b')}/stream", 400),
                       ("/trace/clients/x/stream?payload_limit=no", 400),
                       ("/trace/clients/x/stream?bad=1", 400)):
        r = api.call("GET", PREFIX + path)
        assert r.status == code and r.json["code"].startswith("bad_"), (path, r.body)
    r = HttpApi(api.broker).call("GET", f"{PREFIX}/trace/clients/x/stream")
    assert r.status == 401


def test_a_stuck_trace_reader_drops_events_not_mqtt(api: HttpApi, broker: BrokerProcess,
                                                    clients: Clients, key: str) -> None:
    """A live trace whose reader stops reading: the broker drops events (and says how
    many once the reader reads again), MQTT goes on, and the trace ends when the reader
    goes away."""
    cid = uid("flood-")
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.settimeout(WAIT)
    stuck.connect(("127.0.0.1", api.port))
    try:
        stuck.sendall(f"GET {PREFIX}/trace/clients/{q(cid)}/stream?payload_limit=100000 "
                      f"HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
        head = stuck.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        pub = clients(cid)
        sub = clients(uid("flood-sub-"))
        sub.subscribe("flood/x", 1)
        big = b"p" * 10_000
        for _ in range(3000):  # 30 MB of trace text: far more than the stream buffers
            pub.c.publish("flood/big", big, 0)
        for i in range(20):
            pub.publish("flood/x", str(i).encode(), 1)
            assert sub.expect_message().payload == str(i).encode()
        assert ctl_json(broker, "status")["status"] == "started"
        # read again: once there is room, a dropped event counts what was lost
        seen = bytearray()
        for i in range(10_000):
            try:
                chunk = stuck.recv(1 << 20)
            except TimeoutError:
                chunk = b"?"
            assert chunk, "the stream ended"
            seen += chunk
            if b"event: dropped" in seen:
                break
            if i % 50 == 0:
                pub.publish("flood/x", b"nudge", 1)  # a new event after the drops
        else:
            raise AssertionError("no dropped event")
        at = seen.index(b"event: dropped")
        data = seen[at:].split(b"\n", 2)[1]
        assert data.startswith(b"data: ")
        assert json.loads(data[6:])["dropped"] > 0
    finally:
        stuck.close()
    # the reader went away: the trace ends (the stream notices within a second or so)
    for _ in range(100):
        if not [t for t in api.get(PREFIX + "/trace") if t["target"] == cid]:
            break
        sub.publish("flood/y", b"", 0)  # traffic for the stream to notice with
        time.sleep(0.1)
    else:
        raise AssertionError("the trace outlived its reader")


def test_shutdown_is_not_held_by_a_stuck_trace_reader() -> None:
    """A live trace whose reader stopped reading under a flood: SIGTERM still stops the
    broker cleanly (the stream is told, then cut), well within the stop's bound."""
    with checked_broker(CONFIG) as b:
        key = ctl_json(b, "apikey", "add", "t")["key"]
        port = http_port(b)
        cid = uid("stuck-")
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.settimeout(WAIT)
        stuck.connect(("127.0.0.1", port))
        cl = Clients(b)
        try:
            stuck.sendall(f"GET {PREFIX}/trace/clients/{cid}/stream?payload_limit=100000 "
                          f"HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
                          .encode())
            assert stuck.recv(4096).startswith(b"HTTP/1.1 200")
            pub = cl(cid)
            for _ in range(1000):
                pub.c.publish("stuck/big", b"s" * 10_000, 0)
            pub.publish("stuck/sync", b"", 1)
            cl.close_all()
            assert b.stop() == 0, b.log()  # bounded by the helper's own stop timeout
            assert "Traceback" not in b.log()
        finally:
            stuck.close()


def test_every_route_was_called() -> None:
    """Last: each route of the table was exercised by a test above."""
    missing = [(r.method, r.path) for r in ROUTES if (r.method, r.path) not in CALLED]
    assert not missing, missing

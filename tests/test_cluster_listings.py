"""The rest of the operations across the cluster (docs/CLUSTER.md, "Operations across the
cluster"; docs/CTL.md; docs/HTTP.md): ``mqttd ctl sessions list|show``, ``subscriptions
list|show`` and ``trace topic`` answered for every node, the HTTP API's listings for the
whole cluster (``node`` in each row, the ``X-Mqttd-Nodes`` header, ``?local=true``,
``?node=<name>``), and ``$SYS`` in a cluster (``$SYS/brokers`` naming every node up, the
``cluster.nodes`` stat and the ``cluster.*`` counters). Real ``mqttd start`` nodes on a real
nats-server, real paho clients, the real ``mqttd ctl`` against each node's control socket, a
real HTTP client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from support import WAIT, uid
from support.clients import Client
from support.cluster import clients_fixture, nats_fixture, nodes_fixture, until
from support.ctlrun import ctl, ctl_json
from support.httpapi import HttpApi
from support.livetrace import LiveTrace
from support.process import BrokerProcess

A, B, C = "la@127.0.0.1", "lb@127.0.0.1", "lc@127.0.0.1"


def node_config(name: str, url: str) -> str:
    """Node A serves the HTTP API too."""
    return (f'[node]\nname = "{name}"\nsys_interval = 1\n\n[cluster]\nnats_url = "{url}"\n'
            'heartbeat_interval = 0.2\nheartbeat_misses = 3\nctl_timeout = 1.0\n'
            + ('\n[http]\nenabled = true\nport = 0\n' if name == A else ""))


def answered(data: dict[str, Any]) -> None:
    got = {n["node"]: n["answered"] for n in data["nodes"]}
    assert {n: got.get(n) for n in (A, B, C)} == {A: True, B: True, C: True}, data["nodes"]


nats_server = nats_fixture()
nodes = nodes_fixture((A, B, C), wait="up", config=node_config)


@pytest.fixture(scope="module")
def api(nodes: dict[str, BrokerProcess]) -> HttpApi:
    key = ctl_json(nodes[A], "apikey", "add", "listings")["key"]
    return HttpApi(nodes[A], key=str(key))


clients = clients_fixture(version=4)


def spread(clients: Callable[..., Client], nodes: dict[str, BrokerProcess], t: str
           ) -> dict[str, str]:
    """A connected client with a subscription on A and C, and a persistent session held
    offline (with two subscriptions) on B: their client ids by node."""
    ids = {A: uid("sa"), B: uid("sb"), C: uid("sc")}
    clients(nodes[A], ids[A]).subscribe(f"{t}/a", 1)
    off = clients(nodes[B], ids[B], clean=False)
    off.subscribe(f"{t}/b/#", 1)
    off.subscribe(f"{t}/bb", 0)
    off.disconnect()
    clients(nodes[C], ids[C]).subscribe(f"{t}/c/+", 2)
    until("B to hold the session offline", lambda: any(
        r["clientid"] == ids[B] and not r["connected"]
        for r in ctl_json(nodes[B], "sessions", "list", "--local")))
    return ids


def test_sessions_listed_and_shown_from_any_node(
        nodes: dict[str, BrokerProcess], clients: Callable[..., Client]) -> None:
    ids = spread(clients, nodes, uid("ses"))
    for asking in nodes.values():
        data = ctl_json(asking, "sessions", "list")
        answered(data)
        where = {r["clientid"]: r for r in data["sessions"]}
        for name, cid in ids.items():
            assert where[cid]["node"] == name
        assert where[ids[B]]["connected"] is False and where[ids[B]]["persistent"] is True
        assert where[ids[B]]["subscriptions"] == 2
        text = ctl(asking, "sessions", "list")
        assert text.code == 0 and text.err == "", text
        assert "Node" in text.out.splitlines()[0]
        assert B in next(ln for ln in text.out.splitlines() if ids[B] in ln)
        assert text.out.splitlines()[-1].endswith("on 3 of 3 nodes")
    # A kind narrows every node's listing.
    persistent = ctl_json(nodes[C], "sessions", "list", "persistent")
    assert ids[B] in {r["clientid"] for r in persistent["sessions"]}
    assert not {ids[A], ids[C]} & {r["clientid"] for r in persistent["sessions"]}
    bad = ctl(nodes[A], "sessions", "list", "neither")
    assert bad.code != 0 and "neither" in bad.err
    # --local: this node's sessions alone, as on a single node (an array, no node).
    local = ctl_json(nodes[A], "sessions", "list", "--local")
    assert isinstance(local, list) and ids[A] in {r["clientid"] for r in local}
    assert not {ids[B], ids[C]} & {r["clientid"] for r in local}
    # show: on whichever node holds it.
    row = ctl_json(nodes[A], "sessions", "show", ids[B])
    assert row["clientid"] == ids[B] and row["node"] == B and row["connected"] is False
    assert ctl_json(nodes[C], "sessions", "show", ids[C])["node"] == C
    r = ctl(nodes[A], "sessions", "show", ids[B], "--local")
    assert r.code == 1 and "not found" in r.err.lower()
    r = ctl(nodes[A], "sessions", "show", uid("nobody"))
    assert r.code == 1 and "not found" in r.err.lower()


def test_subscriptions_listed_and_shown_from_any_node(
        nodes: dict[str, BrokerProcess], clients: Callable[..., Client]) -> None:
    t = uid("subs")
    ids = spread(clients, nodes, t)
    data = ctl_json(nodes[B], "subscriptions", "list")
    answered(data)
    mine = sorted((r["node"], r["clientid"], r["topic"], r["qos"]) for r in data["subscriptions"]
                  if r["topic"].startswith(t))
    assert mine == sorted([(A, ids[A], f"{t}/a", 1), (B, ids[B], f"{t}/b/#", 1),
                           (B, ids[B], f"{t}/bb", 0), (C, ids[C], f"{t}/c/+", 2)])
    text = ctl(nodes[B], "subscriptions", "list")
    assert text.code == 0 and "Node" in text.out.splitlines()[0]
    assert text.out.splitlines()[-1].endswith("on 3 of 3 nodes")
    local = ctl_json(nodes[B], "subscriptions", "list", "--local")
    assert {r["clientid"] for r in local if r["topic"].startswith(t)} == {ids[B]}
    # show: the session's node answers (held offline on B, asked from A and C).
    for asking in (nodes[A], nodes[C]):
        rows = ctl_json(asking, "subscriptions", "show", ids[B])
        assert sorted((r["node"], r["topic"]) for r in rows) == [(B, f"{t}/b/#"), (B, f"{t}/bb")]
    rows = ctl_json(nodes[C], "subscriptions", "show", ids[C])
    assert [(r["node"], r["topic"]) for r in rows] == [(C, f"{t}/c/+")]
    text = ctl(nodes[A], "subscriptions", "show", ids[C])
    assert text.code == 0 and C in text.out and f"{t}/c/+" in text.out
    r = ctl(nodes[A], "subscriptions", "show", ids[C], "--local")
    assert r.code == 1 and "not found" in r.err.lower()
    r = ctl(nodes[A], "subscriptions", "show", uid("nobody"))
    assert r.code == 1 and "not found" in r.err.lower()


def topic_traces(node: BrokerProcess, target: str) -> list[dict[str, Any]]:
    return [t for t in ctl_json(node, "trace", "list") if t["type"] == "topic"
            and t["target"] == target]


def test_trace_topic_on_every_node(nodes: dict[str, BrokerProcess],
                                   clients: Callable[..., Client]) -> None:
    t = uid("trt")
    live = LiveTrace(nodes[A], "topic", f"{t}/#")
    try:
        assert live.banner.startswith(f"Tracing messages published to {t}/# on {A}, "), \
            live.banner
        assert B in live.banner and C in live.banner
        assert len(topic_traces(nodes[B], f"{t}/#")) == 1
        # A message published on each node is traced there, its line marked by the node.
        for name in (C, B, A):
            clients(nodes[name], uid("p")).publish(f"{t}/from-{name}", b"x", qos=1)
            lines = live.until(f"{t}/from-{name}")
            assert lines[-1].startswith(f"[{name}] "), lines
        assert live.interrupt()[0] == 0
    finally:
        live.interrupt()
    for node in nodes.values():  # Ctrl-C ends it on every node
        until("the trace to end everywhere", lambda n=node: not topic_traces(n, f"{t}/#"))
    local = LiveTrace(nodes[A], "topic", f"{t}/#", "--local")
    try:
        assert local.banner.startswith(f"Tracing messages published to {t}/#; "), local.banner
        assert not topic_traces(nodes[B], f"{t}/#")
    finally:
        local.interrupt()


def test_http_listings_answer_for_the_whole_cluster(
        nodes: dict[str, BrokerProcess], api: HttpApi,
        clients: Callable[..., Client]) -> None:
    t = uid("http")
    ids = spread(clients, nodes, t)
    mine = set(ids.values())

    def nodes_header(reply: Any) -> dict[str, bool]:
        return {n["node"]: n["answered"] for n in json.loads(reply.headers["X-Mqttd-Nodes"])}

    # Every node's rows, each with its node; the header says who answered.
    reply = api.call("GET", "/api/v1/sessions")
    assert reply.status == 200, reply.body
    assert nodes_header(reply) == {A: True, B: True, C: True}
    assert {(r["node"], r["clientid"]) for r in reply.json if r["clientid"] in mine} == \
        {(n, cid) for n, cid in ids.items()}
    # The same rows as mqttd ctl --json's.
    by_ctl = ctl_json(nodes[A], "sessions", "list")["sessions"]
    assert {(r["node"], r["clientid"]) for r in by_ctl if r["clientid"] in mine} == \
        {(r["node"], r["clientid"]) for r in reply.json if r["clientid"] in mine}
    clients_rows = api.get("/api/v1/clients")
    assert {(r["node"], r["clientid"]) for r in clients_rows if r["clientid"] in mine} == \
        {(A, ids[A]), (C, ids[C])}
    # Filters apply to every node's rows.
    assert [r["node"] for r in api.get(f"/api/v1/clients?clientid_prefix={ids[C]}")] == [C]
    subs = api.get("/api/v1/subscriptions")
    assert {(r["node"], r["topic"]) for r in subs if r["topic"].startswith(t)} == \
        {(A, f"{t}/a"), (B, f"{t}/b/#"), (B, f"{t}/bb"), (C, f"{t}/c/+")}
    held = api.get(f"/api/v1/clients/{ids[B]}/subscriptions")
    assert sorted((r["node"], r["topic"]) for r in held) == [(B, f"{t}/b/#"), (B, f"{t}/bb")]
    assert [r["node"] for r in api.get(f"/api/v1/subscriptions?clientid={ids[C]}")] == [C]
    for path in ("/api/v1/routes", "/api/v1/topics"):
        routes = {(r["node"], r["topic"]) for r in api.get(path) if r["topic"].startswith(t)}
        assert routes == {(A, f"{t}/a"), (B, f"{t}/b/#"), (B, f"{t}/bb"), (C, f"{t}/c/+")}
    shown = api.get("/api/v1/routes/" + quote(f"{t}/c/x", safe=""))
    assert [(r["node"], r["topic"]) for r in shown] == [(C, f"{t}/c/+")]
    # Pages of one row walk every node's rows, once each.
    seen: list[tuple[str, str]] = []
    path = "/api/v1/sessions?limit=1"
    for _ in range(1000):
        page = api.call("GET", path)
        assert page.status == 200, page.body
        seen += [(r["node"], r["clientid"]) for r in page.json]
        cursor = page.headers.get("X-Next-Cursor")
        if cursor is None:
            break
        path = f"/api/v1/sessions?limit=1&cursor={cursor}"
    assert len(seen) == len(set(seen))
    assert {(n, cid) for n, cid in ids.items()} <= set(seen)
    # ?local=true: this node's rows alone, as on a single node (no node field).
    local = api.call("GET", "/api/v1/sessions?local=true")
    assert local.status == 200 and "X-Mqttd-Nodes" not in local.headers
    assert {r["clientid"] for r in local.json} & mine == {ids[A]}
    assert all("node" not in r for r in local.json)
    # ?node=<name>: that node's rows.
    only_b = api.call("GET", f"/api/v1/sessions?node={quote(B)}")
    assert only_b.status == 200 and nodes_header(only_b) == {B: True}
    assert {r["node"] for r in only_b.json} == {B}
    assert ids[B] in {r["clientid"] for r in only_b.json}
    assert {r["node"] for r in api.get(f"/api/v1/routes?node={quote(A)}")} == {A}
    # Bad input: a clear answer.
    r = api.call("GET", "/api/v1/sessions?node=nowhere")
    assert r.status == 404 and "nowhere" in r.json["message"]
    r = api.call("GET", "/api/v1/sessions?local=maybe")
    assert r.status == 400 and "local" in r.json["message"]
    r = api.call("GET", f"/api/v1/clients/{uid('nobody')}/subscriptions")
    assert r.status == 404 and r.json["code"] == "not_found"
    r = api.call("GET", "/api/v1/sessions?kind=neither")
    assert r.status == 400


def test_sys_names_every_node_and_publishes_the_cluster_counters(
        nodes: dict[str, BrokerProcess], clients: Callable[..., Client]) -> None:
    # Some cross-node traffic, so that the cluster counters have moved.
    t = uid("sys")
    sub = clients(nodes[A], uid("ssub"))
    sub.subscribe(f"{t}/#", 0)
    until("B to know A's route", lambda: any(
        r["topic"] == f"{t}/#" and r["node"] == A
        for r in ctl_json(nodes[B], "routes", "list")["routes"]))
    clients(nodes[B], uid("spub")).publish(f"{t}/x", b"over", qos=1)
    assert sub.expect_message().payload == b"over"
    watch = clients(nodes[A], uid("swatch"))
    watch.subscribe([("$SYS/brokers", 0), (f"$SYS/brokers/{A}/stats/cluster.nodes.count", 0),
                     (f"$SYS/brokers/{A}/metrics/cluster/received", 0)])
    want = {"$SYS/brokers": ",".join(sorted((A, B, C))),
            f"$SYS/brokers/{A}/stats/cluster.nodes.count": "3"}
    got: dict[str, str] = {}
    deadline = time.monotonic() + 4 * WAIT
    while not (all(got.get(k) == v for k, v in want.items())
               and int(got.get(f"$SYS/brokers/{A}/metrics/cluster/received", "0")) >= 1):
        assert time.monotonic() < deadline, got
        m = watch.expect_message()
        got[m.topic] = m.payload.decode()


def test_one_client_or_session_on_another_node(
        nodes: dict[str, BrokerProcess], api: HttpApi,
        clients: Callable[..., Client]) -> None:
    t = uid("one")
    ids = spread(clients, nodes, t)
    # HTTP: a client or a session is found (and acted on) on the node that holds it.
    row = api.get(f"/api/v1/clients/{ids[C]}")
    assert (row["clientid"], row["node"], row["connected"]) == (ids[C], C, True)
    assert api.get(f"/api/v1/clients/{ids[A]}")["node"] == A
    row = api.get(f"/api/v1/sessions/{ids[B]}")
    assert (row["clientid"], row["node"], row["connected"]) == (ids[B], B, False)
    r = api.call("GET", f"/api/v1/sessions/{ids[B]}?local=true")
    assert r.status == 404 and r.json["code"] == "not_found"
    r = api.call("GET", f"/api/v1/clients/{uid('nobody')}")
    assert r.status == 404 and r.json["code"] == "not_found"
    assert api.ok("DELETE", f"/api/v1/clients/{ids[C]}") == \
        {"clientid": ids[C], "kicked": True, "node": C}
    until("C to drop the kicked client", lambda: ids[C] not in {
        r["clientid"] for r in ctl_json(nodes[C], "clients", "list", "--local")})
    # ctl sessions clean: the session held offline on B, discarded from A.
    r = ctl(nodes[A], "sessions", "clean", ids[B], "--local")
    assert r.code == 1 and "not found" in r.err.lower()
    assert ctl_json(nodes[A], "sessions", "clean", ids[B]) == \
        {"clientid": ids[B], "cleaned": True, "node": B}
    assert ids[B] not in {r["clientid"] for r in ctl_json(nodes[B], "sessions", "list", "--local")}
    r = ctl(nodes[C], "sessions", "clean", ids[B])
    assert r.code == 1 and "not found" in r.err.lower()
    # HTTP DELETE /sessions: the same, for the one on A asked over HTTP with its node.
    assert api.ok("DELETE", f"/api/v1/sessions/{ids[A]}") == \
        {"clientid": ids[A], "cleaned": True, "node": A}


def test_http_live_trace_streams_from_every_node(
        nodes: dict[str, BrokerProcess], api: HttpApi,
        clients: Callable[..., Client]) -> None:
    t = uid("sse")
    events = api.events("/api/v1/trace/topics/" + quote(f"{t}/#", safe="") + "/stream")
    try:
        start = events.until("start")
        assert {n["node"]: n["answered"] for n in start["nodes"]} == {A: True, B: True, C: True}
        assert len(topic_traces(nodes[C], f"{t}/#")) == 1
        for name in (B, A):
            clients(nodes[name], uid("p")).publish(f"{t}/from-{name}", b"x", qos=1)
            ev = events.until("trace", lambda e, name=name: e["topic"] == f"{t}/from-{name}")
            assert ev["node"] == name
        # One node's part stopped there: said, and the others go on.
        assert ctl_json(nodes[C], "trace", "stop", "topic", f"{t}/#")["stopped"] == 1
        assert events.until("node_end")["node"] == C
        clients(nodes[B], uid("p")).publish(f"{t}/again", b"y", qos=0)
        assert events.until("trace", lambda e: e["topic"] == f"{t}/again")["node"] == B
    finally:
        events.close()
    for node in nodes.values():  # the reader gone: ended on every node
        until("the stream's trace to end everywhere",
              lambda n=node: not topic_traces(n, f"{t}/#"))
    # A client trace, ?local=true: this node only, no nodes in start.
    cid = uid("ssec")
    local = api.events(f"/api/v1/trace/clients/{cid}/stream?local=true")
    try:
        assert "nodes" not in local.until("start")
        assert not [x for x in ctl_json(nodes[B], "trace", "list") if x["target"] == cid]
    finally:
        local.close()


def test_subscriptions_added_and_deleted_on_the_sessions_node(
        nodes: dict[str, BrokerProcess], api: HttpApi,
        clients: Callable[..., Client]) -> None:
    t = uid("sadd")
    ids = spread(clients, nodes, t)
    # ctl on A, the session connected on C: subscribed there, and it gets the messages.
    assert ctl_json(nodes[A], "subscriptions", "add", ids[C], f"{t}/added", "1") == \
        {"clientid": ids[C], "topic": f"{t}/added", "qos": 1, "new": True, "node": C}
    assert f"{t}/added" in {r["topic"] for r in ctl_json(nodes[C], "subscriptions", "show",
                                                   ids[C], "--local")}
    r = ctl(nodes[A], "subscriptions", "add", ids[C], f"{t}/x", "1", "--local")
    assert r.code == 1 and "not found" in r.err.lower()
    # HTTP on A, the session held offline on B.
    row = api.ok("POST", f"/api/v1/clients/{ids[B]}/subscriptions", {"topic": f"{t}/h", "qos": 2})
    assert row == {"clientid": ids[B], "topic": f"{t}/h", "qos": 2, "new": True, "node": B}
    held = {r["topic"]: r["qos"] for r in ctl_json(nodes[B], "subscriptions", "show", ids[B],
                                             "--local")}
    assert held[f"{t}/h"] == 2
    gone = api.call("DELETE", f"/api/v1/clients/{ids[B]}/subscriptions?topic="
                    + quote(f"{t}/h", safe=""))
    assert gone.status == 200 and gone.json == \
        {"clientid": ids[B], "topic": f"{t}/h", "deleted": True, "node": B}
    assert ctl_json(nodes[C], "subscriptions", "del", ids[C], f"{t}/added") == \
        {"clientid": ids[C], "topic": f"{t}/added", "deleted": True, "node": C}  # its own
    # What does not exist: a clear "not found", the node that has the session named.
    r = ctl(nodes[A], "subscriptions", "del", ids[B], f"{t}/never")
    assert r.code == 1 and f"subscription '{t}/never' not found" in r.err, r
    r = api.call("POST", f"/api/v1/clients/{uid('nobody')}/subscriptions",
                 {"topic": f"{t}/n"})
    assert r.status == 404 and r.json["code"] == "not_found"
    r = api.call("POST", f"/api/v1/clients/{ids[B]}/subscriptions", {"topic": f"{t}/#/bad"})
    assert r.status == 400

"""Operations across the cluster (docs/CLUSTER.md, "Operations across the cluster";
docs/CTL.md): ``mqttd ctl clients list|show|kick`` and ``routes list|show`` answered for
every node by scatter-gather over NATS request/reply. Real ``mqttd start`` nodes on a real
nats-server, real paho clients, the real ``mqttd ctl`` against each node's control socket.

What a node knows of the others arrives asynchronously (heartbeats every 0.2 s here): a test
asks again until the node says what is expected, bounded in count and time.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

from support import uid
from support.clients import Client
from support.cluster import clients_fixture, nats_fixture, nodes_fixture, until
from support.ctlrun import ctl, ctl_json
from support.livetrace import LiveTrace
from support.natsserver import NatsServer, free_port
from support.process import BrokerProcess, checked_broker, wait_log

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"


def node_config(name: str, url: str, misses: int = 3) -> str:
    return (f'[node]\nname = "{name}"\n\n[cluster]\nnats_url = "{url}"\n'
            f'heartbeat_interval = 0.2\nheartbeat_misses = {misses}\nctl_timeout = 1.0\n')


def answered(data: dict[str, Any]) -> None:
    """A, B and C answered (a node another test started and killed may be listed down)."""
    got = {n["node"]: n["answered"] for n in data["nodes"]}
    assert {n: got.get(n) for n in (A, B, C)} == {A: True, B: True, C: True}, data["nodes"]


def up(node: BrokerProcess, *names: str) -> bool:
    rows = {r["node"]: r for r in ctl_json(node, "cluster", "nodes")}
    return all(rows.get(n, {}).get("status") == "up" for n in names)


nats_server = nats_fixture()
nodes = nodes_fixture((A, B, C), wait="up", config=node_config)
clients = clients_fixture(version=4)


def test_clients_listed_from_any_node_with_their_node(
        nodes: dict[str, BrokerProcess], clients: Callable[..., Client]) -> None:
    ids = {A: uid("la"), B: uid("lb"), C: uid("lc")}
    for name, cid in ids.items():
        clients(nodes[name], cid, username=f"user-{cid}", password="hunter2-secret")
    for asking in nodes.values():
        data = ctl_json(asking, "clients", "list")
        answered(data)
        where = {r["clientid"]: r["node"] for r in data["clients"]}
        for name, cid in ids.items():
            assert where[cid] == name
        row = next(r for r in data["clients"] if r["clientid"] == ids[C])
        assert row["username"] == f"user-{ids[C]}"
        assert row["connected"] is True and row["proto_ver"] == 4
        text = ctl(asking, "clients", "list")
        assert text.code == 0, text
        assert "Node" in text.out.splitlines()[0]
        line = next(ln for ln in text.out.splitlines() if ids[B] in ln)
        assert B in line
        assert text.out.splitlines()[-1].endswith("on 3 of 3 nodes")
        assert text.err == ""
        assert "hunter2" not in text.out + json.dumps(data)

    # --local: this node's clients only, today's shape (an array, no node column).
    local = ctl_json(nodes[A], "clients", "list", "--local")
    assert isinstance(local, list)
    assert {r["clientid"] for r in local} >= {ids[A]}
    assert not {ids[B], ids[C]} & {r["clientid"] for r in local}
    text = ctl(nodes[A], "clients", "list", "--local")
    assert "Node" not in text.out.splitlines()[0]


def test_show_and_kick_a_client_on_another_node(
        nodes: dict[str, BrokerProcess], clients: Callable[..., Client]) -> None:
    cid = uid("remote")
    claimed = ctl_json(nodes[B], "cluster", "status")["sessions_claimed"]
    c = clients(nodes[B], cid, version=5)
    row = ctl_json(nodes[A], "clients", "show", cid)
    assert row["clientid"] == cid and row["node"] == B and row["proto_ver"] == 5
    text = ctl(nodes[C], "clients", "show", cid)
    assert text.code == 0 and cid in text.out and B in text.out
    # --local on a node that does not hold it: not found, as on a single node.
    r = ctl(nodes[A], "clients", "show", cid, "--local")
    assert r.code == 1 and "not found" in r.err.lower(), r

    # The session registry names B: B alone is asked to kick.
    until("the registry to name B", lambda: ctl_json(nodes[B], "cluster", "status")[
        "sessions_claimed"] > claimed)
    before = {n: ctl_json(node, "cluster", "status")["ctl_answered"] for n, node in nodes.items()}
    r = ctl(nodes[A], "--json", "clients", "kick", cid)
    assert r.code == 0, r
    after = {n: ctl_json(node, "cluster", "status")["ctl_answered"] for n, node in nodes.items()}
    assert after[B] == before[B] + 1 and after[C] == before[C]
    assert json.loads(r.out) == {"clientid": cid, "kicked": True, "node": B}
    rc, _props = c.wait_disconnected()
    assert rc.value == 0x98  # Administrative action, from node B
    until("the client to be gone everywhere",
          lambda: all(cid not in {x["clientid"] for x in ctl_json(n, "clients", "list")["clients"]}
                      for n in nodes.values()))
    r = ctl(nodes[A], "clients", "kick", cid)
    assert r.code == 1 and "not found" in r.err.lower() and "Traceback" not in r.err

    # A client on the asking node itself: kicked here, its node said.
    here = uid("here")
    h = clients(nodes[C], here, version=5)
    assert ctl_json(nodes[C], "clients", "kick", here) == {"clientid": here, "kicked": True,
                                                     "node": C}
    assert h.wait_disconnected()[0].value == 0x98


def test_routes_merged(nodes: dict[str, BrokerProcess],
                       clients: Callable[..., Client]) -> None:
    t = uid("rt")
    sa = clients(nodes[A], uid("sa"))
    sa.subscribe(f"{t}/a/#", 1)
    sb = clients(nodes[B], uid("sb"))
    sb.subscribe(f"{t}/b/+", 1)
    sb.subscribe(f"$share/g/{t}/s", 1)

    def routes() -> dict[tuple[str, str], dict[str, Any]]:
        data = ctl_json(nodes[C], "routes", "list")
        answered(data)
        return {(r["topic"], r["node"]): r for r in data["routes"]}

    got = routes()
    assert got[(f"{t}/a/#", A)]["subscribers"] == 1
    assert got[(f"{t}/b/+", B)]["subscribers"] == 1
    assert got[(f"{t}/s", B)]["shared"] == {"g": 1}
    assert not [k for k in got if k[0].startswith(t) and k[1] == C]
    text = ctl(nodes[C], "routes", "list")
    assert f"{t}/a/# -> {A}" in text.out.splitlines()
    assert f"{t}/b/+ -> {B}" in text.out.splitlines()
    # routes show: the routes a topic takes, on every node.
    shown = ctl_json(nodes[A], "routes", "show", f"{t}/b/x")
    assert [(r["topic"], r["node"]) for r in shown["routes"]] == [(f"{t}/b/+", B)]
    r = ctl(nodes[A], "routes", "show", f"{t}/none")
    assert r.code == 1 and "not found" in r.err.lower()
    assert not [x for x in ctl_json(nodes[C], "routes", "list", "--local") if x["topic"]
                .startswith(t)]


def test_a_node_killed_does_not_answer_and_the_rest_is_listed() -> None:
    server = NatsServer()
    made: list[Client] = []
    try:
        # Many misses: the killed node stays "up" for the others while the listing asks it.
        with checked_broker(node_config(A, server.url, misses=100)) as a, \
                checked_broker(node_config(B, server.url, misses=100)) as b:
            c = BrokerProcess(node_config(C, server.url, misses=100))
            try:
                for node in (a, b, c):
                    wait_log(node, "joined through NATS")
                until("A to see B and C", lambda: up(a, B, C))
                ids = {}
                for name, node in ((A, a), (B, b), (C, c)):
                    ids[name] = uid("k")
                    client = Client(node, ids[name])
                    made.append(client)
                    client.connect()
                data = ctl_json(a, "clients", "list")
                assert {r["clientid"] for r in data["clients"]} >= set(ids.values())
                c.stop(signal.SIGKILL)
                # It never hangs: the ctl itself gives up (exit 1) after --timeout.
                data = ctl_json(a, "--timeout", "5", "clients", "list")
                silent = {n["node"]: n for n in data["nodes"] if not n["answered"]}
                assert list(silent) == [C]
                assert silent[C]["reason"] == "no answer within 1 s"
                where = {r["clientid"]: r["node"] for r in data["clients"]}
                assert where[ids[A]] == A and where[ids[B]] == B and ids[C] not in where
                text = ctl(a, "clients", "list")
                assert text.code == 0
                assert f"node {C}: no answer within 1 s" in text.err
                assert text.out.splitlines()[-1].endswith("on 2 of 3 nodes")
                # A client looked for everywhere: not found, and the silent node named.
                r = ctl(a, "clients", "show", ids[C])
                assert r.code == 1 and C in r.err and "no answer" in r.err
                routes = ctl_json(b, "routes", "list")
                assert [n["node"] for n in routes["nodes"] if not n["answered"]] == [C]
            finally:
                for client in made:
                    client.close()
                c.stop()
                c.cleanup()
    finally:
        server.stop()


def test_without_a_cluster_commands_are_as_before() -> None:
    with checked_broker("") as single:
        cid = uid("single")
        client = Client(single, cid)
        try:
            client.connect()
            data = ctl_json(single, "clients", "list")
            assert isinstance(data, list) and [r["clientid"] for r in data] == [cid]
            assert "node" not in data[0]
            assert ctl_json(single, "clients", "list", "--local") == data
            assert ctl_json(single, "clients", "kick", cid) == {"clientid": cid, "kicked": True}
            assert isinstance(ctl_json(single, "routes", "list"), list)
        finally:
            client.close()


def traces_on(node: BrokerProcess) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = ctl_json(node, "trace", "list")
    return rows


def test_trace_a_client_on_another_node(nodes: dict[str, BrokerProcess],
                                        clients: Callable[..., Client]) -> None:
    cid = uid("traced")
    c = clients(nodes[B], cid, version=5, username="alice", password="hunter2-secret")
    live = LiveTrace(nodes[A], "client", cid)
    try:
        assert live.banner.startswith(f"Tracing client {cid} on {A}, "), live.banner
        assert B in live.banner and C in live.banner
        # The other nodes run it for A's ctl (listed there as live).
        assert [t["target"] for t in traces_on(nodes[B]) if t["type"] == "clientid"] == [cid]
        c.subscribe("trc/#", 1)
        c.publish("trc/x", b"hello from b", qos=1)
        lines = live.until("SEND PUBLISH(Q1")
        assert all(line.startswith(f"[{B}] ") for line in lines), lines
        assert any("RECV SUBSCRIBE" in line for line in lines)
        assert "hunter2" not in "\n".join(lines)
        # A reconnect on another node is traced there.
        c.disconnect()
        again = clients(nodes[C], cid, version=5)
        again.publish("trc/y", b"now on c", qos=0)
        lines = live.until("Topic=trc/y")
        assert lines[-1].startswith(f"[{C}] ")
        # Stopped on one node there: that node says so; the others go on.
        assert ctl_json(nodes[B], "trace", "stop", "client", cid)["stopped"] == 1
        until("A's ctl to say B's part ended", lambda: any(
            line.startswith(f"[{B}] trace stopped") for line in live.errors))
        assert [t["target"] for t in traces_on(nodes[C]) if t["type"] == "clientid"] == [cid]
        code, _rest = live.interrupt()
        assert code == 0
    finally:
        if live.proc.poll() is None:
            live.interrupt()
    # Ctrl-C ends it on every node.
    for node in nodes.values():
        until("the trace to end everywhere", lambda n=node: not [
            t for t in traces_on(n) if t["target"] == cid])

    # --local: this node only.
    local = LiveTrace(nodes[A], "client", cid, "--local")
    try:
        assert local.banner.startswith(f"Tracing client {cid} (not connected"), local.banner
        assert not [t for t in traces_on(nodes[B]) if t["target"] == cid]
    finally:
        local.interrupt()


def test_a_trace_whose_asking_node_dies_ends(nodes: dict[str, BrokerProcess]) -> None:
    """The lease: a node tracing for a node that went away stops by itself."""
    server_url = json.loads(ctl(nodes[A], "--json", "cluster", "status").out)["server"]
    d = BrokerProcess(node_config("d@127.0.0.1", server_url, misses=100))
    try:
        wait_log(d, "joined through NATS")
        until("D to see A up", lambda: up(d, A))
        cid = uid("lease")
        live = LiveTrace(d, "client", cid)
        assert A in live.banner, live.banner
        until("A to run the trace", lambda: [t for t in traces_on(nodes[A])
                                             if t["target"] == cid] != [])
        d.stop(signal.SIGKILL)
        live.interrupt()
        until("A to end the orphaned trace", lambda: not [
            t for t in traces_on(nodes[A]) if t["target"] == cid])
        wait_log(nodes[A], f"trace of client {cid} stopped")
    finally:
        d.stop()
        d.cleanup()


def test_a_long_answer_comes_in_parts(nodes: dict[str, BrokerProcess],
                                      clients: Callable[..., Client]) -> None:
    """More routes than one NATS message of an answer holds (parts of 256 KiB): all listed."""
    t = uid("many")
    filters = [f"{t}/{'x' * 60}/{i}/#" for i in range(5000)]
    sub = clients(nodes[B], uid("many"))
    for i in range(0, len(filters), 500):
        sub.subscribe([(f, 0) for f in filters[i:i + 500]])
    data = ctl_json(nodes[A], "routes", "list")
    answered(data)
    got = sorted(r["topic"] for r in data["routes"] if r["topic"].startswith(t))
    assert got == sorted(filters)
    assert {r["node"] for r in data["routes"] if r["topic"].startswith(t)} == {B}
    assert len(json.dumps([r for r in data["routes"] if r["node"] == B])) > 2 * 256 * 1024


def test_a_node_cut_off_from_nats_says_it_answers_alone() -> None:
    port = free_port()
    with checked_broker(node_config("alone@127.0.0.1", f"nats://127.0.0.1:{port}")) as n:
        wait_log(n, "running as a single node")
        cid = uid("alone")
        c = Client(n, cid)
        try:
            c.connect()
            data = ctl_json(n, "clients", "list")
            assert [r["clientid"] for r in data["clients"]] == [cid]
            assert data["note"] == "this node is not connected to NATS: no other node was asked"
            text = ctl(n, "clients", "list")
            assert text.code == 0 and "not connected to NATS" in text.err
            r = ctl(n, "clients", "kick", "nobody-here")
            assert r.code == 1 and "not connected to NATS" in r.err
        finally:
            c.close()

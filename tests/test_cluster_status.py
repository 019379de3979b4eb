"""``mqttd ctl cluster status|nodes`` and the membership heartbeats (docs/CLUSTER.md,
docs/CTL.md): real ``mqttd start`` nodes on a real nats-server, real paho clients, the real
``mqttd ctl`` against each node's control socket.

What a node knows of the others arrives asynchronously (heartbeats every 0.2 s here): a test
asks the node again until it says what is expected, bounded in count and time.
"""

from __future__ import annotations

import json
import signal
from typing import Any

from support import uid
from support.clients import Client
from support.cluster import until
from support.ctlrun import ctl
from support.natsserver import NatsServer, free_port
from support.process import BrokerProcess, checked_broker, wait_log

A, B, C = "a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1"


def node_config(name: str, url: str) -> str:
    return (f'[node]\nname = "{name}"\n\n[cluster]\nnats_url = "{url}"\n'
            'heartbeat_interval = 0.2\nheartbeat_misses = 3\n')


def status(node: BrokerProcess) -> dict[str, Any]:
    r = ctl(node, "--json", "cluster", "status")
    assert r.code == 0, r
    data: dict[str, Any] = json.loads(r.out)
    return data


def nodes(node: BrokerProcess) -> dict[str, dict[str, Any]]:
    r = ctl(node, "--json", "cluster", "nodes")
    assert r.code == 0, r
    return {row["node"]: row for row in json.loads(r.out)}


def test_status_nodes_and_counters() -> None:
    server = NatsServer()
    # Credentials in the URL (this server does not ask for any): never shown nor logged.
    url = f"nats://mqttd-user:s3cret-pw@127.0.0.1:{server.port}"
    try:
        with checked_broker(node_config(A, url)) as a, \
                checked_broker(node_config(B, server.url)) as b:
            c = BrokerProcess(node_config(C, server.url))
            try:
                for node in (a, b, c):
                    wait_log(node, "joined through NATS")
                server.nodes = {A: a, B: b, C: c}
                until("A to see B and C up", lambda: all(
                    nodes(a).get(n, {}).get("status") == "up" for n in (B, C)))
                st = status(a)
                assert st["state"] == "connected"
                assert st["server"] == f"nats://127.0.0.1:{server.port}"
                assert st["nats_url"] == f"nats://127.0.0.1:{server.port}"
                assert st["nodes_up"] == 3
                text = ctl(a, "cluster", "status")
                assert text.code == 0 and "connected" in text.out
                assert "s3cret" not in text.out + json.dumps(st) + a.log()

                # Counters: a subscription on A, messages from B.
                t = uid("st")
                sub = Client(a, uid("s"))
                pub = Client(b, uid("p"))
                try:
                    sub.connect()
                    pub.connect()
                    sub.subscribe(f"{t}/#", 1)
                    server.wait_interest(A, f"{t}/#")
                    before_a, before_b = status(a), status(b)
                    assert before_a["subscriptions"] >= 1
                    for i in range(5):
                        pub.publish(f"{t}/x", str(i).encode(), 1)
                    assert len(sub.expect_messages(5)) == 5
                    after_b = status(b)
                    assert after_b["forwarded"] - before_b["forwarded"] == 5
                    until("A to count what it received",
                          lambda: status(a)["received"] - before_a["received"] == 5)
                    # The counters are also stats (ctl broker stats, /metrics).
                    metrics_b = json.loads(ctl(b, "--json", "broker", "metrics").out)["metrics"]
                    assert metrics_b["messages.forward"] >= 5
                    metrics_a = json.loads(ctl(a, "--json", "broker", "metrics").out)["metrics"]
                    assert metrics_a["cluster.received"] >= 5
                    until("the nodes stat", lambda: json.loads(ctl(
                        a, "--json", "broker", "stats").out)["stats"].get(
                            "cluster.nodes.count") == 3)
                finally:
                    sub.close()
                    pub.close()
                table = ctl(a, "cluster", "nodes")
                assert table.code == 0
                assert f"{A} (this node)" in table.out and B in table.out
                assert table.out.splitlines()[-1] == "3 nodes"

                # A node killed: missed heartbeats make it down, on both survivors.
                c.stop(signal.SIGKILL)
                for node in (a, b):
                    until("C to be counted down", lambda n=node: nodes(n)[C]["status"]
                          == "down")
                    assert nodes(node)[C]["reason"] == "missed 3 heartbeats"
                    wait_log(node, f"cluster: node {C} is down (missed 3 heartbeats)")
                assert status(a)["nodes_up"] == 2
            finally:
                c.stop()
                c.cleanup()
            # A node that stops says so: down at once, "left".
            b.stop()
            until("B to be counted as left", lambda: nodes(a)[B]["reason"] == "left")
            # And a node started again under the same name is up again.
    finally:
        server.stop()


def test_a_node_that_comes_back_is_up_again() -> None:
    server = NatsServer()
    try:
        with checked_broker(node_config(A, server.url)) as a:
            with checked_broker(node_config(B, server.url)) as b:
                wait_log(b, "joined through NATS")
                until("B up", lambda: nodes(a).get(B, {}).get("status") == "up")
            until("B left", lambda: nodes(a)[B]["status"] == "down")
            with checked_broker(node_config(B, server.url)) as b2:
                wait_log(b2, "joined through NATS")
                until("B up again", lambda: nodes(a)[B]["status"] == "up")
    finally:
        server.stop()


def test_status_without_a_cluster_says_so() -> None:
    with checked_broker("") as single:
        r = ctl(single, "cluster", "status")
        assert r.code != 0
        assert "not in a cluster" in r.err and "nats_url" in r.err
        assert "Traceback" not in r.err


def test_status_of_a_node_whose_nats_is_unreachable() -> None:
    port = free_port()
    with checked_broker(node_config("alone@127.0.0.1", f"nats://127.0.0.1:{port}")) as n:
        wait_log(n, "running as a single node")
        st = status(n)
        assert st["state"] == "unreachable"
        assert st["nodes_up"] == 1
        assert [r["node"] for r in json.loads(ctl(n, "--json", "cluster", "nodes").out)] \
            == ["alone@127.0.0.1"]

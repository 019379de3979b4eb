"""The management API (``mqttd.mgmt``) against a real in-process node.

Each test starts a :class:`mqttd.server.Server` on a loopback port-0 listener in
this process, on uvloop as the daemon runs, connects real paho-mqtt clients (in
their own threads), and calls the :class:`~mqttd.mgmt.api.Management` facade the
server built: the data it returns and the actions it takes are checked against
what the clients see.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import uvloop
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import WAIT, uid

from mqttd.config import Listener, Settings
from mqttd.mgmt.api import Management
from mqttd.mgmt.clients import CLIENT_KEYS
from mqttd.mgmt.errors import Conflict, Failed, InvalidArgument, NotFound
from mqttd.server import Server


@asynccontextmanager
async def running() -> AsyncIterator[tuple[Server, int, list[Paho]]]:
    """A started server (no control socket), its listener's port, and a list to put clients
    in: they disconnect, and the broker sees them go, before the server stops."""
    server = Server(Settings(listeners=[Listener(port=0)]))
    await server.start()
    made: list[Paho] = []
    try:
        yield server, server.bound("default")[1], made
    finally:
        for p in made:
            p.close()
        await until(lambda: server.mgmt.status.computed_stats()["connections.count"] == 0,
                    "the clients' connections to end")
        await server.stop()


async def until(predicate: Callable[[], Any], what: str) -> Any:
    """Poll ``predicate`` while the loop keeps serving the clients; its first truthy value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not (value := predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return value


class Paho:
    """A paho-mqtt client on its own network thread; received messages land in a queue."""

    def __init__(self, port: int, client_id: str, *, username: str | None = None,
                 expiry: int = 0, clean_start: bool = True) -> None:
        self.client_id = client_id
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        if username is not None:
            self.c.username_pw_set(username, "pw")
        self.c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.c.reconnect_delay_set(60, 60)  # a kicked client stays away during the test
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        self.c.connect("127.0.0.1", port, clean_start=clean_start, properties=props)
        self.c.loop_start()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def client_ids(mgmt: Management) -> set[str]:
    return {row["clientid"] for row in mgmt.clients.all().rows()}


def retained_topics(mgmt: Management) -> set[str]:
    """Retained topics outside $SYS (the broker retains its own version and description)."""
    return {r["topic"] for r in mgmt.retained.all().rows() if not r["topic"].startswith("$")}


def test_clients_and_sessions() -> None:
    async def run() -> None:
        async with running() as (server, port, made):
            mgmt = server.mgmt
            cid = uid("alice-")
            made.append(Paho(port, cid, username="alice", expiry=300, clean_start=False))
            made[0].c.subscribe("m/+/x", 1)
            row = await until(lambda: cid in client_ids(mgmt)
                              and mgmt.clients.get(cid)["subscriptions"] == 1
                              and mgmt.clients.get(cid), "the client and its subscription")
            assert (row["username"], row["proto_ver"], row["expiry_interval"],
                    row["clean_start"], row["connected"]) == ("alice", 5, 300, False, True)
            assert list(row) == [k for k in CLIENT_KEYS if k in row] == list(CLIENT_KEYS)
            assert row["connected_at"] and row["peername"].startswith("127.0.0.1:")
            session = mgmt.sessions.get(cid)
            assert (session["connected"], session["persistent"]) == (True, True)
            assert [s["clientid"] for s in mgmt.sessions.all("transient").rows()] == []
            # kick: the connection ends, the persistent session stays, offline
            assert mgmt.clients.kick(cid) == {"clientid": cid, "kicked": True}
            await until(lambda: cid not in client_ids(mgmt), "the kicked client to go")
            with pytest.raises(NotFound) as err:
                mgmt.clients.get(cid)
            assert err.value.what == "client"
            assert mgmt.sessions.exists(cid)
            offline = mgmt.sessions.get(cid)
            assert offline["connected"] is False and 0 < offline["expires_in"] <= 300
            assert mgmt.sessions.clean(cid) == {"clientid": cid, "cleaned": True}
            assert not mgmt.sessions.exists(cid)
            with pytest.raises(NotFound):
                mgmt.sessions.clean(cid)
            with pytest.raises(InvalidArgument):
                mgmt.sessions.all("sometimes")

    uvloop.run(run())


def test_subscriptions_routes_and_retained() -> None:
    async def run() -> None:
        async with running() as (server, port, made):
            mgmt = server.mgmt
            sub, pub = uid("sub-"), uid("pub-")
            made += [Paho(port, sub), Paho(port, pub)]
            await until(lambda: all(p.c.is_connected() for p in made), "CONNACKs")
            made[1].c.publish("r/a", b"alpha", qos=1, retain=True)
            made[1].c.publish("r/b", bytes([0xFF, 0]), qos=0, retain=True)
            await until(lambda: len(retained_topics(mgmt)) == 2, "two retained messages")
            # add: the session gets the filter's retained messages at once, as on SUBSCRIBE
            added = mgmt.subscriptions.add(sub, "r/#", 1)
            assert added == {"clientid": sub, "topic": "r/#", "qos": 1, "new": True}
            inbox = made[0].messages
            await until(lambda: inbox.qsize() == 2, "the retained messages to arrive")
            assert {inbox.get_nowait().topic for _ in range(2)} == {"r/a", "r/b"}
            assert [r["topic"] for r in mgmt.subscriptions.of_client(sub).rows()] == ["r/#"]
            routes = list(mgmt.routes.lookup("r/a").rows())
            assert routes == [{"topic": "r/#", "node": "mqttd@127.0.0.1", "subscribers": 1,
                               "shared": {}}]
            with pytest.raises(InvalidArgument):
                mgmt.subscriptions.add(sub, "r/#/x", 1)
            with pytest.raises(NotFound) as err:
                mgmt.subscriptions.add("nobody", "r/#", 1)
            assert err.value.what == "session"
            assert mgmt.subscriptions.delete(sub, "r/#")["deleted"] is True
            with pytest.raises(NotFound) as err:
                mgmt.subscriptions.delete(sub, "r/#")
            assert err.value.what == "subscription"
            with pytest.raises(NotFound):
                mgmt.routes.lookup("r/a")
            # retained: show carries the payload as text (when it is) and base64
            shown = {m["topic"]: m for m in await mgmt.retained.show("r/+")}
            assert (shown["r/a"]["payload"], shown["r/a"]["payload_base64"]) == \
                ("alpha", "YWxwaGE=")
            assert shown["r/b"]["payload"] is None and shown["r/b"]["payload_size"] == 2
            listing = mgmt.retained.all()  # a snapshot: rows of what went away are skipped
            assert await mgmt.retained.clean("r/+") == 2
            assert {"r/a", "r/b"} <= set(listing.items)
            assert not [r for r in listing.rows() if r["topic"].startswith("r/")]
            with pytest.raises(NotFound):
                await mgmt.retained.show("r/#")
            with pytest.raises(InvalidArgument):
                await mgmt.retained.clean("r/#/x")

    uvloop.run(run())


def test_listeners_status_and_stop() -> None:
    async def run() -> None:
        async with running() as (server, port, made):
            mgmt = server.mgmt
            made.append(Paho(port, uid("l-")))
            await until(lambda: mgmt.listeners.all()[0]["current_conn"] == 1,
                        "the connection to count")
            (row,) = mgmt.listeners.all()
            assert row == {"name": "default", "type": "tcp", "listen_on": f"127.0.0.1:{port}",
                           "zone": "default", "running": True, "current_conn": 1,
                           "max_conns": 1_024_000, "max_conn_rate": 0.0}
            stopped = await mgmt.listeners.stop("default")
            assert stopped == {"name": "default", "listen_on": f"127.0.0.1:{port}",
                               "running": False}
            with pytest.raises(Conflict) as conflict:
                await mgmt.listeners.stop("default")
            assert conflict.value.reason == "not_running"
            with pytest.raises(NotFound):
                await mgmt.listeners.restart("nope")
            restarted = await mgmt.listeners.restart("default")
            assert restarted["running"] is True and restarted["listen_on"].endswith(
                f":{port}")  # a configured port 0 keeps the port it was given
            status = mgmt.status.node()
            assert status["node"] == "mqttd@127.0.0.1" and status["status"] == "started"
            assert {w["name"] for w in status["workers"]} >= {"stats"}
            stats = mgmt.status.stats()
            assert stats["source"] == "stats" and "connections.count" in stats["stats"]
            assert mgmt.status.metrics()["source"] == "metrics"
            vm = await mgmt.vm.info()
            assert vm["io"]["active_fds"] > 3 and vm["asyncio"]["tasks"] >= 1

    uvloop.run(run())


def test_traces_plugins_and_log_level(tmp_path: Path) -> None:
    async def run() -> None:
        async with running() as (server, _port, _made):
            mgmt = server.mgmt
            path = str(tmp_path / "t.log")
            started = mgmt.trace.start_file("topic", "a/#", path)
            assert started == {"type": "topic", "target": "a/#", "destination": path,
                               "started": True}
            with pytest.raises(Conflict) as err:
                mgmt.trace.start_file("topic", "a/#", path)
            assert err.value.reason == "already_existed"
            with pytest.raises(Failed):
                mgmt.trace.start_file("clientid", "c", str(tmp_path / "no" / "such" / "f"))
            with pytest.raises(InvalidArgument):
                mgmt.trace.check("topic", "$share/g/a")
            assert [(t["type"], t["target"], t["live"]) for t in mgmt.trace.all()] == [
                ("topic", "a/#", False)]
            assert mgmt.trace.stop_target("topic", "a/#", "done") == {
                "type": "topic", "target": "a/#", "stopped": 1}
            with pytest.raises(NotFound):
                mgmt.trace.stop_target("topic", "a/#")
            with pytest.raises(Failed):
                mgmt.plugins.load("no_such_module_here:Plugin")
            with pytest.raises(NotFound):
                mgmt.plugins.unload("nothing")
            before = mgmt.log.get()
            try:
                assert mgmt.log.set("WARNING") == "warning" == server.settings.log_level
                with pytest.raises(InvalidArgument):
                    mgmt.log.set("loud")
            finally:
                mgmt.log.set(before)

    uvloop.run(run())

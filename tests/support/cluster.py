"""The cluster tests' set-up, once: a real nats-server and real ``mqttd start`` nodes on it,
handed to a test once they have joined (and, if asked, once every node sees the others up
or has settled).

Plain context managers, and fixture factories around them that a module assigns to its own
names (``nats_server = nats_fixture()``, ``nodes = nodes_fixture((A, B), wait="up")``, as
``support.process.broker_fixture``), not a pytest plugin: fixture names shared through a
plugin would change what every module's ``nodes`` means.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest
from paho.mqtt.packettypes import PacketTypes

from . import WAIT, uid
from .clients import Client, props
from .ctlrun import ctl
from .natsserver import NatsServer
from .process import BrokerProcess, assert_clean_log, checked_broker, wait_log

__all__ = ["check_kill_9_after_puback", "clients", "clients_fixture",
           "nats_fixture", "node_config", "nodes_fixture", "publish_nowait", "running_nats",
           "running_nodes", "status", "until", "wait_ack"]

#: When :func:`running_nodes` hands its nodes over (see there).
Wait = Literal["joined", "up", "settled"]


def node_config(name: str, url: str, *, heartbeat: float | None = 0.2,
                misses: int | None = None, ctl_timeout: float | None = None,
                extra: str = "") -> str:
    """A node's configuration: its name, the NATS url, the cluster's tuning keys given (None:
    the default), then ``extra`` TOML."""
    text = f'[node]\nname = "{name}"\n\n[cluster]\nnats_url = "{url}"\n'
    if heartbeat is not None:
        text += f"heartbeat_interval = {heartbeat}\n"
    if misses is not None:
        text += f"heartbeat_misses = {misses}\n"
    if ctl_timeout is not None:
        text += f"ctl_timeout = {ctl_timeout}\n"
    return text + extra


def until(what: str, check: Callable[[], bool], timeout: float = 2 * WAIT) -> None:
    """Wait (bounded) until ``check()`` is true."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def clients(nodes: dict[str, BrokerProcess], *, version: int = 5, connect: bool = True
            ) -> Iterator[Callable[..., Client]]:
    """``for make in clients(nodes):`` gives ``make(node, client_id=None, *, version=version,
    connect=connect, **kwargs)``, a paho client (connected unless ``connect`` is False) on
    ``node``, a node's name or a :class:`BrokerProcess`; every one is closed at the end."""
    made: list[Client] = []
    default_version, default_connect = version, connect

    def make(node: str | BrokerProcess, client_id: str | None = None, *,
             version: int = default_version, connect: bool = default_connect,
             **kwargs: object) -> Client:
        broker = nodes[node] if isinstance(node, str) else node
        c = Client(broker, uid("c") if client_id is None else client_id, version=version,
                   **kwargs)  # type: ignore[arg-type]
        made.append(c)
        if connect:
            c.connect()
        return c

    yield make
    for c in made:
        c.close()


def clients_fixture(*, version: int = 5, connect: bool = True) -> Any:
    """A fixture of :func:`clients` on the module's ``nodes`` (every client closed after the
    test). Assign it to the name tests ask for: ``connect = clients_fixture()``."""

    @pytest.fixture
    def _clients(nodes: dict[str, BrokerProcess]) -> Iterator[Callable[..., Client]]:
        yield from clients(nodes, version=version, connect=connect)

    return _clients


def publish_nowait(pub: Client, topic: str, payload: bytes, qos: int) -> int:
    """Send a PUBLISH without waiting for its acknowledgement; its message id."""
    info = pub.c.publish(topic, payload, qos)
    assert info.rc == 0, info.rc
    return int(info.mid)


def wait_ack(pub: Client, mid: int, timeout: float = WAIT) -> int:
    """The reason code of message ``mid``'s PUBACK/PUBREC, once it came (bounded)."""
    pub._wait(lambda: mid in pub._pubacks, f"ack of publish {mid}", timeout)
    with pub._cond:
        rc, _ = pub._pubacks.pop(mid)
    return int(rc.value) if hasattr(rc, "value") else int(rc)


@contextlib.contextmanager
def running_nats() -> Iterator[NatsServer]:
    """A nats-server with JetStream, stopped (by PID) at the end."""
    server = NatsServer()
    try:
        yield server
    finally:
        server.stop()


def _status(node: BrokerProcess, what: str) -> object:
    r = ctl(node, "--json", "cluster", what)
    assert r.code == 0, r
    return json.loads(r.out)


def _sees_up(node: BrokerProcess, names: list[str]) -> bool:
    rows = _status(node, "nodes")
    assert isinstance(rows, list)
    status = {r["node"]: r["status"] for r in rows}
    return all(status.get(n) == "up" for n in names)


def _settled(node: BrokerProcess) -> bool:
    return bool(status(node)["settled"])


def status(node: BrokerProcess) -> dict[str, Any]:
    """``mqttd ctl cluster status`` of ``node`` (its JSON)."""
    data = _status(node, "status")
    assert isinstance(data, dict)
    return data


@contextlib.contextmanager
def running_nodes(server: NatsServer, configs: dict[str, str], wait: Wait = "joined"
                  ) -> Iterator[dict[str, BrokerProcess]]:
    """A checked broker per ``{name: config}`` (each must stop cleanly, exit 0), handed over
    once each logged its join; ``wait="up"``: also once every node counts every other up;
    ``"settled"``: also once each has settled (three heartbeats after its join it knows the
    others' routes, so a publish nobody wants gets 0x10). The nodes are registered with the
    server (``server.nodes``) meanwhile."""
    with contextlib.ExitStack() as stack:
        nodes = {name: stack.enter_context(checked_broker(config))
                 for name, config in configs.items()}
        for node in nodes.values():
            wait_log(node, "joined through NATS")
        if wait in ("up", "settled"):
            for node in nodes.values():
                until("every node to see the others up",
                      lambda n=node: _sees_up(n, list(nodes)))
        if wait == "settled":
            for node in nodes.values():
                until("every node to settle", lambda n=node: _settled(n))
        server.nodes = dict(nodes)
        try:
            yield dict(nodes)
        finally:
            server.nodes = {}


def nats_fixture() -> Any:
    """A module's ``nats_server`` fixture: one :func:`running_nats` for the module. Assign it
    to that name: ``nats_server = nats_fixture()``."""

    @pytest.fixture(scope="module")
    def _nats_server() -> Iterator[NatsServer]:
        with running_nats() as server:
            yield server

    return _nats_server


def nodes_fixture(names: tuple[str, ...], *, wait: Wait = "joined", scope: str = "module",
                  config: Callable[..., str] = node_config, **options: Any) -> Any:
    """A fixture of :func:`running_nodes` on the module's ``nats_server``: a node per name,
    configured by ``config(name, url, **options)`` (:func:`node_config` unless given), handed
    over as ``wait`` says. Assign it to the name tests ask for: ``nodes = nodes_fixture((A,
    B), wait="settled", heartbeat=None)``."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def _nodes(nats_server: NatsServer) -> Iterator[dict[str, BrokerProcess]]:
        configs = {n: config(n, nats_server.url, **options) for n in names}
        with running_nodes(nats_server, configs, wait=wait) as nodes:
            yield nodes

    return _nodes


def check_kill_9_after_puback(nats_server: NatsServer, configs: dict[str, str],
                              subscribe: Callable[[dict[str, BrokerProcess], Client, str], None]
                              ) -> None:
    """The acknowledged-message rule through a kill -9: nodes ``configs`` = {A: ..., B: ...};
    a persistent session on B subscribes with ``subscribe(nodes, client, topic)`` (back once
    A knows) and goes offline; a publisher on A gets the PUBACKs of 50 QoS 1 messages; B,
    killed right after and restarted on its data directory, has every one for the session."""
    (a_name, config_a), (b_name, config_b) = configs.items()
    b = BrokerProcess(config_b)
    b2: BrokerProcess | None = None
    try:
        with checked_broker(config_a) as a:
            nodes = {a_name: a, b_name: b}
            for node in (a, b):
                wait_log(node, "joined through NATS")
            nats_server.nodes = dict(nodes)
            t = uid("k")
            sid = uid("persistent")
            expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=3600)
            sub = Client(b, sid, version=5, clean=False, properties=expiry)
            sub.connect()
            subscribe(nodes, sub, t)
            sub.close()  # offline: what comes for it is queued in B's store
            pub = Client(a, uid("p"), version=5)
            pub.connect()
            try:
                sent = [f"m{i}".encode() for i in range(50)]
                for payload in sent:
                    assert pub.publish(t, payload, 1) == 0
                b.stop(signal.SIGKILL)
                nats_server.nodes = {a_name: a}
                b2 = BrokerProcess(config_b, extra_args=["--data-dir", str(b.data_dir)])
                wait_log(b2, "joined through NATS")
                sub2 = Client(b2, sid, version=5, clean=False, properties=expiry)
                sub2.connect()
                try:
                    assert sub2.session_present
                    got = {m.payload for m in sub2.expect_messages(len(sent))}
                    assert got == set(sent)
                finally:
                    sub2.close()
            finally:
                pub.close()
            nats_server.nodes = {}
    finally:
        if b2 is not None:
            assert b2.stop() == 0
            assert_clean_log(b2)
            b2.cleanup()
        b.stop(signal.SIGKILL)
        b.cleanup()

"""The cluster tests' set-up, once: a real nats-server and real ``mqttd start`` nodes on it,
handed to a test once they have joined (and, if asked, once every node sees the others up
or has settled).

Plain context managers, imported by each module and wrapped in that module's own fixtures
(not a pytest plugin: fixture names shared through a plugin would change what every
module's ``nodes`` means).
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal

from . import WAIT, uid
from .clients import Client
from .ctlrun import ctl
from .natsserver import NatsServer
from .process import MQTTD, BrokerProcess, checked_broker, wait_log

__all__ = ["LiveTrace", "clients", "node_config", "publish_nowait", "running_nats", "running_nodes",
           "until", "wait_ack"]


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


def clients(nodes: dict[str, BrokerProcess]) -> Iterator[Callable[..., Client]]:
    """``for connect in clients(nodes):`` gives ``connect(node, version=5, client_id=None,
    **kwargs)``, a connected paho client on that node; every one is closed at the end."""
    made: list[Client] = []

    def connect(node: str, version: int = 5, client_id: str | None = None,
                **kwargs: object) -> Client:
        c = Client(nodes[node], client_id or uid("c"), version=version, **kwargs)  # type: ignore[arg-type]
        made.append(c)
        c.connect()
        return c

    yield connect
    for c in made:
        c.close()


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
    data = _status(node, "status")
    assert isinstance(data, dict)
    return bool(data["settled"])


@contextlib.contextmanager
def running_nodes(server: NatsServer, configs: dict[str, str],
                  wait: Literal["joined", "up", "settled"] = "joined"
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


class LiveTrace:
    """A running ``mqttd ctl trace client|topic ...`` process, its stdout read line by line
    (its stderr kept: the banner, then anything else it says)."""

    def __init__(self, node: BrokerProcess, kind: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*MQTTD, "ctl", "--data-dir", str(node.data_dir), "trace", kind, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.threads = [threading.Thread(target=self._read, daemon=True)]
        self.threads[0].start()
        assert self.proc.stderr is not None
        self.banner = self.proc.stderr.readline()  # printed once the trace is in place
        self.errors: list[str] = []
        self.threads.append(threading.Thread(target=self._read_err, daemon=True))
        self.threads[1].start()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, text: str) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{text!r} not traced:\n" + "\n".join(got)) from None
            if line is None:
                raise AssertionError(f"trace ended before {text!r}:\n" + "\n".join(got))
            got.append(line)
            if text in line:
                return got

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(WAIT)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        for thread in self.threads:  # both pipes are at their end once it exited
            thread.join(WAIT)
        self.proc.stderr.close()
        self.proc.stdout.close()
        return code, "".join(self.errors)

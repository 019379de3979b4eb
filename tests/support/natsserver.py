"""A real nats-server for the cluster tests: Debian's, with JetStream (its store in a temp
directory), on free loopback ports, stopped by PID."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mqttd.cluster.subjects import encode_filter

from . import WAIT
from .ctlrun import ctl

#: Debian's nats-server (.ci/run installs it; missing, these tests fail rather than skip).
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """Debian's nats-server on free loopback ports (client and monitoring), stopped by PID."""

    def __init__(self, jetstream: bool = True, port: int = 0) -> None:
        self.jetstream = jetstream
        #: Node name -> its process, registered by a test's fixture: waiting for interest
        #: then also waits until every running registered node has read every other's
        #: route table (a node forwards only what another node is known to want).
        self.nodes: dict[str, Any] = {}
        self.dir = Path(tempfile.mkdtemp(prefix="mqttd-nats-"))
        self.port = port or free_port()
        self.http_port = free_port()
        self.log_path = self.dir / "nats.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (open as long as the process)
        self.url = f"nats://127.0.0.1:{self.port}"
        assert Path(NATS_SERVER).exists(), "nats-server is not installed (.ci/run installs it)"
        self._start()

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.http_port),
             *(["-js", "-sd", str(self.dir / "jetstream")] if self.jetstream else [])],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir)
        self._until(lambda: self._connz() is not None, "nats-server to listen")

    def restart(self) -> None:
        """Stop the server (by PID) and start it again on the same ports."""
        self._terminate()
        self._start()

    def _connz(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"nats-server exited:\n{self.log_path.read_text()}")
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/connz?subs=1", timeout=2) as r:
                data: dict[str, Any] = json.load(r)
                return data
        except OSError:
            return None

    def _until(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def queue_subs(self, node: str) -> list[tuple[str, str]]:
        """(subject, queue group) of the queue subscriptions of ``node``'s connections."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"nats-server exited:\n{self.log_path.read_text()}")
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/connz?subs=detail", timeout=2) as r:
            connz = json.load(r)
        found = []
        for conn in connz.get("connections", []):
            if conn.get("name", "").startswith(node):
                for sub in conn.get("subscriptions_list_detail", []):
                    if sub.get("qgroup"):
                        found.append((sub["subject"], sub["qgroup"]))
        return sorted(found)

    def wait_queue_subs(self, node: str, predicate: Callable[[list[tuple[str, str]]], bool],
                        what: str) -> list[tuple[str, str]]:
        self._until(lambda: predicate(self.queue_subs(node)), what)
        self.wait_routes()
        return self.queue_subs(node)

    def subjects(self, node: str) -> list[str]:
        """The subjects the connection named ``node`` subscribes to (sorted)."""
        connz = self._connz() or {}
        found: list[str] = []
        for conn in connz.get("connections", []):
            if conn.get("name") == node:
                found += conn.get("subscriptions_list", [])
        return sorted(found)

    def wait_subjects(self, node: str, predicate: Callable[[list[str]], bool], what: str
                      ) -> list[str]:
        self._until(lambda: predicate(self.subjects(node)), what)
        return self.subjects(node)

    def wait_interest(self, node: str, *filters: str) -> None:
        wanted = {encode_filter(f) for f in filters}
        self.wait_subjects(node, lambda s: wanted <= set(s),
                           f"{node}'s NATS interest in {filters}")
        self.wait_routes()

    def _routes_known(self) -> bool:
        running = {n: b for n, b in self.nodes.items() if b.proc.poll() is None}
        own: dict[str, int] = {}
        for name, broker in running.items():
            r = ctl(broker, "--json", "cluster", "status")
            if r.code != 0:
                return False
            own[name] = json.loads(r.out)["routes_version"]
        for name, broker in running.items():
            r = ctl(broker, "--json", "cluster", "nodes")
            if r.code != 0:
                return False
            seen = {row["node"]: row for row in json.loads(r.out)}
            for other, version in own.items():
                if other != name and (other not in seen or seen[other]["status"] != "up"
                                      or seen[other]["routes_version"] != version):
                    return False
        return True

    def wait_routes(self) -> None:
        """Every running registered node knows every other's routes as they are now."""
        self._until(self._routes_known, "the nodes to know each other's routes")

    def _terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def stop(self) -> None:
        self._terminate()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

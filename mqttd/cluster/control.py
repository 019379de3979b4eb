"""Operations across the cluster (docs/CLUSTER.md, "Operations across the cluster"):
``mqttd ctl clients list|show|kick`` and ``routes list|show`` answered by every node, by
scatter-gather over NATS request/reply.

Each node answers requests on ``mqttd.c.ctl.<its start tag>``. The asking node sends one
request to every node it counts up, with a fresh inbox as the reply subject, and collects
what comes back for at most ``[cluster] ctl_timeout`` seconds. An answer may come in
several parts (a large listing would not fit in one NATS message): a node counts as
answered once its last part is in, and the rows of a node that did not finish in time are
left out, the node named. Rows are management's own (``mgmt.clients``, ``mgmt.routes``),
so they carry what a local listing carries and nothing more (never a password).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..core.registry import Registry
from ..core.router import Router
from ..mgmt.clients import Clients
from ..mgmt.errors import NotFound
from ..mgmt.listing import Row
from ..mgmt.routes import Routes
from .membership import Membership

log = logging.getLogger("mqttd.cluster")

__all__ = ["CTL", "ClusterControl", "OPS"]

#: + a node's start tag: where that node answers control requests.
CTL = "mqttd.c.ctl."
#: What a node answers: every client, one client, kick one, every route (or a topic's).
OPS = ("clients", "client", "kick", "routes")
#: An answer's part is sent once its rows reach this many bytes (NATS's default maximum
#: payload is 1 MiB).
_PART_BYTES = 256 * 1024


def _default(value: Any) -> Any:
    """What json cannot encode by itself, as the ctl's --json shows it."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


class ClusterControl:
    """This node's side of cluster-wide control: answering others, asking everyone."""

    def __init__(self, node_name: str, node_id: str, members: Membership,
                 registry: Registry | None, router: Router, timeout: float) -> None:
        self.node_name = node_name
        self.node_id = node_id
        self.members = members
        self.clients = Clients(registry) if registry is not None else None
        self.routes = Routes(router, node_name)
        self.timeout = timeout
        self.nc: NatsClient | None = None
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Requests answered for other nodes (and failed), for the log's sake.
        self.answered = 0

    async def start(self, nc: NatsClient) -> None:
        self.nc = nc
        self._sub = await nc.subscribe(CTL + self.node_id, cb=self._asked)

    def stop(self) -> None:
        self.nc = None
        self._sub = None
        for task in list(self._tasks):
            task.cancel()

    # --- answering ------------------------------------------------------------------------

    def _rows(self, op: str, arg: str | None) -> Iterable[Row]:
        """This node's rows for a request (NotFound: none)."""
        if op == "routes":
            listing = self.routes.all() if arg is None else self.routes.lookup(arg)
            return listing.rows()
        if self.clients is None or (op != "clients" and not arg):
            return []
        if op == "clients":
            return self.clients.all().rows()
        if op == "client":
            return [self.clients.get(str(arg))]
        if op == "kick":
            return [self.clients.kick(str(arg))]
        raise ValueError(f"unknown request {op!r}")

    async def _asked(self, m: Msg) -> None:
        if not m.reply:
            return
        # Its own task: a long listing must not hold up the next request.
        task = asyncio.get_running_loop().create_task(self._answer(m.reply, m.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, reply: str, data: bytes) -> None:
        nc = self.nc
        if nc is None:
            return
        head = {"node": self.node_name, "id": self.node_id}
        try:
            try:
                req = json.loads(data)
                op, arg = req["op"], req.get("arg")
                if op not in OPS:
                    raise ValueError(f"unknown request {op!r}")
                rows: Iterable[Row] = self._rows(op, arg)
            except NotFound:
                rows = []
            except (ValueError, KeyError, TypeError) as err:
                await nc.publish(reply, json.dumps(dict(head, last=True, rows=[],
                                                        error=str(err))).encode())
                return
            part: list[bytes] = []
            size = 0
            deadline = time.monotonic() + 0.004
            for row in rows:
                encoded = json.dumps(row, default=_default, ensure_ascii=False).encode()
                part.append(encoded)
                size += len(encoded)
                if size >= _PART_BYTES:
                    await nc.publish(reply, _part(head, part, False))
                    part, size = [], 0
                if time.monotonic() >= deadline:  # 100,000 rows must not stall the loop
                    await asyncio.sleep(0)
                    deadline = time.monotonic() + 0.004
            await nc.publish(reply, _part(head, part, True))
            self.answered += 1
        except Exception as err:  # noqa: BLE001 - the asker names this node as silent
            log.warning("cluster: a control request from another node failed: %s",
                        err or type(err).__name__)

    # --- asking ---------------------------------------------------------------------------

    async def ask(self, op: str, arg: str | None = None) -> dict[str, Any]:
        """Ask every other node counted up; wait at most ``timeout`` seconds.

        Returns ``{"rows": [...], "nodes": [...]}``: the other nodes' rows (each with its
        ``node``), and one entry per other node known, ``{"node", "answered", "reason"}``
        (why it has no rows: down, no answer in time, its error)."""
        nodes: list[dict[str, Any]] = []
        for peer in sorted(self.members.peers.values(), key=lambda p: p.name):
            if not peer.up:
                nodes.append({"node": peer.name, "answered": False,
                              "reason": f"down ({peer.reason})"})
        up = {p.id: p.name for p in self.members.up()}
        nc = self.nc
        if nc is None or not nc.is_connected:
            for name in sorted(up.values()):
                nodes.append({"node": name, "answered": False,
                              "reason": "not asked: this node is not connected to NATS"})
            return {"rows": [], "nodes": nodes}
        rows: list[Row] = []
        parts: dict[str, list[Row]] = {}
        errors: dict[str, str] = {}
        pending = dict(up)
        done = asyncio.Event()
        if not pending:
            done.set()

        async def received(m: Msg) -> None:
            try:
                data = json.loads(m.data)
                node_id = data["id"]
                got = data["rows"]
            except (ValueError, KeyError, TypeError):
                return
            name = pending.get(node_id)
            if name is None:
                return  # late, or not asked
            mine = parts.setdefault(node_id, [])
            for row in got:
                if isinstance(row, dict):
                    row["node"] = name
                    mine.append(row)
            if data.get("error"):
                errors[node_id] = str(data["error"])
            if data.get("last"):
                rows.extend(parts.pop(node_id))
                del pending[node_id]
                if not pending:
                    done.set()

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=received)
        try:
            request = json.dumps({"op": op, "arg": arg, "from": self.node_name}).encode()
            for node_id in up:
                await nc.publish(CTL + node_id, request, reply=inbox)
            await asyncio.wait_for(done.wait(), self.timeout)
        except TimeoutError:
            pass
        except Exception as err:  # noqa: BLE001 - say which nodes went unanswered
            log.warning("cluster: a control request to the other nodes failed: %s",
                        err or type(err).__name__)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001,S110 - the connection went away meanwhile
                pass
        for node_id, name in sorted(up.items(), key=lambda kv: kv[1]):
            if node_id in pending:
                nodes.append({"node": name, "answered": False,
                              "reason": f"no answer within {self.timeout:g} s"})
            elif node_id in errors:
                nodes.append({"node": name, "answered": False, "reason": errors[node_id]})
            else:
                nodes.append({"node": name, "answered": True, "reason": ""})
        nodes.sort(key=lambda n: str(n["node"]))
        return {"rows": rows, "nodes": nodes}


def _part(head: dict[str, Any], rows: list[bytes], last: bool) -> bytes:
    start = json.dumps(dict(head, last=last)).encode()[:-1]
    return start + b', "rows": [' + b",".join(rows) + b"]}"

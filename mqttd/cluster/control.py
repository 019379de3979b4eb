"""Operations across the cluster (docs/CLUSTER.md, "Operations across the cluster"):
``mqttd ctl clients``, ``sessions``, ``subscriptions`` and ``routes`` listings (and the
HTTP API's), ``clients show|kick``, ``sessions show``, ``trace client|topic`` answered by
every node, by scatter-gather over NATS request/reply.

Each node answers requests on ``mqttd.c.ctl.<its start tag>``. The asking node sends one
request to every node it counts up, with a fresh inbox as the reply subject, and collects
what comes back for at most ``[cluster] ctl_timeout`` seconds. An answer may come in
several parts (a large listing would not fit in one NATS message): a node counts as
answered once its last part is in, and the rows of a node that did not finish in time are
left out, the node named. Rows are management's own (``mgmt.clients``, ``mgmt.routes``),
``mgmt.sessions``, ``mgmt.subscriptions``), so they carry what a local listing carries and
nothing more (never a password).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..core.registry import Registry
from ..core.router import Router
from ..mgmt.clients import Clients
from ..mgmt.errors import MgmtError, NotFound
from ..mgmt.listing import Row, json_default
from ..mgmt.routes import Routes
from ..mgmt.sessions import Sessions
from ..mgmt.subscriptions import Subscriptions, subscription_rows
from ..trace.manager import Trace, TraceManager
from .membership import Membership

log = logging.getLogger("mqttd.cluster")

__all__ = ["CTL", "ClusterControl", "OPS"]

#: + a node's start tag: where that node answers control requests.
CTL = "mqttd.c.ctl."
#: What a node answers: every client, one client, kick one, every route (or a topic's),
#: every session (or of a kind), one session, discard one, every subscription, one
#: client's, add one to a session, delete one; start a client or topic trace streamed to
#: the asker, keep it going, stop it.
OPS = ("clients", "client", "kick", "routes", "sessions", "session", "session_clean",
       "subscriptions", "client_subscriptions", "subscribe", "unsubscribe", "trace",
       "trace_keep", "trace_stop")
#: Requests about one client id: asked first of the node the session registry names.
OWNED = ("client", "kick", "session", "session_clean", "client_subscriptions", "subscribe",
         "unsubscribe")
#: A remote trace ends unless its asker says it still wants it this often (seconds)...
TRACE_KEEP = 1.0
#: ...within this many seconds (the asker's node died, or lost NATS).
TRACE_LEASE = 5.0
#: Trace lines waiting to be sent to the asker at most; more are dropped and counted.
_TRACE_QUEUE = 10_000
#: An answer's part is sent once its rows reach this many bytes (NATS's default maximum
#: payload is 1 MiB).
_PART_BYTES = 256 * 1024


class ClusterControl:
    """This node's side of cluster-wide control: answering others, asking everyone."""

    def __init__(self, node_name: str, node_id: str, members: Membership,
                 registry: Registry | None, router: Router, timeout: float) -> None:
        self.node_name = node_name
        self.node_id = node_id
        self.members = members
        self.registry = registry
        self.clients = Clients(registry) if registry is not None else None
        self.sessions = Sessions(registry) if registry is not None else None
        #: The node's subscriptions as management changes them (handed in by the node;
        #: None: adding or deleting one for another node is refused).
        self.subscriptions: Subscriptions | None = None
        self.routes = Routes(router, node_name)
        self.timeout = timeout
        #: The node's traces (handed in by the node; None: remote traces are refused).
        self.traces: TraceManager | None = None
        #: Traces this node runs for other nodes' mqttd ctl: token -> (trace, sink, lease).
        self._remote: dict[str, tuple[Trace, _NatsSink, asyncio.TimerHandle]] = {}
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
        for token in list(self._remote):
            self._end_remote(token, "the node traced is leaving the cluster")
        for task in list(self._tasks):
            task.cancel()

    # --- answering ------------------------------------------------------------------------

    def _rows(self, op: str, arg: str | None, req: dict[str, Any]) -> Iterable[Row]:
        """This node's rows for a request (NotFound: none)."""
        if op.startswith("trace"):
            return self._trace_op(op, arg, req)
        if op == "routes":
            listing = self.routes.all() if arg is None else self.routes.lookup(arg)
            return listing.rows()
        registry = self.registry
        if registry is None or self.clients is None or self.sessions is None:
            return []
        if op == "sessions":
            return self.sessions.all(arg).rows()  # InvalidArgument for a bad kind
        if op == "subscriptions":
            return subscription_rows(list(registry.sessions.values()))
        if op != "clients" and not arg:
            return []
        if op == "session":
            return [self.sessions.get(str(arg))]
        if op == "session_clean":
            return [self.sessions.clean(str(arg))]
        if op in ("subscribe", "unsubscribe"):
            subs = self.subscriptions
            if subs is None:
                raise ValueError("subscriptions cannot be changed here")
            if registry.sessions.get(str(arg)) is None:
                return []  # not here: another node may hold it
            if op == "unsubscribe":
                try:
                    return [subs.delete(str(arg), str(req["topic"]))]
                except NotFound as err:  # the session is here: say what is missing
                    raise ValueError(err.message) from None
            return [subs.add(str(arg), str(req["topic"]), int(req["qos"]),
                             by=f"mqttd ctl on {req.get('from', 'another node')}")]
        if op == "client_subscriptions":
            session = registry.sessions.get(str(arg))
            return [] if session is None else subscription_rows([session])
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
                rows: Iterable[Row] = self._rows(op, arg, req)
            except NotFound:
                rows = []
            except (ValueError, KeyError, TypeError, MgmtError) as err:
                await nc.publish(reply, json.dumps(dict(head, last=True, rows=[],
                                                        error=str(err))).encode())
                return
            part: list[bytes] = []
            size = 0
            deadline = time.monotonic() + 0.004
            for row in rows:
                encoded = json.dumps(row, default=json_default, ensure_ascii=False).encode()
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

    # --- traces for other nodes -------------------------------------------------------------

    def _trace_op(self, op: str, arg: str | None, req: dict[str, Any]) -> list[Row]:
        token = str(req.get("token", ""))
        if op == "trace_keep":
            held = self._remote.get(token)
            if held is None or held[1].closed:  # ended here (trace stop): forget it
                self._end_remote(token, None)
                return []
            held[2].cancel()
            self._remote[token] = (held[0], held[1], self._lease(token))
            return [{"kept": True}]
        if op == "trace_stop":
            self._end_remote(token, None)
            return [{"stopped": True}]
        nc, traces = self.nc, self.traces
        if nc is None or traces is None or not arg or not token or token in self._remote:
            raise ValueError("cannot trace here")
        limit = req.get("payload_limit")
        sink = _NatsSink(nc, str(req["inbox"]), bool(req.get("json")))
        sink.head["id"] = self.node_id
        sink.destination = f"mqttd ctl on {req.get('from', 'another node')}"
        payload_limit = int(limit) if limit is not None else None
        if req.get("kind", "clientid") == "topic":
            trace = traces.start_topic(str(arg), sink, payload_limit)
            self._remote[token] = (trace, sink, self._lease(token))
            return [{"started": True}]
        trace = traces.start_client(str(arg), sink, payload_limit)
        self._remote[token] = (trace, sink, self._lease(token))
        return [{"started": True, "connected": str(arg) in traces.registry.channels}]

    def _lease(self, token: str) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(
            TRACE_LEASE, self._end_remote, token, "the asking node stopped asking")

    def _end_remote(self, token: str, reason: str | None) -> None:
        held = self._remote.pop(token, None)
        if held is None:
            return
        trace, sink, lease = held
        lease.cancel()
        if self.traces is not None:
            self.traces.stop(trace, reason)  # closes the sink (unless stopped already)
        sink.close(reason)

    async def trace(self, client_id: str, payload_limit: int | None, json_mode: bool,
                    write: Callable[[str, str, dict[str, Any]], None],
                    ended: Callable[[str, str | None], None],
                    kind: str = "clientid") -> RemoteTrace:
        """Trace ``client_id`` (``kind`` ``topic``: the messages published to a topic
        filter) on every other node up: ``write(node, line, event)`` for each line,
        ``ended(node, reason)`` when a node's trace ends by itself. Stop it with
        :meth:`RemoteTrace.stop`."""
        nc = self.nc
        handle = RemoteTrace(self)
        if nc is None or not nc.is_connected:
            handle.nodes = (await self.ask("trace", client_id))["nodes"]  # says why not
            return handle
        names = {p.id: p.name for p in self.members.up()}

        async def line(m: Msg) -> None:
            try:
                data = json.loads(m.data)
                name = names.get(data["id"])
                if name is None:
                    return
                if "end" in data:
                    handle.live.discard(data["id"])
                    ended(name, data["end"])
                else:
                    write(name, str(data["s"]), dict(data["e"]))
            except (ValueError, KeyError, TypeError):
                return

        handle.inbox = nc.new_inbox()
        handle.sub = await nc.subscribe(handle.inbox, cb=line)
        answer = await self.ask("trace", client_id, {
            "token": handle.token, "inbox": handle.inbox, "json": json_mode,
            "payload_limit": payload_limit, "kind": kind})
        handle.nodes = answer["nodes"]
        handle.live = {pid for pid, name in names.items() if any(
            n["node"] == name and n["answered"] for n in handle.nodes)}
        handle.keeper = asyncio.get_running_loop().create_task(handle.keep())
        return handle

    # --- asking ---------------------------------------------------------------------------

    async def ask(self, op: str, arg: str | None = None, extra: dict[str, Any] | None = None,
                  only: set[str] | None = None, node: str | None = None) -> dict[str, Any]:
        """Ask every other node counted up (``only``: those start tags; ``node``: that node
        name alone); wait at most ``timeout`` seconds.

        Returns ``{"rows": [...], "nodes": [...]}``: the other nodes' rows (each with its
        ``node``), and one entry per other node known, ``{"node", "answered", "reason"}``
        (why it has no rows: down, no answer in time, its error)."""
        nodes: list[dict[str, Any]] = []
        for peer in sorted(self.members.peers.values(), key=lambda p: p.name):
            if not peer.up and (node is None or peer.name == node):
                nodes.append({"node": peer.name, "answered": False,
                              "reason": f"down ({peer.reason})"})
        up = {p.id: p.name for p in self.members.up()
              if (only is None or p.id in only) and (node is None or p.name == node)}
        nc = self.nc
        if nc is None or not nc.is_connected:
            for name in sorted(up.values()):
                nodes.append({"node": name, "answered": False,
                              "reason": "not asked: this node is not connected to NATS"})
            return {"rows": [], "nodes": nodes,
                    "note": "this node is not connected to NATS: no other node was asked"}
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
            request = json.dumps(dict(extra or {}, op=op, arg=arg,
                                      **{"from": self.node_name})).encode()
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


class RemoteTrace:
    """A client trace running on the other nodes for this node's mqttd ctl."""

    def __init__(self, control: ClusterControl) -> None:
        self.control = control
        self.token = os.urandom(8).hex()
        self.inbox = ""
        self.sub: Subscription | None = None
        self.keeper: asyncio.Task[None] | None = None
        #: One entry per other node known: {"node", "answered", "reason"}.
        self.nodes: list[dict[str, Any]] = []
        #: The start tags of the nodes whose trace runs.
        self.live: set[str] = set()

    async def keep(self) -> None:
        """Tell the nodes tracing that this node still wants their lines."""
        while self.live:
            await asyncio.sleep(TRACE_KEEP)
            nc = self.control.nc
            if nc is None:
                return
            request = json.dumps({"op": "trace_keep", "token": self.token}).encode()
            for node_id in list(self.live):
                try:
                    await nc.publish(CTL + node_id, request)
                except Exception:  # noqa: BLE001,S110 - its lease runs out there
                    pass

    async def stop(self) -> None:
        if self.keeper is not None:
            self.keeper.cancel()
        nc = self.control.nc
        if nc is not None and self.live:
            request = json.dumps({"op": "trace_stop", "token": self.token}).encode()
            for node_id in self.live:
                try:
                    await nc.publish(CTL + node_id, request)
                except Exception:  # noqa: BLE001,S110 - its lease runs out there
                    pass
        self.live = set()
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except Exception:  # noqa: BLE001,S110 - the connection went away meanwhile
                pass
            self.sub = None


class _NatsSink:
    """A trace's lines sent to the asking node's inbox (in order, by one task; past
    ``_TRACE_QUEUE`` lines waiting, lines are dropped and the next one says how many)."""

    live = True

    def __init__(self, nc: NatsClient, inbox: str, json_mode: bool) -> None:
        self.nc = nc
        self.inbox = inbox
        self.json = json_mode
        self.destination = "mqttd ctl on another node"
        self.head = {"id": ""}
        self._queue: list[bytes] = []
        self._wake = asyncio.Event()
        self.dropped = 0
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._send())

    def write(self, text: str, event: dict[str, Any]) -> None:
        if len(self._queue) >= _TRACE_QUEUE:
            self.dropped += 1
            return
        if self.dropped:
            text = f"[{self.dropped} trace lines dropped: NATS is not keeping up]\n{text}"
            self.dropped = 0
        self._queue.append(json.dumps({"id": self.head["id"], "s": text, "e": event},
                                      default=json_default, ensure_ascii=False).encode())
        self._wake.set()

    def close(self, reason: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.append(json.dumps({"id": self.head["id"], "end": reason}).encode())
        self._queue.append(b"")  # the end: the task stops after sending what is queued
        self._wake.set()

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            queued, self._queue = self._queue, []
            for data in queued:
                if not data:
                    return
                try:
                    await self.nc.publish(self.inbox, data)
                except Exception:  # noqa: BLE001 - the asker's lease ends this trace
                    return


def _part(head: dict[str, Any], rows: list[bytes], last: bool) -> bytes:
    start = json.dumps(dict(head, last=last)).encode()[:-1]
    return start + b', "rows": [' + b",".join(rows) + b"]}"

"""The REST API under ``/api/v1/``: one route per management query or action.

Every handler asks the management facade and answers with the data ``mqttd ctl --json``
prints for the same command (the table :data:`ROUTES` says which), so the two front ends
cannot drift apart. The route table also generates the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import __version__
from ..mgmt.cluster import Gathered
from ..mgmt.errors import NotFound
from ..mgmt.listing import Listing, Row
from ..mgmt.publish import decode_payload
from ..mgmt.sessions import SESSION_KINDS
from .respond import (
    ApiError,
    Filter,
    json_body,
    json_response,
    listing_response,
    query_params,
)
from .trace import EventStream, NodeStream, TraceFiles, sse

if TYPE_CHECKING:
    from ..mgmt.api import Management
    from ..mgmt.publish import Publisher

__all__ = ["PREFIX", "ROUTES", "Api", "Route", "openapi"]

PREFIX = "/api/v1"

Handler = Callable[["Api", web.Request], Awaitable[web.StreamResponse]]

#: Query parameters every listing takes.
PAGING = ("limit", "cursor")
#: Query parameters of the listings answered for the whole cluster: ``local`` (this node's
#: rows alone, as on a single node) or ``node`` (one node's).
SCOPE = ("local", "node")
#: The header of a cluster listing naming every node and whether it answered (JSON).
NODES_HEADER = "X-Mqttd-Nodes"


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: method, path (aiohttp's syntax), handler, what it does, the ``mqttd
    ctl`` command that answers the same, and its query parameters and body fields."""

    method: str
    path: str
    handler: Handler
    summary: str
    ctl: str = ""
    query: tuple[str, ...] = ()
    body: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    listing: bool = False
    #: Answers text/event-stream (a live trace), not JSON.
    sse: bool = False
    tags: tuple[str, ...] = field(default=())


def _who(request: web.Request) -> str:
    return f"http api ({request.get('who', 'anonymous')})"


def _int_field(data: dict[str, Any], key: str, default: int | None = None) -> Any:
    value = data.get(key, default)
    if isinstance(value, bool) or (value is not None and not isinstance(value, int)):
        raise ApiError(400, "bad_request", f"{key}: expected an integer")
    return value


def _str_field(data: dict[str, Any], key: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "bad_request", f"{key}: expected a string")
    return value


class Api:
    """The handlers, bound to one node's management facade and publisher."""

    def __init__(self, mgmt: Management, publisher: Publisher,
                 trace_files: TraceFiles | None = None) -> None:
        self.mgmt = mgmt
        self.publisher = publisher
        self.trace_files = trace_files or TraceFiles(None)
        #: Live trace streams being served (ended when the listener closes).
        self.streams: set[EventStream] = set()

    # --- node -----------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.mgmt.status.node())

    async def broker(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.mgmt.status.broker())

    async def stats(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.mgmt.status.stats())

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.mgmt.status.metrics())

    async def vm(self, request: web.Request) -> web.StreamResponse:
        return json_response(await self.mgmt.vm.info())

    async def store(self, request: web.Request) -> web.StreamResponse:
        return json_response(await self.mgmt.store.status())

    async def log_level(self, request: web.Request) -> web.StreamResponse:
        return json_response({"level": self.mgmt.log.get()})

    async def set_log_level(self, request: web.Request) -> web.StreamResponse:
        data = await json_body(request, ("level",), ("level",))
        level = self.mgmt.log.set(_str_field(data, "level"), by=_who(request))
        return json_response({"level": level})

    # --- clients ----------------------------------------------------------------------------

    async def clients(self, request: web.Request) -> web.StreamResponse:
        q = query_params(request, (*PAGING, *SCOPE, "clientid_prefix", "username", "peer",
                                   "listener"))
        tests: list[Callable[[Row], bool]] = []
        prefix = q.get("clientid_prefix")
        if prefix:
            tests.append(lambda r: str(r.get("clientid", "")).startswith(prefix))
        if "username" in q:
            username = q["username"]
            tests.append(lambda r: r.get("username") == username)
        if "peer" in q:
            # a whole "host:port", or a host (IPv6 hosts are bracketed in peernames)
            peer = q["peer"]
            tests.append(lambda r: _peer_matches(str(r.get("peername") or ""), peer))
        if "listener" in q:
            listener = q["listener"]
            tests.append(lambda r: r.get("listener") == listener)
        keep: Filter = (lambda r: all(t(r) for t in tests)) if tests else None
        return await self._listing(request, q, "clients", None, self.mgmt.clients.all,
                                   _key("clientid"), keep)

    async def client(self, request: web.Request) -> web.StreamResponse:
        return await self._one(request, "client", self.mgmt.clients.get)

    async def kick(self, request: web.Request) -> web.StreamResponse:
        return await self._one(request, "kick", self.mgmt.clients.kick)

    # --- sessions -------------------------------------------------------------------------

    async def sessions(self, request: web.Request) -> web.StreamResponse:
        q = query_params(request, (*PAGING, *SCOPE, "kind"))
        kind = q.get("kind")
        return await self._listing(request, q, "sessions", kind,
                                   lambda: self.mgmt.sessions.all(kind), _key("clientid"))

    async def session(self, request: web.Request) -> web.StreamResponse:
        return await self._one(request, "session", self.mgmt.sessions.get)

    async def clean_session(self, request: web.Request) -> web.StreamResponse:
        return await self._one(request, "session_clean", self.mgmt.sessions.clean)

    # --- subscriptions --------------------------------------------------------------------

    async def subscriptions(self, request: web.Request) -> web.StreamResponse:
        q = query_params(request, (*PAGING, *SCOPE, "clientid"))
        client_id = q.get("clientid")
        subs = self.mgmt.subscriptions
        make: Callable[[], Listing[Any]] = (
            subs.all if client_id is None else (lambda: subs.of_client(client_id)))
        op = "subscriptions" if client_id is None else "client_subscriptions"
        return await self._listing(request, q, op, client_id, make, _key("clientid", "topic"))

    async def client_subscriptions(self, request: web.Request) -> web.StreamResponse:
        q = query_params(request, (*PAGING, *SCOPE))
        client_id = request.match_info["clientid"]
        return await self._listing(
            request, q, "client_subscriptions", client_id,
            lambda: self.mgmt.subscriptions.of_client(client_id), _key("clientid", "topic"))

    async def subscribe(self, request: web.Request) -> web.StreamResponse:
        data = await json_body(request, ("topic", "qos"), ("topic",))
        qos = _int_field(data, "qos", 0)
        topic = _str_field(data, "topic")
        return await self._one(
            request, "subscribe",
            lambda cid: self.mgmt.subscriptions.add(cid, topic, qos, by=_who(request)),
            {"topic": topic, "qos": qos})

    async def unsubscribe(self, request: web.Request) -> web.StreamResponse:
        q = query_params(request, ("topic", "local"))
        if "topic" not in q:
            raise ApiError(400, "bad_request", "topic: the query parameter is required "
                                               "(the filter, percent-encoded)")
        return await self._one(
            request, "unsubscribe",
            lambda cid: self.mgmt.subscriptions.delete(cid, q["topic"]), {"topic": q["topic"]})

    # --- routes and topics ----------------------------------------------------------------

    async def routes(self, request: web.Request) -> web.StreamResponse:
        q = query_params(request, (*PAGING, *SCOPE))
        return await self._listing(request, q, "routes", None, self.mgmt.routes.all,
                                   _key("topic"))

    async def route(self, request: web.Request) -> web.StreamResponse:
        q = query_params(request, (*PAGING, *SCOPE))
        topic = request.match_info["topic"]
        return await self._listing(request, q, "routes", topic,
                                   lambda: self.mgmt.routes.lookup(topic), _key("topic"))

    # --- the whole cluster ---------------------------------------------------------------

    async def _one(self, request: web.Request, op: str, here: Callable[[str], Row],
                   extra: dict[str, Any] | None = None) -> web.StreamResponse:
        """A client's or session's row (or what an action on it did): on this node, and in a
        cluster (unless ``?local=true``) on the node that holds it, the row with its
        ``node`` (``mqttd ctl clients show|kick``, ``sessions show|clean``, ``subscriptions
        add|del``)."""
        client_id = request.match_info["clientid"]
        local = request.query.get("local")
        if local is not None and local.lower() not in ("", "true", "1", "false", "0"):
            raise ApiError(400, "bad_request", f"local: true or false, not {local!r}")
        cluster = self.mgmt.cluster.active and (local is None or local.lower() in ("false",
                                                                                   "0"))
        try:
            row = here(client_id)
        except NotFound as err:
            if not cluster or err.what not in ("client", "session"):
                raise
            gathered = await self.mgmt.cluster.gather(op, client_id, extra=extra)
            if not gathered.rows:
                raise ApiError(404, err.reason, err.message + _unasked(gathered)) from None
            return json_response(gathered.rows[0])
        return json_response(dict(row, node=self.mgmt.node_name) if cluster else row)

    async def _listing(self, request: web.Request, q: dict[str, str], op: str,
                       arg: str | None, make: Callable[[], Listing[Any]],
                       key: Callable[[Row], Any], keep: Filter = None) -> web.StreamResponse:
        """A listing: this node's (``make``) on a single node or with ``?local=true``; in a
        cluster, every node's rows (``op``/``arg`` asked of the others), each with its
        ``node``, and the :data:`NODES_HEADER` saying which nodes answered; ``?node=<name>``
        one node's rows."""
        scope = _scope(q, self.mgmt.cluster.active)
        if scope is False:
            return await listing_response(request, make, key, keep)
        me = self.mgmt.node_name
        node = scope if isinstance(scope, str) else None
        if node is not None and node != me and not self.mgmt.cluster.known(node):
            raise ApiError(404, "not_found", f"node {node!r} is not known in the cluster")
        mine = node is None or node == me
        missing: NotFound | None = None
        if mine:
            try:
                make()  # a bad argument is answered here, before asking the others
            except NotFound as err:
                missing = err
        gathered = Gathered() if node == me else await self.mgmt.cluster.gather(op, arg, node)
        if missing is not None and not gathered.rows:
            raise ApiError(404, missing.reason, missing.message + _unasked(gathered))
        nodes = ([{"node": me, "answered": True, "reason": ""}] if mine else []) \
            + gathered.nodes
        # In node order: the nodes answer in any order, and a page's cursor counts rows.
        remote = sorted(gathered.rows, key=lambda r: str(r.get("node")))
        headers = {NODES_HEADER: json.dumps(nodes, separators=(",", ":"))}
        if gathered.note is not None:
            headers["X-Mqttd-Note"] = json.dumps(gathered.note)[1:-1]

        def merged() -> Listing[tuple[bool, Any]]:
            local: Listing[Any] = Listing([], _no_row)
            if mine:
                try:
                    local = make()
                except NotFound:
                    pass
            row = local.row

            def either(pair: tuple[bool, Any]) -> Row | None:
                if not pair[0]:
                    return pair[1]  # type: ignore[no-any-return]
                r = row(pair[1])
                return None if r is None else dict(r, node=me)

            return Listing(itertools.chain(((True, i) for i in local.items),
                                           ((False, r) for r in remote)), either)

        return await listing_response(request, merged, lambda r: [r.get("node"), key(r)],
                                      keep, headers)

    # --- retained -------------------------------------------------------------------------

    async def retained(self, request: web.Request) -> web.StreamResponse:
        query_params(request, PAGING)
        return await listing_response(request, self.mgmt.retained.all, _key("topic"))

    async def retained_show(self, request: web.Request) -> web.StreamResponse:
        return json_response(await self.mgmt.retained.show(request.match_info["topic"]))

    async def retained_delete(self, request: web.Request) -> web.StreamResponse:
        n = await self.mgmt.retained.clean(request.match_info["topic"], by=_who(request))
        return json_response({"cleaned": n})

    async def retained_clear(self, request: web.Request) -> web.StreamResponse:
        n = await self.mgmt.retained.clean(None, by=_who(request))
        return json_response({"cleaned": n})

    # --- listeners ------------------------------------------------------------------------

    async def listeners(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.mgmt.listeners.all())

    async def listener_stop(self, request: web.Request) -> web.StreamResponse:
        return json_response(await self.mgmt.listeners.stop(request.match_info["name"]))

    async def listener_restart(self, request: web.Request) -> web.StreamResponse:
        return json_response(await self.mgmt.listeners.restart(request.match_info["name"]))

    async def listener_reload(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.mgmt.listeners.reload(request.match_info["name"]))

    # --- banned ---------------------------------------------------------------------------

    async def banned(self, request: web.Request) -> web.StreamResponse:
        query_params(request, PAGING)
        return await listing_response(request, self.mgmt.banned.all, _key("as", "who"))

    async def ban(self, request: web.Request) -> web.StreamResponse:
        data = await json_body(request, ("as", "who", "reason", "until", "duration"),
                               ("as", "who"))
        for key in ("until", "duration"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (str, int, float))):
                raise ApiError(400, "bad_request", f"{key}: expected a string or a number")
        row = self.mgmt.banned.add(_str_field(data, "as"), _str_field(data, "who"),
                                   by=_who(request),
                                   reason=_str_field(data, "reason", optional=True) or "",
                                   until=data.get("until"), duration=data.get("duration"))
        return json_response(row)

    async def unban(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.mgmt.banned.delete(request.match_info["as"],
                                                     request.match_info["who"]))

    # --- users ----------------------------------------------------------------------------

    async def users(self, request: web.Request) -> web.StreamResponse:
        query_params(request, PAGING)
        return await listing_response(request, self.mgmt.users.all, _key("username"))

    async def user_add(self, request: web.Request) -> web.StreamResponse:
        data = await json_body(request, ("username", "password", "is_superuser"),
                               ("username", "password"))
        superuser = data.get("is_superuser", False)
        if not isinstance(superuser, bool):
            raise ApiError(400, "bad_request", "is_superuser: expected true or false")
        row = await self.mgmt.users.add(_str_field(data, "username"),
                                        _str_field(data, "password"), superuser=superuser,
                                        by=_who(request))
        return json_response(row)

    async def user_passwd(self, request: web.Request) -> web.StreamResponse:
        data = await json_body(request, ("password",), ("password",))
        row = await self.mgmt.users.passwd(request.match_info["username"],
                                           _str_field(data, "password"), by=_who(request))
        return json_response(row)

    async def user_delete(self, request: web.Request) -> web.StreamResponse:
        return json_response(await self.mgmt.users.delete(request.match_info["username"],
                                                          by=_who(request)))

    # --- trace, plugins -------------------------------------------------------------------

    async def traces(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.mgmt.trace.all())

    async def trace_start_client(self, request: web.Request) -> web.StreamResponse:
        return await self._trace_start(request, "clientid", request.match_info["clientid"])

    async def trace_start_topic(self, request: web.Request) -> web.StreamResponse:
        return await self._trace_start(request, "topic", request.match_info["topic"])

    async def _trace_start(self, request: web.Request, kind: str, target: str
                           ) -> web.StreamResponse:
        """A file trace in ``<data_dir>/trace/<name>.log`` (``mqttd ctl trace start``);
        the answer is ctl's plus the name to download it by."""
        data = (await json_body(request, ("name", "json", "payload_limit"))
                if request.body_exists else {})
        self.mgmt.trace.check(kind, target)
        name = _str_field(data, "name", optional=True)
        if name is None:
            name = TraceFiles.default_name(kind, target)
        json_lines = data.get("json", False)
        if not isinstance(json_lines, bool):
            raise ApiError(400, "bad_request", "json: expected true or false")
        limit = _payload_limit(_int_field(data, "payload_limit"))
        path = self.trace_files.create_path(name)
        row = self.mgmt.trace.start_file(kind, target, path, json_lines=json_lines,
                                         payload_limit=limit)
        return json_response({**row, "name": name})

    async def trace_stop_client(self, request: web.Request) -> web.StreamResponse:
        return self._trace_stop(request, "clientid", request.match_info["clientid"])

    async def trace_stop_topic(self, request: web.Request) -> web.StreamResponse:
        return self._trace_stop(request, "topic", request.match_info["topic"])

    def _trace_stop(self, request: web.Request, kind: str, target: str) -> web.Response:
        return json_response(self.mgmt.trace.stop_target(
            kind, target, f"trace stopped by {_who(request)}"))

    async def trace_files_list(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.trace_files.all(self.mgmt.trace))

    async def trace_download(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self.trace_files.path(name)
        if not os.path.isfile(path):
            raise ApiError(404, "not_found", f"no trace file {name!r}")
        # the file as it is now (a running trace goes on appending to it)
        return web.FileResponse(path, headers={
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}.log"'})

    async def trace_stream_client(self, request: web.Request) -> web.StreamResponse:
        return await self._trace_stream(request, "clientid", request.match_info["clientid"])

    async def trace_stream_topic(self, request: web.Request) -> web.StreamResponse:
        return await self._trace_stream(request, "topic", request.match_info["topic"])

    async def _trace_stream(self, request: web.Request, kind: str, target: str
                            ) -> web.StreamResponse:
        """A live trace as server-sent events (``mqttd ctl trace client|topic``); in a
        cluster (unless ``?local=true``) on every node up, each event with its ``node``."""
        q = query_params(request, ("payload_limit", "local"))
        cluster = _scope({"local": q["local"]} if "local" in q else {},
                         self.mgmt.cluster.active) is not False
        limit = None
        if "payload_limit" in q:
            try:
                limit = _payload_limit(int(q["payload_limit"]))
            except ValueError:
                raise ApiError(400, "bad_request", "payload_limit: expected an integer"
                               ) from None
        traces = self.mgmt.trace
        traces.check(kind, target)
        stream = EventStream(f"http api ({request.get('who', 'anonymous')})")
        stream.transport = request.transport
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        peer = traces.client_peer(target) if kind == "clientid" else None
        me = self.mgmt.node_name
        start: dict[str, Any] = {"type": kind, "target": target, "connected": peer}
        remote = None
        if cluster:
            trace = traces.start(kind, target, NodeStream(stream, me), limit)

            def write(node: str, line: str, event: dict[str, Any]) -> None:
                stream.write(line, dict(event, node=node))

            def ended(node: str, reason: str | None) -> None:
                stream.note("node_end", {"node": node, "reason": reason or "trace ended"})

            remote = await self.mgmt.cluster.trace(target, limit, True, write, ended, kind)
            start["nodes"] = [{"node": me, "answered": True, "reason": ""}, *remote.nodes]
        else:
            trace = traces.start(kind, target, stream, limit)
        start["payload_limit"] = trace.payload_limit
        self.streams.add(stream)
        try:
            await resp.write(sse("start", start))
            await stream.pump(request, resp)
        except ConnectionError:
            pass  # the reader went away: the trace ends below
        finally:
            self.streams.discard(stream)
            traces.stop(trace)
            if remote is not None:
                await remote.stop()
        return resp

    async def end_streams(self, reason: str, grace: float = 1.0) -> None:
        """End every live stream (the listener is closing): each is told ``reason``; a
        stream whose reader has not taken that within ``grace`` seconds (it stopped
        reading) is cut, so it cannot hold the shutdown up."""
        for stream in list(self.streams):
            stream.close(reason)
        for _ in range(int(grace / 0.05)):
            if not self.streams:
                return
            await asyncio.sleep(0.05)
        for stream in list(self.streams):
            if stream.transport is not None:
                stream.transport.abort()

    async def plugins(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.mgmt.plugins.all())

    # --- publish --------------------------------------------------------------------------

    async def publish(self, request: web.Request) -> web.StreamResponse:
        data = await json_body(request, ("topic", "payload", "payload_encoding", "qos",
                                         "retain", "properties"), ("topic",))
        payload = decode_payload(data.get("payload"), data.get("payload_encoding"))
        row = self.publisher.publish(data["topic"], payload, qos=data.get("qos", 0),
                                     retain=data.get("retain", False),
                                     properties=data.get("properties"), by=_who(request))
        return json_response(row)

    # --- the document ---------------------------------------------------------------------

    async def openapi_json(self, request: web.Request) -> web.StreamResponse:
        return json_response(openapi())


def _key(*names: str) -> Callable[[Row], Any]:
    if len(names) == 1:
        (name,) = names
        return lambda r: r.get(name)
    return lambda r: [r.get(n) for n in names]


def _no_row(item: Any) -> Row | None:
    return None


def _scope(q: dict[str, str], cluster: bool) -> bool | str | None:
    """What a listing covers: False this node alone (no cluster, or ``?local=true``), None
    every node, a name that node."""
    local = q.get("local")
    if local is not None and local.lower() not in ("", "true", "1", "false", "0"):
        raise ApiError(400, "bad_request", f"local: true or false, not {local!r}")
    if not cluster:
        if q.get("node"):
            raise ApiError(404, "not_found", "this node is not in a cluster ([cluster] "
                                             "nats_url is not set): no node to ask")
        return False
    if local is not None and local.lower() in ("", "true", "1"):
        return False
    return q.get("node") or None


def _unasked(gathered: Gathered) -> str:
    """What a 404 in a cluster cannot rule out: the nodes that did not answer."""
    if gathered.note is not None:
        return f" on this node ({gathered.note})"
    silent = gathered.silent
    if not silent:
        return ""
    return " (no answer from " + ", ".join(f"{n['node']}: {n['reason']}" for n in silent) \
        + ")"


def _peer_matches(peername: str, peer: str) -> bool:
    if peername == peer:
        return True
    host = peername.rpartition(":")[0]
    return host == peer or host.strip("[]") == peer


def _payload_limit(value: int | None) -> int | None:
    if value is not None and value < 0:
        raise ApiError(400, "bad_request", "payload_limit: expected 0 or more bytes")
    return value


def _kinds() -> str:
    return "|".join(SESSION_KINDS)


ROUTES: list[Route] = [
    Route("GET", "/status", Api.status, "Node status: version, uptime, speedups", "status"),
    Route("GET", "/broker", Api.broker, "Broker version, uptime and description", "broker"),
    Route("GET", "/stats", Api.stats, "Broker statistics (counts and maxima)",
          "broker stats"),
    Route("GET", "/metrics", Api.metrics, "Broker metrics (counters)", "broker metrics"),
    Route("GET", "/vm", Api.vm, "Memory, CPU, descriptors, tasks, event-loop lag", "vm"),
    Route("GET", "/store", Api.store, "The durable store's figures", "store status"),
    Route("GET", "/log/level", Api.log_level, "The log level", "log level"),
    Route("PUT", "/log/level", Api.set_log_level, "Set the log level",
          "log level <Level>", body=("level",), required=("level",)),
    Route("GET", "/clients", Api.clients, "Connected clients (filters: client id prefix, "
          "user name, peer host or host:port, listener)", "clients list",
          query=(*PAGING, *SCOPE, "clientid_prefix", "username", "peer", "listener"),
          listing=True),
    Route("GET", "/clients/{clientid}", Api.client, "One client", "clients show <ClientId>",
          query=("local",)),
    Route("DELETE", "/clients/{clientid}", Api.kick,
          "Kick a client (MQTT 5: DISCONNECT 0x98)", "clients kick <ClientId>",
          query=("local",)),
    Route("GET", "/clients/{clientid}/subscriptions", Api.client_subscriptions,
          "A client's subscriptions", "subscriptions show <ClientId>",
          query=(*PAGING, *SCOPE), listing=True),
    Route("POST", "/clients/{clientid}/subscriptions", Api.subscribe,
          "Subscribe a client's session to a filter", "subscriptions add <ClientId> <Topic> "
          "<QoS>", query=("local",), body=("topic", "qos"), required=("topic",)),
    Route("DELETE", "/clients/{clientid}/subscriptions", Api.unsubscribe,
          "Unsubscribe a client's session (?topic=<filter>)",
          "subscriptions del <ClientId> <Topic>", query=("topic", "local")),
    Route("GET", "/sessions", Api.sessions, f"Sessions (kind: {_kinds()})",
          "sessions list [persistent|transient]", query=(*PAGING, *SCOPE, "kind"),
          listing=True),
    Route("GET", "/sessions/{clientid}", Api.session, "One session",
          "sessions show <ClientId>", query=("local",)),
    Route("DELETE", "/sessions/{clientid}", Api.clean_session,
          "Discard a session (kicking its client)", "sessions clean <ClientId>",
          query=("local",)),
    Route("GET", "/subscriptions", Api.subscriptions, "Every subscription (or a client's)",
          "subscriptions list", query=(*PAGING, *SCOPE, "clientid"), listing=True),
    Route("GET", "/routes", Api.routes, "The routing table", "routes list",
          query=(*PAGING, *SCOPE), listing=True),
    Route("GET", "/routes/{topic:.+}", Api.route,
          "The routes a message to a topic takes (a filter: its own route)",
          "routes show <Topic>", query=(*PAGING, *SCOPE), listing=True),
    Route("GET", "/topics", Api.routes, "Topics with subscribers (the routing table)",
          "routes list", query=(*PAGING, *SCOPE), listing=True),
    Route("GET", "/retained", Api.retained, "Retained messages, without payloads",
          "retained list", query=PAGING, listing=True),
    Route("GET", "/retained/{topic:.+}", Api.retained_show,
          "The retained message(s) of a topic or filter, with payload",
          "retained show <Topic>"),
    Route("DELETE", "/retained/{topic:.+}", Api.retained_delete,
          "Delete the retained messages of a topic or filter", "retained clean <Topic>"),
    Route("DELETE", "/retained", Api.retained_clear, "Delete every retained message",
          "retained clean"),
    Route("GET", "/listeners", Api.listeners, "Listeners", "listeners list"),
    Route("POST", "/listeners/{name}/stop", Api.listener_stop,
          "Stop a listener and close its clients", "listeners stop <Name>"),
    Route("POST", "/listeners/{name}/restart", Api.listener_restart, "(Re)start a listener",
          "listeners restart <Name>"),
    Route("POST", "/listeners/{name}/reload", Api.listener_reload,
          "Reload a TLS listener's certificate and key", "listeners reload <Name>"),
    Route("GET", "/banned", Api.banned, "Bans in force", "banned list", query=PAGING,
          listing=True),
    Route("POST", "/banned", Api.ban, "Ban a client id, user name or address",
          "banned add ...", body=("as", "who", "reason", "until", "duration"),
          required=("as", "who")),
    Route("DELETE", "/banned/{as}/{who}", Api.unban, "Lift a ban",
          "banned del <As> <Who>"),
    Route("GET", "/users", Api.users, "The built-in user table", "users list", query=PAGING,
          listing=True),
    Route("POST", "/users", Api.user_add, "Add a user", "users add <Username> <Password>",
          body=("username", "password", "is_superuser"), required=("username", "password")),
    Route("PUT", "/users/{username}", Api.user_passwd, "Change a user's password",
          "users passwd <Username> <Password>", body=("password",), required=("password",)),
    Route("DELETE", "/users/{username}", Api.user_delete, "Delete a user",
          "users del <Username>"),
    Route("GET", "/trace", Api.traces, "Running traces", "trace list"),
    Route("POST", "/trace/clients/{clientid}", Api.trace_start_client,
          "Trace a client to <data_dir>/trace/<name>.log", "trace start client <ClientId> "
          "<File>", body=("name", "json", "payload_limit")),
    Route("POST", "/trace/topics/{topic:.+}", Api.trace_start_topic,
          "Trace messages to a topic filter to <data_dir>/trace/<name>.log",
          "trace start topic <Topic> <File>", body=("name", "json", "payload_limit")),
    Route("DELETE", "/trace/clients/{clientid}", Api.trace_stop_client,
          "Stop every trace of a client", "trace stop client <ClientId>"),
    Route("DELETE", "/trace/topics/{topic:.+}", Api.trace_stop_topic,
          "Stop every trace of a topic filter", "trace stop topic <Topic>"),
    Route("GET", "/trace/clients/{clientid}/stream", Api.trace_stream_client,
          "A client's packets, live, as server-sent events", "trace client <ClientId>",
          query=("payload_limit", "local"), sse=True),
    Route("GET", "/trace/topics/{topic:.+}/stream", Api.trace_stream_topic,
          "Messages to a topic filter, live, as server-sent events", "trace topic <Topic>",
          query=("payload_limit", "local"), sse=True),
    Route("GET", "/trace/files", Api.trace_files_list,
          "Trace files started over HTTP: name, size, modified, running"),
    Route("GET", "/trace/files/{name}", Api.trace_download, "Download a trace file"),
    Route("GET", "/plugins", Api.plugins, "Loaded and installed plugins", "plugins list"),
    Route("POST", "/publish", Api.publish, "Publish a message", "",
          body=("topic", "payload", "payload_encoding", "qos", "retain", "properties"),
          required=("topic",)),
    Route("GET", "/openapi.json", Api.openapi_json, "This document"),
]


def add_routes(app: web.Application, api: Api) -> None:
    """Register every route of :data:`ROUTES` on ``app``, bound to ``api``."""
    for route in ROUTES:
        handler = route.handler

        async def bound(request: web.Request, _h: Handler = handler) -> web.StreamResponse:
            return await _h(api, request)

        app.router.add_route(route.method, PREFIX + route.path, bound)


# --- OpenAPI ------------------------------------------------------------------------------------

_BODY_TYPES: dict[str, dict[str, Any]] = {
    "qos": {"type": "integer", "enum": [0, 1, 2]},
    "retain": {"type": "boolean"}, "is_superuser": {"type": "boolean"},
    "properties": {"type": "object", "description": "MQTT 5 PUBLISH properties: "
                   "payload_format_indicator, message_expiry_interval, content_type, "
                   "response_topic, correlation_data (text), user_property "
                   "([[name, value], ...] or {name: value})"},
    "payload_encoding": {"type": "string", "enum": ["plain", "base64"]},
    "until": {"oneOf": [{"type": "string"}, {"type": "number"}]},
    "duration": {"oneOf": [{"type": "string"}, {"type": "number"}]},
}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in :data:`ROUTES` (and ``/metrics``)."""
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        path = PREFIX + r.path.replace(":.+}", "}")
        params: list[dict[str, Any]] = []
        for name in _path_params(r.path):
            params.append({"name": name, "in": "path", "required": True,
                           "schema": {"type": "string"}})
        for name in r.query:
            params.append({"name": name, "in": "query", "required": name == "topic"
                           and r.method == "DELETE", "schema": {"type": "string"}})
        op: dict[str, Any] = {
            "summary": r.summary, "operationId": f"{r.method.lower()}{_op_name(r.path)}",
            "parameters": params,
            "responses": {"200": {"description": "what `mqttd ctl --json "
                                  f"{r.ctl}` prints" if r.ctl else "the result",
                                  "content": {"application/json": {"schema": (
                                      {"type": "array", "items": {"type": "object"}}
                                      if r.listing else {})}}},
                          "400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR}}
        if r.sse:
            op["responses"]["200"]["content"] = {"text/event-stream": {"schema": {
                "type": "string", "description": "events start, trace, dropped, end; each "
                "data line one JSON object (docs/HTTP.md)"}}}
        elif r.path == "/trace/files/{name}":
            op["responses"]["200"]["content"] = {"text/plain": {}}
        if r.listing:
            op["description"] = ("Without limit the whole array is streamed; with limit, "
                                 "one page, and X-Next-Cursor / Link rel=next when more "
                                 "follow (pass it as cursor).")
            if "local" in r.query:
                op["description"] += (
                    " In a cluster: every node's rows, each with its node, and the "
                    f"{NODES_HEADER} header (JSON: node, answered, reason); local=true: "
                    "this node's alone; node=<name>: that node's.")
        if r.body:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"type": "object", "additionalProperties": False,
                           "required": list(r.required),
                           "properties": {b: _BODY_TYPES.get(b, {"type": "string"})
                                          for b in r.body}}}}}
        paths.setdefault(path, {})[r.method.lower()] = op
    paths["/metrics"] = {"get": {"summary": "Every metric and stat in the Prometheus text "
                                 "format", "operationId": "prometheusMetrics",
                                 "responses": {"200": {"description": "text exposition",
                                                       "content": {"text/plain": {}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mqttd management API", "version": __version__,
                 "description": "Every answer equals what `mqttd ctl --json` prints for the "
                                "same command (docs/HTTP.md)."},
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["code", "message"],
                                  "properties": {"code": {"type": "string"},
                                                 "message": {"type": "string"}}}},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"},
                                "basic": {"type": "http", "scheme": "basic"}}},
        "security": [{"apiKey": []}, {"basic": []}],
    }


def _path_params(path: str) -> list[str]:
    out = []
    for part in path.split("/"):
        if part.startswith("{"):
            out.append(part[1:-1].split(":")[0])
    return out


def _op_name(path: str) -> str:
    words = [p.strip("{}").split(":")[0] for p in path.split("/") if p]
    return "".join(w[:1].upper() + w[1:] for w in words).replace(".", "").replace("_", "")


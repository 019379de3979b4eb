"""The built-in control commands (EMQX's emqx_mgmt_cli): the usage table and the rendering.

Every handler asks the management facade (``ctx.mgmt``, :mod:`mqttd.mgmt`)
and renders what it answers. Human output follows emqx_ctl where its shape
serves (``key : value`` blocks, ``topic -> node`` lines, ``Client``/``Trace(...)``
strings, ``ok``) and uses tables for listings; every command also answers
``--json``. Listings page over management's snapshots (see
:meth:`Context.table`), so a node with 100,000 clients keeps serving them
while it is listed.

Management errors become ctl errors here where emqx_ctl has its own wording
(``Not Found.``, ``Failed to stop <Name> listener: not_running``); any other
one is shown as management words it, an invalid argument as a usage error
(:meth:`mqttd.ctl.server.CtlServer.run`).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..mgmt.apikeys import ApiKeys
from ..mgmt.cluster import Gathered
from ..mgmt.conf import reload_text
from ..mgmt.errors import Conflict, Failed, NotFound, Unavailable
from ..mgmt.listing import Listing, Row, same
from ..trace.format import format_bytes, format_properties
from ..trace.sinks import LiveSink
from .context import Col, Context
from .table import Args, CommandTable, CtlError, Handler, UsageError

__all__ = ["COMMANDS", "build_table"]

#: Who management's log lines say asked.
BY = "mqttd ctl"
#: Errors are worded as ``mqttd ctl: <what>``; a missing thing says which one it is.
NOT_FOUND = "not_found"
_PROTO = {3: "3.1", 4: "3.1.1", 5: "5.0"}
#: Keys of client and session rows shown as local times.
_TIME_KEYS = ("created_at", "connected_at", "disconnected_at")
T = TypeVar("T")


# --- formatting helpers ---------------------------------------------------------------------

def when(value: Any) -> str:
    """An ISO time (as rows hold them) as ``YYYY-MM-DD HH:MM:SS`` local time."""
    if not value:
        return "-"
    return str(value)[:19].replace("T", " ")


def proto(value: Any) -> str:
    """A protocol level as its MQTT version (5 -> ``5.0``)."""
    return _PROTO.get(value, str(value)) if value else "-"


def expiry(value: Any) -> str:
    """A Session Expiry Interval (``never`` for 0xFFFFFFFF)."""
    if value is None:
        return "-"
    return "never" if value == 0xFFFFFFFF else str(value)


def _int(value: str | None, name: str, noun: str, lo: int = 0, hi: int = 1 << 30) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{name} must be an integer, not {value!r}", noun) from None
    if not lo <= n <= hi:
        raise UsageError(f"{name} must be between {lo} and {hi}", noun)
    return n


def _not_found(err: NotFound) -> CtlError:
    return CtlError(err.message, reason=NOT_FOUND)


def _plural(word: str) -> Callable[[int], str]:
    return lambda n: f"{n} {word}{'' if n == 1 else 's'}"


def _kv_width(values: dict[str, Any]) -> int:
    """emqx_ctl's ``~-30s``, wider when a name needs it."""
    return max([30] + [len(k) + 1 for k in values])


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1048576:.1f} MiB"


def _show(ctx: Context, row: Row) -> None:
    """One client's or session's row as ``key : value`` lines (or JSON)."""
    if ctx.json:
        ctx.emit_json(row)
        return
    fmt: dict[str, Callable[[Any], str]] = {k: when for k in _TIME_KEYS}
    fmt.update(proto_ver=proto, expiry_interval=expiry)
    ctx.kv([(k, fmt[k](v) if k in fmt else v) for k, v in row.items()])


# --- the table ------------------------------------------------------------------------------

def build_table() -> CommandTable[Context]:
    """A command table holding every built-in command."""
    table: CommandTable[Context] = CommandTable()
    for usage, handler, description in COMMANDS:
        table.register(usage, handler, description)
    return table


# --- status, broker, vm, log, stop ----------------------------------------------------------

async def cmd_status(ctx: Context, a: Args) -> None:
    data = ctx.mgmt.status.node()
    if ctx.json:
        ctx.emit_json(data)
        return
    ctx.out(f"Node {data['node']} {data['version']} is started")
    pairs: list[tuple[str, Any]] = [
        ("pid", data["pid"]), ("uptime", data["uptime"]),
        ("speedups", ", ".join(f"{k}={v}" for k, v in data["speedups"].items())),
        ("loop", data["loop"]), ("python", data["python"]), ("data_dir", data["data_dir"])]
    workers = data.get("workers")
    if workers is not None:
        pairs.append(("workers", ", ".join(f"{w['name']}={w['state']}" for w in workers)
                      or "none"))
    ctx.kv(pairs, width=10)


async def cmd_broker(ctx: Context, a: Args) -> None:
    data = ctx.mgmt.status.broker()
    ctx.kv([("sysdescr", data["sysdescr"]), ("version", data["version"]),
            ("uptime", data["uptime"]), ("datetime", when(data["datetime"]))], data, width=10)


def _counters(ctx: Context, data: Row, key: str) -> None:
    """``broker stats`` / ``broker metrics``: the note first, then ``name : value`` lines."""
    if ctx.json:
        ctx.emit_json(data)
        return
    if data["note"]:
        ctx.out(f"# {data['note']}")
    values: dict[str, Any] = data[key]
    ctx.kv(list(values.items()), width=_kv_width(values))


async def cmd_broker_stats(ctx: Context, a: Args) -> None:
    _counters(ctx, ctx.mgmt.status.stats(), "stats")


async def cmd_broker_metrics(ctx: Context, a: Args) -> None:
    _counters(ctx, ctx.mgmt.status.metrics(), "metrics")


async def cmd_vm(ctx: Context, a: Args) -> None:
    data = await ctx.mgmt.vm.info()
    if ctx.json:
        ctx.emit_json(data)
        return
    fmt: dict[str, Callable[[Any], str]] = {"memory/rss": _mib, "memory/peak_rss": _mib,
                                            "memory/virtual": _mib}
    pairs = []
    for group, values in data.items():
        for key, value in values.items():
            name = f"{group}/{key}"
            shown = fmt[name](value) if name in fmt else (
                " ".join(map(str, value)) if isinstance(value, list) else value)
            pairs.append((name, shown))
    ctx.kv(pairs, width=22)


async def cmd_log_level(ctx: Context, a: Args) -> None:
    (level,) = a.pos
    log_level = ctx.mgmt.log
    current = log_level.get() if level is None else log_level.set(level, by=BY)
    ctx.result(current, {"level": current})


async def cmd_stop(ctx: Context, a: Args) -> None:
    node = ctx.mgmt.node_name
    if not ctx.json:
        ctx.err(f"Stopping {node} (pid {os.getpid()})...")
    await ctx.flush()
    data = await ctx.mgmt.stop_node(f"stop requested by {BY}")
    ctx.result(f"{node} stopped", data)


async def cmd_help(ctx: Context, a: Args) -> None:
    (noun,) = a.pos
    commands = ctx.commands
    if noun is not None:
        if not commands.has_noun(noun):
            raise UsageError(f"unknown command {noun!r}; see 'mqttd ctl help'")
        lines = commands.usage_lines(noun)
        ctx.result("\n".join(lines), [d for d in commands.help_data()
                                      if d["command"] == noun])
        return
    if ctx.json:
        ctx.emit_json(commands.help_data())
    else:
        ctx.out(commands.help_text())


# --- clients --------------------------------------------------------------------------------

CLIENT_COLUMNS = [
    Col("clientid", "Client ID"), Col("username", "Username"), Col("peername", "Peer"),
    Col("proto_ver", "Proto", proto), Col("clean_start", "Clean"),
    Col("keepalive", "Keepalive", justify="right"),
    Col("expiry_interval", "Expiry", expiry, "right"),
    Col("subscriptions", "Subs", justify="right"), Col("inflight", "Inflight", justify="right"),
    Col("awaiting_rel", "AwaitRel", justify="right"),
    Col("send_msg", "Sent", justify="right"), Col("mqueue_len", "Queued", justify="right"),
    Col("dropped", "Dropped", justify="right"), Col("connected", "Connected"),
    Col("connected_at", "Connected at", when),
]


async def cmd_clients_list(ctx: Context, a: Args) -> None:
    clients = ctx.mgmt.clients.all()
    if a.opts["local"] or not ctx.mgmt.cluster.active:
        await ctx.table(CLIENT_COLUMNS, clients.items, clients.row, footer=_plural("client"))
        return
    gathered = await ctx.mgmt.cluster.gather("clients")
    await _cluster_table(ctx, gathered, "clients", CLUSTER_CLIENT_COLUMNS, clients.items,
                         clients.row, None, "client")


async def cmd_clients_show(ctx: Context, a: Args) -> None:
    (client_id,) = a.pos
    try:
        row = ctx.mgmt.clients.get(client_id)
        if ctx.mgmt.cluster.active and not a.opts["local"]:
            row = dict(row, node=ctx.mgmt.node_name)
    except NotFound as err:
        if ctx.mgmt.cluster.active and not a.opts["local"]:
            gathered = await ctx.mgmt.cluster.gather("client", client_id)
            if gathered.rows:
                _show(ctx, gathered.rows[0])
                return
            message = err.message + _unasked(gathered)
        else:
            message = err.message
        if ctx.mgmt.sessions.exists(client_id):
            message += f" (its session is held offline: mqttd ctl sessions show {client_id})"
        raise CtlError(message, reason=NOT_FOUND) from None
    _show(ctx, row)


async def cmd_clients_kick(ctx: Context, a: Args) -> None:
    (client_id,) = a.pos
    cluster = ctx.mgmt.cluster.active and not a.opts["local"]
    try:
        data = ctx.mgmt.clients.kick(client_id)
        if cluster:
            data = dict(data, node=ctx.mgmt.node_name)
    except NotFound as err:
        if not cluster:
            raise _not_found(err) from None
        # Not here: every other node kicks it if it holds it (one does, at most).
        data = await _on_its_node(ctx, err, "kick", client_id)
    ctx.result("ok", data)


# --- sessions -------------------------------------------------------------------------------

SESSION_COLUMNS = [
    Col("clientid", "Client ID"), Col("connected", "Connected"),
    Col("persistent", "Persistent"), Col("expiry_interval", "Expiry", expiry, "right"),
    Col("subscriptions", "Subs", justify="right"), Col("inflight", "Inflight", justify="right"),
    Col("mqueue_len", "Queued", justify="right"), Col("dropped", "Dropped", justify="right"),
    Col("awaiting_rel", "AwaitRel", justify="right"), Col("created_at", "Created at", when),
]


async def cmd_sessions_list(ctx: Context, a: Args) -> None:
    (kind,) = a.pos
    sessions = ctx.mgmt.sessions.all(kind)
    if a.opts["local"] or not ctx.mgmt.cluster.active:
        await ctx.table(SESSION_COLUMNS, sessions.items, sessions.row,
                        footer=_plural("session"))
        return
    gathered = await ctx.mgmt.cluster.gather("sessions", kind)
    await _cluster_table(ctx, gathered, "sessions", CLUSTER_SESSION_COLUMNS, sessions.items,
                         sessions.row, None, "session")


async def cmd_sessions_show(ctx: Context, a: Args) -> None:
    (client_id,) = a.pos
    cluster = ctx.mgmt.cluster.active and not a.opts["local"]
    try:
        row = ctx.mgmt.sessions.get(client_id)
        if cluster:
            row = dict(row, node=ctx.mgmt.node_name)
    except NotFound as err:
        if not cluster:
            raise _not_found(err) from None
        # Not here: the node the registry names, else every other node (one holds it).
        row = await _on_its_node(ctx, err, "session", client_id)
    _show(ctx, row)


async def cmd_sessions_clean(ctx: Context, a: Args) -> None:
    (client_id,) = a.pos
    cluster = ctx.mgmt.cluster.active and not a.opts["local"]
    try:
        data = ctx.mgmt.sessions.clean(client_id)
        if cluster:
            data = dict(data, node=ctx.mgmt.node_name)
    except NotFound as err:
        if not cluster:
            raise _not_found(err) from None
        # Not here: discarded on the node that holds it (one does, at most).
        data = await _on_its_node(ctx, err, "session_clean", client_id)
    ctx.result("ok", data)


# --- routes ---------------------------------------------------------------------------------

def _route_line(row: Row) -> str:
    return f"{row['topic']} -> {row['node']}"


async def cmd_routes_list(ctx: Context, a: Args) -> None:
    routes = ctx.mgmt.routes.all()
    if a.opts["local"] or not ctx.mgmt.cluster.active:
        await ctx.table([], routes.items, routes.row, line=_route_line,
                        footer=_plural("route"))
        return
    gathered = await ctx.mgmt.cluster.gather("routes")
    await _cluster_table(ctx, gathered, "routes", [], routes.items, routes.row, _route_line,
                         "route")


async def cmd_routes_show(ctx: Context, a: Args) -> None:
    (topic,) = a.pos
    cluster = ctx.mgmt.cluster.active and not a.opts["local"]
    try:
        routes = ctx.mgmt.routes.lookup(topic)
    except NotFound as err:
        if not cluster:
            raise _not_found(err) from None
        routes = Listing([], ctx.mgmt.routes.all().row)
        missing: NotFound | None = err
    else:
        missing = None
    if not cluster:
        await ctx.table([], routes.items, routes.row, line=_route_line,
                        footer=_plural("route"))
        return
    gathered = await ctx.mgmt.cluster.gather("routes", topic)
    if missing is not None and not gathered.rows:
        raise CtlError(missing.message + _unasked(gathered), reason=NOT_FOUND)
    await _cluster_table(ctx, gathered, "routes", [], routes.items, routes.row, _route_line,
                         "route")


# --- the whole cluster ------------------------------------------------------------------------

#: ``clients list`` on a cluster: which node holds each client, after its id (and so for
#: sessions and subscriptions).
CLUSTER_CLIENT_COLUMNS = CLIENT_COLUMNS[:1] + [Col("node", "Node")] + CLIENT_COLUMNS[1:]
CLUSTER_SESSION_COLUMNS = SESSION_COLUMNS[:1] + [Col("node", "Node")] + SESSION_COLUMNS[1:]


def _unasked(gathered: Gathered) -> str:
    """What a "not found" on a cluster cannot rule out: the nodes that did not answer."""
    silent = gathered.silent
    if gathered.note is not None:
        return f" on this node ({gathered.note})"
    if not silent:
        return ""
    return " (no answer from " + ", ".join(f"{n['node']}: {n['reason']}" for n in silent) \
        + ")"


async def _cluster_table(ctx: Context, gathered: Gathered, key: str, columns: list[Col],
                         items: Iterable[T], row: Callable[[T], Row | None],
                         line: Callable[[Row], str] | None, word: str) -> None:
    """A listing of every node: this node's rows (marked with its name), then the others'
    (marked by the asking side), and which nodes have no rows in it and why.

    --json: ``{"nodes": [{"node", "answered", "reason"}...], "<key>": [rows...]}``; text:
    the table, a footer counting the nodes that answered, and one line on stderr per node
    that did not."""
    me = ctx.mgmt.node_name
    nodes = [{"node": me, "answered": True, "reason": ""}] + gathered.nodes

    def mine(item: T) -> Row | None:
        r = row(item)
        return None if r is None else dict(r, node=me)

    everything: Iterable[tuple[bool, Any]] = itertools.chain(
        ((True, item) for item in items), ((False, r) for r in gathered.rows))

    def either(pair: tuple[bool, Any]) -> Row | None:
        return mine(pair[1]) if pair[0] else pair[1]

    answered = sum(1 for n in nodes if n["answered"])
    if ctx.json:
        note = "" if gathered.note is None else \
            ',\n  "note": ' + json.dumps(gathered.note, ensure_ascii=False)
        ctx.frame({"t": "out", "s": '{\n  "nodes": ' + json.dumps(nodes, ensure_ascii=False)
                   + note + f',\n  "{key}": '})
        await ctx.table(columns, everything, either, line=line)
        ctx.out("}")
        return

    def footer(n: int) -> str:
        return f"{_plural(word)(n)} on {answered} of {len(nodes)} nodes"

    if gathered.note is not None:
        ctx.err(f"mqttd ctl: {gathered.note}; only this node's {word}s are listed")
    for n in gathered.silent:
        ctx.err(f"mqttd ctl: node {n['node']}: {n['reason']}; its {word}s are not listed")
    await ctx.table(columns, everything, either, line=line, footer=footer)


# --- subscriptions --------------------------------------------------------------------------

SUBSCRIPTION_COLUMNS = [
    Col("clientid", "Client ID"), Col("topic", "Topic"), Col("qos", "QoS", justify="right"),
    Col("no_local", "No local"), Col("retain_as_published", "Retain as published"),
    Col("retain_handling", "Retain handling", justify="right"),
    Col("subid", "Sub ID", lambda v: str(v) if v else "-", "right"),
]


CLUSTER_SUBSCRIPTION_COLUMNS = SUBSCRIPTION_COLUMNS[:1] + [Col("node", "Node")] \
    + SUBSCRIPTION_COLUMNS[1:]


async def cmd_subscriptions_list(ctx: Context, a: Args) -> None:
    subs = ctx.mgmt.subscriptions.all()
    if a.opts["local"] or not ctx.mgmt.cluster.active:
        await ctx.table(SUBSCRIPTION_COLUMNS, subs.items, subs.row,
                        footer=_plural("subscription"))
        return
    gathered = await ctx.mgmt.cluster.gather("subscriptions")
    await _cluster_table(ctx, gathered, "subscriptions", CLUSTER_SUBSCRIPTION_COLUMNS,
                         subs.items, subs.row, None, "subscription")


async def cmd_subscriptions_show(ctx: Context, a: Args) -> None:
    (client_id,) = a.pos
    cluster = ctx.mgmt.cluster.active and not a.opts["local"]
    try:
        subs = ctx.mgmt.subscriptions.of_client(client_id)
    except NotFound as err:
        if not cluster:
            raise _not_found(err) from None
        # A session is held on one node: the one the registry names, else whichever has it.
        gathered = await ctx.mgmt.cluster.gather("client_subscriptions", client_id)
        if not gathered.rows:
            raise CtlError(err.message + _unasked(gathered), reason=NOT_FOUND) from None
        await ctx.table(CLUSTER_SUBSCRIPTION_COLUMNS, gathered.rows, same,
                        footer=_plural("subscription"))
        return
    if not cluster:
        await ctx.table(SUBSCRIPTION_COLUMNS, subs.items, subs.row,
                        footer=_plural("subscription"))
        return
    me = ctx.mgmt.node_name
    await ctx.table(CLUSTER_SUBSCRIPTION_COLUMNS, subs.items, lambda r: dict(r, node=me),
                    footer=_plural("subscription"))


async def cmd_subscriptions_add(ctx: Context, a: Args) -> None:
    client_id, topic_filter, qos_text = a.pos
    if qos_text not in ("0", "1", "2"):
        raise UsageError("QoS should be 0, 1, 2", "subscriptions")
    cluster = ctx.mgmt.cluster.active and not a.opts["local"]
    try:
        data = ctx.mgmt.subscriptions.add(client_id, topic_filter, int(qos_text), by=BY)
        if cluster:
            data = dict(data, node=ctx.mgmt.node_name)
    except NotFound as err:
        if not cluster:
            raise _not_found(err) from None
        data = await _on_its_node(ctx, err, "subscribe", client_id,
                                  {"topic": topic_filter, "qos": int(qos_text)})
    ctx.result("ok", data)


async def cmd_subscriptions_del(ctx: Context, a: Args) -> None:
    client_id, topic_filter = a.pos
    cluster = ctx.mgmt.cluster.active and not a.opts["local"]
    try:
        data = ctx.mgmt.subscriptions.delete(client_id, topic_filter)
        if cluster:
            data = dict(data, node=ctx.mgmt.node_name)
    except NotFound as err:
        if not cluster or err.what != "session":
            raise _not_found(err) from None
        data = await _on_its_node(ctx, err, "unsubscribe", client_id, {"topic": topic_filter})
    ctx.result("ok", data)


async def _on_its_node(ctx: Context, err: NotFound, op: str, client_id: str,
                       extra: dict[str, Any] | None = None) -> Row:
    """A client or session this node does not hold, asked of (or changed on) the node that
    holds it: its answer, with its node; the local "not found" if no node that answered
    holds it."""
    gathered = await ctx.mgmt.cluster.gather(op, client_id, extra=extra)
    if not gathered.rows:
        raise CtlError(err.message + _unasked(gathered), reason=NOT_FOUND) from None
    return gathered.rows[0]


# --- retained -------------------------------------------------------------------------------

RETAINED_COLUMNS = [
    Col("topic", "Topic"), Col("qos", "QoS", justify="right"),
    Col("payload_size", "Size", justify="right"), Col("from", "From"),
    Col("stored_at", "Stored at", when),
    Col("expires_in", "Expires in", lambda v: "-" if v is None else f"{v}s", "right"),
]


async def cmd_retained_list(ctx: Context, a: Args) -> None:
    retained = ctx.mgmt.retained.all()
    await ctx.table(RETAINED_COLUMNS, retained.items, retained.row,
                    footer=_plural("retained message"))


async def cmd_retained_show(ctx: Context, a: Args) -> None:
    (topic,) = a.pos
    limit = _int(a.opts.get("payload-limit"), "--payload-limit", "retained")
    if limit is None:
        limit = ctx.mgmt.trace.payload_limit
    try:
        messages = await ctx.mgmt.retained.show(topic)
    except NotFound as err:
        raise _not_found(err) from None
    if ctx.json:
        ctx.emit_json(messages)
        return
    blocks = []
    for m in messages:
        payload = base64.b64decode(m["payload_base64"])
        expires_in = m["expires_in"]
        pairs: list[tuple[str, Any]] = [
            ("topic", m["topic"]), ("qos", m["qos"]), ("from", m["from"]),
            ("stored_at", when(m["stored_at"])),
            ("expires_in", f"{expires_in}s" if expires_in is not None else None),
            ("payload_size", m["payload_size"]), ("payload", format_bytes(payload, limit))]
        if m["properties"]:
            pairs.append(("properties", format_properties(m["properties"], limit)))
        blocks.append("\n".join(f"{k:<13}: {v if v is not None else '-'}" for k, v in pairs))
    ctx.out("\n\n".join(blocks))


async def cmd_retained_clean(ctx: Context, a: Args) -> None:
    (topic,) = a.pos
    n = await ctx.mgmt.retained.clean(topic, by=BY)
    ctx.result(f"Cleaned {n} retained messages", {"cleaned": n})


# --- listeners ------------------------------------------------------------------------------

LISTENER_COLUMNS = [
    Col("name", "Name"), Col("type", "Type"), Col("listen_on", "Listen on"), Col("zone", "Zone"),
    Col("running", "Running"), Col("current_conn", "Connections", justify="right"),
    Col("max_conns", "Max connections", justify="right"),
    Col("max_conn_rate", "Max conn rate", lambda v: f"{v:g}/s" if v else "-", "right"),
]


async def cmd_listeners_list(ctx: Context, a: Args) -> None:
    await ctx.table(LISTENER_COLUMNS, ctx.mgmt.listeners.all(), same,
                    footer=_plural("listener"))


async def cmd_listeners_stop(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    try:
        data = await ctx.mgmt.listeners.stop(name)
    except (NotFound, Conflict) as err:
        raise CtlError(f"cannot stop listener {name}: {err.reason}", reason=err.reason
                       ) from None
    ctx.result(f"Stop {name} listener on {data['listen_on']} successfully.", data)


async def cmd_listeners_restart(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    try:
        data = await ctx.mgmt.listeners.restart(name)
    except (NotFound, Failed) as err:
        raise CtlError(f"cannot restart listener {name}: {err.reason}", reason=err.reason
                       ) from None
    ctx.result(f"Restarted {name} listener successfully.", data)


async def cmd_listeners_reload(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    try:
        data = ctx.mgmt.listeners.reload(name)
    except (NotFound, Conflict, Failed) as err:
        raise CtlError(f"cannot reload listener {name}: {err}", reason=err.reason) from None
    ctx.result(f"Reloaded the TLS certificate of {name} listener from {data['certfile']}; "
               "new connections use it.", data)


# --- trace ----------------------------------------------------------------------------------

def _trace_line(info: Row) -> str:
    # a live trace streams to its front end (mqttd ctl, the HTTP API): named in <>
    dest = f"<{info['destination']}>" if info["live"] else f'"{info["destination"]}"'
    return (f"Trace({info['type']}={info['target']}, destination={dest}, "
            f"lines={info['lines']})")


async def _trace(ctx: Context, kind: str, target: str, file: str | None,
                 limit_text: str | None, local: bool = True) -> None:
    traces = ctx.mgmt.trace
    limit = _int(limit_text, "--payload-limit", "trace")
    who = f"{kind} {target}"
    traces.check(kind, target)
    if file is not None:
        path = os.path.join(ctx.cwd, os.path.expanduser(file))
        try:
            data = traces.start_file(kind, target, path, json_lines=ctx.json,
                                     payload_limit=limit)
        except (Conflict, Failed) as err:
            raise CtlError(f"cannot trace {who}: {err.reason}", reason=err.reason) from None
        ctx.result(f"trace {who} successfully", data)
        return
    live = LiveSink(ctx)
    remote = None
    if not local and ctx.mgmt.cluster.active:
        # Every node up traces it (a client is on one at most, and may connect to any; a
        # topic's messages are published on every node): each line says its node.
        me = ctx.mgmt.node_name

        def write(node: str, line: str, event: dict[str, Any]) -> None:
            try:
                live.write(f"[{node}] {line}", dict(event, node=node))
            except ConnectionError:
                pass  # the ctl went away: until_closed ends the trace

        def ended(node: str, reason: str | None) -> None:
            ctx.err(f"[{node}] {reason or 'trace ended'}")

        trace = traces.start(kind, target, _NodeSink(live, me), limit)
        remote = await ctx.mgmt.cluster.trace(target, limit, ctx.json, write, ended, kind)
        where = [me] + [n["node"] for n in remote.nodes if n["answered"]]
        if kind == "clientid":
            peer = traces.client_peer(target)
            ctx.err(f"Tracing client {target} on {', '.join(where)}"
                    + (f" (connected here from {peer})" if peer is not None else "")
                    + "; Ctrl-C to stop.")
        else:
            ctx.err(f"Tracing messages published to {target} on {', '.join(where)}; "
                    "Ctrl-C to stop.")
        for n in remote.nodes:
            if not n["answered"]:
                ctx.err(f"mqttd ctl: node {n['node']}: {n['reason']}; not traced there")
    elif kind == "clientid":
        peer = traces.client_peer(target)
        state = (f"connected from {peer}" if peer is not None else
                 "not connected: tracing starts when it connects")
        trace = traces.start(kind, target, live, limit)
        ctx.err(f"Tracing client {target} ({state}); Ctrl-C to stop.")
    else:
        trace = traces.start(kind, target, live, limit)
        ctx.err(f"Tracing messages published to {target}; Ctrl-C to stop.")
    ctx.follow()
    try:
        gone = await ctx.until_closed(live.ended)
    finally:
        traces.stop(trace)
        if remote is not None:
            await remote.stop()
    if not gone:
        reason = live.ended.result()
        if reason:
            ctx.err(reason)


class _NodeSink:
    """This node's lines of a cluster-wide trace, marked with its name like the others'."""

    def __init__(self, live: LiveSink, node: str) -> None:
        self.live = live
        self.node = node
        self.json = live.json
        self.destination = live.destination

    def write(self, text: str, event: dict[str, Any]) -> None:
        self.live.write(f"[{self.node}] {text}", dict(event, node=self.node))

    def close(self, reason: str | None) -> None:
        self.live.close(reason)


async def cmd_trace_client(ctx: Context, a: Args) -> None:
    await _trace(ctx, "clientid", a.pos[0], a.opts.get("file"), a.opts.get("payload-limit"),
                 bool(a.opts.get("local")))


async def cmd_trace_topic(ctx: Context, a: Args) -> None:
    await _trace(ctx, "topic", a.pos[0], a.opts.get("file"), a.opts.get("payload-limit"),
                 bool(a.opts.get("local")))


async def cmd_trace_start_client(ctx: Context, a: Args) -> None:
    await _trace(ctx, "clientid", a.pos[0], a.pos[1], None)


async def cmd_trace_start_topic(ctx: Context, a: Args) -> None:
    await _trace(ctx, "topic", a.pos[0], a.pos[1], None)


async def cmd_trace_list(ctx: Context, a: Args) -> None:
    infos = ctx.mgmt.trace.all()
    if ctx.json:
        ctx.emit_json(infos)
    else:
        ctx.out("".join(_trace_line(i) + "\n" for i in infos) + _plural("trace")(len(infos)))


async def _trace_stop(ctx: Context, kind: str, target: str) -> None:
    try:
        data = ctx.mgmt.trace.stop_target(kind, target,
                                          f"trace stopped by {BY} trace stop")
    except NotFound:
        raise CtlError(f"cannot stop tracing {kind} {target}: not_found",
                       reason=NOT_FOUND) from None
    ctx.result(f"stop tracing {kind} {target} successfully", data)


async def cmd_trace_stop_client(ctx: Context, a: Args) -> None:
    await _trace_stop(ctx, "clientid", a.pos[0])


async def cmd_trace_stop_topic(ctx: Context, a: Args) -> None:
    await _trace_stop(ctx, "topic", a.pos[0])


# --- plugins --------------------------------------------------------------------------------

async def cmd_plugins_list(ctx: Context, a: Args) -> None:
    infos = ctx.mgmt.plugins.all()
    if ctx.json:
        ctx.emit_json(infos)
    else:
        ctx.out("".join(f"Plugin({p['name']}, description={p.get('description', '')}, "
                        f"active={'true' if p.get('active') else 'false'})\n" for p in infos)
                + _plural("plugin")(len(infos)))


async def cmd_plugins_load(ctx: Context, a: Args) -> None:
    (ref,) = a.pos
    try:
        data = ctx.mgmt.plugins.load(ref)
    except Failed as err:
        raise CtlError(f"cannot load plugin {ref}: {err.reason}", reason=err.reason
                       ) from None
    ctx.result(f"Plugin {ref} loaded successfully.", data)


async def cmd_plugins_unload(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    try:
        data = ctx.mgmt.plugins.unload(name)
    except NotFound:
        raise CtlError(f"cannot unload plugin {name}: not_found", reason=NOT_FOUND
                       ) from None
    ctx.result(f"Plugin {name} unloaded successfully.", data)


# --- modules, delayed -----------------------------------------------------------------------

_MODULE_KEYS = ("name", "loaded", "enabled", "description")
MODULE_COLUMNS = [
    Col("name", "Name"), Col("loaded", "Loaded", lambda v: "yes" if v else "no"),
    Col("enabled", "Enabled", lambda v: "yes" if v else "no"),
    Col("description", "Description"), Col("details", "Details"),
]


def _module_row(row: Row) -> Row:
    """A module's row with what a loaded module says of itself as one ``k=v`` column."""
    details = ", ".join(f"{k}={v}" for k, v in row.items() if k not in _MODULE_KEYS)
    return {**row, "details": details or "-"}


async def cmd_modules_list(ctx: Context, a: Args) -> None:
    await ctx.table(MODULE_COLUMNS, ctx.mgmt.modules.all(),
                    same if ctx.json else _module_row, footer=_plural("module"))


async def cmd_modules_load(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    try:
        data = ctx.mgmt.modules.load(name)
    except Failed as err:
        raise CtlError(f"cannot load module {name}: {err.message}", reason=err.reason
                       ) from None
    ctx.result(f"Module {name} loaded successfully.", data)


async def cmd_modules_unload(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    try:
        data = ctx.mgmt.modules.unload(name)
    except Failed as err:
        raise CtlError(f"cannot unload module {name}: {err.message}", reason=err.reason
                       ) from None
    except NotFound:
        raise CtlError(f"cannot unload module {name}: not_loaded", reason="not_loaded"
                       ) from None
    ctx.result(f"Module {name} unloaded successfully.", data)


DELAYED_COLUMNS = [
    Col("id", "Id", justify="right"), Col("topic", "Topic"),
    Col("qos", "QoS", justify="right"), Col("from", "From", lambda v: v or "-"),
    Col("delay", "Delay", lambda v: f"{v}s", "right"),
    Col("remaining", "Remaining", lambda v: f"{v}s", "right"),
    Col("publish_at", "Publish at", when),
]


async def cmd_delayed_list(ctx: Context, a: Args) -> None:
    await ctx.table(DELAYED_COLUMNS, ctx.mgmt.modules.delayed_list(), same,
                    footer=_plural("delayed message"))


async def cmd_delayed_del(ctx: Context, a: Args) -> None:
    (entry_id,) = a.pos
    try:
        data = ctx.mgmt.modules.delayed_delete(entry_id)
    except NotFound as err:
        raise _not_found(err) from None
    ctx.result(f"Delayed message {entry_id} deleted.", data)


# --- bridges --------------------------------------------------------------------------------

BRIDGE_COLUMNS = [
    Col("name", "Name"), Col("state", "State"), Col("address", "Address"),
    Col("protocol", "MQTT"), Col("queued", "Queued", justify="right"),
    Col("inflight", "Inflight", justify="right"), Col("sent", "Sent", justify="right"),
    Col("received", "Received", justify="right"),
    Col("last_error", "Last error", lambda v: v or "-"),
]


async def cmd_bridges_list(ctx: Context, a: Args) -> None:
    await ctx.table(BRIDGE_COLUMNS, ctx.mgmt.bridges.all(), same, footer=_plural("bridge"))


async def cmd_bridges_status(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    try:
        row = ctx.mgmt.bridges.status(name)
    except NotFound as err:
        raise _not_found(err) from None
    if ctx.json:
        ctx.emit_json(row)
        return
    shown = {k: ("-" if v is None else ", ".join(v) if isinstance(v, list) else v)
             for k, v in row.items()}
    ctx.kv(list(shown.items()), width=_kv_width(shown))


async def _bridge_action(ctx: Context, a: Args, action: str) -> None:
    (name,) = a.pos
    try:
        data = getattr(ctx.mgmt.bridges, action)(name)
    except NotFound as err:
        raise _not_found(err) from None
    except Failed as err:
        raise CtlError(f"cannot {action} bridge {name}: {err.message}", reason=err.reason
                       ) from None
    ctx.result(f"Bridge {name} {action.replace('stop', 'stopp')}ed.", data)


ORPHAN_COLUMNS = [Col("name", "Name"), Col("stored", "Stored messages", justify="right")]


async def cmd_bridges_orphans(ctx: Context, a: Args) -> None:
    await ctx.table(ORPHAN_COLUMNS, ctx.mgmt.bridges.orphans(), same,
                    footer=_plural("orphaned queue"))


async def cmd_bridges_purge(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    try:
        data = ctx.mgmt.bridges.purge(name)
    except NotFound as err:
        raise _not_found(err) from None
    except Conflict as err:
        raise CtlError(f"cannot purge bridge {name}: {err.message}", reason=err.reason
                       ) from None
    ctx.result(f"Stored queue of bridge {name} purged: {data['purged']} messages dropped.",
               data)


async def cmd_bridges_start(ctx: Context, a: Args) -> None:
    await _bridge_action(ctx, a, "start")


async def cmd_bridges_stop(ctx: Context, a: Args) -> None:
    await _bridge_action(ctx, a, "stop")


# --- cluster --------------------------------------------------------------------------------

CLUSTER_NODE_COLUMNS = [
    Col("node", "Node"), Col("status", "Status"),
    Col("routes", "Routes", justify="right"),
    Col("last_heartbeat_ago", "Last heartbeat", lambda v: f"{v:.1f} s ago"),
    Col("reason", "Why down", lambda v: v or "-"),
]


async def cmd_cluster_status(ctx: Context, a: Args) -> None:
    row = ctx.mgmt.cluster.status()
    if ctx.json:
        ctx.emit_json(row)
        return
    shown = {k: ("-" if v in (None, "") else when(v) if k == "joined_at" else v)
             for k, v in row.items()}
    ctx.kv(list(shown.items()), width=_kv_width(shown))


async def cmd_cluster_nodes(ctx: Context, a: Args) -> None:
    rows = [dict(r, node=r["node"] + (" (this node)" if r["self"] else ""))
            for r in ctx.mgmt.cluster.nodes()]
    if ctx.json:
        ctx.emit_json(ctx.mgmt.cluster.nodes())
        return
    await ctx.table(CLUSTER_NODE_COLUMNS, rows, same, footer=_plural("node"))


# --- topic-metrics, slow-subs ----------------------------------------------------------------

TOPIC_METRICS_COLUMNS = [
    Col("topic", "Topic"),
    Col("in", "In", justify="right"), Col("out", "Out", justify="right"),
    Col("dropped", "Dropped", justify="right"),
    Col("in_rate", "In/s", justify="right"), Col("out_rate", "Out/s", justify="right"),
    Col("dropped_rate", "Dropped/s", justify="right"),
    Col("in_qos", "In QoS 0/1/2"), Col("out_qos", "Out QoS 0/1/2"),
    Col("dropped_qos", "Dropped QoS 0/1/2"),
]


def _topic_metrics_row(row: Row) -> Row:
    """EMQX's nested ``metrics`` as columns: counts, rates, and the counts by QoS."""
    m = row["metrics"]
    flat: Row = {"topic": row["topic"]}
    for kind in ("in", "out", "dropped"):
        flat[kind] = m[f"messages.{kind}.count"]
        flat[f"{kind}_rate"] = f"{m[f'messages.{kind}.rate']:.2f}"
        flat[f"{kind}_qos"] = "/".join(str(m[f"messages.qos{q}.{kind}.count"])
                                       for q in range(3))
    return flat


async def cmd_topic_metrics_list(ctx: Context, a: Args) -> None:
    await ctx.table(TOPIC_METRICS_COLUMNS, ctx.mgmt.modules.topic_metrics_list(),
                    same if ctx.json else _topic_metrics_row, footer=_plural("topic"))


async def cmd_topic_metrics_add(ctx: Context, a: Args) -> None:
    (topic,) = a.pos
    data = ctx.mgmt.modules.topic_metrics_add(topic)
    ctx.result(f"Topic {topic} registered.", data)


async def cmd_topic_metrics_del(ctx: Context, a: Args) -> None:
    (topic,) = a.pos
    data = ctx.mgmt.modules.topic_metrics_delete(topic)
    ctx.result(f"Topic {topic} deleted.", data)


SLOW_SUBS_COLUMNS = [
    Col("clientid", "Client"), Col("topic", "Topic"),
    Col("latency_ms", "Latency", lambda v: f"{v} ms", "right"),
    Col("last_update_time", "Last update", when),
]


async def cmd_slow_subs_list(ctx: Context, a: Args) -> None:
    await ctx.table(SLOW_SUBS_COLUMNS, ctx.mgmt.modules.slow_subs_list(), same,
                    footer=_plural("slow subscription"))


async def cmd_slow_subs_clear(ctx: Context, a: Args) -> None:
    data = ctx.mgmt.modules.slow_subs_clear()
    ctx.result(f"{data['cleared']} slow subscription records cleared.", data)


# --- banned ---------------------------------------------------------------------------------

def _until(value: Any) -> str:
    return "never" if value is None else when(value)


BANNED_COLUMNS = [
    Col("as", "As"), Col("who", "Who"), Col("reason", "Reason", lambda v: v or "-"),
    Col("by", "By", lambda v: v or "-"), Col("at", "At", when), Col("until", "Until", _until),
]


async def cmd_banned_list(ctx: Context, a: Args) -> None:
    banned = ctx.mgmt.banned.all()
    await ctx.table(BANNED_COLUMNS, banned.items, banned.row, footer=_plural("ban"))


async def cmd_banned_add(ctx: Context, a: Args) -> None:
    kind, who = a.pos
    data = ctx.mgmt.banned.add(kind, who, by=BY, reason=a.opts.get("reason") or "",
                               until=a.opts.get("until"), duration=a.opts.get("duration"))
    kicked = data["kicked"]
    text = f"Banned {data['as']} {data['who']} until {_until(data['until'])}"
    if kicked:
        text += f"; kicked {', '.join(kicked)}"
    ctx.result(text, data)


async def cmd_banned_del(ctx: Context, a: Args) -> None:
    kind, who = a.pos
    try:
        data = ctx.mgmt.banned.delete(kind, who)
    except NotFound as err:
        raise _not_found(err) from None
    ctx.result("ok", data)


# --- alarms ---------------------------------------------------------------------------------

def _duration_ms(value: Any) -> str:
    """Milliseconds as ``1h 2m 3s`` (``250 ms`` under a second)."""
    if value is None:
        return "-"
    ms = int(value)
    if ms < 1000:
        return f"{ms} ms"
    s = ms // 1000
    parts = [(s // 86400, "d"), (s // 3600 % 24, "h"), (s // 60 % 60, "m"), (s % 60, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{n}{unit}" for n, unit in parts)


ALARM_COLUMNS = [
    Col("name", "Name"), Col("activate_at", "Activated at", when),
    Col("duration", "Duration", _duration_ms, "right"), Col("message", "Message"),
]
HISTORY_COLUMNS = ALARM_COLUMNS[:2] + [Col("deactivate_at", "Deactivated at", when)] \
    + ALARM_COLUMNS[2:]


async def cmd_alarms_list(ctx: Context, a: Args) -> None:
    history = bool(a.opts.get("history"))
    alarms = ctx.mgmt.alarms.list(history)
    await ctx.table(HISTORY_COLUMNS if history else ALARM_COLUMNS, alarms.items, alarms.row,
                    footer=_plural("cleared alarm" if history else "active alarm"))


# --- users ----------------------------------------------------------------------------------

USER_COLUMNS = [Col("username", "Username"),
                Col("is_superuser", "Superuser", lambda v: "yes" if v else "no")]


async def cmd_users_list(ctx: Context, a: Args) -> None:
    users = ctx.mgmt.users.all()
    await ctx.table(USER_COLUMNS, users.items, users.row, footer=_plural("user"))


async def cmd_users_add(ctx: Context, a: Args) -> None:
    username, password = a.pos
    data = await ctx.mgmt.users.add(username, password, superuser=bool(a.opts.get("superuser")),
                                    by=BY)
    ctx.result(f"Added user {username}" + (" (superuser)" if data["is_superuser"] else ""),
               data)


async def cmd_users_passwd(ctx: Context, a: Args) -> None:
    username, password = a.pos
    try:
        data = await ctx.mgmt.users.passwd(username, password, by=BY)
    except NotFound as err:
        raise _not_found(err) from None
    ctx.result(f"Changed the password of user {username}", data)


async def cmd_users_del(ctx: Context, a: Args) -> None:
    (username,) = a.pos
    try:
        data = await ctx.mgmt.users.delete(username, by=BY)
    except NotFound as err:
        raise _not_found(err) from None
    ctx.result(f"Deleted user {username}", data)


# --- API keys (the HTTP API's) -------------------------------------------------------------

APIKEY_COLUMNS = [Col("name", "Name"), Col("created_at", "Created at", when),
                  Col("created_by", "Created by")]


def _apikeys(ctx: Context) -> ApiKeys:
    return ApiKeys(ctx.mgmt.settings.data_dir or None)


async def cmd_apikey_list(ctx: Context, a: Args) -> None:
    keys = _apikeys(ctx).all()
    await ctx.table(APIKEY_COLUMNS, keys.items, keys.row, footer=_plural("API key"))


async def cmd_apikey_add(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    try:
        data = _apikeys(ctx).add(name, by=BY)
    except Conflict as err:
        raise CtlError(err.message) from None
    if ctx.json:
        ctx.emit_json({"key": data["key"]})
        return
    ctx.out(data["key"])
    ctx.err(f"API key {name} added: send it as 'Authorization: Bearer <key>'; it is shown "
            "only now (only its SHA-256 digest is kept)")


async def cmd_apikey_del(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    try:
        data = _apikeys(ctx).delete(name, by=BY)
    except NotFound as err:
        raise _not_found(err) from None
    ctx.result(f"Deleted API key {name}", data)


# --- store ----------------------------------------------------------------------------------

def _bytes(n: Any) -> str:
    """A size for people: ``812 B``, ``4.0 KiB``, ``1.2 MiB``, ``3.5 GiB``."""
    if not isinstance(n, int):
        return "-"
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _size(n: Any) -> str:
    return f"{_bytes(n)} ({n} bytes)" if isinstance(n, int) and n >= 1024 else _bytes(n)


def _seconds(v: Any) -> str:
    return f"{v:.3f} s" if isinstance(v, (int, float)) else "-"


def _compaction(last: Any) -> str:
    if not last:
        return "never"
    return (f"{when(last.get('at'))} ({_bytes(last.get('before'))} -> "
            f"{_bytes(last.get('after'))} in {_seconds(last.get('seconds'))})")


async def cmd_store_status(ctx: Context, a: Args) -> None:
    data = await ctx.mgmt.store.status()
    if ctx.json:
        ctx.emit_json(data)
        return
    if data["durability"] == "off":
        ctx.kv([("durability", "off"), ("file", "none"), ("note", data["note"])])
        return
    state = "ok"
    if data["full"]:
        state = (f"FULL: writes fail and are retried: {data['last_error']}; QoS 1/2 messages "
                 "that need storing are refused (0x97)")
    pairs: list[tuple[str, Any]] = [
        ("file", data["path"]), ("size", _size(data["size"])),
        ("durability", data["durability"]), ("state", state)]
    rows = data["rows"]
    if rows is None:
        pairs.append(("rows", "not counted"))
    else:
        pairs += [(f"rows/{table}", n) for table, n in rows.items()]
    pairs += [("commits", data["commits"]), ("ops_written", data["ops_written"]),
              ("ops_cancelled", data["ops_cancelled"]), ("pending", data["pending"]),
              ("log", _size(data["log_bytes"]) if "log_bytes" in data else "-"),
              ("ops_applied", data.get("ops_applied", "-")),
              ("commit_p50", f"{data['commit_p50_ms']:g} ms" if data["commits"] else "-"),
              ("commit_p99", f"{data['commit_p99_ms']:g} ms" if data["commits"] else "-"),
              ("last_compaction", _compaction(data["last_compaction"])),
              ("schema", data["schema"]), ("page_size", data["page_size"]),
              ("free_pages", data["free_pages"])]
    if data.get("note"):
        pairs.append(("note", data["note"]))
    ctx.kv(pairs)


async def cmd_store_compact(ctx: Context, a: Args) -> None:
    data = await ctx.mgmt.store.compact(by=BY)
    ctx.result(f"Compacted {data['path']}: {_bytes(data['before'])} -> "
               f"{_bytes(data['after'])} in {_seconds(data['seconds'])}", data)


# --- conf -----------------------------------------------------------------------------------

async def cmd_conf_reload(ctx: Context, a: Args) -> None:
    try:
        data = await ctx.mgmt.conf.reload(BY)
    except (Failed, Unavailable) as err:
        raise CtlError(err.message, reason=err.reason) from None
    ctx.result(reload_text(data), data)
    if data["failed"]:
        ctx.code = 1  # the report says what failed; the rest was applied


# --- acl ------------------------------------------------------------------------------------

async def cmd_acl_reload(ctx: Context, a: Args) -> None:
    try:
        data = ctx.mgmt.acl.reload(by=BY)
    except Failed as err:
        raise CtlError(err.message, reason=err.reason) from None
    ctx.result("\n".join(f"Reloaded {d}" for d in data["reloaded"]), data)


async def cmd_acl_check(ctx: Context, a: Args) -> None:
    client_id, username, action, topic = a.pos
    data = ctx.mgmt.acl.check(client_id, username or None, action, topic)
    ctx.kv([(k, data[k]) for k in ("result", "by", "clientid", "username", "action", "topic",
                                   "connected", "superuser")], data, width=10)


# The usage table: help prints it in this order. One line, one usage.
COMMANDS: list[tuple[str, Handler[Context], str]] = [
    ("status", cmd_status, "Show node status: version, uptime, speedups"),
    ("broker", cmd_broker, "Show broker version, uptime and description"),
    ("broker stats", cmd_broker_stats, "Show broker statistics of clients, topics, subscribers"),
    ("broker metrics", cmd_broker_metrics, "Show broker metrics"),
    ("clients list [--local]", cmd_clients_list,
     "List all clients (in a cluster: of every node; --local: of this node)"),
    ("clients show <ClientId> [--local]", cmd_clients_show,
     "Show a client (in a cluster: on whichever node holds it)"),
    ("clients kick <ClientId> [--local]", cmd_clients_kick,
     "Kick out a client (MQTT 5: DISCONNECT 0x98; in a cluster: on its node)"),
    ("sessions list [persistent|transient] [--local]", cmd_sessions_list,
     "List all sessions, or only persistent/transient ones (in a cluster: of every node; "
     "--local: of this node)"),
    ("sessions show <ClientId> [--local]", cmd_sessions_show,
     "Show a session (in a cluster: on whichever node holds it)"),
    ("sessions clean <ClientId> [--local]", cmd_sessions_clean,
     "Discard a session (kicking its client if connected; in a cluster: on its node)"),
    # banned
    ("banned list", cmd_banned_list, "List banned client ids, user names and addresses"),
    ("banned add clientid|username|peerhost <Value> [--reason <Reason>] [--until <Time>] "
     "[--duration <Duration>]", cmd_banned_add,
     "Ban a client id, user name or IP/CIDR (kicks its clients), for good or until a time"),
    ("banned del clientid|username|peerhost <Value>", cmd_banned_del, "Lift a ban"),
    # users
    ("users list", cmd_users_list, "List the built-in user table (kept in the store)"),
    ("users add <Username> <Password> [--superuser]", cmd_users_add,
     "Add a user to the built-in user table (auth provider type builtin); "
     "--password-stdin instead of <Password> reads it from standard input"),
    ("users passwd <Username> <Password>", cmd_users_passwd,
     "Change a user's password (or --password-stdin)"),
    ("users del <Username>", cmd_users_del, "Delete a user"),
    ("apikey list", cmd_apikey_list, "List the HTTP API's keys (names, never the keys)"),
    ("apikey add <Name>", cmd_apikey_add,
     "Make an HTTP API key and print it (once: only its digest is kept)"),
    ("apikey del <Name>", cmd_apikey_del, "Delete an HTTP API key"),
    ("routes list [--local]", cmd_routes_list,
     "List all routes (in a cluster: of every node; --local: of this node)"),
    ("routes show <Topic> [--local]", cmd_routes_show,
     "Show the routes a message to <Topic> takes (a filter: that route)"),
    ("subscriptions list [--local]", cmd_subscriptions_list,
     "List all subscriptions (in a cluster: of every node; --local: of this node)"),
    ("subscriptions show <ClientId> [--local]", cmd_subscriptions_show,
     "Show subscriptions of a client (in a cluster: on whichever node holds its session)"),
    ("subscriptions add <ClientId> <Topic> <QoS> [--local]", cmd_subscriptions_add,
     "Add a subscription to a client's session (in a cluster: on the node holding it)"),
    ("subscriptions del <ClientId> <Topic> [--local]", cmd_subscriptions_del,
     "Delete a subscription from a client's session (in a cluster: on its node)"),
    ("retained list", cmd_retained_list, "List retained messages"),
    ("retained show <Topic> [--payload-limit <Bytes>]", cmd_retained_show,
     "Show the retained message(s) of a topic or filter"),
    ("retained clean [<Topic>]", cmd_retained_clean,
     "Delete all retained messages, or those of a topic or filter"),
    ("store status", cmd_store_status,
     "Show the durable store: file, size, rows per table, commit latency, last compaction"),
    ("store compact", cmd_store_compact,
     "Give the store's free space back to the file system (checkpoint and VACUUM)"),
    ("listeners list", cmd_listeners_list, "List listeners"),
    ("listeners stop <Name>", cmd_listeners_stop, "Stop a listener and close its clients"),
    ("listeners restart <Name>", cmd_listeners_restart, "Restart a listener"),
    ("listeners reload <Name>", cmd_listeners_reload,
     "Reload a TLS listener's certificate and key (live connections stay)"),
    ("trace client <ClientId> [--file <File>] [--payload-limit <Bytes>] [--local]",
     cmd_trace_client, "Trace a client's packets: live until Ctrl-C (in a cluster: on every "
     "node, --local: this one), or to a file (this node)"),
    ("trace topic <Topic> [--file <File>] [--payload-limit <Bytes>] [--local]",
     cmd_trace_topic, "Trace messages published to a topic filter: live (in a cluster: on "
     "every node, --local: this one), or to a file (this node)"),
    ("trace start client <ClientId> <File>", cmd_trace_start_client,
     "Trace a client to a file (emqx_ctl form)"),
    ("trace start topic <Topic> <File>", cmd_trace_start_topic,
     "Trace a topic filter to a file (emqx_ctl form)"),
    ("trace list", cmd_trace_list, "List all traces"),
    ("trace stop client <ClientId>", cmd_trace_stop_client, "Stop tracing a client"),
    ("trace stop topic <Topic>", cmd_trace_stop_topic, "Stop tracing a topic filter"),
    ("plugins list", cmd_plugins_list, "List loaded and installed plugins"),
    ("plugins load <Plugin>", cmd_plugins_load, "Load a plugin (module:Class or entry point)"),
    ("plugins unload <Plugin>", cmd_plugins_unload, "Unload a plugin"),
    ("modules list", cmd_modules_list,
     "List the built-in modules: loaded, enabled in the configuration, their counters"),
    ("modules load <Module>", cmd_modules_load,
     "Load a module (delayed, rewrite, auto_subscribe, retainer, topic_metrics, "
     "slow_subs) with its [modules] settings"),
    ("modules unload <Module>", cmd_modules_unload, "Unload a module"),
    ("delayed list", cmd_delayed_list, "List pending delayed messages ($delayed/<s>/<topic>)"),
    ("delayed del <Id>", cmd_delayed_del, "Delete a pending delayed message"),
    ("topic-metrics list", cmd_topic_metrics_list,
     "List registered topics: messages in/out/dropped, by QoS, and rates over a minute"),
    ("topic-metrics add <Topic>", cmd_topic_metrics_add,
     "Register a topic name (no wildcards) for topic metrics"),
    ("topic-metrics del <Topic>", cmd_topic_metrics_del, "Unregister a topic"),
    ("slow-subs list", cmd_slow_subs_list,
     "List the slowest subscribers by QoS 1/2 delivery latency (over the threshold)"),
    ("slow-subs clear", cmd_slow_subs_clear, "Forget the slow subscription records"),
    ("cluster status", cmd_cluster_status,
     "This node in the cluster: NATS connection, server, subscriptions, counters"),
    ("cluster nodes", cmd_cluster_nodes,
     "The nodes seen over NATS: up or down (missed heartbeats), routes, last heartbeat"),
    ("bridges list", cmd_bridges_list,
     "List the MQTT bridges: state, queue depth, counters, last error"),
    ("bridges status <Name>", cmd_bridges_status,
     "Show one bridge: state, queue, in flight, counters, mappings, last error"),
    ("bridges start <Name>", cmd_bridges_start, "Start (connect) a stopped bridge"),
    ("bridges stop <Name>", cmd_bridges_stop,
     "Stop a bridge (disconnect; its queued messages are kept)"),
    ("bridges orphans", cmd_bridges_orphans,
     "List the stored queues of bridges removed from the configuration (messages not sent)"),
    ("bridges purge <Name>", cmd_bridges_purge,
     "Drop the stored queue of a bridge removed from the configuration"),
    ("conf reload", cmd_conf_reload,
     "Re-read the configuration file (and environment) the node was started with; apply "
     "what can change live, list what needs a restart (a bad file changes nothing)"),
    ("acl reload", cmd_acl_reload,
     "Re-read the password, credentials and ACL files (a bad one is kept as it was)"),
    ("acl check <ClientId> <Username> publish|subscribe|deliver <Topic>", cmd_acl_check,
     "Show what authorization decides and which rule decided ('' : no user name)"),
    ("alarms list [--history]", cmd_alarms_list,
     "List the active alarms, or (--history) the cleared ones, newest first"),
    ("vm", cmd_vm, "Show memory, CPU, file descriptors, tasks and event-loop lag"),
    ("log level [<Level>]", cmd_log_level, "Show or set the log level: debug|info|warning|error"),
    ("stop", cmd_stop, "Stop mqttd gracefully"),
    ("help [<Command>]", cmd_help, "Show this help, or one command's usage"),
]

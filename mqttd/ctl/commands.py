"""The built-in control commands (EMQX's emqx_mgmt_cli), registered in one registry.

Human output follows emqx_ctl where its shape serves (``key : value`` blocks,
``topic -> node`` lines, ``Client``/``Trace(...)`` strings, ``ok``) and uses
tables for listings; every command also answers ``--json``. Listings walk a
snapshot of the node's tables page by page (see :meth:`Context.table`), so a
node with 100,000 clients keeps serving them while it is listed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import gc
import logging
import os
import resource
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._accel import LOADED
from ..mqtt.packets import SubOpts
from ..mqtt.topics import filter_error, is_wildcard, match, parse_shared
from ..trace.manager import FileSink, LiveSink, format_bytes, format_properties
from .table import Args, CtlError, Registry, UsageError
from .server import PAGE_SECONDS, Col

if TYPE_CHECKING:
    from .server import Context

log = logging.getLogger("mqttd.ctl")

LOG_LEVELS = ("debug", "info", "warning", "error")
NOT_FOUND = "Not Found."
_PROTO = {3: "3.1", 4: "3.1.1", 5: "5.0"}


# --- formatting helpers ---------------------------------------------------------------------

def iso(t: float | None) -> str | None:
    """Epoch seconds as RFC 3339 local time with offset (None/0 stays None)."""
    if not t:
        return None
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


def when(value: Any) -> str:
    """An ISO time (as rows hold them) as ``YYYY-MM-DD HH:MM:SS`` local time."""
    if not value:
        return "-"
    return str(value)[:19].replace("T", " ")


def uptime_text(seconds: float) -> str:
    """EMQX's uptime: ``4 minutes, 52 seconds``, leading zero units left out."""
    s = int(seconds)
    parts: list[str] = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        n, s = divmod(s, size)
        if n or parts:
            parts.append(f"{n} {unit}{'s' if n != 1 else ''}")
    parts.append(f"{s} second{'s' if s != 1 else ''}")
    return ", ".join(parts)


def proto(value: Any) -> str:
    return _PROTO.get(value, str(value)) if value else "-"


def expiry(value: Any) -> str:
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


def _uptime(ctx: Context) -> float:
    started = getattr(ctx.node, "started_at", None) or ctx.ctl.started_at
    return max(0.0, time.time() - started)


def _payload_json(payload: bytes) -> dict[str, Any]:
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"payload": text, "payload_base64": base64.b64encode(payload).decode()}


async def scan(items: Iterable[Any], fn: Callable[[Any], None]) -> None:
    """``fn(item)`` for each item, yielding to the loop every few milliseconds."""
    clock = time.monotonic  # uvloop's loop.time() does not move within one callback
    deadline = clock() + PAGE_SECONDS
    for i, item in enumerate(items):
        fn(item)
        if i % 64 == 63 and clock() >= deadline:
            await asyncio.sleep(0)
            deadline = clock() + PAGE_SECONDS


def _plural(word: str) -> Callable[[int], str]:
    return lambda n: f"{n} {word}{'' if n == 1 else 's'}"


# --- the event-loop monitor (for vm) --------------------------------------------------------

class LoopMonitor:
    """Samples event-loop lag and CPU use twice a second (a timer, not a task).

    Lag is how late a timer fires: the time the loop spent on other work
    before it could run a ready callback, i.e. the longest pause any client saw.
    """

    INTERVAL = 0.5
    WINDOW = 120  # samples: one minute

    def __init__(self) -> None:
        self.lag = 0.0
        self.samples: deque[tuple[float, float, float]] = deque(maxlen=self.WINDOW)
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expected = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._expected = self._loop.time() + self.INTERVAL
        self._handle = self._loop.call_at(self._expected, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        self.lag = max(0.0, self._loop.time() - self._expected)
        self.samples.append((time.monotonic(), time.process_time(), self.lag))
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def max_lag(self) -> float:
        return max((s[2] for s in self.samples), default=self.lag)

    def cpu_percent(self) -> float | None:
        """Process CPU use over the last ~10 s, in percent of one core."""
        if len(self.samples) < 2:
            return None
        recent = list(self.samples)[-20:]
        (w0, c0, _), (w1, c1, _) = recent[0], recent[-1]
        return round(100.0 * (c1 - c0) / (w1 - w0), 1) if w1 > w0 else None


def _proc_status() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "VmSize", "Threads"):
                    n = int(value.split()[0])
                    out[key] = n * 1024 if key != "Threads" else n
    except OSError:
        pass
    return out


def _count_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the directory's own fd
    except OSError:
        return None


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    mod = type(loop).__module__.split(".")[0]
    if mod == "uvloop":
        import uvloop

        return f"uvloop {uvloop.__version__}"
    return "asyncio"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1048576:.1f} MiB"


# --- registry -------------------------------------------------------------------------------

def build_registry() -> Registry:
    """A registry holding every built-in command."""
    r = Registry()
    for usage, handler, description in COMMANDS:
        r.register(usage, handler, description)
    return r


# --- status, broker, vm, log, stop ----------------------------------------------------------

async def cmd_status(ctx: Context, a: Args) -> None:
    node_name = ctx.server.settings.node
    up = _uptime(ctx)
    speedups = dict(LOADED)
    data = {"node": node_name, "version": __version__, "status": "started",
            "pid": os.getpid(), "uptime": uptime_text(up), "uptime_seconds": round(up, 3),
            "started_at": iso(time.time() - up), "speedups": speedups, "loop": _loop_name(),
            "python": sys.version.split()[0], "data_dir": ctx.ctl.data_dir}
    supervisor = getattr(ctx.node, "supervisor", None)
    workers = supervisor.workers() if supervisor is not None else None
    if workers is not None:
        data["workers"] = [{**w, "started_at": iso(w.get("started_at"))} for w in workers]
    if ctx.json:
        ctx.emit_json(data)
        return
    ctx.out(f"Node {node_name} {__version__} is started")
    pairs: list[tuple[str, Any]] = [
        ("pid", data["pid"]), ("uptime", data["uptime"]),
        ("speedups", ", ".join(f"{k}={v}" for k, v in speedups.items())),
        ("loop", data["loop"]), ("python", data["python"]), ("data_dir", data["data_dir"])]
    if workers is not None:
        pairs.append(("workers", ", ".join(f"{w['name']}={w['state']}" for w in workers)
                      or "none"))
    ctx.kv(pairs, width=10)


async def cmd_broker(ctx: Context, a: Args) -> None:
    up = _uptime(ctx)
    ctx.kv([("sysdescr", "mqttd MQTT broker"), ("version", __version__),
            ("uptime", uptime_text(up)),
            ("datetime", time.strftime("%Y-%m-%d %H:%M:%S"))],
           {"sysdescr": "mqttd MQTT broker", "version": __version__,
            "uptime": uptime_text(up), "uptime_seconds": round(up, 3),
            "datetime": iso(time.time()), "node": ctx.server.settings.node}, width=10)


def computed_stats(ctx: Context) -> dict[str, int]:
    """The stats that can be counted now from the registry, router and retainer."""
    node = ctx.node
    registry = node.registry
    router = node.broker.router
    subs, shared = router.count_subscriptions()
    routes = router.count_routes()
    return {
        "connections.count": len(ctx.server.connections),
        "channels.count": len(registry.channels),
        "sessions.count": len(registry.sessions),
        "sessions.persistent.count": sum(1 for s in registry.sessions.values()
                                         if s.persistent),
        "topics.count": routes,
        "routes.count": routes,
        "subscriptions.count": subs,
        "subscriptions.shared.count": shared,
        "retained.count": len(node.broker.retainer),
    }


async def cmd_broker_stats(ctx: Context, a: Args) -> None:
    stats = getattr(ctx.node, "stats", None)
    note = None
    if stats is not None and hasattr(stats, "snapshot"):
        values = dict(stats.snapshot())
        source = "stats"
    else:
        values = computed_stats(ctx)
        source = "computed"
        note = ("no stats collector on this node: counts computed now from the registry, "
                "router and retainer; the *.max values are not available")
    values = dict(sorted(values.items()))
    if ctx.json:
        ctx.emit_json({"source": source, "note": note, "stats": values})
        return
    if note:
        ctx.out(f"# {note}")
    ctx.kv(list(values.items()), width=_kv_width(values))


def _kv_width(values: dict[str, Any]) -> int:
    """emqx_ctl's ``~-30s``, wider when a name needs it."""
    return max([30] + [len(k) + 1 for k in values])


def computed_metrics(ctx: Context) -> dict[str, int]:
    """The counters the broker core keeps by itself (monotonic since start)."""
    node = ctx.node
    out = {}
    dropped = getattr(node.dispatcher, "dropped_no_subscribers", None)
    if dropped is not None:
        out["messages.dropped.no_subscribers"] = dropped
    expired = getattr(node.registry, "awaiting_rel_expired", None)
    if expired is not None:
        out["messages.dropped.await_pubrel_timeout"] = expired
    return out


async def cmd_broker_metrics(ctx: Context, a: Args) -> None:
    metrics = getattr(ctx.node, "metrics", None)
    note = None
    if metrics is not None and hasattr(metrics, "snapshot"):
        values = dict(metrics.snapshot())
        source = "metrics"
    else:
        values = computed_metrics(ctx)
        source = "computed"
        note = ("no metrics collector on this node: only the counters the broker core keeps "
                "itself are shown")
    values = dict(sorted(values.items()))
    if ctx.json:
        ctx.emit_json({"source": source, "note": note, "metrics": values})
        return
    if note:
        ctx.out(f"# {note}")
    ctx.kv(list(values.items()), width=_kv_width(values))


async def cmd_vm(ctx: Context, a: Args) -> None:
    monitor = ctx.ctl.monitor
    st = _proc_status()
    times = os.times()
    try:
        load1, load5, load15 = (round(x, 2) for x in os.getloadavg())
    except OSError:
        load1 = load5 = load15 = None  # type: ignore[assignment]
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = await asyncio.to_thread(_count_fds)  # /proc/self/fd may list 100k entries
    data: dict[str, dict[str, Any]] = {
        "cpu": {"percent": monitor.cpu_percent(), "user_seconds": round(times.user, 2),
                "system_seconds": round(times.system, 2), "load1": load1, "load5": load5,
                "load15": load15, "cores": os.cpu_count()},
        "memory": {"rss": st.get("VmRSS"), "peak_rss": st.get("VmHWM"),
                   "virtual": st.get("VmSize"), "gc_counts": list(gc.get_count()),
                   "gc_collections": [g["collections"] for g in gc.get_stats()]},
        "process": {"pid": os.getpid(), "threads": st.get("Threads", threading.active_count()),
                    "python": sys.version.split()[0]},
        "io": {"max_fds": soft, "active_fds": fds},
        "asyncio": {"loop": _loop_name(), "tasks": len(asyncio.all_tasks()),
                    "lag_ms": round(monitor.lag * 1000, 2),
                    "max_lag_1m_ms": round(monitor.max_lag() * 1000, 2)},
    }
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
    root = logging.getLogger()
    if level is not None:
        level = level.lower()
        if level not in LOG_LEVELS:
            raise UsageError(f"level must be one of {', '.join(LOG_LEVELS)}", "log")
        root.setLevel(getattr(logging, level.upper()))
        ctx.server.settings.log_level = level
        log.warning("log level set to %s by mqttd ctl", level)
    current = logging.getLevelName(root.getEffectiveLevel()).lower()
    ctx.result(current, {"level": current})


async def cmd_stop(ctx: Context, a: Args) -> None:
    node = ctx.server.settings.node
    if not ctx.json:
        ctx.err(f"Stopping {node} (pid {os.getpid()})...")
    await ctx.flush()
    ctx.server.request_stop("stop requested by mqttd ctl")
    await ctx.server.wait_stopped()
    ctx.result(f"{node} stopped", {"node": node, "pid": os.getpid(), "stopped": True})


async def cmd_help(ctx: Context, a: Args) -> None:
    (noun,) = a.pos
    if noun is not None:
        if not ctx.registry.has_noun(noun):
            raise UsageError(f"unknown command {noun!r}; see 'mqttd ctl help'")
        lines = ctx.registry.usage_lines(noun)
        ctx.result("\n".join(lines), [d for d in ctx.registry.help_data()
                                      if d["command"] == noun])
        return
    if ctx.json:
        ctx.emit_json(ctx.registry.help_data())
    else:
        ctx.out(ctx.registry.help_text())


# --- clients --------------------------------------------------------------------------------

_CLIENT_ORDER = (
    "clientid", "username", "peername", "proto_name", "proto_ver", "clean_start", "keepalive",
    "expiry_interval", "connected", "created_at", "connected_at", "subscriptions", "inflight",
    "max_inflight", "awaiting_rel", "mqueue_len", "max_mqueue", "delivered", "enqueued",
    "dropped", "recv_pkt", "send_pkt", "recv_msg", "send_msg",
)
_TIME_KEYS = ("created_at", "connected_at", "disconnected_at")

CLIENT_COLUMNS = [
    Col("clientid", "Client ID"), Col("username", "Username"), Col("peername", "Peer"),
    Col("proto_ver", "Proto", proto), Col("clean_start", "Clean"),
    Col("keepalive", "Keepalive", justify="right"),
    Col("expiry_interval", "Expiry", expiry, "right"),
    Col("subscriptions", "Subs", justify="right"), Col("inflight", "Inflight", justify="right"),
    Col("awaiting_rel", "AwaitRel", justify="right"),
    Col("send_msg", "Delivered", justify="right"), Col("mqueue_len", "Queued", justify="right"),
    Col("dropped", "Dropped", justify="right"), Col("connected", "Connected"),
    Col("connected_at", "Connected at", when),
]


def client_row(channel: Any) -> dict[str, Any] | None:
    """A client's info with times in RFC 3339 (None if it has no client id yet)."""
    if not channel.client_id:
        return None
    info = dict(channel.info())
    for key in _TIME_KEYS:
        if key in info:
            info[key] = iso(info[key])
    ordered = {k: info[k] for k in _CLIENT_ORDER if k in info}
    ordered.update(info)
    return ordered


def _show(ctx: Context, row: dict[str, Any]) -> None:
    if ctx.json:
        ctx.emit_json(row)
        return
    fmt: dict[str, Callable[[Any], str]] = {k: when for k in _TIME_KEYS}
    fmt.update(proto_ver=proto, expiry_interval=expiry)
    ctx.kv([(k, fmt[k](v) if k in fmt else v) for k, v in row.items()])


async def cmd_clients_list(ctx: Context, a: Args) -> None:
    channels = list(ctx.node.registry.channels.values())
    await ctx.table(CLIENT_COLUMNS, channels, client_row, footer=_plural("client"))


async def cmd_clients_show(ctx: Context, a: Args) -> None:
    (client_id,) = a.pos
    channel = ctx.node.registry.channels.get(client_id)
    if channel is None:
        hint = ""
        if client_id in ctx.node.registry.sessions:
            hint = f" (its session is held offline: mqttd ctl sessions show {client_id})"
        raise CtlError(NOT_FOUND + hint)
    row = client_row(channel)
    assert row is not None
    _show(ctx, row)


async def cmd_clients_kick(ctx: Context, a: Args) -> None:
    (client_id,) = a.pos
    if not ctx.node.registry.kick(client_id):
        raise CtlError(NOT_FOUND)
    ctx.result("ok", {"clientid": client_id, "kicked": True})


# --- sessions -------------------------------------------------------------------------------

SESSION_COLUMNS = [
    Col("clientid", "Client ID"), Col("connected", "Connected"),
    Col("persistent", "Persistent"), Col("expiry_interval", "Expiry", expiry, "right"),
    Col("subscriptions", "Subs", justify="right"), Col("inflight", "Inflight", justify="right"),
    Col("mqueue_len", "Queued", justify="right"), Col("dropped", "Dropped", justify="right"),
    Col("awaiting_rel", "AwaitRel", justify="right"), Col("created_at", "Created at", when),
]


def session_row(session: Any) -> dict[str, Any]:
    info = dict(session.info())
    info["created_at"] = iso(info.get("created_at"))
    info["connected"] = session.channel is not None
    info["persistent"] = bool(session.persistent)
    handle = getattr(session, "expire_handle", None)
    if handle is not None and session.channel is None:
        info["expires_in"] = round(max(0.0, handle.when() - asyncio.get_running_loop().time()),
                                   1)
    return info


async def cmd_sessions_list(ctx: Context, a: Args) -> None:
    (kind,) = a.pos
    sessions: Iterable[Any] = list(ctx.node.registry.sessions.values())
    if kind is not None:
        want = kind == "persistent"
        sessions = [s for s in sessions if bool(s.persistent) == want]
    await ctx.table(SESSION_COLUMNS, sessions, session_row, footer=_plural("session"))


async def cmd_sessions_show(ctx: Context, a: Args) -> None:
    (client_id,) = a.pos
    session = ctx.node.registry.sessions.get(client_id)
    if session is None:
        raise CtlError(NOT_FOUND)
    _show(ctx, session_row(session))


async def cmd_sessions_clean(ctx: Context, a: Args) -> None:
    (client_id,) = a.pos
    registry = ctx.node.registry
    if client_id not in registry.sessions:
        raise CtlError(NOT_FOUND)
    registry.clean_session(client_id)  # kicking a transient session's client ends it first
    ctx.result("ok", {"clientid": client_id, "cleaned": True})


# --- routes ---------------------------------------------------------------------------------

def route_row(node_name: str) -> Callable[[Any], dict[str, Any]]:
    def row(route: Any) -> dict[str, Any]:
        return {"topic": route.topic_filter, "node": node_name, "subscribers": len(route.subs),
                "shared": {(g if g is not None else "$queue"): len(group.members)
                           for g, group in route.groups.items()}}
    return row


def _route_line(row: dict[str, Any]) -> str:
    return f"{row['topic']} -> {row['node']}"


async def cmd_routes_list(ctx: Context, a: Args) -> None:
    routes = list(ctx.node.broker.router.routes.values())
    await ctx.table([], routes, route_row(ctx.server.settings.node), line=_route_line)


async def cmd_routes_show(ctx: Context, a: Args) -> None:
    (topic,) = a.pos
    router = ctx.node.broker.router
    if is_wildcard(topic):
        route = router.routes.get(topic)
        routes = [route] if route is not None else []
    else:
        routes = list(router.match(topic))
    if not routes:
        raise CtlError(NOT_FOUND)
    await ctx.table([], routes, route_row(ctx.server.settings.node), line=_route_line)


# --- subscriptions --------------------------------------------------------------------------

SUBSCRIPTION_COLUMNS = [
    Col("clientid", "Client ID"), Col("topic", "Topic"), Col("qos", "QoS", justify="right"),
    Col("no_local", "No local"), Col("retain_as_published", "Retain as published"),
    Col("retain_handling", "Retain handling", justify="right"),
    Col("subid", "Sub ID", lambda v: str(v) if v else "-", "right"),
]


def _subscriptions(sessions: list[Any]) -> Iterator[dict[str, Any]]:
    for session in sessions:
        for topic_filter, (opts, subid) in list(session.subscriptions.items()):
            yield {"clientid": session.client_id, "topic": topic_filter, "qos": opts.qos,
                   "no_local": opts.no_local, "retain_as_published": opts.retain_as_published,
                   "retain_handling": opts.retain_handling, "subid": subid}


def _same(row: dict[str, Any]) -> dict[str, Any]:
    return row


async def cmd_subscriptions_list(ctx: Context, a: Args) -> None:
    sessions = list(ctx.node.registry.sessions.values())
    await ctx.table(SUBSCRIPTION_COLUMNS, _subscriptions(sessions), _same,
                    footer=_plural("subscription"))


async def cmd_subscriptions_show(ctx: Context, a: Args) -> None:
    (client_id,) = a.pos
    session = ctx.node.registry.sessions.get(client_id)
    if session is None:
        raise CtlError(NOT_FOUND)
    await ctx.table(SUBSCRIPTION_COLUMNS, _subscriptions([session]), _same,
                    footer=_plural("subscription"))


async def cmd_subscriptions_add(ctx: Context, a: Args) -> None:
    client_id, topic_filter, qos_text = a.pos
    if qos_text not in ("0", "1", "2"):
        raise UsageError("QoS should be 0, 1, 2", "subscriptions")
    problem = filter_error(topic_filter)
    if problem:
        raise UsageError(f"bad topic filter {topic_filter!r}: {problem}", "subscriptions")
    registry = ctx.node.registry
    session = registry.sessions.get(client_id)
    if session is None:
        raise CtlError("Error: Session not found!")
    opts = SubOpts(int(qos_text))
    channel = session.channel
    if channel is not None and channel.zone.mountpoint:
        share = parse_shared(topic_filter)
        mp = channel.zone.mountpoint
        topic_filter = (mp + topic_filter if share is None else
                        (f"$share/{share[0]}/" if share[0] is not None else "$queue/")
                        + mp + share[1])
    is_new = ctx.node.dispatcher.subscribe(session, topic_filter, opts, 0)
    if channel is not None and parse_shared(topic_filter) is None:
        # As a SUBSCRIBE would: the retained messages of the filter go out now.
        for msg in ctx.node.broker.retainer.match(topic_filter):
            channel.deliver((msg, min(opts.qos, msg.qos), True, (), None), None)
    log.info("subscription %s added to %s by mqttd ctl", topic_filter, client_id)
    ctx.result("ok", {"clientid": client_id, "topic": topic_filter, "qos": opts.qos,
                      "new": is_new})


async def cmd_subscriptions_del(ctx: Context, a: Args) -> None:
    client_id, topic_filter = a.pos
    session = ctx.node.registry.sessions.get(client_id)
    if session is None:
        raise CtlError("Error: Session not found!")
    if not ctx.node.dispatcher.unsubscribe(session, topic_filter):
        raise CtlError(NOT_FOUND)
    ctx.result("ok", {"clientid": client_id, "topic": topic_filter, "deleted": True})


# --- retained -------------------------------------------------------------------------------

RETAINED_COLUMNS = [
    Col("topic", "Topic"), Col("qos", "QoS", justify="right"),
    Col("payload_size", "Size", justify="right"), Col("from", "From"),
    Col("stored_at", "Stored at", when),
    Col("expires_in", "Expires in", lambda v: "-" if v is None else f"{v}s", "right"),
]


def retained_row(retainer: Any) -> Callable[[str], dict[str, Any] | None]:
    def row(topic: str) -> dict[str, Any] | None:
        msg = retainer.get(topic)
        if msg is None:
            return None
        return {"topic": msg.topic, "qos": msg.qos, "payload_size": len(msg.payload),
                "from": msg.sender, "stored_at": iso(msg.timestamp),
                "expires_in": msg.remaining_expiry(time.monotonic()) if msg.expiry else None}
    return row


async def _retained_matching(retainer: Any, topic: str) -> list[Any]:
    if not is_wildcard(topic):
        msg = retainer.get(topic)
        return [msg] if msg is not None else []
    found: list[Any] = []

    def check(t: str) -> None:
        if match(topic, t):
            msg = retainer.get(t)
            if msg is not None:
                found.append(msg)

    await scan(retainer.topics(), check)
    return found


async def cmd_retained_list(ctx: Context, a: Args) -> None:
    retainer = ctx.node.broker.retainer
    await ctx.table(RETAINED_COLUMNS, retainer.topics(), retained_row(retainer),
                    footer=_plural("retained message"))


async def cmd_retained_show(ctx: Context, a: Args) -> None:
    (topic,) = a.pos
    limit = _int(a.opts.get("payload-limit"), "--payload-limit", "retained")
    if limit is None:
        limit = ctx.node.trace.payload_limit
    messages = await _retained_matching(ctx.node.broker.retainer, topic)
    if not messages:
        raise CtlError(NOT_FOUND)
    now = time.monotonic()
    if ctx.json:
        ctx.emit_json([{"topic": m.topic, "qos": m.qos, "from": m.sender,
                        "stored_at": iso(m.timestamp),
                        "expires_in": m.remaining_expiry(now) if m.expiry else None,
                        "payload_size": len(m.payload), "properties": m.properties,
                        **_payload_json(m.payload)} for m in messages])
        return
    blocks = []
    for m in messages:
        pairs: list[tuple[str, Any]] = [
            ("topic", m.topic), ("qos", m.qos), ("from", m.sender),
            ("stored_at", when(iso(m.timestamp))),
            ("expires_in", f"{m.remaining_expiry(now)}s" if m.expiry else None),
            ("payload_size", len(m.payload)), ("payload", format_bytes(m.payload, limit))]
        if m.properties:
            pairs.append(("properties", format_properties(m.properties, limit)))
        blocks.append("\n".join(f"{k:<13}: {v if v is not None else '-'}" for k, v in pairs))
    ctx.out("\n\n".join(blocks))


async def cmd_retained_clean(ctx: Context, a: Args) -> None:
    (topic,) = a.pos
    retainer = ctx.node.broker.retainer
    if topic is None:
        n = retainer.clear()
    else:
        problem = filter_error(topic)
        if problem:
            raise UsageError(f"bad topic {topic!r}: {problem}", "retained")
        if is_wildcard(topic):
            count = [0]

            def drop(t: str) -> None:
                if match(topic, t) and retainer.delete(t):
                    count[0] += 1

            await scan(retainer.topics(), drop)
            n = count[0]
        else:
            n = 1 if retainer.delete(topic) else 0
    log.info("%d retained messages cleaned by mqttd ctl", n)
    ctx.result(f"Cleaned {n} retained messages", {"cleaned": n})


# --- listeners ------------------------------------------------------------------------------

LISTENER_COLUMNS = [
    Col("name", "Name"), Col("listen_on", "Listen on"), Col("zone", "Zone"),
    Col("running", "Running"), Col("current_conn", "Connections", justify="right"),
    Col("max_conns", "Max connections", justify="right"),
    Col("max_conn_rate", "Max conn rate", lambda v: f"{v:g}/s" if v else "-", "right"),
]


def _listener_rows(ctx: Context) -> list[dict[str, Any]]:
    server = ctx.server
    rows = []
    for name, cfg in server.listener_config.items():
        host, port = server.listener_addr.get(name, (cfg.bind, cfg.port))
        rows.append({"name": name, "listen_on": f"{host}:{port}", "zone": cfg.zone,
                     "running": name in server.listeners,
                     "current_conn": len(server.listener_conns.get(name, ())),
                     "max_conns": cfg.max_connections,
                     "max_conn_rate": getattr(cfg, "max_conn_rate", 0)})
    return rows


async def cmd_listeners_list(ctx: Context, a: Args) -> None:
    await ctx.table(LISTENER_COLUMNS, _listener_rows(ctx), _same, footer=_plural("listener"))


async def cmd_listeners_stop(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    server = ctx.server
    if name not in server.listener_config:
        raise CtlError(f"Failed to stop {name} listener: not_found")
    if name not in server.listeners:
        raise CtlError(f"Failed to stop {name} listener: not_running")
    host, port = await server.stop_listener(name)
    ctx.result(f"Stop {name} listener on {host}:{port} successfully.",
               {"name": name, "listen_on": f"{host}:{port}", "running": False})


async def cmd_listeners_restart(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    server = ctx.server
    if name not in server.listener_config:
        raise CtlError(f"Failed to restart {name} listener: not_found")
    from ..server import ListenerError

    try:
        host, port = await server.restart_listener(name)
    except ListenerError as err:
        raise CtlError(f"Failed to restart {name} listener: {err}") from None
    ctx.result(f"Restarted {name} listener successfully.",
               {"name": name, "listen_on": f"{host}:{port}", "running": True})


# --- trace ----------------------------------------------------------------------------------

def _trace_line(info: dict[str, Any]) -> str:
    dest = info["destination"]
    dest = "<mqttd ctl>" if info["live"] else f'"{dest}"'
    return (f"Trace({info['type']}={info['target']}, destination={dest}, "
            f"lines={info['lines']})")


def _check_topic(topic: str) -> None:
    problem = filter_error(topic)
    if problem:
        raise UsageError(f"bad topic filter {topic!r}: {problem}", "trace")
    if parse_shared(topic) is not None:
        raise UsageError("trace a topic filter without $share/ or $queue/", "trace")


async def _trace(ctx: Context, kind: str, target: str, file: str | None,
                 limit_text: str | None) -> None:
    manager = ctx.node.trace
    limit = _int(limit_text, "--payload-limit", "trace")
    who = f"{kind} {target}"
    if kind == "topic":
        _check_topic(target)
    if file is not None:
        path = os.path.join(ctx.cwd, os.path.expanduser(file))
        if any(t.kind == kind and t.target == target and t.sink.destination == path
               for t in manager.traces()):
            raise CtlError(f"[error] trace {who}: already_existed")
        try:
            sink = FileSink(path, json_lines=ctx.json)
        except OSError as err:
            raise CtlError(f"[error] trace {who}: {err.strerror or err}") from None
        if kind == "clientid":
            manager.start_client(target, sink, limit)
        else:
            manager.start_topic(target, sink, limit)
        ctx.result(f"trace {who} successfully",
                   {"type": kind, "target": target, "destination": path, "started": True})
        return
    live = LiveSink(ctx)
    if kind == "clientid":
        channel = ctx.node.registry.channels.get(target)
        state = (f"connected from {channel.peer}" if channel is not None else
                 "not connected: tracing starts when it connects")
        trace = manager.start_client(target, live, limit)
        ctx.err(f"Tracing client {target} ({state}); Ctrl-C to stop.")
    else:
        trace = manager.start_topic(target, live, limit)
        ctx.err(f"Tracing messages published to {target}; Ctrl-C to stop.")
    ctx.follow()
    try:
        gone = await ctx.until_closed(live.ended)
    finally:
        manager.stop(trace)
    if not gone:
        reason = live.ended.result()
        if reason:
            ctx.err(reason)


async def cmd_trace_client(ctx: Context, a: Args) -> None:
    await _trace(ctx, "clientid", a.pos[0], a.opts.get("file"), a.opts.get("payload-limit"))


async def cmd_trace_topic(ctx: Context, a: Args) -> None:
    await _trace(ctx, "topic", a.pos[0], a.opts.get("file"), a.opts.get("payload-limit"))


async def cmd_trace_start_client(ctx: Context, a: Args) -> None:
    await _trace(ctx, "clientid", a.pos[0], a.pos[1], None)


async def cmd_trace_start_topic(ctx: Context, a: Args) -> None:
    await _trace(ctx, "topic", a.pos[0], a.pos[1], None)


async def cmd_trace_list(ctx: Context, a: Args) -> None:
    infos = [t.info() for t in ctx.node.trace.traces()]
    if ctx.json:
        ctx.emit_json(infos)
    elif infos:
        ctx.out("\n".join(_trace_line(i) for i in infos))


async def _trace_stop(ctx: Context, kind: str, target: str) -> None:
    n = ctx.node.trace.stop_target(kind, target, "trace stopped by mqttd ctl trace stop")
    if not n:
        raise CtlError(f"[error] stop tracing {kind} {target}: not_found")
    ctx.result(f"stop tracing {kind} {target} successfully",
               {"type": kind, "target": target, "stopped": n})


async def cmd_trace_stop_client(ctx: Context, a: Args) -> None:
    await _trace_stop(ctx, "clientid", a.pos[0])


async def cmd_trace_stop_topic(ctx: Context, a: Args) -> None:
    await _trace_stop(ctx, "topic", a.pos[0])


# --- plugins (when the node has a plugin manager) -------------------------------------------

def _plugins(ctx: Context) -> Any:
    plugins = getattr(ctx.node, "plugins", None)
    if plugins is None:
        raise CtlError("this node has no plugin manager")
    return plugins


async def cmd_plugins_list(ctx: Context, a: Args) -> None:
    infos = _plugins(ctx).list_plugins()
    if ctx.json:
        ctx.emit_json(infos)
    elif infos:
        ctx.out("\n".join(f"Plugin({p['name']}, description={p.get('description', '')}, "
                          f"active={'true' if p.get('active') else 'false'})" for p in infos))


async def cmd_plugins_load(ctx: Context, a: Args) -> None:
    (ref,) = a.pos
    plugins = _plugins(ctx)
    from ..plugins import PluginError

    try:
        plugins.load(ref)
    except PluginError as err:
        raise CtlError(f"Load plugin {ref} error: {err}.") from None
    ctx.result(f"Plugin {ref} loaded successfully.", {"name": ref, "loaded": True})


async def cmd_plugins_unload(ctx: Context, a: Args) -> None:
    (name,) = a.pos
    if not _plugins(ctx).unload(name):
        raise CtlError(f"Unload plugin {name} error: not_found.")
    ctx.result(f"Plugin {name} unloaded successfully.", {"name": name, "unloaded": True})


# The registration table: help prints it in this order. One line, one usage.
COMMANDS: list[tuple[str, Any, str]] = [
    ("status", cmd_status, "Show node status: version, uptime, speedups"),
    ("broker", cmd_broker, "Show broker version, uptime and description"),
    ("broker stats", cmd_broker_stats, "Show broker statistics of clients, topics, subscribers"),
    ("broker metrics", cmd_broker_metrics, "Show broker metrics"),
    ("clients list", cmd_clients_list, "List all clients"),
    ("clients show <ClientId>", cmd_clients_show, "Show a client"),
    ("clients kick <ClientId>", cmd_clients_kick, "Kick out a client (MQTT 5: DISCONNECT 0x98)"),
    ("sessions list [persistent|transient]", cmd_sessions_list,
     "List all sessions, or only persistent/transient ones"),
    ("sessions show <ClientId>", cmd_sessions_show, "Show a session"),
    ("sessions clean <ClientId>", cmd_sessions_clean,
     "Discard a session (kicking its client if connected)"),
    ("routes list", cmd_routes_list, "List all routes"),
    ("routes show <Topic>", cmd_routes_show,
     "Show the routes a message to <Topic> takes (a filter: that route)"),
    ("subscriptions list", cmd_subscriptions_list, "List all subscriptions"),
    ("subscriptions show <ClientId>", cmd_subscriptions_show, "Show subscriptions of a client"),
    ("subscriptions add <ClientId> <Topic> <QoS>", cmd_subscriptions_add,
     "Add a subscription to a client's session"),
    ("subscriptions del <ClientId> <Topic>", cmd_subscriptions_del,
     "Delete a subscription from a client's session"),
    ("retained list", cmd_retained_list, "List retained messages"),
    ("retained show <Topic> [--payload-limit <Bytes>]", cmd_retained_show,
     "Show the retained message(s) of a topic or filter"),
    ("retained clean [<Topic>]", cmd_retained_clean,
     "Delete all retained messages, or those of a topic or filter"),
    ("listeners list", cmd_listeners_list, "List listeners"),
    ("listeners stop <Name>", cmd_listeners_stop, "Stop a listener and close its clients"),
    ("listeners restart <Name>", cmd_listeners_restart, "Restart a listener"),
    ("trace client <ClientId> [--file <File>] [--payload-limit <Bytes>]", cmd_trace_client,
     "Trace a client's packets: live until Ctrl-C, or to a file"),
    ("trace topic <Topic> [--file <File>] [--payload-limit <Bytes>]", cmd_trace_topic,
     "Trace messages published to a topic filter"),
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
    ("vm", cmd_vm, "Show memory, CPU, file descriptors, tasks and event-loop lag"),
    ("log level [<Level>]", cmd_log_level, "Show or set the log level: debug|info|warning|error"),
    ("stop", cmd_stop, "Stop mqttd gracefully"),
    ("help [<Command>]", cmd_help, "Show this help, or one command's usage"),
]

__all__ = ["COMMANDS", "LoopMonitor", "build_registry"]

"""Per-client and per-topic traces (EMQX's emqx_tracer), for ``mqttd ctl trace``.

A client trace records every packet one client id sends and receives; a topic
trace records every message published to topics matching a filter. Each trace
writes to a sink: a live ``mqttd ctl`` stream (like ``tail -f``) or a file.

Cost model: a channel's ``tracer`` slot is None unless its client is traced,
so tracing one client costs the others nothing per packet. While at least one
client trace exists, each *new* connection is watched until its CONNECT (one
call per connection): that is how a trace of a client id that is not connected
yet starts when it connects, CONNECT included. A topic trace costs the publish
path one truthiness test of ``Node.topic_traces`` while none is active.

Passwords never reach a sink: CONNECT's password and any MQTT 5 authentication
data are printed as ``******``. Payloads are cut at the trace's payload limit
(``[node] trace_payload_limit``, or ``--payload-limit`` per trace).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from ..core.channel import Channel
from ..mqtt.packets import (
    AUTH,
    CONNACK,
    CONNECT,
    DISCONNECT,
    PACKET_NAMES,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
)
from ..mqtt.topics import match

if TYPE_CHECKING:
    from ..core.message import Message
    from ..core.registry import Registry

log = logging.getLogger("mqttd.trace")

MASK = "******"
#: Properties whose value is a secret.
_SECRET_PROPS = frozenset({"authentication_data"})
#: Default payload limit when the settings do not say.
DEFAULT_PAYLOAD_LIMIT = 256
#: A live stream whose socket holds more than this unsent drops lines (and says so).
LIVE_BUFFER_LIMIT = 4 * 1024 * 1024
#: Seconds between flushes of a file trace's buffer.
FILE_FLUSH_INTERVAL = 0.2


# --- formatting (EMQX's emqx_packet:format) ---------------------------------------------------

def format_bytes(data: bytes | bytearray | None, limit: int) -> str:
    """``b'...'``, cut at ``limit`` bytes with the full size noted."""
    if data is None:
        return "undefined"
    if len(data) <= limit:
        return repr(bytes(data))
    return f"{bytes(data[:limit])!r}...({len(data)} bytes)"


def _bool(value: Any) -> str:
    return "true" if value else "false"


def format_properties(props: dict[str, Any], limit: int) -> str:
    parts = []
    for key, value in props.items():
        if key in _SECRET_PROPS:
            parts.append(f"{key}={MASK}")
        elif isinstance(value, (bytes, bytearray)):
            parts.append(f"{key}={format_bytes(value, limit)}")
        else:
            parts.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    return "{" + ", ".join(parts) + "}"


def _rc(code: int) -> str:
    return f"0x{code:02X}"


def format_packet(p: Any, limit: int = DEFAULT_PAYLOAD_LIMIT) -> str:
    """One packet on one line, e.g. ``PUBLISH(Q1, R0, D0, Topic=t, PacketId=1, Payload=b'hi')``.

    The ``Q/R/D`` triple is the fixed header's QoS, RETAIN and DUP flags.
    """
    t = p.packet_type
    name = PACKET_NAMES.get(t, str(t))
    if t == PUBLISH:
        head = f"Q{p.qos}, R{int(p.retain)}, D{int(p.dup)}"
    elif t in (PUBREL, SUBSCRIBE, UNSUBSCRIBE):
        head = "Q1, R0, D0"
    else:
        head = "Q0, R0, D0"
    f: list[str] = []
    if t == CONNECT:
        f += [f"ClientId={p.client_id}", f"ProtoVer={p.proto_level}",
              f"CleanStart={_bool(p.clean_start)}", f"KeepAlive={p.keepalive}"]
        if p.username is not None:
            f.append(f"Username={p.username}")
        if p.password is not None:
            f.append(f"Password={MASK}")
        if p.will is not None:
            w = p.will
            will = (f"Will(Q{w.qos}, R{int(w.retain)}, Topic={w.topic}, "
                    f"Payload={format_bytes(w.payload, limit)}")
            if w.properties:
                will += f", Properties={format_properties(w.properties, limit)}"
            f.append(will + ")")
    elif t == CONNACK:
        f += [f"SessionPresent={_bool(p.session_present)}", f"ReasonCode={_rc(p.reason_code)}"]
    elif t == PUBLISH:
        f.append(f"Topic={p.topic}")
        if p.qos:
            f.append(f"PacketId={p.packet_id}")
        f.append(f"Payload={format_bytes(p.payload, limit)}")
    elif t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        f += [f"PacketId={p.packet_id}", f"ReasonCode={_rc(p.reason_code)}"]
    elif t == SUBSCRIBE:
        filters = []
        for topic_filter, o in p.topics:
            opts = [f"Q{o.qos}"]
            if o.no_local:
                opts.append("NL")
            if o.retain_as_published:
                opts.append("RAP")
            if o.retain_handling:
                opts.append(f"RH{o.retain_handling}")
            filters.append(f"{topic_filter}({', '.join(opts)})")
        f += [f"PacketId={p.packet_id}", f"TopicFilters=[{', '.join(filters)}]"]
    elif t == UNSUBSCRIBE:
        f += [f"PacketId={p.packet_id}", f"TopicFilters=[{', '.join(p.topics)}]"]
    elif t in (SUBACK, UNSUBACK):
        f.append(f"PacketId={p.packet_id}")
        if p.reason_codes or t == SUBACK:
            f.append(f"ReasonCodes=[{', '.join(_rc(c) for c in p.reason_codes)}]")
    elif t in (DISCONNECT, AUTH):
        f.append(f"ReasonCode={_rc(p.reason_code)}")
    props = getattr(p, "properties", None)
    if props:
        f.append(f"Properties={format_properties(props, limit)}")
    return f"{name}({head}{', ' if f else ''}{', '.join(f)})"


def format_message(msg: Message, limit: int) -> str:
    """A published message, in the PUBLISH format (without a packet id)."""
    text = (f"PUBLISH(Q{msg.qos}, R{int(msg.retain)}, Topic={msg.topic}, "
            f"Payload={format_bytes(msg.payload, limit)}")
    if msg.properties:
        text += f", Properties={format_properties(msg.properties, limit)}"
    return text + ")"


def timestamp(t: float) -> str:
    """Local time with milliseconds, as trace lines start."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def iso_time(t: float) -> str:
    """RFC 3339 local time with offset and milliseconds, for JSON."""
    import datetime

    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


# --- sinks ------------------------------------------------------------------------------------

class Sink(Protocol):
    """Where a trace's lines go."""

    json: bool
    destination: str

    def write(self, text: str, event: dict[str, Any]) -> None: ...

    def close(self, reason: str | None) -> None: ...


class FileSink:
    """Append lines to a file, flushed every ``FILE_FLUSH_INTERVAL`` seconds."""

    def __init__(self, path: str, *, json_lines: bool = False) -> None:
        self.destination = path
        self.json = json_lines
        self._file = open(path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
        self._flush_handle: asyncio.TimerHandle | None = None

    def write(self, text: str, event: dict[str, Any]) -> None:
        self._file.write((json.dumps(event, ensure_ascii=False) if self.json else text) + "\n")
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                FILE_FLUSH_INTERVAL, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        try:
            self._file.flush()
        except OSError as err:
            log.warning("trace file %s: %s", self.destination, err)

    def close(self, reason: str | None) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        try:
            self._file.close()
        except OSError as err:
            log.warning("trace file %s: %s", self.destination, err)


class LiveSink:
    """Stream lines to a ``mqttd ctl trace`` connection; never blocks the broker.

    When the client reads too slowly its socket buffer grows; past
    ``LIVE_BUFFER_LIMIT`` lines are dropped and the next line that fits says how many.
    """

    destination = "mqttd ctl"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.json = ctx.json
        self.dropped = 0
        self.ended: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def write(self, text: str, event: dict[str, Any]) -> None:
        writer = self.ctx.writer
        if writer.is_closing():
            raise ConnectionError("mqttd ctl went away")
        if writer.transport.get_write_buffer_size() > LIVE_BUFFER_LIMIT:
            self.dropped += 1
            return
        if self.dropped:
            self.ctx.err(f"[{self.dropped} trace lines dropped: mqttd ctl is not reading "
                         "fast enough]")
            self.dropped = 0
        self.ctx.frame({"t": "out", "s": (json.dumps(event, ensure_ascii=False) if self.json
                                          else text) + "\n"})

    def close(self, reason: str | None) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)


# --- traces -----------------------------------------------------------------------------------

class Trace:
    """One running trace: what it follows (``clientid``/``topic`` + target) and its sink."""

    __slots__ = ("kind", "lines", "payload_limit", "sink", "started_at", "target")

    def __init__(self, kind: str, target: str, sink: Sink, payload_limit: int) -> None:
        self.kind = kind
        self.target = target
        self.sink = sink
        self.payload_limit = payload_limit
        self.started_at = time.time()
        self.lines = 0

    def info(self) -> dict[str, Any]:
        return {"type": self.kind, "target": self.target, "destination": self.sink.destination,
                "live": isinstance(self.sink, LiveSink), "payload_limit": self.payload_limit,
                "started_at": iso_time(self.started_at), "lines": self.lines}


class ClientTraces:
    """The traces of one client id; what a traced channel's ``tracer`` calls."""

    __slots__ = ("client_id", "manager", "traces")

    def __init__(self, manager: TraceManager, client_id: str) -> None:
        self.manager = manager
        self.client_id = client_id
        self.traces: list[Trace] = []

    def emit(self, channel: Channel, direction: str, packet: Any) -> None:
        if not self.traces:  # the trace ended: this channel stops paying for it
            if isinstance(channel.tracer, ChannelTracer):
                channel.tracer = None
            return
        now = time.time()
        ts = timestamp(now)
        who = f"{self.client_id}@{channel.peer}"
        for trace in list(self.traces):
            text = format_packet(packet, trace.payload_limit)
            event = {"ts": iso_time(now), "clientid": self.client_id, "peername": channel.peer,
                     "dir": direction, "packet": PACKET_NAMES.get(packet.packet_type, "?"),
                     "text": text}
            self.manager.write(trace, f"{ts} {who} {direction} {text}", event)


class ChannelTracer:
    """The callable put in ``Channel.tracer`` of a traced client."""

    __slots__ = ("channel", "traces")

    def __init__(self, traces: ClientTraces, channel: Channel) -> None:
        self.traces = traces
        self.channel = channel

    def __call__(self, direction: str, packet: Any) -> None:
        self.traces.emit(self.channel, direction, packet)


class ConnectProbe:
    """Set on a new connection's channel while client traces exist: at its CONNECT it
    becomes that client's tracer (CONNECT included) or removes itself."""

    __slots__ = ("channel", "manager")

    def __init__(self, manager: TraceManager, channel: Channel) -> None:
        self.manager = manager
        self.channel = channel

    def __call__(self, direction: str, packet: Any) -> None:
        channel = self.channel
        channel.tracer = None
        if direction != "RECV" or packet.packet_type != CONNECT:
            return
        client_id = packet.client_id
        if channel.zone.use_username_as_clientid and packet.username:
            client_id = packet.username
        traces = self.manager.clients.get(client_id)
        if traces is not None:
            tracer = ChannelTracer(traces, channel)
            channel.tracer = tracer
            tracer(direction, packet)


class TraceManager:
    """Every running trace of a node (EMQX's emqx_tracer)."""

    def __init__(self, registry: Registry, payload_limit: int = DEFAULT_PAYLOAD_LIMIT) -> None:
        self.registry = registry
        #: Default payload limit of a trace (``[node] trace_payload_limit``).
        self.payload_limit = payload_limit
        #: client id -> its traces; non-empty means new connections are watched.
        self.clients: dict[str, ClientTraces] = {}
        #: topic filter -> its traces; Broker.publish tests this dict's truth.
        self.topics: dict[str, list[Trace]] = {}

    def traces(self) -> list[Trace]:
        found = [t for ct in self.clients.values() for t in ct.traces]
        found += [t for ts in self.topics.values() for t in ts]
        return found

    # --- client traces ------------------------------------------------------------------

    def start_client(self, client_id: str, sink: Sink, payload_limit: int | None = None
                     ) -> Trace:
        """Trace ``client_id`` from now on (and from its next CONNECT if not connected)."""
        trace = Trace("clientid", client_id, sink,
                      self.payload_limit if payload_limit is None else payload_limit)
        traces = self.clients.get(client_id)
        if traces is None:
            traces = self.clients[client_id] = ClientTraces(self, client_id)
        traces.traces.append(trace)
        channel = self.registry.channels.get(client_id)
        if isinstance(channel, Channel) and not isinstance(channel.tracer, ChannelTracer):
            channel.tracer = ChannelTracer(traces, channel)
        log.info("trace of client %s started (%s)", client_id, sink.destination)
        return trace

    def connected(self, client_id: str) -> bool:
        return client_id in self.registry.channels

    def watch(self, channel: Channel) -> None:
        """A new connection while client traces exist: check its CONNECT."""
        if self.clients and channel.tracer is None:
            channel.tracer = ConnectProbe(self, channel)

    # --- topic traces -------------------------------------------------------------------

    def start_topic(self, topic_filter: str, sink: Sink, payload_limit: int | None = None
                    ) -> Trace:
        trace = Trace("topic", topic_filter, sink,
                      self.payload_limit if payload_limit is None else payload_limit)
        self.topics.setdefault(topic_filter, []).append(trace)
        log.info("trace of topic %s started (%s)", topic_filter, sink.destination)
        return trace

    def on_publish(self, msg: Message, reached: int) -> None:
        """A message was published (called only while topic traces exist)."""
        now = 0.0
        for topic_filter, traces in list(self.topics.items()):
            if not match(topic_filter, msg.topic):
                continue
            if not now:
                now = time.time()
            for trace in list(traces):
                text = format_message(msg, trace.payload_limit)
                line = (f"{timestamp(now)} {text} from {msg.sender or '-'} -> {reached} "
                        f"subscriber{'s' if reached != 1 else ''}")
                event = {"ts": iso_time(now), "topic": msg.topic, "filter": topic_filter,
                         "from": msg.sender, "qos": msg.qos, "retain": msg.retain,
                         "payload_size": len(msg.payload), "subscribers": reached,
                         "text": text}
                self.write(trace, line, event)

    # --- writing and stopping ------------------------------------------------------------

    def write(self, trace: Trace, line: str, event: dict[str, Any]) -> None:
        """Write one line; a failing sink ends its trace, never the caller's work."""
        try:
            trace.sink.write(line, event)
            trace.lines += 1
        except (OSError, ValueError) as err:
            # A live reader that went away is routine; a file that cannot be written is not.
            level = logging.INFO if isinstance(err, ConnectionError) else logging.WARNING
            log.log(level, "trace %s %s to %s stopped: %s", trace.kind, trace.target,
                    trace.sink.destination, err)
            self.stop(trace, f"trace stopped: {err}")

    def stop(self, trace: Trace, reason: str | None = None) -> None:
        """End one trace (idempotent)."""
        if trace.kind == "clientid":
            traces = self.clients.get(trace.target)
            if traces is None or trace not in traces.traces:
                return
            traces.traces.remove(trace)
            if not traces.traces:
                del self.clients[trace.target]
                channel = self.registry.channels.get(trace.target)
                if isinstance(channel, Channel) and isinstance(channel.tracer, ChannelTracer):
                    channel.tracer = None
        else:
            found = self.topics.get(trace.target)
            if found is None or trace not in found:
                return
            found.remove(trace)
            if not found:
                del self.topics[trace.target]
        trace.sink.close(reason)
        log.info("trace of %s %s stopped (%s)", "client" if trace.kind == "clientid" else
                 "topic", trace.target, trace.sink.destination)

    def stop_target(self, kind: str, target: str, reason: str | None = None) -> int:
        """End every trace of one client id or topic filter; returns how many."""
        if kind == "clientid":
            found = list(self.clients[target].traces) if target in self.clients else []
        else:
            found = list(self.topics.get(target, ()))
        for trace in found:
            self.stop(trace, reason)
        return len(found)

    def close(self, reason: str | None = None) -> None:
        """End every trace (the node is stopping)."""
        for trace in self.traces():
            self.stop(trace, reason)

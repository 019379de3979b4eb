"""Per-client and per-topic traces (EMQX's emqx_tracer), for ``mqttd ctl trace``.

A client trace records every packet one client id sends and receives; a topic
trace records every message published to topics matching a filter. Each trace
writes to a sink: a live ``mqttd ctl`` stream (like ``tail -f``) or a file.

Cost model: a channel's ``tracer`` slot is None unless its client is traced,
so tracing one client costs the others nothing per packet. While at least one
client trace exists, each *new* connection is watched until its CONNECT (one
call per connection): that is how a trace of a client id that is not connected
yet starts when it connects, CONNECT included. A topic trace costs the publish
path one truthiness test of ``Broker.topic_traces`` while none is active.

Formatting (secrets masked, payloads cut at ``[node] trace_payload_limit`` or
``--payload-limit``) is in :mod:`mqttd.trace.format`, sinks in :mod:`mqttd.trace.sinks`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..core.channel import Channel
from ..mqtt.packets import CONNECT, PACKET_NAMES
from ..mqtt.topics import match
from .format import (
    DEFAULT_PAYLOAD_LIMIT,
    format_bytes,
    format_message,
    format_packet,
    format_properties,
    iso_time,
    timestamp,
)
from .sinks import FileSink, LiveSink, Sink

if TYPE_CHECKING:
    from ..core.message import Message
    from ..core.registry import Registry

__all__ = ["DEFAULT_PAYLOAD_LIMIT", "ChannelTracer", "ClientTraces", "ConnectProbe", "FileSink",
           "LiveSink", "Sink", "Trace", "TraceManager", "format_bytes", "format_message",
           "format_packet", "format_properties"]

log = logging.getLogger("mqttd.trace")


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

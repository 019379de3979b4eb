"""Client and topic traces (EMQX's emqx_mgmt trace / emqx_tracer management): start to a
file or to a sink a front end provides, list, stop.

A live trace's sink belongs to the front end that streams it (the ctl's
:class:`~mqttd.trace.manager.LiveSink` writes ctl frames); management checks
the target, starts the trace and hands back its handle to stop it with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.channel import Channel
from ..mqtt.topics import filter_error, parse_shared
from ..trace.manager import Trace
from ..trace.sinks import FileSink, Sink
from .errors import Conflict, Failed, InvalidArgument, NotFound
from .listing import Row

if TYPE_CHECKING:
    from ..core.registry import Registry
    from ..trace.manager import TraceManager

__all__ = ["TRACE_KINDS", "Traces"]

#: What a trace follows: a client id, or the messages published to a topic filter.
TRACE_KINDS = ("clientid", "topic")


class Traces:
    """The node's running traces."""

    def __init__(self, manager: TraceManager, registry: Registry) -> None:
        self.manager = manager
        self.registry = registry

    @property
    def payload_limit(self) -> int:
        """Payload bytes a trace shows unless told otherwise (``[node] trace_payload_limit``)."""
        return self.manager.payload_limit

    def all(self) -> list[Row]:
        """Every running trace: type, target, destination, live, payload limit, lines."""
        rows = [t.info() for t in self.manager.traces()]
        for row, t in zip(rows, self.manager.traces(), strict=True):
            # a front end's own streaming sink (the HTTP API's) says it is live
            if getattr(t.sink, "live", False):
                row["live"] = True
        return rows

    def check(self, kind: str, target: str) -> None:
        """InvalidArgument unless ``target`` can be traced as ``kind``."""
        if kind not in TRACE_KINDS:
            raise InvalidArgument(f"a trace follows one of {', '.join(TRACE_KINDS)}")
        if kind == "topic":
            problem = filter_error(target)
            if problem:
                raise InvalidArgument(f"bad topic filter {target!r}: {problem}")
            if parse_shared(target) is not None:
                raise InvalidArgument("trace a topic filter without $share/ or $queue/")

    def client_peer(self, client_id: str) -> str | None:
        """Where a client is connected from, or None if it is not connected now."""
        owner = self.registry.channels.get(client_id)
        if owner is None:
            return None
        return owner.peer if isinstance(owner, Channel) else ""

    def start_file(self, kind: str, target: str, path: str, *, json_lines: bool = False,
                   payload_limit: int | None = None) -> Row:
        """Trace to the file at ``path`` (appended to, JSON Lines if asked).

        Conflict("already_existed") if the same trace writes there already;
        Failed(<the system's reason>) if the file cannot be opened.
        """
        self.check(kind, target)
        if any(t.kind == kind and t.target == target and t.sink.destination == path
               for t in self.manager.traces()):
            raise Conflict(f"a trace of {kind} {target} writes to {path} already",
                           "already_existed")
        try:
            sink = FileSink(path, json_lines=json_lines)
        except OSError as err:
            raise Failed(f"cannot open {path}: {err.strerror or err}",
                         str(err.strerror or err)) from None
        self.start(kind, target, sink, payload_limit)
        return {"type": kind, "target": target, "destination": path, "started": True}

    def start(self, kind: str, target: str, sink: Sink, payload_limit: int | None = None
              ) -> Trace:
        """Trace to ``sink`` (a front end's live stream); stop it with :meth:`stop`."""
        self.check(kind, target)
        if kind == "clientid":
            return self.manager.start_client(target, sink, payload_limit)
        return self.manager.start_topic(target, sink, payload_limit)

    def stop(self, trace: Trace, reason: str | None = None) -> None:
        """End one trace (its sink is told ``reason``)."""
        self.manager.stop(trace, reason)

    def stop_target(self, kind: str, target: str, reason: str | None = None) -> Row:
        """End every trace of a client id or topic filter; NotFound("trace") if none."""
        n = self.manager.stop_target(kind, target, reason)
        if not n:
            raise NotFound("trace", f"{kind} {target}")
        return {"type": kind, "target": target, "stopped": n}

    def stop_all(self, reason: str | None = None) -> None:
        """End every trace (the node, or the front end streaming them, is stopping)."""
        self.manager.close(reason)

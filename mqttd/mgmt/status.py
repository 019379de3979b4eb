"""The node as a whole (EMQX's emqx_mgmt node and broker info, emqx_stats and emqx_metrics
reads): status, broker description, stats and metrics.

Stats and metrics come from the node's collectors; a node built without them
still answers with what can be counted now, and says so (``source`` and
``note``), rather than inventing values.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

from .. import SYSDESCR, __version__
from .._accel import LOADED
from .listing import Row, iso
from .vm import loop_name

if TYPE_CHECKING:
    from ..config import Settings
    from ..core.broker import Broker
    from ..metrics import Metrics
    from ..stats import Stats
    from ..supervisor import Supervisor
    from .control import ServerControl

__all__ = ["SYSDESCR", "Status", "uptime_text"]



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


class Status:
    """Node status, broker info, stats and metrics of one node."""

    def __init__(self, settings: Settings, started_at: float, metrics: Metrics | None,
                 stats: Stats | None, broker: Broker, supervisor: Supervisor | None,
                 control: ServerControl) -> None:
        self.settings = settings
        self.started_at = started_at
        self.metrics_source = metrics
        self.stats_source = stats
        self.broker_core = broker
        self.supervisor = supervisor
        self.control = control

    def uptime(self) -> float:
        """Seconds since the node was created."""
        return max(0.0, time.time() - self.started_at)

    def node(self) -> Row:
        """``status``: version, pid, uptime, speedups, loop, data directory, workers."""
        up = self.uptime()
        data_dir = self.settings.data_dir
        data: Row = {
            "node": self.settings.node, "version": __version__, "status": "started",
            "pid": os.getpid(), "uptime": uptime_text(up), "uptime_seconds": round(up, 3),
            "started_at": iso(time.time() - up), "speedups": dict(LOADED), "loop": loop_name(),
            "python": sys.version.split()[0],
            "data_dir": os.path.abspath(data_dir) if data_dir else None}
        if self.supervisor is not None:
            data["workers"] = [{**w, "started_at": iso(w.get("started_at"))}
                               for w in self.supervisor.workers()]
        return data

    def broker(self) -> Row:
        """``broker``: description, version, uptime, the time now."""
        up = self.uptime()
        return {"sysdescr": SYSDESCR, "version": __version__, "uptime": uptime_text(up),
                "uptime_seconds": round(up, 3), "datetime": iso(time.time()),
                "node": self.settings.node}

    def stats(self) -> Row:
        """``broker stats``: {"source", "note", "stats": name -> value, sorted}."""
        note = None
        if self.stats_source is not None:
            values = dict(self.stats_source.snapshot())
            source = "stats"
        else:
            values = self.computed_stats()
            source = "computed"
            note = ("no stats collector on this node: counts computed now from the registry, "
                    "router and retainer; the *.max values are not available")
        return {"source": source, "note": note, "stats": dict(sorted(values.items()))}

    def computed_stats(self) -> dict[str, int]:
        """The stats that can be counted now from the registry, router and retainer."""
        broker = self.broker_core
        registry = broker.registry
        subs, shared = broker.router.count_subscriptions()
        routes = broker.router.count_routes()
        return {
            "connections.count": self.control.connection_count(),
            "channels.count": len(registry.channels),
            "sessions.count": len(registry.sessions),
            "sessions.persistent.count": sum(1 for s in registry.sessions.values()
                                             if s.persistent),
            "topics.count": routes,
            "routes.count": routes,
            "subscriptions.count": subs,
            "subscriptions.shared.count": shared,
            "retained.count": len(broker.retainer),
        }

    def metrics(self) -> Row:
        """``broker metrics``: {"source", "note", "metrics": name -> value, sorted}."""
        note = None
        if self.metrics_source is not None:
            values = dict(self.metrics_source.snapshot())
            source = "metrics"
        else:
            values = self.computed_metrics()
            source = "computed"
            note = ("no metrics collector on this node: only the counters the broker core "
                    "keeps itself are shown")
        return {"source": source, "note": note, "metrics": dict(sorted(values.items()))}

    def computed_metrics(self) -> dict[str, int]:
        """The counters the broker core keeps by itself (monotonic since start)."""
        broker = self.broker_core
        return {"messages.dropped.no_subscribers": broker.dispatcher.dropped_no_subscribers,
                "messages.dropped.await_pubrel_timeout": broker.registry.awaiting_rel_expired}

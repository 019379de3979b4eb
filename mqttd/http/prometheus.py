"""``/metrics``: every metric and stat of the node in the Prometheus text format.

prometheus-client renders the exposition (its escaping, ``# HELP``/``# TYPE`` lines and
counter ``_total`` naming are what Prometheus parses; writing our own would be a second
copy of that format to keep right). Its default registry is not used: a collector of
our own reads the node when scraped, one snapshot of the counters (the compiled array
copied once into a dict) and one of the stats per scrape, and yields metric families
from those. Nothing is kept between scrapes, so scraping costs nothing while nobody
scrapes.

Names: ``mqttd_`` + the EMQX name with dots as underscores (``messages.received`` is
``mqttd_messages_received_total``, a counter; the stat ``connections.count`` is the gauge
``mqttd_connections_count``). Every sample has a ``node`` label; the listener gauges a
``listener`` label too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__

if TYPE_CHECKING:
    from ..mgmt.api import Management

__all__ = ["CONTENT_TYPE", "MetricsCollector", "metric_name", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_BAD = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    """``messages.qos0.received`` -> ``mqttd_messages_qos0_received``."""
    return "mqttd_" + _BAD.sub("_", name)


def _help(kind: str, name: str) -> str:
    words = name.replace(".", " ").replace("_", " ")
    if kind == "metric":
        return (f"{words} (EMQX metric {name}, counted since the node started; mqttd ctl "
                "broker metrics)")
    return f"{words} (EMQX stat {name}, refreshed every second; mqttd ctl broker stats)"


class MetricsCollector(Collector):
    """Yields the node's metrics, stats, listeners and process figures when scraped."""

    def __init__(self, mgmt: Management) -> None:
        self.mgmt = mgmt

    def collect(self) -> Iterator[Metric]:
        mgmt = self.mgmt
        status = mgmt.status
        node = mgmt.node_name
        labels = ["node"]
        source = status.metrics_source
        # One copy of the counters per scrape (Metrics.snapshot); the management row would
        # copy and sort them again.
        counters = source.snapshot() if source is not None else status.metrics()["metrics"]
        for name, value in counters.items():
            family = CounterMetricFamily(metric_name(name), _help("metric", name),
                                         labels=labels)
            family.add_metric([node], value)
            yield family
        stats_source = status.stats_source
        stats = (stats_source.snapshot() if stats_source is not None
                 else status.stats()["stats"])
        for name, value in stats.items():
            gauge = GaugeMetricFamily(metric_name(name), _help("stat", name), labels=labels)
            gauge.add_metric([node], value)
            yield gauge
        yield from self._listeners(node)
        info = GaugeMetricFamily("mqttd_build_info", "the running mqttd's version (value 1)",
                                 labels=["node", "version"])
        info.add_metric([node, __version__], 1)
        yield info
        up = GaugeMetricFamily("mqttd_uptime_seconds", "seconds since the node started",
                               labels=labels)
        up.add_metric([node], round(status.uptime(), 3))
        yield up
        lag = GaugeMetricFamily("mqttd_event_loop_lag_seconds", "how late the event loop ran "
                                "its last sampling timer (every 0.5 s): the latest pause any "
                                "client saw", labels=labels)
        lag.add_metric([node], mgmt.monitor.lag)
        yield lag

    def _listeners(self, node: str) -> Iterator[Metric]:
        labels = ["node", "listener", "type"]
        conns = GaugeMetricFamily("mqttd_listener_connections",
                                  "live connections accepted through the listener",
                                  labels=labels)
        limit = GaugeMetricFamily("mqttd_listener_max_connections",
                                  "connections the listener accepts at most", labels=labels)
        running = GaugeMetricFamily("mqttd_listener_running",
                                    "1 if the listener accepts connections, 0 if stopped",
                                    labels=labels)
        for row in self.mgmt.listeners.all():
            values = [node, row["name"], row["type"]]
            conns.add_metric(values, row["current_conn"])
            limit.add_metric(values, row["max_conns"])
            running.add_metric(values, 1 if row["running"] else 0)
        yield conns
        yield limit
        yield running


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of everything ``registry`` collects now."""
    return generate_latest(registry)


def registry_for(mgmt: Management) -> CollectorRegistry:
    """A registry of its own holding only the node's collector (not the process-global
    default one, which would add the client library's own process metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(mgmt))
    return registry

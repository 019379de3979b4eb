"""The ``$SYS`` topics (EMQX's emqx_sys and its presence module).

Every ``sys_interval`` seconds (node setting, default 10 as mosquitto's; 0 turns it
off) the node publishes two trees. EMQX's, under ``$SYS/brokers/<node>/``:

* ``version`` and ``sysdescr`` (retained), and ``$SYS/brokers`` itself
  (retained: the node names, comma-joined: in a cluster, every node up, this one
  included, as EMQX's);
* ``uptime`` (``"1 days, 2 hours, 3 minutes, 4 seconds"``: leading zero units
  left out, as EMQX prints it) and ``datetime`` (local ``YYYY-MM-DD HH:MM:SS``);
* ``stats/<stat>``, one message per stat with its dots kept
  (``stats/connections.count``), the value as text;
* ``metrics/<metric>`` with every ``.`` of the name replaced by ``/``
  (``metrics/packets/publish/received``), the value as text.

And mosquitto's, under ``$SYS/broker/`` (:data:`MOSQUITTO_TOPICS`), so mosquitto
dashboards and exporters work unchanged: every value retained as mosquitto retains
them, and published only when it changed (``uptime`` changes every time), as
mosquitto does. ``load/.../1min``, ``5min`` and ``15min`` are moving averages of
the rate per minute over those windows (exponentially weighted at each round, as
mosquitto's), printed with two decimals.

The first publication happens at start, so the retained topics are there at
once. EMQX publishes uptime and datetime on a separate 30 s heartbeat; here
everything follows ``sys_interval``.

Presence: when a client connects or disconnects, a JSON message (QoS 1, as
EMQX's presence module sends it) goes to
``$SYS/brokers/<node>/clients/<clientid>/connected`` or ``.../disconnected``,
with EMQX's fields (times in milliseconds since the epoch, as EMQX 4.1+).

``$SYS`` messages go straight to the broker: they do not run the
``message.publish`` hook and are not counted in ``messages.publish``
(EMQX does not count them either). Clients cannot publish to ``$SYS``: the
channel refuses it (PUBACK/PUBREC 0x87, or the message is dropped on 3.1.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from . import SYSDESCR, __version__
from .core.dispatch import Dispatcher
from .core.message import Message
from .core.services import ClientInfo, CloseReason
from .hooks import Callback, Hooks
from .metrics import Metrics
from .stats import Stats

__all__ = ["LOAD_WINDOWS", "MOSQUITTO_LOADS", "MOSQUITTO_NAMES", "MOSQUITTO_TOPICS", "SysPublisher",
           "format_uptime"]

log = logging.getLogger("mqttd.sys")

PRESENCE_QOS = 1

#: mosquitto's ``$SYS/broker/<topic>`` names and where each value comes from: a stat
#: (``stats:``), a metric (``metrics:``), or a difference of two stats.
MOSQUITTO_TOPICS: dict[str, str] = {
    "clients/connected": "stats:connections.count",
    "clients/active": "stats:connections.count",  # mosquitto's older name, still published
    "clients/maximum": "stats:connections.max",
    "clients/total": "stats:sessions.count",
    "clients/disconnected": "stats:sessions.count-connections.count",
    "clients/inactive": "stats:sessions.count-connections.count",
    "messages/received": "metrics:packets.received",  # mosquitto: packets of any type
    "messages/sent": "metrics:packets.sent",
    "publish/messages/received": "metrics:messages.received",
    "publish/messages/sent": "metrics:messages.sent",
    "publish/messages/dropped": "metrics:delivery.dropped",
    "bytes/received": "metrics:bytes.received",
    "bytes/sent": "metrics:bytes.sent",
    "subscriptions/count": "stats:subscriptions.count",
    "shared_subscriptions/count": "stats:subscriptions.shared.count",
    "retained messages/count": "stats:retained.count",
}

#: ``$SYS/broker/load/<name>/{1min,5min,15min}``: the metric whose rate each averages.
MOSQUITTO_LOADS: dict[str, str] = {
    "messages/received": "packets.received",
    "messages/sent": "packets.sent",
    "bytes/received": "bytes.received",
    "bytes/sent": "bytes.sent",
    "publish/received": "messages.received",
    "publish/sent": "messages.sent",
    "publish/dropped": "delivery.dropped",
    "connections": "client.connect",
}

#: The load windows, in seconds, by their topic suffix.
LOAD_WINDOWS = {"1min": 60.0, "5min": 300.0, "15min": 900.0}

#: Every name of the ``$SYS/broker/`` tree (each one retained message).
MOSQUITTO_NAMES: frozenset[str] = frozenset(
    {"version", "uptime", *MOSQUITTO_TOPICS,
     *(f"load/{name}/{window}" for name in MOSQUITTO_LOADS for window in LOAD_WINDOWS)})


def format_uptime(seconds: float) -> str:
    """``"4 minutes, 52 seconds"``: EMQX's uptime, leading zero units left out."""
    secs = int(seconds)
    parts = [(secs // 86400, "days"), (secs // 3600 % 24, "hours"),
             (secs // 60 % 60, "minutes"), (secs % 60, "seconds")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return ", ".join(f"{n} {unit}" for n, unit in parts)


def _ms(t: float) -> int:
    return int(t * 1000)


class SysPublisher:
    """Publishes the node's ``$SYS`` topics and the presence events."""

    def __init__(self, node_name: str, dispatcher: Dispatcher, hooks: Hooks, stats: Stats,
                 metrics: Metrics, started_at: float) -> None:
        self.node_name = node_name
        self.dispatcher = dispatcher
        self.hooks = hooks
        self.stats = stats
        self.metrics = metrics
        self.started_at = started_at
        self.prefix = f"$SYS/brokers/{node_name}/"
        #: The presence hooks' registrations (None: presence not loaded), and whether they
        #: are on their chains now (only while a "$" filter exists).
        self._presence: tuple[Callback, Callback] | None = None
        self._hooked = False
        #: The last payload published per mosquitto topic (only changes are published).
        self._last: dict[str, bytes] = {}
        #: Load averages (per minute) by topic, and the counters and time they were last
        #: computed from.
        self._loads: dict[str, float] = {}
        self._load_base: dict[str, int] = {}
        self._load_at: float | None = None
        #: The names of the cluster's nodes up, this one included (None: a single node).
        self.nodes: Callable[[], list[str]] | None = None

    # --- presence -------------------------------------------------------------------

    def load_presence(self) -> None:
        """Start publishing presence events (hooks on client.connected/disconnected).

        The two hooks are on their chains only while some filter begins with "$" (only
        such a filter can match a presence topic [MQTT-4.7.2-1]): the router tells when
        the first comes and the last goes. Without one, a connect and a leave run no
        presence hook and build no ClientInfo for it. Their place in the chains' order is
        taken here, as if they were on them all along.
        """
        if self._presence is None:
            hooks = self.hooks
            self._presence = (hooks.reserve(self.on_connected),
                              hooks.reserve(self.on_disconnected))
            router = self.dispatcher.router
            router.on_dollar = self._dollar_filters
            if router.dollar_filters:
                self._dollar_filters(True)

    def unload_presence(self) -> None:
        if self._presence is not None:
            self.dispatcher.router.on_dollar = None
            self._dollar_filters(False)
            self._presence = None

    def _dollar_filters(self, present: bool) -> None:
        """The router's first "$" filter came (``present``) or its last went."""
        if self._presence is None or present == self._hooked:
            return
        connected, disconnected = self._presence
        hooks = self.hooks
        if present:
            hooks.attach("client.connected", connected)
            hooks.attach("client.disconnected", disconnected)
        else:
            hooks.delete("client.connected", self.on_connected)
            hooks.delete("client.disconnected", self.on_disconnected)
        self._hooked = present

    @staticmethod
    def _client(client: ClientInfo) -> dict[str, Any]:
        return {
            "clientid": client.client_id,
            "username": client.username,
            "ipaddress": client.peerhost,
            "sockport": client.sockport,
            "proto_name": client.proto_name,
            "proto_ver": client.proto_ver,
            "connected_at": _ms(client.connected_at),
        }

    def _wanted(self, suffix: str) -> bool:
        """Whether anyone subscribes to this presence topic: QoS 1 but not retained, a
        presence message nobody matches is dropped anyway, so it is not even built (a
        connect and a disconnect otherwise cost two JSON documents and two dispatches)."""
        router = self.dispatcher.router
        return router.dollar_filters > 0 and bool(router.match(self.prefix + suffix))

    def on_connected(self, client: ClientInfo) -> None:
        if not self.dispatcher.router.dollar_filters:  # nobody can match: nothing to build
            return
        suffix = f"clients/{client.client_id}/connected"
        if not self._wanted(suffix):
            return
        info = self._client(client)
        info.update({
            "ts": _ms(time.time()),
            "connack": 0,
            "keepalive": client.keepalive,
            "clean_start": client.clean_start,
            "expiry_interval": client.expiry_interval,
        })
        self.publish(suffix, _json(info), qos=PRESENCE_QOS)

    def on_disconnected(self, client: ClientInfo, reason: CloseReason) -> None:
        if not self.dispatcher.router.dollar_filters:
            return
        suffix = f"clients/{client.client_id}/disconnected"
        if not self._wanted(suffix):
            return
        now = time.time()
        info = self._client(client)
        info.update({"ts": _ms(now), "reason": reason.value, "disconnected_at": _ms(now)})
        self.publish(suffix, _json(info), qos=PRESENCE_QOS)

    # --- the periodic topics --------------------------------------------------------

    def publish(self, suffix: str, payload: bytes, *, qos: int = 0, retain: bool = False
                ) -> int:
        """Publish ``payload`` to ``$SYS/brokers/<node>/<suffix>``; returns sessions reached."""
        return self.dispatcher.publish(Message(self.prefix + suffix, payload, qos, retain))

    def publish_all(self) -> None:
        """One round of the periodic topics."""
        publish = self.publish
        publish("version", __version__.encode(), retain=True)
        publish("sysdescr", SYSDESCR.encode(), retain=True)
        names = sorted(self.nodes()) if self.nodes is not None else [self.node_name]
        self.dispatcher.publish(Message("$SYS/brokers", ",".join(names).encode(), 0, True))
        publish("uptime", format_uptime(time.time() - self.started_at).encode())
        publish("datetime", time.strftime("%Y-%m-%d %H:%M:%S").encode())
        for name, value in self.stats.snapshot().items():
            publish("stats/" + name, str(value).encode())
        metrics = self.metrics.snapshot()
        for name, value in metrics.items():
            publish("metrics/" + name.replace(".", "/"), str(value).encode())
        self.publish_mosquitto(metrics, time.monotonic())

    # --- mosquitto's tree -----------------------------------------------------------

    def publish_mosquitto(self, metrics: dict[str, int], now: float) -> None:
        """One round of ``$SYS/broker/...``: each value retained, published if it changed."""
        stats = self.stats
        values: dict[str, str] = {
            "version": f"mqttd version {__version__}",
            "uptime": f"{int(time.time() - self.started_at)} seconds",
        }
        for topic, source in MOSQUITTO_TOPICS.items():
            kind, _, expr = source.partition(":")
            if kind == "metrics":
                values[topic] = str(metrics.get(expr, 0))
            else:
                first, _, minus = expr.partition("-")
                n = stats.get(first) - (stats.get(minus) if minus else 0)
                values[topic] = str(max(n, 0))
        for topic, avg in self._update_loads(metrics, now).items():
            values[topic] = f"{avg:.2f}"
        last = self._last
        dispatch = self.dispatcher.publish
        for topic, text in values.items():
            payload = text.encode()
            if last.get(topic) != payload:
                last[topic] = payload
                dispatch(Message("$SYS/broker/" + topic, payload, 0, True))

    def _update_loads(self, metrics: dict[str, int], now: float) -> dict[str, float]:
        """The load averages after this round: each window's average moves toward the rate
        (per minute) since the last round by 1 - e^(-elapsed/window)."""
        loads = self._loads
        base = self._load_base
        previous = self._load_at
        self._load_at = now
        for name, metric in MOSQUITTO_LOADS.items():
            count = metrics.get(metric, 0)
            if previous is None or now <= previous:
                for suffix in LOAD_WINDOWS:
                    loads.setdefault(f"load/{name}/{suffix}", 0.0)
            else:
                elapsed = now - previous
                rate = (count - base.get(name, count)) * 60.0 / elapsed
                for suffix, window in LOAD_WINDOWS.items():
                    topic = f"load/{name}/{suffix}"
                    keep = math.exp(-elapsed / window)
                    loads[topic] = loads.get(topic, 0.0) * keep + rate * (1.0 - keep)
            base[name] = count
        return loads

    async def run(self, interval: float) -> None:
        """The $SYS worker: publish now, then every ``interval`` seconds (run it supervised)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.publish_all()
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))


def _json(info: dict[str, Any]) -> bytes:
    return json.dumps(info, separators=(",", ":")).encode()

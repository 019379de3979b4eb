"""The composition root: builds one node's services and wires them together.

No protocol logic lives here: each service is built with exactly what it
needs (the broker gets the loop's timers, the trace manager the registry,
``$SYS`` the dispatcher and the counters, plugins a :class:`PluginContext`),
so no object reaches through another to find a third.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .config import Settings
from .core.broker import Broker
from .core.message import Message
from .hooks import Hooks
from .metrics import HOOKS_FAILED, WORKERS_RESTARTED, Metrics
from .plugins import PluginContext, PluginManager
from .stats import Stats
from .supervisor import Supervisor
from .sys_topics import SysPublisher
from .trace.manager import TraceManager


class LoopTimers:
    """The core's :class:`~mqttd.core.services.Timers` on the running event loop."""

    __slots__ = ()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any
                   ) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback, *args)


class Node:
    """One mqttd node: settings, counters, hooks, the broker and the operations services."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings = settings or Settings()
        #: Wall-clock time the node was created (uptime counts from here).
        self.started_at = time.time()
        #: Counters by index (mqttd.metrics); gauges with their maxima (mqttd.stats).
        self.metrics = Metrics()
        self.stats = Stats()
        #: Extension points: chains of callbacks per hook point (mqttd.hooks).
        self.hooks = Hooks()
        self.hooks.on_failure = self._hook_failed
        #: What every channel calls: access, publish, subscribe, sessions.
        self.broker = Broker(settings, self.metrics, self.hooks, LoopTimers())
        self.registry = self.broker.registry
        self.dispatcher = self.broker.dispatcher
        #: Client and topic traces (mqttd ctl trace); the broker tests the topic table's
        #: truth on every publish.
        self.trace = TraceManager(self.registry, settings.trace_payload_limit)
        self.broker.topic_traces = self.trace.topics
        self.broker.trace_publish = self.trace.on_publish
        self.plugins = PluginManager(PluginContext(self.hooks, self.metrics, self.stats,
                                                   settings, self.publish))
        #: Background workers (stats tick, $SYS, sweeps, trace writers), restarted on crash.
        self.supervisor = Supervisor(on_restart=self._worker_restarted)
        self.sys = SysPublisher(settings.node, self.dispatcher, self.hooks, self.stats,
                                self.metrics, self.started_at)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        """Publish as the broker itself (plugins' ``ctx.publish``); sessions reached."""
        return self.broker.publish(Message(topic, payload, qos, retain))

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Load the configured plugins and start the background workers (in the loop).

        Raises mqttd.plugins.PluginError if a configured plugin cannot be loaded.
        """
        self.plugins.load_all(self.settings.plugins)
        self._register_stats()
        self.sys.load_presence()
        self.supervisor.start_child("stats", self.stats.run)
        interval = self.settings.sys_interval
        if interval > 0:
            self.supervisor.start_child("sys", lambda: self.sys.run(interval))

    async def stop(self) -> None:
        """Stop the background workers and unload the plugins."""
        await self.supervisor.stop()
        self.sys.unload_presence()
        self.plugins.unload_all()

    def _register_stats(self) -> None:
        # Each component registers its own update function (EMQX's emqx_cm, emqx_router
        # and emqx_retainer each call emqx_stats:update_interval in their init).
        self.registry.register_stats(self.stats)
        self.broker.router.register_stats(self.stats)
        self.broker.retainer.register_stats(self.stats)

    def _hook_failed(self) -> None:
        self.metrics.inc(HOOKS_FAILED)

    def _worker_restarted(self) -> None:
        self.metrics.inc(WORKERS_RESTARTED)

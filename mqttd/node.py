"""The broker node: wires the broker, the registry and the extension points together.

Channels talk to the rest of the broker only through the node, so that
authentication, authorisation and the hook points sit in one place.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .core.dispatch import Broker
from .config import Settings
from .hooks import Hooks
from .metrics import (
    CLIENT_ACL_ALLOW,
    CLIENT_ACL_DENY,
    CLIENT_ACL_IGNORE,
    CLIENT_AUTH_ANONYMOUS,
    CLIENT_AUTH_FAILURE,
    CLIENT_AUTH_IGNORE,
    CLIENT_AUTH_SUCCESS,
    HOOKS_FAILED,
    MESSAGES_ACKED,
    MESSAGES_PUBLISH,
    MESSAGES_RETAINED,
    WORKERS_RESTARTED,
    Metrics,
)
from .plugins import PluginManager
from .core.registry import Registry
from .stats import Stats
from .supervisor import Supervisor
from .sys_topics import SysPublisher
from .trace.manager import TraceManager

if TYPE_CHECKING:
    from .core.channel import Channel
    from .core.message import Message
    from .mqtt.packets import SubOpts

log = logging.getLogger("mqttd.node")


class Node:
    """One mqttd node: settings, broker (router + retainer) and registry."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        default_zone = next(iter(self.settings.zones.values()))
        self.broker = Broker(shared_strategy=default_zone.shared_subscription_strategy)
        self.registry = Registry(self)
        #: Client and topic traces (mqttd ctl trace). ``topic_traces`` is its filter table:
        #: empty while no topic is traced, so the publish path pays one falsy test.
        self.trace = TraceManager(self)
        self.topic_traces = self.trace.topics
        #: Wall-clock time the node was created (uptime counts from here).
        self.started_at = time.time()
        #: Counters by index (mqttd.metrics); gauges with their maxima (mqttd.stats).
        self.metrics = Metrics()
        self.stats = Stats()
        #: Extension points: chains of callbacks per hook point (mqttd.hooks).
        self.hooks = Hooks()
        self.hooks.on_failure = self._hook_failed
        self.broker.metrics = self.metrics
        self.broker.hooks = self.hooks
        self.plugins = PluginManager(self)
        #: Background workers (stats tick, $SYS, sweeps, trace writers), restarted on crash.
        self.supervisor = Supervisor(on_restart=self._worker_restarted)
        self.sys = SysPublisher(self)

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

    # --- the seams the channel and the registry call --------------------------------

    def run_hook(self, name: str, *args: Any) -> None:
        """Run hook point ``name`` (a notification) with ``args``."""
        self.hooks.run(name, *args)

    def authenticate(self, client_id: str, username: str | None, password: bytes | None,
                     peer: str) -> int:
        """0 to accept the client, or a CONNACK reason code to refuse it.

        Without an authentication callback every client is accepted (counted as
        ``client.auth.ignore``); with one, the fold's result decides.
        """
        metrics = self.metrics  # client.authenticate is the sum of the three outcomes
        hooks = self.hooks
        if hooks.client_authenticate:
            code = int(hooks.run_fold("client.authenticate",
                                      (client_id, username, password, peer), 0))
            metrics.inc(CLIENT_AUTH_FAILURE if code else CLIENT_AUTH_SUCCESS)
        else:
            code = 0
            metrics.inc(CLIENT_AUTH_IGNORE)
        if not code and username is None:
            metrics.inc(CLIENT_AUTH_ANONYMOUS)
        return code

    def check_acl(self, channel: Channel, action: str, topic: str) -> int:
        """0 to allow ``action`` ("publish"/"subscribe") on ``topic``, else a reason code."""
        metrics = self.metrics  # client.check_acl is the sum of the three outcomes
        hooks = self.hooks
        if hooks.client_check_acl:
            code = int(hooks.run_fold("client.check_acl", (channel, action, topic), 0))
            metrics.inc(CLIENT_ACL_DENY if code else CLIENT_ACL_ALLOW)
            return code
        metrics.inc(CLIENT_ACL_IGNORE)
        return 0

    def publish(self, msg: Message) -> int:
        """Publish a client's message (or a will): the message.publish hook, then the broker.

        Returns the number of sessions reached. ``$SYS`` messages do not come this way.
        """
        metrics = self.metrics
        metrics.inc(MESSAGES_PUBLISH)
        hooks = self.hooks
        if hooks.message_publish:
            result = hooks.run_fold("message.publish", (), msg)
            if result is None:
                log.debug("a message.publish callback stopped the message to %s", msg.topic)
                return 0
            msg = result
        if msg.retain and msg.payload:
            metrics.inc(MESSAGES_RETAINED)
        n = self.broker.publish(msg)
        if self.topic_traces:
            self.trace.on_publish(msg, n)
        return n

    def publish_will(self, msg: Message) -> None:
        log.debug("publishing will of %s to %s", msg.sender, msg.topic)
        self.publish(msg)

    def subscribe(self, channel: Channel, topic_filter: str, opts: SubOpts, subid: int) -> bool:
        """Add the subscription to the channel's session; True if it is new (not replaced)."""
        is_new = self.broker.subscribe(channel.session, topic_filter, opts, subid)
        hooks = self.hooks
        if hooks.session_subscribed:
            hooks.run("session.subscribed", channel.session, topic_filter, opts, is_new)
        return is_new

    def unsubscribe(self, channel: Channel, topic_filter: str) -> bool:
        """Remove the subscription; False if the session had none for ``topic_filter``."""
        found = self.broker.unsubscribe(channel.session, topic_filter)
        hooks = self.hooks
        if found and hooks.session_unsubscribed:
            hooks.run("session.unsubscribed", channel.session, topic_filter)
        return found

    def acked(self, channel: Channel, msg: Message) -> None:
        """A client acknowledged a QoS 1/2 delivery (PUBACK, or PUBCOMP)."""
        self.metrics.inc(MESSAGES_ACKED)
        hooks = self.hooks
        if hooks.message_acked:
            hooks.run("message.acked", channel, msg)

"""Auto-subscribe (EMQX's emqx_auto_subscribe): subscriptions every client gets when it
connects.

Each configured topic (``${clientid}`` and ``${username}`` allowed) is subscribed with its
options on ``client.connected``, after CONNACK, through the broker as a SUBSCRIBE would be
(``session.subscribed`` runs; retained messages are sent as Retain Handling says), with the
client's zone mountpoint and its ``max_qos_allowed``. The operator chose these filters:
authorization and ``max_subscriptions`` are not asked. A placeholder whose value is missing
(no user name) or holds ``+``, ``#`` or ``/`` skips that topic (counted): a client id must
not widen what it is subscribed to.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import AutoSubscribeTopic
from ..core.services import ClientInfo
from ..mqtt.packets import SubOpts
from ..mqtt.topics import parse_shared
from .base import Module, ModuleContext

__all__ = ["AutoSubscribe", "expand"]

log = logging.getLogger("mqttd.modules.auto_subscribe")

_UNSAFE = ("+", "#", "/")


def expand(topic: str, client: ClientInfo) -> str | None:
    """``topic`` with the client's placeholders filled in; None if one cannot be."""
    for name, value in (("${clientid}", client.client_id), ("${username}", client.username)):
        if name in topic:
            if not value or any(c in value for c in _UNSAFE):
                return None
            topic = topic.replace(name, value)
    return topic


def _mount(mountpoint: str, topic_filter: str) -> str:
    share = parse_shared(topic_filter)
    if share is None:
        return mountpoint + topic_filter
    group, real = share
    return (f"$share/{group}/" if group is not None else "$queue/") + mountpoint + real


class AutoSubscribe(Module):
    """Subscribe every client to the configured topics at connect."""

    name = "auto_subscribe"
    description = "Auto-subscribe: topics subscribed for every client at connect"

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.topics: list[AutoSubscribeTopic] = ctx.settings.modules.auto_subscribe.topics
        self._subscribed = ctx.metrics.new("auto_subscribe.subscribed")
        self._skipped = ctx.metrics.new("auto_subscribe.skipped")

    def load(self) -> None:
        if self.topics:
            self.hook("client.connected", self._connected)

    def info(self) -> dict[str, Any]:
        metrics = self.ctx.metrics
        return {"topics": len(self.topics), "subscribed": metrics.get(self._subscribed),
                "skipped": metrics.get(self._skipped)}

    def _connected(self, client: ClientInfo) -> None:
        broker = self.ctx.broker
        session = broker.registry.sessions.get(client.client_id)
        if session is None or session.channel is None:
            return
        zone = self.ctx.settings.zones.get(client.zone)
        max_qos = zone.max_qos_allowed if zone is not None else 2
        upgrade = zone.upgrade_qos if zone is not None else False
        for entry in self.topics:
            topic_filter = expand(entry.topic, client)
            if topic_filter is None:
                self.ctx.metrics.inc(self._skipped)
                log.debug("client %s: auto-subscribe topic %s skipped: its placeholder's "
                          "value is missing or holds +, # or /", client.client_id,
                          entry.topic)
                continue
            if client.mountpoint:
                topic_filter = _mount(client.mountpoint, topic_filter)
            opts = SubOpts(min(entry.qos, max_qos), entry.no_local,
                           entry.retain_as_published, entry.retain_handling)
            is_new = broker.subscribe(session, topic_filter, opts, 0)
            self.ctx.metrics.inc(self._subscribed)
            channel = session.channel
            if channel is None or parse_shared(topic_filter) is not None:
                continue  # retained messages are not sent for shared subscriptions
            if opts.retain_handling == 0 or (opts.retain_handling == 1 and is_new):
                for msg in broker.retained(topic_filter):
                    qos = opts.qos if opts.qos < msg.qos or upgrade else msg.qos
                    channel.deliver((msg, qos, True, (), None), None)

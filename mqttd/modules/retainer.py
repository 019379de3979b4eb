"""Retainer limits: what is kept as a retained message (EMQX's retainer settings).

On ``message.retain`` (the dispatcher asks it before storing a retained message) a
message over a limit is not kept, and the reason is counted: its payload is larger than
``max_payload_size`` (``retainer.refused.payload_too_large``), ``max_retained_messages``
are kept already and its topic is a new one (``retainer.refused.max_messages``), or its
sender came in on a listener of ``disabled_listeners`` (``retainer.refused.listener``).
The message itself is still delivered, retain flag and all. A retained message without an
expiry gets ``msg_expiry_interval`` (its Message Expiry Interval, so subscribers and the
durable store see it too). Deleting (an empty payload) is never refused; ``$SYS`` topics
are the broker's own and not limited.
"""

from __future__ import annotations

from typing import Any

from ..config import RetainerSettings
from ..core.message import Message
from ..core.services import ClientInfo, CloseReason
from ..hooks import Stop
from .base import Module, ModuleContext

__all__ = ["RetainerLimits"]


class RetainerLimits(Module):
    """Limits on retained messages: count, payload size, default expiry, listeners."""

    name = "retainer"
    description = "Retainer limits: max messages, max payload size, default expiry, listeners"

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        settings: RetainerSettings = ctx.settings.modules.retainer
        self.settings = settings
        self.off_listeners = frozenset(settings.disabled_listeners)
        #: client id -> connected_at, for clients connected through a listener of
        #: ``disabled_listeners`` (connected_at tells a taken-over connection's late
        #: disconnect from the new one's).
        self._off_clients: dict[str, float] = {}
        metrics = ctx.metrics
        self._too_large = metrics.new("retainer.refused.payload_too_large")
        self._full = metrics.new("retainer.refused.max_messages")
        self._listener = metrics.new("retainer.refused.listener")

    def load(self) -> None:
        self.hook("message.retain", self._retain)
        if self.off_listeners:
            self.hook("client.connected", self._connected)
            self.hook("client.disconnected", self._disconnected)

    def unload(self) -> None:
        super().unload()
        self._off_clients.clear()

    def info(self) -> dict[str, Any]:
        metrics = self.ctx.metrics
        return {"retained": self.ctx.broker.retainer.clients_count(),
                "max_retained_messages": self.settings.max_retained_messages,
                "max_payload_size": self.settings.max_payload_size,
                "msg_expiry_interval": self.settings.msg_expiry_interval,
                "disabled_listeners": sorted(self.off_listeners),
                "clients_on_disabled_listeners": len(self._off_clients),
                "refused_payload_too_large": metrics.get(self._too_large),
                "refused_max_messages": metrics.get(self._full),
                "refused_listener": metrics.get(self._listener)}

    def _connected(self, client: ClientInfo) -> None:
        if client.listener in self.off_listeners:
            self._off_clients[client.client_id] = client.connected_at
        else:
            self._off_clients.pop(client.client_id, None)

    def _disconnected(self, client: ClientInfo, reason: CloseReason) -> None:
        if self._off_clients.get(client.client_id) == client.connected_at:
            del self._off_clients[client.client_id]

    def _retain(self, msg: Message) -> Any:
        if not msg.payload or msg.topic.startswith("$SYS/"):
            return None
        settings = self.settings
        metrics = self.ctx.metrics
        if msg.sender is not None and msg.sender in self._off_clients:
            metrics.inc(self._listener)
            return Stop(None)
        if settings.max_payload_size and len(msg.payload) > settings.max_payload_size:
            metrics.inc(self._too_large)
            return Stop(None)
        retainer = self.ctx.broker.retainer
        if settings.max_retained_messages \
                and retainer.clients_count() >= settings.max_retained_messages \
                and retainer.get(msg.topic) is None:
            metrics.inc(self._full)
            return Stop(None)
        interval = settings.msg_expiry_interval
        if interval and not msg.expiry:
            return Message(msg.topic, msg.payload, msg.qos, msg.retain,
                           {**msg.properties, "message_expiry_interval": interval},
                           msg.sender)
        return None

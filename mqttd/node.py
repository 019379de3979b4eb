"""The broker node: wires the broker, the registry and the extension points together.

Channels talk to the rest of the broker only through the node, so that
authentication, authorisation and the hook points sit in one place.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .broker import Broker
from .config import Settings
from .registry import Registry

if TYPE_CHECKING:
    from .channel import Channel
    from .message import Message
    from .packets import SubOpts

log = logging.getLogger("mqttd.node")


class Node:
    """One mqttd node: settings, broker (router + retainer) and registry."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        default_zone = next(iter(self.settings.zones.values()))
        self.broker = Broker(shared_strategy=default_zone.shared_subscription_strategy)
        self.registry = Registry(self)
        #: Extension points (mqttd.hooks.Hooks once the operations layer is loaded).
        self.hooks: Any = None

    def run_hook(self, name: str, *args: Any) -> None:
        if self.hooks is not None:
            self.hooks.run(name, *args)

    def authenticate(self, client_id: str, username: str | None, password: bytes | None,
                     peer: str) -> int:
        """0 to accept the client, or a CONNACK reason code to refuse it."""
        if self.hooks is not None:
            return int(self.hooks.run_fold("client.authenticate",
                                           (client_id, username, password, peer), 0))
        return 0

    def check_acl(self, channel: Channel, action: str, topic: str) -> int:
        """0 to allow ``action`` ("publish"/"subscribe") on ``topic``, else a reason code."""
        if self.hooks is not None:
            return int(self.hooks.run_fold("client.check_acl", (channel, action, topic), 0))
        return 0

    def publish(self, msg: Message) -> int:
        return self.broker.publish(msg)

    def publish_will(self, msg: Message) -> None:
        log.debug("publishing will of %s to %s", msg.sender, msg.topic)
        self.broker.publish(msg)

    def subscribe(self, channel: Channel, topic_filter: str, opts: SubOpts, subid: int) -> bool:
        return self.broker.subscribe(channel.session, topic_filter, opts, subid)

    def unsubscribe(self, channel: Channel, topic_filter: str) -> bool:
        return self.broker.unsubscribe(channel.session, topic_filter)

    def acked(self, channel: Channel, msg: Message) -> None:
        if self.hooks is not None:
            self.hooks.run("message.acked", channel, msg)

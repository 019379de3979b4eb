"""The node's bridges: built from ``[bridges.<name>]``, started and stopped at run time,
fed by one ``message.publish`` callback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..config import BridgeSettings
from ..core.broker import Broker
from ..core.message import Message
from ..hooks import Hooks
from ..store.kv import KVSpace
from .client import Bridge

__all__ = ["BridgeError", "BridgeManager"]

log = logging.getLogger("mqttd.bridge")

#: Last on message.publish: a message another callback stopped (``$delayed/``...) is not
#: forwarded, and the bridge sees the topic that is published.
PRIORITY = -1000


class BridgeError(Exception):
    """No such bridge."""


class BridgeManager:
    """Every configured bridge of one node."""

    def __init__(self, settings: list[BridgeSettings], hooks: Hooks, broker: Broker,
                 node: str) -> None:
        self.hooks = hooks
        self.bridges = {s.name: Bridge(s, broker, node) for s in settings}
        self._egress = tuple(b for b in self.bridges.values() if b.settings.egress)
        #: The running bridges with egress mappings (what each message is offered to).
        self._live: tuple[Bridge, ...] = ()
        self._hooked = False

    def start_all(self, kv: Callable[[str], KVSpace | None] | None = None) -> None:
        """Start every bridge with ``enable = true`` (in the loop, at the node's start).
        ``kv``: the store's spaces (``Node.kv_space``), where each bridge keeps its QoS 1/2
        messages until the remote has them (``bridge/<name>``), and finds those a previous
        run left."""
        for bridge in self.bridges.values():
            n = bridge.restore(kv(f"bridge/{bridge.name}") if kv is not None else None)
            if n:
                log.info("bridge %s: %d stored messages queued for the remote", bridge.name, n)
        if self._egress:
            self.hooks.add("message.publish", self._on_publish, PRIORITY)
            self._hooked = True
        for bridge in self.bridges.values():
            if bridge.settings.enable:
                bridge.start()
        self._changed()

    def _changed(self) -> None:
        self._live = tuple(b for b in self._egress if b.running)

    async def aclose(self) -> None:
        if self._hooked:
            self.hooks.delete("message.publish", self._on_publish)
            self._hooked = False
        for bridge in self.bridges.values():
            await bridge.aclose()
        self._changed()

    def _on_publish(self, msg: Message) -> None:
        for bridge in self._live:
            bridge.offer(msg)

    def _get(self, name: str) -> Bridge:
        bridge = self.bridges.get(name)
        if bridge is None:
            known = ", ".join(self.bridges) or "none configured"
            raise BridgeError(f"no bridge called {name!r} (bridges: {known})")
        return bridge

    def list(self) -> list[dict[str, Any]]:
        return [b.status() for b in self.bridges.values()]

    def status(self, name: str) -> dict[str, Any]:
        return self._get(name).status()

    def start(self, name: str) -> bool:
        """Start a bridge; False if it was running already."""
        bridge = self._get(name)
        if bridge.running:
            return False
        bridge.start()
        self._changed()
        log.info("bridge %s started", name)
        return True

    def stop(self, name: str) -> bool:
        """Stop a bridge; False if it was stopped already."""
        bridge = self._get(name)
        if not bridge.running:
            return False
        bridge.stop()
        self._changed()
        log.info("bridge %s stopped (%d queued messages kept)", name, len(bridge.queue))
        return True

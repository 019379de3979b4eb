"""The node's bridges: built from ``[bridges.<name>]``, started and stopped at run time,
fed through the broker's egress slot (``Broker.egress``: after the message.publish
callbacks, and called by the PUBLISH fast path too)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..config import BridgeSettings
from ..core.broker import Broker
from ..core.message import Message
from ..hooks import Hooks
from ..store.kv import KVSpace
from .client import Bridge

__all__ = ["BridgeError", "BridgeManager", "ConfiguredError"]

log = logging.getLogger("mqttd.bridge")

class BridgeError(LookupError):
    """No such bridge."""


class ConfiguredError(ValueError):
    """The bridge is in the configuration: its stored queue is its own, not an orphan's."""


#: The store's KV spaces of bridges are ``bridge/<name>``.
SPACE = "bridge/"


class BridgeManager:
    """Every configured bridge of one node."""

    def __init__(self, settings: list[BridgeSettings], hooks: Hooks, broker: Broker,
                 node: str) -> None:
        self.hooks = hooks
        self.broker = broker
        self.node = node
        self.bridges = {s.name: Bridge(s, broker, node) for s in settings}
        self._kv: Callable[[str], KVSpace | None] | None = None
        self._spaces: Callable[[], list[str]] | None = None
        self._egress = tuple(b for b in self.bridges.values() if b.settings.egress)
        #: The running bridges with egress mappings (what each message is offered to).
        self._live: tuple[Bridge, ...] = ()

    def start_all(self, kv: Callable[[str], KVSpace | None] | None = None,
                  spaces: Callable[[], list[str]] | None = None) -> None:
        """Start every bridge with ``enable = true`` (in the loop, at the node's start).
        ``kv``: the store's spaces (``Node.kv_space``), where each bridge keeps its QoS 1/2
        messages until the remote has them (``bridge/<name>``), and finds those a previous
        run left; ``spaces``: the names of the store's spaces, where the queues of bridges
        no longer configured are found (:meth:`orphans`)."""
        self._kv, self._spaces = kv, spaces
        for bridge in self.bridges.values():
            self._restore(bridge)
            if bridge.settings.enable:
                bridge.start()
        self._changed()
        for row in self.orphans():
            log.warning("bridge %s: not in the configuration, but %d messages it had not "
                        "sent are in the store: kept (mqttd ctl bridges orphans); a bridge "
                        "of that name added again sends them, 'mqttd ctl bridges purge %s' "
                        "drops them", row["name"], row["stored"], row["name"])

    def orphans(self) -> list[dict[str, Any]]:
        """The stored queues of bridges not in the configuration (removed from it, with
        messages they had not sent): name and how many messages."""
        kv, spaces = self._kv, self._spaces
        if kv is None or spaces is None:
            return []
        rows = []
        for space in sorted(spaces()):
            name = space[len(SPACE):]
            if not space.startswith(SPACE) or name in self.bridges:
                continue
            stored = kv(space)
            if stored is not None and stored.records:
                rows.append({"name": name, "stored": len(stored.records)})
        return rows

    def purge(self, name: str) -> int:
        """Drop the stored queue of ``name``, a bridge not in the configuration; how many
        messages were dropped (committed to the operation log when this returns).
        ConfiguredError: ``name`` is configured; BridgeError: nothing is stored for it."""
        if name in self.bridges:
            raise ConfiguredError(f"bridge {name} is in the configuration: its queue is in "
                                  "use (remove the bridge from the configuration first)")
        row = next((r for r in self.orphans() if r["name"] == name), None)
        stored = self._kv(SPACE + name) if row is not None and self._kv is not None else None
        if stored is None:
            known = ", ".join(r["name"] for r in self.orphans()) or "none"
            raise BridgeError(f"no stored queue of a removed bridge called {name!r} "
                              f"(orphaned queues: {known})")
        keys = list(stored.records)
        stored.delete_many(keys)
        stored.commit_now()
        log.warning("bridge %s: %d stored messages it had not sent purged (the bridge is not "
                    "in the configuration)", name, len(keys))
        return len(keys)

    def _changed(self) -> None:
        self._egress = tuple(b for b in self.bridges.values() if b.settings.egress)
        live = self._live = tuple(b for b in self._egress if b.running)
        # Broker.egress comes after the message.publish callbacks: a message one of them
        # stopped (``$delayed/``...) is not forwarded, and the bridge sees the topic that is
        # published. One bridge is called directly (a frame less per message).
        self.broker.egress = (None if not live else live[0].offer if len(live) == 1
                              else self._on_publish)

    def _restore(self, bridge: Bridge) -> None:
        kv = self._kv
        n = bridge.restore(kv(f"bridge/{bridge.name}") if kv is not None else None)
        if n:
            log.info("bridge %s: %d stored messages queued for the remote", bridge.name, n)

    def reload(self, settings: Sequence[BridgeSettings]) -> list[tuple[str, str]]:
        """Apply a reloaded ``[bridges]`` (``mqttd ctl conf reload``): a removed bridge stops
        (what it had not sent stays in the store, for a bridge of that name added again); an
        added one starts as at start; a changed one is replaced by one on the new settings
        that takes over its queue and what it had in flight (sent again), and runs if
        ``enable``. Returns (bridge, what was done) for each change."""
        changes: list[tuple[str, str]] = []
        wanted = {s.name: s for s in settings}
        for name in [n for n in self.bridges if n not in wanted]:
            bridge = self.bridges.pop(name)
            bridge.stop()
            left = len(bridge.queue) + len(bridge.inflight)
            changes.append((name, "removed" + (f" ({left} messages not sent" + (
                f", kept in the store: 'mqttd ctl bridges purge {name}' drops them)"
                if bridge.stored else ", dropped)") if left else "")))
        for name, s in wanted.items():
            old = self.bridges.get(name)
            if old is not None and old.settings == s:
                continue
            bridge = self.bridges[name] = Bridge(s, self.broker, self.node)
            if old is None:
                self._restore(bridge)
                what = "added"
            else:
                old.stop()
                bridge.take_over(old)
                what = "changed (reconnected with the new settings)"
            if s.enable:
                bridge.start()
            changes.append((name, what + ("" if s.enable else ", not started (enable = "
                                                               "false)")))
        self._changed()
        for name, what in changes:
            log.info("bridge %s: %s", name, what)
        return changes

    async def aclose(self) -> None:
        self.broker.egress = None
        for bridge in self.bridges.values():
            await bridge.aclose()
        self._live = ()

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

"""What every module is given and what it is: :class:`ModuleContext`, :class:`Module`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import Settings
from ..core.broker import Broker
from ..core.services import Timers
from ..hooks import Hooks
from ..metrics import Metrics
from ..store.kv import KVSpace

__all__ = ["Module", "ModuleContext", "ModuleError"]


class ModuleError(Exception):
    """A module could not be loaded (unknown, already loaded, or refused its settings)."""


@dataclass(frozen=True, slots=True)
class ModuleContext:
    """A module's view of the node: the plugin surface (hooks, counters, settings) and
    the broker's services that built-in features need (publish, subscribe, authorization,
    sessions, the retained store), the node's timers and the module's own records in the
    durable store (``kv(name)``: a :class:`~mqttd.store.kv.KVSpace` with what the store
    held at start, or None when nothing is stored)."""

    hooks: Hooks
    metrics: Metrics
    settings: Settings
    broker: Broker
    timers: Timers
    kv: Callable[[str], KVSpace | None] = lambda name: None


class Module:
    """A feature module: registers its hook callbacks in :meth:`load` (with :meth:`hook`)
    and gets them removed by :meth:`unload`."""

    #: The name in ``[modules.<name>]`` and in ``mqttd ctl modules``.
    name: ClassVar[str] = ""
    #: One line for ``mqttd ctl modules list``.
    description: ClassVar[str] = ""

    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx
        self._hooks: list[tuple[str, Callable[..., Any]]] = []

    def hook(self, point: str, callback: Callable[..., Any], priority: int = 0, *,
             prefixes: tuple[str, ...] | None = None) -> None:
        """Add ``callback`` to ``point``; removed again by :meth:`unload`. ``prefixes``: see
        :meth:`Hooks.add <mqttd.hooks.Hooks.add>` (client.publish)."""
        self.ctx.hooks.add(point, callback, priority, prefixes=prefixes)
        self._hooks.append((point, callback))

    def load(self) -> None:
        """Register hook callbacks (and start whatever the module runs)."""

    def unload(self) -> None:
        """Remove every callback :meth:`hook` added."""
        for point, callback in self._hooks:
            self.ctx.hooks.delete(point, callback)
        self._hooks.clear()

    def info(self) -> dict[str, Any]:
        """What ``mqttd ctl modules list`` shows beside the name (counters, sizes)."""
        return {}

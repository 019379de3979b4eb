"""The node's modules: which exist, which are loaded; load and unload at run time."""

from __future__ import annotations

import logging
from typing import Any

from .auto_subscribe import AutoSubscribe
from .base import Module, ModuleContext, ModuleError
from .delayed import Delayed
from .retainer import RetainerLimits
from .rewrite import Rewrite
from .slow_subs import SlowSubs
from .topic_metrics import TopicMetrics

__all__ = ["MODULES", "ModuleManager"]

log = logging.getLogger("mqttd.modules")

#: Every built-in module by name, in the order ``mqttd ctl modules list`` shows them.
MODULES: dict[str, type[Module]] = {cls.name: cls for cls in (
    Delayed, Rewrite, AutoSubscribe, RetainerLimits, TopicMetrics, SlowSubs)}


class ModuleManager:
    """Loads and unloads the built-in modules of one node."""

    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx
        self._loaded: dict[str, Module] = {}

    def _enabled(self, name: str) -> bool:
        return bool(getattr(self.ctx.settings.modules, name).enable)

    def load_enabled(self) -> None:
        """Load every module whose section says ``enable = true`` (at start)."""
        for name in MODULES:
            if self._enabled(name):
                self.load(name)

    def load(self, name: str) -> Module:
        """Load module ``name`` with its configured settings. Raises ModuleError."""
        cls = MODULES.get(name)
        if cls is None:
            raise ModuleError(f"no module called {name!r} (modules: {', '.join(MODULES)})")
        if name in self._loaded:
            raise ModuleError(f"module {name} is already loaded")
        module = cls(self.ctx)
        module.load()
        self._loaded[name] = module
        log.info("module %s loaded", name)
        return module

    def unload(self, name: str) -> bool:
        """Unload module ``name``; False if it is not loaded (ModuleError if unknown)."""
        if name not in MODULES:
            raise ModuleError(f"no module called {name!r} (modules: {', '.join(MODULES)})")
        module = self._loaded.pop(name, None)
        if module is None:
            return False
        module.unload()
        log.info("module %s unloaded", name)
        return True

    def unload_all(self) -> None:
        for name in reversed(list(self._loaded)):
            self.unload(name)

    def get(self, name: str) -> Module | None:
        """The loaded module ``name``, or None."""
        return self._loaded.get(name)

    def list(self) -> list[dict[str, Any]]:
        """Every module: name, loaded, enabled (in the configuration), description, and
        what a loaded one says of itself."""
        rows = []
        for name, cls in MODULES.items():
            module = self._loaded.get(name)
            rows.append({"name": name, "loaded": module is not None,
                         "enabled": self._enabled(name), "description": cls.description,
                         **(module.info() if module is not None else {})})
        return rows

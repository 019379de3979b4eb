"""Plugins (EMQX's emqx_plugins management): list, load, unload."""

from __future__ import annotations

from ..plugins import PluginError, PluginManager
from .errors import Failed, NotFound, Unavailable
from .listing import Row

__all__ = ["Plugins"]


class Plugins:
    """The node's plugin manager, if it has one."""

    def __init__(self, manager: PluginManager | None) -> None:
        self.manager = manager

    def _manager(self) -> PluginManager:
        if self.manager is None:
            raise Unavailable("this node has no plugin manager")
        return self.manager

    def all(self) -> list[Row]:
        """Loaded plugins, then installed ones not loaded: name, ref, description, active."""
        return self._manager().list_plugins()

    def load(self, ref: str) -> Row:
        """Load a plugin by ``module:Class`` or entry point name; Failed(<why>)."""
        try:
            self._manager().load(ref)
        except PluginError as err:
            raise Failed(f"plugin {ref} failed to load: {err}", str(err)) from None
        return {"name": ref, "loaded": True}

    def unload(self, name: str) -> Row:
        """Unload a loaded plugin; NotFound("plugin")."""
        if not self._manager().unload(name):
            raise NotFound("plugin", name)
        return {"name": name, "unloaded": True}

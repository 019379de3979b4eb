"""Modules (EMQX's emqx_modules management): list, load, unload; and the delayed
module's pending messages (``mqttd ctl delayed list|del``)."""

from __future__ import annotations

from ..modules.base import ModuleError
from ..modules.delayed import Delayed
from ..modules.manager import ModuleManager
from .errors import Failed, InvalidArgument, NotFound, Unavailable
from .listing import Row

__all__ = ["Modules"]


class Modules:
    """The node's module manager, if it has one."""

    def __init__(self, manager: ModuleManager | None) -> None:
        self.manager = manager

    def _manager(self) -> ModuleManager:
        if self.manager is None:
            raise Unavailable("this node has no module manager")
        return self.manager

    def all(self) -> list[Row]:
        """Every module: name, loaded, enabled, description and what a loaded one counts."""
        return self._manager().list()

    def load(self, name: str) -> Row:
        """Load a module with its configured settings; Failed(<why>)."""
        try:
            self._manager().load(name)
        except ModuleError as err:
            raise Failed(str(err), "unknown_module" if "no module" in str(err)
                         else "already_loaded") from None
        return {"name": name, "loaded": True}

    def unload(self, name: str) -> Row:
        """Unload a loaded module; NotFound("module") if it is not loaded."""
        try:
            unloaded = self._manager().unload(name)
        except ModuleError as err:
            raise Failed(str(err), "unknown_module") from None
        if not unloaded:
            raise NotFound("loaded module", name)
        return {"name": name, "unloaded": True}

    def _delayed(self) -> Delayed:
        module = self._manager().get("delayed")
        if not isinstance(module, Delayed):
            raise Unavailable("the delayed module is not loaded (mqttd ctl modules load "
                              "delayed)", "not_loaded")
        return module

    def delayed_list(self) -> list[Row]:
        """Pending delayed messages, soonest first."""
        return self._delayed().list()

    def delayed_delete(self, entry_id: str) -> Row:
        """Drop one pending delayed message by id; NotFound("delayed message")."""
        try:
            n = int(entry_id)
        except ValueError:
            raise InvalidArgument(f"a delayed message id is a number, not {entry_id!r}"
                                  ) from None
        if not self._delayed().delete(n):
            raise NotFound("delayed message", entry_id)
        return {"id": n, "deleted": True}

"""Bridges (``mqttd ctl bridges list|start|stop|status|orphans|purge``): the node's bridge
manager as management sees it. The manager lives a layer above (mqttd/bridge); the process
layer hands it in, typed here by what management calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .errors import Conflict, Failed, NotFound, Unavailable
from .listing import Row

if TYPE_CHECKING:
    from ..config import BridgeSettings

__all__ = ["BridgeControl", "Bridges"]


class BridgeControl(Protocol):
    """What :class:`mqttd.bridge.BridgeManager` offers management."""

    def list(self) -> list[dict[str, Any]]: ...
    def status(self, name: str) -> dict[str, Any]: ...
    def start(self, name: str) -> bool: ...
    def stop(self, name: str) -> bool: ...
    def reload(self, settings: Sequence[BridgeSettings]) -> Sequence[tuple[str, str]]: ...
    def orphans(self) -> Sequence[dict[str, Any]]: ...
    def purge(self, name: str) -> int: ...


class Bridges:
    """The node's bridges, if it has a manager."""

    def __init__(self, manager: BridgeControl | None) -> None:
        self.manager = manager

    def _manager(self) -> BridgeControl:
        if self.manager is None:
            raise Unavailable("this node has no bridge manager")
        return self.manager

    def all(self) -> list[Row]:
        """Every configured bridge: state, queue depth, last error, counters."""
        return self._manager().list()

    def _known(self, name: str) -> None:
        if not any(row["name"] == name for row in self._manager().list()):
            raise NotFound("bridge", name)

    def status(self, name: str) -> Row:
        self._known(name)
        return self._manager().status(name)

    def start(self, name: str) -> Row:
        self._known(name)
        if not self._manager().start(name):
            raise Failed(f"bridge {name} is running already", "already_started")
        return {"name": name, "started": True}

    def stop(self, name: str) -> Row:
        self._known(name)
        if not self._manager().stop(name):
            raise Failed(f"bridge {name} is stopped already", "already_stopped")
        return {"name": name, "stopped": True}

    def orphans(self) -> list[Row]:
        """The stored queues of bridges no longer in the configuration: name, messages."""
        return list(self._manager().orphans())

    def purge(self, name: str) -> Row:
        """Drop the stored queue of ``name``, a bridge no longer in the configuration."""
        manager = self._manager()
        try:
            n = manager.purge(name)
        except ValueError as err:  # (the manager's ConfiguredError: a layer above)
            raise Conflict(str(err), "configured") from None
        except LookupError:
            raise NotFound("stored queue of a removed bridge", name) from None
        return {"name": name, "purged": n}

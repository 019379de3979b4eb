"""Alarms (EMQX's alarm API): the active ones, the history of cleared ones, and what the
system monitors last measured."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import Unavailable
from .listing import Listing, Row, iso

if TYPE_CHECKING:
    from ..alarms import Alarm, Alarms

__all__ = ["AlarmsArea", "alarm_row"]


def alarm_row(alarm: Alarm, node: str) -> Row:
    """An alarm as front ends show it: EMQX's keys, times in RFC 3339, ``duration`` in
    milliseconds (until now while active)."""
    data = alarm.as_dict(node)
    data["activate_at"] = iso(alarm.activate_at)
    data["deactivate_at"] = iso(alarm.deactivate_at)
    return data


class AlarmsArea:
    """``alarms list [--history]`` and the monitors' figures."""

    def __init__(self, alarms: Alarms | None, node: str,
                 health: Callable[[], dict[str, Any]]) -> None:
        self._alarms = alarms
        self.node = node
        self._health = health

    def _registry(self) -> Alarms:
        if self._alarms is None:
            raise Unavailable("this node keeps no alarms", "no_alarms")
        return self._alarms

    def list(self, history: bool = False) -> Listing[Alarm]:
        """The active alarms (oldest first), or the cleared ones (newest first)."""
        alarms = self._registry()
        items = alarms.history() if history else alarms.active()
        node = self.node
        return Listing(items, lambda a: alarm_row(a, node))

    def health(self) -> Row:
        """What the monitors last measured (lag, memory, descriptors, store latency) and the
        overload protection's state."""
        return dict(self._health())

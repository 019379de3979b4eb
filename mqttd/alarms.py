"""Alarms (EMQX's emqx_alarm): named conditions that are active until they clear.

An alarm is raised with :meth:`Alarms.activate` (a name, a readable message and a
details mapping) and cleared with :meth:`Alarms.deactivate`; activating an active alarm
only refreshes its details, so a monitor may call it on every check. Each change is
logged once (a warning when it activates, info when it clears) and handed to the
``on_change`` callbacks (the node publishes it to ``$SYS/brokers/<node>/alarms/activate``
or ``.../deactivate``). Cleared alarms are kept in a bounded history, newest first.

A leaf service: anything (monitors, transports, plugins) may raise an alarm.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Alarm", "Alarms"]

log = logging.getLogger("mqttd.alarms")


@dataclass(slots=True)
class Alarm:
    """One alarm: active while ``deactivate_at`` is None."""

    name: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    #: Epoch seconds.
    activate_at: float = 0.0
    deactivate_at: float | None = None

    @property
    def activated(self) -> bool:
        return self.deactivate_at is None

    def as_dict(self, node: str) -> dict[str, Any]:
        """EMQX's alarm fields (its $SYS payload and API row): times in microseconds since
        the epoch, ``duration`` in milliseconds (until now while active)."""
        end = self.deactivate_at if self.deactivate_at is not None else time.time()
        return {
            "node": node, "name": self.name, "message": self.message,
            "details": dict(self.details), "activated": self.activated,
            "activate_at": int(self.activate_at * 1e6),
            "deactivate_at": None if self.deactivate_at is None
            else int(self.deactivate_at * 1e6),
            "duration": int(max(0.0, end - self.activate_at) * 1000),
        }


#: What is told of each change: ("activate" | "deactivate", the alarm).
OnChange = Callable[[str, Alarm], None]


class Alarms:
    """The node's active alarms by name and the history of cleared ones."""

    def __init__(self, history_size: int = 100) -> None:
        self._active: dict[str, Alarm] = {}
        self._history: deque[Alarm] = deque(maxlen=max(1, history_size))
        self.on_change: list[OnChange] = []

    def activate(self, name: str, message: str,
                 details: Mapping[str, Any] | None = None) -> bool:
        """Raise ``name``; True if it was not active. An active alarm keeps its activation
        time and message and takes the new details (nothing is logged or published)."""
        alarm = self._active.get(name)
        if alarm is not None:
            if details is not None:
                alarm.details = dict(details)
            return False
        alarm = Alarm(name, message, dict(details or {}), time.time())
        self._active[name] = alarm
        log.warning("alarm %s activated: %s", name, message)
        self._tell("activate", alarm)
        return True

    def deactivate(self, name: str, message: str | None = None,
                   details: Mapping[str, Any] | None = None) -> bool:
        """Clear ``name``; True if it was active. ``message`` and ``details``, when given,
        say why it cleared (they replace the activation's in the history)."""
        alarm = self._active.pop(name, None)
        if alarm is None:
            return False
        alarm.deactivate_at = time.time()
        if message is not None:
            alarm.message = message
        if details is not None:
            alarm.details = dict(details)
        self._history.appendleft(alarm)
        log.info("alarm %s deactivated after %.1f s: %s", name,
                 alarm.deactivate_at - alarm.activate_at, alarm.message)
        self._tell("deactivate", alarm)
        return True

    def update(self, name: str, message: str | None = None,
               details: Mapping[str, Any] | None = None) -> bool:
        """Change an active alarm's message or details quietly; False if it is not active."""
        alarm = self._active.get(name)
        if alarm is None:
            return False
        if message is not None:
            alarm.message = message
        if details is not None:
            alarm.details = dict(details)
        return True

    def is_active(self, name: str) -> bool:
        return name in self._active

    def active(self) -> list[Alarm]:
        """Active alarms, oldest first."""
        return sorted(self._active.values(), key=lambda a: a.activate_at)

    def history(self) -> list[Alarm]:
        """Cleared alarms, newest first (bounded)."""
        return list(self._history)

    def clear_history(self) -> int:
        """Forget the cleared alarms; how many there were."""
        n = len(self._history)
        self._history.clear()
        return n

    def _tell(self, event: str, alarm: Alarm) -> None:
        for callback in list(self.on_change):
            try:
                callback(event, alarm)
            except Exception:  # a subscriber's bug must not keep the alarm from others
                log.exception("alarm %s: telling %r of %s failed", alarm.name, callback, event)

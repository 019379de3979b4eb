"""Stats (EMQX's emqx_stats): gauges kept as count/max pairs, refreshed every second.

Metrics only grow; stats go up and down, and each keeps its historical maximum
next to it: ``connections.count`` and ``connections.max``. The broker's
components do not push a change on every connect or subscribe. Each registers
an update function once (:meth:`Stats.update_interval`), and the stats worker
calls every function on a one-second tick (or every N ticks, as asked). A
function either calls :meth:`Stats.set` itself or returns a mapping of
``{stat: value}``; a function that raises is logged once and the others still
run.

The stats are EMQX's (the seeds' table): connections, channels, sessions,
sessions.persistent, topics, suboptions, subscribers, subscriptions,
subscriptions.shared, routes and retained, each ``.count`` and ``.max``; and mqttd's
publishers.held (publishers waiting under mqueue_overflow = "backpressure" or flow control,
mqueue_flow_limit).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NAMES", "STATS", "Stats"]

log = logging.getLogger("mqttd.stats")

#: The stats, each a ``<name>.count`` / ``<name>.max`` pair.
STATS: tuple[str, ...] = (
    "connections", "channels", "sessions", "sessions.persistent", "topics", "suboptions",
    "subscribers", "subscriptions", "subscriptions.shared", "routes", "retained",
    "publishers.held",
)

#: Every stat name, count then max, in STATS order.
NAMES: tuple[str, ...] = tuple(f"{s}.{k}" for s in STATS for k in ("count", "max"))

#: What an update function may return: None (it set the values itself) or {stat: value}.
UpdateFun = Callable[[], Mapping[str, int] | None]


@dataclass(slots=True)
class _Update:
    name: str
    func: UpdateFun
    interval: int
    countdown: int
    failed: bool = False


class Stats:
    """Count/max pairs, and the update functions that refresh them."""

    def __init__(self) -> None:
        self._values: dict[str, int] = dict.fromkeys(NAMES, 0)
        self._updates: dict[str, _Update] = {}
        #: Update calls that raised.
        self.failures = 0

    # --- values ---------------------------------------------------------------------

    def set(self, stat: str, value: int) -> None:
        """Set ``<stat>.count`` to ``value`` and raise ``<stat>.max`` to it if higher.

        ``stat`` may also be given as ``"<stat>.count"``.
        """
        stat = stat.removesuffix(".count")
        self.setstat(stat + ".count", value, stat + ".max")

    def setstat(self, stat: str, value: int, max_stat: str | None = None) -> None:
        """EMQX's setstat/2,3: set ``stat``; with ``max_stat``, keep the maximum there too."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"stat {stat} must be an int, not {type(value).__name__}")
        values = self._values
        values[stat] = value
        if max_stat is not None and value > values.get(max_stat, 0):
            values[max_stat] = value

    def get(self, stat: str) -> int:
        """The value of ``stat`` (0 if it was never set)."""
        return self._values.get(stat, 0)

    def snapshot(self) -> dict[str, int]:
        """Every stat by name, sorted by name."""
        return dict(sorted(self._values.items()))

    # --- update functions -----------------------------------------------------------

    def update_interval(self, name: str, func: UpdateFun, interval: int = 1) -> bool:
        """Call ``func`` every ``interval`` ticks (seconds) from now on.

        Returns False (and logs a warning, as EMQX does) if an update called
        ``name`` is already registered.
        """
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError("an update interval is a whole number of ticks, at least 1")
        if name in self._updates:
            log.warning("duplicated stats update: %s", name)
            return False
        self._updates[name] = _Update(name, func, interval, interval)
        return True

    def cancel_update(self, name: str) -> bool:
        return self._updates.pop(name, None) is not None

    def updates(self) -> list[str]:
        """Names of the registered update functions."""
        return list(self._updates)

    def tick(self) -> None:
        """One tick: run every update whose countdown reached zero."""
        for update in list(self._updates.values()):
            update.countdown -= 1
            if update.countdown > 0:
                continue
            update.countdown = update.interval
            self._call(update)

    def refresh(self) -> None:
        """Run every update now (a reader that wants current values, e.g. a test)."""
        for update in list(self._updates.values()):
            self._call(update)

    def _call(self, update: _Update) -> None:
        try:
            result = update.func()
            if result is not None:
                for stat, value in result.items():
                    self.set(stat, value)
        except Exception:
            self.failures += 1
            if not update.failed:
                update.failed = True
                log.exception("stats update %s failed (logged once)", update.name)

    async def run(self, tick: float = 1.0) -> Any:
        """The stats worker: tick every ``tick`` seconds, forever (run it supervised)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time() + tick
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += tick
            self.tick()

"""Overload protection (EMQX's olp): shedding load while the event loop lags, in a fixed
order, and recovering by itself.

Fed each check's loop lag by the system monitor (:mod:`mqttd.sysmon`):

0. normal: nothing is shed.
1. once the lag has stayed at ``lag`` or above for ``lag_for`` seconds: new connections
   are refused with a CONNACK the client can read (MQTT 5: 0x89 server busy; 3.1/3.1.1:
   0x03 server unavailable), by the listeners asking :meth:`Overload.refuse_new`;
2. if the lag stays that high for another ``lag_for``: also, at every check, reading
   pauses for ``pause_time`` on the ``pause_publishers`` connections that sent the most
   bytes in the last check interval (TCP then pushes back on those clients; their
   sessions, subscriptions and deliveries go on).

When the lag has stayed under ``recover_lag`` for ``recover_for`` seconds, shedding
stops: new connections are accepted again and paused connections resume when their
pause ends. The ``overload`` alarm is active from step 1 until then.

The control socket and the HTTP API are not listeners: they are never refused, and
shedding costs one pass over the connections per check at step 2 (a heap of the
heaviest), so ``mqttd ctl`` stays answerable while the broker sheds.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Collection
from typing import Protocol

from .alarms import Alarms
from .config import OverloadSettings
from .metrics import CONNECTIONS_PAUSED_OVERLOAD, CONNECTIONS_REFUSED_OVERLOAD, Metrics

__all__ = ["Overload", "Sheddable"]

log = logging.getLogger("mqttd.overload")

ALARM = "overload"


class Sheddable(Protocol):
    """What overload protection needs of a connection (``transport.connection``'s)."""

    #: Bytes received since the connection opened, and where the last window began.
    bytes_in: int
    bytes_mark: int

    def shed(self, seconds: float) -> bool:
        """Pause reading for ``seconds``; False if it could not (closing, paused)."""


class Overload:
    """The shedding state of one node: ``level`` 0 (normal), 1 (refusing new
    connections), 2 (also pausing the heaviest publishers)."""

    def __init__(self, settings: OverloadSettings, alarms: Alarms,
                 connections: Callable[[], Collection[Sheddable]],
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        #: The node's counters (connections.refused.overload, connections.paused.overload).
        self.metrics = metrics
        self.alarms = alarms
        self.connections = connections
        self.level = 0
        #: Since when the lag has been high / low (loop time; None: it is not).
        self._high_since: float | None = None
        self._low_since: float | None = None
        self._step_at = 0.0
        #: Shed while the alarm is active, and in all.
        self.refused = 0
        self.paused = 0
        self.refused_total = 0
        self.paused_total = 0
        self.lag = 0.0

    def refuse_new(self) -> bool:
        """A listener's question at every accept: refuse this socket? (counted)"""
        if self.level == 0:
            return False
        self.refused += 1
        self.refused_total += 1
        if self.metrics is not None:
            self.metrics.inc(CONNECTIONS_REFUSED_OVERLOAD)
        return True

    def on_lag(self, lag: float, now: float) -> None:
        """One check's loop lag (seconds) at loop time ``now``."""
        s = self.settings
        if not s.enable:
            return
        self.lag = lag
        if lag >= s.lag:
            self._low_since = None
            if self._high_since is None:
                self._high_since = now
        elif lag < s.recover_lag:
            self._high_since = None
            if self._low_since is None:
                self._low_since = now
        else:  # in between: neither lasting overload nor recovery
            self._high_since = self._low_since = None
        high = self._high_since
        if self.level == 0:
            if high is not None and now - high >= s.lag_for:
                self._step(1, now)
            else:
                return
        elif self._low_since is not None and now - self._low_since >= s.recover_for:
            self._recover()
            return
        elif (self.level == 1 and s.pause_publishers > 0 and high is not None
              and now - max(high, self._step_at) >= s.lag_for):
            self._step(2, now)
        # While shedding, each check measures the connections' last interval.
        self._measure()

    def _step(self, level: int, now: float) -> None:
        self.level = level
        self._step_at = now
        s = self.settings
        what = ("refusing new connections (CONNACK 0x89 / 0x03)" if level == 1 else
                f"refusing new connections and pausing the {s.pause_publishers} heaviest "
                "publishers at every check")
        message = (f"event loop lag {self.lag * 1000:.0f} ms, at or above {s.lag * 1000:g} ms "
                   f"for {s.lag_for:g} s: {what}")
        if level == 1:
            self.refused = self.paused = 0
            self.alarms.activate(ALARM, message, self._details())
        else:
            # The alarm stays the same one; its message says the step it reached.
            self.alarms.update(ALARM, message, self._details())
            log.warning("overload: %s", message)

    def _recover(self) -> None:
        s = self.settings
        self.level = 0
        self._high_since = None
        self.alarms.deactivate(ALARM, f"event loop lag under {s.recover_lag * 1000:g} ms for "
                               f"{s.recover_for:g} s: accepting connections again "
                               f"({self.refused} refused, {self.paused} pauses)",
                               self._details())

    def _measure(self) -> None:
        """Each connection's bytes in the last interval; at step 2, pause the heaviest."""
        pause = self.level == 2
        sizes: list[tuple[int, int, Sheddable]] = []
        for i, conn in enumerate(self.connections()):
            sent = conn.bytes_in - conn.bytes_mark
            conn.bytes_mark = conn.bytes_in
            if pause and sent > 0:
                sizes.append((sent, i, conn))
        if pause and sizes:
            for _, _, conn in heapq.nlargest(self.settings.pause_publishers, sizes):
                if conn.shed(self.settings.pause_time):
                    self.paused += 1
                    self.paused_total += 1
                    if self.metrics is not None:
                        self.metrics.inc(CONNECTIONS_PAUSED_OVERLOAD)
        self.alarms.update(ALARM, None, self._details())

    def _details(self) -> dict[str, object]:
        s = self.settings
        return {"level": self.level, "lag_ms": round(self.lag * 1000, 3),
                "lag_threshold_ms": round(s.lag * 1000, 3), "refused": self.refused,
                "paused": self.paused}

    def status(self) -> dict[str, object]:
        """The state for ``mqttd ctl alarms``: level, counts since start."""
        return {"enabled": self.settings.enable, "level": self.level,
                "refused_total": self.refused_total, "paused_total": self.paused_total}

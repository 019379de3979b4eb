"""Poll before sleeping: after a busy loop turn, keep the event loop turning (polls
with timeout 0) for a short adaptive window instead of blocking in ``epoll_wait``.

Why: a client that answers within tens of microseconds (a subscriber acknowledging a
window of QoS 1 deliveries, a publisher waiting for its PUBACKs) otherwise finds the
broker asleep, and the wake-up costs what the host makes it cost: on a virtual machine
whose idle vCPU halts, ~20 us of scheduling delay per wake-up (``perf sched timehist``),
twice per round trip. EMQX's runtime does the same: an Erlang scheduler spins a while
before it sleeps (``+sbwt``); so does Linux's guest ``haltpoll`` cpuidle governor, whose
rule for sizing the window this follows: an idle gap the window would have caught grows
it (doubling, up to ``max_wait``), a gap longer than ``max_wait`` shrinks it (halving,
to nothing below an eighth of ``max_wait``). A broker whose clients are slow or quiet
therefore stops polling after a few such gaps, and spends nothing.

Cost while polling: one ready callback and one ``epoll_wait`` with timeout 0 per loop turn
(~1-2 us), and the CPU the window takes, which shows as the broker's CPU. No poll while
acknowledgements wait for the store's sync thread (``durability = "power"``): a polling
loop takes the GIL back every microsecond, and a waiting thread would hardly get it.
Off with ``max_wait`` 0, and off where the machine gives less than two CPUs (its CPU
count, or the CPU quota of the process's own cgroup v2, ``cpu.max``): there the poll
would take the CPU from the very peer it waits for.
"""

from __future__ import annotations

import asyncio
import os
from time import perf_counter
from typing import Any

__all__ = ["BusyPoll", "usable_cpus"]

#: The window starts (and stops) at this share of ``max_wait``.
_START = 0.125


def usable_cpus() -> float:
    """CPUs the machine lets this process and its clients use together: its CPU count,
    less a cgroup v2 CPU quota (``cpu.max``, a container's ``--cpus``). Not the process's
    affinity: a broker pinned to a core of its own is where polling pays most."""
    cpus: float = os.cpu_count() or 1
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line[3:].strip() for line in f if line.startswith("0::")), None)
        if path is not None:
            with open(f"/sys/fs/cgroup{path.rstrip('/')}/cpu.max") as f:
                quota, _, period = f.read().partition(" ")
            if quota != "max":
                cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass  # (no cgroup v2, or no quota: the CPU count)
    return cpus


class BusyPoll:
    """The poll window of one event loop, told when a turn starts handling reads
    (``started``) and when its writes are done (``ended``)."""

    __slots__ = ("_loop", "max_wait", "window", "_end", "_until", "_polling",
                 "caught", "grown", "shrunk", "turns")

    def __init__(self, loop: asyncio.AbstractEventLoop, max_wait: float) -> None:
        self._loop = loop
        #: Seconds; 0: never poll.
        self.max_wait = max_wait
        #: The present window, seconds (0: the next idle gap sleeps).
        self.window = 0.0
        #: When the last turn ended (0: no gap being measured).
        self._end = 0.0
        self._until = 0.0
        self._polling = False
        #: Idle gaps that ended while the loop polled (a wake-up saved each).
        self.caught = 0
        #: Loop turns spent polling.
        self.turns = 0
        #: Times the window grew / shrank.
        self.grown = 0
        self.shrunk = 0

    def started(self, now: float) -> None:
        """A turn's first read (or, for a turn with no read, its writes), at ``now``
        (``perf_counter``): size the window by the idle gap it ended."""
        end = self._end
        if not end:
            return
        self._end = 0.0
        gap = now - end
        window = self.window
        if gap <= window:
            if self._polling:
                self.caught += 1
            return
        top = self.max_wait
        if gap <= top:
            if window < top:  # (the window would have caught it: grow)
                window = window * 2 if window else top * _START
                self.window = window if window < top else top
                self.grown += 1
        elif window:  # (polled for nothing: shrink)
            window *= 0.5
            self.window = window if window >= top * _START else 0.0
            self.shrunk += 1

    def ended(self, poll: bool = True) -> None:
        """A turn's writes are done: the idle gap starts; poll for the window from now,
        unless ``poll`` is False (what the loop waits for comes from another thread,
        which needs the GIL that a polling loop would take back every microsecond)."""
        if not self.max_wait:
            return
        self._end = now = perf_counter()
        window = self.window
        if window and poll:
            self._until = now + window
            if not self._polling:
                self._polling = True
                self._loop.call_soon(self._poll)

    def bound(self, max_wait: float) -> None:
        """A new ``max_wait`` (a reload): the window and a poll going on keep to it now."""
        self.max_wait = max_wait
        if self.window > max_wait:
            self.window = max_wait
        self._until = min(self._until, perf_counter() + self.window)

    def _poll(self) -> None:
        # A ready callback keeps libuv's poll timeout at 0: the loop turns, handling any
        # I/O that came, without sleeping; a turn's end moves ``_until``.
        if perf_counter() < self._until:
            self.turns += 1
            self._loop.call_soon(self._poll)
        else:
            self._polling = False

    def snapshot(self) -> dict[str, Any]:
        """For ``mqttd ctl vm``: the setting, the window now and its history."""
        return {"max_wait_us": round(self.max_wait * 1e6, 1),
                "window_us": round(self.window * 1e6, 1),
                "caught": self.caught, "turns": self.turns, "grown": self.grown,
                "shrunk": self.shrunk}

"""The process as the operator sees it (EMQX's ``vm`` command): memory, CPU, descriptors,
tasks and event-loop lag, read from the interpreter and ``/proc``.

:class:`LoopMonitor` samples lag and CPU use on a timer while the node runs, so
``vm`` can report the worst pause of the last minute, not only the present.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import sys
import threading
import time
from collections import deque
from typing import Any, Protocol

__all__ = ["LoopMonitor", "Vm", "count_fds", "loop_name", "proc_status"]


class LoopMonitor:
    """Samples event-loop lag and CPU use twice a second (a timer, not a task).

    Lag is how late a timer fires: the time the loop spent on other work
    before it could run a ready callback, i.e. the longest pause any client saw.
    """

    INTERVAL = 0.5
    WINDOW = 120  # samples: one minute

    def __init__(self) -> None:
        self.lag = 0.0
        self.samples: deque[tuple[float, float, float]] = deque(maxlen=self.WINDOW)
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expected = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin sampling on ``loop`` (a second start is ignored)."""
        if self._handle is not None:
            return
        self._loop = loop
        self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._expected = self._loop.time() + self.INTERVAL
        self._handle = self._loop.call_at(self._expected, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        self.lag = max(0.0, self._loop.time() - self._expected)
        self.samples.append((time.monotonic(), time.process_time(), self.lag))
        self._schedule()

    def stop(self) -> None:
        """Stop sampling; the samples taken stay readable."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def max_lag(self) -> float:
        """The worst lag of the last minute (or the last one seen)."""
        return max((s[2] for s in self.samples), default=self.lag)

    def cpu_percent(self) -> float | None:
        """Process CPU use over the last ~10 s, in percent of one core."""
        if len(self.samples) < 2:
            return None
        recent = list(self.samples)[-20:]
        (w0, c0, _), (w1, c1, _) = recent[0], recent[-1]
        return round(100.0 * (c1 - c0) / (w1 - w0), 1) if w1 > w0 else None


def proc_status() -> dict[str, int]:
    """Resident, peak and virtual memory (bytes) and threads from /proc/self/status."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "VmSize", "Threads"):
                    n = int(value.split()[0])
                    out[key] = n * 1024 if key != "Threads" else n
    except OSError:
        pass
    return out


def count_fds() -> int | None:
    """Open file descriptors of this process (None where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the directory's own fd
    except OSError:
        return None


def loop_name() -> str:
    """The running event loop's implementation: ``uvloop <version>`` or ``asyncio``."""
    loop = asyncio.get_running_loop()
    if type(loop).__module__.split(".")[0] == "uvloop":
        version = getattr(sys.modules.get("uvloop"), "__version__", "")
        return f"uvloop {version}".rstrip()
    return "asyncio"


class BusyPollView(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


class Vm:
    """The ``vm`` report: one dict per group (cpu, memory, process, io, asyncio, busy_poll)."""

    def __init__(self, monitor: LoopMonitor) -> None:
        self.monitor = monitor
        #: The event loop's poll window (``transport.busypoll.BusyPoll``), once serving.
        self.busy: BusyPollView | None = None

    async def info(self) -> dict[str, dict[str, Any]]:
        """Read everything now; counting descriptors runs in a thread (100k may be open)."""
        monitor = self.monitor
        st = proc_status()
        times = os.times()
        load: tuple[float | None, ...]
        try:
            load = tuple(round(x, 2) for x in os.getloadavg())
        except OSError:
            load = (None, None, None)
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds = await asyncio.to_thread(count_fds)
        return {
            "cpu": {"percent": monitor.cpu_percent(), "user_seconds": round(times.user, 2),
                    "system_seconds": round(times.system, 2), "load1": load[0],
                    "load5": load[1], "load15": load[2], "cores": os.cpu_count()},
            "memory": {"rss": st.get("VmRSS"), "peak_rss": st.get("VmHWM"),
                       "virtual": st.get("VmSize"), "gc_counts": list(gc.get_count()),
                       "gc_collections": [g["collections"] for g in gc.get_stats()]},
            "process": {"pid": os.getpid(),
                        "threads": st.get("Threads", threading.active_count()),
                        "python": sys.version.split()[0]},
            "io": {"max_fds": soft, "active_fds": fds},
            "asyncio": {"loop": loop_name(), "tasks": len(asyncio.all_tasks()),
                        "lag_ms": round(monitor.lag * 1000, 2),
                        "max_lag_1m_ms": round(monitor.max_lag() * 1000, 2)},
            # (empty before the listeners serve)
            "busy_poll": self.busy.snapshot() if self.busy is not None else {},
        }

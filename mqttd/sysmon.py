"""System monitoring (EMQX's sysmon and os_mon): the process's health against watermarks,
raising and clearing alarms (:mod:`mqttd.alarms`).

One timer, every ``check_interval`` (1 s), checks everything; each check costs
microseconds, except counting open file descriptors, which reads ``/proc/self/fd`` in
a worker thread (100,000 may be open) and is judged when that thread answers.

=====================================  ==================================================
alarm                                  raised when
=====================================  ==================================================
``loop_lag``                           the timer fires ``loop_lag_high`` late or more (the
                                       longest pause every client saw); clears under
                                       ``loop_lag_clear``
``long_gc``                            a garbage collection took ``long_gc`` or more
                                       (``gc.callbacks``); clears ``long_gc_clear`` after
                                       the last one
``high_process_memory``                resident memory (``/proc/self/statm``) reaches
                                       ``process_memory_high``
``high_fd_usage``                      open descriptors reach ``fd_high`` of RLIMIT_NOFILE
                                       (read at every check: ``prlimit`` may change it)
``high_connections/<listener>``        a listener's connections reach ``connections_high``
                                       of its ``max_connections``
``slow_store_commit``                  the store's slowest commit in an interval took
                                       ``store_latency_high`` or more
=====================================  ==================================================

Each has a lower clear watermark, so a value hovering at the high one does not flap.
Every check's lag is also handed to the ``on_lag`` callbacks (overload protection).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from .alarms import Alarms
from .config import SysmonSettings

if TYPE_CHECKING:
    from .store.journal import Journal

__all__ = ["SystemMonitor", "count_fds", "memory_total", "rss", "shrink"]

log = logging.getLogger("mqttd.sysmon")

#: Give freed memory back to the OS (glibc's malloc_trim) once this many clients have left
#: since the last peak and the count has settled; at most every TRIM_EVERY seconds. Measured
#: (issue 17): after 19,000 clients leave, Python has freed every object but glibc keeps the
#: pages; a trim releasing ~130 MB takes ~16 ms of the loop, so it waits for a quiet loop.
TRIM_DROP = 2_000
TRIM_EVERY = 30.0
TRIM_MAX_LAG = 0.01

#: The daemon turns CPython's automatic middle and full collections off (server.tune_gc: one
#: with many clients stops the loop for tens to hundreds of ms), so reference cycles that
#: survived a young collection would never be freed. sysmon runs the full collection
#: instead, once GC_FULL_AFTER middle collections' worth of survivors were added since the
#: last (CPython's default: ten middle ones, each after GC_MIDDLE_EVERY young ones), the
#: loop is quiet and the client count settled, at most every GC_FULL_EVERY seconds and at
#: least every GC_FULL_LATEST seconds (a broker never quiet still gets its garbage freed).
GC_FULL_AFTER = 10
GC_MIDDLE_EVERY = 10
GC_FULL_EVERY = 60.0
GC_FULL_LATEST = 3600.0


def shrink(table: dict[Any, Any] | set[Any]) -> None:
    """Rebuild ``table`` at the size of what it holds now. CPython's dicts and sets never
    shrink when entries go: after 19,000 clients left, every table that held one entry per
    client kept the room for 19,000 (~1 MiB each), and those pages never went back."""
    if isinstance(table, dict):
        kept_d = dict(table)
        table.clear()
        table.update(kept_d)
    else:
        kept_s = set(table)
        table.clear()
        table |= kept_s  # (set's own update: a subclass's add is not called)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS, Windows have none)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast("Callable[[int], int]", trim)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

#: (listener name, live connections, max_connections) of every running listener.
ListenerLoads = Callable[[], Iterable[tuple[str, int, int]]]


def rss() -> int | None:
    """Resident memory of this process in bytes (None without /proc)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def memory_total() -> int | None:
    """The machine's memory in bytes (MemTotal), None without /proc."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def fds_from_size() -> int:
    """Open file descriptors of this process as Linux >= 6.2 gives them, the size of
    /proc/self/fd (one stat, a few µs even with 100,000 open); 0 where it does not."""
    try:
        return os.stat("/proc/self/fd").st_size
    except OSError:
        return 0


def count_fds() -> int | None:
    """Open file descriptors of this process (None without /proc)."""
    try:
        # Linux >= 6.2 gives the count as the directory's size: no listing of 100,000
        # names every second (6.6 % of the broker's CPU while 10,000 clients connected).
        n = os.stat("/proc/self/fd").st_size
        if n > 0:
            return n
        return len(os.listdir("/proc/self/fd")) - 1  # less the listing's own descriptor
    except OSError:
        return None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


class SystemMonitor:
    """The monitors of one node; :meth:`start` on the running loop, :meth:`stop` at the end."""

    def __init__(self, settings: SysmonSettings, alarms: Alarms,
                 listeners: ListenerLoads = lambda: (),
                 store: Callable[[], Journal | None] = lambda: None) -> None:
        self.settings = settings
        self.alarms = alarms
        self.listeners = listeners
        self.store = store
        #: Told every check's loop lag (seconds) and the loop's time.
        self.on_lag: list[Callable[[float, float], None]] = []
        #: The tables that had an entry per client (``shrink``), rebuilt before a trim.
        self.tables: list[Callable[[], Iterable[dict[Any, Any] | set[Any]]]] = []
        #: The last figures seen (``mqttd ctl alarms`` shows them beside the alarms).
        self.lag = 0.0
        self.rss: int | None = None
        self.fds: int | None = None
        self.max_fds = 0
        self.store_latency: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expected = 0.0
        self._counting = False
        self._gc_started = 0.0
        #: The longest collection since the last check, and when the last long one ended.
        self._gc_worst = (0.0, -1)
        self._gc_long_at = 0.0
        self._commits_seen = 0
        self._trim = _malloc_trim()
        self._peak = 0  # the most connections since the last trim
        self._last_count = -1
        self._trimmed_at = -TRIM_EVERY
        #: Trims done, and how long the last one stopped the loop (seconds).
        self.trims = 0
        self.last_trim = 0.0
        #: Full collections run by the monitor, and how long the last one took (seconds).
        self.full_gcs = 0
        self.last_full_gc = 0.0
        self.full_gc_every = GC_FULL_EVERY
        self.full_gc_latest = GC_FULL_LATEST
        self._full_gc_at = 0.0
        self._gc_last_count = -1
        high = settings.process_memory_high
        if not high:
            total = memory_total()
            high = int(total * 0.8) if total else 0
        self.memory_high = high
        self.memory_clear = settings.process_memory_clear or int(high * 0.9)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin checking on ``loop`` (nothing when ``[sysmon] enable`` is false)."""
        if not self.settings.enable or self._handle is not None:
            return
        self._loop = loop
        if self.settings.long_gc > 0:
            gc.callbacks.append(self._on_gc)
        j = self.store()
        self._commits_seen = j.commits if j is not None else 0
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _schedule(self) -> None:
        loop = self._loop
        assert loop is not None
        self._expected = loop.time() + self.settings.check_interval
        self._handle = loop.call_at(self._expected, self._tick)

    # --- the check ------------------------------------------------------------------------

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        self.lag = lag = max(0.0, now - self._expected)
        self._schedule()
        for check in (self._check_lag, self._check_gc, self._check_memory,
                      self._check_connections, self._check_store, self._check_trim,
                      self._check_full_gc):
            try:
                check()
            except Exception:  # one broken check must not stop the others, or the timer
                log.exception("sysmon: %s failed", check.__name__)
        if not self._counting:
            fds = fds_from_size()
            if fds:
                # On the loop: a worker thread would take the GIL twice per check, and
                # when it waits for a CPU on a busy core while the loop wants the GIL
                # back, the loop sleeps that long (issue 17's storm stalls).
                self._on_fds(fds)
            else:  # an older kernel: the directory is listed, off the loop
                self._counting = True
                loop.run_in_executor(None, count_fds).add_done_callback(self._counted)
        for callback in self.on_lag:
            try:
                callback(lag, now)
            except Exception:
                log.exception("sysmon: %r failed", callback)

    def _level(self, name: str, value: float, high: float, clear: float, message: str,
               details: dict[str, Any]) -> None:
        """Activate ``name`` at ``high`` or above, clear it under ``clear``."""
        alarms = self.alarms
        if value >= high:
            alarms.activate(name, message, details)
        elif value < clear and alarms.is_active(name):
            alarms.deactivate(name, f"{name} back under its clear watermark", details)
        elif alarms.is_active(name):
            alarms.activate(name, message, details)  # refreshes the details

    def _check_lag(self) -> None:
        s = self.settings
        self._level("loop_lag", self.lag, s.loop_lag_high, s.loop_lag_clear,
                    f"event loop lag {_ms(self.lag):g} ms (high watermark "
                    f"{_ms(s.loop_lag_high):g} ms)",
                    {"lag_ms": _ms(self.lag), "high_watermark_ms": _ms(s.loop_lag_high),
                     "clear_watermark_ms": _ms(s.loop_lag_clear)})

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Only timing here: nothing may allocate much or publish inside the collector.
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        if took >= self._gc_worst[0]:
            self._gc_worst = (took, info.get("generation", -1))

    def _check_gc(self) -> None:
        s = self.settings
        if s.long_gc <= 0:
            return
        took, generation = self._gc_worst
        self._gc_worst = (0.0, -1)
        now = time.monotonic()
        if took >= s.long_gc:
            self._gc_long_at = now
            self.alarms.activate(
                "long_gc", f"garbage collection of generation {generation} took "
                f"{_ms(took):g} ms (threshold {_ms(s.long_gc):g} ms)",
                {"duration_ms": _ms(took), "generation": generation,
                 "threshold_ms": _ms(s.long_gc)})
        elif self.alarms.is_active("long_gc") and now - self._gc_long_at >= s.long_gc_clear:
            self.alarms.deactivate("long_gc", f"no garbage collection of "
                                   f"{_ms(s.long_gc):g} ms or more for "
                                   f"{s.long_gc_clear:g} s")

    def _check_memory(self) -> None:
        if not self.memory_high:
            return
        size = rss()
        self.rss = size
        if size is None:
            return
        self._level("high_process_memory", size, self.memory_high, self.memory_clear,
                    f"resident memory {_mib(size)} (high watermark {_mib(self.memory_high)})",
                    {"rss": size, "high_watermark": self.memory_high,
                     "clear_watermark": self.memory_clear})

    def _counted(self, future: asyncio.Future[int | None]) -> None:
        self._counting = False
        if future.cancelled() or future.exception() is not None or self._handle is None:
            return
        self._on_fds(future.result())

    def _on_fds(self, fds: int | None) -> None:
        self.fds = fds
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.max_fds = soft
        if fds is None or soft <= 0 or soft == resource.RLIM_INFINITY:
            return
        s = self.settings
        share = fds / soft
        self._level("high_fd_usage", share, s.fd_high, s.fd_clear,
                    f"{fds} of {soft} file descriptors open ({share:.0%}; high watermark "
                    f"{s.fd_high:.0%})",
                    {"fds": fds, "max_fds": soft, "high_watermark": s.fd_high,
                     "clear_watermark": s.fd_clear})

    def _check_connections(self) -> None:
        s = self.settings
        seen = set()
        for name, count, maximum in self.listeners():
            if maximum <= 0:
                continue
            seen.add(name)
            share = count / maximum
            self._level(f"high_connections/{name}", share, s.connections_high,
                        s.connections_clear,
                        f"listener {name}: {count} of max_connections {maximum} "
                        f"({share:.0%}; high watermark {s.connections_high:.0%})",
                        {"listener": name, "connections": count, "max_connections": maximum,
                         "high_watermark": s.connections_high,
                         "clear_watermark": s.connections_clear})
        for alarm in self.alarms.active():  # a stopped listener has no connections left
            name = alarm.name
            if name.startswith("high_connections/") and name.split("/", 1)[1] not in seen:
                self.alarms.deactivate(name, "the listener stopped")

    def _check_trim(self) -> None:
        """Many clients left and the count has settled, the loop is quiet: hand the pages
        their objects used back to the OS (RSS otherwise stays at its peak)."""
        if self._trim is None:
            return
        count = sum(c for _name, c, _max in self.listeners())
        last, self._last_count = self._last_count, count
        if count > self._peak:
            self._peak = count
            return
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if (self._peak - count < TRIM_DROP or count != last or self.lag > TRIM_MAX_LAG
                or now - self._trimmed_at < TRIM_EVERY):
            return
        before = rss()
        t0 = time.perf_counter()
        for tables in self.tables:
            for table in tables():
                shrink(table)
        self._trim(0)
        self.last_trim = took = time.perf_counter() - t0
        after = rss()
        self.trims += 1
        self._trimmed_at = now
        left = self._peak - count
        self._peak = count
        log.info("sysmon: %d clients left, memory given back to the OS: RSS %s -> %s "
                 "(tables rebuilt and malloc_trim in %.1f ms)", left, _mib(before or 0),
                 _mib(after or 0), _ms(took))

    def _check_full_gc(self) -> None:
        """Collect the oldest generation ourselves (see GC_FULL_AFTER) while automatic full
        collections are off; nothing while they are on (an embedding program's own GC)."""
        if gc.get_threshold()[2] <= 100:
            return
        # Young collections since the last middle or full one, middle ones since the last
        # full one (the daemon runs no middle ones: the first alone grows).
        _, young, middle = gc.get_count()
        if middle * GC_MIDDLE_EVERY + young < GC_FULL_AFTER * GC_MIDDLE_EVERY:
            return
        loop = self._loop
        assert loop is not None
        now = loop.time()
        since = now - self._full_gc_at
        if since < self.full_gc_every:
            return
        count = sum(c for _name, c, _max in self.listeners())
        settled, self._gc_last_count = count == self._gc_last_count, count
        if since < self.full_gc_latest and (self.lag > TRIM_MAX_LAG or not settled):
            return
        t0 = time.perf_counter()
        freed = gc.collect(2)
        self.last_full_gc = took = time.perf_counter() - t0
        self.full_gcs += 1
        self._full_gc_at = now
        log.debug("sysmon: full garbage collection freed %d objects in %.1f ms", freed,
                  _ms(took))

    def _check_store(self) -> None:
        journal = self.store()
        if journal is None:
            return
        new = journal.commits - self._commits_seen
        self._commits_seen = journal.commits
        if new > 0:
            recent = list(journal.latencies)[-new:]
            latency = max(recent) if recent else 0.0
        elif journal.gate.issued > journal.gate.committed:
            return  # a commit is under way and none finished: nothing to judge yet
        else:
            latency = 0.0  # idle: nothing waits on the store
        self.store_latency = latency
        s = self.settings
        self._level("slow_store_commit", latency, s.store_latency_high, s.store_latency_clear,
                    f"store commit took {_ms(latency):g} ms (high watermark "
                    f"{_ms(s.store_latency_high):g} ms)",
                    {"latency_ms": _ms(latency), "commits": new,
                     "high_watermark_ms": _ms(s.store_latency_high),
                     "clear_watermark_ms": _ms(s.store_latency_clear)})

    def figures(self) -> dict[str, Any]:
        """What the monitors last saw, and their watermarks."""
        s = self.settings
        return {
            "enabled": s.enable and self._handle is not None,
            "loop_lag_ms": _ms(self.lag), "rss": self.rss, "memory_high": self.memory_high,
            "fds": self.fds, "max_fds": self.max_fds,
            "store_latency_ms": None if self.store_latency is None
            else _ms(self.store_latency),
        }

"""The daemon turns CPython's automatic middle and full collections off (server.tune_gc), so
the system monitor runs the full ones: reference cycles that survived a young collection or
reached the oldest generation are still freed (a broker that runs for months must not keep
them for good), and nothing is collected by the monitor where automatic full collections
are on (a program embedding the server)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable, Iterator

import pytest

from mqttd.alarms import Alarms
from mqttd.config import SysmonSettings
from mqttd.server import GC_THRESHOLD0, GC_THRESHOLD1, GC_THRESHOLD2
from mqttd.sysmon import GC_FULL_AFTER, GC_MIDDLE_EVERY, SystemMonitor


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def daemon_gc() -> Iterator[None]:
    """The collector tuned as the daemon tunes it, restored afterwards."""
    saved = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD0, GC_THRESHOLD1, GC_THRESHOLD2)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def _old_garbage() -> weakref.ref[_Cycle]:
    """A cycle in the oldest generation, then dropped; and the oldest generation owed a
    collection (GC_FULL_AFTER middle ones since the last)."""
    c = _Cycle()
    ref = weakref.ref(c)
    gc.collect(1)  # survives the middle collection: now in the oldest generation
    del c
    for _ in range(GC_FULL_AFTER):
        gc.collect(1)  # each counts one towards the oldest generation
    assert ref() is not None  # no middle collection frees it
    return ref


def _young_garbage() -> weakref.ref[_Cycle]:
    """A cycle that survived a young collection, then dropped: no collection the daemon's
    collector starts by itself reaches it; and as many young collections since as make a
    full one owed."""
    gc.collect()  # counts from here
    c = _Cycle()
    ref = weakref.ref(c)
    gc.collect(0)  # survives the young collection: now in the middle generation
    del c
    for _ in range(GC_FULL_AFTER * GC_MIDDLE_EVERY):
        gc.collect(0)
    assert gc.get_count()[2] == 0  # no middle collection ran ...
    assert ref() is not None  # ... and no young one frees it
    return ref


async def _ticks(monitor: SystemMonitor, until: float, stop: Callable[[], bool]) -> int:
    loop = asyncio.get_running_loop()
    monitor.start(loop)
    try:
        end = loop.time() + until
        while loop.time() < end and not stop():
            await asyncio.sleep(0.05)
    finally:
        monitor.stop()
    return monitor.full_gcs


def _monitor() -> SystemMonitor:
    s = SysmonSettings()
    s.check_interval = 0.05
    m = SystemMonitor(s, Alarms(), lambda: [("default", 3, 100)])
    m.full_gc_every = 0.0
    m.full_gc_latest = 1.0  # a noisy machine's lag cannot keep it waiting longer
    return m


def test_the_monitor_frees_cycles_in_the_oldest_generation(daemon_gc: None) -> None:
    ref = _old_garbage()
    m = _monitor()
    assert asyncio.run(_ticks(m, 30.0, lambda: ref() is None)) == 1
    assert ref() is None
    assert gc.get_count()[2] == 0


def test_the_monitor_frees_cycles_that_survived_a_young_collection(daemon_gc: None) -> None:
    ref = _young_garbage()
    m = _monitor()
    assert asyncio.run(_ticks(m, 30.0, lambda: ref() is None)) == 1
    assert ref() is None
    assert gc.get_count()[1:] == (0, 0)


def test_the_monitor_waits_until_a_full_collection_is_owed(daemon_gc: None) -> None:
    gc.collect()
    c = _Cycle()
    ref = weakref.ref(c)
    gc.collect(0)
    del c
    m = _monitor()
    # Fewer young collections than make one owed: the monitor leaves the cycle for later.
    for _ in range(GC_FULL_AFTER * GC_MIDDLE_EVERY - 5):
        gc.collect(0)
    assert asyncio.run(_ticks(m, 0.5, lambda: False)) == 0
    assert ref() is not None
    del ref
    gc.collect()


def test_nothing_is_collected_by_the_monitor_while_automatic_ones_run() -> None:
    saved = gc.get_threshold()
    gc.set_threshold(saved[0], saved[1], 10)  # CPython's default: automatic ones on
    try:
        m = _monitor()
        gc.collect()
        for _ in range(GC_FULL_AFTER):
            gc.collect(1)
        assert asyncio.run(_ticks(m, 2.0, lambda: False)) == 0
    finally:
        gc.set_threshold(*saved)

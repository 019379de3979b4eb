"""bench/run.py's latency diagnostic: a message's latency less the broker's waits for a CPU.

The samples are what the load generator records: (send time, latency) per message and the
broker thread's schedstat (time, run ns, wait ns) read before each tick's send and after a
slow message arrived.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import run  # noqa: E402


def test_waits_within_a_message_are_taken_off_and_nothing_is_dropped() -> None:
    # 100 messages, one every 1,000 ns of 100 ns each; the 100th took 5,000 ns, of which the
    # broker stood 4,000 ns runnable without its core and ran 300 ns.
    samples = [(i * 1_000, 100) for i in range(99)] + [(99_000, 5_000)]
    sched = [(i * 1_000, 10 * i, 0) for i in range(100)] + [(104_000, 1_290, 4_000)]
    out = run.sched_attribution(samples, sched)
    assert out["tail_n"] == 1  # the raw p99 of 100 messages: the slow one alone
    assert out["tail_wait_pct"] == 80.0
    assert out["tail_run_pct"] == 6.0
    # less its waits the slow message took 1,000 ns: the p99 of what is left
    assert out["p99_net_us"] == 1.0


def test_a_message_without_samples_around_it_counts_whole() -> None:
    samples = [(0, 100), (1_000, 100), (2_000, 9_000)]
    sched = [(0, 0, 0), (1_000, 0, 0)]  # nothing read after the slow one arrived
    out = run.sched_attribution(samples, sched)
    assert out["p99_net_us"] == 9.0
    assert out["tail_wait_pct"] == 0.0


def test_waits_outside_the_widened_interval_are_not_counted_and_never_exceed_it() -> None:
    # the broker waited 50,000 ns before the send and after the arrival: none of it counts;
    # a wait longer than the message (the samples widen its interval) is capped at it
    samples = [(10_000, 2_000), (20_000, 1_000)]
    sched = [(0, 0, 0), (10_000, 0, 50_000), (12_000, 0, 50_500), (20_000, 0, 60_000),
             (22_000, 0, 70_000), (30_000, 0, 120_000)]
    out = run.sched_attribution(samples, sched)
    assert out["tail_n"] == 1
    assert out["tail_wait_pct"] == 25.0
    assert out["p99_net_us"] == 1.5

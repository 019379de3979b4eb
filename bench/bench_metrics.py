"""Metric counter micro-benchmark: pure vs compiled increments, by index and by name.

    python bench/bench_metrics.py [--quick] [--repeat N]

Each figure is the median of ``--repeat`` samples of ns per operation, measured in one
process pinned to one core with the garbage collector off during a sample. The loop and
call overhead of Python is included and identical for both sides: what the broker's hot
path pays per counter increment.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mqttd import _accel  # noqa: E402
from mqttd.metrics import MESSAGES_PUBLISH, MetricsPy  # noqa: E402


def sample(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        fn(n)
        return (time.perf_counter_ns() - t0) / n
    finally:
        gc.enable()


def workloads(m):  # type: ignore[no-untyped-def]
    inc = m.inc
    idx = MESSAGES_PUBLISH

    def by_index(n: int) -> None:
        for _ in range(n):
            inc(idx)

    def by_index_n(n: int) -> None:
        for _ in range(n):
            inc(idx, 64)

    def snapshot(n: int) -> None:
        for _ in range(n // 1000 or 1):
            m.snapshot()

    return {"inc(index)": by_index, "inc(index, 64)": by_index_n, "snapshot()": snapshot}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny counts (CI smoke run)")
    ap.add_argument("--repeat", type=int, default=None)
    args = ap.parse_args()
    repeat = args.repeat or (3 if args.quick else 7)
    n = 20_000 if args.quick else 2_000_000
    try:
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    except (AttributeError, OSError):
        pass
    impls = {"py": MetricsPy()}
    if _accel.LOADED.get("metrics") == "c":
        from mqttd._speedups._metrics import Metrics as MetricsC

        impls["c"] = MetricsC()
    else:
        print("compiled metrics not loaded: pure column only")
    results: dict[str, dict[str, float]] = {}
    for name, m in impls.items():
        for wname, fn in workloads(m).items():
            per = n if not wname.startswith("snapshot") else n // 1000 or 1
            times = [sample(fn, n) * (n / per) for _ in range(repeat)]
            results.setdefault(wname, {})[name] = statistics.median(times)
    print(f"{'operation':<16} {'py ns':>10} {'c ns':>10} {'py / c':>8}")
    for wname, r in results.items():
        c = r.get("c")
        ratio = f"{r['py'] / c:.1f}x" if c else "-"
        print(f"{wname:<16} {r['py']:>10.1f} {c if c is not None else float('nan'):>10.1f} "
              f"{ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

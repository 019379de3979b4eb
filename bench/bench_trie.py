"""Micro-benchmark of the subscription trie: insert and match, pure vs compiled vs brute force.

Usage::

    python bench/bench_trie.py            # 1k / 100k / 1M filters (a couple of minutes)
    python bench/bench_trie.py --quick    # smoke run, a few seconds
    python bench/bench_trie.py --sizes 1000,100000

The filter set mimics a broker's subscriptions: 50% exact, 25% with one or two
``+`` levels, 25% ending in ``#``; 3-6 levels drawn from an IoT-like vocabulary
with a large space of device ids. Match topics are half the topics of stored
exact filters (so they hit) and half fresh topics of the same shape. Each number
is the median over repeats; "match" is the mean cost of one ``match()`` call
over the sampled topics. Brute force is a scan with ``mqttd.mqtt.topics.match`` and
runs only at sizes up to 100k, on few topics. Do not run this while tests run
on the same machine.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mqttd._accel import NO_EXTENSIONS
from mqttd.core._trie_py import TriePy
from mqttd.mqtt import topics

ROOTS = ["sensors", "devices", "home", "factory", "vehicles", "fleet", "grid", "farm"]
SITES = [f"site{i}" for i in range(200)]
KINDS = ["thermo", "meter", "camera", "door", "pump", "valve", "light", "hvac", "gps", "plc"]
METRICS = ["temp", "humidity", "power", "state", "position", "speed", "alarm", "battery"]
TAILS = ["raw", "avg", "min", "max", "cmd", "ack"]
DEVICE_IDS = 2_000_000  # wide enough that 1M filters are mostly distinct


def _topic(rng: random.Random) -> list[str]:
    levels = [
        rng.choice(ROOTS),
        rng.choice(SITES),
        rng.choice(KINDS),
        f"dev{rng.randrange(DEVICE_IDS)}",
        rng.choice(METRICS),
        rng.choice(TAILS),
    ]
    return levels[: rng.randint(3, 6)]


def make_filters(n: int, seed: int = 1) -> tuple[list[str], list[str]]:
    """``n`` distinct filters and the exact ones among them."""
    rng = random.Random(seed)
    seen: set[str] = set()
    filters: list[str] = []
    exact: list[str] = []
    while len(filters) < n:
        levels = _topic(rng)
        kind = rng.random()
        if kind < 0.5:
            f = "/".join(levels)
        elif kind < 0.75:
            for _ in range(rng.choice((1, 1, 1, 2))):
                levels[rng.randrange(len(levels))] = "+"
            f = "/".join(levels)
        else:
            f = "/".join(levels[: rng.randint(1, len(levels) - 1)]) + "/#"
        if f not in seen:
            seen.add(f)
            filters.append(f)
            if kind < 0.5:
                exact.append(f)
    return filters, exact


def make_topics(exact: Sequence[str], n: int, seed: int = 2) -> list[str]:
    rng = random.Random(seed)
    hits = [rng.choice(exact) for _ in range(n // 2)] if exact else []
    fresh = ["/".join(_topic(rng)) for _ in range(n - len(hits))]
    out = hits + fresh
    rng.shuffle(out)
    return out


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_trie(cls: type, filters: list[str], sample: list[str], repeats: int) -> dict[str, float]:
    """Insert all ``filters`` into a fresh ``cls()``, then match every topic of ``sample``."""
    holder: list[object] = []

    def build() -> None:
        t = cls()
        ins = t.insert
        for f in filters:
            ins(f)
        holder.append(t)

    # The collector stays on, as in the broker: its cost on millions of nodes is part of the price.
    insert_times = []
    for _ in range(repeats):
        holder.clear()
        gc.collect()
        start = time.perf_counter()
        build()
        insert_times.append(time.perf_counter() - start)
    trie = holder[0]
    match = trie.match  # type: ignore[attr-defined]
    hits = sum(len(match(t)) for t in sample)

    def run() -> None:
        for t in sample:
            match(t)

    match_time = _median_time(run, repeats)
    holder.clear()
    gc.collect()
    return {
        "insert_s": statistics.median(insert_times),
        "match_us": match_time / len(sample) * 1e6,
        "hits": hits / len(sample),
    }


def bench_brute(filters: list[str], sample: list[str], repeats: int) -> dict[str, float]:
    def run() -> None:
        for t in sample:
            [f for f in filters if topics.match(f, t)]

    hits = sum(sum(1 for f in filters if topics.match(f, t)) for t in sample)
    return {
        "insert_s": float("nan"),
        "match_us": _median_time(run, repeats) / len(sample) * 1e6,
        "hits": hits / len(sample),
    }


def _check_agree(impls: dict[str, type], filters: list[str], sample: list[str]) -> None:
    """The implementations must give the same sets, and the brute force on a few topics."""
    tries = {}
    for name, cls in impls.items():
        t = cls()
        for f in filters:
            t.insert(f)
        tries[name] = t
    for topic in sample:
        results = {name: frozenset(t.match(topic)) for name, t in tries.items()}
        if len(set(results.values())) != 1:
            raise SystemExit(f"implementations disagree on {topic!r}: {results}")
    for topic in sample[:5]:
        expected = {f for f in filters if topics.match(f, topic)}
        got = next(iter(tries.values())).match(topic)
        if set(got) != expected:
            raise SystemExit(f"trie disagrees with brute force on {topic!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument(
        "--sizes", help="comma-separated filter counts (default 1000,100000,1000000)"
    )
    args = parser.parse_args(argv)

    impls: dict[str, type] = {"py": TriePy}
    if not NO_EXTENSIONS:
        from mqttd._speedups._trie import Trie as TrieC

        impls["c"] = TrieC
    else:
        print("MQTTD_NO_EXTENSIONS is set: benchmarking the pure trie only", file=sys.stderr)

    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = [100, 1000] if args.quick else [1000, 100_000, 1_000_000]

    rows: list[tuple[int, str, dict[str, float]]] = []
    for n in sizes:
        filters, exact = make_filters(n)
        if args.quick:
            samples, repeats, brute_samples, brute_repeats = 200, 3, 10, 1
        elif n <= 1000:
            samples, repeats, brute_samples, brute_repeats = 10_000, 7, 200, 3
        elif n <= 100_000:
            samples, repeats, brute_samples, brute_repeats = 10_000, 5, 10, 3
        else:
            samples, repeats, brute_samples, brute_repeats = 2_000, 3, 0, 0
        sample = make_topics(exact, samples)
        if n <= 100_000:
            _check_agree(impls, filters, sample[:200])
        for name, cls in impls.items():
            rows.append((n, name, bench_trie(cls, filters, sample, repeats)))
            print(f"  done: {n} {name}", file=sys.stderr)
        if n <= 100_000 and brute_samples:
            rows.append((n, "brute", bench_brute(filters, sample[:brute_samples], brute_repeats)))
            print(f"  done: {n} brute", file=sys.stderr)

    header = f"{'filters':>9}  {'impl':<6}{'insert all':>12}{'insert/filter':>15}"
    header += f"{'match/topic':>14}{'matches':>9}"
    print(header)
    print("-" * len(header))
    for n, name, r in rows:
        if r["insert_s"] == r["insert_s"]:  # not NaN
            ins = f"{r['insert_s'] * 1e3:9.1f} ms"
            per = f"{r['insert_s'] / n * 1e6:10.2f} us"
        else:
            ins, per = "-", "-"
        print(f"{n:>9,}  {name:<6}{ins:>12}{per:>15}{r['match_us']:>11.2f} us{r['hits']:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Memory per subscription: one session subscribing to N filters, measured with tracemalloc.

Usage::

    python bench/bench_subs.py             # 100,000 filters in one session
    python bench/bench_subs.py --quick     # smoke run, 2,000 filters
    python bench/bench_subs.py --filters 100000 --wildcards 0.25

What is counted is everything the subscriptions keep alive once the SUBSCRIBE has been
handled: the filter strings, the session's subscriptions dict, the route table (Route
objects and their subscriber dicts), the trie nodes of wildcard filters and the options.
Each filter arrives with its own SubOpts instance, as the parser gives them. Runs the
real broker core (Broker, Dispatcher, Router, Session) without sockets or an event loop.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mqttd.config import Settings, Zone  # noqa: E402
from mqttd.core.dispatch import Dispatcher  # noqa: E402
from mqttd.core.session import Session  # noqa: E402
from mqttd.hooks import Hooks  # noqa: E402
from mqttd.metrics import Metrics  # noqa: E402
from mqttd.mqtt.packets import SubOpts  # noqa: E402


def filters(n: int, wildcards: float) -> list[str]:
    every = int(1 / wildcards) if wildcards else 0
    out = []
    for i in range(n):
        if every and i % every == 0:
            out.append(f"site{i % 200}/+/dev{i:07d}/#")
        else:
            out.append(f"site{i % 200}/meter/dev{i:07d}/temp")
    return out


def measure(n: int, wildcards: float) -> tuple[float, int]:
    Settings(zones={"default": Zone()})  # imports settled before the baseline
    dispatcher = Dispatcher(Metrics(), Hooks())
    session = Session("bench-client")
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    # One decoded SUBSCRIBE's worth: fresh strings and one SubOpts per filter.
    topics = [(f, SubOpts(1)) for f in filters(n, wildcards)]
    for topic_filter, opts in topics:
        dispatcher.subscribe(session, topic_filter, opts, 0)
    del topics, topic_filter, opts
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(session.subscriptions) == n
    return used / n, len(dispatcher.router.routes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filters", type=int, default=100_000)
    ap.add_argument("--wildcards", type=float, default=0.0,
                    help="share of wildcard filters (0.25: every 4th)")
    ap.add_argument("--quick", action="store_true", help="smoke run, 2,000 filters")
    args = ap.parse_args()
    n = 2_000 if args.quick else args.filters
    for share in sorted({0.0, args.wildcards}):
        per, routes = measure(n, share)
        print(f"{n} filters, {share:.0%} wildcard: {per:.0f} B per subscription "
              f"({routes} routes)")


if __name__ == "__main__":
    main()

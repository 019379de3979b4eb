#!/usr/bin/env python3
"""What a durable message costs the store's commit path: SQLite against the operation log.

    python bench/bench_store.py [--messages 60000] [--quick]

Each message is a queue row inserted (the message inline, 64-byte payload) and deleted
2,000 rows later, as a subscriber with a deep queue acknowledges it; messages are
committed in batches of 10 to 1,000 (one loop turn's worth). Two ways to commit a batch:

* ``sqlite``: ``SqliteBackend.write()`` (durability "process": WAL, synchronous=NORMAL);
* ``oplog``: ``OpLog.append()`` (``marshal`` + CRC-32 + one ``write``), what mqttd does.

Printed: µs per message for each. This is why the store commits to the log and applies
to SQLite in bulk later (docs/DURABILITY.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mqttd.store.base import Q_DEL, Q_PUT, SESSION_PUT, Op  # noqa: E402
from mqttd.store.journal import _packet  # noqa: E402
from mqttd.store.oplog import OpLog  # noqa: E402
from mqttd.store.sqlite import SqliteBackend  # noqa: E402

DEPTH = 2000


def batches(n: int, k: int, encoded: bool) -> list[list[Op]]:
    fields = ("bench/in/1", b"x" * 64, 1, False, {})
    message: object = _packet(fields) if encoded else fields
    out = []
    seq = 0
    while seq < n:
        ops: list[Op] = []
        for _ in range(k):
            seq += 1
            ops.append((Q_PUT, "sub", seq, seq, 1, False, (), None, 0, message, "pub",
                        1.7e9, 0.0))
        for i in range(k):
            old = seq - k + 1 + i - DEPTH
            if old > 0:
                ops.append((Q_DEL, "sub", old))
        out.append(ops)
    return out


def run_sqlite(tmp: str, n: int, k: int) -> float:
    backend = SqliteBackend(os.path.join(tmp, f"sqlite-{k}.db"))
    backend.open()
    backend.write([(SESSION_PUT, "sub", 7200, 0.0, 0.0, None, 0, "default")])
    work = batches(n, k, encoded=True)
    start = time.perf_counter()
    for ops in work:
        backend.write(ops)
    seconds = time.perf_counter() - start
    backend.close()
    return seconds / n * 1e6


def run_oplog(tmp: str, n: int, k: int) -> float:
    log = OpLog(os.path.join(tmp, f"log-{k}.db"))
    log.open()
    work = batches(n, k, encoded=False)
    start = time.perf_counter()
    for i, ops in enumerate(work):
        log.append(ops, i)
    seconds = time.perf_counter() - start
    log.close()
    return seconds / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=60_000)
    ap.add_argument("--quick", action="store_true", help="a smoke run (CI)")
    args = ap.parse_args()
    n = 3_000 if args.quick else args.messages
    sizes = (10, 100) if args.quick else (10, 30, 100, 300, 1000)
    print(f"{n:,} messages, each a queue row inserted and deleted {DEPTH:,} rows later; "
          "µs per message")
    print(f"{'batch':>6} {'sqlite':>8} {'oplog':>8} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for k in sizes:
            sql = run_sqlite(tmp, n, k)
            log = run_oplog(tmp, n, k)
            print(f"{k:>6} {sql:>8.2f} {log:>8.2f} {sql / log:>5.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

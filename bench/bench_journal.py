#!/usr/bin/env python3
"""What the store's journal costs a durable QoS 1 delivery, in process (no sockets).

    python bench/bench_journal.py [--messages 120000] [--batch 30] [--apply-bytes 1048576]

One persistent session subscribed to ``t/#``; each loop turn stores ``--batch`` deliveries
of a distinct 1 KB message (``Session.start_inflight`` → ``Journal.add_delivery``) and acknowledges
the previous turn's (``Session.ack`` → ``Journal.remove_delivery``), as a subscriber that
keeps up does; the real journal commits each turn to its operation log and its writer
thread applies to a real SQLite file (``apply_bytes`` small, so that there are many
applications). Printed: wall and CPU µs per message (the loop and the writer thread:
run it pinned to one core, ``taskset -c 1``, as the broker is), the applications and the
operations that reached SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the in-process broker core of the journal tests

from core_util import Owner  # noqa: E402
from test_store_journal import Env, _journal  # noqa: E402

from mqttd.core.message import Message  # noqa: E402
from mqttd.mqtt.packets import SubOpts  # noqa: E402
from mqttd.store.sqlite import SqliteBackend  # noqa: E402


async def run(n: int, k: int, apply_bytes: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    journal = _journal(SqliteBackend(str(tmp / "mqttd.db")), tmp)
    journal.apply_bytes = apply_bytes
    journal.start(asyncio.get_running_loop())
    env = Env(journal)
    session = env.open(Owner("sub"))
    env.dispatcher.subscribe(session, "t/#", SubOpts(1), 0)
    # Distinct payloads (a pool larger than a batch): one object for every message would let
    # marshal (the log's format 1) write it once per batch, which no real traffic does.
    payloads = [os.urandom(1024) for _ in range(4 * k)]
    pending: list[int] = []
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n // k):
        for pid in pending:
            session.ack(pid, 1)
        pending = [session.start_inflight((Message("t/1", payloads[(i + j) % len(payloads)],
                                                   1, False, None, "pub"),
                                           1, False, (), None)) for j in range(k)]
        await asyncio.sleep(0)  # the loop turn ends: the batch is committed
    for pid in pending:
        session.ack(pid, 1)
    await asyncio.sleep(0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await journal.aclose()
    print(f"{wall / n * 1e6:.2f} µs wall, {cpu / n * 1e6:.2f} µs CPU per message; "
          f"{journal.applications} applications, {journal.ops_applied} operations reached "
          f"SQLite")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=120_000)
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--apply-bytes", type=int, default=1 << 20)
    args = ap.parse_args()
    asyncio.run(run(args.messages, args.batch, args.apply_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

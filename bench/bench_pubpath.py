#!/usr/bin/env python3
"""In-process cost of one PUBLISH from parse to the subscriber's output (issue 17).

    python bench/bench_pubpath.py [--messages 150000] [--rounds 3]

A broker core (tests/core_util.py's World: real Broker, Channel, Session, no sockets)
with one 3.1.1 subscriber on ``bench/#`` and a publisher; 1,500 64-byte PUBLISHes to
4 topics are parsed with the compiled parser and handed to the channel, QoS 0 and QoS 1.
A QoS 1 row measures a whole QoS 1 delivery: the publisher's PUBLISH and its PUBACK, the
subscriber's PUBLISH and the subscriber's PUBACK for it, through the same path (the
subscriber acknowledges everything it was sent, a window at a time, before the
publisher's next packets: flow control, ``mqueue_flow_limit``, would otherwise hold the
publisher of a queue that keeps growing, and the row would time a held publisher). Each
row checks at its end that every message was delivered (QoS 1: and acknowledged).

Three ways: a loop over ``handle_in`` (the state machine, as Connection._received did),
the pure fast path's ``run`` (``PublishPathPy``), the compiled one's. CPU time of this
process per message, best of ``--rounds``. Not a broker benchmark (no I/O, no event
loop): it isolates what the fast path changes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from core_util import World  # noqa: E402

from mqttd import _accel  # noqa: E402
from mqttd.core import pubpath  # noqa: E402
from mqttd.metrics import MESSAGES_ACKED, MESSAGES_DELIVERED  # noqa: E402
from mqttd.mqtt.codec import Parser, encode  # noqa: E402
from mqttd.mqtt.packets import Puback, Publish  # noqa: E402

BATCH = 1500


def run(qos: int, apply: Callable[[Any, list[Any]], int] | None, messages: int) -> float:
    """CPU µs per message."""
    w = World()
    sub = w.subscriber("sub", "bench/#", qos=qos, version=4)
    pub = w.client("pub", version=4)
    data = b"".join(encode(Publish(f"bench/{i % 4}", b"x" * 64, qos, False, False,
                                   i + 1 if qos else 0), 4) for i in range(BATCH))
    parser = Parser(version=4)
    channel, subch = pub.channel, sub.channel
    session = subch.session
    handle = channel.handle_in

    def applied(packets: list[Any]) -> int:
        if apply is not None:
            return apply(channel, packets)
        n = 0  # Connection._received's loop before the fast path
        for packet in packets:
            n += 1
            handle(packet)
            if channel.closing or channel.pressure is not None:
                break
        return n

    def acknowledge() -> None:
        # The subscriber acknowledges its window, a read's worth at a time, until nothing
        # is queued (each batch of PUBACKs through the path measured, as one read's);
        # then a publisher held by flow control (mqueue_flow_limit) goes on, as the
        # Connection does when the queue has room.
        while session.inflight:
            acks = [Puback(packet_id) for packet_id in session.inflight]
            if apply is None:
                for ack in acks:
                    subch.handle_in(ack)
            else:
                apply(subch, acks)
            subch.out.clear()
        if channel.pressure is not None and channel.pressure_room():
            channel.end_pressure(False)

    done = 0
    t0 = time.process_time()
    while done < messages:
        packets = parser.feed(data)
        while packets:
            n = applied(packets)
            packets = packets[n:]
            channel.out.clear()
            if qos:
                acknowledge()
            subch.out.clear()
            assert channel.pressure is None, "the publisher is still held"
        done += BATCH
    elapsed = time.process_time() - t0
    # What the row claims to time: every message delivered, and at QoS 1 acknowledged.
    delivered, acked = w.metrics.get(MESSAGES_DELIVERED), w.metrics.get(MESSAGES_ACKED)
    if delivered != done or acked != (done if qos else 0):
        raise SystemExit(f"QoS {qos}: {done} published, {delivered} delivered, {acked} acked")
    return elapsed / done * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=150_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ways: list[tuple[str, Callable[[Any, list[Any]], int] | None]] = [
        ("handle_in", None), ("fast path, py", pubpath.build_run(pubpath.PublishPathPy))]
    if _accel.use_c("pubpath"):
        ways.append(("fast path, c", pubpath.build_run(pubpath.PublishPath)))
    print(f"speedups: {_accel.LOADED}")
    for qos in (0, 1):
        for name, apply in ways:
            best = min(run(qos, apply, args.messages) for _ in range(args.rounds))
            print(f"QoS {qos}  {name:14s} {best:6.3f} µs/msg")


if __name__ == "__main__":
    main()

"""Bad input leaks nothing: file descriptors, asyncio tasks and memory return to their level.

Rounds of 200 misbehaving clients (malformed CONNECTs, protocol errors after CONNACK, a
declared-too-large packet, garbage, clients that vanish mid-packet) against a real broker;
after each round the broker's own view (`mqttd ctl vm --json`) must be back to where it
was. Memory may grow in the first round (allocator pools, caches) but must not keep
growing from round to round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from support import builder as B
from support.process import BrokerProcess, run_mqttd
from support.raw import RawClient

from mqttd.mqtt.packets import Connack

ROUNDS = 4
PER_ROUND = 200


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    b = BrokerProcess("[mqtt]\nmax_packet_size = 4096\n")
    try:
        yield b
    finally:
        b.stop()
        assert "Traceback" not in b.log()
        b.cleanup()


def vm(broker: BrokerProcess) -> dict:
    r = run_mqttd("ctl", "--data-dir", str(broker.data_dir), "vm", "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def bad_inputs(i: int) -> bytes:
    cid = f"bad-{i}"
    kinds = [
        B.connect(cid, level=4, connect_flags=0x03),                      # reserved flag
        B.connect(cid, level=5) + B.publish("a/+", b"x", properties=b"\x00"),        # wildcard topic
        B.connect(cid, level=5) + b"\x30\xff\xff\x03",                    # too large
        B.connect(cid, level=4) + B.connect(cid, level=4),                # second CONNECT
        b"\x00\x01\x02\x03garbage",                                       # not MQTT at all
        B.connect(cid, level=5)[:7],                                      # vanishes mid-packet
        B.connect(cid, level=5) + B.subscribe(1, [("t", 3)], properties=b"\x00"),    # QoS 3
        B.connect(cid, level=5, properties=b"\x05\x21\x00\x00\x21\x00\x01"),  # bad props
    ]
    return kinds[i % len(kinds)]


def one_round(broker: BrokerProcess, base: int, fds: int) -> None:
    socks = []
    for i in range(PER_ROUND):
        s = RawClient(broker)
        s.send(bad_inputs(base + i))
        socks.append(s)
    # The clients that stopped mid-packet are still open on the broker's side: the
    # measurement sees them (so it could see a leak).
    assert vm(broker)["io"]["active_fds"] >= fds + PER_ROUND // 8
    for s in socks:
        s.close()


def settle(broker: BrokerProcess, fds: int, tasks: int) -> dict:
    """Wait (bounded) until the broker's fds and tasks are back to the baseline."""
    deadline = time.monotonic() + 20
    while True:
        v = vm(broker)
        if v["io"]["active_fds"] <= fds and v["asyncio"]["tasks"] <= tasks:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"broker did not settle: {v['io']} {v['asyncio']} "
                        f"(baseline fds={fds}, tasks={tasks})")
        time.sleep(0.2)


def test_bad_clients_leak_nothing(broker: BrokerProcess) -> None:
    base = vm(broker)
    fds, tasks = base["io"]["active_fds"], base["asyncio"]["tasks"]
    rss = []
    for r in range(ROUNDS):
        one_round(broker, r * PER_ROUND, fds)
        v = settle(broker, fds, tasks)
        rss.append(v["memory"]["rss"])
    # After the first round has warmed the allocator, rounds must not add up.
    growth = rss[-1] - rss[1]
    assert growth < 2 * 1024 * 1024, f"RSS grew {growth} bytes over rounds: {rss}"
    # And the broker still serves a good client.
    with RawClient(broker) as s:
        s.send(B.connect("good", level=4))
        s.expect(Connack)
        assert bytes(s.received) == b"\x20\x02\x00\x00"

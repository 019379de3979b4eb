"""Listing many clients streams in pages and never stalls the broker.

2,000 real TCP clients on a real daemon listed (text and JSON) while another client pings
it: every row, and the pings answered all along (the worst round trip is printed, not
asserted: a shared machine's scheduler decides it as much as the broker). And 100,000
clients in an in-process node (a real event loop, a real control socket, the real ``mqttd
ctl`` in a subprocess): the loop keeps turning while the listing is served, at least once
per page, counted by a task that yields once per turn (the longest turn printed).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time

from support import WAIT, builder as B
from support.process import BrokerProcess, broker_fixture, run_mqttd
from support.raw import RawClient

from mqttd.config import Settings
from mqttd.core.channel import CONNECTED, Channel
from mqttd.core.session import Session
from mqttd.ctl.context import PAGE_ROWS
from mqttd.mqtt.packets import Connack, Pingresp, SubOpts
from mqttd.server import Server

broker = broker_fixture('[node]\nlog_level = "info"\n', extra_args=["--log-level", "info"])


def _connect_many(broker: BrokerProcess, n: int) -> list[RawClient]:
    socks = []
    for i in range(n):
        s = RawClient(broker)
        s.send(B.connect(f"many-{i:05d}", keepalive=0))
        socks.append(s)
    for s in socks:  # every CONNACK (4 bytes, accepted)
        s.expect(Connack)
        assert bytes(s.received) == bytes([0x20, 2, 0, 0]), s.received
    return socks


class Pinger(threading.Thread):
    """PINGREQ, wait for PINGRESP, again, until stopped; keeps the longest round trip."""

    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__(daemon=True)
        self.raw = RawClient(broker)  # TCP_NODELAY: a PINGREQ leaves at once
        self.raw.send(B.connect("pinger", keepalive=0))
        self.raw.expect(Connack)
        assert bytes(self.raw.received) == bytes([0x20, 2, 0, 0])
        self.stop_flag = threading.Event()
        self.rtts: list[float] = []

    def run(self) -> None:
        ping = B.pingreq()
        while not self.stop_flag.is_set():
            t0 = time.perf_counter()
            self.raw.send(ping)
            self.raw.expect(Pingresp)
            assert bytes(self.raw.received[-2:]) == bytes([0xD0, 0])
            self.rtts.append(time.perf_counter() - t0)
            time.sleep(0.001)

    def finish(self) -> float:
        self.stop_flag.set()
        self.join(WAIT)
        self.raw.close()
        return max(self.rtts)


def test_listing_2000_real_clients_does_not_pause_the_others(broker: BrokerProcess) -> None:
    socks = _connect_many(broker, 2000)
    try:
        pinger = Pinger(broker)
        pinger.start()
        time.sleep(0.2)
        args = ["ctl", "--data-dir", str(broker.data_dir), "clients", "list"]
        listing = run_mqttd(*args, "--json", timeout=60)
        human = run_mqttd(*args, timeout=60)
        worst = pinger.finish()
    finally:
        for s in socks:
            s.close()
    assert listing.returncode == 0, listing.stderr
    ids = {row["clientid"] for row in json.loads(listing.stdout)}
    assert {f"many-{i:05d}" for i in range(2000)} <= ids
    lines = human.stdout.splitlines()
    assert lines[0].startswith("Client ID") and lines[-1] == f"{len(ids)} clients"
    assert len(lines) == len(ids) + 3  # header, rule, rows, footer
    assert len(pinger.rtts) > 50
    print(f"\nworst PINGREQ round trip during the listings: {worst * 1000:.1f} ms")


async def _list_100k(tmp: str) -> tuple[int, int, float, float]:
    settings = Settings(data_dir=os.path.join(tmp, "data"))
    server = Server(settings)
    node = server.node
    zone = settings.zone("default")
    registry = node.registry
    now = time.time()
    for i in range(100_000):
        cid = f"client-{i:06d}"
        channel = Channel(node.broker, zone, f"10.0.{i >> 8 & 255}.{i & 255}:{1024 + i % 60000}")
        session = Session(cid)
        channel.client_id, channel.session, channel.state = cid, session, CONNECTED
        channel.version, channel.connected_at = 5, now
        session.channel = channel
        node.dispatcher.subscribe(session, f"dev/{i}/cmd", SubOpts(1), 0)
        registry.channels[cid] = channel
        registry.sessions[cid] = session
    # Pay the garbage collector's debt for the 100,000 objects just built now: otherwise
    # a full collection over the whole test process (millions of objects when the suite
    # runs together) may fall inside the measurement, a pause no listing causes.
    gc.collect()
    from mqttd.ctl.commands import build_table
    from mqttd.ctl.server import CtlServer

    server.ctl = CtlServer(server.mgmt, settings.data_dir, build_table())
    await server.ctl.start()
    # Start the client first and let it wait for a line: forking this big process would
    # itself pause the loop, which is not what is measured here.
    code = ("import sys; sys.stdin.readline(); from mqttd.cli.ctl import main; "
            f"sys.exit(main({['--data-dir', settings.data_dir, 'clients', 'list', '--json']!r}))")
    # Its output (tens of MB of JSON) goes to a file: reading it through a pipe in this
    # loop would put the test's own buffering into the lag being measured.
    out_path = os.path.join(tmp, "clients.json")
    out_file = open(out_path, "wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                                stdin=asyncio.subprocess.PIPE,
                                                stdout=out_file)
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    turns = 0
    done = False

    async def ticker() -> None:
        # One step per loop turn (sleep(0)), counted while the control socket serves the
        # listing: the turns it left to the others. The lag of each step is printed only.
        nonlocal turns
        while not done:
            t0 = loop.time()
            await asyncio.sleep(0)
            if server.ctl is not None and server.ctl._handlers:
                turns += 1
                lags.append(loop.time() - t0)

    tick = asyncio.ensure_future(ticker())
    started = time.perf_counter()
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    proc.stdin.close()
    await proc.wait()
    elapsed = time.perf_counter() - started
    done = True
    await tick
    await server.ctl.close()
    out_file.close()
    assert proc.returncode == 0
    with open(out_path, "rb") as f:
        return len(json.loads(f.read())), turns, max(lags, default=0.0), elapsed


def test_listing_100k_clients_in_pages() -> None:
    # The node runs in a fresh interpreter, as a daemon does: inside the test process a
    # full garbage collection walks every object the earlier tests left behind, a pause
    # that says nothing about a broker with 100,000 clients.
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import json, sys, tempfile, uvloop; sys.path.insert(0, %r); "
            "import test_ctl_scale as t\n"
            "with tempfile.TemporaryDirectory(prefix='mqttd-100k-') as tmp:\n"
            "    print(json.dumps(uvloop.run(t._list_100k(tmp))))" % here)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    n, turns, worst, elapsed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert n == 100_000
    print(f"\n100,000 clients listed in {elapsed:.1f} s: the loop turned {turns} times "
          f"meanwhile, the longest turn {worst * 1000:.1f} ms")
    # The loop keeps turning while the listing is served: at least once per page (a page is
    # at most PAGE_ROWS rows, each followed by a yield).
    pages = 100_000 // PAGE_ROWS
    assert turns >= pages, f"the loop turned only {turns} times during {pages} pages"

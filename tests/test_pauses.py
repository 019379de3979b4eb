"""What keeps the event loop from standing still with many clients (issue 17), against a real
daemon: a closing connection's linger ends on the connections' shared deadline timer (no
timer of its own), and full garbage collections do not start by themselves while thousands
of clients connect (young and middle ones still run)."""

from __future__ import annotations

import json
import socket
import sys
import time

from support import builder as B
from support.mass import room_for
from support.process import BrokerProcess, checked_broker, run_mqttd
from support.raw import RawClient

from mqttd.mqtt.packets import Connack
from mqttd.sysmon import shrink

#: Clients connected at once for the collector's test: ~7 tracked objects each, so several
#: young collections run while they connect.
STORM = 6_000


def vm(broker: BrokerProcess) -> dict:
    r = run_mqttd("ctl", "--data-dir", str(broker.data_dir), "vm", "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_closing_connection_the_client_keeps_open_is_aborted_after_its_linger() -> None:
    with checked_broker() as broker:
        fds = vm(broker)["io"]["active_fds"]
        c = RawClient(broker, version=4, timeout=30)
        c.send(B.connect("lingerer", level=4))
        assert c.expect(Connack).reason_code == 0
        c.send(B.connect("lingerer", level=4))  # a second CONNECT: the broker closes
        # Half-closed: the broker's FIN arrives, and it still reads (and drops) what we send.
        c.sock.settimeout(30)
        assert c.sock.recv(64) == b""
        c.sock.sendall(B.pingreq())
        # We never close our side: the linger ends (a tick of the shared deadline timer)
        # and the broker aborts, so a later send is answered with a reset.
        reset = False
        deadline = time.monotonic() + 30
        while not reset and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                c.sock.sendall(B.pingreq())
            except (ConnectionResetError, BrokenPipeError):
                reset = True
        assert reset, "the broker never aborted a connection whose client kept it open"
        c.close()
        deadline = time.monotonic() + 30
        while vm(broker)["io"]["active_fds"] > fds and time.monotonic() < deadline:
            time.sleep(0.2)
        assert vm(broker)["io"]["active_fds"] <= fds


def test_no_middle_or_full_collection_while_thousands_connect() -> None:
    room_for(STORM)
    with checked_broker() as broker:
        before = vm(broker)["memory"]["gc_collections"]
        clients = []
        try:
            for i in range(STORM):
                s = socket.create_connection(("127.0.0.1", broker.port), timeout=30)
                s.sendall(B.connect(f"storm-{i}", level=4))
                clients.append(s)
            for s in clients:
                assert s.recv(4)[:1] == b"\x20"  # CONNACK
            after = vm(broker)["memory"]["gc_collections"]
        finally:
            for s in clients:
                s.close()
        young, middle, full = (a - b for a, b in zip(after, before, strict=True))
        print(f"\n{STORM} clients connected: {young} young, {middle} middle, {full} full "
              "collections")
        assert young >= 2, young  # the collector still runs ...
        # ... but never over every young survivor (the clients themselves) or every object
        assert middle == 0 and full == 0


def test_shrink_rebuilds_a_table_at_the_size_of_what_it_holds() -> None:
    class Mirrored(set[int]):  # as the listeners' LiveConnections: add does more
        added = 0

        def add(self, item: int) -> None:
            Mirrored.added += 1
            super().add(item)

    table = {i: str(i) for i in range(20_000)}
    live = Mirrored(range(20_000))
    for i in range(19_990):
        del table[i]
        live.discard(i)
    big_d, big_s = sys.getsizeof(table), sys.getsizeof(live)
    shrink(table)
    shrink(live)
    assert table == {i: str(i) for i in range(19_990, 20_000)}
    assert live == set(range(19_990, 20_000)) and Mirrored.added == 0
    assert sys.getsizeof(table) < big_d // 100 and sys.getsizeof(live) < big_s // 100

"""Many clients arriving at once against a real daemon (issue 17, pauses): past a loop turn's
read budget their CONNECTs wait for later turns (the sockets paused), so a connected client
keeps being answered in between, and every one of them still gets its CONNACK and its
``$SYS`` connected event."""

from __future__ import annotations

import json
import socket
import time

from support import builder as B
from support.ctlrun import ctl_json
from support.mass import Watcher, room_for
from support.process import BrokerProcess, checked_broker, stopped

N = 2_000
NODE = "mqttd@127.0.0.1"
SYS_CONNECTED = f"$SYS/brokers/{NODE}/clients/+/connected"
#: PINGRESPs that must reach the watcher between the first and the last arrival it sees
#: (every CONNECT in one turn would give none: the PINGREQ was sent after every CONNECT).
MIN_INTERLEAVED = 4


def _open_fds(broker: BrokerProcess) -> int:
    return int(ctl_json(broker, "vm")["io"]["active_fds"])


def test_mass_connect_is_sliced_and_every_client_is_answered() -> None:
    room_for(N)
    with checked_broker() as broker:
        watcher = Watcher(broker, [SYS_CONNECTED])
        arrivals = []
        try:
            fds = _open_fds(broker)
            for _ in range(N):
                arrivals.append(socket.create_connection(("127.0.0.1", broker.port),
                                                         timeout=60))
            # Every socket accepted (its connection made) before the CONNECTs are sent.
            deadline = time.monotonic() + 60
            while _open_fds(broker) < fds + N:
                assert time.monotonic() < deadline, "the broker did not accept every client"
                time.sleep(0.1)
            with stopped(broker.proc):  # every CONNECT, then the PINGREQ, found in one poll
                for i, s in enumerate(arrivals):
                    s.sendall(B.connect(f"arrival-{i}", level=4))
                watcher.ping()
            connected: set[str] = set()
            stream = watcher.watch(lambda p: connected.add(json.loads(p.payload)["clientid"]),
                                   lambda: len(connected) >= N)
            for s in arrivals:
                assert s.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        finally:
            for s in arrivals:
                s.close()
        assert connected == {f"arrival-{i}" for i in range(N)}
        interleaved = Watcher.pings_between(stream)
        print(f"\n{N} arrivals: {interleaved} PINGRESPs between the first and the last")
        assert interleaved >= MIN_INTERLEAVED, (
            f"only {interleaved} PINGRESPs reached another client while {N} CONNECTs were "
            "handled: the loop did not turn between slices")
        watcher.close()

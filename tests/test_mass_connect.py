"""Many clients arriving at once against a real daemon (issue 17, pauses): past a loop turn's
read budget their CONNECTs wait for later turns (the sockets paused), so a connected client
keeps being answered in between, and every one of them still gets its CONNACK and its
``$SYS`` connected event."""

from __future__ import annotations

import json
import resource
import signal
import socket
import time

from support import builder as B
from support.process import BrokerProcess, checked_broker, run_mqttd
from support.raw import RawClient

from mqttd.mqtt.packets import Connack, Pingresp, Publish, Suback

N = 2_000
NODE = "mqttd@127.0.0.1"
SYS_CONNECTED = f"$SYS/brokers/{NODE}/clients/+/connected"
#: PINGRESPs that must reach the watcher between the first and the last arrival it sees
#: (every CONNECT in one turn would give none: the PINGREQ was sent after every CONNECT).
MIN_INTERLEAVED = 4


def _room_for(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * n + 500))  # our sockets; the broker inherits the limit
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _open_fds(broker: BrokerProcess) -> int:
    r = run_mqttd("ctl", "--data-dir", str(broker.data_dir), "vm", "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["io"]["active_fds"])


def test_mass_connect_is_sliced_and_every_client_is_answered() -> None:
    _room_for(N)
    with checked_broker() as broker:
        watcher = RawClient(broker, version=4, timeout=30)
        watcher.send(B.connect("watcher", level=4))
        assert watcher.expect(Connack).reason_code == 0
        watcher.send(B.subscribe(1, [(SYS_CONNECTED, 0)]))
        assert watcher.expect(Suback).reason_codes == [0]
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
            # Every CONNECT (and the PINGREQ after them) waits in the kernel while the
            # broker is stopped: it finds them all in one poll when it goes on.
            broker.proc.send_signal(signal.SIGSTOP)
            try:
                for i, s in enumerate(arrivals):
                    s.sendall(B.connect(f"arrival-{i}", level=4))
                watcher.send(B.pingreq())
            finally:
                broker.proc.send_signal(signal.SIGCONT)
            stream: list[str] = []
            connected: set[str] = set()
            while len(connected) < N:
                p = watcher.recv(timeout=60)
                if isinstance(p, Pingresp):
                    stream.append("ping")
                    watcher.send(B.pingreq())
                    continue
                assert isinstance(p, Publish), p
                connected.add(json.loads(p.payload)["clientid"])
                stream.append("arrival")
            for s in arrivals:
                assert s.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        finally:
            for s in arrivals:
                s.close()
        assert connected == {f"arrival-{i}" for i in range(N)}
        first = stream.index("arrival")
        last = len(stream) - 1 - stream[::-1].index("arrival")
        interleaved = stream[first:last].count("ping")
        print(f"\n{N} arrivals: {interleaved} PINGRESPs between the first and the last")
        assert interleaved >= MIN_INTERLEAVED, (
            f"only {interleaved} PINGRESPs reached another client while {N} CONNECTs were "
            "handled: the loop did not turn between slices")
        watcher.send(B.disconnect())
        watcher.close()

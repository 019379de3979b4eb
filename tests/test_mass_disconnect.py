"""Many clients leaving at once against a real daemon (issue 17, pauses): their closes (wills,
sessions, ``client.disconnected``, ``$SYS`` presence, the log line) are worked off a slice per
event-loop turn, so another client keeps being served in between, and every will and every
``$SYS`` disconnect event still arrives, with the right reason; then sysmon gives the memory they
used back to the OS (glibc's ``malloc_trim``, logged)."""

from __future__ import annotations

import json
import socket
import time

from support import builder as B
from support.mass import Watcher, room_for
from support.process import checked_broker, stopped, wait_log

from mqttd.mqtt.packets import Publish

N = 2_000
NODE = "mqttd@127.0.0.1"
SYS_GONE = f"$SYS/brokers/{NODE}/clients/+/disconnected"
#: PINGRESPs that must reach the watcher between the first and the last departure it sees
#: (all the closes in one turn would give none: the PINGREQ was sent after every close).
MIN_INTERLEAVED = 4


def test_mass_disconnect_is_sliced_and_every_will_and_event_arrives() -> None:
    room_for(N)
    # sysmon checks every 0.2 s: it sees all of them connected before they leave.
    with checked_broker("[sysmon]\ncheck_interval = 0.2\n") as broker:
        watcher = Watcher(broker, ["gone/#", SYS_GONE])
        leavers = []
        try:
            for i in range(N):
                s = socket.create_connection(("127.0.0.1", broker.port), timeout=30)
                s.sendall(B.connect(f"leaver-{i}", level=4, will_topic=f"gone/{i}",
                                    will_payload=b"bye"))
                leavers.append(s)
            for s in leavers:
                assert s.recv(4)[:1] == b"\x20"  # CONNACK
            time.sleep(1.0)  # a few sysmon checks with everyone connected (its peak)
            with stopped(broker.proc):  # every departure, then the PINGREQ, found in one poll
                for i, s in enumerate(leavers):
                    if i % 2 == 0:
                        s.sendall(B.disconnect())  # a normal DISCONNECT: no will
                    s.close()  # odd ones just drop: their wills go out
                watcher.ping()
            wills: set[str] = set()
            reasons: dict[str, str] = {}

            def gone(p: Publish) -> None:
                if p.topic.startswith("gone/"):
                    wills.add(p.topic)
                else:
                    info = json.loads(p.payload)
                    reasons[info["clientid"]] = info["reason"]

            stream = watcher.watch(gone, lambda: len(wills) >= N // 2 and len(reasons) >= N)
        finally:
            for s in leavers:
                s.close()
        assert wills == {f"gone/{i}" for i in range(1, N, 2)}
        assert reasons == {f"leaver-{i}": "normal" if i % 2 == 0 else "closed"
                           for i in range(N)}
        interleaved = Watcher.pings_between(stream)
        print(f"\n{N} departures: {interleaved} PINGRESPs between the first and the last")
        assert interleaved >= MIN_INTERLEAVED, (
            f"only {interleaved} PINGRESPs reached another client while {N} clients' closes "
            "were processed: the loop did not turn between slices")
        # Once the count has settled, sysmon hands the freed memory back to the OS (glibc).
        at = wait_log(broker, f"sysmon: {N} clients left, memory given back to the OS",
                      timeout=30)
        print(broker.log()[at:].splitlines()[0])
        watcher.close()

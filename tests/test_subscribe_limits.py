"""Subscriptions per client against a real daemon (issue 14): the default ``max_subscriptions``
(10,000) and its refusals; a 100,000-filter SUBSCRIBE applied in slices while another client's
pings are answered, with what the client sent after it answered after its SUBACK, in order."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable

from support import builder as B
from support.ctlrun import ctl_json
from support.process import BrokerProcess, checked_broker
from support.raw import RawClient

from mqttd.mqtt.packets import Connack, Pingresp, Publish, Suback, Unsuback


def subscribe_many(packet_id: int, filters: Iterable[str], level: int, qos: int = 1) -> bytes:
    """One SUBSCRIBE with every filter (``builder.subscribe`` concatenates as it goes,
    quadratic at 100,000 filters; same bytes, joined once)."""
    props = b"\x00" if level == 5 else b""
    body = b"".join([B.u16(packet_id), props,
                     *(B.string(f) + B.u8(qos) for f in filters)])
    return B.packet(B.SUBSCRIBE, 2, body)


def connected(broker: object, client_id: str, level: int, *, durable: bool = False,
              present: bool = False) -> RawClient:
    c = RawClient(broker, version=level, timeout=30)  # type: ignore[arg-type]
    if durable:
        c.send(B.connect(client_id, level=5, clean=False,
                         properties=B.props(("session_expiry_interval", 3600))))
    else:
        c.send(B.connect(client_id, level=level))
    ack = c.expect(Connack)
    assert (ack.reason_code, ack.session_present) == (0, present)
    return c


def test_default_max_subscriptions_refuses_past_10000() -> None:
    with checked_broker() as broker:
        before = ctl_json(broker, "broker", "metrics")["metrics"]["packets.subscribe.error"]
        with connected(broker, "many5", 5) as c:
            c.send(subscribe_many(1, (f"dev/{i}" for i in range(10_001)), 5))
            ack = c.expect(Suback, timeout=30)
            assert ack.reason_codes == [1] * 10_000 + [0x97]  # Quota exceeded
            # Replacing one it holds is not a new subscription: still granted.
            c.send(subscribe_many(2, ["dev/7", "dev/new"], 5, qos=0))
            assert c.expect(Suback).reason_codes == [0, 0x97]
        with connected(broker, "many4", 4) as c:
            c.send(subscribe_many(1, (f"dev/{i}" for i in range(10_001)), 4))
            assert c.expect(Suback, timeout=30).reason_codes == [1] * 10_000 + [0x80]
        after = ctl_json(broker, "broker", "metrics")["metrics"]["packets.subscribe.error"]
        assert after - before == 3


class Pinger(threading.Thread):
    """PINGREQ round trips back to back (one every ~2 ms) until stopped; keeps each RTT."""

    def __init__(self, broker: object) -> None:
        super().__init__(daemon=True)
        self.client = connected(broker, "pinger", 4)
        self.rtts: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        with self.client as c:
            for _ in range(20_000):  # bounded: ~40 s at most
                if self.done.is_set():
                    return
                t0 = time.perf_counter()
                c.send(B.pingreq())
                c.expect(Pingresp)
                self.rtts.append(time.perf_counter() - t0)
                time.sleep(0.002)


#: The worst PINGREQ round trip another client may see while a 100,000-filter SUBSCRIBE is
#: applied: unsliced ~380 ms (this test fails so), sliced ~50 ms (what is left: parsing the
#: 1.2 MB packet and building its 100,000 filters in one piece, before any slice).
MAX_PAUSE = 0.1


def test_huge_subscribe_in_slices_while_others_are_served() -> None:
    n = 100_000
    with checked_broker("[mqtt]\nmax_subscriptions = 0\nmax_packet_size = 4194304\n") as broker:
        pinger = Pinger(broker)
        with connected(broker, "huge", 5) as c:
            big = subscribe_many(1, (f"dev/{i}" for i in range(n)), 5)
            pinger.start()
            time.sleep(0.1)  # a few round trips before
            before = len(pinger.rtts)
            # Sent after the SUBSCRIBE, answered only after its SUBACK, in order: a ping,
            # an UNSUBSCRIBE of one of its filters, a PUBLISH to another (it comes back).
            c.send(big, B.pingreq(), B.unsubscribe(2, ["dev/0"], properties=b"\x00"),
                   B.publish("dev/1", b"back", properties=b"\x00"))
            ack = c.expect(Suback, timeout=60)
            c.expect(Pingresp)
            assert c.expect(Unsuback).reason_codes == [0]
            echoed = c.expect(Publish)
            assert (echoed.topic, echoed.payload) == ("dev/1", b"back")
            time.sleep(0.1)  # a few round trips after
            pinger.done.set()
            pinger.join(10)
        assert ack.reason_codes == [1] * n
        during = pinger.rtts[before:]
        assert len(during) > 20
        worst = max(during)
        print(f"\n{n} filters: {len(during)} pings during, worst {worst * 1000:.1f} ms, "
              f"median {sorted(during)[len(during) // 2] * 1000:.2f} ms")
        assert worst < MAX_PAUSE, f"a client waited {worst * 1000:.1f} ms for PINGRESP"


def test_sliced_subscribe_of_a_stored_session_survives_a_kill() -> None:
    """The SUBACK of a sliced SUBSCRIBE waits for the store like any other: once the client
    has it, a SIGKILL loses none of the filters."""
    n = 3_500
    first = BrokerProcess()
    try:
        with connected(first, "durable", 5, durable=True) as c:
            c.send(subscribe_many(1, (f"dev/{i}" for i in range(n)), 5), B.pingreq())
            assert c.expect(Suback).reason_codes == [1] * n
            c.expect(Pingresp)
        first.stop(signal.SIGKILL)
        with BrokerProcess(extra_args=["--data-dir", str(first.data_dir)]) as second:
            assert "store: restored" in second.log(), second.log()
            with connected(second, "durable", 5, durable=True, present=True) as c, \
                    connected(second, "pub", 5) as pub:
                pub.send(B.publish(f"dev/{n - 1}", b"last", properties=b"\x00"))
                got = c.expect(Publish)
                assert (got.topic, got.payload) == (f"dev/{n - 1}", b"last")
            assert second.stop() == 0
    finally:
        first.cleanup()

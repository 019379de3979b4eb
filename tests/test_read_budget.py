"""While flow control holds some publisher, a read of more than PACKET_BUDGET packets
(mqttd/transport/connection.py) is worked off that many per loop turn, its socket paused
meanwhile. Against a real daemon in which a publisher is held for the whole module (its
subscriber never acknowledges): every packet of such a read is still handled once, in
order, with what came after it; a DISCONNECT at its end still counts (no will); flow
control still holds and releases a flooding publisher; and other clients are served
meanwhile.

Raw-socket clients (tests/support/raw.py); every assertion is about what arrived and in
which order, never about time.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from support import WAIT, builder as B, uid
from support.ctlrun import ctl_json
from support.process import BrokerProcess, checked_broker
from support.raw import RawClient

from mqttd.mqtt.packets import Pingresp, Puback, Publish, Suback
from mqttd.transport.connection import PACKET_BUDGET, SLICE_CARRY

pytest_plugins = ["support.fixtures"]

#: Many budgets' worth in one write (and so in a few reads of the broker's).
COUNT = 20 * PACKET_BUDGET + 7


WINDOW = 10  # max_inflight
LIMIT = 50  # mqueue_flow_limit
CONFIG = (f"[mqtt]\nmax_inflight = {WINDOW}\nmax_mqueue_len = 0\nmqueue_flow_limit = {LIMIT}\n"
          'mqueue_backpressure_timeout = "1h"\n')


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    """A daemon in which one publisher is held by flow control throughout: its subscriber
    takes its window and never acknowledges, the queue reaches the limit, and the publisher
    of the next message waits (its PUBACK held) for as long as the module runs."""
    with checked_broker(CONFIG) as b:
        sub = _subscriber(b, "hold/#", 1)
        pub = RawClient(b)
        try:
            pub.connect(uid("held"))
            n = WINDOW + LIMIT + 1
            pub.send(b"".join(B.publish("hold/x", b"h", qos=1, packet_id=i + 1)
                              for i in range(n)))
            _take(pub, n - 1, Puback)  # the last one's is held
            deadline = time.monotonic() + 4 * WAIT
            while ctl_json(b, "broker", "metrics")["metrics"]["publishers.held"] < 1:
                assert time.monotonic() < deadline, "the publisher was not held"
                time.sleep(0.05)
            yield b
        finally:
            pub.close()
            sub.close()


def _subscriber(broker: BrokerProcess, topic_filter: str, qos: int) -> RawClient:
    sub = RawClient(broker)
    sub.connect(uid("sub"))
    sub.send(B.subscribe(1, [(topic_filter, qos)]))
    sub.expect(Suback)
    return sub


def _take(client: RawClient, n: int, cls: type) -> list[object]:
    """The next ``n`` packets ``client`` gets (each of type ``cls``), bounded in time."""
    got: list[object] = []
    deadline = time.monotonic() + 10 * WAIT
    while len(got) < n:
        assert time.monotonic() < deadline, f"{len(got)} of {n} arrived"
        p = client.recv()
        assert isinstance(p, cls), p
        got.append(p)
    return got


@pytest.mark.parametrize("qos", [0, 1])
def test_a_flood_in_one_write_is_handled_whole_and_in_order(broker: BrokerProcess,
                                                            qos: int) -> None:
    """COUNT PUBLISHes and a PINGREQ in one write: the subscriber gets every message once,
    in order; at QoS 1 the publisher gets every PUBACK, in order, then its PINGRESP (the
    packets after the budget's are handled in later turns, before anything read after)."""
    topic = uid("budget")
    sub = _subscriber(broker, topic, 0)  # (delivered at QoS 0: no window to refill here)
    try:
        with RawClient(broker) as pub:
            pub.connect(uid("pub"))
            pub.send(b"".join(B.publish(topic, b"%d" % i, qos=qos,
                                        packet_id=i + 1 if qos else None)
                              for i in range(COUNT)) + B.pingreq())
            if qos:
                acks = _take(pub, COUNT, Puback)
                assert [a.packet_id for a in acks] == [i + 1 for i in range(COUNT)]
            pub.expect(Pingresp)
            got = _take(sub, COUNT, Publish)
            assert [p.payload for p in got] == [b"%d" % i for i in range(COUNT)]
    finally:
        sub.close()


def _data_segments_in(client: RawClient) -> int:
    """Segments with data the kernel counted coming in on ``client``'s socket (TCP_INFO's
    tcpi_data_segs_in, offset 152 in linux/tcp.h's struct tcp_info): on loopback with Nagle
    off, one per write of the broker's, or fewer (autocorking may merge writes)."""
    info = client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(info) >= 156, "this kernel's tcp_info has no tcpi_data_segs_in"
    count: int = struct.unpack_from("I", info, 152)[0]
    return count


def test_a_flood_s_pubacks_are_carried_across_its_slices(broker: BrokerProcess) -> None:
    """COUNT QoS 1 PUBLISHes and a PINGREQ in one write, worked off PACKET_BUDGET a turn:
    every PUBACK arrives once and in order, then the PINGRESP, in fewer writes than the
    flood has slices (each slice's PUBACKs wait for the next slice's, up to SLICE_CARRY,
    not one write per slice: every write wakes the client)."""
    topic = uid("budget-carry")
    sub = _subscriber(broker, topic, 0)
    slices = -(-COUNT // PACKET_BUDGET)
    try:
        with RawClient(broker) as pub:
            pub.connect(uid("pub"))
            before = _data_segments_in(pub)
            pub.send(b"".join(B.publish(topic, b"%d" % i, qos=1, packet_id=i + 1)
                              for i in range(COUNT)) + B.pingreq())
            acks = _take(pub, COUNT, Puback)
            assert [a.packet_id for a in acks] == [i + 1 for i in range(COUNT)]
            pub.expect(Pingresp)
            writes = _data_segments_in(pub) - before
            # One write per SLICE_CARRY packets and one at the flood's end, per read of the
            # broker's (the flood may come in a few): well under one per slice.
            assert 1 <= writes <= slices // 2, (writes, slices, SLICE_CARRY)
            got = _take(sub, COUNT, Publish)
            assert [p.payload for p in got] == [b"%d" % i for i in range(COUNT)]
    finally:
        sub.close()


def test_a_disconnect_after_a_flood_still_counts(broker: BrokerProcess) -> None:
    """A client with a will sends COUNT PUBLISHes and DISCONNECT in one write, then
    closes: every message arrives, and the will does not (the DISCONNECT was honoured,
    though it came budgets after the read began)."""
    topic = uid("budget-end")
    sub = _subscriber(broker, topic + "/#", 0)
    try:
        pub = RawClient(broker)
        pub.connect(uid("leaver"), will_topic=topic + "/will", will_payload=b"gone")
        pub.send(b"".join(B.publish(topic + "/m", b"%d" % i) for i in range(COUNT))
                 + B.disconnect())
        pub.close()
        got = _take(sub, COUNT, Publish)
        assert [p.payload for p in got] == [b"%d" % i for i in range(COUNT)]
        # A marker published after the leaver is gone: nothing (no will) comes before it.
        with RawClient(broker) as other:
            other.connect(uid("marker"))
            other.send(B.publish(topic + "/marker", b"end"))
            other.send(B.pingreq())
            other.expect(Pingresp)
        after = _take(sub, 1, Publish)
        assert after[0].topic == topic + "/marker", after  # type: ignore[attr-defined]
    finally:
        sub.close()


def test_other_clients_are_answered_while_a_flood_is_worked_off(broker: BrokerProcess
                                                                  ) -> None:
    """While one client's flood (many budgets) is handled, another client's PINGREQs are
    answered, and the flood still arrives whole and in order."""
    topic = uid("budget-busy")
    sub = _subscriber(broker, topic, 0)
    try:
        with RawClient(broker) as pub, RawClient(broker) as other:
            pub.connect(uid("flooder"))
            other.connect(uid("other"))
            flood = b"".join(B.publish(topic, b"%d" % i) for i in range(COUNT))
            for _ in range(5):
                pub.send(flood)
                other.send(B.pingreq())
                other.expect(Pingresp)
            got = _take(sub, 5 * COUNT, Publish)
            assert [p.payload for p in got] == [b"%d" % i for i in range(COUNT)] * 5
    finally:
        sub.close()


def test_flow_control_still_holds_and_releases_a_flooding_publisher(broker: BrokerProcess
                                                                     ) -> None:
    """Flow control (window 10, limit 50) with one publisher's 2,000 QoS 1 messages in one
    write: the subscriber, acknowledging as it goes, gets all of them once and in order, the
    publisher every PUBACK; it was held (at most window + limit + 1 PUBACKs ahead of the
    messages the subscriber got)."""
    total = 2000
    topic = uid("budget-flow")
    sub = _subscriber(broker, topic, 1)
    pub = RawClient(broker)
    try:
        pub.connect(uid("pub"))
        pub.send(b"".join(B.publish(topic, b"%d" % i, qos=1, packet_id=i + 1)
                          for i in range(total)))
        received: list[bytes] = []
        pubacks = 0
        ahead = 0
        deadline = time.monotonic() + 20 * WAIT
        while len(received) < total or pubacks < total:
            assert time.monotonic() < deadline, (len(received), pubacks)
            if sub._fill(0.01) or sub.packets:
                batch = []
                while sub.packets:
                    p = sub._next()
                    assert isinstance(p, Publish), p
                    received.append(p.payload)
                    batch.append(p.packet_id)
                if batch:
                    sub.send(b"".join(B.puback(pid) for pid in batch))
            if pub._fill(0.01) or pub.packets:
                while pub.packets:
                    p = pub._next()
                    assert isinstance(p, Puback), p
                    pubacks += 1
            ahead = max(ahead, pubacks - len(received))
        assert received == [b"%d" % i for i in range(total)]
        assert ahead <= WINDOW + LIMIT + 1, ahead
    finally:
        sub.close()
        pub.close()

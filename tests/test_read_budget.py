"""A read of more than PACKET_BUDGET packets (mqttd/transport/connection.py) is worked off
that many per loop turn, its socket paused meanwhile, against a real daemon: every packet of
the read is still handled once, in order, with what came after it; a DISCONNECT at its end
still counts (no will); flow control still holds and releases such a publisher; and the
other clients are served meanwhile.

Raw-socket clients (tests/support/raw.py); every assertion is about what arrived and in
which order, never about time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support import WAIT, builder as B, uid
from support.process import BrokerProcess, checked_broker
from support.raw import RawClient

from mqttd.mqtt.packets import Pingresp, Puback, Publish, Suback
from mqttd.transport.connection import PACKET_BUDGET

pytest_plugins = ["support.fixtures"]

#: Many budgets' worth in one write (and so in a few reads of the broker's).
COUNT = 20 * PACKET_BUDGET + 7


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    # A window and queue that take the whole flood: no flow control in these tests.
    with checked_broker("[mqtt]\nmax_inflight = 65535\nmax_mqueue_len = 0\n"
                        "mqueue_flow_limit = 0\n") as b:
        yield b


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
    sub = _subscriber(broker, topic, qos)
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
            if qos:
                sub.send(b"".join(B.puback(p.packet_id) for p in got))
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


def test_flow_control_still_holds_and_releases_a_flooding_publisher() -> None:
    """With flow control (window 10, limit 50), one publisher's 2,000 QoS 1 messages in
    one write: the subscriber, acknowledging as it goes, gets all of them once and in order,
    the publisher every PUBACK; it was held (at most window + limit + 1 PUBACKs ahead of the
    subscriber's)."""
    config = ("[mqtt]\nmax_inflight = 10\nmax_mqueue_len = 1000000\nmqueue_flow_limit = 50\n"
              'mqueue_backpressure_timeout = "1h"\n')
    total = 2000
    with checked_broker(config) as b:
        topic = uid("budget-flow")
        sub = _subscriber(b, topic, 1)
        pub = RawClient(b)
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
            assert ahead <= 10 + 50 + 1, ahead
        finally:
            sub.close()
            pub.close()

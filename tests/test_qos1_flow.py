"""QoS 1 flow control (zone key ``mqueue_flow_limit``) against a real daemon: publishers that
flood a subscriber whose inflight window is full wait (their PUBACKs held, their sockets not
read) while its queue is at the limit, so they go at the pace it acknowledges; the loop's
other clients are served meanwhile; a wait that times out releases the publishers without
dropping anything; every acknowledged message arrives once, in order.

Raw-socket clients (tests/support/raw.py) on one thread: each socket is read only when it is
readable (select), and every assertion is about counts and their interleaving (PUBACKs a
publisher holds against PUBACKs the subscriber has sent), never about time.
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterator

import pytest
from support import WAIT, builder as B, uid
from support.process import BrokerProcess, checked_broker
from support.raw import RawClient

from mqttd.mqtt.packets import Pingresp, Puback, Publish, Suback

pytest_plugins = ["support.fixtures"]

PUBLISHERS = 4
PER_PUBLISHER = 600
WINDOW = 10  # max_inflight
LIMIT = 50  # mqueue_flow_limit

CONFIG = ("[mqtt]\n"
          f"max_inflight = {WINDOW}\n"
          "max_mqueue_len = 1000000\n"
          f"mqueue_flow_limit = {LIMIT}\n"
          'mqueue_backpressure_timeout = "{timeout}"\n')


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    """No wait times out within a test: publishers wait for as long as the subscriber does."""
    with checked_broker(CONFIG.format(timeout="1h")) as b:
        yield b


class Flood:
    """PUBLISHERS raw publishers of PER_PUBLISHER QoS 1 messages each (sent at once, without
    waiting for any PUBACK) to one raw subscriber of ``<prefix>/#``."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.prefix = uid("flow")
        self.sub = RawClient(broker)
        self.sub.connect(uid("sub"))
        self.sub.send(B.subscribe(1, [(self.prefix + "/#", 1)]))
        self.sub.expect(Suback)
        self.pubs = [RawClient(broker) for _ in range(PUBLISHERS)]
        for i, pub in enumerate(self.pubs):
            pub.connect(uid(f"pub{i}"))
        self.pubacks = [0] * PUBLISHERS  # PUBACKs each publisher got
        self.received: list[list[int]] = [[] for _ in range(PUBLISHERS)]  # seq per publisher
        self.unacked: list[int] = []  # packet ids the subscriber got and has not acked
        self.sub_acked = 0  # PUBACKs the subscriber sent
        #: Most PUBACKs the publishers held at once beyond what the subscriber acknowledged.
        self.ahead = 0

    def start(self) -> None:
        for i, pub in enumerate(self.pubs):
            topic = f"{self.prefix}/{i}"
            pub.send(b"".join(B.publish(topic, b"%d:%d" % (i, seq), qos=1, packet_id=seq + 1)
                              for seq in range(PER_PUBLISHER)))

    def close(self) -> None:
        for c in [self.sub, *self.pubs]:
            c.close()

    @property
    def total(self) -> int:
        return PUBLISHERS * PER_PUBLISHER

    def pump(self, ack: bool, timeout: float) -> bool:
        """Read what is readable within ``timeout``: count the publishers' PUBACKs and take
        the subscriber's messages (acknowledging them if ``ack``). False if nothing came."""
        socks = {c.sock: c for c in [self.sub, *self.pubs]}
        ready, _, _ = select.select(list(socks), [], [], timeout)
        for sock in ready:
            client = socks[sock]
            assert client._fill(0), "a readable socket gave nothing"
            assert not client.closed, "the broker closed a connection"
            while client.packets:
                p = client._next()
                if client is self.sub:
                    assert isinstance(p, Publish), p
                    i, seq = (int(x) for x in p.payload.split(b":"))
                    self.received[i].append(seq)
                    self.unacked.append(p.packet_id)
                else:
                    assert isinstance(p, Puback) and p.reason_code == 0, p
                    self.pubacks[self.pubs.index(client)] += 1
        if ack and self.unacked:
            self.sub.send(b"".join(B.puback(pid) for pid in self.unacked))
            self.sub_acked += len(self.unacked)
            self.unacked.clear()
        self.ahead = max(self.ahead, sum(self.pubacks) - self.sub_acked)
        return bool(ready)

    def finish(self) -> None:
        """Acknowledge everything until every message arrived and every PUBACK came (bounded)."""
        deadline = time.monotonic() + 10 * WAIT
        while sum(map(len, self.received)) < self.total or sum(self.pubacks) < self.total:
            assert time.monotonic() < deadline, (
                f"stalled: {sum(map(len, self.received))} of {self.total} delivered, "
                f"{sum(self.pubacks)} PUBACKs")
            self.pump(True, WAIT)

    def assert_complete(self) -> None:
        """Each publisher's messages arrived once each, in order; each was acknowledged."""
        for i in range(PUBLISHERS):
            assert self.received[i] == list(range(PER_PUBLISHER)), f"publisher {i}"
            assert self.pubacks[i] == PER_PUBLISHER


def test_publishers_go_at_the_subscribers_pace(broker: BrokerProcess) -> None:
    """Four publishers flood 2,400 messages at once; the subscriber (window 10) acknowledges
    what it gets as it gets it. At every moment the publishers hold at most window + limit
    + one waiting message per publisher more PUBACKs than the subscriber has sent (without
    flow control they would have all 2,400 while it is still at its first window)."""
    flood = Flood(broker)
    try:
        flood.start()
        flood.finish()
        flood.assert_complete()
        assert flood.ahead <= WINDOW + LIMIT + PUBLISHERS, flood.ahead
    finally:
        flood.close()


def test_other_clients_are_served_while_publishers_wait(broker: BrokerProcess) -> None:
    """The subscriber takes its window and acknowledges nothing: the publishers wait with
    most of their messages unacknowledged, while a new client connects and gets its
    PINGRESP; once the subscriber acknowledges, every message arrives, none lost."""
    flood = Flood(broker)
    try:
        flood.start()
        # The subscriber's window fills (it does not acknowledge).
        deadline = time.monotonic() + 4 * WAIT
        while sum(map(len, flood.received)) < WINDOW:
            assert time.monotonic() < deadline, "the subscriber's window did not fill"
            flood.pump(False, WAIT)
        with RawClient(broker) as other:
            other.connect(uid("other"))
            for _ in range(3):
                other.send(B.pingreq())
                other.expect(Pingresp)
        while flood.pump(False, 0):  # whatever the broker had sent by now
            pass
        assert sum(map(len, flood.received)) == WINDOW  # nothing past the window
        # The flood is still held: at most limit + one per publisher acknowledged beyond it.
        assert sum(flood.pubacks) <= WINDOW + LIMIT + PUBLISHERS < flood.total
        flood.finish()
        flood.assert_complete()
    finally:
        flood.close()


def test_a_wait_that_times_out_releases_without_dropping() -> None:
    """A subscriber that does not acknowledge holds the publishers only until
    mqueue_backpressure_timeout: then every PUBACK comes (the queue past the limit; flow
    control drops nothing), and every message still arrives once the subscriber acks."""
    with checked_broker(CONFIG.format(timeout="200ms")) as b:
        flood = Flood(b)
        try:
            flood.start()
            deadline = time.monotonic() + 10 * WAIT
            while sum(flood.pubacks) < flood.total:
                assert time.monotonic() < deadline, f"{sum(flood.pubacks)} PUBACKs"
                flood.pump(False, WAIT)
            assert flood.sub_acked == 0
            assert sum(map(len, flood.received)) == WINDOW
            flood.finish()
            flood.assert_complete()
        finally:
            flood.close()


def test_two_clients_flooding_each_other_are_not_held_by_each_other(broker: BrokerProcess
                                                                     ) -> None:
    """Two clients each subscribed to what the other publishes, both flooding at once: a
    client with deliveries of its own queued is not held for flow control (reading it is
    what brings their PUBACKs), so neither waits for the other (which would hold both until
    the timeout, an hour here) and every message arrives once, in order."""
    prefix = uid("mutual")
    clients = [RawClient(broker) for _ in range(2)]
    try:
        for i, c in enumerate(clients):
            c.connect(uid(f"peer{i}"))
            c.send(B.subscribe(1, [(f"{prefix}/to{i}", 1)]))
            c.expect(Suback)
        for i, c in enumerate(clients):
            c.send(b"".join(B.publish(f"{prefix}/to{1 - i}", b"%d" % seq, qos=1,
                                      packet_id=seq + 1) for seq in range(PER_PUBLISHER)))
        received: list[list[int]] = [[], []]
        pubacks = [0, 0]
        socks = {c.sock: i for i, c in enumerate(clients)}
        deadline = time.monotonic() + 10 * WAIT
        while min(map(len, received)) < PER_PUBLISHER or min(pubacks) < PER_PUBLISHER:
            assert time.monotonic() < deadline, (
                f"stalled: received {list(map(len, received))}, PUBACKs {pubacks}")
            ready, _, _ = select.select(list(socks), [], [], WAIT)
            for sock in ready:
                i = socks[sock]
                c = clients[i]
                assert c._fill(0) and not c.closed, "the broker closed a connection"
                acks = []
                while c.packets:
                    p = c._next()
                    if isinstance(p, Publish):
                        received[i].append(int(p.payload))
                        acks.append(B.puback(p.packet_id))
                    else:
                        assert isinstance(p, Puback) and p.reason_code == 0, p
                        pubacks[i] += 1
                if acks:
                    c.send(b"".join(acks))
        assert received == [list(range(PER_PUBLISHER))] * 2
        assert pubacks == [PER_PUBLISHER] * 2
    finally:
        for c in clients:
            c.close()

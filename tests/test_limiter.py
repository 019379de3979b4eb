"""Rate limits (mqttd.transport.limiter): the token bucket's arithmetic, and real clients held to a
connection's inbound limits and a listener's accept limits."""

from __future__ import annotations

from typing import Any

import pytest

from mqttd.config import Zone
from mqttd.transport.limiter import ConnLimiter, TokenBucket


def test_bucket_burst_then_debt() -> None:
    b = TokenBucket(10, now=0.0)  # 10/s, burst 10
    assert [b.consume(1, 0.0) for _ in range(10)] == [0.0] * 10
    assert b.consume(1, 0.0) == pytest.approx(0.1)  # one in debt: 0.1 s to pay back
    assert b.consume(4, 0.0) == pytest.approx(0.5)
    assert b.consume(0, 0.5) == 0.0  # paid back at t=0.5
    assert b.consume(20, 0.5) == pytest.approx(2.0)  # bigger than the burst: debt, not refusal


def test_bucket_refill_is_capped_at_burst() -> None:
    b = TokenBucket(100, burst=5, now=0.0)
    assert b.consume(5, 0.0) == 0.0
    b.consume(0, 1000.0)
    assert b.tokens == 5
    assert b.consume(6, 1000.0) == pytest.approx(0.01)


def test_try_take_never_goes_into_debt() -> None:
    b = TokenBucket(2, now=0.0)
    assert b.try_take(1, 0.0) and b.try_take(1, 0.0)
    assert not b.try_take(1, 0.0)
    assert b.tokens == 0
    assert not b.try_take(1, 0.49)
    assert b.try_take(1, 0.5)


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValueError):
        TokenBucket(1, burst=0)


def test_conn_limiter_takes_the_longer_pause() -> None:
    assert ConnLimiter.for_zone(Zone()) is None  # zero cost when unset
    lim = ConnLimiter.for_zone(Zone(rate_limit_messages_in=10, rate_limit_bytes_in=1000),
                               now=0.0)
    assert lim is not None
    assert lim.check(10, 500, 0.0) == 0.0
    assert lim.check(1, 0, 0.0) == pytest.approx(0.1)  # messages over, bytes fine
    assert lim.check(0, 1000, 0.0) == pytest.approx(0.5)  # bytes now 500 in debt
    only_bytes = ConnLimiter(0, 100, now=0.0)
    assert only_bytes.messages is None
    assert only_bytes.check(1000, 100, 0.0) == 0.0


# --- listeners: max_connections and max_conn_rate ---------------------------------------------

def _two_listeners(extra: str) -> str:
    """A ``limited`` listener under test, and a ``default`` one for the $SYS reader."""
    return ('[node]\nsys_interval = 0.2\n'
            '[listeners.default]\nbind = "127.0.0.1"\nport = 0\n'
            f'[listeners.limited]\nbind = "127.0.0.1"\nport = 0\n{extra}\n')


def _refused(port: int, level: int = 4, code: int = 0x97) -> bool:
    """Open a connection and send CONNECT: True if the broker refused it over a listener
    limit, which is answered, not reset: CONNACK 0x03 (server unavailable) for 3.1.1, the
    limit's ``code`` for MQTT 5 (0x97 quota exceeded, 0x9F connection rate exceeded), then
    the socket closed; False if it was accepted."""
    from support import builder as B
    from support.raw import CLOSED, OPEN, RawClient

    with RawClient(port, level, timeout=5) as c:
        assert c.try_send(B.connect("probe", level=level)), "reset instead of a CONNACK"
        got: list[Any] = []
        first = c.read(until=lambda packet: not got.append(packet))  # the first packet
        assert first.end == OPEN, "no CONNACK: " + first.describe()
        connack = got[0]
        if connack.reason_code == 0:
            return False
        assert connack.reason_code == (code if level == 5 else 0x03), connack
        rest = c.read()  # nothing more, then the close
        assert rest.end == CLOSED and not rest.objects, rest.describe()
        return True


def test_max_connections_refuses_in_the_accept_path() -> None:
    from support import uid
    from support.clients import Client
    from support.process import BrokerProcess
    from support.sysreader import SysMetrics

    b = BrokerProcess(_two_listeners("max_connections = 2"))
    made: list[Client] = []
    reader = None
    try:
        port = b.ports["limited"]
        reader = SysMetrics(b)
        for _ in range(2):
            c = Client(b, uid("mc-"), port=port)
            c.connect()
            made.append(c)
        assert _refused(port) and _refused(port, level=5)
        refused = 2
        made[0].disconnect()
        # the place is free once the broker has seen the socket close: retry until then
        while _refused(port):
            refused += 1
            assert refused < 50, "the closed connection's place never came back"
        # that probe's socket closed in turn: one more probe may need a retry as well
        c = Client(b, uid("mc-"), port=port)
        while True:
            try:
                c.connect()
                break
            except AssertionError:
                c.close()
                refused += 1
                assert refused < 50
                c = Client(b, uid("mc-"), port=port)
        made.append(c)
        assert _refused(port)
        refused += 1
        reader.wait_for({"connections.refused.max_connections": refused,
                         "connections.refused.max_conn_rate": 0})
        assert "refusing connections over max_connections (2)" in b.log()
    finally:
        for c in made:
            c.close()
        if reader is not None:
            reader.close()
        assert b.stop() == 0


def _wait(predicate: Any, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_max_conn_rate_refuses_over_the_rate() -> None:
    from support.process import BrokerProcess
    from support.sysreader import SysMetrics

    b = BrokerProcess(_two_listeners("max_conn_rate = 4"))
    reader = None
    try:
        port = b.ports["limited"]
        reader = SysMetrics(b)
        results = [_refused(port, level=5, code=0x9F) for _ in range(7)]  # far faster than 4/s
        assert results[:4] == [False] * 4 and results[4:].count(True) >= 2, results
        refused = results.count(True)
        import time

        time.sleep(0.6)  # two tokens back
        assert not _refused(port)
        reader.wait_for({"connections.refused.max_conn_rate": refused,
                         "connections.refused.max_connections": 0})
    finally:
        if reader is not None:
            reader.close()
        assert b.stop() == 0


# --- a real client's inbound rate ---------------------------------------------------------------

#: asyncio and uvloop read at most 256 KiB per data_received.
MAX_READ = 256 * 1024


@pytest.mark.parametrize("kind", ["messages", "bytes"])
def test_inbound_rate_is_held_to_the_limit(kind: str) -> None:
    """A publisher sending far faster than its zone allows: everything arrives, nothing is
    dropped, but over the run the broker took no more than the rate (plus the burst and the
    one read it had already taken when the budget ran out)."""
    import threading
    import time

    from support import builder as B
    from support.process import BrokerProcess
    from support.raw import RawClient
    from support.sysreader import SysMetrics

    from mqttd.mqtt.packets import Publish, Suback

    n, payload = 600, b"x" * 1000
    frame = B.publish("rl/t", payload)
    rate = 200 if kind == "messages" else 200 * len(frame)  # per second, 1 s of burst
    key = "rate_limit_messages_in" if kind == "messages" else "rate_limit_bytes_in"
    b = BrokerProcess('[node]\nsys_interval = 0.2\n'
                      f'[zones.limited]\n{key} = {rate}\n'
                      '[listeners.default]\nbind = "127.0.0.1"\nport = 0\n'
                      '[listeners.limited]\nbind = "127.0.0.1"\nport = 0\nzone = "limited"\n')
    reader = None
    try:
        reader = SysMetrics(b)
        sub = RawClient(b, 4)
        sub.connect("rl-sub")
        sub.send(B.subscribe(1, [("rl/t", 0)]))
        sub.expect(Suback)
        pub = RawClient(b, 4, port=b.ports["limited"])
        pub.connect("rl-pub")
        sender = threading.Thread(target=pub.send, args=(frame * n,), daemon=True)
        sender.start()
        first = sub.expect(Publish, timeout=10)
        t0 = time.monotonic()
        for _ in range(n - 1):
            sub.expect(Publish, timeout=10)
        elapsed = time.monotonic() - t0
        sender.join(10)
        per_msg = 1 if kind == "messages" else len(frame)
        in_first_read = MAX_READ // len(frame)
        floor = (n - rate / per_msg - in_first_read) / (rate / per_msg)
        assert first.payload == payload
        assert elapsed >= floor * 0.9, (elapsed, floor)
        assert elapsed < (n * per_msg) / rate + 3, elapsed  # and not stalled either
        got = reader.next_round()
        assert got["connections.rate_limited"] >= 1
        assert got["delivery.dropped"] == 0 and got["messages.qos0.received"] >= n
        pub.close()
        sub.close()
    finally:
        if reader is not None:
            reader.close()
        assert b.stop() == 0


def test_unlimited_zone_is_not_slowed() -> None:
    import threading
    import time

    from support import builder as B
    from support.process import BrokerProcess
    from support.raw import RawClient

    from mqttd.mqtt.packets import Publish, Suback

    n, frame = 600, B.publish("fast/t", b"x" * 1000)
    b = BrokerProcess()
    try:
        sub = RawClient(b, 4)
        sub.connect("f-sub")
        sub.send(B.subscribe(1, [("fast/t", 0)]))
        sub.expect(Suback)
        pub = RawClient(b, 4)
        pub.connect("f-pub")
        threading.Thread(target=pub.send, args=(frame * n,), daemon=True).start()
        sub.expect(Publish)
        t0 = time.monotonic()
        for _ in range(n - 1):
            sub.expect(Publish)
        assert time.monotonic() - t0 < 0.5
        assert "rate" not in b.log()
        pub.close()
        sub.close()
    finally:
        assert b.stop() == 0

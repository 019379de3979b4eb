"""Queue overflow policies (zone key ``mqueue_overflow``) under a real burst: four paho
publishers send QoS 1 messages without waiting for their PUBACKs at one subscriber whose
session cannot take them all (offline, or connected and not reading), against a real daemon.

``drop_oldest`` keeps the newest messages, ``drop_newest`` the oldest, each drop counted in
``delivery.dropped.queue_full``; ``backpressure`` holds the publishers' PUBACKs (and stops
reading from them) until there is room, so every acknowledged message reaches the
subscriber, and after ``mqueue_backpressure_timeout`` its fallback drop applies. The last
tests take the real Session on its own for the edges a burst does not reach reliably (QoS 0
under backpressure, the hard cap).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import WAIT
from support.clients import Client
from support.process import BrokerProcess, checked_broker, run_mqttd

from mqttd.core.message import Message
from mqttd.core.session import OVERFULL, Delivery, Session

pytest_plugins = ["support.fixtures"]

PUBLISHERS = 4
TOPIC = "burst/t"


def config(policy: str, queue: int, **more: str) -> str:
    lines = [f'max_mqueue_len = {queue}', f'mqueue_overflow = "{policy}"',
             *(f'{k} = "{v}"' for k, v in more.items())]
    return "[mqtt]\n" + "\n".join(lines) + "\n"


def ctl_json(b: BrokerProcess, *args: str) -> Any:
    r = run_mqttd("ctl", "--data-dir", str(b.data_dir), "--json", *args, timeout=30)
    assert r.returncode == 0, r
    return json.loads(r.stdout)


def queue_full_drops(b: BrokerProcess) -> int:
    return int(ctl_json(b, "broker", "metrics")["metrics"]["delivery.dropped.queue_full"])


def mqueue_len(b: BrokerProcess, client_id: str) -> int:
    return int(ctl_json(b, "sessions", "show", client_id)["mqueue_len"])


def wait_for(what: str, predicate: Any, timeout: float = 4 * WAIT) -> None:
    """Poll the broker (ctl) until ``predicate()``; bounded."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def made() -> Iterator[list[Client]]:
    clients: list[Client] = []
    yield clients
    for c in clients:
        c.close()


def client(b: BrokerProcess, made: list[Client], client_id: str, **kw: Any) -> Client:
    c = Client(b, client_id, **kw)
    made.append(c)
    c.connect()
    return c


class Burst:
    """Each publisher sends ``count`` QoS 1 messages ("<publisher>:<n>") at once, without
    waiting for any PUBACK (paho's inflight window opened wide)."""

    def __init__(self, b: BrokerProcess, made: list[Client], count: int, qos: int = 1,
                 **kw: Any) -> None:
        self.pubs = []
        self.mids: list[dict[int, str]] = []
        for i in range(PUBLISHERS):
            p = Client(b, f"pub-{i}", **kw)
            p.c.max_inflight_messages_set(count)
            made.append(p)
            p.connect()
            self.pubs.append(p)
        for i, p in enumerate(self.pubs):
            mids = {}
            for n in range(count):
                info = p.c.publish(TOPIC, f"{i}:{n}", qos)
                mids[info.mid] = f"{i}:{n}"
            self.mids.append(mids)

    def acked(self) -> set[str]:
        """Payloads whose PUBACK each publisher has received so far."""
        out: set[str] = set()
        for p, mids in zip(self.pubs, self.mids, strict=True):
            with p._cond:
                out.update(mids[m] for m in list(p._pubacks) if m in mids)
        return out

    def wait_all_acked(self, timeout: float) -> None:
        for p, mids in zip(self.pubs, self.mids, strict=True):
            p._wait(lambda p=p, mids=mids: all(m in p._pubacks for m in mids),
                    "every PUBACK", timeout)

    def connected(self) -> bool:
        return all(p.disconnected is None for p in self.pubs)


def offline_subscriber(b: BrokerProcess, made: list[Client], qos: int = 1) -> None:
    """A durable session (3.1.1, clean session 0) subscribed at QoS 1 (or 2), then offline."""
    sub = client(b, made, "slow", clean=False)
    assert sub.subscribe(TOPIC, qos) == [qos]
    sub.disconnect()


def drain(b: BrokerProcess, made: list[Client], expected: int) -> list[str]:
    """The subscriber comes back and takes every queued message (paho acknowledges each)."""
    sub = client(b, made, "slow", clean=False)
    assert sub.session_present
    got = [m.payload.decode() for m in sub.expect_messages(expected)]
    assert sub.publish(TOPIC, "end", 1) == 0  # a sentinel: nothing else was queued
    assert sub.expect_message().payload == b"end"
    return got


def per_publisher(payloads: list[str]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {i: [] for i in range(PUBLISHERS)}
    for p in payloads:
        i, n = p.split(":")
        out[int(i)].append(int(n))
    return out


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_drop_policies(policy: str, made: list[Client]) -> None:
    queue, count = 100, 250
    with checked_broker(config(policy, queue)) as b:
        offline_subscriber(b, made)
        before = queue_full_drops(b)
        burst = Burst(b, made, count)
        burst.wait_all_acked(4 * WAIT)  # every message acknowledged at once: no waiting
        assert burst.connected()
        dropped = PUBLISHERS * count - queue
        wait_for("the drops counted", lambda: queue_full_drops(b) - before == dropped)
        got = drain(b, made, queue)
        assert len(set(got)) == queue
        for i, ns in per_publisher(got).items():
            # Each publisher's messages reach the queue in order: drop_oldest keeps the
            # newest (a tail of each publisher's run), drop_newest the oldest (a head).
            if policy == "drop_oldest":
                assert ns == list(range(count - len(ns), count)), (i, ns)
            else:
                assert ns == list(range(len(ns))), (i, ns)


def test_backpressure_loses_no_acknowledged_message(made: list[Client]) -> None:
    queue, count = 100, 250
    # A timeout longer than the test: only room ends the wait here.
    with checked_broker(config("backpressure", queue, mqueue_backpressure_timeout="10m")) as b:
        offline_subscriber(b, made)
        before = queue_full_drops(b)
        burst = Burst(b, made, count)
        # Each publisher stops at its first message past the limit: the queue holds the
        # limit plus one message per publisher, and no more is acknowledged than queued.
        wait_for("every publisher waiting", lambda: mqueue_len(b, "slow") == queue + PUBLISHERS)
        acked = burst.acked()
        assert len(acked) <= queue, len(acked)
        assert burst.connected()  # slowed, not disconnected
        # The subscriber comes back: room again, the publishers go on.
        sub = client(b, made, "slow", clean=False)
        total = PUBLISHERS * count
        got: set[str] = set()
        while len(got) < total:
            got.add(sub.expect_message(WAIT).payload.decode())
        burst.wait_all_acked(WAIT)
        assert burst.connected()
        assert acked <= got
        assert got == {f"{i}:{n}" for i in range(PUBLISHERS) for n in range(count)}
        assert queue_full_drops(b) == before


def test_backpressure_acknowledged_messages_survive_kill_9(made: list[Client]) -> None:
    """What a waiting publisher was told is acknowledged is in the store: SIGKILL the broker
    while publishers wait, start it again on the same data directory, and the subscriber
    gets every message acknowledged before the kill."""
    queue, count = 100, 250
    cfg = config("backpressure", queue, mqueue_backpressure_timeout="10m")
    first = BrokerProcess(cfg)
    second: BrokerProcess | None = None
    try:
        offline_subscriber(first, made)
        burst = Burst(first, made, count)
        wait_for("every publisher waiting",
                 lambda: mqueue_len(first, "slow") == queue + PUBLISHERS)
        acked = burst.acked()
        assert 0 < len(acked) <= queue
        first.stop(signal.SIGKILL)
        for p in burst.pubs:
            p.wait_disconnected()
        second = BrokerProcess(cfg, extra_args=["--data-dir", str(first.data_dir)])
        second.data_dir = first.data_dir
        sub = client(second, made, "slow", clean=False)
        assert sub.session_present
        sentinel = client(second, made, "sentinel")
        assert sentinel.publish(TOPIC, "end", 1) == 0  # queued after what was restored
        got: set[str] = set()
        while True:
            payload = sub.expect_message(WAIT).payload.decode()
            if payload == "end":
                break
            got.add(payload)
        assert acked <= got, sorted(acked - got)[:10]
        assert "Traceback" not in second.log()
    finally:
        for c in made:
            c.close()
        made.clear()
        if second is not None:
            assert second.stop() == 0, second.log()
            second.cleanup()
        if first.proc.poll() is None:
            first.stop()
        first.cleanup()


def test_backpressure_with_a_connected_slow_subscriber(made: list[Client]) -> None:
    queue, count = 50, 100
    with checked_broker(config("backpressure", queue, mqueue_backpressure_timeout="10m")
                        + "max_inflight = 10\n") as b:
        sub = Client(b, "slow")
        made.append(sub)
        sub.c.manual_ack_set(True)  # it acknowledges only when the test says: a stalled reader
        sub.connect()
        assert sub.subscribe(TOPIC, 1) == [1]
        burst = Burst(b, made, count)
        wait_for("every publisher waiting", lambda: mqueue_len(b, "slow") == queue + PUBLISHERS)
        assert len(burst.acked()) <= queue + 10  # queued or in flight, nothing more
        assert burst.connected()
        total = PUBLISHERS * count
        got: set[str] = set()
        while len(got) < total:  # now it acknowledges each message it reads
            msg = sub.expect_message(WAIT)
            got.add(msg.payload.decode())
            sub.c.ack(msg.mid, msg.qos)
        burst.wait_all_acked(WAIT)
        assert burst.connected()
        assert got == {f"{i}:{n}" for i in range(PUBLISHERS) for n in range(count)}


def test_backpressure_timeout_falls_back_to_a_drop(made: list[Client]) -> None:
    queue, count = 20, 30
    with checked_broker(config("backpressure", queue, mqueue_backpressure_timeout="100ms",
                               mqueue_backpressure_fallback="drop_newest")) as b:
        offline_subscriber(b, made)
        before = queue_full_drops(b)
        burst = Burst(b, made, count)
        # Every wait times out (nobody makes room): each PUBACK comes after at most one
        # timeout, the message past the limit dropped by the fallback.
        burst.wait_all_acked(4 * WAIT)
        assert burst.connected()
        dropped = PUBLISHERS * count - queue
        wait_for("the drops counted", lambda: queue_full_drops(b) - before == dropped)
        got = drain(b, made, queue)
        for i, ns in per_publisher(got).items():
            assert ns == list(range(len(ns))), (i, ns)  # drop_newest: each run's head


def test_backpressure_qos2_over_websocket(made: list[Client]) -> None:
    """QoS 2 publishers on a WebSocket listener: their PUBRECs wait the same way (a read of
    WebSocket frames that outlives the pause waits with it)."""
    queue, count = 50, 80  # under the Receive Maximum of 100 QoS 2 messages awaiting PUBREL
    listeners = ('[listeners.default]\nbind = "127.0.0.1"\nport = 0\n'
                 '[listeners.ws]\nbind = "127.0.0.1"\nport = 0\ntype = "ws"\n')
    with checked_broker(config("backpressure", queue, mqueue_backpressure_timeout="10m")
                        + listeners) as b:
        offline_subscriber(b, made, qos=2)
        burst = Burst(b, made, count, qos=2, transport="websockets", port=b.ports["ws"])
        wait_for("every publisher waiting", lambda: mqueue_len(b, "slow") == queue + PUBLISHERS)
        acked = burst.acked()
        assert len(acked) <= queue, len(acked)
        assert burst.connected()
        sub = client(b, made, "slow", clean=False)
        got: list[str] = [sub.expect_message(WAIT).payload.decode()
                          for _ in range(PUBLISHERS * count)]
        burst.wait_all_acked(WAIT)
        assert burst.connected()
        assert sorted(got) == sorted(f"{i}:{n}" for i in range(PUBLISHERS)
                                     for n in range(count))  # exactly once each
        assert acked <= set(got)


def test_bad_overflow_settings_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "mqttd.toml"
    cfg.write_text('[mqtt]\nmqueue_overflow = "block"\nmqueue_backpressure_timeout = "0s"\n'
                   '[zones.x]\nmqueue_backpressure_fallback = "backpressure"\n')
    check = run_mqttd("config", "check", "-c", str(cfg))
    assert check.returncode == 2, check
    assert check.stderr.splitlines() == [
        f"{cfg}: mqtt.mqueue_overflow: 'block' is not one of drop_oldest, drop_newest, "
        "backpressure",
        f"{cfg}: mqtt.mqueue_backpressure_timeout: 0.0 is out of range (0.01..3600)",
        f"{cfg}: zones.x.mqueue_backpressure_fallback: 'backpressure' is not one of "
        "drop_oldest, drop_newest"]


# --- the session's part, on its own (the policies' edges) ---------------------------------

def delivery(payload: str, qos: int = 1) -> Delivery:
    return (Message(TOPIC, payload.encode(), qos), qos, False, (), None)


def session(policy: str, fallback: str = "drop_oldest", limit: int = 2) -> Session:
    s = Session("s", max_mqueue_len=limit)
    s.set_overflow(policy, fallback)
    return s


def payloads(s: Session) -> list[str]:
    return [d[0].payload.decode() for d in s.mqueue]


def test_session_drop_newest_refuses_the_new_message() -> None:
    s = session("drop_newest")
    a, b, c = delivery("a"), delivery("b"), delivery("c")
    assert s.enqueue(a) is None and s.enqueue(b) is None
    assert s.enqueue(c) is c
    assert payloads(s) == ["a", "b"] and s.dropped == 1


def test_session_backpressure_queues_past_the_limit_and_trims_by_its_fallback() -> None:
    OVERFULL.clear()
    s = session("backpressure", fallback="drop_newest")
    for p in "abcd":
        assert s.enqueue(delivery(p)) is None
    assert payloads(s) == ["a", "b", "c", "d"] and not s.has_room()
    assert OVERFULL == [s, s]  # one entry per message past the limit, for its publisher
    OVERFULL.clear()
    q0 = delivery("q0", qos=0)
    assert s.enqueue(q0) is q0  # QoS 0 is never held: the fallback drops it
    assert OVERFULL == []
    assert [d[0].payload for d in s.trim()] == [b"d", b"c"]  # drop_newest: the newest go
    assert payloads(s) == ["a", "b"] and s.dropped == 3
    s.mqueue.popleft()
    assert s.has_room()


def test_session_backpressure_has_a_hard_cap() -> None:
    OVERFULL.clear()
    s = session("backpressure", limit=1)  # cap: 2 x 1 + 256 queued
    for i in range(258):
        assert s.enqueue(delivery(str(i))) is None
    assert len(s.mqueue) == 258
    assert s.enqueue(delivery("over")) is not None  # fallback drop_oldest: "0" goes
    assert len(s.mqueue) == 258 and payloads(s)[0] == "1" and payloads(s)[-1] == "over"
    OVERFULL.clear()


# --- counters, and the reason code of a message the fallback dropped ------------------------

def metrics_of(b: BrokerProcess) -> dict[str, int]:
    return ctl_json(b, "broker", "metrics")["metrics"]  # type: ignore[no-any-return]


def held_now(b: BrokerProcess) -> int:
    return int(ctl_json(b, "broker", "stats")["stats"]["publishers.held.count"])


def test_backpressure_waits_are_counted(made: list[Client]) -> None:
    """publishers.held counts each wait, publishers.released.room|timeout|closed how it
    ended, and the stat publishers.held.count the publishers waiting now (also at /metrics,
    every counter and stat being exported there)."""
    from prometheus_client.parser import text_string_to_metric_families
    from support.httpapi import HttpApi

    from mqttd.http.prometheus import metric_name

    queue, count = 20, 40
    http = "[http]\nenabled = true\nport = 0\n\n"
    with checked_broker(http + config("backpressure", queue, mqueue_backpressure_timeout="10m")
                        ) as b:
        offline_subscriber(b, made)
        Burst(b, made, count)
        wait_for("every publisher waiting", lambda: mqueue_len(b, "slow") == queue + PUBLISHERS)
        wait_for("the stat refreshed", lambda: held_now(b) == PUBLISHERS)
        m = metrics_of(b)
        assert m["publishers.held"] == PUBLISHERS
        assert (m["publishers.released.room"], m["publishers.released.timeout"],
                m["publishers.released.closed"]) == (0, 0, 0)
        api = HttpApi(b, ctl_json(b, "apikey", "add", "prom")["key"])
        families = {f.name: f for f in text_string_to_metric_families(
            api.call("GET", "/metrics").text)}
        for name, value in (("publishers.held", PUBLISHERS), ("publishers.held.count",
                                                              PUBLISHERS)):
            assert [s.value for s in families[metric_name(name)].samples] == [value], name
        # One publisher is taken over while it waits (a closed socket would not be seen: its
        # reading is paused): its wait ends with the connection.
        client(b, made, "pub-0")
        wait_for("the closed wait counted",
                 lambda: metrics_of(b)["publishers.released.closed"] == 1)
        # The subscriber comes back: every other wait ends with room, however many more
        # waits the rest of the burst starts on the way.
        sub = client(b, made, "slow", clean=False)
        for _ in range(queue + PUBLISHERS):
            sub.expect_message(WAIT)
        wait_for("no publisher waiting", lambda: held_now(b) == 0)
        m = metrics_of(b)
        assert m["publishers.held"] >= PUBLISHERS
        assert m["publishers.held"] == (m["publishers.released.room"]
                                        + m["publishers.released.closed"])
        assert m["publishers.released.timeout"] == 0


@pytest.mark.parametrize("qos", [1, 2])
@pytest.mark.parametrize("fallback", ["drop_newest", "drop_oldest"])
def test_message_dropped_after_the_wait_is_not_acknowledged_as_success(
        fallback: str, qos: int, made: list[Client]) -> None:
    """MQTT 5: when the timeout's fallback drops the very message whose acknowledgement was
    held, and it reached nobody else, the PUBACK/PUBREC says 0x97 quota exceeded; when the
    fallback drops another (older) message instead, success. 3.1.1 has no code to say it."""
    from support import builder as B
    from support.raw import RawClient

    from mqttd.mqtt.packets import Puback, Pubcomp, Pubrec

    queue = 2
    with checked_broker(config("backpressure", queue, mqueue_backpressure_timeout="100ms",
                               mqueue_backpressure_fallback=fallback)) as b:
        offline_subscriber(b, made, qos)
        before = metrics_of(b)
        with RawClient(b, version=5, timeout=WAIT) as c:
            c.connect("pub5")
            codes = []
            for pid in (1, 2, 3):  # the third finds the queue full: held, then the fallback
                c.send(B.publish(TOPIC, f"m{pid}".encode(), qos=qos, packet_id=pid,
                                 properties=b"\x00"))
                ack = c.expect(Puback if qos == 1 else Pubrec)
                assert ack.packet_id == pid
                codes.append(ack.reason_code)
            dropped_own = fallback == "drop_newest"
            assert codes == [0, 0, 0x97 if dropped_own else 0]
            if qos == 2:
                # An error PUBREC ended that flow: its PUBREL finds no packet id (0x92).
                for pid in (1, 2, 3):
                    c.send(B.pubrel(pid))
                    comp = c.expect(Pubcomp)
                    assert (comp.packet_id, comp.reason_code) == \
                        (pid, 0x92 if pid == 3 and dropped_own else 0)
        after = metrics_of(b)
        assert after["publishers.held"] - before["publishers.held"] == 1
        assert after["publishers.released.timeout"] - before["publishers.released.timeout"] == 1
        assert after["packets.publish.dropped"] - before["packets.publish.dropped"] == \
            (1 if dropped_own else 0)
        got = drain(b, made, queue)
        assert got == (["m1", "m2"] if dropped_own else ["m2", "m3"])

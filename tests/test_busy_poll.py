"""The event loop's poll before sleeping (``node.busy_poll``, mqttd/transport/busypoll.py),
seen on a real broker through ``mqttd ctl vm --json``: a client that answers at once (a
ping-pong of PINGREQ and PINGRESP) grows the poll window and is then caught by it (its
next packet came while the loop polled); a client that pauses longer than the bound
shrinks the window to nothing; 0 never polls; a reload changes the bound in place; the
bound is a checked duration. Under both event loops (uvloop and asyncio's own). With less
than two CPUs the broker never polls (and says so). ``BusyPoll`` itself on a real event
loop in this process: the poll keeps the loop turning until the window ends, and the
window's rule step by step.

The bound in these tests is 5 ms, not the default 100 us: a Python test client on a
loaded CI machine answers well inside 5 ms but not always inside 100 us, and the rule
under test (grow on gaps the window would have caught, shrink on longer ones) is the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import builder as B, uid
from support.ctlrun import ctl_json
from support.process import BrokerProcess, checked_broker, run_mqttd
from support.raw import RawClient

from mqttd.config import load_settings
from mqttd.mqtt.packets import Pingresp
from mqttd.transport.busypoll import BusyPoll, usable_cpus

LISTENER = '[listeners.default]\nbind = "127.0.0.1"\nport = 0\n'
#: Whether this machine lets the broker poll at all (two CPUs or more).
POLLS = usable_cpus() >= 2


def config(bound: str) -> str:
    return f'[node]\nbusy_poll = "{bound}"\n' + LISTENER


@pytest.fixture(params=["uvloop", "asyncio"])
def loop(request: pytest.FixtureRequest) -> list[str]:
    """``mqttd start``'s options for the event loop."""
    return [] if request.param == "uvloop" else ["--no-uvloop"]


@pytest.fixture
def broker(loop: list[str]) -> Iterator[BrokerProcess]:
    with checked_broker(config("5ms"), extra_args=loop) as b:
        yield b


def busy(b: BrokerProcess) -> dict[str, float]:
    data: dict[str, float] = ctl_json(b, "vm")["busy_poll"]
    return data


def ping_pong(client: RawClient, rounds: int, pause: float = 0.0) -> None:
    """``rounds`` PINGREQs, each sent when the previous PINGRESP came (after ``pause``)."""
    for _ in range(rounds):
        client.send(B.pingreq())
        client.expect(Pingresp)
        if pause:
            time.sleep(pause)


def test_a_prompt_client_grows_the_window_and_is_caught_then_a_slow_one_shrinks_it(
        broker: BrokerProcess) -> None:
    before = busy(broker)
    if not POLLS:  # (the broker's rule below two CPUs: off, logged)
        assert before["max_wait_us"] == 0.0
        assert "node.busy_poll: off (less than two CPUs)" in broker.log()
        return
    assert before["max_wait_us"] == 5000.0
    with RawClient(broker) as c:
        c.connect(uid("pp"))
        ping_pong(c, 300)
        prompt = busy(broker)
        # Gaps under 5 ms grew the window (from 625 us, doubling, at most to the bound)
        # until it was long enough for them; then the client's next packet came while the
        # loop polled.
        assert prompt["grown"] > before["grown"]
        assert 625.0 <= prompt["window_us"] <= 5000.0
        assert prompt["caught"] - before["caught"] >= 100, prompt
        assert prompt["turns"] - before["turns"] >= 100, prompt  # (the loop did turn)
        # 20 ms pauses: each gap is past the bound, the window halves until it is gone
        # (below 625 us, an eighth of the bound: 0), at most four halvings from 5 ms.
        ping_pong(c, 8, pause=0.02)
        slow = busy(broker)
        assert slow["shrunk"] > prompt["shrunk"], slow
        assert slow["window_us"] == 0.0, slow
        assert slow["caught"] == prompt["caught"], slow


def test_zero_never_polls_and_a_reload_sets_the_bound_in_place(loop: list[str]) -> None:
    with checked_broker(config("0"), extra_args=loop) as b:
        with RawClient(b) as c:
            c.connect(uid("pp"))
            ping_pong(c, 100)
            off = busy(b)
            assert off == {"max_wait_us": 0.0, "window_us": 0.0, "caught": 0, "turns": 0,
                           "grown": 0, "shrunk": 0}
            b.config_path.write_text(config("5ms"))
            report = ctl_json(b, "conf", "reload")
            change = {r["key"]: r["change"] for r in report["applied"]}["node.busy_poll"]
            if not POLLS:
                assert change == "0us → 5000us (off: below two CPUs)"
                assert busy(b)["max_wait_us"] == 0.0
                return
            assert change == "0us → 5000us"
            ping_pong(c, 100)  # (the same connection: the loop's bound, not the client's)
            on = busy(b)
            assert on["max_wait_us"] == 5000.0 and on["grown"] > 0 and on["caught"] > 0, on
            assert on["turns"] > 0, on


def test_the_bound_is_a_checked_duration(tmp_path: Path) -> None:
    f = tmp_path / "mqttd.toml"
    for value, error in (('"20ms"', "node.busy_poll: 0.02 is out of range (0..0.01)"),
                         ('"soon"', "node.busy_poll: not a duration: 'soon'"),
                         ('-1', "node.busy_poll: -1.0 is out of range (0..0.01)")):
        f.write_text(f"[node]\nbusy_poll = {value}\n")
        r = run_mqttd("config", "check", "-c", str(f))
        assert r.returncode != 0 and f"{f}: {error}" in r.stderr, (value, r.stderr)
    f.write_text('[node]\nbusy_poll = "250us"\nsys_interval = "30"\n')
    settings = load_settings(str(f))
    # A bare number in a string is seconds, as a bare number is.
    assert settings.busy_poll == pytest.approx(0.00025) and settings.sys_interval == 30
    assert load_settings(None).busy_poll == pytest.approx(0.0001)


def test_the_poll_keeps_the_loop_turning_until_the_window_ends() -> None:
    loop = asyncio.new_event_loop()
    try:
        poll = BusyPoll(loop, 0.005)
        poll.window = 0.005
        poll.ended()
        # The loop turns while the poll goes on (a ready callback each turn), then sleeps
        # out the rest of the 20 ms.
        loop.run_until_complete(asyncio.sleep(0.02))
        assert poll.turns > 10 and not poll._polling
        assert poll._until <= time.perf_counter()
        # The bound set to 0 while polling (a reload): the poll runs out, none starts.
        poll.ended()
        assert poll._polling
        poll.bound(0.0)
        turns = poll.turns
        loop.run_until_complete(asyncio.sleep(0.02))
        assert not poll._polling and poll.turns - turns <= 1 and poll.window == 0.0
        poll.ended()
        assert not poll._polling
        # No poll when asked not to (acknowledgements waiting for the store's thread).
        poll.max_wait = poll.window = 0.005
        poll.ended(False)
        assert not poll._polling
    finally:
        loop.close()


def test_the_window_grows_on_gaps_it_would_catch_and_shrinks_on_longer_ones() -> None:
    loop = asyncio.new_event_loop()
    try:
        poll = BusyPoll(loop, 0.008)  # (an eighth: 1 ms)
        sizes = []
        for gap in (0.0005, 0.0015, 0.003, 0.006, 0.0075, 0.02, 0.02, 0.02, 0.02, 0.0005,
                    0.009):
            poll._end = 1.0
            poll._polling = False
            poll.started(1.0 + gap)
            sizes.append(round(poll.window * 1000, 3))
        # 0 -> 1 ms (an eighth of the bound) on a gap it would have caught; doubled by each
        # gap past it up to the bound (8 ms), which catches the next; halved by each gap past
        # the bound, to nothing below 1 ms; started again by a short gap; ended by a long
        # one while at 1 ms.
        assert sizes == [1.0, 2.0, 4.0, 8.0, 8.0, 4.0, 2.0, 1.0, 0.0, 1.0, 0.0], sizes
        assert (poll.grown, poll.shrunk) == (5, 5)
        assert poll.caught == 0  # (the loop was not polling when those gaps ended)
    finally:
        loop.close()

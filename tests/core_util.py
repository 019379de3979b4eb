"""Helpers for the broker-core unit tests (tests/test_core_*.py): no event loop, no sockets.

``mqttd/core`` takes its timers and clock from outside (``core.services.Timers``).
:class:`ManualTimers` is that seam for tests: a clock moved by hand that fires due
callbacks in time order (ties in the order they were scheduled). :class:`Owner`
is a recording :class:`~mqttd.core.services.SessionOwner`, :class:`Recorder` a
recording :class:`~mqttd.core.services.Subscriber`, and :class:`Probe` a real
:class:`~mqttd.core.channel.Channel` whose output is parsed back with the pure parser.
:func:`forbid_event_loop` makes any use of asyncio's loop entry points fail the test.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

from mqttd.config import Settings, Zone
from mqttd.core.broker import Broker
from mqttd.core.channel import Channel
from mqttd.core.message import Message
from mqttd.core.services import CloseReason, Delivery
from mqttd.hooks import Hooks
from mqttd.metrics import Metrics
from mqttd.mqtt._codec_py import ParserPy
from mqttd.mqtt.packets import Connack, Connect, Suback, SubOpts, Subscribe, Will

# --- time -------------------------------------------------------------------------------


class ManualHandle:
    """What ``ManualTimers.call_later`` returns (``asyncio.TimerHandle``'s ``cancel``)."""

    __slots__ = ("when", "callback", "args", "cancelled", "fired")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True

    def __repr__(self) -> str:
        name = getattr(self.callback, "__name__", repr(self.callback))
        return f"ManualHandle({name} at {self.when})"


class ManualTimers:
    """A ``core.services.Timers`` on a hand-moved clock. ``clock`` is the matching
    monotonic clock (for ``Registry(clock=...)`` and a session's explicit ``now``)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, ManualHandle]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any
                   ) -> ManualHandle:
        handle = ManualHandle(self.now + delay, callback, args)
        heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
        return handle

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``, firing every callback due on the way, each with
        the clock at its own due time (callbacks scheduled meanwhile fire too if due)."""
        assert seconds >= 0
        self.advance_to(self.now + seconds)

    #: Firings one advance may make before it is taken for a runaway periodic timer.
    MAX_FIRINGS = 10_000

    def advance_to(self, when: float) -> None:
        heap = self._heap
        fired = 0
        while heap and heap[0][0] <= when:
            due, _, handle = heapq.heappop(heap)
            if handle.cancelled:
                continue
            fired += 1
            if fired > self.MAX_FIRINGS:
                raise AssertionError(f"more than {self.MAX_FIRINGS} timers fired before "
                                     f"{when}: a periodic timer (the sweep?) is still armed")
            self.now = max(self.now, due)
            handle.fired = True
            handle.callback(*handle.args)
        self.now = max(self.now, when)

    def pending(self) -> list[ManualHandle]:
        """Live (not cancelled, not fired) handles in the order they would fire."""
        return [h for _, _, h in sorted(self._heap) if not h.cancelled]

    def pending_for(self, callback_name: str) -> list[ManualHandle]:
        return [h for h in self.pending()
                if getattr(h.callback, "__name__", "") == callback_name]


# --- no event loop ----------------------------------------------------------------------

_LOOP_ENTRY_POINTS = ("get_running_loop", "get_event_loop", "new_event_loop", "run",
                      "get_event_loop_policy")


@contextlib.contextmanager
def forbid_event_loop() -> Iterator[None]:
    """Fail on any use of asyncio's loop entry points while inside (and refuse to start
    inside a running loop): the core must work with no loop at all."""
    if asyncio.events._get_running_loop() is not None:
        raise AssertionError("a core test is running inside an event loop")
    saved: list[tuple[Any, str, Any]] = []

    def forbidden(name: str) -> Callable[..., Any]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"the broker core called asyncio.{name}()")
        return fail

    for module in (asyncio, asyncio.events):
        for name in _LOOP_ENTRY_POINTS:
            if hasattr(module, name):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, forbidden(name))
    try:
        yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)


# --- recording stand-ins ----------------------------------------------------------------


class Recorder:
    """A ``Subscriber``: records each delivery the dispatcher hands it."""

    def __init__(self) -> None:
        self.got: list[Delivery] = []

    def deliver(self, delivery: Delivery, encoded: Any) -> None:
        self.got.append(delivery)

    def payloads(self) -> list[bytes]:
        return [d[0].payload for d in self.got]


class Owner(Recorder):
    """A ``SessionOwner``: a recorder the registry can also kick."""

    def __init__(self, client_id: str, will: Message | None = None, will_delay: int = 0) -> None:
        super().__init__()
        self.client_id = client_id
        self.will = will
        self.will_delay = will_delay
        self.connected_at = time.time()
        self.kicks: list[tuple[int, CloseReason, str]] = []

    def kick(self, code: int, reason: CloseReason, detail: str) -> None:
        self.kicks.append((code, reason, detail))


class HookLog:
    """Records every run of the given hook points as (point, args)."""

    def __init__(self, hooks: Hooks, *points: str) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        for point in points:
            hooks.add(point, self._recorder(point))

    def _recorder(self, point: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.calls.append((point, args))
        record.__name__ = "record_" + point.replace(".", "_")
        return record

    def points(self) -> list[str]:
        return [p for p, _ in self.calls]

    def args(self, point: str) -> list[tuple[Any, ...]]:
        return [a for p, a in self.calls if p == point]


# --- a broker and real channels ---------------------------------------------------------


class World:
    """A Broker with one zone on manual timers, and real channels connected to it."""

    def __init__(self, **zone: Any) -> None:
        self.zone = Zone(**zone)
        self.timers = ManualTimers()
        self.metrics = Metrics()
        self.hooks = Hooks()
        self.broker = Broker(Settings(zones={"default": self.zone}), self.metrics, self.hooks,
                             self.timers)
        self.registry = self.broker.registry
        self.dispatcher = self.broker.dispatcher

    def client(self, client_id: str, version: int = 5, *, clean: bool = True,
               expiry: int | None = None, will: Will | None = None) -> Probe:
        probe = Probe(self, version)
        ack = probe.connect(client_id, clean=clean, expiry=expiry, will=will)
        assert ack.reason_code == 0, ack
        return probe

    def subscriber(self, client_id: str, topic_filter: str, qos: int = 1, version: int = 5,
                   **kw: Any) -> Probe:
        probe = self.client(client_id, version, **kw)
        assert probe.send(Subscribe(1, [(topic_filter, SubOpts(qos))])) == [Suback(1, [qos])]
        return probe


class Probe:
    """A real Channel plus a pure parser for what it writes."""

    def __init__(self, world: World, version: int = 5) -> None:
        self.channel = Channel(world.broker, world.zone, "127.0.0.1:5000")
        self.parser = ParserPy(version=version)
        self.version = version
        #: Packets parsed but not yet taken with out() (what followed a CONNACK).
        self.backlog: list[Any] = []

    def out(self) -> list[Any]:
        data = b"".join(self.channel.out)
        self.channel.out.clear()
        packets = self.backlog + self.parser.feed(data)
        self.backlog = []
        return packets

    def send(self, *packets: Any) -> list[Any]:
        for packet in packets:
            self.channel.handle_in(packet)
        return self.out()

    def connect(self, client_id: str, *, clean: bool = True, expiry: int | None = None,
                will: Will | None = None) -> Connack:
        props: dict[str, Any] = {}
        if expiry is not None and self.version == 5:
            props["session_expiry_interval"] = expiry
        out = self.send(Connect("MQTT", self.version, clean, 60, client_id, will, None, None,
                                props))
        assert out and isinstance(out[0], Connack), out
        self.backlog = out[1:]  # a resumed session's resent packets: see out()
        return out[0]

    @property
    def session(self) -> Any:
        return self.channel.session

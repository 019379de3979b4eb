"""Reading a running broker's stats and metrics over ``$SYS`` (until ``mqttd ctl broker metrics
--json`` is the easier way), for the end-to-end tests of metrics, stats and $SYS.

:class:`SysMetrics` is a raw client (:class:`~support.raw.RawClient`: packets from
``builder``, the broker's packets read with the reference parser) subscribed to
``$SYS/brokers/+/metrics/#`` that reads on its own thread, so the broker never sees it as a
slow consumer. Its own traffic is part of what it reads, so it removes it: it knows exactly
what it sent (CONNECT, SUBSCRIBE) and counts what it received before each round's first
metric (the broker takes one snapshot per round, before publishing any metric of that round,
and delivers in order). What is left is what the rest of the test did, exactly. Every wait
is bounded.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from mqttd.metrics import ALL_NAMES, NAMES
from mqttd.mqtt.packets import Connack, Publish, Suback

from . import WAIT, builder as B, uid
from .clients import Client
from .process import BrokerProcess
from .raw import FOREVER, Closed, RawClient

_CONNECT = B.connect("sys-metrics-reader", level=4, keepalive=0)
_SUBSCRIBE = B.subscribe(1, [("$SYS/brokers/+/metrics/#", 0)])

#: What the reader's CONNECT and SUBSCRIBE add to the metrics, once it has subscribed.
_READER_IN = {
    "bytes.received": len(_CONNECT) + len(_SUBSCRIBE), "packets.received": 2,
    "packets.connect.received": 1, "packets.subscribe.received": 1,
    "packets.connack.sent": 1, "packets.suback.sent": 1,
    "client.connect": 1, "client.connack": 1, "client.authenticate": 1,
    "client.auth.ignore": 1, "client.auth.anonymous": 1, "client.connected": 1,
    "client.subscribe": 1, "client.check_acl": 1, "client.acl.ignore": 1,
    "session.created": 1,
}


def _vbi_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def _publish_size(topic: str, payload: bytes) -> int:
    rl = 2 + len(topic.encode()) + len(payload)  # QoS 0, MQTT 3.1.1: no packet id, no props
    return 1 + _vbi_len(rl) + rl


class SysMetrics:
    """The broker's metrics as if this reader were not connected; one dict per $SYS round."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.raw = RawClient(broker, 4)
        self.raw.send(_CONNECT + _SUBSCRIBE)
        self.rounds: queue.Queue[dict[str, int]] = queue.Queue()
        self._own_pubs = 0
        self._own_bytes = 0
        self._own_pkts = 0
        self._cur: dict[str, int] | None = None
        self._cur_own = (0, 0, 0)
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                self._packet(self.raw.recv(timeout=FOREVER))
        except (Closed, OSError):
            return
        except BaseException as err:  # noqa: BLE001 (surfaced by next_round)
            self.error = err

    def _packet(self, p: Any) -> None:
        if isinstance(p, Connack):
            self._own_pkts += 1
            self._own_bytes += 4
            return
        if isinstance(p, Suback):
            self._own_pkts += 1
            self._own_bytes += 5
            return
        assert isinstance(p, Publish), p
        name = p.topic.split("/metrics/", 1)[1].replace("/", ".")
        if name == NAMES[0]:
            self._cur = {}
            self._cur_own = (self._own_pubs, self._own_bytes, self._own_pkts)
        if self._cur is not None:
            self._cur[name] = int(p.payload)
            if len(self._cur) == len(ALL_NAMES):
                self.rounds.put(self._adjust(self._cur, *self._cur_own))
                self._cur = None
        self._own_pubs += 1
        self._own_pkts += 1
        self._own_bytes += _publish_size(p.topic, p.payload)

    @staticmethod
    def _adjust(values: dict[str, int], pubs: int, nbytes: int, pkts: int) -> dict[str, int]:
        out = dict(values)
        out["bytes.sent"] -= nbytes
        out["packets.sent"] -= pkts
        for name in ("packets.publish.sent", "messages.sent", "messages.qos0.sent",
                     "messages.delivered"):
            out[name] -= pubs
        for name, n in _READER_IN.items():
            out[name] -= n
        return out

    def next_round(self, timeout: float = WAIT) -> dict[str, int]:
        """The next complete round published from now on (values adjusted)."""
        try:
            while True:  # drop rounds already queued: they may predate what the test did
                self.rounds.get_nowait()
        except queue.Empty:
            pass
        return self._get(timeout)

    def _get(self, timeout: float) -> dict[str, int]:
        if self.error is not None:
            raise self.error
        try:
            return self.rounds.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no $SYS metrics round arrived in time") from None

    def wait_for(self, want: dict[str, int], *, family: tuple[str, ...] = (),
                 baseline: dict[str, int] | None = None, timeout: float = WAIT,
                 ) -> dict[str, int]:
        """Wait until (values - baseline) equal ``want`` for the keys of ``want`` and are 0 for
        every other metric whose name starts with one of ``family``; then check the next
        round agrees (nothing more was still to come). Returns the matching values."""
        base = baseline or dict.fromkeys(ALL_NAMES, 0)
        keys = set(want) | {n for n in ALL_NAMES if n.startswith(family)} if family else set(want)

        def delta(values: dict[str, int]) -> dict[str, int]:
            return {k: values[k] - base.get(k, 0) for k in sorted(keys)}

        expected = {k: want.get(k, 0) for k in sorted(keys)}
        deadline = time.monotonic() + timeout
        last: dict[str, int] = {}
        while time.monotonic() < deadline:
            try:
                values = self._get(max(0.01, deadline - time.monotonic()))
            except AssertionError:
                break
            last = delta(values)
            if last == expected:
                again = delta(self._get(WAIT))
                assert again == expected, _diff(expected, again)
                return values
        raise AssertionError("metrics never matched:\n" + _diff(expected, last))

    def close(self) -> None:
        self.raw.try_send(B.disconnect())
        self.raw.close()
        self._thread.join(WAIT)


def _diff(expected: dict[str, int], got: dict[str, int]) -> str:
    return "\n".join(f"  {k}: expected {expected[k]}, got {got.get(k)}"
                     for k in expected if expected[k] != got.get(k)) or "  (equal)"


class SysReader:
    """A paho client on ``$SYS/brokers/+/<pattern>`` keeping the latest value of each name."""

    def __init__(self, broker: BrokerProcess, pattern: str) -> None:
        self.client = Client(broker, uid("sys-reader-"))
        self.values: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self.client.c.on_message = self._on_message
        self.client.connect()
        self.client.subscribe(f"$SYS/brokers/+/{pattern}", 0)

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        name = msg.topic.split("/", 3)[3]
        with self._cond:
            self.values[name] = msg.payload
            self._cond.notify_all()

    def wait_for(self, want: dict[str, int], timeout: float = WAIT) -> dict[str, int]:
        """Wait until every ``want`` name (``stats/`` prefix implied) has its value."""

        def current() -> dict[str, int]:
            return {k.split("/", 1)[1]: int(v) for k, v in self.values.items()
                    if k.startswith("stats/")}

        with self._cond:
            ok = self._cond.wait_for(
                lambda: all(current().get(k) == v for k, v in want.items()), timeout)
            got = current()
        if not ok:
            raise AssertionError("stats never matched:\n" + _diff(want, got))
        return got

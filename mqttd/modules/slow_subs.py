"""Slow subscriptions (EMQX's emqx_slow_subs): the subscribers slowest to acknowledge.

Each QoS 1/2 delivery to a connected client is timed by its channel from the moment its
PUBLISH is sent (it enters the inflight window) to its PUBACK or PUBCOMP, as EMQX times
from its inflight entry. The channel notes send times only while ``delivery.slow`` has a
callback, and runs that hook point only for deliveries acknowledged ``Hooks.slow_threshold``
(this module's ``threshold``) or more after they were sent: a subscriber that keeps up costs
a dict insert and pop per message, and no callback. A delivery waiting in the session's queue
behind a full inflight window is timed from when it leaves the queue (EMQX's ``internal``
latency rather than ``whole``).

A slow delivery records (client id, topic) with its latency; the ``top_k`` slowest pairs are
kept, each forgotten ``expire_interval`` after its last slow delivery. ``mqttd ctl slow-subs
list|clear`` shows and empties them; every ``notice_interval`` seconds, while there are
records, they are published (JSON) to ``$SYS/brokers/<node>/slow_subs``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from ..config import SlowSubsSettings
from ..core.message import Message
from ..core.services import ClientInfo, TimerHandle
from .base import Module, ModuleContext

__all__ = ["Record", "SlowSubs"]

#: How often expired records are swept, in seconds (at most).
SWEEP_EVERY = 10.0


@dataclass(slots=True)
class Record:
    """A (client id, topic) pair's slowest delivery in the window."""

    clientid: str
    topic: str
    #: Seconds from hand-over to acknowledgement, the highest since the record was made.
    latency: float
    #: Wall-clock time of the last slow delivery, and its monotonic twin (for expiry).
    last_update: float
    last_seen: float

    def row(self) -> dict[str, Any]:
        return {"clientid": self.clientid, "topic": self.topic,
                "latency_ms": round(self.latency * 1000),
                "last_update_time": time.strftime(
                    "%Y-%m-%dT%H:%M:%S", time.localtime(self.last_update))}


class SlowSubs(Module):
    """The top-N (client id, topic) pairs by delivery latency above a threshold."""

    name = "slow_subs"
    description = "Slow subscriptions: the top-N subscribers by QoS 1/2 delivery latency"

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        settings: SlowSubsSettings = ctx.settings.modules.slow_subs
        self.threshold = settings.threshold
        self.top_k = settings.top_k
        self.expire = float(settings.expire_interval)
        self.notice_interval = settings.notice_interval
        self.topic = f"$SYS/brokers/{ctx.settings.node}/slow_subs"
        self.records: dict[tuple[str, str], Record] = {}
        self._sweep_timer: TimerHandle | None = None
        self._notice_timer: TimerHandle | None = None

    def load(self) -> None:
        self.ctx.hooks.slow_threshold = self.threshold
        self.hook("delivery.slow", self._slow)
        self._sweep_timer = self.ctx.timers.call_later(self._sweep_every(), self._sweep)
        if self.notice_interval:
            self._notice_timer = self.ctx.timers.call_later(self.notice_interval,
                                                            self._notice)

    def unload(self) -> None:
        super().unload()
        for timer in (self._sweep_timer, self._notice_timer):
            if timer is not None:
                timer.cancel()
        self._sweep_timer = self._notice_timer = None
        self.ctx.hooks.slow_threshold = 0.0
        self.records.clear()

    def info(self) -> dict[str, Any]:
        timing = sum(len(s.sent_at) for s in self.ctx.broker.registry.sessions.values()
                     if s.sent_at)
        return {"records": len(self.records), "timing": timing,
                "threshold_ms": round(self.threshold * 1000),
                "top_k": self.top_k, "expire_interval": int(self.expire)}

    # --- what ctl shows ----------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """The records still in the window, slowest first."""
        self._expire(time.monotonic())
        return [r.row() for r in sorted(self.records.values(), key=lambda r: -r.latency)]

    def clear(self) -> int:
        """Forget every record; returns how many there were."""
        n = len(self.records)
        self.records.clear()
        return n

    # --- hooks -------------------------------------------------------------------------

    def _slow(self, client: ClientInfo, msg: Message, latency: float) -> None:
        """delivery.slow: acknowledged ``threshold`` or more after it was sent."""
        self._record(client.client_id, msg.topic, latency, time.monotonic())

    def _record(self, clientid: str, topic: str, latency: float, now: float) -> None:
        records = self.records
        key = (clientid, topic)
        record = records.get(key)
        if record is not None:
            record.latency = max(record.latency, latency)
            record.last_update, record.last_seen = time.time(), now
            return
        if len(records) >= self.top_k:
            self._expire(now)
        if len(records) >= self.top_k:
            fastest = min(records, key=lambda k: records[k].latency)
            if records[fastest].latency >= latency:
                return
            del records[fastest]
        records[key] = Record(clientid, topic, latency, time.time(), now)

    # --- timers ------------------------------------------------------------------------

    def _sweep_every(self) -> float:
        return min(SWEEP_EVERY, self.expire)

    def _expire(self, now: float) -> None:
        old = [k for k, r in self.records.items() if now - r.last_seen >= self.expire]
        for key in old:
            del self.records[key]

    def _sweep(self) -> None:
        now = time.monotonic()
        self._expire(now)
        self._sweep_timer = self.ctx.timers.call_later(self._sweep_every(), self._sweep)

    def _notice(self) -> None:
        rows = self.list()
        if rows:
            payload = json.dumps({"node": self.ctx.settings.node, "slow_subs": rows},
                                 separators=(",", ":")).encode()
            # Straight to the dispatcher, as the other $SYS topics: not a client's message.
            self.ctx.broker.dispatcher.publish(Message(self.topic, payload, 0, False))
        self._notice_timer = self.ctx.timers.call_later(self.notice_interval, self._notice)

"""Slow subscriptions (EMQX's emqx_slow_subs): the subscribers slowest to acknowledge.

Each QoS 1/2 delivery to a connected client is timed from the moment the broker hands it
to the client's channel (``message.delivered``, which runs just before the PUBLISH is
written) to its PUBACK or PUBCOMP (``message.acked``). Both hook points existed already,
so the core is unchanged: the pair is matched by (client id, message), and the message is
held until its acknowledgement so that its identity cannot be reused meanwhile. A delivery
that waits in the session's queue because the client's inflight window is full is timed
from when it was handed over, so the wait counts (as EMQX's ``whole`` latency does).

A delivery acknowledged ``threshold`` or more after it was sent records (client id,
topic) with its latency; the ``top_k`` slowest pairs are kept, each forgotten
``expire_interval`` after its last slow delivery. ``mqttd ctl slow-subs list|clear``
shows and empties them; every ``notice_interval`` seconds, while there are records, they
are published (JSON) to ``$SYS/brokers/<node>/slow_subs``.

Every :data:`SWEEP_EVERY` seconds the deliveries no longer in their session's inflight
window or queue are forgotten (those that went out at QoS 0 to a QoS 0 subscription, or were
dropped), and so are those unacknowledged for ``expire_interval``; at most
:data:`MAX_PENDING` are timed at once.
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

__all__ = ["MAX_PENDING", "Record", "SlowSubs"]

#: Deliveries being timed at most; past it new ones are not timed (counted as untimed).
MAX_PENDING = 100_000
#: How often expired records and forgotten deliveries are swept, in seconds (at most).
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
        #: (client id, id(message)) -> (message, monotonic hand-over time).
        self.pending: dict[tuple[str, int], tuple[Message, float]] = {}
        self.records: dict[tuple[str, str], Record] = {}
        self.untimed = 0
        self._sweep_timer: TimerHandle | None = None
        self._notice_timer: TimerHandle | None = None

    def load(self) -> None:
        self.hook("message.delivered", self._delivered, -1000)
        self.hook("message.acked", self._acked)
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
        self.pending.clear()
        self.records.clear()

    def info(self) -> dict[str, Any]:
        return {"records": len(self.records), "timing": len(self.pending),
                "untimed": self.untimed, "threshold_ms": round(self.threshold * 1000),
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

    def _delivered(self, client: ClientInfo, msg: Message) -> None:
        if not msg.qos:  # a QoS 0 message is never acknowledged
            return
        pending = self.pending
        if len(pending) >= MAX_PENDING:
            self.untimed += 1
            return
        pending[(client.client_id, id(msg))] = (msg, time.monotonic())

    def _acked(self, client: ClientInfo, msg: Message) -> None:
        entry = self.pending.pop((client.client_id, id(msg)), None)
        if entry is None or entry[0] is not msg:
            return  # not timed (sent before the module was loaded, or from the queue)
        now = time.monotonic()
        latency = now - entry[1]
        if latency >= self.threshold:
            self._record(client.client_id, msg.topic, latency, now)

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
        self.pending = self._still_waiting(now)
        self._sweep_timer = self.ctx.timers.call_later(self._sweep_every(), self._sweep)

    def _still_waiting(self, now: float) -> dict[tuple[str, int], tuple[Message, float]]:
        """The pending deliveries still in their session's inflight window or queue, and
        younger than ``expire_interval``. The others will never be acknowledged: sent at
        QoS 0 (a QoS 1 message to a QoS 0 subscription), dropped, or their session gone."""
        sessions = self.ctx.broker.registry.sessions
        held: dict[str, set[int]] = {}
        kept: dict[tuple[str, int], tuple[Message, float]] = {}
        for key, entry in self.pending.items():
            if now - entry[1] >= self.expire:
                continue
            client_id = key[0]
            ids = held.get(client_id)
            if ids is None:
                session = sessions.get(client_id)
                ids = held[client_id] = set() if session is None else {
                    id(d[0]) for d in (*session.inflight.values(), *session.mqueue)}
            if key[1] in ids:
                kept[key] = entry
        return kept

    def _notice(self) -> None:
        rows = self.list()
        if rows:
            payload = json.dumps({"node": self.ctx.settings.node, "slow_subs": rows},
                                 separators=(",", ":")).encode()
            # Straight to the dispatcher, as the other $SYS topics: not a client's message.
            self.ctx.broker.dispatcher.publish(Message(self.topic, payload, 0, False))
        self._notice_timer = self.ctx.timers.call_later(self.notice_interval, self._notice)

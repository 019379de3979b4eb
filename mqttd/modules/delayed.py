"""Delayed publish (EMQX's emqx_delayed): a PUBLISH to ``$delayed/<seconds>/<topic>`` is
published to ``<topic>`` that many seconds later.

Two hook callbacks do it. On ``client.publish`` (before authorization) a ``$delayed/``
topic is checked: one without a whole number of seconds (0..4294967) and a topic after it,
or whose topic starts with ``$``, is refused with 0x90 (topic name invalid); past
``max_delayed_messages`` with 0x97 (quota exceeded); and the client must also be allowed to
publish to the topic itself (the core then checks ``$delayed/...``, as EMQX does), so
``$delayed/`` cannot carry a message where its sender may not publish. On
``message.publish`` the message is taken (it reaches no ``$delayed/`` subscriber) and a
timer publishes it, from the same sender, when its time comes. A ``$delayed/`` message that
did not come through a client's PUBLISH (the HTTP API) is checked there and dropped when
invalid.

Pending messages are kept in memory only: a restart or ``modules unload delayed`` drops them
(the log says how many).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ..config import DelayedSettings
from ..core.message import Message
from ..core.services import ClientInfo, TimerHandle
from ..hooks import Stop
from ..metrics import MESSAGES_DELAYED
from ..mqtt.packets import Properties
from ..mqtt.reasons import ReasonCode as RC
from .base import Module, ModuleContext

__all__ = ["MAX_DELAY", "PREFIX", "Delayed", "parse_delayed"]

log = logging.getLogger("mqttd.modules.delayed")

PREFIX = "$delayed/"
#: The longest delay, in seconds (EMQX's: 0xFFFFFFFF milliseconds).
MAX_DELAY = 4294967


def parse_delayed(topic: str) -> tuple[int, str] | None:
    """``$delayed/<seconds>/<topic>`` as (seconds, topic); None if it is not a valid one."""
    if not topic.startswith(PREFIX):
        return None
    number, sep, target = topic[len(PREFIX):].partition("/")
    if not sep or not target or not number.isascii() or not number.isdigit():
        return None
    delay = int(number)
    if delay > MAX_DELAY or target.startswith("$"):
        # "$SYS/...", "$share/..." or another "$delayed/...": never a destination.
        return None
    return delay, target


@dataclass(slots=True)
class Pending:
    """One delayed message waiting for its time."""

    id: int
    msg: Message
    delay: int
    #: Wall-clock time it was taken, and when it is due.
    received_at: float
    due_at: float
    timer: TimerHandle | None = None

    def row(self, now: float) -> dict[str, Any]:
        msg = self.msg
        return {"id": self.id, "topic": msg.topic, "qos": msg.qos, "retain": msg.retain,
                "from": msg.sender, "payload_size": len(msg.payload), "delay": self.delay,
                "remaining": max(0, round(self.due_at - now)),
                "publish_at": time.strftime("%Y-%m-%dT%H:%M:%S",
                                            time.localtime(self.due_at))}


class Delayed(Module):
    """Delayed publish: ``$delayed/<seconds>/<topic>``."""

    name = "delayed"
    description = "Delayed publish: $delayed/<seconds>/<topic>"

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        settings: DelayedSettings = ctx.settings.modules.delayed
        self.max = settings.max_delayed_messages
        self.pending: dict[int, Pending] = {}
        self._next_id = 1
        #: Zone topic prefixes: a mounted client's "$delayed/..." arrives as
        #: "<mountpoint>$delayed/...".
        self._mountpoints = sorted({z.mountpoint for z in ctx.settings.zones.values()
                                    if z.mountpoint}, key=len, reverse=True)
        metrics = ctx.metrics
        self._invalid = metrics.new("delayed.refused.invalid")
        self._full = metrics.new("delayed.refused.quota_exceeded")
        self._published = metrics.new("delayed.published")

    def load(self) -> None:
        self.hook("client.publish", self._check)
        self.hook("message.publish", self._take)

    def unload(self) -> None:
        super().unload()
        dropped = len(self.pending)
        for entry in self.pending.values():
            if entry.timer is not None:
                entry.timer.cancel()
        self.pending.clear()
        if dropped:
            log.warning("delayed module unloaded: %d pending delayed messages dropped",
                        dropped)

    def info(self) -> dict[str, Any]:
        metrics = self.ctx.metrics
        return {"pending": len(self.pending), "max_delayed_messages": self.max,
                "published": metrics.get(self._published),
                "refused_invalid": metrics.get(self._invalid),
                "refused_quota_exceeded": metrics.get(self._full)}

    # --- hooks -------------------------------------------------------------------------

    def _check(self, client: ClientInfo, props: Properties, topic: str) -> Any:
        """client.publish: refuse what cannot be delayed, before authorization."""
        if not topic.startswith(PREFIX):
            return None
        parsed = parse_delayed(topic)
        if parsed is None:
            self.ctx.metrics.inc(self._invalid)
            log.debug("client %s: %r is not $delayed/<0..%d>/<topic>", client.client_id,
                      topic, MAX_DELAY)
            return Stop(RC.TOPIC_NAME_INVALID)
        if self.max and len(self.pending) >= self.max:
            self.ctx.metrics.inc(self._full)
            return Stop(RC.QUOTA_EXCEEDED)
        code = self.ctx.broker.check_acl(client, "publish", parsed[1])
        return Stop(code) if code else None

    def _take(self, msg: Message) -> Any:
        """message.publish: keep a $delayed/ message for later (it is published no further)."""
        topic = msg.topic
        mount = ""
        if not topic.startswith(PREFIX):
            if not self._mountpoints or PREFIX not in topic:
                return None
            mount = next((m for m in self._mountpoints if topic.startswith(m + PREFIX)), "")
            if not mount:
                return None
            topic = topic[len(mount):]
        parsed = parse_delayed(topic)
        if parsed is None:  # not from a client's PUBLISH (checked there): dropped
            self.ctx.metrics.inc(self._invalid)
            log.info("message to %r dropped: not $delayed/<0..%d>/<topic>", msg.topic,
                     MAX_DELAY)
            return Stop(None)
        if self.max and len(self.pending) >= self.max:
            self.ctx.metrics.inc(self._full)
            log.info("delayed message to %r dropped: max_delayed_messages (%d) reached",
                     msg.topic, self.max)
            return Stop(None)
        delay, target = parsed
        now = time.time()
        entry = Pending(self._next_id, Message(mount + target, msg.payload, msg.qos,
                                               msg.retain, msg.properties, msg.sender),
                        delay, now, now + delay)
        self._next_id += 1
        entry.timer = self.ctx.timers.call_later(delay, self._due, entry.id)
        self.pending[entry.id] = entry
        self.ctx.metrics.inc(MESSAGES_DELAYED)
        return Stop(None)

    def _due(self, entry_id: int) -> None:
        entry = self.pending.pop(entry_id, None)
        if entry is None:
            return
        msg = entry.msg
        # Built now: its Message Expiry Interval counts from its publication, not its receipt.
        out = Message(msg.topic, msg.payload, msg.qos, msg.retain, msg.properties or None,
                      msg.sender)
        self.ctx.metrics.inc(self._published)
        self.ctx.broker.publish(out)

    # --- management ---------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Pending delayed messages, soonest first."""
        now = time.time()
        return [e.row(now) for e in sorted(self.pending.values(), key=lambda e: e.due_at)]

    def delete(self, entry_id: int) -> bool:
        """Drop one pending delayed message; False if there is none with that id."""
        entry = self.pending.pop(entry_id, None)
        if entry is None:
            return False
        if entry.timer is not None:
            entry.timer.cancel()
        return True

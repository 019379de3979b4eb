"""Delayed publish (EMQX's emqx_delayed): a PUBLISH to ``$delayed/<seconds>/<topic>`` is
published to ``<topic>`` that many seconds later.

One callback on ``client.publish.dollar`` does it: the channel runs that chain only for a
client's PUBLISH to a ``$``-topic, after authorizing it (so ``$delayed/`` costs every other
message nothing). A ``$delayed/`` topic without a whole number of seconds (0..4294967) and a
topic after it, or whose topic starts with ``$``, is refused with 0x90 (topic name invalid);
past ``max_delayed_messages`` with 0x97 (quota exceeded); and the client must also be allowed
to publish to the topic itself (the core checked ``$delayed/...``, as EMQX does), so
``$delayed/`` cannot carry a message where its sender may not publish. Otherwise the message
is taken (it reaches no ``$delayed/`` subscriber, and is acknowledged as reaching nobody,
0x10) and a timer publishes it, from the same sender, when its time comes. Wills and management's
publish (the HTTP API, ``ctl``) go through the same chain (``Broker.take_dollar``, the
clientinfo None) and are delayed alike; a will's real topic is authorized with its client
id alone (its client is gone), management's is not (the operator's).

With the durable store on, each pending message is also a record of the store's ``delayed``
space (``store/kv.py``): put when it is taken (during the PUBLISH, so that its PUBACK waits
for the commit, as every acknowledgement does), deleted when it is published or ``ctl
delayed del``eted. At load (the start) the records are read back and armed with the time
they have left; overdue ones are published at once. ``modules unload delayed`` then leaves
them in the store for the next load. Without the store they are in memory only: a restart or
an unload drops them (the log says how many).
"""

from __future__ import annotations

import logging
import marshal
import time
from dataclasses import dataclass
from typing import Any

from ..config import DelayedSettings
from ..core.message import Message
from ..core.services import ClientInfo, TimerHandle
from ..hooks import Stop
from ..metrics import MESSAGES_DELAYED
from ..mqtt.codec import Parser, encode_publish
from ..mqtt.packets import Publish
from ..mqtt.reasons import ReasonCode as RC
from ..store.kv import KVSpace
from .base import Module, ModuleContext

__all__ = ["MAX_DELAY", "PREFIX", "Delayed", "parse_delayed"]

log = logging.getLogger("mqttd.modules.delayed")

PREFIX = "$delayed/"
#: The longest delay, in seconds (EMQX's: 0xFFFFFFFF milliseconds).
MAX_DELAY = 4294967
#: The format of a stored record: marshal (fixed version) of (_RECORD, MQTT 5 PUBLISH packet,
#: sender, received_at, due_at, delay).
_RECORD = 1
_MARSHAL_VERSION = 4


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

    def record(self) -> bytes:
        """What the store keeps of it (``_RECORD``)."""
        msg = self.msg
        packet = encode_publish(msg.topic, msg.payload, msg.qos, msg.retain, False,
                                1 if msg.qos else 0, msg.properties, 5)
        return marshal.dumps((_RECORD, packet, msg.sender, self.received_at, self.due_at,
                              self.delay), _MARSHAL_VERSION)

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
        #: The pending messages' records in the store (None: durability off).
        self.stored: KVSpace | None = None
        #: Zone topic prefixes: a mounted client's "$delayed/..." arrives as
        #: "<mountpoint>$delayed/...".
        self._mountpoints = sorted({z.mountpoint for z in ctx.settings.zones.values()
                                    if z.mountpoint}, key=len, reverse=True)
        metrics = ctx.metrics
        self._invalid = metrics.new("delayed.refused.invalid")
        self._full = metrics.new("delayed.refused.quota_exceeded")
        self._published = metrics.new("delayed.published")

    def load(self) -> None:
        self.hook("client.publish.dollar", self._take)
        self.stored = self.ctx.kv(self.name)
        if self.stored is not None and self.stored.records:
            self._restore(self.stored)

    def _restore(self, stored: KVSpace) -> None:
        """Arm the stored pending messages with the time they have left (overdue: now)."""
        parser = Parser(max_packet_size=268_435_460, version=5)
        now = time.time()
        restored = overdue = 0
        for key, value in list(stored.records.items()):
            entry = _read(key, value, parser)
            if entry is None:
                log.warning("delayed: skipping unreadable stored record %r (deleted)", key)
                parser = Parser(max_packet_size=268_435_460, version=5)
                stored.delete(key)
                continue
            self.pending[entry.id] = entry
            self._next_id = max(self._next_id, entry.id + 1)
            left = entry.due_at - now
            overdue += left <= 0
            entry.timer = self.ctx.timers.call_later(max(0.0, left), self._due, entry.id)
            restored += 1
        log.info("delayed: %d pending delayed messages restored from the store (%d overdue, "
                 "published now)", restored, overdue)

    def unload(self) -> None:
        super().unload()
        dropped = len(self.pending)
        for entry in self.pending.values():
            if entry.timer is not None:
                entry.timer.cancel()
        self.pending.clear()
        if dropped and self.stored is not None:
            log.warning("delayed module unloaded: %d pending delayed messages stay in the "
                        "store until it is loaded again", dropped)
        elif dropped:
            log.warning("delayed module unloaded: %d pending delayed messages dropped",
                        dropped)
        self.stored = None

    def info(self) -> dict[str, Any]:
        metrics = self.ctx.metrics
        return {"pending": len(self.pending), "max_delayed_messages": self.max,
                "published": metrics.get(self._published),
                "refused_invalid": metrics.get(self._invalid),
                "refused_quota_exceeded": metrics.get(self._full)}

    # --- hooks -------------------------------------------------------------------------

    def _take(self, client: ClientInfo | None, msg: Message) -> Any:
        """client.publish.dollar: keep a $delayed/ message for later (it is published no
        further), or refuse it. ``client`` is None for a will or management's publish."""
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
        if parsed is None:
            self.ctx.metrics.inc(self._invalid)
            log.debug("%s: %r is not $delayed/<0..%d>/<topic>",
                      f"client {msg.sender}" if msg.sender else "management", topic, MAX_DELAY)
            return Stop(RC.TOPIC_NAME_INVALID)
        if (self.max and len(self.pending) >= self.max) or (
                self.stored is not None and self.stored.full):
            # (The store full: it cannot be kept, as other QoS 1/2 messages are refused.)
            self.ctx.metrics.inc(self._full)
            return Stop(RC.QUOTA_EXCEEDED)
        delay, target = parsed
        if client is None and msg.sender is not None:
            # A will: its client is gone, and with it the credentials its $delayed/ topic
            # was authorized with at CONNACK; the real topic is checked with its client id
            # alone (a rule that needs the username refuses it: never more than allowed).
            client = ClientInfo(msg.sender, None, "")
        if client is not None:  # (management's publish is the operator's: not checked)
            code = self.ctx.broker.check_acl(client, "publish", target)
            if code:
                return Stop(code)
        now = time.time()
        entry = Pending(self._next_id, Message(mount + target, msg.payload, msg.qos,
                                               msg.retain, msg.properties, msg.sender),
                        delay, now, now + delay)
        self._next_id += 1
        entry.timer = self.ctx.timers.call_later(delay, self._due, entry.id)
        self.pending[entry.id] = entry
        if self.stored is not None:  # during the PUBLISH: its PUBACK waits for the commit
            self.stored.put(str(entry.id), entry.record())
        self.ctx.metrics.inc(MESSAGES_DELAYED)
        return Stop(None)

    def _due(self, entry_id: int) -> None:
        entry = self.pending.pop(entry_id, None)
        if entry is None:
            return
        if self.stored is not None:  # committed with what the publication stores
            self.stored.delete(str(entry_id))
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
        if self.stored is not None:
            self.stored.delete(str(entry_id))
            self.stored.commit_now()  # in the operation log before the operator is answered
        return True


def _read(key: str, value: bytes, parser: Parser) -> Pending | None:
    """A stored record back into a pending message; None if it cannot be read."""
    try:
        record = marshal.loads(value)
        version, packet, sender, received_at, due_at, delay = record
        if version != _RECORD or not key.isdigit():
            return None
        packets = parser.feed(packet)
    except Exception:  # corrupt or from another version: skipped, and said
        return None
    if len(packets) != 1 or not isinstance(packets[0], Publish) \
            or not isinstance(sender, (str, type(None))):
        return None
    p = packets[0]
    msg = Message(p.topic, p.payload, p.qos, p.retain, p.properties, sender)
    return Pending(int(key), msg, int(delay), float(received_at), float(due_at))

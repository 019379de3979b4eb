"""Retained messages (EMQX's emqx_retainer management): list, show, clean.

Showing or cleaning by a wildcard looks at every stored topic; that scan
yields to the event loop as it goes, so a large store never stalls clients.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import TYPE_CHECKING

from ..mqtt.topics import filter_error, is_wildcard, match
from .errors import InvalidArgument, NotFound
from .listing import Listing, Row, iso, scan

if TYPE_CHECKING:
    from ..core.message import Message
    from ..core.retainer import Retainer

__all__ = ["Retained", "payload_fields"]

log = logging.getLogger("mqttd.mgmt")


def payload_fields(payload: bytes) -> Row:
    """A payload as JSON can carry it: UTF-8 text (None if it is not) and base64."""
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"payload": text, "payload_base64": base64.b64encode(payload).decode()}


class Retained:
    """The node's retained store."""

    def __init__(self, retainer: Retainer) -> None:
        self.retainer = retainer

    def all(self) -> Listing[str]:
        """Every retained message, without payloads (a snapshot of the topics)."""
        return Listing(self.retainer.topics(), self._row)

    def _row(self, topic: str) -> Row | None:
        msg = self.retainer.get(topic)
        if msg is None:
            return None  # deleted or expired since the snapshot
        return {"topic": msg.topic, "qos": msg.qos, "payload_size": len(msg.payload),
                "from": msg.sender, "stored_at": iso(msg.timestamp),
                "expires_in": msg.remaining_expiry(time.monotonic()) if msg.expiry else None}

    async def show(self, topic: str) -> list[Row]:
        """The retained message of a topic, or of every topic a filter matches, with
        payload and properties; NotFound("retained") if there is none."""
        messages = await self._matching(topic)
        if not messages:
            raise NotFound("retained", topic)
        now = time.monotonic()
        return [{"topic": m.topic, "qos": m.qos, "from": m.sender, "stored_at": iso(m.timestamp),
                 "expires_in": m.remaining_expiry(now) if m.expiry else None,
                 "payload_size": len(m.payload), "properties": m.properties,
                 **payload_fields(m.payload)} for m in messages]

    async def _matching(self, topic: str) -> list[Message]:
        if not is_wildcard(topic):
            msg = self.retainer.get(topic)
            return [msg] if msg is not None else []
        found: list[Message] = []

        def check(t: str) -> None:
            if match(topic, t):
                msg = self.retainer.get(t)
                if msg is not None:
                    found.append(msg)

        await scan(self.retainer.topics(), check)
        return found

    async def clean(self, topic: str | None = None, *, by: str = "management") -> int:
        """Delete every retained message (but the broker's own ``$SYS`` ones), or those of a
        topic or filter; returns how many."""
        retainer = self.retainer
        if topic is None:
            # The broker's own $SYS values are not the operator's data: kept, or a
            # dashboard would see no version or load until the next $SYS round.
            own = [m for t in retainer.topics() if t.startswith("$SYS/")
                   if (m := retainer.get(t)) is not None]
            n = retainer.clear() - len(own)
            for msg in own:
                retainer.restore(msg)
        else:
            problem = filter_error(topic)
            if problem:
                raise InvalidArgument(f"bad topic {topic!r}: {problem}")
            if is_wildcard(topic):
                count = 0

                def drop(t: str) -> None:
                    nonlocal count
                    if match(topic, t) and retainer.delete(t):
                        count += 1

                await scan(retainer.topics(), drop)
                n = count
            else:
                n = 1 if retainer.delete(topic) else 0
        log.info("%d retained messages cleaned by %s", n, by)
        return n

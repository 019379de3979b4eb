"""Retained messages (EMQX's emqx_retainer): the last retained message per topic."""

from __future__ import annotations

import time

from ..mqtt.topics import match
from ..stats import Stats
from .message import Message
from .services import SessionStore


class Retainer:
    """Topic -> its retained message. An empty payload deletes."""

    def __init__(self) -> None:
        self._store: dict[str, Message] = {}
        #: The durable store (None: durability off); ``$SYS`` topics are not kept in it:
        #: the node publishes them anew after a start.
        self.durable: SessionStore | None = None
        #: The broker's own ``$SYS`` topics among them (not the clients': ``clients_count``).
        self._sys: set[str] = set()

    def __len__(self) -> int:
        return len(self._store)

    def clients_count(self) -> int:
        """Retained messages that are not the broker's own ``$SYS`` values (the retainer
        limits count these)."""
        return len(self._store) - len(self._sys)

    def store(self, msg: Message) -> None:
        durable = self.durable
        topic = msg.topic
        sys = topic.startswith("$SYS/")
        if msg.payload:
            self._store[topic] = msg
            if sys:
                self._sys.add(topic)
            elif durable is not None:
                durable.retain(msg)
        elif self._store.pop(topic, None) is not None:
            if sys:
                self._sys.discard(topic)
            elif durable is not None:
                durable.unretain(topic)

    def restore(self, msg: Message) -> None:
        """A retained message read back from the durable store at start (or kept through
        a clean)."""
        self._store[msg.topic] = msg
        if msg.topic.startswith("$SYS/"):
            self._sys.add(msg.topic)

    def _expired(self, topic: str) -> None:
        del self._store[topic]
        self._sys.discard(topic)
        if self.durable is not None:
            self.durable.unretain(topic)

    def get(self, topic: str) -> Message | None:
        msg = self._store.get(topic)
        if msg is not None and msg.expired(time.monotonic()):
            self._expired(topic)
            return None
        return msg

    def match(self, topic_filter: str) -> list[Message]:
        """Unexpired retained messages whose topic matches ``topic_filter``."""
        now = time.monotonic()
        if "+" not in topic_filter and "#" not in topic_filter:
            msg = self.get(topic_filter)
            return [msg] if msg is not None else []
        found = []
        expired = []
        for topic, msg in self._store.items():
            if match(topic_filter, topic):
                if msg.expired(now):
                    expired.append(topic)
                else:
                    found.append(msg)
        for topic in expired:
            self._expired(topic)
        return found

    def register_stats(self, stats: Stats) -> None:
        """Keep the number of retained messages in the node's stats (every second)."""
        stats.update_interval("retainer", lambda: {"retained": len(self._store)})

    def topics(self) -> list[str]:
        return list(self._store)

    def delete(self, topic: str) -> bool:
        if self._store.pop(topic, None) is None:
            return False
        self._sys.discard(topic)
        if self.durable is not None:
            self.durable.unretain(topic)
        return True

    def clear(self) -> int:
        n = len(self._store)
        self._store.clear()
        self._sys.clear()
        if self.durable is not None:
            self.durable.clear_retained()
        return n

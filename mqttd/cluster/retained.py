"""Retained messages replicated through a JetStream key-value bucket (docs/CLUSTER.md,
"Retained messages").

Every node keeps its full local copy (the core's :class:`~mqttd.core.retainer.Retainer`,
so a subscriber is served from memory with no NATS hop) and writes each retained message
its clients publish into the bucket, one key per topic (the last value only). A node
watches the bucket: what it holds is loaded when the node joins, and every later change
another node writes is applied as it comes. A deleted retained message is a tombstone
value (so that it carries its writer like any other); the Message Expiry Interval is kept
as a wall-clock deadline, honoured by every node.

Ordering: the bucket orders the writes to a key. A node ignores the entries of a topic it
has written and whose own write has not come back from the watch yet (they are ordered
before that write), so every node ends with the bucket's last value.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from ..core.message import Message
from ..core.retainer import Retainer
from .wire import props_in, props_out

log = logging.getLogger("mqttd.cluster")

__all__ = ["RetainedSync", "topic_key"]

#: Longest key written (bytes of the encoded topic): it travels in a subject.
_MAX_KEY = 3000

#: Seconds the first read of the bucket may wait for the next entry.
_LOAD_WAIT = 30.0


def topic_key(topic: str) -> str:
    """The bucket key of ``topic``: URL-safe base64 of its UTF-8 (keys allow only
    ``[-/_=.a-zA-Z0-9]``; this one is total and reversible)."""
    return base64.urlsafe_b64encode(topic.encode()).decode()


def key_topic(key: str) -> str:
    return base64.urlsafe_b64decode(key.encode()).decode()


class RetainedSync:
    """This node's side of the replicated retained messages."""

    def __init__(self, bucket: str, retainer: Retainer, origin: str) -> None:
        self.bucket = bucket
        self.retainer = retainer
        self.origin = origin
        self.kv: KeyValue | None = None
        #: topic -> sequence of this node's writes still to make (in order, one per topic).
        self._queue: dict[str, int] = {}
        #: topic -> sequence of this node's last write not yet seen back in the watch.
        self._pending: dict[str, int] = {}
        self._seq = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: Counters: entries loaded at join, entries applied from other nodes, writes.
        self.loaded = 0
        self.applied = 0
        self.sent = 0
        self.failed = 0
        #: Why the bucket cannot be used ("" while it can, or before the node joined).
        self.error = ""

    def changed(self, topic: str) -> None:
        """A retained message was published (or deleted) on ``topic`` here."""
        if topic.startswith("$SYS/") or len(topic) * 2 > _MAX_KEY:
            return
        self._seq += 1
        self._queue.pop(topic, None)  # one write per topic, of its latest value
        self._queue[topic] = self._seq
        self._pending[topic] = self._seq
        self._wake.set()

    async def start(self, nc: NatsClient) -> None:
        """Open (or create) the bucket, load what it holds, push what only this node
        holds, then follow it."""
        js = nc.jetstream()
        try:
            kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(bucket=self.bucket, history=1)
        watcher = await kv.watchall()
        seen: set[str] = set()
        while True:
            entry = await watcher.updates(timeout=_LOAD_WAIT)  # type: ignore[no-untyped-call]
            if entry is None:
                break  # the end of what the bucket held
            topic = self._apply(entry)
            if topic is not None:
                seen.add(topic)
                self.loaded += 1
        self.applied = 0
        for topic in self.retainer.topics():
            if topic not in seen and not topic.startswith("$SYS/"):
                self.changed(topic)  # held here only (a node that was alone): share it
        self.kv = kv
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow(watcher)),
                       loop.create_task(self._write())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        self.kv = None

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._apply(entry)

    def _apply(self, entry: KeyValue.Entry) -> str | None:
        """Apply one entry of the bucket; the topic, or None if it is not one of ours."""
        try:
            topic = key_topic(entry.key)
            data = entry.value or b""
            head, _, payload = data.partition(b"\n")
            meta: dict[str, Any] = json.loads(head) if head else {}
            origin = meta.get("o")
            seq = int(meta.get("s", 0))
        except (ValueError, TypeError, UnicodeDecodeError) as err:
            log.warning("cluster: retained entry %.64s is not an mqttd node's: %s",
                        entry.key, err)
            return None
        pending = self._pending.get(topic)
        if origin == self.origin:
            if pending is not None and seq >= pending:
                del self._pending[topic]  # our last write came back: in step again
            return topic
        if pending is not None:
            return topic  # ordered before our own write to it, still on its way back
        if not meta or meta.get("d") or not payload:
            self.retainer.delete(topic)
        else:
            props = props_in(meta["p"]) if meta.get("p") else {}
            expires = float(meta.get("e", 0))
            if expires:
                left = expires - time.time()
                if left <= 0:
                    self.retainer.delete(topic)
                    return topic
                props["message_expiry_interval"] = max(1, math.ceil(left))
            self.retainer.store(Message(topic, payload, int(meta.get("q", 0)), True,
                                        props or None, meta.get("f")))
        self.applied += 1
        return topic

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self.kv is not None:
                topic = next(iter(self._queue))
                seq = self._queue.pop(topic)
                try:
                    await self.kv.put(topic_key(topic), self._value(topic, seq))
                    self.sent += 1
                except Exception as err:  # noqa: BLE001 - retried while NATS is away
                    self.failed += 1
                    if topic not in self._queue:
                        self._queue[topic] = seq
                    log.debug("cluster: retained %.64s not written: %s", topic, err)
                    await asyncio.sleep(1.0)

    def _value(self, topic: str, seq: int) -> bytes:
        msg = self.retainer.get(topic)
        meta: dict[str, Any] = {"o": self.origin, "s": seq}
        if msg is None:
            meta["d"] = 1
            return json.dumps(meta, separators=(",", ":")).encode()
        meta["q"] = msg.qos
        meta["f"] = msg.sender
        if msg.expiry:
            meta["e"] = round(time.time() + (msg.expiry - time.monotonic()), 3)
        if msg.properties:
            props = {k: v for k, v in msg.properties.items()
                     if k != "message_expiry_interval"}
            if props:
                meta["p"] = props_out(props, None)
        return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + msg.payload

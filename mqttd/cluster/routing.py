"""Routing between nodes over core NATS (docs/CLUSTER.md): EMQX's route table as subject
interest.

The node subscribes once per distinct filter that has local subscribers (the router tells
it when a filter gains its first or loses its last), publishes each message its clients
publish on the topic's subject after delivering it locally, and hands what other nodes
publish to the local dispatcher, never to the broker (so it is never forwarded again). The
connection is made with ``no_echo``: a node never gets its own publishes back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..config import ClusterSettings
from ..core.dispatch import Dispatcher
from ..core.message import Message
from .subjects import SubjectError, decode_topic, encode_filter, encode_topic

log = logging.getLogger("mqttd.cluster")

__all__ = ["Cluster"]

#: Sequence numbers remembered per origin for deduplication: a message matching several of
#: a node's filters arrives once per NATS subscription, and each subscription's callbacks
#: run in their own task, so copies may interleave with neighbouring messages.
_WINDOW = 4096

#: Longest subject sent (bytes): the PUB line must fit nats-server's max_control_line
#: (4 KiB by default), or the server closes the whole connection.
_MAX_SUBJECT = 3584

#: Messages waiting for the sender at most; more are dropped (counted in ``failed``).
_MAX_QUEUED = 100_000


class _Seen:
    """The (origin, sequence) pairs a node has dispatched, per origin: a window of
    recent sequence numbers (anything older counts as seen)."""

    __slots__ = ("high", "recent")

    def __init__(self) -> None:
        self.high = 0
        self.recent: set[int] = set()

    def first_time(self, seq: int) -> bool:
        if seq <= self.high - _WINDOW or seq in self.recent:
            return False
        self.recent.add(seq)
        if seq > self.high:
            self.high = seq
        if len(self.recent) > 2 * _WINDOW:
            floor = self.high - _WINDOW
            self.recent = {s for s in self.recent if s > floor}
        return True


def _props_out(props: dict[str, Any], remaining: int | None) -> str:
    out: dict[str, Any] = {}
    for key, value in props.items():
        if isinstance(value, bytes):
            out[key] = {"b": base64.b64encode(value).decode()}
        elif isinstance(value, list):
            out[key] = [list(v) if isinstance(v, tuple) else v for v in value]
        else:
            out[key] = value
    if remaining is not None:
        out["message_expiry_interval"] = max(remaining, 1)
    return json.dumps(out, separators=(",", ":"))


def _props_in(text: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key, value in json.loads(text).items():
        if isinstance(value, dict):
            props[key] = base64.b64decode(value["b"])
        elif key == "user_property":
            props[key] = [tuple(v) for v in value]
        else:
            props[key] = value
    return props


class Cluster:
    """This node's part in the cluster: its NATS connection, its subscriptions (one per
    distinct local filter) and the messages going out and coming in."""

    def __init__(self, settings: ClusterSettings, node_name: str, dispatcher: Dispatcher
                 ) -> None:
        self.settings = settings
        self.node_name = node_name
        #: node name plus a per-start tag: sequence numbers start again at each start.
        self.origin = f"{node_name}#{os.urandom(4).hex()}"
        self.dispatcher = dispatcher
        self.nc: NatsClient | None = None
        #: filter -> its NATS subscription (None while the SUB is on its way).
        self._subs: dict[str, Subscription | None] = {}
        #: Work for the sender, in order: ("sub", filter), ("unsub", filter),
        #: ("pub", subject, payload, headers).
        self._ops: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        self._seq = 0
        self._seen: dict[str, _Seen] = {}
        #: Counters for the log and, later, ctl: messages out, in, duplicates dropped,
        #: messages that could not be sent.
        self.sent = 0
        self.received = 0
        self.duplicates = 0
        self.failed = 0
        self._closing = False

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    # --- from the core (synchronous) ------------------------------------------------

    def route_changed(self, topic_filter: str, added: bool) -> None:
        """The router's hook: ``topic_filter`` gained its first local subscriber (added)
        or lost its last."""
        if self.nc is None:
            return  # not (yet) connected: the routes are read when the connection opens
        self._ops.append(("sub" if added else "unsub", topic_filter))
        self._wake.set()

    def forward(self, msg: Message) -> None:
        """The broker's hook, after local delivery: send ``msg`` to the nodes that want it
        (NATS drops it when none does)."""
        if self.nc is None or msg.topic.startswith("$SYS/"):
            return  # each node's $SYS is its own
        if len(self._ops) >= _MAX_QUEUED:
            # NATS is not keeping up (or the connection is down and its buffer full): drop
            # rather than hold every message in memory; local delivery already happened.
            self.failed += 1
            return
        subject = encode_topic(msg.topic)
        if len(subject) > _MAX_SUBJECT and len(subject.encode()) > _MAX_SUBJECT:
            self.failed += 1
            log.warning("cluster: topic %.64s... is too long to cross nodes", msg.topic)
            return
        self._seq += 1
        meta: list[Any] = [msg.qos, msg.retain, msg.sender]
        headers = {"Mqttd-Origin": self.origin, "Mqttd-Seq": str(self._seq),
                   "Mqttd-Meta": json.dumps(meta, separators=(",", ":"))}
        if msg.properties or msg.expiry:
            # The expiry left, not the one published: the receiver counts from now.
            remaining = msg.remaining_expiry(time.monotonic()) \
                if msg.expiry else None
            headers["Mqttd-Props"] = _props_out(dict(msg.properties), remaining)
        self._ops.append(("pub", subject, msg.payload, headers))
        self._wake.set()

    # --- the connection -----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, subscribe to the node's filters, then send what the core hands over
        until cancelled. An unreachable NATS at start leaves the node single (logged)."""
        url = self.settings.nats_url
        try:
            # The first connection gets one retry, soon: a node whose NATS is not there
            # starts alone at once rather than after nats-py's minutes of attempts.
            timeout = self.settings.connect_timeout
            nc = await asyncio.wait_for(nats.connect(
                servers=[url], name=self.node_name, no_echo=True, connect_timeout=timeout,
                max_reconnect_attempts=1, reconnect_time_wait=0.1, error_cb=self._error,
                disconnected_cb=self._disconnected, reconnected_cb=self._reconnected),
                2 * timeout + 1)
        except Exception as err:  # noqa: BLE001 - any failure means the same: run alone
            log.warning("cluster: cannot reach NATS at %s (%s): running as a single node",
                        url, err or type(err).__name__)
            return
        # Once connected, a lost connection is retried for ever (nats-py re-sends the
        # subscriptions itself when it is back).
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = 2.0
        self.nc = nc
        routes = list(self.dispatcher.router.routes)
        self._ops[:0] = [("sub", f) for f in routes]
        log.info("cluster: node %s joined through NATS at %s (%d routes)", self.node_name,
                 url, len(routes))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                ops, self._ops = self._ops, []
                for op in ops:
                    await self._apply(nc, op)
        finally:
            self.nc = None
            self._closing = True
            await nc.close()

    async def _apply(self, nc: NatsClient, op: tuple[Any, ...]) -> None:
        kind = op[0]
        try:
            if kind == "pub":
                await nc.publish(op[1], op[2], headers=op[3])
                self.sent += 1
            elif kind == "sub":
                topic_filter = op[1]
                subject = encode_filter(topic_filter)
                if len(subject.encode()) > _MAX_SUBJECT:
                    raise ValueError("the filter is too long to subscribe to across nodes")
                if topic_filter not in self._subs:
                    self._subs[topic_filter] = None
                    self._subs[topic_filter] = await nc.subscribe(subject,
                                                                  cb=self._received)
            else:
                sub = self._subs.pop(op[1], None)
                if sub is not None:
                    await sub.unsubscribe()
        except Exception as err:  # noqa: BLE001 - one message or route, not the node
            self.failed += 1
            log.warning("cluster: %s %.64s failed: %s", kind, op[1],
                        err or type(err).__name__)

    async def _received(self, m: Msg) -> None:
        headers = m.headers or {}
        try:
            origin = headers["Mqttd-Origin"]
            seq = int(headers["Mqttd-Seq"])
            qos, retain, sender = json.loads(headers["Mqttd-Meta"])
            props = _props_in(headers["Mqttd-Props"]) if "Mqttd-Props" in headers else None
            topic = decode_topic(m.subject)
        except (KeyError, ValueError, TypeError, SubjectError) as err:
            log.warning("cluster: a message on %s is not an mqttd node's: %s", m.subject, err)
            return
        seen = self._seen.get(origin)
        if seen is None:
            seen = self._seen[origin] = _Seen()
        if not seen.first_time(seq):
            self.duplicates += 1
            return
        self.received += 1
        # Straight to the dispatcher: the message.publish hook ran on its origin node, the
        # retained store is each node's own (replicated in a later slice), and a message
        # from another node is never forwarded again.
        self.dispatcher.publish(Message(topic, m.data, qos, bool(retain), props, sender),
                                store_retained=False)

    async def _error(self, err: Exception) -> None:
        log.debug("cluster: NATS: %s", err)

    async def _disconnected(self) -> None:
        if self._closing:
            return
        log.warning("cluster: lost the connection to NATS; serving local traffic only "
                    "until it is back")

    async def _reconnected(self) -> None:
        log.info("cluster: connected to NATS again")

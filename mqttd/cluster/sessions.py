"""The cluster's session registry: client id -> owning node in a JetStream key-value bucket,
changed only by compare-and-set, and takeover across nodes (docs/CLUSTER.md, "Sessions").

When a client connects, its node claims the client id with the time of the CONNECT: it
creates the key, or replaces the value it read at that revision (a concurrent claim makes
one of the two fail; the loser reads again). A claim whose CONNECT is older than the owner's
it read does not replace it: its own connection is the one taken over. So the newest
CONNECT wins (by the nodes' clocks), whatever order the claims reach the bucket in. A node
that displaces another tells it on ``mqttd.c.takeover.<its id>`` with the revision of the
new claim; the old node closes its connection for that client with DISCONNECT 0x8E (Session
taken over) and ends its session there (its will goes as for any ended session). A node
ignores a takeover older than its own latest claim, and any while a claim of its own for
that client is still on its way (that claim is the newer CONNECT and is compared in turn).
A session that ends on its owner deletes the key (compare-and-set again: only if it is
still that claim).

The CONNACK does not wait for the claim: on a single node a second connection takes over at
once; across nodes the old connection is closed a NATS round trip or two later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from ..core.registry import Registry
from ..core.services import ClientInfo
from ..core.session import Session
from ..mqtt.reasons import ReasonCode as RC
from .retained import topic_key

log = logging.getLogger("mqttd.cluster")

__all__ = ["TAKEOVER", "SessionRegistry"]

#: + the owning node's id: "a claim of mine displaced yours".
TAKEOVER = "mqttd.c.takeover."

#: Compare-and-set attempts per claim before giving up (each failure means another node
#: wrote between our read and our write).
_ATTEMPTS = 10


class SessionRegistry:
    """This node's side of the cluster's session registry."""

    def __init__(self, bucket: str, node_name: str, node_id: str, registry: Registry) -> None:
        self.bucket = bucket
        self.node_name = node_name
        self.node_id = node_id
        self.registry = registry
        self.kv: KeyValue | None = None
        self.nc: NatsClient | None = None
        #: client id -> revision of this node's latest completed claim.
        self._claims: dict[str, int] = {}
        #: client id -> claims of it queued or on their way.
        self._pending: dict[str, int] = {}
        #: Work in order: ("claim" | "release" | "adopt", client id, CONNECT time).
        self._work: list[tuple[str, str, float]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.error = ""
        #: Counters: claims made, other nodes' connections displaced, our connections or
        #: sessions taken over by other nodes, claims given up.
        self.claimed = 0
        self.displaced = 0
        self.taken_over = 0
        self.failed = 0

    # --- hooks (synchronous, from the core) ---------------------------------------------

    def connected(self, info: ClientInfo, *_: Any) -> None:
        """client.connected: claim the client id for this node."""
        if self._task is None:
            return  # not joined: the sessions the node has then are claimed when it joins
        cid = info.client_id
        self._pending[cid] = self._pending.get(cid, 0) + 1
        self._push("claim", cid, time.time())

    def ended(self, session: Session, *_: Any) -> None:
        """session.terminated / session.discarded: give the client id up if it is ours."""
        cid = session.client_id
        if self._task is not None and (cid in self._claims or cid in self._pending):
            self._push("release", cid, 0.0)

    def _push(self, kind: str, cid: str, at: float) -> None:
        self._work.append((kind, cid, at))
        self._wake.set()

    # --- the bucket -----------------------------------------------------------------------

    async def start(self, nc: NatsClient) -> None:
        """Open (or create) the bucket, claim the sessions this node restored (those no
        other node holds), then work."""
        js = nc.jetstream()
        try:
            kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(bucket=self.bucket, history=1)
        self.kv, self.nc = kv, nc
        await nc.subscribe(TAKEOVER + self.node_id, cb=self._takeover)
        # What connected before the node joined: claimed unless another node holds it.
        self._work = [("adopt", cid, 0.0) for cid in self.registry.sessions]
        self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.kv = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._work:
                kind, cid, at = self._work.pop(0)
                try:
                    if kind == "claim":
                        await self._claim(cid, at, adopt=False)
                    elif kind == "adopt":
                        await self._claim(cid, at, adopt=True)
                    else:
                        await self._release(cid)
                except Exception as err:  # noqa: BLE001 - one client, not the registry
                    self.failed += 1
                    log.warning("cluster: session registry: %s %s failed: %s", kind, cid,
                                err or type(err).__name__)
                finally:
                    if kind == "claim":
                        left = self._pending.get(cid, 1) - 1
                        if left > 0:
                            self._pending[cid] = left
                        else:
                            self._pending.pop(cid, None)

    async def _claim(self, cid: str, at: float, adopt: bool) -> None:
        kv = self.kv
        assert kv is not None
        key = topic_key(cid)
        value = json.dumps({"node": self.node_name, "id": self.node_id, "at": at},
                           separators=(",", ":")).encode()
        for _ in range(_ATTEMPTS):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                entry = None
            try:
                if entry is None:
                    rev = await kv.create(key, value)
                    previous: dict[str, Any] = {}
                else:
                    previous = json.loads(entry.value or b"{}")
                    if adopt:
                        return  # another node holds it: leave ours as it is
                    if previous.get("id") != self.node_id and \
                            float(previous.get("at", 0)) > at:
                        self._lost(cid, str(previous.get("node")))
                        return
                    rev = await kv.update(key, value, last=entry.revision)
            except KeyWrongLastSequenceError:
                continue  # another node wrote in between: read again
            self._claims[cid] = int(rev)
            self.claimed += 1
            owner = previous.get("id")
            if owner and owner != self.node_id and self.nc is not None:
                self.displaced += 1
                await self.nc.publish(TAKEOVER + str(owner), json.dumps(
                    {"client": cid, "rev": int(rev), "node": self.node_name},
                    separators=(",", ":")).encode())
            return
        raise RuntimeError(f"gave up after {_ATTEMPTS} concurrent writes")

    def _lost(self, cid: str, node: str) -> None:
        """The client connected to ``node`` after it connected here: this connection is the
        one taken over (unless a newer one here has a claim on its way)."""
        if self._pending.get(cid, 0) > 1:
            return
        self._end_here(cid, node)

    def _end_here(self, cid: str, node: str) -> None:
        self._claims.pop(cid, None)
        registry = self.registry
        kicked = registry.kick(cid, RC.SESSION_TAKEN_OVER, f"session taken over by node {node}")
        session = registry.sessions.get(cid)
        if session is not None:
            registry.discard(session, "discarded")
        if kicked or session is not None:
            self.taken_over += 1
            log.info("cluster: client %s taken over by node %s", cid, node)

    async def _release(self, cid: str) -> None:
        if self._pending.get(cid) or cid in self.registry.sessions:
            return  # connected again meanwhile: that claim stands
        rev = self._claims.pop(cid, None)
        if rev is None or self.kv is None:
            return
        try:
            await self.kv.delete(topic_key(cid), last=rev)
        except KeyWrongLastSequenceError:
            pass  # another node claimed it since: theirs now

    async def _takeover(self, m: Msg) -> None:
        try:
            data = json.loads(m.data)
            cid, rev, node = str(data["client"]), int(data["rev"]), str(data["node"])
        except (ValueError, KeyError, TypeError) as err:
            log.warning("cluster: a takeover message is not an mqttd node's: %s", err)
            return
        if self._pending.get(cid):
            return  # our own newer claim is on its way: it displaces theirs
        mine = self._claims.get(cid)
        if mine is not None and mine >= rev:
            return  # older than our latest claim
        self._end_here(cid, node)

"""The cluster's session registry: client id -> owning node in a JetStream key-value bucket,
changed only by compare-and-set, and takeover across nodes (docs/CLUSTER.md, "Sessions").

When a client connects, its node claims the client id with the time of the CONNECT: it
creates the key, or replaces the value it read at that revision (a concurrent claim makes
one of the two fail; the loser reads again). A claim whose CONNECT is older than the owner's
it read does not replace it: its own connection is the one taken over. So the newest
CONNECT wins (by the nodes' clocks), whatever order the claims reach the bucket in. A node
that displaces another tells it on ``mqttd.c.takeover.<its id>`` with the revision of the
new claim; the old node closes its connection for that client with DISCONNECT 0x8E (Session
taken over) and ends any session it still holds there (its will goes as for any ended
session). A CONNECT that resumes a session (clean start 0) has it handed over first: the
new node asks the owner on ``mqttd.c.handover.<its id>`` before its CONNACK, installs what
it gets, commits it to its store and confirms; only then does the old node drop its copy
(docs/CLUSTER.md, "Session hand-over"). A persistent session is refused (0x88) while the
bucket cannot be written. A node
ignores a takeover older than its own latest claim. One that comes while a claim of its own
for that client is on its way waits until no claim of it is pending (that claim may already
be in the bucket, displaced, its answer unread): it then ends the connection here unless the
node's latest claim was written after it.
A session that ends on its owner deletes the key (compare-and-set again: only if it is
still that claim).

Wills: a connected client's will is also kept in the bucket (key ``will.<client id>``, with
the node's id) until its connection ends on its node, which then deals with it as a single
node does. When a node is counted down after missed heartbeats (it died: it could not), the
survivors publish the wills it held: each deletes the entry by compare-and-set first, so
exactly one survivor publishes each will.

The CONNACK does not wait for the claim: on a single node a second connection takes over at
once; across nodes the old connection is closed a NATS round trip or two later.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from ..core.message import Message
from ..core.registry import Registry
from ..core.services import ClientInfo
from ..core.session import Session
from ..mqtt.reasons import ReasonCode as RC
from ..store.journal import Journal
from ..store.restore import _resolve_shares
from .handover import parts, session_from
from .membership import Membership
from .retained import key_topic, topic_key
from .wire import props_in, props_out

log = logging.getLogger("mqttd.cluster")

__all__ = ["HANDOVER", "TAKEOVER", "SessionRegistry"]

#: + the owning node's id: "a claim of mine displaced yours".
TAKEOVER = "mqttd.c.takeover."

#: + the owning node's id: "hand me the session of this client id" (answered in parts on
#: the request's reply subject), then "I have it (committed): drop yours".
HANDOVER = "mqttd.c.handover."

#: The bucket's keys of wills: this prefix + the client id's key.
WILL = "will."

#: Compare-and-set attempts per claim before giving up (each failure means another node
#: wrote between our read and our write).
_ATTEMPTS = 10


class Relaying(Protocol):
    """The cluster's relay of messages for a session on its way to another node
    (docs/CLUSTER.md, "Messages published while the session moves")."""

    def relay_start(self, cid: str, to_id: str, to_name: str, filters: list[str]) -> None: ...
    def relay_committed(self, cid: str) -> None: ...
    def relay_end(self, cid: str) -> None: ...
    def incoming(self, cid: str) -> None: ...
    def installed(self, cid: str, owner_id: str, ok: bool) -> None: ...


class SessionRegistry:
    """This node's side of the cluster's session registry."""

    def __init__(self, bucket: str, node_name: str, node_id: str, registry: Registry,
                 publish: Callable[[Message], object] | None = None,
                 handover_timeout: float = 5.0) -> None:
        self.bucket = bucket
        #: The other nodes as this node sees them (set by the cluster): a session is asked
        #: for only from a node that is up.
        self.members: Membership | None = None
        self.handover_timeout = handover_timeout
        #: The cluster (set by it): the old node relays what it gets for a session moving.
        self.relays: Relaying | None = None
        #: client id -> (session handed out, waiting for the other node's confirmation;
        #: the timer that takes it back without one).
        self._handing: dict[str, tuple[Session, asyncio.TimerHandle]] = {}
        self._fetches: set[asyncio.Task[None]] = set()
        #: time.monotonic() of the join (the registry's start).
        self._joined = 0.0
        #: Counters: sessions handed over to other nodes, taken from them, hand-overs that
        #: did not complete, persistent-session CONNECTs refused (0x88) for want of NATS.
        self.handed_out = 0
        self.handed_in = 0
        self.handover_failed = 0
        self.refused = 0
        self._refusing = False
        #: client id -> the wall-clock time the will of a client gone from here is due.
        self._will_due: dict[str, float] = {}
        #: (node id, client id) -> timer of a dead node's client's delayed will.
        self._delayed: dict[tuple[str, str], asyncio.TimerHandle] = {}
        #: Publishes a dead node's client's will as this node's own (the broker's).
        self.publish = publish
        #: client id -> revision of the will this node keeps in the bucket for it.
        self._wills: dict[str, int] = {}
        self.node_name = node_name
        self.node_id = node_id
        self.registry = registry
        self.kv: KeyValue | None = None
        self.nc: NatsClient | None = None
        #: client id -> revision of this node's latest completed claim.
        self._claims: dict[str, int] = {}
        #: client id -> claims of it queued or on their way.
        self._pending: dict[str, int] = {}
        #: client id -> (revision, node) of the newest takeover that came while a claim of
        #: this node's for it was pending: looked at once no claim of it is pending.
        self._deferred: dict[str, tuple[int, str]] = {}
        #: Work in order: ("claim" | "release" | "adopt", client id, CONNECT time).
        self._work: list[tuple[str, str, float]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._down_tasks: set[asyncio.Task[None]] = set()
        self.error = ""
        #: Counters: claims made, other nodes' connections displaced, our connections or
        #: sessions taken over by other nodes, claims given up.
        self.claimed = 0
        self.displaced = 0
        self.taken_over = 0
        self.failed = 0
        #: Wills of dead nodes' clients this node published.
        self.wills_published = 0

    @property
    def wills_kept(self) -> int:
        """Wills of this node's clients kept in the bucket (connected, or gone with their
        will waiting out its delay here)."""
        return len(self._wills)

    @property
    def wills_delayed(self) -> int:
        """Of those, the wills of clients gone, waiting out their delay here."""
        return len(self._will_due)

    # --- hooks (synchronous, from the core) ---------------------------------------------

    def connected(self, info: ClientInfo, *_: Any) -> None:
        """client.connected: claim the client id for this node."""
        if self._task is None:
            return  # not joined: the sessions the node has then are claimed when it joins
        cid = info.client_id
        self._pending[cid] = self._pending.get(cid, 0) + 1
        self._push("claim", cid, time.time())
        channel = self.registry.channels.get(cid)
        if channel is not None and channel.will is not None:
            self._push("will", cid, 0.0)

    def disconnected(self, info: ClientInfo, *_: Any) -> None:
        """client.disconnected: the will is this node's business again (sent, dropped, or
        waiting out its delay here: then kept in the bucket with the time it is due, so
        that a survivor sends it should this node die first)."""
        cid = info.client_id
        if self._task is None:
            return
        # (Run before the registry detaches the connection: its will is still on it.)
        channel = self.registry.channels.get(cid)
        session = self.registry.sessions.get(cid)
        delay = 0
        if channel is not None and channel.will is not None and session is not None \
                and session.expiry_interval:
            delay = min(channel.will_delay, session.expiry_interval)
        if delay:
            self._will_due[cid] = time.time() + delay
            # Looked at again once due: this node sent it then (or it was cancelled).
            asyncio.get_running_loop().call_later(delay + 0.5, self._push, "will", cid, 0.0)
            self._push("will", cid, 0.0)
        elif cid in self._wills:
            self._push("will", cid, 0.0)

    def ended(self, session: Session, *_: Any) -> None:
        """session.terminated / session.discarded: give the client id up if it is ours
        (and the bucket's copy of a will its end sent)."""
        cid = session.client_id
        if self._task is not None and (cid in self._claims or cid in self._pending):
            self._push("release", cid, 0.0)
        if self._task is not None and cid in self._wills:
            self._push("will", cid, 0.0)

    # --- hand-over (docs/CLUSTER.md, "Session hand-over") -------------------------------

    @property
    def usable(self) -> bool:
        """The registry can be written: joined, the bucket open, NATS connected."""
        return self.kv is not None and self.nc is not None and self.nc.is_connected

    def prepare(self, info: ClientInfo, done: Callable[[int], None]) -> int | None:
        """Before a CONNECT's session opens (the broker's ``prepare_session``): a clean
        session goes on at once; a persistent one is refused (0x88) while it cannot be
        registered; one that resumes (clean start 0) is first asked from the node the
        registry names, CONNACK waiting (None, then ``done``)."""
        if info.clean_start and info.expiry_interval == 0:
            return 0
        if not self.usable:
            self.refused += 1
            if not self._refusing:
                self._refusing = True
                log.warning("cluster: refusing persistent-session CONNECTs (0x88 Server "
                            "unavailable) while the session registry cannot be reached "
                            "(%s); clean sessions are served",
                            self.error or "not connected to NATS")
            return int(RC.SERVER_UNAVAILABLE)
        if self._refusing:
            self._refusing = False
            log.info("cluster: persistent-session CONNECTs are accepted again")
        if info.clean_start:
            return 0  # a new session: the claim ends any other node's (takeover)
        cid = info.client_id
        if cid in self._claims and cid in self.registry.sessions:
            # Ours by this node's latest claim, which no takeover has displaced since (that
            # would have ended the session here): no registry round trip before CONNACK.
            return 0
        task = asyncio.get_running_loop().create_task(self._fetch(info.client_id, done))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)
        return None

    async def _fetch(self, cid: str, done: Callable[[int], None]) -> None:
        try:
            await asyncio.wait_for(self._take(cid), 2 * self.handover_timeout + 1)
        except Exception as err:  # noqa: BLE001 - the CONNECT goes on with a new session
            self.handover_failed += 1
            log.warning("cluster: the session of client %s was not handed over (%s): "
                        "the CONNECT goes on without it", cid, err or type(err).__name__)
        finally:
            done(0)

    async def _take(self, cid: str) -> None:
        kv, nc = self.kv, self.nc
        if kv is None or nc is None:
            return
        try:
            entry = await kv.get(topic_key(cid))
        except KeyNotFoundError:
            return
        owner = json.loads(entry.value or b"{}")
        owner_id, owner_name = str(owner.get("id") or ""), str(owner.get("node"))
        if not owner_id or owner_id == self.node_id or owner_name == self.node_name:
            return  # nobody else's (a previous start of this node restored its own)
        members = self.members
        up = members is not None and any(p.id == owner_id for p in members.up())
        # Until this node has heard every live node's heartbeats (three intervals after
        # joining), a node it does not know yet may well be alive: asked all the same.
        settled = members is None or time.monotonic() - self._joined > 3 * members.interval
        if not up and settled:
            log.info("cluster: client %s had a session on node %s, which is down: a new "
                     "session here (that node keeps its copy)", cid, owner_name)
            return
        relays = self.relays
        if relays is not None:
            relays.incoming(cid)
        installed = False

        def on_install() -> None:
            nonlocal installed
            installed = True
            if relays is not None:
                relays.installed(cid, owner_id, True)
        try:
            await self._take_from(cid, nc, owner_id, owner_name, on_install)
        finally:
            if relays is not None and not installed:
                relays.installed(cid, owner_id, False)

    async def _take_from(self, cid: str, nc: NatsClient, owner_id: str, owner_name: str,
                         on_install: Callable[[], object]) -> None:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        received: list[dict[str, Any]] = []
        try:
            await nc.publish(HANDOVER + owner_id, json.dumps(
                {"client": cid, "node": self.node_name, "id": self.node_id},
                separators=(",", ":")).encode(), reply=inbox)
            deadline = time.monotonic() + self.handover_timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"node {owner_name} did not answer within "
                                       f"{self.handover_timeout:g} s")
                try:
                    m = await sub.next_msg(timeout=left)
                except Exception as err:  # nats-py's own timeout error
                    raise TimeoutError(f"node {owner_name} did not answer within "
                                       f"{self.handover_timeout:g} s") from err
                part = json.loads(m.data)
                if part.get("none"):
                    return  # it has no session to hand over
                received.append(part)
                if part.get("end"):
                    break
        finally:
            await sub.unsubscribe()
        session, subs, shares, unreadable = session_from(received)
        registry = self.registry
        registry.install(session, subs)
        if shares:
            _resolve_shares(registry, {session: shares})
        on_install()  # (relayed messages parked for it are delivered now)
        store = registry.store
        # Committed here before the other node lets its copy go: a crash of this node
        # after the confirmation restores it from this node's store.
        if isinstance(store, Journal) and not await store.flush(self.handover_timeout):
            raise TimeoutError("not committed to this node's store in time (the other "
                               "node keeps its copy)")
        await nc.request(HANDOVER + owner_id, json.dumps(
            {"client": cid, "node": self.node_name, "id": self.node_id, "done": True},
            separators=(",", ":")).encode(), timeout=self.handover_timeout)
        self.handed_in += 1
        # Claimed now, not only at the CONNACK: should the client leave before it, the
        # registry must still name the node that holds its session.
        self._pending[cid] = self._pending.get(cid, 0) + 1
        self._push("claim", cid, time.time())
        log.info("cluster: session of client %s handed over from node %s (%d subscriptions, "
                 "%d in flight, %d queued, %d awaiting PUBREL%s)", cid, owner_name,
                 len(subs), len(session.inflight), len(session.mqueue),
                 len(session.awaiting_rel),
                 f"; {unreadable} unreadable messages skipped" if unreadable else "")

    async def _handover_asked(self, m: Msg) -> None:
        """Another node asks for a session (or confirms it has taken it)."""
        try:
            data = json.loads(m.data)
            cid, node = str(data["client"]), str(data["node"])
        except (ValueError, KeyError, TypeError) as err:
            log.warning("cluster: a hand-over request is not an mqttd node's: %s", err)
            return
        if data.get("done"):
            handing = self._handing.pop(cid, None)
            if handing is not None:
                session, timer = handing
                timer.cancel()
                if self.relays is not None:
                    self.relays.relay_committed(cid)
                self._claims.pop(cid, None)
                self.registry.handed_over(session)
                self.handed_out += 1
                self._push("will", cid, 0.0)
                log.info("cluster: session of client %s handed over to node %s", cid, node)
            await m.respond(b'{"ok":true}')
            return
        registry = self.registry
        channel = registry.channels.get(cid)
        if channel is not None:
            # The session goes on elsewhere: as on one node, a taken-over connection's will
            # is not sent when the session survives the takeover.
            channel.will = None
            registry.kick(cid, RC.SESSION_TAKEN_OVER, f"session taken over by node {node}")
            self.taken_over += 1
        relays = self.relays
        held = registry.sessions.get(cid)
        if relays is not None and held is not None:
            # Its routes stay here, and what matches them goes to the new node, until the
            # other nodes have the new node's routes (docs/CLUSTER.md).
            relays.relay_start(cid, str(data.get("id", "")), node, list(held.subscriptions))
        handed = registry.hand_off(cid)
        if handed is None:
            if relays is not None:
                relays.relay_end(cid)
            await m.respond(b'{"none":true}')
            return
        if cid in self._wills:
            self._push("will", cid, 0.0)  # its delayed will is cancelled: not for survivors
        timer = asyncio.get_running_loop().call_later(
            2 * self.handover_timeout + 2, self._take_back, cid, node)
        self._handing[cid] = (handed, timer)
        for part in parts(handed):
            await m.respond(part)

    def _take_back(self, cid: str, node: str) -> None:
        handing = self._handing.pop(cid, None)
        if handing is None:
            return
        self.handover_failed += 1
        kept = self.registry.take_back(handing[0])
        if self.relays is not None:
            self.relays.relay_end(cid)
        log.warning("cluster: node %s did not confirm taking the session of client %s: "
                    "%s", node, cid, "it stays here (offline)" if kept
                    else "a newer session here replaces it")

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
        self._joined = time.monotonic()
        await nc.subscribe(TAKEOVER + self.node_id, cb=self._takeover)
        await nc.subscribe(HANDOVER + self.node_id, cb=self._handover_asked)
        # What connected before the node joined: claimed unless another node holds it.
        self._work = [("adopt", cid, 0.0) for cid in self.registry.sessions]
        self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for timer in self._delayed.values():
            timer.cancel()
        self._delayed.clear()
        # Sessions handed out but not confirmed stay in this node's store (restored at the
        # next start); their timers go with the node.
        for _session, timer in self._handing.values():
            timer.cancel()
        self._handing.clear()
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
                settle = False
                try:
                    if kind == "claim":
                        await self._claim(cid, at, adopt=False)
                    elif kind == "adopt":
                        await self._claim(cid, at, adopt=True)
                    elif kind == "will":
                        await self._sync_will(cid)
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
                            settle = True
                # Not in the finally: a stop (the task cancelled) kicks nobody, and a failure
                # to end a connection here costs that client, not the task that serves them all.
                if settle:
                    try:
                        self._settle(cid)
                    except Exception:
                        log.exception("cluster: session registry: settling %s failed", cid)

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

    async def owner(self, cid: str) -> str | None:
        """The start tag of the node the registry says holds ``cid`` (None: none, or the
        registry cannot tell within a second)."""
        kv = self.kv
        if kv is None:
            return None
        try:
            entry = await asyncio.wait_for(kv.get(topic_key(cid)), 1.0)
            owner = json.loads(entry.value or b"{}").get("id")
        except Exception:  # noqa: BLE001 - not known: every node is asked instead
            return None
        return str(owner) if owner else None

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

    async def _sync_will(self, cid: str) -> None:
        """Make the bucket say what this node holds now: the will of the client's
        connection here, or (it has none, or is not connected here) none of ours."""
        kv = self.kv
        if kv is None:
            return
        channel = self.registry.channels.get(cid)
        will = channel.will if channel is not None else None
        due = 0.0
        if channel is not None:
            self._will_due.pop(cid, None)  # connected (again): its connection's will
        else:
            will = self.registry.pending_will(cid)
            due = self._will_due.get(cid, 0.0) if will is not None else 0.0
            if not due:
                will = None
        if will is None:
            self._will_due.pop(cid, None)
            rev = self._wills.pop(cid, None)
            if rev is not None:
                try:
                    await kv.delete(WILL + topic_key(cid), last=rev)
                except KeyWrongLastSequenceError:
                    pass  # the client's newer connection (elsewhere) keeps its own
            return
        data: dict[str, Any] = {"id": self.node_id, "node": self.node_name, "topic": will.topic,
                                "payload": base64.b64encode(will.payload).decode(),
                                "qos": will.qos, "retain": will.retain}
        # When a survivor publishes it (this node dead): after the Will Delay Interval, or
        # when the session would end, whichever is first; at once without a session after.
        session = self.registry.sessions.get(cid)
        expiry = session.expiry_interval if session is not None else 0
        delay = min(channel.will_delay, expiry) if channel is not None and expiry else 0
        if delay:
            data["delay"] = delay
        if due:
            data["due"] = due  # its client is gone: the wall-clock time it goes
        if will.properties:
            data["props"] = props_out(dict(will.properties), None)
        self._wills[cid] = await kv.put(
            WILL + topic_key(cid), json.dumps(data, separators=(",", ":")).encode())

    def resync_wills(self) -> None:
        """Write again the wills of this node's connected clients (after a NATS outage)."""
        if self._task is None:
            return
        for cid, channel in self.registry.channels.items():
            if channel.will is not None:
                self._push("will", cid, 0.0)

    def node_down(self, node_id: str) -> None:
        """A node was counted down after missed heartbeats: publish the wills it held."""
        if self.kv is not None and self.publish is not None:
            task = asyncio.get_running_loop().create_task(self._publish_wills(node_id))
            self._down_tasks.add(task)
            task.add_done_callback(self._down_tasks.discard)

    async def _publish_wills(self, node_id: str) -> None:
        kv = self.kv
        if kv is None or self.publish is None:
            return
        try:
            keys = [k for k in await kv.keys() if k.startswith(WILL)]
        except Exception as err:  # noqa: BLE001 - none (nats-py raises when empty) or away
            log.debug("cluster: no wills to look at: %s", err)
            return
        for key in keys:
            try:
                entry = await kv.get(key)
                data = json.loads(entry.value or b"{}")
                if data.get("id") != node_id:
                    continue
                delay = float(data.get("delay") or 0)
                if data.get("due"):  # already waiting out its delay on that node
                    delay = max(0.0, float(data["due"]) - time.time())
                if delay > 0:
                    # A delayed will: published after its delay (counted from now), unless
                    # the client connects again meanwhile [MQTT-3.1.3-9].
                    if (node_id, key) not in self._delayed:
                        self._delayed[(node_id, key)] = \
                            asyncio.get_running_loop().call_later(
                                delay, self._delayed_will, node_id, key)
                    continue
                await kv.delete(key, last=entry.revision)  # the one survivor that wins
            except (KeyNotFoundError, KeyWrongLastSequenceError):
                continue  # gone, or another survivor took it
            except Exception as err:  # noqa: BLE001 - one will, not the others
                log.warning("cluster: a will of node %s not read: %s", node_id, err)
                continue
            self._publish_will(key, data)

    def _publish_will(self, key: str, data: dict[str, Any]) -> None:
        if self.publish is None:
            return
        props = props_in(data["props"]) if data.get("props") else None
        will = Message(str(data["topic"]), base64.b64decode(data["payload"]),
                       int(data["qos"]), bool(data["retain"]), props,
                       key_topic(key[len(WILL):]))
        self.wills_published += 1
        log.info("cluster: published the will of client %s of node %s, which is down",
                 will.sender, data.get("node"))
        self.publish(will)

    def _delayed_will(self, node_id: str, key: str) -> None:
        self._delayed.pop((node_id, key), None)
        task = asyncio.get_running_loop().create_task(self._send_delayed(node_id, key))
        self._down_tasks.add(task)
        task.add_done_callback(self._down_tasks.discard)

    async def _send_delayed(self, node_id: str, key: str) -> None:
        """A dead node's client's will whose delay has passed: published unless the client
        has connected again since (the registry names another node for it, or a newer
        connection replaced the will), by the one survivor whose delete wins."""
        kv = self.kv
        if kv is None:
            return
        cid = key_topic(key[len(WILL):])
        try:
            entry = await kv.get(key)
            data = json.loads(entry.value or b"{}")
            if data.get("id") != node_id:
                return  # a newer connection's will: its node's business
            await kv.delete(key, last=entry.revision)  # the one survivor that wins
            try:
                owner = json.loads((await kv.get(topic_key(cid))).value or b"{}")
            except KeyNotFoundError:
                owner = {}
            if owner.get("id") not in (None, node_id) or cid in self.registry.channels:
                log.info("cluster: the delayed will of client %s of node %s is not sent: "
                         "the client connected again", cid, data.get("node"))
                return
        except (KeyNotFoundError, KeyWrongLastSequenceError):
            return  # gone, or another survivor took it
        except Exception as err:  # noqa: BLE001 - one will, not the others
            log.warning("cluster: a delayed will of node %s not read: %s", node_id, err)
            return
        self._publish_will(key, data)

    async def _takeover(self, m: Msg) -> None:
        try:
            data = json.loads(m.data)
            cid, rev, node = str(data["client"]), int(data["rev"]), str(data["node"])
        except (ValueError, KeyError, TypeError) as err:
            log.warning("cluster: a takeover message is not an mqttd node's: %s", err)
            return
        if self._pending.get(cid):
            # A claim of ours is on its way: decided once it is done, by its revision (it
            # may already be in the bucket, displaced by theirs, its answer not read yet).
            seen = self._deferred.get(cid)
            if seen is None or seen[0] < rev:
                self._deferred[cid] = (rev, node)
            return
        mine = self._claims.get(cid)
        if mine is not None and mine >= rev:
            return  # older than our latest claim
        self._end_here(cid, node)

    def _settle(self, cid: str) -> None:
        """No claim of ours for ``cid`` is pending any more: a takeover that came meanwhile
        ends the connection here unless our latest claim was written after it (then that
        claim displaced theirs, having compared the CONNECT times). A claim that lost or
        failed leaves no revision here: the takeover stands."""
        deferred = self._deferred.pop(cid, None)
        if deferred is None:
            return
        rev, node = deferred
        mine = self._claims.get(cid)
        if mine is not None and mine >= rev:
            return
        self._end_here(cid, node)

"""Routing between nodes over core NATS (docs/CLUSTER.md): EMQX's route table as subject
interest.

The node subscribes once per distinct filter that has local plain subscribers (the router
tells it when a filter gains its first or loses its last), publishes each message its
clients publish on the topic's subject, and hands what other nodes publish to the local
dispatcher, never to the broker (so it is never forwarded again). That connection is made
with ``no_echo``: a node never gets its own publishes back.

Shared groups are NATS queue groups on a second connection (without ``no_echo``, so the
publishing node's own members are in the draw): NATS picks one node per group and message,
that node's strategy picks the member. Heartbeats and route-table deltas on ``mqttd.c.*``
tell each node which others are up and what they hold (:mod:`.membership`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..config import ClusterSettings
from ..core.dispatch import Dispatcher
from ..core.message import Message
from ..core.registry import Registry
from ..core.services import ClientInfo, CommitGate, Delivery, LocalLane, RemoteGate
from ..core.session import OVERFULL, Session
from ..hooks import Hooks
from ..metrics import (
    CLUSTER_DROPPED,
    CLUSTER_DUPLICATES,
    CLUSTER_RECEIVED,
    CLUSTER_SHARED_RECEIVED,
    MESSAGES_FORWARD,
    Metrics,
)
from ..mqtt.topics import match as topic_match, parse_shared
from .control import OWNED, ClusterControl, RemoteTrace
from .membership import Membership, Peer, group_token
from .retained import RetainedSync
from .sessions import SessionRegistry
from .subjects import SubjectError, decode_topic, encode_filter, encode_topic
from .wire import props_in as _props_in, props_out as _props_out

log = logging.getLogger("mqttd.cluster")

__all__ = ["Cluster"]

#: Sequence numbers remembered per origin for deduplication: a message matching several of
#: a node's filters arrives once per NATS subscription, and each subscription's callbacks
#: run in their own task, so copies may interleave with neighbouring messages.
_WINDOW = 4096

#: Longest subject sent (bytes): the PUB line must fit nats-server's max_control_line
#: (4 KiB by default), or the server closes the whole connection.
_MAX_SUBJECT = 3584

#: The first byte of what an mqttd node publishes on a topic's subject (a format version).
_MAGIC = b"\x01"

#: A session moved in here: (this node's sequence number at its install, the keys that came
#: here directly since, the keys it got relayed) (see Cluster._moved_in).
_MovedIn = tuple[int, set[tuple[str, int]], set[tuple[str, int]]]

#: Messages waiting for the sender at most; more are dropped (counted in ``cluster.dropped``).
_MAX_QUEUED = 100_000

#: The cluster's own subjects (outside ``mqttd.p``/``mqttd.d``, the topics' space).
HEARTBEAT = "mqttd.c.hb"
ROUTES = "mqttd.c.routes"
BYE = "mqttd.c.bye"
SYNC = "mqttd.c.sync."  # + the node's id: its whole route table, on request
ACK = "mqttd.c.ack."  # + the origin's id: the nodes' confirmations of its messages
#: + the new node's id: messages the old node got for a session it handed over, while the
#: others may not have the new node's routes for it yet (docs/CLUSTER.md, "Messages
#: published while the session moves").
RELAY = "mqttd.c.relay."
#: + the old node's id: the new node's confirmations of relayed messages, and "the others
#: have my routes for the session now: drop yours".
RELAYED = "mqttd.c.relayed."

#: Seconds between looks for forwarded messages whose confirmation is overdue.
_EXPIRY_TICK = 0.05


def queue_name(topic_filter: str, group: str | None) -> str:
    """The NATS queue group of the shared subscription ``$share/group/topic_filter``: the
    same on every node, one per (group, filter) as MQTT's shared subscriptions are (NATS
    groups queue subscribers by this name alone, whatever their subjects)."""
    key = f"{'' if group is None else group}\0{topic_filter}\0{group is None}"
    return "mqttd-" + hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


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


class Cluster:
    """This node's part in the cluster: its NATS connections, its subscriptions (one per
    distinct local filter, one queue subscription per local shared group), the messages
    going out and coming in, and what it knows of the other nodes."""

    def __init__(self, settings: ClusterSettings, node_name: str, dispatcher: Dispatcher,
                 metrics: Metrics, registry: Registry | None = None,
                 hooks: Hooks | None = None,
                 publish: Callable[[Message], object] | None = None) -> None:
        self.settings = settings
        self.node_name = node_name
        #: A tag drawn at each start: sequence numbers start again at each start.
        self.node_id = os.urandom(6).hex()
        self.origin = f"{node_name}#{self.node_id}"
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.nc: NatsClient | None = None
        #: The shared groups' connection (queue subscriptions only; no ``no_echo``).
        self.qc: NatsClient | None = None
        #: What the node holds, kept whether or not NATS is there: filters with local
        #: plain subscribers, and queue name -> (filter, group) for its shared groups.
        self._plain: set[str] = set()
        self._groups: dict[str, tuple[str, str | None]] = {}
        #: filter -> local holders (1 for plain subscribers, 1 per group): the routes
        #: announced to the other nodes; ``_dirty`` those changed since the last delta.
        self._interest: dict[str, int] = {}
        self._dirty: set[str] = set()
        self.version = 0
        #: filter (or queue name) -> its NATS subscription (None while on its way).
        self._subs: dict[str, Subscription | None] = {}
        self._qsubs: dict[str, Subscription | None] = {}
        #: Work for the sender, in order: ("sub", filter), ("unsub", filter),
        #: ("qsub", name), ("qunsub", name), ("pub", subject, framed payload).
        self._ops: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        self._seq = 0
        self._seen: dict[str, _Seen] = {}
        #: topic -> its subject and back (the encoding walks every character).
        self._subjects: dict[str, str] = {}
        self._topics: dict[str, str] = {}
        self.members = Membership(settings.heartbeat_interval, settings.heartbeat_misses)
        self.retained = RetainedSync(settings.retained_bucket, dispatcher.retainer,
                                     self.origin)
        self._syncing: set[str] = set()
        #: Cluster-wide mqttd ctl requests: answering the others, asking them all.
        self.control = ClusterControl(node_name, self.node_id, self.members, registry,
                                      dispatcher.router, settings.ctl_timeout)
        #: Client id -> owning node (None: no registry given, as in unit use).
        self.sessions: SessionRegistry | None = None
        if registry is not None and hooks is not None:
            self.sessions = SessionRegistry(settings.sessions_bucket, node_name, self.node_id,
                                            registry, publish, settings.handover_timeout)
            self.sessions.members = self.members
            self.sessions.relays = self
            hooks.add("client.connected", self.sessions.connected)
            hooks.add("client.disconnected", self.sessions.disconnected)
            hooks.add("session.terminated", self.sessions.ended)
            hooks.add("session.discarded", self.sessions.ended)
        #: Counters (mqttd ctl cluster status, the stats): messages sent to other nodes,
        #: received from them (and given to the local dispatcher), duplicates dropped,
        #: messages that could not be sent; shared-group copies taken here.
        self.sent = 0
        self.received = 0
        self.duplicates = 0
        self.failed = 0
        self.group_received = 0
        self.group_missed = 0
        #: The topics no other node is known to want (the membership's, emptied at every
        #: change of routes or nodes, and here when the connection or ``_settled``
        #: changes) and the messages not sent for it (``local_only``): what the PUBLISH
        #: fast path tests and counts without a call (core.services.LocalLane).
        self.lane = LocalLane(self.members.quiet)
        #: Whether this node has heard every live node's heartbeat since it joined (three
        #: heartbeat intervals): before, a node it has not heard of yet may want anything.
        self._settled = False
        self.state = "starting"
        self.joined_at = 0.0
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        # --- confirmations (docs/CLUSTER.md, "Acknowledged messages across nodes") ---
        #: What the channels hold QoS 1/2 acknowledgements on (Broker.remote_gate), and
        #: in it the forwarded messages awaiting other nodes, by sequence number
        #: (ascending: inserted in order) -> [deadline, QoS, names still to confirm, topic].
        self.gate = RemoteGate()
        self._awaiting = self.gate.waiting
        #: Called when messages stopped waiting (the server's flusher writes what it held).
        self.acked: Callable[[], None] | None = None
        #: The receiving side: this node's store gate (None: durability off), and the
        #: confirmations to send, by origin id: sequence numbers, and those waiting for
        #: the store to commit [(store seq, origin id, seq)].
        self.commit_gate: CommitGate | None = None
        #: by origin id: [plain sequence numbers, {queue name: sequence numbers of the
        #: group's copies taken}, {queue name: those no member was left to take}].
        self._to_confirm: dict[str, tuple[list[int], dict[str, list[int]],
                                          dict[str, list[int]]]] = {}
        self._after_commit: list[tuple[int, str, int, str | None]] = []
        #: This node's shared groups whose queue subscription NATS has (flushed): what the
        #: node waits for when it publishes (NATS may pick it), as the others' groups it
        #: learns of; topic -> their tokens, until they change.
        self._qlive: set[str] = set()
        self._own_tokens: dict[str, frozenset[str]] = {}
        self._qflush = False
        #: Shared groups changed since the last delta (queue names).
        self._group_dirty: set[str] = set()
        #: Route changes the other nodes are to acknowledge (SUBACKs wait for them): in
        #: ``_awaiting`` under negative numbers (never a message's), the one not announced
        #: yet (0: none) and, once announced, the route-table version each stands for.
        self._route_key = 0
        self._route_unannounced = 0
        self._route_versions: dict[int, int] = {}
        self._confirm_soon = False
        #: Filters with local plain subscribers changed since the last delta.
        self._plain_dirty: set[str] = set()
        #: Counters: forwarded messages confirmed late (given up: their QoS 1/2 publishers
        #: heard 0x80), confirmations sent.
        self.confirm_timeouts = 0
        self.confirms_sent = 0
        # --- a session moving to another node (docs/CLUSTER.md, "Messages published while
        # the session moves"): on the old node, client id -> [new node's id, its name, the
        # session's plain filters, the timer that ends the relay]; filter -> relays keeping
        # it routed, and those the router dropped meanwhile; (origin, seq) -> confirmations
        # still needed (this node's and the new node's) before this node confirms.
        self._relays: dict[str, list[Any]] = {}
        self._relay_hold: dict[str, int] = {}
        self._relay_dropped: set[str] = set()
        self._held: dict[tuple[str, int], int] = {}
        # On the new node: the client ids whose sessions are on their way here (relayed
        # messages for them are parked until installed); relay confirmations to send, by old
        # node id; by route-change key, the (old node id, client id) to release once it
        # waits no longer.
        self._incoming: set[str] = set()
        self._relay_acks: dict[str, list[list[Any]]] = {}
        self._release_at: dict[int, list[tuple[str, str]]] = {}
        #: client id -> (this node's last sequence number when its session was installed:
        #: its own messages up to it missed the session here (relayed back, delivered);
        #: the (origin, seq) of messages matching the session that came here directly
        #: since (the dispatcher gave them to it: a relayed copy is not delivered again);
        #: those delivered to it relayed (a direct copy coming later skips the session)).
        #: Kept while a relay to it may still arrive; a newer install replaces it.
        self._moved_in: dict[str, _MovedIn] = {}
        self._parked: list[tuple[str, int, Message, str, list[str]]] = []
        self._registry = registry

    def _dropped(self) -> None:
        self.failed += 1
        self.metrics.inc(CLUSTER_DROPPED)

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    # --- from the core (synchronous) ------------------------------------------------

    def _hold(self, topic_filter: str, delta: int) -> None:
        n = self._interest.get(topic_filter, 0) + delta
        if n > 0:
            self._interest[topic_filter] = n
            if n == delta:
                self._dirty.add(topic_filter)
        else:
            self._interest.pop(topic_filter, None)
            self._dirty.add(topic_filter)

    def route_changed(self, topic_filter: str, added: bool) -> None:
        """The router's hook: ``topic_filter`` gained its first local plain subscriber
        (added) or lost its last."""
        if topic_filter in self._relay_hold:
            # A session handed over keeps it routed here until the new node's routes are
            # everywhere (``relay_end``).
            if added:
                self._relay_dropped.discard(topic_filter)
            else:
                self._relay_dropped.add(topic_filter)
            return
        if added:
            self._plain.add(topic_filter)
        else:
            self._plain.discard(topic_filter)
        self._plain_dirty.add(topic_filter)
        self._hold(topic_filter, 1 if added else -1)
        if self.nc is None:
            return  # not (yet) connected: the routes are read when the connection opens
        self._ops.append(("sub" if added else "unsub", topic_filter))
        self._wake.set()
        if added:
            self._route_wait()

    def group_changed(self, topic_filter: str, group: str | None, added: bool) -> None:
        """The router's hook: the shared group ``group`` on ``topic_filter`` gained its
        first member on this node (added) or lost its last."""
        name = queue_name(topic_filter, group)
        if added:
            self._groups[name] = (topic_filter, group)
        else:
            self._groups.pop(name, None)
            if name in self._qlive:
                self._qlive.discard(name)
                self._own_tokens = {}
                self._recheck(None)  # its copies NATS has not picked this node for yet
        self._group_dirty.add(name)
        self._hold(topic_filter, 1 if added else -1)
        if self.nc is None:
            return
        self._ops.append(("qsub" if added else "qunsub", name))
        self._wake.set()
        if added:
            self._route_wait()

    def _route_wait(self) -> None:
        """A route was added: the SUBACKs of this turn wait until every other node up has
        applied the delta that announces it (``RemoteGate.routes``), at most as long as a
        silent node takes to be counted down (heartbeat_misses heartbeats; forward_timeout at
        most). One wait per delta, however many routes it carries."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            return
        if self._route_unannounced:
            return  # the next delta carries this route too
        names = {p.name for p in self.members.up()}
        if not names:
            return
        self._route_key -= 1
        key = self._route_unannounced = self.gate.routes = self._route_key
        settings = self.settings
        timeout = min(settings.heartbeat_interval * settings.heartbeat_misses,
                      settings.forward_timeout)
        self._awaiting[key] = [time.monotonic() + timeout, 0, names, ""]

    def forward(self, msg: Message) -> int:
        """The broker's hook: send ``msg`` to the nodes that want it (NATS drops it when
        none does). 2 when it went out with its shared groups' copy (NATS then picks one
        node per group, this one included); 1 when it went out without it (the connection
        is down: into the NATS client's reconnect buffer) and 0 when it did not go out; the
        local members must have it then."""
        if msg.retain:
            self.retained.changed(msg.topic)
        nc = self.nc
        if nc is None or msg.topic.startswith("$SYS/"):
            return 0  # each node's $SYS is its own
        if self.keep_local(msg.topic):
            return 0
        if len(self._ops) >= _MAX_QUEUED:
            # NATS is not keeping up (or the connection is down and its buffer full): drop
            # rather than hold every message in memory; local delivery still happens.
            self._dropped()
            return 0
        if len(self._ops) >= _MAX_QUEUED // 2:
            OVERFULL.append(self)  # flow control: NATS is not taking it fast enough
        subject = self._subjects.get(msg.topic)
        if subject is None:
            if len(self._subjects) >= 65536:
                self._subjects.clear()
            subject = self._subjects[msg.topic] = encode_topic(msg.topic)
        if len(subject) > _MAX_SUBJECT and len(subject.encode()) > _MAX_SUBJECT:
            self._dropped()
            log.warning("cluster: topic %.64s... is too long to cross nodes", msg.topic)
            return 0
        qc = self.qc
        shared = nc.is_connected and qc is not None and qc.is_connected
        self._seq += 1
        props = None
        if msg.properties or msg.expiry:
            # The expiry left, not the one published: the receiver counts from now.
            remaining = msg.remaining_expiry(time.monotonic()) \
                if msg.expiry else None
            props = _props_out(dict(msg.properties), remaining)
        # What crosses besides the payload, in front of it (NATS headers cost a header
        # block built and parsed line by line per message): origin, sequence, QoS, retain,
        # sender, properties, and whether the local shared groups already had it.
        meta = json.dumps([self.origin, self._seq, msg.qos, msg.retain, msg.sender, props,
                           not shared], separators=(",", ":")).encode()
        data = _MAGIC + len(meta).to_bytes(2, "big") + meta + msg.payload
        self._ops.append(("pub", subject, data))
        self._wake.set()
        confirming = self.members.confirming(msg.topic)
        if self._relays:
            to = self._relay(self.origin, self._seq, msg)
            if to:
                confirming = confirming | to  # the new node confirms it as its own
        if shared:
            if self._qlive:
                own = self._own_groups(msg.topic)
                if own:
                    confirming = confirming | own
        elif confirming:  # the groups' copies do not cross (the frame says so)
            confirming = frozenset(n for n in confirming if n[:1] != "\0")
        if confirming:
            # Each node with a plain subscriber confirms it once it has queued (and where
            # needed committed) it; a QoS 1/2 publisher's acknowledgement waits for that.
            awaiting = self._awaiting
            awaiting[self._seq] = [time.monotonic() + self.settings.forward_timeout,
                                   msg.qos, set(confirming), msg.topic]
            if msg.qos:
                self.gate.issued = self._seq
            if len(awaiting) >= self.settings.forward_window:
                OVERFULL.append(self)  # flow control: the publisher waits (has_room)
        return 2 if shared else 1

    def _own_groups(self, topic: str) -> frozenset[str]:
        """The tokens of this node's shared groups (in NATS) matching ``topic``: NATS may
        pick this node for their copy, which it then confirms to itself."""
        tokens = self._own_tokens.get(topic)
        if tokens is None:
            live = self._qlive
            found = set()
            for route in self.dispatcher.router.match(topic):
                for group in route.groups:
                    name = queue_name(route.topic_filter, group)
                    if name in live:
                        found.add(group_token(name))
            if len(self._own_tokens) >= 65536:
                self._own_tokens = {}
            tokens = self._own_tokens[topic] = frozenset(found)
        return tokens

    def keep_local(self, topic: str) -> bool:
        """Whether a message to ``topic`` (neither retained nor ``$SYS``) stays on this
        node: NATS is not there, or the node has settled and no other node is known to
        want it (EMQX forwards only to nodes whose routes match); the local shared groups
        then have it. When it stays while NATS is there it is counted (``local_only``)
        and its topic remembered in ``lane`` (the PUBLISH fast path then takes the next
        message to it without asking) until what this node knows changes."""
        if self.nc is None:
            return True
        if not self._settled or self._relays or self.members.interest(topic):
            return False
        lane = self.lane
        topics = lane.topics
        if len(topics) >= 65536:
            topics.clear()
        topics[topic] = True
        lane.kept += 1
        return True

    @property
    def local_only(self) -> int:
        """Messages not sent because no other node was known to want them."""
        return self.lane.kept

    def _settle_in(self) -> None:
        """Three heartbeat intervals after joining: every live node has been heard."""
        self._settled = True
        self.lane.topics.clear()

    def prepare_session(self, info: ClientInfo, done: Callable[[int], None]) -> int | None:
        """Before a CONNECT's session opens (:meth:`SessionRegistry.prepare`)."""
        sessions = self.sessions
        return 0 if sessions is None else sessions.prepare(info, done)
    # --- flow control and confirmations (the publishing side) --------------------------

    def has_room(self) -> bool:
        """Whether a publisher held for the other nodes may go on (core.services.Backlog):
        the messages awaiting confirmation are back under half the window."""
        return len(self._awaiting) < self.settings.forward_window // 2 + 1 \
            and len(self._ops) < _MAX_QUEUED // 2

    def trim(self) -> list[Delivery]:
        """A publisher's wait timed out: nothing is dropped here, it goes on."""
        return []

    def _settle(self) -> None:
        """Messages stopped waiting: let the acknowledgements held for them go."""
        if self.acked is not None:
            self.acked()

    def _give_up(self, seq: int, entry: list[Any]) -> None:
        self.confirm_timeouts += 1
        if entry[1]:
            failed = self.gate.failed
            if len(failed) >= 100_000:  # of publishers gone before hearing it
                floor = self._seq - 100_000
                self.gate.failed = failed = {s for s in failed if s > floor}
            failed.add(seq)

    async def _expire(self) -> None:
        """Give up on forwarded messages not confirmed within forward_timeout."""
        awaiting = self._awaiting
        while True:
            await asyncio.sleep(_EXPIRY_TICK)
            if not awaiting:
                continue
            now = time.monotonic()
            expired = []
            for seq, entry in awaiting.items():  # in order of their deadlines
                if entry[0] > now:
                    break
                expired.append(seq)
            # Route changes wait less than messages: one may be behind a message's entry.
            for key in (*self._route_versions, self._route_unannounced):
                wait = awaiting.get(key) if key else None
                if wait is not None and wait[0] <= now and key not in expired:
                    expired.append(key)
            if expired:
                messages = 0
                for seq in expired:
                    entry = awaiting.pop(seq)
                    if seq < 0:  # a route change: its SUBACKs go (it was announced)
                        self._route_done(seq)
                    else:
                        messages += 1
                        self._give_up(seq, entry)
                if messages:
                    log.warning("cluster: %d forwarded messages not confirmed within %g s "
                                "by another node", messages, self.settings.forward_timeout)
                self._settle()

    def _route_done(self, key: int) -> None:
        self._route_versions.pop(key, None)
        if self._release_at:
            for node_id, cid in self._release_at.pop(key, ()):
                self._release(node_id, cid)
        if self._route_unannounced == key:
            self._route_unannounced = 0

    def _node_gone(self, name: str) -> None:
        """Node ``name`` is down or left: what it had not confirmed never will be."""
        awaiting = self._awaiting
        gone = []
        peer = self.members.peers.get(name)
        # The copies of its shared groups NATS may have picked it for (what it held then).
        tokens = {group_token(q) for q in peer.groups} if peer is not None else set()
        routes = []
        for seq, entry in awaiting.items():
            names = entry[2]
            if seq < 0:  # a route change: it waits no longer for that node
                if name in names:
                    names.discard(name)
                    if not names:
                        routes.append(seq)
            elif name in names or (tokens and not tokens.isdisjoint(names)):
                gone.append(seq)
        for seq in routes:
            del awaiting[seq]
            self._route_done(seq)
        if routes and not gone:
            self._settle()
        for seq in gone:
            self._give_up(seq, awaiting.pop(seq))
        if gone:
            log.warning("cluster: %d forwarded messages not confirmed by node %s, which "
                        "is gone", len(gone), name)
            self._settle()

    def _recheck(self, name: str | None) -> None:
        """Node ``name`` dropped plain routes: a message awaiting it for a topic it no
        longer has a plain subscriber for will not be confirmed (NATS no longer delivers
        it there, and the node's NATS client drops what arrives for a subscription it
        removed); nobody there wanted it any more, so it waits no longer for that node.
        Likewise a shared group no node holds any more (``name`` None: this node's own
        last member of a group left)."""
        awaiting = self._awaiting
        if not awaiting:
            return
        done = []
        confirming = self.members.confirming
        for seq, entry in awaiting.items():
            if seq < 0:
                continue  # a route change's wait
            names = entry[2]
            if name is not None and name in names and name not in confirming(entry[3]):
                names.discard(name)
            for token in [n for n in names if n[:1] == "\0"]:
                queue = token[1:]
                if queue not in self._qlive and not self.members.group_held(queue):
                    names.discard(token)  # the group has no member left anywhere
            if not names:
                done.append(seq)
        for seq in done:
            del awaiting[seq]
        if done:
            self._settle()

    async def _confirmed(self, m: Msg) -> None:
        """Another node confirms messages of this node: [name, [[first, last], ...]], and
        (when it has any) its shared groups' copies, {queue: ranges} taken and
        {queue: ranges} that found no member left there."""
        try:
            name, ranges, *rest = json.loads(m.data)
            groups = rest[0] if rest else {}
            missed = rest[1] if len(rest) > 1 else {}
            version = int(rest[2]) if len(rest) > 2 else 0
            if not isinstance(groups, dict) or not isinstance(missed, dict):
                raise TypeError("groups are not an object")
        except (ValueError, TypeError) as err:
            log.warning("cluster: a confirmation is not an mqttd node's: %s", err)
            return
        if version:
            self._routes_applied(name, version)
        self._apply_confirms(name, ranges, groups, missed)

    def _routes_applied(self, name: str, version: int) -> None:
        """Node ``name`` has applied this node's routes up to ``version``."""
        awaiting = self._awaiting
        done = []
        for key, v in self._route_versions.items():
            if v <= version:
                entry = awaiting.get(key)
                if entry is None:
                    continue
                entry[2].discard(name)
                if not entry[2]:
                    done.append(key)
        for key in done:
            del awaiting[key]
            self._route_done(key)
        if done:
            self._settle()

    def _apply_confirms(self, name: str, ranges: list[list[int]],
                        groups: dict[str, list[list[int]]],
                        missed: dict[str, list[list[int]]]) -> None:
        awaiting = self._awaiting
        n = len(awaiting)
        failed = 0
        for token, spans, lost in [(name, ranges, False)] + [
                (group_token(q), r, False) for q, r in groups.items()] + [
                (group_token(q), r, True) for q, r in missed.items()]:
            for first, last in spans:
                if last - first > len(awaiting):
                    seqs: Any = [s for s in awaiting if first <= s <= last]
                else:
                    seqs = range(first, last + 1)
                for seq in seqs:
                    entry = awaiting.get(seq)
                    if entry is None:
                        continue
                    names = entry[2]
                    if lost:
                        if token in names:  # the member NATS picked had left: at most once
                            failed += 1
                            self._give_up(seq, awaiting.pop(seq))
                        continue
                    names.discard(token)
                    if not names:
                        del awaiting[seq]
        if failed:
            log.warning("cluster: %d forwarded messages reached node %s for a shared group "
                        "whose members there had left", failed, name)
        if len(awaiting) != n:
            self._settle()

    # --- confirmations (the receiving side) ------------------------------------------

    def _confirm(self, origin: str, seq: int, group: str | None = None,
                 lost: bool = False) -> None:
        if group is not None and group[:1] == "\x01":  # a relayed message, to the old node
            self._relay_acks.setdefault(group[1:], []).append([origin, seq])
            if not self._confirm_soon:
                self._confirm_soon = True
                asyncio.get_running_loop().call_soon(self._send_confirms)
            return
        held = self._held
        if held and group is None:
            n = held.get((origin, seq))
            if n is not None:
                if n > 1:
                    held[(origin, seq)] = n - 1
                    return
                del held[(origin, seq)]
        node_id = origin.rpartition("#")[2]
        pending = self._to_confirm.get(node_id)
        if pending is None:
            pending = self._to_confirm[node_id] = ([], {}, {})
        if group is None:
            pending[0].append(seq)
        else:
            (pending[2] if lost else pending[1]).setdefault(group, []).append(seq)
        if not self._confirm_soon:
            self._confirm_soon = True
            asyncio.get_running_loop().call_soon(self._send_confirms)

    def store_committed(self) -> None:
        """The store committed (the server calls it): confirm what waited for it."""
        waiting = self._after_commit
        if not waiting:
            return
        gate = self.commit_gate
        committed = gate.committed if gate is not None else 0
        i = 0
        for i, (needed, origin, seq, group) in enumerate(waiting):  # noqa: B007
            if needed > committed:
                break
            self._confirm(origin, seq, group)
        else:
            i = len(waiting)
        del waiting[:i]

    def _send_confirms(self) -> None:
        """One confirmation per origin per loop turn, the sequence numbers as ranges (to
        this node itself, for its own shared groups' copies, without NATS)."""
        self._confirm_soon = False
        pending, self._to_confirm = self._to_confirm, {}
        if self.nc is None:
            return
        if self._relay_acks:
            acks, self._relay_acks = self._relay_acks, {}
            for node_id, pairs in acks.items():
                self._ops.append(("ack", RELAYED + node_id, json.dumps(
                    {"acks": pairs}, separators=(",", ":")).encode()))
        for node_id, (seqs, groups, missed) in pending.items():
            ranges = _ranges(seqs)
            granges = {q: _ranges(g) for q, g in groups.items()}
            mranges = {q: _ranges(g) for q, g in missed.items()}
            if node_id == self.node_id:
                self._apply_confirms(self.node_name, ranges, granges, mranges)
                continue
            body: list[Any] = [self.node_name, ranges]
            if granges or mranges:
                body += [granges, mranges]
            self._ops.append(("ack", ACK + node_id,
                              json.dumps(body, separators=(",", ":")).encode()))
            self.confirms_sent += 1
        self._wake.set()

    def interest(self, topic: str) -> int:
        """The nodes known to want ``topic`` (this one counted when one of its shared
        groups matches: their copy comes back through NATS)."""
        n = self.members.interest(topic)
        if self._groups and any(r.groups for r in self.dispatcher.router.match(topic)):
            n += 1
        if self._relays and any(topic_match(f, topic) for r in self._relays.values()
                                for f in r[2]):
            n += 1  # relayed to the node a session moves to
        return n

    # --- a session moving to another node (docs/CLUSTER.md) ------------------------------

    def relay_start(self, cid: str, to_id: str, to_name: str, filters: list[str]) -> None:
        """The old node, before it takes the session of ``cid`` out of its routes for node
        ``to_name``: its plain filters stay routed here, and what matches them is relayed
        there, until that node says every other node has its routes for the session (or
        the hand-over fails, or times out)."""
        if self.nc is None:
            return
        self.relay_end(cid)
        plain = [f for f in filters if parse_shared(f) is None]
        for f in plain:
            self._relay_hold[f] = self._relay_hold.get(f, 0) + 1
        timer = asyncio.get_running_loop().call_later(
            2 * self.settings.handover_timeout + 2, self.relay_end, cid)
        self._relays[cid] = [to_id, to_name, plain, timer]
        self.lane.topics.clear()  # local publishes must come here to be relayed

    def relay_committed(self, cid: str) -> None:
        """The new node has committed the session: it waits for its routes at most
        handover_timeout more."""
        relay = self._relays.get(cid)
        if relay is not None:
            relay[3].cancel()
            relay[3] = asyncio.get_running_loop().call_later(
                self.settings.handover_timeout, self.relay_end, cid)

    def relay_end(self, cid: str) -> None:
        """Stop relaying for ``cid`` and drop the routes only it kept."""
        relay = self._relays.pop(cid, None)
        if relay is None:
            return
        relay[3].cancel()
        for f in relay[2]:
            n = self._relay_hold[f] - 1
            if n:
                self._relay_hold[f] = n
                continue
            del self._relay_hold[f]
            if f in self._relay_dropped:
                self._relay_dropped.discard(f)
                self.route_changed(f, False)

    def _relay(self, origin: str, seq: int, msg: Message) -> frozenset[str]:
        """Send ``msg`` to the nodes taking over sessions it matches; their names."""
        to: dict[str, tuple[str, list[str]]] = {}
        topic = msg.topic
        for cid, (to_id, to_name, filters, _timer) in self._relays.items():
            if any(topic_match(f, topic) for f in filters):
                to.setdefault(to_name, (to_id, []))[1].append(cid)
        if not to:
            return frozenset()
        props = None
        if msg.properties or msg.expiry:
            remaining = msg.remaining_expiry(time.monotonic()) if msg.expiry else None
            props = _props_out(dict(msg.properties), remaining)
        for to_id, cids in to.values():
            meta = json.dumps([origin, seq, msg.qos, msg.retain, msg.sender, props, topic,
                               cids, self.node_id], separators=(",", ":")).encode()
            self._ops.append(("ack", RELAY + to_id,
                              _MAGIC + len(meta).to_bytes(2, "big") + meta + msg.payload))
        self._wake.set()
        return frozenset(to)

    def incoming(self, cid: str) -> None:
        """The new node asks for the session of ``cid``: relayed messages for it wait
        until it is installed."""
        self._incoming.add(cid)

    def installed(self, cid: str, owner_id: str, ok: bool) -> None:
        """The session of ``cid`` is installed here (``ok``) or will not be: the relayed
        messages parked for it go to the dispatcher (or are dropped, unconfirmed); the
        old node is told to stop relaying once every other node has this node's routes
        (when the CONNACK goes)."""
        self._incoming.discard(cid)
        if ok:
            entry: _MovedIn = (self._seq, set(), set())
            self._moved_in[cid] = entry
            asyncio.get_running_loop().call_later(
                2 * self.settings.handover_timeout + 2, self._moved_in_end, cid, entry)
        parked, self._parked = self._parked, []
        for frame in parked:
            if cid in frame[4] and not ok:
                continue
            if self._incoming.intersection(frame[4]):
                self._parked.append(frame)
            else:
                self._relay_in(*frame)
        if not ok:
            return
        key = self.gate.routes
        if key and key in self._awaiting:
            self._release_at.setdefault(key, []).append((owner_id, cid))
        else:
            self._release(owner_id, cid)

    def _release(self, node_id: str, cid: str) -> None:
        self._ops.append(("ack", RELAYED + node_id, json.dumps(
            {"end": cid, "id": self.node_id}, separators=(",", ":")).encode()))
        self._wake.set()

    async def _relayed(self, m: Msg) -> None:
        """The new node: a message the old node got for a session moving here."""
        data = m.data
        try:
            if data[:1] != _MAGIC:
                raise ValueError("no mqttd frame")
            end = 3 + int.from_bytes(data[1:3], "big")
            origin, seq, qos, retain, sender, props, topic, cids, from_id = \
                json.loads(data[3:end])
            msg = Message(str(topic), data[end:], int(qos), bool(retain),
                          _props_in(props) if props else None, sender)
            frame = (str(origin), int(seq), msg, str(from_id), [str(c) for c in cids])
        except (KeyError, ValueError, TypeError) as err:
            log.warning("cluster: a relayed message is not an mqttd node's: %s", err)
            return
        if self._incoming.intersection(frame[4]):
            self._parked.append(frame)
            return
        registry = self._registry
        if registry is not None and not all(c in registry.sessions for c in frame[4]):
            return  # the hand-over failed: not confirmed (the old node took it back)
        self._relay_in(*frame)

    def _relay_in(self, origin: str, seq: int, msg: Message, from_id: str,
                  cids: list[str]) -> None:
        """Deliver a relayed message to the sessions moving here it is for, and to no
        other subscriber here (each gets, or got, its own direct copy), and confirm it to
        the old node (which then confirms its own) once queued or committed as any copy.
        A session does not get it again if it came here directly after its install (the
        dispatcher gave it then); one of this node's own messages went to the local
        subscribers when published: the session gets it if it was not installed yet then."""
        gate = self.commit_gate
        issued = gate.issued if gate is not None else 0
        key = (origin, seq)
        for cid in cids:
            entry = self._moved_in.get(cid)
            if origin == self.origin:
                if entry is not None and seq <= entry[0]:
                    self._deliver_to(cid, msg)
            elif entry is None:
                self._deliver_to(cid, msg)
            elif key not in entry[1]:
                self._deliver_to(cid, msg)
                entry[2].add(key)  # its direct copy, if it comes now, skips the session
        marker = "\x01" + from_id
        if gate is not None and (gate.issued != issued or self._after_commit):
            self._after_commit.append((gate.issued, origin, seq, marker))
        else:
            self._confirm(origin, seq, marker)

    def _moved_in_end(self, cid: str, entry: _MovedIn) -> None:
        if self._moved_in.get(cid) is entry:
            del self._moved_in[cid]

    def _note_direct(self, origin: str, seq: int, topic: str) -> set[Session] | None:
        """A message that came here directly reaches the sessions installed here lately
        through the dispatcher: remember it for those it matches (their relayed copy is
        then not delivered again). The sessions that already got it relayed are returned:
        the dispatcher leaves them out of this copy (no duplicate, QoS 2 stays once)."""
        registry = self._registry
        if registry is None:
            return None
        key = (origin, seq)
        skip: set[Session] | None = None
        for cid, (_seq, direct, relayed) in self._moved_in.items():
            session = registry.sessions.get(cid)
            if session is None:
                continue
            if key in relayed:
                relayed.discard(key)  # the one direct copy (the dedup window drops others)
                if skip is None:
                    skip = set()
                skip.add(session)
            elif any(parse_shared(f) is None and topic_match(f, topic)
                     for f in session.subscriptions):
                direct.add(key)
        return skip

    def _deliver_to(self, cid: str, msg: Message) -> None:
        """``msg`` to the session of ``cid`` only, as the dispatcher would."""
        registry = self._registry
        session = registry.sessions.get(cid) if registry is not None else None
        if session is None:
            return
        qos, retain, subids, hit = 0, False, [], False
        for f, (opts, subid) in session.subscriptions.items():
            if parse_shared(f) is not None or not topic_match(f, msg.topic):
                continue
            if opts.no_local and msg.sender == cid:
                continue
            hit = True
            q = opts.qos if opts.qos < msg.qos or session.upgrade_qos else msg.qos
            qos = max(qos, q)
            retain = retain or (msg.retain and opts.retain_as_published)
            if subid:
                subids.append(subid)
        if not hit:
            return
        self.dispatcher.deliver(session, (msg, qos, retain, tuple(subids), None), None)

    async def _relay_answer(self, m: Msg) -> None:
        """The old node: the new node confirms relayed messages, or ends the relay."""
        try:
            data = json.loads(m.data)
            acks = data.get("acks") or []
            end = data.get("end")
        except (ValueError, AttributeError) as err:
            log.warning("cluster: a relay answer is not an mqttd node's: %s", err)
            return
        for origin, seq in acks:
            if (origin, seq) in self._held:
                self._confirm(origin, seq)
        if end is not None:
            relay = self._relays.get(str(end))
            if relay is not None and relay[0] == data.get("id"):
                self.relay_end(str(end))

    # --- the connection -----------------------------------------------------------------

    async def _connect(self, timeout: float, name: str, no_echo: bool) -> NatsClient:
        # The first connection gets one retry, soon: a node whose NATS is not there
        # starts alone at once rather than after nats-py's minutes of attempts.
        return await asyncio.wait_for(nats.connect(
            servers=[self.settings.nats_url], name=name, no_echo=no_echo,
            connect_timeout=timeout, max_reconnect_attempts=1, reconnect_time_wait=0.1,
            error_cb=self._error, disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected), 2 * timeout + 1)

    async def run(self) -> None:
        """Connect, subscribe to the node's filters and groups, then send what the core
        hands over until cancelled. While NATS is unreachable at start the node runs single
        (logged once) and tries again every ``rejoin_interval`` seconds (0: never)."""
        url = self.settings.nats_url
        timeout = self.settings.connect_timeout
        retry = self.settings.rejoin_interval
        attempts = 0
        while True:
            try:
                nc = await self._connect(timeout, self.node_name, True)
                break
            except Exception as err:  # noqa: BLE001 - any failure means the same: run alone
                attempts += 1
                self.state = "unreachable"
                if attempts == 1:
                    log.warning("cluster: cannot reach NATS at %s (%s): running as a single "
                                "node%s", _safe_url(url), err or type(err).__name__,
                                f" until it can join (trying again every {retry:g} s)"
                                if retry > 0 else "")
                if retry <= 0:
                    return
            await asyncio.sleep(retry)
        try:
            qc = await self._connect(timeout, self.node_name + " (shared)", False)
        except BaseException:
            await nc.close()
            raise
        # Once connected, a lost connection is retried for ever (nats-py re-sends the
        # subscriptions itself when it is back).
        for c in (nc, qc):
            c.options["max_reconnect_attempts"] = -1
            c.options["reconnect_time_wait"] = 2.0
        self.nc, self.qc = nc, qc
        self.state = "connected"
        self.joined_at = time.time()
        routes = sorted(self._plain)
        self._ops[:0] = [("sub", f) for f in routes] + [("qsub", g) for g in self._groups]
        self._wake.set()  # subscribe them now, not at the next publish
        try:
            await nc.subscribe(HEARTBEAT, cb=self._heartbeat)
            await nc.subscribe(ROUTES, cb=self._routes)
            await nc.subscribe(BYE, cb=self._bye)
            await nc.subscribe(SYNC + self.node_id, cb=self._sync_asked)
            await nc.subscribe(ACK + self.node_id, cb=self._confirmed)
            await nc.subscribe(RELAY + self.node_id, cb=self._relayed)
            await nc.subscribe(RELAYED + self.node_id, cb=self._relay_answer)
            await self.control.start(nc)
            try:
                await self.retained.start(nc)
            except Exception as err:  # noqa: BLE001 - routing works without it
                self.retained.error = str(err) or type(err).__name__
                log.error("cluster: retained messages are not replicated: the bucket %s "
                          "cannot be used (%s); is JetStream enabled on the NATS server "
                          "(nats-server -js)?", self.settings.retained_bucket,
                          self.retained.error)
            if self.sessions is not None:
                try:
                    await self.sessions.start(nc)
                except Exception as err:  # noqa: BLE001 - routing works without it
                    self.sessions.error = str(err) or type(err).__name__
                    log.error("cluster: no session registry: the bucket %s cannot be used "
                              "(%s); is JetStream enabled on the NATS server (nats-server "
                              "-js)?", self.settings.sessions_bucket, self.sessions.error)
            log.info("cluster: node %s joined through NATS at %s (%d routes, %d shared "
                     "groups, %d retained messages from the cluster)", self.node_name,
                     _safe_url(url), len(routes), len(self._groups), self.retained.loaded)
            self._tasks.append(asyncio.get_running_loop().create_task(self._beat()))
            self._tasks.append(asyncio.get_running_loop().create_task(self._expire()))
            asyncio.get_running_loop().call_later(
                3 * self.settings.heartbeat_interval, self._settle_in)
            await self._announce()
            while True:
                await self._wake.wait()
                self._wake.clear()
                ops, self._ops = self._ops, []
                for op in ops:
                    await self._apply(nc, qc, op)
                if self._qflush:
                    await self._groups_in_nats(qc)
                if self._dirty or self._plain_dirty or self._group_dirty:
                    await self._announce()
        finally:
            self.nc = self.qc = None
            self.lane.topics.clear()  # all stays here now, uncounted
            self._closing = True
            self.state = "stopped"
            for task in self._tasks:
                task.cancel()
            self.control.stop()
            await self.retained.stop()
            if self.sessions is not None:
                await self.sessions.stop()
            try:
                if nc.is_connected:
                    await nc.publish(BYE, _js({"node": self.node_name, "id": self.node_id}))
                    await nc.flush(timeout=1)
            except Exception:  # noqa: BLE001,S110 - leaving anyway
                pass
            await qc.close()
            await nc.close()

    async def _groups_in_nats(self, qc: NatsClient) -> None:
        """After new queue subscriptions: once NATS has them (a round trip on their
        connection), the groups are announced and waited for (another node learning of a
        group before NATS would pick its node would wait for a copy nobody gets)."""
        self._qflush = False
        try:
            await qc.flush(timeout=max(2, int(self.settings.heartbeat_interval) + 1))
        except Exception as err:  # noqa: BLE001 - not waited for until the next flush
            log.debug("cluster: shared groups not flushed to NATS: %s", err)
            self._qflush = True
            return
        live = {q for q, sub in self._qsubs.items() if sub is not None and q in self._groups}
        if live != self._qlive:
            self._qlive = live
            self._own_tokens = {}

    async def _apply(self, nc: NatsClient, qc: NatsClient, op: tuple[Any, ...]) -> None:
        kind = op[0]
        try:
            if kind == "pub":
                await nc.publish(op[1], op[2])
                self.sent += 1
                self.metrics.inc(MESSAGES_FORWARD)
            elif kind == "ack":
                await nc.publish(op[1], op[2])
            elif kind == "sub":
                topic_filter = op[1]
                if topic_filter not in self._plain or topic_filter in self._subs:
                    return  # gone again meanwhile, or already there
                subject = _filter_subject(topic_filter)
                self._subs[topic_filter] = None
                self._subs[topic_filter] = await nc.subscribe(subject, cb=self._received)
            elif kind == "unsub":
                if op[1] in self._plain:
                    return  # back again meanwhile
                sub = self._subs.pop(op[1], None)
                if sub is not None:
                    await sub.unsubscribe()
            elif kind == "qsub":
                name = op[1]
                held = self._groups.get(name)
                if held is None or name in self._qsubs:
                    return
                subject = _filter_subject(held[0])
                self._qsubs[name] = None
                self._qsubs[name] = await qc.subscribe(
                    subject, queue=name, cb=self._group_callback(held[0], held[1]))
                self._qflush = True
            else:  # qunsub
                if op[1] in self._groups:
                    return
                sub = self._qsubs.pop(op[1], None)
                if sub is not None:
                    await sub.unsubscribe()
        except Exception as err:  # noqa: BLE001 - one message or route, not the node
            self._dropped()
            log.warning("cluster: %s %.64s failed: %s", kind, op[1],
                        err or type(err).__name__)

    # --- messages from other nodes --------------------------------------------------------

    def _parse(self, m: Msg) -> tuple[str, int, Message, bool] | None:
        """(origin, sequence, the message, whether the origin's shared groups had it)."""
        data = m.data
        try:
            if data[:1] != _MAGIC:
                raise ValueError("no mqttd frame")
            end = 3 + int.from_bytes(data[1:3], "big")
            origin, seq, qos, retain, sender, props, local = json.loads(data[3:end])
            subject = m.subject
            topic = self._topics.get(subject)
            if topic is None:
                if len(self._topics) >= 65536:
                    self._topics.clear()
                topic = self._topics[subject] = decode_topic(subject)
            msg = Message(topic, data[end:], int(qos), bool(retain),
                          _props_in(props) if props else None, sender)
        except (KeyError, ValueError, TypeError, SubjectError) as err:
            log.warning("cluster: a message on %s is not an mqttd node's: %s", m.subject, err)
            return None
        return str(origin), int(seq), msg, bool(local)

    async def _received(self, m: Msg) -> None:
        parsed = self._parse(m)
        if parsed is None:
            return
        origin, seq, msg, _local = parsed
        seen = self._seen.get(origin)
        if seen is None:
            seen = self._seen[origin] = _Seen()
        if not seen.first_time(seq):
            self.duplicates += 1
            self.metrics.inc(CLUSTER_DUPLICATES)
            return
        self.received += 1
        self.metrics.inc(CLUSTER_RECEIVED)
        skip = self._note_direct(origin, seq, msg.topic) if self._moved_in else None
        if self._relays and self._relay(origin, seq, msg):
            # Confirmed to the origin once both this node and the new node have it.
            self._held[(origin, seq)] = 2
            asyncio.get_running_loop().call_later(
                self.settings.forward_timeout + 1, self._held.pop, (origin, seq), None)
        # Straight to the dispatcher: the message.publish hook ran on its origin node,
        # retained messages come through the replicated bucket, and a message from
        # another node is never forwarded again. Shared groups get theirs through their
        # queue subscriptions.
        gate = self.commit_gate
        if gate is None:
            self._dispatch(msg, skip)
            self._confirm(origin, seq)
            return
        issued = gate.issued
        self._dispatch(msg, skip)
        if gate.issued != issued or self._after_commit:
            # Queued for a durable session: confirmed once on disk (in order).
            self._after_commit.append((gate.issued, origin, seq, None))
        else:
            self._confirm(origin, seq)

    def _dispatch(self, msg: Message, skip: set[Session] | None) -> None:
        if skip:
            self.dispatcher.publish_except(msg, skip)
        else:
            self.dispatcher.publish(msg, store_retained=False, groups=False)

    def _group_callback(self, topic_filter: str, group: str | None) -> Any:
        queue = queue_name(topic_filter, group)

        async def received(m: Msg) -> None:
            parsed = self._parse(m)
            if parsed is None or parsed[3]:
                return  # the origin's own members had it (NATS was away there)
            origin, seq, msg, _local = parsed
            gate = self.commit_gate
            issued = gate.issued if gate is not None else 0
            if self.dispatcher.publish_group(msg, topic_filter, group):
                self.group_received += 1
                self.metrics.inc(CLUSTER_SHARED_RECEIVED)
                # Confirmed for the group as a plain copy is: once queued, once on disk
                # when it went to a durable session.
                if gate is not None and (gate.issued != issued or self._after_commit):
                    self._after_commit.append((gate.issued, origin, seq, queue))
                else:
                    self._confirm(origin, seq, queue)
            else:  # its last member left while NATS chose this node: at most once
                self.group_missed += 1
                self._confirm(origin, seq, queue, lost=True)  # the publisher hears 0x80
        return received

    # --- membership -------------------------------------------------------------------

    async def _announce(self) -> None:
        """Tell the other nodes how this node's routes changed (one delta)."""
        nc = self.nc
        dirty, self._dirty = self._dirty, set()
        pdirty, self._plain_dirty = self._plain_dirty, set()
        gdirty, self._group_dirty = self._group_dirty, set()
        if nc is None:
            return
        added = [f for f in dirty if f in self._interest]
        removed = [f for f in dirty if f not in self._interest]
        padded = [f for f in pdirty if f in self._plain]
        premoved = [f for f in pdirty if f not in self._plain]
        gadded = {q: self._groups[q][0] for q in gdirty if q in self._groups}
        gremoved = [q for q in gdirty if q not in self._groups]
        key, self._route_unannounced = self._route_unannounced, 0
        if not (added or removed or padded or premoved or gadded or gremoved):
            self._route_release(key)  # added and gone again: nothing to wait for
            return
        self.version += 1
        try:
            await nc.publish(ROUTES, _js({"node": self.node_name, "id": self.node_id,
                                          "v": self.version, "add": added, "del": removed,
                                          "padd": padded, "pdel": premoved,
                                          "gadd": gadded, "gdel": gremoved}))
        except Exception as err:  # noqa: BLE001 - the next heartbeat makes them ask again
            log.debug("cluster: route delta not sent: %s", err)
            self._route_release(key)
            return
        if key and key in self._awaiting:
            self._route_versions[key] = self.version

    def _route_release(self, key: int) -> None:
        if key and self._awaiting.pop(key, None) is not None:
            self._route_done(key)
            self._settle()

    async def _beat(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            nc = self.nc
            if nc is not None and nc.is_connected:
                try:
                    await nc.publish(HEARTBEAT, _js({
                        "node": self.node_name, "id": self.node_id, "v": self.version,
                        "routes": len(self._interest), "interval": interval}))
                except Exception as err:  # noqa: BLE001 - next beat
                    log.debug("cluster: heartbeat not sent: %s", err)
                # Only a node that hears NATS judges the others: cut off itself, it would
                # count every other node down and publish their clients' wills.
                for peer in self.members.check(time.monotonic()):
                    log.warning("cluster: node %s is down (%s): its routes are dropped",
                                peer.name, peer.reason)
                    self._seen.pop(f"{peer.name}#{peer.id}", None)  # its dedup window
                    self._node_gone(peer.name)
                    if self.sessions is not None:
                        self.sessions.node_down(peer.id)
            await asyncio.sleep(interval)

    def _peer_message(self, m: Msg) -> dict[str, Any] | None:
        try:
            data = json.loads(m.data)
            if not isinstance(data, dict) or not isinstance(data.get("node"), str) \
                    or not isinstance(data.get("id"), str):
                raise ValueError("no node or id")
        except ValueError as err:
            log.warning("cluster: a message on %s is not an mqttd node's: %s", m.subject, err)
            return None
        if data["id"] == self.node_id:
            return None
        return data

    def _resync(self, name: str, node_id: str) -> None:
        if node_id in self._syncing:
            return
        self._syncing.add(node_id)
        self._tasks.append(asyncio.get_running_loop().create_task(
            self._read_table(name, node_id)))

    async def _read_table(self, name: str, node_id: str) -> None:
        try:
            nc = self.nc
            if nc is None:
                return
            reply = await nc.request(SYNC + node_id, b"", timeout=max(
                2.0, self.settings.heartbeat_interval))
            data = json.loads(reply.data)
            self.members.table(name, node_id, int(data["v"]), list(data["filters"]),
                               time.monotonic(), time.time(), data.get("plain"),
                               data.get("groups"))
            self._recheck(name)
            self._ack_routes(name, node_id)
        except Exception as err:  # noqa: BLE001 - the next heartbeat asks again
            log.debug("cluster: routes of %s not read: %s", name, err)
        finally:
            self._syncing.discard(node_id)
            task = asyncio.current_task()
            if task in self._tasks:
                self._tasks.remove(task)

    async def _heartbeat(self, m: Msg) -> None:
        data = self._peer_message(m)
        if data is None:
            return
        name, node_id = data["node"], data["id"]
        known = self.members.peers.get(name)
        if known is None or known.id != node_id or not known.up:
            log.info("cluster: node %s is up", name)
        if known is not None and known.id != node_id:
            # Restarted: what its former start had not confirmed, it never will.
            self._node_gone(name)
        if self.members.heartbeat(name, node_id, int(data.get("v", 0)), time.monotonic(),
                                  time.time()):
            self._resync(name, node_id)

    async def _routes(self, m: Msg) -> None:
        data = self._peer_message(m)
        if data is None:
            return
        gadd = data.get("gadd") or {}
        version = int(data.get("v", 0))
        if self.members.delta(data["node"], data["id"], version,
                              list(data.get("add", [])), list(data.get("del", [])),
                              time.monotonic(), time.time(), list(data.get("padd", [])),
                              list(data.get("pdel", [])),
                              list(gadd.items()) if isinstance(gadd, dict) else [],
                              list(data.get("gdel") or [])):
            self._resync(data["node"], data["id"])
            return
        if data.get("pdel") or data.get("gdel"):
            self._recheck(data["node"])
        if data.get("add") or data.get("padd") or data.get("gadd"):
            self._ack_routes(data["node"], data["id"])  # (its SUBACKs may wait for it)

    def _ack_routes(self, name: str, node_id: str) -> None:
        """Tell node ``name`` which version of its routes this node holds now (its SUBACKs
        wait for every node's)."""
        peer = self.members.peers.get(name)
        if peer is None or peer.id != node_id or not peer.synced:
            return
        self._ops.append(("ack", ACK + node_id, json.dumps(
            [self.node_name, [], {}, {}, peer.version], separators=(",", ":")).encode()))
        self._wake.set()

    async def _bye(self, m: Msg) -> None:
        data = self._peer_message(m)
        if data is not None and self.members.left(data["node"], data["id"]):
            log.info("cluster: node %s left", data["node"])
            self._seen.pop(f"{data['node']}#{data['id']}", None)
            self._node_gone(data["node"])

    async def _sync_asked(self, m: Msg) -> None:
        await m.respond(_js({"node": self.node_name, "id": self.node_id, "v": self.version,
                             "filters": list(self._interest), "plain": list(self._plain),
                             "groups": {q: g[0] for q, g in self._groups.items()}}))

    # --- what ctl shows -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This node's part: connection, server, subscriptions and counters."""
        nc = self.nc
        server = ""
        if nc is not None and nc.connected_url is not None:
            u = nc.connected_url
            server = f"{u.scheme}://{u.hostname}:{u.port}"
        return {
            "node": self.node_name, "id": self.node_id,
            "state": ("connected" if self.connected else "reconnecting")
            if nc is not None else self.state,
            "nats_url": _safe_url(self.settings.nats_url), "server": server,
            "joined_at": self.joined_at,
            "subscriptions": len(self._subs), "shared_groups": len(self._qsubs),
            "routes": len(self._interest), "routes_version": self.version,
            "nodes_up": 1 + len(self.members.up()) if nc is not None else 1,
            "settled": self._settled,
            "forwarded": self.sent, "local_only": self.local_only, "received": self.received,
            "duplicates": self.duplicates, "dropped": self.failed,
            "shared_received": self.group_received, "shared_missed": self.group_missed,
            "awaiting_confirmation": len(self._awaiting),
            "confirm_timeouts": self.confirm_timeouts, "confirms_sent": self.confirms_sent,
            "retained": ("replicated" if self.retained.kv is not None else
                         f"not replicated: {self.retained.error}" if self.retained.error
                         else "-"),
            "retained_replicated": self.retained.applied, "retained_sent": self.retained.sent,
            **self._sessions_status(),
            "ctl_answered": self.control.answered,
            "heartbeat_interval": self.settings.heartbeat_interval,
            "heartbeat_misses": self.settings.heartbeat_misses,
        }

    def _sessions_status(self) -> dict[str, Any]:
        reg = self.sessions
        if reg is None:
            return {}
        return {"session_registry": "in use" if reg.kv is not None else
                f"not in use: {reg.error}" if reg.error else "-",
                "sessions_claimed": reg.claimed, "sessions_displaced": reg.displaced,
                "sessions_taken_over": reg.taken_over, "session_claims_failed": reg.failed,
                "wills_kept": reg.wills_kept, "wills_delayed": reg.wills_delayed,
                "wills_of_dead_nodes": reg.wills_published,
                "persistent_sessions": "accepted" if reg.usable else
                "refused (0x88): the session registry cannot be reached",
                "persistent_refused": reg.refused, "sessions_handed_out": reg.handed_out,
                "sessions_handed_in": reg.handed_in, "handovers_failed": reg.handover_failed}

    def nodes(self) -> list[dict[str, Any]]:
        """This node and every node seen since it joined, up or down."""
        now = time.monotonic()
        rows = [{"node": self.node_name, "id": self.node_id, "self": True,
                 "status": "up" if self.connected else self.status()["state"],
                 "routes": len(self._interest), "routes_version": self.version,
                 "since": self.joined_at, "last_heartbeat_ago": 0.0, "reason": ""}]
        for peer in sorted(self.members.peers.values(), key=lambda p: p.name):
            rows.append(_peer_row(peer, now))
        return rows

    async def ask(self, op: str, arg: str | None = None, node: str | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A control request (``extra``: its other fields) answered by every other node up
        (``node``: that one alone; :mod:`.control`); one about a client id (show, kick) goes
        first to the node the session registry names alone."""
        if node is not None:
            return await self.control.ask(op, arg, extra, node=node)
        if op in OWNED and arg and self.sessions is not None:
            owner = await self.sessions.owner(arg)
            if owner is not None and owner != self.node_id and any(
                    p.id == owner for p in self.members.up()):
                answer = await self.control.ask(op, arg, extra, only={owner})
                if answer["rows"]:
                    return answer
        return await self.control.ask(op, arg, extra)

    async def trace(self, client_id: str, payload_limit: int | None, json_mode: bool,
                    write: Callable[[str, str, dict[str, Any]], None],
                    ended: Callable[[str, str | None], None],
                    kind: str = "clientid") -> RemoteTrace:
        """A client (or topic) trace on every other node up, streamed here
        (:mod:`.control`)."""
        return await self.control.trace(client_id, payload_limit, json_mode, write, ended,
                                        kind)

    def counters(self) -> dict[str, int]:
        """The nodes up (this one included) as a stat (``cluster.nodes``)."""
        return {"cluster.nodes": 1 + len(self.members.up()) if self.nc is not None else 1}

    # --- connection events ----------------------------------------------------------------

    async def _error(self, err: Exception) -> None:
        log.debug("cluster: NATS: %s", err)

    async def _disconnected(self) -> None:
        if self._closing:
            return
        log.warning("cluster: lost the connection to NATS; serving local traffic only "
                    "until it is back")

    async def _reconnected(self) -> None:
        log.info("cluster: connected to NATS again")
        # Heartbeats missed while this node was cut off are not the others' fault.
        self.members.heard_all(time.monotonic())
        if self.sessions is not None:
            # Others may have counted this node down meanwhile and published (and removed)
            # its clients' wills: keep those of its clients still connected again.
            self.sessions.resync_wills()


def _peer_row(peer: Peer, now: float) -> dict[str, Any]:
    return {"node": peer.name, "id": peer.id, "self": False,
            "status": "up" if peer.up else "down", "routes": len(peer.filters),
            "routes_version": peer.version, "since": peer.since,
            "last_heartbeat_ago": round(now - peer.last_seen, 3), "reason": peer.reason}


def _ranges(seqs: list[int]) -> list[list[int]]:
    """Sequence numbers as sorted [first, last] ranges."""
    seqs.sort()
    ranges: list[list[int]] = []
    for seq in seqs:
        if ranges and seq <= ranges[-1][1] + 1:
            if seq > ranges[-1][1]:
                ranges[-1][1] = seq
        else:
            ranges.append([seq, seq])
    return ranges


def _filter_subject(topic_filter: str) -> str:
    subject = encode_filter(topic_filter)
    if len(subject.encode()) > _MAX_SUBJECT:
        raise ValueError("the filter is too long to subscribe to across nodes")
    return subject


def _js(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _safe_url(url: str) -> str:
    """``url`` without any user or password in it (never shown or logged)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    return f"{scheme}://{rest.rpartition('@')[2]}"

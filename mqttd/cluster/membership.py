"""The other nodes as this node sees them: heartbeats and each node's route table
(docs/CLUSTER.md, "Membership" and "Knowing remote interest").

No I/O here: :class:`~mqttd.cluster.routing.Cluster` feeds in what arrives over NATS and
asks what to do (resynchronise a node's routes), which nodes went down and whether any
node is known to want a topic. Each node's route table is the set of filters its clients
hold (plain or shared), kept by versioned deltas; a gap in the versions, or a heartbeat
naming another version, makes the node ask for the whole table again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.trie import Trie
from ..mqtt.topics import is_wildcard

__all__ = ["Membership", "Peer", "group_token"]


def group_token(queue: str) -> str:
    """What a forwarded message waits for from whichever node NATS picks for the shared
    group ``queue`` (beside node names, in the same set: a NUL never starts a node name)."""
    return "\0" + queue


@dataclass(slots=True)
class Peer:
    """Another node: its name, the tag of its current start, its routes."""

    name: str
    id: str
    #: The version of its routes held here; -1 until its table has been read.
    version: int = -1
    filters: set[str] = field(default_factory=set)
    #: Those of its filters with plain subscribers (not only shared groups): a message
    #: matching one reaches that node for sure, which then confirms it (forward_timeout).
    plain: set[str] = field(default_factory=set)
    #: Its shared groups, NATS queue name -> filter: when NATS picks this node for a
    #: group's copy, the node confirms it for the group (``group_token``). Left as they
    #: were when the node goes down (what it may have been picked for, then).
    groups: dict[str, str] = field(default_factory=dict)
    #: time.monotonic() of its last heartbeat (or any message from it).
    last_seen: float = 0.0
    #: Wall-clock time it was first seen in this start of it.
    since: float = 0.0
    up: bool = True
    #: Why it is down ("missed heartbeats", "left").
    reason: str = ""
    heartbeats: int = 0

    @property
    def synced(self) -> bool:
        return self.version >= 0


class Membership:
    """Every node heard of, by name, and the union of their routes for matching."""

    def __init__(self, interval: float, misses: int) -> None:
        self.interval = interval
        self.misses = misses
        self.peers: dict[str, Peer] = {}
        #: filter -> names of the up nodes holding it; wildcard filters also in the trie.
        self._holders: dict[str, set[str]] = {}
        self._trie = Trie()
        #: topic -> interest, forgotten whenever a route or a node's state changes (the
        #: publish path asks once per message).
        self._cache: dict[str, int] = {}
        #: topic -> names of the up nodes with a matching plain filter (``confirming``),
        #: valid while ``_cache`` is the dict it was built for.
        self._confirming: dict[str, frozenset[str]] = {}
        self._confirming_for: dict[str, int] = self._cache
        #: Topics no node is known to want (filled by the cluster, for the PUBLISH fast
        #: path: ``core.services.LocalLane``), emptied in place with ``_cache``.
        self.quiet: dict[str, bool] = {}

    # --- what arrives ---------------------------------------------------------------

    def _peer(self, name: str, node_id: str, now: float, wall: float) -> Peer:
        peer = self.peers.get(name)
        if peer is None or peer.id != node_id or not peer.up:
            self._forget()  # a node appears or comes back: not known not to want
        if peer is None or peer.id != node_id:
            if peer is not None:  # the node restarted: its old routes are gone
                self._drop_routes(peer)
            peer = self.peers[name] = Peer(name, node_id, since=wall)
        if not peer.up:
            peer.up = True
            peer.reason = ""
            peer.version = -1  # read its routes again: it may have changed meanwhile
        peer.last_seen = now
        return peer

    def heartbeat(self, name: str, node_id: str, version: int, now: float, wall: float
                  ) -> bool:
        """A heartbeat; True when the node's routes must be read (again)."""
        peer = self._peer(name, node_id, now, wall)
        peer.heartbeats += 1
        return peer.version != version

    def delta(self, name: str, node_id: str, version: int, added: list[str],
              removed: list[str], now: float, wall: float,
              plain_added: tuple[str, ...] | list[str] = (),
              plain_removed: tuple[str, ...] | list[str] = (),
              groups_added: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
              groups_removed: tuple[str, ...] | list[str] = ()) -> bool:
        """A change of a node's routes; True when its routes must be read (again)."""
        peer = self._peer(name, node_id, now, wall)
        if not peer.synced:
            return False  # its table is being read; the heartbeat tells if this is in it
        if version <= peer.version:
            return False  # already in the table read
        if version != peer.version + 1:
            return True  # a delta was missed
        for f in added:
            if f not in peer.filters:
                peer.filters.add(f)
                self._hold(f, name)
        for f in removed:
            if f in peer.filters:
                peer.filters.discard(f)
                self._release(f, name)
        if plain_added or plain_removed or groups_added or groups_removed:
            peer.plain.update(plain_added)
            peer.plain.difference_update(plain_removed)
            for queue in groups_removed:
                peer.groups.pop(queue, None)
            peer.groups.update(groups_added)
            self._forget()
        peer.version = version
        return False

    def table(self, name: str, node_id: str, version: int, filters: list[str], now: float,
              wall: float, plain: list[str] | None = None,
              groups: dict[str, str] | None = None) -> None:
        """A node's whole route table (the answer to a resynchronisation)."""
        peer = self._peer(name, node_id, now, wall)
        if peer.synced and version < peer.version:
            return  # older than what deltas brought since
        self._drop_routes(peer)
        peer.filters = set(filters)
        peer.plain = set(filters if plain is None else plain)
        peer.groups = dict(groups or {})
        for f in peer.filters:
            self._hold(f, name)
        peer.version = version
        self._forget()

    def left(self, name: str, node_id: str) -> bool:
        """A node said it is stopping; True if it was up."""
        peer = self.peers.get(name)
        if peer is None or peer.id != node_id or not peer.up:
            return False
        self._down(peer, "left")
        return True

    def check(self, now: float) -> list[Peer]:
        """The nodes that have just missed ``misses`` heartbeats (now down)."""
        limit = self.interval * self.misses
        gone = [p for p in self.peers.values() if p.up and now - p.last_seen > limit]
        for peer in gone:
            self._down(peer, f"missed {self.misses} heartbeats")
        return gone

    def heard_all(self, now: float) -> None:
        """Count every up node as just heard (this node was cut off from NATS)."""
        for peer in self.peers.values():
            if peer.up:
                peer.last_seen = now

    def _down(self, peer: Peer, reason: str) -> None:
        self._forget()
        peer.up = False
        peer.reason = reason
        self._drop_routes(peer)
        peer.version = -1

    # --- the union of routes ----------------------------------------------------------

    def _forget(self) -> None:
        """What some node wants may have changed: forget every topic's answer."""
        self._cache = {}
        self.quiet.clear()

    def _hold(self, topic_filter: str, name: str) -> None:
        self._forget()
        holders = self._holders.get(topic_filter)
        if holders is None:
            holders = self._holders[topic_filter] = set()
            if is_wildcard(topic_filter):
                self._trie.insert(topic_filter)
        holders.add(name)

    def _release(self, topic_filter: str, name: str) -> None:
        self._forget()
        holders = self._holders.get(topic_filter)
        if holders is None:
            return
        holders.discard(name)
        if not holders:
            del self._holders[topic_filter]
            if is_wildcard(topic_filter):
                self._trie.delete(topic_filter)

    def _drop_routes(self, peer: Peer) -> None:
        for f in peer.filters:
            self._release(f, peer.name)
        peer.filters = set()
        peer.plain = set()

    def interest(self, topic: str) -> int:
        """The up nodes known to hold a filter matching ``topic``; a node whose routes
        are not read yet counts as one that may (it is not known not to). Cached per
        topic until the next change."""
        cache = self._cache
        n = cache.get(topic)
        if n is None:
            if len(cache) >= 65536:
                cache.clear()
            n = cache[topic] = self._interest(topic)
        return n

    def _interest(self, topic: str) -> int:
        names: set[str] = set()
        holders = self._holders
        exact = holders.get(topic)
        if exact:
            names |= exact
        for f in self._trie.match(topic):
            names |= holders[f]
        unknown = sum(1 for p in self.peers.values() if p.up and not p.synced)
        return len(names) + unknown

    def confirming(self, topic: str) -> frozenset[str]:
        """The up nodes whose routes are read and hold a plain filter matching ``topic``:
        each gets a message on it and confirms it (docs/CLUSTER.md); and the
        ``group_token`` of each of their shared groups matching it: the node NATS picks for
        the group confirms it. Cached per topic."""
        if self._confirming_for is not self._cache:
            self._confirming = {}
            self._confirming_for = self._cache
        cache = self._confirming
        names = cache.get(topic)
        if names is None:
            if len(cache) >= 65536:
                cache.clear()
            found: set[str] = set()
            holders = self._holders
            peers = self.peers
            for f in [topic, *self._trie.match(topic)]:
                for name in holders.get(f, ()):
                    peer = peers[name]
                    if peer.up:
                        if f in peer.plain:
                            found.add(name)
                        if peer.groups:
                            found.update(group_token(q) for q, gf in peer.groups.items()
                                         if gf == f)
            names = cache[topic] = frozenset(found)
        return names

    def group_held(self, queue: str) -> bool:
        """Whether an up node whose routes are read holds the shared group ``queue``."""
        return any(p.up and p.synced and queue in p.groups for p in self.peers.values())

    def up(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.up]

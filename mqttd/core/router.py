"""The route table (EMQX's emqx_router + the broker's subscriber tables), one node.

Each topic filter that has subscribers has a :class:`Route`: its plain
subscribers and its shared-subscription groups. Exact filters are found with
one dict lookup; wildcard filters live in the trie. ``match(topic)`` is cached
per topic; the cache holds Route objects, so it is invalidated only when a
filter gains its first or loses its last subscriber, not on every subscribe.

A full cache admits nothing more (no eviction) until ``_CACHE_REFRESH`` further
misses have passed, then starts over: clearing it whenever it filled meant that
more distinct topics than it holds, published in turn, never hit and paid for
the refill (100,000 topics: 1.8 instead of 1.2 µs a message in process).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Container
from typing import TYPE_CHECKING

from ..mqtt.packets import SubOpts
from ..mqtt.topics import is_wildcard
from ..stats import Stats
from .trie import Trie

if TYPE_CHECKING:
    from .session import Session

_CACHE_LIMIT = 65536
#: Misses a full cache lets pass before it starts over (so a topic population that moved
#: on is cached again; the refill adds an insert per eight misses).
_CACHE_REFRESH = 8 * _CACHE_LIMIT

#: What a subscriber entry holds: (SubOpts, subscription identifier or 0).
SubEntry = tuple[SubOpts, int]

#: The groups of every route without any (never written to).
_NO_GROUPS: dict[str | None, SharedGroup] = {}
#: The plain-subscriber dict of every route with fewer than two (never written to).
_NO_SUBS: dict[Session, SubEntry] = {}
#: The entry of a route without a single subscriber (never delivered with).
_NO_ENTRY: SubEntry = (SubOpts(), 0)


class SharedGroup:
    """The members of one shared subscription group on one filter."""

    __slots__ = ("name", "topic_filter", "members", "_next", "_sticky")

    def __init__(self, name: str | None, topic_filter: str) -> None:
        self.name = name
        self.topic_filter = topic_filter
        self.members: dict[Session, SubEntry] = {}
        self._next = 0
        self._sticky: Session | None = None

    def pick(self, strategy: str, sender: str | None, exclude: Session | None = None,
             refused: Container[Session] = ()) -> Session | None:
        """Choose the member that gets the next message (online members first), neither
        ``exclude`` nor one of ``refused``."""
        members = [s for s in self.members if s is not exclude and s not in refused]
        if not members:
            return None
        online = [s for s in members if s.channel is not None]
        pool = online or members
        if strategy == "round_robin":
            self._next += 1
            return pool[self._next % len(pool)]
        if strategy == "sticky":
            if self._sticky not in pool:
                self._sticky = random.choice(pool)
            return self._sticky
        if strategy == "hash":
            return pool[zlib.crc32((sender or "").encode()) % len(pool)]
        return random.choice(pool)


class Route:
    """Subscribers of one topic filter (without any $share/ prefix).

    Most filters have one subscriber: it is kept in ``one``/``entry`` and ``subs`` is
    the shared empty dict (a dict of one costs 224 B, half of what the subscription
    costs otherwise). A second subscriber moves both into a dict of their own; back at
    one, the route returns to the two fields. Readers iterate the plain subscribers as
    ``((one, entry),) if one is not None else subs.items()`` (see :meth:`plain`).

    A delivery walks ``subs`` and ``groups`` in place (no copy per message), and a hook
    callback it runs may subscribe or unsubscribe. So the walker sets ``walking`` (saving
    and restoring the value it found: walks nest when a callback publishes) and, while it
    is set, :class:`Router` replaces these dicts by changed copies instead of changing
    them: the walk goes on over the subscribers as they were when it began. A subscriber
    added meanwhile does not get that message; one removed meanwhile gets it if the walk
    had not passed it yet; nobody gets it twice.
    """

    __slots__ = ("topic_filter", "subs", "groups", "one", "entry", "walking")

    def __init__(self, topic_filter: str) -> None:
        self.topic_filter = topic_filter
        self.subs: dict[Session, SubEntry] = _NO_SUBS
        self.one: Session | None = None
        self.entry: SubEntry = _NO_ENTRY
        # Most routes never have a shared group: they share one empty dict (64 B saved
        # per route) until ``Router.add`` gives them their own. Nothing else writes to it.
        self.groups: dict[str | None, SharedGroup] = _NO_GROUPS
        #: A delivery is walking ``subs``/``groups``: the Router copies them on write.
        self.walking = False

    def plain(self) -> dict[Session, SubEntry]:
        """The plain subscribers and their entries (a copy: not for the delivery path)."""
        if self.one is not None:
            return {self.one: self.entry}
        return dict(self.subs)

    def count_plain(self) -> int:
        return 1 if self.one is not None else len(self.subs)


class Router:
    """Topic filter -> subscribers, with wildcard matching through the trie."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self._trie = Trie()
        self._cache: dict[str, list[Route]] = {}
        #: Misses since the cache filled (see _CACHE_REFRESH).
        self._cache_misses = 0
        #: Subscriptions held, plain and shared (kept as they change, for the stats).
        self._plain = 0
        self._shared = 0
        #: Told when a filter gains its first plain subscriber (True) or loses its last
        #: (False): the cluster's one NATS subscription per distinct filter (None: a single
        #: node).
        self.on_change: Callable[[str, bool], None] | None = None
        #: Told when a shared group (filter, group) gains its first member (True) or loses
        #: its last: the cluster's NATS queue subscription for the group (None: single node).
        self.on_group: Callable[[str, str | None, bool], None] | None = None
        #: Filters that begin with "$" (only they can match a $SYS topic [MQTT-4.7.2-1]):
        #: while there are none, $SYS presence skips building its events at each connect.
        self.dollar_filters = 0
        #: Told when the first "$" filter comes (True) and when the last goes (False):
        #: $SYS presence keeps its hooks on only while one exists, so no connect or leave
        #: runs them (or builds the ClientInfo they take) for nobody.
        self.on_dollar: Callable[[bool], None] | None = None

    def match(self, topic: str) -> list[Route]:
        """Every route whose filter matches ``topic``."""
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        return self.match_uncached(topic)

    def match_uncached(self, topic: str) -> list[Route]:
        """``match`` for a topic its caller already looked up in ``_cache`` and missed (the
        fast path does: one lookup in that large dict costs a cache miss of the CPU)."""
        found = self._trie.lookup(topic, self.routes)
        if topic.startswith("$SYS/"):
            # Not cached: presence topics name a client each (one entry per connect would
            # crowd out the real topics), and the periodic ones are published once a round.
            return found
        cache = self._cache
        if len(cache) < _CACHE_LIMIT:
            cache[topic] = found
        else:
            self._cache_misses += 1
            if self._cache_misses >= _CACHE_REFRESH:
                self._clear_cache()
        return found

    def _clear_cache(self) -> None:
        self._cache = {}
        self._cache_misses = 0

    def _route(self, topic_filter: str) -> Route:
        route = self.routes.get(topic_filter)
        if route is None:
            route = self.routes[topic_filter] = Route(topic_filter)
            if topic_filter[:1] == "$":
                self.dollar_filters += 1
                if self.dollar_filters == 1 and self.on_dollar is not None:
                    self.on_dollar(True)
            if is_wildcard(topic_filter):
                self._trie.insert(topic_filter)
            self._clear_cache()
        return route

    def _maybe_drop(self, route: Route) -> None:
        if route.one is None and not route.subs and not route.groups:
            del self.routes[route.topic_filter]
            if route.topic_filter[:1] == "$":
                self.dollar_filters -= 1
                if not self.dollar_filters and self.on_dollar is not None:
                    self.on_dollar(False)
            if is_wildcard(route.topic_filter):
                self._trie.delete(route.topic_filter)
            self._clear_cache()

    def add(self, topic_filter: str, group: str | None, shared: bool, session: Session,
            entry: SubEntry) -> None:
        """Add (or update) ``session``'s subscription to ``topic_filter``."""
        route = self._route(topic_filter)
        if shared:
            g = route.groups.get(group)
            if g is None:
                if route.groups is _NO_GROUPS:
                    route.groups = {}
                elif route.walking:  # copy on write (see Route)
                    route.groups = dict(route.groups)
                g = route.groups[group] = SharedGroup(group, topic_filter)
                if self.on_group is not None:
                    self.on_group(topic_filter, group, True)
            if session not in g.members:
                self._shared += 1
            g.members[session] = entry
        else:
            one = route.one
            if one is session:
                route.entry = entry
            elif one is not None:  # a second subscriber: both into a dict of their own
                route.subs = {one: route.entry, session: entry}
                route.one = None
                route.entry = _NO_ENTRY
                self._plain += 1
            elif not route.subs:  # the filter's first plain subscriber
                route.one = session
                route.entry = entry
                self._plain += 1
                if self.on_change is not None:
                    self.on_change(topic_filter, True)
            else:
                if session not in route.subs:
                    self._plain += 1
                if route.walking:  # copy on write (see Route)
                    route.subs = dict(route.subs)
                route.subs[session] = entry

    def remove(self, topic_filter: str, group: str | None, shared: bool, session: Session
               ) -> bool:
        route = self.routes.get(topic_filter)
        if route is None:
            return False
        if shared:
            g = route.groups.get(group)
            if g is None or g.members.pop(session, None) is None:
                return False
            self._shared -= 1
            if not g.members:
                if route.walking:  # copy on write (see Route)
                    route.groups = dict(route.groups)
                del route.groups[group]
                if self.on_group is not None:
                    self.on_group(topic_filter, group, False)
        elif route.one is session:  # the filter's last plain subscriber
            route.one = None
            route.entry = _NO_ENTRY
            self._plain -= 1
            if self.on_change is not None:
                self.on_change(topic_filter, False)
        elif route.one is not None or session not in route.subs:
            return False
        else:
            if route.walking:  # copy on write (see Route)
                route.subs = dict(route.subs)
            del route.subs[session]
            self._plain -= 1
            if len(route.subs) == 1:  # back to one: the dict goes
                ((route.one, route.entry),) = route.subs.items()
                route.subs = _NO_SUBS
        self._maybe_drop(route)
        return True

    # --- statistics ------------------------------------------------------------------

    def count_routes(self) -> int:
        return len(self.routes)

    def count_subscriptions(self) -> tuple[int, int]:
        """(all subscriptions, shared subscriptions)."""
        return self._plain + self._shared, self._shared

    def register_stats(self, stats: Stats) -> None:
        """Keep topics, routes and subscriptions in the node's stats (every second)."""

        def update() -> dict[str, int]:
            n = len(self.routes)  # one node: one route per filter with subscribers
            subs = self._plain + self._shared
            return {"topics": n, "routes": n, "subscriptions": subs, "suboptions": subs,
                    "subscriptions.shared": self._shared}

        stats.update_interval("router", update)

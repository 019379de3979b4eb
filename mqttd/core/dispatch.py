"""Dispatch (the routing half of EMQX's emqx_broker): from one message to every subscriber.

A message goes to each matching plain subscriber once, however many of its
filters match (the highest granted QoS wins and every Subscription Identifier
is carried), and to exactly one member of each matching shared group.
"""

from __future__ import annotations

from collections.abc import Callable

from ..hooks import Hooks
from ..metrics import (
    DELIVERY_DROPPED_NO_LOCAL,
    DELIVERY_DROPPED_QOS0_MSG,
    DELIVERY_DROPPED_QUEUE_FULL,
    MESSAGES_DELIVERED,
    MESSAGES_DROPPED_NO_SUBSCRIBERS,
    Metrics,
)
from ..mqtt.packets import SubOpts
from ..mqtt.topics import parse_shared
from .message import Message
from .retainer import Retainer
from .router import Route, Router, SharedGroup
from .services import EncodedCache
from .session import NO_MAP, Delivery, Session

#: The shared (options, 0) entries, by the options' fields (at most 36 of them).
_ENTRIES: dict[tuple[int, bool, bool, int], tuple[SubOpts, int]] = {}


class Dispatcher:
    """Routes messages to sessions; owns the router and the retained store."""

    def __init__(self, metrics: Metrics, hooks: Hooks, shared_strategy: str = "round_robin"
                 ) -> None:
        self.router = Router()
        self.retainer = Retainer()
        self.shared_strategy = shared_strategy
        self.dropped_no_subscribers = 0
        self.metrics = metrics
        self.hooks = hooks
        #: Exact topic names a module counts (topic metrics): topic -> callback(msg, n), run
        #: after each publish to it with the sessions reached (0: dropped). None while there
        #: are none: every other message pays one test, and no hook callback. Replaced, never
        #: changed in place (the compiled PUBLISH path keys what it remembers on the dict).
        self.watched: dict[str, Callable[[Message, int], None]] | None = None
        #: Told (session, +1) at a session's first subscription and (session, -1) when its
        #: last one goes: the registry's count of subscribers for the stats.
        self.on_subscribers: Callable[[Session, int], None] | None = None

    # --- subscriptions ---------------------------------------------------------------

    def subscribe(self, session: Session, topic_filter: str, opts: SubOpts, subid: int) -> bool:
        """Add a subscription; True if it is new for this session (False: replaced)."""
        # One entry shared by the route and the session, and for the common case (no
        # subscription identifier) one per distinct options: 100,000 subscriptions would
        # otherwise keep 100,000 SubOpts and 200,000 tuples (~180 B each).
        key = (opts.qos, opts.no_local, opts.retain_as_published, opts.retain_handling)
        entry = _ENTRIES.get(key)
        if entry is None:
            entry = _ENTRIES[key] = (SubOpts(*key), 0)
        if subid:
            entry = (entry[0], subid)
        share = parse_shared(topic_filter)
        if share is not None:
            group, real = share
            self.router.add(real, group, True, session, entry)
        else:
            self.router.add(topic_filter, None, False, session, entry)
        subscriptions = session.subscriptions
        if subscriptions is NO_MAP:  # the session's first subscription
            subscriptions = session.subscriptions = {}
        is_new = topic_filter not in subscriptions
        subscriptions[topic_filter] = entry
        if is_new and len(subscriptions) == 1 and self.on_subscribers is not None:
            self.on_subscribers(session, 1)
        opts = entry[0]
        if session.store is not None:
            session.store.save_subscription(session.client_id, topic_filter, opts, subid)
        return is_new

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        if not session.subscriptions and self.on_subscribers is not None:
            self.on_subscribers(session, -1)
        if session.store is not None:
            session.store.delete_subscription(session.client_id, topic_filter)
        share = parse_shared(topic_filter)
        if share is not None:
            self.router.remove(share[1], share[0], True, session)
        else:
            self.router.remove(topic_filter, None, False, session)
        return True

    def unsubscribe_all(self, session: Session) -> None:
        for topic_filter in list(session.subscriptions):
            self.unsubscribe(session, topic_filter)

    # --- publishing ------------------------------------------------------------------

    def needs_store(self, msg: Message) -> bool:
        """Whether publishing ``msg`` would write to the durable store: it is retained, or a
        session kept there would get it at QoS 1/2. (Asked only while the store is full.)"""
        if msg.retain and not msg.topic.startswith("$SYS/"):
            return True
        for route in self.router.match(msg.topic):
            for session, (opts, _subid) in route.plain().items():
                if session.store is not None and opts.qos:
                    return True
            for group in route.groups.values():
                for session, (opts, _subid) in group.members.items():
                    if session.store is not None and opts.qos:
                        return True
        return False

    def publish(self, msg: Message, store_retained: bool = True, groups: bool = True) -> int:
        """Store if retained (unless ``store_retained`` is False: a message from another
        node), dispatch, and return the number of sessions reached. ``groups`` False leaves
        shared groups out (in a cluster NATS picks the node of each group's member:
        :meth:`publish_group`)."""
        watched = self.watched
        if watched is not None and msg.topic in watched:
            return self._publish_watched(msg, store_retained, groups, watched)
        if msg.retain and store_retained:
            hooks = self.hooks
            if hooks.message_retain:  # retainer limits (mqttd/modules/retainer.py)
                kept = hooks.run_fold("message.retain", (), msg)
                if kept is not None:
                    self.retainer.store(kept)
            else:
                self.retainer.store(msg)
        routes = self.router.match(msg.topic)
        if not routes:
            self.dropped_no_subscribers += 1
            if not msg.topic.startswith("$SYS/"):  # EMQX does not count its own either
                self.metrics.inc(MESSAGES_DROPPED_NO_SUBSCRIBERS)
                if self.hooks.message_dropped:
                    self.hooks.run("message.dropped", msg, "no_subscribers")
            return 0
        sender = msg.sender
        mqos = msg.qos
        mretain = msg.retain
        # QoS 0 bytes shared by the subscribers (not used for one a message.delivered
        # callback gives a message of its own: see Channel.deliver).
        encoded: EncodedCache | None = {}
        if len(routes) == 1:
            # The common case (one matching filter), once per message: locals, and
            # deliver() inlined (one Python call less per subscriber).
            route = routes[0]
            n = 0
            # A route's single subscriber is kept without a dict (see Route). Its dicts
            # are walked in place, as they are now: a callback that subscribes or
            # unsubscribes meanwhile has them copied on write (Route.walking).
            one = route.one
            route_groups = route.groups if groups else None
            walking = route.walking
            route.walking = True
            try:
                for session, (opts, subid) in (((one, route.entry),) if one is not None
                                               else route.subs.items()):
                    if opts.no_local and sender == session.client_id:
                        self._no_local(session, msg)
                        continue
                    qos = opts.qos
                    if qos > mqos and not session.upgrade_qos:
                        qos = mqos
                    delivery = (msg, qos, mretain and opts.retain_as_published,
                                (subid,) if subid else (), None)
                    channel = session.channel
                    if channel is not None:
                        channel.deliver(delivery, encoded)
                    else:
                        dropped = session.enqueue(delivery)
                        if dropped is not None:
                            self.queue_dropped(session, dropped)
                    n += 1
                if route_groups:
                    n += self._dispatch_groups(route_groups, msg, encoded)
            finally:
                route.walking = walking
            if n:
                self.metrics.inc(MESSAGES_DELIVERED, n)
            return n
        n = self._publish_merged(routes, msg, encoded, groups, None)
        if n:
            self.metrics.inc(MESSAGES_DELIVERED, n)
        return n

    def publish_except(self, msg: Message, skip: set[Session]) -> int:
        """As ``publish(msg, store_retained=False, groups=False)`` (a message from another
        node), but not to the sessions in ``skip`` (a cluster node's session that already
        got this message relayed by its old node). Rare: off the delivery path."""
        n = self._publish_merged(self.router.match(msg.topic), msg, {}, False, skip)
        if n:
            self.metrics.inc(MESSAGES_DELIVERED, n)
        return n

    def _publish_merged(self, routes: list[Route], msg: Message, encoded: EncodedCache | None,
                        groups: bool, skip: set[Session] | None) -> int:
        """Deliver ``msg`` through several matching routes (not to the sessions in ``skip``):
        one delivery per session with the highest QoS and all subscription identifiers (MQTT
        5.0 section 4.8.1 / 3.3.4), and a copy per shared group if ``groups``; the number of
        sessions reached (counted by the caller)."""
        sender = msg.sender
        mqos = msg.qos
        #: session -> (highest qos, retain, subscription ids): a tuple, rebuilt in the rare
        #: case that one session matches twice (cheaper than a mutable record per session).
        merged: dict[Session, tuple[int, bool, list[int]]] = {}
        n = 0
        # Every route's subscribers as they are now, walked in place while callbacks run
        # (No Local's, the groups' deliveries): changes meanwhile are copies (Route.walking).
        walks = [(route, route.walking, route.one, route.entry, route.subs, route.groups)
                 for route in routes]
        for route in routes:
            route.walking = True
        try:
            for _route, _walking, one, entry, subs, route_groups in walks:
                for session, (opts, subid) in (((one, entry),) if one is not None
                                               else subs.items()):
                    if skip is not None and session in skip:
                        continue
                    if opts.no_local and sender == session.client_id:
                        self._no_local(session, msg)
                        continue
                    qos = opts.qos if opts.qos < mqos or session.upgrade_qos else mqos
                    retain = msg.retain and opts.retain_as_published
                    m = merged.get(session)
                    if m is None:
                        merged[session] = (qos, retain, [subid] if subid else [])
                    else:
                        if subid:
                            m[2].append(subid)
                        merged[session] = (qos if qos > m[0] else m[0], m[1] or retain,
                                           m[2])
                if route_groups and groups:
                    n += self._dispatch_groups(route_groups, msg, encoded)
        finally:
            for walk in walks:
                walk[0].walking = walk[1]
        for session, (qos, retain, subids) in merged.items():
            self.deliver(session, (msg, qos, retain, tuple(subids), None), encoded)
        return n + len(merged)

    def publish_group(self, msg: Message, topic_filter: str, group: str | None) -> int:
        """Deliver ``msg`` to one member of this node's shared group ``group`` on
        ``topic_filter`` (the group's copy NATS chose this node for); 1 if one took it."""
        route = self.router.routes.get(topic_filter)
        g = route.groups.get(group) if route is not None else None
        n = self._to_member(g, msg, None, None) if g is not None else 0
        if n:
            self.metrics.inc(MESSAGES_DELIVERED, n)
        else:
            self.metrics.inc(MESSAGES_DROPPED_NO_SUBSCRIBERS)
        return n

    def _publish_watched(self, msg: Message, store_retained: bool, groups: bool,
                         watched: dict[str, Callable[[Message, int], None]]) -> int:
        self.watched = None  # (for this publish only: the callback gets its outcome)
        try:
            n = self.publish(msg, store_retained, groups)
        finally:
            if self.watched is None:
                self.watched = watched or None
        callback = watched.get(msg.topic)
        if callback is not None:
            callback(msg, n)
        return n

    def _no_local(self, session: Session, msg: Message) -> None:
        """A subscriber's own message, not sent back because of No Local."""
        self.metrics.inc(DELIVERY_DROPPED_NO_LOCAL)
        if self.hooks.delivery_dropped:
            self.hooks.run("delivery.dropped", session, msg, "no_local")

    def deliver(self, session: Session, delivery: Delivery,
                encoded: EncodedCache | None) -> None:
        """``delivery`` to ``session``: its channel when connected, else its queue."""
        channel = session.channel
        if channel is not None:
            channel.deliver(delivery, encoded)
        else:
            dropped = session.enqueue(delivery)
            if dropped is not None:
                self.queue_dropped(session, dropped)

    def queue_dropped(self, session: Session, delivery: Delivery) -> None:
        """An offline session's full queue pushed ``delivery`` out (or refused a QoS 0)."""
        if delivery[1]:
            self.metrics.inc(DELIVERY_DROPPED_QUEUE_FULL)
            reason = "queue_full"
        else:
            self.metrics.inc(DELIVERY_DROPPED_QOS0_MSG)
            reason = "qos0_msg"
        if self.hooks.delivery_dropped:
            self.hooks.run("delivery.dropped", session, delivery[0], reason)

    def _dispatch_groups(self, route_groups: dict[str | None, SharedGroup], msg: Message,
                         encoded: EncodedCache | None) -> int:
        """A copy of ``msg`` to one member of each of a route's groups (``route_groups``,
        its ``groups`` dict when the delivery began: see Route.walking)."""
        n = 0
        for group in route_groups.values():
            n += self._to_member(group, msg, encoded, None)
        return n

    def _to_member(self, group: SharedGroup, msg: Message, encoded: EncodedCache | None,
                   exclude: Session | None) -> int:
        """Deliver ``msg`` to the member ``group`` picks (not ``exclude``); 1 if one took
        it. A member authorization refuses it to is passed over for another (the message
        is the group's, not that member's)."""
        refused: set[Session] | None = None
        while True:
            session = group.pick(self.shared_strategy, msg.sender, exclude,
                                 refused or ())
            if session is None:
                return 0
            opts, subid = group.members[session]
            qos = opts.qos if opts.qos < msg.qos or session.upgrade_qos else msg.qos
            retain = msg.retain and opts.retain_as_published
            delivery = (msg, qos, retain, (subid,) if subid else (), group)
            channel = session.channel
            if channel is None:
                dropped = session.enqueue(delivery)
                if dropped is not None:
                    self.queue_dropped(session, dropped)
                return 1
            if channel.deliver(delivery, encoded) is not False:
                return 1
            if refused is None:
                refused = set()
            refused.add(session)

    def redispatch_shared(self, leaving: Session, deliveries: list[Delivery]) -> int:
        """Hand a leaving member's unfinished QoS 1/2 shared deliveries to other members."""
        n = 0
        for msg, qos, _retain, _subids, group in deliveries:
            if isinstance(group, SharedGroup) and qos:
                n += self._to_member(group, msg, None, leaving)
        if n:
            self.metrics.inc(MESSAGES_DELIVERED, n)
        return n

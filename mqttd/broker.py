"""Publish and dispatch (EMQX's emqx_broker): from one message to every subscriber.

A message goes to each matching plain subscriber once, however many of its
filters match (the highest granted QoS wins and every Subscription Identifier
is carried), and to exactly one member of each matching shared group.
"""

from __future__ import annotations

from typing import Any

from .message import Message
from .packets import SubOpts
from .retainer import Retainer
from .router import Router
from .topics import parse_shared


class Broker:
    """Routes messages to sessions; owns the router and the retained store."""

    def __init__(self, shared_strategy: str = "round_robin") -> None:
        self.router = Router()
        self.retainer = Retainer()
        self.shared_strategy = shared_strategy
        self.dropped_no_subscribers = 0

    # --- subscriptions ---------------------------------------------------------------

    def subscribe(self, session: Any, topic_filter: str, opts: SubOpts, subid: int) -> bool:
        """Add a subscription; True if it is new for this session (False: replaced)."""
        share = parse_shared(topic_filter)
        if share is not None:
            group, real = share
            self.router.add(real, group, True, session, (opts, subid))
        else:
            self.router.add(topic_filter, None, False, session, (opts, subid))
        is_new = topic_filter not in session.subscriptions
        session.subscriptions[topic_filter] = (opts, subid)
        return is_new

    def unsubscribe(self, session: Any, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        share = parse_shared(topic_filter)
        if share is not None:
            self.router.remove(share[1], share[0], True, session)
        else:
            self.router.remove(topic_filter, None, False, session)
        return True

    def unsubscribe_all(self, session: Any) -> None:
        for topic_filter in list(session.subscriptions):
            self.unsubscribe(session, topic_filter)

    # --- publishing ------------------------------------------------------------------

    def publish(self, msg: Message) -> int:
        """Store if retained, dispatch, and return the number of sessions reached."""
        if msg.retain:
            self.retainer.store(msg)
        routes = self.router.match(msg.topic)
        if not routes:
            self.dropped_no_subscribers += 1
            return 0
        sender = msg.sender
        mqos = msg.qos
        encoded: dict[Any, bytes] = {}
        if len(routes) == 1:
            route = routes[0]
            n = 0
            for session, (opts, subid) in route.subs.items():
                if opts.no_local and sender == session.client_id:
                    continue
                qos = opts.qos if opts.qos < mqos else mqos
                retain = msg.retain and opts.retain_as_published
                _deliver(session, (msg, qos, retain, (subid,) if subid else (), None), encoded)
                n += 1
            if route.groups:
                n += self._dispatch_groups(route, msg, encoded)
            return n
        # Several filters match: one delivery per session with the highest QoS and all
        # subscription identifiers (MQTT 5.0 section 4.8.1 / 3.3.4).
        merged: dict[Any, list[Any]] = {}
        n = 0
        for route in routes:
            for session, (opts, subid) in route.subs.items():
                if opts.no_local and sender == session.client_id:
                    continue
                qos = opts.qos if opts.qos < mqos else mqos
                retain = msg.retain and opts.retain_as_published
                m = merged.get(session)
                if m is None:
                    merged[session] = [qos, retain, [subid] if subid else []]
                else:
                    if qos > m[0]:
                        m[0] = qos
                    m[1] = m[1] or retain
                    if subid:
                        m[2].append(subid)
            if route.groups:
                n += self._dispatch_groups(route, msg, encoded)
        for session, (qos, retain, subids) in merged.items():
            _deliver(session, (msg, qos, retain, tuple(subids), None), encoded)
        return n + len(merged)

    def _dispatch_groups(self, route: Any, msg: Message, encoded: dict[Any, bytes]) -> int:
        n = 0
        for group in route.groups.values():
            session = group.pick(self.shared_strategy, msg.sender)
            if session is None:
                continue
            opts, subid = group.members[session]
            qos = opts.qos if opts.qos < msg.qos else msg.qos
            retain = msg.retain and opts.retain_as_published
            _deliver(session, (msg, qos, retain, (subid,) if subid else (), group), encoded)
            n += 1
        return n

    def redispatch_shared(self, leaving: Any, deliveries: list[Any]) -> int:
        """Hand a leaving member's unfinished QoS 1/2 shared deliveries to other members."""
        n = 0
        for msg, qos, _retain, _subids, group in deliveries:
            if group is None or qos == 0:
                continue
            session = group.pick(self.shared_strategy, msg.sender, exclude=leaving)
            if session is None:
                continue
            opts, subid = group.members[session]
            q = opts.qos if opts.qos < msg.qos else msg.qos
            retain = msg.retain and opts.retain_as_published
            _deliver(session, (msg, q, retain, (subid,) if subid else (), group), {})
            n += 1
        return n


def _deliver(session: Any, delivery: Any, encoded: dict[Any, bytes]) -> None:
    channel = session.channel
    if channel is not None:
        channel.deliver(delivery, encoded)
    else:
        session.enqueue(delivery)

"""Subscriptions held by sessions (EMQX's emqx_mgmt subscriptions): list, show, add, delete.

Adding works like a SUBSCRIBE from the client would, minus the hooks and
access checks (the operator asked): the zone's mountpoint is applied and a
connected client gets the filter's retained messages at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..core.channel import Channel
from ..mqtt.packets import SubOpts
from ..mqtt.topics import filter_error, parse_shared
from .errors import InvalidArgument, NotFound
from .listing import Listing, Row, same

if TYPE_CHECKING:
    from ..core.dispatch import Dispatcher
    from ..core.registry import Registry
    from ..core.session import Session

__all__ = ["Subscriptions", "subscription_rows"]

log = logging.getLogger("mqttd.mgmt")


def subscription_rows(sessions: list[Session]) -> Iterator[Row]:
    """One row per subscription of each session, built lazily (a session at a time)."""
    for session in sessions:
        for topic_filter, (opts, subid) in list(session.subscriptions.items()):
            yield {"clientid": session.client_id, "topic": topic_filter, "qos": opts.qos,
                   "no_local": opts.no_local, "retain_as_published": opts.retain_as_published,
                   "retain_handling": opts.retain_handling, "subid": subid}


class Subscriptions:
    """The subscriptions of the node's sessions."""

    def __init__(self, registry: Registry, dispatcher: Dispatcher) -> None:
        self.registry = registry
        self.dispatcher = dispatcher

    def all(self) -> Listing[Row]:
        """Every subscription of every session (a snapshot of the sessions)."""
        return Listing(subscription_rows(list(self.registry.sessions.values())), same)

    def of_client(self, client_id: str) -> Listing[Row]:
        """The subscriptions of one session; NotFound("session")."""
        return Listing(subscription_rows([self._session(client_id)]), same)

    def add(self, client_id: str, topic_filter: str, qos: int, *, by: str = "management"
            ) -> Row:
        """Subscribe a session to ``topic_filter`` at ``qos``; returns the filter as stored
        (mountpoint applied) and whether it is new for the session."""
        if qos not in (0, 1, 2):
            raise InvalidArgument("QoS should be 0, 1, 2")
        problem = filter_error(topic_filter)
        if problem:
            raise InvalidArgument(f"bad topic filter {topic_filter!r}: {problem}")
        session = self._session(client_id)
        opts = SubOpts(qos)
        owner = session.channel
        channel = owner if isinstance(owner, Channel) else None
        if channel is not None and channel.zone.mountpoint:
            mp = channel.zone.mountpoint
            share = parse_shared(topic_filter)
            topic_filter = (mp + topic_filter if share is None else
                            (f"$share/{share[0]}/" if share[0] is not None else "$queue/")
                            + mp + share[1])
        is_new = self.dispatcher.subscribe(session, topic_filter, opts, 0)
        if channel is not None and parse_shared(topic_filter) is None:
            # As a SUBSCRIBE would: the retained messages of the filter go out now.
            for msg in self.dispatcher.retainer.match(topic_filter):
                channel.deliver((msg, min(opts.qos, msg.qos), True, (), None), None)
        log.info("subscription %s added to %s by %s", topic_filter, client_id, by)
        return {"clientid": client_id, "topic": topic_filter, "qos": opts.qos, "new": is_new}

    def delete(self, client_id: str, topic_filter: str) -> Row:
        """Unsubscribe a session from ``topic_filter`` exactly as stored; NotFound("session")
        or NotFound("subscription")."""
        session = self._session(client_id)
        if not self.dispatcher.unsubscribe(session, topic_filter):
            raise NotFound("subscription", topic_filter)
        return {"clientid": client_id, "topic": topic_filter, "deleted": True}

    def _session(self, client_id: str) -> Session:
        session = self.registry.sessions.get(client_id)
        if session is None:
            raise NotFound("session", client_id)
        return session

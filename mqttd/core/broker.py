"""The broker's services to its channels (EMQX's emqx_broker + emqx_access_control + emqx_cm
as a channel calls them): access checks, publish and subscribe with their hooks and counters.

:class:`Broker` is the :class:`~mqttd.core.services.ChannelServices` every channel is
given. It owns the dispatcher (router, shared groups, retained store) and the
registry (client id -> channel and session), so a channel reaches the rest of
the broker through this one object and the calls typed in ``core/services.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from ..config import Settings, Zone
from ..hooks import Hooks
from ..metrics import (
    CLIENT_ACL_ALLOW,
    CLIENT_ACL_DENY,
    CLIENT_ACL_IGNORE,
    CLIENT_AUTH_ANONYMOUS,
    CLIENT_AUTH_FAILURE,
    CLIENT_AUTH_IGNORE,
    CLIENT_AUTH_SUCCESS,
    MESSAGES_ACKED,
    MESSAGES_PUBLISH,
    MESSAGES_RETAINED,
    Metrics,
)
from ..mqtt.packets import SubOpts
from .dispatch import Dispatcher
from .message import Message
from .registry import Registry
from .services import ClientInfo, SessionOwner, Timers
from .session import Delivery, Session

log = logging.getLogger("mqttd.broker")

__all__ = ["Broker"]


class Broker:
    """The node's broker: what channels call (authenticate, check_acl, publish, ...)."""

    def __init__(self, settings: Settings, metrics: Metrics, hooks: Hooks, timers: Timers,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.hooks = hooks
        default_zone = next(iter(settings.zones.values()))
        self.dispatcher = Dispatcher(metrics, hooks,
                                     shared_strategy=default_zone.shared_subscription_strategy)
        self.router = self.dispatcher.router
        self.retainer = self.dispatcher.retainer
        self.registry = Registry(self.dispatcher, metrics, hooks, timers, self.publish_will,
                                 [z.await_rel_timeout for z in settings.zones.values()],
                                 clock)
        #: Topic traces (filter -> traces): empty while none runs, so publishing pays one
        #: falsy test; ``trace_publish`` is told of each message while any exists.
        self.topic_traces: Mapping[str, object] = {}
        self.trace_publish: Callable[[Message, int], None] | None = None

    # --- access -----------------------------------------------------------------------

    def authenticate(self, client_id: str, username: str | None, password: bytes | None,
                     peer: str) -> int:
        """0 to accept the client, or a CONNACK reason code to refuse it.

        Without an authentication callback every client is accepted (counted as
        ``client.auth.ignore``); with one, the fold's result decides.
        """
        metrics = self.metrics  # client.authenticate is the sum of the three outcomes
        hooks = self.hooks
        if hooks.client_authenticate:
            code = int(hooks.run_fold("client.authenticate",
                                      (client_id, username, password, peer), 0))
            metrics.inc(CLIENT_AUTH_FAILURE if code else CLIENT_AUTH_SUCCESS)
        else:
            code = 0
            metrics.inc(CLIENT_AUTH_IGNORE)
        if not code and username is None:
            metrics.inc(CLIENT_AUTH_ANONYMOUS)
        return code

    def check_acl(self, client: ClientInfo, action: str, topic: str) -> int:
        """0 to allow ``action`` ("publish"/"subscribe") on ``topic``, else a reason code."""
        metrics = self.metrics  # client.check_acl is the sum of the three outcomes
        hooks = self.hooks
        if hooks.client_check_acl:
            code = int(hooks.run_fold("client.check_acl", (client, action, topic), 0))
            metrics.inc(CLIENT_ACL_DENY if code else CLIENT_ACL_ALLOW)
            return code
        metrics.inc(CLIENT_ACL_IGNORE)
        return 0

    # --- messages ---------------------------------------------------------------------

    def publish(self, msg: Message) -> int:
        """Publish a client's message (or a will): the message.publish hook, then dispatch.

        Returns the number of sessions reached. ``$SYS`` messages do not come this way.
        """
        metrics = self.metrics
        metrics.inc(MESSAGES_PUBLISH)
        hooks = self.hooks
        if hooks.message_publish:
            result = hooks.run_fold("message.publish", (), msg)
            if result is None:
                log.debug("a message.publish callback stopped the message to %s", msg.topic)
                return 0
            msg = result
        if msg.retain and msg.payload:
            metrics.inc(MESSAGES_RETAINED)
        n = self.dispatcher.publish(msg)
        if self.topic_traces and self.trace_publish is not None:
            self.trace_publish(msg, n)
        return n

    def publish_will(self, msg: Message) -> None:
        log.debug("publishing will of %s to %s", msg.sender, msg.topic)
        self.publish(msg)

    def retained(self, topic_filter: str) -> list[Message]:
        return self.retainer.match(topic_filter)

    def acked(self, client: ClientInfo, msg: Message) -> None:
        """A client acknowledged a QoS 1/2 delivery (PUBACK, or PUBCOMP)."""
        self.metrics.inc(MESSAGES_ACKED)
        hooks = self.hooks
        if hooks.message_acked:
            hooks.run("message.acked", client, msg)

    def queue_dropped(self, session: Session, delivery: Delivery) -> None:
        self.dispatcher.queue_dropped(session, delivery)

    # --- subscriptions ----------------------------------------------------------------

    def subscribe(self, session: Session, topic_filter: str, opts: SubOpts, subid: int
                  ) -> bool:
        """Add the subscription to the session; True if it is new (not replaced)."""
        is_new = self.dispatcher.subscribe(session, topic_filter, opts, subid)
        hooks = self.hooks
        if hooks.session_subscribed:
            hooks.run("session.subscribed", session, topic_filter, opts, is_new)
        return is_new

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        """Remove the subscription; False if the session had none for ``topic_filter``."""
        found = self.dispatcher.unsubscribe(session, topic_filter)
        hooks = self.hooks
        if found and hooks.session_unsubscribed:
            hooks.run("session.unsubscribed", session, topic_filter)
        return found

    # --- sessions ---------------------------------------------------------------------

    def open_session(self, owner: SessionOwner, zone: Zone, clean_start: bool, expiry: int,
                     *, max_inflight: int) -> tuple[Session, bool]:
        return self.registry.open_session(owner, zone, clean_start, expiry,
                                          max_inflight=max_inflight)

    def close_session(self, owner: SessionOwner) -> None:
        self.registry.detach(owner)

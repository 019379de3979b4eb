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
from functools import partial

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
from ..mqtt.reasons import ReasonCode as RC
from .dispatch import Dispatcher
from .message import Message
from .registry import Registry
from .services import (
    Authenticator,
    Authorizer,
    AuthResult,
    AuthStep,
    ClientInfo,
    ClusterLink,
    CommitGate,
    EnhancedAuth,
    RemoteGate,
    SessionOwner,
    SessionStore,
    Timers,
)
from .session import Delivery, Session

log = logging.getLogger("mqttd.broker")

#: No provider had an opinion (no chain configured, or every provider ignored the client).
_UNDECIDED = AuthResult(0, decided=False)

__all__ = ["Broker"]


class Broker:
    """The node's broker: what channels call (authenticate, check_acl, publish, ...)."""

    def __init__(self, settings: Settings, metrics: Metrics, hooks: Hooks, timers: Timers,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.hooks = hooks
        #: The node's timers (a channel's end of proof, e.g. its token's expiry).
        self.timers = timers
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
        #: The access chains (mqttd/access), when configured; None: hooks alone decide.
        self.authenticator: Authenticator | None = None
        self.authorizer: Authorizer | None = None
        self._zones = settings.zones
        #: listener name -> whether clients no provider vouched for are let in (the node
        #: sets it from the listeners' and zones' allow_anonymous; else the zone decides).
        self.anonymous: dict[str, bool] = {}
        #: The durable store's progress (None: durability off); see ``use_store``.
        self.gate: CommitGate | None = None
        #: In a cluster, the other nodes' confirmations of forwarded QoS 1/2 messages
        #: (their publishers' acknowledgements wait for them; docs/CLUSTER.md).
        self.remote_gate: RemoteGate | None = None
        #: This node's link to the cluster (None: a single node): told of every message
        #: published here (docs/CLUSTER.md).
        self.cluster: ClusterLink | None = None
        #: The bridges' egress (mqttd/bridge): given every message published here, after
        #: the message.publish callbacks (one that stops a message stops it for the bridges
        #: too); None: no bridge sends anything. A slot rather than a callback, so that the
        #: PUBLISH fast path (core/pubpath.py) stays on for bridged topics and calls it too.
        self.egress: Callable[[Message], None] | None = None

    def use_store(self, store: SessionStore) -> None:
        """Keep sessions with an expiry and retained messages in ``store`` from now on
        (before any client connects)."""
        self.gate = store.gate
        self.registry.store = store
        self.retainer.durable = store

    # --- access -----------------------------------------------------------------------

    def authenticate(self, client: ClientInfo, password: bytes | None,
                     done: Callable[[AuthResult], None],
                     wanted: Callable[[], bool] | None = None) -> AuthResult | None:
        """Run the authentication chain, then ``allow_anonymous`` and the
        ``client.authenticate`` hook; the result at once, or None and ``done`` later."""
        chain = self.authenticator
        if chain is None:
            return self._settle(client, password, _UNDECIDED)
        # (a partial, not a closure: most answers come back at once, every CONNECT)
        result = chain.authenticate(client, password,
                                    partial(self._settled, client, password, done), wanted)
        return None if result is None else self._settle(client, password, result)

    def _settled(self, client: ClientInfo, password: bytes | None,
                 done: Callable[[AuthResult], None], result: AuthResult) -> None:
        done(self._settle(client, password, result))

    def enhanced_auth(self, method: str, client: ClientInfo, *, reauth: bool = False
                      ) -> EnhancedAuth | None:
        """An MQTT 5 enhanced authentication exchange for ``method`` (None: no provider
        offers it); its verdict passes the ``client.authenticate`` hook and the counters
        as a password check's does."""
        chain = self.authenticator
        exchange = chain.enhanced_auth(method, client, reauth=reauth) \
            if chain is not None else None
        return None if exchange is None else _SettledExchange(self, exchange)

    def allow_anonymous(self, client: ClientInfo) -> bool:
        """Whether a client no provider vouched for is let in (listener, else zone)."""
        allowed = self.anonymous.get(client.listener)
        if allowed is None:
            zone = self._zones.get(client.zone)
            allowed = zone.allow_anonymous if zone is not None else False
        return allowed

    def _settle(self, client: ClientInfo, password: bytes | None, result: AuthResult
                ) -> AuthResult:
        """The chain's verdict, then allow_anonymous (when nobody decided), then the hook
        fold, whose callbacks may still refuse (or accept) the client; counted."""
        metrics = self.metrics  # client.authenticate is the sum of the three outcomes
        hooks = self.hooks
        decided = result.decided
        code = result.code
        reason = result.reason
        if not decided and client.cert_user:
            # No provider decided, but the listener verified the client's certificate and
            # named the client after it: authenticated (mosquitto's use_identity_as_username).
            decided = True
        elif not decided and result.asked and client.username is not None:
            # A user name the configured providers do not know is refused, whatever
            # allow_anonymous says (as mosquitto does with a password file): admitted, it
            # would carry that user's ACL rights without proof.
            code = RC.BAD_USER_NAME_OR_PASSWORD
            reason = "no authentication provider knows the user name"
        elif not decided and not self.allow_anonymous(client):
            # Nobody vouched for the client and the listener wants someone to: refused
            # even with a user name (mosquitto 2 and EMQX do the same).
            if client.username is not None:
                code = RC.BAD_USER_NAME_OR_PASSWORD
                reason = "no authentication provider accepted the user name"
            else:
                code = RC.NOT_AUTHORIZED
                reason = "anonymous clients are not allowed"
        if hooks.client_authenticate:
            code = int(hooks.run_fold("client.authenticate", (client.client_id,
                                      client.username, password, client.peer), code))
            decided = True
        if decided:
            metrics.inc(CLIENT_AUTH_FAILURE if code else CLIENT_AUTH_SUCCESS)
        else:
            metrics.inc(CLIENT_AUTH_IGNORE)
        if not code and client.username is None:
            metrics.inc(CLIENT_AUTH_ANONYMOUS)
        if code == result.code and decided == result.decided:
            return result
        if code:
            return AuthResult(code, True,
                              reason=reason or "refused by a client.authenticate hook")
        return AuthResult(0, True, result.superuser, result.acl, credential=result.credential,
                          expires_at=result.expires_at)

    def check_acl(self, client: ClientInfo, action: str, topic: str) -> int:
        """0 to allow ``action`` ("publish"/"subscribe") on ``topic``, else a reason code:
        the authorization chain first (superusers bypass it), then the hook fold."""
        metrics = self.metrics  # client.check_acl is the sum of the three outcomes
        hooks = self.hooks
        authorizer = self.authorizer
        if authorizer is not None and not client.superuser:
            code = authorizer.check(client, action, topic)
            if hooks.client_check_acl:
                code = int(hooks.run_fold("client.check_acl", (client, action, topic), code))
            metrics.inc(CLIENT_ACL_DENY if code else CLIENT_ACL_ALLOW)
            return code
        if hooks.client_check_acl:
            code = int(hooks.run_fold("client.check_acl", (client, action, topic), 0))
            metrics.inc(CLIENT_ACL_DENY if code else CLIENT_ACL_ALLOW)
            return code
        metrics.inc(CLIENT_ACL_IGNORE)
        return 0

    def delivery_check(self, client: ClientInfo) -> Callable[[ClientInfo, str, str], int] | None:
        """What a channel calls before each delivery to ``client`` (``check(client,
        "deliver", topic)``: 0 allows), or None when nothing is to be checked: no
        authorization chain, or a superuser. Asked once, at CONNACK, so that a broker
        without authorization pays one ``None`` test per delivery. Deliveries are not
        counted in client.acl.* and do not run the client.check_acl hook (a refused one is
        counted in delivery.dropped.not_authorized)."""
        authorizer = self.authorizer
        if authorizer is None or client.superuser:
            return None
        return authorizer.delivery_check(client)

    def disconnect_on_deny(self) -> bool:
        """Whether a refused publish or subscribe closes the client (``deny_action``)."""
        authorizer = self.authorizer
        return authorizer is not None and authorizer.disconnect_on_deny

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
        if (egress := self.egress) is not None:
            egress(msg)
        if msg.qos and (gate := self.gate) is not None and gate.full \
                and self.dispatcher.needs_store(msg):
            log.debug("store full: refusing a QoS %d message to %s", msg.qos, msg.topic)
            return -1
        if msg.retain and msg.payload:
            metrics.inc(MESSAGES_RETAINED)
        if (cluster := self.cluster) is None:
            n = self.dispatcher.publish(msg)
        else:
            # In a cluster NATS picks the member of each shared group (docs/CLUSTER.md);
            # a message that cannot go out is the local members' alone.
            forwarded = cluster.forward(msg)
            n = self.dispatcher.publish(msg, True, forwarded < 2)
            # 0x10 only when no node is known to want it: also when it went out into the
            # reconnect buffer while NATS is away (held for the confirmation all the same).
            if not n and forwarded:
                n = cluster.interest(msg.topic)
        if self.topic_traces and self.trace_publish is not None:
            self.trace_publish(msg, n)
        return n

    def publish_will(self, msg: Message) -> None:
        log.debug("publishing will of %s to %s", msg.sender, msg.topic)
        taken = self.take_dollar(msg)
        if isinstance(taken, Message):
            self.publish(taken)
        elif taken is not None:
            log.info("will of %s to %s refused (0x%02X): not sent", msg.sender, msg.topic,
                     taken)

    def take_dollar(self, msg: Message) -> Message | int | None:
        """client.publish.dollar for a message no client's PUBLISH carried (a will,
        management's publish), so that ``$delayed/`` delays it as it does a client's: the
        callbacks get ``None`` for the clientinfo. Returns the message to publish, None if
        a callback took it, or the reason code (>= 0x80) it was refused with."""
        hooks = self.hooks
        if "$" not in msg.topic or not hooks.client_publish_dollar:
            return msg  # ("$" anywhere: a mounted client's will is "<mountpoint>$...")
        result = hooks.run_fold("client.publish.dollar", (None,), msg)
        if isinstance(result, int):
            return result if result >= 0x80 else RC.UNSPECIFIED_ERROR
        if result is None or isinstance(result, Message):
            return result
        log.warning("a client.publish.dollar callback gave %r for %s: not a message", result,
                    msg.topic)
        return RC.UNSPECIFIED_ERROR

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
        authorizer = self.authorizer
        if authorizer is not None:
            # Decisions are cached by client id: one taken over (perhaps by another user)
            # must not lend its decisions to the new connection.
            authorizer.forget(owner.client_id)
        return self.registry.open_session(owner, zone, clean_start, expiry,
                                          max_inflight=max_inflight)

    def prepare_session(self, info: ClientInfo, done: Callable[[int], None]) -> int | None:
        cluster = self.cluster
        if cluster is None:
            return 0
        return cluster.prepare_session(info, done)

    def close_session(self, owner: SessionOwner) -> None:
        self.registry.detach(owner)
        authorizer = self.authorizer
        if authorizer is not None:  # the cache must not keep every client id ever seen
            authorizer.forget(owner.client_id)


class _SettledExchange:
    """An enhanced authentication exchange whose verdict goes through the broker's
    ``_settle`` (hook fold, counters), with the identity it proved as the user name."""

    __slots__ = ("broker", "exchange", "client")

    def __init__(self, broker: Broker, exchange: EnhancedAuth) -> None:
        self.broker = broker
        self.exchange = exchange
        self.client: ClientInfo | None = None

    def start(self, client: ClientInfo, data: bytes | None) -> AuthStep:
        self.client = client
        return self._settled(self.exchange.start(client, data))

    def next(self, data: bytes | None) -> AuthStep:
        return self._settled(self.exchange.next(data))

    def _settled(self, step: AuthStep) -> AuthStep:
        result = step.result
        if result is None:
            return step
        client = self.client
        assert client is not None  # start() came first
        if step.username is not None and step.username != client.username:
            client = client._replace(username=step.username)
        settled = self.broker._settle(client, None, result)
        return step if settled is result else AuthStep(step.data, settled, step.username)

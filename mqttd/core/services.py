"""The seams of the broker core: what it needs from above, as Protocols it owns.

``core/`` is synchronous and has no event loop and no sockets. Where it needs
something only a higher layer can give (a timer, a place to write bytes, the
node's access checks) that need is typed here, and the composition root
(``mqttd/node.py``) hands in an object that fits. Nothing in ``core/`` imports
a higher layer, not even for type hints.

What a channel needs from the node is ``ChannelServices``, beside the channel
(``core/channel.py``). The views handed to hooks, plugins and management front
ends live here:
:class:`ClientInfo` (EMQX's ``clientinfo``/``conninfo``), never the live
``Channel`` or ``Connection``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..mqtt.packets import SubOpts
from .message import Message

__all__ = ["AuthResult", "AuthStep", "Authenticator", "Authorizer", "Backlog", "ClientInfo",
           "CloseReason",
           "CommitGate", "CredentialSource", "Delivery", "EncodedCache", "EnhancedAuth",
           "LocalLane", "PeerSource", "RemoteGate", "SessionOwner",
           "SessionStore", "Subscriber", "TimerHandle", "Timers"]

#: A pending delivery to a session: (message, qos, retain flag, subscription ids, shared
#: group or None). Shared deliveries carry their group (a ``core.router.SharedGroup``,
#: typed ``object`` here so that sessions need not know the router) so that they can be
#: handed to another member if their session ends before they are acknowledged.
Delivery = tuple[Message, int, bool, tuple[int, ...], object]

#: The dispatcher's per-publish cache of QoS 0 PUBLISH bytes shared by every subscriber
#: that gets the same form: (MQTT 5, retain flag) -> encoded packet.
EncodedCache = dict[tuple[bool, bool], bytes]


class Backlog(Protocol):
    """A queue a publisher waits for when a message of its goes past the queue's limit
    (``session.OVERFULL``): a session's under ``mqueue_overflow = backpressure``, a
    bridge's. The publisher's acknowledgement and reading wait until it has room."""

    def has_room(self) -> bool: ...

    def trim(self) -> list[Delivery]:
        """The wait timed out: what is dropped to bring the queue back to its limit."""
        ...


class PeerSource(Protocol):
    """Where a channel's peer address comes from when it is asked for (the connection,
    which formats its socket's address then: no string kept per idle client)."""

    def peername(self) -> str: ...


class TimerHandle(Protocol):
    """A scheduled call that can be cancelled (``asyncio.TimerHandle`` fits)."""

    def cancel(self) -> None: ...


class Timers(Protocol):
    """Schedules calls; the node hands in the running event loop's ``call_later``.

    Unit tests hand in a manual clock instead, so the core runs without a loop.
    """

    def call_later(  # type: ignore[explicit-any]  # the loop's own signature: any callback
            self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle: ...


class CloseReason(enum.StrEnum):
    """Why a client's connection ended, with EMQX's reason names as values.

    The value is what ``client.disconnected`` hooks and ``$SYS`` presence events
    carry; the channel keeps a readable detail beside it for the log.
    """

    NORMAL = "normal"                        # DISCONNECT from the client
    TAKEN_OVER = "takeovered"                # a new connection took the client id
    KICKED = "kicked"                        # an operator kicked it
    KEEPALIVE_TIMEOUT = "keepalive_timeout"  # silent past 1.5 x keepalive
    SHUTDOWN = "shutdown"                    # the server or its listener stopped
    CLOSED = "closed"                        # the client closed the socket / it was lost
    PROTOCOL_ERROR = "protocol_error"        # a packet broke the protocol
    FRAME_ERROR = "frame_error"              # bytes the parser refused
    CONNECT_REFUSED = "connack_error"        # CONNECT refused (auth, id, limits)
    CONNECT_TIMEOUT = "idle_timeout"         # no CONNECT within idle_timeout
    INTERNAL_ERROR = "internal_error"        # a bug in the broker (logged, counted)
    NOT_AUTHORIZED = "not_authorized"        # a refused publish/subscribe (deny_action)


class ClientInfo(NamedTuple):
    """A read-only view of one client, as hooks, plugins and management see it.

    Built by the channel at CONNECT and replaced (never changed) as the
    connection's facts settle; fields a refused CONNECT never reached keep
    their defaults. A NamedTuple, not a frozen dataclass: it is built on every
    CONNECT, and a frozen dataclass's 15 ``object.__setattr__`` calls cost 1.4 µs
    against 0.24 µs (``_replace`` makes a changed copy).
    """

    client_id: str
    username: str | None
    #: ``host:port`` of the client as the socket reports it.
    peer: str
    #: The local port the client connected to.
    sockport: int = 0
    proto_name: str = ""
    #: 3 (3.1), 4 (3.1.1) or 5.
    proto_ver: int = 0
    clean_start: bool = True
    keepalive: int = 0
    #: The zone the listener binds the client to, and that zone's topic prefix.
    zone: str = "default"
    mountpoint: str = ""
    #: Session Expiry Interval granted at CONNACK (0 before).
    expiry_interval: int = 0
    #: Wall-clock time of CONNACK (0.0 before).
    connected_at: float = 0.0
    #: The listener the client came in on.
    listener: str = "default"
    #: What authentication granted: superusers bypass authorization; ``acl`` is a client
    #: ACL a provider attached (opaque here: the authorization chain reads it).
    superuser: bool = False
    acl: object = None
    #: The user name is the identity of a client certificate the TLS listener verified
    #: (peer_cert_as_username): proven, even if no authentication provider knows it.
    cert_user: bool = False

    @property
    def peerhost(self) -> str:
        """The client's address without the port (IPv6 without brackets)."""
        peer = self.peer
        host = peer.rsplit(":", 1)[0] if ":" in peer else peer
        return host.strip("[]")


class Subscriber(Protocol):
    """What a session's connected end offers the dispatcher: one delivery at a time.

    ``encoded`` is the dispatcher's per-publish cache of QoS 0 bytes shared by
    every subscriber, or None.
    """

    def deliver(self, delivery: Delivery, encoded: EncodedCache | None) -> bool | None:
        """False when the client may not receive the message (authorization refused it):
        a shared group then offers it to another member. Anything else: taken."""
        ...


class SessionOwner(Subscriber, Protocol):
    """The connected end of a session, as the registry handles it (a channel)."""

    client_id: str
    will: Message | None
    will_delay: int
    #: When its CONNECT was accepted (epoch seconds): a session made for it takes this as
    #: its creation time, so hooks see one time before and after the session opens.
    connected_at: float

    def kick(self, code: int, reason: CloseReason, detail: str) -> None:
        """Close from the server side (takeover, operator kick, shutdown)."""
        ...


class CredentialSource(Protocol):
    """A provider with stored credentials: its entry for a user now (None: no such user)."""

    def entry(self, username: str) -> object: ...


@dataclass(frozen=True, slots=True)
class AuthResult:
    """An authentication outcome: ``code`` 0 accepts (with what was granted), anything else
    is the CONNACK reason code that refuses (MQTT 5 numbering; the channel maps it for 3.x).

    ``decided`` is False when no provider had an opinion (every one ignored the client):
    the broker then applies ``allow_anonymous`` and the ``client.authenticate`` hook.
    """

    code: int = 0
    decided: bool = True
    superuser: bool = False
    acl: object = None
    #: The user name is the identity of a client certificate the TLS listener verified
    #: (peer_cert_as_username): proven, even if no authentication provider knows it.
    cert_user: bool = False
    #: Why, for the log line of a refusal (never the password).
    reason: str = ""
    #: What an accepted client proved itself against: (provider, the stored entry its
    #: password matched). After a reload or a user change the node compares it with the
    #: provider's entry now (``provider.entry(username)``) and disconnects the client when
    #: its entry is gone or changed (as mosquitto does on reload). None: nothing to compare
    #: (a token, a remote server, anonymous).
    credential: tuple[CredentialSource, object] | None = None
    #: Wall-clock time (epoch seconds) at which the proof ends (a JWT's ``exp`` with
    #: ``disconnect_after_expire``): the client is disconnected then (0x87). None: never.
    expires_at: float | None = None
    #: With ``decided`` False: providers were asked and none knew the client (rather
    #: than no provider being configured). A user name nobody knows is then refused.
    asked: bool = False


@dataclass(frozen=True, slots=True)
class AuthStep:
    """One step of an MQTT 5 enhanced authentication exchange (spec 4.12), as the server
    side answers it: go on (``result`` None: the channel sends AUTH 0x18 with ``data``) or
    the verdict (CONNACK, or after a re-authentication AUTH 0x00 / DISCONNECT)."""

    #: Authentication Data for the client (a challenge, or the server's final message).
    data: bytes | None = None
    #: None while the exchange goes on; else the verdict.
    result: AuthResult | None = None
    #: The user name the exchange is about: claimed by the client's first message (the
    #: admission gates see it), proven once ``result`` accepts; then it becomes the
    #: client's user name, which authorization and hooks see.
    username: str | None = None


class EnhancedAuth(Protocol):
    """One exchange of an enhanced authentication method (SCRAM, ...), driven by the
    channel: ``start`` with the CONNECT's (or a re-authenticating AUTH's) Authentication
    Data, then ``next`` with each AUTH 0x18's. Both answer at once on the loop: a method
    must be cheap per step (SCRAM's server side is a few HMACs over stored keys)."""

    def start(self, client: ClientInfo, data: bytes | None) -> AuthStep: ...

    def next(self, data: bytes | None) -> AuthStep: ...


class Authenticator(Protocol):
    """The authentication chain (``mqttd/access``) as the broker calls it."""

    def authenticate(self, client: ClientInfo, password: bytes | None,
                     done: Callable[[AuthResult], None],
                     wanted: Callable[[], bool] | None = None) -> AuthResult | None:
        """Answer at once, or return None and call ``done`` later on the loop's thread
        (password hashing and remote providers run off the event loop). ``wanted``: asked
        (from any thread) before a queued check starts; False (the client went away
        meanwhile) skips it, and ``done`` is not called."""
        ...

    def enhanced_auth(self, method: str, client: ClientInfo, *, reauth: bool = False
                      ) -> EnhancedAuth | None:
        """A new exchange for the Authentication Method ``method``, or None if no provider
        offers it (CONNACK 0x8C). ``reauth``: the client is connected and re-authenticates
        (the admission gates, asked once per connection, are not asked again)."""
        ...


class Authorizer(Protocol):
    """The authorization chain (``mqttd/access``) as the broker calls it."""

    def check(self, client: ClientInfo, action: str, topic: str) -> int:
        """0 to allow ``action`` ('publish' | 'subscribe' | 'deliver') on ``topic``, else
        the reason code to refuse it with (0x87)."""
        ...

    def delivery_check(self, client: ClientInfo) -> Callable[[ClientInfo, str, str], int] | None:
        """What to call before each delivery to ``client`` (``check``, with the action
        "deliver"), or None when nothing could refuse it one (no source, no client ACL,
        and no_match allows). Asked once per connection, at CONNACK."""
        ...

    @property
    def disconnect_on_deny(self) -> bool:
        """``deny_action = "disconnect"``: a refused publish or subscribe closes the client
        (MQTT 5: DISCONNECT 0x87) instead of answering 0x87 in its ack."""
        ...

    def forget(self, client_id: str) -> None:
        """Drop what was remembered for ``client_id`` (cached decisions): it connected
        anew (perhaps as another user) or left."""
        ...



class CommitGate:
    """How far the durable store has got: the sequence number of the last operation the
    core issued, the last one handed to the writer, the last one committed.

    A channel holds an acknowledgement back until ``committed`` reaches what its packet
    issued (``Channel.hold``), so that PUBACK, PUBREC, PUBCOMP, SUBACK and UNSUBACK are sent
    only for what is on disk. Plain ints read on the hot path: no call.
    """

    __slots__ = ("issued", "taken", "committed", "full")

    def __init__(self) -> None:
        self.issued = 0
        self.taken = 0
        self.committed = 0
        #: The last write did not fit (disk full or the store's size limit): QoS 1/2
        #: messages that need storing are refused until a write succeeds again.
        self.full = False


class RemoteGate:
    """The other nodes' answers to this node's forwarded messages (a cluster's,
    docs/CLUSTER.md): ``issued`` numbers the last QoS 1/2 message that waits for some other
    node; a number is in ``waiting`` until every node it waits for has confirmed it, or it
    was given up on (then in ``failed`` too, and its publisher hears of it). Each message
    waits alone: a publisher waits only for the nodes its own messages went to.

    ``routes`` is the (negative) number in ``waiting`` of this node's latest route change
    the other nodes have not all acknowledged yet (0: none): a SUBACK waits for it, so that
    a message published on another node after the SUBACK finds the route there."""

    __slots__ = ("issued", "waiting", "failed", "routes")

    def __init__(self) -> None:
        self.issued = 0
        self.routes = 0
        self.waiting: dict[int, list[Any]] = {}  # type: ignore[explicit-any]  # the cluster's
        self.failed: set[int] = set()


class LocalLane:
    """The topics a cluster node keeps to itself (docs/CLUSTER.md, "One message's way"):
    ``topics`` holds each topic the cluster has found no other node to want since the
    last change of what it knows (emptied at every route, node or connection change), and
    ``kept`` counts the messages kept here. The PUBLISH fast path tests a topic with a
    dict lookup and counts with a slot increment: no call into the cluster per message."""

    __slots__ = ("topics", "kept")

    def __init__(self, topics: dict[str, bool] | None = None) -> None:
        self.topics: dict[str, bool] = {} if topics is None else topics
        self.kept = 0


class SessionStore(Protocol):
    """What the core tells the durable store (``mqttd/store``) as durable state changes.

    Called on the loop's thread, only for sessions with an expiry (``Session.store`` is set
    on those) and for retained messages; each call is buffered and committed with the
    next group commit. ``qseq`` numbers a session's stored deliveries (``Session.refs``).
    """

    gate: CommitGate

    def save_session(self, client_id: str, expiry_interval: int, created_at: float,
                     disconnected_at: float, will: Message | None, will_delay: int,
                     zone: str) -> None:
        """Insert or replace the session's own row (``disconnected_at`` 0: connected;
        ``zone``: the zone it connected through, whose limits it gets back at a restart)."""
        ...

    def delete_session(self, client_id: str) -> None: ...

    def save_subscription(self, client_id: str, topic_filter: str, opts: SubOpts,
                          subid: int) -> None: ...

    def delete_subscription(self, client_id: str, topic_filter: str) -> None: ...

    def add_delivery(self, client_id: str, qseq: int, delivery: Delivery,
                     packet_id: int) -> None:
        """A QoS 1/2 delivery joined the session: queued (``packet_id`` 0) or in flight."""
        ...

    def set_inflight(self, client_id: str, qseq: int, packet_id: int) -> None: ...

    def set_released(self, client_id: str, qseq: int) -> None:
        """PUBREC arrived for the delivery: it waits for PUBCOMP now."""
        ...

    def remove_delivery(self, client_id: str, qseq: int, msg: Message) -> None:
        """Acknowledged, dropped or expired: the session no longer holds it."""
        ...

    def await_rel(self, client_id: str, packet_id: int) -> None: ...

    def release(self, client_id: str, packet_id: int) -> None: ...

    def retain(self, msg: Message) -> None: ...

    def unretain(self, topic: str) -> None: ...

    def clear_retained(self) -> None: ...


class ClusterLink(Protocol):
    """What the broker asks of the node's cluster link (mqttd/cluster, docs/CLUSTER.md)."""

    def forward(self, msg: Message) -> int:
        """Send a message published on this node to the other nodes; 2 when it went out
        with its shared groups' copy (NATS then picks each group's member), 1 when it went
        out without it (NATS is away: the reconnect buffer), 0 when it stays here."""

    def interest(self, topic: str) -> int:
        """The nodes known to have a subscriber matching ``topic`` (0: none known)."""

    #: The topics known to stay on this node, and their count (the fast path's test).
    lane: LocalLane

    def keep_local(self, topic: str) -> bool:
        """Whether :meth:`forward` would keep a (plain, not retained) message to ``topic``
        on this node, its local shared groups included; when so, counts it as forward does
        (the caller takes the message) and, while NATS is there, remembers the topic in
        ``lane`` until what the node knows changes."""

    def prepare_session(self, info: ClientInfo, done: Callable[[int], None]) -> int | None:
        """Before a CONNECT's session opens: 0 to go on, a CONNACK reason code to refuse
        (0x88: a persistent session this node cannot register), or None and ``done(code)``
        later (the session is being handed over from another node)."""

"""The per-client protocol state machine (EMQX's emqx_channel), free of I/O.

``handle_in(packet)`` applies one packet from the client and returns the
channel's output: a list of encoded packets for the connection to write.
``deliver()`` is how the broker hands it a message for this client. When the
channel decides the connection must end it sets ``closing`` (with a
:class:`~mqttd.core.services.CloseReason`); the connection writes what is
pending, closes the socket and calls ``handle_close()``, which ends the
client's part in its session (EMQX's ``terminate``): every transport shares
that lifecycle. Timers belong to the connection, which calls
``handle_timeout(name)``. Everything outside the channel is reached through
the :class:`~mqttd.core.services.ChannelServices` it is given.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from ..config import Zone
from ..hooks import Hooks
from ..logsetup import CONNECTIONS
from ..metrics import (
    CLIENT_CONNACK,
    CLIENT_CONNECT,
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    CLIENT_SUBSCRIBE,
    CLIENT_UNSUBSCRIBE,
    DELIVERY_DROPPED_EXPIRED,
    DELIVERY_DROPPED_NOT_AUTHORIZED,
    DELIVERY_DROPPED_QOS0_MSG,
    DELIVERY_DROPPED_TOO_LARGE,
    MESSAGES_QOS0_RECEIVED,
    MESSAGES_QOS0_SENT,
    MESSAGES_QOS1_RECEIVED,
    MESSAGES_QOS1_SENT,
    MESSAGES_QOS2_RECEIVED,
    MESSAGES_QOS2_SENT,
    PACKETS_AUTH_RECEIVED,
    PACKETS_AUTH_SENT,
    PACKETS_CONNACK_AUTH_ERROR,
    PACKETS_CONNACK_ERROR,
    PACKETS_CONNACK_SENT,
    PACKETS_CONNECT_RECEIVED,
    PACKETS_DISCONNECT_RECEIVED,
    PACKETS_DISCONNECT_SENT,
    PACKETS_PINGREQ_RECEIVED,
    PACKETS_PINGRESP_SENT,
    PACKETS_PUBACK_INUSE,
    PACKETS_PUBACK_MISSED,
    PACKETS_PUBACK_RECEIVED,
    PACKETS_PUBACK_SENT,
    PACKETS_PUBCOMP_INUSE,
    PACKETS_PUBCOMP_MISSED,
    PACKETS_PUBCOMP_RECEIVED,
    PACKETS_PUBCOMP_SENT,
    PACKETS_PUBLISH_AUTH_ERROR,
    PACKETS_PUBLISH_DROPPED,
    PACKETS_PUBLISH_ERROR,
    PACKETS_PUBLISH_INUSE,
    PACKETS_PUBREC_INUSE,
    PACKETS_PUBREC_MISSED,
    PACKETS_PUBREC_RECEIVED,
    PACKETS_PUBREC_SENT,
    PACKETS_PUBREL_MISSED,
    PACKETS_PUBREL_RECEIVED,
    PACKETS_PUBREL_SENT,
    PACKETS_SUBACK_SENT,
    PACKETS_SUBSCRIBE_AUTH_ERROR,
    PACKETS_SUBSCRIBE_ERROR,
    PACKETS_SUBSCRIBE_RECEIVED,
    PACKETS_UNSUBACK_SENT,
    PACKETS_UNSUBSCRIBE_ERROR,
    PACKETS_UNSUBSCRIBE_RECEIVED,
    PUBLISHERS_HELD,
    PUBLISHERS_RELEASED_CLOSED,
    PUBLISHERS_RELEASED_ROOM,
    PUBLISHERS_RELEASED_TIMEOUT,
    Metrics,
)
from ..mqtt.codec import decode_filters, encode, encode_publish
from ..mqtt.errors import PacketError
from ..mqtt.packets import (
    AUTH,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    SubOpts,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from ..mqtt.reasons import DISCONNECT as DISCONNECT_CODES, ReasonCode as RC
from ..mqtt.topics import (
    filter_error,
    has_disallowed_chars,
    is_wildcard,
    match as topic_match,
    parse_shared,
)
from .message import Message
from .rare import Rare
from .services import (
    AuthResult,
    AuthStep,
    Backlog,
    ClientInfo,
    CloseReason,
    CommitGate,
    CredentialSource,
    EncodedCache,
    EnhancedAuth,
    PeerSource,
    RemoteGate,
    SessionOwner,
    TimerHandle,
    Timers,
)
from .session import NO_MAP, OVERFULL, AckFault, Delivery, Session

log = logging.getLogger("mqttd.channel")
#: One info line per connect, refusal and disconnect ([log] connection_messages): per
#: connection, never per packet.
clog = logging.getLogger(CONNECTIONS)
_INFO: Final = logging.INFO
_PROTOCOLS = {3: "MQTT 3.1", 4: "MQTT 3.1.1", 5: "MQTT 5"}


class _ClientLine(logging.LogRecord):
    """A connection line's record, made without ``Logger.info``'s search of the stack for
    its caller and ``LogRecord.__init__``'s lookups of thread, process and source file
    (~9 of the ~20 µs a line cost, at every connect and disconnect). Those facts are the
    same for every line (made on the event loop's thread; they name their client, not
    their source line), so they are copied from a model record made once."""

    _model: dict[str, object] | None = None

    def __init__(self, msg: str, args: tuple[object, ...],  # not LogRecord's signature
                 fields: dict[str, object]) -> None:
        model = _ClientLine._model
        if model is None:
            model = _ClientLine._model = logging.LogRecord(
                CONNECTIONS, _INFO, "", 0, "", (), None).__dict__.copy()
        d = self.__dict__
        d.update(model)
        now = time.time()
        d["created"] = now
        d["msecs"] = int((now - int(now)) * 1000) + 0.0
        d["relativeCreated"] = (now - _LOG_START) * 1000
        d["msg"] = msg
        d["args"] = args
        d["fields"] = fields


def _log_start() -> float:
    """When logging started (``relativeCreated`` counts from it)."""
    record = logging.LogRecord("", 0, "", 0, "", (), None)
    return record.created - record.relativeCreated / 1000


_LOG_START: Final = _log_start()


def _clog_info(msg: str, args: tuple[object, ...], fields: dict[str, object]) -> None:
    """One info line of the connection logger (the caller checked its level)."""
    clog.handle(_ClientLine(msg, args, fields))


class ChannelState(enum.IntEnum):
    """Where a channel is in its life (EMQX's conn_state)."""

    IDLE = 0  # connected socket, no CONNECT accepted yet
    CONNECTED = 1  # CONNACK 0 sent: the client is attached to its session
    DISCONNECTED = 2  # handle_close() ran: the client's part in its session is over
    AUTHENTICATING = 3  # CONNECT taken, its authentication still running (off the loop)


IDLE, CONNECTED, DISCONNECTED = ChannelState.IDLE, ChannelState.CONNECTED, ChannelState.DISCONNECTED
AUTHENTICATING = ChannelState.AUTHENTICATING
#: Packets a client may send after CONNECT while its authentication runs (MQTT lets it
#: send before CONNACK); past this the connection is closed.
MAX_HELD = 1000
#: AUTH 0x18 round trips one enhanced authentication exchange may take (SCRAM takes one);
#: past this the client is refused, whatever the method says.
MAX_AUTH_ROUNDS = 8
#: A SUBSCRIBE's filters handled per loop turn: a larger one is applied in slices of this
#: many (~3 ms each), other clients served between; smaller ones (nearly all) at once.
SUBSCRIBE_SLICE = 1000
#: Packets a client may send while its sliced SUBSCRIBE runs (applied after its SUBACK,
#: in order); past this the connection is closed (MQTT 5: DISCONNECT 0x97).
MAX_HELD_SUBSCRIBING = 10_000
_PROTO = CloseReason.PROTOCOL_ERROR
_NO_ALIAS_IN: Final = cast("dict[int, str]", NO_MAP)
_NO_ALIAS_OUT: Final = cast("dict[str, int]", NO_MAP)
# Module constants: an enum member looked up on its class costs ~60 ns, every ack.
_UNKNOWN: Final = AckFault.UNKNOWN
_MISMATCH: Final = AckFault.MISMATCH


class _NoOut(list[bytes]):
    """Every channel's ``out`` while it has nothing to write (the connection puts it back
    after each complete write): read as an empty list, written to never. A channel about
    to add a packet gives itself a list first (an exact-type test in both pubpath twins),
    so an idle client holds none (64 B)."""

    __slots__ = ()

    def _refuse(self, *_args: object) -> None:
        raise TypeError("the shared empty output list cannot hold packets")

    append = extend = insert = __setitem__ = __iadd__ = _refuse  # type: ignore[assignment]


#: An idle channel's output list (see ``_NoOut``).
NO_OUT: Final[list[bytes]] = _NoOut()


class _Aliases:
    """A client's MQTT 5 topic aliases both ways: one slot on the channel for the two
    maps, each the shared empty NO_MAP until its first alias."""

    __slots__ = ("inbound", "outbound")

    def __init__(self) -> None:
        self.inbound: dict[int, str] = _NO_ALIAS_IN  # alias -> topic (the client's)
        self.outbound: dict[str, int] = _NO_ALIAS_OUT  # topic -> alias (ours)


#: Every channel's until its first alias (never changed: a channel makes its own first).
_NO_ALIASES: Final = _Aliases()


class _SubscribeWork:
    """One SUBSCRIBE being applied: where it is and what it has answered so far."""

    __slots__ = ("packet_id", "topics", "subid", "pos", "codes", "retained", "added",
                 "failed", "denied")

    def __init__(self, packet_id: int, topics: list[tuple[str, SubOpts | int]],
                 subid: int) -> None:
        self.packet_id = packet_id
        self.topics = topics
        self.subid = subid
        self.pos = 0
        self.codes: list[int] = []
        #: The retained messages of each new filter that has any, found as it is applied.
        self.retained: list[tuple[list[Message], SubOpts, int]] = []
        self.added: list[str] = []  # new filters, taken back if a refusal disconnects
        self.failed = False
        self.denied = False


class ChannelServices(Protocol):
    """Every call a channel makes outside itself (EMQX's emqx_channel calling
    emqx_access_control, emqx_broker, emqx_cm and emqx_hooks)."""

    metrics: Metrics
    hooks: Hooks
    #: The durable store's progress (None: durability off): acknowledgements wait for it.
    gate: CommitGate | None
    #: The other nodes' confirmations of forwarded messages (None: a single node).
    remote_gate: RemoteGate | None
    timers: Timers

    def authenticate(self, client: ClientInfo, password: bytes | None,
                     done: Callable[[AuthResult], None],
                     wanted: Callable[[], bool] | None = None) -> AuthResult | None:
        """The verdict at once, or None and ``done(verdict)`` later on the loop's thread
        (not at all if ``wanted()`` says the client went away before its check started)."""
        ...

    def enhanced_auth(self, method: str, client: ClientInfo, *, reauth: bool = False
                      ) -> EnhancedAuth | None:
        """An exchange of the MQTT 5 Authentication Method ``method``, or None when no
        provider offers it."""
        ...

    def check_acl(self, client: ClientInfo, action: str, topic: str) -> int:
        """0 to allow ``action`` ('publish' | 'subscribe') on ``topic``, else a reason code."""
        ...

    def delivery_check(self, client: ClientInfo) -> Callable[[ClientInfo, str, str], int] | None:
        """Asked at CONNACK: what to call before each delivery to the client (0 allows),
        or None when deliveries need no check (no authorization, a superuser)."""
        ...

    def disconnect_on_deny(self) -> bool:
        """Whether a refused publish or subscribe closes the client (deny_action)."""
        ...

    def publish(self, msg: Message) -> int:
        """Publish a client's message; returns the number of sessions reached, or -1 when
        the durable store is full and the message would need storing (refused: 0x97)."""
        ...

    def subscribe(self, session: Session, topic_filter: str, opts: SubOpts, subid: int
                  ) -> bool:
        """Add a subscription; True if it is new for the session."""
        ...

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        """Remove a subscription; False if the session had none for the filter."""
        ...

    def retained(self, topic_filter: str) -> list[Message]:
        """The retained messages a new subscription to ``topic_filter`` receives."""
        ...

    def acked(self, client: ClientInfo, msg: Message) -> None:
        """The client acknowledged a QoS 1/2 delivery."""
        ...

    def queue_dropped(self, session: Session, delivery: Delivery) -> None:
        """A full queue pushed ``delivery`` out of ``session``."""
        ...

    def open_session(self, owner: SessionOwner, zone: Zone, clean_start: bool, expiry: int,
                     *, max_inflight: int) -> tuple[Session, bool]:
        """Attach ``owner`` to a new or resumed session: (session, session present)."""
        ...

    def close_session(self, owner: SessionOwner) -> None:
        """The owner's connection ended: its will and its session's expiry start."""
        ...

    def prepare_session(self, info: ClientInfo, done: Callable[[int], None]) -> int | None:
        """Before the session opens: 0 to go on, a CONNACK reason code to refuse, or None
        and ``done(code)`` later on the loop (a cluster fetches the session from the node
        that holds it)."""
        ...

_PINGRESP = encode(Pingresp(), 4)

# MQTT 5 CONNACK reason -> the nearest 3.1/3.1.1 return code (None: close without CONNACK).
#: What a refused client is told (MQTT 5 Reason String) for these codes, whatever the detail.
_PUBLIC_REFUSALS = {0x80: "authentication error", 0x86: "bad user name or password",
                    0x87: "not authorized", 0x8A: "banned"}

_V3_CONNACK = {0x80: 3, 0x84: 1, 0x85: 2, 0x86: 4, 0x87: 5, 0x8A: 5, 0x8C: 5, 0x88: 3, 0x89: 3,
               0x97: 3, 0x9F: 3, 0x9A: 3, 0x9B: 3, 0x90: 5}

# Metrics by packet type (index = type). -1: not counted by type. A PUBLISH is counted by
# its QoS (messages.qosN.*, whose sums are messages.* and packets.publish.*), and a
# server-only packet from a client only in packets.received, as EMQX does.
_RECV = (-1, PACKETS_CONNECT_RECEIVED, -1, -1, PACKETS_PUBACK_RECEIVED, PACKETS_PUBREC_RECEIVED,
         PACKETS_PUBREL_RECEIVED, PACKETS_PUBCOMP_RECEIVED, PACKETS_SUBSCRIBE_RECEIVED, -1,
         PACKETS_UNSUBSCRIBE_RECEIVED, -1, PACKETS_PINGREQ_RECEIVED, -1,
         PACKETS_DISCONNECT_RECEIVED, PACKETS_AUTH_RECEIVED)
_SENT = (-1, -1, PACKETS_CONNACK_SENT, -1, PACKETS_PUBACK_SENT, PACKETS_PUBREC_SENT,
         PACKETS_PUBREL_SENT, PACKETS_PUBCOMP_SENT, -1, PACKETS_SUBACK_SENT, -1,
         PACKETS_UNSUBACK_SENT, -1, PACKETS_PINGRESP_SENT, PACKETS_DISCONNECT_SENT,
         PACKETS_AUTH_SENT)
_QOS_RECV = (MESSAGES_QOS0_RECEIVED, MESSAGES_QOS1_RECEIVED, MESSAGES_QOS2_RECEIVED)
_QOS_SENT = (MESSAGES_QOS0_SENT, MESSAGES_QOS1_SENT, MESSAGES_QOS2_SENT)
#: _check_publish: a $-topic for the client.publish.dollar chain (checked by _publish_dollar).
_DOLLAR = -1


_LAST_CREATED = [0.0]


def _created_time() -> float:
    """``time.time()`` for a new channel's ``created_at``, as the float the last one got
    when that is less than a millisecond old: the channels of a connect burst share one
    (32 B per idle client otherwise). ``connected_at`` stays exact (the retainer module
    tells two connections of one client id apart by it)."""
    now = time.time()
    last = _LAST_CREATED[0]
    if 0.0 <= now - last < 0.001:
        return last
    _LAST_CREATED[0] = now
    return now


class Origin:
    """Where a client came in: its listener's name, transport ("tcp", "ssl", "ws", "wss")
    and local port. The same for every client of a listener, so one shared object per
    distinct triple (``Origin.of``) stands for three per-channel slots (16 B less per
    client). Never changed in place."""

    __slots__ = ("listener", "transport", "sockport")

    listener: str
    transport: str
    sockport: int

    @staticmethod
    def of(listener: str, transport: str, sockport: int) -> Origin:
        key = (listener, transport, sockport)
        found = _ORIGINS.get(key)
        if found is None:
            found = Origin()
            found.listener, found.transport, found.sockport = key
            if len(_ORIGINS) < 4096:  # listeners x their ports: a handful
                _ORIGINS[key] = found
        return found


_ORIGINS: dict[tuple[str, str, int], Origin] = {}
_DEFAULT_ORIGIN: Final = Origin.of("default", "tcp", 0)


class Channel:
    """One client connection's MQTT state: CONNECT, QoS flows, subscriptions, will."""

    __slots__ = (
        "services", "zone", "_peer", "out", "wakeup", "state", "version", "client_id", "username",
        "session", "will", "keepalive", "aliases", "alias_out_max",
        "client_max_packet", "receive_maximum", "closing", "paused", "connected_at", "created_at",
        "clean_start", "recv_pkt", "send_pkt", "recv_msg", "send_msg", "dropped", "tracer",
        "mountpoint", "metrics", "hooks", "origin", "_clientinfo", "_held",
        "acl_deliver", "gate", "hold", "pressure", "_rare",
    )

    # Fields most clients never change, off the slots (core/rare.py): ~140 B less per
    # client. None of them is read per packet.
    will_delay = Rare(0)
    #: Why the connection ends (set with ``closing``), and a readable detail for the log.
    close_reason = Rare[CloseReason | None](None)
    close_detail = Rare("")
    #: The reason code the close carried (a protocol error's, a kick's), for the log.
    close_code = Rare[int | None](None)
    normal_disconnect = Rare(False)
    #: The user name and client id a verified client certificate gives (a TLS listener's
    #: peer_cert_as_username / peer_cert_as_clientid), set by the connection; they
    #: replace what the CONNECT says. ``cert_user``: the user name is such a name.
    cert_username = Rare[str | None](None)
    cert_clientid = Rare[str | None](None)
    cert_user = Rare(False)
    #: What authentication granted (ClientInfo carries it to authorization).
    superuser = Rare(False)
    auth_acl = Rare[object](None)
    #: What the client's password was checked against (AuthResult.credential).
    auth_credential = Rare[tuple[CredentialSource, object] | None](None)
    #: Disconnects the client when its proof expires (AuthResult.expires_at).
    _auth_timer = Rare[TimerHandle | None](None)
    #: MQTT 5 enhanced authentication: the method the CONNECT named (every AUTH must
    #: name it too), and the exchange under way (at CONNECT or re-authenticating).
    auth_method = Rare[str | None](None)
    _auth = Rare["_Exchange | None"](None)
    #: The size of what ``_held`` holds.
    _held_bytes = Rare(0)
    #: The message whose acknowledgement a backpressure wait holds: (message, sessions
    #: it reached, packet id, the acknowledgement's bytes in ``out``).
    _held_ack = Rare[tuple[Message, int, int, bytes] | None](None)
    #: The CONNECT's protocol name ("MQIsdp" for MQTT 3.1): see ``proto_name``.
    _proto_name = Rare("MQTT")
    #: A CONNECT waiting for its authentication (``_authenticated``), or for its session in
    #: a cluster (``_prepared``): what the rest of it needs, kept here only then, rather
    #: than in a partial made for every CONNECT (most are answered at once).
    _auth_args = Rare[tuple[Connect, Properties, str | None] | None](None)
    _open_args = Rare[tuple[Connect, int, int, int, Properties, ClientInfo,
                            Callable[[ClientInfo, str, str], int] | None, str | None,
                            bytes | None] | None](None)
    #: Backpressure: how many packets at the head of ``out`` may be written meanwhile
    #: (-1 exactly while ``pressure`` is None; read only then).
    pressure_mark = Rare(-1)

    def __init__(self, services: ChannelServices, zone: Zone, peer: str | PeerSource = "",
                 out: list[bytes] | None = None) -> None:
        self.services = services
        self.zone = zone
        #: The client's address ("host:port"), or what gives it when asked (``peer``).
        self._peer = peer
        #: Encoded packets waiting to be written; the connection owns the writing. The
        #: shared empty NO_OUT while there are none (``_output`` gives the channel a list).
        self.out: list[bytes] = out if out is not None else NO_OUT
        #: Called when output appears outside handle_in (a delivery from another client).
        self.wakeup: Callable[[], None] | None = None
        #: The rare fields set (see the ``Rare`` declarations above), None until one is.
        self._rare: dict[str, object] | None = None
        self.state = IDLE
        self.version = 0
        self.client_id = ""
        self.username: str | None = None
        self.session: Session | None = None
        self.will: Message | None = None
        self.keepalive = 0
        # Topic aliases both ways: one shared empty pair until the first.
        self.aliases = _NO_ALIASES
        self.alias_out_max = 0
        self.client_max_packet = 0
        self.receive_maximum = 0
        self.closing = False
        self.paused = False
        self.created_at = _created_time()
        self.connected_at = 0.0
        self.clean_start = True
        self.recv_pkt = 0
        self.send_pkt = 0
        self.recv_msg = 0
        self.send_msg = 0
        self.dropped = 0
        #: Called with ("RECV" | "SEND", packet) for every packet while the client is traced.
        self.tracer: Callable[[str, Packet], None] | None = None
        #: The zone's topic prefix: added to what the client publishes and subscribes to,
        #: taken off what it is sent.
        self.mountpoint = zone.mountpoint
        #: The node's counters and hook chains (looked up once, used on every packet).
        self.metrics = services.metrics
        self.hooks = services.hooks
        #: Its listener, transport and local port, shared (set by the connection).
        self.origin = _DEFAULT_ORIGIN
        #: Set at CONNACK when deliveries to this client must pass authorization (an
        #: authorization chain exists and the client is no superuser); None costs
        #: ``deliver`` one test.
        self.acl_deliver: Callable[[ClientInfo, str, str], int] | None = None
        #: Packets received while authentication runs, applied after CONNACK; or while a
        #: sliced SUBSCRIBE runs, applied after its SUBACK.
        self._held: list[Any] | None = None  # type: ignore[explicit-any]  # any packet
        self._clientinfo: ClientInfo | None = None
        #: The durable store's progress, and the output held back for it: [seq, n] marks
        #: saying the first n packets of ``out`` may be written once ``gate.committed``
        #: reaches seq (an acknowledgement of something stored). None while nothing is held.
        self.gate = services.gate
        self.hold: list[list[int]] | None = None
        #: In a cluster: the other nodes' confirmations. A QoS 1/2 PUBLISH forwarded to
        #: nodes that must confirm it adds its own mark [seq, n, packet id, QoS] to ``hold``
        #: (4 long, a store mark 2), released once seq is no longer in ``rgate.waiting``.
        #: (``rgate`` is ``services.remote_gate``, read from there: no slot per client.)
        #: Backpressure (zone key mqueue_overflow): the sessions whose queue this client's
        #: messages went past its limit, None while there are none; and (``pressure_mark``)
        #: how many packets at the head of ``out`` may be written meanwhile (the rest, from
        #: the first acknowledgement held, wait for room). The connection stops reading
        #: while it is set, and ends it (``end_pressure``) on room or time-out.
        self.pressure: set[Backlog] | None = None

    @property
    def alias_in(self) -> dict[int, str]:
        """Topic aliases the client set: alias -> topic."""
        return self.aliases.inbound

    @property
    def alias_out(self) -> dict[str, int]:
        """Topic aliases sent to the client: topic -> alias."""
        return self.aliases.outbound

    @property
    def peer(self) -> str:
        """The client's address, "host:port" (made when asked for a plain TCP client:
        64 B less per idle client; read by log lines and views only)."""
        peer = self._peer
        return peer if type(peer) is str else peer.peername()  # type: ignore[union-attr]

    @peer.setter
    def peer(self, peer: str) -> None:
        self._peer = peer

    @property
    def sockport(self) -> int:
        """The local port the client connected to."""
        return self.origin.sockport

    @sockport.setter
    def sockport(self, port: int) -> None:
        o = self.origin
        self.origin = Origin.of(o.listener, o.transport, port)

    @property
    def listener(self) -> str:
        """The listener the client came in on."""
        return self.origin.listener

    @listener.setter
    def listener(self, name: str) -> None:
        o = self.origin
        self.origin = Origin.of(name, o.transport, o.sockport)

    @property
    def transport(self) -> str:
        """Its transport: "tcp", "ssl", "ws" or "wss"."""
        return self.origin.transport

    @transport.setter
    def transport(self, name: str) -> None:
        o = self.origin
        self.origin = Origin.of(o.listener, name, o.sockport)

    @property
    def proto_name(self) -> str:
        """The protocol name the CONNECT gave ("" before it)."""
        return self._proto_name if self.version else ""

    @proto_name.setter
    def proto_name(self, name: str) -> None:
        self._proto_name = name

    @property
    def clientinfo(self) -> ClientInfo:
        """This client as hooks and management see it, kept for the per-message hooks
        (ACL, delivered, acked) once one asks (built again after CONNACK settles its facts)."""
        info = self._clientinfo
        if info is None:
            info = self._clientinfo = self._describe()
        return info

    def _describe(self, expiry: int = -1) -> ClientInfo:
        """A fresh view, not kept: the once-per-connection hooks (connect, connack,
        connected, disconnected; $SYS presence runs on two of them by default) use it, so
        an idle connection holds no view. ``expiry``: the session's expiry interval when
        the session is not there yet (-1: the session's, 0 without one)."""
        info = self._clientinfo
        if info is not None:
            return info
        if expiry < 0:
            session = self.session
            expiry = session.expiry_interval if session is not None else 0
        version = self.version
        origin = self.origin  # (not the properties: no Python call)
        rare = self._rare
        if rare is None:  # the four Rare fields at their defaults: no descriptor calls
            return ClientInfo(
                self.client_id, self.username, self.peer, origin.sockport,
                "MQTT" if version else "", version, self.clean_start, self.keepalive,
                self.zone.name, self.mountpoint, expiry, self.connected_at, origin.listener)
        # (read from the dict, not through the four descriptors: a password-file client
        # has one rare field set, its credential, and is described three times a connect)
        get = rare.get
        return ClientInfo(
            self.client_id, self.username, self.peer, origin.sockport,
            get("_proto_name", "MQTT") if version else "",  # type: ignore[arg-type]
            version, self.clean_start, self.keepalive, self.zone.name, self.mountpoint, expiry,
            self.connected_at, origin.listener,
            get("superuser", False), get("auth_acl"),  # type: ignore[arg-type]
            get("cert_user", False))  # type: ignore[arg-type]

    # --- output ----------------------------------------------------------------------

    def _send(self, packet: Packet) -> None:
        data = encode(packet, self.version)
        if self.client_max_packet and len(data) > self.client_max_packet:
            # [MQTT-3.1.2-24]: never send a client more than it accepts.
            self.dropped += 1
            return
        out = self.out
        if out is NO_OUT:
            out = self.out = []
        out.append(data)
        self.send_pkt += 1
        idx = _SENT[packet.packet_type]
        if idx >= 0:
            self.metrics.inc(idx)
        if self.tracer is not None:
            self.tracer("SEND", packet)

    def _output(self) -> list[bytes]:
        """The output list, the channel's own (not the shared empty NO_OUT)."""
        out = self.out
        if out is NO_OUT:
            out = self.out = []
        return out

    def _send_with_reason(self, packet: Connack | Disconnect, reason: str) -> None:
        """Send an MQTT 5 CONNACK/DISCONNECT carrying ``reason`` as its Reason String, or
        without it when that would pass the client's Maximum Packet Size [MQTT-3.2.2-19]
        (Request Problem Information never forbids it on these two packets)."""
        packet.properties = dict(packet.properties, reason_string=reason)
        data = encode(packet, 5)
        if self.client_max_packet and len(data) > self.client_max_packet:
            del packet.properties["reason_string"]
            data = encode(packet, 5)
        self._output().append(data)
        self.send_pkt += 1
        self.metrics.inc(_SENT[packet.packet_type])
        if self.tracer is not None:
            self.tracer("SEND", packet)

    def _drop(self, idx: int, reason: str, msg: Message) -> None:
        """A delivery to this client is dropped: count it, tell the delivery.dropped hook.
        (``self.dropped``/``session.dropped``, the per-client figures, are kept by the caller.)"""
        self.metrics.inc(idx)
        hooks = self.hooks
        if hooks.delivery_dropped:
            hooks.run("delivery.dropped", self.session, msg, reason)

    def _enqueue(self, delivery: Delivery) -> None:
        """Queue a delivery in the session; count the one a full queue pushed out."""
        assert self.session is not None
        dropped = self.session.enqueue(delivery)
        if dropped is not None:
            self.services.queue_dropped(self.session, dropped)

    def _close(self, reason: CloseReason, detail: str, code: int | None = None) -> None:
        """End the connection; on MQTT 5 after CONNACK, tell the client why first."""
        if self.closing:
            return
        if code is not None and self.version == 5 and self.state == CONNECTED:
            self._send_with_reason(Disconnect(code), detail)
        self.closing = True
        # The three Rare fields written in the dict directly (no descriptor calls: this
        # runs for every client leaving); close_code only when it is not the default.
        rare = self._rare
        if rare is None:
            rare = self._rare = {"close_reason": reason, "close_detail": detail}
        else:
            rare["close_reason"] = reason
            rare["close_detail"] = detail
        if code is not None or "close_code" in rare:
            rare["close_code"] = code

    def handle_close(self, reason: CloseReason = CloseReason.CLOSED, detail: str = "") -> None:
        """The connection is over (or about to be: closing, lingering): end the client's
        part in its session once (EMQX's ``terminate``). ``reason``/``detail`` apply only if
        the channel had not decided to close itself.

        ``client.disconnected`` runs before the session is detached, as in EMQX; detaching
        starts the will (or its delay) and the session's expiry.
        """
        if not self.closing:
            self.closing = True
            self.close_reason = reason
            self.close_detail = detail
        rare = self._rare  # (the Rare fields read from the dict: no descriptor calls)
        if rare is not None and rare.get("_auth_timer") is not None:
            self._auth_timer.cancel()  # type: ignore[union-attr]  # not None: just read
            self._auth_timer = None
        if self.pressure is not None:
            self.end_pressure(False)  # counted as ended by the close
        if self.state != CONNECTED:
            self.state = DISCONNECTED
            return
        self.state = DISCONNECTED
        reason = (rare.get("close_reason") if rare is not None else None) \
            or CloseReason.CLOSED  # type: ignore[assignment]  # a CloseReason when set
        if clog.isEnabledFor(_INFO):
            self._log_disconnected(reason)
        self.metrics.inc(CLIENT_DISCONNECTED)
        hooks = self.hooks
        if hooks.client_disconnected:
            hooks.run("client.disconnected", self._describe(), reason)
        self.services.close_session(self)

    def _log_connected(self, present: bool) -> None:
        proto = _PROTOCOLS.get(self.version, str(self.version))
        username = self.username  # never the password
        _clog_info("client %s connected from %s (listener %s, %s, %s, clean start %d, "
                   "keepalive %d, %s)", (
                       self.client_id, self.peer, self.listener, self.transport, proto,
                       self.clean_start, self.keepalive,
                       "no username" if username is None else "username " + username), {
                       "event": "connected", "client_id": self.client_id, "peer": self.peer,
                       "listener": self.listener, "transport": self.transport,
                       "protocol": proto, "clean_start": self.clean_start,
                       "keepalive": self.keepalive, "username": username,
                       "session_present": present})

    def _log_disconnected(self, reason: CloseReason) -> None:
        code = self.close_code
        detail = self.close_detail
        why = reason.value if code is None else "%s 0x%02X" % (reason.value, code)
        _clog_info("client %s disconnected from %s (listener %s): %s%s", (
                       self.client_id, self.peer, self.listener, why,
                       " (%s)" % detail if detail else ""), {
                       "event": "disconnected", "client_id": self.client_id, "peer": self.peer,
                       "listener": self.listener, "reason": reason.value,
                       "reason_code": code, "detail": detail})

    def _log_refused(self, code: int, reason: str) -> None:
        # Always logged (an operator's first question), by the connection logger unless
        # connection messages are off.
        logger = clog if clog.isEnabledFor(_INFO) else log
        logger.info("client %s refused from %s (listener %s, %s, %s): CONNACK 0x%02X %s",
                    self.client_id or "(no client id)", self.peer, self.listener,
                    self.transport, _PROTOCOLS.get(self.version, str(self.version)), code,
                    reason, extra={"fields": {
                        "event": "refused", "client_id": self.client_id, "peer": self.peer,
                        "listener": self.listener, "transport": self.transport,
                        "username": self.username, "reason_code": code, "detail": reason}})

    # --- input -----------------------------------------------------------------------

    def handle_in(  # type: ignore[explicit-any]  # narrowed by packet_type below:
            self, packet: Any) -> list[bytes]:       # isinstance() would cost the hot path
        """Apply one packet from the client; returns the pending output."""
        if self.closing:
            return self.out
        if self._held is not None and self.state == CONNECTED:
            # A sliced SUBSCRIBE runs: this waits for its SUBACK (then counted and applied).
            self._hold_subscribing(packet)
            return self.out
        self.recv_pkt += 1
        if self.tracer is not None:
            self.tracer("RECV", packet)
        ptype = packet.packet_type
        idx = _RECV[ptype]
        if idx >= 0:
            self.metrics.inc(idx)
        if self.state == CONNECTED:
            gate = self.gate
            if ptype == PUBLISH:
                if self.services.remote_gate is not None and packet.qos:
                    self._in_publish_clustered(packet)
                elif gate is None or not packet.qos:  # QoS 0: no acknowledgement to hold
                    self._in_publish(packet)
                else:
                    # Its PUBACK/PUBREC may go only once what it stored is committed.
                    issued = gate.issued
                    self._in_publish(packet)
                    if self.out and (gate.issued != issued or self._stored_pending(gate)):
                        self._hold(gate)
            elif gate is not None and (ptype == PUBREL or ptype == SUBSCRIBE
                                       or ptype == UNSUBSCRIBE or ptype == PUBREC):
                # Likewise PUBCOMP, SUBACK, UNSUBACK, and for PUBREC our PUBREL: once the
                # delivery is stored as released, lest a restart send the PUBLISH again
                # after the client completed it.
                issued = gate.issued
                self._in_durable(ptype, packet)
                if self.out and (gate.issued != issued or self._stored_pending(gate)):
                    self._hold(gate)
            elif ptype == PUBACK:
                self._in_puback(packet)
            elif ptype == PUBREC:
                self._in_pubrec(packet)
            elif ptype == PUBREL:
                self._in_pubrel(packet)
            elif ptype == PUBCOMP:
                self._in_pubcomp(packet)
            elif ptype == PINGREQ:
                self._output().append(_PINGRESP)
                self.send_pkt += 1
                self.metrics.inc(PACKETS_PINGRESP_SENT)
                if self.tracer is not None:
                    self.tracer("SEND", Pingresp())
            elif ptype == SUBSCRIBE:
                self._in_subscribe(packet)
            elif ptype == UNSUBSCRIBE:
                self._in_unsubscribe(packet)
            elif ptype == DISCONNECT:
                self._in_disconnect(packet)
            elif ptype == CONNECT:
                self._close(_PROTO, "second CONNECT", RC.PROTOCOL_ERROR)
            elif ptype == AUTH:
                self._in_auth(packet)
            else:  # CONNACK, SUBACK, UNSUBACK, PINGRESP: server-only packets
                self._close(_PROTO, "server-only packet from a client",
                            RC.PROTOCOL_ERROR)
        elif self.state == IDLE:
            if ptype == CONNECT:
                lazy = self._peer
                if type(lazy) is str:
                    self._in_connect(packet)
                else:
                    # A plain TCP client's address string made once for the CONNECT's two
                    # client views (authentication's, CONNACK's: a getpeername() each),
                    # then let go of (64 B less per idle client).
                    self._peer = lazy.peername()  # type: ignore[union-attr]
                    try:
                        self._in_connect(packet)
                    finally:
                        self._peer = lazy
            else:
                self._close(_PROTO, "first packet is not CONNECT")
        elif self.state == AUTHENTICATING:
            if self._auth is not None:  # an AUTH exchange with the client, not a provider
                self._in_connect_auth(ptype, packet)
                return self.out
            held = self._held
            assert held is not None
            if ptype == CONNECT:
                self._close(_PROTO, "second CONNECT")
            elif len(held) >= MAX_HELD or self._held_bytes > self.zone.max_packet_size:
                # Counted in bytes too: 1,000 held 1 MB packets would be 1 GB held for a
                # client nobody has vouched for yet.
                self._close(_PROTO, "too much sent before CONNACK")
            else:
                held.append(packet)
                if ptype == PUBLISH:
                    self._held_bytes += len(packet.payload)
        return self.out

    def _hold_subscribing(  # type: ignore[explicit-any]  # as handle_in
            self, packet: Any) -> None:
        held = self._held
        assert held is not None
        if len(held) >= MAX_HELD_SUBSCRIBING or self._held_bytes > self.zone.max_packet_size:
            self._close(CloseReason.PROTOCOL_ERROR, "too much sent while a SUBSCRIBE was "
                        "handled", RC.QUOTA_EXCEEDED)
            return
        held.append(packet)
        if packet.packet_type == PUBLISH:
            self._held_bytes += len(packet.payload)
        elif packet.packet_type == SUBSCRIBE:
            self._held_bytes += len(packet.rest)  # a huge one's undecoded entries

    def _in_durable(  # type: ignore[explicit-any]  # as handle_in
            self, ptype: int, packet: Any) -> None:
        if ptype == PUBREL:
            self._in_pubrel(packet)
        elif ptype == SUBSCRIBE:
            self._in_subscribe(packet)
        elif ptype == PUBREC:
            self._in_pubrec(packet)
        else:
            self._in_unsubscribe(packet)

    def _hold(self, gate: CommitGate) -> None:
        """Hold all output so far until the store commits what was just issued. A mark not
        yet handed to the writer grows instead of adding another: at most two per channel."""
        hold = self.hold
        if hold is None:
            self.hold = [[gate.issued, len(self.out)]]
            return
        if hold and len(hold[-1]) == 2 and hold[-1][0] > gate.taken:
            last = hold[-1]
            last[0] = gate.issued
            last[1] = len(self.out)
        else:
            hold.append([gate.issued, len(self.out)])

    def _in_publish_clustered(  # type: ignore[explicit-any]  # as handle_in
            self, packet: Any) -> None:
        """A QoS 1/2 PUBLISH on a cluster node: its PUBACK/PUBREC waits for the store's
        commit and for every other node it was forwarded to (docs/CLUSTER.md)."""
        gate = self.gate
        rgate = self.services.remote_gate
        assert rgate is not None
        issued = gate.issued if gate is not None else 0
        rissued = rgate.issued
        self._in_publish(packet)
        if not self.out:
            return
        if gate is not None and (gate.issued != issued or self._stored_pending(gate)):
            self._hold(gate)
        if rgate.issued != rissued:
            mark = [rgate.issued, len(self.out), packet.packet_id, packet.qos]
            if self.hold is None:
                self.hold = [mark]
            else:
                self.hold.append(mark)

    def _hold_for_routes(self, key: int) -> None:
        """A cluster node: the packet just queued (a SUBACK, a handed-over session's
        CONNACK) waits until the other nodes have this node's new routes (docs/CLUSTER.md),
        released as a forwarded message's acknowledgement is (``key`` leaves
        ``rgate.waiting``; never failed)."""
        mark = [key, len(self.out), 0, 0]
        if self.hold is None:
            self.hold = [mark]
        else:
            self.hold.append(mark)

    def _remote_failed(self, mark: list[int]) -> None:
        """A remote node did not confirm the message of ``mark`` in time: its
        acknowledgement (the packet before the mark) says so, MQTT 5 0x80; a 3.1.1 client,
        which has no way to hear it, gets none and is disconnected (it sends the message
        again when it resumes its session)."""
        out = self.out
        i = mark[1] - 1
        if not 0 <= i < len(out):
            return
        packet_id = mark[2]
        self.metrics.inc(PACKETS_PUBLISH_DROPPED)
        if self.version == 5:
            if mark[3] == 1:
                out[i] = encode(Puback(packet_id, RC.UNSPECIFIED_ERROR), 5)
            else:  # an error PUBREC ends the QoS 2 flow: no PUBREL will come
                out[i] = encode(Pubrec(packet_id, RC.UNSPECIFIED_ERROR), 5)
                if self.session is not None:
                    self.session.release(packet_id)
        else:
            out[i] = b""
            self._close(CloseReason.INTERNAL_ERROR,
                        "another node did not confirm a message of the client in time")

    def _stored_pending(self, gate: CommitGate) -> bool:
        """Whether this client's session is stored and anything is not committed yet: its
        acknowledgement may rest on state issued before (a resent QoS 2 PUBLISH answered
        from the awaiting-PUBREL id an earlier packet stored; a resent PUBREL)."""
        session = self.session
        return session is not None and session.store is not None \
            and gate.issued != gate.committed

    def _hold_qos2(self) -> None:
        """A QoS 2 PUBLISH to a stored session goes once its packet id is stored: sent
        before, a restart would send the message again under another id, which the client
        takes for a new message (and the id it still holds would swallow a later one)."""
        gate = self.gate
        assert gate is not None
        if self.out and gate.issued != gate.committed:
            self._hold(gate)

    def releasable(self) -> int:
        """How many packets at the head of ``out`` may be written now (all, unless some
        wait for the store or, under backpressure, for room); the caller writes them."""
        hold = self.hold
        if not hold:
            self.hold = None
            n = len(self.out)
        else:
            gate = self.gate
            committed = gate.committed if gate is not None else 0
            rgate = self.services.remote_gate
            n = 0
            while hold:
                mark = hold[0]
                if len(mark) == 2:
                    if mark[0] > committed:
                        break
                else:  # a remote mark (_in_publish_clustered)
                    assert rgate is not None
                    if mark[0] in rgate.waiting:
                        break
                    if rgate.failed and mark[0] in rgate.failed:
                        rgate.failed.discard(mark[0])
                        self._remote_failed(mark)
                n = hold.pop(0)[1]
            if not hold:
                self.hold = None
                n = len(self.out)
        if self.pressure is not None:  # (then pressure_mark >= 0)
            cap = self.pressure_mark
            if n > cap:
                n = cap
            self.pressure_mark = cap - n
        if n and self.hold:
            for mark in self.hold:
                mark[1] -= n
        return n

    def handle_first_packet_type(self, packet_type: int) -> list[bytes]:
        """The type of the first packet on the connection, known from its first byte: anything
        but CONNECT ends the connection without a reply [MQTT-3.1.0-1]."""
        if self.state == IDLE and packet_type != CONNECT:
            self._close(_PROTO, "first packet is not CONNECT")
        return self.out

    def handle_frame_error(self, err: PacketError, parser_version: int) -> list[bytes]:
        """The parser rejected the client's bytes: answer as the spec says, then close."""
        code = err.reason_code
        if self.state == IDLE:
            if code == RC.UNSUPPORTED_PROTOCOL_VERSION and "level" in err.message:
                # [MQTT-3.1.2-2]: CONNACK 0x01 in the format every level can read.
                self._send(Connack(False, 1))  # self.version is 0: the 3.1.1 format
                self.metrics.inc(PACKETS_CONNACK_ERROR)
            elif parser_version == 5:
                self.version = 5
                self._send_with_reason(Connack(False, code), err.message)
                self.metrics.inc(PACKETS_CONNACK_ERROR)
            self._close(CloseReason.FRAME_ERROR, "bad CONNECT: " + err.message)
        else:
            self._close(CloseReason.FRAME_ERROR, err.message, code)
        return self.out

    def handle_timeout(self, name: str) -> list[bytes]:
        if name == "keepalive":
            self._close(CloseReason.KEEPALIVE_TIMEOUT, "keepalive timeout",
                        RC.KEEP_ALIVE_TIMEOUT)
        elif name == "connect":
            self._close(CloseReason.CONNECT_TIMEOUT, "no CONNECT in time")
        return self.out

    # --- CONNECT ---------------------------------------------------------------------

    def _refuse(self, code: int, reason: str, detail: str = "") -> None:
        """CONNACK ``code`` (MQTT 5: with ``reason`` as its Reason String) and close;
        ``detail`` (what the log says beyond the client's reason) stays on the server."""
        self._log_refused(code, detail or reason)
        metrics = self.metrics
        metrics.inc(CLIENT_CONNACK)
        props: Properties = {}
        hooks = self.hooks
        if hooks.client_connack:
            props = hooks.run_fold("client.connack", (self._describe(), code), props)
        sent = True
        if self.version == 5:
            self._send_with_reason(Connack(False, code, props), reason)
        else:
            v3 = _V3_CONNACK.get(code)
            if v3 is not None:
                self._send(Connack(False, v3))
            else:
                sent = False
        if sent:
            metrics.inc(PACKETS_CONNACK_ERROR)
            if code == RC.BAD_USER_NAME_OR_PASSWORD or code == RC.NOT_AUTHORIZED:
                metrics.inc(PACKETS_CONNACK_AUTH_ERROR)
        self._close(CloseReason.CONNECT_REFUSED, "connection refused: " + reason)

    def _in_connect(self, p: Connect) -> None:
        zone = self.zone
        self.version = version = p.proto_level
        if p.proto_name != "MQTT":  # (the default: no descriptor call for most clients)
            self.proto_name = p.proto_name
        self.clean_start = p.clean_start
        self.metrics.inc(CLIENT_CONNECT)
        props = p.properties
        hooks = self.hooks
        if self._rare is not None:  # (else no certificate named the client: no lookups)
            if self.cert_username is not None:
                # The listener proved this name with the client's certificate: the
                # CONNECT's own User Name cannot override it (use_identity_as_username).
                p.username = self.cert_username
                self.cert_user = True
            if self.cert_clientid is not None:
                p.client_id = self.cert_clientid
        self.username = p.username
        if hooks.client_connect:
            self.client_id = p.client_id
            props = hooks.run_fold("client.connect", (self._describe(), p), props)
        client_id = p.client_id
        if zone.use_username_as_clientid and p.username:
            client_id = p.username
        assigned = None
        if not client_id:
            if version == 5 or (version == 4 and p.clean_start):
                client_id = assigned = "mqttd-" + uuid.uuid4().hex
            else:
                return self._refuse(RC.CLIENT_IDENTIFIER_NOT_VALID, "empty client id")
        self.client_id = client_id
        self._clientinfo = None  # the id is settled: hooks from here on see it
        if len(client_id) > zone.max_clientid_len or has_disallowed_chars(client_id):
            return self._refuse(RC.CLIENT_IDENTIFIER_NOT_VALID, "client id not allowed")
        method = props.get("authentication_method")
        if method is not None:  # MQTT 5 enhanced authentication: an AUTH exchange decides
            return self._start_connect_auth(method, p, props, assigned)
        # (bound methods, not closures: the common answer comes back at once)
        result = self.services.authenticate(
            self._describe(), p.password, self._authenticated,
            # A client that left while its check waited in the hashing queue costs no hash.
            self._wanted)
        if result is None:  # hashing or a remote provider: CONNACK when it answers
            self.state = AUTHENTICATING
            self._held = []
            self._auth_args = (p, props, assigned)
            return None
        return self._connect_accepted(p, props, assigned, result)

    def _wanted(self) -> bool:
        return not self.closing

    def _take_rare(self, name: str) -> object:
        """Remove the rare field ``name`` and return its value (None if it was not set)."""
        rare = self._rare
        if rare is None:
            return None
        value = rare.pop(name, None)
        if not rare:
            self._rare = None
        return value

    def _authenticated(self, result: AuthResult) -> None:
        """Authentication answered (off the loop, now back on it): finish the CONNECT, then
        apply what the client sent meanwhile."""
        args = cast("tuple[Connect, Properties, str | None] | None",
                    self._take_rare("_auth_args"))
        if self.closing or self.state != AUTHENTICATING or args is None:
            return  # the connection ended while authentication ran
        self.state = IDLE
        held, self._held = self._held or [], None
        p, props, assigned = args
        self._connect_accepted(p, props, assigned, result)
        for packet in held:
            if self.closing:
                break
            self.handle_in(packet)
        if (self.out or self.closing) and self.wakeup is not None:
            self.wakeup()  # the connection writes, or closes (a 3.1 refusal writes nothing)

    def _connect_accepted(self, p: Connect, props: Properties, assigned: str | None,
                          result: AuthResult, auth_data: bytes | None = None,
                          identity: str | None = None) -> None:
        """The rest of CONNECT once authentication has answered (an enhanced
        authentication exchange also gives its last Authentication Data for the CONNACK and
        the identity it proved)."""
        if result.code:
            reason = result.reason or "authentication failed"
            # The detail is logged at info (an operator's first question, never with the
            # password); the client is told only the code's meaning: "wrong password" and
            # "unknown user" must not tell a guesser which user names exist.
            return self._refuse(result.code, _PUBLIC_REFUSALS.get(result.code, reason),
                                reason)
        credential = result.credential
        if credential is not None and (self.username is None or (
                (now := credential[0].entry(self.username)) is not credential[1]
                and now != credential[1])):  # (the same object: no dataclass __eq__ call)
            # The user was removed or changed (a reload, ctl users) while its check ran off
            # the loop (or since the success was cached): the revocation's sweep of
            # connected clients could not see this one yet.
            return self._refuse(RC.BAD_USER_NAME_OR_PASSWORD, _PUBLIC_REFUSALS[0x86],
                                "its credentials were revoked while they were checked")
        # (Only what differs from the defaults, at which a channel's one CONNECT finds them.)
        if result.superuser:
            self.superuser = True
        if result.acl is not None:
            self.auth_acl = result.acl
        if result.credential is not None:
            self.auth_credential = result.credential
        if result.expires_at is not None:
            self._auth_timer = self.services.timers.call_later(
                max(0.0, result.expires_at - time.time()), self._auth_expired)
        zone = self.zone
        version = self.version
        if identity is not None and zone.use_username_as_clientid \
                and identity != self.client_id:
            # The zone names clients by user: the proven identity, not the User Name (or
            # client id) the CONNECT chose, lest one user take another's session.
            self.client_id = identity
            self._clientinfo = None
        client_id = self.client_id
        will = p.will
        if will is not None:
            if will.qos > zone.max_qos_allowed:
                return self._refuse(RC.QOS_NOT_SUPPORTED, "will QoS not supported")
            if will.retain and not zone.retain_available:
                return self._refuse(RC.RETAIN_NOT_SUPPORTED, "will retain not supported")
            if will.topic.startswith("$SYS"):
                return self._refuse(RC.TOPIC_NAME_INVALID, "will topic in $SYS")
            # Will Delay Interval is for the server; the rest travel with the message.
            will_props = will.properties
            if "will_delay_interval" in will_props:
                self.will_delay = will_props["will_delay_interval"]
                will_props = {k: v for k, v in will_props.items() if k != "will_delay_interval"}
            self.will = Message(zone.mountpoint + will.topic, will.payload, will.qos, will.retain,
                                will_props, client_id)
        self.client_id = client_id
        self.username = p.username if identity is None else identity
        keepalive = p.keepalive
        ack_props: Properties = {}
        if version == 5:
            expiry = props.get("session_expiry_interval", 0)
            if zone.server_keepalive:
                keepalive = zone.server_keepalive
            elif zone.max_keepalive and (keepalive == 0 or keepalive > zone.max_keepalive):
                keepalive = zone.max_keepalive
            if keepalive != p.keepalive:
                ack_props["server_keep_alive"] = keepalive
            client_max_packet = props.get("maximum_packet_size", 0)
            self.alias_out_max = props.get("topic_alias_maximum", 0)
            client_rm = props.get("receive_maximum", 65535)
        else:
            if zone.max_keepalive and keepalive > zone.max_keepalive:
                # 3.1/3.1.1 cannot be told a Server Keep Alive: refuse rather than let the
                # client idle past the limit (mosquitto >= 2.0.12 does the same). Keepalive
                # 0 ("none") stays allowed: the Paho 3.1.1 suite and most 3.1.1 tools use it.
                return self._refuse(RC.CLIENT_IDENTIFIER_NOT_VALID,
                                    "keepalive %d is above max_keepalive" % keepalive)
            expiry = 0 if p.clean_start else zone.session_expiry_interval
            client_rm = 65535
            client_max_packet = 0
        if expiry > zone.max_session_expiry_interval:
            expiry = zone.max_session_expiry_interval
            if version == 5:
                ack_props["session_expiry_interval"] = expiry
        self.keepalive = keepalive
        self.receive_maximum = zone.max_awaiting_rel or 65535
        self.connected_at = time.time()
        # The client's facts are settled: one view for the delivery check and the connack
        # and connected hooks (its expiry is the one the session is about to get).
        info = self._describe(expiry)
        # Before the session opens: a will the client may not publish must not be kept
        # with it (a stored session keeps its will for a restart).
        deliver_check = self.services.delivery_check(info)
        if self.will is not None and deliver_check is not None:
            self._check_will()
        # A session elsewhere in a cluster is fetched first (or a persistent session that
        # cannot be registered is refused): the CONNACK waits, as for authentication.
        code = self.services.prepare_session(info, self._prepared)
        if code is None:
            self.state = AUTHENTICATING
            self._held = []
            self._open_args = (p, expiry, client_rm, client_max_packet, ack_props, info,
                               deliver_check, assigned, auth_data)
            return None
        if code:
            return self._refuse(code, "server unavailable", "its session cannot be "
                                "registered in the cluster (NATS unreachable)")
        self._open_session(p, expiry, client_rm, client_max_packet, ack_props, info,
                           deliver_check, assigned, auth_data)

    def _prepared(self, code: int) -> None:
        """The cluster has the session ready (``code`` 0) or refuses it: go on with the
        CONNECT, then apply what the client sent meanwhile."""
        args = cast("tuple[Connect, int, int, int, Properties, ClientInfo, "
                    "Callable[[ClientInfo, str, str], int] | None, str | None, "
                    "bytes | None] | None", self._take_rare("_open_args"))
        if self.closing or self.state != AUTHENTICATING or args is None:
            return  # the connection ended meanwhile
        self.state = IDLE
        held, self._held = self._held or [], None
        if code:
            self._refuse(code, "server unavailable", "its session cannot be registered "
                         "in the cluster (NATS unreachable)")
        else:
            self._open_session(*args)
        for packet in held:
            if self.closing:
                break
            self.handle_in(packet)
        if (self.out or self.closing) and self.wakeup is not None:
            self.wakeup()

    def _open_session(self, p: Connect, expiry: int, client_rm: int,
                      client_max_packet: int, ack_props: Properties, info: ClientInfo,
                      deliver_check: Callable[[ClientInfo, str, str], int] | None,
                      assigned: str | None, auth_data: bytes | None) -> None:
        """The end of CONNECT: open the session, CONNACK, resume."""
        zone = self.zone
        version = self.version
        hooks = self.hooks
        session, present = self.services.open_session(
            self, zone, p.clean_start, expiry,
            max_inflight=min(client_rm, zone.max_inflight or 65535))
        self.session = session
        self.state = CONNECTED
        self._clientinfo = None  # keepalive, expiry and connected_at are settled now
        self.acl_deliver = deliver_check
        if version == 5:
            if assigned is not None:
                ack_props["assigned_client_identifier"] = assigned
            if zone.max_awaiting_rel:
                ack_props["receive_maximum"] = self.receive_maximum
            if zone.max_qos_allowed < 2:
                ack_props["maximum_qos"] = zone.max_qos_allowed
            if not zone.retain_available:
                ack_props["retain_available"] = 0
            ack_props["maximum_packet_size"] = zone.max_packet_size
            ack_props["topic_alias_maximum"] = zone.max_topic_alias
            if not zone.wildcard_subscription:
                ack_props["wildcard_subscription_available"] = 0
            if not zone.shared_subscription:
                ack_props["shared_subscription_available"] = 0
            if self.auth_method is not None:  # [MQTT-4.12.0-5]
                ack_props["authentication_method"] = self.auth_method
                if auth_data:
                    ack_props["authentication_data"] = auth_data
        metrics = self.metrics
        metrics.inc(CLIENT_CONNACK)
        if hooks.client_connack:
            ack_props = hooks.run_fold("client.connack", (info, 0), ack_props)
        self._send(Connack(present, 0, ack_props if version == 5 else {}))
        rgate = self.services.remote_gate
        if present and rgate is not None and rgate.routes in rgate.waiting:
            self._hold_for_routes(rgate.routes)  # (a session handed over from another node)
        if version == 5:
            # From here on nothing larger than the client's Maximum Packet Size is sent. The
            # CONNACK itself is exempt: without it the client cannot go on at all.
            self.client_max_packet = client_max_packet
        metrics.inc(CLIENT_CONNECTED)
        if clog.isEnabledFor(_INFO):
            self._log_connected(present)
        if hooks.client_connected:
            hooks.run("client.connected", info)
        if present:
            self._resume()
        gate = self.gate
        if session.store is not None and gate is not None and gate.issued != gate.committed:
            # A stored session's CONNACK, and what its resume resends (PUBREL, QoS 2 in
            # flight under their ids), go once its state is committed.
            self._hold(gate)

    def _check_will(self) -> None:
        """The will is a publish: a client may not leave a will where it could not publish.
        Asked once, at CONNACK, with the client's credentials then (the will may be sent
        long after, by the registry, when no channel is left to ask); a refused will is
        dropped and the connection goes on."""
        will = self.will
        assert will is not None
        topic = will.topic
        if self.mountpoint and topic.startswith(self.mountpoint):
            topic = topic[len(self.mountpoint):]
        if self.services.check_acl(self._describe(), "publish", topic):
            log.info("client %s: will to %s not authorized: it will not be sent",
                     self.client_id, topic)
            self.will = None

    def _resume(self) -> None:
        """Resend what the resumed session had in flight (with DUP), then drain its queue."""
        session = self.session
        assert session is not None
        now = time.monotonic()
        wait_comp = session.wait_comp or ()
        check = self.acl_deliver
        mountpoint = self.mountpoint
        for pid, delivery in list(session.inflight.items()):
            if pid not in wait_comp:
                if check is not None:
                    # A resumed session may now belong to another user (a clean_start 0
                    # CONNECT of the same client id): what it had in flight is checked too.
                    topic = delivery[0].topic
                    if mountpoint and topic.startswith(mountpoint):
                        topic = topic[len(mountpoint):]
                    if check(self._clientinfo or self.clientinfo, "deliver", topic):
                        session.drop_inflight(pid)
                        self._not_authorized(delivery[0])
                        continue
                pub = session.build_publish(delivery, pid, now, dup=True)
                if pub is None:
                    session.drop_inflight(pid)
                    self._drop(DELIVERY_DROPPED_EXPIRED, "expired", delivery[0])
                    continue
                self._send_publish(pub, delivery[0])
            else:
                self._send(Pubrel(pid))
        self.drain()

    # --- AUTH: MQTT 5 enhanced authentication (spec 4.12) ---------------------------------

    def _start_connect_auth(self, method: str, p: Connect, props: Properties,
                            assigned: str | None) -> None:
        """A CONNECT naming an Authentication Method: the exchange decides instead of the
        password chain; CONNACK 0x8C when no provider offers the method [MQTT-4.12.0-1]."""
        auth = self.services.enhanced_auth(method, self._describe())
        if auth is None:
            return self._refuse(RC.BAD_AUTHENTICATION_METHOD,
                                "unsupported authentication method")
        self.auth_method = method
        self._auth = _Exchange(auth, p, props, assigned)
        self.state = AUTHENTICATING  # the connect timeout still runs: idle_timeout bounds it
        self._connect_auth_step(auth.start(self._describe(), props.get("authentication_data")))

    def _in_connect_auth(self, ptype: int, packet: Auth) -> None:
        """A packet while the CONNECT's exchange runs: only AUTH 0x18 or DISCONNECT
        [MQTT-3.1.2-30]. Anything else is refused with CONNACK 0x82 (no DISCONNECT may
        come before a CONNACK [MQTT-3.14.0-1]). ``packet`` is read only when it is an AUTH."""
        if ptype == AUTH:
            why = self._auth_error(packet, RC.CONTINUE_AUTHENTICATION)
            if why is not None:
                return self._refuse(RC.PROTOCOL_ERROR, why)
            auth = self._auth
            assert auth is not None
            self._connect_auth_step(auth.exchange.next(
                packet.properties.get("authentication_data")))
        elif ptype == DISCONNECT:
            self._close(CloseReason.NORMAL, "client disconnected during authentication")
        else:
            self._refuse(RC.PROTOCOL_ERROR, "only AUTH may come before CONNACK during "
                                            "enhanced authentication")

    def _connect_auth_step(self, step: AuthStep) -> None:
        """The CONNECT's exchange answered: AUTH 0x18 to go on, else CONNACK."""
        auth = self._auth
        assert auth is not None and auth.connect is not None
        if step.result is None:
            auth.rounds += 1
            if auth.rounds > MAX_AUTH_ROUNDS:
                return self._refuse(RC.NOT_AUTHORIZED, "too many authentication rounds")
            self._send_auth(RC.CONTINUE_AUTHENTICATION, step.data)
            return
        self._auth = None
        self.state = IDLE
        self._connect_accepted(auth.connect, auth.props, auth.assigned, step.result,
                               step.data, step.username)

    def _in_auth(self, p: Auth) -> None:
        """AUTH after CONNACK: 0x19 re-authenticates with the CONNECT's method
        [MQTT-4.12.1-1], 0x18 continues that exchange; anything else is a protocol error."""
        method = self.auth_method
        if method is None:  # no enhanced authentication was started at CONNECT
            return self._close(_PROTO, "AUTH without an authentication method at CONNECT",
                               RC.PROTOCOL_ERROR)  # [MQTT-4.12.0-7]
        auth = self._auth
        why = self._auth_error(p, RC.RE_AUTHENTICATE if auth is None
                               else RC.CONTINUE_AUTHENTICATION)
        if why is not None:
            return self._close(_PROTO, why, RC.PROTOCOL_ERROR)
        data = p.properties.get("authentication_data")
        if auth is None:
            exchange = self.services.enhanced_auth(method, self.clientinfo, reauth=True)
            if exchange is None:  # the provider went away (configuration reloaded)
                return self._close(CloseReason.NOT_AUTHORIZED,
                                   "re-authentication method no longer offered",
                                   RC.NOT_AUTHORIZED)
            auth = self._auth = _Exchange(exchange)
            step = exchange.start(self.clientinfo, data)
        else:
            step = auth.exchange.next(data)
        if step.result is None:
            auth.rounds += 1
            if auth.rounds <= MAX_AUTH_ROUNDS:
                self._send_auth(RC.CONTINUE_AUTHENTICATION, step.data)
                return
            step = AuthStep(result=AuthResult(RC.NOT_AUTHORIZED,
                                              reason="too many authentication rounds"))
        self._auth = None
        result = step.result
        assert result is not None
        code, reason = result.code, result.reason
        if not code and step.username is not None and step.username != self.username:
            code, reason = RC.NOT_AUTHORIZED, "re-authenticated as another user"
        if code:  # DISCONNECT and close [MQTT-4.12.1-2]
            log.info("re-authentication of %s from %s failed: %s", self.client_id, self.peer,
                     reason or "not authorized")
            return self._close(CloseReason.NOT_AUTHORIZED, "re-authentication failed",
                               code if code in DISCONNECT_CODES else RC.NOT_AUTHORIZED)
        # The identity is confirmed; what the first authentication granted stays.
        self._send_auth(RC.SUCCESS, step.data)

    def _auth_error(self, p: Auth, expected: int) -> str | None:
        """Why an AUTH is a protocol error here (None: it is not): its reason code, or its
        method missing or another than the CONNECT's [MQTT-4.12.0-5]."""
        method = p.properties.get("authentication_method")
        if method is None:
            return "AUTH without an authentication method"
        if method != self.auth_method:
            return "AUTH with another authentication method than CONNECT's"
        if p.reason_code != expected:
            return "AUTH 0x%02X out of sequence (0x%02X expected)" % (p.reason_code, expected)
        return None

    def _send_auth(self, code: int, data: bytes | None) -> None:
        props: Properties = {"authentication_method": self.auth_method}
        if data:
            props["authentication_data"] = data
        self._send(Auth(code, props))

    # --- PUBLISH from the client ------------------------------------------------------

    def _in_publish(self, p: Publish) -> None:
        zone = self.zone
        qos = p.qos
        metrics = self.metrics
        metrics.inc(_QOS_RECV[qos])
        topic = p.topic
        props = p.properties
        if props:
            if "topic_alias" in props:
                alias = props["topic_alias"]
                if alias == 0 or alias > zone.max_topic_alias:
                    return self._close(_PROTO, "topic alias out of range", RC.TOPIC_ALIAS_INVALID)
                aliases = self.aliases
                if topic:
                    if aliases.inbound is NO_MAP:
                        if aliases is _NO_ALIASES:
                            aliases = self.aliases = _Aliases()
                        aliases.inbound = {}
                    aliases.inbound[alias] = topic
                else:
                    topic = aliases.inbound.get(alias, "")
                    if not topic:
                        return self._close(_PROTO, "unknown topic alias", RC.PROTOCOL_ERROR)
                props = dict(props)
                del props["topic_alias"]
            if "subscription_identifier" in props:
                return self._close(_PROTO, "subscription identifier from a client",
                                   RC.PROTOCOL_ERROR)
        if qos > zone.max_qos_allowed:
            return self._close(_PROTO, "QoS not supported", RC.QOS_NOT_SUPPORTED)
        retain = p.retain
        if retain and not zone.retain_available:
            return self._close(_PROTO, "retain not supported", RC.RETAIN_NOT_SUPPORTED)
        session = self.session
        assert session is not None
        if qos == 2:
            if p.packet_id in session.awaiting_rel:
                # A resend of a QoS 2 message we already have: acknowledge, deliver once.
                metrics.inc(PACKETS_PUBLISH_INUSE)
                self._send(Pubrec(p.packet_id))
                return
            if len(session.awaiting_rel) >= self.receive_maximum:
                metrics.inc(PACKETS_PUBLISH_DROPPED)
                return self._close(_PROTO, "receive maximum exceeded", RC.RECEIVE_MAXIMUM_EXCEEDED)
        self.recv_msg += 1
        payload = p.payload
        hooks = self.hooks
        if hooks.client_publish and (hooks.client_publish_prefixes is None
                                     or topic.startswith(hooks.client_publish_prefixes)):
            topic, code = self._publish_hook(topic, props)
            if not code:
                code = self._check_publish(topic, props, payload)
        else:
            code = self._check_publish(topic, props, payload)
        if code:
            if code < 0:  # a $-topic for the client.publish.dollar chain (delayed publish)
                code = self._publish_dollar(p, topic, props)
                if not code:  # published or taken there, and acknowledged
                    return
            metrics.inc(PACKETS_PUBLISH_AUTH_ERROR if code == RC.NOT_AUTHORIZED
                        else PACKETS_PUBLISH_ERROR)
            if code == RC.NOT_AUTHORIZED and self.services.disconnect_on_deny():
                return self._close(CloseReason.NOT_AUTHORIZED,
                                   f"publish to {topic} not authorized", RC.NOT_AUTHORIZED)
            if qos == 1:
                self._send(Puback(p.packet_id, code if self.version == 5 else 0))
            elif qos == 2:
                if self.version == 5:
                    self._send(Pubrec(p.packet_id, code))
                else:  # 3.1.1 has no way to refuse: complete the flow, drop the message
                    session.await_rel(p.packet_id, time.monotonic())
                    self._send(Pubrec(p.packet_id))
            return
        mountpoint = zone.mountpoint
        if OVERFULL:  # left by a publish no channel waits for (a will, the API)
            OVERFULL.clear()
        msg = Message(mountpoint + topic if mountpoint else topic, payload, qos, retain, props,
                      self.client_id)
        n = self.services.publish(msg)
        # A full queue took it under backpressure (a bridge's: QoS 0 too): hold what follows.
        held = self._press() if OVERFULL else False
        if not qos:  # QoS 0: nothing to acknowledge
            return
        if n < 0:  # the store is full and the message needed it: not accepted
            if self.version != 5:  # 3.1.1 has no way to refuse a message but closing
                return self._close(CloseReason.INTERNAL_ERROR,
                                   "message refused: the store is full")
            metrics.inc(PACKETS_PUBLISH_DROPPED)
            if qos == 1:
                self._send(Puback(p.packet_id, RC.QUOTA_EXCEEDED))
            else:
                self._send(Pubrec(p.packet_id, RC.QUOTA_EXCEEDED))
            return
        if qos == 1:
            self._send(Puback(p.packet_id, 0 if n or self.version != 5 else
                              RC.NO_MATCHING_SUBSCRIBERS))
        elif qos == 2:
            session.await_rel(p.packet_id, time.monotonic())
            self._send(Pubrec(p.packet_id, 0 if n or self.version != 5 else
                              RC.NO_MATCHING_SUBSCRIBERS))
        if held and self.out:
            self._held_ack = (msg, n, p.packet_id, self.out[-1])

    def _press(self) -> bool:
        """The message just published went past some session's queue limit: its
        acknowledgement (about to be sent) and everything after it waits for room. True if
        this starts a wait."""
        own = self.session
        pressed = {s for s in OVERFULL if s is not own and not self._flow_exempt(s)}
        OVERFULL.clear()
        if not pressed:
            return False
        if self.pressure is None:
            self.pressure = pressed
            self.pressure_mark = len(self.out)
            self.metrics.inc(PUBLISHERS_HELD)
            return True
        self.pressure |= pressed
        return False

    def pressure_room(self) -> bool:
        """Whether every queue this client waits for has room again."""
        pressure = self.pressure
        if pressure is None:
            return True
        # (A loop, not all() over a generator: the flusher asks this of every held
        # publisher after every turn's writes.)
        own = self.session
        for s in pressure:
            if not s.has_room():
                # (_flow_exempt's first tests inline: a publisher's own queue is empty)
                if s is own or (own is not None and own.mqueue and self._flow_exempt(s)):
                    continue
                return False
        return True

    def _flow_exempt(self, backlog: Backlog) -> bool:
        """Flow control (``mqueue_flow_limit``) does not hold a client with deliveries of its
        own queued (its window full): reading it is what brings their PUBACKs, and two such
        clients publishing to each other would each wait for the other. Its own queue is
        never waited for at all; past a queue's hard limit (backpressure), anyone waits."""
        own = self.session
        if backlog is own:
            return True
        return (own is not None and bool(own.mqueue) and isinstance(backlog, Session)
                and not backlog.past_limit())

    def end_pressure(self, expired: bool) -> None:
        """Stop waiting; ``expired``: the wait timed out and each queue still past its limit
        is brought back to it by its fallback drop (counted as queue_full)."""
        pressure = self.pressure
        mark = self.pressure_mark
        held, self._held_ack = self._held_ack, None
        self.pressure = None
        self.pressure_mark = -1
        if pressure is None:
            return
        self.metrics.inc(PUBLISHERS_RELEASED_TIMEOUT if expired else
                         PUBLISHERS_RELEASED_CLOSED if self.closing else
                         PUBLISHERS_RELEASED_ROOM)
        if not expired:
            return
        gone = 0  # copies of the held message the fallback dropped
        for session in pressure:
            for delivery in session.trim():  # (a bridge's trims nothing)
                if held is not None and delivery[0] is held[0]:
                    gone += 1
                if isinstance(session, Session):
                    self.services.queue_dropped(session, delivery)
        if held is not None and gone >= held[1] and self.version == 5:
            self._refuse_held(held, mark)

    def _refuse_held(self, held: tuple[Message, int, int, bytes], mark: int) -> None:
        """The fallback dropped every copy of the message whose acknowledgement was held:
        that acknowledgement (not sent yet) says so, 0x97 quota exceeded, instead of success
        (docs/DURABILITY.md "Queue overflow")."""
        out = self.out
        if not 0 <= mark < len(out) or out[mark] is not held[3]:
            return  # not where it was put (never expected): leave it
        msg, _n, packet_id, _ack = held
        if msg.qos == 1:
            out[mark] = encode(Puback(packet_id, RC.QUOTA_EXCEEDED), 5)
        else:  # an error PUBREC ends the QoS 2 flow: no PUBREL will come
            out[mark] = encode(Pubrec(packet_id, RC.QUOTA_EXCEEDED), 5)
            if self.session is not None:
                self.session.release(packet_id)
        self.metrics.inc(PACKETS_PUBLISH_DROPPED)

    def _publish_hook(self, topic: str, props: Properties) -> tuple[str, int]:
        """The client.publish fold, before authorization (topic rewrite, ``$delayed/``):
        the topic to go on with, and 0 or the reason code that refuses the PUBLISH."""
        result = self.hooks.run_fold("client.publish",
                                     (self._clientinfo or self.clientinfo, props), topic)
        if isinstance(result, int):
            return topic, result if result >= 0x80 else RC.UNSPECIFIED_ERROR
        if not isinstance(result, str) or not result or "+" in result or "#" in result \
                or "\0" in result:
            log.warning("a client.publish callback gave %r for %s: not a topic name",
                        result, topic)
            return topic, RC.TOPIC_NAME_INVALID
        return result, 0

    def _check_publish(self, topic: str, props: Properties, payload: bytes,
                       dollar: bool = True) -> int:
        """0 if the client may publish this, else the reason code to refuse it with
        (``_DOLLAR``: a $-topic the client.publish.dollar chain takes over)."""
        if topic[:1] == "$":  # a slice, not a method call: this runs for every message
            if topic.startswith("$SYS") or topic.startswith("$share/") or \
                    topic.startswith("$queue/"):
                return RC.NOT_AUTHORIZED
            if dollar and self.hooks.client_publish_dollar:
                return _DOLLAR  # here, not on client.publish: other topics pay nothing
        max_levels = self.zone.max_topic_levels
        if max_levels and topic.count("/") >= max_levels:
            return RC.TOPIC_NAME_INVALID
        if props and props.get("payload_format_indicator") == 1:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return RC.PAYLOAD_FORMAT_INVALID
        # Every PUBLISH comes here: the cached view, not the property call, once it exists.
        return self.services.check_acl(self._clientinfo or self.clientinfo, "publish", topic)

    def _publish_dollar(self, p: Publish, topic: str, props: Properties) -> int:
        """A PUBLISH to a $-topic while client.publish.dollar has callbacks (delayed
        publish): checked as any other, then the chain may refuse it, take it (acknowledged
        as reaching nobody) or let it be published. Returns 0 once acknowledged, else the
        reason code to refuse it with."""
        code = self._check_publish(topic, props, p.payload, False)
        if code:
            return code
        qos = p.qos
        mountpoint = self.zone.mountpoint
        msg = Message(mountpoint + topic if mountpoint else topic, p.payload, qos, p.retain,
                      props, self.client_id)
        result = self.hooks.run_fold("client.publish.dollar",
                                     (self._clientinfo or self.clientinfo,), msg)
        if isinstance(result, int):
            return result if result >= 0x80 else RC.UNSPECIFIED_ERROR
        n = 0
        if isinstance(result, Message):
            if qos and OVERFULL:
                OVERFULL.clear()
            n = self.services.publish(result)
            if qos and OVERFULL:
                self._press()
        elif result is not None:
            log.warning("a client.publish.dollar callback gave %r for %s: not a message",
                        result, topic)
            return RC.UNSPECIFIED_ERROR
        if not qos:
            return 0
        if n < 0:  # the store is full and the message needed it
            if self.version != 5:
                self._close(CloseReason.INTERNAL_ERROR, "message refused: the store is full")
                return 0
            self.metrics.inc(PACKETS_PUBLISH_DROPPED)
            self._send(Puback(p.packet_id, RC.QUOTA_EXCEEDED) if qos == 1
                       else Pubrec(p.packet_id, RC.QUOTA_EXCEEDED))
            return 0
        reason = 0 if n or self.version != 5 else RC.NO_MATCHING_SUBSCRIBERS
        if qos == 1:
            self._send(Puback(p.packet_id, reason))
        else:
            session = self.session
            assert session is not None
            session.await_rel(p.packet_id, time.monotonic())
            self._send(Pubrec(p.packet_id, reason))
        return 0

    def _in_pubrel(self, p: Pubrel) -> None:
        session = self.session
        assert session is not None
        if session.release(p.packet_id):
            self._send(Pubcomp(p.packet_id))
        else:
            self.metrics.inc(PACKETS_PUBREL_MISSED)
            self._send(Pubcomp(p.packet_id, RC.PACKET_IDENTIFIER_NOT_FOUND
                               if self.version == 5 else 0))

    # --- acknowledgements of our deliveries ---------------------------------------------

    def _in_puback(self, p: Puback) -> None:
        session = self.session
        assert session is not None
        entry = session.ack(p.packet_id, 1)
        if entry is _MISMATCH:
            self.metrics.inc(PACKETS_PUBACK_INUSE)
            return self._close(_PROTO, "PUBACK for a QoS 2 message", RC.PROTOCOL_ERROR)
        if entry is _UNKNOWN:
            self.metrics.inc(PACKETS_PUBACK_MISSED)
            return
        self.services.acked(self._clientinfo or self.clientinfo, entry[0])
        sent_at = session.sent_at
        if sent_at is not None:  # timed (delivery.slow): 0.0 if it was not
            sent = sent_at.pop(p.packet_id, 0.0)
            if time.monotonic() - sent >= self.hooks.slow_threshold:
                self._completed(session, entry[0], sent)
        self.drain()

    def _in_pubrec(self, p: Pubrec) -> None:
        session = self.session
        assert session is not None
        entry = session.ack(p.packet_id, 2)
        if entry is _MISMATCH:
            self.metrics.inc(PACKETS_PUBREC_INUSE)
            if session.inflight[p.packet_id][1] == 2:
                # PUBREC again (a 3.1.1 client retransmitting): our PUBREL was lost or
                # crossed it; repeating PUBREL is harmless, closing would not be.
                self._send(Pubrel(p.packet_id))
                return
            return self._close(_PROTO, "PUBREC for a QoS 1 message", RC.PROTOCOL_ERROR)
        if entry is _UNKNOWN:
            self.metrics.inc(PACKETS_PUBREC_MISSED)
            self._send(Pubrel(p.packet_id, RC.PACKET_IDENTIFIER_NOT_FOUND
                              if self.version == 5 else 0))
            return
        if p.reason_code >= 0x80:
            # The receiver refused the message: the flow ends here [MQTT-4.3.3].
            session.drop_inflight(p.packet_id)
            self.drain()
            return
        session.released(p.packet_id)
        self._send(Pubrel(p.packet_id))

    def _in_pubcomp(self, p: Pubcomp) -> None:
        session = self.session
        assert session is not None
        entry = session.complete(p.packet_id)
        if entry is _MISMATCH:
            self.metrics.inc(PACKETS_PUBCOMP_INUSE)
            return self._close(_PROTO, "PUBCOMP before PUBREL", RC.PROTOCOL_ERROR)
        if entry is _UNKNOWN:
            self.metrics.inc(PACKETS_PUBCOMP_MISSED)
            return
        self.services.acked(self._clientinfo or self.clientinfo, entry[0])
        sent_at = session.sent_at
        if sent_at is not None:  # timed (delivery.slow): 0.0 if it was not
            sent = sent_at.pop(p.packet_id, 0.0)
            if time.monotonic() - sent >= self.hooks.slow_threshold:
                self._completed(session, entry[0], sent)
        self.drain()

    @staticmethod
    def _timed(session: Session, packet_id: int) -> None:
        """Note when a QoS 1/2 PUBLISH is sent (delivery.slow has a callback)."""
        sent_at = session.sent_at
        if sent_at is None:
            sent_at = session.sent_at = {}
        sent_at[packet_id] = time.monotonic()

    def _completed(self, session: Session, msg: Message, sent: float) -> None:
        """A timed delivery's PUBACK / PUBCOMP came ``Hooks.slow_threshold`` or more after
        it was sent (``sent`` 0.0: it was not timed): delivery.slow. Once the hook point has
        no callback the session's timing stops."""
        hooks = self.hooks
        if not hooks.delivery_slow:
            session.sent_at = None
            return
        if sent:
            latency = time.monotonic() - sent
            hooks.run("delivery.slow", self._clientinfo or self.clientinfo, msg, latency)

    # --- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------------

    def _in_subscribe(self, p: Subscribe) -> None:
        if p.rest:
            # A huge SUBSCRIBE: its filters are decoded a slice per loop turn, and applied
            # only once all are (a bad one closes the connection with nothing applied).
            # What the client sends meanwhile waits, as for a sliced SUBSCRIBE.
            if self._held is None:
                self._held = []
                self._held_bytes = 0
            self.services.timers.call_later(0, self._decode_subscribe, p, 0)
            return
        self._apply_subscribe(p)

    def _decode_subscribe(self, p: Subscribe, pos: int) -> None:
        if self.closing or self.session is None:
            return
        try:
            topics, pos = decode_filters(p.rest, pos, self.version, SUBSCRIBE_SLICE)
        except PacketError as err:  # what the parser would have said of the whole packet
            self._close(CloseReason.FRAME_ERROR, err.message, err.reason_code)
            if self.wakeup is not None:
                self.wakeup()
            return
        p.topics += topics
        if pos < len(p.rest):
            self.services.timers.call_later(0, self._decode_subscribe, p, pos)
            return
        p.rest = b""
        self._apply_subscribe(p, True)

    def _apply_subscribe(self, p: Subscribe, decoded: bool = False) -> None:
        session = self.session
        assert session is not None
        subids = p.properties.get("subscription_identifier")
        self.metrics.inc(CLIENT_SUBSCRIBE)
        # A client.subscribe callback may put a reason code in place of a filter's options.
        topics: list[tuple[str, SubOpts | int]] = list(p.topics)
        hooks = self.hooks
        if hooks.client_subscribe:
            topics = hooks.run_fold("client.subscribe", (self.clientinfo, p.properties),
                                    topics)
        work = _SubscribeWork(p.packet_id, topics, subids[0] if subids else 0)
        if len(topics) <= SUBSCRIBE_SLICE and not decoded:
            if self._subscribe_some(work, len(topics)):
                self._finish_subscribe(work)
            return
        # Too many for one loop turn: a slice now, the rest on later turns; what the client
        # sends meanwhile waits (handle_in) until the SUBACK is out.
        if self._held is None:
            self._held = []
            self._held_bytes = 0
        self._subscribe_slice(work)

    def _subscribe_slice(self, work: _SubscribeWork) -> None:
        if self.closing or self.session is None:
            return  # the connection ended (or was taken over) meanwhile
        end = min(work.pos + SUBSCRIBE_SLICE, len(work.topics))
        if not self._subscribe_some(work, end):
            return
        if end < len(work.topics):
            self.services.timers.call_later(0, self._subscribe_slice, work)
            return
        self._finish_subscribe(work)
        gate = self.gate
        if gate is not None and self.out and self._stored_pending(gate):
            self._hold(gate)  # the SUBACK waits for the subscriptions to be stored
        held, self._held = self._held or [], None
        self._held_bytes = 0
        for packet in held:  # a sliced SUBSCRIBE among them holds the rest again
            if self.closing:
                break
            self.handle_in(packet)
        if (self.out or self.closing) and self.wakeup is not None:
            self.wakeup()

    def _subscribe_some(self, work: _SubscribeWork, end: int) -> bool:
        """Apply ``work``'s filters up to ``end``; False when one refused closed the
        connection (deny_action = "disconnect")."""
        zone = self.zone
        session = self.session
        assert session is not None
        v5 = self.version == 5
        subid = work.subid
        codes = work.codes
        retained = work.retained
        added = work.added
        topics = work.topics
        for i in range(work.pos, end):
            topic_filter, opts = topics[i]
            if isinstance(opts, int):  # a client.subscribe callback refused this filter
                code = opts if opts >= 0x80 else RC.UNSPECIFIED_ERROR
            else:
                code = self._check_subscribe(topic_filter, session)
            if code:
                work.failed = True
                if code == RC.NOT_AUTHORIZED:
                    work.denied = True
                    if self.services.disconnect_on_deny():
                        self._refuse_subscribe(topic_filter, added)
                        return False
                codes.append(code if v5 else 0x80)
                continue
            assert isinstance(opts, SubOpts)  # only a refusal (code above) is an int
            qos = opts.qos if opts.qos <= zone.max_qos_allowed else zone.max_qos_allowed
            if qos != opts.qos or (not v5 and zone.ignore_loop_deliver):
                opts = SubOpts(qos, opts.no_local or (not v5 and zone.ignore_loop_deliver),
                               opts.retain_as_published, opts.retain_handling)
            if zone.mountpoint:
                topic_filter = _mount(zone.mountpoint, topic_filter)
            is_new = self.services.subscribe(session, topic_filter, opts, subid)
            if is_new:
                added.append(topic_filter)
            codes.append(qos)
            if opts.retain_handling == 0 or (opts.retain_handling == 1 and is_new):
                # Looked up here, a slice at a time (100,000 lookups at the SUBACK were
                # ~40 ms in one turn); sent after the SUBACK.
                found = self._retained_for(topic_filter)
                if found:
                    retained.append((found, opts, subid))
        work.pos = end
        return True

    def _finish_subscribe(self, work: _SubscribeWork) -> None:
        if work.failed:
            metrics = self.metrics
            metrics.inc(PACKETS_SUBSCRIBE_ERROR)
            if work.denied:
                metrics.inc(PACKETS_SUBSCRIBE_AUTH_ERROR)
        self._send(Suback(work.packet_id, work.codes))
        rgate = self.services.remote_gate
        if rgate is not None and rgate.routes in rgate.waiting:
            self._hold_for_routes(rgate.routes)
        for found, opts, sid in work.retained:
            self._send_retained(found, opts, sid)

    def _refuse_subscribe(self, topic_filter: str, added: list[str]) -> None:
        """deny_action = "disconnect" and ``topic_filter`` was refused: take back what this
        SUBSCRIBE added, count the refusal, close (MQTT 5: DISCONNECT 0x87)."""
        session = self.session
        assert session is not None
        for taken in added:
            self.services.unsubscribe(session, taken)
        metrics = self.metrics
        metrics.inc(PACKETS_SUBSCRIBE_ERROR)
        metrics.inc(PACKETS_SUBSCRIBE_AUTH_ERROR)
        self._close(CloseReason.NOT_AUTHORIZED, f"subscription to {topic_filter} not "
                    "authorized", RC.NOT_AUTHORIZED)

    def _check_subscribe(self, topic_filter: str, session: Session) -> int:
        zone = self.zone
        if filter_error(topic_filter):
            return RC.TOPIC_FILTER_INVALID
        share = parse_shared(topic_filter)
        real = topic_filter
        if share is not None:
            if not zone.shared_subscription:
                return RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
            real = share[1]
        if is_wildcard(real) and not zone.wildcard_subscription:
            return RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
        if zone.max_topic_levels and real.count("/") >= zone.max_topic_levels:
            return RC.TOPIC_FILTER_INVALID
        deny = zone.deny_subscribe
        if deny and (topic_filter in deny or real in deny
                     or any(is_wildcard(d) and topic_match(d, real) for d in deny)):
            # A listed filter, or one a listed wildcard covers: "a/#" refuses "a/b/+" too.
            return RC.UNSPECIFIED_ERROR
        if (zone.max_subscriptions and topic_filter not in session.subscriptions
                and len(session.subscriptions) >= zone.max_subscriptions):
            return RC.QUOTA_EXCEEDED
        return self.services.check_acl(self.clientinfo, "subscribe", topic_filter)

    def _retained_for(self, topic_filter: str) -> list[Message]:
        if parse_shared(topic_filter) is not None:
            return []  # retained messages are not sent for shared subscriptions
        return self.services.retained(topic_filter)

    def _send_retained(self, found: list[Message], opts: SubOpts, subid: int) -> None:
        upgrade = self.zone.upgrade_qos
        for msg in found:
            qos = opts.qos if opts.qos < msg.qos or upgrade else msg.qos
            self.deliver((msg, qos, True, (subid,) if subid else (), None), None)

    def _in_unsubscribe(self, p: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        codes = []
        self.metrics.inc(CLIENT_UNSUBSCRIBE)
        topics = p.topics
        hooks = self.hooks
        if hooks.client_unsubscribe:
            topics = hooks.run_fold("client.unsubscribe", (self.clientinfo, p.properties),
                                    list(topics))
        for topic_filter in topics:
            if self.zone.mountpoint:
                topic_filter = _mount(self.zone.mountpoint, topic_filter)
            found = self.services.unsubscribe(session, topic_filter)
            codes.append(0 if found else RC.NO_SUBSCRIPTION_EXISTED)
        if len(codes) != codes.count(0):
            self.metrics.inc(PACKETS_UNSUBSCRIBE_ERROR)
        self._send(Unsuback(p.packet_id, codes if self.version == 5 else []))

    # --- DISCONNECT ------------------------------------------------------------------

    def _in_disconnect(self, p: Disconnect) -> None:
        session = self.session
        assert session is not None
        if self.version == 5:
            expiry = p.properties.get("session_expiry_interval")
            if expiry is not None:
                if session.expiry_interval == 0 and expiry != 0:
                    return self._close(_PROTO, "session expiry set after 0", RC.PROTOCOL_ERROR)
                session.expiry_interval = min(expiry, self.zone.max_session_expiry_interval)
        if p.reason_code == RC.SUCCESS:
            # Only a normal disconnection (0x00) deletes the will [MQTT-3.1.2-8]; 0x04 asks
            # for it explicitly and any error code leaves it to be published.
            self.will = None
        self._close(CloseReason.NORMAL, "client disconnected")
        rare = self._rare  # (Rare normal_disconnect written in the dict: no descriptor call)
        if rare is None:
            self._rare = {"normal_disconnect": True}
        else:
            rare["normal_disconnect"] = True

    # --- delivery to this client -------------------------------------------------------

    def deliver(self, delivery: Delivery, encoded: EncodedCache | None) -> bool | None:
        """Send (or queue) one delivery from the broker to this client; False when
        authorization refuses it (dropped and counted here).

        ``encoded`` is the broker's per-publish cache of QoS 0 bytes shared by every
        subscriber, or None (retained messages). The message.delivered hook runs here for
        every delivery; the shared bytes are used unless a callback changed the message.
        """
        if self.closing:
            self._enqueue(delivery)
            return None
        check = self.acl_deliver
        if check is not None:  # inline: a call more costs ~60 ns on every delivery
            msg = delivery[0]
            topic = msg.topic
            if self.mountpoint and topic.startswith(self.mountpoint):
                topic = topic[len(self.mountpoint):]
            if check(self._clientinfo or self.clientinfo, "deliver", topic):
                self._not_authorized(msg)
                return False
        out = self.out
        was_empty = not out
        if out is NO_OUT:  # (a delivery nearly always adds a packet)
            out = self.out = []
        session = self.session
        assert session is not None
        if self.hooks.message_delivered:
            msg = self.hooks.run_fold("message.delivered", (self._clientinfo or self.clientinfo,),
                                      delivery[0])
            if msg is not delivery[0]:  # a callback changed the message: not the shared bytes
                delivery = (msg, delivery[1], delivery[2], delivery[3], delivery[4])
                encoded = None
        qos = delivery[1]
        if qos == 0:
            if self.paused:  # a slow consumer loses QoS 0, never QoS 1/2
                self.dropped += 1
                self._drop(DELIVERY_DROPPED_QOS0_MSG, "qos0_msg", delivery[0])
                return None
            msg = delivery[0]
            if (encoded is not None and not delivery[3] and not msg.expiry
                    and not self.alias_out_max and self.tracer is None
                    and not self.mountpoint):
                # Identical bytes for every QoS 0 subscriber of this form: encode once.
                retain = delivery[2]
                key = (self.version == 5, retain)
                data = encoded.get(key)
                if data is None:
                    # Straight from the message's fields: no Publish object per message.
                    data = encoded[key] = encode_publish(
                        msg.topic, msg.payload, 0, retain, False, 0, msg.properties,
                        self.version)
                if self.client_max_packet and len(data) > self.client_max_packet:
                    self.dropped += 1
                    self._drop(DELIVERY_DROPPED_TOO_LARGE, "too_large", msg)
                    return None
                out.append(data)
                self.send_pkt += 1
                self.send_msg += 1
                self.metrics.inc(MESSAGES_QOS0_SENT)
            else:
                pub = session.build_publish(delivery, 0, time.monotonic())
                if pub is None:
                    self._drop(DELIVERY_DROPPED_EXPIRED, "expired", msg)
                    return None
                self._send_publish(pub, msg)
        elif self.paused or not session.window_open():
            self._enqueue(delivery)
            return None
        else:
            pub = session.build_publish(delivery, 0, time.monotonic())
            if pub is None:
                self._drop(DELIVERY_DROPPED_EXPIRED, "expired", delivery[0])
                return None
            pub.packet_id = session.start_inflight(delivery)
            if self.hooks.delivery_slow:  # timed for slow_subs (see _completed); inline
                sent_at = session.sent_at
                if sent_at is None:
                    sent_at = session.sent_at = {}
                sent_at[pub.packet_id] = time.monotonic()
            self._send_publish(pub, delivery[0])
            if qos == 2 and session.store is not None:
                self._hold_qos2()
        if was_empty and out and self.wakeup is not None:
            self.wakeup()
        return None

    def _may_receive(self, msg: Message) -> bool:
        """Authorization of one delivery (the ``deliver`` action, on the topic as this client
        sees it: without its zone's mountpoint); a refused one is dropped and counted.
        (``deliver`` has the same lines inline.)"""
        check = self.acl_deliver
        assert check is not None
        topic = msg.topic
        mountpoint = self.mountpoint
        if mountpoint and topic.startswith(mountpoint):
            topic = topic[len(mountpoint):]
        if not check(self._clientinfo or self.clientinfo, "deliver", topic):
            return True
        self._not_authorized(msg)
        return False

    def _not_authorized(self, msg: Message) -> None:
        self.dropped += 1
        self._drop(DELIVERY_DROPPED_NOT_AUTHORIZED, "not_authorized", msg)

    def _send_publish(self, pub: Publish, msg: Message) -> None:
        mountpoint = self.mountpoint
        if mountpoint and pub.topic.startswith(mountpoint):
            # The zone's clients see their topics without the prefix they were mounted on.
            pub.topic = pub.topic[len(mountpoint):]
        new_alias = None
        if self.alias_out_max and self.version == 5:
            aliases = self.aliases
            alias = aliases.outbound.get(pub.topic)
            if alias is not None:
                pub.properties = dict(pub.properties, topic_alias=alias)
                pub.topic = ""
            elif len(aliases.outbound) < self.alias_out_max:
                if aliases.outbound is NO_MAP:
                    if aliases is _NO_ALIASES:
                        aliases = self.aliases = _Aliases()
                    aliases.outbound = {}
                new_alias = pub.topic
                alias = aliases.outbound[new_alias] = len(aliases.outbound) + 1
                pub.properties = dict(pub.properties, topic_alias=alias)
        before = len(self.out)
        self._send(pub)
        if len(self.out) > before:
            self.send_msg += 1
            self.metrics.inc(_QOS_SENT[pub.qos])
            return
        self._drop(DELIVERY_DROPPED_TOO_LARGE, "too_large", msg)
        if new_alias is not None:
            # The client never saw this mapping: using it later would be a protocol error.
            del self.aliases.outbound[new_alias]
        if pub.qos:
            # Too large for the client: behave as if it was delivered [MQTT-3.1.2-25].
            assert self.session is not None
            self.session.drop_inflight(pub.packet_id)

    def drain(self) -> None:
        """Move queued deliveries into the inflight window while it has room."""
        session = self.session
        if session is None or self.paused or self.closing:
            return
        mq = session.mqueue
        now = time.monotonic()
        was_empty = not self.out
        check = self.acl_deliver
        while mq and session.window_open():
            delivery = mq.popleft()
            if check is not None and not self._may_receive(delivery[0]):
                session.forget(delivery)
                continue
            pub = session.build_publish(delivery, 0, now)
            if pub is None:
                session.forget(delivery)
                self._drop(DELIVERY_DROPPED_EXPIRED, "expired", delivery[0])
                continue
            if delivery[1]:
                pub.packet_id = session.start_inflight(delivery)
                if self.hooks.delivery_slow:
                    self._timed(session, pub.packet_id)
            self._send_publish(pub, delivery[0])
            if delivery[1] == 2 and session.store is not None:
                self._hold_qos2()
        if was_empty and self.out and self.wakeup is not None:
            self.wakeup()

    def set_paused(self, paused: bool) -> None:
        """The socket's write buffer crossed its high (True) or low (False) watermark."""
        self.paused = paused
        if not paused:
            self.drain()

    def _auth_expired(self) -> None:
        """The client's proof (its token) has expired: disconnect it (MQTT 5: 0x87), as
        EMQX's JWT authenticator does with ``disconnect_after_expire``."""
        self._auth_timer = None
        if not self.closing:
            log.info("client %s: its token expired: disconnecting it", self.client_id)
            self.kick(RC.NOT_AUTHORIZED, CloseReason.NOT_AUTHORIZED, "token expired")

    def kick(self, code: int, reason: CloseReason, detail: str) -> None:
        """Close this client from the server side (takeover, admin kick, shutdown)."""
        self._close(reason, detail, code)
        if self.wakeup is not None:
            self.wakeup()


def _mount(mountpoint: str, topic_filter: str) -> str:
    share = parse_shared(topic_filter)
    if share is None:
        return mountpoint + topic_filter
    group, real = share
    return ("$share/%s/" % group if group is not None else "$queue/") + mountpoint + real


class _Exchange:
    """An enhanced authentication exchange under way: the CONNECT's (with what its CONNACK
    needs) or a re-authentication (``connect`` None)."""

    __slots__ = ("exchange", "connect", "props", "assigned", "rounds")

    def __init__(self, exchange: EnhancedAuth, connect: Connect | None = None,
                 props: Properties | None = None, assigned: str | None = None) -> None:
        self.exchange = exchange
        self.connect = connect
        self.props: Properties = props if props is not None else {}
        self.assigned = assigned
        self.rounds = 0

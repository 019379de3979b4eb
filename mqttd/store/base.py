"""What every store backend is: the write operations, what a restore reads, the Protocol.

The broker core never talks to a backend. It tells the store's journal
(``store/journal.py``) what changed; the journal turns that into *operations*
(plain tuples, below), batches them, and hands each batch to one writer thread,
which applies it with :meth:`Backend.write` as one transaction. At start,
:meth:`Backend.open` reads everything back as a :class:`Restored`.

Operations are tuples whose first item is an op code. Messages travel as their
MQTT 5 PUBLISH packet (``encode_publish(topic, payload, qos, retain, False,
1 if qos else 0, properties, 5)``), so that topic, payload, QoS, retain flag and
every property are kept by the codec the broker already trusts, and read back
by its parser. Times are wall-clock (``time.time()``) seconds; 0 means "none".

Every backend passes the one suite in ``tests/test_store_backends.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "APPLIED", "BAN_DEL", "BAN_PUT", "KV_DEL", "KV_DELS", "KV_PUT", "MSG_DEL", "MSG_PUT", "Q_DEL",
    "Q_PID", "Q_PUT", "Q_REL", "REL_DEL", "REL_PUT",
    "RET_CLEAR", "RET_DEL", "RET_PUT", "SCHEMA_VERSION", "SESSION_DEL", "SESSION_PUT", "SUB_DEL",
    "SUB_PUT", "USER_DEL", "USER_PUT", "Backend", "Op", "QueueRow", "Restored", "SessionRow",
    "StoreError", "StoreFull", "StoredMessage",
]

#: The schema this code writes; a file with a higher ``PRAGMA user_version`` is refused.
SCHEMA_VERSION = 1

# --- operations (first item of each op tuple) -------------------------------------------------

#: (SESSION_PUT, client_id, expiry_interval, created_at, disconnected_at, will, will_delay,
#:  zone) — ``zone``: the name of the zone the client connected through (its queue limits).
#: Insert or replace the session row (its subscriptions, queue and awaiting-PUBREL ids stay).
#: ``disconnected_at`` 0: connected when written.
#: ``will``: the will's PUBLISH packet (bytes) or None.
SESSION_PUT = 1
#: (SESSION_DEL, client_id) — the session and everything of it: subscriptions, queue rows,
#: awaiting-PUBREL ids. (Messages only it referenced are deleted by MSG_DEL ops of their own.)
SESSION_DEL = 2
#: (SUB_PUT, client_id, topic_filter, options, subscription_id) — insert or replace.
#: ``options`` is the SUBSCRIBE options byte: qos | no_local << 2 | rap << 3 | rh << 4;
#: ``subscription_id`` 0: none.
SUB_PUT = 3
#: (SUB_DEL, client_id, topic_filter)
SUB_DEL = 4
#: (MSG_PUT, msg_id, packet, sender, timestamp, expiry_at) — a message stored once, however
#: many queue rows reference it. ``sender`` may be None; ``expiry_at`` 0: never expires.
MSG_PUT = 5
#: (MSG_DEL, msg_id)
MSG_DEL = 6
#: (Q_PUT, client_id, qseq, msg_id, qos, retain, subids, share, packet_id)
#: A delivery in a session's queue. ``qseq`` orders a session's rows (ascending, unique per
#: session); ``subids`` is a tuple of ints; ``share`` the shared subscription's
#: ``$share/group/filter`` or None; ``packet_id`` 0 while queued, else in flight under it.
#: Over an existing qseq it replaces the row (``released`` false again).
#: Inline form, 13 items: the same followed by (packet, sender, timestamp, expiry_at): the
#: message is kept in the queue row itself, with no msgs row (the journal does this for a
#: message only one session holds, which saves an insert and a delete per message).
Q_PUT = 7
#: (Q_PID, client_id, qseq, packet_id) — the queued delivery went in flight under packet_id.
Q_PID = 8
#: (Q_REL, client_id, qseq) — its PUBREC came: it now waits for PUBCOMP (PUBREL sent).
Q_REL = 9
#: (Q_DEL, client_id, qseq) — acknowledged, dropped or expired.
Q_DEL = 10
#: (REL_PUT, client_id, packet_id, received_at) — an incoming QoS 2 packet id awaiting PUBREL.
REL_PUT = 11
#: (REL_DEL, client_id, packet_id)
REL_DEL = 12
#: (RET_PUT, topic, packet, sender, timestamp, expiry_at) — insert or replace.
RET_PUT = 13
#: (RET_DEL, topic)
RET_DEL = 14
#: (RET_CLEAR,) — every retained message.
RET_CLEAR = 15
#: (APPLIED, segment) — the operation log is in the store up to log segment ``segment``
#: (``store/oplog.py``): the last op of each application.
APPLIED = 16
#: (USER_PUT, username, password_hash, superuser) — a user of the built-in user table
#: (``access/users.py``), its password as mosquitto's ``$7$`` hash text; insert or replace.
USER_PUT = 17
#: (USER_DEL, username)
USER_DEL = 18
#: (BAN_PUT, kind, who, by, reason, at, until) — a ban of the banned table
#: (``access/banned.py``): ``kind`` clientid, username or peerhost, ``who`` normalized,
#: ``until`` 0: for good; insert or replace.
BAN_PUT = 19
#: (BAN_DEL, kind, who)
BAN_DEL = 20
#: (KV_PUT, space, key, value) — a record of a module's own (``store/kv.py``: delayed
#: messages, a bridge's queue): ``space`` names its owner, ``value`` is bytes it encoded;
#: insert or replace.
KV_PUT = 21
#: (KV_DEL, space, key)
KV_DEL = 22
#: (KV_DELS, space, keys) — KV_DEL of each key of the tuple ``keys``: what a loop turn
#: deletes of one space in one operation of the log (a bridge's acknowledged messages).
#: Only the log holds it: ``coalesce`` gives the backend KV_DELs.
KV_DELS = 23

Op = tuple[object, ...]


# --- what a restore reads -----------------------------------------------------------------------

@dataclass(slots=True)
class StoredMessage:
    packet: bytes
    sender: str | None
    timestamp: float
    expiry_at: float


@dataclass(slots=True)
class QueueRow:
    qseq: int
    msg_id: int
    qos: int
    retain: bool
    subids: tuple[int, ...]
    share: str | None
    packet_id: int
    #: PUBREC came (Q_REL): waiting for PUBCOMP.
    released: bool
    #: The message itself when the row keeps it inline (``msg_id`` is then not in
    #: ``Restored.messages``).
    message: StoredMessage | None = None


@dataclass(slots=True)
class SessionRow:
    client_id: str
    expiry_interval: int
    created_at: float
    disconnected_at: float
    will: bytes | None
    will_delay: int
    zone: str = "default"
    #: (topic_filter, options byte, subscription id), in no particular order.
    subscriptions: list[tuple[str, int, int]] = field(default_factory=list)
    #: Ascending qseq.
    queue: list[QueueRow] = field(default_factory=list)
    #: packet id -> received_at
    awaiting_rel: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class Restored:
    """Everything read back. Rows nothing can use are left out: a queue row whose message
    is missing, and subscriptions, queue rows and awaiting-PUBREL ids of a client with no
    session row."""

    sessions: list[SessionRow] = field(default_factory=list)
    #: msg_id -> message (only messages some queue row references)
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    #: topic -> message
    retained: dict[str, StoredMessage] = field(default_factory=dict)
    #: Ids of stored messages no queue row references (their last reference went while the
    #: message was also kept inline in a row): the journal deletes them.
    orphans: list[int] = field(default_factory=list)
    #: The built-in user table: username -> (password hash text, superuser).
    users: dict[str, tuple[str, bool]] = field(default_factory=dict)
    #: The banned table: (kind, who, by, reason, at, until) rows, until 0 for good.
    banned: list[tuple[str, str, str, str, float, float]] = field(default_factory=list)
    #: Modules' records (KV_PUT): space -> key -> value.
    kv: dict[str, dict[str, bytes]] = field(default_factory=dict)
    #: The operation log's segment the store holds everything up to (APPLIED).
    applied_seq: int = 0
    #: Highest msg_id still stored, in msgs or in a queue row (0 if none): new ids start
    #: above it. (Ids of messages
    #: deleted before a restart may be used again: no row references them any more.)
    last_msg_id: int = 0


class StoreError(Exception):
    """The store cannot be used: unreadable, corrupt, truncated, a newer schema, ...

    ``str()`` is one line naming the file and the problem (the start refuses with it)."""


class StoreFull(StoreError):
    """A write did not fit (disk full, or the store's size limit): the transaction was
    rolled back and may be tried again later."""


class Backend(Protocol):
    """A place sessions and messages are kept. Called from one thread at a time: ``open``
    before the writer starts; ``write``, ``status`` and ``compact`` on the writer thread."""

    #: Where it keeps its data, for log lines and ``ctl store status`` ("" in memory).
    path: str

    def open(self) -> Restored:
        """Open (creating if need be) and read everything back. Raises StoreError."""
        ...

    def reload(self) -> Restored:
        """Read everything back again (after the operation log was replayed into it)."""
        ...

    def write(self, ops: list[Op]) -> None:
        """Apply ``ops`` in order as one transaction, durable when this returns (as far as
        the backend's durability setting goes). Raises StoreFull (rolled back: nothing of
        the batch was applied) or StoreError."""
        ...

    def status(self) -> dict[str, object]:
        """{"path", "size" (bytes, including the WAL), "rows": {table: count}, ...}"""
        ...

    def compact(self) -> dict[str, object]:
        """Give free space back (checkpoint, vacuum); returns {"before", "after", "seconds"}."""
        ...

    def close(self) -> None:
        ...

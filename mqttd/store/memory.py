"""The in-memory backend: the reference semantics of every op, in dicts (for tests).

A :class:`MemoryState` outlives its backends: a new ``MemoryBackend(state)`` is what
reopening a file is for the SQLite backend. A write is all or nothing like a transaction:
every change is logged with the value it replaced and undone, newest first, if an op fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .base import (
    APPLIED,
    BAN_DEL,
    BAN_PUT,
    KV_DEL,
    KV_PUT,
    MSG_DEL,
    MSG_PUT,
    Q_DEL,
    Q_PID,
    Q_PUT,
    Q_REL,
    REL_DEL,
    REL_PUT,
    RET_CLEAR,
    RET_DEL,
    RET_PUT,
    SCHEMA_VERSION,
    SESSION_DEL,
    SESSION_PUT,
    SUB_DEL,
    SUB_PUT,
    USER_DEL,
    USER_PUT,
    Op,
    QueueRow,
    Restored,
    SessionRow,
    StoredMessage,
    StoreError,
)

if TYPE_CHECKING:
    from .base import Backend

__all__ = ["MemoryBackend", "MemoryState"]

#: (expiry_interval, created_at, disconnected_at, will, will_delay)
_Session = tuple[int, float, float, "bytes | None", int, str]
#: (packet, sender, timestamp, expiry_at)
_Message = tuple[bytes, "str | None", float, float]
#: (msg_id, qos, retain, subids, share, packet_id, released)
_Queued = tuple[int, int, bool, tuple[int, ...], "str | None", int, bool, "_Message | None"]


@dataclass
class MemoryState:
    """What a store holds, table by table (the SQLite schema's tables, keyed the same way)."""

    sessions: dict[str, _Session] = field(default_factory=dict)
    #: client_id -> topic_filter -> (options, subscription id)
    subs: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    msgs: dict[int, _Message] = field(default_factory=dict)
    #: client_id -> qseq -> row
    queue: dict[str, dict[int, _Queued]] = field(default_factory=dict)
    #: client_id -> packet id -> received_at
    rel: dict[str, dict[int, float]] = field(default_factory=dict)
    retained: dict[str, _Message] = field(default_factory=dict)
    #: username -> (password hash text, superuser)
    users: dict[str, tuple[str, bool]] = field(default_factory=dict)
    #: (kind, who) -> (by, reason, at, until)
    banned: dict[tuple[str, str], tuple[str, str, float, float]] = field(default_factory=dict)
    #: (space, key) -> value
    kv: dict[tuple[str, str], bytes] = field(default_factory=dict)
    #: APPLIED's sequence number.
    applied: list[int] = field(default_factory=lambda: [0])


# Typed readers of op fields: what the SQLite schema's types and NOT NULLs let through, so a
# malformed op fails here as it would there (times may be given as int; stored as float).

def _int(value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"expected an int, got {value!r}")
    return int(value)


def _float(value: object) -> float:
    if not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a str, got {value!r}")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _bytes(value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {value!r}")
    return bytes(value)


def _opt_bytes(value: object) -> bytes | None:
    return None if value is None else _bytes(value)


def _subids(value: object) -> tuple[int, ...]:
    if not isinstance(value, tuple):
        raise TypeError(f"expected a tuple of ints, got {value!r}")
    return tuple(_int(v) for v in value)


def _message(op: Op) -> _Message:
    return (_bytes(op[2]), _opt_str(op[3]), _float(op[4]), _float(op[5]))


_MISSING: Any = object()


class MemoryBackend:
    """The Backend Protocol in dicts; path ""."""

    path = ""

    def __init__(self, state: MemoryState | None = None) -> None:
        self.state = state if state is not None else MemoryState()
        self._open = False
        self._undo: list[tuple[dict[Any, Any], object, object]] = []
        s = self.state
        self._apply: dict[object, Callable[[Op], None]] = {
            SESSION_PUT: lambda op: self._set(s.sessions, _str(op[1]), (
                _int(op[2]), _float(op[3]), _float(op[4]), _opt_bytes(op[5]), _int(op[6]),
                _str(op[7]))),
            SESSION_DEL: self._session_del,
            SUB_PUT: lambda op: self._set(self._inner(s.subs, op[1]), _str(op[2]),
                                          (_int(op[3]), _int(op[4]))),
            SUB_DEL: lambda op: self._pop_inner(s.subs, op[1], op[2]),
            MSG_PUT: lambda op: self._set(s.msgs, _int(op[1]), _message(op)),
            MSG_DEL: lambda op: self._pop(s.msgs, op[1]),
            Q_PUT: lambda op: self._set(self._inner(s.queue, op[1]), _int(op[2]), (
                _int(op[3]), _int(op[4]), bool(_int(op[5])), _subids(op[6]), _opt_str(op[7]),
                _int(op[8]), False, _message(op[7:]) if len(op) == 13 else None)),
            Q_PID: self._q_pid,
            Q_REL: self._q_rel,
            Q_DEL: lambda op: self._pop_inner(s.queue, op[1], op[2]),
            REL_PUT: lambda op: self._set(self._inner(s.rel, op[1]), _int(op[2]),
                                          _float(op[3])),
            REL_DEL: lambda op: self._pop_inner(s.rel, op[1], op[2]),
            RET_PUT: lambda op: self._set(s.retained, _str(op[1]), _message(op)),
            RET_DEL: lambda op: self._pop(s.retained, op[1]),
            RET_CLEAR: self._ret_clear,
            APPLIED: lambda op: self._set_applied(_int(op[1])),
            USER_PUT: lambda op: self._set(s.users, _str(op[1]),
                                           (_str(op[2]), bool(_int(op[3])))),
            USER_DEL: lambda op: self._pop(s.users, op[1]),
            BAN_PUT: lambda op: self._set(s.banned, (_str(op[1]), _str(op[2])), (
                _str(op[3]), _str(op[4]), _float(op[5]), _float(op[6]))),
            BAN_DEL: lambda op: self._pop(s.banned, (op[1], op[2])),
            KV_PUT: lambda op: self._set(s.kv, (_str(op[1]), _str(op[2])), _bytes(op[3])),
            KV_DEL: lambda op: self._pop(s.kv, (op[1], op[2])),
        }
        # The op's length, as SQLite checks the number of bindings.
        self._arity: dict[object, int] = {
            SESSION_PUT: 8, SESSION_DEL: 2, SUB_PUT: 5, SUB_DEL: 3, MSG_PUT: 6, MSG_DEL: 2,
            Q_PUT: 9, Q_PID: 4, Q_REL: 3, Q_DEL: 3, REL_PUT: 4, REL_DEL: 3, RET_PUT: 6,
            RET_DEL: 2, RET_CLEAR: 1, APPLIED: 2, USER_PUT: 4, USER_DEL: 2,
            BAN_PUT: 7, BAN_DEL: 3, KV_PUT: 4, KV_DEL: 3}

    # --- changes, each logged for the undo ----------------------------------------------------

    def _set(self, table: dict[Any, Any], key: object, value: object) -> None:
        self._undo.append((table, key, table.get(key, _MISSING)))
        table[key] = value

    def _pop(self, table: dict[Any, Any], key: object) -> None:
        if key in table:
            self._undo.append((table, key, table.pop(key)))

    def _inner(self, outer: dict[str, dict[Any, Any]], client_id: object) -> dict[Any, Any]:
        inner = outer.get(_str(client_id))
        if inner is None:
            inner = {}
            self._set(outer, client_id, inner)
        return inner

    def _pop_inner(self, outer: dict[str, dict[Any, Any]], client_id: object,
                   key: object) -> None:
        inner = outer.get(_str(client_id))
        if inner is not None and key in inner:
            self._pop(inner, key)
            if not inner:
                self._pop(outer, client_id)

    def _session_del(self, op: Op) -> None:
        client_id = _str(op[1])
        for table in (self.state.sessions, self.state.subs, self.state.queue, self.state.rel):
            self._pop(table, client_id)

    def _q_pid(self, op: Op) -> None:
        rows = self.state.queue.get(_str(op[1]))
        qseq, pid = _int(op[2]), _int(op[3])
        if rows is not None and qseq in rows:
            m, qos, retain, subids, share, _, released, inline = rows[qseq]
            self._set(rows, qseq, (m, qos, retain, subids, share, pid, released, inline))

    def _q_rel(self, op: Op) -> None:
        rows = self.state.queue.get(_str(op[1]))
        qseq = _int(op[2])
        if rows is not None and qseq in rows:
            m, qos, retain, subids, share, pid, _, inline = rows[qseq]
            self._set(rows, qseq, (m, qos, retain, subids, share, pid, True, inline))

    def _set_applied(self, seq: int) -> None:
        self._undo.append((self.state.__dict__, "applied", list(self.state.applied)))
        self.state.applied[0] = seq

    def _ret_clear(self, op: Op) -> None:
        for topic in list(self.state.retained):
            self._pop(self.state.retained, topic)

    # --- the Protocol ---------------------------------------------------------------------------

    def open(self) -> Restored:
        """Read the state back as the SQLite backend does (same filtering, same order)."""
        if self._open:
            raise StoreError("memory: already open")
        restored = self._read()
        self._open = True
        return restored

    def reload(self) -> Restored:
        if not self._open:
            raise StoreError("memory: not open")
        return self._read()

    def _read(self) -> Restored:
        s = self.state
        restored = Restored()
        last_id = 0
        for client_id, (expiry, created, disconnected, will, delay, zone) in s.sessions.items():
            session = SessionRow(client_id, expiry, created, disconnected, will, delay, zone)
            session.subscriptions = [(f, o, i) for f, (o, i) in s.subs.get(client_id, {}).items()]
            session.awaiting_rel = dict(s.rel.get(client_id, {}))
            rows = s.queue.get(client_id, {})
            for qseq in sorted(rows):
                msg_id, qos, retain, subids, share, pid, released, inline = rows[qseq]
                last_id = max(last_id, msg_id)
                if inline is not None:
                    session.queue.append(QueueRow(qseq, msg_id, qos, retain, subids, share, pid,
                                                  released, StoredMessage(*inline)))
                    continue
                message = s.msgs.get(msg_id)
                if message is None:  # its message is gone: nothing to deliver
                    continue
                restored.messages[msg_id] = StoredMessage(*message)
                session.queue.append(QueueRow(qseq, msg_id, qos, retain, subids, share, pid,
                                              released))
            restored.sessions.append(session)
        restored.retained = {t: StoredMessage(*m) for t, m in s.retained.items()}
        restored.last_msg_id = max(max(s.msgs, default=0), last_id)
        restored.orphans = [m for m in s.msgs if m not in restored.messages]
        restored.applied_seq = s.applied[0]
        restored.users = dict(s.users)
        restored.banned = [(kind, who, *row) for (kind, who), row in s.banned.items()]
        for (space, key), value in s.kv.items():
            restored.kv.setdefault(space, {})[key] = value
        return restored

    def write(self, ops: list[Op]) -> None:
        """Apply ``ops`` in order, all or nothing. Raises StoreError (and changes nothing)."""
        if not self._open:
            raise StoreError("memory: not open")
        undo = self._undo
        try:
            for op in ops:
                apply = self._apply.get(op[0])
                if apply is None:
                    raise StoreError(f"memory: unknown op code {op[0]!r}")
                if len(op) != self._arity[op[0]] and not (op[0] == Q_PUT and len(op) == 13):
                    raise StoreError(f"memory: op {op[0]} has {len(op)} items, "
                                     f"not {self._arity[op[0]]}")
                apply(op)
        except Exception as err:
            for table, key, old in reversed(undo):
                if old is _MISSING:
                    table.pop(key, None)
                else:
                    table[key] = old
            if isinstance(err, StoreError):
                raise
            raise StoreError(f"memory: bad op in batch: {type(err).__name__}: {err}") from err
        finally:
            undo.clear()

    def status(self) -> dict[str, object]:
        if not self._open:
            raise StoreError("memory: not open")
        s = self.state
        return {
            "path": self.path,
            "size": 0,
            "rows": {"sessions": len(s.sessions),
                     "subscriptions": sum(map(len, s.subs.values())),
                     "messages": len(s.msgs),
                     "queue": sum(map(len, s.queue.values())),
                     "awaiting_rel": sum(map(len, s.rel.values())),
                     "retained": len(s.retained), "users": len(s.users),
                     "banned": len(s.banned), "kv": len(s.kv)},
            "durability": "memory",
            "schema": SCHEMA_VERSION,
            "page_size": 0,
            "free_pages": 0,
        }

    def compact(self) -> dict[str, object]:
        return {"before": 0, "after": 0, "seconds": 0.0}

    def close(self) -> None:
        self._open = False


if TYPE_CHECKING:
    def _is_a_backend(backend: MemoryBackend) -> Backend:
        return backend

"""The store's journal: what the core changes becomes operations, committed to the
operation log before any acknowledgement, and applied to the SQLite store in bulk.

The core calls the :class:`~mqttd.core.services.SessionStore` methods on the loop's
thread as durable state changes. Each call appends an operation to the batch being
gathered and advances ``gate.issued``. At the end of the loop turn the batch is
committed: appended to the operation log (``store/oplog.py``) in one write. With
``durability = "process"`` that is the commit (the bytes are the operating system's,
which survives kill -9 of mqttd): ``gate.committed`` advances at once and ``on_commit``
lets the connections holding acknowledgements write them. With ``"power"`` a sync
thread ``fdatasync``s the log first, one sync for every batch appended meanwhile (group
commit without a timer).

A batch not yet committed is still editable: a delivery acknowledged before its batch
was committed cancels its insert (and its message's, when no other queue holds it). One
acknowledged after the commit but before the writer took the batch cancels its insert
there, and its delete goes only into the log (a replay needs it). A
message first stored in the batch and held by one session only goes into that session's
queue row (inline) instead of a msgs row of its own; it gets a msgs row when a second
session takes it, so a message is stored once for any number of sessions.

Every ``[store] apply_interval`` (1 s), or when the log segment being written passes
``apply_bytes`` (8 MB), the committed batches are sealed (the log moves to a new
segment) and the ones sealed the time before go to the writer thread, which applies them
to the SQLite backend in one transaction after cancelling what was inserted and deleted
in between (``coalesce``), with the number of the last log segment it covered; the log
segments it covered are then deleted. The lag lets a subscriber that keeps up
acknowledge its rows on the loop first: the writer then gets nothing, and opens no
transaction. At start the log
is replayed into the backend first (``replay``).

A commit that does not fit (disk full, or the store's ``max_size``: log and database
together) is retried until it does; meanwhile ``gate.full`` makes the broker refuse
QoS 1/2 messages that would need storing (0x97), and nothing acknowledged is lost. While
full, the deletes of the retried batch that nothing earlier in it created are logged
first, on their own, and applied, which shrinks the log: subscribers acknowledging their
queues make the room the rest needs.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..core.message import Message
from ..core.services import CommitGate, Delivery
from ..mqtt.codec import encode_publish
from ..mqtt.packets import SubOpts
from .base import (
    APPLIED,
    BAN_DEL,
    BAN_PUT,
    KV_DEL,
    KV_DELS,
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
    SESSION_DEL,
    SESSION_PUT,
    SUB_DEL,
    SUB_PUT,
    USER_DEL,
    USER_PUT,
    Backend,
    Op,
    Restored,
    StoreError,
)
from .oplog import OpLog

log = logging.getLogger("mqttd.store")

__all__ = ["Journal", "coalesce", "message_packet", "options_byte", "replay", "split_freeing",
           "wall_expiry"]

#: Seconds between retries of a write that failed (doubling up to the maximum).
RETRY_FIRST = 0.05
RETRY_MAX = 2.0
#: Commit latencies kept for the percentiles of ``ctl store status``.
LATENCY_SAMPLES = 1000
#: The committed batches are applied to the backend this often (seconds), or as soon as
#: the log holds more than APPLY_BYTES.
APPLY_INTERVAL = 1.0
APPLY_BYTES = 8 << 20

_APPLY, _CALL, _CLOSE = 0, 1, 2


def _packet(fields: tuple[Any, ...]) -> bytes:
    """A message's fields as the log carries them (topic, payload, QoS, retain flag,
    properties: encoding is left to the writer thread, for the few that reach SQLite)."""
    topic, payload, qos, retain, props = fields
    return encode_publish(topic, payload, qos, retain, False, 1 if qos else 0, props, 5)


def _encoded(op: Op) -> Op:
    """``op`` as the backend takes it: a message given by its fields becomes its packet."""
    code = op[0]
    if code == MSG_PUT and isinstance(op[2], tuple):
        return (MSG_PUT, op[1], _packet(op[2])) + op[3:]
    if code == Q_PUT and len(op) == 13 and isinstance(op[9], tuple):
        return op[:9] + (_packet(op[9]),) + op[10:]
    return op


def message_packet(msg: Message) -> bytes:
    """A message as stored: its MQTT 5 PUBLISH packet (topic, payload, QoS, retain flag and
    every property, read back by the broker's own parser)."""
    return encode_publish(msg.topic, msg.payload, msg.qos, msg.retain, False,
                          1 if msg.qos else 0, msg.properties, 5)


def wall_expiry(msg: Message) -> float:
    """The message's expiry as wall-clock time (its ``expiry`` is monotonic), 0: never."""
    if not msg.expiry:
        return 0.0
    return time.time() + (msg.expiry - time.monotonic())


def options_byte(opts: SubOpts) -> int:
    """Subscription options as the SUBSCRIBE packet's options byte."""
    return (opts.qos | (4 if opts.no_local else 0) | (8 if opts.retain_as_published else 0)
            | (opts.retain_handling << 4))


def _share_name(group: object) -> str | None:
    """A shared delivery's ``$share/group/filter`` (the router's SharedGroup), else None."""
    if group is None:
        return None
    name = getattr(group, "name", None)
    topic_filter = getattr(group, "topic_filter", "")
    return f"$queue/{topic_filter}" if name is None else f"$share/{name}/{topic_filter}"


class Journal:
    """The core's :class:`~mqttd.core.services.SessionStore` on an operation log and a
    :class:`Backend`."""

    def __init__(self, backend: Backend, durability: str, oplog: OpLog,
                 last_msg_id: int = 0, max_size: int = 0,
                 apply_interval: float = APPLY_INTERVAL, apply_bytes: int = APPLY_BYTES
                 ) -> None:
        self.backend = backend
        self.durability = durability
        self.oplog = oplog
        self.apply_interval = apply_interval
        self.apply_bytes = apply_bytes
        #: Bytes the log and the database together may hold (0: no limit).
        self.max_size = max_size
        self.gate = CommitGate()
        #: Called on the loop after every commit (the flusher writes what was held).
        self.on_commit: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: ``power``: the sync thread's requests (the sequence number to sync up to).
        self._syncs: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._sync_thread: threading.Thread | None = None
        #: Held while the log's file descriptor is synced or replaced.
        self._fd_lock = threading.Lock()
        #: The batch being gathered (None: an operation cancelled before the commit).
        self._ops: list[Op | None] = []
        self._scheduled = False
        #: Set when closing while the store is full: the writer gives up the application it
        #: retries.
        self._give_up = threading.Event()
        #: (client id, qseq) -> (the batch holding its Q_PUT, index in it), while that
        #: batch is being gathered or committed but not yet handed to the writer: a delete
        #: meanwhile cancels the put there, and the writer never sees either.
        self._q_pending: dict[tuple[object, object], tuple[list[Op | None], int]] = {}
        #: Deletes of rows whose put was cancelled in a committed batch: they go into the
        #: log (a replay must see them) but not to the writer.
        self._log_only: list[Op] = []
        #: Numbers the batches: a message's entry knows the batch of its ops by it.
        self._gen = 0
        #: (client id, packet id) -> index of REL_PUT; topic -> index of RET_PUT. Only for
        #: the batch being gathered.
        self._rel_pending: dict[tuple[str, int], int] = {}
        self._ret_pending: dict[str, int] = {}
        #: (space, key) -> (the batch holding its last KV_PUT, index in it), while that
        #: batch is being gathered or committed but not yet handed to the writer (as
        #: ``_q_pending``): a delete of a record put new cancels the put there, and the
        #: writer never sees either (a bridge's queue record lives a round trip).
        self._kv_pending: dict[tuple[object, object], tuple[list[Op | None], int]] = {}
        #: Every stored message -> [msg id, number of queue rows referencing it, 1 if its one
        #: copy is inline in a queue row (no msgs row) else 0, the batch number (_gen) the
        #: next two indices are in, index of its first (inline) Q_PUT or -1, index of its
        #: MSG_PUT or -1].
        self._msgs: dict[Message, list[int]] = {}
        self._last_id = last_msg_id
        #: A batch the log could not take (full): retried, with what comes meanwhile.
        self._failed: list[Op] | None = None
        self._retry: asyncio.TimerHandle | None = None
        #: aclose() ran: nothing more is written.
        self._closed = False
        #: The log and the database's live pages are past ``max_size``.
        self._over_size = False
        self._retry_delay = RETRY_FIRST
        #: Committed batches not yet applied to the backend (None: cancelled since), and
        #: whether an application runs (one at a time); the database's used bytes after
        #: the last one.
        self._unapplied: list[list[Op | None]] = []
        #: Committed batches whose log segments are closed (up to the segment given),
        #: handed to the writer at the next application: the lag lets the deletes of rows
        #: acknowledged soon after cancel their puts on the loop (no straddling pair of
        #: insert and delete reaches SQLite).
        self._sealed: tuple[list[list[Op | None]], int] | None = None
        self._applying = False
        self._apply_timer: asyncio.TimerHandle | None = None
        self.db_used = 0
        # Figures for ctl store status.
        self.commits = 0
        self.ops_written = 0
        self.ops_cancelled = 0
        self.ops_applied = 0
        self.applications = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.last_error = ""
        self.last_compaction: dict[str, object] | None = None
        self._idle: asyncio.Event | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer thread (and the sync thread for ``power``); the backend is open
        and restored, the log open."""
        self._loop = loop
        self._idle = asyncio.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="mqttd-store", daemon=True)
        self._thread.start()
        if self.oplog.sync:
            self._sync_thread = threading.Thread(target=self._sync_run, name="mqttd-sync",
                                                 daemon=True)
            self._sync_thread.start()
        self._jobs.put((_CALL, self.backend_used, None))
        if self._ops:  # issued while restoring (expired sessions, wills sent)
            self._scheduled = True
            loop.call_soon(self._handoff)

    def backend_used(self) -> int:
        """(Writer thread) the database's used bytes, for the size limit."""
        used = getattr(self.backend, "used_bytes", None)
        self.db_used = int(used()) if callable(used) else 0
        return self.db_used

    async def aclose(self, timeout: float = 30.0) -> None:
        """Commit what is pending, apply everything to the backend (so that the next start
        replays nothing), then close. If the store stays full past a few seconds the rest
        is given up, and the log says how much."""
        if self._thread is None:
            self.oplog.close()
            self.backend.close()
            return
        self._handoff()
        assert self._idle is not None
        try:
            deadline = time.monotonic() + (5.0 if self.gate.full else timeout)
            while (self._failed is not None or self._applying or self._unapplied
                   or self._sealed is not None):
                if not self._applying and self._failed is None:
                    self._start_apply(now=True)
                self._idle.clear()
                await asyncio.wait_for(self._idle.wait(), max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            pending = len(self._failed or ())
            log.error("store: giving up %d operations not written before shutdown (%s); "
                      "none of them was acknowledged to a client", pending,
                      self.last_error or "the store did not answer")
            self._give_up.set()
        for handle in (self._retry, self._apply_timer):
            if handle is not None:
                handle.cancel()
        self._closed = True
        if self._sync_thread is not None:
            self._syncs.put(None)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._jobs.put((_CLOSE, done))
        try:
            await asyncio.wait_for(done, 10.0)
        except TimeoutError:
            log.error("store: the writer did not close in time")
        self._thread = None

    # --- SessionStore: what the core calls ------------------------------------------------

    def _append(self, op: Op) -> int:
        ops = self._ops
        ops.append(op)
        self.gate.issued += 1
        if not self._scheduled:
            self._schedule()
        return len(ops) - 1

    def _schedule(self) -> None:
        """Commit at the end of this loop turn."""
        self._scheduled = True
        loop = self._loop
        if loop is not None:
            loop.call_soon(self._handoff)

    def save_session(self, client_id: str, expiry_interval: int, created_at: float,
                     disconnected_at: float, will: Message | None, will_delay: int,
                     zone: str) -> None:
        packet = message_packet(will) if will is not None else None
        self._append((SESSION_PUT, client_id, expiry_interval, created_at, disconnected_at,
                      packet, will_delay, zone))

    def delete_session(self, client_id: str) -> None:
        self._append((SESSION_DEL, client_id))

    def save_subscription(self, client_id: str, topic_filter: str, opts: SubOpts,
                          subid: int) -> None:
        self._append((SUB_PUT, client_id, topic_filter, options_byte(opts), subid))

    def delete_subscription(self, client_id: str, topic_filter: str) -> None:
        self._append((SUB_DEL, client_id, topic_filter))

    def add_delivery(self, client_id: str, qseq: int, delivery: Delivery,
                     packet_id: int) -> None:
        msg = delivery[0]
        entry = self._msgs.get(msg)
        if entry is None:
            # The first holder: the message goes inline into its row (most messages stored
            # have one holder: one insert and one delete each, no msgs row). The hot path
            # of durable QoS 1: _append and the helpers inlined.
            self._last_id = mid = self._last_id + 1
            group = delivery[4]
            ops = self._ops
            idx = len(ops)
            self._msgs[msg] = [mid, 1, 1, self._gen, idx, -1]
            ops.append((Q_PUT, client_id, qseq, mid, delivery[1], delivery[2], delivery[3],
                        None if group is None else _share_name(group), packet_id,
                        (msg.topic, msg.payload, msg.qos, msg.retain, msg.properties),
                        msg.sender, msg.timestamp,
                        wall_expiry(msg) if msg.expiry else 0.0))
            self.gate.issued += 1
            if not self._scheduled:
                self._schedule()
            self._q_pending[(client_id, qseq)] = (ops, idx)
            return
        entry[1] += 1
        mid = entry[0]
        if entry[2]:  # held inline by one row so far: a second holder needs its own row
            entry[2] = 0
            put_idx = self._append(
                (MSG_PUT, mid, (msg.topic, msg.payload, msg.qos, msg.retain, msg.properties),
                 msg.sender, msg.timestamp, wall_expiry(msg)))
            if entry[3] == self._gen:
                entry[5] = put_idx
                ops = self._ops
                first = ops[entry[4]]
                if first is not None and len(first) == 13:
                    # Still in this batch (a fan-out): it references the row instead, so
                    # the message is stored once.
                    ops[entry[4]] = first[:9]
            else:
                entry[3:] = [self._gen, -1, put_idx]
        self._q_pending[(client_id, qseq)] = (self._ops, self._append(
            (Q_PUT, client_id, qseq, mid, delivery[1], delivery[2], delivery[3],
             _share_name(delivery[4]), packet_id)))

    def set_inflight(self, client_id: str, qseq: int, packet_id: int) -> None:
        where = self._q_pending.get((client_id, qseq))
        if where is not None and where[0] is self._ops:
            # Still in the batch being gathered: give it its packet id.
            ops, idx = where
            op = ops[idx]
            assert op is not None
            ops[idx] = op[:8] + (packet_id,) + op[9:]
            return
        self._append((Q_PID, client_id, qseq, packet_id))

    def set_released(self, client_id: str, qseq: int) -> None:
        self._append((Q_REL, client_id, qseq))

    def remove_delivery(self, client_id: str, qseq: int, msg: Message) -> None:
        where = self._q_pending.pop((client_id, qseq), None)
        if where is None:
            self._append((Q_DEL, client_id, qseq))
        else:
            batch, idx = where
            batch[idx] = None
            self.ops_cancelled += 1
            if batch is not self._ops:
                # Committed, not yet applied: the writer never sees the row, but the log
                # has its put, so it gets the delete too.
                self._log_only.append((Q_DEL, client_id, qseq))
                self.gate.issued += 1
                if not self._scheduled:
                    self._schedule()
        entry = self._msgs.pop(msg, None)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:  # other rows still hold it (one dict operation for the common case)
            self._msgs[msg] = entry
            return
        if entry[3] == self._gen and entry[5] >= 0:  # its row was never committed
            self._ops[entry[5]] = None
            self.ops_cancelled += 1
        elif not entry[2]:  # an inline copy goes with its queue row
            self._append((MSG_DEL, entry[0]))

    def await_rel(self, client_id: str, packet_id: int) -> None:
        self._rel_pending[(client_id, packet_id)] = self._append(
            (REL_PUT, client_id, packet_id, time.time()))

    def release(self, client_id: str, packet_id: int) -> None:
        idx = self._rel_pending.pop((client_id, packet_id), None)
        if idx is not None:
            self._ops[idx] = None
            self.ops_cancelled += 1
        else:
            self._append((REL_DEL, client_id, packet_id))

    def retain(self, msg: Message) -> None:
        topic = msg.topic
        idx = self._ret_pending.get(topic)
        if idx is not None:  # replaced within the batch: only the last one is written
            self._ops[idx] = None
        self._ret_pending[topic] = self._append(
            (RET_PUT, topic, message_packet(msg), msg.sender, msg.timestamp, wall_expiry(msg)))

    def unretain(self, topic: str) -> None:
        idx = self._ret_pending.pop(topic, None)
        if idx is not None:
            self._ops[idx] = None
        self._append((RET_DEL, topic))

    def clear_retained(self) -> None:
        for idx in self._ret_pending.values():
            self._ops[idx] = None
        self._ret_pending.clear()
        self._append((RET_CLEAR,))

    # --- restore ------------------------------------------------------------------------

    def adopt(self, msg: Message, msg_id: int, refs: int, inline: bool = False) -> None:
        """A restored message with ``refs`` queue rows referencing it (``inline``: its one
        copy is in its queue row)."""
        self._msgs[msg] = [msg_id, refs, 1 if inline else 0, -1, -1, -1]

    def forget_row(self, client_id: str, qseq: int) -> None:
        """A restored queue row that cannot be used (its message is unreadable)."""
        self._append((Q_DEL, client_id, qseq))

    # --- the built-in user table (access/users.py) ------------------------------------------

    def save_user(self, username: str, password_hash: str, superuser: bool) -> None:
        self._append((USER_PUT, username, password_hash, 1 if superuser else 0))

    def delete_user(self, username: str) -> None:
        self._append((USER_DEL, username))

    # --- the banned table (access/banned.py) -------------------------------------------------

    def save_ban(self, kind: str, who: str, by: str, reason: str, at: float,
                 until: float | None) -> None:
        self._append((BAN_PUT, kind, who, by, reason, at, until or 0.0))

    def delete_ban(self, kind: str, who: str) -> None:
        self._append((BAN_DEL, kind, who))

    # --- modules' records (store/kv.py) ---------------------------------------------------

    def kv_put(self, space: str, key: str, value: bytes, new: bool = False) -> None:
        """Insert or replace a record. ``new``: nothing is stored under the key at this
        point (the caller knows: ``KVSpace``), so a delete before the record reaches the
        backend leaves nothing for it to do (the op then carries a fifth item, True,
        which ``coalesce`` reads and drops)."""
        k = (space, key)
        where = self._kv_pending.get(k)
        if where is not None and where[0] is self._ops:
            # Replaced within the batch: only the last one is written.
            prev = self._ops[where[1]]
            self._ops[where[1]] = None
            self.ops_cancelled += 1
            new = new or (prev is not None and len(prev) == 5)
        self._kv_pending[k] = (self._ops, self._append(
            (KV_PUT, space, key, value, True) if new else (KV_PUT, space, key, value)))

    def kv_del(self, space: str, key: str) -> None:
        """Delete a record (nothing if there is none)."""
        where = self._kv_pending.pop((space, key), None)
        if where is not None:
            batch, idx = where
            prev = batch[idx]
            if batch is self._ops:
                batch[idx] = None
                self.ops_cancelled += 1
                if prev is not None and len(prev) == 5:  # put and deleted in this batch
                    return
            elif prev is not None and len(prev) == 5:
                # Put new in a committed batch the writer does not have yet: cancelled
                # there; the log has the put, so it gets the delete too (as a queue row's).
                batch[idx] = None
                self.ops_cancelled += 1
                self._log_only.append((KV_DEL, space, key))
                self.gate.issued += 1
                if not self._scheduled:
                    self._schedule()
                return
        self._append((KV_DEL, space, key))

    def kv_put_new(self, space: str, key: str, value: bytes) -> None:
        """``kv_put`` of a key nothing is stored under (nor pending in this batch): the
        bridge's per-message path, without the lookups."""
        ops = self._ops
        self._kv_pending[(space, key)] = (ops, len(ops))
        ops.append((KV_PUT, space, key, value, True))
        self.gate.issued += 1
        if not self._scheduled:
            self._schedule()

    def kv_del_many(self, space: str, keys: list[str]) -> None:
        """``kv_del`` of every key of ``keys``, in one operation each for the log and the
        writer (KV_DELS): what was put new and is not with the writer yet is cancelled."""
        pending = self._kv_pending
        ops = self._ops
        logged: list[str] = []  # the log has their puts, the writer will not
        rest: list[str] = []
        cancelled = 0
        for key in keys:
            where = pending.pop((space, key), None)
            if where is not None:
                batch, idx = where
                prev = batch[idx]
                if prev is not None and len(prev) == 5:  # put new: cancelled
                    batch[idx] = None
                    cancelled += 1
                    if batch is not ops:
                        logged.append(key)
                    continue
                if batch is ops:  # replaced in this batch: the delete alone stays
                    batch[idx] = None
                    cancelled += 1
            rest.append(key)
        self.ops_cancelled += cancelled
        if logged:
            self._log_only.append((KV_DELS, space, tuple(logged)))
            self.gate.issued += 1
            if not self._scheduled:
                self._schedule()
        if rest:
            self._append((KV_DELS, space, tuple(rest)) if len(rest) > 1
                         else (KV_DEL, space, rest[0]))

    def commit_now(self) -> None:
        """Commit what was issued so far now rather than at the end of the loop turn (an
        operator's ban is in the operation log before the command answers; with
        ``power`` durability its fsync still follows on the sync thread)."""
        if self._scheduled and self._loop is not None:
            self._handoff()

    async def flush(self, timeout: float = 10.0) -> bool:
        """Commit what was issued so far now and wait for it (an operator's change is
        answered once it is on disk); False if it is not committed within ``timeout``."""
        target = self.gate.issued
        self._handoff()
        deadline = time.monotonic() + timeout
        while self.gate.committed < target:
            if self._idle is None or time.monotonic() >= deadline:
                return False
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return False
        return True

    def forget_message(self, msg_id: int) -> None:
        """A restored message that is not used (unreadable or expired): rows referencing it
        are forgotten one by one (``forget_row``)."""
        self._append((MSG_DEL, msg_id))

    # --- the commit: the batch into the log ------------------------------------------------

    def _handoff(self) -> None:
        """End of the loop turn: commit the batch gathered in it."""
        self._scheduled = False
        if not (self._ops or self._log_only) or self._loop is None:
            return
        ops = self._ops
        self._ops = []
        self._gen += 1
        self._rel_pending.clear()
        self._ret_pending.clear()
        gate = self.gate
        gate.taken = seq = gate.issued
        real: list[Op] = list(filter(None, ops))  # (an op is a non-empty tuple)
        extra = self._log_only
        if extra:
            # First: each deletes a row an earlier batch put (a later op of this batch may
            # put a row under the same key again: a session that ended and began anew).
            self._log_only = []
            real = extra + real
        if self._failed is not None:  # full: it joins the batch being retried
            self._unpend(ops)
            _merge_failed(self._failed, real)
            return
        self._commit(real, seq, ops)

    def _unpend(self, batch: list[Op | None]) -> None:
        """``batch`` is not going to the writer as it is (the log did not take it): its
        rows are no longer cancelled in it."""
        for op in batch:
            if op is not None:
                code = op[0]
                if code == Q_PUT or code == KV_PUT:
                    pending = self._q_pending if code == Q_PUT else self._kv_pending
                    key = (op[1], op[2])
                    where = pending.get(key)
                    if where is not None and where[0] is batch:
                        del pending[key]

    def _commit(self, ops: list[Op], seq: int, batch: list[Op | None] | None = None
                ) -> None:
        """Log ``ops``; the writer gets ``batch`` (``ops`` without the log-only deletes,
        with None where ops were cancelled) or ``ops``."""
        start = time.perf_counter()
        if ops:
            try:
                self._log(ops, seq, batch)
            except Exception as err:  # never dropped: retried, and said (ALARM)
                if batch is not None:
                    self._unpend(batch)
                self._failed = list(ops)
                self._full(err if isinstance(err, StoreError) else StoreError(
                    f"{self.oplog.prefix}*: cannot log a batch: {err!r}"))
                return
        if self._sync_thread is not None and ops:
            self._syncs.put(seq)  # committed when the sync thread has synced it
            return
        self._committed(seq, time.perf_counter() - start, len(ops))

    def _log(self, ops: list[Op], seq: int, batch: list[Op | None] | None = None) -> None:
        """Append to the log, then count it unapplied."""
        if self._closed:
            log.debug("store: %d operations after the store closed: not written", len(ops))
            if batch is not None:
                self._unpend(batch)
            return
        self.oplog.append(ops, seq)
        self._unapplied.append(list(ops) if batch is None else batch)
        self._arm()
        if self.max_size:
            self._check_size()
        if self.oplog.current_size > self.apply_bytes and not self._applying:
            self._start_apply()

    def _arm(self) -> None:
        """An application within apply_interval while batches wait for one."""
        loop = self._loop
        if self._apply_timer is None and loop is not None and (
                self._unapplied or self._sealed is not None):
            self._apply_timer = loop.call_later(self.apply_interval, self._apply_due)

    def _check_size(self) -> None:
        """The size limit is checked after a commit, never by failing one: what was
        accepted is stored (failing it would hold its acknowledgement, and the
        acknowledgements that would free room behind it: a reconnecting subscriber's
        CONNACK). Past the limit, QoS 1/2 messages that need storing are refused (0x97)
        until applications bring the store back under 90% of it."""
        size = self.oplog.size + self.db_used
        over = size > self.max_size
        gate = self.gate
        if over and not self._over_size:
            self._over_size = True
            if not gate.full:
                gate.full = True
                self.last_error = (f"{self.oplog.prefix[:-len('.oplog.')]}: full: the "
                                   f"store's size limit of {self.max_size} bytes is reached")
                log.error("ALARM store: %s; QoS 1/2 messages that need storing are refused "
                          "(0x97) until the store has room again", self.last_error)
            if not self._applying:
                self._start_apply(now=True)  # applied, the log shrinks
        elif self._over_size and size < self.max_size * 0.9:
            # Below 90% again (not just below the limit: no alarm at every message).
            self._over_size = False
            if gate.full and self._failed is None:
                gate.full = False
                self.last_error = ""
                log.warning("store: writes succeed again (%s is below its size limit): QoS "
                            "1/2 messages are accepted", self.backend.path or "memory")

    def _committed(self, seq: int, seconds: float, n: int) -> None:
        """On the loop: everything up to ``seq`` is in the log (and synced, for power)."""
        gate = self.gate
        if seq > gate.committed:
            gate.committed = seq
        self.commits += 1
        self.ops_written += n
        self.latencies.append(seconds)
        if self.on_commit is not None:
            self.on_commit()
        if self._idle is not None:
            self._idle.set()

    def _sync_run(self) -> None:
        """``power``: fdatasync the log for every batch appended since the last sync."""
        while True:
            seq = self._syncs.get()
            while True:  # everything queued meanwhile is covered by one sync
                try:
                    nxt = self._syncs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    return
                seq = nxt
            if seq is None:
                return
            start = time.perf_counter()
            delay = RETRY_FIRST
            failed = False
            while True:  # not acknowledged until a sync succeeds
                try:
                    with self._fd_lock:
                        self.oplog.fdatasync()
                    break
                except OSError as err:
                    failed = True
                    self._call(self._full, StoreError(f"{self.oplog.prefix}*: fdatasync: "
                                                      f"{err.strerror or err}"))
                    if self._give_up.wait(delay):
                        return
                    delay = min(delay * 2, RETRY_MAX)
            if failed:
                self._call(self._recovered)
            self._call(self._committed, seq, time.perf_counter() - start, 0)

    # --- full --------------------------------------------------------------------------------

    def _full(self, err: StoreError) -> None:
        """On the loop: a commit failed; it is retried. Said once."""
        gate = self.gate
        text = str(err)
        if not gate.full:
            gate.full = True
            log.error("ALARM store: %s; QoS 1/2 messages that need storing are refused "
                      "(0x97) until the store has room again; retrying", text)
        self.last_error = text
        loop = self._loop
        if self._failed is not None and self._retry is None and loop is not None:
            self._retry = loop.call_later(self._retry_delay, self._retry_commit)
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)

    def _recovered(self) -> None:
        """On the loop: a sync succeeded after failing."""
        if self.gate.full and self._failed is None:
            self.gate.full = False
            self.last_error = ""
            log.warning("store: writes succeed again (%s): QoS 1/2 messages are accepted",
                        self.backend.path or "memory")

    def _retry_commit(self) -> None:
        self._retry = None
        ops = self._failed
        if ops is None:
            return
        seq = self.gate.taken
        freeing, rest = split_freeing(ops)
        if freeing and rest:
            # Deletes first, on their own: applied, they shrink the log and the database.
            try:
                self._log(freeing, self.gate.committed)
                self._failed = ops = rest
                if not self._applying:
                    self._start_apply(now=True)
            except StoreError:
                pass
        try:
            start = time.perf_counter()
            self._log(ops, seq)
        except StoreError as err:
            self._full(err)
            return
        self._failed = None
        self._retry_delay = RETRY_FIRST
        if self.gate.full:
            self.gate.full = False
            self.last_error = ""
            log.warning("store: writes succeed again (%s): QoS 1/2 messages are accepted",
                        self.backend.path or "memory")
        if self._sync_thread is not None:
            self._syncs.put(seq)
        else:
            self._committed(seq, time.perf_counter() - start, len(ops))

    # --- the application: the log into the backend -------------------------------------------

    def _apply_due(self) -> None:
        self._apply_timer = None
        if not self._applying:
            self._start_apply()
        self._arm()

    def _start_apply(self, now: bool = False) -> None:
        """Hand the sealed batches to the writer thread, and seal the committed ones (the
        log moves to a new segment; the ones before are deleted once the backend has
        them): a batch reaches the writer one application after it was sealed, or in this
        one (``now``: closing, an operator's view, a full store)."""
        if self._applying:
            return
        if now and self._unapplied:
            self._seal()
        sealed = self._sealed
        if sealed is not None:
            self._sealed = None
            batches, upto = sealed
            q_pending, kv_pending = self._q_pending, self._kv_pending
            live: list[Op] = []
            for batch in batches:
                ops: list[Op] = list(filter(None, batch))
                for op in ops:
                    code = op[0]
                    if code == Q_PUT or code == KV_PUT:  # the writer has it now: a delete
                        pending = q_pending if code == Q_PUT else kv_pending  # must say so
                        key = (op[1], op[2])
                        where = pending.get(key)
                        if where is not None and where[0] is batch:
                            del pending[key]
                live += ops
            self._applying = True
            if self._idle is not None:
                self._idle.clear()
            self._jobs.put((_APPLY, live, upto))
        if self._unapplied:
            self._seal()
        self._arm()

    def _seal(self) -> None:
        """Close the log segment: the committed batches join the sealed ones."""
        try:
            if self._sync_thread is not None:
                with self._fd_lock:
                    self.oplog.fdatasync()  # the closed segment is complete on disk
                    upto = self.oplog.rotate()
            else:
                upto = self.oplog.rotate()
        except (StoreError, OSError) as err:  # the log stays as it is; tried again later
            log.error("store: cannot start a new operation log segment: %s", err)
            return
        sealed = self._sealed
        self._sealed = (self._unapplied if sealed is None else sealed[0] + self._unapplied,
                        upto)
        self._unapplied = []

    def _applied(self, upto: int, n: int, used: int) -> None:
        """On the loop: the backend has the log up to segment ``upto``."""
        self._applying = False
        self.applications += 1
        self.ops_applied += n
        self.db_used = used
        self.oplog.applied(upto)
        if self.max_size:
            self._check_size()
        urgent = self._failed is not None or self._over_size
        if (self._unapplied or self._sealed is not None) and (
                urgent or self.oplog.current_size > self.apply_bytes):
            self._start_apply(now=urgent)
        if self._idle is not None:
            self._idle.set()

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the process is ending
            pass

    def _run(self) -> None:
        """The writer thread: applications, status and compaction, one at a time."""
        while True:
            job = self._jobs.get()
            kind = job[0]
            if kind == _APPLY:
                self._apply(job[1], job[2])
            elif kind == _CALL:
                fn, fut = job[1], job[2]
                try:
                    result = fn()
                except Exception as err:
                    if fut is not None:
                        self._call(_set_exception, fut, err)
                else:
                    if fut is not None:
                        self._call(_set_result, fut, result)
            else:
                try:
                    with self._fd_lock:
                        self.oplog.close()
                    self.backend.close()
                finally:
                    self._call(_set_result, job[1], None)
                return

    def _apply(self, live: list[Op], upto: int) -> None:
        """Write the committed operations into the backend, retrying until it takes them."""
        ops = coalesce([live])
        if not ops:
            # Everything cancelled (every row stored was deleted again): no transaction.
            # The segments may go without the backend recording them: what they hold
            # leaves nothing behind (a delete in a later segment of a row put in them
            # deletes nothing at a replay).
            self._call(self._applied, upto, 0, self.db_used)
            return
        ops.append((APPLIED, upto))
        delay = RETRY_FIRST
        while True:
            try:
                self.backend.write(ops)
                break
            except Exception as err:  # full, or worse: the log keeps it all; retry
                error = err if isinstance(err, StoreError) else StoreError(
                    f"{self.backend.path}: {err!r}")
                self._call(self._apply_failed, error)
            if self._give_up.wait(delay):
                return
            delay = min(delay * 2, RETRY_MAX)
        self._call(self._applied, upto, len(ops) - 1, self.backend_used())

    def _apply_failed(self, err: StoreError) -> None:
        text = str(err)
        if text != self.last_error:
            log.error("store: applying the operation log failed (retrying; the log keeps "
                      "every commit): %s", text)
        self.last_error = text

    async def _on_writer(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the writer thread, after the writes handed over before it."""
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self._thread is None:
            return fn()
        self._jobs.put((_CALL, fn, fut))
        return await fut

    # --- operator views -----------------------------------------------------------------

    async def applied(self, timeout: float = 5.0) -> None:
        """Apply every committed batch to the backend now, and wait for it (so that what
        the backend counts is current)."""
        self._handoff()
        deadline = time.monotonic() + timeout
        while (self._unapplied or self._applying or self._sealed is not None) \
                and time.monotonic() < deadline:
            if not self._applying:
                self._start_apply(now=True)
            if self._idle is None:
                return
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return

    async def status(self) -> dict[str, object]:
        """The backend's figures (after applying the log to it) and the journal's: commits,
        commit latency p50/p99, the log, the state."""
        await self.applied()
        backend_status = await self._on_writer(self.backend.status)
        assert isinstance(backend_status, dict)
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
        return dict(backend_status, durability=self.durability, commits=self.commits,
                    ops_written=self.ops_written, ops_cancelled=self.ops_cancelled,
                    pending=sum(1 for op in self._ops if op is not None)
                    + len(self._failed or ()),
                    log_bytes=self.oplog.size, applications=self.applications,
                    ops_applied=self.ops_applied,
                    size=_int(backend_status.get("size")) + self.oplog.size,
                    commit_p50_ms=round(p50 * 1000, 3), commit_p99_ms=round(p99 * 1000, 3),
                    full=self.gate.full, last_error=self.last_error,
                    last_compaction=self.last_compaction)

    async def compact(self) -> dict[str, object]:
        await self.applied()
        result = await self._on_writer(self.backend.compact)
        assert isinstance(result, dict)
        self.last_compaction = dict(result, at=time.time())
        return result


def coalesce(batches: list[list[Op]]) -> list[Op]:
    """The committed batches as the operations the backend still needs, in order: a queue
    row, a message or an awaiting-PUBREL id inserted and deleted within them is neither
    (its packet id change folded into the insert); of a module's record only its last
    put or delete, and neither when it was put new (absent before) and deleted; everything
    else as it came."""
    out: list[Op | None] = []
    #: (space, key) -> [index of its last KV_PUT, whether the key was absent before it]
    kv_put: dict[tuple[object, object], tuple[int, bool]] = {}
    q_put: dict[tuple[object, object], int] = {}
    q_mods: dict[tuple[object, object], list[int]] = {}
    msg_put: dict[object, int] = {}
    rel_put: dict[tuple[object, object], int] = {}
    for ops in batches:
        for op in ops:
            code = op[0]
            if code == Q_PUT:
                q_put[(op[1], op[2])] = len(out)
            elif code == Q_PID or code == Q_REL:
                key = (op[1], op[2])
                i = q_put.get(key)
                if i is not None and code == Q_PID:
                    row = out[i]
                    assert row is not None
                    out[i] = row[:8] + (op[3],) + row[9:]
                    continue
                q_mods.setdefault(key, []).append(len(out))
            elif code == Q_DEL:
                key = (op[1], op[2])
                i = q_put.pop(key, None)
                mods = q_mods.pop(key, ())
                if i is not None:
                    out[i] = None
                    for j in mods:
                        out[j] = None
                    continue
            elif code == MSG_PUT:
                msg_put[op[1]] = len(out)
            elif code == MSG_DEL:
                i = msg_put.pop(op[1], None)
                if i is not None:
                    out[i] = None
                    continue
            elif code == REL_PUT:
                rel_put[(op[1], op[2])] = len(out)
            elif code == REL_DEL:
                i = rel_put.pop((op[1], op[2]), None)
                if i is not None:
                    out[i] = None
                    continue
            elif code == KV_PUT:
                key = (op[1], op[2])
                prev = kv_put.get(key)
                if prev is not None:
                    out[prev[0]] = None
                    new = prev[1]
                else:
                    new = len(op) == 5 and bool(op[4])
                kv_put[key] = (len(out), new)
                out.append(op[:4])
                continue
            elif code == KV_DEL:
                prev = kv_put.pop((op[1], op[2]), None)
                if prev is not None:
                    out[prev[0]] = None
                    if prev[1]:  # never reached the backend: nothing to delete
                        continue
            elif code == KV_DELS:  # the backend gets KV_DELs
                space = op[1]
                keys = op[2]
                assert isinstance(keys, tuple)
                for key in keys:
                    prev = kv_put.pop((space, key), None)
                    if prev is not None:
                        out[prev[0]] = None
                        if prev[1]:
                            continue
                    out.append((KV_DEL, space, key))
                continue
            out.append(op)
    return [_encoded(op) for op in out if op is not None]


def replay(oplog: OpLog, backend: Backend, restored: Restored) -> tuple[Restored, int]:
    """At start: the log segments the backend does not have yet, applied to it (with the
    segment they reach); the backend read again; the log emptied. Returns the state and
    the number of operations replayed. Raises StoreError for a corrupt log."""
    batches: list[list[Op]] = []
    upto = 0
    for segment, _seq, ops in oplog.replay(after=restored.applied_seq):
        batches.append(ops)
        upto = segment
    n = 0
    if batches:
        ops = coalesce(batches)
        n = len(ops)
        backend.write(ops + [(APPLIED, upto)])
        restored = backend.reload()
    oplog.remove_all()
    oplog.open(first=max(upto, restored.applied_seq) + 1)
    return restored, n


def _merge_failed(failed: list[Op], ops: list[Op]) -> None:
    """Add ``ops`` to the batch a full store retries; a retained message replaced meanwhile
    keeps only its last version (retained messages, QoS 0 ones too, are not refused while
    full: without this the batch would grow with every one)."""
    topics = {op[1] for op in ops if op[0] == RET_PUT or op[0] == RET_DEL}
    if topics:
        failed[:] = [op for op in failed if not (op[0] == RET_PUT and op[1] in topics)]
    failed += ops


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _grows(ops: list[Op]) -> bool:
    """Whether a batch adds data (anything but deletes and flag changes)."""
    for op in ops:
        code = op[0]
        if code == Q_PUT or code == MSG_PUT or code == RET_PUT or code == SUB_PUT \
                or code == REL_PUT or code == KV_PUT:
            return True  # (a session row's update is small, and must pass: a CONNACK waits)
    return False


def split_freeing(ops: list[Op]) -> tuple[list[Op], list[Op]]:
    """(deletes and small updates that may be applied before every other op, the rest).

    A delete may go first when nothing earlier in ``ops`` creates what it deletes: then
    applying it earlier gives the same end state; likewise a session row's update and a
    queue row's packet id or PUBREC state, when nothing earlier writes that client's rows
    or creates that row. Deleting first is what lets a full store take the rest (the freed
    pages are reused); the updates let a reconnecting subscriber's CONNACK and PUBLISHes
    (held for them) go out, so that it can acknowledge its queue and make the room."""
    freeing: list[Op] = []
    rest: list[Op] = []
    created: set[object] = set()  # keys that ops kept in ``rest`` create or change
    clients: set[object] = set()  # clients that ops kept in ``rest`` write rows of
    retained_put = False
    for op in ops:
        code = op[0]
        if code == Q_DEL:
            movable = ("q", op[1], op[2]) not in created
        elif code == MSG_DEL:
            movable = ("m", op[1]) not in created
        elif code == REL_DEL:
            movable = ("r", op[1], op[2]) not in created
        elif code == SUB_DEL:
            movable = ("s", op[1], op[2]) not in created
        elif code == RET_DEL:
            movable = ("t", op[1]) not in created
        elif code == KV_DEL:
            movable = ("k", op[1], op[2]) not in created
        elif code == KV_DELS:
            keys = op[2]
            assert isinstance(keys, tuple)
            movable = not any(("k", op[1], key) in created for key in keys)
        elif code == RET_CLEAR:
            movable = not retained_put
        elif code == SESSION_DEL or code == SESSION_PUT:
            movable = op[1] not in clients
        elif code == Q_PID or code == Q_REL:  # an update of a row committed before
            movable = ("q", op[1], op[2]) not in created
        else:
            movable = False
        if movable:
            freeing.append(op)
            continue
        rest.append(op)
        if code == Q_PUT or code == Q_PID or code == Q_REL:
            created.add(("q", op[1], op[2]))
            clients.add(op[1])
        elif code == MSG_PUT:
            created.add(("m", op[1]))
        elif code == REL_PUT:
            created.add(("r", op[1], op[2]))
            clients.add(op[1])
        elif code == SUB_PUT:
            created.add(("s", op[1], op[2]))
            clients.add(op[1])
        elif code == RET_PUT:
            created.add(("t", op[1]))
            retained_put = True
        elif code == KV_PUT:
            created.add(("k", op[1], op[2]))
        elif code == SESSION_PUT:
            clients.add(op[1])
    return freeing, rest


def _set_result(fut: asyncio.Future[Any], value: object) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)

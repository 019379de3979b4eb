"""The store's journal: what the core changes becomes operations, group-committed by one
writer thread; acknowledgements wait for the commit (the core's ``CommitGate``).

The core calls the :class:`~mqttd.core.services.SessionStore` methods on the loop's
thread as durable state changes. Each call appends an operation to the batch being
gathered and advances ``gate.issued``. At the end of the loop turn the batch goes to the
writer thread, unless the writer is still committing the previous one: then it keeps
growing until that commit is done. So commits are as frequent as the disk allows and as
large as the load makes them (group commit), with no timer: one commit per loop turn at
low load, thousands of operations per commit under load.

A batch not yet handed over is still editable: a delivery acknowledged before its row
was handed to the writer cancels its insert (and its message's, when no other queue
holds it), so an online subscriber that keeps up costs the disk little. At the hand-over,
a message first stored in the batch and held by one session only goes into that
session's queue row (inline) instead of a msgs row of its own: one insert and one delete
per message instead of two of each; it gets a msgs row when a second session takes it.

The writer reports each commit back with ``call_soon_threadsafe``; ``gate.committed``
advances and ``on_commit`` lets the connections holding acknowledgements write them.
A write that does not fit (disk full, the store's size limit) is retried by the writer
until it does; meanwhile ``gate.full`` makes the broker refuse QoS 1/2 messages that
would need storing (0x97), and nothing acknowledged is lost. While full, the loop keeps
handing batches over and the writer merges them into the one it retries, committing
first, on their own, the deletes nothing earlier depends on (subscribers acknowledging
their queues): they free the room the rest needs.
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
    Backend,
    Op,
    StoreError,
)

log = logging.getLogger("mqttd.store")

__all__ = ["Journal", "message_packet", "options_byte", "wall_expiry"]

#: Seconds between retries of a write that failed (doubling up to the maximum).
RETRY_FIRST = 0.05
RETRY_MAX = 2.0
#: Commit latencies kept for the percentiles of ``ctl store status``.
LATENCY_SAMPLES = 1000

_WRITE, _CALL, _CLOSE = 0, 1, 2


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
    """The core's :class:`~mqttd.core.services.SessionStore` on a :class:`Backend`."""

    def __init__(self, backend: Backend, durability: str, last_msg_id: int = 0) -> None:
        self.backend = backend
        self.durability = durability
        self.gate = CommitGate()
        #: Called on the loop after every commit (the flusher writes what was held).
        self.on_commit: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: The batch being gathered (None: an operation cancelled before the hand-over).
        self._ops: list[Op | None] = []
        self._scheduled = False
        #: Batches handed to the writer and not yet reported committed.
        self._busy = 0
        #: Set when closing while the store is full: the writer gives up the batch it
        #: retries (nothing in it was acknowledged: acknowledgements wait for it).
        self._give_up = threading.Event()
        #: (client id, qseq) -> index in _ops of its Q_PUT; msg id -> index of its MSG_PUT;
        #: (client id, packet id) -> index of REL_PUT; topic -> index of RET_PUT. Only for
        #: the batch being gathered.
        self._q_pending: dict[tuple[str, int], int] = {}
        #: msg id -> [index of its MSG_PUT, index of its first Q_PUT, the message]
        self._msg_pending: dict[int, list[Any]] = {}
        self._rel_pending: dict[tuple[str, int], int] = {}
        self._ret_pending: dict[str, int] = {}
        #: Every stored message -> [msg id, number of queue rows referencing it, 1 if its one
        #: copy is inline in a queue row (no msgs row) else 0].
        self._msgs: dict[Message, list[int]] = {}
        self._last_id = last_msg_id
        # Figures for ctl store status.
        self.commits = 0
        self.ops_written = 0
        self.ops_cancelled = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.last_error = ""
        self.last_compaction: dict[str, object] | None = None
        self._idle: asyncio.Event | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer thread (the backend is open and restored)."""
        self._loop = loop
        self._idle = asyncio.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="mqttd-store", daemon=True)
        self._thread.start()
        if self._ops:  # issued while restoring (expired sessions, wills sent)
            self._scheduled = True
            loop.call_soon(self._handoff)

    async def aclose(self, timeout: float = 30.0) -> None:
        """Commit what is pending, then close the backend. If the disk stays full past
        ``timeout`` the rest is given up, and the log says how much."""
        if self._thread is None:
            self.backend.close()
            return
        self._handoff()
        assert self._idle is not None
        try:
            while self._busy or self._ops:
                self._idle.clear()
                # A full store will not take them: a short wait for room, then give up.
                await asyncio.wait_for(self._idle.wait(), 5.0 if self.gate.full else timeout)
                self._handoff()
        except TimeoutError:
            pending = sum(1 for op in self._ops if op is not None)
            log.error("store: giving up %d operations not written before shutdown (%s); "
                      "none of them was acknowledged to a client", pending,
                      self.last_error or "the store did not answer")
            self._give_up.set()
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
            self._scheduled = True
            loop = self._loop
            if loop is not None:
                loop.call_soon(self._handoff)
        return len(ops) - 1

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
        pending = None
        if entry is None:
            self._last_id = mid = self._last_id + 1
            self._msgs[msg] = [mid, 1, 0]
            pending = self._msg_pending[mid] = [self._append(
                (MSG_PUT, mid, message_packet(msg), msg.sender, msg.timestamp,
                 wall_expiry(msg))), -1, msg]
        else:
            entry[1] += 1
            mid = entry[0]
            if entry[2]:  # its one copy is inline in another row: a second holder needs a row
                entry[2] = 0
                self._msg_pending[mid] = [self._append(
                    (MSG_PUT, mid, message_packet(msg), msg.sender, msg.timestamp,
                     wall_expiry(msg))), -1, msg]
        idx = self._q_pending[(client_id, qseq)] = self._append(
            (Q_PUT, client_id, qseq, mid, delivery[1], delivery[2], delivery[3],
             _share_name(delivery[4]), packet_id))
        if pending is not None:
            pending[1] = idx

    def set_inflight(self, client_id: str, qseq: int, packet_id: int) -> None:
        idx = self._q_pending.get((client_id, qseq))
        if idx is not None:  # still in the batch being gathered: give it its packet id
            op = self._ops[idx]
            assert op is not None
            self._ops[idx] = op[:8] + (packet_id,) + op[9:]
            return
        self._append((Q_PID, client_id, qseq, packet_id))

    def set_released(self, client_id: str, qseq: int) -> None:
        self._append((Q_REL, client_id, qseq))

    def remove_delivery(self, client_id: str, qseq: int, msg: Message) -> None:
        idx = self._q_pending.pop((client_id, qseq), None)
        if idx is not None:  # never handed to the writer: nothing to delete
            self._ops[idx] = None
            self.ops_cancelled += 1
        else:
            self._append((Q_DEL, client_id, qseq))
        entry = self._msgs.get(msg)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del self._msgs[msg]
        mid = entry[0]
        pending = self._msg_pending.pop(mid, None)
        if pending is not None:
            self._ops[pending[0]] = None
            self.ops_cancelled += 1
        elif not entry[2]:  # an inline copy goes with its row
            self._append((MSG_DEL, mid))

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
        self._msgs[msg] = [msg_id, refs, 1 if inline else 0]

    def forget_row(self, client_id: str, qseq: int) -> None:
        """A restored queue row that cannot be used (its message is unreadable)."""
        self._append((Q_DEL, client_id, qseq))

    def forget_message(self, msg_id: int) -> None:
        """A restored message that is not used (unreadable or expired): rows referencing it
        are forgotten one by one (``forget_row``)."""
        self._append((MSG_DEL, msg_id))

    # --- the hand-over to the writer ------------------------------------------------------

    def _handoff(self) -> None:
        self._scheduled = False
        if (self._busy and not self.gate.full) or not self._ops or self._thread is None:
            return
        ops = self._ops
        self._ops = []
        self._q_pending.clear()
        if self._msg_pending:
            self._inline(ops)
        self._msg_pending.clear()
        self._rel_pending.clear()
        self._ret_pending.clear()
        self._busy += 1
        gate = self.gate
        gate.taken = gate.issued
        self._jobs.put((_WRITE, ops, gate.issued))

    def _inline(self, ops: list[Op | None]) -> None:
        """Messages first stored in this batch and held by one queue row only go into that
        row: its Q_PUT takes the MSG_PUT's packet, sender, timestamp and expiry."""
        msgs = self._msgs
        for put_idx, q_idx, msg in self._msg_pending.values():
            entry = msgs.get(msg)
            if entry is None or entry[1] != 1 or q_idx < 0:
                continue
            put = ops[put_idx]
            row = ops[q_idx]
            if put is None or row is None or len(row) != 9:
                continue
            ops[q_idx] = row + put[2:]
            ops[put_idx] = None
            entry[2] = 1

    def _written(self, seq: int, seconds: float, n: int, recovered: bool, batches: int = 1
                 ) -> None:
        """On the loop: ``batches`` handed-over batches are committed (or given up)."""
        self._busy -= batches
        gate = self.gate
        gate.committed = seq
        self.commits += 1
        self.ops_written += n
        self.latencies.append(seconds)
        if recovered:
            gate.full = False
            log.warning("store: writes succeed again (%s): QoS 1/2 messages are accepted",
                        self.backend.path or "memory")
            self.last_error = ""
        if self._ops:
            self._handoff()
        if self.on_commit is not None:
            self.on_commit()
        if self._idle is not None:
            self._idle.set()

    def _failed(self, err: StoreError) -> None:
        """On the loop: a write failed and will be retried; say so once."""
        gate = self.gate
        text = str(err)
        if not gate.full:
            gate.full = True
            log.error("ALARM store: %s; QoS 1/2 messages that need storing are refused "
                      "(0x97) until writes succeed again; retrying", text)
        self.last_error = text

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the process is ending
            pass

    def _run(self) -> None:
        """The writer thread: one job at a time, in order."""
        later: list[tuple[Any, ...]] = []
        while True:
            job = later.pop(0) if later else self._jobs.get()
            kind = job[0]
            if kind == _WRITE:
                self._write(job, later)
            elif kind == _CALL:
                fn, fut = job[1], job[2]
                try:
                    result = fn()
                except Exception as err:
                    self._call(_set_exception, fut, err)
                else:
                    self._call(_set_result, fut, result)
            else:
                try:
                    self.backend.close()
                finally:
                    self._call(_set_result, job[1], None)
                return

    def _write(self, job: tuple[Any, ...], later: list[tuple[Any, ...]]) -> None:
        """Commit one batch; if it fails, retry it (merged with the batches handed over
        meanwhile, their deletes first) until it succeeds or the journal gives up."""
        backend = self.backend
        ops = [op for op in job[1] if op is not None]
        seq = job[2]
        batches = 1
        start = time.perf_counter()
        delay = RETRY_FIRST
        failed = False
        while ops:
            try:
                backend.write(ops)
                break
            except StoreError as err:
                failed = True
                self._call(self._failed, err)
            except Exception as err:  # a bug or an unforeseen error: never lose the
                failed = True           # batch silently, keep retrying
                self._call(self._failed, StoreError(f"{backend.path}: {err!r}"))
            if self._give_up.wait(delay):
                break
            delay = min(delay * 2, RETRY_MAX)
            while True:  # what the loop handed over meanwhile joins the retry
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt[0] == _WRITE:
                    ops += [op for op in nxt[1] if op is not None]
                    seq = nxt[2]
                    batches += 1
                else:
                    later.append(nxt)
            freeing, rest = split_freeing(ops)
            if freeing:
                try:
                    backend.write(freeing)
                    ops = rest
                except Exception:
                    pass  # not even the deletes fit: retry everything as it was
        self._call(self._written, seq, time.perf_counter() - start, len(ops), failed,
                   batches)

    async def _on_writer(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the writer thread, after the writes handed over before it."""
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self._thread is None:
            return fn()
        self._jobs.put((_CALL, fn, fut))
        return await fut

    # --- operator views -----------------------------------------------------------------

    async def status(self) -> dict[str, object]:
        """The backend's figures and the journal's: commits, latency p50/p99, state."""
        backend_status = await self._on_writer(self.backend.status)
        assert isinstance(backend_status, dict)
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
        return dict(backend_status, durability=self.durability, commits=self.commits,
                    ops_written=self.ops_written, ops_cancelled=self.ops_cancelled,
                    pending=sum(1 for op in self._ops if op is not None),
                    commit_p50_ms=round(p50 * 1000, 3), commit_p99_ms=round(p99 * 1000, 3),
                    full=self.gate.full, last_error=self.last_error,
                    last_compaction=self.last_compaction)

    async def compact(self) -> dict[str, object]:
        result = await self._on_writer(self.backend.compact)
        assert isinstance(result, dict)
        self.last_compaction = dict(result, at=time.time())
        return result


def split_freeing(ops: list[Op]) -> tuple[list[Op], list[Op]]:
    """(deletes that may be applied before every other op, the rest in order).

    A delete may go first when nothing earlier in ``ops`` creates what it deletes: then
    applying it earlier gives the same end state. Deleting first is what lets a full store
    take the rest (the freed pages are reused)."""
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
        elif code == RET_CLEAR:
            movable = not retained_put
        elif code == SESSION_DEL:
            movable = op[1] not in clients
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
        elif code == SESSION_PUT:
            clients.add(op[1])
    return freeing, rest


def _set_result(fut: asyncio.Future[Any], value: object) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)

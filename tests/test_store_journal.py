"""The journal and the restore, in process: the core's state changes written through the
real Journal to a real backend (memory and SQLite), read back by restore() into a new
registry, and compared; the batch editing (cancelled inserts) and the commit gate."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from core_util import ManualTimers, Owner

from mqttd.config import Zone
from mqttd.core.dispatch import Dispatcher
from mqttd.core.message import Message
from mqttd.core.registry import Registry
from mqttd.core.session import Session
from mqttd.hooks import Hooks
from mqttd.metrics import Metrics
from mqttd.mqtt.packets import SubOpts
from mqttd.store.base import KV_DEL, KV_DELS, KV_PUT, MSG_PUT, Q_DEL, Q_PUT, Backend, Restored
from mqttd.store.journal import Journal, coalesce, replay, split_freeing
from mqttd.store.kv import KVStore
from mqttd.store.memory import MemoryBackend, MemoryState
from mqttd.store.oplog import OpLog
from mqttd.store.restore import restore
from mqttd.store.sqlite import SqliteBackend


class Env:
    """A registry and dispatcher on manual timers, keeping durable state in ``journal``."""

    def __init__(self, journal: Journal) -> None:
        self.zone = Zone()
        self.timers = ManualTimers()
        self.metrics = Metrics()
        self.hooks = Hooks()
        self.dispatcher = Dispatcher(self.metrics, self.hooks)
        self.wills: list[Message] = []
        self.registry = Registry(self.dispatcher, self.metrics, self.hooks, self.timers,
                                 self.wills.append, [self.zone.await_rel_timeout],
                                 clock=self.timers.clock)
        self.registry.store = journal
        self.dispatcher.retainer.durable = journal
        self.journal = journal

    def open(self, owner: Owner, expiry: int = 100, clean: bool = True,
             zone: Zone | None = None) -> Session:
        session, _ = self.registry.open_session(owner, zone or self.zone, clean, expiry,
                                                max_inflight=32)
        return session


@pytest.fixture(params=["memory", "sqlite"])
def reopen(request: Any, tmp_path: Any) -> Any:
    """A factory of backends that see what the previous one wrote."""
    state = MemoryState()

    def make() -> Backend:
        if request.param == "memory":
            return MemoryBackend(state)
        return SqliteBackend(str(tmp_path / "mqttd.db"))

    return make


def _oplog(tmp_path: Any) -> OpLog:
    return OpLog(str(tmp_path / "mqttd.db"))


def _journal(backend: Backend, tmp_path: Any, last_msg_id: int = 0) -> Journal:
    """A journal on ``backend`` (opened, its log replayed) and a fresh log."""
    restored = backend.open()
    oplog = _oplog(tmp_path)
    restored, _ = replay(oplog, backend, restored)
    return Journal(backend, "process", oplog, max(last_msg_id, restored.last_msg_id))


async def _applied(journal: Journal) -> None:
    """Let the writer apply every committed batch to the backend."""
    await _settle(journal)
    journal._start_apply(now=True)
    for _ in range(400):
        await asyncio.sleep(0.005)
        if not journal._applying and not journal._unapplied and journal._sealed is None:
            return
    raise AssertionError("the journal did not apply")


async def _settle(journal: Journal) -> None:
    """Let the loop hand the batch over and the writer commit it."""
    for _ in range(200):
        await asyncio.sleep(0.005)
        gate = journal.gate
        if gate.committed == gate.issued and not journal._ops:
            return
    raise AssertionError("the journal did not commit")


def _msg(topic: str, payload: bytes, qos: int = 1, **props: Any) -> Message:
    return Message(topic, payload, qos, False, props or None, "pub")


@pytest.mark.parametrize("ending", ["closed", "killed"])
def test_state_written_through_the_journal_is_restored(reopen: Any, tmp_path: Any,
                                                        ending: str) -> None:
    """Closed: everything applied to the backend at close. Killed: the journal stops with
    its batches only in the operation log, which the next start replays."""
    async def write() -> dict[str, Any]:
        backend = reopen()
        journal = _journal(backend, tmp_path)
        journal.start(asyncio.get_running_loop())
        env = Env(journal)
        owner = Owner("c1", will=Message("will/c1", b"gone", 1, False, None, "c1"),
                      will_delay=30)
        session = env.open(owner, zone=Zone(name="big", max_mqueue_len=5000))
        env.dispatcher.subscribe(session, "a/+", SubOpts(1, True, True, 2), 7)
        env.dispatcher.subscribe(session, "$share/g/b/#", SubOpts(2), 0)
        env.dispatcher.subscribe(session, "gone/x", SubOpts(1), 0)
        env.dispatcher.unsubscribe(session, "gone/x")
        env.registry.detach(owner)  # offline: deliveries queue
        for i in range(5):
            env.dispatcher.publish(_msg("a/1", b"m%d" % i))
        env.dispatcher.publish(_msg("b/x", b"shared", 2))
        env.dispatcher.publish(_msg("a/2", b"q0", 0))  # QoS 0: queued, never stored
        env.dispatcher.publish(Message("r/1", b"kept", 1, True, None, "pub"))
        env.dispatcher.publish(Message("$SYS/x", b"sys", 0, True, None, None))
        # Two deliveries go in flight (as a resuming channel's drain does); one of them
        # gets its PUBREC... it is QoS 1, so acknowledge it instead; the shared QoS 2 one is
        # released. An incoming QoS 2 id awaits PUBREL.
        first = session.mqueue.popleft()
        pid1 = session.start_inflight(first)
        second = session.mqueue.popleft()
        session.start_inflight(second)
        assert session.ack(pid1, 1) is first
        for d in list(session.mqueue):
            if d[1] == 2:
                session.mqueue.remove(d)
                pid3 = session.start_inflight(d)
                assert session.ack(pid3, 2) is d
                session.released(pid3)
        session.await_rel(42, 0.0)
        session.await_rel(43, 0.0)
        session.release(43)
        await _settle(journal)
        # A QoS 1 delivery that went in flight from the queue comes back queued (its packet
        # id is not kept: it is sent again anyway); QoS 2 keeps its packet id.
        expected = {
            "subs": dict(session.subscriptions),
            "queue": [d[0].payload for d in session.inflight.values() if d[1] == 1]
            + [d[0].payload for d in session.mqueue if d[1]],
            "inflight": {pid: (d[0].payload, d[1]) for pid, d in session.inflight.items()
                         if d[1] == 2},
            "wait_comp": set(session.wait_comp or ()),
            "awaiting": set(session.awaiting_rel),
        }
        if ending == "closed":
            await journal.aclose()
            assert not journal.oplog.segments()
        else:  # as kill -9 would leave it: the writer never applied; the log has it all
            assert journal.oplog.segments()
        return expected

    expected = asyncio.run(write())

    async def read() -> None:
        backend = reopen()
        journal = _journal(backend, tmp_path)
        restored = backend.reload()
        env = Env(journal)
        report = restore(restored, journal, env.registry, env.dispatcher.retainer,
                         {"default": env.zone, "big": Zone(name="big", max_mqueue_len=5000)})
        assert env.registry.sessions["c1"].max_mqueue_len == 5000  # its zone's limit
        assert report.sessions == 1 and report.wills == 1 and report.retained == 1
        session = env.registry.sessions["c1"]
        assert session.subscriptions == expected["subs"]
        assert [d[0].payload for d in session.mqueue] == expected["queue"]
        assert {pid: (d[0].payload, d[1]) for pid, d in session.inflight.items()} == \
            expected["inflight"]
        assert set(session.wait_comp or ()) == expected["wait_comp"]
        assert set(session.awaiting_rel) == expected["awaiting"] == {42}
        # Routes are back: a new message reaches the restored session's queue.
        env.dispatcher.publish(_msg("a/9", b"after"))
        assert session.mqueue[-1][0].payload == b"after"
        # The shared delivery points at its group again.
        shared = [d for d in session.inflight.values() if d[1] == 2]
        assert shared and shared[0][4] is not None
        retained = env.dispatcher.retainer.match("#")
        assert [m.payload for m in retained] == [b"kept"]
        # The will waits out the rest of its delay (the session went offline just now).
        assert env.timers.pending_for("_fire_will")
        # Every stored delivery is known to the session, so acknowledging it deletes it.
        assert len(session.refs) == len(session.mqueue) + len(session.inflight)
        journal.start(asyncio.get_running_loop())
        head = session.mqueue.popleft()
        pid = session.start_inflight(head)
        assert session.ack(pid, 1) is head
        await _settle(journal)
        await journal.aclose()
        again = reopen()
        restored_again, _ = replay(_oplog(tmp_path), again, again.open())
        rows = restored_again.sessions[0].queue
        assert len(rows) == len(expected["queue"]) + len(expected["inflight"])

    asyncio.run(read())


def test_a_delivery_acknowledged_before_the_hand_over_is_never_written(tmp_path: Any) -> None:
    journal = _journal(MemoryBackend(), tmp_path)  # not started: the batch stays open
    env = Env(journal)
    owner = Owner("c1")
    session = env.open(owner)
    env.dispatcher.subscribe(session, "t", SubOpts(1), 0)
    ops_before = len([op for op in journal._ops if op is not None])
    msg = _msg("t", b"x")
    delivery = (msg, 1, False, (), None)
    pid = session.start_inflight(delivery)
    last = journal._ops[-1]
    assert last is not None and last[0] == Q_PUT and len(last) == 13  # the message inline
    assert session.ack(pid, 1) is delivery
    assert len([op for op in journal._ops if op is not None]) == ops_before
    assert journal.ops_cancelled == 1
    assert journal._msgs == {}


def test_a_message_is_stored_once_for_every_session_that_holds_it(tmp_path: Any) -> None:
    journal = _journal(MemoryBackend(), tmp_path)
    env = Env(journal)
    sessions = []
    for cid in ("a", "b", "c"):
        owner = Owner(cid)
        session = env.open(owner)
        env.dispatcher.subscribe(session, "t/#", SubOpts(1), 0)
        env.registry.detach(owner)
        sessions.append(session)
    env.dispatcher.publish(_msg("t/1", b"one"))
    puts = [op for op in journal._ops if op is not None and op[0] == MSG_PUT]
    rows = [op for op in journal._ops if op is not None and op[0] == Q_PUT]
    assert len(puts) == 1 and len(rows) == 3
    assert {op[3] for op in rows} == {puts[0][1]}


def test_the_gate_follows_the_commits(tmp_path: Any) -> None:
    async def main() -> None:
        journal = _journal(MemoryBackend(), tmp_path)
        journal.start(asyncio.get_running_loop())
        env = Env(journal)
        commits: list[int] = []
        journal.on_commit = lambda: commits.append(journal.gate.committed)
        owner = Owner("c1")
        env.open(owner)
        gate = journal.gate
        assert gate.issued > gate.committed == 0
        issued = gate.issued
        await _settle(journal)
        assert gate.committed == gate.taken == issued
        assert commits and commits[-1] == issued
        await journal.aclose()

    asyncio.run(main())


def test_a_session_that_loses_its_expiry_leaves_the_store(tmp_path: Any) -> None:
    journal = _journal(MemoryBackend(), tmp_path)
    env = Env(journal)
    owner = Owner("c1")
    session = env.open(owner, expiry=100)
    assert session.store is journal
    env.registry.detach(owner)
    owner2 = Owner("c1")
    session2 = env.open(owner2, expiry=0, clean=False)  # resumed without an expiry
    assert session2 is session and session.store is None
    assert journal._ops[-1] == (2, "c1")  # SESSION_DEL


def test_deletes_nothing_earlier_creates_go_first_when_the_store_is_full() -> None:
    from mqttd.store.base import MSG_DEL, Q_DEL, RET_CLEAR, RET_PUT, SESSION_DEL, SESSION_PUT
    from mqttd.store.journal import split_freeing

    ops = [
        (MSG_PUT, 9, b"p", None, 0.0, 0.0), (Q_PUT, "a", 5, 9, 1, False, (), None, 0),
        (Q_DEL, "a", 1), (MSG_DEL, 1),      # old rows: may go first
        (Q_DEL, "a", 5), (MSG_DEL, 9),      # created above: stay after their inserts
        (SESSION_PUT, "b", 10, 0.0, 0.0, None, 0, "default"), (SESSION_DEL, "b"),  # b written above
        (SESSION_DEL, "c"),                 # nothing of c above: first
        (RET_PUT, "t", b"p", None, 0.0, 0.0), (RET_CLEAR,),
    ]
    freeing, rest = split_freeing(ops)
    # b's row update and delete go too: nothing before them writes b's rows.
    assert freeing == [(Q_DEL, "a", 1), (MSG_DEL, 1), (SESSION_PUT, "b", 10, 0.0, 0.0, None, 0,
                                                        "default"), (SESSION_DEL, "b"),
                       (SESSION_DEL, "c")]
    assert rest == [op for op in ops if op not in freeing]


def test_a_message_one_session_holds_goes_inline_and_gets_a_row_for_a_second(
        tmp_path: Any) -> None:
    async def main() -> None:
        backend = MemoryBackend()
        journal = _journal(backend, tmp_path)
        journal.start(asyncio.get_running_loop())
        env = Env(journal)
        a = env.open(Owner("a"))
        msg = _msg("t", b"one")
        delivery = (msg, 1, False, (), None)
        a.enqueue(delivery)
        journal._handoff()
        assert journal._msgs[msg][2] == 1  # inline: no msgs row
        await _applied(journal)
        assert backend.state.msgs == {}
        b = env.open(Owner("b"))
        b.enqueue((msg, 1, False, (), None))  # a second holder: now it needs its row
        await _applied(journal)
        mid = journal._msgs[msg][0]
        assert list(backend.state.msgs) == [mid]
        a.mqueue.remove(delivery)
        a.forget(delivery)  # the inline copy goes with a's row; b still holds the message
        await _applied(journal)
        assert list(backend.state.msgs) == [mid]
        env.registry.discard(b, "discarded")  # the last holder: the row goes
        await _applied(journal)
        await journal.aclose()
        assert backend.state.msgs == {}
        assert msg not in journal._msgs

    asyncio.run(main())



def test_coalesce_drops_what_was_inserted_and_deleted_within_the_batches() -> None:
    from mqttd.store.base import MSG_DEL, Q_DEL, Q_PID, Q_REL, REL_DEL, REL_PUT, SUB_DEL, SUB_PUT

    put = (Q_PUT, "a", 1, 9, 2, False, (), None, 0)
    batches = [
        [(MSG_PUT, 9, b"p", None, 0.0, 0.0), put, (Q_PID, "a", 1, 7), (REL_PUT, "a", 3, 0.0)],
        [(Q_REL, "a", 1), (Q_PUT, "a", 2, 9, 1, False, (), None, 0), (Q_DEL, "a", 2),
         (REL_DEL, "a", 3), (SUB_PUT, "a", "t", 1, 0), (SUB_DEL, "a", "t"), (Q_DEL, "a", 0)],
    ]
    assert coalesce(batches) == [
        (MSG_PUT, 9, b"p", None, 0.0, 0.0), (Q_PUT, "a", 1, 9, 2, False, (), None, 7),
        (Q_REL, "a", 1), (SUB_PUT, "a", "t", 1, 0), (SUB_DEL, "a", "t"), (Q_DEL, "a", 0)]
    assert coalesce(batches + [[(Q_DEL, "a", 1), (MSG_DEL, 9)]]) == [
        (SUB_PUT, "a", "t", 1, 0), (SUB_DEL, "a", "t"), (Q_DEL, "a", 0)]


def test_a_log_cut_short_at_its_end_is_a_crash_and_anywhere_else_corruption(
        tmp_path: Any) -> None:
    from mqttd.store.base import StoreError

    oplog = _oplog(tmp_path)
    oplog.open()
    oplog.append([(Q_DEL, "a", 1)], 1)
    oplog.append([(Q_DEL, "a", 2)], 2)
    oplog.close()
    path = oplog.path(oplog.segment)
    with open(path, "rb+") as f:
        data = f.read()
        f.truncate(len(data) - 3)  # the second record, cut by the crash
    assert [ops for _, _, ops in _oplog(tmp_path).replay()] == [[(Q_DEL, "a", 1)]]
    second = _oplog(tmp_path)
    second.open()
    second.append([(Q_DEL, "a", 3)], 3)
    second.close()  # now the cut record is not at the end of the last segment
    with pytest.raises(StoreError, match="corrupt operation log"):
        list(_oplog(tmp_path).replay())


def _restore_ops(tmp_path: Any, ops: list[Any]) -> tuple[Env, Journal]:
    """A store written with ``ops`` (as a previous run left it), restored into a new env."""
    backend = SqliteBackend(str(tmp_path / "mqttd.db"))
    backend.open()
    backend.write(ops)
    backend.close()
    backend = SqliteBackend(str(tmp_path / "mqttd.db"))
    journal = _journal(backend, tmp_path)
    env = Env(journal)
    restore(backend.reload(), journal, env.registry, env.dispatcher.retainer,
            {"default": env.zone})
    return env, journal


def _pkt(topic: str, payload: bytes, qos: int) -> bytes:
    from mqttd.store.journal import message_packet
    return message_packet(Message(topic, payload, qos, False, None, "pub"))


def test_restore_keeps_a_released_qos2_delivery_whose_message_expired(tmp_path: Any) -> None:
    """PUBREC came: only PUBREL is owed, and the client holds the id until it gets it."""
    import time as _time

    from mqttd.store.base import Q_REL, SESSION_PUT
    past = _time.time() - 10
    row = (Q_PUT, "s", 1, 1, 2, False, (), None, 5, _pkt("t", b"x", 2), "pub", past - 5, past)
    queued = (Q_PUT, "s", 2, 2, 1, False, (), None, 0, _pkt("t", b"y", 1), "pub", past - 5, past)
    env, _ = _restore_ops(tmp_path, [(SESSION_PUT, "s", 3600, 1.0, _time.time(), None, 0,
                                      "default"), row, (Q_REL, "s", 1), queued])
    session = env.registry.sessions["s"]
    assert list(session.inflight) == [5] and session.wait_comp == {5}
    assert not session.mqueue  # the expired QoS 1 one that was only queued is gone


def test_an_expired_sessions_shared_deliveries_go_to_its_group(tmp_path: Any) -> None:
    import time as _time

    from mqttd.store.base import SESSION_PUT, SUB_PUT
    long_ago = _time.time() - 1000
    ops = [(SESSION_PUT, "gone", 10, 1.0, long_ago, None, 0, "default"),
           (SUB_PUT, "gone", "$share/g/t", 1, 0),
           (SESSION_PUT, "alive", 3600, 1.0, _time.time(), None, 0, "default"),
           (SUB_PUT, "alive", "$share/g/t", 1, 0)]
    for i in range(1, 4):
        ops.append((Q_PUT, "gone", i, i, 1, False, (), "$share/g/t", 0,
                    _pkt("t", b"m%d" % i, 1), "pub", 1.0, 0.0))
    env, _ = _restore_ops(tmp_path, ops)
    assert "gone" not in env.registry.sessions
    alive = env.registry.sessions["alive"]
    assert [d[0].payload for d in alive.mqueue] == [b"m1", b"m2", b"m3"]


def test_a_session_connected_at_the_crash_is_stored_as_disconnected_at_the_restart(
        tmp_path: Any) -> None:
    import time as _time

    from mqttd.store.base import SESSION_PUT
    env, journal = _restore_ops(tmp_path, [(SESSION_PUT, "c", 4, 1.0, 0.0, None, 0,
                                            "default")])
    puts = [op for op in journal._ops if op is not None and op[0] == SESSION_PUT]
    assert puts and puts[-1][1] == "c" and abs(puts[-1][4] - _time.time()) < 5


async def _rows(journal: Journal) -> dict[str, list[int]]:
    """Queue rows per client as the backend has them (qseqs), read on the writer."""
    restored = await journal._on_writer(journal.backend.reload)
    assert isinstance(restored, Restored)
    return {s.client_id: sorted(r.qseq for r in s.queue) for s in restored.sessions}


@pytest.mark.parametrize("ending", ["closed", "killed"])
def test_a_delivery_acknowledged_after_its_commit_never_reaches_the_backend(
        reopen: Any, tmp_path: Any, ending: str) -> None:
    """Acknowledged after its batch was committed (logged) but before the writer took the
    batch: the put is cancelled on the loop, the writer gets neither it nor its delete,
    and the log (a replay after kill -9) has both. One acknowledged after the writer took
    its batch is deleted from the backend."""
    async def write() -> None:
        backend = reopen()
        journal = _journal(backend, tmp_path)
        journal.start(asyncio.get_running_loop())
        env = Env(journal)
        owner = Owner("c1")
        session = env.open(owner)
        env.dispatcher.subscribe(session, "t", SubOpts(1), 0)
        env.registry.detach(owner)
        for i in range(4):
            env.dispatcher.publish(_msg("t", b"%d" % i))
        await _settle(journal)  # committed: in the log, not yet with the writer
        first = session.mqueue.popleft()
        pid = session.start_inflight(first)
        assert session.ack(pid, 1) is first
        applied = journal.ops_applied
        await _settle(journal)
        await _applied(journal)  # the other three rows (and the session) reach the backend
        # The session's row (opened, then detached: two puts), its subscription and the
        # three rows left; neither the acknowledged row's put nor its delete.
        assert journal.ops_applied - applied == 2 + 1 + 3
        assert await _rows(journal) == {"c1": [2, 3, 4]}
        second = session.mqueue.popleft()
        pid = session.start_inflight(second)
        assert session.ack(pid, 1) is second  # the writer has its row: a real delete
        await _settle(journal)
        if ending == "closed":
            await journal.aclose()
            assert not journal.oplog.segments()

    asyncio.run(write())
    backend = reopen()
    restored, _ = replay(_oplog(tmp_path), backend, backend.open())
    assert {s.client_id: sorted(r.qseq for r in s.queue) for s in restored.sessions} == \
        {"c1": [3, 4]}
    backend.close()


@pytest.mark.parametrize("ending", ["closed", "killed"])
def test_a_delete_only_the_log_gets_goes_before_a_new_row_under_its_key(
        reopen: Any, tmp_path: Any, ending: str) -> None:
    """In one loop turn a committed row is acknowledged (its delete goes only to the log),
    its session ends and begins anew, and the new session's first row has the same key
    (qseq 1): the new row survives both the writer and a replay of the log."""
    async def write() -> None:
        backend = reopen()
        journal = _journal(backend, tmp_path)
        journal.start(asyncio.get_running_loop())
        env = Env(journal)
        owner = Owner("c1")
        session = env.open(owner)
        env.dispatcher.subscribe(session, "t", SubOpts(1), 0)
        delivery = (_msg("t", b"old"), 1, False, (), None)
        pid = session.start_inflight(delivery)
        await _settle(journal)  # committed: in the log, not yet with the writer
        assert session.ack(pid, 1) is delivery
        env.registry.discard(session, "discarded")
        owner2 = Owner("c1")
        again = env.open(owner2)
        assert again is not session
        env.dispatcher.subscribe(again, "t", SubOpts(1), 0)
        env.registry.detach(owner2)
        env.dispatcher.publish(_msg("t", b"new"))
        assert sorted(again.refs.values()) == [1]
        await _settle(journal)
        if ending == "closed":
            await journal.aclose()
            assert not journal.oplog.segments()

    asyncio.run(write())
    backend = reopen()
    restored, _ = replay(_oplog(tmp_path), backend, backend.open())
    assert {s.client_id: sorted(r.qseq for r in s.queue) for s in restored.sessions} == \
        {"c1": [1]}
    backend.close()


@pytest.mark.parametrize("many", [False, True], ids=["delete", "delete_many"])
@pytest.mark.parametrize("ending", ["closed", "killed"])
def test_a_record_deleted_after_its_commit_never_reaches_the_backend(
        reopen: Any, tmp_path: Any, ending: str, many: bool) -> None:
    """A module's record (a bridge's queued message) put new and deleted after its batch
    was committed but before the writer took it: as a queue row, the put is cancelled on
    the loop, the writer gets neither, the log (a replay after kill -9) has both. A record
    that existed before its last put, or that the writer has, is deleted in the backend."""
    async def write() -> None:
        backend = reopen()
        journal = _journal(backend, tmp_path)
        journal.start(asyncio.get_running_loop())
        space = KVStore(journal, {}).space("bridge/b")
        for key in ("1", "2", "3", "4"):
            space.put(key, b"v" + key.encode())
        await _applied(journal)  # the writer has them
        space.put("5", b"v5")
        space.put("2", b"replaced")  # not new: its delete must reach the backend
        await _settle(journal)  # committed: in the log, not yet with the writer
        cancelled = journal.ops_cancelled
        if many:  # (a bridge's acknowledged messages: one op of the log, KV_DELS)
            space.delete_many(["5", "2", "no such key"])
        else:
            assert space.delete("5")
            assert space.delete("2")
        assert journal.ops_cancelled - cancelled == 1  # "5"'s put, in its committed batch
        applied = journal.ops_applied
        await _settle(journal)
        await _applied(journal)
        # "2"'s delete only: "5" neither put nor deleted, "2"'s put folded into its delete.
        assert journal.ops_applied - applied == 1
        assert space.delete("3")  # the writer has it: a real delete
        await _settle(journal)
        if ending == "closed":
            await journal.aclose()
            assert not journal.oplog.segments()

    asyncio.run(write())
    backend = reopen()
    restored, _ = replay(_oplog(tmp_path), backend, backend.open())
    assert restored.kv == {"bridge/b": {"1": b"v1", "4": b"v4"}}
    backend.close()


def test_coalesce_expands_a_multiple_record_delete() -> None:
    """KV_DELS (only the log holds it) reaches the backend as the KV_DELs it stands for:
    none for a key put new within the batches, one for every other key."""
    new = (KV_PUT, "s", "a", b"1", True)
    old = (KV_PUT, "s", "b", b"2")
    assert coalesce([[new, old], [(KV_DELS, "s", ("a", "b", "c"))]]) == [
        (KV_DEL, "s", "b"), (KV_DEL, "s", "c")]
    assert coalesce([[(KV_DELS, "s", ("a",))], [new]]) == [(KV_DEL, "s", "a"), new[:4]]
    # While full, deletes go first unless an earlier op creates a key they delete.
    freeing, rest = split_freeing([old, (KV_DELS, "s", ("x", "y")), (KV_DELS, "s", ("b",))])
    assert freeing == [(KV_DELS, "s", ("x", "y"))]
    assert rest == [old, (KV_DELS, "s", ("b",))]

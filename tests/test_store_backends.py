"""One suite for every store backend: each op's effect, seen through write -> close -> reopen.

The ``reopen`` fixture gives a factory of fresh backends over the same data: a new
SqliteBackend on the same path, or a new MemoryBackend on the same MemoryState. The SQLite
backend then has tests of its own: a full store, damaged files, durability, status, compact.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mqttd.store.base import (
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
    Backend,
    Op,
    QueueRow,
    Restored,
    SessionRow,
    StoredMessage,
    StoreError,
    StoreFull,
)
from mqttd.store.journal import Journal, coalesce, replay
from mqttd.store.kv import KVStore
from mqttd.store.memory import MemoryBackend, MemoryState
from mqttd.store.oplog import OpLog
from mqttd.store.sqlite import SqliteBackend

Reopen = Callable[[], Backend]


@pytest.fixture(params=["memory", "sqlite"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Reopen]:
    """A factory of backends over one store; each call is a restart."""
    made: list[Backend] = []
    state = MemoryState()
    path = str(tmp_path / "data" / "store.db")

    def make() -> Backend:
        backend: Backend = (MemoryBackend(state) if request.param == "memory"
                            else SqliteBackend(path))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def apply(reopen: Reopen, *batches: list[Op]) -> Restored:
    """Write each batch (one transaction each), close, reopen and read back."""
    backend = reopen()
    backend.open()
    for ops in batches:
        backend.write(ops)
    backend.close()
    return restart(reopen)


def restart(reopen: Reopen) -> Restored:
    backend = reopen()
    restored = backend.open()
    backend.close()
    return restored


def packet(n: int, size: int = 40) -> bytes:
    # Not a real PUBLISH: the store keeps packets opaque; NULs and high bytes must survive.
    return bytes([0x32, n & 0xFF, 0, 0xFF]) + bytes((n + i) & 0xFF for i in range(size))


def session(cid: str, expiry: int = 3600, created: float = 1000.5, disconnected: float = 0.0,
            will: bytes | None = None, delay: int = 0, zone: str = "default") -> Op:
    return (SESSION_PUT, cid, expiry, created, disconnected, will, delay, zone)


def msg(msg_id: int, sender: str | None = "pub", ts: float = 1700000000.25,
        expiry_at: float = 0.0, size: int = 40) -> Op:
    return (MSG_PUT, msg_id, packet(msg_id, size), sender, ts, expiry_at)


def qput(cid: str, qseq: int, msg_id: int, qos: int = 1, retain: bool = False,
         subids: tuple[int, ...] = (), share: str | None = None, pid: int = 0) -> Op:
    return (Q_PUT, cid, qseq, msg_id, qos, retain, subids, share, pid)


def by_id(restored: Restored) -> dict[str, SessionRow]:
    return {s.client_id: s for s in restored.sessions}


# --- the shared suite ------------------------------------------------------------------------

def test_new_store_is_empty(reopen: Reopen) -> None:
    backend = reopen()
    assert backend.open() == Restored()
    backend.close()
    assert restart(reopen) == Restored()


def test_session_put_and_replace(reopen: Reopen) -> None:
    will = b"\x30\x05\x00\x01w\x00x"
    restored = apply(reopen, [session("a", 60, 10.0, 0.0, will, 5), session("b")])
    assert by_id(restored)["a"] == SessionRow("a", 60, 10.0, 0.0, will, 5)
    assert by_id(restored)["b"].will is None
    # Replacing the row (e.g. on disconnect) keeps the session's subscriptions and queue.
    restored = apply(reopen, [
        (SUB_PUT, "a", "t/#", 1, 0), msg(1), qput("a", 1, 1), (REL_PUT, "a", 7, 5.0)],
        [session("a", 120, 10.0, 99.5, None, 0)])
    a = by_id(restored)["a"]
    assert (a.expiry_interval, a.created_at, a.disconnected_at, a.will, a.will_delay) == (
        120, 10.0, 99.5, None, 0)
    assert a.subscriptions == [("t/#", 1, 0)]
    assert [q.qseq for q in a.queue] == [1]
    assert a.awaiting_rel == {7: 5.0}
    assert len(restored.sessions) == 2


def test_session_delete_cascades(reopen: Reopen) -> None:
    both = []
    for cid in ("a", "b"):
        both += [session(cid), (SUB_PUT, cid, "x/+", 2, 3), (SUB_PUT, cid, "y", 0, 0),
                 qput(cid, 1, 1), qput(cid, 2, 2), (REL_PUT, cid, 1, 2.0)]
    restored = apply(reopen, [msg(1), msg(2)] + both, [(SESSION_DEL, "a")])
    assert list(by_id(restored)) == ["b"]
    b = by_id(restored)["b"]
    assert sorted(b.subscriptions) == [("x/+", 2, 3), ("y", 0, 0)]
    assert [q.qseq for q in b.queue] == [1, 2]
    assert b.awaiting_rel == {1: 2.0}
    # Recreated under the same id: nothing of the old session comes back.
    restored = apply(reopen, [session("a")])
    a = by_id(restored)["a"]
    assert (a.subscriptions, a.queue, a.awaiting_rel) == ([], [], {})
    assert status_rows(reopen) == {"sessions": 2, "subscriptions": 2, "messages": 2,
                                   "queue": 2, "awaiting_rel": 1, "retained": 0, "users": 0,
                                   "banned": 0, "kv": 0}


def test_delete_and_recreate_in_one_batch(reopen: Reopen) -> None:
    restored = apply(reopen, [session("a", 1), (SUB_PUT, "a", "old", 0, 0), msg(1),
                              qput("a", 1, 1)],
                     [(SESSION_DEL, "a"), session("a", 2), (SUB_PUT, "a", "new", 1, 0)])
    a = by_id(restored)["a"]
    assert (a.expiry_interval, a.subscriptions, a.queue) == (2, [("new", 1, 0)], [])


def test_subscriptions(reopen: Reopen) -> None:
    restored = apply(reopen, [
        session("a"), (SUB_PUT, "a", "t/1", 0, 0), (SUB_PUT, "a", "t/2", 1, 7),
        (SUB_PUT, "a", "$share/g/t/3", 2 | 1 << 2 | 1 << 3 | 2 << 4, 268435455),
        (SUB_PUT, "a", "t/1", 2, 9),  # replaces
        (SUB_DEL, "a", "t/2"), (SUB_DEL, "a", "never"),
    ])
    assert sorted(by_id(restored)["a"].subscriptions) == [
        ("$share/g/t/3", 2 | 1 << 2 | 1 << 3 | 2 << 4, 268435455), ("t/1", 2, 9)]
    restored = apply(reopen, [(SUB_DEL, "a", "t/1")])
    assert by_id(restored)["a"].subscriptions == [
        ("$share/g/t/3", 2 | 1 << 2 | 1 << 3 | 2 << 4, 268435455)]


def test_messages_and_last_msg_id(reopen: Reopen) -> None:
    restored = apply(reopen, [session("a"), msg(1, None, 5.5, 0.0), msg(2, "s", 6.0, 99.0),
                              msg(3), msg(4), qput("a", 1, 1), qput("a", 2, 2),
                              qput("a", 3, 4), (MSG_DEL, 4)])
    # 3 is not referenced: not returned; 4 is gone, and the row that referenced it is left out.
    assert restored.messages == {1: StoredMessage(packet(1), None, 5.5, 0.0),
                                 2: StoredMessage(packet(2), "s", 6.0, 99.0)}
    assert [q.msg_id for q in by_id(restored)["a"].queue] == [1, 2]
    # The highest id in msgs or in a queue row (the row of 4 is left out, its id counts).
    assert restored.last_msg_id == 4
    restored = apply(reopen, [msg(10, size=5000)])
    assert restored.last_msg_id == 10
    assert 10 not in restored.messages
    # Replacing a message keeps one row.
    restored = apply(reopen, [(MSG_PUT, 1, b"new", "x", 7.0, 8.0)])
    assert restored.messages[1] == StoredMessage(b"new", "x", 7.0, 8.0)


def test_messages_of_deleted_sessions_are_not_returned(reopen: Reopen) -> None:
    restored = apply(reopen, [session("a"), session("b"), msg(1), msg(2), qput("a", 1, 1),
                              qput("b", 1, 2), qput("b", 2, 1)],
                     [(SESSION_DEL, "a")])
    assert sorted(restored.messages) == [1, 2]
    restored = apply(reopen, [(SESSION_DEL, "b")])
    assert restored.messages == {}
    assert restored.last_msg_id == 2
    # Queue rows of a client with no session row are not returned either.
    restored = apply(reopen, [qput("ghost", 1, 1)])
    assert (restored.sessions, restored.messages) == ([], {})


def test_queue(reopen: Reopen) -> None:
    ops: list[Op] = [session("a"), session("b"), msg(1), msg(2), msg(3)]
    # Written out of order: read back by ascending qseq.
    ops += [qput("a", 30, 3, qos=2, retain=True, subids=(1, 268435455), share="$share/g/t"),
            qput("a", 10, 1), qput("a", 20, 2, qos=0, subids=(5,)), qput("b", 5, 1, pid=9)]
    restored = apply(reopen, ops)
    assert by_id(restored)["a"].queue == [
        QueueRow(10, 1, 1, False, (), None, 0, False),
        QueueRow(20, 2, 0, False, (5,), None, 0, False),
        QueueRow(30, 3, 2, True, (1, 268435455), "$share/g/t", 0, False),
    ]
    assert by_id(restored)["b"].queue == [QueueRow(5, 1, 1, False, (), None, 9, False)]
    restored = apply(reopen, [(Q_PID, "a", 30, 65535), (Q_PID, "a", 10, 1), (Q_REL, "a", 30),
                              (Q_PID, "a", 99, 2), (Q_REL, "nobody", 1)])
    assert [(q.qseq, q.packet_id, q.released) for q in by_id(restored)["a"].queue] == [
        (10, 1, False), (20, 0, False), (30, 65535, True)]
    restored = apply(reopen, [(Q_DEL, "a", 10), (Q_DEL, "a", 10), (Q_DEL, "b", 5),
                              qput("a", 40, 1), qput("a", 1, 2)])
    assert [q.qseq for q in by_id(restored)["a"].queue] == [1, 20, 30, 40]
    assert by_id(restored)["b"].queue == []
    # Put again under the same qseq: replaced, back to queued.
    restored = apply(reopen, [qput("a", 30, 1, qos=1)])
    assert by_id(restored)["a"].queue[2] == QueueRow(30, 1, 1, False, (), None, 0, False)


def test_queue_order_within_a_batch(reopen: Reopen) -> None:
    restored = apply(reopen, [session("a"), msg(1), msg(2), qput("a", 1, 1), (Q_PID, "a", 1, 4),
                              (Q_DEL, "a", 1), qput("a", 1, 2), (Q_REL, "a", 1)])
    assert by_id(restored)["a"].queue == [QueueRow(1, 2, 1, False, (), None, 0, True)]


def test_awaiting_rel(reopen: Reopen) -> None:
    restored = apply(reopen, [session("a"), (REL_PUT, "a", 1, 10.0), (REL_PUT, "a", 2, 11.0),
                              (REL_PUT, "a", 65535, 12.5), (REL_PUT, "a", 2, 13.0),
                              (REL_DEL, "a", 1), (REL_DEL, "a", 3)])
    assert by_id(restored)["a"].awaiting_rel == {2: 13.0, 65535: 12.5}
    restored = apply(reopen, [(REL_DEL, "a", 2), (REL_DEL, "a", 65535)])
    assert by_id(restored)["a"].awaiting_rel == {}


def test_retained(reopen: Reopen) -> None:
    restored = apply(reopen, [(RET_PUT, "a/b", packet(1), "c1", 1.0, 0.0),
                              (RET_PUT, "a/c", packet(2), None, 2.0, 50.0),
                              (RET_PUT, "x", packet(3), "c3", 3.0, 0.0),
                              (RET_PUT, "a/b", packet(4), "c4", 4.0, 0.0),
                              (RET_DEL, "x"), (RET_DEL, "none")])
    assert restored.retained == {"a/b": StoredMessage(packet(4), "c4", 4.0, 0.0),
                                 "a/c": StoredMessage(packet(2), None, 2.0, 50.0)}
    restored = apply(reopen, [(RET_CLEAR,), (RET_PUT, "z", b"p", None, 1.0, 0.0)])
    assert restored.retained == {"z": StoredMessage(b"p", None, 1.0, 0.0)}
    restored = apply(reopen, [(RET_CLEAR,), (RET_CLEAR,)])
    assert restored.retained == {}


def test_batches_accumulate_across_restarts(reopen: Reopen) -> None:
    apply(reopen, [session("a"), msg(1), qput("a", 1, 1)])
    apply(reopen, [msg(2), qput("a", 2, 2)])
    restored = apply(reopen, [(Q_DEL, "a", 1), (MSG_DEL, 1)])
    assert [q.msg_id for q in by_id(restored)["a"].queue] == [2]
    assert list(restored.messages) == [2]


def test_a_failing_batch_changes_nothing(reopen: Reopen) -> None:
    before = apply(reopen, [session("a"), (SUB_PUT, "a", "t", 1, 0), msg(1), qput("a", 1, 1),
                            (RET_PUT, "r", b"p", None, 1.0, 0.0)])
    backend = reopen()
    backend.open()
    bad: list[list[Op]] = [
        [(SESSION_DEL, "a"), (RET_CLEAR,), msg(2), (999, "x")],  # unknown op code
        [(SESSION_DEL, "a"), msg(2), (Q_DEL, "a")],  # too short
        [(RET_CLEAR,), (SUB_PUT, "a", "u", None, 0)],  # None where a number must be
    ]
    for ops in bad:
        with pytest.raises(StoreError) as info:
            backend.write(ops)
        assert type(info.value) is StoreError
    backend.write([(SUB_PUT, "a", "u", 0, 0)])  # still usable
    backend.close()
    after = restart(reopen)
    by_id(before)["a"].subscriptions.append(("u", 0, 0))
    assert sorted(by_id(after)["a"].subscriptions) == sorted(by_id(before)["a"].subscriptions)
    assert (after.messages, after.retained, after.last_msg_id) == (
        before.messages, before.retained, 1)


def status_rows(reopen: Reopen) -> object:
    backend = reopen()
    backend.open()
    status = backend.status()
    backend.close()
    return status["rows"]


def test_status_counts_rows(reopen: Reopen) -> None:
    apply(reopen, [session("a"), session("b"), (SUB_PUT, "a", "t", 0, 0),
                   (SUB_PUT, "b", "t", 0, 0), (SUB_PUT, "b", "u", 0, 0), msg(1), msg(2),
                   qput("a", 1, 1), (REL_PUT, "b", 3, 1.0), (RET_PUT, "r", b"p", None, 1.0, 0.0)])
    assert status_rows(reopen) == {"sessions": 2, "subscriptions": 3, "messages": 2, "queue": 1,
                                   "awaiting_rel": 1, "retained": 1, "users": 0, "banned": 0,
                                   "kv": 0}
    backend = reopen()
    backend.open()
    status = backend.status()
    compacted = backend.compact()
    backend.close()
    assert set(status) >= {"path", "size", "rows", "durability", "schema", "page_size",
                           "free_pages"}
    assert status["schema"] == SCHEMA_VERSION
    assert status["path"] == backend.path
    assert set(compacted) == {"before", "after", "seconds"}


def test_closed_backend_refuses_and_close_is_idempotent(reopen: Reopen) -> None:
    backend = reopen()
    with pytest.raises(StoreError):
        backend.write([session("a")])
    backend.open()
    backend.close()
    backend.close()
    with pytest.raises(StoreError):
        backend.write([session("a")])
    assert restart(reopen).sessions == []


def test_restored_is_a_copy(reopen: Reopen) -> None:
    restored = apply(reopen, [session("a"), (SUB_PUT, "a", "t", 0, 0), msg(1), qput("a", 1, 1)])
    by_id(restored)["a"].subscriptions.clear()
    by_id(restored)["a"].queue.clear()
    restored.messages.clear()
    again = restart(reopen)
    assert by_id(again)["a"].subscriptions == [("t", 0, 0)]
    assert list(again.messages) == [1]


# --- SQLite only ------------------------------------------------------------------------------

def sqlite_store(path: Path, ops: list[Op]) -> None:
    backend = SqliteBackend(str(path))
    backend.open()
    backend.write(ops)
    backend.close()


def refused(path: Path) -> str:
    """open() must fail with exactly StoreError: one line that starts with the path.
    Returns the problem (the path left out: a test's tmp_path holds the test's name)."""
    backend = SqliteBackend(str(path))
    with pytest.raises(StoreError) as info:
        backend.open()
    backend.close()
    assert type(info.value) is StoreError
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    return text[len(f"{path}: "):]


def many_messages(n: int, size: int = 300, start: int = 1) -> list[Op]:
    return [msg(i, size=size) for i in range(start, start + n)]


def test_sqlite_full_rolls_back_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    backend = SqliteBackend(str(path), max_size=256 * 1024)
    backend.open()
    backend.write([session("a")] + many_messages(200) + [qput("a", i, i) for i in range(1, 201)])
    before = SqliteBackend(str(path)).open()
    rows_before = backend.status()["rows"]
    with pytest.raises(StoreFull) as info:
        backend.write([(SESSION_DEL, "a"), (RET_CLEAR,)] + many_messages(2000, start=1000))
    assert str(info.value).startswith(f"{path}: ")
    assert backend.status()["rows"] == rows_before
    reader = SqliteBackend(str(path))
    assert reader.open() == before
    reader.close()
    # Room made by deleting rows: the same backend writes again.
    backend.write([(Q_DEL, "a", i) for i in range(1, 201)] + [(MSG_DEL, i) for i in range(1, 201)])
    backend.write(many_messages(100, start=5000))
    backend.close()
    # Or by raising the limit.
    bigger = SqliteBackend(str(path), max_size=4 * 1024 * 1024)
    bigger.open()
    bigger.write(many_messages(2000, start=10000))
    bigger.close()
    assert restart(lambda: SqliteBackend(str(path))).last_msg_id == 11999


def test_sqlite_random_bytes_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(random.Random(1).randbytes(8192))
    assert refused(path) == "not an mqttd store (not an SQLite database)"
    path.write_bytes(b"SQLite format 3\0" + b"\0" * 20)
    assert refused(path).startswith("truncated")


def test_sqlite_truncated_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    sqlite_store(path, [session("a")] + many_messages(500))
    data = path.read_bytes()
    assert not os.path.exists(f"{path}-wal") or os.path.getsize(f"{path}-wal") == 0
    path.write_bytes(data[: len(data) // 2])
    assert refused(path).startswith("truncated")


def test_sqlite_damaged_pages_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    sqlite_store(path, [session("a")] + many_messages(500) + [qput("a", i, i) for i in range(500)])
    data = bytearray(path.read_bytes())
    page = 4096
    rng = random.Random(2)
    for n in range(2, len(data) // page, 3):  # every third page after the schema's
        data[n * page: n * page + 200] = rng.randbytes(200)
    path.write_bytes(bytes(data))
    assert refused(path).startswith("corrupt")


def test_sqlite_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    sqlite_store(path, [session("a")])
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    assert refused(path) == (f"written by a newer mqttd (schema {SCHEMA_VERSION + 1}; "
                             f"this one reads up to {SCHEMA_VERSION})")


def test_sqlite_other_database_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    assert refused(path).startswith("not an mqttd store")


def test_sqlite_unreadable_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    sqlite_store(path, [session("a")])
    path.chmod(0)
    if os.geteuid() != 0:
        assert refused(path) == "cannot read: Permission denied"
        return
    # Root reads any file: look as an unprivileged user would, from a forked child. It starts
    # in tmp_path (reachable to it), so that only the file's own mode is in its way.
    tmp_path.chmod(0o755)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            os.chdir(tmp_path)
            os.setgid(65534)
            os.setuid(65534)
            try:
                SqliteBackend("store.db").open()
                report = "opened"
            except BaseException as err:
                report = f"{type(err).__name__}|{err}"
            os.write(write_end, report.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "StoreError|store.db: cannot read: Permission denied"


def test_sqlite_directory_created_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "store.db"
    sqlite_store(path, [session("a")])
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new" / "deeper").stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    # A path that is a directory is refused, not a traceback.
    assert refused(tmp_path / "new") == "cannot read: Is a directory"


def test_sqlite_durability(tmp_path: Path) -> None:
    for durability, synchronous in (("process", 1), ("power", 2)):
        backend = SqliteBackend(str(tmp_path / f"{durability}.db"), durability=durability)
        backend.open()
        conn = backend._conn
        assert conn is not None
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert backend.status()["durability"] == durability
        backend.close()
    with pytest.raises(ValueError):
        SqliteBackend(str(tmp_path / "x.db"), durability="never")


def test_sqlite_status(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    backend = SqliteBackend(str(path))
    backend.open()
    backend.write([session("a"), (SUB_PUT, "a", "t", 0, 0), msg(1), msg(2), qput("a", 1, 1),
                   (REL_PUT, "a", 1, 1.0), (RET_PUT, "r", b"p", None, 1.0, 0.0)])
    status = backend.status()
    backend.close()
    assert status["path"] == str(path)
    assert status["rows"] == {"sessions": 1, "subscriptions": 1, "messages": 2, "queue": 1,
                              "awaiting_rel": 1, "retained": 1, "users": 0, "banned": 0,
                              "kv": 0}
    assert status["page_size"] == 4096
    assert isinstance(status["size"], int) and status["size"] >= 4096 * 6
    assert status["free_pages"] == 0


def test_sqlite_compact_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    backend = SqliteBackend(str(path))
    backend.open()
    backend.write([session("a")] + many_messages(3000, size=500)
                  + [qput("a", i, i) for i in range(1, 3001)])
    backend.write([(Q_DEL, "a", i) for i in range(1, 3001)]
                  + [(MSG_DEL, i) for i in range(1, 2991)])
    free = backend.status()["free_pages"]
    assert isinstance(free, int) and free > 100
    result = backend.compact()
    assert isinstance(result["before"], int) and isinstance(result["after"], int)
    assert result["after"] < result["before"] / 4
    assert result["after"] == backend.status()["size"]
    assert backend.status()["free_pages"] == 0
    backend.write([msg(5000)])
    backend.close()
    restored = restart(lambda: SqliteBackend(str(path)))
    assert restored.last_msg_id == 5000
    assert by_id(restored)["a"].queue == []


def test_sqlite_survives_unclean_exit(tmp_path: Path) -> None:
    """What write() returned is there after the process dies without close() (kill -9)."""
    path = tmp_path / "store.db"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            backend = SqliteBackend(str(path))
            backend.open()
            backend.write([session("a"), msg(1), qput("a", 1, 1)])
            backend.write([msg(2), qput("a", 2, 2)])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.path.getsize(f"{path}-wal") > 0  # nothing checkpointed: all of it in the WAL
    restored = restart(lambda: SqliteBackend(str(path)))
    assert [q.msg_id for q in by_id(restored)["a"].queue] == [1, 2]


def test_a_queue_row_can_keep_its_message_inline(reopen: Reopen) -> None:
    inline = (Q_PUT, "a", 1, 7, 1, False, (), None, 0, packet(7), "pub", 3.0, 0.0)
    restored = apply(reopen, [session("a"), inline, qput("a", 2, 1), msg(1)])
    rows = by_id(restored)["a"].queue
    assert [(q.qseq, q.msg_id) for q in rows] == [(1, 7), (2, 1)]
    assert rows[0].message == StoredMessage(packet(7), "pub", 3.0, 0.0)
    assert rows[1].message is None and 7 not in restored.messages
    assert restored.last_msg_id == 7
    restored = apply(reopen, [(Q_PID, "a", 1, 5), (Q_REL, "a", 1)])
    row = by_id(restored)["a"].queue[0]
    assert (row.packet_id, row.released, row.message) == (
        5, True, StoredMessage(packet(7), "pub", 3.0, 0.0))
    restored = apply(reopen, [(Q_DEL, "a", 1)])
    assert [q.qseq for q in by_id(restored)["a"].queue] == [2]


def test_users_put_replace_delete(reopen: Reopen) -> None:
    restored = apply(reopen, [(USER_PUT, "alice", "$7$1$a$b", 0), (USER_PUT, "ops", "$7$1$c$d", 1),
                              (USER_PUT, "alice", "$7$2$e$f", 0), (USER_DEL, "ops"),
                              (USER_DEL, "nobody")])
    assert restored.users == {"alice": ("$7$2$e$f", False)}


def test_bans_put_replace_delete(reopen: Reopen) -> None:
    restored = apply(reopen, [(BAN_PUT, "clientid", "a", "op", "r", 10.0, 0.0),
                              (BAN_PUT, "peerhost", "10.0.0.0/8", "", "", 11.0, 99.5),
                              (BAN_PUT, "clientid", "a", "op2", "r2", 12.0, 50.0),
                              (BAN_PUT, "username", "u", "", "", 13.0, 0.0),
                              (BAN_DEL, "username", "u"), (BAN_DEL, "clientid", "nobody")])
    assert sorted(restored.banned) == [("clientid", "a", "op2", "r2", 12.0, 50.0),
                                       ("peerhost", "10.0.0.0/8", "", "", 11.0, 99.5)]


def test_sqlite_store_from_before_bans_gets_the_table(tmp_path: Path) -> None:
    """A store written before the banned table existed opens, and takes bans."""
    path = tmp_path / "store.db"
    sqlite_store(path, [session("a")])
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE banned")
    conn.commit()
    conn.close()
    backend = SqliteBackend(str(path), "process")
    restored = backend.open()
    assert [s.client_id for s in restored.sessions] == ["a"] and restored.banned == []
    backend.write([(BAN_PUT, "clientid", "b", "", "", 1.0, 0.0)])
    backend.close()
    backend = SqliteBackend(str(path), "process")
    assert backend.open().banned == [("clientid", "b", "", "", 1.0, 0.0)]
    backend.close()


# --- modules' records (KV_PUT / KV_DEL, store/kv.py) ------------------------------------------

def test_kv_put_replace_delete(reopen: Reopen) -> None:
    value = bytes(range(256)) * 4  # NULs and high bytes survive
    restored = apply(reopen, [(KV_PUT, "delayed", "1", b"one"),
                              (KV_PUT, "delayed", "2", value),
                              (KV_PUT, "bridge/b1", "1", b"other space, same key"),
                              (KV_PUT, "delayed", "1", b"one again"),
                              (KV_PUT, "delayed", "\u00e9t\u00e9/\u2603", b""),
                              (KV_DEL, "delayed", "2"), (KV_DEL, "delayed", "nothing")],
                     [(KV_DEL, "nowhere", "1"), (KV_PUT, "delayed", "3", value)])
    assert restored.kv == {"delayed": {"1": b"one again", "\u00e9t\u00e9/\u2603": b"", "3": value},
                           "bridge/b1": {"1": b"other space, same key"}}
    assert status_rows(reopen) == {"sessions": 0, "subscriptions": 0, "messages": 0,
                                   "queue": 0, "awaiting_rel": 0, "retained": 0, "users": 0,
                                   "banned": 0, "kv": 4}
    restored = apply(reopen, [(KV_DEL, "bridge/b1", "1")])
    assert "bridge/b1" not in restored.kv and len(restored.kv["delayed"]) == 3


def test_kv_bad_ops_change_nothing(reopen: Reopen) -> None:
    apply(reopen, [(KV_PUT, "s", "k", b"v")])
    backend = reopen()
    backend.open()
    for bad in ((KV_PUT, "s", "k2", None), (KV_PUT, "s", "k2"), (KV_DEL, "s")):
        with pytest.raises(StoreError):
            backend.write([(KV_PUT, "s", "k3", b"x"), bad])
    backend.close()
    assert restart(reopen).kv == {"s": {"k": b"v"}}


def test_kv_coalesce_put_then_delete() -> None:
    """Applied together, a record put new and deleted is neither; one that may be in the
    backend already keeps its delete; only the last write of a key is applied."""
    new = (KV_PUT, "s", "a", b"1", True)
    assert coalesce([[new], [(KV_DEL, "s", "a")]]) == []
    assert coalesce([[(KV_PUT, "s", "a", b"1")], [(KV_DEL, "s", "a")]]) == [(KV_DEL, "s", "a")]
    # Replaced, then deleted: the key was absent before the first put.
    assert coalesce([[new, (KV_PUT, "s", "a", b"2")], [(KV_DEL, "s", "a")]]) == []
    # A delete of a stored record, then a new one under the same key, deleted again.
    assert coalesce([[(KV_DEL, "s", "a")], [new], [(KV_DEL, "s", "a")]]) == [(KV_DEL, "s", "a")]
    assert coalesce([[new], [(KV_PUT, "s", "a", b"2")]]) == [(KV_PUT, "s", "a", b"2")]
    assert coalesce([[new, (KV_PUT, "s", "b", b"3", True)], [(KV_DEL, "s", "a")]]) == [
        (KV_PUT, "s", "b", b"3")]


async def _committed(journal: Journal) -> None:
    for _ in range(400):
        await asyncio.sleep(0.005)
        if journal.gate.committed == journal.gate.issued and not journal._ops:
            return
    raise AssertionError("the journal did not commit")


def _kv_journal(backend: Backend, path: Path) -> tuple[Journal, KVStore]:
    restored = backend.open()
    oplog = OpLog(str(path))
    restored, _ = replay(oplog, backend, restored)
    journal = Journal(backend, "process", oplog, restored.last_msg_id)
    return journal, KVStore(journal, restored.kv)


def test_kv_through_the_journal(reopen: Reopen, tmp_path: Path) -> None:
    """KVSpace over a real journal: a record put and deleted in one batch is never
    written, one deleted in a later batch never reaches the backend; the rest survives
    a restart that replays the operation log (as after kill -9: no close)."""
    log_path = tmp_path / "data" / "store.db"
    os.makedirs(log_path.parent, exist_ok=True)

    async def first() -> None:
        journal, kv = _kv_journal(reopen(), log_path)
        journal.start(asyncio.get_running_loop())
        space = kv.space("delayed")
        assert space.records == {} and kv.space("delayed") is space
        space.put("gone", b"x")
        space.put("gone", b"y")
        assert space.delete("gone") and not space.delete("gone")
        assert [op for op in journal._ops if op is not None] == []
        assert journal.ops_cancelled == 2
        space.put("late", b"z")
        space.put("kept", b"k")
        await _committed(journal)
        space.delete("late")  # a later batch: the put is committed, not yet applied
        kv.space("other").put("1", b"o")
        await _committed(journal)
        journal._start_apply(now=True)
        for _ in range(400):
            await asyncio.sleep(0.005)
            if not journal._applying and not journal._unapplied and journal._sealed is None:
                break
        assert journal.ops_applied == 2  # kept and other/1; "late" neither put nor deleted
        space.put("after", b"a")  # only in the operation log: replayed at the restart
        await _committed(journal)
        # No aclose: the process dies here.

    asyncio.run(first())
    journal, kv = _kv_journal(reopen(), log_path)
    assert kv.space("delayed").records == {"kept": b"k", "after": b"a"}
    assert kv.space("other").records == {"1": b"o"}
    assert sorted(kv.spaces()) == ["delayed", "other"]
    asyncio.run(journal.aclose())
    assert restart(reopen).kv == {"delayed": {"kept": b"k", "after": b"a"}, "other": {"1": b"o"}}


def test_sqlite_store_from_before_kv_gets_the_table(tmp_path: Path) -> None:
    """A store written before the kv table existed opens, and takes records."""
    path = tmp_path / "store.db"
    sqlite_store(path, [session("a")])
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE kv")
    conn.commit()
    conn.close()
    backend = SqliteBackend(str(path), "process")
    restored = backend.open()
    assert [s.client_id for s in restored.sessions] == ["a"] and restored.kv == {}
    backend.write([(KV_PUT, "s", "k", b"v")])
    backend.close()
    backend = SqliteBackend(str(path), "process")
    assert backend.open().kv == {"s": {"k": b"v"}}
    backend.close()

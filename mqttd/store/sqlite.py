"""The SQLite backend: one file in WAL mode, one transaction per write() (stdlib ``sqlite3``).

Ops are bound straight from their tuples: each statement names its parameters ``?2``, ``?3``
... so the op code in slot 1 is bound but unused, and no per-op tuple is built on the hot
path (only Q_PUT is reshaped, for its subids). Consecutive ops of one code go to one
``executemany``.

Tables holding small rows keyed by (client_id, ...) are WITHOUT ROWID: the row lives in the
primary-key B-tree, so an insert or delete touches one tree instead of a table and its
index, and a full scan comes out in key order (restoring a queue needs no sort). Tables with
packets in them (sessions with their will, msgs, retained) keep a rowid: SQLite advises
WITHOUT ROWID only for rows well under a twentieth of a page.
"""

from __future__ import annotations

import errno
import gc
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from itertools import groupby
from operator import itemgetter
from typing import TYPE_CHECKING

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
    StoreFull,
)

if TYPE_CHECKING:
    from .base import Backend

__all__ = ["DURABILITY", "SqliteBackend"]

#: durability setting -> PRAGMA synchronous (in WAL mode). NORMAL: a commit is in the WAL
#: (the OS has it) when write() returns, so it survives kill -9; FULL also fsyncs the WAL.
DURABILITY = {"process": "NORMAL", "power": "FULL"}

_TABLES = ("sessions", "subs", "msgs", "queue", "rel", "retained", "meta", "users")

#: The banned table; added to schema 1 after its first stores were written, so a store
#: without it gets it when opened (see _check) rather than being refused.
_BANNED = ("CREATE TABLE banned(kind TEXT NOT NULL, who TEXT NOT NULL, by TEXT NOT NULL,"
           " reason TEXT NOT NULL, at REAL NOT NULL, until REAL NOT NULL,"
           " PRIMARY KEY(kind, who)) WITHOUT ROWID")

#: Modules' records (store/kv.py); added to schema 1 like banned. Values may be whole
#: messages: a rowid table, as msgs and retained are, with the key as a unique index.
_KV = ("CREATE TABLE kv(space TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
       " UNIQUE(space, key))")

_SCHEMA = (
    "CREATE TABLE sessions(client_id TEXT PRIMARY KEY NOT NULL, expiry_interval INTEGER NOT NULL,"
    " created_at REAL NOT NULL, disconnected_at REAL NOT NULL, will BLOB,"
    " will_delay INTEGER NOT NULL, zone TEXT NOT NULL)",
    "CREATE TABLE subs(client_id TEXT NOT NULL, filter TEXT NOT NULL, options INTEGER NOT NULL,"
    " subid INTEGER NOT NULL, PRIMARY KEY(client_id, filter)) WITHOUT ROWID",
    # id is the rowid: ids come in ascending, so inserts append at the right edge.
    "CREATE TABLE msgs(id INTEGER PRIMARY KEY, packet BLOB NOT NULL, sender TEXT,"
    " ts REAL NOT NULL, expiry_at REAL NOT NULL)",
    "CREATE TABLE queue(client_id TEXT NOT NULL, qseq INTEGER NOT NULL, msg_id INTEGER NOT NULL,"
    " qos INTEGER NOT NULL, retain INTEGER NOT NULL, subids TEXT, share TEXT,"
    " pid INTEGER NOT NULL, released INTEGER NOT NULL, packet BLOB, sender TEXT, ts REAL,"
    " expiry_at REAL, PRIMARY KEY(client_id, qseq)) WITHOUT ROWID",
    "CREATE TABLE rel(client_id TEXT NOT NULL, pid INTEGER NOT NULL, received_at REAL NOT NULL,"
    " PRIMARY KEY(client_id, pid)) WITHOUT ROWID",
    "CREATE TABLE meta(key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID",
    "CREATE TABLE users(username TEXT PRIMARY KEY NOT NULL, hash TEXT NOT NULL,"
    " superuser INTEGER NOT NULL) WITHOUT ROWID",
    _BANNED,
    _KV,
    "CREATE TABLE retained(topic TEXT PRIMARY KEY NOT NULL, packet BLOB NOT NULL, sender TEXT,"
    " ts REAL NOT NULL, expiry_at REAL NOT NULL)",
)

# Statements bound directly to an op tuple (?1 is the op code, unused).
_DIRECT: dict[int, tuple[str, ...]] = {
    SESSION_PUT: ("INSERT OR REPLACE INTO sessions VALUES(?2,?3,?4,?5,?6,?7,?8)",),
    SESSION_DEL: (
        "DELETE FROM sessions WHERE client_id=?2",
        "DELETE FROM subs WHERE client_id=?2",
        "DELETE FROM queue WHERE client_id=?2",
        "DELETE FROM rel WHERE client_id=?2",
    ),
    SUB_PUT: ("INSERT OR REPLACE INTO subs VALUES(?2,?3,?4,?5)",),
    SUB_DEL: ("DELETE FROM subs WHERE client_id=?2 AND filter=?3",),
    MSG_PUT: ("INSERT OR REPLACE INTO msgs VALUES(?2,?3,?4,?5,?6)",),
    MSG_DEL: ("DELETE FROM msgs WHERE id=?2",),
    Q_PID: ("UPDATE queue SET pid=?4 WHERE client_id=?2 AND qseq=?3",),
    Q_REL: ("UPDATE queue SET released=1 WHERE client_id=?2 AND qseq=?3",),
    Q_DEL: ("DELETE FROM queue WHERE client_id=?2 AND qseq=?3",),
    REL_PUT: ("INSERT OR REPLACE INTO rel VALUES(?2,?3,?4)",),
    REL_DEL: ("DELETE FROM rel WHERE client_id=?2 AND pid=?3",),
    RET_PUT: ("INSERT OR REPLACE INTO retained VALUES(?2,?3,?4,?5,?6)",),
    RET_DEL: ("DELETE FROM retained WHERE topic=?2",),
    APPLIED: ("INSERT OR REPLACE INTO meta VALUES('applied_seq', ?2)",),
    USER_PUT: ("INSERT OR REPLACE INTO users VALUES(?2,?3,?4)",),
    USER_DEL: ("DELETE FROM users WHERE username=?2",),
    BAN_PUT: ("INSERT OR REPLACE INTO banned VALUES(?2,?3,?4,?5,?6,?7)",),
    BAN_DEL: ("DELETE FROM banned WHERE kind=?2 AND who=?3",),
    KV_PUT: ("INSERT OR REPLACE INTO kv VALUES(?2,?3,?4)",),
    KV_DEL: ("DELETE FROM kv WHERE space=?2 AND key=?3",),
}
_Q_PUT_SQL = "INSERT OR REPLACE INTO queue VALUES(?,?,?,?,?,?,?,?,0,?,?,?,?)"

_code = itemgetter(0)


def _q_put_rows(run: Iterable[Op]) -> Iterator[tuple[object, ...]]:
    # subids (a tuple) is kept as "1,2"; the usual empty tuple as NULL (no bytes at all).
    # An inline op (13 items) carries its message: packet, sender, ts, expiry_at.
    for op in run:
        subids = op[6]
        subtext = ",".join(map(str, subids)) if subids else None  # type: ignore[call-overload]
        if len(op) == 13:
            yield (op[1], op[2], op[3], op[4], op[5], subtext, op[7], op[8], op[9], op[10],
                   op[11], op[12])
        else:
            yield (op[1], op[2], op[3], op[4], op[5], subtext, op[7], op[8], None, None, None,
                   None)


#: Tables no other op touches: their ops may be applied apart from the rest (in order).
_MSG_CODES = frozenset((MSG_PUT, MSG_DEL))
_RET_CODES = frozenset((RET_PUT, RET_DEL, RET_CLEAR))


def _by_table(ops: list[Op]) -> list[Op]:
    """``ops`` with the msgs and retained ops moved apart from the rest, each stream in its
    own order: a message's row and its queue rows alternate in a batch ([MSG_PUT, Q_PUT] per
    message), and one ``executemany`` per run of one code costs far less than one per op.
    The end state is the same: those tables share no key with the others."""
    msgs: list[Op] = []
    rets: list[Op] = []
    rest: list[Op] = []
    for op in ops:
        code = op[0]
        if code in _MSG_CODES:
            msgs.append(op)
        elif code in _RET_CODES:
            rets.append(op)
        else:
            rest.append(op)
    return msgs + rest + rets if msgs or rets else rest


def _subids(text: str | None) -> tuple[int, ...]:
    return () if text is None else tuple(map(int, text.split(",")))


def _one_line(text: str) -> str:
    return " ".join(text.split())


class SqliteBackend:
    """Sessions, queues and retained messages in one SQLite file (see the module docstring)."""

    def __init__(self, path: str, durability: str = "process", max_size: int = 0) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {sorted(DURABILITY)}, not {durability!r}")
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, not {max_size}")
        self.path = path
        self.durability = durability
        self.max_size = max_size
        self._conn: sqlite3.Connection | None = None

    # --- errors -------------------------------------------------------------------------

    def _fail(self, problem: str) -> StoreError:
        return StoreError(f"{self.path}: {_one_line(problem)}")

    def _map(self, err: BaseException) -> StoreError:
        """One StoreError (StoreFull when out of room) for an sqlite3 or OS error."""
        if isinstance(err, StoreError):
            return err
        if isinstance(err, sqlite3.Error):
            code = getattr(err, "sqlite_errorcode", None)
            primary = code & 0xFF if isinstance(code, int) else None
            text = _one_line(str(err))
            if primary == sqlite3.SQLITE_FULL:
                limit = f" (limit {self.max_size} bytes)" if self.max_size else ""
                return StoreFull(f"{self.path}: full{limit}: {text}")
            if primary == sqlite3.SQLITE_NOTADB:
                return self._fail(f"not an SQLite database ({text})")
            if primary == sqlite3.SQLITE_CORRUPT:
                return self._fail(f"corrupt ({text})")
            if primary == sqlite3.SQLITE_READONLY:
                return self._fail(f"read-only ({text})")
            if primary == sqlite3.SQLITE_CANTOPEN:
                return self._fail(f"cannot open ({text})")
            if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return self._fail(f"in use by another process ({text})")
            return self._fail(text)
        if isinstance(err, OSError):
            text = err.strerror or str(err)
            if err.errno == errno.ENOSPC:
                return StoreFull(f"{self.path}: full: {_one_line(text)}")
            return self._fail(text)
        return self._fail(f"{type(err).__name__}: {err}")

    # --- open -------------------------------------------------------------------------------

    def open(self) -> Restored:
        """Open (creating if need be), check and read everything back. Raises StoreError."""
        if self._conn is not None:
            raise self._fail("already open")
        conn: sqlite3.Connection | None = None
        try:
            new = self._precheck()
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._configure(conn)
            if new:
                self._create(conn)
            else:
                self._check(conn)
            # A restore makes millions of objects and no cycles: the cyclic GC would walk
            # them again and again (a third of the time), for nothing.
            collecting = gc.isenabled()
            gc.disable()
            try:
                restored = self._restore(conn)
            finally:
                if collecting:
                    gc.enable()
        except BaseException as err:
            if conn is not None:
                conn.close()
            if isinstance(err, StoreError) or not isinstance(err, Exception):
                raise
            # sqlite3 and OS errors, and a row this code cannot read (ValueError, ...).
            raise self._map(err) from err
        self._conn = conn
        return restored

    def used_bytes(self) -> int:
        """Bytes the database's live pages take (the size limit counts these, not free
        pages a compaction would give back)."""
        conn = self._connection()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def reload(self) -> Restored:
        conn = self._connection()
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._restore(conn)
        except StoreError:
            raise
        except Exception as err:
            raise self._map(err) from err
        finally:
            if collecting:
                gc.enable()

    def _precheck(self) -> bool:
        """Make the directory, read the header; True for a new (absent or empty) file."""
        directory = os.path.dirname(self.path) or "."
        missing: list[str] = []
        while True:
            try:
                os.stat(directory)
                break
            except FileNotFoundError:
                missing.append(directory)
            except OSError as err:  # there, but not for us (or not a directory)
                raise self._fail(f"cannot read: {err.strerror}") from err
            parent = os.path.dirname(directory)
            if parent in ("", directory):
                break
            directory = parent
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o700)  # sessions and payloads are nobody else's business
            except FileExistsError:
                pass
            except OSError as err:
                raise self._fail(f"cannot create directory {d}: {err.strerror}") from err
        try:
            # 0600 for a new file; SQLite gives -wal and -shm the mode of the database.
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600)
        except OSError as err:
            raise self._fail(f"cannot read: {err.strerror}") from err
        try:
            size = os.fstat(fd).st_size
            header = os.read(fd, 100)
        except OSError as err:
            raise self._fail(f"cannot read: {err.strerror}") from err
        finally:
            os.close(fd)
        if size == 0:
            return True
        if not header.startswith(b"SQLite format 3\0"):
            raise self._fail("not an mqttd store (not an SQLite database)")
        if len(header) < 100:
            raise self._fail(f"truncated ({size} bytes, less than an SQLite header)")
        # The header's page count is trusted by SQLite only when bytes 24 and 92 agree; with a
        # WAL beside the file, the newest page 1 may be in the WAL, so only check without one.
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        wal = self.path + "-wal"
        if (pages and header[24:28] == header[92:96]
                and not (os.path.exists(wal) and os.path.getsize(wal) > 0)
                and pages * page_size > size):
            raise self._fail(f"truncated ({size} bytes; its header says {pages * page_size})")
        return False

    def _configure(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise self._fail(f"cannot use WAL mode (journal_mode is {mode})")
        conn.execute(f"PRAGMA synchronous={DURABILITY[self.durability]}").fetchall()
        # The queue B-tree takes inserts and deletes all over its key range: a bigger page
        # cache (16 MiB, default 2 MiB) keeps its interior pages in memory.
        conn.execute("PRAGMA cache_size=-16384").fetchall()
        if self.max_size:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(1, self.max_size // page_size)}").fetchall()

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have created it between our look and the lock.
            if conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]:
                conn.execute("ROLLBACK")
                self._check(conn)
                return
            for sql in _SCHEMA:
                conn.execute(sql)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _check(self, conn: sqlite3.Connection) -> None:
        # quick_check reads every page (it skips only the index-content cross-check): O(size).
        problems = [line for row in conn.execute("PRAGMA quick_check(10)").fetchall()
                    for line in str(row[0]).splitlines() if line and not line.startswith("***")]
        if problems != ["ok"]:
            problems = problems or ["failed"]
            plus = "+" if len(problems) >= 10 else ""  # quick_check(10) stops at 10
            more = f" (and {len(problems) - 1}{plus} more)" if len(problems) > 1 else ""
            raise self._fail(f"corrupt (quick_check: {problems[0]}{more})")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise self._fail(f"written by a newer mqttd (schema {version}; "
                             f"this one reads up to {SCHEMA_VERSION})")
        names = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'").fetchall()}
        if version == 0:
            if names:
                raise self._fail("not an mqttd store (an SQLite database with other tables: "
                                 + ", ".join(sorted(names)) + ")")
            self._create(conn)
            return
        missing = [t for t in _TABLES if t not in names]
        if missing:
            raise self._fail(f"not an mqttd store (schema {version} without table(s) "
                             + ", ".join(missing) + ")")
        if "banned" not in names:  # a store from before bans moved into it
            conn.execute(_BANNED)
        if "kv" not in names:  # a store from before modules kept records
            conn.execute(_KV)

    def _restore(self, conn: sqlite3.Connection) -> Restored:
        restored = Restored()
        by_id: dict[str, SessionRow] = {}
        for cid, expiry, created, disconnected, will, delay, zone in conn.execute(
                "SELECT client_id, expiry_interval, created_at, disconnected_at, will, will_delay,"
                " zone FROM sessions"):
            by_id[cid] = SessionRow(cid, expiry, created, disconnected, will, delay, zone)
        restored.sessions = list(by_id.values())
        for cid, topic_filter, options, subid in conn.execute(
                "SELECT client_id, filter, options, subid FROM subs"):
            session = by_id.get(cid)
            if session is not None:
                session.subscriptions.append((topic_filter, options, subid))
        for cid, pid, received_at in conn.execute("SELECT client_id, pid, received_at FROM rel"):
            session = by_id.get(cid)
            if session is not None:
                session.awaiting_rel[pid] = received_at
        referenced: set[int] = set()
        current: str | None = None
        rows: list[QueueRow] | None = None
        # The primary key's order: no sort, and each session's rows come together.
        last_id = 0
        for (cid, qseq, msg_id, qos, retain, subids, share, pid, released, packet, sender, ts,
             expiry_at) in conn.execute(
                "SELECT client_id, qseq, msg_id, qos, retain, subids, share, pid, released,"
                " packet, sender, ts, expiry_at FROM queue ORDER BY client_id, qseq"):
            if msg_id > last_id:
                last_id = msg_id
            if cid != current:
                current = cid
                session = by_id.get(cid)
                rows = None if session is None else session.queue
            if rows is None:  # rows of no session
                continue
            if packet is not None:  # the message inline
                rows.append(QueueRow(qseq, msg_id, qos, retain != 0,
                                     () if subids is None else _subids(subids), share, pid,
                                     released != 0, StoredMessage(packet, sender, ts, expiry_at)))
                continue
            rows.append(QueueRow(qseq, msg_id, qos, retain != 0,
                                 () if subids is None else _subids(subids),
                                 share, pid, released != 0))
            referenced.add(msg_id)
        # One scan of msgs, kept if referenced (cheaper than an IN over the queue's 1M rows).
        messages = restored.messages
        for msg_id, packet, sender, ts, expiry_at in conn.execute(
                "SELECT id, packet, sender, ts, expiry_at FROM msgs"):
            if msg_id in referenced:
                messages[msg_id] = StoredMessage(packet, sender, ts, expiry_at)
            else:
                restored.orphans.append(msg_id)
        if len(messages) != len(referenced):
            # A row whose message is gone has nothing to deliver: left out.
            for session in restored.sessions:
                if any(row.message is None and row.msg_id not in messages
                       for row in session.queue):
                    session.queue = [row for row in session.queue
                                     if row.message is not None or row.msg_id in messages]
        for topic, packet, sender, ts, expiry_at in conn.execute(
                "SELECT topic, packet, sender, ts, expiry_at FROM retained"):
            restored.retained[topic] = StoredMessage(packet, sender, ts, expiry_at)
        restored.last_msg_id = max(conn.execute("SELECT max(id) FROM msgs").fetchone()[0] or 0,
                                   last_id)
        for username, hash_text, superuser in conn.execute(
                "SELECT username, hash, superuser FROM users"):
            restored.users[username] = (hash_text, superuser != 0)
        restored.banned = [(kind, who, by, reason, float(at), float(until))
                           for kind, who, by, reason, at, until in conn.execute(
                               "SELECT kind, who, by, reason, at, until FROM banned")]
        kv = restored.kv
        for space, key, value in conn.execute("SELECT space, key, value FROM kv"):
            records = kv.get(space)
            if records is None:
                records = kv[space] = {}
            records[key] = value
        row = conn.execute("SELECT value FROM meta WHERE key='applied_seq'").fetchone()
        restored.applied_seq = int(row[0]) if row is not None else 0
        return restored

    # --- write ------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self._fail("not open")
        return self._conn

    def write(self, ops: list[Op]) -> None:
        """Apply ``ops`` in order as one transaction. Raises StoreFull (rolled back) or
        StoreError."""
        conn = self._connection()
        if not ops:
            return
        try:
            if conn.in_transaction:  # a ROLLBACK that failed last time
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            try:
                executemany = conn.executemany
                for code, run in groupby(_by_table(ops), _code):
                    statements = _DIRECT.get(code)
                    if statements is not None:
                        if len(statements) == 1:
                            executemany(statements[0], run)
                        else:
                            batch = list(run)
                            for sql in statements:
                                executemany(sql, batch)
                    elif code == Q_PUT:
                        executemany(_Q_PUT_SQL, _q_put_rows(run))
                    elif code == RET_CLEAR:
                        conn.execute("DELETE FROM retained")
                    else:
                        raise self._fail(f"unknown op code {code!r}")
                conn.execute("COMMIT")
            except BaseException:
                # SQLITE_FULL may already have rolled the transaction back.
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the next write() retries it; the first error is the news
                raise
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as err:
            raise self._map(err) from err
        except (TypeError, ValueError, IndexError, KeyError) as err:
            raise self._fail(f"bad op in batch: {type(err).__name__}: {err}") from err

    # --- status, compact, close -------------------------------------------------------------

    def _size(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.path.getsize(self.path + suffix)
            except FileNotFoundError:
                pass
        return total

    def status(self) -> dict[str, object]:
        conn = self._connection()
        try:
            def count(table: str) -> int:
                return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            return {
                "path": self.path,
                "size": self._size(),
                "rows": {"sessions": count("sessions"), "subscriptions": count("subs"),
                         "messages": count("msgs"), "queue": count("queue"),
                         "awaiting_rel": count("rel"), "retained": count("retained"),
                         "users": count("users"), "banned": count("banned"),
                         "kv": count("kv")},
                "durability": self.durability,
                "schema": SCHEMA_VERSION,
                "page_size": conn.execute("PRAGMA page_size").fetchone()[0],
                "free_pages": conn.execute("PRAGMA freelist_count").fetchone()[0],
            }
        except (sqlite3.Error, OSError) as err:
            raise self._map(err) from err

    def compact(self) -> dict[str, object]:
        """Checkpoint, VACUUM, checkpoint again (VACUUM's new pages land in the WAL first)."""
        conn = self._connection()
        start = time.monotonic()
        try:
            before = self._size()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            after = self._size()
        except (sqlite3.Error, OSError) as err:
            raise self._map(err) from err
        return {"before": before, "after": after, "seconds": time.monotonic() - start}

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            # Only tidies: every commit is already in the WAL, which the next open replays.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass
        finally:
            conn.close()


if TYPE_CHECKING:
    def _is_a_backend(backend: SqliteBackend) -> Backend:
        return backend

"""Durability end to end when the store cannot be used (issue 9): a store file that is not
one (random bytes), a truncated one, one written by a newer mqttd, one with damaged pages;
and a full store (``[store] max_size``), with which the broker refuses only the QoS 1/2
messages it would have to store, keeps serving everything else, and recovers by itself once
room is made.

Real ``mqttd start`` processes and real clients, as in ``test_durability.py``.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import WAIT, builder as B, uid
from support.clients import Client
from support.process import MQTTD, BrokerProcess, checked_broker, wait_log
from support.raw import RawClient
from test_durability import STORE_CONFIG, Receiver

from mqttd.mqtt.packets import Puback, Pubrec, Suback

pytest_plugins = ["support.fixtures"]

LISTENER = '\n[listeners.default]\nbind = "127.0.0.1"\nport = 0\n'

#: A log record as ``mqttd start`` writes it to stderr (logging.basicConfig's format).
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING) \S+: ")
#: The stamp of any log record (the refusal is an ERROR record).
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


# --- bad store files ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_store() -> Iterator[bytes]:
    """The bytes of a real store, closed by SIGTERM (so the file holds every commit): a few
    hundred rows (sessions, subscriptions, queued and retained messages)."""
    b = BrokerProcess(STORE_CONFIG)
    try:
        topic = uid("fill/")
        for i in range(20):
            with RawClient(b, 4) as r:
                r.connect(f"store-{i}", clean=False)
                r.send(B.subscribe(1, [(topic, 1)]))
                r.recv()
                r.send(B.disconnect())
        with RawClient(b, 4) as r:
            r.connect(uid("fill-"))
            for i in range(1, 201):
                r.send(B.publish(f"{topic}" if i % 4 else f"ret/{i}", b"%d" % i * 100, qos=1,
                                 packet_id=i, retain=not i % 4))
                assert r.expect(Puback).packet_id == i
        assert b.stop() == 0, b.log()
        path = b.data_dir / "mqttd.db"
        assert not os.path.exists(str(path) + "-wal") or os.path.getsize(str(path) + "-wal") == 0
        data = path.read_bytes()
        assert len(data) > 64 * 1024, len(data)
        yield data
    finally:
        b.stop()
        b.cleanup()


def newer_schema(store: bytes, tmp: Path) -> bytes:
    path = tmp / "newer.db"
    path.write_bytes(store)
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA user_version = 2")
        con.commit()
    finally:
        con.close()
    return path.read_bytes()


def damaged_pages(store: bytes) -> bytes:
    """The header and the first pages kept, pages in the middle overwritten."""
    page = int.from_bytes(store[16:18], "big")
    rng = random.Random(9)
    data = bytearray(store)
    middle = len(data) // page // 2
    for n in range(middle, middle + 4):
        data[n * page:(n + 1) * page] = rng.randbytes(page)
    return bytes(data)


#: What the refusal says is wrong, per kind of file.
PROBLEM = {
    "random-bytes": r"not an (mqttd store|SQLite database)",
    "truncated": r"truncated",
    "newer-schema": r"newer",
    "damaged-pages": r"corrupt|malformed",
}

BAD_FILES = {
    "random-bytes": lambda store, tmp: random.Random(7).randbytes(64 * 1024),
    "truncated": lambda store, tmp: store[:len(store) // 2],
    "newer-schema": newer_schema,
    "damaged-pages": lambda store, tmp: damaged_pages(store),
}


def start_fails(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``mqttd start`` on ``data_dir``, which must end by itself (a start that works would
    run on: it is stopped and the test fails)."""
    config = data_dir.parent / "mqttd.toml"
    config.write_text(LISTENER)
    cmd = [*MQTTD, "start", "-c", str(config), "--data-dir", str(data_dir), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=WAIT * 4)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT * 2)
        raise AssertionError(f"mqttd started on a bad store:\n{out}{err}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_store_file_stops_the_start_with_one_line_then_reset_store_starts(
        real_store, tmp_path, kind):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    path = data_dir / "mqttd.db"
    bad = BAD_FILES[kind](real_store, tmp_path)
    path.write_bytes(bad)

    # Warnings and errors only: the refusal is the one line there is.
    done = start_fails(data_dir, "--log-level", "warning")
    lines = done.stderr.splitlines()
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert str(path) in line and "--reset-store" in line, line
    assert re.search(PROBLEM[kind], line, re.IGNORECASE), line
    assert "Traceback" not in done.stdout + done.stderr

    # At the default level the start's info lines come before it; still no other line.
    done = start_fails(data_dir)
    assert done.returncode == 1, (done.returncode, done.stderr)
    other = [x for x in done.stderr.splitlines() if not LOG_RECORD.match(x)]
    assert [STAMP.sub("", x) for x in other] == [STAMP.sub("", line)], done.stderr
    assert path.read_bytes() == bad  # a refused start leaves the file as it was

    with checked_broker(STORE_CONFIG, extra_args=["--data-dir", str(data_dir),
                                                  "--reset-store"]) as b:
        assert "moved aside" in b.log(), b.log()
        kept = sorted(p.name for p in data_dir.iterdir() if p.name.startswith("mqttd.db.reset-"))
        assert len(kept) == 1, sorted(os.listdir(data_dir))
        assert (data_dir / kept[0]).read_bytes() == bad
        # The new store works: a session is kept in it.
        c = Client(b, uid("after-reset-"), version=4, clean=False)
        try:
            c.connect()
            assert not c.session_present
            assert c.subscribe(uid("r/"), 1) == [1]
            c.disconnect()
        finally:
            c.close()


# --- a full store ---------------------------------------------------------------------------

FULL_CONFIG = STORE_CONFIG + '\n[store]\nmax_size = "64KB"\n'
PAYLOAD = b"x" * 500


def _fill(b: BrokerProcess, topic: str, open_conns: list[RawClient], most: int
          ) -> tuple[list[bytes], list[tuple[RawClient, bytes]], int | None]:
    """QoS 1 MQTT 5 messages to ``topic`` until one is refused (0x97): one connection per
    message, since a PUBACK the store cannot commit yet is held (and those after it on the
    same connection: acks keep their order). Returns (accepted payloads, held (connection,
    payload) pairs, the number of the refused message or None)."""
    accepted: list[bytes] = []
    held: list[tuple[RawClient, bytes]] = []
    for i in range(1, most + 1):
        payload = b"%d:" % i + PAYLOAD
        r = RawClient(b, 5)
        open_conns.append(r)
        r.connect(uid("filler-"))
        r.send(B.publish(topic, payload, qos=1, packet_id=1, properties=B.props()))
        try:
            ack = r.expect(Puback, timeout=1.0)
        except AssertionError:  # held until its commit
            held.append((r, payload))
            continue
        if ack.reason_code == 0x97:
            return accepted, held, i
        assert ack.reason_code == 0, ack
        accepted.append(payload)
        r.close()
    return accepted, held, None


def test_full_store_refuses_what_it_cannot_store_serves_the_rest_and_recovers():
    """``max_size = "64KB"``: an offline persistent session; QoS 1 MQTT 5 messages to it
    until a PUBACK says 0x97. Then: one ALARM line; a clean-session pair is served at QoS 0
    and 1; MQTT 5 QoS 2 to the persistent session gets PUBREC 0x97 and 3.1.1 QoS 1 is
    disconnected. The persistent subscriber reads and acknowledges its queue (rows
    deleted): writes succeed again (logged), without a restart, new messages to it are
    accepted, and every message that got PUBACK 0 is delivered."""
    b = BrokerProcess(FULL_CONFIG)
    open_conns: list[RawClient] = []
    clients: list[Client] = []
    base = uid("full/")
    topic = f"{base}/p"
    sub = Receiver(uid("fullsub-"), 5, topic, 1)
    try:
        sub.connect(b, first=True)
        sub.disconnect()

        accepted, held, refused = _fill(b, topic, open_conns, 1000)
        assert refused is not None, "the store never filled up"
        assert accepted, "not one message fitted"
        log = b.log()
        assert len(re.findall(r"ALARM", log)) == 1, log

        # A clean-session pair, on a topic no persistent session subscribes to: served.
        free = f"{base}/free"
        csub = Client(b, uid("clean-sub-"), version=5)
        cpub = Client(b, uid("clean-pub-"), version=5)
        clients += [csub, cpub]
        csub.connect()
        cpub.connect()
        assert csub.subscribe(free, 1) == [1]
        cpub.publish(free, b"qos0", 0)
        assert cpub.publish(free, b"qos1", 1) == 0
        got = sorted((m.payload, m.qos) for m in csub.expect_messages(2))
        assert got == [(b"qos0", 0), (b"qos1", 1)], got

        # MQTT 5 QoS 2 to the persistent session: PUBREC 0x97.
        with RawClient(b, 5) as r:
            r.connect(uid("q2-"))
            r.send(B.publish(topic, b"qos2", qos=2, packet_id=7, properties=B.props()))
            rec = r.expect(Pubrec)
            assert (rec.packet_id, rec.reason_code) == (7, 0x97), rec
        # 3.1.1 QoS 1 to it: no way to say 0x97, so the connection is closed.
        with RawClient(b, 4) as r:
            r.connect(uid("v4-"))
            r.send(B.publish(topic, b"v4", qos=1, packet_id=3))
            assert r.expect_closed() == []

        # Make room: the subscriber reads and acknowledges its queue, which deletes rows.
        sub.connect(b)
        for payload in accepted:
            sub.wait_for(payload, WAIT * 2)
        wait_log(b, "writes succeed again", timeout=WAIT * 3)
        # What was held is committed now (a batch the full store did not take is retried,
        # never dropped), and acknowledged with 0. A refusal that took over 1 s on a loaded
        # machine was counted as held: it says 0x97, and was not accepted (a few at most:
        # more would be held messages refused).
        late = 0
        for r, payload in held:
            ack = r.expect(Puback, timeout=WAIT * 2)
            if ack.reason_code == 0x97 and late < 3:
                late += 1
                continue
            assert ack.reason_code == 0, ack
            accepted.append(payload)
        sub.disconnect()
        # New QoS 1 messages to the (offline) persistent session are accepted again.
        with RawClient(b, 5) as r:
            r.connect(uid("again-"))
            for i in range(1, 4):
                payload = b"again-%d" % i
                r.send(B.publish(topic, payload, qos=1, packet_id=i, properties=B.props()))
                ack = r.expect(Puback, timeout=WAIT * 2)
                assert (ack.packet_id, ack.reason_code) == (i, 0), ack
                accepted.append(payload)
        sub.connect(b)
        for payload in accepted:
            sub.wait_for(payload, WAIT * 2)
        sub.disconnect()
        assert len(re.findall(r"ALARM", b.log())) == 1, b.log()
        print(f"\nfull at message {refused} ({len(accepted) - 3 - len(held) + late} "
              f"accepted before, {len(held) - late} held until room was made, {late} "
              "refused late)")
        assert b.stop() == 0, b.log()
        assert "Traceback" not in b.log(), b.log()
    finally:
        sub.close()
        for c in clients:
            c.close()
        for r in open_conns:
            r.close()
        b.stop()
        b.cleanup()


# --- a full disk (a real one: a small tmpfs) ------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, mounted for the test (root only: CI runs as root; mount needs it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_refuses_what_it_cannot_store_and_recovers_when_space_returns(
        small_disk: Path) -> None:
    """The store on a 4 MB tmpfs, filled by another file but for ~200 KB: QoS 1 MQTT 5
    messages to an offline persistent session until PUBACK 0x97 (the operation log's write
    failed with ENOSPC); one ALARM line; a clean-session pair still served. The other file
    is deleted: with no restart, writes succeed again (logged), what was held is
    acknowledged, new messages are accepted, and every acknowledged message is
    delivered."""
    config = STORE_CONFIG + f'\n[store]\nfile = "{small_disk}/mqttd.db"\n'
    b = BrokerProcess(config)
    open_conns: list[RawClient] = []
    clients: list[Client] = []
    base = uid("disk/")
    topic = f"{base}/p"
    sub = Receiver(uid("disksub-"), 5, topic, 1)
    filler = small_disk / "filler"
    try:
        sub.connect(b, first=True)
        sub.disconnect()
        st = os.statvfs(small_disk)
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 200_000))

        accepted, held, refused = _fill(b, topic, open_conns, 2000)
        assert refused is not None, "the disk never filled up"
        assert accepted, "not one message fitted"
        log = b.log()
        assert len(re.findall(r"ALARM", log)) == 1, log
        assert "No space left on device" in log, log

        free = f"{base}/free"
        csub = Client(b, uid("clean-sub-"), version=5)
        cpub = Client(b, uid("clean-pub-"), version=5)
        clients += [csub, cpub]
        csub.connect()
        cpub.connect()
        assert csub.subscribe(free, 1) == [1]
        assert cpub.publish(free, b"qos1", 1) == 0
        assert [m.payload for m in csub.expect_messages(1)] == [b"qos1"]

        filler.unlink()  # space returns
        wait_log(b, "writes succeed again", timeout=WAIT * 3)
        for r, payload in held:
            ack = r.expect(Puback, timeout=WAIT * 2)
            assert ack.reason_code == 0, ack
            accepted.append(payload)
        with RawClient(b, 5) as r:
            r.connect(uid("again-"))
            r.send(B.publish(topic, b"again", qos=1, packet_id=1, properties=B.props()))
            ack = r.expect(Puback, timeout=WAIT * 2)
            assert ack.reason_code == 0, ack
            accepted.append(b"again")
        sub.connect(b)
        for payload in accepted:
            sub.wait_for(payload, WAIT * 2)
        sub.disconnect()
        assert b.stop() == 0, b.log()
        assert "Traceback" not in b.log(), b.log()
    finally:
        sub.close()
        for c in clients:
            c.close()
        for r in open_conns:
            r.close()
        b.stop()
        b.cleanup()


# --- what must not come back after a crash -------------------------------------------------

def test_a_will_the_acl_refused_is_not_stored_and_not_sent_after_kill_9(tmp_path: Path) -> None:
    """A will to a topic the client may not publish on is dropped at CONNACK; it must not be
    kept with the stored session either (a restart would publish it)."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite ok/#\ntopic read secret/#\n")
    config = STORE_CONFIG + f'\n[authz]\nacl_file = "{acl}"\n'
    expiry = B.props(B.prop("session_expiry_interval", 3600))
    b = BrokerProcess(config)
    b2 = None
    try:
        with RawClient(b, 5) as x:
            x.connect("watcher", properties=expiry)
            x.send(B.subscribe(1, [("secret/#", 1)], properties=B.props()))
            x.expect(Suback)
        w = RawClient(b, 5)
        w.connect("willer", properties=expiry, will_topic="secret/w", will_payload=b"forged",
                  will_qos=1)
        wait_log(b, "will to secret/w not authorized")
        b.stop(signal.SIGKILL)
        w.close()
        b2 = BrokerProcess(config, extra_args=["--data-dir", str(b.data_dir)])
        b2.data_dir = b.data_dir
        with RawClient(b2, 5) as x:
            x.connect("watcher", clean=False, properties=expiry)
            try:
                got = x.recv(2.0)
            except AssertionError:
                got = None
            assert got is None, got
    finally:
        b.stop()
        b.cleanup()
        if b2 is not None:
            b2.stop()
            b2.cleanup()

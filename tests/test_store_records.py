"""The operation log's record format 2 (``mqttd/store/_records_py.py``, its compiled
encoder ``mqttd/_speedups/_records.pyx``): the pure and compiled encoders write the same
bytes, decoding gives back the very operations, a log of format 1 (marshal, written by an
older mqttd) still replays, alone or followed by format-2 segments, and a format-2
record torn at any byte at the end of the log is a crash while anywhere else it is
corruption. (Kills at random points of a live broker writing compact records:
tests/test_durability.py, the one-holder QoS 1 kill -9 loop.)"""

from __future__ import annotations

import asyncio
import importlib
import marshal
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from core_util import Owner
from hypothesis import given, settings, strategies as st
from test_store_journal import Env, _journal, _settle

from mqttd import _accel
from mqttd.core.message import Message
from mqttd.mqtt.packets import SubOpts
from mqttd.store import records
from mqttd.store._records_py import TAG_OTHER, TAG_QDEL, TAG_QPUT, decode, encode_py
from mqttd.store.base import MSG_PUT, Q_DEL, Q_PID, Q_PUT, SESSION_PUT, Op, StoreError
from mqttd.store.oplog import OpLog
from mqttd.store.sqlite import SqliteBackend

_NO_C_REASON = "MQTTD_NO_EXTENSIONS is set: the compiled encoder is not built"
_HEADER = struct.Struct("<IIQ")


def _compiled() -> Callable[[list[Op]], bytes]:
    # Imported directly, not through the facade, so a missing build fails loudly.
    return importlib.import_module("mqttd._speedups._records").encode  # type: ignore[no-any-return]


@pytest.fixture(params=["py", "c"])
def encode(request: pytest.FixtureRequest) -> Callable[[list[Op]], bytes]:
    if request.param == "py":
        return encode_py
    if _accel.NO_EXTENSIONS:
        pytest.skip(_NO_C_REASON)
    return _compiled()


def test_facade_uses_the_compiled_encoder() -> None:
    assert records.encode is (encode_py if _accel.NO_EXTENSIONS else _compiled())


def _typed(value: object) -> object:
    """``value`` with the type of every part made visible (True == 1, but a bool written
    back as an int would be another operation)."""
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, [_typed(v) for v in value])
    if isinstance(value, dict):
        return ("dict", sorted((k, _typed(v)) for k, v in value.items()))
    return (type(value).__name__, value)


def qput(cid: str = "sub", qseq: int = 1, mid: int = 1, qos: int = 1, retain: bool = False,
         subids: tuple[int, ...] = (), share: str | None = None, pid: int = 0,
         topic: str = "t/1", payload: bytes = b"x", mqos: int = 1, mretain: bool = False,
         props: dict[str, Any] | None = None, sender: str | None = "pub",
         stamp: float = 1.5e9, expiry: float = 0.0) -> Op:
    return (Q_PUT, cid, qseq, mid, qos, retain, subids, share, pid,
            (topic, payload, mqos, mretain, {} if props is None else props), sender, stamp,
            expiry)


# Strings the compact form carries and some it hands to marshal (a lone surrogate, one
# 0xFFFF bytes or longer); ints in and out of its ranges.
_text = st.one_of(st.text(max_size=8), st.just("\ud800"), st.just("é" * 40000))
_int = st.one_of(st.integers(0, 70000), st.integers(-2 ** 64, 2 ** 64))
_qput = st.builds(
    qput, cid=_text, qseq=_int, mid=_int, qos=st.integers(0, 300), retain=st.booleans(),
    subids=st.sampled_from([(), (3,)]), share=st.sampled_from([None, "$share/g/t"]),
    pid=_int, topic=_text, payload=st.binary(max_size=40), mqos=st.integers(0, 2),
    mretain=st.booleans(), props=st.sampled_from([None, {"content_type": "x"}]),
    sender=st.one_of(st.none(), _text), stamp=st.floats(allow_nan=False),
    expiry=st.sampled_from([0.0, 1.7e9]))
_qdel = st.builds(lambda c, q: (Q_DEL, c, q), _text, _int)
_other = st.one_of(
    st.builds(lambda c, q, p: (Q_PID, c, q, p), _text, _int, _int),
    st.builds(lambda m, b: (MSG_PUT, m, b, "pub", 1.0, 0.0), _int, st.binary(max_size=20)),
    st.builds(lambda c: (SESSION_PUT, c, 60, 1.0, 0.0, None, 0, "default"), _text),
    st.just((Q_DEL, "a", 1, 2)),  # not the shape of a Q_DEL: marshal keeps it as it is
    st.just(qput()[:9]))  # a row referencing a message: marshal too
_ops = st.lists(st.one_of(_qput, _qdel, _other), max_size=12)


@settings(max_examples=400, deadline=None)
@given(_ops)
def test_pure_and_compiled_write_the_same_bytes_and_decode_gives_the_ops_back(
        ops: list[Op]) -> None:
    data = encode_py(ops)
    assert data[0] == records.FORMAT
    assert _typed(decode(data)) == _typed(ops)
    if not _accel.NO_EXTENSIONS:
        assert _compiled()(ops) == data


def test_the_queue_rows_of_durable_qos1_take_the_compact_form(
        encode: Callable[[list[Op]], bytes], tmp_path: Path) -> None:
    """The operations a real journal issues for a delivery to one durable session and its
    acknowledgement: an inline Q_PUT and a Q_DEL, both compact (no marshal run)."""
    async def issue() -> list[Op]:
        journal = _journal(SqliteBackend(str(tmp_path / "mqttd.db")), tmp_path)
        journal.start(asyncio.get_running_loop())
        env = Env(journal)
        session = env.open(Owner("sub"))
        env.dispatcher.subscribe(session, "t/#", SubOpts(1), 0)
        await _settle(journal)
        pid = session.start_inflight((Message("t/1", b"hello", 1, False, None, "pub"),
                                      1, False, (), None))
        ops = [op for op in journal._ops if op is not None]
        await _settle(journal)
        session.ack(pid, 1)
        ops += journal._log_only
        await _settle(journal)
        await journal.aclose()
        return ops

    ops = asyncio.run(issue())
    assert [op[0] for op in ops] == [Q_PUT, Q_DEL]
    data = encode(ops)
    assert data[1] == TAG_QPUT and TAG_OTHER not in (data[1], data[-(1 + 8 + 2 + 3)])
    assert data[-(1 + 8 + 2 + 3)] == TAG_QDEL
    assert _typed(decode(data)) == _typed(ops)


OPS_A: list[Op] = [qput(qseq=1, mid=1, payload=b"a"), (SESSION_PUT, "s", 60, 1.0, 0.0, None,
                                                         0, "default")]
OPS_B: list[Op] = [qput(qseq=2, mid=2, payload=b"b" * 300), (Q_DEL, "sub", 1)]
OPS_C: list[Op] = [(Q_DEL, "sub", 2), qput(qseq=3, mid=3, sender=None)]


def _write_format1(path: Path, batches: list[tuple[list[Op], int]]) -> None:
    """A segment as mqttd wrote it before format 2: marshal version 4 payloads."""
    with open(path, "wb") as f:
        for ops, seq in batches:
            payload = marshal.dumps(ops, 4)
            f.write(_HEADER.pack(len(payload), zlib.crc32(payload), seq) + payload)


def _replayed(tmp_path: Path) -> list[tuple[int, int, list[Op]]]:
    return list(OpLog(str(tmp_path / "mqttd.db")).replay())


def test_a_log_of_format_1_replays_and_new_segments_follow_it_in_format_2(
        tmp_path: Path) -> None:
    oplog = OpLog(str(tmp_path / "mqttd.db"))
    _write_format1(Path(oplog.path(1)), [(OPS_A, 2), (OPS_B, 4)])
    assert [(s, q, _typed(o)) for s, q, o in _replayed(tmp_path)] == [
        (1, 2, _typed(OPS_A)), (1, 4, _typed(OPS_B))]
    oplog.open()  # as a newer mqttd does after an old one stopped: a new segment
    assert oplog.segment == 2
    oplog.append(OPS_C, 6)
    oplog.close()
    assert Path(oplog.path(2)).read_bytes()[_HEADER.size] == records.FORMAT
    assert [(s, q, _typed(o)) for s, q, o in _replayed(tmp_path)] == [
        (1, 2, _typed(OPS_A)), (1, 4, _typed(OPS_B)), (2, 6, _typed(OPS_C))]


def test_an_old_log_replays_into_the_store_at_start(tmp_path: Path) -> None:
    """A format-1 log left by an older mqttd (killed before its application) is applied
    to the database by the start's replay, and the log is gone after."""
    backend = SqliteBackend(str(tmp_path / "mqttd.db"))
    restored = backend.open()
    backend.close()
    oplog = OpLog(str(tmp_path / "mqttd.db"))
    _write_format1(Path(oplog.path(restored.applied_seq + 1)),
                   [([(SESSION_PUT, "sub", 60, 1.0, 0.0, None, 0, "default"),
                      qput(qseq=7, mid=9, payload=b"kept")], 2)])
    backend = SqliteBackend(str(tmp_path / "mqttd.db"))
    journal = _journal(backend, tmp_path)
    state = backend.reload()
    journal.oplog.close()
    backend.close()
    assert [s.client_id for s in state.sessions] == ["sub"]
    rows = state.sessions[0].queue
    assert [(q.qseq, q.msg_id) for q in rows] == [(7, 9)]
    assert rows[0].message is not None and b"kept" in rows[0].message.packet
    assert OpLog(str(tmp_path / "mqttd.db")).segments() == []


def test_a_format2_record_torn_at_any_byte_at_the_end_is_a_crash(tmp_path: Path) -> None:
    oplog = OpLog(str(tmp_path / "mqttd.db"))
    oplog.open()
    oplog.append(OPS_A, 2)
    size_a = oplog.current_size
    oplog.append(OPS_C, 4)
    oplog.close()
    path = Path(oplog.path(1))
    whole = path.read_bytes()
    for cut in range(size_a, len(whole)):
        path.write_bytes(whole[:cut])
        assert [(q, _typed(o)) for _, q, o in _replayed(tmp_path)] == [(2, _typed(OPS_A))], cut


def test_a_damaged_format2_record_before_the_end_is_corruption(tmp_path: Path) -> None:
    """A torn record followed by another segment, and a record whose checksum matches but
    whose content is not format 2 (a bug, never a crash): the start refuses, naming the
    file and the byte."""
    oplog = OpLog(str(tmp_path / "mqttd.db"))
    oplog.open()
    oplog.append(OPS_A, 2)
    oplog.append(OPS_B, 4)
    oplog.close()
    path = Path(oplog.path(1))
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])
    later = OpLog(str(tmp_path / "mqttd.db"))
    later.open()
    later.append(OPS_C, 6)
    later.close()
    with pytest.raises(StoreError, match=r"mqttd\.db\.oplog\.000001: corrupt operation log"):
        _replayed(tmp_path)
    Path(later.path(2)).unlink()
    for bad in (bytes((records.FORMAT, 9)), bytes((records.FORMAT, TAG_QPUT, 1, 2)),
                bytes((records.FORMAT, TAG_QDEL)) + struct.pack("<qH", 1, 5) + b"ab",
                bytes((records.FORMAT, TAG_OTHER)) + struct.pack("<I", 3) + b"N"):
        path.write_bytes(_HEADER.pack(len(bad), zlib.crc32(bad), 2) + bad)
        with pytest.raises(StoreError, match=r"oplog\.000001: corrupt operation log \(byte 0"):
            _replayed(tmp_path)

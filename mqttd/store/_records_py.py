"""The operation log's record payload, pure-Python reference (the compiled twin of the
encoder is ``mqttd/_speedups/_records.pyx``; the facade is ``mqttd/store/records.py``).

Format 2 of a record's payload (format 1, ``marshal.dumps`` of the list of operations,
starts with ``[`` or ``\\xdb``; it is still read, never written):

- the byte ``0x02``;
- then the operations in order, each introduced by a tag byte (little-endian fields):

  - ``0x01``: an inline ``Q_PUT`` (13 items, ``store/base.py``) whose delivery has no
    subscription identifiers, is not shared, and whose message has no properties: the
    durable QoS 1 delivery of the common message, most of what the log carries. Fixed
    part ``<qqIddBBBB`` (qseq, msg id, packet id, timestamp, expiry at, delivery QoS,
    delivery retain, message QoS, message retain), then client id (``u16`` length and
    UTF-8), topic (the same), sender (the same, length 0xFFFF: None), payload (``u32``
    length and the bytes);
  - ``0x02``: a ``Q_DEL``: qseq (``<q``), client id (``u16`` length and UTF-8);
  - ``0x00``: a run of any other operations: ``u32`` length, ``marshal.dumps`` of their
    list, version 2 (version 3 and later flag objects by their reference count, so the
    same list could give other bytes).

Why: ``marshal`` of the nested tuple of a queue row costs ~0.3 µs a message on the
benchmark machine, most of the log's CPU; writing its fields flat costs a fraction of that
(compiled), and the records are smaller, so the CRC and the write cost less too. The
decoder gives back exactly the tuples that were encoded (the same types: bools as bools,
an empty properties dict as ``{}``), so replay, ``coalesce`` and the backend see no
difference.
"""

from __future__ import annotations

import marshal
import struct

from .base import Q_DEL, Q_PUT, Op

__all__ = ["FORMAT", "decode", "encode_py"]

#: The first byte of a format-2 payload (a marshal list starts with 0x5B or 0xDB).
FORMAT = 2
_MARSHAL_VERSION = 2
TAG_OTHER, TAG_QPUT, TAG_QDEL = 0, 1, 2
_QPUT = struct.Struct("<qqIddBBBB")
_QDEL = struct.Struct("<q")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_NONE = 0xFFFF
_I64 = 1 << 63


def _text(s: object) -> bytes | None:
    """``s`` as UTF-8 when it is a str the format can carry, else None."""
    if type(s) is not str:
        return None
    try:
        b = s.encode()
    except UnicodeEncodeError:  # lone surrogates: marshal keeps them
        return None
    return b if len(b) < _NONE else None


def _qput(op: Op) -> bytes | None:
    """An inline Q_PUT in the compact form, or None if it does not fit it."""
    if len(op) != 13 or op[6] != () or type(op[6]) is not tuple or op[7] is not None:
        return None
    (_, cid, qseq, mid, qos, retain, _, _, pid, fields, sender, stamp, expiry) = op
    if (type(qseq) is not int or type(mid) is not int or type(qos) is not int
            or type(retain) is not bool or type(pid) is not int or type(fields) is not tuple
            or len(fields) != 5 or type(stamp) is not float or type(expiry) is not float):
        return None
    if not (-_I64 <= qseq < _I64 and -_I64 <= mid < _I64 and 0 <= qos < 256
            and 0 <= pid < 1 << 32):
        return None
    topic, payload, mqos, mretain, props = fields
    if (type(payload) is not bytes or type(mqos) is not int or not 0 <= mqos < 256
            or type(mretain) is not bool or type(props) is not dict or props
            or len(payload) >= 1 << 32):
        return None
    c = _text(cid)
    t = _text(topic)
    if c is None or t is None:
        return None
    if sender is None:
        s = None
    else:
        s = _text(sender)
        if s is None:
            return None
    return b"".join((
        bytes((TAG_QPUT,)),
        _QPUT.pack(qseq, mid, pid, stamp, expiry, qos, retain, mqos, mretain),
        _U16.pack(len(c)), c, _U16.pack(len(t)), t,
        _U16.pack(_NONE) if s is None else _U16.pack(len(s)) + s,
        _U32.pack(len(payload)), payload))


def _qdel(op: Op) -> bytes | None:
    if len(op) != 3:
        return None
    cid, qseq = op[1], op[2]
    if type(qseq) is not int or not -_I64 <= qseq < _I64:
        return None
    c = _text(cid)
    if c is None:
        return None
    return bytes((TAG_QDEL,)) + _QDEL.pack(qseq) + _U16.pack(len(c)) + c


def encode_py(ops: list[Op]) -> bytes:
    """The payload of a record holding ``ops`` (format 2)."""
    out = [bytes((FORMAT,))]
    other: list[Op] = []
    for op in ops:
        code = op[0]
        part = _qput(op) if code == Q_PUT else _qdel(op) if code == Q_DEL else None
        if part is None:
            other.append(op)
            continue
        if other:
            blob = marshal.dumps(other, _MARSHAL_VERSION)
            out.append(bytes((TAG_OTHER,)) + _U32.pack(len(blob)) + blob)
            other = []
        out.append(part)
    if other:
        blob = marshal.dumps(other, _MARSHAL_VERSION)
        out.append(bytes((TAG_OTHER,)) + _U32.pack(len(blob)) + blob)
    return b"".join(out)


def _str(data: bytes, off: int) -> tuple[str | None, int]:
    (n,) = _U16.unpack_from(data, off)
    off += 2
    if n == _NONE:
        return None, off
    end = off + n
    if end > len(data):
        raise ValueError("a string past the end of the record")
    return data[off:end].decode(), end


def decode(payload: bytes) -> list[Op]:
    """The operations of a record's payload, format 1 (marshal) or 2. Raises ValueError
    (or EOFError, TypeError from marshal) for a payload that is neither."""
    if not payload:
        raise ValueError("an empty record")
    if payload[0] != FORMAT:
        ops = marshal.loads(payload)  # format 1, written by mqttd before format 2
        if not isinstance(ops, list):
            raise ValueError("not a list of operations")
        return ops
    out: list[Op] = []
    off = 1
    end = len(payload)
    try:
        while off < end:
            tag = payload[off]
            off += 1
            if tag == TAG_QPUT:
                qseq, mid, pid, stamp, expiry, qos, retain, mqos, mretain = \
                    _QPUT.unpack_from(payload, off)
                off += _QPUT.size
                cid, off = _str(payload, off)
                topic, off = _str(payload, off)
                sender, off = _str(payload, off)
                (n,) = _U32.unpack_from(payload, off)
                off += 4
                if off + n > end or cid is None or topic is None:
                    raise ValueError("a malformed queue row")
                body = payload[off:off + n]
                off += n
                out.append((Q_PUT, cid, qseq, mid, qos, bool(retain), (), None, pid,
                            (topic, body, mqos, bool(mretain), {}), sender, stamp, expiry))
            elif tag == TAG_QDEL:
                (qseq,) = _QDEL.unpack_from(payload, off)
                off += _QDEL.size
                cid, off = _str(payload, off)
                if cid is None:
                    raise ValueError("a malformed queue row deletion")
                out.append((Q_DEL, cid, qseq))
            elif tag == TAG_OTHER:
                (n,) = _U32.unpack_from(payload, off)
                off += 4
                if off + n > end:
                    raise ValueError("operations past the end of the record")
                ops = marshal.loads(payload[off:off + n])
                off += n
                if not isinstance(ops, list):
                    raise ValueError("not a list of operations")
                out.extend(ops)
            else:
                raise ValueError(f"unknown operation tag {tag}")
    except struct.error as err:
        raise ValueError(f"a field past the end of the record ({err})") from None
    except UnicodeDecodeError:
        raise ValueError("a string that is not UTF-8") from None
    return out

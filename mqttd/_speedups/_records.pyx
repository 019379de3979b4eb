# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Compiled encoder of the operation log's records: the fast twin of
``mqttd/store/_records_py.py`` (``encode_py``), which holds the format's description.

Same bytes for the same operations (tests/test_store_records.py checks it on random
operations). The two common operations, an inline ``Q_PUT`` and a ``Q_DEL``, are written
field by field into one growing C buffer; everything else, and any operation whose fields
are not the exact types the compact form carries, goes into a ``marshal`` run as in the
reference. The decoder stays pure Python: it runs once, at start.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

import marshal

__all__ = ["encode"]

cdef int Q_PUT = 7
cdef int Q_DEL = 10
cdef uint8_t FORMAT = 2
cdef uint8_t TAG_OTHER = 0
cdef uint8_t TAG_QPUT = 1
cdef uint8_t TAG_QDEL = 2
cdef Py_ssize_t NONE16 = 0xFFFF
cdef object _dumps = marshal.dumps


cdef struct Buf:
    char *data
    Py_ssize_t size
    Py_ssize_t cap


cdef int _grow(Buf *b, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap
    cdef char *p
    if b.size + need <= b.cap:
        return 0
    cap = b.cap * 2
    if cap < b.size + need:
        cap = b.size + need + 256
    p = <char *>PyMem_Realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


# Little-endian writers, byte by byte: the reference's struct "<" on any machine.
cdef inline void _u8(Buf *b, uint8_t v) noexcept:
    b.data[b.size] = <char>v
    b.size += 1


cdef inline void _le(Buf *b, uint64_t v, int n) noexcept:
    cdef int i
    for i in range(n):
        b.data[b.size + i] = <char>((v >> (8 * i)) & 0xFF)
    b.size += n


cdef inline void _f64(Buf *b, double v) noexcept:
    cdef uint64_t u
    memcpy(&u, &v, 8)
    _le(b, u, 8)


cdef inline void _raw(Buf *b, const char *p, Py_ssize_t n) noexcept:
    memcpy(b.data + b.size, p, n)
    b.size += n


cdef const char *_utf8(object s, Py_ssize_t *n):
    """UTF-8 of an exact str the format can carry (shorter than 0xFFFF bytes), else NULL
    (no exception left set)."""
    cdef const char *p
    if type(s) is not str:
        return NULL
    try:
        p = PyUnicode_AsUTF8AndSize(s, n)
    except UnicodeEncodeError:
        return NULL
    if n[0] >= NONE16:
        return NULL
    return p


cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object v, int *overflow) except? -1


cdef inline bint _i64(object v, long long *out) except -1:
    """An exact int within int64, into ``out``."""
    cdef int overflow = 0
    if type(v) is not int:
        return False
    out[0] = PyLong_AsLongLongAndOverflow(v, &overflow)
    return overflow == 0


cdef bint _qput(Buf *b, tuple op) except -1:
    """Append an inline Q_PUT in the compact form; False (nothing written) if it does not
    fit it."""
    cdef Py_ssize_t nc, nt, ns = 0, np
    cdef const char *c
    cdef const char *t
    cdef const char *s = NULL
    cdef long long qseq, mid, qos, pid, mqos
    cdef tuple fields
    cdef object f, payload, sender, stamp, expiry
    if len(op) != 13:
        return False
    f = op[6]
    if type(f) is not tuple or len(<tuple>f) != 0 or op[7] is not None:
        return False
    if not (_i64(op[2], &qseq) and _i64(op[3], &mid) and _i64(op[4], &qos)
            and _i64(op[8], &pid) and type(op[5]) is bool):
        return False
    if not (0 <= qos < 256 and 0 <= pid <= 0xFFFFFFFF):
        return False
    f = op[9]
    sender, stamp, expiry = op[10], op[11], op[12]
    if type(f) is not tuple or len(<tuple>f) != 5 or type(stamp) is not float \
            or type(expiry) is not float:
        return False
    fields = <tuple>f
    payload = fields[1]
    f = fields[4]
    if not (type(payload) is bytes and _i64(fields[2], &mqos) and type(fields[3]) is bool
            and type(f) is dict):
        return False
    if len(<dict>f) != 0 or not 0 <= mqos < 256:
        return False
    np = PyBytes_GET_SIZE(payload)
    if np > 0xFFFFFFFF:
        return False
    c = _utf8(op[1], &nc)
    if c == NULL:
        return False
    t = _utf8(fields[0], &nt)
    if t == NULL:
        return False
    if sender is not None:
        s = _utf8(sender, &ns)
        if s == NULL:
            return False
    _grow(b, 1 + 44 + 6 + nc + nt + ns + 4 + np)
    _u8(b, TAG_QPUT)
    _le(b, <uint64_t>qseq, 8)
    _le(b, <uint64_t>mid, 8)
    _le(b, <uint64_t>pid, 4)
    _f64(b, <double>stamp)
    _f64(b, <double>expiry)
    _u8(b, <uint8_t>qos)
    _u8(b, 1 if op[5] is True else 0)
    _u8(b, <uint8_t>mqos)
    _u8(b, 1 if fields[3] is True else 0)
    _le(b, <uint64_t>nc, 2)
    _raw(b, c, nc)
    _le(b, <uint64_t>nt, 2)
    _raw(b, t, nt)
    if s == NULL:
        _le(b, <uint64_t>NONE16, 2)
    else:
        _le(b, <uint64_t>ns, 2)
        _raw(b, s, ns)
    _le(b, <uint64_t>np, 4)
    _raw(b, PyBytes_AS_STRING(payload), np)
    return True


cdef bint _qdel(Buf *b, tuple op) except -1:
    cdef Py_ssize_t nc
    cdef const char *c
    cdef long long qseq
    if len(op) != 3:
        return False
    if not _i64(op[2], &qseq):
        return False
    c = _utf8(op[1], &nc)
    if c == NULL:
        return False
    _grow(b, 1 + 8 + 2 + nc)
    _u8(b, TAG_QDEL)
    _le(b, <uint64_t>qseq, 8)
    _le(b, <uint64_t>nc, 2)
    _raw(b, c, nc)
    return True


cdef int _other(Buf *b, list other) except -1:
    cdef bytes blob = _dumps(other, 2)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(blob)
    _grow(b, 5 + n)
    _u8(b, TAG_OTHER)
    _le(b, <uint32_t>n, 4)
    _raw(b, PyBytes_AS_STRING(blob), n)
    return 0


def encode(list ops):
    """The payload of a record holding ``ops`` (format 2): ``encode_py``'s bytes."""
    cdef Buf b
    cdef list other = []
    cdef bint done
    cdef object code
    cdef Py_ssize_t mark
    b.cap = 256 + 160 * len(ops)
    b.size = 0
    b.data = <char *>PyMem_Malloc(b.cap)
    if b.data == NULL:
        raise MemoryError()
    try:
        _u8(&b, FORMAT)
        for op in ops:
            done = False
            mark = b.size
            if type(op) is tuple:
                code = (<tuple>op)[0]
                if type(code) is int:
                    if code == Q_PUT:
                        done = _qput(&b, <tuple>op)
                    elif code == Q_DEL:
                        done = _qdel(&b, <tuple>op)
            if not done:
                other.append(op)
            elif other:
                # The run of other ops before this one goes first (rare: a session or
                # subscription change between queue rows): the op is moved behind it.
                _before(&b, mark, other)
                other = []
        if other:
            _other(&b, other)
        return PyBytes_FromStringAndSize(b.data, b.size)
    finally:
        PyMem_Free(b.data)


cdef int _before(Buf *b, Py_ssize_t mark, list other) except -1:
    """Put the marshal run ``other`` in front of the op written from ``mark`` on."""
    cdef Py_ssize_t n = b.size - mark
    cdef char *tmp = <char *>PyMem_Malloc(n)
    if tmp == NULL:
        raise MemoryError()
    try:
        memcpy(tmp, b.data + mark, n)
        b.size = mark
        _other(b, other)
        _grow(b, n)
        _raw(b, tmp, n)
    finally:
        PyMem_Free(tmp)
    return 0

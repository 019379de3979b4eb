# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Compiled MQTT codec: the fast twin of ``mqttd/_codec_py.py``.

Same API, same packet classes, same :class:`~mqttd.errors.PacketError` with the
same reason code and message on the same bytes, checks in the same order. The
reference is the specification: every decoder here mirrors its namesake there,
line by line, so read them side by side.

Where the speed comes from:

* ``feed`` parses straight out of the caller's buffer (a ``const unsigned
  char*`` taken once per call) and copies only the unfinished tail into the
  parser's own buffer. A buffered packet is completed by appending just the
  bytes it still lacks, so a large packet arriving in small reads costs O(n)
  and only its (at most 5-byte) fixed header is looked at again per read.
* No reader object per packet: a C struct on the stack and ``inline`` readers.
* Packet objects are allocated with ``tp_alloc`` and their slots filled through
  the member descriptors' offsets, found once at import; that skips the
  dataclass ``__init__`` call, most of what constructing one costs. If ``mqttd.packets`` ever
  stops being plain slotted dataclasses, the classes are called instead.
* Topics are scanned once against a byte-class table (ASCII fast path: UTF-8
  validity, U+0000, disallowed controls and wildcards in one pass).

``encode`` writes well-typed packets (exact ``int``/``bool``, ``str``,
``bytes``, ``dict``, ``list``, ``tuple`` fields, values in range) directly. Any
other field, and every input the reference rejects, is handed to the reference
encoder, which then produces exactly the reference's bytes or exception: the
error semantics of encoding live in one place.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from libc.string cimport memcmp, memcpy

import dataclasses
import operator

from mqttd.mqtt import packets as _packets
from mqttd.mqtt import properties as P
from mqttd.mqtt import reasons as R
from mqttd.mqtt._codec_py import SUBSCRIBE_LAZY_BYTES
from mqttd.mqtt._codec_py import encode_py as _encode_py
from mqttd.mqtt.errors import MALFORMED_PACKET, PACKET_TOO_LARGE, PROTOCOL_ERROR
from mqttd.mqtt.errors import UNSUPPORTED_PROTOCOL_VERSION, PacketError
from mqttd.mqtt.packets import PACKET_NAMES

cdef extern from *:
    """
    #include "structmember.h"

    /* A new, zeroed (and GC-tracked) instance of the slotted class tp. */
    static CYTHON_INLINE PyObject *mq_alloc(PyObject *tp) {
        return ((PyTypeObject *)tp)->tp_alloc((PyTypeObject *)tp, 0);
    }
    /* Store v (a new reference is taken) in the empty slot at offset off. */
    static CYTHON_INLINE void mq_put(PyObject *o, Py_ssize_t off, PyObject *v) {
        Py_INCREF(v);
        *(PyObject **)((char *)o + off) = v;
    }
    /* Borrowed slot value, NULL if unset. */
    static CYTHON_INLINE PyObject *mq_get(PyObject *o, Py_ssize_t off) {
        return *(PyObject **)((char *)o + off);
    }
    /* Offset of the writable object slot that member descriptor descr gives
       instances of tp, or -1 if it is not exactly that. */
    static Py_ssize_t mq_slot_offset(PyObject *descr, PyObject *tp) {
        PyMemberDef *m;
        if (Py_TYPE(descr) != &PyMemberDescr_Type) return -1;
        if ((PyObject *)PyDescr_TYPE(descr) != tp) return -1;
        m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)) return -1;
        if (m->offset < (Py_ssize_t)sizeof(PyObject)
                || m->offset + (Py_ssize_t)sizeof(PyObject *) > ((PyTypeObject *)tp)->tp_basicsize)
            return -1;
        return m->offset;
    }
    /* A str holding the n ASCII bytes at p (already known to be ASCII). */
    static CYTHON_INLINE PyObject *mq_ascii(const unsigned char *p, Py_ssize_t n) {
        PyObject *s = PyUnicode_New(n, 127);
        if (s != NULL && n) memcpy(PyUnicode_1BYTE_DATA(s), p, (size_t)n);
        return s;
    }
    /* Whether s (a str mq_ascii made) holds exactly the n bytes at p. */
    static CYTHON_INLINE int mq_same_ascii(PyObject *s, const unsigned char *p, Py_ssize_t n) {
        return PyUnicode_GET_LENGTH(s) == n
            && (n == 0 || memcmp(PyUnicode_1BYTE_DATA(s), p, (size_t)n) == 0);
    }
    /* 1 and *out = value if o is a bool or an exact int in [0, hi]; else 0, no error. */
    static CYTHON_INLINE int mq_small(PyObject *o, long hi, long *out) {
        long v;
        int overflow;
        if (o == Py_True) v = 1;
        else if (o == Py_False) v = 0;
        else if (PyLong_CheckExact(o)) {
            v = PyLong_AsLongAndOverflow(o, &overflow);
            if (overflow) return 0;
        }
        else return 0;
        if (v < 0 || v > hi) return 0;
        *out = v;
        return 1;
    }
    /* Truth of a builtin whose truth runs no user code: 0 or 1; -1 for anything else. */
    static CYTHON_INLINE int mq_truth(PyObject *o) {
        if (o == Py_True) return 1;
        if (o == Py_False || o == Py_None) return 0;
        if (PyLong_CheckExact(o)) return PyObject_IsTrue(o);
        if (PyDict_CheckExact(o)) return PyDict_GET_SIZE(o) != 0;
        return -1;
    }
    static CYTHON_INLINE PyObject *mq_type(PyObject *o) { return (PyObject *)Py_TYPE(o); }
    /* UTF-8 of an exact str of at most 65535 encoded bytes; NULL (no error) otherwise. */
    static CYTHON_INLINE const char *mq_utf8(PyObject *o, Py_ssize_t *n) {
        const char *s;
        if (!PyUnicode_CheckExact(o)) return NULL;
        s = PyUnicode_AsUTF8AndSize(o, n);
        if (s == NULL) { PyErr_Clear(); return NULL; }
        if (*n > 0xFFFF) return NULL;
        return s;
    }
    """
    object mq_alloc(PyObject* tp)
    void mq_put(object o, Py_ssize_t off, PyObject* v)
    PyObject* mq_get(PyObject* o, Py_ssize_t off)
    Py_ssize_t mq_slot_offset(object descr, object tp)
    object mq_ascii(const unsigned char* p, Py_ssize_t n)
    int mq_same_ascii(PyObject* s, const unsigned char* p, Py_ssize_t n)
    int mq_small(PyObject* o, long hi, long* out)
    int mq_truth(PyObject* o)
    const char* mq_utf8(PyObject* o, Py_ssize_t* n)
    PyObject* mq_type(PyObject* o)

cdef extern from "Python.h":
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    Py_ssize_t PyUnicode_GET_LENGTH(object s)
    int PyUnicode_KIND(object s)
    void* PyUnicode_DATA(object s)
    unsigned int PyUnicode_READ(int kind, void* data, Py_ssize_t i)
    bint PyUnicode_CheckExact(PyObject* o)
    bint PyDict_CheckExact(PyObject* o)
    bint PyList_CheckExact(PyObject* o)
    bint PyTuple_CheckExact(PyObject* o)
    Py_ssize_t PyDict_GET_SIZE(PyObject* o)
    int PyDict_Next(PyObject* d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    PyObject* PyDict_GetItem(PyObject* d, PyObject* key)
    Py_ssize_t PyList_GET_SIZE(PyObject* o)
    PyObject* PyList_GET_ITEM(PyObject* o, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(PyObject* o)
    PyObject* PyTuple_GET_ITEM(PyObject* o, Py_ssize_t i)
    long PyLong_AsLong(PyObject* o)

#: Largest packet MQTT can express: 1 type byte + 4 length bytes + 268,435,455.
MAX_PACKET_SIZE = 268_435_460

# Clamp for max_packet_size: a limit beyond any packet's size rejects nothing.
cdef long long MAX_LIMIT = 1099511627776

cdef enum:
    MAX_VARINT = 268_435_455
    # A buffer that grew past this is freed once it is empty again.
    KEEP_BUFFER = 64 * 1024
    # Longest topic the parser keeps to reuse (see Parser._topic).
    _TOPIC_CACHE_MAX = 256

    # Property wire types (mqttd.properties); 0 = unknown identifier.
    W_BYTE = 1
    W_TWO = 2
    W_FOUR = 3
    W_VARINT = 4
    W_UTF8 = 5
    W_BINARY = 6
    W_PAIR = 7

    # Property flags.
    PF_BOOLEAN = 1
    PF_NONZERO = 2
    PF_REPEATABLE = 4
    PF_USER = 8
    PF_SUBID = 16

    # Byte classes for the one-pass string scan.
    C_HIGH = 1      # not ASCII: decode and scan the code points
    C_ZERO = 2      # U+0000
    C_CTRL = 4      # disallowed in topics: U+0001-001F, U+007F
    C_WILD = 8      # '+' or '#'

    # Packet classes, by their index in _CLASSES.
    K_CONNECT = 1
    K_CONNACK = 2
    K_PUBLISH = 3
    K_PUBACK = 4
    K_PUBREC = 5
    K_PUBREL = 6
    K_PUBCOMP = 7
    K_SUBSCRIBE = 8
    K_SUBACK = 9
    K_UNSUBSCRIBE = 10
    K_UNSUBACK = 11
    K_PINGREQ = 12
    K_PINGRESP = 13
    K_DISCONNECT = 14
    K_AUTH = 15
    K_WILL = 16
    K_SUBOPTS = 17
    N_CLASSES = 18
    MAX_FIELDS = 9

    # Reason-code sets (mqttd.reasons), by index in _VALID.
    V_CONNACK_V5 = 0
    V_CONNACK_V3 = 1
    V_SUBACK_V5 = 2
    V_SUBACK_V3 = 3
    V_UNSUBACK = 4
    V_DISCONNECT = 5
    V_AUTH = 6
    V_PUBACK = 7
    V_PUBREC = 8
    V_PUBREL = 9
    V_PUBCOMP = 10
    N_VALID = 11

    # Pseudo packet type of Will Properties (mqttd.properties.WILL).
    WHERE_WILL = 16

# --- tables, filled at import from the Python modules that define them ---------------------

# Fixed-header flags each packet type must carry; PUBLISH (3) has its own rules.
cdef int _FLAGS[16]
for _i, _f in enumerate((-1, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)):
    _FLAGS[_i] = _f

cdef unsigned char _CLS[256]
cdef unsigned char _P_WT[256]
cdef unsigned char _P_FL[256]
cdef unsigned int _P_WHERE[256]
cdef unsigned char _VALID[N_VALID][256]

cdef tuple _P_NAMES = tuple([None] * 256)
cdef dict _P_IDENT = {}           # property name -> identifier, for encoding
cdef tuple _WHERE_NAMES

cdef PyObject* _CLSP[N_CLASSES]   # borrowed; _CLASSES keeps them alive
cdef Py_ssize_t _OFF[N_CLASSES][MAX_FIELDS]
cdef int _NFIELDS[N_CLASSES]
cdef bint _FAST[N_CLASSES]
cdef tuple _CLASSES

_FIELDS = {
    K_CONNECT: ("proto_name", "proto_level", "clean_start", "keepalive", "client_id", "will",
                "username", "password", "properties"),
    K_CONNACK: ("session_present", "reason_code", "properties"),
    K_PUBLISH: ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties"),
    K_PUBACK: ("packet_id", "reason_code", "properties"),
    K_PUBREC: ("packet_id", "reason_code", "properties"),
    K_PUBREL: ("packet_id", "reason_code", "properties"),
    K_PUBCOMP: ("packet_id", "reason_code", "properties"),
    K_SUBSCRIBE: ("packet_id", "topics", "properties", "rest"),
    K_SUBACK: ("packet_id", "reason_codes", "properties"),
    K_UNSUBSCRIBE: ("packet_id", "topics", "properties"),
    K_UNSUBACK: ("packet_id", "reason_codes", "properties"),
    K_PINGREQ: (),
    K_PINGRESP: (),
    K_DISCONNECT: ("reason_code", "properties"),
    K_AUTH: ("reason_code", "properties"),
    K_WILL: ("topic", "payload", "qos", "retain", "properties"),
    K_SUBOPTS: ("qos", "no_local", "retain_as_published", "retain_handling"),
}


cdef void _init_classes() except *:
    global _CLASSES
    classes = [None] * N_CLASSES
    for k, cls in _packets.PACKET_CLASSES.items():
        classes[k] = cls
    classes[K_WILL] = _packets.Will
    classes[K_SUBOPTS] = _packets.SubOpts
    _CLASSES = tuple(classes)
    for k in range(1, N_CLASSES):
        cls = classes[k]
        names = _FIELDS[k]
        _CLSP[k] = <PyObject*>cls
        _NFIELDS[k] = len(names)
        # Fill slots directly only for plain slotted dataclasses whose fields are
        # exactly the ones we expect, in order, all set by __init__.
        fast = (
            dataclasses.is_dataclass(cls)
            and tuple(f.name for f in dataclasses.fields(cls)) == names
            and all(f.init for f in dataclasses.fields(cls))
            and cls.__new__ is object.__new__
            and not hasattr(cls, "__post_init__")
            and "__dict__" not in dir(cls)
        )
        for i, name in enumerate(names):
            off = mq_slot_offset(cls.__dict__.get(name), cls) if fast else -1
            if off < 0:
                fast = False
            _OFF[k][i] = off
        _FAST[k] = fast


cdef void _init_tables() except *:
    global _P_NAMES, _WHERE_NAMES
    cdef int b, ident
    for b in range(256):
        _CLS[b] = 0
        if b >= 0x80:
            _CLS[b] = C_HIGH
        elif b == 0:
            _CLS[b] = C_ZERO
        elif b < 0x20 or b == 0x7F:
            _CLS[b] = C_CTRL
        elif b == 0x2B or b == 0x23:
            _CLS[b] = C_WILD
        _P_WT[b] = 0
        _P_FL[b] = 0
        _P_WHERE[b] = 0
    wire = {P.BYTE: W_BYTE, P.TWO_BYTE_INT: W_TWO, P.FOUR_BYTE_INT: W_FOUR,
            P.VARINT: W_VARINT, P.UTF8: W_UTF8, P.BINARY: W_BINARY, P.UTF8_PAIR: W_PAIR}
    names = [None] * 256
    for prop in P.PROPERTIES:
        ident = prop.ident
        wt = wire[prop.wire_type]
        _P_WT[ident] = wt
        names[ident] = prop.name
        _P_IDENT[prop.name] = ident
        for where in prop.packets:
            _P_WHERE[ident] |= (<unsigned int>1) << <int>where
        fl = 0
        if prop.name in P.BOOLEAN:
            fl |= PF_BOOLEAN
        if prop.name in P.NONZERO:
            fl |= PF_NONZERO
        if prop.name in P.REPEATABLE:
            fl |= PF_REPEATABLE
        if prop.name == "user_property":
            fl |= PF_USER
        if prop.name == "subscription_identifier":
            fl |= PF_SUBID
        if fl & (PF_BOOLEAN | PF_NONZERO) and wt not in (W_BYTE, W_TWO, W_FOUR, W_VARINT):
            raise ImportError("property %s: value checks need an integer wire type" % prop.name)
        _P_FL[ident] = fl
    _P_NAMES = tuple(names)
    assert P.WILL == WHERE_WILL and P.PUBLISH == 3
    _WHERE_NAMES = tuple(
        "Will Properties" if w == P.WILL else PACKET_NAMES.get(w) for w in range(17))
    sets = {
        V_CONNACK_V5: R.CONNACK_V5, V_CONNACK_V3: R.CONNACK_V3, V_SUBACK_V5: R.SUBACK_V5,
        V_SUBACK_V3: R.SUBACK_V3, V_UNSUBACK: R.UNSUBACK, V_DISCONNECT: R.DISCONNECT,
        V_AUTH: R.AUTH, V_PUBACK: R.PUBACK, V_PUBREC: R.PUBREC, V_PUBREL: R.PUBREL,
        V_PUBCOMP: R.PUBCOMP,
    }
    for v, codes in sets.items():
        for b in range(256):
            _VALID[v][b] = b in codes


_init_tables()
_init_classes()


cdef object _build(int k, PyObject** v):
    """An instance of packet class k whose fields, in order, are v[0..]."""
    cdef int i, n = _NFIELDS[k]
    if _FAST[k]:
        o = mq_alloc(_CLSP[k])
        for i in range(n):
            mq_put(o, _OFF[k][i], v[i])
        return o
    return (<object>_CLSP[k])(*[<object>v[i] for i in range(n)])


# --- errors ------------------------------------------------------------------------------

cdef int _malformed(msg) except -1:
    raise PacketError(MALFORMED_PACKET, msg)


cdef int _protocol(msg) except -1:
    raise PacketError(PROTOCOL_ERROR, msg)


cdef int _short() except -1:
    raise PacketError(MALFORMED_PACKET, "packet too short")


# --- reading one packet body -------------------------------------------------------------

cdef struct Reader:
    const unsigned char* d
    Py_ssize_t pos
    Py_ssize_t end      # every read past end is a malformed packet


cdef inline Py_ssize_t r_need(Reader* r, Py_ssize_t n) except -1:
    cdef Py_ssize_t p = r.pos
    if n > r.end - p:
        _short()
    r.pos = p + n
    return p


cdef inline int r_u8(Reader* r) except -1:
    return r.d[r_need(r, 1)]


cdef inline int r_u16(Reader* r) except -1:
    cdef Py_ssize_t p = r_need(r, 2)
    return (r.d[p] << 8) | r.d[p + 1]


cdef inline long long r_u32(Reader* r) except -1:
    cdef Py_ssize_t p = r_need(r, 4)
    return ((<long long>r.d[p] << 24) | (r.d[p + 1] << 16) | (r.d[p + 2] << 8) | r.d[p + 3])


cdef long r_varint(Reader* r) except -1:
    cdef long value = 0
    cdef int shift = 0, count = 0, b
    while True:
        b = r_u8(r)
        count += 1
        value |= (<long>(b & 0x7F)) << shift
        if not b & 0x80:
            if b == 0 and count > 1:
                _malformed("variable byte integer not minimally encoded")
            return value
        if count == 4:
            _malformed("variable byte integer longer than 4 bytes")
        shift += 7


cdef inline bytes r_binary(Reader* r):
    cdef Py_ssize_t n = r_u16(r)
    cdef Py_ssize_t p = r_need(r, n)
    return PyBytes_FromStringAndSize(<const char*>r.d + p, n)


cdef inline bint _disallowed(unsigned int c) noexcept:
    # mqttd.topics.has_disallowed_chars: C0, DEL, C1, U+FDD0-FDEF, U+xFFFE/xFFFF.
    return (c < 0x20 or (0x7F <= c <= 0x9F) or (0xFDD0 <= c <= 0xFDEF)
            or (c & 0xFFFE) == 0xFFFE)


cdef str _decode_str(const unsigned char* p, Py_ssize_t n, bint topic, int* wild):
    """The UTF-8 string at p: a PacketError unless valid, free of U+0000 and, for a
    topic, of disallowed characters. Sets *wild if it holds '+' or '#'."""
    cdef unsigned char acc = 0
    cdef Py_ssize_t i
    for i in range(n):
        acc |= _CLS[p[i]]
    if not acc & C_HIGH:
        if acc & C_ZERO:
            _malformed("string contains U+0000")
        if topic and acc & C_CTRL:
            _malformed("topic contains a disallowed character")
        wild[0] = (acc & C_WILD) != 0
        return <str>mq_ascii(p, n)
    return _decode_str_slow(p, n, topic, wild)


cdef str _decode_str_slow(const unsigned char* p, Py_ssize_t n, bint topic, int* wild):
    cdef Py_ssize_t i, length
    cdef unsigned int c
    cdef int kind
    cdef void* data
    cdef bint zero = False, bad = False, wildcard = False
    try:
        s = PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
    except UnicodeDecodeError:
        raise PacketError(MALFORMED_PACKET, "invalid UTF-8 string") from None
    kind = PyUnicode_KIND(s)
    data = PyUnicode_DATA(s)
    length = PyUnicode_GET_LENGTH(s)
    for i in range(length):
        c = PyUnicode_READ(kind, data, i)
        if c == 0:
            zero = True
        elif _disallowed(c):
            bad = True
        elif c == 0x2B or c == 0x23:
            wildcard = True
    if zero:
        _malformed("string contains U+0000")
    if topic and bad:
        _malformed("topic contains a disallowed character")
    wild[0] = wildcard
    return <str>s


cdef inline str r_utf8(Reader* r):
    cdef int wild
    cdef Py_ssize_t n = r_u16(r)
    cdef Py_ssize_t p = r_need(r, n)
    return _decode_str(r.d + p, n, False, &wild)


cdef inline str r_topic(Reader* r, int* wild):
    """A topic name or filter: a UTF-8 string without disallowed characters."""
    cdef Py_ssize_t n = r_u16(r)
    cdef Py_ssize_t p = r_need(r, n)
    return _decode_str(r.d + p, n, True, wild)


cdef inline bytes r_rest(Reader* r):
    cdef Py_ssize_t p = r.pos
    r.pos = r.end
    return PyBytes_FromStringAndSize(<const char*>r.d + p, r.end - p)


cdef inline int r_done(Reader* r) except -1:
    if r.pos != r.end:
        _malformed("unexpected bytes after the end of the packet")
    return 0


cdef dict _properties(Reader* r, int where):
    """Read a property block allowed in packet type ``where`` (or WHERE_WILL)."""
    cdef long length = r_varint(r)
    cdef Py_ssize_t outer_end
    cdef int ident, wt, fl
    cdef long long iv = 0
    if length > r.end - r.pos:
        _malformed("property length exceeds the packet")
    cdef dict props = {}
    if not length:
        return props
    outer_end = r.end
    r.end = r.pos + length
    while r.pos < r.end:
        ident = r_u8(r)
        wt = _P_WT[ident]
        if wt == 0:
            _malformed("unknown property 0x%02X" % ident)
        name = <object>PyTuple_GET_ITEM(<PyObject*>_P_NAMES, ident)
        if not (_P_WHERE[ident] >> where) & 1:
            _malformed("property %s not allowed in %s" % (name, _WHERE_NAMES[where]))
        if wt == W_BYTE:
            iv = r_u8(r)
            value = iv
        elif wt == W_TWO:
            iv = r_u16(r)
            value = iv
        elif wt == W_FOUR:
            iv = r_u32(r)
            value = iv
        elif wt == W_VARINT:
            iv = r_varint(r)
            value = iv
        elif wt == W_UTF8:
            value = r_utf8(r)
        elif wt == W_BINARY:
            value = r_binary(r)
        else:
            first = r_utf8(r)
            value = (first, r_utf8(r))
        fl = _P_FL[ident]
        if fl & PF_BOOLEAN and iv > 1:
            _protocol("invalid value %d for property %s" % (iv, name))
        if fl & PF_NONZERO and iv == 0:
            _protocol("property %s must not be 0" % name)
        if fl & PF_USER or (fl & PF_SUBID and where == 3):
            props.setdefault(name, []).append(value)
        elif name in props:
            _protocol("duplicate property %s" % name)
        elif fl & PF_SUBID:
            props[name] = [value]
        else:
            props[name] = value
    r.end = outer_end
    return props


cdef int _check_response_topic(dict props) except -1:
    cdef Py_ssize_t i, length
    cdef unsigned int c
    cdef int kind
    cdef void* data
    cdef bint bad = False, wildcard = False
    if not props:
        return 0
    topic = props.get("response_topic")
    if topic is not None:
        if not topic:
            _protocol("empty response topic")
        kind = PyUnicode_KIND(topic)
        data = PyUnicode_DATA(topic)
        length = PyUnicode_GET_LENGTH(topic)
        for i in range(length):
            c = PyUnicode_READ(kind, data, i)
            if _disallowed(c):
                bad = True
            elif c == 0x2B or c == 0x23:
                wildcard = True
        if bad:
            _malformed("topic contains a disallowed character")
        if wildcard:
            _protocol("topic name contains a wildcard")
    return 0


cdef inline int _check_auth(dict props) except -1:
    if props and "authentication_data" in props and "authentication_method" not in props:
        _protocol("authentication data without an authentication method")
    return 0


# Field values for _build() must be Python objects held by a local; these keep
# Cython's type inference from turning them into C ints.
cdef inline object _int(long v):
    return v


include "_pids.pxi"


cdef inline object _bool(long v):
    return True if v else False


# --- the parser --------------------------------------------------------------------------

cdef Py_ssize_t _LAZY_BYTES = SUBSCRIBE_LAZY_BYTES


cdef int _filters(Reader* r, bint v5, list topics, Py_ssize_t count) except -1:
    """Decode SUBSCRIBE entries into ``topics`` until the end, or ``count`` of them (>= 0)."""
    cdef PyObject* o[4]
    cdef int opts, qos, retain_handling, wild = 0
    cdef Py_ssize_t tpos
    while r.end - r.pos and count:
        count -= 1
        tpos = r.pos + 2
        topic_filter = r_topic(r, &wild)
        if not topic_filter:
            _malformed("empty topic filter")
        opts = r_u8(r)
        if opts & (0xC0 if v5 else 0xFC):
            _malformed("reserved subscription option bits set")
        qos = opts & 0x03
        if qos == 3:
            _protocol("subscription QoS 3")
        q = _int(qos)
        if v5:
            retain_handling = (opts >> 4) & 0x03
            if retain_handling == 3:
                _protocol("retain handling 3")
            # The filter's UTF-8 starts with "$share/" iff the string does.
            if (opts & 0x04 and r.pos - 1 - tpos >= 7
                    and memcmp(r.d + tpos, b"$share/", 7) == 0):
                _protocol("no local on a shared subscription")
            no_local = _bool(opts & 0x04)
            rap = _bool(opts & 0x08)
            rh = _int(retain_handling)
        else:
            no_local = _bool(0)
            rap = _bool(0)
            rh = _int(0)
        o[1] = <PyObject*>no_local
        o[2] = <PyObject*>rap
        o[3] = <PyObject*>rh
        o[0] = <PyObject*>q
        topics.append((topic_filter, _build(K_SUBOPTS, o)))
    return 0


def decode_filters(data, pos, version, count):
    """Up to ``count`` SUBSCRIBE entries of ``data`` (a ``Subscribe.rest``) from ``pos``, and
    the position after them; the same answers and errors as the reference's."""
    cdef Reader r
    cdef Py_ssize_t p = pos, c = count
    if not PyBytes_CheckExact(data):
        raise TypeError("data must be bytes")
    if c < 0 or p < 0 or p > PyBytes_GET_SIZE(data):
        raise ValueError("bad position or count")
    r.d = <const unsigned char*>PyBytes_AS_STRING(data)
    r.pos = p
    r.end = PyBytes_GET_SIZE(data)
    cdef list topics = []
    _filters(&r, version == 5, topics, c)
    return topics, r.pos


@cython.final
cdef class Parser:
    """Incremental MQTT parser.

    ``version`` is the protocol level used for packets other than CONNECT (0
    until known, parsed as 3.1.1); parsing a CONNECT sets it. ``max_packet_size``
    counts the whole packet, fixed header included.
    """

    cdef unsigned char* _buf    # the start of one unfinished packet, from offset 0
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef long long _max
    cdef object _max_obj
    cdef bint _busy
    cdef public int version
    # The last PUBLISH's topic when it was plain ASCII without wildcards: a client mostly
    # publishes to the same few topics, and the same str object again skips its checks,
    # its allocation and (cached in the str) its hash in the router's and other lookups.
    cdef object _topic

    def __cinit__(self):
        self._buf = NULL
        self._len = 0
        self._cap = 0
        self._max = MAX_PACKET_SIZE
        self._max_obj = MAX_PACKET_SIZE
        self._busy = False
        self.version = 0
        self._topic = None

    def __init__(self, max_packet_size=MAX_PACKET_SIZE, int version=0):
        self.max_packet_size = max_packet_size
        self.version = version

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @property
    def max_packet_size(self):
        """Largest packet accepted, fixed header included (an int)."""
        return self._max_obj

    @max_packet_size.setter
    def max_packet_size(self, value):
        v = operator.index(value)
        if v > MAX_LIMIT:
            self._max = MAX_LIMIT
        elif v < -MAX_LIMIT:
            self._max = -MAX_LIMIT
        else:
            self._max = v
        self._max_obj = value

    @property
    def buffered(self):
        """Bytes held back: the start of a packet that has not fully arrived."""
        return self._len

    def feed(self, data):
        """Parse ``data`` (any split of the stream) and return every packet now complete.

        Raises :class:`PacketError` on the first bad packet; its ``packets``
        attribute holds the good packets that came before it in this call.
        """
        cdef Py_buffer view
        cdef bint release = False
        cdef const unsigned char* d
        cdef Py_ssize_t n
        if PyBytes_CheckExact(data):
            d = <const unsigned char*>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        else:
            try:
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            except Exception:
                # What the reference's ``bytearray += data`` says.
                raise TypeError("can't concat %.100s to bytearray"
                                % (<PyTypeObject*>mq_type(<PyObject*>data)).tp_name.decode()
                                ) from None
            release = True
            d = <const unsigned char*>view.buf
            n = view.len
        if self._busy:
            if release:
                PyBuffer_Release(&view)
            raise RuntimeError("Parser.feed() called while it is running")
        self._busy = True
        try:
            return self._feed(d, n)
        finally:
            self._busy = False
            if release:
                PyBuffer_Release(&view)

    cdef int _append(self, const unsigned char* p, Py_ssize_t n,
                     Py_ssize_t packet_end=0) except -1:
        # Geometric growth (amortized O(1) per byte), but never past the end of
        # the packet being completed when that is known. Never reserve for
        # bytes that have not arrived: a header alone can claim 256 MiB.
        cdef Py_ssize_t need = self._len + n, cap
        cdef unsigned char* nb
        if need > self._cap:
            cap = self._cap * 2
            if cap < 256:
                cap = 256
            if packet_end and cap > packet_end:
                cap = packet_end
            if cap < need:
                cap = need
            nb = <unsigned char*>PyMem_Realloc(self._buf, cap)
            if nb == NULL:
                raise MemoryError()
            self._buf = nb
            self._cap = cap
        memcpy(self._buf + self._len, p, n)
        self._len = need
        return 0

    cdef list _feed(self, const unsigned char* d, Py_ssize_t n):
        cdef list packets = []
        cdef Py_ssize_t off = 0, pos, start = 0, end = 0, take
        cdef Py_ssize_t old_len = self._len
        try:
            if self._len:
                # Complete the buffered packet with just the bytes it lacks: first
                # its fixed header (one byte at a time, at most 4), then its body.
                while not self._header(self._buf, 0, self._len, &start, &end):
                    if off == n:
                        return packets
                    self._append(d + off, 1)
                    off += 1
                if end > self._len:
                    take = end - self._len
                    if take > n - off:
                        take = n - off
                    self._append(d + off, take, end)
                    off += take
                    if end > self._len:
                        return packets
                packets.append(self._decode(self._buf[0], self._buf, start, end))
            # Then straight from the caller's bytes.
            pos = off
            while pos < n:
                if not self._header(d, pos, n, &start, &end) or end > n:
                    break
                packets.append(self._decode(d[pos], d, start, end))
                pos = end
            self._len = 0
            if pos < n:
                self._append(d + pos, n - pos)
            elif self._cap > KEEP_BUFFER:
                PyMem_Free(self._buf)
                self._buf = NULL
                self._cap = 0
            return packets
        except PacketError as err:
            err.packets = packets
            self._len = 0
            raise
        except BaseException:
            # As the reference: keep every byte of this call for the next.
            self._len = old_len
            self._append(d, n)
            raise

    cdef inline int _header(self, const unsigned char* d, Py_ssize_t pos, Py_ssize_t n,
                            Py_ssize_t* start, Py_ssize_t* end) except -1:
        """Check the fixed header at pos: 1 and the body's bounds, or 0 if incomplete."""
        cdef int b0 = d[pos]
        cdef int ptype = b0 >> 4, flags = b0 & 0x0F, b, shift = 0
        cdef Py_ssize_t i = pos + 1, length = 0, total
        if ptype == 3:
            if (flags & 0x06) == 0x06:
                _malformed("PUBLISH with QoS 3")
            if flags & 0x08 and not flags & 0x06:
                _malformed("PUBLISH with DUP set at QoS 0")
        elif ptype == 0:
            _malformed("reserved packet type 0")
        elif ptype == 15 and self.version != 5:
            _malformed("AUTH before MQTT 5")
        elif flags != _FLAGS[ptype]:
            _malformed("invalid fixed header flags for %s" % PACKET_NAMES[ptype])
        # Remaining Length: at most 4 bytes, minimally encoded.
        while True:
            if i >= n:
                return 0
            b = d[i]
            i += 1
            length |= (<Py_ssize_t>(b & 0x7F)) << shift
            if not b & 0x80:
                if b == 0 and i - pos > 2:
                    _malformed("variable byte integer not minimally encoded")
                break
            if i - pos == 5:
                _malformed("variable byte integer longer than 4 bytes")
            shift += 7
        total = i - pos + length
        if total > self._max:
            raise PacketError(
                PACKET_TOO_LARGE,
                "packet of %d bytes exceeds the maximum packet size of %d"
                % (total, self._max_obj))
        start[0] = i
        end[0] = i + length
        return 1


    cdef object _decode(self, int b0, const unsigned char* d, Py_ssize_t start,
                        Py_ssize_t end):
        cdef Reader r
        cdef int ptype = b0 >> 4
        r.d = d
        r.pos = start
        r.end = end
        if ptype == 3:
            return self._publish(&r, b0 & 0x0F)
        if 4 <= ptype <= 7:
            return self._ack(&r, ptype)
        if ptype == 1:
            return self._connect(&r)
        if ptype == 2:
            return self._connack(&r)
        if ptype == 8:
            return self._subscribe(&r)
        if ptype == 9:
            return self._suback(&r)
        if ptype == 10:
            return self._unsubscribe(&r)
        if ptype == 11:
            return self._unsuback(&r)
        if ptype == 12 or ptype == 13:
            r_done(&r)
            return _build(ptype, NULL)
        return self._reason_and_props(&r, ptype)

    # --- packet bodies (each mirrors its namesake in _codec_py.py) -----------------------

    cdef object _connect(self, Reader* r):
        cdef PyObject* v[9]
        cdef PyObject* w[5]
        cdef Py_ssize_t nlen, np
        cdef int level, cflags, will_flag, will_qos, has_password, has_username, wild = 0
        cdef bint will_retain
        nlen = r_u16(r)
        np = r_need(r, nlen)
        level = r_u8(r)
        if nlen == 4 and memcmp(r.d + np, b"MQTT", 4) == 0:
            if level != 4 and level != 5:
                raise PacketError(UNSUPPORTED_PROTOCOL_VERSION,
                                  "unsupported protocol level %d" % level)
            name = "MQTT"
        elif nlen == 6 and memcmp(r.d + np, b"MQIsdp", 6) == 0:
            if level != 3:
                raise PacketError(UNSUPPORTED_PROTOCOL_VERSION,
                                  "unsupported protocol level %d" % level)
            name = "MQIsdp"
        else:
            raise PacketError(UNSUPPORTED_PROTOCOL_VERSION, "unsupported protocol name")
        # From here on the connection knows which CONNACK format the client reads.
        self.version = level
        cflags = r_u8(r)
        if cflags & 0x01:
            _malformed("reserved connect flag set")
        will_flag = cflags & 0x04
        will_qos = (cflags >> 3) & 0x03
        will_retain = cflags & 0x20
        has_password = cflags & 0x40
        has_username = cflags & 0x80
        if will_qos == 3:
            _malformed("will QoS 3")
        if not will_flag and (will_qos or will_retain):
            _malformed("will QoS or retain set without a will")
        if level != 5 and has_password and not has_username:
            _malformed("password flag set without username flag")
        keepalive = _int(r_u16(r))
        props = _properties(r, 1) if level == 5 else {}
        client_id = r_utf8(r)
        will = None
        if will_flag:
            will_props = _properties(r, WHERE_WILL) if level == 5 else {}
            will_topic = r_topic(r, &wild)
            if not will_topic:
                _protocol("empty will topic")
            if wild:
                _protocol("topic name contains a wildcard")
            _check_response_topic(will_props)
            will_payload = r_binary(r)
            wq = _int(will_qos)
            wr = _bool(will_retain)
            w[0] = <PyObject*>will_topic
            w[1] = <PyObject*>will_payload
            w[2] = <PyObject*>wq
            w[3] = <PyObject*>wr
            w[4] = <PyObject*>will_props
            will = _build(K_WILL, w)
        username = r_utf8(r) if has_username else None
        password = r_binary(r) if has_password else None
        r_done(r)
        _check_auth(props)
        lv = _int(level)
        clean = _bool(cflags & 0x02)
        v[0] = <PyObject*>name
        v[1] = <PyObject*>lv
        v[2] = <PyObject*>clean
        v[3] = <PyObject*>keepalive
        v[4] = <PyObject*>client_id
        v[5] = <PyObject*>will
        v[6] = <PyObject*>username
        v[7] = <PyObject*>password
        v[8] = <PyObject*>props
        return _build(K_CONNECT, v)

    cdef object _connack(self, Reader* r):
        cdef PyObject* v[3]
        cdef int ack_flags, code, valid
        ack_flags = r_u8(r)
        if ack_flags & 0xFE:
            _malformed("reserved CONNACK flag set")
        code = r_u8(r)
        if self.version == 5:
            props = _properties(r, 2)
            valid = V_CONNACK_V5
        else:
            props = {}
            valid = V_CONNACK_V3
        r_done(r)
        if not _VALID[valid][code]:
            _protocol("invalid CONNACK reason code 0x%02X" % code)
        if ack_flags and code:
            _protocol("session present with a failure reason code")
        present = _bool(ack_flags)
        c = _int(code)
        v[0] = <PyObject*>present
        v[1] = <PyObject*>c
        v[2] = <PyObject*>props
        return _build(K_CONNACK, v)

    cdef object _publish(self, Reader* r, int flags):
        cdef PyObject* v[7]
        cdef int qos = (flags >> 1) & 0x03, wild = 0
        cdef long packet_id = 0
        cdef dict props
        cdef Py_ssize_t tn = r_u16(r)
        cdef Py_ssize_t tp = r_need(r, tn)
        last = self._topic
        if last is not None and mq_same_ascii(<PyObject*>last, r.d + tp, tn):
            topic = last  # (checked when it was first seen)
        else:
            topic = _decode_str(r.d + tp, tn, True, &wild)
            if wild:
                _protocol("topic name contains a wildcard")
            if tn <= _TOPIC_CACHE_MAX and PyUnicode_GET_LENGTH(topic) == tn:
                self._topic = topic  # (ASCII: as many characters as bytes)
        if qos:
            packet_id = r_u16(r)
            if not packet_id:
                _protocol("packet identifier 0")
        if self.version == 5:
            props = _properties(r, 3)
            if not topic and "topic_alias" not in props:
                _protocol("empty topic name without a topic alias")
            _check_response_topic(props)
        else:
            props = {}
            if not topic:
                _protocol("empty topic name")
        payload = r_rest(r)
        q = _int(qos)
        pid = _pid(packet_id)
        v[0] = <PyObject*>topic
        v[1] = <PyObject*>payload
        v[2] = <PyObject*>q
        retain = _bool(flags & 0x01)
        dup = _bool(flags & 0x08)
        v[3] = <PyObject*>retain
        v[4] = <PyObject*>dup
        v[5] = <PyObject*>pid
        v[6] = <PyObject*>props
        return _build(K_PUBLISH, v)

    cdef object _ack(self, Reader* r, int ptype):
        cdef PyObject* v[3]
        cdef int packet_id, code = 0
        packet_id = r_u16(r)
        if not packet_id:
            _protocol("packet identifier 0")
        props = None
        if self.version == 5 and r.end - r.pos:
            code = r_u8(r)
            if r.end - r.pos:
                props = _properties(r, ptype)
            if not _VALID[V_PUBACK + ptype - 4][code]:
                _protocol("invalid %s reason code 0x%02X" % (PACKET_NAMES[ptype], code))
        r_done(r)
        if props is None:
            props = {}
        pid = _pid(packet_id)
        c = _int(code)
        v[0] = <PyObject*>pid
        v[1] = <PyObject*>c
        v[2] = <PyObject*>props
        return _build(ptype, v)

    cdef object _subscribe(self, Reader* r):
        cdef PyObject* v[4]
        cdef int packet_id
        cdef bint v5
        packet_id = r_u16(r)
        if not packet_id:
            _protocol("packet identifier 0")
        v5 = self.version == 5
        props = _properties(r, 8) if v5 else {}
        cdef list topics = []
        cdef bytes rest = b""
        if r.end - r.pos > _LAZY_BYTES:
            # As the reference: the channel decodes the entries a slice per loop turn.
            rest = r_rest(r)
        else:
            _filters(r, v5, topics, -1)
            if not topics:
                _protocol("SUBSCRIBE without topic filters")
        pid = _int(packet_id)
        v[0] = <PyObject*>pid
        v[1] = <PyObject*>topics
        v[2] = <PyObject*>props
        v[3] = <PyObject*>rest
        return _build(K_SUBSCRIBE, v)

    cdef list _codes(self, Reader* r, int valid, str what):
        """The rest of the packet as a list of reason codes, each checked."""
        cdef Py_ssize_t i, n = r.end - r.pos
        cdef const unsigned char* p = r.d + r.pos
        if not n:
            _protocol("%s without reason codes" % what)
        for i in range(n):
            if not _VALID[valid][p[i]]:
                _protocol("invalid %s reason code 0x%02X" % (what, p[i]))
        r.pos = r.end
        return [_int(p[i]) for i in range(n)]

    cdef object _suback(self, Reader* r):
        cdef PyObject* v[3]
        cdef int packet_id, valid
        packet_id = r_u16(r)
        if not packet_id:
            _protocol("packet identifier 0")
        if self.version == 5:
            props = _properties(r, 9)
            valid = V_SUBACK_V5
        else:
            props = {}
            valid = V_SUBACK_V3
        codes = self._codes(r, valid, "SUBACK")
        pid = _int(packet_id)
        v[0] = <PyObject*>pid
        v[1] = <PyObject*>codes
        v[2] = <PyObject*>props
        return _build(K_SUBACK, v)

    cdef object _unsubscribe(self, Reader* r):
        cdef PyObject* v[3]
        cdef int packet_id, wild = 0
        packet_id = r_u16(r)
        if not packet_id:
            _protocol("packet identifier 0")
        props = _properties(r, 10) if self.version == 5 else {}
        cdef list topics = []
        while r.end - r.pos:
            topic_filter = r_topic(r, &wild)
            if not topic_filter:
                _malformed("empty topic filter")
            topics.append(topic_filter)
        if not topics:
            _protocol("UNSUBSCRIBE without topic filters")
        pid = _int(packet_id)
        v[0] = <PyObject*>pid
        v[1] = <PyObject*>topics
        v[2] = <PyObject*>props
        return _build(K_UNSUBSCRIBE, v)

    cdef object _unsuback(self, Reader* r):
        cdef PyObject* v[3]
        cdef int packet_id
        packet_id = r_u16(r)
        if not packet_id:
            _protocol("packet identifier 0")
        if self.version != 5:
            r_done(r)
            props = {}
            codes = []
        else:
            props = _properties(r, 11)
            codes = self._codes(r, V_UNSUBACK, "UNSUBACK")
        pid = _int(packet_id)
        v[0] = <PyObject*>pid
        v[1] = <PyObject*>codes
        v[2] = <PyObject*>props
        return _build(K_UNSUBACK, v)

    cdef object _reason_and_props(self, Reader* r, int ptype):
        """DISCONNECT (14) and AUTH (15)."""
        cdef PyObject* v[2]
        cdef int code = 0
        props = {}
        if self.version == 5 and r.end - r.pos:
            code = r_u8(r)
            if r.end - r.pos or ptype == 15:  # AUTH with a reason code always has properties
                props = _properties(r, ptype)
        r_done(r)
        if not _VALID[V_DISCONNECT if ptype == 14 else V_AUTH][code]:
            _protocol("invalid %s reason code 0x%02X" % (PACKET_NAMES[ptype], code))
        if ptype == 15:
            _check_auth(props)
        c = _int(code)
        v[0] = <PyObject*>c
        v[1] = <PyObject*>props
        return _build(ptype, v)


# --- encoding ----------------------------------------------------------------------------
#
# Each fast encoder returns the packet's bytes, or None when some field is not
# what it handles (then the reference encodes it or raises, see encode()).

cdef enum:
    HEADROOM = 5        # room for the fixed header in front of a body
    LOCAL_BUF = 256

cdef struct WBuf:
    unsigned char* p
    Py_ssize_t n
    Py_ssize_t cap
    unsigned char local[LOCAL_BUF]


cdef inline void wb_init(WBuf* b, Py_ssize_t headroom) noexcept:
    b.p = b.local
    b.n = headroom
    b.cap = LOCAL_BUF


cdef inline void wb_free(WBuf* b) noexcept:
    if b.p != b.local:
        PyMem_Free(b.p)


cdef int wb_grow(WBuf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap * 2
    cdef unsigned char* np
    if cap < b.n + extra:
        cap = b.n + extra
    if b.p == b.local:
        np = <unsigned char*>PyMem_Malloc(cap)
        if np != NULL:
            memcpy(np, b.p, b.n)
    else:
        np = <unsigned char*>PyMem_Realloc(b.p, cap)
    if np == NULL:
        raise MemoryError()
    b.p = np
    b.cap = cap
    return 0


cdef inline int wb_u8(WBuf* b, unsigned int v) except -1:
    if b.n + 1 > b.cap:
        wb_grow(b, 1)
    b.p[b.n] = <unsigned char>v
    b.n += 1
    return 0


cdef inline int wb_u16(WBuf* b, unsigned int v) except -1:
    if b.n + 2 > b.cap:
        wb_grow(b, 2)
    b.p[b.n] = <unsigned char>(v >> 8)
    b.p[b.n + 1] = <unsigned char>v
    b.n += 2
    return 0


cdef inline int wb_mem(WBuf* b, const void* p, Py_ssize_t n) except -1:
    if b.n + n > b.cap:
        wb_grow(b, n)
    memcpy(b.p + b.n, p, n)
    b.n += n
    return 0


cdef inline int varint_size(Py_ssize_t v) noexcept:
    return 1 if v < 0x80 else (2 if v < 0x4000 else (3 if v < 0x200000 else 4))


cdef inline unsigned char* put_varint(unsigned char* w, Py_ssize_t v) noexcept:
    while v >= 0x80:
        w[0] = <unsigned char>((v & 0x7F) | 0x80)
        w += 1
        v >>= 7
    w[0] = <unsigned char>v
    return w + 1


cdef inline int wb_varint(WBuf* b, Py_ssize_t v) except -1:
    if b.n + 4 > b.cap:
        wb_grow(b, 4)
    b.n = put_varint(b.p + b.n, v) - b.p
    return 0


cdef inline int wb_str(WBuf* b, PyObject* s) except -1:
    """_str(s): 0, or 1 if s is not a str the fast path takes."""
    cdef Py_ssize_t n
    cdef const char* u = mq_utf8(s, &n)
    if u == NULL:
        return 1
    wb_u16(b, <unsigned int>n)
    wb_mem(b, u, n)
    return 0


cdef inline int wb_bin(WBuf* b, PyObject* o) except -1:
    """_bin(o): 0, or 1 if o is not bytes of at most 65535."""
    cdef Py_ssize_t n
    if not PyBytes_CheckExact(<object>o):
        return 1
    n = PyBytes_GET_SIZE(<object>o)
    if n > 0xFFFF:
        return 1
    wb_u16(b, <unsigned int>n)
    wb_mem(b, PyBytes_AS_STRING(<object>o), n)
    return 0


cdef object wb_frame(WBuf* b, unsigned int first):
    """_frame(first, body) for a body written after HEADROOM."""
    cdef Py_ssize_t body = b.n - HEADROOM
    cdef int k
    if body > MAX_VARINT:
        return None
    k = 1 + varint_size(body)
    b.p[HEADROOM - k] = <unsigned char>first
    put_varint(b.p + HEADROOM - k + 1, body)
    return PyBytes_FromStringAndSize(<const char*>b.p + HEADROOM - k, b.n - HEADROOM + k)


cdef int _enc_value(WBuf* b, int ident, PyObject* v) except -1:
    cdef int wt = _P_WT[ident]
    cdef long x
    wb_u8(b, ident)
    if wt == W_BYTE:
        if not mq_small(v, 0xFF, &x):
            return 1
        wb_u8(b, x)
    elif wt == W_TWO:
        if not mq_small(v, 0xFFFF, &x):
            return 1
        wb_u16(b, x)
    elif wt == W_FOUR:
        if not mq_small(v, 0xFFFFFFFF, &x):
            return 1
        wb_u16(b, x >> 16)
        wb_u16(b, x & 0xFFFF)
    elif wt == W_VARINT:
        if not mq_small(v, MAX_VARINT, &x):
            return 1
        wb_varint(b, x)
    elif wt == W_UTF8:
        return wb_str(b, v)
    elif wt == W_BINARY:
        return wb_bin(b, v)
    else:
        if not PyTuple_CheckExact(v) or PyTuple_GET_SIZE(v) != 2:
            return 1
        if wb_str(b, PyTuple_GET_ITEM(v, 0)):
            return 1
        return wb_str(b, PyTuple_GET_ITEM(v, 1))
    return 0


cdef int _enc_properties(WBuf* out, PyObject* props) except -1:
    """_encode_properties(props) appended to out: 0, or 1 to hand over."""
    cdef WBuf b
    cdef Py_ssize_t pos = 0, i, n
    cdef PyObject* key
    cdef PyObject* value
    cdef PyObject* ident_obj
    cdef int ident
    if not PyDict_CheckExact(props):
        return 1
    if PyDict_GET_SIZE(props) == 0:
        return wb_u8(out, 0)
    wb_init(&b, 0)
    try:
        # Exact str keys and builtin values: nothing here runs user code, so the
        # dict cannot change under PyDict_Next.
        while PyDict_Next(props, &pos, &key, &value):
            if not PyUnicode_CheckExact(key):
                return 1
            ident_obj = PyDict_GetItem(<PyObject*>_P_IDENT, key)
            if ident_obj == NULL:
                return 1
            ident = PyLong_AsLong(ident_obj)
            if _P_FL[ident] & PF_REPEATABLE:
                if PyList_CheckExact(value):
                    n = PyList_GET_SIZE(value)
                    for i in range(n):
                        if _enc_value(&b, ident, PyList_GET_ITEM(value, i)):
                            return 1
                elif PyTuple_CheckExact(value):
                    n = PyTuple_GET_SIZE(value)
                    for i in range(n):
                        if _enc_value(&b, ident, PyTuple_GET_ITEM(value, i)):
                            return 1
                else:
                    return 1
            elif _enc_value(&b, ident, value):
                return 1
        if b.n > MAX_VARINT:
            return 1
        wb_varint(out, b.n)
        wb_mem(out, b.p, b.n)
        return 0
    finally:
        wb_free(&b)


cdef inline PyObject* _field(PyObject* p, int k, int i) noexcept:
    return mq_get(p, _OFF[k][i])


cdef object _enc_publish(PyObject* p, bint v5):
    return _enc_publish_fields(
        _field(p, K_PUBLISH, 0), _field(p, K_PUBLISH, 1), _field(p, K_PUBLISH, 2),
        _field(p, K_PUBLISH, 3), _field(p, K_PUBLISH, 4), _field(p, K_PUBLISH, 5),
        _field(p, K_PUBLISH, 6), v5)


cdef object _enc_publish_fields(PyObject* topic, PyObject* payload, PyObject* qos_o,
                                PyObject* retain_o, PyObject* dup_o, PyObject* pid_o,
                                PyObject* props, bint v5):
    """A PUBLISH from its fields (borrowed; NULL for an unset slot), or None to hand over."""
    cdef long qos, pid = 0
    cdef int retain, dup
    cdef Py_ssize_t tlen, plen, body
    cdef const char* t
    cdef unsigned char* w
    cdef WBuf pb
    if (topic == NULL or payload == NULL or qos_o == NULL or retain_o == NULL
            or dup_o == NULL or pid_o == NULL or props == NULL):
        return None
    if not mq_small(qos_o, 0x7F, &qos):
        return None
    retain = mq_truth(retain_o)
    dup = mq_truth(dup_o)
    if retain < 0 or dup < 0:
        return None
    t = mq_utf8(topic, &tlen)
    if t == NULL:
        return None
    if qos and not mq_small(pid_o, 0xFFFF, &pid):
        return None
    if not PyBytes_CheckExact(<object>payload):
        return None
    wb_init(&pb, 0)
    try:
        if v5 and _enc_properties(&pb, props):
            return None
        plen = PyBytes_GET_SIZE(<object>payload)
        body = 2 + tlen + (2 if qos else 0) + pb.n + plen
        if body > MAX_VARINT:
            return None
        out = PyBytes_FromStringAndSize(NULL, 1 + varint_size(body) + body)
        w = <unsigned char*>PyBytes_AS_STRING(out)
        w[0] = <unsigned char>(0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0))
        w = put_varint(w + 1, body)
        w[0] = <unsigned char>(tlen >> 8)
        w[1] = <unsigned char>tlen
        memcpy(w + 2, t, tlen)
        w += 2 + tlen
        if qos:
            w[0] = <unsigned char>(pid >> 8)
            w[1] = <unsigned char>pid
            w += 2
        memcpy(w, pb.p, pb.n)
        memcpy(w + pb.n, PyBytes_AS_STRING(<object>payload), plen)
        return out
    finally:
        wb_free(&pb)


cdef object _enc_ack(PyObject* p, int k, unsigned int first, bint v5):
    cdef PyObject* pid_o = _field(p, k, 0)
    cdef PyObject* code_o = _field(p, k, 1)
    cdef PyObject* props = _field(p, k, 2)
    cdef long pid, code
    cdef int has_code, has_props
    cdef WBuf b
    if pid_o == NULL or code_o == NULL or props == NULL:
        return None
    if not mq_small(pid_o, 0xFFFF, &pid):
        return None
    wb_init(&b, HEADROOM)
    try:
        wb_u16(&b, pid)
        if v5:
            has_code = mq_truth(code_o)
            has_props = mq_truth(props)
            if has_code < 0 or has_props < 0:
                return None
            if has_code or has_props:
                if not mq_small(code_o, 0xFF, &code):
                    return None
                wb_u8(&b, code)
                if has_props and _enc_properties(&b, props):
                    return None
        return wb_frame(&b, first)
    finally:
        wb_free(&b)


cdef object _enc_connect(PyObject* p):
    cdef PyObject* f[9]
    cdef PyObject* will
    cdef PyObject* wf[5]
    cdef long level, keepalive, will_qos
    cdef int clean, will_retain, i
    cdef unsigned int flags
    cdef WBuf b
    for i in range(9):
        f[i] = _field(p, K_CONNECT, i)
        if f[i] == NULL:
            return None
    will = f[5]
    if not mq_small(f[1], 0xFF, &level):
        return None
    clean = mq_truth(f[2])
    if clean < 0:
        return None
    flags = 0x02 if clean else 0
    if will != <PyObject*>None:
        if mq_type(will) != _CLSP[K_WILL] or not _FAST[K_WILL]:
            return None
        for i in range(5):
            wf[i] = _field(will, K_WILL, i)
            if wf[i] == NULL:
                return None
        will_retain = mq_truth(wf[3])
        if not mq_small(wf[2], 31, &will_qos) or will_retain < 0:
            return None
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    if f[7] != <PyObject*>None:
        flags |= 0x40
    if f[6] != <PyObject*>None:
        flags |= 0x80
    if not mq_small(f[3], 0xFFFF, &keepalive):
        return None
    wb_init(&b, HEADROOM)
    try:
        if wb_str(&b, f[0]):
            return None
        wb_u8(&b, level)
        wb_u8(&b, flags)
        wb_u16(&b, keepalive)
        if level == 5 and _enc_properties(&b, f[8]):
            return None
        if wb_str(&b, f[4]):
            return None
        if will != <PyObject*>None:
            if level == 5 and _enc_properties(&b, wf[4]):
                return None
            if wb_str(&b, wf[0]) or wb_bin(&b, wf[1]):
                return None
        if f[6] != <PyObject*>None and wb_str(&b, f[6]):
            return None
        if f[7] != <PyObject*>None and wb_bin(&b, f[7]):
            return None
        return wb_frame(&b, 0x10)
    finally:
        wb_free(&b)


cdef object _enc_connack(PyObject* p, bint v5):
    cdef PyObject* present = _field(p, K_CONNACK, 0)
    cdef PyObject* code_o = _field(p, K_CONNACK, 1)
    cdef PyObject* props = _field(p, K_CONNACK, 2)
    cdef long code
    cdef int sp
    cdef WBuf b
    if present == NULL or code_o == NULL or props == NULL:
        return None
    sp = mq_truth(present)
    if sp < 0 or not mq_small(code_o, 0xFF, &code):
        return None
    wb_init(&b, HEADROOM)
    try:
        wb_u8(&b, 1 if sp else 0)
        wb_u8(&b, code)
        if v5 and _enc_properties(&b, props):
            return None
        return wb_frame(&b, 0x20)
    finally:
        wb_free(&b)


cdef int wb_codes(WBuf* b, PyObject* codes) except -1:
    """bytes(codes) for a list of ints in range: 0, or 1 to hand over."""
    cdef Py_ssize_t i, n
    cdef long c
    if not PyList_CheckExact(codes):
        return 1
    n = PyList_GET_SIZE(codes)
    for i in range(n):
        if not mq_small(PyList_GET_ITEM(codes, i), 0xFF, &c):
            return 1
        wb_u8(b, c)
    return 0


cdef object _enc_subscribe(PyObject* p, bint v5):
    cdef PyObject* pid_o = _field(p, K_SUBSCRIBE, 0)
    cdef PyObject* topics = _field(p, K_SUBSCRIBE, 1)
    cdef PyObject* props = _field(p, K_SUBSCRIBE, 2)
    cdef PyObject* item
    cdef PyObject* opts
    cdef PyObject* of[4]
    cdef long pid, qos, rh = 0
    cdef int no_local, rap, j
    cdef Py_ssize_t i, n
    cdef WBuf b
    cdef PyObject* rest = _field(p, K_SUBSCRIBE, 3)
    if pid_o == NULL or topics == NULL or props == NULL or rest == NULL:
        return None
    if not mq_small(pid_o, 0xFFFF, &pid) or not PyList_CheckExact(topics):
        return None
    if not PyBytes_CheckExact(<object>rest) or PyBytes_GET_SIZE(<object>rest):
        return None  # undecoded entries: the reference appends them
    if not _FAST[K_SUBOPTS]:
        return None
    wb_init(&b, HEADROOM)
    try:
        wb_u16(&b, pid)
        if v5 and _enc_properties(&b, props):
            return None
        n = PyList_GET_SIZE(topics)
        for i in range(n):
            item = PyList_GET_ITEM(topics, i)
            if not PyTuple_CheckExact(item) or PyTuple_GET_SIZE(item) != 2:
                return None
            opts = PyTuple_GET_ITEM(item, 1)
            if mq_type(opts) != _CLSP[K_SUBOPTS]:
                return None
            for j in range(4):
                of[j] = _field(opts, K_SUBOPTS, j)
                if of[j] == NULL:
                    return None
            if wb_str(&b, PyTuple_GET_ITEM(item, 0)):
                return None
            if not mq_small(of[0], 0xFF, &qos):
                return None
            if v5:
                no_local = mq_truth(of[1])
                rap = mq_truth(of[2])
                if no_local < 0 or rap < 0 or not mq_small(of[3], 0x0F, &rh):
                    return None
                qos |= (0x04 if no_local else 0) | (0x08 if rap else 0) | (rh << 4)
            wb_u8(&b, qos)
        return wb_frame(&b, 0x82)
    finally:
        wb_free(&b)


cdef object _enc_unsubscribe(PyObject* p, bint v5):
    cdef PyObject* pid_o = _field(p, K_UNSUBSCRIBE, 0)
    cdef PyObject* topics = _field(p, K_UNSUBSCRIBE, 1)
    cdef PyObject* props = _field(p, K_UNSUBSCRIBE, 2)
    cdef long pid
    cdef Py_ssize_t i, n
    cdef WBuf b
    cdef PyObject* rest = _field(p, K_SUBSCRIBE, 3)
    if pid_o == NULL or topics == NULL or props == NULL or rest == NULL:
        return None
    if not mq_small(pid_o, 0xFFFF, &pid) or not PyList_CheckExact(topics):
        return None
    if not PyBytes_CheckExact(<object>rest) or PyBytes_GET_SIZE(<object>rest):
        return None  # undecoded entries: the reference appends them
    wb_init(&b, HEADROOM)
    try:
        wb_u16(&b, pid)
        if v5 and _enc_properties(&b, props):
            return None
        n = PyList_GET_SIZE(topics)
        for i in range(n):
            if wb_str(&b, PyList_GET_ITEM(topics, i)):
                return None
        return wb_frame(&b, 0xA2)
    finally:
        wb_free(&b)


cdef object _enc_suback(PyObject* p, int k, unsigned int first, bint v5):
    """SUBACK, and UNSUBACK (whose codes exist in 5.0 only)."""
    cdef PyObject* pid_o = _field(p, k, 0)
    cdef PyObject* codes = _field(p, k, 1)
    cdef PyObject* props = _field(p, k, 2)
    cdef long pid
    cdef WBuf b
    if pid_o == NULL or codes == NULL or props == NULL:
        return None
    if not mq_small(pid_o, 0xFFFF, &pid):
        return None
    wb_init(&b, HEADROOM)
    try:
        wb_u16(&b, pid)
        if v5 and _enc_properties(&b, props):
            return None
        if (v5 or k == K_SUBACK) and wb_codes(&b, codes):
            return None
        return wb_frame(&b, first)
    finally:
        wb_free(&b)


cdef object _enc_reason(PyObject* p, int k, unsigned int first, bint v5):
    """DISCONNECT and AUTH (which always carries properties with a reason code)."""
    cdef PyObject* code_o
    cdef PyObject* props
    cdef long code
    cdef int has_code = 0, has_props = 0
    cdef WBuf b
    cdef unsigned char short[2]
    if v5:
        code_o = _field(p, k, 0)
        props = _field(p, k, 1)
        if code_o == NULL or props == NULL:
            return None
        has_code = mq_truth(code_o)
        has_props = mq_truth(props)
        if has_code < 0 or has_props < 0:
            return None
    if not v5 or (not has_code and not has_props):
        short[0] = first
        short[1] = 0
        return PyBytes_FromStringAndSize(<const char*>short, 2)
    if not mq_small(code_o, 0xFF, &code):
        return None
    wb_init(&b, HEADROOM)
    try:
        wb_u8(&b, code)
        if (has_props or k == K_AUTH) and _enc_properties(&b, props):
            return None
        return wb_frame(&b, first)
    finally:
        wb_free(&b)


def encode_publish(topic, payload, qos, retain, dup, packet_id, properties, version):
    """``encode(Publish(topic, payload, qos, retain, dup, packet_id, properties), version)``
    without building the Publish (the broker's per-message QoS 0 delivery); the same bytes
    as ``mqttd._codec_py.encode_publish``, which encodes what the fast path does not take."""
    cdef long ver
    if mq_small(<PyObject*>version, 0xFF, &ver):
        out = _enc_publish_fields(<PyObject*>topic, <PyObject*>payload, <PyObject*>qos,
                                  <PyObject*>retain, <PyObject*>dup, <PyObject*>packet_id,
                                  <PyObject*>properties, ver == 5)
        if out is not None:
            return out
    return _encode_py(_packets.Publish(topic, payload, qos, retain, dup, packet_id,
                                       properties), version)


def encode(packet, version=4):
    """Serialize ``packet`` for protocol level ``version`` (a CONNECT uses its own level)."""
    cdef PyObject* p = <PyObject*>packet
    cdef PyObject* t = mq_type(p)
    cdef long ver
    cdef bint v5
    cdef int k
    for k in range(1, 16):
        if t == _CLSP[k]:
            break
    else:
        raise TypeError("not an MQTT packet: %r" % (packet,))
    if k == K_PINGREQ:
        return b"\xc0\x00"
    if k == K_PINGRESP:
        return b"\xd0\x00"
    if mq_small(<PyObject*>version, 0xFF, &ver) and _FAST[k]:
        v5 = ver == 5
        if k == K_PUBLISH:
            out = _enc_publish(p, v5)
        elif K_PUBACK <= k <= K_PUBCOMP:
            out = _enc_ack(p, k, (k << 4) | (2 if k == K_PUBREL else 0), v5)
        elif k == K_CONNECT:
            out = _enc_connect(p)
        elif k == K_CONNACK:
            out = _enc_connack(p, v5)
        elif k == K_SUBSCRIBE:
            out = _enc_subscribe(p, v5)
        elif k == K_SUBACK:
            out = _enc_suback(p, k, 0x90, v5)
        elif k == K_UNSUBSCRIBE:
            out = _enc_unsubscribe(p, v5)
        elif k == K_UNSUBACK:
            out = _enc_suback(p, k, 0xB0, v5)
        else:
            out = _enc_reason(p, k, k << 4, v5)
        if out is not None:
            return out
    # Not a shape the fast path takes: the reference encodes it or raises.
    return _encode_py(packet, version)

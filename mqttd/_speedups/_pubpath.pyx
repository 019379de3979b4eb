# cython: language_level=3
"""The PUBLISH fast path, compiled: the twin of ``mqttd/core/_pubpath_py.py``.

Read the reference for what it does and when it declines. This is the same code line
for line, with C integers for the QoS, counts and packet id and without the Python
frames of the seven calls it replaces (handle_in, _in_publish, _check_publish,
check_acl, Broker.publish, Dispatcher.publish, Channel.deliver per subscriber). It
imports nothing of mqttd: the facade hands it core's classes and counter indices.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy
from cpython.dict cimport PyDict_DelItem, PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_CheckExact
from cpython.long cimport PyLong_AsLongAndOverflow
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport int64_t
from libc.time cimport time_t


cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    int CLOCK_REALTIME
    int CLOCK_MONOTONIC

#: Message's slots, in order, as its __init__ fills them (checked at configuration: a
#: Message with other slots is built by calling the class).
cdef tuple _MESSAGE_SLOTS = ("topic", "payload", "qos", "retain", "properties", "sender",
                             "timestamp", "expiry")
cdef object _ZERO = 0.0

from collections import deque as _deque

from mqttd._speedups._metrics cimport Metrics

cdef extern from *:
    """
    #include "structmember.h"

    /* collections.deque, set at import (NULL until then: no deque fast path). */
    static PyTypeObject *pp_deque_type = NULL;
    static void pp_set_deque(PyObject *t) { Py_INCREF(t); pp_deque_type = (PyTypeObject *)t; }

    /* Borrowed slot value of o at offset off, NULL if unset. */
    static CYTHON_INLINE PyObject *pp_get(PyObject *o, Py_ssize_t off) {
        return *(PyObject **)((char *)o + off);
    }
    /* Replace the slot value (a new reference is taken to v). */
    static CYTHON_INLINE void pp_put(PyObject *o, Py_ssize_t off, PyObject *v) {
        PyObject **slot = (PyObject **)((char *)o + off);
        PyObject *old = *slot;
        Py_INCREF(v);
        *slot = v;
        Py_XDECREF(old);
    }
    static CYTHON_INLINE PyObject *pp_type(PyObject *o) { return (PyObject *)Py_TYPE(o); }
    /* The instance dict of o (borrowed) and its version tag (PEP 509, CPython 3.11: it
       changes whenever the dict does); 0 when there is no dict or no tag to trust. */
    static CYTHON_INLINE unsigned long long pp_dict_tag(PyObject *o, PyObject **dict) {
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
        PyObject **dp = _PyObject_GetDictPtr(o);
        if (dp == NULL || *dp == NULL) return 0;
        *dict = *dp;
        return (unsigned long long)((PyDictObject *)*dp)->ma_version_tag;
    #else
        (void)o; (void)dict;
        return 0;
    #endif
    }
    /* Add 1 to the int in the slot in place when nothing but the slot holds it (refcount
       1: no one can see it change) and it stays one 30-bit digit: 1; else 0 (the caller
       stores a new int). A per-message counter otherwise costs an int's allocation and
       free each time it moves past 256. CPython 3.11's int layout only. */
    static CYTHON_INLINE int pp_bump(PyObject *o, Py_ssize_t off) {
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && PYLONG_BITS_IN_DIGIT == 30
        PyObject *v = *(PyObject **)((char *)o + off);
        digit d;
        if (v == NULL || !PyLong_CheckExact(v) || Py_REFCNT(v) != 1 || Py_SIZE(v) != 1)
            return 0;
        d = ((PyLongObject *)v)->ob_digit[0];
        if (d >= PyLong_MASK) return 0;
        ((PyLongObject *)v)->ob_digit[0] = d + 1;
        return 1;
    #else
        (void)o; (void)off;
        return 0;
    #endif
    }
    /* UTF-8 of an exact str of at most 65535 encoded bytes; NULL (no error) otherwise. */
    static CYTHON_INLINE const char *pp_utf8(PyObject *o, Py_ssize_t *n) {
        const char *s;
        if (o == NULL || !PyUnicode_CheckExact(o)) return NULL;
        s = PyUnicode_AsUTF8AndSize(o, n);
        if (s == NULL) { PyErr_Clear(); return NULL; }
        if (*n > 0xFFFF) return NULL;
        return s;
    }
    /* A new, zeroed (and GC-tracked) instance of the slotted class tp. */
    static CYTHON_INLINE PyObject *pp_alloc(PyObject *tp) {
        return ((PyTypeObject *)tp)->tp_alloc((PyTypeObject *)tp, 0);
    }
    /* Store v (a new reference is taken) in the empty slot at offset off. */
    static CYTHON_INLINE void pp_fill(PyObject *o, Py_ssize_t off, PyObject *v) {
        Py_INCREF(v);
        *(PyObject **)((char *)o + off) = v;
    }
    /* PyObject_IsTrue(v) without its call for the exact builtins the fast path tests
       per message (ints, floats, strs, tuples, lists, dicts, deques: their own truth, read
       as their nb_bool / sq_length / mp_length would); anything else calls it. */
    static CYTHON_INLINE int pp_true(PyObject *v) {
        PyTypeObject *t;
        if (v == Py_None || v == Py_False) return 0;
        if (v == Py_True) return 1;
        t = Py_TYPE(v);
    #if PY_VERSION_HEX < 0x030C0000
        if (t == &PyLong_Type) return Py_SIZE(v) != 0;  /* (3.12 changed the int layout) */
    #else
        if (t == &PyLong_Type) return PyLong_Type.tp_as_number->nb_bool(v);
    #endif
        if (t == &PyUnicode_Type) return PyUnicode_GET_LENGTH(v) != 0;
        if (t == &PyTuple_Type || t == &PyList_Type) return Py_SIZE(v) != 0;
        if (t == &PyDict_Type) return PyDict_GET_SIZE(v) != 0;
        if (t == &PyFloat_Type) return PyFloat_AS_DOUBLE(v) != 0.0;
        if (t == pp_deque_type && t->tp_as_sequence && t->tp_as_sequence->sq_length) {
            Py_ssize_t n = t->tp_as_sequence->sq_length(v);
            return n < 0 ? -1 : n != 0;
        }
        return PyObject_IsTrue(v);
    }
    /* Truth of the slot value, with no reference taken: 0 or 1; -1 on error;
       -2 when o is not exactly tp or the slot is unset (the caller uses getattr). */
    static CYTHON_INLINE int pp_test(PyObject *o, PyObject *tp, Py_ssize_t off) {
        PyObject *v;
        if ((PyObject *)Py_TYPE(o) != tp) return -2;
        v = *(PyObject **)((char *)o + off);
        if (v == NULL) return -2;
        return pp_true(v);
    }
    /* Whether the slot value is None: 0 or 1; -2 as pp_test. */
    static CYTHON_INLINE int pp_none(PyObject *o, PyObject *tp, Py_ssize_t off) {
        PyObject *v;
        if ((PyObject *)Py_TYPE(o) != tp) return -2;
        v = *(PyObject **)((char *)o + off);
        if (v == NULL) return -2;
        return v == Py_None;
    }
    /* Offset of the writable object slot that member descriptor descr gives
       instances of tp, or -1 if it is not exactly that. */
    static Py_ssize_t pp_slot_offset(PyObject *descr, PyObject *tp) {
        PyMemberDef *m;
        if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type) return -1;
        if ((PyObject *)PyDescr_TYPE(descr) != tp) return -1;
        m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)) return -1;
        if (m->offset < (Py_ssize_t)sizeof(PyObject)
                || m->offset + (Py_ssize_t)sizeof(PyObject *) > ((PyTypeObject *)tp)->tp_basicsize)
            return -1;
        return m->offset;
    }
    """
    PyObject* pp_get(PyObject* o, Py_ssize_t off)
    void pp_put(PyObject* o, Py_ssize_t off, PyObject* v)
    PyObject* pp_type(PyObject* o)
    unsigned long long pp_dict_tag(PyObject* o, PyObject** dict)
    int pp_bump(PyObject* o, Py_ssize_t off)
    const char* pp_utf8(PyObject* o, Py_ssize_t* n)
    object pp_alloc(PyObject* tp)
    void pp_fill(object o, Py_ssize_t off, object v)
    int pp_test(PyObject* o, PyObject* tp, Py_ssize_t off) except -1
    int pp_true(PyObject* v) except -1
    void pp_set_deque(PyObject* t)
    int pp_none(PyObject* o, PyObject* tp, Py_ssize_t off)
    Py_ssize_t pp_slot_offset(PyObject* descr, PyObject* tp)


pp_set_deque(<PyObject*>_deque)
cdef object _popleft = _deque.popleft  # (called unbound: no method lookup per message)
cdef object _append = _deque.append


include "_pids.pxi"


cdef inline object _after(object npid):
    """``npid + 1 if npid < 0xFFFF else 1`` (Session.next_packet_id's step), its int
    taken from _PIDS."""
    cdef long v
    cdef int overflow = 0
    if type(npid) is int:
        v = PyLong_AsLongAndOverflow(npid, &overflow)
    if type(npid) is not int or overflow:
        return npid + 1 if npid < 0xFFFF else 1
    return _pid(v + 1 if v < 0xFFFF else 1)


cdef inline bint _off(object state, object connected) except -1:
    """``state != connected``, the identity first (the usual: the same enum member)."""
    if state is connected:
        return False
    return state != connected


cdef inline bint _truth(object o) except -1:
    """``bool(o)``, without PyObject_IsTrue's call for the exact builtins (pp_true)."""
    return pp_true(<PyObject*>o)


# Attributes of core's slotted classes are read (and a few counters written) straight
# from their slots when the object is exactly the class the offsets were found on: a
# pointer read instead of a type lookup and a descriptor call, ~40 times per message.
# Anything else (a subclass, a stand-in, an unset slot) goes through getattr/setattr.
cdef struct Slot:
    PyObject* tp
    Py_ssize_t off


cdef inline double _clock() noexcept:
    """``time.monotonic()`` (the same clock, CLOCK_MONOTONIC) without a call or a float."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef Slot _slot(cls, str name) except *:
    cdef Slot s
    descr = cls.__dict__.get(name)
    s.tp = <PyObject*>cls
    s.off = pp_slot_offset(<PyObject*>descr, <PyObject*>cls)
    if s.off < 0:
        s.tp = NULL  # never matches: getattr
    return s


cdef inline object _g(object o, Slot s, str name):
    cdef PyObject* v
    if pp_type(<PyObject*>o) == s.tp:
        v = pp_get(<PyObject*>o, s.off)
        if v != NULL:
            return <object>v
    return getattr(o, name)


cdef bint _plain(cls, names) except -1:
    """Whether no class in ``cls``'s MRO defines any of ``names`` (a property, a slot, a
    class attribute): then an instance's attribute of that name is its dict's entry."""
    for klass in cls.__mro__:
        for name in names:
            if name in klass.__dict__:
                return False
    return True


cdef object _plain_packet_type(cls):
    """The ``packet_type`` every instance of ``cls`` reads: its class attribute, when no
    class in its MRO makes it a slot or a descriptor (None otherwise)."""
    for klass in cls.__mro__:
        if "packet_type" in klass.__dict__:
            v = klass.__dict__["packet_type"]
            return v if type(v) is int else None
    return None


cdef inline bint _t(object o, Slot s, str name) except -1:
    """Truth of ``o.name`` (no reference taken when read from the slot)."""
    cdef int r = pp_test(<PyObject*>o, s.tp, s.off)
    if r == -2:
        return bool(getattr(o, name))
    return r


cdef inline bint _none(object o, Slot s, str name) except -1:
    """``o.name is None`` (no reference taken when read from the slot)."""
    cdef int r = pp_none(<PyObject*>o, s.tp, s.off)
    if r == -2:
        return getattr(o, name) is None
    return r


cdef inline void _inc(object metrics, Py_ssize_t idx, int64_t n=1) except *:
    """``metrics.inc(idx, n)``: the compiled counters' C array when it is them."""
    if type(metrics) is Metrics and 0 <= idx < (<Metrics>metrics)._n:
        (<Metrics>metrics)._c[idx] += n
    else:
        metrics.inc(idx, n)


cdef inline void _s(object o, Slot s, str name, object value) except *:
    if pp_type(<PyObject*>o) == s.tp and pp_get(<PyObject*>o, s.off) != NULL:
        pp_put(<PyObject*>o, s.off, <PyObject*>value)
    else:
        setattr(o, name, value)

cdef inline void _bump(object o, Slot s, str name) except *:
    """``o.name += 1`` for a counter slot (in place when no one else holds the int)."""
    if pp_type(<PyObject*>o) == s.tp and pp_bump(<PyObject*>o, s.off):
        return
    _s(o, s, name, _g(o, s, name) + 1)

cdef object _ABSENT = object()


@cython.final
cdef class _Attrs:
    """Attributes of one plain object (the Broker, the Dispatcher, the Router: they have no
    slots), read from its instance dict and kept while that dict's version tag says it has
    not changed since: one comparison instead of a dict lookup per attribute and message.
    Anything else (another object, no tag, a name not in the dict) reads as ``_d`` does."""

    cdef object obj       # the object the values are of (held: its id cannot be reused)
    cdef object dict      # its instance dict when read (held, compared by identity)
    cdef unsigned long long tag
    cdef tuple names
    cdef list values
    cdef bint plain

    def __init__(self, tuple names, bint plain):
        self.names = names
        self.plain = plain
        self.tag = 0

    cdef inline object get(self, o, Py_ssize_t i):
        cdef PyObject* d = NULL
        cdef unsigned long long tag
        if self.plain:
            tag = pp_dict_tag(<PyObject*>o, &d)
            if tag != 0 and tag == self.tag and o is self.obj and d == <PyObject*>self.dict:
                v = self.values[i]
                if v is not _ABSENT:
                    return v
                return getattr(o, self.names[i])
            if tag != 0:
                self._read(o, <object>d, tag)
                v = self.values[i]
                if v is not _ABSENT:
                    return v
        return getattr(o, self.names[i])

    cdef int _read(self, o, dict d, unsigned long long tag) except -1:
        cdef PyObject* v
        values = []
        for name in self.names:
            v = PyDict_GetItem(d, name)
            values.append(<object>v if v is not NULL else _ABSENT)
        self.values = values
        self.obj = o
        self.dict = d
        self.tag = tag
        return 0


# _Attrs indices.
cdef enum:
    B_CLUSTER, B_TRACES, B_AUTHORIZER, B_DISPATCHER, B_METRICS, B_EGRESS
    D_WATCHED = 0
    D_ROUTER = 1
    D_METRICS = 2
    R_CACHE = 0

__all__ = ["PublishPath"]

#: The PUBACK packet type (MQTT's, fixed), taken too (see the reference).
cdef int _PUBACK = 4

#: What a Message is made of, borrowed from the PUBLISH being taken; the Message itself is
#: built only when something keeps or hands it on (``PublishPath._msg``): a QoS 0 message
#: to plain online subscribers is written as its shared frame and never needs one.
cdef struct Pending:
    PyObject* topic
    PyObject* payload
    PyObject* properties
    PyObject* sender
    PyObject* msg  # owned once built (released by _take)
    int qos


cdef tuple _K4 = (False, False)
cdef tuple _K5 = (True, False)
cdef tuple _NO_SUBIDS = ()


@cython.final
cdef object _frame(PyObject* topic, PyObject* payload, PyObject* properties, bint v5,
                   unsigned int packet_id):
    """encode_publish(topic, payload, qos, False, False, packet_id, properties, version)
    without the call (QoS 1 when ``packet_id``, else 0), for a str topic, bytes payload and
    no properties (v5: an empty property block); None for anything else (the caller calls
    encode_publish)."""
    cdef Py_ssize_t tn, pn, rem, hdr, i
    cdef const char* t
    cdef char* o
    if type(<object>properties) is not dict or <dict>properties:
        return None
    if type(<object>payload) is not bytes:
        return None
    t = pp_utf8(topic, &tn)
    if t == NULL:
        return None
    pn = len(<bytes>payload)
    rem = 2 + tn + (2 if packet_id else 0) + v5 + pn
    if rem > 268435455:
        return None
    hdr = 2 if rem < 0x80 else 3 if rem < 0x4000 else 4 if rem < 0x200000 else 5
    data = PyBytes_FromStringAndSize(NULL, hdr + rem)
    o = PyBytes_AS_STRING(data)
    o[0] = <char>(0x32 if packet_id else 0x30)
    i = 1
    while True:
        o[i] = <char>(rem & 0x7F)
        rem >>= 7
        if rem:
            o[i] = <char>(o[i] | 0x80)
            i += 1
        else:
            break
    i = hdr
    o[i] = <char>(tn >> 8)
    o[i + 1] = <char>(tn & 0xFF)
    memcpy(o + i + 2, t, tn)
    i += 2 + tn
    if packet_id:
        o[i] = <char>(packet_id >> 8)
        o[i + 1] = <char>(packet_id & 0xFF)
        i += 2
    if v5:
        o[i] = 0
        i += 1
    memcpy(o + i, PyBytes_AS_STRING(<object>payload), pn)
    return data


cdef class PublishPath:
    """The fast path, configured once (see the reference)."""

    cdef object broker_cls, channel_cls, message_cls, connected, encode_publish
    cdef list overfull
    cdef int publish_type
    cdef Py_ssize_t qos0_received, qos1_received, acl_ignore, messages_publish
    cdef Py_ssize_t messages_delivered, dropped_no_subscribers, qos0_sent, puback_sent
    cdef Py_ssize_t puback_received, messages_acked, qos1_sent
    # Channel
    cdef Slot c_closing, c_held, c_tracer, c_state, c_pressure, c_mountpoint, c_zone
    cdef Slot c_services, c_hooks, c_gate, c_metrics, c_recv_pkt, c_recv_msg, c_client_id
    cdef Slot c_out, c_client_max_packet, c_version, c_send_pkt, c_send_msg, c_dropped
    cdef Slot c_acl_deliver, c_paused, c_alias_out_max, c_wakeup, c_clientinfo, c_session
    # Publish, Zone, Hooks, Route, Session, SubOpts, Message
    cdef Slot p_qos, p_retain, p_properties, p_topic, p_payload, p_packet_id
    cdef Slot z_max_qos_allowed, z_max_topic_levels
    cdef Slot h_client_publish, h_client_check_acl, h_message_publish, h_message_dropped
    cdef Slot h_client_publish_prefixes
    cdef Slot h_message_delivered, h_message_acked
    cdef Slot h_slow_threshold, h_delivery_slow, s_sent_at
    cdef Slot r_one, r_entry, r_subs, r_groups, r_walking
    cdef Slot s_channel, s_client_id, s_upgrade_qos
    cdef Slot s_mqueue, s_store, s_flow_stalled, s_enqueued
    cdef Slot s_next_pid, s_limits, q_max_mqueue_len, q_flow_limit
    cdef Slot s_inflight, s_wait_comp, s_delivered, s_max_inflight
    cdef Slot a_packet_id  # a PUBACK's
    cdef Slot g_issued, g_committed, g_full  # the store's CommitGate
    cdef Slot o_qos, o_no_local
    cdef Slot l_topics, l_kept
    cdef Slot m_sender, m_qos, m_topic, m_payload, m_properties
    cdef Slot m_retain, m_timestamp, m_expiry
    cdef bint message_fill  # build a Message by filling its slots (see _message)
    cdef object publish_cls
    cdef object puback_cls  # Puback when its packet_type is PUBACK's (read once), else None
    cdef bint broker_plain, dispatcher_plain, router_plain
    cdef tuple classes  # keeps the classes whose offsets the Slots hold
    cdef _Attrs ba, da, ra  # the Broker's, Dispatcher's and Router's attributes
    cdef object last_topic  # the last topic whose '/'s were counted, and their count
    cdef Py_ssize_t last_levels
    # The last topic that passed the idle modules' tests (a topic rewrite rule's prefixes,
    # topic metrics' watched names) and what it passed: the hooks' prefixes tuple and the
    # dispatcher's watched dict, each replaced (never changed in place) when it changes. The
    # parser hands a connection's repeated topic out again, so a fan-in publisher's
    # PUBLISHes skip both tests (~270 instructions a message) after its first.
    cdef object free_topic, free_prefixes, free_watched

    def __init__(self, broker_cls, channel_cls, message_cls, list overfull, connected,
                 int publish_type, encode_publish, dict counters, dict slotted=None):
        self.broker_cls = broker_cls
        self.channel_cls = channel_cls
        self.message_cls = message_cls
        self.overfull = overfull
        self.connected = connected
        self.publish_type = publish_type
        self.encode_publish = encode_publish
        self.qos0_received = counters["qos0_received"]
        self.qos1_received = counters["qos1_received"]
        self.acl_ignore = counters["acl_ignore"]
        self.messages_publish = counters["messages_publish"]
        self.messages_delivered = counters["messages_delivered"]
        self.dropped_no_subscribers = counters["dropped_no_subscribers"]
        self.qos0_sent = counters["qos0_sent"]
        self.puback_sent = counters["puback_sent"]
        self.puback_received = counters["puback_received"]
        self.messages_acked = counters["messages_acked"]
        self.qos1_sent = counters["qos1_sent"]
        c = channel_cls
        self.c_closing = _slot(c, "closing")
        self.c_held = _slot(c, "_held")
        self.c_tracer = _slot(c, "tracer")
        self.c_state = _slot(c, "state")
        self.c_pressure = _slot(c, "pressure")
        self.c_mountpoint = _slot(c, "mountpoint")
        self.c_zone = _slot(c, "zone")
        self.c_services = _slot(c, "services")
        self.c_hooks = _slot(c, "hooks")
        self.c_gate = _slot(c, "gate")
        self.c_metrics = _slot(c, "metrics")
        self.c_recv_pkt = _slot(c, "recv_pkt")
        self.c_recv_msg = _slot(c, "recv_msg")
        self.c_client_id = _slot(c, "client_id")
        self.c_out = _slot(c, "out")
        self.c_client_max_packet = _slot(c, "client_max_packet")
        self.c_version = _slot(c, "version")
        self.c_send_pkt = _slot(c, "send_pkt")
        self.c_send_msg = _slot(c, "send_msg")
        self.c_dropped = _slot(c, "dropped")
        self.c_acl_deliver = _slot(c, "acl_deliver")
        self.c_paused = _slot(c, "paused")
        self.c_alias_out_max = _slot(c, "alias_out_max")
        self.c_wakeup = _slot(c, "wakeup")
        self.c_clientinfo = _slot(c, "_clientinfo")
        self.c_session = _slot(c, "session")
        slotted = slotted or {}
        self.broker_plain = _plain(broker_cls, (
            "cluster", "topic_traces", "authorizer", "dispatcher", "metrics", "egress"))
        self.dispatcher_plain = _plain(slotted.get("Dispatcher", object), (
            "watched", "router", "metrics"))
        self.router_plain = _plain(slotted.get("Router", object), ("_cache",))
        self.ba = _Attrs(("cluster", "topic_traces", "authorizer", "dispatcher", "metrics",
                          "egress"),
                         self.broker_plain)
        self.da = _Attrs(("watched", "router", "metrics"), self.dispatcher_plain)
        self.ra = _Attrs(("_cache",), self.router_plain)
        self.classes = (channel_cls, message_cls, *slotted.values())
        c = self.publish_cls = slotted.get("Publish", object)
        self.p_qos = _slot(c, "qos")
        self.p_retain = _slot(c, "retain")
        self.p_properties = _slot(c, "properties")
        self.p_topic = _slot(c, "topic")
        self.p_payload = _slot(c, "payload")
        self.p_packet_id = _slot(c, "packet_id")
        c = slotted.get("Zone", object)
        self.z_max_qos_allowed = _slot(c, "max_qos_allowed")
        self.z_max_topic_levels = _slot(c, "max_topic_levels")
        c = slotted.get("Hooks", object)
        self.h_client_publish = _slot(c, "client_publish")
        self.h_client_publish_prefixes = _slot(c, "client_publish_prefixes")
        self.h_client_check_acl = _slot(c, "client_check_acl")
        self.h_message_publish = _slot(c, "message_publish")
        self.h_message_dropped = _slot(c, "message_dropped")
        self.h_message_delivered = _slot(c, "message_delivered")
        self.h_message_acked = _slot(c, "message_acked")
        self.h_slow_threshold = _slot(c, "slow_threshold")
        self.h_delivery_slow = _slot(c, "delivery_slow")
        c = slotted.get("Route", object)
        self.r_one = _slot(c, "one")
        self.r_entry = _slot(c, "entry")
        self.r_subs = _slot(c, "subs")
        self.r_groups = _slot(c, "groups")
        self.r_walking = _slot(c, "walking")
        c = slotted.get("Session", object)
        self.s_channel = _slot(c, "channel")
        self.s_client_id = _slot(c, "client_id")
        self.s_upgrade_qos = _slot(c, "upgrade_qos")
        self.s_mqueue = _slot(c, "mqueue")
        self.s_store = _slot(c, "store")
        self.s_flow_stalled = _slot(c, "flow_stalled")
        self.s_enqueued = _slot(c, "enqueued")
        self.s_sent_at = _slot(c, "sent_at")
        self.s_next_pid = _slot(c, "_next_pid")
        self.s_limits = _slot(c, "limits")
        self.s_inflight = _slot(c, "inflight")
        self.s_wait_comp = _slot(c, "wait_comp")
        self.s_delivered = _slot(c, "delivered")
        self.s_max_inflight = _slot(c, "max_inflight")
        c = slotted.get("Puback", object)
        self.a_packet_id = _slot(c, "packet_id")
        self.puback_cls = c if (c is not object and publish_type != _PUBACK
                                and _plain_packet_type(c) == _PUBACK) else None
        c = slotted.get("CommitGate", object)
        self.g_issued = _slot(c, "issued")
        self.g_committed = _slot(c, "committed")
        self.g_full = _slot(c, "full")
        c = slotted.get("Limits", object)  # (Session.max_mqueue_len, flow_limit: properties)
        self.q_max_mqueue_len = _slot(c, "max_mqueue_len")
        self.q_flow_limit = _slot(c, "flow_limit")
        c = slotted.get("SubOpts", object)
        self.o_qos = _slot(c, "qos")
        self.o_no_local = _slot(c, "no_local")
        c = slotted.get("LocalLane", object)
        self.l_topics = _slot(c, "topics")
        self.l_kept = _slot(c, "kept")
        c = message_cls
        self.m_sender = _slot(c, "sender")
        self.m_qos = _slot(c, "qos")
        self.m_topic = _slot(c, "topic")
        self.m_payload = _slot(c, "payload")
        self.m_properties = _slot(c, "properties")
        self.m_retain = _slot(c, "retain")
        self.m_timestamp = _slot(c, "timestamp")
        self.m_expiry = _slot(c, "expiry")
        self.message_fill = (getattr(c, "__slots__", None) == _MESSAGE_SLOTS and all(
            _slot(c, name).tp != NULL for name in _MESSAGE_SLOTS))

    def take(self, channel, p):
        """Handle ``p`` if it is the common PUBLISH (True); else change nothing (False)."""
        return self._take(channel, p)

    cdef bint _take(self, channel, p) except -1:
        cdef int qos
        cdef Py_ssize_t max_levels
        cdef Pending b
        # --- may we? (no side effect before every test has passed) ---
        if type(p) is not self.publish_cls:
            if type(p) is self.puback_cls:  # (its class's packet_type, without the lookup)
                return self._puback(channel, p)
            if p.packet_type != self.publish_type:
                if p.packet_type == _PUBACK:
                    return self._puback(channel, p)
                return False
        qos = _g(p, self.p_qos, "qos")
        if qos > 1 or _t(p, self.p_retain, "retain") or _t(p, self.p_properties, "properties"):
            return False
        if (_t(channel, self.c_closing, "closing")
                or not _none(channel, self.c_held, "_held")
                or not _none(channel, self.c_tracer, "tracer")
                or _off(_g(channel, self.c_state, "state"), self.connected)
                or not _none(channel, self.c_pressure, "pressure")
                or _t(channel, self.c_mountpoint, "mountpoint")):
            return False
        topic = _g(p, self.p_topic, "topic")
        if not isinstance(topic, str):
            return False
        if (<str>topic).startswith("$"):
            return False
        zone = _g(channel, self.c_zone, "zone")
        if qos > _g(zone, self.z_max_qos_allowed, "max_qos_allowed"):
            return False
        max_levels = _g(zone, self.z_max_topic_levels, "max_topic_levels")
        if max_levels:
            if topic is not self.last_topic:  # (the parser hands out a repeated topic again)
                self.last_levels = (<str>topic).count("/")
                self.last_topic = topic
            if self.last_levels >= max_levels:
                return False
        broker = _g(channel, self.c_services, "services")
        if type(broker) is not self.broker_cls:
            return False
        hooks = _g(channel, self.c_hooks, "hooks")
        dispatcher = self.ba.get(broker, B_DISPATCHER)
        watched = self.da.get(dispatcher, D_WATCHED)
        if _t(hooks, self.h_client_publish, "client_publish"):
            prefixes = _g(hooks, self.h_client_publish_prefixes, "client_publish_prefixes")
            if prefixes is None:
                return False
        else:
            prefixes = None
        if (topic is not self.free_topic or prefixes is not self.free_prefixes
                or watched is not self.free_watched):
            # (As the channel: callbacks that act only on some prefixes, e.g. a topic
            # rewrite rule, leave the other topics to the fast path.)
            if prefixes is not None and (<str>topic).startswith(prefixes):
                return False
            if watched is not None and topic in watched:
                return False
            self.free_topic = topic
            self.free_prefixes = prefixes
            self.free_watched = watched
        if (_t(hooks, self.h_client_check_acl, "client_check_acl")
                or _t(hooks, self.h_message_publish, "message_publish")
                or self.ba.get(broker, B_TRACES)):
            return False
        if self.ba.get(broker, B_AUTHORIZER) is not None and not (
                _g(channel, self.c_clientinfo, "_clientinfo") or channel.clientinfo).superuser:
            return False
        gate = _g(channel, self.c_gate, "gate")
        if qos and gate is not None and _t(gate, self.g_full, "full"):  # (the store may
            # refuse it: slow path)
            return False
        cluster = self.ba.get(broker, B_CLUSTER)  # (a single node: this one test)
        if cluster is not None:  # the last test: what passes it is taken
            lane = cluster.lane
            topics = _g(lane, self.l_topics, "topics")
            if type(topics) is dict and PyDict_GetItem(topics, topic) is not NULL:
                _bump(lane, self.l_kept, "kept")  # known to stay here: counted as forward
            elif not cluster.keep_local(topic):  # (which counts it when it stays)
                return False  # it goes to other nodes: Broker.publish forwards it

        # --- Channel.handle_in, _in_publish, _check_publish, Broker.check_acl ---
        metrics = _g(channel, self.c_metrics, "metrics")
        _bump(channel, self.c_recv_pkt, "recv_pkt")
        issued = _g(gate, self.g_issued, "issued") if qos and gate is not None else 0
        _inc(metrics, self.qos1_received if qos else self.qos0_received)
        _bump(channel, self.c_recv_msg, "recv_msg")
        _inc(metrics, self.acl_ignore)
        overfull = self.overfull
        if overfull:  # left by a publish no channel waits for (a will, the API)
            overfull.clear()
        payload = _g(p, self.p_payload, "payload")
        properties = _g(p, self.p_properties, "properties")
        sender = _g(channel, self.c_client_id, "client_id")
        b.topic = <PyObject*>topic
        b.payload = <PyObject*>payload
        b.properties = <PyObject*>properties
        b.sender = <PyObject*>sender
        b.qos = qos
        b.msg = NULL
        try:
            return self._publish(channel, p, &b, broker, dispatcher, hooks, gate, metrics,
                                 overfull, issued, qos)
        finally:
            Py_XDECREF(b.msg)

    cdef bint _publish(self, channel, p, Pending* b, broker, dispatcher, hooks, gate, metrics,
                       list overfull, issued, int qos) except -1:
        """The rest of _take, from Broker.publish on (the Message built only if needed)."""
        cdef Py_ssize_t n, limit
        cdef unsigned int packet_id
        cdef char ack[5]
        cdef PyObject* found
        topic = <object>b.topic

        # --- Broker.publish, Dispatcher.publish ---
        _inc(self.ba.get(broker, B_METRICS), self.messages_publish)  # (a cluster's: a single's)
        egress = self.ba.get(broker, B_EGRESS)
        if egress is not None:  # the bridges, where Broker.publish gives it them
            egress(self._msg(b))
        router = self.da.get(dispatcher, D_ROUTER)
        cache = self.ra.get(router, R_CACHE)  # Router.match's first step, without its call
        found = PyDict_GetItem(cache, topic) if type(cache) is dict else NULL
        routes = <object>found if found is not NULL else router.match_uncached(topic)
        if not _truth(routes):
            dispatcher.dropped_no_subscribers += 1
            _inc(self.da.get(dispatcher, D_METRICS), self.dropped_no_subscribers)
            if _t(hooks, self.h_message_dropped, "message_dropped"):
                hooks.run("message.dropped", self._msg(b), "no_subscribers")
            n = 0
        elif len(routes) != 1 or _t(routes[0], self.r_groups, "groups"):
            n = dispatcher.publish(self._msg(b))
        else:
            n = self._dispatch(routes[0], b, dispatcher, hooks)

        # --- back in Channel._in_publish: backpressure, PUBACK ---
        held = channel._press() if overfull else False
        if not qos:
            return True
        packet_id = _g(p, self.p_packet_id, "packet_id")
        ack[0] = <char>0x40
        ack[2] = <char>(packet_id >> 8)
        ack[3] = <char>(packet_id & 0xFF)
        if n or _g(channel, self.c_version, "version") != 5:
            ack[1] = 2
            data = PyBytes_FromStringAndSize(ack, 4)
        else:  # 0x10 No matching subscribers
            ack[1] = 3
            ack[4] = 0x10
            data = PyBytes_FromStringAndSize(ack, 5)
        out = _g(channel, self.c_out, "out")
        if not PyList_CheckExact(out):  # an idle channel's shared empty NO_OUT: its own now
            out = []
            _s(channel, self.c_out, "out", out)
        limit = _g(channel, self.c_client_max_packet, "client_max_packet")
        if limit and len(data) > limit:  # as Channel._send: never more than the client takes
            _bump(channel, self.c_dropped, "dropped")
        else:
            out.append(data)
            _bump(channel, self.c_send_pkt, "send_pkt")
            _inc(metrics, self.puback_sent)
        if held and _truth(out):
            channel._held_ack = (self._msg(b), n, packet_id, out[len(out) - 1])
        # --- Channel.handle_in: the acknowledgement waits for what the store took ---
        if gate is not None and _truth(out):
            if _g(gate, self.g_issued, "issued") != issued:
                channel._hold(gate)
            elif _g(gate, self.g_committed, "committed") != issued:
                # Channel._stored_pending inlined (a Python call per QoS 1 message, ~3 % of
                # fan-in QoS 1 on a broker with durability on): the client's own session is
                # stored and something is not committed yet.
                session = _g(channel, self.c_session, "session")
                if session is not None and not _none(session, self.s_store, "store"):
                    channel._hold(gate)
        return True

    def run(self, channel, list packets):
        """Apply one read's ``packets`` in order (see the reference); how many were applied."""
        cdef Py_ssize_t n = 0
        handle = channel.handle_in
        for packet in packets:
            n += 1
            if not self._take(channel, packet):
                handle(packet)
            if (_t(channel, self.c_closing, "closing")
                    or not _none(channel, self.c_pressure, "pressure")):
                break
        return n

    cdef bint _puback(self, channel, p) except -1:
        """The PUBACK of a QoS 1 delivery in flight and the refill it allows (see the
        reference's ``_puback``)."""
        cdef Py_ssize_t max_inflight
        cdef int version
        cdef bint stored
        cdef double now = -1.0, sent  # (timed deliveries: one clock read for the ack and
        cdef PyObject* item           # the refill, as one float shared by what it sends)
        if (_t(channel, self.c_closing, "closing")
                or not _none(channel, self.c_held, "_held")
                or not _none(channel, self.c_tracer, "tracer")
                or _off(_g(channel, self.c_state, "state"), self.connected)
                or _none(channel, self.c_clientinfo, "_clientinfo")):
            return False
        session = _g(channel, self.c_session, "session")
        if session is None:
            return False
        broker = _g(channel, self.c_services, "services")
        hooks = _g(channel, self.c_hooks, "hooks")
        if type(broker) is not self.broker_cls or _t(hooks, self.h_message_acked,
                                                      "message_acked"):
            return False
        packet_id = _g(p, self.a_packet_id, "packet_id")
        inflight = _g(session, self.s_inflight, "inflight")
        if type(inflight) is dict:
            item = PyDict_GetItem(inflight, packet_id)
            entry = <object>item if item is not NULL else None
        else:
            entry = inflight.get(packet_id)
        if entry is None or entry[1] != 1:
            return False
        wait_comp = _g(session, self.s_wait_comp, "wait_comp")
        if wait_comp is not None and packet_id in wait_comp:
            return False
        # --- Channel.handle_in, Session.ack, Broker.acked ---
        _bump(channel, self.c_recv_pkt, "recv_pkt")
        metrics = _g(channel, self.c_metrics, "metrics")
        _inc(metrics, self.puback_received)
        del inflight[packet_id]
        _bump(session, self.s_delivered, "delivered")
        stored = not _none(session, self.s_store, "store")
        if stored:
            session.forget(entry)
        _inc(self.ba.get(broker, B_METRICS), self.messages_acked)
        sent_at = _g(session, self.s_sent_at, "sent_at")
        if sent_at is not None:  # timed (delivery.slow): as _in_puback
            if type(sent_at) is dict:
                item = PyDict_GetItem(sent_at, packet_id)
                if item is NULL:
                    sent = 0.0
                else:
                    sent = <double><object>item
                    PyDict_DelItem(sent_at, packet_id)
            else:
                sent = sent_at.pop(packet_id, 0.0)
            now = _clock()
            if now - sent >= <double>_g(hooks, self.h_slow_threshold, "slow_threshold"):
                channel._completed(session, entry[0], sent)
        # --- Channel.drain ---
        if _t(channel, self.c_paused, "paused"):
            return True
        mq = _g(session, self.s_mqueue, "mqueue")
        if not _truth(mq):
            return True
        if (not _none(channel, self.c_acl_deliver, "acl_deliver")
                or _t(channel, self.c_alias_out_max, "alias_out_max")
                or _t(channel, self.c_mountpoint, "mountpoint")
                or _t(channel, self.c_client_max_packet, "client_max_packet")):
            channel.drain()
            return True
        stamp = None
        if _t(hooks, self.h_delivery_slow, "delivery_slow"):  # each PUBLISH sent is timed,
            sent_at = _g(session, self.s_sent_at, "sent_at")  # as drain does it
            if sent_at is None:
                sent_at = session.sent_at = {}
            stamp = now if now >= 0.0 else _clock()
        else:
            sent_at = None
        out = _g(channel, self.c_out, "out")
        was_empty = not _truth(out)
        if not PyList_CheckExact(out):  # (NO_OUT)
            out = []
            _s(channel, self.c_out, "out", out)
        version = _g(channel, self.c_version, "version")
        max_inflight = _g(session, self.s_max_inflight, "max_inflight")
        while _truth(mq) and len(inflight) < max_inflight:
            delivery = mq[0]
            msg = delivery[0]
            if delivery[1] != 1 or _truth(delivery[3]) or _t(msg, self.m_expiry, "expiry"):
                break
            if type(mq) is _deque:
                _popleft(mq)
            else:
                mq.popleft()
            if stored:
                pid = session.start_inflight(delivery)
            else:
                # Session.next_packet_id without the call (one per message refilled)
                npid = _g(session, self.s_next_pid, "_next_pid")
                while npid in inflight:
                    npid = _after(npid)
                pid = npid
                _s(session, self.s_next_pid, "_next_pid", _after(npid))
                inflight[pid] = delivery
            if sent_at is not None:
                if type(sent_at) is dict:
                    PyDict_SetItem(sent_at, pid, stamp)
                else:
                    sent_at[pid] = stamp
            topic = _g(msg, self.m_topic, "topic")
            payload = _g(msg, self.m_payload, "payload")
            properties = _g(msg, self.m_properties, "properties")
            data = None
            if delivery[2] is False and 0 < <long>pid <= 0xFFFF:  # (the usual frame, here)
                data = _frame(<PyObject*>topic, <PyObject*>payload, <PyObject*>properties,
                              version == 5, <unsigned int>pid)
            if data is None:
                data = self.encode_publish(topic, payload, 1, delivery[2], False, pid,
                                           properties, version)
            out.append(data)
            _bump(channel, self.c_send_pkt, "send_pkt")
            _bump(channel, self.c_send_msg, "send_msg")
            _inc(metrics, self.qos1_sent)
        if _truth(mq) and len(inflight) < max_inflight:
            channel.drain()  # the rest as drain does it (QoS 0/2, expiry, identifiers)
        if was_empty and _truth(out) and not _none(channel, self.c_wakeup, "wakeup"):
            channel.wakeup()
        return True

    cdef object _queue1(self, session, tuple delivery, int mqos):
        """``session.enqueue(delivery)`` of a QoS 1 delivery (message QoS ``mqos``) in its
        usual case, a queue in use, under its limit, no store, without the call (it was
        2-3 % of a QoS 1 flood's time); anything else goes through Session.enqueue."""
        cdef Py_ssize_t n
        mq = _g(session, self.s_mqueue, "mqueue")
        if type(mq) is not _deque or not _none(session, self.s_store, "store"):
            return session.enqueue(delivery)
        n = len(mq)
        lim = _g(session, self.s_limits, "limits")
        limit = _g(lim, self.q_max_mqueue_len, "max_mqueue_len")
        if limit and n >= limit:
            return session.enqueue(delivery)  # (the overflow policies)
        flow = _g(lim, self.q_flow_limit, "flow_limit")
        if flow:
            if n >= flow:  # flow control: the publisher waits (Session.enqueue's reasons)
                if (mqos and not _t(session, self.s_flow_stalled, "flow_stalled")
                        and not _none(session, self.s_channel, "channel")):
                    self.overfull.append(session)
            elif _t(session, self.s_flow_stalled, "flow_stalled"):
                _s(session, self.s_flow_stalled, "flow_stalled", False)
        _append(mq, delivery)  # (mq is a deque here: no method lookup)
        _bump(session, self.s_enqueued, "enqueued")
        return None

    cdef object _message(self, topic, payload, int qos, properties, sender):
        """``Message(topic, payload, qos, False, properties, sender)`` for empty
        ``properties``: what Message.__init__ sets (timestamp from the same clock as
        time.time(), no expiry), written into a new instance's slots."""
        cdef timespec ts
        if not self.message_fill or properties:
            return self.message_cls(topic, payload, qos, False, properties, sender)
        msg = pp_alloc(<PyObject*>self.message_cls)
        pp_fill(msg, self.m_topic.off, topic)
        pp_fill(msg, self.m_payload.off, payload)
        pp_fill(msg, self.m_qos.off, qos)
        pp_fill(msg, self.m_retain.off, False)
        pp_fill(msg, self.m_properties.off, properties)
        pp_fill(msg, self.m_sender.off, sender)
        clock_gettime(CLOCK_REALTIME, &ts)
        pp_fill(msg, self.m_timestamp.off, ts.tv_sec + ts.tv_nsec * 1e-9)
        pp_fill(msg, self.m_expiry.off, _ZERO)
        return msg

    cdef object _msg(self, Pending* b):
        """The Message of the PUBLISH being taken, built at the first need."""
        if b.msg == NULL:
            msg = self._message(<object>b.topic, <object>b.payload, b.qos,
                                <object>b.properties, <object>b.sender)
            Py_INCREF(msg)
            b.msg = <PyObject*>msg
        return <object>b.msg

    cdef object _frame0(self, Pending* b, bint v5):
        """encode_publish(topic, payload, 0, False, False, 0, properties, version) written
        here without the call, for a str topic, bytes payload and no properties (v5: an
        empty property block); None for anything else (the caller calls it)."""
        return _frame(b.topic, b.payload, b.properties, v5, 0)

    cdef Py_ssize_t _dispatch(self, route, Pending* b, dispatcher, hooks) except -1:
        cdef Py_ssize_t n = 0
        cdef int mqos
        cdef dict encoded = None  # (one subscriber: nothing to share)
        cdef dict subs
        sender = <object>b.sender
        mqos = b.qos
        one = _g(route, self.r_one, "one")
        delivered_hook = _t(hooks, self.h_message_delivered, "message_delivered")
        # A route's single subscriber is kept without a dict (see Route); a dict is walked
        # in place, the route marked meanwhile (a callback's changes copied: Route.walking).
        if one is not None:
            n = self._to(one, _g(route, self.r_entry, "entry"), b, sender, mqos,
                         delivered_hook, encoded, dispatcher)
        else:
            encoded = {}
            subs = _g(route, self.r_subs, "subs")
            walking = _g(route, self.r_walking, "walking")
            _s(route, self.r_walking, "walking", True)
            try:
                for session, entry in subs.items():
                    n += self._to(session, entry, b, sender, mqos, delivered_hook, encoded,
                                  dispatcher)
            finally:
                _s(route, self.r_walking, "walking", walking)
        if n:
            _inc(self.da.get(dispatcher, D_METRICS), self.messages_delivered, n)
        return n

    cdef int _to(self, session, entry, Pending* b, sender, int mqos, bint delivered_hook,
                 dict encoded, dispatcher) except -1:
        """One subscriber of the route: 1 if it counts as reached, 0 (No Local) if not.
        ``encoded``: the frames shared by the route's subscribers, None when it has one."""
        cdef int qos
        cdef Py_ssize_t limit
        cdef tuple key
        cdef PyObject* found
        if type(entry) is tuple and len(<tuple>entry) == 2:
            opts = (<tuple>entry)[0]
            subid = (<tuple>entry)[1]
        else:
            opts, subid = entry
        if (_t(opts, self.o_no_local, "no_local")
                and sender == _g(session, self.s_client_id, "client_id")):
            dispatcher._no_local(session, self._msg(b))
            return 0
        qos = _g(opts, self.o_qos, "qos")
        if qos > mqos and not _t(session, self.s_upgrade_qos, "upgrade_qos"):
            qos = mqos
        ch = _g(session, self.s_channel, "channel")
        if ch is None:
            dropped = session.enqueue((self._msg(b), qos, False,
                                       (subid,) if subid else _NO_SUBIDS, None))
            if dropped is not None:
                dispatcher.queue_dropped(session, dropped)
            return 1
        if (qos == 1 and not subid and not delivered_hook and type(ch) is self.channel_cls
                and not _t(ch, self.c_closing, "closing")
                and _none(ch, self.c_acl_deliver, "acl_deliver")
                and (_t(ch, self.c_paused, "paused")
                     or len(_g(session, self.s_inflight, "inflight"))
                     >= <Py_ssize_t>_g(session, self.s_max_inflight, "max_inflight"))):
            # Channel.deliver's QoS 1 to a full window (a flood's usual case): queued
            dropped = self._queue1(session, (self._msg(b), 1, False, _NO_SUBIDS, None), mqos)
            if dropped is not None:
                dispatcher.queue_dropped(session, dropped)
            return 1
        if (qos or subid or delivered_hook or type(ch) is not self.channel_cls
                or _t(ch, self.c_closing, "closing")
                or not _none(ch, self.c_acl_deliver, "acl_deliver")
                or _t(ch, self.c_paused, "paused")
                or _t(ch, self.c_alias_out_max, "alias_out_max")
                or not _none(ch, self.c_tracer, "tracer")
                or _t(ch, self.c_mountpoint, "mountpoint")):
            ch.deliver((self._msg(b), qos, False, (subid,) if subid else _NO_SUBIDS, None),
                       {} if encoded is None else encoded)
            return 1
        # Channel.deliver's shared QoS 0 bytes (the message has no expiry: no properties);
        # the delivery tuple the reference builds is only needed where it is handed on.
        version = _g(ch, self.c_version, "version")
        v5 = version == 5
        key = _K5 if v5 else _K4
        found = PyDict_GetItem(encoded, key) if encoded is not None else NULL
        if found is NULL:
            data = self._frame0(b, v5)
            if data is None:
                data = self.encode_publish(<object>b.topic, <object>b.payload, 0, False,
                                           False, 0, <object>b.properties, version)
            if encoded is not None:
                encoded[key] = data
        else:
            data = <object>found
        limit = _g(ch, self.c_client_max_packet, "client_max_packet")
        if limit and len(data) > limit:
            ch.deliver((self._msg(b), qos, False, _NO_SUBIDS, None),
                       {} if encoded is None else encoded)  # dropped, counted there
            return 1
        out = _g(ch, self.c_out, "out")
        was_empty = not _truth(out)
        if not PyList_CheckExact(out):  # (NO_OUT)
            out = []
            _s(ch, self.c_out, "out", out)
        out.append(data)
        _bump(ch, self.c_send_pkt, "send_pkt")
        _bump(ch, self.c_send_msg, "send_msg")
        _inc(_g(ch, self.c_metrics, "metrics"), self.qos0_sent)
        if was_empty and not _none(ch, self.c_wakeup, "wakeup"):
            ch.wakeup()
        return 1

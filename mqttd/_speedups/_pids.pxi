# The kept ints of packet identifiers, included by _codec.pyx and _pubpath.pyx (each module
# keeps its own table; both need PyObject and Py_INCREF cimported).

#: The ints of packet identifiers (1..65535), made at their first use and kept: a QoS 1
#: PUBLISH, its PUBACK and a refill's next identifier each carry one, an int CPython would
#: allocate and free per packet (ints are immutable: who holds one cannot tell it is shared).
cdef PyObject* _PIDS[65536]


cdef inline object _pid(long v):
    """The int ``v``: for a packet identifier (1..65535) the kept one."""
    cdef PyObject* o
    if 0 < v <= 0xFFFF:
        o = _PIDS[v]
        if o == NULL:
            x = <object>v  # (an int: typed, or Cython would keep it a C long)
            Py_INCREF(x)
            _PIDS[v] = <PyObject*>x
            return x
        return <object>o
    return v

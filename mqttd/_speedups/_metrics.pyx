# cython: language_level=3
"""Metrics, compiled: the same counters as ``mqttd/_metrics_py.py`` in a C array.

Read the reference for the semantics. Here a counter is a signed 64-bit C
integer, and ``inc`` is one bounds check and one addition: no Python int is
created or freed on the hot path (the reference replaces a list item with a
new int object on every increment). Indices follow Python's rules (a negative
index counts from the end; out of range raises IndexError), so both
implementations agree on every input that fits 64 bits.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdint cimport int64_t
from libc.string cimport memset

from mqttd._metric_names import DERIVED, NAMES

__all__ = ["Metrics"]


@cython.final
cdef class Metrics:
    """Named monotonic counters, incremented by index (fields in _metrics.pxd)."""

    def __cinit__(self):
        self._c = NULL
        self._n = 0
        self._cap = 0
        self._names = []
        self._index = {}
        self._derived = {}

    def __init__(self, names=NAMES, derived=DERIVED):
        for name in names:
            self.new(name)
        for name, parts in derived.items():
            if name in self._index:
                raise ValueError(f"{name} is both a counter and derived")
            parts = tuple(parts)
            if not all(type(i) is int and 0 <= i < self._n for i in parts):
                raise ValueError(f"derived metric {name}: an index is out of range")
            self._derived[name] = parts

    cdef int64_t _sum(self, tuple parts):
        cdef int64_t total = 0
        cdef object i
        for i in parts:
            total += self._c[<Py_ssize_t>i]
        return total

    def __dealloc__(self):
        PyMem_Free(self._c)
        self._c = NULL

    cdef Py_ssize_t _check(self, Py_ssize_t idx) except -1:
        if idx < 0:
            idx += self._n
        if idx < 0 or idx >= self._n:
            raise IndexError("list index out of range")
        return idx

    def inc(self, Py_ssize_t idx, int64_t n=1):
        """Add ``n`` (default 1) to the counter at ``idx``."""
        if idx < 0 or idx >= self._n:
            idx = self._check(idx)
        self._c[idx] += n

    def get(self, Py_ssize_t idx):
        """The value of the counter at ``idx``."""
        return self._c[self._check(idx)]

    def val(self, str name):
        """The value of the metric called ``name``, counter or derived (KeyError if none)."""
        idx = self._index.get(name)
        if idx is not None:
            return self._c[<Py_ssize_t>idx]
        return self._sum(self._derived[name])

    def index(self, str name):
        """The index of the counter called ``name`` (KeyError if there is none)."""
        return self._index[name]

    def new(self, name):
        """Add a counter called ``name`` (or find it); returns its index."""
        cdef Py_ssize_t cap
        cdef int64_t* grown
        if not isinstance(name, str):
            raise TypeError(f"a metric name is a str, not {type(name).__name__}")
        if name in self._derived:
            raise ValueError(f"{name} is a derived metric")
        idx = self._index.get(name)
        if idx is not None:
            return idx
        if self._n == self._cap:
            cap = self._cap * 2 if self._cap else 128
            grown = <int64_t*>PyMem_Realloc(self._c, cap * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self._cap, 0, (cap - self._cap) * sizeof(int64_t))
            self._c = grown
            self._cap = cap
        self._index[name] = self._n
        self._names.append(name)
        self._c[self._n] = 0
        self._n += 1
        return self._n - 1

    @property
    def names(self):
        """Every counter's name, in index order."""
        return tuple(self._names)

    @property
    def derived(self):
        """The names of the derived metrics."""
        return tuple(self._derived)

    def snapshot(self):
        """Every metric by name: the counters in index order, then the derived ones."""
        cdef dict out = {}
        cdef Py_ssize_t i
        for i in range(self._n):
            out[self._names[i]] = self._c[i]
        for name, parts in self._derived.items():
            out[name] = self._sum(parts)
        return out

    def reset(self):
        """Set every counter to 0."""
        if self._n:
            memset(self._c, 0, self._n * sizeof(int64_t))

    def __len__(self):
        return self._n

    def __repr__(self):
        return "<%s: %d counters>" % (type(self).__name__, self._n)

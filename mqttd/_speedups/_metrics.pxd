# The compiled Metrics' layout, for other compiled kernels (the PUBLISH fast path,
# _pubpath.pyx) to add to a counter without a Python call.
cimport cython
from libc.stdint cimport int64_t


@cython.final
cdef class Metrics:
    cdef int64_t* _c
    cdef Py_ssize_t _n
    cdef Py_ssize_t _cap
    cdef list _names
    cdef dict _index
    cdef dict _derived

    cdef int64_t _sum(self, tuple parts)
    cdef Py_ssize_t _check(self, Py_ssize_t idx) except -1

# An id as the checks of both compiled modules read it (Maps' bulk check in compile.pyx, the
# core's load in core.pyx): an int object's value, or 0, which is never an id (ids start at 1).
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.stdint cimport int64_t


cdef inline int64_t int_or_zero(value) except? -1:
    """An int id's value; 0 for anything else (a bool, a str) and for an int beyond 64 bits."""
    cdef int overflow
    cdef long long number
    if type(value) is not int:
        return 0
    number = PyLong_AsLongLongAndOverflow(value, &overflow)
    return 0 if overflow else number

# Cache-line-aligned, zeroed arrays. glibc's large calloc blocks start 16 bytes into a page, so
# an array of 64-byte entries from plain calloc puts every entry across two cache lines.
from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc

cdef enum:
    CACHE_LINE = 64


cdef inline void* aligned_calloc(size_t count, size_t size, void** block) noexcept nogil:
    """count * size zeroed bytes starting on a cache line (NULL when out of memory); free
    block[0] to release them. Like calloc, pages stay unallocated until written."""
    block[0] = calloc(count * size + CACHE_LINE, 1)
    if block[0] == NULL:
        return NULL
    return <void*>((<uintptr_t>block[0] + CACHE_LINE - 1) & ~(<uintptr_t>(CACHE_LINE - 1)))

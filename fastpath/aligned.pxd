# Cache-line-aligned, zeroed arrays. glibc's large calloc blocks start 16 bytes into a page, so
# an array of 64-byte entries from plain calloc puts every entry across two cache lines.
from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void* addr, size_t length, int advice)
    int MADV_HUGEPAGE

cdef enum:
    CACHE_LINE = 64
    HUGE_PAGE = 2 * 1024 * 1024


cdef inline void* aligned_calloc(size_t count, size_t size, void** block) noexcept nogil:
    """count * size zeroed bytes starting on a cache line (NULL when out of memory); free
    block[0] to release them. Like calloc, pages stay unallocated until written."""
    cdef size_t total = count * size
    cdef uintptr_t start, end
    block[0] = calloc(total + HUGE_PAGE, 1)
    if block[0] == NULL:
        return NULL
    if total >= 4 * HUGE_PAGE:
        start = (<uintptr_t>block[0] + HUGE_PAGE - 1) & ~(<uintptr_t>(HUGE_PAGE - 1))
        madvise(<void*>start, total & ~(<size_t>(HUGE_PAGE - 1)), MADV_HUGEPAGE)
        return <void*>start
    return <void*>((<uintptr_t>block[0] + CACHE_LINE - 1) & ~(<uintptr_t>(CACHE_LINE - 1)))

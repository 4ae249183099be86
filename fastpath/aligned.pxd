# Zeroed arrays laid out for the tables the core hits at random, and huge-page advice for big
# ones allocated otherwise.
# - Cache-line aligned: glibc's large calloc blocks start 16 bytes into a page, so an array of
#   64-byte entries from plain calloc puts every entry across two cache lines.
# - Big ones (HUGE_FROM and up) on 2 MiB boundaries, advised to the kernel as transparent huge
#   page candidates: a table hit at random touches every page soon, and one fault and one TLB
#   entry per 2 MiB instead of per 4 KiB is what keeps a cold start and a million flows fast.
#   (Where THP is off the advice is a no-op.)
from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc

cdef extern from *:
    """
    #include <sys/mman.h>
    #ifndef MADV_HUGEPAGE  /* not Linux: no transparent huge pages, the advice is a no-op */
    #define MADV_HUGEPAGE MADV_NORMAL
    #endif
    """
    int madvise(void* addr, size_t length, int advice) nogil
    int MADV_HUGEPAGE

cdef enum:
    CACHE_LINE = 64
    HUGE_PAGE = 2 * 1024 * 1024
    HUGE_FROM = 4 * HUGE_PAGE


cdef inline uintptr_t _align_up(uintptr_t address, uintptr_t alignment) noexcept nogil:
    return (address + alignment - 1) & ~(alignment - 1)


cdef inline void advise_huge(void* start, size_t size) noexcept nogil:
    """Advise the whole 2 MiB pages inside a big table from plain calloc or realloc as
    transparent huge page candidates (again after each realloc: a table that outgrows the heap
    moves to a new mapping)."""
    if size < HUGE_FROM:
        return
    cdef uintptr_t first = _align_up(<uintptr_t>start, HUGE_PAGE)
    cdef uintptr_t end = (<uintptr_t>start + size) & ~(<uintptr_t>HUGE_PAGE - 1)
    if end > first:
        madvise(<void*>first, end - first, MADV_HUGEPAGE)


cdef inline void* aligned_calloc(size_t count, size_t size, void** block) noexcept nogil:
    """count * size zeroed bytes (NULL when out of memory); free block[0] to release them. Like
    calloc, pages stay unallocated until written."""
    cdef size_t total = count * size
    cdef bint huge = total >= HUGE_FROM
    block[0] = calloc(total + (HUGE_PAGE if huge else CACHE_LINE), 1)
    if block[0] == NULL:
        return NULL
    if not huge:
        return <void*>_align_up(<uintptr_t>block[0], CACHE_LINE)
    cdef void* start = <void*>_align_up(<uintptr_t>block[0], HUGE_PAGE)
    advise_huge(start, total)
    return start

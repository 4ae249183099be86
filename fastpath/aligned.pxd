# Zeroed tables laid out for the core's random reads: table_calloc, table_realloc, table_free.
# - Cache-line aligned: glibc's large calloc blocks start 16 bytes into a page, so an array of
#   64-byte entries from plain calloc puts every entry across two cache lines.
# - Big ones (HUGE_FROM and up) on 2 MiB boundaries, advised to the kernel as transparent huge
#   pages: a table hit at random touches every page soon, and one TLB entry per 2 MiB instead of
#   per 4 KiB is what keeps a cold start and a million flows fast.
# - A big table the packet path writes a line at a time (conntrack, session affinity, the
#   counters) is PREALLOCATED, as a BPF hash map is unless told otherwise: a mapping of its own,
#   the advice given before anything touches it, every page allocated when the table is made,
#   unmapped when freed. No packet waits on a page fault, and no table is refused a huge page.
#   From malloc such a table fared worse twice over: once an engine was freed, glibc served the
#   next one's tables from the heap it left, pages faulted in 4 KiB that the advice no longer
#   changes; and its pages faulted in on the packet path (on a VM that hands freed memory back
#   to its host, at a host's fault each: fresh engines ran up to 1.5x slower, and unevenly).
# - A table load() writes WRITTEN_WHOLE (the maps' tables) comes from malloc: its pages fault in
#   as it is written, and the next load reuses them in place. Fresh mappings there made a load
#   of 100,000 Services 7 % slower on that VM.
# (Where THP is off the advice is a no-op; where populating is unknown, pages fault when used.)
# Each table keeps a header in the cache line before it: where its memory came from, and its size.
from libc.errno cimport ENOMEM, errno
from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

cdef extern from *:
    """
    #include <sys/mman.h>
    #include <unistd.h>
    #ifndef MADV_HUGEPAGE  /* not Linux: no transparent huge pages, the advice is a no-op */
    #define MADV_HUGEPAGE MADV_NORMAL
    #endif
    #ifndef MADV_POPULATE_WRITE
    #ifdef __linux__
    #define MADV_POPULATE_WRITE 23  /* Linux 5.14; older kernels refuse it, and pages fault when used */
    #else
    #define MADV_POPULATE_WRITE MADV_NORMAL
    #endif
    #endif
    #ifndef MAP_ANONYMOUS
    #define MAP_ANONYMOUS MAP_ANON
    #endif
    """
    int madvise(void* addr, size_t length, int advice) nogil
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset) nogil
    int munmap(void* addr, size_t length) nogil
    int MADV_HUGEPAGE, MADV_POPULATE_WRITE, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS
    void* MAP_FAILED
    long sysconf(int name) nogil
    int _SC_PHYS_PAGES, _SC_PAGESIZE

cdef enum:
    WRITTEN_WHOLE = 0               # table_calloc's `how`, see the top of this file
    PREALLOCATED = 1
    CACHE_LINE = 64
    HUGE_PAGE = 2 * 1024 * 1024
    HUGE_FROM = 4 * HUGE_PAGE


ctypedef struct TableHeader:        # in the cache line before a table
    void* base                      # what calloc or mmap returned
    size_t mapped                   # the mapping's length; 0: base is calloc's
    size_t size                     # the table's bytes


cdef inline uintptr_t _align_up(uintptr_t address, uintptr_t alignment) noexcept nogil:
    return (address + alignment - 1) & ~(alignment - 1)


cdef inline TableHeader* _header(void* table) noexcept nogil:
    return <TableHeader*>(<uintptr_t>table - CACHE_LINE)


cdef inline void* _mapped_table(size_t total) noexcept nogil:
    """A PREALLOCATED big table: its own mapping, huge pages asked for, every page allocated."""
    if total > <size_t>sysconf(_SC_PHYS_PAGES) * <size_t>sysconf(_SC_PAGESIZE):
        return NULL  # more than the machine has: refused here, not by the OOM killer later
    cdef size_t mapped = total + HUGE_PAGE + CACHE_LINE  # room for the header and the alignment
    cdef void* base = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if base == MAP_FAILED:
        return NULL
    cdef uintptr_t start = _align_up(<uintptr_t>base + CACHE_LINE, HUGE_PAGE)
    madvise(base, mapped, MADV_HUGEPAGE)
    if madvise(<void*>start, total, MADV_POPULATE_WRITE) != 0 and errno == ENOMEM:
        munmap(base, mapped)  # (any other refusal: a kernel without it, pages fault when used)
        return NULL
    cdef TableHeader* header = _header(<void*>start)
    header.base, header.mapped, header.size = base, mapped, total
    return <void*>start


cdef inline void* table_calloc(size_t count, size_t size, bint how) noexcept nogil:
    """count * size zeroed bytes, cache-line aligned (NULL when out of memory); table_free them.
    `how`: PREALLOCATED or WRITTEN_WHOLE (see the top of this file)."""
    if size and count > (<size_t>-1 - 2 * HUGE_PAGE) // size:
        return NULL
    cdef size_t total = count * size
    cdef bint big = total >= HUGE_FROM
    if big and how == PREALLOCATED:
        return _mapped_table(total)
    cdef void* base = calloc(total + (HUGE_PAGE if big else CACHE_LINE) + CACHE_LINE, 1)
    if base == NULL:
        return NULL
    cdef uintptr_t start = _align_up(<uintptr_t>base + CACHE_LINE, HUGE_PAGE if big else CACHE_LINE)
    if big:  # the whole huge pages inside it
        madvise(<void*>start, total & ~(<size_t>HUGE_PAGE - 1), MADV_HUGEPAGE)
    cdef TableHeader* header = _header(<void*>start)
    header.base, header.mapped, header.size = base, 0, total
    return <void*>start


cdef inline void table_free(void* table) noexcept nogil:
    """Free a table from table_calloc or table_realloc (NULL: nothing)."""
    if table == NULL:
        return
    cdef TableHeader* header = _header(table)
    if header.mapped:
        munmap(header.base, header.mapped)
    else:
        free(header.base)


cdef inline void* table_realloc(void* table, size_t count, size_t size, bint how) noexcept nogil:
    """The table resized to count * size bytes, its contents kept and any new bytes zeroed
    (NULL when out of memory, the table left as it was). A copy: a grown big table needs 2 MiB
    alignment, which moving the old one cannot promise."""
    cdef void* resized = table_calloc(count, size, how)
    if resized == NULL or table == NULL:
        return resized
    cdef size_t kept = _header(table).size
    memcpy(resized, table, kept if kept < count * size else count * size)
    table_free(table)
    return resized

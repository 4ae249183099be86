# Exact least-recently-used order and free slots for a fixed pool of entries (session
# affinity, fragments). The links live inside each table's own entries (at `links_offset`, every
# `stride` bytes), so a lookup that touches an entry touches its links in the same cache line.
from libc.stdint cimport uint8_t, uint32_t

cdef enum:
    LRU_NIL = 0xFFFFFFFF


ctypedef struct LruLinks:
    uint32_t prev                   # towards the least recently used end
    uint32_t next


ctypedef struct Lru:
    uint8_t* base                   # the table's entries
    size_t stride                   # sizeof one entry
    size_t links_offset             # offsetof(entry, its LruLinks)
    uint32_t capacity
    uint32_t count
    uint32_t never_used             # entries [never_used, capacity) were never handed out
    uint32_t free_list              # released entries, linked through links.next
    uint32_t oldest
    uint32_t newest


cdef inline void lru_init(Lru* lru, void* base, size_t stride, size_t links_offset,
                          uint32_t capacity) noexcept nogil:
    lru.base = <uint8_t*>base
    lru.stride = stride
    lru.links_offset = links_offset
    lru.capacity = capacity
    lru.count = 0
    lru.never_used = 0
    lru.free_list = LRU_NIL
    lru.oldest = LRU_NIL
    lru.newest = LRU_NIL


cdef inline LruLinks* lru_links(const Lru* lru, uint32_t index) noexcept nogil:
    return <LruLinks*>(lru.base + <size_t>index * lru.stride + lru.links_offset)


cdef inline void lru_unlink(Lru* lru, uint32_t index) noexcept nogil:
    cdef LruLinks* links = lru_links(lru, index)
    if links.prev != LRU_NIL:
        lru_links(lru, links.prev).next = links.next
    else:
        lru.oldest = links.next
    if links.next != LRU_NIL:
        lru_links(lru, links.next).prev = links.prev
    else:
        lru.newest = links.prev


cdef inline void lru_append(Lru* lru, uint32_t index) noexcept nogil:
    """Make the entry the most recently used (it must not be linked)."""
    cdef LruLinks* links = lru_links(lru, index)
    links.prev = lru.newest
    links.next = LRU_NIL
    if lru.newest != LRU_NIL:
        lru_links(lru, lru.newest).next = index
    else:
        lru.oldest = index
    lru.newest = index


cdef inline void lru_touch(Lru* lru, uint32_t index) noexcept nogil:
    if lru.newest != index:
        lru_unlink(lru, index)
        lru_append(lru, index)


cdef inline uint32_t lru_take(Lru* lru) noexcept nogil:
    """A free entry, made most recently used. The caller evicts first when the pool is full."""
    cdef uint32_t index
    if lru.free_list != LRU_NIL:
        index = lru.free_list
        lru.free_list = lru_links(lru, index).next
    else:
        index = lru.never_used
        lru.never_used += 1
    lru.count += 1
    lru_append(lru, index)
    return index


cdef inline void lru_release(Lru* lru, uint32_t index) noexcept nogil:
    """Give the entry back (the caller has removed it from its index)."""
    lru_unlink(lru, index)
    lru_links(lru, index).next = lru.free_list
    lru.free_list = index
    lru.count -= 1

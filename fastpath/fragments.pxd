# IP fragments: the first fragment of a datagram carries the ports, later ones do not. The
# verdict and addresses the first fragment got are remembered here, keyed by (source,
# destination, IP id, protocol) as received, so later fragments follow it. A fixed pool with
# exact least-recently-used eviction, like conntrack; IPv4 and IPv6 share it.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

from address cimport Addr, addr_eq
from hashing cimport fmix64
from lru cimport Lru, LruLinks, lru_init, lru_release, lru_take, lru_touch

cdef enum:
    FRAG_NIL = 0xFFFFFFFF
    FRAG_CAPACITY = 8192


ctypedef struct FragEntry:          # 96 bytes
    Addr saddr                      # key: as received
    Addr daddr
    uint32_t ip_id
    uint8_t proto
    uint8_t verdict                 # of the first fragment
    Addr new_saddr                  # the first fragment's addresses after its rewrite
    Addr new_daddr
    uint32_t service
    uint32_t backend
    uint8_t flags
    LruLinks lru
    uint32_t chain


ctypedef struct Fragments:
    FragEntry* entries
    uint32_t* buckets
    uint32_t bucket_mask
    Lru lru
    uint64_t tracked
    uint64_t evictions
    uint64_t followed
    uint64_t not_found


cdef inline int fragments_init(Fragments* f) noexcept nogil:
    cdef uint32_t i
    f.entries = <FragEntry*>calloc(FRAG_CAPACITY, sizeof(FragEntry))
    f.buckets = <uint32_t*>calloc(FRAG_CAPACITY, sizeof(uint32_t))
    if f.entries == NULL or f.buckets == NULL:
        fragments_free(f)
        return -1
    for i in range(FRAG_CAPACITY):
        f.buckets[i] = FRAG_NIL
    f.bucket_mask = FRAG_CAPACITY - 1
    lru_init(&f.lru, f.entries, sizeof(FragEntry),
             <size_t>(<uint8_t*>&f.entries[0].lru - <uint8_t*>f.entries), FRAG_CAPACITY)
    return 0


cdef inline void fragments_free(Fragments* f) noexcept nogil:
    free(f.entries)
    free(f.buckets)
    f.entries = NULL
    f.buckets = NULL


cdef inline uint32_t* fragments_bucket(Fragments* f, const Addr* saddr, const Addr* daddr,
                                       uint32_t ip_id, uint8_t proto) noexcept nogil:
    cdef uint64_t key = fmix64(saddr.lo ^ (saddr.hi * 0x9E3779B97F4A7C15ULL)) \
        ^ daddr.lo ^ (daddr.hi * 0xC2B2AE3D27D4EB4FULL) ^ ((<uint64_t>ip_id << 8) | proto)
    return &f.buckets[fmix64(key) & f.bucket_mask]


cdef inline uint32_t fragments_find(Fragments* f, const Addr* saddr, const Addr* daddr,
                                    uint32_t ip_id, uint8_t proto) noexcept nogil:
    cdef uint32_t index = fragments_bucket(f, saddr, daddr, ip_id, proto)[0]
    cdef FragEntry* e
    while index != FRAG_NIL:
        e = &f.entries[index]
        if addr_eq(&e.saddr, saddr) and addr_eq(&e.daddr, daddr) and e.ip_id == ip_id \
                and e.proto == proto:
            return index
        index = e.chain
    return FRAG_NIL


cdef inline void fragments_delete(Fragments* f, uint32_t index) noexcept nogil:
    cdef FragEntry* e = &f.entries[index]
    cdef uint32_t* link = fragments_bucket(f, &e.saddr, &e.daddr, e.ip_id, e.proto)
    while link[0] != FRAG_NIL:
        if link[0] == index:
            link[0] = e.chain
            break
        link = &f.entries[link[0]].chain
    lru_release(&f.lru, index)


cdef inline FragEntry* fragments_record(Fragments* f, const Addr* saddr, const Addr* daddr,
                                        uint32_t ip_id, uint8_t proto) noexcept nogil:
    """The entry for the key, new or overwritten, most recently used; the caller fills it."""
    cdef uint32_t index = fragments_find(f, saddr, daddr, ip_id, proto)
    cdef uint32_t* head
    f.tracked += 1
    if index != FRAG_NIL:
        lru_touch(&f.lru, index)
        return &f.entries[index]
    if f.lru.count == f.lru.capacity:
        f.evictions += 1
        fragments_delete(f, f.lru.oldest)
    index = lru_take(&f.lru)
    f.entries[index].saddr = saddr[0]
    f.entries[index].daddr = daddr[0]
    f.entries[index].ip_id = ip_id
    f.entries[index].proto = proto
    head = fragments_bucket(f, saddr, daddr, ip_id, proto)
    f.entries[index].chain = head[0]
    head[0] = index
    return &f.entries[index]

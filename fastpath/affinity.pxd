# ClientIP session affinity: (client address, service id) -> the backend it last used, with
# exact least-recently-used eviction (a pool of entries, one chained hash index, an Lru order).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

from address cimport Addr, addr_eq
from aligned cimport PREALLOCATED, table_calloc, table_free
from hashing cimport fmix64
from lru cimport LRU_NIL, Lru, LruLinks, lru_init, lru_release, lru_take, lru_touch

cdef enum:
    AFF_NIL = 0xFFFFFFFF


ctypedef struct AffinityEntry:      # 64 bytes
    uint64_t last_used_ns
    Addr client_addr
    Addr backend_addr
    uint32_t service
    uint16_t backend_port
    LruLinks lru
    uint32_t chain


ctypedef struct Affinity:
    AffinityEntry* entries          # NULL until a service with affinity is loaded; a table
                                    # (aligned.pxd)
    uint32_t* buckets
    uint32_t bucket_mask
    Lru lru
    uint64_t evictions
    uint64_t expired


cdef inline int affinity_init(Affinity* a, uint32_t capacity) noexcept nogil:
    cdef uint64_t nbuckets = 16, i
    while nbuckets < <uint64_t>capacity:
        nbuckets <<= 1
    a.entries = <AffinityEntry*>table_calloc(capacity, sizeof(AffinityEntry), PREALLOCATED)
    a.buckets = <uint32_t*>calloc(nbuckets, sizeof(uint32_t))
    if a.entries == NULL or a.buckets == NULL:
        affinity_free(a)
        return -1
    for i in range(nbuckets):
        a.buckets[i] = AFF_NIL
    a.bucket_mask = <uint32_t>(nbuckets - 1)
    lru_init(&a.lru, a.entries, sizeof(AffinityEntry),
             <size_t>(<uint8_t*>&a.entries[0].lru - <uint8_t*>a.entries), capacity)
    return 0


cdef inline void affinity_free(Affinity* a) noexcept nogil:
    table_free(a.entries)
    free(a.buckets)
    a.entries = NULL
    a.buckets = NULL


cdef inline uint32_t* affinity_bucket(Affinity* a, const Addr* client, uint32_t service) noexcept nogil:
    # An IPv4 client in the low 32 bits, the service id in the high 32: distinct keys stay apart.
    cdef uint64_t key = client.lo ^ (client.hi * 0x9E3779B97F4A7C15ULL) ^ (<uint64_t>service << 32)
    return &a.buckets[fmix64(key) & a.bucket_mask]


cdef inline uint32_t affinity_find(Affinity* a, const Addr* client, uint32_t service) noexcept nogil:
    cdef uint32_t index = affinity_bucket(a, client, service)[0]
    while index != AFF_NIL:
        if addr_eq(&a.entries[index].client_addr, client) and a.entries[index].service == service:
            return index
        index = a.entries[index].chain
    return AFF_NIL


cdef inline void affinity_chain_link(Affinity* a, uint32_t index) noexcept nogil:
    cdef uint32_t* head = affinity_bucket(a, &a.entries[index].client_addr, a.entries[index].service)
    a.entries[index].chain = head[0]
    head[0] = index


cdef inline void affinity_delete(Affinity* a, uint32_t index) noexcept nogil:
    cdef uint32_t* link = affinity_bucket(a, &a.entries[index].client_addr, a.entries[index].service)
    while link[0] != AFF_NIL:
        if link[0] == index:
            link[0] = a.entries[index].chain
            break
        link = &a.entries[link[0]].chain
    lru_release(&a.lru, index)


cdef inline void affinity_remap(Affinity* a, const uint32_t* new_ids, uint32_t n_ids) noexcept nogil:
    """Give every entry its new service id (ids change when maps are reloaded). Entries whose
    service is gone are dropped; when two entries end up with one key the most recently used
    stays. Rebuilds the index newest first, so the first entry to claim a key is the newest."""
    cdef uint64_t i
    cdef uint32_t index = a.lru.newest, older, new_id
    for i in range(<uint64_t>a.bucket_mask + 1):
        a.buckets[i] = AFF_NIL
    while index != LRU_NIL:
        older = a.entries[index].lru.prev
        new_id = new_ids[a.entries[index].service] if a.entries[index].service < n_ids else 0
        if new_id == 0 or affinity_find(a, &a.entries[index].client_addr, new_id) != AFF_NIL:
            lru_release(&a.lru, index)
        else:
            a.entries[index].service = new_id
            affinity_chain_link(a, index)
        index = older


cdef inline void affinity_record(Affinity* a, const Addr* client, uint32_t service,
                                 const Addr* backend_addr, uint16_t backend_port,
                                 uint64_t now) noexcept nogil:
    """Remember (or refresh) which backend the client uses for the service."""
    cdef uint32_t index = affinity_find(a, client, service)
    if index != AFF_NIL:
        lru_touch(&a.lru, index)
    else:
        if a.lru.count == a.lru.capacity:
            a.evictions += 1
            affinity_delete(a, a.lru.oldest)
        index = lru_take(&a.lru)
        a.entries[index].client_addr = client[0]
        a.entries[index].service = service
        affinity_chain_link(a, index)
    a.entries[index].backend_addr = backend_addr[0]
    a.entries[index].backend_port = backend_port
    a.entries[index].last_used_ns = now

# The frontend map: (address, port, protocol) -> frontend index, open addressing, linear probing.
# Addresses of both families (IPv4 as IPv4-mapped, see address.pxd); port 0 and protocol 0 key
# the address sets (ClusterIPs, every frontend address).
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

from address cimport Addr
from hashing cimport fmix64


ctypedef struct FrontendKey:
    Addr addr
    uint32_t port_proto   # port << 8 | proto


ctypedef struct FrontendMap:
    FrontendKey* keys
    uint32_t* values      # frontend index + 1; 0 marks an empty slot
    uint32_t mask


cdef inline FrontendKey frontend_key(const Addr* addr, uint16_t port, uint8_t proto) noexcept nogil:
    cdef FrontendKey key
    key.addr = addr[0]
    key.port_proto = (<uint32_t>port << 8) | proto
    return key


cdef inline uint32_t frontend_slot(const FrontendMap* m, const FrontendKey* key) noexcept nogil:
    # The port and protocol land in bits the address' low word leaves free for IPv4 (48-63).
    return <uint32_t>fmix64(key.addr.lo ^ (key.addr.hi * 0x9E3779B97F4A7C15ULL)
                            ^ (<uint64_t>key.port_proto << 40)) & m.mask


cdef inline bint frontend_key_eq(const FrontendKey* a, const FrontendKey* b) noexcept nogil:
    return a.addr.lo == b.addr.lo and a.addr.hi == b.addr.hi and a.port_proto == b.port_proto


cdef inline int frontend_map_init(FrontendMap* m, uint32_t count) noexcept nogil:
    """Size for a load factor of at most 1/2 (short probe runs). Returns -1 when out of memory."""
    cdef uint64_t size = 16
    while size < 2 * <uint64_t>count:
        size <<= 1
    m.keys = <FrontendKey*>calloc(size, sizeof(FrontendKey))
    m.values = <uint32_t*>calloc(size, sizeof(uint32_t))
    m.mask = <uint32_t>(size - 1)
    if m.keys == NULL or m.values == NULL:
        frontend_map_free(m)
        return -1
    return 0


cdef inline void frontend_map_free(FrontendMap* m) noexcept nogil:
    free(m.keys)
    free(m.values)
    m.keys = NULL
    m.values = NULL
    m.mask = 0


cdef inline bint frontend_map_put(FrontendMap* m, FrontendKey key, uint32_t index) noexcept nogil:
    """Insert key -> index; False if the key is already present (the first one wins)."""
    cdef uint32_t slot = frontend_slot(m, &key)
    while m.values[slot] != 0:
        if frontend_key_eq(&m.keys[slot], &key):
            return False
        slot = (slot + 1) & m.mask
    m.keys[slot] = key
    m.values[slot] = index + 1
    return True


cdef inline int64_t frontend_map_get(const FrontendMap* m, FrontendKey key) noexcept nogil:
    """The frontend index for key, or -1."""
    cdef uint32_t slot = frontend_slot(m, &key)
    while m.values[slot] != 0:
        if frontend_key_eq(&m.keys[slot], &key):
            return m.values[slot] - 1
        slot = (slot + 1) & m.mask
    return -1

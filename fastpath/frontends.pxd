# The frontend map: (address, port, protocol) -> frontend index, open addressing, linear probing.
# Addresses of both families (IPv4 as IPv4-mapped, see address.pxd); port 0 and protocol 0 key
# the address sets (ClusterIPs, every frontend address).
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from address cimport Addr
from aligned cimport WRITTEN_WHOLE, table_calloc, table_free
from hashing cimport fmix64


ctypedef struct FrontendKey:
    Addr addr
    uint32_t port_proto   # port << 8 | proto


ctypedef struct FrontendSlot:   # 24 bytes: a probe reads key and value from one place
    Addr addr
    uint32_t port_proto
    uint32_t value        # frontend index + 1; 0 marks an empty slot


ctypedef struct FrontendMap:
    FrontendSlot* slots
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


cdef inline bint frontend_slot_holds(const FrontendSlot* s, const FrontendKey* k) noexcept nogil:
    return s.addr.lo == k.addr.lo and s.addr.hi == k.addr.hi and s.port_proto == k.port_proto


cdef inline int frontend_map_init(FrontendMap* m, uint32_t count) noexcept nogil:
    """Size for a load factor of at most 1/2 (short probe runs). Returns -1 when out of memory."""
    cdef uint64_t size = 16
    while size < 2 * <uint64_t>count:
        size <<= 1
    m.slots = <FrontendSlot*>table_calloc(size, sizeof(FrontendSlot), WRITTEN_WHOLE)  # filled by load()
    m.mask = <uint32_t>(size - 1)
    if m.slots == NULL:
        return -1
    return 0


cdef inline void frontend_map_free(FrontendMap* m) noexcept nogil:
    table_free(m.slots)
    m.slots = NULL
    m.mask = 0


cdef inline bint frontend_map_put(FrontendMap* m, FrontendKey key, uint32_t index) noexcept nogil:
    """Insert key -> index; False if the key is already present (the first one wins)."""
    cdef uint32_t slot = frontend_slot(m, &key)
    while m.slots[slot].value != 0:
        if frontend_slot_holds(&m.slots[slot], &key):
            return False
        slot = (slot + 1) & m.mask
    m.slots[slot].addr = key.addr
    m.slots[slot].port_proto = key.port_proto
    m.slots[slot].value = index + 1
    return True


cdef inline int64_t frontend_map_get(const FrontendMap* m, FrontendKey key) noexcept nogil:
    """The frontend index for key, or -1."""
    cdef uint32_t slot = frontend_slot(m, &key)
    while m.slots[slot].value != 0:
        if frontend_slot_holds(&m.slots[slot], &key):
            return m.slots[slot].value - 1
        slot = (slot + 1) & m.mask
    return -1

# The frontend map: (address, port, protocol) -> frontend index, open addressing, linear probing.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

from hashing cimport fmix64


ctypedef struct FrontendMap:
    uint64_t* keys
    uint32_t* values      # frontend index + 1; 0 marks an empty slot
    uint32_t mask


cdef inline uint64_t frontend_key(uint32_t addr, uint16_t port, uint8_t proto) noexcept nogil:
    return (<uint64_t>addr << 32) | (<uint64_t>port << 16) | proto


cdef inline int frontend_map_init(FrontendMap* m, uint32_t count) noexcept nogil:
    """Size for a load factor of at most 1/2 (short probe runs). Returns -1 when out of memory."""
    cdef uint64_t size = 16
    while size < 2 * <uint64_t>count:
        size <<= 1
    m.keys = <uint64_t*>calloc(size, sizeof(uint64_t))
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


cdef inline bint frontend_map_put(FrontendMap* m, uint64_t key, uint32_t index) noexcept nogil:
    """Insert key -> index; False if the key is already present (the first one wins)."""
    cdef uint32_t slot = <uint32_t>fmix64(key) & m.mask
    while m.values[slot] != 0:
        if m.keys[slot] == key:
            return False
        slot = (slot + 1) & m.mask
    m.keys[slot] = key
    m.values[slot] = index + 1
    return True


cdef inline int64_t frontend_map_get(const FrontendMap* m, uint64_t key) noexcept nogil:
    """The frontend index for key, or -1."""
    cdef uint32_t slot = <uint32_t>fmix64(key) & m.mask
    while m.values[slot] != 0:
        if m.keys[slot] == key:
            return m.values[slot] - 1
        slot = (slot + 1) & m.mask
    return -1

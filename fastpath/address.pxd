# Addresses of both families as one 128-bit value: IPv6 as itself, IPv4 as the IPv4-mapped
# address ::ffff:a.b.c.d. The parser drops IPv6 packets carrying IPv4-mapped addresses (they are
# never on the wire), so the mapped range names IPv4 alone and one compare covers the family.
#
# Policy lookups (frontends, prefixes, node addresses, affinity, fragments) use Addr. Conntrack,
# the per-packet hot path, keeps 32-bit fields: the IPv4 address, or fold() of an IPv6 one with
# the whole IPv6 tuple beside the entry.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from checksum cimport csum_delta32

cdef enum:
    V4_MAPPED_HI32 = 0xFFFF         # bits 32-63 of Addr.lo for an IPv4 address


ctypedef struct Addr:
    uint64_t hi                     # bytes 0-7, big-endian (IPv4: 0)
    uint64_t lo                     # bytes 8-15 (IPv4: 0x0000FFFF_aabbccdd)


ctypedef struct Prefix:
    Addr network                    # already masked
    Addr mask
    bint ipv4                       # an IPv6 prefix such as ::/0 must not hold IPv4 addresses


cdef inline Addr addr_v4(uint32_t address) noexcept nogil:
    cdef Addr a
    a.hi = 0
    a.lo = (<uint64_t>V4_MAPPED_HI32 << 32) | address
    return a


cdef inline bint addr_is_v4_mapped(const Addr* a) noexcept nogil:
    return a.hi == 0 and (a.lo >> 32) == V4_MAPPED_HI32


cdef inline bint addr_eq(const Addr* a, const Addr* b) noexcept nogil:
    return a.hi == b.hi and a.lo == b.lo


cdef inline uint32_t fold6(const Addr* a) noexcept nogil:
    """The XOR of an IPv6 address' four 32-bit words: its stand-in in 32-bit hashes and fields."""
    return <uint32_t>(a.hi ^ (a.hi >> 32) ^ a.lo ^ (a.lo >> 32))


cdef inline uint64_t load64(const uint8_t* p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef inline void store64(uint8_t* p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(7, -1, -1):
        p[i] = <uint8_t>v
        v >>= 8


cdef inline Addr load_addr6(const uint8_t* p) noexcept nogil:
    cdef Addr a
    a.hi = load64(p)
    a.lo = load64(p + 8)
    return a


cdef inline void store_addr6(uint8_t* p, const Addr* a) noexcept nogil:
    store64(p, a.hi)
    store64(p + 8, a.lo)


cdef inline bint in_prefix(const Addr* a, const Prefix* p) noexcept nogil:
    return ((a.hi & p.mask.hi) == p.network.hi and (a.lo & p.mask.lo) == p.network.lo
            and addr_is_v4_mapped(a) == p.ipv4)


cdef inline bint in_prefixes(const Addr* a, const Prefix* prefixes, uint32_t n) noexcept nogil:
    cdef uint32_t i
    for i in range(n):
        if in_prefix(a, &prefixes[i]):
            return True
    return False


cdef inline uint32_t csum_delta_addr6(const Addr* old, const Addr* new) noexcept nogil:
    """The checksum words to add for replacing one IPv6 address by another (8 words each)."""
    return (csum_delta32(<uint32_t>(old.hi >> 32), <uint32_t>(new.hi >> 32))
            + csum_delta32(<uint32_t>old.hi, <uint32_t>new.hi)
            + csum_delta32(<uint32_t>(old.lo >> 32), <uint32_t>(new.lo >> 32))
            + csum_delta32(<uint32_t>old.lo, <uint32_t>new.lo))

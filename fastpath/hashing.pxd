# Flow hashing: a 64-bit mix per 5-tuple for backend selection (flow_hash), a cheaper one for
# conntrack buckets (bucket_hash).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef inline uint64_t fmix64(uint64_t x) noexcept nogil:
    # MurmurHash3's finaliser: every input bit affects every output bit.
    x ^= x >> 33
    x *= 0xFF51AFD7ED558CCDULL
    x ^= x >> 33
    x *= 0xC4CEB9FE1A85EC53ULL
    x ^= x >> 33
    return x


cdef inline uint64_t flow_hash(uint32_t saddr, uint32_t daddr, uint16_t sport, uint16_t dport,
                               uint8_t proto) noexcept nogil:
    cdef uint64_t ports = (<uint64_t>sport << 24) | (<uint64_t>dport << 8) | proto
    return fmix64(((<uint64_t>saddr << 32) | daddr) ^ fmix64(ports))


cdef inline uint32_t scale_hash(uint64_t h, uint32_t n) noexcept nogil:
    """Map a hash onto [0, n) without a division (multiply-shift range reduction)."""
    return <uint32_t>(((h & 0xFFFFFFFFULL) * n) >> 32)


cdef inline uint64_t bucket_hash(uint32_t saddr, uint32_t daddr, uint16_t sport, uint16_t dport,
                                 uint8_t proto) noexcept nogil:
    """The conntrack index's hash of a 5-tuple: one multiply-xorshift where flow_hash has two
    finalisers, for every packet's lookup. It never selects a backend (flow_hash does), so
    its only job is spreading tuples over buckets: the high half picks a bucket's slot, bits
    16-31 one of its heads."""
    cdef uint64_t x = (((<uint64_t>saddr << 32) | daddr)
                       ^ (((<uint64_t>sport << 24) | (<uint64_t>dport << 8) | proto)
                          * 0x9E3779B97F4A7C15ULL))
    x *= 0xD6E8FEB86659FD93ULL
    return x ^ (x >> 32)

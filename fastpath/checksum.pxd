# RFC 1624 incremental checksum updates (HC' = ~(~HC + ~m + m')), one 16-bit word at a time.
from libc.stdint cimport uint16_t, uint32_t


cdef inline uint16_t csum_replace16(uint16_t check, uint16_t old, uint16_t new) noexcept nogil:
    cdef uint32_t s = <uint32_t>(<uint16_t>~check) + <uint16_t>~old + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>~s


cdef inline uint16_t csum_replace32(uint16_t check, uint32_t old, uint32_t new) noexcept nogil:
    check = csum_replace16(check, <uint16_t>(old >> 16), <uint16_t>(new >> 16))
    return csum_replace16(check, <uint16_t>old, <uint16_t>new)

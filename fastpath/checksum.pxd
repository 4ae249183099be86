# RFC 1624 incremental checksum updates: HC' = ~(~HC + ~m + m').
#
# The one's complement sum is associative, so the words of every changed field are summed into
# one delta and folded once: the result is bit for bit the one of updating one word at a time
# (both are the unique non-zero 16-bit value congruent to the sum modulo 0xFFFF, or 0 for an
# all-zero sum), at a fraction of the instructions.
from libc.stdint cimport uint16_t, uint32_t


cdef inline uint32_t csum_delta32(uint32_t old, uint32_t new) noexcept nogil:
    """The words to add for replacing `old` by `new` (a 32-bit field), unfolded."""
    return ((~old >> 16) & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF)


cdef inline uint32_t csum_delta16(uint16_t old, uint16_t new) noexcept nogil:
    return <uint16_t>~old + <uint32_t>new


cdef inline uint16_t csum_apply(uint16_t check, uint32_t delta) noexcept nogil:
    """The checksum after adding `delta` (at most 2**31 - 0x10000) to what it covers."""
    cdef uint32_t s = <uint32_t>(<uint16_t>~check) + delta
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>~s

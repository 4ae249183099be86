# RFC 1624 incremental checksum updates (HC' = ~(~HC + ~m + m')), one 16-bit word at a time.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from wire cimport load16, store16


cdef inline uint16_t csum_replace16(uint16_t check, uint16_t old, uint16_t new) noexcept nogil:
    cdef uint32_t s = <uint32_t>(<uint16_t>~check) + <uint16_t>~old + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>~s


cdef inline uint16_t csum_replace32(uint16_t check, uint32_t old, uint32_t new) noexcept nogil:
    check = csum_replace16(check, <uint16_t>(old >> 16), <uint16_t>(new >> 16))
    return csum_replace16(check, <uint16_t>old, <uint16_t>new)


cdef inline void rewrite_checksums(uint8_t* l3, uint8_t* l4, uint8_t proto, uint32_t old_addr,
                                   uint32_t new_addr, uint16_t old_port,
                                   uint16_t new_port) noexcept nogil:
    """Fix the IPv4 header checksum and the TCP/UDP checksum for one address and one port change."""
    cdef uint16_t check
    store16(l3 + 10, csum_replace32(load16(l3 + 10), old_addr, new_addr))
    if proto == 6:
        check = csum_replace32(load16(l4 + 16), old_addr, new_addr)
        store16(l4 + 16, csum_replace16(check, old_port, new_port))
    else:
        check = load16(l4 + 6)
        if check == 0:           # UDP over IPv4 without a checksum stays without one
            return
        check = csum_replace32(check, old_addr, new_addr)
        check = csum_replace16(check, old_port, new_port)
        store16(l4 + 6, 0xFFFF if check == 0 else check)

# Address translation: rewrite a packet's destination and/or source address and port, with the
# IPv4 header and TCP/UDP checksums updated incrementally (IPv6 has no header checksum; its
# addresses enter the transport checksum through the pseudo-header, 8 words each).
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from address cimport Addr, csum_delta_addr6, store_addr6
from checksum cimport csum_apply, csum_delta16, csum_delta32
from wire cimport IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, Packet, load16, load32, store16, store32

cdef extern from "crc32c.h":
    uint32_t fp_crc32c_skipping(const uint8_t* data, size_t length, size_t skip) nogil


cdef inline void translate(Packet* pkt, bint set_dst, uint32_t dst_addr, uint16_t dst_port,
                           bint set_src, uint32_t src_addr, uint16_t src_port) noexcept nogil:
    cdef uint32_t address_delta = 0, port_delta = 0
    if set_dst:
        address_delta += csum_delta32(pkt.daddr, dst_addr)
        port_delta += csum_delta16(pkt.dport, dst_port)
        store32(pkt.l3 + 16, dst_addr)
        store16(pkt.l4 + 2, dst_port)
    if set_src:
        address_delta += csum_delta32(pkt.saddr, src_addr)
        port_delta += csum_delta16(pkt.sport, src_port)
        store32(pkt.l3 + 12, src_addr)
        store16(pkt.l4, src_port)
    store16(pkt.l3 + 10, csum_apply(load16(pkt.l3 + 10), address_delta))
    update_transport_checksum(pkt, address_delta + port_delta)


cdef inline void translate6(Packet* pkt, bint set_dst, const Addr* dst_addr, uint16_t dst_port,
                            bint set_src, const Addr* src_addr, uint16_t src_port) noexcept nogil:
    """translate() for IPv6."""
    update_transport_checksum(pkt, rewrite_ends6(pkt, set_dst, dst_addr, dst_port,
                                                 set_src, src_addr, src_port))


cdef inline uint32_t rewrite_ends6(Packet* pkt, bint set_dst, const Addr* dst_addr,
                                   uint16_t dst_port, bint set_src, const Addr* src_addr,
                                   uint16_t src_port) noexcept nogil:
    """Set an IPv6 packet's destination and/or source address and port; returns the words they
    add to a checksum covering them (a transport checksum's pseudo-header and ports)."""
    cdef uint32_t delta = 0
    if set_dst:
        delta += csum_delta_addr6(&pkt.dst6, dst_addr) + csum_delta16(pkt.dport, dst_port)
        store_addr6(pkt.l3 + 24, dst_addr)
        store16(pkt.l4 + 2, dst_port)
    if set_src:
        delta += csum_delta_addr6(&pkt.src6, src_addr) + csum_delta16(pkt.sport, src_port)
        store_addr6(pkt.l3 + 8, src_addr)
        store16(pkt.l4, src_port)
    return delta


cdef inline void update_transport_checksum(Packet* pkt, uint32_t delta) noexcept nogil:
    """Fix the TCP/UDP checksum for `delta` (changed pseudo-header and port words), or
    recompute an SCTP CRC."""
    cdef uint32_t crc
    if pkt.proto == IPPROTO_SCTP:
        # SCTP's CRC32c covers no pseudo-header, only the SCTP packet: recompute it in full,
        # which needs all of it (a snaplen-cut packet keeps its old CRC).
        if pkt.complete:
            crc = fp_crc32c_skipping(pkt.l4, pkt.l4_length, 8)
            pkt.l4[8] = <uint8_t>crc
            pkt.l4[9] = <uint8_t>(crc >> 8)
            pkt.l4[10] = <uint8_t>(crc >> 16)
            pkt.l4[11] = <uint8_t>(crc >> 24)
        return
    # TCP/UDP checksums cover the addresses through the pseudo-header, and the ports.
    cdef uint8_t* l4_check_at = pkt.l4 + (6 if pkt.proto == IPPROTO_UDP else 16)
    cdef uint16_t l4_check = load16(l4_check_at)
    if pkt.proto == IPPROTO_UDP:
        if l4_check == 0:
            return              # UDP over IPv4 without a checksum stays without one
        l4_check = csum_apply(l4_check, delta)
        store16(l4_check_at, 0xFFFF if l4_check == 0 else l4_check)
    else:
        store16(l4_check_at, csum_apply(l4_check, delta))


cdef inline void rewrite_addresses(uint8_t* l3, uint32_t new_saddr, uint32_t new_daddr) noexcept nogil:
    """Set both IPv4 addresses (destination first, then source) and fix the header checksum."""
    cdef uint32_t delta = csum_delta32(load32(l3 + 16), new_daddr) + csum_delta32(load32(l3 + 12), new_saddr)
    store32(l3 + 16, new_daddr)
    store32(l3 + 12, new_saddr)
    store16(l3 + 10, csum_apply(load16(l3 + 10), delta))


cdef inline void rewrite_addresses6(uint8_t* l3, const Addr* new_saddr, const Addr* new_daddr) noexcept nogil:
    """Set both IPv6 addresses (destination first, then source); there is no header checksum."""
    store_addr6(l3 + 24, new_daddr)
    store_addr6(l3 + 8, new_saddr)


cdef inline uint32_t replace_checksum(uint8_t* at, uint16_t new) noexcept nogil:
    """Store a new checksum value; returns the delta it makes to a checksum covering it."""
    cdef uint16_t old = load16(at)
    store16(at, new)
    return csum_delta16(old, new)


cdef inline void translate_icmp_error(Packet* outer, Packet* quoted,
                                      bint set_qdst, uint32_t qd_addr, uint16_t qd_port,
                                      bint set_qsrc, uint32_t qs_addr, uint16_t qs_port,
                                      bint set_outer_src, uint32_t outer_src,
                                      bint set_outer_dst, uint32_t outer_dst) noexcept nogil:
    """Translate an ICMP error and the packet it quotes, every checksum updated incrementally.

    The ICMP checksum covers the quote byte for byte (no pseudo-header), so every 16-bit word
    changed inside it (addresses, ports, the quoted checksums) goes into its delta."""
    cdef uint32_t address_delta = 0, port_delta = 0, d
    if set_qdst:
        d = csum_delta32(quoted.daddr, qd_addr)
        address_delta += d
        port_delta += csum_delta16(quoted.dport, qd_port)
        store32(quoted.l3 + 16, qd_addr)
        store16(quoted.l4 + 2, qd_port)
    if set_qsrc:
        address_delta += csum_delta32(quoted.saddr, qs_addr)
        port_delta += csum_delta16(quoted.sport, qs_port)
        store32(quoted.l3 + 12, qs_addr)
        store16(quoted.l4, qs_port)
    cdef uint32_t icmp_delta = address_delta + port_delta
    icmp_delta += replace_checksum(quoted.l3 + 10, csum_apply(load16(quoted.l3 + 10), address_delta))
    icmp_delta += update_quoted_transport_checksum(quoted, address_delta + port_delta)
    # The ICMP delta may exceed what csum_apply takes at once: fold it first.
    icmp_delta = (icmp_delta & 0xFFFF) + (icmp_delta >> 16)
    store16(outer.l4 + 2, csum_apply(load16(outer.l4 + 2), icmp_delta))
    cdef uint32_t outer_delta = 0
    if set_outer_dst:
        outer_delta += csum_delta32(outer.daddr, outer_dst)
        store32(outer.l3 + 16, outer_dst)
    if set_outer_src:
        outer_delta += csum_delta32(outer.saddr, outer_src)
        store32(outer.l3 + 12, outer_src)
    store16(outer.l3 + 10, csum_apply(load16(outer.l3 + 10), outer_delta))


cdef inline uint32_t update_quoted_transport_checksum(Packet* quoted, uint32_t delta) noexcept nogil:
    """Fix a quoted TCP/UDP checksum when captured; returns the delta that makes to the ICMP
    checksum. (A quoted SCTP CRC covers the whole original packet: a quote cannot fix it.)"""
    cdef uint16_t check
    if quoted.proto == IPPROTO_TCP and quoted.l4_captured >= 18:
        check = csum_apply(load16(quoted.l4 + 16), delta)
        return replace_checksum(quoted.l4 + 16, check)
    if quoted.proto == IPPROTO_UDP and quoted.l4_captured >= 8 and load16(quoted.l4 + 6) != 0:
        check = csum_apply(load16(quoted.l4 + 6), delta)
        return replace_checksum(quoted.l4 + 6, 0xFFFF if check == 0 else check)
    return 0


cdef inline void translate_icmp6_error(Packet* outer, Packet* quoted,
                                       bint set_qdst, const Addr* qd_addr, uint16_t qd_port,
                                       bint set_qsrc, const Addr* qs_addr, uint16_t qs_port,
                                       bint set_outer_src, const Addr* outer_src,
                                       bint set_outer_dst, const Addr* outer_dst) noexcept nogil:
    """translate_icmp_error() for ICMPv6: no IP header checksums, and the ICMPv6 checksum also
    covers the outer addresses (its pseudo-header)."""
    cdef uint32_t quote_delta = rewrite_ends6(quoted, set_qdst, qd_addr, qd_port,
                                              set_qsrc, qs_addr, qs_port)
    cdef uint32_t icmp_delta
    icmp_delta = quote_delta + update_quoted_transport_checksum(quoted, quote_delta)
    if set_outer_dst:
        icmp_delta += csum_delta_addr6(&outer.dst6, outer_dst)
        store_addr6(outer.l3 + 24, outer_dst)
    if set_outer_src:
        icmp_delta += csum_delta_addr6(&outer.src6, outer_src)
        store_addr6(outer.l3 + 8, outer_src)
    icmp_delta = (icmp_delta & 0xFFFF) + (icmp_delta >> 16)
    store16(outer.l4 + 2, csum_apply(load16(outer.l4 + 2), icmp_delta))

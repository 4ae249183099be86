# Address translation: rewrite a packet's destination and/or source address and port, with the
# IPv4 header and TCP/UDP checksums updated incrementally.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from checksum cimport csum_apply, csum_delta16, csum_delta32
from wire cimport IPPROTO_SCTP, IPPROTO_UDP, Packet, load16, store16, store32

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
        l4_check = csum_apply(l4_check, address_delta + port_delta)
        store16(l4_check_at, 0xFFFF if l4_check == 0 else l4_check)
    else:
        store16(l4_check_at, csum_apply(l4_check, address_delta + port_delta))

# Address translation: rewrite a packet's destination and/or source address and port, with the
# IPv4 header and TCP/UDP checksums updated incrementally (destination first, then source).
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from checksum cimport csum_replace16, csum_replace32
from wire cimport IPPROTO_UDP, Packet, load16, store16, store32


cdef inline void translate(Packet* pkt, bint set_dst, uint32_t dst_addr, uint16_t dst_port,
                           bint set_src, uint32_t src_addr, uint16_t src_port) noexcept nogil:
    cdef uint16_t ip_check = load16(pkt.l3 + 10)
    cdef uint8_t* l4_check_at = pkt.l4 + (6 if pkt.proto == IPPROTO_UDP else 16)
    cdef uint16_t l4_check = load16(l4_check_at)
    # UDP over IPv4 without a checksum (0) stays without one.
    cdef bint l4_checked = pkt.proto != IPPROTO_UDP or l4_check != 0
    if set_dst:
        ip_check = csum_replace32(ip_check, pkt.daddr, dst_addr)
        l4_check = csum_replace32(l4_check, pkt.daddr, dst_addr)
        l4_check = csum_replace16(l4_check, pkt.dport, dst_port)
        store32(pkt.l3 + 16, dst_addr)
        store16(pkt.l4 + 2, dst_port)
    if set_src:
        ip_check = csum_replace32(ip_check, pkt.saddr, src_addr)
        l4_check = csum_replace32(l4_check, pkt.saddr, src_addr)
        l4_check = csum_replace16(l4_check, pkt.sport, src_port)
        store32(pkt.l3 + 12, src_addr)
        store16(pkt.l4, src_port)
    store16(pkt.l3 + 10, ip_check)
    if l4_checked:
        if pkt.proto == IPPROTO_UDP and l4_check == 0:
            l4_check = 0xFFFF       # a computed 0 is sent as all ones in UDP
        store16(l4_check_at, l4_check)

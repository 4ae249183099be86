# Address translation: DNAT towards the backend, reverse NAT of replies back to the frontend.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from checksum cimport rewrite_checksums
from wire cimport Packet, store16, store32


cdef inline void dnat(Packet* pkt, uint32_t backend_addr, uint16_t backend_port) noexcept nogil:
    """client -> frontend becomes client -> backend."""
    rewrite_checksums(pkt.l3, pkt.l4, pkt.proto, pkt.daddr, backend_addr, pkt.dport, backend_port)
    store32(pkt.l3 + 16, backend_addr)
    store16(pkt.l4 + 2, backend_port)


cdef inline void reverse_nat(Packet* pkt, uint32_t frontend_addr,
                             uint16_t frontend_port) noexcept nogil:
    """backend -> client becomes frontend -> client, so the client sees the address it used."""
    rewrite_checksums(pkt.l3, pkt.l4, pkt.proto, pkt.saddr, frontend_addr, pkt.sport, frontend_port)
    store32(pkt.l3 + 12, frontend_addr)
    store16(pkt.l4, frontend_port)

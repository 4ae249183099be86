# Wire formats: big-endian loads/stores and the packet parser shared by every engine path.
# Everything here is inline, nogil and bounds-checked against the captured length by hand:
# the parser is the only code that decides which bytes of a packet may be touched.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

# Reason numbers (mirror fastpath.verdicts.Reason; tests/test_core.py checks they agree).
cdef enum:
    PASS_NOT_IP = 0
    PASS_NO_SERVICE = 1
    PASS_UNSUPPORTED = 2
    PASS_UNKNOWN_LINK = 3
    NEW_FLOW = 4
    CT_ESTABLISHED = 5
    CT_REPLY = 6
    DROP_NO_LOCAL_ENDPOINT = 7
    DROP_TRUNCATED = 8
    DROP_BAD_IP_HEADER = 9
    DROP_BAD_L4_HEADER = 10
    REJECT_NO_ENDPOINT = 11
    REJECT_UNKNOWN_PORT = 12
    DROP_SOURCE_RANGE = 13
    REASON_COUNT = 14
    PARSED = 255          # not a reason: the packet is IPv4 TCP/UDP and fully parsed

cdef enum:
    VERDICT_PASS = 0
    VERDICT_DNAT = 1
    VERDICT_REVNAT = 2
    VERDICT_DROP = 3
    VERDICT_REJECT = 4
    VERDICT_COUNT = 5

cdef enum:
    LINKTYPE_NULL = 0
    LINKTYPE_ETHERNET = 1
    LINKTYPE_RAW = 101
    LINKTYPE_LINUX_SLL = 113
    LINKTYPE_IPV4 = 228
    LINKTYPE_LINUX_SLL2 = 276

cdef enum:
    ETH_P_IP = 0x0800
    ETH_P_IPV6 = 0x86DD
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IPPROTO_SCTP = 132
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_ACK = 0x10


ctypedef struct Packet:
    uint8_t* l3          # IPv4 header
    uint8_t* l4          # TCP/UDP/SCTP header (at least 20/8/12 bytes captured)
    uint32_t l4_length   # the whole L4 packet (IP total length - header length)
    bint complete        # all of it is captured (an SCTP CRC can be recomputed)
    uint32_t saddr
    uint32_t daddr
    uint16_t sport
    uint16_t dport
    uint8_t proto
    uint8_t tcp_flags


cdef inline uint16_t load16(const uint8_t* p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])


cdef inline uint32_t load32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void store16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline void store32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline int l3_protocol_of_link(const uint8_t* p, uint32_t caplen, int linktype,
                                     uint32_t* l3_offset) noexcept nogil:
    """The ethertype of the L3 payload (0 when not IP), or a negative reason; sets *l3_offset."""
    cdef uint32_t off, family_le, family_be
    cdef uint16_t ethertype
    if linktype == LINKTYPE_ETHERNET:
        if caplen < 14:
            return -DROP_TRUNCATED
        ethertype = load16(p + 12)
        off = 14
        # 802.1Q, 802.1ad (QinQ) and the legacy 0x9100 tag: skip each 4-byte tag.
        while ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100:
            if off + 4 > caplen:
                return -DROP_TRUNCATED
            ethertype = load16(p + off + 2)
            off += 4
        l3_offset[0] = off
        return ethertype
    if linktype == LINKTYPE_RAW or linktype == LINKTYPE_IPV4:
        if caplen < 1:
            return -DROP_TRUNCATED
        l3_offset[0] = 0
        if p[0] >> 4 == 4:
            return ETH_P_IP
        if p[0] >> 4 == 6:
            return ETH_P_IPV6
        return 0
    if linktype == LINKTYPE_LINUX_SLL:
        if caplen < 16:
            return -DROP_TRUNCATED
        l3_offset[0] = 16
        return load16(p + 14)
    if linktype == LINKTYPE_LINUX_SLL2:
        if caplen < 20:
            return -DROP_TRUNCATED
        l3_offset[0] = 20
        return load16(p)
    if linktype == LINKTYPE_NULL:
        if caplen < 4:
            return -DROP_TRUNCATED
        l3_offset[0] = 4
        # The family is in the capturing host's byte order: accept either.
        family_be = load32(p)
        family_le = (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]
        if family_be == 2 or family_le == 2:
            return ETH_P_IP
        if (family_be == 24 or family_be == 28 or family_be == 30 or
                family_le == 24 or family_le == 28 or family_le == 30):
            return ETH_P_IPV6
        return 0
    return -PASS_UNKNOWN_LINK


cdef inline int parse_packet(uint8_t* p, uint32_t caplen, int linktype, Packet* pkt) noexcept nogil:
    """Parse up to the L4 header. Returns PARSED, or the reason the packet stops here."""
    cdef uint32_t l3_off = 0, l3_len, ihl, total_len, l4_off, l4_end, l4_len
    cdef int ethertype = l3_protocol_of_link(p, caplen, linktype, &l3_off)
    if ethertype < 0:
        return -ethertype
    if ethertype == ETH_P_IPV6:
        return PASS_UNSUPPORTED
    if ethertype != ETH_P_IP:
        return PASS_NOT_IP
    l3_len = caplen - l3_off
    if l3_len < 20:
        return DROP_TRUNCATED
    cdef uint8_t* ip = p + l3_off
    if ip[0] >> 4 != 4 or (ip[0] & 0x0F) < 5:
        return DROP_BAD_IP_HEADER
    ihl = (ip[0] & 0x0F) * 4
    if ihl > l3_len:
        return DROP_TRUNCATED
    total_len = load16(ip + 2)
    if total_len < ihl:
        return DROP_BAD_IP_HEADER
    if load16(ip + 6) & 0x3FFF:       # MF flag or a fragment offset
        return PASS_UNSUPPORTED
    pkt.proto = ip[9]
    if pkt.proto != IPPROTO_TCP and pkt.proto != IPPROTO_UDP and pkt.proto != IPPROTO_SCTP:
        return PASS_UNSUPPORTED
    # A total length beyond the captured bytes is a snaplen cut: clip to what was captured.
    l4_end = total_len if total_len < l3_len else l3_len
    l4_len = l4_end - ihl
    pkt.l3 = ip
    pkt.l4 = ip + ihl
    pkt.l4_length = total_len - ihl
    pkt.complete = total_len <= l3_len
    if pkt.proto == IPPROTO_TCP:
        if l4_len < 20:
            return DROP_TRUNCATED
        if (pkt.l4[12] >> 4) < 5 or (pkt.l4[12] >> 4) * 4u > total_len - ihl:
            return DROP_BAD_L4_HEADER
        pkt.tcp_flags = pkt.l4[13]
    elif pkt.proto == IPPROTO_UDP:
        if l4_len < 8:
            return DROP_TRUNCATED
        if load16(pkt.l4 + 4) < 8:
            return DROP_BAD_L4_HEADER
        pkt.tcp_flags = 0
    else:
        if l4_len < 12:
            return DROP_TRUNCATED
        pkt.tcp_flags = 0
    pkt.saddr = load32(ip + 12)
    pkt.daddr = load32(ip + 16)
    pkt.sport = load16(pkt.l4)
    pkt.dport = load16(pkt.l4 + 2)
    return PARSED

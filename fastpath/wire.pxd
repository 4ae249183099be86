# Wire formats: big-endian loads/stores and the packet parser shared by every engine path.
# Everything here is inline, nogil and bounds-checked against the captured length by hand:
# the parser is the only code that decides which bytes of a packet may be touched.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from address cimport Addr, addr_is_v4_mapped, addr_v4, fold6, load_addr6

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
    ICMP_ERROR_FORWARD = 14
    ICMP_ERROR_REPLY = 15
    FRAG_DNAT = 16
    FRAG_REVNAT = 17
    FRAG_DROP = 18
    DROP_FRAG_NOT_FOUND = 19
    PASS_FRAGMENT = 20
    DROP_FLOW_RATE = 21
    DROP_UNALLOCATED_SERVICE_IP = 22
    REASON_COUNT = 23
    # Not reasons: what the parser found, for the engine to go on with.
    PARSED = 255            # IPv4 TCP/UDP/SCTP, parsed up to the ports
    PARSED_ICMP_ERROR = 254 # an ICMP error: parse_quoted() reads the packet it quotes
    PARSED_FRAGMENT = 253   # a later fragment: only the IP header (and fragment header) known

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
    IPPROTO_ICMP = 1
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IPPROTO_SCTP = 132
    IPPROTO_ICMPV6 = 58
    MAX_EXTENSION_HEADERS = 8
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_ACK = 0x10


ctypedef struct Packet:
    uint8_t* l3          # IP header
    uint8_t* l4          # TCP/UDP/SCTP header (at least 20/8/12 bytes captured), ICMP header
    uint32_t l4_length   # the whole L4 packet (up to the datagram's end)
    uint32_t l4_captured # how much of it is captured
    bint complete        # all of it is captured (an SCTP CRC can be recomputed)
    bint first_fragment  # offset 0 with more fragments to come
    bint ipv6
    uint32_t ip_id       # fragment key: IPv4 id or IPv6 fragment header id,
    uint8_t frag_proto   # and the IPv4 protocol or the fragment header's next header
    uint32_t saddr       # IPv4 addresses; for IPv6, fold6() of the addresses below
    uint32_t daddr
    Addr src6            # IPv6 only
    Addr dst6
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


cdef inline int parse_ipv4(uint8_t* ip, uint32_t l3_len, Packet* pkt) noexcept nogil:
    """Check an IPv4 header with l3_len bytes captured from it on. Returns PARSED (header only:
    pkt.l3, addresses, proto, id, L4 extent filled), PARSED_FRAGMENT, or a drop reason."""
    cdef uint32_t ihl, total_len, fragment
    if l3_len < 20:
        return DROP_TRUNCATED
    if ip[0] >> 4 != 4 or (ip[0] & 0x0F) < 5:
        return DROP_BAD_IP_HEADER
    ihl = (ip[0] & 0x0F) * 4
    if ihl > l3_len:
        return DROP_TRUNCATED
    total_len = load16(ip + 2)
    if total_len < ihl:
        return DROP_BAD_IP_HEADER
    pkt.l3 = ip
    pkt.l4 = ip + ihl
    pkt.ipv6 = False
    pkt.proto = ip[9]
    pkt.frag_proto = ip[9]
    pkt.ip_id = load16(ip + 4)
    pkt.saddr = load32(ip + 12)
    pkt.daddr = load32(ip + 16)
    pkt.l4_length = total_len - ihl
    # A total length beyond the captured bytes is a snaplen cut: clip to what was captured.
    pkt.l4_captured = (total_len if total_len < l3_len else l3_len) - ihl
    pkt.complete = total_len <= l3_len
    fragment = load16(ip + 6)
    pkt.first_fragment = (fragment & 0x2000) != 0
    if fragment & 0x1FFF:           # a later fragment: no transport header in it
        return PARSED_FRAGMENT
    return PARSED


cdef inline bint is_extension_header(uint8_t nh) noexcept nogil:
    # Hop-by-hop, routing, fragment, AH, destination options.
    return nh == 0 or nh == 43 or nh == 44 or nh == 51 or nh == 60


cdef inline int parse_ipv6(uint8_t* ip, uint32_t l3_len, Packet* pkt) noexcept nogil:
    """Check an IPv6 header and walk its extension headers (see fastpath.reference, "IPv6").
    Returns PARSED (up to the transport header), PARSED_FRAGMENT, or a reason."""
    cdef uint32_t end, off = 40, length, count = 0, offset
    cdef uint8_t nh
    cdef bint fragment_seen = False
    if l3_len < 40:
        return DROP_TRUNCATED
    if ip[0] >> 4 != 6:
        return DROP_BAD_IP_HEADER
    pkt.src6 = load_addr6(ip + 8)
    pkt.dst6 = load_addr6(ip + 24)
    if addr_is_v4_mapped(&pkt.src6) or addr_is_v4_mapped(&pkt.dst6):
        return DROP_BAD_IP_HEADER
    pkt.l3 = ip
    pkt.ipv6 = True
    pkt.saddr = fold6(&pkt.src6)
    pkt.daddr = fold6(&pkt.dst6)
    pkt.first_fragment = False
    pkt.ip_id = 0
    end = 40 + <uint32_t>load16(ip + 4)
    nh = ip[6]
    while is_extension_header(nh):
        count += 1
        if count > MAX_EXTENSION_HEADERS:
            return PASS_UNSUPPORTED
        if off + 8 > l3_len:
            return DROP_TRUNCATED
        if nh == 44:
            length = 8
        elif nh == 51:
            length = (<uint32_t>ip[off + 1] + 2) * 4
        else:
            length = (<uint32_t>ip[off + 1] + 1) * 8
        if off + length > end:
            return DROP_BAD_IP_HEADER
        if nh == 43 and ip[off + 3] != 0:
            # Segments left: not at its final destination yet (and its transport checksum
            # covers the routing header's last address, not the destination field).
            return PASS_UNSUPPORTED
        if nh == 44:
            if fragment_seen:
                return DROP_BAD_IP_HEADER
            fragment_seen = True
            offset = load16(ip + off + 2) >> 3
            pkt.ip_id = load32(ip + off + 4)
            pkt.frag_proto = ip[off]
            if offset != 0:
                return PARSED_FRAGMENT
            pkt.first_fragment = (ip[off + 3] & 1) != 0
        nh = ip[off]
        off += length
    pkt.proto = nh                  # (parse_ports passes the protocols it does not know)
    if not fragment_seen:
        pkt.frag_proto = nh
    pkt.l4 = ip + off
    pkt.l4_length = end - off
    # A datagram beyond the captured bytes is a snaplen cut: clip to what was captured.
    pkt.l4_captured = ((end if end < l3_len else l3_len) - off) if off < l3_len else 0
    pkt.complete = end <= l3_len
    return PARSED


cdef inline int parse_ports(Packet* pkt) noexcept nogil:
    """Check the transport header of a parsed IP packet and read its ports."""
    cdef uint32_t l4_len = pkt.l4_captured
    if pkt.proto == IPPROTO_TCP:
        if l4_len < 20:
            return DROP_TRUNCATED
        if (pkt.l4[12] >> 4) < 5 or (pkt.l4[12] >> 4) * 4u > pkt.l4_length:
            return DROP_BAD_L4_HEADER
        pkt.tcp_flags = pkt.l4[13]
    elif pkt.proto == IPPROTO_UDP:
        if l4_len < 8:
            return DROP_TRUNCATED
        if load16(pkt.l4 + 4) < 8:
            return DROP_BAD_L4_HEADER
        if pkt.ipv6 and load16(pkt.l4 + 6) == 0:
            return DROP_BAD_L4_HEADER   # RFC 8200 8.1: no checksum-less UDP over IPv6
        pkt.tcp_flags = 0
    elif pkt.proto == IPPROTO_SCTP:
        if l4_len < 12:
            return DROP_TRUNCATED
        pkt.tcp_flags = 0
    elif pkt.proto == (IPPROTO_ICMPV6 if pkt.ipv6 else IPPROTO_ICMP):
        if l4_len < 8:
            return DROP_TRUNCATED
        # Errors quoting a packet. ICMP: destination unreachable, time exceeded, parameter
        # problem. ICMPv6: destination unreachable, packet too big, time exceeded, parameter
        # problem.
        if pkt.ipv6:
            if 1 <= pkt.l4[0] <= 4:
                return PARSED_ICMP_ERROR
        elif pkt.l4[0] == 3 or pkt.l4[0] == 11 or pkt.l4[0] == 12:
            return PARSED_ICMP_ERROR
        return PASS_UNSUPPORTED
    else:
        return PASS_UNSUPPORTED
    pkt.sport = load16(pkt.l4)
    pkt.dport = load16(pkt.l4 + 2)
    return PARSED


cdef inline bint parse_quoted(const Packet* icmp, Packet* inner) noexcept nogil:
    """The packet an ICMP error quotes, parsed up to its ports (the quote holds at least its
    IP header and 4 bytes after it), of the error's own IP version. False when there is no such
    usable quote."""
    if icmp.l4_captured < 8:
        return False
    cdef uint32_t available = icmp.l4_captured - 8
    cdef int parsed
    if icmp.ipv6:
        parsed = parse_ipv6(icmp.l4 + 8, available, inner)
    else:
        parsed = parse_ipv4(icmp.l4 + 8, available, inner)
    if parsed != PARSED:
        return False
    if inner.proto != IPPROTO_TCP and inner.proto != IPPROTO_UDP and inner.proto != IPPROTO_SCTP:
        return False
    if inner.l4_captured < 4:
        return False
    inner.sport = load16(inner.l4)
    inner.dport = load16(inner.l4 + 2)
    return True


cdef inline Addr packet_src(const Packet* pkt) noexcept nogil:
    """The packet's source address as an Addr (IPv4 as IPv4-mapped)."""
    return pkt.src6 if pkt.ipv6 else addr_v4(pkt.saddr)


cdef inline Addr packet_dst(const Packet* pkt) noexcept nogil:
    return pkt.dst6 if pkt.ipv6 else addr_v4(pkt.daddr)

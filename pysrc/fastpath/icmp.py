"""ICMP replies the dataplane sends itself: the port unreachable of a REJECT verdict.

kube-proxy rejects traffic to a service port without endpoints (and to a ClusterIP on a port no
service has) with a port unreachable coming from the address the client used: ICMP type 3 code 3
for IPv4, ICMPv6 type 1 code 4 for IPv6 (RFC 4443). fastpath puts that reply into the output
capture right after the rejected packet; this module builds it from the original frame, keeping
its link-layer framing (MACs swapped, VLAN tags kept; cooked and BSD loopback headers as they
were).
"""
from __future__ import annotations

import struct

# RFC 1812 4.3.2.3: quote as much of the original datagram as fits in 576 bytes.
MAX_ERROR_DATAGRAM = 576
# RFC 4443 2.4 (c): as much of the invoking packet as fits in the IPv6 minimum MTU.
MAX_ERROR_DATAGRAM6 = 1280
TTL = 64
HOP_LIMIT = 64
ICMPV6 = 58
TOS_INTERNETCONTROL = 0xC0  # precedence "internetwork control", as Linux sends ICMP errors
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _l2_reply_header(frame: bytes, linktype: int) -> tuple[bytes, int] | None:
    """The link-layer header for the reply and the offset of the original IP header."""
    if linktype == 1:
        if len(frame) < 14:
            return None
        offset = 14
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        while ethertype in VLAN_ETHERTYPES:
            if len(frame) < offset + 4:
                return None
            ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
            offset += 4
        # Back to the sender: swap destination and source MACs, keep tags and ethertype.
        return frame[6:12] + frame[0:6] + frame[12:offset], offset
    if linktype in (101, 228):
        return b"", 0
    if linktype == 113:
        return (frame[:16], 16) if len(frame) >= 16 else None
    if linktype == 276:
        return (frame[:20], 20) if len(frame) >= 20 else None
    if linktype == 0:
        return (frame[:4], 4) if len(frame) >= 4 else None
    return None


def port_unreachable(frame: bytes, linktype: int = 1) -> bytes | None:
    """The port unreachable answering `frame`: ICMP for an IPv4 packet, ICMPv6 for an IPv6 one;
    None if the frame has no IP header to quote."""
    header = _l2_reply_header(bytes(frame), linktype)
    if header is None:
        return None
    l2, offset = header
    ip = bytes(frame[offset:])
    if ip and ip[0] >> 4 == 6:
        reply = _port_unreachable6(ip)
        return None if reply is None else l2 + reply
    if len(ip) < 20 or ip[0] >> 4 != 4 or (ip[0] & 0x0F) < 5:
        return None
    total_length = struct.unpack_from("!H", ip, 2)[0]
    original = ip[: min(len(ip), max(total_length, (ip[0] & 0x0F) * 4))]
    quoted = original[: MAX_ERROR_DATAGRAM - 20 - 8]
    icmp = bytearray(struct.pack("!BBHI", 3, 3, 0, 0) + quoted)
    struct.pack_into("!H", icmp, 2, internet_checksum(bytes(icmp)))
    source, destination = ip[16:20], ip[12:16]  # from the address the client used
    ip_header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, TOS_INTERNETCONTROL,
                                      20 + len(icmp), 0, 0, TTL, 1, 0, source, destination))
    struct.pack_into("!H", ip_header, 10, internet_checksum(bytes(ip_header)))
    return l2 + bytes(ip_header) + bytes(icmp)


def _port_unreachable6(ip: bytes) -> bytes | None:
    """ICMPv6 destination unreachable, code 4 (port unreachable), for the IPv6 packet `ip`."""
    if len(ip) < 40:
        return None
    payload_length = struct.unpack_from("!H", ip, 4)[0]
    # The original packet as captured, cut at its end (a payload length of 0, a jumbogram, ends
    # where the capture does).
    original = ip[: 40 + payload_length] if payload_length else ip
    quoted = original[: MAX_ERROR_DATAGRAM6 - 40 - 8]
    source, destination = ip[24:40], ip[8:24]  # from the address the client used
    icmp = bytearray(struct.pack("!BBHI", 1, 4, 0, 0) + quoted)
    pseudo = source + destination + struct.pack("!I3xB", len(icmp), ICMPV6)
    struct.pack_into("!H", icmp, 2, internet_checksum(pseudo + bytes(icmp)))
    header = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), ICMPV6, HOP_LIMIT, source, destination)
    return header + bytes(icmp)

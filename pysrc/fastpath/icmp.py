"""ICMP replies the dataplane sends itself: the port unreachable of a REJECT verdict.

kube-proxy rejects traffic to a service port without endpoints (and to a ClusterIP on a port no
service has) with an ICMP port unreachable coming from the address the client used. fastpath
puts that reply into the output capture right after the rejected packet; this module builds it
from the original frame, keeping its link-layer framing (MACs swapped, VLAN tags kept).
"""
from __future__ import annotations

import struct

# RFC 1812 4.3.2.3: quote as much of the original datagram as fits in 576 bytes.
MAX_ERROR_DATAGRAM = 576
TTL = 64
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
    """The ICMP port unreachable answering `frame` (an IPv4 packet), or None if it has no IPv4
    header to quote."""
    header = _l2_reply_header(bytes(frame), linktype)
    if header is None:
        return None
    l2, offset = header
    ip = bytes(frame[offset:])
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

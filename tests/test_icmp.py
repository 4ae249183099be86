"""fastpath.icmp.port_unreachable: the reply a REJECT puts into the output capture, for both
IP families, checked with scapy (its own dissection and checksum computation)."""
from __future__ import annotations

import struct

import pytest
from fastpath.icmp import MAX_ERROR_DATAGRAM6, port_unreachable
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPerror6, IPv6, UDPerror, in6_chksum
from scapy.layers.l2 import CookedLinux, Dot1Q, Ether, Loopback
from scapy.packet import Raw

CLIENT6, VIP6 = "fd00:10:244:1::100", "fd00:10:96::10"
CLIENT_MAC, NODE_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def syn6(payload: bytes = b"") -> IPv6:
    return IPv6(src=CLIENT6, dst=VIP6, hlim=63, fl=0x12345) / TCP(sport=40000, dport=80, flags="S") / Raw(payload)


def valid_icmpv6_checksum(ip: IPv6) -> bool:
    """scapy recomputes the ICMPv6 checksum (with the IPv6 pseudo-header) when it is deleted."""
    rebuilt = ip.copy()
    del rebuilt[ICMPv6DestUnreach].cksum
    # and the one's complement sum over the pseudo-header and the message, checksum included, is 0
    return bytes(IPv6(bytes(rebuilt))) == bytes(ip) and in6_chksum(58, ip, bytes(ip.payload)) == 0


def test_ipv6_port_unreachable_on_ethernet() -> None:
    original = syn6(b"hello")
    frame = Ether(src=CLIENT_MAC, dst=NODE_MAC) / original
    reply = Ether(port_unreachable(bytes(frame), 1))
    assert (reply.src, reply.dst, reply.type) == (NODE_MAC, CLIENT_MAC, 0x86DD)
    ip = reply[IPv6]
    # From the address the client used, to the client; hop limit 64; next header ICMPv6.
    assert (ip.src, ip.dst, ip.hlim, ip.nh, ip.tc, ip.fl) == (VIP6, CLIENT6, 64, 58, 0, 0)
    icmp = ip[ICMPv6DestUnreach]
    assert (icmp.type, icmp.code, icmp.unused) == (1, 4, 0)
    assert ip.plen == 8 + len(bytes(original))
    assert bytes(icmp.payload) == bytes(original)  # the whole original packet is quoted
    quoted = icmp[IPerror6]
    assert (quoted.src, quoted.dst, quoted[TCPerror].dport) == (CLIENT6, VIP6, 80)
    assert valid_icmpv6_checksum(ip)
    # scapy's own checksum over the pseudo-header agrees as well
    assert ip.plen == len(bytes(ip.payload))


def test_ipv6_quote_is_cut_to_fit_1280_bytes() -> None:
    original = syn6(bytes(range(256)) * 8)  # a 2108-byte packet
    reply = port_unreachable(bytes(Ether() / original), 1)
    assert reply is not None
    ip = Ether(reply)[IPv6]
    assert len(reply) - 14 == ip.plen + 40 == MAX_ERROR_DATAGRAM6 == 1280
    assert reply[14 + 48:] == bytes(original)[:1280 - 48]
    assert valid_icmpv6_checksum(ip)


def test_ipv6_quote_stops_at_the_payload_length_and_the_capture() -> None:
    original = bytes(syn6())
    padded = bytes(Ether(type=0x86DD) / Raw(original + b"\0" * 10))  # Ethernet padding after the packet
    ip = Ether(port_unreachable(padded, 1))[IPv6]
    assert bytes(ip[ICMPv6DestUnreach].payload) == original
    cut = bytes(Ether(type=0x86DD) / Raw(original))[:14 + 50]  # a snaplen cut inside the TCP header
    ip = Ether(port_unreachable(cut, 1))[IPv6]
    assert bytes(ip[ICMPv6DestUnreach].payload) == original[:50]
    assert valid_icmpv6_checksum(ip)


def test_ipv6_udp_with_extension_header_is_quoted_whole() -> None:
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt

    original = IPv6(src=CLIENT6, dst=VIP6) / IPv6ExtHdrDestOpt() / UDP(sport=5353, dport=53) / Raw(b"q")
    ip = Ether(port_unreachable(bytes(Ether() / original), 1))[IPv6]
    assert bytes(ip[ICMPv6DestUnreach].payload) == bytes(original)
    assert ip[ICMPv6DestUnreach][UDPerror].dport == 53
    assert valid_icmpv6_checksum(ip)


def test_ipv6_vlan_tags_are_kept() -> None:
    frame = Ether(src=CLIENT_MAC, dst=NODE_MAC) / Dot1Q(vlan=7) / Dot1Q(vlan=8) / syn6()
    reply = Ether(port_unreachable(bytes(frame), 1))
    assert [layer.vlan for layer in (reply[Dot1Q], reply[Dot1Q].payload)] == [7, 8]
    assert reply[Dot1Q].payload.type == 0x86DD
    assert valid_icmpv6_checksum(reply[IPv6])


@pytest.mark.parametrize("linktype", [113, 276, 101, 228])
def test_ipv6_other_link_types(linktype: int) -> None:
    packet = bytes(syn6())
    if linktype == 113:
        l2 = bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=b"\x02" * 6 + b"\0\0", proto=0x86DD))
    elif linktype == 276:
        l2 = struct.pack("!HHIHBB8s", 0x86DD, 0, 2, 1, 0, 6, b"\x02" * 6 + b"\0\0")
    else:
        l2 = b""
    reply = port_unreachable(l2 + packet, linktype)
    assert reply is not None and reply[:len(l2)] == l2
    ip = IPv6(reply[len(l2):])
    assert (ip.src, ip.dst, ip[ICMPv6DestUnreach].code) == (VIP6, CLIENT6, 4)
    assert bytes(ip[ICMPv6DestUnreach].payload) == packet
    assert valid_icmpv6_checksum(ip)


@pytest.mark.parametrize("family", [24, 28, 30])
@pytest.mark.parametrize("order", ["<I", ">I"])
def test_ipv6_bsd_loopback_keeps_its_family(family: int, order: str) -> None:
    header = struct.pack(order, family)
    reply = port_unreachable(header + bytes(syn6()), 0)
    assert reply is not None and reply[:4] == header
    ip = IPv6(reply[4:])
    assert ip[ICMPv6DestUnreach].code == 4 and valid_icmpv6_checksum(ip)
    assert Loopback(reply).type == Loopback(header).type


def test_ipv4_port_unreachable_unchanged() -> None:
    original = IP(src="10.244.1.100", dst="10.96.0.10", ttl=63) / UDP(sport=5353, dport=53) / Raw(b"q")
    reply = Ether(port_unreachable(bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / original), 1))
    ip = reply[IP]
    assert (ip.src, ip.dst, ip.ttl, ip.tos, reply[ICMP].type, reply[ICMP].code) == (
        "10.96.0.10", "10.244.1.100", 64, 0xC0, 3, 3)
    assert bytes(reply[ICMP].payload) == bytes(original)
    assert reply[IPerror].dst == "10.96.0.10"
    rebuilt = ip.copy()
    del rebuilt.chksum, rebuilt[ICMP].chksum
    assert bytes(IP(bytes(rebuilt))) == bytes(ip)
    assert TCPerror not in reply


@pytest.mark.parametrize(("frame", "linktype"), [
    (bytes(Ether() / syn6())[:14 + 39], 1),  # less than an IPv6 header
    (bytes(Ether(type=0x86DD)), 1),  # nothing after the Ethernet header
    (b"\x60" + bytes(10), 101),
    (b"\x02\x00\x00", 0),  # a short NULL header
    (bytes(syn6()), 147),  # a link type with no reply framing
])
def test_nothing_to_answer(frame: bytes, linktype: int) -> None:
    assert port_unreachable(frame, linktype) is None


@pytest.mark.parametrize("core", ["compiled", "reference"])
@pytest.mark.parametrize("linktype", [1, 113, 276, 0, 101])
def test_dataplane_rejects_both_families_in_every_framing(core: str, linktype: int) -> None:
    """A REJECT through Dataplane.process_packet and Dataplane.process: the reply is ICMP for an
    IPv4 packet and ICMPv6 for an IPv6 one, in the rejected frame's own framing."""
    from array import array

    from fastpath.capture import Batch
    from fastpath.verdicts import Verdict

    from fastpath import ClusterState, Dataplane

    state = ClusterState.from_objects([{
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9", VIP6],
                 "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}}])
    dataplane = Dataplane(state, core=core)
    v4 = bytes(IP(src="10.244.1.100", dst="10.96.0.9") / TCP(sport=40000, dport=80, flags="S"))
    v6 = bytes(syn6())
    framing = {1: lambda p, v: bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC, type=0x86DD if v == 6 else 0x800)) + p,
               113: lambda p, v: bytes(14) + (b"\x86\xdd" if v == 6 else b"\x08\x00") + p,
               276: lambda p, v: (b"\x86\xdd" if v == 6 else b"\x08\x00") + bytes(18) + p,
               0: lambda p, v: struct.pack("<I", 30 if v == 6 else 2) + p,
               101: lambda p, v: p}[linktype]
    frames = [framing(v4, 4), framing(v6, 6)]
    l2 = len(frames[0]) - len(v4)
    for frame, icmp_type in zip(frames, (3, 1)):
        result = dataplane.process_packet(frame, 0, linktype)
        assert result.verdict == Verdict.REJECT and result.reply is not None
        assert result.reply[:l2] == port_unreachable(frame, linktype)[:l2]
        reply = result.reply[l2:]
        ip = IPv6(reply) if icmp_type == 1 else IP(reply)
        assert (ICMPv6DestUnreach if icmp_type == 1 else ICMP) in ip
        assert bytes(ip.payload)[8:] == frame[l2:]  # the whole original packet is quoted
    batch = Batch.from_packets([(0, frame) for frame in frames])
    result = dataplane.process(batch, linktype)
    assert list(result.verdicts) == [Verdict.REJECT, Verdict.REJECT]
    assert result.replies == {i: port_unreachable(frame, linktype) for i, frame in enumerate(frames)}
    assert isinstance(result.verdicts, array)

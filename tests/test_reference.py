"""Tests of the pure-Python twin of the core (fastpath.reference) against its specification.

Packets are crafted with scapy; every rewritten packet's IPv4/TCP/UDP checksums and SCTP CRC32c
are checked by letting scapy recompute them from scratch.
"""
from __future__ import annotations

import ipaddress
import random
import struct
from array import array
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, defragment, fragment, in4_chksum
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    ICMPv6Unknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    defragment6,
    fragment6,
    in6_chksum,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkData, SCTPChunkInit
from scapy.layers.sctp import crc32c as scapy_crc32c
from scapy.packet import Packet, Raw
from scapy.utils import checksum as scapy_checksum

from fastpath.maps import (
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    PROTOCOL_NUMBERS,
    Backend,
    Frontend,
    Maps,
    NodeView,
    Service,
    address_from_text,
    format_address,
)
from fastpath.reference import (
    CT_CLOSING,
    CT_ESTABLISHED,
    CT_OTHER,
    CT_SYN_SENT,
    DEFAULT_CT_CAPACITY,
    FRAG_CAPACITY,
    MAX_NEW_FLOW_RATE,
    SNAT_TRIES,
    ReferenceEngine,
    _csum_update_word,
    bucket_hash,
    conntrack_home,
    crc32c,
    flow_hash,
    fmix64,
    fold_address,
    next_snat_port,
    select_backend,
)
from fastpath.verdicts import VERDICT_OF_REASON, Reason, Verdict

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND

CLIENT = "192.168.1.10"
VIP = "10.96.0.10"  # TCP and SCTP :80 -> backends 1..4 (:8080)
DNS_VIP = "10.96.0.53"  # UDP :53 -> backends 5, 6 (:5353)
EMPTY_VIP = "10.96.0.99"  # TCP :443 -> no backends

MAC_A = "02:00:00:00:00:01"
MAC_B = "02:00:00:00:00:02"


def ip4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def txt(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def backend(backend_id: int, ip: str, port: int) -> Backend:
    return Backend(id=backend_id, ip=ip4(ip), port=port, name=f"{ip}:{port} (default/pod-{backend_id})")


def make_maps() -> Maps:
    backends = [backend(i, f"10.244.1.{i}", 8080) for i in range(1, 5)]
    backends += [backend(5, "10.244.2.5", 5353), backend(6, "10.244.2.6", 5353)]
    return Maps(
        services=[
            Service(id=1, name="default/web:http", backends=(1, 2, 3, 4)),
            Service(id=2, name="kube-system/dns:dns", backends=(5, 6)),
            Service(id=3, name="default/empty", backends=()),
        ],
        frontends=[
            Frontend(ip=ip4(VIP), port=80, proto=PROTO_TCP, service=1),
            Frontend(ip=ip4(DNS_VIP), port=53, proto=PROTO_UDP, service=2),
            Frontend(ip=ip4(EMPTY_VIP), port=443, proto=PROTO_TCP, service=3),
            Frontend(ip=ip4(VIP), port=80, proto=PROTO_SCTP, service=1),
        ],
        backends=backends,
    )


MAPS = make_maps()
BACKEND_BY_ID = {b.id: b for b in MAPS.backends}


# --------------------------------------------------------------------------- helpers


def tcp(src=CLIENT, dst=VIP, sport=40000, dport=80, flags="S", payload=b"hello", **ip_fields) -> Packet:
    return IP(src=src, dst=dst, **ip_fields) / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=0) / Raw(payload)


def udp(src=CLIENT, dst=DNS_VIP, sport=50000, dport=53, payload=b"query", chksum=None) -> Packet:
    layer = UDP(sport=sport, dport=dport) if chksum is None else UDP(sport=sport, dport=dport, chksum=chksum)
    return IP(src=src, dst=dst) / layer / Raw(payload)


def sctp(src=CLIENT, dst=VIP, sport=40000, dport=80, data=b"sctp data", tag=0x1A2B3C4D, **ip_fields) -> Packet:
    return IP(src=src, dst=dst, **ip_fields) / SCTP(sport=sport, dport=dport, tag=tag) / SCTPChunkData(
        tsn=7, stream_id=1, data=data)


def eth(packet: Packet) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / packet)


def expected_backend(service_backends, src, dst, sport, dport, proto) -> Backend:
    """Independent spelling of the spec's selection rule."""
    mask = (1 << 64) - 1

    def mix(x):
        x ^= x >> 33
        x = x * 0xFF51AFD7ED558CCD % (1 << 64)
        x ^= x >> 33
        x = x * 0xC4CEB9FE1A85EC53 % (1 << 64)
        return x ^ (x >> 33)

    h = mix((((ip4(src) << 32) | ip4(dst)) ^ mix((sport << 24) | (dport << 8) | proto)) & mask)
    index = ((h & 0xFFFFFFFF) * len(service_backends)) >> 32
    return BACKEND_BY_ID[service_backends[index]]


def assert_checksums_valid(ip_bytes: bytes) -> IP:
    """scapy recomputes the IPv4 and TCP/UDP checksums (SCTP: CRC32c) from scratch; they must match
    the packet's."""
    got = IP(ip_bytes)
    rebuilt = IP(ip_bytes)
    del rebuilt.chksum
    l4 = TCP if TCP in got else UDP if UDP in got else SCTP if SCTP in got else None
    udp_no_checksum = l4 is UDP and got[UDP].chksum == 0
    if l4 is not None and not udp_no_checksum:
        del rebuilt[l4].chksum
    rebuilt = IP(bytes(rebuilt))
    assert got.chksum == rebuilt.chksum, "IPv4 header checksum"
    if l4 is not None and not udp_no_checksum:
        assert got[l4].chksum == rebuilt[l4].chksum, f"{l4.__name__} checksum"
    return got


def run(engine: ReferenceEngine, data: bytes, ts: int = T0, linktype: int = 1):
    verdict, reason, out = engine.process_packet(data, ts, linktype)
    assert isinstance(verdict, Verdict) and isinstance(reason, Reason)
    assert VERDICT_OF_REASON[reason] is verdict
    assert len(out) == len(data)
    if verdict in (Verdict.PASS, Verdict.DROP, Verdict.REJECT):
        assert out == data, "PASS, DROP and REJECT never modify the packet"
    return verdict, reason, out


def engine(capacity: int = DEFAULT_CT_CAPACITY, maps: Maps | None = None) -> ReferenceEngine:
    return ReferenceEngine(maps if maps is not None else make_maps(), ct_capacity=capacity)


# --------------------------------------------------------------------------- hash and selection


def test_fmix64_and_flow_hash_values():
    assert fmix64(0) == 0
    assert fmix64(1 << 64) == 0  # arithmetic modulo 2**64
    for x in (1, 0xDEADBEEF, (1 << 64) - 1, 0x0123456789ABCDEF):
        h = fmix64(x)
        assert 0 <= h < 1 << 64
    # Pinned values: the compiled core must reproduce these exactly.
    assert fmix64(1) == 0xB456BCFC34C2CB2C
    assert flow_hash(ip4(CLIENT), ip4(VIP), 40000, 80, PROTO_TCP) == flow_hash(
        ip4(CLIENT), ip4(VIP), 40000, 80, 6
    )
    assert flow_hash(1, 2, 3, 4, 6) == 18248133996163371442


def test_flow_hash_matches_spec_formula():
    for src, dst, sport, dport, proto in [
        (CLIENT, VIP, 40000, 80, 6),
        ("0.0.0.0", "255.255.255.255", 0, 65535, 17),
        ("1.2.3.4", "5.6.7.8", 65535, 0, 255),
    ]:
        ports = (sport << 24) | (dport << 8) | proto
        want = fmix64((((ip4(src) << 32) | ip4(dst)) ^ fmix64(ports)))
        assert flow_hash(ip4(src), ip4(dst), sport, dport, proto) == want


def test_bucket_hash_matches_spec_formula_and_never_selects():
    for src, dst, sport, dport, proto in [
        (CLIENT, VIP, 40000, 80, 6),
        ("0.0.0.0", "255.255.255.255", 0, 65535, 17),
        ("1.2.3.4", "5.6.7.8", 65535, 0, 255),
    ]:
        ports = (sport << 24) | (dport << 8) | proto
        x = (((ip4(src) << 32) | ip4(dst)) ^ (ports * 0x9E3779B97F4A7C15)) & (2**64 - 1)
        x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
        assert bucket_hash(ip4(src), ip4(dst), sport, dport, proto) == x ^ (x >> 32)
    # Pinned: the compiled core's conntrack index must place entries exactly so.
    assert bucket_hash(1, 2, 3, 4, 6) == 16867414855220944709
    # Selection stays on flow_hash: the same tuple, another hash.
    assert bucket_hash(1, 2, 3, 4, 6) != flow_hash(1, 2, 3, 4, 6)


def test_select_backend_rule_and_empty():
    backends = (7, 3, 9)
    for sport in range(1000, 1100):
        h = flow_hash(ip4(CLIENT), ip4(VIP), sport, 80, 6)
        want = backends[((h & 0xFFFFFFFF) * 3) >> 32]
        assert select_backend(backends, ip4(CLIENT), ip4(VIP), sport, 80, 6) == want
    assert select_backend((5,), 1, 2, 3, 4, 6) == 5
    with pytest.raises(ValueError):
        select_backend((), 1, 2, 3, 4, 6)


def test_selection_spreads_across_backends():
    eng = engine()
    hits = {i: 0 for i in (1, 2, 3, 4)}
    flows = 4000
    for n in range(flows):
        src = f"172.16.{n // 250}.{n % 250 + 1}"
        sport = 10000 + n
        verdict, reason, out = run(eng, eth(tcp(src=src, sport=sport)))
        assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
        want = expected_backend((1, 2, 3, 4), src, VIP, sport, 80, PROTO_TCP)
        assert Ether(out)[IP].dst == txt(want.ip)
        hits[want.id] += 1
    for count in hits.values():
        assert 0.2 * flows < count < 0.3 * flows
    assert eng.counters()["backends"][:4] == [hits[i] for i in (1, 2, 3, 4)]
    assert eng.counters()["services"][0] == flows


# --------------------------------------------------------------------------- TCP and UDP flows


def test_new_tcp_flow_dnat_then_reply_revnat_then_established():
    eng = engine()
    syn = eth(tcp(flags="S"))
    verdict, reason, out = run(eng, syn)
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    chosen = expected_backend((1, 2, 3, 4), CLIENT, VIP, 40000, 80, PROTO_TCP)
    pkt = Ether(out)
    assert (pkt[IP].src, pkt[IP].dst) == (CLIENT, txt(chosen.ip))
    assert (pkt[TCP].sport, pkt[TCP].dport) == (40000, chosen.port)
    assert pkt[Raw].load == b"hello"
    assert out[:14] == syn[:14]
    assert_checksums_valid(out[14:])
    (entry,) = eng.conntrack_entries()
    assert entry.orig == (ip4(CLIENT), ip4(VIP), 40000, 80, PROTO_TCP)
    assert entry.reply == (chosen.ip, ip4(CLIENT), chosen.port, 40000, PROTO_TCP)
    assert (entry.backend, entry.service, entry.state, entry.last_seen_ns) == (chosen.id, 1, CT_SYN_SENT, T0)

    synack = eth(tcp(src=txt(chosen.ip), dst=CLIENT, sport=chosen.port, dport=40000, flags="SA", payload=b"x"))
    verdict, reason, out = run(eng, synack, T0 + SECOND)
    assert (verdict, reason) == (Verdict.REVNAT, Reason.CT_REPLY)
    pkt = Ether(out)
    assert (pkt[IP].src, pkt[IP].dst, pkt[TCP].sport, pkt[TCP].dport) == (VIP, CLIENT, 80, 40000)
    assert_checksums_valid(out[14:])
    assert eng.conntrack_entries()[0].state == CT_ESTABLISHED

    ack = eth(tcp(flags="A", payload=b"GET / HTTP/1.1\r\n\r\n"))
    verdict, reason, out = run(eng, ack, T0 + 2 * SECOND)
    assert (verdict, reason) == (Verdict.DNAT, Reason.CT_ESTABLISHED)
    assert Ether(out)[IP].dst == txt(chosen.ip)
    assert_checksums_valid(out[14:])

    c = eng.counters()
    assert c["verdicts"]["DNAT"] == 2 and c["verdicts"]["REVNAT"] == 1
    assert c["reasons"]["NEW_FLOW"] == 1 and c["reasons"]["CT_REPLY"] == 1 and c["reasons"]["CT_ESTABLISHED"] == 1
    assert c["services"] == [3, 0, 0]
    assert c["backends"][chosen.id - 1] == 3 and sum(c["backends"]) == 3
    assert c["conntrack"] == {
        "inserts": 1, "evictions": 0, "expired": 0, "reopened": 0, "non_syn_miss": 0,
        "insert_failures": 0, "flushed": 0, "snat_failures": 0, "snat_unavailable": 0, "rate_limited": 0,
        "entries": 1,
    }
    assert c["affinity"] == {"evictions": 0, "expired": 0, "entries": 0}


def test_ip_options_and_tcp_options_are_skipped_correctly():
    eng = engine()
    packet = IP(src=CLIENT, dst=VIP, options=b"\x01\x01\x01\x00") / TCP(
        sport=40001, dport=80, flags="S", options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]
    )
    verdict, reason, out = run(eng, eth(packet))
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    got = assert_checksums_valid(out[14:])
    assert got[TCP].dport == 8080 and got.ihl == 6


def test_udp_flow_with_checksum():
    eng = engine()
    verdict, reason, out = run(eng, eth(udp()))
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    chosen = expected_backend((5, 6), CLIENT, DNS_VIP, 50000, 53, PROTO_UDP)
    got = assert_checksums_valid(out[14:])
    assert (got.dst, got[UDP].dport) == (txt(chosen.ip), 5353)
    assert got[UDP].chksum != 0
    assert eng.conntrack_entries()[0].state == CT_OTHER

    reply = eth(udp(src=txt(chosen.ip), dst=CLIENT, sport=5353, dport=50000, payload=b"answer"))
    verdict, reason, out = run(eng, reply, T0 + 1)
    assert (verdict, reason) == (Verdict.REVNAT, Reason.CT_REPLY)
    got = assert_checksums_valid(out[14:])
    assert (got.src, got[UDP].sport) == (DNS_VIP, 53)
    assert eng.conntrack_entries()[0].state == CT_OTHER
    assert eng.counters()["conntrack"]["non_syn_miss"] == 0


def test_udp_checksum_zero_stays_zero():
    eng = engine()
    data = eth(udp(chksum=0))
    assert Ether(data)[UDP].chksum == 0
    verdict, reason, out = run(eng, data)
    assert verdict == Verdict.DNAT
    got = assert_checksums_valid(out[14:])
    assert got[UDP].chksum == 0
    assert got[UDP].dport == 5353


def test_udp_computed_zero_checksum_is_written_as_ffff():
    chosen = expected_backend((5, 6), CLIENT, DNS_VIP, 50000, 53, PROTO_UDP)
    # Choose a payload word that makes the rewritten datagram's checksum compute to 0.
    probe = IP(bytes(udp(dst=txt(chosen.ip), dport=5353, payload=b"\x00\x00")))
    word = probe[UDP].chksum
    assert word not in (0, 0xFFFF)
    payload = struct.pack("!H", word)
    original = udp(payload=payload)
    assert IP(bytes(original))[UDP].chksum not in (0, 0xFFFF)
    verdict, _, out = run(engine(), eth(original))
    assert verdict == Verdict.DNAT
    got = assert_checksums_valid(out[14:])
    assert got[UDP].chksum == 0xFFFF


def test_checksum_update_agrees_with_full_recompute():
    def full(words):
        total = sum(words)
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF

    @given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=12), st.data())
    def check(words, data):
        index = data.draw(st.integers(0, len(words) - 1))
        new = data.draw(st.integers(0, 0xFFFF))
        changed = list(words)
        changed[index] = new
        incremental = _csum_update_word(full(words), words[index], new)
        recomputed = full(changed)
        # Equal as one's-complement numbers (0x0000 and 0xFFFF are both zero).
        assert incremental % 0xFFFF == recomputed % 0xFFFF

    check()


# --------------------------------------------------------------------------- link types


@pytest.mark.parametrize(
    "name, linktype, header",
    [
        ("ethernet", 1, bytes(Ether(src=MAC_A, dst=MAC_B, type=0x0800))),
        ("vlan", 1, bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=42, type=0x0800))),
        ("qinq", 1, bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1AD(vlan=5) / Dot1Q(vlan=7, type=0x0800))),
        ("qinq-9100", 1, bytes(Ether(src=MAC_A, dst=MAC_B, type=0x9100) / Dot1Q(vlan=5) / Dot1Q(vlan=7, type=0x0800))),
        ("cooked-v1", 113, bytes(CookedLinux(proto=0x0800))),
        ("cooked-v2", 276, bytes(CookedLinuxV2(proto=0x0800))),
        ("null-le", 0, struct.pack("<I", 2)),
        ("null-be", 0, struct.pack(">I", 2)),
        ("raw-101", 101, b""),
        ("raw-228", 228, b""),
    ],
)
def test_link_types_dnat_and_revnat(name, linktype, header):
    eng = engine()
    verdict, reason, out = run(eng, header + bytes(tcp()), linktype=linktype)
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW), name
    assert out[: len(header)] == header
    chosen = expected_backend((1, 2, 3, 4), CLIENT, VIP, 40000, 80, PROTO_TCP)
    got = assert_checksums_valid(out[len(header):])
    assert (got.dst, got[TCP].dport) == (txt(chosen.ip), 8080)

    reply = header + bytes(tcp(src=txt(chosen.ip), dst=CLIENT, sport=8080, dport=40000, flags="SA"))
    verdict, reason, out = run(eng, reply, T0 + 1, linktype=linktype)
    assert (verdict, reason) == (Verdict.REVNAT, Reason.CT_REPLY)
    got = assert_checksums_valid(out[len(header):])
    assert (got.src, got[TCP].sport) == (VIP, 80)

    udp_verdict, _, out = run(eng, header + bytes(udp()), linktype=linktype)
    assert udp_verdict == Verdict.DNAT
    assert_checksums_valid(out[len(header):])


@pytest.mark.parametrize(
    "linktype, data, reason",
    [
        (1, bytes(Ether(src=MAC_A, dst=MAC_B) / ARP()), Reason.PASS_NOT_IP),
        (1, bytes(Ether(src=MAC_A, dst=MAC_B, type=0x88CC) / Raw(b"\x00" * 40)), Reason.PASS_NOT_IP),
        (1, bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=3) / ARP()), Reason.PASS_NOT_IP),
        (113, bytes(CookedLinux(proto=0x0806) / ARP()), Reason.PASS_NOT_IP),
        (276, bytes(CookedLinuxV2(proto=0x0806) / ARP()), Reason.PASS_NOT_IP),
        (0, struct.pack("<I", 7) + bytes(tcp()), Reason.PASS_NOT_IP),
        (0, struct.pack(">I", 0x1234) + bytes(tcp()), Reason.PASS_NOT_IP),
        (101, b"\x50" + bytes(39), Reason.PASS_NOT_IP),
        (101, b"\x00", Reason.PASS_NOT_IP),
        (147, bytes(tcp()), Reason.PASS_UNKNOWN_LINK),
        (12, bytes(tcp()), Reason.PASS_UNKNOWN_LINK),
        (-1, bytes(tcp()), Reason.PASS_UNKNOWN_LINK),
        (1, b"", Reason.DROP_TRUNCATED),
    ],
)
def test_pass_and_unknown_link(linktype, data, reason):
    verdict, got, _ = run(engine(), data, linktype=linktype)
    assert got == reason and verdict == VERDICT_OF_REASON[reason]


@pytest.mark.parametrize(
    "linktype, data",
    [
        (1, eth(IP(src=CLIENT, dst=VIP) / ICMP())),  # echo request
        (1, eth(IP(src=CLIENT, dst=VIP) / ICMP(type=0))),  # echo reply
        (1, eth(IP(src=CLIENT, dst=VIP) / ICMP(type=5, code=1) / Raw(bytes(tcp())[:28]))),  # redirect
        (1, eth(IP(src=CLIENT, dst=VIP, proto=47) / Raw(b"\x00" * 8))),
        (1, eth(IP(src=CLIENT, dst=VIP, proto=133) / Raw(b"\x00" * 16))),  # the protocol after SCTP
        (1, eth(IP(src=CLIENT, dst=VIP, flags="MF", proto=47) / Raw(b"\x00" * 8))),  # a first fragment
        (1, eth(IP(src=CLIENT, dst=VIP, proto=58) / Raw(b"\x01\x04\x00\x00" + bytes(44)))),  # ICMPv6 in IPv4
    ],
)
def test_unsupported_ip_traffic_passes(linktype, data):
    eng = engine()
    verdict, reason, out = run(eng, data, linktype=linktype)
    assert (verdict, reason) == (Verdict.PASS, Reason.PASS_UNSUPPORTED)
    assert out == data
    assert eng.counters()["conntrack"]["entries"] == 0


def test_dont_fragment_is_not_a_fragment():
    data = eth(IP(src=CLIENT, dst=VIP, flags="DF") / TCP(dport=80, flags="S"))
    verdict, reason, _ = run(engine(), data)
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)


def test_not_a_service_passes():
    eng = engine()
    for packet in (
        tcp(dst="10.96.0.11"),
        tcp(dport=81),
        udp(dst=VIP, dport=80),  # the frontend is TCP only
        tcp(dst=DNS_VIP, dport=53),  # the frontend is UDP only
    ):
        verdict, reason, _ = run(eng, eth(packet))
        assert (verdict, reason) == (Verdict.PASS, Reason.PASS_NO_SERVICE)
    assert eng.counters()["reasons"]["PASS_NO_SERVICE"] == 4
    assert eng.counters()["conntrack"]["entries"] == 0


# --------------------------------------------------------------------------- malformed input


def _ip_header(**fields) -> bytes:
    return bytes(IP(src=CLIENT, dst=VIP, **fields))


def _with_byte(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1:]


GOOD_TCP = bytes(tcp(payload=b"0123456789"))  # 20 IP + 20 TCP + 10
GOOD_UDP = bytes(udp(payload=b"0123456789"))  # 20 IP + 8 UDP + 10
GOOD_SCTP = bytes(sctp(data=b"0123"))  # 20 IP + 12 SCTP + 16 DATA chunk + 4 payload
ETH_HDR = bytes(Ether(src=MAC_A, dst=MAC_B, type=0x0800))
VLAN_HDR = bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=42, type=0x0800))


def _tcp_with_data_offset(offset: int) -> bytes:
    data = bytearray(GOOD_TCP)
    data[20 + 12] = (offset << 4) | (data[20 + 12] & 0x0F)
    return bytes(data)


def _with_total_length(data: bytes, total: int) -> bytes:
    return data[:2] + struct.pack("!H", total) + data[4:]


MALFORMED = [
    # L2
    ("ethernet 13 bytes", 1, ETH_HDR[:13], Reason.DROP_TRUNCATED),
    ("ethernet header only", 1, ETH_HDR, Reason.DROP_TRUNCATED),
    ("vlan tag cut", 1, VLAN_HDR[:17], Reason.DROP_TRUNCATED),
    ("vlan tag, nothing after", 1, VLAN_HDR, Reason.DROP_TRUNCATED),
    ("qinq inner tag cut", 1, bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1AD(vlan=1) / Dot1Q(vlan=2))[:20], Reason.DROP_TRUNCATED),
    ("cooked v1 15 bytes", 113, bytes(CookedLinux(proto=0x0800))[:15], Reason.DROP_TRUNCATED),
    ("cooked v2 19 bytes", 276, bytes(CookedLinuxV2(proto=0x0800))[:19], Reason.DROP_TRUNCATED),
    ("null 3 bytes", 0, b"\x02\x00\x00", Reason.DROP_TRUNCATED),
    ("raw empty", 101, b"", Reason.DROP_TRUNCATED),
    ("raw 228 empty", 228, b"", Reason.DROP_TRUNCATED),
    # IPv4
    ("ip 19 bytes", 1, ETH_HDR + GOOD_TCP[:19], Reason.DROP_TRUNCATED),
    ("raw ip 1 byte", 101, b"\x45", Reason.DROP_TRUNCATED),
    ("null ip 19 bytes", 0, b"\x02\x00\x00\x00" + GOOD_TCP[:19], Reason.DROP_TRUNCATED),
    ("ip version 6 in ipv4 ethertype", 1, ETH_HDR + _with_byte(GOOD_TCP, 0, 0x65), Reason.DROP_BAD_IP_HEADER),
    ("ip version 0", 113, bytes(CookedLinux(proto=0x0800)) + _with_byte(GOOD_TCP, 0, 0x05), Reason.DROP_BAD_IP_HEADER),
    ("ihl 4", 1, ETH_HDR + _with_byte(GOOD_TCP, 0, 0x44), Reason.DROP_BAD_IP_HEADER),
    ("ihl 0", 101, _with_byte(GOOD_TCP, 0, 0x40), Reason.DROP_BAD_IP_HEADER),
    ("ihl 15 past capture", 1, ETH_HDR + _with_byte(GOOD_TCP, 0, 0x4F)[:59], Reason.DROP_TRUNCATED),
    ("total length < ihl*4", 1, ETH_HDR + _with_total_length(GOOD_TCP, 19), Reason.DROP_BAD_IP_HEADER),
    ("total length 0", 276, bytes(CookedLinuxV2(proto=0x0800)) + _with_total_length(GOOD_TCP, 0), Reason.DROP_BAD_IP_HEADER),
    # TCP
    ("tcp header cut", 1, ETH_HDR + GOOD_TCP[:39], Reason.DROP_TRUNCATED),
    ("tcp no header", 1, ETH_HDR + GOOD_TCP[:20], Reason.DROP_TRUNCATED),
    ("tcp cut by total length", 1, ETH_HDR + _with_total_length(GOOD_TCP, 39), Reason.DROP_TRUNCATED),
    ("tcp data offset 4", 1, ETH_HDR + _tcp_with_data_offset(4), Reason.DROP_BAD_L4_HEADER),
    ("tcp data offset 0", 101, _tcp_with_data_offset(0), Reason.DROP_BAD_L4_HEADER),
    ("tcp data offset past ip payload", 1, ETH_HDR + _tcp_with_data_offset(9), Reason.DROP_BAD_L4_HEADER),
    ("tcp data offset past total length", 1, ETH_HDR + _with_total_length(_tcp_with_data_offset(6), 43), Reason.DROP_BAD_L4_HEADER),
    # UDP
    ("udp header cut", 1, ETH_HDR + GOOD_UDP[:27], Reason.DROP_TRUNCATED),
    ("udp cut by total length", 1, ETH_HDR + _with_total_length(GOOD_UDP, 27), Reason.DROP_TRUNCATED),
    ("udp length 7", 1, ETH_HDR + GOOD_UDP[:24] + struct.pack("!H", 7) + GOOD_UDP[26:], Reason.DROP_BAD_L4_HEADER),
    ("udp length 0", 0, b"\x02\x00\x00\x00" + GOOD_UDP[:24] + b"\x00\x00" + GOOD_UDP[26:], Reason.DROP_BAD_L4_HEADER),
    # SCTP
    ("sctp common header cut", 1, ETH_HDR + GOOD_SCTP[:31], Reason.DROP_TRUNCATED),
    ("sctp ports only", 101, GOOD_SCTP[:24], Reason.DROP_TRUNCATED),
    ("sctp no header", 1, ETH_HDR + GOOD_SCTP[:20], Reason.DROP_TRUNCATED),
    ("sctp cut by total length", 1, ETH_HDR + _with_total_length(GOOD_SCTP, 31), Reason.DROP_TRUNCATED),
    ("sctp total length = ihl*4", 113, bytes(CookedLinux(proto=0x0800)) + _with_total_length(GOOD_SCTP, 20),
     Reason.DROP_TRUNCATED),
]


@pytest.mark.parametrize("name, linktype, data, reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed(name, linktype, data, reason):
    eng = engine()
    verdict, got, out = run(eng, data, linktype=linktype)
    assert got == reason
    assert verdict == Verdict.DROP
    assert out == data
    c = eng.counters()
    assert c["reasons"][reason.name] == 1 and c["verdicts"]["DROP"] == 1
    assert c["conntrack"]["entries"] == 0


def test_tcp_data_offset_equal_to_ip_payload_is_fine():
    # 20 bytes of TCP header and nothing else: data offset 5 * 4 == total length - 20.
    data = bytes(IP(src=CLIENT, dst=VIP) / TCP(sport=1, dport=80, flags="S"))
    verdict, reason, out = run(engine(), data, linktype=101)
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    assert_checksums_valid(out)


def test_tcp_options_need_not_be_captured_and_snaplen_cut_is_rewritten():
    full = eth(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="S", options=[("MSS", 1460)] * 4) / Raw(b"x" * 100))
    _, _, full_out = run(engine(), full)
    for cut in (14 + 20 + 20, 14 + 20 + 24, 14 + 20 + 40, len(full) - 1):
        verdict, reason, out = run(engine(), full[:cut])
        assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
        assert out == full_out[:cut]  # same rewrite as the whole packet


def test_ethernet_padding_beyond_total_length_is_left_alone():
    data = eth(tcp(payload=b"")) + b"\xAA" * 6
    verdict, _, out = run(engine(), data)
    assert verdict == Verdict.DNAT
    assert out[-6:] == b"\xAA" * 6
    assert_checksums_valid(out[14:])


def test_udp_length_larger_than_datagram_is_accepted():
    data = bytearray(eth(udp()))
    data[14 + 20 + 4: 14 + 20 + 6] = struct.pack("!H", 500)
    verdict, reason, _ = run(engine(), bytes(data))
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)


# --------------------------------------------------------------------------- conntrack


def test_ct_capacity_must_be_positive():
    with pytest.raises(ValueError):
        ReferenceEngine(make_maps(), ct_capacity=0)
    with pytest.raises(ValueError):
        ReferenceEngine(make_maps(), ct_capacity=-5)
    assert DEFAULT_CT_CAPACITY == 1 << 19
    ReferenceEngine(make_maps(), ct_capacity=1)


def _slots(eng) -> list[tuple[int, int, bool]]:
    """(client port, slot, referenced) of each conntrack entry, in slot order."""
    return [(e.orig[2], e.slot, e.referenced) for e in eng.conntrack_entries()]


def _port_at_home(home: int, capacity: int, taken: tuple[int, ...] = ()) -> int:
    """The lowest client port above 1000, not in `taken`, whose flow CLIENT -> VIP:80/TCP has
    its home conntrack slot at `home`."""
    return next(port for port in range(1001, 65536) if port not in taken
                and conntrack_home((ip4(CLIENT), ip4(VIP), port, 80, PROTO_TCP), capacity) == home)


def _reply_of(port: int) -> bytes:
    chosen = expected_backend((1, 2, 3, 4), CLIENT, VIP, port, 80, PROTO_TCP)
    return eth(tcp(src=txt(chosen.ip), dst=CLIENT, sport=8080, dport=port, flags="SA"))


def test_a_new_entry_takes_its_home_slot_when_free():
    capacity = 1000
    port = 1001
    home = conntrack_home((ip4(CLIENT), ip4(VIP), port, 80, PROTO_TCP), capacity)
    eng = engine(capacity=capacity)
    run(eng, eth(tcp(sport=port)))
    assert _slots(eng) == [(port, home, False)]
    assert home == ((bucket_hash(ip4(CLIENT), ip4(VIP), port, 80, PROTO_TCP) >> 32) * capacity) >> 32


def test_clock_eviction_at_capacity():
    eng = engine(capacity=3)
    # Three flows whose home slots are 0, 1 and 2; then two more, anywhere.
    a = _port_at_home(0, 3)
    b = _port_at_home(1, 3)
    c = _port_at_home(2, 3)
    d, e = [port for port in range(1001, 1010) if port not in (a, b, c)][:2]
    for n, port in enumerate((a, b, c)):
        assert run(eng, eth(tcp(sport=port)), T0 + n)[1] == Reason.NEW_FLOW
    assert _slots(eng) == [(a, 0, False), (b, 1, False), (c, 2, False)]
    # A packet of flow a sets its bit, so the hand (at slot 0) passes it over, clearing the bit,
    # and evicts b; the new flow takes slot 1 (the only free one), right behind the hand.
    assert run(eng, eth(tcp(sport=a, flags="A")), T0 + 10)[1] == Reason.CT_ESTABLISHED
    assert _slots(eng)[0] == (a, 0, True)
    assert run(eng, eth(tcp(sport=d)), T0 + 11)[1] == Reason.NEW_FLOW
    assert _slots(eng) == [(a, 0, False), (d, 1, False), (c, 2, False)]
    counts = eng.counters()["conntrack"]
    assert (counts["inserts"], counts["evictions"], counts["entries"]) == (4, 1, 3)
    # A reply of the evicted flow is no longer known; its next forward packet is a mid-stream miss.
    assert run(eng, _reply_of(b), T0 + 12)[1] == Reason.PASS_NO_SERVICE
    assert run(eng, eth(tcp(sport=b, flags="A")), T0 + 13)[1] == Reason.NEW_FLOW
    counts = eng.counters()["conntrack"]
    assert (counts["inserts"], counts["evictions"], counts["non_syn_miss"],
            counts["entries"]) == (5, 2, 1, 3)
    assert _slots(eng) == [(a, 0, False), (d, 1, False), (b, 2, False)]
    # The hand wrapped round to slot 0: a, without a packet since its bit was cleared, is next.
    assert run(eng, eth(tcp(sport=e)), T0 + 14)[1] == Reason.NEW_FLOW
    assert _slots(eng) == [(e, 0, False), (d, 1, False), (b, 2, False)]


def test_clock_full_turn_when_every_entry_is_referenced():
    eng = engine(capacity=2)
    a, b = _port_at_home(0, 2), _port_at_home(1, 2)
    for port in (a, b):
        run(eng, eth(tcp(sport=port)), T0)
        run(eng, eth(tcp(sport=port, flags="A")), T0 + 1)
    assert _slots(eng) == [(a, 0, True), (b, 1, True)]
    # The hand clears both bits, comes back to slot 0 and evicts a.
    c = _port_at_home(0, 2, taken=(a,))
    run(eng, eth(tcp(sport=c)), T0 + 2)
    assert _slots(eng) == [(c, 0, False), (b, 1, False)]
    assert eng.counters()["conntrack"]["evictions"] == 1


def test_reply_sets_the_referenced_bit():
    eng = engine(capacity=2)
    a, b = _port_at_home(0, 2), _port_at_home(1, 2)
    run(eng, eth(tcp(sport=a)), T0)
    run(eng, eth(tcp(sport=b)), T0 + 1)
    assert run(eng, _reply_of(a), T0 + 2)[1] == Reason.CT_REPLY
    c = min({1001, 1002, 1003} - {a, b})
    run(eng, eth(tcp(sport=c)), T0 + 3)
    # The hand passed a (referenced by its reply) and evicted b.
    assert [(port, slot) for port, slot, _ in _slots(eng)] == [(a, 0), (c, 1)]


def test_slots_away_from_home_are_reused_most_recently_freed_first():
    capacity = 5
    ports: list[int] = []
    for _ in range(6):
        ports.append(_port_at_home(1, capacity, taken=tuple(ports)))
    a, b, c, d, e, g = ports
    f = _port_at_home(2, capacity)
    eng = engine(capacity=capacity)
    # a takes its home, slot 1; b, c and d (home 1 too) the lowest free slots: 0, then 2 (slot 1
    # is passed over) and 3.
    for port in (a, b, c, d):
        run(eng, eth(tcp(sport=port)), T0)
    assert [(port, slot) for port, slot, _ in _slots(eng)] == [(b, 0), (a, 1), (c, 2), (d, 3)]
    # Replies after the SYN_SENT timeout find c's, then b's entry expired: slots 2, then 0 are
    # freed (the replies themselves pass: they are not addressed to a service).
    for port in (c, b):
        assert run(eng, _reply_of(port), T0 + 100 * SECOND)[1] == Reason.PASS_NO_SERVICE
    assert eng.counters()["conntrack"]["expired"] == 2
    # f takes its home, slot 2, off the freed slots (under slot 0, freed later); e (home 1, in
    # use) the most recently freed slot left, 0; g (home 1) finds none left and takes the lowest
    # slot not yet handed out, 4.
    for port in (f, e, g):
        run(eng, eth(tcp(sport=port)), T0 + 101 * SECOND)
    assert [(port, slot) for port, slot, _ in _slots(eng)] == [(e, 0), (a, 1), (f, 2), (d, 3), (g, 4)]


def test_capacity_one():
    eng = engine(capacity=1)
    for port in range(2000, 2010):
        assert run(eng, eth(tcp(sport=port)))[1] == Reason.NEW_FLOW
    c = eng.counters()["conntrack"]
    assert (c["inserts"], c["evictions"], c["entries"]) == (10, 9, 1)


@pytest.mark.parametrize(
    "setup_flags, state, timeout_s",
    [
        (["S"], CT_SYN_SENT, 60),
        (["A"], CT_ESTABLISHED, 8000),
        (["S", "SA"], CT_ESTABLISHED, 8000),
        (["F"], CT_CLOSING, 10),
        (["A", "R"], CT_CLOSING, 10),
        (None, CT_OTHER, 60),
    ],
)
def test_expiry_per_state(setup_flags, state, timeout_s):
    eng = engine()
    if setup_flags is None:
        first, later = eth(udp()), eth(udp(payload=b"again"))
        run(eng, first, T0)
    else:
        chosen = expected_backend((1, 2, 3, 4), CLIENT, VIP, 40000, 80, PROTO_TCP)
        for flags in setup_flags:
            if flags == "SA":
                packet = tcp(src=txt(chosen.ip), dst=CLIENT, sport=8080, dport=40000, flags="SA")
            else:
                packet = tcp(flags=flags)
            run(eng, eth(packet), T0)
        later = eth(tcp(flags="A"))
    (entry,) = eng.conntrack_entries()
    assert entry.state == state
    timeout = timeout_s * SECOND
    # Exactly at the timeout the entry is still alive (expiry needs age > timeout) ...
    _, reason, _ = run(eng, later, T0 + timeout)
    assert reason == Reason.CT_ESTABLISHED
    assert eng.counters()["conntrack"]["expired"] == 0
    (entry,) = eng.conntrack_entries()
    last_seen = entry.last_seen_ns
    assert last_seen == T0 + timeout
    # ... and 1 ns past it (measured from the refreshed last_seen) it is gone.
    timeout = {CT_SYN_SENT: 60, CT_ESTABLISHED: 8000, CT_CLOSING: 10, CT_OTHER: 60}[entry.state] * SECOND
    _, reason, _ = run(eng, later, last_seen + timeout + 1)
    assert reason == Reason.NEW_FLOW
    c = eng.counters()["conntrack"]
    assert c["expired"] == 1 and c["entries"] == 1


def test_expired_reply_is_not_translated():
    eng = engine()
    run(eng, eth(udp()), T0)
    chosen = expected_backend((5, 6), CLIENT, DNS_VIP, 50000, 53, PROTO_UDP)
    reply = eth(udp(src=txt(chosen.ip), dst=CLIENT, sport=5353, dport=50000))
    assert run(eng, reply, T0 + 61 * SECOND)[1] == Reason.PASS_NO_SERVICE
    c = eng.counters()["conntrack"]
    assert (c["expired"], c["entries"]) == (1, 0)


def test_earlier_timestamp_never_expires_and_last_seen_is_max():
    eng = engine()
    run(eng, eth(udp()), T0 + 100 * SECOND)
    assert run(eng, eth(udp()), T0)[1] == Reason.CT_ESTABLISHED
    assert eng.conntrack_entries()[0].last_seen_ns == T0 + 100 * SECOND
    assert run(eng, eth(udp()), T0 + 160 * SECOND)[1] == Reason.CT_ESTABLISHED
    assert eng.counters()["conntrack"]["expired"] == 0


def test_tcp_state_machine():
    eng = engine()
    chosen = expected_backend((1, 2, 3, 4), CLIENT, VIP, 40000, 80, PROTO_TCP)

    def reply(flags):
        return eth(tcp(src=txt(chosen.ip), dst=CLIENT, sport=8080, dport=40000, flags=flags))

    def state():
        return eng.conntrack_entries()[0].state

    run(eng, eth(tcp(flags="S")))
    assert state() == CT_SYN_SENT
    run(eng, eth(tcp(flags="S")))  # retransmitted SYN: found, stays SYN_SENT
    assert state() == CT_SYN_SENT
    run(eng, eth(tcp(flags="A")))  # ORIG packets do not establish
    assert state() == CT_SYN_SENT
    run(eng, reply("SA"))
    assert state() == CT_ESTABLISHED
    run(eng, reply("FA"))
    assert state() == CT_CLOSING
    assert run(eng, eth(tcp(flags="A")))[1] == Reason.CT_ESTABLISHED
    assert state() == CT_CLOSING
    assert run(eng, reply("A"))[1] == Reason.CT_REPLY
    assert state() == CT_CLOSING
    # A SYN with ACK set does not reopen; neither does a pure SYN in the reply direction.
    assert run(eng, eth(tcp(flags="SA")))[1] == Reason.CT_ESTABLISHED
    assert run(eng, reply("S"))[1] == Reason.CT_REPLY
    assert state() == CT_CLOSING
    assert eng.counters()["conntrack"]["reopened"] == 0
    assert eng.counters()["conntrack"]["inserts"] == 1


def test_initial_states_and_non_syn_miss():
    cases = [("S", CT_SYN_SENT, 0), ("A", CT_ESTABLISHED, 1), ("PA", CT_ESTABLISHED, 1),
             ("F", CT_CLOSING, 1), ("R", CT_CLOSING, 1), ("SF", CT_CLOSING, 0), ("", CT_ESTABLISHED, 1)]
    for flags, state, miss in cases:
        eng = engine()
        verdict, reason, out = run(eng, eth(tcp(flags=flags)))
        assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW), flags
        assert eng.conntrack_entries()[0].state == state, flags
        assert eng.counters()["conntrack"]["non_syn_miss"] == miss, flags
        assert_checksums_valid(out[14:])


def test_closing_flow_reopened_by_pure_syn_reselects():
    eng = engine()
    run(eng, eth(tcp(flags="S")), T0)
    first = eng.conntrack_entries()[0]
    run(eng, eth(tcp(flags="FA")), T0 + SECOND)
    assert eng.conntrack_entries()[0].state == CT_CLOSING

    # New maps: the service now has other backends (ids 7, 8); the reopened flow selects again.
    maps = make_maps()
    new_backends = maps.backends + [backend(7, "10.244.3.7", 9090), backend(8, "10.244.3.8", 9090)]
    maps = Maps(
        services=[Service(id=1, name="default/web:http", backends=(7, 8))] + maps.services[1:],
        frontends=maps.frontends,
        backends=new_backends,
    )
    eng.load(maps)
    verdict, reason, out = run(eng, eth(tcp(flags="S")), T0 + 2 * SECOND)
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    want_id = select_backend((7, 8), ip4(CLIENT), ip4(VIP), 40000, 80, PROTO_TCP)
    want = new_backends[want_id - 1]
    got = assert_checksums_valid(out[14:])
    assert (got.dst, got[TCP].dport) == (txt(want.ip), 9090)
    (entry,) = eng.conntrack_entries()
    assert entry.backend == want_id and entry.backend != first.backend
    assert entry.state == CT_SYN_SENT and entry.last_seen_ns == T0 + 2 * SECOND
    c = eng.counters()["conntrack"]
    assert (c["reopened"], c["inserts"], c["non_syn_miss"], c["entries"]) == (1, 2, 0, 1)


def test_expired_closing_entry_counts_as_expired_not_reopened():
    eng = engine()
    run(eng, eth(tcp(flags="F")), T0)
    assert run(eng, eth(tcp(flags="S")), T0 + 11 * SECOND)[1] == Reason.NEW_FLOW
    c = eng.counters()["conntrack"]
    assert (c["expired"], c["reopened"]) == (1, 0)


def test_insert_failure_on_reply_tuple_collision_with_reply_tuple():
    maps = make_maps()
    maps = Maps(
        services=maps.services + [Service(id=4, name="default/one", backends=(2,)),
                                  Service(id=5, name="default/two", backends=(2,))],
        frontends=maps.frontends + [Frontend(ip=ip4("10.96.1.1"), port=80, proto=PROTO_TCP, service=4),
                                    Frontend(ip=ip4("10.96.1.2"), port=81, proto=PROTO_TCP, service=5)],
        backends=maps.backends,
    )
    eng = engine(maps=maps)
    assert run(eng, eth(tcp(dst="10.96.1.1", dport=80)))[1] == Reason.NEW_FLOW
    # Same client ip:port to another frontend with the same backend: same reply tuple.
    verdict, reason, out = run(eng, eth(tcp(dst="10.96.1.2", dport=81)))
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    got = assert_checksums_valid(out[14:])
    assert (got.dst, got[TCP].dport) == ("10.244.1.2", 8080)
    c = eng.counters()
    assert (c["conntrack"]["inserts"], c["conntrack"]["insert_failures"], c["conntrack"]["entries"]) == (1, 1, 1)
    assert c["services"][3:] == [1, 1]
    assert c["backends"][1] == 2
    # Replies still belong to the first flow.
    reply = eth(tcp(src="10.244.1.2", dst=CLIENT, sport=8080, dport=40000, flags="SA"))
    got = IP(run(eng, reply)[2][14:])
    assert (got.src, got[TCP].sport) == ("10.96.1.1", 80)
    # The failed flow is still untracked: its next packet is a new flow again.
    assert run(eng, eth(tcp(dst="10.96.1.2", dport=81, flags="A")))[1] == Reason.NEW_FLOW
    assert eng.counters()["conntrack"]["insert_failures"] == 2


def _orig_collision_engine(capacity=DEFAULT_CT_CAPACITY):
    # Service 4's only backend is the client of flow 1 (192.168.1.10:40000); a flow from flow 1's
    # frontend address to service 4's frontend has flow 1's orig tuple as its reply tuple.
    maps = make_maps()
    maps = Maps(
        services=maps.services + [Service(id=4, name="default/odd", backends=(7,))],
        frontends=maps.frontends + [Frontend(ip=ip4("10.96.0.20"), port=80, proto=PROTO_TCP, service=4)],
        backends=maps.backends + [backend(7, CLIENT, 40000)],
    )
    return engine(capacity=capacity, maps=maps)


def test_insert_failure_on_reply_tuple_collision_with_orig_tuple():
    eng = _orig_collision_engine()
    assert run(eng, eth(tcp()))[1] == Reason.NEW_FLOW
    verdict, reason, out = run(eng, eth(tcp(src=VIP, dst="10.96.0.20", sport=80, dport=80)))
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    got = assert_checksums_valid(out[14:])
    assert (got.dst, got[TCP].dport) == (CLIENT, 40000)
    c = eng.counters()["conntrack"]
    assert (c["inserts"], c["insert_failures"], c["entries"]) == (1, 1, 1)


def test_failed_insert_does_not_evict():
    # The collision check comes before eviction (the twin's reading of the spec).
    eng = _orig_collision_engine(capacity=1)
    run(eng, eth(tcp()))
    run(eng, eth(tcp(src=VIP, dst="10.96.0.20", sport=80, dport=80)))
    c = eng.counters()["conntrack"]
    assert (c["evictions"], c["insert_failures"], c["entries"]) == (0, 1, 1)
    assert eng.conntrack_entries()[0].orig[0] == ip4(CLIENT)


def test_load_keeps_conntrack():
    eng = engine()
    run(eng, eth(tcp(flags="S")), T0)
    chosen = expected_backend((1, 2, 3, 4), CLIENT, VIP, 40000, 80, PROTO_TCP)
    # The frontend disappears (service 1 keeps its id but loses its frontend and backends).
    maps = make_maps()
    eng.load(Maps(
        services=[Service(id=1, name="default/web:http", backends=())] + maps.services[1:],
        frontends=maps.frontends[1:],
        backends=maps.backends,
    ))
    assert eng.counters()["conntrack"]["entries"] == 1
    verdict, reason, out = run(eng, eth(tcp(flags="A")), T0 + 1)
    assert (verdict, reason) == (Verdict.DNAT, Reason.CT_ESTABLISHED)
    assert IP(out[14:]).dst == txt(chosen.ip)
    reply = eth(tcp(src=txt(chosen.ip), dst=CLIENT, sport=8080, dport=40000, flags="A"))
    assert run(eng, reply, T0 + 2)[1] == Reason.CT_REPLY
    # New flows to the removed frontend are not service traffic any more.
    assert run(eng, eth(tcp(sport=40001)), T0 + 3)[1] == Reason.PASS_NO_SERVICE
    c = eng.counters()
    assert c["services"][0] == 3
    assert c["reasons"]["NEW_FLOW"] == 1


def test_load_drops_counters_and_ids_without_counterpart():
    eng = engine()
    run(eng, eth(tcp()))
    run(eng, eth(udp()))
    before = eng.counters()
    assert before["services"] == [1, 1, 0]
    eng.load(Maps(services=[Service(id=1, name="a", backends=())], frontends=[], backends=[]))
    # No service is named like an old one: every per-id counter is dropped.
    assert eng.counters()["services"] == [0]
    assert eng.counters()["backends"] == []
    # The TCP entry names no service or backend any more but still translates, unattributed;
    # the UDP entry (service gone) stays until its next packet flushes it.
    tcp_entry, udp_entry = eng.conntrack_entries()
    assert (tcp_entry.orig[4], tcp_entry.service, tcp_entry.backend) == (PROTO_TCP, 0, 0)
    assert (udp_entry.orig[4], udp_entry.service, udp_entry.backend) == (PROTO_UDP, 0, 0)
    assert eng.counters()["conntrack"]["flushed"] == 0
    assert run(eng, eth(tcp(flags="A")))[1] == Reason.CT_ESTABLISHED
    assert run(eng, eth(udp()))[1] == Reason.PASS_NO_SERVICE
    assert eng.counters()["conntrack"]["flushed"] == 1
    assert eng.counters()["services"] == [0]
    eng.load(make_maps())
    assert eng.counters()["services"] == [0, 0, 0]


def test_reject_no_endpoint():
    eng = engine()
    data = eth(tcp(dst=EMPTY_VIP, dport=443))
    verdict, reason, out = run(eng, data)
    assert (verdict, reason) == (Verdict.REJECT, Reason.REJECT_NO_ENDPOINT)
    assert out == data
    c = eng.counters()
    assert c["services"] == [0, 0, 1]
    assert sum(c["backends"]) == 0
    assert c["conntrack"]["entries"] == 0 and c["conntrack"]["inserts"] == 0
    assert c["conntrack"]["non_syn_miss"] == 0
    # Also mid-stream packets: no non-SYN miss is counted for a rejected packet.
    run(eng, eth(tcp(dst=EMPTY_VIP, dport=443, flags="A")))
    assert eng.counters()["conntrack"]["non_syn_miss"] == 0


def test_duplicate_frontend_keys_are_refused_by_the_maps():
    maps = make_maps()
    with pytest.raises(ValueError, match="duplicate frontend"):
        Maps(
            services=maps.services,
            frontends=maps.frontends + [Frontend(ip=ip4(VIP), port=80, proto=PROTO_TCP, service=3)],
            backends=maps.backends,
        )


def test_self_colliding_entry_is_inserted_and_seen_as_orig():
    # Client, frontend and backend all 10.0.0.1:80: the entry's orig and reply tuples are equal.
    maps = Maps(
        services=[Service(id=1, name="x", backends=(1,))],
        frontends=[Frontend(ip=ip4("10.0.0.1"), port=80, proto=PROTO_TCP, service=1)],
        backends=[backend(1, "10.0.0.1", 80)],
    )
    eng = engine(maps=maps)
    data = eth(tcp(src="10.0.0.1", dst="10.0.0.1", sport=80, dport=80))
    verdict, reason, out = run(eng, data)
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    assert eng.counters()["conntrack"]["inserts"] == 1
    assert run(eng, data)[1] == Reason.CT_ESTABLISHED
    assert_checksums_valid(out[14:])


# --------------------------------------------------------------------------- d2. new-flow rate guard


@pytest.mark.parametrize("rate", [-1, MAX_NEW_FLOW_RATE + 1, 1.5, "3", None])
def test_new_flow_rate_must_be_an_integer_in_range(rate):
    with pytest.raises(ValueError, match="new_flow_rate"):
        ReferenceEngine(make_maps(), new_flow_rate=rate)


def test_new_flow_rate_guard_is_off_by_default_and_idle_with_room():
    eng = engine(capacity=2)
    reasons = [run(eng, eth(tcp(sport=port)), T0)[1] for port in range(1000, 1010)]
    assert set(reasons) == {Reason.NEW_FLOW}
    c = eng.counters()["conntrack"]
    assert c["evictions"] == 8 and c["rate_limited"] == 0
    # With room in the table the guard is never asked, whatever its rate.
    eng = ReferenceEngine(make_maps(), ct_capacity=100, new_flow_rate=1)
    assert {run(eng, eth(tcp(sport=port)), T0)[1] for port in range(1000, 1100)} == {Reason.NEW_FLOW}
    assert eng.counters()["conntrack"]["rate_limited"] == 0


def test_new_flow_rate_guard_limits_evictions_from_a_full_table():
    # 2 new flows per second into a full table: one second's burst, then one per half second.
    eng = ReferenceEngine(v2_maps(), ct_capacity=2, new_flow_rate=2)
    go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=1), T0)
    go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=2), T0)  # the table is full now
    got = [go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=port), T0)[1:4:2] for port in (3, 4, 5)]
    assert [reason for reason, _ in got] == [Reason.NEW_FLOW, Reason.NEW_FLOW, Reason.DROP_FLOW_RATE]
    assert got[2][1] == (WEB, 0, KIND["ClusterIP"])  # the frontend's service and kind, no backend
    # Tracked flows are not limited.
    assert go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=4, flags="A"), T0)[1] == Reason.CT_ESTABLISHED
    # An earlier timestamp refills nothing; half a second of packet time buys one more flow.
    assert go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=6), T0 - SECOND)[1] == Reason.DROP_FLOW_RATE
    assert go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=7), T0 + SECOND // 2 - 1)[1] == Reason.DROP_FLOW_RATE
    assert go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=8), T0 + SECOND // 2)[1] == Reason.NEW_FLOW
    # A long pause refills one second's worth only.
    late = T0 + 1000 * SECOND
    got = [go(eng, udp(src=POD_CLIENT, dst="10.96.0.53", sport=port), late)[1] for port in range(10, 14)]
    assert got == [Reason.NEW_FLOW, Reason.NEW_FLOW, Reason.DROP_FLOW_RATE, Reason.DROP_FLOW_RATE]
    c = eng.counters()
    assert c["conntrack"]["rate_limited"] == 5 == c["reasons"]["DROP_FLOW_RATE"]
    assert c["conntrack"]["entries"] == 2 and c["verdicts"]["DROP"] == 5


def test_new_flow_rate_guard_comes_before_affinity_and_after_the_set():
    eng = ReferenceEngine(v2_maps(), ct_capacity=1, new_flow_rate=1)
    go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=1), T0)
    go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=2), T0)  # evicts: the burst is spent
    # A drop decided before the guard is not charged to it.
    assert go(eng, tcp(src=EXT_CLIENT, dst="10.96.0.12"), T0)[1] == Reason.DROP_NO_LOCAL_ENDPOINT
    # Refused by the guard: no affinity entry is written.
    assert go(eng, tcp(src=POD_CLIENT, dst="10.96.0.15", sport=3), T0)[1:4:2] == (
        Reason.DROP_FLOW_RATE, (STICKY, 0, KIND["ClusterIP"]))
    assert eng.affinity_entries() == [] and eng.counters()["conntrack"]["rate_limited"] == 1


# --------------------------------------------------------------------------- batch interface


def test_batch_in_shared_buffer():
    eng = engine()
    packets = [eth(tcp(sport=5000 + n)) for n in range(5)] + [eth(udp()), b"\x00" * 10, eth(tcp(dst=EMPTY_VIP, dport=443))]
    buf = bytearray()
    offsets, lengths = array("Q"), array("I")
    for packet in packets:
        buf += b"\xEE" * 3  # gaps between packets must not be touched
        offsets.append(len(buf))
        lengths.append(len(packet))
        buf += packet
    buf += b"\xEE" * 3
    stamps = array("Q", [T0 + n for n in range(len(packets))])
    verdicts = array("B", [255] * len(packets))
    reasons = array("B", [255] * len(packets))
    eng.process(buf, offsets, lengths, stamps, verdicts, reasons, 1)
    assert list(verdicts) == [1] * 6 + [3, 4]
    assert list(reasons) == [Reason.NEW_FLOW] * 6 + [Reason.DROP_TRUNCATED, Reason.REJECT_NO_ENDPOINT]
    for n, (offset, length) in enumerate(zip(offsets, lengths)):
        assert buf[offset - 3: offset] == b"\xEE" * 3
        single = engine().process_packet(packets[n], T0 + n)[2]
        assert bytes(buf[offset: offset + length]) == single
    assert buf[-3:] == b"\xEE" * 3
    c = eng.counters()
    assert c["verdicts"] == {"PASS": 0, "DNAT": 6, "REVNAT": 0, "DROP": 1, "REJECT": 1}


def test_batch_argument_errors():
    eng = engine()
    data = bytearray(eth(tcp()))
    one_q, one_b = array("Q", [0]), array("B", [0])
    with pytest.raises(ValueError):  # packet past the end of the buffer
        eng.process(data, array("Q", [1]), array("I", [len(data)]), one_q, one_b, array("B", [0]), 1)
    with pytest.raises(ValueError):  # array lengths disagree
        eng.process(data, array("Q", [0, 0]), array("I", [len(data)]), one_q, one_b, array("B", [0]), 1)
    with pytest.raises(TypeError):  # read-only buffer
        eng.process(bytes(data), one_q, array("I", [len(data)]), one_q, one_b, array("B", [0]), 1)
    assert eng.counters()["verdicts"] == {"PASS": 0, "DNAT": 0, "REVNAT": 0, "DROP": 0, "REJECT": 0}
    assert bytes(data) == eth(tcp())
    eng.process(data, array("Q"), array("I"), array("Q"), array("B"), array("B"), 1)  # empty batch


def test_counters_shape():
    c = engine().counters()
    assert set(c) == {"verdicts", "reasons", "services", "backends", "conntrack", "affinity", "fragments"}
    assert c["verdicts"] == {v.name: 0 for v in Verdict}
    assert c["reasons"] == {r.name: 0 for r in Reason}
    assert c["services"] == [0, 0, 0] and c["backends"] == [0] * 6
    assert list(c["conntrack"]) == [
        "inserts", "evictions", "expired", "reopened", "non_syn_miss", "insert_failures",
        "flushed", "snat_failures", "snat_unavailable", "rate_limited", "entries",
    ]
    assert set(c["conntrack"].values()) == {0}
    assert c["affinity"] == {"evictions": 0, "expired": 0, "entries": 0}
    assert list(c["fragments"]) == ["tracked", "evictions", "followed", "not_found", "entries"]
    assert set(c["fragments"].values()) == {0}


# --------------------------------------------------------------------------- properties

LINKTYPES = st.one_of(st.sampled_from([0, 1, 101, 113, 228, 276]), st.integers(-(2**31), 2**31 - 1))
HEADERS = {
    0: struct.pack("<I", 2),
    1: bytes(Ether(src=MAC_A, dst=MAC_B, type=0x0800)),
    101: b"",
    113: bytes(CookedLinux(proto=0x0800)),
    228: b"",
    276: bytes(CookedLinuxV2(proto=0x0800)),
}
def _seed_backend_ip() -> str:
    return txt(expected_backend((1, 2, 3, 4), CLIENT, VIP, 40000, 80, PROTO_TCP).ip)


SEED_FRAGMENTS = [bytes(f) for f in fragment(IP(src=CLIENT, dst=DNS_VIP, id=77) / UDP(sport=50000, dport=53)
                                             / Raw(b"f" * 40), fragsize=24)]
SEEDS = [
    bytes(tcp()), bytes(tcp(flags="A")), bytes(udp()), bytes(udp(chksum=0)),
    bytes(tcp(dst=EMPTY_VIP, dport=443)), bytes(IP(src=CLIENT, dst=VIP, options=b"\x01" * 4) / TCP(dport=80)),
    bytes(sctp()), bytes(sctp(src=txt(BACKEND_BY_ID[1].ip), dst=CLIENT, sport=8080, dport=40000)),
    # Fragments of one datagram, and ICMP errors about the tcp() flow from either side.
    *SEED_FRAGMENTS,
    bytes(IP(src=_seed_backend_ip(), dst=CLIENT) / ICMP(type=3, code=3)
          / Raw(bytes(tcp(dst=_seed_backend_ip(), dport=8080))[:48])),
    bytes(IP(src=CLIENT, dst=VIP) / ICMP(type=11) / Raw(bytes(tcp(src=VIP, dst=CLIENT, sport=80, dport=40000))[:28])),
]


@st.composite
def mutated_packets(draw):
    """Mostly-valid service packets with random byte flips and cuts (reach deep into the parser)."""
    linktype = draw(st.sampled_from(sorted(HEADERS)))
    data = bytearray(HEADERS[linktype] + draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        index = draw(st.integers(0, len(data) - 1))
        data[index] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return linktype, bytes(data[:cut])


PACKETS = st.one_of(st.tuples(LINKTYPES, st.binary(max_size=120)), mutated_packets())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.lists(PACKETS, min_size=1, max_size=6),
    prefix=st.binary(max_size=8),
    gap=st.binary(max_size=4),
    stamps=st.lists(st.integers(0, 2**64 - 1), min_size=6, max_size=6),
    capacity=st.integers(1, 4),
)
def test_property_never_raises_and_stays_in_bounds(batch, prefix, gap, stamps, capacity):
    eng = ReferenceEngine(make_maps(), ct_capacity=capacity)
    # One packet at a time through a shared buffer (each packet has its own link type).
    for n, (linktype, data) in enumerate(batch):
        buf = bytearray(prefix + data + gap)
        before = bytes(buf)
        verdicts, reasons = array("B", [255]), array("B", [255])
        eng.process(buf, array("Q", [len(prefix)]), array("I", [len(data)]), array("Q", [stamps[n]]),
                    verdicts, reasons, linktype)
        reason = Reason(reasons[0])
        verdict = Verdict(verdicts[0])
        assert VERDICT_OF_REASON[reason] is verdict
        assert buf[: len(prefix)] == before[: len(prefix)]
        assert buf[len(prefix) + len(data):] == before[len(prefix) + len(data):]
        if verdict in (Verdict.PASS, Verdict.DROP, Verdict.REJECT):
            assert buf == before
        else:
            assert reason in (Reason.NEW_FLOW, Reason.CT_ESTABLISHED, Reason.CT_REPLY, Reason.FRAG_DNAT,
                              Reason.FRAG_REVNAT, Reason.ICMP_ERROR_FORWARD, Reason.ICMP_ERROR_REPLY)
    c = eng.counters()
    assert sum(c["verdicts"].values()) == len(batch) == sum(c["reasons"].values())
    assert c["conntrack"]["entries"] <= capacity


@settings(max_examples=150, deadline=None)
@given(st.lists(mutated_packets(), min_size=1, max_size=6), st.binary(max_size=5))
def test_property_batch_equals_one_by_one(packets, filler):
    """A batch in one shared buffer gives the same results as the packets processed one by one."""
    linktype = 1
    packets = [HEADERS[1] + data[len(HEADERS[lt]):] if lt != 1 else data for lt, data in packets]
    buf, offsets, lengths = bytearray(), array("Q"), array("I")
    for data in packets:
        buf += filler
        offsets.append(len(buf))
        lengths.append(len(data))
        buf += data
    buf += filler
    original = bytes(buf)
    count = len(packets)
    verdicts, reasons = array("B", [0] * count), array("B", [0] * count)
    batch_engine = ReferenceEngine(make_maps(), ct_capacity=2)
    batch_engine.process(buf, offsets, lengths, array("Q", [T0 + i for i in range(count)]), verdicts, reasons, linktype)
    single_engine = ReferenceEngine(make_maps(), ct_capacity=2)
    expected = bytearray(original)
    for i, data in enumerate(packets):
        verdict, reason, out = single_engine.process_packet(data, T0 + i, linktype)
        assert (verdicts[i], reasons[i]) == (verdict, reason)
        expected[offsets[i]: offsets[i] + lengths[i]] = out
    assert buf == expected
    assert batch_engine.counters() == single_engine.counters()


def test_checksum_update_runs_on_every_word_even_unchanged():
    """The twin's reading of "one 16-bit word at a time": every word of a rewritten field goes
    through HC' = ~(~HC + ~m + m'), changed or not. Visible only on a (bogus) 0xFFFF checksum,
    which an unchanged word turns into 0x0000."""
    maps = Maps(
        services=[Service(id=1, name="same", backends=(1,))],
        frontends=[Frontend(ip=ip4("10.0.0.1"), port=80, proto=PROTO_TCP, service=1)],
        backends=[backend(1, "10.0.0.1", 80)],
    )
    data = bytearray(eth(tcp(dst="10.0.0.1")))
    data[14 + 10: 14 + 12] = b"\xff\xff"
    data[14 + 20 + 16: 14 + 20 + 18] = b"\xff\xff"
    verdict, _, out = run(engine(maps=maps), bytes(data))
    assert verdict == Verdict.DNAT
    assert out[14 + 10: 14 + 12] == b"\x00\x00"
    assert out[14 + 20 + 16: 14 + 20 + 18] == b"\x00\x00"
    assert out[:14 + 10] == data[:14 + 10] and out[14 + 12: 14 + 20 + 16] == data[14 + 12: 14 + 20 + 16]


# =========================================================================== Maps v2: new flows
#
# A node (primary 192.168.0.1, also 192.168.0.2; pod CIDR 10.244.0.0/16) with every frontend kind,
# traffic policies, source ranges, session affinity and a node.service_ips list.

NODE_IP = "192.168.0.1"
NODE_IP2 = "192.168.0.2"
POD_CLIENT = "10.244.9.9"
EXT_CLIENT = "198.51.100.7"  # inside the LoadBalancer source range 198.51.100.0/24
FAR_CLIENT = "172.16.5.5"  # outside it
LB_RANGES = ((ip4("198.51.100.0"), 24),)

WEB, REMOTE, DNS, EMPTY, STICKY, SINGLE, WEB_LOCAL = range(1, 8)  # service ids
KIND = {"ClusterIP": 1, "NodePort": 2, "LoadBalancer": 3, "ExternalIP": 4}
MASQ = 0x08

V2_BACKENDS = [
    backend(1, "10.244.1.1", 8080),  # on this node
    backend(2, "10.244.2.2", 8080),
    backend(3, "10.244.3.3", 8080),
    backend(4, "10.244.1.4", 5353),  # on this node
    backend(5, "10.244.2.5", 5353),
    backend(6, "10.244.3.6", 5353),  # terminating: serving, not selectable
]


def fe(ip, port, service, kind="ClusterIP", proto=PROTO_TCP, local=False, ranges=()):
    return Frontend(ip=ip4(ip), port=port, proto=proto, service=service, kind=kind,
                    local_policy=local, source_ranges=ranges)


def v2_maps(**node) -> Maps:
    view = {"primary_ip": ip4(NODE_IP), "local_ips": (ip4(NODE_IP), ip4(NODE_IP2)),
            "pod_cidrs": ((ip4("10.244.0.0"), 16),), "masquerade_all": False,
            "service_ips": tuple(ip4(f"10.96.0.{n}") for n in (10, 12, 15, 16, 17, 53, 99))}
    view.update(node)
    return Maps(
        services=[
            Service(WEB, "default/web:http", (1, 2, 3), local_backends=(1,), serving=(1, 2, 3)),
            Service(REMOTE, "default/remote:http", (2, 3), local_backends=(), serving=(2, 3)),
            Service(DNS, "kube-system/dns:dns", (4, 5), local_backends=(4,), serving=(4, 5, 6)),
            Service(EMPTY, "default/empty:https", ()),
            Service(STICKY, "default/sticky:http", (1, 2, 3), local_backends=(1,), serving=(1, 2, 3),
                    affinity_timeout_s=10),
            Service(SINGLE, "default/single:http", (2,), serving=(2,)),
            Service(WEB_LOCAL, "default/web-local:http", (1, 2, 3), local_backends=(1,), serving=(1, 2, 3)),
        ],
        frontends=[
            fe("10.96.0.10", 80, WEB),
            fe(NODE_IP, 30080, WEB, "NodePort"),
            fe("203.0.113.10", 80, WEB, "LoadBalancer", ranges=LB_RANGES),
            fe("198.51.100.200", 80, WEB, "ExternalIP"),
            fe("10.96.0.12", 80, REMOTE, local=True),  # internalTrafficPolicy Local
            fe(NODE_IP, 30082, REMOTE, "NodePort", local=True),
            fe("10.96.0.53", 53, DNS, proto=PROTO_UDP),
            fe(NODE_IP, 30053, DNS, "NodePort", proto=PROTO_UDP),
            fe("10.96.0.99", 443, EMPTY),
            fe("203.0.113.99", 443, EMPTY, "LoadBalancer", ranges=LB_RANGES),
            fe(NODE_IP, 30099, EMPTY, "NodePort", local=True),
            fe("10.96.0.15", 80, STICKY),
            fe(NODE_IP, 30015, STICKY, "NodePort"),
            fe("10.96.0.16", 80, SINGLE),
            fe(NODE_IP, 30016, SINGLE, "NodePort"),
            fe("10.96.0.17", 80, WEB_LOCAL),
            fe(NODE_IP, 30090, WEB_LOCAL, "NodePort", local=True),
            fe("203.0.113.11", 80, WEB_LOCAL, "LoadBalancer", local=True),
            fe("198.51.100.201", 80, WEB_LOCAL, "ExternalIP", local=True),
        ],
        backends=list(V2_BACKENDS),
        node=NodeView(**view),
    )


def v2_engine(capacity: int = DEFAULT_CT_CAPACITY, **node) -> ReferenceEngine:
    return ReferenceEngine(v2_maps(**node), ct_capacity=capacity)


def pick(ids, src, dst, sport, dport, proto=PROTO_TCP, table=V2_BACKENDS) -> Backend:
    """The spec's hash choice among backend ids `ids` (independent spelling, see expected_backend)."""
    by_id = {b.id: b for b in table}
    mask = (1 << 64) - 1

    def mix(x):
        x ^= x >> 33
        x = x * 0xFF51AFD7ED558CCD % (1 << 64)
        x ^= x >> 33
        x = x * 0xC4CEB9FE1A85EC53 % (1 << 64)
        return x ^ (x >> 33)

    h = mix((((spec_fold(src) << 32) | spec_fold(dst)) ^ mix((sport << 24) | (dport << 8) | proto)) & mask)
    return by_id[ids[((h & 0xFFFFFFFF) * len(ids)) >> 32]]


def go(eng: ReferenceEngine, packet: Packet, ts: int = T0):
    """One Ethernet frame through the twin: (verdict, reason, IP layer of the output, trace)."""
    data = eth(packet)
    verdict, reason, out, trace = eng.trace_packet(data, ts)
    assert VERDICT_OF_REASON[reason] is verdict
    assert out[:14] == data[:14]
    if verdict in (Verdict.PASS, Verdict.DROP, Verdict.REJECT):
        assert out == data, "PASS, DROP and REJECT never modify the packet"
    else:
        assert_checksums_valid(out[14:])
    return verdict, reason, IP(out[14:]), trace


def endpoints(got: IP) -> tuple[str, int, str, int]:
    l4 = got[TCP] if TCP in got else got[UDP]
    return got.src, l4.sport, got.dst, l4.dport


# --------------------------------------------------------------------------- a. frontend lookup


def test_reject_unknown_port_on_a_service_ip():
    eng = v2_engine()
    for packet in (
        tcp(src=POD_CLIENT, dst="10.96.0.10", dport=81),  # no such port
        udp(src=POD_CLIENT, dst="10.96.0.10", dport=80),  # the port is TCP only
        tcp(src=POD_CLIENT, dst="10.96.0.53", dport=53),  # the port is UDP only
        tcp(src=EXT_CLIENT, dst="10.96.0.99", dport=80),  # a service without endpoints, other port
    ):
        verdict, reason, _, trace = go(eng, packet)
        assert (verdict, reason, trace) == (Verdict.REJECT, Reason.REJECT_UNKNOWN_PORT, (0, 0, 0))
    # Addresses outside node.service_ips pass, even the node's own or a LoadBalancer IP.
    for packet in (tcp(src=POD_CLIENT, dst="10.96.0.11"), tcp(src=EXT_CLIENT, dst=NODE_IP, dport=31000),
                   tcp(src=EXT_CLIENT, dst="203.0.113.10", dport=81)):
        assert go(eng, packet)[1] == Reason.PASS_NO_SERVICE
    c = eng.counters()
    assert (c["verdicts"]["REJECT"], c["reasons"]["REJECT_UNKNOWN_PORT"]) == (4, 4)
    assert sum(c["services"]) == 0 and c["conntrack"]["entries"] == 0


def test_tracked_flow_goes_before_reject_unknown_port():
    eng = v2_engine()
    assert go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10"))[1] == Reason.NEW_FLOW
    maps = v2_maps()
    maps.frontends = [f for f in maps.frontends if f.ip != ip4("10.96.0.10")]
    eng.load(maps)
    assert go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", flags="A"))[1] == Reason.CT_ESTABLISHED
    assert go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=40001))[1] == Reason.REJECT_UNKNOWN_PORT


# --------------------------------------------------------------------------- b. source ranges


def test_load_balancer_source_ranges():
    eng = v2_engine()
    verdict, reason, got, trace = go(eng, tcp(src=EXT_CLIENT, dst="203.0.113.10"))
    assert (verdict, reason, got.src) == (Verdict.DNAT, Reason.NEW_FLOW, NODE_IP)
    assert trace[0] == WEB and trace[2] == KIND["LoadBalancer"] | MASQ
    # Outside the ranges: dropped, pods included; attributed to the service and frontend kind.
    for client in (FAR_CLIENT, POD_CLIENT, NODE_IP2):
        verdict, reason, _, trace = go(eng, tcp(src=client, dst="203.0.113.10"))
        assert (verdict, reason, trace) == (Verdict.DROP, Reason.DROP_SOURCE_RANGE, (WEB, 0, KIND["LoadBalancer"]))
    # NodePorts and external IPs of the same service ignore the ranges.
    assert go(eng, tcp(src=FAR_CLIENT, dst=NODE_IP, dport=30080))[1] == Reason.NEW_FLOW
    assert go(eng, tcp(src=FAR_CLIENT, dst="198.51.100.200"))[1] == Reason.NEW_FLOW
    # The range check comes before the endpoint check.
    assert go(eng, tcp(src=FAR_CLIENT, dst="203.0.113.99", dport=443))[1] == Reason.DROP_SOURCE_RANGE
    assert go(eng, tcp(src=EXT_CLIENT, dst="203.0.113.99", dport=443))[1] == Reason.REJECT_NO_ENDPOINT
    c = eng.counters()
    assert c["reasons"]["DROP_SOURCE_RANGE"] == 4
    assert c["services"][WEB - 1] == 6 and c["services"][EMPTY - 1] == 2
    assert c["conntrack"]["entries"] == 3 and c["conntrack"]["non_syn_miss"] == 0


@pytest.mark.parametrize(
    "ranges, allowed, refused",
    [
        (((ip4("10.0.0.0"), 8), (ip4("192.0.2.5"), 32)),
         ["10.0.0.0", "10.255.255.255", "192.0.2.5"], ["11.0.0.1", "9.255.255.255", "192.0.2.4", "192.0.2.6"]),
        (((ip4("10.1.2.3"), 8),), ["10.200.0.1"], ["11.1.2.3"]),  # host bits of the network are ignored
        (((0, 0),), ["0.0.0.0", "255.255.255.255", "10.1.1.1"], []),  # /0 allows every source
        (((ip4("128.0.0.0"), 1),), ["128.0.0.1", "255.1.1.1"], ["127.255.255.255", "1.1.1.1"]),
    ],
)
def test_source_range_matching(ranges, allowed, refused):
    maps = Maps(services=[Service(1, "ns/lb", (1,))],
                frontends=[fe("203.0.113.1", 80, 1, "LoadBalancer", ranges=ranges)],
                backends=[backend(1, "10.244.1.1", 8080)])
    eng = ReferenceEngine(maps)
    for n, client in enumerate(allowed):
        assert go(eng, tcp(src=client, dst="203.0.113.1", sport=1000 + n))[1] == Reason.NEW_FLOW, client
    for n, client in enumerate(refused):
        assert go(eng, tcp(src=client, dst="203.0.113.1", sport=2000 + n))[1] == Reason.DROP_SOURCE_RANGE, client


@pytest.mark.parametrize("length", [-1, 33, 64])
def test_bad_prefix_lengths_are_refused(length):
    good = v2_maps()
    bad_range = Maps(services=good.services, backends=good.backends, node=good.node,
                     frontends=[fe("203.0.113.1", 80, 1, "LoadBalancer", ranges=((ip4("10.0.0.0"), length),))])
    bad_cidr = v2_maps(pod_cidrs=((ip4("10.244.0.0"), length),))
    for maps in (bad_range, bad_cidr):
        with pytest.raises(ValueError, match="prefix length"):
            ReferenceEngine(maps)
        eng = ReferenceEngine(good)
        go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10"))
        with pytest.raises(ValueError, match="prefix length"):
            eng.load(maps)
        # A refused load changes nothing.
        assert go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", flags="A"))[1] == Reason.CT_ESTABLISHED
        assert eng.counters()["services"][WEB - 1] == 2


# --------------------------------------------------------------------------- c. no endpoint


def test_reject_no_endpoint_on_every_frontend_kind_and_before_local_policy():
    eng = v2_engine()
    for packet, kind in (
        (tcp(src=POD_CLIENT, dst="10.96.0.99", dport=443), "ClusterIP"),
        (tcp(src=EXT_CLIENT, dst="203.0.113.99", dport=443), "LoadBalancer"),
        (tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30099, flags="A"), "NodePort"),  # Local policy too
    ):
        verdict, reason, _, trace = go(eng, packet)
        assert (verdict, reason, trace) == (Verdict.REJECT, Reason.REJECT_NO_ENDPOINT, (EMPTY, 0, KIND[kind]))
    c = eng.counters()
    assert c["services"][EMPTY - 1] == 3 and c["verdicts"]["REJECT"] == 3
    assert c["conntrack"]["non_syn_miss"] == 0 and c["conntrack"]["entries"] == 0


# --------------------------------------------------------------------------- d. sets and masquerade


@pytest.mark.parametrize(
    "client, node, masq",
    [
        (POD_CLIENT, {}, False),  # pod traffic keeps its source
        (NODE_IP2, {}, True),  # the node itself
        (EXT_CLIENT, {}, True),  # anything else
        (POD_CLIENT, {"masquerade_all": True}, True),
        (EXT_CLIENT, {"pod_cidrs": ()}, False),  # no clusterCIDR: nothing is known to be non-pod
        (NODE_IP2, {"pod_cidrs": ()}, False),
        (EXT_CLIENT, {"pod_cidrs": (), "masquerade_all": True}, True),
        (NODE_IP, {"pod_cidrs": ((ip4("192.168.0.0"), 24),)}, False),  # pod class wins over node
    ],
)
def test_cluster_ip_source_classes(client, node, masq):
    eng = v2_engine(**node)
    verdict, reason, got, trace = go(eng, tcp(src=client, dst="10.96.0.10", sport=40000))
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    want = pick((1, 2, 3), client, "10.96.0.10", 40000, 80)
    assert endpoints(got) == ((NODE_IP if masq else client), 40000, txt(want.ip), 8080)
    assert trace == (WEB, want.id, KIND["ClusterIP"] | (MASQ if masq else 0))
    (entry,) = eng.conntrack_entries()
    assert entry.masqueraded is masq and entry.kind == KIND["ClusterIP"]
    assert (entry.snat_ip, entry.snat_port) == ((ip4(NODE_IP), 40000) if masq else (0, 0))


@pytest.mark.parametrize("client", [POD_CLIENT, NODE_IP2, EXT_CLIENT, FAR_CLIENT])
@pytest.mark.parametrize("dst, dport, kind", [(NODE_IP, 30080, "NodePort"), ("198.51.100.200", 80, "ExternalIP"),
                                              ("203.0.113.10", 80, "LoadBalancer")])
def test_external_kinds_with_cluster_policy_always_masquerade(client, dst, dport, kind):
    eng = v2_engine()
    verdict, reason, got, trace = go(eng, tcp(src=client, dst=dst, dport=dport, sport=41000))
    if kind == "LoadBalancer" and client != EXT_CLIENT:
        assert (verdict, reason) == (Verdict.DROP, Reason.DROP_SOURCE_RANGE)
        return
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    want = pick((1, 2, 3), client, dst, 41000, dport)
    assert endpoints(got) == (NODE_IP, 41000, txt(want.ip), 8080)
    assert trace == (WEB, want.id, KIND[kind] | MASQ)


@pytest.mark.parametrize("dst, dport, kind", [(NODE_IP, 30090, "NodePort"), ("198.51.100.201", 80, "ExternalIP"),
                                              ("203.0.113.11", 80, "LoadBalancer")])
def test_external_local_policy_by_source_class(dst, dport, kind):
    eng = v2_engine()
    seen = {"pod": set(), "node": set()}
    for port in range(42000, 42040):
        # A pod short-circuits to the cluster set, source kept.
        _, reason, got, trace = go(eng, tcp(src=POD_CLIENT, dst=dst, dport=dport, sport=port))
        want = pick((1, 2, 3), POD_CLIENT, dst, port, dport)
        assert (reason, endpoints(got)) == (Reason.NEW_FLOW, (POD_CLIENT, port, txt(want.ip), 8080))
        assert trace == (WEB_LOCAL, want.id, KIND[kind])
        seen["pod"].add(want.id)
        # The node itself: cluster set, masqueraded.
        _, reason, got, trace = go(eng, tcp(src=NODE_IP2, dst=dst, dport=dport, sport=port))
        want = pick((1, 2, 3), NODE_IP2, dst, port, dport)
        assert (reason, endpoints(got)) == (Reason.NEW_FLOW, (NODE_IP, port, txt(want.ip), 8080))
        assert trace == (WEB_LOCAL, want.id, KIND[kind] | MASQ)
        seen["node"].add(want.id)
        # Anything else: the local set only, client IP preserved.
        _, reason, got, trace = go(eng, tcp(src=EXT_CLIENT, dst=dst, dport=dport, sport=port))
        assert (reason, endpoints(got)) == (Reason.NEW_FLOW, (EXT_CLIENT, port, "10.244.1.1", 8080))
        assert trace == (WEB_LOCAL, 1, KIND[kind])
    assert seen == {"pod": {1, 2, 3}, "node": {1, 2, 3}}
    # The service's ClusterIP (policy Cluster) is unaffected: cluster set, masqueraded for non-pods.
    _, _, got, trace = go(eng, tcp(src=EXT_CLIENT, dst="10.96.0.17", sport=43000))
    assert got.src == NODE_IP and trace[2] == KIND["ClusterIP"] | MASQ


def test_drop_no_local_endpoint():
    eng = v2_engine()
    # internalTrafficPolicy Local, no endpoint on this node: dropped for every source.
    for client in (POD_CLIENT, NODE_IP2, EXT_CLIENT):
        verdict, reason, _, trace = go(eng, tcp(src=client, dst="10.96.0.12"))
        assert (verdict, reason, trace) == (Verdict.DROP, Reason.DROP_NO_LOCAL_ENDPOINT, (REMOTE, 0, KIND["ClusterIP"]))
    # externalTrafficPolicy Local: external clients dropped; pods and the node use the cluster set.
    verdict, reason, _, trace = go(eng, tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30082, flags="A"))
    assert (verdict, reason, trace) == (Verdict.DROP, Reason.DROP_NO_LOCAL_ENDPOINT, (REMOTE, 0, KIND["NodePort"]))
    _, reason, got, trace = go(eng, tcp(src=POD_CLIENT, dst=NODE_IP, dport=30082))
    want = pick((2, 3), POD_CLIENT, NODE_IP, 40000, 30082)
    assert (reason, endpoints(got), trace) == (Reason.NEW_FLOW, (POD_CLIENT, 40000, txt(want.ip), 8080),
                                               (REMOTE, want.id, KIND["NodePort"]))
    _, reason, got, _ = go(eng, tcp(src=NODE_IP2, dst=NODE_IP, dport=30082))
    assert reason == Reason.NEW_FLOW and got.src == NODE_IP
    c = eng.counters()
    assert c["reasons"]["DROP_NO_LOCAL_ENDPOINT"] == 4 and c["services"][REMOTE - 1] == 6
    assert c["conntrack"]["inserts"] == 2 and c["conntrack"]["non_syn_miss"] == 0


def test_internal_local_policy_uses_the_local_set():
    maps = v2_maps()
    maps.frontends = [fe("10.96.0.10", 80, WEB, local=True) if f.ip == ip4("10.96.0.10") else f
                      for f in maps.frontends]
    eng = ReferenceEngine(maps)
    for port in range(44000, 44020):
        _, reason, got, trace = go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=port))
        assert (reason, got.dst, got.src, trace) == (Reason.NEW_FLOW, "10.244.1.1", POD_CLIENT, (WEB, 1, 1))


# --------------------------------------------------------------------------- masquerade rewrite


def test_masquerade_tcp_forward_reply_and_established():
    eng = v2_engine()
    want = pick((1, 2, 3), EXT_CLIENT, NODE_IP, 40000, 30080)
    syn = eth(tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30080, flags="S", payload=b"hello"))
    verdict, reason, out, trace = eng.trace_packet(syn, T0)
    assert (verdict, reason, trace) == (Verdict.DNAT, Reason.NEW_FLOW, (WEB, want.id, KIND["NodePort"] | MASQ))
    got = assert_checksums_valid(out[14:])
    assert endpoints(got) == (NODE_IP, 40000, txt(want.ip), 8080)
    assert got[Raw].load == b"hello" and out[:14] == syn[:14]
    (entry,) = eng.conntrack_entries()
    assert entry.orig == (ip4(EXT_CLIENT), ip4(NODE_IP), 40000, 30080, PROTO_TCP)
    assert entry.reply == (want.ip, ip4(NODE_IP), 8080, 40000, PROTO_TCP)
    assert (entry.snat_ip, entry.snat_port, entry.kind, entry.service, entry.backend) == (
        ip4(NODE_IP), 40000, KIND["NodePort"], WEB, want.id)

    # The backend answers the node's address; the reply goes back from the NodePort to the client.
    synack = tcp(src=txt(want.ip), dst=NODE_IP, sport=8080, dport=40000, flags="SA", payload=b"x")
    verdict, reason, got, trace = go(eng, synack, T0 + 1)
    assert (verdict, reason, trace) == (Verdict.REVNAT, Reason.CT_REPLY, (WEB, want.id, KIND["NodePort"] | MASQ))
    assert endpoints(got) == (NODE_IP, 30080, EXT_CLIENT, 40000)
    assert eng.conntrack_entries()[0].state == CT_ESTABLISHED

    verdict, reason, got, trace = go(eng, tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30080, flags="A"), T0 + 2)
    assert (verdict, reason) == (Verdict.DNAT, Reason.CT_ESTABLISHED)
    assert endpoints(got) == (NODE_IP, 40000, txt(want.ip), 8080)
    # The client-side tuple answered by the backend without masquerade is not this flow.
    assert go(eng, tcp(src=txt(want.ip), dst=EXT_CLIENT, sport=8080, dport=40000, flags="A"))[1] == Reason.PASS_NO_SERVICE
    c = eng.counters()
    assert c["backends"][want.id - 1] == 3 and c["services"][WEB - 1] == 3


@pytest.mark.parametrize("chksum", [None, 0])
def test_masquerade_udp_forward_and_reply(chksum):
    eng = v2_engine()
    want = pick((4, 5), EXT_CLIENT, NODE_IP, 50000, 30053, PROTO_UDP)
    query = udp(src=EXT_CLIENT, dst=NODE_IP, dport=30053, chksum=chksum)
    _, reason, got, trace = go(eng, query)
    assert (reason, trace) == (Reason.NEW_FLOW, (DNS, want.id, KIND["NodePort"] | MASQ))
    assert endpoints(got) == (NODE_IP, 50000, txt(want.ip), 5353)
    assert (got[UDP].chksum == 0) is (chksum == 0)
    answer = udp(src=txt(want.ip), dst=NODE_IP, sport=5353, dport=50000, payload=b"answer", chksum=chksum)
    _, reason, got, _ = go(eng, answer, T0 + 1)
    assert reason == Reason.CT_REPLY
    assert endpoints(got) == (NODE_IP, 30053, EXT_CLIENT, 50000)
    assert (got[UDP].chksum == 0) is (chksum == 0)


def test_masquerade_udp_computed_zero_checksum_is_written_as_ffff():
    want = pick((4, 5), EXT_CLIENT, NODE_IP, 50000, 30053, PROTO_UDP)
    # A payload word that makes the fully rewritten datagram's checksum compute to 0.
    probe = IP(bytes(udp(src=NODE_IP, dst=txt(want.ip), sport=50000, dport=5353, payload=b"\x00\x00")))
    payload = struct.pack("!H", probe[UDP].chksum)
    original = udp(src=EXT_CLIENT, dst=NODE_IP, dport=30053, payload=payload)
    assert IP(bytes(original))[UDP].chksum not in (0, 0xFFFF)
    _, reason, got, _ = go(v2_engine(), original)
    assert reason == Reason.NEW_FLOW and got[UDP].chksum == 0xFFFF


def test_masquerade_udp_intermediate_zero_checksum_keeps_updating():
    """A checksum passing through 0 between the destination and the source updates is still a
    checksum: only the original value 0 means "none", and 0 -> 0xFFFF happens once at the end."""
    want = pick((4, 5), EXT_CLIENT, NODE_IP, 50000, 30053, PROTO_UDP)
    base = IP(bytes(udp(src=EXT_CLIENT, dst=NODE_IP, dport=30053, payload=b"\x00\x00")))[UDP].chksum

    def words(ip):
        return [(ip4(ip) >> 16) & 0xFFFF, ip4(ip) & 0xFFFF]

    old, new = words(NODE_IP) + [30053], words(txt(want.ip)) + [5353]
    for word in range(1, 0x10000):
        checksum = _csum_update_word(base, 0, word)  # the original with payload `word`
        after_dst = checksum
        for m, m2 in zip(old, new):
            after_dst = _csum_update_word(after_dst, m, m2)
        if after_dst == 0 and checksum not in (0, 0xFFFF):
            break
    else:
        pytest.fail("no payload word found")
    original = udp(src=EXT_CLIENT, dst=NODE_IP, dport=30053, payload=struct.pack("!H", word))
    assert IP(bytes(original))[UDP].chksum == checksum
    _, reason, got, _ = go(v2_engine(), original)  # go() checks the checksums
    assert reason == Reason.NEW_FLOW and got[UDP].chksum not in (0,)
    assert endpoints(got) == (NODE_IP, 50000, txt(want.ip), 5353)


# --------------------------------------------------------------------------- f-h. hairpin, SNAT ports


def test_next_snat_port():
    assert [next_snat_port(p) for p in (0, 80, 1023, 1024, 40000, 65534, 65535)] == [
        1, 81, 1024, 1025, 40001, 65535, 1024]
    assert SNAT_TRIES == 64


def test_snat_port_collisions_walk_to_the_next_free_port():
    eng = v2_engine()
    b = "10.244.2.2"

    def open_flow(client, port):
        _, reason, got, _ = go(eng, tcp(src=client, dst=NODE_IP, dport=30016, sport=port))
        assert reason == Reason.NEW_FLOW and got.src == NODE_IP and got.dst == b
        return got[TCP].sport

    # Two clients, same source port, same backend: the second one gets the next port.
    assert open_flow(EXT_CLIENT, 40000) == 40000
    assert open_flow("198.51.100.8", 40000) == 40001
    assert open_flow(FAR_CLIENT, 40001) == 40002  # its own port is taken by the second flow
    # Wrap-around above 1024, and climbing below it.
    assert open_flow("198.51.100.9", 65534) == 65534
    assert open_flow("198.51.100.10", 65534) == 65535
    assert open_flow("198.51.100.11", 65534) == 1024
    assert open_flow("198.51.100.12", 80) == 80
    assert open_flow("198.51.100.13", 80) == 81
    c = eng.counters()["conntrack"]
    assert (c["inserts"], c["insert_failures"], c["snat_failures"]) == (8, 0, 0)
    # Each reply finds its own flow through its SNAT port.
    for snat_port, client, client_port in ((40000, EXT_CLIENT, 40000), (40001, "198.51.100.8", 40000),
                                           (40002, FAR_CLIENT, 40001), (1024, "198.51.100.11", 65534)):
        _, reason, got, _ = go(eng, tcp(src=b, dst=NODE_IP, sport=8080, dport=snat_port, flags="SA"))
        assert (reason, endpoints(got)) == (Reason.CT_REPLY, (NODE_IP, 30016, client, client_port))


def test_snat_gives_up_after_64_ports():
    eng = v2_engine()
    clients = [f"172.16.0.{n}" for n in range(1, 66)]
    for n, client in enumerate(clients[:64]):
        _, reason, got, _ = go(eng, tcp(src=client, dst=NODE_IP, dport=30016, sport=50000), T0 + n)
        assert (reason, got[TCP].sport) == (Reason.NEW_FLOW, 50000 + n)  # the 64th finds 50063
    c = eng.counters()["conntrack"]
    assert (c["inserts"], c["snat_failures"]) == (64, 0)
    # The 65th finds 50000..50063 all taken: translated with the last port tried, not tracked.
    verdict, reason, got, trace = go(eng, tcp(src=clients[64], dst=NODE_IP, dport=30016, sport=50000, flags="A"))
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    assert endpoints(got) == (NODE_IP, 50063, "10.244.2.2", 8080)
    assert trace == (SINGLE, 2, KIND["NodePort"] | MASQ)
    c = eng.counters()["conntrack"]
    assert (c["inserts"], c["snat_failures"], c["insert_failures"], c["evictions"], c["non_syn_miss"]) == (64, 1, 0, 0, 1)
    assert c["entries"] == 64
    # Replies to port 50063 belong to the 64th client; the 65th client's next packet is new again.
    _, _, got, _ = go(eng, tcp(src="10.244.2.2", dst=NODE_IP, sport=8080, dport=50063, flags="SA"))
    assert got.dst == clients[63]
    assert go(eng, tcp(src=clients[64], dst=NODE_IP, dport=30016, sport=50000, flags="A"))[1] == Reason.NEW_FLOW
    assert eng.counters()["conntrack"]["snat_failures"] == 2


def test_an_expired_entry_still_holds_its_snat_port():
    eng = v2_engine()
    go(eng, tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30016, sport=41000), T0)
    later = T0 + 100 * SECOND  # past the SYN_SENT timeout, but the entry is only deleted on lookup
    _, _, got, _ = go(eng, tcp(src=FAR_CLIENT, dst=NODE_IP, dport=30016, sport=41000), later)
    assert got[TCP].sport == 41001
    # The first client's retransmission finds its entry expired, deletes it, and gets its port back.
    _, reason, got, _ = go(eng, tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30016, sport=41000), later)
    assert (reason, got[TCP].sport) == (Reason.NEW_FLOW, 41000)
    assert eng.counters()["conntrack"]["expired"] == 1


def test_hairpin_is_always_masqueraded():
    eng = v2_engine()
    # A pod reaching its own service through the ClusterIP lands on itself.
    _, reason, got, trace = go(eng, tcp(src="10.244.2.2", dst="10.96.0.16", sport=45000))
    assert (reason, trace) == (Reason.NEW_FLOW, (SINGLE, 2, KIND["ClusterIP"] | MASQ))
    assert endpoints(got) == (NODE_IP, 45000, "10.244.2.2", 8080)
    _, reason, got, trace = go(eng, tcp(src="10.244.2.2", dst=NODE_IP, sport=8080, dport=45000, flags="SA"))
    assert (reason, trace) == (Reason.CT_REPLY, (SINGLE, 2, KIND["ClusterIP"] | MASQ))
    assert endpoints(got) == ("10.96.0.16", 80, "10.244.2.2", 45000)
    # Same pod, another backend: no masquerade.
    port = next(p for p in range(45001, 45100) if pick((1, 2, 3), "10.244.2.2", "10.96.0.10", p, 80).id != 2)
    _, _, got, trace = go(eng, tcp(src="10.244.2.2", dst="10.96.0.10", sport=port))
    assert got.src == "10.244.2.2" and got.dst != "10.244.2.2" and not trace[2] & MASQ


def test_masquerade_without_a_node_address_is_counted_and_skipped():
    eng = v2_engine(primary_ip=0)
    _, reason, got, trace = go(eng, tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30080))
    want = pick((1, 2, 3), EXT_CLIENT, NODE_IP, 40000, 30080)
    assert (reason, endpoints(got)) == (Reason.NEW_FLOW, (EXT_CLIENT, 40000, txt(want.ip), 8080))
    assert trace == (WEB, want.id, KIND["NodePort"])
    _, reason, got, _ = go(eng, tcp(src="10.244.2.2", dst="10.96.0.16", sport=45000))  # hairpin
    assert (reason, got.src) == (Reason.NEW_FLOW, "10.244.2.2")
    go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10"))  # no masquerade wanted: not counted
    c = eng.counters()["conntrack"]
    assert (c["snat_unavailable"], c["inserts"]) == (2, 3)
    assert not any(e.masqueraded for e in eng.conntrack_entries())


# --------------------------------------------------------------------------- e. session affinity


def _sticky(eng, client, port, ts, dst="10.96.0.15", dport=80):
    _, reason, _, trace = go(eng, tcp(src=client, dst=dst, dport=dport, sport=port), ts)
    assert reason == Reason.NEW_FLOW
    return trace[1]


def test_affinity_same_client_sticks_across_ports_and_frontends():
    eng = v2_engine()
    first = _sticky(eng, POD_CLIENT, 40000, T0)
    assert first == pick((1, 2, 3), POD_CLIENT, "10.96.0.15", 40000, 80).id
    hashed = set()
    for n, port in enumerate(range(40001, 40031)):
        assert _sticky(eng, POD_CLIENT, port, T0 + n * SECOND) == first
        hashed.add(pick((1, 2, 3), POD_CLIENT, "10.96.0.15", port, 80).id)
    assert len(hashed) > 1, "without affinity these flows would spread"
    # The NodePort of the same service port shares the entry.
    assert _sticky(eng, POD_CLIENT, 40100, T0 + 31 * SECOND, dst=NODE_IP, dport=30015) == first
    # Another client has its own entry.
    other = _sticky(eng, EXT_CLIENT, 40000, T0 + 32 * SECOND)
    assert other == pick((1, 2, 3), EXT_CLIENT, "10.96.0.15", 40000, 80).id
    entries = eng.affinity_entries()
    assert [(e.client, e.service, e.backend, e.last_used_ns) for e in entries] == [
        (ip4(POD_CLIENT), STICKY, first, T0 + 31 * SECOND), (ip4(EXT_CLIENT), STICKY, other, T0 + 32 * SECOND)]
    assert eng.counters()["affinity"] == {"evictions": 0, "expired": 0, "entries": 2}
    # Services without affinity keep no entries.
    go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10"))
    assert eng.counters()["affinity"]["entries"] == 2


def test_affinity_expires_after_its_timeout():
    eng = v2_engine()
    first = _sticky(eng, POD_CLIENT, 40000, T0)
    # Ports whose own hash choice differs from the remembered backend.
    ports = [p for p in range(41000, 42000) if pick((1, 2, 3), POD_CLIENT, "10.96.0.15", p, 80).id != first]
    # Exactly at the timeout (10 s) the entry is alive, and its use refreshes it.
    assert _sticky(eng, POD_CLIENT, ports[0], T0 + 10 * SECOND) == first
    assert eng.counters()["affinity"]["expired"] == 0
    # 1 ns past the refreshed timeout it has expired: the hash decides, and is remembered.
    late = T0 + 20 * SECOND + 1
    chosen = _sticky(eng, POD_CLIENT, ports[1], late)
    assert chosen == pick((1, 2, 3), POD_CLIENT, "10.96.0.15", ports[1], 80).id != first
    assert eng.counters()["affinity"] == {"evictions": 0, "expired": 1, "entries": 1}
    assert _sticky(eng, POD_CLIENT, ports[2], late + SECOND) == chosen
    (entry,) = eng.affinity_entries()
    assert (entry.backend, entry.last_used_ns) == (chosen, late + SECOND)


def test_affinity_is_ignored_when_its_backend_left_the_set():
    eng = v2_engine()
    first = _sticky(eng, POD_CLIENT, 40000, T0)
    remaining = tuple(b for b in (1, 2, 3) if b != first)
    maps = v2_maps()
    maps.services[STICKY - 1] = Service(STICKY, "default/sticky:http", remaining, serving=remaining,
                                        affinity_timeout_s=10)
    eng.load(maps)
    chosen = _sticky(eng, POD_CLIENT, 40001, T0 + 1)
    assert chosen == pick(remaining, POD_CLIENT, "10.96.0.15", 40001, 80).id
    assert eng.affinity_entries()[0].backend == chosen
    assert eng.counters()["affinity"] == {"evictions": 0, "expired": 0, "entries": 1}
    # The backend comes back: the entry now names the other one, which is still there.
    eng.load(v2_maps())
    assert _sticky(eng, POD_CLIENT, 40002, T0 + 2) == chosen


def test_affinity_follows_backends_by_address_across_renumbering():
    eng = v2_engine()
    first = _sticky(eng, POD_CLIENT, 40000, T0)
    address = (V2_BACKENDS[first - 1].ip, V2_BACKENDS[first - 1].port)
    # Same cluster, backend ids reversed (6 -> 1, ..., 1 -> 6).
    new_id = {old: 7 - old for old in range(1, 7)}
    maps = v2_maps()
    renumbered = Maps(
        services=[replace(s, backends=tuple(sorted(new_id[b] for b in s.backends)),
                          local_backends=tuple(sorted(new_id[b] for b in s.local_backends)),
                          serving=tuple(sorted(new_id[b] for b in s.serving))) for s in maps.services],
        frontends=maps.frontends,
        backends=[replace(b, id=new_id[b.id]) for b in reversed(maps.backends)],
        node=maps.node,
    )
    eng.load(renumbered)
    assert eng.affinity_entries()[0].backend == new_id[first]
    for port in range(40001, 40011):
        chosen = _sticky(eng, POD_CLIENT, port, T0 + port)
        b = renumbered.backends[chosen - 1]
        assert (b.ip, b.port) == address


def test_affinity_picks_the_first_set_member_with_the_remembered_address():
    # Two backend ids share one address (possible in hand-made maps): the set's first one wins.
    table = [backend(1, "10.244.1.1", 8080), backend(2, "10.244.2.2", 8080), backend(3, "10.244.1.1", 8080)]
    maps = Maps(services=[Service(1, "ns/s", (1, 2), affinity_timeout_s=100)],
                frontends=[fe("10.96.0.1", 80, 1)], backends=table)
    eng = ReferenceEngine(maps)
    client = next(f"10.244.9.{n}" for n in range(1, 250)
                  if pick((1, 2), f"10.244.9.{n}", "10.96.0.1", 40000, 80, table=table).id == 1)
    assert _sticky(eng, client, 40000, T0, dst="10.96.0.1") == 1
    eng.load(Maps(services=[Service(1, "ns/s", (3, 2, 1), affinity_timeout_s=100)],
                  frontends=[fe("10.96.0.1", 80, 1)], backends=table))
    assert _sticky(eng, client, 40001, T0 + 1, dst="10.96.0.1") == 3


def test_affinity_lru_eviction():
    eng = v2_engine(capacity=2)
    a = _sticky(eng, "10.244.5.1", 40000, T0)
    _sticky(eng, "10.244.5.2", 40000, T0 + 1)
    assert _sticky(eng, "10.244.5.1", 40001, T0 + 2) == a  # a is now the most recently used
    _sticky(eng, "10.244.5.3", 40000, T0 + 3)  # evicts 10.244.5.2
    assert [e.client for e in eng.affinity_entries()] == [ip4("10.244.5.1"), ip4("10.244.5.3")]
    assert eng.counters()["affinity"] == {"evictions": 1, "expired": 0, "entries": 2}
    # An expired entry is replaced in place: no eviction.
    _sticky(eng, "10.244.5.1", 40002, T0 + 100 * SECOND)
    assert eng.counters()["affinity"] == {"evictions": 1, "expired": 1, "entries": 2}
    assert [e.client for e in eng.affinity_entries()] == [ip4("10.244.5.3"), ip4("10.244.5.1")]


def test_dropped_packets_leave_no_affinity():
    maps = v2_maps()
    maps.frontends.append(fe("203.0.113.15", 80, STICKY, "LoadBalancer", ranges=LB_RANGES))
    eng = ReferenceEngine(maps)
    assert go(eng, tcp(src=FAR_CLIENT, dst="203.0.113.15"))[1] == Reason.DROP_SOURCE_RANGE
    assert eng.counters()["affinity"]["entries"] == 0


# --------------------------------------------------------------------------- load(): remapping


def _renamed_order(maps: Maps, service_order, backend_order) -> Maps:
    """The same maps with ids renumbered: service_order/backend_order list old ids in new order."""
    s_new = {old: n for n, old in enumerate(service_order, start=1)}
    b_new = {old: n for n, old in enumerate(backend_order, start=1)}

    def ids(values):
        return tuple(sorted(b_new[b] for b in values if b in b_new))

    services = [replace(maps.services[old - 1], id=s_new[old], backends=ids(maps.services[old - 1].backends),
                        local_backends=ids(maps.services[old - 1].local_backends),
                        serving=ids(maps.services[old - 1].serving)) for old in service_order]
    backends = [replace(maps.backends[old - 1], id=b_new[old]) for old in backend_order]
    frontends = [replace(f, service=s_new[f.service]) for f in maps.frontends if f.service in s_new]
    return Maps(services=services, frontends=frontends, backends=backends, node=maps.node)


def test_load_remaps_ids_by_name():
    eng = v2_engine()
    _, _, _, web_trace = go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10"))
    _, _, _, dns_trace = go(eng, udp(src=POD_CLIENT, dst="10.96.0.53"))
    go(eng, tcp(src=POD_CLIENT, dst="10.96.0.99", dport=443))  # REJECT, counted for EMPTY
    _sticky(eng, POD_CLIENT, 40001, T0)
    before = eng.counters()
    # New maps: services and backends in reverse order.
    service_order, backend_order = list(range(7, 0, -1)), list(range(6, 0, -1))
    maps = _renamed_order(v2_maps(), service_order, backend_order)
    eng.load(maps)
    after = eng.counters()
    assert after["services"] == [before["services"][old - 1] for old in service_order]
    assert after["backends"] == [before["backends"][old - 1] for old in backend_order]
    web_id, dns_id = 8 - WEB, 8 - DNS
    web_backend, dns_backend = 7 - web_trace[1], 7 - dns_trace[1]
    entries = {txt(e.orig[1]): e for e in eng.conntrack_entries()}
    assert (entries["10.96.0.10"].service, entries["10.96.0.10"].backend) == (web_id, web_backend)
    assert (entries["10.96.0.53"].service, entries["10.96.0.53"].backend) == (dns_id, dns_backend)
    assert eng.affinity_entries()[0].service == 8 - STICKY
    assert after["conntrack"]["flushed"] == 0
    # Tracked packets are attributed under the new ids.
    _, reason, got, trace = go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", flags="A"), T0 + 1)
    assert (reason, trace) == (Reason.CT_ESTABLISHED, (web_id, web_backend, KIND["ClusterIP"]))
    assert got.dst == txt(V2_BACKENDS[web_trace[1] - 1].ip)
    assert eng.counters()["services"][web_id - 1] == after["services"][web_id - 1] + 1


def test_load_drops_vanished_ids_and_merges_duplicates():
    eng = v2_engine()
    _, _, _, trace = go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10"))
    go(eng, tcp(src=POD_CLIENT, dst="10.96.0.16", sport=40001))  # SINGLE -> backend 2
    _sticky(eng, POD_CLIENT, 40002, T0)
    before = eng.counters()
    # WEB and STICKY vanish; backend 2's address appears twice (ids 1 and 2: the lowest wins).
    maps = Maps(
        services=[Service(1, "default/single:http", (1,), serving=(1, 2))],
        frontends=[fe("10.96.0.16", 80, 1)],
        backends=[backend(1, "10.244.2.2", 8080), backend(2, "10.244.2.2", 8080)],
    )
    eng.load(maps)
    c = eng.counters()
    assert c["services"] == [before["services"][SINGLE - 1]]
    assert c["backends"] == [before["backends"][1], 0]
    assert c["affinity"]["entries"] == 0  # its service vanished
    by_port = {e.orig[2]: e for e in eng.conntrack_entries()}
    assert (by_port[40000].service, by_port[40000].backend) == (0, 1 if trace[1] == 2 else 0)
    assert (by_port[40001].service, by_port[40001].backend) == (1, 1)
    # The vanished service's TCP flow keeps translating, unattributed to any service.
    _, reason, got, trace2 = go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", flags="A"), T0 + 1)
    assert reason == Reason.CT_ESTABLISHED and got.dst == txt(V2_BACKENDS[trace[1] - 1].ip)
    assert trace2[0] == 0 and eng.counters()["services"] == c["services"]
    # Back to maps where both old backends 1 and 7 share an address: their counts add up.
    eng2 = ReferenceEngine(Maps(
        services=[Service(1, "a", (1,)), Service(2, "b", (2,))],
        frontends=[fe("10.96.0.1", 80, 1), fe("10.96.0.2", 80, 2)],
        backends=[backend(1, "10.244.1.1", 8080), backend(2, "10.244.1.1", 8080)]))
    go(eng2, tcp(src=POD_CLIENT, dst="10.96.0.1"))
    go(eng2, tcp(src=POD_CLIENT, dst="10.96.0.2"))
    go(eng2, tcp(src=POD_CLIENT, dst="10.96.0.2", sport=40001))
    assert eng2.counters()["backends"] == [1, 2]
    eng2.load(Maps(services=[Service(1, "b", (2,)), Service(2, "a", (2,))],
                   frontends=[fe("10.96.0.1", 80, 2), fe("10.96.0.2", 80, 1)],
                   backends=[backend(1, "10.0.0.9", 80), backend(2, "10.244.1.1", 8080)]))
    assert eng2.counters()["backends"] == [0, 3]
    assert eng2.counters()["services"] == [2, 1]


def test_load_merges_affinity_entries_keeping_the_most_recent():
    table = [backend(1, "10.244.1.1", 8080), backend(2, "10.244.2.2", 8080)]
    eng = ReferenceEngine(Maps(
        services=[Service(1, "ns/x", (1,), affinity_timeout_s=100), Service(2, "ns/x", (2,), affinity_timeout_s=100)],
        frontends=[fe("10.96.0.1", 80, 1), fe("10.96.0.2", 80, 2)], backends=table))
    _sticky(eng, POD_CLIENT, 40000, T0 + 1, dst="10.96.0.2")
    _sticky(eng, POD_CLIENT, 40001, T0 + 2, dst="10.96.0.1")  # most recent, backend 1
    _sticky(eng, EXT_CLIENT, 40002, T0 + 3, dst="10.96.0.2")
    eng.load(Maps(services=[Service(1, "ns/x", (1, 2), affinity_timeout_s=100)],
                  frontends=[fe("10.96.0.1", 80, 1)], backends=table))
    assert [(e.client, e.service, e.backend, e.last_used_ns) for e in eng.affinity_entries()] == [
        (ip4(POD_CLIENT), 1, 1, T0 + 2), (ip4(EXT_CLIENT), 1, 2, T0 + 3)]


def test_load_flushes_udp_flows_off_serving_backends_and_lets_tcp_drain():
    eng = v2_engine()
    _, _, _, (_, udp_backend, _) = go(eng, udp(src=POD_CLIENT, dst="10.96.0.53"))
    _, _, _, (_, tcp_backend, _) = go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10"))
    # Both backends terminate: out of the selectable sets, still serving. Nothing is flushed.
    maps = v2_maps()
    udp_other = 9 - udp_backend  # 4 <-> 5
    tcp_rest = tuple(b for b in (1, 2, 3) if b != tcp_backend)
    maps.services[DNS - 1] = replace(maps.services[DNS - 1], backends=(udp_other,), serving=(4, 5, 6))
    maps.services[WEB - 1] = replace(maps.services[WEB - 1], backends=tcp_rest, serving=(1, 2, 3))
    eng.load(maps)
    assert eng.counters()["conntrack"]["flushed"] == 0
    assert go(eng, udp(src=POD_CLIENT, dst="10.96.0.53"), T0 + 1)[3][1] == udp_backend
    # Now they stop serving (and leave the local sets): the UDP flow is forgotten and selects
    # again; the TCP flow drains.
    maps.services[DNS - 1] = replace(maps.services[DNS - 1], serving=(udp_other,), local_backends=())
    maps.services[WEB - 1] = replace(maps.services[WEB - 1], serving=tcp_rest, local_backends=())
    eng.load(maps)
    # Lazily: the stale UDP entry goes with its next packet (here a reply, then passed as untracked).
    c = eng.counters()["conntrack"]
    assert (c["flushed"], c["entries"]) == (0, 2)
    reply = udp(src=txt(V2_BACKENDS[udp_backend - 1].ip), dst=POD_CLIENT, sport=5353, dport=50000)
    assert go(eng, reply, T0 + 2)[1] == Reason.PASS_NO_SERVICE
    c = eng.counters()["conntrack"]
    assert (c["flushed"], c["entries"]) == (1, 1)
    _, reason, got, trace = go(eng, udp(src=POD_CLIENT, dst="10.96.0.53"), T0 + 3)
    assert (reason, trace[1], got.dst) == (Reason.NEW_FLOW, udp_other, txt(V2_BACKENDS[udp_other - 1].ip))
    _, reason, got, trace = go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", flags="A"), T0 + 4)
    assert (reason, trace[1]) == (Reason.CT_ESTABLISHED, tcp_backend)
    # A UDP flow whose service disappears is flushed too (by its next packet), masqueraded or not.
    go(eng, udp(src=EXT_CLIENT, dst=NODE_IP, dport=30053), T0 + 5)
    eng.load(Maps(services=[], frontends=[], backends=[], node=maps.node))
    assert eng.counters()["conntrack"]["entries"] == 3
    assert go(eng, udp(src=POD_CLIENT, dst="10.96.0.53"), T0 + 6)[1] == Reason.REJECT_UNKNOWN_PORT  # still a ClusterIP
    assert go(eng, udp(src=EXT_CLIENT, dst=NODE_IP, dport=30053), T0 + 6)[1] == Reason.PASS_NO_SERVICE
    c = eng.counters()["conntrack"]
    assert (c["flushed"], c["entries"]) == (3, 1)
    assert eng.conntrack_entries()[0].orig[4] == PROTO_TCP


# --------------------------------------------------------------------------- trace arrays


def test_trace_arrays_in_a_batch():
    eng = v2_engine()
    web = pick((1, 2, 3), EXT_CLIENT, NODE_IP, 40000, 30080)
    pod_web = pick((1, 2, 3), POD_CLIENT, "10.96.0.10", 40000, 80)
    cases = [
        (tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30080), Reason.NEW_FLOW, (WEB, web.id, 2 | MASQ)),
        (tcp(src=txt(web.ip), dst=NODE_IP, sport=8080, dport=40000, flags="SA"), Reason.CT_REPLY, (WEB, web.id, 2 | MASQ)),
        (tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30080, flags="A"), Reason.CT_ESTABLISHED, (WEB, web.id, 2 | MASQ)),
        (tcp(src=POD_CLIENT, dst="10.96.0.10"), Reason.NEW_FLOW, (WEB, pod_web.id, 1)),
        (tcp(src=POD_CLIENT, dst="10.96.0.10", dport=81), Reason.REJECT_UNKNOWN_PORT, (0, 0, 0)),
        (tcp(src=FAR_CLIENT, dst="203.0.113.10"), Reason.DROP_SOURCE_RANGE, (WEB, 0, 3)),
        (tcp(src=EXT_CLIENT, dst="10.96.0.99", dport=443), Reason.REJECT_NO_ENDPOINT, (EMPTY, 0, 1)),
        (tcp(src=EXT_CLIENT, dst="198.51.100.201"), Reason.NEW_FLOW, (WEB_LOCAL, 1, 4)),
        (tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30082), Reason.DROP_NO_LOCAL_ENDPOINT, (REMOTE, 0, 2)),
        (tcp(src=POD_CLIENT, dst="10.96.0.11"), Reason.PASS_NO_SERVICE, (0, 0, 0)),
        (IP(src=POD_CLIENT, dst="10.96.0.10") / ICMP(), Reason.PASS_UNSUPPORTED, (0, 0, 0)),
    ]
    frames = [eth(packet) for packet, _, _ in cases] + [bytes(Ether(src=MAC_A, dst=MAC_B) / ARP()), b"\x00" * 5]
    expected = [(reason, trace) for _, reason, trace in cases]
    expected += [(Reason.PASS_NOT_IP, (0, 0, 0)), (Reason.DROP_TRUNCATED, (0, 0, 0))]
    buf = bytearray(b"".join(frames))
    offsets, lengths, start = array("Q"), array("I"), 0
    for frame in frames:
        offsets.append(start)
        lengths.append(len(frame))
        start += len(frame)
    n = len(frames)
    verdicts, reasons = array("B", [0xEE] * n), array("B", [0xEE] * n)
    services, backends, flags = array("I", [0xEEEE] * n), array("I", [0xEEEE] * n), array("B", [0xEE] * n)
    eng.process(buf, offsets, lengths, array("Q", [T0 + i for i in range(n)]), verdicts, reasons, 1,
                services, backends, flags)
    got = [(Reason(r), (s, b, f)) for r, s, b, f in zip(reasons, services, backends, flags)]
    assert got == expected
    assert list(verdicts) == [VERDICT_OF_REASON[r] for r, _ in expected]
    # The per-id counters are the trace's tallies.
    c = eng.counters()
    for service_id in range(1, 8):
        assert c["services"][service_id - 1] == list(services).count(service_id)
    for backend_id in range(1, 7):
        assert c["backends"][backend_id - 1] == list(backends).count(backend_id)
    assert c["verdicts"]["REJECT"] == 2 and c["verdicts"]["DROP"] == 3


def test_trace_arrays_are_optional_and_checked():
    data = eth(tcp(src=POD_CLIENT, dst="10.96.0.10"))
    want = pick((1, 2, 3), POD_CLIENT, "10.96.0.10", 40000, 80)

    def call(eng, **trace):
        buf = bytearray(data)
        eng.process(buf, array("Q", [0]), array("I", [len(buf)]), array("Q", [T0]),
                    array("B", [0]), array("B", [0]), 1, **trace)
        return buf

    # Any subset of the three arrays may be given.
    only_flags = array("B", [0xEE])
    out = call(v2_engine(), flags=only_flags)
    assert list(only_flags) == [1]
    assert out == call(v2_engine())
    only_backends = array("I", [0])
    call(v2_engine(), backends=only_backends)
    assert list(only_backends) == [want.id]
    # Wrong length or read-only: refused before anything runs.
    eng = v2_engine()
    with pytest.raises(ValueError, match="services"):
        call(eng, services=array("I", [0, 0]))
    with pytest.raises(ValueError, match="flags"):
        call(eng, flags=array("B"))
    with pytest.raises(TypeError, match="backends"):
        call(eng, backends=memoryview(array("I", [0])).toreadonly())
    assert sum(eng.counters()["verdicts"].values()) == 0


# =========================================================================== SCTP
#
# Parsed like UDP (12-byte common header, ports at bytes 0-3), tracked like UDP (state OTHER) but
# never flushed by load(); rewritten with the IPv4 header checksum updated incrementally and the
# CRC32c recomputed over the whole SCTP packet, stored least significant byte first.


def sctp_l4(ip_bytes: bytes) -> bytes:
    header_len = (ip_bytes[0] & 0x0F) * 4
    total = int.from_bytes(ip_bytes[2:4], "big")
    return ip_bytes[header_len:total]


def scapy_crc_field(l4: bytes) -> bytes:
    """The CRC field scapy's own crc32c gives the SCTP packet `l4` (checksum field zeroed)."""
    return scapy_crc32c(l4[:8] + bytes(4) + l4[12:]).to_bytes(4, "big")


def test_sctp_protocol_number():
    assert PROTO_SCTP == 132 and PROTOCOL_NUMBERS["SCTP"] == PROTO_SCTP


def test_crc32c_known_values_and_scapy():
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    # RFC 3720 B.4 (iSCSI uses the same CRC32c).
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    rng = random.Random(132)
    for n in [*range(40), 255, 1500]:
        data = bytes(rng.randrange(256) for _ in range(n))
        # scapy returns the CRC byte-swapped and packs it big-endian: least significant byte first.
        assert crc32c(data).to_bytes(4, "little") == scapy_crc32c(data).to_bytes(4, "big")
    # On real SCTP packets built with scapy.
    for packet in (sctp(), sctp(data=b""), sctp(data=b"x" * 333), IP() / SCTP(sport=1, dport=2),
                   IP() / SCTP(sport=5, dport=6, tag=0) / SCTPChunkInit(init_tag=9)):
        l4 = sctp_l4(bytes(packet))
        assert crc32c(l4[:8] + bytes(4) + l4[12:]).to_bytes(4, "little") == l4[8:12]


def test_new_sctp_flow_dnat_then_reply_revnat_then_established():
    eng = engine()
    data = eth(sctp())
    verdict, reason, out = run(eng, data)
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    chosen = expected_backend((1, 2, 3, 4), CLIENT, VIP, 40000, 80, PROTO_SCTP)
    got = assert_checksums_valid(out[14:])
    assert (got.src, got.dst, got[SCTP].sport, got[SCTP].dport) == (CLIENT, txt(chosen.ip), 40000, chosen.port)
    assert got[SCTP].tag == 0x1A2B3C4D and bytes(got[SCTPChunkData].data) == b"sctp data"
    assert sctp_l4(out[14:])[8:12] == scapy_crc_field(sctp_l4(out[14:]))
    (entry,) = eng.conntrack_entries()
    assert entry.orig == (ip4(CLIENT), ip4(VIP), 40000, 80, PROTO_SCTP)
    assert entry.reply == (chosen.ip, ip4(CLIENT), chosen.port, 40000, PROTO_SCTP)
    assert (entry.service, entry.backend, entry.state) == (1, chosen.id, CT_OTHER)

    reply = eth(sctp(src=txt(chosen.ip), dst=CLIENT, sport=chosen.port, dport=40000, data=b"answer", tag=0x55))
    verdict, reason, out = run(eng, reply, T0 + SECOND)
    assert (verdict, reason) == (Verdict.REVNAT, Reason.CT_REPLY)
    got = assert_checksums_valid(out[14:])
    assert (got.src, got.dst, got[SCTP].sport, got[SCTP].dport) == (VIP, CLIENT, 80, 40000)
    assert eng.conntrack_entries()[0].state == CT_OTHER

    verdict, reason, out = run(eng, eth(sctp(data=b"more")), T0 + 2 * SECOND)
    assert (verdict, reason) == (Verdict.DNAT, Reason.CT_ESTABLISHED)
    assert assert_checksums_valid(out[14:]).dst == txt(chosen.ip)
    c = eng.counters()
    assert c["services"] == [3, 0, 0] and c["backends"][chosen.id - 1] == 3
    assert (c["conntrack"]["inserts"], c["conntrack"]["non_syn_miss"], c["conntrack"]["entries"]) == (1, 0, 1)


def test_sctp_rewrite_is_byte_exact():
    """Only the destination address, the IPv4 header checksum, the destination port and the CRC
    change; the CRC is scapy's over the rewritten SCTP packet, least significant byte first."""
    original = bytes(sctp(sport=40123, data=b"0123456789abc", tag=0xCAFEF00D))
    chosen = expected_backend((1, 2, 3, 4), CLIENT, VIP, 40123, 80, PROTO_SCTP)
    want = bytearray(original)
    want[16:20] = ip4(txt(chosen.ip)).to_bytes(4, "big")
    want[22:24] = chosen.port.to_bytes(2, "big")
    header = IP(bytes(want[:20]))
    del header.chksum
    want[10:12] = bytes(header)[10:12]
    want[28:32] = scapy_crc_field(bytes(want[20:]))
    verdict, _, out = run(engine(), original, linktype=101)
    assert verdict == Verdict.DNAT
    assert out == bytes(want)
    crc = int.from_bytes(out[28:32], "little")
    assert crc == crc32c(out[20:28] + bytes(4) + out[32:])


def test_sctp_header_only_and_ip_options():
    eng = engine()
    bare = IP(src=CLIENT, dst=VIP) / SCTP(sport=40001, dport=80, tag=1)  # 12 bytes, no chunk
    verdict, reason, out = run(eng, eth(bare))
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    assert assert_checksums_valid(out[14:])[SCTP].dport == 8080
    with_options = sctp(sport=40002, options=b"\x01\x01\x01\x00")
    verdict, reason, out = run(eng, eth(with_options))
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    got = assert_checksums_valid(out[14:])
    assert got.ihl == 6 and got[SCTP].dport == 8080 and bytes(got[SCTPChunkData].data) == b"sctp data"


def test_sctp_wrong_incoming_crc_is_replaced_by_the_right_one():
    data = bytearray(eth(sctp()))
    data[14 + 20 + 8: 14 + 20 + 12] = b"\xde\xad\xbe\xef"
    verdict, reason, out = run(engine(), bytes(data))
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    assert_checksums_valid(out[14:])


def test_sctp_snaplen_cut_keeps_its_old_crc():
    full = eth(sctp(data=b"x" * 100))
    _, _, full_out = run(engine(), full)
    crc = slice(14 + 20 + 8, 14 + 20 + 12)
    assert full_out[crc] != full[crc]
    for cut in (14 + 20 + 12, 14 + 20 + 13, 14 + 20 + 40, len(full) - 1):
        verdict, reason, out = run(engine(), full[:cut])
        assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
        # The same rewrite as the whole packet, but the CRC field is left as it was.
        assert out[:crc.start] == full_out[:crc.start] and out[crc.stop:] == full_out[crc.stop:cut]
        assert out[crc] == full[crc]
        ip_header = IP(out[14:34])
        del ip_header.chksum
        assert bytes(ip_header)[:20] == out[14:34]
    # Exactly the whole IP packet captured (no padding): recomputed.
    assert run(engine(), full)[2] == full_out


def test_sctp_ethernet_padding_beyond_total_length_is_left_alone():
    packet = eth(sctp(data=b"ab"))
    data = packet + b"\xAA" * 7
    verdict, _, out = run(engine(), data)
    assert verdict == Verdict.DNAT
    assert out[-7:] == b"\xAA" * 7
    assert out[:len(packet)] == run(engine(), packet)[2]
    assert_checksums_valid(out[14:len(packet)])


def test_sctp_conntrack_uses_the_other_timeout():
    eng = ReferenceEngine(make_maps(), timeouts_s={"other": 5, "established": 1000})
    run(eng, eth(sctp()), T0)
    assert run(eng, eth(sctp()), T0 + 5 * SECOND)[1] == Reason.CT_ESTABLISHED
    assert run(eng, eth(sctp()), T0 + 10 * SECOND + 1)[1] == Reason.NEW_FLOW
    assert eng.counters()["conntrack"]["expired"] == 1
    # Bytes in TCP's flag position mean nothing for SCTP: the state stays OTHER.
    for flags in (0x01, 0x02, 0x04, 0x12):
        data = bytearray(eth(sctp()))
        data[14 + 20 + 13] = flags  # inside the CRC field
        run(eng, bytes(data), T0 + 11 * SECOND)
        assert [e.state for e in eng.conntrack_entries()] == [CT_OTHER]
    assert eng.counters()["conntrack"]["reopened"] == 0


def test_tcp_udp_sctp_on_the_same_port_are_independent():
    backends = [backend(1, "10.244.1.1", 9001), backend(2, "10.244.1.2", 9002), backend(3, "10.244.1.3", 9003)]
    maps = Maps(
        services=[Service(id=1, name="ns/svc:tcp", backends=(1,)), Service(id=2, name="ns/svc:udp", backends=(2,)),
                  Service(id=3, name="ns/svc:sctp", backends=(3,)), Service(id=4, name="ns/other:tcp", backends=(1,))],
        frontends=[Frontend(ip=ip4(VIP), port=53, proto=PROTO_TCP, service=1),
                   Frontend(ip=ip4(VIP), port=53, proto=PROTO_UDP, service=2),
                   Frontend(ip=ip4(VIP), port=53, proto=PROTO_SCTP, service=3),
                   Frontend(ip=ip4(DNS_VIP), port=53, proto=PROTO_TCP, service=4)],
        backends=backends,
        node=NodeView(service_ips=(ip4(VIP), ip4(DNS_VIP))),
    )
    eng = engine(maps=maps)
    for packet, service_id, port in ((tcp(dport=53), 1, 9001), (udp(dst=VIP), 2, 9002), (sctp(dport=53), 3, 9003)):
        verdict, reason, out, trace = eng.trace_packet(eth(packet), T0)
        assert (verdict, reason, trace[:2]) == (Verdict.DNAT, Reason.NEW_FLOW, (service_id, service_id))
        got = assert_checksums_valid(out[14:])
        assert (got.dst, got.payload.dport) == (f"10.244.1.{service_id}", port)
    assert sorted(e.orig[4] for e in eng.conntrack_entries()) == [PROTO_TCP, PROTO_UDP, PROTO_SCTP]
    # Replies are told apart by protocol too: an SCTP packet from the TCP backend is nobody's reply.
    _, reason, _ = run(eng, eth(sctp(src="10.244.1.1", dst=CLIENT, sport=9001, dport=40000)))
    assert reason == Reason.PASS_NO_SERVICE
    _, reason, out = run(eng, eth(sctp(src="10.244.1.3", dst=CLIENT, sport=9003, dport=40000)))
    got = assert_checksums_valid(out[14:])
    assert (reason, got.src, got[SCTP].sport) == (Reason.CT_REPLY, VIP, 53)
    # A service address without an SCTP port rejects SCTP; other addresses pass.
    assert run(eng, eth(sctp(dst=DNS_VIP, dport=53)))[1] == Reason.REJECT_UNKNOWN_PORT
    assert run(eng, eth(sctp(dst=VIP, dport=54)))[1] == Reason.REJECT_UNKNOWN_PORT
    assert run(eng, eth(sctp(dst="10.96.7.7", dport=53)))[1] == Reason.PASS_NO_SERVICE


SCTP_NODE_PORT = 30132


def sctp_v2_maps(**node) -> Maps:
    """The v2 node plus SCTP frontends: web on its ClusterIP :80 and NodePort 30132, and the
    single-backend service on NodePort 30016 (the number its TCP NodePort has too)."""
    maps = v2_maps(**node)
    extra = [fe("10.96.0.10", 80, WEB, proto=PROTO_SCTP), fe(NODE_IP, SCTP_NODE_PORT, WEB, "NodePort", proto=PROTO_SCTP),
             fe(NODE_IP, 30016, SINGLE, "NodePort", proto=PROTO_SCTP)]
    return Maps(services=maps.services, frontends=maps.frontends + extra, backends=maps.backends, node=maps.node)


def test_sctp_cluster_ip_from_a_pod_is_not_masqueraded():
    eng = ReferenceEngine(sctp_v2_maps())
    want = pick((1, 2, 3), POD_CLIENT, "10.96.0.10", 40000, 80, PROTO_SCTP)
    verdict, reason, got, trace = go(eng, sctp(src=POD_CLIENT, dst="10.96.0.10"))
    assert (verdict, reason, trace) == (Verdict.DNAT, Reason.NEW_FLOW, (WEB, want.id, KIND["ClusterIP"]))
    assert (got.src, got[SCTP].sport, got.dst, got[SCTP].dport) == (POD_CLIENT, 40000, txt(want.ip), 8080)
    # From outside the pod CIDR: masqueraded (same rules as TCP/UDP).
    verdict, reason, got, trace = go(eng, sctp(src=EXT_CLIENT, dst="10.96.0.10"))
    assert trace[2] == KIND["ClusterIP"] | MASQ and got.src == NODE_IP


def test_sctp_node_port_masquerade_forward_and_reply():
    eng = ReferenceEngine(sctp_v2_maps())
    want = pick((1, 2, 3), EXT_CLIENT, NODE_IP, 40000, SCTP_NODE_PORT, PROTO_SCTP)
    verdict, reason, got, trace = go(eng, sctp(src=EXT_CLIENT, dst=NODE_IP, dport=SCTP_NODE_PORT))
    assert (verdict, reason, trace) == (Verdict.DNAT, Reason.NEW_FLOW, (WEB, want.id, KIND["NodePort"] | MASQ))
    assert (got.src, got[SCTP].sport, got.dst, got[SCTP].dport) == (NODE_IP, 40000, txt(want.ip), 8080)
    (entry,) = eng.conntrack_entries()
    assert entry.reply == (want.ip, ip4(NODE_IP), 8080, 40000, PROTO_SCTP) and entry.state == CT_OTHER
    verdict, reason, got, trace = go(eng, sctp(src=txt(want.ip), dst=NODE_IP, sport=8080, dport=40000), T0 + 1)
    assert (verdict, reason, trace) == (Verdict.REVNAT, Reason.CT_REPLY, (WEB, want.id, KIND["NodePort"] | MASQ))
    assert (got.src, got[SCTP].sport, got.dst, got[SCTP].dport) == (NODE_IP, SCTP_NODE_PORT, EXT_CLIENT, 40000)
    # The TCP NodePort of the same service is another frontend number; SCTP to it is not served.
    assert go(eng, sctp(src=EXT_CLIENT, dst=NODE_IP, dport=30080), T0 + 2)[1] == Reason.PASS_NO_SERVICE


def test_sctp_snat_ports_collide_only_with_sctp_flows():
    eng = ReferenceEngine(sctp_v2_maps())
    # Two clients, one source port, one backend: the second SCTP flow walks to the next SNAT port.
    for client, snat_port in ((EXT_CLIENT, 40000), (FAR_CLIENT, 40001)):
        _, reason, got, trace = go(eng, sctp(src=client, dst=NODE_IP, dport=30016))
        assert (reason, trace) == (Reason.NEW_FLOW, (SINGLE, 2, KIND["NodePort"] | MASQ))
        assert (got.src, got[SCTP].sport, got.dst, got[SCTP].dport) == (NODE_IP, snat_port, "10.244.2.2", 8080)
    # A TCP flow on the same numbers does not collide with them: it keeps the client's port.
    _, reason, got, _ = go(eng, tcp(src="198.51.100.9", dst=NODE_IP, dport=30016))
    assert (reason, got[TCP].sport) == (Reason.NEW_FLOW, 40000)
    # Each reply finds its own flow.
    for snat_port, client in ((40000, EXT_CLIENT), (40001, FAR_CLIENT)):
        _, reason, got, _ = go(eng, sctp(src="10.244.2.2", dst=NODE_IP, sport=8080, dport=snat_port), T0 + 1)
        assert (reason, got.dst, got[SCTP].dport, got[SCTP].sport) == (Reason.CT_REPLY, client, 40000, 30016)
    assert eng.counters()["conntrack"]["snat_failures"] == 0


def test_load_does_not_flush_sctp_flows():
    eng = ReferenceEngine(sctp_v2_maps())
    _, _, _, (_, sctp_backend, _) = go(eng, sctp(src=POD_CLIENT, dst="10.96.0.10"))
    _, _, _, (_, udp_backend, _) = go(eng, udp(src=POD_CLIENT, dst="10.96.0.53"))
    maps = sctp_v2_maps()
    # Both backends leave every set of their service.
    rest = tuple(b for b in (1, 2, 3) if b != sctp_backend)
    maps.services[WEB - 1] = replace(maps.services[WEB - 1], backends=rest,
                                     local_backends=tuple(b for b in (1,) if b != sctp_backend), serving=rest)
    maps.services[DNS - 1] = replace(maps.services[DNS - 1], backends=(9 - udp_backend,), local_backends=(),
                                     serving=(9 - udp_backend,))
    eng.load(maps)
    # The UDP flow is forgotten (by its next packet); the SCTP flow, like TCP, keeps its backend.
    assert go(eng, udp(src=POD_CLIENT, dst="10.96.0.53"), T0 + 1)[1] == Reason.NEW_FLOW
    assert eng.counters()["conntrack"]["flushed"] == 1
    _, reason, got, trace = go(eng, sctp(src=POD_CLIENT, dst="10.96.0.10"), T0 + 1)
    assert (reason, trace[1], got.dst) == (Reason.CT_ESTABLISHED, sctp_backend, txt(V2_BACKENDS[sctp_backend - 1].ip))
    # Even with every service gone (when the UDP flow's next packet has flushed it).
    eng.load(Maps(services=[], frontends=[], backends=[], node=maps.node))
    go(eng, udp(src=POD_CLIENT, dst="10.96.0.53"), T0 + 2)
    assert [e.orig[4] for e in eng.conntrack_entries()] == [PROTO_SCTP]
    _, reason, got, trace = go(eng, sctp(src=POD_CLIENT, dst="10.96.0.10"), T0 + 2)
    assert (reason, trace) == (Reason.CT_ESTABLISHED, (0, 0, KIND["ClusterIP"]))


# =========================================================================== IPv4 fragments


def through(eng: ReferenceEngine, ip_bytes: bytes, ts: int = T0):
    """Raw IPv4 bytes in an Ethernet frame through the twin: (verdict, reason, IP bytes out,
    trace). Untranslated packets are untouched; translated ones keep a valid IPv4 header
    checksum (scapy's checksum over the header)."""
    data = ETH_HDR + ip_bytes
    verdict, reason, out, trace = eng.trace_packet(data, ts)
    assert VERDICT_OF_REASON[reason] is verdict
    assert out[:14] == data[:14] and len(out) == len(data)
    if verdict in (Verdict.PASS, Verdict.DROP, Verdict.REJECT):
        assert out == data, "PASS, DROP and REJECT never modify the packet"
    else:
        ihl = (out[14] & 0x0F) * 4
        assert scapy_checksum(out[14:14 + ihl]) == 0, "IPv4 header checksum"
    return verdict, reason, out[14:], trace


def assert_transport_checksum_valid(ip_bytes: bytes) -> IP:
    """The TCP/UDP checksum of a whole datagram is valid: scapy's in4_chksum over the pseudo-header
    and the raw transport bytes (checksum field included) gives 0. Raw bytes, so that no
    application-layer dissector (DNS on 53/5353, HTTP on 8080) rebuilds them differently."""
    got = IP(ip_bytes)
    assert scapy_checksum(ip_bytes[:got.ihl * 4]) == 0, "IPv4 header checksum"
    transport = ip_bytes[got.ihl * 4:got.len]
    assert len(transport) == got.len - got.ihl * 4 and got.proto in (PROTO_TCP, PROTO_UDP)
    if got.proto == PROTO_UDP and transport[6:8] == b"\x00\x00":
        return got  # no checksum
    assert in4_chksum(got.proto, got, transport) == 0, "transport checksum"
    return got


def fragments_of(packet: Packet, size: int) -> list[bytes]:
    return [bytes(part) for part in fragment(packet, fragsize=size)]


def reassembled(parts: list[bytes]) -> bytes:
    (whole,) = defragment([IP(part) for part in parts])
    return bytes(whole)


def test_frag_capacity():
    assert FRAG_CAPACITY == 8192


def test_first_fragment_is_dnated_and_later_fragments_follow():
    eng = engine()
    payload = bytes(range(256)) * 2
    whole = IP(src=CLIENT, dst=DNS_VIP, id=0x1234) / UDP(sport=50000, dport=53) / Raw(payload)
    parts = fragments_of(whole, 128)
    assert len(parts) == 5
    want = expected_backend((5, 6), CLIENT, DNS_VIP, 50000, 53, PROTO_UDP)
    outs = []
    for i, part in enumerate(parts):
        verdict, reason, out, trace = through(eng, part, T0 + i)
        assert (verdict, reason, trace) == (Verdict.DNAT, Reason.FRAG_DNAT if i else Reason.NEW_FLOW, (2, want.id, 1))
        got = IP(out)
        assert (got.src, got.dst, got.id, got.frag, got.flags) == (
            CLIENT, txt(want.ip), 0x1234, IP(part).frag, IP(part).flags)
        if i:
            # Only the destination address (and the header checksum) changed.
            assert out[:10] == part[:10] and out[12:16] == part[12:16] and out[20:] == part[20:]
        outs.append(out)
    # The datagram as the backend reassembles it: its UDP checksum is valid, the payload intact.
    datagram = assert_transport_checksum_valid(reassembled(outs))
    assert (datagram.dst, datagram[UDP].sport, datagram[UDP].dport) == (txt(want.ip), 50000, 5353)
    assert bytes(datagram[UDP].payload) == payload
    c = eng.counters()
    assert c["fragments"] == {"tracked": 1, "evictions": 0, "followed": 4, "not_found": 0, "entries": 1}
    assert c["reasons"]["FRAG_DNAT"] == 4 and c["reasons"]["NEW_FLOW"] == 1
    assert c["services"][1] == 5 and c["backends"][want.id - 1] == 5
    assert c["conntrack"]["entries"] == 1
    ((key, entry),) = eng.fragment_entries()
    assert key == (ip4(CLIENT), ip4(DNS_VIP), 0x1234, PROTO_UDP)  # as received
    assert (entry.verdict, entry.new_saddr, entry.new_daddr) == (Verdict.DNAT, ip4(CLIENT), want.ip)


def test_tcp_fragments_of_a_masqueraded_flow_and_of_its_reply():
    eng = v2_engine()
    payload = b"GET / HTTP/1.1\r\n" * 40
    want = pick((1, 2, 3), EXT_CLIENT, NODE_IP, 40000, 30080)
    forward = IP(src=EXT_CLIENT, dst=NODE_IP, id=7) / TCP(sport=40000, dport=30080, flags="PA", seq=5) / Raw(payload)
    outs = []
    for i, part in enumerate(fragments_of(forward, 200)):
        verdict, reason, out, trace = through(eng, part, T0 + i)
        assert (reason, trace) == (Reason.FRAG_DNAT if i else Reason.NEW_FLOW, (WEB, want.id, KIND["NodePort"] | MASQ))
        assert (IP(out).src, IP(out).dst) == (NODE_IP, txt(want.ip))  # both addresses
        outs.append(out)
    datagram = assert_transport_checksum_valid(reassembled(outs))
    assert endpoints(datagram) == (NODE_IP, 40000, txt(want.ip), 8080)
    assert bytes(datagram[TCP].payload) == payload

    # The backend's fragmented answer: REVNAT, later fragments follow it back to the client.
    answer = IP(src=txt(want.ip), dst=NODE_IP, id=7) / TCP(sport=8080, dport=40000, flags="PA", seq=9) / Raw(payload)
    outs = []
    for i, part in enumerate(fragments_of(answer, 300)):
        verdict, reason, out, trace = through(eng, part, T0 + 10 + i)
        assert (verdict, reason) == (Verdict.REVNAT, Reason.FRAG_REVNAT if i else Reason.CT_REPLY)
        assert trace == (WEB, want.id, KIND["NodePort"] | MASQ)
        assert (IP(out).src, IP(out).dst) == (NODE_IP, EXT_CLIENT)
        outs.append(out)
    datagram = assert_transport_checksum_valid(reassembled(outs))
    assert endpoints(datagram) == (NODE_IP, 30080, EXT_CLIENT, 40000)
    # Same addresses and IP id, other direction: two entries.
    assert eng.counters()["fragments"]["entries"] == 2


def test_sctp_first_fragment_is_translated_like_a_packet():
    eng = engine()
    whole = sctp(data=b"s" * 300, id=99)
    parts = fragments_of(whole, 128)
    want = expected_backend((1, 2, 3, 4), CLIENT, VIP, 40000, 80, PROTO_SCTP)
    for i, part in enumerate(parts):
        _, reason, out, _ = through(eng, part, T0 + i)
        assert reason == (Reason.FRAG_DNAT if i else Reason.NEW_FLOW)
        assert IP(out).dst == txt(want.ip)
        if i == 0:
            # Spec: the first fragment's L4 region is its own payload, so the CRC32c is
            # recomputed over it (not over the whole SCTP packet, which is not there).
            assert out[28:32] == crc32c(out[20:28] + bytes(4) + out[32:]).to_bytes(4, "little")


@pytest.mark.parametrize(
    "first, reason, trace",
    [
        (tcp(dst=EMPTY_VIP, dport=443, payload=b"r" * 200, id=5), Reason.REJECT_NO_ENDPOINT, (3, 0, 1)),
        (tcp(dst=VIP, dport=81, payload=b"r" * 200, id=5), None, None),  # PASS, to a service address
        (IP(src=CLIENT, dst=VIP, id=5) / TCP(sport=1, dport=80, dataofs=4) / Raw(b"r" * 200),
         Reason.DROP_BAD_L4_HEADER, (0, 0, 0)),
    ],
)
def test_later_fragments_of_a_dropped_or_rejected_first_fragment_are_dropped(first, reason, trace):
    eng = engine()
    parts = fragments_of(first, 64)
    verdict, got, _, got_trace = through(eng, parts[0])
    if reason is None:
        assert verdict == Verdict.PASS
        for part in parts[1:]:
            # Remembered because it is addressed to a service address: the rest passes too.
            assert through(eng, part)[1] == Reason.PASS_FRAGMENT
        assert eng.counters()["fragments"]["tracked"] == 1
        return
    assert (got, got_trace) == (reason, trace)
    for part in parts[1:]:
        verdict, got, _, got_trace = through(eng, part, T0 + 1)
        # No ICMP reply for them: only the first fragment is answered.
        assert (verdict, got, got_trace) == (Verdict.DROP, Reason.FRAG_DROP, trace)
    c = eng.counters()
    assert c["fragments"]["followed"] == len(parts) - 1
    assert c["reasons"]["FRAG_DROP"] == len(parts) - 1
    assert c["verdicts"]["REJECT"] == (reason == Reason.REJECT_NO_ENDPOINT)


def test_first_fragment_too_short_for_its_transport_header_is_remembered_as_dropped():
    eng = v2_engine()
    parts = fragments_of(tcp(src=POD_CLIENT, dst="10.96.0.10", payload=b"z" * 100, id=3), 8)
    assert len(IP(parts[0]).payload) == 8
    assert through(eng, parts[0])[1] == Reason.DROP_TRUNCATED
    assert {through(eng, part)[1] for part in parts[1:]} == {Reason.FRAG_DROP}
    # A source outside loadBalancerSourceRanges: the frontend's trace follows.
    parts = fragments_of(tcp(src=FAR_CLIENT, dst="203.0.113.10", payload=b"z" * 100, id=3), 64)
    assert through(eng, parts[0])[1:4:2] == (Reason.DROP_SOURCE_RANGE, (WEB, 0, KIND["LoadBalancer"]))
    assert through(eng, parts[1])[1:4:2] == (Reason.FRAG_DROP, (WEB, 0, KIND["LoadBalancer"]))
    assert eng.counters()["services"][WEB - 1] == 2
    # A REJECT_UNKNOWN_PORT first fragment: remembered with an empty trace.
    parts = fragments_of(udp(src=POD_CLIENT, dst="10.96.0.10", dport=9, payload=b"z" * 100), 64)
    assert through(eng, parts[0])[1] == Reason.REJECT_UNKNOWN_PORT
    assert through(eng, parts[1])[1:4:2] == (Reason.FRAG_DROP, (0, 0, 0))


@pytest.mark.parametrize(
    "dst, proto, reason",
    [
        ("10.96.0.10", PROTO_TCP, Reason.DROP_FRAG_NOT_FOUND),  # a frontend address
        ("10.96.0.10", PROTO_UDP, Reason.DROP_FRAG_NOT_FOUND),  # no UDP frontend there: still one
        ("10.96.0.10", 47, Reason.DROP_FRAG_NOT_FOUND),  # any protocol
        (NODE_IP, PROTO_TCP, Reason.DROP_FRAG_NOT_FOUND),  # NodePort address
        ("203.0.113.10", PROTO_UDP, Reason.DROP_FRAG_NOT_FOUND),  # LoadBalancer address
        ("10.96.0.77", PROTO_TCP, Reason.DROP_FRAG_NOT_FOUND),  # a service IP without frontends
        ("10.96.0.78", PROTO_TCP, Reason.PASS_FRAGMENT),
        ("8.8.8.8", PROTO_UDP, Reason.PASS_FRAGMENT),
        (NODE_IP2, PROTO_TCP, Reason.PASS_FRAGMENT),  # the node's other address: no frontend
    ],
)
def test_later_fragment_without_its_first(dst, proto, reason):
    eng = v2_engine(service_ips=(ip4("10.96.0.77"),))
    data = bytes(IP(src=EXT_CLIENT, dst=dst, id=11, frag=20, proto=proto) / Raw(b"\x00" * 64))
    _, got, _, trace = through(eng, data)
    assert (got, trace) == (reason, (0, 0, 0))
    c = eng.counters()
    assert c["fragments"] == {"tracked": 0, "evictions": 0, "followed": 0, "not_found": 1, "entries": 0}
    assert c["conntrack"]["entries"] == 0


def test_later_fragments_match_on_source_destination_id_and_protocol():
    eng = engine()
    whole = udp(payload=b"q" * 200)
    whole[IP].id = 500
    parts = fragments_of(whole, 64)
    assert through(eng, parts[0])[1] == Reason.NEW_FLOW
    later = IP(parts[1])
    for field, value in (("id", 501), ("src", "192.168.1.11"), ("proto", PROTO_TCP)):
        other = later.copy()
        setattr(other, field, value)
        del other.chksum
        assert through(eng, bytes(other))[1] == Reason.DROP_FRAG_NOT_FOUND
    # The last fragment (MF clear) and a duplicate of an earlier one both follow.
    assert through(eng, parts[-1])[1] == Reason.FRAG_DNAT
    assert through(eng, parts[1])[1] == Reason.FRAG_DNAT
    assert through(eng, parts[1])[1] == Reason.FRAG_DNAT
    assert eng.counters()["fragments"]["not_found"] == 3


def test_a_new_first_fragment_with_the_same_key_overwrites_the_entry():
    eng = engine()
    a = fragments_of(tcp(sport=1111, payload=b"a" * 100, id=9), 64)
    b = fragments_of(tcp(sport=2222, payload=b"b" * 100, id=9), 64)  # the IP id came round again
    through(eng, a[0])
    _, _, out_b, trace_b = through(eng, b[0], T0 + 1)
    _, reason, out, trace = through(eng, b[1], T0 + 2)
    assert reason == Reason.FRAG_DNAT and trace == trace_b and out[16:20] == out_b[16:20]
    assert eng.counters()["fragments"] == {"tracked": 2, "evictions": 0, "followed": 1, "not_found": 0, "entries": 1}


def test_fragment_table_lru_eviction_at_capacity():
    eng = engine()
    parts = fragments_of(udp(payload=b"f" * 40), 16)
    # FRAG_CAPACITY first fragments differing in their IP id only (one flow, one backend).
    template = IP(parts[0])
    frames = []
    for ip_id in range(FRAG_CAPACITY):
        template.id = ip_id
        del template.chksum
        frames.append(ETH_HDR + bytes(template))
    run_batch(eng, frames)
    assert eng.counters()["fragments"] == {
        "tracked": FRAG_CAPACITY, "evictions": 0, "followed": 0, "not_found": 0, "entries": FRAG_CAPACITY}
    # Id 0 becomes the most recently used: id 1 is now the least recently used one.
    later = IP(parts[1])
    later.id = 0
    del later.chksum
    assert through(eng, bytes(later))[1] == Reason.FRAG_DNAT
    template.id = FRAG_CAPACITY  # one more datagram: evicts id 1
    del template.chksum
    assert through(eng, bytes(template))[1] == Reason.CT_ESTABLISHED
    c = eng.counters()["fragments"]
    assert c == {"tracked": FRAG_CAPACITY + 1, "evictions": 1, "followed": 1, "not_found": 0, "entries": FRAG_CAPACITY}
    keys = [key for key, _ in eng.fragment_entries()]
    assert keys[0][2] == 2 and keys[-2][2] == 0 and keys[-1][2] == FRAG_CAPACITY
    for ip_id, reason in ((1, Reason.DROP_FRAG_NOT_FOUND), (0, Reason.FRAG_DNAT), (2, Reason.FRAG_DNAT)):
        later.id = ip_id
        del later.chksum
        assert through(eng, bytes(later))[1] == reason


def run_batch(eng: ReferenceEngine, frames: list[bytes], ts: int = T0) -> list[Reason]:
    buf = bytearray(b"".join(frames))
    offsets, lengths, start = array("Q"), array("I"), 0
    for frame in frames:
        offsets.append(start)
        lengths.append(len(frame))
        start += len(frame)
    n = len(frames)
    verdicts, reasons = array("B", bytes(n)), array("B", bytes(n))
    eng.process(buf, offsets, lengths, array("Q", [ts + i for i in range(n)]), verdicts, reasons, 1)
    return [Reason(r) for r in reasons]


def test_fragments_never_touch_conntrack():
    eng = v2_engine(capacity=2)
    parts = fragments_of(udp(src=POD_CLIENT, dst="10.96.0.53", payload=b"u" * 200, chksum=None), 64)
    through(eng, parts[0], T0)
    through(eng, bytes(tcp(src=POD_CLIENT, dst="10.96.0.10")), T0 + 1)
    before = eng.conntrack_entries()
    for i, part in enumerate(parts[1:]):
        assert through(eng, part, T0 + 100 * SECOND + i)[1] == Reason.FRAG_DNAT  # the flow has expired
    assert eng.conntrack_entries() == before  # same LRU order, last_seen, states
    assert eng.counters()["conntrack"]["expired"] == 0


def test_later_fragment_header_checks():
    eng = engine()
    later = bytes(IP(src=CLIENT, dst=VIP, frag=3, proto=PROTO_TCP) / Raw(b"\x00" * 16))
    assert through(eng, _with_byte(later, 0, 0x44))[1] == Reason.DROP_BAD_IP_HEADER
    assert through(eng, _with_total_length(later, 19))[1] == Reason.DROP_BAD_IP_HEADER
    assert through(eng, later[:19])[1] == Reason.DROP_TRUNCATED
    assert through(eng, later[:20])[1] == Reason.DROP_FRAG_NOT_FOUND  # no payload needed
    assert eng.counters()["fragments"]["not_found"] == 1


def test_dont_fragment_with_an_offset_is_a_later_fragment():
    data = bytes(IP(src=CLIENT, dst="8.8.8.8", flags="DF", frag=1) / Raw(b"\x00" * 8))
    assert through(engine(), data)[1] == Reason.PASS_FRAGMENT


def test_load_renumbers_fragment_entries():
    eng = v2_engine()
    parts = fragments_of(udp(src=POD_CLIENT, dst="10.96.0.53", payload=b"u" * 200), 64)
    _, _, first_out, (service_id, backend_id, kind) = through(eng, parts[0])
    assert service_id == DNS
    maps = _renamed_order(v2_maps(), [7, 6, 5, 4, 3, 2, 1], [6, 5, 4, 3, 2, 1])
    eng.load(maps)
    _, reason, out, trace = through(eng, parts[1], T0 + 1)
    # The translation stays; the ids are the new ones of the same service and backend.
    assert reason == Reason.FRAG_DNAT and out[12:20] == first_out[12:20]
    new_backend = next(b.id for b in maps.backends if b.ip == ip4(IP(first_out).dst) and b.port == 5353)
    new_service = next(s.id for s in maps.services if s.name == "kube-system/dns:dns")
    assert trace == (new_service, new_backend, kind) and (new_service, new_backend) != (service_id, backend_id)
    c = eng.counters()
    assert c["services"][new_service - 1] == 2 and c["backends"][new_backend - 1] == 2
    # Services and backends that vanish leave the entries with id 0 (still translated).
    eng.load(Maps(services=[], frontends=[], backends=[], node=maps.node))
    _, reason, out, trace = through(eng, parts[2], T0 + 2)
    assert (reason, trace) == (Reason.FRAG_DNAT, (0, 0, kind)) and out[12:20] == first_out[12:20]


# =========================================================================== ICMP errors


def icmp_through(eng: ReferenceEngine, packet: Packet, ts: int = T0):
    """An ICMP message through the twin; translated ones have every checksum valid per scapy:
    outer IPv4 header, ICMP (over the whole message), quoted IPv4 header."""
    verdict, reason, out, trace = through(eng, bytes(packet), ts)
    if verdict in (Verdict.DNAT, Verdict.REVNAT):
        ihl = (out[0] & 0x0F) * 4
        assert scapy_checksum(out[ihl:]) == 0, "ICMP checksum"
        quote = out[ihl + 8:]
        assert scapy_checksum(quote[:(quote[0] & 0x0F) * 4]) == 0, "quoted IPv4 header checksum"
    return verdict, reason, out, trace


def quote_of(out: bytes) -> bytes:
    return out[(out[0] & 0x0F) * 4 + 8:]


def error_about(packet_bytes: bytes, src: str, dst: str, cut: int | None = None, icmp_type=3, code=3) -> Packet:
    quote = packet_bytes if cut is None else packet_bytes[:cut]
    return IP(src=src, dst=dst) / ICMP(type=icmp_type, code=code) / Raw(quote)


@pytest.mark.parametrize("cut", [None, 28, 24])  # all of it, up to the UDP checksum, up to the ports
@pytest.mark.parametrize("client, masq", [(POD_CLIENT, False), (EXT_CLIENT, True)])
def test_port_unreachable_from_the_backend_about_a_dnated_udp_packet(client, masq, cut):
    eng = v2_engine()
    sent = bytes(udp(src=client, dst="10.96.0.53", sport=50000, dport=53, payload=b"query"))
    _, reason, forwarded, trace = through(eng, sent)
    assert reason == Reason.NEW_FLOW and bool(trace[2] & MASQ) is masq
    backend_ip, reply_dst = IP(forwarded).dst, IP(forwarded).src
    assert reply_dst == (NODE_IP if masq else client)
    before = eng.conntrack_entries()
    error = error_about(forwarded, backend_ip, reply_dst, cut)
    verdict, reason, out, error_trace = icmp_through(eng, error, T0 + 1)
    assert (verdict, reason, error_trace) == (Verdict.REVNAT, Reason.ICMP_ERROR_REPLY, trace)
    # Outer: from the service address the client used, to the client.
    assert (IP(out).src, IP(out).dst) == ("10.96.0.53", client)
    assert out[:10] == bytes(error)[:10]
    # The quote is the packet the client sent (addresses, ports and checksums translated back).
    assert quote_of(out) == (sent if cut is None else sent[:cut])
    if cut is None:
        assert_transport_checksum_valid(quote_of(out))
    assert eng.conntrack_entries() == before
    c = eng.counters()
    assert c["services"][DNS - 1] == 2 and c["backends"][trace[1] - 1] == 2


@pytest.mark.parametrize("cut", [None, 40, 28])  # all of it, up to the TCP checksum, 8 bytes of TCP
def test_port_unreachable_from_the_backend_about_a_masqueraded_tcp_packet(cut):
    eng = v2_engine()
    sent = bytes(tcp(src=EXT_CLIENT, dst="198.51.100.200", sport=40000, dport=80, flags="S"))
    _, reason, forwarded, trace = through(eng, sent)
    assert reason == Reason.NEW_FLOW and trace[2] == KIND["ExternalIP"] | MASQ
    error = error_about(forwarded, IP(forwarded).dst, NODE_IP, cut, code=3)
    verdict, reason, out, error_trace = icmp_through(eng, error, T0 + 1)
    assert (verdict, reason, error_trace) == (Verdict.REVNAT, Reason.ICMP_ERROR_REPLY, trace)
    assert (IP(out).src, IP(out).dst) == ("198.51.100.200", EXT_CLIENT)
    assert quote_of(out) == (sent if cut is None else sent[:cut])
    if cut is None:
        assert_transport_checksum_valid(quote_of(out))


@pytest.mark.parametrize("client, masq", [(POD_CLIENT, False), (EXT_CLIENT, True)])
def test_time_exceeded_from_a_router_keeps_its_source(client, masq):
    eng = v2_engine()
    sent = bytes(udp(src=client, dst="10.96.0.53", sport=50000, dport=53))
    _, _, forwarded, trace = through(eng, sent)
    router = "10.244.200.1"
    error = error_about(forwarded, router, IP(forwarded).src, icmp_type=11, code=0)
    verdict, reason, out, error_trace = icmp_through(eng, error, T0 + 1)
    assert (verdict, reason, error_trace) == (Verdict.REVNAT, Reason.ICMP_ERROR_REPLY, trace)
    # The router stays the source; the destination is the client (translated when masqueraded).
    assert (IP(out).src, IP(out).dst) == (router, client)
    assert out[12:16] == bytes(error)[12:16]
    assert quote_of(out) == sent
    assert_transport_checksum_valid(quote_of(out))


@pytest.mark.parametrize("cut", [None, 28])
@pytest.mark.parametrize("client, masq", [(POD_CLIENT, False), (EXT_CLIENT, True)])
def test_error_from_the_client_side_about_a_reply(client, masq, cut):
    eng = v2_engine()
    _, _, forwarded, trace = through(eng, bytes(udp(src=client, dst="10.96.0.53", sport=50000, dport=53)))
    backend_ip, reply_dst = IP(forwarded).dst, IP(forwarded).src
    answer = bytes(udp(src=backend_ip, dst=reply_dst, sport=5353, dport=50000, payload=b"answer"))
    _, reason, seen, _ = through(eng, answer, T0 + 1)
    assert reason == Reason.CT_REPLY
    assert (IP(seen).src, IP(seen).dst) == ("10.96.0.53", client)
    # The client cannot take the answer: port unreachable to the service address.
    error = error_about(seen, client, "10.96.0.53", cut)
    verdict, reason, out, error_trace = icmp_through(eng, error, T0 + 2)
    assert (verdict, reason, error_trace) == (Verdict.DNAT, Reason.ICMP_ERROR_FORWARD, trace)
    # To the backend, from the address the backend knows the client by.
    assert (IP(out).src, IP(out).dst) == (reply_dst, backend_ip)
    # The quote is the answer as the backend sent it.
    assert quote_of(out) == (answer if cut is None else answer[:cut])
    if cut is None:
        assert_transport_checksum_valid(quote_of(out))
    # A router on the client side: its address stays.
    error = error_about(seen, "172.16.9.9", "10.96.0.53", icmp_type=11, code=0)
    _, reason, out, _ = icmp_through(eng, error, T0 + 3)
    assert reason == Reason.ICMP_ERROR_FORWARD
    assert (IP(out).src, IP(out).dst) == ("172.16.9.9", backend_ip) and quote_of(out) == answer


def test_icmp_error_quoting_a_udp_packet_without_checksum_and_one_whose_checksum_is_ffff():
    eng = v2_engine()
    for sport, chksum in ((50001, 0), (50002, None)):
        payload = b"qq"
        if chksum is None:
            # A payload word making the client's checksum compute to 0: sent as 0xFFFF.
            probe = IP(bytes(udp(src=EXT_CLIENT, dst="10.96.0.53", sport=sport, dport=53, payload=b"\x00\x00")))
            payload = struct.pack("!H", probe[UDP].chksum)
        sent = bytes(udp(src=EXT_CLIENT, dst="10.96.0.53", sport=sport, dport=53, payload=payload, chksum=chksum))
        assert IP(sent)[UDP].chksum == (0 if chksum == 0 else 0xFFFF)
        _, _, forwarded, _ = through(eng, sent)
        _, reason, out, _ = icmp_through(eng, error_about(forwarded, IP(forwarded).dst, NODE_IP), T0 + 1)
        assert reason == Reason.ICMP_ERROR_REPLY
        assert quote_of(out) == sent  # 0 stays 0; a result of 0 is written as 0xFFFF


def test_icmp_error_quoting_sctp_leaves_the_crc_alone():
    eng = engine()
    sent = bytes(sctp())
    _, _, forwarded, trace = through(eng, sent)
    _, reason, out, error_trace = icmp_through(eng, error_about(forwarded, IP(forwarded).dst, CLIENT), T0 + 1)
    assert (reason, error_trace) == (Reason.ICMP_ERROR_REPLY, trace)
    quote = quote_of(out)
    assert quote[:28] == sent[:28]  # IPv4 header and ports translated back
    assert quote[28:] == forwarded[28:]  # the CRC (and the rest) as quoted


@pytest.mark.parametrize(
    "make_quote",
    [
        pytest.param(lambda f: f[:23], id="ports cut"),
        pytest.param(lambda f: f[:20], id="header only"),
        pytest.param(lambda f: f[:19], id="header cut"),
        pytest.param(lambda f: b"", id="empty quote"),
        pytest.param(lambda f: _with_byte(f, 0, 0x65), id="version 6"),
        pytest.param(lambda f: _with_byte(f, 0, 0x44), id="ihl 4"),
        pytest.param(lambda f: _with_byte(f, 0, 0x46)[:27], id="ihl 6, ports cut"),
        pytest.param(lambda f: _with_total_length(f, 19), id="total length < ihl*4"),
        pytest.param(lambda f: _with_total_length(f, 22), id="total length short of the ports"),
        pytest.param(lambda f: f[:6] + b"\x00\x01" + f[8:], id="later fragment"),
        pytest.param(lambda f: _with_byte(f, 9, 1), id="quoted icmp"),
    ],
)
def test_unusable_quotes_pass(make_quote):
    eng = v2_engine()
    _, _, forwarded, _ = through(eng, bytes(udp(src=POD_CLIENT, dst="10.96.0.53")))
    error = error_about(make_quote(forwarded), IP(forwarded).dst, POD_CLIENT)
    assert icmp_through(eng, error, T0 + 1)[1:4:2] == (Reason.PASS_UNSUPPORTED, (0, 0, 0))


def test_quote_past_the_outer_total_length_is_not_used():
    eng = v2_engine()
    _, _, forwarded, _ = through(eng, bytes(udp(src=POD_CLIENT, dst="10.96.0.53")))
    error = bytes(error_about(forwarded[:23], IP(forwarded).dst, POD_CLIENT))
    # The rest of the quote in Ethernet padding: beyond the outer total length.
    assert through(eng, error + forwarded[23:28], T0 + 1)[1] == Reason.PASS_UNSUPPORTED
    # A snaplen cut (total length beyond the capture) is not padding: the captured quote counts.
    whole = bytes(error_about(forwarded, IP(forwarded).dst, POD_CLIENT))
    assert through(eng, whole[:20 + 8 + 24], T0 + 1)[1] == Reason.ICMP_ERROR_REPLY


def test_quoted_tcp_checksum_is_updated_only_when_inside_the_quoted_total_length():
    eng = v2_engine()
    sent = bytes(tcp(src=EXT_CLIENT, dst="198.51.100.200", sport=40000, dport=80, flags="S"))
    _, _, forwarded, _ = through(eng, sent)
    # A (bogus) quoted total length of 28: the TCP checksum lies outside the quoted packet.
    quote = _with_total_length(forwarded, 28)
    header = IP(quote[:20])
    del header.chksum
    quote = bytes(header)[:20] + quote[20:]
    _, reason, out, _ = icmp_through(eng, error_about(quote, IP(forwarded).dst, NODE_IP), T0 + 1)
    assert reason == Reason.ICMP_ERROR_REPLY
    assert quote_of(out)[20:24] == sent[20:24] and quote_of(out)[36:38] == forwarded[36:38]


def test_icmp_messages_that_are_not_errors_about_flows():
    eng = v2_engine()
    _, _, forwarded, _ = through(eng, bytes(udp(src=POD_CLIENT, dst="10.96.0.53")))
    backend_ip = IP(forwarded).dst
    cases = [
        (IP(src=POD_CLIENT, dst="10.96.0.53") / ICMP(type=8) / Raw(b"ping"), Reason.PASS_UNSUPPORTED),
        (IP(src=backend_ip, dst=POD_CLIENT) / ICMP(type=0) / Raw(forwarded), Reason.PASS_UNSUPPORTED),
        (IP(src=backend_ip, dst=POD_CLIENT) / ICMP(type=5) / Raw(forwarded), Reason.PASS_UNSUPPORTED),
        (IP(src=backend_ip, dst=POD_CLIENT) / ICMP(type=4) / Raw(forwarded), Reason.PASS_UNSUPPORTED),
        # An error about no tracked flow (another client port).
        (error_about(bytes(udp(src=POD_CLIENT, dst=backend_ip, sport=1, dport=5353)), backend_ip, POD_CLIENT),
         Reason.PASS_NO_SERVICE),
        # The untranslated tuple is not the flow's: the quote must be what the backend got.
        (error_about(bytes(udp(src=POD_CLIENT, dst="10.96.0.53")), backend_ip, POD_CLIENT), Reason.PASS_NO_SERVICE),
    ]
    for packet, reason in cases:
        assert icmp_through(eng, packet, T0 + 1)[1:4:2] == (reason, (0, 0, 0))
    short = bytes(IP(src=backend_ip, dst=POD_CLIENT, proto=1) / Raw(b"\x03\x03\x00\x00\x00\x00\x00"))
    assert through(eng, short)[1] == Reason.DROP_TRUNCATED
    assert through(eng, bytes(IP(src=backend_ip, dst=POD_CLIENT) / ICMP(type=3)))[1] == Reason.PASS_UNSUPPORTED


def test_icmp_errors_change_no_conntrack_state():
    eng = v2_engine()
    flows = [tcp(src=EXT_CLIENT, dst="198.51.100.200", sport=port, dport=80, flags="S") for port in (40001, 40002)]
    outs = [through(eng, bytes(flow), T0 + i)[2] for i, flow in enumerate(flows)]
    before = eng.conntrack_entries()
    assert [e.state for e in before] == [CT_SYN_SENT, CT_SYN_SENT]
    # An error about the least recently used flow, later, with RST-like quoted flags: nothing moves.
    quoted = _with_byte(outs[0], 33, 0x14)
    _, reason, _, _ = icmp_through(eng, error_about(quoted, IP(outs[0]).dst, NODE_IP), T0 + 30 * SECOND)
    assert reason == Reason.ICMP_ERROR_REPLY
    # From the client side too.
    seen = bytes(tcp(src="198.51.100.200", dst=EXT_CLIENT, sport=80, dport=40001, flags="SA"))
    assert icmp_through(eng, error_about(seen, EXT_CLIENT, "198.51.100.200"), T0 + 31 * SECOND)[1] == (
        Reason.ICMP_ERROR_FORWARD)
    assert eng.conntrack_entries() == before  # LRU order, last_seen and state untouched
    # Expired (SYN_SENT: 60 s): not found, and not deleted either.
    late = T0 + 61 * SECOND
    assert icmp_through(eng, error_about(outs[1], IP(outs[1]).dst, NODE_IP), late)[1] == Reason.PASS_NO_SERVICE
    assert eng.conntrack_entries() == before and eng.counters()["conntrack"]["expired"] == 0
    # The flow's own next packet expires it.
    assert through(eng, bytes(flows[1]), late)[1] == Reason.NEW_FLOW
    assert eng.counters()["conntrack"]["expired"] == 1


def test_icmp_error_from_the_endpoint_itself_on_a_hairpin_flow():
    eng = v2_engine()
    backend_two = "10.244.2.2"
    # Backend 2 reaches itself through the single-backend service: hairpin, masqueraded.
    sent = bytes(udp(src=backend_two, dst="10.96.0.16", sport=50000, dport=80, payload=b"x"))
    maps = v2_maps()
    maps.frontends.append(fe("10.96.0.16", 80, SINGLE, proto=PROTO_UDP))
    eng.load(maps)
    _, reason, forwarded, trace = through(eng, sent)
    assert reason == Reason.NEW_FLOW and (IP(forwarded).src, IP(forwarded).dst) == (NODE_IP, backend_two)
    error = error_about(forwarded, backend_two, NODE_IP)
    _, reason, out, error_trace = icmp_through(eng, error, T0 + 1)
    assert (reason, error_trace) == (Reason.ICMP_ERROR_REPLY, trace)
    assert (IP(out).src, IP(out).dst) == ("10.96.0.16", backend_two)
    assert quote_of(out) == sent


def test_icmp_error_checksums_with_quoted_ip_options_and_a_batch_trace():
    eng = v2_engine()
    sent = bytes(IP(src=EXT_CLIENT, dst="10.96.0.53", options=b"\x01" * 4) / UDP(sport=50000, dport=53) / Raw(b"o"))
    _, _, forwarded, trace = through(eng, sent)
    error = bytes(error_about(forwarded, IP(forwarded).dst, NODE_IP))
    frames = [ETH_HDR + error, ETH_HDR + bytes(IP(src=POD_CLIENT, dst="10.96.0.53") / ICMP())]
    buf = bytearray(b"".join(frames))
    verdicts, reasons = array("B", [0, 0]), array("B", [0, 0])
    services, backends, flags = array("I", [9, 9]), array("I", [9, 9]), array("B", [9, 9])
    eng.process(buf, array("Q", [0, len(frames[0])]), array("I", [len(f) for f in frames]),
                array("Q", [T0 + 1, T0 + 2]), verdicts, reasons, 1, services, backends, flags)
    assert [Reason(r) for r in reasons] == [Reason.ICMP_ERROR_REPLY, Reason.PASS_UNSUPPORTED]
    assert list(zip(services, backends, flags)) == [trace, (0, 0, 0)]
    out = bytes(buf[14:len(frames[0])])
    assert scapy_checksum(out[:20]) == 0 and scapy_checksum(out[20:]) == 0
    assert quote_of(out) == sent


# =========================================================================== IPv6
#
# A dual-stack node: IPv4 192.168.0.1 and IPv6 fd00:1::1 (node.primary_ip6), pod CIDRs 10.244.0.0/16
# and fd00:244::/64. Dual-stack service ports are two Services of one name, one per family.
# Every translated packet's TCP/UDP/ICMPv6 checksum is checked with scapy's in6_chksum over the
# IPv6 pseudo-header, and an SCTP CRC32c with scapy's crc32c.

NODE6 = "fd00:1::1"
NODE6_2 = "fd00:1::2"
POD6 = "fd00:244::99"
EXT6 = "2001:db8:c::7"  # inside the LoadBalancer source range 2001:db8:c::/48
FAR6 = "2001:db8:f::5"  # outside it
VIP6 = "fd00:96::10"  # TCP and SCTP :80 -> WEB6
DNS6_VIP = "fd00:96::53"  # UDP :53 -> DNS6
EMPTY6_VIP = "fd00:96::99"  # TCP :443 -> no backends
STICKY6_VIP = "fd00:96::15"
SINGLE6_VIP = "fd00:96::16"
LB6 = "2001:db8:1b::10"
EXTIP6 = "2001:db8:e::10"

WEB4, WEB6, DNS6, EMPTY6, STICKY6, SINGLE6, DNS4 = range(1, 8)  # service ids
ICMPV6 = 58


def ip6(text: str) -> int:
    return address_from_text(text)


def txt6(value: int) -> str:
    return format_address(value)


LB6_RANGES = ((ip6("2001:db8:c::"), 48),)  # EXT6 is inside, FAR6 outside

V6_BACKENDS = [
    backend(1, "10.244.1.1", 8080),
    backend(2, "10.244.2.2", 8080),
    Backend(3, ip6("fd00:244::1:1"), 8080, "[fd00:244::1:1]:8080 (default/web-a)"),  # on this node
    Backend(4, ip6("fd00:244::2:2"), 8080, "[fd00:244::2:2]:8080 (default/web-b)"),
    Backend(5, ip6("fd00:244::3:3"), 8080, "[fd00:244::3:3]:8080 (default/web-c)"),
    Backend(6, ip6("fd00:244::1:4"), 5353, "[fd00:244::1:4]:5353 (kube-system/dns-a)"),
    Backend(7, ip6("fd00:244::2:5"), 5353, "[fd00:244::2:5]:5353 (kube-system/dns-b)"),
    backend(8, "10.244.1.4", 5353),
    backend(9, "10.244.2.5", 5353),
]


def fe6(ip, port, service, kind="ClusterIP", proto=PROTO_TCP, local=False, ranges=()):
    return Frontend(ip=ip6(ip), port=port, proto=proto, service=service, kind=kind,
                    local_policy=local, source_ranges=ranges)


def v6_maps(**node) -> Maps:
    view = {
        "primary_ip": ip4(NODE_IP),
        "primary_ip6": ip6(NODE6),
        "local_ips": (ip4(NODE_IP), ip6(NODE6), ip6(NODE6_2)),
        "pod_cidrs": ((ip4("10.244.0.0"), 16), (ip6("fd00:244::"), 64)),
        "service_ips": (ip4("10.96.0.10"), ip4("10.96.0.53"), ip6(VIP6), ip6(DNS6_VIP), ip6(EMPTY6_VIP),
                        ip6(STICKY6_VIP), ip6(SINGLE6_VIP), ip6("fd00:96::77")),
    }
    view.update(node)
    return Maps(
        services=[
            Service(WEB4, "default/web:http", (1, 2), serving=(1, 2)),
            Service(WEB6, "default/web:http", (3, 4, 5), local_backends=(3,), serving=(3, 4, 5), family=6),
            Service(DNS6, "kube-system/dns:dns", (6, 7), local_backends=(6,), serving=(6, 7), family=6),
            Service(EMPTY6, "default/empty:https", (), family=6),
            Service(STICKY6, "default/sticky:http", (3, 4, 5), serving=(3, 4, 5), affinity_timeout_s=10, family=6),
            Service(SINGLE6, "default/single:http", (4,), serving=(4,), family=6),
            Service(DNS4, "kube-system/dns:dns", (8, 9), serving=(8, 9)),
        ],
        frontends=[
            fe("10.96.0.10", 80, WEB4),
            fe(NODE_IP, 30080, WEB4, "NodePort"),
            fe("10.96.0.53", 53, DNS4, proto=PROTO_UDP),
            fe6(VIP6, 80, WEB6),
            fe6(VIP6, 80, WEB6, proto=PROTO_SCTP),
            fe6(NODE6, 30080, WEB6, "NodePort"),
            fe6(NODE6, 30090, WEB6, "NodePort", local=True),
            fe6(LB6, 80, WEB6, "LoadBalancer", ranges=LB6_RANGES),
            fe6(EXTIP6, 80, WEB6, "ExternalIP"),
            fe6(DNS6_VIP, 53, DNS6, proto=PROTO_UDP),
            fe6(NODE6, 30053, DNS6, "NodePort", proto=PROTO_UDP),
            fe6(EMPTY6_VIP, 443, EMPTY6),
            fe6(STICKY6_VIP, 80, STICKY6),
            fe6(SINGLE6_VIP, 80, SINGLE6),
        ],
        backends=list(V6_BACKENDS),
        node=NodeView(**view),
    )


def v6_engine(capacity: int = DEFAULT_CT_CAPACITY, **node) -> ReferenceEngine:
    return ReferenceEngine(v6_maps(**node), ct_capacity=capacity)


def spec_fold(text: str) -> int:
    """The spec's fold, spelled independently: IPv4 as is; IPv6 the XOR of its four 32-bit words."""
    address = ipaddress.ip_address(text)
    if address.version == 4:
        return int(address)
    a, b, c, d = struct.unpack("!4I", address.packed)
    return a ^ b ^ c ^ d


def pick6(ids, src, dst, sport, dport, proto=PROTO_TCP, table=V6_BACKENDS) -> Backend:
    """pick() for a 5-tuple of either family, its addresses folded as the spec says."""
    return pick(ids, src, dst, sport, dport, proto, table)


ETH6_HDR = bytes(Ether(src=MAC_A, dst=MAC_B, type=0x86DD))
V6_EXTENSION_LAYERS = (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, AH)


def tcp6(src=POD6, dst=VIP6, sport=40000, dport=80, flags="S", payload=b"hello", ext=None) -> Packet:
    head = IPv6(src=src, dst=dst) if ext is None else IPv6(src=src, dst=dst) / ext
    return head / TCP(sport=sport, dport=dport, flags=flags, seq=1000) / Raw(payload)


def udp6(src=POD6, dst=DNS6_VIP, sport=50000, dport=53, payload=b"query", ext=None, chksum=None) -> Packet:
    head = IPv6(src=src, dst=dst) if ext is None else IPv6(src=src, dst=dst) / ext
    layer = UDP(sport=sport, dport=dport) if chksum is None else UDP(sport=sport, dport=dport, chksum=chksum)
    return head / layer / Raw(payload)


def sctp6(src=POD6, dst=VIP6, sport=40000, dport=80, data=b"sctp data") -> Packet:
    return IPv6(src=src, dst=dst) / SCTP(sport=sport, dport=dport, tag=0x0BADCAFE) / SCTPChunkData(
        tsn=7, stream_id=1, data=data)


def upper_layer(ip6_packet: IPv6) -> Packet:
    """The layer after the IPv6 header and its extension headers, as scapy dissects it."""
    layer = ip6_packet.payload
    while isinstance(layer, V6_EXTENSION_LAYERS):
        layer = layer.payload
    return layer


def assert_upper_layer_checksum_valid(ip6_bytes: bytes) -> IPv6:
    """The datagram's TCP/UDP/ICMPv6 checksum is valid per scapy's in6_chksum (IPv6 pseudo-header
    and the raw upper-layer bytes, checksum included, sum to 0); an SCTP CRC32c is scapy's."""
    got = IPv6(ip6_bytes)
    datagram = ip6_bytes[: 40 + got.plen]
    assert len(datagram) == 40 + got.plen, "a whole datagram"
    got = IPv6(datagram)
    layer = upper_layer(got)
    raw = bytes(layer)
    assert datagram.endswith(raw)
    nh = layer.underlayer.nh
    if nh == PROTO_SCTP:
        assert raw[8:12] == scapy_crc_field(raw), "SCTP CRC32c"
    else:
        assert nh in (PROTO_TCP, PROTO_UDP, ICMPV6)
        assert in6_chksum(nh, layer, raw) == 0, "upper-layer checksum"
    return got


def through6(eng: ReferenceEngine, ip6_bytes: bytes, ts: int = T0):
    """Raw IPv6 bytes in an Ethernet frame through the twin: (verdict, reason, IPv6 bytes out,
    trace). Untranslated packets are untouched."""
    data = ETH6_HDR + ip6_bytes
    verdict, reason, out, trace = eng.trace_packet(data, ts)
    assert VERDICT_OF_REASON[reason] is verdict
    assert out[:14] == data[:14] and len(out) == len(data)
    if verdict in (Verdict.PASS, Verdict.DROP, Verdict.REJECT):
        assert out == data, "PASS, DROP and REJECT never modify the packet"
    return verdict, reason, out[14:], trace


def go6(eng: ReferenceEngine, packet: Packet, ts: int = T0):
    """A whole IPv6 datagram through the twin: (verdict, reason, IPv6 layer out, trace), the
    upper-layer checksum of a translated one checked by scapy."""
    verdict, reason, out, trace = through6(eng, bytes(packet), ts)
    if verdict in (Verdict.DNAT, Verdict.REVNAT):
        assert_upper_layer_checksum_valid(out)
    return verdict, reason, IPv6(out), trace


def endpoints6(got: IPv6) -> tuple[str, int, str, int]:
    """(source, source port, destination, destination port); ports read from the upper layer's
    first 4 bytes (scapy leaves what follows AH undissected)."""
    sport, dport = struct.unpack("!HH", bytes(upper_layer(got))[:4])
    return got.src, sport, got.dst, dport


# --------------------------------------------------------------------------- IPv6: hash


def test_fold_address():
    assert fold_address(ip4("10.1.2.3")) == ip4("10.1.2.3")
    assert fold_address(ip6("::")) == 0
    assert fold_address(ip6("1:2:3:4:5:6:7:8")) == 0x00010002 ^ 0x00030004 ^ 0x00050006 ^ 0x00070008
    assert fold_address(ip6("::a00:1")) == ip4("10.0.0.1")  # same hash input, different addresses
    for text in (POD6, VIP6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::1"):
        assert fold_address(ip6(text)) == spec_fold(text)


def test_ipv6_flow_hash_and_selection_use_the_fold():
    for src, dst, sport, dport, proto in [(POD6, VIP6, 40000, 80, 6), ("::", "::1", 0, 65535, 17),
                                          (EXT6, NODE6, 65535, 30080, 132)]:
        ports = (sport << 24) | (dport << 8) | proto
        want = fmix64(((spec_fold(src) << 32) | spec_fold(dst)) ^ fmix64(ports))
        assert flow_hash(ip6(src), ip6(dst), sport, dport, proto) == want
        assert bucket_hash(ip6(src), ip6(dst), sport, dport, proto) == bucket_hash(
            spec_fold(src), spec_fold(dst), sport, dport, proto)
    # IPv4 hashing is unchanged by the fold.
    assert flow_hash(1, 2, 3, 4, 6) == 18248133996163371442
    eng = v6_engine()
    chosen = set()
    for port in range(41000, 41040):
        _, reason, got, trace = go6(eng, tcp6(sport=port))
        want = pick6((3, 4, 5), POD6, VIP6, port, 80)
        assert select_backend((3, 4, 5), ip6(POD6), ip6(VIP6), port, 80, PROTO_TCP) == want.id
        assert (reason, endpoints6(got), trace) == (Reason.NEW_FLOW, (POD6, port, txt6(want.ip), 8080),
                                                    (WEB6, want.id, KIND["ClusterIP"]))
        chosen.add(want.id)
    assert chosen == {3, 4, 5}


# --------------------------------------------------------------------------- IPv6: flows and rewrite


def test_ipv6_tcp_flow_dnat_then_reply_revnat_then_established():
    eng = v6_engine()
    sent = tcp6(src=POD6, dst=VIP6, sport=40000, flags="S", payload=b"syn")
    verdict, reason, got, trace = go6(eng, sent)
    want = pick6((3, 4, 5), POD6, VIP6, 40000, 80)
    assert (verdict, reason, trace) == (Verdict.DNAT, Reason.NEW_FLOW, (WEB6, want.id, KIND["ClusterIP"]))
    assert endpoints6(got) == (POD6, 40000, txt6(want.ip), 8080)
    out, before = bytes(got), bytes(sent)
    # Only the destination address, port and the TCP checksum changed (no IP header checksum).
    assert out[:24] == before[:24] and out[40:42] == before[40:42] and out[44:56] == before[44:56]
    assert out[58:] == before[58:]
    (entry,) = eng.conntrack_entries()
    assert entry.orig == (ip6(POD6), ip6(VIP6), 40000, 80, PROTO_TCP)
    assert entry.reply == (want.ip, ip6(POD6), 8080, 40000, PROTO_TCP) and entry.state == CT_SYN_SENT

    reply = tcp6(src=txt6(want.ip), dst=POD6, sport=8080, dport=40000, flags="SA", payload=b"")
    verdict, reason, got, trace = go6(eng, reply, T0 + 1)
    assert (verdict, reason, trace) == (Verdict.REVNAT, Reason.CT_REPLY, (WEB6, want.id, KIND["ClusterIP"]))
    assert endpoints6(got) == (VIP6, 80, POD6, 40000)
    assert eng.conntrack_entries()[0].state == CT_ESTABLISHED

    _, reason, got, _ = go6(eng, tcp6(sport=40000, flags="A"), T0 + 2)
    assert reason == Reason.CT_ESTABLISHED and got.dst == txt6(want.ip)
    c = eng.counters()
    assert c["services"][WEB6 - 1] == 3 and c["backends"][want.id - 1] == 3
    assert c["services"][WEB4 - 1] == 0


def test_ipv6_udp_flow_and_reply():
    eng = v6_engine()
    _, reason, got, trace = go6(eng, udp6(src=POD6, sport=50000, payload=b"question"))
    want = pick6((6, 7), POD6, DNS6_VIP, 50000, 53, PROTO_UDP)
    assert (reason, endpoints6(got), trace) == (Reason.NEW_FLOW, (POD6, 50000, txt6(want.ip), 5353),
                                                (DNS6, want.id, KIND["ClusterIP"]))
    assert eng.conntrack_entries()[0].state == CT_OTHER
    _, reason, got, _ = go6(eng, udp6(src=txt6(want.ip), dst=POD6, sport=5353, dport=50000, payload=b"answer"), T0 + 1)
    assert (reason, endpoints6(got)) == (Reason.CT_REPLY, (DNS6_VIP, 53, POD6, 50000))


def test_ipv6_udp_computed_zero_checksum_is_written_as_ffff():
    eng = v6_engine()
    want = pick6((6, 7), POD6, DNS6_VIP, 50001, 53, PROTO_UDP)
    # A payload word making the translated packet's checksum compute to 0.
    probe = IPv6(bytes(udp6(src=POD6, dst=txt6(want.ip), sport=50001, dport=5353, payload=b"\x00\x00")))
    payload = struct.pack("!H", probe[UDP].chksum)
    _, reason, got, _ = go6(eng, udp6(src=POD6, sport=50001, payload=payload))
    assert reason == Reason.NEW_FLOW and got[UDP].chksum == 0xFFFF


def test_ipv6_sctp_flow_recomputes_the_crc_and_a_cut_keeps_it():
    eng = v6_engine()
    sent = bytes(sctp6(sport=40000))
    _, reason, out, trace = through6(eng, sent)
    want = pick6((3, 4, 5), POD6, VIP6, 40000, 80, PROTO_SCTP)
    assert (reason, trace) == (Reason.NEW_FLOW, (WEB6, want.id, KIND["ClusterIP"]))
    got = assert_upper_layer_checksum_valid(out)
    assert (got.dst, got[SCTP].dport) == (txt6(want.ip), 8080)
    assert out[48:52] == crc32c(out[40:48] + bytes(4) + out[52:]).to_bytes(4, "little")
    # A snaplen cut after the common header: translated, the CRC left as it was.
    cut = bytes(sctp6(sport=40001))
    _, reason, out, _ = through6(eng, cut[:60], T0 + 1)
    assert reason == Reason.NEW_FLOW and out[48:52] == cut[48:52]
    # The reply.
    answer = bytes(sctp6(src=txt6(want.ip), dst=POD6, sport=8080, dport=40000))
    _, reason, out, _ = through6(eng, answer, T0 + 2)
    got = assert_upper_layer_checksum_valid(out)
    assert reason == Reason.CT_REPLY and (got.src, got[SCTP].sport) == (VIP6, 80)


def test_ipv6_checksum_update_runs_on_every_word_even_unchanged():
    """As for IPv4: a (bogus) 0xFFFF checksum goes through the update of every word of the
    address and port, unchanged or not (8 words per IPv6 address), and comes out 0x0000."""
    same = ip6("fd00::1")
    maps = Maps(
        services=[Service(id=1, name="same", backends=(1,), family=6)],
        frontends=[Frontend(ip=same, port=80, proto=PROTO_TCP, service=1)],
        backends=[Backend(1, same, 80, "[fd00::1]:80")],
    )
    data = bytearray(ETH6_HDR + bytes(tcp6(dst="fd00::1")))
    data[14 + 40 + 16: 14 + 40 + 18] = b"\xff\xff"
    verdict, _, out = run(engine(maps=maps), bytes(data))
    assert verdict == Verdict.DNAT
    assert out[14 + 40 + 16: 14 + 40 + 18] == b"\x00\x00"
    assert out[: 14 + 40 + 16] == data[: 14 + 40 + 16] and out[14 + 40 + 18:] == data[14 + 40 + 18:]


def test_ipv6_snaplen_cut_is_rewritten_and_padding_is_left_alone():
    full = bytes(tcp6(flags="S", payload=b"x" * 100))
    _, _, whole_out, _ = through6(v6_engine(), full)
    for cut in (60, 61, 75, len(full) - 1):  # payload length beyond the captured bytes
        verdict, reason, out, _ = through6(v6_engine(), full[:cut])
        assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
        assert out == whole_out[:cut]
    # Ethernet padding after the datagram (payload length) is not part of it.
    verdict, _, out, _ = through6(v6_engine(), bytes(tcp6(payload=b"")) + b"\xAA" * 6)
    assert verdict == Verdict.DNAT and out[-6:] == b"\xAA" * 6
    assert_upper_layer_checksum_valid(out)


@pytest.mark.parametrize(
    "name, linktype, header",
    [
        ("ethernet", 1, ETH6_HDR),
        ("vlan", 1, bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=42, type=0x86DD))),
        ("qinq", 1, bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1AD(vlan=5) / Dot1Q(vlan=7, type=0x86DD))),
        ("cooked-v1", 113, bytes(CookedLinux(proto=0x86DD))),
        ("cooked-v2", 276, bytes(CookedLinuxV2(proto=0x86DD))),
        ("null-24", 0, struct.pack("<I", 24)),
        ("null-28", 0, struct.pack("<I", 28)),
        ("null-30-be", 0, struct.pack(">I", 30)),
        ("raw-101", 101, b""),
        ("raw-228", 228, b""),
    ],
)
def test_ipv6_link_types_dnat_and_revnat(name, linktype, header):
    eng = v6_engine()
    verdict, reason, out = run(eng, header + bytes(tcp6()), linktype=linktype)
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW), name
    assert out[: len(header)] == header
    want = pick6((3, 4, 5), POD6, VIP6, 40000, 80)
    got = assert_upper_layer_checksum_valid(out[len(header):])
    assert (got.dst, got[TCP].dport) == (txt6(want.ip), 8080)
    reply = header + bytes(tcp6(src=txt6(want.ip), dst=POD6, sport=8080, dport=40000, flags="SA"))
    verdict, reason, out = run(eng, reply, T0 + 1, linktype=linktype)
    assert (verdict, reason) == (Verdict.REVNAT, Reason.CT_REPLY)
    assert IPv6(out[len(header):]).src == VIP6


def test_ipv4_and_ipv6_addresses_never_equal():
    eng = v6_engine()
    # ::a60:a carries the 32 bits of 10.96.0.10 (an IPv4 frontend and service IP): not it.
    assert go6(eng, tcp6(dst="::a60:a"))[1] == Reason.PASS_NO_SERVICE
    # And 10.96.0.10 is not [::a60:a]: an IPv6 frontend there does not catch IPv4 packets.
    maps = v6_maps()
    maps.frontends.append(fe6("::a60:b", 80, WEB6))
    eng.load(maps)
    assert go(eng, tcp(src=POD_CLIENT, dst="10.96.0.11"))[1] == Reason.PASS_NO_SERVICE
    # Conntrack tuples too: the IPv4 addresses with the low 32 bits of an IPv6 flow's reply
    # tuple are no reply of it.
    _, _, got, _ = go6(eng, tcp6(src="::af4:909"))

    def low32(text):
        return str(ipaddress.IPv4Address(int(ipaddress.IPv6Address(text)) & 0xFFFFFFFF))

    assert go(eng, tcp(src=low32(got.dst), dst=low32(got.src), sport=8080, dport=40000, flags="SA"))[1] == (
        Reason.PASS_NO_SERVICE)
    assert go6(eng, tcp6(src=got.dst, dst=got.src, sport=8080, dport=40000, flags="SA"))[1] == Reason.CT_REPLY


# --------------------------------------------------------------------------- IPv6: parsing


def _v6_with_byte(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1:]


def _v6_with_payload_length(data: bytes, length: int) -> bytes:
    return data[:4] + struct.pack("!H", length) + data[6:]


def _v6_tcp_with_data_offset(offset: int) -> bytes:
    data = bytearray(GOOD_TCP6)
    data[40 + 12] = (offset << 4) | (data[40 + 12] & 0x0F)
    return bytes(data)


def _hbh(length_units: int = 0, nh: int = PROTO_TCP) -> bytes:
    """A hop-by-hop (or any 8-byte-unit) extension header of (length_units + 1) * 8 bytes."""
    size = (length_units + 1) * 8
    return bytes([nh, length_units]) + bytes(size - 2)  # Pad1 options


def _ipv6_with_chain(chain: bytes, first_nh: int, upper: bytes, src=POD6, dst=VIP6) -> bytes:
    """An IPv6 header (payload length right) followed by raw extension headers and upper bytes."""
    header = bytes(IPv6(src=src, dst=dst, nh=first_nh, plen=len(chain) + len(upper)))
    return header + chain + upper


def _with_chain(data: bytes, chain: bytes, first_nh: int) -> bytes:
    """An IPv6 packet without extension headers, with raw ones inserted (the last must name the
    packet's own next header) and its payload length grown to match."""
    plen = int.from_bytes(data[4:6], "big") + len(chain)
    return data[:4] + struct.pack("!HB", plen, first_nh) + data[7:40] + chain + data[40:]


def _tcp_bytes(src=POD6, dst=VIP6, sport=40000, dport=80, flags="S", payload=b"hello") -> bytes:
    """TCP header and payload with the checksum right for (src, dst) and no extension headers."""
    return bytes(tcp6(src=src, dst=dst, sport=sport, dport=dport, flags=flags, payload=payload))[40:]


GOOD_TCP6 = bytes(tcp6(payload=b"0123456789"))  # 40 IPv6 + 20 TCP + 10
GOOD_UDP6 = bytes(udp6(payload=b"0123456789"))  # 40 IPv6 + 8 UDP + 10
GOOD_SCTP6 = bytes(sctp6(data=b"0123"))  # 40 IPv6 + 12 SCTP + 16 DATA chunk + 4 payload


IPV6_MALFORMED = [
    # Header
    ("39 bytes", GOOD_TCP6[:39], Reason.DROP_TRUNCATED),
    ("version nibble only", GOOD_TCP6[:1], Reason.DROP_TRUNCATED),
    ("version 4 in the ipv6 ethertype", _v6_with_byte(GOOD_TCP6, 0, 0x40), Reason.DROP_BAD_IP_HEADER),
    ("version 0", _v6_with_byte(GOOD_TCP6, 0, 0x00), Reason.DROP_BAD_IP_HEADER),
    ("version 4, 39 bytes", _v6_with_byte(GOOD_TCP6, 0, 0x45)[:39], Reason.DROP_TRUNCATED),
    ("v4-mapped source", bytes(tcp6(src="::ffff:10.0.0.1")), Reason.DROP_BAD_IP_HEADER),
    ("v4-mapped destination", bytes(tcp6(dst="::ffff:10.96.0.10")), Reason.DROP_BAD_IP_HEADER),
    # TCP
    ("tcp header cut", GOOD_TCP6[:59], Reason.DROP_TRUNCATED),
    ("tcp no header", GOOD_TCP6[:40], Reason.DROP_TRUNCATED),
    ("tcp cut by payload length", _v6_with_payload_length(GOOD_TCP6, 19), Reason.DROP_TRUNCATED),
    ("payload length 0", _v6_with_payload_length(GOOD_TCP6, 0), Reason.DROP_TRUNCATED),
    ("tcp data offset 4", _v6_tcp_with_data_offset(4), Reason.DROP_BAD_L4_HEADER),
    ("tcp data offset past the payload", _v6_tcp_with_data_offset(9), Reason.DROP_BAD_L4_HEADER),
    ("tcp data offset past the payload length", _v6_with_payload_length(_v6_tcp_with_data_offset(6), 23),
     Reason.DROP_BAD_L4_HEADER),
    # UDP
    ("udp header cut", GOOD_UDP6[:47], Reason.DROP_TRUNCATED),
    ("udp length 7", GOOD_UDP6[:44] + struct.pack("!H", 7) + GOOD_UDP6[46:], Reason.DROP_BAD_L4_HEADER),
    ("udp checksum 0", bytes(udp6(chksum=0)), Reason.DROP_BAD_L4_HEADER),
    ("udp length 7 and checksum 0", GOOD_UDP6[:44] + struct.pack("!H", 7) + b"\x00\x00" + GOOD_UDP6[48:],
     Reason.DROP_BAD_L4_HEADER),
    ("udp checksum 0, header cut", bytes(udp6(chksum=0))[:47], Reason.DROP_TRUNCATED),
    # SCTP
    ("sctp common header cut", GOOD_SCTP6[:51], Reason.DROP_TRUNCATED),
    ("sctp cut by payload length", _v6_with_payload_length(GOOD_SCTP6, 11), Reason.DROP_TRUNCATED),
    # ICMPv6
    ("icmpv6 7 bytes", bytes(IPv6(src=FAR6, dst=POD6) / ICMPv6DestUnreach())[:47], Reason.DROP_TRUNCATED),
    ("icmpv6 echo 7 bytes", bytes(IPv6(src=FAR6, dst=POD6) / ICMPv6EchoRequest())[:47], Reason.DROP_TRUNCATED),
    # Extension headers
    ("hop-by-hop cut", _ipv6_with_chain(_hbh(), 0, _tcp_bytes())[:47], Reason.DROP_TRUNCATED),
    ("hop-by-hop first 8 bytes only", _ipv6_with_chain(_hbh(1), 0, _tcp_bytes())[:48], Reason.DROP_TRUNCATED),
    ("hop-by-hop past the payload length", _v6_with_payload_length(_ipv6_with_chain(_hbh(1), 0, _tcp_bytes()), 15),
     Reason.DROP_BAD_IP_HEADER),
    ("hop-by-hop, payload length 0", _v6_with_payload_length(_ipv6_with_chain(_hbh(), 0, _tcp_bytes()), 0),
     Reason.DROP_BAD_IP_HEADER),
    ("routing header past the payload length", _ipv6_with_chain(_hbh(200, PROTO_TCP)[:16], 43, _tcp_bytes()),
     Reason.DROP_BAD_IP_HEADER),
    ("ah past the payload length", _ipv6_with_chain(bytes([PROTO_TCP, 9]) + bytes(6), 51, bytes(24)),
     Reason.DROP_BAD_IP_HEADER),  # (9 + 2) * 4 = 44 > 8 + 24
    ("second fragment header", _ipv6_with_chain(bytes([44, 0, 0, 1, 0, 0, 0, 7]) + bytes([6, 0, 0, 1, 0, 0, 0, 7]),
                                                44, _tcp_bytes()), Reason.DROP_BAD_IP_HEADER),
    ("fragment header after an atomic one", _ipv6_with_chain(bytes([60, 0, 0, 0, 0, 0, 0, 7]) + _hbh(0, 44)
                                                             + bytes([6, 0, 0, 1, 0, 0, 0, 8]), 44, _tcp_bytes()),
     Reason.DROP_BAD_IP_HEADER),
    ("headers past the captured bytes, transport not captured",
     _ipv6_with_chain(_hbh(3), 0, _tcp_bytes())[:48], Reason.DROP_TRUNCATED),
    ("header chain ends past the capture", _ipv6_with_chain(_hbh(3), 0, _tcp_bytes())[:60], Reason.DROP_TRUNCATED),
]


@pytest.mark.parametrize("name, data, reason", IPV6_MALFORMED, ids=[m[0] for m in IPV6_MALFORMED])
def test_ipv6_malformed(name, data, reason):
    eng = v6_engine()
    verdict, got, out, trace = through6(eng, data)
    assert (verdict, got, trace) == (Verdict.DROP, reason, (0, 0, 0))
    c = eng.counters()
    assert c["reasons"][reason.name] == 1 and c["conntrack"]["entries"] == 0
    assert c["fragments"]["entries"] == 0


def test_ipv6_version_nibble_decides_raw_link_types():
    eng = v6_engine()
    assert run(eng, b"\x60", linktype=101)[1] == Reason.DROP_TRUNCATED  # IPv6, 1 byte captured
    assert run(eng, bytes(tcp6()), linktype=228)[1] == Reason.NEW_FLOW
    # The IPv6 ethertype with a v4 packet behind it, and the other way round.
    assert run(eng, ETH6_HDR + bytes(tcp(src=POD_CLIENT, dst="10.96.0.10")))[1] == Reason.DROP_BAD_IP_HEADER
    assert run(eng, ETH_HDR + bytes(tcp6()))[1] == Reason.DROP_BAD_IP_HEADER


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6, nh=59)), id="no next header"),
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6, nh=47) / Raw(b"\x00" * 8)), id="gre"),
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6, nh=1) / ICMP(type=3, code=3) / Raw(GOOD_TCP6[:48])),
                     id="icmpv4 in ipv6"),
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6) / ICMPv6EchoRequest()), id="echo request"),
        pytest.param(bytes(IPv6(src=VIP6, dst=POD6) / ICMPv6EchoReply()), id="echo reply"),
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6) / ICMPv6ND_NS(tgt=VIP6)), id="neighbour solicitation"),
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6) / ICMPv6Unknown(type=0) / Raw(GOOD_TCP6)), id="icmpv6 type 0"),
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6) / ICMPv6Unknown(type=5) / Raw(GOOD_TCP6)), id="icmpv6 type 5"),
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6) / ICMPv6Unknown(type=127) / Raw(GOOD_TCP6)), id="icmpv6 type 127"),
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6) / IPv6ExtHdrDestOpt(nh=59) / Raw(b"\x00" * 8)),
                     id="destination options, then no next header"),
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6, nh=60) / Raw(_hbh(0, 60) * 8 + _hbh(0, 6))) + _tcp_bytes(),
                     id="9 extension headers"),
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6, nh=60, plen=64) / Raw(_hbh(0, 60) * 8)), id="9th not captured"),
        pytest.param(bytes(IPv6(src=POD6, dst=VIP6, nh=60, plen=64) / Raw(_hbh(0, 60) * 7 + _hbh(0, 44))),
                     id="9th a fragment header"),
    ],
)
def test_ipv6_unsupported_traffic_passes(data):
    eng = v6_engine()
    verdict, reason, out, trace = through6(eng, data)
    assert (verdict, reason, trace) == (Verdict.PASS, Reason.PASS_UNSUPPORTED, (0, 0, 0))
    assert eng.counters()["conntrack"]["entries"] == 0 and eng.counters()["fragments"]["entries"] == 0


# --------------------------------------------------------------------------- IPv6: extension headers


EXTENSION_CHAINS = {
    "hop-by-hop": lambda: IPv6ExtHdrHopByHop(),
    "hop-by-hop, 24 bytes": lambda: IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00" * 20)]),
    "routing": lambda: IPv6ExtHdrRouting(addresses=[], segleft=0),
    "destination options": lambda: IPv6ExtHdrDestOpt(),
    "atomic fragment": lambda: IPv6ExtHdrFragment(offset=0, m=0, id=0xDEADBEEF),
    "ah": lambda: AH(nh=PROTO_TCP, payloadlen=4, spi=0x100, seq=1, icv=b"\x11" * 12),
    "all five": lambda: (IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=[], segleft=0)
                         / IPv6ExtHdrFragment(offset=0, m=0, id=3) / IPv6ExtHdrDestOpt()
                         / AH(nh=PROTO_TCP, payloadlen=4, spi=1, seq=1, icv=b"\x22" * 12)),
    "8 headers": lambda: (IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
                          / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()),
}


def with_chain(name: str, **fields) -> bytes:
    """A TCP packet behind the extension headers EXTENSION_CHAINS[name], its checksum computed
    without them (scapy leaves it 0 behind AH; the pseudo-header holds no extension header)."""
    plain = bytes(tcp6(**fields))
    chained = bytes(tcp6(ext=EXTENSION_CHAINS[name](), **fields))
    return chained[: len(chained) - len(plain) + 40] + plain[40:]


@pytest.mark.parametrize("name", sorted(EXTENSION_CHAINS))
def test_extension_headers_are_walked_to_the_transport(name):
    eng = v6_engine()
    sent = with_chain(name, sport=40000, payload=b"hello")
    chain_end = len(sent) - 20 - len(b"hello")
    verdict, reason, out, trace = through6(eng, sent)
    want = pick6((3, 4, 5), POD6, VIP6, 40000, 80)
    assert (verdict, reason, trace) == (Verdict.DNAT, Reason.NEW_FLOW, (WEB6, want.id, KIND["ClusterIP"]))
    got = assert_upper_layer_checksum_valid(out)
    assert endpoints6(got) == (POD6, 40000, txt6(want.ip), 8080)
    assert out[40:chain_end] == sent[40:chain_end]  # the chain itself is untouched
    assert eng.counters()["fragments"]["entries"] == 0  # an atomic fragment is no fragment
    # The reply through the same kind of chain.
    reply = with_chain(name, src=txt6(want.ip), dst=POD6, sport=8080, dport=40000, flags="SA")
    verdict, reason, out, _ = through6(eng, reply, T0 + 1)
    got = assert_upper_layer_checksum_valid(out)
    assert (verdict, reason, endpoints6(got)) == (Verdict.REVNAT, Reason.CT_REPLY, (VIP6, 80, POD6, 40000))


def test_extension_header_lengths_by_kind():
    """Fragment: 8 bytes; AH: (byte 1 + 2) * 4; the others: (byte 1 + 1) * 8."""
    eng = v6_engine()
    cases = [
        (0, _hbh(2, PROTO_TCP)),  # 24 bytes
        (43, bytes([PROTO_TCP, 2, 0, 0]) + bytes(20)),  # routing (type 0, one address), 24 bytes
        (60, bytes([PROTO_TCP, 0]) + bytes(6)),  # destination options, 8 bytes
        (44, bytes([PROTO_TCP, 0xFF, 0, 0, 1, 2, 3, 4])),  # fragment (atomic): 8 bytes whatever byte 1 says
        (51, bytes([PROTO_TCP, 1]) + bytes(10)),  # AH: (1 + 2) * 4 = 12 bytes
        (51, bytes([PROTO_TCP, 4]) + bytes(22)),  # AH: 24 bytes
    ]
    for n, (first, chain) in enumerate(cases):
        data = _ipv6_with_chain(chain, first, _tcp_bytes(sport=40100 + n))
        verdict, reason, out, _ = through6(eng, data, T0 + n)
        assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW), first
        assert out[40:40 + len(chain)] == chain
        assert_upper_layer_checksum_valid(out)
        assert int.from_bytes(out[40 + len(chain): 40 + len(chain) + 2], "big") == 40100 + n


# --------------------------------------------------------------------------- IPv6: fragments


def fragments6(packet: Packet, size: int, ident: int = 0x12345678) -> list[bytes]:
    """scapy's IPv6 fragments of `packet` (a fragment header inserted after the base header)."""
    ip = packet[IPv6]
    whole = IPv6(src=ip.src, dst=ip.dst) / IPv6ExtHdrFragment(id=ident) / ip.payload
    return [bytes(part) for part in fragment6(whole, size)]


def reassembled6(parts: list[bytes]) -> bytes:
    whole = defragment6([IPv6(part) for part in parts])
    data = bytes(whole)
    return data


def test_ipv6_first_fragment_is_dnated_and_later_fragments_follow():
    eng = v6_engine()
    payload = bytes(range(256)) * 3
    parts = fragments6(udp6(src=POD6, sport=50000, payload=payload), 300, ident=0xA1B2C3D4)
    assert len(parts) >= 3
    want = pick6((6, 7), POD6, DNS6_VIP, 50000, 53, PROTO_UDP)
    outs = []
    for i, part in enumerate(parts):
        verdict, reason, out, trace = through6(eng, part, T0 + i)
        assert (verdict, reason, trace) == (Verdict.DNAT, Reason.FRAG_DNAT if i else Reason.NEW_FLOW,
                                            (DNS6, want.id, KIND["ClusterIP"]))
        assert (IPv6(out).src, IPv6(out).dst) == (POD6, txt6(want.ip))
        if i:
            # Only the destination address changed: no checksum in a later fragment to update.
            assert out[:24] == part[:24] and out[40:] == part[40:]
        outs.append(out)
    datagram = assert_upper_layer_checksum_valid(reassembled6(outs))
    assert endpoints6(datagram) == (POD6, 50000, txt6(want.ip), 5353)
    assert bytes(datagram[UDP].payload) == payload
    c = eng.counters()
    assert c["fragments"] == {"tracked": 1, "evictions": 0, "followed": len(parts) - 1, "not_found": 0,
                              "entries": 1}
    assert c["reasons"]["FRAG_DNAT"] == len(parts) - 1 and c["services"][DNS6 - 1] == len(parts)
    ((key, entry),) = eng.fragment_entries()
    assert key == (ip6(POD6), ip6(DNS6_VIP), 0xA1B2C3D4, PROTO_UDP)  # 32-bit id, as received
    assert (entry.verdict, entry.new_saddr, entry.new_daddr) == (Verdict.DNAT, ip6(POD6), want.ip)


def test_ipv6_fragments_of_a_masqueraded_flow_and_of_its_reply():
    eng = v6_engine()
    payload = b"GET / HTTP/1.1\r\n" * 40
    want = pick6((3, 4, 5), EXT6, NODE6, 40000, 30080)
    forward = tcp6(src=EXT6, dst=NODE6, sport=40000, dport=30080, flags="PA", payload=payload)
    outs = []
    for i, part in enumerate(fragments6(forward, 256, ident=7)):
        _, reason, out, trace = through6(eng, part, T0 + i)
        assert (reason, trace) == (Reason.FRAG_DNAT if i else Reason.NEW_FLOW, (WEB6, want.id, KIND["NodePort"] | MASQ))
        assert (IPv6(out).src, IPv6(out).dst) == (NODE6, txt6(want.ip))
        outs.append(out)
    datagram = assert_upper_layer_checksum_valid(reassembled6(outs))
    assert endpoints6(datagram) == (NODE6, 40000, txt6(want.ip), 8080)
    answer = tcp6(src=txt6(want.ip), dst=NODE6, sport=8080, dport=40000, flags="PA", payload=payload)
    outs = []
    for i, part in enumerate(fragments6(answer, 400, ident=7)):
        verdict, reason, out, trace = through6(eng, part, T0 + 10 + i)
        assert (verdict, reason) == (Verdict.REVNAT, Reason.FRAG_REVNAT if i else Reason.CT_REPLY)
        assert (IPv6(out).src, IPv6(out).dst) == (NODE6, EXT6)
        outs.append(out)
    datagram = assert_upper_layer_checksum_valid(reassembled6(outs))
    assert endpoints6(datagram) == (NODE6, 30080, EXT6, 40000)
    assert eng.counters()["fragments"]["entries"] == 2


def _fragment_header(nh: int, offset: int, more: bool, ident: int) -> bytes:
    return bytes([nh, 0]) + struct.pack("!HI", (offset << 3) | int(more), ident)


def test_ipv6_fragment_key_is_the_fragment_headers_id_and_next_header():
    eng = v6_engine()
    # First fragment: hop-by-hop, fragment (nh: destination options), destination options, UDP.
    udp_bytes = bytes(udp6(src=POD6, sport=50000, payload=b"u" * 64))[40:]
    first = _ipv6_with_chain(_hbh(0, 44) + _fragment_header(60, 0, True, 0x01020304) + _hbh(0, PROTO_UDP),
                             0, udp_bytes[:40], dst=DNS6_VIP)
    verdict, reason, out, trace = through6(eng, first)
    want = pick6((6, 7), POD6, DNS6_VIP, 50000, 53, PROTO_UDP)
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW) and IPv6(out).dst == txt6(want.ip)
    ((key, _),) = eng.fragment_entries()
    assert key == (ip6(POD6), ip6(DNS6_VIP), 0x01020304, 60)  # the fragment header's nh, not UDP

    def later(nh, ident, offset=6, chain_before=b""):
        return _ipv6_with_chain(chain_before + _fragment_header(nh, offset, False, ident), 44 if not chain_before else 0,
                                udp_bytes[40:], dst=DNS6_VIP)

    assert through6(eng, later(60, 0x01020304))[1] == Reason.FRAG_DNAT
    assert through6(eng, later(PROTO_UDP, 0x01020304))[1] == Reason.DROP_FRAG_NOT_FOUND  # other nh
    assert through6(eng, later(60, 0x0102))[1] == Reason.DROP_FRAG_NOT_FOUND  # other id
    assert through6(eng, later(60, 0x01020304 | (1 << 31)))[1] == Reason.DROP_FRAG_NOT_FOUND  # all 32 bits
    # Headers before the fragment header are walked; nothing after it is parsed in a later one.
    _, reason, out, _ = through6(eng, later(60, 0x01020304, chain_before=_hbh(1, 44)))
    assert reason == Reason.FRAG_DNAT and IPv6(out).dst == txt6(want.ip)
    garbage_after = _ipv6_with_chain(_fragment_header(60, 9, True, 0x01020304) + b"\xff" * 3, 44, b"", dst=DNS6_VIP)
    assert through6(eng, garbage_after)[1] == Reason.FRAG_DNAT


@pytest.mark.parametrize(
    "dst, proto, reason",
    [
        (VIP6, PROTO_TCP, Reason.DROP_FRAG_NOT_FOUND),  # a frontend address
        (VIP6, 47, Reason.DROP_FRAG_NOT_FOUND),  # any protocol
        (NODE6, PROTO_UDP, Reason.DROP_FRAG_NOT_FOUND),  # NodePort address
        (LB6, PROTO_TCP, Reason.DROP_FRAG_NOT_FOUND),  # LoadBalancer address
        ("fd00:96::77", PROTO_TCP, Reason.DROP_FRAG_NOT_FOUND),  # a service IP without frontends
        ("fd00:96::78", PROTO_TCP, Reason.PASS_FRAGMENT),
        (NODE6_2, PROTO_TCP, Reason.PASS_FRAGMENT),
        ("::a60:a", PROTO_TCP, Reason.PASS_FRAGMENT),  # not 10.96.0.10
    ],
)
def test_ipv6_later_fragment_without_its_first(dst, proto, reason):
    eng = v6_engine()
    data = _ipv6_with_chain(_fragment_header(proto, 20, True, 11), 44, b"\x00" * 64, src=EXT6, dst=dst)
    _, got, _, trace = through6(eng, data)
    assert (got, trace) == (reason, (0, 0, 0))
    assert eng.counters()["fragments"] == {"tracked": 0, "evictions": 0, "followed": 0, "not_found": 1, "entries": 0}


def test_ipv6_later_fragments_of_a_rejected_or_passed_first_fragment():
    eng = v6_engine()
    parts = fragments6(tcp6(dst=EMPTY6_VIP, dport=443, payload=b"r" * 300), 200, ident=5)
    assert through6(eng, parts[0])[1:4:2] == (Reason.REJECT_NO_ENDPOINT, (EMPTY6, 0, KIND["ClusterIP"]))
    for part in parts[1:]:
        assert through6(eng, part)[1:4:2] == (Reason.FRAG_DROP, (EMPTY6, 0, KIND["ClusterIP"]))
    # A first fragment that passes to a service address (no such port) is remembered: the rest passes.
    parts = fragments6(tcp6(dst=LB6, dport=81, payload=b"p" * 300), 200, ident=6)
    assert through6(eng, parts[0])[1] == Reason.PASS_NO_SERVICE
    assert {through6(eng, part)[1] for part in parts[1:]} == {Reason.PASS_FRAGMENT}
    # A first fragment with an unsupported protocol to a service address: remembered, as for IPv4.
    first = _ipv6_with_chain(_fragment_header(47, 0, True, 8), 44, b"\x00" * 16, dst=VIP6)
    assert through6(eng, first)[1] == Reason.PASS_UNSUPPORTED
    assert through6(eng, _ipv6_with_chain(_fragment_header(47, 2, False, 8), 44, b"\x00" * 16, dst=VIP6))[1] == (
        Reason.PASS_FRAGMENT)
    # A first fragment whose UDP checksum is 0: dropped, and so are its later fragments.
    parts = fragments6(udp6(payload=b"z" * 300, chksum=0), 200, ident=9)
    assert through6(eng, parts[0])[1] == Reason.DROP_BAD_L4_HEADER
    assert through6(eng, parts[1])[1] == Reason.FRAG_DROP
    assert eng.counters()["fragments"]["tracked"] == 4


def test_ipv6_first_fragment_whose_chain_fails_after_its_fragment_header_is_not_remembered():
    eng = v6_engine()
    later = _ipv6_with_chain(_fragment_header(60, 4, False, 77), 44, b"\x00" * 32, dst=VIP6)
    cases = [
        # A destination options header cut by the capture.
        (_ipv6_with_chain(_fragment_header(60, 0, True, 77) + _hbh(0, PROTO_TCP), 44, _tcp_bytes())[:50],
         Reason.DROP_TRUNCATED),
        # A destination options header past the payload length.
        (_v6_with_payload_length(_ipv6_with_chain(_fragment_header(60, 0, True, 77) + _hbh(0, PROTO_TCP), 44,
                                                  _tcp_bytes()), 12), Reason.DROP_BAD_IP_HEADER),
        # A 9th extension header after the fragment header.
        (_ipv6_with_chain(_fragment_header(60, 0, True, 77) + _hbh(0, 60) * 7 + _hbh(0, PROTO_TCP), 44,
                          _tcp_bytes()), Reason.PASS_UNSUPPORTED),
    ]
    for first, reason in cases:
        assert through6(eng, first)[1] == reason
        assert eng.counters()["fragments"]["tracked"] == 0
        # Its later fragments know nothing of it.
        assert through6(eng, later)[1] == Reason.DROP_FRAG_NOT_FOUND
    # The same first fragment with a whole chain is remembered (a TCP header cut: DROP_TRUNCATED).
    first = _ipv6_with_chain(_fragment_header(60, 0, True, 77) + _hbh(0, PROTO_TCP), 44, _tcp_bytes()[:10])
    assert through6(eng, first)[1] == Reason.DROP_TRUNCATED
    assert through6(eng, later)[1] == Reason.FRAG_DROP


def test_fragment_table_is_shared_by_both_families():
    eng = v6_engine()
    v4_parts = fragments_of(udp(src=POD_CLIENT, dst="10.96.0.53", payload=b"f" * 40), 16)
    template = IP(v4_parts[0])
    frames = []
    for ip_id in range(FRAG_CAPACITY - 1):
        template.id = ip_id
        del template.chksum
        frames.append(ETH_HDR + bytes(template))
    run_batch(eng, frames)
    # The same 16-bit id in IPv6: its own entry (the addresses differ by family).
    v6_parts = fragments6(udp6(payload=b"g" * 300), 200, ident=0)
    assert through6(eng, v6_parts[0], T0 + SECOND)[1] == Reason.NEW_FLOW
    assert eng.counters()["fragments"]["entries"] == FRAG_CAPACITY
    # One more (IPv6) datagram: the least recently used entry (IPv4, id 0) goes.
    more = fragments6(udp6(payload=b"h" * 300), 200, ident=1)
    assert through6(eng, more[0], T0 + SECOND + 1)[1] == Reason.CT_ESTABLISHED
    c = eng.counters()["fragments"]
    assert c["evictions"] == 1 and c["entries"] == FRAG_CAPACITY
    later = IP(v4_parts[1])
    for ip_id, reason in ((0, Reason.DROP_FRAG_NOT_FOUND), (1, Reason.FRAG_DNAT)):
        later.id = ip_id
        del later.chksum
        assert through(eng, bytes(later))[1] == reason
    assert through6(eng, v6_parts[1])[1] == Reason.FRAG_DNAT and through6(eng, more[1])[1] == Reason.FRAG_DNAT


def test_load_renumbers_ipv6_fragment_entries():
    eng = v6_engine()
    parts = fragments6(udp6(payload=b"u" * 300), 200)
    _, _, first_out, (service_id, backend_id, kind) = through6(eng, parts[0])
    maps = _renamed_order(v6_maps(), [7, 6, 5, 4, 3, 2, 1], list(range(9, 0, -1)))
    eng.load(maps)
    _, reason, out, trace = through6(eng, parts[1], T0 + 1)
    assert reason == Reason.FRAG_DNAT and out[8:40] == first_out[8:40]
    new_service = next(s.id for s in maps.services if (s.name, s.family) == ("kube-system/dns:dns", 6))
    new_backend = next(b.id for b in maps.backends if b.ip == ip6(IPv6(first_out).dst))
    assert trace == (new_service, new_backend, kind) and new_service == 5 and service_id == DNS6


# --------------------------------------------------------------------------- IPv6: ICMPv6 errors


ICMPV6_ERRORS = {
    1: lambda: ICMPv6DestUnreach(code=4),
    2: lambda: ICMPv6PacketTooBig(mtu=1280),
    3: lambda: ICMPv6TimeExceeded(code=0),
    4: lambda: ICMPv6ParamProblem(code=0, ptr=6),
}


def error6_about(quote: bytes, src: str, dst: str, icmp_type: int = 1, cut: int | None = None) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / ICMPV6_ERRORS[icmp_type]() / Raw(quote if cut is None else quote[:cut]))


def icmp6_through(eng: ReferenceEngine, error: bytes, ts: int = T0):
    """An ICMPv6 message through the twin; a translated one's ICMPv6 checksum (over the outer
    pseudo-header and the whole message) is checked with scapy."""
    verdict, reason, out, trace = through6(eng, error, ts)
    if verdict in (Verdict.DNAT, Verdict.REVNAT):
        got = IPv6(out)
        assert in6_chksum(ICMPV6, got.payload, out[40:]) == 0, "ICMPv6 checksum"
    return verdict, reason, out, trace


@pytest.mark.parametrize("cut", [None, 48, 44])  # all of it, up to the UDP checksum, up to the ports
@pytest.mark.parametrize("icmp_type", [1, 2, 3, 4])
@pytest.mark.parametrize("client, masq", [(POD6, False), (EXT6, True)])
def test_icmpv6_error_from_the_backend_about_a_dnated_udp_packet(client, masq, icmp_type, cut):
    eng = v6_engine()
    sent = bytes(udp6(src=client, dst=DNS6_VIP, sport=50000, payload=b"query"))
    if masq:
        sent = bytes(udp6(src=client, dst=NODE6, sport=50000, dport=30053, payload=b"query"))
    _, reason, forwarded, trace = through6(eng, sent)
    assert reason == Reason.NEW_FLOW and bool(trace[2] & MASQ) is masq
    backend_ip, reply_dst = IPv6(forwarded).dst, IPv6(forwarded).src
    assert reply_dst == (NODE6 if masq else client)
    before = eng.conntrack_entries()
    error = error6_about(forwarded, backend_ip, reply_dst, icmp_type, cut)
    verdict, reason, out, error_trace = icmp6_through(eng, error, T0 + 1)
    assert (verdict, reason, error_trace) == (Verdict.REVNAT, Reason.ICMP_ERROR_REPLY, trace)
    # Outer: from the service address the client used, to the client.
    assert (IPv6(out).src, IPv6(out).dst) == (IPv6(sent).dst, client)
    assert out[40:42] == error[40:42] and out[44:48] == error[44:48]  # type, code, the rest of the header
    assert out[48:] == (sent if cut is None else sent[:cut])
    if cut is None:
        assert_upper_layer_checksum_valid(out[48:])
    assert eng.conntrack_entries() == before
    c = eng.counters()
    assert c["services"][DNS6 - 1] == 2 and c["backends"][trace[1] - 1] == 2


@pytest.mark.parametrize("cut", [None, 60, 58, 48])
def test_icmpv6_error_about_a_masqueraded_tcp_packet(cut):
    eng = v6_engine()
    sent = bytes(tcp6(src=EXT6, dst=EXTIP6, sport=40000, dport=80, flags="S"))
    _, reason, forwarded, trace = through6(eng, sent)
    assert reason == Reason.NEW_FLOW and trace[2] == KIND["ExternalIP"] | MASQ
    error = error6_about(forwarded, IPv6(forwarded).dst, NODE6, 1, cut)
    verdict, reason, out, error_trace = icmp6_through(eng, error, T0 + 1)
    assert (verdict, reason, error_trace) == (Verdict.REVNAT, Reason.ICMP_ERROR_REPLY, trace)
    assert (IPv6(out).src, IPv6(out).dst) == (EXTIP6, EXT6)
    assert out[48:] == (sent if cut is None else sent[:cut])


def test_icmpv6_time_exceeded_from_a_router_keeps_its_source():
    eng = v6_engine()
    sent = bytes(udp6(src=EXT6, dst=NODE6, dport=30053))
    _, _, forwarded, trace = through6(eng, sent)
    router = "fd00:244::1"
    error = error6_about(forwarded, router, NODE6, 3)
    verdict, reason, out, error_trace = icmp6_through(eng, error, T0 + 1)
    assert (verdict, reason, error_trace) == (Verdict.REVNAT, Reason.ICMP_ERROR_REPLY, trace)
    assert (IPv6(out).src, IPv6(out).dst) == (router, EXT6)
    assert out[48:] == sent


@pytest.mark.parametrize("client, masq", [(POD6, False), (EXT6, True)])
def test_icmpv6_error_from_the_client_side_about_a_reply(client, masq):
    eng = v6_engine()
    dst, dport = (NODE6, 30053) if masq else (DNS6_VIP, 53)
    _, _, forwarded, trace = through6(eng, bytes(udp6(src=client, dst=dst, sport=50000, dport=dport)))
    backend_ip, reply_dst = IPv6(forwarded).dst, IPv6(forwarded).src
    answer = bytes(udp6(src=backend_ip, dst=reply_dst, sport=5353, dport=50000, payload=b"answer"))
    _, reason, seen, _ = through6(eng, answer, T0 + 1)
    assert reason == Reason.CT_REPLY and (IPv6(seen).src, IPv6(seen).dst) == (dst, client)
    for icmp_type in (1, 2, 3, 4):
        error = error6_about(seen, client, dst, icmp_type)
        verdict, reason, out, error_trace = icmp6_through(eng, error, T0 + 2)
        assert (verdict, reason, error_trace) == (Verdict.DNAT, Reason.ICMP_ERROR_FORWARD, trace)
        # To the backend, from the address the backend knows the client by.
        assert (IPv6(out).src, IPv6(out).dst) == (reply_dst, backend_ip)
        assert out[48:] == answer
    # A router on the client side keeps its address.
    _, reason, out, _ = icmp6_through(eng, error6_about(seen, "2001:db8:99::1", dst, 3), T0 + 3)
    assert reason == Reason.ICMP_ERROR_FORWARD and (IPv6(out).src, IPv6(out).dst) == ("2001:db8:99::1", backend_ip)


def test_icmpv6_error_quoting_extension_headers_and_a_first_fragment():
    eng = v6_engine()
    sent = bytes(tcp6(src=EXT6, dst=NODE6, dport=30080, flags="S",
                      ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(m=1, id=99)))
    _, reason, forwarded, trace = through6(eng, sent)
    assert reason == Reason.NEW_FLOW
    # Errors quote up to 1232 bytes: here all of it, and a quote cut inside the TCP header.
    for cut in (None, 40 + 24 + 20):
        _, reason, out, error_trace = icmp6_through(eng, error6_about(forwarded, IPv6(forwarded).dst, NODE6, 2, cut),
                                                    T0 + 1)
        assert (reason, error_trace) == (Reason.ICMP_ERROR_REPLY, trace)
        assert out[48:] == (sent if cut is None else sent[:cut])


def test_icmpv6_error_quoting_udp_without_checksum_keeps_it_zero():
    eng = v6_engine()
    _, _, forwarded, trace = through6(eng, bytes(udp6(src=EXT6, dst=NODE6, dport=30053, payload=b"q")))
    # The quote as a router might have seen it with a zero checksum (it never is on an IPv6 wire).
    quote = forwarded[:46] + b"\x00\x00" + forwarded[48:]
    _, reason, out, error_trace = icmp6_through(eng, error6_about(quote, IPv6(forwarded).dst, NODE6), T0 + 1)
    assert (reason, error_trace) == (Reason.ICMP_ERROR_REPLY, trace)
    assert out[48 + 46:48 + 48] == b"\x00\x00" and IPv6(out[48:])[UDP].sport == 50000


def test_icmpv6_error_quoting_sctp_leaves_the_crc_alone():
    eng = v6_engine()
    sent = bytes(sctp6())
    _, _, forwarded, trace = through6(eng, sent)
    _, reason, out, error_trace = icmp6_through(eng, error6_about(forwarded, IPv6(forwarded).dst, POD6), T0 + 1)
    assert (reason, error_trace) == (Reason.ICMP_ERROR_REPLY, trace)
    assert out[48:48 + 44] == sent[:44] and out[48 + 44:] == forwarded[44:]


@pytest.mark.parametrize(
    "make_quote",
    [
        pytest.param(lambda f: f[:43], id="ports cut"),
        pytest.param(lambda f: f[:40], id="header only"),
        pytest.param(lambda f: f[:39], id="header cut"),
        pytest.param(lambda f: b"", id="empty quote"),
        pytest.param(lambda f: _v6_with_byte(f, 0, 0x40), id="version 4"),
        pytest.param(lambda f: f[:8] + ipaddress.IPv6Address("::ffff:10.0.0.1").packed + f[24:], id="v4-mapped source"),
        pytest.param(lambda f: _v6_with_payload_length(f, 3), id="payload length short of the ports"),
        pytest.param(lambda f: _v6_with_byte(f, 6, 47), id="quoted gre"),
        pytest.param(lambda f: _v6_with_byte(f, 6, ICMPV6), id="quoted icmpv6"),
        pytest.param(lambda f: _with_chain(f, _fragment_header(PROTO_UDP, 3, True, 1), 44), id="later fragment"),
        pytest.param(lambda f: _with_chain(f, _hbh(0, PROTO_UDP), 0)[:46], id="extension header cut"),
        pytest.param(lambda f: _v6_with_payload_length(_with_chain(f, _hbh(0, PROTO_UDP), 0), 7),
                     id="extension header past its payload length"),
        pytest.param(lambda f: _with_chain(f, _hbh(0, 60) * 8 + _hbh(0, PROTO_UDP), 60), id="9 extension headers"),
        pytest.param(lambda f: _with_chain(f, _fragment_header(44, 0, True, 1) + _fragment_header(PROTO_UDP, 0, True, 1),
                                           44), id="two fragment headers"),
        pytest.param(lambda f: bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5353, dport=50000)), id="ipv4 quote"),
    ],
)
def test_unusable_ipv6_quotes_pass(make_quote):
    eng = v6_engine()
    _, _, forwarded, _ = through6(eng, bytes(udp6(src=POD6, dst=DNS6_VIP)))
    error = error6_about(make_quote(forwarded), IPv6(forwarded).dst, POD6)
    assert icmp6_through(eng, error, T0 + 1)[1:4:2] == (Reason.PASS_UNSUPPORTED, (0, 0, 0))


def test_icmp_errors_quoting_the_other_ip_version_pass():
    eng = v6_engine()
    # An IPv4 flow and an IPv6 flow.
    _, _, forwarded4, _ = through(eng, bytes(udp(src=POD_CLIENT, dst="10.96.0.53")))
    _, _, forwarded6, _ = through6(eng, bytes(udp6(src=POD6, dst=DNS6_VIP)))
    # ICMPv6 quoting the IPv4 flow's packet; ICMP quoting the IPv6 flow's packet.
    error = error6_about(forwarded4, IPv6(forwarded6).dst, POD6)
    assert icmp6_through(eng, error, T0 + 1)[1] == Reason.PASS_UNSUPPORTED
    error4 = bytes(IP(src=IP(forwarded4).dst, dst=POD_CLIENT) / ICMP(type=3, code=3) / Raw(forwarded6))
    assert through(eng, error4, T0 + 1)[1] == Reason.PASS_UNSUPPORTED
    # Each with its own version's quote is translated.
    assert icmp6_through(eng, error6_about(forwarded6, IPv6(forwarded6).dst, POD6), T0 + 2)[1] == (
        Reason.ICMP_ERROR_REPLY)
    error4 = bytes(IP(src=IP(forwarded4).dst, dst=POD_CLIENT) / ICMP(type=3, code=3) / Raw(forwarded4))
    assert through(eng, error4, T0 + 2)[1] == Reason.ICMP_ERROR_REPLY


def test_icmpv6_messages_that_are_not_errors_about_flows():
    eng = v6_engine()
    _, _, forwarded, _ = through6(eng, bytes(udp6(src=POD6, dst=DNS6_VIP)))
    backend_ip = IPv6(forwarded).dst
    cases = [
        (bytes(IPv6(src=backend_ip, dst=POD6) / ICMPv6EchoReply() / Raw(forwarded)), Reason.PASS_UNSUPPORTED),
        (bytes(IPv6(src=backend_ip, dst=POD6) / ICMPv6Unknown(type=137) / Raw(forwarded)), Reason.PASS_UNSUPPORTED),
        # An ICMPv4 type number (11, 12) is no ICMPv6 error.
        (bytes(IPv6(src=backend_ip, dst=POD6) / ICMPv6Unknown(type=11) / Raw(forwarded)), Reason.PASS_UNSUPPORTED),
        # About no tracked flow (another client port), or about the untranslated tuple.
        (error6_about(bytes(udp6(src=POD6, dst=backend_ip, sport=1, dport=5353)), backend_ip, POD6),
         Reason.PASS_NO_SERVICE),
        (error6_about(bytes(udp6(src=POD6, dst=DNS6_VIP)), backend_ip, POD6), Reason.PASS_NO_SERVICE),
    ]
    for packet, reason in cases:
        assert icmp6_through(eng, packet, T0 + 1)[1:4:2] == (reason, (0, 0, 0))


def test_icmpv6_errors_change_no_conntrack_state_and_expired_flows_are_not_found():
    eng = v6_engine()
    _, _, forwarded, _ = through6(eng, bytes(tcp6(src=EXT6, dst=EXTIP6, flags="S")))
    before = eng.conntrack_entries()
    error = error6_about(forwarded, IPv6(forwarded).dst, NODE6)
    assert icmp6_through(eng, error, T0 + 30 * SECOND)[1] == Reason.ICMP_ERROR_REPLY
    assert eng.conntrack_entries() == before
    assert icmp6_through(eng, error, T0 + 61 * SECOND)[1] == Reason.PASS_NO_SERVICE
    assert eng.conntrack_entries() == before and eng.counters()["conntrack"]["expired"] == 0


def test_icmpv6_checksum_update_order_is_pinned():
    """The ICMPv6 checksum goes through the quoted words (destination address and port, source
    address and port, quoted checksum) and then the outer addresses (destination, source), one
    word at a time: a recomputation from scratch gives the same value here, and the twin's
    order is the spec's (checked by replaying the updates)."""
    eng = v6_engine()
    _, _, forwarded, _ = through6(eng, bytes(tcp6(src=EXT6, dst=EXTIP6, flags="S")))
    error = error6_about(forwarded, IPv6(forwarded).dst, NODE6)
    _, reason, out, _ = icmp6_through(eng, error, T0 + 1)
    assert reason == Reason.ICMP_ERROR_REPLY

    def words(data: bytes) -> list[int]:
        return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]

    csum = int.from_bytes(error[42:44], "big")
    quote_in, quote_out = error[48:], out[48:]
    for start, end in ((24, 40), (42, 44), (8, 24), (40, 42), (56, 58)):  # dst, dport, src, sport, tcp csum
        for old, new in zip(words(quote_in[start:end]), words(quote_out[start:end])):
            csum = _csum_update_word(csum, old, new)
    for start, end in ((24, 40), (8, 24)):  # outer destination, then outer source
        for old, new in zip(words(error[start:end]), words(out[start:end])):
            csum = _csum_update_word(csum, old, new)
    assert out[42:44] == csum.to_bytes(2, "big")


# --------------------------------------------------------------------------- IPv6: new flows


def test_ipv6_reject_unknown_port_and_no_endpoint():
    eng = v6_engine()
    verdict, reason, _, trace = go6(eng, tcp6(dst=VIP6, dport=81))
    assert (verdict, reason, trace) == (Verdict.REJECT, Reason.REJECT_UNKNOWN_PORT, (0, 0, 0))
    verdict, reason, _, trace = go6(eng, tcp6(dst=EMPTY6_VIP, dport=443))
    assert (verdict, reason, trace) == (Verdict.REJECT, Reason.REJECT_NO_ENDPOINT, (EMPTY6, 0, KIND["ClusterIP"]))
    assert go6(eng, tcp6(dst="fd00:96::78", dport=80))[1] == Reason.PASS_NO_SERVICE
    assert eng.counters()["conntrack"]["entries"] == 0


@pytest.mark.parametrize(
    "client, node, masq",
    [
        (POD6, {}, False),  # pod traffic keeps its source
        (NODE6_2, {}, True),  # the node itself
        (EXT6, {}, True),
        (POD6, {"masquerade_all": True}, True),
        (EXT6, {"pod_cidrs": ()}, False),  # no clusterCIDR at all
        # Only an IPv4 pod CIDR: nothing is known to be non-pod IPv6 traffic (kube-proxy's IPv6
        # proxier has no local detector then).
        (EXT6, {"pod_cidrs": ((ip4("10.244.0.0"), 16),)}, False),
        (POD6, {"pod_cidrs": ((ip4("10.244.0.0"), 16),)}, False),
        (EXT6, {"pod_cidrs": ((ip4("10.244.0.0"), 16),), "masquerade_all": True}, True),
        (NODE6, {"pod_cidrs": ((ip6("fd00:1::"), 64),)}, False),  # pod class wins over node
    ],
)
def test_ipv6_cluster_ip_source_classes(client, node, masq):
    eng = v6_engine(**node)
    verdict, reason, got, trace = go6(eng, tcp6(src=client, dst=VIP6, sport=40000))
    assert (verdict, reason) == (Verdict.DNAT, Reason.NEW_FLOW)
    want = pick6((3, 4, 5), client, VIP6, 40000, 80)
    assert endpoints6(got) == ((NODE6 if masq else client), 40000, txt6(want.ip), 8080)
    assert trace == (WEB6, want.id, KIND["ClusterIP"] | (MASQ if masq else 0))
    (entry,) = eng.conntrack_entries()
    assert (entry.snat_ip, entry.snat_port) == ((ip6(NODE6), 40000) if masq else (0, 0))


def test_ipv4_cluster_ip_with_only_an_ipv6_pod_cidr_is_not_masqueraded():
    eng = v6_engine(pod_cidrs=((ip6("fd00:244::"), 64),))
    _, reason, got, trace = go(eng, tcp(src=EXT_CLIENT, dst="10.96.0.10"))
    assert (reason, got.src, trace[2]) == (Reason.NEW_FLOW, EXT_CLIENT, KIND["ClusterIP"])
    _, reason, got, trace = go6(eng, tcp6(src=EXT6, dst=VIP6))
    assert (reason, got.src, trace[2]) == (Reason.NEW_FLOW, NODE6, KIND["ClusterIP"] | MASQ)


def test_ipv6_masquerade_forward_reply_and_established():
    eng = v6_engine()
    want = pick6((3, 4, 5), EXT6, NODE6, 40000, 30080)
    _, reason, got, trace = go6(eng, tcp6(src=EXT6, dst=NODE6, dport=30080, sport=40000))
    assert (reason, endpoints6(got), trace) == (Reason.NEW_FLOW, (NODE6, 40000, txt6(want.ip), 8080),
                                                (WEB6, want.id, KIND["NodePort"] | MASQ))
    (entry,) = eng.conntrack_entries()
    assert entry.reply == (want.ip, ip6(NODE6), 8080, 40000, PROTO_TCP)
    _, reason, got, _ = go6(eng, tcp6(src=txt6(want.ip), dst=NODE6, sport=8080, dport=40000, flags="SA"), T0 + 1)
    assert (reason, endpoints6(got)) == (Reason.CT_REPLY, (NODE6, 30080, EXT6, 40000))
    _, reason, got, _ = go6(eng, tcp6(src=EXT6, dst=NODE6, dport=30080, sport=40000, flags="A"), T0 + 2)
    assert (reason, endpoints6(got)) == (Reason.CT_ESTABLISHED, (NODE6, 40000, txt6(want.ip), 8080))


def test_masquerade_address_per_family():
    # No IPv6 masquerade address: IPv6 flows go unmasqueraded (counted), IPv4 ones are masqueraded.
    eng = v6_engine(primary_ip6=0)
    _, reason, got, trace = go6(eng, tcp6(src=EXT6, dst=NODE6, dport=30080))
    assert (reason, got.src, trace[2]) == (Reason.NEW_FLOW, EXT6, KIND["NodePort"])
    _, reason, got, trace = go(eng, tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30080))
    assert (reason, got.src, trace[2]) == (Reason.NEW_FLOW, NODE_IP, KIND["NodePort"] | MASQ)
    assert eng.counters()["conntrack"]["snat_unavailable"] == 1
    # And the other way round.
    eng = v6_engine(primary_ip=0)
    _, _, got, trace = go6(eng, tcp6(src=EXT6, dst=NODE6, dport=30080))
    assert (got.src, trace[2]) == (NODE6, KIND["NodePort"] | MASQ)
    _, _, got, trace = go(eng, tcp(src=EXT_CLIENT, dst=NODE_IP, dport=30080))
    assert (got.src, trace[2]) == (EXT_CLIENT, KIND["NodePort"])
    assert eng.counters()["conntrack"]["snat_unavailable"] == 1


def test_ipv6_snat_port_collisions_walk_to_the_next_free_port():
    eng = v6_engine()
    maps = v6_maps()
    maps.frontends.append(fe6(NODE6, 30016, SINGLE6, "NodePort"))
    eng.load(maps)
    ports = []
    for n, client in enumerate(("2001:db8:c::1", "2001:db8:c::2", "2001:db8:c::3")):
        _, reason, got, _ = go6(eng, tcp6(src=client, dst=NODE6, dport=30016, sport=40000), T0 + n)
        assert reason == Reason.NEW_FLOW and got.src == NODE6
        ports.append(got[TCP].sport)
    assert ports == [40000, 40001, 40002]


def test_ipv6_hairpin_is_masqueraded():
    eng = v6_engine()
    backend_four = "fd00:244::2:2"
    _, reason, got, trace = go6(eng, tcp6(src=backend_four, dst=SINGLE6_VIP, sport=45000))
    assert (reason, endpoints6(got), trace) == (Reason.NEW_FLOW, (NODE6, 45000, backend_four, 8080),
                                                (SINGLE6, 4, KIND["ClusterIP"] | MASQ))


def test_ipv6_local_policy_by_source_class():
    eng = v6_engine()
    for port in range(42000, 42010):
        _, reason, got, trace = go6(eng, tcp6(src=EXT6, dst=NODE6, dport=30090, sport=port))
        assert (reason, endpoints6(got), trace) == (Reason.NEW_FLOW, (EXT6, port, "fd00:244::1:1", 8080),
                                                    (WEB6, 3, KIND["NodePort"]))
        _, _, got, trace = go6(eng, tcp6(src=POD6, dst=NODE6, dport=30090, sport=port))
        assert got.src == POD6 and trace[2] == KIND["NodePort"]
        assert trace[1] == pick6((3, 4, 5), POD6, NODE6, port, 30090).id
        _, _, got, trace = go6(eng, tcp6(src=NODE6_2, dst=NODE6, dport=30090, sport=port))
        assert got.src == NODE6 and trace[2] == KIND["NodePort"] | MASQ


def test_ipv6_source_ranges_and_prefixes_of_one_family():
    eng = v6_engine()
    assert go6(eng, tcp6(src=EXT6, dst=LB6))[1] == Reason.NEW_FLOW
    assert go6(eng, tcp6(src="2001:db8:c:ffff::1", dst=LB6))[1] == Reason.NEW_FLOW  # still in the /48
    assert go6(eng, tcp6(src="2001:db8:d::7", dst=LB6))[1:4:2] == (
        Reason.DROP_SOURCE_RANGE, (WEB6, 0, KIND["LoadBalancer"]))
    # An IPv4 range, even 0.0.0.0/0, contains no IPv6 source; ::/0 contains no IPv4 source.
    maps = v6_maps()
    maps.frontends = [replace(f, source_ranges=((0, 0),)) if f.ip == ip6(LB6) else f for f in maps.frontends]
    maps.frontends.append(fe("203.0.113.10", 80, WEB4, "LoadBalancer", ranges=((ip6("::"), 0),)))
    eng.load(maps)
    assert go6(eng, tcp6(src=EXT6, dst=LB6, sport=1))[1] == Reason.DROP_SOURCE_RANGE
    assert go(eng, tcp(src=EXT_CLIENT, dst="203.0.113.10", sport=1))[1] == Reason.DROP_SOURCE_RANGE
    # ::/0 does contain every IPv6 source, and a /128 exactly one.
    maps.frontends = [replace(f, source_ranges=((ip6("::"), 0), (ip6(FAR6), 128))) if f.ip == ip6(LB6) else f
                      for f in maps.frontends]
    eng.load(maps)
    assert go6(eng, tcp6(src=FAR6, dst=LB6, sport=2))[1] == Reason.NEW_FLOW
    maps.frontends = [replace(f, source_ranges=((ip6(FAR6), 128),)) if f.ip == ip6(LB6) else f
                      for f in maps.frontends]
    eng.load(maps)
    assert go6(eng, tcp6(src=FAR6, dst=LB6, sport=3))[1] == Reason.NEW_FLOW
    assert go6(eng, tcp6(src="2001:db8:f::6", dst=LB6, sport=3))[1] == Reason.DROP_SOURCE_RANGE


@pytest.mark.parametrize("network, length, ok", [
    ("fd00::", 0, True), ("fd00::", 128, True), ("fd00::", 129, False), ("fd00::", -1, False),
    ("fd00::", 64, True), ("10.0.0.0", 32, True), ("10.0.0.0", 33, False), ("10.0.0.0", 64, False),
])
def test_prefix_lengths_per_family(network, length, ok):
    prefix = ((address_from_text(network), length),)
    maps = v6_maps()
    maps.frontends = [replace(f, source_ranges=prefix) if f.ip == ip6(LB6) else f for f in maps.frontends]
    for bad in (maps, v6_maps(pod_cidrs=prefix)):
        if ok:
            ReferenceEngine(bad)
        else:
            with pytest.raises(ValueError, match="prefix length"):
                ReferenceEngine(bad)


def test_ipv6_session_affinity():
    eng = v6_engine()
    first = None
    for n, port in enumerate(range(46000, 46020)):
        _, reason, got, trace = go6(eng, tcp6(src=POD6, dst=STICKY6_VIP, sport=port), T0 + n)
        first = first or trace[1]
        assert reason == Reason.NEW_FLOW and trace[1] == first
    (entry,) = eng.affinity_entries()
    assert (entry.client, entry.service, entry.backend) == (ip6(POD6), STICKY6, first)


# --------------------------------------------------------------------------- IPv6: dual stack, load()


def test_dual_stack_service_routes_each_family_to_its_own_backends():
    eng = v6_engine()
    for port in range(47000, 47010):
        _, _, got4, trace4 = go(eng, tcp(src=POD_CLIENT, dst="10.96.0.10", sport=port))
        _, _, got6, trace6 = go6(eng, tcp6(src=POD6, dst=VIP6, sport=port))
        assert trace4[:2] == (WEB4, pick6((1, 2), POD_CLIENT, "10.96.0.10", port, 80).id)
        assert trace6[:2] == (WEB6, pick6((3, 4, 5), POD6, VIP6, port, 80).id)
        assert ipaddress.ip_address(got4.dst).version == 4 and ipaddress.ip_address(got6.dst).version == 6
    c = eng.counters()
    assert c["services"][WEB4 - 1] == 10 and c["services"][WEB6 - 1] == 10


def test_load_remaps_services_by_name_and_family():
    eng = v6_engine()
    _, _, _, t4 = go(eng, udp(src=POD_CLIENT, dst="10.96.0.53"))
    _, _, _, t6 = go6(eng, udp6(src=POD6, dst=DNS6_VIP))
    _, _, _, w6 = go6(eng, tcp6(src=POD6, dst=VIP6))
    assert (t4[0], t6[0], w6[0]) == (DNS4, DNS6, WEB6)
    # Reverse the services: both "kube-system/dns:dns" change ids, each keeps its family.
    maps = _renamed_order(v6_maps(), list(range(7, 0, -1)), list(range(1, 10)))
    eng.load(maps)
    new_id = {(s.name, s.family): s.id for s in maps.services}
    assert eng.trace_packet(ETH_HDR + bytes(udp(src=POD_CLIENT, dst="10.96.0.53")), T0 + 1)[3][0] == (
        new_id["kube-system/dns:dns", 4])
    _, _, _, trace = go6(eng, udp6(src=POD6, dst=DNS6_VIP), T0 + 1)
    assert trace[0] == new_id["kube-system/dns:dns", 6]
    _, _, _, trace = go6(eng, tcp6(src=POD6, dst=VIP6, flags="A"), T0 + 1)
    assert trace[0] == new_id["default/web:http", 6]
    c = eng.counters()
    assert c["services"][new_id["kube-system/dns:dns", 4] - 1] == 2
    assert c["services"][new_id["kube-system/dns:dns", 6] - 1] == 2
    assert c["services"][new_id["default/web:http", 6] - 1] == 2
    assert c["services"][new_id["default/web:http", 4] - 1] == 0
    # The IPv6 half of the DNS service goes away: its UDP flows are flushed (by their next packet,
    # which selects again, now for the service that took its frontend), the IPv4 half's stay.
    maps = v6_maps()
    maps.services[DNS6 - 1] = replace(maps.services[DNS6 - 1], name="kube-system/other:dns")
    eng.load(maps)
    assert eng.counters()["conntrack"]["flushed"] == 0
    assert go6(eng, udp6(src=POD6, dst=DNS6_VIP), T0 + 2)[1] == Reason.NEW_FLOW
    assert go(eng, udp(src=POD_CLIENT, dst="10.96.0.53"), T0 + 2)[1] == Reason.CT_ESTABLISHED
    flushed = eng.counters()["conntrack"]["flushed"]
    assert flushed == 1
    entries = {e.orig[1]: e for e in eng.conntrack_entries()}
    assert entries[ip6(DNS6_VIP)].service == DNS6 and entries[ip4("10.96.0.53")].service == DNS4
    assert entries[ip6(VIP6)].service == WEB6
    assert c["services"][new_id["default/web:http", 6] - 1] == eng.counters()["services"][WEB6 - 1]


# --------------------------------------------------------------------------- IPv6: properties


HEADERS6 = {
    0: struct.pack("<I", 28),
    1: ETH6_HDR,
    101: b"",
    113: bytes(CookedLinux(proto=0x86DD)),
    276: bytes(CookedLinuxV2(proto=0x86DD)),
}
SEEDS6 = [
    bytes(tcp6()), bytes(tcp6(flags="A")), bytes(udp6()), bytes(sctp6()),
    bytes(tcp6(src=EXT6, dst=NODE6, dport=30080)),
    bytes(tcp6(ext=EXTENSION_CHAINS["all five"]())),
    *fragments6(udp6(payload=b"f" * 100), 96, ident=3),
    error6_about(bytes(udp6(src=txt6(V6_BACKENDS[5].ip), dst=POD6, sport=5353, dport=50000)), POD6, DNS6_VIP),
    error6_about(bytes(tcp6(dst=txt6(V6_BACKENDS[2].ip), dport=8080)), txt6(V6_BACKENDS[2].ip), POD6),
]


@st.composite
def mutated_ipv6_packets(draw):
    linktype = draw(st.sampled_from(sorted(HEADERS6)))
    data = bytearray(HEADERS6[linktype] + draw(st.sampled_from(SEEDS6)))
    for _ in range(draw(st.integers(0, 4))):
        index = draw(st.integers(0, len(data) - 1))
        data[index] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return linktype, bytes(data[:cut])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(mutated_ipv6_packets(), min_size=1, max_size=8), capacity=st.integers(1, 4))
def test_property_ipv6_never_raises_and_stays_in_bounds(batch, capacity):
    eng = ReferenceEngine(v6_maps(), ct_capacity=capacity)
    for n, (linktype, data) in enumerate(batch):
        buf = bytearray(b"\xEE" * 3 + data + b"\xEE" * 3)
        before = bytes(buf)
        verdicts, reasons = array("B", [255]), array("B", [255])
        eng.process(buf, array("Q", [3]), array("I", [len(data)]), array("Q", [T0 + n]), verdicts, reasons, linktype)
        reason, verdict = Reason(reasons[0]), Verdict(verdicts[0])
        assert VERDICT_OF_REASON[reason] is verdict
        assert buf[:3] == before[:3] and buf[-3:] == before[-3:]
        if verdict in (Verdict.PASS, Verdict.DROP, Verdict.REJECT):
            assert buf == before
    c = eng.counters()
    assert sum(c["verdicts"].values()) == len(batch) and c["conntrack"]["entries"] <= capacity

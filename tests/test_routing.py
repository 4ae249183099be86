"""Table-driven routing suite: fastpath sends every packet where a node's kube-proxy would.

The scenarios are rows in tests/routing_cases.py. For each row and each core, the cluster objects
are compiled for the row's node, the traffic is written to a pcap with scapy, replayed through
`fastpath.replay` (with `Dataplane.update()` between captures where the row says so) and the
output capture is read back with scapy and checked: which endpoints flows reach, whether they are
masqueraded, the ICMP port unreachable of a REJECT (in place of the packet, from the address the
client used, quoting it: ICMP for IPv4, ICMPv6 for IPv6), DROPs (packet absent, no reply),
PASSes (byte-identical), every output checksum, and replies from the chosen endpoints coming back
from the frontend to the client.

Flows of both families are checked the same way. An IPv4 packet is told apart by its IP id, an
IPv6 packet (which has none) by its flow label, which no translation changes; an ICMP(v6) error
by the id or flow label of the packet it quotes.

Forward packets are built once per scenario and shared by both cores: one scapy-built frame per
group of flows, stamped per flow (client address and port, IP id, sequence number) with the
checksums recomputed by scapy. Every output packet's checksums are verified with scapy's checksum
routine (SCTP: scapy's SCTP layer rebuilt with its CRC32c recomputed must equal the output);
REJECT replies, the answered flows and the replies also go through a full scapy dissection.

Run: PYTHONPATH=pysrc:tests python -m pytest tests/test_routing.py -q
"""
from __future__ import annotations

import ipaddress
import random
import socket
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from routing_cases import (
    CASES,
    CLUSTER_CIDR,
    IPV6_CASE_PREFIXES,
    CLUSTER_CIDR6,
    NODE_A,
    NODE_A6,
    NODE_A6_EXT,
    NODE_A_EXT,
    RULES,
    Case,
    Drop,
    Flows,
    Pass,
    Reach,
    Reject,
    Update,
    Wait,
    rule_counts,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP, in4_chksum
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6, in6_chksum
from scapy.layers.l2 import ARP, Ether
from scapy.layers.sctp import SCTP, SCTPChunkData, crc32c
from scapy.packet import Raw
from scapy.utils import RawPcapReader, RawPcapWriter, checksum

from fastpath import ClusterState, Dataplane, replay

CORES = ("compiled", "reference")
T0 = 1_700_000_000  # seconds; the packet clock of every scenario starts here
TICK_US = 1  # microseconds between consecutive packets
CLIENT_MAC = "02:00:00:00:00:01"
NODE_MAC = "02:00:00:00:00:02"
REPLIES_PER_GROUP = 12
REPLY_IP_IDS = 40000  # IP ids of replies start here; forward packets of a capture stay below
CT_CAPACITY = 1 << 14

# Positions in an untagged Ethernet + 20-byte IPv4 frame.
ETH = 14
IP_CSUM = slice(24, 26)
IP_SRC = slice(26, 30)
IP_DST = slice(30, 34)
L4 = 34
# ... and in an Ethernet + IPv6 frame without extension headers.
IP6_SRC = slice(22, 38)
IP6_DST = slice(38, 54)
L4_6 = 54
ETHERTYPE_IPV6 = b"\x86\xdd"


def is_ipv6(raw: bytes | bytearray) -> bool:
    return raw[12:14] == ETHERTYPE_IPV6


def canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))


def pack_address(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def src_slice(raw: bytes | bytearray) -> slice:
    return IP6_SRC if is_ipv6(raw) else IP_SRC


def dst_slice(raw: bytes | bytearray) -> slice:
    return IP6_DST if is_ipv6(raw) else IP_DST


def l4_at(raw: bytes | bytearray) -> int:
    return L4_6 if is_ipv6(raw) else L4


def proto_of(raw: bytes | bytearray) -> int:
    return raw[20] if is_ipv6(raw) else raw[23]


def segment_end(raw: bytes | bytearray) -> int:
    if is_ipv6(raw):
        return L4_6 + int.from_bytes(raw[18:20], "big")
    return ETH + int.from_bytes(raw[16:18], "big")


def set_packet_id(buf: bytearray, ident: int) -> None:
    """The IPv4 id, or the IPv6 flow label (20 bits): what tells the packets of a capture apart."""
    if is_ipv6(buf):
        word = int.from_bytes(buf[ETH:ETH + 4], "big")
        buf[ETH:ETH + 4] = ((word & ~0xFFFFF) | (ident & 0xFFFFF)).to_bytes(4, "big")
    else:
        buf[18:20] = ident.to_bytes(2, "big")


# --------------------------------------------------------------------------------- the plan


@dataclass
class Packet:
    """One forward packet of a group: flow `flow` of the group, from client:cport."""

    flow: int
    client: str
    cport: int
    raw: bytes


@dataclass
class Group:
    spec: Flows  # with `again` resolved: src/dst/dport/proto of the continued group
    packets: list[Packet]


@dataclass
class Segment:
    """What happens between two updates: a wait, then one capture of consecutive groups."""

    update: tuple[dict, ...] | None = None
    wait: float = 0.0
    groups: list[Group] = field(default_factory=list)


_PLANS: dict[str, list[Segment]] = {}


def plan(case: Case) -> list[Segment]:
    """The scenario's captures, forward packets built with scapy (once per scenario)."""
    if case.id in _PLANS:
        return _PLANS[case.id]
    rng = random.Random(zlib.crc32(case.id.encode()))
    used: set[tuple[str, int]] = set()
    groups: dict[str, Group] = {}
    segments = [Segment()]
    ip_id = 0
    for step in case.traffic:
        if isinstance(step, Update):
            segments.append(Segment(update=step.objects))
            ip_id = 0
            continue
        if isinstance(step, Wait):
            if segments[-1].groups:
                segments.append(Segment())
                ip_id = 0
            segments[-1].wait += step.seconds
            continue
        if step.again is not None:
            earlier = groups[step.again]
            spec = replace(earlier.spec, label=step.label, expect=step.expect, again=step.again)
            tuples = [(p.client, p.cport) for p in earlier.packets]
        else:
            spec = step
            tuples = []
            for i in range(spec.n):
                client = spec.src[i % len(spec.src)]
                cport = spec.sport or rng.randrange(1024, 65536)
                while (client, cport) in used:
                    if spec.sport:
                        raise ValueError(f"{case.id}: flows from {client} port {cport} twice")
                    cport = rng.randrange(1024, 65536)
                used.add((client, cport))
                tuples.append((client, cport))
        packets = []
        frame = template(spec, continued=step.again is not None)
        for flow, (client, cport) in enumerate(tuples):
            ip_id += 1
            raw = stamp(frame, client, cport, ip_id, rng.randrange(1 << 32))
            packets.append(Packet(flow, client, cport, raw))
        if ip_id >= REPLY_IP_IDS:
            raise ValueError(f"{case.id}: too many packets in one capture")
        group = Group(spec, packets)
        groups[spec.label] = group
        segments[-1].groups.append(group)
    _PLANS[case.id] = segments
    return segments


def template(spec: Flows, *, continued: bool) -> bytes:
    """One frame of the group built with scapy; flows differ only in the fields `stamp` sets."""
    ether = Ether(src=CLIENT_MAC, dst=NODE_MAC)
    if spec.proto == "ARP":
        return bytes(Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff")
                     / ARP(op=1, hwsrc=CLIENT_MAC, psrc=spec.src[0], pdst=spec.dst, hwdst="00:00:00:00:00:00")
                     / Raw(bytes(18)))
    if ":" in spec.dst:
        ip = IPv6(src=spec.src[0], dst=spec.dst, fl=1, hlim=63)
    else:
        ip = IP(src=spec.src[0], dst=spec.dst, id=1, ttl=63)
    if spec.proto == "TCP":
        return bytes(ether / ip / TCP(sport=1024, dport=spec.dport, flags="A" if continued else "S",
                                      seq=1, ack=1 if continued else 0, window=64240))
    if spec.proto == "UDP":
        return bytes(ether / ip / UDP(sport=1024, dport=spec.dport) / Raw(b"fastpath routing suite"))
    if spec.proto == "SCTP":
        return bytes(ether / ip / SCTP(sport=1024, dport=spec.dport, tag=0x5C7B0001)
                     / SCTPChunkData(tsn=2 if continued else 1, data=b"fastpath routing suite"))
    if spec.proto == "ICMP":
        if ":" in spec.dst:
            return bytes(ether / ip / ICMPv6EchoRequest(id=1, seq=1) / Raw(b"ping"))
        return bytes(ether / ip / ICMP(type=8, id=1, seq=1) / Raw(b"ping"))
    raise ValueError(spec.proto)


def stamp(frame: bytes, client: str, cport: int, ip_id: int, seq: int) -> bytes:
    """The template with this flow's client address and port, IP id and TCP sequence number;
    checksums (SCTP: the CRC32c) recomputed with scapy."""
    buf = bytearray(frame)
    if buf[12:14] not in (b"\x08\x00", ETHERTYPE_IPV6):  # ARP: the id goes into the padding
        buf[28:32] = socket.inet_aton(client)
        buf[-4:] = ip_id.to_bytes(4, "big")
        return bytes(buf)
    buf[src_slice(buf)] = pack_address(client)
    set_packet_id(buf, ip_id)
    proto, l4 = proto_of(buf), l4_at(buf)
    if proto in (6, 17, 132):
        buf[l4:l4 + 2] = cport.to_bytes(2, "big")
    else:  # ICMP(v6) echo: the identifier plays the port
        buf[l4 + 4:l4 + 6] = cport.to_bytes(2, "big")
    if proto == 6:
        buf[l4 + 4:l4 + 8] = seq.to_bytes(4, "big")
    return fill_checksums(buf)


def fill_checksums(buf: bytearray) -> bytes:
    v6 = is_ipv6(buf)
    if not v6:
        buf[IP_CSUM] = b"\0\0"
        buf[IP_CSUM] = checksum(bytes(buf[ETH:L4])).to_bytes(2, "big")
    proto, l4, end = proto_of(buf), l4_at(buf), segment_end(buf)
    if proto in (1, 58):  # ICMP; ICMPv6 covers the IPv6 pseudo-header too
        buf[l4 + 2:l4 + 4] = b"\0\0"
        pseudo = pseudo_header(buf) if v6 else b""
        buf[l4 + 2:l4 + 4] = checksum(pseudo + bytes(buf[l4:end])).to_bytes(2, "big")
        return bytes(buf)
    if proto == 132:  # CRC32c over the SCTP packet; scapy's crc32c gives the field's big-endian value
        buf[l4 + 8:l4 + 12] = b"\0\0\0\0"
        buf[l4 + 8:l4 + 12] = crc32c(bytes(buf[l4:end])).to_bytes(4, "big")
        return bytes(buf)
    where = l4_checksum_slice(buf)
    buf[where] = b"\0\0"
    value = checksum(pseudo_header(buf) + bytes(buf[l4:end]))
    buf[where] = (value or 0xFFFF).to_bytes(2, "big")
    return bytes(buf)


def pseudo_header(buf: bytes | bytearray) -> bytes:
    if is_ipv6(buf):
        length = int.from_bytes(buf[18:20], "big")
        return bytes(buf[IP6_SRC]) + bytes(buf[IP6_DST]) + length.to_bytes(4, "big") + bytes((0, 0, 0, buf[20]))
    length = int.from_bytes(buf[16:18], "big") - (buf[ETH] & 0x0F) * 4
    return bytes(buf[26:34]) + bytes((0, buf[23])) + length.to_bytes(2, "big")


# --------------------------------------------------------------------------------- pcap I/O


def write_pcap(path: Path, frames: list[bytes], start_us: int) -> int:
    """Write frames one tick apart from start_us; returns the time after the last one."""
    writer = RawPcapWriter(str(path), linktype=1, sync=False)
    try:
        writer.write_header(None)
        now = start_us
        for frame in frames:
            writer.write_packet(frame, sec=now // 1_000_000, usec=now % 1_000_000)
            now += TICK_US
    finally:
        writer.close()
    return now


def read_pcap(path: Path) -> list[bytes]:
    with RawPcapReader(str(path)) as reader:
        return [bytes(data) for data, _meta in reader]


def run_capture(dp: Dataplane, tmp_path: Path, name: str, frames: list[bytes], start_us: int) -> tuple[list[bytes], int]:
    source, output = tmp_path / f"{name}-in.pcap", tmp_path / f"{name}-out.pcap"
    end = write_pcap(source, frames, start_us)
    replay(source, output, dp)
    return read_pcap(output), end


# --------------------------------------------------------------------------------- decoding


def sctp_crc_problem(segment: bytes) -> bool:
    """scapy's SCTP layer of `segment` with the checksum deleted and rebuilt (scapy computes the
    CRC32c) differs from `segment`."""
    rebuilt = SCTP(segment)
    del rebuilt.chksum
    return bytes(rebuilt) != segment


def checksum_problems(raw: bytes) -> list[str]:
    """Checksums of an output frame, verified with scapy's checksum routine (SCTP: scapy's CRC32c)."""
    if is_ipv6(raw):
        return checksum_problems6(raw)
    if raw[12:14] != b"\x08\x00":
        return []
    header_len = (raw[ETH] & 0x0F) * 4
    problems = []
    if checksum(raw[ETH:ETH + header_len]) != 0:
        problems.append("IPv4 header checksum")
    segment = raw[ETH + header_len:ETH + int.from_bytes(raw[16:18], "big")]
    proto = raw[23]
    if proto == 6 and checksum(pseudo_header(raw) + segment) != 0:
        problems.append("TCP checksum")
    elif proto == 17 and segment[6:8] != b"\0\0" and checksum(pseudo_header(raw) + segment) != 0:
        problems.append("UDP checksum")
    elif proto == 1 and checksum(segment) != 0:
        problems.append("ICMP checksum")
    elif proto == 132 and sctp_crc_problem(segment):
        problems.append("SCTP CRC32c")
    return problems


def checksum_problems6(raw: bytes) -> list[str]:
    segment = raw[L4_6:segment_end(raw)]
    proto = raw[20]
    names = {6: "TCP", 17: "UDP", 58: "ICMPv6"}
    if proto in names and checksum(pseudo_header(raw) + segment) != 0:
        return [f"{names[proto]} checksum"]
    if proto == 17 and segment[6:8] == b"\0\0":
        return ["UDP checksum 0 (not allowed over IPv6)"]
    if proto == 132 and sctp_crc_problem(segment):
        return ["SCTP CRC32c"]
    return []


def decoded_problems(raw: bytes) -> list[str]:
    """The same through a full scapy dissection and scapy's own checksum computation (used on
    the REJECT replies, the answered flows and the replies)."""
    frame = Ether(raw)
    if isinstance(frame.payload, IPv6):
        ip6 = frame[IPv6]
        segment = raw[L4_6:L4_6 + ip6.plen]
        names = {6: "TCP", 17: "UDP", 58: "ICMPv6"}
        if ip6.nh in names and in6_chksum(ip6.nh, ip6, segment) != 0:
            return [f"scapy: {names[ip6.nh]} checksum"]
        if ip6.nh == 132:
            rebuilt = Ether(raw)
            del rebuilt[SCTP].chksum
            if bytes(rebuilt) != raw:
                return ["scapy: SCTP CRC32c"]
        return []
    if not isinstance(frame.payload, IP):
        return []
    ip = frame[IP]
    header_len = ip.ihl * 4
    header = IP(raw[ETH:ETH + header_len])
    del header.chksum  # scapy recomputes it when building
    problems = []
    if bytes(header)[:header_len] != raw[ETH:ETH + header_len]:
        problems.append("scapy: IPv4 header checksum")
    segment = raw[ETH + header_len:ETH + ip.len]
    if ip.proto == 6 and in4_chksum(6, ip, segment) != 0:
        problems.append("scapy: TCP checksum")
    elif ip.proto == 17 and ip[UDP].chksum != 0 and in4_chksum(17, ip, segment) != 0:
        problems.append("scapy: UDP checksum")
    elif ip.proto == 1 and checksum(segment) != 0:
        problems.append("scapy: ICMP checksum")
    elif ip.proto == 132:
        rebuilt = Ether(raw)  # the whole frame dissected; only the CRC32c is recomputed
        del rebuilt[SCTP].chksum
        if bytes(rebuilt) != raw:
            problems.append("scapy: SCTP CRC32c")
    return problems


@dataclass
class Out:
    """What came out for one forward packet."""

    kind: str  # "DROP", "REJECT", "PASS", "DNAT", "OTHER"
    raw: bytes | None = None
    src: str = ""
    sport: int = 0
    dst: str = ""
    dport: int = 0
    note: str = ""

    @property
    def endpoint(self) -> str:
        return f"[{self.dst}]:{self.dport}" if ":" in self.dst else f"{self.dst}:{self.dport}"


def l4_ports(raw: bytes) -> tuple[int, int]:
    l4 = l4_at(raw)
    return int.from_bytes(raw[l4:l4 + 2], "big"), int.from_bytes(raw[l4 + 2:l4 + 4], "big")


def inet(raw: bytes, where: slice) -> str:
    if where.stop - where.start == 16:
        return socket.inet_ntop(socket.AF_INET6, bytes(raw[where]))
    return ".".join(str(b) for b in raw[where])


def l4_checksum_slice(raw: bytes) -> slice:
    proto, l4 = proto_of(raw), l4_at(raw)
    if proto == 132:  # the SCTP CRC32c
        return slice(l4 + 8, l4 + 12)
    offset = l4 + (16 if proto == 6 else 6)
    return slice(offset, offset + 2)


def same_except_nat(sent: bytes, got: bytes) -> bool:
    """Equal but for addresses, ports and checksums (what NAT may change)."""
    if len(sent) != len(got):
        return False
    mask = bytearray(len(sent))
    l4 = l4_at(sent)
    parts = (IP6_SRC, IP6_DST) if is_ipv6(sent) else (IP_CSUM, IP_SRC, IP_DST)
    for part in (*parts, slice(l4, l4 + 4), l4_checksum_slice(sent)):
        mask[part] = b"\1" * (part.stop - part.start)
    return all(m or a == b for a, b, m in zip(sent, got, mask))


def classify(sent: bytes, got: bytes | None) -> Out:
    if got is None:
        return Out("DROP")
    if got == sent:
        return Out("PASS", got)
    if is_ipv6(got) and len(got) >= L4_6 + 4 and got[ETH] >> 4 == 6:
        src, dst = inet(got, IP6_SRC), inet(got, IP6_DST)
        if got[20] == 58 and got[L4_6] == 1:
            return Out("REJECT", got, src=src, dst=dst, note=f"ICMPv6 type 1 code {got[L4_6 + 1]} from {src}")
        if got[20] in (6, 17, 132):
            sport, dport = l4_ports(got)
            out = Out("DNAT", got, src, sport, dst, dport)
            if not same_except_nat(sent, got):
                out.note = "bytes other than addresses, ports and checksums changed"
            return out
        return Out("OTHER", got, note=f"unexpected output {Ether(got).summary()}")
    is_ipv4 = len(got) >= L4 + 4 and got[12:14] == b"\x08\x00" and got[ETH] == 0x45
    if is_ipv4 and got[23] == 1 and got[L4] == 3:
        return Out("REJECT", got, src=inet(got, IP_SRC), dst=inet(got, IP_DST),
                   note=f"ICMP type 3 code {got[L4 + 1]} from {inet(got, IP_SRC)}")
    if is_ipv4 and got[23] in (6, 17, 132):
        sport, dport = l4_ports(got)
        out = Out("DNAT", got, inet(got, IP_SRC), sport, inet(got, IP_DST), dport)
        if not same_except_nat(sent, got):
            out.note = "bytes other than addresses, ports and checksums changed"
        return out
    return Out("OTHER", got, note=f"unexpected output {Ether(got).summary()}")


def describe(out: Out, client: str, snat: str) -> str:
    if out.kind != "DNAT":
        return out.note or out.kind
    who = "client" if out.src == client else "node" if out.src == snat else out.src
    return f"DNAT to {out.endpoint} from {who}"


def match_outputs(sent: list[bytes], outputs: list[bytes]) -> tuple[list[bytes | None], list[str]]:
    """Pair each sent frame with what came out for it (IP id, or the id an ICMP error quotes),
    and check the order: outputs must follow the order of the packets they stand for."""
    index_of: dict[tuple[str, int | bytes], int] = {}
    for i, frame in enumerate(sent):
        index_of[key_of(frame)] = i
    paired: list[bytes | None] = [None] * len(sent)
    problems = []
    last = -1
    for position, frame in enumerate(outputs):
        key = key_of(frame, quoted=True)
        i = index_of.get(key)
        if i is None:
            problems.append(f"output packet {position} matches no packet sent: {Ether(frame).summary()}")
            continue
        if paired[i] is not None:
            problems.append(f"two output packets for sent packet {i}")
        if i <= last:
            problems.append(f"output packet {position} (for sent packet {i}) is out of order")
        last = max(last, i)
        paired[i] = frame
    return paired, problems


def key_of(frame: bytes, quoted: bool = False) -> tuple[str, int | bytes]:
    if is_ipv6(frame):
        if quoted and frame[20] == 58 and frame[L4_6] == 1:  # ICMPv6 error: the quoted flow label
            inner = L4_6 + 8
            return ("ip6", int.from_bytes(frame[inner:inner + 4], "big") & 0xFFFFF)
        return ("ip6", int.from_bytes(frame[ETH:ETH + 4], "big") & 0xFFFFF)
    if frame[12:14] != b"\x08\x00":
        return ("raw", frame)
    if quoted and frame[23] == 1 and frame[ETH + 20] == 3:  # ICMP error: the quoted packet's id
        inner = ETH + 20 + 8
        return ("ip", int.from_bytes(frame[inner + 4:inner + 6], "big"))
    return ("ip", int.from_bytes(frame[18:20], "big"))


# --------------------------------------------------------------------------------- checks


@dataclass
class Outcome:
    """Per flow of a group: the client and the endpoint it reached (None if not DNATed)."""

    client: str
    cport: int
    endpoint: str | None


def check_reject(packet: Packet, out: Out, spec: Flows, *, decode: bool) -> list[str]:
    problems = []
    got = out.raw
    assert got is not None
    frame = Ether(got)
    if frame.src != NODE_MAC or frame.dst != CLIENT_MAC:
        problems.append(f"REJECT reply MACs {frame.src} -> {frame.dst}, expected the sent ones swapped")
    if IPv6 in frame:
        return problems + check_reject6(packet, frame, got, spec, decode=decode)
    ip = frame[IP]
    if ip.src != spec.dst or ip.dst != packet.client:
        problems.append(f"REJECT reply {ip.src} -> {ip.dst}, expected {spec.dst} -> {packet.client}")
    icmp = frame[ICMP]
    if (icmp.type, icmp.code) != (3, 3):
        problems.append(f"REJECT reply is ICMP type {icmp.type} code {icmp.code}, expected 3/3")
    if decode:
        problems.extend(decoded_problems(got))
    quoted = got[ETH + ip.ihl * 4 + 8:ETH + ip.len]
    original = packet.raw[ETH:]
    if quoted != original:
        problems.append(f"REJECT reply quotes {len(quoted)} bytes that are not the original "
                        f"{len(original)}-byte packet")
    return problems


def check_reject6(packet: Packet, frame: Ether, got: bytes, spec: Flows, *, decode: bool) -> list[str]:
    """An ICMPv6 destination unreachable, port unreachable (type 1 code 4), from the address the
    client used to the client, hop limit 64, quoting the whole (small) original packet."""
    problems = []
    ip = frame[IPv6]
    if (ip.src, ip.dst) != (canonical(spec.dst), canonical(packet.client)):
        problems.append(f"REJECT reply {ip.src} -> {ip.dst}, expected {spec.dst} -> {packet.client}")
    if ICMPv6DestUnreach not in frame:
        return problems + [f"REJECT reply is not an ICMPv6 destination unreachable: {frame.summary()}"]
    icmp = frame[ICMPv6DestUnreach]
    if (icmp.type, icmp.code, ip.hlim) != (1, 4, 64):
        problems.append(f"REJECT reply is ICMPv6 type {icmp.type} code {icmp.code} hop limit {ip.hlim}, "
                        "expected 1/4, 64")
    problems.extend(checksum_problems6(got))
    if decode:
        problems.extend(decoded_problems(got))
    quoted = got[L4_6 + 8:L4_6 + ip.plen]
    original = packet.raw[ETH:]
    if quoted != original:
        problems.append(f"REJECT reply quotes {len(quoted)} bytes that are not the original "
                        f"{len(original)}-byte packet")
    return problems


def canonical_endpoint(endpoint: str) -> str:
    """"ip:port" or "[ip]:port" with the address in its canonical text."""
    host, _, port = endpoint.rpartition(":")
    address = canonical(host.strip("[]"))
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def snat_of(case: Case, spec: Flows) -> str:
    """Where masqueraded flows of the group come from: the node's primary IP of their family."""
    return case.snat6 if ":" in spec.dst else case.snat


def check_group(group: Group, outs: list[Out], case: Case, history: dict[str, list[Outcome]]) -> list[str]:
    spec, expect = group.spec, group.spec.expect
    problems = [f"flow {p.flow}: {o.note}" for p, o in zip(group.packets, outs) if o.note and o.kind == "DNAT"]
    snat = snat_of(case, spec)
    seen = Counter(describe(o, canonical(p.client), snat) for p, o in zip(group.packets, outs))
    summary = ", ".join(f"{n}x {what}" for what, n in seen.most_common(6))

    def fail(message: str) -> None:
        problems.append(f"{message} (got: {summary})")

    if isinstance(expect, Drop):
        if any(o.kind != "DROP" for o in outs):
            fail("expected DROP (no packet, no reply)")
        return problems
    if isinstance(expect, Pass):
        if any(o.kind != "PASS" for o in outs):
            fail("expected PASS (byte-identical)")
        return problems
    if isinstance(expect, Reject):
        if any(o.kind != "REJECT" for o in outs):
            fail("expected REJECT (ICMP port unreachable in place of the packet)")
            return problems
        for n, (packet, out) in enumerate(zip(group.packets, outs)):
            problems.extend(check_reject(packet, out, spec, decode=n < 4))
            if len(problems) > 3:
                break
        return problems

    assert isinstance(expect, Reach)
    if any(o.kind != "DNAT" for o in outs):
        fail(f"expected every flow DNATed to {sorted(expect.endpoints)}")
        return problems
    reached = {o.endpoint for o in outs}
    expected = {canonical_endpoint(e) for e in expect.endpoints}
    if reached != expected:
        fail(f"expected exactly the endpoints {sorted(expect.endpoints)} over {len(outs)} flows, "
             f"reached {sorted(reached)}")
    for packet, out in zip(group.packets, outs):
        client = canonical(packet.client)
        masq = expect.masq if expect.masq != "hairpin" else out.dst == client
        if masq and out.src != snat:
            fail(f"expected masquerade to {snat}")
            break
        if not masq and (out.src, out.sport) != (client, packet.cport):
            fail("expected the client's address and port kept (no masquerade)")
            break
        if (client, packet.cport) != (inet(packet.raw, src_slice(packet.raw)), l4_ports(packet.raw)[0]):
            raise AssertionError("test bug: packet does not match its flow")
    tuples = Counter((o.src, o.sport, o.dst, o.dport) for o in outs)
    if len(tuples) != len(outs):
        clash = next(t for t, n in tuples.items() if n > 1)
        problems.append(f"{len(outs) - len(tuples)} flows share a translated 4-tuple, e.g. {clash[0]}:{clash[1]} -> "
                        f"{clash[2]}:{clash[3]}: their replies cannot be told apart")
    by_client: dict[str, set[str]] = defaultdict(set)
    for packet, out in zip(group.packets, outs):
        by_client[packet.client].add(out.endpoint)
    if expect.per_client:
        split = {c: sorted(e) for c, e in by_client.items() if len(e) != 1}
        if split:
            client, endpoints = next(iter(split.items()))
            problems.append(f"affinity: {len(split)} clients reached several endpoints, e.g. {client} -> {endpoints}")
    if expect.keep:
        before = history[expect.keep]
        moved = [(b.endpoint, o.endpoint) for b, o in zip(before, outs)
                 if b.endpoint in expected and b.endpoint != o.endpoint]
        if moved:
            problems.append(f"conntrack: {len(moved)} flows left an endpoint still in use, e.g. "
                            f"{moved[0][0]} -> {moved[0][1]}")
    if expect.clients_keep or expect.clients_change:
        label = expect.clients_keep or expect.clients_change
        earlier: dict[str, set[str]] = defaultdict(set)
        for outcome in history[label]:
            earlier[outcome.client].add(outcome.endpoint)
        changed = [c for c, e in by_client.items() if earlier.get(c) and e != earlier[c]]
        if expect.clients_keep:
            kept_wrongly = [c for c in changed if earlier[c] <= expected]
            if kept_wrongly:
                c = kept_wrongly[0]
                problems.append(f"affinity: {len(kept_wrongly)} clients changed endpoint since '{label}', e.g. "
                                f"{c}: {sorted(earlier[c])} -> {sorted(by_client[c])}")
        if expect.clients_change and not changed:
            problems.append(f"affinity: no client changed endpoint since '{label}' although the entries expired")
    return problems


_REPLY_TEMPLATES = {
    6: bytes(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src="0.0.0.0", dst="0.0.0.0", id=1, ttl=64)
             / TCP(sport=1, dport=1, flags="SA", seq=1, ack=1, window=65160)),
    17: bytes(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src="0.0.0.0", dst="0.0.0.0", id=1, ttl=64)
              / UDP(sport=1, dport=1) / Raw(b"reply from the endpoint")),
    132: bytes(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src="0.0.0.0", dst="0.0.0.0", id=1, ttl=64)
               / SCTP(sport=1, dport=1, tag=0x5C7B0002) / SCTPChunkData(tsn=1, data=b"reply from the endpoint")),
}


_REPLY_TEMPLATES6 = {
    6: bytes(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IPv6(src="::", dst="::", fl=1, hlim=64)
             / TCP(sport=1, dport=1, flags="SA", seq=1, ack=1, window=65160)),
    17: bytes(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IPv6(src="::", dst="::", fl=1, hlim=64)
              / UDP(sport=1, dport=1) / Raw(b"reply from the endpoint")),
    132: bytes(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IPv6(src="::", dst="::", fl=1, hlim=64)
               / SCTP(sport=1, dport=1, tag=0x5C7B0002) / SCTPChunkData(tsn=1, data=b"reply from the endpoint")),
}


def reply_frame(packet: Packet, out: Out, ip_id: int) -> bytes:
    """The endpoint's answer to a DNATed packet, addressed to where the packet came from (a scapy
    template with this flow's addresses and ports, checksums recomputed with scapy)."""
    templates = _REPLY_TEMPLATES6 if is_ipv6(packet.raw) else _REPLY_TEMPLATES
    buf = bytearray(templates[proto_of(packet.raw)])
    buf[src_slice(buf)] = pack_address(out.dst)
    buf[dst_slice(buf)] = pack_address(out.src)
    set_packet_id(buf, ip_id)
    l4 = l4_at(buf)
    buf[l4:l4 + 4] = out.dport.to_bytes(2, "big") + out.sport.to_bytes(2, "big")
    return fill_checksums(buf)


def sample(outs: list[Out]) -> list[int]:
    """Flows to answer: the first flow to each endpoint reached, then evenly spread ones."""
    picks = set({out.endpoint: i for i, out in reversed(list(enumerate(outs)))}.values())
    step = max(1, len(outs) // REPLIES_PER_GROUP)
    for i in range(0, len(outs), step):
        if len(picks) >= REPLIES_PER_GROUP:
            break
        picks.add(i)
    return sorted(picks)


def check_replies(sent: list[tuple[Group, Packet, Out, bytes]], outputs: list[bytes]) -> list[str]:
    problems = []
    paired, order_problems = match_outputs([frame for *_, frame in sent], outputs)
    problems.extend(f"replies: {p}" for p in order_problems)
    for (group, packet, out, frame), got in zip(sent, paired):
        where = f"group '{group.spec.label}' reply from {out.endpoint} to {out.src}:{out.sport}"
        if got is None:
            problems.append(f"{where}: dropped")
            continue
        problems.extend(f"{where}: {p}" for p in checksum_problems(got) + decoded_problems(got))
        src, (sport, dport), dst = inet(got, src_slice(got)), l4_ports(got), inet(got, dst_slice(got))
        expected = (canonical(group.spec.dst), group.spec.dport, canonical(packet.client), packet.cport)
        if (src, sport, dst, dport) != expected:
            problems.append(f"{where}: came out as {src}:{sport} -> {dst}:{dport}, expected "
                            f"{expected[0]}:{expected[1]} -> {expected[2]}:{expected[3]}")
        elif not same_except_nat(frame, got):
            problems.append(f"{where}: bytes other than addresses, ports and checksums changed")
        if len(problems) > 6:
            break
    return problems


# --------------------------------------------------------------------------------- the test


def run_case(case: Case, core: str, tmp_path: Path) -> list[str]:
    segments = plan(case)
    dp = Dataplane(ClusterState.from_objects(case.objects), node=case.node, core=core, ct_capacity=CT_CAPACITY)
    history: dict[str, list[Outcome]] = {}
    problems: list[str] = []
    clock_us = T0 * 1_000_000
    for number, segment in enumerate(segments):
        if segment.update is not None:
            dp.update(ClusterState.from_objects(segment.update))
        clock_us += int(segment.wait * 1_000_000)
        if not segment.groups:
            continue
        sent = [p.raw for g in segment.groups for p in g.packets]
        outputs, clock_us = run_capture(dp, tmp_path, f"s{number}", sent, clock_us)
        paired, order_problems = match_outputs(sent, outputs)
        problems.extend(f"capture {number}: {p}" for p in order_problems[:5])
        for position, frame in enumerate(outputs):
            for problem in checksum_problems(frame):
                problems.append(f"capture {number}: output packet {position}: bad {problem}")
        replies: list[tuple[Group, Packet, Out, bytes]] = []
        start = 0
        for group in segment.groups:
            got = paired[start:start + len(group.packets)]
            start += len(group.packets)
            outs = [classify(p.raw, g) for p, g in zip(group.packets, got)]
            where = (f"group '{group.spec.label}' ({len(group.packets)} {group.spec.proto} flows "
                     f"{'/'.join(sorted(set(group.spec.src)))[:40]} -> {group.spec.dst}:{group.spec.dport})")
            problems.extend(f"{where}: {p}" for p in check_group(group, outs, case, history))
            history[group.spec.label] = [Outcome(p.client, p.cport, o.endpoint if o.kind == "DNAT" else None)
                                         for p, o in zip(group.packets, outs)]
            if isinstance(group.spec.expect, Reach) and all(o.kind == "DNAT" for o in outs):
                for i in sample(outs):
                    replies.append((group, group.packets[i], outs[i], b""))
                    problems.extend(f"{where}: flow {i}: {p}" for p in decoded_problems(outs[i].raw))
        if replies:
            frames = [reply_frame(packet, out, REPLY_IP_IDS + n) for n, (_, packet, out, _) in enumerate(replies)]
            replies = [(g, p, o, f) for (g, p, o, _), f in zip(replies, frames)]
            outputs, clock_us = run_capture(dp, tmp_path, f"s{number}-replies", frames, clock_us)
            problems.extend(f"capture {number}: {p}" for p in check_replies(replies, outputs))
    return problems


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_routing(case: Case, core: str, tmp_path: Path) -> None:
    problems = run_case(case, core, tmp_path)
    if problems:
        shown = "\n  ".join(problems[:12])
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        pytest.fail(f"{case.id} [{core}] (rules: {', '.join(case.rules)}):\n  {shown}{more}", pytrace=False)


def test_table_covers_every_rule() -> None:
    counts = rule_counts()
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES), "scenario ids must be unique"
    missing = [rule for rule in RULES if counts[rule] == 0]
    assert not missing, f"rules without a scenario: {missing}"


def test_table_sources_cover_pods_node_and_external() -> None:
    """Flows of both families come from pods, from the node itself and from external clients."""
    pods = (ipaddress.ip_network(CLUSTER_CIDR), ipaddress.ip_network(CLUSTER_CIDR6))
    node = {canonical(a) for a in (NODE_A, NODE_A_EXT, NODE_A6, NODE_A6_EXT)}
    kinds: Counter[tuple[int, str]] = Counter()
    for c in CASES:
        for step in c.traffic:
            if isinstance(step, Flows) and step.again is None:
                for src in step.src:
                    address = ipaddress.ip_address(src)
                    kind = ("pod" if any(address in p for p in pods if p.version == address.version) else
                            "node" if str(address) in node else "external")
                    kinds[(address.version, kind)] += 1
    assert all(kinds[(version, kind)] for version in (4, 6) for kind in ("pod", "node", "external")), kinds


def test_ipv6_scenarios_cover_the_ipv6_rules() -> None:
    """The IPv6 scenarios exercise every kind of frontend, policy and verdict in IPv6 too."""
    covered = {rule for c in CASES if c.id.startswith(IPV6_CASE_PREFIXES) for rule in c.rules}
    wanted = {"frontend.cluster-ips", "frontend.node-port", "frontend.lb-ingress", "frontend.external-ips",
              "masq.cluster-ip", "masq.external-cluster", "masq.etp-local", "masq.hairpin",
              "verdict.reject-no-endpoint", "verdict.itp-local-drop", "verdict.etp-local-drop",
              "verdict.unknown-port", "verdict.unallocated-service-ip", "verdict.source-ranges", "verdict.pass",
              "node.nodeport-addresses", "node.local-detect", "affinity.client-ip", "ct.reply", "ct.udp-reselect",
              "endpoint.pods", "topology.zone", "set.cluster", "set.local"}
    assert wanted <= covered, sorted(wanted - covered)

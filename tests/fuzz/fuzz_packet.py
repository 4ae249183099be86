#!/usr/bin/env python3
"""Fuzz the compiled core (fastpath._core.Engine) against its twin (fastpath.reference).

Any input bytes decode (see `decode`) into a scenario: a link type (0/1/101/113/228/276 or an
unknown one), a conntrack capacity and timeouts, maps using every routing feature (frontend
kinds, Local policies, source ranges, affinity, duplicate names and addresses, the node view,
sometimes an invalid prefix), then batches of packets with load() of new maps between them.
Packets are raw bytes from the input or built from templates aimed at the maps (new flows,
replies of earlier flows, hairpins, unknown ports, ICMP errors quoting earlier flows in either
direction, first and later fragments, bursts of flows colliding on the SNAT tuple), with header
anomalies, L2 variants and truncations. Timestamps step forward, jump past timeouts and step back.

Each batch runs through both engines; the harness asserts identical verdicts, reasons, trace,
bytes and counters, that bytes outside each packet's slice never change, that untranslated
packets are untouched and translated ones change only addresses, ports and checksums (valid
checksums stay valid), and that trace ids name entries of the maps loaded. Packets are placed
against PROT_NONE guard pages (fuzzinput.GuardArena): a read or write one byte outside a packet
faults, build options or not. Some
batches instead use the real batch layout (packets side by side in one bytearray, as a capture
produces) with canary bytes between them.

    python tests/fuzz/fuzz_packet.py -atheris_runs=100000          # default corpus under /tmp
    python tests/fuzz/fuzz_packet.py -max_total_time=900 --corpus DIR
    python tests/fuzz/fuzz_packet.py --explain crash-FILE          # decode and show one input
    python tests/fuzz/fuzz_packet.py crash-FILE                    # re-run a reproducer

--hide sctp,fragments,icmp,load (or FASTPATH_FUZZ_HIDE=...) keeps packets away from features a
twin does not have yet (protocol 132 -> 133, 1 -> 2, fragment bits cleared; load: no load()
between batches; "auto": those on which a
probe finds the twin behind the core, see twin_lag); --core-only (or
FASTPATH_FUZZ_CORE_ONLY=1) runs no twin: guard pages and the twin-free checks only.
See tests/fuzz/README.md.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from fuzzinput import (
    DEFAULT_ROOT,
    PROTO_ICMP,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    FuzzInput,
    GuardArena,
    env_flag,
    fuzz_main,
    internet_checksum,
    l3_offset,
    mutate_main,
    ones_sum,
    parse_own,
    pseudo_header_sum,
    sctp_crc_field,
)

try:
    import atheris
except ImportError:  # the smoke test runs the harness body without atheris
    atheris = None

# Instrument the twin (pure Python: its branches mirror the core's) when fuzzing for real.
_INSTRUMENT = atheris is not None and __name__ == "__main__" and not any(
    a.startswith(("--mutate", "--explain")) for a in sys.argv)
with atheris.instrument_imports(include=["fastpath"]) if _INSTRUMENT else contextlib.nullcontext():
    from fastpath.maps import FRONTEND_KINDS, Backend, Frontend, Maps, NodeView, Service
    from fastpath.reference import ReferenceEngine, select_backend
    from fastpath.verdicts import Reason, Verdict

    from fastpath import _core

# --------------------------------------------------------------------------- limits

MAX_BATCHES = 8
MAX_PACKETS_PER_BATCH = 16
MAX_PACKETS = 96
SLOT_PAGES = 16  # a guard-arena slot holds 64 KiB: any packet this harness makes
RAW_MAX = 2048


def _ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


# Small pools, so that packets and maps drawn independently still meet.
ADDRESSES = tuple(
    _ip(a)
    for a in (
        "10.96.0.10", "10.96.0.11", "10.96.0.12", "10.244.1.5", "10.244.1.6", "10.244.2.7",
        "10.244.0.5", "192.168.1.10", "192.168.1.11", "203.0.113.9", "0.0.0.0",
        "255.255.255.255", "127.0.0.1",
    )
)
NODE_IP = _ip("192.168.1.10")
PORTS = (80, 443, 53, 8080, 5353, 0, 1023, 1024, 65535, 40000, 40001, 30080)
PREFIX_LENGTHS = (0, 1, 8, 16, 20, 24, 31, 32)
AFFINITY_TIMEOUTS = (0, 0, 0, 1, 5, 10800, 86400)
CAPACITIES = (1, 2, 3, 4, 8, 16, 64, 4096)
TIMEOUT_VALUES = (0, 1, 10, 60, 8000)
TIMEOUT_KEYS = ("syn_sent", "established", "closing", "other")
KNOWN_LINKTYPES = (1, 1, 1, 0, 101, 113, 228, 276)
UNKNOWN_LINKTYPES = (147, 2, 12, 105, -1, 65535)
TCP_FLAGS = (0x02, 0x02, 0x10, 0x18, 0x11, 0x04, 0x12, 0x01, 0x14, 0x10, 0x03, 0x00)
TS_START = (1_700_000_000 * 10**9, 0, 2**64 - 10**13)
TS_DELTAS = (1_000, 1_000_000, 10**9, 0, 11 * 10**9, 61 * 10**9, 9000 * 10**9, -5 * 10**9)
U64 = 2**64 - 1


def draw_ip(inp: FuzzInput) -> int:
    k = inp.below(16)
    return ADDRESSES[k] if k < len(ADDRESSES) else inp.u32()


def draw_port(inp: FuzzInput) -> int:
    k = inp.below(16)
    return PORTS[k] if k < len(PORTS) else inp.u16()


def draw_prefix(inp: FuzzInput) -> tuple[int, int]:
    network = draw_ip(inp)
    k = inp.below(10)
    return network, PREFIX_LENGTHS[k] if k < len(PREFIX_LENGTHS) else inp.below(33)


# --------------------------------------------------------------------------- scenario


@dataclass
class PacketSpec:
    ts: int
    data: bytes
    at_start: bool  # guard layout: against the guard page before (else after) the packet
    gap: int  # shared layout: canary bytes before the packet


@dataclass
class BatchSpec:
    load: Maps | None  # maps to load() before this batch
    packets: list[PacketSpec] = field(default_factory=list)


@dataclass
class Scenario:
    linktype: int
    capacity: int
    timeouts: dict[str, int] | None
    trace: bool
    guard_layout: bool
    maps: Maps
    batches: list[BatchSpec]
    hidden: frozenset[str] = frozenset()


def draw_maps(inp: FuzzInput, sctp: bool) -> Maps:
    n_backends = inp.below(7)
    backends = [Backend(i + 1, draw_ip(inp), draw_port(inp), f"b{i + 1}") for i in range(n_backends)]
    ids = list(range(1, n_backends + 1))

    def subset() -> tuple[int, ...]:
        mask = inp.u8()
        chosen = [b for k, b in enumerate(ids) if mask >> k & 1]
        if mask & 0x80:
            chosen.reverse()
        return tuple(chosen)

    n_services = 1 + inp.below(5)
    services = [
        Service(sid, f"ns/svc-{inp.below(6)}:p", subset(), subset(), subset(),
                inp.choice(AFFINITY_TIMEOUTS))
        for sid in range(1, n_services + 1)
    ]
    protos = (PROTO_TCP, PROTO_UDP, PROTO_SCTP) if sctp else (PROTO_TCP, PROTO_UDP)
    frontends: list[Frontend] = []
    keys = set()
    for _ in range(inp.below(7)):
        ip, port, proto = draw_ip(inp), draw_port(inp), inp.choice(protos)
        service = 1 + inp.below(n_services)
        kind = inp.choice(FRONTEND_KINDS)
        flags = inp.u8()
        ranges = tuple(draw_prefix(inp) for _ in range((0, 0, 0, 0, 0, 1, 1, 2)[(flags >> 1) & 7]))
        if (ip, port, proto) in keys:
            continue
        keys.add((ip, port, proto))
        frontends.append(Frontend(ip, port, proto, service, kind, bool(flags & 1), ranges))
    b = inp.u8()
    primary = (0, NODE_IP, 0, None)[b & 3]
    if primary is None:
        primary = draw_ip(inp)
    local_ips = tuple(draw_ip(inp) for _ in range(inp.below(4)))
    pod_cidrs = tuple(draw_prefix(inp) for _ in range(inp.below(3)))
    if b >> 3 == 31:  # 1 in 32: an invalid prefix length, which load() must refuse
        pod_cidrs += ((draw_ip(inp), 33),)
    service_ips = tuple(fe.ip for fe in frontends if inp.chance(128))
    service_ips += tuple(draw_ip(inp) for _ in range(inp.below(2)))
    node = NodeView(primary, local_ips, pod_cidrs, bool(b & 4), service_ips)
    return Maps(services=services, frontends=frontends, backends=backends, node=node)


def _tcp(inp: FuzzInput, sport: int, dport: int, clean: bool) -> tuple[bytes, int]:
    k = inp.below(16)
    flags = TCP_FLAGS[k] if k < len(TCP_FLAGS) else inp.u8()
    options = b""
    if clean:
        doff = 5
        if inp.chance(32):
            options = b"\x02\x04\x05\xb4\x01\x01\x04\x02"  # MSS, NOP, NOP, SACK permitted
            doff = 7
    else:
        doff = inp.below(16)
        options = inp.take(max(0, doff - 5) * 4)
    payload = inp.take(inp.below(48))
    seq = inp.u32()
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, seq ^ 0x5A5A5A5A, (doff & 15) << 4,
                         flags, 65535, 0, 0)
    return header + options + payload, 16


def _l4(inp: FuzzInput, proto: int, sport: int, dport: int, clean: bool) -> tuple[bytes, int | None]:
    """(segment with a zero checksum field, position of the 16-bit checksum or None)."""
    if proto == PROTO_TCP:
        return _tcp(inp, sport, dport, clean)
    payload = inp.take(inp.below(48))
    if proto == PROTO_UDP:
        length = 8 + len(payload) if clean else inp.choice((8 + len(payload), 0, 7, 8, 9, inp.u16()))
        return struct.pack("!HHHH", sport, dport, length & 0xFFFF, 0) + payload, 6
    if proto == PROTO_SCTP:
        return struct.pack("!HHI", sport, dport, inp.u32()) + b"\0\0\0\0" + payload, None
    return struct.pack("!HH", sport, dport) + payload, None


def build_ipv4(inp: FuzzInput, src: int, dst: int, proto: int, sport: int, dport: int,
               segment: bytes | None = None, ip_id: int | None = None,
               frag: int | None = None) -> bytes:
    """An IPv4 packet: the L4 header built here (or `segment` as is), the L4 checksum usually
    right, the IP header usually clean (else: odd version, IHL, total length, fragment field).
    """
    clean = inp.chance(224)
    if segment is None:
        segment, csum_at = _l4(inp, proto, sport, dport, clean)
    else:
        csum_at = None
    # The L4 checksum: right (the usual case), zero (UDP: none) or anything.
    how = inp.u8()
    seg = bytearray(segment)
    if proto == PROTO_SCTP and len(seg) >= 12:
        seg[8:12] = sctp_crc_field(bytes(seg)) if how < 224 else inp.take(4).ljust(4, b"\0")
    elif csum_at is not None:
        if how < 208:
            value = internet_checksum(seg, pseudo_header_sum(
                src.to_bytes(4, "big"), dst.to_bytes(4, "big"), proto, len(seg)))
            if proto == PROTO_UDP and value == 0:
                value = 0xFFFF
        elif how < 232 and proto == PROTO_UDP:
            value = 0
        else:
            value = inp.u16()
        seg[csum_at : csum_at + 2] = value.to_bytes(2, "big")
    if ip_id is None:
        ip_id = 0x1234 if inp.chance(192) else inp.u16()
    version, ihl, options = 4, 5, b""
    if frag is None:
        frag = 0x4000
    total = 20 + len(seg)
    if not clean:
        version = 4 if inp.chance(224) else inp.below(16)
        ihl = inp.choice((5, 5, 6, 8, 15, 4, 0, inp.below(16)))
        options = inp.take(max(0, ihl - 5) * 4)
        total = inp.choice((20 + len(options) + len(seg), total - 1, total + 1, total + 200, 0,
                            20, ihl * 4, inp.u16())) & 0xFFFF
        frag = inp.choice((0, 0x4000, 0x2000, 0x0001, 0x3FFF, inp.u16()))
    header = bytearray(struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total, ip_id, frag,
                                   64, proto, 0, src.to_bytes(4, "big"), dst.to_bytes(4, "big")))
    header += options
    if inp.chance(240):
        header[10:12] = internet_checksum(header).to_bytes(2, "big")
    else:
        header[10:12] = inp.take(2).ljust(2, b"\0")
    return bytes(header) + bytes(seg)


def frame(inp: FuzzInput, linktype: int, payload: bytes) -> bytes:
    """Wrap an IP packet in the link layer (sometimes with another L3 protocol number)."""
    ethertype = 0x0800 if inp.chance(232) else inp.choice((0x86DD, 0x0806, 0x88CC, inp.u16()))
    if linktype == 1:
        tags = b"".join(
            struct.pack("!HH", inp.choice((0x8100, 0x88A8, 0x9100)), inp.u16())
            for _ in range(inp.choice((0, 0, 0, 0, 1, 1, 2, 3)))
        )
        return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01" + tags + struct.pack("!H", ethertype) + payload
    if linktype == 113:
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", ethertype) + payload
    if linktype == 276:
        return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, b"\x02\0\0\0\0\x01\0\0") + payload
    if linktype == 0:
        family = inp.choice((b"\x02\0\0\0", b"\x02\0\0\0", b"\0\0\0\x02", b"\x18\0\0\0",
                             b"\0\0\0\x1e", b"\x1c\0\0\0", inp.take(4)))
        return family + payload
    if linktype in (101, 228):
        return payload
    return inp.take(inp.below(24)) + payload


def draw_client(inp: FuzzInput, maps: Maps) -> int:
    c = inp.u8()
    if c < 150 or (c < 200 and not maps.backends):
        return draw_ip(inp)
    if c < 200:
        return inp.choice(maps.backends).ip  # hairpin
    if c < 230:
        return inp.choice(maps.node.local_ips or (NODE_IP,))
    return inp.u32()


def _flow_backend(inp: FuzzInput, maps: Maps, flow: tuple) -> tuple[int, int]:
    """(ip, port) a flow's replies most likely come from: the backend the hash picks."""
    client, cport, fe = flow
    candidates: tuple[int, ...] = ()
    service = None
    if fe.service <= len(maps.services):
        service = maps.services[fe.service - 1]
        candidates = service.backends + service.local_backends
    if not candidates:
        return fe.ip, fe.port
    if inp.chance(160) and service.backends:
        backend_id = select_backend(service.backends, client, fe.ip, cport, fe.port, fe.proto)
    else:
        backend_id = inp.choice(candidates)
    backend = maps.backends[backend_id - 1]
    return backend.ip, backend.port


def icmp_error(inp: FuzzInput, maps: Maps, flows: list) -> tuple[int, int, bytes]:
    """(outer src, outer dst, ICMP message) quoting a packet of an earlier flow, in either
    direction (as translated towards the backend, or as the client saw a reply)."""
    flow = inp.choice(flows)
    client, cport, fe = flow
    bip, bport = _flow_backend(inp, maps, flow)
    masq_dst = maps.node.primary_ip or client
    if inp.chance(128):
        # Quoted: client (or SNAT address) -> backend; the error goes back to the client side.
        qsrc = client if inp.chance(160) else masq_dst
        quoted_tuple = (qsrc, cport, bip, bport)
        outer_src = bip if inp.chance(128) else draw_ip(inp)
        outer_dst = qsrc
    else:
        # Quoted: frontend -> client (a reply as the client saw it); the error goes to the frontend.
        quoted_tuple = (fe.ip, fe.port, client, cport)
        outer_src = client if inp.chance(192) else draw_ip(inp)
        outer_dst = fe.ip
    qs, qsp, qd, qdp = quoted_tuple
    quoted = build_ipv4(inp, qs, qd, fe.proto, qsp, qdp)
    ihl = (quoted[0] & 0x0F) * 4 if quoted else 20
    quoted = quoted[: ihl + inp.choice((8, 8, 8, 4, 0, 2, 12, 20, 28, 4096))]
    icmp_type = inp.choice((3, 3, 11, 12, 0, 8, 5, inp.u8()))
    body = struct.pack("!BBHI", icmp_type, inp.choice((3, 1, 4, 0, inp.u8())), 0, 0) + quoted
    if inp.chance(224):
        body = body[:2] + internet_checksum(body).to_bytes(2, "big") + body[4:]
    return outer_src, outer_dst, body


def template_packet(inp: FuzzInput, maps: Maps, flows: list, frags: list,
                    linktype: int) -> bytes:
    kind = inp.u8()
    if kind < 24 and frags:
        # A later fragment of an earlier first fragment (or a stray one).
        src, dst, ip_id, proto = inp.choice(frags) if inp.chance(224) else (
            draw_ip(inp), draw_ip(inp), inp.u16(), inp.choice((PROTO_TCP, PROTO_UDP)))
        offset = inp.choice((1, 2, 185, 0x1FFF, inp.below(0x2000)))
        more = 0x2000 if inp.chance(96) else 0
        payload = inp.take(inp.below(64))
        return frame(inp, linktype, build_ipv4(inp, src, dst, proto, 0, 0, payload, ip_id,
                                               more | offset))
    if kind < 48 and flows:
        src, dst, message = icmp_error(inp, maps, flows)
        return frame(inp, linktype, build_ipv4(inp, src, dst, 1, 0, 0, message))
    if kind < 64 and maps.frontends:
        # A first fragment (MF set, offset 0) of a packet to a frontend.
        fe = inp.choice(maps.frontends)
        src, sport = draw_client(inp, maps), draw_port(inp)
        ip_id = inp.u16()
        frags.append((src, fe.ip, ip_id, fe.proto))
        flows.append((src, sport, fe))
        return frame(inp, linktype, build_ipv4(inp, src, fe.ip, fe.proto, sport, fe.port,
                                               None, ip_id, 0x2000))
    if kind < 130 and maps.frontends:
        fe = inp.choice(maps.frontends)
        if flows and inp.chance(96):
            client, cport, fe = inp.choice(flows)
        else:
            client, cport = draw_client(inp, maps), draw_port(inp)
            flows.append((client, cport, fe))
        src, sport, dst, dport, proto = client, cport, fe.ip, fe.port, fe.proto
    elif kind < 200 and flows:
        client, cport, fe = flow = inp.choice(flows)
        src, sport = _flow_backend(inp, maps, flow)
        # Replies go to the client, or to the node's address when the flow was masqueraded.
        dst = client if inp.chance(160) or not maps.node.primary_ip else maps.node.primary_ip
        dport = inp.choice((cport, cport, cport, (cport + 1) & 0xFFFF, 1024, draw_port(inp)))
        proto = fe.proto
    elif kind < 225:
        # Some address the node knows (often a ClusterIP) on any port and protocol.
        known = maps.node.service_ips + tuple(fe.ip for fe in maps.frontends)
        src, sport = draw_ip(inp), draw_port(inp)
        dst = inp.choice(known) if known and inp.chance(192) else draw_ip(inp)
        dport = draw_port(inp)
        proto = inp.choice((PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMP, 0, 255))
    else:
        src, sport, dst, dport, proto = inp.u32(), inp.u16(), inp.u32(), inp.u16(), inp.u8()
    return frame(inp, linktype, build_ipv4(inp, src, dst, proto, sport, dport))


def mutate(inp: FuzzInput, data: bytes) -> bytes:
    m = inp.u8()
    if m < 200 or not data:
        return data
    if m < 222:
        return data[: inp.below(len(data) + 1)]
    if m < 244:
        buf = bytearray(data)
        for _ in range(1 + inp.below(4)):
            buf[inp.below(len(buf))] = inp.u8()
        return bytes(buf)
    return data + inp.take(inp.below(64))


HIDEABLE = ("sctp", "fragments", "icmp", "load")


def hide(linktype: int, data: bytes, features: frozenset[str]) -> bytes:
    """--hide: keep packets away from features a twin does not have yet. sctp: IPv4 protocol
    132 becomes 133; icmp: protocol 1 becomes 2; fragments: MF and the offset are cleared.
    ("load", no load() between batches, is applied in decode.)"""
    l3 = l3_offset(linktype, data)
    if l3 is None:
        return data
    buf = bytearray(data)
    if "sctp" in features and buf[l3 + 9] == PROTO_SCTP:
        buf[l3 + 9] = PROTO_SCTP + 1
    if "icmp" in features and buf[l3 + 9] == PROTO_ICMP:
        buf[l3 + 9] = 2
    if "fragments" in features:
        buf[l3 + 6] &= 0xC0
        buf[l3 + 7] = 0
    return bytes(buf)


def decode(inp: FuzzInput, hidden: frozenset[str] = frozenset()) -> Scenario:
    """The scenario an input describes (a pure function of the bytes)."""
    k = inp.below(len(KNOWN_LINKTYPES) + 1)
    if k < len(KNOWN_LINKTYPES):
        linktype = KNOWN_LINKTYPES[k]
    else:
        linktype = inp.choice(UNKNOWN_LINKTYPES + (inp.u16(),))
    capacity = inp.choice(CAPACITIES)
    timeouts = None
    if inp.chance(64):
        timeouts = {key: inp.choice(TIMEOUT_VALUES) for key in TIMEOUT_KEYS}
    trace = inp.chance(224)
    guard_layout = inp.chance(176)
    sctp = "sctp" not in hidden
    maps = draw_maps(inp, sctp)
    current = maps
    k = inp.below(len(TS_START) + 1)
    ts = TS_START[k] if k < len(TS_START) else inp.u64()
    batches = [BatchSpec(None)]
    flows: list = []
    frags: list = []
    total = 0
    while not inp.exhausted and total < MAX_PACKETS:
        op = inp.u8()
        batch = batches[-1]
        full = len(batch.packets) >= MAX_PACKETS_PER_BATCH
        if (op < 10 and batch.packets) or full:
            if len(batches) >= MAX_BATCHES:
                break
            load = None
            if op < 6:
                load = draw_maps(inp, sctp)
                if "load" in hidden:
                    load = None
                else:
                    current = load
            batches.append(BatchSpec(load))
            continue
        if 10 <= op < 13 and current.frontends:
            # A burst of new flows from consecutive clients with one source port to one
            # frontend: masqueraded, they collide on the SNAT tuple (the port walk, its limit).
            fe, sport, base = inp.choice(current.frontends), draw_port(inp), draw_ip(inp)
            zero = FuzzInput(b"")
            for i in range(inp.choice((8, 33, 66))):
                if total >= MAX_PACKETS:
                    break
                if len(batches[-1].packets) >= MAX_PACKETS_PER_BATCH:
                    if len(batches) >= MAX_BATCHES:
                        break
                    batches.append(BatchSpec(None))
                ts = min(ts + 1000, U64)
                client = (base + i) & 0xFFFFFFFF
                data = frame(zero, linktype, build_ipv4(zero, client, fe.ip, fe.proto, sport, fe.port))
                if hidden:
                    data = hide(linktype, data, hidden)
                batches[-1].packets.append(PacketSpec(ts, data, bool(i & 1), 0))
                total += 1
                if i < 4:
                    flows.append((client, sport, fe))
            continue
        k = inp.below(len(TS_DELTAS) + 1)
        ts += TS_DELTAS[k] if k < len(TS_DELTAS) else inp.u32()
        ts = min(max(ts, 0), U64)
        if op < 50:
            data = inp.take(inp.below(RAW_MAX))
        else:
            data = mutate(inp, template_packet(inp, current, flows, frags, linktype))
        if hidden:
            data = hide(linktype, data, hidden)
        gap = inp.choice((0, 0, 1, 3, 16, 40))
        batch.packets.append(PacketSpec(ts, data, bool(op & 1), gap))
        total += 1
    return Scenario(linktype, capacity, timeouts, trace, guard_layout, maps, batches, hidden)


# --------------------------------------------------------------------------- execution

_ARENA: GuardArena | None = None
CANARY = 0xA5
WINDOW = 64  # bytes checked on each side of a packet in the guard arena


def arena() -> GuardArena:
    global _ARENA
    if _ARENA is None:
        _ARENA = GuardArena(MAX_PACKETS_PER_BATCH, SLOT_PAGES)
    return _ARENA


class Mismatch(AssertionError):
    pass


def _hex(data: bytes | memoryview) -> str:
    return bytes(data).hex()


@dataclass
class Outcome:
    verdicts: array
    reasons: array
    services: array | None
    backends: array | None
    flags: array | None
    packets: list[bytes]


def _result_arrays(n: int, trace: bool) -> tuple[Any, ...]:
    return (array("B", bytes(n)), array("B", bytes(n)),
            array("I", bytes(4 * n)) if trace else None, array("I", bytes(4 * n)) if trace else None,
            array("B", bytes(n)) if trace else None)


def _shared_buffer(packets: list[PacketSpec], gaps: bool) -> tuple[bytearray, array, array]:
    buf = bytearray()
    offsets, lengths = array("Q"), array("I")
    for p in packets:
        if gaps:
            buf += bytes([CANARY]) * p.gap
        offsets.append(len(buf))
        lengths.append(len(p.data))
        buf += p.data
    if gaps:
        buf += bytes([CANARY]) * 8
    return buf, offsets, lengths


def _check_outside(before: bytes | bytearray, after: bytes | bytearray, offsets: array,
                   lengths: array, who: str, where: str) -> None:
    inside = bytearray(len(before))
    for off, n in zip(offsets, lengths):
        inside[off : off + n] = b"\1" * n
    for pos in range(len(before)):
        if not inside[pos] and before[pos] != after[pos]:
            raise Mismatch(f"{where}: {who} wrote byte {pos} of the batch buffer, outside every "
                           f"packet ({before[pos]:#04x} -> {after[pos]:#04x})")


def run_engine(engine: Any, packets: list[PacketSpec], scn: Scenario, guard: bool,
               where: str, who: str) -> Outcome:
    n = len(packets)
    verdicts, reasons, services, backends, flags = _result_arrays(n, scn.trace)
    stamps = array("Q", [p.ts for p in packets])
    if guard:
        a = arena()
        offsets, lengths = array("Q"), array("I")
        windows = []
        for i, p in enumerate(packets):
            start, end = a.slot_start(i), a.slot_end(i)
            off = start if p.at_start else end - len(p.data)
            a.view[off : off + len(p.data)] = p.data
            offsets.append(off)
            lengths.append(len(p.data))
            lo, hi = max(start, off - WINDOW), min(end, off + len(p.data) + WINDOW)
            windows.append((lo, off, bytes(a.view[lo:off]), off + len(p.data), hi,
                            bytes(a.view[off + len(p.data) : hi])))
        engine.process(a.view, offsets, lengths, stamps, verdicts, reasons, scn.linktype,
                       services, backends, flags)
        out = [bytes(a.view[off : off + n]) for off, n in zip(offsets, lengths)]
        for lo, off, left, end, hi, right in windows:
            if bytes(a.view[lo:off]) != left or bytes(a.view[end:hi]) != right:
                raise Mismatch(f"{where}: {who} wrote next to a packet in its guard slot")
    else:
        buf, offsets, lengths = _shared_buffer(packets, gaps=True)
        before = bytes(buf)
        engine.process(buf, offsets, lengths, stamps, verdicts, reasons, scn.linktype,
                       services, backends, flags)
        _check_outside(before, buf, offsets, lengths, who, where)
        out = [bytes(buf[off : off + n]) for off, n in zip(offsets, lengths)]
    return Outcome(verdicts, reasons, services, backends, flags, out)


def _name(enum: Any, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"<{value}>"


def compare(core: Outcome, twin: Outcome, packets: list[PacketSpec], scn: Scenario,
            where: str) -> None:
    for i, p in enumerate(packets):
        problems = []
        if core.verdicts[i] != twin.verdicts[i] or core.reasons[i] != twin.reasons[i]:
            problems.append(
                f"verdict/reason core {_name(Verdict, core.verdicts[i])}/"
                f"{_name(Reason, core.reasons[i])}, twin {_name(Verdict, twin.verdicts[i])}/"
                f"{_name(Reason, twin.reasons[i])}")
        if scn.trace:
            got = (core.services[i], core.backends[i], core.flags[i])
            want = (twin.services[i], twin.backends[i], twin.flags[i])
            if got != want:
                problems.append(f"trace (service, backend, flags) core {got}, twin {want}")
        if core.packets[i] != twin.packets[i]:
            diff = [k for k in range(len(p.data)) if core.packets[i][k] != twin.packets[i][k]]
            problems.append(f"bytes differ at {diff[:16]}: core {_hex(core.packets[i])} "
                            f"twin {_hex(twin.packets[i])}")
        if problems:
            raise Mismatch(f"{where} packet {i} (linktype {scn.linktype}, ts {p.ts}, input "
                           f"{_hex(p.data)}): " + "; ".join(problems))


def compare_counters(core: dict, twin: dict, where: str, hidden: frozenset[str]) -> None:
    if core == twin:
        return
    diffs = []
    for key in sorted(set(core) | set(twin)):
        a, b = core.get(key), twin.get(key)
        if key in hidden and (a is None or b is None):
            continue  # a counter group of a hidden feature that only one engine has
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    diffs.append(f"{key}.{sub}: core {a.get(sub)}, twin {b.get(sub)}")
        elif a != b:
            diffs.append(f"{key}: core {a}, twin {b}")
    if diffs:
        raise Mismatch(f"{where}: counters differ: " + "; ".join(diffs))


def check_rewrite(linktype: int, before: bytes, after: bytes, verdict: int, where: str) -> None:
    """What the spec guarantees of any rewrite, checked on the output both engines agree on."""
    if verdict not in (Verdict.DNAT, Verdict.REVNAT):
        if before != after:
            raise Mismatch(f"{where}: a {_name(Verdict, verdict)} packet was modified")
        return
    l3 = l3_offset(linktype, before)
    if l3 is None:
        raise Mismatch(f"{where}: translated a packet that is not IPv4 ({_hex(before)})")
    ihl = (before[l3] & 0x0F) * 4
    l4 = l3 + ihl
    proto = before[l3 + 9]
    if ones_sum(before[l3:l4]) == 0xFFFF and ones_sum(after[l3:l4]) != 0xFFFF:
        raise Mismatch(f"{where}: a valid IPv4 header checksum became invalid: {_hex(after)}")
    if proto not in (PROTO_TCP, PROTO_UDP, PROTO_SCTP) or before[l3 + 6] & 0x3F or before[l3 + 7]:
        return  # ICMP errors and fragments: left to the differential comparison
    allowed = set(range(l3 + 10, l3 + 20)) | set(range(l4, l4 + 4))
    if proto == PROTO_TCP:
        allowed |= {l4 + 16, l4 + 17}
    elif proto == PROTO_UDP:
        allowed |= {l4 + 6, l4 + 7}
    elif proto == PROTO_SCTP:
        allowed |= set(range(l4 + 8, l4 + 12))
    changed = [k for k in range(len(before)) if before[k] != after[k]]
    stray = [k for k in changed if k not in allowed]
    if stray:
        raise Mismatch(f"{where}: rewrite touched bytes {stray[:16]} beyond addresses, ports and "
                       f"checksums: {_hex(before)} -> {_hex(after)}")
    total = int.from_bytes(before[l3 + 2 : l3 + 4], "big")
    if l3 + total > len(before):
        return  # snaplen cut: the L4 checksum cannot be checked
    seg_b, seg_a = before[l4 : l3 + total], after[l4 : l3 + total]
    if proto in (PROTO_TCP, PROTO_UDP):
        csum_at = 16 if proto == PROTO_TCP else 6
        if proto == PROTO_UDP and seg_b[6:8] == b"\0\0":
            if seg_a[6:8] != b"\0\0":
                raise Mismatch(f"{where}: a UDP datagram without checksum got one")
            return
        ok_b = ones_sum(seg_b, pseudo_header_sum(before[l3 + 12 : l3 + 16],
                                                 before[l3 + 16 : l3 + 20], proto, len(seg_b)))
        ok_a = ones_sum(seg_a, pseudo_header_sum(after[l3 + 12 : l3 + 16],
                                                 after[l3 + 16 : l3 + 20], proto, len(seg_a)))
        if ok_b == 0xFFFF and ok_a != 0xFFFF:
            raise Mismatch(f"{where}: a valid {'TCP' if proto == PROTO_TCP else 'UDP'} checksum "
                           f"became invalid: {_hex(before)} -> {_hex(after)}")
        if proto == PROTO_UDP and seg_a[csum_at : csum_at + 2] == b"\0\0":
            raise Mismatch(f"{where}: a UDP checksum was rewritten to 0 (means none)")
    elif proto == PROTO_SCTP and seg_a[8:12] != sctp_crc_field(seg_a):
        raise Mismatch(f"{where}: the SCTP CRC32c of a whole captured packet is wrong after the "
                       f"rewrite: {_hex(after)}")


def _construct(make: Any) -> tuple[Any, str | None]:
    try:
        return make(), None
    except ValueError as exc:
        return None, type(exc).__name__


def check_ids(out: Outcome, packets: list[PacketSpec], maps: Maps, where: str) -> None:
    """Trace ids name entries of the maps loaded (0 for an id without counterpart after load())."""
    if out.services is None:
        return
    for i in range(len(packets)):
        if out.services[i] > len(maps.services) or out.backends[i] > len(maps.backends):
            raise Mismatch(f"{where} packet {i}: trace names service {out.services[i]} / backend "
                           f"{out.backends[i]}, but the maps loaded have {len(maps.services)} "
                           f"services and {len(maps.backends)} backends (a stale id: the "
                           f"per-id counters were indexed out of bounds too)")


def _branch_chain(name: str, size: int) -> Any:
    """A function with one `if v == k` branch per value below `size`: instrumented by atheris,
    it turns the core's outcomes into coverage (the compiled core itself gives none)."""
    lines = [f"def {name}(values):", "    for v in values:"]
    lines += [f"        {'if' if k == 0 else 'elif'} v == {k}:\n            pass" for k in range(size)]
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)  # noqa: S102 (generated above, no outside input)
    return namespace[name]


_reason_edges = _branch_chain("reason_edges", 32)
_flag_edges = _branch_chain("flag_edges", 16)


def outcome_feedback(out: Outcome) -> None:
    _reason_edges(out.reasons)
    if out.flags is not None:
        _flag_edges(out.flags)


def check_alone(out: Outcome, packets: list[PacketSpec], scn: Scenario, where: str) -> None:
    """--core-only: what holds without a twin to compare with."""
    for i, p in enumerate(packets):
        if out.verdicts[i] > Verdict.REJECT:
            raise Mismatch(f"{where} packet {i}: verdict {out.verdicts[i]} out of range")
        check_rewrite(scn.linktype, p.data, out.packets[i], out.verdicts[i], f"{where} packet {i}")


def execute(scn: Scenario, twin_too: bool = True) -> None:
    """Run a scenario through the core (and the twin), checking everything after each batch."""
    core, core_err = _construct(lambda: _core.Engine(scn.maps, scn.capacity, scn.timeouts))
    twin, twin_err = None, core_err
    if twin_too:
        twin, twin_err = _construct(lambda: ReferenceEngine(scn.maps, scn.capacity, scn.timeouts))
    if core_err != twin_err:
        raise Mismatch(f"Engine(maps) core raised {core_err}, twin raised {twin_err}")
    if core is None:
        return
    processed = 0
    loaded = scn.maps
    for b, spec in enumerate(scn.batches):
        where = f"batch {b}"
        if spec.load is not None:
            _, core_err = _construct(lambda maps=spec.load: core.load(maps))
            if core_err is None:
                loaded = spec.load
            if twin is not None:
                _, twin_err = _construct(lambda maps=spec.load: twin.load(maps))
                if core_err != twin_err:
                    raise Mismatch(f"{where}: load(maps) core raised {core_err}, "
                                   f"twin raised {twin_err}")
                compare_counters(core.counters(), twin.counters(), f"{where} after load()",
                                 scn.hidden)
        got = run_engine(core, spec.packets, scn, scn.guard_layout, where, "the core")
        processed += len(spec.packets)
        outcome_feedback(got)
        check_ids(got, spec.packets, loaded, where)
        if twin is None:
            check_alone(got, spec.packets, scn, where)
            counted = sum(core.counters()["verdicts"].values())
            if counted != processed:
                raise Mismatch(f"{where}: {counted} verdicts counted for {processed} packets")
            continue
        want = run_engine(twin, spec.packets, scn, False, where, "the twin")
        compare(got, want, spec.packets, scn, where)
        compare_counters(core.counters(), twin.counters(), where, scn.hidden)
        for i, p in enumerate(spec.packets):
            check_rewrite(scn.linktype, p.data, got.packets[i], got.verdicts[i],
                          f"{where} packet {i}")


_LAGGING: frozenset[str] | None = None


def twin_lag() -> frozenset[str]:
    """Features (of HIDEABLE) on which the twin does not match the core yet, each tried on one
    small well-formed case: an SCTP flow, an ICMP error about a tracked flow, a fragmented
    datagram. For `--hide auto` while a feature lands in the core before the twin."""
    global _LAGGING
    if _LAGGING is not None:
        return _LAGGING
    zero = FuzzInput(b"")  # every draw 0: clean headers, right checksums, a SYN
    vip, pod, client = _ip("10.96.0.10"), _ip("10.244.1.5"), _ip("10.244.0.5")
    maps = Maps(services=[Service(1, "ns/probe:p", (1,), (), (1,))],
                frontends=[Frontend(vip, 80, PROTO_TCP, 1), Frontend(vip, 80, PROTO_SCTP, 1)],
                backends=[Backend(1, pod, 8080, "probe")])
    syn = build_ipv4(zero, client, vip, PROTO_TCP, 40000, 80)
    quoted = build_ipv4(zero, client, pod, PROTO_TCP, 40000, 8080)[:28]
    error = bytearray(struct.pack("!BBHI", 3, 3, 0, 0) + quoted)
    error[2:4] = internet_checksum(error).to_bytes(2, "big")
    cases = {
        "sctp": [build_ipv4(zero, client, vip, PROTO_SCTP, 40000, 80)],
        "icmp": [syn, build_ipv4(zero, pod, client, PROTO_ICMP, 0, 0, bytes(error))],
        "fragments": [build_ipv4(zero, client, vip, PROTO_TCP, 40001, 80, None, 7, 0x2000),
                      build_ipv4(zero, client, vip, PROTO_TCP, 0, 0, b"x" * 16, 7, 0x0002)],
    }
    lagging = set()
    for feature, packets in cases.items():
        results = []
        for engine in (_core.Engine(maps, 16), ReferenceEngine(maps, 16)):
            results.append(([tuple(engine.process_packet(p, 10**9, 101)) for p in packets],
                            engine.counters()))
        (got, core_counters), (want, twin_counters) = results
        common = set(core_counters) & set(twin_counters)
        if got != want or any(core_counters[k] != twin_counters[k] for k in common):
            lagging.add(feature)
        if feature in set(core_counters) ^ set(twin_counters):  # its counter group, one side only
            lagging.add(feature)
    _LAGGING = frozenset(lagging)
    return _LAGGING


def resolve_hidden(names: frozenset[str]) -> frozenset[str]:
    """"auto" stands for twin_lag()."""
    if "auto" in names:
        names = (names - {"auto"}) | twin_lag()
    return names


def settings_from_env() -> tuple[frozenset[str], bool]:
    """(features hidden, whether the twin runs) from FASTPATH_FUZZ_HIDE / FASTPATH_FUZZ_CORE_ONLY."""
    hidden = frozenset(f for f in os.environ.get("FASTPATH_FUZZ_HIDE", "").split(",") if f)
    return resolve_hidden(hidden), not env_flag("FASTPATH_FUZZ_CORE_ONLY")


def run_one(data: bytes, hidden: frozenset[str] | None = None,
            twin_too: bool | None = None) -> Scenario:
    """The harness body: decode, run the core (and the twin), check. Raises on any finding."""
    env_hidden, env_twin = settings_from_env()
    scn = decode(FuzzInput(data), env_hidden if hidden is None else hidden)
    execute(scn, env_twin if twin_too is None else twin_too)
    return scn


def explain(data: bytes, hidden: frozenset[str] = frozenset()) -> str:
    """A readable account of what an input decodes to (for triage)."""
    scn = decode(FuzzInput(data), hidden)
    lines = [(f"linktype {scn.linktype}, ct_capacity {scn.capacity}, timeouts {scn.timeouts}, "
              f"trace {scn.trace}, {'guard-page' if scn.guard_layout else 'shared'} layout"),
             f"maps: {scn.maps}"]
    for b, spec in enumerate(scn.batches):
        if spec.load is not None:
            lines.append(f"batch {b}: load {spec.load}")
        for i, p in enumerate(spec.packets):
            lines.append(f"batch {b} packet {i}: ts {p.ts} {'start' if p.at_start else 'end'}"
                         f"-aligned gap {p.gap}: {_hex(p.data)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    argv, own = parse_own(argv, ("corpus", "explain", "hide", "mutate", "seed"),
                          ("core-only",))
    hidden, twin_too = settings_from_env()
    for value in own.get("hide", []):
        hidden |= resolve_hidden(frozenset(f for f in value.split(",") if f))
    unknown = hidden - set(HIDEABLE)
    if unknown:
        print(f"--hide: unknown feature(s) {sorted(unknown)}; known: {HIDEABLE}", file=sys.stderr)
        return 2
    twin_too = twin_too and not own.get("core-only")
    # libFuzzer re-runs this script for -fork, -minimize_crash and the like without our own
    # options: hand them down through the environment.
    os.environ["FASTPATH_FUZZ_HIDE"] = ",".join(sorted(hidden))
    os.environ["FASTPATH_FUZZ_CORE_ONLY"] = "" if twin_too else "1"
    if own.get("explain"):
        for path in own["explain"]:
            with open(path, "rb") as f:
                data = f.read()
            print(explain(data, hidden))
            try:
                run_one(data, hidden, twin_too)
                print("-> no finding")
            except AssertionError as exc:
                print(f"-> {type(exc).__name__}: {exc}")
        return 0

    def test_one_input(data: bytes) -> None:
        run_one(data, hidden, twin_too)

    if own.get("mutate"):
        paths = own.get("corpus") or [a for a in argv[1:] if not a.startswith("-")] or [
            os.path.join(DEFAULT_ROOT, "corpus", "packet")]
        return mutate_main("packet", test_one_input, paths, float(own["mutate"][-1]),
                           int((own.get("seed") or ["1"])[-1]))
    if atheris is not None:
        # The decoder's branches and the core's outcomes as coverage, next to the twin's.
        for name in ("decode", "draw_maps", "template_packet", "icmp_error", "build_ipv4", "_l4",
                     "_tcp", "frame", "mutate", "check_rewrite"):
            globals()[name] = atheris.instrument_func(globals()[name])
        global _reason_edges, _flag_edges
        _reason_edges = atheris.instrument_func(_reason_edges)
        _flag_edges = atheris.instrument_func(_flag_edges)
    print(f"fuzz_packet: core {_core.__file__} (debug build: {_core.DEBUG_BUILD}), guard pages: "
          f"{arena().guarded}, twin: {twin_too}, hidden: {sorted(hidden) or 'nothing'}",
          file=sys.stderr)
    return fuzz_main("packet", test_one_input, argv, own.get("corpus", []))


if __name__ == "__main__":
    sys.exit(main())

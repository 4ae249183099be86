"""Generated traffic for differential tests: a random but reproducible mix of service flows
(TCP, UDP and SCTP, some SCTP packets cut by the snaplen), replies, fragmented datagrams (first
fragments followed by their later ones, interleaved with other traffic, sometimes reordered or
without their first fragment), ICMP errors about flows from either side (quotes cut at various
lengths, from endpoints and from routers, masqueraded or not), other ICMP, unrelated packets and
malformed frames, over several link types.

The maps are dual-stack: IPv6-only and dual-stack service ports (one Service per family) with
IPv6 backends and frontends of every kind, the node's IPv6 addresses, pod CIDR, service IPs and
masquerade address. The IPv6 traffic is of the same kinds, plus extension headers, IPv6
fragments, ICMPv6 errors (some quoting IPv4, some ICMPv4 errors quoting IPv6) and malformed IPv6
(cut at every layer, bad version, IPv4-mapped addresses, UDP without checksum, bad extension
headers). It is drawn from its own generator, seeded from the caller's without advancing it, and
interleaved with the IPv4 traffic: a seed still gives the IPv4 maps and packets it always gave.
IPv6 packets are built with struct (scapy is too slow for them on top of the IPv4 ones).
"""
from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass, replace

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkData
from scapy.layers.sctp import crc32c as scapy_crc32c
from scapy.packet import Raw

from fastpath.maps import (
    FRONTEND_KINDS,
    IPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    Backend,
    Frontend,
    Maps,
    NodeView,
    Service,
    address_from_text,
    family_of,
    format_address,
)
from fastpath.icmp import internet_checksum
from fastpath.reference import select_backend

PROTOCOLS = [PROTO_TCP, PROTO_UDP, PROTO_SCTP]

TCP_FLAGS = ["S", "S", "A", "PA", "PA", "FA", "R", "SA", "F", "RA"]

# How many IPv6 packets random_traffic adds per IPv4 packet asked for.
IPV6_SHARE = 0.5


def addr(value: int) -> str:
    """The text of a map address of either family."""
    return format_address(value)


def side_rng(rng: random.Random, label: str) -> random.Random:
    """A generator seeded from `rng`'s current state without advancing it: what is drawn from it
    leaves every later draw from `rng` as it was."""
    _, state, _ = rng.getstate()
    return random.Random(label.encode() + b"".join(word.to_bytes(4, "little") for word in state))


# --------------------------------------------------------------------------- maps

BASE6 = address_from_text("fd00:244::")  # the IPv6 pod network (backends and pods)
VIP6_BASE = address_from_text("fd00:96::")
NODE6 = address_from_text("fd00:1::a")  # the node's IPv6 addresses
NODE6_OTHER = address_from_text("fd00:1::b")
EXTERNAL6 = address_from_text("2001:db8:c::")  # clients inside the LoadBalancer source ranges
FAR6 = address_from_text("2001:db8:f::")  # clients outside them


def random_maps(rng: random.Random, n_services: int = 24, n_backends: int = 40, ipv6: bool = True) -> Maps:
    """Maps exercising every routing input: kinds, Local policies, source ranges, affinity,
    node addresses, pod CIDRs. Service names are drawn from a small pool, so two calls share
    some names (load() maps ids by name and family). The IPv4 part comes first (ids 1..) and is
    what it was before IPv6; with `ipv6`, IPv6 service ports follow (see add_ipv6)."""
    base = int(ipaddress.IPv4Address("10.244.0.0"))
    backends = [
        Backend(i + 1, base + rng.randrange(1, 4000), rng.choice([80, 8080, 53, 5353, 9000 + i]),
                f"backend-{i + 1}")
        for i in range(n_backends)
    ]
    # Distinct (ip, port): the compiler never emits two backends for one address.
    seen, unique = set(), []
    for b in backends:
        if (b.ip, b.port) not in seen:
            seen.add((b.ip, b.port))
            unique.append(Backend(len(unique) + 1, b.ip, b.port, b.name))
    backends = unique
    ids = range(1, len(backends) + 1)
    names = sorted(rng.sample(range(40), n_services))
    services, frontends = [], []
    for sid, name in enumerate(names, start=1):
        count = rng.choice([0, 1, 2, 3, 5, 8]) if sid > 2 else 3
        cluster = tuple(sorted(rng.sample(ids, count)))
        local = tuple(sorted(rng.sample(cluster, rng.randrange(len(cluster) + 1))))
        serving = tuple(sorted(set(cluster) | set(rng.sample(ids, rng.randrange(3)))))
        affinity = rng.choice([0, 0, 0, 5, 100])
        services.append(Service(sid, f"ns/svc-{name}:p", cluster, local, serving, affinity))
        vip = int(ipaddress.IPv4Address("10.96.0.0")) + name
        kind = rng.choice(FRONTEND_KINDS)
        ranges = ()
        if kind == "LoadBalancer" and rng.random() < 0.5:
            ranges = ((base, 20), (int(ipaddress.IPv4Address("192.168.0.0")), 16))
        number = rng.choice([80, 443, 53, 8080])
        proto = rng.choice(PROTOCOLS)
        frontends.append(Frontend(vip, number, proto, sid, kind, rng.random() < 0.4, ranges))
        if rng.random() < 0.3:
            # The same address and port in another protocol: another service port entirely.
            other = rng.choice([p for p in PROTOCOLS if p != proto])
            frontends.append(Frontend(vip, number, other, rng.randrange(1, n_services + 1), kind,
                                      rng.random() < 0.4, ranges))
    node = NodeView(
        primary_ip=rng.choice([0, int(ipaddress.IPv4Address("192.168.1.10"))]),
        local_ips=(int(ipaddress.IPv4Address("192.168.1.10")), base + 7),
        pod_cidrs=rng.choice([(), ((base, 21),)]),
        masquerade_all=rng.random() < 0.2,
        service_ips=tuple(f.ip for f in frontends[::2]),
    )
    if node.primary_ip:  # (decided without a draw: the traffic stays what it was)
        # Service CIDRs: frontend addresses outside service_ips become unallocated-drops.
        node = replace(node, service_cidrs=((int(ipaddress.IPv4Address("10.96.0.0")), 24),))
    if ipv6:
        node = add_ipv6(side_rng(rng, "ipv6 maps"), services, frontends, backends, node)
    return Maps(services=services, frontends=frontends, backends=backends, node=node)


def add_ipv6(rng: random.Random, services: list, frontends: list, backends: list, node: NodeView) -> NodeView:
    """Append IPv6 backends, service ports and frontends to the lists; the node with its IPv6
    side. Names come from the IPv4 pool: a name the IPv4 part has too is a dual-stack service
    port (two Services, one per family), any other an IPv6-only one."""
    first_backend = len(backends) + 1
    seen = set()
    for i in range(rng.randrange(12, 30)):
        host = rng.randrange(1, 4000) if rng.random() < 0.6 else rng.getrandbits(64)
        ip, port = BASE6 + host, rng.choice([80, 8080, 53, 5353, 9100 + i])
        if (ip, port) not in seen:
            seen.add((ip, port))
            backends.append(Backend(len(backends) + 1, ip, port, f"backend6-{i + 1}"))
    ids = range(first_backend, len(backends) + 1)
    first_service = len(services) + 1
    mine = []  # this family's frontends
    keys = set()
    for name in sorted(rng.sample(range(40), rng.randrange(8, 17))):
        sid = len(services) + 1
        count = rng.choice([0, 1, 2, 3, 5]) if sid > first_service else 3
        cluster = tuple(sorted(rng.sample(ids, count)))
        local = tuple(sorted(rng.sample(cluster, rng.randrange(len(cluster) + 1))))
        serving = tuple(sorted(set(cluster) | set(rng.sample(ids, rng.randrange(3)))))
        services.append(Service(sid, f"ns/svc-{name}:p", cluster, local, serving,
                                rng.choice([0, 0, 0, 5, 100]), family=6))
        kind = rng.choice(FRONTEND_KINDS)
        ranges = ()
        if kind == "LoadBalancer" and rng.random() < 0.6:
            ranges = rng.choice([
                ((EXTERNAL6, 48), (BASE6, 64)),
                ((EXTERNAL6, 48), (BASE6, 64)),
                ((EXTERNAL6, 48),),
                ((address_from_text("2001:db8:c::5"), 128), (BASE6, 56)),
                ((address_from_text("10.244.0.0"), 16),),  # the other family: contains no client
            ])
        # NodePorts sometimes on the node's own IPv6 address (masquerade to it, replies to it).
        if kind == "NodePort" and rng.random() < 0.5:
            ip, number = rng.choice([NODE6, NODE6_OTHER]), 30000 + name
        else:
            ip, number = VIP6_BASE + name, rng.choice([80, 443, 53, 8080])
        proto = rng.choice(PROTOCOLS)
        entries = [(proto, sid)]
        if rng.random() < 0.3:
            entries.append((rng.choice([p for p in PROTOCOLS if p != proto]),
                            rng.randrange(first_service, sid + 1)))
        for proto, service in entries:
            if (ip, number, proto) not in keys:
                keys.add((ip, number, proto))
                mine.append(Frontend(ip, number, proto, service, kind, rng.random() < 0.4, ranges))
    frontends.extend(mine)
    return replace(
        node,
        primary_ip6=rng.choice([0, NODE6, NODE6]),
        local_ips=(*node.local_ips, NODE6, NODE6_OTHER, BASE6 + 7),
        pod_cidrs=(*node.pod_cidrs, *rng.choice([(), ((BASE6, 64),), ((BASE6, 48),)])),
        # Every other ClusterIP-ish address, and one with no frontend at all.
        service_ips=(*node.service_ips, *(f.ip for f in mine[::2] if f.ip >= VIP6_BASE),
                     VIP6_BASE + 0xFFFF),
        service_cidrs=(*node.service_cidrs, (VIP6_BASE, 112)) if node.service_cidrs else (),
    )


@dataclass
class FamilyView:
    """One IP family's part of the maps as its traffic sees it (ids stay those of the maps)."""

    maps: Maps
    family: int
    frontends: list[Frontend]
    backends: list[Backend]  # of this family, in id order

    @property
    def services(self) -> list[Service]:
        return self.maps.services

    @property
    def node(self) -> NodeView:
        return self.maps.node

    @property
    def masquerade_ip(self) -> int:
        return self.node.primary_ip if self.family == 4 else self.node.primary_ip6

    def backend(self, backend_id: int) -> Backend:
        return self.maps.backends[backend_id - 1]


def family_view(maps: Maps, family: int) -> FamilyView:
    return FamilyView(maps, family, [f for f in maps.frontends if family_of(f.ip) == family],
                      [b for b in maps.backends if family_of(b.ip) == family])


# --------------------------------------------------------------------------- shared by both families


def recent_flow(flows, rng: random.Random):
    """Mostly one of the last flows opened (still tracked, likely), sometimes any."""
    return flows[-rng.randrange(1, min(len(flows), 6) + 1)] if rng.random() < 0.7 else rng.choice(flows)


def _in_prefixes(address: int, prefixes) -> bool:
    for network, length in prefixes:
        if family_of(network) != family_of(address):
            continue
        shift = (128 if address >= IPV6 else 32) - length
        if address >> shift == network >> shift:
            return True
    return False


def guess_translation(view: FamilyView, flow, rng: random.Random):
    """(backend, reply destination) a flow probably got: the traffic cannot know for sure
    (affinity, Local sets, SNAT port walks, evictions), so guesses are sometimes wrong on
    purpose too. The reply destination is the node's address when masqueraded."""
    client, cport, fe = flow
    service = view.services[fe.service - 1]
    node = view.node
    candidates = service.backends
    if fe.local_policy and service.local_backends and rng.random() < 0.5:
        candidates = service.local_backends
    client_ip = address_from_text(client)
    if candidates and rng.random() < 0.85:
        backend_id = select_backend(candidates, client_ip, fe.ip, cport, fe.port, fe.proto)
    else:
        backend_id = view.backends[rng.randrange(len(view.backends))].id
    backend = view.backend(backend_id)
    from_pod = _in_prefixes(client_ip, node.pod_cidrs)
    if fe.kind == "ClusterIP":
        detect_local = any(family_of(network) == view.family for network, _ in node.pod_cidrs)
        masq = node.masquerade_all or (detect_local and not from_pod)
    else:
        masq = not fe.local_policy or (not from_pod and client_ip in node.local_ips)
    masq = masq or backend.ip == client_ip
    if rng.random() < 0.15:
        masq = not masq
    reply_dst = addr(view.masquerade_ip) if masq and view.masquerade_ip else client
    return backend, reply_dst


def next_port(port: int) -> int:
    return 1024 + (port - 1024 + 1) % 64512 if port >= 1024 else port + 1


def random_traffic(maps: Maps, rng: random.Random, count: int, linktype: int = 1, ipv6: bool = True):
    """(ts_ns, frame) pairs; time mostly advances, sometimes jumps past timeouts or steps back.
    `count` IPv4 packets (those of IPv4-only times), with `ipv6` and IPv6 frontends in the maps
    about IPV6_SHARE * count IPv6 packets interleaved."""
    rng6 = side_rng(rng, "ipv6 traffic")
    packets = ipv4_traffic(family_view(maps, 4), rng, count, linktype)
    view6 = family_view(maps, 6)
    if not ipv6 or not view6.frontends or not view6.backends:
        return packets
    return interleave(packets, ipv6_traffic(view6, rng6, int(count * IPV6_SHARE), linktype), rng6)


def interleave(first, second, rng: random.Random):
    """`first` ((ts, frame) pairs) with `second` ((time step, frame) pairs) spread in at random,
    each stream in its order. The second stream keeps its own clock running beside the first's:
    a packet of it is stamped with the last packet's time of the first plus its steps so far."""
    slots = sorted(rng.randrange(len(first) + 1) for _ in second)
    merged, offset, last, j = [], 0, first[0][0] if first else 1_700_000_000 * 10**9, 0
    for i in range(len(first) + 1):
        while j < len(second) and slots[j] == i:
            step, frame = second[j]
            offset += step
            merged.append((max(0, last + offset), frame))
            j += 1
        if i < len(first):
            merged.append(first[i])
            last = first[i][0]
    return merged


# --------------------------------------------------------------------------- IPv4 (scapy)


def l4(proto: int, sport: int, dport: int, rng: random.Random):
    if proto == PROTO_TCP:
        return TCP(sport=sport, dport=dport, flags=rng.choice(TCP_FLAGS), seq=rng.randrange(2**32))
    if proto == PROTO_SCTP:
        # scapy fills in the CRC32c; sometimes a wrong one (the rewrite recomputes it anyway).
        sctp = SCTP(sport=sport, dport=dport, tag=rng.randrange(2**32))
        if rng.random() < 0.1:
            sctp.chksum = rng.randrange(2**32)
        if rng.random() < 0.2:
            return sctp  # the common header alone
        return sctp / SCTPChunkData(tsn=rng.randrange(2**32), data=b"d" * rng.randrange(0, 30))
    udp = UDP(sport=sport, dport=dport)
    if rng.random() < 0.2:
        udp.chksum = 0  # "no checksum" must stay 0
    return udp


def datagram(src: str, dst: str, proto: int, sport: int, dport: int, rng: random.Random, **ip_fields):
    """An IPv4 packet of a flow with a payload; ip_fields go to the IP header (id, ttl, ...)."""
    return IP(src=src, dst=dst, **ip_fields) / l4(proto, sport, dport, rng) / Raw(b"p" * rng.randrange(0, 400))


def fragments_of(packet, rng: random.Random) -> list:
    """The fragments of `packet` in sending order: usually in order, sometimes reordered, with
    a duplicate, or without the first one (lost, or captured elsewhere)."""
    payload = len(packet[IP].payload)
    # Sometimes a first fragment too short for the transport header (DROP_TRUNCATED, remembered).
    size = rng.choice([8, 16, 24, 64, 128, 256]) if rng.random() < 0.2 else rng.choice([64, 128, 256, 512])
    size = max(size, (payload // 6 + 7) // 8 * 8)  # at most about 7 fragments
    parts = fragment(packet, fragsize=size)
    if len(parts) == 1:
        # The payload fits in one: send it as a first fragment anyway (MF set, nothing follows).
        parts[0][IP].flags |= 1
    return shuffled_fragments(parts, rng)


def shuffled_fragments(parts: list, rng: random.Random) -> list:
    """Usually in order, sometimes without the first, reordered or with a duplicate."""
    shape = rng.random()
    if shape < 0.1 and len(parts) > 1:
        parts = parts[1:]
    elif shape < 0.2:
        rng.shuffle(parts)
    elif shape < 0.25:
        parts.insert(rng.randrange(1, len(parts) + 1), parts[rng.randrange(len(parts))])
    return parts


def icmp_error(view: FamilyView, flows, rng: random.Random, flow=None):
    """An ICMP error (or sometimes another ICMP message) about an opened flow, as the backend,
    the client or a router on either side would send it. Backends and SNAT ports are guessed
    (the traffic does not know which backend a flow got): some errors match, others do not."""
    flow = flow or recent_flow(flows, rng)
    client, cport, fe = flow
    router = rng.choice(["172.16.0.1", "10.244.0.1", "192.168.1.1"])
    if rng.random() < 0.6:
        # From the backend side, about a translated forward packet (client or SNAT -> backend).
        backend, reply_dst = guess_translation(view, flow, rng)
        snat_port = cport if rng.random() < 0.9 else next_port(cport)
        quoted = datagram(reply_dst, addr(backend.ip), fe.proto, snat_port, backend.port, rng, ttl=rng.randrange(1, 64))
        outer_src, outer_dst = (addr(backend.ip) if rng.random() < 0.7 else router), reply_dst
    else:
        # From the client side, about a reply as the client saw it (frontend -> client).
        quoted = datagram(addr(fe.ip), client, fe.proto, fe.port, cport, rng)
        outer_src, outer_dst = (client if rng.random() < 0.8 else router), addr(fe.ip)
    if rng.random() < 0.05:
        quoted[IP].frag = rng.choice([1, 100])  # a later fragment: nothing to look up
    if rng.random() < 0.05:
        quoted[IP].options = b"\x01" * 4  # quoted IHL 6
    data = bytes(quoted)
    cut = rng.choice([len(data), len(data), 548, 28, 28, 40, 24, 23, 20, 12, rng.randrange(len(data) + 1)])
    icmp_type, code = rng.choice([(3, 3), (3, 3), (3, 1), (3, 4), (3, 13), (11, 0), (11, 1), (12, 0),
                                   (8, 0), (0, 0), (5, 1), (4, 0)])
    return IP(src=outer_src, dst=outer_dst) / ICMP(type=icmp_type, code=code) / Raw(data[:cut])


def frame(ip_packet, rng: random.Random, linktype: int) -> bytes:
    if linktype == 1:
        tags = rng.choice([0, 0, 0, 1, 2])
        outer = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        if tags == 1:
            return bytes(outer / Dot1Q(vlan=rng.randrange(1, 4095)) / ip_packet)
        if tags == 2:
            return bytes(outer / Dot1AD(vlan=10) / Dot1Q(vlan=20) / ip_packet)
        return bytes(outer / ip_packet)
    if linktype == 113:
        return bytes(CookedLinux(pkttype=0, proto=0x0800) / ip_packet)
    if linktype == 0:
        return struct.pack("<I", 2) + bytes(ip_packet)
    return bytes(ip_packet)


def corrupt(data: bytes, rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return data[: rng.randrange(len(data) + 1)]
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf)


def ipv4_traffic(view: FamilyView, rng: random.Random, count: int, linktype: int):
    """The IPv4 traffic: (ts_ns, frame) pairs."""
    clients = [f"10.244.{rng.randrange(12)}.{rng.randrange(1, 250)}" for _ in range(30)]
    clients += ["192.168.1.10", "203.0.113.9", addr(rng.choice(view.backends).ip)]
    flows = []  # (client, client port, frontend) of flows opened so far
    pending = []  # fragments still to send, interleaved with other traffic
    answer = None  # an ICMP error answering the packet just sent, sent right after it
    ts = 1_700_000_000 * 10**9
    packets = []
    for _ in range(count):
        if answer is not None:
            ts += 20_000
            packets.append((ts, frame(answer, rng, linktype)))
            answer = None
            continue
        ts += rng.choice([1_000, 50_000, 2_000_000, 11 * 10**9, 61 * 10**9]) if rng.random() < 0.98 else -5 * 10**9
        if pending and rng.random() < 0.35:
            packets.append((ts, frame(pending.pop(0), rng, linktype)))
            continue
        kind = rng.random()
        if kind < 0.4 or not flows:
            fe = rng.choice(view.frontends)
            # A few popular source ports make masqueraded flows collide on the SNAT tuple.
            port = rng.choice([rng.randrange(1024, 65536), 40000, 40001, 80])
            flow = (rng.choice(clients), port, fe)
            if rng.random() < 0.5 or not flows:
                flows.append(flow)
            else:
                flow = rng.choice(flows)
            client, cport, fe = flow
            pkt = IP(src=client, dst=addr(fe.ip)) / l4(fe.proto, cport, fe.port, rng)
            if rng.random() < 0.12:
                answer = icmp_error(view, flows, rng, flow)
        elif kind < 0.64:
            client, cport, fe = rng.choice(flows)
            service = view.services[fe.service - 1]
            if service.backends:
                backend = view.backend(rng.choice(service.backends))
                src, sport = addr(backend.ip), backend.port
            else:
                src, sport = addr(fe.ip), fe.port
            # Replies go to the client, or to the node's address when the flow was masqueraded.
            dst = client if rng.random() < 0.7 or not view.node.primary_ip else addr(view.node.primary_ip)
            pkt = IP(src=src, dst=dst) / l4(fe.proto, sport, cport, rng)
        elif kind < 0.72:
            # A fragmented datagram: a flow's packet, its reply, one to a service address on a
            # port nobody serves, or one going elsewhere. Its first fragment now, the rest later.
            flow = recent_flow(flows, rng)
            client, cport, fe = flow
            shape = rng.random()
            if shape < 0.45:
                src, dst, proto, sport, dport = client, addr(fe.ip), fe.proto, cport, fe.port
            elif shape < 0.75:
                backend, dst = guess_translation(view, flow, rng)
                src, proto, sport, dport = addr(backend.ip), fe.proto, backend.port, cport
            elif shape < 0.85:
                src, dst, proto, sport, dport = client, addr(fe.ip), rng.choice(PROTOCOLS), cport, 1
            else:
                src, dst, proto, sport, dport = client, "8.8.8.8", rng.choice(PROTOCOLS), cport, 53
            whole = datagram(src, dst, proto, sport, dport, rng, id=rng.randrange(65536))
            parts = fragments_of(whole, rng)
            pkt = parts[0]
            pending.extend(parts[1:])
        elif kind < 0.8:
            pkt = icmp_error(view, flows, rng)
        elif kind < 0.87:
            pkt = rng.choice([
                IP(src=rng.choice(clients), dst="8.8.8.8") / UDP(sport=5000, dport=53),
                IP(src=rng.choice(clients), dst="10.96.0.1") / ICMP(),
                IP(src=rng.choice(clients), dst="10.96.0.3", flags="MF") / UDP(sport=1, dport=2),
                IP(src=rng.choice(clients), dst="10.96.0.3", frag=4) / SCTP(sport=1, dport=2),
                IP(src=rng.choice(clients), dst=addr(rng.choice(view.frontends).ip), frag=rng.randrange(1, 8192),
                   id=rng.randrange(65536), proto=rng.choice([1, 6, 17, 47, 132])),
                IP(src=rng.choice(clients), dst=addr(rng.choice(view.frontends).ip)) / ICMP(type=3, code=3),
                IPv6(src="fd00::1", dst="fd00::2") / TCP(),
                IP(src=rng.choice(clients), dst=addr(rng.choice(view.frontends).ip)) / TCP(dport=1),
            ])
        else:
            fe = rng.choice(view.frontends)
            pkt = IP(src=rng.choice(clients), dst=addr(fe.ip), ihl=rng.choice([5, 6, 4])) / l4(fe.proto, 1234, fe.port, rng)
        if not (0.64 <= kind < 0.8):
            pkt = pkt / Raw(b"x" * rng.randrange(0, 40))
        data = frame(pkt, rng, linktype)
        if kind < 0.64 and SCTP in pkt and rng.random() < 0.25:
            # A snaplen cut inside the SCTP packet but after its common header: translated, with
            # the old CRC kept.
            beyond_header = len(pkt[SCTP]) - 12
            if beyond_header > 0:
                data = data[: len(data) - rng.randrange(1, beyond_header + 1)]
        if 0.72 <= kind < 0.8 and rng.random() < 0.05:
            data = data[: len(data) - len(pkt[IP].payload) + rng.randrange(8)]  # ICMP header cut
        if kind >= 0.9:
            data = corrupt(data, rng)
        if linktype == 1 and rng.random() < 0.01:
            data = bytes(Ether() / ARP())
        packets.append((ts, data))
    return packets


# --------------------------------------------------------------------------- IPv6 (struct)

ICMPV6 = 58
HOP_BY_HOP, ROUTING, FRAGMENT, AH, DEST_OPTS = 0, 43, 44, 51, 60


def packed(address: int) -> bytes:
    """16 bytes of an IPv6 map address (or of an IPv4 one as ::a.b.c.d, for malformed packets)."""
    return (address & (IPV6 - 1)).to_bytes(16, "big")


def upper_layer(src: int, dst: int, proto: int, sport: int, dport: int, rng: random.Random,
                payload: bytes = b"", flags: int | None = None) -> bytes:
    """A TCP, UDP or SCTP packet with its checksum (TCP/UDP over the IPv6 pseudo-header)."""
    if proto == PROTO_SCTP:
        chunk = b""
        if rng.random() < 0.8:
            data = b"d" * rng.randrange(0, 30)
            chunk = struct.pack("!BBHIHHI", 0, 3, 16 + len(data), rng.getrandbits(32), 0, 0, 0) + data
            chunk += b"\0" * (-len(chunk) % 4)
        body = struct.pack("!HHII", sport, dport, rng.getrandbits(32), 0) + chunk + payload
        crc = scapy_crc32c(body) if rng.random() < 0.9 else rng.getrandbits(32)  # sometimes wrong
        return body[:8] + struct.pack("!I", crc) + body[12:]  # (scapy's value is byte-swapped)
    if proto == PROTO_TCP:
        if flags is None:
            flags = rng.choice([0x02, 0x02, 0x10, 0x18, 0x18, 0x11, 0x04, 0x12, 0x01, 0x14])
        segment = struct.pack("!HHIIBBHHH", sport, dport, rng.getrandbits(32), 0, 5 << 4, flags, 8192, 0, 0)
        segment += payload
        position = 16
    else:
        segment = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        position = 6
    pseudo = packed(src) + packed(dst) + struct.pack("!IxxxB", len(segment), proto)
    checksum = internet_checksum(pseudo + segment) or (0xFFFF if proto == PROTO_UDP else 0)
    return segment[:position] + struct.pack("!H", checksum) + segment[position + 2:]


def icmpv6_message(src: int, dst: int, icmp_type: int, code: int, body: bytes, rest: int = 0) -> bytes:
    message = struct.pack("!BBHI", icmp_type, code, 0, rest) + body
    pseudo = packed(src) + packed(dst) + struct.pack("!IxxxB", len(message), ICMPV6)
    return message[:2] + struct.pack("!H", internet_checksum(pseudo + message)) + message[4:]


def extension_header(kind: int, next_header: int, rng: random.Random) -> bytes:
    """One extension header (an atomic fragment for FRAGMENT; routing with no segment left)."""
    if kind == FRAGMENT:
        return struct.pack("!BBHI", next_header, 0, 0, rng.getrandbits(32))
    if kind == AH:
        return struct.pack("!BBHII", next_header, 4, 0, rng.getrandbits(32), rng.getrandbits(32)) + bytes(12)
    units = rng.choice([0, 0, 1, 2])
    if kind == ROUTING:
        return struct.pack("!BBBB", next_header, 2 * units, 0, 0) + bytes(4 + 16 * units)
    return struct.pack("!BB", next_header, units) + bytes(6 + 8 * units)  # Pad1 options


def chain(kinds: list[int], last: int, rng: random.Random) -> tuple[int, bytes]:
    """(first next header, bytes) of extension headers of `kinds` in order, ending in `last`."""
    data, next_header = b"", last
    for kind in reversed(kinds):
        data = extension_header(kind, next_header, rng) + data
        next_header = kind
    return next_header, data


def ipv6_packet(src: int, dst: int, next_header: int, payload: bytes, hop_limit: int = 64) -> bytes:
    flow = struct.pack("!I", (6 << 28) | (0x1F << 20) | 0xBEEF)
    return flow + struct.pack("!HBB", len(payload), next_header, hop_limit) + packed(src) + packed(dst) + payload


def random_chain(rng: random.Random) -> list[int]:
    """Usually no extension header; sometimes a few of any kind (at most one fragment header)."""
    if rng.random() < 0.8:
        return []
    kinds = [rng.choice([HOP_BY_HOP, DEST_OPTS, ROUTING, AH, FRAGMENT]) for _ in range(rng.randrange(1, 4))]
    while kinds.count(FRAGMENT) > 1:
        kinds.remove(FRAGMENT)
    return kinds


def ipv6_datagram(src: int, dst: int, proto: int, sport: int, dport: int, rng: random.Random,
                  kinds: list[int] | None = None, payload: bytes | None = None) -> bytes:
    """An IPv6 packet of a flow, through extension headers of `kinds` (random when None)."""
    if payload is None:
        payload = b"p" * rng.randrange(0, 300)
    first, headers = chain(random_chain(rng) if kinds is None else kinds, proto, rng)
    return ipv6_packet(src, dst, first, headers + upper_layer(src, dst, proto, sport, dport, rng, payload))


def ipv6_fragments(src: int, dst: int, proto: int, sport: int, dport: int, rng: random.Random) -> list[bytes]:
    """A datagram cut into fragments: unfragmentable headers (hop-by-hop, routing) before the
    fragment header, sometimes destination options after it (then the key's protocol is 60)."""
    before = rng.choice([[], [], [HOP_BY_HOP], [HOP_BY_HOP, ROUTING]])
    after = [DEST_OPTS] if rng.random() < 0.25 else []
    first_after, fragmentable = chain(after, proto, rng)
    fragmentable += upper_layer(src, dst, proto, sport, dport, rng, b"f" * rng.randrange(0, 600))
    ident = rng.getrandbits(32) if rng.random() < 0.8 else rng.randrange(65536)
    size = rng.choice([8, 16, 64, 128, 256, 512]) if rng.random() < 0.3 else rng.choice([256, 512, 1024])
    size = max(size, (len(fragmentable) // 6 + 7) // 8 * 8)  # at most about 7 fragments
    parts = []
    for offset in range(0, len(fragmentable), size):
        piece = fragmentable[offset: offset + size]
        more = offset + size < len(fragmentable) or (offset == 0 and rng.random() < 0.5)
        fragment_header = struct.pack("!BBHI", first_after, 0, (offset // 8) << 3 | more, ident)
        first, unfragmentable = chain(before, FRAGMENT, rng)
        parts.append(ipv6_packet(src, dst, first, unfragmentable + fragment_header + piece))
    return shuffled_fragments(parts, rng)


def frame6(ip_bytes: bytes, rng: random.Random, linktype: int) -> bytes:
    """A link-layer frame around an IP packet (struct-built; the version nibble picks the
    ethertype, 6 unless the packet is plainly IPv4)."""
    ipv4 = bool(ip_bytes) and ip_bytes[0] >> 4 == 4 and rng.random() < 0.9
    ethertype = 0x0800 if ipv4 else 0x86DD
    if linktype == 1:
        tags = rng.choice([b"", b"", b"", struct.pack("!HH", 0x8100, rng.randrange(1, 4095)),
                           struct.pack("!HHHH", 0x88A8, 10, 0x8100, 20)])
        return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + tags + struct.pack("!H", ethertype) + ip_bytes
    if linktype == 113:
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01", ethertype) + ip_bytes
    if linktype == 0:
        family = 2 if ipv4 else rng.choice([24, 28, 30])
        return struct.pack(rng.choice(["<I", ">I"]), family) + ip_bytes
    return ip_bytes


def _with(data: bytes, position: int, value: bytes) -> bytes:
    return data[:position] + value + data[position + len(value):]


def malformed_ipv6(view: FamilyView, clients: list[int], rng: random.Random) -> bytes:
    """An IPv6 packet wrong at some layer."""
    fe = rng.choice(view.frontends)
    client = rng.choice(clients)
    good = ipv6_datagram(client, fe.ip, fe.proto, 4321, fe.port, rng)
    shape = rng.randrange(10)
    if shape == 0:
        return good[: rng.randrange(40)]  # inside the fixed header
    if shape == 1:
        return _with(good, 0, bytes([rng.choice([0x40, 0x00, 0x70, 0xF0])]))  # bad version
    if shape == 2:
        mapped = address_from_text("::ffff:10.96.0.1")
        return ipv6_datagram(mapped, fe.ip, fe.proto, 1, fe.port, rng) if rng.random() < 0.5 else (
            ipv6_datagram(client, mapped, fe.proto, 1, fe.port, rng))
    if shape == 3:
        udp = ipv6_datagram(client, fe.ip, PROTO_UDP, 4321, fe.port, rng, kinds=[])
        return _with(udp, 46, b"\0\0")  # no UDP checksum: not allowed over IPv6
    if shape == 4:
        # Cut inside the extension headers or the transport header.
        chained = ipv6_datagram(client, fe.ip, fe.proto, 4321, fe.port, rng, kinds=[HOP_BY_HOP, DEST_OPTS])
        return chained[: rng.randrange(40, min(len(chained), 100))]
    if shape == 5:
        return _with(good, 4, struct.pack("!H", rng.randrange(0, 24)))  # payload length too short
    if shape == 6:
        # An extension header longer than the datagram, or a second fragment header.
        if rng.random() < 0.5:
            first, headers = chain([HOP_BY_HOP], fe.proto, rng)
            headers = _with(headers, 1, bytes([rng.randrange(3, 256)]))
        else:
            first, headers = chain([FRAGMENT, DEST_OPTS, FRAGMENT], fe.proto, rng)
        return ipv6_packet(client, fe.ip, first, headers + upper_layer(client, fe.ip, fe.proto, 1, fe.port, rng))
    if shape == 7:
        # Nine extension headers (the eighth a fragment header sometimes).
        kinds = [DEST_OPTS] * 7 + [rng.choice([DEST_OPTS, FRAGMENT]), HOP_BY_HOP]
        return ipv6_datagram(client, fe.ip, fe.proto, 4321, fe.port, rng, kinds=kinds)
    if shape == 8:
        data = bytearray(good)  # random damage past the fixed header
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(min(len(data), 40), len(data)) if len(data) > 40 else 0] = rng.randrange(256)
        return bytes(data)
    tcp = ipv6_datagram(client, fe.ip, PROTO_TCP, 4321, fe.port, rng, kinds=[])
    return _with(tcp, 52, bytes([rng.choice([0x00, 0x40, 0xF0])]))  # TCP data offset


def icmpv6_error(view: FamilyView, flows, clients: list[int], rng: random.Random, flow=None) -> bytes:
    """An ICMPv6 error (or another ICMPv6 message) about an opened IPv6 flow, from the backend,
    the client or a router; sometimes quoting an IPv4 packet, sometimes an ICMPv4 error quoting
    an IPv6 packet (an IPv4 packet, framed as such)."""
    flow = flow or recent_flow(flows, rng)
    client, cport, fe = flow
    router = rng.choice([address_from_text("fd00:244::1"), address_from_text("2001:db8::1")])
    if rng.random() < 0.6:
        backend, reply_dst = guess_translation(view, flow, rng)
        reply_dst = address_from_text(reply_dst)
        sport = cport if rng.random() < 0.9 else next_port(cport)
        quoted = ipv6_datagram(reply_dst, backend.ip, fe.proto, sport, backend.port, rng)
        outer_src, outer_dst = (backend.ip if rng.random() < 0.7 else router), reply_dst
    else:
        client_ip = address_from_text(client)
        quoted = ipv6_datagram(fe.ip, client_ip, fe.proto, fe.port, cport, rng)
        outer_src, outer_dst = (client_ip if rng.random() < 0.8 else router), fe.ip
    if rng.random() < 0.05:
        quoted = ipv6_fragments(outer_dst, outer_src, fe.proto, cport, fe.port, rng)[-1]  # maybe a later one
    if rng.random() < 0.04:
        # An ICMPv4 error quoting this IPv6 packet: never translated.
        return bytes(IP(src="10.244.0.1", dst="10.244.0.2") / ICMP(type=3, code=3) / Raw(quoted[:548]))
    if rng.random() < 0.04:
        quoted = bytes(IP(src="10.244.0.2", dst="10.96.0.1") / UDP(sport=cport, dport=fe.port))  # IPv4 inside
    cut = rng.choice([len(quoted), len(quoted), 1232, 48, 48, 44, 60, 43, 40, 24, rng.randrange(len(quoted) + 1)])
    icmp_type, code = rng.choice([(1, 4), (1, 4), (1, 0), (1, 3), (2, 0), (3, 0), (3, 1), (4, 0),
                                   (128, 0), (129, 0), (11, 0), (135, 0)])
    rest = 1280 if icmp_type == 2 else (rng.randrange(64) if icmp_type == 4 else 0)
    return ipv6_packet(outer_src, outer_dst, ICMPV6, icmpv6_message(outer_src, outer_dst, icmp_type, code,
                                                                    quoted[:cut], rest))


def ipv6_traffic(view: FamilyView, rng: random.Random, count: int, linktype: int):
    """The IPv6 traffic: (time step in ns, frame) pairs (see interleave)."""
    clients = [BASE6 + rng.randrange(1, 4000) for _ in range(12)]  # pods (when the pod CIDR is)
    clients += [EXTERNAL6 + rng.randrange(1, 300) for _ in range(4)] + [FAR6 + rng.randrange(1, 9) for _ in range(3)]
    clients += [NODE6, NODE6_OTHER, rng.choice(view.backends).ip]  # the node itself; a hairpin
    flows = []  # (client text, client port, frontend), as for IPv4
    pending = []  # later fragments still to send
    answer = None
    packets = []
    for _ in range(count):
        if answer is not None:
            packets.append((20_000, frame6(answer, rng, linktype)))
            answer = None
            continue
        step = rng.choice([1_000, 50_000, 2_000_000, 11 * 10**9, 61 * 10**9]) if rng.random() < 0.98 else -5 * 10**9
        if pending and rng.random() < 0.35:
            packets.append((step, frame6(pending.pop(0), rng, linktype)))
            continue
        kind = rng.random()
        if kind < 0.34 or not flows:
            fe = rng.choice(view.frontends)
            flow = (addr(rng.choice(clients)), rng.choice([rng.randrange(1024, 65536), 40000, 40001, 80]), fe)
            if rng.random() < 0.5 or not flows:
                flows.append(flow)
            else:
                flow = rng.choice(flows)
            client, cport, fe = flow
            data = ipv6_datagram(address_from_text(client), fe.ip, fe.proto, cport, fe.port, rng)
            if rng.random() < 0.12:
                answer = icmpv6_error(view, flows, clients, rng, flow)
        elif kind < 0.56:
            # A reply: to the client, or to the node's address when the flow was masqueraded.
            flow = rng.choice(flows) if rng.random() < 0.5 else recent_flow(flows, rng)
            client, cport, fe = flow
            service = view.services[fe.service - 1]
            if rng.random() < 0.7:
                backend, dst = guess_translation(view, flow, rng)
            else:
                backend = view.backend(rng.choice(service.backends or [b.id for b in view.backends]))
                dst = addr(view.masquerade_ip) if view.masquerade_ip and rng.random() < 0.35 else client
            dport = cport if rng.random() < 0.9 else next_port(cport)
            data = ipv6_datagram(backend.ip, address_from_text(dst), fe.proto, backend.port, dport, rng)
        elif kind < 0.66:
            # A fragmented datagram (as for IPv4): its first fragment now, the rest later.
            flow = recent_flow(flows, rng)
            client, cport, fe = flow
            shape = rng.random()
            if shape < 0.45:
                src, dst, proto, sport, dport = address_from_text(client), fe.ip, fe.proto, cport, fe.port
            elif shape < 0.75:
                backend, reply_dst = guess_translation(view, flow, rng)
                src, dst, proto, sport, dport = backend.ip, address_from_text(reply_dst), fe.proto, backend.port, cport
            elif shape < 0.85:
                src, dst, proto, sport, dport = address_from_text(client), fe.ip, rng.choice(PROTOCOLS), cport, 1
            else:
                src, dst, proto, sport, dport = address_from_text(client), address_from_text("2001:db8::53"), \
                    rng.choice(PROTOCOLS), cport, 53
            parts = ipv6_fragments(src, dst, proto, sport, dport, rng)
            data = parts[0]
            pending.extend(parts[1:])
        elif kind < 0.76:
            data = icmpv6_error(view, flows, clients, rng)
        elif kind < 0.82:
            client, fe = rng.choice(clients), rng.choice(view.frontends)
            data = rng.choice([
                lambda: ipv6_datagram(client, address_from_text("2001:db8::53"), PROTO_UDP, 5000, 53, rng),
                lambda: ipv6_packet(client, fe.ip, ICMPV6, icmpv6_message(client, fe.ip, 128, 0, b"ping")),
                lambda: ipv6_packet(client, fe.ip, ICMPV6, icmpv6_message(client, fe.ip, 135, 0, packed(fe.ip))),
                lambda: ipv6_packet(client, fe.ip, 1, bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())[20:]),
                lambda: ipv6_packet(client, fe.ip, rng.choice([59, 47, 50]), b"\0" * 16),
                # A later fragment with no first one, to a service address or elsewhere.
                lambda: ipv6_packet(client, rng.choice([fe.ip, address_from_text("2001:db8::53")]), FRAGMENT,
                                    struct.pack("!BBHI", fe.proto, 0, 8 << 3, rng.getrandbits(32)) + bytes(32)),
                # A service address on a port nobody serves; an unallocated service address.
                lambda: ipv6_datagram(client, fe.ip, fe.proto, 4000, 1, rng),
                lambda: ipv6_datagram(client, VIP6_BASE + 0xFFFF, PROTO_TCP, 4000, 80, rng),
            ])()
        else:
            data = malformed_ipv6(view, clients, rng)
        if kind < 0.56 and len(data) > 52 and data[6] == PROTO_SCTP and rng.random() < 0.25:
            data = data[: rng.randrange(52, len(data))]  # a snaplen cut after the SCTP common header
        data = frame6(data, rng, linktype)
        if linktype == 1 and rng.random() < 0.01:
            data = data[:12] + b"\x86\xdd"  # nothing after the ethertype
        packets.append((step, data))
    return packets

"""Generated traffic for differential tests: a random but reproducible mix of service flows
(TCP, UDP and SCTP, some SCTP packets cut by the snaplen), replies, unrelated packets and
malformed frames, over several link types."""
from __future__ import annotations

import ipaddress
import random
import struct

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkData
from scapy.packet import Raw

from fastpath.maps import (
    FRONTEND_KINDS,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    Backend,
    Frontend,
    Maps,
    NodeView,
    Service,
)

PROTOCOLS = [PROTO_TCP, PROTO_UDP, PROTO_SCTP]

TCP_FLAGS = ["S", "S", "A", "PA", "PA", "FA", "R", "SA", "F", "RA"]


def addr(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def random_maps(rng: random.Random, n_services: int = 24, n_backends: int = 40) -> Maps:
    """Maps exercising every routing input: kinds, Local policies, source ranges, affinity,
    node addresses, pod CIDRs. Service names are drawn from a small pool, so two calls share
    some names (load() maps ids by name)."""
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
    return Maps(services=services, frontends=frontends, backends=backends, node=node)


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


def random_traffic(maps: Maps, rng: random.Random, count: int, linktype: int = 1):
    """(ts_ns, frame) pairs; time mostly advances, sometimes jumps past timeouts or steps back."""
    clients = [f"10.244.{rng.randrange(12)}.{rng.randrange(1, 250)}" for _ in range(30)]
    clients += ["192.168.1.10", "203.0.113.9", addr(rng.choice(maps.backends).ip)]
    flows = []  # (client, client port, frontend) of flows opened so far
    ts = 1_700_000_000 * 10**9
    packets = []
    for _ in range(count):
        ts += rng.choice([1_000, 50_000, 2_000_000, 11 * 10**9, 61 * 10**9]) if rng.random() < 0.98 else -5 * 10**9
        kind = rng.random()
        if kind < 0.45 or not flows:
            fe = rng.choice(maps.frontends)
            # A few popular source ports make masqueraded flows collide on the SNAT tuple.
            port = rng.choice([rng.randrange(1024, 65536), 40000, 40001, 80])
            flow = (rng.choice(clients), port, fe)
            if rng.random() < 0.5 or not flows:
                flows.append(flow)
            else:
                flow = rng.choice(flows)
            client, cport, fe = flow
            pkt = IP(src=client, dst=addr(fe.ip)) / l4(fe.proto, cport, fe.port, rng)
        elif kind < 0.75:
            client, cport, fe = rng.choice(flows)
            service = maps.services[fe.service - 1]
            if service.backends:
                backend = maps.backends[rng.choice(service.backends) - 1]
                src, sport = addr(backend.ip), backend.port
            else:
                src, sport = addr(fe.ip), fe.port
            # Replies go to the client, or to the node's address when the flow was masqueraded.
            dst = client if rng.random() < 0.7 or not maps.node.primary_ip else addr(maps.node.primary_ip)
            pkt = IP(src=src, dst=dst) / l4(fe.proto, sport, cport, rng)
        elif kind < 0.85:
            pkt = rng.choice([
                IP(src=rng.choice(clients), dst="8.8.8.8") / UDP(sport=5000, dport=53),
                IP(src=rng.choice(clients), dst="10.96.0.1") / ICMP(),
                IP(src=rng.choice(clients), dst="10.96.0.3", flags="MF") / UDP(sport=1, dport=2),
                IP(src=rng.choice(clients), dst="10.96.0.3", frag=4) / SCTP(sport=1, dport=2),
                IPv6(src="fd00::1", dst="fd00::2") / TCP(),
                IP(src=rng.choice(clients), dst=addr(rng.choice(maps.frontends).ip)) / TCP(dport=1),
            ])
        else:
            fe = rng.choice(maps.frontends)
            pkt = IP(src=rng.choice(clients), dst=addr(fe.ip), ihl=rng.choice([5, 6, 4])) / l4(fe.proto, 1234, fe.port, rng)
        pkt = pkt / Raw(b"x" * rng.randrange(0, 40))
        data = frame(pkt, rng, linktype)
        if kind < 0.75 and SCTP in pkt and rng.random() < 0.25:
            # A snaplen cut inside the SCTP packet but after its common header: translated, with
            # the old CRC kept.
            beyond_header = len(pkt[SCTP]) - 12
            if beyond_header > 0:
                data = data[: len(data) - rng.randrange(1, beyond_header + 1)]
        if kind >= 0.9:
            data = corrupt(data, rng)
        if linktype == 1 and rng.random() < 0.01:
            data = bytes(Ether() / ARP())
        packets.append((ts, data))
    return packets

"""Generated traffic for differential tests: a random but reproducible mix of service flows
(TCP, UDP and SCTP, some SCTP packets cut by the snaplen), replies, fragmented datagrams (first
fragments followed by their later ones, interleaved with other traffic, sometimes reordered or
without their first fragment), ICMP errors about flows from either side (quotes cut at various
lengths, from endpoints and from routers, masqueraded or not), other ICMP, unrelated packets and
malformed frames, over several link types."""
from __future__ import annotations

import ipaddress
import random
import struct

from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
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
from fastpath.reference import select_backend

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
    shape = rng.random()
    if shape < 0.1 and len(parts) > 1:
        parts = parts[1:]
    elif shape < 0.2:
        rng.shuffle(parts)
    elif shape < 0.25:
        parts.insert(rng.randrange(1, len(parts) + 1), parts[rng.randrange(len(parts))])
    return parts


def recent_flow(flows, rng: random.Random):
    """Mostly one of the last flows opened (still tracked, likely), sometimes any."""
    return flows[-rng.randrange(1, min(len(flows), 6) + 1)] if rng.random() < 0.7 else rng.choice(flows)


def guess_translation(maps: Maps, flow, rng: random.Random):
    """(backend, reply destination) a flow probably got: the traffic cannot know for sure
    (affinity, Local sets, SNAT port walks, evictions), so guesses are sometimes wrong on
    purpose too. The reply destination is the node's address when masqueraded."""
    client, cport, fe = flow
    service = maps.services[fe.service - 1]
    node = maps.node
    candidates = service.backends
    if fe.local_policy and service.local_backends and rng.random() < 0.5:
        candidates = service.local_backends
    if candidates and rng.random() < 0.85:
        backend_id = select_backend(candidates, int(ipaddress.IPv4Address(client)), fe.ip, cport, fe.port, fe.proto)
    else:
        backend_id = rng.randrange(len(maps.backends)) + 1
    backend = maps.backends[backend_id - 1]
    client_ip = int(ipaddress.IPv4Address(client))
    from_pod = any(client_ip >> (32 - n) == net >> (32 - n) if n else True for net, n in node.pod_cidrs)
    if fe.kind == "ClusterIP":
        masq = node.masquerade_all or (bool(node.pod_cidrs) and not from_pod)
    else:
        masq = not fe.local_policy or (not from_pod and client_ip in node.local_ips)
    masq = masq or backend.ip == client_ip
    if rng.random() < 0.15:
        masq = not masq
    reply_dst = addr(node.primary_ip) if masq and node.primary_ip else client
    return backend, reply_dst


def icmp_error(maps: Maps, flows, rng: random.Random, flow=None):
    """An ICMP error (or sometimes another ICMP message) about an opened flow, as the backend,
    the client or a router on either side would send it. Backends and SNAT ports are guessed
    (the traffic does not know which backend a flow got): some errors match, others do not."""
    flow = flow or recent_flow(flows, rng)
    client, cport, fe = flow
    router = rng.choice(["172.16.0.1", "10.244.0.1", "192.168.1.1"])
    if rng.random() < 0.6:
        # From the backend side, about a translated forward packet (client or SNAT -> backend).
        backend, reply_dst = guess_translation(maps, flow, rng)
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


def next_port(port: int) -> int:
    return 1024 + (port - 1024 + 1) % 64512 if port >= 1024 else port + 1


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
            if rng.random() < 0.12:
                answer = icmp_error(maps, flows, rng, flow)
        elif kind < 0.64:
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
        elif kind < 0.72:
            # A fragmented datagram: a flow's packet, its reply, one to a service address on a
            # port nobody serves, or one going elsewhere. Its first fragment now, the rest later.
            flow = recent_flow(flows, rng)
            client, cport, fe = flow
            shape = rng.random()
            if shape < 0.45:
                src, dst, proto, sport, dport = client, addr(fe.ip), fe.proto, cport, fe.port
            elif shape < 0.75:
                backend, dst = guess_translation(maps, flow, rng)
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
            pkt = icmp_error(maps, flows, rng)
        elif kind < 0.87:
            pkt = rng.choice([
                IP(src=rng.choice(clients), dst="8.8.8.8") / UDP(sport=5000, dport=53),
                IP(src=rng.choice(clients), dst="10.96.0.1") / ICMP(),
                IP(src=rng.choice(clients), dst="10.96.0.3", flags="MF") / UDP(sport=1, dport=2),
                IP(src=rng.choice(clients), dst="10.96.0.3", frag=4) / SCTP(sport=1, dport=2),
                IP(src=rng.choice(clients), dst=addr(rng.choice(maps.frontends).ip), frag=rng.randrange(1, 8192),
                   id=rng.randrange(65536), proto=rng.choice([1, 6, 17, 47, 132])),
                IP(src=rng.choice(clients), dst=addr(rng.choice(maps.frontends).ip)) / ICMP(type=3, code=3),
                IPv6(src="fd00::1", dst="fd00::2") / TCP(),
                IP(src=rng.choice(clients), dst=addr(rng.choice(maps.frontends).ip)) / TCP(dport=1),
            ])
        else:
            fe = rng.choice(maps.frontends)
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

"""Named benchmark workloads: a Kubernetes cluster dump and a matching capture, made deterministically.

    python benchmarks/workload.py --out benchmarks/workloads/standard      # files (cached)
    python benchmarks/workload.py --workload small --out /tmp/small --verify 2000

As a module (the benchmark suites use these)::

    files = ensure_workload("standard")       # generate into benchmarks/workloads/standard, or reuse
    maps = workload_maps("standard")          # fastpath.maps.Maps, without the YAML compiler
    batch = workload_batch("standard")        # whole capture in memory, ready for Engine.process

What the "standard" workload holds
----------------------------------
cluster.yaml   `kind: List` shaped like `kubectl get svc,endpointslices -A -o yaml`: 1,000 ClusterIP
               Services in 20 namespaces, one port each (85 % TCP, 15 % UDP, named target ports),
               and per Service one discovery.k8s.io/v1 EndpointSlice (label
               kubernetes.io/service-name, port named like the Service port) with 10 ready
               endpoints on 64 nodes. 10,000 distinct backends.
capture.pcap   classic pcap, Ethernet, microsecond timestamps, exactly 1,000,000 IPv4 packets over
               30 s of capture time, ~250 bytes on average. 10,000 flows from 2,000 client pods:
               9,000 to a Service ClusterIP:port (TCP flows open with a SYN; half of the flows also
               carry the backend's replies, SYN-ACK first, which exercise the REVNAT path; half of
               the TCP flows end with FINs), 1,000 unrelated flows (pods talking to external
               addresses or directly to pod IPs: never a Service) carrying 10 % of the packets.
               Packet counts per flow are heavy-tailed. IP, TCP and UDP checksums are valid.
capture.index  offsets, lengths and timestamps of every packet (so loading skips the record scan)
meta.json      generator version, the spec, counts and a fingerprint of the backends the core
               chose for every Service flow.

Replies must come from the backend the dataplane picks for that flow. The generator asks the
compiled core (fastpath._core.Engine.process_packet on the flow's first packet, reading the
rewritten destination); without a built core it falls back to fastpath.reference.select_backend.
Cached files are reused only if the generator version and spec match and the core still picks
the same backends (re-checked on every use: ~0.5 s), so a change of the selection algorithm
regenerates the capture instead of silently turning replies into unrelated traffic.

Everything comes from `random.Random` instances seeded with strings (stable across runs and
Python versions); the files are byte-identical from one run to the next.
"""
from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import random
import struct
import sys
import time
import uuid
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

GENERATOR_VERSION = 1

HERE = Path(__file__).resolve().parent
WORKLOADS_DIR = HERE / "workloads"
_PYSRC = HERE.parent / "pysrc"

CLUSTER_FILE = "cluster.yaml"
CAPTURE_FILE = "capture.pcap"
INDEX_FILE = "capture.index"  # offsets, lengths and timestamps of every packet, for load_batch
META_FILE = "meta.json"

LINKTYPE_ETHERNET = 1
CAPTURE_EPOCH_S = 1714644000  # 2024-05-02T10:00:00Z
CAPTURE_EPOCH_US = CAPTURE_EPOCH_S * 1_000_000


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    services: int
    endpoints_per_service: int
    flows: int
    packets: int
    unrelated_fraction: float = 0.10  # of flows and of packets: traffic to no Service
    udp_service_fraction: float = 0.15
    reply_fraction: float = 0.5  # of the flows (TCP and UDP) whose replies are captured too
    close_fraction: float = 0.5  # of the TCP flows that end with FINs
    reply_share: float = 0.45  # of a replying flow's data packets that are replies
    namespaces: int = 20
    nodes: int = 64
    clients_per_flow: float = 0.2  # client pods = flows * this
    duration_s: int = 30
    seed: str = "fastpath-bench-1"


WORKLOADS: dict[str, WorkloadSpec] = {
    "standard": WorkloadSpec("standard", services=1000, endpoints_per_service=10, flows=10_000,
                             packets=1_000_000),
    # Same shape, a tenth of the size: for a quick run of the suites (`--workload small`).
    "small": WorkloadSpec("small", services=100, endpoints_per_service=10, flows=1_000,
                          packets=100_000),
}


# --------------------------------------------------------------------------- the cluster

TCP_PORTS = (  # (service port name, port, container port)
    ("http", 80, 8080), ("https", 443, 8443), ("http-alt", 8080, 8080), ("grpc", 9000, 9000),
    ("metrics", 9090, 9090), ("postgres", 5432, 5432), ("redis", 6379, 6379),
)
UDP_PORTS = (("dns", 53, 5353), ("statsd", 8125, 8125), ("syslog", 514, 5514))

_WORDS = ("api", "web", "auth", "cart", "search", "orders", "billing", "users", "media", "events",
          "geo", "mail", "queue", "cache", "report", "notify", "ledger", "stock", "price", "feed")
_ALNUM = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet of Kubernetes' generated name suffixes


class Endpoint(NamedTuple):
    ip: int
    node: int
    pod: str
    uid: str


class ServiceDef(NamedTuple):
    namespace: str
    name: str
    cluster_ip: int
    protocol: str  # "TCP" or "UDP"
    port_name: str
    port: int
    target_port: int
    uid: str
    slice_name: str
    slice_uid: str
    endpoints: tuple[Endpoint, ...]


class Cluster(NamedTuple):
    services: tuple[ServiceDef, ...]  # in the compiler's order: (namespace, name, port, protocol)
    clients: tuple[int, ...]  # client pod addresses


def _rng(spec: WorkloadSpec, part: str) -> random.Random:
    return random.Random(f"{spec.seed}:{spec.name}:{part}")


def _suffix(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_ALNUM) for _ in range(n))


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _dotted(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def _pod_ip(node: int, host: int) -> int:
    # Pod CIDR 10.244.0.0/16, one /24 per node, pods at .2-.251.
    return _ip("10.244.0.0") + (node << 8) + host


def plan_cluster(spec: WorkloadSpec) -> Cluster:
    """Services, their endpoints and the client pods; no file is written."""
    rng = _rng(spec, "cluster")
    n_clients = max(1, int(spec.flows * spec.clients_per_flow))
    pod_pool = [(node, host) for node in range(spec.nodes) for host in range(2, 252)]
    needed = spec.services * spec.endpoints_per_service + n_clients
    if needed > len(pod_pool):
        raise ValueError(f"{needed} pods do not fit on {spec.nodes} nodes")
    pods = rng.sample(pod_pool, needed)
    # The standard range (10.96.0.0/16) holds 65,525 ClusterIPs; larger clusters (the control-plane
    # benchmarks' 100,000 Services) take theirs from the whole default service CIDR, 10.96.0.0/12.
    last = _ip("10.96.255.255") if spec.services <= 60_000 else _ip("10.111.255.255")
    cluster_ips = rng.sample(range(_ip("10.96.0.11"), last), spec.services)
    n_udp = round(spec.services * spec.udp_service_fraction)
    udp = set(rng.sample(range(spec.services), n_udp))
    services = []
    for i in range(spec.services):
        namespace = f"bench-{i % spec.namespaces:02d}"
        name = f"{_WORDS[i % len(_WORDS)]}-{i:04d}"
        protocol = "UDP" if i in udp else "TCP"
        port_name, port, target = rng.choice(UDP_PORTS if protocol == "UDP" else TCP_PORTS)
        template = _suffix(rng, 10)
        endpoints = []
        for node, host in pods[i * spec.endpoints_per_service:(i + 1) * spec.endpoints_per_service]:
            endpoints.append(Endpoint(_pod_ip(node, host), node,
                                      f"{name}-{template}-{_suffix(rng, 5)}", _uid(rng)))
        endpoints.sort()
        services.append(ServiceDef(namespace, name, cluster_ips[i], protocol, port_name, port,
                                   target, _uid(rng), f"{name}-{_suffix(rng, 5)}", _uid(rng),
                                   tuple(endpoints)))
    services.sort(key=lambda s: (s.namespace, s.name, s.port_name, s.protocol))
    clients = tuple(_pod_ip(node, host) for node, host in pods[spec.services * spec.endpoints_per_service:])
    return Cluster(tuple(services), clients)


def cluster_maps(cluster: Cluster):
    """The Maps fastpath.compiler makes of this cluster (same ids, order and names), built directly."""
    from fastpath.maps import PROTOCOL_NUMBERS, Backend, Frontend, Maps, NodeView, Service

    owners = {}
    for service in cluster.services:
        for endpoint in service.endpoints:
            owners[(endpoint.ip, service.target_port)] = f"{service.namespace}/{endpoint.pod}"
    backend_ids = {key: i for i, key in enumerate(sorted(owners), start=1)}
    backends = [Backend(id=i, ip=ip, port=port, name=f"{_dotted(ip)}:{port} ({owners[(ip, port)]})")
                for (ip, port), i in backend_ids.items()]
    services, frontends = [], []
    for service_id, service in enumerate(cluster.services, start=1):
        ids = tuple(sorted(backend_ids[(e.ip, service.target_port)] for e in service.endpoints))
        # Every endpoint is ready, so the serving set (what tracked UDP flows may keep) is the
        # cluster set; the node view knows the ClusterIPs (a packet to one on a port no Service
        # has is rejected, as kube-proxy does).
        services.append(Service(id=service_id, name=f"{service.namespace}/{service.name}:{service.port_name}",
                                backends=ids, serving=ids))
        frontends.append(Frontend(ip=service.cluster_ip, port=service.port,
                                  proto=PROTOCOL_NUMBERS[service.protocol], service=service_id))
    node = NodeView(service_ips=tuple(sorted({s.cluster_ip for s in cluster.services})))
    return Maps(services=services, frontends=frontends, backends=backends, node=node)


def workload_maps(name: str = "standard"):
    """The Maps of a named workload (what compiling its cluster.yaml gives), without any file."""
    _ensure_importable()
    return cluster_maps(plan_cluster(WORKLOADS[name]))


def _timestamp(rng: random.Random, base: str = "2024-05-02T09:") -> str:
    return f"{base}{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"


def cluster_yaml(spec: WorkloadSpec, cluster: Cluster) -> str:
    """The cluster as `kubectl get svc,endpointslices -A -o yaml` prints it (keys sorted, kind: List)."""
    rng = _rng(spec, "yaml")
    out = [
        (f"# fastpath benchmark workload {spec.name!r}, generator version {GENERATOR_VERSION}:\n"
         f"# {spec.services} ClusterIP Services x {spec.endpoints_per_service} ready endpoints "
         f"(one EndpointSlice each). Generated by benchmarks/workload.py; do not edit.\n"),
        "apiVersion: v1\nitems:\n",
    ]
    version = 1000
    for s in cluster.services:
        version += 1
        out.append(
            f"""- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "{_timestamp(rng, '2024-05-01T08:')}"
    labels:
      app: {s.name}
    name: {s.name}
    namespace: {s.namespace}
    resourceVersion: "{version}"
    uid: {s.uid}
  spec:
    clusterIP: {_dotted(s.cluster_ip)}
    clusterIPs:
    - {_dotted(s.cluster_ip)}
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: {s.port_name}
      port: {s.port}
      protocol: {s.protocol}
      targetPort: {s.port_name}
    selector:
      app: {s.name}
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {{}}
""")
    for s in cluster.services:
        version += 1
        out.append("- addressType: IPv4\n  apiVersion: discovery.k8s.io/v1\n  endpoints:\n")
        for e in s.endpoints:
            out.append(
                f"""  - addresses:
    - {_dotted(e.ip)}
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-{e.node:02d}
    targetRef:
      kind: Pod
      name: {e.pod}
      namespace: {s.namespace}
      uid: {e.uid}
    zone: zone-{"abc"[e.node % 3]}
""")
        stamp = _timestamp(rng)
        out.append(
            f"""  kind: EndpointSlice
  metadata:
    annotations:
      endpoints.kubernetes.io/last-change-trigger-time: "{stamp}"
    creationTimestamp: "{stamp}"
    generateName: {s.name}-
    generation: 1
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: {s.name}
    name: {s.slice_name}
    namespace: {s.namespace}
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: Service
      name: {s.name}
      uid: {s.uid}
    resourceVersion: "{version}"
    uid: {s.slice_uid}
  ports:
  - name: {s.port_name}
    port: {s.target_port}
    protocol: {s.protocol}
""")
    out.append('kind: List\nmetadata:\n  resourceVersion: ""\n')
    return "".join(out)


def cluster_objects(spec: WorkloadSpec, cluster: Cluster) -> list[dict]:
    """The objects of cluster_yaml() as already-decoded dicts (what ClusterState.from_objects takes):
    the same Services and EndpointSlices, field for field, without the YAML text.

    For the control-plane benchmarks, which compile clusters too large to write out as YAML
    (100,000 Services: ~440 MB). Endpoints share one conditions dict (nothing mutates them).
    """
    rng = _rng(spec, "yaml")  # the same draws, in the same order, as cluster_yaml()
    ready = {"ready": True, "serving": True, "terminating": False}
    objects: list[dict] = []
    version = 1000
    for s in cluster.services:
        version += 1
        ip = _dotted(s.cluster_ip)
        objects.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"creationTimestamp": _timestamp(rng, "2024-05-01T08:"),
                         "labels": {"app": s.name}, "name": s.name, "namespace": s.namespace,
                         "resourceVersion": str(version), "uid": s.uid},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "internalTrafficPolicy": "Cluster",
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "ports": [{"name": s.port_name, "port": s.port, "protocol": s.protocol,
                                "targetPort": s.port_name}],
                     "selector": {"app": s.name}, "sessionAffinity": "None", "type": "ClusterIP"},
            "status": {"loadBalancer": {}},
        })
    for s in cluster.services:
        version += 1
        stamp = _timestamp(rng)
        objects.append({
            "addressType": "IPv4", "apiVersion": "discovery.k8s.io/v1",
            "endpoints": [{"addresses": [_dotted(e.ip)], "conditions": ready,
                           "nodeName": f"node-{e.node:02d}",
                           "targetRef": {"kind": "Pod", "name": e.pod, "namespace": s.namespace,
                                         "uid": e.uid},
                           "zone": f"zone-{'abc'[e.node % 3]}"} for e in s.endpoints],
            "kind": "EndpointSlice",
            "metadata": {
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": stamp},
                "creationTimestamp": stamp, "generateName": f"{s.name}-", "generation": 1,
                "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                           "kubernetes.io/service-name": s.name},
                "name": s.slice_name, "namespace": s.namespace,
                "ownerReferences": [{"apiVersion": "v1", "blockOwnerDeletion": True,
                                     "controller": True, "kind": "Service", "name": s.name,
                                     "uid": s.uid}],
                "resourceVersion": str(version), "uid": s.slice_uid},
            "ports": [{"name": s.port_name, "port": s.target_port, "protocol": s.protocol}],
        })
    return objects


# Cluster-only shapes for the control-plane suite (bench_control.py): no capture is made of them.
CLUSTER_SPECS: dict[str, WorkloadSpec] = {
    # 100,000 ClusterIP Services x 10 ready endpoints (1,000,000 endpoints on 4,200 nodes).
    "control": WorkloadSpec("control", services=100_000, endpoints_per_service=10, flows=10,
                            packets=40, nodes=4200),
}


# --------------------------------------------------------------------------- the flows

PROTO_TCP, PROTO_UDP = 6, 17
EXTERNAL_NETS = (_ip("203.0.113.0"), _ip("198.51.100.0"))  # documentation ranges: never a Service


class Flow(NamedTuple):
    client: int
    sport: int
    daddr: int  # the address the client sends to (a ClusterIP for Service flows)
    dport: int
    proto: int
    service: int  # Maps service id, 0 for unrelated traffic
    replies: bool  # the capture also holds the other direction
    closes: bool  # TCP: ends with FIN (client), FIN (server)
    packets: int


def _split(total: int, k: int, minimum: int, rng: random.Random) -> list[int]:
    """`total` packets over `k` flows, heavy-tailed (Pareto, capped), each >= minimum, exact sum."""
    if k == 0:
        return []
    weights = [min(rng.paretovariate(1.2), 400.0) for _ in range(k)]
    spare = total - k * minimum
    if spare < 0:
        raise ValueError(f"{total} packets are too few for {k} flows")
    scale = spare / sum(weights)
    counts = [minimum + int(w * scale) for w in weights]
    for i in rng.sample(range(k), total - sum(counts)):
        counts[i] += 1
    return counts


def plan_flows(spec: WorkloadSpec, cluster: Cluster) -> list[Flow]:
    """Every flow of the capture: Service flows first (their order matters for the fingerprint)."""
    rng = _rng(spec, "flows")
    n_unrelated = round(spec.flows * spec.unrelated_fraction)
    n_service = spec.flows - n_unrelated
    unrelated_packets = round(spec.packets * spec.unrelated_fraction)
    counts = _split(spec.packets - unrelated_packets, n_service, 4, rng)
    counts += _split(unrelated_packets, n_unrelated, 4, rng)
    next_port = {client: rng.randrange(32768, 50000) for client in cluster.clients}

    def ephemeral(client: int) -> int:
        port = next_port[client]
        next_port[client] = port + 1 if port < 60999 else 32768
        return port

    # Mildly skewed popularity: some Services are hot, every Service sees some flows.
    weights = [1.0 / (rank + 1) ** 0.6 for rank in range(len(cluster.services))]
    order = list(range(len(cluster.services)))
    rng.shuffle(order)
    targets = rng.choices(order, weights=weights, k=n_service)
    for i in range(min(n_service, len(order))):  # every Service at least once
        targets[i] = order[i]

    flows = []
    for i in range(spec.flows):
        client = rng.choice(cluster.clients)
        sport = ephemeral(client)
        replies = rng.random() < spec.reply_fraction
        closes = rng.random() < spec.close_fraction
        if i < n_service:
            index = targets[i]
            s = cluster.services[index]
            proto = PROTO_UDP if s.protocol == "UDP" else PROTO_TCP
            flows.append(Flow(client, sport, s.cluster_ip, s.port, proto, index + 1, replies,
                              closes and proto == PROTO_TCP, counts[i]))
            continue
        kind = rng.random()
        if kind < 0.4:  # HTTPS to the outside world
            daddr, dport, proto = rng.choice(EXTERNAL_NETS) + rng.randrange(1, 255), 443, PROTO_TCP
        elif kind < 0.6:  # DNS to an outside resolver
            daddr, dport, proto = rng.choice(EXTERNAL_NETS) + 53, 53, PROTO_UDP
        else:  # straight to a pod IP, bypassing the Service
            s = rng.choice(cluster.services)
            daddr = rng.choice(s.endpoints).ip
            dport, proto = s.target_port, (PROTO_UDP if s.protocol == "UDP" else PROTO_TCP)
        flows.append(Flow(client, sport, daddr, dport, proto, 0, replies,
                          closes and proto == PROTO_TCP, counts[i]))
    return flows


def choose_backends(maps, flows: list[Flow]) -> tuple[list[tuple[int, int]], str]:
    """(backend ip, port) the dataplane gives each Service flow's first packet, and who chose."""
    try:
        from fastpath._core import Engine
    except ImportError:
        from fastpath.reference import select_backend

        by_id = {b.id: (b.ip, b.port) for b in maps.backends}
        return [by_id[select_backend(maps.services[f.service - 1].backends, f.client, f.daddr,
                                     f.sport, f.dport, f.proto)] if f.service else (0, 0)
                for f in flows], "fastpath.reference.select_backend"
    engine = Engine(maps, ct_capacity=len(flows) + 1)
    chosen = []
    probe = bytearray(54)
    probe[12:14] = b"\x08\x00"
    for f in flows:
        if not f.service:
            chosen.append((0, 0))
            continue
        struct.pack_into("!BBHHHBBHII", probe, 14, 0x45, 0, 40, 0, 0x4000, 64, f.proto, 0,
                         f.client, f.daddr)
        struct.pack_into("!HH", probe, 34, f.sport, f.dport)
        probe[46] = 0x50
        probe[47] = 0x02  # SYN (for UDP these bytes are payload)
        if f.proto == PROTO_UDP:
            struct.pack_into("!HH", probe, 38, 20, 0)
        verdict, reason, data = engine.process_packet(bytes(probe), 0, LINKTYPE_ETHERNET)
        if int(verdict) != 1:
            raise RuntimeError(f"the core did not DNAT a Service flow's first packet: {reason!r}")
        chosen.append(struct.unpack_from("!IxxH", data, 30))  # daddr, (sport), dport
    return chosen, "fastpath._core.Engine"


def _fingerprint(chosen: list[tuple[int, int]]) -> str:
    digest = hashlib.sha256()
    for ip, port in chosen:
        digest.update(struct.pack("!IH", ip, port))
    return digest.hexdigest()[:32]


# --------------------------------------------------------------------------- packets

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET)
_RECORD = struct.Struct("<IIII")
_INDEX_HEADER = struct.Struct("<8sQ")
_INDEX_MAGIC = b"FPBIDX1\0"
_IP_TCP = struct.Struct("!BBHHHBBHIIHHIIHHHH")
_IP_UDP = struct.Struct("!BBHHHBBHIIHHHH")
_SYN_OPTIONS = bytes.fromhex("020405b4" "0402" "080a1f2e3d4c00000000" "01" "030307")
_SYNACK_OPTIONS = bytes.fromhex("020405b4" "0402" "080a5a6b7c8d1f2e3d4c" "01" "030307")
GATEWAY_MAC = bytes.fromhex("0a580af40001")

TCP_FIN, TCP_SYN, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x08, 0x10


def _words_sum(data: bytes) -> int:
    """One's-complement sum (folded to 16 bits) of data as big-endian 16-bit words, zero-padded."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


_SYN_SUM = _words_sum(_SYN_OPTIONS)
_SYNACK_SUM = _words_sum(_SYNACK_OPTIONS)


def _mac(ip: int) -> bytes:
    # The 0a:58:<IPv4> MACs several CNIs (OVN-Kubernetes, kindnet bridges) give pods.
    return b"\x0a\x58" + ip.to_bytes(4, "big")


def _payload_pools(rng: random.Random) -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int]]]:
    """(payload, word sum) pools: TCP segment sizes and UDP datagram sizes."""
    tcp, udp = [], []
    for _ in range(1024):
        r = rng.random()
        if r < 0.40:
            n = 0  # pure ACK
        elif r < 0.85:
            n = rng.randrange(20, 301)
        elif r < 0.95:
            n = rng.randrange(300, 701)
        else:
            n = 1448
        data = rng.randbytes(n)
        tcp.append((data, _words_sum(data)))
        data = rng.randbytes(rng.randrange(24, 480))
        udp.append((data, _words_sum(data)))
    return tcp, udp


def _schedule(spec: WorkloadSpec, flows: list[Flow], rng: random.Random) -> tuple[list[int], int]:
    """Packet events sorted by time: each int is (microseconds << shift) | flow index."""
    shift = max(1, len(flows).bit_length())
    span_us = spec.duration_s * 1_000_000
    events = []
    extend = events.extend
    randrange = rng.randrange
    for index, flow in enumerate(flows):
        start = randrange(int(span_us * 0.7))
        length = max(1, int((span_us - start) * (0.1 + 0.9 * rng.random())))
        extend(((start + randrange(length)) << shift) | index for _ in range(flow.packets - 1))
        events.append((start << shift) | index)  # the first packet opens the flow
    events.sort()
    return events, shift


def write_capture(spec: WorkloadSpec, flows: list[Flow], chosen: list[tuple[int, int]],
                  path: Path, index_path: Path | None = None) -> dict:
    """Write the capture (and its index), atomically. Returns counts for meta.json."""
    rng = _rng(spec, "packets")
    tcp_pool, udp_pool = _payload_pools(rng)
    events, shift = _schedule(spec, flows, rng)
    mask = (1 << shift) - 1

    # Per flow and direction: [eth header, saddr, daddr, sport, dport, IP partial sum,
    # L4 partial sum, next IP id]. Direction 0: client -> destination; 1: reply.
    directions = []
    for flow, (bip, bport) in zip(flows, chosen):
        server_ip, server_port = (bip, bport) if flow.service else (flow.daddr, flow.dport)
        fwd_dst_mac = _mac(flow.daddr) if (flow.daddr >> 16) == _ip("10.244.0.0") >> 16 else GATEWAY_MAC
        rev_src_mac = _mac(server_ip) if (server_ip >> 16) == _ip("10.244.0.0") >> 16 else GATEWAY_MAC
        ends = (
            (fwd_dst_mac + _mac(flow.client) + b"\x08\x00",
             flow.client, flow.daddr, flow.sport, flow.dport),
            (_mac(flow.client) + rev_src_mac + b"\x08\x00",
             server_ip, flow.client, server_port, flow.sport),
        )
        pair = []
        for eth, saddr, daddr, sport, dport in ends:
            addr_sum = (saddr >> 16) + (saddr & 0xFFFF) + (daddr >> 16) + (daddr & 0xFFFF)
            ip_sum = 0x4500 + 0x4000 + ((64 << 8) | flow.proto) + addr_sum
            l4_sum = addr_sum + flow.proto + sport + dport
            pair.append([eth, saddr, daddr, sport, dport, ip_sum, l4_sum, rng.randrange(65536)])
        directions.append(pair)
    seqs = [[rng.getrandbits(32), rng.getrandbits(32)] for _ in flows]  # client, server
    sent = [0] * len(flows)

    out = bytearray(PCAP_HEADER)
    append = out.extend
    offsets, lengths, stamps = array("Q"), array("I"), array("Q")
    add_offset, add_length, add_stamp = offsets.append, lengths.append, stamps.append
    pack_record, pack_tcp, pack_udp = _RECORD.pack, _IP_TCP.pack, _IP_UDP.pack
    random_ = rng.random
    getrandbits = rng.getrandbits
    reply_share = spec.reply_share

    def start_packet(us: int, eth: bytes, total_len: int, ip_sum: int, ip_id: int) -> int:
        """Index entry, record header and Ethernet header of an IPv4 packet of total_len bytes
        at `us`; returns its IP header checksum (ip_sum: the partial sum of the fixed fields)."""
        t = ip_sum + total_len + ip_id
        t = (t & 0xFFFF) + (t >> 16)
        t = (t & 0xFFFF) + (t >> 16)
        caplen = 14 + total_len
        add_offset(len(out) + 16)
        add_length(caplen)
        add_stamp((CAPTURE_EPOCH_US + us) * 1000)
        append(pack_record(CAPTURE_EPOCH_S + us // 1_000_000, us % 1_000_000, caplen, caplen))
        append(eth)
        return ~t & 0xFFFF
    counts = {"tcp": 0, "udp": 0, "forward": 0, "reply": 0, "syn": 0, "fin": 0}
    for event in events:
        index = event & mask
        us = event >> shift
        flow = flows[index]
        i = sent[index]
        sent[index] = i + 1
        n = flow.packets
        # Which packet of the flow this is: (direction, flags); flags None for UDP.
        options, options_sum = b"", 0
        if flow.proto == PROTO_TCP:
            if i == 0:
                direction, flags, options, options_sum = 0, TCP_SYN, _SYN_OPTIONS, _SYN_SUM
            elif i == 1 and flow.replies:
                direction, flags, options, options_sum = 1, TCP_SYN | TCP_ACK, _SYNACK_OPTIONS, _SYNACK_SUM
            elif flow.closes and flow.replies and i == n - 2:
                direction, flags = 0, TCP_FIN | TCP_ACK
            elif flow.closes and i == n - 1:
                direction, flags = (1 if flow.replies else 0), TCP_FIN | TCP_ACK
            else:
                direction = 1 if flow.replies and random_() < reply_share else 0
                flags = None
        else:
            direction = 1 if i and flow.replies and random_() < reply_share else 0
        eth, saddr, daddr, sport, dport, ip_sum, l4_sum, ip_id = directions[index][direction]
        directions[index][direction][7] = (ip_id + 1) & 0xFFFF
        if flow.proto == PROTO_TCP:
            if flags is None:
                payload, payload_sum = tcp_pool[getrandbits(10)]
                flags = TCP_PSH | TCP_ACK if payload else TCP_ACK
            else:
                payload, payload_sum = b"", 0
            seq_pair = seqs[index]
            seq, ack = seq_pair[direction], seq_pair[1 - direction]
            if flags == TCP_SYN:
                ack = 0
            header_len = 20 + len(options)
            l4_len = header_len + len(payload)
            total_len = 20 + l4_len
            off_flags = (header_len << 10) | flags  # data offset (words) << 12
            window = 0xFAF0 if direction == 0 else 0xFE88
            s = (l4_sum + l4_len + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF)
                 + off_flags + window + payload_sum + options_sum)
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            l4_csum = ~s & 0xFFFF
            ip_csum = start_packet(us, eth, total_len, ip_sum, ip_id)
            append(pack_tcp(0x45, 0, total_len, ip_id, 0x4000, 64, PROTO_TCP, ip_csum,
                            saddr, daddr, sport, dport, seq, ack, off_flags, window, l4_csum, 0))
            if options:
                append(options)
            append(payload)
            advance = len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)
            seq_pair[direction] = (seq + advance) & 0xFFFFFFFF
            counts["tcp"] += 1
            counts["syn"] += flags & TCP_SYN and 1
            counts["fin"] += flags & TCP_FIN and 1
        else:
            payload, payload_sum = udp_pool[getrandbits(10)]
            l4_len = 8 + len(payload)
            total_len = 20 + l4_len
            s = l4_sum + 2 * l4_len + payload_sum
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            l4_csum = ~s & 0xFFFF or 0xFFFF
            ip_csum = start_packet(us, eth, total_len, ip_sum, ip_id)
            append(pack_udp(0x45, 0, total_len, ip_id, 0x4000, 64, PROTO_UDP, ip_csum,
                            saddr, daddr, sport, dport, l4_len, l4_csum))
            append(payload)
            counts["udp"] += 1
        counts["reply" if direction else "forward"] += 1
    _write_atomically(path, out)
    if index_path is not None:
        _write_atomically(index_path, _INDEX_HEADER.pack(_INDEX_MAGIC, len(events))
                          + offsets.tobytes() + lengths.tobytes() + stamps.tobytes())
    return {"packets": len(events), "bytes": len(out),
            "mean_packet_bytes": round((len(out) - 24 - 16 * len(events)) / len(events), 1), **counts}



def _write_atomically(path: Path, data: bytes | bytearray | str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w" if isinstance(data, str) else "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


# --------------------------------------------------------------------------- files and cache


class WorkloadFiles(NamedTuple):
    spec: WorkloadSpec
    directory: Path
    cluster: Path
    capture: Path
    index: Path
    meta: dict


def _ensure_importable() -> None:
    """Make `import fastpath` work from a source checkout (pysrc/) when it is not installed."""
    try:
        import fastpath.maps  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(_PYSRC))


def _plan(spec: WorkloadSpec):
    cluster = plan_cluster(spec)
    maps = cluster_maps(cluster)
    flows = plan_flows(spec, cluster)
    chosen, chooser = choose_backends(maps, flows)
    return cluster, maps, flows, chosen, chooser


def ensure_workload(name: str = "standard", out: str | os.PathLike | None = None, *,
                    force: bool = False, log=None) -> WorkloadFiles:
    """The workload's files, generated into `out` (default benchmarks/workloads/NAME) unless a
    matching generation is already there."""
    _ensure_importable()
    spec = WORKLOADS[name]
    directory = Path(out) if out is not None else WORKLOADS_DIR / name
    cluster_path, capture_path, meta_path = (directory / CLUSTER_FILE, directory / CAPTURE_FILE,
                                             directory / META_FILE)
    index_path = directory / INDEX_FILE
    cluster, maps, flows, chosen, chooser = _plan(spec)
    fingerprint = _fingerprint(chosen)
    if not force and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if (meta.get("generator_version") == GENERATOR_VERSION and meta.get("spec") == asdict(spec)
                and meta.get("backend_fingerprint") == fingerprint
                and cluster_path.exists() and capture_path.exists() and index_path.exists()
                and capture_path.stat().st_size == meta.get("capture", {}).get("bytes")):
            return WorkloadFiles(spec, directory, cluster_path, capture_path, index_path, meta)
        if log:
            log(f"workload {name}: cached files are stale or incomplete, regenerating")
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # written last: no meta means no usable generation
    _write_atomically(cluster_path, cluster_yaml(spec, cluster))
    capture_counts = write_capture(spec, flows, chosen, capture_path, index_path)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "services": len(maps.services),
        "backends": len(maps.backends),
        "service_flows": sum(1 for f in flows if f.service),
        "unrelated_flows": sum(1 for f in flows if not f.service),
        "replying_flows": sum(1 for f in flows if f.replies),
        "capture": capture_counts,
        "backend_chooser": chooser,
        "backend_fingerprint": fingerprint,
        "generation_s": round(time.perf_counter() - started, 2),
    }
    _write_atomically(meta_path, json.dumps(meta, indent=2) + "\n")
    if log:
        log(f"workload {name}: generated {capture_counts['packets']:,} packets "
            f"({capture_counts['bytes'] / 1e6:.0f} MB) in {meta['generation_s']} s into {directory}")
    return WorkloadFiles(spec, directory, cluster_path, capture_path, index_path, meta)


# --------------------------------------------------------------------------- in-memory batches


class MemoryBatch(NamedTuple):
    """What Engine.process takes: packet i is buf[offsets[i]:offsets[i] + lengths[i]]."""

    buf: bytearray
    offsets: array  # 'Q'
    lengths: array  # 'I'
    timestamps_ns: array  # 'Q'
    linktype: int

    @property
    def count(self) -> int:
        return len(self.offsets)

    def fresh_buffer(self, plain: bool = False):
        """A copy of the original bytes (the core rewrites packets in place), in a buffer made
        as fastpath's capture reader makes its chunks (fastpath.capture.packet_buffer: huge
        pages where the OS has them); plain=True: in a bytearray."""
        if plain:
            return bytearray(self.buf)
        from fastpath.capture import packet_buffer

        buf = packet_buffer(len(self.buf))
        buf[:len(self.buf)] = self.buf
        return buf


def load_batch(capture: str | os.PathLike, index: str | os.PathLike | None = None) -> MemoryBatch:
    """A whole classic pcap (microsecond or nanosecond, either byte order) as one in-memory batch.

    The file is read as is into one buffer: packets stay after their record headers, as in the
    batches fastpath.capture reads, so the buffer is the capture's size. With the generator's
    `index` file the record headers are not scanned (1M records take seconds in Python).
    """
    with open(capture, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        buf = bytearray(size)
        if handle.readinto(buf) != size:
            raise OSError(f"{capture}: short read")
    if index is not None:
        batch = _indexed_batch(buf, Path(index))
        if batch is not None:
            return batch
    magic = bytes(buf[:4])
    magics = {b"\xd4\xc3\xb2\xa1": ("<", 1000), b"\xa1\xb2\xc3\xd4": (">", 1000),
              b"\x4d\x3c\xb2\xa1": ("<", 1), b"\xa1\xb2\x3c\x4d": (">", 1)}
    if size < 24 or magic not in magics:
        raise ValueError(f"{capture}: not a classic pcap file")
    order, unit = magics[magic]
    linktype = struct.unpack_from(order + "I", buf, 20)[0] & 0x0FFFFFFF
    record = struct.Struct(order + "III")
    unpack = record.unpack_from
    offsets, lengths, stamps = array("Q"), array("I"), array("Q")
    add_offset, add_length, add_stamp = offsets.append, lengths.append, stamps.append
    pos = 24
    while pos + 16 <= size:
        seconds, fraction, caplen = unpack(buf, pos)
        pos += 16
        if pos + caplen > size:
            break  # a record cut by the end of the file
        add_offset(pos)
        add_length(caplen)
        add_stamp(seconds * 1_000_000_000 + fraction * unit)
        pos += caplen
    return MemoryBatch(buf, offsets, lengths, stamps, linktype)


def _indexed_batch(buf: bytearray, index: Path) -> MemoryBatch | None:
    data = index.read_bytes()
    if len(data) < _INDEX_HEADER.size:
        return None
    magic, n = _INDEX_HEADER.unpack_from(data)
    if magic != _INDEX_MAGIC or len(data) != _INDEX_HEADER.size + 20 * n:
        return None
    view = memoryview(data)[_INDEX_HEADER.size:]
    offsets, lengths, stamps = array("Q"), array("I"), array("Q")
    offsets.frombytes(view[:8 * n])
    lengths.frombytes(view[8 * n:12 * n])
    stamps.frombytes(view[12 * n:])
    if n and offsets[-1] + lengths[-1] > len(buf):
        return None
    return MemoryBatch(buf, offsets, lengths, stamps, struct.unpack_from("<I", buf, 20)[0])


def workload_batch(name: str = "standard") -> MemoryBatch:
    """The named workload's capture as one in-memory batch (generating the files if needed)."""
    files = ensure_workload(name)
    return load_batch(files.capture, files.index)


# --------------------------------------------------------------------------- synthetic traffic
#
# For the scale and memory suites: tables of any size and TCP traffic shaped to exercise them,
# built directly in memory (a million packets in about a second). Packets are Ethernet/IPv4/TCP,
# 254 bytes (the standard capture's mean is 252.9) in the load_batch() layout (a 16-byte record
# header slot before each). Their checksums are left at zero: the core never verifies one and its
# incremental TCP update costs the same whatever the old value.

SYNTHETIC_PACKET_BYTES = 254
SYNTHETIC_FRONTEND_BASE = _ip("10.96.0.1")  # frontend i is 10.96.0.1 + i, port 80/TCP
SYNTHETIC_BACKEND_BASE = _ip("10.244.0.2")  # backend i (1-based) at 10.244.0.2 + i - 1, port 8080
_ETH_IPV4 = GATEWAY_MAC + bytes.fromhex("0a580af40002") + b"\x08\x00"
_SYNTH = struct.Struct("!14sBBHHHBBHIIHHIIBBHHH")


def scale_maps(service_ports: int, endpoints_per_service: int = 10, backends: int = 10_000):
    """Maps with `service_ports` ClusterIP frontends (10.96.0.1 + i, port 80/TCP; at most 1,048,574),
    each its own service over `endpoints_per_service` of `backends` shared pod backends (:8080)."""
    _ensure_importable()
    from fastpath.maps import PROTO_TCP as TCP
    from fastpath.maps import Backend, Frontend, Maps, Service

    if not 1 <= service_ports <= (1 << 20) - 2:
        raise ValueError("service_ports must fit 10.96.0.0/12")
    backends = max(backends, endpoints_per_service)
    backend_list = [Backend(id=i, ip=SYNTHETIC_BACKEND_BASE + i - 1, port=8080, name=f"backend-{i}")
                    for i in range(1, backends + 1)]
    ids = list(range(1, backends + 1))
    sets: dict[int, tuple[int, ...]] = {}  # services sharing a backend set share its tuple
    services, frontends = [], []
    for i in range(service_ports):
        start = (i * endpoints_per_service) % backends
        chosen = sets.get(start)
        if chosen is None:
            chosen = sets[start] = tuple(sorted(ids[(start + k) % backends]
                                                for k in range(endpoints_per_service)))
        services.append(Service(id=i + 1, name=f"scale/svc-{i}:http", backends=chosen))
        frontends.append(Frontend(ip=SYNTHETIC_FRONTEND_BASE + i, port=80, proto=TCP, service=i + 1))
    return Maps(services=services, frontends=frontends, backends=backend_list)


def synthetic_batch(tuples, packets, flags, start_ns: int = CAPTURE_EPOCH_US * 1000,
                    step_ns: int = 30_000) -> MemoryBatch:
    """A TCP batch: packet i belongs to tuples[packets[i]] = (saddr, daddr, sport, dport) and
    carries TCP flags flags[i]; timestamps start at start_ns, step_ns apart."""
    n = len(packets)
    stride = 16 + SYNTHETIC_PACKET_BYTES
    buf = bytearray(24 + n * stride)
    buf[:24] = PCAP_HEADER
    total = SYNTHETIC_PACKET_BYTES - 14
    pack = _SYNTH.pack_into
    pos = 24 + 16
    for t, f in zip(packets, flags):
        saddr, daddr, sport, dport = tuples[t]
        pack(buf, pos, _ETH_IPV4, 0x45, 0, total, 0, 0x4000, 64, PROTO_TCP, 0, saddr, daddr,
             sport, dport, 0, 0, 0x50, f, 0xFFFF, 0, 0)
        pos += stride
    return MemoryBatch(buf, array("Q", range(40, 40 + n * stride, stride)),
                       array("I", [SYNTHETIC_PACKET_BYTES]) * n,
                       array("Q", range(start_ns, start_ns + n * step_ns, step_ns)), LINKTYPE_ETHERNET)


def _clients(count: int = 2000) -> list[int]:
    return [_pod_ip(64 + i // 250, 2 + i % 250) for i in range(count)]  # nodes 64+: not backends


def service_traffic(maps, flows: int, packets: int, seed: str = "scale") -> MemoryBatch:
    """`flows` TCP flows from 2,000 clients, each to a frontend of `maps` drawn uniformly, sharing
    `packets` packets evenly in a random interleaving: each flow's first packet is a SYN, the rest
    ACKs (client to service only). flows == packets: every packet opens a new flow."""
    rng = random.Random(f"{seed}:{len(maps.frontends)}:{flows}:{packets}")
    clients = _clients()
    targets = [(f.ip, f.port) for f in maps.frontends]
    tuples = []
    for k in range(flows):
        daddr, dport = targets[rng.randrange(len(targets))]
        tuples.append((clients[k % len(clients)], daddr, 1024 + k // len(clients), dport))
    order = [k % flows for k in range(packets)]
    rng.shuffle(order)
    seen = bytearray(flows)
    flags = bytearray(packets)
    for i, k in enumerate(order):
        flags[i] = TCP_ACK if seen[k] else TCP_SYN
        seen[k] = 1
    return synthetic_batch(tuples, order, flags)


def tracked_traffic(maps, flows: int, packets: int, reply_share: float = 0.25,
                    seed: str = "tracked") -> tuple[MemoryBatch, MemoryBatch]:
    """(opening, steady): `opening` holds one SYN per flow (flows to frontends of `maps` in turn);
    run it through an engine with room for every flow, and `steady`'s `packets` packets, each of a
    flow drawn uniformly (a client ACK, or with probability reply_share the backend's reply), are
    all conntrack hits. Replies come from the backend the compiled core picks."""
    from fastpath._core import Engine

    rng = random.Random(f"{seed}:{len(maps.frontends)}:{flows}:{packets}")
    clients = _clients()
    targets = [(f.ip, f.port) for f in maps.frontends]
    forward = []
    for k in range(flows):
        daddr, dport = targets[k % len(targets)]
        forward.append((clients[k % len(clients)], daddr, 1024 + k // len(clients), dport))
    opening = synthetic_batch(forward, range(flows), bytes([TCP_SYN]) * flows)
    # Where the core sends each flow (the per-packet trace names the backend).
    engine = Engine(maps, ct_capacity=flows + 1)
    probe = opening.fresh_buffer()
    verdicts, reasons = array("B", bytes(flows)), array("B", bytes(flows))
    services, backend_ids = array("I", bytes(4 * flows)), array("I", bytes(4 * flows))
    engine.process(probe, opening.offsets, opening.lengths, opening.timestamps_ns, verdicts,
                   reasons, opening.linktype, services, backend_ids, array("B", bytes(flows)))
    del probe, engine
    if 0 in backend_ids:
        raise RuntimeError("the core did not DNAT every opening SYN")
    replies = [(maps.backends[b - 1].ip, c, maps.backends[b - 1].port, sp)
               for (c, _, sp, _), b in zip(forward, backend_ids)]
    tuples = forward + replies
    order, flags = [], bytearray(packets)
    randrange, random_ = rng.randrange, rng.random
    for i in range(packets):
        k = randrange(flows)
        order.append(flows + k if random_() < reply_share else k)
        flags[i] = TCP_ACK
    start = CAPTURE_EPOCH_US * 1000 + flows * 30_000 + 1_000_000
    return opening, synthetic_batch(tuples, order, flags, start_ns=start)


# --------------------------------------------------------------------------- a large capture
#
# For the streaming-memory case (bench_memory.py): the standard capture's records repeated with
# shifted timestamps, written to disk in a streaming way (one copy of the capture in memory).


def ensure_large_capture(files: WorkloadFiles, repeats: int, out: str | os.PathLike | None = None,
                         *, log=None) -> Path:
    """benchmarks/workloads/large-xN/capture.pcap: `repeats` copies of the workload's records,
    copy k shifted by k * (duration + 10) s. Reused while its size and recipe match."""
    directory = Path(out) if out is not None else WORKLOADS_DIR / f"{files.spec.name}-x{repeats}"
    path, meta_path = directory / CAPTURE_FILE, directory / META_FILE
    shift = files.spec.duration_s + 10
    size = 24 + repeats * (files.meta["capture"]["bytes"] - 24)
    recipe = {"generator_version": GENERATOR_VERSION, "source": files.meta["backend_fingerprint"],
              "spec": asdict(files.spec), "repeats": repeats, "shift_s": shift, "bytes": size}
    if meta_path.exists() and path.exists() and path.stat().st_size == size:
        try:
            if json.loads(meta_path.read_text()) == recipe:
                return path
        except ValueError:
            pass
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    batch = load_batch(files.capture, files.index)
    buf = batch.buf
    headers = [offset - 16 for offset in batch.offsets]
    seconds = [struct.unpack_from("<I", buf, h)[0] for h in headers]
    pack = struct.Struct("<I").pack_into
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(buf[:24])
        body = memoryview(buf)[24:]
        for k in range(repeats):
            if k:
                for h, sec in zip(headers, seconds):
                    pack(buf, h, sec + k * shift)
            handle.write(body)
    os.replace(temporary, path)
    _write_atomically(meta_path, json.dumps(recipe, indent=2) + "\n")
    if log:
        log(f"large capture: {repeats} x {files.spec.name} = {size / 1e9:.2f} GB in "
            f"{time.perf_counter() - started:.0f} s into {directory}")
    return path


# --------------------------------------------------------------------------- checks and CLI


def verify(files: WorkloadFiles, sample: int) -> list[str]:
    """Independent checks (scapy and the YAML compiler); returns a list of problems."""
    problems = []
    from fastpath.compiler import compile_maps
    from fastpath.model import load_cluster

    compiled = compile_maps(load_cluster([files.cluster])).maps
    if compiled != cluster_maps(plan_cluster(files.spec)):
        problems.append("compiling cluster.yaml does not give workload_maps()")
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    batch = load_batch(files.capture, files.index)
    scanned = load_batch(files.capture)
    if (scanned.offsets, scanned.lengths, scanned.timestamps_ns) != (
            batch.offsets, batch.lengths, batch.timestamps_ns):
        problems.append("capture.index does not match the capture's record headers")
    rng = random.Random("verify")
    for i in rng.sample(range(batch.count), min(sample, batch.count)):
        raw = bytes(batch.buf[batch.offsets[i]:batch.offsets[i] + batch.lengths[i]])
        packet = Ether(raw)
        ip = packet[IP]
        l4 = packet[TCP] if TCP in packet else packet[UDP]
        stored = (ip.chksum, l4.chksum)
        del ip.chksum, l4.chksum
        rebuilt = Ether(bytes(packet))
        if (rebuilt[IP].chksum, rebuilt[l4.__class__].chksum) != stored:
            problems.append(f"packet {i}: checksums {stored} differ from scapy's")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="standard")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default benchmarks/workloads/WORKLOAD)")
    parser.add_argument("--force", action="store_true", help="regenerate even if cached")
    parser.add_argument("--verify", metavar="N", type=int, default=0,
                        help="then check N random packets' checksums with scapy and compile "
                        "cluster.yaml with fastpath.compiler")
    args = parser.parse_args(argv)
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    files = ensure_workload(args.workload, args.out, force=args.force, log=log)
    capture = files.meta["capture"]
    print(f"{files.cluster}\n{files.capture}: {capture['packets']:,} packets, "
          f"{capture['bytes']:,} bytes, mean packet {capture['mean_packet_bytes']} bytes")
    if args.verify:
        problems = verify(files, args.verify)
        for problem in problems[:20]:
            print(f"verify: {problem}", file=sys.stderr)
        print(f"verify: {args.verify} packets and the compiled maps: "
              f"{'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The dataplane's maps as the compiler hands them to a core.

This is the contract between policy (fastpath.compiler) and execution (the compiled Engine in
fastpath._core and its pure-Python twin fastpath.reference): both load the same `Maps` and must
then produce the same verdicts and bytes. Everything here is already decided: a core never
filters endpoints or interprets Kubernetes semantics, it only looks keys up.
"""
from __future__ import annotations

from dataclasses import dataclass, field

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_SCTP = 132
PROTOCOL_NUMBERS = {"TCP": PROTO_TCP, "UDP": PROTO_UDP, "SCTP": PROTO_SCTP}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint address and port. `id` is dense (1..N) and indexes the per-backend counters."""

    id: int
    ip: int  # IPv4 address as an unsigned 32-bit integer (network order read as big-endian)
    port: int
    name: str  # for reports: "10.244.1.5:8080 (namespace/pod-or-slice)"


@dataclass(frozen=True, slots=True)
class Service:
    """One service port. `id` is dense (1..N): the rev-NAT id and the per-service counter index.

    Backend tuples hold backend ids in a stable order (the compiler sorts them), so every node and
    every run builds the same selection table.
    """

    id: int
    name: str  # "namespace/name:port-name" ("namespace/name" when the port is unnamed)
    backends: tuple[int, ...]  # the cluster set: what new flows choose from by default
    # The local set (endpoints on this node), used under a Local traffic policy.
    local_backends: tuple[int, ...] = ()
    # Every serving endpoint (ready or terminating). When new maps are loaded, tracked UDP flows
    # whose backend is not serving any more are forgotten, so their next packet selects again.
    serving: tuple[int, ...] = ()
    affinity_timeout_s: int = 0  # ClientIP session affinity timeout; 0: no affinity


FRONTEND_KINDS = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalIP")


@dataclass(frozen=True, slots=True)
class Frontend:
    """An address the dataplane answers for: (ip, port, proto) -> service port."""

    ip: int
    port: int
    proto: int  # PROTO_TCP, PROTO_UDP or PROTO_SCTP
    service: int  # Service.id
    kind: str = "ClusterIP"  # one of FRONTEND_KINDS
    # internalTrafficPolicy Local (ClusterIP) or externalTrafficPolicy Local (the other kinds).
    local_policy: bool = False
    # loadBalancerSourceRanges as (network, prefix length); empty allows every source.
    source_ranges: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the dataplane knows of the node it runs on (all IPv4 as integers)."""

    primary_ip: int = 0  # masquerade (SNAT) address; 0: no masquerading possible
    local_ips: tuple[int, ...] = ()  # the node's own addresses (node-local sources)
    pod_cidrs: tuple[tuple[int, int], ...] = ()  # clusterCIDR: which sources are pod traffic
    masquerade_all: bool = False
    # Addresses of ClusterIP services: a packet to one of them on a port no service has is
    # rejected, like kube-proxy does.
    service_ips: tuple[int, ...] = ()


@dataclass(slots=True)
class Maps:
    """Everything a core needs; ids index these lists directly (entry i has id i + 1)."""

    services: list[Service] = field(default_factory=list)
    frontends: list[Frontend] = field(default_factory=list)
    backends: list[Backend] = field(default_factory=list)
    node: NodeView = field(default_factory=NodeView)

    def __post_init__(self) -> None:
        for position, item in enumerate(self.services):
            if item.id != position + 1:
                raise ValueError(f"service {item.name!r} has id {item.id}, expected {position + 1}")
        for position, item in enumerate(self.backends):
            if item.id != position + 1:
                raise ValueError(f"backend {item.name!r} has id {item.id}, expected {position + 1}")
        keys = set()
        for frontend in self.frontends:
            if not 1 <= frontend.service <= len(self.services):
                raise ValueError(f"frontend {frontend} names an unknown service id")
            key = (frontend.ip, frontend.port, frontend.proto)
            if key in keys:
                raise ValueError(f"duplicate frontend {frontend}")
            keys.add(key)
        for frontend in self.frontends:
            if frontend.kind not in FRONTEND_KINDS:
                raise ValueError(f"frontend {frontend} has an unknown kind")
        for service in self.services:
            for backend_id in (*service.backends, *service.local_backends, *service.serving):
                if not 1 <= backend_id <= len(self.backends):
                    raise ValueError(f"service {service.name!r} names unknown backend id {backend_id}")

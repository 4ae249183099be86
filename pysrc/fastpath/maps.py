"""The dataplane's maps as the compiler hands them to a core.

This is the contract between policy (fastpath.compiler) and execution (the compiled Engine in
fastpath._core and its pure-Python twin fastpath.reference): both load the same `Maps` and must
then produce the same verdicts and bytes. Everything here is already decided: a core never
filters endpoints or interprets Kubernetes semantics, it only looks keys up.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from operator import attrgetter

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_SCTP = 132
PROTOCOL_NUMBERS = {"TCP": PROTO_TCP, "UDP": PROTO_UDP, "SCTP": PROTO_SCTP}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}

# Conntrack entries a core makes room for unless told otherwise (both cores' default).
DEFAULT_CT_CAPACITY = 1 << 19

# Addresses are integers: an IPv4 address is its 32-bit value; an IPv6 address is IPV6 | its
# 128-bit value, so the two families never share a number (::1 is not 0.0.0.1) and one int
# carries both the family and the address. IPv4-mapped IPv6 addresses (::ffff:0:0/96) are not
# addresses a node routes on the wire and are refused.
IPV6 = 1 << 128


def ipv6_address(value: int) -> int:
    """The map integer of the IPv6 address whose 128-bit value is `value`."""
    return IPV6 | value


def is_ipv6(address: int) -> bool:
    return address >= IPV6


def family_of(address: int) -> int:
    """4 or 6."""
    return 6 if address >= IPV6 else 4


def address_bits(address: int) -> int:
    """32 for IPv4, 128 for IPv6: the most a prefix length may be."""
    return 128 if address >= IPV6 else 32


def in_prefix(address: int, network: int, length: int) -> bool:
    """`address` is of the family of `network` and they agree on their top `length` bits
    (length 0: every address of that family)."""
    if (address >= IPV6) != (network >= IPV6):
        return False
    shift = address_bits(network) - length
    return (address >> shift) == (network >> shift)


def address_from_text(text: str) -> int:
    """'10.0.0.1' or 'fd00::1' -> map integer (ValueError for anything else)."""
    ip = ip_address(text)
    if ip.version == 4:
        return int(ip)
    return ipv6_address(int(ip))


def format_address(address: int) -> str:
    """The usual text of a map address: dotted quad or RFC 5952 IPv6."""
    if address >= IPV6:
        return str(IPv6Address(address & (IPV6 - 1)))
    return str(IPv4Address(address))


def format_endpoint(address: int, port: int) -> str:
    """'10.0.0.1:80' or '[fd00::1]:80'."""
    if address >= IPV6:
        return f"[{format_address(address)}]:{port}"
    return f"{format_address(address)}:{port}"


def _check_address(address: int, what: str) -> None:
    if not (0 <= address < 1 << 32 or IPV6 <= address < IPV6 << 1):
        raise ValueError(f"{what}: {address!r} is not a map address")
    if address >= IPV6 and (address & (IPV6 - 1)) >> 32 == 0xFFFF:
        raise ValueError(f"{what}: IPv4-mapped IPv6 address {format_address(address)} is not routable")


def _check_prefix(prefix: tuple[int, int], what: str) -> None:
    # (Prefix lengths are the engines' to refuse: load() must reject maps changed after this.)
    _check_address(prefix[0], what)


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint address and port. `id` is dense (1..N) and indexes the per-backend counters."""

    id: int
    ip: int  # a map address (see IPV6): IPv4 as its 32-bit value, IPv6 tagged with IPV6
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
    # Every serving endpoint (ready or terminating). A tracked UDP flow whose backend is in none
    # of the service's sets any more (after load() or update_service()) is forgotten by its next
    # packet, which selects again.
    serving: tuple[int, ...] = ()
    affinity_timeout_s: int = 0  # ClientIP session affinity timeout; 0: no affinity
    # A dual-stack service port is two Services, one per family (like kube-proxy's two proxiers):
    # its frontends and backends are all of this family.
    family: int = 4


FRONTEND_KINDS = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalIP")


def service_label(service: Service) -> str:
    """A map Service's name for reports, unique in the maps: the service port's name, with
    " (IPv6)" for the IPv6 half of a service port (the IPv4 one keeps the plain name)."""
    return f"{service.name} (IPv6)" if service.family == 6 else service.name


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
    """What the dataplane knows of the node it runs on (map addresses of both families)."""

    primary_ip: int = 0  # IPv4 masquerade (SNAT) address; 0: no IPv4 masquerading possible
    local_ips: tuple[int, ...] = ()  # the node's own addresses (node-local sources)
    pod_cidrs: tuple[tuple[int, int], ...] = ()  # clusterCIDR: which sources are pod traffic
    masquerade_all: bool = False
    # Addresses of ClusterIP services: a packet to one of them on a port no service has is
    # rejected, like kube-proxy does.
    service_ips: tuple[int, ...] = ()
    primary_ip6: int = 0  # IPv6 masquerade address (an IPV6-tagged address); 0: none
    # ServiceCIDR prefixes: a new flow to an address in them that no service has is dropped.
    service_cidrs: tuple[tuple[int, int], ...] = ()


_ID = attrgetter("id")
_IP = attrgetter("ip")
_SERVICE = attrgetter("service")
_KIND = attrgetter("kind")
_FAMILY = attrgetter("family")
_FRONTEND_KEY = attrgetter("ip", "port", "proto")
_FRONTEND_KIND_SET = frozenset(FRONTEND_KINDS)


def _valid_addresses(addresses: list[int]) -> bool:
    """True only if _check_address passes for every one (usually a min and a max)."""
    if not addresses or (min(addresses) >= 0 and max(addresses) < 1 << 32):
        return True  # none, or all IPv4
    if min(addresses) < 0:
        return False
    ipv6 = [address for address in addresses if address >= 1 << 32]
    return (min(ipv6) >= IPV6 and max(ipv6) < IPV6 << 1
            and not any((address & (IPV6 - 1)) >> 32 == 0xFFFF for address in ipv6))


@dataclass(slots=True)
class Maps:
    """Everything a core needs; ids index these lists directly (entry i has id i + 1).

    Made with Maps(...), the maps are checked (check()); Maps.unchecked(...) skips that for
    maps fastpath made itself. Either way a core's load() refuses ids it would index out of
    range, whatever was changed after.
    """

    services: list[Service] = field(default_factory=list)
    frontends: list[Frontend] = field(default_factory=list)
    backends: list[Backend] = field(default_factory=list)
    node: NodeView = field(default_factory=NodeView)

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def unchecked(cls, services: list[Service], frontends: list[Frontend], backends: list[Backend],
                  node: NodeView) -> Maps:
        """Maps without check(): for those fastpath's compiler and its cache build, right by
        construction (the compiler's tests check its output; checking a million backends again
        would be an eighth of a big compile)."""
        maps = object.__new__(cls)
        maps.services, maps.frontends, maps.backends, maps.node = services, frontends, backends, node
        return maps

    def check(self) -> None:
        """Raise ValueError (one line, naming the first bad item) unless ids are dense and
        match their positions, every id a service or frontend names exists, frontends are
        unique, families agree and addresses are map addresses."""
        # A big cluster's maps hold a million backends: check them in bulk (C-level passes over
        # each field), and only when that finds a problem go item by item for the error.
        try:
            valid = self._valid()
        except (TypeError, ValueError, IndexError, KeyError, AttributeError):  # not even comparable:
            valid = False  # the item checks say what
        if not valid:
            self._check_items()
        self._check_node()

    def _valid(self) -> bool:
        """True only if _check_items() passes (False can also mean: let it decide)."""
        services, backends, frontends = self.services, self.backends, self.frontends
        if list(map(_ID, services)) != list(range(1, len(services) + 1)):
            return False
        if frontends:
            owners = list(map(_SERVICE, frontends))
            if min(owners) < 1 or max(owners) > len(services):
                return False
            if len(set(map(_FRONTEND_KEY, frontends))) != len(frontends):
                return False
            if not set(map(_KIND, frontends)) <= _FRONTEND_KIND_SET:
                return False
        # The backends' ids and addresses, and every id a service names: a million ids are
        # checked in one compiled pass (without the build, the item checks decide).
        try:
            from fastpath._compile import members_valid
        except ImportError:
            return False
        if not members_valid(services, backends, Service, Backend):
            return False
        if frontends:
            frontend_ips = list(map(_IP, frontends))
            if not _valid_addresses(frontend_ips):
                return False
            service_families = [0, *map(_FAMILY, services)]
            if [6 if ip >= IPV6 else 4 for ip in frontend_ips] != list(map(service_families.__getitem__, owners)):
                return False
            ranges = [network for frontend in frontends for network, _ in frontend.source_ranges]
            if not _valid_addresses(ranges):
                return False
        return True

    def _check_items(self) -> None:
        """The checks of _valid(), item by item: raises ValueError naming the first bad item."""
        for position, item in enumerate(self.services):
            if item.id != position + 1:
                raise ValueError(f"service {item.name!r} has id {item.id!r}, expected {position + 1}")
        for position, item in enumerate(self.backends):
            if item.id != position + 1:
                raise ValueError(f"backend {item.name!r} has id {item.id!r}, expected {position + 1}")
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
        for backend in self.backends:
            _check_address(backend.ip, f"backend {backend.name!r}")
        # Index 0 stands for an id out of range (ids are 1..N).
        families = [0] + [6 if backend.ip >= IPV6 else 4 for backend in self.backends]
        for service in self.services:
            if service.family not in (4, 6):
                raise ValueError(f"service {service.name!r} has family {service.family!r}, not 4 or 6")
            for backend_id in (*service.backends, *service.local_backends, *service.serving):
                family = families[backend_id] if 0 < backend_id < len(families) else 0
                if family != service.family:
                    if family == 0:
                        raise ValueError(f"service {service.name!r} names unknown backend id {backend_id}")
                    raise ValueError(f"service {service.name!r} (IPv{service.family}) names backend "
                                     f"{self.backends[backend_id - 1].name!r} of the other family")
        for frontend in self.frontends:
            _check_address(frontend.ip, f"frontend {frontend}")
            if family_of(frontend.ip) != self.services[frontend.service - 1].family:
                raise ValueError(f"frontend {frontend} and its service are of different families")
            for prefix in frontend.source_ranges:
                _check_prefix(prefix, f"frontend {frontend} source range")

    def _check_node(self) -> None:
        node = self.node
        for address in (node.primary_ip, *node.local_ips, *node.service_ips):
            _check_address(address, "node address")
        if node.primary_ip >= IPV6:
            raise ValueError("node.primary_ip must be IPv4 (IPv6 goes in primary_ip6)")
        if node.primary_ip6 and node.primary_ip6 < IPV6:
            raise ValueError("node.primary_ip6 must be an IPv6 map address")
        _check_address(node.primary_ip6, "node.primary_ip6")
        for prefix in node.pod_cidrs:
            _check_prefix(prefix, "node.pod_cidrs")
        for prefix in node.service_cidrs:
            _check_prefix(prefix, "node.service_cidrs")


def ids_in_place(maps: Maps) -> bool:
    """What a core's load() makes sure of before it indexes anything by id (Maps.check() checks
    more): every backend's and service's id is its position + 1, and every id a service's sets
    or a frontend names is an int of an existing backend or service."""
    backends, services = len(maps.backends), len(maps.services)

    def is_id(value: object, count: int) -> bool:
        return type(value) is int and 1 <= value <= count

    return (all(type(b.id) is int and b.id == i for i, b in enumerate(maps.backends, start=1))
            and all(type(s.id) is int and s.id == i for i, s in enumerate(maps.services, start=1))
            and all(is_id(backend_id, backends) for s in maps.services
                    for backend_id in (*s.backends, *s.local_backends, *s.serving))
            and all(is_id(f.service, services) for f in maps.frontends))


def check_service_update(maps: Maps, service: Service, new_backends: Sequence[Backend]) -> None:
    """What a core's update_service(service, new_backends) accepts, given the maps it holds: one
    line of ValueError otherwise (both cores check with this, before changing anything).

    `service` replaces the service of its id (same name and family: ids keep their meaning);
    `new_backends` continue the backend ids (len(maps.backends) + 1, ...); the service's sets
    name only backends of its family, known or new.
    """
    if not isinstance(service, Service):
        raise ValueError(f"update_service: expected a fastpath.maps.Service, got {type(service).__name__}")
    count = len(maps.services)
    if not isinstance(service.id, int) or not 1 <= service.id <= count:
        raise ValueError(f"update_service: service id {service.id!r} is not loaded (ids 1..{count})")
    loaded = maps.services[service.id - 1]
    if (service.name, service.family) != (loaded.name, loaded.family):
        raise ValueError(f"update_service: service {service.id} is {loaded.name!r} (IPv{loaded.family}), "
                         f"not {service.name!r} (IPv{service.family})")
    timeout = service.affinity_timeout_s
    if not isinstance(timeout, int) or not 0 <= timeout < 1 << 32:
        raise ValueError(f"update_service: affinity_timeout_s {timeout!r} of {service.name!r} is out of range")
    known = len(maps.backends)
    for number, backend in enumerate(new_backends, start=known + 1):
        if not isinstance(backend, Backend) or backend.id != number:
            raise ValueError(f"update_service: new backend {backend!r} must be a Backend with id {number}")
        _check_address(backend.ip, f"update_service: backend {backend.name!r}")
        if not isinstance(backend.port, int) or not 0 <= backend.port <= 0xFFFF:
            raise ValueError(f"update_service: backend {backend.name!r} has port {backend.port!r}")
    # Ids the loaded service already names were checked when they came in.
    try:
        named = {*service.backends, *service.local_backends, *service.serving}
    except TypeError:
        raise ValueError(f"update_service: service {service.name!r} names backend ids that are no integers") from None
    for backend_id in named.difference(loaded.backends, loaded.local_backends, loaded.serving):
        if not isinstance(backend_id, int) or not 1 <= backend_id <= known + len(new_backends):
            raise ValueError(f"update_service: service {service.name!r} names unknown backend id {backend_id!r}")
        backend = maps.backends[backend_id - 1] if backend_id <= known else new_backends[backend_id - known - 1]
        if family_of(backend.ip) != service.family:
            raise ValueError(f"update_service: service {service.name!r} (IPv{service.family}) names backend "
                             f"{backend.name!r} of the other family")

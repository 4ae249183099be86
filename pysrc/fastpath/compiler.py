"""The compiler: cluster state in, dataplane maps out. All routing policy is decided here.

The maps describe the dataplane of one node (kube-proxy's view; see kube-proxy-rules.md). Like
kube-proxy in dual-stack mode, which runs one proxier per IP family, every family is compiled on
its own: a service port gets one map Service per family it has a cluster IP of (the same name,
`family` 4 or 6), and that Service's frontends, endpoints, source ranges, hints, policies and
masquerade address are all of its family.

Node. `compile_maps(state, node=NAME)` picks the Node the dataplane runs on (the only Node in the
input when there is just one, else the KubeProxyConfiguration's hostnameOverride). Per family,
its first InternalIP (else ExternalIP), or the configuration's bindAddress of that family, is the
primary IP (the masquerade address: NodeView.primary_ip and primary_ip6); its addresses of both
families are the node-local sources; its zone label decides zone hints. `clusterCIDR` (one CIDR
per family, "v4cidr,v6cidr"; or, with detectLocalMode NodeCIDR, the Node's podCIDRs) says which
sources are pods.

Frontends, per TCP/UDP/SCTP service port and family: the ClusterIP of the family (`clusterIPs`),
the externalIPs and the load-balancer ingress IPs (ipMode unset or VIP) of the family, and the
nodePort on each NodePort address of the node of the family (nodePortAddresses: "primary" by
default, the primary IP of each family; CIDRs pick the node's addresses inside them, and a
family without any CIDR listed gets every node address of the family). ClusterIP frontends carry
internalTrafficPolicy Local, the others externalTrafficPolicy Local (honoured for NodePort and
LoadBalancer services and services with externalIPs); load-balancer frontends carry the
loadBalancerSourceRanges of their family. Headless and ExternalName services get nothing.
Addresses are read as kube-proxy's Go code reads them: an IPv4-mapped IPv6 address
(::ffff:a.b.c.d) is the IPv4 address.

Endpoints come from the service's EndpointSlices of the family (addressType IPv4 or IPv6)
through the slice port matching the service port's name and protocol, or, for a service with a
selector and no EndpointSlice in the input, from the Pods it selects (their podIP of the family,
as the EndpointSlice controller would build them). Per service port and family:
  cluster set  ready endpoints, narrowed by topology hints when they apply to this node; when none
               is ready anywhere, the serving and terminating ones
  local set    this node's ready endpoints, else its serving and terminating ones
  serving      every serving endpoint (stale UDP flows to any other are forgotten on reload)

Service CIDRs: the CIDRs of every ServiceCIDR object (both families) are NodeView.service_cidrs.
A new flow to an address inside them that is no frontend and no ClusterIP of any service is
dropped, as kube-proxy drops traffic to unallocated ClusterIPs; without ServiceCIDR objects in
the input there are none, and such traffic passes.

Output is deterministic: services (IPv4 before IPv6 of one service port), backends, frontends
and each service's backend lists are sorted, so the same input gives identical maps on every
run and every node builds the same selection tables.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ._compile import Gatherer as _Gatherer
from ._compile import candidates as _compiled_candidates
from ._compile import checked_port as _checked_port
from ._compile import frontends as _compiled_frontends
from ._compile import map_address
from ._compile import map_services as _map_services
from ._compile import port_sets as _port_sets
from ._compile import service_ports as _compiled_service_ports
from ._compile import slices_by_service as _compiled_slices_by_service
from .gcpause import collection_paused
from .maps import (
    FRONTEND_KINDS,
    IPV6,
    PROTOCOL_NAMES,
    Backend,
    Frontend,
    Maps,
    NodeView,
    address_bits,
    family_of,
    format_address,
    in_prefix,
    service_label,
)
from .model import (
    DEFAULT_AFFINITY_TIMEOUT,
    NODE_PORT_ADDRESSES_PRIMARY,
    ClusterError,
    ClusterState,
    EndpointSlice,
    KubeProxyConfiguration,
    Node,
    Pod,
    Service,
    ServicePort,
)

__all__ = ["CompileResult", "compile_maps", "service_label"]

FAMILIES = (4, 6)

# Which frontend keeps an (ip, port, protocol) claimed twice. kube-proxy matches ClusterIPs,
# external IPs and load-balancer IPs in one map before it looks at NodePorts; of an address that
# is both a load-balancer IP and an external IP, its source-range firewall still applies.
_CLAIM_ORDER = {"ClusterIP": 0, "LoadBalancer": 1, "ExternalIP": 2, "NodePort": 3}
_KIND_ORDER = {kind: index for index, kind in enumerate(FRONTEND_KINDS)}

# KubeProxyConfiguration conntrack settings -> the core's conntrack timeout keys.
_TIMEOUT_KEYS = (
    ("established", "tcp_established_timeout"),
    ("closing", "tcp_close_wait_timeout"),
    ("other", "udp_timeout"),
)

_LOOPBACKS = ((0x7F000000, 8), (IPV6 | 1, 128))  # 127.0.0.0/8 and ::1/128


@dataclass(frozen=True, slots=True)
class CompileResult:
    maps: Maps
    notes: tuple[str, ...] = ()  # what was left out and why, one line each, stable order
    warnings: tuple[str, ...] = ()  # input that looks wrong but does not stop compiling
    skipped: Counter[str] = field(default_factory=Counter)  # e.g. {"headless service": 2}
    # Conntrack timeouts in seconds for the engine, keyed like its `timeouts_s` ("established",
    # "closing", "other"); only those the KubeProxyConfiguration sets (> 0).
    timeouts_s: dict[str, float] = field(default_factory=dict)
    node: str | None = None  # the node the maps were compiled for (None: no node known)


class _Candidate(NamedTuple):
    """One endpoint of one service port, as kube-proxy's endpoint info sees it.

    Made for the incremental path (endpoint_sets, remembered between changes) and for endpoints
    built from Pods; the full compile keeps endpoints as compiled records instead
    (fastpath._compile.Gatherer). A named tuple: the compiled code makes and reads it by index.
    """

    key: int  # _backend_key(ip, port): (ip, port) as one int, ordered like the pair
    name: str  # the backend's name: "10.244.1.5:8080 (namespace/pod)", IPv6 in brackets
    ready: bool
    serving: bool
    terminating: bool
    local: bool
    zone_hints: tuple[str, ...]
    node_hints: tuple[str, ...]


# A backend's (ip, port) packed as ip << 16 | port: an int hashes and sorts several times faster
# than the pair, in the same order (ports are 0..65535; _checked_port makes sure).
_PORT_BITS = 16
_PORT_MASK = (1 << _PORT_BITS) - 1


def _backend_key(ip: int, port: int) -> int:
    return ip << _PORT_BITS | port


class _Port(NamedTuple):
    """A service port of one family: it gets a service id."""

    service: Service
    port: ServicePort
    family: int  # 4 or 6
    cluster_ip: int  # the ClusterIP of the family, a map address
    proto: int
    name: str

    @property
    def label(self) -> str:
        return f"{self.name} (IPv6)" if self.family == 6 else self.name


class _Sets(NamedTuple):
    cluster: list[_Candidate]
    local: list[_Candidate]
    serving: list[_Candidate]


class _NodeInfo(NamedTuple):
    name: str | None
    zone: str | None
    view: NodeView
    node_port_ips: Mapping[int, tuple[int, ...]]  # family -> where nodePorts listen

    def primary(self, family: int) -> int:
        return self.view.primary_ip6 if family == 6 else self.view.primary_ip


_NO_HINTS: tuple[str, ...] = ()


def compile_maps(state: ClusterState, node: str | None = None) -> CompileResult:
    """Compile `state` into the maps of the dataplane running as `node` (a Node name).

    Without `node`, the only Node of the input is used, else the KubeProxyConfiguration's
    hostnameOverride; with no Node at all the maps have no node addresses (no NodePorts, no
    masquerading). `node` also decides which endpoints are local and, through the Node's zone
    label, which topology hints apply.

    Raises ClusterError (one line) if the named node is not among the input's Nodes, or if the
    input has several Nodes and none is chosen.
    """
    with collection_paused():
        return _compile(state, node)


def _compile(state: ClusterState, node: str | None) -> CompileResult:
    config = state.proxy_config or KubeProxyConfiguration()
    skipped: Counter[str] = Counter()
    notes: list[str] = []
    warnings: list[str] = []

    service_ips: set[int] = set()
    ports = _service_ports(state.services, skipped, service_ips)
    # The families the node's view matters for (IPv4 when there is no service port at all).
    families = tuple(sorted({entry.family for entry in ports})) or (4,)
    info = _node_info(state, node, config, families, notes, service_ips)
    with_other_slices: set[tuple[str, str]] = set()
    slices = _slices_by_service(state.endpoint_slices, skipped, with_other_slices)
    pods = _PodIndex(state.pods)

    # Every service port's endpoints, gathered as compiled records (no Python object per
    # endpoint but its name): its sets chosen by the rules of endpoint_sets, then numbered.
    gatherer = _Gatherer(info.name, info.zone, skipped)
    from_pods: dict[tuple[str, str], list[tuple[dict[int, str], Pod]]] = {}

    def pod_candidates(entry: _Port) -> list[_Candidate] | None:
        """A port with no EndpointSlice of its family: its endpoints from Pods when its service
        has a selector and no EndpointSlice at all (of any family); None: it has none."""
        service = entry.service
        key = service.namespace, service.name
        if (service.selector is None or (*key, 4) in slices or (*key, 6) in slices
                or key in with_other_slices):
            return None
        if key not in from_pods:
            from_pods[key] = pods.selected(service)
        return _pod_candidates(service, entry.port, entry.family, from_pods[key], info.name)

    for index, summary in gatherer.add_ports(ports, slices, pod_candidates):
        _endpoint_notes(ports[index], summary, info, notes)
    if from_pods and state.pods:
        notes.append(f"endpoints of {len(from_pods)} service(s) built from Pods "
                     "(no EndpointSlice in the input for them)")

    # One backend per distinct (ip, port) over every set of every service port, ids in (ip, port)
    # order (IPv4 first); an (ip, port) in several service ports, or named differently by two
    # slices, is one backend named by the smallest name. Per service port, each set's ids sorted.
    backends, id_sets = gatherer.number(Backend)
    del gatherer
    # MapService(id, name, cluster set, local set, serving set, _affinity_timeout, family) per port
    services = _map_services(ports, id_sets, _affinity_timeout)
    frontends = _frontends(ports, info, warnings)

    notes.extend(_config_notes(config))
    notes.extend(f"skipped {count} {what}" for what, count in sorted(skipped.items()))
    # Right by construction (tests/test_compiler*.py check every compiled Maps): not checked again.
    maps = Maps.unchecked(services=services, frontends=frontends, backends=backends, node=info.view)
    return CompileResult(maps=maps, notes=tuple(notes), warnings=tuple(warnings), skipped=skipped,
                         timeouts_s=_timeouts(config), node=info.name)


# --------------------------------------------------------------------------------------------
# The node


def _node_info(state: ClusterState, node: str | None, config: KubeProxyConfiguration,
               families: Sequence[int], notes: list[str], service_ips: Iterable[int]) -> _NodeInfo:
    name, found = _choose_node(state, node, config)
    if node is None and name is not None and config.hostname_override:
        notes.append(f"node {name} chosen by the KubeProxyConfiguration's hostnameOverride")
    # InternalIPs then ExternalIPs; the first of each family is that family's primary IP
    # (kube-proxy's node IPs), unless bindAddress names one.
    addresses = [_address(a) for a in (found.ips() if found else ())]
    primaries = {family: next((a for a in addresses if family_of(a) == family), 0) for family in FAMILIES}
    bind = config.bind_address
    if bind is not None:
        address = _address(bind)
        if address not in (0, IPV6):  # 0.0.0.0 and :: leave the node's addresses in charge
            primaries[family_of(address)] = address  # kube-proxy's bindAddress overrides its family's node IP
            addresses.append(address)
    local_ips = tuple(sorted(set(addresses)))
    if found is None:
        which = "no Node in the input" if name is None else f"Node {name} is not in the input"
        bound = [a for a in primaries.values() if a]
        if bound:
            notes.append(f"{which}: its only address is the bindAddress {format_address(bound[0])}")
        else:
            notes.append(f"{which}: no node addresses, so no NodePort frontends and no masquerading")
    else:
        for family in families:
            if not primaries[family]:
                notes.append(f"Node {name} has no IPv{family} address: no IPv{family} NodePort frontends "
                             f"and no IPv{family} masquerading")

    view = NodeView(
        primary_ip=primaries[4],
        local_ips=local_ips,
        pod_cidrs=_pod_cidrs(config, found, name, families, notes),
        masquerade_all=config.masquerade_all,
        service_ips=tuple(sorted(service_ips)),
        primary_ip6=primaries[6],
        service_cidrs=_service_cidrs(state, notes),
    )
    return _NodeInfo(name=name, zone=found.zone if found else None, view=view,
                     node_port_ips=_node_port_ips(config, primaries, local_ips))


def _choose_node(state: ClusterState, node: str | None, config: KubeProxyConfiguration) -> tuple[str | None, Node | None]:
    via = ""
    if node is None and config.hostname_override:
        # kube-proxy's own node name when it is set (trimmed and lower-cased, as kube-proxy does)
        node, via = config.hostname_override.strip().lower(), " (the KubeProxyConfiguration's hostnameOverride)"
    names = sorted(n.name for n in state.nodes)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    if node is not None:
        found = state.node(node)
        if found is None and state.nodes:
            raise ClusterError(f"no Node named {node!r}{via} in the cluster state (Nodes: {shown})")
        return node, found
    if len(state.nodes) == 1:
        return state.nodes[0].name, state.nodes[0]
    if state.nodes:
        raise ClusterError(f"several Nodes ({shown}): choose one with --node")
    return None, None


def _pod_cidrs(config: KubeProxyConfiguration, node: Node | None, name: str | None,
               families: Sequence[int], notes: list[str]) -> tuple[tuple[int, int], ...]:
    """Which sources are pod traffic, as prefixes of both families (kube-proxy's local detector
    of each proxier: the CIDRs of its family)."""
    mode = config.detect_local_mode or "ClusterCIDR"
    if mode == "ClusterCIDR":
        prefixes = _prefixes(config.cluster_cidrs)
        if prefixes:  # without any clusterCIDR nothing is detected, as before dual-stack
            for family in families:
                if not any(family_of(network) == family for network, _ in prefixes):
                    notes.append(f"clusterCIDR has no IPv{family} range: no IPv{family} source counts "
                                 "as pod traffic")
        return prefixes
    if mode == "NodeCIDR":
        prefixes = _prefixes(node.pod_cidrs if node else ())
        for family in families:
            if not any(family_of(network) == family for network, _ in prefixes):
                if node is None:
                    why = "no Node" if name is None else f"Node {name} is not in the input"
                else:
                    why = f"Node {name} has no IPv{family} podCIDR"
                notes.append(f"detectLocalMode NodeCIDR and {why}: no IPv{family} source counts as pod traffic")
        return prefixes
    notes.append(f"detectLocalMode {mode} cannot be evaluated offline: no source counts as pod traffic")
    return ()


def _node_port_ips(config: KubeProxyConfiguration, primaries: Mapping[int, int],
                   local_ips: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
    """Per family, the node's addresses that nodePorts listen on (kube-proxy's NodePortAddresses
    of each proxier).

    "primary" (the default) is the primary IP of each family; CIDRs keep the node addresses
    inside them; a family with no CIDR of its own in the list (or a /0) gets every node address
    of the family. Loopback addresses never serve nodePorts.
    """
    listed = config.node_port_addresses or (NODE_PORT_ADDRESSES_PRIMARY,)
    if listed == (NODE_PORT_ADDRESSES_PRIMARY,):
        prefixes = tuple((ip, address_bits(ip)) for ip in primaries.values() if ip and not _loopback(ip))
    else:
        prefixes = _prefixes(listed)
    usable = tuple(ip for ip in local_ips if not _loopback(ip))
    found = {}
    for family in FAMILIES:
        mine = [prefix for prefix in prefixes if family_of(prefix[0]) == family]
        candidates = tuple(ip for ip in usable if family_of(ip) == family)
        if not mine or any(length == 0 for _, length in mine):
            found[family] = candidates
        else:
            found[family] = tuple(ip for ip in candidates if any(in_prefix(ip, *prefix) for prefix in mine))
    return found


def _service_cidrs(state: ClusterState, notes: list[str]) -> tuple[tuple[int, int], ...]:
    """The CIDRs of every ServiceCIDR object, both families (kube-proxy's proxier of each family
    drops new traffic to the addresses of its family in them that no service has allocated)."""
    if not state.service_cidrs:
        return ()
    prefixes = _prefixes(cidr for service_cidr in state.service_cidrs for cidr in service_cidr.cidrs)
    names = ", ".join(sorted(service_cidr.name for service_cidr in state.service_cidrs))
    objects = "ServiceCIDRs" if len(state.service_cidrs) > 1 else "ServiceCIDR"
    shown = ", ".join(f"{format_address(network)}/{length}" for network, length in prefixes)
    notes.append(f"service CIDRs {shown} ({objects} {names}): new flows to an address in them "
                 "that no service has are dropped")
    return prefixes


def _timeouts(config: KubeProxyConfiguration) -> dict[str, float]:
    timeouts: dict[str, float] = {}
    for key, attribute in _TIMEOUT_KEYS:
        seconds = getattr(config.conntrack, attribute)
        if seconds is not None and seconds > 0:  # kube-proxy leaves the kernel's value for 0
            timeouts[key] = int(seconds) if seconds == int(seconds) else seconds
    return timeouts


def _config_notes(config: KubeProxyConfiguration) -> list[str]:
    if config.conntrack.udp_stream_timeout:
        return ["conntrack.udpStreamTimeout is not used: the core has one UDP timeout (udpTimeout)"]
    return []


# --------------------------------------------------------------------------------------------
# Service ports and frontends


def _service_ports(services: Iterable[Service], skipped: Counter[str],
                   service_ips: set[int] | None = None) -> list[_Port]:
    """Every TCP/UDP/SCTP service port of each family the service has a ClusterIP of, in id order:
    (namespace, name, port name, protocol, family). `service_ips` (NodeView.service_ips) gets every
    ClusterIP of a service with ports (whatever their protocols).

    ExternalName and headless services have none (counted in `skipped`), nor has a service
    without a ClusterIP. kube-proxy's proxier of a family ignores the service's external and
    load-balancer IPs of the other family: without a ClusterIP of their family they are served
    by no proxier (counted). A port of another protocol is counted and left out. A port's name
    is "namespace/service:port" ("namespace/service" when the port is unnamed).

    Compiled (fastpath._compile.service_ports): at 100,000 services this Python loop and its
    sort were a fifth of the compile.
    """
    return _compiled_service_ports(services, skipped, service_ips, _Port)


class _FrontendClaim(NamedTuple):
    order: int  # _CLAIM_ORDER of its kind: which claim of an (ip, port, proto) wins
    service: int
    ip: int
    port: int
    proto: int
    kind: str
    local_policy: bool
    source_ranges: tuple[tuple[int, int], ...]


_CLUSTER_IP_ORDER = _CLAIM_ORDER["ClusterIP"]


def _frontends(ports: Sequence[_Port], info: _NodeInfo, warnings: list[str]) -> list[Frontend]:
    """The maps' frontends, by claims. Every service port claims its ClusterIP (ip, port, proto);
    one whose service has load-balancer ingress or external IPs, or which has a node port, also
    claims those addresses (_external_claims). Claims are taken in (_CLAIM_ORDER of their kind,
    service id, ip, port, proto) order, and the first claim of an (ip, port, proto) owns it: a
    later one, by another service port or of another kind, is ignored with a warning (the same
    address listed twice by one port is not worth one). The frontends are in (service id, kind's
    place in FRONTEND_KINDS, ip, port, proto) order.

    Compiled (fastpath._compile.frontends): the ClusterIP claims never leave C. At 100,000
    services this loop's tuples and dict were a tenth of the compile. ClusterIP comes first in
    both orders, which the compiled code relies on.
    """
    per_service: dict[tuple[str, str, int], tuple] = {}

    def external_claims(service_id: int, entry: _Port) -> list[_FrontendClaim]:
        service, port, family, _, proto, _ = entry
        service_key = (*service.key, family)
        if service_key not in per_service:  # the same for every port of the service
            vips = [ip for ip in (_address(a) for a in service.load_balancer_vips) if family_of(ip) == family]
            externals = [ip for ip in (_address(a) for a in service.external_ips) if family_of(ip) == family]
            ranges = _source_ranges(service, vips, info.primary(family), family)
            per_service[service_key] = (vips, externals, ranges, _external_policy_local(service))
        vips, externals, ranges, external_local = per_service[service_key]
        wanted: list[tuple[str, int, int, bool, tuple[tuple[int, int], ...]]] = [
            ("LoadBalancer", ip, port.port, external_local, ranges) for ip in vips]
        wanted += [("ExternalIP", ip, port.port, external_local, ()) for ip in externals]
        if port.node_port is not None:
            wanted += [("NodePort", ip, port.node_port, external_local, ()) for ip in info.node_port_ips[family]]
        return [_FrontendClaim(_CLAIM_ORDER[kind], service_id, ip, number, proto, kind, local, source)
                for kind, ip, number, local, source in wanted]

    def cluster_ip_claim(index: int) -> _FrontendClaim:
        service, port, _, cluster_ip, proto, _ = ports[index]
        return _FrontendClaim(_CLUSTER_IP_ORDER, index + 1, cluster_ip, port.port, proto, "ClusterIP",
                              service.internal_traffic_policy == "Local", ())

    frontends, refused = _compiled_frontends(ports, external_claims, _kept_order)
    for claim, owner in refused:
        claim = cluster_ip_claim(claim) if type(claim) is int else claim
        owner = cluster_ip_claim(owner) if type(owner) is int else owner
        warnings.append(f"{ports[claim.service - 1].label}: {_endpoint_text(claim.ip, claim.port)}/"
                        f"{PROTOCOL_NAMES[claim.proto]} ({claim.kind}) is already the {owner.kind} frontend of "
                        f"{ports[owner.service - 1].label}; ignored")
    return frontends


def _kept_order(claim: _FrontendClaim) -> tuple:
    """A kept claim's place among the frontends: (service id, kind's place in FRONTEND_KINDS, ...)."""
    return (claim.service, _KIND_ORDER[claim.kind], claim.ip, claim.port, claim.proto)


def _external_policy_local(service: Service) -> bool:
    """externalTrafficPolicy Local, honoured only for externally accessible services (kube-proxy)."""
    if service.external_traffic_policy != "Local":  # the usual case, checked first
        return False
    return service.type in ("NodePort", "LoadBalancer") or (service.type == "ClusterIP" and bool(service.external_ips))


def _source_ranges(service: Service, vips: Sequence[int], primary_ip: int,
                   family: int) -> tuple[tuple[int, int], ...]:
    """loadBalancerSourceRanges of the family as (network, length); () allows every source.

    kube-proxy's proxier of each family applies only the ranges of its family: with none of the
    family (or a /0 among them) every source of the family is allowed.
    """
    prefixes = tuple(prefix for prefix in _prefixes(service.load_balancer_source_ranges)
                     if family_of(prefix[0]) == family)
    if not prefixes or any(length == 0 for _, length in prefixes):
        return ()
    if primary_ip and any(in_prefix(primary_ip, *prefix) for prefix in prefixes):
        # Traffic from the node to its own LB VIP loops back with the VIP as source.
        prefixes = tuple(sorted({*prefixes, *((ip, address_bits(ip)) for ip in vips)}))
    return prefixes


def _affinity_timeout(service: Service) -> int:
    if service.session_affinity != "ClientIP":
        return 0
    return service.affinity_timeout or DEFAULT_AFFINITY_TIMEOUT


# --------------------------------------------------------------------------------------------
# Endpoints


def _endpoint_notes(entry: _Port, summary: tuple[int, bool, int], info: _NodeInfo, notes: list[str]) -> None:
    """Notes on a service port's sets, from (endpoints in its cluster set, whether they are ready
    ones, endpoints in its local set): what Gatherer.add_slices returns."""
    cluster, ready, local = summary
    if not cluster:
        notes.append(f"{entry.label}: no usable endpoint; traffic to it is rejected")
        return
    if not ready:  # the cluster set is the ready endpoints or, with none ready, the fallback
        notes.append(f"{entry.label}: no ready endpoint; using {cluster} serving terminating endpoint(s)")
    if local:
        return
    service = entry.service
    internal_local = service.internal_traffic_policy == "Local"
    external_local = _external_policy_local(service)
    if not (internal_local or external_local):  # the usual case: no Local policy to warn about
        return
    why = "no node given" if info.name is None else f"none on node {info.name}"
    if internal_local:
        notes.append(f"{entry.label}: internalTrafficPolicy Local and no local endpoint ({why})")
    external = entry.port.node_port is not None or any(
        family_of(_address(a)) == entry.family for a in (*service.external_ips, *service.load_balancer_vips))
    if external and external_local:
        notes.append(f"{entry.label}: externalTrafficPolicy Local and no local endpoint ({why}); "
                     "external clients are dropped")


def backend_address(key: int) -> tuple[int, int]:
    """A backend key (see _backend_key) as the backend's (ip, port)."""
    return key >> _PORT_BITS, key & _PORT_MASK


def _slices_by_service(
    slices: Iterable[EndpointSlice], skipped: Counter[str], other: set[tuple[str, str]]
) -> dict[tuple[str, str, int], list[EndpointSlice]]:
    """IPv4 and IPv6 slices grouped by (namespace, service name, family), each group sorted by
    slice name (the order that decides duplicates must not be the file order). A slice without
    the service-name label is counted in `skipped`; one of another address type (FQDN) too, and
    its (namespace, service name) goes into `other`.

    Compiled (fastpath._compile.slices_by_service): one pass over every slice of the cluster.
    """
    return _compiled_slices_by_service(slices, skipped, other)


# Candidates remembered between calls (see endpoint_sets): (namespace, slice name) -> (slice port
# number, family, node) -> id(endpoint) -> (the Endpoint, which keeps the id its own; its
# candidate, or None for an endpoint skipped).
CandidateMemo = dict[tuple[str, str], dict[tuple[int, int, str | None], dict[int, tuple[Any, Any]]]]


def _candidates(port: ServicePort, family: int, slices: Iterable[EndpointSlice], node: str | None,
                skipped: Counter[str], memo: CandidateMemo | None = None) -> list[_Candidate]:
    """The service port's endpoints from its slices of the family, in slice order.

    An (ip, port) can be listed twice (the same pod in two slices while the controller moves
    it): choosing the sets (_port_sets, Gatherer) keeps the non-terminating one, as in
    kube-proxy; then the ready, serving, local one, so the result never depends on which slice
    was read first. Only an endpoint's first address counts; an IPv4-mapped
    address in an IPv6 slice is skipped (and counted). Backend names read
    "10.244.1.5:8080 (namespace/pod)", or name the slice when the endpoint has no targetRef.

    This runs once per endpoint of the cluster (a million in a big one), so the loop is compiled
    (fastpath._compile.candidates). With `memo` (see endpoint_sets), an Endpoint object that made
    a candidate for the same slice port before gives that candidate again.
    """
    return _compiled_candidates(port, family, slices, node, skipped, memo, _Candidate)


class _PodIndex:
    """Pods by label, for selectors; terminal pods and pods without an address left out."""

    def __init__(self, pods: Iterable[Pod]) -> None:
        usable = []
        for pod in pods:
            if pod.phase in ("Succeeded", "Failed") or not pod.pod_ips:
                continue
            # One address per family: the first podIP of each (status.podIPs holds at most one
            # per family; the EndpointSlice controller publishes each in its family's slice).
            addresses: dict[int, str] = {}
            for text in pod.pod_ips:
                address = _address(text)
                if (address >= IPV6) != (":" in text):  # IPv4-mapped: shown as the IPv4 address
                    text = format_address(address)
                addresses.setdefault(family_of(address), text)
            usable.append((pod.namespace, pod.name, frozenset(pod.labels), addresses, pod))
        usable.sort(key=lambda entry: entry[:2])
        self.pods = usable
        # (namespace, label key, label value) -> positions in self.pods, ascending
        self.by_label: defaultdict[tuple[str, str, str], list[int]] = defaultdict(list)
        for position, (namespace, _, labels, _, _) in enumerate(usable):
            for key, value in labels:
                self.by_label[(namespace, key, value)].append(position)

    def selected(self, service: Service) -> list[tuple[dict[int, str], Pod]]:
        """(family -> address, pod) of the pods the service's selector matches, by pod name."""
        selector = frozenset(service.selector or ())
        if not selector:
            return []
        # Start from the rarest label of the selector, then check the others.
        fewest = min((self.by_label.get((service.namespace, key, value), []) for key, value in selector), key=len)
        return [(self.pods[i][3], self.pods[i][4]) for i in fewest if selector <= self.pods[i][2]]


def _pod_candidates(service: Service, port: ServicePort, family: int, pods: Iterable[tuple[dict[int, str], Pod]],
                    node: str | None) -> list[_Candidate]:
    """The endpoints the EndpointSlice controller would publish for this port of the selected pods,
    in the slice of the family (the pods' podIP of the family).

    serving = the pod's Ready condition, terminating = deletionTimestamp set, ready = serving and
    not terminating (always ready with publishNotReadyAddresses). A named targetPort resolves
    through each pod's container ports (same name and protocol); a pod without it is no endpoint
    of this port. Two pods of one (ip, port) (host-network pods) are both listed; choosing the
    sets keeps the preferred one (see _candidates).
    """
    found: list[_Candidate] = []
    target = port.target_port
    for addresses, pod in pods:
        address = addresses.get(family)
        if address is None:
            continue
        if isinstance(target, str):
            number = next((p.port for p in pod.ports if p.name == target and p.protocol == port.protocol), None)
            if number is None:
                continue
        else:
            number = target
        ip = _address(address)
        endpoint = f"[{address}]:{number}" if ip >= IPV6 else f"{address}:{number}"
        found.append(_Candidate(
            key=_backend_key(ip, _checked_port(number)),
            name=f"{endpoint} ({pod.namespace}/{pod.name})",
            ready=service.publish_not_ready_addresses or (pod.ready and not pod.terminating),
            serving=pod.ready,
            terminating=pod.terminating,
            local=node is not None and pod.node_name == node,
            zone_hints=_NO_HINTS,
            node_hints=_NO_HINTS,
        ))
    return found


def endpoint_sets(entry: _Port, slices: Iterable[EndpointSlice],
                  pods: Iterable[tuple[dict[int, str], Pod]] | None, node: str | None,
                  zone: str | None, skipped: Counter[str], memo: CandidateMemo | None = None) -> _Sets:
    """One service port's cluster, local and serving sets of its family: from its EndpointSlices
    of the family (sorted by name), or from the Pods it selects when `pods` is given (a selector
    service without any EndpointSlice). The whole policy of one service port; also used by
    fastpath.endpoints to apply one EndpointSlice change without a full compile.

    `memo` (a dict kept by the caller between calls, first empty) remembers the candidate each
    Endpoint object of each slice made for each slice port: a slice's next version that shares
    the Endpoint objects which did not change (fastpath.model.parse_endpoint_slice reuses them)
    makes only the others again. It holds the Endpoints of each slice's recent versions, up to
    twice as many as the slice has; forget a deleted slice with memo.pop((namespace, name),
    None). The sets are the same with or without it."""
    if pods is not None:
        candidates = _pod_candidates(entry.service, entry.port, entry.family, pods, node)
    else:
        candidates = _candidates(entry.port, entry.family, slices, node, skipped, memo)
    # cluster: ready endpoints, narrowed by node hints, else zone hints, when every ready one
    # carries that kind of hint and one names this node / zone; with none ready, the serving
    # terminating ones. local: this node's ready endpoints, else its serving terminating ones
    # (hints do not apply). serving: every serving endpoint. Compiled: it runs once per port.
    return _port_sets(candidates, node, zone, _Sets)


# --------------------------------------------------------------------------------------------
# Addresses (map integers: IPv4 as its 32-bit value, IPv6 tagged with maps.IPV6)

# _address(text): a model address (canonical text) as a map address, without ipaddress'
# overhead; an IPv4-mapped IPv6 address is its IPv4 address, as in kube-proxy (Go's net.IP).
_address = map_address


def _endpoint_text(address: int, port: int) -> str:
    text = format_address(address)
    return f"[{text}]:{port}" if address >= IPV6 else f"{text}:{port}"


def _prefixes(cidrs: Iterable[str]) -> tuple[tuple[int, int], ...]:
    """Normalised CIDRs of both families as sorted, distinct (network, length) pairs ("primary"
    and anything else that is no CIDR left out). An IPv4-mapped IPv6 prefix is the IPv4 one."""
    found = set()
    for cidr in cidrs:
        text, slash, length = cidr.partition("/")
        if not slash:
            continue
        network, bits = _address(text), int(length)
        if ":" in text and network < IPV6:  # ::ffff:a.b.c.d/len: an IPv4 prefix of len - 96
            bits = max(bits - 96, 0)
        found.add((network, bits))
    return tuple(sorted(found))


def _loopback(ip: int) -> bool:
    return any(in_prefix(ip, *prefix) for prefix in _LOOPBACKS)

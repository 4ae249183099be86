"""The compiler: cluster state in, dataplane maps out. All routing policy is decided here.

The maps describe the dataplane of one node (kube-proxy's view; see kube-proxy-rules.md):

Node. `compile_maps(state, node=NAME)` picks the Node the dataplane runs on (the only Node in the
input when there is just one, else the KubeProxyConfiguration's hostnameOverride). Its first IPv4
InternalIP (else ExternalIP), or the configuration's bindAddress, is the primary IP (masquerade
address); its IPv4 addresses are the node-local sources; its zone label decides zone hints.
`clusterCIDR` (or, with detectLocalMode NodeCIDR, the Node's podCIDRs) says which sources are pods.

Frontends, per IPv4 TCP/UDP/SCTP service port: the IPv4 ClusterIP, the IPv4 externalIPs, the IPv4
load-balancer ingress IPs whose ipMode is unset or VIP, and the nodePort on each NodePort address
of the node (nodePortAddresses: "primary" by default; CIDRs pick the node's addresses inside
them). ClusterIP frontends carry internalTrafficPolicy Local, the others externalTrafficPolicy
Local (honoured for NodePort and LoadBalancer services and services with externalIPs);
load-balancer frontends carry loadBalancerSourceRanges. Headless and ExternalName services get
nothing; IPv6 addresses are counted in `CompileResult.skipped`.

Endpoints come from the service's IPv4 EndpointSlices through the slice port matching the service
port's name and protocol, or, for a service with a selector and no EndpointSlice in the input, from
the Pods it selects (as the EndpointSlice controller would build them). Per service port:
  cluster set  ready endpoints, narrowed by topology hints when they apply to this node; when none
               is ready anywhere, the serving and terminating ones
  local set    this node's ready endpoints, else its serving and terminating ones
  serving      every serving endpoint (stale UDP flows to any other are forgotten on reload)

Output is deterministic: services, backends, frontends and each service's backend lists are
sorted, so the same input gives identical maps on every run and every node builds the same
selection tables.
"""
from __future__ import annotations

import socket
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .maps import FRONTEND_KINDS, PROTOCOL_NUMBERS, Backend, Frontend, Maps, NodeView
from .maps import Service as MapService
from .model import (
    DEFAULT_AFFINITY_TIMEOUT,
    NODE_PORT_ADDRESSES_PRIMARY,
    ClusterError,
    ClusterState,
    Endpoint,
    EndpointSlice,
    KubeProxyConfiguration,
    Node,
    Pod,
    Service,
    ServicePort,
    ip_family,
)

__all__ = ["CompileResult", "compile_maps"]

# Which frontend keeps an (ip, port, protocol) claimed twice. kube-proxy matches ClusterIPs,
# external IPs and load-balancer IPs in one map before it looks at NodePorts; of an address that
# is both a load-balancer IP and an external IP, its source-range firewall still applies.
_CLAIM_ORDER = {"ClusterIP": 0, "LoadBalancer": 1, "ExternalIP": 2, "NodePort": 3}
_KIND_ORDER = {kind: index for index, kind in enumerate(FRONTEND_KINDS)}
_PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}

# KubeProxyConfiguration conntrack settings -> the core's conntrack timeout keys.
_TIMEOUT_KEYS = (
    ("established", "tcp_established_timeout"),
    ("closing", "tcp_close_wait_timeout"),
    ("other", "udp_timeout"),
)

_LOOPBACK = (0x7F000000, 8)


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

    A named tuple, not a dataclass: a large cluster makes hundreds of thousands of these.
    """

    ip: int
    port: int
    address: str  # the ip as text, for names
    ready: bool
    serving: bool
    terminating: bool
    local: bool
    zone_hints: frozenset[str]
    node_hints: frozenset[str]
    owner: str  # "namespace/pod" from targetRef or the Pod, else "namespace/slice"


class _Port(NamedTuple):
    """A service port that gets a service id."""

    service: Service
    port: ServicePort
    cluster_ip: int
    proto: int
    name: str


class _Sets(NamedTuple):
    cluster: list[_Candidate]
    local: list[_Candidate]
    serving: list[_Candidate]


class _NodeInfo(NamedTuple):
    name: str | None
    zone: str | None
    view: NodeView
    node_port_ips: tuple[int, ...]  # where nodePorts listen


_NO_HINTS: frozenset[str] = frozenset()


def compile_maps(state: ClusterState, node: str | None = None) -> CompileResult:
    """Compile `state` into the maps of the dataplane running as `node` (a Node name).

    Without `node`, the only Node of the input is used, else the KubeProxyConfiguration's
    hostnameOverride; with no Node at all the maps have no node addresses (no NodePorts, no
    masquerading). `node` also decides which endpoints are local and, through the Node's zone
    label, which topology hints apply.

    Raises ClusterError (one line) if the named node is not among the input's Nodes, or if the
    input has several Nodes and none is chosen.
    """
    config = state.proxy_config or KubeProxyConfiguration()
    skipped: Counter[str] = Counter()
    notes: list[str] = []
    warnings: list[str] = []

    info = _node_info(state, node, config, notes)
    ports = _service_ports(state.services, skipped)
    slices = _ipv4_slices_by_service(state.endpoint_slices, skipped)
    with_slices = {(s.namespace, s.service_name) for s in state.endpoint_slices if s.service_name is not None}
    pods = _PodIndex(state.pods)

    chosen: list[_Sets] = []
    from_pods: dict[tuple[str, str], list[tuple[str, Pod]]] = {}
    for entry in ports:
        service = entry.service
        if service.key not in with_slices and service.selector is not None:
            if service.key not in from_pods:
                from_pods[service.key] = pods.selected(service)
            candidates = _pod_candidates(service, entry.port, from_pods[service.key], info.name)
        else:
            candidates = _candidates(entry.port, slices.get(service.key, ()), info.name)
        sets = _Sets(
            cluster=_cluster_set(candidates, info.name, info.zone),
            local=_local_set(candidates),
            serving=[c for c in candidates if c.serving],
        )
        _endpoint_notes(entry, sets, info, notes)
        chosen.append(sets)
    if from_pods and state.pods:
        notes.append(f"endpoints of {len(from_pods)} service(s) built from Pods "
                     "(no EndpointSlice in the input for them)")

    # Every endpoint of any set is a backend (each service port's candidates are distinct by (ip, port)).
    backends, backend_ids = _number_backends(
        c for sets in chosen for c in {(c.ip, c.port): c for c in (*sets.cluster, *sets.local, *sets.serving)}.values())

    def ids(candidates: Iterable[_Candidate]) -> tuple[int, ...]:
        return tuple(sorted({backend_ids[(c.ip, c.port)] for c in candidates}))

    services = [
        MapService(
            id=service_id,
            name=entry.name,
            backends=ids(sets.cluster),
            local_backends=ids(sets.local),
            serving=ids(sets.serving),
            affinity_timeout_s=_affinity_timeout(entry.service),
        )
        for service_id, (entry, sets) in enumerate(zip(ports, chosen), start=1)
    ]
    frontends = _frontends(ports, info, warnings)

    notes.extend(_config_notes(config))
    notes.extend(f"skipped {count} {what}" for what, count in sorted(skipped.items()))
    maps = Maps(services=services, frontends=frontends, backends=backends, node=info.view)
    return CompileResult(maps=maps, notes=tuple(notes), warnings=tuple(warnings), skipped=skipped,
                         timeouts_s=_timeouts(config), node=info.name)


# --------------------------------------------------------------------------------------------
# The node


def _node_info(state: ClusterState, node: str | None, config: KubeProxyConfiguration, notes: list[str]) -> _NodeInfo:
    name, found = _choose_node(state, node, config)
    if node is None and name is not None and config.hostname_override:
        notes.append(f"node {name} chosen by the KubeProxyConfiguration's hostnameOverride")
    addresses = [_ipv4_int(a) for a in (found.ips(4) if found else ())]
    primary = addresses[0] if addresses else 0
    bind = config.bind_address
    if bind is not None and ip_family(bind) == 4 and _ipv4_int(bind) != 0:
        primary = _ipv4_int(bind)  # kube-proxy's bindAddress overrides the node's primary IP
        addresses.append(primary)
    local_ips = tuple(sorted(set(addresses)))
    if found is None:
        which = "no Node in the input" if name is None else f"Node {name} is not in the input"
        if primary:
            notes.append(f"{which}: its only address is the bindAddress {_ipv4_text(primary)}")
        else:
            notes.append(f"{which}: no node addresses, so no NodePort frontends and no masquerading")
    elif not addresses:
        notes.append(f"Node {name} has no IPv4 address: no NodePort frontends and no masquerading")

    view = NodeView(
        primary_ip=primary,
        local_ips=local_ips,
        pod_cidrs=_pod_cidrs(config, found, name, notes),
        masquerade_all=config.masquerade_all,
        service_ips=_service_ips(state.services),
    )
    return _NodeInfo(name=name, zone=found.zone if found else None, view=view,
                     node_port_ips=_node_port_ips(config, primary, local_ips))


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
               notes: list[str]) -> tuple[tuple[int, int], ...]:
    mode = config.detect_local_mode or "ClusterCIDR"
    if mode == "ClusterCIDR":
        cidrs: Sequence[str] = config.cluster_cidrs
    elif mode == "NodeCIDR":
        cidrs = node.pod_cidrs if node else ()
        if not any(ip_family(c.partition("/")[0]) == 4 for c in cidrs):
            if node is None:
                why = "no Node" if name is None else f"Node {name} is not in the input"
            else:
                why = f"Node {name} has no IPv4 podCIDR"
            notes.append(f"detectLocalMode NodeCIDR and {why}: no source counts as pod traffic")
    else:
        notes.append(f"detectLocalMode {mode} cannot be evaluated offline: no source counts as pod traffic")
        cidrs = ()
    return _ipv4_prefixes(cidrs)


def _node_port_ips(config: KubeProxyConfiguration, primary: int, local_ips: tuple[int, ...]) -> tuple[int, ...]:
    """The node's addresses that nodePorts listen on (kube-proxy's NodePortAddresses, IPv4).

    "primary" (the default) is the primary IP; CIDRs keep the node addresses inside them; with no
    IPv4 CIDR at all (or a /0) every node address qualifies.
    """
    listed = config.node_port_addresses or (NODE_PORT_ADDRESSES_PRIMARY,)
    if listed == (NODE_PORT_ADDRESSES_PRIMARY,):
        listed = (f"{_ipv4_text(primary)}/32",) if primary and not _in_prefix(primary, _LOOPBACK) else ()
    prefixes = _ipv4_prefixes(c for c in listed if c != NODE_PORT_ADDRESSES_PRIMARY)
    usable = tuple(ip for ip in local_ips if not _in_prefix(ip, _LOOPBACK))
    if not prefixes or any(length == 0 for _, length in prefixes):
        return usable
    return tuple(ip for ip in usable if any(_in_prefix(ip, prefix) for prefix in prefixes))


def _service_ips(services: Iterable[Service]) -> tuple[int, ...]:
    """IPv4 ClusterIPs of services that get dataplane entries (whatever their port protocols)."""
    found = {_ipv4_int(address) for s in services
             if s.type != "ExternalName" and not s.headless and s.ports
             for address in s.cluster_ips if ip_family(address) == 4}
    return tuple(sorted(found))


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


def _service_ports(services: Iterable[Service], skipped: Counter[str]) -> list[_Port]:
    """Every IPv4 TCP/UDP/SCTP service port, in id order: (namespace, name, port name, protocol)."""
    ports = []
    for service in services:
        cluster_ip = _ipv4_cluster_ip(service, skipped)
        if cluster_ip is None:
            continue
        for what, addresses in (("IPv6 external IP", service.external_ips),
                                ("IPv6 load-balancer IP", _load_balancer_vips(service))):
            count = sum(ip_family(a) == 6 for a in addresses)
            if count:
                skipped[what] += count
        for port in service.ports:
            if port.protocol not in PROTOCOL_NUMBERS:
                skipped[f"{port.protocol} service port"] += 1
            else:
                ports.append(_Port(service, port, cluster_ip, PROTOCOL_NUMBERS[port.protocol],
                                   _service_name(service, port)))
    ports.sort(key=lambda entry: (entry.service.namespace, entry.service.name, entry.port.name, entry.port.protocol))
    return ports


class _FrontendClaim(NamedTuple):
    order: int
    service: int
    ip: int
    port: int
    proto: int
    kind: str
    local_policy: bool
    source_ranges: tuple[tuple[int, int], ...]


def _frontends(ports: Sequence[_Port], info: _NodeInfo, warnings: list[str]) -> list[Frontend]:
    claims: list[_FrontendClaim] = []
    for service_id, entry in enumerate(ports, start=1):
        service, port = entry.service, entry.port
        external_local = _external_policy_local(service)
        vips = [_ipv4_int(a) for a in _load_balancer_vips(service) if ip_family(a) == 4]
        ranges = _source_ranges(service, vips, info.view.primary_ip)
        wanted: list[tuple[str, int, int, bool, tuple[tuple[int, int], ...]]] = [
            ("ClusterIP", entry.cluster_ip, port.port, service.internal_traffic_policy == "Local", ())]
        wanted += [("LoadBalancer", ip, port.port, external_local, ranges) for ip in vips]
        wanted += [("ExternalIP", _ipv4_int(a), port.port, external_local, ())
                   for a in service.external_ips if ip_family(a) == 4]
        if port.node_port is not None:
            wanted += [("NodePort", ip, port.node_port, external_local, ()) for ip in info.node_port_ips]
        claims.extend(_FrontendClaim(_CLAIM_ORDER[kind], service_id, ip, number, entry.proto, kind, local, source)
                      for kind, ip, number, local, source in wanted)

    claims.sort()
    owners: dict[tuple[int, int, int], _FrontendClaim] = {}
    kept: list[_FrontendClaim] = []
    for c in claims:
        key = (c.ip, c.port, c.proto)
        owner = owners.get(key)
        if owner is None:
            owners[key] = c
            kept.append(c)
        elif not (owner.service == c.service and owner.kind == c.kind):  # the same address listed twice: nothing to say
            warnings.append(f"{ports[c.service - 1].name}: {_ipv4_text(c.ip)}:{c.port}/{_PROTOCOL_NAMES[c.proto]} "
                            f"({c.kind}) is already the {owner.kind} frontend of {ports[owner.service - 1].name}; "
                            "ignored")
    kept.sort(key=lambda c: (c.service, _KIND_ORDER[c.kind], c.ip, c.port))
    return [Frontend(ip=c.ip, port=c.port, proto=c.proto, service=c.service, kind=c.kind,
                     local_policy=c.local_policy, source_ranges=c.source_ranges) for c in kept]


def _external_policy_local(service: Service) -> bool:
    """externalTrafficPolicy Local, honoured only for externally accessible services (kube-proxy)."""
    accessible = service.type in ("NodePort", "LoadBalancer") or (service.type == "ClusterIP" and bool(service.external_ips))
    return accessible and service.external_traffic_policy == "Local"


def _load_balancer_vips(service: Service) -> list[str]:
    """status.loadBalancer.ingress IPs kube-proxy serves: ipMode unset or VIP (Proxy: the LB proxies)."""
    return [ingress.ip for ingress in service.load_balancer_ingress
            if ingress.ip is not None and ingress.ip_mode in (None, "VIP")]


def _source_ranges(service: Service, vips: Sequence[int], primary_ip: int) -> tuple[tuple[int, int], ...]:
    """loadBalancerSourceRanges of the IPv4 family as (network, length); () allows every source."""
    prefixes = _ipv4_prefixes(service.load_balancer_source_ranges)
    if not prefixes or any(length == 0 for _, length in prefixes):
        return ()
    if primary_ip and any(_in_prefix(primary_ip, prefix) for prefix in prefixes):
        # Traffic from the node to its own LB VIP loops back with the VIP as source.
        prefixes = tuple(sorted({*prefixes, *((ip, 32) for ip in vips)}))
    return prefixes


def _affinity_timeout(service: Service) -> int:
    if service.session_affinity != "ClientIP":
        return 0
    return service.affinity_timeout or DEFAULT_AFFINITY_TIMEOUT


# --------------------------------------------------------------------------------------------
# Endpoints


def _endpoint_notes(entry: _Port, sets: _Sets, info: _NodeInfo, notes: list[str]) -> None:
    name, service = entry.name, entry.service
    if not sets.cluster:
        notes.append(f"{name}: no usable endpoint; traffic to it is rejected")
        return
    if not any(c.ready for c in sets.cluster):
        notes.append(f"{name}: no ready endpoint; using {len(sets.cluster)} serving terminating endpoint(s)")
    if sets.local:
        return
    why = "no node given" if info.name is None else f"none on node {info.name}"
    if service.internal_traffic_policy == "Local":
        notes.append(f"{name}: internalTrafficPolicy Local and no local endpoint ({why})")
    external = entry.port.node_port is not None or any(
        ip_family(a) == 4 for a in (*service.external_ips, *_load_balancer_vips(service)))
    if external and _external_policy_local(service):
        notes.append(f"{name}: externalTrafficPolicy Local and no local endpoint ({why}); "
                     "external clients are dropped")


def _number_backends(candidates: Iterable[_Candidate]) -> tuple[list[Backend], dict[tuple[int, int], int]]:
    """One backend per distinct (ip, port) over every service, ids in (ip, port) order."""
    names: dict[tuple[int, int], str] = {}
    for candidate in candidates:
        key = (candidate.ip, candidate.port)
        name = f"{candidate.address}:{candidate.port} ({candidate.owner})"
        previous = names.get(key)
        if previous is None or name < previous:  # slices may name the same address differently
            names[key] = name
    ids = {key: number for number, key in enumerate(sorted(names), start=1)}
    backends = [Backend(id=number, ip=ip, port=port, name=names[(ip, port)]) for (ip, port), number in ids.items()]
    return backends, ids


def _ipv4_cluster_ip(service: Service, skipped: Counter[str]) -> int | None:
    """The service's IPv4 cluster IP as an integer, or None (counted) when it gets no frontend."""
    if service.type == "ExternalName":
        skipped["ExternalName service"] += 1
        return None
    if service.headless:
        skipped["headless service"] += 1
        return None
    ipv4 = [address for address in service.cluster_ips if ip_family(address) == 4]
    if not ipv4:
        skipped["service without an IPv4 cluster IP"] += 1
        return None
    if len(ipv4) != len(service.cluster_ips):  # dual-stack: the IPv6 half waits for IPv6 support
        skipped["IPv6 cluster IP"] += 1
    return _ipv4_int(ipv4[0])


def _ipv4_slices_by_service(
    slices: Iterable[EndpointSlice], skipped: Counter[str]
) -> dict[tuple[str, str], list[EndpointSlice]]:
    """IPv4 slices grouped by (namespace, service name), each group sorted by slice name."""
    grouped: defaultdict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
    for endpoint_slice in slices:
        if endpoint_slice.service_name is None:
            skipped["EndpointSlice without a service-name label"] += 1
        elif endpoint_slice.address_type != "IPv4":
            skipped[f"{endpoint_slice.address_type} EndpointSlice"] += 1
        else:
            grouped[(endpoint_slice.namespace, endpoint_slice.service_name)].append(endpoint_slice)
    for group in grouped.values():
        group.sort(key=lambda s: s.name)  # the order that decides duplicates must not be the file order
    return grouped


def _candidates(port: ServicePort, slices: Iterable[EndpointSlice], node: str | None) -> list[_Candidate]:
    """The service port's endpoints from its slices, one per (ip, port).

    Of duplicates (the same pod in two slices while the controller moves it) the non-terminating
    one wins, as in kube-proxy; then the ready, serving, local one, so the result never depends
    on which slice was read first.
    """
    found: dict[tuple[int, int], _Candidate] = {}
    for endpoint_slice in slices:
        slice_port = next((p for p in endpoint_slice.ports
                           if p.name == port.name and p.protocol == port.protocol), None)
        if slice_port is None or slice_port.port is None:
            continue
        for endpoint in endpoint_slice.endpoints:
            _keep(found, _candidate(endpoint, slice_port.port, endpoint_slice, node))
    return list(found.values())


def _keep(found: dict[tuple[int, int], _Candidate], candidate: _Candidate) -> None:
    key = (candidate.ip, candidate.port)
    previous = found.get(key)
    if previous is None or _preference(candidate) > _preference(previous):
        found[key] = candidate


def _preference(candidate: _Candidate) -> tuple[bool, bool, bool, bool]:
    return (not candidate.terminating, candidate.ready, candidate.serving, candidate.local)


def _candidate(endpoint: Endpoint, port: int, endpoint_slice: EndpointSlice, node: str | None) -> _Candidate:
    ref = endpoint.target_ref
    if ref is not None and ref.name:
        owner = f"{ref.namespace or endpoint_slice.namespace}/{ref.name}"
    else:
        owner = f"{endpoint_slice.namespace}/{endpoint_slice.name}"
    conditions = endpoint.conditions
    address = endpoint.addresses[0]  # only the first address counts
    return _Candidate(
        ip=_ipv4_int(address),
        port=port,
        address=address,
        ready=conditions.is_ready,
        serving=conditions.is_serving,
        terminating=conditions.is_terminating,
        local=node is not None and endpoint.node_name == node,
        zone_hints=frozenset(endpoint.hints_for_zones),
        node_hints=frozenset(endpoint.hints_for_nodes),
        owner=owner,
    )


class _PodIndex:
    """Pods by label, for selectors; terminal pods and pods without an IPv4 address left out."""

    def __init__(self, pods: Iterable[Pod]) -> None:
        usable = []
        for pod in pods:
            if pod.phase in ("Succeeded", "Failed"):
                continue
            address = next((a for a in pod.pod_ips if ip_family(a) == 4), None)  # one IP per family
            if address is not None:
                usable.append((pod.namespace, pod.name, frozenset(pod.labels), address, pod))
        usable.sort(key=lambda entry: entry[:2])
        self.pods = usable
        # (namespace, label key, label value) -> positions in self.pods, ascending
        self.by_label: defaultdict[tuple[str, str, str], list[int]] = defaultdict(list)
        for position, (namespace, _, labels, _, _) in enumerate(usable):
            for key, value in labels:
                self.by_label[(namespace, key, value)].append(position)

    def selected(self, service: Service) -> list[tuple[str, Pod]]:
        """(IPv4 address, pod) of the pods the service's selector matches, by pod name."""
        selector = frozenset(service.selector or ())
        if not selector:
            return []
        # Start from the rarest label of the selector, then check the others.
        fewest = min((self.by_label.get((service.namespace, key, value), []) for key, value in selector), key=len)
        return [(self.pods[i][3], self.pods[i][4]) for i in fewest if selector <= self.pods[i][2]]


def _pod_candidates(service: Service, port: ServicePort, pods: Iterable[tuple[str, Pod]],
                    node: str | None) -> list[_Candidate]:
    """The endpoints the EndpointSlice controller would publish for this port of the selected pods.

    serving = the pod's Ready condition, terminating = deletionTimestamp set, ready = serving and
    not terminating (always ready with publishNotReadyAddresses). A named targetPort resolves
    through each pod's container ports (same name and protocol); a pod without it is no endpoint
    of this port.
    """
    found: dict[tuple[int, int], _Candidate] = {}
    target = port.target_port
    for address, pod in pods:
        if isinstance(target, str):
            number = next((p.port for p in pod.ports if p.name == target and p.protocol == port.protocol), None)
            if number is None:
                continue
        else:
            number = target
        _keep(found, _Candidate(
            ip=_ipv4_int(address),
            port=number,
            address=address,
            ready=service.publish_not_ready_addresses or (pod.ready and not pod.terminating),
            serving=pod.ready,
            terminating=pod.terminating,
            local=node is not None and pod.node_name == node,
            zone_hints=_NO_HINTS,
            node_hints=_NO_HINTS,
            owner=f"{pod.namespace}/{pod.name}",
        ))
    return list(found.values())


def _cluster_set(candidates: list[_Candidate], node: str | None, zone: str | None) -> list[_Candidate]:
    """Ready endpoints, narrowed by hints when they apply; else serving+terminating ones, unfiltered."""
    ready = [c for c in candidates if c.ready]
    if ready:
        # Node hints first, then zone hints: each applies only if every ready endpoint carries
        # that kind of hint and at least one names this node / zone.
        if node is not None and all(c.node_hints for c in ready) and any(node in c.node_hints for c in ready):
            return [c for c in ready if node in c.node_hints]
        if zone is not None and all(c.zone_hints for c in ready) and any(zone in c.zone_hints for c in ready):
            return [c for c in ready if zone in c.zone_hints]
        return ready
    return [c for c in candidates if c.serving and c.terminating]


def _local_set(candidates: list[_Candidate]) -> list[_Candidate]:
    """Local ready endpoints, else local serving+terminating ones (hints do not apply)."""
    local = [c for c in candidates if c.local]
    return [c for c in local if c.ready] or [c for c in local if c.serving and c.terminating]


# --------------------------------------------------------------------------------------------
# Addresses


def _ipv4_int(address: str) -> int:
    """A model IPv4 address (canonical dotted quad) as an integer, without ipaddress' overhead."""
    return int.from_bytes(socket.inet_aton(address), "big")


def _ipv4_text(address: int) -> str:
    return socket.inet_ntoa(address.to_bytes(4, "big"))


def _ipv4_prefixes(cidrs: Iterable[str]) -> tuple[tuple[int, int], ...]:
    """The IPv4 ones of normalised CIDRs as sorted, distinct (network, length) pairs."""
    found = set()
    for cidr in cidrs:
        address, _, length = cidr.partition("/")
        if ip_family(address) == 4:
            found.add((_ipv4_int(address), int(length)))
    return tuple(sorted(found))


def _in_prefix(ip: int, prefix: tuple[int, int]) -> bool:
    network, length = prefix
    return length == 0 or (ip ^ network) >> (32 - length) == 0


def _service_name(service: Service, port: ServicePort) -> str:
    base = f"{service.namespace}/{service.name}"
    return f"{base}:{port.name}" if port.name else base

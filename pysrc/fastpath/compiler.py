"""The compiler: cluster state in, dataplane maps out. All routing policy is decided here.

Scope so far: IPv4 ClusterIP frontends for TCP and UDP service ports (services of type NodePort
and LoadBalancer contribute their ClusterIP). Headless and ExternalName services get nothing;
SCTP ports and IPv6 are skipped and counted in `CompileResult.skipped`.

Which endpoints a service port may send new flows to follows kube-proxy (see
kube-proxy-rules.md): endpoints come from the service's IPv4 EndpointSlices through the slice
port matching the service port's name and protocol; the cluster set is the ready endpoints
(narrowed by topology hints when they apply to this node), or, when none is ready anywhere, the
serving and terminating ones. internalTrafficPolicy Local uses the node's local set instead.

Output is deterministic: services, backends and each service's backend list are sorted, so the
same input gives identical maps on every run and every node builds the same selection tables.
"""
from __future__ import annotations

import socket
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from .maps import PROTOCOL_NUMBERS, Backend, Frontend, Maps
from .maps import Service as MapService
from .model import ClusterError, ClusterState, Endpoint, EndpointSlice, Service, ServicePort, ip_family


@dataclass(frozen=True, slots=True)
class CompileResult:
    maps: Maps
    notes: tuple[str, ...] = ()  # what was left out and why, one line each, stable order
    warnings: tuple[str, ...] = ()  # input that looks wrong but does not stop compiling
    skipped: Counter[str] = field(default_factory=Counter)  # e.g. {"SCTP service port": 2}


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
    owner: str  # "namespace/pod" from targetRef, else "namespace/slice"


def compile_maps(state: ClusterState, node: str | None = None) -> CompileResult:
    """Compile `state` into the maps of the dataplane running as `node` (a Node name).

    `node` decides which endpoints are local (internalTrafficPolicy Local) and, through the Node's
    zone label, which topology hints apply. Without it no endpoint is local and hints are ignored.
    Raises ClusterError if `node` is given, the state has Nodes, and none has that name.
    """
    zone = _node_zone(state, node)
    skipped: Counter[str] = Counter()
    notes: list[str] = []
    slices = _ipv4_slices_by_service(state.endpoint_slices, skipped)
    ports = _service_ports(state.services, skipped)
    chosen = [_select(service, port, slices.get(service.key, ()), node, zone, notes) for service, port, _ in ports]
    backends, backend_ids = _number_backends(chosen)

    services: list[MapService] = []
    frontends: list[Frontend] = []
    warnings: list[str] = []
    claimed: dict[tuple[int, int, int], str] = {}
    for service_id, ((service, port, cluster_ip), selected) in enumerate(zip(ports, chosen), start=1):
        name = _service_name(service, port)
        ids = tuple(sorted({backend_ids[(c.ip, c.port)] for c in selected}))
        services.append(MapService(id=service_id, name=name, backends=ids))
        key = (cluster_ip, port.port, PROTOCOL_NUMBERS[port.protocol])
        if key in claimed:  # two services on one address (merged dumps): the maps hold one
            address = socket.inet_ntoa(cluster_ip.to_bytes(4, "big"))
            warnings.append(f"{name}: {address}:{port.port}/{port.protocol} "
                            f"is already the ClusterIP frontend of {claimed[key]}; ignored")
            continue
        claimed[key] = name
        frontends.append(Frontend(ip=cluster_ip, port=port.port, proto=key[2], service=service_id, kind="ClusterIP"))

    notes.extend(f"skipped {count} {what}" for what, count in sorted(skipped.items()))
    maps = Maps(services=services, frontends=frontends, backends=backends)
    return CompileResult(maps=maps, notes=tuple(notes), warnings=tuple(warnings), skipped=skipped)


def _service_ports(services: Iterable[Service], skipped: Counter[str]) -> list[tuple[Service, ServicePort, int]]:
    """(service, port, IPv4 cluster IP) of every service port that gets a frontend, in id order.

    Ids follow (namespace, name, port name, protocol), never the input order.
    """
    ports = []
    for service in services:
        cluster_ip = _ipv4_cluster_ip(service, skipped)
        if cluster_ip is None:
            continue
        for port in service.ports:
            if port.protocol not in PROTOCOL_NUMBERS:
                skipped[f"{port.protocol} service port"] += 1
            else:
                ports.append((service, port, cluster_ip))
    ports.sort(key=lambda entry: (entry[0].namespace, entry[0].name, entry[1].name, entry[1].protocol))
    return ports


def _select(service: Service, port: ServicePort, slices: Iterable[EndpointSlice], node: str | None,
            zone: str | None, notes: list[str]) -> list[_Candidate]:
    """The endpoints new flows to this service port's ClusterIP may go to (kube-proxy's choice)."""
    name = _service_name(service, port)
    candidates = _candidates(port, slices, node)
    usable_anywhere = any(c.ready or (c.serving and c.terminating) for c in candidates)
    if service.internal_traffic_policy == "Local":
        selected = _local_set(candidates)
        if not selected and usable_anywhere:
            # kube-proxy drops here rather than rejecting; the core cannot tell the two apart yet.
            why = "no node given" if node is None else f"none on node {node}"
            notes.append(f"{name}: internalTrafficPolicy Local and no local endpoint ({why})")
    else:
        selected = _cluster_set(candidates, node, zone)
    if not usable_anywhere:
        notes.append(f"{name}: no usable endpoint; traffic to it is rejected")
    elif selected and not any(c.ready for c in selected):
        notes.append(f"{name}: no ready endpoint; using {len(selected)} serving terminating endpoint(s)")
    return selected


def _number_backends(chosen: Iterable[list[_Candidate]]) -> tuple[list[Backend], dict[tuple[int, int], int]]:
    """One backend per distinct (ip, port) over every service, ids in (ip, port) order."""
    names: dict[tuple[int, int], str] = {}
    for selected in chosen:
        for candidate in selected:
            key = (candidate.ip, candidate.port)
            name = f"{candidate.address}:{candidate.port} ({candidate.owner})"
            names[key] = min(names.get(key, name), name)  # slices may name the same address differently
    ids = {key: number for number, key in enumerate(sorted(names), start=1)}
    backends = [Backend(id=number, ip=ip, port=port, name=names[(ip, port)]) for (ip, port), number in ids.items()]
    return backends, ids


def _node_zone(state: ClusterState, node: str | None) -> str | None:
    if node is None:
        return None
    found = state.node(node)
    if found is None and state.nodes:
        known = ", ".join(sorted(n.name for n in state.nodes)[:5])
        more = ", ..." if len(state.nodes) > 5 else ""
        raise ClusterError(f"no Node named {node!r} in the cluster state (Nodes: {known}{more})")
    return found.zone if found else None


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
    """The service port's endpoints, one per (ip, port).

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
            candidate = _candidate(endpoint, slice_port.port, endpoint_slice, node)
            key = (candidate.ip, candidate.port)
            previous = found.get(key)
            if previous is None or _preference(candidate) > _preference(previous):
                found[key] = candidate
    return list(found.values())


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


def _ipv4_int(address: str) -> int:
    """A model IPv4 address (canonical dotted quad) as an integer, without ipaddress' overhead."""
    return int.from_bytes(socket.inet_aton(address), "big")


def _service_name(service: Service, port: ServicePort) -> str:
    base = f"{service.namespace}/{service.name}"
    return f"{base}:{port.name}" if port.name else base

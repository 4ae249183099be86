"""Explain where one hand-written flow would go, and why, without a capture.

    state = fastpath.load_cluster(["cluster.yaml"])
    answer = explain(state, "10.244.0.5:41001", "10.96.0.10:80", "tcp", node="node-1")
    print(answer.render())              # or answer.to_dict() for JSON
    explain(state, "[fd00:10:244::5]:41001", "[fd00:10:96::10]:80")     # IPv6: [address]:port

The verdict and the endpoint are never worked out here: explain() builds the flow's first packet
(a TCP SYN or a UDP datagram), runs it through a fresh Dataplane (the compiled core unless told
otherwise) with the per-packet trace on, and reports what the core did. Everything else is
explanation: which frontend the destination is (from the compiled maps), the traffic policy and
source class that decide the set of endpoints and masquerading (kube-proxy's rules, as the maps
encode them), and every endpoint of the service port with its conditions as the EndpointSlices
give them, marked with whether it is in the set being chosen from and which one was chosen.
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

from fastpath.icmp import internet_checksum
from fastpath.maps import (
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    Frontend,
    Maps,
    address_from_text,
    family_of,
    format_address,
    format_endpoint,
    in_prefix,
)
from fastpath.model import ClusterState, EndpointSlice, Service, ServicePort, parse_ip
from fastpath.verdicts import TRACE_MASQUERADED, FrontendKind, Reason, Verdict

__all__ = [
    "DEFAULT_SOURCE_PORT",
    "EndpointInfo",
    "ExplainError",
    "Explanation",
    "explain",
    "parse_address",
]

DEFAULT_SOURCE_PORT = 40000  # used when the source is given without a port
PACKET_TIME_NS = 1_700_000_000 * 1_000_000_000
PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "sctp": PROTO_SCTP}
PROTOCOL_NAMES = {PROTO_TCP: "TCP", PROTO_UDP: "UDP", PROTO_SCTP: "SCTP"}

# The rule behind each verdict that is not a translation.
RULES: dict[Reason, str] = {
    Reason.PASS_NO_SERVICE: "not a service address: passes untouched",
    Reason.REJECT_NO_ENDPOINT: (
        "the service port has no usable endpoint anywhere (none ready, none serving and "
        "terminating): the packet is rejected with an ICMP port unreachable (ICMPv6 for IPv6) "
        "from the address the client used, on every frontend of the service port"
    ),
    Reason.REJECT_UNKNOWN_PORT: (
        "the destination is a ClusterIP, but no service has this port and protocol on it: the "
        "packet is rejected with an ICMP port unreachable (ICMPv6 for IPv6)"
    ),
    Reason.DROP_UNALLOCATED_SERVICE_IP: (
        "the destination is inside a service CIDR (ServiceCIDR), but no service has this address "
        "(an unallocated ClusterIP): dropped, without a reply"
    ),
    Reason.DROP_NO_LOCAL_ENDPOINT: (
        "the traffic policy is Local and this node has no endpoint of the service port: dropped"
    ),
    Reason.DROP_SOURCE_RANGE: (
        "the source is outside the service's loadBalancerSourceRanges (they apply to load-balancer "
        "IPs only): dropped"
    ),
}


DROP_SUMMARIES = {
    Reason.DROP_NO_LOCAL_ENDPOINT.name: "Local traffic policy and no endpoint on this node",
    Reason.DROP_SOURCE_RANGE.name: "the source is outside loadBalancerSourceRanges",
    Reason.DROP_UNALLOCATED_SERVICE_IP.name: "unallocated service IP (inside a service CIDR, no service has it)",
}


class ExplainError(ValueError):
    """Bad input to explain() (an address, port or protocol): one line for the user."""


@dataclass(slots=True)
class EndpointInfo:
    """One endpoint of the matched service port, as its EndpointSlice gives it."""

    address: str  # "ip:port", "[ip]:port" for IPv6
    ready: bool
    serving: bool
    terminating: bool
    node: str | None
    zone: str | None
    local: bool  # on the node the dataplane runs as
    pod: str | None  # "namespace/name" of the targetRef
    slice: str  # "namespace/name" of the EndpointSlice
    in_set: bool  # in the set this flow chooses from
    chosen: bool  # the endpoint the core picked for this flow
    note: str  # why it is or is not a candidate, in a few words


@dataclass(slots=True)
class Explanation:
    """Where one flow goes and why. `to_dict()` is the `--json` document, `render()` the text."""

    src: str  # "ip:port", "[ip]:port" for IPv6
    dst: str  # "ip:port", "[ip]:port" for IPv6
    proto: str  # "TCP" | "UDP"
    src_port_given: bool
    node: str | None
    core: str
    verdict: str  # a Verdict name
    reason: str  # a Reason name
    summary: str  # the answer in one line
    rule: str | None = None  # the rule behind a PASS/DROP/REJECT
    frontend: dict[str, Any] | None = None  # kind, address, service, port_name, target_port
    policy: dict[str, Any] | None = None  # name, value, set, why
    source: dict[str, Any] | None = None  # class (pod/node/other), why
    masquerade: dict[str, Any] | None = None  # enabled, address, why
    affinity: str | None = None
    source_ranges: list[str] | None = None
    set_size: int | None = None  # how many endpoints the flow chooses from
    endpoints: list[EndpointInfo] = field(default_factory=list)
    backend: str | None = None  # the chosen endpoint "ip:port"
    reply: str | None = None  # "icmp-port-unreachable" for a REJECT
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        return render_text(self)

    __str__ = render


# --------------------------------------------------------------------------- input


def parse_address(text: str, *, port_required: bool, what: str) -> tuple[str, int | None]:
    """"IP", "IP:PORT" (IPv4), "IPv6" or "[IPv6]:PORT" -> (canonical ip, port or None);
    ExplainError if invalid."""
    text = text.strip()
    if text.startswith("["):  # [IPv6] or [IPv6]:PORT
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ExplainError(f"{what} {text!r}: expected [IPv6]:PORT")
        sep, port_text = (":", rest[1:]) if rest else ("", "")
        if ":" not in host:
            raise ExplainError(f"{what} {text!r}: only IPv6 addresses go in brackets")
    elif text.count(":") > 1:  # a bare IPv6 address: it cannot carry a port
        host, sep, port_text = text, "", ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host = text
    try:
        address = parse_ip(host)
    except ValueError:
        raise ExplainError(f"{what} {text!r}: not an IP address") from None
    if address.version == 6 and address.ipv4_mapped is not None:
        raise ExplainError(f"{what} {text!r}: an IPv4-mapped IPv6 address never travels as such; "
                           f"use the IPv4 address {address.ipv4_mapped}")
    if not sep:
        if port_required:
            example = "[IPv6]:PORT" if address.version == 6 else "IP:PORT"
            raise ExplainError(f"{what} {text!r}: a port is required ({example})")
        return str(address), None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ExplainError(f"{what} {text!r}: the port must be a number from 1 to 65535")
    return str(address), int(port_text)


def _protocol(proto: str | int) -> int:
    if isinstance(proto, int) and proto in PROTOCOL_NAMES:
        return proto
    number = PROTOCOLS.get(str(proto).strip().lower())
    if number is None:
        raise ExplainError(f"protocol {proto!r}: expected tcp, udp or sctp")
    return number


# --------------------------------------------------------------------------- the packet


def build_packet(src: str, sport: int, dst: str, dport: int, proto: int) -> bytes:
    """The first packet of the flow as an Ethernet frame: a TCP SYN, an empty UDP datagram or a
    bare SCTP common header, over IPv4 or IPv6 (the family of the addresses), with valid
    IP/TCP/UDP checksums (the dataplane never checks an incoming SCTP CRC)."""
    source, destination = address_from_text(src), address_from_text(dst)
    if family_of(source) != family_of(destination):
        raise ValueError("the source and destination must be of one IP family")
    if family_of(source) == 6:
        saddr = (source & ((1 << 128) - 1)).to_bytes(16, "big")
        daddr = (destination & ((1 << 128) - 1)).to_bytes(16, "big")
    else:
        saddr, daddr = source.to_bytes(4, "big"), destination.to_bytes(4, "big")
    if proto == PROTO_SCTP:
        l4 = bytearray(struct.pack("!HHII", sport, dport, 0, 0))
    else:
        if proto == PROTO_TCP:
            l4 = bytearray(struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0))
            checksum_at = 16
        else:
            l4 = bytearray(struct.pack("!HHHH", sport, dport, 8, 0))
            checksum_at = 6
        if len(saddr) == 16:
            pseudo = saddr + daddr + struct.pack("!I3xB", len(l4), proto)
        else:
            pseudo = saddr + daddr + struct.pack("!BBH", 0, proto, len(l4))
        checksum = internet_checksum(pseudo + bytes(l4))
        struct.pack_into("!H", l4, checksum_at, checksum or 0xFFFF)
    if len(saddr) == 16:
        ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, saddr, daddr)
        ethernet = bytes.fromhex("020000000002" "020000000001") + struct.pack("!H", 0x86DD)
        return ethernet + ip6 + bytes(l4)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0,
                               saddr, daddr))
    struct.pack_into("!H", ip, 10, internet_checksum(bytes(ip)))
    ethernet = bytes.fromhex("020000000002" "020000000001") + struct.pack("!H", 0x0800)
    return ethernet + bytes(ip) + bytes(l4)


# --------------------------------------------------------------------------- explain


def _ip(value: int) -> str:
    return format_address(value)


def _ip_int(text: str) -> int:
    return address_from_text(text)


def _cidr(network: int, length: int) -> str:
    return f"{_ip(network)}/{length}"


def _host(endpoint: str) -> str:
    """The address of "ip:port" or "[ip]:port"."""
    host = endpoint.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


def _family_pod_cidrs(maps: Maps, family: int) -> list[tuple[int, int]]:
    return [(n, l) for n, l in maps.node.pod_cidrs if family_of(n) == family]


def explain(
    state: ClusterState,
    src: str,
    dst: str,
    proto: str | int = "tcp",
    node: str | None = None,
    *,
    core: str = "compiled",
) -> Explanation:
    """Where a new flow src -> dst (proto "tcp" or "udp") goes on `node`'s dataplane, and why.

    src is "IP" or "IP:PORT" (without a port, DEFAULT_SOURCE_PORT is used: the endpoint chosen
    depends on the whole 5-tuple), dst is "IP:PORT". Raises ExplainError for bad input, and
    ClusterError when the cluster state does not compile (e.g. an unknown node).
    """
    from fastpath.capture import Batch
    from fastpath.dataplane import Dataplane

    src_ip, sport = parse_address(src, port_required=False, what="source")
    dst_ip, dport = parse_address(dst, port_required=True, what="destination")
    assert dport is not None
    if family_of(_ip_int(src_ip)) != family_of(_ip_int(dst_ip)):
        raise ExplainError(f"source {src_ip} and destination {dst_ip} are of different IP families")
    number = _protocol(proto)
    src_port_given = sport is not None
    sport = DEFAULT_SOURCE_PORT if sport is None else sport

    dataplane = Dataplane(state, node=node, core=core)  # type: ignore[arg-type]
    maps = dataplane.maps
    frame = build_packet(src_ip, sport, dst_ip, dport, number)
    batch = Batch(bytearray(frame), array("Q", [0]), array("I", [len(frame)]),
                  array("Q", [PACKET_TIME_NS]))
    result = dataplane.process(batch, 1, trace=True)
    verdict, reason = Verdict(result.verdicts[0]), Reason(result.reasons[0])
    service_id = result.services[0] if result.services is not None else 0
    backend_id = result.backends[0] if result.backends is not None else 0
    flags = result.flags[0] if result.flags is not None else 0

    src_int, dst_int = _ip_int(src_ip), _ip_int(dst_ip)
    family = family_of(dst_int)
    answer = Explanation(
        src=format_endpoint(src_int, sport), dst=format_endpoint(dst_int, dport), proto=PROTOCOL_NAMES[number],
        src_port_given=src_port_given, node=dataplane.node, core=core, verdict=verdict.name,
        reason=reason.name, summary="", rule=RULES.get(reason),
    )
    if verdict == Verdict.REJECT:
        answer.reply = "icmp-port-unreachable"
    if not src_port_given and verdict == Verdict.DNAT:
        answer.notes.append(f"no source port given: assumed {sport}; the endpoint chosen depends on "
                            "the whole 5-tuple, so another source port may pick another endpoint")
    if 1 <= backend_id <= len(maps.backends):
        chosen = maps.backends[backend_id - 1]
        answer.backend = format_endpoint(chosen.ip, chosen.port)
    else:
        chosen = None

    frontend = _frontend(maps, dst_int, dport, number)
    if frontend is None:
        _explain_no_frontend(answer, state, maps, dst_ip, dst_int, dport, number, reason)
        answer.summary = _summary(answer)
        return answer

    # The core's attribution is the authority; the maps' frontend agrees with it.
    service = maps.services[(service_id if 1 <= service_id <= len(maps.services)
                             else frontend.service) - 1]
    kind = frontend.kind
    if flags & 0x07 and 1 <= flags & 0x07 <= len(FrontendKind):
        kind = FrontendKind(flags & 0x07).name
    model_service, model_port = _model_port(state, service.name, number)
    answer.frontend = {
        "kind": kind,
        "address": f"{format_endpoint(dst_int, dport)}/{PROTOCOL_NAMES[number]}",
        "service": service.name,
        "port_name": model_port.name if model_port else None,
        "target_port": model_port.target_port if model_port else None,
    }

    # Source class and which set: the core's rules (reference.py, "New flows" d), as text.
    source_class, source_why = _source_class(maps, src_int, src_ip, node)
    answer.source = {"class": source_class, "why": source_why}
    use_local, policy_why = _which_set(kind, frontend.local_policy, source_class)
    policy_name = "internalTrafficPolicy" if kind == "ClusterIP" else "externalTrafficPolicy"
    answer.policy = {
        "name": policy_name,
        "value": "Local" if frontend.local_policy else "Cluster",
        "set": "local" if use_local else "cluster",
        "why": policy_why,
    }
    chosen_from = service.local_backends if use_local else service.backends
    answer.set_size = len(chosen_from)
    if service.affinity_timeout_s:
        answer.affinity = (f"ClientIP, timeout {service.affinity_timeout_s} s: later flows from "
                           f"{src_ip} stick to the endpoint this one gets")
    if frontend.source_ranges:
        answer.source_ranges = [_cidr(n, l) for n, l in frontend.source_ranges]
        inside = any(in_prefix(src_int, n, l) for n, l in frontend.source_ranges)
        answer.notes.append(
            f"loadBalancerSourceRanges {', '.join(answer.source_ranges)}: {src_ip} is "
            + ("inside, allowed" if inside else "outside")
        )

    if verdict in (Verdict.DNAT, Verdict.REVNAT):
        enabled = bool(flags & TRACE_MASQUERADED)
        expected, why = _masquerade_why(maps, kind, frontend.local_policy, source_class,
                                        hairpin=chosen is not None and chosen.ip == src_int,
                                        family=family)
        if expected != enabled:  # the maps say more than these rules know: the core decides
            why += f"; but the dataplane did {'' if enabled else 'not '}masquerade this flow"
        primary = maps.node.primary_ip6 if family == 6 else maps.node.primary_ip
        address = _ip(primary) if enabled and primary else None
        answer.masquerade = {"enabled": enabled, "address": address, "why": why}

    answer.endpoints = _endpoints(state, maps, model_service, model_port, set(chosen_from),
                                  backend_id, use_local, node, family)
    if reason == Reason.DROP_NO_LOCAL_ENDPOINT:
        answer.rule = (f"{policy_name} Local and no endpoint of {service.name} on "
                       + (f"node {node}" if node else "this node (no --node given: none is local)")
                       + ": dropped")
    if reason == Reason.REJECT_NO_ENDPOINT and not answer.endpoints:
        answer.notes.append(f"no EndpointSlice lists an endpoint for {service.name}")
    answer.summary = _summary(answer)
    return answer


def _frontend(maps: Maps, ip: int, port: int, proto: int) -> Frontend | None:
    # The first frontend listed for a key wins, as in the core.
    return next((f for f in maps.frontends if (f.ip, f.port, f.proto) == (ip, port, proto)), None)


def _model_port(state: ClusterState, service_name: str, proto: int) -> tuple[Service | None, ServicePort | None]:
    """The model's Service and ServicePort behind a maps service name ("ns/name[:port-name]")."""
    namespace, _, rest = service_name.partition("/")
    name, _, port_name = rest.partition(":")
    service = state.service(namespace, name)
    if service is None:
        return None, None
    protocol = PROTOCOL_NAMES[proto]
    port = next((p for p in service.ports if p.name == port_name and p.protocol == protocol), None)
    return service, port


def _source_class(maps: Maps, src: int, src_ip: str, node: str | None) -> tuple[str, str]:
    """pod, node or other, and why (the pod network of the source's family: kube-proxy runs one
    local-traffic detector per family)."""
    view = maps.node
    family = family_of(src)
    pod_cidrs = _family_pod_cidrs(maps, family)
    for network, length in pod_cidrs:
        if in_prefix(src, network, length):
            return "pod", f"{src_ip} is inside the pod network {_cidr(network, length)} (clusterCIDR)"
    if src in view.local_ips:
        return "node", f"{src_ip} is an address of this node" + (f" ({node})" if node else "")
    if not pod_cidrs:
        what = "no pod network" if not view.pod_cidrs else f"no IPv{family} pod network"
        return "other", (f"{src_ip} is not an address of this node, and {what} is known "
                         "(KubeProxyConfiguration clusterCIDR / detectLocal), so no source counts "
                         "as pod traffic")
    networks = ", ".join(_cidr(n, l) for n, l in pod_cidrs)
    return "other", f"{src_ip} is outside the pod network ({networks}) and not an address of this node"


def _which_set(kind: str, local_policy: bool, source_class: str) -> tuple[bool, str]:
    """(use the local set?, why) following the core's rules for new flows."""
    if not local_policy:
        return False, "endpoints anywhere in the cluster (the cluster set)"
    if kind == "ClusterIP":
        return True, "only endpoints on this node (the local set)"
    if source_class == "pod":
        return False, "but the source is a pod: it short-circuits to the cluster set"
    if source_class == "node":
        return False, "but the source is this node: it short-circuits to the cluster set"
    return True, ("the source is outside the cluster: only endpoints on this node (the local set), "
                  "so the client IP is preserved")


def _masquerade_why(maps: Maps, kind: str, local_policy: bool, source_class: str, *,
                    hairpin: bool, family: int = 4) -> tuple[bool, str]:
    """(masqueraded?, why) by kube-proxy's rules for new flows (reference.py, d, f and g), in
    the flow's family: its pod network and its masquerade address."""
    view = maps.node
    if kind == "ClusterIP":
        if view.masquerade_all:
            masq, why = True, "masqueradeAll is set"
        elif not _family_pod_cidrs(maps, family):
            known = "no pod network" if not view.pod_cidrs else f"no IPv{family} pod network"
            masq, why = False, (f"{known} is known, so pod traffic cannot be told apart "
                                "and ClusterIP traffic is not masqueraded")
        elif source_class == "pod":
            masq, why = False, "ClusterIP traffic from a pod keeps its source address"
        else:
            masq, why = True, "ClusterIP traffic from outside the pod network is masqueraded"
    elif not local_policy:
        masq, why = True, ("external traffic with externalTrafficPolicy Cluster is always "
                           "masqueraded (the endpoint may be on another node)")
    elif source_class == "pod":
        masq, why = False, "pod traffic to an externalTrafficPolicy Local service is not masqueraded"
    elif source_class == "node":
        masq, why = True, "traffic from the node itself is masqueraded"
    else:
        masq, why = False, "externalTrafficPolicy Local preserves the client IP"
    if hairpin:
        masq, why = True, "hairpin: the chosen endpoint is the client itself, so it is masqueraded"
    if masq and not (view.primary_ip6 if family == 6 else view.primary_ip):
        masq = False
        which = "primary IP" if family == 4 else "IPv6 address"
        why += (f"; but the node's {which} is unknown (no --node, or the Node has no "
                f"IPv{family} InternalIP), so there is nothing to masquerade to")
    return masq, why


def _endpoints(state: ClusterState, maps: Maps, service: Service | None, port: ServicePort | None,
               chosen_from: set[int], backend_id: int, use_local: bool,
               node: str | None, family: int = 4) -> list[EndpointInfo]:
    """Every endpoint of the service port in its EndpointSlices of the flow's family (the
    matching slice port)."""
    if service is None or port is None:
        return []
    ids = {(b.ip, b.port): b.id for b in maps.backends}
    address_type = "IPv6" if family == 6 else "IPv4"
    slices: list[EndpointSlice] = sorted(
        (s for s in state.endpoint_slices
         if s.namespace == service.namespace and s.service_name == service.name
         and s.address_type == address_type),
        key=lambda s: s.name,
    )
    ready_anywhere = any(e.conditions.is_ready for s in slices for e in s.endpoints)
    rows = []
    for endpoint_slice in slices:
        slice_port = next((p for p in endpoint_slice.ports
                           if p.name == port.name and p.protocol == port.protocol), None)
        if slice_port is None or slice_port.port is None:
            continue
        for endpoint in endpoint_slice.endpoints:
            if not endpoint.addresses:
                continue
            address = endpoint.addresses[0]
            key = (_ip_int(address), slice_port.port)
            number = ids.get(key, 0)
            c = endpoint.conditions
            local = node is not None and endpoint.node_name == node
            ref = endpoint.target_ref
            pod = f"{ref.namespace or endpoint_slice.namespace}/{ref.name}" if ref and ref.name else None
            in_set = number != 0 and number in chosen_from
            chosen = number != 0 and number == backend_id
            rows.append(EndpointInfo(
                address=(f"[{address}]:{slice_port.port}" if ":" in address
                         else f"{address}:{slice_port.port}"),
                ready=c.is_ready, serving=c.is_serving,
                terminating=c.is_terminating, node=endpoint.node_name, zone=endpoint.zone,
                local=local, pod=pod, slice=f"{endpoint_slice.namespace}/{endpoint_slice.name}",
                in_set=in_set, chosen=chosen,
                note=_endpoint_note(c.is_ready, c.is_serving, c.is_terminating, local, in_set,
                                    chosen, use_local, ready_anywhere,
                                    bool(endpoint.hints_for_zones or endpoint.hints_for_nodes)),
            ))
    return rows


def _endpoint_note(ready: bool, serving: bool, terminating: bool, local: bool, in_set: bool,
                   chosen: bool, use_local: bool, ready_anywhere: bool, hinted: bool) -> str:
    if chosen:
        return "chosen"
    if in_set:
        if not ready:
            return "candidate (serving and terminating: no endpoint is ready)"
        return "candidate"
    if use_local and not local:
        return "not on this node"
    if not ready:
        if serving and terminating:
            if ready_anywhere:
                return "terminating: used only when no endpoint is ready"
            return "terminating"
        return "not ready"
    if hinted:
        return "topology hints route this zone's traffic elsewhere"
    return "not in the set"


def _explain_no_frontend(answer: Explanation, state: ClusterState, maps: Maps, dst_ip: str,
                         dst_int: int, dport: int, proto: int, reason: Reason) -> None:
    """Notes for a destination that is no frontend: other ports on it, or an endpoint address."""
    protocol = PROTOCOL_NAMES[proto]
    same_ip = [f for f in maps.frontends if f.ip == dst_int]
    if same_ip:
        ports = ", ".join(sorted({f"{f.port}/{PROTOCOL_NAMES.get(f.proto, f.proto)} "
                                  f"({maps.services[f.service - 1].name})" for f in same_ip}))
        answer.notes.append(f"{dst_ip} is a {same_ip[0].kind} frontend address, but not on "
                            f"{dport}/{protocol}; it serves {ports}")
    elif reason == Reason.REJECT_UNKNOWN_PORT:
        answer.notes.append(f"{dst_ip} is a ClusterIP of this cluster")
    elif reason == Reason.DROP_UNALLOCATED_SERVICE_IP:
        answer.notes.extend(_service_cidr_notes(state, maps, dst_ip, dst_int))
    owners = []
    for service in state.services:
        if dst_ip in service.cluster_ips and not same_ip:
            listed = ", ".join(f"{p.port}/{p.protocol}" + (f" ({p.name})" if p.name else "")
                               for p in service.ports)
            owners.append(f"{dst_ip} is the ClusterIP of {service.namespace}/{service.name} "
                          f"({listed or 'no ports'})")
    answer.notes.extend(owners)
    endpoint_of = sorted({
        f"{s.namespace}/{s.service_name}"
        for s in state.endpoint_slices if s.service_name
        for e in s.endpoints if e.addresses and e.addresses[0] == dst_ip
    })
    if endpoint_of and reason == Reason.PASS_NO_SERVICE:
        answer.notes.append(f"{dst_ip} is an endpoint of {', '.join(endpoint_of)}: traffic sent "
                            "straight to an endpoint is not translated")


def _service_cidr_notes(state: ClusterState, maps: Maps, dst_ip: str, dst_int: int) -> list[str]:
    """Which service CIDRs (and ServiceCIDR objects) hold the destination."""
    notes = []
    for network, length in maps.node.service_cidrs:
        if in_prefix(dst_int, network, length):
            cidr = _cidr(network, length)
            owners = sorted(s.name for s in state.service_cidrs if cidr in s.cidrs)
            which = f" (ServiceCIDR {', '.join(owners)})" if owners else ""
            notes.append(f"{dst_ip} is inside the service CIDR {cidr}{which}, but no service has "
                         "this address")
    return notes


def _summary(answer: Explanation) -> str:
    service = answer.frontend["service"] if answer.frontend else None
    if answer.verdict == "DNAT":
        masq = answer.masquerade or {}
        via = f" via {answer.frontend['kind']}" if answer.frontend else ""
        snat = f", source masqueraded to {masq['address']}" if masq.get("enabled") and masq.get(
            "address") else ""
        return f"DNAT to {answer.backend} ({service}{via}){snat}"
    if answer.verdict == "REJECT":
        target = f" ({service})" if service else ""
        client = _host(answer.src)
        icmp = "ICMPv6" if ":" in client else "ICMP"
        return f"REJECT{target}: {icmp} port unreachable back to {client}"
    if answer.verdict == "DROP":
        target = f" ({service})" if service else ""
        return f"DROP{target}: {DROP_SUMMARIES.get(answer.reason, answer.reason)}"
    if answer.reason == Reason.PASS_NO_SERVICE.name:
        return "not a service address: passes untouched"
    return f"{answer.verdict}: {answer.reason}"


# --------------------------------------------------------------------------- text


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def render_text(answer: Explanation) -> str:
    """The explanation as a few aligned lines and an endpoint table."""
    lines = []

    def line(label: str, text: str) -> None:
        lines.append(f"{label:<12}{text}")

    node = f"node {answer.node}" if answer.node else "no node given"
    line("flow", f"{answer.src} -> {answer.dst} {answer.proto}  ({node}, {answer.core} core)")
    line("verdict", f"{answer.verdict} ({answer.reason})")
    line("answer", answer.summary)
    if answer.frontend:
        f = answer.frontend
        target = f", targetPort {f['target_port']}" if f.get("target_port") is not None else ""
        line("frontend", f"{f['kind']} {f['address']} -> service port {f['service']}{target}")
    if answer.policy:
        p = answer.policy
        line("policy", f"{p['name']} {p['value']}: {p['why']}")
    if answer.source and answer.frontend:
        line("source", f"{answer.source['class']}: {answer.source['why']}")
    if answer.masquerade:
        m = answer.masquerade
        to = f" to {m['address']}" if m["enabled"] and m["address"] else ""
        line("masquerade", f"{_yes(m['enabled'])}{to}: {m['why']}")
    if answer.affinity:
        line("affinity", answer.affinity)
    if answer.rule and answer.verdict != "DNAT" and answer.rule != answer.summary:
        line("rule", answer.rule)
    if answer.reply:
        line("reply", answer.reply)
    if answer.frontend:
        if answer.endpoints:
            size = answer.set_size or 0
            set_name = answer.policy["set"] if answer.policy else "cluster"
            line("endpoints", f"{len(answer.endpoints)} in the EndpointSlices; the {set_name} set "
                 f"has {size} candidate{'s' if size != 1 else ''}")
            header = ("ENDPOINT", "READY", "SERVING", "TERMINATING", "NODE", "ZONE", "")
            rows = [header] + [
                (e.address, _yes(e.ready), _yes(e.serving), _yes(e.terminating), e.node or "-",
                 e.zone or "-", ("-> " if e.chosen else "") + e.note)
                for e in answer.endpoints
            ]
            widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
            for row in rows:
                cells = "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths))
                lines.append(f"  {cells}  {row[-1]}".rstrip())
        else:
            line("endpoints", "none in the EndpointSlices")
    for note in answer.notes:
        line("note", note)
    return "\n".join(lines) + "\n"

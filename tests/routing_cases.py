"""The routing scenarios: what a node's kube-proxy (nftables mode) does, as rows of data.

Each `Case` is one scenario: cluster objects shaped like `kubectl get -o json` output (built by
the small helpers below), the node the dataplane runs as, and the traffic: groups of flows from a
source to a destination, each with the outcome kube-proxy would give them, with cluster updates
(`Update`) and clock jumps (`Wait`) in between. tests/test_routing.py replays the traffic through
fastpath and checks the output capture against these rows.

Every case names the rules of /work/shared/kube-proxy-rules.md it exercises (`RULES` below);
`python tests/routing_cases.py` prints how many scenarios cover each rule.

The cluster used throughout (unless a row says otherwise):

    node-a  192.168.0.10 (InternalIP, primary), 198.18.0.10 (ExternalIP)  zone-a  pods 10.244.1.0/24
    node-b  192.168.0.11                                                   zone-b  pods 10.244.2.0/24
    node-c  192.168.0.12                                                   zone-a  pods 10.244.3.0/24
    kube-proxy: clusterCIDR 10.244.0.0/16, nodePortAddresses unset (the primary IP)

The dataplane runs as node-a; E1 is a pod on node-a, E2 on node-b, E3 on node-c.

The IPv6 and dual-stack scenarios (ids starting "ipv6-" or "dual-stack-", at the end of the
table) use the same cluster with dual-stack nodes (`dual_cluster`):

    node-a  192.168.0.10, fd00:192:168::10 (InternalIPs), 198.18.0.10, 2001:db8:18::10 (ExternalIPs)
            pods 10.244.1.0/24, fd00:10:244:1::/64
    node-b  192.168.0.11, fd00:192:168::11    pods 10.244.2.0/24, fd00:10:244:2::/64
    node-c  192.168.0.12, fd00:192:168::12    pods 10.244.3.0/24, fd00:10:244:3::/64
    kube-proxy: clusterCIDR 10.244.0.0/16,fd00:10:244::/56

and the IPv6 twins of the addresses below (E1_6 on node-a, ...). Masqueraded IPv6 flows come from
node-a's IPv6 address fd00:192:168::10.
"""
from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

# --------------------------------------------------------------------------------- addresses

NODE_A = "192.168.0.10"  # node-a's primary IP: SNAT address and default NodePort address
NODE_A_EXT = "198.18.0.10"  # node-a's ExternalIP: a node-local address, not a NodePort address
NODE_B = "192.168.0.11"
NODE_C = "192.168.0.12"
CLUSTER_CIDR = "10.244.0.0/16"

POD = "10.244.1.100"  # a client pod on node-a
POD_B = "10.244.2.100"  # a client pod on node-b
EXT = "203.0.113.7"  # an external client
OUTSIDER = "198.18.99.9"  # an external client outside every loadBalancerSourceRanges below

E1 = "10.244.1.5"  # endpoint pod on node-a (local)
E2 = "10.244.2.5"  # endpoint pod on node-b
E3 = "10.244.3.5"  # endpoint pod on node-c (same zone as node-a)
E4 = "10.244.2.6"  # another endpoint pod on node-b
E5 = "10.244.1.6"  # another endpoint pod on node-a

VIP = "10.96.0.10"  # ClusterIP of most services
LB = "198.51.100.1"  # load-balancer ingress IP
LB2 = "198.51.100.2"
XIP = "192.0.2.10"  # an external IP (spec.externalIPs)
SERVICE_CIDR = "10.96.0.0/16"  # a ServiceCIDR holding VIP (and the other ClusterIPs below)
UNALLOCATED = "10.96.0.99"  # inside SERVICE_CIDR, the ClusterIP of no service
NP = 30080  # nodePort

ZONES = {"node-a": "zone-a", "node-b": "zone-b", "node-c": "zone-a"}

# IPv6 (the dual-stack scenarios)
NODE_A6 = "fd00:192:168::10"  # node-a's IPv6 InternalIP: SNAT address of IPv6 flows, default IPv6 NodePort address
NODE_A6_EXT = "2001:db8:18::10"  # node-a's IPv6 ExternalIP: node-local, not a default NodePort address
NODE_B6 = "fd00:192:168::11"
NODE_C6 = "fd00:192:168::12"
CLUSTER_CIDR6 = "fd00:10:244::/56"
DUAL_CIDR = f"{CLUSTER_CIDR},{CLUSTER_CIDR6}"

POD6 = "fd00:10:244:1::100"  # a client pod on node-a
POD_B6 = "fd00:10:244:2::100"  # a client pod on node-b
EXT6 = "2001:db8:113::7"  # an external client
OUTSIDER6 = "2001:db8:99::9"  # outside every IPv6 loadBalancerSourceRanges below

E1_6 = "fd00:10:244:1::5"  # endpoint pod on node-a (local)
E2_6 = "fd00:10:244:2::5"  # on node-b
E3_6 = "fd00:10:244:3::5"  # on node-c (same zone as node-a)
E4_6 = "fd00:10:244:2::6"  # another on node-b

VIP6 = "fd00:10:96::10"
LB6 = "2001:db8:51::1"
LB6_2 = "2001:db8:51::2"
XIP6 = "2001:db8:2::10"
SERVICE_CIDR6 = "fd00:10:96::/112"
UNALLOCATED6 = "fd00:10:96::99"


def at(port: int, *ips: str) -> frozenset[str]:
    """Endpoints as "ip:port" strings ("[ip]:port" for IPv6)."""
    return frozenset(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips)


def clients(prefix: str, first: int, count: int) -> tuple[str, ...]:
    """`count` client addresses: prefix + first, prefix + first + 1, ..."""
    return tuple(f"{prefix}{n}" for n in range(first, first + count))


# --------------------------------------------------------------------------------- objects


def node(name: str, ip: str, *, zone: str | None = None, pod_cidr: str | None = None,
         external_ip: str | None = None, ip6: str | None = None, external_ip6: str | None = None,
         pod_cidr6: str | None = None) -> dict:
    addresses = [{"type": "InternalIP", "address": ip}]
    if ip6:
        addresses.append({"type": "InternalIP", "address": ip6})
    if external_ip:
        addresses.append({"type": "ExternalIP", "address": external_ip})
    if external_ip6:
        addresses.append({"type": "ExternalIP", "address": external_ip6})
    addresses.append({"type": "Hostname", "address": name})
    metadata: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    if zone:
        metadata["labels"]["topology.kubernetes.io/zone"] = zone
    cidrs = [c for c in (pod_cidr, pod_cidr6) if c]
    spec = {"podCIDR": cidrs[0], "podCIDRs": cidrs} if cidrs else {}
    return {"apiVersion": "v1", "kind": "Node", "metadata": metadata, "spec": spec,
            "status": {"addresses": addresses}}


def proxy_config(*, cluster_cidr: str | None = CLUSTER_CIDR, masquerade_all: bool | None = None,
                 node_port_addresses: list[str] | None = None, detect_local_mode: str | None = None) -> dict:
    config: dict[str, Any] = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                              "kind": "KubeProxyConfiguration", "mode": "nftables"}
    if cluster_cidr is not None:
        config["clusterCIDR"] = cluster_cidr
    if masquerade_all is not None:
        config["masqueradeAll"] = masquerade_all
    if node_port_addresses is not None:
        config["nodePortAddresses"] = node_port_addresses
    if detect_local_mode is not None:
        config["detectLocalMode"] = detect_local_mode
    return config


def port(number: int, *, name: str = "", proto: str = "TCP", target: int | str | None = None,
         node_port: int | None = None) -> dict:
    entry: dict[str, Any] = {"port": number, "protocol": proto, "targetPort": number if target is None else target}
    if name:
        entry["name"] = name
    if node_port is not None:
        entry["nodePort"] = node_port
    return entry


def ingress(ip: str | None = None, *, mode: str | None = None, hostname: str | None = None) -> dict:
    entry: dict[str, Any] = {}
    if ip is not None:
        entry["ip"] = ip
    if hostname is not None:
        entry["hostname"] = hostname
    if mode is not None:
        entry["ipMode"] = mode
    return entry


def svc(name: str, *ports: dict, ns: str = "default", type: str = "ClusterIP", ip: str | None = None,
        ips: list[str] | None = None, selector: dict | None = None, external_ips: list[str] | None = None,
        lb: list[dict | str] | None = None, lb_ip: str | None = None, ranges: list[str] | None = None,
        etp: str | None = None, itp: str | None = None, affinity: bool | int = False,
        external_name: str | None = None, publish_not_ready: bool | None = None) -> dict:
    """A Service. `ip="None"` makes it headless; `affinity=True` is ClientIP with the default
    timeout, an int is ClientIP with that timeoutSeconds."""
    spec: dict[str, Any] = {"type": type, "ports": list(ports)}
    if ip is not None:
        spec["clusterIP"] = ip
        spec["clusterIPs"] = ips if ips is not None else [ip]
    if selector is not None:
        spec["selector"] = selector
    if external_ips is not None:
        spec["externalIPs"] = external_ips
    if lb_ip is not None:
        spec["loadBalancerIP"] = lb_ip
    if ranges is not None:
        spec["loadBalancerSourceRanges"] = ranges
    if etp is not None:
        spec["externalTrafficPolicy"] = etp
    if itp is not None:
        spec["internalTrafficPolicy"] = itp
    if affinity is not False:
        spec["sessionAffinity"] = "ClientIP"
        if affinity is not True:
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity}}
    if external_name is not None:
        spec["externalName"] = external_name
    if publish_not_ready is not None:
        spec["publishNotReadyAddresses"] = publish_not_ready
    status: dict[str, Any] = {"loadBalancer": {}}
    if lb:
        status["loadBalancer"]["ingress"] = [ingress(e) if isinstance(e, str) else e for e in lb]
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": spec, "status": status}


def eport(number: int | None, *, name: str = "", proto: str = "TCP") -> dict:
    """An EndpointSlice port (number None: the slice leaves the port unset)."""
    return {"name": name, "port": number, "protocol": proto}


def ep(ip: str, node_name: str | None = None, *, ready: bool | None = None, serving: bool | None = None,
       terminating: bool | None = None, zones: list[str] | None = None, for_nodes: list[str] | None = None,
       addresses: list[str] | None = None, conditions: bool = True) -> dict:
    """An EndpointSlice endpoint; conditions left None are left out (the API's "absent")."""
    entry: dict[str, Any] = {"addresses": addresses if addresses is not None else [ip]}
    if conditions:
        written = {key: value for key, value in
                   (("ready", ready), ("serving", serving), ("terminating", terminating)) if value is not None}
        entry["conditions"] = written
    if node_name is not None:
        entry["nodeName"] = node_name
        if node_name in ZONES:
            entry["zone"] = ZONES[node_name]
    hints: dict[str, Any] = {}
    if zones is not None:
        hints["forZones"] = [{"name": zone} for zone in zones]
    if for_nodes is not None:
        hints["forNodes"] = [{"name": name} for name in for_nodes]
    if hints:
        entry["hints"] = hints
    entry["targetRef"] = {"kind": "Pod", "namespace": "default",
                          "name": "pod-" + ip.replace(".", "-").replace(":", "-")}
    return entry


def terminating(ip: str, node_name: str | None = None, *, serving: bool = True, **hints: Any) -> dict:
    """An endpoint of a pod being deleted (not ready; serving while it still passes its probe)."""
    return ep(ip, node_name, ready=False, serving=serving, terminating=True, **hints)


def not_ready(ip: str, node_name: str | None = None) -> dict:
    return ep(ip, node_name, ready=False, serving=False, terminating=False)


def slice(service: str, *endpoints: dict, ports: tuple[dict, ...] = (eport(8080),), name: str | None = None,
          ns: str = "default", family: str = "IPv4") -> dict:
    """An EndpointSlice of `service` (label kubernetes.io/service-name)."""
    if name is None:
        digest = zlib.crc32(json.dumps([endpoints, ports, family], sort_keys=True).encode())
        name = f"{service}-{digest:08x}"
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
            "addressType": family, "ports": list(ports), "endpoints": list(endpoints)}


def pod(name: str, ip: str | None, node_name: str, *, labels: dict | None = None, ready: bool = True,
        ports: tuple[tuple[str, int, str], ...] = (), deleting: bool = False, ns: str = "default",
        ip6: str | None = None) -> dict:
    """A running Pod; ports are (name, containerPort, protocol) of its container; `ip6` a second
    podIP (a dual-stack pod)."""
    metadata: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels if labels is not None else {"app": "web"}}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": "Running",
                              "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    ips = [a for a in (ip, ip6) if a is not None]
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": a} for a in ips]
    container = {"name": "app", "image": "example/app:1",
                 "ports": [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"nodeName": node_name, "containers": [container]}, "status": status}


NODES = (
    node("node-a", NODE_A, zone="zone-a", pod_cidr="10.244.1.0/24", external_ip=NODE_A_EXT),
    node("node-b", NODE_B, zone="zone-b", pod_cidr="10.244.2.0/24"),
    node("node-c", NODE_C, zone="zone-a", pod_cidr="10.244.3.0/24"),
)


def service_cidr(name: str, *cidrs: str, version: str = "v1") -> dict:
    """A ServiceCIDR (cluster-scoped) as `kubectl get servicecidrs -o json` prints it."""
    return {"apiVersion": f"networking.k8s.io/{version}", "kind": "ServiceCIDR", "metadata": {"name": name},
            "spec": {"cidrs": list(cidrs)},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "",
                                       "message": "Kubernetes Service CIDR is ready",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}


def cluster(*objects: dict, config: dict | None = None, nodes: tuple[dict, ...] = NODES) -> tuple[dict, ...]:
    """The standard nodes and kube-proxy configuration plus `objects`."""
    return (*nodes, config if config is not None else proxy_config(), *objects)


# --------------------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Reach:
    """Every flow is DNATed to one of `endpoints`, and over the group exactly that set is reached.

    masq: True -> the output source is the node's primary IP; False -> the client's address and
    port are kept; "hairpin" -> masqueraded exactly when the chosen endpoint is the client itself.
    per_client: every client sticks to one endpoint over the group (ClientIP session affinity).
    keep: label of an earlier group with the same flows: a flow whose endpoint then is still in
      `endpoints` keeps it (conntrack).
    clients_keep: label of an earlier group: a client whose endpoint then is still in `endpoints`
      keeps it (affinity). clients_change: label of an earlier group: some client's endpoint
      differs (the affinity entry expired).
    Replies from the chosen endpoints are checked to come back from the frontend to the client.
    """

    endpoints: frozenset[str]
    masq: bool | str = False
    per_client: bool = False
    keep: str | None = None
    clients_keep: str | None = None
    clients_change: str | None = None


@dataclass(frozen=True)
class Reject:
    """Packet absent; in its place an ICMP port unreachable from the address the client used,
    quoting the original packet."""


@dataclass(frozen=True)
class Drop:
    """Packet absent and no reply."""


@dataclass(frozen=True)
class Pass:
    """Packet out byte-identical."""


Expect = Reach | Reject | Drop | Pass
REJECT, DROP, PASS = Reject(), Drop(), Pass()


def reach(endpoints: frozenset[str], masq: bool | str = False, **checks: Any) -> Reach:
    return Reach(frozenset(endpoints), masq, **checks)


# --------------------------------------------------------------------------------- traffic


@dataclass(frozen=True)
class Flows:
    """`n` flows (each one packet, random source ports) from `src` (clients used in turn) to
    dst:dport/proto. With `again`, the same flows (5-tuples) as that earlier group are continued
    (TCP: ACK instead of SYN)."""

    label: str
    src: tuple[str, ...]
    dst: str
    dport: int
    proto: str  # "TCP", "UDP", "SCTP" (a DATA chunk), "ICMP" (echo request) or "ARP"
    n: int
    expect: Expect
    again: str | None = None
    sport: int | None = None  # every flow from this source port (clients must then differ)


@dataclass(frozen=True)
class Update:
    """Dataplane.update() with these objects between captures."""

    objects: tuple[dict, ...]


@dataclass(frozen=True)
class Wait:
    """The packet clock jumps forward."""

    seconds: float


Step = Flows | Update | Wait


def default_count(expect: Expect, sources: int) -> int:
    if isinstance(expect, Reach):
        if expect.per_client:
            return 5 * sources
        return 200 if len(expect.endpoints) > 1 else 24
    return 6


def flows(src: str | tuple[str, ...], dst: str, dport: int, expect: Expect, *, proto: str = "TCP",
          n: int | None = None, label: str | None = None, sport: int | None = None) -> Flows:
    sources = (src,) if isinstance(src, str) else tuple(src)
    count = n or (len(sources) if sport is not None else default_count(expect, len(sources)))
    return Flows(label or "", sources, dst, dport, proto, count, expect, sport=sport)


def udp(src: str | tuple[str, ...], dst: str, dport: int, expect: Expect, **kw: Any) -> Flows:
    return flows(src, dst, dport, expect, proto="UDP", **kw)


def sctp(src: str | tuple[str, ...], dst: str, dport: int, expect: Expect, **kw: Any) -> Flows:
    return flows(src, dst, dport, expect, proto="SCTP", **kw)


def again(of: str, expect: Expect, *, label: str | None = None) -> Flows:
    """Continue the flows of group `of` (source, destination and protocol come from it)."""
    return Flows(label or "", (), "", 0, "", 0, expect, again=of)


# --------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    rules: tuple[str, ...]
    objects: tuple[dict, ...]
    traffic: tuple[Step, ...]
    node: str = "node-a"
    snat: str = NODE_A  # the node's primary IP: where masqueraded flows come from
    snat6: str = NODE_A6  # the node's IPv6 address: where masqueraded IPv6 flows come from

    def __post_init__(self) -> None:
        labelled = []
        for index, step in enumerate(self.traffic):
            if isinstance(step, Flows) and not step.label:
                step = replace(step, label=f"g{index}")
            labelled.append(step)
        object.__setattr__(self, "traffic", tuple(labelled))
        unknown = set(self.rules) - set(RULES)
        if unknown:
            raise ValueError(f"case {self.id}: unknown rules {sorted(unknown)}")


def case(id: str, rules: str, objects: tuple[dict, ...], *traffic: Step, **kw: Any) -> Case:
    return Case(id, tuple(rules.split()), tuple(objects), tuple(traffic), **kw)


RULES = {
    # Node view
    "node.addresses": "node addresses from status.addresses; SNAT to the node's primary IP",
    "node.local-detect": "clusterCIDR (or detectLocal) decides which sources are pod traffic",
    "node.nodeport-addresses": "nodePortAddresses: default/primary = primary IP; CIDRs narrow to local IPs",
    "node.masquerade-all": "masqueradeAll",
    # Service ports
    "port.protocols": "TCP, UDP (and SCTP) on the same number are independent service ports",
    "port.no-entries": "headless and ExternalName services get no dataplane entries",
    "frontend.cluster-ips": "ClusterIP(s), dual-stack clusterIPs",
    "frontend.external-ips": "externalIPs are frontends",
    "frontend.lb-ingress": "LB ingress IPs with ipMode unset/VIP; Proxy and spec.loadBalancerIP alone are not",
    "frontend.node-port": "nodePort on every NodePort address of the node",
    "addr.leading-zeros": "IPs with leading zeros are decimal",
    "endpoint.port-match": "endpoint port from the slice port with the service port's name and protocol",
    "endpoint.slice-label": "slices belong to a service through kubernetes.io/service-name",
    "endpoint.first-address": "only the first address of an endpoint counts",
    "endpoint.duplicate-ip": "two endpoints with one IP: the non-terminating one wins",
    "endpoint.pods": "with Pods as input, endpoints from the selector; named targetPort per pod",
    # Endpoint conditions
    "cond.meaning": "ready/serving absent = true; terminating = true only when set",
    "cond.local": "local = nodeName equals this node; unset nodeName is remote",
    "set.cluster": "cluster set: ready, else serving+terminating (unfiltered)",
    "set.local": "local set: local ready, else local serving+terminating; decided independently",
    "topology.zone": "zone hints narrow the cluster set when every ready endpoint has one and one fits",
    "topology.node": "node hints narrow first, the same way",
    "topology.local-ignores": "the local set ignores hints",
    # Verdicts
    "verdict.reject-no-endpoint": "no usable endpoint: REJECT with ICMP port unreachable on every frontend",
    "verdict.itp-local-drop": "internalTrafficPolicy Local without local endpoint: ClusterIP traffic DROPped",
    "verdict.etp-local-drop": "externalTrafficPolicy Local without local endpoint: external traffic DROPped",
    "verdict.unknown-port": "ClusterIP on a port/protocol the service lacks: REJECT",
    "verdict.unallocated-service-ip": "address inside a ServiceCIDR that no service has: DROP "
                                      "(no ServiceCIDR objects: passes)",
    "verdict.source-ranges": "loadBalancerSourceRanges on LB IPs (whitespace, /0, other family, node IP rule)",
    "verdict.pass": "anything not addressed to a frontend passes untouched",
    # Set and masquerade
    "masq.cluster-ip": "ClusterIP: masquerade non-pod sources (with clusterCIDR) or with masqueradeAll",
    "masq.external-cluster": "external IP / LB IP / NodePort with ETP Cluster: cluster set, always masquerade",
    "masq.etp-local": "ETP Local: pods -> cluster set unmasqueraded, node -> cluster set masqueraded, "
                      "others -> local set with the client IP kept",
    "masq.hairpin": "hairpin: the endpoint is the source itself -> masquerade",
    # Session affinity
    "affinity.client-ip": "ClientIP affinity: one endpoint per client IP per service port",
    "affinity.timeout": "timeoutSeconds (default 10800), refreshed on use",
    "affinity.shared": "affinity shared by all frontends of the service port",
    "affinity.in-set": "an affinity entry only counts while its endpoint is in the set",
    # Conntrack
    "ct.reply": "replies are translated back from the frontend to the client",
    "ct.udp-reselect": "UDP flows to an endpoint no longer serving select again after an update",
    "ct.tcp-keep": "TCP flows keep their endpoint (terminating ones drain)",
    "ct.no-endpoint-cleared": "flows seen while a service had no endpoints do not stick",
}

# Frequently used objects.
WEB = svc("web", port(80, target=8080), ip=VIP)
WEB_SLICE = slice("web", ep(E1, "node-a"), ep(E2, "node-b"), ep(E3, "node-c"))
ALL3 = at(8080, E1, E2, E3)
DNS = svc("dns", port(53, name="dns", proto="UDP", target=5353), ip="10.96.0.53")
DNS_SLICE = slice("dns", ep(E1, "node-a"), ep(E2, "node-b"), ep(E3, "node-c"),
                  ports=(eport(5353, name="dns", proto="UDP"),))
SIG_IP = "10.96.0.68"  # an SCTP-only service (Diameter-like signalling)
SIG = svc("sig", port(3868, name="diameter", proto="SCTP", target=3869), ip=SIG_IP)
SIG_PORTS = (eport(3869, name="diameter", proto="SCTP"),)
SIG_SLICE = slice("sig", ep(E1, "node-a"), ep(E2, "node-b"), ep(E3, "node-c"), ports=SIG_PORTS)
SIG3 = at(3869, E1, E2, E3)


def nodeport(name: str = "np", *, ip: str = "10.96.0.30", node_port: int = NP, proto: str = "TCP",
             **kw: Any) -> dict:
    return svc(name, port(80, target=8080, node_port=node_port, proto=proto), type="NodePort", ip=ip, **kw)


def loadbalancer(name: str = "lb", *, ip: str = "10.96.0.40", lb: list | None = None, **kw: Any) -> dict:
    return svc(name, port(80, target=8080, node_port=30040), type="LoadBalancer", ip=ip,
               lb=[LB] if lb is None else lb, **kw)


def three(service: str, **kw: Any) -> dict:
    """The standard E1 (local), E2, E3 slice for `service`."""
    return slice(service, ep(E1, "node-a"), ep(E2, "node-b"), ep(E3, "node-c"), **kw)


def remote_only(service: str) -> dict:
    return slice(service, ep(E2, "node-b"), ep(E3, "node-c"))


PODS_A = clients("10.244.1.", 101, 40)  # 40 client pods on node-a
EXTERNALS = clients("203.0.113.", 1, 40)  # 40 external clients

CASES: list[Case] = [
    # ------------------------------------------------------------------ ClusterIP and masquerade
    case("clusterip-tcp-from-pod", "frontend.cluster-ips masq.cluster-ip node.local-detect cond.meaning ct.reply",
         cluster(WEB, WEB_SLICE),
         flows(POD, VIP, 80, reach(ALL3))),
    case("clusterip-udp-from-pod", "frontend.cluster-ips masq.cluster-ip cond.meaning ct.reply",
         cluster(DNS, DNS_SLICE),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2, E3)))),
    case("clusterip-sctp", "frontend.cluster-ips masq.cluster-ip port.protocols ct.reply",
         cluster(SIG, SIG_SLICE),
         sctp(POD, SIG_IP, 3868, reach(SIG3)),
         sctp(POD_B, SIG_IP, 3868, reach(SIG3)),
         sctp(EXT, SIG_IP, 3868, reach(SIG3, masq=True)),
         sctp(NODE_A, SIG_IP, 3868, reach(SIG3, masq=True)),
         flows(POD, SIG_IP, 3868, REJECT),
         udp(POD, SIG_IP, 3868, REJECT)),
    case("clusterip-sctp-masquerade-all", "node.masquerade-all masq.cluster-ip port.protocols",
         cluster(SIG, SIG_SLICE, config=proxy_config(masquerade_all=True)),
         sctp(POD, SIG_IP, 3868, reach(SIG3, masq=True)),
         sctp(POD_B, SIG_IP, 3868, reach(SIG3, masq=True))),
    case("clusterip-from-remote-pod", "masq.cluster-ip node.local-detect",
         cluster(WEB, WEB_SLICE),
         flows(POD_B, VIP, 80, reach(ALL3))),
    case("clusterip-from-node", "masq.cluster-ip node.addresses node.local-detect",
         cluster(WEB, WEB_SLICE),
         flows(NODE_A, VIP, 80, reach(ALL3, masq=True)),
         flows(NODE_A_EXT, VIP, 80, reach(ALL3, masq=True))),
    case("clusterip-from-external", "masq.cluster-ip node.addresses node.local-detect",
         cluster(WEB, WEB_SLICE),
         flows(EXT, VIP, 80, reach(ALL3, masq=True)),
         flows(NODE_B, VIP, 80, reach(ALL3, masq=True))),
    case("clusterip-no-cluster-cidr-no-masquerade", "masq.cluster-ip node.local-detect",
         cluster(WEB, WEB_SLICE, config=proxy_config(cluster_cidr=None)),
         flows(EXT, VIP, 80, reach(ALL3)),
         flows(POD, VIP, 80, reach(ALL3))),
    case("clusterip-masquerade-all", "node.masquerade-all masq.cluster-ip",
         cluster(WEB, WEB_SLICE, config=proxy_config(masquerade_all=True)),
         flows(POD, VIP, 80, reach(ALL3, masq=True)),
         flows(POD_B, VIP, 80, reach(ALL3, masq=True))),
    case("clusterip-masquerade-all-without-cluster-cidr", "node.masquerade-all masq.cluster-ip",
         cluster(WEB, WEB_SLICE, config=proxy_config(cluster_cidr=None, masquerade_all=True)),
         flows(POD, VIP, 80, reach(ALL3, masq=True))),
    case("clusterip-detect-local-node-cidr", "node.local-detect masq.cluster-ip",
         cluster(WEB, WEB_SLICE, config=proxy_config(detect_local_mode="NodeCIDR")),
         flows(POD, VIP, 80, reach(ALL3)),
         flows(POD_B, VIP, 80, reach(ALL3, masq=True))),
    case("clusterip-two-named-ports", "endpoint.port-match frontend.cluster-ips",
         cluster(svc("web", port(80, name="http", target="http"), port(9100, name="metrics"), ip=VIP),
                 three("web", ports=(eport(8080, name="http"), eport(9100, name="metrics")))),
         flows(POD, VIP, 80, reach(ALL3)),
         flows(POD, VIP, 9100, reach(at(9100, E1, E2, E3)))),
    case("clusterip-other-node-view", "cond.local node.addresses masq.etp-local frontend.node-port",
         cluster(nodeport(etp="Local"), slice("np", ep(E1, "node-a"), ep(E2, "node-b"), ep(E4, "node-b"))),
         flows(EXT, NODE_B, NP, reach(at(8080, E2, E4))),
         flows(EXT, NODE_A, NP, PASS),
         flows(POD_B, "10.96.0.30", 80, reach(at(8080, E1, E2, E4))),
         flows(EXT, "10.96.0.30", 80, reach(at(8080, E1, E2, E4), masq=True)),
         node="node-b", snat=NODE_B),

    # ------------------------------------------------------------------ service ports
    case("port-name-selects-slice-port", "endpoint.port-match",
         cluster(svc("web", port(80, name="http"), port(81, name="admin"), ip=VIP),
                 three("web", ports=(eport(9090, name="admin"), eport(8080, name="http")))),
         flows(POD, VIP, 80, reach(ALL3)),
         flows(POD, VIP, 81, reach(at(9090, E1, E2, E3)))),
    case("port-name-mismatch-rejects", "endpoint.port-match verdict.reject-no-endpoint",
         cluster(svc("web", port(80, name="http"), ip=VIP), three("web", ports=(eport(8080, name="web"),))),
         flows(POD, VIP, 80, REJECT)),
    case("port-name-needs-protocol", "endpoint.port-match port.protocols verdict.reject-no-endpoint",
         cluster(svc("dns", port(53, name="dns", proto="UDP"), ip="10.96.0.53"),
                 three("dns", ports=(eport(53, name="dns", proto="TCP"),))),
         udp(POD, "10.96.0.53", 53, REJECT),
         flows(POD, "10.96.0.53", 53, REJECT)),
    case("port-unnamed", "endpoint.port-match",
         cluster(svc("web", port(80, target=8080), ip=VIP), three("web", ports=(eport(8080),))),
         flows(POD, VIP, 80, reach(ALL3))),
    case("port-unset-in-slice-ignored", "endpoint.port-match verdict.reject-no-endpoint",
         cluster(WEB, three("web", ports=(eport(None),))),
         flows(POD, VIP, 80, REJECT)),
    case("tcp-udp-same-number-different-ports", "port.protocols endpoint.port-match",
         cluster(svc("dns", port(53, name="dns", proto="UDP"), port(53, name="dns-tcp", proto="TCP"),
                     ip="10.96.0.53"),
                 three("dns", ports=(eport(5353, name="dns", proto="UDP"), eport(5354, name="dns-tcp")))),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2, E3))),
         flows(POD, "10.96.0.53", 53, reach(at(5354, E1, E2, E3)))),
    case("tcp-udp-same-number-different-endpoints", "port.protocols endpoint.slice-label",
         cluster(svc("dns", port(53, name="dns", proto="UDP"), port(53, name="dns-tcp", proto="TCP"),
                     ip="10.96.0.53"),
                 slice("dns", ep(E1, "node-a"), ports=(eport(53, name="dns", proto="UDP"),), name="dns-udp"),
                 slice("dns", ep(E2, "node-b"), ep(E3, "node-c"), ports=(eport(53, name="dns-tcp"),),
                       name="dns-tcp")),
         udp(POD, "10.96.0.53", 53, reach(at(53, E1))),
         flows(POD, "10.96.0.53", 53, reach(at(53, E2, E3)))),
    case("tcp-has-endpoints-udp-rejects", "port.protocols verdict.reject-no-endpoint",
         cluster(svc("dns", port(53, name="dns", proto="UDP"), port(53, name="dns-tcp", proto="TCP"),
                     ip="10.96.0.53"),
                 three("dns", ports=(eport(53, name="dns-tcp"),))),
         flows(POD, "10.96.0.53", 53, reach(at(53, E1, E2, E3))),
         udp(POD, "10.96.0.53", 53, REJECT)),
    case("sctp-port-beside-tcp", "port.protocols verdict.unknown-port",
         cluster(svc("web", port(80, name="web"), port(80, name="web-sctp", proto="SCTP"), ip=VIP),
                 three("web", ports=(eport(8080, name="web"), eport(8080, name="web-sctp", proto="SCTP")))),
         flows(POD, VIP, 80, reach(ALL3)),
         sctp(POD, VIP, 80, reach(ALL3)),
         udp(POD, VIP, 80, REJECT),
         sctp(POD, VIP, 81, REJECT)),
    case("tcp-udp-sctp-same-number-different-ports", "port.protocols endpoint.port-match frontend.node-port",
         cluster(svc("sig", port(53, name="u", proto="UDP", node_port=30053), port(53, name="t", node_port=30053),
                     port(53, name="s", proto="SCTP", node_port=30053), type="NodePort", ip="10.96.0.53"),
                 three("sig", ports=(eport(5353, name="u", proto="UDP"), eport(5354, name="t"),
                                     eport(5355, name="s", proto="SCTP")))),
         sctp(POD, "10.96.0.53", 53, reach(at(5355, E1, E2, E3))),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2, E3))),
         flows(POD, "10.96.0.53", 53, reach(at(5354, E1, E2, E3))),
         sctp(EXT, NODE_A, 30053, reach(at(5355, E1, E2, E3), masq=True)),
         udp(EXT, NODE_A, 30053, reach(at(5353, E1, E2, E3), masq=True)),
         flows(EXT, NODE_A, 30053, reach(at(5354, E1, E2, E3), masq=True))),
    case("tcp-sctp-same-number-different-endpoints", "port.protocols endpoint.slice-label verdict.reject-no-endpoint",
         cluster(svc("sig", port(3868, name="tcp"), port(3868, name="sctp", proto="SCTP"),
                     port(3870, name="sctp-empty", proto="SCTP"), ip=SIG_IP),
                 slice("sig", ep(E1, "node-a"), ports=(eport(3868, name="tcp"),), name="sig-tcp"),
                 slice("sig", ep(E2, "node-b"), ep(E3, "node-c"),
                       ports=(eport(3868, name="sctp", proto="SCTP"), eport(3870, name="sctp-empty")),
                       name="sig-sctp")),
         flows(POD, SIG_IP, 3868, reach(at(3868, E1))),
         sctp(POD, SIG_IP, 3868, reach(at(3868, E2, E3))),
         sctp(POD, SIG_IP, 3870, REJECT),  # the slice's 3870 is TCP: no SCTP endpoint
         udp(POD, SIG_IP, 3868, REJECT)),

    # ------------------------------------------------------------------ slices and endpoints
    case("slice-belongs-by-label", "endpoint.slice-label",
         cluster(WEB, svc("other", port(80, target=8080), ip="10.96.0.11"),
                 slice("web", ep(E1, "node-a"), name="web-x7k2p"),
                 slice("other", ep(E2, "node-b"), name="web"),
                 slice("other", ep(E3, "node-c"), name="other-abcde")),
         flows(POD, VIP, 80, reach(at(8080, E1))),
         flows(POD, "10.96.0.11", 80, reach(at(8080, E2, E3)))),
    case("slices-union", "endpoint.slice-label",
         cluster(WEB, slice("web", ep(E1, "node-a"), name="web-1"),
                 slice("web", ep(E2, "node-b"), ep(E3, "node-c"), name="web-2")),
         flows(POD, VIP, 80, reach(ALL3))),
    case("slice-ipv6-and-fqdn-ignored", "endpoint.slice-label frontend.cluster-ips",
         cluster(WEB, slice("web", ep(E1, "node-a"), ep(E2, "node-b"), name="web-v4"),
                 slice("web", ep("fd00:10:244::5", "node-a"), family="IPv6", name="web-v6"),
                 slice("web", ep("db.example.com"), family="FQDN", name="web-fqdn")),
         flows(POD, VIP, 80, reach(at(8080, E1, E2)))),
    case("endpoint-first-address-only", "endpoint.first-address",
         cluster(WEB, slice("web", ep(E1, "node-a", addresses=[E1, "10.244.1.66"]),
                            ep(E2, "node-b", addresses=[E2, "10.244.2.66", "10.244.2.67"]))),
         flows(POD, VIP, 80, reach(at(8080, E1, E2)))),
    case("duplicate-ip-terminating-read-first", "endpoint.duplicate-ip set.cluster",
         cluster(WEB, slice("web", terminating(E1, "node-a"), name="web-a"),
                 slice("web", ep(E1, "node-a"), ep(E2, "node-b"), name="web-b")),
         flows(POD, VIP, 80, reach(at(8080, E1, E2)))),
    case("duplicate-ip-terminating-read-last", "endpoint.duplicate-ip set.cluster",
         cluster(WEB, slice("web", ep(E1, "node-a"), ep(E2, "node-b"), name="web-a"),
                 slice("web", terminating(E1, "node-a"), name="web-b")),
         flows(POD, VIP, 80, reach(at(8080, E1, E2)))),

    # ------------------------------------------------------------------ leading zeros
    case("leading-zeros-cluster-ip-and-endpoint", "addr.leading-zeros",
         cluster(svc("web", port(80, target=8080), ip="10.96.000.010"),
                 slice("web", ep("10.244.001.005", "node-a"), ep("10.244.002.05", "node-b"))),
         flows(POD, VIP, 80, reach(at(8080, E1, E2)))),
    case("leading-zeros-external-ip-and-cluster-cidr", "addr.leading-zeros frontend.external-ips node.local-detect",
         cluster(svc("web", port(80, target=8080), ip=VIP, external_ips=["192.0.002.010"]), WEB_SLICE,
                 config=proxy_config(cluster_cidr="10.244.000.000/16")),
         flows(EXT, XIP, 80, reach(ALL3, masq=True)),
         flows(POD, VIP, 80, reach(ALL3))),
    case("leading-zeros-lb-and-source-range", "addr.leading-zeros verdict.source-ranges frontend.lb-ingress",
         cluster(loadbalancer(lb=["198.051.100.001"], ranges=["203.0.113.000/24"]), three("lb")),
         flows(EXT, LB, 80, reach(ALL3, masq=True)),
         flows(OUTSIDER, LB, 80, DROP)),
    case("leading-zeros-node-address", "addr.leading-zeros node.addresses frontend.node-port",
         cluster(nodeport(), three("np"),
                 nodes=(node("node-a", "192.168.000.010", zone="zone-a", pod_cidr="10.244.1.0/24"), *NODES[1:])),
         flows(EXT, NODE_A, NP, reach(ALL3, masq=True))),

    # ------------------------------------------------------------------ headless, ExternalName, dual-stack
    case("headless-gets-nothing", "port.no-entries verdict.pass",
         cluster(svc("web", port(80, target=8080), ip="None"), WEB_SLICE),
         flows(POD, E1, 8080, PASS),
         flows(POD, E2, 80, PASS)),
    case("externalname-gets-nothing", "port.no-entries verdict.pass",
         cluster(svc("ext", port(80, target=8080), type="ExternalName", external_name="db.example.com",
                     ip="10.96.0.50", external_ips=[XIP]), three("ext")),
         flows(POD, XIP, 80, PASS),
         flows(EXT, XIP, 80, PASS),
         flows(POD, "10.96.0.50", 80, PASS)),
    case("dual-stack-ipv6-primary", "frontend.cluster-ips",
         cluster(svc("web", port(80, target=8080), ip="fd00:96::20", ips=["fd00:96::20", "10.96.0.20"]),
                 WEB_SLICE),
         flows(POD, "10.96.0.20", 80, reach(ALL3)),
         flows(EXT, "10.96.0.20", 80, reach(ALL3, masq=True))),
    case("dual-stack-ipv4-primary", "frontend.cluster-ips",
         cluster(svc("web", port(80, target=8080), ip="10.96.0.21", ips=["10.96.0.21", "fd00:96::21"]),
                 WEB_SLICE),
         flows(POD, "10.96.0.21", 80, reach(ALL3))),

    # ------------------------------------------------------------------ NodePort
    case("nodeport-from-external", "frontend.node-port masq.external-cluster node.addresses",
         cluster(nodeport(), three("np")),
         flows(EXT, NODE_A, NP, reach(ALL3, masq=True))),
    case("nodeport-from-pod", "frontend.node-port masq.external-cluster",
         cluster(nodeport(), three("np")),
         flows(POD, NODE_A, NP, reach(ALL3, masq=True)),
         flows(POD_B, NODE_A, NP, reach(ALL3, masq=True))),
    case("nodeport-from-node", "frontend.node-port masq.external-cluster",
         cluster(nodeport(), three("np")),
         flows(NODE_A, NODE_A, NP, reach(ALL3, masq=True)),
         flows(NODE_A_EXT, NODE_A, NP, reach(ALL3, masq=True))),
    case("nodeport-service-cluster-ip", "frontend.cluster-ips masq.cluster-ip",
         cluster(nodeport(), three("np")),
         flows(POD, "10.96.0.30", 80, reach(ALL3)),
         flows(EXT, "10.96.0.30", 80, reach(ALL3, masq=True))),
    case("nodeport-default-primary-ip-only", "node.nodeport-addresses frontend.node-port verdict.pass",
         cluster(nodeport(), three("np")),
         flows(EXT, NODE_A, NP, reach(ALL3, masq=True)),
         flows(EXT, NODE_A_EXT, NP, PASS),
         flows(EXT, NODE_B, NP, PASS)),
    case("nodeport-addresses-primary", "node.nodeport-addresses frontend.node-port",
         cluster(nodeport(), three("np"), config=proxy_config(node_port_addresses=["primary"])),
         flows(EXT, NODE_A, NP, reach(ALL3, masq=True)),
         flows(EXT, NODE_A_EXT, NP, PASS)),
    case("nodeport-addresses-cidr", "node.nodeport-addresses frontend.node-port node.addresses",
         cluster(nodeport(), three("np"), config=proxy_config(node_port_addresses=["198.18.0.0/24"])),
         flows(EXT, NODE_A_EXT, NP, reach(ALL3, masq=True)),
         flows(EXT, NODE_A, NP, PASS)),
    case("nodeport-addresses-all", "node.nodeport-addresses frontend.node-port",
         cluster(nodeport(), three("np"), config=proxy_config(node_port_addresses=["0.0.0.0/0"])),
         flows(EXT, NODE_A, NP, reach(ALL3, masq=True)),
         flows(EXT, NODE_A_EXT, NP, reach(ALL3, masq=True)),
         flows(EXT, NODE_B, NP, PASS)),
    case("nodeport-addresses-matching-nothing", "node.nodeport-addresses frontend.node-port verdict.pass",
         cluster(nodeport(), three("np"), config=proxy_config(node_port_addresses=["10.99.0.0/16"])),
         flows(EXT, NODE_A, NP, PASS),
         flows(EXT, NODE_A_EXT, NP, PASS),
         flows(EXT, "10.96.0.30", 80, reach(ALL3, masq=True))),
    case("nodeport-udp", "frontend.node-port port.protocols",
         cluster(nodeport(proto="UDP", node_port=30053), three("np", ports=(eport(8080, proto="UDP"),))),
         udp(EXT, NODE_A, 30053, reach(ALL3, masq=True)),
         flows(EXT, NODE_A, 30053, PASS)),
    case("nodeport-sctp", "frontend.node-port port.protocols masq.external-cluster ct.reply",
         cluster(nodeport(proto="SCTP", node_port=30068), three("np", ports=(eport(8080, proto="SCTP"),))),
         sctp(EXT, NODE_A, 30068, reach(ALL3, masq=True)),
         sctp(POD, NODE_A, 30068, reach(ALL3, masq=True)),
         sctp(POD, "10.96.0.30", 80, reach(ALL3)),
         flows(EXT, NODE_A, 30068, PASS),
         udp(EXT, NODE_A, 30068, PASS),
         sctp(EXT, NODE_A_EXT, 30068, PASS)),
    case("nodeport-sctp-etp-local", "masq.etp-local frontend.node-port port.protocols set.local",
         cluster(nodeport(proto="SCTP", etp="Local"), three("np", ports=(eport(8080, proto="SCTP"),))),
         sctp(EXTERNALS, NODE_A, NP, reach(at(8080, E1))),
         sctp(POD_B, NODE_A, NP, reach(ALL3)),
         sctp(NODE_A_EXT, NODE_A, NP, reach(ALL3, masq=True))),
    case("nodeport-tcp-udp-same-number", "frontend.node-port port.protocols endpoint.port-match",
         cluster(svc("dns", port(53, name="dns", proto="UDP", node_port=30053),
                     port(53, name="dns-tcp", proto="TCP", node_port=30053), type="NodePort", ip="10.96.0.53"),
                 three("dns", ports=(eport(5353, name="dns", proto="UDP"), eport(5354, name="dns-tcp")))),
         udp(EXT, NODE_A, 30053, reach(at(5353, E1, E2, E3), masq=True)),
         flows(EXT, NODE_A, 30053, reach(at(5354, E1, E2, E3), masq=True))),

    # ------------------------------------------------------------------ LoadBalancer
    case("lb-ipmode-unset", "frontend.lb-ingress masq.external-cluster",
         cluster(loadbalancer(), three("lb")),
         flows(EXT, LB, 80, reach(ALL3, masq=True)),
         flows(EXT, NODE_A, 30040, reach(ALL3, masq=True))),
    case("lb-ipmode-vip", "frontend.lb-ingress masq.external-cluster",
         cluster(loadbalancer(lb=[ingress(LB, mode="VIP")]), three("lb")),
         flows(EXT, LB, 80, reach(ALL3, masq=True))),
    case("lb-ipmode-proxy-gets-no-frontend", "frontend.lb-ingress verdict.pass",
         cluster(loadbalancer(lb=[ingress(LB, mode="Proxy")]), three("lb")),
         flows(EXT, LB, 80, PASS),
         flows(POD, LB, 80, PASS),
         flows(EXT, "10.96.0.40", 80, reach(ALL3, masq=True))),
    case("lb-mixed-ingress", "frontend.lb-ingress",
         cluster(loadbalancer(lb=[ingress(LB, mode="Proxy"), ingress(LB2, mode="VIP"),
                                  ingress(hostname="lb.example.com")]), three("lb")),
         flows(EXT, LB2, 80, reach(ALL3, masq=True)),
         flows(EXT, LB, 80, PASS)),
    case("lb-spec-loadbalancerip-alone-unused", "frontend.lb-ingress verdict.pass",
         cluster(loadbalancer(lb=[], lb_ip=LB), three("lb")),
         flows(EXT, LB, 80, PASS)),
    case("lb-from-pod-masquerades", "frontend.lb-ingress masq.external-cluster",
         cluster(loadbalancer(), three("lb")),
         flows(POD, LB, 80, reach(ALL3, masq=True)),
         flows(NODE_A, LB, 80, reach(ALL3, masq=True))),

    # ------------------------------------------------------------------ external IPs
    case("external-ip-from-external", "frontend.external-ips masq.external-cluster",
         cluster(svc("web", port(80, target=8080), ip=VIP, external_ips=[XIP]), WEB_SLICE),
         flows(EXT, XIP, 80, reach(ALL3, masq=True))),
    case("external-ip-from-pod", "frontend.external-ips masq.external-cluster",
         cluster(svc("web", port(80, target=8080), ip=VIP, external_ips=[XIP]), WEB_SLICE),
         flows(POD, XIP, 80, reach(ALL3, masq=True))),
    case("external-ip-udp", "frontend.external-ips port.protocols",
         cluster(svc("dns", port(53, name="dns", proto="UDP", target=5353), ip="10.96.0.53",
                     external_ips=[XIP]), DNS_SLICE),
         udp(EXT, XIP, 53, reach(at(5353, E1, E2, E3), masq=True))),
    case("external-ip-unknown-port-passes", "frontend.external-ips verdict.unknown-port verdict.pass",
         cluster(svc("web", port(80, target=8080), ip=VIP, external_ips=[XIP]), WEB_SLICE),
         flows(EXT, XIP, 81, PASS),
         udp(EXT, XIP, 80, PASS),
         flows(EXT, XIP, 80, reach(ALL3, masq=True))),

    # ------------------------------------------------------------------ internalTrafficPolicy Local
    case("itp-local-uses-local-endpoints", "set.local cond.local masq.cluster-ip",
         cluster(svc("web", port(80, target=8080), ip=VIP, itp="Local"),
                 slice("web", ep(E1, "node-a"), ep(E5, "node-a"), ep(E2, "node-b"), ep(E3, "node-c"))),
         flows(POD, VIP, 80, reach(at(8080, E1, E5))),
         flows(EXT, VIP, 80, reach(at(8080, E1, E5), masq=True))),
    case("itp-local-no-local-endpoint-drops", "verdict.itp-local-drop",
         cluster(svc("web", port(80, target=8080), ip=VIP, itp="Local"), remote_only("web")),
         flows(POD, VIP, 80, DROP),
         flows(NODE_A, VIP, 80, DROP),
         flows(EXT, VIP, 80, DROP)),
    case("itp-local-no-endpoint-anywhere-rejects", "verdict.reject-no-endpoint verdict.itp-local-drop",
         cluster(svc("web", port(80, target=8080), ip=VIP, itp="Local"), slice("web")),
         flows(POD, VIP, 80, REJECT)),
    case("itp-local-falls-back-to-local-terminating", "set.local cond.meaning",
         cluster(svc("web", port(80, target=8080), ip=VIP, itp="Local"),
                 slice("web", terminating(E1, "node-a"), ep(E2, "node-b"), ep(E3, "node-c"))),
         flows(POD, VIP, 80, reach(at(8080, E1)))),
    case("itp-local-nodeport-still-cluster", "verdict.itp-local-drop masq.external-cluster",
         cluster(nodeport(itp="Local"), remote_only("np")),
         flows(POD, "10.96.0.30", 80, DROP),
         flows(EXT, NODE_A, NP, reach(at(8080, E2, E3), masq=True))),

    # ------------------------------------------------------------------ externalTrafficPolicy Local
    case("etp-local-external-keeps-client-ip", "masq.etp-local set.local cond.local",
         cluster(nodeport(etp="Local"), slice("np", ep(E1, "node-a"), ep(E5, "node-a"), ep(E2, "node-b"))),
         flows(EXT, NODE_A, NP, reach(at(8080, E1, E5)))),
    case("etp-local-pod-short-circuits", "masq.etp-local node.local-detect",
         cluster(nodeport(etp="Local"), three("np")),
         flows(POD, NODE_A, NP, reach(ALL3)),
         flows(POD_B, NODE_A, NP, reach(ALL3))),
    case("etp-local-node-short-circuits-masqueraded", "masq.etp-local node.addresses",
         cluster(nodeport(etp="Local"), three("np")),
         flows(NODE_A_EXT, NODE_A, NP, reach(ALL3, masq=True)),
         flows(NODE_A, NODE_A, NP, reach(ALL3, masq=True))),
    case("etp-local-no-local-endpoint", "verdict.etp-local-drop masq.etp-local",
         cluster(nodeport(etp="Local"), remote_only("np")),
         flows(EXT, NODE_A, NP, DROP),
         flows(POD, NODE_A, NP, reach(at(8080, E2, E3))),
         flows(NODE_A_EXT, NODE_A, NP, reach(at(8080, E2, E3), masq=True))),
    case("etp-local-no-endpoint-anywhere-rejects", "verdict.reject-no-endpoint verdict.etp-local-drop",
         cluster(nodeport(etp="Local"), slice("np")),
         flows(EXT, NODE_A, NP, REJECT),
         flows(POD, NODE_A, NP, REJECT)),
    case("etp-local-lb", "masq.etp-local frontend.lb-ingress",
         cluster(loadbalancer(etp="Local"), three("lb")),
         flows(EXT, LB, 80, reach(at(8080, E1))),
         flows(POD, LB, 80, reach(ALL3)),
         flows(EXT, NODE_A, 30040, reach(at(8080, E1)))),
    case("etp-local-lb-no-local-endpoint", "verdict.etp-local-drop masq.etp-local",
         cluster(loadbalancer(etp="Local"), remote_only("lb")),
         flows(EXT, LB, 80, DROP),
         flows(POD, LB, 80, reach(at(8080, E2, E3)))),
    case("etp-local-external-ip-on-clusterip-service", "masq.etp-local frontend.external-ips",
         cluster(svc("web", port(80, target=8080), ip=VIP, external_ips=[XIP], etp="Local"), WEB_SLICE),
         flows(EXT, XIP, 80, reach(at(8080, E1))),
         flows(POD, XIP, 80, reach(ALL3))),
    case("etp-local-does-not-touch-cluster-ip", "masq.etp-local masq.cluster-ip",
         cluster(nodeport(etp="Local"), remote_only("np")),
         flows(EXT, "10.96.0.30", 80, reach(at(8080, E2, E3), masq=True)),
         flows(POD, "10.96.0.30", 80, reach(at(8080, E2, E3)))),
    case("etp-local-without-cluster-cidr-pods-are-external", "masq.etp-local node.local-detect",
         cluster(nodeport(etp="Local"), three("np"), config=proxy_config(cluster_cidr=None)),
         flows(POD, NODE_A, NP, reach(at(8080, E1))),
         flows(POD_B, NODE_A, NP, reach(at(8080, E1)))),
    case("etp-local-falls-back-to-local-terminating", "set.local set.cluster masq.etp-local",
         cluster(nodeport(etp="Local"), slice("np", terminating(E1, "node-a"), ep(E2, "node-b"), ep(E3, "node-c"))),
         flows(EXT, NODE_A, NP, reach(at(8080, E1))),
         flows(POD, NODE_A, NP, reach(at(8080, E2, E3)))),
    case("etp-local-local-not-serving-drops", "set.local verdict.etp-local-drop",
         cluster(nodeport(etp="Local"),
                 slice("np", terminating(E1, "node-a", serving=False), ep(E2, "node-b"), ep(E3, "node-c"))),
         flows(EXT, NODE_A, NP, DROP),
         flows(POD, NODE_A, NP, reach(at(8080, E2, E3)))),
    case("itp-and-etp-local", "verdict.itp-local-drop verdict.etp-local-drop masq.etp-local",
         cluster(nodeport(itp="Local", etp="Local"), remote_only("np")),
         flows(POD, "10.96.0.30", 80, DROP),
         flows(EXT, NODE_A, NP, DROP),
         flows(POD, NODE_A, NP, reach(at(8080, E2, E3))),
         flows(NODE_A_EXT, NODE_A, NP, reach(at(8080, E2, E3), masq=True))),
    case("etp-local-ignored-without-external-frontends", "masq.etp-local masq.cluster-ip",
         cluster(svc("web", port(80, target=8080), ip=VIP, etp="Local"), remote_only("web")),
         flows(EXT, VIP, 80, reach(at(8080, E2, E3), masq=True)),
         flows(POD, VIP, 80, reach(at(8080, E2, E3)))),
    case("masquerade-all-leaves-etp-local-alone", "node.masquerade-all masq.etp-local",
         cluster(nodeport(etp="Local"), three("np"), config=proxy_config(masquerade_all=True)),
         flows(EXT, NODE_A, NP, reach(at(8080, E1))),
         flows(POD, NODE_A, NP, reach(ALL3)),
         flows(POD, "10.96.0.30", 80, reach(ALL3, masq=True))),
    case("local-means-node-name", "cond.local set.local",
         cluster(nodeport(etp="Local"),
                 slice("np", ep(E1), ep(E5, "node-a"), ep(E2, "node-b"), ep("10.244.1.7", "node-b"))),
         flows(EXT, NODE_A, NP, reach(at(8080, E5)))),

    # ------------------------------------------------------------------ endpoint conditions
    case("not-ready-excluded", "set.cluster cond.meaning",
         cluster(WEB, slice("web", ep(E1, "node-a", ready=True), not_ready(E2, "node-b"), ep(E3, "node-c"))),
         flows(POD, VIP, 80, reach(at(8080, E1, E3)))),
    case("terminating-unused-while-ready-exist", "set.cluster cond.meaning",
         cluster(WEB, slice("web", ep(E1, "node-a"), terminating(E2, "node-b"), terminating(E3, "node-c"))),
         flows(POD, VIP, 80, reach(at(8080, E1)))),
    case("fallback-serving-terminating", "set.cluster cond.meaning",
         cluster(WEB, slice("web", terminating(E1, "node-a"), terminating(E2, "node-b"),
                            terminating(E3, "node-c", serving=False),
                            ep(E4, "node-b", ready=False, serving=True))),
         flows(POD, VIP, 80, reach(at(8080, E1, E2)))),
    case("fallback-ignores-hints", "set.cluster topology.zone",
         cluster(WEB, slice("web", terminating(E1, "node-a", zones=["zone-b"]),
                            terminating(E2, "node-b", zones=["zone-b"]), terminating(E3, "node-c", zones=["zone-a"]))),
         flows(POD, VIP, 80, reach(ALL3))),
    case("conditions-absent-mean-ready", "cond.meaning",
         cluster(WEB, slice("web", ep(E1, "node-a", conditions=False), ep(E2, "node-b"),
                            ep(E3, "node-c", ready=True, serving=True, terminating=False))),
         flows(POD, VIP, 80, reach(ALL3))),
    case("serving-absent-means-serving", "cond.meaning set.cluster",
         cluster(WEB, slice("web", ep(E1, "node-a", ready=False, terminating=True),
                            ep(E2, "node-b", ready=False, terminating=False))),
         flows(POD, VIP, 80, reach(at(8080, E1)))),
    case("ready-terminating-counts-as-ready", "cond.meaning set.cluster",
         cluster(WEB, slice("web", ep(E1, "node-a", ready=True, terminating=True), ep(E2, "node-b"),
                            terminating(E3, "node-c"))),
         flows(POD, VIP, 80, reach(at(8080, E1, E2)))),
    case("nothing-usable-rejects", "set.cluster verdict.reject-no-endpoint",
         cluster(WEB, slice("web", not_ready(E1, "node-a"), terminating(E2, "node-b", serving=False),
                            ep(E3, "node-c", ready=False, serving=True, terminating=False))),
         flows(POD, VIP, 80, REJECT),
         udp(POD, VIP, 80, REJECT)),
    case("fallback-on-nodeport", "set.cluster masq.external-cluster",
         cluster(nodeport(), slice("np", not_ready(E1, "node-a"), terminating(E2, "node-b"))),
         flows(EXT, NODE_A, NP, reach(at(8080, E2), masq=True))),

    # ------------------------------------------------------------------ topology
    case("zone-hints-narrow", "topology.zone node.addresses",
         cluster(WEB, slice("web", ep(E1, "node-a", zones=["zone-a"]), ep(E2, "node-b", zones=["zone-b"]),
                            ep(E3, "node-c", zones=["zone-a"]))),
         flows(POD, VIP, 80, reach(at(8080, E1, E3)))),
    case("zone-hints-one-missing-no-filter", "topology.zone",
         cluster(WEB, slice("web", ep(E1, "node-a", zones=["zone-a"]), ep(E2, "node-b", zones=["zone-b"]),
                            ep(E3, "node-c"))),
         flows(POD, VIP, 80, reach(ALL3))),
    case("zone-hints-none-for-this-zone", "topology.zone",
         cluster(WEB, slice("web", ep(E1, "node-a", zones=["zone-b"]), ep(E2, "node-b", zones=["zone-b"]),
                            ep(E3, "node-c", zones=["zone-c"]))),
         flows(POD, VIP, 80, reach(ALL3))),
    case("zone-hints-not-ready-unhinted-ignored", "topology.zone set.cluster",
         cluster(WEB, slice("web", ep(E1, "node-a", zones=["zone-a"]), ep(E2, "node-b", zones=["zone-b"]),
                            ep(E3, "node-c", zones=["zone-a"]), not_ready(E4, "node-b"))),
         flows(POD, VIP, 80, reach(at(8080, E1, E3)))),
    case("zone-hints-node-without-zone-label", "topology.zone node.addresses",
         cluster(WEB, slice("web", ep(E1, "node-a", zones=["zone-a"]), ep(E2, "node-b", zones=["zone-b"]),
                            ep(E3, "node-c", zones=["zone-a"])),
                 nodes=(node("node-a", NODE_A, pod_cidr="10.244.1.0/24"), *NODES[1:])),
         flows(POD, VIP, 80, reach(ALL3))),
    case("zone-hints-other-zone-view", "topology.zone",
         cluster(WEB, slice("web", ep(E1, "node-a", zones=["zone-a"]), ep(E2, "node-b", zones=["zone-b"]),
                            ep(E4, "node-b", zones=["zone-b"]), ep(E3, "node-c", zones=["zone-a"]))),
         flows(POD_B, VIP, 80, reach(at(8080, E2, E4))),
         node="node-b", snat=NODE_B),
    case("zone-hints-external-traffic", "topology.zone masq.external-cluster",
         cluster(nodeport(), slice("np", ep(E1, "node-a", zones=["zone-a"]), ep(E2, "node-b", zones=["zone-b"]),
                                   ep(E3, "node-c", zones=["zone-a"]))),
         flows(EXT, NODE_A, NP, reach(at(8080, E1, E3), masq=True))),
    case("zone-hints-several-zones", "topology.zone",
         cluster(WEB, slice("web", ep(E1, "node-a", zones=["zone-b"]), ep(E2, "node-b", zones=["zone-a", "zone-b"]),
                            ep(E3, "node-c", zones=["zone-b"]))),
         flows(POD, VIP, 80, reach(at(8080, E2)))),
    case("node-hints-narrow-first", "topology.node topology.zone",
         cluster(WEB, slice("web", ep(E1, "node-a", zones=["zone-a"], for_nodes=["node-a"]),
                            ep(E2, "node-b", zones=["zone-b"], for_nodes=["node-b"]),
                            ep(E3, "node-c", zones=["zone-a"], for_nodes=["node-c"]))),
         flows(POD, VIP, 80, reach(at(8080, E1)))),
    case("node-hints-incomplete-fall-to-zone", "topology.node topology.zone",
         cluster(WEB, slice("web", ep(E1, "node-a", zones=["zone-a"], for_nodes=["node-a"]),
                            ep(E2, "node-b", zones=["zone-b"]), ep(E3, "node-c", zones=["zone-a"]))),
         flows(POD, VIP, 80, reach(at(8080, E1, E3)))),
    case("node-hints-none-for-this-node", "topology.node topology.zone",
         cluster(WEB, slice("web", ep(E1, "node-a", zones=["zone-a"], for_nodes=["node-b"]),
                            ep(E2, "node-b", zones=["zone-b"], for_nodes=["node-b"]),
                            ep(E3, "node-c", zones=["zone-a"], for_nodes=["node-c"]))),
         flows(POD, VIP, 80, reach(at(8080, E1, E3)))),
    case("node-hints-several-nodes", "topology.node",
         cluster(WEB, slice("web", ep(E1, "node-a", for_nodes=["node-a", "node-b"]),
                            ep(E2, "node-b", for_nodes=["node-b"]), ep(E3, "node-c", for_nodes=["node-a"]))),
         flows(POD, VIP, 80, reach(at(8080, E1, E3)))),
    case("local-set-ignores-hints-etp", "topology.local-ignores set.local",
         cluster(nodeport(etp="Local"), slice("np", ep(E1, "node-a", zones=["zone-b"]), ep(E2, "node-b", zones=["zone-b"]),
                                              ep(E3, "node-c", zones=["zone-a"]))),
         flows(EXT, NODE_A, NP, reach(at(8080, E1))),
         flows(POD, NODE_A, NP, reach(at(8080, E3)))),
    case("local-set-ignores-hints-itp", "topology.local-ignores set.local",
         cluster(svc("web", port(80, target=8080), ip=VIP, itp="Local"),
                 slice("web", ep(E1, "node-a", for_nodes=["node-b"]), ep(E2, "node-b", for_nodes=["node-b"]))),
         flows(POD, VIP, 80, reach(at(8080, E1)))),

    # ------------------------------------------------------------------ REJECT
    case("no-slice-rejects-tcp", "verdict.reject-no-endpoint",
         cluster(WEB),
         flows(POD, VIP, 80, REJECT),
         flows(EXT, VIP, 80, REJECT)),
    case("empty-slice-rejects-udp", "verdict.reject-no-endpoint",
         cluster(DNS, slice("dns", ports=(eport(5353, name="dns", proto="UDP"),))),
         udp(POD, "10.96.0.53", 53, REJECT)),
    case("no-endpoint-rejects-on-node-port", "verdict.reject-no-endpoint frontend.node-port",
         cluster(nodeport(), slice("np", not_ready(E1, "node-a"))),
         flows(EXT, NODE_A, NP, REJECT),
         flows(POD, "10.96.0.30", 80, REJECT),
         flows(EXT, NODE_A_EXT, NP, PASS)),
    case("no-endpoint-rejects-on-lb-and-external-ip", "verdict.reject-no-endpoint frontend.lb-ingress frontend.external-ips",
         cluster(loadbalancer(external_ips=[XIP])),
         flows(EXT, LB, 80, REJECT),
         flows(EXT, XIP, 80, REJECT),
         flows(POD, LB, 80, REJECT)),
    case("reject-only-the-port-without-endpoints", "verdict.reject-no-endpoint endpoint.port-match",
         cluster(svc("web", port(80, name="http"), port(443, name="https"), ip=VIP),
                 three("web", ports=(eport(8080, name="http"),))),
         flows(POD, VIP, 80, reach(ALL3)),
         flows(POD, VIP, 443, REJECT),
         flows(POD, VIP, 80, reach(ALL3))),
    case("unknown-port-on-cluster-ip-rejects", "verdict.unknown-port",
         cluster(WEB, WEB_SLICE),
         flows(POD, VIP, 81, REJECT),
         udp(POD, VIP, 80, REJECT),
         flows(EXT, VIP, 443, REJECT),
         flows(POD, VIP, 80, reach(ALL3))),
    case("unknown-port-on-lb-and-node-passes", "verdict.unknown-port verdict.pass",
         cluster(loadbalancer(), three("lb")),
         flows(EXT, LB, 443, PASS),
         flows(EXT, NODE_A, 30041, PASS),
         flows(EXT, "10.96.0.40", 443, REJECT)),
    case("unallocated-service-ip-drops", "verdict.unallocated-service-ip verdict.unknown-port verdict.pass",
         cluster(WEB, WEB_SLICE, service_cidr("kubernetes", SERVICE_CIDR)),
         flows(POD, UNALLOCATED, 80, DROP),
         flows(NODE_A, UNALLOCATED, 80, DROP),
         flows(NODE_A_EXT, UNALLOCATED, 443, DROP),
         flows(EXT, UNALLOCATED, 443, DROP),
         udp(POD, UNALLOCATED, 53, DROP),
         sctp(POD, UNALLOCATED, 3868, DROP),
         flows(POD, "10.96.255.255", 80, DROP),  # the last address of the range
         flows(POD, VIP, 81, REJECT),  # an allocated ClusterIP on a port it lacks: still REJECT
         udp(EXT, VIP, 80, REJECT),
         flows(POD, VIP, 80, reach(ALL3)),
         flows(POD, "10.97.0.1", 80, PASS),  # just outside the range
         flows(EXT, "10.95.255.255", 80, PASS),
         flows(POD, E2, 8080, PASS)),
    case("unallocated-service-ip-every-service-cidr", "verdict.unallocated-service-ip verdict.pass",
         cluster(WEB, WEB_SLICE, service_cidr("kubernetes", SERVICE_CIDR),
                 service_cidr("extra", "10.200.0.0/24", version="v1beta1")),
         flows(POD, "10.200.0.7", 80, DROP),
         flows(EXT, UNALLOCATED, 80, DROP),
         flows(POD, "10.200.1.7", 80, PASS),
         flows(POD, VIP, 80, reach(ALL3))),
    case("unallocated-service-ip-without-service-cidr-passes", "verdict.unallocated-service-ip verdict.pass",
         cluster(WEB, WEB_SLICE),
         flows(POD, UNALLOCATED, 80, PASS),
         flows(NODE_A, UNALLOCATED, 80, PASS),
         flows(EXT, UNALLOCATED, 80, PASS),
         flows(POD, VIP, 81, REJECT)),
    case("unallocated-service-ip-allocated-by-update", "verdict.unallocated-service-ip",
         cluster(WEB, WEB_SLICE, service_cidr("kubernetes", SERVICE_CIDR)),
         flows(POD, UNALLOCATED, 80, DROP, label="before"),
         Update(cluster(WEB, WEB_SLICE, service_cidr("kubernetes", SERVICE_CIDR),
                        svc("late", port(80, target=8080), ip=UNALLOCATED), three("late"))),
         flows(POD, UNALLOCATED, 80, reach(ALL3)),
         flows(POD, UNALLOCATED, 81, REJECT),
         Update(cluster(WEB, WEB_SLICE)),  # the ServiceCIDR is gone: nothing is dropped for it
         flows(POD, UNALLOCATED, 80, PASS),
         flows(POD, "10.96.0.11", 80, PASS)),

    # ------------------------------------------------------------------ loadBalancerSourceRanges
    case("source-ranges-inside", "verdict.source-ranges",
         cluster(loadbalancer(ranges=["203.0.113.0/24"]), three("lb")),
         flows(EXT, LB, 80, reach(ALL3, masq=True))),
    case("source-ranges-outside-drops-pods-included", "verdict.source-ranges",
         cluster(loadbalancer(ranges=["203.0.113.0/24"]), three("lb")),
         flows(OUTSIDER, LB, 80, DROP),
         flows(POD, LB, 80, DROP),
         flows(NODE_A, LB, 80, DROP),
         flows(EXT, LB, 80, reach(ALL3, masq=True))),
    case("source-ranges-whitespace", "verdict.source-ranges",
         cluster(loadbalancer(ranges=[" 203.0.113.0/24 ", "\t198.18.99.0/24\n"]), three("lb")),
         flows(EXT, LB, 80, reach(ALL3, masq=True)),
         flows(OUTSIDER, LB, 80, reach(ALL3, masq=True)),
         flows(POD, LB, 80, DROP)),
    case("source-ranges-slash-zero", "verdict.source-ranges",
         cluster(loadbalancer(ranges=["0.0.0.0/0"]), three("lb")),
         flows(OUTSIDER, LB, 80, reach(ALL3, masq=True)),
         flows(POD, LB, 80, reach(ALL3, masq=True))),
    case("source-ranges-other-family-ignored", "verdict.source-ranges",
         cluster(loadbalancer(ranges=["2001:db8::/32", "203.0.113.0/24"]), three("lb")),
         flows(EXT, LB, 80, reach(ALL3, masq=True)),
         flows(OUTSIDER, LB, 80, DROP)),
    case("source-ranges-ipv6-only-leaves-ipv4-open", "verdict.source-ranges",
         cluster(loadbalancer(ranges=["2001:db8::/32"]), three("lb")),
         flows(OUTSIDER, LB, 80, reach(ALL3, masq=True))),
    case("source-ranges-node-ip-allows-lb-ips", "verdict.source-ranges node.addresses",
         cluster(loadbalancer(lb=[LB, LB2], ranges=["192.168.0.0/24"]), three("lb")),
         flows(NODE_A, LB, 80, reach(ALL3, masq=True)),
         flows(LB, LB, 80, reach(ALL3, masq=True)),
         flows(LB2, LB, 80, reach(ALL3, masq=True)),
         flows(EXT, LB, 80, DROP)),
    case("source-ranges-lb-ips-not-allowed-without-node-ip", "verdict.source-ranges node.addresses",
         cluster(loadbalancer(lb=[LB, LB2], ranges=["203.0.113.0/24", "198.18.0.0/24"]), three("lb")),
         flows(LB, LB, 80, DROP),
         flows(LB2, LB, 80, DROP),
         flows(NODE_A_EXT, LB, 80, reach(ALL3, masq=True))),
    case("source-ranges-only-on-lb-ips", "verdict.source-ranges frontend.node-port frontend.external-ips",
         cluster(loadbalancer(ranges=["203.0.113.0/24"], external_ips=[XIP]), three("lb")),
         flows(OUTSIDER, LB, 80, DROP),
         flows(OUTSIDER, NODE_A, 30040, reach(ALL3, masq=True)),
         flows(OUTSIDER, XIP, 80, reach(ALL3, masq=True)),
         flows(OUTSIDER, "10.96.0.40", 80, reach(ALL3, masq=True))),
    case("source-ranges-before-reject", "verdict.source-ranges verdict.reject-no-endpoint",
         cluster(loadbalancer(ranges=["203.0.113.0/24"]), slice("lb")),
         flows(OUTSIDER, LB, 80, DROP),
         flows(EXT, LB, 80, REJECT)),
    case("source-ranges-with-etp-local", "verdict.source-ranges masq.etp-local",
         cluster(loadbalancer(ranges=["203.0.113.0/24"], etp="Local"), three("lb")),
         flows(EXT, LB, 80, reach(at(8080, E1))),
         flows(OUTSIDER, LB, 80, DROP)),

    # ------------------------------------------------------------------ hairpin
    case("hairpin-single-endpoint", "masq.hairpin",
         cluster(WEB, slice("web", ep(E1, "node-a"))),
         flows(E1, VIP, 80, reach(at(8080, E1), masq=True))),
    case("hairpin-only-when-self-chosen", "masq.hairpin masq.cluster-ip",
         cluster(WEB, slice("web", ep(E1, "node-a"), ep(E2, "node-b"))),
         flows(E1, VIP, 80, reach(at(8080, E1, E2), masq="hairpin"))),
    case("host-network-endpoint", "set.local cond.local masq.cluster-ip",
         cluster(nodeport(etp="Local"), slice("np", ep(NODE_A, "node-a"), ep(E2, "node-b"))),
         flows(EXT, NODE_A, NP, reach(at(8080, NODE_A))),
         flows(POD, "10.96.0.30", 80, reach(at(8080, NODE_A, E2))),
         flows(NODE_A, "10.96.0.30", 80, reach(at(8080, NODE_A, E2), masq=True))),
    case("hairpin-sctp", "masq.hairpin port.protocols",
         cluster(SIG, slice("sig", ep(E1, "node-a"), ep(E2, "node-b"), ports=SIG_PORTS)),
         sctp(E1, SIG_IP, 3868, reach(at(3869, E1, E2), masq="hairpin"))),
    case("hairpin-etp-local-pod", "masq.hairpin masq.etp-local",
         cluster(nodeport(etp="Local"), slice("np", ep(E1, "node-a"), ep(E2, "node-b"))),
         flows(E1, NODE_A, NP, reach(at(8080, E1, E2), masq="hairpin"))),

    # ------------------------------------------------------------------ session affinity
    case("affinity-client-ip-sticks", "affinity.client-ip",
         cluster(svc("web", port(80, target=8080), ip=VIP, affinity=True), WEB_SLICE),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True))),
    case("affinity-sctp", "affinity.client-ip port.protocols",
         cluster(svc("sig", port(3868, name="diameter", proto="SCTP", target=3869), ip=SIG_IP, affinity=True),
                 SIG_SLICE),
         sctp(PODS_A, SIG_IP, 3868, reach(SIG3, per_client=True))),
    case("affinity-udp", "affinity.client-ip port.protocols",
         cluster(svc("dns", port(53, name="dns", proto="UDP", target=5353), ip="10.96.0.53", affinity=30),
                 DNS_SLICE),
         udp(PODS_A, "10.96.0.53", 53, reach(at(5353, E1, E2, E3), per_client=True))),
    case("affinity-default-timeout", "affinity.timeout affinity.client-ip",
         cluster(svc("web", port(80, target=8080), ip=VIP, affinity=True), WEB_SLICE),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True), label="first"),
         Wait(10790),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True, clients_keep="first"), label="within"),
         Wait(10810),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True, clients_change="within"))),
    case("affinity-timeout-seconds", "affinity.timeout affinity.client-ip",
         cluster(svc("web", port(80, target=8080), ip=VIP, affinity=60), WEB_SLICE),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True), label="first"),
         Wait(59),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True, clients_keep="first"), label="within"),
         Wait(61),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True, clients_change="within"))),
    case("affinity-refreshed-on-use", "affinity.timeout",
         cluster(svc("web", port(80, target=8080), ip=VIP, affinity=60), WEB_SLICE),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True), label="t0"),
         Wait(45),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True, clients_keep="t0"), label="t45"),
         Wait(45),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True, clients_keep="t0"), label="t90"),
         Wait(45),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True, clients_keep="t0"))),
    case("affinity-shared-by-frontends", "affinity.shared masq.external-cluster",
         cluster(nodeport(affinity=True, external_ips=[XIP]), three("np")),
         flows(EXTERNALS, "10.96.0.30", 80, reach(ALL3, masq=True, per_client=True), label="clusterip"),
         flows(EXTERNALS, NODE_A, NP, reach(ALL3, masq=True, per_client=True, clients_keep="clusterip")),
         flows(EXTERNALS, XIP, 80, reach(ALL3, masq=True, per_client=True, clients_keep="clusterip"))),
    case("affinity-endpoint-removed", "affinity.in-set ct.udp-reselect",
         cluster(svc("web", port(80, target=8080), ip=VIP, affinity=True), WEB_SLICE),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True), label="before"),
         Update(cluster(svc("web", port(80, target=8080), ip=VIP, affinity=True),
                        slice("web", ep(E1, "node-a"), ep(E2, "node-b")))),
         flows(PODS_A, VIP, 80, reach(at(8080, E1, E2), per_client=True, clients_keep="before"))),
    case("affinity-endpoint-not-ready", "affinity.in-set set.cluster",
         cluster(svc("web", port(80, target=8080), ip=VIP, affinity=True), WEB_SLICE),
         flows(PODS_A, VIP, 80, reach(ALL3, per_client=True), label="before"),
         Update(cluster(svc("web", port(80, target=8080), ip=VIP, affinity=True),
                        slice("web", ep(E1, "node-a"), terminating(E2, "node-b"), ep(E3, "node-c")))),
         flows(PODS_A, VIP, 80, reach(at(8080, E1, E3), per_client=True, clients_keep="before"))),
    case("affinity-local-set", "affinity.in-set affinity.shared masq.etp-local",
         cluster(nodeport(affinity=True, etp="Local"), three("np")),
         flows(EXTERNALS, "10.96.0.30", 80, reach(ALL3, masq=True, per_client=True), label="cluster"),
         flows(EXTERNALS, NODE_A, NP, reach(at(8080, E1), per_client=True))),

    # ------------------------------------------------------------------ endpoint changes between batches
    case("udp-flows-to-removed-endpoint-reselect", "ct.udp-reselect ct.reply",
         cluster(DNS, DNS_SLICE),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2, E3)), label="before"),
         Update(cluster(DNS, slice("dns", ep(E1, "node-a"), ep(E2, "node-b"),
                                   ports=(eport(5353, name="dns", proto="UDP"),)))),
         again("before", reach(at(5353, E1, E2), keep="before"))),
    case("udp-flows-to-not-serving-endpoint-reselect", "ct.udp-reselect cond.meaning",
         cluster(DNS, DNS_SLICE),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2, E3)), label="before"),
         Update(cluster(DNS, slice("dns", ep(E1, "node-a"), ep(E2, "node-b"), not_ready(E3, "node-c"),
                                   ports=(eport(5353, name="dns", proto="UDP"),)))),
         again("before", reach(at(5353, E1, E2), keep="before"))),
    case("udp-flows-to-terminating-serving-endpoint-stay", "ct.udp-reselect set.cluster",
         cluster(DNS, DNS_SLICE),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2, E3)), label="before"),
         Update(cluster(DNS, slice("dns", ep(E1, "node-a"), ep(E2, "node-b"), terminating(E3, "node-c"),
                                   ports=(eport(5353, name="dns", proto="UDP"),)))),
         again("before", reach(at(5353, E1, E2, E3), keep="before")),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2)))),
    case("udp-flows-all-endpoints-gone-reject", "ct.udp-reselect verdict.reject-no-endpoint",
         cluster(DNS, DNS_SLICE),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2, E3)), label="before"),
         Update(cluster(DNS, slice("dns", ports=(eport(5353, name="dns", proto="UDP"),)))),
         again("before", REJECT)),
    # SCTP flows are tracked like UDP but not forgotten on an update (kube-proxy clears UDP only):
    # like TCP, they keep an endpoint that was removed or stopped serving.
    case("sctp-flows-to-removed-endpoint-stay", "ct.tcp-keep port.protocols ct.reply",
         cluster(SIG, SIG_SLICE),
         sctp(POD, SIG_IP, 3868, reach(SIG3), label="before"),
         Update(cluster(SIG, slice("sig", ep(E1, "node-a"), ep(E2, "node-b"), not_ready(E3, "node-c"),
                                   ports=SIG_PORTS))),
         again("before", reach(SIG3, keep="before")),
         sctp(POD, SIG_IP, 3868, reach(at(3869, E1, E2)))),
    case("sctp-flows-stay-when-all-endpoints-gone", "ct.tcp-keep verdict.reject-no-endpoint port.protocols",
         cluster(SIG, SIG_SLICE),
         sctp(POD, SIG_IP, 3868, reach(SIG3), label="before"),
         Update(cluster(SIG, slice("sig", ports=SIG_PORTS))),
         again("before", reach(SIG3, keep="before")),
         sctp(POD, SIG_IP, 3868, REJECT)),
    case("sctp-flows-expire-after-the-udp-timeout", "ct.reply port.protocols",
         cluster(SIG, SIG_SLICE),
         sctp(POD, SIG_IP, 3868, reach(SIG3), label="before"),
         Update(cluster(SIG, slice("sig", ep(E1, "node-a"), ports=SIG_PORTS))),
         again("before", reach(SIG3, keep="before"), label="kept"),
         Wait(61),
         again("before", reach(at(3869, E1)))),
    case("tcp-flows-to-terminating-endpoint-drain", "ct.tcp-keep set.cluster ct.reply",
         cluster(WEB, WEB_SLICE),
         flows(POD, VIP, 80, reach(ALL3), label="before"),
         Update(cluster(WEB, slice("web", ep(E1, "node-a"), ep(E2, "node-b"), terminating(E3, "node-c")))),
         again("before", reach(ALL3, keep="before")),
         flows(POD, VIP, 80, reach(at(8080, E1, E2)))),
    case("tcp-flows-to-removed-endpoint-stay", "ct.tcp-keep",
         cluster(WEB, WEB_SLICE),
         flows(POD, VIP, 80, reach(ALL3), label="before"),
         Update(cluster(WEB, slice("web", ep(E1, "node-a"), ep(E2, "node-b")))),
         again("before", reach(ALL3, keep="before")),
         flows(POD, VIP, 80, reach(at(8080, E1, E2)))),
    case("tcp-flows-stay-when-all-endpoints-gone", "ct.tcp-keep verdict.reject-no-endpoint",
         cluster(WEB, WEB_SLICE),
         flows(POD, VIP, 80, reach(ALL3), label="before"),
         Update(cluster(WEB, slice("web"))),
         again("before", reach(ALL3, keep="before")),
         flows(POD, VIP, 80, REJECT)),
    case("masqueraded-flows-keep-through-update", "ct.tcp-keep ct.udp-reselect masq.external-cluster",
         cluster(nodeport(), three("np")),
         flows(EXT, NODE_A, NP, reach(ALL3, masq=True), label="before"),
         Update(cluster(nodeport(), slice("np", ep(E1, "node-a"), ep(E2, "node-b"), terminating(E3, "node-c")))),
         again("before", reach(ALL3, masq=True, keep="before"))),
    case("flows-rejected-without-endpoints-then-served", "ct.no-endpoint-cleared verdict.reject-no-endpoint",
         cluster(DNS, slice("dns", ports=(eport(5353, name="dns", proto="UDP"),))),
         udp(POD, "10.96.0.53", 53, REJECT, n=60, label="before"),
         Update(cluster(DNS, DNS_SLICE)),
         again("before", reach(at(5353, E1, E2, E3)))),
    case("tcp-rejected-then-served", "ct.no-endpoint-cleared verdict.reject-no-endpoint",
         cluster(WEB),
         flows(POD, VIP, 80, REJECT, n=24, label="before"),
         Update(cluster(WEB, WEB_SLICE)),
         flows(POD, VIP, 80, reach(ALL3))),
    case("endpoint-added-between-batches", "ct.udp-reselect",
         cluster(DNS, slice("dns", ep(E1, "node-a"), ports=(eport(5353, name="dns", proto="UDP"),))),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1)), label="before"),
         Update(cluster(DNS, DNS_SLICE)),
         again("before", reach(at(5353, E1), keep="before")),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2, E3)))),

    case("udp-reselect-is-per-service", "ct.udp-reselect",
         cluster(DNS, DNS_SLICE,
                 svc("dns2", port(53, name="dns", proto="UDP", target=5353), ip="10.96.0.54"),
                 three("dns2", ports=(eport(5353, name="dns", proto="UDP"),))),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2, E3)), label="dns"),
         udp(POD, "10.96.0.54", 53, reach(at(5353, E1, E2, E3)), label="dns2"),
         Update(cluster(DNS, slice("dns", ep(E1, "node-a"), ep(E2, "node-b"), not_ready(E3, "node-c"),
                                   ports=(eport(5353, name="dns", proto="UDP"),)),
                        svc("dns2", port(53, name="dns", proto="UDP", target=5353), ip="10.96.0.54"),
                        three("dns2", ports=(eport(5353, name="dns", proto="UDP"),)))),
         again("dns", reach(at(5353, E1, E2), keep="dns")),
         again("dns2", reach(at(5353, E1, E2, E3), keep="dns2"))),
    case("service-deleted-udp-forgotten-tcp-kept", "ct.udp-reselect ct.tcp-keep verdict.pass",
         cluster(WEB, WEB_SLICE, DNS, DNS_SLICE),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2, E3)), label="udp"),
         flows(POD, VIP, 80, reach(ALL3), label="tcp"),
         Update(cluster()),
         again("udp", PASS),
         again("tcp", reach(ALL3, keep="tcp"))),
    case("masquerade-source-port-collision", "masq.external-cluster ct.reply",
         cluster(nodeport(), slice("np", ep(E1, "node-a"))),
         flows(EXTERNALS[:12], NODE_A, NP, reach(at(8080, E1), masq=True), sport=40000),
         flows(EXTERNALS[:12], "10.96.0.30", 80, reach(at(8080, E1), masq=True), sport=40001)),

    case("conntrack-keeps-selection", "ct.tcp-keep ct.reply",
         cluster(WEB, WEB_SLICE, DNS, DNS_SLICE),
         flows(POD, VIP, 80, reach(ALL3), label="tcp"),
         udp(POD, "10.96.0.53", 53, reach(at(5353, E1, E2, E3)), label="udp"),
         Wait(30),
         again("tcp", reach(ALL3, keep="tcp")),
         again("udp", reach(at(5353, E1, E2, E3), keep="udp"))),

    # ------------------------------------------------------------------ endpoints from Pods
    case("pods-named-target-port", "endpoint.pods endpoint.port-match",
         cluster(svc("web", port(80, target="http"), ip=VIP, selector={"app": "web"}),
                 pod("web-1", "10.244.1.21", "node-a", ports=(("http", 8080, "TCP"),)),
                 pod("web-2", "10.244.2.22", "node-b", ports=(("http", 9090, "TCP"), ("metrics", 9100, "TCP"))),
                 pod("web-3", "10.244.3.23", "node-c", ports=(("metrics", 8080, "TCP"),)),
                 pod("web-4", "10.244.3.24", "node-c", ports=(("http", 8080, "UDP"),)),
                 pod("other", "10.244.1.25", "node-a", labels={"app": "other"}, ports=(("http", 8080, "TCP"),)),
                 pod("web-elsewhere", "10.244.2.26", "node-b", ns="elsewhere", ports=(("http", 8080, "TCP"),)),
                 pod("web-pending", None, "node-b", ports=(("http", 8080, "TCP"),))),
         flows(POD, VIP, 80, reach(frozenset({"10.244.1.21:8080", "10.244.2.22:9090"})))),
    case("pods-numeric-target-port", "endpoint.pods",
         cluster(svc("web", port(80, target=8080), ip=VIP, selector={"app": "web", "tier": "front"}),
                 pod("web-1", "10.244.1.21", "node-a", labels={"app": "web", "tier": "front"}),
                 pod("web-2", "10.244.2.22", "node-b", labels={"app": "web", "tier": "front", "x": "y"}),
                 pod("web-3", "10.244.3.23", "node-c", labels={"app": "web"})),
         flows(POD, VIP, 80, reach(at(8080, "10.244.1.21", "10.244.2.22")))),
    case("pods-leading-zero-ip", "endpoint.pods addr.leading-zeros",
         cluster(svc("web", port(80, target=8080), ip=VIP, selector={"app": "web"}),
                 pod("web-1", "10.244.001.021", "node-a"), pod("web-2", "10.244.2.022", "node-b")),
         flows(POD, VIP, 80, reach(at(8080, "10.244.1.21", "10.244.2.22")))),
    case("pods-readiness", "endpoint.pods set.cluster",
         cluster(svc("web", port(80, target=8080), ip=VIP, selector={"app": "web"}),
                 pod("web-1", "10.244.1.21", "node-a"),
                 pod("web-2", "10.244.2.22", "node-b", ready=False),
                 pod("web-3", "10.244.3.23", "node-c", deleting=True)),
         flows(POD, VIP, 80, reach(at(8080, "10.244.1.21")))),
    case("pods-terminating-fallback", "endpoint.pods set.cluster",
         cluster(svc("web", port(80, target=8080), ip=VIP, selector={"app": "web"}),
                 pod("web-2", "10.244.2.22", "node-b", ready=False),
                 pod("web-3", "10.244.3.23", "node-c", deleting=True)),
         flows(POD, VIP, 80, reach(at(8080, "10.244.3.23")))),
    case("pods-none-ready-rejects", "endpoint.pods verdict.reject-no-endpoint",
         cluster(svc("web", port(80, target=8080), ip=VIP, selector={"app": "web"}),
                 pod("web-2", "10.244.2.22", "node-b", ready=False)),
         flows(POD, VIP, 80, REJECT)),
    case("pods-publish-not-ready", "endpoint.pods cond.meaning",
         cluster(svc("web", port(80, target=8080), ip=VIP, selector={"app": "web"}, publish_not_ready=True),
                 pod("web-1", "10.244.1.21", "node-a"),
                 pod("web-2", "10.244.2.22", "node-b", ready=False)),
         flows(POD, VIP, 80, reach(at(8080, "10.244.1.21", "10.244.2.22")))),
    case("pods-local-by-node-name", "endpoint.pods cond.local set.local",
         cluster(nodeport(selector={"app": "web"}, etp="Local"),
                 pod("web-1", "10.244.1.21", "node-a"), pod("web-2", "10.244.2.22", "node-b")),
         flows(EXT, NODE_A, NP, reach(at(8080, "10.244.1.21"))),
         flows(POD, NODE_A, NP, reach(at(8080, "10.244.1.21", "10.244.2.22")))),
    case("pods-named-port-udp", "endpoint.pods port.protocols",
         cluster(svc("dns", port(53, name="dns", proto="UDP", target="dns"),
                     port(53, name="dns-tcp", proto="TCP", target="dns-tcp"), ip="10.96.0.53",
                     selector={"app": "web"}),
                 pod("dns-1", "10.244.1.21", "node-a", ports=(("dns", 5353, "UDP"), ("dns-tcp", 5354, "TCP"))),
                 pod("dns-2", "10.244.2.22", "node-b", ports=(("dns", 1053, "UDP"), ("dns-tcp", 1054, "TCP")))),
         udp(POD, "10.96.0.53", 53, reach(frozenset({"10.244.1.21:5353", "10.244.2.22:1053"}))),
         flows(POD, "10.96.0.53", 53, reach(frozenset({"10.244.1.21:5354", "10.244.2.22:1054"})))),

    # ------------------------------------------------------------------ not for the dataplane
    case("unrelated-traffic-passes", "verdict.pass",
         cluster(loadbalancer(), three("lb")),
         udp(POD, "8.8.8.8", 53, PASS),
         flows(POD, E1, 8080, PASS),
         flows(EXT, NODE_A, 22, PASS),
         flows(E1, "203.0.113.9", 5555, PASS),
         flows(EXT, LB, 0, PASS, proto="ICMP"),
         flows(POD, NODE_A, 0, PASS, proto="ARP"),
         flows(POD, "10.96.0.99", 80, PASS)),
]


# --------------------------------------------------------------------------------- IPv6 and dual-stack
# kube-proxy runs one proxier per family: every rule above holds within each family, with the
# family's addresses, slices, source ranges and node IP (the IPv6 masquerade address NODE_A6).

IPV6_CASE_PREFIXES = ("ipv6-", "dual-stack-")

NODES_DS = (
    node("node-a", NODE_A, ip6=NODE_A6, zone="zone-a", pod_cidr="10.244.1.0/24", pod_cidr6="fd00:10:244:1::/64",
         external_ip=NODE_A_EXT, external_ip6=NODE_A6_EXT),
    node("node-b", NODE_B, ip6=NODE_B6, zone="zone-b", pod_cidr="10.244.2.0/24", pod_cidr6="fd00:10:244:2::/64"),
    node("node-c", NODE_C, ip6=NODE_C6, zone="zone-a", pod_cidr="10.244.3.0/24", pod_cidr6="fd00:10:244:3::/64"),
)


def dual_cluster(*objects: dict, config: dict | None = None, nodes: tuple[dict, ...] = NODES_DS) -> tuple[dict, ...]:
    """The dual-stack nodes, a dual clusterCIDR, and `objects`."""
    return (*nodes, config if config is not None else proxy_config(cluster_cidr=DUAL_CIDR), *objects)


def dual_config(**kw: Any) -> dict:
    kw.setdefault("cluster_cidr", DUAL_CIDR)
    return proxy_config(**kw)


def three6(service: str, **kw: Any) -> dict:
    """E1_6 (local), E2_6, E3_6: the IPv6 slice of `service`."""
    return slice(service, ep(E1_6, "node-a"), ep(E2_6, "node-b"), ep(E3_6, "node-c"), family="IPv6", **kw)


def remote_only6(service: str, **kw: Any) -> dict:
    return slice(service, ep(E2_6, "node-b"), ep(E3_6, "node-c"), family="IPv6", **kw)


def both(service: str, **kw: Any) -> tuple[dict, dict]:
    """The standard IPv4 and IPv6 slices of `service`."""
    return three(service, **kw), three6(service, **kw)


ALL3_6 = at(8080, E1_6, E2_6, E3_6)
VIP6_DNS = "fd00:10:96::53"
VIP6_NP = "fd00:10:96::30"
VIP6_LB = "fd00:10:96::40"
WEB_DS = svc("web", port(80, target=8080), ip=VIP, ips=[VIP, VIP6])
DNS_DS = svc("dns", port(53, name="dns", proto="UDP", target=5353), ip="10.96.0.53", ips=["10.96.0.53", VIP6_DNS])
DNS_PORTS = (eport(5353, name="dns", proto="UDP"),)
DNS3_6 = at(5353, E1_6, E2_6, E3_6)
SIG_DS = svc("sig", port(3868, name="diameter", proto="SCTP", target=3869), ip=SIG_IP, ips=[SIG_IP, "fd00:10:96::68"])
PODS_A6 = tuple(f"fd00:10:244:1::{n:x}" for n in range(0x101, 0x101 + 40))  # 40 client pods on node-a
EXTERNALS6 = tuple(f"2001:db8:113::{n:x}" for n in range(1, 41))  # 40 external clients


def nodeport_ds(name: str = "np", **kw: Any) -> dict:
    return nodeport(name, ips=["10.96.0.30", VIP6_NP], **kw)


def loadbalancer_ds(name: str = "lb", *, lb: list | None = None, **kw: Any) -> dict:
    return loadbalancer(name, ips=["10.96.0.40", VIP6_LB], lb=[LB, LB6] if lb is None else lb, **kw)


IPV6_CASES: list[Case] = [
    # ------------------------------------------------------------------ ClusterIP and masquerade
    case("ipv6-clusterip-tcp-from-pod", "frontend.cluster-ips masq.cluster-ip node.local-detect cond.meaning ct.reply",
         dual_cluster(WEB_DS, *both("web")),
         flows(POD6, VIP6, 80, reach(ALL3_6)),
         flows(POD_B6, VIP6, 80, reach(ALL3_6))),
    case("ipv6-clusterip-udp-from-pod", "frontend.cluster-ips masq.cluster-ip ct.reply",
         dual_cluster(DNS_DS, slice("dns", ep(E1_6, "node-a"), ep(E2_6, "node-b"), ep(E3_6, "node-c"),
                                    ports=DNS_PORTS, family="IPv6")),
         udp(POD6, VIP6_DNS, 53, reach(DNS3_6)),
         udp(EXT6, VIP6_DNS, 53, reach(DNS3_6, masq=True))),
    case("ipv6-clusterip-sctp", "frontend.cluster-ips port.protocols masq.cluster-ip verdict.unknown-port ct.reply",
         dual_cluster(SIG_DS, slice("sig", ep(E1_6, "node-a"), ep(E2_6, "node-b"), ep(E3_6, "node-c"),
                                    ports=SIG_PORTS, family="IPv6")),
         sctp(POD6, "fd00:10:96::68", 3868, reach(at(3869, E1_6, E2_6, E3_6))),
         sctp(EXT6, "fd00:10:96::68", 3868, reach(at(3869, E1_6, E2_6, E3_6), masq=True)),
         flows(POD6, "fd00:10:96::68", 3868, REJECT),
         udp(POD6, "fd00:10:96::68", 3868, REJECT)),
    case("ipv6-clusterip-from-node", "masq.cluster-ip node.addresses node.local-detect",
         dual_cluster(WEB_DS, *both("web")),
         flows(NODE_A6, VIP6, 80, reach(ALL3_6, masq=True)),
         flows(NODE_A6_EXT, VIP6, 80, reach(ALL3_6, masq=True))),
    case("ipv6-clusterip-from-external", "masq.cluster-ip node.addresses node.local-detect",
         dual_cluster(WEB_DS, *both("web")),
         flows(EXT6, VIP6, 80, reach(ALL3_6, masq=True)),
         flows(NODE_B6, VIP6, 80, reach(ALL3_6, masq=True))),
    case("ipv6-clusterip-masquerade-all", "node.masquerade-all masq.cluster-ip",
         dual_cluster(WEB_DS, *both("web"), config=dual_config(masquerade_all=True)),
         flows(POD6, VIP6, 80, reach(ALL3_6, masq=True)),
         flows(POD, VIP, 80, reach(ALL3, masq=True))),
    # kube-proxy's IPv6 proxier has no local-traffic detector without an IPv6 clusterCIDR: it
    # cannot tell pods from others, so ClusterIP traffic is not masqueraded (IPv4 still is).
    case("ipv6-clusterip-without-ipv6-cluster-cidr", "masq.cluster-ip node.local-detect",
         dual_cluster(WEB_DS, *both("web"), config=proxy_config(cluster_cidr=CLUSTER_CIDR)),
         flows(EXT6, VIP6, 80, reach(ALL3_6)),
         flows(POD6, VIP6, 80, reach(ALL3_6)),
         flows(EXT, VIP, 80, reach(ALL3, masq=True))),
    case("ipv6-clusterip-only-ipv6-cluster-cidr", "masq.cluster-ip node.local-detect",
         dual_cluster(WEB_DS, *both("web"), config=proxy_config(cluster_cidr=CLUSTER_CIDR6)),
         flows(EXT6, VIP6, 80, reach(ALL3_6, masq=True)),
         flows(POD6, VIP6, 80, reach(ALL3_6)),
         flows(EXT, VIP, 80, reach(ALL3))),
    case("ipv6-clusterip-detect-local-node-cidr", "node.local-detect masq.cluster-ip",
         dual_cluster(WEB_DS, *both("web"), config=dual_config(detect_local_mode="NodeCIDR")),
         flows(POD6, VIP6, 80, reach(ALL3_6)),
         flows(POD_B6, VIP6, 80, reach(ALL3_6, masq=True))),

    # ------------------------------------------------------------------ families of one service
    case("dual-stack-each-family-its-own-endpoints", "frontend.cluster-ips endpoint.slice-label",
         dual_cluster(WEB_DS, *both("web")),
         flows(POD, VIP, 80, reach(ALL3)),
         flows(POD6, VIP6, 80, reach(ALL3_6)),
         flows(EXT, VIP, 80, reach(ALL3, masq=True)),
         flows(EXT6, VIP6, 80, reach(ALL3_6, masq=True))),
    case("dual-stack-ipv6-primary-serves-both", "frontend.cluster-ips",
         dual_cluster(svc("web", port(80, target=8080), ip=VIP6, ips=[VIP6, VIP]), *both("web")),
         flows(POD6, VIP6, 80, reach(ALL3_6)),
         flows(POD, VIP, 80, reach(ALL3))),
    case("ipv6-single-stack-service", "frontend.cluster-ips verdict.pass endpoint.slice-label",
         dual_cluster(svc("web", port(80, target=8080), ip=VIP6), *both("web")),
         flows(POD6, VIP6, 80, reach(ALL3_6)),
         flows(POD, VIP, 80, PASS)),  # its IPv4 slice serves no proxier
    case("dual-stack-ipv6-half-without-endpoints", "verdict.reject-no-endpoint frontend.cluster-ips",
         dual_cluster(WEB_DS, WEB_SLICE),
         flows(POD, VIP, 80, reach(ALL3)),
         flows(POD6, VIP6, 80, REJECT),
         udp(POD6, VIP6, 80, REJECT)),
    case("ipv6-reject-on-every-frontend", "verdict.reject-no-endpoint frontend.node-port frontend.lb-ingress "
         "frontend.external-ips",
         dual_cluster(loadbalancer_ds(external_ips=[XIP, XIP6]), three("lb"),
                      slice("lb", not_ready(E1_6, "node-a"), family="IPv6")),
         flows(POD6, VIP6_LB, 80, REJECT),
         flows(EXT6, NODE_A6, 30040, REJECT),
         flows(EXT6, LB6, 80, REJECT),
         flows(EXT6, XIP6, 80, REJECT),
         flows(EXT, LB, 80, reach(ALL3, masq=True))),
    case("ipv6-unknown-port-rejected", "verdict.unknown-port verdict.pass",
         dual_cluster(WEB_DS, *both("web")),
         flows(POD6, VIP6, 81, REJECT),
         udp(POD6, VIP6, 80, REJECT),
         flows(POD6, "fd00:10:96::99", 80, PASS)),
    case("ipv6-unallocated-service-ip-drops", "verdict.unallocated-service-ip verdict.unknown-port verdict.pass",
         dual_cluster(WEB_DS, *both("web"), service_cidr("kubernetes", SERVICE_CIDR, SERVICE_CIDR6)),
         flows(POD6, UNALLOCATED6, 80, DROP),
         flows(NODE_A6, UNALLOCATED6, 80, DROP),
         flows(NODE_A6_EXT, UNALLOCATED6, 443, DROP),
         flows(EXT6, UNALLOCATED6, 443, DROP),
         udp(POD6, UNALLOCATED6, 53, DROP),
         sctp(EXT6, UNALLOCATED6, 3868, DROP),
         flows(POD6, "fd00:10:96::ffff", 80, DROP),  # the last address of the range
         flows(POD6, VIP6, 81, REJECT),  # an allocated ClusterIP on a port it lacks: still REJECT
         udp(EXT6, VIP6, 80, REJECT),
         flows(POD6, VIP6, 80, reach(ALL3_6)),
         flows(POD6, "fd00:10:96::1:0", 80, PASS),  # just outside the range
         flows(EXT6, "fd00:10:97::99", 80, PASS),
         flows(POD6, E2_6, 8080, PASS),
         flows(POD, UNALLOCATED, 80, DROP),  # the IPv4 half of the same ServiceCIDR
         flows(EXT, UNALLOCATED, 80, DROP)),
    case("ipv6-unallocated-service-ip-one-family-cidr", "verdict.unallocated-service-ip verdict.pass",
         dual_cluster(WEB_DS, *both("web"), service_cidr("kubernetes", SERVICE_CIDR6, version="v1beta1")),
         flows(POD6, UNALLOCATED6, 80, DROP),
         flows(EXT6, UNALLOCATED6, 80, DROP),
         flows(POD, UNALLOCATED, 80, PASS),  # no IPv4 service CIDR
         flows(POD, VIP, 81, REJECT)),
    case("ipv6-unallocated-service-ip-without-service-cidr-passes", "verdict.unallocated-service-ip verdict.pass",
         dual_cluster(WEB_DS, *both("web")),
         flows(POD6, UNALLOCATED6, 80, PASS),
         flows(NODE_A6, UNALLOCATED6, 80, PASS),
         flows(EXT6, UNALLOCATED6, 80, PASS),
         flows(POD6, VIP6, 81, REJECT)),

    # ------------------------------------------------------------------ NodePort
    case("ipv6-nodeport-from-external", "frontend.node-port masq.external-cluster node.addresses",
         dual_cluster(nodeport_ds(), *both("np")),
         flows(EXT6, NODE_A6, NP, reach(ALL3_6, masq=True)),
         flows(EXT, NODE_A, NP, reach(ALL3, masq=True))),
    case("ipv6-nodeport-from-pod-and-node", "frontend.node-port masq.external-cluster",
         dual_cluster(nodeport_ds(), *both("np")),
         flows(POD6, NODE_A6, NP, reach(ALL3_6, masq=True)),
         flows(NODE_A6, NODE_A6, NP, reach(ALL3_6, masq=True)),
         flows(POD6, VIP6_NP, 80, reach(ALL3_6))),
    case("ipv6-nodeport-addresses-default-primary", "node.nodeport-addresses frontend.node-port verdict.pass",
         dual_cluster(nodeport_ds(), *both("np")),
         flows(EXT6, NODE_A6_EXT, NP, PASS),
         flows(EXT, NODE_A_EXT, NP, PASS),
         flows(EXT6, NODE_B6, NP, PASS)),
    case("ipv6-nodeport-addresses-explicit-primary", "node.nodeport-addresses frontend.node-port",
         dual_cluster(nodeport_ds(), *both("np"), config=dual_config(node_port_addresses=["primary"])),
         flows(EXT6, NODE_A6, NP, reach(ALL3_6, masq=True)),
         flows(EXT6, NODE_A6_EXT, NP, PASS)),
    # CIDRs of one family narrow that family only: the other family, with no CIDR listed, gets
    # every node address of its own (kube-proxy's per-family NodePortAddresses).
    case("ipv6-nodeport-addresses-ipv6-cidr", "node.nodeport-addresses frontend.node-port",
         dual_cluster(nodeport_ds(), *both("np"), config=dual_config(node_port_addresses=["2001:db8:18::/48"])),
         flows(EXT6, NODE_A6_EXT, NP, reach(ALL3_6, masq=True)),
         flows(EXT6, NODE_A6, NP, PASS),
         flows(EXT, NODE_A, NP, reach(ALL3, masq=True)),
         flows(EXT, NODE_A_EXT, NP, reach(ALL3, masq=True))),
    case("ipv6-nodeport-addresses-all-ipv6", "node.nodeport-addresses frontend.node-port",
         dual_cluster(nodeport_ds(), *both("np"),
                      config=dual_config(node_port_addresses=["::/0", "192.168.0.0/24"])),
         flows(EXT6, NODE_A6, NP, reach(ALL3_6, masq=True)),
         flows(EXT6, NODE_A6_EXT, NP, reach(ALL3_6, masq=True)),
         flows(EXT, NODE_A, NP, reach(ALL3, masq=True)),
         flows(EXT, NODE_A_EXT, NP, PASS)),
    case("ipv6-nodeport-of-an-ipv4-only-service", "frontend.node-port verdict.pass",
         dual_cluster(nodeport(), three("np"), three6("np")),
         flows(EXT6, NODE_A6, NP, PASS),  # no IPv6 ClusterIP: the IPv6 proxier has no such service
         flows(EXT, NODE_A, NP, reach(ALL3, masq=True))),

    # ------------------------------------------------------------------ LoadBalancer and external IPs
    case("ipv6-lb-ingress", "frontend.lb-ingress masq.external-cluster",
         dual_cluster(loadbalancer_ds(lb=[LB, LB6, ingress(LB6_2, mode="Proxy")]), *both("lb")),
         flows(EXT6, LB6, 80, reach(ALL3_6, masq=True)),
         flows(POD6, LB6, 80, reach(ALL3_6, masq=True)),
         flows(EXT6, LB6_2, 80, PASS),
         flows(EXT, LB, 80, reach(ALL3, masq=True))),
    case("ipv6-lb-of-an-ipv6-only-service", "frontend.lb-ingress verdict.pass",
         dual_cluster(loadbalancer(ip=VIP6_LB, lb=[LB6, LB]), *both("lb")),
         flows(EXT6, LB6, 80, reach(ALL3_6, masq=True)),
         flows(EXT, LB, 80, PASS)),  # no family translation: the IPv4 ingress IP is served by no proxier
    case("ipv6-source-ranges", "verdict.source-ranges",
         dual_cluster(loadbalancer_ds(ranges=["2001:db8:113::/48", "203.0.113.0/24"]), *both("lb")),
         flows(EXT6, LB6, 80, reach(ALL3_6, masq=True)),
         flows(OUTSIDER6, LB6, 80, DROP),
         flows(POD6, LB6, 80, DROP),
         flows(OUTSIDER6, NODE_A6, 30040, reach(ALL3_6, masq=True)),  # NodePorts ignore the ranges
         flows(EXT, LB, 80, reach(ALL3, masq=True)),
         flows(OUTSIDER, LB, 80, DROP)),
    case("ipv6-source-ranges-ipv4-only-leave-ipv6-open", "verdict.source-ranges",
         dual_cluster(loadbalancer_ds(ranges=["203.0.113.0/24"]), *both("lb")),
         flows(OUTSIDER6, LB6, 80, reach(ALL3_6, masq=True)),
         flows(OUTSIDER, LB, 80, DROP)),
    case("ipv6-source-ranges-ipv6-only-leave-ipv4-open", "verdict.source-ranges",
         dual_cluster(loadbalancer_ds(ranges=["2001:db8:113::/48"]), *both("lb")),
         flows(OUTSIDER, LB, 80, reach(ALL3, masq=True)),
         flows(OUTSIDER6, LB6, 80, DROP)),
    case("ipv6-source-ranges-slash-zero", "verdict.source-ranges",
         dual_cluster(loadbalancer_ds(ranges=["::/0", "203.0.113.0/24"]), *both("lb")),
         flows(OUTSIDER6, LB6, 80, reach(ALL3_6, masq=True)),
         flows(OUTSIDER, LB, 80, DROP)),
    case("ipv6-source-ranges-node-ip-allows-lb-ips", "verdict.source-ranges node.addresses",
         dual_cluster(loadbalancer_ds(lb=[LB6, LB6_2], ranges=["fd00:192:168::/64"]), *both("lb")),
         flows(NODE_A6, LB6, 80, reach(ALL3_6, masq=True)),
         flows(LB6, LB6, 80, reach(ALL3_6, masq=True)),
         flows(LB6_2, LB6, 80, reach(ALL3_6, masq=True)),
         flows(EXT6, LB6, 80, DROP)),
    case("ipv6-external-ip", "frontend.external-ips masq.external-cluster",
         dual_cluster(svc("web", port(80, target=8080), ip=VIP, ips=[VIP, VIP6], external_ips=[XIP, XIP6]),
                      *both("web")),
         flows(EXT6, XIP6, 80, reach(ALL3_6, masq=True)),
         flows(POD6, XIP6, 80, reach(ALL3_6, masq=True)),
         flows(EXT, XIP, 80, reach(ALL3, masq=True))),

    # ------------------------------------------------------------------ traffic policies
    case("ipv6-etp-local", "masq.etp-local set.local cond.local frontend.node-port",
         dual_cluster(nodeport_ds(etp="Local"), *both("np")),
         flows(EXT6, NODE_A6, NP, reach(at(8080, E1_6))),
         flows(POD6, NODE_A6, NP, reach(ALL3_6)),
         flows(NODE_A6, NODE_A6, NP, reach(ALL3_6, masq=True)),
         flows(EXT, NODE_A, NP, reach(at(8080, E1)))),
    case("ipv6-etp-local-no-local-endpoint", "verdict.etp-local-drop masq.etp-local",
         dual_cluster(nodeport_ds(etp="Local"), three("np"), remote_only6("np")),
         flows(EXT6, NODE_A6, NP, DROP),
         flows(POD6, NODE_A6, NP, reach(at(8080, E2_6, E3_6))),
         flows(NODE_A6, NODE_A6, NP, reach(at(8080, E2_6, E3_6), masq=True)),
         flows(EXT, NODE_A, NP, reach(at(8080, E1)))),
    case("ipv6-etp-local-lb-and-external-ip", "masq.etp-local frontend.lb-ingress frontend.external-ips",
         dual_cluster(loadbalancer_ds(etp="Local", external_ips=[XIP6]), *both("lb")),
         flows(EXT6, LB6, 80, reach(at(8080, E1_6))),
         flows(EXT6, XIP6, 80, reach(at(8080, E1_6))),
         flows(POD6, LB6, 80, reach(ALL3_6))),
    case("ipv6-etp-local-on-another-node", "masq.etp-local cond.local node.addresses",
         dual_cluster(nodeport_ds(etp="Local"),
                      slice("np", ep(E1_6, "node-a"), ep(E2_6, "node-b"), ep(E4_6, "node-b"), family="IPv6")),
         flows(EXT6, NODE_B6, NP, reach(at(8080, E2_6, E4_6))),
         flows(NODE_B6, NODE_B6, NP, reach(at(8080, E1_6, E2_6, E4_6), masq=True)),
         node="node-b", snat=NODE_B, snat6=NODE_B6),
    case("ipv6-itp-local", "set.local verdict.itp-local-drop masq.cluster-ip",
         dual_cluster(svc("web", port(80, target=8080), ip=VIP, ips=[VIP, VIP6], itp="Local"),
                      three("web"), three6("web"),
                      svc("remote", port(80, target=8080), ip="10.96.0.11", ips=["10.96.0.11", "fd00:10:96::11"],
                          itp="Local"),
                      three("remote"), remote_only6("remote")),
         flows(POD6, VIP6, 80, reach(at(8080, E1_6))),
         flows(POD6, "fd00:10:96::11", 80, DROP),
         flows(POD, "10.96.0.11", 80, reach(at(8080, E1)))),
    case("ipv6-hairpin", "masq.hairpin masq.cluster-ip",
         dual_cluster(WEB_DS, three("web"), slice("web", ep(E1_6, "node-a"), ep(E2_6, "node-b"), family="IPv6")),
         flows(E1_6, VIP6, 80, reach(at(8080, E1_6, E2_6), masq="hairpin"))),

    # ------------------------------------------------------------------ endpoints
    case("ipv6-affinity", "affinity.client-ip affinity.shared",
         dual_cluster(nodeport_ds(affinity=True), *both("np")),
         flows(PODS_A6, VIP6_NP, 80, reach(ALL3_6, per_client=True), label="cluster-ip"),
         flows(PODS_A6, NODE_A6, NP, reach(ALL3_6, masq=True, per_client=True, clients_keep="cluster-ip"))),
    case("ipv6-zone-hints", "topology.zone set.cluster",
         dual_cluster(WEB_DS, three("web"),
                      slice("web", ep(E1_6, "node-a", zones=["zone-a"]), ep(E2_6, "node-b", zones=["zone-b"]),
                            ep(E3_6, "node-c", zones=["zone-a"]), family="IPv6")),
         flows(POD6, VIP6, 80, reach(at(8080, E1_6, E3_6))),
         flows(POD, VIP, 80, reach(ALL3))),  # the IPv4 slice carries no hints: not narrowed
    case("ipv6-terminating-fallback", "set.cluster cond.meaning",
         dual_cluster(WEB_DS, three("web"),
                      slice("web", terminating(E1_6, "node-a"), terminating(E2_6, "node-b", serving=False),
                            not_ready(E3_6, "node-c"), family="IPv6")),
         flows(POD6, VIP6, 80, reach(at(8080, E1_6)))),
    case("ipv6-pods-with-two-pod-ips", "endpoint.pods endpoint.port-match",
         dual_cluster(svc("web", port(80, target="http"), ip=VIP, ips=[VIP, VIP6], selector={"app": "web"}),
                      pod("web-1", "10.244.1.21", "node-a", ip6="fd00:10:244:1::21", ports=(("http", 8080, "TCP"),)),
                      pod("web-2", "fd00:10:244:2::22", "node-b", ip6="10.244.2.22", ports=(("http", 9090, "TCP"),)),
                      pod("web-3", "10.244.3.23", "node-c", ports=(("http", 8080, "TCP"),))),  # IPv4 only
         flows(POD6, VIP6, 80, reach(frozenset({"[fd00:10:244:1::21]:8080", "[fd00:10:244:2::22]:9090"}))),
         flows(POD, VIP, 80, reach(frozenset({"10.244.1.21:8080", "10.244.2.22:9090", "10.244.3.23:8080"})))),

    # ------------------------------------------------------------------ conntrack
    case("ipv6-udp-reselect-after-update", "ct.udp-reselect ct.tcp-keep ct.reply",
         dual_cluster(DNS_DS, WEB_DS, *both("web"),
                      slice("dns", ep(E1_6, "node-a"), ep(E2_6, "node-b"), ports=DNS_PORTS, family="IPv6")),
         udp(POD6, VIP6_DNS, 53, reach(at(5353, E1_6, E2_6)), label="udp"),
         flows(POD6, VIP6, 80, reach(ALL3_6), label="tcp"),
         Update(dual_cluster(DNS_DS, WEB_DS, three("web"),
                             slice("web", ep(E1_6, "node-a"), terminating(E2_6, "node-b"), family="IPv6"),
                             slice("dns", ep(E1_6, "node-a"), not_ready(E2_6, "node-b"), ep(E3_6, "node-c"),
                                   ports=DNS_PORTS, family="IPv6"))),
         again("udp", reach(at(5353, E1_6, E3_6), keep="udp")),
         again("tcp", reach(ALL3_6, keep="tcp"))),
    case("ipv6-rejected-then-served", "ct.no-endpoint-cleared verdict.reject-no-endpoint",
         dual_cluster(DNS_DS, slice("dns", ports=DNS_PORTS, family="IPv6")),
         udp(POD6, VIP6_DNS, 53, REJECT, n=24, label="before"),
         Update(dual_cluster(DNS_DS, slice("dns", ep(E1_6, "node-a"), ep(E2_6, "node-b"), ep(E3_6, "node-c"),
                                           ports=DNS_PORTS, family="IPv6"))),
         again("before", reach(DNS3_6))),
    case("ipv6-masquerade-source-port-collision", "masq.external-cluster ct.reply",
         dual_cluster(nodeport_ds(), slice("np", ep(E1_6, "node-a"), family="IPv6")),
         flows(EXTERNALS6[:12], NODE_A6, NP, reach(at(8080, E1_6), masq=True), sport=40000),
         flows(EXTERNALS6[:12], VIP6_NP, 80, reach(at(8080, E1_6), masq=True), sport=40001)),

    # ------------------------------------------------------------------ not for the dataplane
    case("ipv6-unrelated-traffic-passes", "verdict.pass",
         dual_cluster(loadbalancer_ds(), *both("lb")),
         udp(POD6, "2001:4860:4860::8888", 53, PASS),
         flows(POD6, E1_6, 8080, PASS),
         flows(EXT6, NODE_A6, 22, PASS),
         flows(EXT6, LB6, 0, PASS, proto="ICMP")),
]
CASES += IPV6_CASES

def rule_counts() -> Counter[str]:
    counts: Counter[str] = Counter({rule: 0 for rule in RULES})
    for item in CASES:
        counts.update(item.rules)
    return counts


if __name__ == "__main__":
    for rule, count in rule_counts().items():
        print(f"{count:4d}  {rule:28s} {RULES[rule]}")
    print(f"{len(CASES):4d}  scenarios")

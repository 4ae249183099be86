"""The cluster model: Kubernetes objects read from `kubectl get -o yaml|json` output, validated.

Input shapes: multi-document YAML, `kind: List` (and typed lists such as `ServiceList`, nested
lists too), JSON objects and arrays, and folders of *.yaml / *.yml / *.json files read
recursively in sorted order. Understood kinds become frozen dataclasses; every other kind is
skipped and counted. Validation follows the API server's rules where the dataplane depends on
them, and every problem is one `ClusterError` line naming the file, the object and the field.

This module decides nothing about routing: that is the compiler's job.
"""
from __future__ import annotations

import json
import marshal
import os
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_network
from itertools import repeat
from pathlib import Path
from typing import Any

import yaml

from fastpath.gcpause import collection_paused
from fastpath.kubeyaml import load_yaml

CLUSTER_FILE_SUFFIXES = (".yaml", ".yml", ".json")

LABEL_SERVICE_NAME = "kubernetes.io/service-name"
DEFAULT_NAMESPACE = "default"  # where kubectl applies an object that names none
LABEL_ZONE = "topology.kubernetes.io/zone"

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
TRAFFIC_POLICIES = ("Cluster", "Local")
SESSION_AFFINITIES = ("None", "ClientIP")
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
SLICE_FAMILIES = {"IPv4": 4, "IPv6": 6}  # an EndpointSlice's addressType -> its address family
LB_IP_MODES = ("VIP", "Proxy")
PROXY_MODES = ("", "iptables", "ipvs", "nftables", "kernelspace")
DETECT_LOCAL_MODES = ("", "ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
NODE_PORT_ADDRESSES_PRIMARY = "primary"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds; the API server's default for ClientIP affinity


# --------------------------------------------------------------------------------------------
# Errors


class ClusterError(Exception):
    """Bad cluster input. str() is one line: `file[:line]: Kind namespace/name: field.path: message`.

    Parts that do not apply are left out (a missing file has no object; a YAML syntax error has a
    line but no object).
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        obj: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.line = line
        self.obj = obj
        self.path = path

    def __str__(self) -> str:
        parts = []
        if self.source:
            parts.append(f"{self.source}:{self.line}" if self.line else self.source)
        parts.extend(part for part in (self.obj, self.path) if part)
        parts.append(self.message)
        # Several consumers print this as the single line of a CLI error: never let a newline in.
        return ": ".join(parts).replace("\r", " ").replace("\n", " ")

    def __reduce__(self) -> Any:  # keep the fields across pickling (multiprocessing)
        return (_rebuild_error, (self.message, self.source, self.line, self.obj, self.path))


def _rebuild_error(message: str, source: Any, line: Any, obj: Any, path: Any) -> ClusterError:
    return ClusterError(message, source=source, line=line, obj=obj, path=path)


def _shown(value: Any) -> str:
    """A value as it appears in an error: JSON-like (strings quoted), cut short."""
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------------
# Addresses (kube-proxy's "sloppy" parsing: leading zeros are decimal, not octal)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def normalize_ip(text: Any) -> str:
    """The canonical text of an IP address (see parse_ip); ValueError if invalid."""
    if isinstance(text, str) and _CANONICAL_IPV4.fullmatch(text):
        return text  # the common case, a dozen times cheaper than parsing
    return str(parse_ip(text))


def parse_ip(text: str) -> IPv4Address | IPv6Address:
    """Parse an IP address the way Kubernetes' ParseIPSloppy does; ValueError if invalid.

    "172.30.0.041" is 172.30.0.41 (older API servers accepted such addresses, so old objects
    still carry them). IPv6 zones ("%eth0") are not addresses Kubernetes accepts.
    """
    if not isinstance(text, str) or "%" in text:
        raise ValueError(text)
    if ":" in text:
        head, sep, tail = text.rpartition(":")
        if "." in tail:  # embedded IPv4 ("::ffff:10.0.0.010") gets the same leniency
            text = head + sep + str(_parse_ipv4(tail))
        return IPv6Address(text)
    return _parse_ipv4(text)


def _parse_ipv4(text: str) -> IPv4Address:
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(text)
    value = 0
    for part in parts:
        if not (part.isascii() and part.isdigit()):
            raise ValueError(text)
        octet = int(part, 10)
        if octet > 255:
            raise ValueError(text)
        value = (value << 8) | octet
    return IPv4Address(value)


def parse_cidr(text: str) -> str:
    """Normalise a CIDR ("10.0.0.7/8" -> "10.0.0.0/8"; leading zeros decimal); ValueError if invalid."""
    address, slash, prefix = text.strip().partition("/")
    if not slash or not (prefix.isascii() and prefix.isdigit()):
        raise ValueError(text)
    # Host bits are masked off, as Go's net.ParseCIDR does.
    return str(ip_network(f"{parse_ip(address)}/{int(prefix, 10)}", strict=False))


def ip_family(address: str) -> int:
    """4 or 6 for a normalised address string as stored in the model."""
    return 6 if ":" in address else 4


# --------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str  # "" when unnamed
    protocol: str  # "TCP" | "UDP" | "SCTP"
    port: int
    target_port: int | str  # a number, or a container port name resolved per pod
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class LoadBalancerIngress:
    ip: str | None  # None for hostname-only ingress (those get no dataplane entry)
    hostname: str | None = None
    ip_mode: str | None = None  # "VIP" | "Proxy" | None (unset behaves as VIP)


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str  # "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    cluster_ips: tuple[str, ...]  # normalised; empty for headless and ExternalName
    headless: bool  # clusterIP "None"
    ports: tuple[ServicePort, ...]
    selector: tuple[tuple[str, str], ...] | None  # sorted pairs; None when no (or an empty) selector
    session_affinity: str = "None"  # "None" | "ClientIP"
    affinity_timeout: int | None = None  # seconds, set only with ClientIP affinity
    external_ips: tuple[str, ...] = ()
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    load_balancer_ingress: tuple[LoadBalancerIngress, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()  # normalised CIDRs
    external_name: str | None = None
    publish_not_ready_addresses: bool = False

    @property
    def cluster_ip(self) -> str | None:
        """The primary cluster IP (spec.clusterIP), None for headless and ExternalName services."""
        return self.cluster_ips[0] if self.cluster_ips else None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def load_balancer_vips(self) -> list[str]:
        """The status.loadBalancer.ingress IPs kube-proxy serves: ipMode unset or VIP (with Proxy
        the load balancer proxies the traffic itself)."""
        return [ingress.ip for ingress in self.load_balancer_ingress
                if ingress.ip is not None and ingress.ip_mode in (None, "VIP")]


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str  # "" when unnamed
    protocol: str
    port: int | None  # None: the slice does not restrict ports (kube-proxy ignores such ports)


@dataclass(frozen=True, slots=True)
class EndpointConditions:
    """Conditions as written; None means absent. The properties apply the API's meaning of absent."""

    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None

    @property
    def is_ready(self) -> bool:
        return self.ready is None or self.ready

    @property
    def is_serving(self) -> bool:
        return self.serving is None or self.serving

    @property
    def is_terminating(self) -> bool:
        return bool(self.terminating)


@dataclass(frozen=True, slots=True)
class ObjectReference:
    kind: str | None
    namespace: str | None
    name: str | None


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]  # normalised for IPv4/IPv6 slices; only the first one is used
    conditions: EndpointConditions = EndpointConditions()
    node_name: str | None = None
    zone: str | None = None
    hints_for_zones: tuple[str, ...] = ()
    hints_for_nodes: tuple[str, ...] = ()
    target_ref: ObjectReference | None = None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str | None  # label kubernetes.io/service-name
    address_type: str  # "IPv4" | "IPv6" | "FQDN"
    ports: tuple[EndpointPort, ...]
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class NodeAddress:
    type: str  # "InternalIP", "ExternalIP", "Hostname", ...
    address: str  # normalised for InternalIP / ExternalIP


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[NodeAddress, ...]
    zone: str | None = None
    pod_cidrs: tuple[str, ...] = ()  # for detectLocalMode NodeCIDR

    def ips(self, family: int | None = None) -> tuple[str, ...]:
        """InternalIP then ExternalIP addresses (of one family if given), in the listed order."""
        found = [a.address for kind in ("InternalIP", "ExternalIP") for a in self.addresses if a.type == kind]
        return tuple(ip for ip in found if family is None or ip_family(ip) == family)


@dataclass(frozen=True, slots=True)
class ContainerPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class Pod:
    """Just what endpoint building from selectors needs."""

    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]  # sorted pairs
    node_name: str | None
    pod_ips: tuple[str, ...]  # normalised, status.podIPs (or status.podIP)
    phase: str | None
    ready: bool  # condition Ready is "True"
    terminating: bool  # metadata.deletionTimestamp is set
    host_network: bool
    # For named targetPorts: the ports of spec.containers, then of sidecars (spec.initContainers
    # with restartPolicy Always), in that order, as Kubernetes searches them.
    ports: tuple[ContainerPort, ...]


@dataclass(frozen=True, slots=True)
class ConntrackConfig:
    """kube-proxy's conntrack settings; durations in seconds, None when not set."""

    max_per_core: int | None = None
    min: int | None = None
    tcp_established_timeout: float | None = None
    tcp_close_wait_timeout: float | None = None
    tcp_be_liberal: bool = False
    udp_timeout: float | None = None
    udp_stream_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class KubeProxyConfiguration:
    cluster_cidrs: tuple[str, ...] = ()  # clusterCIDR, comma separated for dual-stack
    # Normalised CIDRs (both families), or just ("primary",); () when not set.
    node_port_addresses: tuple[str, ...] = ()
    masquerade_all: bool = False
    mode: str = ""  # "" is the platform default (iptables on Linux)
    detect_local_mode: str = ""  # one of DETECT_LOCAL_MODES; "" is ClusterCIDR
    bridge_interface: str | None = None
    interface_name_prefix: str | None = None
    hostname_override: str | None = None
    bind_address: str | None = None  # normalised; an unspecified address (0.0.0.0, ::) is kept as written
    ipvs_scheduler: str = ""
    conntrack: ConntrackConfig = ConntrackConfig()


@dataclass(frozen=True, slots=True)
class ServiceCIDR:
    """A range ClusterIPs are allocated from (networking.k8s.io ServiceCIDR, cluster-scoped)."""

    name: str
    cidrs: tuple[str, ...]  # normalised; one or two, at most one per family


@dataclass(frozen=True, slots=True)
class ClusterState:
    """Everything read from the inputs, in reading order."""

    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    nodes: tuple[Node, ...] = ()
    pods: tuple[Pod, ...] = ()
    proxy_config: KubeProxyConfiguration | None = None
    service_cidrs: tuple[ServiceCIDR, ...] = ()
    skipped: Counter[str] = field(default_factory=Counter)  # objects of other kinds, per kind
    sources: tuple[str, ...] = ()  # files read, in order

    @classmethod
    def from_objects(cls, objects: Iterable[Mapping[str, Any]], source: str = "<memory>") -> ClusterState:
        """Build a state from already-decoded objects (dicts shaped like kubectl's JSON, Lists too)."""
        collector = _Collector()
        with collection_paused():
            for number, obj in enumerate(objects, start=1):
                collector.add(obj, source, f"object {number}")
        return collector.state((source,))

    def node(self, name: str) -> Node | None:
        return next((node for node in self.nodes if node.name == name), None)

    def service(self, namespace: str, name: str) -> Service | None:
        return next((s for s in self.services if s.namespace == namespace and s.name == name), None)


# --------------------------------------------------------------------------------------------
# Field readers: each takes the raw value and its path, returns a checked value or raises


class _Object:
    """Where we are while reading one object: the file and "Kind namespace/name" for errors."""

    __slots__ = ("label", "source")

    def __init__(self, source: str, label: str) -> None:
        self.source = source
        self.label = label

    def error(self, path: str, message: str) -> ClusterError:
        return ClusterError(message, source=self.source, obj=self.label, path=path)

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if type(value) is not dict and not isinstance(value, Mapping):  # (the ABC check is slow)
            raise self.error(path, f"must be a mapping, got {_shown(value)}")
        return value

    def list(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(path, f"must be a list, got {_shown(value)}")
        return value

    def string(self, value: Any, path: str, *, required: bool = False) -> str | None:
        if value is None or (value == "" and required):
            if required:
                raise self.error(path, "required")
            return None
        if not isinstance(value, str):
            raise self.error(path, f"must be a string, got {_shown(value)}")
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        raise self.error(path, f"must be true or false, got {_shown(value)}")

    def integer(self, value: Any, path: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(path, f"must be an integer {low}-{high}, got {_shown(value)}")
        return value

    def port(self, value: Any, path: str) -> int:
        return self.integer(value, path, 1, 65535)

    def choice(self, value: Any, path: str, choices: tuple[str, ...], default: str) -> str:
        if value is None or value == "":
            return default
        if value not in choices:
            shown = ", ".join(c for c in choices if c)
            raise self.error(path, f"must be one of {shown}, got {_shown(value)}")
        return str(value)

    def protocol(self, value: Any, path: str) -> str:
        return self.choice(value, path, PROTOCOLS, "TCP")

    def ip(self, value: Any, path: str, family: int | None = None) -> str:
        try:
            address = normalize_ip(value)
        except ValueError:
            raise self.error(path, f"must be an IP address, got {_shown(value)}") from None
        if family is not None and ip_family(address) != family:
            raise self.error(path, f"must be an IPv{family} address, got {_shown(value)}")
        return address

    def cidr(self, value: Any, path: str) -> str:
        if isinstance(value, str):
            try:
                return parse_cidr(value)
            except ValueError:
                pass
        raise self.error(path, f"must be a CIDR such as 10.0.0.0/8, got {_shown(value)}")

    def labels(self, value: Any, path: str) -> tuple[tuple[str, str], ...]:
        pairs = []
        for key, item in self.mapping(value, path).items():
            if not isinstance(key, str) or not isinstance(item, str):
                raise self.error(f"{path}[{_shown(key)}]", f"must map strings to strings, got {_shown(item)}")
            pairs.append((key, item))
        return tuple(sorted(pairs))

    def names(self, value: Any, path: str) -> tuple[str, ...]:
        """A list of {name: ...} entries (EndpointSlice hints)."""
        names = []
        for index, entry in enumerate(self.list(value, path)):
            entry_path = f"{path}[{index}]"
            names.append(self.string(self.mapping(entry, entry_path).get("name"), f"{entry_path}.name", required=True))
        return tuple(name for name in names if name is not None)

    def duration(self, value: Any, path: str) -> float | None:
        if value is None:
            return None
        seconds = _parse_go_duration(value) if isinstance(value, str) else None
        if seconds is None:
            raise self.error(path, f"must be a duration such as 1h30m0s, got {_shown(value)}")
        return seconds


_GO_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def _parse_go_duration(text: str) -> float | None:
    """Seconds in a Go time.Duration string ("24h0m0s", "1.5h", "300ms"); None if malformed."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in ("+", "-") else text
    if body == "0":
        return 0.0
    total, position = 0.0, 0
    for match in _GO_DURATION_PART.finditer(body):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        position = match.end()
    return sign * total if body and position == len(body) else None


# --------------------------------------------------------------------------------------------
# Object readers


def _parse_service(o: _Object, obj: Mapping[str, Any], namespace: str, name: str) -> Service:
    """A Service: read by compiled code when it is written as most are (see
    fastpath._compile.plain_service), else field by field (_read_service)."""
    service = _compiled.plain_service(obj, namespace, name)
    return service if service is not None else _read_service(o, obj, namespace, name)


def _read_service(o: _Object, obj: Mapping[str, Any], namespace: str, name: str) -> Service:
    spec = o.mapping(obj.get("spec"), "spec")
    status = o.mapping(obj.get("status"), "status")
    service_type = o.choice(spec.get("type"), "spec.type", SERVICE_TYPES, "ClusterIP")

    headless = False
    cluster_ips: tuple[str, ...] = ()
    if service_type != "ExternalName":  # its clusterIP fields are meaningless
        headless, cluster_ips = _cluster_ips(o, spec)

    ports: list[ServicePort] = []
    seen_names: dict[tuple[str, str], int] = {}
    seen_numbers: dict[tuple[int, str], int] = {}
    for index, raw in enumerate(o.list(spec.get("ports"), "spec.ports")):
        path = f"spec.ports[{index}]"
        port = _service_port(o, o.mapping(raw, path), path)
        # The compiler keys service ports by (name, protocol) and frontends by (port, protocol).
        by_name, by_number = (port.name, port.protocol), (port.port, port.protocol)
        if by_name in seen_names:
            raise o.error(f"{path}.name", f"duplicates spec.ports[{seen_names[by_name]}] ({port.name}/{port.protocol})")
        if by_number in seen_numbers:
            raise o.error(f"{path}.port",
                          f"duplicates spec.ports[{seen_numbers[by_number]}] ({port.port}/{port.protocol})")
        seen_names[by_name] = seen_numbers[by_number] = index
        ports.append(port)

    affinity = o.choice(spec.get("sessionAffinity"), "spec.sessionAffinity", SESSION_AFFINITIES, "None")
    timeout = None
    if affinity == "ClientIP":
        config_path = "spec.sessionAffinityConfig.clientIP"
        client_ip = o.mapping(o.mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
                              .get("clientIP"), config_path)
        raw_timeout = client_ip.get("timeoutSeconds")
        timeout = (DEFAULT_AFFINITY_TIMEOUT if raw_timeout is None
                   else o.integer(raw_timeout, f"{config_path}.timeoutSeconds", 1, 86400))

    ingress = []
    lb_path = "status.loadBalancer.ingress"
    load_balancer = o.mapping(status.get("loadBalancer"), "status.loadBalancer")
    for index, raw in enumerate(o.list(load_balancer.get("ingress"), lb_path)):
        path = f"{lb_path}[{index}]"
        entry = o.mapping(raw, path)
        ip = entry.get("ip")
        ingress.append(LoadBalancerIngress(
            ip=None if ip in (None, "") else o.ip(ip, f"{path}.ip"),
            hostname=o.string(entry.get("hostname"), f"{path}.hostname") or None,
            ip_mode=o.choice(entry.get("ipMode"), f"{path}.ipMode", LB_IP_MODES, "") or None,
        ))

    ranges = o.list(spec.get("loadBalancerSourceRanges"), "spec.loadBalancerSourceRanges")
    source_ranges = tuple(o.cidr(value, f"spec.loadBalancerSourceRanges[{index}]") for index, value in enumerate(ranges))
    external_ips = tuple(o.ip(value, f"spec.externalIPs[{index}]")
                         for index, value in enumerate(o.list(spec.get("externalIPs"), "spec.externalIPs")))
    selector = o.labels(spec.get("selector"), "spec.selector")

    return _make_service(
        namespace=namespace,
        name=name,
        type=service_type,
        cluster_ips=cluster_ips,
        headless=headless,
        ports=tuple(ports),
        # An empty selector is stored as none by the API server: no endpoints are built from pods.
        selector=selector or None,
        session_affinity=affinity,
        affinity_timeout=timeout,
        external_ips=external_ips,
        external_traffic_policy=o.choice(spec.get("externalTrafficPolicy"), "spec.externalTrafficPolicy",
                                         TRAFFIC_POLICIES, "Cluster"),
        internal_traffic_policy=o.choice(spec.get("internalTrafficPolicy"), "spec.internalTrafficPolicy",
                                         TRAFFIC_POLICIES, "Cluster"),
        load_balancer_ingress=tuple(ingress),
        load_balancer_source_ranges=source_ranges,
        external_name=o.string(spec.get("externalName"), "spec.externalName") if service_type == "ExternalName" else None,
        publish_not_ready_addresses=bool(o.boolean(spec.get("publishNotReadyAddresses"),
                                                   "spec.publishNotReadyAddresses")),
    )


def _cluster_ips(o: _Object, spec: Mapping[str, Any]) -> tuple[bool, tuple[str, ...]]:
    """(headless, normalised cluster IPs) from spec.clusterIP / spec.clusterIPs."""
    primary = o.string(spec.get("clusterIP"), "spec.clusterIP")
    listed = o.list(spec.get("clusterIPs"), "spec.clusterIPs")
    if not listed:
        listed, path = ([primary] if primary else []), "spec.clusterIP"
    else:
        path = "spec.clusterIPs"
    if "None" in listed or primary == "None":
        if listed != ["None"] or primary not in (None, "", "None"):
            raise o.error(path, f'"None" (headless) cannot be combined with addresses, got {_shown(listed)}')
        return True, ()
    if path == "spec.clusterIP":
        addresses: tuple[str, ...] = (o.ip(listed[0], path),) if listed else ()
    else:
        addresses = tuple([o.ip(value, f"{path}[{index}]") for index, value in enumerate(listed)])
    if len(addresses) > 1 and (len(addresses) > 2 or ip_family(addresses[0]) == ip_family(addresses[1])):
        raise o.error("spec.clusterIPs", f"must hold at most one address per family, got {_shown(listed)}")
    # (the same text as clusterIPs[0], already read, is the same address)
    if primary and path == "spec.clusterIPs" and primary != listed[0] and o.ip(primary, "spec.clusterIP") != addresses[0]:
        raise o.error("spec.clusterIP", f"must equal spec.clusterIPs[0] {_shown(listed[0])}, got {_shown(primary)}")
    return False, addresses


def _service_port(o: _Object, raw: Mapping[str, Any], path: str) -> ServicePort:
    number = o.port(raw.get("port"), f"{path}.port")
    target: Any = raw.get("targetPort")
    if target is None or target == 0:
        target = number  # the API server's default
    elif isinstance(target, str):
        # A port name must contain a letter (IANA service name); "8080" as a string is a mistake.
        if not any(c.isalpha() for c in target):
            raise o.error(f"{path}.targetPort", f"must be an integer 1-65535 or a port name, got {_shown(target)}")
    else:
        target = o.port(target, f"{path}.targetPort")
    node_port = raw.get("nodePort")
    return _make_service_port(
        name=o.string(raw.get("name"), f"{path}.name") or "",
        protocol=o.protocol(raw.get("protocol"), f"{path}.protocol"),
        port=number,
        target_port=target,
        node_port=None if node_port in (None, 0) else o.port(node_port, f"{path}.nodePort"),
    )


_SERVICE_NAME_PATH = f"metadata.labels[{_shown(LABEL_SERVICE_NAME)}]"  # (once: a watch parses many slices)


def _parse_endpoint_slice(o: _Object, obj: Mapping[str, Any], namespace: str, name: str) -> EndpointSlice:
    """An EndpointSlice: read by compiled code when it is written as the EndpointSlice controller
    writes IPv4 slices (see fastpath._compile.plain_ipv4_slice), else field by field
    (_read_endpoint_slice)."""
    endpoint_slice = _compiled.plain_ipv4_slice(obj, namespace, name)
    return endpoint_slice if endpoint_slice is not None else _read_endpoint_slice(o, obj, namespace, name)


def _read_endpoint_slice(o: _Object, obj: Mapping[str, Any], namespace: str, name: str) -> EndpointSlice:
    labels = o.mapping(o.mapping(obj.get("metadata"), "metadata").get("labels"), "metadata.labels")
    service_name = o.string(labels.get(LABEL_SERVICE_NAME), _SERVICE_NAME_PATH)
    address_type = obj.get("addressType")
    if address_type not in ADDRESS_TYPES:
        raise o.error("addressType", f"must be one of {', '.join(ADDRESS_TYPES)}, got {_shown(address_type)}")
    family = SLICE_FAMILIES.get(address_type)

    ports = []
    seen: dict[tuple[str, str], int] = {}
    for index, raw in enumerate(o.list(obj.get("ports"), "ports")):
        path = f"ports[{index}]"
        entry = o.mapping(raw, path)
        number = entry.get("port")
        port = _make_endpoint_port(
            name=o.string(entry.get("name"), f"{path}.name") or "",
            protocol=o.protocol(entry.get("protocol"), f"{path}.protocol"),
            port=None if number is None else o.port(number, f"{path}.port"),
        )
        key = (port.name, port.protocol)
        if key in seen:  # matching by name and protocol must be unambiguous
            raise o.error(f"{path}.name", f"duplicates ports[{seen[key]}] ({port.name}/{port.protocol})")
        seen[key] = index
        ports.append(port)

    endpoints = _read_endpoints(o, o.list(obj.get("endpoints"), "endpoints"), family)
    return _make_slice(namespace=namespace, name=name, service_name=service_name, address_type=address_type,
                       ports=tuple(ports), endpoints=tuple(endpoints))


# The conditions are few (each of three None, True or False): endpoints share them.
_CONDITIONS = {(ready, serving, terminating): EndpointConditions(ready, serving, terminating)
               for ready in (None, True, False) for serving in (None, True, False)
               for terminating in (None, True, False)}


# Endpoints as the EndpointSlice controller writes them (a big cluster has a million) are read by
# compiled code: fastpath._compile.plain_ipv4_endpoints (a slice's at once; plain_ipv4_endpoint
# one by one), None for any other endpoint, which _endpoint() then reads (and reports) field by
# field. That module reads this one's classes and
# _CONDITIONS as it loads, so it is imported here, once they exist, and as a module: either of
# the two may be the one loading first.
import fastpath._compile as _compiled  # noqa: E402

# What the readers make for each object of a dump, made with the slots filled directly
# (fastpath._compile.Maker: every field given by name; a frozen dataclass's __init__ costs
# several times as much).
_make_service = _compiled.Maker(Service)
_make_service_port = _compiled.Maker(ServicePort)
_make_slice = _compiled.Maker(EndpointSlice)
_make_endpoint_port = _compiled.Maker(EndpointPort)
_make_endpoint = _compiled.Maker(Endpoint)


def _endpoint(o: _Object, raw: Mapping[str, Any], path: str, family: int | None) -> Endpoint:
    raw_addresses = o.list(raw.get("addresses"), f"{path}.addresses")
    if not raw_addresses:
        raise o.error(f"{path}.addresses", "must hold at least one address")
    if family is None:  # FQDN slices: names, not addresses
        addresses = tuple(o.string(a, f"{path}.addresses[{i}]", required=True) or "" for i, a in enumerate(raw_addresses))
    else:
        addresses = tuple(o.ip(a, f"{path}.addresses[{i}]", family) for i, a in enumerate(raw_addresses))
    conditions = o.mapping(raw.get("conditions"), f"{path}.conditions")
    hints = o.mapping(raw.get("hints"), f"{path}.hints")
    target_ref = None
    if raw.get("targetRef") is not None:
        ref = o.mapping(raw.get("targetRef"), f"{path}.targetRef")
        target_ref = ObjectReference(
            kind=o.string(ref.get("kind"), f"{path}.targetRef.kind"),
            namespace=o.string(ref.get("namespace"), f"{path}.targetRef.namespace"),
            name=o.string(ref.get("name"), f"{path}.targetRef.name"),
        )
    return Endpoint(
        addresses=addresses,
        conditions=EndpointConditions(
            ready=o.boolean(conditions.get("ready"), f"{path}.conditions.ready"),
            serving=o.boolean(conditions.get("serving"), f"{path}.conditions.serving"),
            terminating=o.boolean(conditions.get("terminating"), f"{path}.conditions.terminating"),
        ),
        node_name=o.string(raw.get("nodeName"), f"{path}.nodeName") or None,
        zone=o.string(raw.get("zone"), f"{path}.zone") or None,
        hints_for_zones=o.names(hints.get("forZones"), f"{path}.hints.forZones"),
        hints_for_nodes=o.names(hints.get("forNodes"), f"{path}.hints.forNodes"),
        target_ref=target_ref,
    )


def _parse_node(o: _Object, obj: Mapping[str, Any], namespace: str, name: str) -> Node:
    labels = o.mapping(o.mapping(obj.get("metadata"), "metadata").get("labels"), "metadata.labels")
    spec = o.mapping(obj.get("spec"), "spec")
    status = o.mapping(obj.get("status"), "status")
    addresses = []
    for index, raw in enumerate(o.list(status.get("addresses"), "status.addresses")):
        path = f"status.addresses[{index}]"
        entry = o.mapping(raw, path)
        kind = o.string(entry.get("type"), f"{path}.type", required=True) or ""
        address = o.string(entry.get("address"), f"{path}.address", required=True) or ""
        if kind in ("InternalIP", "ExternalIP"):
            address = o.ip(address, f"{path}.address")
        addresses.append(NodeAddress(type=kind, address=address))
    cidrs = o.list(spec.get("podCIDRs"), "spec.podCIDRs")
    cidr_paths = [f"spec.podCIDRs[{index}]" for index in range(len(cidrs))]
    if not cidrs and spec.get("podCIDR"):
        cidrs, cidr_paths = [spec.get("podCIDR")], ["spec.podCIDR"]
    return Node(
        name=name,
        addresses=tuple(addresses),
        zone=o.string(labels.get(LABEL_ZONE), f"metadata.labels[{_shown(LABEL_ZONE)}]") or None,
        pod_cidrs=tuple(o.cidr(value, where) for value, where in zip(cidrs, cidr_paths)),
    )


def _parse_pod(o: _Object, obj: Mapping[str, Any], namespace: str, name: str) -> Pod:
    metadata = o.mapping(obj.get("metadata"), "metadata")
    spec = o.mapping(obj.get("spec"), "spec")
    status = o.mapping(obj.get("status"), "status")
    raw_ips = [o.mapping(entry, f"status.podIPs[{index}]").get("ip")
               for index, entry in enumerate(o.list(status.get("podIPs"), "status.podIPs"))]
    ip_paths = [f"status.podIPs[{index}].ip" for index in range(len(raw_ips))]
    if not raw_ips and status.get("podIP"):
        raw_ips, ip_paths = [status.get("podIP")], ["status.podIP"]
    ready = False
    for index, raw in enumerate(o.list(status.get("conditions"), "status.conditions")):
        condition = o.mapping(raw, f"status.conditions[{index}]")
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
    ports = []
    containers = [(f"spec.containers[{index}]", raw)
                  for index, raw in enumerate(o.list(spec.get("containers"), "spec.containers"))]
    for index, raw in enumerate(o.list(spec.get("initContainers"), "spec.initContainers")):
        # Sidecars (init containers that keep running) serve named ports too; other init
        # containers have exited before the pod is ready.
        if isinstance(raw, Mapping) and raw.get("restartPolicy") == "Always":
            containers.append((f"spec.initContainers[{index}]", raw))
    for container_path, raw in containers:
        container = o.mapping(raw, container_path)
        for p_index, raw_port in enumerate(o.list(container.get("ports"), f"{container_path}.ports")):
            path = f"{container_path}.ports[{p_index}]"
            entry = o.mapping(raw_port, path)
            ports.append(ContainerPort(
                name=o.string(entry.get("name"), f"{path}.name") or "",
                protocol=o.protocol(entry.get("protocol"), f"{path}.protocol"),
                port=o.port(entry.get("containerPort"), f"{path}.containerPort"),
            ))
    return Pod(
        namespace=namespace,
        name=name,
        labels=o.labels(metadata.get("labels"), "metadata.labels"),
        node_name=o.string(spec.get("nodeName"), "spec.nodeName") or None,
        pod_ips=tuple(o.ip(value, where) for value, where in zip(raw_ips, ip_paths)),
        phase=o.string(status.get("phase"), "status.phase") or None,
        ready=ready,
        terminating=metadata.get("deletionTimestamp") is not None,
        host_network=bool(o.boolean(spec.get("hostNetwork"), "spec.hostNetwork")),
        ports=tuple(ports),
    )


def _parse_proxy_config(o: _Object, obj: Mapping[str, Any], namespace: str, name: str) -> KubeProxyConfiguration:
    raw_cidrs = o.string(obj.get("clusterCIDR"), "clusterCIDR") or ""
    cidrs = tuple(o.cidr(part, "clusterCIDR") for part in raw_cidrs.split(",") if part.strip())
    node_port_addresses = []
    raw_addresses = o.list(obj.get("nodePortAddresses"), "nodePortAddresses")
    for index, value in enumerate(raw_addresses):
        path = f"nodePortAddresses[{index}]"
        if value == NODE_PORT_ADDRESSES_PRIMARY:
            if len(raw_addresses) != 1:  # kube-proxy refuses to start with such a list
                raise o.error(path, f'"{NODE_PORT_ADDRESSES_PRIMARY}" cannot be combined with CIDRs, '
                                    f"got {_shown(raw_addresses)}")
            node_port_addresses.append(NODE_PORT_ADDRESSES_PRIMARY)
        else:
            node_port_addresses.append(o.cidr(value, path))
    bind_address = obj.get("bindAddress")
    detect_local = o.mapping(obj.get("detectLocal"), "detectLocal")
    conntrack = o.mapping(obj.get("conntrack"), "conntrack")
    ipvs = o.mapping(obj.get("ipvs"), "ipvs")

    def count(key: str) -> int | None:
        value = conntrack.get(key)
        return None if value is None else o.integer(value, f"conntrack.{key}", 0, 2**31 - 1)

    return KubeProxyConfiguration(
        cluster_cidrs=cidrs,
        node_port_addresses=tuple(node_port_addresses),
        masquerade_all=bool(o.boolean(obj.get("masqueradeAll"), "masqueradeAll")),
        mode=o.choice(obj.get("mode"), "mode", PROXY_MODES, ""),
        detect_local_mode=o.choice(obj.get("detectLocalMode"), "detectLocalMode", DETECT_LOCAL_MODES, ""),
        bridge_interface=o.string(detect_local.get("bridgeInterface"), "detectLocal.bridgeInterface") or None,
        interface_name_prefix=o.string(detect_local.get("interfaceNamePrefix"),
                                       "detectLocal.interfaceNamePrefix") or None,
        hostname_override=o.string(obj.get("hostnameOverride"), "hostnameOverride") or None,
        bind_address=None if bind_address in (None, "") else o.ip(bind_address, "bindAddress"),
        ipvs_scheduler=o.string(ipvs.get("scheduler"), "ipvs.scheduler") or "",
        conntrack=ConntrackConfig(
            max_per_core=count("maxPerCore"),
            min=count("min"),
            tcp_established_timeout=o.duration(conntrack.get("tcpEstablishedTimeout"),
                                               "conntrack.tcpEstablishedTimeout"),
            tcp_close_wait_timeout=o.duration(conntrack.get("tcpCloseWaitTimeout"), "conntrack.tcpCloseWaitTimeout"),
            tcp_be_liberal=bool(o.boolean(conntrack.get("tcpBeLiberal"), "conntrack.tcpBeLiberal")),
            udp_timeout=o.duration(conntrack.get("udpTimeout"), "conntrack.udpTimeout"),
            udp_stream_timeout=o.duration(conntrack.get("udpStreamTimeout"), "conntrack.udpStreamTimeout"),
        ),
    )


def _parse_service_cidr(o: _Object, obj: Mapping[str, Any], namespace: str, name: str) -> ServiceCIDR:
    spec = o.mapping(obj.get("spec"), "spec")
    raw = o.list(spec.get("cidrs"), "spec.cidrs")
    if not raw:
        raise o.error("spec.cidrs", "must hold at least one CIDR")
    cidrs = tuple(o.cidr(value, f"spec.cidrs[{index}]") for index, value in enumerate(raw))
    # The API server allows one CIDR per family (dual-stack: one of each).
    if len(cidrs) > 2 or len({ip_family(c.partition("/")[0]) for c in cidrs}) != len(cidrs):
        raise o.error("spec.cidrs", f"must hold at most one CIDR per family, got {_shown(raw)}")
    return ServiceCIDR(name=name, cidrs=cidrs)


_Model = Service | EndpointSlice | Node | Pod | KubeProxyConfiguration | ServiceCIDR
_Reader = Callable[[_Object, Mapping[str, Any], str, str], _Model]


@dataclass(frozen=True)
class _Kind:
    api_version: str
    reader: _Reader
    namespaced: bool
    named: bool = True  # KubeProxyConfiguration files carry no metadata.name
    older_versions: tuple[str, ...] = ()  # other versions of the same group read the same way


_KINDS: dict[str, _Kind] = {
    "Service": _Kind("v1", _parse_service, namespaced=True),
    "EndpointSlice": _Kind("discovery.k8s.io/v1", _parse_endpoint_slice, namespaced=True),
    "Node": _Kind("v1", _parse_node, namespaced=False),
    "Pod": _Kind("v1", _parse_pod, namespaced=True),
    "KubeProxyConfiguration": _Kind("kubeproxy.config.k8s.io/v1alpha1", _parse_proxy_config,
                                    namespaced=False, named=False),
    # v1 since Kubernetes 1.33; v1beta1 (1.31-1.32) and v1alpha1 (1.27-1.30) have the same spec.
    "ServiceCIDR": _Kind("networking.k8s.io/v1", _parse_service_cidr, namespaced=False,
                         older_versions=("networking.k8s.io/v1beta1", "networking.k8s.io/v1alpha1")),
}


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0] if "/" in api_version else ""


# --------------------------------------------------------------------------------------------
# Collecting objects from decoded documents


class _Collector:
    def __init__(self) -> None:
        self.objects: dict[str, list[Any]] = {kind: [] for kind in _KINDS}
        self.first_seen: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> source
        self.skipped: Counter[str] = Counter()
        # Services and IPv4 slices as most are written, with plain metadata: checked, read and
        # recorded by compiled code, as add() below would (False: add() reads it).
        self._collect_plain = _compiled.PlainCollector(self.first_seen, self.objects, _KINDS["Service"].api_version,
                                                       _KINDS["EndpointSlice"].api_version).collect

    def add(self, obj: Any, source: str, where: str) -> None:
        """One decoded document or array element: an object, a List of objects, or nothing."""
        if self._collect_plain(obj, source):
            return
        if obj is None:  # an empty YAML document ("---" at the end of a file)
            return
        if type(obj) is not dict and not isinstance(obj, Mapping):
            raise ClusterError(f"expected a Kubernetes object (a mapping), got {_shown(obj)}", source=source, obj=where)
        kind, api_version = _required_string(obj, "kind", source, where), _required_string(obj, "apiVersion", source, where)
        if _is_list(obj, kind):
            self._add_list(obj, kind, api_version, source, where)
            return
        spec = _KINDS.get(kind)
        if spec is None:
            self.skipped[kind] += 1
            return
        if _group(api_version) != _group(spec.api_version):
            # Same kind name in another API group (Knative's Service, ...): not ours.
            self.skipped[f"{kind} ({api_version})"] += 1
            return
        self._add_object(obj, kind, api_version, spec, source)

    def _add_list(self, obj: Mapping[str, Any], kind: str, api_version: str, source: str, where: str) -> None:
        items = obj.get("items")
        if items is None:
            return
        if not isinstance(items, list):
            raise ClusterError(f"must be a list, got {_shown(items)}", source=source, obj=where, path="items")
        # Typed lists from the raw API (ServiceList) leave kind and apiVersion out of their items.
        item_kind = kind[: -len("List")] if kind != "List" else None
        for index, item in enumerate(items):
            if item_kind and isinstance(item, Mapping) and "kind" not in item:
                item = {"kind": item_kind, "apiVersion": api_version, **item}
            self.add(item, source, f"{where} items[{index}]")

    def _add_object(self, obj: Mapping[str, Any], kind: str, api_version: str, spec: _Kind, source: str) -> None:
        raw_metadata = obj.get("metadata")
        metadata = raw_metadata if type(raw_metadata) is dict or isinstance(raw_metadata, Mapping) else {}
        name = metadata.get("name")
        # Hand-written objects often leave the namespace out; kubectl would apply them to "default".
        namespace = (metadata.get("namespace") or DEFAULT_NAMESPACE) if spec.namespaced else ""
        if not spec.named and not name:
            label = kind
        else:
            label = _object_label(kind, namespace if spec.namespaced else None, name)
        o = _Object(source, label)
        if api_version != spec.api_version and api_version not in spec.older_versions:
            wanted = " or ".join((spec.api_version, *spec.older_versions))
            raise o.error("apiVersion", f"must be {wanted}, got {_shown(api_version)}")
        o.mapping(raw_metadata, "metadata")
        o.string(name, "metadata.name", required=spec.named)
        o.string(namespace, "metadata.namespace")
        # One KubeProxyConfiguration describes the node: a second one, named or not, is a conflict.
        key = (kind, str(namespace), str(name) if spec.named else "")
        if key in self.first_seen:
            first = self.first_seen[key]
            raise o.error("", f"duplicate object (first read from {first})" if first != source
                          else "duplicate object (appears twice in this file)")
        self.first_seen[key] = source
        self.objects[kind].append(spec.reader(o, obj, namespace, name or ""))

    def state(self, sources: tuple[str, ...]) -> ClusterState:
        configs = self.objects["KubeProxyConfiguration"]
        return ClusterState(
            services=tuple(self.objects["Service"]),
            endpoint_slices=tuple(self.objects["EndpointSlice"]),
            nodes=tuple(self.objects["Node"]),
            pods=tuple(self.objects["Pod"]),
            proxy_config=configs[0] if configs else None,
            service_cidrs=tuple(self.objects["ServiceCIDR"]),
            skipped=self.skipped,
            sources=sources,
        )


def parse_endpoint_slice(obj: Any, cache: dict[Hashable, Any] | None = None) -> EndpointSlice:
    """One EndpointSlice as the API or `kubectl get -o json` gives it (a decoded dict with kind
    and apiVersion), checked exactly as load_cluster checks one. Raises ClusterError (one line).

    A watch sends the whole slice again when one endpoint changes: `cache` (a dict kept for one
    slice from version to version, first empty) holds what earlier versions' ports and labels
    and endpoints parsed to, by the fingerprint of the raw values read (_shell_fingerprint,
    _endpoint_fingerprint), so what did not change is not checked again. An endpoint whose raw
    value differs from one read before only in its conditions takes that one's other fields
    (see _sans_conditions) and reads just its conditions. The cache keeps the entries of the
    latest version and, up to a few times as many, of earlier ones (a readiness that flaps
    finds both of its versions).
    """
    kind = obj.get("kind") if type(obj) is dict or isinstance(obj, Mapping) else None
    if kind != "EndpointSlice":
        raise ClusterError(f"expected an EndpointSlice (discovery.k8s.io/v1), got {_shown(kind if kind else obj)}")
    # The slice without its endpoints (they follow), unless an earlier version read the same.
    shell_key = _shell_fingerprint(obj) if cache is not None else None
    shell = cache.get(shell_key) if shell_key is not None and cache else None
    known_shell = shell is not None
    if shell is None:
        collector = _Collector()
        collector.add({**obj, "endpoints": None}, "", "EndpointSlice")
        (shell,) = collector.objects["EndpointSlice"] or (None,)
        if shell is None:  # another API group's kind of that name
            raise ClusterError(f"expected apiVersion discovery.k8s.io/v1, got {_shown(obj.get('apiVersion'))}")
    family = SLICE_FAMILIES.get(shell.address_type)
    raws = obj.get("endpoints")
    if type(raws) is not list:
        raws = _slice_object(shell).list(raws, "endpoints")
    if cache is None:
        endpoints = _read_endpoints(_slice_object(shell), raws, family)
    else:
        endpoints = _cached_endpoints(shell, raws, family, cache)
        if shell_key is not None and not known_shell:  # (one found is of the family: still cached)
            cache[shell_key] = shell
        if len(cache) > 3 * len(endpoints) + 8:
            _trim(cache, shell, endpoints)
    return _new_slice(shell, tuple(endpoints))


def _new_slice(shell: EndpointSlice, endpoints: tuple[Endpoint, ...]) -> EndpointSlice:
    """EndpointSlice(shell's fields, endpoints)."""
    return _make_slice(namespace=shell.namespace, name=shell.name, service_name=shell.service_name,
                       address_type=shell.address_type, ports=shell.ports, endpoints=endpoints)


def _slice_object(shell: EndpointSlice) -> _Object:
    return _Object("", _object_label("EndpointSlice", shell.namespace, shell.name))


def _read_endpoints(o: _Object, raws: list[Any], family: int | None) -> list[Endpoint]:
    """A slice's endpoints, in order (the first bad one raises): the plain ones of an IPv4 slice
    read by the compiled reader in one call, the others field by field."""
    if family != 4:
        return [_read_endpoint(o, raw, index, family) for index, raw in enumerate(raws)]
    endpoints, missing = _compiled.plain_ipv4_endpoints(raws)
    if missing:
        for index, endpoint in enumerate(endpoints):
            if endpoint is None:
                endpoints[index] = _endpoint(o, o.mapping(raws[index], f"endpoints[{index}]"), f"endpoints[{index}]", 4)
    return endpoints


def _read_endpoint(o: _Object, raw: Any, index: int, family: int | None) -> Endpoint:
    endpoint = _compiled.plain_ipv4_endpoint(raw) if family == 4 else None
    if endpoint is None:
        endpoint = _endpoint(o, o.mapping(raw, f"endpoints[{index}]"), f"endpoints[{index}]", family)
    return endpoint


def _cached_endpoints(shell: EndpointSlice, raws: list[Any], family: int | None,
                      cache: dict[Hashable, Any]) -> list[Endpoint]:
    """parse_endpoint_slice's endpoints with a cache: every raw endpoint fingerprinted (one
    marshal call each, at C speed), those seen before taken from the cache, the others read
    (in order: the first bad one raises) and remembered. The cache holds one address family's
    endpoints (another family reads the same raw values otherwise): a slice whose addressType
    changed starts afresh."""
    known_family = cache.get(_FAMILY_KEY, _FAMILY_KEY)  # (the key itself: no family read yet)
    updating = known_family == family  # (the first version's endpoints get no sans-conditions entries)
    if not updating:
        if known_family != _FAMILY_KEY:
            cache.clear()
        cache[_FAMILY_KEY] = family
    try:
        keys: list[bytes | None] = list(map(marshal.dumps, raws, repeat(0)))
    except ValueError:  # some endpoint marshal cannot write: fingerprint them one by one
        keys = [_endpoint_fingerprint(raw) for raw in raws]
    if all(map(cache.__contains__, keys)):  # (the usual case: at most conditions changed, and
        return list(map(cache.__getitem__, keys))  # to a state seen not long ago)
    endpoints = list(map(cache.get, keys))
    o = None  # (made for the first endpoint read: its errors name the slice)
    for index in [index for index, endpoint in enumerate(endpoints) if endpoint is None]:
        raw, key = raws[index], keys[index]
        endpoint = cache.get(key) if key is not None else None  # (the same raw earlier in this version)
        if endpoint is not None:
            endpoints[index] = endpoint
            continue
        sans = _sans_conditions(raw) if updating and key is not None else None
        base = cache.get(sans) if sans is not None else None
        if base is not None:
            endpoint = _with_conditions(base, raw.get("conditions"))
        if endpoint is None:
            if o is None:
                o = _slice_object(shell)
            endpoint = _read_endpoint(o, raw, index, family)
        if key is not None:
            cache[key] = endpoint
            if sans is not None:
                cache[sans] = endpoint
        endpoints[index] = endpoint
    return endpoints


# The cache entry that holds the address family its endpoints were read for (the other keys:
# bytes for endpoints, tuples for the rest).
_FAMILY_KEY = "address family"


def _sans_conditions(raw: Any) -> Hashable | None:
    """The fingerprint of a raw endpoint without its conditions (their value read as null): two
    endpoints with the same one parse to Endpoints that differ at most in their conditions,
    which _endpoint reads from nothing else. None unless `raw` is a dict marshal can write."""
    if type(raw) is not dict:
        return None
    try:
        return "sans conditions", marshal.dumps({**raw, "conditions": None}, 0)
    except ValueError:
        return None


def _plain_conditions(raw: Any) -> tuple[bool | None, bool | None, bool | None] | None:
    """(ready, serving, terminating) of an endpoint's raw "conditions" value when it is absent
    or a plain dict of true, false or null; else None (the full reader then says what is wrong)."""
    if raw is None:
        return None, None, None
    if type(raw) is not dict:
        return None
    key = (raw.get("ready"), raw.get("serving"), raw.get("terminating"))
    for value in key:
        if value is not None and value is not True and value is not False:  # (1 == True: look first)
            return None
    return key


def _with_conditions(base: Endpoint, raw: Any) -> Endpoint | None:
    """`base` with the conditions read from `raw` (an endpoint's raw "conditions" value), for an
    endpoint that differs from base's only there; None unless they are a plain dict of true,
    false or null (_endpoint then reads the whole endpoint, and reports what is wrong)."""
    key = _plain_conditions(raw)
    if key is None:
        return None
    return _make_endpoint(addresses=base.addresses, conditions=_CONDITIONS[key], node_name=base.node_name,
                          zone=base.zone, hints_for_zones=base.hints_for_zones, hints_for_nodes=base.hints_for_nodes,
                          target_ref=base.target_ref)


def _trim(cache: dict[Hashable, Any], shell: EndpointSlice, endpoints: list[Endpoint]) -> None:
    """Keep only the entries of the version just read (its shell and endpoints, each under its
    fingerprint and, if it has one, its sans-conditions fingerprint)."""
    current = {id(shell), *map(id, endpoints)}
    kept = {key: value for key, value in cache.items() if id(value) in current}
    kept[_FAMILY_KEY] = cache[_FAMILY_KEY]
    cache.clear()
    cache.update(kept)


def _shell_fingerprint(obj: Mapping[str, Any]) -> Hashable | None:
    """Like _endpoint_fingerprint, for everything but the endpoints that reading an EndpointSlice
    looks at (not the resourceVersion or annotations, which change with every version)."""
    metadata = obj.get("metadata")
    if type(metadata) is not dict:
        return None
    try:
        return "slice", marshal.dumps((obj.get("kind"), obj.get("apiVersion"), metadata.get("name"),
                                       metadata.get("namespace"), metadata.get("labels"),
                                       obj.get("addressType"), obj.get("ports")), 0)
    except ValueError:
        return None


def _endpoint_fingerprint(raw: Any) -> bytes | None:
    """The raw endpoint serialised by marshal (format 0: no references, interned strings like
    any other), which keeps every type apart (`1` is not `true`, a tuple no list): equal
    fingerprints are equal plain JSON values, which parse to equal Endpoints (in slices of one
    address family). None for a value marshal cannot write."""
    try:
        return marshal.dumps(raw, 0)
    except ValueError:
        return None


def _required_string(obj: Mapping[str, Any], key: str, source: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        message = "required" if value in (None, "") else f"must be a string, got {_shown(value)}"
        raise ClusterError(message, source=source, obj=where, path=key)
    return value


def _is_list(obj: Mapping[str, Any], kind: str) -> bool:
    # "List" from kubectl; "ServiceList" etc. from the raw API. A kind that merely ends in "List"
    # but has a spec is an ordinary object.
    return kind == "List" or (kind.endswith("List") and isinstance(obj.get("items"), list) and "spec" not in obj)


def _object_label(kind: str, namespace: str | None, name: Any) -> str:
    shown = name if isinstance(name, str) and name else "(no name)"
    return f"{kind} {namespace}/{shown}" if namespace is not None else f"{kind} {shown}"


# --------------------------------------------------------------------------------------------
# Files and folders


def load_cluster(paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> ClusterState:
    """Read cluster state from files and folders (folders recursively, *.yaml/*.yml/*.json, sorted).

    A file given twice (directly or through a folder) is read once. Raises ClusterError.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    collector = _Collector()
    sources: list[str] = []
    read: set[str] = set()
    with collection_paused():
        for path in paths:
            for file in cluster_files(Path(path)):
                identity = os.path.realpath(file)
                if identity in read:
                    continue
                read.add(identity)
                source = str(file)
                sources.append(source)
                for number, document in enumerate(_decode_file(file, source), start=1):
                    collector.add(document, source, f"document {number}")
    return collector.state(tuple(sources))


def cluster_files(path: Path) -> list[Path]:
    """The files load_cluster reads for one path, in its order (ClusterError when none)."""
    if path.is_dir():
        found: list[Path] = []
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # .git and editor droppings
            found.extend(Path(root, f) for f in files
                         if f.endswith(CLUSTER_FILE_SUFFIXES) and not f.startswith("."))
        if not found:
            raise ClusterError("no *.yaml, *.yml or *.json files in this folder", source=str(path))
        return sorted(found, key=lambda file: file.relative_to(path).parts)
    if path.is_file():
        return [path]
    if path.exists():
        raise ClusterError("not a regular file or folder", source=str(path))
    raise ClusterError("no such file or folder", source=str(path))


_LOOKS_LIKE_JSON = re.compile(r"\s*[\[{]")


def _decode_file(file: Path, source: str) -> Iterator[Any]:
    """The documents of one file: JSON by suffix or by content, YAML otherwise."""
    try:
        data = file.read_bytes()
    except OSError as error:
        raise ClusterError(f"cannot read: {error.strerror or error}", source=source) from None
    # PowerShell's `>` writes UTF-16 with a byte order mark; everything else is UTF-8.
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        name = "UTF-16" if encoding == "utf-16" else "UTF-8"
        raise ClusterError(f"not {name} text (byte {error.start})", source=source) from None
    if file.suffix == ".json" or _LOOKS_LIKE_JSON.match(text):
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as error:
            if file.suffix == ".json":
                raise ClusterError(f"invalid JSON: {error.msg} (column {error.colno})",
                                   source=source, line=error.lineno) from None
            # YAML flow style also starts with { or [: let the YAML parser judge.
        else:
            # A JSON array is a list of objects, as `jq -s` or hand-written files give.
            yield from (decoded if isinstance(decoded, list) else [decoded])
            return
    try:
        yield from load_yaml(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "syntax error"
        raise ClusterError(f"invalid YAML: {problem}" + (f" (column {mark.column + 1})" if mark else ""),
                           source=source, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as error:
        raise ClusterError(f"invalid YAML: {error}", source=source) from None

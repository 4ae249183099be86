"""fastpath.compiler: which frontends, services and backends a cluster state becomes."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastpath.compiler import CompileResult, compile_maps
from fastpath.maps import (
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    Frontend,
    NodeView,
    address_from_text,
    format_address,
    format_endpoint,
)
from fastpath.model import ClusterError, ClusterState, load_cluster

DATA = Path(__file__).parent / "data" / "cluster"


# Builders for kubectl-shaped objects -------------------------------------------------------


def svc(name: str, ports: list[dict[str, Any]], cluster_ip: str | None = "10.96.0.10",
        namespace: str = "default", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ports": ports, "selector": {"app": name}, "type": "ClusterIP"}
    if cluster_ip is not None:
        body["clusterIP"] = cluster_ip
        body["clusterIPs"] = [cluster_ip]
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"}, "spec": body}


def port(number: int, name: str | None = None, protocol: str = "TCP") -> dict[str, Any]:
    entry: dict[str, Any] = {"port": number, "protocol": protocol}
    if name is not None:
        entry["name"] = name
    return entry


def ep(ip: str, ready: bool | None = True, serving: bool | None = None, terminating: bool | None = None,
       node: str | None = None, pod: str | None = None, zones: list[str] | None = None,
       nodes: list[str] | None = None, extra_addresses: tuple[str, ...] = ()) -> dict[str, Any]:
    conditions = {key: value for key, value in
                  (("ready", ready), ("serving", serving), ("terminating", terminating)) if value is not None}
    entry: dict[str, Any] = {"addresses": [ip, *extra_addresses], "conditions": conditions}
    if node:
        entry["nodeName"] = node
    if pod:
        entry["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "default", "uid": "0"}
    hints: dict[str, Any] = {}
    if zones is not None:
        hints["forZones"] = [{"name": zone} for zone in zones]
    if nodes is not None:
        hints["forNodes"] = [{"name": name} for name in nodes]
    if hints:
        entry["hints"] = hints
    return entry


def eps(name: str, service: str | None, ports: list[dict[str, Any]], endpoints: list[dict[str, Any]],
        namespace: str = "default", address_type: str = "IPv4") -> dict[str, Any]:
    labels = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    if service is not None:
        labels["kubernetes.io/service-name"] = service
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": address_type,
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "generation": 1},
            "ports": ports, "endpoints": endpoints}


def node(name: str, zone: str | None = None, addresses: list[tuple[str, str]] | None = None,
         pod_cidrs: list[str] | None = None) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    listed = [("InternalIP", "192.168.0.1")] if addresses is None else addresses
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
        "status": {"addresses": [{"type": kind, "address": address} for kind, address in listed]
                   + [{"type": "Hostname", "address": name}]}}
    if pod_cidrs is not None:
        obj["spec"] = {"podCIDR": pod_cidrs[0] if pod_cidrs else None, "podCIDRs": pod_cidrs}
    return obj


def proxy_config(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", **fields}


def pod(name: str, ip: str | list[str] | None, labels: dict[str, str] | None = None, ready: bool = True,
        node_name: str | None = None, ports: list[dict[str, Any]] | None = None, phase: str = "Running",
        deleting: bool = False, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    ips = [] if ip is None else [ip] if isinstance(ip, str) else ip
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {"app": "web"}}
    if deleting:
        metadata["deletionTimestamp"] = "2024-06-10T21:20:00Z"
    body: dict[str, Any] = {"containers": [{"name": "main", "image": "registry.example/web:1",
                                            "ports": ports or []}], **spec}
    if node_name:
        body["nodeName"] = node_name
    status: dict[str, Any] = {"phase": phase, "conditions": [
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": "True" if ready else "False"}]}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": address} for address in ips]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": body, "status": status}


def container_port(number: int, name: str, protocol: str = "TCP") -> dict[str, Any]:
    return {"containerPort": number, "name": name, "protocol": protocol}


def compile_objects(objects: list[dict[str, Any]], node_name: str | None = None) -> CompileResult:
    result = compile_maps(ClusterState.from_objects(objects), node_name)
    result.maps.check()  # made with Maps.unchecked: it must pass what Maps() checks
    return result


def ip(text: str) -> int:
    """A map address: IPv4 as its value, IPv6 tagged with maps.IPV6."""
    return address_from_text(text)


def addresses(result: CompileResult, ids: tuple[int, ...]) -> list[str]:
    table = {b.id: b for b in result.maps.backends}
    return [format_endpoint(table[i].ip, table[i].port) for i in ids]


def service_named(result: CompileResult, service_name: str, family: int = 4) -> Any:
    return next(s for s in result.maps.services if s.name == service_name and s.family == family)


def backend_addresses(result: CompileResult, service_name: str, family: int = 4) -> list[str]:
    """The service's cluster set as "ip:port" ("[ip]:port" for IPv6), in the order the maps hold it."""
    return addresses(result, service_named(result, service_name, family).backends)


def local_addresses(result: CompileResult, service_name: str, family: int = 4) -> list[str]:
    return addresses(result, service_named(result, service_name, family).local_backends)


def serving_addresses(result: CompileResult, service_name: str, family: int = 4) -> list[str]:
    return addresses(result, service_named(result, service_name, family).serving)


def frontends_of(result: CompileResult, service_name: str,
                 family: int = 4) -> list[tuple[str, str, bool, tuple[str, ...]]]:
    """The service's frontends as (kind, "ip:port/proto", local_policy, source ranges as text)."""
    service = service_named(result, service_name, family)
    names = {PROTO_TCP: "TCP", PROTO_UDP: "UDP", PROTO_SCTP: "SCTP"}
    return [(f.kind, f"{format_endpoint(f.ip, f.port)}/{names[f.proto]}", f.local_policy,
             tuple(f"{format_address(n)}/{length}" for n, length in f.source_ranges))
            for f in result.maps.frontends if f.service == service.id]


def service_notes(result: CompileResult, prefix: str = "default/") -> tuple[str, ...]:
    """The notes about services (node-level notes left out)."""
    return tuple(note for note in result.notes if note.startswith(prefix))


# The fixture cluster end to end --------------------------------------------------------------


def test_fixture_cluster_compiles_to_the_expected_maps() -> None:
    result = compile_maps(load_cluster([DATA]), "node-a")
    maps = result.maps
    assert [s.name for s in maps.services] == [
        "kube-system/kube-dns:dns", "kube-system/kube-dns:dns-tcp", "kube-system/kube-dns:metrics",
        "shop/cart", "shop/checkout:http", "shop/frontend:http", "shop/frontend:metrics", "shop/legacy:web",
        "shop/storefront:https", "shop/voip:sip", "shop/voip:sip", "shop/voip:sip-sctp", "shop/voip:sip-sctp",
    ]
    # voip is dual-stack: each of its service ports is an IPv4 and an IPv6 map service
    assert [s.family for s in maps.services] == [4] * 10 + [6, 4, 6]
    assert [s.id for s in maps.services] == list(range(1, 14))
    assert [b.name for b in maps.backends] == [
        "10.244.1.2:53 (kube-system/coredns-7db6d8ff4d-vx5lm)",
        "10.244.1.2:9153 (kube-system/coredns-7db6d8ff4d-vx5lm)",
        "10.244.1.10:8080 (shop/frontend-6d8f9c7b5-k2x4q)",
        "10.244.1.10:9090 (shop/frontend-6d8f9c7b5-k2x4q)",
        "10.244.1.20:8080 (shop/cart-84c5d9f7b-q4j8s)",
        "10.244.1.40:8080 (shop/checkout-5b7c9d1e3-f6g8h)",
        "10.244.1.50:8443 (shop/storefront-7f8a9b0c1-r5s6t)",
        "10.244.1.60:5060 (shop/voip-0)",
        "10.244.2.2:53 (kube-system/coredns-7db6d8ff4d-9wq7c)",
        "10.244.2.2:9153 (kube-system/coredns-7db6d8ff4d-9wq7c)",
        "10.244.2.10:8080 (shop/frontend-6d8f9c7b5-w8n3z)",
        "10.244.2.10:9090 (shop/frontend-6d8f9c7b5-w8n3z)",
        "[fd00:10:244:1::60]:5060 (shop/voip-0)",  # from the IPv6 slice: after every IPv4 backend
    ]
    assert [s.backends for s in maps.services] == [
        (1, 9), (1, 9), (2, 10), (5,), (6,), (3, 11), (4, 12), (), (7,),
        (8,), (13,), (8,), (13,)]  # voip: one backend per family, two ports
    assert [s.local_backends for s in maps.services] == [
        (1,), (1,), (2,), (5,), (6,), (3,), (4,), (), (7,), (8,), (13,), (8,), (13,)]
    assert [s.serving for s in maps.services] == [s.backends for s in maps.services]
    assert [s.affinity_timeout_s for s in maps.services] == [0] * 8 + [600, 0, 0, 0, 0]

    ranges = ((ip("10.0.0.0"), 8), (ip("198.51.100.0"), 24))  # whitespace trimmed, host bits masked
    assert maps.frontends == [
        Frontend(ip("10.96.0.10"), 53, PROTO_UDP, 1), Frontend(ip("10.96.0.10"), 53, PROTO_TCP, 2),
        Frontend(ip("10.96.0.10"), 9153, PROTO_TCP, 3), Frontend(ip("10.96.10.20"), 80, PROTO_TCP, 4),
        Frontend(ip("10.96.10.40"), 80, PROTO_TCP, 5),
        Frontend(ip("192.168.1.11"), 30080, PROTO_TCP, 5, "NodePort"),
        Frontend(ip("10.96.10.10"), 80, PROTO_TCP, 6),
        Frontend(ip("10.96.10.10"), 9090, PROTO_TCP, 7), Frontend(ip("10.96.10.70"), 80, PROTO_TCP, 8),
        # storefront: LoadBalancer, externalTrafficPolicy Local; the Proxy-mode hostname ingress gives nothing
        Frontend(ip("10.96.10.50"), 443, PROTO_TCP, 9),
        Frontend(ip("192.168.1.11"), 31443, PROTO_TCP, 9, "NodePort", local_policy=True),
        Frontend(ip("203.0.113.10"), 443, PROTO_TCP, 9, "LoadBalancer", local_policy=True, source_ranges=ranges),
        Frontend(ip("198.51.100.7"), 443, PROTO_TCP, 9, "ExternalIP", local_policy=True),
        Frontend(ip("10.96.10.60"), 5060, PROTO_TCP, 10),
        Frontend(ip("fd00:10:96::60"), 5060, PROTO_TCP, 11),  # the IPv6 ClusterIP of clusterIPs
        Frontend(ip("10.96.10.60"), 5060, PROTO_SCTP, 12),  # SCTP on the same number: its own service port
        Frontend(ip("fd00:10:96::60"), 5060, PROTO_SCTP, 13),
    ]
    assert maps.node == NodeView(
        primary_ip=ip("192.168.1.11"), local_ips=(ip("192.168.1.11"),),
        pod_cidrs=((ip("10.244.0.0"), 16), (ip("fd00:10:244::"), 56)),  # clusterCIDR is dual-stack
        masquerade_all=False,
        service_ips=tuple(ip(a) for a in ("10.96.0.10", "10.96.10.10", "10.96.10.20", "10.96.10.40",
                                          "10.96.10.50", "10.96.10.60", "10.96.10.70", "fd00:10:96::60")),
        primary_ip6=0)  # node-a has no IPv6 address
    assert result.timeouts_s == {"established": 86400, "closing": 3600, "other": 30}
    assert result.node == "node-a"
    assert result.skipped == Counter({"headless service": 1, "ExternalName service": 1})
    assert "Node node-a has no IPv6 address: no IPv6 NodePort frontends and no IPv6 masquerading" in result.notes
    assert "shop/legacy:web: no usable endpoint; traffic to it is rejected" in result.notes
    assert "shop/checkout:http: no ready endpoint; using 1 serving terminating endpoint(s)" in result.notes
    assert result.warnings == ()


def test_fixture_cluster_from_the_other_node() -> None:
    result = compile_maps(load_cluster([DATA]), "node-b")
    maps = result.maps
    # node-b's ExternalIP is a node address too, but outside nodePortAddresses 192.168.0.0/16
    assert maps.node.local_ips == (ip("192.168.1.12"), ip("203.0.113.12"))
    assert {(f.ip, f.port) for f in maps.frontends if f.kind == "NodePort"} == {
        (ip("192.168.1.12"), 30080), (ip("192.168.1.12"), 31443)}
    storefront = service_named(result, "shop/storefront:https")
    assert (storefront.backends, storefront.local_backends) == ((7,), ())
    assert ("shop/storefront:https: externalTrafficPolicy Local and no local endpoint (none on node node-b); "
            "external clients are dropped") in result.notes
    with pytest.raises(ClusterError, match=r"^several Nodes \(node-a, node-b\): choose one with --node$"):
        compile_maps(load_cluster([DATA]))


# Port matching ------------------------------------------------------------------------------


def test_slice_port_must_match_name_and_protocol() -> None:
    result = compile_objects([
        svc("dns", [port(53, "dns", "UDP"), port(53, "dns-tcp", "TCP"), port(9153, "metrics")]),
        eps("dns-1", "dns", [port(5353, "dns", "UDP"), port(5354, "dns-tcp", "TCP"), port(9000, "metrics", "UDP")],
            [ep("10.0.0.1")]),
    ])
    assert backend_addresses(result, "default/dns:dns") == ["10.0.0.1:5353"]
    assert backend_addresses(result, "default/dns:dns-tcp") == ["10.0.0.1:5354"]
    assert backend_addresses(result, "default/dns:metrics") == []  # the slice has metrics over UDP only


def test_unnamed_service_port_matches_only_the_unnamed_slice_port() -> None:
    result = compile_objects([
        svc("a", [port(80)], cluster_ip="10.96.0.1"),
        eps("a-1", "a", [port(8080, "http")], [ep("10.0.0.1")]),
        eps("a-2", "a", [port(8081, "")], [ep("10.0.0.2")]),
        svc("b", [port(80, "http")], cluster_ip="10.96.0.2"),
        eps("b-1", "b", [port(9090)], [ep("10.0.0.3")]),
    ])
    assert backend_addresses(result, "default/a") == ["10.0.0.2:8081"]
    assert backend_addresses(result, "default/b:http") == []


def test_slice_port_without_number_and_slices_elsewhere_are_ignored() -> None:
    result = compile_objects([
        svc("web", [port(80, "http")]),
        eps("web-1", "web", [{"name": "http", "protocol": "TCP"}], [ep("10.0.0.1")]),
        eps("web-2", "web", [port(8080, "http")], [ep("10.0.0.2")], namespace="other"),
        eps("web-3", None, [port(8080, "http")], [ep("10.0.0.3")]),
        eps("web-4", "web", [port(8080, "http")], [ep("10.0.0.4")]),
    ])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.4:8080"]
    assert result.skipped["EndpointSlice without a service-name label"] == 1


def test_ports_differing_between_slices_give_distinct_backends() -> None:
    # During a rollout that changes the container port, one pod IP can appear with two ports.
    result = compile_objects([
        svc("web", [port(80, "http")]),
        eps("web-old", "web", [port(8080, "http")], [ep("10.0.0.1")]),
        eps("web-new", "web", [port(9090, "http")], [ep("10.0.0.1"), ep("10.0.0.2")]),
    ])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.1:9090", "10.0.0.2:9090"]


# Readiness and fallback ------------------------------------------------------------------------


def test_ready_absent_or_true_is_usable() -> None:
    result = compile_objects([
        svc("web", [port(80, "http")]),
        eps("web-1", "web", [port(8080, "http")], [
            ep("10.0.0.1", ready=None), ep("10.0.0.2", ready=True), ep("10.0.0.3", ready=False),
            ep("10.0.0.4", ready=False, serving=True, terminating=True),
        ]),
    ])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8080"]


def test_fallback_to_serving_terminating_only_when_nothing_is_ready() -> None:
    result = compile_objects([
        svc("web", [port(80, "http")]),
        eps("web-1", "web", [port(8080, "http")], [
            ep("10.0.0.1", ready=False, serving=True, terminating=True),
            ep("10.0.0.2", ready=False, serving=None, terminating=True),  # serving absent counts as true
            ep("10.0.0.3", ready=False, serving=False, terminating=True),
            ep("10.0.0.4", ready=False, serving=True, terminating=False),  # serving but not terminating
        ]),
    ])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8080"]
    assert service_notes(result) == ("default/web:http: no ready endpoint; using 2 serving terminating endpoint(s)",)
    # Serving is every serving endpoint, terminating or not.
    assert serving_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.4:8080"]


def test_service_without_usable_endpoints_keeps_its_frontend() -> None:
    result = compile_objects([
        svc("web", [port(80, "http")]),
        eps("web-1", "web", [port(8080, "http")], [ep("10.0.0.1", ready=False, serving=False)]),
        svc("lonely", [port(80, "http")], cluster_ip="10.96.0.11"),
    ])
    assert [s.backends for s in result.maps.services] == [(), ()]
    assert len(result.maps.frontends) == 2  # packets to them are rejected, not passed
    assert result.maps.backends == []
    assert service_notes(result) == ("default/lonely:http: no usable endpoint; traffic to it is rejected",
                                     "default/web:http: no usable endpoint; traffic to it is rejected")


# Deduplication ----------------------------------------------------------------------------------


def test_only_the_first_address_counts_and_identical_endpoints_merge() -> None:
    result = compile_objects([
        svc("web", [port(80, "http")]),
        eps("web-1", "web", [port(8080, "http")], [ep("10.0.0.1", extra_addresses=("10.0.0.9",))]),
        eps("web-2", "web", [port(8080, "http")], [ep("10.0.0.1"), ep("10.0.0.2")]),
    ])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8080"]
    assert len(result.maps.backends) == 2


@pytest.mark.parametrize("terminating_slice", ["web-a", "web-b"])
def test_non_terminating_duplicate_wins(terminating_slice: str) -> None:
    stale = ep("10.0.0.1", ready=False, serving=False, terminating=True)
    live = ep("10.0.0.1", ready=True)
    other = "web-b" if terminating_slice == "web-a" else "web-a"
    result = compile_objects([
        svc("web", [port(80, "http")]),
        eps(terminating_slice, "web", [port(8080, "http")], [stale, ep("10.0.0.2")]),
        eps(other, "web", [port(8080, "http")], [live]),
    ])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8080"]


@pytest.mark.parametrize("order", [("web-a", "web-b"), ("web-b", "web-a")])
def test_duplicate_resolution_does_not_depend_on_slice_order(order: tuple[str, str]) -> None:
    result = compile_objects([
        svc("web", [port(80, "http")]),
        eps(order[0], "web", [port(8080, "http")], [ep("10.0.0.1", ready=False, serving=False, terminating=False)]),
        eps(order[1], "web", [port(8080, "http")], [ep("10.0.0.1", ready=True)]),
    ])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080"]


def test_backends_are_shared_between_services_and_named_after_the_pod() -> None:
    result = compile_objects([
        svc("web", [port(80, "http")], cluster_ip="10.96.0.1"),
        svc("web-canary", [port(80, "http")], cluster_ip="10.96.0.2"),
        eps("web-1", "web", [port(8080, "http")], [ep("10.0.0.1", pod="web-0"), ep("10.0.0.2")]),
        eps("web-canary-1", "web-canary", [port(8080, "http")], [ep("10.0.0.1", pod="web-0")]),
    ])
    assert [b.name for b in result.maps.backends] == ["10.0.0.1:8080 (default/web-0)", "10.0.0.2:8080 (default/web-1)"]
    assert [s.backends for s in result.maps.services] == [(1, 2), (1,)]


# Determinism and ordering ----------------------------------------------------------------------


def mixed_cluster() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for index in range(12):
        name = f"svc-{index:02d}"
        objects.append(svc(name, [port(80, "http"), port(53, "dns", "UDP")], cluster_ip=f"10.96.1.{index + 1}",
                           namespace=("a", "b")[index % 2]))
        objects.append(eps(f"{name}-x", name, [port(8080, "http"), port(5353, "dns", "UDP")],
                           [ep(f"10.244.{index % 3}.{n}", ready=n % 4 != 0) for n in range(1, 7)],
                           namespace=("a", "b")[index % 2]))
    return objects


def test_same_input_in_any_order_gives_identical_maps() -> None:
    objects = mixed_cluster()
    first = compile_objects(objects).maps
    assert compile_objects(objects).maps == first
    shuffled = list(objects)
    random.Random(7).shuffle(shuffled)
    for obj in shuffled:
        if obj["kind"] == "EndpointSlice":
            random.Random(3).shuffle(obj["endpoints"])
    assert compile_objects(shuffled).maps == first


def test_ids_follow_namespace_name_port_name_protocol_and_backends_ip_port() -> None:
    result = compile_objects([
        svc("zeta", [port(80, "web")], cluster_ip="10.96.0.1", namespace="a"),
        svc("alpha", [port(80, "web", "UDP"), port(80, "web"), port(81, "api")], cluster_ip="10.96.0.2",
            namespace="b"),
        svc("alpha", [port(80, "web")], cluster_ip="10.96.0.3", namespace="a"),
        eps("alpha-1", "alpha", [port(9, "web")], [ep("10.0.0.10"), ep("10.0.0.9"), ep("9.0.0.200")],
            namespace="a"),
    ])
    assert [s.name for s in result.maps.services] == [
        "a/alpha:web", "a/zeta:web", "b/alpha:api", "b/alpha:web", "b/alpha:web"]
    assert [result.maps.frontends[i].proto for i in (3, 4)] == [PROTO_TCP, PROTO_UDP]
    assert backend_addresses(result, "a/alpha:web") == ["9.0.0.200:9", "10.0.0.9:9", "10.0.0.10:9"]
    assert [b.id for b in result.maps.backends] == [1, 2, 3]


# What gets no frontend ------------------------------------------------------------------------


def test_headless_and_external_name_are_skipped_ipv6_services_are_not() -> None:
    result = compile_objects([
        svc("headless", [port(80, "http")], cluster_ip="None"),
        svc("ext", [port(80, "http")], cluster_ip=None, type="ExternalName", externalName="db.example.com"),
        svc("v6", [port(80, "http")], cluster_ip="fd00::10"),
        svc("dual", [port(80, "http")], cluster_ip="fd00::11", clusterIPs=["fd00::11", "10.96.0.11"]),
        svc("sctp-headless", [port(9, "sig", "SCTP")], cluster_ip="None"),
        eps("headless-1", "headless", [port(80, "http")], [ep("10.0.0.1")]),
        eps("dual-1", "dual", [port(8080, "http")], [ep("fd00:244::1")], address_type="IPv6"),
        eps("dual-2", "dual", [port(8080, "http")], [ep("10.0.0.2")]),
        eps("fqdn-1", "dual", [port(8080, "http")], [ep("db.example.com")], address_type="FQDN"),
    ])
    assert [(s.name, s.family) for s in result.maps.services] == [
        ("default/dual:http", 4), ("default/dual:http", 6), ("default/v6:http", 6)]
    # Each family's endpoints come from the slices of its addressType; IPv6 is listed first in
    # clusterIPs (the primary family), but the IPv4 half comes first in the maps.
    assert backend_addresses(result, "default/dual:http") == ["10.0.0.2:8080"]
    assert backend_addresses(result, "default/dual:http", 6) == ["[fd00:244::1]:8080"]
    assert backend_addresses(result, "default/v6:http", 6) == []
    assert frontends_of(result, "default/dual:http") == [("ClusterIP", "10.96.0.11:80/TCP", False, ())]
    assert frontends_of(result, "default/dual:http", 6) == [("ClusterIP", "[fd00::11]:80/TCP", False, ())]
    assert frontends_of(result, "default/v6:http", 6) == [("ClusterIP", "[fd00::10]:80/TCP", False, ())]
    assert result.skipped == Counter({"headless service": 2, "ExternalName service": 1, "FQDN EndpointSlice": 1})
    assert not any("SCTP" in note for note in result.notes)
    # notes name the IPv6 half of a service port as such
    assert service_notes(result) == ("default/v6:http (IPv6): no usable endpoint; traffic to it is rejected",)


def test_sctp_service_ports_get_frontends_like_tcp_and_udp() -> None:
    ports = [{"name": "sig", "port": 9, "protocol": "SCTP", "nodePort": 30009},
             {"name": "sig-tcp", "port": 9, "protocol": "TCP", "nodePort": 30009},
             {"name": "sig-udp", "port": 9, "protocol": "UDP", "nodePort": 30009}]
    service = svc("sig", ports, cluster_ip="10.96.0.5", type="LoadBalancer", externalIPs=["192.0.2.9"],
                  externalTrafficPolicy="Local")
    service["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
    result = compile_objects([
        node("n1", addresses=[("InternalIP", "192.168.0.1")]),
        service,
        eps("sig-1", "sig", [port(3868, "sig", "SCTP"), port(3869, "sig-tcp"), port(3870, "sig-udp", "UDP")],
            [ep("10.0.0.1", node="n1"), ep("10.0.0.2", node="n2")]),
    ], "n1")
    assert [s.name for s in result.maps.services] == ["default/sig:sig", "default/sig:sig-tcp", "default/sig:sig-udp"]
    # Each protocol's service port takes its endpoint port from the slice port of its name and protocol.
    assert backend_addresses(result, "default/sig:sig") == ["10.0.0.1:3868", "10.0.0.2:3868"]
    assert local_addresses(result, "default/sig:sig") == ["10.0.0.1:3868"]
    assert backend_addresses(result, "default/sig:sig-tcp") == ["10.0.0.1:3869", "10.0.0.2:3869"]
    assert backend_addresses(result, "default/sig:sig-udp") == ["10.0.0.1:3870", "10.0.0.2:3870"]
    for name, protocol in (("sig", "SCTP"), ("sig-tcp", "TCP"), ("sig-udp", "UDP")):
        assert frontends_of(result, f"default/sig:{name}") == [
            ("ClusterIP", f"10.96.0.5:9/{protocol}", False, ()),
            ("NodePort", f"192.168.0.1:30009/{protocol}", True, ()),
            ("LoadBalancer", f"203.0.113.10:9/{protocol}", True, ()),
            ("ExternalIP", f"192.0.2.9:9/{protocol}", True, ()),
        ]
    assert result.skipped == Counter() and result.warnings == ()
    assert result.maps.node.service_ips == (ip("10.96.0.5"),)


def test_frontend_conflict_keeps_the_first_and_warns() -> None:
    result = compile_objects([
        svc("b", [port(80, "http")], cluster_ip="10.96.0.1"),
        svc("a", [port(80, "http")], cluster_ip="10.96.0.1"),
    ])
    assert [(f.service, result.maps.services[f.service - 1].name) for f in result.maps.frontends] == [
        (1, "default/a:http")]
    assert result.warnings == (
        "default/b:http: 10.96.0.1:80/TCP (ClusterIP) is already the ClusterIP frontend of default/a:http; ignored",)


# Node view: traffic policy and topology --------------------------------------------------------


def local_service_objects() -> list[dict[str, Any]]:
    return [
        node("n1", "zone-a"), node("n2", "zone-b"),
        svc("web", [port(80, "http")], internalTrafficPolicy="Local"),
        eps("web-1", "web", [port(8080, "http")], [
            ep("10.0.0.1", node="n1"), ep("10.0.0.2", node="n2"),
            ep("10.0.0.3", node="n2", ready=False, serving=True, terminating=True)]),
    ]


def test_internal_traffic_policy_local_uses_local_endpoints() -> None:
    for name, local in (("n1", "10.0.0.1:8080"), ("n2", "10.0.0.2:8080")):
        result = compile_objects(local_service_objects(), name)
        assert local_addresses(result, "default/web:http") == [local]
        # The cluster set stays what it is: the core decides from local_policy which one to use.
        assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8080"]
        assert [(f.kind, f.local_policy) for f in result.maps.frontends] == [("ClusterIP", True)]


def test_internal_traffic_policy_local_falls_back_to_local_terminating() -> None:
    objects = local_service_objects()
    objects[3]["endpoints"][1]["conditions"] = {"ready": False, "serving": False}
    result = compile_objects(objects, "n2")
    assert local_addresses(result, "default/web:http") == ["10.0.0.3:8080"]
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080"]  # fallbacks are independent


def test_internal_traffic_policy_local_without_a_node_has_no_endpoint() -> None:
    objects = [o for o in local_service_objects() if o["kind"] != "Node"]
    result = compile_objects(objects)
    assert local_addresses(result, "default/web:http") == []
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8080"]
    assert result.notes == (
        "no Node in the input: no node addresses, so no NodePort frontends and no masquerading",
        "default/web:http: internalTrafficPolicy Local and no local endpoint (no node given)")


def hinted(zones: list[list[str] | None], nodes: list[list[str] | None] | None = None) -> list[dict[str, Any]]:
    node_hints = nodes or [None] * len(zones)
    endpoints = [ep(f"10.0.0.{i + 1}", zones=z, nodes=n) for i, (z, n) in enumerate(zip(zones, node_hints))]
    return [node("n1", "zone-a"), svc("web", [port(80, "http")]),
            eps("web-1", "web", [port(8080, "http")], endpoints + [ep("10.0.0.99", ready=False, zones=None)])]


def test_zone_hints_narrow_the_cluster_set() -> None:
    result = compile_objects(hinted([["zone-a"], ["zone-b"], ["zone-a", "zone-c"]]), "n1")
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.3:8080"]


@pytest.mark.parametrize("zones", [
    [["zone-a"], None],  # one ready endpoint without hints: no filtering
    [["zone-b"], ["zone-c"]],  # no endpoint hinted for this zone: no filtering
])
def test_zone_hints_ignored_unless_complete_and_matching(zones: list[list[str] | None]) -> None:
    result = compile_objects(hinted(zones), "n1")
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8080"]


def test_zone_hints_need_a_node() -> None:
    objects = [o for o in hinted([["zone-a"], ["zone-b"]]) if o["kind"] != "Node"]
    result = compile_objects(objects, "n1")  # a node name without its Node object: no zone known
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8080"]
    # The only Node of the input is the node when none is named.
    result = compile_objects(hinted([["zone-a"], ["zone-b"]]))
    assert result.node == "n1"
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080"]


def test_node_hints_come_before_zone_hints() -> None:
    objects = hinted([["zone-a"], ["zone-a"], ["zone-b"]], nodes=[["n2"], ["n1"], ["n3"]])
    assert backend_addresses(compile_objects(objects, "n1"), "default/web:http") == ["10.0.0.2:8080"]


def test_unknown_node_is_an_error() -> None:
    with pytest.raises(ClusterError, match=r"^no Node named 'n9' in the cluster state \(Nodes: n1, n2\)$"):
        compile_objects(local_service_objects(), "n9")
    # Without any Node objects, a node name still decides locality.
    objects = [o for o in local_service_objects() if o["kind"] != "Node"]
    result = compile_objects(objects, "n1")
    assert local_addresses(result, "default/web:http") == ["10.0.0.1:8080"]
    assert result.maps.node.primary_ip == 0
    assert result.notes[0] == "Node n1 is not in the input: no node addresses, so no NodePort frontends and no masquerading"


def test_several_nodes_need_a_choice() -> None:
    objects = [*local_service_objects(), node("n0")]
    with pytest.raises(ClusterError, match=r"^several Nodes \(n0, n1, n2\): choose one with --node$"):
        compile_objects(objects)
    many = [node(f"n{i}") for i in range(7)]
    with pytest.raises(ClusterError, match=r"^several Nodes \(n0, n1, n2, n3, n4, \.\.\.\): choose one"):
        compile_objects(many)
    assert compile_objects(objects, "n0").node == "n0"


# Frontends of every service type ----------------------------------------------------------------


def web_slice(name: str = "web", endpoints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return eps(f"{name}-1", name, [port(8080, "http")], endpoints or [ep("10.0.0.1", node="n1")])


def lb_service(name: str = "web", ingress: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    obj = svc(name, [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}], type="LoadBalancer",
              **spec)
    obj["status"] = {"loadBalancer": {"ingress": ingress if ingress is not None else [{"ip": "203.0.113.10"}]}}
    return obj


def test_node_port_listens_on_the_primary_ip_by_default() -> None:
    nodes = [node("n1", addresses=[("InternalIP", "fd00::1"), ("InternalIP", "192.168.0.1"),
                                   ("InternalIP", "192.168.0.2"), ("ExternalIP", "203.0.113.5")])]
    objects = [*nodes, svc("web", [{"name": "http", "port": 80, "nodePort": 30080}], type="NodePort"), web_slice()]
    for extra in ([], [proxy_config()], [proxy_config(nodePortAddresses=["primary"])]):
        result = compile_objects(objects + extra)
        assert frontends_of(result, "default/web:http") == [
            ("ClusterIP", "10.96.0.10:80/TCP", False, ()), ("NodePort", "192.168.0.1:30080/TCP", False, ())]
        assert result.maps.node.local_ips == (ip("192.168.0.1"), ip("192.168.0.2"), ip("203.0.113.5"), ip("fd00::1"))


@pytest.mark.parametrize(("node_port_addresses", "expected"), [
    (["192.168.0.0/24", "fd00::/64"], ["192.168.0.1", "192.168.0.2"]),
    (["192.168.0.2/32", "198.51.100.0/24"], ["192.168.0.2"]),
    (["10.0.0.0/8"], []),  # nothing of the node's inside: no NodePort at all
    (["fd00::/64"], ["192.168.0.1", "192.168.0.2", "203.0.113.5"]),  # no IPv4 CIDR: every IPv4 address
    (["0.0.0.0/0", "10.0.0.0/8"], ["192.168.0.1", "192.168.0.2", "203.0.113.5"]),
])
def test_node_port_addresses_cidrs_pick_node_addresses(node_port_addresses: list[str], expected: list[str]) -> None:
    result = compile_objects([
        node("n1", addresses=[("InternalIP", "192.168.0.1"), ("InternalIP", "192.168.0.2"),
                              ("ExternalIP", "203.0.113.5")]),
        proxy_config(nodePortAddresses=node_port_addresses),
        svc("web", [{"name": "http", "port": 80, "nodePort": 30080}], type="NodePort"), web_slice(),
    ])
    assert [address for kind, address, _, _ in frontends_of(result, "default/web:http") if kind == "NodePort"] == [
        f"{a}:30080/TCP" for a in expected]


def test_without_a_node_there_are_no_node_ports() -> None:
    result = compile_objects([svc("web", [{"name": "http", "port": 80, "nodePort": 30080}], type="NodePort"),
                              proxy_config(clusterCIDR="10.244.0.0/16", masqueradeAll=True), web_slice()])
    assert [f.kind for f in result.maps.frontends] == ["ClusterIP"]
    assert result.node is None
    # No address; what does not depend on the node is still there.
    assert result.maps.node == NodeView(pod_cidrs=((ip("10.244.0.0"), 16),), masquerade_all=True,
                                        service_ips=(ip("10.96.0.10"),))
    assert result.notes[0] == "no Node in the input: no node addresses, so no NodePort frontends and no masquerading"


def test_load_balancer_ingress_ips_with_vip_or_unset_mode() -> None:
    result = compile_objects([
        node("n1"),
        lb_service(ingress=[{"ip": "203.0.113.10", "ipMode": "VIP"}, {"ip": "203.0.113.11"},
                            {"ip": "203.0.113.12", "ipMode": "Proxy"}, {"hostname": "lb.example.net"},
                            {"ip": "2001:db8::10"}],
                   loadBalancerIP="203.0.113.99"),  # spec.loadBalancerIP alone is a request, not an address
        web_slice(),
    ])
    assert frontends_of(result, "default/web:http") == [
        ("ClusterIP", "10.96.0.10:80/TCP", False, ()), ("NodePort", "192.168.0.1:30080/TCP", False, ()),
        ("LoadBalancer", "203.0.113.10:80/TCP", False, ()), ("LoadBalancer", "203.0.113.11:80/TCP", False, ())]
    # An IPv4-only service: no proxier serves its IPv6 ingress IP (kube-proxy does no family translation).
    assert result.skipped == Counter({"load-balancer IP of a family the service has no cluster IP of": 1})


def test_external_ips_on_any_service_type() -> None:
    result = compile_objects([
        node("n1"),
        svc("web", [port(80, "http"), port(53, "dns", "UDP")], externalIPs=["198.51.100.8", "2001:db8::8",
                                                                           "198.51.100.7"]),
        web_slice(),
    ])
    assert frontends_of(result, "default/web:dns") == [
        ("ClusterIP", "10.96.0.10:53/UDP", False, ()), ("ExternalIP", "198.51.100.7:53/UDP", False, ()),
        ("ExternalIP", "198.51.100.8:53/UDP", False, ())]
    assert [kind for kind, *_ in frontends_of(result, "default/web:http")] == ["ClusterIP", "ExternalIP", "ExternalIP"]
    # counted once per service
    assert result.skipped == Counter({"external IP of a family the service has no cluster IP of": 1})


def test_dual_stack_service_gets_a_cluster_ip_frontend_per_family() -> None:
    result = compile_objects([
        node("n1"),
        svc("web", [port(80, "http")], cluster_ip="fd00::10", clusterIPs=["fd00::10", "10.96.0.10"]), web_slice(),
    ])
    assert frontends_of(result, "default/web:http") == [("ClusterIP", "10.96.0.10:80/TCP", False, ())]
    assert frontends_of(result, "default/web:http", 6) == [("ClusterIP", "[fd00::10]:80/TCP", False, ())]
    assert result.maps.node.service_ips == (ip("10.96.0.10"), ip("fd00::10"))
    # No IPv6 slice: the IPv6 half has no endpoint (rejected), the IPv4 half is served.
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080"]
    assert backend_addresses(result, "default/web:http", 6) == []
    assert service_notes(result) == ("default/web:http (IPv6): no usable endpoint; traffic to it is rejected",)


def test_traffic_policies_on_frontends() -> None:
    stale = svc("stale", [port(80, "http")], cluster_ip="10.96.0.12", externalTrafficPolicy="Local")
    stale["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.12"}]}}
    result = compile_objects([
        node("n1"),
        lb_service("lb", externalTrafficPolicy="Local", internalTrafficPolicy="Local", externalIPs=["198.51.100.7"]),
        svc("ext", [port(80, "http")], cluster_ip="10.96.0.11", externalIPs=["198.51.100.8"],
            externalTrafficPolicy="Local"),
        stale,  # a ClusterIP service without external IPs: externalTrafficPolicy is not honoured
    ])
    assert [(kind, local) for kind, _, local, _ in frontends_of(result, "default/lb:http")] == [
        ("ClusterIP", True), ("NodePort", True), ("LoadBalancer", True), ("ExternalIP", True)]
    assert [(kind, local) for kind, _, local, _ in frontends_of(result, "default/ext:http")] == [
        ("ClusterIP", False), ("ExternalIP", True)]
    assert [(kind, local) for kind, _, local, _ in frontends_of(result, "default/stale:http")] == [
        ("ClusterIP", False), ("LoadBalancer", False)]


@pytest.mark.parametrize(("ranges", "expected"), [
    ([" 198.51.100.0/24 ", "10.1.2.3/16"], ("10.1.0.0/16", "198.51.100.0/24")),
    (["198.51.100.0/24", "2001:db8::/32"], ("198.51.100.0/24",)),  # the other family is ignored
    (["2001:db8::/32"], ()),  # no IPv4 range: every IPv4 source is allowed
    (["198.51.100.0/24", "0.0.0.0/0"], ()),  # a /0 allows all
    (["192.168.0.0/16"], ("192.168.0.0/16", "203.0.113.10/32", "203.0.113.11/32")),  # holds the node's IP
])
def test_load_balancer_source_ranges(ranges: list[str], expected: tuple[str, ...]) -> None:
    result = compile_objects([
        node("n1"),
        lb_service(ingress=[{"ip": "203.0.113.11"}, {"ip": "203.0.113.10"}], loadBalancerSourceRanges=ranges,
                   externalIPs=["198.51.100.7"]),
        web_slice(),
    ])
    found = {kind: source_ranges for kind, _, _, source_ranges in frontends_of(result, "default/web:http")}
    assert found == {"ClusterIP": (), "NodePort": (), "ExternalIP": (), "LoadBalancer": expected}


def test_source_range_holding_the_node_ip_needs_a_node() -> None:
    result = compile_objects([lb_service(loadBalancerSourceRanges=["192.168.0.0/16"]), web_slice()])
    lb = [f for f in result.maps.frontends if f.kind == "LoadBalancer"]
    assert [f.source_ranges for f in lb] == [((ip("192.168.0.0"), 16),)]


def test_frontend_claims_across_kinds() -> None:
    # The node's own address as an external IP on a nodePort number: the external IP keeps it, as
    # kube-proxy matches service addresses before NodePorts.
    result = compile_objects([
        node("n1"),
        svc("a", [{"name": "http", "port": 80, "nodePort": 30080}], cluster_ip="10.96.0.1", type="NodePort"),
        svc("b", [port(30080, "http")], cluster_ip="10.96.0.2", externalIPs=["192.168.0.1"]),
        # The same address as external and load-balancer IP of one service: the LB frontend wins.
        lb_service("c", ingress=[{"ip": "198.51.100.9"}], cluster_ip="10.96.0.3", externalIPs=["198.51.100.9"],
                   loadBalancerSourceRanges=["198.51.100.0/24"]),
    ])
    assert [kind for kind, *_ in frontends_of(result, "default/a:http")] == ["ClusterIP"]
    assert [kind for kind, *_ in frontends_of(result, "default/b:http")] == ["ClusterIP", "ExternalIP"]
    assert [kind for kind, *_ in frontends_of(result, "default/c:http")] == ["ClusterIP", "LoadBalancer"]
    assert result.warnings == (
        ("default/c:http: 198.51.100.9:80/TCP (ExternalIP) is already the LoadBalancer frontend of default/c:http; "
         "ignored"),
        ("default/a:http: 192.168.0.1:30080/TCP (NodePort) is already the ExternalIP frontend of default/b:http; "
         "ignored"),
        ("default/c:http: 192.168.0.1:30080/TCP (NodePort) is already the ExternalIP frontend of default/b:http; "
         "ignored"),
    )


def test_an_address_listed_twice_is_one_frontend() -> None:
    result = compile_objects([node("n1"), lb_service(ingress=[{"ip": "203.0.113.10"}, {"ip": "203.0.113.10"}])])
    assert [kind for kind, *_ in frontends_of(result, "default/web:http")] == ["ClusterIP", "NodePort", "LoadBalancer"]
    assert result.warnings == ()


# The node view ---------------------------------------------------------------------------------------


def test_node_view_from_the_node_and_kube_proxy_configuration() -> None:
    result = compile_objects([
        node("n1", addresses=[("ExternalIP", "203.0.113.5"), ("InternalIP", "fd00::1"),
                              ("InternalIP", "192.168.0.2"), ("InternalIP", "192.168.0.1")]),
        proxy_config(clusterCIDR="10.244.0.0/16, fd00:10:244::/56,10.245.0.0/16", masqueradeAll=True),
        svc("web", [port(80, "http")]),
        svc("sctp-only", [port(9, "sig", "SCTP")], cluster_ip="10.96.0.20"),  # still a ClusterIP kube-proxy knows
        svc("v6", [port(80, "http")], cluster_ip="fd00::30"),
        svc("headless", [port(80, "http")], cluster_ip="None"),
        svc("ext", [port(80, "http")], cluster_ip=None, type="ExternalName", externalName="db.example.com"),
    ])
    assert result.maps.node == NodeView(
        primary_ip=ip("192.168.0.2"),  # the first IPv4 InternalIP
        local_ips=(ip("192.168.0.1"), ip("192.168.0.2"), ip("203.0.113.5"), ip("fd00::1")),
        pod_cidrs=((ip("10.244.0.0"), 16), (ip("10.245.0.0"), 16), (ip("fd00:10:244::"), 56)),
        masquerade_all=True,
        service_ips=(ip("10.96.0.10"), ip("10.96.0.20"), ip("fd00::30")),
        primary_ip6=ip("fd00::1"),  # the first IPv6 InternalIP
    )


def test_primary_ip_falls_back_to_an_external_ip_and_bind_address_overrides_it() -> None:
    objects = [node("n1", addresses=[("InternalIP", "fd00::1"), ("ExternalIP", "203.0.113.5")])]
    assert compile_objects(objects).maps.node.primary_ip == ip("203.0.113.5")
    assert compile_objects([*objects, proxy_config(bindAddress="0.0.0.0")]).maps.node.primary_ip == ip("203.0.113.5")
    view = compile_objects([*objects, proxy_config(bindAddress="192.168.0.9")]).maps.node
    assert (view.primary_ip, view.local_ips, view.primary_ip6) == (
        ip("192.168.0.9"), (ip("192.168.0.9"), ip("203.0.113.5"), ip("fd00::1")), ip("fd00::1"))
    # An IPv6 bindAddress overrides the IPv6 node IP only; "::" overrides nothing.
    view = compile_objects([*objects, proxy_config(bindAddress="fd00::9")]).maps.node
    assert (view.primary_ip, view.primary_ip6) == (ip("203.0.113.5"), ip("fd00::9"))
    assert view.local_ips == (ip("203.0.113.5"), ip("fd00::1"), ip("fd00::9"))
    view = compile_objects([*objects, proxy_config(bindAddress="::")]).maps.node
    assert (view.primary_ip, view.primary_ip6) == (ip("203.0.113.5"), ip("fd00::1"))
    result = compile_objects([node("n1", addresses=[("InternalIP", "fd00::1")]),
                              svc("web", [{"name": "http", "port": 80, "nodePort": 30080}], type="NodePort")])
    assert (result.maps.node.primary_ip, result.maps.node.local_ips) == (0, (ip("fd00::1"),))
    assert [f.kind for f in result.maps.frontends] == ["ClusterIP"]
    assert "Node n1 has no IPv4 address: no IPv4 NodePort frontends and no IPv4 masquerading" in result.notes


def test_detect_local_mode_node_cidr_uses_the_node_pod_cidrs() -> None:
    objects = [node("n1", pod_cidrs=["10.244.1.0/24", "fd00:10:244:1::/64"]),
               proxy_config(clusterCIDR="10.244.0.0/16", detectLocalMode="NodeCIDR")]
    result = compile_objects(objects)
    assert result.maps.node.pod_cidrs == ((ip("10.244.1.0"), 24), (ip("fd00:10:244:1::"), 64))
    result = compile_objects([node("n1"), objects[1]])
    assert result.maps.node.pod_cidrs == ()
    assert ("detectLocalMode NodeCIDR and Node n1 has no IPv4 podCIDR: no IPv4 source counts as pod traffic"
            in result.notes)
    assert compile_objects(objects[1:]).notes[:2] == (
        "no Node in the input: no node addresses, so no NodePort frontends and no masquerading",
        "detectLocalMode NodeCIDR and no Node: no IPv4 source counts as pod traffic")
    # With IPv6 service ports, a missing IPv6 podCIDR is worth a note too.
    result = compile_objects([node("n1", pod_cidrs=["10.244.1.0/24"]), objects[1],
                              svc("web", [port(80, "http")], cluster_ip="10.96.0.1", clusterIPs=["10.96.0.1", "fd00::1"])])
    assert result.maps.node.pod_cidrs == ((ip("10.244.1.0"), 24),)
    assert ("detectLocalMode NodeCIDR and Node n1 has no IPv6 podCIDR: no IPv6 source counts as pod traffic"
            in result.notes)


def test_detect_local_by_interface_cannot_be_evaluated() -> None:
    result = compile_objects([node("n1"), proxy_config(clusterCIDR="10.244.0.0/16", detectLocalMode="BridgeInterface",
                                                       detectLocal={"bridgeInterface": "cbr0"})])
    assert result.maps.node.pod_cidrs == ()
    assert result.notes == (
        "detectLocalMode BridgeInterface cannot be evaluated offline: no source counts as pod traffic",)


def test_hostname_override_names_the_node() -> None:
    objects = [node("n1", addresses=[("InternalIP", "192.168.0.1")]),
               node("n2", addresses=[("InternalIP", "192.168.0.2")]),
               proxy_config(hostnameOverride=" N2 ")]
    result = compile_objects(objects)
    assert (result.node, result.maps.node.primary_ip) == ("n2", ip("192.168.0.2"))
    assert result.notes == ("node n2 chosen by the KubeProxyConfiguration's hostnameOverride",)
    assert compile_objects(objects, "n1").node == "n1"  # an explicit node wins
    objects[2] = proxy_config(hostnameOverride="n3")
    with pytest.raises(ClusterError, match=r"^no Node named 'n3' \(the KubeProxyConfiguration's hostnameOverride\) "
                                           r"in the cluster state \(Nodes: n1, n2\)$"):
        compile_objects(objects)


# Endpoint sets -------------------------------------------------------------------------------------


def test_cluster_local_and_serving_sets() -> None:
    result = compile_objects([
        node("n1"),
        svc("web", [port(80, "http")]),
        eps("web-1", "web", [port(8080, "http")], [
            ep("10.0.0.1", node="n1"),  # local, ready
            ep("10.0.0.2", node="n2"),  # remote, ready
            ep("10.0.0.3", node="n1", ready=False, serving=True, terminating=True),  # local, draining
            ep("10.0.0.4", node="n2", ready=False, serving=False),  # not serving
            ep("10.0.0.5", node="n2", ready=False, serving=True),  # serving, not ready, not terminating
            ep("10.0.0.6", ready=True),  # no nodeName: remote
        ]),
    ])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.6:8080"]
    assert local_addresses(result, "default/web:http") == ["10.0.0.1:8080"]
    assert serving_addresses(result, "default/web:http") == [
        "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080", "10.0.0.5:8080", "10.0.0.6:8080"]
    # Every endpoint of any set is a backend; the not-serving one is none.
    assert [b.name.split()[0] for b in result.maps.backends] == [
        "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080", "10.0.0.5:8080", "10.0.0.6:8080"]


def test_local_fallback_is_independent_of_the_cluster_set() -> None:
    endpoints = [ep("10.0.0.1", node="n2"), ep("10.0.0.2", node="n1", ready=False, serving=True, terminating=True),
                 ep("10.0.0.3", node="n1", ready=False, serving=False, terminating=True)]
    result = compile_objects([node("n1"), svc("web", [port(80, "http")]), web_slice(endpoints=endpoints)])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080"]
    assert local_addresses(result, "default/web:http") == ["10.0.0.2:8080"]
    # Nothing ready anywhere: the cluster set falls back too, without a local endpoint here.
    endpoints = [ep("10.0.0.1", node="n2", ready=False, serving=True, terminating=True)]
    result = compile_objects([node("n1"), svc("web", [port(80, "http")]), web_slice(endpoints=endpoints)])
    assert (backend_addresses(result, "default/web:http"), local_addresses(result, "default/web:http")) == (
        ["10.0.0.1:8080"], [])


def test_local_set_ignores_topology_hints() -> None:
    endpoints = [ep("10.0.0.1", node="n1", zones=["zone-b"]), ep("10.0.0.2", node="n2", zones=["zone-a"])]
    result = compile_objects([node("n1", "zone-a"), svc("web", [port(80, "http")]), web_slice(endpoints=endpoints)])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.2:8080"]
    assert local_addresses(result, "default/web:http") == ["10.0.0.1:8080"]


def test_external_traffic_policy_local_without_local_endpoint_is_noted() -> None:
    result = compile_objects([node("n1"), lb_service(externalTrafficPolicy="Local"),
                              web_slice(endpoints=[ep("10.0.0.1", node="n2")])])
    assert service_notes(result) == (("default/web:http: externalTrafficPolicy Local and no local endpoint "
                                      "(none on node n1); external clients are dropped"),)


def test_session_affinity_timeout() -> None:
    result = compile_objects([
        svc("none", [port(80, "http")], cluster_ip="10.96.0.1"),
        svc("default", [port(80, "http")], cluster_ip="10.96.0.2", sessionAffinity="ClientIP"),
        svc("set", [port(80, "http"), port(81, "api")], cluster_ip="10.96.0.3", sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}),
    ])
    assert {s.name: s.affinity_timeout_s for s in result.maps.services} == {
        "default/default:http": 10800, "default/none:http": 0, "default/set:api": 60, "default/set:http": 60}


# Endpoints from Pods ---------------------------------------------------------------------------------


def test_endpoints_from_selected_pods() -> None:
    result = compile_objects([
        node("n1"),
        svc("web", [port(80, "http")]),
        pod("web-ready", "10.0.0.1", node_name="n1"),
        pod("web-remote", "10.0.0.2", node_name="n2"),
        pod("web-starting", "10.0.0.3", ready=False, node_name="n1"),  # not serving: no set
        pod("web-leaving", "10.0.0.4", deleting=True, node_name="n1"),  # serving, terminating
        pod("web-done", "10.0.0.5", phase="Succeeded"),
        pod("web-failed", "10.0.0.6", phase="Failed"),
        pod("web-pending", None, ready=False, phase="Pending"),
        pod("web-v6-first", ["fd00::7", "10.0.0.7"]),
        pod("web-v6-only", "fd00::8"),
        pod("other-app", "10.0.0.9", labels={"app": "other"}),
        pod("web-elsewhere", "10.0.0.10", namespace="other"),
        pod("web-extra-labels", "10.0.0.11", labels={"app": "web", "tier": "front"}),
    ])
    assert backend_addresses(result, "default/web:http") == [
        "10.0.0.1:80", "10.0.0.2:80", "10.0.0.7:80", "10.0.0.11:80"]  # targetPort defaults to the port
    assert local_addresses(result, "default/web:http") == ["10.0.0.1:80"]
    assert serving_addresses(result, "default/web:http") == [
        "10.0.0.1:80", "10.0.0.2:80", "10.0.0.4:80", "10.0.0.7:80", "10.0.0.11:80"]
    assert result.maps.backends[0].name == "10.0.0.1:80 (default/web-ready)"
    assert "endpoints of 1 service(s) built from Pods (no EndpointSlice in the input for them)" in result.notes


def test_pods_terminating_are_the_fallback() -> None:
    result = compile_objects([node("n1"), svc("web", [port(80, "http")]),
                              pod("web-a", "10.0.0.1", deleting=True, node_name="n2"),
                              pod("web-b", "10.0.0.2", deleting=True, ready=False, node_name="n1")])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:80"]
    assert local_addresses(result, "default/web:http") == []


def test_named_target_port_resolves_per_pod() -> None:
    sidecar = {"name": "proxy", "restartPolicy": "Always", "ports": [container_port(15001, "http")]}
    plain_init = {"name": "setup", "ports": [container_port(16001, "http")]}
    result = compile_objects([
        svc("web", [{"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
                    {"name": "metrics", "port": 9090, "targetPort": 9100}]),
        pod("web-a", "10.0.0.1", ports=[container_port(8080, "http"), container_port(5353, "dns", "UDP")]),
        pod("web-b", "10.0.0.2", ports=[container_port(8081, "http"), container_port(5353, "dns")]),  # dns over TCP
        pod("web-c", "10.0.0.3", ports=[], initContainers=[sidecar]),
        pod("web-d", "10.0.0.4", ports=[], initContainers=[plain_init]),
    ])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8081", "10.0.0.3:15001"]
    assert backend_addresses(result, "default/web:dns") == ["10.0.0.1:5353"]
    assert backend_addresses(result, "default/web:metrics") == [
        "10.0.0.1:9100", "10.0.0.2:9100", "10.0.0.3:9100", "10.0.0.4:9100"]


def test_publish_not_ready_addresses_makes_every_pod_ready() -> None:
    result = compile_objects([
        svc("web", [port(80, "http")], publishNotReadyAddresses=True),
        pod("web-a", "10.0.0.1", ready=False),
        pod("web-b", "10.0.0.2", ready=False, deleting=True),
        pod("web-c", "10.0.0.3", phase="Failed"),
    ])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:80", "10.0.0.2:80"]
    assert serving_addresses(result, "default/web:http") == []  # serving is still the Ready condition


def test_slices_of_a_service_take_precedence_over_its_pods() -> None:
    result = compile_objects([
        svc("web", [port(80, "http")], cluster_ip="10.96.0.1"),
        eps("web-1", "web", [port(8080, "http")], [ep("10.0.0.1")]),
        svc("v6", [port(80, "http")], cluster_ip="10.96.0.2", selector={"app": "web"}),
        eps("v6-1", "v6", [port(8080, "http")], [ep("fd00::1")], address_type="IPv6"),
        svc("manual", [port(80, "http")], cluster_ip="10.96.0.3", selector=None),
        svc("fqdn", [port(80, "http")], cluster_ip="10.96.0.4", selector={"app": "web"}),
        eps("fqdn-1", "fqdn", [port(8080, "http")], [ep("db.example.com")], address_type="FQDN"),
        pod("web-a", "10.0.0.2", ports=[container_port(8080, "http")]),
    ])
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080"]
    assert backend_addresses(result, "default/v6:http") == []  # an IPv6 slice is a slice too
    assert backend_addresses(result, "default/fqdn:http") == []  # and so is an FQDN one
    assert backend_addresses(result, "default/manual:http") == []  # no selector: nothing from pods
    assert not any("built from Pods" in note for note in result.notes)


def test_same_pod_ip_twice_keeps_the_live_pod() -> None:
    result = compile_objects([svc("web", [port(80, "http")]),
                              pod("web-old", "10.0.0.1", deleting=True), pod("web-new", "10.0.0.1", ready=True)])
    assert [b.name for b in result.maps.backends] == ["10.0.0.1:80 (default/web-new)"]


# Dual-stack and IPv6 ----------------------------------------------------------------------------------
# kube-proxy runs one proxier per family: each half of a dual-stack service port is compiled on its
# own, from the addresses, slices, ranges and node IPs of its family.


def test_dual_stack_fixture_cluster() -> None:
    result = compile_maps(load_cluster([Path(__file__).parent / "data" / "dualstack"]), "node-a")
    maps = result.maps
    from fastpath.compiler import service_label
    assert [service_label(s) for s in maps.services] == [
        "shop/api:https", "shop/api:https (IPv6)", "shop/cache:redis", "shop/cache:redis (IPv6)",
        "shop/dns:dns", "shop/dns:dns (IPv6)", "shop/edge:http (IPv6)", "shop/legacy:web",
        "shop/legacy:web (IPv6)", "shop/web:http", "shop/web:http (IPv6)"]
    assert backend_addresses(result, "shop/web:http", 6) == ["[fd00:10:244:1::10]:8080", "[fd00:10:244:2::10]:8080"]
    # api: IPv6 is its primary family (clusterIPs[0]); externalTrafficPolicy Local in both families
    assert frontends_of(result, "shop/api:https", 6) == [
        ("ClusterIP", "[fd00:10:96::2020]:443/TCP", False, ()),
        ("NodePort", "[fd00:192:168:10::11]:30443/TCP", True, ())]
    assert local_addresses(result, "shop/api:https", 6) == ["[fd00:10:244:1::20]:8443"]
    # edge: IPv6 only; the Proxy-mode ingress IP gets nothing, the IPv4 source range is ignored
    assert frontends_of(result, "shop/edge:http", 6) == [
        ("ClusterIP", "[fd00:10:96::2030]:80/TCP", False, ()),
        ("NodePort", "[fd00:192:168:10::11]:30080/TCP", False, ()),
        ("LoadBalancer", "[2001:db8:100::30]:80/TCP", False, ("2001:db8:beef::/48",))]
    assert service_named(result, "shop/edge:http", 6).affinity_timeout_s == 600
    # cache: from the Pods' podIPs of each family, the named port resolved per pod
    assert backend_addresses(result, "shop/cache:redis") == ["10.244.1.79:6379", "10.244.2.79:6380"]
    assert backend_addresses(result, "shop/cache:redis", 6) == ["[fd00:10:244:1::79]:6379", "[fd00:10:244:2::79]:6380"]
    assert (maps.node.primary_ip, maps.node.primary_ip6) == (ip("192.168.10.11"), ip("fd00:192:168:10::11"))
    assert maps.node.pod_cidrs == ((ip("10.244.0.0"), 16), (ip("fd00:10:244::"), 56))
    assert result.notes == (
        "shop/dns:dns (IPv6): internalTrafficPolicy Local and no local endpoint (none on node node-a)",
        "shop/legacy:web (IPv6): no usable endpoint; traffic to it is rejected",
        "endpoints of 1 service(s) built from Pods (no EndpointSlice in the input for them)")
    assert result.skipped == Counter() and result.warnings == ()


def dual_node(name: str = "n1", zone: str | None = None) -> dict[str, Any]:
    return node(name, zone, addresses=[("InternalIP", "192.168.0.1"), ("InternalIP", "fd00:192:168::1"),
                                       ("InternalIP", "fd00:192:168::2"), ("ExternalIP", "2001:db8:ff::1"),
                                       ("ExternalIP", "203.0.113.5")],
                pod_cidrs=["10.244.1.0/24", "fd00:10:244:1::/64"])


def dual_svc(name: str = "web", ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    spec.setdefault("ipFamilies", ["IPv4", "IPv6"])
    spec.setdefault("ipFamilyPolicy", "RequireDualStack")
    return svc(name, ports or [port(80, "http")], cluster_ip="10.96.0.10",
               clusterIPs=["10.96.0.10", "fd00:10:96::10"], **spec)


def dual_slices(name: str = "web", v4: list[dict[str, Any]] | None = None,
                v6: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [eps(f"{name}-v4", name, [port(8080, "http")], v4 or [ep("10.244.1.5", node="n1"), ep("10.244.2.5", node="n2")]),
            eps(f"{name}-v6", name, [port(8080, "http")],
                v6 or [ep("fd00:10:244:1::5", node="n1"), ep("fd00:10:244:2::5", node="n2")], address_type="IPv6")]


def test_dual_stack_load_balancer_frontends_per_family() -> None:
    service = dual_svc("web", [{"name": "http", "port": 80, "nodePort": 30080}], type="LoadBalancer",
                       externalIPs=["198.51.100.7", "2001:db8::7"], externalTrafficPolicy="Local")
    service["status"] = {"loadBalancer": {"ingress": [
        {"ip": "203.0.113.10"}, {"ip": "2001:db8::10", "ipMode": "VIP"}, {"ip": "2001:db8::11", "ipMode": "Proxy"},
        {"hostname": "lb.example.net"}]}}
    result = compile_objects([dual_node(), service, *dual_slices(), proxy_config(detectLocalMode="NodeCIDR")], "n1")
    assert frontends_of(result, "default/web:http") == [
        ("ClusterIP", "10.96.0.10:80/TCP", False, ()), ("NodePort", "192.168.0.1:30080/TCP", True, ()),
        ("LoadBalancer", "203.0.113.10:80/TCP", True, ()), ("ExternalIP", "198.51.100.7:80/TCP", True, ())]
    # IPv6: the nodePort on the node's primary IPv6 address (the default "primary"), the VIP-mode
    # ingress IP (the Proxy-mode one is the load balancer's business), the IPv6 external IP.
    assert frontends_of(result, "default/web:http", 6) == [
        ("ClusterIP", "[fd00:10:96::10]:80/TCP", False, ()), ("NodePort", "[fd00:192:168::1]:30080/TCP", True, ()),
        ("LoadBalancer", "[2001:db8::10]:80/TCP", True, ()), ("ExternalIP", "[2001:db8::7]:80/TCP", True, ())]
    assert backend_addresses(result, "default/web:http") == ["10.244.1.5:8080", "10.244.2.5:8080"]
    assert local_addresses(result, "default/web:http") == ["10.244.1.5:8080"]
    assert backend_addresses(result, "default/web:http", 6) == ["[fd00:10:244:1::5]:8080", "[fd00:10:244:2::5]:8080"]
    assert local_addresses(result, "default/web:http", 6) == ["[fd00:10:244:1::5]:8080"]
    assert result.skipped == Counter() and result.warnings == ()
    view = result.maps.node
    assert (view.primary_ip, view.primary_ip6) == (ip("192.168.0.1"), ip("fd00:192:168::1"))
    assert view.local_ips == tuple(ip(a) for a in ("192.168.0.1", "203.0.113.5", "2001:db8:ff::1",
                                                   "fd00:192:168::1", "fd00:192:168::2"))
    assert view.pod_cidrs == ((ip("10.244.1.0"), 24), (ip("fd00:10:244:1::"), 64))  # spec.podCIDRs, both
    assert view.service_ips == (ip("10.96.0.10"), ip("fd00:10:96::10"))


def test_ipv6_only_cluster() -> None:
    result = compile_objects([
        node("n1", addresses=[("InternalIP", "fd00:192:168::1")], pod_cidrs=["fd00:10:244:1::/64"]),
        proxy_config(clusterCIDR="fd00:10:244::/56"),
        svc("web", [{"name": "http", "port": 80, "nodePort": 30080}], cluster_ip="fd00:10:96::10", type="NodePort",
            ipFamilies=["IPv6"]),
        eps("web-1", "web", [port(8080, "http")], [ep("fd00:10:244:1::5", node="n1")], address_type="IPv6"),
    ], "n1")
    assert [(s.name, s.family) for s in result.maps.services] == [("default/web:http", 6)]
    assert frontends_of(result, "default/web:http", 6) == [
        ("ClusterIP", "[fd00:10:96::10]:80/TCP", False, ()), ("NodePort", "[fd00:192:168::1]:30080/TCP", False, ())]
    assert result.maps.node == NodeView(
        primary_ip=0, local_ips=(ip("fd00:192:168::1"),), pod_cidrs=((ip("fd00:10:244::"), 56),),
        service_ips=(ip("fd00:10:96::10"),), primary_ip6=ip("fd00:192:168::1"))
    # Nothing is missing for the one family in use: no note about IPv4.
    assert result.notes == () and result.skipped == Counter()


@pytest.mark.parametrize(("node_port_addresses", "expected"), [
    (None, ["192.168.0.1", "fd00:192:168::1"]),  # default: the primary IP of each family
    (["primary"], ["192.168.0.1", "fd00:192:168::1"]),
    (["fd00:192:168::/64"], ["192.168.0.1", "203.0.113.5", "fd00:192:168::1", "fd00:192:168::2"]),  # IPv4: all
    (["192.168.0.0/24"], ["192.168.0.1", "2001:db8:ff::1", "fd00:192:168::1", "fd00:192:168::2"]),  # IPv6: all
    (["192.168.0.0/24", "2001:db8::/32"], ["192.168.0.1", "2001:db8:ff::1"]),
    (["192.168.0.0/24", "fd00:192:168::2/128", "::/0"], ["192.168.0.1", "2001:db8:ff::1", "fd00:192:168::1",
                                                         "fd00:192:168::2"]),  # ::/0: every IPv6 address
    (["192.168.0.0/24", "fd00:99::/64"], ["192.168.0.1"]),  # no IPv6 address inside: no IPv6 NodePort
])
def test_node_port_addresses_per_family(node_port_addresses: list[str] | None, expected: list[str]) -> None:
    objects = [dual_node(), dual_svc("web", [{"name": "http", "port": 80, "nodePort": 30080}], type="NodePort"),
               *dual_slices()]
    if node_port_addresses is not None:
        objects.append(proxy_config(nodePortAddresses=node_port_addresses))
    result = compile_objects(objects)
    found = [address for family in (4, 6) for kind, address, _, _ in frontends_of(result, "default/web:http", family)
             if kind == "NodePort"]
    assert found == [f"{format_endpoint(ip(a), 30080)}/TCP" for a in expected]


def test_loopback_is_never_a_node_port_address() -> None:
    result = compile_objects([
        node("n1", addresses=[("InternalIP", "::1"), ("InternalIP", "fd00::1"), ("InternalIP", "127.0.0.1")]),
        proxy_config(nodePortAddresses=["::/0", "0.0.0.0/0"]),
        dual_svc("web", [{"name": "http", "port": 80, "nodePort": 30080}], type="NodePort"),
    ])
    assert [f.ip for f in result.maps.frontends if f.kind == "NodePort"] == [ip("fd00::1")]


@pytest.mark.parametrize(("ranges", "v4", "v6"), [
    (["198.51.100.0/24", "2001:db8:1::/48"], ("198.51.100.0/24",), ("2001:db8:1::/48",)),
    (["2001:db8:1::/48"], (), ("2001:db8:1::/48",)),  # no IPv4 range: every IPv4 source is allowed
    (["198.51.100.0/24"], ("198.51.100.0/24",), ()),  # and the other way round
    (["198.51.100.0/24", "::/0"], ("198.51.100.0/24",), ()),  # a /0 allows every source of its family
    # A range holding the node's IPv6 address lets the IPv6 load-balancer IPs in (the loop back of
    # the node's own traffic to its VIPs); the IPv4 ranges do not hold 192.168.0.1, so not there.
    ([" fd00:192:168::/48 ", "10.0.0.0/8"], ("10.0.0.0/8",),
     ("2001:db8::10/128", "2001:db8::11/128", "fd00:192:168::/48")),
])
def test_load_balancer_source_ranges_per_family(ranges: list[str], v4: tuple[str, ...], v6: tuple[str, ...]) -> None:
    service = dual_svc("web", [{"name": "http", "port": 80, "nodePort": 30080}], type="LoadBalancer",
                       loadBalancerSourceRanges=ranges, externalIPs=["2001:db8::7"])
    service["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"ip": "2001:db8::11"},
                                                      {"ip": "2001:db8::10"}]}}
    result = compile_objects([dual_node(), service, *dual_slices()])
    for family, expected in ((4, v4), (6, v6)):
        found = {kind: source for kind, _, _, source in frontends_of(result, "default/web:http", family)}
        assert found == {"ClusterIP": (), "NodePort": (), "LoadBalancer": expected,
                         **({"ExternalIP": ()} if family == 6 else {})}, family


def test_endpoints_from_pods_with_two_pod_ips() -> None:
    result = compile_objects([
        dual_node(),
        dual_svc("web", [{"name": "http", "port": 80, "targetPort": "http"}]),
        pod("web-a", ["10.244.1.5", "fd00:10:244:1::5"], node_name="n1", ports=[container_port(8080, "http")]),
        pod("web-b", ["fd00:10:244:2::5", "10.244.2.5"], node_name="n2", ports=[container_port(8081, "http")]),
        pod("web-c", "10.244.2.6", node_name="n2", ports=[container_port(8080, "http")]),  # IPv4 only
        pod("web-d", "fd00:10:244:2::7", node_name="n2", ports=[container_port(8080, "http")]),  # IPv6 only
        pod("web-e", ["fd00:10:244:1::8", "10.244.1.8"], node_name="n1", deleting=True,
            ports=[container_port(8080, "http")]),
    ], "n1")
    assert backend_addresses(result, "default/web:http") == ["10.244.1.5:8080", "10.244.2.5:8081", "10.244.2.6:8080"]
    assert backend_addresses(result, "default/web:http", 6) == [
        "[fd00:10:244:1::5]:8080", "[fd00:10:244:2::5]:8081", "[fd00:10:244:2::7]:8080"]
    assert local_addresses(result, "default/web:http", 6) == ["[fd00:10:244:1::5]:8080"]
    assert serving_addresses(result, "default/web:http", 6) == [
        "[fd00:10:244:1::5]:8080", "[fd00:10:244:1::8]:8080", "[fd00:10:244:2::5]:8081", "[fd00:10:244:2::7]:8080"]
    assert "[fd00:10:244:1::5]:8080 (default/web-a)" in [b.name for b in result.maps.backends]
    # An IPv4-only service takes only the IPv4 podIPs.
    result = compile_objects([svc("web", [port(80, "http")]), pod("web-a", ["fd00::5", "10.0.0.5"])])
    assert [(s.family, addresses(result, s.backends)) for s in result.maps.services] == [(4, ["10.0.0.5:80"])]


def test_hints_policies_and_affinity_are_per_family() -> None:
    # IPv6 endpoints all carry zone hints, the IPv4 ones do not: only the IPv6 set is narrowed.
    result = compile_objects([
        dual_node("n1", zone="zone-a"),
        dual_svc("web", internalTrafficPolicy="Local", sessionAffinity="ClientIP",
                 sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}}),
        *dual_slices(v4=[ep("10.244.1.5", node="n1"), ep("10.244.2.5", node="n2")],
                     v6=[ep("fd00:10:244:1::5", node="n1", zones=["zone-b"]),
                         ep("fd00:10:244:2::5", node="n2", zones=["zone-a"]),
                         ep("fd00:10:244:3::5", node="n3", ready=False, serving=True, terminating=True)]),
    ], "n1")
    assert backend_addresses(result, "default/web:http") == ["10.244.1.5:8080", "10.244.2.5:8080"]
    assert backend_addresses(result, "default/web:http", 6) == ["[fd00:10:244:2::5]:8080"]
    assert local_addresses(result, "default/web:http", 6) == ["[fd00:10:244:1::5]:8080"]  # hints do not apply
    assert serving_addresses(result, "default/web:http", 6) == [
        "[fd00:10:244:1::5]:8080", "[fd00:10:244:2::5]:8080", "[fd00:10:244:3::5]:8080"]
    assert [(s.family, s.affinity_timeout_s) for s in result.maps.services] == [(4, 30), (6, 30)]
    assert [f.local_policy for f in result.maps.frontends] == [True, True]
    # No local IPv6 endpoint: the note names the IPv6 half.
    result = compile_objects([
        dual_node("n1"), dual_svc("web", internalTrafficPolicy="Local"),
        *dual_slices(v6=[ep("fd00:10:244:2::5", node="n2")]),
    ], "n1")
    assert service_notes(result) == (
        "default/web:http (IPv6): internalTrafficPolicy Local and no local endpoint (none on node n1)",)


def test_dual_cluster_cidr_and_a_missing_family() -> None:
    objects = [dual_node(), dual_svc(), *dual_slices()]
    result = compile_objects([*objects, proxy_config(clusterCIDR="10.244.0.0/16,fd00:10:244::/56")])
    assert result.maps.node.pod_cidrs == ((ip("10.244.0.0"), 16), (ip("fd00:10:244::"), 56))
    assert not any("clusterCIDR" in note for note in result.notes)
    # kube-proxy's IPv6 proxier has no local detector without an IPv6 clusterCIDR.
    result = compile_objects([*objects, proxy_config(clusterCIDR="10.244.0.0/16")])
    assert result.maps.node.pod_cidrs == ((ip("10.244.0.0"), 16),)
    assert "clusterCIDR has no IPv6 range: no IPv6 source counts as pod traffic" in result.notes
    result = compile_objects([*objects, proxy_config(clusterCIDR="fd00:10:244::/56")])
    assert "clusterCIDR has no IPv4 range: no IPv4 source counts as pod traffic" in result.notes


def test_ipv4_mapped_addresses_are_ipv4_as_kube_proxy_reads_them() -> None:
    # Go's net.IP makes ::ffff:a.b.c.d an IPv4 address; the API server refuses such addresses in
    # IPv6 EndpointSlices, so one there (from a hand-written file) is left out.
    result = compile_objects([
        node("n1", addresses=[("InternalIP", "::ffff:192.168.0.1"), ("InternalIP", "fd00::1")]),
        svc("web", [port(80, "http")], cluster_ip="::ffff:10.96.0.10", clusterIPs=["::ffff:10.96.0.10"],
            externalIPs=["::ffff:198.51.100.7"]),
        eps("web-1", "web", [port(8080, "http")], [ep("10.244.1.5")]),
        eps("web-2", "web", [port(8080, "http")], [ep("::ffff:10.244.1.6"), ep("fd00::6")], address_type="IPv6"),
        proxy_config(clusterCIDR="::ffff:10.244.0.0/112", loadBalancerSourceRanges=[]),
    ])
    assert [(s.name, s.family) for s in result.maps.services] == [("default/web:http", 4)]
    assert frontends_of(result, "default/web:http") == [
        ("ClusterIP", "10.96.0.10:80/TCP", False, ()), ("ExternalIP", "198.51.100.7:80/TCP", False, ())]
    assert backend_addresses(result, "default/web:http") == ["10.244.1.5:8080"]
    view = result.maps.node
    assert (view.primary_ip, view.primary_ip6, view.pod_cidrs) == (
        ip("192.168.0.1"), ip("fd00::1"), ((ip("10.244.0.0"), 16),))
    assert result.skipped == Counter()
    result = compile_objects([
        dual_svc(), eps("web-2", "web", [port(8080, "http")], [ep("::ffff:10.244.1.6"), ep("fd00::6")],
                        address_type="IPv6")])
    assert backend_addresses(result, "default/web:http", 6) == ["[fd00::6]:8080"]
    assert result.skipped == Counter({"IPv4-mapped address in an IPv6 EndpointSlice": 1})


def test_ipv6_frontend_conflict_warning() -> None:
    result = compile_objects([
        svc("b", [port(80, "http")], cluster_ip="fd00::1"),
        svc("a", [port(80, "http")], cluster_ip="fd00::1"),
    ])
    assert result.warnings == (("default/b:http (IPv6): [fd00::1]:80/TCP (ClusterIP) is already the ClusterIP "
                                "frontend of default/a:http (IPv6); ignored"),)


def test_service_label_names_the_ipv6_half() -> None:
    from fastpath.compiler import service_label
    result = compile_objects([dual_svc(), *dual_slices()])
    assert [service_label(s) for s in result.maps.services] == ["default/web:http", "default/web:http (IPv6)"]


# Conntrack timeouts -----------------------------------------------------------------------------------


def test_conntrack_timeouts_only_those_set() -> None:
    assert compile_objects([]).timeouts_s == {}
    assert compile_objects([proxy_config()]).timeouts_s == {}
    result = compile_objects([proxy_config(conntrack={"tcpEstablishedTimeout": "2h30m", "tcpCloseWaitTimeout": "0s",
                                                      "udpTimeout": "1.5s", "maxPerCore": 0})])
    assert result.timeouts_s == {"established": 9000, "other": 1.5}
    result = compile_objects([proxy_config(conntrack={"udpStreamTimeout": "2m"})])
    assert result.timeouts_s == {}
    assert "conntrack.udpStreamTimeout is not used: the core has one UDP timeout (udpTimeout)" in result.notes


# ServiceCIDR -------------------------------------------------------------------------------


def service_cidr(name: str, *cidrs: str, version: str = "v1") -> dict[str, Any]:
    return {"apiVersion": f"networking.k8s.io/{version}", "kind": "ServiceCIDR", "metadata": {"name": name},
            "spec": {"cidrs": list(cidrs)}}


def test_service_cidrs_of_every_service_cidr_object_both_families() -> None:
    result = compile_objects([
        node("n1"), dual_svc(),
        service_cidr("kubernetes", "10.96.0.0/12", "fd00:10:96::/112"),
        service_cidr("extra", "10.200.0.0/16", version="v1beta1"),
        service_cidr("overlap", "10.96.0.0/12"),  # the same range twice is one prefix
    ])
    assert result.maps.node.service_cidrs == (
        (ip("10.96.0.0"), 12), (ip("10.200.0.0"), 16), (ip("fd00:10:96::"), 112))
    # ClusterIPs stay service_ips (their unknown ports REJECT); the CIDRs only add the DROP
    assert result.maps.node.service_ips == (ip("10.96.0.10"), ip("fd00:10:96::10"))
    assert ("service CIDRs 10.96.0.0/12, 10.200.0.0/16, fd00:10:96::/112 (ServiceCIDRs extra, kubernetes, "
            "overlap): new flows to an address in them that no service has are dropped") in result.notes
    assert result.skipped == Counter() and result.warnings == ()


def test_service_cidrs_ipv6_only_and_without_services() -> None:
    result = compile_objects([service_cidr("kubernetes", "fd00:10:96::/108")])
    assert result.maps.node.service_cidrs == ((ip("fd00:10:96::"), 108),)
    assert result.maps.services == [] and result.maps.frontends == []
    assert ("service CIDRs fd00:10:96::/108 (ServiceCIDR kubernetes): new flows to an address in them "
            "that no service has are dropped") in result.notes


def test_without_service_cidr_objects_nothing_changes() -> None:
    objects = [node("n1"), dual_svc()]
    plain = compile_objects(objects)
    assert plain.maps.node.service_cidrs == ()
    assert not any("service CIDR" in note for note in plain.notes)
    with_cidrs = compile_objects([*objects, service_cidr("kubernetes", "10.96.0.0/12")])
    assert with_cidrs.maps.node == replace(plain.maps.node, service_cidrs=((ip("10.96.0.0"), 12),))
    assert (with_cidrs.maps.services, with_cidrs.maps.frontends, with_cidrs.maps.backends) == (
        plain.maps.services, plain.maps.frontends, plain.maps.backends)


def test_bad_service_cidr_is_a_cluster_error() -> None:
    with pytest.raises(ClusterError, match=r"^<memory>: ServiceCIDR kubernetes: spec.cidrs\[0\]: must be a CIDR "
                                           r'such as 10.0.0.0/8, got "10.96.0.0"$'):
        compile_objects([service_cidr("kubernetes", "10.96.0.0")])

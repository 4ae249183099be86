"""fastpath.compiler: which frontends, services and backends a cluster state becomes."""
from __future__ import annotations

import random
from collections import Counter
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from fastpath.compiler import CompileResult, compile_maps
from fastpath.maps import PROTO_TCP, PROTO_UDP, Frontend
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


def node(name: str, zone: str | None = None) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}}


def compile_objects(objects: list[dict[str, Any]], node_name: str | None = None) -> CompileResult:
    return compile_maps(ClusterState.from_objects(objects), node_name)


def backend_addresses(result: CompileResult, service_name: str) -> list[str]:
    """The service's backends as "ip:port", in the order the maps hold them."""
    service = next(s for s in result.maps.services if s.name == service_name)
    table = {b.id: b for b in result.maps.backends}
    return [f"{IPv4Address(table[i].ip)}:{table[i].port}" for i in service.backends]


# The fixture cluster end to end --------------------------------------------------------------


def test_fixture_cluster_compiles_to_the_expected_maps() -> None:
    result = compile_maps(load_cluster([DATA]), "node-a")
    maps = result.maps
    assert [s.name for s in maps.services] == [
        "kube-system/kube-dns:dns", "kube-system/kube-dns:dns-tcp", "kube-system/kube-dns:metrics",
        "shop/cart", "shop/checkout:http", "shop/frontend:http", "shop/frontend:metrics", "shop/legacy:web",
        "shop/storefront:https", "shop/voip:sip",
    ]
    assert [s.id for s in maps.services] == list(range(1, 11))
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
    ]
    assert [s.backends for s in maps.services] == [
        (1, 9), (1, 9), (2, 10), (5,), (6,), (3, 11), (4, 12), (), (7,), (8,)]
    def ip(text: str) -> int:
        return int(IPv4Address(text))

    assert maps.frontends == [
        Frontend(ip("10.96.0.10"), 53, PROTO_UDP, 1), Frontend(ip("10.96.0.10"), 53, PROTO_TCP, 2),
        Frontend(ip("10.96.0.10"), 9153, PROTO_TCP, 3), Frontend(ip("10.96.10.20"), 80, PROTO_TCP, 4),
        Frontend(ip("10.96.10.40"), 80, PROTO_TCP, 5), Frontend(ip("10.96.10.10"), 80, PROTO_TCP, 6),
        Frontend(ip("10.96.10.10"), 9090, PROTO_TCP, 7), Frontend(ip("10.96.10.70"), 80, PROTO_TCP, 8),
        Frontend(ip("10.96.10.50"), 443, PROTO_TCP, 9), Frontend(ip("10.96.10.60"), 5060, PROTO_TCP, 10),
    ]
    assert all(f.kind == "ClusterIP" for f in maps.frontends)  # NodePort/LB/external IPs come later
    assert result.skipped == Counter({"headless service": 1, "ExternalName service": 1, "SCTP service port": 1,
                                      "IPv6 EndpointSlice": 1, "IPv6 cluster IP": 1})
    assert "shop/legacy:web: no usable endpoint; traffic to it is rejected" in result.notes
    assert "shop/checkout:http: no ready endpoint; using 1 serving terminating endpoint(s)" in result.notes
    assert result.warnings == ()


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
    assert result.notes == ("default/web:http: no ready endpoint; using 2 serving terminating endpoint(s)",)


def test_service_without_usable_endpoints_keeps_its_frontend() -> None:
    result = compile_objects([
        svc("web", [port(80, "http")]),
        eps("web-1", "web", [port(8080, "http")], [ep("10.0.0.1", ready=False, serving=False)]),
        svc("lonely", [port(80, "http")], cluster_ip="10.96.0.11"),
    ])
    assert [s.backends for s in result.maps.services] == [(), ()]
    assert len(result.maps.frontends) == 2  # packets to them are rejected, not passed
    assert result.maps.backends == []
    assert result.notes == ("default/lonely:http: no usable endpoint; traffic to it is rejected",
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


def test_headless_external_name_sctp_and_ipv6_are_skipped() -> None:
    result = compile_objects([
        svc("headless", [port(80, "http")], cluster_ip="None"),
        svc("ext", [port(80, "http")], cluster_ip=None, type="ExternalName", externalName="db.example.com"),
        svc("sctp", [port(9, "sig", "SCTP"), port(10, "web")], cluster_ip="10.96.0.5"),
        svc("v6", [port(80, "http")], cluster_ip="fd00::10"),
        svc("dual", [port(80, "http")], cluster_ip="fd00::11", clusterIPs=["fd00::11", "10.96.0.11"]),
        eps("headless-1", "headless", [port(80, "http")], [ep("10.0.0.1")]),
        eps("dual-1", "dual", [port(8080, "http")], [ep("fd00:244::1")], address_type="IPv6"),
        eps("dual-2", "dual", [port(8080, "http")], [ep("10.0.0.2")]),
    ])
    assert [s.name for s in result.maps.services] == ["default/dual:http", "default/sctp:web"]
    assert backend_addresses(result, "default/dual:http") == ["10.0.0.2:8080"]
    assert result.maps.frontends[0].ip == int(IPv4Address("10.96.0.11"))
    assert result.skipped == Counter({
        "headless service": 1, "ExternalName service": 1, "SCTP service port": 1,
        "service without an IPv4 cluster IP": 1, "IPv6 cluster IP": 1, "IPv6 EndpointSlice": 1})
    assert "skipped 1 SCTP service port" in result.notes


def test_node_port_and_load_balancer_services_get_only_their_cluster_ip() -> None:
    lb = svc("lb", [{"name": "https", "port": 443, "protocol": "TCP", "nodePort": 31443}], type="LoadBalancer",
             externalIPs=["198.51.100.7"])
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.10", "ipMode": "VIP"}]}}
    result = compile_objects([lb, eps("lb-1", "lb", [port(8443, "https")], [ep("10.0.0.1")])])
    assert result.maps.frontends == [Frontend(int(IPv4Address("10.96.0.10")), 443, PROTO_TCP, 1, "ClusterIP")]


def test_frontend_conflict_keeps_the_first_and_warns() -> None:
    result = compile_objects([
        svc("b", [port(80, "http")], cluster_ip="10.96.0.1"),
        svc("a", [port(80, "http")], cluster_ip="10.96.0.1"),
    ])
    assert [(f.service, result.maps.services[f.service - 1].name) for f in result.maps.frontends] == [
        (1, "default/a:http")]
    assert result.warnings == (
        "default/b:http: 10.96.0.1:80/TCP is already the ClusterIP frontend of default/a:http; ignored",)


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
    assert backend_addresses(compile_objects(local_service_objects(), "n1"), "default/web:http") == ["10.0.0.1:8080"]
    assert backend_addresses(compile_objects(local_service_objects(), "n2"), "default/web:http") == ["10.0.0.2:8080"]


def test_internal_traffic_policy_local_falls_back_to_local_terminating() -> None:
    objects = local_service_objects()
    objects[3]["endpoints"][1]["conditions"] = {"ready": False, "serving": False}
    assert backend_addresses(compile_objects(objects, "n2"), "default/web:http") == ["10.0.0.3:8080"]


def test_internal_traffic_policy_local_without_a_node_has_no_endpoint() -> None:
    result = compile_objects(local_service_objects())
    assert backend_addresses(result, "default/web:http") == []
    assert result.notes == ("default/web:http: internalTrafficPolicy Local and no local endpoint (no node given)",)


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
    result = compile_objects(hinted([["zone-a"], ["zone-b"]]))
    assert backend_addresses(result, "default/web:http") == ["10.0.0.1:8080", "10.0.0.2:8080"]


def test_node_hints_come_before_zone_hints() -> None:
    objects = hinted([["zone-a"], ["zone-a"], ["zone-b"]], nodes=[["n2"], ["n1"], ["n3"]])
    assert backend_addresses(compile_objects(objects, "n1"), "default/web:http") == ["10.0.0.2:8080"]


def test_unknown_node_is_an_error() -> None:
    with pytest.raises(ClusterError, match=r"^no Node named 'n9' in the cluster state \(Nodes: n1, n2\)$"):
        compile_objects(local_service_objects(), "n9")
    # Without any Node objects, a node name still decides locality.
    objects = [o for o in local_service_objects() if o["kind"] != "Node"]
    assert backend_addresses(compile_objects(objects, "n1"), "default/web:http") == ["10.0.0.1:8080"]

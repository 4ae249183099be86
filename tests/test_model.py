"""fastpath.model: reading kubectl output into validated dataclasses, and its one-line errors."""
from __future__ import annotations

import gc
import json
import pickle
from collections import Counter
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastpath import model
from fastpath.kubeyaml import _load_plain_yaml, _NotPlainData, load_yaml
from fastpath.model import (
    ClusterError,
    ClusterState,
    ContainerPort,
    EndpointConditions,
    EndpointPort,
    LoadBalancerIngress,
    NodeAddress,
    ObjectReference,
    ServiceCIDR,
    ServicePort,
    load_cluster,
    parse_cidr,
    parse_ip,
)
from hypothesis import given, settings
from hypothesis import strategies as st

DATA = Path(__file__).parent / "data" / "cluster"
SHOP = DATA / "shop"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def service(name: str = "web", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    body = {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": body}


def error_of(objects: list[Any]) -> str:
    with pytest.raises(ClusterError) as caught:
        ClusterState.from_objects(objects)
    return str(caught.value)


def load_error(*paths: str | Path) -> str:
    with pytest.raises(ClusterError) as caught:
        load_cluster(paths)
    return str(caught.value)


# --------------------------------------------------------------------------------------------
# Reading paths


def test_folder_is_read_recursively_in_sorted_order() -> None:
    state = load_cluster([DATA])
    relative = [str(Path(source).relative_to(DATA)) for source in state.sources]
    # README.txt is not a cluster file; nodes/ sorts between kube-proxy.yaml and services.yaml.
    assert relative == ["kube-system.json", "shop/endpointslices.json", "shop/kube-proxy.yaml",
                        "shop/nodes/nodes.yml", "shop/services.yaml"]
    assert state.skipped == Counter({"ConfigMap": 2, "DaemonSet": 1})
    assert len(state.services) == 9
    assert len(state.endpoint_slices) == 8
    assert [node.name for node in state.nodes] == ["node-a", "node-b"]
    assert [pod.name for pod in state.pods] == ["coredns-7db6d8ff4d-vx5lm"]
    assert state.proxy_config is not None


def test_kind_list_yaml_services() -> None:
    state = load_cluster([SHOP / "services.yaml"])
    by_name = {s.name: s for s in state.services}
    assert list(by_name) == ["frontend", "cart", "db", "payments", "checkout", "storefront", "voip", "legacy"]

    frontend = by_name["frontend"]
    assert (frontend.namespace, frontend.type, frontend.cluster_ips, frontend.headless) == (
        "shop", "ClusterIP", ("10.96.10.10",), False)
    assert frontend.ports == (ServicePort("http", "TCP", 80, "http"), ServicePort("metrics", "TCP", 9090, 9090))
    assert frontend.selector == (("app", "frontend"),)
    assert (frontend.session_affinity, frontend.affinity_timeout) == ("None", None)
    assert (frontend.external_traffic_policy, frontend.internal_traffic_policy) == ("Cluster", "Cluster")

    assert by_name["cart"].cluster_ip == "10.96.10.20"  # written 10.96.10.020: decimal, not octal
    assert by_name["cart"].ports == (ServicePort("", "TCP", 80, 8080),)
    assert by_name["db"].headless and by_name["db"].cluster_ips == () and by_name["db"].cluster_ip is None
    assert by_name["payments"].type == "ExternalName"
    assert by_name["payments"].external_name == "payments.example.com"
    assert by_name["checkout"].ports[0].node_port == 30080

    lb = by_name["storefront"]
    assert lb.type == "LoadBalancer"
    assert lb.external_traffic_policy == "Local"
    assert (lb.session_affinity, lb.affinity_timeout) == ("ClientIP", 600)
    assert lb.external_ips == ("198.51.100.7",)
    assert lb.load_balancer_source_ranges == ("198.51.100.0/24", "10.0.0.0/8")  # trimmed, host bits masked
    assert lb.load_balancer_ingress == (
        LoadBalancerIngress(ip="203.0.113.10", ip_mode="VIP"),
        LoadBalancerIngress(ip=None, hostname="storefront.lb.example.net", ip_mode="Proxy"),
    )
    assert by_name["voip"].cluster_ips == ("10.96.10.60", "fd00:10:96::60")
    assert by_name["voip"].ports[1].protocol == "SCTP"
    assert by_name["legacy"].selector is None


def test_json_kind_list_endpoint_slices() -> None:
    state = load_cluster([SHOP / "endpointslices.json"])
    slices = {s.name: s for s in state.endpoint_slices}
    assert len(slices) == 7
    frontend = slices["frontend-7xk2p"]
    assert (frontend.namespace, frontend.service_name, frontend.address_type) == ("shop", "frontend", "IPv4")
    assert frontend.ports == (EndpointPort("metrics", "TCP", 9090), EndpointPort("http", "TCP", 8080))
    first = frontend.endpoints[0]
    assert first.addresses == ("10.244.1.10",)
    assert first.conditions == EndpointConditions(ready=True, serving=True, terminating=False)
    assert (first.node_name, first.zone) == ("node-a", "zone-a")
    assert first.target_ref == ObjectReference("Pod", "shop", "frontend-6d8f9c7b5-k2x4q")
    assert slices["cart-m9v2d"].ports == (EndpointPort("", "TCP", 8080),)
    checkout = slices["checkout-c3d5f"].endpoints[0].conditions
    assert (checkout.is_ready, checkout.is_serving, checkout.is_terminating) == (False, True, True)
    assert slices["voip-p2q4r"].address_type == "IPv6"
    assert slices["voip-p2q4r"].endpoints[0].addresses == ("fd00:10:244:1::60",)


def test_json_array_with_pod_and_skipped_kind() -> None:
    state = load_cluster([DATA / "kube-system.json"])
    assert [s.name for s in state.services] == ["kube-dns"]
    assert [p.protocol for p in state.services[0].ports] == ["UDP", "TCP", "TCP"]
    assert state.skipped == Counter({"ConfigMap": 1})
    pod = state.pods[0]
    assert (pod.namespace, pod.node_name, pod.pod_ips, pod.phase, pod.ready, pod.terminating) == (
        "kube-system", "node-a", ("10.244.1.2",), "Running", True, False)
    assert pod.labels == (("k8s-app", "kube-dns"), ("pod-template-hash", "7db6d8ff4d"))
    assert pod.ports[0] == ContainerPort("dns", "UDP", 53)


def test_multi_document_yaml_with_proxy_config() -> None:
    state = load_cluster([SHOP / "kube-proxy.yaml"])
    assert state.skipped == Counter({"ConfigMap": 1, "DaemonSet": 1})  # the trailing empty document is nothing
    config = state.proxy_config
    assert config is not None
    assert config.cluster_cidrs == ("10.244.0.0/16", "fd00:10:244::/56")
    assert config.node_port_addresses == ("192.168.0.0/16",)
    assert (config.bind_address, config.hostname_override) == ("0.0.0.0", None)
    assert (config.masquerade_all, config.mode, config.detect_local_mode, config.ipvs_scheduler) == (
        False, "nftables", "ClusterCIDR", "mh")
    conntrack = config.conntrack
    assert (conntrack.max_per_core, conntrack.min) == (32768, 131072)
    assert (conntrack.tcp_established_timeout, conntrack.tcp_close_wait_timeout) == (86400.0, 3600.0)
    assert (conntrack.udp_timeout, conntrack.udp_stream_timeout) == (30.0, 120.0)


def test_multi_document_nodes() -> None:
    state = load_cluster([SHOP / "nodes" / "nodes.yml"])
    node_a, node_b = state.nodes
    assert node_a.zone == "zone-a" and node_a.pod_cidrs == ("10.244.1.0/24",)
    assert node_a.addresses == (NodeAddress("InternalIP", "192.168.1.11"), NodeAddress("Hostname", "node-a"))
    assert node_b.pod_cidrs == ("10.244.2.0/24",)  # from the single podCIDR field
    assert node_b.ips() == ("192.168.1.12", "203.0.113.12")
    assert node_b.ips(6) == ()
    assert state.node("node-b") is node_b and state.node("node-c") is None


def test_nested_and_typed_lists() -> None:
    nested = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "List", "items": [service("a")]},
        service("b"),
    ]}
    # The raw API's typed lists leave kind/apiVersion out of their items.
    typed = {"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "9"},
             "items": [{k: v for k, v in service("c").items() if k not in ("kind", "apiVersion")}]}
    state = ClusterState.from_objects([nested, typed, {"apiVersion": "v1", "kind": "List", "items": []}])
    assert [s.name for s in state.services] == ["a", "b", "c"]
    assert state.sources == ("<memory>",)


def test_same_kind_in_another_api_group_is_skipped() -> None:
    knative = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "x"},
               "spec": {"template": {}}}
    state = ClusterState.from_objects([knative, {"apiVersion": "apps/v1", "kind": "Deployment"}])
    assert state.services == ()
    assert state.skipped == Counter({"Service (serving.knative.dev/v1)": 1, "Deployment": 1})


def test_yaml_file_holding_json_and_json_file_holding_one_object(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", json.dumps(service("a"), indent=2))  # `kubectl -o json > a.yaml`
    write(tmp_path, "b.json", json.dumps(service("b")))
    write(tmp_path, "c.yaml", "{apiVersion: v1, kind: Service, metadata: {name: c}, spec: {clusterIP: None}}\n")
    state = load_cluster([tmp_path])
    assert [s.name for s in state.services] == ["a", "b", "c"]
    assert state.services[2].headless


def test_byte_order_marks(tmp_path: Path) -> None:
    text = json.dumps(service())
    (tmp_path / "utf8.json").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "utf16.yaml").write_bytes(yaml.safe_dump(service("b")).encode("utf-16"))  # PowerShell `>`
    assert [s.name for s in load_cluster([tmp_path]).services] == ["b", "web"]


def test_single_path_argument_and_files_read_once(tmp_path: Path) -> None:
    path = write(tmp_path, "svc.yaml", json.dumps(service()))
    assert len(load_cluster(str(path)).services) == 1
    state = load_cluster([tmp_path, path, tmp_path / "." / "svc.yaml"])
    assert len(state.services) == 1 and state.sources == (str(path),)


def test_hidden_folders_and_other_suffixes_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "svc.yaml", json.dumps(service()))
    write(tmp_path, ".git/svc.yaml", json.dumps(service()))  # would be a duplicate if read
    write(tmp_path, "notes.txt", "not yaml: [")
    assert len(load_cluster([tmp_path]).services) == 1


def test_absent_conditions_and_defaults_are_kept_as_written() -> None:
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "ports": [{"port": 8080}, {"name": "all"}],
        "endpoints": [{"addresses": ["10.0.0.1", "10.0.0.2"],
                       "hints": {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "n1"}]}},
                      {"addresses": ["10.0.0.3"], "conditions": {"terminating": True}}],
    }
    state = ClusterState.from_objects([endpoint_slice, service(ports=[{"port": 80}])])
    (parsed,) = state.endpoint_slices
    assert parsed.ports == (EndpointPort("", "TCP", 8080), EndpointPort("all", "TCP", None))
    first, second = parsed.endpoints
    assert first.conditions == EndpointConditions(None, None, None)
    assert (first.conditions.is_ready, first.conditions.is_serving, first.conditions.is_terminating) == (
        True, True, False)
    assert (first.hints_for_zones, first.hints_for_nodes, first.target_ref) == (("zone-a",), ("n1",), None)
    assert second.conditions == EndpointConditions(None, None, True)
    assert state.services[0].ports == (ServicePort("", "TCP", 80, 80),)  # targetPort defaults to port
    assert state.services[0].namespace == "default"


def test_kube_proxy_configuration_without_metadata_and_defaults() -> None:
    state = ClusterState.from_objects([{"apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                                        "kind": "KubeProxyConfiguration"}])
    config = state.proxy_config
    assert config is not None
    assert (config.cluster_cidrs, config.node_port_addresses, config.masquerade_all, config.mode) == ((), (), False, "")
    assert config.conntrack.tcp_established_timeout is None


# --------------------------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize(("text", "expected"), [
    ("172.30.0.041", "172.30.0.41"),
    ("010.000.001.1", "10.0.1.1"),
    ("10.96.0.10", "10.96.0.10"),
    ("fd00:10:96::a", "fd00:10:96::a"),
    ("FD00:0010::0A", "fd00:10::a"),
    ("::ffff:10.0.0.010", "::ffff:10.0.0.10"),
])
def test_parse_ip_is_sloppy_like_kubernetes(text: str, expected: str) -> None:
    assert parse_ip(text) == ip_address(expected)


@pytest.mark.parametrize("text", ["1.2.3", "1.2.3.256", " 1.2.3.4", "1.2.3.4/32", "fe80::1%eth0", "１.2.3.4",
                                  "1.2.3.-4", "", "::g"])
def test_parse_ip_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ip(text)


def test_parse_cidr() -> None:
    assert parse_cidr(" 10.0.0.7/8 ") == "10.0.0.0/8"
    assert parse_cidr("192.168.001.0/24") == "192.168.1.0/24"
    assert parse_cidr("fd00::1/64") == "fd00::/64"
    for bad in ("10.0.0.0", "10.0.0.0/33", "10.0.0.0/x"):
        with pytest.raises(ValueError):
            parse_cidr(bad)


def test_leading_zero_addresses_everywhere() -> None:
    endpoint_slice = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                      "metadata": {"name": "web-1"}, "endpoints": [{"addresses": ["10.244.01.005"]}]}
    state = ClusterState.from_objects([
        service(clusterIP="10.96.000.010", clusterIPs=["10.96.000.010"], externalIPs=["192.0.2.07"]),
        endpoint_slice,
    ])
    assert state.services[0].cluster_ips == ("10.96.0.10",)
    assert state.services[0].external_ips == ("192.0.2.7",)
    assert state.endpoint_slices[0].endpoints[0].addresses == ("10.244.1.5",)


# --------------------------------------------------------------------------------------------
# Errors: one line naming file, object and field


def test_error_shape_matches_the_documented_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "cluster.yaml", """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: a
    port: 80
  - name: b
    port: http
""")
    with pytest.raises(ClusterError) as caught:
        load_cluster(["cluster.yaml"])
    error = caught.value
    assert str(error) == 'cluster.yaml: Service default/web: spec.ports[1].port: must be an integer 1-65535, got "http"'
    assert (error.source, error.obj, error.path) == ("cluster.yaml", "Service default/web", "spec.ports[1].port")
    assert pickle.loads(pickle.dumps(error)).path == "spec.ports[1].port"


@pytest.mark.parametrize(("spec", "message"), [
    ({"ports": [{"port": 70000}]}, "spec.ports[0].port: must be an integer 1-65535, got 70000"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port: must be an integer 1-65535, got 0"),
    ({"ports": [{"port": True}]}, "spec.ports[0].port: must be an integer 1-65535, got true"),
    ({"ports": [{"port": 80, "protocol": "HTTP"}]},
     'spec.ports[0].protocol: must be one of TCP, UDP, SCTP, got "HTTP"'),
    ({"ports": [{"port": 80, "targetPort": "8080"}]},
     'spec.ports[0].targetPort: must be an integer 1-65535 or a port name, got "8080"'),
    ({"ports": [{"port": 80, "targetPort": 65536}]}, "spec.ports[0].targetPort: must be an integer 1-65535, got 65536"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]},
     "spec.ports[1].name: duplicates spec.ports[0] (a/TCP)"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]},
     "spec.ports[1].port: duplicates spec.ports[0] (80/TCP)"),
    ({"clusterIP": "10.96.0.300"}, 'spec.clusterIP: must be an IP address, got "10.96.0.300"'),
    ({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "bogus"]},
     'spec.clusterIPs[1]: must be an IP address, got "bogus"'),
    ({"clusterIP": "10.96.0.2", "clusterIPs": ["10.96.0.1"]},
     'spec.clusterIP: must equal spec.clusterIPs[0] "10.96.0.1", got "10.96.0.2"'),
    ({"clusterIPs": ["10.96.0.1", "10.96.0.2"]},
     'spec.clusterIPs: must hold at most one address per family, got ["10.96.0.1", "10.96.0.2"]'),
    ({"externalIPs": ["203.0.113.1", "nope"]}, 'spec.externalIPs[1]: must be an IP address, got "nope"'),
    ({"type": "Ingress"}, 'spec.type: must be one of ClusterIP, NodePort, LoadBalancer, ExternalName, got "Ingress"'),
    ({"loadBalancerSourceRanges": ["10.0.0.0/40"]},
     'spec.loadBalancerSourceRanges[0]: must be a CIDR such as 10.0.0.0/8, got "10.0.0.0/40"'),
    ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds: must be an integer 1-86400, got 0"),
    ({"selector": {"app": 1}}, 'spec.selector["app"]: must map strings to strings, got 1'),
    ({"ports": {"port": 80}}, 'spec.ports: must be a list, got {"port": 80}'),
])
def test_service_field_errors(spec: dict[str, Any], message: str) -> None:
    assert error_of([service(**spec)]) == f"<memory>: Service default/web: {message}"


def test_load_balancer_ingress_errors() -> None:
    bad_ip = service()
    bad_ip["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.999"}]}}
    assert error_of([bad_ip]) == ('<memory>: Service default/web: status.loadBalancer.ingress[0].ip: '
                                  'must be an IP address, got "203.0.113.999"')
    bad_mode = service()
    bad_mode["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.9", "ipMode": "Direct"}]}}
    assert error_of([bad_mode]).endswith('ipMode: must be one of VIP, Proxy, got "Direct"')


def slice_object(**fields: Any) -> dict[str, Any]:
    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "web-abc", "namespace": "prod", "labels": {"kubernetes.io/service-name": "web"}}}
    body.update(fields)
    return body


@pytest.mark.parametrize(("fields", "message"), [
    ({"addressType": "IPv5"}, 'addressType: must be one of IPv4, IPv6, FQDN, got "IPv5"'),
    ({"endpoints": [{"addresses": ["fd00::1"]}]},
     'endpoints[0].addresses[0]: must be an IPv4 address, got "fd00::1"'),
    ({"addressType": "IPv6", "endpoints": [{"addresses": ["10.0.0.1"]}]},
     'endpoints[0].addresses[0]: must be an IPv6 address, got "10.0.0.1"'),
    ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses: must hold at least one address"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]},
     'endpoints[0].conditions.ready: must be true or false, got "yes"'),
    ({"ports": [{"name": "http", "port": 99999}]}, "ports[0].port: must be an integer 1-65535, got 99999"),
    ({"ports": [{"name": "http", "port": 80, "protocol": "ICMP"}]},
     'ports[0].protocol: must be one of TCP, UDP, SCTP, got "ICMP"'),
    ({"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]},
     "ports[1].name: duplicates ports[0] (http/TCP)"),
    ({"endpoints": [{"addresses": ["10.0.0.1"], "hints": {"forZones": [{}]}}]},
     "endpoints[0].hints.forZones[0].name: required"),
])
def test_endpoint_slice_field_errors(fields: dict[str, Any], message: str) -> None:
    assert error_of([slice_object(**fields)]) == f"<memory>: EndpointSlice prod/web-abc: {message}"


def test_node_and_proxy_config_errors() -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.300"}]}}
    assert error_of([node]) == ('<memory>: Node n1: status.addresses[0].address: '
                                'must be an IP address, got "192.168.1.300"')
    config = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
              "conntrack": {"tcpEstablishedTimeout": "1 day"}}
    assert error_of([config]) == ('<memory>: KubeProxyConfiguration: conntrack.tcpEstablishedTimeout: '
                                  'must be a duration such as 1h30m0s, got "1 day"')
    config = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
              "clusterCIDR": "10.244.0.0/16,10.300.0.0/16"}
    assert error_of([config]) == ('<memory>: KubeProxyConfiguration: clusterCIDR: '
                                  'must be a CIDR such as 10.0.0.0/8, got "10.300.0.0/16"')
    config = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "bpf"}
    assert error_of([config]).endswith('mode: must be one of iptables, ipvs, nftables, kernelspace, got "bpf"')
    config = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
              "nodePortAddresses": ["10.0.0.0/8", "primary"]}
    assert error_of([config]) == ('<memory>: KubeProxyConfiguration: nodePortAddresses[1]: "primary" cannot be '
                                  'combined with CIDRs, got ["10.0.0.0/8", "primary"]')
    config = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
              "detectLocalMode": "PodCIDR"}
    assert error_of([config]).endswith('detectLocalMode: must be one of ClusterCIDR, NodeCIDR, BridgeInterface, '
                                       'InterfaceNamePrefix, got "PodCIDR"')
    config = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
              "bindAddress": "0.0.0.0:10249"}
    assert error_of([config]).endswith('bindAddress: must be an IP address, got "0.0.0.0:10249"')


SERVICE_CIDRS_YAML = """\
apiVersion: v1
items:
- apiVersion: networking.k8s.io/v1
  kind: ServiceCIDR
  metadata:
    creationTimestamp: "2025-05-01T10:00:00Z"
    finalizers:
    - networking.k8s.io/service-cidr-finalizer
    generation: 1
    labels:
      kubernetes.io/service-ip-repair-controller: "true"
    name: kubernetes
    resourceVersion: "17"
    uid: 0d3c9e8a-6f1e-4c2b-9a57-1e3b0c2d4f60
  spec:
    cidrs:
    - 10.96.0.0/12
    - fd00:10:96::/112
  status:
    conditions:
    - lastTransitionTime: "2025-05-01T10:00:01Z"
      message: Kubernetes Service CIDR is ready
      reason: ""
      status: "True"
      type: Ready
- apiVersion: networking.k8s.io/v1beta1
  kind: ServiceCIDR
  metadata:
    name: extra-v6
  spec:
    cidrs:
    - 2001:db8:96::/108
kind: List
metadata:
  resourceVersion: ""
"""


def service_cidr(name: str = "kubernetes", *cidrs: Any, api_version: str = "networking.k8s.io/v1") -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": "ServiceCIDR", "metadata": {"name": name},
            "spec": {"cidrs": list(cidrs)}}


def test_service_cidrs_as_kubectl_prints_them(tmp_path: Path) -> None:
    state = load_cluster([write(tmp_path, "servicecidrs.yaml", SERVICE_CIDRS_YAML)])
    assert state.service_cidrs == (ServiceCIDR("kubernetes", ("10.96.0.0/12", "fd00:10:96::/112")),
                                   ServiceCIDR("extra-v6", ("2001:db8:96::/108",)))
    assert state.skipped == Counter()  # understood, no longer skipped
    # Normalised like other CIDRs: host bits masked off, leading zeros decimal, one of each family.
    (parsed,) = ClusterState.from_objects([service_cidr("k", "fd00:10:96::1/112", "10.096.0.1/12")]).service_cidrs
    assert parsed.cidrs == ("fd00:10:96::/112", "10.96.0.0/12")
    assert ClusterState.from_objects([]).service_cidrs == ()
    # The alpha version of Kubernetes 1.27-1.30 has the same spec.
    (alpha,) = ClusterState.from_objects([service_cidr("k", "10.96.0.0/12",
                                                       api_version="networking.k8s.io/v1alpha1")]).service_cidrs
    assert alpha.cidrs == ("10.96.0.0/12",)


def test_service_cidr_errors() -> None:
    assert error_of([service_cidr("kubernetes", "10.96.0.0/33")]) == (
        '<memory>: ServiceCIDR kubernetes: spec.cidrs[0]: must be a CIDR such as 10.0.0.0/8, got "10.96.0.0/33"')
    assert error_of([service_cidr("kubernetes", "10.96.0.0/12", "fd00:10:96::")]) == (
        '<memory>: ServiceCIDR kubernetes: spec.cidrs[1]: must be a CIDR such as 10.0.0.0/8, got "fd00:10:96::"')
    assert error_of([service_cidr("kubernetes", "10.96.0.0/12", 7)]).endswith("spec.cidrs[1]: must be a CIDR "
                                                                             "such as 10.0.0.0/8, got 7")
    assert error_of([service_cidr("two", "10.96.0.0/12", "10.100.0.0/16")]) == (
        '<memory>: ServiceCIDR two: spec.cidrs: must hold at most one CIDR per family, '
        'got ["10.96.0.0/12", "10.100.0.0/16"]')
    assert error_of([service_cidr("empty")]) == "<memory>: ServiceCIDR empty: spec.cidrs: must hold at least one CIDR"
    no_spec = service_cidr("bare")
    del no_spec["spec"]
    assert error_of([no_spec]) == "<memory>: ServiceCIDR bare: spec.cidrs: must hold at least one CIDR"
    one = service_cidr("flat")
    one["spec"]["cidrs"] = "10.96.0.0/12"
    assert error_of([one]) == '<memory>: ServiceCIDR flat: spec.cidrs: must be a list, got "10.96.0.0/12"'
    assert error_of([service_cidr("old", "10.96.0.0/12", api_version="networking.k8s.io/v1alpha2")]) == (
        "<memory>: ServiceCIDR old: apiVersion: must be networking.k8s.io/v1 or networking.k8s.io/v1beta1 "
        'or networking.k8s.io/v1alpha1, got "networking.k8s.io/v1alpha2"')
    assert error_of([service_cidr("", "10.96.0.0/12")]) == "<memory>: ServiceCIDR (no name): metadata.name: required"
    assert error_of([service_cidr("k", "10.96.0.0/12"), service_cidr("k", "10.97.0.0/16")]) == (
        "<memory>: ServiceCIDR k: duplicate object (appears twice in this file)")
    # Another API group's ServiceCIDR is not ours.
    other = service_cidr("k", "10.96.0.0/12", api_version="example.com/v1")
    assert ClusterState.from_objects([other]).skipped == Counter({"ServiceCIDR (example.com/v1)": 1})


def test_kube_proxy_configuration_node_fields() -> None:
    config = ClusterState.from_objects([{
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "nodePortAddresses": ["primary"], "bindAddress": "192.168.000.010", "detectLocalMode": "NodeCIDR",
        "hostnameOverride": "node-a"}]).proxy_config
    assert config is not None
    assert (config.node_port_addresses, config.bind_address, config.detect_local_mode, config.hostname_override) == (
        ("primary",), "192.168.0.10", "NodeCIDR", "node-a")


def test_pod_named_ports_include_sidecars() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "shop"},
           "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}],
                    "initContainers": [
                        {"name": "setup", "ports": [{"name": "setup", "containerPort": 9000}]},
                        {"name": "mesh", "restartPolicy": "Always",
                         "ports": [{"name": "mesh", "containerPort": 15001, "protocol": "UDP"}]}]},
           "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]}}
    (parsed,) = ClusterState.from_objects([pod]).pods
    assert parsed.ports == (ContainerPort("http", "TCP", 8080), ContainerPort("mesh", "UDP", 15001))
    assert parsed.pod_ips == ("10.244.1.5", "fd00::5")
    assert (parsed.ready, parsed.terminating, parsed.node_name) == (False, False, None)
    pod["spec"]["initContainers"][1]["ports"][0]["containerPort"] = 0
    assert error_of([pod]) == ("<memory>: Pod shop/web-0: spec.initContainers[1].ports[0].containerPort: "
                               "must be an integer 1-65535, got 0")


def test_object_level_errors() -> None:
    assert error_of([{"apiVersion": "v1", "metadata": {"name": "x"}}]) == "<memory>: object 1: kind: required"
    assert error_of([{"kind": "Service"}]) == "<memory>: object 1: apiVersion: required"
    assert error_of([["not", "an", "object"]]) == (
        '<memory>: object 1: expected a Kubernetes object (a mapping), got ["not", "an", "object"]')
    assert error_of([{"apiVersion": "v1", "kind": "List", "items": [service(), 7]}]) == (
        "<memory>: object 1 items[1]: expected a Kubernetes object (a mapping), got 7")
    nameless = service()
    del nameless["metadata"]["name"]
    assert error_of([nameless]) == "<memory>: Service default/(no name): metadata.name: required"
    old = slice_object(apiVersion="discovery.k8s.io/v1beta1")
    assert error_of([old]) == ('<memory>: EndpointSlice prod/web-abc: apiVersion: '
                               'must be discovery.k8s.io/v1, got "discovery.k8s.io/v1beta1"')


def test_duplicate_objects(tmp_path: Path) -> None:
    assert error_of([service(), service(name="other"), service()]) == (
        "<memory>: Service default/web: duplicate object (appears twice in this file)")
    # Same name in another namespace or of another kind is fine.
    ClusterState.from_objects([service(), service(namespace="prod"), slice_object(metadata={"name": "web"})])

    write(tmp_path, "a.yaml", json.dumps(service()))
    write(tmp_path, "b.yaml", json.dumps(service()))
    assert load_error(tmp_path) == (
        f"{tmp_path / 'b.yaml'}: Service default/web: duplicate object (first read from {tmp_path / 'a.yaml'})")

    config = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration"}
    assert error_of([config, config]) == "<memory>: KubeProxyConfiguration: duplicate object (appears twice in this file)"


def test_syntax_errors_name_file_and_line(tmp_path: Path) -> None:
    bad_yaml = write(tmp_path, "bad.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: [web\n")
    message = load_error(bad_yaml)
    assert message.startswith(f"{bad_yaml}:5: invalid YAML: ")
    assert "\n" not in message

    second_doc = write(tmp_path, "second.yaml", "apiVersion: v1\nkind: ConfigMap\n---\nkind: Service\n  x: : y\n")
    assert load_error(second_doc).startswith(f"{second_doc}:5: invalid YAML: ")

    bad_json = write(tmp_path, "bad.json", '{\n  "kind": "Service",\n  "apiVersion": v1\n}\n')
    assert load_error(bad_json) == f"{bad_json}:3: invalid JSON: Expecting value (column 17)"

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"kind: \xff\xfe\n")
    assert load_error(binary) == f"{binary}: not UTF-8 text (byte 6)"


def test_missing_paths(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such file or folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    write(empty, "README.md", "nothing here")
    assert load_error(empty) == f"{empty}: no *.yaml, *.yml or *.json files in this folder"


def test_error_values_with_newlines_stay_on_one_line() -> None:
    message = error_of([service(clusterIP="10.0.0.1\nkind: evil")])
    assert "\n" not in message
    assert message == r'<memory>: Service default/web: spec.clusterIP: must be an IP address, got "10.0.0.1\nkind: evil"'


# --------------------------------------------------------------------------------------------
# The YAML fast path must read exactly what PyYAML's SafeLoader reads

TRICKY_YAML = [
    "a: 1\nb: 0o17\nc: 017\nd: 0x1F\ne: 1_000\nf: 1:20\ng: -3\n",
    "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: ~\ng: null\nh:\ni: ''\n",
    "a: 1.5\nb: .inf\nc: -.Inf\nd: 6.8523015e+5\ne: 1e3\n",
    'a: 2024-06-11T08:02:17Z\nb: 2024-06-11\nc: "2024-06-11T08:02:17Z"\n',
    "a: !!str 80\nb: '80'\nc: \"true\"\nd: |\n  multi\n  line\ne: >\n  folded\n  text\n",
    "{a: [1, 2, {b: c}], d: {}}\n",
    "---\n---\na: 1\n...\n---\n- x\n- - y\n  - z\n",
    "base: &base {port: 80}\nsvc:\n  <<: *base\n  name: web\n",  # anchors and merge keys
    "? [complex, key]\n: value\n",
    "a: !!int '42'\nb: !!float 1\nc: !!binary aGVsbG8=\n",
    "dup: 1\ndup: 2\n",
    "",
    "# only a comment\n",
    "- 10.96.0.10\n- fd00::10\n- 10:20:30\n- 0.0.0.0/0\n- 1.2.3.4:80\n",
]


@pytest.mark.parametrize("text", TRICKY_YAML)
def test_yaml_fast_path_matches_pyyaml(text: str) -> None:
    try:
        expected = list(yaml.load_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as error:  # e.g. an unhashable key: the same error, with its line
        with pytest.raises(type(error)):
            load_yaml(text)
    else:
        assert load_yaml(text) == expected


def test_yaml_fast_path_leaves_anchors_tags_and_complex_keys_to_pyyaml() -> None:
    assert _load_plain_yaml(TRICKY_YAML[0]) == [{"a": 1, "b": "0o17", "c": 15, "d": 31, "e": 1000, "f": 80, "g": -3}]
    for text in (TRICKY_YAML[7], TRICKY_YAML[8], TRICKY_YAML[9]):
        with pytest.raises(_NotPlainData):
            _load_plain_yaml(text)


def test_yaml_fast_path_on_the_fixtures() -> None:
    for path in sorted(DATA.rglob("*.y*ml")):
        text = path.read_text()
        assert _load_plain_yaml(text) == list(yaml.load_all(text, Loader=yaml.SafeLoader)), path


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["yes", "no", "on", "~", "null", "1:20", "0o7", "017", "0x1f", "1e3", "2024-01-02", "<<",
                     "=", "10.96.0.010", "-", "?", ":", "#", "'", '"']),
)
_documents = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.one_of(st.text(max_size=8), st.integers()),
                                                                 inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_documents, min_size=1, max_size=3), st.sampled_from([False, True, None]))
def test_yaml_fast_path_matches_pyyaml_on_generated_documents(documents: list[Any], flow: bool | None) -> None:
    text = yaml.safe_dump_all(documents, default_flow_style=flow, allow_unicode=True)
    assert load_yaml(text) == list(yaml.load_all(text, Loader=yaml.SafeLoader))


def test_pure_python_loader_gives_the_same_state(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = load_cluster([DATA])
    monkeypatch.setattr("fastpath.kubeyaml.YAML_LOADER", yaml.SafeLoader)  # PyYAML built without libyaml
    assert load_cluster([DATA]) == fast


def test_yaml_constructor_errors_are_reported_like_syntax_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "keys.yaml", "apiVersion: v1\nkind: Service\n? [a, b]\n: c\n")
    assert load_error(path) == f"{path}:3: invalid YAML: found unhashable key (column 3)"


# ------------------------------------------------------------------------------------------------
# The compiled reader of plain IPv4 endpoints (fastpath._compile.plain_ipv4_endpoint) against the
# model's field-by-field reader: whatever it takes, it reads as the full reader does.

_CANONICAL = ["10.244.1.5", "0.0.0.0", "255.255.255.255", "1.2.3.4"]
_ADDRESS_TEXTS = st.sampled_from([
    *_CANONICAL, "010.1.1.1", "1.2.3", "1.2.3.4.5", "256.1.1.1", " 1.2.3.4", "1.2.3.4\n", "1.2.3.4\x00",
    "\u0661.2.3.4", "1.2.3.\ud800", "fd00::1", "::ffff:1.2.3.4", "", "1..2.3", "01.2.3.4", "1.2.3.04",
])


def _mostly(plain: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values as the controller writes them two times in three, else anything (so that whole
    endpoints are often plain, one field at a time not)."""
    return st.one_of(plain, plain, anything)


_STRINGS = _mostly(st.sampled_from([None, "", "node-a", "zone-a", "web-1", "default"]),
                   st.one_of(st.integers(0, 3), st.booleans(), st.text(max_size=4)))
_CONDITION_VALUES = _mostly(st.sampled_from([None, True, False]), st.sampled_from([0, 1, "true", "false", 1.0]))


class _OtherDict(dict):
    """Not what a decoder gives: the compiled reader leaves it to the full reader."""


_raw_endpoints = st.fixed_dictionaries(
    {"addresses": _mostly(st.lists(st.sampled_from(_CANONICAL), min_size=1, max_size=3),
                          st.one_of(st.lists(_ADDRESS_TEXTS, max_size=3), st.lists(st.integers(0, 9), max_size=2),
                                    st.none(), _ADDRESS_TEXTS, st.tuples(_ADDRESS_TEXTS)))},
    optional={
        "conditions": _mostly(
            st.fixed_dictionaries({}, optional={"ready": _CONDITION_VALUES, "serving": _CONDITION_VALUES,
                                                "terminating": _CONDITION_VALUES}),
            st.one_of(st.none(), st.lists(st.booleans(), max_size=1),
                      st.fixed_dictionaries({"other": _CONDITION_VALUES}))),
        "targetRef": _mostly(
            st.fixed_dictionaries({}, optional={"kind": _STRINGS, "namespace": _STRINGS, "name": _STRINGS,
                                                "uid": _STRINGS}),
            st.one_of(st.none(), st.just("pod"))),
        "nodeName": _STRINGS,
        "zone": _STRINGS,
        "hints": _mostly(st.none(), st.one_of(st.just({}), st.just({"forZones": [{"name": "zone-a"}]}))),
        "deprecatedTopology": st.just({"a": "b"}),
    },
)


def _full_read(raw: Any) -> Any:
    o = model._Object("cluster.yaml", "EndpointSlice default/web-1")
    try:
        return model._endpoint(o, o.mapping(raw, "endpoints[0]"), "endpoints[0]", 4)
    except ClusterError as error:
        return error


@settings(max_examples=600, deadline=None)
@given(_raw_endpoints, st.booleans())
def test_compiled_plain_endpoint_reader_reads_as_the_full_reader(raw: dict[str, Any], other_dict: bool) -> None:
    if other_dict:
        raw = _OtherDict(raw)
    plain = model._compiled.plain_ipv4_endpoint(raw)
    full = _full_read(raw)
    if plain is not None:
        assert not other_dict
        assert plain == full
        assert type(plain.conditions) is EndpointConditions and plain.conditions == full.conditions
    # What the EndpointSlice controller writes always takes the compiled path.
    controller_shaped = (
        type(raw) is dict and set(raw) <= {"addresses", "conditions", "targetRef", "nodeName", "zone", "hints"}
        and type(raw["addresses"]) is list and raw["addresses"]
        and all(a in _CANONICAL for a in raw["addresses"])
        and raw.get("hints") is None
        and (raw.get("conditions") is None or (type(raw["conditions"]) is dict and all(
            value is None or type(value) is bool for value in raw["conditions"].values())
            and "other" not in raw["conditions"]))
        and (raw.get("targetRef") is None or (type(raw["targetRef"]) is dict and all(
            value is None or type(value) is str for value in raw["targetRef"].values())))
        and all(raw.get(key) is None or type(raw[key]) is str for key in ("nodeName", "zone")))
    if controller_shaped:
        assert plain is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(_raw_endpoints, max_size=6))
def test_a_slice_reads_its_endpoints_as_one_by_one(raws: list[dict[str, Any]]) -> None:
    """An IPv4 slice's endpoints, read with the compiled reader in one call and the rest field by
    field, are those reading them one at a time gives; with a bad one, the same (first) error."""
    def one_by_one() -> Any:
        o = model._Object("cluster.yaml", "EndpointSlice default/web-1")
        try:
            return [model._read_endpoint(o, raw, index, 4) for index, raw in enumerate(raws)]
        except ClusterError as error:
            return str(error)

    def in_one_call() -> Any:
        o = model._Object("cluster.yaml", "EndpointSlice default/web-1")
        try:
            return model._read_endpoints(o, raws, 4)
        except ClusterError as error:
            return str(error)

    expected = one_by_one()
    assert in_one_call() == expected
    endpoints, missing = model._compiled.plain_ipv4_endpoints(raws)
    assert [endpoint is None for endpoint in endpoints] == [
        model._compiled.plain_ipv4_endpoint(raw) is None for raw in raws]
    assert missing == sum(endpoint is None for endpoint in endpoints)


# The compiled reader of plain Services (fastpath._compile.plain_service) against the model's
# field-by-field reader, the same way.

_ODD = st.one_of(st.none(), st.integers(-1, 70000), st.booleans(), st.text(max_size=3), st.just([]),
                 st.just({}), st.floats(0, 1))
_raw_service_ports = st.lists(st.fixed_dictionaries(
    {"port": _mostly(st.sampled_from([80, 443, 53, 1, 65535]), _ODD)},
    optional={
        "name": _mostly(st.sampled_from([None, "", "http", "dns", "h\u00e9"]), _ODD),
        "protocol": _mostly(st.sampled_from([None, "", "TCP", "UDP", "SCTP"]), st.sampled_from(["tcp", "ICMP", 6])),
        "targetPort": _mostly(st.sampled_from([None, 0, 8080, "http", "web-2"]),
                              st.sampled_from(["8080", "", "h\u00e9", "\u00e9", 70000, -1, False, 8080.0])),
        "nodePort": _mostly(st.sampled_from([None, 0, 30080, 1, 65535]),
                            st.sampled_from([False, True, 0.0, 70000, -1, "30080"])),
        "appProtocol": st.just("http"),
    }), max_size=3)
_raw_service_specs = st.fixed_dictionaries(
    {"clusterIP": _mostly(st.sampled_from(["10.96.0.10", "10.96.93.253"]),
                          st.sampled_from([None, "", "None", "fd00::10", "010.96.0.1", "10.96.0.10 "]))},
    optional={
        "clusterIPs": _mostly(st.sampled_from([None, [], ["10.96.0.10"]]),
                              st.sampled_from([["10.96.0.11"], ["10.96.0.10", "fd00::10"], "10.96.0.10", ["None"]])),
        "type": _mostly(st.sampled_from([None, "", "ClusterIP", "NodePort", "LoadBalancer"]),
                        st.sampled_from(["ExternalName", "nodeport", "Other", 3])),
        "ports": _mostly(_raw_service_ports, st.one_of(st.none(), st.just("80"))),
        "selector": _mostly(st.dictionaries(st.sampled_from(["app", "tier", "b"]), st.sampled_from(["web", "x"]),
                                            max_size=3),
                            st.one_of(st.none(), st.just({"app": 3}), st.just(["app"]))),
        "sessionAffinity": _mostly(st.sampled_from([None, "", "None"]), st.sampled_from(["ClientIP", "none", 1])),
        "externalIPs": _mostly(st.sampled_from([None, []]), st.sampled_from([["192.0.2.1"], "192.0.2.1"])),
        "loadBalancerSourceRanges": _mostly(st.sampled_from([None, []]), st.just(["10.0.0.0/8"])),
        "externalTrafficPolicy": _mostly(st.sampled_from([None, "", "Cluster", "Local"]), st.sampled_from(["local", 1])),
        "internalTrafficPolicy": _mostly(st.sampled_from([None, "", "Cluster", "Local"]), st.sampled_from(["x", 1])),
        "publishNotReadyAddresses": _mostly(st.sampled_from([None, True, False]), st.sampled_from([1, "true"])),
        "externalName": st.just("db.example.com"),
        "ipFamilies": st.just(["IPv4"]),
    })
_raw_services = st.fixed_dictionaries(
    {"apiVersion": st.just("v1"), "kind": st.just("Service"),
     "spec": _mostly(_raw_service_specs, st.one_of(st.none(), st.just([])))},
    optional={"status": _mostly(st.sampled_from([None, {}, {"loadBalancer": {}}, {"loadBalancer": {"ingress": []}}]),
                                st.sampled_from([{"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}},
                                                 {"loadBalancer": []}, "up"]))})


def _full_read_of(reader: Any, raw: Any, label: str) -> Any:
    """What the model's full `reader` makes of `raw` (object default/`label`), or its error."""
    o = model._Object("cluster.yaml", f"default/{label}")
    try:
        return reader(o, raw, "default", label)
    except ClusterError as error:
        return error


def _full_service(raw: Any) -> Any:
    return _full_read_of(model._read_service, raw, "web")


def _assert_read_as_the_full_reader(plain: Any, full: Any, other_dict: bool) -> None:
    """A compiled reader's object (None: it left `raw` to the full reader) equals the full
    reader's, and it and its ports are left out of the cyclic collector."""
    if plain is not None:
        assert not other_dict
        assert plain == full
        assert not gc.is_tracked(plain) and not any(gc.is_tracked(port) for port in plain.ports)


@settings(max_examples=800, deadline=None)
@given(_raw_services, st.booleans())
def test_compiled_plain_service_reader_reads_as_the_full_reader(raw: dict[str, Any], other_dict: bool) -> None:
    if other_dict:
        raw = _OtherDict(raw)
    plain = model._compiled.plain_service(raw, "default", "web")
    _assert_read_as_the_full_reader(plain, _full_service(raw), other_dict)
    if plain is not None:
        assert [type(port) for port in plain.ports] == [ServicePort] * len(plain.ports)


def test_a_service_as_the_api_server_writes_it_takes_the_compiled_reader() -> None:
    raw = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "ClusterIP",
                    "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                    "internalTrafficPolicy": "Cluster", "selector": {"tier": "web", "app": "web"},
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                              {"name": "metrics", "port": 9090, "protocol": "TCP", "targetPort": 9090},
                              {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]},
           "status": {"loadBalancer": {}}}
    plain = model._compiled.plain_service(raw, "default", "web")
    assert plain is not None and plain == _full_service(raw)
    assert plain.selector == (("app", "web"), ("tier", "web"))


def test_node_port_and_pending_load_balancer_services_take_the_compiled_reader() -> None:
    raw = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "NodePort",
                    "externalTrafficPolicy": "Local", "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080},
                              {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}]},
           "status": {"loadBalancer": {}}}
    for service_type in ("NodePort", "LoadBalancer"):  # a LoadBalancer not given an address yet
        raw["spec"]["type"] = service_type
        plain = model._compiled.plain_service(raw, "default", "web")
        assert plain is not None and plain == _full_service(raw)
        assert (plain.type, [port.node_port for port in plain.ports]) == (service_type, [30080, None])
    raw["status"]["loadBalancer"]["ingress"] = [{"ip": "192.0.2.9"}]  # with one: the full reader's
    assert model._compiled.plain_service(raw, "default", "web") is None


@pytest.mark.parametrize("change, compiled", [
    ({"type": "ExternalName"}, False), ({"type": "ExternalName", "externalName": "db.example.com"}, False),
    ({"type": "nodeport"}, False), ({"nodePort": 70000}, False), ({"nodePort": -1}, False),
    ({"nodePort": True}, False), ({"nodePort": False}, False), ({"nodePort": "30080"}, False),
    ({"nodePort": 0.0}, False), ({"nodePort": 65535}, True), ({"nodePort": 0}, True), ({}, True),
])
def test_a_node_port_service_reads_as_the_full_reader(change: dict[str, Any], compiled: bool) -> None:
    """One field of a NodePort Service changed at a time: the compiled reader takes it or not as
    said, and what it takes reads as the full reader reads it."""
    port = {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}
    spec = {"clusterIP": "10.96.0.10", "type": "NodePort", "ports": [port]}
    for key, value in change.items():
        (port if key == "nodePort" else spec)[key] = value
    raw = {"spec": spec}
    plain, full = model._compiled.plain_service(raw, "default", "web"), _full_service(raw)
    assert (plain is not None) == compiled
    assert plain is None or plain == full


@pytest.mark.parametrize("ports, error", [
    ([{"name": "http", "port": 80}, {"name": "http", "port": 81}], "spec.ports[1].name: duplicates spec.ports[0]"),
    ([{"port": 80}, {"port": 81}], "spec.ports[1].name: duplicates spec.ports[0]"),
    ([{"name": "a", "port": 80}, {"name": "b", "port": 80, "protocol": "TCP"}], "spec.ports[1].port: duplicates"),
    ([{"name": "dns", "port": 53}, {"name": "dns", "port": 53, "protocol": "UDP"}], None),
])
def test_a_service_port_twice_is_left_to_the_full_reader(ports: list[dict[str, Any]], error: str | None) -> None:
    raw = {"spec": {"clusterIP": "10.96.0.10", "ports": ports}}
    plain, full = model._compiled.plain_service(raw, "default", "web"), _full_service(raw)
    if error is None:  # one name and number per protocol: both are plain
        assert plain is not None and plain == full
    else:
        assert plain is None and isinstance(full, ClusterError) and error in str(full)


_raw_slices = st.fixed_dictionaries(
    {"apiVersion": st.just("discovery.k8s.io/v1"), "kind": st.just("EndpointSlice"),
     "addressType": _mostly(st.just("IPv4"), st.sampled_from(["IPv6", "FQDN", None, "ipv4"])),
     "metadata": _mostly(st.fixed_dictionaries({"name": st.just("web-1")}, optional={"labels": _mostly(
         st.fixed_dictionaries({}, optional={"kubernetes.io/service-name": _mostly(st.sampled_from(["web", ""]),
                                                                                   _ODD),
                                             "app": st.just("web")}),
         st.one_of(st.none(), st.just(["web"])))}),
         st.one_of(st.none(), st.just("web-1")))},
    optional={
        "ports": _mostly(st.lists(st.fixed_dictionaries({}, optional={
            "name": _mostly(st.sampled_from([None, "", "http", "dns"]), _ODD),
            "protocol": _mostly(st.sampled_from([None, "", "TCP", "UDP"]), st.sampled_from(["udp", 17])),
            "port": _mostly(st.sampled_from([None, 8080, 53]), _ODD),
            "appProtocol": st.just("http")}), max_size=3), st.one_of(st.none(), st.just({"port": 80}))),
        "endpoints": _mostly(st.lists(_raw_endpoints, max_size=4), st.one_of(st.none(), st.just("10.0.0.1"))),
    })


def _full_slice(raw: Any) -> Any:
    return _full_read_of(model._read_endpoint_slice, raw, "web-1")


@settings(max_examples=800, deadline=None)
@given(_raw_slices, st.booleans())
def test_compiled_plain_slice_reader_reads_as_the_full_reader(raw: dict[str, Any], other_dict: bool) -> None:
    if other_dict:
        raw = _OtherDict(raw)
    plain = model._compiled.plain_ipv4_slice(raw, "default", "web-1")
    _assert_read_as_the_full_reader(plain, _full_slice(raw), other_dict)


@pytest.mark.parametrize("ports, plain", [
    ([{"name": "http", "port": 8080}, {"name": "http", "port": 8081}], False),
    ([{"port": 8080}, {"port": 8081, "protocol": "TCP"}], False),
    ([{"name": "dns", "port": 53}, {"name": "dns", "port": 53, "protocol": "UDP"}], True),
])
def test_a_slice_port_twice_is_left_to_the_full_reader(ports: list[dict[str, Any]], plain: bool) -> None:
    raw = {"addressType": "IPv4", "metadata": {"labels": {"kubernetes.io/service-name": "web"}}, "ports": ports,
           "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}}]}
    made, full = model._compiled.plain_ipv4_slice(raw, "default", "web-1"), _full_slice(raw)
    if plain:
        assert made is not None and made == full and made.service_name == "web"
    else:
        assert made is None and isinstance(full, ClusterError) and "duplicates ports[0]" in str(full)


def test_compiled_plain_endpoint_reader_shares_the_model_conditions() -> None:
    raw = {"addresses": ["10.244.1.5"], "conditions": {"ready": False, "serving": True, "terminating": True},
           "nodeName": "", "zone": "", "targetRef": {"kind": "Pod", "name": "web-0"}}
    endpoint = model._compiled.plain_ipv4_endpoint(raw)
    assert endpoint.conditions is model._CONDITIONS[(False, True, True)]
    assert (endpoint.node_name, endpoint.zone) == (None, None)  # "" is no node, as in the full reader
    assert endpoint.target_ref == ObjectReference(kind="Pod", namespace=None, name="web-0")
    assert endpoint == _full_read(raw)


def test_plain_endpoints_are_left_out_of_the_cyclic_collector() -> None:
    # They hold strings, tuples of strings and the shared conditions (booleans only): a million
    # of them read while a load pauses the collector are not all traversed by its next pass.
    raw = {"addresses": ["10.244.1.5"], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": "web-0"}}
    endpoint = model._compiled.plain_ipv4_endpoint(raw)
    assert not gc.is_tracked(endpoint)
    assert not gc.is_tracked(endpoint.addresses) and not gc.is_tracked(endpoint.target_ref)
    assert not any(gc.is_tracked(conditions) for conditions in model._CONDITIONS.values())
    assert endpoint == _full_read(raw)


# The collector's compiled fast path (fastpath._compile.PlainCollector) against the collector
# without it: the same state, or the same error, for lists of objects whose kind, apiVersion
# and metadata are mostly plain, one at a time not, with names that repeat.

_NAMES = _mostly(st.sampled_from(["web", "db"]), st.sampled_from([None, "", 3, ["web"]]))
_NAMESPACES = _mostly(st.sampled_from(["default", "kube-system"]), st.sampled_from([None, "", 0, ["x"], "ns\u00e9"]))


@st.composite
def _collected_objects(draw: st.DrawFn) -> dict[str, Any]:
    service = draw(st.booleans())
    obj = dict(draw(_raw_services if service else _raw_slices))
    metadata = obj.get("metadata")
    metadata = dict(metadata) if type(metadata) is dict else {}
    metadata["name"] = draw(_NAMES)
    if draw(st.booleans()):
        metadata["namespace"] = draw(_NAMESPACES)
    obj["metadata"] = draw(_mostly(st.just(metadata), st.sampled_from([None, "web", [metadata]])))
    obj["apiVersion"] = draw(_mostly(st.just(obj["apiVersion"]), st.sampled_from(
        ["discovery.k8s.io/v1beta1", "v2", "", None, 1, "example.com/v1"])))
    if draw(st.integers(0, 9)) == 0:
        obj["kind"] = draw(st.sampled_from(["Pod", "ServiceList", "", None]))
    return obj


def _from_objects(objects: list[Any], collect_plain: Any) -> Any:
    """from_objects with the collector's compiled path replaced by collect_plain(compiled, obj,
    source): the state and what it skipped, or the error."""
    original = model._Collector.__init__

    def init(collector: Any) -> None:
        original(collector)
        compiled = collector._collect_plain
        collector._collect_plain = lambda obj, source: collect_plain(compiled, obj, source)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model._Collector, "__init__", init)
        try:
            state = ClusterState.from_objects(objects, "cluster.json")
        except ClusterError as error:
            return str(error)
    return state, dict(state.skipped)


def _counting(taken: list[bool]) -> Any:
    def collect_plain(compiled: Any, obj: Any, source: str) -> bool:
        taken.append(compiled(obj, source))
        return taken[-1]
    return collect_plain


@settings(max_examples=400, deadline=None)
@given(st.lists(_collected_objects(), max_size=5))
def test_the_collectors_compiled_path_collects_as_the_collector(objects: list[Any]) -> None:
    assert _from_objects(objects, _counting([])) == _from_objects(objects, lambda compiled, obj, source: False)


@pytest.mark.parametrize("namespace", [{}, {"namespace": None}, {"namespace": ""}, {"namespace": "default"}])
def test_plain_objects_take_the_collectors_compiled_path(namespace: dict[str, Any]) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", **namespace},
               "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80}]}}
    endpoint_slice = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                      "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}, **namespace},
                      "ports": [{"port": 8080}], "endpoints": [{"addresses": ["10.244.1.5"]}]}
    taken: list[bool] = []
    state, _ = _from_objects([service, endpoint_slice], _counting(taken))
    assert taken == [True, True]
    assert (state.services[0].namespace, state.endpoint_slices[0].namespace) == ("default", "default")
    assert _from_objects([service, endpoint_slice], lambda compiled, obj, source: False)[0] == state
    # A second object of the same kind and name is the collector's error, not the compiled path's.
    error = _from_objects([service, endpoint_slice, service], _counting(taken))
    assert error == "cluster.json: Service default/web: duplicate object (appears twice in this file)"

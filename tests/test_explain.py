"""`fastpath explain`: where one hand-written flow goes and why (fastpath.explain)."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from fastpath import Dataplane, load_cluster, replay
from fastpath.explain import (
    EndpointInfo,
    ExplainError,
    Explanation,
    build_packet,
    explain,
    parse_address,
)
from fastpath.model import ClusterError, ClusterState

CORES = ("compiled", "reference")
WEB_VIP, DNS_VIP, CLIENT = "10.96.0.10", "10.96.0.53", "10.244.0.5"
WEB_READY = {"10.244.1.11:8080", "10.244.1.12:8080", "10.244.1.13:8080"}


def fastpath(*args: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastpath", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def demo_state(demo_cluster) -> ClusterState:
    return load_cluster([demo_cluster])


@pytest.fixture(scope="module")
def demo_new_flows(tmp_path_factory, demo_capture, demo_cluster) -> dict[tuple, str]:
    """(client ip, client port, vip, vip port, proto) -> backend, from a traced demo replay."""
    path = tmp_path_factory.mktemp("explain") / "trace.jsonl"
    replay(demo_capture, None, Dataplane(load_cluster([demo_cluster])), trace=path)
    flows = {}
    for packet, line in zip(rdpcap(str(demo_capture)),
                            (json.loads(text) for text in path.read_text().splitlines())):
        if line["reason"] == "NEW_FLOW":
            l4 = TCP if TCP in packet else UDP
            key = (packet[IP].src, packet[l4].sport, packet[IP].dst, packet[l4].dport,
                   "tcp" if l4 is TCP else "udp")
            flows[key] = line["backend"]
    assert len(flows) == 14
    return flows


# --------------------------------------------------------------------------- ClusterIP hit


@pytest.mark.parametrize("core", CORES)
def test_clusterip_hit_lists_web_endpoints_and_the_chosen_one(demo_state, core):
    answer = explain(demo_state, f"{CLIENT}:41001", f"{WEB_VIP}:80", "tcp", core=core)
    assert (answer.verdict, answer.reason) == ("DNAT", "NEW_FLOW")
    assert answer.frontend == {"kind": "ClusterIP", "address": f"{WEB_VIP}:80/TCP",
                               "service": "default/web:http", "port_name": "http",
                               "target_port": "http"}
    assert answer.policy is not None
    assert answer.policy["name"] == "internalTrafficPolicy"
    assert answer.policy["value"] == "Cluster" and answer.policy["set"] == "cluster"
    assert answer.source is not None and answer.source["class"] in ("pod", "other")
    assert answer.masquerade is not None and answer.masquerade["enabled"] is False
    by_address = {e.address: e for e in answer.endpoints}
    assert set(by_address) == WEB_READY | {"10.244.1.14:8080", "10.244.1.15:8080"}
    candidates = {e.address for e in answer.endpoints if e.in_set}
    assert candidates == WEB_READY and answer.set_size == 3
    for address in WEB_READY:
        e = by_address[address]
        assert (e.ready, e.serving, e.terminating) == (True, True, False)
        assert (e.node, e.zone) == ("fp-node", "zone-a")
    not_ready, terminating = by_address["10.244.1.14:8080"], by_address["10.244.1.15:8080"]
    assert (not_ready.ready, not_ready.serving, not_ready.in_set) == (False, False, False)
    assert (terminating.serving, terminating.terminating, terminating.in_set) == (True, True, False)
    [chosen] = [e for e in answer.endpoints if e.chosen]
    assert chosen.address == answer.backend and answer.backend in WEB_READY
    text = answer.render()
    assert "default/web:http" in text and answer.backend in text and "not ready" in text


def test_chosen_endpoint_is_what_a_replay_picks(tmp_path, demo_state, demo_new_flows):
    # Every flow of the demo capture: explain agrees with the traced replay.
    for (src, sport, dst, dport, proto), backend in demo_new_flows.items():
        answer = explain(demo_state, f"{src}:{sport}", f"{dst}:{dport}", proto)
        assert answer.backend == backend, (src, sport, dst, dport)
    # And a 5-tuple the demo does not have, replayed from a pcap written here.
    syn = Ether() / IP(src="10.244.0.77", dst=WEB_VIP) / TCP(sport=51234, dport=80, flags="S")
    wrpcap(str(tmp_path / "one.pcap"), [syn])
    replay(tmp_path / "one.pcap", None, Dataplane(demo_state), trace=tmp_path / "t.jsonl")
    line = json.loads((tmp_path / "t.jsonl").read_text())
    assert explain(demo_state, "10.244.0.77:51234", f"{WEB_VIP}:80").backend == line["backend"]


def test_udp_and_no_source_port(demo_state):
    answer = explain(demo_state, CLIENT, f"{DNS_VIP}:53", "udp")
    assert answer.proto == "UDP" and answer.src == f"{CLIENT}:40000"
    assert not answer.src_port_given and any("source port" in note for note in answer.notes)
    assert answer.frontend["service"] == "default/dns:dns"
    assert answer.backend in {"10.244.1.21:5353", "10.244.1.22:5353"}
    # the same flow over TCP is no service: dns has UDP 53 only
    assert explain(demo_state, CLIENT, f"{DNS_VIP}:53", "tcp").verdict in ("PASS", "REJECT")


# --------------------------------------------------------------------------- other verdicts


def test_unknown_address_passes(demo_state):
    answer = explain(demo_state, f"{CLIENT}:41001", "10.0.0.1:80")
    assert (answer.verdict, answer.reason) == ("PASS", "PASS_NO_SERVICE")
    assert answer.summary == "not a service address: passes untouched"
    assert answer.frontend is None and answer.backend is None and answer.endpoints == []
    assert "passes untouched" in answer.render()


def test_endpoint_address_passes_and_says_so(demo_state):
    answer = explain(demo_state, f"{CLIENT}:45001", "10.244.1.12:8080")
    assert answer.verdict == "PASS"
    assert any("endpoint of default/web" in note for note in answer.notes)


def no_endpoint_cluster() -> ClusterState:
    return ClusterState.from_objects([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "shop"},
         "spec": {"type": "ClusterIP", "clusterIP": "10.96.5.5", "clusterIPs": ["10.96.5.5"],
                  "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                             "targetPort": 8443}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"name": "api-x1", "namespace": "shop",
                      "labels": {"kubernetes.io/service-name": "api"}},
         "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["10.244.7.7"], "nodeName": "n1",
                        "conditions": {"ready": False, "serving": False, "terminating": False}}]},
    ])


@pytest.mark.parametrize("core", CORES)
def test_no_endpoints_rejects(core):
    answer = explain(no_endpoint_cluster(), "10.244.0.9:40000", "10.96.5.5:443", "tcp", core=core)
    assert (answer.verdict, answer.reason) == ("REJECT", "REJECT_NO_ENDPOINT")
    assert answer.reply == "icmp-port-unreachable"
    assert answer.frontend["service"] == "shop/api:https"
    assert answer.backend is None and answer.set_size == 0
    assert answer.rule and "no usable endpoint" in answer.rule
    [endpoint] = answer.endpoints
    assert endpoint.address == "10.244.7.7:8443" and not endpoint.in_set
    assert endpoint.note == "not ready"
    text = answer.render()
    assert "REJECT" in text and "ICMP port unreachable" in text


def test_bad_addresses():
    for src, dst, message in [
        ("10.0.0.300", "10.96.0.10:80", "not an IP address"),
        ("10.0.0.1", "10.96.0.10", r"port is required \(IP:PORT\)"),
        ("10.0.0.1", "10.96.0.10:0", "port must be"),
        ("10.0.0.1", "10.96.0.10:http", "port must be"),
        ("fe80::1", "10.96.0.10:80", "different IP families"),
        ("10.0.0.1", "[::1]:80", "different IP families"),
        ("fd00::1", "fd00::10", r"port is required \(\[IPv6\]:PORT\)"),
        ("fd00::1", "fd00::10:80", r"port is required"),  # without brackets the port is the address
        ("fd00::1", "[fd00::10]80", r"expected \[IPv6\]:PORT"),
        ("fd00::1", "[fd00::10:80", r"expected \[IPv6\]:PORT"),
        ("fd00::1", "[10.96.0.10]:80", "only IPv6 addresses go in brackets"),
        ("fd00::1", "[fe80::1%eth0]:80", "not an IP address"),
        ("[fd00::1]:0", "[fd00::10]:80", "port must be"),
        ("::ffff:10.0.0.1", "10.96.0.10:80", "IPv4-mapped"),
    ]:
        with pytest.raises(ExplainError, match=message):
            explain(ClusterState(), src, dst)
    with pytest.raises(ExplainError, match="tcp, udp or sctp"):
        explain(ClusterState(), "10.0.0.1", "10.0.0.2:1", "icmp")
    assert parse_address("10.0.0.010:80", port_required=True, what="x") == ("10.0.0.10", 80)
    assert parse_address(" [FD00:0::10]:443 ", port_required=True, what="x") == ("fd00::10", 443)
    assert parse_address("fd00:0::5", port_required=False, what="x") == ("fd00::5", None)
    assert parse_address("[fd00::5]", port_required=False, what="x") == ("fd00::5", None)


def test_sctp_flow_is_explained():
    state = ClusterState.from_objects([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sip", "namespace": "voip"},
         "spec": {"clusterIP": "10.96.5.5",
                  "ports": [{"name": "sip", "port": 5060, "protocol": "SCTP", "targetPort": 5060}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "sip-1", "namespace": "voip",
                      "labels": {"kubernetes.io/service-name": "sip"}},
         "addressType": "IPv4", "ports": [{"name": "sip", "port": 5060, "protocol": "SCTP"}],
         "endpoints": [{"addresses": ["10.244.3.3"], "conditions": {"ready": True}}]},
    ])
    answer = explain(state, "10.244.0.5", "10.96.5.5:5060", "sctp")
    assert answer.to_dict()["verdict"] == "DNAT"
    assert "10.244.3.3:5060" in answer.render()


def test_built_packet_is_a_valid_syn():
    frame = Ether(build_packet("10.0.0.1", 1234, "10.96.0.10", 80, 6))
    rebuilt = frame.copy()
    del rebuilt[IP].chksum, rebuilt[TCP].chksum
    assert bytes(Ether(bytes(rebuilt))) == bytes(frame)
    assert frame[TCP].flags == "S"


# --------------------------------------------------------------------------- the command line


def test_cli_text(demo_cluster):
    result = fastpath("explain", "--cluster", demo_cluster, "--src", f"{CLIENT}:41001",
                      "--dst", f"{WEB_VIP}:80")
    assert result.returncode == 0, result.stderr
    assert "DNAT" in result.stdout and "default/web:http" in result.stdout
    for address in WEB_READY:
        assert address in result.stdout


def test_cli_json_shape(demo_cluster, demo_state):
    result = fastpath("explain", "--cluster", demo_cluster, "--src", f"{CLIENT}:41002",
                      "--dst", f"{WEB_VIP}:80", "--proto", "tcp", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == set(Explanation.__dataclass_fields__)
    assert document["verdict"] == "DNAT" and document["reason"] == "NEW_FLOW"
    assert document["src"] == f"{CLIENT}:41002" and document["dst"] == f"{WEB_VIP}:80"
    assert document["proto"] == "TCP" and document["src_port_given"] is True
    assert set(document["frontend"]) == {"kind", "address", "service", "port_name", "target_port"}
    assert set(document["policy"]) == {"name", "value", "set", "why"}
    assert set(document["source"]) == {"class", "why"}
    assert set(document["masquerade"]) == {"enabled", "address", "why"}
    assert len(document["endpoints"]) == 5
    for endpoint in document["endpoints"]:
        assert set(endpoint) == set(EndpointInfo.__dataclass_fields__)
        assert isinstance(endpoint["ready"], bool) and isinstance(endpoint["chosen"], bool)
    [chosen] = [e for e in document["endpoints"] if e["chosen"]]
    assert chosen["address"] == document["backend"]
    assert document == explain(demo_state, f"{CLIENT}:41002", f"{WEB_VIP}:80").to_dict()


def test_cli_pass_and_reject_exit_0(tmp_path, demo_cluster):
    result = fastpath("explain", "--cluster", demo_cluster, "--src", CLIENT, "--dst", "1.2.3.4:80")
    assert result.returncode == 0 and "passes untouched" in result.stdout
    cluster = tmp_path / "c.json"
    cluster.write_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "shop"},
         "spec": {"clusterIP": "10.96.5.5", "ports": [{"port": 443}]}}]}))
    result = fastpath("explain", "--cluster", cluster, "--src", CLIENT, "--dst", "10.96.5.5:443",
                      "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == "REJECT"


@pytest.mark.parametrize("args", [
    ("--src", "10.244.0.999", "--dst", "10.96.0.10:80"),
    ("--src", CLIENT, "--dst", "10.96.0.10"),
    ("--src", CLIENT, "--dst", "10.96.0.10:80", "--node", "no-such-node"),
])
def test_cli_bad_input_is_one_line_exit_1(demo_cluster, args):
    result = fastpath("explain", "--cluster", demo_cluster, *args)
    assert result.returncode == 1
    assert result.stderr.startswith("fastpath: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_cli_usage_errors_exit_2(demo_cluster):
    assert fastpath("explain", "--cluster", demo_cluster, "--src", CLIENT).returncode == 2
    assert fastpath("explain", "--cluster", demo_cluster, "--src", CLIENT, "--dst",
                    f"{WEB_VIP}:80", "--proto", "icmp").returncode == 2
    assert fastpath("explain", "--src", CLIENT, "--dst", f"{WEB_VIP}:80").returncode == 2


def test_cli_help_has_an_example():
    result = fastpath("explain", "--help")
    assert result.returncode == 0
    assert "fastpath explain --cluster" in result.stdout and "exit status" in result.stdout
    assert "explain" in fastpath("--help").stdout


def test_unknown_node_is_a_cluster_error(demo_state):
    with pytest.raises(ClusterError):
        explain(demo_state, CLIENT, f"{WEB_VIP}:80", node="nope")


# --------------------------------------------------------------------------- policies


def ip4(text: str) -> int:
    return int.from_bytes(bytes(int(part) for part in text.split(".")), "big")


@pytest.fixture
def cart(monkeypatch) -> ClusterState:
    """A NodePort/LoadBalancer service with externalTrafficPolicy Local, seen from node-a.

    The maps are given by hand (what the compiler makes of such a service), so these tests
    check the explanation, not the compiler.
    """
    from fastpath.compiler import CompileResult
    from fastpath.maps import Backend, Frontend, Maps, NodeView, Service

    node_ip = ip4("192.168.0.1")
    maps = Maps(
        services=[Service(id=1, name="default/cart:http", backends=(1, 2), local_backends=(1,),
                          serving=(1, 2, 3))],
        frontends=[
            Frontend(ip=ip4("10.96.1.1"), port=80, proto=6, service=1, kind="ClusterIP"),
            Frontend(ip=node_ip, port=30080, proto=6, service=1, kind="NodePort",
                     local_policy=True),
            Frontend(ip=ip4("198.51.100.1"), port=80, proto=6, service=1, kind="LoadBalancer",
                     local_policy=True, source_ranges=((ip4("203.0.113.0"), 24),)),
        ],
        backends=[Backend(1, ip4("10.244.1.7"), 8080, "a"), Backend(2, ip4("10.244.2.7"), 8080, "b"),
                  Backend(3, ip4("10.244.2.8"), 8080, "c")],
        node=NodeView(primary_ip=node_ip, local_ips=(node_ip,),
                      pod_cidrs=((ip4("10.244.0.0"), 16),), service_ips=(ip4("10.96.1.1"),)),
    )
    monkeypatch.setattr("fastpath.compiler.compile_maps",
                        lambda state, node=None: CompileResult(maps=maps))

    def ep(ip: str, node: str, **conditions: bool) -> dict[str, Any]:
        return {"addresses": [ip], "nodeName": node, "conditions": conditions or {"ready": True}}

    return ClusterState.from_objects([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "cart", "namespace": "default"},
         "spec": {"type": "LoadBalancer", "clusterIP": "10.96.1.1", "externalTrafficPolicy": "Local",
                  "loadBalancerSourceRanges": ["203.0.113.0/24"],
                  "ports": [{"name": "http", "port": 80, "nodePort": 30080, "targetPort": 8080}]},
         "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"name": "cart-1", "namespace": "default",
                      "labels": {"kubernetes.io/service-name": "cart"}},
         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
         "endpoints": [ep("10.244.1.7", "node-a"), ep("10.244.2.7", "node-b"),
                       ep("10.244.2.8", "node-b", ready=False, serving=True, terminating=True)]},
    ])


@pytest.mark.parametrize("core", CORES)
def test_external_local_policy_by_source_class(cart, core):
    outside = explain(cart, "203.0.113.5:5555", "192.168.0.1:30080", node="node-a", core=core)
    assert outside.frontend["kind"] == "NodePort"
    assert outside.source["class"] == "other"
    assert (outside.policy["name"], outside.policy["value"], outside.policy["set"]) == (
        "externalTrafficPolicy", "Local", "local")
    assert outside.masquerade["enabled"] is False and "client IP" in outside.masquerade["why"]
    assert outside.backend == "10.244.1.7:8080"
    notes = {e.address: e.note for e in outside.endpoints}
    assert notes["10.244.2.7:8080"] == "not on this node"

    pod = explain(cart, "10.244.1.9:5555", "192.168.0.1:30080", node="node-a", core=core)
    assert pod.source["class"] == "pod" and pod.policy["set"] == "cluster"
    assert pod.masquerade["enabled"] is False and pod.set_size == 2

    node = explain(cart, "192.168.0.1:5555", "192.168.0.1:30080", node="node-a", core=core)
    assert node.source["class"] == "node" and node.policy["set"] == "cluster"
    assert node.masquerade == {"enabled": True, "address": "192.168.0.1",
                               "why": "traffic from the node itself is masqueraded"}

    clusterip = explain(cart, "192.168.9.9:1", "10.96.1.1:80", node="node-a", core=core)
    assert clusterip.policy["name"] == "internalTrafficPolicy"
    assert clusterip.masquerade["enabled"] is True
    assert "outside the pod network" in clusterip.masquerade["why"]


@pytest.mark.parametrize("core", CORES)
def test_source_range_drop_and_unknown_port_reject(cart, core):
    dropped = explain(cart, "8.8.8.8:1", "198.51.100.1:80", node="node-a", core=core)
    assert (dropped.verdict, dropped.reason) == ("DROP", "DROP_SOURCE_RANGE")
    assert dropped.frontend["kind"] == "LoadBalancer"
    assert dropped.source_ranges == ["203.0.113.0/24"] and "loadBalancerSourceRanges" in dropped.rule
    assert explain(cart, "203.0.113.5:1", "198.51.100.1:80", node="node-a", core=core).verdict == "DNAT"

    rejected = explain(cart, "1.1.1.1:1", "10.96.1.1:81", node="node-a", core=core)
    assert (rejected.verdict, rejected.reason) == ("REJECT", "REJECT_UNKNOWN_PORT")
    assert rejected.frontend is None and rejected.reply == "icmp-port-unreachable"
    assert any("80/TCP (default/cart:http)" in note for note in rejected.notes)


# --------------------------------------------------------------------------- IPv6

DUALSTACK = __import__("pathlib").Path(__file__).parent / "data" / "dualstack"
POD6, EXT6, NODE6 = "fd00:10:244:1::99", "2001:db8:7::1", "fd00:192:168:10::11"


@pytest.fixture(scope="module")
def dual_state() -> ClusterState:
    return load_cluster([DUALSTACK])


def test_built_ipv6_packets_are_valid():
    from scapy.layers.inet6 import IPv6

    for proto, layer in ((6, TCP), (17, UDP)):
        frame = Ether(build_packet("fd00::1", 1234, "fd00:10:96::10", 80, proto))
        assert frame.type == 0x86DD and frame[IPv6].nh == proto and frame[IPv6].plen == len(frame[layer])
        rebuilt = frame.copy()
        del rebuilt[layer].chksum
        assert bytes(Ether(bytes(rebuilt))) == bytes(frame)
    with pytest.raises(ValueError, match="one IP family"):
        build_packet("fd00::1", 1, "10.0.0.1", 80, 6)


@pytest.mark.parametrize("core", CORES)
def test_ipv6_clusterip_from_a_pod(dual_state, core):
    answer = explain(dual_state, f"[{POD6}]:41001", "[fd00:10:96::2010]:80", node="node-a", core=core)
    assert (answer.verdict, answer.reason) == ("DNAT", "NEW_FLOW")
    assert (answer.src, answer.dst) == (f"[{POD6}]:41001", "[fd00:10:96::2010]:80")
    assert answer.frontend == {"kind": "ClusterIP", "address": "[fd00:10:96::2010]:80/TCP",
                               "service": "shop/web:http", "port_name": "http", "target_port": "http"}
    assert answer.source["class"] == "pod" and "fd00:10:244::/56" in answer.source["why"]
    assert answer.masquerade["enabled"] is False
    # the endpoints of the IPv6 slice only, as [address]:port
    assert [(e.address, e.in_set) for e in answer.endpoints] == [
        ("[fd00:10:244:1::10]:8080", True), ("[fd00:10:244:2::10]:8080", True),
        ("[fd00:10:244:2::11]:8080", False)]
    [chosen] = [e for e in answer.endpoints if e.chosen]
    assert chosen.address == answer.backend
    text = answer.render()
    assert f"[{POD6}]:41001 -> [fd00:10:96::2010]:80 TCP" in text and answer.backend in text


@pytest.mark.parametrize("core", CORES)
def test_ipv6_node_port_local_policy_and_masquerade(dual_state, core):
    outside = explain(dual_state, f"[{EXT6}]:50000", f"[{NODE6}]:30443", node="node-a", core=core)
    assert outside.frontend["kind"] == "NodePort" and outside.frontend["service"] == "shop/api:https"
    assert (outside.source["class"], outside.policy["set"]) == ("other", "local")
    assert outside.backend == "[fd00:10:244:1::20]:8443"
    assert outside.masquerade["enabled"] is False and "client IP" in outside.masquerade["why"]
    node = explain(dual_state, f"[{NODE6}]:50000", f"[{NODE6}]:30443", node="node-a", core=core)
    assert node.source["class"] == "node" and node.policy["set"] == "cluster"
    # masqueraded to the node's IPv6 address, not its IPv4 primary IP
    assert node.masquerade == {"enabled": True, "address": NODE6,
                               "why": "traffic from the node itself is masqueraded"}
    assert node.summary.endswith(f"source masqueraded to {NODE6}")
    clusterip = explain(dual_state, f"[{EXT6}]:50001", "[fd00:10:96::2020]:443", node="node-a", core=core)
    assert clusterip.masquerade["enabled"] is True and clusterip.masquerade["address"] == NODE6
    assert "outside the pod network (fd00:10:244::/56)" in clusterip.source["why"]


@pytest.mark.parametrize("core", CORES)
def test_ipv6_source_ranges_drop_and_reject(dual_state, core):
    allowed = explain(dual_state, "[2001:db8:beef::5]:1", "[2001:db8:100::30]:80", node="node-a", core=core)
    assert allowed.verdict == "DNAT" and allowed.frontend["kind"] == "LoadBalancer"
    assert allowed.source_ranges == ["2001:db8:beef::/48"]  # the IPv4 range is not for this family
    assert allowed.affinity and "2001:db8:beef::5" in allowed.affinity
    dropped = explain(dual_state, "[2001:db8:9::1]:1", "[2001:db8:100::30]:80", node="node-a", core=core)
    assert (dropped.verdict, dropped.reason) == ("DROP", "DROP_SOURCE_RANGE")
    assert any("2001:db8:9::1 is outside" in note for note in dropped.notes)
    # the Proxy-mode ingress IP is no frontend
    assert explain(dual_state, "[2001:db8:beef::5]:1", "[2001:db8:100::31]:80", node="node-a",
                   core=core).verdict == "PASS"

    rejected = explain(dual_state, POD6, "[fd00:10:96::2070]:80", node="node-a", core=core)
    assert (rejected.verdict, rejected.reason) == ("REJECT", "REJECT_NO_ENDPOINT")
    assert rejected.summary == f"REJECT (shop/legacy:web): ICMPv6 port unreachable back to {POD6}"
    assert rejected.reply == "icmp-port-unreachable" and rejected.endpoints == []
    # the IPv4 half of the same service port is served
    assert explain(dual_state, "10.244.1.99", "10.96.20.70:80", node="node-a", core=core).verdict == "DNAT"

    unknown = explain(dual_state, POD6, "[fd00:10:96::2070]:81", node="node-a", core=core)
    assert unknown.reason == "REJECT_UNKNOWN_PORT"
    assert any("80/TCP (shop/legacy:web)" in note for note in unknown.notes)

    local = explain(dual_state, POD6, "[fd00:10:96::2053]:53", "udp", node="node-a", core=core)
    assert (local.verdict, local.reason) == ("DROP", "DROP_NO_LOCAL_ENDPOINT")
    assert [(e.address, e.note) for e in local.endpoints] == [("[fd00:10:244:2::53]:5353", "not on this node")]


def test_ipv6_choice_is_what_a_replay_picks(tmp_path, dual_state):
    from scapy.layers.inet6 import IPv6

    syns = [Ether() / IPv6(src=f"fd00:10:244:1::{n:x}", dst="fd00:10:96::2010") / TCP(sport=40000 + n, dport=80,
                                                                                       flags="S")
            for n in range(1, 13)]
    wrpcap(str(tmp_path / "six.pcap"), syns)
    replay(tmp_path / "six.pcap", None, Dataplane(dual_state, node="node-a", core="reference"),
           trace=tmp_path / "t.jsonl")
    lines = [json.loads(text) for text in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert {line["backend"] for line in lines} == {"[fd00:10:244:1::10]:8080", "[fd00:10:244:2::10]:8080"}
    for n, line in enumerate(lines, start=1):
        answer = explain(dual_state, f"[fd00:10:244:1::{n:x}]:{40000 + n}", "[fd00:10:96::2010]:80",
                         node="node-a", core="reference")
        assert answer.backend == line["backend"]


def test_cli_ipv6(dual_state):
    result = fastpath("explain", "--cluster", DUALSTACK, "--node", "node-a", "--core", "reference",
                      "--src", f"[{EXT6}]:50000", "--dst", f"[{NODE6}]:30443", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["backend"] == "[fd00:10:244:1::20]:8443"
    assert document["frontend"]["address"] == f"[{NODE6}]:30443/TCP"
    result = fastpath("explain", "--cluster", DUALSTACK, "--node", "node-a", "--src", "10.0.0.1",
                      "--dst", f"[{NODE6}]:30443")
    assert result.returncode == 1 and "different IP families" in result.stderr
    assert "[IPv6]:PORT" in fastpath("explain", "--help").stdout


# --------------------------------------------------------------------------- service CIDRs


@pytest.fixture(scope="module")
def cidr_state() -> ClusterState:
    """A dual-stack ClusterIP service inside a ServiceCIDR of both families, seen from node-a."""
    return ClusterState.from_objects([
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
         "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"},
                                  {"type": "InternalIP", "address": "fd00:192:168::1"}]}},
        {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
         "clusterCIDR": "10.244.0.0/16,fd00:10:244::/56"},
        {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "kubernetes"},
         "spec": {"cidrs": ["10.96.0.0/16", "fd00:10:96::/112"]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10:96::10"],
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        *({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
           "metadata": {"name": f"web-{family}", "namespace": "default",
                        "labels": {"kubernetes.io/service-name": "web"}},
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": [{"addresses": [address], "nodeName": "node-a"}]}
          for family, address in (("IPv4", "10.244.1.7"), ("IPv6", "fd00:10:244:1::7"))),
    ])


@pytest.mark.parametrize("core", CORES)
def test_unallocated_service_ip_is_dropped(cidr_state, core):
    for src, dst, cidr in (("10.244.1.9:1", "10.96.0.99:80", "10.96.0.0/16"),
                           ("[2001:db8::1]:1", "[fd00:10:96::99]:443", "fd00:10:96::/112")):
        answer = explain(cidr_state, src, dst, node="node-a", core=core)
        address = dst.rsplit(":", 1)[0].strip("[]")
        assert (answer.verdict, answer.reason) == ("DROP", "DROP_UNALLOCATED_SERVICE_IP")
        assert answer.frontend is None and answer.reply is None and answer.endpoints == []
        assert answer.summary == "DROP: unallocated service IP (inside a service CIDR, no service has it)"
        assert answer.rule is not None and "service CIDR" in answer.rule and "dropped" in answer.rule
        inside = f"{address} is inside the service CIDR {cidr} (ServiceCIDR kubernetes)"
        assert answer.notes == [f"{inside}, but no service has this address"]
        text = answer.render()
        assert "DROP (DROP_UNALLOCATED_SERVICE_IP)" in text and f"service CIDR {cidr}" in text


@pytest.mark.parametrize("core", CORES)
def test_service_cidr_leaves_cluster_ips_and_other_addresses_alone(cidr_state, core):
    served = explain(cidr_state, "10.244.1.9:1", "10.96.0.10:80", node="node-a", core=core)
    assert served.verdict == "DNAT" and served.backend == "10.244.1.7:8080"
    for dst in ("10.96.0.10:81", "[fd00:10:96::10]:81"):  # a ClusterIP on a port it lacks: still REJECT
        src = "10.244.1.9:1" if "[" not in dst else "[fd00:10:244:1::9]:1"
        rejected = explain(cidr_state, src, dst, node="node-a", core=core)
        assert (rejected.verdict, rejected.reason) == ("REJECT", "REJECT_UNKNOWN_PORT")
        assert not any("service CIDR" in note for note in rejected.notes)
    for src, dst in (("10.244.1.9:1", "10.97.0.1:80"), ("[2001:db8::1]:1", "[fd00:10:96::1:0]:80")):
        passed = explain(cidr_state, src, dst, node="node-a", core=core)
        assert (passed.verdict, passed.reason, passed.notes) == ("PASS", "PASS_NO_SERVICE", [])


def test_without_service_cidrs_an_unallocated_address_passes(cidr_state):
    from dataclasses import replace

    state = replace(cidr_state, service_cidrs=())
    answer = explain(state, "10.244.1.9:1", "10.96.0.99:80", node="node-a")
    assert (answer.verdict, answer.reason) == ("PASS", "PASS_NO_SERVICE")
    assert answer.summary == "not a service address: passes untouched"

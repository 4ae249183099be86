"""Per-packet traces: `fastpath replay --trace FILE.jsonl` and fastpath.trace.TraceWriter."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap, wrpcap

from conftest import ip4
from fastpath import Dataplane, Verdict, load_cluster, replay
from fastpath.capture import CaptureError
from fastpath.maps import PROTO_TCP, Backend, Frontend, Maps, NodeView, Service
from fastpath.model import ClusterState
from fastpath.trace import TraceWriter, format_time
from fastpath.verdicts import TRACE_MASQUERADED

CORES = ("compiled", "reference")
WEB_VIP, DNS_VIP = "10.96.0.10", "10.96.0.53"
KEYS = ["frame", "time", "verdict", "reason", "service", "frontend", "backend", "masquerade"]
T0 = 1_700_000_000


def fastpath(*args: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastpath", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def read_trace(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def ready_endpoints(cluster: Path) -> dict[str, set[str]]:
    """service name (as the maps spell it) -> "ip:port" of its ready endpoints."""
    state = load_cluster([cluster])
    found: dict[str, set[str]] = {}
    for eps in state.endpoint_slices:
        for port in eps.ports:
            name = f"{eps.namespace}/{eps.service_name}:{port.name}"
            for endpoint in eps.endpoints:
                if endpoint.conditions.is_ready:
                    found.setdefault(name, set()).add(f"{endpoint.addresses[0]}:{port.port}")
    return found


# --------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module", params=CORES)
def demo_trace(request, tmp_path_factory, demo_capture, demo_cluster):
    out = tmp_path_factory.mktemp(f"trace-{request.param}")
    dataplane = Dataplane(load_cluster([demo_cluster]), core=request.param)
    stats = replay(demo_capture, out / "out.pcap", dataplane, trace=out / "trace.jsonl",
                   batch_packets=50)  # several batches: frame numbers continue across them
    return stats, read_trace(out / "trace.jsonl"), rdpcap(str(demo_capture)), \
        rdpcap(str(out / "out.pcap"))


def test_demo_one_line_per_packet_in_input_order(demo_trace):
    stats, lines, before, _ = demo_trace
    assert len(lines) == len(before) == stats.packets
    assert [line["frame"] for line in lines] == list(range(1, len(before) + 1))
    for line, packet in zip(lines, before):
        assert list(line)[: len(KEYS)] == KEYS
        assert isinstance(line["time"], str)
        assert Decimal(line["time"]) == Decimal(str(packet.time))
        assert len(line["time"].split(".")[1]) == 9


def test_demo_dnat_revnat_and_pass_lines(demo_trace, demo_cluster):
    stats, lines, before, after = demo_trace
    ready = ready_endpoints(demo_cluster)
    vips = {WEB_VIP: "default/web:http", DNS_VIP: "default/dns:dns"}
    seen = {"DNAT": 0, "REVNAT": 0, "PASS": 0}
    flows: dict[tuple, str] = {}
    for line, original, rewritten in zip(lines, before, after):
        seen[line["verdict"]] += 1
        assert "reply" not in line
        if IP not in original:
            assert original.haslayer(ARP)
            assert (line["verdict"], line["reason"]) == ("PASS", "PASS_NOT_IP")
            assert line["service"] is line["frontend"] is line["backend"] is None
            continue
        l4 = TCP if TCP in original else UDP
        if original[IP].dst in vips:
            assert line["verdict"] == "DNAT"
            assert line["reason"] in ("NEW_FLOW", "CT_ESTABLISHED")
            assert line["service"] == vips[original[IP].dst]
            assert line["frontend"] == "ClusterIP"
            assert line["backend"] in ready[line["service"]]
            # The trace names the backend the packet was really rewritten to.
            assert f"{rewritten[IP].dst}:{rewritten[l4].dport}" == line["backend"]
            assert line["masquerade"] is None  # a pod talking to a ClusterIP keeps its address
            key = (original[IP].src, original[l4].sport, original[IP].dst, original[l4].dport)
            if line["reason"] == "NEW_FLOW":
                assert key not in flows
                flows[key] = line["backend"]
            assert flows[key] == line["backend"]
        elif line["verdict"] == "REVNAT":
            assert line["reason"] == "CT_REPLY"
            assert f"{original[IP].src}:{original[l4].sport}" == line["backend"]
            assert line["service"] in vips.values() and line["frontend"] == "ClusterIP"
            assert rewritten[IP].src in vips
        else:  # the connection straight to a pod
            assert (line["verdict"], line["reason"]) == ("PASS", "PASS_NO_SERVICE")
            assert line["service"] is line["frontend"] is line["backend"] is None
            assert line["masquerade"] is None
    assert seen["DNAT"] == stats.verdicts["DNAT"] > 0
    assert seen["REVNAT"] == stats.verdicts["REVNAT"] > 0
    assert seen["PASS"] == stats.verdicts["PASS"] > 0
    assert len(flows) == stats.reasons["NEW_FLOW"]
    # every ready web endpoint got a flow in the demo, and the trace says so
    assert {b for b in flows.values() if b.endswith(":8080")} == ready["default/web:http"]


def test_both_cores_write_the_same_trace(tmp_path, demo_capture, demo_cluster):
    state = load_cluster([demo_cluster])
    texts = []
    for core in CORES:
        path = tmp_path / f"{core}.jsonl"
        replay(demo_capture, None, Dataplane(state, core=core), trace=path)
        texts.append(path.read_bytes())
    assert texts[0] == texts[1]


def test_no_trace_means_no_trace_arrays(monkeypatch, demo_capture, demo_cluster):
    calls = []
    original = Dataplane.process

    def spy(self, batch, linktype=1, *, trace=False):
        calls.append(trace)
        return original(self, batch, linktype, trace=trace)

    monkeypatch.setattr(Dataplane, "process", spy)
    stats = replay(demo_capture, None, Dataplane(load_cluster([demo_cluster])))
    assert calls and not any(calls)
    assert stats.trace is None and stats.to_dict()["trace"] is None


def test_trace_to_an_open_stream(demo_capture, demo_cluster):
    for stream in (io.StringIO(), io.BytesIO()):
        stats = replay(demo_capture, None, Dataplane(load_cluster([demo_cluster])), trace=stream)
        value = stream.getvalue()
        text = value.decode() if isinstance(value, bytes) else value
        lines = [json.loads(line) for line in text.splitlines()]
        assert len(lines) == stats.packets and lines[0]["frame"] == 1
        assert not stream.closed  # the caller's stream stays open


# --------------------------------------------------------------------------- the command line


def test_cli_trace_file_and_stats(tmp_path, demo_capture, demo_cluster):
    trace, stats_path = tmp_path / "t.jsonl", tmp_path / "s.json"
    result = fastpath("replay", demo_capture, "--cluster", demo_cluster, "--trace", trace,
                      "--stats", stats_path)
    assert result.returncode == 0, result.stderr
    lines = read_trace(trace)
    stats = json.loads(stats_path.read_text())
    assert stats["trace"] == str(trace)
    assert len(lines) == stats["packets"]
    assert f"trace        {trace}" in result.stdout


def test_cli_trace_to_stdout_moves_the_summary_to_stderr(demo_capture, demo_cluster):
    result = fastpath("replay", demo_capture, "--cluster", demo_cluster, "--trace", "-")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["frame"] for line in lines] == list(range(1, len(lines) + 1))
    assert "verdicts" in result.stderr


def test_cli_help_mentions_trace():
    result = fastpath("replay", "--help")
    assert result.returncode == 0
    assert "--trace FILE.jsonl" in result.stdout and '"frame"' in result.stdout


# --------------------------------------------------------------------------- REJECT and DROP


def svc(name: str, cluster_ip: str, port: int, port_name: str, protocol: str = "TCP",
        **spec: Any) -> dict[str, Any]:
    body = {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "selector": {"app": name},
            "ports": [{"name": port_name, "port": port, "protocol": protocol,
                       "targetPort": port_name}], **spec}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": body}


def slice_(service: str, port: int, port_name: str, endpoints: list[dict[str, Any]],
           protocol: str = "TCP") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service}-abcde", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "ports": [{"name": port_name, "port": port, "protocol": protocol}],
            "endpoints": endpoints}


def endpoint(ip: str, node: str, ready: bool = True, serving: bool | None = None,
             terminating: bool | None = None) -> dict[str, Any]:
    conditions = {"ready": ready}
    if serving is not None:
        conditions["serving"] = serving
    if terminating is not None:
        conditions["terminating"] = terminating
    return {"addresses": [ip], "conditions": conditions, "nodeName": node}


def node_obj(name: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


SMALL_CLUSTER = [
    # no endpoint is ready, serving or terminating: rejected
    svc("empty", "10.96.0.99", 443, "https"),
    slice_("empty", 8443, "https", [endpoint("10.244.2.9", "node-b", ready=False, serving=False)]),
    # internalTrafficPolicy Local, and the only endpoint is on another node: dropped on node-a
    svc("local", "10.96.0.20", 80, "http", internalTrafficPolicy="Local"),
    slice_("local", 8080, "http", [endpoint("10.244.2.5", "node-b")]),
    node_obj("node-a", "192.168.0.1"),
    node_obj("node-b", "192.168.0.2"),
]


def write_pcap(path: Path, packets: list) -> Path:
    for number, packet in enumerate(packets):
        packet.time = T0 + number
    wrpcap(str(path), packets)
    return path


@pytest.mark.parametrize("core", CORES)
def test_reject_line_and_reply(tmp_path, core):
    syn = Ether() / IP(src="10.244.0.5", dst="10.96.0.99") / TCP(sport=40001, dport=443, flags="S")
    capture = write_pcap(tmp_path / "in.pcap", [syn])
    dataplane = Dataplane(ClusterState.from_objects(SMALL_CLUSTER), node="node-a", core=core)
    stats = replay(capture, tmp_path / "out.pcap", dataplane, trace=tmp_path / "t.jsonl")
    [line] = read_trace(tmp_path / "t.jsonl")
    assert line == {
        "frame": 1, "time": f"{T0}.000000000", "verdict": "REJECT",
        "reason": "REJECT_NO_ENDPOINT", "service": "default/empty:https",
        "frontend": "ClusterIP", "backend": None, "masquerade": None,
        "reply": "icmp-port-unreachable",
    }
    [reply] = rdpcap(str(tmp_path / "out.pcap"))  # the SYN is replaced by its ICMP reply
    assert reply[ICMP].type == 3 and reply[ICMP].code == 3
    assert reply[IP].src == "10.96.0.99" and reply[IP].dst == "10.244.0.5"
    assert stats.verdicts["REJECT"] == 1


@pytest.mark.parametrize("core", CORES)
def test_drop_lines(tmp_path, core):
    packets = [
        # Local traffic policy and no endpoint on this node
        Ether() / IP(src="10.244.0.5", dst="10.96.0.20") / TCP(sport=40002, dport=80, flags="S"),
        # a TCP header cut short: dropped before any lookup, so nothing is attributed
        Ether(bytes(Ether() / IP(src="10.244.0.5", dst="10.96.0.20")
                    / TCP(sport=40003, dport=80, flags="S"))[:14 + 20 + 10]),
    ]
    capture = write_pcap(tmp_path / "in.pcap", packets)
    dataplane = Dataplane(ClusterState.from_objects(SMALL_CLUSTER), node="node-a", core=core)
    replay(capture, tmp_path / "out.pcap", dataplane, trace=tmp_path / "t.jsonl")
    local, truncated = read_trace(tmp_path / "t.jsonl")
    assert local == {
        "frame": 1, "time": f"{T0}.000000000", "verdict": "DROP",
        "reason": "DROP_NO_LOCAL_ENDPOINT", "service": "default/local:http",
        "frontend": "ClusterIP", "backend": None, "masquerade": None,
    }
    assert truncated == {
        "frame": 2, "time": f"{T0 + 1}.000000000", "verdict": "DROP", "reason": "DROP_TRUNCATED",
        "service": None, "frontend": None, "backend": None, "masquerade": None,
    }
    assert len(rdpcap(str(tmp_path / "out.pcap"))) == 0


@pytest.mark.parametrize("core", CORES)
def test_frontend_kind_and_masquerade_from_maps(tmp_path, core):
    """Hand-made maps: a NodePort frontend with externalTrafficPolicy Cluster is masqueraded."""
    node_ip = "192.168.0.1"
    maps = Maps(
        services=[Service(id=1, name="shop/cart:http", backends=(1,), serving=(1,))],
        frontends=[Frontend(ip=ip4(node_ip), port=30080, proto=PROTO_TCP, service=1,
                            kind="NodePort")],
        backends=[Backend(id=1, ip=ip4("10.244.3.7"), port=8080, name="10.244.3.7:8080 (shop/cart-1)")],
        node=NodeView(primary_ip=ip4(node_ip), local_ips=(ip4(node_ip),),
                      pod_cidrs=((ip4("10.244.0.0"), 16),)),
    )
    syn = Ether() / IP(src="203.0.113.9", dst=node_ip) / TCP(sport=50000, dport=30080, flags="S")
    synack = Ether() / IP(src="10.244.3.7", dst=node_ip) / TCP(sport=8080, dport=50000, flags="SA")
    capture = write_pcap(tmp_path / "in.pcap", [syn, synack])
    replay(capture, None, Dataplane(maps, core=core), trace=tmp_path / "t.jsonl")
    first, second = read_trace(tmp_path / "t.jsonl")
    assert first["verdict"] == "DNAT" and first["reason"] == "NEW_FLOW"
    assert (first["service"], first["frontend"], first["backend"], first["masquerade"]) == (
        "shop/cart:http", "NodePort", "10.244.3.7:8080", node_ip)
    assert second["verdict"] == "REVNAT" and second["reason"] == "CT_REPLY"
    assert (second["service"], second["frontend"], second["backend"]) == (
        "shop/cart:http", "NodePort", "10.244.3.7:8080")


def test_trace_writer_fields_from_arrays(tmp_path):
    """The writer alone: ids index the maps, unknown ids and flags give null."""
    from array import array

    from fastpath.capture import Batch
    from fastpath.dataplane import BatchResult

    maps = Maps(
        services=[Service(id=1, name="a/b:c", backends=(1,))],
        frontends=[Frontend(ip=ip4("10.96.0.1"), port=1, proto=PROTO_TCP, service=1)],
        backends=[Backend(id=1, ip=ip4("10.0.0.1"), port=2, name="x")],
        node=NodeView(primary_ip=ip4("192.168.0.1")),
    )
    batch = Batch(bytearray(3), array("Q", [0, 1, 2]), array("I", [1, 1, 1]),
                  array("Q", [0, 999_999_999, 12 * 10**9 + 5]))
    result = BatchResult(array("B", [Verdict.DNAT, Verdict.PASS, Verdict.REJECT]),
                         array("B", [4, 1, 11]), {2: b"reply"},
                         array("I", [1, 0, 7]), array("I", [1, 0, 0]),
                         array("B", [4 | TRACE_MASQUERADED, 0, 1]))
    stream = io.StringIO()
    writer = TraceWriter(stream, maps)
    assert writer.write_batch(batch, result) == 3
    assert writer.write_batch(batch, result) == 3
    writer.commit()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["frame"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert [line["time"] for line in lines[:3]] == ["0.000000000", "0.999999999", "12.000000005"]
    assert lines[0]["frontend"] == "ExternalIP" and lines[0]["masquerade"] == "192.168.0.1"
    assert lines[0]["service"] == "a/b:c" and lines[0]["backend"] == "10.0.0.1:2"
    assert lines[1]["reason"] == "PASS_NO_SERVICE" and "reply" not in lines[1]
    assert lines[2]["service"] is None and lines[2]["reply"] == "icmp-port-unreachable"
    assert format_time(1_714_641_247_123_456_000) == "1714641247.123456000"
    with pytest.raises(ValueError, match="trace=True"):
        TraceWriter(io.StringIO(), maps).write_batch(batch, BatchResult(result.verdicts,
                                                                        result.reasons))


# --------------------------------------------------------------------------- IPv6

DUALSTACK = Path(__file__).parent / "data" / "dualstack"
NODE_A6 = "fd00:192:168:10::11"


def test_trace_fields_of_both_families():
    """Backends as [ip]:port, and the masquerade address of the flow's own family."""
    from fastpath.maps import address_from_text as a
    from fastpath.trace import trace_fields

    maps = Maps(
        services=[Service(id=1, name="a/web:http", backends=(1,)),
                  Service(id=2, name="a/web:http", backends=(2,), family=6)],
        frontends=[Frontend(ip=a("10.96.0.1"), port=80, proto=PROTO_TCP, service=1),
                   Frontend(ip=a("fd00::1"), port=80, proto=PROTO_TCP, service=2)],
        backends=[Backend(id=1, ip=a("10.0.0.1"), port=8080, name="x"),
                  Backend(id=2, ip=a("fd00:10::1"), port=8080, name="y")],
        node=NodeView(primary_ip=a("192.168.0.1"), primary_ip6=a("fd00:192::1")),
    )
    masq = 1 | TRACE_MASQUERADED
    v4 = trace_fields(maps, Verdict.DNAT, 4, 1, 1, masq)
    v6 = trace_fields(maps, Verdict.DNAT, 4, 2, 2, masq)
    assert (v4["service"], v4["backend"], v4["masquerade"]) == ("a/web:http", "10.0.0.1:8080", "192.168.0.1")
    assert (v6["service"], v6["backend"], v6["masquerade"]) == ("a/web:http", "[fd00:10::1]:8080", "fd00:192::1")
    # a drop attributed to the IPv6 service but to no backend still knows its family
    assert trace_fields(maps, Verdict.DROP, 6, 2, 0, masq)["masquerade"] == "fd00:192::1"
    without = Maps(services=maps.services, frontends=maps.frontends, backends=maps.backends,
                   node=NodeView(primary_ip=a("192.168.0.1")))
    assert trace_fields(without, Verdict.DNAT, 4, 2, 2, masq)["masquerade"] is None  # no IPv6 node address


@pytest.mark.parametrize("core", CORES)
def test_ipv6_lines_and_icmpv6_reply(tmp_path, core):
    from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6

    packets = [
        # from outside the pod network to an IPv6 ClusterIP: masqueraded to the node's IPv6 address
        Ether() / IPv6(src="2001:db8:7::1", dst="fd00:10:96::2010") / TCP(sport=40001, dport=80, flags="S"),
        # the IPv6 half of legacy has no endpoint: rejected with an ICMPv6 port unreachable
        Ether() / IPv6(src="fd00:10:244:1::99", dst="fd00:10:96::2070") / TCP(sport=40002, dport=80, flags="S"),
        # the IPv4 half of the same service port is served
        Ether() / IP(src="10.244.1.99", dst="10.96.20.70") / TCP(sport=40003, dport=80, flags="S"),
    ]
    capture = write_pcap(tmp_path / "in.pcap", packets)
    dataplane = Dataplane(load_cluster([DUALSTACK]), node="node-a", core=core)
    stats = replay(capture, tmp_path / "out.pcap", dataplane, trace=tmp_path / "t.jsonl")
    masqueraded, rejected, ipv4 = read_trace(tmp_path / "t.jsonl")
    assert masqueraded["verdict"] == "DNAT" and masqueraded["service"] == "shop/web:http"
    assert masqueraded["backend"] in ("[fd00:10:244:1::10]:8080", "[fd00:10:244:2::10]:8080")
    assert (masqueraded["frontend"], masqueraded["masquerade"]) == ("ClusterIP", NODE_A6)
    assert rejected == {
        "frame": 2, "time": f"{T0 + 1}.000000000", "verdict": "REJECT", "reason": "REJECT_NO_ENDPOINT",
        "service": "shop/legacy:web", "frontend": "ClusterIP", "backend": None, "masquerade": None,
        "reply": "icmp-port-unreachable",
    }
    assert (ipv4["verdict"], ipv4["backend"], ipv4["masquerade"]) == ("DNAT", "10.244.2.70:8080", None)
    first, reply, third = rdpcap(str(tmp_path / "out.pcap"))
    assert first[IPv6].src == NODE_A6
    assert reply[IPv6].src == "fd00:10:96::2070" and reply[IPv6].dst == "fd00:10:244:1::99"
    assert (reply[ICMPv6DestUnreach].type, reply[ICMPv6DestUnreach].code) == (1, 4)
    assert third[IP].dst == "10.244.2.70"
    assert stats.services == {"shop/web:http (IPv6)": 1, "shop/legacy:web (IPv6)": 1, "shop/legacy:web": 1}


# --------------------------------------------------------------------------- atomic writing


def damaged_capture(tmp_path: Path) -> Path:
    """Three good SYNs, then a record whose length is absurd: the reader fails on it."""
    frames = [Ether() / IP(src="10.244.0.5", dst=WEB_VIP) / TCP(sport=41000 + i, dport=80,
                                                                 flags="S") for i in range(3)]
    good = write_pcap(tmp_path / "good.pcap", frames)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(good.read_bytes() + (T0).to_bytes(4, "little") + bytes(4)
                    + (1 << 30).to_bytes(4, "little") + (1 << 30).to_bytes(4, "little"))
    return bad


def leftovers(directory: Path, stem: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if stem in p.name)


def test_failed_replay_leaves_no_trace(tmp_path, demo_cluster):
    bad = damaged_capture(tmp_path)
    trace = tmp_path / "t.jsonl"
    with pytest.raises(CaptureError):
        replay(bad, None, Dataplane(load_cluster([demo_cluster])), trace=trace, batch_packets=1)
    assert leftovers(tmp_path, "t.jsonl") == []
    trace.write_text("previous contents\n")
    result = fastpath("replay", bad, "--cluster", demo_cluster, "--trace", trace,
                      "-o", tmp_path / "out.pcap", "--batch", "1")
    assert result.returncode == 1
    assert result.stderr.startswith("fastpath: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert trace.read_text() == "previous contents\n"
    assert leftovers(tmp_path, "t.jsonl") == ["t.jsonl"]
    assert leftovers(tmp_path, "out.pcap") == []


def test_interrupted_replay_leaves_no_trace(tmp_path, demo_capture, demo_cluster):
    def interrupt(done: int, total: int, packets: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replay(demo_capture, tmp_path / "out.pcap", Dataplane(load_cluster([demo_cluster])),
               trace=tmp_path / "t.jsonl", batch_packets=10, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_trace_writer_commits_on_success_only(tmp_path):
    maps = Maps()
    with TraceWriter(tmp_path / "ok.jsonl", maps):
        assert not (tmp_path / "ok.jsonl").exists()  # only a temporary file so far
        assert len(leftovers(tmp_path, "ok.jsonl")) == 1
    assert (tmp_path / "ok.jsonl").read_text() == ""
    with pytest.raises(RuntimeError), TraceWriter(tmp_path / "no.jsonl", maps):
        raise RuntimeError("boom")
    assert leftovers(tmp_path, "no.jsonl") == []

#!/usr/bin/env python3
"""Re-record pcaps/demo.pcap: real kernel TCP/UDP traffic to two Services, as a node's ingress sees it.

    sudo PYTHONPATH=pysrc python pcaps/record_demo.py [--cluster pcaps/demo-cluster.yaml] [-o pcaps/demo.pcap]

What it builds (network namespaces only; nothing leaves them, nothing touches the host's links):

    fpdemo-client   client pod 10.244.0.5 ---+
    fpdemo-web1..3  web pods 10.244.1.11-13 -+-- veth pairs --> fpdemo-node (the node)
    fpdemo-dns1..2  dns pods 10.244.1.21-22 -+

The wiring follows Calico's: every pod has a /32 address and a default route via 169.254.1.1 on
its eth0; the host side of each veth is `cali-*` with MAC ee:ee:ee:ee:ee:ee, and the node routes
each pod's /32 to its veth. The node holds 169.254.1.1 and its InternalIP 172.18.0.2 (the Node
object in demo-cluster.yaml) on its loopback, so it answers the pods' ARP for the gateway itself.
IPv6 is off in every namespace, so there is no IPv6 chatter.

The node plays kube-proxy with an nftables DNAT table. Every client connection binds a fixed
source port, and for each such 5-tuple the script installs a DNAT rule to the backend that
fastpath itself selects (fastpath.model.load_cluster -> fastpath.compiler.compile_maps ->
fastpath.reference.select_backend over the service's sorted ready backends). So the recorded
replies come from exactly the backend a replay of this capture picks. Any other packet to a VIP
is dropped on the node, so an unpinned connection would fail loudly instead of being recorded.

tcpdump captures ingress (-Q in) on every node-side veth: client -> VIP packets before
translation and backend -> client replies before reverse translation, plus the ARP that happens
naturally. The per-interface captures are merged by timestamp into one classic pcap (Ethernet,
microseconds, little-endian). Checksum offload is off on every veth, so every TCP/UDP checksum in
the capture is complete. The result is verified with scapy before it replaces the output file,
and every namespace is removed at the end, also on failure.

The same file also holds the programs that run inside the namespaces (--serve-http, --serve-dns,
--client); they are started by the script itself.
"""
from __future__ import annotations

import argparse
import http.server
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

NODE_NS = "fpdemo-node"
NODE_IP = "172.18.0.2"  # the Node's InternalIP, on the node namespace's loopback
GATEWAY = "169.254.1.1"  # every pod's default gateway (Calico style), also on the node's loopback
HOST_MAC = "ee:ee:ee:ee:ee:ee"  # host side of every pod veth (Calico style)

CLIENT_IP = "10.244.0.5"
CLIENT_POD = "client-5b8d7f9c6-q2w4e"

WEB_VIP, WEB_PORT = "10.96.0.10", 80
DNS_VIP, DNS_PORT = "10.96.0.53", 53
VIPS = (WEB_VIP, DNS_VIP)

# name, namespace, host-side veth, pod IP, what it serves (kind, port), pod name.
# Pod IPs and names match the ready endpoints in demo-cluster.yaml (checked before recording).
PODS = [
    ("client", "fpdemo-client", "cali-client", CLIENT_IP, None, CLIENT_POD),
    ("web1", "fpdemo-web1", "cali-web1", "10.244.1.11", ("http", 8080), "web-7c9d8f6b5-4kq2x"),
    ("web2", "fpdemo-web2", "cali-web2", "10.244.1.12", ("http", 8080), "web-7c9d8f6b5-h8m5t"),
    ("web3", "fpdemo-web3", "cali-web3", "10.244.1.13", ("http", 8080), "web-7c9d8f6b5-zr7wn"),
    ("dns1", "fpdemo-dns1", "cali-dns1", "10.244.1.21", ("dns", 5353), "dns-6d5c4b3a2-kp9wd"),
    ("dns2", "fpdemo-dns2", "cali-dns2", "10.244.1.22", ("dns", 5353), "dns-6d5c4b3a2-w4tzs"),
]
NAMESPACES = [NODE_NS] + [pod[1] for pod in PODS]

# Pinned client source ports. With demo-cluster.yaml these spread over all three web endpoints
# and both dns endpoints (the script checks that every ready endpoint gets at least one flow).
WEB_PORTS = list(range(41001, 41011))  # 10 HTTP connections to web 10.96.0.10:80
DNS_QUERIES = [  # (client port, name) to dns 10.96.0.53:53
    (53001, "web.default.svc.cluster.local"),
    (53002, "dns.default.svc.cluster.local"),
    (53003, "web.default.svc.cluster.local"),
    (53004, "nothing.default.svc.cluster.local"),
]
DIRECT = ("10.244.1.12", 8080, 45001)  # client -> pod IP directly: no service, must pass untouched
DNS_RECORDS = {"web.default.svc.cluster.local": WEB_VIP, "dns.default.svc.cluster.local": DNS_VIP}


def pod_mac(ip: str) -> str:
    """0a:58 + the IPv4 address, as the Kubernetes bridge CNI derives pod MACs."""
    return "0a:58:" + ":".join(f"{octet:02x}" for octet in ipaddress.IPv4Address(ip).packed)


# ----------------------------------------------------------------------------------------------
# Programs that run inside the pod namespaces


def serve_http(ip: str, port: int, pod: str) -> None:
    body = f"Hello from {pod} ({ip}:{port})\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "demo-web/1.0"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            head = (f"HTTP/1.1 200 OK\r\nServer: {self.version_string()}\r\n"
                    f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            self.wfile.write(head + body)  # one segment: headers and body
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    class Server(http.server.HTTPServer):
        def server_bind(self) -> None:
            # HTTPServer.server_bind would resolve its address (socket.getfqdn): a DNS lookup
            # through the rig before the capture starts. The pod's name is all it needs.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = pod, port

    server = Server((ip, port), Handler)
    print("ready", flush=True)
    server.serve_forever()


def dns_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


def dns_query(query_id: int, name: str) -> bytes:
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + dns_name(name) + struct.pack("!HH", 1, 1)


def serve_dns(ip: str, port: int) -> None:
    """A tiny authoritative responder: A records for DNS_RECORDS, NXDOMAIN for anything else."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(2048)
        if len(data) < 12:
            continue
        query_id, _flags, qdcount = struct.unpack("!HHH", data[:6])
        labels, at = [], 12
        while at < len(data) and data[at] != 0:
            labels.append(data[at + 1:at + 1 + data[at]].decode("ascii", "replace"))
            at += 1 + data[at]
        question = data[12:at + 5]
        address = DNS_RECORDS.get(".".join(labels).lower())
        if qdcount != 1 or len(question) < 5:
            continue
        if address is None:
            reply = struct.pack("!HHHHHH", query_id, 0x8583, 1, 0, 0, 0) + question
        else:
            reply = (struct.pack("!HHHHHH", query_id, 0x8580, 1, 1, 0, 0) + question
                     + struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + ipaddress.IPv4Address(address).packed)
        sock.sendto(reply, peer)


def _http_open(dst: str, dport: int, sport: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(5)
    sock.bind((CLIENT_IP, sport))
    sock.connect((dst, dport))
    return sock


def _http_request(sock: socket.socket, host: str) -> None:
    sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fastpath-demo/1.0\r\n"
                  "Accept: */*\r\nConnection: close\r\n\r\n").encode())


def _http_finish(sock: socket.socket) -> str:
    chunks = []
    while chunk := sock.recv(4096):  # the server closes first (Connection: close)
        chunks.append(chunk)
    sock.close()
    response = b"".join(chunks).decode()
    status = response.split("\r\n", 1)[0]
    body = response.split("\r\n\r\n", 1)[-1].strip()
    if not status.startswith("HTTP/1.1 200"):
        raise RuntimeError(f"unexpected HTTP response {status!r}")
    return body


def run_client(plan: list[dict]) -> None:
    """Run the traffic plan inside the client namespace; check every answer came from `expect`."""
    open_sockets: dict[int, socket.socket] = {}
    for step in plan:
        kind = step["kind"]
        if kind == "pause":
            time.sleep(step["seconds"])
        elif kind == "http":
            sock = _http_open(step["dst"], step["dport"], step["sport"])
            _http_request(sock, step["host"])
            body = _http_finish(sock)
            _check(step, body)
        elif kind == "http-open":  # overlapping connections: open now, request and finish later
            open_sockets[step["sport"]] = _http_open(step["dst"], step["dport"], step["sport"])
        elif kind == "http-request":
            _http_request(open_sockets[step["sport"]], step["host"])
        elif kind == "http-finish":
            _check(step, _http_finish(open_sockets.pop(step["sport"])))
        elif kind == "dns":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(5)
            sock.bind((CLIENT_IP, step["sport"]))
            sock.connect((step["dst"], step["dport"]))
            sock.send(dns_query(step["id"], step["name"]))
            reply = sock.recv(2048)
            sock.close()
            rcode = reply[3] & 0x0F
            answer = (str(ipaddress.IPv4Address(reply[-4:])) if rcode == 0 else "NXDOMAIN")
            print(f"  udp {CLIENT_IP}:{step['sport']} -> {step['dst']}:{step['dport']}  "
                  f"{step['name']} -> {answer}  (expected from {step['expect']})", flush=True)
        else:
            raise ValueError(f"unknown step {kind!r}")


def _check(step: dict, body: str) -> None:
    print(f"  tcp {CLIENT_IP}:{step['sport']} -> {step['dst']}:{step['dport']}  {body}", flush=True)
    if step["expect"] not in body:
        raise RuntimeError(f"connection from port {step['sport']} was answered by the wrong pod: "
                           f"{body!r}, expected {step['expect']}")


# ----------------------------------------------------------------------------------------------
# The recording rig (runs in the host namespace as root)


def sh(*argv: str, ns: str | None = None, stdin: str | None = None) -> str:
    command = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    result = subprocess.run(command, input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def existing_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def build_rig(created: list[str]) -> None:
    for ns in NAMESPACES:
        sh("ip", "netns", "add", ns)
        created.append(ns)
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", ns=ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
    # The node forwards between the pod veths. Its own addresses (the Node's InternalIP and the
    # pods' gateway) sit on its loopback: it answers ARP for the gateway on every veth, and it has
    # no link to anywhere outside the rig.
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
       "net.ipv4.conf.default.rp_filter=0", ns=NODE_NS)
    sh("ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo", ns=NODE_NS)
    sh("ip", "addr", "add", f"{GATEWAY}/32", "dev", "lo", ns=NODE_NS)
    for _, ns, host_dev, ip, _, _ in PODS:
        sh("ip", "-n", NODE_NS, "link", "add", host_dev, "address", HOST_MAC, "type", "veth",
           "peer", "name", "eth0", "netns", ns, "address", pod_mac(ip))
        for where, dev in ((ns, "eth0"), (NODE_NS, host_dev)):
            # Complete checksums in software: otherwise captures hold partial (offload) checksums.
            sh("ethtool", "-K", dev, "tx", "off", "rx", "off", ns=where)
            sh("ip", "link", "set", dev, "up", ns=where)
        sh("sysctl", "-qw", f"net.ipv4.conf.{host_dev}.rp_filter=0", ns=NODE_NS)
        sh("ip", "route", "add", f"{ip}/32", "dev", host_dev, "scope", "link", ns=NODE_NS)
        sh("ip", "addr", "add", f"{ip}/32", "dev", "eth0", ns=ns)
        sh("ip", "route", "add", GATEWAY, "dev", "eth0", "scope", "link", ns=ns)
        sh("ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0", ns=ns)


def choose_backends(cluster: Path) -> tuple[list[dict], dict[tuple, tuple[str, int]], set[str]]:
    """The client's plan; fastpath's own choice for every pinned flow, {(sport, vip, vport, proto):
    (ip, port)}; and the endpoint IPs of the cluster that new flows must not reach."""
    # This tree's fastpath (model, compiler and reference are pure Python), even if another
    # version is installed: the capture must match the selection of the code beside it.
    if str(REPO / "pysrc") not in sys.path:
        sys.path.insert(0, str(REPO / "pysrc"))
    from fastpath.compiler import compile_maps
    from fastpath.maps import PROTO_TCP, PROTO_UDP
    from fastpath.model import load_cluster
    from fastpath.reference import select_backend

    state = load_cluster([cluster])
    maps = compile_maps(state).maps  # node=None, like `fastpath replay`'s default
    ip_int = lambda text: int(ipaddress.IPv4Address(text))  # noqa: E731
    ip_str = lambda value: str(ipaddress.IPv4Address(value))  # noqa: E731

    def choose(sport: int, vip: str, vport: int, proto: int) -> tuple[str, int]:
        frontend = next((f for f in maps.frontends
                         if (f.ip, f.port, f.proto) == (ip_int(vip), vport, proto)), None)
        if frontend is None:
            raise SystemExit(f"record_demo: {cluster} has no frontend {vip}:{vport}/{proto}")
        service = maps.services[frontend.service - 1]
        backend_id = select_backend(service.backends, ip_int(CLIENT_IP), ip_int(vip), sport, vport, proto)
        backend = maps.backends[backend_id - 1]
        return ip_str(backend.ip), backend.port

    choices: dict[tuple, tuple[str, int]] = {}
    for sport in WEB_PORTS:
        choices[(sport, WEB_VIP, WEB_PORT, PROTO_TCP)] = choose(sport, WEB_VIP, WEB_PORT, PROTO_TCP)
    for sport, _ in DNS_QUERIES:
        choices[(sport, DNS_VIP, DNS_PORT, PROTO_UDP)] = choose(sport, DNS_VIP, DNS_PORT, PROTO_UDP)

    # Every ready backend of both services must be a pod of the rig and get at least one flow.
    rig = {(ip, serves[1]) for _, _, _, ip, serves, _ in PODS if serves}
    ready = set()
    for service in maps.services:
        ready.update((ip_str(maps.backends[b - 1].ip), maps.backends[b - 1].port) for b in service.backends)
    if ready != rig:
        raise SystemExit(f"record_demo: the cluster's ready backends {sorted(ready)} are not the rig's "
                         f"pods {sorted(rig)}")
    unused = ready - set(choices.values())
    if unused:
        raise SystemExit(f"record_demo: no pinned flow selects {sorted(unused)}: choose other source ports")
    # Endpoints that must receive nothing (not ready, terminating): no rig pod, no packet.
    idle = {endpoint.addresses[0] for eps in state.endpoint_slices for endpoint in eps.endpoints
            if endpoint.addresses} - {ip for ip, _ in ready}

    pod_of = {ip: pod for _, _, _, ip, _, pod in PODS}
    plan: list[dict] = []
    web = lambda sport: dict(dst=WEB_VIP, dport=WEB_PORT, sport=sport, host="web.default.svc",  # noqa: E731
                             expect=pod_of[choices[(sport, WEB_VIP, WEB_PORT, PROTO_TCP)][0]])
    dns = lambda i: dict(kind="dns", dst=DNS_VIP, dport=DNS_PORT, sport=DNS_QUERIES[i][0],  # noqa: E731
                         name=DNS_QUERIES[i][1], id=0x2B10 + i,
                         expect=pod_of[choices[(DNS_QUERIES[i][0], DNS_VIP, DNS_PORT, PROTO_UDP)][0]])
    pause = dict(kind="pause", seconds=0.05)
    plan += [dns(0), pause, dict(kind="http", **web(41001)), pause, dict(kind="http", **web(41002)), pause]
    # Two overlapping connections: both handshakes, then both requests, then both teardowns.
    plan += [dict(kind="http-open", **web(41003)), dict(kind="http-open", **web(41004)),
             dict(kind="http-request", **web(41004)), dict(kind="http-request", **web(41003)),
             dict(kind="http-finish", **web(41003)), dict(kind="http-finish", **web(41004)), pause]
    plan += [dns(1), pause]
    for sport in (41005, 41006, 41007):
        plan += [dict(kind="http", **web(sport)), pause]
    direct_ip, direct_port, direct_sport = DIRECT
    plan += [dict(kind="http", dst=direct_ip, dport=direct_port, sport=direct_sport,
                  host=f"{direct_ip}:{direct_port}", expect=pod_of[direct_ip]), pause]
    plan += [dns(2), pause, dns(3), pause]
    for sport in (41008, 41009, 41010):
        plan += [dict(kind="http", **web(sport)), pause]
    return plan, choices, idle


def install_dnat(choices: dict[tuple, tuple[str, int]]) -> None:
    """kube-proxy's part, one exact-5-tuple rule per pinned flow; any other VIP traffic is dropped."""
    names = {6: "tcp", 17: "udp"}
    rules = [f"ip saddr {CLIENT_IP} ip daddr {vip} {names[proto]} sport {sport} {names[proto]} dport {vport} "
             f"counter dnat to {ip}:{port}"
             for (sport, vip, vport, proto), (ip, port) in choices.items()]
    ruleset = ("table ip fpdemo_kube_proxy {\n"
               "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n"
               + "".join(f"    {rule}\n" for rule in rules)
               + "  }\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n"
               f"    ip daddr {{ {', '.join(VIPS)} }} counter drop\n  }}\n}}\n")
    sh("nft", "-f", "-", ns=NODE_NS, stdin=ruleset)


def start_ready(argv: list[str], procs: list[subprocess.Popen], what: str, timeout: float = 10) -> subprocess.Popen:
    """Start a process and wait until its stdout/stderr says `what` (a first line containing it)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    stream = proc.stderr if what.startswith("listening") else proc.stdout
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.1)
        if ready:
            line = stream.readline()
            seen += line
            if what in line:
                return proc
            if not line and proc.poll() is not None:
                break
    raise RuntimeError(f"{' '.join(argv)} did not become ready: {seen.strip()!r}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------------------------
# Merging the per-interface captures


def read_pcap(path: Path) -> list[tuple[int, bytes, int]]:
    """(timestamp ns, captured bytes, original length) of every record of a classic pcap."""
    data = path.read_bytes()
    magic = data[:4]
    for endian in "<>":
        number = struct.unpack(endian + "I", magic)[0]
        if number in (0xA1B2C3D4, 0xA1B23C4D):
            scale = 1000 if number == 0xA1B2C3D4 else 1
            break
    else:
        raise RuntimeError(f"{path}: not a classic pcap")
    linktype = struct.unpack(endian + "I", data[20:24])[0] & 0x0FFFFFFF
    if linktype != 1:
        raise RuntimeError(f"{path}: link type {linktype}, expected Ethernet (1)")
    records, at = [], 24
    while at + 16 <= len(data):
        sec, frac, caplen, origlen = struct.unpack(endian + "IIII", data[at:at + 16])
        records.append((sec * 1_000_000_000 + frac * scale, data[at + 16:at + 16 + caplen], origlen))
        at += 16 + caplen
    return records


def merge_pcaps(inputs: list[Path], output: Path) -> int:
    """Merge by timestamp (stable: ties keep interface order, then capture order) into one pcap."""
    merged = sorted(((ts, index, seq, frame, origlen)
                     for index, path in enumerate(inputs)
                     for seq, (ts, frame, origlen) in enumerate(read_pcap(path))),
                    key=lambda record: record[:3])
    with open(output, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for ts, _, _, frame, origlen in merged:
            out.write(struct.pack("<IIII", ts // 1_000_000_000, ts % 1_000_000_000 // 1000, len(frame), origlen))
            out.write(frame)
    return len(merged)


# ----------------------------------------------------------------------------------------------
# Verification (scapy is the independent decoder)


def verify(path: Path, choices: dict[tuple, tuple[str, int]], idle: set[str]) -> None:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import ARP, Ether
    from scapy.utils import rdpcap

    packets = rdpcap(str(path))
    counts: dict[str, int] = {}
    replies_from: dict[int, set[tuple[str, int]]] = {}
    tcp_flags: dict[int, set[str]] = {}
    errors = []
    backend_ips = {ip for ip, _ in choices.values()}
    direct_ip, direct_port, direct_sport = DIRECT
    for number, packet in enumerate(packets, start=1):
        if ARP in packet:
            kind = "arp " + ("request" if packet[ARP].op == 1 else "reply")
        elif IP in packet:
            ip = packet[IP]
            l4 = packet[TCP] if TCP in packet else packet[UDP] if UDP in packet else None
            rebuilt = packet.copy()
            for layer in (IP, TCP, UDP, ICMP):
                if layer in rebuilt and not (layer is UDP and rebuilt[UDP].chksum == 0):
                    del rebuilt[layer].chksum
            if bytes(Ether(bytes(rebuilt))) != bytes(packet):
                errors.append(f"packet {number}: bad checksum: {packet.summary()}")
            if l4 is None:
                kind = "other ip"
            elif ip.dst in VIPS:
                kind = f"client -> VIP ({'tcp' if TCP in packet else 'udp'})"
                tcp_flags.setdefault(l4.sport, set()).update(_flags(packet))
            elif ip.src in backend_ips and ip.dst == CLIENT_IP and l4.dport != direct_sport:
                kind = f"backend -> client ({'tcp' if TCP in packet else 'udp'})"
                replies_from.setdefault(l4.dport, set()).add((ip.src, l4.sport))
                tcp_flags.setdefault(-l4.dport, set()).update(_flags(packet))
            elif {ip.src, ip.dst} == {CLIENT_IP, direct_ip} and direct_sport in (l4.sport, l4.dport):
                kind = "client <-> pod IP directly (no service)"
            else:
                kind = "other ip"
                errors.append(f"packet {number}: unexpected {packet.summary()}")
            if {ip.src, ip.dst} & idle:
                errors.append(f"packet {number}: traffic to a not-ready/terminating endpoint")
        else:
            kind = "other"
            errors.append(f"packet {number}: unexpected non-IP {packet.summary()}")
        counts[kind] = counts.get(kind, 0) + 1

    for (sport, vip, vport, proto), backend in choices.items():
        got = replies_from.get(sport, set())
        if got != {backend}:
            errors.append(f"flow {CLIENT_IP}:{sport} -> {vip}:{vport}: replies from {sorted(got)}, "
                          f"fastpath selects {backend}")
        if proto == 6 and not ({"S", "F"} <= tcp_flags.get(sport, set())
                               and {"SA", "F"} <= tcp_flags.get(-sport, set())):
            errors.append(f"tcp flow from port {sport}: handshake or FIN teardown missing")
    size = path.stat().st_size
    print(f"\n{path}: {len(packets)} packets, {size} bytes")
    for kind in sorted(counts):
        print(f"  {counts[kind]:4d}  {kind}")
    print("  flows per backend (fastpath's choice, confirmed by the recorded replies):")
    per_backend: dict[tuple[str, int], int] = {}
    for backend in choices.values():
        per_backend[backend] = per_backend.get(backend, 0) + 1
    for (ip, port), n in sorted(per_backend.items()):
        print(f"    {ip}:{port}  {n}")
    if size > 100_000:
        errors.append(f"capture is {size} bytes, more than 100 KB")
    if errors:
        raise RuntimeError("verification failed:\n  " + "\n  ".join(errors))


def _flags(packet) -> set[str]:
    from scapy.layers.inet import TCP

    if TCP not in packet:
        return set()
    flags = int(packet[TCP].flags)
    found = set()
    if flags & 0x12 == 0x02:
        found.add("S")
    if flags & 0x12 == 0x12:
        found.add("SA")
    if flags & 0x01:
        found.add("F")
    if flags & 0x04:
        found.add("R")
    return found


# ----------------------------------------------------------------------------------------------


def record(cluster: Path, output: Path) -> None:
    if os.geteuid() != 0:
        raise SystemExit("record_demo: run as root (network namespaces, nftables, tcpdump)")
    for tool in ("ip", "nft", "tcpdump", "ethtool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"record_demo: {tool} is not installed")
    leftovers = existing_namespaces() & set(NAMESPACES)
    if leftovers:
        raise SystemExit("record_demo: namespaces from an earlier run still exist (another run, or a "
                         f"crash): remove them with: {'; '.join(f'ip netns del {ns}' for ns in sorted(leftovers))}")

    plan, choices, idle = choose_backends(cluster)
    print("fastpath's backend choice per pinned flow:")
    for (sport, vip, vport, proto), (ip, port) in choices.items():
        print(f"  {'tcp' if proto == 6 else 'udp'} {CLIENT_IP}:{sport} -> {vip}:{vport}  =>  {ip}:{port}")

    def interrupted(signum: int, _frame: object) -> None:
        raise SystemExit(f"record_demo: stopped by signal {signal.Signals(signum).name}")

    for signum in (signal.SIGTERM, signal.SIGHUP):  # still run the clean-up below
        signal.signal(signum, interrupted)
    created: list[str] = []
    procs: list[subprocess.Popen] = []
    workdir = Path(tempfile.mkdtemp(prefix="fpdemo-"))
    try:
        build_rig(created)
        install_dnat(choices)
        me = [sys.executable, str(Path(__file__).resolve())]
        for _, ns, _, ip, serves, pod in PODS:
            if serves and serves[0] == "http":
                start_ready(["ip", "netns", "exec", ns, *me, "--serve-http", ip, str(serves[1]), pod], procs, "ready")
            elif serves:
                start_ready(["ip", "netns", "exec", ns, *me, "--serve-dns", ip, str(serves[1])], procs, "ready")
        captures = []
        for _, _, host_dev, _, _, _ in PODS:
            pcap = workdir / f"{host_dev}.pcap"
            captures.append((start_ready(["ip", "netns", "exec", NODE_NS, "tcpdump", "-i", host_dev, "-Q", "in",
                                          "-n", "-U", "--immediate-mode", "-Z", "root", "--time-stamp-precision", "nano",
                                          "-w", str(pcap)], procs, "listening on"), pcap))
        time.sleep(0.3)
        print("traffic:")
        client = subprocess.run(["ip", "netns", "exec", "fpdemo-client", *me, "--client", json.dumps(plan)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        print(client.stdout, end="")
        if client.returncode != 0:
            raise RuntimeError("the client failed (see above)")
        time.sleep(0.5)  # let the last ACKs arrive
        for proc, pcap in captures:
            stop(proc, signal.SIGINT)
            report = proc.stderr.read()
            dropped = re.search(r"(\d+) packets? dropped by kernel", report)
            if dropped is None or int(dropped.group(1)) != 0:
                raise RuntimeError(f"tcpdump on {pcap.stem} lost packets: {report.strip()!r}")
        merged = workdir / "demo.pcap"
        merge_pcaps([pcap for _, pcap in captures], merged)
        verify(merged, choices, idle)
        shutil.copyfile(merged, output)
        print(f"wrote {output}")
    finally:
        for proc in reversed(procs):
            stop(proc)
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
        left = existing_namespaces() & set(NAMESPACES)
        if left:
            print(f"record_demo: warning: namespaces left behind: {sorted(left)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", type=Path, default=HERE / "demo-cluster.yaml", help="cluster state (YAML)")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "demo.pcap", help="capture to write")
    parser.add_argument("--serve-http", nargs=3, metavar=("IP", "PORT", "POD"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-dns", nargs=2, metavar=("IP", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--client", metavar="PLAN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_http:
        serve_http(args.serve_http[0], int(args.serve_http[1]), args.serve_http[2])
    elif args.serve_dns:
        serve_dns(args.serve_dns[0], int(args.serve_dns[1]))
    elif args.client:
        run_client(json.loads(args.client))
    else:
        record(args.cluster, args.output)


if __name__ == "__main__":
    main()

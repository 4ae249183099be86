"""`fastpath replay` end to end on the bundled demo and on bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from fastpath import Verdict, load_cluster

WEB_VIP, DNS_VIP = "10.96.0.10", "10.96.0.53"


def fastpath(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "fastpath", *map(str, args)],
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def ready_endpoints(cluster) -> set[tuple[str, int]]:
    state = load_cluster([cluster])
    ready = set()
    for eps in state.endpoint_slices:
        ports = [p.port for p in eps.ports]
        for endpoint in eps.endpoints:
            if endpoint.conditions.ready in (None, True):
                ready.update((endpoint.addresses[0], port) for port in ports)
    return ready


def checksums_valid(packet) -> bool:
    """Rebuild the packet with scapy computing every checksum; compare with what we wrote."""
    rebuilt = packet.copy()
    for layer in (IP, TCP, UDP):
        if layer in rebuilt:
            if layer is UDP and rebuilt[UDP].chksum == 0:
                continue
            del rebuilt[layer].chksum
    return bytes(Ether(bytes(rebuilt))) == bytes(packet)


@pytest.fixture(scope="module")
def demo_replay(tmp_path_factory, demo_capture, demo_cluster):
    out = tmp_path_factory.mktemp("replay")
    result = fastpath("replay", demo_capture, "--cluster", demo_cluster,
                      "-o", out / "out.pcap", "--stats", out / "stats.json", check=True)
    return result, rdpcap(str(demo_capture)), rdpcap(str(out / "out.pcap")), \
        json.loads((out / "stats.json").read_text())


def test_demo_flows_go_to_ready_endpoints_and_replies_come_back(demo_replay, demo_cluster):
    result, before, after, stats = demo_replay
    ready = ready_endpoints(demo_cluster)
    assert len(after) == len(before)  # nothing in the demo is dropped
    translated = replies = 0
    for original, rewritten in zip(before, after):
        assert float(original.time) == float(rewritten.time)
        if IP not in original:
            assert bytes(original) == bytes(rewritten)
            continue
        l4 = TCP if TCP in original else UDP
        if original[IP].dst in (WEB_VIP, DNS_VIP):
            translated += 1
            assert (rewritten[IP].dst, rewritten[l4].dport) in ready
            assert rewritten[IP].src == original[IP].src
        elif (original[IP].src, original[l4].sport) in ready and rewritten[IP].src != original[IP].src:
            replies += 1
            assert rewritten[IP].src in (WEB_VIP, DNS_VIP)
            assert rewritten[l4].sport in (80, 53)
        assert checksums_valid(rewritten), rewritten.summary()
    assert translated > 0 and replies > 0
    assert stats["verdicts"]["DNAT"] == translated
    assert stats["verdicts"]["REVNAT"] == replies
    # every web connection spreads over ready endpoints; the not-ready ones get nothing
    used = {name.split(" ")[0] for name in stats["backends"]}
    assert used <= {f"{ip}:{port}" for ip, port in ready}
    assert "10.244.1.14:8080" not in used and "10.244.1.15:8080" not in used
    assert len({u for u in used if u.endswith(":8080")}) >= 2


def test_summary_names_services_and_backends(demo_replay):
    result, *_ = demo_replay
    assert "default/web:http" in result.stdout
    assert "default/dns:dns" in result.stdout
    assert "packets/s" in result.stdout
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_stats_json_shape(demo_replay):
    *_, stats = demo_replay
    assert stats["packets"] == stats["packets_written"] + stats["verdicts"]["DROP"]
    assert set(stats["verdicts"]) == {v.name for v in Verdict}
    assert stats["cluster"]["skipped"] == {"ConfigMap": 1}
    assert stats["packets_per_second"] > 0


def test_not_a_capture_is_one_line_error(tmp_path, demo_cluster):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello, this is not a capture\n")
    result = fastpath("replay", bogus, "--cluster", demo_cluster, "-o", tmp_path / "out.pcap")
    assert result.returncode == 1
    assert result.stderr.startswith("fastpath: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir() if "out.pcap" in p.name] == []


def test_missing_capture_is_one_line_error(tmp_path, demo_cluster):
    result = fastpath("replay", tmp_path / "nope.pcap", "--cluster", demo_cluster)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "nope.pcap" in result.stderr


@pytest.mark.skipif(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >= 2**31 * 64,
                    reason="a machine with 128 GiB or more could make the table")
def test_a_conntrack_beyond_the_machine_is_one_line_error(tmp_path, demo_capture, demo_cluster):
    """The table is allocated when the engine is made: 2**31-1 entries (128 GiB) are refused
    there, before anything is written."""
    result = fastpath("replay", demo_capture, "--cluster", demo_cluster, "-o", tmp_path / "out.pcap",
                      "--ct-capacity", 2**31 - 1)
    assert result.returncode == 1
    assert result.stderr == ("fastpath: error: out of memory: cannot allocate a conntrack table "
                             "of 2,147,483,647 entries (128.0 GiB)\n")
    assert not (tmp_path / "out.pcap").exists()


def test_cluster_syntax_error_names_the_file(tmp_path, demo_capture):
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Service\nmetadata: {name: web\n")
    result = fastpath("replay", demo_capture, "--cluster", broken, "-o", tmp_path / "out.pcap")
    assert result.returncode == 1
    assert "broken.yaml" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    # Nor the temporary output prepared while the cluster was read.
    assert [p.name for p in tmp_path.iterdir() if "out.pcap" in p.name] == []


def test_invalid_object_names_kind_name_and_field(tmp_path, demo_capture):
    bad = tmp_path / "svc.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n"
        "spec:\n  clusterIP: 10.96.0.10\n  ports:\n  - {name: http, port: 99999}\n"
    )
    result = fastpath("replay", demo_capture, "--cluster", bad)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "svc.yaml" in line and "Service shop/web" in line and "spec.ports[0].port" in line


def test_usage_errors_exit_2(demo_capture):
    assert fastpath("replay", demo_capture).returncode == 2  # --cluster is required
    assert fastpath("replay", demo_capture, "--cluster", "x", "--batch", "0").returncode == 2
    assert fastpath("frobnicate").returncode == 2


def test_help_explains(demo_capture):
    result = fastpath("replay", "--help", check=True)
    assert "--cluster" in result.stdout and "exit status" in result.stdout


def test_truncated_capture_keeps_complete_packets(tmp_path, demo_capture, demo_cluster):
    data = demo_capture.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 7])
    result = fastpath("replay", cut, "--cluster", demo_cluster, "-o", tmp_path / "out.pcap",
                      "--stats", tmp_path / "s.json", check=True)
    assert "warning" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["packets"] == len(rdpcap(str(demo_capture))) - 1
    assert stats["truncated_tail"]


def test_damaged_capture_leaves_no_output(tmp_path, demo_cluster):
    frames = [Ether() / IP(dst="10.96.0.10") / TCP(dport=80, flags="S")] * 3
    good = tmp_path / "good.pcap"
    wrpcap(str(good), frames)
    damaged = bytearray(good.read_bytes())
    damaged[24 + 8: 24 + 12] = (1 << 30).to_bytes(4, "little")  # absurd incl_len in record 1
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(damaged))
    out = tmp_path / "out.pcap"
    out.write_bytes(b"previous contents")
    result = fastpath("replay", bad, "--cluster", demo_cluster, "-o", out)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"previous contents"
    assert [p.name for p in tmp_path.iterdir() if "out.pcap" in p.name] == ["out.pcap"]


def test_progress_bar_when_asked(tmp_path, demo_capture, demo_cluster):
    result = fastpath("replay", demo_capture, "--cluster", demo_cluster, "--progress", "always",
                      "-q", check=True)
    assert "100.0%" in result.stderr and "packets/s" in result.stderr
    assert result.stdout == ""


def test_closed_stdout_is_not_an_error(demo_capture, demo_cluster):
    process = subprocess.Popen([sys.executable, "-m", "fastpath", "replay", str(demo_capture),
                                "--cluster", str(demo_cluster)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # like `| head -0`
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) in (0, 141)
    assert "Traceback" not in stderr and "error" not in stderr


def test_dual_stack_replay_summary(tmp_path):
    """Both families through the command line: the summary names the IPv6 half of a service
    port, IPv6 backends as [ip]:port, and counts the IPv6 service ports."""
    from pathlib import Path

    from scapy.layers.inet6 import IPv6

    cluster = Path(__file__).parent / "data" / "dualstack"
    packets = [Ether() / IPv6(src="fd00:10:244:1::99", dst="fd00:10:96::2010") / TCP(sport=40000 + n, dport=80,
                                                                                    flags="S")
               for n in range(8)]
    packets += [Ether() / IP(src="10.244.1.99", dst="10.96.20.10") / TCP(sport=41000, dport=80, flags="S")]
    wrpcap(str(tmp_path / "in.pcap"), packets)
    result = fastpath("replay", tmp_path / "in.pcap", "--cluster", cluster, "--node", "node-a",
                      "-o", tmp_path / "out.pcap", "--stats", tmp_path / "stats.json", check=True)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["services"] == {"shop/web:http (IPv6)": 8, "shop/web:http": 1}
    assert set(stats["backends"]) <= {"[fd00:10:244:1::10]:8080 (shop/web-7c5d8f9b6-a1b2c)",
                                      "[fd00:10:244:2::10]:8080 (shop/web-7c5d8f9b6-d3e4f)",
                                      "10.244.1.10:8080 (shop/web-7c5d8f9b6-a1b2c)",
                                      "10.244.2.10:8080 (shop/web-7c5d8f9b6-d3e4f)"}
    assert "shop/web:http (IPv6)" in result.stdout and "[fd00:10:244:" in result.stdout
    assert "node node-a; 11 service ports (6 of them IPv6)" in result.stdout
    for packet in rdpcap(str(tmp_path / "out.pcap"))[:8]:
        assert packet[IPv6].dst in ("fd00:10:244:1::10", "fd00:10:244:2::10")
        rebuilt = packet.copy()
        del rebuilt[TCP].chksum
        assert bytes(Ether(bytes(rebuilt))) == bytes(packet)


def test_new_flow_rate_guard_from_the_command_line(tmp_path, demo_capture, demo_cluster):
    bad = fastpath("replay", demo_capture, "--cluster", demo_cluster, "-o", tmp_path / "x.pcap",
                   "--new-flow-rate", "-1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--new-flow-rate: expected new flows per second" in bad.stderr.strip().splitlines()[-1]
    stats = tmp_path / "stats.json"
    # A 1-entry table and 1 new flow a second: the demo's later flows find the guard spent.
    fastpath("replay", demo_capture, "--cluster", demo_cluster, "-o", tmp_path / "out.pcap",
             "--ct-capacity", "1", "--new-flow-rate", "1", "--stats", stats, check=True)
    counts = json.loads(stats.read_text())
    assert counts["reasons"]["DROP_FLOW_RATE"] == counts["conntrack"]["rate_limited"] > 0


def test_one_thread_writes_the_same_capture(tmp_path, demo_capture, demo_cluster, demo_replay):
    fastpath("replay", demo_capture, "--cluster", demo_cluster, "-o", tmp_path / "one.pcap",
             "--stats", tmp_path / "one.json", "--one-thread", check=True)
    _, _, threaded, threaded_stats = demo_replay
    threaded_stats = dict(threaded_stats)  # (the fixture is shared)
    one = json.loads((tmp_path / "one.json").read_text())
    assert [bytes(p) for p in rdpcap(str(tmp_path / "one.pcap"))] == [bytes(p) for p in threaded]
    for varying in ("output", "elapsed_s", "packets_per_second"):
        del one[varying], threaded_stats[varying]
    assert one == threaded_stats


def test_a_cached_replay_imports_only_what_it_uses(tmp_path, demo_capture, demo_cluster):
    """Start-up cost: no trace writer without --trace, no scapy or logging for classic pcap, no
    explain, and with the compiled dump cached no compiler, cluster model or YAML parser."""
    command = ["replay", str(demo_capture), "--cluster", str(demo_cluster),
               "-o", str(tmp_path / "out.pcap"), "-q"]
    fastpath(*command, check=True)  # the compiled dump is cached from here on
    script = f"""
import sys
before = set(sys.modules)
from fastpath.cli import main
assert main({command!r}) == 0
print(sorted(m for m in set(sys.modules) - before
             if m.split(".")[0] in ("scapy", "logging", "yaml")
             or m in ("fastpath.trace", "fastpath.explain", "fastpath.compiler", "fastpath.model")))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"

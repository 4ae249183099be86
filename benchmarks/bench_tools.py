"""Reference points: other tools on the standard capture on tmpfs, and fastpath beside them.

Everything reads the workload's capture copied to tmpfs (/dev/shm) and writes there.

  tcprewrite_cidr_map        tcprewrite (Debian package tcpreplay) with a static map: every
                             Service address 10.96.0.0/16 to 10.244.0.0/16 (--dstipmap, one
                             pseudo-NAT rule) and the Service ports to the target ports
                             (--portmap); it rewrites and fixes IP/TCP/UDP checksums as fastpath
                             does (the cheapest static map tcprewrite has: the reference to beat)
  tcprewrite_per_service_map the same with one /32 rule per Service (1,000 ClusterIP -> one
                             endpoint each: fastpath's own table, as a static map). tcprewrite
                             walks its rule list per packet: ~2 min for the standard capture, so
                             this case runs only with --tcprewrite-full-map
  cat                        `cat CAPTURE > OUT`: the floor for a file-to-file pass
  scapy_loop                 a plain scapy loop doing the same DNAT (PcapReader, a conntrack
                             dict, the core's backend choice, PcapWriter) on the first 2,000
                             packets, checked byte for byte against the core's output: the
                             issue's "about 1,000 packets/s" (scapy is a fastpath dependency)
  fastpath_cli               `python -m fastpath replay CAPTURE --cluster cluster.yaml -o OUT`
                             end to end (start-up, YAML, compile, replay, write)
  fastpath_cli_paired        fastpath_cli's rounds again, each right after a tcprewrite run
                             (CIDR map) timed in its untimed setup: `x_tcprewrite_paired` is the
                             median of the rounds' tcprewrite / CLI ratios (min and max beside
                             it), two runs a second apart rather than medians taken minutes apart
  fastpath_library           fastpath.replay(capture, output, Dataplane(maps)) in process (the
                             Dataplane built in untimed setup): the replay path without the
                             CLI's fixed cost

The fastpath cases record `x_tcprewrite` (tcprewrite's median time over theirs: their packets/s
as a multiple of tcprewrite's, target >= 5) and `x_cat` (their median over cat's, target <= 2),
from the reference cases of the same session, or from a best-of-three run made on the spot
when those were deselected.

tcprewrite missing: the suite tries `apt-get install -y tcpreplay` once when running as root
(set FASTPATH_BENCH_NO_APT=1 to forbid it) and skips its cases with the reason if that fails.
"""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
import time
from array import array
from pathlib import Path

import pytest

import workload
from conftest import apt_install, fastpath_env, record_paired, record_rates

Engine = pytest.importorskip("fastpath._core", reason="build the core first").Engine
from fastpath.dataplane import Dataplane  # noqa: E402
from fastpath.replaying import replay  # noqa: E402

pytestmark = pytest.mark.benchmark(group="tools: standard capture, file to file on tmpfs")

TARGET_X_TCPREWRITE = 5.0
TARGET_X_CAT = 2.0
SCAPY_PACKETS = 2_000  # the first packets of the capture: about 1,000 a second
_medians: dict[str, float] = {}


@pytest.fixture(scope="session")
def tcprewrite() -> str:
    path = shutil.which("tcprewrite")
    if path is None:
        why = apt_install(["tcpreplay"], lambda: shutil.which("tcprewrite") is not None)
        path = shutil.which("tcprewrite")
        if path is None:
            pytest.skip(f"tcprewrite not found (Debian package tcpreplay; {why})")
    return path


def _service_ports(workload_files) -> str:
    cluster = workload.plan_cluster(workload_files.spec)
    pairs = sorted({(s.port, s.target_port) for s in cluster.services if s.port != s.target_port})
    return ",".join(f"{port}:{target}" for port, target in pairs)


def _cidr_command(tcprewrite, workload_files, capture: Path, output: Path) -> list[str]:
    return [tcprewrite, "--dstipmap=10.96.0.0/16:10.244.0.0/16",
            f"--portmap={_service_ports(workload_files)}", "-i", str(capture), "-o", str(output)]


def _per_service_command(tcprewrite, workload_files, capture: Path, output: Path) -> list[str]:
    cluster = workload.plan_cluster(workload_files.spec)
    rules = ",".join(f"{workload._dotted(s.cluster_ip)}/32:{workload._dotted(s.endpoints[0].ip)}/32"
                     for s in cluster.services)
    return [tcprewrite, f"--dstipmap={rules}", f"--portmap={_service_ports(workload_files)}",
            "-i", str(capture), "-o", str(output)]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False)
    if done.returncode != 0:
        raise AssertionError(f"{command[0]} exited {done.returncode}: {done.stderr[-2000:]}")


def _best_of(command: list[str], output: Path, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        _run(command)
        best = min(best, time.perf_counter() - started)
        output.unlink()
    return best


def _median(benchmark) -> float | None:
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    return None if stats is None else stats.median


def _time_command(benchmark, name: str, command: list[str], output: Path, capture: Path,
                  workload_files, rounds: int) -> None:
    benchmark.extra_info["command"] = " ".join(command) if len(" ".join(command)) < 500 else \
        " ".join(command)[:500] + " ..."

    def run():
        _run(command)

    def setup():
        if output.exists():
            output.unlink()

    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    assert output.stat().st_size == capture.stat().st_size  # every packet written, same sizes
    output.unlink()
    meta = workload_files.meta["capture"]
    record_rates(benchmark, meta["packets"], meta["bytes"])
    median = _median(benchmark)
    if median is not None:
        _medians[name] = median


def test_tcprewrite_cidr_map(benchmark, tcprewrite, workload_files, tmpfs_capture, tmpfs_dir,
                             rounds):
    output = tmpfs_dir / "tcprewrite.pcap"
    _time_command(benchmark, "tcprewrite", _cidr_command(tcprewrite, workload_files,
                                                         tmpfs_capture, output),
                  output, tmpfs_capture, workload_files, rounds(3))


def test_tcprewrite_per_service_map(benchmark, request, tcprewrite, workload_files, tmpfs_capture,
                                    tmpfs_dir, rounds):
    if not request.config.getoption("--tcprewrite-full-map"):
        pytest.skip("~2 min per round: run with --tcprewrite-full-map")
    output = tmpfs_dir / "tcprewrite-full.pcap"
    _time_command(benchmark, "tcprewrite_per_service", _per_service_command(
        tcprewrite, workload_files, tmpfs_capture, output), output, tmpfs_capture,
        workload_files, rounds(1))
    benchmark.extra_info["rules"] = workload_files.meta["services"]


def test_cat(benchmark, workload_files, tmpfs_capture, tmpfs_dir, rounds):
    output = tmpfs_dir / "cat.out"
    command = ["sh", "-c", f"cat '{tmpfs_capture}' > '{output}'"]
    _time_command(benchmark, "cat", command, output, tmpfs_capture, workload_files, rounds(5))


def _scapy_dnat(capture: Path, output: Path, maps, count: int) -> None:
    """The reference point "a plain scapy loop doing the same DNAT": the first `count` packets
    read, translated and written with scapy, one packet object at a time. Same choices as the
    core (conntrack dict, fastpath.reference.select_backend); scapy recomputes the checksums."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.utils import PcapReader, PcapWriter

    from fastpath.reference import select_backend

    frontends = {(str(ipaddress.IPv4Address(f.ip)), f.port, f.proto): maps.services[f.service - 1]
                 for f in maps.frontends}
    flows: dict[tuple, tuple[str, str, int]] = {}
    with PcapReader(str(capture)) as reader, PcapWriter(str(output), sync=False) as writer:
        for number, packet in enumerate(reader):
            if number == count:
                break
            ip = packet.getlayer(IP)
            l4 = None if ip is None else (packet.getlayer(TCP) or packet.getlayer(UDP))
            if l4 is not None:
                key = (ip.src, ip.dst, l4.sport, l4.dport, ip.proto)
                nat = flows.get(key)
                service = None if nat else frontends.get((ip.dst, l4.dport, ip.proto))
                if service is not None and service.backends:
                    backend = maps.backends[select_backend(
                        service.backends, int(ipaddress.IPv4Address(ip.src)),
                        int(ipaddress.IPv4Address(ip.dst)), l4.sport, l4.dport, ip.proto) - 1]
                    address = str(ipaddress.IPv4Address(backend.ip))
                    nat = flows[key] = ("dst", address, backend.port)
                    flows[(address, ip.src, backend.port, l4.sport, ip.proto)] = \
                        ("src", ip.dst, l4.dport)
                if nat is not None:
                    if nat[0] == "dst":
                        ip.dst, l4.dport = nat[1], nat[2]
                    else:
                        ip.src, l4.sport = nat[1], nat[2]
                    del ip.chksum
                    if not (isinstance(l4, UDP) and l4.chksum == 0):
                        del l4.chksum  # UDP without a checksum stays without one
            writer.write(packet)


def test_scapy_loop(benchmark, maps, batch, tmpfs_capture, tmpfs_dir, rounds):
    output = tmpfs_dir / "scapy.pcap"
    pytest.importorskip("scapy", reason="scapy is not installed")
    benchmark.pedantic(_scapy_dnat, args=(tmpfs_capture, output, maps, SCAPY_PACKETS),
                       rounds=rounds(3), warmup_rounds=0, iterations=1)
    written = workload.load_batch(output)
    n = SCAPY_PACKETS
    expected = bytearray(batch.buf[:batch.offsets[n - 1] + batch.lengths[n - 1]])
    verdicts, reasons = array("B", bytes(n)), array("B", bytes(n))
    Engine(maps).process(expected, batch.offsets[:n], batch.lengths[:n], batch.timestamps_ns[:n],
                         verdicts, reasons, batch.linktype)
    assert written.count == n
    assert all(written.buf[written.offsets[i]:written.offsets[i] + written.lengths[i]]
               == expected[batch.offsets[i]:batch.offsets[i] + batch.lengths[i]]
               for i in range(n))  # the same packets out as the core's, byte for byte
    output.unlink()
    record_rates(benchmark, n, sum(batch.lengths[:n]))


def _references(request, workload_files, tmpfs_capture, tmpfs_dir) -> dict[str, float]:
    """Median seconds of tcprewrite (CIDR map) and cat: from this session, else measured now."""
    if "cat" not in _medians:
        output = tmpfs_dir / "cat.ref"
        _medians["cat"] = _best_of(["sh", "-c", f"cat '{tmpfs_capture}' > '{output}'"], output)
    if "tcprewrite" not in _medians and shutil.which("tcprewrite"):
        output = tmpfs_dir / "tcprewrite.ref"
        _medians["tcprewrite"] = _best_of(
            _cidr_command(shutil.which("tcprewrite"), workload_files, tmpfs_capture, output),
            output)
    return dict(_medians)


def _ratios(benchmark, references: dict[str, float]) -> None:
    median = _median(benchmark)
    if median is None:
        return
    info = benchmark.extra_info
    if "tcprewrite" in references:
        info["tcprewrite_s"] = round(references["tcprewrite"], 4)
        info["x_tcprewrite"] = round(references["tcprewrite"] / median, 3)
        info["target_x_tcprewrite"] = TARGET_X_TCPREWRITE
    if "tcprewrite_per_service" in references:
        info["x_tcprewrite_per_service"] = round(references["tcprewrite_per_service"] / median, 2)
    info["cat_s"] = round(references["cat"], 4)
    info["x_cat"] = round(median / references["cat"], 2)
    info["target_x_cat"] = TARGET_X_CAT


def test_fastpath_cli(benchmark, request, workload_files, tmpfs_capture, tmpfs_cluster, tmpfs_dir,
                      rounds):
    output = tmpfs_dir / "fastpath-cli.pcap"
    run = _fastpath_cli(tmpfs_capture, tmpfs_cluster, tmpfs_dir, output)
    benchmark.extra_info["command"] = " ".join(run.command)

    def setup():
        # Each round writes a new file, as cat and tcprewrite do (their outputs are removed
        # between runs): replacing the last round's output would free its 269 MB of tmpfs
        # pages inside the timed run (44 ms on this host).
        if output.exists():
            output.unlink()

    benchmark.pedantic(run, setup=setup, rounds=rounds(5), warmup_rounds=1, iterations=1)
    assert output.stat().st_size == tmpfs_capture.stat().st_size
    output.unlink()
    meta = workload_files.meta["capture"]
    record_rates(benchmark, meta["packets"], meta["bytes"])
    _ratios(benchmark, _references(request, workload_files, tmpfs_capture, tmpfs_dir))


def test_fastpath_cli_paired(benchmark, tcprewrite, workload_files, tmpfs_capture, tmpfs_cluster,
                             tmpfs_dir, rounds):
    output, reference = tmpfs_dir / "fastpath-cli-paired.pcap", tmpfs_dir / "tcprewrite-paired.pcap"
    run = _fastpath_cli(tmpfs_capture, tmpfs_cluster, tmpfs_dir, output)
    reference_command = _cidr_command(tcprewrite, workload_files, tmpfs_capture, reference)
    tcprewrite_s: list[float] = []

    def setup():
        for path in (output, reference):
            if path.exists():
                path.unlink()
        started = time.perf_counter()
        _run(reference_command)
        tcprewrite_s.append(time.perf_counter() - started)
        reference.unlink()  # (its pages freed here, not in the timed round)

    benchmark.pedantic(run, setup=setup, rounds=rounds(5), warmup_rounds=1, iterations=1)
    assert output.stat().st_size == tmpfs_capture.stat().st_size
    output.unlink()
    meta = workload_files.meta["capture"]
    record_rates(benchmark, meta["packets"], meta["bytes"])
    record_paired(benchmark, "x_tcprewrite_paired", tcprewrite_s, reference="tcprewrite")
    benchmark.extra_info["target_x_tcprewrite"] = TARGET_X_TCPREWRITE


def _fastpath_cli(capture: Path, cluster: Path, tmpfs_dir: Path, output: Path):
    """A callable running `python -m fastpath replay CAPTURE --cluster CLUSTER -o OUTPUT` (its
    dump cache in tmpfs_dir), raising on failure; its `command` attribute is the command."""
    env = fastpath_env(tmpfs_dir, tmpfs_dir / "cluster-cache")
    command = [sys.executable, "-m", "fastpath", "replay", str(capture), "--cluster",
               str(cluster), "-o", str(output), "-q", "--progress", "never"]

    def run():
        done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, check=False)
        if done.returncode != 0:
            raise AssertionError(f"fastpath replay exited {done.returncode}: {done.stderr}")

    run.command = command
    return run


def test_fastpath_library(benchmark, request, maps, workload_files, tmpfs_capture, tmpfs_dir,
                          rounds):
    output = tmpfs_dir / "fastpath-library.pcap"

    def setup():
        if output.exists():
            output.unlink()
        return (tmpfs_capture, output, Dataplane(maps)), {}

    benchmark.pedantic(replay, setup=setup, rounds=rounds(5), warmup_rounds=1, iterations=1)
    assert output.stat().st_size == tmpfs_capture.stat().st_size
    output.unlink()
    meta = workload_files.meta["capture"]
    record_rates(benchmark, meta["packets"], meta["bytes"])
    _ratios(benchmark, _references(request, workload_files, tmpfs_capture, tmpfs_dir))

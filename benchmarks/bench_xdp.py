"""The kernel's own JIT on the same work: fastpath's core against an XDP program on this machine.

`xdp/service_lb.bpf.c` is the standard workload's dataplane as an eBPF Service load balancer
writes it (conntrack LRU hash, service hash, the same backend choice as fastpath, DNAT/REVNAT
with incremental checksums), loaded with fastpath's maps and run by the kernel's
BPF_PROG_TEST_RUN (`kernel_xdp.py`). Its output is checked to be fastpath's, byte for byte, on
every packet of the standard batch.

  kernel_xdp_one_packet       the reference point's method: one packet repeated (5,000,000 runs
                              in one BPF_PROG_TEST_RUN call, hot cache), a packet of a tracked
                              flow (a conntrack hit, DNAT, checksums). The kernel does not restore
                              the data between runs, so the packet is given already translated,
                              with a conntrack entry translating it to where it goes: every run
                              does the lookup, the rewrite and the checksums and leaves it as it
                              was. `kernel_ns_min`: the kernel's own ns per run (the figure to
                              compare; the wall time adds the call's fixed ~15 ms, the XDP
                              dispatcher being switched to the program and back)
  kernel_xdp_pass_one_packet  the same with a program that returns XDP_PASS at once: what the
                              test run itself costs per run (`program_ns` in the case above is
                              its time without it)
  fastpath_one_packet         Engine.process over 4,096 copies of the same packet (before
                              translation; its flow tracked in setup; a fresh copy per round):
                              fastpath hot, one packet repeated. `x_kernel_xdp`: the kernel's ns
                              per packet over fastpath's (> 1: fastpath is faster), with and
                              without the test run's own cost
  kernel_xdp_standard_batch   every packet of the standard batch through the program, one
                              BPF_PROG_TEST_RUN call each (fresh maps per round, as bench_core's
                              test_cold), checked byte for byte against Engine.process's output;
                              `kernel_ns_per_packet` is the kernel's own timing of the runs,
                              `pass_kernel_ns_per_packet` the same for the XDP_PASS program: a
                              call per packet leaves the caches to the system call in between, so
                              compare with care (bench_core's test_cold is fastpath on this batch)

Needs root, a kernel with BPF, clang and libbpf's headers: as root the suite tries `apt-get
install -y clang libbpf-dev` once (not with FASTPATH_BENCH_NO_APT=1); otherwise it skips with
the reason.
"""
from __future__ import annotations

import shutil
import tempfile
from array import array
from pathlib import Path

import pytest

from conftest import apt_install, record_rates
from kernel_xdp import LIBBPF_HEADER, XDP_PASS, XDP_TX, KernelXdp, XdpUnavailable

Engine = pytest.importorskip("fastpath._core", reason="build the core first").Engine
from fastpath.verdicts import Reason, Verdict  # noqa: E402

pytestmark = pytest.mark.benchmark(group="kernel XDP (BPF_PROG_TEST_RUN) and fastpath, same work")

REPEAT = 5_000_000  # a call has a fixed cost of ~15 ms (the XDP dispatcher is switched)
COPIES = 4_096
_ns: dict[str, float] = {}  # case -> best ns per packet, for the ratios


def _tools_present() -> bool:
    return shutil.which("clang") is not None and LIBBPF_HEADER.exists()


@pytest.fixture(scope="module")
def kernel_xdp(maps):
    why = "" if _tools_present() else apt_install(["clang", "libbpf-dev"], _tools_present)
    with tempfile.TemporaryDirectory(prefix="fastpath-xdp-") as scratch:
        try:
            xdp = KernelXdp.build(Path(scratch))
            xdp.load(maps)
        except XdpUnavailable as error:
            pytest.skip(f"kernel XDP reference unavailable: {error}" + (f" ({why})" if why else ""))
        with xdp:
            yield xdp


@pytest.fixture(scope="module")
def fastpath_output(maps, batch):
    """Engine.process over the standard batch: (buffer, verdicts, reasons)."""
    buf, n = batch.fresh_buffer(), batch.count
    verdicts, reasons = array("B", bytes(n)), array("B", bytes(n))
    Engine(maps).process(buf, batch.offsets, batch.lengths, batch.timestamps_ns, verdicts, reasons,
                         batch.linktype)
    return buf, verdicts, reasons


@pytest.fixture(scope="module")
def tracked_packet(batch, fastpath_output):
    """(a client packet of a tracked flow as captured, the same packet as fastpath wrote it)."""
    buf, _, reasons = fastpath_output
    i = reasons.index(Reason.CT_ESTABLISHED)
    start, end = batch.offsets[i], batch.offsets[i] + batch.lengths[i]
    return bytes(batch.buf[start:end]), bytes(buf[start:end])


def _repeated(benchmark, kernel_xdp, packet: bytes, fd: int, rounds) -> tuple[int, float]:
    """Time run_repeated rounds; (the verdict, the kernel's best ns per run) into extra_info."""
    kernel_ns = []

    def run():
        verdict, ns = kernel_xdp.run_repeated(packet, REPEAT, fd)
        kernel_ns.append(ns)
        return verdict

    verdict = benchmark.pedantic(run, rounds=rounds(5), warmup_rounds=1, iterations=1)
    record_rates(benchmark, REPEAT, REPEAT * len(packet), kernel_ns_min=min(kernel_ns),
                 kernel_ns_median=sorted(kernel_ns)[len(kernel_ns) // 2])
    return verdict, min(kernel_ns)


def test_kernel_xdp_pass_one_packet(benchmark, kernel_xdp, tracked_packet, rounds):
    _, translated = tracked_packet
    verdict, _ns["pass"] = _repeated(benchmark, kernel_xdp, translated, kernel_xdp.pass_fd, rounds)
    assert verdict == XDP_PASS


def test_kernel_xdp_one_packet(benchmark, kernel_xdp, tracked_packet, rounds):
    _, translated = tracked_packet
    kernel_xdp.track(translated)
    verdict, _ns["xdp"] = _repeated(benchmark, kernel_xdp, translated, kernel_xdp.service_lb_fd,
                                    rounds)
    assert verdict == XDP_TX
    if "pass" in _ns:
        benchmark.extra_info["program_ns"] = _ns["xdp"] - _ns["pass"]


def test_fastpath_one_packet(benchmark, maps, batch, tracked_packet, rounds):
    original, translated = tracked_packet
    size = len(original)
    offsets = array("Q", range(0, COPIES * size, size))
    lengths = array("I", [size] * COPIES)
    stamps = array("Q", [batch.timestamps_ns[0]] * COPIES)
    verdicts, reasons = array("B", bytes(COPIES)), array("B", bytes(COPIES))
    engine = Engine(maps)
    engine.process(bytearray(original), offsets[:1], lengths[:1], stamps[:1], verdicts[:1],
                   reasons[:1], batch.linktype)  # the flow's first packet: tracked from here on

    def run(buf):
        engine.process(buf, offsets, lengths, stamps, verdicts, reasons, batch.linktype)
        return buf

    out = benchmark.pedantic(run, setup=lambda: ((bytearray(original * COPIES),), {}),
                             rounds=rounds(1000), warmup_rounds=5, iterations=1)
    assert bytes(out[:size]) == translated and bytes(out[-size:]) == translated
    assert set(reasons) == {Reason.CT_ESTABLISHED}
    record_rates(benchmark, COPIES, COPIES * size)
    best = benchmark.extra_info.get("ns_per_packet_min")  # absent with --benchmark-disable
    if best and "xdp" in _ns:
        benchmark.extra_info["x_kernel_xdp"] = round(_ns["xdp"] / best, 2)
        if "pass" in _ns:
            benchmark.extra_info["x_kernel_xdp_program_only"] = round((_ns["xdp"] - _ns["pass"]) / best, 2)


def test_kernel_xdp_standard_batch(benchmark, kernel_xdp, maps, batch, fastpath_output, rounds):
    n = batch.count
    last = {}

    def setup():
        kernel_xdp.load(maps)  # fresh maps: an empty conntrack, as bench_core's test_cold
        return (batch.fresh_buffer(),), {}

    def run(buf):
        last["buf"] = buf
        last["verdicts"], last["kernel_ns"] = kernel_xdp.run_batch(buf, batch.offsets, batch.lengths)

    benchmark.pedantic(run, setup=setup, rounds=rounds(3), warmup_rounds=0, iterations=1)
    expected_buf, expected_verdicts, _ = fastpath_output
    translated = {Verdict.DNAT, Verdict.REVNAT}
    assert [v == XDP_TX for v in last["verdicts"]] == [v in translated for v in expected_verdicts]
    assert memoryview(last["buf"]) == memoryview(expected_buf)  # every packet rewritten alike
    _, pass_ns = kernel_xdp.run_batch(batch.fresh_buffer(), batch.offsets, batch.lengths,
                                      fd=kernel_xdp.pass_fd)
    record_rates(benchmark, n, sum(batch.lengths),
                 kernel_ns_per_packet=round(last["kernel_ns"] / n, 1),
                 pass_kernel_ns_per_packet=round(pass_ns / n, 1),
                 translated=sum(v == XDP_TX for v in last["verdicts"]))

"""How much of the core's time is the core: the batch in cache, and the memory floor.

bench_core.py times Engine.process over the whole standard batch, 269 MB that cannot stay in
any cache: every packet's headers come from DRAM and go back dirty. These cases separate that
cost from the core's own work.

  core_cache_resident  Engine.process over the first 16,384 packets of the standard batch
                       (4.4 MB: fits the L3 cache), the engine warmed with the same packets
                       once (conntrack hits, like most of the standard batch); each round gets
                       a fresh copy of those packets in untimed setup, so they are in cache.
                       The same packets in the same order every round: the branch predictor
                       learns part of their order, which no stream of new packets allows
  core_cache_resident_unseen  the same, each round a different 16,384-packet stretch of the
                       batch (in turn), the engine warmed with the whole batch: in cache and
                       tracked as before, in an order the rounds before did not repeat
  core_kind_sorted[order]  bench_core.py's cold case (a fresh engine a round, the whole batch)
                       on the batch rebuilt in capture order, or with every window of 64 packets
                       sorted by kind: the reason the core gave the packet in a first run and its
                       IP protocol, a stable sort. The same packets get the same verdicts, in
                       runs of one kind the branch predictor sees through. The gap is the most
                       that grouping packets by kind before processing them (the shape of
                       vector packet processing) could save, before paying for the grouping.
  touch_headers_floor  a minimal C loop (compiled here with `cc -O2`, loaded with ctypes) that
                       reads the IPv4 destination and writes one byte of the IP and of the TCP/UDP
                       checksum of every packet of the whole 1M-packet batch (a fresh copy per
                       round, as in bench_core.py): the memory traffic any core must pay on this
                       batch, with no work at all. Skipped without a C compiler.
  random_lines_floor[N]  the same kind of loop over a table of N 64-byte lines laid out like
                       the core's conntrack (2 MiB-aligned, advised as huge pages): 1,000,000
                       reads and writes of a line chosen at random, each asked for 32 accesses
                       ahead; N = 1,250 (in cache) or 1,250,000 (80 MB, the table of
                       bench_scale's million tracked flows). Per access, the least any lookup
                       that must reach a random line of that table can cost.

Compare: core cold (bench_core) - touch floor = what the core's instructions add on top of the
memory traffic; core_cache_resident_unseen = the core's speed when memory is not the limit
(core_cache_resident: and when the packets' order is a known one).
"""
from __future__ import annotations

import ctypes
import random
import shutil
import subprocess
import tempfile
from array import array
from pathlib import Path

import pytest

from conftest import record_rates

Engine = pytest.importorskip("fastpath._core", reason="build the core first").Engine
from fastpath.verdicts import Reason  # noqa: E402

pytestmark = pytest.mark.benchmark(group="floor: the core without memory, memory without the core")

RESIDENT_PACKETS = 16_384

_TOUCH_C = r"""
#include <stddef.h>
#include <stdint.h>

/* Read the IPv4 destination, write a byte of the IP checksum and of the L4 checksum field
   (Ethernet + 20-byte IPv4 header assumed, as in the workload): the cache lines the core
   touches, and nothing else. */
uint64_t touch_headers(uint8_t *buf, const uint64_t *offsets, size_t n) {
    uint64_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = buf + offsets[i];
        acc += (uint64_t)p[30] << 24 | (uint64_t)p[31] << 16 | (uint64_t)p[32] << 8 | p[33];
        p[24] = (uint8_t)(p[24] + 1);
        p[51] = (uint8_t)(p[51] + 1);
    }
    return acc;
}

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* A zeroed table of `bytes` on a 2 MiB boundary, advised as transparent huge pages, as the
   core lays out its conntrack table (NULL when out of memory; free() it). */
void *huge_table(size_t bytes) {
    void *table = NULL;
    if (posix_memalign(&table, 2u << 20, bytes) != 0)
        return NULL;
    madvise(table, bytes, MADV_HUGEPAGE);
    memset(table, 0, bytes);
    return table;
}

/* Read and write one word of line index[i] of the table, for each i, asking for each line
   32 accesses ahead: the floor of a lookup that must reach a random line. */
uint64_t random_lines(uint8_t *table, const uint32_t *index, size_t n) {
    uint64_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 32 < n)
            __builtin_prefetch(table + (size_t)index[i + 32] * 64);
        uint64_t *line = (uint64_t *)(table + (size_t)index[i] * 64);
        acc += line[0];
        line[1] = i;
    }
    return acc;
}
"""


@pytest.fixture(scope="module")
def touch_library():
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build the memory-floor loop")
    with tempfile.TemporaryDirectory(prefix="fastpath-floor-") as scratch:
        source, library = Path(scratch, "touch.c"), Path(scratch, "touch.so")
        source.write_text(_TOUCH_C)
        done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot build the memory-floor loop: {done.stderr.strip()[:200]}")
        lib = ctypes.CDLL(str(library))
        lib.touch_headers.restype = ctypes.c_uint64
        lib.touch_headers.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.huge_table.restype = ctypes.c_void_p
        lib.huge_table.argtypes = [ctypes.c_size_t]
        lib.random_lines.restype = ctypes.c_uint64
        lib.random_lines.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        yield lib


def _reason_counts(reasons: array) -> dict[str, int]:
    """The last round's packets per reason, of those the cached cases meet."""
    raw = bytes(reasons)
    return {reason.name: raw.count(reason) for reason in
            (Reason.NEW_FLOW, Reason.CT_ESTABLISHED, Reason.CT_REPLY, Reason.PASS_NO_SERVICE)
            if raw.count(reason)}


def test_core_cache_resident(benchmark, maps, batch, rounds):
    n = min(RESIDENT_PACKETS, batch.count)
    end = batch.offsets[n - 1] + batch.lengths[n - 1]
    original = bytes(batch.buf[:end])
    offsets, lengths, stamps = batch.offsets[:n], batch.lengths[:n], batch.timestamps_ns[:n]
    verdicts, reasons = array("B", bytes(n)), array("B", bytes(n))
    engine = Engine(maps)
    engine.process(bytearray(original), offsets, lengths, stamps, verdicts, reasons, batch.linktype)

    def run(buf):
        engine.process(buf, offsets, lengths, stamps, verdicts, reasons, batch.linktype)

    benchmark.pedantic(run, setup=lambda: ((bytearray(original),), {}), rounds=rounds(200),
                       warmup_rounds=5, iterations=1)
    record_rates(benchmark, n, sum(lengths), buffer_bytes=end,
                 reasons=_reason_counts(reasons))


def test_core_cache_resident_unseen(benchmark, maps, batch, rounds):
    stretches = batch.count // RESIDENT_PACKETS
    verdicts, reasons = array("B", bytes(batch.count)), array("B", bytes(batch.count))
    engine = Engine(maps)
    engine.process(batch.fresh_buffer(), batch.offsets, batch.lengths, batch.timestamps_ns,
                   verdicts, reasons, batch.linktype)
    verdicts, reasons = array("B", bytes(RESIDENT_PACKETS)), array("B", bytes(RESIDENT_PACKETS))
    taken = [0]

    def setup():
        first = (taken[0] % stretches) * RESIDENT_PACKETS
        taken[0] += 1
        last = first + RESIDENT_PACKETS
        start, end = batch.offsets[first], batch.offsets[last - 1] + batch.lengths[last - 1]
        offsets = array("Q", (offset - start for offset in batch.offsets[first:last]))
        return (bytearray(batch.buf[start:end]), offsets, batch.lengths[first:last],
                batch.timestamps_ns[first:last]), {}

    def run(buf, offsets, lengths, stamps):
        engine.process(buf, offsets, lengths, stamps, verdicts, reasons, batch.linktype)

    benchmark.pedantic(run, setup=setup, rounds=rounds(min(200, stretches)), warmup_rounds=1,
                       iterations=1)
    record_rates(benchmark, RESIDENT_PACKETS, sum(batch.lengths) * RESIDENT_PACKETS // batch.count,
                 stretches=stretches,
                 reasons=_reason_counts(reasons))


KIND_WINDOW = 64


@pytest.fixture(scope="module")
def batches_by_order(maps, batch):
    """The batch rebuilt packet by packet (each after a 16-byte gap, as in a capture) in capture
    order, and with every KIND_WINDOW packets stably sorted by kind; the reasons they get."""
    n = batch.count
    verdicts, reasons = array("B", bytes(n)), array("B", bytes(n))
    Engine(maps).process(batch.fresh_buffer(), batch.offsets, batch.lengths, batch.timestamps_ns,
                         verdicts, reasons, batch.linktype)
    ip_protocol = 23 if batch.linktype == 1 else 9  # (Ethernet or raw IPv4, as the workload)
    kind = [reasons[i] << 8 | batch.buf[batch.offsets[i] + ip_protocol] for i in range(n)]
    kind_sorted = [i for start in range(0, n, KIND_WINDOW)
                   for i in sorted(range(start, min(n, start + KIND_WINDOW)), key=kind.__getitem__)]
    return {"capture": _rebuilt(batch, range(n)), "kind-sorted": _rebuilt(batch, kind_sorted)}, \
        _reason_counts(reasons)


def _rebuilt(batch, order):
    buf, offsets, lengths, stamps = bytearray(), array("Q"), array("I"), array("Q")
    for i in order:
        start, length = batch.offsets[i], batch.lengths[i]
        buf += bytes(16)
        offsets.append(len(buf))
        lengths.append(length)
        stamps.append(batch.timestamps_ns[i])
        buf += batch.buf[start:start + length]
    return type(batch)(buf, offsets, lengths, stamps, batch.linktype)


@pytest.mark.parametrize("order", ["capture", "kind-sorted"])
def test_core_kind_sorted(benchmark, maps, batches_by_order, rounds, order):
    from bench_core import run_core

    batches, capture_reasons = batches_by_order
    counts, _ = run_core(benchmark, maps, batches[order], rounds(10))
    benchmark.extra_info.update(order=order, window=KIND_WINDOW)
    # The same work in either order: each kind keeps its count.
    assert {name: counts.get(name, 0) for name in capture_reasons} == capture_reasons


def test_touch_headers_floor(benchmark, batch, touch_library, rounds):
    n = batch.count
    offsets_address = batch.offsets.buffer_info()[0]

    def setup():
        buf = batch.fresh_buffer()
        return (buf, (ctypes.c_char * len(buf)).from_buffer(buf)), {}

    def run(buf, view):
        touch_library.touch_headers(ctypes.addressof(view), offsets_address, n)

    benchmark.pedantic(run, setup=setup, rounds=rounds(10), warmup_rounds=1, iterations=1)
    record_rates(benchmark, n, sum(batch.lengths))


RANDOM_ACCESSES = 1_000_000


@pytest.mark.parametrize("lines", [1_250, 1_250_000])
def test_random_lines_floor(benchmark, touch_library, rounds, lines):
    rng = random.Random(lines)
    index = array("I", (rng.randrange(lines) for _ in range(RANDOM_ACCESSES)))
    table = touch_library.huge_table(lines * 64)
    if not table:
        pytest.skip(f"cannot allocate {lines * 64} bytes")
    try:
        benchmark.pedantic(touch_library.random_lines, args=(table, index.buffer_info()[0], len(index)),
                           rounds=rounds(10), warmup_rounds=1, iterations=1)
    finally:
        ctypes.CDLL(None).free(ctypes.c_void_p(table))
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    benchmark.extra_info.update(lines=lines, table_bytes=lines * 64, accesses=RANDOM_ACCESSES)
    if stats is not None:
        benchmark.extra_info["ns_per_access_min"] = round(stats.min / RANDOM_ACCESSES * 1e9, 2)
        benchmark.extra_info["ns_per_access_median"] = round(stats.median / RANDOM_ACCESSES * 1e9, 2)

"""The compiled core alone: Engine.process on the whole workload batch, already in memory.

Each round gets a fresh Engine and a fresh copy of the buffer (the core rewrites packets in
place); building them is untimed setup, so a round times exactly one Engine.process call over
every packet of the capture (1,000,000 for the standard workload).

  cold             empty conntrack: every flow's first packet selects a backend and inserts
  cold_bytearray   the same with the batch in a bytearray: 4 KiB pages, where every case here
                   has it in a buffer made as fastpath's capture reader makes its chunks
                   (fastpath.capture.packet_buffer: 2 MiB pages where the OS offers them)
  warm_conntrack   every flow already tracked (the batch ran once through this engine in setup);
                   flows that ended with FINs are in CLOSING, so their SYN reopens them and
                   selects again (~3,900 NEW_FLOW, ct "reopened"), as a reused port would
  small_conntrack  capacity = flows / 10 (1,000 for the standard workload's 10,000 concurrent
                   flows): constant LRU evictions, replies of evicted flows miss, forward
                   packets re-select (non-SYN misses)
"""
from __future__ import annotations

from array import array

import pytest

from conftest import record_rates

Engine = pytest.importorskip("fastpath._core", reason="build the core first").Engine
from fastpath.verdicts import Reason  # noqa: E402

pytestmark = pytest.mark.benchmark(group="core: Engine.process, batch in memory")


def _process(engine, buf, batch, verdicts, reasons):
    engine.process(buf, batch.offsets, batch.lengths, batch.timestamps_ns, verdicts, reasons,
                   batch.linktype)


def run_core(benchmark, maps, batch, rounds, *, ct_capacity=None, warm=False, plain=False):
    """Time Engine.process over the batch; returns the last round's engine and reasons.
    plain: the batch in a bytearray rather than a buffer like the capture reader's."""
    n = batch.count
    last = {}

    def setup():
        engine = Engine(maps) if ct_capacity is None else Engine(maps, ct_capacity=ct_capacity)
        verdicts, reasons = array("B", bytes(n)), array("B", bytes(n))
        if warm:
            _process(engine, batch.fresh_buffer(plain), batch, verdicts, reasons)
        last.update(engine=engine, reasons=reasons)
        return (engine, batch.fresh_buffer(plain), batch, verdicts, reasons), {}

    benchmark.pedantic(_process, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)
    raw = bytes(last["reasons"])
    counts = {reason.name: raw.count(reason) for reason in Reason if raw.count(reason)}
    conntrack = last["engine"].counters()["conntrack"]
    record_rates(benchmark, n, sum(batch.lengths), reasons=counts, conntrack=conntrack,
                 ct_capacity=last["engine"].ct_capacity)
    return counts, conntrack


def test_cold(benchmark, maps, batch, workload_files, rounds):
    counts, conntrack = run_core(benchmark, maps, batch, rounds(10))
    # The workload does what it says (sanity, not timing): every Service flow is new once,
    # replies are translated back, unrelated traffic passes.
    meta = workload_files.meta
    assert counts["NEW_FLOW"] == meta["service_flows"] == conntrack["inserts"]
    assert counts.get("CT_REPLY", 0) > 0
    assert counts["PASS_NO_SERVICE"] == round(meta["capture"]["packets"] * meta["spec"]["unrelated_fraction"])


def test_cold_bytearray(benchmark, maps, batch, workload_files, rounds):
    counts, _ = run_core(benchmark, maps, batch, rounds(10), plain=True)
    assert counts["NEW_FLOW"] == workload_files.meta["service_flows"]


def test_warm_conntrack(benchmark, maps, batch, workload_files, rounds):
    counts, conntrack = run_core(benchmark, maps, batch, rounds(10), warm=True)
    # Only flows closed by FINs in the first pass select again (their SYN reopens them).
    assert counts.get("NEW_FLOW", 0) == conntrack["reopened"] < workload_files.meta["service_flows"]


def test_small_conntrack(benchmark, maps, batch, workload_files, rounds):
    capacity = max(1, workload_files.spec.flows // 10)
    _, conntrack = run_core(benchmark, maps, batch, rounds(10), ct_capacity=capacity)
    assert conntrack["evictions"] > 0

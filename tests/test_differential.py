"""The compiled core and the pure-Python twin agree byte for byte, verdict for verdict."""
from __future__ import annotations

import random
from array import array

import pytest
from traffic import random_maps, random_traffic

from fastpath._core import Engine
from fastpath.capture import Batch, open_capture
from fastpath.reference import ReferenceEngine


def run(engine, packets, linktype):
    batch = Batch.from_packets(packets)
    n = batch.count
    verdicts, reasons = array("B", bytes(n)), array("B", bytes(n))
    services, backends, flags = array("I", bytes(4 * n)), array("I", bytes(4 * n)), array("B", bytes(n))
    engine.process(batch.buf, batch.offsets, batch.lengths, batch.timestamps_ns, verdicts, reasons,
                   linktype, services, backends, flags)
    return [(verdicts[i], reasons[i], services[i], backends[i], flags[i], batch.packet(i))
            for i in range(n)]


def assert_same(compiled, reference, packets, linktype):
    got = run(compiled, packets, linktype)
    want = run(reference, packets, linktype)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a == b, f"packet {i} differs"
    assert compiled.counters() == reference.counters()
    return got


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("linktype", [1, 101, 113, 0])
def test_generated_traffic(seed, linktype):
    rng = random.Random(seed * 1000 + linktype)
    maps = random_maps(rng)
    capacity = rng.choice([1, 8, 64, 4096])
    # The new-flow rate guard: off, tight, loose (without drawing from rng: same traffic).
    settings = {"ct_capacity": capacity, "new_flow_rate": (0, 3, 1000)[seed % 3]}
    compiled, reference = Engine(maps, **settings), ReferenceEngine(maps, **settings)
    for round_ in range(3):
        packets = random_traffic(maps, rng, 500, linktype)
        assert_same(compiled, reference, packets, linktype)
        # New cluster state between batches: both keep conntrack and reload the maps.
        maps = random_maps(random.Random(seed + round_), n_backends=40)
        compiled.load(maps)
        reference.load(maps)


def test_recorded_demo_traffic(demo_capture, demo_cluster):
    from fastpath import Dataplane, load_cluster

    state = load_cluster([demo_cluster])
    compiled = Dataplane(state)
    reference = Dataplane(state, core="reference")
    with open_capture(demo_capture) as reader:
        for batch in reader.batches():
            packets = [(batch.timestamps_ns[i], batch.packet(i)) for i in range(batch.count)]
            assert_same(compiled.engine, reference.engine, packets, reader.linktype)
    assert compiled.counters()["verdicts"]["DNAT"] > 0

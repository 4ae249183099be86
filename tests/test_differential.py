"""The compiled core and the pure-Python twin agree byte for byte, verdict for verdict."""
from __future__ import annotations

import ipaddress
import random
from array import array
from dataclasses import replace

import pytest
from traffic import BASE6, random_maps, random_traffic

from fastpath._core import Engine
from fastpath.capture import Batch, open_capture
from fastpath.maps import IPV6, PROTO_UDP, Backend, Maps
from fastpath.reference import ReferenceEngine

BASE4 = int(ipaddress.IPv4Address("10.244.0.0"))


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


def random_service_update(rng, services, backends, tracked=()):
    """A service's sets replaced as an EndpointSlice change would (endpoints leaving, coming
    back, terminating, never seen before): (new Service, new Backends). Mostly the service of
    one of the `tracked` (service id, backend id) pairs, often without that backend."""
    tracked = [(s, b) for s, b in tracked if s]
    service, leaving = rng.choice(services), 0
    if tracked and rng.random() < 0.7:
        service_id, leaving = rng.choice(tracked)
        service = services[service_id - 1]
    known = {(b.ip, b.port) for b in backends}
    new = []
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        host = rng.randrange(1, 6000)
        ip = BASE6 + host if service.family == 6 else BASE4 + host
        key = (ip, rng.choice([80, 8080, 53]))
        if key not in known:
            known.add(key)
            new.append(Backend(len(backends) + len(new) + 1, *key, f"new-{len(backends) + len(new) + 1}"))
    pool = [b.id for b in (*backends, *new) if (b.ip >= IPV6) == (service.family == 6)]
    if rng.random() < 0.8:
        pool = [b for b in pool if b != leaving]
    cluster = sorted(rng.sample(pool, min(len(pool), rng.choice([0, 1, 2, 3, 5, 8, 13]))))
    local = sorted(rng.sample(cluster, rng.randrange(len(cluster) + 1)))
    serving = sorted(set(cluster) | set(rng.sample(pool, min(len(pool), rng.randrange(3)))))
    affinity = rng.choice([0, 5, 100]) if rng.random() < 0.1 else service.affinity_timeout_s
    return replace(service, backends=tuple(cluster), local_backends=tuple(local), serving=tuple(serving),
                   affinity_timeout_s=affinity), new


@pytest.mark.parametrize("seed", range(4))
def test_generated_traffic_with_service_updates(seed):
    """update_service between batches, flows going on across it: both cores flush the same UDP
    flows at the same packet, select the same backends, count the same."""
    linktype = (1, 113)[seed % 2]
    rng = random.Random(seed * 7919 + linktype)
    maps = random_maps(rng)
    capacity = rng.choice([8, 64, 4096])
    compiled, reference = Engine(maps, ct_capacity=capacity), ReferenceEngine(maps, ct_capacity=capacity)
    services, backends = list(maps.services), list(maps.backends)
    for round_ in range(3):
        current = Maps(services=list(services), frontends=maps.frontends, backends=list(backends), node=maps.node)
        packets = random_traffic(current, rng, 300, linktype)
        for start in range(0, len(packets), 30):
            assert_same(compiled, reference, packets[start:start + 30], linktype)
            udp = [(e.service, e.backend) for e in reference.conntrack_entries() if e.orig[4] == PROTO_UDP]
            for _ in range(rng.randrange(4)):
                service, new = random_service_update(rng, services, backends, udp)
                compiled.update_service(service, new)
                reference.update_service(service, new)
                services[service.id - 1] = service
                backends.extend(new)
            # The same packets again right away: tracked flows meet the changed sets.
            last = packets[min(start + 30, len(packets)) - 1][0]
            again = [(last + 1000 * (i + 1), data) for i, (_, data) in enumerate(packets[start:start + 30])]
            assert_same(compiled, reference, again, linktype)
        if round_ == 1:
            # A full load after updates: ids renumbered, stale flows still flushed lazily.
            maps = random_maps(random.Random(seed + 100), n_backends=40)
            compiled.load(maps)
            reference.load(maps)
            services, backends = list(maps.services), list(maps.backends)
    assert compiled.counters()["conntrack"]["flushed"] > 0  # stale UDP flows were met

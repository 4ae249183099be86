"""fastpath._compile, the compiler's compiled per-endpoint loops, against the rules written out
in plain Python: backends numbered in (ip, port) order, one per distinct (ip, port) named by
its smallest name, each service port's sets as sorted id tuples; map_address as the socket
module reads addresses."""
from __future__ import annotations

import dataclasses
import gc
import random
import socket

import pytest

compile_kernel = pytest.importorskip("fastpath._compile", reason="build the core first")

from fastpath.compiler import _Candidate, _Sets  # noqa: E402
from fastpath.maps import IPV6, Backend  # noqa: E402


def expected_numbering(chosen: list[_Sets]) -> tuple[list[Backend], list[tuple]]:
    names: dict[int, str] = {}
    for sets in chosen:
        for candidate in (*sets.cluster, *sets.local, *sets.serving):
            names[candidate.key] = min(candidate.name, names.get(candidate.key, candidate.name))
    keys = sorted(names)
    ids = {key: number for number, key in enumerate(keys, start=1)}
    backends = [Backend(ids[key], key >> 16, key & 0xFFFF, names[key]) for key in keys]
    port_sets = [tuple(tuple(sorted(ids[c.key] for c in group)) for group in sets) for sets in chosen]
    return backends, port_sets


def random_key(rng: random.Random) -> int:
    if rng.random() < 0.3:
        ip = IPV6 | 0xFD00 << 112 | rng.randrange(1 << 20) << rng.choice((0, 40, 90))
    else:
        ip = rng.choice((0x0A000000, 0xC0A80000, 0xFFFFFF00)) | rng.randrange(256)
    return ip << 16 | rng.choice((0, 53, 8080, 0xFFFF))


def candidate(key: int, name: str, ready: bool) -> _Candidate:
    return _Candidate(key, name, ready, True, False, False, (), ())


@pytest.mark.parametrize("seed", range(40))
def test_number_backends_follows_the_rules(seed: int) -> None:
    rng = random.Random(seed)
    pool = sorted({random_key(rng) for _ in range(rng.randrange(1, 60))})
    chosen = []
    for _ in range(rng.randrange(0, 30)):
        # A service port's candidates are distinct by key; the same key may recur across ports,
        # named differently.
        keys = rng.sample(pool, rng.randrange(0, min(len(pool), 25) + 1))
        candidates = [candidate(key, f"n{rng.randrange(5)}-{key:x}", rng.random() < 0.8) for key in keys]
        cluster = [c for c in candidates if c.ready]
        if rng.random() < 0.5:
            sets = _Sets(cluster, [], cluster)  # the usual case: one set
        else:
            local = [c for c in candidates if rng.random() < 0.3]
            serving = candidates if rng.random() < 0.7 else list(cluster)
            sets = _Sets(cluster, local, serving)
        chosen.append(sets)
    backends, port_sets = compile_kernel.number_backends(chosen, Backend)
    assert (backends, port_sets) == expected_numbering(chosen)
    # Ints and strings only: the cyclic collector is not told of them.
    assert not any(map(gc.is_tracked, backends))
    assert not any(gc.is_tracked(ids) for sets in port_sets for ids in sets)
    for sets, (cluster, _, serving) in zip(chosen, port_sets):
        if sets.serving == sets.cluster:
            assert serving is cluster  # equal sets share one tuple (Maps checks it once)


@pytest.mark.parametrize("text", ["10.0.0.1", "0.0.0.0", "255.255.255.255", "fd00::1", "::", "::1",
                                  "::ffff:10.1.2.3", "2001:db8::ffff:1"])
def test_map_address_reads_addresses_as_the_socket_module(text: str) -> None:
    if ":" in text:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
        expected = value & 0xFFFFFFFF if value >> 32 == 0xFFFF else IPV6 | value
    else:
        expected = int.from_bytes(socket.inet_aton(text), "big")
    assert compile_kernel.map_address(text) == expected


@pytest.mark.parametrize("text", ["", "10.0.0.256", "fd00:::1", "10.0.0.1\x00", "host.example"])
def test_map_address_refuses_what_is_no_address(text: str) -> None:
    with pytest.raises((OSError, ValueError)):
        compile_kernel.map_address(text)


def test_candidates_read_other_endpoint_types_by_attribute() -> None:
    """Fields are read by slot offset only from objects of the model's own classes; a subclass
    (or any stand-in) is read by attribute, with the same result."""
    from collections import Counter

    from fastpath.model import Endpoint, EndpointConditions, EndpointPort, EndpointSlice, ObjectReference, ServicePort

    @dataclasses.dataclass(frozen=True, slots=True)
    class TaggedEndpoint(Endpoint):
        tag: str = "x"

    def slice_of(kind: type) -> EndpointSlice:
        endpoints = tuple(kind(addresses=(f"10.0.0.{i}",), conditions=EndpointConditions(ready=i != 2),
                               node_name="n1", target_ref=ObjectReference("Pod", "a", f"p{i}"))
                          for i in range(1, 4))
        return EndpointSlice("a", "web-1", "web", "IPv4", (EndpointPort("http", "TCP", 8080),), endpoints)

    port = ServicePort("http", "TCP", 80, 8080)
    made = [compile_kernel.candidates(port, 4, [slice_of(kind)], "n1", Counter(), None, _Candidate)
            for kind in (Endpoint, TaggedEndpoint)]
    assert made[0] == made[1]
    assert [(c.name, c.ready, c.local) for c in made[0]] == [
        ("10.0.0.1:8080 (a/p1)", True, True), ("10.0.0.2:8080 (a/p2)", False, True), ("10.0.0.3:8080 (a/p3)", True, True)]


def test_make_objects_refuses_a_class_without_slots() -> None:
    @dataclasses.dataclass(frozen=True)
    class Plain:
        x: int

    with pytest.raises(TypeError, match="not a slot"):
        compile_kernel.make_objects(Plain, [(1,)])

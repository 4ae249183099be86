"""fastpath.compiler on randomised clusters: what every output must satisfy, whatever the input
(shared and duplicated endpoints, every condition, hints, several nodes, both families, Pods).

The compiler builds its maps with bulk shortcuts (one id tuple for equal sets, a name dict
without the smallest-name pass when no (ip, port) repeats); these clusters take every path.
"""
from __future__ import annotations

import random
from typing import Any

import pytest
from fastpath.compiler import compile_maps
from fastpath.maps import Maps, format_endpoint
from fastpath.model import (
    ClusterError,
    ClusterState,
    Endpoint,
    EndpointPort,
    EndpointSlice,
)
from test_compiler import compile_objects, ep, eps, node, pod, port, svc

NODES = ("n1", "n2", "n3")
ZONES = {"n1": "z1", "n2": "z2", "n3": "z1"}


def random_cluster(rng: random.Random, dual: bool) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [
        node(name, zone=ZONES[name], addresses=[("InternalIP", f"192.168.0.{i + 1}")]
             + ([("InternalIP", f"fd00::{i + 1}")] if dual else []))
        for i, name in enumerate(NODES)]
    pool = [f"10.0.{rng.randrange(2)}.{rng.randrange(1, 12)}" for _ in range(20)]
    pool6 = [f"fd00:10::{rng.randrange(1, 12):x}" for _ in range(10)]
    for index in range(rng.randrange(4, 9)):
        name = f"s{index}"
        ports = [port(80, "http")] + ([port(53, "dns", "UDP")] if rng.random() < 0.4 else [])
        spec: dict[str, Any] = {}
        if dual:
            spec = {"clusterIPs": [f"10.96.0.{index + 1}", f"fd00:96::{index + 1:x}"],
                    "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}
        if rng.random() < 0.3:
            spec["internalTrafficPolicy"] = "Local"
        objects.append(svc(name, ports, cluster_ip=f"10.96.0.{index + 1}", **spec))
        if rng.random() < 0.15:  # endpoints from Pods
            for k in range(rng.randrange(1, 4)):
                objects.append(pod(f"{name}-pod{k}", rng.choice(pool), labels={"app": name},
                                   ready=rng.random() < 0.8, node_name=rng.choice(NODES),
                                   deleting=rng.random() < 0.2))
            continue
        families = [("IPv4", pool)] + ([("IPv6", pool6)] if dual else [])
        for family, addresses in families:
            for part in range(rng.randrange(1, 3)):  # several slices: the same endpoint may be in both
                endpoints = []
                for _ in range(rng.randrange(0, 6)):
                    ready = rng.choice([True, True, True, False, None])
                    endpoints.append(ep(
                        rng.choice(addresses), ready=ready, serving=rng.choice([None, True, False]),
                        terminating=rng.choice([None, False, True]) if ready is not True else None,
                        node=rng.choice((*NODES, None)), pod=rng.choice([None, f"p{rng.randrange(30)}"]),
                        zones=rng.choice([None, ["z1"], ["z2"], ["z1", "z2"]]),
                        nodes=rng.choice([None, None, ["n1"], ["n2"]])))
                slice_ports = [port(8080, "http")] + ([port(5353, "dns", "UDP")] if len(ports) > 1 else [])
                objects.append(eps(f"{name}-{family.lower()}-{part}", name, slice_ports, endpoints,
                                   address_type=family))
    return objects


def check_invariants(maps: Maps) -> None:
    maps.check()  # the compiler makes its maps with Maps.unchecked: they must pass what Maps() checks
    backends = maps.backends
    assert [b.id for b in backends] == list(range(1, len(backends) + 1))
    keys = [(b.ip, b.port) for b in backends]
    assert keys == sorted(set(keys)), "backends are distinct and in (ip, port) order"
    used = set()
    for service in maps.services:
        for ids in (service.backends, service.local_backends, service.serving):
            assert list(ids) == sorted(set(ids)), f"{service.name}: ids sorted, each once"
            used.update(ids)
    assert used == set(range(1, len(backends) + 1)), "every backend belongs to some set"
    # A backend's name is one the input gives its (ip, port): "address:port (namespace/owner)".
    for backend in backends:
        assert backend.name.startswith(format_endpoint(backend.ip, backend.port) + " (default/"), backend.name


@pytest.mark.parametrize("seed", range(40))
def test_random_clusters_keep_the_output_rules(seed: int) -> None:
    rng = random.Random(seed)
    objects = random_cluster(rng, dual=seed % 3 == 0)
    state = ClusterState.from_objects(objects)
    for chosen in NODES:
        result = compile_maps(state, chosen)
        check_invariants(result.maps)
        # Deterministic: the same maps from the objects in another order.
        shuffled = list(objects)
        rng.shuffle(shuffled)
        assert compile_maps(ClusterState.from_objects(shuffled), chosen).maps == result.maps


@pytest.mark.parametrize("first", ["web", "api"])
def test_a_shared_endpoint_is_named_by_the_smallest_name(first: str) -> None:
    """The same (ip, port) named differently by two services' slices: the smaller name wins,
    whichever service comes first."""
    objects = {
        "web": [svc("web", [port(80, "http")], cluster_ip="10.96.0.1"),
                eps("web-1", "web", [port(8080, "http")], [ep("10.0.0.1", pod="zeta"), ep("10.0.0.2", pod="b")])],
        "api": [svc("api", [port(80, "http")], cluster_ip="10.96.0.2"),
                eps("api-1", "api", [port(8080, "http")], [ep("10.0.0.1", pod="alpha"), ep("10.0.0.3")])],
    }
    second = "api" if first == "web" else "web"
    result = compile_objects([*objects[first], *objects[second]])
    assert [b.name for b in result.maps.backends] == [
        "10.0.0.1:8080 (default/alpha)", "10.0.0.2:8080 (default/b)", "10.0.0.3:8080 (default/api-1)"]
    by_name = {s.name: s for s in result.maps.services}
    assert by_name["default/api:http"].backends == (1, 3)
    assert by_name["default/web:http"].backends == (1, 2)


def test_serving_and_cluster_sets_differ_when_an_endpoint_is_serving_but_not_ready() -> None:
    result = compile_objects([
        svc("web", [port(80, "http")]),
        eps("web-1", "web", [port(8080, "http")], [
            ep("10.0.0.1"), ep("10.0.0.2", ready=False, serving=True, terminating=True),
            ep("10.0.0.3", ready=False, serving=False)]),
    ])
    (service,) = result.maps.services
    assert (service.backends, service.serving) == ((1,), (1, 2))
    assert [b.name.split(" ")[0] for b in result.maps.backends] == ["10.0.0.1:8080", "10.0.0.2:8080"]


@pytest.mark.parametrize("number", [-1, 65536])
def test_a_hand_built_endpoint_port_outside_the_port_range_is_refused(number: int) -> None:
    """The parser refuses such ports; a state built in code gets a ClusterError, not wrong maps."""
    state = ClusterState.from_objects([svc("web", [port(80, "http")])])
    bad = EndpointSlice(namespace="default", name="web-1", service_name="web", address_type="IPv4",
                        ports=(EndpointPort("http", "TCP", number),), endpoints=(Endpoint(("10.0.0.1",)),))
    state = ClusterState(services=state.services, endpoint_slices=(bad,))
    with pytest.raises(ClusterError, match="outside 0..65535"):
        compile_maps(state)

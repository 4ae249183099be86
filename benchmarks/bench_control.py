"""Control plane: compiling big clusters, applying one endpoint change, loading YAML.

The 100,000-Service cluster is workload.CLUSTER_SPECS["control"] (100,000 ClusterIP Services,
one port each, x 10 ready endpoints: 1,000,000 endpoints), made as already-decoded dicts by
workload.cluster_objects() (the objects cluster_yaml() would print, never written as YAML);
`--control-services N` changes the count. Generating them is untimed setup (~20-40 s).

  from_objects_100k       ClusterState.from_objects(dicts): validation into the model
  compile_100k            compile_maps(state): the model into fastpath.maps.Maps, the garbage
                          collector on (as a library caller has it); `service_ports_per_s`
                          against the issue's 100,000/s
  compile_100k_gc_paused  the same with the cyclic collector paused (gc.disable()), as
                          load_cluster already does while reading: how much is the collector's
  engine_load_100k        Engine.load(maps) on an engine holding the same maps: the C tables
                          rebuilt and conntrack/counters remapped (the last step of an update)
  update_100k             Dataplane.update(state) on a Dataplane holding that cluster's maps: a
                          full resync as a node agent applies it (compile, Engine.load, and the
                          old maps freed); `freed_s` in extra_info is what the free alone took
  update_one_endpoint     Dataplane.update(state) on the standard 1,000-Service cluster, the
                          states alternating between "all ready" and "one endpoint of one
                          Service not ready": what applying one readiness change costs today
                          (a full recompile and reload); target 50 us
  update_compile_only /   the two halves of that update: compile_maps(state) and
  update_load_only        Engine.load(maps)
  update_load_with_flows  the same load on an engine tracking the standard batch's flows: the
                          ids shift, so the conntrack table is passed over to remap its entries
  endpoint_readiness_change  the same change the incremental way: Dataplane.apply_endpoint_slice
                          (the decoded slice, one endpoint flipping not ready / ready), only that
                          service's sets derived again and swapped in place; target 50 us
  endpoint_readiness_change_varied  the same, each round one endpoint of the slice (in turn) taking
                          the next of the eight ready/serving/terminating states, so that the
                          version is one the slice's recent versions did not have (its endpoint
                          read by its conditions alone, not found as a whole)
  yaml_load_standard      fastpath.load_cluster(cluster.yaml) of the standard 4.4 MB dump
                          (`loader` and `libyaml` in extra_info say whether the C loader ran)
  yaml_parse_standard     fastpath.kubeyaml.load_yaml(text) alone: the YAML parse
  yaml_parse_python_loader  the same with PyYAML's pure-Python SafeLoader: what the C loader saves
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import sys
import time
from array import array

import pytest
import yaml

import workload

pytest.importorskip("fastpath._core", reason="build the core first")
from fastpath import kubeyaml  # noqa: E402
from fastpath._core import Engine  # noqa: E402
from fastpath.compiler import compile_maps  # noqa: E402
from fastpath.dataplane import Dataplane  # noqa: E402
from fastpath.model import ClusterState, load_cluster  # noqa: E402

TARGET_PORTS_PER_S = 100_000
TARGET_UPDATE_US = 50


# --------------------------------------------------------------------------- 100,000 Services

@pytest.fixture(scope="module")
def control_spec(request) -> workload.WorkloadSpec:
    spec = workload.CLUSTER_SPECS["control"]
    services = request.config.getoption("--control-services")
    if services != spec.services:
        nodes = max(64, -(-services * spec.endpoints_per_service // 240))
        spec = dataclasses.replace(spec, services=services, nodes=nodes)
    return spec


@pytest.fixture(scope="module")
def control_objects(control_spec):
    was = gc.isenabled()
    gc.disable()  # millions of fresh containers, no cycles: keep setup short
    try:
        objects = workload.cluster_objects(control_spec, workload.plan_cluster(control_spec))
    finally:
        if was:
            gc.enable()
    yield objects
    del objects


@pytest.fixture(scope="module")
def control_state(control_objects) -> ClusterState:
    state = ClusterState.from_objects(control_objects)
    # from_objects pauses the collector while it makes millions of objects; the full collection
    # that owes would otherwise land in the first compile round (1.2-1.4 s of it).
    gc.collect()
    return state


def _per_second(benchmark, count: int, label: str, target: int | None = None) -> None:
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None:
        return
    benchmark.extra_info[f"{label}_per_s_median"] = round(count / stats.median)
    benchmark.extra_info[f"{label}_per_s_min_time"] = round(count / stats.min)
    if target:
        benchmark.extra_info[f"target_{label}_per_s"] = target


@pytest.mark.benchmark(group="control: 100,000 service ports x 10 endpoints")
def test_from_objects_100k(benchmark, control_spec, control_objects, rounds):
    state = benchmark.pedantic(ClusterState.from_objects, args=(control_objects,),
                               rounds=rounds(2), iterations=1)
    assert len(state.services) == control_spec.services
    benchmark.extra_info.update(services=control_spec.services,
                                endpoints=control_spec.services * control_spec.endpoints_per_service,
                                objects=len(control_objects))
    _per_second(benchmark, control_spec.services, "service_ports")


def _compile_case(benchmark, control_spec, control_state, rounds, paused: bool):
    results = []

    def setup():
        results.clear()  # the last round's maps freed here, not inside the next round's compile

    def target():
        if not paused:
            results.append(compile_maps(control_state))
            return
        was = gc.isenabled()
        gc.disable()
        try:
            results.append(compile_maps(control_state))
        finally:
            if was:
                gc.enable()

    benchmark.pedantic(target, setup=setup, rounds=rounds(2), iterations=1)
    maps = results[-1].maps
    endpoints = control_spec.services * control_spec.endpoints_per_service
    assert len(maps.services) == len(maps.frontends) == control_spec.services
    assert len(maps.backends) == endpoints
    benchmark.extra_info.update(services=control_spec.services, endpoints=endpoints,
                                gc_enabled=not paused)
    _per_second(benchmark, control_spec.services, "service_ports", TARGET_PORTS_PER_S)
    return maps


@pytest.mark.benchmark(group="control: 100,000 service ports x 10 endpoints")
def test_compile_100k(benchmark, control_spec, control_state, rounds):
    _compile_case(benchmark, control_spec, control_state, rounds, paused=False)


@pytest.mark.benchmark(group="control: 100,000 service ports x 10 endpoints")
def test_compile_100k_gc_paused(benchmark, control_spec, control_state, rounds):
    _compile_case(benchmark, control_spec, control_state, rounds, paused=True)


@pytest.mark.benchmark(group="control: 100,000 service ports x 10 endpoints")
def test_engine_load_100k(benchmark, control_spec, control_state, rounds):
    maps = compile_maps(control_state).maps
    engine = Engine(maps)
    benchmark.pedantic(engine.load, args=(maps,), rounds=rounds(3), warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(services=control_spec.services, backends=len(maps.backends))
    _per_second(benchmark, control_spec.services, "service_ports", TARGET_PORTS_PER_S)


@pytest.mark.benchmark(group="control: 100,000 service ports x 10 endpoints")
def test_update_100k(benchmark, control_spec, control_state, rounds):
    dataplane = Dataplane(control_state)
    benchmark.pedantic(dataplane.update, args=(control_state,), rounds=rounds(2), warmup_rounds=1,
                       iterations=1)
    assert len(dataplane.maps.backends) == control_spec.services * control_spec.endpoints_per_service
    # What the free of the replaced maps costs inside each update: the same drop, timed alone
    # (the engine's copy of the maps and the Dataplane's, as update() releases them).
    holder = [dataplane.maps]
    dataplane.update(control_state)
    freed = _timed_drop(holder)
    benchmark.extra_info.update(services=control_spec.services, backends=len(dataplane.maps.backends),
                                freed_s=round(freed, 3))
    _per_second(benchmark, control_spec.services, "service_ports", TARGET_PORTS_PER_S)


def _timed_drop(holder: list) -> float:
    """Seconds to free what `holder` holds alone (its only item: `holder` is emptied)."""
    if sys.getrefcount(holder[0]) > 2:  # someone else still holds it: nothing would be freed
        raise AssertionError("the replaced maps are still referenced")
    start = time.perf_counter()
    holder.clear()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- one endpoint change

@pytest.fixture(scope="module")
def readiness_states(workload_files):
    """(all ready, one endpoint not ready, which service, its backend address) on the workload."""
    spec = workload_files.spec
    objects = workload.cluster_objects(spec, workload.plan_cluster(spec))
    changed = copy.deepcopy(objects)
    slices = [o for o in changed if o["kind"] == "EndpointSlice"]
    target = slices[len(slices) // 2]
    endpoint = target["endpoints"][0]
    endpoint["conditions"] = {"ready": False, "serving": False, "terminating": False}
    service = target["metadata"]["labels"]["kubernetes.io/service-name"]
    return (ClusterState.from_objects(objects), ClusterState.from_objects(changed),
            f"{target['metadata']['namespace']}/{service}", endpoint["addresses"][0])


def _service_backends(maps, prefix: str) -> set[str]:
    service = next(s for s in maps.services if s.name.startswith(prefix + ":"))
    return {maps.backends[b - 1].name.split(":")[0] for b in service.backends}


@pytest.mark.benchmark(group="control: one endpoint readiness change (1,000 services)")
def test_update_one_endpoint(benchmark, readiness_states, rounds):
    ready, not_ready, service, address = readiness_states
    dataplane = Dataplane(ready)
    turn = [0]

    def setup():
        turn[0] += 1
        return ((not_ready if turn[0] % 2 else ready),), {}

    benchmark.pedantic(dataplane.update, setup=setup, rounds=rounds(20), warmup_rounds=2,
                       iterations=1)
    # The change is in the maps the next batch runs on (sanity, not timing).
    dataplane.update(not_ready)
    assert address not in _service_backends(dataplane.maps, service)
    dataplane.update(ready)
    assert address in _service_backends(dataplane.maps, service)
    benchmark.extra_info.update(services=len(dataplane.maps.services), changed_service=service,
                                changed_endpoint=address, target_us=TARGET_UPDATE_US)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        benchmark.extra_info["median_us"] = round(stats.median * 1e6)
        benchmark.extra_info["x_target"] = round(stats.median * 1e6 / TARGET_UPDATE_US, 1)


@pytest.mark.benchmark(group="control: one endpoint readiness change (1,000 services)")
def test_update_compile_only(benchmark, readiness_states, rounds):
    ready, not_ready, _, _ = readiness_states
    turn = [0]

    def setup():
        turn[0] += 1
        return ((not_ready if turn[0] % 2 else ready),), {}

    benchmark.pedantic(compile_maps, setup=setup, rounds=rounds(20), warmup_rounds=2, iterations=1)


@pytest.mark.benchmark(group="control: one endpoint readiness change (1,000 services)")
def test_update_load_only(benchmark, readiness_states, rounds):
    ready, not_ready, _, _ = readiness_states
    both = (compile_maps(ready).maps, compile_maps(not_ready).maps)
    engine = Engine(both[0])
    turn = [0]

    def setup():
        turn[0] += 1
        return (both[turn[0] % 2],), {}

    benchmark.pedantic(engine.load, setup=setup, rounds=rounds(20), warmup_rounds=2, iterations=1)


@pytest.mark.benchmark(group="control: one endpoint readiness change (1,000 services)")
def test_update_load_with_flows(benchmark, readiness_states, workload_files, rounds):
    """update_load_only on an engine tracking the standard batch's flows (default conntrack
    capacity): the endpoint leaving shifts backend ids, so every tracked entry is remapped."""
    ready, not_ready, _, _ = readiness_states
    both = (compile_maps(ready).maps, compile_maps(not_ready).maps)
    engine = Engine(both[0])
    batch = workload.load_batch(workload_files.capture, workload_files.index)  # (the states' workload)
    engine.process(batch.fresh_buffer(), batch.offsets, batch.lengths, batch.timestamps_ns,
                   array("B", bytes(batch.count)), array("B", bytes(batch.count)), batch.linktype)
    turn = [0]

    def setup():
        turn[0] += 1
        return (both[turn[0] % 2],), {}

    benchmark.pedantic(engine.load, setup=setup, rounds=rounds(20), warmup_rounds=2, iterations=1)
    conntrack = engine.counters()["conntrack"]
    benchmark.extra_info.update(tracked_flows=conntrack["entries"], ct_capacity=engine.ct_capacity)
    assert conntrack["entries"] > 0


# --------------------------------------------------------------------------- YAML

def _loader_info(benchmark, loader) -> None:
    benchmark.extra_info["loader"] = f"{loader.__module__}.{loader.__name__}"
    benchmark.extra_info["libyaml"] = bool(getattr(yaml, "__with_libyaml__", False))


@pytest.mark.benchmark(group="control: YAML (standard 1,000-Service dump)")
def test_yaml_load_standard(benchmark, workload_files, rounds):
    state = benchmark.pedantic(load_cluster, args=([workload_files.cluster],), rounds=rounds(5),
                               warmup_rounds=1, iterations=1)
    assert len(state.services) == workload_files.meta["services"]
    _loader_info(benchmark, kubeyaml.YAML_LOADER)
    benchmark.extra_info["bytes"] = workload_files.cluster.stat().st_size


@pytest.mark.benchmark(group="control: YAML (standard 1,000-Service dump)")
def test_yaml_parse_standard(benchmark, workload_files, rounds):
    text = workload_files.cluster.read_text()
    documents = benchmark.pedantic(kubeyaml.load_yaml, args=(text,), rounds=rounds(5),
                                   warmup_rounds=1, iterations=1)
    assert len(documents[0]["items"]) == 2 * workload_files.meta["services"]
    _loader_info(benchmark, kubeyaml.YAML_LOADER)
    benchmark.extra_info["bytes"] = len(text)


@pytest.mark.benchmark(group="control: YAML (standard 1,000-Service dump)")
def test_yaml_parse_python_loader(benchmark, workload_files, rounds, monkeypatch):
    monkeypatch.setattr(kubeyaml, "YAML_LOADER", yaml.SafeLoader)
    text = workload_files.cluster.read_text()
    documents = benchmark.pedantic(kubeyaml.load_yaml, args=(text,), rounds=rounds(1),
                                   iterations=1)
    assert len(documents[0]["items"]) == 2 * workload_files.meta["services"]
    _loader_info(benchmark, yaml.SafeLoader)
    benchmark.extra_info["bytes"] = len(text)


# --------------------------------------------------------------------------- incremental readiness

@pytest.fixture(scope="module")
def readiness_slices(workload_files):
    """The standard cluster's state, and one of its EndpointSlices as the API would send it with
    all endpoints ready and with its first endpoint not ready (+ the service and address)."""
    spec = workload_files.spec
    objects = workload.cluster_objects(spec, workload.plan_cluster(spec))
    slices = [o for o in objects if o["kind"] == "EndpointSlice"]
    ready = slices[len(slices) // 2]
    not_ready = copy.deepcopy(ready)
    endpoint = not_ready["endpoints"][0]
    endpoint["conditions"] = {"ready": False, "serving": False, "terminating": False}
    service = f"{ready['metadata']['namespace']}/{ready['metadata']['labels']['kubernetes.io/service-name']}"
    return ClusterState.from_objects(objects), ready, not_ready, service, endpoint["addresses"][0]


def _new_flow_destinations(dataplane, prefix: str, first_port: int, flows: int = 200) -> set[str]:
    """Where the engine sends new flows (one per source port) to the service's ClusterIP."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    from fastpath.maps import PROTO_TCP, format_address

    service = next(s for s in dataplane.maps.services if s.name.startswith(prefix + ":"))
    frontend = next(f for f in dataplane.maps.frontends if f.service == service.id and f.kind == "ClusterIP")
    seen = set()
    for sport in range(first_port, first_port + flows):
        l4 = (TCP(sport=sport, dport=frontend.port, flags="S") if frontend.proto == PROTO_TCP
              else UDP(sport=sport, dport=frontend.port))
        ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # (no ARP lookup)
        packet = ether / IP(src="10.244.250.1", dst=format_address(frontend.ip)) / l4
        result = dataplane.process_packet(bytes(packet), ts_ns=1)
        assert result.reason.name == "NEW_FLOW"
        seen.add(IP(result.data[14:]).dst)
    return seen


@pytest.mark.benchmark(group="control: one endpoint readiness change (1,000 services)")
def test_endpoint_readiness_change(benchmark, readiness_slices, rounds):
    """Dataplane.apply_endpoint_slice(obj) on the standard cluster, the slice alternating between
    "all ready" and "its first endpoint not ready": issue 5's one readiness change, target 50 us."""
    state, ready, not_ready, service, address = readiness_slices
    dataplane = Dataplane(state)
    dataplane.apply_endpoint_slice(ready)  # the first change indexes the state's slices (untimed)
    turn = [0]

    def setup():
        turn[0] += 1
        return ((not_ready if turn[0] % 2 else ready),), {}

    benchmark.pedantic(dataplane.apply_endpoint_slice, setup=setup, rounds=rounds(400),
                       warmup_rounds=20, iterations=1)
    # The change reaches the maps and the engine the next batch runs on (sanity, not timing).
    assert dataplane.apply_endpoint_slice(not_ready) in (0, 1)
    assert address not in _service_backends(dataplane.maps, service)
    assert address not in _new_flow_destinations(dataplane, service, 20000)
    assert dataplane.apply_endpoint_slice(ready) == 1
    assert address in _service_backends(dataplane.maps, service)
    assert address in _new_flow_destinations(dataplane, service, 30000)
    benchmark.extra_info.update(services=len(dataplane.maps.services), changed_service=service,
                                changed_endpoint=address, target_us=TARGET_UPDATE_US,
                                engine_update_us=_engine_update_us(dataplane, service))
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        benchmark.extra_info["median_us"] = round(stats.median * 1e6, 1)
        benchmark.extra_info["x_target"] = round(stats.median * 1e6 / TARGET_UPDATE_US, 2)


def _engine_update_us(dataplane, prefix: str, rounds: int = 200) -> float:
    """The engine's share (Engine.update_service alone, the service's sets without and with one
    of its backends), the fastest of `rounds`, in microseconds."""
    service = next(s for s in dataplane.maps.services if s.name.startswith(prefix + ":"))
    fewer = dataclasses.replace(service, backends=service.backends[1:], serving=service.serving[1:])
    best = float("inf")
    for turn in range(rounds):
        start = time.perf_counter()
        dataplane.engine.update_service(fewer if turn % 2 == 0 else service)
        best = min(best, time.perf_counter() - start)
    return round(best * 1e6, 1)


def _condition_versions(ready: dict, count: int) -> list[dict]:
    """`count` versions of the slice after `ready`, each changing the conditions of one endpoint
    (in turn) to the next of the eight ready/serving/terminating states: an endpoint's raw value
    comes back every 8 x len(endpoints) versions."""
    states = [{"ready": r, "serving": s, "terminating": t}
              for r in (True, False) for s in (True, False) for t in (False, True)]
    versions, current = [], copy.deepcopy(ready)
    turns = [0] * len(current["endpoints"])
    for number in range(count):
        index = number % len(turns)
        turns[index] += 1
        current["endpoints"][index]["conditions"] = dict(states[turns[index] % len(states)])
        versions.append(copy.deepcopy(current))
    return versions


@pytest.mark.benchmark(group="control: one endpoint readiness change (1,000 services)")
def test_endpoint_readiness_change_varied(benchmark, readiness_slices, rounds):
    """apply_endpoint_slice with one endpoint's conditions changed each round to a state the
    slice's recent versions did not hold (the other case flips one endpoint between two states)."""
    from fastpath.model import parse_endpoint_slice

    state, ready, _, service, _ = readiness_slices
    dataplane = Dataplane(state)
    dataplane.apply_endpoint_slice(ready)
    count = rounds(400) + 20
    versions = _condition_versions(ready, count + 1)
    turn = [0]

    def setup():
        turn[0] += 1
        return (versions[turn[0] - 1],), {}

    benchmark.pedantic(dataplane.apply_endpoint_slice, setup=setup, rounds=count - 20, warmup_rounds=20,
                       iterations=1)
    # The maps hold what a full compile of the last version gives (sanity, not timing).
    last = versions[turn[0] - 1]
    parsed = parse_endpoint_slice(copy.deepcopy(last))
    changed = dataclasses.replace(state, endpoint_slices=tuple(
        parsed if (s.namespace, s.name) == (parsed.namespace, parsed.name) else s for s in state.endpoint_slices))
    full = compile_maps(changed).maps
    assert _service_backends(dataplane.maps, service) == _service_backends(full, service)
    benchmark.extra_info.update(services=len(dataplane.maps.services), changed_service=service,
                                target_us=TARGET_UPDATE_US)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        benchmark.extra_info["median_us"] = round(stats.median * 1e6, 1)
        benchmark.extra_info["x_target"] = round(stats.median * 1e6 / TARGET_UPDATE_US, 2)

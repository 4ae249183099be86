"""Dataplane.apply_endpoint_slice / delete_endpoint_slice: one EndpointSlice change without a full
compile gives the maps and the routing a full compile of the changed state gives; conntrack
follows the spec (UDP flows to an endpoint that stopped serving select again with their next
packet, TCP flows drain); bad input changes nothing."""
from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from test_compiler import ep, eps, node, pod, port, proxy_config, svc

from fastpath import model
from fastpath.compiler import compile_maps
from fastpath.dataplane import Dataplane
from fastpath.maps import PROTO_TCP, PROTO_UDP, Backend, Maps, Service, format_address
from fastpath.model import ClusterState
from fastpath.reference import ReferenceEngine
from fastpath.verdicts import Reason, Verdict

CORES = ["compiled", "reference"]
CT = 4096  # conntrack capacity: small tables make small tests fast
NODE = "node-a"
ETHER = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
NODES = {"node-a": "z1", "node-b": "z2", "node-c": "z1"}
NODE_IPS = {"node-a": ("192.168.1.10", "fd00:1::10"), "node-b": ("192.168.1.11", "fd00:1::11"),
            "node-c": ("192.168.1.12", "fd00:1::12")}


# --------------------------------------------------------------------------- a small cluster

def cluster() -> list[dict[str, Any]]:
    """Services covering the rules a slice change goes through: ready/serving/terminating
    fallback, internal and external traffic policy Local, topology hints, dual-stack, session
    affinity, several slices per service, and a selector service whose endpoints come from Pods."""
    objects: list[dict[str, Any]] = [
        node(name, zone, [("InternalIP", ips[0]), ("InternalIP", ips[1])]) for name, (zone, ips) in
        ((name, (NODES[name], NODE_IPS[name])) for name in NODES)]
    objects.append(proxy_config(clusterCIDR="10.244.0.0/16,fd00:10:244::/56"))
    objects += [
        svc("web", [port(80, "http"), {**port(53, "dns", "UDP"), "nodePort": 30053}], "10.96.0.10",
            type="NodePort", externalTrafficPolicy="Local"),
        svc("dns", [port(53, "dns", "UDP")], "10.96.0.53", internalTrafficPolicy="Local"),
        svc("sticky", [port(80, "http")], "10.96.0.80", sessionAffinity="ClientIP"),
        svc("hinted", [port(80, "http")], "10.96.0.90"),
        svc("dual", [port(80, "http")], "10.96.0.60", clusterIPs=["10.96.0.60", "fd00:96::60"],
            ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="PreferDualStack"),
        svc("frompods", [port(80, "http", "TCP") | {"targetPort": 8080}], "10.96.0.70"),
    ]
    rng = random.Random(7)

    def endpoints(prefix: str, count: int, hints: bool = False) -> list[dict[str, Any]]:
        found = []
        for i in range(count):
            name = rng.choice(list(NODES))
            found.append(ep(f"{prefix}{i + 1}", node=name, pod=f"pod-{prefix}{i + 1}".replace(".", "-").replace(":", "-"),
                            zones=[NODES[name]] if hints else None))
        return found

    ports = [port(8080, "http"), port(5353, "dns", "UDP")]
    objects += [
        eps("web-1", "web", ports, endpoints("10.244.1.", 3)),
        eps("web-2", "web", ports, endpoints("10.244.2.", 2)),
        eps("dns-1", "dns", [port(5353, "dns", "UDP")], endpoints("10.244.3.", 3)),
        eps("sticky-1", "sticky", [port(8080, "http")], endpoints("10.244.4.", 3)),
        eps("hinted-1", "hinted", [port(8080, "http")], endpoints("10.244.5.", 4, hints=True)),
        eps("dual-1", "dual", [port(8080, "http")], endpoints("10.244.6.", 2)),
        eps("dual-6", "dual", [port(8080, "http")], endpoints("fd00:10:244:6::", 2), address_type="IPv6"),
    ]
    objects += [pod(f"frompods-{i}", f"10.244.7.{i}", {"app": "frompods"}, node_name=rng.choice(list(NODES)))
                for i in range(1, 4)]
    return objects


def slices_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "EndpointSlice"]


def mutate(objects: list[dict[str, Any]], rng: random.Random, serial: list[int]) -> tuple[str, Any]:
    """One random EndpointSlice event applied to `objects`: ("apply", the new slice object) or
    ("delete", (namespace, name))."""
    slices = slices_of(objects)
    roll = rng.random()
    if roll < 0.08 and slices:
        gone = rng.choice(slices)
        objects.remove(gone)
        return "delete", (gone["metadata"]["namespace"], gone["metadata"]["name"])
    if roll < 0.16 or not slices:
        service = rng.choice(["web", "dns", "sticky", "hinted", "frompods"])
        serial[0] += 1
        name = f"{service}-extra-{serial[0]}"
        ports = [port(8080, "http"), port(5353, "dns", "UDP")]
        new = eps(name, service, ports, [ep(f"10.244.9.{serial[0] % 250 + 1}", node=rng.choice(list(NODES)))])
        objects.append(new)
        return "apply", copy.deepcopy(new)
    target = rng.choice(slices)
    ipv6 = target["addressType"] == "IPv6"
    endpoints = target["endpoints"]
    action = rng.random()
    if action < 0.5 and endpoints:
        chosen = rng.choice(endpoints)
        ready, serving, terminating = rng.choice([(True, True, False), (False, False, False),
                                                  (False, True, True), (False, False, True),
                                                  (False, True, False), (True, None, None)])
        chosen["conditions"] = {k: v for k, v in (("ready", ready), ("serving", serving),
                                                  ("terminating", terminating)) if v is not None}
    elif action < 0.65:
        serial[0] += 1
        address = f"fd00:10:244:9::{serial[0]:x}" if ipv6 else f"10.244.8.{serial[0] % 250 + 1}"
        endpoints.append(ep(address, node=rng.choice(list(NODES))))  # never seen before
    elif action < 0.8 and endpoints:
        endpoints.remove(rng.choice(endpoints))
    elif action < 0.9 and endpoints:
        rng.choice(endpoints)["nodeName"] = rng.choice(list(NODES))
    elif endpoints:
        chosen = rng.choice(endpoints)
        chosen["hints"] = {"forZones": [{"name": rng.choice(["z1", "z2"])}]}
    return "apply", copy.deepcopy(target)


def sets_by_address(maps: Maps) -> list[tuple]:
    """Each service's sets as addresses, in the maps' order (what selection indexes)."""
    where = {b.id: (b.ip, b.port) for b in maps.backends}
    return [(s.id, s.name, s.family, s.affinity_timeout_s, [where[b] for b in s.backends],
             [where[b] for b in s.local_backends], [where[b] for b in s.serving]) for s in maps.services]


def first_packets(maps: Maps, step: int) -> list[bytes]:
    """A new flow to every frontend from a pod and from an external client, each from an
    address used by no other step (so session affinity and SNAT ports start afresh)."""
    frames = []
    for index, frontend in enumerate(maps.frontends):
        n = step * 64 + index
        sport = 1024 + n
        if frontend.ip >= 1 << 128:
            sources, ip_layer = [f"fd00:10:244:ff::{n + 1:x}", f"2001:db8::{n + 1:x}"], IPv6
        else:
            sources, ip_layer = [f"10.244.{200 + n // 254}.{n % 254 + 1}", f"198.18.{n // 254}.{n % 254 + 1}"], IP
        for source in sources:
            l4 = (TCP(sport=sport, dport=frontend.port, flags="S") if frontend.proto == PROTO_TCP
                  else UDP(sport=sport, dport=frontend.port))
            frames.append(bytes(ETHER / ip_layer(src=source, dst=format_address(frontend.ip)) / l4))
    return frames


# --------------------------------------------------------------------------- equivalence

@pytest.mark.parametrize("seed", range(4))
def test_incremental_changes_match_a_full_compile(seed):
    rng = random.Random(seed)
    objects = cluster()
    state = ClusterState.from_objects(objects)
    planes = [Dataplane(state, node=NODE, core=core, ct_capacity=CT) for core in CORES]
    serial = [0]
    for step in range(60):
        event, what = mutate(objects, rng, serial)
        for plane in planes:
            if event == "apply":
                plane.apply_endpoint_slice(copy.deepcopy(what))
            else:
                plane.delete_endpoint_slice(*what)
        changed_state = ClusterState.from_objects(objects)
        full = compile_maps(changed_state, node=NODE).maps
        fresh = Dataplane(changed_state, node=NODE, ct_capacity=CT)
        for plane in planes:
            # The same sets, in the same order (so the same selection), frontends and node view.
            assert sets_by_address(plane.maps) == sets_by_address(full), f"step {step}: {event} {what}"
            assert plane.maps.frontends == full.frontends and plane.maps.node == full.node
            assert plane.engine.counters()["backends"].__len__() == len(plane.maps.backends)
        # New flows go where a freshly compiled dataplane sends them (same verdicts, same bytes).
        for frame in first_packets(full, step):
            want = fresh.process_packet(frame)
            for plane in planes:
                got = plane.process_packet(frame)
                assert (got.verdict, got.reason, got.data) == (want.verdict, want.reason, want.data), \
                    f"step {step}: {event} {what}: {plane.core}"


def test_pods_then_slices_then_pods_again():
    """A selector service without slices gets its endpoints from Pods; its first slice takes
    over; deleting that slice gives the Pods back (as a compile of each state would)."""
    objects = [o for o in cluster()]
    plane = Dataplane(ClusterState.from_objects(objects), node=NODE, ct_capacity=CT)

    def addresses() -> list[str]:
        service = next(s for s in plane.maps.services if s.name == "default/frompods:http")
        return sorted(format_address(plane.maps.backends[b - 1].ip) for b in service.serving)

    assert addresses() == ["10.244.7.1", "10.244.7.2", "10.244.7.3"]
    new = eps("frompods-1", "frompods", [port(9090, "http")], [ep("10.244.9.9", node="node-b")])
    assert plane.apply_endpoint_slice(new) == 1
    assert addresses() == ["10.244.9.9"]
    assert plane.delete_endpoint_slice("default", "frompods-1") == 1
    assert addresses() == ["10.244.7.1", "10.244.7.2", "10.244.7.3"]
    assert sets_by_address(plane.maps) == sets_by_address(compile_maps(ClusterState.from_objects(objects), NODE).maps)


def test_nothing_to_change_and_slices_of_unknown_services():
    objects = cluster()
    plane = Dataplane(ClusterState.from_objects(objects), node=NODE, ct_capacity=CT)
    before = sets_by_address(plane.maps)
    assert plane.apply_endpoint_slice(copy.deepcopy(slices_of(objects)[0])) == 0  # the same again
    assert plane.apply_endpoint_slice(eps("other-1", "no-such-service", [port(80, "http")], [ep("10.244.9.1")])) == 0
    assert plane.apply_endpoint_slice(eps("unlabelled", None, [port(80, "http")], [ep("10.244.9.2")])) == 0
    assert plane.delete_endpoint_slice("default", "other-1") == 0
    assert sets_by_address(plane.maps) == before
    assert len(plane.maps.backends) == len(compile_maps(ClusterState.from_objects(objects), NODE).maps.backends)


def test_ids_never_change_and_counters_follow():
    objects = cluster()
    plane = Dataplane(ClusterState.from_objects(objects), node=NODE, ct_capacity=CT)
    names = [s.name for s in plane.maps.services]
    backends = list(plane.maps.backends)
    web = copy.deepcopy(next(s for s in slices_of(objects) if s["metadata"]["name"] == "web-1"))
    web["endpoints"].append(ep("10.244.1.99", node=NODE))
    plane.apply_endpoint_slice(web)
    assert [s.name for s in plane.maps.services] == names
    assert plane.maps.backends[:len(backends)] == backends  # old ids, old names
    added = plane.maps.backends[len(backends):]
    assert [(format_address(b.ip), b.port, b.id) for b in added] == [  # numbered in address order
        ("10.244.1.99", 5353, len(backends) + 1), ("10.244.1.99", 8080, len(backends) + 2)]
    counters = plane.counters()["backends"]
    assert list(counters)[-2:] == [b.name for b in added] and counters[added[0].name] == 0


# --------------------------------------------------------------------------- conntrack

def _frame(src: str, dst: str, sport: int, dport: int, proto: int, flags: str = "S") -> bytes:
    l4 = TCP(sport=sport, dport=dport, flags=flags) if proto == PROTO_TCP else UDP(sport=sport, dport=dport)
    return bytes(ETHER / IP(src=src, dst=dst) / l4)


def _slice(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(s for s in slices_of(objects) if s["metadata"]["name"] == name)


def _set_conditions(slice_obj: dict[str, Any], address: str, **conditions: bool) -> dict[str, Any]:
    for endpoint in slice_obj["endpoints"]:
        if endpoint["addresses"][0] == address:
            endpoint["conditions"] = conditions
    return copy.deepcopy(slice_obj)


@pytest.mark.parametrize("core", CORES)
def test_udp_flows_select_again_lazily_and_tcp_flows_drain(core):
    objects = cluster()
    plane = Dataplane(ClusterState.from_objects(objects), node=NODE, core=core, ct_capacity=CT)
    client = "10.244.100.5"
    # A UDP flow to the sticky-free web dns port (ClusterIP), a TCP flow to web http.
    udp_out = plane.process_packet(_frame(client, "10.96.0.10", 40000, 53, PROTO_UDP), ts_ns=1)
    tcp_out = plane.process_packet(_frame(client, "10.96.0.10", 40001, 80, PROTO_TCP), ts_ns=1)
    assert udp_out.reason == tcp_out.reason == Reason.NEW_FLOW
    udp_backend, tcp_backend = IP(udp_out.data[14:]).dst, IP(tcp_out.data[14:]).dst
    web = {**_slice(objects, "web-1"), "endpoints": _slice(objects, "web-1")["endpoints"]}
    web2 = _slice(objects, "web-2")
    owner = {e["addresses"][0]: s for s in (web, web2) for e in s["endpoints"]}

    # Both endpoints stop serving (terminating, not serving): nothing happens to conntrack yet.
    plane.apply_endpoint_slice(_set_conditions(owner[udp_backend], udp_backend, ready=False, serving=False, terminating=True))
    if tcp_backend != udp_backend:
        plane.apply_endpoint_slice(_set_conditions(owner[tcp_backend], tcp_backend, ready=False, serving=False, terminating=True))
    ct = plane.counters()["conntrack"]
    assert (ct["flushed"], ct["entries"]) == (0, 2)
    # The TCP flow keeps its backend (drains); new TCP flows avoid it.
    again = plane.process_packet(_frame(client, "10.96.0.10", 40001, 80, PROTO_TCP, "A"), ts_ns=2)
    assert (again.reason, IP(again.data[14:]).dst) == (Reason.CT_ESTABLISHED, tcp_backend)
    for sport in range(41000, 41040):
        fresh = plane.process_packet(_frame(client, "10.96.0.10", sport, 80, PROTO_TCP), ts_ns=2)
        assert fresh.reason == Reason.NEW_FLOW and IP(fresh.data[14:]).dst not in (tcp_backend, udp_backend)
    # The UDP flow's next packet forgets it and selects again.
    again = plane.process_packet(_frame(client, "10.96.0.10", 40000, 53, PROTO_UDP), ts_ns=3)
    assert again.reason == Reason.NEW_FLOW and IP(again.data[14:]).dst != udp_backend
    assert plane.counters()["conntrack"]["flushed"] == 1
    # A reply from the old backend is no tracked flow any more.
    reply = plane.process_packet(_frame(udp_backend, client, 5353, 40000, PROTO_UDP), ts_ns=4)
    assert reply.verdict != Verdict.REVNAT
    assert plane.counters()["conntrack"]["flushed"] == 1


def _tracked_udp_flow(core):
    """The test cluster's objects, a Dataplane on them with one UDP flow tracked (10.244.100.5
    port 40000 to 10.96.0.10:53), the flow's backend and the EndpointSlice (object) holding it."""
    objects = cluster()
    plane = Dataplane(ClusterState.from_objects(objects), node=NODE, core=core, ct_capacity=CT)
    out = plane.process_packet(_frame("10.244.100.5", "10.96.0.10", 40000, 53, PROTO_UDP), ts_ns=1)
    backend = IP(out.data[14:]).dst
    owner = next(s for s in slices_of(objects) if any(e["addresses"][0] == backend for e in s["endpoints"]))
    return objects, plane, backend, owner


@pytest.mark.parametrize("core", CORES)
def test_udp_flows_stay_while_their_endpoint_serves(core):
    _, plane, backend, owner = _tracked_udp_flow(core)
    # Terminating but serving: out of the cluster set, still serving: the flow stays.
    plane.apply_endpoint_slice(_set_conditions(owner, backend, ready=False, serving=True, terminating=True))
    again = plane.process_packet(_frame("10.244.100.5", "10.96.0.10", 40000, 53, PROTO_UDP), ts_ns=2)
    assert (again.reason, IP(again.data[14:]).dst) == (Reason.CT_ESTABLISHED, backend)
    # Not serving, then serving again before the flow's next packet: the flow never noticed.
    plane.apply_endpoint_slice(_set_conditions(owner, backend, ready=False, serving=False, terminating=False))
    plane.apply_endpoint_slice(_set_conditions(owner, backend, ready=True))
    again = plane.process_packet(_frame("10.244.100.5", "10.96.0.10", 40000, 53, PROTO_UDP), ts_ns=3)
    assert (again.reason, IP(again.data[14:]).dst) == (Reason.CT_ESTABLISHED, backend)
    assert plane.counters()["conntrack"]["flushed"] == 0


@pytest.mark.parametrize("core", CORES)
def test_full_update_after_incremental_changes_keeps_flows(core):
    objects, plane, backend, owner = _tracked_udp_flow(core)
    web = _slice(objects, "web-1")
    web["endpoints"].append(ep("10.244.1.77", node=NODE))
    plane.apply_endpoint_slice(copy.deepcopy(web))
    # The endpoint stops serving in the state the full update compiles: the flow selects again.
    _set_conditions(owner, backend, ready=False, serving=False)
    plane.update(ClusterState.from_objects(objects))
    assert sets_by_address(plane.maps) == sets_by_address(compile_maps(ClusterState.from_objects(objects), NODE).maps)
    again = plane.process_packet(_frame("10.244.100.5", "10.96.0.10", 40000, 53, PROTO_UDP), ts_ns=2)
    assert again.reason == Reason.NEW_FLOW and IP(again.data[14:]).dst != backend
    assert plane.counters()["conntrack"]["flushed"] == 1
    # And incremental changes go on from the new state.
    assert plane.apply_endpoint_slice(_set_conditions(owner, backend, ready=True)) == 2  # http and dns


# --------------------------------------------------------------------------- bad input

BAD_SLICES = [
    (None, "expected an EndpointSlice (discovery.k8s.io/v1), got null"),
    ([], "expected an EndpointSlice (discovery.k8s.io/v1), got []"),
    ({"kind": "Service", "apiVersion": "v1"}, 'expected an EndpointSlice (discovery.k8s.io/v1), got "Service"'),
    ({"kind": "EndpointSlice", "apiVersion": "example.com/v1"}, 'expected apiVersion discovery.k8s.io/v1, got "example.com/v1"'),
    ({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1beta1", "metadata": {"name": "web-1"}},
     'EndpointSlice default/web-1: apiVersion: must be discovery.k8s.io/v1, got "discovery.k8s.io/v1beta1"'),
]


def _broken(change) -> dict[str, Any]:
    obj = eps("web-1", "web", [port(8080, "http")], [ep("10.244.1.1"), ep("10.244.1.2")])
    change(obj)
    return obj


BAD_FIELDS = [
    (lambda o: o["endpoints"][1].update(addresses=[]), "endpoints[1].addresses: must hold at least one address"),
    (lambda o: o["endpoints"][1].update(addresses=["10.244.1.300"]), "endpoints[1].addresses[0]: must be an IP address"),
    (lambda o: o["endpoints"][0]["conditions"].update(ready=1), "endpoints[0].conditions.ready: must be true or false, got 1"),
    (lambda o: o["endpoints"][0].update(conditions=""), "endpoints[0].conditions: must be a mapping"),
    (lambda o: o.update(addressType="IPv5"), "addressType: must be one of"),
    (lambda o: o["ports"][0].update(port=0), "ports[0].port: must be an integer 1-65535"),
    (lambda o: o["metadata"].pop("name"), "metadata.name: required"),
]


@pytest.mark.parametrize("core", CORES)
def test_bad_input_is_one_line_and_changes_nothing(core):
    objects = cluster()
    plane = Dataplane(ClusterState.from_objects(objects), node=NODE, core=core, ct_capacity=CT)
    # Parse the real slice once first, so its endpoints are remembered (bad versions must not
    # pass for them).
    plane.apply_endpoint_slice(copy.deepcopy(_slice(objects, "web-1")))
    before = sets_by_address(plane.maps), len(plane.maps.backends), plane.counters()
    for obj, message in BAD_SLICES:
        with pytest.raises(ValueError) as error:
            plane.apply_endpoint_slice(obj)
        assert str(error.value) == message
    for change, message in BAD_FIELDS:
        broken = _broken(change)
        with pytest.raises(ValueError) as error:
            plane.apply_endpoint_slice(broken)
        assert message in str(error.value) and "\n" not in str(error.value)
        # A bad version of a known slice after a good one that looks alike: still refused.
        good = _broken(lambda o: None)
        plane.apply_endpoint_slice(good)
        with pytest.raises(ValueError):
            plane.apply_endpoint_slice(broken)
        plane.apply_endpoint_slice(copy.deepcopy(_slice(objects, "web-1")))
    with pytest.raises(ValueError, match="^delete_endpoint_slice: no EndpointSlice default/nope is known$"):
        plane.delete_endpoint_slice("default", "nope")
    assert (sets_by_address(plane.maps), len(plane.maps.backends)) == before[:2]
    assert plane.counters() == before[2]


def test_memory_running_out_between_two_ports_keeps_maps_and_engine_agreed():
    objects = cluster()
    plane = Dataplane(ClusterState.from_objects(objects), node=NODE, core="reference", ct_capacity=CT)
    web = _slice(objects, "web-1")
    web["endpoints"].append(ep("10.244.1.99", node=NODE))  # both ports of web change
    engine_update, calls = plane.engine.update_service, []

    def failing_second(service, new_backends=()):
        calls.append(service.id)
        if len(calls) == 2:
            raise MemoryError("no memory")
        engine_update(service, new_backends)

    plane.engine.update_service = failing_second
    with pytest.raises(MemoryError):
        plane.apply_endpoint_slice(copy.deepcopy(web))
    assert len(plane.maps.backends) == len(plane.engine.counters()["backends"])
    del plane.engine.update_service
    # The port left behind catches up with the slice's next change.
    assert plane.apply_endpoint_slice(copy.deepcopy(web)) == 1
    assert sets_by_address(plane.maps) == sets_by_address(compile_maps(ClusterState.from_objects(objects), NODE).maps)


def test_a_dataplane_made_from_maps_refuses():
    plane = Dataplane(compile_maps(ClusterState.from_objects(cluster()), NODE).maps, ct_capacity=CT)
    with pytest.raises(ValueError, match="needs a Dataplane made from cluster state"):
        plane.apply_endpoint_slice(eps("web-1", "web", [port(8080, "http")], [ep("10.244.1.1")]))
    with pytest.raises(ValueError, match="needs a Dataplane made from cluster state"):
        plane.delete_endpoint_slice("default", "web-1")


# --------------------------------------------------------------------------- the engines

def _engine_maps() -> Maps:
    backends = [Backend(1, 0x0AF40101, 80, "a"), Backend(2, 0x0AF40102, 80, "b"),
                Backend(3, (1 << 128) | 0xFD00 << 112 | 1, 80, "c")]
    return Maps(services=[Service(1, "ns/web:http", (1, 2), (1,), (1, 2)),
                          Service(2, "ns/web:http", (3,), (), (3,), family=6)],
                frontends=[], backends=backends)


BAD_UPDATES = [
    (lambda: Service(3, "ns/web:http", (1,)), (), "update_service: service id 3 is not loaded (ids 1..2)"),
    (lambda: Service(1, "ns/other:http", (1,)), (), "update_service: service 1 is 'ns/web:http' (IPv4), not 'ns/other:http' (IPv4)"),
    (lambda: Service(1, "ns/web:http", (1,), family=6), (), "update_service: service 1 is 'ns/web:http' (IPv4), not 'ns/web:http' (IPv6)"),
    (lambda: Service(1, "ns/web:http", (4,)), (), "update_service: service 'ns/web:http' names unknown backend id 4"),
    (lambda: Service(1, "ns/web:http", (1,), serving=(3,)), (),
     "update_service: service 'ns/web:http' (IPv4) names backend 'c' of the other family"),
    (lambda: Service(1, "ns/web:http", (4,)), (Backend(5, 0x0AF40105, 80, "e"),),
     "update_service: new backend Backend(id=5, ip=183763205, port=80, name='e') must be a Backend with id 4"),
    (lambda: Service(1, "ns/web:http", (4,)), (Backend(4, 0x0AF40104, 70000, "d"),),
     "update_service: backend 'd' has port 70000"),
    (lambda: Service(1, "ns/web:http", (4,)), (Backend(4, 1 << 40, 80, "d"),),
     "update_service: backend 'd': 1099511627776 is not a map address"),
    (lambda: "web", (), "update_service: expected a fastpath.maps.Service, got str"),
]


@pytest.mark.parametrize("case", range(len(BAD_UPDATES)))
def test_update_service_refuses_bad_input_in_both_cores(case):
    from fastpath._core import Engine

    make, new, message = BAD_UPDATES[case]
    for engine in (Engine(_engine_maps(), ct_capacity=CT), ReferenceEngine(_engine_maps(), ct_capacity=CT)):
        before = engine.counters()
        with pytest.raises(ValueError) as error:
            engine.update_service(make(), new)
        assert str(error.value) == message
        assert engine.counters() == before


@pytest.mark.parametrize("engine_class", ["compiled", "reference"])
def test_update_service_grows_and_reuses_slots(engine_class):
    """Many updates that grow and shrink a set (slots appended, compacted, reused): selection
    always matches an engine freshly loaded with the same maps."""
    from fastpath._core import Engine

    make = Engine if engine_class == "compiled" else ReferenceEngine
    maps = _engine_maps()
    maps.frontends.append(__import__("fastpath.maps").maps.Frontend(0x0A600001, 80, PROTO_TCP, 1))
    engine = make(maps, ct_capacity=CT)
    backends = list(maps.backends)
    rng = random.Random(3)
    for step in range(120):
        new = []
        if rng.random() < 0.5:
            new.append(Backend(len(backends) + 1, 0x0AF50000 + step, 80, f"n{step}"))
        pool = [b.id for b in (*backends, *new) if b.ip < 1 << 128]
        chosen = tuple(sorted(rng.sample(pool, rng.randrange(1, min(len(pool), 40) + 1))))
        service = Service(1, "ns/web:http", chosen, chosen[:1], chosen)
        engine.update_service(service, new)
        backends.extend(new)
        if step % 10 == 9:
            current = Maps(services=[service, maps.services[1]], frontends=maps.frontends, backends=list(backends))
            fresh = make(current, ct_capacity=CT)
            for sport in range(1024, 1064):
                frame = _frame("10.244.0.9", "10.96.0.1", sport + step * 64, 80, PROTO_TCP)
                assert engine.process_packet(frame, 1) == fresh.process_packet(frame, 1)
    assert len(engine.counters()["backends"]) == len(backends)


# --------------------------------------------------------------------------- the parse cache

def _parsed_fresh(obj: Any) -> Any:
    """parse_endpoint_slice without a cache: the slice, or the error's text."""
    try:
        return model.parse_endpoint_slice(copy.deepcopy(obj))
    except model.ClusterError as error:
        return f"error: {error}"


def _parsed_cached(obj: Any, cache: dict) -> Any:
    try:
        return model.parse_endpoint_slice(obj, cache)
    except model.ClusterError as error:
        return f"error: {error}"


CONDITION_STATES = [{"ready": True, "serving": True, "terminating": False},
                    {"ready": False, "serving": False, "terminating": False},
                    {"ready": False, "serving": True, "terminating": True},
                    {"ready": False, "serving": False, "terminating": True},
                    {"ready": True}, {}, None, {"serving": False, "unknown": 3}]


def _count_reads(monkeypatch) -> list[int]:
    """How many endpoints are read field by field (the plain IPv4 reader or _endpoint)."""
    reads = [0]
    plain, full = model._compiled.plain_ipv4_endpoint, model._endpoint

    def counting_plain(raw):
        reads[0] += 1
        return plain(raw)

    def counting_full(o, raw, path, family):
        if family != 4:
            reads[0] += 1
        return full(o, raw, path, family)

    monkeypatch.setattr(model._compiled, "plain_ipv4_endpoint", counting_plain)
    monkeypatch.setattr(model, "_endpoint", counting_full)
    return reads


@pytest.mark.parametrize("address_type, prefix", [("IPv4", "10.244.1."), ("IPv6", "FD00:10:244:1::")])
def test_a_conditions_only_change_reads_only_the_conditions(monkeypatch, address_type, prefix):
    reads = _count_reads(monkeypatch)
    endpoints = [ep(f"{prefix}{i}", node="node-a", pod=f"pod-{i}", zones=["z1"] if i == 2 else None)
                 for i in range(1, 5)]
    obj = eps("web-1", "web", [port(8080, "http")], endpoints, address_type=address_type)
    cache: dict = {}
    first = _parsed_cached(copy.deepcopy(obj), cache)
    assert reads[0] == 4
    assert first == _parsed_fresh(obj)
    # An endpoint's first change is read in full (a slice's first version keeps no entries
    # without conditions: most endpoints never change); from then on only its conditions are.
    for index in (1, 2):
        obj["endpoints"][index]["conditions"] = {"ready": False, "serving": True, "terminating": True}
    reads[0] = 0
    changed = _parsed_cached(copy.deepcopy(obj), cache)
    assert reads[0] == 2
    assert changed == _parsed_fresh(obj)
    for step, conditions in enumerate(CONDITION_STATES):
        for index in (1, 2):  # a plain endpoint, and one with hints (never the plain reader's)
            obj["endpoints"][index]["conditions"] = conditions
            reads[0] = 0
            parsed = _parsed_cached(copy.deepcopy(obj), cache)
            assert reads[0] == 0, (step, index)  # taken from the one before, with its conditions read
            assert parsed == _parsed_fresh(obj), (step, index)
            assert parsed.endpoints[index].conditions == model._CONDITIONS[tuple(
                (conditions or {}).get(key) for key in ("ready", "serving", "terminating"))]


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(conditions={"ready": 1}), "endpoints[1].conditions.ready: must be true or false, got 1"),
    (lambda e: e.update(conditions={"ready": "true"}),
     'endpoints[1].conditions.ready: must be true or false, got "true"'),
    (lambda e: e.update(conditions={"serving": 0.0}), "endpoints[1].conditions.serving: must be true or false"),
    (lambda e: e.update(conditions=[True]), "endpoints[1].conditions: must be a mapping"),
    (lambda e: e.update(conditions=""), "endpoints[1].conditions: must be a mapping"),
])
def test_bad_conditions_of_a_known_endpoint_are_refused_alike(change, message):
    obj = eps("web-1", "web", [port(8080, "http")], [ep(f"10.244.1.{i}", pod=f"pod-{i}") for i in range(1, 4)])
    cache: dict = {}
    model.parse_endpoint_slice(copy.deepcopy(obj), cache)
    obj["endpoints"][1]["conditions"] = {"ready": False}
    model.parse_endpoint_slice(copy.deepcopy(obj), cache)  # its entry without conditions exists now
    change(obj["endpoints"][1])
    got, fresh = _parsed_cached(copy.deepcopy(obj), cache), _parsed_fresh(obj)
    assert got == fresh and isinstance(got, str) and message in got


@pytest.mark.parametrize("address_type, prefix", [("IPv4", "10.244.1."), ("IPv6", "fd00:10:244:1::")])
def test_other_changes_are_read_in_full(monkeypatch, address_type, prefix):
    reads = _count_reads(monkeypatch)
    obj = eps("web-1", "web", [port(8080, "http")],
              [ep(f"{prefix}{i}", node="node-a", pod=f"pod-{i}") for i in range(1, 4)], address_type=address_type)
    cache: dict = {}
    model.parse_endpoint_slice(copy.deepcopy(obj), cache)
    obj["endpoints"][0]["conditions"] = {"ready": False}
    model.parse_endpoint_slice(copy.deepcopy(obj), cache)
    for change in (lambda e: e.update(nodeName="node-b"), lambda e: e.update(zone="z9"),
                   lambda e: e["targetRef"].update(name="pod-9"), lambda e: e.update(addresses=[f"{prefix}99"]),
                   lambda e: e.update(hints={"forZones": [{"name": "z1"}]}),
                   lambda e: e.update(conditions={"ready": True}, nodeName="node-c")):
        change(obj["endpoints"][0])
        reads[0] = 0
        parsed = _parsed_cached(copy.deepcopy(obj), cache)
        assert reads[0] == 1  # that endpoint, and only it
        assert parsed == _parsed_fresh(obj)


def _random_endpoint(rng: random.Random, address_type: str) -> dict[str, Any]:
    if address_type == "IPv6":
        address = rng.choice(["fd00::1", "FD00::2", "fd00:0::3", "::ffff:10.0.0.4"])
    else:
        address = rng.choice(["10.244.0.1", "10.244.0.2", "10.244.0.3", "10.244.000.4"])
    return ep(address, ready=rng.choice([True, False, None]), node=rng.choice([None, "node-a", "node-b"]),
              pod=rng.choice([None, "pod-a", "pod-b"]), zones=rng.choice([None, ["z1"]]))


def _random_edit(rng: random.Random, endpoints: list[dict[str, Any]], address_type: str) -> None:
    roll = rng.random()
    if not endpoints or roll < 0.1:
        endpoints.insert(rng.randrange(len(endpoints) + 1), _random_endpoint(rng, address_type))
        return
    target = rng.choice(endpoints)
    if roll < 0.55:
        target["conditions"] = rng.choice(CONDITION_STATES + [{"ready": 1}, "", {"terminating": "yes"}])
    elif roll < 0.62:
        target.pop("conditions", None)
    elif roll < 0.7:
        target["conditions"] = dict(reversed(list((target.get("conditions") or {}).items())))  # key order
    elif roll < 0.78:
        target["nodeName"] = rng.choice(["node-a", "node-b", "", 7])
    elif roll < 0.84:
        endpoints.remove(target)
    elif roll < 0.9:
        target["addresses"] = rng.choice([["10.244.0.9"], ["fd00::9"], [], "10.244.0.9"])
    elif roll < 0.95:
        endpoints.append(copy.deepcopy(target))  # the same endpoint twice
    else:
        target["uid-like"] = rng.random()  # a field nothing reads


@pytest.mark.parametrize("seed", range(6))
def test_cached_parses_equal_fresh_ones(seed):
    """Random versions of one slice (conditions, other fields, bad values, endpoints added and
    removed): each parsed with the cache of the versions before is what a fresh parse gives
    (the same slice, or the same error); the cache stays within its bound."""
    rng = random.Random(seed)
    address_type = ["IPv4", "IPv6", "FQDN"][seed % 3]
    if address_type == "FQDN":
        endpoints = [ep(f"host-{i}.example", pod=f"pod-{i}") for i in range(4)]
    else:
        endpoints = [_random_endpoint(rng, address_type) for _ in range(5)]
    obj = eps("web-1", "web", [port(8080, "http")], endpoints, address_type=address_type)
    cache: dict = {}
    for step in range(300):
        _random_edit(rng, obj["endpoints"], address_type)
        if rng.random() < 0.03:
            obj["ports"] = [port(rng.choice([8080, 9090]), "http")]
        if rng.random() < 0.03:  # the same raw endpoints read for another family
            obj["addressType"] = rng.choice(["IPv4", "IPv6", "FQDN"])
        got, fresh = _parsed_cached(copy.deepcopy(obj), cache), _parsed_fresh(obj)
        assert got == fresh, f"step {step}"
        if not isinstance(got, str):
            assert len(cache) <= 3 * len(got.endpoints) + 8
            # What an endpoint parsed to is shared with the version before (no copies pile up).
            again = model.parse_endpoint_slice(copy.deepcopy(obj), cache)
            assert all(a is b for a, b in zip(again.endpoints, got.endpoints))


# --------------------------------------------------------------------------- the candidate memo

@pytest.mark.parametrize("seed", range(4))
def test_remembered_candidates_give_the_compilers_sets(seed):
    """compiler.endpoint_sets with a memo kept across a slice's versions (as fastpath.endpoints
    keeps it) gives the sets, and the skipped counts, that it gives without one."""
    from fastpath.compiler import _service_ports, endpoint_sets

    rng = random.Random(seed)
    address_type = "IPv6" if seed % 2 else "IPv4"
    state = ClusterState.from_objects(cluster())
    family = 6 if address_type == "IPv6" else 4
    entries = [e for e in _service_ports(state.services, __import__("collections").Counter())
               if e.service.name == "dual" and e.family == family]
    assert entries
    objs = [eps(name, "dual", [port(8080, "http"), port(5353, "dns", "UDP")],
                [_random_endpoint(rng, address_type) for _ in range(4)], address_type=address_type)
            for name in ("dual-1", "dual-2")]
    caches: list[dict] = [{}, {}]
    memo: dict = {}
    for step in range(200):
        which = rng.randrange(2)
        _random_edit(rng, objs[which]["endpoints"], address_type)
        slices = []
        for obj, cache in zip(objs, caches):
            try:
                slices.append(model.parse_endpoint_slice(copy.deepcopy(obj), cache))
            except model.ClusterError:
                objs[which]["endpoints"] = [_random_endpoint(rng, address_type)]
                break
        else:
            for entry in entries:
                for node_name in (None, NODE):
                    counted: Any = __import__("collections").Counter()
                    plain: Any = __import__("collections").Counter()
                    remembered = endpoint_sets(entry, slices, None, node_name, "z1", counted, memo)
                    assert remembered == endpoint_sets(entry, slices, None, node_name, "z1", plain), f"step {step}"
                    assert counted == plain
            for endpoint_slice in slices:  # (it stays bounded: it starts afresh past twice the slice's size)
                for known in memo[(endpoint_slice.namespace, endpoint_slice.name)].values():
                    assert len(known) <= 3 * len(endpoint_slice.endpoints) + 8

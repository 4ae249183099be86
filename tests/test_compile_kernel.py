"""fastpath._compile, the compiler's compiled per-endpoint loops, against the rules written out
in plain Python: backends numbered in (ip, port) order, one per distinct (ip, port) named by
its smallest name, each service port's sets as sorted id tuples; map_address as the socket
module reads addresses."""
from __future__ import annotations

import dataclasses
import gc
import random
import socket
import sys
import weakref

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


def candidate(rng: random.Random, key: int, name: str) -> _Candidate:
    terminating = rng.random() < 0.2
    return _Candidate(key, name, rng.random() < 0.8 and not terminating, rng.random() < 0.9, terminating,
                      rng.random() < 0.3, (), ())


@pytest.mark.parametrize("seed", range(40))
def test_numbering_follows_the_rules(seed: int) -> None:
    rng = random.Random(seed)
    pool = sorted({random_key(rng) for _ in range(rng.randrange(1, 60))})
    gatherer = compile_kernel.Gatherer("n1", None, None)
    chosen, summaries = [], []
    for _ in range(rng.randrange(0, 30)):
        # A port's candidates may repeat a key (the preferred one is kept); the same key may
        # recur across ports, named differently.
        keys = [rng.choice(pool) for _ in range(rng.randrange(0, 25))]
        candidates = [candidate(rng, key, f"n{rng.randrange(5)}-{key:x}") for key in keys]
        summaries.append(gatherer.add_candidates(candidates))
        chosen.append(compile_kernel.port_sets(candidates, "n1", None, _Sets))
    backends, port_sets = gatherer.number(Backend)
    assert (backends, port_sets) == expected_numbering(chosen)
    assert summaries == [(len(s.cluster), any(c.ready for c in s.cluster), len(s.local)) for s in chosen]
    # Ints and strings only: the cyclic collector is not told of them.
    assert not any(map(gc.is_tracked, backends))
    assert not any(gc.is_tracked(ids) for sets in port_sets for ids in sets)
    for sets, (cluster, _, serving) in zip(chosen, port_sets):
        if sets.serving == sets.cluster:
            assert serving is cluster  # equal sets share one tuple (Maps checks it once)


def test_numbering_hands_each_name_to_its_backend_once() -> None:
    """number() gives the gatherer's reference to each kept name to its backend and releases the
    others (a key gathered twice, under two names): no name gains or loses a reference."""
    rng = random.Random(7)
    names = [f"name-{i}" for i in range(40)]  # built at run time: refcounts of their own
    before = [sys.getrefcount(name) for name in names]
    gatherer = compile_kernel.Gatherer("n1", None, None)
    for _ in range(12):
        keys = [random_key(rng) for _ in range(rng.randrange(1, 20))]
        keys += rng.sample(keys, len(keys) // 2)  # keys gathered twice in a port, and across ports
        gatherer.add_candidates([candidate(rng, key, rng.choice(names)) for key in keys])
    backends, _ = gatherer.number(Backend)
    assert {backend.name for backend in backends} <= set(names)
    with pytest.raises(RuntimeError, match="already numbered"):
        gatherer.number(Backend)
    with pytest.raises(RuntimeError, match="numbered"):
        gatherer.add_candidates([candidate(rng, random_key(rng), names[0])])
    del gatherer, backends
    gc.collect()
    assert [sys.getrefcount(name) for name in names] == before


def test_port_sets_keep_the_preferred_of_duplicates_in_first_seen_order() -> None:
    def made(key: int, name: str, ready: bool, terminating: bool = False) -> _Candidate:
        return _Candidate(key, name, ready, True, terminating, False, (), ())

    first, second, third = made(1 << 16 | 80, "a", False), made(2 << 16 | 80, "b", True), made(1 << 16 | 80, "c", True)
    sets = compile_kernel.port_sets([first, second, third], None, None, _Sets)
    assert sets.cluster == [third, second] and sets.serving == [third, second]
    # Not terminating wins over ready.
    sets = compile_kernel.port_sets([made(5, "x", True, terminating=True), made(5, "y", False)], None, None, _Sets)
    assert [c.name for c in sets.serving] == ["y"]


def random_slices(rng: random.Random, family: int, most: int = 12) -> list:
    from fastpath.model import Endpoint, EndpointConditions, EndpointPort, EndpointSlice, ObjectReference

    def address() -> str:
        if family == 4:
            return f"10.0.{rng.randrange(2)}.{rng.randrange(1, 9)}"
        if rng.random() < 0.1:
            return rng.choice(("::ffff:10.0.0.1", "10.0.0.2"))  # no candidate in an IPv6 slice
        return f"fd00::{rng.randrange(1, 9):x}"

    def condition() -> bool | None:
        return rng.choice((None, True, False))

    slices = []
    for index in range(rng.randrange(0, 4)):
        endpoints = tuple(
            Endpoint(addresses=(address(),),
                     conditions=EndpointConditions(condition(), condition(), condition()),
                     node_name=rng.choice((None, "n1", "n2")),
                     hints_for_zones=rng.choice(((), ("z1",), ("z2", "z1"))),
                     hints_for_nodes=rng.choice(((), ("n1",), ("n2",))),
                     target_ref=rng.choice((None, ObjectReference("Pod", rng.choice(("", "b")), f"p{i}"))))
            for i in range(rng.randrange(0, most)))
        ports = rng.choice(((EndpointPort("http", "TCP", 8080),), (EndpointPort("dns", "UDP", 53),),
                            (EndpointPort("http", "TCP", None),)))
        slices.append(EndpointSlice("a", f"web-{index}", "web", f"IPv{family}", ports, endpoints))
    return slices


@pytest.mark.parametrize("node", ["n1", "nœud-1", "n10"])
def test_endpoints_are_local_by_their_node_name_text(node: str) -> None:
    """An endpoint is local when its nodeName equals the node's name: the same text in another
    string object (as a parsed dump has it) counts, a name differing in length or a letter not."""
    from collections import Counter

    from fastpath.model import Endpoint, EndpointPort, EndpointSlice, ServicePort

    names = (node, "n2", "n1x", "nœud-2", None)
    endpoints = tuple(Endpoint(addresses=(f"10.0.0.{i + 1}",), node_name="".join(list(name)) if name else None)
                      for i, name in enumerate(names))
    slices = [EndpointSlice("a", "web-1", "web", "IPv4", (EndpointPort("http", "TCP", 8080),), endpoints)]
    own_name = "".join(list(node))
    assert own_name is not node or len(node) == 1
    made = compile_kernel.candidates(ServicePort("http", "TCP", 80, 8080), 4, slices, own_name, Counter(), None,
                                     _Candidate)
    assert [c.local for c in made] == [True, False, False, False, False]


@pytest.mark.parametrize("seed", range(60))
def test_slices_gather_as_their_candidates(seed: int) -> None:
    """The full compile reads slices straight into records (add_slices); the incremental path
    makes candidate tuples of the same endpoints (candidates, then port_sets). Same result."""
    from collections import Counter

    from fastpath.model import ServicePort

    rng = random.Random(seed)
    node, zone = rng.choice((None, "n1")), rng.choice((None, "z1"))
    port = ServicePort("http", "TCP", 80, 8080)
    skipped: Counter[str] = Counter()
    skipped_directly: Counter[str] = Counter()
    direct = compile_kernel.Gatherer(node, zone, skipped_directly)
    through_tuples = compile_kernel.Gatherer(node, zone, None)
    summaries = []
    for _ in range(rng.randrange(1, 6)):
        family = rng.choice((4, 6))
        slices = random_slices(rng, family)
        before = skipped[compile_kernel.MAPPED_IN_IPV6]
        made = compile_kernel.candidates(port, family, slices, node, skipped, None, _Candidate)
        # Every endpoint of a slice with the port, duplicates included, but those skipped.
        listed = sum(len(s.endpoints) for s in slices if s.ports[0].name == "http" and s.ports[0].port is not None)
        assert len(made) == listed - (skipped[compile_kernel.MAPPED_IN_IPV6] - before)
        summaries.append((direct.add_slices(port, family, slices), through_tuples.add_candidates(made)))
    assert all(a == b for a, b in summaries)
    assert direct.number(Backend) == through_tuples.number(Backend)
    assert skipped_directly == skipped


@pytest.mark.parametrize("family", [4, 6])
def test_backend_names_read_as_written_out(family: int) -> None:
    """A backend is named "address:port (namespace/pod)" (IPv6 in brackets), with the slice's
    namespace when the reference has none and the slice's own name when there is no pod; names
    that are not plain ASCII strings (copied directly otherwise) are named alike."""
    from collections import Counter

    from fastpath.model import Endpoint, EndpointConditions, EndpointPort, EndpointSlice, ObjectReference, ServicePort

    class Label(str):
        pass

    refs = [ObjectReference("Pod", "team-a", "web-1"), ObjectReference("Pod", None, "web-2"),
            ObjectReference("Pod", "", "web-3"), None, ObjectReference("Pod", "team-a", None),
            ObjectReference("Pod", "équipe", "web-5"), ObjectReference("Pod", "team-a", "wéb-6"),
            ObjectReference("Pod", "team-a", "\U0001f600"), ObjectReference("Pod", Label("team-b"), Label("web-8"))]
    addresses = [f"10.0.0.{i}" if family == 4 else f"fd00::{i:x}" for i in range(1, len(refs) + 1)]
    endpoints = tuple(Endpoint(addresses=(address,), conditions=EndpointConditions(ready=True), target_ref=ref)
                      for address, ref in zip(addresses, refs))
    endpoint_slice = EndpointSlice("slices-ns", "web-x1", "web", f"IPv{family}",
                                   (EndpointPort("http", "TCP", 8080),), endpoints)
    made = compile_kernel.candidates(ServicePort("http", "TCP", 80, 8080), family, [endpoint_slice], None,
                                     Counter(), None, _Candidate)
    shown = [address if family == 4 else f"[{address}]" for address in addresses]
    owners = ["team-a/web-1", "slices-ns/web-2", "slices-ns/web-3", "slices-ns/web-x1", "slices-ns/web-x1",
              "équipe/web-5", "team-a/wéb-6", "team-a/\U0001f600", "team-b/web-8"]
    assert [c.name for c in made] == [f"{address}:8080 ({owner})" for address, owner in zip(shown, owners)]
    assert all(type(c.name) is str for c in made)


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


def test_maker_makes_what_the_constructor_makes() -> None:
    """Maker(cls)(**fields) equals cls(**fields), field for field, for the model classes the
    readers make with it; a field left out, or one the class does not have, is a TypeError (no
    default is applied), and so is a class whose __post_init__ a Maker would skip."""
    from fastpath.model import EndpointPort, LoadBalancerIngress, Service, ServicePort

    port = ServicePort(name="http", protocol="TCP", port=80, target_port="web", node_port=30080)
    values = dict(namespace="team-a", name="web", type="LoadBalancer", cluster_ips=("10.96.0.7", "fd00::7"),
                  headless=False, ports=(port,), selector=(("app", "web"),), session_affinity="ClientIP",
                  affinity_timeout=600, external_ips=("192.0.2.7",), external_traffic_policy="Local",
                  internal_traffic_policy="Cluster", load_balancer_ingress=(LoadBalancerIngress("192.0.2.8"),),
                  load_balancer_source_ranges=("192.0.2.0/24",), external_name=None, publish_not_ready_addresses=True)
    made = compile_kernel.Maker(Service)(**values)
    assert type(made) is Service and made == Service(**values) and hash(made) == hash(Service(**values))
    assert [getattr(made, name) for name in values] == list(values.values())
    assert compile_kernel.Maker(EndpointPort)(name="", protocol="UDP", port=None) == EndpointPort("", "UDP", None)
    maker = compile_kernel.Maker(ServicePort)
    with pytest.raises(TypeError, match="ServicePort takes every one of its fields by name"):
        maker(name="http", protocol="TCP", port=80, target_port=8080)  # node_port left to its default
    with pytest.raises(TypeError, match="got name, protocol, port, target_port, node_port, color"):
        maker(name="http", protocol="TCP", port=80, target_port=8080, node_port=None, color="blue")
    with pytest.raises(TypeError, match="got name, protocol, port, target_port, nodePort"):
        maker(name="http", protocol="TCP", port=80, target_port=8080, nodePort=None)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            assert self.value >= 0

    with pytest.raises(TypeError, match="__post_init__"):
        compile_kernel.Maker(Checked)


def test_maker_leaves_to_the_collector_only_what_can_be_in_a_cycle() -> None:
    """An object a Maker makes of values that can be in no reference cycle (strings, ints, None,
    tuples of those, frozen model objects it made) is not tracked by the cyclic collector, and
    its tuples are untracked; anything holding a mutable container stays tracked, so a cycle
    made through it later is still collected."""
    from fastpath.model import EndpointPort, EndpointSlice, Service, ServicePort

    port = compile_kernel.Maker(ServicePort)(name="http", protocol="TCP", port=80, target_port=8080, node_port=None)
    selector = (("app", "web"), ("tier", "front"))
    fields = dict(namespace="a", name="web", type="ClusterIP", cluster_ips=("10.96.0.7",), headless=False,
                  ports=(port,), selector=selector, session_affinity="None", affinity_timeout=None, external_ips=(),
                  external_traffic_policy="Cluster", internal_traffic_policy="Cluster", load_balancer_ingress=(),
                  load_balancer_source_ranges=(), external_name=None, publish_not_ready_addresses=False)
    service = compile_kernel.Maker(Service)(**fields)
    assert not gc.is_tracked(port) and not gc.is_tracked(service)
    assert not any(map(gc.is_tracked, (fields["ports"], selector, *selector)))

    # A ServicePort made by its constructor is tracked: a Service holding it stays tracked.
    assert gc.is_tracked(compile_kernel.Maker(Service)(**{**fields, "ports": (ServicePort("http", "TCP", 80, 8080),)}))

    class Holder:  # a mutable object, untracked or not, may later close a cycle
        pass

    slice_maker = compile_kernel.Maker(EndpointSlice)
    box: dict = {}  # untracked while it holds nothing the collector tracks
    held = slice_maker(namespace="a", name="web-1", service_name="web", address_type="IPv4",
                       ports=(compile_kernel.Maker(EndpointPort)(name="", protocol="TCP", port=80),),
                       endpoints=(box,))
    assert gc.is_tracked(held)
    box["cycle"] = held  # held -> its endpoints tuple -> box -> held
    marker = Holder()
    box["marker"] = marker
    gone = weakref.ref(marker)
    del held, box, marker
    gc.collect()
    assert gone() is None  # the cycle was found and collected


def test_maker_refuses_a_class_without_slots() -> None:
    @dataclasses.dataclass(frozen=True)
    class Plain:
        x: int

    with pytest.raises(TypeError, match="not a slot"):
        compile_kernel.Maker(Plain)


def test_map_address_reads_any_ipv4_text_as_inet_aton() -> None:
    """Canonical dotted quads are parsed without inet_aton; any other text (leading zeros are
    octal to inet_aton, hex, fewer parts, spaces) must still read as inet_aton reads it."""
    rng = random.Random(7)
    parts = ["0", "00", "1", "9", "10", "99", "100", "255", "256", "010", "08", "1000", "", " 1", "1 ", "0x1f"]
    for _ in range(20000):
        text = ".".join(rng.choice(parts) for _ in range(rng.choice((1, 2, 3, 4, 4, 4, 5))))
        try:
            expected: int | None = int.from_bytes(socket.inet_aton(text), "big")
        except OSError:
            expected = None
        try:
            got: int | None = compile_kernel.map_address(text)
        except (OSError, ValueError):
            got = None
        assert got == expected, text


def expected_service_ports(services, skipped, service_ips) -> list[tuple]:
    """compiler._service_ports' rules, written out: (service, port, family, cluster IP, proto,
    name) per TCP/UDP/SCTP port and family of a cluster IP, sorted by (namespace, name, port
    name, protocol, family), ties in input order."""
    from fastpath.maps import PROTOCOL_NUMBERS, family_of

    found = []
    for service in services:
        if service.type == "ExternalName":
            skipped["ExternalName service"] += 1
            continue
        if service.headless:
            skipped["headless service"] += 1
            continue
        families: dict[int, int] = {}
        for text in service.cluster_ips:
            address = compile_kernel.map_address(text)
            families.setdefault(family_of(address), address)
            if service.ports:
                service_ips.add(address)
        if not families:
            continue
        for what, addresses in (("external IP", service.external_ips),
                                ("load-balancer IP", service.load_balancer_vips)):
            missed = sum(family_of(compile_kernel.map_address(a)) not in families for a in addresses)
            if missed:
                skipped[f"{what} of a family the service has no cluster IP of"] += missed
        for port in service.ports:
            if port.protocol not in PROTOCOL_NUMBERS:
                skipped[f"{port.protocol} service port"] += 1
                continue
            name = f"{service.namespace}/{service.name}" + (f":{port.name}" if port.name else "")
            for family in sorted(families):
                found.append(((service.namespace, service.name, port.name, port.protocol, family),
                              (service, port, family, families[family], PROTOCOL_NUMBERS[port.protocol], name)))
    found.sort(key=lambda pair: pair[0])
    return [entry for _, entry in found]


def random_services(rng: random.Random) -> list:
    from fastpath.model import LoadBalancerIngress, Service, ServicePort

    # Names where string order and (namespace, name) pair order could part ("a-b" < "a/..." <
    # "a0"), ports named alike under two protocols, the same service listed twice.
    words = ("a", "a-b", "a0", "b", "web", "")
    services = []
    for _ in range(rng.randrange(0, 40)):
        kind = rng.choice(("ClusterIP", "ClusterIP", "NodePort", "LoadBalancer", "ExternalName"))
        headless = kind != "ExternalName" and rng.random() < 0.1
        cluster_ips = () if headless else tuple(rng.sample(
            [f"10.96.{rng.randrange(256)}.{rng.randrange(256)}", f"fd00::{rng.randrange(1, 0xFFFF):x}"],
            rng.choice((0, 1, 1, 1, 2))))
        ports = tuple(ServicePort(rng.choice(words[:-1] + ("",)), rng.choice(("TCP", "UDP", "SCTP", "ICMP")),
                                  rng.randrange(1, 65536), 8080) for _ in range(rng.randrange(0, 4)))
        external = tuple(rng.choice(("192.0.2.7", "2001:db8::7")) for _ in range(rng.randrange(0, 3)))
        ingress = tuple(LoadBalancerIngress(rng.choice(("198.51.100.1", "2001:db8::9", None)), None,
                                            rng.choice((None, "VIP", "Proxy"))) for _ in range(rng.randrange(0, 3)))
        services.append(Service(rng.choice(words[:-1]), rng.choice(words[:-1]), kind, cluster_ips, headless,
                                ports, None, external_ips=external, load_balancer_ingress=ingress))
    if services and rng.random() < 0.3:  # listed again, other addresses: ties keep input order
        services.append(dataclasses.replace(rng.choice(services), cluster_ips=("10.96.9.9",), headless=False))
    if rng.random() < 0.3:  # as a dump lists them: in order already
        services.sort(key=lambda s: (s.namespace, s.name))
    return services


@pytest.mark.parametrize("seed", range(80))
def test_service_ports_follow_the_rules(seed: int) -> None:
    from collections import Counter

    from fastpath.compiler import _Port

    rng = random.Random(seed)
    services = random_services(rng)
    skipped, expected_skipped = Counter(), Counter()
    service_ips, expected_ips = set(), set()
    made = compile_kernel.service_ports(services, skipped, service_ips, _Port)
    assert all(type(entry) is _Port for entry in made)
    assert [tuple(entry) for entry in made] == expected_service_ports(services, expected_skipped, expected_ips)
    assert (skipped, service_ips) == (expected_skipped, expected_ips)
    assert compile_kernel.service_ports(services, Counter(), None, _Port) == made


class _Fresh:
    """A stand-in whose every string attribute is a new object at each read (as a property
    computing it would give): nothing it hands out is held by anything else."""

    def __init__(self, wrapped, **members) -> None:
        self.wrapped, self.members = wrapped, members

    def __getattr__(self, name: str):
        if name in self.members:
            return self.members[name]
        value = getattr(self.wrapped, name)
        return "".join(list(value)) if isinstance(value, str) else value


@pytest.mark.parametrize("seed", range(20))
def test_service_ports_sort_stand_ins_whose_keys_are_made_when_read(seed: int) -> None:
    from collections import Counter

    from fastpath.compiler import _Port

    rng = random.Random(seed)
    services = random_services(rng)
    rng.shuffle(services)
    fresh = [_Fresh(s, ports=tuple(_Fresh(p) for p in s.ports)) for s in services]
    made = compile_kernel.service_ports(services, Counter(), None, _Port)
    through_stand_ins = compile_kernel.service_ports(fresh, Counter(), None, _Port)
    assert [(e.service.wrapped, e.port.wrapped, *tuple(e)[2:]) for e in through_stand_ins] == [tuple(e) for e in made]


def test_service_ports_refuse_a_name_that_is_no_string() -> None:
    from collections import Counter

    from fastpath.compiler import _Port
    from fastpath.model import Service, ServicePort

    port = ServicePort("http", "TCP", 80, 8080)
    services = [Service("a", name, "ClusterIP", ("10.96.0.1",), False, (port,), None) for name in ("b", 7)]
    with pytest.raises(TypeError, match="must be strings, got int"):
        compile_kernel.service_ports(services, Counter(), None, _Port)


@pytest.mark.parametrize("seed", range(40))
def test_add_ports_gathers_each_port_as_its_own_call_would(seed: int) -> None:
    """add_ports: each port from its slices (add_slices) or, with none, from from_pods' candidates
    (add_candidates) or from nothing; the ports it returns are those that may need a note. The
    slices it fetches ahead (a list or a tuple of them, some longer than it fetches ahead) read
    the same as any others."""
    from collections import Counter

    from fastpath.compiler import _Port
    from fastpath.model import Service, ServicePort

    rng = random.Random(seed)
    node = rng.choice((None, "n1"))
    port = ServicePort("http", "TCP", 80, 8080)
    ports, slices, pod_candidates = [], {}, {}
    for index in range(rng.randrange(0, 12)):
        family = rng.choice((4, 6))
        service = Service("a", f"s{index}", "ClusterIP", ("10.96.0.1",), False, (port,), None,
                          internal_traffic_policy=rng.choice(("Cluster", "Local")),
                          external_traffic_policy=rng.choice(("Cluster", "Local")))
        ports.append(_Port(service, port, family, 0x0A600001, 6, f"a/s{index}:http"))
        source = rng.random()
        if source < 0.6:
            found = random_slices(rng, family, rng.choice((12, 12, 80)))
            slices[("a", f"s{index}", family)] = tuple(found) if rng.random() < 0.3 else found
        elif source < 0.8:  # no slice: its candidates come from Pods
            made = compile_kernel.candidates(port, family, random_slices(rng, family), node, Counter(), None, _Candidate)
            pod_candidates[index] = made
    asked = []

    def from_pods(entry):
        asked.append(entry)
        return pod_candidates.get(ports.index(entry))

    together = compile_kernel.Gatherer(node, None, Counter())
    remarkable = together.add_ports(ports, slices, from_pods)
    one_by_one = compile_kernel.Gatherer(node, None, Counter())
    expected = []
    for index, entry in enumerate(ports):
        key = ("a", entry.service.name, entry.family)
        if key in slices:
            summary = one_by_one.add_slices(port, entry.family, slices[key])
        elif index in pod_candidates:
            summary = one_by_one.add_candidates(pod_candidates[index])
        else:
            summary = one_by_one.add_slices(port, entry.family, ())
        cluster, ready, local = summary
        policy_local = "Local" in (entry.service.internal_traffic_policy, entry.service.external_traffic_policy)
        if not cluster or not ready or (not local and policy_local):
            expected.append((index, summary))
    assert remarkable == expected
    assert asked == [entry for entry in ports if ("a", entry.service.name, entry.family) not in slices]
    assert together.number(Backend) == one_by_one.number(Backend)


@pytest.mark.parametrize("seed", range(40))
def test_slices_group_by_service_and_family_in_name_order(seed: int) -> None:
    from collections import Counter

    from fastpath.model import EndpointSlice

    rng = random.Random(seed)
    slices = [EndpointSlice(rng.choice(("a", "b")), f"web-{rng.randrange(100):02d}",
                            rng.choice(("web", "db", None)), rng.choice(("IPv4", "IPv6", "IPv6", "FQDN")), (), ())
              for _ in range(rng.randrange(0, 30))]
    skipped, other = Counter(), set()
    grouped = compile_kernel.slices_by_service(slices, skipped, other)
    expected: dict = {}
    for endpoint_slice in slices:  # input order; each group then sorted by name (stable)
        if endpoint_slice.service_name is not None and endpoint_slice.address_type != "FQDN":
            key = (endpoint_slice.namespace, endpoint_slice.service_name, int(endpoint_slice.address_type[-1]))
            expected.setdefault(key, []).append(endpoint_slice)
    assert grouped == {key: sorted(group, key=lambda s: s.name) for key, group in expected.items()}
    assert other == {(s.namespace, s.service_name) for s in slices
                     if s.service_name is not None and s.address_type == "FQDN"}
    assert skipped == Counter({"EndpointSlice without a service-name label": sum(s.service_name is None for s in slices),
                               "FQDN EndpointSlice": sum(s.service_name is not None and s.address_type == "FQDN"
                                                         for s in slices)}) - Counter()


def expected_frontends(ports, info) -> tuple[list, list[str]]:
    """compiler._frontends' rules, written out: every claim made as a tuple, all of them sorted,
    the first of each (ip, port, proto) kept; the kept ones sorted into the frontends' order."""
    from fastpath.compiler import (_CLAIM_ORDER, _KIND_ORDER, _address, _endpoint_text, _external_policy_local,
                                   _source_ranges)
    from fastpath.maps import PROTOCOL_NAMES, Frontend, family_of

    claims = []
    for service_id, (service, port, family, cluster_ip, proto, _) in enumerate(ports, start=1):
        claims.append((_CLAIM_ORDER["ClusterIP"], service_id, cluster_ip, port.port, proto, "ClusterIP",
                       service.internal_traffic_policy == "Local", ()))
        vips = [ip for ip in map(_address, service.load_balancer_vips) if family_of(ip) == family]
        externals = [ip for ip in map(_address, service.external_ips) if family_of(ip) == family]
        ranges = _source_ranges(service, vips, info.primary(family), family)
        local = _external_policy_local(service)
        wanted = [("LoadBalancer", ip, port.port, ranges) for ip in vips]
        wanted += [("ExternalIP", ip, port.port, ()) for ip in externals]
        if port.node_port is not None:
            wanted += [("NodePort", ip, port.node_port, ()) for ip in info.node_port_ips[family]]
        claims += [(_CLAIM_ORDER[kind], service_id, ip, number, proto, kind, local, source)
                   for kind, ip, number, source in wanted]
    owners, kept, warnings = {}, [], []
    for claim in sorted(claims):
        _, service_id, ip, number, proto, kind, local, source = claim
        owner = owners.setdefault((ip, number, proto), claim)
        if owner is claim:
            kept.append((service_id, _KIND_ORDER[kind], ip, number, proto, kind, local, source))
        elif not (owner[1] == service_id and owner[5] == kind):
            warnings.append(f"{ports[service_id - 1].label}: {_endpoint_text(ip, number)}/{PROTOCOL_NAMES[proto]} "
                            f"({kind}) is already the {owner[5]} frontend of {ports[owner[1] - 1].label}; ignored")
    frontends = [Frontend(ip, number, proto, service_id, kind, local, source)
                 for service_id, _, ip, number, proto, kind, local, source in sorted(kept)]
    return frontends, warnings


def random_frontend_services(rng: random.Random) -> list:
    """Services whose addresses collide often: cluster IPs, external and load-balancer IPs and
    node ports drawn from small pools, some IPv6, some with Local policies and source ranges."""
    from fastpath.model import LoadBalancerIngress, Service, ServicePort

    cluster = ("10.96.0.1", "10.96.0.2", "10.96.0.3", "fd00::1", "fd00::2")
    outside = ("192.0.2.7", "10.96.0.2", "198.51.100.1", "2001:db8::7", "fd00::1")
    services = []
    for number in range(rng.randrange(0, 30)):
        kind = rng.choice(("ClusterIP", "NodePort", "LoadBalancer"))
        ports = tuple(ServicePort(f"p{index}", rng.choice(("TCP", "UDP")), rng.choice((53, 80, 443)), 8080,
                                  rng.choice((30080, 30443)) if kind != "ClusterIP" and rng.random() < 0.8 else None)
                      for index in range(rng.randrange(1, 4)))
        services.append(Service(
            "ns", f"s{number}", kind, tuple(rng.sample(cluster, rng.choice((1, 1, 2)))), False, ports, None,
            external_ips=tuple(rng.choices(outside, k=rng.choice((0, 0, 1, 2)))),  # perhaps one twice
            external_traffic_policy=rng.choice(("Cluster", "Local")),
            internal_traffic_policy=rng.choice(("Cluster", "Local")),
            load_balancer_ingress=tuple(LoadBalancerIngress(ip, None, None) for ip in rng.sample(
                outside, rng.choice((0, 1, 2)) if kind == "LoadBalancer" else 0)),
            load_balancer_source_ranges=rng.choice(((), ("203.0.113.0/24",), ("192.168.0.0/16", "0.0.0.0/0")))))
    return services


@pytest.mark.parametrize("seed", range(60))
def test_frontends_resolve_claims_as_written_out(seed: int) -> None:
    from collections import Counter

    from fastpath.compiler import _frontends, _NodeInfo, _Port
    from fastpath.maps import NodeView

    rng = random.Random(seed)
    ports = compile_kernel.service_ports(random_frontend_services(rng), Counter(), None, _Port)
    node_ips = rng.choice(((0xC0A80001,), (0xC0A80001, 0x0A600002), ()))
    info = _NodeInfo("n1", None, NodeView(primary_ip=0xC0A80001), {4: node_ips, 6: (IPV6 | 0xFD01 << 112 | 1,)})
    warnings: list[str] = []
    made = _frontends(ports, info, warnings)
    assert (made, warnings) == expected_frontends(ports, info)
    assert not any(map(gc.is_tracked, made))  # ints, strings and untracked tuples only


def test_frontend_kinds_put_cluster_ip_first() -> None:
    """The compiled frontends take each port's ClusterIP claim before any other claim, and its
    ClusterIP frontend before its others: both orders must put ClusterIP first."""
    from fastpath.compiler import _CLAIM_ORDER
    from fastpath.maps import FRONTEND_KINDS

    assert min(_CLAIM_ORDER, key=_CLAIM_ORDER.get) == "ClusterIP" == FRONTEND_KINDS[0]
    assert sorted(_CLAIM_ORDER.values()).count(_CLAIM_ORDER["ClusterIP"]) == 1


@pytest.mark.parametrize("seed", range(20))
def test_map_services_are_made_as_the_rows_say(seed: int) -> None:
    from collections import Counter

    from fastpath.compiler import _affinity_timeout, _Port
    from fastpath.maps import Service as MapService

    rng = random.Random(seed)
    services = [dataclasses.replace(service, session_affinity=affinity, affinity_timeout=timeout)
                for service, (affinity, timeout) in zip(
                    random_frontend_services(rng), iter(lambda: rng.choice((("None", None), ("ClientIP", None),
                                                                             ("ClientIP", 60))), None))]
    ports = compile_kernel.service_ports(services, Counter(), None, _Port)
    id_sets = [tuple(tuple(sorted(rng.sample(range(1, 50), rng.randrange(4)))) for _ in range(3)) for _ in ports]
    made = compile_kernel.map_services(ports, id_sets, _affinity_timeout)
    assert made == [MapService(number, entry.name, *sets, _affinity_timeout(entry.service), entry.family)
                    for number, (entry, sets) in enumerate(zip(ports, id_sets), start=1)]
    assert not any(map(gc.is_tracked, made))
    if made:  # the map class's own objects: frozen, hashed as the constructor's
        assert hash(made[0]) == hash(dataclasses.replace(made[0]))
        with pytest.raises(dataclasses.FrozenInstanceError):
            made[0].family = 6  # type: ignore[misc]
    with pytest.raises(ValueError, match="id sets"):
        compile_kernel.map_services(ports, id_sets + [((), (), ())], _affinity_timeout)


def test_map_services_leave_to_the_collector_only_what_can_cycle() -> None:
    """A Service holding only values the collector does not track can be in no cycle: it is not
    tracked either. One holding a container the collector tracks (a list) is."""
    from collections import Counter

    from fastpath.compiler import _affinity_timeout, _Port
    from fastpath.model import Service, ServicePort

    services = [Service("a", name, "ClusterIP", ("10.96.0.1",), False, (ServicePort("http", "TCP", 80, 8080),),
                        None) for name in ("leaf", "holder")]
    ports = compile_kernel.service_ports(services, Counter(), None, _Port)
    ids = tuple(range(1, 4))
    gc.collect()  # (a tuple of ints is untracked by the collection after it is made)
    holder, leaf = compile_kernel.map_services(ports, [([1], (), ()), (ids, (), ids)], _affinity_timeout)
    assert not gc.is_tracked(ids) and not gc.is_tracked(leaf)
    assert gc.is_tracked(holder)
    holder.backends.append(holder)  # the kind of cycle the collector must still see
    assert holder in gc.get_referrers(holder.backends)

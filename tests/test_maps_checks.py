"""fastpath.maps: Maps' bulk checks reject what the item-by-item checks reject, with their errors."""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest
from fastpath.maps import (
    IPV6,
    PROTO_TCP,
    PROTO_UDP,
    Backend,
    Frontend,
    Maps,
    NodeView,
    Service,
)

V6 = IPV6 | 0xFD00 << 112


def valid_maps() -> Maps:
    backends = [Backend(1, 0x0A000001, 8080, "10.0.0.1:8080 (a/p1)"), Backend(2, 0x0A000002, 8080, "10.0.0.2:8080 (a/p2)"),
                Backend(3, V6 | 1, 8080, "[fd00::1]:8080 (a/p1)"), Backend(4, V6 | 2, 53, "[fd00::2]:53 (a/p3)")]
    services = [Service(1, "a/web:http", (1, 2), (1,), (1, 2)),
                Service(2, "a/web:http", (3,), (), (3,), family=6),
                Service(3, "a/dns:dns", (4,), (4,), (4,), 10800, family=6),
                Service(4, "a/none", ())]
    frontends = [Frontend(0x0A600001, 80, PROTO_TCP, 1),
                 Frontend(0xC6336401, 80, PROTO_TCP, 1, "LoadBalancer", True, ((0xCB007100, 24),)),
                 Frontend(V6 | 0x10, 80, PROTO_TCP, 2),
                 Frontend(V6 | 0x53, 53, PROTO_UDP, 3, "ExternalIP"),
                 Frontend(0x0A600004, 9, PROTO_TCP, 4, "NodePort")]
    node = NodeView(primary_ip=0xC0A8000A, local_ips=(0xC0A8000A,), pod_cidrs=((0x0AF40000, 16),),
                    service_ips=(0x0A600001,), primary_ip6=V6 | 0xA)
    return Maps(services=services, frontends=frontends, backends=backends, node=node)


def unchecked(maps: Maps, **changes: Any) -> Maps:
    """A Maps with fields replaced, made without __post_init__ (to ask its checks directly)."""
    made = object.__new__(Maps)
    for name in ("services", "frontends", "backends", "node"):
        object.__setattr__(made, name, changes.get(name, getattr(maps, name)))
    return made


def item_error(maps: Maps) -> str | None:
    try:
        maps._check_items()
        maps._check_node()
    except (ValueError, TypeError, AttributeError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def bulk_valid(maps: Maps) -> bool:
    try:
        return maps._valid()
    except (TypeError, ValueError, IndexError, KeyError, AttributeError):
        return False


def construct_error(maps: Maps) -> str | None:
    try:
        Maps(services=maps.services, frontends=maps.frontends, backends=maps.backends, node=maps.node)
    except (ValueError, TypeError, AttributeError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def replaced(items: list[Any], index: int, **changes: Any) -> list[Any]:
    items = list(items)
    items[index] = dataclasses.replace(items[index], **changes)
    return items


Corruption = Callable[[Maps], dict[str, Any]]

CORRUPTIONS: dict[str, Corruption] = {
    "service id gap": lambda m: {"services": replaced(m.services, 1, id=5)},
    "service id as float": lambda m: {"services": replaced(m.services, 0, id=1.5)},
    "backend id gap": lambda m: {"backends": replaced(m.backends, 2, id=9)},
    "frontend of service 0": lambda m: {"frontends": replaced(m.frontends, 0, service=0)},
    "frontend of an unknown service": lambda m: {"frontends": replaced(m.frontends, 4, service=5)},
    "duplicate frontend": lambda m: {"frontends": [*m.frontends, m.frontends[0]]},
    "unknown kind": lambda m: {"frontends": replaced(m.frontends, 3, kind="HostPort")},
    "negative backend address": lambda m: {"backends": replaced(m.backends, 0, ip=-1)},
    "backend address between the families": lambda m: {"backends": replaced(m.backends, 1, ip=1 << 40)},
    "backend address above IPv6": lambda m: {"backends": replaced(m.backends, 3, ip=IPV6 << 1)},
    "IPv4-mapped backend": lambda m: {"backends": replaced(m.backends, 2, ip=IPV6 | 0xFFFF << 32 | 1)},
    "service family 5": lambda m: {"services": replaced(m.services, 3, family=5)},
    "unknown backend id": lambda m: {"services": replaced(m.services, 0, backends=(1, 7))},
    "backend id 0": lambda m: {"services": replaced(m.services, 0, local_backends=(0,))},
    "negative backend id": lambda m: {"services": replaced(m.services, 0, serving=(-1,))},
    "backend of the other family": lambda m: {"services": replaced(m.services, 1, serving=(3, 1))},
    "IPv4 service naming IPv6": lambda m: {"services": replaced(m.services, 0, local_backends=(3,))},
    "float backend id": lambda m: {"services": replaced(m.services, 0, backends=(1.0, 2))},
    "not a backend": lambda m: {"backends": [*m.backends[:-1], ("4", V6 | 2, 53, "x")]},
    "frontend of the other family": lambda m: {"frontends": replaced(m.frontends, 2, service=1)},
    "IPv4-mapped frontend": lambda m: {"frontends": replaced(m.frontends, 0, ip=IPV6 | 0xFFFF << 32 | 1)},
    "bad source range": lambda m: {"frontends": replaced(m.frontends, 1, source_ranges=((-5, 8),))},
    "IPv4-mapped source range": lambda m: {"frontends": replaced(m.frontends, 1,
                                                                 source_ranges=((IPV6 | 0xFFFF << 32, 120),))},
    "bad node address": lambda m: {"node": dataclasses.replace(m.node, local_ips=(-1,))},
    "IPv6 primary_ip": lambda m: {"node": dataclasses.replace(m.node, primary_ip=V6 | 1)},
}


def test_valid_maps_pass_both_ways() -> None:
    maps = valid_maps()
    assert bulk_valid(maps) and item_error(maps) is None


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_each_problem_is_refused_with_the_item_by_item_error(corruption: str) -> None:
    maps = valid_maps()
    bad = unchecked(maps, **CORRUPTIONS[corruption](maps))
    expected = item_error(bad)
    assert expected is not None, "the corruption must be one the item checks catch"
    assert construct_error(bad) == expected
    if corruption not in ("bad node address", "IPv6 primary_ip"):
        assert not bulk_valid(bad)


def test_random_corruptions_never_pass_the_bulk_checks_alone() -> None:
    """Two or three problems at once: the error is the first one the item checks name."""
    rng = random.Random(7)
    names = sorted(CORRUPTIONS)
    for _ in range(300):
        bad = valid_maps()
        for corruption in rng.sample(names, rng.randint(2, 3)):
            bad = unchecked(bad, **CORRUPTIONS[corruption](bad))
        expected = item_error(bad)
        if expected is None:
            continue
        assert not bulk_valid(bad) or "node" in expected
        assert construct_error(bad) == expected

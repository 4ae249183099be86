"""Typed stub of fastpath._compile (compiled from fastpath/compile.pyx): the model's and the
compiler's per-endpoint loops and its service ports."""
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

_T = TypeVar("_T")

MAPPED_IN_IPV6: str  # the `skipped` reason of an IPv4-mapped address in an IPv6 EndpointSlice

def map_address(text: str) -> int:
    """A model address (canonical text) as a map address; OSError (ValueError for an embedded
    NUL) for text that is no address."""

def plain_ipv4_endpoint(raw: Any) -> Any:
    """The model Endpoint of an IPv4 slice's raw endpoint written as the EndpointSlice controller
    writes it; None for any other (the model's full reader reads those)."""

def plain_ipv4_endpoints(raws: list[Any]) -> tuple[list[Any], int]:
    """plain_ipv4_endpoint of each raw endpoint in one call: (the list, None where one is not
    plain; how many are None)."""

def plain_ipv4_slice(obj: Any, namespace: str, name: str) -> Any:
    """The model EndpointSlice of a raw IPv4 slice written as the EndpointSlice controller writes
    it (plain ports, plain endpoints); None for any other (the model's full reader reads those)."""

def plain_service(obj: Any, namespace: str, name: str) -> Any:
    """The model Service of a raw Service written as most are (ClusterIP, NodePort or a
    LoadBalancer without ingress yet, one IPv4 cluster IP, plain ports); None for any other (the
    model's full reader reads those)."""

class PlainCollector:
    """model._Collector's compiled path: a plain Service or IPv4 EndpointSlice of the kind's
    current apiVersion with plain metadata, read and recorded in one call."""

    def __init__(self, first_seen: dict[tuple[str, str, str], str], objects: dict[str, list[Any]],
                 service_version: str, slice_version: str) -> None: ...
    def collect(self, obj: Any, source: str) -> bool:
        """True: `obj` was read and recorded as the collector's add() would; False: nothing
        changed, the collector reads it."""

class Maker:
    """Maker(cls)(**fields): cls(**fields) for a slotted dataclass, its slots filled directly."""

    def __init__(self, cls: type) -> None: ...
    def __call__(self, **values: Any) -> Any: ...

def checked_port(number: int) -> int:
    """A backend port in 0..65535 (ClusterError otherwise)."""

def candidates(port: Any, family: int, slices: Iterable[Any], node: str | None, skipped: Counter[str],
               memo: dict[Any, Any] | None, candidate_type: type[_T]) -> list[_T]:
    """compiler._candidates: a service port's endpoints from its slices, duplicates included."""

def port_sets(candidates: list[Any], node: str | None, zone: str | None, sets_type: type[_T]) -> _T:
    """A service port's (cluster, local, serving) candidate lists, as `sets_type`."""

def service_ports(services: Iterable[Any], skipped: Counter[str], service_ips: set[int] | None,
                  port_type: type[_T]) -> list[_T]:
    """compiler._service_ports: every TCP/UDP/SCTP service port of each family the service has a
    cluster IP of, as `port_type` named tuples in id order."""

def slices_by_service(slices: Iterable[Any], skipped: Counter[str],
                      other: set[tuple[str, str]]) -> dict[tuple[str, str, int], list[Any]]:
    """compiler._slices_by_service: IPv4 and IPv6 slices by (namespace, service, family),
    each group in name order; `other` gets the services other slices (FQDN) name."""

def map_services(ports: list[Any], id_sets: list[tuple[Any, Any, Any]],
                 affinity_timeout: Callable[[Any], int]) -> list[Any]:
    """The maps' Services of compiler._compile, in id order, from its ports and id sets."""

def frontends(ports: list[Any], external_claims: Callable[[int, Any], list[Any]],
              kept_order: Callable[[Any], Any]) -> tuple[list[Any], list[tuple[Any, Any]]]:
    """compiler._frontends' claims resolved: (the maps' Frontends, the refused (claim, owner)
    pairs, a ClusterIP claim given as its port's index)."""

class Gatherer:
    """Service ports' endpoints as compiled records, port after port (no Python object per
    endpoint but its name): each port's sets chosen as endpoint_sets chooses them, then the
    backends numbered over all ports."""

    def __init__(self, node: str | None, zone: str | None, skipped: Counter[str] | None) -> None: ...
    def add_slices(self, port: Any, family: int, slices: Iterable[Any]) -> tuple[int, bool, int]:
        """Add a service port from its EndpointSlices of the family: (endpoints in its cluster
        set, whether they are ready ones, endpoints in its local set)."""
    def add_candidates(self, candidates: list[Any]) -> tuple[int, bool, int]:
        """Add a service port from its candidate tuples; returns what add_slices returns."""
    def add_ports(self, ports: list[Any], slices: Mapping[tuple[str, str, int], Sequence[Any]],
                  from_pods: Callable[[Any], list[Any] | None]) -> list[tuple[int, tuple[int, bool, int]]]:
        """Add every service port (compiler._Port) from its slices, else from from_pods(port)'s
        candidates; (index, summary) of each port that may need a note."""
    def number(self, backend_type: type[_T]) -> tuple[list[_T], list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]]:
        """The backends, one per distinct (ip, port) in key order, and per port added its
        (cluster, local, serving) backend ids, sorted."""

def members_valid(services: list[Any], backends: list[Any], service_type: type, backend_type: type) -> bool:
    """Maps' bulk check of its backends and of the ids its services name (False: let the item
    checks decide)."""

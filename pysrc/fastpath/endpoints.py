"""One EndpointSlice change applied to compiled maps, without compiling the cluster again.

A controller that drives fastpath from a watch stream hands every ADDED or MODIFIED slice (the
decoded object) and every DELETED one (namespace and name) to the Dataplane, which passes them
here. `EndpointIndex` keeps what that needs from the state of the last full compile: every
EndpointSlice by service and family, the service ports with their map ids, and the backend ids
by address. A change re-derives the sets of the changed service's ports only, with the
compiler's own per-port code (compiler.endpoint_sets: every rule of the full compile), and
turns them into map Services that keep their ids; endpoints never seen before become new
backends with the next ids. The engine then swaps those sets in place (update_service).

A readiness change costs about what changed, not the whole slice: the parse keeps each slice's
recent versions (model.parse_endpoint_slice: unchanged endpoints are found by fingerprint, one
whose conditions alone changed reads only them), and endpoint_sets remembers the candidate each
of a slice's Endpoint objects made (its memo), so only the changed endpoint is made again.

The sets are exactly those a full compile of the changed state gives, in the same order (by
address and port, as the compiler numbers backends), so new flows select the same endpoints.
Only the ids of new backends and the names of backends differ from a fresh compile: ids are
never renumbered (conntrack, affinity and counters stay valid), and a backend keeps the name
it had when it was first seen.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import fields
from operator import itemgetter
from typing import Any, NamedTuple

from .compiler import (
    CandidateMemo,
    _backend_key,
    _PodIndex,
    _Port,
    _service_ports,
    backend_address,
    endpoint_sets,
)
from .maps import Backend, Maps
from .maps import Service as MapService
from .model import SLICE_FAMILIES, ClusterState, EndpointSlice, parse_endpoint_slice

__all__ = ["EndpointIndex", "SliceChange"]

_key = itemgetter(0)  # a compiler candidate's backend key

SliceKey = tuple[str, str]  # (namespace, name)


class SliceChange(NamedTuple):
    key: SliceKey
    old: EndpointSlice | None  # the slice replaced (None: it is new)
    new: EndpointSlice | None  # None: deleted
    services: list[MapService]  # map Services whose sets change, ids kept
    backends: list[Backend]  # endpoints never seen before, with the next backend ids


def _either(first: dict[int, int], second: dict[int, int]) -> Callable[[int], int]:
    """key -> first[key] if there is one, else second[key]."""
    return lambda key: first.get(key) or second[key]


_new_change = tuple.__new__  # SliceChange(...) without the named tuple's Python-level __new__
_new_service = object.__new__
_SERVICE_FIELDS = ("id", "name", "backends", "local_backends", "serving", "affinity_timeout_s", "family")
_SERVICE_SLOTS = tuple(MapService.__dict__[name].__set__ for name in _SERVICE_FIELDS)
if {f.name for f in fields(MapService)} != set(_SERVICE_FIELDS):  # (every slot must be filled)
    raise ImportError("fastpath.maps.Service has other fields than fastpath.endpoints fills")


class EndpointIndex:
    """The slices of a compiled cluster state, and where each service port's sets live in the maps."""

    def __init__(self, state: ClusterState, maps: Maps, node: str | None) -> None:
        self.node = node
        found = state.node(node) if node is not None else None
        self.zone = found.zone if found is not None else None
        # Service ports in the compiler's id order (the same function numbers them there).
        self.ports: defaultdict[tuple[str, str], list[tuple[int, _Port]]] = defaultdict(list)
        for service_id, entry in enumerate(_service_ports(state.services, Counter()), start=1):
            self.ports[entry.service.key].append((service_id, entry))
        self.slices: dict[SliceKey, EndpointSlice] = {}
        # (namespace, service, family) -> {slice name: slice}; and how many slices name each
        # service at all (a selector service with none gets its endpoints from Pods).
        self.groups: defaultdict[tuple[str, str, int], dict[str, EndpointSlice]] = defaultdict(dict)
        self.labelled: Counter[tuple[str, str]] = Counter()
        for endpoint_slice in state.endpoint_slices:
            self._add(endpoint_slice)
        # Per slice, what its recent versions parsed to, by raw fingerprint (model.parse_endpoint_slice).
        self.parsed: dict[SliceKey, dict[Hashable, Any]] = {}
        # The candidates each slice's Endpoints made (compiler.endpoint_sets), and what it counts
        # as skipped (nothing here reads that).
        self.candidates: CandidateMemo = {}
        self._skipped: Counter[str] = Counter()
        self._pods = state.pods
        self._pod_index: _PodIndex | None = None
        self.backend_ids: dict[int, int] = {}  # backend key (compiler._backend_key) -> id
        for backend in maps.backends:
            self.backend_ids.setdefault(_backend_key(backend.ip, backend.port), backend.id)

    def parse(self, obj: Any) -> EndpointSlice:
        """The EndpointSlice of a decoded object (ClusterError if it is none), reusing what an
        earlier version of the same slice parsed to for the endpoints that did not change."""
        metadata = obj.get("metadata") if type(obj) is dict or isinstance(obj, Mapping) else None
        guess = None  # (namespace, name) before the checks: only for finding the last version
        if type(metadata) is dict or isinstance(metadata, Mapping):
            guess = (metadata.get("namespace") or "default", metadata.get("name"))
        cache = self.parsed.get(guess)
        if cache is not None:  # (a slice that parses is known by its guess)
            return parse_endpoint_slice(obj, cache)
        cache = {}
        endpoint_slice = parse_endpoint_slice(obj, cache)
        self.parsed[(endpoint_slice.namespace, endpoint_slice.name)] = cache
        return endpoint_slice

    def change(self, key: SliceKey, new: EndpointSlice | None, maps: Maps) -> SliceChange:
        """Put `new` in the place of slice `key` (None: delete it) and work out what the maps
        need: the map Services whose sets changed (same ids) and the new backends they name (ids
        from len(maps.backends) + 1). Then either commit() or undo() it."""
        old = self.slices.get(key)
        if new is not None and new == old:  # a new version that changes nothing we read
            return _new_change(SliceChange, (key, old, new, [], []))
        names: Iterable[str]
        if (old is not None and new is not None and new.service_name == old.service_name
                and new.address_type == old.address_type):  # the usual case: a new version in place
            self._replace(new)
            names = () if new.service_name is None else (new.service_name,)
        else:
            if old is not None:
                self._remove(old)
            if new is not None:
                self._add(new)
            names = sorted({s.service_name for s in (old, new) if s is not None and s.service_name is not None})
        try:
            services, backends = self._changed_services(names, key[0], maps)
        except BaseException:
            self.undo(SliceChange(key, old, new, [], []))
            raise
        return _new_change(SliceChange, (key, old, new, services, backends))

    def commit(self, change: SliceChange) -> None:
        """The change reached the maps."""
        if change.new is None:
            self.parsed.pop(change.key, None)
            self.candidates.pop(change.key, None)
        if change.backends:
            self.keep_backends(change.backends)

    def keep_backends(self, backends: Iterable[Backend]) -> None:
        """These new backends are in the maps now, with their ids."""
        for backend in backends:
            self.backend_ids[_backend_key(backend.ip, backend.port)] = backend.id

    def undo(self, change: SliceChange) -> None:
        """Forget a change that did not reach the maps."""
        if change.new is not None:
            self._remove(change.new)
        if change.old is not None:
            self._add(change.old)

    # -- the index ---------------------------------------------------------------------------

    def _add(self, endpoint_slice: EndpointSlice) -> None:
        self.slices[(endpoint_slice.namespace, endpoint_slice.name)] = endpoint_slice
        if endpoint_slice.service_name is None:
            return
        self.labelled[(endpoint_slice.namespace, endpoint_slice.service_name)] += 1
        family = SLICE_FAMILIES.get(endpoint_slice.address_type)
        if family is not None:
            group = self.groups[(endpoint_slice.namespace, endpoint_slice.service_name, family)]
            group[endpoint_slice.name] = endpoint_slice

    def _replace(self, endpoint_slice: EndpointSlice) -> None:
        """_remove(the slice's last version) and _add(endpoint_slice), for a version with the
        same service name and address type."""
        self.slices[(endpoint_slice.namespace, endpoint_slice.name)] = endpoint_slice
        if endpoint_slice.service_name is None:
            return
        family = SLICE_FAMILIES.get(endpoint_slice.address_type)
        if family is not None:
            group = self.groups[(endpoint_slice.namespace, endpoint_slice.service_name, family)]
            group[endpoint_slice.name] = endpoint_slice

    def _remove(self, endpoint_slice: EndpointSlice) -> None:
        del self.slices[(endpoint_slice.namespace, endpoint_slice.name)]
        if endpoint_slice.service_name is None:
            return
        self.labelled[(endpoint_slice.namespace, endpoint_slice.service_name)] -= 1
        family = SLICE_FAMILIES.get(endpoint_slice.address_type)
        if family is not None:
            del self.groups[(endpoint_slice.namespace, endpoint_slice.service_name, family)][endpoint_slice.name]

    # -- the sets ----------------------------------------------------------------------------

    def _changed_services(self, service_names: Iterable[str], namespace: str,
                          maps: Maps) -> tuple[list[MapService], list[Backend]]:
        ids = self.backend_ids
        known = ids.__contains__
        # (service id, [keys of the cluster set, the local set, the serving set], the sets):
        # each set by backend key, sorted (the order a compile numbers backends in)
        pending: list[tuple[int, list[list[int]], Any]] = []
        unseen = False  # does some set name an endpoint never seen before?
        for service_name in service_names:
            service_key = (namespace, service_name)
            ports = self.ports.get(service_key)
            if not ports:
                continue
            from_pods = not self.labelled[service_key]
            selected = None
            for service_id, entry in ports:
                if from_pods and entry.service.selector is not None:
                    if selected is None:
                        selected = self._pod_index_built().selected(entry.service)
                    pods = selected
                else:
                    pods = None
                group = self.groups.get((namespace, service_name, entry.family))
                if not group:
                    slices = []
                elif len(group) == 1:
                    slices = list(group.values())
                else:  # by name, as the compiler orders them
                    slices = [group[name] for name in sorted(group)]
                sets = endpoint_sets(entry, slices, pods, self.node, self.zone, self._skipped,
                                     self.candidates)
                cluster = sorted(map(_key, sets.cluster))
                # Usually every endpoint is ready and serving: the sets are the same list.
                serving = cluster if sets.serving == sets.cluster else sorted(map(_key, sets.serving))
                local = sorted(map(_key, sets.local)) if sets.local else []
                if not unseen:
                    unseen = not (all(map(known, cluster)) and all(map(known, local))
                                  and (serving is cluster or all(map(known, serving))))
                pending.append((service_id, [cluster, local, serving], sets))

        new_backends: list[Backend] = []
        if unseen:
            # New endpoints get the next ids, in address order (as a compile would number them),
            # each named by its smallest name over the ports naming it.
            new_names: dict[int, str] = {}
            for _, _, sets in pending:
                for candidate in (*sets.cluster, *sets.local, *sets.serving):
                    key, name = candidate.key, candidate.name
                    if key not in ids and (key not in new_names or name < new_names[key]):
                        new_names[key] = name
            new_backends = [Backend(number, *backend_address(key), new_names[key])
                            for number, key in enumerate(sorted(new_names), start=len(maps.backends) + 1)]
            new_ids = {_backend_key(backend.ip, backend.port): backend.id for backend in new_backends}
            to_id = _either(new_ids, ids)
        else:
            to_id = ids.__getitem__

        changed: list[MapService] = []
        for service_id, (cluster, local, serving), _ in pending:
            current = maps.services[service_id - 1]
            backends = tuple(map(to_id, cluster))
            serving_ids = backends if serving is cluster else tuple(map(to_id, serving))
            local_ids = tuple(map(to_id, local))
            if (backends, local_ids, serving_ids) == (current.backends, current.local_backends, current.serving):
                continue  # (a port with a new endpoint never is)
            # MapService(id, name, backends, local_backends, serving, affinity_timeout_s, family)
            # with its slots filled directly (a frozen dataclass's __init__ costs more)
            service = _new_service(MapService)
            for set_field, value in zip(_SERVICE_SLOTS, (service_id, current.name, backends, local_ids, serving_ids,
                                                         current.affinity_timeout_s, current.family), strict=True):
                set_field(service, value)
            changed.append(service)
        return changed, new_backends

    def _pod_index_built(self) -> _PodIndex:
        if self._pod_index is None:
            self._pod_index = _PodIndex(self._pods)
        return self._pod_index

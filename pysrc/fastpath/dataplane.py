"""A Service dataplane for one node: cluster state compiled into the maps of a core.

`Dataplane` is what the CLI and library users drive: it compiles a ClusterState (or takes ready
Maps), owns one engine (the compiled core by default, or the pure-Python twin), and runs packets
or whole batches through it.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from fastpath.icmp import port_unreachable
from fastpath.maps import DEFAULT_CT_CAPACITY, Maps, service_label
from fastpath.verdicts import Reason, Verdict

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fastpath.capture import Batch
    from fastpath.endpoints import EndpointIndex, SliceChange
    from fastpath.model import ClusterState

CoreName = Literal["compiled", "reference"]


class PacketResult(NamedTuple):
    verdict: Verdict
    reason: Reason
    data: bytes  # the packet after any rewrite
    reply: bytes | None = None  # the port unreachable sent back for a REJECT (ICMPv6 for IPv6)


@dataclass(slots=True)
class BatchResult:
    verdicts: array  # array('B') of Verdict numbers, one per packet
    reasons: array  # array('B') of Reason numbers
    # packet index -> REJECT reply: an ICMP (IPv4) or ICMPv6 (IPv6) port unreachable
    replies: dict[int, bytes] = field(default_factory=dict)
    # Per-packet trace (with trace=True): service id, backend id, and flag bits (frontend kind
    # + 1 in bits 0-2, TRACE_MASQUERADED); ids index Dataplane.maps (0: none).
    services: array | None = None
    backends: array | None = None
    flags: array | None = None


def _engine_class(core: CoreName):
    if core == "reference":  # (imported only when asked: the twin is a large module)
        from fastpath.reference import ReferenceEngine

        return ReferenceEngine
    if core == "compiled":
        from fastpath._core import Engine

        return Engine
    raise ValueError(f"core must be 'compiled' or 'reference', got {core!r}")


class Dataplane:
    """One node's Service dataplane.

    >>> dp = Dataplane(fastpath.load_cluster(["cluster.yaml"]))
    >>> verdict, reason, rewritten = dp.process_packet(frame, ts_ns)
    """

    def __init__(
        self,
        cluster: ClusterState | Maps,
        *,
        node: str | None = None,
        ct_capacity: int = DEFAULT_CT_CAPACITY,
        new_flow_rate: int = 0,
        core: CoreName = "compiled",
    ) -> None:
        self.node = node
        self.core = core
        self.notes: tuple[str, ...] = ()
        self.timeouts_s: dict[str, float] = {}
        self._state: ClusterState | None = None  # what was compiled (None: given ready Maps)
        self._endpoints: EndpointIndex | None = None  # built on the first EndpointSlice change
        self.maps = self._compile(cluster)
        # new_flow_rate: at most this many new flows per second (packet time) may evict an
        # entry of a full conntrack table; 0 (default, as kube-proxy) means no such guard.
        self.engine = _engine_class(core)(
            self.maps, ct_capacity=ct_capacity, timeouts_s=self.timeouts_s or None,
            new_flow_rate=new_flow_rate,
        )

    def _compile(self, cluster: ClusterState | Maps) -> Maps:
        self._endpoints = None
        if isinstance(cluster, Maps):
            self._state = None
            return cluster
        from fastpath.compiler import compile_maps

        compiled = compile_maps(cluster, node=self.node)
        # The node actually compiled for: the one asked, or the dump's only Node.
        self.node = compiled.node or self.node
        self.notes = compiled.notes
        self.timeouts_s = dict(getattr(compiled, "timeouts_s", {}) or {})
        self._state = cluster
        return compiled.maps

    def update(self, cluster: ClusterState | Maps) -> None:
        """Apply new cluster state between batches: tracked TCP flows keep their backends
        (terminating ones drain), UDP flows to endpoints no longer serving select again with
        their next packet."""
        self.maps = self._compile(cluster)
        self.engine.load(self.maps)

    def apply_endpoint_slice(self, obj: Mapping[str, Any]) -> int:
        """Apply one EndpointSlice a watch reports ADDED or MODIFIED, between batches, without a
        full compile: `obj` is the decoded object as the API or `kubectl get -o json` gives it.

        Only the sets of its service's ports are derived again (by the compiler's own rules) and
        swapped in place; the next batch sees them. Ids never change, so conntrack, affinity and
        counters stay valid; tracked TCP flows keep their backend (terminating endpoints drain),
        a tracked UDP flow whose backend stopped serving selects again with its next packet.
        Returns how many map services (service ports, per family) changed. Raises ValueError
        (one line) for anything but a valid discovery.k8s.io/v1 EndpointSlice, or on a
        Dataplane built from Maps; nothing has changed then.
        """
        index = self._endpoint_index("apply_endpoint_slice")
        try:
            endpoint_slice = index.parse(obj)
        except Exception as error:
            from fastpath.model import ClusterError

            if not isinstance(error, ClusterError):
                raise
            raise ValueError(str(error)) from None
        return self._apply(index.change((endpoint_slice.namespace, endpoint_slice.name),
                                        endpoint_slice, self.maps))

    def delete_endpoint_slice(self, namespace: str, name: str) -> int:
        """Apply an EndpointSlice a watch reports DELETED, like apply_endpoint_slice. Raises
        ValueError when no EndpointSlice namespace/name is known."""
        index = self._endpoint_index("delete_endpoint_slice")
        key = (namespace, name)
        if key not in index.slices:
            raise ValueError(f"delete_endpoint_slice: no EndpointSlice {namespace}/{name} is known")
        return self._apply(index.change(key, None, self.maps))

    def _endpoint_index(self, what: str) -> EndpointIndex:
        if self._endpoints is None:
            if self._state is None:
                raise ValueError(f"{what} needs a Dataplane made from cluster state, not from Maps")
            from fastpath.endpoints import EndpointIndex

            self._endpoints = EndpointIndex(self._state, self.maps, self.node)
        return self._endpoints

    def _apply(self, change: SliceChange) -> int:
        assert self._endpoints is not None
        if not change.services:  # (then there are no new backends either)
            self._endpoints.commit(change)
            return 0
        applied = 0
        try:
            for service in change.services:
                self.engine.update_service(service, () if applied else change.backends)
                applied += 1
        except BaseException:
            # The slice is not taken (update_service changes nothing when it fails). If memory
            # ran out between two ports of its service, the maps keep what the engine took;
            # the other ports follow when the slice is applied again.
            self._endpoints.undo(change)
            if applied:
                self._endpoints.keep_backends(change.backends)
                self._to_maps(change.backends, change.services[:applied])
            raise
        self._endpoints.commit(change)
        self._to_maps(change.backends, change.services)
        return len(change.services)

    def _to_maps(self, backends: list, services: list) -> None:
        self.maps.backends.extend(backends)
        for service in services:
            self.maps.services[service.id - 1] = service

    def process(self, batch: Batch, linktype: int = 1, *, trace: bool = False) -> BatchResult:
        """Run a batch through the core; packets are rewritten in place in batch.buf.

        REJECTed packets stay as they were; their replies (ICMP port unreachable for IPv4,
        ICMPv6 port unreachable for IPv6) are in `result.replies`.
        """
        n = batch.count
        result = BatchResult(array("B", bytes(n)), array("B", bytes(n)))
        if trace:
            result.services, result.backends = array("I", bytes(4 * n)), array("I", bytes(4 * n))
            result.flags = array("B", bytes(n))
        self.engine.process(
            batch.buf, batch.offsets, batch.lengths, batch.timestamps_ns,
            result.verdicts, result.reasons, linktype,
            result.services, result.backends, result.flags,
        )
        verdicts = bytes(result.verdicts)
        index = verdicts.find(Verdict.REJECT)
        while index >= 0:
            reply = port_unreachable(batch.packet(index), linktype)
            if reply is not None:
                result.replies[index] = reply
            index = verdicts.find(Verdict.REJECT, index + 1)
        return result

    def process_packet(self, data: bytes, ts_ns: int = 0, linktype: int = 1) -> PacketResult:
        """One packet (from link-layer header on) in; its verdict, reason, rewritten bytes and,
        for a REJECT, the ICMP (ICMPv6) port unreachable out."""
        verdict, reason, rewritten = self.engine.process_packet(data, ts_ns, linktype)
        reply = port_unreachable(data, linktype) if verdict == Verdict.REJECT else None
        return PacketResult(verdict, reason, rewritten, reply)

    def counters(self) -> dict:
        """The engine's counters with services and backends keyed by name (the IPv6 half of a
        service port as "namespace/name:port (IPv6)", see fastpath.maps.service_label)."""
        raw = self.engine.counters()
        return {
            "verdicts": raw["verdicts"],
            "reasons": raw["reasons"],
            "services": {service_label(s): n for s, n in zip(self.maps.services, raw["services"])},
            "backends": {b.name: n for b, n in zip(self.maps.backends, raw["backends"])},
            "conntrack": raw["conntrack"],
            "affinity": raw.get("affinity", {}),
        }

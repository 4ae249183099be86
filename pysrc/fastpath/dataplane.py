"""A Service dataplane for one node: cluster state compiled into the maps of a core.

`Dataplane` is what the CLI and library users drive: it compiles a ClusterState (or takes ready
Maps), owns one engine (the compiled core by default, or the pure-Python twin), and runs packets
or whole batches through it.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from fastpath.maps import Maps
from fastpath.reference import DEFAULT_CT_CAPACITY, ReferenceEngine
from fastpath.verdicts import Reason, Verdict

if TYPE_CHECKING:
    from fastpath.capture import Batch
    from fastpath.model import ClusterState

CoreName = Literal["compiled", "reference"]


class PacketResult(NamedTuple):
    verdict: Verdict
    reason: Reason
    data: bytes  # the packet after any rewrite


@dataclass(slots=True)
class BatchResult:
    verdicts: array  # array('B') of Verdict numbers, one per packet
    reasons: array  # array('B') of Reason numbers


def _engine_class(core: CoreName):
    if core == "reference":
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
        core: CoreName = "compiled",
    ) -> None:
        self.node = node
        self.core = core
        self.maps = self._compile(cluster)
        self.engine = _engine_class(core)(self.maps, ct_capacity=ct_capacity)

    def _compile(self, cluster: ClusterState | Maps) -> Maps:
        if isinstance(cluster, Maps):
            return cluster
        from fastpath.compiler import compile_maps

        return compile_maps(cluster, node=self.node).maps

    def update(self, cluster: ClusterState | Maps) -> None:
        """Apply new cluster state between batches; tracked flows keep their backends."""
        self.maps = self._compile(cluster)
        self.engine.load(self.maps)

    def process(self, batch: Batch, linktype: int = 1) -> BatchResult:
        """Run a batch through the core; packets are rewritten in place in batch.buf."""
        result = BatchResult(array("B", bytes(batch.count)), array("B", bytes(batch.count)))
        self.engine.process(
            batch.buf, batch.offsets, batch.lengths, batch.timestamps_ns,
            result.verdicts, result.reasons, linktype,
        )
        return result

    def process_packet(self, data: bytes, ts_ns: int = 0, linktype: int = 1) -> PacketResult:
        """One packet (from link-layer header on) in, its verdict and rewritten bytes out."""
        return PacketResult(*self.engine.process_packet(data, ts_ns, linktype))

    def counters(self) -> dict:
        """The engine's counters with services and backends keyed by name."""
        raw = self.engine.counters()
        return {
            "verdicts": raw["verdicts"],
            "reasons": raw["reasons"],
            "services": {s.name: n for s, n in zip(self.maps.services, raw["services"])},
            "backends": {b.name: n for b, n in zip(self.maps.backends, raw["backends"])},
            "conntrack": raw["conntrack"],
        }

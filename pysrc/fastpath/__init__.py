"""fastpath: a Kubernetes Service dataplane with an XDP-style fast path compiled from Cython.

    import fastpath
    state = fastpath.load_cluster(["cluster-dump.yaml"])        # Services, EndpointSlices, ...
    dataplane = fastpath.Dataplane(state, node="node-1")
    stats = fastpath.replay("capture.pcap", "translated.pcap", dataplane)
    verdict, reason, rewritten = dataplane.process_packet(frame, ts_ns)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public names, imported on first use so `import fastpath` stays cheap (and never pulls scapy).
_EXPORTS = {
    "Batch": "fastpath.capture",
    "CaptureError": "fastpath.capture",
    "open_capture": "fastpath.capture",
    "open_output": "fastpath.capture",
    "compile_maps": "fastpath.compiler",
    "BatchResult": "fastpath.dataplane",
    "Dataplane": "fastpath.dataplane",
    "PacketResult": "fastpath.dataplane",
    "Backend": "fastpath.maps",
    "Frontend": "fastpath.maps",
    "Maps": "fastpath.maps",
    "Service": "fastpath.maps",
    "ClusterError": "fastpath.model",
    "ClusterState": "fastpath.model",
    "load_cluster": "fastpath.model",
    "ReplayStats": "fastpath.replaying",
    "replay": "fastpath.replaying",
    "Reason": "fastpath.verdicts",
    "Verdict": "fastpath.verdicts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastpath' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from fastpath.capture import Batch, CaptureError, open_capture, open_output
    from fastpath.compiler import compile_maps
    from fastpath.dataplane import BatchResult, Dataplane, PacketResult
    from fastpath.maps import Backend, Frontend, Maps, Service
    from fastpath.model import ClusterError, ClusterState, load_cluster
    from fastpath.replaying import ReplayStats, replay
    from fastpath.verdicts import Reason, Verdict

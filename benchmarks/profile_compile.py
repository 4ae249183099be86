"""Where a compile's time goes: compile_maps(state) step by step, in microseconds per service port.

    python benchmarks/profile_compile.py [--services 100000] [--rounds 3]

Builds bench_control's cluster (--services Services x 10 endpoints, one port each), then runs
fastpath.compiler.compile_maps(state) --rounds times with timers wrapped around its steps
(monkeypatched for this process only) and prints each round's steps, largest first:

  gather endpoints   Gatherer.add_ports: each port's endpoints read from the model into
                     records, its sets chosen (fastpath._compile)
  number backends    Gatherer.number: one Backend per (ip, port), every port's id tuples
  service ports      _service_ports: the ports of every Service, sorted (fastpath._compile)
  frontends          _frontends: ClusterIP, NodePort, external and load-balancer frontends
                     (fastpath._compile)
  group slices       _slices_by_service
  endpoint notes     _endpoint_notes (of the ports Gatherer.add_ports finds remarkable)
  map services       _map_services: the maps' Services (fastpath._compile)
  node               _node_info
  python rest        compile_maps minus all of the above: the result, freeing what the
                     compile made on the way

A small cluster (--services 2000: everything in cache) shows what the work itself costs; the
default one adds what a model of four million objects costs to walk. The collector is paused
by compile_maps itself, as in bench_control's test_compile_100k. The timers wrap calls made
once per compile, but _endpoint_notes': once per remarkable port.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYSRC = HERE.parent / "pysrc"
if any(PYSRC.glob("fastpath/_compile.*")):
    sys.path.insert(0, str(PYSRC))
sys.path.insert(0, str(HERE))

import workload  # noqa: E402
from steptimers import spent as _spent  # noqa: E402
from steptimers import timed as _timed  # noqa: E402

STEPS = {  # fastpath.compiler's function -> the step it is
    "_service_ports": "service ports",
    "_frontends": "frontends",
    "_slices_by_service": "group slices",
    "_endpoint_notes": "endpoint notes",
    "_map_services": "map services",
    "_node_info": "node",
}
GATHERER_STEPS = {"add_ports": "gather endpoints", "number": "number backends"}


def _instrument(compiler) -> None:
    for function, step in STEPS.items():
        setattr(compiler, function, _timed(step, getattr(compiler, function)))
    compiled = compiler._Gatherer

    class TimedGatherer:
        """The compiled Gatherer (a C type: its methods cannot be wrapped in place), its steps timed."""

        def __init__(self, *args):
            self._gatherer = compiled(*args)
            for method, step in GATHERER_STEPS.items():
                setattr(self, method, _timed(step, getattr(self._gatherer, method)))

    compiler._Gatherer = TimedGatherer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=100_000, help="Services x 10 endpoints (default 100,000)")
    parser.add_argument("--rounds", type=int, default=3, help="compiles timed (default 3)")
    args = parser.parse_args()
    if args.services < 1 or args.rounds < 1:
        parser.error("--services and --rounds must be at least 1")

    from fastpath import compiler
    from fastpath.model import ClusterState

    spec = workload.CLUSTER_SPECS["control"]
    spec = dataclasses.replace(spec, services=args.services, nodes=max(64, -(-args.services * 10 // 240)))
    print(f"building the cluster: {args.services:,} Services x 10 endpoints ...", file=sys.stderr)
    gc.disable()
    state = ClusterState.from_objects(workload.cluster_objects(spec, workload.plan_cluster(spec)))
    gc.enable()
    gc.collect()
    gc.freeze()  # the state: not traversed by the collections between rounds
    _instrument(compiler)
    for done in range(args.rounds):
        _spent.clear()
        started = time.perf_counter()
        result = compiler.compile_maps(state)
        total = time.perf_counter() - started
        ports = len(result.maps.services)
        del result
        gc.collect()
        steps = sorted(_spent.items(), key=lambda item: -item[1])
        steps.append(("python rest", total - sum(_spent.values())))
        print(f"round {done + 1}: {total:.3f} s, {ports / total:,.0f} service ports/s, {total / ports * 1e6:.1f} us a port")
        for step, seconds in steps:
            print(f"  {step:<17} {seconds:8.3f} s {seconds / ports * 1e6:7.2f} us/port")


if __name__ == "__main__":
    main()

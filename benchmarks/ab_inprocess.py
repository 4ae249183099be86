"""A/B of two or more builds of the core in one process, round by round.

    python benchmarks/ab_inprocess.py CASE [--rounds N] [--flows N,N] TREE [TREE...]

Each TREE is a checkout with the core built in place (`python setup.py build_ext --inplace`):
its pysrc/fastpath/_core*.so is loaded under a package name of its own, so every build's Engine
lives in this one process. Each round runs the case once per build, in turn, on a fresh engine
and a fresh copy of the batch, so a host whose speed drifts (this VM's moves 30 % from minute to
minute) slows every build alike; the per-round ratio against the first TREE is the figure to
trust, separate-process minima much less.

Cases (bench_scale.py's and bench_core.py's workloads):
  cold        the standard batch on a fresh engine (bench_core test_cold)
  tracked     tracked flows: for each of --flows (default 1000,1000000), that many flows opened
              untimed, then 1M packets of them (bench_scale test_tracked_flows)
  ports       10 and 1,000,000 service ports, 10,000 flows, 1M packets (test_service_ports);
              also prints each build's 10-port / 1M-port time ratio, round by round
  warm-ports  the same on engines that already track every flow (no selection left): what the
              table size costs a tracked packet
  new-flows   10 service ports, 1M SYNs of new flows (test_service_ports_new_flows[10])

Prints per case and build the minimum and median in ms, then against the first TREE the median
and quartiles of the per-round time ratios and the rounds each build won.
"""
from __future__ import annotations

import argparse
import gc
import glob
import importlib.util
import statistics
import sys
import time
import types
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "pysrc"), str(HERE)]
import workload  # noqa: E402

CASES = ("cold", "tracked", "ports", "warm-ports", "new-flows")


def load_engine(tree: str, number: int):
    found = sorted(glob.glob(str(Path(tree) / "pysrc" / "fastpath" / "_core.*.so")))
    if not found:
        raise SystemExit(f"ab_inprocess: no built core in {tree}/pysrc/fastpath (build it in place first)")
    package = f"fastpath_ab{number}"
    sys.modules[package] = types.ModuleType(package)
    sys.modules[package].__path__ = []
    spec = importlib.util.spec_from_file_location(f"{package}._core", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Engine


def run(engine, batch) -> float:
    n = batch.count
    verdicts, reasons = array("B", bytes(n)), array("B", bytes(n))
    buf = batch.fresh_buffer()
    gc.collect()
    start = time.perf_counter()
    engine.process(buf, batch.offsets, batch.lengths, batch.timestamps_ns, verdicts, reasons, batch.linktype)
    return time.perf_counter() - start


def plan(case: str, flows: list[int]) -> list[tuple[str, object, object, object, int | None]]:
    """(label, maps, batch, opening batch or None, conntrack capacity or None) per sub-case."""
    if case == "cold":
        return [("cold", workload.workload_maps("standard"), workload.workload_batch("standard"), None, None)]
    if case == "tracked":
        maps = workload.scale_maps(1_000)
        cases = []
        for count in flows:
            opening, batch = workload.tracked_traffic(maps, count, 1_000_000)
            cases.append((f"tracked {count:,}", maps, batch, opening, count + count // 4))
        return cases
    if case in ("ports", "warm-ports"):
        cases = []
        for ports in (10, 1_000_000):
            maps = workload.scale_maps(ports)
            cases.append((f"ports {ports:,}", maps, workload.service_traffic(maps, 10_000, 1_000_000), None, None))
        return cases
    maps = workload.scale_maps(10)
    return [("new flows", maps, workload.service_traffic(maps, 1_000_000, 1_000_000), None, 1_250_000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("trees", nargs="+", metavar="TREE", help="checkouts with the core built in place")
    parser.add_argument("--rounds", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--flows", default="1000,1000000", help="tracked: flow counts (default 1000,1000000)")
    args = parser.parse_args()
    try:
        flows = [int(text) for text in args.flows.split(",")]
    except ValueError:
        parser.error(f"--flows: {args.flows!r} is not a comma-separated list of integers")
    if args.rounds < 1 or any(count < 1 for count in flows):
        parser.error("--rounds and every --flows count must be at least 1")
    engines = [load_engine(tree, number) for number, tree in enumerate(args.trees)]
    names = [Path(tree).resolve().name or tree for tree in args.trees]
    cases = plan(args.case, flows)

    def fresh(engine_class, maps, opening, capacity):
        engine = engine_class(maps) if capacity is None else engine_class(maps, ct_capacity=capacity)
        if opening is not None:
            run(engine, opening)
        return engine

    warm = {}
    if args.case == "warm-ports":
        for label, maps, batch, opening, capacity in cases:
            for number, engine_class in enumerate(engines):
                warm[label, number] = fresh(engine_class, maps, opening, capacity)
                run(warm[label, number], batch)
    times: dict[tuple[str, int], list[float]] = {(c[0], k): [] for c in cases for k in range(len(engines))}
    for done in range(args.rounds):
        for label, maps, batch, opening, capacity in cases:
            for number, engine_class in enumerate(engines):
                engine = warm.get((label, number)) or fresh(engine_class, maps, opening, capacity)
                times[label, number].append(run(engine, batch))
                del engine
        if sys.stderr.isatty():
            print(f"round {done + 1}/{args.rounds}", file=sys.stderr, end="\r", flush=True)
    for label, *_ in cases:
        print(label)
        for number, name in enumerate(names):
            mine = times[label, number]
            line = f"  {name}: {min(mine) * 1e3:.1f} ms min, {statistics.median(mine) * 1e3:.1f} median"
            if number:
                ratios = sorted(b / a for a, b in zip(times[label, 0], mine))
                won = sum(ratio < 1 for ratio in ratios)
                line += (f"; / {names[0]} per round: median {statistics.median(ratios):.3f}, quartiles "
                         f"{ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f}, won {won} of {len(ratios)}")
            print(line)
    if args.case in ("ports", "warm-ports"):
        small, large = (label for label, *_ in cases)
        for number, name in enumerate(names):
            ratios = sorted(a / b for a, b in zip(times[small, number], times[large, number]))
            print(f"{name}: {small} / {large} time per round: median {statistics.median(ratios):.3f} "
                  f"(the O(1) target: at least 0.8)")


if __name__ == "__main__":
    main()

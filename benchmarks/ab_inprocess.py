"""A/B of two or more builds of the core in one process, round by round.

    python benchmarks/ab_inprocess.py CASE [--rounds N] [--flows N,N] [--services N] TREE [TREE...]

Each TREE is a checkout with the core built in place (`python setup.py build_ext --inplace`):
its pysrc/fastpath/_core*.so (for `compile`, its _compile*.so and compiler.py) is loaded under a
name of its own, so every build's Engine lives in this one process. Each round runs the case once per build, in turn, on a fresh engine
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
  compile     compile_maps of the --services Services x 10 endpoints cluster (default 100,000:
              bench_control's test_compile_100k_gc_paused), run by each TREE's own compiler.py
              and _compile build (over this tree's model and maps: the state is read once);
              the first round checks the builds' maps equal
  load        Engine.load of that cluster's maps (compiled once, by this tree) on an engine of
              each TREE already holding them (bench_control's test_engine_load_100k)

Prints per case and build the minimum and median in ms, then against the first TREE the median
and quartiles of the per-round time ratios and the rounds each build won.
"""
from __future__ import annotations

import argparse
import dataclasses
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

CASES = ("cold", "tracked", "ports", "warm-ports", "new-flows", "compile", "load")


def load_module(tree: str, number: int, name: str) -> types.ModuleType:
    """TREE's built fastpath.NAME (an extension module) as fastpath_abNUMBER.NAME."""
    found = sorted(glob.glob(str(Path(tree) / "pysrc" / "fastpath" / f"{name}.*.so")))
    if not found:
        raise SystemExit(f"ab_inprocess: no built {name} in {tree}/pysrc/fastpath (build it in place first)")
    package = f"fastpath_ab{number}"
    if package not in sys.modules:
        sys.modules[package] = types.ModuleType(package)
        sys.modules[package].__path__ = []
    spec = importlib.util.spec_from_file_location(f"{package}.{name}", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_engine(tree: str, number: int):
    return load_module(tree, number, "_core").Engine


def turn(done: int, count: int) -> list[int]:
    """The builds' order in round `done`: rotated each round, so that no build always runs in
    the same place. Position has mattered: with a million service ports the engine made second
    in a round ran 1.5x slower than the first, the same build both times, while the core's big
    tables came from malloc and faulted in lazily (fastpath/aligned.pxd says why); a build
    against itself still shows 1.10 either way."""
    return [(done + k) % count for k in range(count)]


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


def load_compiler(tree: str, number: int) -> types.ModuleType:
    """TREE's pysrc/fastpath/compiler.py as fastpath._ab_compilerNUMBER, bound to TREE's built
    _compile: its relative imports find this tree's model and maps, and TREE's _compile."""
    compiled = load_module(tree, number, "_compile")
    source = Path(tree) / "pysrc" / "fastpath" / "compiler.py"
    spec = importlib.util.spec_from_file_location(f"fastpath._ab_compiler{number}", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up while it runs)
    ours = sys.modules["fastpath._compile"]
    sys.modules["fastpath._compile"] = compiled  # what `from ._compile import ...` finds, while it runs
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules["fastpath._compile"] = ours
    return module


def control_state(services: int):
    """bench_control's cluster of `services` Services x 10 endpoints, read by this tree's model
    (frozen: not traversed by each round's collection)."""
    import fastpath._compile  # noqa: F401 (this tree's: the model's Makers, before the state is read)
    from fastpath.model import ClusterState
    spec = workload.CLUSTER_SPECS["control"]
    spec = dataclasses.replace(spec, services=services, nodes=max(64, -(-services * 10 // 240)))
    gc.disable()
    state = ClusterState.from_objects(workload.cluster_objects(spec, workload.plan_cluster(spec)))
    gc.enable()
    gc.collect()
    gc.freeze()
    return state


def compile_rounds(trees: list[str], services: int, rounds: int) -> list[list[float]]:
    """Seconds per round and build of compile_maps(state), the collector paused."""
    state = control_state(services)  # (first: the model binds this tree's _compile as it is imported)
    compilers = [load_compiler(tree, number) for number, tree in enumerate(trees)]
    times: list[list[float]] = [[] for _ in trees]
    for done in range(rounds):
        first = None
        for number in turn(done, len(compilers)):
            compiler = compilers[number]
            gc.collect()
            gc.disable()
            start = time.perf_counter()
            maps = compiler.compile_maps(state).maps
            times[number].append(time.perf_counter() - start)
            gc.enable()
            if done == 0:
                if first is None:
                    first = maps
                elif maps != first:
                    raise SystemExit(f"ab_inprocess: {trees[number]}'s maps differ from {trees[0]}'s")  # (round 0's first)
            del maps
        if sys.stderr.isatty():
            print(f"round {done + 1}/{rounds}", file=sys.stderr, end="\r", flush=True)
    return times


def load_rounds(trees: list[str], services: int, rounds: int) -> list[list[float]]:
    """Seconds per round and build of Engine.load(maps) on an engine holding those maps."""
    from fastpath.compiler import compile_maps
    maps = compile_maps(control_state(services)).maps
    engines = [load_engine(tree, number)(maps) for number, tree in enumerate(trees)]
    times: list[list[float]] = [[] for _ in trees]
    for done in range(rounds):
        for number in turn(done, len(engines)):
            engine = engines[number]
            gc.collect()
            start = time.perf_counter()
            engine.load(maps)
            times[number].append(time.perf_counter() - start)
        if sys.stderr.isatty():
            print(f"round {done + 1}/{rounds}", file=sys.stderr, end="\r", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("trees", nargs="+", metavar="TREE", help="checkouts with the core built in place")
    parser.add_argument("--rounds", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--flows", default="1000,1000000", help="tracked: flow counts (default 1000,1000000)")
    parser.add_argument("--services", type=int, default=100_000,
                        help="compile, load: Services x 10 endpoints in the cluster (default 100,000)")
    args = parser.parse_args()
    try:
        flows = [int(text) for text in args.flows.split(",")]
    except ValueError:
        parser.error(f"--flows: {args.flows!r} is not a comma-separated list of integers")
    if args.rounds < 1 or args.services < 1 or any(count < 1 for count in flows):
        parser.error("--rounds, --services and every --flows count must be at least 1")
    names = [Path(tree).resolve().name or tree for tree in args.trees]
    if args.case == "compile":
        compiled = compile_rounds(args.trees, args.services, args.rounds)
        report(f"compile, {args.services:,} Services", names, compiled, "s")
        return
    if args.case == "load":
        report(f"Engine.load, {args.services:,} Services", names, load_rounds(args.trees, args.services, args.rounds), "s")
        return
    engines = [load_engine(tree, number) for number, tree in enumerate(args.trees)]
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
            for number in turn(done, len(engines)):
                engine = warm.get((label, number)) or fresh(engines[number], maps, opening, capacity)
                times[label, number].append(run(engine, batch))
                del engine
        if sys.stderr.isatty():
            print(f"round {done + 1}/{args.rounds}", file=sys.stderr, end="\r", flush=True)
    for label, *_ in cases:
        report(label, names, [times[label, number] for number in range(len(engines))], "ms")
    if args.case in ("ports", "warm-ports"):
        small, large = (label for label, *_ in cases)
        for number, name in enumerate(names):
            ratios = sorted(a / b for a, b in zip(times[small, number], times[large, number]))
            print(f"{name}: {small} / {large} time per round: median {statistics.median(ratios):.3f} "
                  f"(the O(1) target: at least 0.8)")


def report(label: str, names: list[str], times: list[list[float]], unit: str) -> None:
    """Each build's minimum and median in `unit` ("ms" or "s"), and its per-round time ratios
    to the first build's."""
    scale, digits = (1e3, 1) if unit == "ms" else (1, 3)
    print(label)
    for number, name in enumerate(names):
        mine = times[number]
        line = f"  {name}: {min(mine) * scale:.{digits}f} {unit} min, {statistics.median(mine) * scale:.{digits}f} median"
        if number:
            ratios = sorted(b / a for a, b in zip(times[0], mine))
            won = sum(ratio < 1 for ratio in ratios)
            line += (f"; / {names[0]} per round: median {statistics.median(ratios):.3f}, quartiles "
                     f"{ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f}, won {won} of {len(ratios)}")
        print(line)


if __name__ == "__main__":
    main()

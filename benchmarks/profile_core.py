"""One Engine.process call over a workload batch, for profilers (callgrind, py-spy, perf).

    python benchmarks/profile_core.py [--mode cold|warm|small_ct] [--workload standard]

prints the call's wall time and the reasons. Under callgrind, count only that call (the batch
loading and the interpreter's start-up stay out) and annotate the generated C:

    valgrind --tool=callgrind --collect-atstart=no \\
        --toggle-collect='__pyx_pw_8fastpath_5_core_6Engine_*process' \\
        --callgrind-out-file=/tmp/core-cold.callgrind \\
        "$(python -c 'import sys; print(sys.executable)')" benchmarks/profile_core.py --mode cold
    python benchmarks/callgrind_lines.py /tmp/core-cold.callgrind --per 1000000

(the interpreter's real path: valgrind does not follow pyenv's shim script into it; the
`__pyx_pw_` wrapper because -O3 inlines the `__pyx_pf_` body into it.) --mode warm calls
process() twice, the first call being exactly the cold one: subtract a cold profile
(`callgrind_lines.py WARM --minus COLD`) for the warm call alone.

Build with debug information for line-level attribution (into a copy of the tree):
`CFLAGS=-g python setup.py build_ext --inplace --force`. Instructions per packet = the total
Ir / the batch's packet count (1,000,000 for the standard workload).
"""
from __future__ import annotations

import argparse
import sys
import time
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYSRC = HERE.parent / "pysrc"
if any(PYSRC.glob("fastpath/_core.*")):
    sys.path.insert(0, str(PYSRC))
sys.path.insert(0, str(HERE))

import workload  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="standard", choices=sorted(workload.WORKLOADS))
    parser.add_argument("--mode", default="cold", choices=("cold", "warm", "small_ct"))
    args = parser.parse_args(argv)
    from fastpath._core import Engine
    from fastpath.verdicts import Reason

    # The cached files as they are: ensure_workload() would re-check them by running 9,000
    # probes through Engine.process_packet (process() calls a profiler would count).
    directory = workload.WORKLOADS_DIR / args.workload
    if not (directory / workload.META_FILE).exists():
        workload.ensure_workload(args.workload)
    spec = workload.WORKLOADS[args.workload]
    maps = workload.workload_maps(args.workload)
    batch = workload.load_batch(directory / workload.CAPTURE_FILE, directory / workload.INDEX_FILE)
    n = batch.count
    capacity = max(1, spec.flows // 10) if args.mode == "small_ct" else None
    engine = Engine(maps) if capacity is None else Engine(maps, ct_capacity=capacity)
    verdicts, reasons = array("B", bytes(n)), array("B", bytes(n))
    if args.mode == "warm":
        engine.process(batch.fresh_buffer(), batch.offsets, batch.lengths, batch.timestamps_ns,
                       verdicts, reasons, batch.linktype)
    buf = batch.fresh_buffer()
    started = time.perf_counter()
    engine.process(buf, batch.offsets, batch.lengths, batch.timestamps_ns, verdicts, reasons,
                   batch.linktype)
    elapsed = time.perf_counter() - started
    raw = bytes(reasons)
    counts = {r.name: raw.count(r) for r in Reason if raw.count(r)}
    print(f"{args.mode}: {n} packets in {elapsed * 1e3:.1f} ms ({elapsed * 1e9 / n:.1f} ns/packet) "
          f"{counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

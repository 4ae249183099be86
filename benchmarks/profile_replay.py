"""Where a file-to-file replay's time goes: reading, the core, writing, and Python around them.

    python benchmarks/profile_replay.py [CAPTURE] [--output OUT] [--workload standard] [--rounds 3]
                                        [--threads]

Runs fastpath.replay(CAPTURE, OUT, Dataplane(workload maps), threads=False) with timers wrapped
around its parts (monkeypatched for this process only), best of --rounds. With --threads the
replay runs on its workers (the default of fastpath.replay): the parts then overlap, so they
add up to more than the total and "python rest" is left out; each part is still the time spent
in it, summed over the workers.

  read: syscalls     the file reads (capture._readinto_full)
  read: buffers      the rest of _PcapReader._refill: taking one of the two reused 2 MiB read
                     buffers (a fresh one only while a caller still holds the other) and the
                     carried tail
  read: scan         fastpath._pcap.scan_records (the record index of each batch)
  core               Engine.process (the compiled loop, GIL released)
  dataplane wrapper  Dataplane.process minus the core: result arrays, the REJECT scan
  write: check       CaptureWriter.verbatim_records: whether a batch goes out as it lies in
                     the read buffer (run in the core stage by replay, in write_batch otherwise)
  write: build       fastpath._pcap.build_records (output records into one buffer)
  write: syscalls    the buffered file's write() calls, and commit (flush, fsync, rename)
  python rest        replay() minus all of the above: the loop, per-batch stats (from the
                     core's verdict counters), progress

CAPTURE defaults to the workload's capture copied to /dev/shm (OUT there too), as in
bench_replay.py; the copy is removed at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYSRC = HERE.parent / "pysrc"
if any(PYSRC.glob("fastpath/_core.*")):
    sys.path.insert(0, str(PYSRC))
sys.path.insert(0, str(HERE))

import workload  # noqa: E402
from steptimers import spent as _spent  # noqa: E402
from steptimers import timed as _timed  # noqa: E402



class _TimedEngine:
    def __init__(self, engine):
        self._engine = engine

    def process(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self._engine.process(*args, **kwargs)
        finally:
            _spent["core"] += time.perf_counter() - started

    def __getattr__(self, name):
        return getattr(self._engine, name)


class _TimedFile:
    """Wraps the writer's buffered file: its write() calls are the output syscalls (buffered)."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        started = time.perf_counter()
        try:
            return self._file.write(data)
        finally:
            _spent["write: syscalls"] += time.perf_counter() - started

    def __getattr__(self, name):
        return getattr(self._file, name)


def profile(capture: Path, output: Path | None, maps, rounds: int,
            threads: bool = False) -> list[tuple[str, float]]:
    import importlib

    from fastpath import _pcap
    from fastpath.dataplane import Dataplane

    # Modules, not the same-named functions fastpath/__init__.py exports.
    capture_module = importlib.import_module("fastpath.capture")
    dataplane_module = importlib.import_module("fastpath.dataplane")
    replay_module = importlib.import_module("fastpath.replaying")

    patches = [
        (capture_module, "_readinto_full", _timed("read: syscalls", capture_module._readinto_full)),
        (capture_module._PcapReader, "_refill",
         _timed("read: refill", capture_module._PcapReader._refill)),
        (_pcap, "scan_records", _timed("read: scan", _pcap.scan_records)),
        (_pcap, "build_records", _timed("write: build", _pcap.build_records)),
        (capture_module.CaptureWriter, "verbatim_records",
         _timed("write: check", capture_module.CaptureWriter.verbatim_records)),
        (dataplane_module.Dataplane, "process",
         _timed("dataplane (with core)", dataplane_module.Dataplane.process)),
        (capture_module.CaptureWriter, "commit",
         _timed("write: syscalls", capture_module.CaptureWriter.commit)),
    ]
    original_init = capture_module.CaptureWriter.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if self._file is not None and self._ng is None:
            self._file = _TimedFile(self._file)

    patches.append((capture_module.CaptureWriter, "__init__", init))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    best: dict[str, float] = {}
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        for _ in range(rounds):
            _spent.clear()
            dataplane = Dataplane(maps)
            dataplane.engine = _TimedEngine(dataplane.engine)
            if output is not None and output.exists():
                output.unlink()
            started = time.perf_counter()
            replay_module.replay(capture, output, dataplane, threads=threads)
            total = time.perf_counter() - started
            parts = dict(_spent)
            parts["dataplane wrapper"] = parts.pop("dataplane (with core)") - parts["core"]
            parts["read: buffers"] = parts.pop("read: refill", 0.0) - parts.get("read: syscalls", 0.0)
            if not threads:
                parts["python rest"] = total - sum(parts.values())
            parts["total"] = total
            if not best or total < best["total"]:
                best = parts
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
    order = ["read: syscalls", "read: buffers", "read: scan", "core", "dataplane wrapper",
             "write: check", "write: build", "write: syscalls", "python rest", "total"]
    return [(name, best[name]) for name in order if name in best]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture", nargs="?")
    parser.add_argument("--output")
    parser.add_argument("--no-output", action="store_true")
    parser.add_argument("--workload", default="standard", choices=sorted(workload.WORKLOADS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", action="store_true",
                        help="replay on its workers (parts overlap) instead of one thread")
    args = parser.parse_args(argv)
    files = workload.ensure_workload(args.workload)
    maps = workload.workload_maps(args.workload)
    scratch = None
    if args.capture:
        capture = Path(args.capture)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="fastpath-profile-",
                                        dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        capture = scratch / "capture.pcap"
        shutil.copyfile(files.capture, capture)
    output = None if args.no_output else Path(args.output) if args.output else \
        (scratch or Path(tempfile.gettempdir())) / "replayed.pcap"
    try:
        rows = profile(capture, output, maps, args.rounds, args.threads)
    finally:
        if output is not None and output.exists():
            output.unlink()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    total = rows[-1][1]
    size = capture.stat().st_size if capture.exists() else files.meta["capture"]["bytes"]
    packets = files.meta["capture"]["packets"] if not args.capture else None
    how = "on its workers, parts overlapping" if args.threads else "one thread"
    print(f"replay {capture} -> {output} ({how}; best of {args.rounds}):")
    for name, seconds in rows:
        extra = f"  {seconds * 1e9 / packets:7.1f} ns/packet" if packets else ""
        print(f"  {name:<18} {seconds * 1e3:8.1f} ms  {100 * seconds / total:5.1f} %{extra}")
    if not args.capture:
        print(f"  ({size / 1e6:.0f} MB, {packets:,} packets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memory: bytes per conntrack entry, and the peak RSS of a streaming replay as the capture grows.

  conntrack_bytes_per_entry   `python benchmarks/memprobe.py conntrack 1048576` in a fresh
                              interpreter: an Engine with ct_capacity 2**20 filled with 2**20
                              distinct flows; what the conntrack table's own mapping holds
                              resident, divided by the capacity (`bytes_per_entry`: the whole
                              table is preallocated, the hash index inside its entries), and
                              what filling it adds to the process (`fill_bytes_per_entry`:
                              nothing left to fault in). Also the process's RSS growth (VmRSS)
                              on creating the engine, less a small engine's maps
                              (`growth_less_maps_bytes_per_entry`, the figure reported until
                              2026-11-30: it reads 0.4-0.6 low, the big engine's maps reusing
                              the small one's freed pages).
                              `struct` is sizeof(CtEntry) as the C ABI lays out the fields of
                              fastpath/conntrack.pxd (ctypes). Timed: the whole probe (fill batch
                              generation included), for the record only.
  replay_peak_rss[copies]     `python -m fastpath replay CAPTURE --cluster cluster.yaml -o OUT`
                              in a subprocess on disk (not tmpfs): the standard capture
                              (copies=1, 269 MB) and a generated one of N copies of its records
                              with shifted timestamps (copies=N, default 15: 4.0 GB;
                              --large-repeats N). `peak_rss_bytes` is the child's ru_maxrss
                              (os.wait4), `capture_bytes` the input's size; the large case adds
                              `rss_growth_bytes` over the 1-copy case and `rss_growth_mb_per_gb`.
                              The command runs under `memprobe.py run` (a small launcher) because
                              a child forked from pytest would inherit pytest's RSS high-water
                              mark in its ru_maxrss (RUSAGE_CHILDREN has the same flaw).

The large capture is cached in benchmarks/workloads/standard-xN/ (git-ignored); it is generated
only when the disk has room for it and the replay's output (2 x its size + 2 GB), otherwise the
case is skipped with the reason. Its output is deleted after each round.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import workload
from conftest import HERE, _say, fastpath_env

pytest.importorskip("fastpath._core", reason="build the core first")

pytestmark = pytest.mark.benchmark(group="memory")
CT_CAPACITY = 1 << 20
_peaks: dict[int, int] = {}


def test_conntrack_bytes_per_entry(benchmark, rounds):
    command = [sys.executable, str(HERE / "memprobe.py"), "conntrack", str(CT_CAPACITY)]
    results = []

    def probe():
        done = subprocess.run(command, env=fastpath_env(), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {done.returncode}: {done.stderr}")
        results.append(json.loads(done.stdout))

    benchmark.pedantic(probe, rounds=rounds(1), iterations=1)
    best = min(results, key=lambda r: r["bytes_per_entry"])
    assert best["entries"] == CT_CAPACITY  # the table was really filled
    benchmark.extra_info.update(best)
    benchmark.extra_info["target_bytes_per_entry"] = 64
    benchmark.extra_info["command"] = " ".join(command)
    if (HERE.parent / "fastpath" / "conntrack.pxd").exists():
        import memprobe

        benchmark.extra_info["struct"] = memprobe.struct_size()


def _replay(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run command through memprobe's launcher; (wall seconds, the command's peak RSS in bytes)."""
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch, "rusage.json")
        launcher = [sys.executable, str(HERE / "memprobe.py"), "run", str(result), "--", *command]
        done = subprocess.run(launcher, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
        usage = json.loads(result.read_text())
    return usage["wall_s"], usage["maxrss_bytes"]


def _large_capture(request, workload_files, repeats: int) -> Path:
    size = 24 + repeats * (workload_files.meta["capture"]["bytes"] - 24)
    directory = workload.WORKLOADS_DIR / f"{workload_files.spec.name}-x{repeats}"
    cached = directory / workload.CAPTURE_FILE
    existing = cached.stat().st_size if cached.exists() else 0
    directory.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory.parent).free + existing
    if free < 2 * size + (2 << 30):
        pytest.skip(f"{size / 1e9:.1f} GB capture + its output need {(2 * size) / 1e9 + 2:.1f} GB "
                    f"free on {directory.parent}, {free / 1e9:.1f} GB are (try --large-repeats)")
    return workload.ensure_large_capture(workload_files, repeats, directory,
                                         log=lambda message: _say(request, message))


@pytest.fixture(scope="session")
def large_repeats(request) -> int:
    return request.config.getoption("--large-repeats")


@pytest.mark.parametrize("copies", ["1", "large"])
def test_replay_peak_rss(benchmark, request, workload_files, large_repeats, rounds, copies):
    repeats = 1 if copies == "1" else large_repeats
    if repeats == 1:
        capture = workload_files.capture
    else:
        capture = _large_capture(request, workload_files, repeats)
    out_dir = Path(tempfile.mkdtemp(prefix="replay-rss-", dir=workload.WORKLOADS_DIR))
    output = out_dir / "replayed.pcap"
    command = [sys.executable, "-m", "fastpath", "replay", str(capture), "--cluster",
               str(workload_files.cluster), "-o", str(output), "-q", "--progress", "never"]
    env = fastpath_env()
    runs: list[tuple[float, int]] = []

    def run():
        runs.append(_replay(command, env))
        assert output.stat().st_size == capture.stat().st_size  # every packet written
        output.unlink()

    try:
        benchmark.pedantic(run, rounds=rounds(3 if repeats == 1 else 1), iterations=1)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    peak = max(rss for _, rss in runs)
    size = capture.stat().st_size
    _peaks[repeats] = peak
    info = benchmark.extra_info
    info.update(copies=repeats, capture=str(capture), capture_bytes=size, peak_rss_bytes=peak,
                peak_rss_mb=round(peak / 2**20, 1), command=" ".join(command),
                best_wall_s=round(min(s for s, _ in runs), 3),
                MB_per_s_best=round(size / min(s for s, _ in runs) / 1e6, 1),
                filesystem="disk (benchmarks/workloads), not tmpfs")
    if repeats > 1 and 1 in _peaks:
        growth = peak - _peaks[1]
        one = workload_files.meta["capture"]["bytes"]
        info["rss_growth_bytes"] = growth
        info["rss_growth_mb_per_gb"] = round(growth / 2**20 / ((size - one) / 1e9), 2)
        info["target"] = "10 GB capture in < 500 MB RSS; no growth with the capture"

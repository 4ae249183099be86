"""Fixtures shared by the benchmark suites: the named workload, its maps and batch, a tmpfs folder.

Options (besides pytest-benchmark's own):
  --workload NAME    standard (default: 1,000 Services, 1M packets) or small (a tenth of it)
  --bench-rounds N   timed rounds per case (default: each case's own, 5 to 10)
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

HERE = Path(__file__).resolve().parent
PYSRC = HERE.parent / "pysrc"

# Benchmark the source tree when it holds an in-place build (`python setup.py build_ext
# --inplace`); otherwise whatever `import fastpath` finds (an installed wheel).
if any(PYSRC.glob("fastpath/_core.*")) and str(PYSRC) not in sys.path:
    sys.path.insert(0, str(PYSRC))
sys.path.insert(0, str(HERE))

import workload  # noqa: E402  (needs the path set up above)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastpath benchmarks")
    group.addoption("--workload", default="standard", choices=sorted(workload.WORKLOADS),
                    help="named workload to run (default: standard)")
    group.addoption("--bench-rounds", type=int, default=None, metavar="N",
                    help="timed rounds per case (default: each case's own)")
    group.addoption("--large-repeats", type=int, default=15, metavar="N",
                    help="bench_memory: copies of the workload's capture in the large capture "
                    "replayed for peak RSS (default 15: 4.0 GB for the standard workload)")
    group.addoption("--control-services", type=int, default=100_000, metavar="N",
                    help="bench_control: Services (x 10 endpoints) of the big cluster compiled "
                    "(default 100,000)")
    group.addoption("--tcprewrite-full-map", action="store_true",
                    help="bench_tools: also time tcprewrite with one /32 rule per Service "
                    "(~2 min a round on the standard capture)")


def pytest_report_header(config: pytest.Config) -> list[str]:
    import fastpath

    spec = workload.WORKLOADS[config.getoption("--workload")]
    return [
        f"fastpath {fastpath.__version__} from {Path(fastpath.__file__).parent}",
        (f"workload {spec.name}: {spec.services} services x {spec.endpoints_per_service} endpoints, "
         f"{spec.flows:,} flows, {spec.packets:,} packets; {os.cpu_count()} CPUs, "
         f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"),
    ]


def _say(request: pytest.FixtureRequest, message: str) -> None:
    """A line on the terminal even while pytest captures output (generation takes a while)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        if reporter is not None:
            reporter.write_line(message)
        else:
            print(message, file=sys.stderr)


@pytest.fixture(scope="session")
def rounds(request: pytest.FixtureRequest):
    """rounds(default) -> the number of timed rounds for a case."""
    chosen = request.config.getoption("--bench-rounds")
    return lambda default: chosen if chosen else default


@pytest.fixture(scope="session")
def workload_files(request: pytest.FixtureRequest) -> workload.WorkloadFiles:
    name = request.config.getoption("--workload")
    return workload.ensure_workload(name, log=lambda message: _say(request, message))


@pytest.fixture(scope="session")
def maps(workload_files: workload.WorkloadFiles):
    """The workload's fastpath.maps.Maps, built directly (no YAML compiler involved)."""
    return workload.cluster_maps(workload.plan_cluster(workload_files.spec))


@pytest.fixture(scope="session")
def batch(workload_files: workload.WorkloadFiles) -> workload.MemoryBatch:
    """The whole capture in memory; never handed to the core itself (use batch.fresh_buffer())."""
    return workload.load_batch(workload_files.capture, workload_files.index)


@pytest.fixture(scope="session")
def tmpfs_dir():
    """A private folder on tmpfs (/dev/shm) when there is one, else in the temp folder."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="fastpath-bench-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tmpfs_capture(workload_files: workload.WorkloadFiles, tmpfs_dir: Path) -> Path:
    """The workload's capture copied to tmpfs, so the replay cases do not measure the disk."""
    target = tmpfs_dir / "capture.pcap"
    shutil.copyfile(workload_files.capture, target)
    return target


@pytest.fixture(scope="session")
def tmpfs_cluster(workload_files: workload.WorkloadFiles, tmpfs_dir: Path) -> Path:
    target = tmpfs_dir / "cluster.yaml"
    shutil.copyfile(workload_files.cluster, target)
    return target


def fastpath_env(folder: Path | None = None, cache: Path | None = None) -> dict[str, str]:
    """The environment of a child running fastpath: the same fastpath as this process; with a
    `folder`, run as an installed one is, from bytecode (pip compiles it at install; the first,
    warm-up round writes it under `folder`, so the tree stays clean, even where
    PYTHONDONTWRITEBYTECODE is set); dump caches in `cache` when given."""
    import fastpath

    env = dict(os.environ)
    package_parent = str(Path(fastpath.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    if folder is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    if cache is not None:
        env["FASTPATH_CACHE_DIR"] = str(cache)
    return env


def apt_install(packages: list[str], installed: Callable[[], bool]) -> str:
    """Try to install Debian `packages` with apt-get (as root only, and not when
    FASTPATH_BENCH_NO_APT is set); '' once `installed()` holds, else why not, for a skip."""
    if os.environ.get("FASTPATH_BENCH_NO_APT"):
        return "FASTPATH_BENCH_NO_APT is set"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root, or no apt-get"
    wanted = " ".join(packages)
    done = None
    for command in (["apt-get", "install", "-y", "-q", *packages],
                    ["sh", "-c", f"apt-get update -q && apt-get install -y -q {wanted}"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                                  env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{' '.join(command)}: {error}"
        if done.returncode == 0 and installed():
            return ""
    return f"apt-get install -y {wanted} failed: {done.stderr.strip().splitlines()[-1:]}"


def time_cat(capture: Path, target: Path, repeats: int = 5) -> float:
    """Best wall time of `cat CAPTURE > TARGET` (the floor for a file-to-file pass)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(f"cat '{capture}' > '{target}'", shell=True, check=True)
        best = min(best, time.perf_counter() - started)
        target.unlink()
    return best


@pytest.fixture(scope="session")
def cat_seconds(tmpfs_capture: Path, tmpfs_dir: Path) -> float:
    return time_cat(tmpfs_capture, tmpfs_dir / "cat.out")


def record_paired(benchmark, name: str, reference_s: list[float], reference: str) -> None:
    """Per-round ratios into extra_info: reference_s holds a reference run's seconds, timed in
    the setup of each round (the warm-up's included), and `name` gets the median of reference
    over the round's own time (name_min and name_max beside it): two runs a second apart, which
    the host's drift over a session cannot move as it moves medians taken minutes apart. The
    reference's own median goes in as `{reference}_s_median`."""
    benchmark.extra_info[f"{reference}_s_median"] = round(statistics.median(reference_s), 4)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None:
        return
    timed_s = list(stats.data)  # the timed rounds, in order (the warm-up's pair dropped below)
    ratios = sorted(ref / own for ref, own in zip(reference_s[-len(timed_s):], timed_s))
    benchmark.extra_info.update({name: round(statistics.median(ratios), 3),
                                 f"{name}_min": round(ratios[0], 3),
                                 f"{name}_max": round(ratios[-1], 3)})


def record_rates(benchmark, packets: int, nbytes: int, **extra) -> None:
    """packets/s, ns/packet and MB/s from the median (and best) round into extra_info."""
    info = benchmark.extra_info
    info["packets"] = packets
    info["bytes"] = nbytes
    info.update(extra)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None:  # --benchmark-disable
        return
    for label, seconds in (("median", stats.median), ("min", stats.min)):
        if seconds > 0:
            info[f"packets_per_s_{label}"] = round(packets / seconds)
            info[f"ns_per_packet_{label}"] = round(seconds * 1e9 / packets, 1)
            info[f"MB_per_s_{label}"] = round(nbytes / seconds / 1e6, 1)

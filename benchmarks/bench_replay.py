"""File-to-file replay of the workload capture, on tmpfs (/dev/shm when present).

The capture and cluster dump are copied to a private tmpfs folder once per session, and the
output goes there too, so the cases measure fastpath rather than the disk. Every replay case
records `cat_s` (best of 5 `cat CAPTURE > tmpfs/x`, the floor for one pass over the bytes) and
`x_cat` (the case's median over it) in extra_info.

  library_to_file     fastpath.replay(capture, output, Dataplane(maps)): pcap read, core, pcap
                      write (the Dataplane with an empty conntrack is built in untimed setup);
                      nothing is dropped, so every batch goes out straight from the input buffer.
                      Worker threads carry the chunks through read, core and write, each
                      stage in capture order (the same with threads=False:
                      bench_sharded.py's one_thread)
  library_to_file_built  the same with every batch copied by fastpath._pcap.build_records, the
                      path of a batch with a dropped packet (verbatim_span stubbed out)
  library_no_output   the same with output=None: read and core only
  cli                 `python -m fastpath replay CAPTURE --cluster YAML -o OUT -q` in a
                      subprocess: interpreter start-up, imports, YAML load and compile (or, warm,
                      the compiled dump read from the cache), replay
  cli_empty_capture   the same on a header-only capture: the fixed cost (start-up, cluster) alone
  cluster_load        fastpath.load_cluster + compile_maps of the workload's cluster.yaml, in-process
  cat                 `cat CAPTURE > tmpfs/x`, timed like the others, for the table
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import workload
from conftest import fastpath_env, record_rates

replay_module = pytest.importorskip("fastpath.replaying", reason="fastpath.replaying is not importable")
from fastpath.dataplane import Dataplane  # noqa: E402
from fastpath.replaying import replay  # noqa: E402

pytestmark = pytest.mark.benchmark(group="replay: capture file to capture file on tmpfs")


def _record(benchmark, workload_files, cat_seconds, **extra):
    capture = workload_files.meta["capture"]
    record_rates(benchmark, capture["packets"], capture["bytes"], cat_s=round(cat_seconds, 4),
                 **extra)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None and cat_seconds > 0:
        benchmark.extra_info["x_cat"] = round(stats.median / cat_seconds, 2)


def _library_case(benchmark, maps, tmpfs_capture, tmpfs_dir, output, rounds, threads=True,
                  digests=None):
    """Replays to `output` (None: no output) in timed rounds; the last round's stats. With
    `digests` (a dict), the last output's SHA-256 goes there under the output's name."""
    if output is not None:
        output = tmpfs_dir / output
    results = []

    def setup():
        if output is not None and output.exists():
            output.unlink()
        return (tmpfs_capture, output, Dataplane(maps)), {}

    def target(capture, out, dataplane):
        results.append(replay(capture, out, dataplane, threads=threads))

    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)
    stats = results[-1]
    assert stats.verdicts["REVNAT"] > 0 and stats.verdicts["DNAT"] > 0
    if output is not None:
        assert output.stat().st_size == tmpfs_capture.stat().st_size  # nothing dropped
        if digests is not None:  # (untimed: for cases that compare outputs)
            digests[output.name] = _digest(output)
        output.unlink()
    return stats


def _digest(path: Path) -> str:
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def test_library_to_file(benchmark, maps, workload_files, tmpfs_capture, tmpfs_dir, cat_seconds,
                         rounds):
    stats = _library_case(benchmark, maps, tmpfs_capture, tmpfs_dir, "replayed.pcap", rounds(5))
    assert stats.packets == workload_files.meta["capture"]["packets"]
    _record(benchmark, workload_files, cat_seconds, verdicts=stats.verdicts)


def test_library_to_file_built(benchmark, maps, workload_files, tmpfs_capture, tmpfs_dir,
                               cat_seconds, rounds, monkeypatch):
    from fastpath import _pcap

    monkeypatch.setattr(_pcap, "verbatim_span", lambda *args: None)
    stats = _library_case(benchmark, maps, tmpfs_capture, tmpfs_dir, "built.pcap", rounds(5))
    _record(benchmark, workload_files, cat_seconds, verdicts=stats.verdicts)


def test_library_no_output(benchmark, maps, workload_files, tmpfs_capture, tmpfs_dir, cat_seconds,
                           rounds):
    stats = _library_case(benchmark, maps, tmpfs_capture, tmpfs_dir, None, rounds(5))
    _record(benchmark, workload_files, cat_seconds, verdicts=stats.verdicts)


def _cli(capture: Path, cluster: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "fastpath", "replay", str(capture), "--cluster", str(cluster),
            "-o", str(output), "-q", "--progress", "never"]


def _run(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}: {result.stderr}")


@pytest.mark.parametrize("cache", ["warm", "off"])
def test_cli(benchmark, workload_files, tmpfs_capture, tmpfs_cluster, tmpfs_dir, cat_seconds,
             rounds, cache):
    """End to end; "warm": the dump's compiled maps come from the cache (the warm-up round
    fills it), as when several captures are replayed against one dump; "off": --no-cache."""
    output = tmpfs_dir / "cli.pcap"
    env = fastpath_env(tmpfs_dir, tmpfs_dir / "cluster-cache")
    command = _cli(tmpfs_capture, tmpfs_cluster, output) + (["--no-cache"] if cache == "off" else [])
    benchmark.extra_info["command"] = " ".join(command)
    benchmark.pedantic(_run, args=(command, env), rounds=rounds(5), warmup_rounds=1, iterations=1)
    assert output.stat().st_size == tmpfs_capture.stat().st_size
    output.unlink()
    _record(benchmark, workload_files, cat_seconds)


def test_cli_empty_capture(benchmark, workload_files, tmpfs_cluster, tmpfs_dir, rounds):
    empty = tmpfs_dir / "empty.pcap"
    empty.write_bytes(workload.PCAP_HEADER)
    output = tmpfs_dir / "empty-out.pcap"
    command = _cli(empty, tmpfs_cluster, output)
    benchmark.extra_info["command"] = " ".join(command)
    benchmark.pedantic(_run, args=(command, fastpath_env(tmpfs_dir, tmpfs_dir / "cluster-cache")),
                       rounds=rounds(5), warmup_rounds=1, iterations=1)
    benchmark.extra_info["services"] = workload_files.meta["services"]


def test_cluster_load(benchmark, workload_files, tmpfs_cluster, maps, rounds):
    from fastpath.compiler import compile_maps
    from fastpath.model import load_cluster

    def load():
        return compile_maps(load_cluster([tmpfs_cluster])).maps

    compiled = benchmark.pedantic(load, rounds=rounds(5), warmup_rounds=1, iterations=1)
    assert compiled == maps  # the YAML and workload_maps() describe the same dataplane
    benchmark.extra_info["services"] = workload_files.meta["services"]
    benchmark.extra_info["backends"] = workload_files.meta["backends"]


def test_cat(benchmark, workload_files, tmpfs_capture, tmpfs_dir, rounds):
    target = tmpfs_dir / "cat.out"
    command = f"cat '{tmpfs_capture}' > '{target}'"
    benchmark.extra_info["command"] = command
    benchmark.pedantic(subprocess.run, args=(command,), kwargs={"shell": True, "check": True},
                       rounds=rounds(5), warmup_rounds=1, iterations=1)
    target.unlink()
    capture = workload_files.meta["capture"]
    record_rates(benchmark, capture["packets"], capture["bytes"])

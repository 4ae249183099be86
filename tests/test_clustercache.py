"""The dump caches (parsed state, compiled maps): same result as without them, never stale, never in
the way."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from fastpath import clustercache, compiler, model
from fastpath.clustercache import cache_dir, compile_cluster_cached, load_cluster_cached
from fastpath.compiler import compile_maps
from fastpath.model import ClusterError, load_cluster


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FASTPATH_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def dump(tmp_path, demo_cluster):
    folder = tmp_path / "dump"
    folder.mkdir()
    shutil.copy(demo_cluster, folder / "cluster.yaml")
    return folder


def entries(folder):
    return sorted(folder.glob("*.cluster.pickle"))


def compiled_entries(folder):
    return sorted(folder.glob("*.compiled.pickle"))


def assert_compiled_equal(compiled, paths, node=None):
    """compile_cluster_cached's answer is what load_cluster and compile_maps give now."""
    state = load_cluster(paths)
    result = compile_maps(state, node=node)
    assert compiled.maps == result.maps
    assert (compiled.notes, compiled.timeouts_s, compiled.node) == \
        (result.notes, result.timeouts_s, result.node)
    assert compiled.sources == state.sources
    assert list(compiled.skipped.items()) == list(state.skipped.items())


def no_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("parsed or compiled again")

    monkeypatch.setattr(model, "load_cluster", fail)
    monkeypatch.setattr(compiler, "compile_maps", fail)


def test_a_second_load_comes_from_the_cache_and_equals_a_parse(cache, dump, monkeypatch):
    first = load_cluster_cached([dump])
    assert first == load_cluster([dump]) and len(entries(cache)) == 1

    def no_parsing(paths):
        raise AssertionError("parsed again")

    monkeypatch.setattr(model, "load_cluster", no_parsing)
    assert load_cluster_cached([dump]) == first


def test_a_changed_or_added_file_is_parsed_again(cache, dump):
    before = load_cluster_cached([dump])
    text = (dump / "cluster.yaml").read_text()
    (dump / "cluster.yaml").write_text(text.replace("name: web", "name: web2", 1))
    changed = load_cluster_cached([dump])
    assert changed != before and changed == load_cluster([dump])
    (dump / "more.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert load_cluster_cached([dump]).skipped["ConfigMap"] == before.skipped["ConfigMap"] + 1
    assert len(entries(cache)) == 3


def test_the_same_files_by_another_path_keep_their_own_sources(cache, dump):
    by_folder = load_cluster_cached([dump])
    by_file = load_cluster_cached([dump / "cluster.yaml"])
    assert by_folder.sources == (str(dump / "cluster.yaml"),) == by_file.sources


def test_a_damaged_entry_is_parsed_again_and_replaced(cache, dump):
    state = load_cluster_cached([dump])
    (entry,) = entries(cache)
    entry.write_bytes(b"not a pickle")
    assert load_cluster_cached([dump]) == state
    assert entry.read_bytes() != b"not a pickle"


def test_errors_are_not_cached_and_still_one_line(cache, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\n")
    with pytest.raises(ClusterError, match="apiVersion"):
        load_cluster_cached([bad])
    with pytest.raises(ClusterError, match="no such file"):
        load_cluster_cached([tmp_path / "missing.yaml"])
    assert entries(cache) == []


def test_an_unwritable_cache_only_costs_the_parse(tmp_path, dump, monkeypatch):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    monkeypatch.setenv("FASTPATH_CACHE_DIR", str(blocker / "cache"))
    assert load_cluster_cached([dump]) == load_cluster([dump])


def test_only_the_most_recent_entries_are_kept(cache, tmp_path, demo_cluster, monkeypatch):
    monkeypatch.setattr(clustercache, "KEEP_ENTRIES", 2)
    for n in range(4):
        folder = tmp_path / f"d{n}"
        folder.mkdir()
        shutil.copy(demo_cluster, folder / "c.yaml")
        load_cluster_cached([folder])
    assert len(entries(cache)) == 2


def test_entries_beyond_the_size_budget_are_deleted_but_the_newest_stays(cache, tmp_path, demo_cluster,
                                                                         monkeypatch):
    monkeypatch.setattr(clustercache, "KEEP_BYTES", 1)
    for n in range(3):
        folder = tmp_path / f"d{n}"
        folder.mkdir()
        shutil.copy(demo_cluster, folder / "c.yaml")
        state = load_cluster_cached([folder])
        (kept,) = entries(cache)
        assert clustercache._read(kept) == state  # the entry just written


def test_the_folder_is_private(cache, dump):
    load_cluster_cached([dump])
    assert cache.stat().st_mode & 0o077 == 0


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTPATH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "fastpath"


def test_replay_from_the_cache_writes_the_same_capture(tmp_path, cache, demo_capture, dump):
    outputs = []
    for n, flags in enumerate(([], [], ["--no-cache"])):
        out = tmp_path / f"out{n}.pcap"
        subprocess.run([sys.executable, "-m", "fastpath", "replay", str(demo_capture),
                        "--cluster", str(dump), "-o", str(out), "-q", *flags],
                       check=True, env={**os.environ, "FASTPATH_CACHE_DIR": str(cache)})
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2] and len(entries(cache)) == 1


# ------------------------------------------------------------------------ the compiled cache


@pytest.mark.parametrize("node", [None, "fp-node"])
def test_a_second_compile_comes_from_the_cache_and_equals_a_compile(cache, dump, node, monkeypatch):
    assert_compiled_equal(compile_cluster_cached([dump], node), [dump], node)
    assert len(compiled_entries(cache)) == 1
    first = compile_cluster_cached([dump], node)
    no_work(monkeypatch)
    again = compile_cluster_cached([dump], node)
    assert again.maps == first.maps and again == first


def test_the_node_asked_has_its_own_entry(cache, tmp_path):
    dual = tmp_path / "dual"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "dualstack"), dual)
    state = load_cluster([dual])
    nodes = [n.name for n in state.nodes]
    assert len(nodes) > 1
    for node in nodes:
        compile_cluster_cached([dual], node)
    assert len(compiled_entries(cache)) == len(nodes)
    for node in nodes:
        assert_compiled_equal(compile_cluster_cached([dual], node), [dual], node)


def test_a_hit_imports_neither_model_nor_compiler_nor_yaml(cache, dump):
    compile_cluster_cached([dump])
    script = ("import sys; before = set(sys.modules); "
              "from fastpath.clustercache import compile_cluster_cached as c; "
              f"c([{str(dump)!r}]); "
              "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] == 'yaml' "
              "or m in ('fastpath.model', 'fastpath.compiler', 'pathlib')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, env={**os.environ, "FASTPATH_CACHE_DIR": str(cache)})
    assert result.stdout.strip() == "[]"


def test_a_changed_added_or_removed_file_is_compiled_again(cache, dump):
    compile_cluster_cached([dump])
    text = (dump / "cluster.yaml").read_text()
    (dump / "cluster.yaml").write_text(text.replace("name: web", "name: web2", 1))
    assert_compiled_equal(compile_cluster_cached([dump]), [dump])
    assert any("web2" in s.name for s in compile_cluster_cached([dump]).maps.services)
    (dump / "sub").mkdir()
    (dump / "sub" / "more.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert compile_cluster_cached([dump]).skipped["ConfigMap"] == 2
    (dump / "sub" / "more.yaml").rename(dump / "sub" / "more.txt")  # no longer a dump file
    assert_compiled_equal(compile_cluster_cached([dump]), [dump])
    assert compile_cluster_cached([dump]).skipped["ConfigMap"] == 1
    assert len(compiled_entries(cache)) == 1  # one entry per paths and node, replaced


def test_a_link_pointed_elsewhere_is_compiled_again(cache, tmp_path, dump):
    """A file reached twice is read once; which files are the same one is decided by real paths,
    so a link pointed at an identical copy makes the dump hold its objects twice."""
    links = tmp_path / "links"
    links.mkdir()
    copy = tmp_path / "copy.yaml"
    shutil.copy(dump / "cluster.yaml", copy)
    (links / "again.yaml").symlink_to(dump / "cluster.yaml")
    paths = [dump / "cluster.yaml", links]
    assert_compiled_equal(compile_cluster_cached(paths), paths)
    (links / "again.yaml").unlink()
    (links / "again.yaml").symlink_to(copy)
    with pytest.raises(ClusterError) as fresh:
        load_cluster(paths)
    with pytest.raises(ClusterError) as cached:
        compile_cluster_cached(paths)
    assert str(cached.value) == str(fresh.value)


def test_a_damaged_compiled_entry_is_compiled_again_and_replaced(cache, dump):
    compile_cluster_cached([dump])
    (entry,) = compiled_entries(cache)
    good = entry.read_bytes()
    for damage in (b"not a pickle", good[: len(good) // 2]):
        entry.write_bytes(damage)
        assert_compiled_equal(compile_cluster_cached([dump]), [dump])
        assert entry.read_bytes() == good


def test_compile_errors_are_not_cached_and_still_one_line(cache, tmp_path, dump):
    with pytest.raises(ClusterError, match="no such file"):
        compile_cluster_cached([tmp_path / "missing.yaml"])
    with pytest.raises(ClusterError, match="no Node named 'nope'"):
        compile_cluster_cached([dump], "nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\n")
    with pytest.raises(ClusterError, match="apiVersion"):
        compile_cluster_cached([bad])
    assert compiled_entries(cache) == []


def test_an_unwritable_cache_only_costs_the_compile(tmp_path, dump, monkeypatch):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    monkeypatch.setenv("FASTPATH_CACHE_DIR", str(blocker / "cache"))
    assert_compiled_equal(compile_cluster_cached([dump]), [dump])


def test_someone_elses_entry_is_never_loaded(cache, dump, monkeypatch):
    compile_cluster_cached([dump])
    load_cluster_cached([dump])
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    no_work(monkeypatch)
    with pytest.raises(AssertionError, match="again"):
        compile_cluster_cached([dump])
    with pytest.raises(AssertionError, match="again"):
        load_cluster_cached([dump])


@pytest.mark.parametrize("flags", [[], ["--node", "fp-node"], ["--core", "reference"]])
def test_replay_output_stats_trace_and_summary_are_the_same_with_and_without_the_cache(
        tmp_path, cache, demo_capture, dump, flags):
    def run(name, *more):
        out = tmp_path / name
        out.mkdir()
        result = subprocess.run(
            [sys.executable, "-m", "fastpath", "replay", str(demo_capture), "--cluster", str(dump),
             "-o", str(out / "out.pcap"), "--stats", str(out / "stats.json"),
             "--trace", str(out / "trace.jsonl"), *flags, *more],
            check=True, capture_output=True, text=True,
            env={**os.environ, "FASTPATH_CACHE_DIR": str(cache)})
        stats = json.loads((out / "stats.json").read_text())
        for timing in ("elapsed_s", "packets_per_second", "output", "trace"):
            stats.pop(timing)
        summary = [line for line in result.stdout.splitlines()
                   if not line.startswith(("packets ", "trace ", str(demo_capture)))]
        return ((out / "out.pcap").read_bytes(), (out / "trace.jsonl").read_bytes(), stats,
                summary)

    fresh = run("fresh", "--no-cache")
    assert run("miss") == fresh and len(compiled_entries(cache)) == 1
    assert run("hit") == fresh


def test_an_entry_of_another_fastpath_is_never_used(cache, dump, tmp_path):
    """Any change to fastpath's source (here a comment added to the compiler) gives new keys."""
    import fastpath

    copy = tmp_path / "pkg"
    shutil.copytree(os.path.dirname(fastpath.__file__), copy / "fastpath",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import sys; from fastpath.clustercache import compile_cluster_cached as c; "
              f"c([{str(dump)!r}]); print('fastpath.compiler' in sys.modules)")

    def compiled_again() -> bool:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                check=True, cwd=tmp_path,
                                env={**os.environ, "FASTPATH_CACHE_DIR": str(cache),
                                     "PYTHONPATH": str(copy)})
        return result.stdout.strip() == "True"

    assert compiled_again() and not compiled_again()
    with open(copy / "fastpath" / "compiler.py", "a") as source:
        source.write("# another fastpath\n")
    assert compiled_again() and not compiled_again()

"""The parsed-dump cache: same state as a fresh parse, never stale, never in the way."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from fastpath import clustercache, model
from fastpath.clustercache import cache_dir, load_cluster_cached
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

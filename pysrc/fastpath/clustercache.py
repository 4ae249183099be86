"""Caches of cluster dumps, so running against the same dump again skips the work.

- Parsed (`load_cluster_cached`): the ClusterState of the files, for explain and for a replay as
  another node. Skips the YAML/JSON parsing (about a second for a 1,000-Service dump; reading
  the state back takes a tenth of that).
- Compiled (`compile_cluster_cached`): what a replay needs of compile_maps(state, node): the
  maps (as plain columns, see fastpath.compactmaps), notes, conntrack timeouts and node, with
  the dump's sources and skipped kinds. Skips reading the parsed state back and compiling it
  too: about 15 ms for that dump, importing none of fastpath.model, fastpath.compiler or PyYAML.

Never stale. A parsed entry's key is a hash of the paths as given, every file read (its path,
real path and bytes) and the source of every module of fastpath. A compiled entry's key is a
hash of the paths, the node asked and that source; the entry records its inputs (each path's
kind, the whole tree of names under a folder, every file read with its real path and digest)
and is used only while they are unchanged. An entry is written only if its inputs did not
change while they were read. A changed file, a file added to a folder or a new fastpath
therefore never meets an old entry.

Entries are pickles in a private folder (0700, owned by the user; a file owned by anyone else is
never loaded): FASTPATH_CACHE_DIR, else $XDG_CACHE_HOME/fastpath, else ~/.cache/fastpath.
Anything wrong with the cache (unreadable, damaged, full disk) only costs the work: it never
changes a result and never raises.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from fastpath.atomicfile import discard, move_into_place, open_beside
from fastpath.gcpause import collection_paused

if TYPE_CHECKING:
    from pathlib import Path  # (not imported on a hit: paths here are strings, os.path)

    from fastpath.maps import Maps
    from fastpath.model import ClusterState

__all__ = ["CompiledDump", "cache_dir", "compile_cluster_cached", "load_cluster_cached"]

# Entries kept of each kind: the most recently used ones, at most this many and this many bytes
# together (the newest always stays); older ones are deleted when a new one is written.
KEEP_ENTRIES = 8
KEEP_BYTES = 1 << 30
_PARSED = ".cluster.pickle"
_COMPILED = ".compiled.pickle"

# (path as given, what it is: ("file",), ("folder", tree of names) or ("missing",))
Shape = tuple[str, tuple[Any, ...]]
# (file, its real path, sha256 of its bytes or None when unreadable), for every file read
Fingerprint = tuple[tuple[str, str, "bytes | None"], ...]


class CompiledDump(NamedTuple):  # (a NamedTuple: a tenth of a frozen dataclass's set-up time)
    """compile_maps(load_cluster(paths), node) as a replay uses it."""

    maps: Maps
    notes: tuple[str, ...]
    timeouts_s: dict[str, float]
    node: str | None  # the node compiled for: the one asked, or the dump's only Node
    sources: tuple[str, ...]  # the files read (ClusterState.sources)
    skipped: dict[str, int]  # objects of other kinds, per kind (ClusterState.skipped)


def cache_dir() -> Path:
    from pathlib import Path

    return Path(_folder())


def _folder() -> str:
    configured = os.environ.get("FASTPATH_CACHE_DIR")
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastpath")


def load_cluster_cached(paths: Iterable[str | os.PathLike[str]]) -> ClusterState:
    """model.load_cluster(paths), from the cache when the same inputs were read before."""
    given = [os.fspath(path) for path in paths]
    # (_fingerprint raises ClusterError for a missing path, as load_cluster does)
    return _load_parsed(given, _fingerprint(given))


def _load_parsed(given: list[str], fingerprint: Fingerprint) -> ClusterState:
    """load_cluster_cached, the inputs' fingerprint already taken."""
    from fastpath import model

    key = _key("parsed", given, fingerprint)
    entry = os.path.join(_folder(), key + _PARSED) if key else None
    state = _read(entry) if entry else None
    if state is None:
        state = model.load_cluster(given)
        if entry and _fingerprint(given) == fingerprint:
            _write(entry, state)
    return state


def compile_cluster_cached(paths: Iterable[str | os.PathLike[str]],
                           node: str | None = None) -> CompiledDump:
    """compile_maps(load_cluster(paths), node) with the dump's sources and skipped kinds, from
    the cache when the same inputs were compiled for the same node before."""
    given = [os.fspath(path) for path in paths]
    key = _key("compiled", given, node)
    entry = os.path.join(_folder(), key + _COMPILED) if key else None
    compiled = _read_compiled(entry, given) if entry else None
    if compiled is None:
        from fastpath.compiler import compile_maps

        inputs = _shapes(given), _fingerprint(given)  # ClusterError for a missing path
        state = _load_parsed(given, inputs[1])
        result = compile_maps(state, node=node)
        compiled = CompiledDump(maps=result.maps, notes=result.notes,
                                timeouts_s=dict(result.timeouts_s), node=result.node,
                                sources=state.sources, skipped=dict(state.skipped))
        if entry and (_shapes(given), _fingerprint(given)) == inputs:
            _write_compiled(entry, inputs, compiled)
    return compiled


def _key(kind: str, *parts: Any) -> str | None:
    """A hash of `parts` and the source of every module of fastpath (the state and the compile
    output depend on the model, the YAML reader, the compiler and the maps, and whatever they
    come to import; 0.3 ms for all of them); None when a source cannot be read (no caching then:
    an entry could outlive a change to it)."""
    digest = hashlib.sha256(f"{kind}\0{sys.version}\0".encode())
    package = os.path.dirname(os.path.abspath(__file__))
    try:
        for name in sorted(os.listdir(package)):
            if name.endswith(".py"):
                with open(os.path.join(package, name), "rb") as source:
                    digest.update(f"\0{name}\0".encode() + source.read())
    except OSError:
        return None
    digest.update(repr(parts).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _fingerprint(paths: list[str]) -> Fingerprint:
    """Every file load_cluster reads for `paths` (duplicates too: which copy is read depends on
    the real paths), with its real path and digest."""
    from pathlib import Path

    from fastpath.model import cluster_files

    return _digests(str(file) for path in paths for file in cluster_files(Path(path)))


def _digests(files: Iterable[str]) -> Fingerprint:
    found = []
    chunk = bytearray(1 << 18)
    for file in files:
        try:
            digest: bytes | None = _sha256(file, chunk)
        except OSError:
            digest = None  # load_cluster will say what is wrong
        found.append((file, os.path.realpath(file), digest))
    return tuple(found)


def _sha256(file: str, chunk: bytearray) -> bytes:
    """The file's SHA-256, read through `chunk`: reading a 4 MB dump whole into fresh memory
    costs a fresh process as much as hashing it (4.5 against 2.7 ms)."""
    digest = hashlib.sha256()
    view = memoryview(chunk)
    with open(file, "rb", buffering=0) as handle:
        while size := handle.readinto(chunk):
            digest.update(view[:size])
    return digest.digest()


def _shapes(paths: list[str]) -> tuple[Shape, ...]:
    """What each path is; for a folder, every name under it (hidden ones too), so that a file
    added, removed or renamed anywhere in it changes the shape."""
    shapes: list[Shape] = []
    for path in paths:
        if os.path.isdir(path):
            tree: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                tree.append((os.path.relpath(root, path), tuple(dirs), tuple(sorted(files))))
            shapes.append((path, ("folder", tuple(tree))))
        else:
            shapes.append((path, ("file",) if os.path.isfile(path) else ("missing",)))
    return tuple(shapes)


def _open_own(entry: str):
    """The entry opened for reading if it is ours, else None (never unpickle what someone else
    could have written)."""
    handle = open(entry, "rb")
    if os.fstat(handle.fileno()).st_uid != os.geteuid():
        handle.close()
        return None
    return handle


@collection_paused()  # (tens of thousands of objects, no cycles)
def _read(entry: str) -> ClusterState | None:
    from fastpath.model import ClusterState

    try:
        handle = _open_own(entry)
        if handle is None:
            return None
        with handle:
            state = pickle.load(handle)
        os.utime(entry)  # most recently used
    except Exception:  # noqa: BLE001 - a missing or damaged entry only means parsing again
        return None
    return state if isinstance(state, ClusterState) else None


@collection_paused()  # (tens of thousands of objects, no cycles)
def _read_compiled(entry: str, paths: list[str]) -> CompiledDump | None:
    from fastpath import compactmaps

    try:
        handle = _open_own(entry)
        if handle is None:
            return None
        with handle:
            shapes, fingerprint = pickle.load(handle)
            if shapes != _shapes(paths) or fingerprint != _digests(f for f, _, _ in fingerprint):
                return None  # the dump changed since: compile again (and replace the entry)
            packed, notes, timeouts_s, node, sources, skipped = pickle.load(handle)
        compiled = CompiledDump(maps=compactmaps.unpack(packed), notes=tuple(notes),
                                timeouts_s=dict(timeouts_s), node=node, sources=tuple(sources),
                                skipped=dict(skipped))
        os.utime(entry)  # most recently used
    except Exception:  # noqa: BLE001 - a missing or damaged entry only means compiling again
        return None
    return compiled


def _write_compiled(entry: str, inputs: tuple[Any, Any], compiled: CompiledDump) -> None:
    from fastpath import compactmaps

    try:
        packed = compactmaps.pack(compiled.maps)
    except ValueError:
        return  # maps of other classes than fastpath.maps': not cached
    _write(entry, inputs, (packed, compiled.notes, compiled.timeouts_s, compiled.node,
                           compiled.sources, compiled.skipped))


def _write(entry: str, *documents: Any) -> None:
    """The documents pickled one after the other into `entry`, atomically."""
    from pathlib import Path

    handle = temporary = None
    try:
        os.makedirs(os.path.dirname(entry), mode=0o700, exist_ok=True)
        fd, temporary = open_beside(entry)
        handle = os.fdopen(fd, "wb")
        for document in documents:
            pickle.dump(document, handle, protocol=pickle.HIGHEST_PROTOCOL)
        move_into_place(handle, temporary, entry)
        _trim(Path(entry))
    except Exception:  # noqa: BLE001 - no room or no permission: the next run does the work again
        discard(handle, temporary)


def _trim(newest: Path) -> None:
    """Delete the least recently used entries of newest's kind beyond the budget; `newest` (just
    written) stays."""
    suffix = _COMPILED if newest.name.endswith(_COMPILED) else _PARSED
    others = sorted(((path.stat(), path) for path in newest.parent.glob(f"*{suffix}")
                     if path != newest), key=lambda entry: entry[0].st_mtime, reverse=True)
    total = newest.stat().st_size
    for count, (stat, path) in enumerate(others, start=2):
        total += stat.st_size
        if count > KEEP_ENTRIES or total > KEEP_BYTES:
            path.unlink(missing_ok=True)

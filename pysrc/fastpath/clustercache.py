"""A cache of parsed cluster dumps, so replaying captures against the same dump again skips the
YAML/JSON parsing (about a second for a 1,000-Service dump; reading the cached state back takes
a tenth of that).

The key is a hash of everything the parsed state depends on: the paths as given, every file's
path and bytes, and the source of fastpath.model (which defines the state's classes). A changed
file, a file added to a folder or a new fastpath therefore never meets an old entry. Entries are
pickles in a private folder (0700, owned by the user; a file owned by anyone else is never
loaded): FASTPATH_CACHE_DIR, else $XDG_CACHE_HOME/fastpath, else ~/.cache/fastpath. Anything
wrong with the cache (unreadable, damaged, full disk) only costs the parse: it never changes a
result and never raises.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterable
from pathlib import Path

from fastpath import model
from fastpath.atomicfile import discard, move_into_place, open_beside

__all__ = ["cache_dir", "load_cluster_cached"]

# Entries kept: the most recently used ones, at most this many and this many bytes together
# (the newest always stays); older ones are deleted when a new one is written.
KEEP_ENTRIES = 8
KEEP_BYTES = 1 << 30
_SUFFIX = ".cluster.pickle"


def cache_dir() -> Path:
    configured = os.environ.get("FASTPATH_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "fastpath")


def load_cluster_cached(paths: Iterable[str | os.PathLike[str]]) -> model.ClusterState:
    """model.load_cluster(paths), from the cache when the same inputs were read before."""
    paths = [os.fspath(path) for path in paths]
    key = _key(paths)  # ClusterError for a missing path, as load_cluster gives
    entry = cache_dir() / f"{key}{_SUFFIX}"
    state = _read(entry)
    if state is None:
        state = model.load_cluster(paths)
        _write(entry, state)
    return state


def _key(paths: list[str]) -> str:
    digest = hashlib.blake2b(digest_size=20)
    digest.update(Path(model.__file__).read_bytes())
    for path in paths:
        digest.update(b"\0path\0" + path.encode("utf-8", "surrogateescape"))
        for file in model.cluster_files(Path(path)):
            digest.update(b"\0file\0" + str(file).encode("utf-8", "surrogateescape") + b"\0")
            try:
                digest.update(file.read_bytes())
            except OSError:
                digest.update(b"\0unreadable\0")  # load_cluster will say what is wrong
    return digest.hexdigest()


def _read(entry: Path) -> model.ClusterState | None:
    try:
        with open(entry, "rb") as handle:
            if os.fstat(handle.fileno()).st_uid != os.geteuid():
                return None  # not ours: never unpickle what someone else could have written
            state = pickle.load(handle)
        os.utime(entry)  # most recently used
    except Exception:  # noqa: BLE001 - a missing or damaged entry only means parsing again
        return None
    return state if isinstance(state, model.ClusterState) else None


def _write(entry: Path, state: model.ClusterState) -> None:
    handle = temporary = None
    try:
        entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = open_beside(str(entry))
        handle = os.fdopen(fd, "wb")
        pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
        move_into_place(handle, temporary, str(entry))
        _trim(entry)
    except Exception:  # noqa: BLE001 - no room or no permission: the next run parses again
        discard(handle, temporary)


def _trim(newest: Path) -> None:
    """Delete the least recently used entries beyond the budget; `newest` (just written) stays."""
    others = sorted(((path.stat(), path) for path in newest.parent.glob(f"*{_SUFFIX}")
                     if path != newest), key=lambda entry: entry[0].st_mtime, reverse=True)
    total = newest.stat().st_size
    for count, (stat, path) in enumerate(others, start=2):
        total += stat.st_size
        if count > KEEP_ENTRIES or total > KEEP_BYTES:
            path.unlink(missing_ok=True)

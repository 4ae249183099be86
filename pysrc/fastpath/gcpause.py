"""Pausing the cyclic garbage collector around work that makes many containers and no cycles."""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while reading a dump, compiling it or loading maps
    (also usable as a decorator: `@collection_paused()`).

    Each makes up to millions of containers (a million backends' tuples, frozensets of ids) and
    no cycles; the collector's repeated full passes over the growing heap would otherwise make
    it about twice as slow.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

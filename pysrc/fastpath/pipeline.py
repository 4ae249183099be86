"""Reading ahead and writing behind on threads of their own, so a replay's stages overlap.

A replay reads a chunk, runs it through the core and writes it out. The file reads and writes,
the record scan and the core all run with the GIL released, so on a machine with more than one
core the next chunk can be read and the last one written while the core works on this one.
Each stage still sees the batches one at a time and in capture order, so the output is byte for
byte what a single thread writes. The queues between the stages are short, so memory stays
bounded by a few chunks whatever the capture's size.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_END = object()  # the producer has no more items


class _Failure:
    """An exception raised on a worker thread, to be raised again on the caller's."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """Iterate `source` on a worker thread, at most `depth` items ahead of the consumer.

    Each item comes paired with what `probe()` returned right after the source produced it
    (a reader's byte position, say, which the worker moves on from). An exception the source
    raises reaches the consumer after the items produced before it. close() (or leaving a
    `with` block) stops the worker early and closes the source on the worker's thread.
    """

    def __init__(self, source: Iterable[T], depth: int = 2,
                 probe: Callable[[], Any] | None = None) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._source = source
        self._probe = probe
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stopping = False
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="fastpath-read-ahead",
                                        daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        source = iter(self._source)
        try:
            for item in source:
                if self._stopping:
                    break
                self._queue.put((item, self._probe() if self._probe is not None else None))
            self._queue.put(_END)
        except BaseException as error:  # handed to the consumer, which raises it
            self._queue.put(_Failure(error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[tuple[T, Any]]:
        while not self._done:
            entry = self._queue.get()
            if entry is _END:
                self._done = True
                break
            if isinstance(entry, _Failure):
                self._done = True
                raise entry.error
            yield entry

    def close(self) -> None:
        """Stop the worker (it finishes the item it is producing) and wait for it."""
        self._stopping = True
        while self._thread.is_alive():
            try:  # make room, so a worker blocked on a full queue sees the stop
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._done = True

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WriteBehind(Generic[T]):
    """Call `write(item)` for every submitted item, in order, on a worker thread.

    submit() blocks while `depth` items wait. If a write raises, the writing stops and the
    error is raised again by the next submit() or by finish(); later items are dropped.
    finish() waits for every write and raises the first error; close() abandons what is left.
    """

    def __init__(self, write: Callable[[T], None], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._write = write
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None  # the failed write's, until raised
        self._dropping = False  # after a failed write or close(): items are taken, not written
        self._thread = threading.Thread(target=self._consume, name="fastpath-write-behind",
                                        daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if not self._dropping:
                try:
                    self._write(item)
                except BaseException as error:  # raised again on the caller's thread
                    self._error, self._dropping = error, True

    def submit(self, item: T) -> None:
        self._raise_if_failed()
        self._queue.put(item)

    def finish(self) -> None:
        """Wait until every submitted item is written; raise the first write's error."""
        self._stop()
        self._raise_if_failed()

    def close(self) -> None:
        """Stop without writing what is still waiting (after an error elsewhere)."""
        self._dropping = True
        self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()

    def _raise_if_failed(self) -> None:
        error = self._error  # (set once by the worker, which then only drops items)
        if error is not None:
            self._error = None  # raised once
            raise error

    def __enter__(self) -> WriteBehind[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


"""A replay's stages on worker threads: each chunk carried by one worker from its read to its
write, every stage taking the chunks one at a time and in capture order.

A replay reads a chunk, runs it through the core and writes it out. The reads, the record scan,
the core and the writes all release the GIL, so the stages of different chunks can run at once
on different cores. Each worker takes the next chunk and carries it through every stage itself,
so a chunk is read, rewritten and written by the core whose cache already holds it. (A thread
per stage moved every chunk between cores twice, and its three threads on a two-core machine
left the slowest stage, the write, waiting for a core: the same replay took 1.3x as long.)

A stage runs for chunk k only after it ran for chunk k-1, so each stage sees exactly the
sequence one thread would give it, and the output is byte for byte the same: the conntrack
decisions happen in capture order, and the output file is written in capture order. This is a
pipeline of serial, in-order filters whose items keep their thread (the shape of TBB's
parallel_pipeline). Memory stays bounded: a worker holds one chunk at a time.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


class _Turns:
    """Whose turn it is at each stage; the run's end; its earliest failure."""

    def __init__(self, stages: int) -> None:
        self._changed = threading.Condition()
        self._next = [0] * stages  # at each stage, the index of the item whose turn it is
        self._end: int | None = None  # the index the first stage found no item for
        self.failure: tuple[int, BaseException] | None = None  # (item index, its error)

    def wait(self, stage: int, index: int) -> bool:
        """Wait for item `index`'s turn at `stage`; False if the item is not to run it: the
        items ended before it, or an earlier item failed."""
        with self._changed:
            while True:
                failure = self.failure
                if failure is not None and failure[0] < index:
                    return False
                if self._end is not None and index >= self._end:
                    return False
                if self._next[stage] == index:
                    return True
                self._changed.wait()

    def done(self, stage: int, index: int) -> None:
        with self._changed:
            self._next[stage] = index + 1
            self._changed.notify_all()

    def end(self, index: int) -> None:
        with self._changed:
            self._end = index
            self._changed.notify_all()

    def fail(self, index: int, error: BaseException) -> None:
        with self._changed:
            if self.failure is None or index < self.failure[0]:
                self.failure = (index, error)
            self._changed.notify_all()


def run_in_order(produce: Callable[[], Any], stages: Sequence[Callable[[Any], Any]],
                 workers: int, name: str = "fastpath-worker", *,
                 finish: Callable[[Any], Any] | None = None,
                 abort: Callable[[], Any] | None = None) -> None:
    """Run items through `stages` on `workers` threads, the caller's thread being one of them.

    produce() returns the next item, or None when there are no more; each stage maps an item
    to what the next stage gets (the last stage's result is dropped). Item k is carried by one
    worker through every stage; produce() and each stage run for one item at a time, in item
    order. With one worker everything runs on the caller's thread, one item after the other.

    finish(item), when given, gets the last stage's result on the same worker, without waiting
    for a turn: a last step that keeps the items' order by itself (a write waiting for its turn
    without the GIL, fastpath._pcap.WriteTurns). abort() is then called when the run fails, so
    that no worker waits in finish() for an item that will not come.

    An exception raised for item k, by produce() or a stage (KeyboardInterrupt on the caller's
    thread included), ends the run as one thread would: the items before k finish (but for
    their finish(), which abort() may cut short), no item after k runs another stage, and once
    every worker has stopped the exception of the earliest failed item is raised on the
    caller's thread.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    turns = _Turns(1 + len(stages))

    def fail(index: int, error: BaseException) -> None:
        turns.fail(index, error)
        if abort is not None:
            abort()

    def work(first: int) -> None:
        index = first
        try:
            while turns.wait(0, index):
                item = produce()
                if item is None:
                    turns.end(index)
                    return
                turns.done(0, index)
                for stage_number, stage in enumerate(stages, 1):
                    if not turns.wait(stage_number, index):
                        return
                    item = stage(item)
                    turns.done(stage_number, index)
                if finish is not None:
                    finish(item)
                index += workers
        except BaseException as error:  # raised again on the caller's thread
            fail(index, error)

    threads = [threading.Thread(target=work, args=(first,), name=f"{name}-{first}", daemon=True)
               for first in range(1, workers)]
    for thread in threads:
        thread.start()
    try:
        work(0)
    finally:
        for thread in threads:  # they stop at their next turn: the run ended or failed
            while thread.is_alive():
                try:
                    thread.join()
                except BaseException as error:  # an interrupt while joining: stop them too
                    fail(-1, error)
    if turns.failure is not None:
        raise turns.failure[1]

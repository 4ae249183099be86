"""Replay a capture through a dataplane: read batches, process, write what survives.

Streams: memory stays bounded by the batch size whatever the capture's size. The output (and the
optional per-packet trace, see fastpath.trace) is written atomically: nothing is left behind if
the replay fails or is interrupted.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from itertools import chain, compress, count, repeat
from operator import attrgetter, sub
from typing import IO, TYPE_CHECKING, Union

from fastpath._pcap import WriteTurns
from fastpath.atomicfile import PreparedOutput
from fastpath.capture import Batch, VerbatimRecords, open_capture, open_output
from fastpath.maps import service_label
from fastpath.pipeline import run_in_order
from fastpath.verdicts import Verdict

if TYPE_CHECKING:  # (replay() imports fastpath.trace only when a trace is asked)
    from fastpath.dataplane import BatchResult, Dataplane
    from fastpath.trace import TraceWriter

DEFAULT_BATCH_PACKETS = 65536
# A replay's stages (fastpath.pipeline): reading and scanning a chunk, the core, writing it out.
# More workers than stages would only wait for a turn.
_STAGES = 3

# A batch read: its number in the capture, the batch, the read position after it.
_Read = tuple[int, Batch, int]
# A batch after the core: its number, the batch, the core's result, and the records to write
# as they lie in the read buffer when that is what the output gets (else None).
_Processed = tuple[int, Batch, "BatchResult", Union[VerbatimRecords, None]]

# progress(bytes_done, bytes_total, packets_done) is called after every batch.
ProgressCallback = Callable[[int, int, int], None]

# Where a trace goes: a path (written atomically), an open writable file (text or binary), or a
# TraceWriter the caller manages (replay writes to it but neither commits nor closes it).
TraceTarget = Union[str, "os.PathLike[str]", IO[str], IO[bytes], "TraceWriter"]


@dataclass(slots=True)
class ReplayStats:
    """What a replay did; `to_dict()` is the `--stats` JSON."""

    capture: str
    output: str | None
    format: str
    linktype: int
    trace: str | None = None  # where the per-packet trace went (a path or a stream's name)
    packets: int = 0
    packets_written: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    verdicts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    services: dict[str, int] = field(default_factory=dict)
    backends: dict[str, int] = field(default_factory=dict)
    conntrack: dict[str, int] = field(default_factory=dict)
    affinity: dict[str, int] = field(default_factory=dict)
    truncated_tail: str | None = None

    @property
    def packets_per_second(self) -> float:
        return self.packets / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        # What dataclasses.asdict gives, but the counts (10,000 backends) are copied as dicts:
        # asdict copies them entry by entry, recursively, 25 ms for the standard workload.
        data = {}
        for item in fields(self):
            value = getattr(self, item.name)
            data[item.name] = dict(value) if isinstance(value, dict) else value
        data["packets_per_second"] = round(self.packets_per_second, 1)
        data["elapsed_s"] = round(self.elapsed_s, 6)
        return data


def replay(
    capture: str | os.PathLike,
    output: str | os.PathLike | PreparedOutput | None,
    dataplane: Dataplane,
    *,
    batch_packets: int = DEFAULT_BATCH_PACKETS,
    progress: ProgressCallback | None = None,
    trace: TraceTarget | None = None,
    threads: bool = True,
) -> ReplayStats:
    """Replay `capture` through `dataplane`, writing kept packets to `output` (None: no output;
    a fastpath.atomicfile.PreparedOutput is taken over: its space was allocated meanwhile).

    trace: also write one JSON line per input packet (verdict, reason, service, frontend,
    backend, masquerade; see fastpath.trace) to this path (atomically, committed together with
    the output), open file, or TraceWriter. Without it the core fills no per-packet trace and
    replay does no per-packet Python work.

    threads: carry the chunks through the stages on worker threads, one per CPU up to three
    (fastpath.pipeline): the next chunk is read and the last one written while the core runs
    on this one. Only when the capture, the output and the trace are regular files (a pipe or
    a device can block a stage indefinitely). The output, the trace and the stats are the same
    either way; progress is then called on whichever worker processed the batch, still in
    order (after the core, the batch's write may follow). False runs every stage on the
    caller's thread.

    Counts in the returned stats are those of this replay only, even if the dataplane ran other
    traffic before.
    """
    before = dataplane.engine.counters()
    started = time.perf_counter()
    with open_capture(capture) as reader:
        stats = ReplayStats(
            capture=os.fspath(capture),
            output=_output_name(output),
            format=reader.format,
            linktype=reader.linktype,
        )
        total = reader.size_bytes
        replies = 0
        writer = tracer = None
        try:
            writer = open_output(output, like=reader) if output is not None else None
            if trace is not None:
                from fastpath.trace import TraceWriter

                if isinstance(trace, TraceWriter):
                    tracer = trace
                    tracer.set_maps(dataplane.maps)
                else:
                    tracer = TraceWriter(trace, dataplane.maps)
                stats.trace = tracer.name
            tracing = tracer is not None
            batches = reader.batches(max_packets=batch_packets)
            numbers = count()

            def read() -> _Read | None:
                batch = next(batches, None)
                return None if batch is None else (next(numbers), batch, reader.position_bytes)

            def run_core(item: _Read) -> _Processed:
                nonlocal replies
                index, batch, position = item
                result = dataplane.process(batch, reader.linktype, trace=tracing)
                # Whether the batch goes out as it lies in the read buffer is checked here,
                # while its records are in this core's cache, and not in the write stage,
                # which is a replay's slowest (about half of a one-thread replay's time).
                verbatim = None
                if writer is not None and not result.replies:
                    verbatim = writer.verbatim_records(batch, result.verdicts)
                stats.packets += batch.count
                replies += len(result.replies)
                if progress is not None:
                    progress(position, total, stats.packets)
                return index, batch, result, verbatim

            def deliver(item: _Processed) -> None:  # in this stage's turn
                _, batch, result, verbatim = item
                if verbatim is not None:
                    writer.write_verbatim(verbatim)  # type: ignore[union-attr]
                elif writer is not None:
                    _write(writer, batch, result)
                if tracer is not None:
                    tracer.write_batch(batch, result)

            def deliver_in_turn(item: _Processed) -> None:  # waits for its turn itself
                index, batch, result, verbatim = item
                assert writer is not None and turns is not None
                if verbatim is not None:
                    writer.write_verbatim_in_turn(verbatim, turns, index)
                elif turns.wait(index):
                    _write(writer, batch, result)
                    writer.flush()
                    turns.done(index)

            workers = _workers(threads, reader, writer, tracer)
            turns = _write_turns(workers, writer, tracer)
            if turns is None:
                run_in_order(read, (run_core, deliver), workers)
            else:
                assert writer is not None  # (there are turns only for an output)
                writer.flush()  # the file's header, before the turns' writes
                run_in_order(read, (run_core,), workers, finish=deliver_in_turn,
                             abort=turns.fail)
            if writer is not None:
                writer.commit()
            if tracer is not None and tracer is not trace:
                tracer.commit()
        finally:
            if writer is not None:
                writer.close()
            if tracer is not None and tracer is not trace:
                tracer.close()
        stats.truncated_tail = reader.truncated_tail
        stats.bytes = reader.bytes_read
    stats.elapsed_s = time.perf_counter() - started
    _fill_counts(stats, before, dataplane.engine.counters(), dataplane.maps)
    # From the core's verdict counters: no pass over each batch's verdicts here.
    stats.packets_written = (stats.packets - stats.verdicts.get(Verdict.DROP.name, 0)
                             - stats.verdicts.get(Verdict.REJECT.name, 0) + replies)
    return stats


def _output_name(output: str | os.PathLike | PreparedOutput | None) -> str | None:
    if isinstance(output, PreparedOutput):
        return output.path
    return os.fspath(output) if output is not None else None


def _write_turns(workers: int, writer, tracer) -> WriteTurns | None:
    """With workers and only a classic pcap output, its writes take turns by themselves
    (fastpath._pcap.WriteTurns): a worker whose chunk is ready writes it as soon as the chunk
    before is written, waiting and writing without the GIL. Through a stage's Python turn it
    waited about 40 us a chunk, mostly for the GIL held by the worker that wrote last."""
    if workers < 2 or writer is None or tracer is not None or writer.info.format != "pcap":
        return None
    return WriteTurns()


def _workers(threads: bool, reader, writer, tracer) -> int:
    """How many workers carry the chunks: one unless every file is a regular file."""
    if not threads or not reader.regular_file:
        return 1
    if any(out is not None and not out.regular_file for out in (writer, tracer)):
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(_STAGES, cpus))


def _write(writer, batch, result) -> None:
    """Kept packets in order, each REJECT's ICMP reply right after the rejected packet."""
    start = 0
    for index, reply in sorted(result.replies.items()):
        writer.write_batch(batch, result.verdicts, start, index + 1)
        writer.write_packet(batch.timestamps_ns[index], reply)
        start = index + 1
    writer.write_batch(batch, result.verdicts, start, batch.count)


def _fill_counts(stats: ReplayStats, before: dict, after: dict, maps) -> None:
    """The counts of this replay: `before` and `after` are the engine's raw counters (services
    and backends as lists in map order); only the services and backends that moved are named,
    as Dataplane.counters() names them (10,000 backends are mostly zeros)."""
    def delta(section: str) -> dict[str, int]:
        old = before[section]
        return {name: count - old.get(name, 0) for name, count in after[section].items()}

    def moved(section: str, objects, label) -> dict[str, int]:
        old, new = before[section], after[section]
        deltas = list(map(sub, new, chain(old, repeat(0, len(new) - len(old)))))
        return {label(objects[i]): deltas[i] for i in compress(range(len(deltas)), deltas)}

    stats.services = moved("services", maps.services, service_label)
    stats.backends = moved("backends", maps.backends, attrgetter("name"))
    stats.verdicts = delta("verdicts")
    stats.reasons = delta("reasons")
    stats.conntrack = delta("conntrack")
    stats.conntrack["entries"] = after["conntrack"]["entries"]
    if after.get("affinity"):
        stats.affinity = delta("affinity")
        stats.affinity["entries"] = after["affinity"]["entries"]

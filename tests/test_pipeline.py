"""fastpath.pipeline (stages in order over worker threads) and replay's workers: same output,
same errors, and no thread left behind."""
from __future__ import annotations

import errno
import functools
import os
import random
import threading
import time

import pytest
from test_replay import write_pcap
from traffic import random_maps, random_traffic  # tests/: the differential tests' traffic

from fastpath import Dataplane, replay, replaying
from fastpath._pcap import WriteTurns
from fastpath.capture import CaptureError, CaptureWriter, open_capture
from fastpath.pipeline import run_in_order


def _no_worker_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("fastpath-")]


# -- run_in_order ----------------------------------------------------------------------------

class _Recorder:
    """Stages that log (stage, item, thread name) and can be told to fail or to wait."""

    STAGES = ("produce", "core", "write")

    def __init__(self, items: int, fail: dict | None = None, hooks: dict | None = None):
        self.items = items
        self.fail = fail or {}  # (stage, item) -> exception to raise there
        self.hooks = hooks or {}  # (stage, item) -> callable run first
        self.log: list[tuple[str, int, str]] = []
        self._next = 0

    def _step(self, stage: str, item: int) -> None:
        hook = self.hooks.get((stage, item))
        if hook is not None:
            hook()
        self.log.append((stage, item, threading.current_thread().name))
        if (stage, item) in self.fail:
            raise self.fail[(stage, item)]

    def produce(self):
        if self._next == self.items:
            return None
        item, self._next = self._next, self._next + 1
        self._step("produce", item)
        return item

    def core(self, item):
        self._step("core", item)
        return item

    def write(self, item):
        self._step("write", item)

    def run(self, workers: int) -> None:
        run_in_order(self.produce, (self.core, self.write), workers)

    def seen(self, stage: str) -> list[int]:
        return [item for name, item, _ in self.log if name == stage]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_each_stage_takes_the_items_in_order_and_each_item_keeps_its_worker(workers):
    recorder = _Recorder(200)
    recorder.run(workers)
    for stage in _Recorder.STAGES:
        assert recorder.seen(stage) == list(range(200))
    carriers: dict[int, set[str]] = {}
    for _, item, thread in recorder.log:
        carriers.setdefault(item, set()).add(thread)
    assert all(len(threads) == 1 for threads in carriers.values())
    used = set().union(*carriers.values())
    assert threading.current_thread().name in used
    assert len(used) == workers
    assert _no_worker_threads()


def test_the_stages_of_different_items_overlap():
    """Item 0's write waits until item 1 has been produced and run through the core: a runner
    that finished one item before starting the next would time out here."""
    core_ran = threading.Event()
    reached = []

    def wait_for_item_1():
        reached.append(core_ran.wait(timeout=10))

    recorder = _Recorder(4, hooks={("write", 0): wait_for_item_1, ("core", 1): core_ran.set})
    recorder.run(2)
    assert reached == [True]
    assert recorder.seen("write") == [0, 1, 2, 3]


def test_a_failure_lets_the_items_before_it_finish_and_stops_those_after():
    # Three workers: item 5 fails in the core while item 3 is writing (its write waits for
    # the failure) and item 4 waits for its turn to write: both still finish.
    item_5_failed = threading.Event()

    def fail_5():
        item_5_failed.set()
        raise CaptureError("bad packet 5")

    def write_3():  # until item 5's failure is in (the pause only lets it be registered)
        item_5_failed.wait(timeout=10)
        time.sleep(0.05)

    recorder = _Recorder(50, hooks={("core", 5): fail_5, ("write", 3): write_3})
    with pytest.raises(CaptureError, match="bad packet 5"):
        recorder.run(3)
    assert item_5_failed.is_set()
    assert recorder.seen("write") == [0, 1, 2, 3, 4]
    assert recorder.seen("core") == [0, 1, 2, 3, 4]  # (item 5's raised before its log)
    assert set(recorder.seen("produce")) <= set(range(8))
    assert _no_worker_threads()


def test_the_earliest_items_failure_is_raised_whichever_came_first():
    # Item 4 fails in the core first; item 3, already past the core, then fails in its write:
    # one thread would have failed at item 3's write, so that is the error raised.
    item_4_failed = threading.Event()

    def fail_4():
        item_4_failed.set()
        raise OSError(errno.EIO, "core of item 4")

    recorder = _Recorder(
        20,
        fail={("write", 3): OSError(errno.ENOSPC, "No space left on device")},
        hooks={("core", 4): fail_4, ("write", 3): lambda: item_4_failed.wait(timeout=10)},
    )
    with pytest.raises(OSError, match="No space left"):
        recorder.run(2)
    assert item_4_failed.is_set()
    assert recorder.seen("write") == [0, 1, 2, 3]
    assert _no_worker_threads()


@pytest.mark.parametrize("stage", _Recorder.STAGES)
@pytest.mark.parametrize("workers", [1, 2])
def test_an_interrupt_on_the_callers_thread_stops_every_worker(stage, workers):
    def interrupt():
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt

    # The caller's thread (worker 0) carries items 0, workers, 2 * workers, ...
    recorder = _Recorder(10**6, hooks={(stage, 2 * workers): interrupt})
    with pytest.raises(KeyboardInterrupt):
        recorder.run(workers)
    assert len(recorder.seen("write")) < 10
    assert _no_worker_threads()


def test_a_producer_error_comes_after_the_items_before_it():
    recorder = _Recorder(10, fail={("produce", 7): CaptureError("damaged record")})
    with pytest.raises(CaptureError, match="damaged record"):
        recorder.run(3)
    assert recorder.seen("write") == list(range(7))
    assert _no_worker_threads()


def test_no_items_and_bad_worker_counts():
    recorder = _Recorder(0)
    recorder.run(2)
    assert recorder.log == []
    with pytest.raises(ValueError, match="workers"):
        run_in_order(lambda: None, (), 0)
    assert _no_worker_threads()


# -- writes taking turns without the GIL (fastpath._pcap.WriteTurns) ------------------------

def _turns_recorder(items: int, path, turns: WriteTurns, hooks: dict | None = None):
    """A _Recorder whose items end in finish(): item k's bytes written to `path` in its turn."""
    recorder = _Recorder(items, hooks=hooks)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)

    def finish(item):
        recorder._step("finish", item)
        turns.write(item, fd, b"%d," % item)

    def run(workers):
        try:
            run_in_order(recorder.produce, (recorder.core,), workers, finish=finish,
                         abort=turns.fail)
        finally:
            os.close(fd)

    return recorder, run


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_finish_step_ordered_by_write_turns_writes_every_item_in_order(tmp_path, workers):
    recorder, run = _turns_recorder(300, tmp_path / "out", WriteTurns())
    run(workers)
    assert (tmp_path / "out").read_bytes() == b"".join(b"%d," % i for i in range(300))
    assert recorder.seen("core") == list(range(300))
    threads = {thread for name, _, thread in recorder.log if name == "finish"}
    assert len(threads) == workers
    assert _no_worker_threads()


def test_a_failure_releases_the_workers_waiting_for_a_turn(tmp_path):
    """Item 4 fails in the core while item 3's finish waits for item 2's write, which waits
    for the failure: abort() lets both go, and the run raises item 4's error."""
    turns = WriteTurns()
    item_4_failed = threading.Event()

    def fail_4():
        item_4_failed.set()
        raise CaptureError("bad packet 4")

    recorder, run = _turns_recorder(
        50, tmp_path / "out", turns,
        hooks={("core", 4): fail_4, ("finish", 2): lambda: item_4_failed.wait(timeout=10)})
    with pytest.raises(CaptureError, match="bad packet 4"):
        run(3)
    assert (tmp_path / "out").read_bytes() == b"0,1,"  # item 2 on: the run had failed
    assert not turns.wait(5) and not turns.write(5, 1, b"late")
    assert _no_worker_threads()


def test_a_failed_write_in_turn_raises_and_ends_the_run():
    turns = WriteTurns()
    read_end, write_end = os.pipe()
    os.close(read_end)  # EPIPE (SIGPIPE is ignored by Python)
    with pytest.raises(OSError) as caught:
        turns.write(0, write_end, b"x")
    os.close(write_end)
    assert caught.value.errno == errno.EPIPE
    assert not turns.wait(1)
    assert turns.wait(0) is False  # no turn comes any more, not even the failed one's


def test_turns_pass_by_done_for_items_written_otherwise(tmp_path):
    turns = WriteTurns()
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    assert turns.wait(0)
    os.write(fd, b"zero,")
    turns.done(0)
    writer = threading.Thread(target=turns.write, args=(2, fd, b"two"))
    writer.start()
    time.sleep(0.05)  # item 2 waits for item 1
    assert (tmp_path / "out").read_bytes() == b"zero,"
    assert turns.write(1, fd, b"one,")
    writer.join()
    os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"zero,one,two"


# -- replay with and without threads ---------------------------------------------------------

def _capture(path, seed: int, packets: int):
    """Writes random traffic for random maps to `path`; returns the maps."""
    rng = random.Random(seed)
    maps = random_maps(rng)
    write_pcap(path, random_traffic(maps, rng, packets))
    return maps


@pytest.fixture
def two_cpus(monkeypatch):
    """Replay sees two usable CPUs (two workers), whatever the machine has."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})


@pytest.fixture
def small_chunks(monkeypatch):
    """Reads in 4 KiB chunks, so a short capture spans many read buffers (and reuses them)."""
    monkeypatch.setattr(replaying, "open_capture", functools.partial(open_capture, chunk_size=4096))


@pytest.mark.parametrize("traced", [True, False], ids=["traced", "writes-in-turn"])
@pytest.mark.parametrize("cpus", [2, 3, 8])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_threads_change_nothing_in_output_trace_or_stats(tmp_path, small_chunks, monkeypatch,
                                                        seed, cpus, traced):
    """With a trace the write stage takes Python turns; without one, the writes take turns by
    themselves (WriteTurns): both give one thread's output."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    maps = _capture(tmp_path / "in.pcap", seed=seed, packets=1200)
    results = {}
    for threads in (False, True):
        out, trace = tmp_path / f"out-{threads}.pcap", tmp_path / f"trace-{threads}.jsonl"
        stats = replay(tmp_path / "in.pcap", out, Dataplane(maps), batch_packets=7,
                       trace=trace if traced else None, threads=threads).to_dict()
        for varying in ("elapsed_s", "packets_per_second", "output", "trace"):
            del stats[varying]
        results[threads] = (out.read_bytes(), trace.read_bytes() if traced else b"", stats)
    single, threaded = results[False], results[True]
    assert single[2]["verdicts"].get("REJECT") and single[2]["verdicts"].get("DROP")
    assert threaded[0] == single[0]
    assert threaded[1] == single[1]
    assert threaded[2] == single[2]
    assert _no_worker_threads()


def test_writes_in_turn_carry_verbatim_and_rebuilt_batches(tmp_path, monkeypatch, two_cpus):
    """Batches that go out as they were read are written in turn without the GIL, the others
    (dropped or rejected packets) by Python in their turn: the same bytes as one thread."""
    maps = _capture(tmp_path / "in.pcap", seed=9, packets=3000)
    ways = []

    def recording(method):
        real = getattr(CaptureWriter, method)

        def write(self, *args, **kwargs):
            ways.append(method)
            return real(self, *args, **kwargs)
        return write

    for method in ("write_verbatim_in_turn", "write_batch"):
        monkeypatch.setattr(CaptureWriter, method, recording(method))
    replay(tmp_path / "in.pcap", tmp_path / "one.pcap", Dataplane(maps), threads=False,
           batch_packets=5)
    ways.clear()
    replay(tmp_path / "in.pcap", tmp_path / "two.pcap", Dataplane(maps), batch_packets=5)
    assert set(ways) == {"write_verbatim_in_turn", "write_batch"}
    assert (tmp_path / "two.pcap").read_bytes() == (tmp_path / "one.pcap").read_bytes()


def test_progress_reports_the_position_of_the_batch_just_processed(tmp_path, small_chunks,
                                                                   two_cpus):
    maps = _capture(tmp_path / "in.pcap", seed=4, packets=800)
    seen = {}
    for threads in (False, True):
        calls = []
        replay(tmp_path / "in.pcap", None, Dataplane(maps), batch_packets=50, threads=threads,
               progress=lambda done, total, packets: calls.append((done, total, packets)))
        seen[threads] = calls
    assert seen[True] == seen[False]
    assert seen[True][-1][0] == seen[True][-1][1] == (tmp_path / "in.pcap").stat().st_size


def test_a_damaged_record_fails_the_threaded_replay_and_leaves_no_output(tmp_path, small_chunks,
                                                                        two_cpus):
    maps = _capture(tmp_path / "in.pcap", seed=5, packets=800)
    data = bytearray((tmp_path / "in.pcap").read_bytes())
    # Record 501's captured length becomes absurd: everything after it is unreadable.
    offset = 24
    for _ in range(500):
        offset += 16 + int.from_bytes(data[offset + 8:offset + 12], "little")
    data[offset + 8:offset + 12] = (10**7).to_bytes(4, "little")
    (tmp_path / "bad.pcap").write_bytes(bytes(data))
    errors = {}
    for threads in (False, True):
        out = tmp_path / f"out-{threads}.pcap"
        with pytest.raises(CaptureError) as caught:
            replay(tmp_path / "bad.pcap", out, Dataplane(maps), batch_packets=64, threads=threads)
        errors[threads] = str(caught.value)
        assert not out.exists()
    assert errors[True] == errors[False] and "damaged record" in errors[True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pcap", "in.pcap"]
    assert _no_worker_threads()


def test_a_failed_write_fails_the_replay_and_leaves_nothing(tmp_path, small_chunks, two_cpus,
                                                             monkeypatch):
    maps = _capture(tmp_path / "in.pcap", seed=6, packets=800)
    calls = []

    def failing(real):
        def write(self, *args, **kwargs):
            calls.append(threading.current_thread().name)
            if len(calls) == 15:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *args, **kwargs)
        return write

    for method in ("write_batch", "write_verbatim", "write_verbatim_in_turn"):
        monkeypatch.setattr(CaptureWriter, method, failing(getattr(CaptureWriter, method)))
    with pytest.raises(OSError, match="No space left"):
        replay(tmp_path / "in.pcap", tmp_path / "out.pcap", Dataplane(maps), batch_packets=20)
    assert len(calls) == 15
    assert set(calls) == {"MainThread", "fastpath-worker-1"}  # both workers wrote
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pcap"]
    assert _no_worker_threads()


def test_an_interrupt_stops_the_stages_and_leaves_nothing(tmp_path, small_chunks, two_cpus):
    maps = _capture(tmp_path / "in.pcap", seed=7, packets=800)

    def interrupt(done, total, packets):
        if packets > 200:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replay(tmp_path / "in.pcap", tmp_path / "out.pcap", Dataplane(maps), batch_packets=20,
               progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pcap"]
    assert _no_worker_threads()


def test_pipes_devices_and_streams_run_on_the_callers_thread(tmp_path, two_cpus, monkeypatch):
    """A FIFO capture, a device output and a trace to a caller's stream can block a stage
    indefinitely: no worker for them. Regular files get the second worker."""
    maps = _capture(tmp_path / "in.pcap", seed=8, packets=300)
    expected = replay(tmp_path / "in.pcap", tmp_path / "expected.pcap", Dataplane(maps)).to_dict()
    started = []
    real_init = threading.Thread.__init__

    def recording(self, *args, **kwargs):
        started.append(kwargs.get("name"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "__init__", recording)
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes((tmp_path / "in.pcap").read_bytes()))
    feeder.start()
    got = replay(fifo, tmp_path / "out.pcap", Dataplane(maps)).to_dict()
    feeder.join()
    assert started == [None]  # the feeder only
    assert (tmp_path / "out.pcap").read_bytes() == (tmp_path / "expected.pcap").read_bytes()
    assert got["verdicts"] == expected["verdicts"]

    started.clear()
    replay(tmp_path / "in.pcap", "/dev/null", Dataplane(maps))
    assert started == []
    with open(tmp_path / "trace.jsonl", "w") as stream:
        replay(tmp_path / "in.pcap", tmp_path / "out.pcap", Dataplane(maps), trace=stream)
    assert started == []
    replay(tmp_path / "in.pcap", tmp_path / "out.pcap", Dataplane(maps),
           trace=tmp_path / "trace.jsonl")
    replay(tmp_path / "in.pcap", None, Dataplane(maps))
    assert started == ["fastpath-worker-1", "fastpath-worker-1"]

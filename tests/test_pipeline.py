"""fastpath.pipeline (reading ahead, writing behind) and replay's threaded stages: same output,
same errors, and no thread left behind."""
from __future__ import annotations

import errno
import functools
import os
import random
import threading

import pytest
from test_replay import write_pcap
from traffic import random_maps, random_traffic  # tests/: the differential tests' traffic

from fastpath import Dataplane, replay, replaying
from fastpath.capture import CaptureError, CaptureWriter, open_capture
from fastpath.pipeline import ReadAhead, WriteBehind


def _no_worker_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("fastpath-")]


# -- ReadAhead -------------------------------------------------------------------------------

def test_read_ahead_keeps_order_and_pairs_each_item_with_the_probe_after_it():
    produced = []

    def source():
        for i in range(50):
            produced.append(i)
            yield i

    with ReadAhead(source(), depth=3, probe=lambda: len(produced)) as ahead:
        got = list(ahead)
    assert [item for item, _ in got] == list(range(50))
    # The probe runs right after its item: it saw that item produced, and no later one.
    assert [seen for _, seen in got] == list(range(1, 51))
    assert _no_worker_threads()


def test_read_ahead_raises_the_source_error_after_the_items_before_it():
    def source():
        yield "a"
        yield "b"
        raise CaptureError("damaged record")

    got = []
    with ReadAhead(source()) as ahead, pytest.raises(CaptureError, match="damaged record"):
        for item, _ in ahead:
            got.append(item)
    assert got == ["a", "b"]


def test_read_ahead_closed_early_stops_and_closes_the_source_on_its_thread():
    closed_on = []

    def source():
        try:
            for i in range(10**6):
                yield i
        finally:
            closed_on.append(threading.current_thread().name)

    with ReadAhead(source(), depth=2) as ahead:
        for item, _ in ahead:
            if item == 5:
                break
    assert closed_on == ["fastpath-read-ahead"]
    assert _no_worker_threads()


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        ReadAhead([], depth=0)
    with pytest.raises(ValueError, match="depth"):
        WriteBehind(print, depth=0)


# -- WriteBehind -----------------------------------------------------------------------------

def test_write_behind_writes_every_item_in_order_on_its_thread():
    written, threads = [], set()

    def write(item):
        written.append(item)
        threads.add(threading.current_thread().name)

    with WriteBehind(write, depth=2) as behind:
        for i in range(200):
            behind.submit(i)
        behind.finish()
    assert written == list(range(200))
    assert threads == {"fastpath-write-behind"}
    assert _no_worker_threads()


def test_a_failed_write_is_raised_once_and_stops_the_writing():
    written = []

    def write(item):
        if item == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(item)

    behind = WriteBehind(write, depth=1)
    with pytest.raises(OSError, match="No space left"):
        for i in range(100):
            behind.submit(i)
        behind.finish()
    behind.finish()  # raised once: finishing again is quiet
    assert written == [0, 1, 2]


def test_closing_drops_what_waits():
    gate = threading.Event()
    written = []

    def write(item):
        gate.wait()
        written.append(item)

    behind = WriteBehind(write, depth=4)
    for i in range(3):
        behind.submit(i)
    gate.set()
    behind.close()
    assert written in ([], [0])  # at most the write already under way
    assert _no_worker_threads()


# -- replay with and without threads ---------------------------------------------------------

def _capture(path, seed: int, packets: int):
    """Writes random traffic for random maps to `path`; returns the maps."""
    rng = random.Random(seed)
    maps = random_maps(rng)
    write_pcap(path, random_traffic(maps, rng, packets))
    return maps


@pytest.fixture
def small_chunks(monkeypatch):
    """Reads in 4 KiB chunks, so a short capture spans many read buffers (and reuses them)."""
    monkeypatch.setattr(replaying, "open_capture", functools.partial(open_capture, chunk_size=4096))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_threads_change_nothing_in_output_trace_or_stats(tmp_path, small_chunks, seed):
    maps = _capture(tmp_path / "in.pcap", seed=seed, packets=1200)
    results = {}
    for threads in (False, True):
        out, trace = tmp_path / f"out-{threads}.pcap", tmp_path / f"trace-{threads}.jsonl"
        stats = replay(tmp_path / "in.pcap", out, Dataplane(maps), batch_packets=7,
                       trace=trace, threads=threads).to_dict()
        for varying in ("elapsed_s", "packets_per_second", "output", "trace"):
            del stats[varying]
        results[threads] = (out.read_bytes(), trace.read_bytes(), stats)
    single, threaded = results[False], results[True]
    assert single[2]["verdicts"].get("REJECT") and single[2]["verdicts"].get("DROP")
    assert threaded[0] == single[0]
    assert threaded[1] == single[1]
    assert threaded[2] == single[2]
    assert _no_worker_threads()


def test_progress_reports_the_position_of_the_batch_just_processed(tmp_path, small_chunks):
    maps = _capture(tmp_path / "in.pcap", seed=4, packets=800)
    seen = {}
    for threads in (False, True):
        calls = []
        replay(tmp_path / "in.pcap", None, Dataplane(maps), batch_packets=50, threads=threads,
               progress=lambda done, total, packets: calls.append((done, total, packets)))
        seen[threads] = calls
    assert seen[True] == seen[False]
    assert seen[True][-1][0] == seen[True][-1][1] == (tmp_path / "in.pcap").stat().st_size


def test_a_damaged_record_fails_the_threaded_replay_and_leaves_no_output(tmp_path, small_chunks):
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


def test_a_failed_write_fails_the_replay_and_leaves_nothing(tmp_path, small_chunks, monkeypatch):
    maps = _capture(tmp_path / "in.pcap", seed=6, packets=800)
    calls = []
    real = CaptureWriter.write_batch

    def failing(self, *args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CaptureWriter, "write_batch", failing)
    with pytest.raises(OSError, match="No space left"):
        replay(tmp_path / "in.pcap", tmp_path / "out.pcap", Dataplane(maps), batch_packets=20)
    assert set(calls) == {"fastpath-write-behind"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pcap"]
    assert _no_worker_threads()


def test_an_interrupt_stops_the_stages_and_leaves_nothing(tmp_path, small_chunks):
    maps = _capture(tmp_path / "in.pcap", seed=7, packets=800)

    def interrupt(done, total, packets):
        if packets > 200:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replay(tmp_path / "in.pcap", tmp_path / "out.pcap", Dataplane(maps), batch_packets=20,
               progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pcap"]
    assert _no_worker_threads()


def test_pipes_and_devices_run_on_the_callers_thread(tmp_path, monkeypatch):
    """A FIFO capture and a device output can block a stage indefinitely: no worker for them."""
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
    assert started == [None, "fastpath-write-behind"]  # the feeder, then the writer only
    assert (tmp_path / "out.pcap").read_bytes() == (tmp_path / "expected.pcap").read_bytes()
    assert got["verdicts"] == expected["verdicts"]

    started.clear()
    replay(tmp_path / "in.pcap", "/dev/null", Dataplane(maps))
    assert started == ["fastpath-read-ahead"]

"""Capture I/O: classic pcap through fastpath._pcap, pcapng through scapy, atomic output."""
from __future__ import annotations

import dataclasses
import errno
import os
import random
import struct
import subprocess
import sys
from array import array
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath import _pcap
from fastpath.atomicfile import prepare_output
from fastpath.capture import (
    HUGE_PAGE,
    Batch,
    CaptureError,
    CaptureInfo,
    open_capture,
    open_output,
    packet_buffer,
)

DROP, PASS = 3, 0

# (byte order, nanosecond) -> magic value, written in that byte order
VARIANTS = [("<", False), (">", False), ("<", True), (">", True)]
VARIANT_IDS = ["le-us", "be-us", "le-ns", "be-ns"]


def make_packets(n: int, seed: int = 1, nanosecond: bool = True) -> list[tuple[int, bytes, int]]:
    """(ts_ns, data, wire_len): varied sizes (empty, tiny, MTU-sized, jumbo), some snaplen-cut."""
    rng = random.Random(seed)
    packets = []
    ts = 1_700_000_000 * 10**9 + 123_456_789
    for i in range(n):
        size = rng.choice([0, 1, 14, 60, 61, 74, 590, 1514, 9000])
        data = bytes(rng.getrandbits(8) for _ in range(size))
        wire = size + rng.choice([0, 0, 0, 100])
        ts += rng.randrange(0, 3 * 10**9)
        packets.append((ts if nanosecond else ts // 1000 * 1000, data, wire))
    return packets


def pcap_bytes(packets, byteorder="<", nanosecond=False, snaplen=65535, linktype=1) -> bytes:
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    out = [struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts, data, *wire in packets:
        sec, frac = divmod(ts, 10**9)
        if not nanosecond:
            frac //= 1000
        out.append(struct.pack(byteorder + "IIII", sec, frac, len(data), wire[0] if wire else len(data)))
        out.append(data)
    return b"".join(out)


def pcapng_bytes(packets, linktypes=(1,), tsresol_exp=9, iface_of=lambda i: 0) -> bytes:
    """A little-endian pcapng: one IDB per link type, EPBs with 10**-tsresol_exp timestamps."""
    def block(btype, body):
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for linktype in linktypes:
        opts = struct.pack("<HHB3x", 9, 1, tsresol_exp) + struct.pack("<HH", 0, 0)
        out.append(block(1, struct.pack("<HHI", linktype, 0, 262144) + opts))
    for i, (ts, data, *wire) in enumerate(packets):
        t = ts * 10**tsresol_exp // 10**9
        out.append(block(6, struct.pack("<IIIII", iface_of(i), t >> 32, t & 0xFFFFFFFF, len(data),
                                        wire[0] if wire else len(data)) + data))
    return b"".join(out)


def read_all(path, **kwargs) -> tuple[list[tuple[int, bytes, int]], object]:
    max_packets = kwargs.pop("max_packets", 65536)
    with open_capture(path, **kwargs) as reader:
        got = []
        for batch in reader.batches(max_packets=max_packets):
            assert batch.count == len(batch.lengths) == len(batch.wire_lengths) == len(batch.timestamps_ns)
            for i in range(batch.count):
                got.append((batch.timestamps_ns[i], batch.packet(i), batch.wire_lengths[i]))
        return got, reader


def copy_capture(src, dst, drop=lambda i: False, max_packets=65536, **kwargs) -> None:
    n = 0
    with open_capture(src, **kwargs) as reader, open_output(dst, like=reader) as writer:
        for batch in reader.batches(max_packets=max_packets):
            verdicts = array("B", [DROP if drop(n + i) else PASS for i in range(batch.count)])
            writer.write_batch(batch, verdicts)
            n += batch.count


# --- classic pcap ---------------------------------------------------------------------------

@pytest.mark.parametrize(("byteorder", "nanosecond"), VARIANTS, ids=VARIANT_IDS)
def test_classic_round_trip_is_byte_identical(tmp_path, byteorder, nanosecond):
    packets = make_packets(300, nanosecond=nanosecond)
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, byteorder, nanosecond, linktype=113))
    got, reader = read_all(src, chunk_size=4096, max_packets=17)
    assert got == packets
    assert (reader.format, reader.linktype, reader.snaplen) == ("pcap", 113, 65535)
    assert (reader.byteorder, reader.nanosecond) == (byteorder, nanosecond)
    assert reader.truncated_tail is None and reader.truncated_bytes == 0
    assert reader.position_bytes == reader.size_bytes == src.stat().st_size
    copy_capture(src, tmp_path / "out.pcap", chunk_size=4096)
    assert (tmp_path / "out.pcap").read_bytes() == src.read_bytes()


@pytest.mark.parametrize(("byteorder", "nanosecond"), VARIANTS, ids=VARIANT_IDS)
def test_dropping_removes_exactly_those_packets(tmp_path, byteorder, nanosecond):
    packets = make_packets(200, seed=2, nanosecond=nanosecond)
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, byteorder, nanosecond))
    copy_capture(src, tmp_path / "out.pcap", drop=lambda i: i % 3 == 1, chunk_size=3000, max_packets=7)
    kept = [p for i, p in enumerate(packets) if i % 3 != 1]
    assert (tmp_path / "out.pcap").read_bytes() == pcap_bytes(kept, byteorder, nanosecond)


def test_drop_everything_leaves_a_valid_empty_capture(tmp_path):
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(make_packets(20)))
    copy_capture(src, tmp_path / "out.pcap", drop=lambda i: True)
    assert (tmp_path / "out.pcap").read_bytes() == src.read_bytes()[:24]
    assert read_all(tmp_path / "out.pcap")[0] == []


def test_non_canonical_timestamp_fields_are_copied_verbatim(tmp_path):
    # A microsecond field >= 10**6 cannot be re-encoded from ns; the writer copies it as it was.
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    record = struct.pack("<IIII", 1_700_000_000, 2_500_000, 3, 3) + b"abc"
    src = tmp_path / "in.pcap"
    src.write_bytes(header + record)
    got, _ = read_all(src)
    assert got == [(1_700_000_002_500_000_000, b"abc", 3)]
    copy_capture(src, tmp_path / "out.pcap")
    assert (tmp_path / "out.pcap").read_bytes() == src.read_bytes()


# The last second a 32-bit seconds field holds (2106-02-07T06:28:15Z), with a microsecond field of
# 2**32 - 1: a timestamp past 2106 that a classic pcap record still holds.
LAST_SECOND = 0xFFFFFFFF
PAST_2106_NS = LAST_SECOND * 10**9 + 0xFFFFFFFF * 1000


def _past_2106_capture(path) -> bytes:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    records = (struct.pack("<IIII", 1_700_000_000, 5, 3, 3) + b"abc"
               + struct.pack("<IIII", LAST_SECOND, 0xFFFFFFFF, 2, 2) + b"de")
    path.write_bytes(header + records)
    return records


def test_timestamp_past_2106_in_the_last_seconds_fraction_is_written_back(tmp_path):
    src = tmp_path / "in.pcap"
    records = _past_2106_capture(src)
    got, _ = read_all(src)
    assert got == [(1_700_000_000_000_005_000, b"abc", 3), (PAST_2106_NS, b"de", 2)]
    copy_capture(src, tmp_path / "same.pcap")
    assert (tmp_path / "same.pcap").read_bytes() == src.read_bytes()
    # Another encoding that can hold it: the fraction field carries the excess, as it came.
    with open_capture(src) as reader:
        info = dataclasses.replace(reader.info, byteorder=">")
        with open_output(tmp_path / "be.pcap", like=info) as writer:
            for batch in reader.batches():
                writer.write_batch(batch)
            writer.write_packet(PAST_2106_NS, b"reply")
    body = (tmp_path / "be.pcap").read_bytes()[24:]
    assert body[:19] == struct.pack(">IIII", 1_700_000_000, 5, 3, 3) + b"abc"
    assert body[19:37] == struct.pack(">IIII", LAST_SECOND, 0xFFFFFFFF, 2, 2) + b"de"
    assert read_all(tmp_path / "be.pcap")[0] == got + [(PAST_2106_NS, b"reply", 5)]
    assert len(records) == 37


def test_timestamp_no_pcap_record_holds_is_a_one_line_capture_error(tmp_path):
    src = tmp_path / "in.pcap"
    _past_2106_capture(src)
    out = tmp_path / "ns.pcap"
    with open_capture(src) as reader:
        info = dataclasses.replace(reader.info, nanosecond=True)  # 4294967295000 ns > 2**32
        with pytest.raises(CaptureError) as error:
            with open_output(out, like=info) as writer:
                for batch in reader.batches(max_packets=1):
                    writer.write_batch(batch)
    message = str(error.value)
    assert message.startswith(f"{src}: packet 2 cannot be written to {out}: ")
    assert "\n" not in message
    assert str(PAST_2106_NS) in message
    assert not out.exists() and _leftovers(tmp_path) == []
    info = CaptureInfo("pcap", 1, 65535, False, "<")
    with open_output(tmp_path / "x.pcap", like=info) as writer:
        with pytest.raises(CaptureError, match=r"x\.pcap: cannot write record 1: "):
            writer.write_packet(LAST_SECOND * 10**9 + 2**32 * 1000, b"x")


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 17, 100, 1515, 9016, 9017, 1 << 20])
def test_records_cut_by_chunk_ends_are_carried_over(tmp_path, chunk_size):
    packets = make_packets(120, seed=3)
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, ">", True))
    for max_packets in (1, 5, 65536):
        got, reader = read_all(src, chunk_size=chunk_size, max_packets=max_packets)
        assert got == packets
        assert reader.truncated_tail is None
    copy_capture(src, tmp_path / "out.pcap", chunk_size=chunk_size)
    assert (tmp_path / "out.pcap").read_bytes() == src.read_bytes()


def test_batches_keep_headers_in_place_and_stay_valid(tmp_path):
    packets = make_packets(50, seed=4)
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, "<", True))
    with open_capture(src, chunk_size=2000) as reader:
        batches = list(reader.batches(max_packets=4))  # held across chunk refills
    flat = [p for b in batches for p in b.packets()]
    assert flat == [(ts, data) for ts, data, _ in packets]
    for batch in batches:
        assert batch.header_flags == _pcap.HDR_NANOSECOND
        for i in range(batch.count):
            header = batch.buf[batch.offsets[i] - 16 : batch.offsets[i]]
            sec, frac, incl, orig = struct.unpack("<IIII", header)
            assert (sec * 10**9 + frac, incl, orig) == (
                batch.timestamps_ns[i], batch.lengths[i], batch.wire_lengths[i])


def test_in_place_rewrites_reach_the_output(tmp_path):
    packets = [(10**18 + i, bytes([i]) * 20, 20) for i in range(10)]
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, nanosecond=True))
    with open_capture(src) as reader, open_output(tmp_path / "out.pcap", like=reader) as writer:
        for batch in reader.batches():
            for i in range(batch.count):
                batch.buf[batch.offsets[i]] = 0xEE  # what the core does: rewrite in place
            writer.write_batch(batch)
    got, _ = read_all(tmp_path / "out.pcap")
    assert [d for _, d, _ in got] == [b"\xee" + bytes([i]) * 19 for i in range(10)]


def _small_packets(n: int, seed: int) -> list[tuple[int, bytes, int]]:
    rng = random.Random(seed)
    return [(10**18 + i * 1000, rng.randbytes(rng.randrange(40, 600)), 600) for i in range(n)]


def test_streaming_reads_reuse_two_buffers_and_held_batches_stay_valid(tmp_path, monkeypatch):
    packets = _small_packets(300, seed=16)
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, nanosecond=True))
    capture_module = sys.modules["fastpath.capture"]
    chunks = []  # the read buffers made, by size

    def counting(*args):
        if args and args[0] >= 4096:
            chunks.append(args[0])
        return bytearray(*args)

    monkeypatch.setattr(capture_module, "bytearray", counting, raising=False)
    with open_capture(src, chunk_size=4096) as reader:
        got = [p for batch in reader.batches(max_packets=5) for p in batch.packets()]
    assert got == [(ts, data) for ts, data, _ in packets]
    assert len(chunks) == 2  # then they take turns, over ~40 chunks

    chunks.clear()
    with open_capture(src, chunk_size=4096) as reader:
        batches = reader.batches(max_packets=5)
        held = next(batches)  # keeps the first buffer out of the turns
        want = list(held.packets())
        got = [p for batch in batches for p in batch.packets()]
        assert list(held.packets()) == want
    assert want + got == [(ts, data) for ts, data, _ in packets]
    assert len(chunks) == 3


def _index_arrays(length: int) -> tuple[array, array, array, array]:
    return (array("Q", [7] * length), array("I", [7] * length), array("I", [7] * length),
            array("Q", [7] * length))


@pytest.mark.parametrize("guess", [0, 1, 63, 299, 300, 301, 5000])
def test_scan_records_fills_the_arrays_given_whatever_their_length(guess):
    buf = bytearray(pcap_bytes(make_packets(300, seed=21), "<", True))
    flags = _pcap.HDR_NANOSECOND
    for max_packets in (65536, 7):  # every record; a limit reached (SCAN_FULL)
        want = _pcap.scan_records(buf, 24, len(buf), flags, 65535, max_packets)
        into = _index_arrays(guess)
        got = _pcap.scan_records(buf, 24, len(buf), flags, 65535, max_packets, into)
        assert all(array_got is given for array_got, given in zip(got, into))
        assert got == want
        assert len(got[0]) == (300 if max_packets > 300 else max_packets)


def test_scan_records_refuses_arrays_it_cannot_fill():
    buf = bytearray(pcap_bytes(make_packets(10, seed=22)))
    wrong = (array("I"), array("I"), array("I"), array("Q"))
    with pytest.raises(TypeError, match="typecodes"):
        _pcap.scan_records(buf, 24, len(buf), 0, 65535, 100, wrong)
    exported = _index_arrays(0)
    with memoryview(exported[0]), pytest.raises(BufferError):
        _pcap.scan_records(buf, 24, len(buf), 0, 65535, 100, exported)


def test_streaming_reads_refill_the_index_arrays_of_dropped_batches_only(tmp_path, monkeypatch):
    packets = _small_packets(300, seed=17)
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, nanosecond=True))
    scan = _pcap.scan_records
    reused = []  # per scan: whether it was given arrays to fill

    def recording(*args):
        reused.append(len(args) > 6 and args[6] is not None)
        return scan(*args)

    monkeypatch.setattr(_pcap, "scan_records", recording)
    with open_capture(src, chunk_size=4096) as reader:
        got = [p for batch in reader.batches(max_packets=5) for p in batch.packets()]
    assert got == [(ts, data) for ts, data, _ in packets]
    assert len(reused) >= 60 and reused.count(False) <= 2  # then they take turns

    reused.clear()
    with open_capture(src, chunk_size=4096) as reader:
        held = list(reader.batches(max_packets=5))  # nothing to reuse: every batch is held
    assert [p for batch in held for p in batch.packets()] == [(ts, d) for ts, d, _ in packets]
    assert len(reused) >= 60 and not any(reused)


@pytest.mark.parametrize("size", [0, 1, 4096, HUGE_PAGE // 2 - 1, HUGE_PAGE // 2, HUGE_PAGE,
                                  HUGE_PAGE + 1])
def test_packet_buffers_are_zeroed_writable_and_big_enough(size):
    view = memoryview(packet_buffer(size))
    assert len(view) >= size and not view.readonly and view.format == "B"
    assert view[:size] == bytes(size)
    if size >= HUGE_PAGE // 2 and sys.platform == "linux":
        assert len(view) % HUGE_PAGE == 0  # (whole huge pages)
    view[:size] = b"\xff" * size


def test_reads_into_huge_page_buffers_give_the_same_batches(tmp_path):
    packets = make_packets(400, seed=21)
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, nanosecond=True))

    def read(chunk_size):
        with open_capture(src, chunk_size=chunk_size) as reader:
            batches = [(type(b.buf), list(b.packets())) for b in reader.batches(max_packets=64)]
        return {kind.__name__ for kind, _ in batches}, [p for _, got in batches for p in got]

    (small_kinds, small), (large_kinds, large) = read(4096), read(HUGE_PAGE)
    assert small == large == [(ts, data) for ts, data, _ in packets]
    assert small_kinds == {"bytearray"}
    if sys.platform == "linux":
        assert large_kinds == {"mmap"}


def test_bytes_read_counts_captured_bytes(tmp_path):
    packets = make_packets(50, seed=17)
    (tmp_path / "a.pcap").write_bytes(pcap_bytes(packets))
    (tmp_path / "a.pcapng").write_bytes(pcapng_bytes(packets))
    for name in ("a.pcap", "a.pcapng"):
        _, reader = read_all(tmp_path / name, chunk_size=3000, max_packets=7)
        assert reader.bytes_read == sum(len(data) for _, data, _ in packets)


@pytest.mark.parametrize(("byteorder", "nanosecond"), VARIANTS, ids=VARIANT_IDS)
def test_verbatim_span_is_what_build_records_writes(tmp_path, byteorder, nanosecond):
    packets = make_packets(30, seed=18, nanosecond=nanosecond)
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, byteorder, nanosecond))
    with open_capture(src) as reader:
        (batch,) = reader.batches()
    flags = batch.header_flags
    arrays = (batch.buf, batch.offsets, batch.lengths, batch.wire_lengths, batch.timestamps_ns)
    keep = array("B", [PASS] * batch.count)
    for start, stop in [(0, 30), (0, 1), (7, 19), (29, 30)]:
        begin, end = _pcap.verbatim_span(*arrays, keep, flags, flags, start, stop)
        out = bytearray()
        nbytes, kept = _pcap.build_records(*arrays, keep, flags, flags, out, start, stop)
        assert bytes(batch.buf[begin:end]) == bytes(out[:nbytes]) and kept == stop - start
    assert _pcap.verbatim_span(*arrays, None, flags, flags) is not None
    assert _pcap.verbatim_span(*arrays, keep, flags, flags, 5, 5) is None  # nothing to write
    assert _pcap.verbatim_span(*arrays, keep, flags, flags ^ _pcap.HDR_BIG_ENDIAN) is None
    dropped = array("B", keep)
    dropped[12] = DROP
    assert _pcap.verbatim_span(*arrays, dropped, flags, flags) is None
    assert _pcap.verbatim_span(*arrays, dropped, flags, flags, 13, 30) is not None
    # Arrays that no longer match the header slots: build_records rewrites, so no span.
    for name, i, value in [("timestamps_ns", 3, 5), ("lengths", 4, 0), ("wire_lengths", 5, 1)]:
        changed = dict(zip(("offsets", "lengths", "wire_lengths", "timestamps_ns"), arrays[1:]))
        changed[name] = array(changed[name].typecode, changed[name])
        changed[name][i] = value
        assert _pcap.verbatim_span(batch.buf, *changed.values(), keep, flags, flags) is None
    # Packets not back to back (a library batch reorders or skips): no span.
    offsets = array("Q", batch.offsets)
    offsets[1], offsets[2] = offsets[2], offsets[1]
    assert _pcap.verbatim_span(batch.buf, offsets, *arrays[2:], keep, flags, flags, 0, 3) is None
    library = Batch.from_packets(packets)  # header slots empty: header_flags -1
    assert _pcap.verbatim_span(library.buf, library.offsets, library.lengths,
                               library.wire_lengths, library.timestamps_ns, None, -1, -1) is None


def test_batches_without_drops_are_written_from_the_input_buffer(tmp_path, monkeypatch):
    packets = make_packets(60, seed=19)
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, ">", False))
    built = []
    real = _pcap.build_records
    monkeypatch.setattr(_pcap, "build_records", lambda *a: built.append(a) or real(*a))
    # Batches of 6: packet 13 dropped (batch 2); every other batch is kept whole.
    copy_capture(src, tmp_path / "out.pcap", drop=lambda i: i == 13, max_packets=6)
    assert len(built) == 1
    kept = [p for i, p in enumerate(packets) if i != 13]
    assert (tmp_path / "out.pcap").read_bytes() == pcap_bytes(kept, ">", False)


def test_replay_output_and_stats_do_not_depend_on_the_write_path(tmp_path, monkeypatch):
    from traffic import random_maps, random_traffic  # tests/: the differential tests' traffic

    from fastpath.dataplane import Dataplane
    from fastpath.replaying import replay

    rng = random.Random(20)
    maps = random_maps(rng)
    packets = random_traffic(maps, rng, 1500)
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, nanosecond=True))
    spans = []
    real = _pcap.verbatim_span
    monkeypatch.setattr(_pcap, "verbatim_span", lambda *a: spans.append(real(*a)) or spans[-1])
    fast = replay(src, tmp_path / "fast.pcap", Dataplane(maps), batch_packets=40)
    assert any(span is not None for span in spans) and any(span is None for span in spans)
    monkeypatch.setattr(_pcap, "verbatim_span", lambda *a: None)  # always build_records
    slow = replay(src, tmp_path / "slow.pcap", Dataplane(maps), batch_packets=40)
    assert (tmp_path / "fast.pcap").read_bytes() == (tmp_path / "slow.pcap").read_bytes()
    written, _ = read_all(tmp_path / "fast.pcap")
    assert fast.verdicts["DROP"] + fast.verdicts["REJECT"] > 0
    assert fast.packets_written == slow.packets_written == len(written)
    assert fast.bytes == slow.bytes == sum(len(data) for _, data in packets)
    assert fast.packets == len(packets)


def test_verbatim_records_are_what_write_batch_writes(tmp_path):
    packets = [(i * 10**9 + i * 1000, bytes([i]) * (60 + i), 60 + 2 * i) for i in range(12)]
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets))
    with open_capture(src) as reader:
        (batch,) = list(reader.batches())
        keep_all, drop_one = array("B", [1] * 12), array("B", [1] * 12)
        drop_one[4] = 3  # DROP
        with open_output(tmp_path / "a.pcap", like=reader) as checked:
            records = checked.verbatim_records(batch, keep_all, 2, 9)
            assert records is not None and records.packets == 7
            assert checked.verbatim_records(batch, drop_one) is None
            assert checked.packets_written == 0  # checking writes nothing
            checked.write_verbatim(records)
            assert checked.packets_written == 7
        with open_output(tmp_path / "b.pcap", like=reader) as written:
            written.write_batch(batch, keep_all, 2, 9)
        with open_output(tmp_path / "c.pcapng", like=dataclasses.replace(reader.info,
                                                                       format="pcapng")) as ng:
            assert ng.verbatim_records(batch, keep_all) is None  # other encoding: built
    assert (tmp_path / "a.pcap").read_bytes() == (tmp_path / "b.pcap").read_bytes()
    assert read_all(tmp_path / "a.pcap")[0] == packets[2:9]


# --- damaged and odd files ------------------------------------------------------------------

@pytest.mark.parametrize("cut", [1, 8, 15, 16, 17, 50])
def test_truncated_tail_is_reported_not_raised(tmp_path, cut):
    packets = [(i * 10**9, bytes(60), 60) for i in range(5)]
    data = pcap_bytes(packets)
    src = tmp_path / "cut.pcap"
    src.write_bytes(data[:-76] + data[-76:][:cut])  # the last record (16 + 60 bytes) cut short
    got, reader = read_all(src, chunk_size=64)
    assert got == packets[:4]
    assert reader.truncated_bytes == cut
    assert str(src) in reader.truncated_tail and "\n" not in reader.truncated_tail
    assert f"byte offset {len(data) - 76}" in reader.truncated_tail


@pytest.mark.parametrize("caplen", [262145, 16 << 20, 0x7FFFFFFF, 0xFFFFFFFF])
def test_absurd_record_length_raises_after_earlier_packets(tmp_path, caplen):
    packets = [(i * 10**9, bytes([i]) * 40, 40) for i in range(3)]
    data = bytearray(pcap_bytes(packets + [(9, b"x" * 40, 40)], snaplen=65535))
    bad_at = 24 + 3 * 56
    data[bad_at + 8 : bad_at + 12] = struct.pack("<I", caplen)
    src = tmp_path / "bad.pcap"
    src.write_bytes(bytes(data))
    delivered = []
    with open_capture(src, chunk_size=100) as reader:
        with pytest.raises(CaptureError) as error:
            for batch in reader.batches(max_packets=2):
                delivered += [batch.packet(i) for i in range(batch.count)]
    assert delivered == [p[1] for p in packets]
    message = str(error.value)
    assert str(src) in message and f"byte offset {bad_at}" in message and "\n" not in message


def test_record_limit_follows_a_large_snaplen_up_to_16_mib(tmp_path):
    big = bytes(300_000)
    src = tmp_path / "jumbo.pcap"
    src.write_bytes(pcap_bytes([(0, big, len(big))], snaplen=1 << 20))
    assert read_all(src, chunk_size=1000)[0] == [(0, big, len(big))]
    src.write_bytes(pcap_bytes([(0, big, len(big))], snaplen=65535))  # > max(snaplen, 262144)
    with pytest.raises(CaptureError, match="byte offset 24"):
        read_all(src)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"\xd4\xc3", "truncated capture file header"),
        (b"\x0a\x0d\x0d", "truncated capture file header"),
        (pcap_bytes([])[:23], r"truncated pcap file header \(23 of 24 bytes\)"),
        (b"\x1f\x8b\x08\x00rest", r"not a pcap or pcapng capture \(starts with 0x1f8b0800\)"),
        (b"hello, world\n", r"not a pcap or pcapng capture \(starts with 0x68656c6c\)"),
        (b"ab", r"not a pcap or pcapng capture \(starts with 0x6162\)"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00", "pcapng section header"),
    ],
)
def test_not_a_capture_is_one_line_error(tmp_path, content, message):
    src = tmp_path / "x.cap"
    src.write_bytes(content)
    with pytest.raises(CaptureError, match=message) as error:
        open_capture(src)
    assert str(error.value).startswith(f"{src}: ") and "\n" not in str(error.value)


def test_header_only_capture_has_no_batches(tmp_path):
    src = tmp_path / "empty.pcap"
    src.write_bytes(pcap_bytes([], linktype=101))
    got, reader = read_all(src)
    assert got == [] and reader.linktype == 101 and reader.truncated_tail is None


# --- atomic output --------------------------------------------------------------------------

def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("pre_existing", [False, True])
def test_failure_inside_the_writer_leaves_no_output(tmp_path, exc, pre_existing):
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(make_packets(30)))
    out = tmp_path / "out.pcap"
    if pre_existing:
        out.write_bytes(b"previous contents")
    with pytest.raises(exc):
        with open_capture(src) as reader, open_output(out, like=reader) as writer:
            for batch in reader.batches(max_packets=10):
                writer.write_batch(batch)
                raise exc()
    assert out.read_bytes() == b"previous contents" if pre_existing else not out.exists()
    assert _leftovers(tmp_path) == []


def test_commit_then_close_protocol(tmp_path):
    out = tmp_path / "out.pcap"
    out.write_bytes(b"old")
    info = CaptureInfo("pcap", 1, 65535, False, "<")
    writer = open_output(out, like=info)
    writer.write_packet(5 * 10**9 + 7000, b"abc")
    assert out.read_bytes() == b"old"  # nothing visible before commit
    writer.commit()
    writer.close()  # after commit: no-op
    assert read_all(out)[0] == [(5 * 10**9 + 7000, b"abc", 3)]
    with pytest.raises(ValueError):
        writer.write_packet(0, b"late")

    discarded = open_output(tmp_path / "never.pcap", like=info)
    discarded.write_packet(0, b"x")
    discarded.close()  # close without commit discards
    assert not (tmp_path / "never.pcap").exists() and _leftovers(tmp_path) == []


def test_output_to_a_device_is_written_in_place(tmp_path):
    with open_output(os.devnull, like=("pcap", 1, 65535, False)) as writer:
        writer.write_packet(0, b"abc")
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)


def test_write_packet_inserts_between_batch_packets(tmp_path):
    packets = [(i * 10**9, bytes([i]) * 30, 30) for i in range(6)]
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, nanosecond=True))
    with open_capture(src) as reader, open_output(tmp_path / "out.pcap", like=reader) as writer:
        (batch,) = reader.batches()
        verdicts = array("B", [PASS, DROP, PASS, PASS, PASS, PASS])
        assert writer.write_batch(batch, verdicts, 0, 3) == 2
        writer.write_packet(2 * 10**9 + 1, b"reply", 60)
        assert writer.write_batch(batch, verdicts, 3) == 3
        assert writer.packets_written == 6
    want = [packets[0], packets[2], (2 * 10**9 + 1, b"reply", 60)] + packets[3:]
    assert read_all(tmp_path / "out.pcap")[0] == want


@pytest.mark.parametrize(("byteorder", "nanosecond"), VARIANTS, ids=VARIANT_IDS)
def test_library_batches_write_in_every_variant(tmp_path, byteorder, nanosecond):
    packets = make_packets(40, seed=5, nanosecond=nanosecond)
    batch = Batch.from_packets(packets)
    assert batch.header_flags == -1
    out = tmp_path / "out.pcap"
    with open_output(out, like=CaptureInfo("pcap", 1, 65535, nanosecond, byteorder)) as writer:
        writer.write_batch(batch)
    assert out.read_bytes() == pcap_bytes(packets, byteorder, nanosecond)


def test_converting_encodings_re_encodes_headers(tmp_path):
    packets = make_packets(40, seed=6, nanosecond=False)
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(packets, "<", False))
    with open_capture(src) as reader:
        info = dataclasses.replace(reader.info, byteorder=">", nanosecond=True)
        with open_output(tmp_path / "out.pcap", like=info) as writer:
            for batch in reader.batches(max_packets=9):
                writer.write_batch(batch)
    assert (tmp_path / "out.pcap").read_bytes() == pcap_bytes(packets, ">", True)


def _allocated(path_or_fd) -> int:
    st = os.fstat(path_or_fd) if isinstance(path_or_fd, int) else os.stat(path_or_fd)
    return st.st_blocks * 512


@pytest.mark.skipif(sys.platform != "linux", reason="space is reserved with Linux's fallocate")
def test_space_reservation_allocates_without_growing_the_file(tmp_path):
    with open(tmp_path / "f", "wb") as file:
        fd = file.fileno()
        reservation = _pcap.SpaceReservation(fd, 3 << 20, step=1 << 20)
        reservation.run()
        assert (reservation.reserved, reservation.error) == (3 << 20, 0)
        assert os.fstat(fd).st_size == 0 and _allocated(fd) >= 3 << 20

        cancelled = _pcap.SpaceReservation(fd, 8 << 20)
        cancelled.cancel()
        cancelled.run()
        assert cancelled.reserved == 0
    not_open = _pcap.SpaceReservation(2**30, 1 << 20)  # no such descriptor
    not_open.run()
    assert (not_open.reserved, not_open.error) == (0, errno.EBADF)
    with pytest.raises(ValueError):
        _pcap.SpaceReservation(1, -1)


@pytest.mark.parametrize("packets_dropped", [False, True])
def test_a_prepared_output_is_written_like_a_path_and_keeps_no_spare_space(
        tmp_path, packets_dropped):
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(make_packets(60, seed=23)))
    drop = (lambda i: i % 2 == 0) if packets_dropped else (lambda i: False)
    copy_capture(src, tmp_path / "by-path.pcap", drop=drop, max_packets=7)
    out = tmp_path / "out.pcap"
    out.write_bytes(b"previous contents")
    prepared = prepare_output(out, 4 << 20)  # far more than the output needs
    assert out.read_bytes() == b"previous contents"  # nothing visible before the commit
    copy_capture(src, prepared, drop=drop, max_packets=7)
    assert out.read_bytes() == (tmp_path / "by-path.pcap").read_bytes()
    assert _allocated(out) < (1 << 20) and _leftovers(tmp_path) == []
    prepared.discard()  # taken over by the writer: nothing left to do
    assert out.exists() and _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="already taken"):
        open_output(prepared, like=CaptureInfo("pcap", 1, 65535, False, "<"))


def test_a_prepared_output_never_written_leaves_nothing(tmp_path):
    out = tmp_path / "out.pcap"
    out.write_bytes(b"previous contents")
    with prepare_output(out, 1 << 20):
        assert len(_leftovers(tmp_path)) == 1
    assert out.read_bytes() == b"previous contents" and _leftovers(tmp_path) == []
    prepared = prepare_output(tmp_path / "new.pcap", 1 << 20)
    with pytest.raises(RuntimeError):
        with prepared, open_output(prepared, like=("pcap", 1, 65535, False)) as writer:
            writer.write_packet(0, b"abc")
            raise RuntimeError
    assert not (tmp_path / "new.pcap").exists() and _leftovers(tmp_path) == []


def test_devices_and_folders_are_not_prepared(tmp_path):
    assert prepare_output(os.devnull, 1 << 20) is None
    assert prepare_output(tmp_path, 1 << 20) is None  # the writer reports the folder
    with pytest.raises(FileNotFoundError):
        prepare_output(tmp_path / "no-such-folder" / "out.pcap", 1 << 20)


# --- pcapng ---------------------------------------------------------------------------------

def test_pcapng_round_trip_keeps_link_type_timestamps_and_order(tmp_path):
    packets = make_packets(150, seed=7)
    src = tmp_path / "in.pcapng"
    src.write_bytes(pcapng_bytes(packets, linktypes=(101,)))
    got, reader = read_all(src, chunk_size=5000, max_packets=33)
    assert got == packets
    assert (reader.format, reader.linktype, reader.nanosecond) == ("pcapng", 101, True)
    assert reader.truncated_tail is None
    copy_capture(src, tmp_path / "out.pcapng", drop=lambda i: i % 4 == 0)
    got, reader = read_all(tmp_path / "out.pcapng")
    assert got == [p for i, p in enumerate(packets) if i % 4]
    assert (reader.format, reader.linktype, reader.nanosecond) == ("pcapng", 101, True)


def test_pcapng_microsecond_output_stays_microsecond(tmp_path):
    packets = make_packets(20, seed=8, nanosecond=False)
    src = tmp_path / "in.pcapng"
    src.write_bytes(pcapng_bytes(packets, tsresol_exp=6))
    copy_capture(src, tmp_path / "out.pcapng")
    got, reader = read_all(tmp_path / "out.pcapng")
    assert got == packets and not reader.nanosecond


def test_scapy_written_pcapng_is_read(tmp_path):
    from scapy.all import IP, TCP, Ether, PcapNgWriter, rdpcap

    frames = [Ether() / IP(dst=f"10.0.0.{i}") / TCP() for i in range(5)]
    for i, frame in enumerate(frames):
        frame.time = 1_700_000_000 + i
    with PcapNgWriter(str(tmp_path / "s.pcapng")) as w:
        for frame in frames:
            w.write(frame)
    got, reader = read_all(tmp_path / "s.pcapng")
    assert [(ts, data) for ts, data, _ in got] == [((1_700_000_000 + i) * 10**9, bytes(f))
                                                  for i, f in enumerate(frames)]
    copy_capture(tmp_path / "s.pcapng", tmp_path / "out.pcapng")
    back = rdpcap(str(tmp_path / "out.pcapng"))
    assert [bytes(p) for p in back] == [bytes(f) for f in frames]
    assert [int(p.time) for p in back] == [1_700_000_000 + i for i in range(5)]


@pytest.mark.parametrize("nanosecond", [False, True])
def test_pcap_and_pcapng_give_identical_batches(tmp_path, nanosecond):
    packets = make_packets(60, seed=9, nanosecond=nanosecond)
    (tmp_path / "a.pcap").write_bytes(pcap_bytes(packets, "<", nanosecond))
    (tmp_path / "a.pcapng").write_bytes(pcapng_bytes(packets, tsresol_exp=9 if nanosecond else 6))
    with open_capture(tmp_path / "a.pcap") as p, open_capture(tmp_path / "a.pcapng") as n:
        assert (p.linktype, p.nanosecond) == (n.linktype, n.nanosecond)
        (a,) = p.batches()
        (b,) = n.batches()
    assert a.count == b.count == len(packets)
    for name in ("offsets", "lengths", "wire_lengths", "timestamps_ns"):
        assert getattr(a, name) == getattr(b, name), name
    assert [a.packet(i) for i in range(a.count)] == [b.packet(i) for i in range(b.count)]


def test_pcapng_with_mixed_link_types_is_rejected(tmp_path):
    packets = make_packets(6, seed=10)
    src = tmp_path / "mixed.pcapng"
    src.write_bytes(pcapng_bytes(packets, linktypes=(1, 113), iface_of=lambda i: int(i >= 4)))
    delivered = []
    with open_capture(src) as reader:
        with pytest.raises(CaptureError, match=r"different link types \(1 and 113\)"):
            for batch in reader.batches():
                delivered += [batch.packet(i) for i in range(batch.count)]
    assert delivered == [p[1] for p in packets[:4]]


def test_pcapng_same_link_type_on_several_interfaces_is_fine(tmp_path):
    packets = make_packets(6, seed=11)
    src = tmp_path / "two.pcapng"
    src.write_bytes(pcapng_bytes(packets, linktypes=(1, 1), iface_of=lambda i: i % 2))
    assert read_all(src)[0] == packets


def test_pcapng_truncated_tail_is_reported(tmp_path, capfd):
    packets = make_packets(5, seed=12)
    data = pcapng_bytes(packets)
    src = tmp_path / "cut.pcapng"
    src.write_bytes(data[:-10])
    got, reader = read_all(src)
    assert got == packets[:4]
    assert reader.truncated_bytes > 0 and str(src) in reader.truncated_tail
    assert capfd.readouterr().err == ""  # scapy's own warnings are folded into the message


def _epb_positions(data: bytes) -> list[int]:
    positions, pos = [], 0
    while pos < len(data):
        block_type, length = struct.unpack_from("<II", data, pos)
        if block_type == 6:
            positions.append(pos)
        pos += length
    return positions


@pytest.mark.parametrize(("field", "value", "match"), [
    (4, 0xFFFFFFF0, "block length 4294967280"),  # leading length absurd
    (-4, 0x1234, "trailing block length differs"),  # trailing length disagrees
])
def test_pcapng_damaged_block_raises_after_earlier_packets(tmp_path, field, value, match):
    packets = make_packets(5, seed=15)
    data = bytearray(pcapng_bytes(packets))
    epb = _epb_positions(bytes(data))[2]
    length = struct.unpack_from("<I", data, epb + 4)[0]
    at = epb + 4 if field == 4 else epb + length - 4
    data[at : at + 4] = struct.pack("<I", value)
    src = tmp_path / "damaged.pcapng"
    src.write_bytes(bytes(data))
    delivered = []
    with open_capture(src) as reader:
        with pytest.raises(CaptureError, match=f"byte offset {epb}: {match}"):
            for batch in reader.batches():
                delivered += [batch.packet(i) for i in range(batch.count)]
    assert delivered == [p[1] for p in packets[:2]]


def test_pcapng_trailing_non_packet_blocks_are_a_clean_end(tmp_path):
    packets = make_packets(3, seed=13)
    isb = struct.pack("<II", 5, 24) + struct.pack("<IIII", 0, 0, 0, 24)  # interface statistics
    src = tmp_path / "isb.pcapng"
    src.write_bytes(pcapng_bytes(packets) + isb)
    got, reader = read_all(src)
    assert got == packets and reader.truncated_tail is None


def test_pcap_to_pcapng_and_back(tmp_path):
    packets = make_packets(30, seed=14)
    (tmp_path / "a.pcap").write_bytes(pcap_bytes(packets, ">", True, linktype=113))
    with open_capture(tmp_path / "a.pcap") as reader:
        with open_output(tmp_path / "b.pcapng", like=dataclasses.replace(reader.info, format="pcapng")) as w:
            for batch in reader.batches():
                w.write_batch(batch)
    with open_capture(tmp_path / "b.pcapng") as reader:
        assert reader.linktype == 113
        info = dataclasses.replace(reader.info, format="pcap", byteorder=">")
        with open_output(tmp_path / "c.pcap", like=info) as w:
            for batch in reader.batches():
                w.write_batch(batch)
    assert (tmp_path / "c.pcap").read_bytes() == (tmp_path / "a.pcap").read_bytes()


def test_pcapng_timestamp_beyond_2_64_ns_is_a_capture_error(tmp_path):
    # Second resolution (if_tsresol 10**0): 64-bit timestamps reach far past 2**64 ns.
    packets = [(10**9, b"early", 5), (2**63 * 10**9, b"late", 4)]
    src = tmp_path / "far.pcapng"
    src.write_bytes(pcapng_bytes(packets, tsresol_exp=0))
    delivered = []
    with open_capture(src) as reader:
        with pytest.raises(CaptureError) as error:
            for batch in reader.batches():
                delivered += [batch.packet(i) for i in range(batch.count)]
    assert delivered == [b"early"]
    message = str(error.value)
    assert message.startswith(f"{src}: packet 2: timestamp {2**63} in units of 1/1 s")
    assert "\n" not in message


def test_pcap_to_pcapng_keeps_an_original_length_of_zero(tmp_path):
    packets = [(10**9, b"abcdef", 0), (2 * 10**9, b"xyz", 60), (3 * 10**9, b"", 0)]
    (tmp_path / "a.pcap").write_bytes(pcap_bytes(packets, nanosecond=True))
    with open_capture(tmp_path / "a.pcap") as reader:
        info = dataclasses.replace(reader.info, format="pcapng")
        with open_output(tmp_path / "b.pcapng", like=info) as writer:
            for batch in reader.batches():
                writer.write_batch(batch)
            writer.write_packet(4 * 10**9, b"reply", 0)
    want = packets + [(4 * 10**9, b"reply", 0)]
    assert read_all(tmp_path / "b.pcapng")[0] == want
    from scapy.utils import RawPcapNgReader  # an independent reader

    with RawPcapNgReader(str(tmp_path / "b.pcapng")) as ng:
        assert [(data, meta.wirelen) for data, meta in ng] == [(d, w) for _, d, w in want]


def test_pcapng_packet_blocks_are_those_scapy_writes(tmp_path):
    # Our packet blocks replaced scapy's: byte for byte the same whenever scapy kept the length.
    from scapy.utils import RawPcapNgWriter

    packets = [p for p in make_packets(40, seed=15) if p[2]]
    batch = Batch.from_packets(packets)
    for nanosecond in (False, True):
        info = CaptureInfo("pcapng", 1, 65535, nanosecond)
        with open_output(tmp_path / "ours.pcapng", like=info) as writer:
            writer.write_batch(batch)
        ours = (tmp_path / "ours.pcapng").read_bytes()
        scapy_writer = RawPcapNgWriter(str(tmp_path / "scapy.pcapng"))
        scapy_writer.linktype = 1
        scapy_writer.tsresol = 10**9 if nanosecond else 10**6
        scapy_writer.write_header(None)
        start = scapy_writer.f.tell()
        for ts, data, wire in packets:
            scapy_writer.write_packet(data, sec=Fraction(ts, 10**9), caplen=len(data), wirelen=wire)
        scapy_writer.f.close()
        theirs = (tmp_path / "scapy.pcapng").read_bytes()[start:]
        assert ours.endswith(theirs) and len(theirs) > 0


# --- start-up cost --------------------------------------------------------------------------

def test_classic_pcap_never_imports_scapy(tmp_path):
    src = tmp_path / "in.pcap"
    src.write_bytes(pcap_bytes(make_packets(10)))
    script = f"""
import sys
from fastpath.capture import open_capture, open_output
with open_capture({str(src)!r}) as r, open_output({str(tmp_path / 'out.pcap')!r}, like=r) as w:
    for b in r.batches():
        w.write_batch(b)
    w.write_packet(0, b"x")
loaded = sorted(m for m in sys.modules if m == "scapy" or m.startswith("scapy."))
print(loaded)
"""
    # Same interpreter and environment as the tests: the fastpath under test is imported.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- property: any packets, any chunking ----------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), max_size=40),
    chunk_size=st.integers(1, 700),
    max_packets=st.integers(1, 50),
    variant=st.sampled_from(VARIANTS),
    cut=st.integers(0, 400),
)
def test_any_chunking_delivers_every_complete_record(tmp_path_factory, sizes, chunk_size,
                                                     max_packets, variant, cut):
    byteorder, nanosecond = variant
    packets = [(i * 1_000_001_000, bytes([i % 256]) * size, size) for i, size in enumerate(sizes)]
    data = pcap_bytes(packets, byteorder, nanosecond)
    data = data[: max(24, len(data) - cut)]
    complete, end = [], 24
    for p in packets:
        if end + 16 + len(p[1]) > len(data):
            break
        complete.append(p)
        end += 16 + len(p[1])
    src = tmp_path_factory.mktemp("prop") / "p.pcap"
    src.write_bytes(data)
    got, reader = read_all(src, chunk_size=chunk_size, max_packets=max_packets)
    assert got == complete
    assert reader.truncated_bytes == len(data) - end

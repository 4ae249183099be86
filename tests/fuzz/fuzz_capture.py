#!/usr/bin/env python3
"""Fuzz capture reading and writing: any bytes as a pcap or pcapng file.

Input layout: 4 option bytes (chunk size, batch size, output encoding, which packets to drop),
then the file. The harness opens it with fastpath.capture.open_capture, reads every batch and
writes the kept packets to an output (same encoding, or converted: pcap <-> pcapng, byte order,
timestamp resolution), and checks:

- the only exception is CaptureError (at open or at the damaged place), never another one;
- classic pcap: what was read before the damage is exactly what an independent parser (below,
  written from the file format) finds: the same records, in order, then CaptureError where a
  record length is impossible, or a truncated tail reported (not raised) where the file ends
  inside a record; the same packets whatever the chunk and batch sizes (read twice);
- every batch is well formed (arrays agree, packets inside the buffer, pcap header slots hold
  the record headers);
- pcapng: every packet delivered is bytes of the file, in file order;
- the output: pcap to pcap is byte for byte the input's header and kept records; other
  conversions read back (fastpath's reader) to the kept packets, timestamps to the output's
  resolution;
- fastpath._pcap.scan_records (given new arrays, and the last scan's to refill) and
  build_records, run on the records placed against PROT_NONE guard pages
  (fuzzinput.GuardArena), never touch a byte outside the records and agree with the
  independent parser.

    python tests/fuzz/fuzz_capture.py -atheris_runs=50000          # default corpus under /tmp
    python tests/fuzz/fuzz_capture.py -max_total_time=900 --corpus DIR
    python tests/fuzz/fuzz_capture.py --explain crash-FILE
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import shutil
import struct
import sys
import tempfile
from array import array
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from fuzzinput import DEFAULT_ROOT, GuardArena, fuzz_main, mutate_main, parse_own

try:
    import atheris
except ImportError:
    atheris = None

_INSTRUMENT = atheris is not None and __name__ == "__main__" and not any(
    a.startswith(("--mutate", "--explain")) for a in sys.argv)
with atheris.instrument_imports(include=["fastpath", "scapy.utils"]) if _INSTRUMENT \
        else contextlib.nullcontext():
    from fastpath.capture import CaptureError, CaptureInfo, open_capture, open_output

    from fastpath import _pcap

    if _INSTRUMENT:
        import scapy.utils  # noqa: F401  (the pcapng reader and writer, instrumented)

CHUNK_SIZES = (1, 2, 7, 16, 17, 40, 64, 1000, 4096, 8 << 20)
BATCH_SIZES = (1, 2, 3, 7, 65536)
# Output: None = like the input; else (format, byte order, nanosecond) where None keeps the input's.
OUTPUTS = (None, None, None, ("pcapng", None, None), ("pcap", ">", True), ("pcap", "<", False),
           ("pcap", None, None), ("pcapng", None, True))
DROP, PASS = 3, 0
NS = 10**9
DEFAULT_SNAPLEN = 262144
MAX_RECORD = 16 << 20
GUARD_PAGES = 32  # the direct _pcap checks use up to 128 KiB of records


class Finding(AssertionError):
    pass


# --------------------------------------------------------------------------- independent pcap parser

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


@dataclass
class Record:
    ts: int
    data: bytes
    wire: int
    raw: bytes  # the 16-byte header and the data, as in the file


@dataclass
class PcapParse:
    order: str
    nanosecond: bool
    snaplen: int
    linktype: int
    header: bytes
    records: list[Record]
    end: str  # "clean", "truncated" (file ends inside a record), "damaged" (impossible length)
    end_pos: int  # file offset of the record where reading stopped


def parse_pcap(content: bytes) -> PcapParse | None:
    """The classic pcap format as documented (libpcap's pcap-savefile), and fastpath's limit:
    a captured length above min(max(snaplen, 262144), 16 MiB) is damage. None: not pcap."""
    if len(content) < 24 or content[:4] not in PCAP_MAGICS:
        return None
    order, nano = PCAP_MAGICS[content[:4]]
    snaplen, network = struct.unpack(order + "II", content[16:24])
    limit = min(max(snaplen, DEFAULT_SNAPLEN), MAX_RECORD)
    records, pos, end = [], 24, "clean"
    while pos < len(content):
        if len(content) - pos < 16:
            end = "truncated"
            break
        sec, frac, caplen, wire = struct.unpack(order + "IIII", content[pos : pos + 16])
        if caplen > limit:
            end = "damaged"
            break
        if len(content) - pos - 16 < caplen:
            end = "truncated"
            break
        ts = sec * NS + (frac if nano else frac * 1000)
        records.append(Record(ts, content[pos + 16 : pos + 16 + caplen], wire,
                              content[pos : pos + 16 + caplen]))
        pos += 16 + caplen
    return PcapParse(order, nano, snaplen, network & 0xFFFF, content[:24], records, end, pos)


# --------------------------------------------------------------------------- the harness

_WORKDIR: str | None = None
_ARENA: GuardArena | None = None


def workdir() -> str:
    global _WORKDIR
    if _WORKDIR is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        _WORKDIR = tempfile.mkdtemp(prefix="fastpath-fuzz-capture-", dir=base)
        atexit.register(shutil.rmtree, _WORKDIR, True)
    return _WORKDIR


def arena() -> GuardArena:
    global _ARENA
    if _ARENA is None:
        _ARENA = GuardArena(1, GUARD_PAGES)
    return _ARENA


@dataclass
class Options:
    chunk_size: int
    batch_size: int
    output: tuple | None
    drop_seed: int
    chunk_size_again: int


def options(head: bytes) -> Options:
    head = head.ljust(4, b"\0")
    return Options(CHUNK_SIZES[head[0] % len(CHUNK_SIZES)], BATCH_SIZES[head[1] % len(BATCH_SIZES)],
                   OUTPUTS[head[2] % len(OUTPUTS)], head[3],
                   CHUNK_SIZES[(head[0] // len(CHUNK_SIZES)) % len(CHUNK_SIZES)])


def dropped(seed: int, index: int) -> bool:
    """Which packets get a DROP verdict (seed 0: none; else a pattern)."""
    return seed != 0 and (index * 7 + seed) % 5 == 0


@dataclass
class ReadResult:
    packets: list[tuple[int, bytes, int]]  # (ts_ns, data, wire length)
    error: str | None  # the CaptureError message
    truncated_tail: str | None
    truncated_bytes: int
    info: CaptureInfo | None
    output: str | None  # the committed output file


def check_batch(batch: Any, reader: Any, where: str) -> None:
    n = batch.count
    if not (len(batch.offsets) == len(batch.lengths) == len(batch.wire_lengths)
            == len(batch.timestamps_ns) == n) or n == 0:
        raise Finding(f"{where}: a batch of {n} packets with arrays of other lengths")
    size = len(batch.buf)
    for i in range(n):
        off, length = batch.offsets[i], batch.lengths[i]
        if off < 16 or off + length > size:
            raise Finding(f"{where}: packet {i} at [{off}, {off + length}) in a {size}-byte buffer "
                          "(16 header bytes must precede it)")
    if reader.format == "pcap" and batch.header_flags != reader.info.header_flags:
        raise Finding(f"{where}: pcap batch header flags {batch.header_flags}, reader "
                      f"{reader.info.header_flags}")


def output_info(reader: Any, choice: tuple | None) -> CaptureInfo:
    info = reader.info
    if choice is None:
        return info
    fmt, order, nano = choice
    return dataclasses.replace(info, format=fmt, byteorder=order or info.byteorder,
                               nanosecond=info.nanosecond if nano is None else nano,
                               pcap_header=info.pcap_header if fmt == "pcap" else None)


def read_capture(path: str, opts: Options, chunk_size: int, write: bool) -> ReadResult:
    """Read every batch (and write the kept packets); CaptureError is the only allowed exception."""
    packets: list[tuple[int, bytes, int]] = []
    info = None
    out_path = os.path.join(workdir(), "out.cap") if write else None
    try:
        with open_capture(path, chunk_size=chunk_size) as reader:
            info = output_info(reader, opts.output)
            writer = open_output(out_path, like=info) if write else None
            with writer if writer is not None else contextlib.nullcontext():
                for b, batch in enumerate(reader.batches(opts.batch_size)):
                    check_batch(batch, reader, f"batch {b}")
                    first = len(packets)
                    packets.extend((batch.timestamps_ns[i], batch.packet(i), batch.wire_lengths[i])
                                   for i in range(batch.count))
                    if writer is not None:
                        verdicts = array("B", [DROP if dropped(opts.drop_seed, first + i) else PASS
                                               for i in range(batch.count)])
                        kept = writer.write_batch(batch, verdicts)
                        if kept != verdicts.count(PASS):
                            raise Finding(f"batch {b}: write_batch kept {kept} of "
                                          f"{verdicts.count(PASS)} packets")
            if reader.packets_read != len(packets):
                raise Finding(f"packets_read {reader.packets_read}, {len(packets)} delivered")
            return ReadResult(packets, None, reader.truncated_tail, reader.truncated_bytes, info,
                              out_path)
    except CaptureError as exc:
        message = str(exc)
        if "\n" in message or path not in message:
            raise Finding(f"CaptureError message is not one line naming the file: {message!r}")
        return ReadResult(packets, message, None, 0, info, None)


# The latest time a nanosecond pcap record holds: 32-bit seconds, and the excess of the last
# second in the 32-bit fraction field. A later one ends the output with this CaptureError.
PCAP_NS_LATEST = 0xFFFFFFFF * 1_000_000_000 + 0xFFFFFFFF
UNWRITABLE = "cannot be written to"


def check_pcap(parsed: PcapParse, got: ReadResult, size: int) -> None:
    want = [(r.ts, r.data, r.wire) for r in parsed.records]
    if got.packets != want[: len(got.packets)]:
        first = next(i for i, (a, b) in enumerate(zip(got.packets, want)) if a != b) \
            if any(a != b for a, b in zip(got.packets, want)) else len(want)
        raise Finding(f"pcap: packet {first} read as {got.packets[first:first + 1]}, the file "
                      f"holds {want[first:first + 1]}")
    if got.error is not None and UNWRITABLE in got.error:
        # The output format cannot hold a packet's timestamp (a microsecond pcap's last second
        # of 2106 written as nanosecond pcap): the right one-line error, not a reading fault.
        if not any(ts > PCAP_NS_LATEST for ts, _, _ in want):
            raise Finding(f"pcap: {got.error!r}, but every timestamp fits a pcap record")
        return
    if len(got.packets) != len(want):
        raise Finding(f"pcap: {len(got.packets)} packets delivered, the file holds {len(want)} "
                      f"complete records before the {parsed.end} end at {parsed.end_pos} "
                      f"(error: {got.error})")
    if parsed.end == "damaged":
        if got.error is None:
            raise Finding(f"pcap: the record at {parsed.end_pos} has an impossible length, "
                          "but no CaptureError")
        return
    if got.error is not None:
        raise Finding(f"pcap: CaptureError {got.error!r} for a file whose records are fine "
                      f"({parsed.end} end)")
    if parsed.end == "truncated":
        if got.truncated_tail is None or got.truncated_bytes != size - parsed.end_pos:
            raise Finding(f"pcap: the file ends inside the record at {parsed.end_pos}: expected "
                          f"a truncated tail of {size - parsed.end_pos} bytes, got "
                          f"{got.truncated_bytes} ({got.truncated_tail!r})")
    elif got.truncated_tail is not None:
        raise Finding(f"pcap: truncated tail reported for a clean file: {got.truncated_tail!r}")


def check_pcapng(content: bytes, got: ReadResult) -> None:
    pos = 0
    for i, (_, data, _) in enumerate(got.packets):
        found = content.find(data, pos)
        if found < 0:
            raise Finding(f"pcapng: packet {i} ({data[:32].hex()}...) is not bytes of the file "
                          f"after offset {pos}")
        pos = found + len(data)


def read_back(path: str) -> list[tuple[int, bytes, int]]:
    with open_capture(path) as reader:
        return [(batch.timestamps_ns[i], batch.packet(i), batch.wire_lengths[i])
                for batch in reader.batches() for i in range(batch.count)]


def check_output(got: ReadResult, parsed: PcapParse | None, opts: Options) -> None:
    assert got.info is not None and got.output is not None
    kept_idx = [i for i in range(len(got.packets)) if not dropped(opts.drop_seed, i)]
    with open(got.output, "rb") as f:
        out = f.read()
    if parsed is not None and got.info.format == "pcap" and got.info.byteorder == parsed.order \
            and got.info.nanosecond == parsed.nanosecond:
        want = parsed.header + b"".join(parsed.records[i].raw for i in kept_idx)
        if out != want:
            k = next((i for i, (a, b) in enumerate(zip(out, want)) if a != b), min(len(out), len(want)))
            raise Finding(f"pcap output differs from the input's header and kept records at byte "
                          f"{k} ({len(out)} vs {len(want)} bytes)")
        return
    try:
        back = read_back(got.output)
    except CaptureError as exc:
        raise Finding(f"the output ({got.info}) cannot be read back: {exc}") from None
    nano = got.info.nanosecond
    want_back = [(ts if nano else ts // 1000 * 1000, data, wire)
                 for i, (ts, data, wire) in enumerate(got.packets) if i in set(kept_idx)]
    if back != want_back:
        k = next((i for i, (a, b) in enumerate(zip(back, want_back)) if a != b),
                 min(len(back), len(want_back)))
        what = "differently"
        if len(back) == len(want_back):
            fields = {name for a, b in zip(back, want_back)
                      for name, x, y in zip(("timestamp", "data", "wire length"), a, b) if x != y}
            what = "with another " + " and ".join(sorted(fields))
        raise Finding(f"output ({got.info.format}, {got.info.byteorder}, ns={nano}) reads back "
                      f"{what} at packet {k}: {back[k:k + 1]} vs {want_back[k:k + 1]} "
                      f"({len(back)} vs {len(want_back)} packets)")


def check_pcap_loops(parsed: PcapParse, content: bytes, opts: Options) -> None:
    """fastpath._pcap on the records placed against guard pages (both ends in turn)."""
    a = arena()
    body = content[24 : 24 + a.slot_size]
    flags = (_pcap.HDR_BIG_ENDIAN if parsed.order == ">" else 0) | (
        _pcap.HDR_NANOSECOND if parsed.nanosecond else 0)
    limit = min(max(parsed.snaplen, DEFAULT_SNAPLEN), MAX_RECORD)
    for at_end in (True, False):
        start = a.slot_end(0) - len(body) if at_end else a.slot_start(0)
        a.view[start : start + len(body)] = body
        end = start + len(body)
        pos, records, into = start, [], None
        while True:
            offsets, lengths, wires, stamps, pos, status, _ = _pcap.scan_records(
                a.view, pos, end, flags, limit, opts.batch_size, into)
            # The start-aligned pass has each scan refill the last one's arrays, as a reader
            # does with a dropped batch's: growing and shrinking them.
            into = None if at_end else (offsets, lengths, wires, stamps)
            records += [(stamps[i], bytes(a.view[offsets[i] : offsets[i] + lengths[i]]), wires[i])
                        for i in range(len(offsets))]
            if len(offsets):
                out = bytearray()
                verdicts = array("B", [PASS] * len(offsets))
                nbytes, kept = _pcap.build_records(a.view, offsets, lengths, wires, stamps,
                                                   verdicts, flags, flags, out)
                raw = b"".join(bytes(a.view[offsets[i] - 16 : offsets[i] + lengths[i]])
                               for i in range(len(offsets)))
                if bytes(out[:nbytes]) != raw or kept != len(offsets):
                    raise Finding("build_records did not copy the records verbatim")
            if status != _pcap.SCAN_FULL:
                break
        cut = len(body) < len(content) - 24  # the guard slot holds only the first 128 KiB
        expect = [(r.ts, r.data, r.wire) for r in parsed.records]
        if records != expect[: len(records)] or (not cut and len(records) != len(expect)):
            raise Finding(f"scan_records ({'end' if at_end else 'start'}-aligned) found "
                          f"{len(records)} records, the independent parser {len(expect)}")
        if not cut and parsed.end == "damaged" and status != _pcap.SCAN_BAD_RECORD:
            raise Finding(f"scan_records status {status} at a damaged record")


def run_one(data: bytes) -> None:
    """The harness body: raises on any finding (CaptureError from the reader is not one)."""
    opts = options(data[:4])
    content = data[4:]
    path = os.path.join(workdir(), "in.cap")
    with open(path, "wb") as f:
        f.write(content)
    parsed = parse_pcap(content)
    got = read_capture(path, opts, opts.chunk_size, write=True)
    if parsed is not None:
        check_pcap(parsed, got, len(content))
        again = read_capture(path, opts, opts.chunk_size_again, write=False)
        if got.error is not None and UNWRITABLE in got.error:
            # The first read stopped at a packet its output could not hold; this one writes
            # nothing and goes on: the packets up to there must agree.
            same = again.packets[: len(got.packets)] == got.packets
        else:
            same = (again.packets, again.error, again.truncated_tail) == (
                got.packets, got.error, got.truncated_tail)
        if not same:
            raise Finding(f"pcap read with chunk size {opts.chunk_size_again} differs from chunk "
                          f"size {opts.chunk_size}: {len(again.packets)} vs {len(got.packets)} "
                          f"packets, error {again.error!r} vs {got.error!r}")
        check_pcap_loops(parsed, content, opts)
    elif content[:4] == PCAPNG_MAGIC:
        check_pcapng(content, got)
    elif got.error is None:
        raise Finding("a file that is neither pcap nor pcapng was read without CaptureError")
    if got.error is None:
        check_output(got, parsed, opts)


def explain(data: bytes) -> str:
    opts = options(data[:4])
    content = data[4:]
    parsed = parse_pcap(content)
    lines = [f"options: {opts}", f"file: {len(content)} bytes, starts {content[:32].hex()}"]
    if parsed is not None:
        lines.append(f"pcap {parsed.order} ns={parsed.nanosecond} snaplen {parsed.snaplen} "
                     f"linktype {parsed.linktype}: {len(parsed.records)} records, {parsed.end} "
                     f"end at {parsed.end_pos}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    argv, own = parse_own(argv, ("corpus", "explain", "mutate", "seed"), ())
    if own.get("explain"):
        for p in own["explain"]:
            with open(p, "rb") as f:
                data = f.read()
            print(explain(data))
            try:
                run_one(data)
                print("-> no finding")
            except Exception as exc:  # noqa: BLE001 (triage: show whatever it is)
                print(f"-> {type(exc).__name__}: {exc}")
        return 0
    if own.get("mutate"):
        paths = own.get("corpus") or [a for a in argv[1:] if not a.startswith("-")] or [
            os.path.join(DEFAULT_ROOT, "corpus", "capture")]
        return mutate_main("capture", run_one, paths, float(own["mutate"][-1]),
                           int((own.get("seed") or ["1"])[-1]))
    print(f"fuzz_capture: _pcap {_pcap.__file__}, guard pages: {arena().guarded}, "
          f"work dir {workdir()}", file=sys.stderr)
    return fuzz_main("capture", run_one, argv, own.get("corpus", []))


if __name__ == "__main__":
    sys.exit(main())

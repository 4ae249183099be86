"""Capture input and output: pcap and pcapng files as batches for the core.

    with open_capture("in.pcap") as reader, open_output("out.pcap", like=reader) as writer:
        for batch in reader.batches():
            verdicts = ...                      # one Verdict number per packet, array('B')
            writer.write_batch(batch, verdicts)  # DROP and REJECT packets are left out
    # out.pcap appears only here, complete (atomic rename); on an exception it never appears.

A `Batch` is what the core's `process()` takes: one contiguous writable `buf` and per-packet
arrays (offsets array('Q'), lengths array('I'), wire_lengths array('I'), timestamps_ns
array('Q'), ns since the epoch). Packet i is buf[offsets[i] : offsets[i] + lengths[i]], and the
16 bytes before it are reserved for its pcap record header.

Classic pcap (magics a1b2c3d4 / a1b23c4d, either byte order) never goes through a Python object
per packet: the file is read in large chunks straight into a buffer (`packet_buffer`: in huge
pages where the OS has them), the compiled `fastpath._pcap` indexes the records in place
(packet data stays where it was read, after its original record header) and builds the output
records of a whole batch in one go. A record cut by the end of a chunk is carried into the next
one, so memory stays bounded by the chunk size whatever the capture's size; used buffers are
kept in a small pool and reused, so a streaming read allocates nothing per chunk. Writing
copies the original timestamp fields, so an unmodified replay reproduces the input byte for
byte; a batch written in its own encoding with nothing dropped goes out straight
from the input buffer, in one write.

pcapng is read through scapy (imported only then: it costs 0.15-0.6 s to import), into the same
batch layout, so the core sees identical packets, lengths and timestamps for the same traffic;
written with scapy's section and interface blocks and packet blocks of our own.
Only one link type per capture is supported: a pcapng file whose interfaces have different
link types is rejected (the core takes one link type per batch); split it per interface first.
The pcapng output has one interface (link type, snaplen and timestamp resolution of the input);
per-packet comments, flags and interface names are not carried over.

Errors about the capture itself are `CaptureError` with a one-line message naming the file;
OS errors (missing file, permissions) are left as `OSError`.
"""
from __future__ import annotations

import io
import mmap
import os
import stat
import struct
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple, NoReturn, Union, cast

from fastpath import _pcap
from fastpath.atomicfile import AtomicWriter, PreparedOutput

if TYPE_CHECKING:
    import logging  # imported when scapy is (pcapng only), not for classic pcap

__all__ = [
    "Batch",
    "CaptureError",
    "CaptureInfo",
    "CaptureReader",
    "CaptureWriter",
    "VerbatimRecords",
    "open_capture",
    "open_output",
    "packet_buffer",
]

# Bytes read per system call; also the pcapng batch byte budget. Small enough that a read
# buffer is still in the CPU cache when its turn comes again: with two 8 MiB buffers the
# kernel's copy into the buffer and the record scan after it went to memory (replay of the
# standard capture without output: 226 ms with 8 MiB chunks, 150 ms with 2 MiB, same load).
DEFAULT_CHUNK_SIZE = 2 << 20
DEFAULT_BATCH_PACKETS = 65536
# A transparent huge page (x86-64, arm64 with 4 KiB pages): packet buffers of at least half of
# one are made of them (packet_buffer).
HUGE_PAGE = 2 << 20
# Read buffers (and batch index arrays) a pcap reader keeps for reuse: the chunks a replay's
# workers hold at once (fastpath.pipeline: one each, up to three, besides the one being read)
# fit without allocating.
_SPARE_BUFFERS = 4
DEFAULT_SNAPLEN = 262144  # tcpdump's default, also used when a file says 0
MAX_RECORD = 16 << 20  # a captured length beyond this is a damaged file, whatever the snaplen
RECORD_HEADER = 16
# fastpath.verdicts.Verdict.DROP; verdicts from DROP on (DROP, REJECT) are left out.
DROP = 3  # not imported from fastpath.verdicts: keep this module's imports minimal

PathLike = Union[str, "os.PathLike[str]"]
Format = Literal["pcap", "pcapng"]

_NS_PER_S = 1_000_000_000
_MAX_TS_NS = (1 << 64) - 1  # timestamps are uint64 ns in a batch
_MAX_U32 = 0xFFFFFFFF
# magic as it appears in the file -> (byte order, nanosecond timestamps)
_PCAP_MAGICS: dict[bytes, tuple[Literal["<", ">"], bool]] = {
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"  # section header block type (a palindrome: both orders)
_PCAP_FILE_HEADER = 24
# pcapng enhanced packet block up to its data: type, total length, interface id, timestamp
# (high, low), captured length, original length; the total length is repeated after the data.
# Little-endian, like the section header scapy writes.
_EPB_HEAD = struct.Struct("<IIIIIII")
_U32_LE = struct.Struct("<I")


# Link types the core parses (pcap LINKTYPE_* numbers), by name for summaries.
LINKTYPE_NAMES = {
    0: "BSD loopback",
    1: "Ethernet",
    101: "raw IP",
    113: "Linux cooked v1",
    228: "raw IPv4",
    276: "Linux cooked v2",
}


def linktype_name(linktype: int) -> str:
    return LINKTYPE_NAMES.get(linktype, f"link type {linktype} (not parsed: packets pass)")


class CaptureError(Exception):
    """A capture that cannot be read (or written) as asked; the message is one line."""


@dataclass(frozen=True, slots=True)
class CaptureInfo:
    """What an output must reproduce of an input: format, link type, snaplen, timestamp encoding.

    `pcap_header` is the input's 24-byte pcap file header; a pcap output starts with it verbatim
    (version, thiszone and the FCS bits of the link type field included) when it agrees with the
    other fields.
    """

    format: Format
    linktype: int = 1
    snaplen: int = DEFAULT_SNAPLEN
    nanosecond: bool = False
    byteorder: Literal["<", ">"] = "<"
    pcap_header: bytes | None = None

    @property
    def header_flags(self) -> int:
        """This encoding as fastpath._pcap header flags."""
        return (_pcap.HDR_BIG_ENDIAN if self.byteorder == ">" else 0) | (
            _pcap.HDR_NANOSECOND if self.nanosecond else 0
        )


def packet_buffer(size: int) -> bytearray | mmap.mmap:
    """At least `size` zero bytes, writable, for packets the core will process: private
    anonymous memory in whole huge pages where the OS offers transparent huge pages (Linux),
    else a bytearray (and for less than half a huge page).

    The core reads a few bytes of every packet, a new 4 KiB page every 15 packets or so, and in
    a virtual machine each page missing from the TLB costs a walk of two page tables: the
    standard batch (269 MB) took 33.4 ns a packet in 4 KiB pages, 30.0 in 2 MiB ones. The
    length is `size` rounded up to a multiple of HUGE_PAGE, so that Linux can place the mapping
    on huge-page boundaries; pages are made as they are first written.
    """
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or size < HUGE_PAGE // 2:
        return bytearray(size)
    length = -(-size // HUGE_PAGE) * HUGE_PAGE
    try:
        buf = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return bytearray(size)
    try:
        buf.madvise(advice)
    except OSError:
        pass  # no transparent huge pages here: 4 KiB pages, as a bytearray would have
    return buf


class Batch:
    """Packets for one call of the core: a contiguous buffer plus per-packet arrays.

    Packet i is buf[offsets[i] : offsets[i] + lengths[i]] (lengths are captured lengths;
    wire_lengths the original lengths on the wire). buf[offsets[i] - 16 : offsets[i]] is the
    slot of the packet's pcap record header: batches read from a classic pcap file keep the
    file's headers there, encoded as `header_flags` says (fastpath._pcap.HDR_* bits), and -1
    means the slots hold nothing. The core rewrites packets in place in `buf`.

    A batch read from a pcap file shares its buffer with the other batches of the same chunk;
    it stays valid after the reader moves on (the reader reuses a buffer only once no batch of
    it, nor any view of it, is alive).

    A batch from a reader knows where it came from, so errors can name its packets: `source`
    is the capture's path (None for a batch built otherwise) and `first_packet` the 1-based
    number of its packet 0 in that capture.
    """

    __slots__ = ("buf", "offsets", "lengths", "wire_lengths", "timestamps_ns", "header_flags",
                 "source", "first_packet")

    def __init__(
        self,
        buf: bytearray | mmap.mmap,
        offsets: array,
        lengths: array,
        timestamps_ns: array,
        wire_lengths: array | None = None,
        header_flags: int = -1,
    ) -> None:
        if not len(offsets) == len(lengths) == len(timestamps_ns):
            raise ValueError("offsets, lengths and timestamps_ns must have the same length")
        if wire_lengths is None:
            wire_lengths = array("I", lengths)
        elif len(wire_lengths) != len(lengths):
            raise ValueError("wire_lengths and lengths must have the same length")
        self.buf = buf
        self.offsets = offsets
        self.lengths = lengths
        self.wire_lengths = wire_lengths
        self.timestamps_ns = timestamps_ns
        self.header_flags = header_flags
        self.source: str | None = None
        self.first_packet = 1

    def describe(self, i: int) -> str:
        """Packet i for a message: "FILE: packet N" (its number in the capture) if known."""
        if self.source is None:
            return f"packet {i} of a batch"
        return f"{self.source}: packet {self.first_packet + i}"

    @property
    def count(self) -> int:
        return len(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets)

    def packet(self, i: int) -> bytes:
        """Packet i's captured bytes (a copy)."""
        offset = self.offsets[i]
        return bytes(memoryview(self.buf)[offset : offset + self.lengths[i]])

    def packets(self) -> Iterator[tuple[int, bytes]]:
        """(timestamp_ns, bytes) of every packet, in order (a copy each: for tests and tools)."""
        for i in range(len(self.offsets)):
            yield self.timestamps_ns[i], self.packet(i)

    @classmethod
    def from_packets(cls, packets: Iterable[Sequence[Any]]) -> Batch:
        """Build a batch from (ts_ns, bytes) or (ts_ns, bytes, wire_len) items."""
        builder = _BatchBuilder()
        for item in packets:
            data = item[1]
            builder.add(item[0], data, item[2] if len(item) > 2 else len(data))
        return builder.take()

    def __repr__(self) -> str:
        return f"<Batch of {self.count} packets, {len(self.buf)}-byte buffer>"


class _BatchBuilder:
    """Accumulates packets in the batch layout (16-byte header slot before each packet)."""

    __slots__ = ("buf", "offsets", "lengths", "wire_lengths", "timestamps_ns")

    _SLOT = bytes(RECORD_HEADER)

    def __init__(self) -> None:
        self.buf = bytearray()
        self.offsets = array("Q")
        self.lengths = array("I")
        self.wire_lengths = array("I")
        self.timestamps_ns = array("Q")

    def add(self, ts_ns: int, data: bytes | bytearray | memoryview, wire_len: int) -> None:
        self.buf += self._SLOT
        self.offsets.append(len(self.buf))
        self.buf += data
        self.lengths.append(len(data))
        self.wire_lengths.append(wire_len)
        self.timestamps_ns.append(ts_ns)

    def __len__(self) -> int:
        return len(self.offsets)

    def take(self, source: str | None = None, first_packet: int = 1) -> Batch:
        batch = Batch(self.buf, self.offsets, self.lengths, self.timestamps_ns, self.wire_lengths)
        batch.source, batch.first_packet = source, first_packet
        self.__init__()  # type: ignore[misc]
        return batch


# ---------------------------------------------------------------------------------------------
# Reading


class CaptureReader:
    """An open capture. Iterate `batches()` once; use as a context manager (or call close()).

    Attributes: path, format ('pcap' | 'pcapng'), linktype, snaplen, nanosecond (timestamp
    resolution finer than microseconds), byteorder, info (a CaptureInfo for open_output),
    size_bytes (file size), regular_file (False for a pipe or a device), position_bytes (bytes
    consumed so far, for progress), packets_read, bytes_read (captured bytes of those packets), truncated_tail (None, or a
    one-line message when the file ends inside a record: the complete packets before it were
    delivered) and truncated_bytes.
    """

    format: Format
    linktype: int
    snaplen: int
    nanosecond: bool
    byteorder: Literal["<", ">"]

    def __init__(self, path: str, file: IO[bytes]) -> None:
        self.path = path
        self._file = file
        status = os.fstat(file.fileno())
        self.size_bytes = status.st_size
        self.regular_file = stat.S_ISREG(status.st_mode)
        self.packets_read = 0
        self.bytes_read = 0
        self.truncated_tail: str | None = None
        self.truncated_bytes = 0

    @property
    def info(self) -> CaptureInfo:
        return CaptureInfo(self.format, self.linktype, self.snaplen, self.nanosecond, self.byteorder)

    @property
    def position_bytes(self) -> int:
        raise NotImplementedError

    def batches(self, max_packets: int = DEFAULT_BATCH_PACKETS) -> Iterator[Batch]:
        """Yield batches of at most max_packets packets until the end of the capture.

        Raises CaptureError at a damaged record, after the batches before it were yielded.
        """
        raise NotImplementedError

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} {self.format} linktype={self.linktype}>"


def open_capture(path: PathLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> CaptureReader:
    """Open a pcap or pcapng capture, recognised by its magic number (not its name)."""
    name = os.fspath(path)
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    raw = open(name, "rb", buffering=0)  # noqa: SIM115 (owned by the reader)
    try:
        head = _read_exact(raw, 4)
        if not head:
            raise CaptureError(f"{name}: empty file, not a pcap or pcapng capture")
        if head == _PCAPNG_MAGIC[: len(head)] or any(m.startswith(head) for m in _PCAP_MAGICS):
            if len(head) < 4:
                raise CaptureError(f"{name}: truncated capture file header ({len(head)} bytes)")
        if head in _PCAP_MAGICS:
            header = head + _read_exact(raw, _PCAP_FILE_HEADER - 4)
            if len(header) < _PCAP_FILE_HEADER:
                raise CaptureError(
                    f"{name}: truncated pcap file header ({len(header)} of 24 bytes)"
                )
            return _PcapReader(name, raw, header, chunk_size)
        if head == _PCAPNG_MAGIC:
            raw.seek(0)
            return _PcapngReader(name, raw, chunk_size)
        raise CaptureError(
            f"{name}: not a pcap or pcapng capture (starts with 0x{head.hex()})"
        )
    except BaseException:
        raw.close()
        raise


def _read_exact(file: IO[bytes], n: int) -> bytes:
    """Up to n bytes; fewer only at the end of the file (raw reads may return short)."""
    data = b""
    while len(data) < n:
        more = file.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _readinto_full(file: Any, view: memoryview) -> int:
    """Fill view as far as the file allows; returns the bytes read (short only at EOF)."""
    got = 0
    total = len(view)
    while got < total:
        n = file.readinto(view[got:])
        if not n:
            break
        got += n
    return got


class _PcapReader(CaptureReader):
    format: Format = "pcap"

    def __init__(self, path: str, raw: io.FileIO, header: bytes, chunk_size: int):
        super().__init__(path, raw)
        self.byteorder, self.nanosecond = _PCAP_MAGICS[header[:4]]
        _, _, _, _, _, snaplen, network = struct.unpack(self.byteorder + "IHHiIII", header)
        self.snaplen = snaplen
        self.linktype = network & 0xFFFF  # the upper bits carry FCS information
        self._header = header
        self._flags = (_pcap.HDR_BIG_ENDIAN if self.byteorder == ">" else 0) | (
            _pcap.HDR_NANOSECOND if self.nanosecond else 0
        )
        # A record longer than the snaplen allows (with a margin for writers that ignore it),
        # or longer than any real frame, means the file is damaged.
        self._max_caplen = min(max(snaplen, DEFAULT_SNAPLEN), MAX_RECORD)
        self._chunk_size = chunk_size
        self._buf: bytearray | mmap.mmap = bytearray()
        # Buffers read before _buf, reused for later chunks once no batch of them is alive.
        self._spares: list[bytearray | mmap.mmap] = []
        self._probe = bytearray()  # held like a spare (see _refill): the baseline count
        # The index arrays of batches made before, reused like the buffers (_unheld_index).
        self._index_spares: list[tuple[array, array, array, array]] = []
        self._filled = 0  # valid bytes in _buf
        self._pos = 0  # next unconsumed byte in _buf
        self._base = _PCAP_FILE_HEADER  # file offset of _buf[0]

    @property
    def info(self) -> CaptureInfo:
        return CaptureInfo(
            "pcap", self.linktype, self.snaplen, self.nanosecond, self.byteorder, self._header
        )

    @property
    def position_bytes(self) -> int:
        return self._base + self._pos

    def batches(self, max_packets: int = DEFAULT_BATCH_PACKETS) -> Iterator[Batch]:
        if max_packets < 1:
            raise ValueError("max_packets must be at least 1")
        eof = False
        need = RECORD_HEADER
        while True:
            if self._pos < self._filled:
                offsets, lengths, wires, stamps, pos, status, need = _pcap.scan_records(
                    self._buf, self._pos, self._filled, self._flags, self._max_caplen, max_packets,
                    self._unheld_index(),
                )
                self._index_spares.append((offsets, lengths, wires, stamps))
                if len(self._index_spares) > _SPARE_BUFFERS:
                    del self._index_spares[0]
                # The records scanned lie back to back: their data is all but the headers.
                self.bytes_read += pos - self._pos - RECORD_HEADER * len(offsets)
                self._pos = pos
                if len(offsets):
                    batch = Batch(self._buf, offsets, lengths, stamps, wires, self._flags)
                    batch.source, batch.first_packet = self.path, self.packets_read + 1
                    self.packets_read += len(offsets)
                    yield batch
                if status == _pcap.SCAN_BAD_RECORD:
                    raise CaptureError(
                        f"{self.path}: damaged record at byte offset {self.position_bytes}: "
                        f"captured length {need} exceeds the limit of {self._max_caplen} "
                        f"(snaplen {self.snaplen})"
                    )
                if status == _pcap.SCAN_FULL:
                    continue
            else:
                need = RECORD_HEADER
            if eof:
                break
            eof = self._refill(need)
        left = self._filled - self._pos
        if left:
            self.truncated_bytes = left
            self.truncated_tail = (
                f"{self.path}: file ends inside the record at byte offset {self.position_bytes} "
                f"({left} of {need} bytes present); ignored after {self.packets_read} "
                "complete packets"
            )

    def _unheld_index(self) -> tuple[array, array, array, array] | None:
        """The index arrays of an earlier batch that nothing references any more, taken off
        the spares for scan_records to fill again; None when every spare is still held.

        Fresh arrays for every chunk cost a new process a page fault per 4 KiB of them (glibc
        hands the freed ones back to the kernel): about 5,000 faults, 5-10 ms, in a replay of
        the standard capture.
        """
        spares, probe = self._index_spares, self._probe
        for index, arrays in enumerate(spares):
            # Each array and probe are referenced alike here (a container, a local, the
            # argument): equal counts mean no batch, view or caller holds it.
            if all(sys.getrefcount(held) == sys.getrefcount(probe) for held in arrays):
                return spares.pop(index)
        return None

    def _refill(self, need: int) -> bool:
        """Move the unconsumed tail to the start of the next buffer, then read; True at EOF.

        Used buffers are kept in a small pool and reused, so a streaming read allocates (and
        zero-fills) no memory per chunk. A buffer is reused only when nothing references it
        any more (its batches were dropped): batches still held, by a caller or by a replay's
        stages further down, keep theirs, and a new one is made.
        """
        carry = self._filled - self._pos
        size = max(self._chunk_size, need, carry + 1)
        buf = None
        spares, probe = self._spares, self._probe
        for index in range(len(spares)):
            spare = spares[index]
            # spare and probe are referenced alike here (the list or an attribute, a local,
            # the argument): equal counts mean no batch or view holds spare.
            if len(spare) >= size and sys.getrefcount(spare) == sys.getrefcount(probe):
                buf, size = spares.pop(index), len(spare)
                break
        spare = None
        if buf is None:
            buf = packet_buffer(size)
        buf[:carry] = memoryview(self._buf)[self._pos : self._filled]
        got = _readinto_full(self._file, memoryview(buf)[carry:])
        self._base += self._pos
        if self._buf:
            self._spares.append(self._buf)
            if len(self._spares) > _SPARE_BUFFERS:
                del self._spares[0]  # the oldest: most likely still held
        self._buf, self._pos, self._filled = buf, 0, carry + got
        return carry + got < size


class _ScapyLog:
    """Keeps scapy's warnings about a damaged pcapng out of stderr, for our one-line message.

    Installed only around our own calls into scapy, so other scapy use is left alone. A logging
    filter need not subclass logging.Filter (an object with a filter method is one), so classic
    pcap never imports logging.
    """

    def __init__(self) -> None:
        import logging

        self.messages: list[str] = []
        self._logger = logging.getLogger("scapy.runtime")

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return False

    def __enter__(self) -> None:
        self._logger.addFilter(self)

    def __exit__(self, *exc: object) -> None:
        self._logger.removeFilter(self)


class _PcapngReader(CaptureReader):
    format: Format = "pcapng"
    byteorder: Literal["<", ">"] = "<"

    def __init__(self, path: str, raw: io.FileIO, chunk_size: int):
        from scapy.error import Scapy_Exception
        from scapy.utils import RawPcapNgReader

        self._log = _ScapyLog()
        self._scapy_error = Scapy_Exception
        buffered = io.BufferedReader(raw, 1 << 20)
        super().__init__(path, buffered)
        try:
            with self._log:
                self._ng = RawPcapNgReader(cast(Any, buffered))  # takes a file object too
        except Scapy_Exception:
            self.close()
            raise CaptureError(
                f"{path}: damaged or truncated pcapng section header block"
                + self._scapy_detail()
            ) from None
        self._chunk_size = chunk_size
        self._last_good = buffered.tell()  # end of the last block read successfully
        # Read up to the first packet now, so that linktype and snaplen are known up front.
        self._pending = self._next_packet()
        interfaces = self._ng.interfaces
        if self._pending is not None:
            self.linktype = self._pending[1].linktype
        else:
            self.linktype = interfaces[0][0] if interfaces else 1
        self.snaplen = (interfaces[0][1] if interfaces else 0) or DEFAULT_SNAPLEN
        tsresol = interfaces[0][2].get("tsresol", 10**6) if interfaces else 10**6
        self.nanosecond = tsresol > 10**6

    def _scapy_detail(self) -> str:
        return f" ({self._log.messages[-1]})" if self._log.messages else ""

    def _next_packet(self) -> tuple[bytes, Any] | None:
        try:
            # _read_packet is what scapy's own iteration calls; the public read_packet of the
            # raw readers raises, and iteration would truncate packets to 64 KiB.
            with self._log:
                packet = self._ng._read_packet(size=MAX_RECORD)
        except (EOFError, self._scapy_error):
            return None  # _check_tail tells a clean end from a cut or damaged block
        self._last_good = self._file.tell()
        return packet

    @property
    def position_bytes(self) -> int:
        return self._file.tell()

    def batches(self, max_packets: int = DEFAULT_BATCH_PACKETS) -> Iterator[Batch]:
        if max_packets < 1:
            raise ValueError("max_packets must be at least 1")
        builder = _BatchBuilder()
        while self._pending is not None:
            data, meta = self._pending
            if meta.linktype != self.linktype:
                if len(builder):
                    yield self._take(builder)
                raise CaptureError(
                    f"{self.path}: interfaces with different link types ({self.linktype} and "
                    f"{meta.linktype}) after {self.packets_read} packets; split the capture per "
                    "interface first (e.g. tshark -r FILE -w OUT -Y 'frame.interface_id == N')"
                )
            if meta.tshigh is None:  # simple packet block: no timestamp
                ts_ns = 0
            else:
                ts_ns = ((meta.tshigh << 32) | meta.tslow) * _NS_PER_S // meta.tsresol
                if ts_ns > _MAX_TS_NS:  # a coarse if_tsresol lets 64 bits go past 2**64 ns
                    if len(builder):
                        yield self._take(builder)
                    raise CaptureError(
                        f"{self.path}: packet {self.packets_read + 1}: timestamp "
                        f"{(meta.tshigh << 32) | meta.tslow} in units of 1/{meta.tsresol} s is past "
                        "2**64 ns since 1970 (the year 2554), beyond what fastpath handles"
                    )
            builder.add(ts_ns, data, meta.wirelen)
            self.packets_read += 1
            self.bytes_read += len(data)
            if len(builder) >= max_packets or len(builder.buf) >= self._chunk_size:
                yield self._take(builder)
            self._pending = self._next_packet()
        if len(builder):
            yield self._take(builder)
        self._check_tail()

    def _take(self, builder: _BatchBuilder) -> Batch:
        return builder.take(self.path, self.packets_read - len(builder) + 1)

    def _check_tail(self) -> None:
        """scapy reports a cut or damaged block as a plain end of file: walk the blocks after
        the last packet to tell a clean end from a truncated file or a damaged block."""
        f = self._file
        pos = self._last_good
        endian = self._ng.endian
        while pos < self.size_bytes:
            f.seek(pos)
            head = f.read(12)
            if len(head) < 8:
                return self._truncated(pos)
            block_type, length = struct.unpack(endian + "II", head[:8])
            if block_type == 0x0A0D0D0A and len(head) == 12:  # a new section: its byte order
                endian = "<" if head[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
                length = struct.unpack(endian + "I", head[4:8])[0]
            if length < 12 or length % 4 or length > MAX_RECORD + (1 << 16):
                self._damaged(pos, f"block length {length}")
            if pos + length > self.size_bytes:
                return self._truncated(pos)
            f.seek(pos + length - 4)
            if f.read(4) != head[4:8]:
                self._damaged(pos, "trailing block length differs")
            if block_type in (2, 3, 6):  # a complete packet block scapy could not read
                self._damaged(pos, "unreadable packet block")
            pos += length

    def _truncated(self, pos: int) -> None:
        self.truncated_bytes = self.size_bytes - pos
        self.truncated_tail = (
            f"{self.path}: file ends inside the pcapng block at byte offset {pos}; "
            f"{self.truncated_bytes} bytes ignored after {self.packets_read} complete packets"
        )

    def _damaged(self, pos: int, what: str) -> NoReturn:
        raise CaptureError(
            f"{self.path}: damaged pcapng block at byte offset {pos}: {what}"
            + self._scapy_detail()
        )


# ---------------------------------------------------------------------------------------------
# Writing


class VerbatimRecords(NamedTuple):
    """Records to be written as they lie in a batch's buffer (CaptureWriter.verbatim_records)."""

    data: memoryview
    packets: int


class CaptureWriter(AtomicWriter):
    """Writes a capture atomically: to a temporary file beside `path`, renamed over it on commit.

    As a context manager it commits on normal exit and discards everything on an exception
    (KeyboardInterrupt included): no half-written output, and a pre-existing file is untouched.
    Outside `with`, call commit() then close(); close() without commit() discards the output.
    A target that exists and is not a regular file (/dev/null, a FIFO) is written in place;
    `regular_file` says which.
    """

    path: str

    def __init__(self, path: PathLike | PreparedOutput, info: CaptureInfo) -> None:
        super().__init__()
        self.info = info
        self.packets_written = 0
        self._out = bytearray()  # reused output buffer for write_batch
        self._ng: Any = None
        if info.format not in ("pcap", "pcapng"):
            raise ValueError(f"unknown capture format {info.format!r}")
        fd = self._open_target(path)
        try:
            if info.format == "pcap":
                self._file = os.fdopen(fd, "wb", buffering=1 << 20)
                self._file.write(_pcap_file_header(info))
            else:
                os.close(fd)
                self._ng = _pcapng_writer(self._tmp or self.path, info)
                self._file = self._ng.f
        except BaseException:
            self.close()
            raise

    def write_batch(
        self,
        batch: Batch,
        verdicts: Any = None,
        start: int = 0,
        stop: int | None = None,
    ) -> int:
        """Write packets start..stop-1 of a batch whose verdict is not DROP or REJECT; returns how many.

        verdicts: one Verdict number per packet of the whole batch (array('B') or any uint8
        buffer), None to keep all. The range lets a caller insert packets (write_packet)
        between two packets of a batch.
        """
        self._check_open()
        stop = batch.count if stop is None else stop
        if self._ng is None:
            verbatim = self.verbatim_records(batch, verdicts, start, stop)
            if verbatim is not None:
                self.write_verbatim(verbatim)
                return verbatim.packets
            try:
                nbytes, kept = _pcap.build_records(
                    batch.buf, batch.offsets, batch.lengths, batch.wire_lengths,
                    batch.timestamps_ns, verdicts, batch.header_flags,
                    self.info.header_flags, self._out, start, stop,
                )
            except _pcap.TimestampError as error:
                raise CaptureError(
                    f"{batch.describe(error.index)} cannot be written to {self.path}: "
                    + _beyond_pcap(error.timestamp_ns, self.info.nanosecond)
                ) from None
            self._file.write(memoryview(self._out)[:nbytes])  # type: ignore[union-attr]
        else:
            if verdicts is not None and len(verdicts) != batch.count:
                raise ValueError(f"{len(verdicts)} verdicts for {batch.count} packets")
            if not 0 <= start <= stop <= batch.count:
                raise ValueError(f"packet range [{start}, {stop}) outside a batch of {batch.count}")
            kept = 0
            for i in range(start, stop):
                if verdicts is None or verdicts[i] < DROP:
                    self._write_ng(batch.timestamps_ns[i], batch.packet(i), batch.wire_lengths[i])
                    kept += 1
        self.packets_written += kept
        return kept

    def verbatim_records(self, batch: Batch, verdicts: Any = None, start: int = 0,
                         stop: int | None = None) -> VerbatimRecords | None:
        """What write_batch would write for these packets when it is a span of the batch's own
        buffer as it is, else None: a classic pcap batch read in this file's encoding, nothing
        dropped. Reads the batch without writing, so it can run apart from the writes (a replay
        checks a batch while an earlier one is being written); write_verbatim() writes it."""
        if self._ng is not None:
            return None
        stop = batch.count if stop is None else stop
        span = _pcap.verbatim_span(
            batch.buf, batch.offsets, batch.lengths, batch.wire_lengths, batch.timestamps_ns,
            verdicts, batch.header_flags, self.info.header_flags, start, stop,
        )
        if span is None:
            return None
        return VerbatimRecords(memoryview(batch.buf)[span[0] : span[1]], stop - start)

    def write_verbatim(self, records: VerbatimRecords) -> None:
        """Write what verbatim_records() returned (the batch unchanged since)."""
        self._check_open()
        self._file.write(records.data)  # type: ignore[union-attr]
        self.packets_written += records.packets

    def write_verbatim_in_turn(self, records: VerbatimRecords, turns: Any, index: int) -> bool:
        """write_verbatim() in item `index`'s turn of `turns` (fastpath._pcap.WriteTurns): the
        turn is waited for and the records written straight to the file, the GIL released
        throughout. False (nothing written) if the run failed first. What the writer wrote
        before must have been flushed (flush())."""
        self._check_open()
        if not turns.write(index, self._file.fileno(), records.data):  # type: ignore[union-attr]
            return False
        self.packets_written += records.packets
        return True

    def flush(self) -> None:
        """Hand what was written so far to the file (before writes made on its descriptor)."""
        self._check_open()
        self._file.flush()  # type: ignore[union-attr]

    def write_packet(self, ts_ns: int, data: bytes, wire_len: int | None = None) -> None:
        """Write one record (e.g. a generated reply) after what was written so far."""
        self._check_open()
        wire_len = len(data) if wire_len is None else wire_len
        if ts_ns < 0:
            raise ValueError(f"negative timestamp {ts_ns} ns")
        if self._ng is None:
            fields = _pcap_time_fields(ts_ns, self.info.nanosecond)
            if fields is None:
                raise CaptureError(
                    f"{self.path}: cannot write record {self.packets_written + 1}: "
                    + _beyond_pcap(ts_ns, self.info.nanosecond)
                )
            sec, frac = fields
            order = self.info.byteorder
            self._file.write(struct.pack(order + "IIII", sec, frac, len(data), wire_len))  # type: ignore[union-attr]
            self._file.write(data)  # type: ignore[union-attr]
        else:
            self._write_ng(ts_ns, bytes(data), wire_len)
        self.packets_written += 1

    def _write_ng(self, ts_ns: int, data: bytes, wire_len: int) -> None:
        # The enhanced packet block is built here: scapy's writer would write the captured
        # length as the original length when the latter is 0.
        if ts_ns > _MAX_TS_NS:  # only from write_packet: batches hold uint64 timestamps
            raise CaptureError(f"{self.path}: cannot write record {self.packets_written + 1}: its "
                               f"timestamp ({ts_ns} ns since 1970) is past 2**64 ns")
        units = ts_ns if self.info.nanosecond else ts_ns // 1000  # the interface's if_tsresol
        pad = -len(data) % 4
        total = 32 + len(data) + pad
        self._file.write(  # type: ignore[union-attr]
            _EPB_HEAD.pack(6, total, 0, units >> 32, units & _MAX_U32, len(data), wire_len)
            + data + bytes(pad) + _U32_LE.pack(total)
        )


def open_output(
    path: PathLike | PreparedOutput,
    like: CaptureReader | CaptureInfo | tuple[Any, ...],
) -> CaptureWriter:
    """Open an atomic capture writer.

    path: the output file, or a fastpath.atomicfile.PreparedOutput of it (taken over).
    like: a CaptureReader (same format, link type, snaplen, timestamp resolution and byte order
    as that input), a CaptureInfo, or a tuple (format, linktype, snaplen, nanosecond[, byteorder]).
    Use dataclasses.replace(reader.info, format="pcapng") to convert.
    """
    if isinstance(like, CaptureReader):
        info = like.info
    elif isinstance(like, CaptureInfo):
        info = like
    else:
        info = CaptureInfo(*like)
    return CaptureWriter(path, info)


def _pcap_time_fields(ts_ns: int, nanosecond: bool) -> tuple[int, int] | None:
    """(seconds, fraction) of a pcap record header for ts_ns, None if it cannot hold it.

    The same rule as fastpath._pcap.build_records: past 2106 the last second's fraction field
    takes the rest, as a non-canonical input record read this way had it.
    """
    sec, frac = divmod(ts_ns, _NS_PER_S)
    if sec > _MAX_U32:
        sec, frac = _MAX_U32, ts_ns - _MAX_U32 * _NS_PER_S
    if not nanosecond:
        frac //= 1000
    return (sec, frac) if frac <= _MAX_U32 else None


def _beyond_pcap(ts_ns: int, nanosecond: bool) -> str:
    unit = "nanosecond" if nanosecond else "microsecond"
    return (f"its timestamp ({ts_ns} ns since 1970) is past 2106 by more than a pcap record's "
            f"32-bit {unit} field holds")


def _pcap_file_header(info: CaptureInfo) -> bytes:
    header = info.pcap_header
    if header is not None and len(header) == _PCAP_FILE_HEADER:
        order, nano = _PCAP_MAGICS.get(header[:4], (None, None))
        _, _, _, _, _, snaplen, network = struct.unpack((order or "<") + "IHHiIII", header)
        if (order, nano, snaplen, network & 0xFFFF) == (
            info.byteorder, info.nanosecond, info.snaplen, info.linktype
        ):
            return header
    magic = 0xA1B23C4D if info.nanosecond else 0xA1B2C3D4
    return struct.pack(info.byteorder + "IHHiIII", magic, 2, 4, 0, 0, info.snaplen, info.linktype)


def _pcapng_writer(path: str, info: CaptureInfo) -> Any:
    """A scapy pcapng writer whose interface block carries our snaplen and resolution."""
    from scapy.utils import RawPcapNgWriter

    class Writer(RawPcapNgWriter):  # type: ignore[misc]
        def _write_block_idb(self, linktype: int, ifname: bytes | None = None) -> None:
            # scapy writes a fixed snaplen and no if_tsresol option (readers then assume µs).
            body = struct.pack("<HHI", linktype, 0, info.snaplen)
            options = b""
            if info.nanosecond:
                options = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
            self.f.write(self.build_block(struct.pack("<I", 1), body, options=options or None))

    writer = Writer(path)
    writer.f.close()  # scapy opened it with a 4 KiB buffer
    writer.f = open(path, "wb", 1 << 20)  # noqa: SIM115 (closed by CaptureWriter)
    writer.linktype = info.linktype
    if info.nanosecond:
        writer.tsresol = _NS_PER_S
    writer.write_header(None)
    return writer

"""Typed stub of fastpath._pcap (compiled from fastpath/pcap.pyx): classic pcap record loops."""
from array import array

from typing_extensions import Buffer

# header_flags bits: how the 16-byte pcap record headers in a batch buffer are encoded
# (-1: the header slots hold nothing).
HDR_BIG_ENDIAN: int
HDR_NANOSECOND: int
# scan_records status
SCAN_FULL: int
SCAN_NEED_MORE: int
SCAN_BAD_RECORD: int
RECORD_HEADER: int  # 16

class TimestampError(OverflowError):
    """build_records: a timestamp no pcap record header of the output encoding can hold."""

    index: int  # the packet's index in the batch
    timestamp_ns: int
    def __init__(self, index: int, timestamp_ns: int, nanosecond: bool) -> None: ...

def scan_records(
    buf: Buffer,
    start: int,
    end: int,
    header_flags: int,
    max_caplen: int,
    max_packets: int,
    into: tuple[array[int], array[int], array[int], array[int]] | None = None,
) -> tuple[array[int], array[int], array[int], array[int], int, int, int]:
    """Index complete records in buf[start:end]: (offsets 'Q', lengths 'I', wire_lengths 'I',
    timestamps_ns 'Q', pos, status, need); `into`: those four arrays to fill instead of new
    ones."""

def build_records(
    buf: Buffer,
    offsets: Buffer,
    lengths: Buffer,
    wire_lengths: Buffer,
    timestamps_ns: Buffer,
    verdicts: Buffer | None,
    batch_flags: int,
    out_flags: int,
    out: bytearray,
    start: int = 0,
    stop: int = -1,
) -> tuple[int, int]:
    """Write the records of packets start..stop-1 not dropped (verdict 3) to out:
    (bytes written, packets written). TimestampError for a timestamp the encoding cannot hold."""

def verbatim_span(
    buf: Buffer,
    offsets: Buffer,
    lengths: Buffer,
    wire_lengths: Buffer,
    timestamps_ns: Buffer,
    verdicts: Buffer | None,
    batch_flags: int,
    out_flags: int,
    start: int = 0,
    stop: int = -1,
) -> tuple[int, int] | None:
    """(begin, end) when buf[begin:end] is what build_records would write for packets
    start..stop-1 (none dropped, records back to back, headers already in out_flags form)."""

class SpaceReservation:
    """Allocates an open file's first `size` bytes of space, `step` at a time, its size unchanged
    (Linux fallocate, FALLOC_FL_KEEP_SIZE), on the thread calling run(), until cancel()."""

    def __init__(self, fd: int, size: int, step: int = ...) -> None: ...
    def run(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def reserved(self) -> int: ...
    @property
    def error(self) -> int: ...

class WriteTurns:
    """Writes of items 0, 1, 2... to one file from several threads, each in its turn, waiting
    and writing without the GIL; fail() ends the run (waiters return False)."""

    def write(self, index: int, fd: int, data: Buffer) -> bool: ...
    def wait(self, index: int) -> bool: ...
    def done(self, index: int) -> None: ...
    def fail(self) -> None: ...

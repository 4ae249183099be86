"""Shared pieces of the fuzz harnesses: the input decoder, guard-page buffers, wire helpers.

`FuzzInput` turns any byte string into a stream of small decisions (every draw consumes bytes,
draws past the end return 0), so a harness is a pure function of its input and libFuzzer's byte
mutations become scenario mutations. `RecordingInput` makes the same draws from a random.Random
and records the bytes they consumed: decoding the recording replays the same scenario (how
make_corpus.py writes seeds and the smoke test makes inputs).

`GuardArena` places each packet against a PROT_NONE page (right before it or right after it), so
a read or write one byte outside a packet faults at once, without AddressSanitizer.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import random
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class FuzzInput:
    """Decisions drawn from a byte string, front to back (big-endian integers)."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)

    def _next(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def take(self, n: int) -> bytes:
        """Up to n raw bytes (fewer at the end of the input)."""
        return self._next(n) if n > 0 else b""

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self._next(nbytes).ljust(nbytes, b"\0"), "big")

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def u32(self) -> int:
        return self.uint(4)

    def u64(self) -> int:
        return self.uint(8)

    def below(self, n: int) -> int:
        """A value in [0, n) from as few bytes as n needs."""
        if n <= 1:
            return 0
        nbytes = 1 if n <= 256 else 2 if n <= 65536 else 4 if n <= 1 << 32 else 8
        return self.uint(nbytes) % n

    def chance(self, numerator: int, denominator: int = 256) -> bool:
        """True with probability numerator/denominator for a uniform byte (one byte)."""
        return self.u8() * denominator < numerator * 256

    def choice(self, items: Sequence[T]) -> T:
        return items[self.below(len(items))]


class RecordingInput(FuzzInput):
    """Draws from a random source instead, recording the consumed bytes (see `recorded`)."""

    def __init__(self, rng: random.Random, budget: int = 1 << 16) -> None:
        super().__init__(b"")
        self.rng = rng
        self.budget = budget
        self.log = bytearray()

    @property
    def exhausted(self) -> bool:
        return len(self.log) >= self.budget

    def _next(self, n: int) -> bytes:
        chunk = self.rng.randbytes(n)
        self.log += chunk
        self.pos += n
        return chunk

    @property
    def recorded(self) -> bytes:
        return bytes(self.log)


# --------------------------------------------------------------------------- guard pages

PAGE = mmap.PAGESIZE
PROT_NONE = 0


class GuardArena:
    """`slots` writable regions of `pages` pages each, every one between two PROT_NONE pages.

    Layout: [guard][slot 0][guard][slot 1][guard] ... The whole mapping is one buffer (`view`) a
    batch can be built in: packet i goes at the end of slot i (an over-read faults on the guard
    after it) or at its start (an under-read faults on the guard before it). Without mprotect
    (not Linux) the arena still works, only without the faults (`guarded` is False).
    """

    def __init__(self, slots: int, pages: int) -> None:
        self.slots = slots
        self.slot_size = pages * PAGE
        self.stride = (pages + 1) * PAGE
        self.size = PAGE + slots * self.stride
        self.map = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.map)
        self.guarded = False
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            anchor = ctypes.c_char.from_buffer(self.map)
            base = ctypes.addressof(anchor)
            del anchor
            for k in range(slots + 1):
                if libc.mprotect(base + k * self.stride, PAGE, PROT_NONE) != 0:
                    raise OSError(ctypes.get_errno(), "mprotect of a guard page failed")
            self.guarded = True

    def slot_start(self, i: int) -> int:
        return PAGE + i * self.stride

    def slot_end(self, i: int) -> int:
        return self.slot_start(i) + self.slot_size


# --------------------------------------------------------------------------- wire helpers

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMPV6 = 1, 6, 17, 132, 58
# IPv6 extension headers (RFC 8200 4, RFC 4302): hop-by-hop, routing, fragment, AH, destination
# options.
EXT_HOP_BY_HOP, EXT_ROUTING, EXT_FRAGMENT, EXT_AH, EXT_DEST_OPTS = 0, 43, 44, 51, 60
EXTENSION_HEADERS = (EXT_HOP_BY_HOP, EXT_ROUTING, EXT_FRAGMENT, EXT_AH, EXT_DEST_OPTS)
NULL_FAMILIES_IPV6 = (24, 28, 30)  # BSD loopback AF_INET6 values (NetBSD/OpenBSD, FreeBSD, macOS)


def link_layer(linktype: int, data: bytes | memoryview) -> tuple[int, int] | None:
    """(L3 protocol as an ethertype, offset of the L3 header) of a frame of this link type, None
    when its link header is cut or the link type unknown. NULL and raw IP frames report 0x0800 /
    0x86DD for their family / version nibble (0 for anything else).

    Written from the link-layer formats, for the harness's own checks (not from the core).
    """
    n = len(data)
    if linktype == 1:
        if n < 14:
            return None
        ethertype, off = (data[12] << 8) | data[13], 14
        while ethertype in VLAN_ETHERTYPES:
            if off + 4 > n:
                return None
            ethertype, off = (data[off + 2] << 8) | data[off + 3], off + 4
        return ethertype, off
    if linktype == 113:
        return ((data[14] << 8) | data[15], 16) if n >= 16 else None
    if linktype == 276:
        return ((data[0] << 8) | data[1], 20) if n >= 20 else None
    if linktype == 0:
        if n < 4:
            return None
        be, le = int.from_bytes(data[:4], "big"), int.from_bytes(data[:4], "little")
        if 2 in (be, le):
            return ETHERTYPE_IPV4, 4
        if be in NULL_FAMILIES_IPV6 or le in NULL_FAMILIES_IPV6:
            return ETHERTYPE_IPV6, 4
        return 0, 4
    if linktype in (101, 228):
        if n < 1:
            return None
        return {4: ETHERTYPE_IPV4, 6: ETHERTYPE_IPV6}.get(data[0] >> 4, 0), 0
    return None


def ip_offset(linktype: int, data: bytes | memoryview) -> tuple[int, int] | None:
    """(offset, version) of the IP header in a frame of this link type: version 4 with at least
    20 bytes or 6 with at least 40 from there, the link layer saying the same; else None."""
    link = link_layer(linktype, data)
    if link is None:
        return None
    ethertype, off = link
    n = len(data)
    if ethertype == ETHERTYPE_IPV4 and n - off >= 20 and data[off] >> 4 == 4:
        return off, 4
    if ethertype == ETHERTYPE_IPV6 and n - off >= 40 and data[off] >> 4 == 6:
        return off, 6
    return None


def l3_offset(linktype: int, data: bytes | memoryview) -> int | None:
    """Where the IPv4 header starts in a frame of this link type, None if it is not IPv4."""
    found = ip_offset(linktype, data)
    return found[0] if found is not None and found[1] == 4 else None


def is_v4_mapped(address16: bytes | memoryview) -> bool:
    """An IPv6 address in ::ffff:0:0/96 (an IPv4 address, never an IPv6 one on the wire)."""
    return bytes(address16[:12]) == b"\0" * 10 + b"\xff\xff"


@dataclass
class V6Layout:
    """An IPv6 packet's extension-header chain walked by the rules of the spec (fastpath.reference,
    "IPv6"), from the captured bytes at l3: where the transport header starts and what it is."""

    status: str  # "ok", "truncated" (a header past the capture), "bad" (past the datagram, a
    #              second fragment header), "unsupported" (a 9th extension header, a routing
    #              header with segments left)
    proto: int  # the last next header (ok), else the one being walked
    l4: int  # offset of the transport header from l3 (ok)
    end: int  # 40 + payload length
    headers: list[tuple[int, int, int]]  # (type, offset from l3, length) of each header walked
    fragment: tuple[int, int, int, int] | None  # (offset in 8-byte units, M, id, nh)

    @property
    def later_fragment(self) -> bool:
        return self.fragment is not None and self.fragment[0] != 0

    @property
    def first_fragment(self) -> bool:
        return self.fragment is not None and self.fragment[0] == 0 and self.fragment[1] == 1


def walk_ipv6(ip: bytes | memoryview) -> V6Layout:
    """Walk the extension headers of the IPv6 packet `ip` (captured bytes from its header on)."""
    captured = len(ip)
    end = 40 + ((ip[4] << 8) | ip[5])
    nh, off = ip[6], 40
    headers: list[tuple[int, int, int]] = []
    fragment = None
    while nh in EXTENSION_HEADERS:
        if len(headers) == 8:
            return V6Layout("unsupported", nh, off, end, headers, fragment)
        if off + 8 > captured:
            return V6Layout("truncated", nh, off, end, headers, fragment)
        if nh == EXT_FRAGMENT:
            length = 8
        elif nh == EXT_AH:
            length = (ip[off + 1] + 2) * 4
        else:
            length = (ip[off + 1] + 1) * 8
        if off + length > end:
            return V6Layout("bad", nh, off, end, headers, fragment)
        headers.append((nh, off, length))
        if nh == EXT_ROUTING and ip[off + 3] != 0:  # segments left: not at its destination yet
            return V6Layout("unsupported", nh, off, end, headers, fragment)
        if nh == EXT_FRAGMENT:
            if fragment is not None:
                return V6Layout("bad", nh, off, end, headers, fragment)
            fragment = (((ip[off + 2] << 8) | ip[off + 3]) >> 3, ip[off + 3] & 1,
                        int.from_bytes(ip[off + 4 : off + 8], "big"), ip[off])
            if fragment[0]:
                return V6Layout("ok", ip[off], off + 8, end, headers, fragment)
        nh = ip[off]
        off += length
    return V6Layout("ok", nh, off, end, headers, fragment)


def ones_sum(data: bytes | memoryview, total: int = 0) -> int:
    """The 16-bit one's complement sum of data (odd length padded with a zero byte), folded."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total += sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes | memoryview, total: int = 0) -> int:
    return ~ones_sum(data, total) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The IPv4 pseudo-header (RFC 793/768), or the IPv6 one (RFC 8200 8.1) for 16-byte
    addresses: 32-bit upper-layer length, three zero bytes, next header."""
    if len(src) == 16:
        return ones_sum(bytes(src) + bytes(dst) + struct.pack("!I3xB", length, proto))
    return ones_sum(bytes(src) + bytes(dst) + struct.pack("!BBH", 0, proto, length & 0xFFFF))


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes | memoryview) -> int:
    c = 0xFFFFFFFF
    for b in bytes(data):
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def sctp_crc_field(segment: bytes) -> bytes:
    """The 4 bytes an SCTP checksum field must hold for this segment (field read as zero)."""
    zeroed = segment[:8] + b"\0\0\0\0" + segment[12:]
    return struct.pack("<I", crc32c(zeroed))


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


# --------------------------------------------------------------------------- command line

DEFAULT_ROOT = os.environ.get("FASTPATH_FUZZ_DIR", "/tmp/fastpath-fuzz")


def parse_own(argv: list[str], names: tuple[str, ...],
              flags: tuple[str, ...]) -> tuple[list[str], dict]:
    """Take our --options out of argv (--name VALUE or --name=VALUE, repeatable; bare flags);
    everything else is left for atheris/libFuzzer."""
    rest: list[str] = [argv[0]]
    own: dict = {}
    i = 1
    while i < len(argv):
        arg = argv[i]
        key, _, value = arg[2:].partition("=")
        if arg.startswith("--") and key in names:
            if not value:
                i += 1
                value = argv[i] if i < len(argv) else ""
            own.setdefault(key, []).append(value)
        elif arg.startswith("--") and key in flags:
            own[key] = True
        else:
            rest.append(arg)
        i += 1
    return rest, own


def ignoring(test_one_input):
    """Wrap a harness body so that findings whose "Type: message" matches the regular expression
    in FASTPATH_FUZZ_IGNORE ("known": those of known_findings.py) are not reported, so that a
    long run goes on past a bug already known."""
    pattern = os.environ.get("FASTPATH_FUZZ_IGNORE", "")
    if not pattern:
        return test_one_input
    import re

    if pattern == "known":  # the signatures of tests/fuzz/known_findings.py
        from known_findings import KNOWN

        pattern = "|".join(f"(?:{signature})" for signature, _ in KNOWN.values())
        if not pattern:  # nothing known: an empty pattern would match every finding
            return test_one_input

    known = re.compile(pattern)

    def body(data: bytes) -> None:
        try:
            test_one_input(data)
        except Exception as exc:
            if not known.search(f"{type(exc).__name__}: {exc}"):
                raise

    return body


def fuzz_main(name: str, test_one_input, argv: list[str], corpora: list[str]) -> int:
    """Run atheris on test_one_input.

    corpora: --corpus folders; with none and no positional argument (a folder or a reproducer
    file for libFuzzer), DEFAULT_ROOT/corpus/NAME, seeded by make_corpus.py when empty. Crash
    reproducers go to DEFAULT_ROOT/artifacts/NAME-* unless -artifact_prefix= is given.
    """
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    positional = [a for a in argv[1:] if not a.startswith("-")]
    options = [a for a in argv[1:] if a.startswith("-")]
    if not corpora and not positional:
        default = os.path.join(DEFAULT_ROOT, "corpus", name)
        if not os.path.isdir(default) or not os.listdir(default):
            import make_corpus

            make_corpus.write(name, default)
        corpora = [default]
    for directory in corpora:
        os.makedirs(directory, exist_ok=True)
    if not any(o.startswith("-artifact_prefix=") for o in options):
        artifacts = os.path.join(DEFAULT_ROOT, "artifacts")
        os.makedirs(artifacts, exist_ok=True)
        options.append(f"-artifact_prefix={artifacts}/{name}-")
    atheris.Setup([argv[0], *options, *corpora, *positional], ignoring(test_one_input))
    atheris.Fuzz()
    return 0


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """One to four byte-level edits of data (libFuzzer-like: flips, interesting values, inserts,
    erasures, copies, a splice with another input)."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        what = rng.randrange(8)
        at = rng.randrange(len(buf) + 1)
        if what == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif what == 1 and buf:
            buf[min(at, len(buf) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif what == 2:
            buf[at:at] = rng.randbytes(rng.randrange(1, 9))
        elif what == 3:
            del buf[at : at + rng.randrange(1, 17)]
        elif what == 4 and buf:
            start = rng.randrange(len(buf))
            buf[at:at] = buf[start : start + rng.randrange(1, 33)]
        elif what == 5 and other:
            start = rng.randrange(len(other))
            buf[at:] = other[start : start + rng.randrange(1, 257)] + buf[at:]
        elif what == 6:
            buf[at : at + 4] = rng.choice((b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x7f\xff\xff\xff"))
        elif buf:
            del buf[rng.randrange(len(buf)) :]
    return bytes(buf)


def mutate_main(name: str, body, paths: list[str], seconds: float, seed: int) -> int:
    """Without atheris (for an ASan build, where atheris's coverage does not work): run every
    input under `paths` (files or folders), then random mutations of them for `seconds`.

    The input being run is kept in DEFAULT_ROOT/artifacts/NAME-current, so it survives a crash
    that kills the process (ASan, a fault on a guard page); a finding raised as an exception is
    saved as NAME-finding-SHA1 and counted, and the run goes on. Returns 1 if anything was found.
    """
    import hashlib
    import time

    files = []
    for path in paths:
        if os.path.isdir(path):
            files += [os.path.join(path, f) for f in sorted(os.listdir(path))]
        else:
            files.append(path)
    inputs = []
    for f in files:
        with open(f, "rb") as fh:
            inputs.append(fh.read())
    if not inputs:
        inputs = [b""]
    artifacts = os.path.join(DEFAULT_ROOT, "artifacts")
    os.makedirs(artifacts, exist_ok=True)
    current = os.path.join(artifacts, f"{name}-current")
    rng = random.Random(seed)
    body = ignoring(body)
    findings: dict[str, int] = {}
    runs = 0
    started = time.monotonic()

    def run(data: bytes) -> None:
        nonlocal runs
        with open(current, "wb") as fh:
            fh.write(data)
        runs += 1
        try:
            body(data)
        except Exception as exc:  # noqa: BLE001 (any exception is a finding: record, go on)
            signature = f"{type(exc).__name__}: {str(exc)[:120]}"
            key = signature[:60]
            if key not in findings:
                sha = hashlib.sha1(data).hexdigest()
                with open(os.path.join(artifacts, f"{name}-finding-{sha}"), "wb") as fh:
                    fh.write(data)
                print(f"FINDING after {runs} runs ({name}-finding-{sha}): {signature}",
                      file=sys.stderr, flush=True)
            findings[key] = findings.get(key, 0) + 1

    for data in inputs:
        run(data)
    deadline = started + seconds
    next_report = started + 60
    while time.monotonic() < deadline:
        run(mutate(rng, rng.choice(inputs), rng.choice(inputs)))
        if time.monotonic() >= next_report:
            next_report += 60
            elapsed = time.monotonic() - started
            print(f"#{runs} {elapsed:.0f}s {runs / elapsed:.0f} exec/s, findings {findings}",
                  file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    print(f"Done {runs} runs in {elapsed:.0f} s ({runs / max(elapsed, 1e-9):.0f} exec/s); "
          f"findings: {findings or 'none'}", file=sys.stderr)
    return 1 if findings else 0

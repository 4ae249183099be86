#!/usr/bin/env python3
"""Write seed corpora for the fuzz harnesses (into an ignored place: /tmp by default).

    python tests/fuzz/make_corpus.py                   # both, under $FASTPATH_FUZZ_DIR/corpus/
    python tests/fuzz/make_corpus.py --out DIR packet  # one harness into DIR

packet: scenarios recorded from random decisions (fuzzinput.RecordingInput), kept when the core
shows something new for them (a link type / IP version / reason / trace flag combination, a
counter that moves, an engine or load() refused), so the seeds cover every reason the generator
reaches on every link type, for IPv4 and IPv6.
capture: pcap files in every encoding (byte order, resolution, link types, snaplen, a cut tail,
an impossible record length, non-canonical timestamp fields), pcapng files (several sections
and byte orders, interface options, simple and enhanced packet blocks, damaged blocks), the
repository's pcaps/*.pcap, each behind 4 option bytes (fuzz_capture.options).
"""
from __future__ import annotations

import hashlib
import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from fuzzinput import DEFAULT_ROOT, FuzzInput, RecordingInput

ROOT = os.path.dirname(os.path.dirname(HERE))


def packet_seeds(count: int = 6000, seed: int = 20261127, keep: int = 500) -> list[bytes]:
    import fuzz_packet

    rng = random.Random(seed)
    seen: set = set()
    seeds: list[bytes] = []
    for _ in range(count):
        inp = RecordingInput(rng, budget=rng.choice((48, 160, 400, 1200, 3000)))
        scn = fuzz_packet.decode(inp)
        data = inp.recorded
        assert fuzz_packet.decode(FuzzInput(data)) == scn, "recording does not replay"
        # What the core does (it has every feature; the twin may lag behind it).
        features = fuzz_packet.observe(scn)
        if features - seen:
            seen |= features
            seeds.append(data)
        if len(seeds) >= keep:
            break
    return seeds


# --------------------------------------------------------------------------- captures


def pcap(records, order="<", nano=False, snaplen=65535, linktype=1, version=(2, 4)) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, *version, 0, 0, snaplen, linktype)]
    for sec, frac, data, wire in records:
        out.append(struct.pack(order + "IIII", sec, frac, len(data), wire) + data)
    return b"".join(out)


def ng_block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def ng_shb(order: str) -> bytes:
    return ng_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_idb(order: str, linktype: int, snaplen: int = 65535, tsresol: int | None = None) -> bytes:
    options = b""
    if tsresol is not None:
        options = struct.pack(order + "HHB3x", 9, 1, tsresol) + struct.pack(order + "HH", 0, 0)
    return ng_block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + options)


def ng_epb(order: str, ticks: int, data: bytes, wire: int | None = None, iface: int = 0) -> bytes:
    return ng_block(order, 6, struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF,
                                          len(data), len(data) if wire is None else wire) + data)


def ng_spb(order: str, data: bytes) -> bytes:
    return ng_block(order, 3, struct.pack(order + "I", len(data)) + data)


def frames(rng: random.Random, n: int) -> list[bytes]:
    eth_ip_tcp = bytes.fromhex(
        "020000000002020000000001080045000028123440004006"
        "0000c0a8010a0a60000a9c4000500000000000000000500272100000000000")
    return [rng.choice((eth_ip_tcp, eth_ip_tcp[:20], b"", rng.randbytes(rng.randrange(1, 80))))
            for _ in range(n)]


def capture_seeds(seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    files = []
    ts = 1_700_000_000
    for order in "<>":
        for nano in (False, True):
            recs = [(ts + i, (i * 123457) % (10**9 if nano else 10**6), f, len(f) + (i % 2) * 10)
                    for i, f in enumerate(frames(rng, 6))]
            files.append(pcap(recs, order, nano))
            files.append(pcap(recs, order, nano)[:-7])  # cut inside the last record
            files.append(pcap(recs[:2], order, nano, snaplen=0, linktype=113))
    big = [(ts, 0, b"x" * 70000, 70000)]
    files.append(pcap(big, snaplen=262144))
    bad = pcap([(ts, 0, b"abc", 3)]) + struct.pack("<IIII", ts, 0, 300000, 300000)
    files.append(bad)  # an impossible captured length after one good record
    files.append(pcap([(0xFFFFFFFF, 0xFFFFFFFF, b"\x45" * 20, 20), (0, 10**6, b"", 0)]))
    files.append(pcap([], linktype=276))
    files.append(pcap([(ts, 5, b"\0" * 40, 40)], linktype=0x10000065, version=(2, 3)))
    for order in "<>":
        body = [ng_shb(order), ng_idb(order, 1), ng_epb(order, 1_700_000_000_000_000, b"\x01" * 60),
                ng_spb(order, b"\x02" * 30), ng_epb(order, 5, b"\x03" * 7, 100)]
        files.append(b"".join(body))
        files.append(b"".join(body)[:-9])  # cut inside the last block
        files.append(b"".join([ng_shb(order), ng_idb(order, 101, tsresol=9),
                               ng_epb(order, 1_700_000_000_123_456_789, b"\x45" + b"\0" * 39)]))
        files.append(b"".join([ng_shb(order), ng_idb(order, 1, tsresol=0x83),
                               ng_idb(order, 1, snaplen=0), ng_epb(order, 99, b"ab", iface=1),
                               ng_spb(order, b"cdef")]))
        files.append(b"".join([ng_shb(order), ng_idb(order, 1), ng_idb(order, 101),
                               ng_epb(order, 1, b"a"), ng_epb(order, 2, b"b", iface=1)]))
    files.append(b"".join([ng_shb("<"), ng_idb("<", 1), ng_epb("<", 1, b"x"), ng_shb(">"),
                           ng_idb(">", 1), ng_epb(">", 2, b"y")]))
    files.append(ng_shb("<") + ng_idb("<", 1) + struct.pack("<II", 6, 13) + b"\0" * 5)
    for name in sorted(os.listdir(os.path.join(ROOT, "pcaps"))):
        if name.endswith((".pcap", ".pcapng")):
            with open(os.path.join(ROOT, "pcaps", name), "rb") as f:
                files.append(f.read())
    seeds = []
    for i, content in enumerate(files):
        for opts in ((0, 0, 0, 0), (i, i + 1, i + 3, i + 5), (9 + i, 4, 3, 2)):
            seeds.append(bytes(o % 256 for o in opts) + content)
    return seeds


def write(name: str, directory: str) -> int:
    seeds = packet_seeds() if name == "packet" else capture_seeds()
    os.makedirs(directory, exist_ok=True)
    for data in seeds:
        with open(os.path.join(directory, hashlib.sha1(data).hexdigest()), "wb") as f:
            f.write(data)
    print(f"make_corpus: {len(seeds)} {name} seeds in {directory}", file=sys.stderr)
    return len(seeds)


def main(argv: list[str]) -> int:
    out = None
    if "--out" in argv:
        k = argv.index("--out")
        out = argv[k + 1]
        del argv[k : k + 2]
    names = argv or ["packet", "capture"]
    for name in names:
        if name not in ("packet", "capture"):
            print(f"unknown harness {name!r} (packet or capture)", file=sys.stderr)
            return 2
        write(name, out if out and len(names) == 1 else
              os.path.join(out or os.path.join(DEFAULT_ROOT, "corpus"), name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

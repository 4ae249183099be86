"""Findings of the fuzz harnesses that are reported and not fixed yet.

tests/test_fuzz_smoke.py runs each reproducer as a strict xfail (it fails once the bug is fixed:
then delete the entry) and counts, rather than fails, sweep inputs that hit a known signature.
FASTPATH_FUZZ_IGNORE=known makes an atheris or --mutate run go on past them (as .ci/run does).
A finding that corrupts memory cannot be caught in process: reproduce it in a subprocess instead.
"""
from __future__ import annotations

# name -> (signature of the finding: a regular expression on "Type: message", reproducer input)
KNOWN = {
    # fastpath/pcap.pyx build_records: refuses a timestamp past 2106 (ValueError) even when the
    # record header is copied verbatim (same encoding): a pcap with a non-canonical microsecond
    # field in the last second of 2106 is read, but cannot be written back.
    "pcap-timestamp-past-2106": (
        r"ValueError: packet \d+: timestamp \d+ ns is past 2106",
        ("00000000d4c3b2a1020004000000000000000000ffff000001000000ffffffffffffffff14000000140000"
         "0045454545454545454545454545454545454545450000000040420f000000000000000000"),
    ),
    # pysrc/fastpath/capture.py _PcapngReader.batches: a pcapng timestamp beyond 2**64 ns
    # (_BatchBuilder.add appends it to an array('Q')) raises OverflowError, not CaptureError.
    "pcapng-timestamp-overflow": (
        r"OverflowError: int too big to convert",
        ("000000000a0d0d0a0000001c1a2b3c4d00010000ffffffffffffffff0000001c0000000100000020006500"
         "000000ffff0008fffa09000000000000000000002000000006000000480000000017979cfe3d85cd150000"
         "00280000002845000000000000000000000000000000000000000000000000000000000000000000000000"
         "00000000000048"),
    ),
    # pysrc/fastpath/capture.py CaptureWriter._write_ng: scapy's EPB writer turns an original
    # length of 0 into the captured length ("if not orglen"), so pcap -> pcapng changes it.
    "pcapng-output-wire-length-0": (
        r"reads back with another wire length",
        ("10111315d4c3b2a1020003000000000000000000ffff00006500001000f153650500000000000000000000"
         "00000000000000000006000000000000000000000000000000000000000000000000000000000000000000"
         "00000000002800000028000000400000000000000000000000000000000000000000000000000000000000"
         "00000000000000000000"),
    ),
}

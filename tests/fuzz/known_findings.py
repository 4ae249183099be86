"""Findings of the fuzz harnesses that are reported and not fixed yet.

tests/test_fuzz_smoke.py runs each reproducer as a strict xfail (it fails once the bug is fixed:
then delete the entry) and counts, rather than fails, sweep inputs that hit a known signature.
FASTPATH_FUZZ_IGNORE=known makes an atheris or --mutate run go on past them (as .ci/run does).
A finding that corrupts memory cannot be caught in process: reproduce it in a subprocess instead.
"""
from __future__ import annotations

# name -> (signature of the finding: a regular expression on "Type: message", reproducer input)
KNOWN: dict[str, tuple[str, str]] = {
    # tests/fuzz/fuzz_capture.py (the harness, not fastpath): a classic pcap whose microsecond
    # field carries a timestamp past 2106 (second 2**32 - 1, field >= 4294968) is read, and
    # written back to pcap in any microsecond encoding, but no nanosecond pcap record can hold
    # it (32-bit seconds, 32-bit ns field). fastpath then raises the CaptureError the harness
    # should accept for a conversion the output format cannot represent; its check_pcap takes
    # every CaptureError on a well-formed classic pcap for a finding.
    "harness-pcap-us-past-2106-to-ns": (
        r"cannot be written to \S+: its timestamp \(\d+ ns since 1970\) is past 2106 by more "
        r"than a pcap record's 32-bit nanosecond field holds",
        "00000400d4c3b2a1020004000000000000000000ffff000001000000ffffffffffffffff0000000000000000",
    ),
}

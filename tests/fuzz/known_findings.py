"""Findings of the fuzz harnesses that are reported and not fixed yet.

tests/test_fuzz_smoke.py runs each reproducer as a strict xfail (it fails once the bug is fixed:
then delete the entry) and counts, rather than fails, sweep inputs that hit a known signature.
FASTPATH_FUZZ_IGNORE=known makes an atheris or --mutate run go on past them (as .ci/run does).
A finding that corrupts memory cannot be caught in process: reproduce it in a subprocess instead.
"""
from __future__ import annotations

# name -> (signature of the finding: a regular expression on "Type: message", reproducer input)
KNOWN: dict[str, tuple[str, str]] = {}

"""The fuzz harnesses (tests/fuzz/), run briefly and deterministically under plain pytest.

Each sweep calls the same body atheris calls (fuzz_packet.run_one, fuzz_capture.run_one) on a few
hundred inputs from a fixed seed, so CI exercises the harnesses and what they check in seconds;
.ci/run also runs atheris itself on them against the debug build. Findings already reported are
listed in tests/fuzz/known_findings.py: a sweep input that hits one is counted, not failed, and
each has a strict xfail test with its reproducer, which starts failing (XPASS) once the bug is
fixed: then delete the entry.
"""
from __future__ import annotations

import random
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_capture
import fuzz_packet
import make_corpus
from fuzzinput import FuzzInput, GuardArena, RecordingInput
from known_findings import KNOWN

# "(?!)" never matches: with no known finding, every finding fails (an empty pattern would match all).
KNOWN_SIGNATURE = re.compile("|".join(f"(?:{sig})" for sig, _ in KNOWN.values()) or "(?!)")


def sweep(body, inputs) -> dict[str, int]:
    """Run every input; fail on anything but a known finding (counted per signature)."""
    known: dict[str, int] = {}
    for k, data in enumerate(inputs):
        try:
            body(data)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            match = KNOWN_SIGNATURE.search(text)
            if match is None:
                raise AssertionError(f"input {k} ({data.hex()}): {text}") from exc
            known[match.group(0)[:40]] = known.get(match.group(0)[:40], 0) + 1
    return known


@pytest.fixture(scope="module")
def hidden() -> frozenset[str]:
    lag = fuzz_packet.twin_lag()
    if lag - set(fuzz_packet.QUIRKS):
        warnings.warn(f"the twin does not match the core on {sorted(lag)} yet: the twin sweep "
                      "keeps away from them", stacklevel=1)
    return lag


@pytest.fixture(scope="module")
def open_quirks(hidden) -> frozenset[str]:
    """Reported deviations of the core still there (fuzz_packet.QUIRKS): every sweep keeps
    away from them; test_quirk_is_fixed reproduces each."""
    return hidden & frozenset(fuzz_packet.QUIRKS)


def packet_inputs(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    inputs = []
    for k in range(count):
        if k % 5 == 4:  # raw bytes too, not only recorded decisions
            inputs.append(rng.randbytes(rng.choice((3, 30, 300, 1500))))
            continue
        recorder = RecordingInput(rng, budget=rng.choice((48, 160, 400, 1200)))
        fuzz_packet.decode(recorder)
        inputs.append(recorder.recorded)
    return inputs


def test_recorded_decisions_replay_exactly():
    rng = random.Random(5)
    for _ in range(50):
        recorder = RecordingInput(rng, budget=rng.choice((40, 400)))
        scenario = fuzz_packet.decode(recorder)
        assert fuzz_packet.decode(FuzzInput(recorder.recorded)) == scenario


def test_packet_harness_core_against_twin(hidden):
    # (IPv4 and IPv6 maps and packets alike, unless the twin lags on IPv6.)
    known = sweep(lambda data: fuzz_packet.run_one(data, hidden, twin_too=True),
                  packet_inputs(1127, 300))
    assert not known, known


def test_packet_harness_core_alone_on_guard_pages(open_quirks):
    # Every feature the generator has, twin or not: guard pages, ids, rewrite and policy checks.
    known = sweep(lambda data: fuzz_packet.run_one(data, open_quirks, twin_too=False),
                  packet_inputs(2311, 300))
    assert not known, known


@pytest.mark.parametrize("quirk", fuzz_packet.QUIRKS)
@pytest.mark.xfail(strict=True, reason="a reported deviation of the core: delete it from "
                   "fuzz_packet.QUIRKS (and its probe case) once fixed")
def test_quirk_is_fixed(quirk):
    maps, _, packets = fuzz_packet._probe_cases()[quirk]
    results = []
    for cls in (fuzz_packet._core.Engine, fuzz_packet.ReferenceEngine):
        engine = cls(maps, 16)
        results.append([engine.process_packet(p, 10**9, 101) for p in packets])
    assert results[0] == results[1], f"core {results[0]}, twin {results[1]}"


def v6_inputs(seed: int, count: int) -> list[bytes]:
    """Recorded inputs whose maps have IPv6 (the decoder draws the families early on)."""
    rng = random.Random(seed)
    inputs = []
    while len(inputs) < count:
        recorder = RecordingInput(rng, budget=rng.choice((400, 1200, 3000)))
        if 6 in fuzz_packet.decode(recorder).families:
            inputs.append(recorder.recorded)
    return inputs


def test_generator_reaches_the_ipv6_paths():
    # What the core does with IPv6 packets of the generator, over a few hundred scenarios: every
    # IPv6 path the harness is meant to reach (a regression in the generator shows here).
    seen = set()
    for data in v6_inputs(6, 400):
        scn = fuzz_packet.decode(FuzzInput(data))
        seen |= {f[2] for f in fuzz_packet.observe(scn) if len(f) == 4 and f[1] == 6}
    wanted = {"NEW_FLOW", "CT_ESTABLISHED", "CT_REPLY", "DROP_SOURCE_RANGE", "REJECT_NO_ENDPOINT",
              "REJECT_UNKNOWN_PORT", "DROP_NO_LOCAL_ENDPOINT", "DROP_FLOW_RATE", "PASS_NO_SERVICE",
              "PASS_UNSUPPORTED", "DROP_TRUNCATED", "DROP_BAD_IP_HEADER", "DROP_BAD_L4_HEADER",
              "ICMP_ERROR_FORWARD", "FRAG_DNAT", "FRAG_DROP", "PASS_FRAGMENT",
              "DROP_FRAG_NOT_FOUND"}
    assert wanted <= seen, f"never reached for IPv6: {sorted(wanted - seen)}"


def _translated(maps, packets, linktype=101):
    engine = fuzz_packet._core.Engine(maps, 16)
    return [engine.process_packet(p, 10**9, linktype) for p in packets]


def _v6_case():
    zero = FuzzInput(b"")
    maps, _, packets = fuzz_packet._probe_cases()["ipv6"]
    return maps, zero, packets


@pytest.mark.parametrize("damage", ["flow label", "checksum", "port only", "v4-mapped", "none"])
def test_rewrite_checks_catch_a_damaged_ipv6_rewrite(damage):
    maps, _, packets = _v6_case()
    (verdict, reason, after), _ = _translated(maps, packets)
    assert reason == fuzz_packet.Reason.NEW_FLOW
    before, out = packets[0], bytearray(after)
    if damage == "flow label":
        out[3] ^= 1
    elif damage == "checksum":
        out[40 + 16] ^= 0x10
    elif damage == "port only":  # the destination port without its checksum update
        out[40 + 3] ^= 1
    elif damage == "v4-mapped":  # an IPv4 source in the IPv6 header, checksum kept right
        old = bytes(out[8:24])
        out[8:24] = bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
        delta = fuzz_packet.ones_sum(bytes(out[8:24])) + (~fuzz_packet.ones_sum(old) & 0xFFFF)
        check = int.from_bytes(out[56:58], "big")
        out[56:58] = (~fuzz_packet.ones_sum(b"", (~check & 0xFFFF) + delta) & 0xFFFF).to_bytes(2, "big")
    if damage == "none":
        fuzz_packet.check_rewrite(101, before, bytes(out), verdict, "test", reason)
        return
    expected = {"flow label": "beyond the fields", "checksum": "valid TCP checksum",
                "port only": "valid TCP checksum", "v4-mapped": "IPv4-mapped source"}[damage]
    with pytest.raises(fuzz_packet.Mismatch, match=expected):
        fuzz_packet.check_rewrite(101, before, bytes(out), verdict, "test", reason)


def test_rewrite_checks_follow_an_icmpv6_error_through_its_quote():
    # An ICMPv6 error about a masqueraded IPv6 flow, the whole datagram quoted: its checksum, the
    # quoted TCP checksum and the fields it may change are all checked.
    maps, zero, packets = _v6_case()
    pod6 = fuzz_packet._ip6("fd00:10:244:1::5")
    quoted = fuzz_packet.build_ipv6(zero, fuzz_packet.NODE_IP6, pod6, 6, 40000, 8080)
    error = fuzz_packet.build_ipv6(zero, pod6, fuzz_packet.NODE_IP6, 58, 0, 0,
                                   bytes([1, 4, 0, 0, 0, 0, 0, 0]) + quoted, None, 2)
    results = _translated(maps, [packets[0], error])
    verdict, reason, after = results[1]
    assert reason == fuzz_packet.Reason.ICMP_ERROR_REPLY
    fuzz_packet.check_rewrite(101, error, after, verdict, "test", reason)
    for at, expected in ((40 + 2, "valid ICMPv6"), (40 + 8 + 40 + 16, "valid quoted TCP"),
                         (40 + 8 + 40 + 4, "beyond the fields"), (7, "beyond the fields")):
        damaged = bytearray(after)  # ICMPv6 checksum, quoted TCP checksum, quoted seq, hop limit
        damaged[at] ^= 0x40
        if at != 40 + 2:  # the ICMPv6 checksum made right again: only the damage is left
            damaged[42:44] = b"\0\0"
            damaged[42:44] = fuzz_packet.internet_checksum(damaged[40:], fuzz_packet.pseudo_header_sum(
                damaged[8:24], damaged[24:40], 58, len(damaged) - 40)).to_bytes(2, "big")
        with pytest.raises(fuzz_packet.Mismatch, match=expected):
            fuzz_packet.check_rewrite(101, error, bytes(damaged), verdict, "test", reason)


@pytest.mark.parametrize("linktype", [0, 1, 101, 113, 228, 276])
def test_hide_ipv6_makes_every_ipv6_frame_non_ip(linktype):
    zero = FuzzInput(b"")
    _, _, packets = _v6_case()
    maps = fuzz_packet._probe_cases()["ipv6"][0]
    framed = fuzz_packet.frame(zero, linktype, packets[0], 6)
    assert _translated(maps, [framed], linktype)[0][1] == fuzz_packet.Reason.NEW_FLOW
    hidden = fuzz_packet.hide(linktype, framed, frozenset({"ipv6"}))
    assert _translated(maps, [hidden], linktype)[0][1] == fuzz_packet.Reason.PASS_NOT_IP


def capture_inputs(seed: int, count: int) -> list[bytes]:
    seeds = make_corpus.capture_seeds()
    rng = random.Random(seed)
    inputs = list(seeds)
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 6)):
            what = rng.randrange(4)
            at = rng.randrange(len(data))
            if what == 0:
                data[at] = rng.randrange(256)
            elif what == 1:
                del data[at : at + rng.randrange(1, 16)]
            elif what == 2:
                data[at:at] = rng.randbytes(rng.randrange(1, 16))
            else:
                data[at : at + 4] = rng.choice((b"\xff\xff\xff\xff", b"\0\0\0\0", b"\0\0\x01\0"))
        inputs.append(bytes(data[: rng.choice((len(data), rng.randrange(len(data) + 1)))]))
    return inputs


def test_capture_harness():
    sweep(fuzz_capture.run_one, capture_inputs(42, 300))


def test_guard_pages_fault_on_an_over_read():
    if not GuardArena(1, 1).guarded:
        pytest.skip("no mprotect here")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from fuzzinput import GuardArena; "
            "a = GuardArena(1, 1); a.view[a.slot_end(0) - 1] = 1; print(a.view[a.slot_end(0)])")
    result = subprocess.run([sys.executable, "-c", code, str(FUZZ)], capture_output=True,
                            check=False)
    assert result.returncode < 0, "reading the byte after a slot did not fault"


def test_ignoring_no_known_findings_still_reports_the_others(monkeypatch):
    import known_findings
    from fuzzinput import ignoring

    def body(data: bytes) -> None:
        raise RuntimeError("a finding nobody reported")

    monkeypatch.setattr(known_findings, "KNOWN", {})  # once every finding is fixed
    monkeypatch.setenv("FASTPATH_FUZZ_IGNORE", "known")
    with pytest.raises(RuntimeError):
        ignoring(body)(b"")


@pytest.mark.parametrize("name", sorted(KNOWN))
@pytest.mark.xfail(strict=True, reason="a reported finding: delete its KNOWN entry once fixed")
def test_known_finding_is_fixed(name):
    _, reproducer = KNOWN[name]
    fuzz_capture.run_one(bytes.fromhex(reproducer))


def test_capture_harness_accepts_a_timestamp_the_output_cannot_hold():
    # A microsecond pcap in 2106's last second, written as nanosecond pcap: fastpath's one-line
    # CaptureError is the right answer there, not a finding (it once was one of the harness).
    fuzz_capture.run_one(bytes.fromhex(
        "00000400d4c3b2a1020004000000000000000000ffff000001000000ffffffffffffffff0000000000000000"))

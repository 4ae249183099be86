"""Hottest lines of a callgrind profile of the core, mapped back to the Cython sources.

    python benchmarks/callgrind_lines.py PROFILE [--c build/cython/fastpath/core.c] [--top 40]
        [--per N] [--minus PROFILE]

Reads `callgrind_annotate --auto=yes` of PROFILE (line-level Ir of the generated C), and for each
hot C line names the .pyx/.pxd line Cython generated it from (the nearest preceding
`/* "fastpath/FILE":LINE` marker in the C file). --per N divides counts by N (packets) for
instructions per packet; --minus subtracts another profile line by line (e.g. a warm run's
profile, which holds the warming call too, minus a cold run's).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

_CHUNK = re.compile(r"^-- line (\d+) -+")
_COUNT = re.compile(r"^\s*([\d,]+|\.)\s(.*)$")
_MARKER = re.compile(r'^\s*/\* "([^"]+)":(\d+)')


def line_counts(profile: str, c_file: str) -> tuple[dict[int, int], int]:
    """{C line: Ir} for c_file, and the profile's total Ir."""
    text = subprocess.run(["callgrind_annotate", "--auto=yes", "--show-percs=no", "--context=0",
                           profile], capture_output=True, text=True, check=True).stdout
    counts: dict[int, int] = defaultdict(int)
    total = 0
    m = re.search(r"^([\d,]+)\s+(?:\([^)]*\)\s+)?PROGRAM TOTALS", text, re.MULTILINE)
    if m:
        total = int(m.group(1).replace(",", ""))
    inside = False
    line = None
    for row in text.splitlines():
        if row.startswith("-- Auto-annotated source:"):
            inside = row.split(":", 1)[1].strip().endswith(Path(c_file).name)
            line = None
            continue
        if not inside:
            continue
        chunk = _CHUNK.match(row)
        if chunk:
            line = int(chunk.group(1))
            continue
        if line is None:
            continue
        count = _COUNT.match(row)
        if count is None:
            continue
        if count.group(2).strip() == "events annotated":  # the closing summary, not a line
            inside = False
            continue
        if count.group(1) != "." and not count.group(2).lstrip().startswith("=>"):
            counts[line] += int(count.group(1).replace(",", ""))
        if not count.group(2).lstrip().startswith("=>"):
            line += 1
    return counts, total


def origins(c_file: str) -> list[tuple[str, int] | None]:
    """For each C line (1-based index), the Cython source line it comes from."""
    result: list[tuple[str, int] | None] = [None]
    current = None
    for row in Path(c_file).read_text().splitlines():
        marker = _MARKER.match(row)
        if marker:
            current = (marker.group(1), int(marker.group(2)))
        result.append(current)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--c", default="build/cython/fastpath/core.c")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--per", type=float, default=1.0)
    parser.add_argument("--minus")
    args = parser.parse_args(argv)
    counts, total = line_counts(args.profile, args.c)
    if args.minus:
        other, other_total = line_counts(args.minus, args.c)
        for line, value in other.items():
            counts[line] -= value
        total -= other_total
    source = Path(args.c).read_text().splitlines()
    where = origins(args.c)
    by_origin: dict[tuple[str, int], int] = defaultdict(int)
    for line, value in counts.items():
        if line < len(where) and where[line] is not None:
            by_origin[where[line]] += value
    per = args.per
    print(f"total Ir {total:,} ({total / per:.1f} per unit)")
    print(f"\ntop C lines of {args.c} (Ir / {per:g}):")
    for line, value in sorted(counts.items(), key=lambda kv: -kv[1])[:args.top]:
        origin = where[line] if line < len(where) else None
        label = f"{origin[0]}:{origin[1]}" if origin else "?"
        code = source[line - 1].strip() if line <= len(source) else ""
        print(f"{value / per:8.1f}  core.c:{line:<6} {label:<28} {code[:90]}")
    print(f"\ntop Cython source lines (Ir / {per:g}):")
    for (name, line), value in sorted(by_origin.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{value / per:8.1f}  {name}:{line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

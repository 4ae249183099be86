"""Cache lines a conntrack lookup reads, counted on a model of the core's table.

    python benchmarks/conntrack_lines.py [--flows N] [--fill 0.8] [--seed 1]

Fills a model of fastpath/conntrack.pxd's table (capacity = flows / fill) with N flows of
random tuples, one at a time as new flows would arrive, then counts for each flow the distinct
64-byte lines a lookup of its orig tuple and of its reply tuple reads: the line holding the
bucket's chain head, and the line of each entry the chain walks to until the tuple's own. Three
layouts, the core's rules applied (fastpath.reference.conntrack_home and the core's bucket
index):
  sequential     each entry in the lowest free slot (the layout before home slots)
  home           each entry in its home slot when free, chains newest first
  home, kept     the same, and an entry at home stays first in its bucket's chain (the core)
Prints the share of entries at home and the mean lines per orig and per reply lookup, and their
mix at 75/25 (bench_scale's tracked_flows traffic) and 50/50.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pysrc"))
from fastpath.reference import bucket_hash, conntrack_home  # noqa: E402


def _bucket(hash_: int, capacity: int) -> int:
    """The core's ct_head: the home slot's three heads, one chosen by bits 16-31."""
    return (((hash_ >> 32) * capacity) >> 32) * 3 + ((((hash_ >> 16) & 0xFFFF) * 3) >> 16)


def _tuple(rng: random.Random) -> tuple[int, int, int, int, int]:
    return (rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(16), 6)


def count(flows: int, fill: float, seed: int, home: bool, kept: bool) -> tuple[float, float, float]:
    capacity = int(flows / fill)
    rng = random.Random(seed)
    taken = bytearray(capacity)
    lowest = 0
    slot_of: list[int] = []
    tuples: list[tuple[tuple, tuple]] = []
    chains: dict[int, list[tuple[int, int]]] = {}  # bucket -> [(flow, direction)], first first
    at_home = 0
    for flow in range(flows):
        orig, reply = _tuple(rng), _tuple(rng)
        wanted = conntrack_home(orig, capacity)
        if home and not taken[wanted]:
            slot = wanted
            at_home += 1
        else:
            while taken[lowest]:
                lowest += 1
            slot = lowest
        taken[slot] = 1
        slot_of.append(slot)
        tuples.append((orig, reply))
        for direction, key in ((1, reply), (0, orig)):  # reply first, as the core links them
            hash_ = bucket_hash(*key)
            chain = chains.setdefault(_bucket(hash_, capacity), [])
            head_slot = ((hash_ >> 32) * capacity) >> 32
            if kept and chain and slot_of[chain[0][0]] == head_slot and chain[0][0] != flow:
                chain.insert(1, (flow, direction))
            else:
                chain.insert(0, (flow, direction))
    lines = [0, 0]
    for flow, pair in enumerate(tuples):
        for direction, key in enumerate(pair):
            hash_ = bucket_hash(*key)
            read = {((hash_ >> 32) * capacity) >> 32}
            for other, other_direction in chains[_bucket(hash_, capacity)]:
                read.add(slot_of[other])
                if (other, other_direction) == (flow, direction):
                    break
            lines[direction] += len(read)
    return at_home / flows, lines[0] / flows, lines[1] / flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=200_000, help="flows tracked (default 200,000)")
    parser.add_argument("--fill", type=float, default=0.8,
                        help="flows / capacity (default 0.8: bench_scale's 1.25 x flows)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.flows < 1 or not 0 < args.fill <= 1:
        parser.error("--flows must be at least 1 and --fill in (0, 1]")
    for label, home, kept in (("sequential", False, False), ("home", True, False), ("home, kept", True, True)):
        share, orig, reply = count(args.flows, args.fill, args.seed, home, kept)
        print(f"{label:<11} at home {share:6.1%}   lines per lookup: orig {orig:.2f}, reply {reply:.2f}, "
              f"75/25 {0.75 * orig + 0.25 * reply:.2f}, 50/50 {(orig + reply) / 2:.2f}")


if __name__ == "__main__":
    main()

"""Memory probes run in a fresh interpreter by bench_memory.py (so pytest's own heap stays out).

    python benchmarks/memprobe.py conntrack CAPACITY    # JSON: RSS of an Engine before/after filling
    python benchmarks/memprobe.py struct                # JSON: sizeof(CtEntry) from conntrack.pxd
    python benchmarks/memprobe.py run RESULT.json -- COMMAND...   # COMMAND's own peak RSS

`run`: fork and exec COMMAND from this small interpreter and write its exit status, wall time and
ru_maxrss (os.wait4) to RESULT.json. Why a launcher: on Linux a child's ru_maxrss starts from the
RSS of the process that forked it (the high-water mark survives fork and exec), so measuring a
command forked straight from a big pytest process reports the pytest process's size whenever
that is larger. Forked from here, the floor is this interpreter's ~10 MB, below any replay's peak.

`conntrack`: an Engine over 1,000 service ports with ct_capacity=CAPACITY, filled with CAPACITY
distinct flows (one SYN each, workload.service_traffic), RSS (VmRSS) read before creating it,
after creating it and after filling it. The fill batch and its arrays exist before the first
reading, so the growth is the engine's own: its maps (measured apart with a 16-entry engine) and
the conntrack table. `bytes_per_entry` is what the table's own mapping holds resident (from
/proc/self/smaps) per entry; `fill_bytes_per_entry` what filling it added to the whole process
(nothing is allocated per flow, so only noise: 0.00-0.06). The growth less the small engine's maps
(`growth_less_maps_bytes_per_entry`, the figure reported until 2026-11-30) reads low and moves by
about 0.5 between processes: the big engine's maps partly reuse the small one's freed pages.
"""
from __future__ import annotations

import ctypes
import json
import re
import sys
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYSRC = HERE.parent / "pysrc"
CONNTRACK_PXD = HERE.parent / "fastpath" / "conntrack.pxd"


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def mappings() -> dict[str, int]:
    """This process's mappings: address range -> resident bytes (/proc/self/smaps)."""
    found: dict[str, int] = {}
    current = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                current = line.split()[0]
            elif line.startswith("Rss:") and current is not None:
                found[current] = int(line.split()[1]) * 1024
    return found


def _span(address_range: str) -> int:
    start, end = (int(x, 16) for x in address_range.split("-"))
    return end - start


_CTYPES = {"uint8_t": ctypes.c_uint8, "uint16_t": ctypes.c_uint16, "uint32_t": ctypes.c_uint32,
           "uint64_t": ctypes.c_uint64, "int64_t": ctypes.c_int64, "int32_t": ctypes.c_int32,
           "bint": ctypes.c_int, "int": ctypes.c_int}


def _struct_fields(text: str, name: str) -> list[tuple[str, str, int]] | None:
    """(field, type, array length or 0) of `ctypedef struct NAME:` in a .pxd text, or None."""
    match = re.search(rf"^ctypedef struct {name}:[^\n]*\n((?:[ \t]+[^\n]*\n|\n)+)", text,
                      re.MULTILINE)
    if match is None:
        return None
    fields = []
    for line in match.group(1).splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        ctype, declarator = line.split(None, 1)
        field = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", declarator.strip())
        if field is None:
            raise ValueError(f"cannot lay out {line!r}")
        fields.append((field.group(1), ctype, int(field.group(2) or 0)))
    return fields


def _ctype(name: str, texts: list[str], cache: dict):
    """A ctypes type for a C scalar or a struct defined in one of the .pxd texts (recursively)."""
    if name in _CTYPES:
        return _CTYPES[name]
    if name not in cache:
        fields = next((f for f in (_struct_fields(t, name) for t in texts) if f is not None), None)
        if fields is None:
            raise ValueError(f"unknown type {name!r}")
        members = []
        for field, ctype, length in fields:
            kind = _ctype(ctype, texts, cache)
            members.append((field, kind * length if length else kind))
        cache[name] = type(name, (ctypes.Structure,), {"_fields_": members})
    return cache[name]


def struct_size(pxd: Path = CONNTRACK_PXD, name: str = "CtEntry") -> dict:
    """sizeof and field bytes of a `ctypedef struct` of the core, laid out by the C ABI (ctypes).
    Struct members defined in other .pxd files beside it are resolved too."""
    texts = [pxd.read_text()] + [other.read_text() for other in sorted(pxd.parent.glob("*.pxd"))
                                 if other != pxd]
    layout = _ctype(name, texts, {})

    def payload(kind) -> int:
        if isinstance(kind, type) and issubclass(kind, ctypes.Structure):
            return sum(payload(member) for _, member in kind._fields_)
        if isinstance(kind, type) and issubclass(kind, ctypes.Array):
            return kind._length_ * payload(kind._type_)
        return ctypes.sizeof(kind)

    fields = payload(layout)
    return {"struct": name, "sizeof": ctypes.sizeof(layout), "field_bytes": fields,
            "padding": ctypes.sizeof(layout) - fields, "fields": len(layout._fields_)}


def conntrack(capacity: int) -> dict:
    sys.path[:0] = [str(PYSRC), str(HERE)]
    import workload
    from fastpath._core import Engine

    maps = workload.scale_maps(1_000)
    fill = workload.service_traffic(maps, capacity, capacity)
    buf = fill.fresh_buffer()
    verdicts, reasons = array("B", bytes(capacity)), array("B", bytes(capacity))

    before_small = rss_bytes()
    small = Engine(maps, ct_capacity=16)  # the C maps, built on creation; no room for flows
    maps_bytes = rss_bytes() - before_small
    del small  # freed, but its pages stay with the allocator: the big engine's growth is its own

    before = rss_bytes()
    mapped_before = mappings()
    engine = Engine(maps, ct_capacity=capacity)
    created = rss_bytes()
    # The table is a mapping of its own, the only one the engine makes that is this big.
    table = sum(rss for where, rss in mappings().items()
                if where not in mapped_before and _span(where) >= capacity * 64)
    engine.process(buf, fill.offsets, fill.lengths, fill.timestamps_ns, verdicts, reasons,
                   fill.linktype)
    filled = rss_bytes()
    entries = engine.counters()["conntrack"]["entries"]
    engine_growth = filled - before - maps_bytes
    return {
        "capacity": capacity, "entries": entries,
        "rss_before_bytes": before, "rss_created_bytes": created, "rss_filled_bytes": filled,
        "maps_bytes": maps_bytes, "table_rss_bytes": table,
        "created_bytes_per_entry": round((created - before - maps_bytes) / capacity, 2),
        "fill_bytes_per_entry": round((filled - created) / capacity, 2),
        "growth_less_maps_bytes_per_entry": round(engine_growth / capacity, 2),
        "bytes_per_entry": round(table / capacity, 2),
    }


def run(result: str, command: list[str]) -> int:
    import os
    import time

    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    Path(result).write_text(json.dumps({
        "exit": code, "wall_s": time.perf_counter() - started,
        "maxrss_bytes": usage.ru_maxrss * 1024,  # Linux reports kilobytes
        "launcher_rss_bytes": rss_bytes(),
    }))
    return 0 if code == 0 else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"] and len(argv) >= 4 and argv[2] == "--":
        return run(argv[1], argv[3:])
    if argv[:1] == ["conntrack"] and len(argv) == 2:
        print(json.dumps(conntrack(int(argv[1]))))
    elif argv == ["struct"]:
        print(json.dumps(struct_size()))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

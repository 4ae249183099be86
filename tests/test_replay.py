"""fastpath.replay's stats: counts of this replay only, and the --stats document."""
from __future__ import annotations

import dataclasses
import json
import random
import struct

from traffic import random_maps, random_traffic  # tests/: the differential tests' traffic

import fastpath
from fastpath import Dataplane, replay


def write_pcap(path, packets) -> None:
    """A nanosecond classic pcap of (ts_ns, frame) pairs."""
    out = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)]
    for ts_ns, data in packets:
        out.append(struct.pack("<IIII", *divmod(ts_ns, 10**9), len(data), len(data)) + data)
    path.write_bytes(b"".join(out))


def test_stats_document_is_the_dataclass_as_a_dict(tmp_path):
    rng = random.Random(7)
    maps = random_maps(rng)
    write_pcap(tmp_path / "in.pcap", random_traffic(maps, rng, 600))
    stats = replay(tmp_path / "in.pcap", None, Dataplane(maps))
    stats.truncated_tail = "a warning"
    assert stats.services and stats.backends
    expected = dataclasses.asdict(stats)
    expected["packets_per_second"] = round(stats.packets_per_second, 1)
    expected["elapsed_s"] = round(stats.elapsed_s, 6)
    document = stats.to_dict()
    assert json.dumps(document, indent=2) == json.dumps(expected, indent=2)
    document["services"].clear()  # a copy: the stats keep their counts
    assert stats.services


def test_a_second_replay_counts_only_its_own_packets(tmp_path):
    rng = random.Random(8)
    maps = random_maps(rng)
    write_pcap(tmp_path / "in.pcap", random_traffic(maps, rng, 600))
    dataplane = Dataplane(maps)
    first = replay(tmp_path / "in.pcap", None, dataplane)
    second = replay(tmp_path / "in.pcap", None, dataplane)  # the flows are tracked by now
    fresh = replay(tmp_path / "in.pcap", None, Dataplane(maps))
    assert first.to_dict().keys() == second.to_dict().keys()
    assert second.packets == first.packets == sum(second.verdicts.values())
    assert all(count > 0 for count in (*second.services.values(), *second.backends.values()))
    assert first.services == fresh.services and first.backends == fresh.backends


def test_package_replay_stays_the_function_after_its_module_is_imported():
    import importlib

    importlib.import_module("fastpath.replaying")
    assert callable(fastpath.replay) and fastpath.replay is replay


def test_a_prepared_output_gets_the_same_capture_as_its_path(tmp_path):
    from fastpath.atomicfile import prepare_output

    rng = random.Random(9)
    maps = random_maps(rng)
    write_pcap(tmp_path / "in.pcap", random_traffic(maps, rng, 600))
    by_path = replay(tmp_path / "in.pcap", tmp_path / "by-path.pcap", Dataplane(maps))
    prepared = prepare_output(tmp_path / "out.pcap", (tmp_path / "in.pcap").stat().st_size)
    stats = replay(tmp_path / "in.pcap", prepared, Dataplane(maps))
    assert stats.output == str(tmp_path / "out.pcap")
    assert stats.packets_written == by_path.packets_written
    assert (tmp_path / "out.pcap").read_bytes() == (tmp_path / "by-path.pcap").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-path.pcap", "in.pcap", "out.pcap"]

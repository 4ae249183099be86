"""Maps as columns (the compiled-dump cache's form): back equal, field for field, type for type."""
from __future__ import annotations

import pickle
from dataclasses import fields

import pytest
from routing_cases import CASES

from fastpath import compactmaps
from fastpath.compiler import compile_maps
from fastpath.maps import Backend, Maps, NodeView, Service
from fastpath.model import ClusterState, load_cluster


def round_trip(maps: Maps) -> Maps:
    return compactmaps.unpack(pickle.loads(pickle.dumps(compactmaps.pack(maps))))


def same_types(a, b) -> bool:
    """Equal values of the same types all the way down (== would take 1 for True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_types(x, y) for x, y in zip(a, b))
    if hasattr(type(a), "__dataclass_fields__"):
        return all(same_types(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    return a == b


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_routing_scenario_comes_back_equal(case):
    maps = compile_maps(ClusterState.from_objects(case.objects), node=case.node).maps
    again = round_trip(maps)
    assert again == maps and same_types(again, maps)


def test_the_demo_and_empty_maps_come_back_equal(demo_cluster):
    maps = compile_maps(load_cluster([demo_cluster])).maps
    assert same_types(round_trip(maps), maps)
    assert same_types(round_trip(Maps()), Maps())


def test_the_packed_form_holds_no_object_of_ours(demo_cluster):
    """Loading it back imports nothing and runs no code of fastpath's."""
    packed = pickle.dumps(compactmaps.pack(compile_maps(load_cluster([demo_cluster])).maps))
    assert b"fastpath" not in packed


def test_objects_of_other_classes_are_not_packed():
    class Other(Backend):
        """Would come back as a Backend."""

    with pytest.raises(ValueError):
        compactmaps.pack(Maps(backends=[Other(1, 1, 80, "b")]))


def test_columns_that_do_not_fit_the_classes_are_refused():
    packed = compactmaps.pack(Maps(services=[Service(1, "s", ())], node=NodeView()))
    names, columns = packed[0]
    with pytest.raises(ValueError):
        compactmaps.unpack(((names[:-1], columns[:-1]), *packed[1:]))
    with pytest.raises(ValueError):
        compactmaps.unpack(((names, [*columns[:-1], []]), *packed[1:]))


def test_objects_from_columns_fills_every_slot_and_keeps_the_class_frozen():
    from dataclasses import FrozenInstanceError

    from fastpath._core import objects_from_columns

    names = ("id", "ip", "port", "name")
    made = objects_from_columns(Backend, names, [[1, 2], [10, 20], [80, 81], ["a", "b"]])
    assert made == [Backend(1, 10, 80, "a"), Backend(2, 20, 81, "b")]
    assert all(type(item) is Backend for item in made)
    with pytest.raises(FrozenInstanceError):
        made[0].port = 1
    assert objects_from_columns(Backend, names, [[], [], [], []]) == []


def test_objects_from_columns_refuses_what_does_not_fit():
    from fastpath._core import objects_from_columns

    names = ("id", "ip", "port", "name")
    with pytest.raises(ValueError):  # a column short
        objects_from_columns(Backend, names, [[1, 2], [10, 20], [80], ["a", "b"]])
    with pytest.raises(ValueError):  # a column missing
        objects_from_columns(Backend, names, [[1], [10], [80]])
    with pytest.raises(ValueError):  # not a list
        objects_from_columns(Backend, names, [(1,), [10], [80], ["a"]])
    with pytest.raises(TypeError):  # no such slot
        objects_from_columns(Backend, ("id", "ip", "port", "nom"), [[1], [10], [80], ["a"]])

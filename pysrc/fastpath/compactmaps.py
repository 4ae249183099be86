"""Maps as plain columns of values, for the compiled-dump cache (fastpath.clustercache).

Pickling Maps as they are costs about 3 us per object to load back (dataclasses' __setstate__
looks the fields up again for every object): 35 ms for 1,000 Services with 10,000 backends.
As columns (one list of values per field) the pickle holds no objects of ours, loads in a
couple of milliseconds, and the objects are rebuilt in compiled code
(fastpath._core.objects_from_columns): each made empty and its slots filled, which is what
unpickling does too (neither __init__ nor __post_init__ runs: they are the compiler's maps,
see Maps.unchecked).
"""
from __future__ import annotations

from dataclasses import fields
from types import MemberDescriptorType
from typing import Any

from fastpath.maps import Backend, Frontend, Maps, NodeView, Service

__all__ = ["pack", "unpack"]

# (field names, one list of values per field) of one class's objects
Columns = tuple[tuple[str, ...], list[list[Any]]]


def pack(maps: Maps) -> tuple[Columns, Columns, Columns, Columns]:
    """Plain lists, tuples, ints and strings (ValueError if `maps` holds anything else than
    the map classes themselves: such maps are not packed)."""
    return (_columns(maps.services, Service), _columns(maps.frontends, Frontend),
            _columns(maps.backends, Backend), _columns([maps.node], NodeView))


def unpack(packed: tuple[Columns, Columns, Columns, Columns]) -> Maps:
    """The Maps `pack` was given, equal field for field (ValueError if the classes' fields are
    not those packed)."""
    services, frontends, backends, node = packed
    (node_view,) = _rebuild(NodeView, node)
    return Maps.unchecked(_rebuild(Service, services), _rebuild(Frontend, frontends),
                          _rebuild(Backend, backends), node_view)


def _names(cls: type) -> tuple[str, ...]:
    names = tuple(field.name for field in fields(cls))
    if not all(isinstance(cls.__dict__.get(name), MemberDescriptorType) for name in names):
        raise ValueError(f"{cls.__name__} has fields that are not slots")
    return names


def _columns(objects: list[Any], cls: type) -> Columns:
    if any(type(item) is not cls for item in objects):
        raise ValueError(f"not all {cls.__name__} objects")
    names = _names(cls)
    return names, [[getattr(item, name) for item in objects] for name in names]


def _rebuild(cls: type, columns: Columns) -> list[Any]:
    names, values = columns
    if names != _names(cls):
        raise ValueError(f"{cls.__name__} columns do not match its fields")
    from fastpath._core import objects_from_columns

    return objects_from_columns(cls, names, values)  # (ValueError for uneven columns)

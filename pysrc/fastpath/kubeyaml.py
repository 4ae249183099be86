"""YAML as kubectl prints it, parsed fast.

PyYAML builds a node graph and then constructs Python objects from it in Python, which costs
about 4x more than the C parse itself. kubectl output is plain data (no anchors, no explicit
tags), so documents are built straight from the parser's events; scalars are resolved with the
loader's own implicit resolvers and constructors, so the result is identical. Anything else falls
back to a normal load, keeping PyYAML's exact behaviour for hand-written files.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import yaml

# The C loader is an order of magnitude faster on large dumps; PyYAML built without libyaml lacks it.
YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR_TAG = "tag:yaml.org,2002:str"


class _NotPlainData(Exception):
    """The stream uses a YAML feature the fast path leaves to PyYAML."""


def load_yaml(text: str) -> list[Any]:
    try:
        return _load_plain_yaml(text)
    except _NotPlainData:
        return list(yaml.load_all(text, Loader=YAML_LOADER))


def _plain_scalar_reader() -> Callable[[str], Any]:
    resolvers = YAML_LOADER.yaml_implicit_resolvers
    wildcard = resolvers.get(None, [])
    constructor = yaml.constructor.SafeConstructor()
    cache: dict[str, Any] = {}  # kubectl output repeats the same few scalars endlessly

    def read(value: str) -> Any:
        if value in cache:
            return cache[value]
        tag = next((tag for tag, regexp in resolvers.get(value[:1], []) + wildcard if regexp.match(value)), _STR_TAG)
        if tag == _STR_TAG:
            result: Any = value
        else:
            construct = constructor.yaml_constructors.get(tag)
            if construct is None:  # "<<" (merge) or "=" (value): PyYAML's own rules apply
                raise _NotPlainData
            result = construct(constructor, yaml.ScalarNode(tag, value))
        cache[value] = result
        return result

    return read


def _load_plain_yaml(text: str) -> list[Any]:
    events = yaml.events
    read_plain = _plain_scalar_reader()
    documents: list[Any] = []
    containers: list[Any] = []  # open mappings and sequences, innermost last
    pending_keys: list[Any] = []  # per open container: the key waiting for its value
    no_key = object()
    root: Any = None
    stream: Iterator[Any] = yaml.parse(text, Loader=YAML_LOADER)
    for event in stream:
        kind = type(event)
        if kind is events.ScalarEvent:
            if event.anchor is not None:
                raise _NotPlainData
            if event.tag is None or event.tag == "!":
                value = read_plain(event.value) if event.implicit[0] else event.value
            elif event.tag == _STR_TAG:
                value = event.value
            else:
                raise _NotPlainData
        elif kind is events.MappingStartEvent or kind is events.SequenceStartEvent:
            if event.anchor is not None or event.tag not in (None, "!"):
                raise _NotPlainData
            value = {} if kind is events.MappingStartEvent else []
        elif kind is events.MappingEndEvent or kind is events.SequenceEndEvent:
            containers.pop()
            pending_keys.pop()
            continue
        elif kind is events.DocumentStartEvent:
            root = None
            continue
        elif kind is events.DocumentEndEvent:
            documents.append(root)
            continue
        elif kind is events.AliasEvent:
            raise _NotPlainData
        else:  # stream start and end
            continue

        if not containers:
            root = value
        elif type(containers[-1]) is list:
            containers[-1].append(value)
        elif pending_keys[-1] is no_key:
            if kind is not events.ScalarEvent:  # complex keys
                raise _NotPlainData
            pending_keys[-1] = value
            continue
        else:
            containers[-1][pending_keys[-1]] = value
            pending_keys[-1] = no_key
        if kind is not events.ScalarEvent:
            containers.append(value)
            pending_keys.append(no_key)
    return documents

"""YAML for the suite's input files: ``yaml.safe_load`` plus three refusals.

* a key given twice in one mapping (PyYAML keeps the last value and drops the first silently);
* more aliases than :data:`MAX_ALIASES`;
* a document whose aliases expand to more than :data:`MAX_NODES` nodes (an "alias bomb": a
  few hundred bytes that expand to billions of nodes once anything walks or prints them).

Both caps are checked on the composed node graph, before any Python object is built, so a
bomb is refused in milliseconds. Errors are :class:`yaml.YAMLError`, with the line of the
offending key or node, so callers keep reporting "not valid YAML: ...". The caps can be raised
with the environment variables ``CGSPN_BENCH_YAML_MAX_ALIASES`` and ``CGSPN_BENCH_YAML_MAX_NODES``.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_ALIASES = 1_000
MAX_NODES = 100_000
ALIASES_ENV, NODES_ENV = "CGSPN_BENCH_YAML_MAX_ALIASES", "CGSPN_BENCH_YAML_MAX_NODES"


class YamlLimitError(yaml.YAMLError):
    """A document over the alias or expanded-size cap."""


def _cap(env: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(env, default)))
    except ValueError:
        return default


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts aliases and refuses duplicate keys."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            limit = _cap(ALIASES_ENV, MAX_ALIASES)
            if self.aliases > limit:
                mark = self.peek_event().start_mark
                raise YamlLimitError(f"more than {limit} aliases (line {mark.line + 1}); refused. "
                                     f"Raise the cap with {ALIASES_ENV}=N if the file is meant to be this way")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
                if key is None:
                    continue
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise ConstructorError(None, None, f"key {key!r} is given twice (first on line {first}); "
                                                       "give each key once", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def expanded_size(node: Node, limit: int) -> int:
    """Nodes in ``node`` with every alias expanded (shared nodes counted at each use); stops past ``limit``."""
    sizes: dict[int, int] = {}

    def size(n: Node, depth: int) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if depth > 200:  # a recursive (self-referencing) structure
            return limit + 1
        total = 1
        if isinstance(n, SequenceNode):
            children = n.value
        elif isinstance(n, MappingNode):
            children = [part for pair in n.value for part in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > limit:
                break
        sizes[id(n)] = total
        return total

    return size(node, 0)


def describe(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: ``line L, column C: problem``."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f"{exc.context} " if exc.context else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {context}{exc.problem}"
    return " ".join(str(exc).split())


def load(text: str | bytes) -> Any:
    """``yaml.safe_load`` with the refusals above; raises :class:`yaml.YAMLError`."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        limit = _cap(NODES_ENV, MAX_NODES)
        if loader.aliases and expanded_size(node, limit) > limit:
            raise YamlLimitError(f"its {loader.aliases} aliases expand to more than {limit} nodes (an alias bomb?); "
                                 f"refused. Raise the cap with {NODES_ENV}=N if the file is meant to be this way")
        return loader.construct_document(node)
    finally:
        loader.dispose()

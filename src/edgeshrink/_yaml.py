"""Loading a user's YAML (recipes, serve configs, prompt files) with bounds a hostile file cannot pass.

    from edgeshrink._yaml import safe_load
    raw = safe_load(path.read_text(encoding="utf-8"), path)

PyYAML shares an aliased node rather than copying it, but whatever walks the result afterwards (validation,
the recipe's line index) expands it: a 1 KB "billion laughs" file of nested aliases became gigabytes. And the
composer recurses once per level, so 20,000 nested brackets end in a RecursionError. Both are refused in one
line from the event stream, which PyYAML's parser produces without recursion, before any node is composed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeshrink.errors import EdgeshrinkError

MAX_DEPTH = 64  # nesting levels; a recipe needs about 5
MAX_ALIAS_NODES = 10_000  # nodes that aliases add once expanded; a file's own nodes are bounded by its size


def check_bounds(text: str, source: str | Path) -> None:
    """Refuse ``text`` if it nests deeper than MAX_DEPTH or its aliases expand past MAX_ALIAS_NODES.

    A syntax error is left to the caller's loader (a ``yaml.YAMLError``), so each keeps its own message."""
    import yaml

    nodes = 0  # every node so far, aliases expanded
    alias_nodes = 0
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, height) of the node it names
    open_nodes: list[list] = []  # per open collection: [nodes before it, its anchor, deepest level inside it]
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            depth = len(open_nodes)
            if isinstance(event, yaml.AliasEvent):
                size, height = anchors.get(event.anchor, (1, 1))  # an undefined one: the composer says so
                nodes += size
                alias_nodes += size
                reached = depth + height
                if alias_nodes > MAX_ALIAS_NODES:
                    _refuse(source, event, f"its aliases expand to more than {MAX_ALIAS_NODES} nodes (an alias "
                                           f"bomb?); write the values out instead of aliasing them")
            elif isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
                nodes += 1
                reached = depth + 1
                if isinstance(event, yaml.CollectionStartEvent):
                    open_nodes.append([nodes - 1, event.anchor, reached])
                elif event.anchor is not None:
                    anchors[event.anchor] = (1, 1)
            elif isinstance(event, yaml.CollectionEndEvent):
                before, anchor, deepest = open_nodes.pop()
                if anchor is not None:
                    anchors[anchor] = (nodes - before, deepest - depth + 1)
                reached = deepest
            else:
                continue
            if reached > MAX_DEPTH:
                _refuse(source, event, f"nested deeper than {MAX_DEPTH} levels")
            if open_nodes:
                open_nodes[-1][2] = max(open_nodes[-1][2], reached)
    except RecursionError:  # no known input recurses in the parser; a bound, not a traceback, if one does
        raise EdgeshrinkError(f"{source}: nested too deeply to read") from None


def _refuse(source, event, why: str) -> None:
    raise EdgeshrinkError(f"{source}: line {event.start_mark.line + 1}: {why}")


def safe_load(text: str, source: str | Path) -> Any:
    """``yaml.safe_load`` after ``check_bounds``; a syntax error stays a ``yaml.YAMLError``."""
    import yaml

    check_bounds(text, source)
    return yaml.safe_load(text)


def load_with_nodes(text: str, source: str | Path) -> tuple[Any, Any]:
    """The data and its composed node tree (for line numbers), after ``check_bounds``; composed once."""
    import yaml

    check_bounds(text, source)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()

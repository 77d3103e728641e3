"""Every reader of a user's YAML goes through edgeshrink._yaml (recipes: tests/recipes/test_schema.py)."""

import pytest

from edgeshrink._yaml import safe_load
from edgeshrink.errors import EdgeshrinkError
from tests.recipes.test_schema import alias_bomb


def test_prompt_files_and_serve_configs_refuse_an_alias_bomb(tmp_path):
    from edgeshrink.cli.serve import _config
    from edgeshrink.route.prompts import read_prompt

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    with pytest.raises(EdgeshrinkError, match="bomb.yaml: line 9: its aliases expand to more than 10000 nodes"):
        read_prompt(bomb)
    with pytest.raises(EdgeshrinkError, match="bomb.yaml: line 9: its aliases expand to more than 10000 nodes"):
        _config(bomb, {}, {}, {})


def test_bounds_are_exact():
    from edgeshrink._yaml import MAX_ALIAS_NODES, MAX_DEPTH

    deepest, depth = safe_load("[" * MAX_DEPTH + "]" * MAX_DEPTH, "f"), 1
    while deepest:
        deepest, depth = deepest[0], depth + 1
    assert depth == MAX_DEPTH
    with pytest.raises(EdgeshrinkError, match=f"f: line 1: nested deeper than {MAX_DEPTH} levels"):
        safe_load("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "f")
    items = "a: &a [" + ", ".join(["x"] * 99) + "]\n"  # 100 nodes: the list and its items
    assert len(safe_load(items + "b: [" + ", ".join(["*a"] * 100) + "]\n", "f")["b"]) == MAX_ALIAS_NODES // 100
    with pytest.raises(EdgeshrinkError, match="line 2: its aliases expand"):
        safe_load(items + "b: [" + ", ".join(["*a"] * 101) + "]\n", "f")
    # a syntax error stays the caller's to word
    with pytest.raises(Exception) as err:
        safe_load("a: [\n", "f")
    assert type(err.value).__module__.startswith("yaml")

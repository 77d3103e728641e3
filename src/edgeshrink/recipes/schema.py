"""Recipe files: the whole path in one YAML, validated before anything runs.

    version: 1
    name: quick
    model: minilm                       # what the first step starts from; its task decides the rest
    data: sentiment-movies              # or {source: my.csv, text_column: review}
    steps:                              # ordered; each step is {name: config}, the Python API's config class
      - finetune: {epochs: 1}
      - prune: {layers: 2, ffn_keep: 0.5, vocab: true, search: {layers: [2, 3]}}   # alternatives
      - distill: {epochs: 2}
      - export: {}
      - quantize: {method: dynamic-int8}
      - bench: {threads: [1], seq_lengths: [64]}
      - route: {policy: budget, budget: 0.2}
    targets:
      max_size_mb: 10
      min_speedup: 4
    resources:                          # what each step's task asks of a Ray cluster (`--executor ray`)
      distill: {cpus: 2, gpus: 0}       # default 1 CPU; bench: a whole node

The model's task picks the kind of recipe (the registry's ``recipe`` entry: a schema and a ``RecipeKind``);
recipes/classify.py and recipes/generate.py hold the kinds, this module what they share. Every error names
the file, the key path, its line and what was expected.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, ValidationError

from edgeshrink import tasks
from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.recipes.executors import StepResources

MAX_CANDIDATES = 32


@dataclass(frozen=True)
class RecipeKind:
    """What a task's recipes are made of. Step configs are the task's verb configs from the registry (a step
    named like a verb takes that verb's config for this task); ``configs`` names the others' ("module:Class")."""

    task: str
    steps: dict[str, Callable]  # step name -> fn(state, config, out, data, progress) -> {"state": ..., "result": ...}
    sections: Callable  # (recipe, kind, paths, plans, outcomes, data, cache) -> the report's task sections
    markdown: Callable  # report -> report.md text
    plots: Callable  # (report, plots dir) -> the plot file names
    configs: dict[str, str] = field(default_factory=dict)
    needs: tuple[tuple[str, str], ...] = ()  # (step, the step that must come before it when it is there)
    after: tuple[tuple[str, str], ...] = ()  # (step, a step that, when both are there, comes before it)
    once: bool = False  # each step at most once
    search: bool = True  # steps may list alternatives
    # cache keys: the first key's extra parts; per-step versions, the one left out of keys (None: none is)
    key_tag: tuple = ()
    versions: dict[str, int] = field(default_factory=dict)
    unversioned: int | None = 1
    report_tag: dict = field(default_factory=dict)  # first keys of the report (after its schema)
    check: Callable | None = None  # (recipe, path, lines) -> None: what the schema cannot say
    early_stop: Callable | None = None  # (recipe, step, record, state, later steps) -> a missed target or None

    def config_class(self, step: str) -> type[Config]:
        if step in self.configs:
            module, _, name = self.configs[step].partition(":")
            return getattr(importlib.import_module(module), name)
        return tasks.named(self.task).implementation(step).config_class()

    def version_parts(self, step: str) -> list[int]:
        version = self.versions.get(step, 1)
        return [] if version == self.unversioned else [version]


def recipe_kind(task_name: str) -> tuple[type["Recipe"], RecipeKind]:
    """The schema and the kind of recipe for a model of ``task_name`` (the registry's ``recipe`` entry)."""
    impl = tasks.named(task_name).implementation("recipe")
    return impl.config_class(), impl.task_parts()


class Recipe(Config):
    """Fields every recipe has; each kind's schema adds its ``data`` and ``targets``."""

    version: Literal[1] = 1
    name: str
    model: str
    data: Any = None  # each kind's schema says what its data is
    steps: list[dict[str, Any]] = Field(min_length=1)
    targets: Any = None  # each kind's schema says which targets it takes
    seed: int = 0
    # per step name, what its task asks of a cluster (the ray executor): {distill: {cpus: 2, gpus: 1}}
    resources: dict[str, StepResources] = {}

    def task(self) -> str:
        return tasks.of_model(self.model).name

    def step_data(self):
        """The data every step gets (its JSON form enters the cache keys)."""
        return self.data

    def check_data(self) -> None:
        """Fail before any step runs when the data cannot be had (kinds that can tell)."""

    def parsed_steps(self) -> list[tuple[str, Config]]:
        """The steps as one path (each step's base config, alternatives ignored)."""
        return self.candidates()[0][1]

    def candidates(self) -> list[tuple[dict, list[tuple[str, Config]]]]:
        """Every path the ``search`` alternatives make: (the choices, the steps), the base values first."""
        _, kind = recipe_kind(self.task())
        per_step = []
        for i, raw in enumerate(self.steps):
            name, values = next(iter(raw.items()))
            values = dict(values or {})
            search = values.pop("search", None) or {}
            keys = list(search)
            options = []
            for combo in itertools.product(*(search[k] for k in keys)):
                choice = {f"steps.{i}.{name}.{k}": v for k, v in zip(keys, combo)}
                options.append((choice, (name, kind.config_class(name).from_dict({**values, **dict(zip(keys, combo))}))))
            per_step.append(options)
        return [({k: v for choice, _ in combo for k, v in choice.items()}, [step for _, step in combo])
                for combo in itertools.product(*per_step)]


def _line_index(node, path=(), index=None) -> dict[tuple, int]:
    """Key path → 1-based line, from a yaml node tree."""
    import yaml

    index = {} if index is None else index
    index[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            index[path + (key.value,)] = key.start_mark.line + 1
            _line_index(value, path + (key.value,), index)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, path + (i,), index)
    return index


def where(lines: dict, loc: tuple) -> str:
    """``line N`` of the deepest part of ``loc`` the file has."""
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return f"line {lines[loc[:cut]]}"
    return "line ?"


def _first_error(exc: ValidationError, fields) -> tuple[tuple, str]:
    """The most useful error first: a misspelt key explains the 'field required' that comes with it."""
    import difflib

    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = tuple(err["loc"])
    if err["type"] != "extra_forbidden":
        return loc, err["msg"]
    close = difflib.get_close_matches(str(loc[-1]), list(fields), n=1) if len(loc) == 1 else []
    return loc, "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")


def load_recipe(path: str | Path) -> tuple[Recipe, str]:
    """Parse and validate a recipe file; return it (the schema of its model's task) and the sha256 of its text."""
    import yaml

    from edgeshrink._yaml import load_with_nodes

    path = Path(path)
    if not path.exists():
        raise EdgeshrinkError(f"recipe {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EdgeshrinkError(f"{path}: a recipe is UTF-8 text") from None
    try:
        raw, node = load_with_nodes(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}" if mark else "?"
        raise EdgeshrinkError(f"{path}: {at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise EdgeshrinkError(f"{path}: a recipe is a mapping with name, model, data, steps and targets")
    lines = _line_index(node)
    task = tasks.of_model(raw["model"]) if isinstance(raw.get("model"), str) else tasks.default()
    schema, kind = recipe_kind(task.name)
    try:
        recipe = schema.model_validate(raw)
    except ValidationError as exc:
        loc, what = _first_error(exc, schema.model_fields)
        raise EdgeshrinkError(f"{path}: {where(lines, loc)}: {'.'.join(map(str, loc)) or 'recipe'}: {what} "
                              f"(a {task.name} recipe)") from None
    for i, step in enumerate(recipe.steps):
        _check_step(kind, i, step, path, lines)
    names = [next(iter(s)) for s in recipe.steps]
    for name in recipe.resources:
        if name not in names:
            raise EdgeshrinkError(f"{path}: {where(lines, ('resources', name))}: resources.{name}: the recipe has no "
                                  f"{name!r} step (its steps: {', '.join(dict.fromkeys(names))})")
    if kind.once and len(set(names)) != len(names):
        raise EdgeshrinkError(f"{path}: each step appears once in a {task.name} recipe")
    for later, earlier in kind.after:
        if later in names and earlier in names and names.index(earlier) > names.index(later):
            raise EdgeshrinkError(f"{path}: {where(lines, ('steps', names.index(later)))}: step {later!r} comes "
                                  f"after {earlier!r}")
    if kind.check:
        kind.check(recipe, path, lines)
    for later, needs in kind.needs:
        if later in names and needs not in names[:names.index(later)]:
            raise EdgeshrinkError(f"{path}: {where(lines, ('steps', names.index(later)))}: step {later!r} needs a "
                                  f"{needs!r} step before it")
    n = 1
    for step in recipe.steps:
        for options in ((next(iter(step.values())) or {}).get("search") or {}).values():
            n *= len(options)
    if n > MAX_CANDIDATES:
        raise EdgeshrinkError(f"{path}: the search has {n} candidate paths; at most {MAX_CANDIDATES} are allowed")
    return recipe, hashlib.sha256(text.encode()).hexdigest()


def _check_step(kind: RecipeKind, i: int, step: dict, path: Path, lines: dict) -> None:
    """One step: a known name of this kind, a mapping of its config's keys, valid with each alternative."""
    at = where(lines, ("steps", i))
    if len(step) != 1:
        raise EdgeshrinkError(f"{path}: {at}: steps.{i}: a step is one mapping {{name: config}}, got keys "
                              f"{sorted(step)}")
    name, values = next(iter(step.items()))
    if name not in kind.steps:
        raise EdgeshrinkError(f"{path}: {at}: steps.{i}: unknown step {name!r}; a {kind.task} recipe takes the "
                              f"steps {', '.join(kind.steps)}")
    cls = kind.config_class(name)
    if values is not None and not isinstance(values, dict):
        raise EdgeshrinkError(f"{path}: {at}: steps.{i}.{name}: expected a mapping of {cls.__name__} keys, got "
                              f"{type(values).__name__}")
    values = dict(values or {})
    search = values.pop("search", None)
    if search is not None and not kind.search:
        raise EdgeshrinkError(f"{path}: {at}: steps.{i}.{name}.search: a {kind.task} recipe has no search")
    if search is not None and (not isinstance(search, dict) or not search
                               or not all(isinstance(v, list) and v for v in search.values())):
        raise EdgeshrinkError(f"{path}: {where(lines, ('steps', i, name, 'search'))}: steps.{i}.{name}.search: "
                              f"expected a mapping of config keys to non-empty lists of alternatives")
    for key in (search or {}):
        if key not in cls.model_fields:
            raise EdgeshrinkError(f"{path}: {where(lines, ('steps', i, name, 'search', key))}: "
                                  f"steps.{i}.{name}.search.{key}: unknown key ({cls.__name__})")
    alternatives = [{}] + [{key: v} for key, options in (search or {}).items() for v in options]
    for alternative in alternatives:
        try:
            cls.model_validate({**values, **alternative})
        except ValidationError as exc:
            inner, what = _first_error(exc, cls.model_fields)
            loc = ("steps", i, name) + (("search",) if alternative else ()) + inner
            raise EdgeshrinkError(f"{path}: {where(lines, loc)}: {'.'.join(map(str, loc))}: {what} "
                                  f"({cls.__name__})") from None

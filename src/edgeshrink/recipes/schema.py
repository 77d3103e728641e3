"""Recipe files: the whole path in one YAML, validated before anything runs.

    version: 1
    name: quick
    model: minilm                       # what `finetune` starts from (or an already fine-tuned model)
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
      max_latency_ms: {value: 20, percentile: 50, threads: 1, seq_length: 64}
      max_accuracy_drop: 2.0            # points below the cloud model (or min_accuracy: 0.82)
      min_size_reduction: 10            # relative to the cloud model's fp32 bundle, same bench run
      min_speedup: 4
      min_accuracy_fraction: 0.98
      peer: {min_speedup: 3, min_size_reduction: 2.5, max_accuracy_drop: 0}   # vs optimum + ORT dynamic INT8
      router: {max_cloud_fraction: 0.25, max_accuracy_drop: 0.3}   # or alpha/delta: a risk guarantee
    resources:                          # what each step's task asks of a Ray cluster (`--executor ray`)
      distill: {cpus: 2, gpus: 0}       # default 1 CPU; bench: a whole node

Every error names the file, the key path, its line and what was expected.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from edgeshrink.config import Config
from edgeshrink.data import DataConfig
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.recipes.executors import StepResources


def step_configs() -> dict[str, type[Config]]:
    """Step name → the config class of its verb (the registry recipes validate against)."""
    from edgeshrink.bench.config import BenchConfig
    from edgeshrink.compress.channels import ChannelPruneConfig
    from edgeshrink.compress.distill.encoder import DistillConfig
    from edgeshrink.compress.prune.encoder import PruneConfig
    from edgeshrink.compress.quantize import QuantConfig
    from edgeshrink.compress.sparsify import SparsifyConfig
    from edgeshrink.export import ExportConfig
    from edgeshrink.models.finetune import FinetuneConfig
    from edgeshrink.route.calibrate import RouteConfig

    return {"finetune": FinetuneConfig, "prune": PruneConfig, "prune-channels": ChannelPruneConfig,
            "distill": DistillConfig, "sparsify": SparsifyConfig, "export": ExportConfig, "quantize": QuantConfig,
            "bench": BenchConfig, "route": RouteConfig}


# Steps that only one kind of model has: Hugging Face text classifiers, or CNNs on images (models/cnn.py).
TEXT_ONLY_STEPS = ("prune", "distill", "sparsify", "route")
CNN_ONLY_STEPS = ("prune-channels",)


MAX_CANDIDATES = 32


class LatencyTarget(Config):
    value: float = Field(gt=0)  # milliseconds
    percentile: Literal[50, 90, 99] = 50
    threads: int = Field(1, ge=1)
    seq_length: int | Literal["max"] = 64  # tokens; "max": each model at its own max_length (long inputs)

    @field_validator("seq_length")
    @classmethod
    def _positive(cls, value):
        if value != "max" and value < 1:
            raise ValueError("must be a positive number of tokens or 'max'")
        return value


class RouterTargets(Config):
    max_cloud_fraction: float | None = Field(None, gt=0, le=1)
    max_accuracy_drop: float | None = Field(None, ge=0)  # points of hybrid accuracy below the cloud model
    alpha: float | None = Field(None, gt=0, lt=1)  # the router must guarantee risk <= alpha ...
    delta: float | None = Field(None, gt=0, lt=1)  # ... with probability >= 1 - delta (policy risk or risk+budget)


class PeerTargets(Config):
    """Against the peer pipeline (optimum-onnx export + ORT dynamic INT8 of the cloud model), same bench run."""

    min_speedup: float | None = Field(None, gt=0)  # peer / device latency at max_latency_ms's cell
    min_size_reduction: float | None = Field(None, gt=0)  # peer size / device size
    max_accuracy_drop: float | None = None  # points below the peer (0: equal or better)


class Targets(Config):
    max_size_mb: float | None = Field(None, gt=0)
    max_latency_ms: LatencyTarget | None = None
    min_accuracy: float | None = Field(None, gt=0, le=1)
    max_accuracy_drop: float | None = Field(None, ge=0)  # points below the cloud model's test accuracy
    # relative to the cloud model's fp32 bundle, measured in the same bench run
    min_size_reduction: float | None = Field(None, gt=0)  # cloud size / device size
    min_speedup: float | None = Field(None, gt=0)  # cloud / device latency at max_latency_ms's cell (or 1 thread, 64)
    min_accuracy_fraction: float | None = Field(None, gt=0, le=1)  # device accuracy / cloud accuracy
    peer: PeerTargets | None = None
    router: RouterTargets | None = None


class Recipe(Config):
    version: Literal[1] = 1
    name: str
    model: str
    data: DataConfig | str
    steps: list[dict[str, Any]] = Field(min_length=1)
    targets: Targets = Targets()
    seed: int = 0
    # per step name, what its task asks of a cluster (the ray executor): {distill: {cpus: 2, gpus: 1}}
    resources: dict[str, StepResources] = {}

    def parsed_steps(self) -> list[tuple[str, Config]]:
        """The steps as one path (each step's base config, alternatives ignored)."""
        return self.candidates()[0][1]

    def candidates(self) -> list[tuple[dict, list[tuple[str, Config]]]]:
        """Every path the ``search`` alternatives make: (the choices, the steps), the base values first."""
        import itertools

        registry = step_configs()
        per_step = []
        for i, raw in enumerate(self.steps):
            name, values = next(iter(raw.items()))
            values = dict(values or {})
            search = values.pop("search", None) or {}
            keys = list(search)
            options = []
            for combo in itertools.product(*(search[k] for k in keys)) if keys else [()]:
                choice = {f"steps.{i}.{name}.{k}": v for k, v in zip(keys, combo)}
                options.append((choice, (name, registry[name].from_dict({**values, **dict(zip(keys, combo))}))))
            per_step.append(options)
        paths = []
        for combo in itertools.product(*per_step):
            choices = {k: v for choice, _ in combo for k, v in choice.items()}
            paths.append((choices, [step for _, step in combo]))
        return paths


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


def _where(lines: dict, loc: tuple) -> str:
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
    """Parse and validate a recipe file; return it and the sha256 of its text (an ``LLMRecipe`` when its
    model is a language model)."""
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
        where = f"line {mark.line + 1}" if mark else "?"
        raise EdgeshrinkError(f"{path}: {where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise EdgeshrinkError(f"{path}: a recipe is a mapping with name, model, data, steps and targets")
    lines = _line_index(node)
    from edgeshrink.recipes.llm import is_llm_recipe, validate_llm_recipe

    if is_llm_recipe(raw):  # a language model: its own steps and targets (recipes/llm.py)
        return validate_llm_recipe(raw, path, lines), hashlib.sha256(text.encode()).hexdigest()
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        loc, what = _first_error(exc, Recipe.model_fields)
        raise EdgeshrinkError(f"{path}: {_where(lines, loc)}: {'.'.join(map(str, loc)) or 'recipe'}: {what}") from None
    registry = step_configs()
    for i, step in enumerate(recipe.steps):
        where = _where(lines, ("steps", i))
        if len(step) != 1:
            raise EdgeshrinkError(f"{path}: {where}: steps.{i}: a step is one mapping {{name: config}}, got keys "
                                  f"{sorted(step)}")
        name, values = next(iter(step.items()))
        if name not in registry:
            raise EdgeshrinkError(f"{path}: {where}: steps.{i}: unknown step {name!r}; expected one of "
                                  f"{', '.join(registry)}")
        if values is not None and not isinstance(values, dict):
            raise EdgeshrinkError(f"{path}: {where}: steps.{i}.{name}: expected a mapping of "
                                  f"{registry[name].__name__} keys, got {type(values).__name__}")
        values = dict(values or {})
        search = values.pop("search", None)
        if search is not None and (not isinstance(search, dict) or not search
                                   or not all(isinstance(v, list) and v for v in search.values())):
            raise EdgeshrinkError(f"{path}: {_where(lines, ('steps', i, name, 'search'))}: steps.{i}.{name}.search: "
                                  f"expected a mapping of config keys to non-empty lists of alternatives")
        for key in (search or {}):
            if key not in registry[name].model_fields:
                raise EdgeshrinkError(f"{path}: {_where(lines, ('steps', i, name, 'search', key))}: "
                                      f"steps.{i}.{name}.search.{key}: unknown key ({registry[name].__name__})")
        alternatives = [{}] + [{key: v} for key, options in (search or {}).items() for v in options]
        try:
            for alternative in alternatives:
                registry[name].model_validate({**values, **alternative})
        except ValidationError as exc:
            inner, what = _first_error(exc, registry[name].model_fields)
            loc = ("steps", i, name) + inner
            if alternative:
                loc = ("steps", i, name, "search") + inner
            raise EdgeshrinkError(f"{path}: {_where(lines, loc)}: {'.'.join(map(str, loc))}: {what} "
                                  f"({registry[name].__name__})") from None
    names = [next(iter(s)) for s in recipe.steps]
    check_resources(recipe.resources, names, path, lines)
    _check_model_kind(recipe, names, path, lines)
    for later, needs in (("distill", "prune"), ("quantize", "export"), ("bench", "export"), ("route", "export")):
        if later in names and needs not in names[:names.index(later)]:
            raise EdgeshrinkError(f"{path}: {_where(lines, ('steps', names.index(later)))}: step {later!r} needs a "
                                  f"{needs!r} step before it")
    n = 1
    for step in recipe.steps:
        for options in ((next(iter(step.values())) or {}).get("search") or {}).values():
            n *= len(options)
    if n > MAX_CANDIDATES:
        raise EdgeshrinkError(f"{path}: the search has {n} candidate paths; at most {MAX_CANDIDATES} are allowed")
    return recipe, hashlib.sha256(text.encode()).hexdigest()


def check_resources(resources: dict, names: list[str], path: Path, lines: dict) -> None:
    for name in resources:
        if name not in names:
            raise EdgeshrinkError(f"{path}: {_where(lines, ('resources', name))}: resources.{name}: the recipe has no "
                                  f"{name!r} step (its steps: {', '.join(dict.fromkeys(names))})")


def _check_model_kind(recipe: Recipe, names: list[str], path: Path, lines: dict) -> None:
    """A CNN takes image data and CNN steps; a text model takes text data and text steps."""
    from edgeshrink.data.images import IMAGE_DATASETS, is_image_data
    from edgeshrink.models.cnn import ARCHITECTURES, is_cnn

    cnn = is_cnn(recipe.model)
    kind = "a CNN" if cnn else "a text model"
    for i, name in enumerate(names):
        if name in (TEXT_ONLY_STEPS if cnn else CNN_ONLY_STEPS):
            raise EdgeshrinkError(f"{path}: {_where(lines, ('steps', i))}: steps.{i}: step {name!r} works on "
                                  f"{'text models' if cnn else 'CNNs'}, and model {recipe.model!r} is {kind}")
    data = getattr(recipe.data, "source", recipe.data)
    if cnn and not is_image_data(recipe.data):
        raise EdgeshrinkError(f"{path}: {_where(lines, ('data',))}: data: model {recipe.model!r} is a CNN and takes "
                              f"images; {data!r} is not a built-in image data set ({', '.join(IMAGE_DATASETS)})")
    if not cnn and is_image_data(recipe.data):
        raise EdgeshrinkError(f"{path}: {_where(lines, ('data',))}: data: {data!r} is images; model {recipe.model!r} "
                              f"is a text model (for images use a CNN: {', '.join(ARCHITECTURES)})")
    if cnn and recipe.targets.peer is not None:
        raise EdgeshrinkError(f"{path}: {_where(lines, ('targets', 'peer'))}: targets.peer: a CNN has no peer "
                              f"pipeline (optimum-onnx exports Hugging Face models)")

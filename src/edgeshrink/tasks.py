"""The task layer: the kinds of model edgeshrink holds, and which code runs each verb for each of them.

    from edgeshrink import tasks
    task = tasks.of_model("smollm2")                  # the "text-generation" entry (a bundle: its manifest's task)
    impl = task.implementation("prune")               # or a one-line refusal naming the verbs that do apply
    impl.config_class()                               # LLMPruneConfig
    impl.function()(model, out, config, data=..., force=..., progress=...)

A task is keyed by the ``task`` string that manifests and records carry. Each verb (finetune, prune,
distill, quantize, export, bench, serve, recipe, ...) registers one implementation per task it applies to,
with its config class and the CLI flags that set the config's fields; the public verbs dispatch here, and
the CLI builds its refusals ("--layers applies to text-classification models; ...") and its help from the
same entries. This module is the only place outside the runtime's own table (``runtime/tasks.py``, which
must stay torch-free) that knows which kinds exist: no other module compares task strings or asks "is
this a language model". Implementations are named as "module:attribute" strings and imported when asked
for, so this module imports nothing heavy and no stage imports another through it at import time.

Adding a task = one ``register(Task(...))`` entry + one ``implement(...)`` line per verb it takes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.tasks import TASK_NAMES


def _resolve(ref: str):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True, eq=False)
class Implementation:
    """The code that runs ``verb`` for ``task``: a function, the config class it takes, and its CLI flags."""

    verb: str
    task: str
    run: str  # "module:function"
    config: str | None = None  # "module:ConfigClass"
    flags: dict[str, str] = field(default_factory=dict)  # CLI flag -> the config field it sets ("" : not a field)

    def function(self) -> Callable:
        return _resolve(self.run)

    def config_class(self):
        return _resolve(self.config) if self.config else None

    def check_config(self, config):
        """``config`` itself, or this implementation's default config when None; a config of another task's
        class is refused in one line naming the class that applies."""
        cls = self.config_class()
        if config is None:
            return cls() if cls is not None else None
        if cls is not None and not isinstance(config, cls):
            takers = [i.task for i in _IMPLEMENTATIONS.get(self.verb, {}).values()
                      if i.config and type(config).__name__ == i.config.rpartition(":")[2]]
            whose = f" (it configures {_kinds(takers)})" if takers else ""
            raise EdgeshrinkError(f"{self.verb}: {type(config).__name__} does not apply to a {self.task} model"
                                  f"{whose}; give a {cls.__name__}")
        return config

    def refuse_flags(self, given: dict[str, Any]) -> None:
        """Refuse, in one generated line, the CLI flags given (value not None/False) that this task's
        implementation does not take, naming the kinds they apply to and the flags this one takes."""
        others = {flag for impl in _IMPLEMENTATIONS.get(self.verb, {}).values() for flag in impl.flags}
        wrong = [flag for flag, value in given.items()
                 if value not in (None, False, (), []) and flag in others and flag not in self.flags]
        if not wrong:
            return
        owners = sorted({i.task for i in _IMPLEMENTATIONS[self.verb].values() for f in wrong if f in i.flags})
        takes = ", ".join(self.flags) or "no such options"
        verb = "applies" if len(wrong) == 1 else "apply"
        raise EdgeshrinkError(f"{', '.join(wrong)} {verb} to {_kinds(owners)}; a {self.task} model takes {takes}")

    def build_config(self, given: dict[str, Any], extra: dict[str, Any] | None = None):
        """Refuse flags that do not apply, then build this implementation's config from the flags given
        (each mapped to its field; None values keep the config's default) plus ``extra`` fields."""
        self.refuse_flags(given)
        values = {self.flags[flag]: value for flag, value in given.items()
                  if flag in self.flags and self.flags[flag] and value is not None}
        return self.config_class().build(**values, **(extra or {}))


@dataclass(frozen=True, eq=False)  # identity equality, like models/arch.py's Family
class Task:
    """One kind of model. ``recognises`` tells a source model (a path or short name) of this kind; the
    task whose ``recognises`` is None is the default for models no other task claims."""

    name: str
    summary: str  # what the kind is, for messages and `edgeshrink families`
    recognises: Callable[[str | Path], bool] | None = None
    source_hint: str = ""  # what a model of this kind looks like on the command line, for `edgeshrink families`

    def implementation(self, verb: str) -> Implementation:
        impl = _IMPLEMENTATIONS.get(verb, {}).get(self.name)
        if impl is None:
            takes = ", ".join(self.verbs()) or "nothing"
            raise EdgeshrinkError(f"{verb} does not apply to a {self.name} model ({self.summary}); it takes {takes}")
        return impl

    def verbs(self) -> list[str]:
        return [verb for verb, impls in _IMPLEMENTATIONS.items() if self.name in impls]

    def takes(self, verb: str) -> bool:
        return self.name in _IMPLEMENTATIONS.get(verb, {})


TASKS: dict[str, Task] = {}
_IMPLEMENTATIONS: dict[str, dict[str, Implementation]] = {}  # verb -> task name -> implementation


def register(task: Task) -> Task:
    if task.name not in TASK_NAMES:
        raise ValueError(f"task {task.name!r} is missing from runtime/tasks.py's table")
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    TASKS[task.name] = task
    return task


def implement(verb: str, task: str, run: str, config: str | None = None, flags: dict[str, str] | None = None) -> None:
    if task not in TASKS:
        raise ValueError(f"{verb}: unknown task {task!r}")
    impls = _IMPLEMENTATIONS.setdefault(verb, {})
    if task in impls:
        raise ValueError(f"{verb} is implemented twice for {task}")
    impls[task] = Implementation(verb, task, run, config, dict(flags or {}))


def _kinds(names) -> str:
    names = list(dict.fromkeys(names))
    return (" and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]) + " models"


# -- lookups -------------------------------------------------------------------------------------------------
def named(name: str) -> Task:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise EdgeshrinkError(f"unknown task {name!r}; edgeshrink holds {', '.join(TASKS)}") from None


def of_bundle(path: str | Path) -> Task:
    """The task a bundle's manifest names (the manifest is read without hashing: the verb verifies)."""
    from edgeshrink.runtime.bundle import read_manifest

    return named(read_manifest(path, verify=False).get("task"))


def is_bundle(path: str | Path) -> bool:
    from edgeshrink.runtime.bundle import MANIFEST_NAME

    return (Path(str(path)).expanduser() / MANIFEST_NAME).exists()


def of_model(spec: str | Path) -> Task:
    """The task of a source model: a bundle's manifest task, else the first task that recognises it,
    else the default task (text classification: any encoder directory or short name)."""
    if is_bundle(spec):
        return of_bundle(spec)
    default = None
    for task in TASKS.values():
        if task.recognises is None:
            default = task
        elif task.recognises(spec):
            return task
    return default


def of_record(record: dict) -> Task:
    """The task a training record or report names (records written before the task key are classifiers)."""
    return named(record.get("task", "text-classification"))


def implementations(verb: str) -> dict[str, Implementation]:
    return dict(_IMPLEMENTATIONS.get(verb, {}))


def flag_help(verb: str, flag: str, text: str) -> str:
    """CLI help for ``flag``: ``text`` plus each task's default, read from the config class it sets, so
    ``--help`` cannot disagree with what runs."""
    defaults = []
    for impl in _IMPLEMENTATIONS.get(verb, {}).values():
        name = impl.flags.get(flag)
        if not name:
            continue
        info = impl.config_class().model_fields[name]
        if info.is_required():
            continue
        default = info.get_default(call_default_factory=True)
        defaults.append((impl.task, default))
    if not defaults:
        return text
    if len(defaults) == 1 or len({repr(d) for _, d in defaults}) == 1:
        shown = _shown(defaults[0][1])
        scope = "" if len(defaults) == len(_IMPLEMENTATIONS[verb]) else f"; {_kinds([t for t, _ in defaults])} only"
        return f"{text} [default: {shown}{scope}]"
    return f"{text} [default: " + "; ".join(f"{t} {_shown(d)}" for t, d in defaults) + "]"


def _shown(value) -> str:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# -- the recognisers: how a source model shows its kind -------------------------------------------------------
def _decoder_model(spec: str | Path) -> bool:
    """A short name of a packaged LLM, a GGUF file, or a directory whose config is a decoder family."""
    from edgeshrink.models import arch
    from edgeshrink.models.llm import LLM_PACKAGES
    from edgeshrink.models.sources import read_config

    path = Path(str(spec)).expanduser()
    if str(spec) in LLM_PACKAGES or (path.is_file() and path.suffix.lower() == ".gguf"):
        return True
    try:
        return arch.family_of(read_config(path)).kind == "decoder"
    except EdgeshrinkError:
        return False


def _cnn_model(spec: str | Path) -> bool:
    """A built-in CNN architecture's name, or a CNN directory edgeshrink wrote."""
    from edgeshrink.models.cnn import ARCHITECTURES, read_cnn_record

    return str(spec) in ARCHITECTURES or read_cnn_record(spec) is not None


# -- the tasks -----------------------------------------------------------------------------------------------
register(Task("text-generation", "a decoder language model", _decoder_model,
              "a packaged LLM's short name (smollm2, gemma3), a .gguf file, or a decoder's directory"))
register(Task("tensor-classification", "a plain-PyTorch CNN over tensors", _cnn_model,
              "a built-in CNN architecture (digits-cnn) or a CNN directory from `finetune`"))
register(Task("text-classification", "a text encoder with a classification head", None,
              "an encoder's directory or short name (minilm)"))

# -- the verbs, one section each: which function and config run it for each task -----------------------------
# finetune
implement("finetune", "text-classification", "edgeshrink.models.finetune:finetune",
          "edgeshrink.models.finetune:FinetuneConfig")
implement("finetune", "tensor-classification", "edgeshrink.models.cnn:finetune_cnn",
          "edgeshrink.models.finetune:FinetuneConfig")
implement("finetune", "text-generation", "edgeshrink.models.llm_finetune:finetune_llm",
          "edgeshrink.models.finetune:FinetuneConfig")

# prune (structured, physical removal)
implement("prune", "text-classification", "edgeshrink.compress.prune:prune", "edgeshrink.compress.prune:PruneConfig")
implement("prune", "text-generation", "edgeshrink.compress.llm_prune:prune_llm",
          "edgeshrink.compress.llm_prune:LLMPruneConfig")
implement("prune-channels", "tensor-classification", "edgeshrink.compress.channels:prune_channels",
          "edgeshrink.compress.channels:ChannelPruneConfig")

# sparsify (unstructured)
implement("sparsify", "text-classification", "edgeshrink.compress.sparsify:sparsify",
          "edgeshrink.compress.sparsify:SparsifyConfig")

# distill
implement("distill", "text-classification", "edgeshrink.compress.distill:distill",
          "edgeshrink.compress.distill:DistillConfig")
implement("distill", "text-generation", "edgeshrink.compress.llm_distill:distill_llm",
          "edgeshrink.compress.llm_distill:LLMDistillConfig")

# export
implement("export", "text-classification", "edgeshrink.export.onnx:export", "edgeshrink.export.config:ExportConfig")
implement("export", "tensor-classification", "edgeshrink.export.onnx:export_cnn", "edgeshrink.export.config:ExportConfig")
implement("export", "text-generation", "edgeshrink.export.llm:export_llm", "edgeshrink.export.llm:LLMExportConfig")

# quantize (a bundle's task)
implement("quantize", "text-classification", "edgeshrink.compress.quantize:quantize",
          "edgeshrink.compress.quantize:QuantConfig")
implement("quantize", "tensor-classification", "edgeshrink.compress.quantize:quantize",
          "edgeshrink.compress.quantize:QuantConfig")
implement("quantize", "text-generation", "edgeshrink.compress.llm_quantize:quantize_llm",
          "edgeshrink.compress.quantize:QuantConfig")

# bench (a bundle's task)
_BENCH_CLASSIFIER_FLAGS = {"--data": "", "--threads": "threads", "--seq-lengths": "seq_lengths",
                           "--batch-sizes": "throughput_batch_sizes", "--latency-runs": "latency_runs",
                           "--max-accuracy-examples": "max_accuracy_examples"}
implement("bench", "text-classification", "edgeshrink.bench.classifier:bench_classifiers",
          "edgeshrink.bench.config:BenchConfig", _BENCH_CLASSIFIER_FLAGS)
implement("bench", "tensor-classification", "edgeshrink.bench.classifier:bench_classifiers",
          "edgeshrink.bench.config:BenchConfig", _BENCH_CLASSIFIER_FLAGS)
implement("bench", "text-generation", "edgeshrink.bench.llm:bench_llm", "edgeshrink.bench.config:LLMBenchConfig",
          {"--threads": "threads", "--prompt-tokens": "prompt_tokens", "--new-tokens": "new_tokens",
           "--repeats": "repeats", "--peer-gguf": "peer", "--texts": "texts", "--windows": "windows",
           "--no-quality": ""})

# serve (a bundle's task): the app factory
implement("serve", "text-classification", "edgeshrink.serve.device:device_app")
implement("serve", "tensor-classification", "edgeshrink.serve.device:device_app")
implement("serve", "text-generation", "edgeshrink.serve.llm:llm_app")
implement("serve-cloud", "text-classification", "edgeshrink.serve.cloud:cloud_app")
implement("serve-cloud", "tensor-classification", "edgeshrink.serve.cloud:cloud_app")
implement("serve-cloud", "text-generation", "edgeshrink.serve.llm:llm_app")

# recipe (the source model's task): the recipe runner
implement("recipe", "text-classification", "edgeshrink.recipes.runner:run")
implement("recipe", "tensor-classification", "edgeshrink.recipes.runner:run")
implement("recipe", "text-generation", "edgeshrink.recipes.llm:run_llm")

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
from edgeshrink.runtime.tasks import TASK_NAMES, RuntimeTask, runtime_task


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
    summary: str | None = None  # "module:function" (result, out) -> the CLI's one line about what was made
    # "module:attribute": the per-task parts a shared skeleton asks for (a recipe: its RecipeKind)
    parts: str | None = None

    def summarize(self, result, out) -> str:
        return _resolve(self.summary)(result, out) if self.summary else f"saved {out}"

    def function(self) -> Callable:
        return _resolve(self.run)

    def task_parts(self):
        return _resolve(self.parts) if self.parts else None

    def config_class(self):
        return _resolve(self.config) if self.config else None

    def check_config(self, config):
        """``config`` itself, or this implementation's default config when None; a config of another task's
        class is refused in one line naming the class that applies."""
        cls = self.config_class()
        if config is None:  # from_dict: a config with a required choice fails in one line
            return cls.from_dict({}) if cls is not None else None
        if cls is not None and not isinstance(config, cls):
            takers = [i.task for i in _IMPLEMENTATIONS.get(self.verb, {}).values()
                      if i.config and type(config).__name__ == i.config.rpartition(":")[2]]
            whose = f" (it configures {_kinds(takers)})" if takers else ""
            raise EdgeshrinkError(f"{self.verb}: {type(config).__name__} does not apply to a {self.task} model"
                                  f"{whose}; give a {cls.__name__}")
        return config

    def refuse_flags(self, given: dict[str, Any]) -> None:
        """Refuse, in one generated line, the CLI flags given (value not None or empty: a switch passes None
        when off, a --x/--no-x pair False when --no-x is given) that this task's implementation does not take,
        naming the kinds they apply to and the flags this one takes."""
        others = {flag for impl in _IMPLEMENTATIONS.get(self.verb, {}).values() for flag in impl.flags}
        wrong = [flag for flag, value in given.items()
                 if value is not None and value != () and value != [] and flag in others and flag not in self.flags]
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

    @property
    def runtime(self) -> RuntimeTask:
        """The runtime table's facts for this kind (runtime/tasks.py: what its bundle holds, whether it generates)."""
        return runtime_task(self.name)


TASKS: dict[str, Task] = {}
_IMPLEMENTATIONS: dict[str, dict[str, Implementation]] = {}  # verb -> task name -> implementation


def register(task: Task) -> Task:
    if task.name not in TASK_NAMES:
        raise ValueError(f"task {task.name!r} is missing from runtime/tasks.py's table")
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    TASKS[task.name] = task
    return task


def implement(verb: str, task: str, run: str, config: str | None = None, flags: dict[str, str] | None = None,
              summary: str | None = None, parts: str | None = None) -> None:
    if task not in TASKS:
        raise ValueError(f"{verb}: unknown task {task!r}")
    impls = _IMPLEMENTATIONS.setdefault(verb, {})
    if task in impls:
        raise ValueError(f"{verb} is implemented twice for {task}")
    impls[task] = Implementation(verb, task, run, config, dict(flags or {}), summary, parts)


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
    for task in TASKS.values():
        if task.recognises is not None and task.recognises(spec):
            return task
    return default()


def default() -> Task:
    """The task of models no other task claims (the one whose ``recognises`` is None)."""
    return next(task for task in TASKS.values() if task.recognises is None)


def implementations(verb: str) -> dict[str, Implementation]:
    return dict(_IMPLEMENTATIONS.get(verb, {}))


def flag_help(verb: str, flag: str, text: str) -> str:
    """CLI help for ``flag``: ``text`` plus each task's default, read from the config class it sets, so
    ``--help`` cannot disagree with what runs."""
    from edgeshrink.config import shown

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
        scope = "" if len(defaults) == len(_IMPLEMENTATIONS[verb]) else f"; {_kinds([t for t, _ in defaults])} only"
        return f"{text} [default: {shown(defaults[0][1])}{scope}]"
    return f"{text} [default: " + "; ".join(f"{t} {shown(d)}" for t, d in defaults) + "]"


def tasks_table() -> str:
    """`edgeshrink families`' table of tasks: what each kind is, how a model of it is named, and where each
    verb's code for it lives (generated from the registry)."""
    verbs = list(_IMPLEMENTATIONS)
    rows = []
    for task in TASKS.values():
        cells = [f"`{impl.run.rpartition(':')[0].removeprefix('edgeshrink.')}`" if (impl := _IMPLEMENTATIONS[v].get(task.name))
                 else "-" for v in verbs]
        rows.append(f"| {task.name} | {task.summary} | {task.source_hint} | " + " | ".join(cells) + " |")
    head = "| task | kind | model given as | " + " | ".join(verbs) + " |\n|" + "---|" * (3 + len(verbs))
    return head + "\n" + "\n".join(rows)


def tasks_data() -> list[dict]:
    return [{"task": t.name, "summary": t.summary, "model": t.source_hint, "short_names": short_names(t),
             "verbs": {v: _IMPLEMENTATIONS[v][t.name].run for v in t.verbs()}} for t in TASKS.values()]


def short_names(task: Task) -> list[str]:
    """The short model names (minilm, smollm2, digits-cnn, ...) that name a model of ``task``."""
    from edgeshrink.models.cnn import ARCHITECTURES
    from edgeshrink.models.llm import LLM_PACKAGES
    from edgeshrink.models.sources import MODEL_PACKAGES

    return [name for name in (*MODEL_PACKAGES, *LLM_PACKAGES, *ARCHITECTURES) if of_model(name) is task]


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
              "a packaged LLM's short name (smollm2, gemma3-270m), a .gguf file, or a decoder's directory"))
register(Task("tensor-classification", "a plain-PyTorch CNN over tensors", _cnn_model,
              "a built-in CNN architecture (digits-cnn) or a CNN directory from `finetune`"))
register(Task("text-classification", "a text encoder with a classification head", None,
              "an encoder's directory or short name (minilm)"))

# -- the verbs, one section each: which function and config run it for each task -----------------------------
# finetune
_TRAIN_FLAGS = {"--epochs": "epochs", "--batch-size": "batch_size", "--learning-rate": "learning_rate",
                "--seed": "seed", "--max-train-examples": "max_train_examples"}
implement("finetune", "text-classification", "edgeshrink.models.finetune.encoder:finetune_encoder",
          "edgeshrink.models.finetune:FinetuneConfig", {**_TRAIN_FLAGS, "--max-length": "max_length"})
implement("finetune", "tensor-classification", "edgeshrink.models.finetune.cnn:finetune_cnn",
          "edgeshrink.models.finetune:FinetuneConfig", _TRAIN_FLAGS)
implement("finetune", "text-generation", "edgeshrink.models.finetune.decoder:finetune_llm",
          "edgeshrink.models.finetune.decoder:LLMFinetuneConfig",
          {**_TRAIN_FLAGS, "--prompt": "prompt", "--few-shot": "few_shot", "--quantization-aware": "quantization_aware",
           "--qat-block-size": "quantization_block_size"})

# prune (structured, physical removal), sparsify (unstructured), distill: compress/prune/, compress/distill/
_STUDENT = {"--heads": "", "--ffn": ""}  # distill: flags that build the student (the prune verb's), not the config's
implement("prune", "text-classification", "edgeshrink.compress.prune.encoder:cut",
          "edgeshrink.compress.prune.encoder:PruneConfig",
          {"--layers": "layers", "--layer-strategy": "layer_strategy", "--heads": "heads_keep", "--ffn": "ffn_keep",
           "--vocab": "vocab", "--importance-examples": "importance_examples"},
          summary="edgeshrink.compress.prune.encoder:describe")
implement("prune", "text-generation", "edgeshrink.compress.prune.decoder:cut",
          "edgeshrink.compress.prune.decoder:LLMPruneConfig",
          {"--drop-blocks": "", "--importance": "importance", "--ffn": "ffn_keep", "--heads": "heads_keep"},
          summary="edgeshrink.compress.prune.decoder:describe")
implement("prune-channels", "tensor-classification", "edgeshrink.compress.channels:prune_channels",
          "edgeshrink.compress.channels:ChannelPruneConfig",
          {"--channels": "channels_keep", "--hidden": "hidden_keep", "--recover-epochs": "recover_epochs"})
implement("sparsify", "text-classification", "edgeshrink.compress.sparsify:sparsify",
          "edgeshrink.compress.sparsify:SparsifyConfig")
_DISTILL = {"--epochs": "epochs", "--learning-rate": "learning_rate", "--alpha": "alpha_ce", "--beta": "beta_kd",
            "--gamma": "gamma_hidden", "--temperature": "temperature"}
implement("distill", "text-classification", "edgeshrink.compress.distill.encoder:EncoderDistillation",
          "edgeshrink.compress.distill.encoder:DistillConfig",
          {**_DISTILL, "--delta": "delta_attention", "--label-free": "label_free", "--augment": "",
           "--layers": "", **_STUDENT, "--vocab": ""},
          summary="edgeshrink.compress.distill.encoder:describe")
implement("distill", "text-generation", "edgeshrink.compress.distill.decoder:DecoderDistillation",
          "edgeshrink.compress.distill.decoder:LLMDistillConfig",
          {**_DISTILL, "--train-tokens": "train_tokens", "--extra-text": "", "--drop-blocks": "", **_STUDENT,
           "--quantization-aware": "quantization_aware", "--qat-block-size": "quantization_block_size"},
          summary="edgeshrink.compress.distill.decoder:describe")

# export
_EXPORT_FLAGS = {"--opset": "opset", "--tolerance": "tolerance"}
implement("export", "text-classification", "edgeshrink.export.onnx:export_encoder", "edgeshrink.export.config:ExportConfig",
          {**_EXPORT_FLAGS, "--optimize": "optimize", "--max-length": "max_length"}, "edgeshrink.export.onnx:summarize")
implement("export", "tensor-classification", "edgeshrink.export.onnx:export_cnn", "edgeshrink.export.config:ExportConfig",
          {**_EXPORT_FLAGS, "--optimize": "optimize"}, "edgeshrink.export.onnx:summarize")
implement("export", "text-generation", "edgeshrink.export.llm:export_llm", "edgeshrink.export.config:LLMExportConfig",
          {**_EXPORT_FLAGS, "--exporter": "exporter"}, "edgeshrink.export.llm:summarize")
# a Triton model repository (the tokenizer runs in Triton's Python backend): text classifiers only
implement("export-triton", "text-classification", "edgeshrink.export.triton:export_triton",
          "edgeshrink.export.triton:TritonConfig", {"--name": "name"})

# quantize (a bundle's task): the part compress/quantize's skeleton runs, a class built with (bundle, manifest,
# config, data, progress) that has run(work, model_out), evaluate(out_dir), drops and describe(manifest, out)
_QUANT_FLAGS = {"--method": "method", "--block-size": "block_size", "--symmetric": "symmetric",
                "--accuracy-level": "accuracy_level"}
_CLASSIFIER_QUANT_FLAGS = {**_QUANT_FLAGS, "--target": "target", "--per-channel": "per_channel",
                           "--weight-type": "weight_type", "--calibration-method": "calibration_method",
                           "--calibration-samples": "calibration_samples",
                           "--quantize-embeddings": "quantize_embeddings", "--tolerance": "tolerance"}
implement("quantize", "text-classification", "edgeshrink.compress.quantize.classifier:ClassifierQuantization",
          "edgeshrink.compress.quantize.config:QuantConfig", _CLASSIFIER_QUANT_FLAGS)
implement("quantize", "tensor-classification", "edgeshrink.compress.quantize.classifier:ClassifierQuantization",
          "edgeshrink.compress.quantize.config:QuantConfig", _CLASSIFIER_QUANT_FLAGS)
implement("quantize", "text-generation", "edgeshrink.compress.quantize.decoder:DecoderQuantization",
          "edgeshrink.compress.quantize.config:LLMQuantConfig",
          {**_QUANT_FLAGS, "--grid": "grid", "--head-bits": "head_bits", "--answer-prompts": "answer_prompts",
           "--calibration-documents": "calibration_documents", "--calibration-tokens": "calibration_tokens",
           "--error-feedback": "error_feedback"})

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
           "--answers": "answers", "--no-quality": ""})

# serve (the model's task): the app factory, factory(bundle, config, faults=None). The HTTP services answer
# text: a tensor bundle is refused here. The flags are those only some tasks take (refused for the others).
implement("serve", "text-classification", "edgeshrink.serve.device:device_app",
          flags={"--cloud-protocol": "", "--update-from": ""})
implement("serve", "text-generation", "edgeshrink.serve.llm.app:llm_device_app",
          flags={"--prompt-lookup": "", "--llm-policy": "", "--handoff-via": ""})
implement("serve-cloud", "text-classification", "edgeshrink.serve.cloud:cloud_app", flags={"--engine": ""})
implement("serve-cloud", "text-generation", "edgeshrink.serve.llm.app:llm_cloud_app", flags={"--prompt-lookup": ""})

# release --canary-data (the bundle's task): a held-out labelled sample the runtime scores where the bundle runs
# (deploy/canary.py); the same check gates an update of the device service
implement("release-canary", "text-classification", "edgeshrink.deploy.canary:canary_check")

# recipe (the source model's task): one run loop; the recipe file's schema (its data and targets) and the
# task's kind of recipe (steps, ordering, cache-key parts, report) differ
implement("recipe", "text-classification", "edgeshrink.recipes.runner:run", "edgeshrink.recipes.classify:TextRecipe",
          parts="edgeshrink.recipes.classify:TEXT")
implement("recipe", "tensor-classification", "edgeshrink.recipes.runner:run",
          "edgeshrink.recipes.classify:TensorRecipe", parts="edgeshrink.recipes.classify:TENSOR")
implement("recipe", "text-generation", "edgeshrink.recipes.runner:run", "edgeshrink.recipes.generate:GenerationRecipe",
          parts="edgeshrink.recipes.generate:GENERATE")

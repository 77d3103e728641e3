"""The runtime's own task table: what a bundle of each task holds and which class runs it (torch-free).

    from edgeshrink.runtime.tasks import runtime_task
    runtime_task(manifest["task"]).loader        # "edgeshrink.runtime.generate:Generator"

The rest of edgeshrink asks ``edgeshrink.tasks`` (the task registry, which knows every verb); the device
runtime must not import it (it reaches torch-side modules), so the few facts a device needs live here. The
two tables share the task names; a test checks they list the same tasks.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgeshrink.errors import EdgeshrinkError


@dataclass(frozen=True)
class RuntimeTask:
    name: str
    loader: str  # "module:Class": the runtime class that loads such a bundle, called (bundle, threads=, verify=)
    needs: tuple[str, ...]  # manifest sections a bundle of this task must carry
    tokenized: bool  # the model takes token ids: the bundle ships a tokenizer the runtime opens
    padded: bool = False  # batches are padded: the tokenizer entry must name its pad id
    single_input: bool = False  # the graph takes exactly one input tensor (the manifest lists it)
    generates: bool = False  # the model generates text: a router asks it through a prompt (route/router.py)
    web: bool = False  # the web runtime (web/assets/edgeshrink.mjs) runs it: `edgeshrink pack --target web`

    def runtime_class(self):
        module, _, name = self.loader.partition(":")
        return getattr(importlib.import_module(module), name)

    def manifest_problem(self, manifest) -> str | None:
        """What a schema-valid manifest of this task still lacks, in one line (None: nothing)."""
        for name in self.needs:
            if getattr(manifest, name) is None:
                return f"a {self.name} bundle needs '{name}'"
        if self.padded and manifest.tokenizer.pad_id is None:
            return f"a {self.name} bundle needs 'tokenizer.pad_id'"
        if self.single_input and len(manifest.inputs) != 1:
            return f"a {self.name} bundle takes exactly one input"
        return None


RUNTIME_TASKS: dict[str, RuntimeTask] = {t.name: t for t in (
    RuntimeTask("text-classification", "edgeshrink.runtime.predictor:Predictor", ("labels", "max_length", "tokenizer"),
                tokenized=True, padded=True, web=True),
    RuntimeTask("tensor-classification", "edgeshrink.runtime.predictor:Predictor", ("labels", "inputs"),
                tokenized=False, single_input=True),
    RuntimeTask("text-generation", "edgeshrink.runtime.generate:Generator", ("tokenizer", "generation"),
                tokenized=True, generates=True, web=True),
)}
TASK_NAMES = tuple(RUNTIME_TASKS)


def runtime_task(name: str) -> RuntimeTask:
    try:
        return RUNTIME_TASKS[name]
    except (KeyError, TypeError):
        raise EdgeshrinkError(f"unknown bundle task {name!r}; expected one of {', '.join(TASK_NAMES)}") from None

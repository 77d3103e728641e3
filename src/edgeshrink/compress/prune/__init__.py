"""Structured pruning with physical removal: one verb for every kind of model that takes it.

    from edgeshrink.compress.prune import prune
    from edgeshrink.compress.prune.encoder import PruneConfig
    from edgeshrink.compress.prune.decoder import LLMPruneConfig
    record = prune("runs/cloud", "runs/student", PruneConfig(layers=2, ffn_keep=0.5), data="sentiment-movies")
    record = prune("smollm2", "runs/smollm2-drop8", LLMPruneConfig(drop_blocks=8), data="bbc-news")

The model's task (edgeshrink/tasks.py) picks the ``cut``: ``encoder.py`` (a text classifier: layers, heads
and FFN neurons ranked by Taylor importance on labelled examples, the vocabulary) or ``decoder.py`` (a causal
LM: blocks, FFN neurons and KV groups ranked by forward-only importance on calibration text). It loads, checks,
scores and cuts, and returns ``finish(work_dir) -> (model, tokenizer, record)``, called while the output is
written in one rename (``work_dir``: scratch space inside it, removed after).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeshrink import tasks


def prune(model: str | Path, out: str | Path, config=None, *, data, force: bool = False, progress=None) -> dict:
    """Build a smaller dense student from ``model``; return its record (also saved in ``out``). ``config``
    is the task's config (None: its defaults); ``data`` is what the cuts are scored on (a classifier's
    labelled data set, a language model's text)."""
    from edgeshrink._files import atomic_output_dir, check_output_dir
    from edgeshrink.models.finetune import hf_writer

    impl = tasks.of_model(model).implementation("prune")
    config = impl.check_config(config)
    check_output_dir(out, force)
    finish = impl.function()(model, config, data=data, progress=progress)
    with atomic_output_dir(out, force) as tmp:
        net, tokenizer, record = finish(tmp / WORK_DIR)
        hf_writer(net, tokenizer, record)(tmp)
        shutil.rmtree(tmp / WORK_DIR, ignore_errors=True)
    return record


WORK_DIR = "_tokenizer"  # scratch space a cut may use inside the output (the vocabulary cut's tokenizer)

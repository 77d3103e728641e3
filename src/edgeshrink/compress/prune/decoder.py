"""Depth and width pruning of a causal LM: drop whole blocks, FFN neurons and attention heads (by KV group),
chosen by measured importance, physically removed.

    from edgeshrink.compress.prune import prune
    from edgeshrink.compress.prune.decoder import LLMPruneConfig
    record = prune("smollm2", "runs/smollm2-drop8", LLMPruneConfig(drop_blocks=8), data="bbc-news")
    record = prune("smollm2", "runs/smollm2-narrow", LLMPruneConfig(ffn_keep=0.5, heads_keep=0.67), data="bbc-news")

Importance is forward-only on the calibration part of a text set (``data``, e.g. ``bbc-news``; documents one at a
time, ``max_tokens`` each, so memory stays bounded): a hook on every block reads its input and output
hidden states, and per block ``block-influence`` = 1 − mean cosine similarity between them (ShortGPT) or
``angular`` = mean arccos(cosine)/π; the blocks that change their input least go first. ``first``,
``last`` and ``uniform`` drop by position, for comparison; ``blocks`` names them. The kept blocks are
renumbered (their attention layers' ``layer_idx``, the config's ``layer_types``), so the result is an
ordinary Hugging Face model: it exports, quantizes (a model imported from a GGUF keeps the GGUF grid, its
record is carried over) and generates like any other. Tied embeddings stay tied (they are not touched).

Width (Minitron's activation importance, forward-only on the same documents, scored on what the depth cut
left): an FFN neuron's mean |activation| where it enters the down projection; a head's mean L2 norm of its
context where it enters the output projection, summed over the query heads of a key/value group, so heads
go by whole groups and grouped-query attention stays valid. Every block keeps the same number (one config
holds one width), its own most important ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError


class LLMPruneConfig(Config):
    version: int = 2
    drop_blocks: int | None = Field(None, ge=0)  # how many blocks to drop, chosen by `importance`
    blocks: list[int] | None = None  # or exactly these block indices (0-based)
    importance: Literal["block-influence", "angular", "first", "last", "uniform"] = "block-influence"
    ffn_keep: float | None = Field(None, gt=0, lt=1)  # fraction of FFN neurons kept in every block
    heads_keep: float | None = Field(None, gt=0, lt=1)  # fraction of attention heads kept, by whole KV groups
    calibration_documents: int = Field(32, ge=1)
    max_tokens: int = Field(256, ge=2)  # tokens per calibration document scored

    @model_validator(mode="after")
    def _one_choice(self):
        if self.drop_blocks is not None and self.blocks is not None:
            raise ValueError("give drop_blocks (a count) or blocks (indices), not both")
        if self.drop_blocks is None and self.blocks is None and self.ffn_keep is None and self.heads_keep is None:
            raise ValueError("give drop_blocks or blocks (depth), and/or ffn_keep or heads_keep (width)")
        return self


def _run_documents(model, tokenizer, texts, config: LLMPruneConfig, handles, what: str, progress) -> int:
    """Run each calibration document (``max_tokens`` at most) through ``model``, one at a time, while the hooks
    in ``handles`` record what they score; remove the hooks; the number of tokens seen."""
    import torch

    tokens = 0
    try:
        with torch.inference_mode():
            for number, text in enumerate(texts):
                if progress:
                    progress(f"scoring {what} on calibration document {number + 1}/{len(texts)}")
                ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=config.max_tokens)["input_ids"]
                if ids.shape[1] < 2:
                    continue
                model(input_ids=ids, use_cache=False)
                tokens += ids.shape[1]
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise EdgeshrinkError(f"no calibration document has 2 tokens to score the {what} on")
    return tokens


def block_scores(model, family, texts: list[str], tokenizer, config: LLMPruneConfig, progress=None) -> dict:
    """Per block: block influence (1 − mean cosine) and angular distance between its input and output."""
    import torch

    blocks = family.block_list(model)
    sums = {"cos": np.zeros(len(blocks)), "angle": np.zeros(len(blocks))}

    def hook(index):
        def record(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).clamp(-1, 1).flatten()
            sums["cos"][index] += float(cos.sum())
            sums["angle"][index] += float(torch.arccos(cos).sum() / np.pi)
        return record

    handles = [block.register_forward_hook(hook(i), with_kwargs=True) for i, block in enumerate(blocks)]
    tokens = _run_documents(model, tokenizer, texts, config, handles, "blocks", progress)
    return {"block-influence": (1 - sums["cos"] / tokens).tolist(), "angular": (sums["angle"] / tokens).tolist(),
            "tokens": tokens}


def width_scores(model, family, texts: list[str], tokenizer, config: LLMPruneConfig, progress=None) -> dict:
    """Activation importance (Minitron): per block, each FFN neuron's mean |activation| at the down
    projection's input, and each attention head's mean L2 norm of its context at the output projection's."""
    blocks = family.block_list(model)
    text_config = _text_config(model)
    heads = text_config.num_attention_heads
    ffn = [0.0] * len(blocks)
    head = [0.0] * len(blocks)

    def on_down(i):
        def record(module, args):
            ffn[i] = ffn[i] + args[0].detach().double().abs().sum(dim=(0, 1))
        return record

    def on_o(i):
        def record(module, args):
            x = args[0].detach().double()
            head[i] = head[i] + x.view(*x.shape[:-1], heads, -1).norm(dim=-1).sum(dim=(0, 1))
        return record

    handles = [family.ffn_of(b).down.register_forward_pre_hook(on_down(i)) for i, b in enumerate(blocks)]
    handles += [b.get_submodule(family.o).register_forward_pre_hook(on_o(i)) for i, b in enumerate(blocks)]
    tokens = _run_documents(model, tokenizer, texts, config, handles, "FFN neurons and heads", progress)
    return {"ffn": [(f / tokens).tolist() for f in ffn], "heads": [(h / tokens).tolist() for h in head],
            "tokens": tokens}


def _text_config(model):
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def _kept_count(fraction: float, total: int, what: str, key: str) -> int:
    kept = max(1, round(fraction * total))
    if kept >= total:
        raise EdgeshrinkError(f"{key} {fraction} of {total} {what} keeps all of them; the smallest cut keeps "
                              f"{total - 1} ({key} <= {(total - 1) / total:.2f})")
    return kept


def remove_width(model, family, config: LLMPruneConfig, scores: dict) -> dict:
    """Keep the most important FFN neurons / KV groups of every block (the same count in each, as one config
    holds one width); physically removed, the config updated. Returns what was kept per block."""
    from edgeshrink.models import surgery

    text_config = _text_config(model)
    configs = {id(c): c for c in (model.config, text_config)}.values()
    kept = {}
    if config.ffn_keep is not None:
        size = getattr(text_config, family.ffn_size_key)
        n = _kept_count(config.ffn_keep, size, "FFN neurons", "ffn_keep")
        kept["ffn_neurons"] = []
        for i, block_scores in enumerate(scores["ffn"]):
            neurons = sorted(int(j) for j in np.argsort(-np.asarray(block_scores), kind="stable")[:n])
            surgery.keep_ffn(model, family, i, neurons)
            kept["ffn_neurons"].append(len(neurons))
        for c in configs:
            setattr(c, family.ffn_size_key, n)
    if config.heads_keep is not None:
        heads, kv = text_config.num_attention_heads, text_config.num_key_value_heads
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
        if kv < 2:
            raise EdgeshrinkError(f"the model has {kv} key/value group: heads are removed by whole groups, so "
                                  "none can go (heads_keep applies to grouped-query attention with 2+ groups)")
        n = _kept_count(config.heads_keep, kv, "key/value groups", "heads_keep")
        per_group = heads // kv
        kept["kv_groups"] = []
        for i, block_scores in enumerate(scores["heads"]):
            group_scores = np.asarray(block_scores).reshape(kv, per_group).sum(axis=1)
            groups = sorted(int(g) for g in np.argsort(-group_scores, kind="stable")[:n])
            surgery.keep_kv_groups(model, family, i, groups, heads, kv, head_dim)
            kept["kv_groups"].append(groups)
        for c in configs:
            c.head_dim = head_dim  # stated, since hidden_size / heads no longer gives it
            c.num_attention_heads, c.num_key_value_heads = n * per_group, n
    return kept


def choose_blocks(count: int, config: LLMPruneConfig, scores: dict | None) -> list[int]:
    """The block indices to drop (sorted)."""
    if config.blocks is not None:
        drop = sorted(set(config.blocks))
        bad = [b for b in drop if not 0 <= b < count]
        if bad:
            raise EdgeshrinkError(f"blocks {bad} do not exist: the model has blocks 0..{count - 1}")
    else:
        n = config.drop_blocks
        if n == 0:
            drop = []
        elif config.importance in ("block-influence", "angular"):
            drop = sorted(int(i) for i in np.argsort(scores[config.importance], kind="stable")[:n])
        elif config.importance == "first":
            drop = list(range(n))
        elif config.importance == "last":
            drop = list(range(count - n, count))
        else:  # uniform: evenly spaced, never the first block (it reads the embeddings)
            drop = sorted({int(round(x)) for x in np.linspace(1, count - 1, n)}) if n else []
    if len(drop) >= count:
        raise EdgeshrinkError(f"cannot drop {len(drop)} of the model's {count} blocks: at least one must stay")
    return drop


def remove_blocks(model, family, drop: list[int]) -> list[int]:
    """Physically remove ``drop``; renumber what stays (attention ``layer_idx``, config ``layer_types``)."""
    from edgeshrink.models.surgery import keep_blocks

    count = len(family.block_list(model))
    keep = [i for i in range(count) if i not in set(drop)]
    keep_blocks(model, family, keep)
    for new, block in enumerate(family.block_list(model)):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    text_config = _text_config(model)
    for config in {id(c): c for c in (model.config, text_config)}.values():
        config.num_hidden_layers = len(keep)
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == count:
            config.layer_types = [layer_types[i] for i in keep]
    return keep


def cut(teacher: str | Path, config: LLMPruneConfig, *, data, progress=None):
    """Load the causal LM ``teacher``, check the request, score on the calibration part of the text ``data``
    and cut (see the module doc); ``finish(work_dir)`` returns (model, tokenizer, record)."""
    from edgeshrink.data.lm_text import load_lm_text
    from edgeshrink.models import arch
    from edgeshrink.models.llm import import_llm, load_causal_lm
    from edgeshrink.models.sources import read_record

    model_dir = import_llm(teacher)
    model, tokenizer = load_causal_lm(model_dir)
    family = arch.family_of(model.config)
    depth = config.drop_blocks is not None or config.blocks is not None
    width_cut = config.ffn_keep is not None or config.heads_keep is not None
    for asked, operation in ((depth, "drop_layers"), (config.ffn_keep is not None, "prune_ffn"),
                             (config.heads_keep is not None, "prune_heads")):
        if asked:
            family.check(operation)
    count = len(family.block_list(model))
    teacher_parameters = int(sum(p.numel() for p in model.parameters()))
    started = time.perf_counter()
    ranked = config.blocks is None and config.importance in ("block-influence", "angular") and config.drop_blocks
    # a DataConfig names its text
    text = load_lm_text(getattr(data, "source", data), "calibration") if width_cut or ranked else None
    texts = None if text is None else text.texts[:config.calibration_documents]
    scores = block_scores(model, family, texts, tokenizer, config, progress) if ranked else None
    drop = choose_blocks(count, config, scores) if depth else []
    keep = remove_blocks(model, family, drop)
    width, widths = None, {}
    if width_cut:  # scored on the model left after the depth cut
        width = width_scores(model, family, texts, tokenizer, config, progress)
        widths = remove_width(model, family, config, width)
    calibration = None if text is None else {"name": text.name, "part": "calibration", "split_sha256": text.split["sha256"],
                                             "documents": len(texts)}
    teacher_record = read_record(model_dir)
    text_config = _text_config(model)
    record = {"task": "text-generation", "source": teacher_record.get("source"),
              "prune": {"teacher": str(Path(model_dir).resolve()), "config": config.to_dict(),
                        "dropped_blocks": drop, "kept_blocks": keep, "teacher_blocks": count,
                        "ffn_neurons": getattr(text_config, family.ffn_size_key, None),
                        "attention_heads": text_config.num_attention_heads,
                        "kv_groups": widths.get("kv_groups"), "calibration": calibration,
                        "scores": scores, "width_scores": width,
                        "parameters": int(sum(p.numel() for p in model.parameters())),
                        "teacher_parameters": teacher_parameters,
                        "seconds": round(time.perf_counter() - started, 1)}}
    return lambda work_dir: (model, tokenizer, record)


def describe(record: dict, out) -> str:
    p = record["prune"]
    return (f"student {out}: dropped blocks {p['dropped_blocks']} of {p['teacher_blocks']} "
            f"({p['config']['importance'] if p['config']['blocks'] is None else 'by index'}), "
            f"{p['ffn_neurons']} FFN neurons and {p['attention_heads']} heads per block, "
            f"{p['parameters'] / 1e6:.2f}M parameters ({100 * p['parameters'] / p['teacher_parameters']:.1f}% "
            "of the teacher)")

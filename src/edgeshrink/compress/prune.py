"""Structured pruning of a BERT-style classifier with physical removal: layers, attention heads, FFN neurons.

    from edgeshrink.compress.prune import prune, PruneConfig
    record = prune("runs/cloud", "sentiment-movies", "runs/student", PruneConfig(layers=2, ffn_keep=0.5))

Heads and FFN neurons are ranked by first-order Taylor importance, |activation × gradient| of the loss,
summed over examples of the train split (Michel et al. 2019 for heads; Molchanov et al. 2017 for
neurons), and the least important are cut out of the weight matrices: the saved model is dense and
smaller, so it exports and runs faster. The result is a starting point for distillation, which
recovers the accuracy the cuts cost.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from edgeshrink._files import atomic_output_dir, check_output_dir
from edgeshrink.config import Config
from edgeshrink.data import DataConfig, SplitConfig, load_data, split_examples
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.sources import RECORD_NAME, check_labels, read_record, resolve_model


class PruneConfig(Config):
    version: int = 1
    layers: int | list[int] | None = None  # how many encoder layers to keep, or which (0-based)
    layer_strategy: Literal["uniform", "first", "last"] = "uniform"
    heads_keep: float | None = Field(None, gt=0, le=1)  # fraction of attention heads kept in every layer
    ffn_keep: float | None = Field(None, gt=0, le=1)  # fraction of FFN neurons kept in every layer
    vocab: bool = False  # keep only the tokens the train split uses (plus special tokens)
    importance_examples: int = Field(512, ge=1)
    batch_size: int = Field(32, ge=1)
    max_length: int | None = Field(None, ge=8)  # None: the teacher's
    seed: int = 0
    split: SplitConfig = SplitConfig()

    @field_validator("layers")
    @classmethod
    def _layers(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("must keep at least one layer")
        if isinstance(value, list) and (not value or len(set(value)) != len(value) or min(value) < 0):
            raise ValueError("must be distinct, non-negative layer indices")
        return value


def layer_indices(total: int, spec: int | list[int] | None, strategy: str) -> list[int]:
    """Which of ``total`` layers to keep. Uniform spreads them and always keeps the first and last."""
    if spec is None:
        return list(range(total))
    if isinstance(spec, list):
        if max(spec) >= total:
            raise EdgeshrinkError(f"layer index {max(spec)} out of range: the teacher has {total} layers")
        return sorted(spec)
    if spec > total:
        raise EdgeshrinkError(f"cannot keep {spec} layers: the teacher has {total}")
    if strategy == "first":
        return list(range(spec))
    if strategy == "last":
        return list(range(total - spec, total))
    if spec == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (spec - 1)) for i in range(spec)})


def _encoder(model):
    base = getattr(model, model.base_model_prefix, None)
    if base is None or not hasattr(base, "encoder") or not hasattr(base.encoder, "layer"):
        raise EdgeshrinkError(f"structured pruning supports BERT-style encoders; got {type(model).__name__}")
    return base.encoder


def drop_layers(model, keep: list[int]) -> None:
    import torch

    encoder = _encoder(model)
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in keep])
    model.config.num_hidden_layers = len(keep)


def importance(model, tokenizer, texts: list[str], labels: list[int], batch_size: int, max_length: int):
    """Per layer: head importance (|d loss / d head_mask|) and FFN neuron importance (|act × grad|)."""
    import torch

    encoder = _encoder(model)
    n_layers = len(encoder.layer)
    n_heads = model.config.num_attention_heads
    head_mask = torch.ones(n_layers, n_heads, requires_grad=True)
    ffn_scores = [torch.zeros(layer.intermediate.dense.out_features) for layer in encoder.layer]
    activations: dict[int, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(encoder.layer):
        def keep(module, inputs, output, i=i):
            output.retain_grad()
            activations[i] = output
        hooks.append(layer.intermediate.register_forward_hook(keep))
    model.eval()  # no dropout: importance of the model as it will run
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt")
            target = torch.tensor(labels[start:start + batch_size])
            logits = model(**batch, head_mask=head_mask).logits
            loss = torch.nn.functional.cross_entropy(logits, target)
            model.zero_grad()
            loss.backward()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            for i, act in activations.items():
                ffn_scores[i] += (act * act.grad * mask).sum(dim=(0, 1)).abs().detach()
    finally:
        for hook in hooks:
            hook.remove()
    heads = head_mask.grad.abs().detach()
    return heads, ffn_scores


def prune_ffn(layer, keep) -> None:
    """Keep only neurons ``keep`` of a layer's FFN: rows of the up projection, columns of the down one."""
    import torch

    up, down = layer.intermediate.dense, layer.output.dense
    keep = torch.as_tensor(sorted(int(k) for k in keep))
    new_up = torch.nn.Linear(up.in_features, len(keep))
    new_down = torch.nn.Linear(len(keep), down.out_features)
    with torch.no_grad():
        new_up.weight.copy_(up.weight[keep])
        new_up.bias.copy_(up.bias[keep])
        new_down.weight.copy_(down.weight[:, keep])
        new_down.bias.copy_(down.bias)
    layer.intermediate.dense, layer.output.dense = new_up, new_down


def prune(teacher: str | Path, data: DataConfig | str, out: str | Path, config: PruneConfig | None = None,
          force: bool = False) -> dict:
    """Build a smaller dense student from ``teacher``; return its record (also saved in the directory)."""
    import torch

    from edgeshrink.models.cnn import is_cnn
    from edgeshrink.models.torch_text import load_classifier

    config = config or PruneConfig()
    if is_cnn(teacher):
        raise EdgeshrinkError(f"{teacher} is a CNN: prune its channels with `prune_channels` (recipe step prune-channels)")
    check_output_dir(out, force)
    teacher_dir = resolve_model(teacher)
    teacher_record = read_record(teacher_dir)
    model, tokenizer = load_classifier(teacher_dir)
    torch.manual_seed(config.seed)
    total_layers = model.config.num_hidden_layers
    n_heads = model.config.num_attention_heads
    ffn = model.config.intermediate_size
    keep_layers = layer_indices(total_layers, config.layers, config.layer_strategy)
    heads_kept = n_heads if config.heads_keep is None else max(1, round(n_heads * config.heads_keep))
    ffn_kept = ffn if config.ffn_keep is None else max(1, round(ffn * config.ffn_keep))
    if len(keep_layers) == total_layers and heads_kept == n_heads and ffn_kept == ffn and not config.vocab:
        raise EdgeshrinkError("this student is not smaller than its teacher: set layers, heads_keep, ffn_keep or vocab")
    labels = list(model.config.id2label.values())
    max_length = config.max_length or teacher_record.get("max_length", 128)
    started = time.perf_counter()

    drop_layers(model, keep_layers)
    head_plan, vocab_info = {}, None
    split = split_examples(load_data(data), config.split) if (heads_kept < n_heads or ffn_kept < ffn or config.vocab) \
        else None
    if heads_kept < n_heads or ffn_kept < ffn:
        train = split.train.head(config.importance_examples)
        check_labels(train.labels, labels, "the teacher")
        head_scores, ffn_scores = importance(model, tokenizer, train.texts, [labels.index(y) for y in train.labels],
                                             config.batch_size, max_length)
        for i, layer in enumerate(_encoder(model).layer):
            if heads_kept < n_heads:
                order = torch.argsort(head_scores[i])  # least important first
                head_plan[i] = sorted(int(h) for h in order[: n_heads - heads_kept])
            if ffn_kept < ffn:
                keep = torch.argsort(ffn_scores[i], descending=True)[:ffn_kept]
                prune_ffn(layer, keep)
        if head_plan:
            model.prune_heads(head_plan)
        model.config.intermediate_size = ffn_kept
    with atomic_output_dir(out, force) as tmp:
        if config.vocab:
            from edgeshrink.compress.vocab import prune_vocabulary

            model, tokenizer, vocab_info = prune_vocabulary(model, tokenizer, split.train.texts, tmp / "_tokenizer")
        record = _record(model, teacher, teacher_dir, teacher_record, labels, max_length, config, keep_layers,
                         heads_kept, head_plan, ffn_kept, vocab_info, started)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(tmp / "_tokenizer", ignore_errors=True)
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2))
    return record


def _record(model, teacher, teacher_dir, teacher_record, labels, max_length, config, keep_layers, heads_kept,
            head_plan, ffn_kept, vocab_info, started) -> dict:
    from edgeshrink.models.torch_text import load_classifier

    parameters = int(sum(p.numel() for p in model.parameters()))
    record = {
        "kind": "edgeshrink-model",
        "task": "text-classification",
        "labels": labels,
        "max_length": max_length,
        "source": {"model": str(teacher), "path": str(Path(teacher_dir).resolve())},
        "data": teacher_record.get("data"),
        "prune": {**config.to_dict(), "kept_layers": keep_layers, "heads_per_layer": heads_kept,
                  "pruned_heads": {str(k): v for k, v in head_plan.items()}, "ffn_per_layer": ffn_kept,
                  "vocabulary": vocab_info, "parameters": parameters,
                  "teacher_parameters": teacher_record.get("parameters")
                  or int(sum(p.numel() for p in load_classifier(teacher_dir)[0].parameters())),
                  "seconds": round(time.perf_counter() - started, 1)},
    }
    return record

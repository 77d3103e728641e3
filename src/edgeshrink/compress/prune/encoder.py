"""Structured pruning of an encoder classifier (any registered family): layers, heads, FFN neurons, vocabulary.

    from edgeshrink.compress.prune import prune
    from edgeshrink.compress.prune.encoder import PruneConfig
    record = prune("runs/cloud", "runs/student", PruneConfig(layers=2, ffn_keep=0.5), data="sentiment-movies")

Heads and FFN neurons are ranked by first-order Taylor importance, |activation × gradient| of the loss,
summed over examples of the train split (Michel et al. 2019 for heads; Molchanov et al. 2017 for
neurons), and the least important are cut out of the weight matrices: the saved model is dense and
smaller, so it exports and runs faster. The result is a starting point for distillation, which
recovers the accuracy the cuts cost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from edgeshrink.config import Config
from edgeshrink.data import DataConfig, SplitConfig, load_data, split_examples
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.sources import check_labels, read_record, resolve_model, weights_sha256


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


def importance(model, tokenizer, texts: list[str], labels: list[int], batch_size: int, max_length: int):
    """Per block: head importance (|d loss / d head gate|) and FFN neuron importance (|act × grad|)."""
    import torch

    from edgeshrink.models import arch, surgery

    family = arch.family_of(model.config)
    blocks = family.block_list(model)
    ffn_scores = [torch.zeros(family.ffn_of(block).up.out_features) for block in blocks]
    mask_now = {}

    def on_gradient(i, act, grad):
        mask = mask_now["mask"].unsqueeze(-1).to(act.dtype)
        ffn_scores[i] += (act * grad * mask).sum(dim=(0, 1)).abs()

    gates, remove_gates = surgery.head_gates(model, family)
    remove_ffn = surgery.ffn_activations(model, family, on_gradient)
    model.eval()  # no dropout: importance of the model as it will run
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt")
            target = torch.tensor(labels[start:start + batch_size])
            mask_now["mask"] = batch["attention_mask"]
            logits = model(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits, target)
            model.zero_grad()
            loss.backward()
    finally:
        remove_gates()
        remove_ffn()
    return gates.grad.abs().detach(), ffn_scores


def head_plan(head_scores, heads_kept: int, same_everywhere: bool) -> dict[int, list[int]]:
    """Per block, the heads kept (the most important). MPNet-like families keep the same heads everywhere."""
    import torch

    n_heads = head_scores.shape[1]
    if same_everywhere:
        keep = sorted(int(h) for h in torch.argsort(head_scores.sum(0), descending=True)[:heads_kept])
        return {i: keep for i in range(head_scores.shape[0])}
    plan = {}
    for i in range(head_scores.shape[0]):
        order = torch.argsort(head_scores[i])  # least important first
        pruned = {int(h) for h in order[: n_heads - heads_kept]}
        plan[i] = [h for h in range(n_heads) if h not in pruned]
    return plan


def cut(teacher: str | Path, config: PruneConfig, *, data: DataConfig | str, progress=None):
    """Load ``teacher``, check the request, score and cut (see the module doc); ``finish(work_dir)`` cuts the
    vocabulary (its tokenizer is rebuilt in ``work_dir``) if asked and returns (model, tokenizer, record)."""
    import torch

    from edgeshrink.models import arch, surgery
    from edgeshrink.models.torch_text import load_classifier

    teacher_dir = resolve_model(teacher)
    teacher_record = read_record(teacher_dir)
    model, tokenizer = load_classifier(teacher_dir)
    family = arch.family_of(model.config)
    torch.manual_seed(config.seed)
    blocks = family.block_list(model)
    total_layers = model.config.num_hidden_layers
    n_heads = family.attention_of(blocks[0]).heads
    ffn = family.ffn_of(blocks[0]).up.out_features
    keep_layers = layer_indices(total_layers, config.layers, config.layer_strategy)
    heads_kept = n_heads if config.heads_keep is None else max(1, round(n_heads * config.heads_keep))
    ffn_kept = ffn if config.ffn_keep is None else max(1, round(ffn * config.ffn_keep))
    if len(keep_layers) == total_layers and heads_kept == n_heads and ffn_kept == ffn and not config.vocab:
        raise EdgeshrinkError("this student is not smaller than its teacher: set layers, heads_keep, ffn_keep or vocab")
    for asked, operation in ((len(keep_layers) < total_layers, "drop_layers"), (heads_kept < n_heads, "prune_heads"),
                             (ffn_kept < ffn, "prune_ffn"), (config.vocab, "prune_vocab")):
        if asked:
            family.check(operation)
    if config.vocab:
        from edgeshrink.compress.vocab import check_supported

        check_supported(tokenizer)
    labels = list(model.config.id2label.values())
    max_length = min(config.max_length or teacher_record.get("max_length", 128), family.max_length(model.config))
    teacher_parameters = teacher_record.get("parameters") or int(sum(p.numel() for p in model.parameters()))
    started = time.perf_counter()
    earlier_cut = {int(i): heads for i, heads in (getattr(model.config, arch.KEPT_HEADS_KEY, None) or {}).items()}
    if len(keep_layers) < total_layers:
        surgery.keep_blocks(model, family, keep_layers)
        earlier_cut = {j: earlier_cut[i] for j, i in enumerate(keep_layers) if i in earlier_cut}
    split = split_examples(load_data(data), config.split) if (heads_kept < n_heads or ffn_kept < ffn or config.vocab) \
        else None
    if heads_kept < n_heads or ffn_kept < ffn:
        train = split.train.head(config.importance_examples)
        check_labels(train.labels, labels, "the teacher")
        head_scores, ffn_scores = importance(model, tokenizer, train.texts, [labels.index(y) for y in train.labels],
                                             config.batch_size, max_length)
        if ffn_kept < ffn:
            for i, scores in enumerate(ffn_scores):
                surgery.keep_ffn(model, family, i, torch.argsort(scores, descending=True)[:ffn_kept])
            setattr(model.config, family.ffn_size_key, ffn_kept)
        if heads_kept < n_heads:
            plan = head_plan(head_scores, heads_kept, family.same_heads_every_layer)
            surgery.keep_heads(model, family, plan)
            # The loader slices a full-width model: compose with a cut the teacher already had.
            earlier_cut = {i: [earlier_cut[i][h] for h in heads] if i in earlier_cut else heads
                           for i, heads in plan.items()}
    if earlier_cut:
        setattr(model.config, arch.KEPT_HEADS_KEY, {str(i): heads for i, heads in earlier_cut.items()})
    # Recorded against the first teacher's full width and layers, so that a student cut twice still maps
    # onto the model it was first cut from (distillation's layer and head maps).
    full_heads = model.config.num_attention_heads
    pruned_heads = {i: [h for h in range(full_heads) if h not in heads] for i, heads in earlier_cut.items()}
    earlier = teacher_record.get("prune") or {}
    kept_layers = [earlier["kept_layers"][i] for i in keep_layers] if earlier.get("kept_layers") else keep_layers
    origin_sha = earlier.get("teacher_weights_sha256") or weights_sha256(teacher_dir)

    def finish(work_dir: Path):
        net, tok, vocab_info = model, tokenizer, None
        if config.vocab:
            from edgeshrink.compress.vocab import prune_vocabulary

            net, tok, vocab_info = prune_vocabulary(model, tokenizer, split.train.texts, work_dir)
        return net, tok, {
            "kind": "edgeshrink-model", "task": "text-classification", "labels": labels, "max_length": max_length,
            "source": {"model": str(teacher), "path": str(Path(teacher_dir).resolve())},
            "data": teacher_record.get("data"),
            "prune": {**config.to_dict(), "kept_layers": kept_layers, "heads_per_layer": heads_kept,
                      "pruned_heads": {str(k): v for k, v in pruned_heads.items()}, "ffn_per_layer": ffn_kept,
                      "vocabulary": vocab_info, "parameters": int(sum(p.numel() for p in net.parameters())),
                      "teacher_parameters": teacher_parameters, "seconds": round(time.perf_counter() - started, 1),
                      "teacher_weights_sha256": origin_sha, "cuts": earlier.get("cuts", 0) + 1},
        }

    return finish


def describe(record: dict, out) -> str:
    p = record["prune"]
    return (f"student {out}: layers {p['kept_layers']}, {p['heads_per_layer']} heads and {p['ffn_per_layer']} FFN "
            f"neurons per layer, {p['parameters'] / 1e6:.2f}M parameters "
            f"({100 * p['parameters'] / p['teacher_parameters']:.1f}% of the teacher)"
            + (f", vocabulary {p['vocabulary']['vocab_size']} of {p['vocabulary']['teacher_vocab_size']} tokens"
               if p["vocabulary"] else ""))

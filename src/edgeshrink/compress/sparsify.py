"""Unstructured magnitude pruning: zero the smallest weights of the encoder's linear layers.

    from edgeshrink.compress.sparsify import sparsify, SparsifyConfig
    record = sparsify("runs/cloud", "sentiment-movies", "runs/sparse", SparsifyConfig(sparsity=0.5))

The weights of every ``nn.Linear`` inside the encoder (attention projections and FFN) are ranked by
magnitude, either all together (``scope="global"``: one threshold, layers that matter less lose more)
or each matrix on its own (``"per-layer"``: the same sparsity everywhere). With fine-tuning the
sparsity rises gradually (Zhu & Gupta 2017: s_k = s·(1 − (1 − k/n)³) at n evenly spaced steps
over the first ``ramp_fraction`` of training) and the zeros are kept zero after every optimizer step;
without it (``finetune=None``) the cut is one-shot.

Honest caveat, also printed by the CLI: the model stays dense. ONNX Runtime's dense kernels multiply
the zeros like any other number, so the model runs no faster and its file is no smaller; it pays only
in *compressed* size (a zipped bundle or an app download), which the record reports.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgeshrink._files import atomic_output_dir, check_output_dir
from edgeshrink.config import Config
from edgeshrink.data import DataConfig, SplitConfig, load_data, split_examples
from edgeshrink.models.finetune import FinetuneConfig, scored
from edgeshrink.models.sources import RECORD_NAME, check_labels, read_record, resolve_model, weights_file


class SparsifyConfig(Config):
    version: int = 1
    sparsity: float = Field(0.5, gt=0, lt=1)  # fraction of the targeted weights set to zero
    scope: Literal["global", "per-layer"] = "global"
    steps: int = Field(8, ge=1)  # pruning steps of the gradual schedule
    ramp_fraction: float = Field(0.75, gt=0, le=1)  # part of training over which sparsity rises
    finetune: FinetuneConfig | None = FinetuneConfig(epochs=1, learning_rate=5e-5)  # None: one-shot
    split: SplitConfig = SplitConfig()

    def model_post_init(self, _context) -> None:
        if self.finetune is None and self.steps != 1:
            raise ValueError("a one-shot cut (finetune: null) has a single step; set steps: 1")


def target_weights(model) -> dict:
    """The weight matrices magnitude pruning works on: every nn.Linear inside the transformer blocks."""
    import torch

    from edgeshrink.models import arch

    blocks = arch.family_of(model.config).block_list(model)
    return {name: module.weight for name, module in blocks.named_modules() if isinstance(module, torch.nn.Linear)}


def magnitude_masks(weights: dict, sparsity: float, scope: str) -> dict:
    """Boolean keep-masks that zero the ``sparsity`` fraction of smallest-magnitude weights."""
    import torch

    masks = {}
    for group in [weights] if scope == "global" else [{name: w} for name, w in weights.items()]:
        flat = torch.cat([w.detach().abs().flatten() for w in group.values()])
        k = int(round(sparsity * flat.numel()))
        threshold = flat.kthvalue(k).values if k > 0 else flat.new_tensor(-1.0)
        masks.update({name: w.detach().abs() > threshold for name, w in group.items()})
    return masks


def schedule(step: int, total_steps: int, config: SparsifyConfig) -> float | None:
    """The sparsity to cut to after ``step`` (1-based) of ``total_steps``, or None if no cut is due."""
    ramp = max(1, round(config.ramp_fraction * total_steps))
    points = {max(1, round(k * ramp / config.steps)): k for k in range(1, config.steps + 1)}
    k = points.get(step)
    if k is None:
        return None
    return config.sparsity * (1 - (1 - k / config.steps) ** 3)


def sparsity_report(weights: dict) -> dict:
    zeros = {name: int((w == 0).sum()) for name, w in weights.items()}
    sizes = {name: w.numel() for name, w in weights.items()}
    return {"targeted": sum(zeros.values()) / sum(sizes.values()),
            "per_weight": {name: round(zeros[name] / sizes[name], 4) for name in weights}}


def compressed_bytes(path: Path) -> int:
    """Size after zlib (level 6, like zip/gzip): what a zipped bundle or app download would weigh."""
    compressor = zlib.compressobj(6)
    total = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


def sparsify(model: str | Path, data: DataConfig | str, out: str | Path, config: SparsifyConfig | None = None,
             force: bool = False, progress=None) -> dict:
    """Zero the smallest weights of ``model`` (gradually, with fine-tuning, unless one-shot); save it dense.
    ``progress(message)``: where the fine-tuning reports its steps (None: a rich bar)."""
    import torch

    from edgeshrink import tasks
    from edgeshrink.models.finetune.encoder import train_classifier
    from edgeshrink.models.torch_text import load_classifier, predict_proba

    config = tasks.of_model(model).implementation("sparsify").check_config(config)
    check_output_dir(out, force)
    model_dir = resolve_model(model)
    source_record = read_record(model_dir)
    net, tokenizer = load_classifier(model_dir)
    labels = list(net.config.id2label.values())
    split = split_examples(load_data(data), config.split)
    check_labels(split.train.labels, labels, "the model")
    label_index = {name: i for i, name in enumerate(labels)}
    max_length = source_record.get("max_length", 128)
    weights = target_weights(net)
    started = time.perf_counter()
    masks: dict = {}

    def cut(sparsity: float) -> None:
        masks.update(magnitude_masks(weights, sparsity, config.scope))
        reapply()

    def reapply() -> None:
        with torch.no_grad():
            for name, w in weights.items():
                w.mul_(masks[name])

    history = []
    if config.finetune is None:
        cut(config.sparsity)
    else:
        ft = config.finetune.model_copy(update={"max_length": max_length})
        torch.manual_seed(ft.seed)

        def after_step(step: int, total_steps: int) -> None:
            target = schedule(step, total_steps, config)
            if target is not None:
                cut(target)
            elif masks:
                reapply()

        train = split.train if ft.max_train_examples is None else split.train.head(ft.max_train_examples)
        history = train_classifier(net, tokenizer, train, split.calibration, label_index, ft, after_step,
                                   progress=progress)
        net.to("cpu")
    net.eval()
    probs = predict_proba(net, tokenizer, split.test.texts, max_length)
    correct = int(sum(labels[i] == y for i, y in zip(probs.argmax(1), split.test.labels)))
    report = sparsity_report(weights)
    all_params = sum(p.numel() for p in net.parameters())
    all_zeros = sum(int((p == 0).sum()) for p in net.parameters())
    with atomic_output_dir(out, force) as tmp:
        net.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        size = {"weights_bytes": weights_file(tmp).stat().st_size,
                "weights_compressed_bytes": compressed_bytes(weights_file(tmp)),
                "source_weights_bytes": weights_file(model_dir).stat().st_size,
                "source_weights_compressed_bytes": compressed_bytes(weights_file(model_dir))}
        record = {
            "kind": "edgeshrink-model", "task": "text-classification", "labels": labels, "max_length": max_length,
            "source": {"model": str(model), "path": str(model_dir.resolve())},
            "data": split.data_record(),
            "prune": source_record.get("prune"),
            "sparsify": {**config.to_dict(), "sparsity_targeted": round(report["targeted"], 4),
                         "sparsity_all_parameters": round(all_zeros / all_params, 4),
                         "per_weight": report["per_weight"], **size,
                         "seconds": round(time.perf_counter() - started, 1)},
            "history": history, "parameters": int(all_params),
            "test": scored(correct, len(split.test)),
        }
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2))
    return record

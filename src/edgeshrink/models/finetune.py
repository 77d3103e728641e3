"""Fine-tune a pretrained encoder into a text classifier, or train a small CNN on images: the "cloud model".

    from edgeshrink.models.finetune import finetune, FinetuneConfig
    result = finetune("minilm", "sentiment-movies", "runs/cloud", FinetuneConfig(epochs=2))
    result = finetune("digits-cnn", "digits", "runs/cnn", FinetuneConfig(epochs=15, learning_rate=2e-3))

One verb for both kinds: training a classifier on the train split and scoring it on the test split is the
same technique, with the same settings (epochs, batch size, learning rate and schedule, seed, split);
``finetune`` dispatches on the model (models/cnn.py for CNNs, where ``max_length`` does not apply;
models/llm_finetune.py for decoder LLMs, which learn to answer the data's prompted task).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
from typing import Literal

from pydantic import Field

from edgeshrink import __version__
from edgeshrink._files import atomic_output_dir, check_output_dir
from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.data import DataConfig, SplitConfig, load_data, split_for_training
from edgeshrink.models.sources import RECORD_NAME, resolve_model, weights_sha256
from edgeshrink.stats import accuracy_interval


class FinetuneConfig(Config):
    version: int = 1
    max_length: int = Field(128, ge=8, le=4096)
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1.5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.06, ge=0, lt=1)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    max_train_examples: int | None = Field(None, ge=1)  # for quick runs on a subset
    device: Literal["cpu", "cuda"] = "cpu"
    split: SplitConfig = SplitConfig()


def finetune(model: str | Path, data: DataConfig | str, out: str | Path,
             config: FinetuneConfig | None = None, force: bool = False, prompt=None,
             few_shot: int | None = None) -> dict:
    """Train a classification head (and the encoder) on the train split; report test accuracy.

    ``model`` may also be a CNN (a built-in architecture such as ``digits-cnn``, or a CNN directory):
    it is then trained on image data by ``models.cnn.finetune_cnn``.
    """
    from edgeshrink.export.llm import is_language_model
    from edgeshrink.models.cnn import finetune_cnn, is_cnn

    config = config or FinetuneConfig()
    if is_language_model(model):  # a decoder learns to answer the data's prompted task (models/llm_finetune.py)
        from edgeshrink.models.llm_finetune import finetune_llm

        return finetune_llm(model, data, out, config, prompt=prompt, few_shot=few_shot, force=force)
    if prompt is not None or few_shot is not None:
        raise EdgeshrinkError("a prompt applies to language models; a classifier is trained on the texts as they are")
    if is_cnn(model):
        return finetune_cnn(model, data, out, config, force)
    from edgeshrink.data.images import ImageExamples
    from edgeshrink.models import arch
    from edgeshrink.models.torch_text import load_classifier, predict_proba

    check_output_dir(out, force)
    model_dir = resolve_model(model)
    examples = load_data(data)
    if isinstance(examples, ImageExamples):
        raise EdgeshrinkError(f"model {str(model)!r} is a text classifier; data {examples.name!r} is images "
                              f"(train a CNN on it: model digits-cnn)")
    split = split_for_training(examples, config.split)
    train = split.train if config.max_train_examples is None else split.train.head(config.max_train_examples)

    seed_training(config)
    net, tokenizer = load_classifier(model_dir, label_names=examples.label_names)
    usable = arch.family_of(net.config).max_length(net.config)
    if config.max_length > usable:  # RoBERTa's 514 positions hold 512 tokens
        config = config.model_copy(update={"max_length": usable})
    label_index = {name: i for i, name in enumerate(examples.label_names)}
    started = time.perf_counter()
    history = train_classifier(net, tokenizer, train, split.calibration, label_index, config)
    train_seconds = time.perf_counter() - started

    net.eval()
    probs = predict_proba(net, tokenizer, split.test.texts, config.max_length)
    correct = int(sum(int(p.argmax()) == label_index[y] for p, y in zip(probs, split.test.labels)))
    low, high = accuracy_interval(correct, len(split.test))
    record = {
        "kind": "edgeshrink-model",
        "edgeshrink_version": __version__,
        "task": "text-classification",
        "labels": list(examples.label_names),
        "max_length": config.max_length,
        "source": {"model": str(model), "path": str(model_dir), "weights_sha256": weights_sha256(model_dir)},
        "data": split.data_record(),
        "finetune": config.to_dict(),
        "history": history,
        "train_seconds": round(train_seconds, 1),
        "train_examples": len(train),
        "test": {"accuracy": correct / len(split.test), "correct": correct, "n": len(split.test),
                 "ci95": [low, high]},
    }
    with atomic_output_dir(out, force) as tmp:
        net.to("cpu").save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2))
    return record


def seed_training(config: FinetuneConfig) -> None:
    """Seed Python, numpy and torch, set torch's threads, and refuse a CUDA device torch cannot see."""
    import torch

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise EdgeshrinkError("device 'cuda' asked for, but torch sees no CUDA GPU")


def train_classifier(net, tokenizer, train, calibration, label_index: dict, config: FinetuneConfig,
                     after_step=None) -> list[dict]:
    """Train ``net`` in place on ``train`` with cross-entropy; calibration accuracy after every epoch.

    ``after_step(step, total_steps)`` runs after every optimizer step (gradual pruning hooks in here).
    """
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from transformers import get_linear_schedule_with_warmup

    from edgeshrink.models.torch_text import shuffled_length_batches

    net.to(config.device)
    enc = tokenizer(train.texts, truncation=True, max_length=config.max_length)
    lengths = [len(ids) for ids in enc["input_ids"]]
    targets = torch.tensor([label_index[y] for y in train.labels], device=config.device)

    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = max(1, round(steps_per_epoch * config.epochs))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in net.named_parameters() if not n.endswith(no_decay)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in net.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_fraction * total_steps), total_steps)

    rng = random.Random(config.seed)
    history = []
    step = 0
    columns = [TextColumn("[bold]train[/] {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("train", total=total_steps, loss=float("nan"))
        epoch = 0
        running = None
        while step < total_steps:
            net.train()
            for rows in shuffled_length_batches(lengths, config.batch_size, rng):
                if step >= total_steps:
                    break
                batch = tokenizer.pad({k: [enc[k][i] for i in rows] for k in enc.keys()}, return_tensors="pt").to(config.device)
                loss = torch.nn.functional.cross_entropy(net(**batch).logits, targets[rows])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if after_step is not None:
                    after_step(step, total_steps)
                running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
                progress.update(task, advance=1, loss=running, description=f"epoch {epoch + 1}")
            epoch += 1
            net.eval()
            cal_acc = _accuracy(net, tokenizer, calibration, label_index, config.max_length)
            history.append({"epoch": epoch, "step": step, "train_loss": running, "calibration_accuracy": cal_acc})
            progress.console.print(f"epoch {epoch}: loss {running:.4f}, calibration accuracy {cal_acc:.4f}")
    return history


def _accuracy(net, tokenizer, part, label_index, max_length) -> float:
    from edgeshrink.models.torch_text import predict_proba

    probs = predict_proba(net, tokenizer, part.texts, max_length)
    return float(np.mean([int(p.argmax()) == label_index[y] for p, y in zip(probs, part.labels)]))

"""Fine-tune a pretrained text encoder into a classifier (the "cloud model"): a head on top, all weights trained.

    from edgeshrink.models.finetune import finetune, FinetuneConfig
    record = finetune("minilm", "runs/cloud", FinetuneConfig(epochs=2), data="sentiment-movies")
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np

from edgeshrink._files import atomic_output_dir, check_output_dir
from edgeshrink.data import DataConfig, load_data, split_for_training
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.finetune import FinetuneConfig, hf_writer, model_record, scored, seed_training
from edgeshrink.models.sources import resolve_model, weights_sha256


def finetune_encoder(model: str | Path, out: str | Path, config: FinetuneConfig, *, data: DataConfig | str,
                     force: bool = False, progress=None) -> dict:
    """Train a classification head (and the encoder) on the train split; report test accuracy."""
    from edgeshrink.data.images import ImageExamples
    from edgeshrink.models import arch
    from edgeshrink.models.torch_text import load_classifier

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
    history = train_classifier(net, tokenizer, train, split.calibration, label_index, config, progress=progress)
    train_seconds = time.perf_counter() - started

    net.eval()
    hits = _hits(net, tokenizer, split.test, label_index, config.max_length)
    source = {"model": str(model), "path": str(model_dir), "weights_sha256": weights_sha256(model_dir)}
    record = model_record("text-classification", split, train, config, history, train_seconds,
                          scored(sum(hits), len(hits)), labels=list(examples.label_names), max_length=config.max_length,
                          source=source)
    with atomic_output_dir(out, force) as tmp:
        hf_writer(net, tokenizer, record)(tmp)
    return record


def train_classifier(net, tokenizer, train, calibration, label_index: dict, config: FinetuneConfig,
                     after_step=None, progress=None) -> list[dict]:
    """Train ``net`` in place on ``train`` with cross-entropy; calibration accuracy after every epoch.

    ``after_step(step, total_steps)`` runs after every optimizer step (gradual pruning hooks in here).
    ``progress(message)``: where the steps and epochs are reported (None: a rich bar).
    """
    import torch
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from transformers import get_linear_schedule_with_warmup

    from edgeshrink.compress.trainer import training_bar
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
    with training_bar("train", progress, columns, transient=False) as bar:
        task = bar.add_task("", total=total_steps, loss=float("nan"))
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
                bar.update(task, advance=1, loss=running, description=f"epoch {epoch + 1}")
            epoch += 1
            net.eval()
            cal_acc = float(np.mean(_hits(net, tokenizer, calibration, label_index, config.max_length)))
            history.append({"epoch": epoch, "step": step, "train_loss": running, "calibration_accuracy": cal_acc})
            bar.console.print(f"epoch {epoch}: loss {running:.4f}, calibration accuracy {cal_acc:.4f}")
    return history


def _hits(net, tokenizer, part, label_index, max_length) -> list[bool]:
    """Per example of ``part``: whether ``net`` predicts its label."""
    from edgeshrink.models.torch_text import predict_proba

    probs = predict_proba(net, tokenizer, part.texts, max_length)
    return [int(p.argmax()) == label_index[y] for p, y in zip(probs, part.labels)]

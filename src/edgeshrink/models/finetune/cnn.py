"""Train a small CNN (models/cnn.py) on images: a built-in architecture from scratch, or a CNN directory further.

    from edgeshrink.models.finetune import finetune, FinetuneConfig
    record = finetune("digits-cnn", "runs/cnn", FinetuneConfig(epochs=15, learning_rate=2e-3), data="digits")

``max_length`` of the FinetuneConfig does not apply to images (the field stays: recipe cache keys hash it).
"""

from __future__ import annotations

import time
from pathlib import Path

from edgeshrink._files import atomic_output_dir, check_output_dir, sha256_file
from edgeshrink.data import DataConfig, load_data, split_for_training
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.cnn import (ARCHITECTURES, MODEL_TYPE, WEIGHTS_NAME, CNNConfig, accuracy, build_cnn, load_cnn,
                                   require_images, save_cnn, train_cnn)
from edgeshrink.models.finetune import FinetuneConfig, model_record, seed_training


def finetune_cnn(model: str | Path, out: str | Path, config: FinetuneConfig, *, data: DataConfig | str,
                 force: bool = False, progress=None) -> dict:
    """Train a built-in CNN architecture from scratch (or a trained CNN directory further) on the train split."""
    check_output_dir(out, force)
    examples = load_data(data)
    if str(model) in ARCHITECTURES:
        architecture = ARCHITECTURES[str(model)].model_copy(update={"num_classes": len(examples.label_names)})
        net, previous = None, None
    else:
        net, previous = load_cnn(model)
        architecture = CNNConfig.from_dict(previous["architecture"])
        if previous["labels"] != list(examples.label_names):
            raise EdgeshrinkError(f"{model} predicts labels {previous['labels']}; data {examples.name!r} has "
                                  f"{list(examples.label_names)}")
    require_images(examples, architecture.input_shape, f"model {str(model)!r}")
    split = split_for_training(examples, config.split)
    train = split.train if config.max_train_examples is None else split.train.head(config.max_train_examples)
    seed_training(config)
    net = net if net is not None else build_cnn(architecture)
    started = time.perf_counter()
    history = train_cnn(net, train, split.calibration, config)
    train_seconds = time.perf_counter() - started
    net.to("cpu").eval()
    record = model_record("tensor-classification", split, train, config, history, train_seconds,
                          accuracy(net, split.test), model_type=MODEL_TYPE, architecture=architecture.to_dict(),
                          labels=list(examples.label_names), parameters=int(sum(p.numel() for p in net.parameters())),
                          source={"model": str(model),
                                  "weights_sha256": sha256_file(Path(model) / WEIGHTS_NAME) if previous else None})
    with atomic_output_dir(out, force) as tmp:
        save_cnn(net, record, tmp)
    return record

"""Channel pruning of a CNN with physical removal: fewer convolution channels and dense neurons, a smaller net.

    from edgeshrink.compress.channels import prune_channels, ChannelPruneConfig
    record = prune_channels("runs/cnn", "digits", "runs/cnn-pruned", ChannelPruneConfig(channels_keep=0.5))

Every convolution's output channels (and, with ``hidden_keep``, every hidden dense layer's neurons) are
ranked by first-order Taylor importance, |Σ activation × gradient of the loss| over each feature map,
summed over examples of the train split (Molchanov et al. 2017), the same criterion ``prune`` uses for
a transformer's FFN neurons. The least important are cut out: the convolution gets fewer filters, the
next convolution (or the first dense layer, whose inputs are channel-major after flattening) loses the
matching inputs. The saved CNN has a smaller architecture and is dense, so it exports and runs faster.
``recover_epochs`` fine-tunes it afterwards with the teacher's own training settings.

A separate verb from ``prune`` (BERT layers, heads, FFN neurons, vocabulary): none of those knobs
applies to a CNN, and none of these to a transformer.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from edgeshrink.config import Config
from edgeshrink.data import DataConfig, SplitConfig, load_data, split_examples
from edgeshrink.errors import EdgeshrinkError


class ChannelPruneConfig(Config):
    version: int = 1
    channels_keep: float = Field(0.5, gt=0, le=1)  # fraction of output channels kept in every convolution
    hidden_keep: float = Field(1.0, gt=0, le=1)  # fraction of neurons kept in every hidden dense layer
    recover_epochs: float = Field(0.0, ge=0)  # fine-tuning after the cut (0: none)
    learning_rate: float | None = Field(None, gt=0)  # of the recovery; None: the teacher's
    importance_examples: int = Field(512, ge=1)
    batch_size: int = Field(64, ge=1)  # of the importance pass
    threads: int | None = Field(None, ge=1)
    seed: int = 0
    split: SplitConfig = SplitConfig()


def _kept(n: int, fraction: float) -> int:
    return max(1, round(n * fraction))


def channel_importance(net, config, inputs, targets, batch_size: int):
    """Taylor importance per conv output channel and per hidden dense neuron (after each ReLU)."""
    import torch

    layers = dict(net.named_children())
    watched = [f"relu{i}" for i in range(len(config.channels))] + [f"relu_fc{j}" for j in range(len(config.hidden))]
    scores = {name: None for name in watched}
    activations = {}
    hooks = []
    for name in watched:
        def keep(module, args, output, name=name):
            output.retain_grad()
            activations[name] = output
        hooks.append(layers[name].register_forward_hook(keep))
    net.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            logits = net(inputs[start:start + batch_size])
            loss = torch.nn.functional.cross_entropy(logits, targets[start:start + batch_size], reduction="sum")
            net.zero_grad()
            loss.backward()
            for name, act in activations.items():
                taylor = act * act.grad
                per_example = taylor.sum(dim=(2, 3)) if taylor.dim() == 4 else taylor  # one value per map
                total = per_example.abs().sum(0).detach()
                scores[name] = total if scores[name] is None else scores[name] + total
    finally:
        for hook in hooks:
            hook.remove()
    return [scores[f"relu{i}"] for i in range(len(config.channels))], \
        [scores[f"relu_fc{j}"] for j in range(len(config.hidden))]


def remove_channels(net, config, keep_channels: list[list[int]], keep_hidden: list[list[int]] | None = None):
    """A new, smaller CNN keeping conv output channels ``keep_channels[i]`` and dense neurons ``keep_hidden[j]``.

    Returns (net, architecture). Keeping everything gives a net with the same outputs.
    """
    from edgeshrink.models.cnn import build_cnn

    keep_hidden = keep_hidden if keep_hidden is not None else [list(range(w)) for w in config.hidden]
    keep_channels = [sorted(int(c) for c in k) for k in keep_channels]
    keep_hidden = [sorted(int(n) for n in k) for k in keep_hidden]
    if len(keep_channels) != len(config.channels) or len(keep_hidden) != len(config.hidden):
        raise EdgeshrinkError("one list of kept channels per convolution and one per hidden dense layer")
    new_config = config.model_copy(update={"channels": [len(k) for k in keep_channels],
                                           "hidden": [len(k) for k in keep_hidden]})
    old = net.state_dict()
    state = {}
    inputs = list(range(config.input_shape[0]))
    for i, kept in enumerate(keep_channels):
        weight = old[f"conv{i}.weight"]
        state[f"conv{i}.weight"] = weight[kept][:, inputs]
        state[f"conv{i}.bias"] = old[f"conv{i}.bias"][kept]
        inputs = kept
    # Flatten is channel-major: channel c owns features c*area ... (c+1)*area - 1 of the first dense layer.
    area = config.flat_features // config.channels[-1]
    features = [c * area + s for c in inputs for s in range(area)]
    for j, kept in enumerate(keep_hidden):
        state[f"fc{j}.weight"] = old[f"fc{j}.weight"][kept][:, features]
        state[f"fc{j}.bias"] = old[f"fc{j}.bias"][kept]
        features = kept
    state["classifier.weight"] = old["classifier.weight"][:, features]
    state["classifier.bias"] = old["classifier.bias"]
    smaller = build_cnn(new_config)
    smaller.load_state_dict({k: v.clone() for k, v in state.items()})
    return smaller.eval(), new_config


def prune_channels(teacher: str | Path, data: DataConfig | str, out: str | Path,
                   config: ChannelPruneConfig | None = None, force: bool = False) -> dict:
    """Cut the least important channels (and neurons) out of a trained CNN; return the new CNN's record."""
    import random

    import numpy as np
    import torch

    from edgeshrink import __version__, tasks
    from edgeshrink._files import atomic_output_dir, check_output_dir, sha256_file
    from edgeshrink.models.cnn import (MODEL_TYPE, WEIGHTS_NAME, CNNConfig, accuracy, load_cnn,
                                       require_images, save_cnn, train_cnn)
    from edgeshrink.models.finetune import FinetuneConfig

    config = tasks.of_model(teacher).implementation("prune-channels").check_config(config)
    check_output_dir(out, force)
    net, teacher_record = load_cnn(teacher)
    architecture = CNNConfig.from_dict(teacher_record["architecture"])
    keep_counts = [_kept(c, config.channels_keep) for c in architecture.channels]
    hidden_counts = [_kept(w, config.hidden_keep) for w in architecture.hidden]
    if keep_counts == architecture.channels and hidden_counts == architecture.hidden:
        raise EdgeshrinkError("this CNN is not smaller than its teacher: lower channels_keep or hidden_keep")
    examples = require_images(load_data(data), architecture.input_shape, f"CNN {teacher}")
    if list(examples.label_names) != teacher_record["labels"]:
        raise EdgeshrinkError(f"{teacher} predicts labels {teacher_record['labels']}; data {examples.name!r} has "
                              f"{list(examples.label_names)}")
    split = split_examples(examples, config.split)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()

    sample = split.train.head(config.importance_examples)
    index = {name: i for i, name in enumerate(examples.label_names)}
    conv_scores, hidden_scores = channel_importance(
        net, architecture, torch.from_numpy(sample.inputs), torch.tensor([index[y] for y in sample.labels]),
        config.batch_size)
    keep_channels = [torch.argsort(s, descending=True)[:n].tolist() for s, n in zip(conv_scores, keep_counts)]
    keep_hidden = [torch.argsort(s, descending=True)[:n].tolist() for s, n in zip(hidden_scores, hidden_counts)]
    pruned, new_architecture = remove_channels(net, architecture, keep_channels, keep_hidden)
    before = accuracy(pruned, split.test)["accuracy"]
    history = []
    if config.recover_epochs > 0:
        settings = {**teacher_record.get("finetune", {}), "epochs": config.recover_epochs, "seed": config.seed,
                    "split": config.split.to_dict(), "threads": config.threads, "max_train_examples": None}
        if config.learning_rate is not None:
            settings["learning_rate"] = config.learning_rate
        history = train_cnn(pruned, split.train, split.calibration, FinetuneConfig.from_dict(settings))
        pruned.to("cpu").eval()
    parameters = int(sum(p.numel() for p in pruned.parameters()))
    record = {
        "kind": "edgeshrink-model", "edgeshrink_version": __version__, "task": "tensor-classification",
        "model_type": MODEL_TYPE, "architecture": new_architecture.to_dict(), "labels": teacher_record["labels"],
        "parameters": parameters,
        "source": {"model": str(teacher), "path": str(Path(teacher).resolve()),
                   "weights_sha256": sha256_file(Path(teacher) / WEIGHTS_NAME)},
        "data": split.data_record(), "finetune": teacher_record.get("finetune"),
        "prune_channels": {**config.to_dict(), "kept_channels": keep_channels, "kept_hidden": keep_hidden,
                           "parameters": parameters, "teacher_parameters": teacher_record.get("parameters"),
                           "test_accuracy_before_recovery": before,
                           "seconds": round(time.perf_counter() - started, 1)},
        "history": history, "test": accuracy(pruned, split.test),
    }
    with atomic_output_dir(out, force) as tmp:
        save_cnn(pruned, record, tmp)
    return record

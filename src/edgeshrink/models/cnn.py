"""A small image classifier in plain PyTorch (no Hugging Face): the non-text path of edgeshrink.

    from edgeshrink.models.cnn import CNNConfig, build_cnn, load_cnn
    net = build_cnn(CNNConfig(channels=[8, 16], hidden=[32]))
    net, record = load_cnn("runs/cnn")            # a CNN directory `finetune` wrote (models/finetune/cnn.py)

The architecture is data (``CNNConfig``): 3x3 convolutions with ReLU, one max-pool, dense layers with
ReLU, a classifier. Named architectures live in ``ARCHITECTURES``. A trained CNN is a directory with
``model.safetensors`` and ``edgeshrink.json`` (architecture, labels, split hash, test accuracy), the
same record file the text models carry, so the runner, export and bench read both alike. Channel
pruning (compress/channels.py) rewrites the architecture, so a pruned CNN is just a smaller CNN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.sources import RECORD_NAME, read_record

WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "cnn"


class CNNConfig(Config):
    version: int = 1
    input_shape: tuple[int, int, int] = (1, 8, 8)  # channels, height, width
    channels: list[int] = [32, 64]  # output channels of each 3x3 convolution (padding 1, ReLU after)
    pool: int = Field(2, ge=1)  # one max-pool of this size after the last convolution (1: none)
    hidden: list[int] = [128]  # dense layers (ReLU after) between the convolutions and the classifier
    num_classes: int = Field(10, ge=2)

    @field_validator("channels", "hidden")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError("must be positive integers")
        return values

    def model_post_init(self, _context) -> None:
        if not self.channels:
            raise ValueError("a CNN needs at least one convolution")
        _, height, width = self.input_shape
        if height % self.pool or width % self.pool:
            raise ValueError(f"pool {self.pool} must divide the input's height and width ({height}x{width})")

    @property
    def flat_features(self) -> int:
        """Inputs of the first dense layer: last channels x pooled height x pooled width."""
        _, height, width = self.input_shape
        return self.channels[-1] * (height // self.pool) * (width // self.pool)


ARCHITECTURES: dict[str, CNNConfig] = {
    "digits-cnn": CNNConfig(input_shape=(1, 8, 8), channels=[32, 64], pool=2, hidden=[128], num_classes=10),
}


def build_cnn(config: CNNConfig):
    """An ``nn.Sequential`` with named layers conv0, relu0, ..., pool, flatten, fc0, relu_fc0, ..., classifier."""
    from collections import OrderedDict

    import torch

    layers: OrderedDict = OrderedDict()
    previous = config.input_shape[0]
    for i, channels in enumerate(config.channels):
        layers[f"conv{i}"] = torch.nn.Conv2d(previous, channels, kernel_size=3, padding=1)
        layers[f"relu{i}"] = torch.nn.ReLU()
        previous = channels
    if config.pool > 1:
        layers["pool"] = torch.nn.MaxPool2d(config.pool)
    layers["flatten"] = torch.nn.Flatten()
    features = config.flat_features
    for j, width in enumerate(config.hidden):
        layers[f"fc{j}"] = torch.nn.Linear(features, width)
        layers[f"relu_fc{j}"] = torch.nn.ReLU()
        features = width
    layers["classifier"] = torch.nn.Linear(features, config.num_classes)
    return torch.nn.Sequential(layers)


def read_cnn_record(spec: str | Path) -> dict | None:
    """The record of a trained CNN directory, or None when ``spec`` is not one."""
    path = Path(str(spec)).expanduser()
    record = read_record(path) if path.is_dir() else {}
    return record if record.get("model_type") == MODEL_TYPE else None


def load_cnn(path: str | Path):
    """(module in eval mode, record) of a trained CNN directory."""
    from safetensors.torch import load_file

    record = read_cnn_record(path)
    if record is None:
        if str(path) in ARCHITECTURES:
            raise EdgeshrinkError(f"{path!r} is an untrained architecture: train it first with `finetune`")
        raise EdgeshrinkError(f"{path} is not a CNN directory written by edgeshrink (no CNN edgeshrink.json)")
    net = build_cnn(CNNConfig.from_dict(record["architecture"]))
    try:
        net.load_state_dict(load_file(str(Path(path) / WEIGHTS_NAME)))
    except (OSError, RuntimeError) as exc:
        raise EdgeshrinkError(f"cannot load the CNN weights in {path}: {str(exc).splitlines()[0][:200]}") from None
    return net.eval(), record


def save_cnn(net, record: dict, out: Path) -> None:
    """Write weights and record into ``out`` (an existing directory; callers make it atomic)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(out / WEIGHTS_NAME))
    (out / RECORD_NAME).write_text(json.dumps(record, indent=2))


def init_cnn(architecture: CNNConfig, labels: list[str], out: str | Path, seed: int = 0, force: bool = False) -> Path:
    """Write an untrained CNN directory of any architecture (randomly initialised); ``finetune`` trains it.

        init_cnn(CNNConfig(channels=[8, 16], hidden=[32]), [str(d) for d in range(10)], "runs/my-cnn")
    """
    import torch

    from edgeshrink._files import atomic_output_dir

    if len(labels) != architecture.num_classes:
        raise EdgeshrinkError(f"{len(labels)} labels for an architecture with {architecture.num_classes} classes")
    torch.manual_seed(seed)
    net = build_cnn(architecture)
    record = {"kind": "edgeshrink-model", "task": "tensor-classification", "model_type": MODEL_TYPE,
              "architecture": architecture.to_dict(), "labels": list(labels),
              "parameters": int(sum(p.numel() for p in net.parameters())), "source": {"model": "init", "seed": seed}}
    with atomic_output_dir(out, force) as tmp:
        save_cnn(net, record, tmp)
    return Path(out)


def require_images(examples, input_shape, where: str):
    """The examples, checked to be images of the shape the CNN takes."""
    from edgeshrink.data.images import ImageExamples

    if not isinstance(examples, ImageExamples):
        raise EdgeshrinkError(f"{where} takes images; data {examples.name!r} is text (try data: digits)")
    if tuple(examples.inputs.shape[1:]) != tuple(input_shape):
        raise EdgeshrinkError(f"{where} takes images of shape {tuple(input_shape)}; data {examples.name!r} has "
                              f"{tuple(examples.inputs.shape[1:])}")
    return examples


def predict_proba(net, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    import torch

    device = next(net.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch_size])).to(device)
            out.append(torch.softmax(net(batch).float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.classifier.out_features), np.float32)


def accuracy(net, examples) -> dict:
    """Test-style accuracy record: value, correct, n and the 95% interval."""
    from edgeshrink.stats import accuracy_interval

    index = {name: i for i, name in enumerate(examples.label_names)}
    predicted = predict_proba(net, examples.inputs).argmax(1)
    correct = int(sum(int(p) == index[y] for p, y in zip(predicted, examples.labels)))
    low, high = accuracy_interval(correct, len(examples))
    return {"accuracy": correct / len(examples), "correct": correct, "n": len(examples), "ci95": [low, high]}


def train_cnn(net, train, calibration, config) -> list[dict]:
    """Train ``net`` in place with cross-entropy and AdamW, linear warm-up then linear decay (the text
    path's schedule); calibration accuracy after every epoch. ``config`` is a FinetuneConfig."""
    import torch

    device = config.device
    net.to(device)
    index = {name: i for i, name in enumerate(train.label_names)}
    inputs = torch.from_numpy(train.inputs).to(device)
    targets = torch.tensor([index[y] for y in train.labels], device=device)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = max(1, round(steps_per_epoch * config.epochs))
    warmup = round(config.warmup_fraction * total_steps)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / (total_steps - warmup)))
    generator = torch.Generator().manual_seed(config.seed)
    history, step, epoch = [], 0, 0
    while step < total_steps:
        net.train()
        losses = []
        for rows in torch.randperm(len(train), generator=generator).split(config.batch_size):
            if step >= total_steps:
                break
            rows = rows.to(device)
            loss = torch.nn.functional.cross_entropy(net(inputs[rows]), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
        epoch += 1
        net.eval()
        history.append({"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)),
                        "calibration_accuracy": accuracy(net, calibration)["accuracy"] if len(calibration) else None})
    return history

"""Fine-tuning: the ``finetune`` verb, its shared pieces, and one module per kind of model it trains.

    from edgeshrink.models.finetune import finetune, FinetuneConfig
    from edgeshrink.models.finetune.decoder import LLMFinetuneConfig
    finetune("minilm", "runs/cloud", FinetuneConfig(epochs=2), data="sentiment-movies")
    finetune("digits-cnn", "runs/cnn", FinetuneConfig(epochs=15, learning_rate=2e-3), data="digits")
    finetune("smollm2", "runs/smollm2-sentiment", LLMFinetuneConfig(epochs=1), data="sentiment-movies")

The task registry (edgeshrink/tasks.py) says which module trains the model given: ``encoder.py`` (a text
encoder gets a classification head), ``cnn.py`` (a small CNN on images, models/cnn.py) or ``decoder.py``
(a decoder LLM learns to answer the data's prompted task). Each trains on the train split of the one
shared split, scores the test split and writes the model with its record (``edgeshrink.json``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeshrink import __version__
from edgeshrink.config import Config
from edgeshrink.data import DataConfig, SplitConfig
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.sources import RECORD_NAME
from edgeshrink.stats import accuracy_interval


class TrainSchedule(Config):
    """What every fine-tuning config holds: the optimiser's schedule, seed, threads, device and split."""

    version: int = 1
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


class FinetuneConfig(TrainSchedule):
    """Training a classifier: a text encoder's head (and the encoder) or a CNN (``max_length`` is for text)."""

    max_length: int = Field(128, ge=8, le=4096)


def finetune(model: str | Path, out: str | Path, config=None, *, data: DataConfig | str, force: bool = False,
             progress=None) -> dict:
    """Train ``model`` on the train split of ``data``, score the test split, write it to ``out``; its record.

    ``config`` is the config class of the model's task (None: its defaults); another task's is refused."""
    from edgeshrink import tasks

    impl = tasks.of_model(model).implementation("finetune")
    return impl.function()(model, out, impl.check_config(config), data=data, force=force, progress=progress)


def seed_training(config) -> None:
    """Seed Python, numpy and torch, set torch's threads, and refuse a CUDA device torch cannot see."""
    import torch

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise EdgeshrinkError("device 'cuda' asked for, but torch sees no CUDA GPU")


def scored(correct: int, n: int) -> dict:
    """The record's ``test`` entry: accuracy, correct, n and the 95% interval."""
    low, high = accuracy_interval(correct, n)
    return {"accuracy": correct / n, "correct": correct, "n": n, "ci95": [low, high]}


def model_record(task: str, split, train, config, history: list, train_seconds: float, test: dict, **fields) -> dict:
    """A trained model's record (``edgeshrink.json``): its task, ``fields``, then its data, training and test score."""
    return {"kind": "edgeshrink-model", "edgeshrink_version": __version__, "task": task, **fields,
            "data": split.data_record(), "finetune": config.to_dict(), "history": history,
            "train_seconds": round(train_seconds, 1), "train_examples": len(train), "test": test}


def hf_writer(net, tokenizer, record: dict):
    """A function writing a Hugging Face model, its tokenizer and its record into a directory."""
    def write(directory: Path) -> None:
        net.to("cpu").save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        (directory / RECORD_NAME).write_text(json.dumps(record, indent=2))

    return write

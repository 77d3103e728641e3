"""PyTorch helpers for Hugging Face text classifiers: load, tokenize in length buckets, predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeshrink.errors import EdgeshrinkError


def load_classifier(model_dir: Path, num_labels: int | None = None, label_names=None):
    """Load (model, tokenizer) from a local directory; with ``label_names`` a fresh head is made."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()
    kwargs = {}
    if label_names is not None:
        kwargs = dict(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                      label2id={n: i for i, n in enumerate(label_names)}, ignore_mismatched_sizes=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeshrinkError(f"cannot load a text classifier from {model_dir}: {first}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise EdgeshrinkError(f"{model_dir} has no fast tokenizer (tokenizer.json); the device runtime needs one")
    model.eval()
    return model, tokenizer


def shuffled_length_batches(lengths: list[int], batch_size: int, rng) -> list[list[int]]:
    """Training batches of similar length (less padding), in random order: shuffle, sort inside chunks of
    50 batches, cut, shuffle the batches. ``rng`` is a ``random.Random``."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of similar length (less padding), in length order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def predict_proba(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
                  progress=None) -> np.ndarray:
    """Class probabilities for ``texts`` (padding per batch, batches sorted by length)."""
    import torch

    enc = tokenizer(texts, truncation=True, max_length=max_length)
    lengths = [len(ids) for ids in enc["input_ids"]]
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for rows in length_sorted_batches(lengths, batch_size):
            batch = tokenizer.pad({k: [enc[k][i] for i in rows] for k in enc.keys()}, return_tensors="pt")
            logits = model(**batch.to(model.device)).logits
            out[rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            if progress is not None:
                progress(len(rows))
    return out


class TorchPredictor:
    """A PyTorch classifier directory with the device runtime's ``predict(texts) -> Predictions`` interface."""

    def __init__(self, model_dir: Path, max_length: int | None = None):
        from edgeshrink.models.sources import read_record

        self.path = Path(model_dir)
        self.model, self.tokenizer = load_classifier(self.path)
        self.labels = list(self.model.config.id2label.values())
        self.max_length = max_length or read_record(self.path).get("max_length", 128)

    def predict(self, texts, batch_size: int = 64):
        from edgeshrink.runtime import Predictions

        texts = [str(t) for t in texts]
        probs = predict_proba(self.model, self.tokenizer, texts, self.max_length, batch_size)
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]] if texts else []
        return Predictions([self.labels[i] for i in probs.argmax(1)], probs, [n > self.max_length for n in lengths])


def load_predictor(spec: str | Path, threads: int | None = None):
    """A device bundle (onnxruntime) or a PyTorch model directory, both with ``predict(texts)``."""
    from edgeshrink.models.sources import resolve_model
    from edgeshrink.runtime import load
    from edgeshrink.runtime.bundle import MANIFEST_NAME

    if (Path(spec) / MANIFEST_NAME).exists():
        return load(spec, threads=threads)
    return TorchPredictor(resolve_model(spec))

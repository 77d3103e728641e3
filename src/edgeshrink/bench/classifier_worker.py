"""A classifier candidate in its worker process (harness.py): a device bundle through the runtime, or a
Hugging Face directory in PyTorch eager mode (the baseline a user starts from). Both answer the same
commands for the classifier bench (classifier.py):

    ("time", threads, batch, seq_len, repeats) -> [seconds per run] on synthetic inputs of exactly that shape
    ("predict", threads, inputs)               -> class probabilities for texts (text) or an array (tensors)
"""

from __future__ import annotations

import json
from pathlib import Path
from time import perf_counter

import numpy as np


class Classifier:
    """The commands; a subclass gives set_threads, feeds, run and probabilities."""

    commands = ("time", "predict")

    def time(self, threads: int, batch: int, seq_len: int, repeats: int) -> list[float]:
        self.set_threads(threads)
        feeds = self.feeds(batch, seq_len)
        times = []
        for _ in range(repeats):
            start = perf_counter()
            self.run(feeds)
            times.append(perf_counter() - start)
        return times

    def predict(self, threads: int, inputs) -> np.ndarray:
        self.set_threads(threads)
        return self.probabilities(inputs)


class BundleCandidate(Classifier):
    kind = "onnx-bundle"

    def __init__(self, path: Path):
        from edgeshrink.runtime import load
        from edgeshrink.runtime.tasks import runtime_task

        self.path = path
        self.threads = None
        self.predictor = load(path)  # verifies hashes once
        self.manifest = self.predictor.manifest
        self.tokenized = runtime_task(self.manifest["task"]).tokenized
        self.vocab_size = _vocab_size(path, self.manifest) if self.tokenized else None
        self.input_names = [i["name"] for i in self.manifest["inputs"]]

    def set_threads(self, threads: int) -> None:
        from edgeshrink.runtime import load

        if threads != self.threads:
            self.predictor = load(self.path, threads=threads, verify=False)
            self.threads = threads

    def info(self) -> dict:
        m = self.manifest
        return {"kind": self.kind, "labels": m["labels"], "max_length": m.get("max_length"),
                "size_bytes": m["size_bytes"], "flops_per_example": m.get("flops_per_example") or {},
                "parameters": (m.get("source") or {}).get("parameters"),
                "precision": (m.get("quantization") or {}).get("method", "fp32")}

    def feeds(self, batch: int, seq_len: int) -> dict:
        if self.tokenized:
            return text_feeds(batch, seq_len, self.vocab_size, self.input_names)
        return tensor_feeds(batch, self.manifest["inputs"])

    def run(self, feeds: dict) -> None:
        self.predictor.run(feeds)

    def probabilities(self, inputs) -> np.ndarray:
        return self.predictor.predict(inputs).probabilities


class TorchCandidate(Classifier):
    """A Hugging Face text classifier directory run in PyTorch eager mode."""

    kind = "pytorch-eager"

    def __init__(self, path: Path):
        import torch

        from edgeshrink.models import arch
        from edgeshrink.models.sources import read_record
        from edgeshrink.models.torch_text import load_classifier

        self.torch = torch
        self.path = path
        self.model, self.tokenizer = load_classifier(path)
        self.max_length = min(read_record(path).get("max_length", 128),
                              arch.family_of(self.model.config).max_length(self.model.config))
        self.vocab_size = self.model.config.vocab_size
        self.input_names = list(self.tokenizer.model_input_names)

    def set_threads(self, threads: int) -> None:
        self.torch.set_num_threads(threads)

    def info(self) -> dict:
        from edgeshrink._files import dir_size_bytes
        from edgeshrink.bench.flops import text_flops_table
        from edgeshrink.models.sources import model_labels

        weights = (self.path / name for name in ("model.safetensors", "pytorch_model.bin"))
        return {"kind": self.kind, "labels": list(model_labels(self.path)), "max_length": self.max_length,
                "size_bytes": next((w.stat().st_size for w in weights if w.exists()), 0) or dir_size_bytes(self.path),
                "flops_per_example": text_flops_table(self.model, self.max_length),
                "parameters": int(sum(p.numel() for p in self.model.parameters())), "precision": "fp32"}

    def feeds(self, batch: int, seq_len: int) -> dict:
        arrays = text_feeds(batch, seq_len, self.vocab_size, self.input_names)
        return {k: self.torch.from_numpy(v) for k, v in arrays.items()}

    def run(self, feeds: dict) -> None:
        with self.torch.inference_mode():
            self.model(**feeds)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        from edgeshrink.models.torch_text import predict_proba

        return predict_proba(self.model, self.tokenizer, texts, self.max_length, batch_size=32)


def _vocab_size(path: Path, manifest: dict) -> int:
    from edgeshrink.runtime.bundle import read_bundle_text

    tok = json.loads(read_bundle_text(path, manifest, manifest["tokenizer"]["file"], verify=False))
    return len(tok["model"]["vocab"])


def text_feeds(batch: int, seq_len: int, vocab_size: int, input_names: list[str], seed: int = 0,
               cls_id: int = 101, sep_id: int = 102) -> dict[str, np.ndarray]:
    """Full-length rows (no padding): every request costs exactly ``seq_len`` tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, vocab_size // 2), vocab_size, size=(batch, seq_len), dtype=np.int64)
    ids[:, 0] = cls_id % vocab_size
    ids[:, -1] = sep_id % vocab_size
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {name: feeds[name] for name in input_names}


def tensor_feeds(batch: int, inputs: list[dict], seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors for a tensor bundle's inputs (dims other than batch must be fixed)."""
    rng = np.random.default_rng(seed)
    return {spec["name"]: rng.standard_normal([batch] + [int(d) for d in spec["shape"][1:]]).astype(spec["dtype"])
            for spec in inputs}


def open_candidate(path: str):
    """The worker's opener: a bundle (it has a manifest), else a PyTorch directory."""
    path = Path(path)
    if (path / "manifest.json").exists():
        return BundleCandidate(path)
    return TorchCandidate(path)

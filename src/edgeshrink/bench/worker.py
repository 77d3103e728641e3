"""One benchmark candidate, in its own process, driven by `bench` over a pipe.

A process per candidate keeps the device path honest (a bundle's process never imports torch, and
the result records that), keeps memory figures per candidate, and lets `bench` interleave
candidates round-robin so machine noise hits all alike.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from edgeshrink.bench.inputs import tensor_feeds, text_feeds


class BundleCandidate:
    kind = "onnx-bundle"

    def __init__(self, path: Path):
        from edgeshrink.runtime import load

        self.path = path
        self.threads = None
        self.predictor = load(path)  # verifies hashes once
        self.manifest = self.predictor.manifest
        self.input_specs = self.manifest["inputs"]

    def set_threads(self, threads: int) -> None:
        from edgeshrink.runtime import load

        if threads != self.threads:
            self.predictor = load(self.path, threads=threads, verify=False)
            self.threads = threads

    def info(self) -> dict:
        m = self.manifest
        return {"kind": self.kind, "labels": m["labels"], "task": m["task"], "max_length": m.get("max_length"),
                "size_bytes": m["size_bytes"], "flops_per_example": m.get("flops_per_example") or {},
                "parameters": (m.get("source") or {}).get("parameters"),
                "precision": (m.get("quantization") or {}).get("method", "fp32"),
                "vocab_size": _vocab_size(self.path, m), "input_names": [i["name"] for i in m["inputs"]]}

    def feeds(self, batch: int, seq_len: int) -> dict:
        if self.manifest["task"] == "text-classification":
            return text_feeds(batch, seq_len, self.info_cache["vocab_size"], self.info_cache["input_names"])
        return tensor_feeds(batch, self.input_specs)

    def run(self, feeds: dict) -> None:
        self.predictor.run(feeds)

    def predict(self, inputs) -> np.ndarray:
        """Probabilities for a list of texts (text bundles) or an array of inputs (tensor bundles)."""
        return self.predictor.predict(inputs).probabilities


class TorchCandidate:
    """A Hugging Face model directory run in PyTorch eager mode: the baseline a user starts from."""

    kind = "pytorch-eager"

    def __init__(self, path: Path):
        import torch

        from edgeshrink.models.sources import read_record
        from edgeshrink.models.torch_text import load_classifier

        self.torch = torch
        self.path = path
        from edgeshrink.models import arch

        self.model, self.tokenizer = load_classifier(path)
        self.max_length = min(read_record(path).get("max_length", 128),
                              arch.family_of(self.model.config).max_length(self.model.config))

    def set_threads(self, threads: int) -> None:
        self.torch.set_num_threads(threads)

    def info(self) -> dict:
        from edgeshrink._files import dir_size_bytes
        from edgeshrink.bench.flops import text_flops_table
        from edgeshrink.models.sources import model_labels

        return {"kind": self.kind, "labels": list(model_labels(self.path)), "task": "text-classification",
                "max_length": self.max_length, "size_bytes": _weights_bytes(self.path) or dir_size_bytes(self.path),
                "flops_per_example": text_flops_table(self.model, self.max_length),
                "parameters": int(sum(p.numel() for p in self.model.parameters())), "precision": "fp32",
                "vocab_size": self.model.config.vocab_size,
                "input_names": list(self.tokenizer.model_input_names)}

    def feeds(self, batch: int, seq_len: int) -> dict:
        arrays = text_feeds(batch, seq_len, self.info_cache["vocab_size"], self.info_cache["input_names"])
        return {k: self.torch.from_numpy(v) for k, v in arrays.items()}

    def run(self, feeds: dict) -> None:
        with self.torch.inference_mode():
            self.model(**feeds)

    def predict(self, texts: list[str]) -> np.ndarray:
        from edgeshrink.models.torch_text import predict_proba

        return predict_proba(self.model, self.tokenizer, texts, self.max_length, batch_size=32)


def _weights_bytes(path: Path) -> int | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return (path / name).stat().st_size
    return None


def _vocab_size(path: Path, manifest: dict) -> int | None:
    if manifest["task"] != "text-classification":
        return None
    from edgeshrink.runtime.bundle import read_bundle_text

    tok = json.loads(read_bundle_text(path, manifest, manifest["tokenizer"]["file"], verify=False))
    return len(tok["model"]["vocab"])


def open_candidate(path: str | Path):
    path = Path(path)
    if (path / "manifest.json").exists():
        return BundleCandidate(path)
    return TorchCandidate(path)


def peak_rss_bytes() -> int:
    """This process's peak resident memory. On Linux /proc's VmHWM: ru_maxrss would also count the parent's
    memory at the fork that started this worker (spawn forks, then execs, and maxrss survives the exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB (macOS: bytes)


def serve(conn, path: str) -> None:
    """Process entry point: answer (command, args) messages until "stop"."""
    try:
        candidate = open_candidate(path)
        candidate.info_cache = candidate.info()
        conn.send(("ok", candidate.info_cache))
    except Exception as exc:  # reported to the parent, which turns it into one line
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    while True:
        command, args = conn.recv()
        try:
            if command == "stop":
                conn.send(("ok", {"torch_imported": "torch" in sys.modules, "peak_rss_bytes": peak_rss_bytes()}))
                return
            if command == "time":
                threads, batch, seq_len, repeats = args
                candidate.set_threads(threads)
                feeds = candidate.feeds(batch, seq_len)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    candidate.run(feeds)
                    times.append(time.perf_counter() - start)
                conn.send(("ok", times))
            elif command == "predict":
                threads, texts = args
                candidate.set_threads(threads)
                conn.send(("ok", candidate.predict(texts)))
            elif command == "peak_rss":
                conn.send(("ok", peak_rss_bytes()))
            else:
                conn.send(("error", f"unknown command {command}", ""))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))

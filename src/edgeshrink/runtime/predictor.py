"""Run a bundle's model: tokenize (for text), feed ONNX Runtime, softmax, map to label names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeshrink.errors import EdgeshrinkError, first_line
from edgeshrink.runtime.bundle import bundle_file, check_bundle_trust, open_session, read_manifest
from edgeshrink.runtime.tasks import runtime_task

CHECK_TEXTS = ["a gorgeous, witty film", "meh", "The plot wanders, but the two leads carry it: funny, warm and "
               "far better than the trailer suggested."]
_NP_TYPES = {"int64": np.int64, "int32": np.int32, "float32": np.float32, "float16": np.float16}


@dataclass
class Predictions:
    labels: list[str]
    probabilities: np.ndarray  # (n, num_labels), rows sum to 1
    truncated: list[bool]  # input was cut at the bundle's max_length (text bundles)
    logits: np.ndarray | None = None  # (n, num_labels), the model's raw output, where the model gives it
    unknown: list[bool] | None = None  # per text: a token outside the vocabulary (None: no unknown token)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Predictor:
    """A loaded bundle. ``threads`` sets ONNX Runtime's intra-op threads (None: its default)."""

    def __init__(self, bundle: str | Path, threads: int | None = None, verify: bool = True, trust=None):
        self.path = Path(bundle)
        self.manifest = read_manifest(self.path, verify=verify, trust=trust)
        self.labels: list[str] = list(self.manifest["labels"])
        self.task: str = self.manifest["task"]
        self.session = open_session(self.path / "model.onnx", threads)
        self.input_types = {i.name: _NP_TYPES.get(i.type[len("tensor("):-1], np.float32)
                            for i in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name
        self.tokenizer = None
        if runtime_task(self.task).tokenized:
            tok_meta = self.manifest["tokenizer"]
            self.max_length = int(self.manifest["max_length"])
            self.tokenizer = load_tokenizer(bundle_file(self.path, self.manifest, tok_meta["file"]))
            self.pad_id = int(tok_meta["pad_id"])
            if self.pad_id >= self.tokenizer.get_vocab_size():
                raise EdgeshrinkError(f"{self.path}: the manifest's pad_id {self.pad_id} is outside the tokenizer's "
                                      f"vocabulary of {self.tokenizer.get_vocab_size()}")
            self.unknown_id = unknown_token_id(self.tokenizer)
            unknown_inputs = sorted(set(self.input_types) - {"input_ids", "attention_mask", "token_type_ids"})
            if unknown_inputs:
                raise EdgeshrinkError(f"{self.path}: model.onnx takes input {unknown_inputs[0]!r}; a text bundle's "
                                      f"model takes input_ids, attention_mask and token_type_ids")
        width = self.session.get_outputs()[0].shape[-1] if self.session.get_outputs()[0].shape else None
        if isinstance(width, int) and width != len(self.labels):
            raise EdgeshrinkError(f"{self.path}: model.onnx gives {width} scores but the manifest names "
                                  f"{len(self.labels)} labels")

    # -- text ---------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> tuple[dict[str, np.ndarray], list[bool]]:
        """Tokenize ``texts`` into padded model inputs (truncated at max_length)."""
        feeds, truncated, _ = self._encode(texts)
        return feeds, truncated

    def _encode(self, texts: list[str]) -> tuple[dict[str, np.ndarray], list[bool], list[bool] | None]:
        if self.tokenizer is None:
            raise EdgeshrinkError(f"bundle {self.path} takes tensors, not text")
        encodings = self.tokenizer.encode_batch([str(t) for t in texts])
        truncated = [len(e.ids) > self.max_length for e in encodings]
        unknown = None if self.unknown_id is None else [self.unknown_id in e.ids for e in encodings]
        if any(truncated):
            self.tokenizer.enable_truncation(self.max_length)
            encodings = self.tokenizer.encode_batch([str(t) for t in texts])
            self.tokenizer.no_truncation()
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feeds[name].astype(dtype) for name, dtype in self.input_types.items()}, truncated, unknown

    def check_feeds(self) -> dict[str, np.ndarray]:
        """Inputs to check an equivalent model against this one (`edgeshrink pack --target mobile`): a few texts of
        different lengths through the tokenizer, or a seeded random batch of the declared tensor shape."""
        if self.tokenizer is not None:
            return self.encode(CHECK_TEXTS)[0]
        name = next(iter(self.input_types))
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in self.session.get_inputs()[0].shape]
        return {name: np.random.default_rng(0).standard_normal(shape).astype(self.input_types[name])}

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Logits for ready-made model inputs."""
        try:
            logits = self.session.run([self.output_name], feeds)[0]
        except Exception as exc:  # onnxruntime's own error types: a model that does not fit its manifest
            raise EdgeshrinkError(f"{self.path}: model.onnx failed to run: {first_line(exc)}") from None
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise EdgeshrinkError(f"{self.path}: model.onnx gives scores of shape {list(logits.shape)}, not "
                                  f"(batch, {len(self.labels)} labels)")
        return logits

    def predict(self, inputs, batch_size: int = 32) -> Predictions:
        """Predict labels for a list of texts (text bundles) or an array batch (tensor bundles)."""
        if self.tokenizer is None:
            array = np.asarray(inputs)
            name = next(iter(self.input_types))
            logits = np.zeros((len(array), len(self.labels)), dtype=np.float32)
            for start in range(0, len(array), batch_size):
                batch = array[start:start + batch_size].astype(self.input_types[name])
                logits[start:start + len(batch)] = self.run({name: batch})
            probs = softmax(logits) if len(array) else logits
            return Predictions([self.labels[i] for i in probs.argmax(1)], probs, [False] * len(array), logits)
        texts = list(inputs)
        if not texts:
            empty = np.zeros((0, len(self.labels)), np.float32)
            return Predictions([], empty, [], empty)
        logits = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        truncated = [False] * len(texts)
        unknown = None if self.unknown_id is None else [False] * len(texts)
        # Similar lengths per batch: less padding, and the same results as one text at a time.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            feeds, cut, oov = self._encode([texts[i] for i in rows])
            logits[rows] = self.run(feeds)
            for j, i in enumerate(rows):
                truncated[i] = cut[j]
                if unknown is not None:
                    unknown[i] = oov[j]
        probs = softmax(logits)
        return Predictions([self.labels[i] for i in probs.argmax(1)], probs, truncated, logits, unknown)


def load_tokenizer(path):
    """A ``tokenizers`` tokenizer from a bundle's file, padding and truncation off, or a one-line error."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for anything it cannot parse
        raise EdgeshrinkError(f"{path} is not a tokenizer: {first_line(exc)}") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def unknown_token_id(tokenizer) -> int | None:
    """The id of the tokenizer's unknown token (WordPiece, BPE with one, Unigram), or None (byte-level BPE)."""
    import json

    model = json.loads(tokenizer.to_str()).get("model") or {}
    if model.get("unk_token") is not None:
        return tokenizer.token_to_id(model["unk_token"])
    return model.get("unk_id")


def load(bundle: str | Path, threads: int | None = None, verify: bool = True, trust=None):
    """Load a device bundle (checks every file's hash against the manifest unless ``verify=False``): a
    ``Predictor`` for classifier bundles, a ``Generator`` (runtime/generate.py) for language-model bundles.
    ``trust``: PEM public keys the bundle must be signed by (None: $EDGESHRINK_TRUST, if set), checked before any
    other file is opened."""
    if verify:
        check_bundle_trust(bundle, trust)
    task = runtime_task(read_manifest(bundle, verify=False)["task"])
    return task.runtime_class()(bundle, threads=threads, verify=verify, trust=[])

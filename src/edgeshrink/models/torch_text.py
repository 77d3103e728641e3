"""PyTorch helpers for Hugging Face text classifiers: load, tokenize in length buckets, predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeshrink.errors import EdgeshrinkError, first_line


def load_classifier(model_dir: Path, num_labels: int | None = None, label_names=None, attn_implementation=None):
    """Load (model, tokenizer) from a local directory; with ``label_names`` a fresh head is made.

    The family (models/arch.py) is checked first, so an unsupported model fails in one line, as does a
    config the family cannot run (``Family.check_config``: too few positions, no token type); the
    tokenizer produces exactly the inputs the family takes (no ``token_type_ids`` for DistilBERT);
    a corrupt weights file, a missing tokenizer or weights that do not fit the config each give one
    line naming the file. A model whose classification head was not in its weights (a base model)
    comes back with ``model.edgeshrink_untrained_head = True``.
    """
    import transformers
    from transformers import AutoModelForSequenceClassification

    from edgeshrink.models import arch
    from edgeshrink.models.sources import read_config

    transformers.logging.set_verbosity_error()
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    family = arch.family_of(config)
    if family.kind != "encoder":
        raise EdgeshrinkError(f"{model_dir} is a {family.label} decoder language model: text-classification verbs "
                              "(finetune, export, prune, distill, ...) take encoder models")
    kwargs = {}
    if label_names is not None:
        kwargs = dict(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                      label2id={n: i for i, n in enumerate(label_names)}, ignore_mismatched_sizes=True)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    tokenizer = _load_tokenizer(model_dir)
    weights = next((model_dir / n for n in WEIGHT_FILES if (model_dir / n).exists()), None)  # or a shard index
    if weights is None:
        raise EdgeshrinkError(f"{model_dir} has no weights ({', '.join(WEIGHT_FILES)})")
    try:
        if config.get(arch.KEPT_HEADS_KEY):
            model, missing = _load_pruned(model_dir, weights, family, kwargs)
        else:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), local_files_only=True, output_loading_info=True, **kwargs)
            missing = info["missing_keys"]
    except EdgeshrinkError:
        raise
    except Exception as exc:  # safetensors, torch and transformers raise many types; say which file and why
        raise EdgeshrinkError(_load_error(model_dir, weights, exc)) from None
    family.check_config(model.config)  # a position table too short, no token type: one line, not an IndexError later
    body = model.base_model_prefix + "."
    model.edgeshrink_untrained_head = label_names is None and any(not k.startswith(body) for k in missing)
    tokenizer.model_input_names = family.inputs(model.config)
    model.eval()
    return model, tokenizer


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model", "sentencepiece.bpe.model", "spiece.model")
    if not any((model_dir / n).exists() for n in names):
        raise EdgeshrinkError(f"{model_dir} has no tokenizer (none of {', '.join(names)}); copy the tokenizer files "
                              "the model was trained with into it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # tokenizers and sentencepiece raise many types
        raise EdgeshrinkError(f"cannot load the tokenizer in {model_dir}: {first_line(exc, 300)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise EdgeshrinkError(f"{model_dir} has no fast tokenizer (tokenizer.json); the device runtime needs one")
    return tokenizer


def _load_pruned(model_dir: Path, weights: Path, family, kwargs: dict):
    """A head-pruned model: build at full width from its config, cut to the kept heads, load the weights."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from edgeshrink.models import arch, surgery

    config_kwargs = {k: v for k, v in kwargs.items() if k in ("num_labels", "id2label", "label2id")}
    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True, **config_kwargs)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=kwargs.get("attn_implementation"))
    kept = {int(i): heads for i, heads in getattr(config, arch.KEPT_HEADS_KEY).items()}
    surgery.keep_heads(model, family, kept)
    if weights.name.endswith(".index.json"):
        raise EdgeshrinkError(f"{model_dir} is a head-pruned model saved in shards; save it as one file "
                              "(save_pretrained(..., max_shard_size='10GB'))")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    if kwargs.get("ignore_mismatched_sizes"):  # a new label set: like from_pretrained, keep what still fits
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        state = {k: v for k, v in state.items() if k not in shapes or shapes[k] == v.shape}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise EdgeshrinkError(f"weights in {weights} do not match its config.json: unexpected {unexpected[:3]}")
    body_missing = [k for k in missing if k.startswith(model.base_model_prefix + ".")]
    if body_missing:
        raise EdgeshrinkError(f"weights in {weights} do not match its config.json: missing {body_missing[:3]}")
    return model, list(missing)


def _load_error(model_dir: Path, weights: Path, exc: Exception) -> str:
    text = first_line(exc, 300)
    if type(exc).__name__ == "SafetensorError" or "deserializ" in text or "header" in text.lower():
        return f"weights file {weights} is corrupt or truncated ({text})"
    if "size mismatch" in str(exc):
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), text)
        return f"weights in {weights} do not match {model_dir / 'config.json'}: {detail[:300]}"
    return f"cannot load a text classifier from {model_dir}: {text}"


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


def predict_proba(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
                  progress=None, logits: bool = False) -> np.ndarray:
    """Class probabilities for ``texts`` (padding per batch, batches sorted by length); the raw logits with
    ``logits=True``."""
    import torch

    enc = tokenizer(texts, truncation=True, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for rows in (order[i:i + batch_size] for i in range(0, len(order), batch_size)):
            batch = tokenizer.pad({k: [enc[k][i] for i in rows] for k in enc.keys()}, return_tensors="pt")
            scores = model(**batch.to(model.device)).logits.float()
            out[rows] = (scores if logits else torch.softmax(scores, dim=-1)).cpu().numpy()
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
        from edgeshrink.runtime.predictor import softmax

        texts = [str(t) for t in texts]
        logits = predict_proba(self.model, self.tokenizer, texts, self.max_length, batch_size, logits=True)
        probs = softmax(logits) if texts else logits
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]] if texts else []
        return Predictions([self.labels[i] for i in probs.argmax(1)], probs, [n > self.max_length for n in lengths],
                           logits)


def load_predictor(spec: str | Path, threads: int | None = None):
    """A device bundle (onnxruntime) or a PyTorch model directory, both with ``predict(texts)``."""
    from edgeshrink.models.sources import resolve_model
    from edgeshrink.runtime import load
    from edgeshrink.runtime.bundle import MANIFEST_NAME

    if (Path(spec) / MANIFEST_NAME).exists():
        return load(spec, threads=threads)
    return TorchPredictor(resolve_model(spec))

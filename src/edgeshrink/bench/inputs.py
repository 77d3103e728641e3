"""Synthetic inputs of an exact shape for latency measurement (numpy only)."""

from __future__ import annotations

import numpy as np


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
    feeds = {}
    for spec in inputs:
        shape = [batch] + [int(d) for d in spec["shape"][1:]]
        feeds[spec["name"]] = rng.standard_normal(shape).astype(spec["dtype"])
    return feeds

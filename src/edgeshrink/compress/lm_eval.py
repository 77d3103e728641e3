"""Score language models on held-out text: perplexity, bits per byte, and top-1 agreement and KL to a reference.

    from edgeshrink.compress.lm_eval import text_windows, score_windows
    windows = text_windows(generator.tokenizer, load_lm_text("bbc-news", "test"), count=8, window_tokens=512)
    scores = score_windows({"fp32": fp32.logits, "int4": int4.logits}, windows, reference="fp32")
    scores["int4"]["perplexity"], scores["int4"]["bits_per_byte"], scores["int4"]["kl_to_reference"]

A window is ``window_tokens`` consecutive tokens of one document, scored teacher-forced from an empty
cache, with the tokenizer's special prefix (BOS) in front when it has one so that every token of the
window is predicted. Windows are spread over the documents (round-robin, then evenly spaced within a
document, the middle one first), so a long document (a play) is not scored only on its title page.
Bits per byte = total negative log-likelihood in bits ÷ UTF-8 bytes of the text the scored tokens cover:
unlike perplexity it compares models with different tokenizers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeshrink.errors import EdgeshrinkError


@dataclass(frozen=True)
class Window:
    document: str
    ids: list[int]  # what the model is fed: prefix + tokens
    scored_from: int  # ids[scored_from:] are predicted (from the position before each)
    n_bytes: int  # UTF-8 bytes of the text covered by the predicted tokens


def _spread(count: int, chunks_per_doc: list[int]) -> list[tuple[int, int]]:
    """(document, chunk) pairs: round-robin over documents, evenly spaced chunks within each."""
    taken = [0] * len(chunks_per_doc)
    while sum(taken) < count and any(t < n for t, n in zip(taken, chunks_per_doc)):
        for d, n in enumerate(chunks_per_doc):
            if taken[d] < n and sum(taken) < count:
                taken[d] += 1
    return [(d, int((i + 0.5) * n / k)) for d, (k, n) in enumerate(zip(taken, chunks_per_doc)) for i in range(k)]


def text_windows(tokenizer, text, count: int, window_tokens: int) -> list[Window]:
    """Up to ``count`` windows of ``window_tokens`` tokens from the documents of ``text`` (an ``LMText``)."""
    prefix = tokenizer.encode("", add_special_tokens=True).ids  # BOS, if the tokenizer adds one
    encodings = [tokenizer.encode(doc, add_special_tokens=False) for doc in text.texts]
    chunks = [math.ceil(len(e.ids) / window_tokens) if len(e.ids) + len(prefix) >= 2 else 0 for e in encodings]
    windows = []
    for d, c in _spread(count, chunks):
        enc, doc = encodings[d], text.texts[d]
        start, end = c * window_tokens, min((c + 1) * window_tokens, len(enc.ids))
        ids = prefix + enc.ids[start:end]
        if len(ids) < 2:
            continue
        # with a prefix every text token is predicted; without one the first token only conditions
        scored_from = len(prefix) if prefix else 1
        first_char = enc.offsets[start][0] if prefix else enc.offsets[start][1]
        n_bytes = len(doc[first_char:enc.offsets[end - 1][1]].encode("utf-8"))
        windows.append(Window(text.ids[d], ids, scored_from, n_bytes))
    if not windows:
        raise EdgeshrinkError(f"no document of {text.name!r} ({text.part}) has 2 tokens to score")
    return windows


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def score_windows(models: dict[str, Callable[[list[int]], np.ndarray]], windows: list[Window],
                  reference: str | None = None, progress=None) -> dict[str, dict]:
    """Perplexity, bits per byte and (against ``reference``) top-1 agreement and mean KL(reference ‖ model),
    all at the same positions, for every model (a function: token ids -> logits at every position); with each
    window's NLL and token count, for paired intervals over windows."""
    nll = {name: 0.0 for name in models}
    window_nll = {name: [] for name in models}  # per window, for paired intervals over windows
    agree = {name: 0 for name in models}
    kl = {name: 0.0 for name in models}
    tokens = n_bytes = 0
    window_tokens = []
    for number, window in enumerate(windows):
        if progress:
            progress(f"scoring window {number + 1}/{len(windows)}")
        targets = np.array(window.ids[window.scored_from:])
        ref_logp = ref_top = None
        logps = {}
        for name, logits_of in models.items():
            logits = np.asarray(logits_of(window.ids))[window.scored_from - 1:-1]
            logp = log_softmax_rows(logits)
            window_nll[name].append(-float(logp[np.arange(len(targets)), targets].sum()))
            nll[name] += window_nll[name][-1]
            logps[name] = logp
            if name == reference:
                ref_logp, ref_top = logp, logp.argmax(axis=1)
        if ref_logp is not None:
            ref_p = np.exp(ref_logp)
            for name, logp in logps.items():
                agree[name] += int((logp.argmax(axis=1) == ref_top).sum())
                kl[name] += float((ref_p * (ref_logp - logp)).sum())
        window_tokens.append(len(targets))
        tokens += len(targets)
        n_bytes += window.n_bytes
    out = {}
    for name in models:
        row = {"perplexity": math.exp(nll[name] / tokens), "bits_per_byte": nll[name] / math.log(2) / n_bytes,
               "nll_nats": nll[name], "tokens": tokens, "bytes": n_bytes, "windows": len(windows),
               "window_nll_nats": window_nll[name], "window_tokens": window_tokens}
        if reference is not None:
            row["top1_agreement"] = agree[name] / tokens
            row["kl_to_reference"] = kl[name] / tokens  # nats per token
        out[name] = row
    return out

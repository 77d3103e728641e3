"""Small statistics used in reports: intervals for accuracy (no scipy needed)."""

from __future__ import annotations

import math


def accuracy_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test on the discordant pairs of two classifiers scored on the same examples."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_perplexity_bootstrap(nll_a, nll_b, tokens, resamples: int = 2000, seed: int = 0) -> dict:
    """Two language models scored on the same documents (per-document total NLL in nats and token counts):
    both perplexities, their difference and ratio, and 95% percentile intervals of both from resampling
    the documents with replacement (pairs kept together)."""
    import numpy as np

    a, b, n = (np.asarray(x, dtype=np.float64) for x in (nll_a, nll_b, tokens))
    if not len(a) == len(b) == len(n) or len(n) < 2:
        raise ValueError("need per-document NLL of both models on the same 2+ documents")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(n), size=(resamples, len(n)))
    ppl_a = np.exp(a[picks].sum(1) / n[picks].sum(1))
    ppl_b = np.exp(b[picks].sum(1) / n[picks].sum(1))
    point_a, point_b = math.exp(a.sum() / n.sum()), math.exp(b.sum() / n.sum())

    def interval(x):
        return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]

    return {"perplexity_a": point_a, "perplexity_b": point_b, "difference": point_a - point_b,
            "difference_ci95": interval(ppl_a - ppl_b), "ratio": point_a / point_b, "ratio_ci95": interval(ppl_a / ppl_b),
            "documents": int(len(n)), "tokens": int(n.sum()), "resamples": resamples}

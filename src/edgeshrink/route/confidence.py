"""Confidence of the device model: signals, temperature scaling, calibration error.

    probs = softmax(log_probs / T)         T fitted on the calibration split of the *compressed* model
    s(x)  = SIGNALS["max-prob"](probs)     higher = more confident; the router answers on the device when s ≥ λ

Temperature scaling (Guo et al. 2017) fits one scalar T > 0 that minimises the negative log-likelihood
on held-out labelled data; it does not change the argmax, only how sure the probabilities say the
model is. The device runtime returns probabilities; their logs are logits up to a per-row constant,
which softmax ignores, so scaling them is the same as scaling the logits.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

SIGNALS: dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def signal(name: str):
    def register(fn):
        SIGNALS[name] = fn
        return fn
    return register


@signal("max-prob")
def max_prob(probs: np.ndarray) -> np.ndarray:
    return probs.max(axis=1)


@signal("margin")
def margin(probs: np.ndarray) -> np.ndarray:
    top = np.sort(probs, axis=1)
    return top[:, -1] - (top[:, -2] if probs.shape[1] > 1 else 0.0)


@signal("neg-entropy")
def neg_entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-12, 1.0)
    return (p * np.log(p)).sum(axis=1)


def signal_range(name: str, n_classes: int) -> tuple[float, float]:
    """The values a signal can take, for a threshold grid fixed before seeing any data."""
    if name == "max-prob":
        return 1.0 / n_classes, 1.0
    if name == "margin":
        return 0.0, 1.0
    return -float(np.log(n_classes)), 0.0


def scaled_probs(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: |accuracy − confidence| per equal-width confidence bin, weighted by size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict]:
    """Per confidence bin: count, mean confidence, accuracy (for a reliability diagram)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "n": int((which == b).sum()),
             "confidence": float(confidence[which == b].mean()) if (which == b).any() else None,
             "accuracy": float(correct[which == b].mean()) if (which == b).any() else None} for b in range(bins)]


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises NLL of ``scaled_probs(probs, T)`` on (probs, labels)."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: nll(scaled_probs(probs, float(np.exp(log_t))), labels),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def calibration_report(probs: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    scaled = scaled_probs(probs, temperature)
    return {"temperature": temperature,
            "before": {"ece": ece(probs, labels), "nll": nll(probs, labels)},
            "after": {"ece": ece(scaled, labels), "nll": nll(scaled, labels)}}

"""Confidence of the device model: signals, temperature scaling, calibration error.

    probs = softmax(log_probs / T)         T fitted on the calibration split of the *compressed* model
    s(x)  = SIGNALS["max-prob"](probs)     higher = more confident; the router answers on the device when s ≥ λ

Temperature scaling (Guo et al. 2017) fits one scalar T > 0 that minimises the negative log-likelihood
on held-out labelled data; it does not change the argmax, only how sure the probabilities say the
model is. The device runtime returns probabilities; their logs are logits up to a per-row constant,
which softmax ignores, so scaling them is the same as scaling the logits.

A language model answering a prompted task (runtime/prompted.py) also gives *answer signals*, read
from its own token log-probabilities: the mean and the minimum log-probability of its answer tokens and
their negative mean entropy (ANSWER_SIGNALS). One number per answer is not a distribution over labels,
so it is scaled the way a binary classifier's score is (Platt 1999): confidence = σ(s / T + b), T > 0
and b fitted by NLL on whether the answer was right (or agreed with the cloud, without labels). T > 0
keeps the order of s, so a threshold on the confidence is a threshold on the signal.
``fit_confidence`` / ``confidence_scores`` hide which kind a signal is from the policies and the router.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgeshrink.errors import EdgeshrinkError

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


# Answer signals of a prompted language model (runtime/prompted.py computes them; higher = more sure).
from edgeshrink.runtime.prompted import ANSWER_SIGNALS  # noqa: E402
ALL_SIGNALS = (*SIGNALS, *ANSWER_SIGNALS)


def signal_range(name: str, n_classes: int) -> tuple[float, float]:
    """The values a signal can take, for a threshold grid fixed before seeing any data."""
    if name in ANSWER_SIGNALS:  # after Platt scaling: a probability
        return 0.0, 1.0
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
    return binary_ece(probs.max(axis=1), probs.argmax(axis=1) == labels, bins)


def binary_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE of a confidence that an answer is right, against whether it was."""
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


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def fit_platt(scores: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """(T, b) minimising the NLL of σ(score / T + b) against ``correct``, with T > 0.

    Fitted on standardised scores (σ(w·z + c), z = (s − mean) / std, 0 < w ≤ 1000), so the start is never
    saturated whatever the signal's scale, then mapped back: T = std / w, b = c − w·mean / std."""
    from scipy.optimize import minimize

    y = correct.astype(float)
    mean, std = float(np.mean(scores)), float(np.std(scores)) or 1.0
    z = (scores - mean) / std
    rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))

    def loss(theta):
        logit = theta[0] * z + theta[1]
        grad_logit = (_sigmoid(logit) - y) / len(y)
        value = float(np.mean(np.logaddexp(0, logit) - y * logit))
        return value, np.array([float(grad_logit @ z), float(grad_logit.sum())])

    result = minimize(loss, x0=[1.0, np.log(rate / (1 - rate))], jac=True, method="L-BFGS-B",
                      bounds=[(1e-6, 1e3), (-50, 50)])
    w, c = (float(v) for v in result.x)
    return std / w, c - w * mean / std


def fit_confidence(signal: str, probs: np.ndarray, answer_signals: dict | None, reference: np.ndarray,
                   scaling: bool = True) -> dict:
    """What turns the device's outputs into a calibrated confidence: ``{"temperature": T, "bias": b}``
    (``bias`` None for label-distribution signals). ``reference``: labels, or the cloud's answers."""
    if signal in SIGNALS:
        return {"temperature": fit_temperature(probs, reference) if scaling else 1.0, "bias": None}
    if not answer_signals or signal not in answer_signals:
        raise EdgeshrinkError(f"signal {signal!r} comes from a language model's answer tokens; this device model "
                              f"gives {', '.join(SIGNALS)}")
    if not scaling:
        raise EdgeshrinkError(f"signal {signal!r} is always Platt-scaled (the temperature option applies to "
                              f"{', '.join(SIGNALS)})")
    temperature, bias = fit_platt(answer_signals[signal], probs.argmax(1) == reference)
    return {"temperature": temperature, "bias": bias}


def confidence_scores(signal: str, probs: np.ndarray, answer_signals: dict | None, fitted: dict) -> np.ndarray:
    """The calibrated confidence signal per example (higher = more sure)."""
    if signal in SIGNALS:
        return SIGNALS[signal](scaled_probs(probs, fitted["temperature"]))
    if not answer_signals or signal not in answer_signals:
        raise EdgeshrinkError(f"the router uses signal {signal!r}, which this device model does not give")
    return _sigmoid(answer_signals[signal] / fitted["temperature"] + fitted["bias"])


def confidence_report(signal: str, probs: np.ndarray, answer_signals: dict | None, reference: np.ndarray,
                      fitted: dict) -> dict:
    """ECE and NLL before and after the fitted scaling. Label-distribution signals: of the label
    probabilities; answer signals: of P(answer right), before = exp(signal) where that is a probability
    (the log-probability signals), none for the entropy signal."""
    if signal in SIGNALS:
        return calibration_report(probs, reference, fitted["temperature"])
    correct = probs.argmax(1) == reference
    raw = answer_signals[signal]
    after = confidence_scores(signal, probs, answer_signals, fitted)

    def binary_nll(p):
        p = np.clip(p, 1e-12, 1 - 1e-12)
        return float(-np.mean(correct * np.log(p) + (~correct) * np.log(1 - p)))

    before = {"ece": binary_ece(np.exp(raw), correct), "nll": binary_nll(np.exp(raw))} \
        if signal != "neg-mean-entropy" else {"ece": None, "nll": None}
    return {"temperature": fitted["temperature"], "bias": fitted["bias"], "before": before,
            "after": {"ece": binary_ece(after, correct), "nll": binary_nll(after)}}

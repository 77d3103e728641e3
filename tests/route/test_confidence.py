import numpy as np
import pytest

from edgeshrink.route.confidence import (SIGNALS, calibration_report, ece, fit_temperature, nll, reliability,
                                         scaled_probs)


def _overconfident(n=4000, seed=0):
    """Labels drawn from true probabilities; the model reports them sharpened (temperature 1/3)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(n, 3))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in true])
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    return sharp, labels


def test_signals_rank_confidence():
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.99, 0.01]])
    for name, fn in SIGNALS.items():
        values = fn(probs)
        assert np.all(np.diff(values) > 0), name
    assert SIGNALS["margin"](probs)[1] == pytest.approx(0.8)


def test_temperature_recovers_the_sharpening_and_lowers_ece():
    probs, labels = _overconfident()
    t = fit_temperature(probs, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    report = calibration_report(probs, labels, t)
    assert report["after"]["ece"] < report["before"]["ece"] / 3
    assert report["after"]["nll"] < report["before"]["nll"]
    assert np.array_equal(scaled_probs(probs, t).argmax(1), probs.argmax(1))  # scaling never changes the answer


def test_ece_of_a_perfectly_calibrated_model_is_small():
    rng = np.random.default_rng(2)
    p = rng.uniform(0.5, 1, 20000)
    labels = (rng.random(20000) > p).astype(int)  # class 0 with probability p
    probs = np.stack([p, 1 - p], 1)
    assert ece(probs, labels) < 0.02 and nll(probs, labels) > 0
    bins = reliability(probs, labels)
    assert len(bins) == 15 and sum(b["n"] for b in bins) == 20000

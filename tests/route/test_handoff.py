"""The handoff threshold's guarantee, on synthetic signals (issue 31)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.handoff import HandoffConfig, HandoffData, calibrate_handoff


def synthetic(n: int, rng: np.random.Generator, tokens: int = 40, shift: float = 0.0) -> HandoffData:
    """Prompts whose device tokens disagree with the cloud more often where the signal is low: P(disagree) =
    0.5 * (1 - s) ** 3 with s ~ Beta(5, 1.5) (most tokens confident, a tail of unsure ones)."""
    signals, agree = [], []
    for _ in range(n):
        length = int(rng.integers(tokens // 2, tokens + 1))
        s = np.clip(rng.beta(5, 1.5, length) - shift, 0, 1)
        signals.append(s)
        agree.append(rng.random(length) >= 0.5 * (1 - s) ** 3)
    return HandoffData(signals, agree, max_tokens=tokens)


def risk_on(data: HandoffData, threshold: float) -> float:
    """The bounded quantity on ``data``: the disagreeing share of kept tokens, averaged over the answers keeping any."""
    kept, disagreed = data.kept(threshold)
    return float(np.mean((disagreed / np.maximum(kept, 1))[kept > 0]))


def test_the_bound_holds_on_fresh_prompts_in_at_least_1_minus_delta_of_draws():
    """Calibrate on 200 prompts, measure the bounded quantity on 5,000 fresh ones; over 60 calibration draws,
    the bound α may fail in at most δ of them (plus sampling slack), and the device keeps a real share of tokens."""
    alpha, delta = 0.04, 0.1
    rng = np.random.default_rng(0)
    fresh = synthetic(5_000, rng)
    failures, shares = 0, []
    for _ in range(60):
        result = calibrate_handoff(synthetic(200, rng), HandoffConfig(alpha=alpha, delta=delta, grid_size=40))
        if math.isfinite(result.threshold):
            failures += risk_on(fresh, result.threshold) > alpha
            kept, _ = fresh.kept(result.threshold)
            shares.append(kept.sum() / sum(len(s) for s in fresh.signals))
    assert failures <= delta * 60 + 4, failures
    assert np.median(shares) > 0.3  # not vacuous: the device keeps a real share of the tokens


def test_the_threshold_follows_the_signal_and_the_curve_is_reported():
    rng = np.random.default_rng(1)
    data = synthetic(300, rng)
    strict = calibrate_handoff(data, HandoffConfig(alpha=0.02, delta=0.1, grid_size=80))
    lenient = calibrate_handoff(data, HandoffConfig(alpha=0.08, delta=0.1, grid_size=80))
    assert lenient.device_token_share >= strict.device_token_share
    assert lenient.threshold <= strict.threshold
    assert len(lenient.curve) == 80 and "of the tokens the device keeps" in lenient.guarantee
    shares = [point["device_token_share"] for point in lenient.curve]
    assert shares == sorted(shares)  # strict to lenient: the device keeps more and more


def test_a_device_that_always_disagrees_hands_everything_off():
    rng = np.random.default_rng(2)
    data = HandoffData([rng.random(30) for _ in range(100)], [np.zeros(30, bool) for _ in range(100)])
    result = calibrate_handoff(data, HandoffConfig(alpha=0.05))
    assert result.threshold == math.inf and result.device_token_share == 0.0
    assert "the cloud writes every answer" in result.guarantee


def test_bad_handoff_data_is_refused():
    with pytest.raises(EdgeshrinkError, match="equally long"):
        HandoffData([np.ones(3)], [np.ones(2, bool)])
    with pytest.raises(EdgeshrinkError, match="at least 30 prompts"):
        calibrate_handoff(HandoffData([np.ones(3)] * 5, [np.ones(3, bool)] * 5))
    with pytest.raises(EdgeshrinkError, match="finite"):
        HandoffData([np.array([np.nan])], [np.ones(1, bool)])


def test_kept_matches_the_definition():
    """K_i: the tokens before the first signal below the threshold; D_i: the disagreements among them."""
    rng = np.random.default_rng(3)
    data = synthetic(50, rng)
    for threshold in (0.0, 0.3, 0.6, 0.9, 1.1):
        kept, disagreed = data.kept(threshold)
        for s, a, k, d in zip(data.signals, data.agree, kept, disagreed):
            first = next((t for t, v in enumerate(s) if v < threshold), len(s))
            assert k == first and d == int(np.sum(~a[:first]))


def test_the_answer_loss_bounds_answers_that_are_not_the_clouds_own():
    """loss="answer": the share of answers keeping a token the cloud would not have chosen (or, kept whole, ending
    where the cloud would not) is ≤ α on fresh prompts in at least 1 − δ of the calibration draws, and the
    threshold falls between "everything" and "nothing" (the device keeps a share of the tokens, not all)."""
    alpha, delta = 0.3, 0.1
    rng = np.random.default_rng(2)
    fresh = synthetic(3_000, rng)
    fresh.ends_agree = rng.random(3_000) > 0.05
    failures, shares = 0, []
    for _ in range(40):
        data = synthetic(200, rng)
        data.ends_agree = rng.random(200) > 0.05
        result = calibrate_handoff(data, HandoffConfig(alpha=alpha, delta=delta, grid_size=40, loss="answer"))
        assert "not the cloud's own greedy answer" in result.guarantee
        threshold = result.threshold
        failures += float(fresh.losses(threshold, "answer").mean()) > alpha
        kept, _ = fresh.kept(threshold)
        shares.append(kept.sum() / sum(len(s) for s in fresh.signals))
    assert failures <= delta * 40 + 3, failures
    assert 0.05 < np.median(shares) < 0.95, np.median(shares)
    # the loss's definition: an answer kept whole that ends where the cloud would not is not the cloud's
    tiny = HandoffData([np.array([0.9, 0.9])], [np.array([True, True])], ends_agree=np.array([False]))
    assert tiny.losses(0.5, "answer").tolist() == [1.0] and tiny.losses(0.95, "answer").tolist() == [0.0]
    assert tiny.losses(0.5, "token").tolist() == [0.0]

import math

import numpy as np
import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.policies import (POLICIES, CalibrationData, PolicyConfig, choose_threshold, examples_needed,
                                       p_value)


def _data(scores, device_correct, cloud_correct=None):
    device_correct = np.asarray(device_correct, bool)
    cloud_correct = np.ones_like(device_correct) if cloud_correct is None else np.asarray(cloud_correct, bool)
    return CalibrationData(np.asarray(scores, float), device_correct, cloud_correct, device_correct == cloud_correct)


def test_registry_has_every_policy():
    assert set(POLICIES) == {"budget", "accuracy", "risk", "risk+budget"}


def test_risk_finds_the_threshold_known_by_construction():
    scores = np.linspace(0, 1, 2000, endpoint=False)
    data = _data(scores, scores >= 0.5)  # the device is wrong exactly below 0.5
    t = choose_threshold(data, PolicyConfig(policy="risk", signal="margin", alpha=0.02, delta=0.1))
    assert 0.48 <= t.value <= 0.5 and t.device_risk <= 0.02 and t.feasible
    assert 0.48 <= t.escalation_rate <= 0.5
    assert "≤ 2%" in t.guarantee and "90%" in t.guarantee


def test_no_threshold_is_safe_escalates_everything_and_says_so():
    rng = np.random.default_rng(0)
    data = _data(rng.random(1000), rng.random(1000) > 0.3)  # 30% wrong whatever the confidence
    t = choose_threshold(data, PolicyConfig(policy="risk", signal="margin", alpha=0.05, delta=0.1))
    assert t.value == math.inf and t.escalation_rate == 1.0 and t.to_dict()["escalate_everything"]
    assert "no threshold is safe" in t.guarantee


def test_calibration_set_too_small_says_how_many_are_needed():
    assert examples_needed(0.01, 0.1) == 230  # (1 − 0.01)^230 ≤ 0.1 < (1 − 0.01)^229
    data = _data(np.linspace(0, 1, 100), np.ones(100))
    with pytest.raises(EdgeshrinkError, match="needs at least 230 examples"):
        choose_threshold(data, PolicyConfig(policy="risk", alpha=0.01, delta=0.1))


def test_guarantee_holds_over_many_calibration_draws():
    rng = np.random.default_rng(1)
    alpha, delta, failures = 0.05, 0.1, 0
    config = PolicyConfig(policy="risk", signal="margin", alpha=alpha, delta=delta)
    for _ in range(200):
        scores = rng.random(600)
        data = _data(scores, rng.random(600) > 0.25 * (1 - scores))  # error rate falls with confidence
        t = choose_threshold(data, config)
        # true risk among device answers for this threshold, from the known error model
        true_risk = 0.25 * (1 - (1 + t.value) / 2) if t.value < 1 else 0.0
        failures += true_risk > alpha
    assert failures / 200 <= delta


def test_hoeffding_bentkus_is_more_conservative_than_binomial():
    k, n = np.array([5, 10, 20]), np.array([500, 500, 500])
    assert np.all(p_value(k, n, 0.02, "hoeffding-bentkus") >= p_value(k, n, 0.02, "binomial"))
    scores = np.linspace(0, 1, 2000, endpoint=False)
    data = _data(scores, (scores >= 0.5) | (np.arange(2000) % 50 == 0))
    binomial = choose_threshold(data, PolicyConfig(policy="risk", signal="margin", alpha=0.02))
    hb = choose_threshold(data, PolicyConfig(policy="risk", signal="margin", alpha=0.02, p_value="hoeffding-bentkus"))
    assert hb.value >= binomial.value


def test_budget_escalates_at_most_the_fraction():
    data = _data(np.linspace(0, 1, 1000, endpoint=False), np.ones(1000))
    t = choose_threshold(data, PolicyConfig(policy="budget", budget=0.3))
    assert t.escalation_rate == pytest.approx(0.3)
    assert choose_threshold(data, PolicyConfig(policy="budget", budget=1.0)).escalation_rate == 1.0


def test_accuracy_policy_takes_the_fewest_escalations_reaching_the_target():
    scores = np.linspace(0, 1, 1000, endpoint=False)
    data = _data(scores, scores >= 0.3)  # cloud always right; the device wrong below 0.3
    t = choose_threshold(data, PolicyConfig(policy="accuracy", max_drop=0.0))
    assert t.escalation_rate == pytest.approx(0.3) and t.details["calibration_hybrid_accuracy"] == 1.0
    t = choose_threshold(data, PolicyConfig(policy="accuracy", target_accuracy=0.9))
    assert t.escalation_rate == pytest.approx(0.2)
    cloud_worse = _data(scores, scores >= 0.3, cloud_correct=np.zeros(1000))
    t = choose_threshold(cloud_worse, PolicyConfig(policy="accuracy", target_accuracy=0.95))
    assert not t.feasible and t.value == math.inf and "no threshold reaches" in t.guarantee


def test_risk_and_budget_together():
    scores = np.linspace(0, 1, 2000, endpoint=False)
    data = _data(scores, scores >= 0.5)
    ok = choose_threshold(data, PolicyConfig(policy="risk+budget", signal="margin", alpha=0.02, budget=0.6))
    assert ok.feasible and ok.escalation_rate <= 0.6 and "δ split in two" in ok.guarantee
    no = choose_threshold(data, PolicyConfig(policy="risk+budget", signal="margin", alpha=0.02, budget=0.2))
    assert not no.feasible and no.value == math.inf and "no threshold meets both" in no.guarantee


def test_label_free_bounds_disagreement_and_says_so():
    scores = np.linspace(0, 1, 2000, endpoint=False)
    agree = scores >= 0.4
    data = CalibrationData(scores, None, None, agree)
    t = choose_threshold(data, PolicyConfig(policy="risk", signal="margin", alpha=0.05, label_free=True))
    assert t.value <= 0.4 + 1e-9 and "disagreement with the cloud model" in t.guarantee
    with pytest.raises(EdgeshrinkError, match="labelled"):
        choose_threshold(data, PolicyConfig(policy="risk", signal="margin", alpha=0.05))


@pytest.mark.parametrize("bad", [{"alpha": 0}, {"alpha": 1.2}, {"alpha": 0.02, "delta": 1}, {"policy": "risk"},
                                 {"policy": "budget"}, {"policy": "accuracy"}, {"policy": "quantile"},
                                 {"alpha": 0.1, "aplha": 0.1}])
def test_bad_configs(bad):
    with pytest.raises(EdgeshrinkError):
        PolicyConfig.from_dict(bad)


def test_config_round_trip():
    config = PolicyConfig(policy="risk+budget", alpha=0.02, budget=0.3, label_free=True)
    assert PolicyConfig.from_json(config.to_json()) == config

import numpy as np
import pytest

from edgeshrink.route.evaluate import EvalConfig, apgr_cpt, curves, guarantee_check
from edgeshrink.route.policies import PolicyConfig


def test_guarantee_check_holds_for_a_calibrated_synthetic_model():
    rng = np.random.default_rng(0)
    n = 3000
    p = rng.uniform(0.5, 1.0, n)  # P(device right) = its confidence
    labels = np.zeros(n, int)
    device_right = rng.random(n) < p
    device = np.stack([np.where(device_right, p, 1 - p), np.where(device_right, 1 - p, p)], 1)
    cloud = np.stack([np.where(rng.random(n) < 0.95, 0.9, 0.1), np.zeros(n)], 1)
    cloud[:, 1] = 1 - cloud[:, 0]
    rows = guarantee_check(device, cloud, labels, PolicyConfig(policy="risk", alpha=0.05, delta=0.1),
                           EvalConfig(resplits=60, alphas=[0.05]), 2)
    assert [r["risk_is"] for r in rows] == ["error", "disagreement"]
    for row in rows:
        assert row["population"]["held_fraction"] >= 0.85 and row["population"]["mean_coverage"] > 0
        assert row["population"]["mean_risk"] <= 0.05


def test_guarantee_checks_too_small_to_run_are_skipped_with_the_reason():
    rng = np.random.default_rng(1)
    n = 181  # each draw calibrates on 90: enough at α = 0.05 (45 needed at δ = 0.1), not at 0.01 (230) or 0.02 (114)
    labels = rng.integers(0, 2, n)
    device = rng.dirichlet([1, 1], n)
    cloud = np.eye(2)[labels] * 0.8 + 0.1
    rows = guarantee_check(device, cloud, labels, PolicyConfig(policy="risk", alpha=0.05, delta=0.1),
                           EvalConfig(resplits=5), 2)
    assert [(r["risk_is"], r["alpha"]) for r in rows] == [(mode, a) for mode in ("error", "disagreement")
                                                          for a in (0.01, 0.02, 0.05)]
    for row in rows:
        assert row["calibration_n"] == 90
        if row["alpha"] == 0.05:
            assert row["skipped"] is None and row["ok"] in (True, False) and row["population"]["mean_risk"] >= 0
        else:
            needed = {0.01: 230, 0.02: 114}[row["alpha"]]
            assert row["examples_needed"] == needed and row["population"] is None and row["ok"] is None
            assert f"it needs at least {needed} examples" in row["skipped"] and "got 90" in row["skipped"]


def test_curves_apgr_and_cpt():
    scores = np.arange(10) / 10
    device_correct = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1], bool)  # wrong only on the two least confident
    cloud_correct = np.ones(10, bool)
    curve = curves(scores, device_correct, cloud_correct, 11)
    assert curve["hybrid_accuracy"][0] == 0.8 and curve["hybrid_accuracy"][2] == 1.0
    assert curve["risk"][0] == 0.2 and curve["risk"][2] == 0.0
    routing = apgr_cpt(curve, 0.8, 1.0)
    assert routing["cpt"] == {"50%": 0.1, "80%": 0.2, "95%": 0.2}
    assert routing["apgr"] == pytest.approx(0.9)  # trapezoid: 0.1 × (0.25 + 0.75 + 8)

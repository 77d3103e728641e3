"""The drift detectors on synthetic streams with a known shift: how often they fire on in-distribution
streams (false alarms) and how often, and how soon, on shifted ones (power), at the default bound."""

import numpy as np
import pytest

from edgeshrink.route.monitor import DriftMonitor, MonitorConfig, Observation, reference_from, router_bound

LABELS = ["negative", "positive"]
THRESHOLD = 0.8


def stream(rng, n, a=6.0, b=1.0, truncated=0.02, unknown=0.1, positive=0.7):
    """Requests whose confidence is Beta(a, b); escalated below THRESHOLD; label and flags at the given rates."""
    scores = rng.beta(a, b, n)
    trunc = rng.random(n) < truncated
    return [Observation(score=float(s), routed=not t, escalated=bool(t or s < THRESHOLD), truncated=bool(t),
                        unknown=bool(u), label=LABELS[int(p)])
            for s, t, u, p in zip(scores, trunc, rng.random(n) < unknown, rng.random(n) < positive)]


def reference(rng, n=1600, **kwargs):
    calibration = stream(rng, n, **kwargs)
    kept = np.array([not o.truncated for o in calibration])
    scores = np.array([o.score for o in calibration])
    return reference_from(scores[kept], kept, (scores < THRESHOLD)[kept], ~kept,
                          np.array([o.unknown for o in calibration]), LABELS,
                          np.array([LABELS.index(o.label) for o in calibration]), device_disagreement=0.03)


def replay(ref, observations, config=MonitorConfig()):
    monitor = DriftMonitor(ref, config, LABELS)
    first = {}
    for o in observations:
        for event in monitor.observe(o):
            if event["firing"]:
                first.setdefault(event["signal"], monitor.seen)
    return first, monitor


@pytest.fixture(scope="module")
def ref():
    return reference(np.random.default_rng(0))


def test_quiet_on_in_distribution_streams(ref):
    rng = np.random.default_rng(1)
    alarms = [replay(ref, stream(rng, 600))[0] for _ in range(40)]
    false_alarm_rate = sum(bool(a) for a in alarms) / len(alarms)
    assert false_alarm_rate <= 0.10, alarms  # any signal, any time, over 600 requests


@pytest.mark.parametrize("shift, signal", [
    ({"a": 3.0}, "confidence"),            # the device less sure: confidence (and escalations) move
    ({"a": 3.0}, "escalation"),
    ({"truncated": 0.12}, "truncated"),    # longer inputs
    ({"unknown": 0.3}, "unknown"),         # another vocabulary
    ({"positive": 0.4}, "label_mix"),      # another label mix
])
def test_fires_on_a_known_shift_within_300_requests(ref, shift, signal):
    rng = np.random.default_rng(2)
    detected = []
    for _ in range(20):
        first, _ = replay(ref, stream(rng, 300, **shift))
        detected.append(first.get(signal))
    power = sum(d is not None for d in detected) / len(detected)
    assert power >= 0.9, detected
    assert np.median([d for d in detected if d]) <= 200  # requests after the shift began


def test_a_shift_after_in_distribution_traffic_is_found_after_the_window_turns(ref):
    rng = np.random.default_rng(3)
    first, monitor = replay(ref, stream(rng, 500) + stream(rng, 500, a=3.0))
    assert 500 < first["confidence"] <= 800
    report = monitor.report()
    assert "confidence" in report["firing"] and report["signals"]["confidence"]["first_fired_at"] == first["confidence"]
    assert report["live"]["escalation_rate"] > report["reference"]["escalation_rate"]


def test_audit_fires_when_disagreement_is_above_the_bound_only():
    rng = np.random.default_rng(4)
    config = MonitorConfig(min_audited=50)
    fired = {rate: [] for rate in (0.02, 0.15)}
    for rate, outcomes in fired.items():
        for _ in range(30):
            monitor = DriftMonitor({}, config, LABELS, bound=0.05, bound_what="the router's α")
            events = [e for agree in rng.random(300) >= rate for e in monitor.audit(bool(agree))]
            outcomes.append(any(e["firing"] for e in events))
    assert sum(fired[0.02]) / 30 <= 0.1 and sum(fired[0.15]) / 30 >= 0.9
    estimate = monitor.audit_estimate()
    assert estimate["audited"] == 300 and estimate["interval"][0] < estimate["disagreement"] < estimate["interval"][1]


def test_the_bound_follows_the_routers_policy():
    assert router_bound({"alpha": 0.02, "label_free": True, "policy": {"policy": "risk"}})[0] == 0.02
    assert router_bound({"alpha": None, "policy": {"policy": "budget"},
                         "reference": {"device_disagreement": 0.07}}) == (0.07, "the disagreement among device "
                                                                                  "answers at calibration")
    assert router_bound({"policy": {"policy": "budget"}})[0] is None


def test_a_router_without_reference_monitors_what_it_can():
    monitor = DriftMonitor(None, MonitorConfig(min_requests=20, check_every=5), LABELS)
    for o in stream(np.random.default_rng(5), 100):
        monitor.observe(o)
    assert monitor.firing() == [] and all(s["p_value"] is None for s in monitor.report()["signals"].values())


def test_the_report_is_plain_json(ref):
    import json

    _, monitor = replay(ref, stream(np.random.default_rng(6), 300, a=3.0))
    monitor.audit(True)
    report = monitor.report()
    assert json.loads(json.dumps(report)) == report and report["firing"]


def test_a_router_from_before_references_still_has_its_escalation_rate_watched():
    from edgeshrink.route.monitor import router_reference

    old = {"n": 1000, "calibration": {"escalation_rate": 0.2}}  # a router.json without "reference"
    reference = router_reference(old)
    assert reference == {"routed": 1000, "escalated": 200, "partial": True}
    rng = np.random.default_rng(7)
    first, monitor = replay(reference, stream(rng, 300, a=3.0))
    assert "escalation" in first and monitor.state["confidence"]["p_value"] is None

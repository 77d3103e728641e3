import numpy as np
import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.router import Router
from edgeshrink.runtime import Predictions

LABELS = ["negative", "positive"]


class FakeModel:
    """Answers from a table: text -> P(positive); truncated when the text says so."""
    labels = LABELS

    def __init__(self, table, fail=False):
        self.table, self.fail, self.calls = table, fail, []

    def predict(self, texts):
        self.calls.append(list(texts))
        if self.fail:
            raise ConnectionError("cloud down")
        p = np.array([[1 - self.table[t], self.table[t]] for t in texts])
        return Predictions([LABELS[i] for i in p.argmax(1)], p, ["long" in t for t in texts])


SETTINGS = {"threshold": 0.8, "escalate_everything": False, "temperature": 1.0, "signal": "max-prob",
            "cost": {"device_latency_ms": 5.0, "cloud_latency_ms": 50.0, "network_rtt_ms": 30.0,
                     "cloud_cost_per_1000": 2.0}, "rules": {"escalate_truncated": True}}
DEVICE = {"sure": 0.95, "unsure": 0.6, "long sure": 0.99}
CLOUD = {"sure": 0.9, "unsure": 0.1, "long sure": 0.2}


def test_confident_on_device_the_rest_in_the_cloud():
    cloud = FakeModel(CLOUD)
    answers = Router(FakeModel(DEVICE), cloud, SETTINGS).predict(["sure", "unsure", "long sure"])
    assert [(a.label, a.source, a.reason) for a in answers] == [
        ("positive", "device", "confident"), ("negative", "cloud", "not confident"), ("negative", "cloud", "truncated")]
    assert cloud.calls == [["unsure", "long sure"]]  # one batched cloud call, only for the escalated
    assert answers[0].cost == {"latency_ms": 5.0, "money": 0.0, "energy_mj": None}
    assert answers[1].cost["latency_ms"] == 85.0 and answers[1].cost["money"] == 0.002


def test_per_request_rules():
    router = Router(FakeModel(DEVICE), FakeModel(CLOUD), SETTINGS)
    answers = router.predict(["unsure", "sure"], private=[True, False], cloud_only=[False, True])
    assert (answers[0].source, answers[0].reason) == ("device", "private")
    assert (answers[1].source, answers[1].reason, answers[1].label) == ("cloud", "cloud only", "positive")
    with pytest.raises(EdgeshrinkError, match="both private and cloud-only"):
        router.predict(["sure"], private=[True], cloud_only=[True])


def test_a_failing_cloud_falls_back_to_the_device():
    answers = Router(FakeModel(DEVICE), FakeModel(CLOUD, fail=True), SETTINGS).predict(["sure", "unsure"])
    assert answers[0].fallback is False and answers[0].source == "device"
    assert (answers[1].source, answers[1].fallback, answers[1].reason, answers[1].label) == \
        ("device", True, "cloud failed", "positive")


def test_escalate_everything_and_label_mismatch():
    settings = dict(SETTINGS, threshold=None, escalate_everything=True)
    answers = Router(FakeModel(DEVICE), FakeModel(CLOUD), settings).predict(["sure"])
    assert answers[0].source == "cloud"
    other = FakeModel(CLOUD)
    other.labels = ["bad", "good"]
    with pytest.raises(EdgeshrinkError, match="different labels"):
        Router(FakeModel(DEVICE), other, SETTINGS)


def test_router_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, edgeshrink.route.router; print('torch' in sys.modules, 'pydantic' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == ["False", "False"]

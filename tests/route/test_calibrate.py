import json
import shutil

import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.calibrate import RouteConfig, calibrate
from edgeshrink.route.evaluate import EvalConfig, evaluate
from edgeshrink.route.router import Router, read_router
from edgeshrink.runtime import load
from tests.conftest import make_texts, make_tiny_bert, write_csv


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("route")
    data = write_csv(root / "d.csv", make_texts(800, seed=3))  # 120 calibration, 120 test examples
    cloud = make_tiny_bert(root / "cloud", seed=1)  # another random model: it disagrees with the device
    return str(data), cloud, root


@pytest.fixture
def device(tiny_bundle, tmp_path):
    path = tmp_path / "device"
    shutil.copytree(tiny_bundle, path)
    return path


def test_calibrate_writes_a_hashed_router_into_the_bundle(setup, device):
    data, cloud, _ = setup
    router = calibrate(device, cloud, data, RouteConfig(policy="risk", alpha=0.3, delta=0.2))
    assert router["n"] == 120 and len(router["data"]["split"]["sha256"]) == 64
    assert router["policy"]["alpha"] == 0.3 and 0.05 <= router["temperature"] <= 20
    assert read_router(device) == router
    manifest = json.loads((device / "manifest.json").read_text())
    assert manifest["router"]["sha256"] == manifest["files"]["router.json"]["sha256"]
    load(device)  # the runtime still verifies every file, router.json included
    Router.from_bundle(device, cloud=None)


def test_edited_router_is_refused(setup, device):
    data, cloud, _ = setup
    calibrate(device, cloud, data, RouteConfig(policy="budget", budget=0.3))
    text = (device / "router.json").read_text().replace('"budget": 0.3', '"budget": 0.9')
    (device / "router.json").write_text(text)
    with pytest.raises(EdgeshrinkError, match="router.json is corrupt or was modified"):
        read_router(device)


def test_bad_inputs(setup, device, tmp_path):
    data, cloud, root = setup
    with pytest.raises(EdgeshrinkError, match="needs at least 230 examples"):
        calibrate(device, cloud, data, RouteConfig(policy="risk", alpha=0.01, delta=0.1))
    other = make_tiny_bert(root / "other-labels", labels=("bad", "good"))
    with pytest.raises(EdgeshrinkError, match="different label sets"):
        calibrate(device, other, data, RouteConfig(policy="budget", budget=0.2))
    with pytest.raises(EdgeshrinkError, match="no calibrated router"):
        read_router(device)
    assert not (device / "router.json").exists()


def test_label_free_calibration_bounds_disagreement(setup, device):
    data, cloud, _ = setup
    router = calibrate(device, cloud, data, RouteConfig(policy="risk", alpha=0.3, delta=0.2, label_free=True))
    assert router["label_free"] and ("disagreement with the cloud" in router["guarantee"]
                                     or "no threshold is safe" in router["guarantee"])


def test_evaluate_reports_and_checks_the_guarantee(setup, device, tmp_path):
    data, cloud, _ = setup
    calibrate(device, cloud, data, RouteConfig(policy="risk", alpha=0.3, delta=0.2))
    report = evaluate(device, cloud, data, EvalConfig(resplits=20, alphas=[0.3, 0.4], latency_samples=5),
                      plots=tmp_path / "plots")
    assert report["n"] == 120 and 0 <= report["escalated_fraction"] <= 1
    assert report["device_only"]["accuracy"] <= 1 and report["cost"]["model"]["device_latency_ms"] > 0
    assert len(report["curves"]["hybrid_accuracy"]) == 101
    assert report["curves"]["hybrid_accuracy"][0] == report["device_only"]["accuracy"]
    assert report["curves"]["hybrid_accuracy"][-1] == pytest.approx(report["cloud_only"]["accuracy"])
    rows = report["guarantee_check"]
    assert [(r["label_free"], r["alpha"]) for r in rows] == [(False, 0.3), (False, 0.4), (True, 0.3), (True, 0.4)]
    assert all(r["resplits"] == 20 and 0 <= r["population"]["held_fraction"] <= 1 for r in rows)
    assert all(0 <= r["held_out_half"]["held_fraction"] <= 1 for r in rows)
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"accuracy_vs_escalation.png", "coverage_risk.png",
                                                                 "reliability.png"}
    json.dumps(report)  # machine-readable as is


def test_label_free_calibration_on_unlabelled_text_uses_every_row(setup, device, tmp_path):
    from edgeshrink.data import DataConfig

    data, cloud, _ = setup
    rows = [(text,) for text, _ in make_texts(300, seed=5)]
    plain = write_csv(tmp_path / "traffic.csv", rows, header=("text",))
    unlabelled = DataConfig(source=str(plain), label_column=None)
    router = calibrate(device, cloud, unlabelled, RouteConfig(policy="risk", alpha=0.3, delta=0.2, label_free=True))
    assert router["n"] == 300 and router["data"]["unlabelled"]
    with pytest.raises(EdgeshrinkError, match="has no labels"):
        calibrate(device, cloud, unlabelled, RouteConfig(policy="risk", alpha=0.3, delta=0.2))

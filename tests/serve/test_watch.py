"""The device service's watch over its router, against real servers: audits never delay an answer and stay
within the cloud budget; a shift in traffic fires drift signals and, with --recalibrate, a label-free
recalibration that is committed atomically, hashed, logged and counted."""

import json
import shutil
import time

import numpy as np
import pytest
import yaml

from edgeshrink.client import Client
from edgeshrink.route.router import Router, read_router
from edgeshrink.runtime import load
from tests.conftest import WORDS, make_texts


@pytest.fixture
def device(serve_models, tmp_path):
    """A copy of the device bundle: a recalibration writes into it."""
    shutil.copytree(serve_models["device"], tmp_path / "device")
    return tmp_path / "device"


def _device_answered(bundle, n: int) -> list[str]:
    """Texts the router answers on the device (decided here, as the service will)."""
    router = Router.from_bundle(bundle, None)
    texts = [t for t, _ in make_texts(400, seed=11)]
    pred = router.device.predict(texts)
    _, _, escalate = router.decide(pred)
    kept = [t for t, e in zip(texts, escalate) if not e]
    assert len(kept) >= n
    return kept[:n]


def test_audits_never_delay_an_answer(serve_models, device, start, tmp_path):
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"delay_ms": 1500}))  # the cloud takes 1.5 s per answer
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0, "--faults", faults)
    service = start("serve", device, "--cloud", cloud.url, "--port", 0, "--deadline-ms", 5000,
                    "--audit-fraction", 1.0)
    texts = _device_answered(device, 12)
    latencies = []
    with Client(service.url, timeout_s=30) as client:
        for text in texts:
            t0 = time.monotonic()
            [answer] = client.classify([text])
            latencies.append(time.monotonic() - t0)
            assert answer["source"] == "device"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the audits in flight finish, 1.5 s or more after their answers
            m = client.metrics()
            audited = sum(m.get(f'edgeshrink_audits_total{{outcome="{o}"}}', 0) for o in ("agree", "disagree"))
            if audited + m.get('edgeshrink_audits_total{outcome="skipped_busy"}', 0) == len(texts):
                break
            time.sleep(0.25)
    assert max(latencies) < 0.5, latencies  # each answer long before the cloud's 1.5 s
    assert audited >= 8  # at most 8 in flight: the others were skipped, not queued behind the answers
    assert audited + m.get('edgeshrink_audits_total{outcome="skipped_busy"}', 0) == len(texts)


def test_audits_stay_within_the_cloud_budget(serve_models, device, start):
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0)
    service = start("serve", device, "--cloud", cloud.url, "--port", 0, "--audit-fraction", 1.0,
                    "--cloud-budget", 5)
    with Client(service.url, timeout_s=30) as client:
        for text in _device_answered(device, 20):
            client.classify([text])
            time.sleep(0.02)  # let each audit go out before the next request (none skipped as busy)
        time.sleep(0.5)
        m = client.metrics()
    with Client(cloud.url) as client:
        served = client.metrics().get('edgeshrink_texts_total{source="cloud"}', 0)
    audited = m.get('edgeshrink_audits_total{outcome="agree"}', 0) + m.get('edgeshrink_audits_total{outcome="disagree"}', 0)
    assert audited == 5 and served == 5  # the cloud answered 5 texts in all
    assert m['edgeshrink_audits_total{outcome="no_answer_budget"}'] == 15


def test_a_shift_fires_and_recalibrates_atomically_with_the_old_router_kept(serve_models, device, start, tmp_path):
    settings = tmp_path / "serve.yaml"
    settings.write_text(yaml.safe_dump({"monitor": {"window": 60, "min_requests": 40, "check_every": 10,
                                                    "audit_fraction": 1.0, "recalibrate": True,
                                                    "min_recalibration_sample": 40,
                                                    "recalibrate_policy": {"policy": "budget", "budget": 0.3}}}))
    before = read_router(device)
    manifest_before = json.loads((device / "manifest.json").read_text())
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0)
    service = start("serve", device, "--cloud", cloud.url, "--port", 0, "--config", settings)
    rng = np.random.default_rng(0)
    long_texts = [" ".join(rng.choice(WORDS, 200)) for _ in range(160)]  # past the 128-token max_length
    with Client(service.url, timeout_s=60) as client:
        for start_at in range(0, len(long_texts), 20):
            client.classify(long_texts[start_at:start_at + 20])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not client.metrics().get(
                'edgeshrink_recalibrations_total{outcome="done"}'):
            time.sleep(0.2)
        m = client.metrics()
    import httpx

    report = httpx.get(service.url + "/v1/monitor").json()
    ready = httpx.get(service.url + "/readyz").json()
    assert m['edgeshrink_drift_alarms_total{signal="truncated"}'] >= 1
    assert m['edgeshrink_recalibrations_total{outcome="done"}'] == 1
    assert ready["drift"]["recalibrations"] == 1 and len(report["recalibrations"]) == 1
    log = service.stderr()
    assert "drift: the share of inputs cut at max_length differs from calibration" in log
    assert "recalibrated (" in log and report["recalibrations"][0]["file"] in log

    manifest = json.loads((device / "manifest.json").read_text())
    new_file = manifest["router"]["file"]
    assert new_file.startswith("router-") and new_file == report["recalibrations"][0]["file"]
    history = manifest["router_history"]
    assert history[-1]["file"] == "router.json" and history[-1]["sha256"] == manifest_before["router"]["sha256"]
    assert "drift: " in history[-1]["reason"]
    assert json.loads((device / "router.json").read_text()) == before  # the old router kept as it was
    after = read_router(device)  # the hash in the manifest matches the new file
    assert after["label_free"] and after["policy"]["policy"] == "budget" and after["data"]["sampled"] >= 40
    load(device)  # every file of the bundle still verifies


def test_recalibration_that_fails_midway_leaves_the_router_as_it_was(device, monkeypatch):
    from edgeshrink import _files
    from edgeshrink.route.monitor import MonitorConfig
    from edgeshrink.serve.metrics import ClassifierMetrics
    from edgeshrink.serve.watch import RouterWatch

    router = Router.from_bundle(device, None)
    watch = RouterWatch(device, router, MonitorConfig(recalibrate=True), ClassifierMetrics(), log=lambda m: None)
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1, 1], 200)
    sample = [(p, p[::-1] if i % 5 == 0 else p, False, False) for i, p in enumerate(probs)]
    files_before = sorted(p.name for p in device.iterdir())

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(_files, "atomic_write_text", crash)
    with pytest.raises(OSError):
        watch.recalibrate_now(sample, ["confidence"])
    assert sorted(p.name for p in device.iterdir()) == files_before  # nothing half-written left
    assert read_router(device) == router.settings and watch.router is router
    monkeypatch.undo()
    record = watch.recalibrate_now(sample, ["confidence"])
    assert read_router(device)["label_free"] and watch.router.settings["data"]["sampled"] == 200
    assert (device / record["file"]).exists() and watch.recalibrations == [record]


def test_route_monitor_replays_a_file_and_reads_a_live_service(serve_models, start, tmp_path):
    from typer.testing import CliRunner

    from edgeshrink.cli import app
    from tests.conftest import write_csv

    runner = CliRunner()
    rng = np.random.default_rng(2)
    usual = write_csv(tmp_path / "usual.csv", [(t, "pos" if y == "positive" else "neg")
                                               for t, y in make_texts(300, seed=21)])
    shifted = write_csv(tmp_path / "long.csv", [(" ".join(rng.choice(WORDS, 200)), "pos") for _ in range(300)])
    base = ["route", "monitor", "--device", str(serve_models["device"]), "--cloud", str(serve_models["cloud"]),
            "--audit-fraction", "0.5", "--label-map", "pos=positive,neg=negative"]
    quiet = runner.invoke(app, base + ["--data", str(usual), "--json", str(tmp_path / "usual.json")])
    assert quiet.exit_code == 0, quiet.output
    report = json.loads((tmp_path / "usual.json").read_text())
    assert report["requests"] == 300 and "truncated" not in report["report"]["firing"]
    assert set(report["accuracy"]) == {"device_only", "cloud_only", "hybrid"}
    assert report["report"]["audit"]["audited"] > 50 and "hybrid accuracy on the stream" in quiet.output
    loud = runner.invoke(app, base + ["--data", str(shifted), "--json", str(tmp_path / "long.json")])
    assert loud.exit_code == 0, loud.output
    fired = json.loads((tmp_path / "long.json").read_text())
    assert "truncated" in fired["report"]["firing"] and fired["report"]["signals"]["truncated"]["first_fired_at"] <= 200
    assert any(e["signal"] == "truncated" and e["firing"] for e in fired["events"])

    service = start("serve", serve_models["device"], "--port", 0)
    with Client(service.url) as client:
        client.classify([t for t, _ in make_texts(30, seed=4)])
    live = runner.invoke(app, ["route", "monitor", "--url", service.url, "--json", str(tmp_path / "live.json")])
    assert live.exit_code == 0, live.output
    assert json.loads((tmp_path / "live.json").read_text())["report"]["requests"] == 30
    assert "route monitor: 30 requests" in live.output
    for args, message in ((["route", "monitor"], "give --device and --data"),
                          (["route", "monitor", "--url", service.url, "--data", str(usual)], "--url reads a running"),
                          (["route", "monitor", "--url", "http://127.0.0.1:9"], "cannot reach http://127.0.0.1:9")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output

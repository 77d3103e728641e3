"""Fault drill against real servers: the cloud fails with 500s, stalls past the deadline, comes back, and is
killed. Every request is answered (device-fallback while the cloud cannot), the device service never
answers 5xx, the breaker opens and closes again, and the counters match what was injected — with the device
calling the cloud over edgeshrink's /v1/classify and over the Open Inference Protocol (KServe v2)."""

import json
import time

import pytest

from edgeshrink.client import Client
from tests.conftest import make_texts

TEXTS = [t for t, _ in make_texts(40, seed=5)]


def _round(client, counts):
    results = client.classify(TEXTS)
    for r in results:
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    return results


@pytest.mark.timeout(240)
@pytest.mark.parametrize("protocol", ["edgeshrink", "v2"])
def test_cloud_failures_fall_back_and_the_breaker_recovers(start, serve_models, tmp_path, protocol):
    faults = tmp_path / "faults.json"
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0, "--faults", faults)
    over = ["--cloud-protocol", "v2", "--cloud-model", serve_models["cloud"].name] if protocol == "v2" else []
    device = start("serve", serve_models["device"], "--cloud", cloud.url, "--port", 0, "--deadline-ms", 400,
                   "--retries", 1, "--breaker-failures", 2, "--breaker-reset-s", 1, *over)
    counts: dict[str, int] = {}
    with Client(device.url, timeout_s=30) as client:
        healthy = _round(client, counts)
        escalated_per_round = sum(r["source"] == "cloud" for r in healthy)
        assert escalated_per_round > 0

        faults.write_text(json.dumps({"status": 500}))
        failing = [_round(client, counts) for _ in range(3)]
        assert all(r["source"] in ("device", "device-fallback") for rnd in failing for r in rnd)
        reasons = [{r["fallback_reason"] for r in rnd if r["source"] == "device-fallback"} for rnd in failing]
        assert reasons == [{"http_5xx"}, {"http_5xx"}, {"breaker_open"}]  # 2 failed escalations open it
        assert client.metrics()["edgeshrink_breaker_open"] == 1
        faults.unlink()
        time.sleep(1.2)  # past breaker_reset_s: the next escalation probes the cloud
        recovered = _round(client, counts)
        assert {r["source"] for r in recovered} == {"device", "cloud"}
        assert client.metrics()["edgeshrink_breaker_open"] == 0

        faults.write_text(json.dumps({"delay_ms": 1500}))  # slower than the 400 ms deadline
        t0 = time.monotonic()
        slow = _round(client, counts)
        assert time.monotonic() - t0 < 1.4  # answered within the deadline, not after the cloud's stall
        assert {r["fallback_reason"] for r in slow if r["source"] == "device-fallback"} == {"deadline"}
        faults.unlink()
        time.sleep(1.2)
        _round(client, counts)  # probe closes the breaker again if the deadline failure had opened it

        cloud.kill()
        dead = [_round(client, counts) for _ in range(3)]
        reasons = [{r["fallback_reason"] for r in rnd if r["source"] == "device-fallback"} for rnd in dead]
        assert reasons == [{"unreachable"}, {"unreachable"}, {"breaker_open"}]
        m = client.metrics()

    rounds = 1 + 3 + 1 + 1 + 1 + 3
    n = escalated_per_round  # the same texts escalate every round
    assert sum(counts.values()) == rounds * len(TEXTS)  # every text answered
    assert m['edgeshrink_requests_total{path="/v1/classify",status="200"}'] == rounds  # no 5xx, no 4xx
    assert m['edgeshrink_escalations_total'] == rounds * n
    assert counts["cloud"] == 3 * n and counts["device-fallback"] == 7 * n
    assert m['edgeshrink_texts_total{source="device-fallback"}'] == 7 * n
    # what was injected: 2 rounds of 500s (2 attempts each), 1 stall past the deadline, 2 rounds refused
    assert m['edgeshrink_fallbacks_total{reason="http_5xx"}'] == 2 * n
    assert m['edgeshrink_cloud_calls_total{outcome="http_5xx"}'] == 4
    assert m['edgeshrink_fallbacks_total{reason="deadline"}'] == n
    assert m['edgeshrink_fallbacks_total{reason="unreachable"}'] == 2 * n
    assert m['edgeshrink_fallbacks_total{reason="breaker_open"}'] == 2 * n
    assert m['edgeshrink_breaker_transitions_total{to="open"}'] == 2
    assert m['edgeshrink_breaker_transitions_total{to="closed"}'] == 1

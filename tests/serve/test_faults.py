"""Fault drill against real servers: the cloud fails with 500s, stalls past the deadline, comes back, and is
killed. Every request is answered (device-fallback while the cloud cannot), the device service never
answers 5xx, the breaker opens and closes again, and the counters match what was injected — with the device
calling the cloud over edgeshrink's /v1/classify and over the Open Inference Protocol (KServe v2)."""

import pytest

from edgeshrink.client import Client
from tests.serve.drill import TEXTS, answer_round, drill_until_killed, fallback_reasons


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
        n = drill_until_killed(client, faults, counts)  # the same texts escalate every round
        cloud.kill()
        dead = [answer_round(client, counts) for _ in range(3)]
        assert fallback_reasons(dead) == [{"unreachable"}, {"unreachable"}, {"breaker_open"}]
        m = client.metrics()

    rounds = 1 + 3 + 1 + 1 + 1 + 3
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

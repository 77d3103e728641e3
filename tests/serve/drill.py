"""The fault drill both cloud engines go through (tests/serve/test_faults.py on uvicorn, test_ray_engine.py on
Ray Serve): a healthy round, 500s until the breaker opens, recovery, a stall past the deadline, recovery
again. The device service must be started with --deadline-ms 400 --retries 1 --breaker-failures 2
--breaker-reset-s 1 and the cloud with --faults FAULTS."""

import json
import time

from tests.conftest import make_texts

TEXTS = [t for t, _ in make_texts(40, seed=5)]


def answer_round(client, counts: dict) -> list[dict]:
    """One request of TEXTS; tallies the answers' sources into ``counts``."""
    results = client.classify(TEXTS)
    for r in results:
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    return results


def fallback_reasons(rounds: list[list[dict]]) -> list[set]:
    return [{r["fallback_reason"] for r in rnd if r["source"] == "device-fallback"} for rnd in rounds]


def drill_until_killed(client, faults, counts: dict) -> int:
    """Healthy → 500s (2 failed escalations open the breaker) → recovered → stalled past the deadline →
    probed closed. Returns how many texts of TEXTS escalate per round (the same every round). 7 rounds."""
    healthy = answer_round(client, counts)
    escalated = sum(r["source"] == "cloud" for r in healthy)
    assert escalated > 0

    faults.write_text(json.dumps({"status": 500}))
    failing = [answer_round(client, counts) for _ in range(3)]
    assert all(r["source"] in ("device", "device-fallback") for rnd in failing for r in rnd)
    assert fallback_reasons(failing) == [{"http_5xx"}, {"http_5xx"}, {"breaker_open"}], fallback_reasons(failing)
    assert client.metrics()["edgeshrink_breaker_open"] == 1
    faults.unlink()
    time.sleep(1.2)  # past breaker_reset_s: the next escalation probes the cloud
    assert {r["source"] for r in answer_round(client, counts)} == {"device", "cloud"}
    assert client.metrics()["edgeshrink_breaker_open"] == 0

    faults.write_text(json.dumps({"delay_ms": 1500}))  # slower than the 400 ms deadline
    t0 = time.monotonic()
    slow = answer_round(client, counts)
    assert time.monotonic() - t0 < 1.4  # answered within the deadline, not after the cloud's stall
    assert fallback_reasons([slow]) == [{"deadline"}]
    faults.unlink()
    time.sleep(1.2)
    answer_round(client, counts)  # the probe closes the breaker again if the deadline failure had opened it
    return escalated

"""The services' counters and histograms, exposed at ``GET /metrics`` in Prometheus text format.

Each app owns its registry (no process-wide state), so two services in one process do not mix counts.
"""

from __future__ import annotations

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgeshrink_requests", "HTTP requests by path and status code", ["path", "status"],
                                registry=r)
        self.rejected = Counter("edgeshrink_rejected_requests", "Requests refused before inference, by reason",
                                ["reason"], registry=r)
        self.texts = Counter("edgeshrink_texts", "Texts answered, by source", ["source"], registry=r)
        self.escalations = Counter("edgeshrink_escalations", "Texts the router sent to the cloud", registry=r)
        self.fallbacks = Counter("edgeshrink_fallbacks", "Escalated texts answered by the device, by reason",
                                 ["reason"], registry=r)
        self.cloud_calls = Counter("edgeshrink_cloud_calls", "HTTP calls to the cloud, by outcome", ["outcome"],
                                   registry=r)
        self.latency = Histogram("edgeshrink_latency_seconds", "Time from request to answer, per text, by source",
                                 ["source"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("edgeshrink_batch_size", "Texts per model call (micro-batching)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.model_cpu = Counter("edgeshrink_model_cpu_seconds", "CPU seconds the model worker thread spent in "
                                 "model calls (tokenize, run, post-process)", registry=r)
        self.breaker_state = Gauge("edgeshrink_breaker_open", "1 while the cloud circuit breaker is open or "
                                   "half-open", registry=r)
        self.breaker_transitions = Counter("edgeshrink_breaker_transitions", "Circuit breaker state changes",
                                           ["to"], registry=r)
        # the router's watch (serve/watch.py): drift signals, the shadow audit, recalibrations
        self.drift_firing = Gauge("edgeshrink_drift_firing", "1 while a drift signal fires", ["signal"], registry=r)
        self.drift_p_value = Gauge("edgeshrink_drift_p_value", "The latest p-value of each drift signal's test",
                                   ["signal"], registry=r)
        self.drift_alarms = Counter("edgeshrink_drift_alarms", "Times a drift signal started firing", ["signal"],
                                    registry=r)
        self.audits = Counter("edgeshrink_audits", "Device answers checked by the cloud in the background, by "
                              "outcome", ["outcome"], registry=r)
        self.audit_disagreement = Gauge("edgeshrink_audit_disagreement", "Audited disagreement among device "
                                        "answers: estimate and interval bounds", ["bound"], registry=r)
        self.recalibrations = Counter("edgeshrink_recalibrations", "Label-free recalibrations of the router from "
                                      "the audit sample, by outcome", ["outcome"], registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def parse(text: str) -> dict[str, float]:
    """Prometheus text → {'name{label="v",...}': value} (samples only; for tests and the load benchmark)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values

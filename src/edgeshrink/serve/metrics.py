"""The services' counters and histograms, exposed at ``GET /metrics`` in Prometheus text format.

Each app owns its registry (no process-wide state), so two services in one process do not mix counts.
``Metrics``: what every service counts; ``ClassifierMetrics`` adds micro-batching and the router's watch;
``LLMMetrics`` adds tokens, time to first token and time per output token, named as vLLM and SGLang name
theirs (``prompt_tokens_total``, ``generation_tokens_total``, ``time_to_first_token_seconds``,
``request_time_per_output_token_seconds``) under the ``edgeshrink_`` prefix, by who answered (``source``).
"""

from __future__ import annotations

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# vLLM's buckets for the same histograms: a CPU's first token takes from milliseconds to tens of seconds
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)


class Metrics:
    """What every service counts."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgeshrink_requests", "HTTP requests by path and status code", ["path", "status"],
                                registry=r)
        self.rejected = Counter("edgeshrink_rejected_requests", "Requests refused before inference, by reason",
                                ["reason"], registry=r)
        self.texts = Counter("edgeshrink_texts", "Texts answered, by source", ["source"], registry=r)
        self.escalations = Counter("edgeshrink_escalations", "Texts sent to the cloud (by the router, or asked for)", registry=r)
        self.fallbacks = Counter("edgeshrink_fallbacks", "Escalated texts answered by the device, by reason",
                                 ["reason"], registry=r)
        self.cloud_calls = Counter("edgeshrink_cloud_calls", "HTTP calls to the cloud, by outcome", ["outcome"],
                                   registry=r)
        self.latency = Histogram("edgeshrink_latency_seconds", "Time from request to answer, per text, by source",
                                 ["source"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_cpu = Counter("edgeshrink_model_cpu_seconds", "CPU seconds the model worker thread spent in "
                                 "model calls (classifiers: tokenize, run, post-process; language models: generate)", registry=r)
        self.breaker_state = Gauge("edgeshrink_breaker_open", "1 while the cloud circuit breaker is open or "
                                   "half-open", registry=r)
        self.breaker_transitions = Counter("edgeshrink_breaker_transitions", "Circuit breaker state changes",
                                           ["to"], registry=r)

    def watch_metrics(self) -> None:
        """The router's watch (serve/watch.py, serve/llm/watch.py): drift signals, the shadow audit,
        recalibrations."""
        from prometheus_client import Counter, Gauge

        r = self.registry
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


class ClassifierMetrics(Metrics):
    """The classifier services': micro-batching, and the router's watch on the device service."""

    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        super().__init__()
        r = self.registry
        self.watch_metrics()
        self.batch_size = Histogram("edgeshrink_batch_size", "Texts per model call (micro-batching)",
                                    buckets=BATCH_BUCKETS, registry=r)
        # updates over the air (serve --update-from; serve/updates.py)
        self.model_version = Gauge("edgeshrink_model_version", "The release version being served (0: none)",
                                   registry=r)
        self.update_checks = Counter("edgeshrink_update_checks", "Update channel checks, by outcome (installed, "
                                     "up_to_date, refused, failed)", ["outcome"], registry=r)
        self.rollbacks = Counter("edgeshrink_rollbacks", "Automatic rollbacks of a new version, by reason "
                                 "(errors, drift)", ["reason"], registry=r)


class LLMMetrics(Metrics):
    """The language-model services': tokens and their timing, per answer, by who answered (``source``: device,
    cloud, device-fallback). Tokens are counted with the served model's tokenizer, the cloud's answers too.
    There is no micro-batching: one generation runs at a time."""

    def __init__(self):
        from prometheus_client import Counter, Histogram

        super().__init__()
        r = self.registry
        self.watch_metrics()
        self.prompt_tokens = Counter("edgeshrink_prompt_tokens", "Prompt tokens of the answered requests, by who "
                                     "answered", ["source"], registry=r)
        self.generation_tokens = Counter("edgeshrink_generation_tokens", "Tokens of the answers, by who answered",
                                         ["source"], registry=r)
        self.ttft = Histogram("edgeshrink_time_to_first_token_seconds", "Time from the request to the first token "
                              "of its answer, by who answered (a routed answer's first token comes after the router "
                              "has decided)", ["source"], buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("edgeshrink_request_time_per_output_token_seconds", "Per answer of 2 tokens or more: "
                              "time from its first token to its last, over the tokens after the first (1 / tokens "
                              "per second)", ["source"], buckets=TPOT_BUCKETS, registry=r)
        # token-level handoff (serve --llm-policy handoff): answers the device started and the cloud continued, and
        # who wrote the tokens of the answers routed that way
        self.handoffs = Counter("edgeshrink_handoffs", "Answers handed from the device to the cloud mid-way (at "
                                "the first token below the handoff threshold)", registry=r)
        self.handoff_tokens = Counter("edgeshrink_handoff_tokens", "Tokens of the answers routed by handoff, by "
                                      "who wrote them (device, cloud)", ["source"], registry=r)
        # vLLM's spec_decode_num_draft_tokens / _accepted_tokens: prompt lookup's drafts (serve --prompt-lookup)
        self.draft_tokens = Counter("edgeshrink_spec_decode_num_draft_tokens", "Tokens drafted by prompt lookup",
                                    registry=r)
        self.accepted_tokens = Counter("edgeshrink_spec_decode_num_accepted_tokens", "Drafted tokens that were the "
                                       "tokens drawn (each saved one pass of the model)", registry=r)

    def answered(self, source: str, prompt_tokens: int, completion_tokens: int, ttft_s: float | None,
                 decode_s: float | None) -> None:
        """Count one answer: its tokens, the time to its first token, and ``decode_s`` from that to its last."""
        self.prompt_tokens.labels(source=source).inc(prompt_tokens)
        self.generation_tokens.labels(source=source).inc(completion_tokens)
        if ttft_s is not None:
            self.ttft.labels(source=source).observe(ttft_s)
        if decode_s is not None and completion_tokens > 1:
            self.tpot.labels(source=source).observe(decode_s / (completion_tokens - 1))


def parse(text: str) -> dict[str, float]:
    """Prometheus text → {'name{label="v",...}': value} (samples only; for tests and the load benchmark)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values

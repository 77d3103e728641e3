"""The LLM service's watch (issue 31): drift signals on the handoff and answer signals, the background audit, and the
label-free recalibration, on synthetic token streams (no model, no HTTP: serve/llm/watch.py and the routing engine)."""

import asyncio
import json
import threading
from types import SimpleNamespace

import numpy as np

from edgeshrink.route.handoff import HandoffData, handoff_reference
from edgeshrink.route.monitor import MonitorConfig
from edgeshrink.serve.llm.routing import Engine, Routing
from edgeshrink.serve.llm.watch import LLMWatch
from edgeshrink.serve.metrics import LLMMetrics
from tests.serve.test_llm_routing import FakeCloud, FakeGenerator, counter, handoff_router, request

THRESHOLD = -2.0


def answer_tokens(rng, shift: float = 0.0, length: int = 16) -> list:
    """A device answer's tokens: log-probabilities mostly near 0, sometimes low; ``shift`` lowers them all."""
    logprobs = -rng.exponential(0.6, length) - shift
    return [SimpleNamespace(id=int(i), text="x", logprob=float(v), entropy=float(-v)) for i, v in enumerate(logprobs)]


def handed(tokens) -> tuple[list, int]:
    """The tokens the device generates under handoff at THRESHOLD: up to the first below it; how many it kept."""
    for i, t in enumerate(tokens):
        if t.logprob < THRESHOLD:
            return tokens[:i + 1], i
    return tokens, len(tokens)


def reference(rng, n: int = 400) -> dict:
    signals = [np.array([t.logprob for t in answer_tokens(rng)]) for _ in range(n)]
    agree = [np.ones(len(s), bool) for s in signals]
    return handoff_reference(HandoffData(signals, agree, 16), THRESHOLD)


def watch(tmp_path, config: MonitorConfig, seed: int = 0, log=None) -> LLMWatch:
    router = handoff_router(THRESHOLD) | {"answer_tokens": 16, "policy": {"policy": "budget"}}
    router["handoff"]["reference"] = reference(np.random.default_rng(seed))
    return LLMWatch(tmp_path, router, "handoff", config, LLMMetrics(), confidence=lambda tokens: 0.5,
                    log=log or (lambda message: None))


def feed(w: LLMWatch, rng, answers: int, shift: float = 0.0) -> None:
    for _ in range(answers):
        tokens, kept = handed(answer_tokens(rng, shift))
        w.after_answer("handoff", [1, 2], tokens, kept, kept < len(tokens), cloud=None)


def test_drift_fires_on_a_shifted_prompt_stream_and_seldom_on_an_in_distribution_one(tmp_path):
    """In-distribution streams (the calibration's distribution, new draws) against a shifted one (every token less
    sure): the false-alarm rate is the share of in-distribution streams in which any signal ever fires."""
    config = MonitorConfig(window=200, check_every=25, min_requests=100)
    alarms = 0
    for seed in range(20):
        w = watch(tmp_path, config, seed)
        feed(w, np.random.default_rng(1000 + seed), 600)
        alarms += bool(any(s["fired"] for s in w.monitor.state.values()))
    false_alarm_rate = alarms / 20
    print(f"false-alarm rate over 20 in-distribution streams of 600 answers: {false_alarm_rate:.2f}")
    assert false_alarm_rate <= 0.1
    shifted = watch(tmp_path, config)
    feed(shifted, np.random.default_rng(7), 200, shift=0.8)
    assert {"confidence", "escalation"} <= set(shifted.monitor.firing())


def test_the_audit_never_delays_a_stream():
    """The cloud's verify pass is held until the test releases it: the answer is complete before it returns."""
    gate = asyncio.Event()

    class SlowVerifyCloud(FakeCloud):
        verified = []

        async def verify(self, tokens, draft):
            await gate.wait()
            self.verified.append(draft)
            return [True] * len(draft)

    async def run():
        device = FakeGenerator(["a", "b", "c"], logprob=-0.1)
        cloud = SlowVerifyCloud(["C"])
        routing = Routing(Engine(device), "device", handoff_router(THRESHOLD), LLMMetrics(), cloud)
        routing.watch = LLMWatch(".", routing.router, "handoff", MonitorConfig(audit_fraction=1.0), routing.metrics,
                                 routing.confidence, log=lambda m: None)
        pieces = [p async for p in routing.answer(request(), threading.Event())]
        assert pieces[-1][1]["source"] == "device" and len(routing.watch.pending) == 1 and cloud.verified == []
        gate.set()
        await asyncio.gather(*routing.watch.pending)
        assert cloud.verified == [[0, 1, 2]]
        assert counter(routing.metrics, 'edgeshrink_audits_total{outcome="agree"}') == 1

    asyncio.run(run())


def test_a_firing_signal_recalibrates_the_handoff_label_free_and_commits_it(tmp_path):
    """Shifted prompts on which the device's kept tokens disagree with the cloud: the signals fire, the audited
    answers are collected, and the threshold is recalibrated (stricter, or no handoff at all) into the bundle."""
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {}, "size_bytes": 0}))
    config = MonitorConfig(window=200, check_every=25, min_requests=100, audit_fraction=1.0, recalibrate=True,
                           min_recalibration_sample=60)
    logged = []
    w = watch(tmp_path, config, log=logged.append)
    rng = np.random.default_rng(3)

    class DisagreeingCloud:
        async def verify(self, tokens, draft):  # the cloud would choose otherwise where the device is unsure
            return [bool(rng.random() < 0.7) for _ in draft]

    async def run():
        cloud = DisagreeingCloud()
        for _ in range(400):
            tokens, kept = handed(answer_tokens(rng, shift=0.8))
            w.after_answer("handoff", [1, 2], tokens, kept, kept < len(tokens), cloud)
            await asyncio.sleep(0)
            while w.pending:
                await asyncio.gather(*list(w.pending))
            if w.recalibrations:
                break

    asyncio.run(run())
    assert w.recalibrations, logged
    new = w.router["handoff"]
    assert new["recalibrated_from"] == THRESHOLD and (new["threshold"] is None or new["threshold"] >= THRESHOLD)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    stored = json.loads((tmp_path / manifest["router"]["file"]).read_text())
    assert stored["handoff"]["threshold"] == new["threshold"] and stored["data"]["source"].startswith("live traffic")

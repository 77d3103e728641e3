"""The LLM device service's watch over its router (issue 31): the classifier service's drift monitor, shadow audit and
label-free recalibration (serve/watch.py), on the answer and token signals of generated answers.

Per routed answer, the monitor (route/monitor.py's ``DriftMonitor``) gets one observation, comparable with the
reference the calibration stored (first ``answer_tokens`` tokens of the device's answer, as calibrated):
- **handoff** policy (router["handoff"]["reference"]): ``score``, the mean token signal of the tokens the device
  generated up to and including the one it handed off at; ``escalated``, handed off within those tokens;
- **answer** policy (router["reference"]): ``score``, the router's calibrated confidence in the device's answer;
  ``escalated``, sent to the cloud.
So ``confidence`` (Kolmogorov–Smirnov) and ``escalation`` (Fisher) fire when prompts shift. An
``audit_fraction`` of the answers the device wrote is checked by the cloud in the background, after the stream has
ended and never awaited by it: one teacher-forced pass (`serve-cloud`'s POST /v1/speculate) over the device's
tokens, within the cloud's deadline, breaker and budget, at most ``max_pending_audits`` at once. An answer agrees
when every token the device kept is the cloud's greedy choice; the audited disagreement is tested against the
calibration's (``device_disagreement``).

With ``recalibrate``, once a signal fires the audited answers from then on are collected and, at
``min_recalibration_sample`` of them, the router is recalibrated label-free on them and committed into the bundle
(router-<sha>.json, serve/watch.py's way):
- handoff: the threshold by route/handoff.py's Learn-then-Test on the audited tokens, among thresholds at or above
  the current one (the device stops at its handoff, so the tokens after it were never written: only stricter
  thresholds can be judged; none safe: the cloud writes every answer);
- answer: the confidence re-fitted (Platt) and the policy's threshold chosen again, as ``route calibrate --task
  open`` does.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path

import numpy as np

from edgeshrink.route.handoff import HandoffConfig, HandoffData, handoff_section, handoff_watch_score
from edgeshrink.route.monitor import DriftMonitor, MonitorConfig, Observation
from edgeshrink.serve.cloud_client import CloudFailed
from edgeshrink.serve.watch import WatchBase, log_line


class LLMWatch(WatchBase):
    """``router``: the bundle's router settings; ``policy``: "handoff" or "answer" (the service's, for requests
    that do not choose); ``confidence(tokens)``: the router's calibrated confidence in a device answer."""

    sampled = "audited answers"

    def __init__(self, bundle: str | Path, router: dict, policy: str, config: MonitorConfig, metrics, confidence,
                 log=log_line, seed: int = 0):
        self.bundle, self.router, self.policy, self.config = Path(bundle), router, policy, config
        self.metrics, self.confidence, self.log = metrics, confidence, log
        self.rng = random.Random(seed)
        self.pending: set[asyncio.Task] = set()
        self.sample: list[dict] = []  # audited answers since a signal fired: token signals, agreements, scores
        self.collecting = self.recalibrating = False
        self.recalibrations: list[dict] = []
        self.audit_outcomes = {"agree": 0, "disagree": 0}
        self.answer_tokens = int(router.get("answer_tokens") or 32)
        self.monitor = self._monitor()

    def _monitor(self) -> DriftMonitor:
        reference = self.reference()
        if not reference:
            self.log(f"router.json has no drift reference for the {self.policy} policy (calibrated before edgeshrink "
                     f"stored one): calibrate again to watch it")
        bound = reference.get("device_disagreement")
        what = ("the share of calibration answers with a kept token the cloud would have chosen otherwise"
                if self.policy == "handoff" else "the disagreement among device answers at calibration")
        return DriftMonitor(reference, self.config, [], bound, what)

    def reference(self) -> dict:
        section = self.router.get("handoff") or {} if self.policy == "handoff" else self.router
        return dict(section.get("reference") or {})

    # -- per answer (never awaited beyond this call) -------------------------------------------------------
    def after_answer(self, policy: str, prompt: list[int], tokens: list, kept: int, escalated: bool, cloud) -> None:
        """One routed answer: ``tokens``, the device's tokens (under handoff, up to and including the one it handed
        off at); ``kept``, how many of them the answer kept; ``escalated``, sent to the cloud (handed off)."""
        if policy != self.policy:  # a request that chose the other policy: not what the reference describes
            return
        head = tokens[:self.answer_tokens]
        if policy == "handoff":
            signal = self.router["handoff"]["signal"]
            values = np.array([token_value(t, signal) for t in head])
            score = handoff_watch_score(values)
            escalated = kept < len(head) and kept < self.answer_tokens
        else:
            score = self.confidence(head) if head else 0.0
        self._handle(self.monitor.observe(Observation(score=float(score), routed=True, escalated=bool(escalated),
                                                      truncated=False, unknown=None, label="")))
        self._publish_p_values()
        if cloud is not None and head and self.rng.random() < self.config.audit_fraction:
            self._audit_later(cloud, prompt, head, kept, escalated)

    def _audit_later(self, cloud, prompt, tokens, kept, escalated) -> None:
        if len(self.pending) >= self.config.max_pending_audits:
            self.metrics.audits.labels(outcome="skipped_busy").inc()
            return
        self._spawn(self._audit(cloud, prompt, tokens, kept, escalated))

    async def _audit(self, cloud, prompt, tokens, kept, escalated) -> None:
        try:
            agree = await cloud.verify(list(prompt), [t.id for t in tokens])
        except CloudFailed as failed:
            self.metrics.audits.labels(outcome=f"no_answer_{failed.reason}").inc()
            return
        agree = np.array(agree[:len(tokens)], dtype=bool)
        if self.policy == "handoff" or not escalated:  # the audit signal: answers the device kept (some of)
            if kept:
                self._audited(bool(agree[:kept].all()))
        if self.config.recalibrate and self.collecting:
            signal = (self.router.get("handoff") or {}).get("signal", "logprob")
            self.sample.append({"signals": np.array([token_value(t, signal) for t in tokens]), "agree": agree,
                                "tokens": [(t.logprob, t.entropy) for t in tokens]})
        self._maybe_recalibrate()

    # -- the recalibration (serve/watch.py's WatchBase runs it once a signal fires) ---------------------------
    def recalibrate_now(self, sample: list[dict], firing: list[str]) -> dict:
        """Label-free recalibration of the service's policy on ``sample`` (audited answers), committed into the
        bundle; the new router is used from the next request on (``self.router``, read by the routing)."""
        from edgeshrink.route.calibrate import write_router

        old = self.router
        if self.policy == "handoff":
            section = old["handoff"]
            current = section.get("threshold")
            data = HandoffData([s["signals"] for s in sample], [s["agree"] for s in sample], self.answer_tokens)
            config = HandoffConfig(alpha=section["alpha"], delta=section["delta"], min_prompts=1,
                                   loss=section.get("loss", "token"))
            new_section = handoff_section(data, config, section["signal"],
                                          floor=-math.inf if current is None else float(current))
            if current is None or new_section["threshold"] is None:
                new_section["threshold"] = None  # nothing stricter than "the cloud writes everything"
            router = {**old, "handoff": {**new_section, "recalibrated_from": current}}
            summary = (f"handoff threshold {current} → {new_section['threshold']} on {len(sample)} audited answers; "
                       f"{new_section['guarantee']}")
        else:
            router = {**old, **self._answer_router(sample)}
            summary = (f"answer threshold {old.get('threshold')} → {router['threshold']} on {len(sample)} audited "
                       f"answers")
        data = {"source": "live traffic (audit sample)", "sampled": len(sample), "since_request": self.monitor.seen,
                "firing": firing, "audit_fraction": self.config.audit_fraction}
        router = {**router, "data": data}
        name = write_router(self.bundle, router, replace_reason=f"drift: {', '.join(firing)} firing; label-free "
                                                                f"recalibration on {len(sample)} audited answers")
        self.router = router
        previous, self.monitor = self.monitor, self._monitor()
        fired = {k: v["first_fired_at"] for k, v in previous.state.items() if v["first_fired_at"]}
        record = {"file": name, "at_request": data["since_request"], "time": time.time(), "firing": firing,
                  "first_fired_at": fired, "sample": len(sample), "summary": summary}
        self.recalibrations.append(record)
        return record

    def _answer_router(self, sample: list[dict]) -> dict:
        """The answer policy's confidence and threshold re-fitted on the audited answers (as calibrate_open)."""
        from edgeshrink.route.calibrate import RouteConfig
        from edgeshrink.route.confidence import confidence_scores, fit_platt
        from edgeshrink.route.monitor import reference_from
        from edgeshrink.route.policies import CalibrationData, choose_threshold
        from edgeshrink.runtime.prompted import answer_signals

        signal = self.router["signal"]
        raw = np.array([answer_signals(s["tokens"])[signal] for s in sample])
        agree = np.array([bool(s["agree"].all()) for s in sample])
        temperature, bias = fit_platt(raw, agree)
        fitted = {"temperature": temperature, "bias": bias}
        scores = confidence_scores(signal, np.zeros((len(raw), 2)), {signal: raw}, fitted)
        config = RouteConfig.from_dict({**self.router["policy"], "label_free": True})
        threshold = choose_threshold(CalibrationData(scores, None, None, agree), config, 2)
        answered = scores >= threshold.value
        return {"temperature": temperature, "bias": bias,
                "threshold": None if math.isinf(threshold.value) else threshold.value,
                "escalate_everything": threshold.value == math.inf, "guarantee": threshold.guarantee,
                "reference": reference_from(scores, np.ones(len(raw), bool), ~answered, np.zeros(len(raw), bool),
                                            None, [], np.zeros(len(raw), int),
                                            float(np.mean(~agree[answered])) if answered.any() else None)}

    def status(self) -> dict:
        return {"policy": self.policy, "firing": self.monitor.firing(), "recalibrations": len(self.recalibrations),
                "audit": {k: v for k, v in self.monitor.audit_estimate().items() if k in ("audited", "disagreement")}}

    def report(self) -> dict:
        return {**self.monitor.report(), "policy": self.policy, "audit_outcomes": dict(self.audit_outcomes),
                "recalibrations": list(self.recalibrations), "config": self.config.to_dict()}


def token_value(token, signal: str) -> float:
    """A generated token's handoff signal (route/handoff.py's TOKEN_SIGNALS)."""
    if signal == "margin":
        return float(token.margin)
    return float(token.logprob) if signal == "logprob" else -float(token.entropy)

"""The device service's watch over its router: drift signals on live traffic, the shadow audit, and the
recalibration they can trigger (`edgeshrink serve --audit-fraction 0.1 --recalibrate`).

Per answered text the watch feeds the drift monitor (route/monitor.py). A ``audit_fraction`` of requests is
sampled: an escalated one keeps the cloud's answer it already got; one the device answered (never a
private one) is also sent to the cloud in the background — after the answer has gone out, within the cloud
budget and at most ``max_pending_audits`` at a time — and the cloud's label is compared with the device's.
Those agreements give the audited disagreement rate and its interval; the sampled pairs (device
probabilities, cloud probabilities) are a uniform sample of traffic with the cloud's answers.

When a signal starts firing the watch says so — a log line, ``edgeshrink_drift_firing{signal}``, and
``/readyz`` — and, with ``recalibrate``, collects the sample from then on; once it holds
``min_recalibration_sample`` pairs it recalibrates label-free on them (the calibrate step's own code, the
router's policy unless ``recalibrate_policy`` says otherwise), commits the new router into the bundle
(router-<sha>.json, one manifest rename, the old router kept in ``router_history``), switches the service to
it, logs it and counts it. The new router's reference is that sample, so the monitor then watches for
traffic unlike it.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

import numpy as np

from edgeshrink.route.monitor import DriftMonitor, MonitorConfig, Observation, router_bound, router_reference


def log_line(message: str) -> None:
    print(f"edgeshrink serve: {message}", file=sys.stderr, flush=True)


class WatchBase:
    """What the classifier's and the language-model service's watches share: the drift events, the audit's counts,
    and the recalibration once a signal fires (``recalibrate_now(sample, firing)`` is each one's own). Needs
    ``config``, ``metrics``, ``log``, ``monitor``, ``pending``, ``sample``, ``collecting``, ``recalibrating``,
    ``audit_outcomes``."""

    sampled = "sampled requests"  # what the recalibration sample counts, in the log

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def _publish_p_values(self) -> None:
        for name, state in self.monitor.state.items():  # the latest test of every signal, on /metrics
            if state["p_value"] is not None:
                self.metrics.drift_p_value.labels(signal=name).set(state["p_value"])

    def _audited(self, agree: bool) -> None:
        """One audited device answer: counted, tested, and its interval on /metrics as often as the test runs."""
        self.audit_outcomes["agree" if agree else "disagree"] += 1
        self.metrics.audits.labels(outcome="agree" if agree else "disagree").inc()
        self._handle(self.monitor.audit(agree))
        if self.monitor.audited % self.config.check_every == 0:
            estimate = self.monitor.audit_estimate()
            self.metrics.audit_disagreement.labels(bound="estimate").set(estimate["disagreement"])
            self.metrics.audit_disagreement.labels(bound="low").set(estimate["interval"][0])
            self.metrics.audit_disagreement.labels(bound="high").set(estimate["interval"][1])

    def _handle(self, events: list[dict]) -> None:
        for event in events:
            signal = event["signal"]
            self.metrics.drift_firing.labels(signal=signal).set(1 if event["firing"] else 0)
            if event["firing"]:
                self.metrics.drift_alarms.labels(signal=signal).inc()
                if self.config.recalibrate and not self.collecting:
                    self.collecting, self.sample = True, []  # recalibrate on the traffic from now on
            self.log(event["message"] + (f"; recalibrating after {self.config.min_recalibration_sample} "
                                         f"{self.sampled}" if event["firing"] and self.config.recalibrate else ""))

    def _maybe_recalibrate(self) -> None:
        if not (self.config.recalibrate and self.collecting and not self.recalibrating
                and len(self.sample) >= self.config.min_recalibration_sample):
            return
        if not self.monitor.firing():  # the shift went away before the sample was complete
            self.collecting, self.sample = False, []
            return
        self.recalibrating = True
        self._spawn(self._recalibrate(list(self.sample), self.monitor.firing()))

    async def _recalibrate(self, sample: list, firing: list[str]) -> None:
        try:
            record = await asyncio.to_thread(self.recalibrate_now, sample, firing)
        except Exception as exc:  # noqa: BLE001 - the service goes on with the router it has; say why
            self.metrics.recalibrations.labels(outcome="failed").inc()
            self.log(f"recalibration failed, keeping the current router: {type(exc).__name__}: {exc}")
        else:
            self.metrics.recalibrations.labels(outcome="done").inc()
            self.log(f"recalibrated ({', '.join(firing)} firing): {record['file']} — {record['summary']}")
        finally:
            self.recalibrating, self.collecting, self.sample = False, False, []

    def recalibrate_now(self, sample: list, firing: list[str]) -> dict:
        raise NotImplementedError


class RouterWatch(WatchBase):
    def __init__(self, bundle: str | Path, router, config: MonitorConfig, metrics, log=log_line, seed: int = 0):
        self.bundle, self.router, self.config, self.metrics, self.log = Path(bundle), router, config, metrics, log
        self.labels = list(router.device.labels)
        self.rng = random.Random(seed)
        self.pending: set[asyncio.Task] = set()
        self.sample: list[tuple] = []  # (device probabilities, cloud probabilities, truncated, unknown)
        self.collecting = False  # a signal fired: the sample restarts then, from the new traffic only
        self.recalibrating = False
        self.recalibrations: list[dict] = []
        self.audit_outcomes = {"agree": 0, "disagree": 0}
        self.monitor = self._monitor()

    def _monitor(self) -> DriftMonitor:
        bound, what = router_bound(self.router.settings)
        reference = router_reference(self.router.settings)
        if reference.get("partial"):
            self.log("router.json has no drift reference (calibrated before edgeshrink stored one): only the "
                     "escalation rate is watched; calibrate again to watch the rest")
        return DriftMonitor(reference, self.config, self.labels, bound, what)

    # -- per request ----------------------------------------------------------------------------------------
    def after_answer(self, texts: list[str], pred, scores, reasons: list[str], escalate: list[bool], results,
                     cloud) -> None:
        """Called once a request's answers are ready (never awaited beyond this call: audits run later)."""
        unknown = getattr(pred, "unknown", None)
        for i, text in enumerate(texts):
            self._handle(self.monitor.observe(Observation(
                score=float(scores[i]), routed=reasons[i] in ("confident", "not confident"), escalated=escalate[i],
                truncated=bool(pred.truncated[i]), unknown=None if unknown is None else bool(unknown[i]),
                label=pred.labels[i])))
            if reasons[i] == "private" or self.rng.random() >= self.config.audit_fraction:  # sampled for the audit?
                continue
            row = (pred.probabilities[i], bool(pred.truncated[i]), None if unknown is None else bool(unknown[i]))
            if escalate[i]:
                if results[i].source == "cloud":
                    self._keep(row, results[i].probabilities)
            elif cloud is not None:
                self._audit_later(cloud, text, pred.labels[i], row)
        self._publish_p_values()
        self._maybe_recalibrate()

    def _audit_later(self, cloud, text: str, device_label: str, row: tuple) -> None:
        if len(self.pending) >= self.config.max_pending_audits:
            self.metrics.audits.labels(outcome="skipped_busy").inc()
            return
        self._spawn(self._audit(cloud, text, device_label, row))

    async def _audit(self, cloud, text: str, device_label: str, row: tuple) -> None:
        got = await cloud.classify([text])
        if got.labels is None:
            self.metrics.audits.labels(outcome=f"no_answer_{got.reason}").inc()
            return
        self._audited(got.labels[0] == device_label)
        self._keep(row, got.probabilities[0] or {got.labels[0]: 1.0})
        self._maybe_recalibrate()

    def _keep(self, row: tuple, cloud_probabilities: dict) -> None:
        if not self.config.recalibrate:
            return
        cloud_row = np.array([float(cloud_probabilities.get(label, 0.0)) for label in self.labels])
        self.sample.append((row[0], cloud_row, row[1], row[2]))
        if len(self.sample) > 4 * self.config.min_recalibration_sample:
            del self.sample[0]

    # -- the recalibration --------------------------------------------------------------------------------
    def recalibrate_now(self, sample: list[tuple], firing: list[str]) -> dict:
        """Label-free calibration on ``sample`` with the router's policy (or recalibrate_policy); the new router
        is committed into the bundle and used from the next request on."""
        from edgeshrink.route.calibrate import RouteConfig, build_router, write_router
        from edgeshrink.route.router import Router

        old = self.router.settings
        policy = {**old["policy"], **(self.config.recalibrate_policy.to_dict() if self.config.recalibrate_policy
                                      else {}), "label_free": True}
        config = RouteConfig.from_dict(policy)
        device = np.stack([s[0] for s in sample])
        cloud = np.stack([s[1] for s in sample])
        truncated = np.array([s[2] for s in sample])
        unknown = None if any(s[3] is None for s in sample) else np.array([s[3] for s in sample])
        data = {"source": "live traffic (audit sample)", "sampled": len(sample), "since_request": self.monitor.seen,
                "firing": firing, "audit_fraction": self.config.audit_fraction}
        router = build_router(device, cloud, None, config, self.labels, truncated, unknown, data_info=data,
                              cloud_name=old.get("cloud", ""))
        name = write_router(self.bundle, router, replace_reason=f"drift: {', '.join(firing)} firing; label-free "
                                                                f"recalibration on {len(sample)} sampled requests")
        self.router = Router(self.router.device, None, router)
        previous, self.monitor = self.monitor, self._monitor()
        summary = (f"{router['policy']['policy']} policy, label-free, n={len(sample)}, escalation at calibration "
                   f"{100 * router['calibration']['escalation_rate']:.1f}%; {router['guarantee']}")
        fired = {k: v["first_fired_at"] for k, v in previous.state.items() if v["first_fired_at"]}
        record = {"file": name, "at_request": data["since_request"], "time": time.time(), "firing": firing,
                  "first_fired_at": fired, "sample": len(sample), "summary": summary}
        self.recalibrations.append(record)
        return record

    def status(self) -> dict:
        return {"firing": self.monitor.firing(), "recalibrations": len(self.recalibrations),
                "router": self.router.settings.get("data", {}).get("source") if self.recalibrations else "as shipped",
                "audit": {k: v for k, v in self.monitor.audit_estimate().items() if k in ("audited", "disagreement")}}

    def report(self) -> dict:
        return {**self.monitor.report(), "audit_outcomes": dict(self.audit_outcomes),
                "recalibrations": list(self.recalibrations), "config": self.config.to_dict(),
                "router": {"policy": self.router.settings["policy"]["policy"],
                           "label_free": self.router.settings.get("label_free"),
                           "threshold": self.router.settings.get("threshold")}}


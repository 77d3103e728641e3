"""Keep a router honest after deployment: is live traffic still like the calibration data, and what does the
cloud say about the device's answers?

    monitor = DriftMonitor(router["reference"], MonitorConfig(), labels, bound=router_bound(router))
    events = monitor.observe(Observation(score, routed=True, escalated=False, truncated=False, unknown=False,
                                         label="positive"))
    monitor.audit(agree=True)        # a device answer the cloud checked in the background
    monitor.report()                 # every signal: statistic, p-value, firing, first fired at request N

Drift signals, each a two-sample test of the last ``window`` requests against the calibration split the
router was fitted on (``router.json["reference"]``), run every ``check_every`` requests once ``min_requests``
have been seen; a signal fires while its p-value is below ``p_value``:
- ``escalation``: the share of confidence-routed requests escalated, against the calibration share
  (Fisher's exact test of the two binomial proportions: the calibrated rate is itself estimated);
- ``confidence``: the device model's calibrated confidence (Kolmogorov–Smirnov, two samples);
- ``truncated`` and ``unknown``: the share of inputs the device cuts at its max_length, and of inputs with a
  token outside its vocabulary (Fisher's exact test each; ``unknown`` only for tokenizers with an unknown token);
- ``label_mix``: the device's predicted labels (chi-square test of the 2 x labels table).
The shadow audit adds ``audit``: the disagreement rate among audited device answers, with its exact
(Clopper–Pearson) interval, fires when the interval lies wholly above the bound — the router's α for
risk policies (a label-free α bounds exactly this; a labelled one bounds error, of which disagreement with
a better cloud is the observable proxy), else the disagreement the calibration data showed among device
answers. Tests are repeated on overlapping windows, so the p-value bound is strict (1e-3) and the
false-alarm rate on in-distribution traffic is measured (BENCHMARKS.md), not assumed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import numpy as np
from pydantic import Field

from edgeshrink.config import Config
from edgeshrink.route.policies import PolicyConfig

SIGNALS = ("escalation", "confidence", "truncated", "unknown", "label_mix", "audit")


class MonitorConfig(Config):
    version: int = 1
    window: int = Field(300, ge=20)  # recent requests each drift test looks at
    check_every: int = Field(25, ge=1)  # run the tests every this many requests
    min_requests: int = Field(100, ge=10)  # requests in the window before any test runs
    p_value: float = Field(1e-3, gt=0, lt=1)  # a signal fires while its test's p-value is below this
    audit_fraction: float = Field(0.0, ge=0, le=1)  # requests sampled for the audit (device answers: also sent
    # to the cloud in the background; escalated ones: the cloud's answer is kept)
    audit_confidence: float = Field(0.95, gt=0, lt=1)  # of the audited disagreement's interval
    min_audited: int = Field(30, ge=1)  # audited device answers before the audit signal is tested
    max_pending_audits: int = Field(8, ge=1)  # cloud checks in flight at once; beyond, a sampled request is skipped
    recalibrate: bool = False  # on a firing signal, recalibrate label-free from the sample taken since
    min_recalibration_sample: int = Field(300, ge=30)  # sampled requests (since the signal fired) it needs
    # the policy of a recalibration; None: the router's own, made label-free
    recalibrate_policy: PolicyConfig | None = None


@dataclass
class Observation:
    score: float  # the device's calibrated confidence
    routed: bool  # decided by confidence (not private, cloud-only or truncated)
    escalated: bool  # sent to the cloud
    truncated: bool
    unknown: bool | None  # a token outside the vocabulary (None: the tokenizer has no unknown token)
    label: str  # the device's prediction


def reference_from(scores: np.ndarray, kept: np.ndarray, escalated: np.ndarray, truncated: np.ndarray,
                   unknown: np.ndarray | None, labels: list[str], predicted: np.ndarray,
                   device_disagreement: float | None) -> dict:
    """What the monitor compares live traffic with, from the calibration split (stored in router.json).

    ``scores``/``escalated``: per kept (confidence-routed) example; ``truncated``, ``unknown``, ``predicted``
    (label indices): per example of the split."""
    mix = np.bincount(predicted, minlength=len(labels))
    return {"n": int(len(truncated)), "routed": int(len(scores)),
            "scores": [float(f"{s:.6g}") for s in np.sort(scores)],
            "escalated": int(np.sum(escalated)), "truncated": int(np.sum(truncated)),
            "unknown": None if unknown is None else int(np.sum(unknown)),
            "label_counts": {label: int(c) for label, c in zip(labels, mix)},
            "device_disagreement": device_disagreement}


def router_reference(router: dict) -> dict:
    """The router's reference for the monitor; a router.json from before references were stored still gives the
    calibrated escalation rate (every other signal then waits for a recalibration)."""
    if router.get("reference"):
        return router["reference"]
    calibration, n = router.get("calibration") or {}, router.get("n")
    if calibration.get("escalation_rate") is None or not n:
        return {}
    return {"routed": int(n), "escalated": int(round(calibration["escalation_rate"] * n)), "partial": True}


def router_bound(router: dict) -> tuple[float | None, str]:
    """The audited disagreement's bound and what it is: the router's α, or the calibration disagreement."""
    reference = router.get("reference") or {}
    if router.get("alpha") is not None and "risk" in (router.get("policy") or {}).get("policy", ""):
        what = "the router's α (a bound on disagreement)" if router.get("label_free") else \
            "the router's α (a bound on error; disagreement with the cloud is its proxy)"
        return float(router["alpha"]), what
    if reference.get("device_disagreement") is not None:
        return float(reference["device_disagreement"]), "the disagreement among device answers at calibration"
    return None, "no bound: this router.json has no reference (recalibrate to monitor it)"


class DriftMonitor:
    """Online drift tests and the audit estimate. Not thread-safe: the service calls it from its event loop."""

    def __init__(self, reference: dict | None, config: MonitorConfig, labels: list[str], bound: float | None = None,
                 bound_what: str = ""):
        self.reference, self.config, self.labels = dict(reference or {}), config, list(labels)
        self.bound, self.bound_what = bound, bound_what
        self.window: deque[Observation] = deque(maxlen=config.window)
        self.audits: deque[bool] = deque(maxlen=max(config.window, config.min_audited))
        self.seen = self.audited = 0
        self.state = {name: {"firing": False, "p_value": None, "statistic": None, "n": 0, "first_fired_at": None,
                             "fired": 0} for name in SIGNALS}
        self.ref_scores = np.asarray(self.reference.get("scores") or [], dtype=float)

    # -- feeding ------------------------------------------------------------------------------------------
    def observe(self, observation: Observation) -> list[dict]:
        """Add one request; every ``check_every`` requests run the tests. Returns the signals that started or
        stopped firing (``{"signal", "firing", "p_value", "at", "message"}``)."""
        self.window.append(observation)
        self.seen += 1
        if self.seen % self.config.check_every or len(self.window) < self.config.min_requests:
            return []
        return self.check()

    def audit(self, agree: bool) -> list[dict]:
        """One audited device answer: did the cloud give the same label?"""
        self.audits.append(bool(agree))
        self.audited += 1
        if len(self.audits) < self.config.min_audited or self.audited % self.config.check_every:
            return []
        return self._update("audit", *self._audit_test())

    # -- the tests ----------------------------------------------------------------------------------------
    def check(self) -> list[dict]:
        events = []
        for name, test in (("escalation", self._escalation), ("confidence", self._confidence),
                           ("truncated", self._truncated), ("unknown", self._unknown),
                           ("label_mix", self._label_mix)):
            result = test()
            if result is not None:
                events += self._update(name, *result)
        return events

    def _update(self, name: str, p_value: float, statistic: float, n: int, fires: bool | None = None) -> list[dict]:
        state = self.state[name]
        firing = bool(p_value < self.config.p_value if fires is None else fires)
        state.update(p_value=float(p_value), statistic=float(statistic), n=int(n))
        if firing == state["firing"]:
            return []
        state["firing"] = firing
        if firing:
            state["fired"] += 1
            if state["first_fired_at"] is None:
                state["first_fired_at"] = self.seen
        return [{"signal": name, "firing": firing, "p_value": float(p_value), "at": self.seen,
                 "message": self._message(name, firing)}]

    def _message(self, name: str, firing: bool) -> str:
        s = self.state[name]
        if not firing:
            return f"drift signal {name} is quiet again (p={s['p_value']:.2g} over the last {s['n']})"
        what = {"escalation": "the escalation rate differs from calibration",
                "confidence": "the device's confidence is distributed unlike calibration",
                "truncated": "the share of inputs cut at max_length differs from calibration",
                "unknown": "the share of inputs with out-of-vocabulary tokens differs from calibration",
                "label_mix": "the mix of predicted labels differs from calibration",
                "audit": f"the audited disagreement exceeds {self.bound_what} ({self.bound})"}[name]
        return f"drift: {what} (p={s['p_value']:.2g}, statistic {s['statistic']:.3g}, over the last {s['n']})"

    def _proportion(self, live_k: int, live_n: int, ref_k: int | None, ref_n: int) -> tuple | None:
        from scipy.stats import fisher_exact

        if ref_k is None or ref_n == 0 or live_n == 0:
            return None
        _, p = fisher_exact([[live_k, live_n - live_k], [ref_k, ref_n - ref_k]])
        return p, live_k / live_n - ref_k / ref_n, live_n

    def _escalation(self):
        routed = [o for o in self.window if o.routed]
        ref = self.reference
        if "escalated" not in ref or len(routed) < self.config.min_requests // 2:
            return None
        return self._proportion(sum(o.escalated for o in routed), len(routed), ref["escalated"], ref["routed"])

    def _confidence(self):
        from scipy.stats import ks_2samp

        live = [o.score for o in self.window if o.routed]
        if len(self.ref_scores) == 0 or len(live) < self.config.min_requests // 2:
            return None
        result = ks_2samp(live, self.ref_scores)
        return result.pvalue, result.statistic, len(live)

    def _truncated(self):
        return self._proportion(sum(o.truncated for o in self.window), len(self.window),
                                self.reference.get("truncated"), self.reference.get("n", 0))

    def _unknown(self):
        live = [o.unknown for o in self.window if o.unknown is not None]
        if not live:
            return None
        return self._proportion(sum(live), len(live), self.reference.get("unknown"), self.reference.get("n", 0))

    def _label_mix(self):
        from scipy.stats import chi2_contingency

        counts = self.reference.get("label_counts")
        if not counts:
            return None
        live = [sum(o.label == label for o in self.window) for label in self.labels]
        ref = [counts.get(label, 0) for label in self.labels]
        statistic, p, _, _ = chi2_contingency(np.array([live, ref]) + 0.5)  # + 0.5: no empty cells
        return p, statistic, len(self.window)

    def _audit_test(self) -> tuple:
        from scipy.stats import binomtest

        estimate = self.audit_estimate()
        n, rate = estimate["audited"], estimate["disagreement"]
        if self.bound is None:
            return 1.0, rate, n, False
        # one-sided: is disagreement above the bound?
        p = binomtest(sum(not a for a in self.audits), n, self.bound, alternative="greater").pvalue
        return p, rate, n, estimate["interval"][0] > self.bound

    # -- reporting ----------------------------------------------------------------------------------------
    def audit_estimate(self) -> dict:
        from scipy.stats import binomtest

        n = len(self.audits)
        if n == 0:
            return {"audited": 0, "disagreement": None, "interval": None, "bound": self.bound,
                    "bound_is": self.bound_what}
        k = sum(not a for a in self.audits)
        ci = binomtest(k, n).proportion_ci(self.config.audit_confidence, method="exact")
        return {"audited": n, "disagreement": k / n, "interval": [float(ci.low), float(ci.high)],
                "confidence": self.config.audit_confidence, "bound": self.bound, "bound_is": self.bound_what}

    def firing(self) -> list[str]:
        return [name for name, s in self.state.items() if s["firing"]]

    def report(self) -> dict:
        live = list(self.window)
        return {"requests": self.seen, "window": len(live), "p_value_bound": self.config.p_value,
                "firing": self.firing(), "signals": {k: dict(v) for k, v in self.state.items()},
                "live": {"escalation_rate": _share([o.escalated for o in live if o.routed]),
                         "truncated_rate": _share([o.truncated for o in live]),
                         "unknown_rate": _share([o.unknown for o in live if o.unknown is not None])},
                "reference": {"n": self.reference.get("n"), "escalation_rate": _ratio(
                    self.reference.get("escalated"), self.reference.get("routed")),
                    "truncated_rate": _ratio(self.reference.get("truncated"), self.reference.get("n")),
                    "unknown_rate": _ratio(self.reference.get("unknown"), self.reference.get("n"))},
                "audit": self.audit_estimate()}


def _share(values: list) -> float | None:
    return float(np.mean(values)) if values else None


def _ratio(k, n) -> float | None:
    return None if k is None or not n else k / n



def replay(device, data, cloud=None, config: MonitorConfig | None = None, limit: int | None = None,
           batch_size: int = 32, seed: int = 0, progress=None) -> dict:
    """Replay a traffic file, in order, through the device bundle's router and the drift monitor
    (`edgeshrink route monitor --device B --data F [--cloud C]`). With a cloud model every text also gets the
    cloud's answer: a sampled ``audit_fraction`` of the device's answers is audited against it and, with labels,
    the device, cloud and hybrid accuracy on the stream are reported."""
    import random

    from edgeshrink.data import load_data
    from edgeshrink.route.router import Router, check_same_labels, read_router
    from edgeshrink.runtime import load

    config = config or MonitorConfig()
    settings = read_router(device)
    router = Router(load(device), None, settings)
    examples = load_data(data)
    texts = examples.texts[:limit] if limit else examples.texts
    truth = examples.labels[:len(texts)] if examples.label_names else None
    cloud_model = None
    if cloud is not None:
        from edgeshrink.models.torch_text import load_predictor

        cloud_model = load_predictor(cloud)
        check_same_labels(router.device, cloud_model)
    monitor = DriftMonitor(router_reference(settings), config, list(router.device.labels), *router_bound(settings))
    rng = random.Random(seed)
    events, device_answers, cloud_answers, escalated = [], [], [], []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        pred = router.device.predict(batch)
        scores, reasons, escalate = router.decide(pred)
        unknown = getattr(pred, "unknown", None)
        cloud_labels = cloud_model.predict(batch).labels if cloud_model is not None else None
        for i in range(len(batch)):
            events += monitor.observe(Observation(float(scores[i]), reasons[i] in ("confident", "not confident"),
                                                  escalate[i], bool(pred.truncated[i]),
                                                  None if unknown is None else bool(unknown[i]), pred.labels[i]))
            if cloud_labels is not None and not escalate[i] and rng.random() < config.audit_fraction:
                events += monitor.audit(cloud_labels[i] == pred.labels[i])
        escalated += escalate
        device_answers += pred.labels
        cloud_answers += cloud_labels if cloud_labels is not None else [None] * len(batch)
        if progress is not None:
            progress(min(start + batch_size, len(texts)), len(texts))
    result = {"device": str(device), "data": examples.name, "requests": len(texts), "report": monitor.report(),
              "events": events, "escalated_fraction": sum(escalated) / max(1, len(texts))}
    if truth is not None and cloud_model is not None:
        from edgeshrink.stats import accuracy_interval

        def accuracy(answers):
            right = sum(a == y for a, y in zip(answers, truth))
            low, high = accuracy_interval(right, len(truth))
            return {"accuracy": right / len(truth), "ci95": [low, high]}

        hybrid = [c if e else d for d, c, e in zip(device_answers, cloud_answers, escalated)]
        result["accuracy"] = {"device_only": accuracy(device_answers), "cloud_only": accuracy(cloud_answers),
                              "hybrid": accuracy(hybrid)}
    return result

"""Threshold policies: choose λ so that the router answers on the device when s(x) ≥ λ.

    from edgeshrink.route.policies import PolicyConfig, choose_threshold
    threshold = choose_threshold(CalibrationData(scores, device_correct, cloud_correct, agree),
                                 PolicyConfig(policy="risk", alpha=0.02, delta=0.1))

Policies (registered in POLICIES):
- ``budget``: escalate at most a fraction β of calibration requests (a quantile; no guarantee);
- ``accuracy``: the fewest escalations whose hybrid accuracy on calibration reaches a target (no guarantee);
- ``risk``: Learn-then-Test fixed-sequence testing (Angelopoulos et al. 2021). Thresholds from a grid
  fixed before seeing data are tested from strict to lenient; at each, H0 "the error rate among
  device-answered requests exceeds α" is rejected when the binomial (or Hoeffding–Bentkus) p-value
  of the observed errors is ≤ δ; the last rejected threshold is kept and the sequence stops at the
  first failure. Then P(error rate among device answers ≤ α) ≥ 1 − δ over the calibration draw,
  if future requests are exchangeable with the calibration data. Thresholds with too few calibration
  examples above them to ever reject are skipped (that depends on the scores only, not the errors);
- ``risk+budget``: the risk test and a budget test (H0 "more than β escalated") at δ/2 each (Bonferroni).
With ``label_free`` an "error" is a disagreement with the cloud model, and the guarantee bounds
disagreement with the cloud, not true error: the guarantee text says so.

``curves`` and ``apgr_cpt`` sweep the threshold instead of choosing it: what `route eval` reports.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

import numpy as np
from pydantic import Field

from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.confidence import signal_range


class PolicyConfig(Config):
    version: int = 1
    policy: Literal["budget", "accuracy", "risk", "risk+budget"] = "risk"
    # max-prob | margin | neg-entropy (label distribution), or a prompted LLM's answer signal:
    # mean-logprob | min-logprob | neg-mean-entropy (route/confidence.py)
    signal: Literal["max-prob", "margin", "neg-entropy", "mean-logprob", "min-logprob", "neg-mean-entropy"] = \
        "max-prob"
    temperature_scaling: bool = True
    alpha: float | None = Field(None, gt=0, lt=1)  # risk: tolerated error rate among device answers
    delta: float = Field(0.1, gt=0, lt=1)  # risk: allowed probability that the bound fails
    budget: float | None = Field(None, gt=0, le=1)  # budget: most fraction of requests escalated
    target_accuracy: float | None = Field(None, gt=0, le=1)  # accuracy: hybrid accuracy to reach
    max_drop: float | None = Field(None, ge=0, lt=1)  # accuracy: or at most this far below the cloud's
    label_free: bool = False  # error = disagreement with the cloud model (no labels needed)
    p_value: Literal["binomial", "hoeffding-bentkus"] = "binomial"
    min_examples: int = Field(30, ge=1)  # never trust a threshold with fewer calibration examples above it
    grid_size: int = Field(2000, ge=10)

    def model_post_init(self, _context) -> None:
        if "risk" in self.policy and self.alpha is None:
            raise ValueError(f"policy {self.policy} needs alpha (the tolerated error rate)")
        if "budget" in self.policy and self.budget is None:
            raise ValueError(f"policy {self.policy} needs budget (the most fraction of requests escalated)")
        if self.policy == "accuracy":
            if (self.target_accuracy is None) == (self.max_drop is None):
                raise ValueError("policy accuracy needs exactly one of target_accuracy and max_drop")
            if self.label_free:
                raise ValueError("policy accuracy needs labels; label_free works with budget, risk and risk+budget")


@dataclass
class CalibrationData:
    """Per calibration example: the device's confidence score and whether device/cloud were right."""
    scores: np.ndarray
    device_correct: np.ndarray | None  # None without labels
    cloud_correct: np.ndarray | None
    agree: np.ndarray  # device prediction == cloud prediction

    def errors(self, label_free: bool) -> np.ndarray:
        if label_free:
            return ~self.agree
        if self.device_correct is None:
            raise EdgeshrinkError("this policy needs labelled calibration data (or label_free)")
        return ~self.device_correct


@dataclass
class Threshold:
    value: float  # answer on the device when score ≥ value; +inf escalates everything
    escalation_rate: float  # on the calibration data
    device_risk: float | None  # error (or disagreement) rate among calibration examples answered on the device
    feasible: bool
    guarantee: str  # in words
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["value"] = None if math.isinf(self.value) else self.value
        out["escalate_everything"] = self.value == math.inf
        return out


POLICIES: dict[str, Callable[[CalibrationData, PolicyConfig, int], Threshold]] = {}


def policy(name: str):
    def register(fn):
        POLICIES[name] = fn
        return fn
    return register


def choose_threshold(data: CalibrationData, config: PolicyConfig, n_classes: int = 2) -> Threshold:
    return POLICIES[config.policy](data, config, n_classes)


def grid(signal: str, n_classes: int, size: int) -> np.ndarray:
    """Candidate thresholds, strict to lenient, fixed by the signal alone (never by the data)."""
    lo, hi = signal_range(signal, n_classes)
    half = size // 2
    points = np.concatenate([np.linspace(lo, hi, half), hi - np.geomspace(1e-6, hi - lo, size - half)])
    return np.unique(np.clip(points, lo, hi))[::-1]


def p_value(errors, n, alpha: float, kind: str) -> np.ndarray:
    """p-values of H0 "error rate > alpha" after ``errors`` errors in ``n`` exchangeable examples (arrays)."""
    from scipy.stats import binom

    errors, n = np.asarray(errors, dtype=float), np.asarray(n, dtype=float)
    binomial = np.where(n > 0, binom.cdf(errors, np.maximum(n, 1), alpha), 1.0)
    if kind == "binomial":
        return binomial
    r = np.minimum(errors / np.maximum(n, 1), alpha)  # Hoeffding–Bentkus (Bates et al. 2021)
    with np.errstate(divide="ignore", invalid="ignore"):
        h1 = np.where(r > 0, r * np.log(r / alpha), 0.0) + (1 - r) * np.log((1 - r) / (1 - alpha))
    return np.where(n > 0, np.minimum(np.exp(-n * h1), math.e * binomial), 1.0)


def examples_needed(alpha: float, delta: float, floor: int = 1) -> int:
    """The fewest examples at which even zero errors reject H0 at level delta: (1 − α)^n ≤ δ."""
    return max(floor, math.ceil(math.log(delta) / math.log(1 - alpha)))


def too_small(n: int, alpha: float, delta: float, min_examples: int = 1) -> str | None:
    """Why ``n`` calibration examples cannot run the risk test at (alpha, delta), or None if they can.

    Known before any score or error is seen, so a caller can skip the test instead of running it."""
    needed = examples_needed(alpha, delta, min_examples)
    if n >= needed:
        return None
    return (f"the calibration set is too small for alpha={alpha:g}, delta={delta:g}: it needs at least {needed} "
            f"examples (answered on the device, with no errors among them); got {n}")


def _result(data, value, errors, feasible, guarantee, **details) -> Threshold:
    on_device = data.scores >= value
    risk = float(errors[on_device].mean()) if on_device.any() else None
    return Threshold(float(value), float(1 - on_device.mean()), risk, feasible, guarantee, details)


@policy("budget")
def _budget(data: CalibrationData, config: PolicyConfig, n_classes: int) -> Threshold:
    ordered = np.sort(data.scores)
    m = math.floor(config.budget * len(ordered))  # escalate at most the m least confident
    value = math.inf if m >= len(ordered) else float(ordered[m])
    errors = data.errors(config.label_free) if (config.label_free or data.device_correct is not None) else \
        np.zeros(len(ordered), bool)
    return _result(data, value, errors, True,
                   f"escalates the {100 * config.budget:g}% least confident requests of traffic like the "
                   f"{len(ordered)} calibration examples; no guarantee on quality")


@policy("accuracy")
def _accuracy(data: CalibrationData, config: PolicyConfig, n_classes: int) -> Threshold:
    if data.device_correct is None or data.cloud_correct is None:
        raise EdgeshrinkError("policy accuracy needs labelled calibration data")
    n = len(data.scores)
    cloud_accuracy = float(data.cloud_correct.mean())
    target = config.target_accuracy if config.target_accuracy is not None else cloud_accuracy - config.max_drop
    order = np.argsort(data.scores, kind="stable")
    scores = data.scores[order]
    # hybrid correct when the m least confident go to the cloud, for every m that a threshold can make
    gain = np.concatenate([[0], np.cumsum(data.cloud_correct[order].astype(int) - data.device_correct[order].astype(int))])
    hybrid = (data.device_correct.sum() + gain) / n
    cuts = [m for m in range(n + 1) if m in (0, n) or scores[m] != scores[m - 1]]
    errors = ~data.device_correct
    for m in cuts:
        if hybrid[m] >= target:
            value = -math.inf if m == 0 else (math.inf if m == n else float(scores[m]))
            return _result(data, value, errors, True,
                           f"hybrid accuracy {100 * hybrid[m]:.2f}% on the {n} calibration examples "
                           f"(target {100 * target:.2f}%); no statistical guarantee",
                           calibration_hybrid_accuracy=float(hybrid[m]), target_accuracy=float(target))
    return _result(data, math.inf, errors, False,
                   f"no threshold reaches {100 * target:.2f}% on calibration (the best is "
                   f"{100 * hybrid.max():.2f}%): escalate everything",
                   calibration_hybrid_accuracy=float(hybrid[-1]), target_accuracy=float(target))


def _risk_threshold(data: CalibrationData, config: PolicyConfig, n_classes: int, delta: float):
    errors = data.errors(config.label_free).astype(bool)
    needed = examples_needed(config.alpha, delta, config.min_examples)
    problem = too_small(len(data.scores), config.alpha, delta, config.min_examples)
    if problem:
        raise EdgeshrinkError(problem)
    order = np.argsort(-data.scores, kind="stable")
    sorted_scores, cum_errors = data.scores[order], np.concatenate([[0], np.cumsum(errors[order])])
    values = grid(config.signal, n_classes, config.grid_size)
    n = np.searchsorted(-sorted_scores, -values, side="right")  # examples with score ≥ value
    testable = n >= needed  # below this, no errors at all could reject: not a test (depends on scores only)
    values, n = values[testable], n[testable]
    p = p_value(cum_errors[n], n, config.alpha, config.p_value)
    failed = np.flatnonzero(p > delta)
    stop = int(failed[0]) if failed.size else len(values)  # fixed sequence: stop at the first failure
    chosen = float(values[stop - 1]) if stop > 0 else math.inf
    tested = min(stop + 1, len(values))
    last_p = float(p[tested - 1]) if tested else None
    return chosen, errors, {"thresholds_tested": tested, "last_p_value": last_p, "examples_needed": needed}


def _risk_words(config: PolicyConfig, n: int, delta: float) -> str:
    what = ("the rate of disagreement with the cloud model (not true error: no labels were used)"
            if config.label_free else "the error rate")
    return (f"with probability ≥ {100 * (1 - delta):g}% over the draw of the {n} calibration examples, {what} "
            f"among requests answered on the device is ≤ {100 * config.alpha:g}% (if future requests are "
            f"exchangeable with the calibration data)")


@policy("risk")
def _risk(data: CalibrationData, config: PolicyConfig, n_classes: int) -> Threshold:
    value, errors, details = _risk_threshold(data, config, n_classes, config.delta)
    if value == math.inf:
        return _result(data, value, errors, True,
                       f"no threshold is safe at alpha={config.alpha:g}, delta={config.delta:g}: every request is "
                       f"escalated to the cloud (the device model is too often wrong even when most confident)",
                       **details)
    return _result(data, value, errors, True, _risk_words(config, len(data.scores), config.delta), **details)


@policy("risk+budget")
def _risk_budget(data: CalibrationData, config: PolicyConfig, n_classes: int) -> Threshold:
    from scipy.stats import binom

    half = config.delta / 2
    risk_value, errors, details = _risk_threshold(data, config, n_classes, half)
    n = len(data.scores)
    lenient_first = grid(config.signal, n_classes, config.grid_size)[::-1]
    escalated = np.searchsorted(np.sort(data.scores), lenient_first, side="left")  # scores below each value
    failed = np.flatnonzero(binom.cdf(escalated, n, config.budget) > half)  # H0 "more than β escalated" kept
    stop = int(failed[0]) if failed.size else len(lenient_first)  # fixed sequence, lenient to strict
    budget_value = float(lenient_first[stop - 1]) if stop > 0 else -math.inf
    details["budget_threshold"] = None if math.isinf(budget_value) else budget_value
    if risk_value <= budget_value:
        return _result(data, risk_value, errors, True,
                       _risk_words(config, n, config.delta) + f"; and with the same probability at most "
                       f"{100 * config.budget:g}% of requests are escalated (δ split in two)", **details)
    need = float((data.scores < risk_value).mean())
    return _result(data, math.inf, errors, False,
                   f"no threshold meets both: the risk bound (alpha={config.alpha:g}) needs escalating "
                   f"{100 * need:.1f}% of calibration requests, over the {100 * config.budget:g}% budget; every "
                   f"request is escalated until alpha or the budget is raised", **details)


def curves(scores, device_correct, cloud_correct, points: int) -> dict:
    """Hybrid accuracy when the least confident fraction r goes to the cloud, for r on a grid; risk by coverage."""
    order = np.argsort(scores, kind="stable")
    n = len(scores)
    gain = np.concatenate([[0], np.cumsum(cloud_correct[order].astype(int) - device_correct[order].astype(int))])
    rates = np.linspace(0, 1, points)
    m = np.round(rates * n).astype(int)
    hybrid = (device_correct.sum() + gain[m]) / n
    errors_from_top = np.concatenate([[0], np.cumsum(~device_correct[order[::-1]])])  # most confident first
    answered = n - m
    risk = np.where(answered > 0, errors_from_top[answered] / np.maximum(answered, 1), 0.0)
    return {"escalation_rate": rates.tolist(), "hybrid_accuracy": hybrid.tolist(),
            "coverage": (1 - rates).tolist(), "risk": risk.tolist()}


def apgr_cpt(curve: dict, device_accuracy: float, cloud_accuracy: float) -> dict:
    """RouteLLM's APGR (area of recovered gap over the escalation axis) and CPT(x%)."""
    rates, hybrid = np.array(curve["escalation_rate"]), np.array(curve["hybrid_accuracy"])
    gap = cloud_accuracy - device_accuracy
    if gap <= 0:
        return {"apgr": None, "cpt": {}, "note": "the device model is at least as accurate as the cloud model"}
    recovered = (hybrid - device_accuracy) / gap
    apgr = float(np.sum((recovered[1:] + recovered[:-1]) / 2 * np.diff(rates)))
    cpt = {}
    for x in (50, 80, 95):
        hit = np.flatnonzero(recovered >= x / 100)
        cpt[f"{x}%"] = float(rates[hit[0]]) if hit.size else None
    return {"apgr": apgr, "cpt": cpt}


def policy_split(router: dict):
    from edgeshrink.data import SplitConfig

    return SplitConfig.from_dict(router["policy"].get("split", {}))

"""Token-level handoff (issue 31, first part): when should the device stop writing and let the cloud continue?

The device streams its greedy answer; at the first token whose calibrated signal (log-probability, entropy or
margin of the device's next-token distribution) falls below a threshold λ, the rest of the answer goes to the
cloud. This module chooses λ with a stated bound, from held-out prompts, label-free:

    data = HandoffData(signals=[s_1, s_2, ...], agree=[a_1, a_2, ...])   # per prompt, per device token
    result = calibrate_handoff(data, HandoffConfig(alpha=0.05, delta=0.1))
    result.threshold, result.device_token_share, result.guarantee

Per prompt i the device's greedy answer has tokens t = 1..T_i with signals s_it; ``agree[i][t]`` says whether the
cloud, given the device's prefix before t (one teacher-forced cloud pass over the device's answer), would have
chosen the same token. At threshold λ the device keeps K_i(λ) tokens (those before the first s_it < λ), of which
D_i(λ) disagree with the cloud.

**The bound.** Tokens of one answer are not exchangeable (they depend on each other); prompts are. So the unit
is the answer: its loss at λ is the share of the tokens it keeps that the cloud would have chosen differently,
L_i(λ) = D_i(λ) / K_i(λ) in [0, 1], over the answers that keep at least one token (which ones do depends on the
signals alone, so the losses of those answers are still exchangeable; thresholds at which fewer than
``min_answers_kept`` of the answers keep a token, or too few for even zero disagreement to reject, are skipped). With ``loss="answer"`` the loss
is instead whether the answer keeps any token the cloud would have chosen otherwise (or, kept whole, ends where the
cloud would not): L_i(λ) = 1[D_i(λ) > 0], over every answer. The cloud continues from the device's prefix, so this is
exactly "the handed-off answer is not the cloud's own greedy answer"; it can only fall as λ gets stricter, so the
fixed sequence loses little power, and for a pair whose per-token disagreement is flat along the curve it gives the
intermediate thresholds the token loss cannot. Learn-then-Test (Angelopoulos et al. 2021):
thresholds of a grid over the signal's range are tested from strict (high λ, few tokens kept) to lenient; at
each, H0 "E[L(λ)] > α" is rejected when the Hoeffding–Bentkus p-value of the mean loss is ≤ δ; the sequence stops
at the first failure and the last rejected λ is kept. Then with probability ≥ 1 − δ over the draw of the
calibration prompts, the disagreeing share of the tokens the device keeps, averaged over the answers in which
it keeps any, is ≤ α,
if future prompts are exchangeable with them. No labels are used: the bound is on disagreement with the cloud's
own greedy choices, not on correctness. (An answer-weighted rate: a pooled token rate E[D]/E[K] would weigh long
answers more, and its test, on (D − αK)/T_max, had too little power at a few hundred prompts.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.policies import examples_needed


class HandoffConfig(Config):
    version: int = 1
    alpha: float = Field(0.05, gt=0, lt=1)  # bound on disagreement among the tokens the device keeps
    delta: float = Field(0.1, gt=0, lt=1)  # allowed probability that the bound fails
    grid_size: int = Field(200, ge=10, le=10_000)  # thresholds tested, strict to lenient
    min_prompts: int = Field(30, ge=1)  # fewer calibration prompts: refused
    # thresholds are tested once at least this share of the answers keep a token (the strictest ones, where a few
    # answers keep one token each, have too little power to start a fixed sequence that stops at its first failure)
    min_answers_kept: float = Field(0.5, gt=0, le=1)
    # what α bounds: "token", the disagreeing share of the tokens an answer keeps (mean over answers keeping any);
    # "answer", the share of answers that are not the cloud's own greedy answer (a kept token it would not choose)
    loss: Literal["token", "answer"] = "token"


@dataclass
class HandoffData:
    """Per calibration prompt: the device's signal and the cloud's agreement, per token of the device's answer."""

    signals: list[np.ndarray]
    agree: list[np.ndarray]
    max_tokens: int = 0  # T_max, the answers' token budget (0: the longest answer)
    # per prompt: the cloud would also end where the device's whole answer ends (None: assumed; an answer kept
    # whole is the cloud's own only if it is)
    ends_agree: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.signals) != len(self.agree):
            raise EdgeshrinkError("handoff data: one signal row and one agreement row per prompt")
        self.signals = [np.asarray(s, dtype=float) for s in self.signals]
        self.agree = [np.asarray(a, dtype=bool) for a in self.agree]
        for s, a in zip(self.signals, self.agree):
            if s.shape != a.shape or s.ndim != 1:
                raise EdgeshrinkError("handoff data: a prompt's signals and agreements must be equally long")
            if not np.all(np.isfinite(s)):
                raise EdgeshrinkError("handoff data: signals must be finite")
        self.max_tokens = max(self.max_tokens, max((len(s) for s in self.signals), default=0), 1)

    def kept(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(K_i, D_i) at ``threshold``: tokens kept before the first signal below it, and disagreements among them."""
        if not hasattr(self, "_prefix_min"):  # a padded matrix of running minima: K_i = #{t: min(s_i1..s_it) ≥ λ}
            width = max(len(s) for s in self.signals) if self.signals else 0
            self._prefix_min = np.full((len(self.signals), width), -np.inf)
            self._disagreed = np.zeros((len(self.signals), width + 1), dtype=int)
            for i, (s, a) in enumerate(zip(self.signals, self.agree)):
                self._prefix_min[i, :len(s)] = np.minimum.accumulate(s) if len(s) else s
                self._disagreed[i, 1:len(a) + 1] = np.cumsum(~a)
                self._disagreed[i, len(a) + 1:] = self._disagreed[i, len(a)]
        kept = (self._prefix_min >= threshold).sum(axis=1)
        return kept, self._disagreed[np.arange(len(kept)), kept]

    def losses(self, threshold: float, loss: str) -> np.ndarray:
        """Per answer, the loss at ``threshold`` (module doc): "token", D/K over the answers keeping a token;
        "answer", whether the answer is not the cloud's own greedy answer, over every answer."""
        kept, disagreed = self.kept(threshold)
        if loss == "token":
            return (disagreed / np.maximum(kept, 1))[kept > 0]
        whole = kept >= np.array([len(s) for s in self.signals])
        ends = np.ones(len(kept), bool) if self.ends_agree is None else np.asarray(self.ends_agree, bool)
        return ((disagreed > 0) | (whole & ~ends)).astype(float)

    def candidates(self, size: int) -> np.ndarray:
        """Thresholds strict to lenient: quantiles of a grid over the signal's range (the range only; with a
        fixed grid the test does not depend on which thresholds the errors would favour)."""
        values = np.concatenate(self.signals) if self.signals else np.zeros(1)
        lo, hi = float(values.min()), float(values.max())
        return np.linspace(hi + 1e-9, lo, size)


@dataclass
class HandoffResult:
    threshold: float  # hand off at the first token whose signal is below this (inf: the cloud writes everything)
    device_token_share: float  # of the calibration answers' tokens, the share the device keeps
    disagreement_among_kept: float | None  # on calibration: the mean over answers that keep a token
    guarantee: str
    thresholds_tested: int
    last_p_value: float | None
    curve: list[dict] = field(default_factory=list)  # every grid threshold: share kept, disagreement among kept


def mean_loss_p_value(losses: np.ndarray, alpha: float) -> float:
    """p-value of H0 "E[loss] > alpha" for losses in [0, 1] (Hoeffding–Bentkus, Bates et al. 2021; the binomial
    part takes the summed loss rounded up, which can only make the p-value larger)."""
    from edgeshrink.route.policies import p_value

    n = len(losses)
    if n == 0:
        return 1.0
    return float(p_value(np.array([math.ceil(float(np.sum(losses)) - 1e-9)]), np.array([n]), alpha,
                         "hoeffding-bentkus")[0])


def calibrate_handoff(data: HandoffData, config: HandoffConfig | None = None, floor: float | None = None) -> HandoffResult:
    """Choose the handoff threshold (see the module docstring). ``floor``: test only thresholds at or above it
    (answers recorded live under a threshold stop at their handoff, so only stricter ones can be judged on them)."""
    config = config or HandoffConfig()
    n = len(data.signals)
    if n < config.min_prompts:
        raise EdgeshrinkError(f"handoff calibration needs at least {config.min_prompts} prompts; got {n}")
    total = sum(len(s) for s in data.signals)
    if total == 0:
        raise EdgeshrinkError("handoff calibration: the device's answers hold no tokens")
    chosen, tested, last_p, curve = math.inf, 0, None, []
    stopped = False
    for value in data.candidates(config.grid_size):
        if floor is not None and value < floor:
            break
        kept, _ = data.kept(value)
        token = data.losses(value, "token")  # over the answers that keep a token (signals decide which)
        losses = token if config.loss == "token" else data.losses(value, "answer")
        p = mean_loss_p_value(losses, config.alpha)
        share = float(kept.sum() / total)
        curve.append({"threshold": float(value), "device_token_share": share,
                      "disagreement_among_kept": float(token.mean()) if len(token) else None,
                      "answers_not_the_clouds": float(data.losses(value, "answer").mean()), "p_value": p})
        # too few answers keep a token for even zero disagreement to reject: not a test (signals only decide it)
        if stopped or len(token) < max(examples_needed(config.alpha, config.delta), config.min_answers_kept * n):
            continue
        tested += 1
        last_p = p
        if p > config.delta:
            stopped = True  # fixed sequence: stop at the first failure (the curve goes on, for the report)
            continue
        chosen = float(value)
    if chosen == math.inf:
        return HandoffResult(math.inf, 0.0, None, f"no handoff threshold is safe at alpha={config.alpha:g}, "
                             f"delta={config.delta:g}: the cloud writes every answer", tested, last_p, curve)
    kept, disagreed = data.kept(chosen)
    bounded = (f"the share of the tokens the device keeps in an answer that the cloud would have chosen otherwise is "
               f"≤ {100 * config.alpha:g}% on average over the answers in which it keeps any"
               if config.loss == "token" else
               f"the share of answers that are not the cloud's own greedy answer (a kept token it would have chosen "
               f"otherwise) is ≤ {100 * config.alpha:g}%")
    return HandoffResult(
        chosen, float(kept.sum() / total), float((disagreed / np.maximum(kept, 1))[kept > 0].mean()),
        f"with probability ≥ {100 * (1 - config.delta):g}% over the draw of the {n} calibration prompts, {bounded} "
        f"(if future prompts are exchangeable with the calibration prompts; no labels: agreement with the cloud's "
        f"greedy choices, not correctness)", tested, last_p, curve)


# The per-token signals a handoff can use, from the device's own next-token distribution at each step (higher:
# surer): the chosen token's log-probability, the negative entropy of the step, or its margin (top probability
# minus the second). One monotone signal needs no Platt scaling: a threshold on it is a threshold on any
# increasing calibration of it.
TOKEN_SIGNALS = ("logprob", "neg-entropy", "margin")


def handoff_data(answers, keep: np.ndarray, signal: str, max_tokens: int) -> HandoffData:
    """HandoffData from route/open_prompts.py's OpenAnswers (the prompts in ``keep``)."""
    if signal not in TOKEN_SIGNALS:
        raise EdgeshrinkError(f"unknown handoff signal {signal!r}; expected one of {', '.join(TOKEN_SIGNALS)}")
    rows = [i for i in range(len(answers.token_agree)) if keep[i]]
    values = {"logprob": lambda: answers.token_logprobs, "neg-entropy": lambda: [-e for e in answers.token_entropies],
              "margin": lambda: answers.token_margins}[signal]()
    return HandoffData([values[i] for i in rows], [answers.token_agree[i] for i in rows], max_tokens=max_tokens,
                       ends_agree=np.array([bool(answers.agree[i]) or not bool(np.all(answers.token_agree[i]))
                                            for i in rows]))


def handoff_record(answers, keep: np.ndarray, config) -> dict:
    """The router's ``handoff`` section: the threshold, its guarantee and the curve (every 5th grid point) on the
    calibration prompts (``config``: the RouteConfig; the handoff shares its alpha and delta)."""
    data = handoff_data(answers, keep, config.handoff_signal, config.answer_tokens)
    return handoff_section(data, HandoffConfig(alpha=config.alpha, delta=config.delta, loss=config.handoff_loss),
                           config.handoff_signal)


def handoff_section(data: HandoffData, config: HandoffConfig, signal: str, floor: float | None = None) -> dict:
    """A router's ``handoff`` section from ``data``: the threshold, its guarantee, the curve (every 5th grid point)
    and the drift watch's reference (``handoff_reference``)."""
    result = calibrate_handoff(data, config, floor)
    return {"signal": signal, "threshold": result.threshold if math.isfinite(result.threshold) else None,
            "device_token_share": result.device_token_share, "disagreement_among_kept": result.disagreement_among_kept,
            "answers_not_the_clouds": float(data.losses(result.threshold, "answer").mean()) if data.signals else None,
            "alpha": config.alpha, "delta": config.delta, "loss": config.loss, "prompts": len(data.signals),
            "guarantee": result.guarantee,
            "thresholds_tested": result.thresholds_tested, "curve": result.curve[::5],
            "reference": handoff_reference(data, result.threshold)}


def handoff_watch_score(signals: np.ndarray) -> float:
    """What the LLM service's drift watch compares per answer under handoff: the mean signal of the tokens the
    device generated (those it kept and the one it handed off at), within the calibration's answer length."""
    return float(np.mean(signals)) if len(signals) else 0.0


def handoff_reference(data: HandoffData, threshold: float) -> dict:
    """The drift watch's reference (route/monitor.py's shape) at ``threshold``, per calibration answer: its score
    (``handoff_watch_score`` of the tokens up to and including the handoff), whether it was handed off within
    its tokens (``escalated``), and the share of answers keeping a token that keep one the cloud would have
    chosen otherwise (``device_disagreement``, the audit's bound)."""
    kept, disagreed = data.kept(threshold)
    lengths = np.array([len(s) for s in data.signals])
    scores = [handoff_watch_score(s[:min(k + 1, len(s))]) for s, k in zip(data.signals, kept)]
    some = kept > 0
    return {"n": len(data.signals), "routed": len(data.signals), "scores": [float(f"{v:.6g}") for v in sorted(scores)],
            "escalated": int(np.sum(kept < lengths)), "truncated": 0, "unknown": None, "label_counts": {},
            "device_disagreement": float(np.mean(disagreed[some] > 0)) if some.any() else None}


def evaluate_handoff(answers, keep: np.ndarray, handoff: dict, resplits: int = 0, seed: int = 0) -> dict:
    """``route eval`` of a router's ``handoff`` on held-out prompts: at its threshold, the device's share of the
    tokens, the disagreement among them (the bounded quantity) and the whole answers equal to the cloud's greedy
    ones; the curve over thresholds; with ``resplits``, the guarantee check (recalibrate on half-size draws of these
    prompts, measure on all of them: the bound should hold in at least 1 − δ of the draws)."""
    data = handoff_data(answers, keep, handoff["signal"], max(len(a) for a in answers.token_agree) or 1)
    total = sum(len(s) for s in data.signals)

    def at(threshold: float | None) -> dict:
        value = math.inf if threshold is None else threshold
        kept, _ = data.kept(value)
        share = data.losses(value, "token")
        # the cloud continues from the device's prefix: the whole answer is the cloud's own unless its answer loss is 1
        return {"threshold": threshold, "device_token_share": float(kept.sum() / max(total, 1)),
                "disagreement_among_kept": float(share.mean()) if len(share) else None,
                "whole_answer_agreement": float(1 - data.losses(value, "answer").mean()),
                "handed_off_answers": float(np.mean(kept < np.array([len(s) for s in data.signals])))}

    report = {"signal": handoff["signal"], "prompts": len(data.signals), "at_threshold": at(handoff["threshold"]),
              "curve": [at(float(v)) for v in data.candidates(21)], "alpha": handoff["alpha"],
              "loss": handoff.get("loss", "token"),
              "delta": handoff["delta"]}
    if resplits:
        rng = np.random.default_rng(seed)
        loss = handoff.get("loss", "token")
        config = HandoffConfig(alpha=handoff["alpha"], delta=handoff["delta"], min_prompts=1, loss=loss)
        held = []
        for _ in range(resplits):
            draw = rng.choice(len(data.signals), len(data.signals) // 2, replace=True)
            half = HandoffData([data.signals[i] for i in draw], [data.agree[i] for i in draw], data.max_tokens,
                               None if data.ends_agree is None else data.ends_agree[draw])
            chosen = calibrate_handoff(half, config).threshold
            measured = at(None if not math.isfinite(chosen) else chosen)
            risk = measured["disagreement_among_kept"] if loss == "token" else 1 - measured["whole_answer_agreement"]
            held.append(risk is None or risk <= handoff["alpha"])
        report["guarantee_check"] = {"resplits": resplits, "held_fraction": float(np.mean(held)),
                                     "target": 1 - handoff["delta"], "ok": float(np.mean(held)) >= 1 - handoff["delta"]}
    return report

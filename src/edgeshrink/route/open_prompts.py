"""Open prompts, without labels: is the device's answer the one the cloud model would have given?

    from edgeshrink.route.open_prompts import open_answers
    answers = open_answers(device_generator, cloud_generator, prompts, answer_tokens=32)
    answers.signals["mean-logprob"], answers.agree

The device answers each prompt greedily (at most ``answer_tokens`` tokens) and its answer signals are
read from its own token log-probabilities. The cloud then *checks* the answer in one forward pass over
prompt + answer, as a speculative-decoding verifier would: the answer agrees when every token is the
cloud's own greedy choice at that point (and, if the device stopped, the cloud would stop there too).
Agreement is therefore "the cloud, answering greedily, would have said exactly this" — strict, label-
free, and one cloud pass per prompt instead of a generation. The router's label-free policies then
bound the rate of answers the cloud would have said differently (disagreement), not their quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeshrink.data import load_data, split_examples
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.route.confidence import binary_ece, confidence_scores, fit_platt
from edgeshrink.route.handoff import evaluate_handoff, handoff_record
from edgeshrink.route.monitor import reference_from
from edgeshrink.route.policies import (CalibrationData, PolicyConfig, apgr_cpt, choose_threshold, curves, policy_split,
                                       too_small)
from edgeshrink.route.router import generates, threshold_of
from edgeshrink.route.router_schema import router_record
from edgeshrink.runtime import load
from edgeshrink.runtime.prompted import ANSWER_SIGNALS, answer_signals
from edgeshrink.runtime.speculative import check_same_vocabulary
from edgeshrink.stats import accuracy_interval


PROMPTS_DONE = "prompts answered and checked"  # progress: "... 12/314" (the device answers, the cloud checks)


@dataclass
class OpenAnswers:
    texts: list[str]  # the device's answers
    signals: dict  # name -> (n,) answer signal
    agree: np.ndarray  # (n,) bool: the cloud's greedy answer is the same
    agreed_tokens: np.ndarray  # (n,) how many leading tokens the cloud agrees with
    answer_tokens: np.ndarray  # (n,) tokens in each answer
    truncated: list[bool]  # the prompt was cut to fit the context
    # per answer, per device token: its log-probability and the entropy of its step (the device's), and whether the
    # cloud, given the device's prefix, picks the same token (the teacher-forced check): what handoff calibrates on
    token_logprobs: list = None
    token_entropies: list = None
    token_agree: list = None
    token_margins: list = None  # the step's top probability minus its second


def render_prompt(template: str, text: str) -> list[dict]:
    return [{"role": "user", "content": template.replace("{text}", text)}]


def open_answers(device, cloud, texts: list[str], answer_tokens: int = 32, template: str = "{text}",
                 progress=None) -> OpenAnswers:
    """See the module doc. ``device`` and ``cloud`` are Generators with the same vocabulary."""
    check_same_vocabulary(device, cloud)
    n = len(texts)
    signals = {name: np.zeros(n) for name in ANSWER_SIGNALS}
    agree, agreed, lengths, answers, truncated = np.zeros(n, bool), np.zeros(n, int), np.zeros(n, int), [], []
    token_logprobs, token_entropies, token_agree, token_margins = [], [], [], []
    for i, text in enumerate(texts):
        ids, cut = _fit(device, template, text, answer_tokens)
        info: dict = {}
        tokens = list(device.stream(ids, answer_tokens, info=info))
        answer = [t.id for t in tokens]
        stopped = info["stop_reason"] == "eos"
        for name, value in answer_signals([(t.logprob, t.entropy) for t in tokens]).items():
            signals[name][i] = value
        choices = cloud.logits(ids + answer)[len(ids) - 1:].argmax(axis=-1)  # the cloud's pick at each step
        same = choices[:len(answer)] == np.array(answer, dtype=int)
        agreed[i] = len(answer) if same.all() else int(np.argmin(same))
        agree[i] = bool(same.all()) and (not stopped or int(choices[len(answer)]) in cloud.eos_ids)
        lengths[i] = len(answer)
        answers.append("".join(t.text for t in tokens))
        truncated.append(cut)
        token_logprobs.append(np.array([t.logprob for t in tokens], dtype=float))
        token_entropies.append(np.array([t.entropy for t in tokens], dtype=float))
        token_margins.append(np.array([t.margin for t in tokens], dtype=float))
        token_agree.append(same)
        if progress is not None:
            progress(i + 1, n)
    return OpenAnswers(answers, signals, agree, agreed, lengths, truncated, token_logprobs, token_entropies,
                       token_agree, token_margins)


def _fit(generator, template: str, text: str, answer_tokens: int) -> tuple[list[int], bool]:
    """The prompt's ids, the text cut (by tokens) until prompt + answer fit the context."""
    ids = generator.encode(render_prompt(template, text))
    room = generator.context_length - answer_tokens
    if len(ids) <= room:
        return ids, False
    pieces = generator.tokenizer.encode(text, add_special_tokens=False)
    keep = len(pieces.ids) - (len(ids) - room) - 2
    if keep >= 1:
        ids = generator.encode(render_prompt(template, text[:pieces.offsets[keep - 1][1]]))
    if len(ids) > room:
        raise EdgeshrinkError(f"the prompt template leaves no room for the text and {answer_tokens} answer tokens in "
                              f"the context of {generator.context_length}")
    return ids, True


def calibrate_open(device, cloud, part, config, progress=None) -> dict:
    """The router for open prompts (``task: open``) on the prompts of ``part``: label-free, on an answer signal;
    see the module doc. ``calibrate`` adds the ``data`` and ``cloud`` it was calibrated on."""
    if not config.label_free:
        raise EdgeshrinkError("open prompts have no right answer to check: calibrate with --label-free (the device's "
                              "answer agreeing with the cloud's)")
    if config.signal not in ANSWER_SIGNALS:
        raise EdgeshrinkError(f"open prompts are routed on an answer signal: --signal {' | '.join(ANSWER_SIGNALS)}")
    if progress is not None:
        progress("loading the device and cloud models")
    device_gen, cloud_gen = load(device), load(cloud) if not hasattr(cloud, "logits") else cloud
    for model, what in ((device_gen, "device"), (cloud_gen, "cloud")):
        if not generates(model):
            raise EdgeshrinkError(f"task open needs language-model bundles; the {what} is not one")
    template = config.prompt.user if config.prompt else "{text}"
    answers = open_answers(device_gen, cloud_gen, list(part.texts), config.answer_tokens, template,
                           None if progress is None else lambda d, t: progress(f"{PROMPTS_DONE} {d}/{t}"))
    keep = ~np.array(answers.truncated) if config.escalate_truncated else np.ones(len(part), bool)
    raw = answers.signals[config.signal][keep]
    agree = answers.agree[keep]
    temperature, bias = fit_platt(raw, agree)
    fitted = {"temperature": temperature, "bias": bias}
    scores = confidence_scores(config.signal, np.zeros((len(raw), 2)), {config.signal: raw}, fitted)
    threshold = choose_threshold(CalibrationData(scores, None, None, agree), config, 2)
    before = binary_ece(np.exp(raw), agree) if config.signal != "neg-mean-entropy" else None
    extra = {"handoff": handoff_record(answers, keep, config)} if config.handoff else {}
    answered = scores >= threshold.value
    # what the LLM service's drift watch compares live answers with (route/monitor.py): the calibrated
    # confidence, the escalation share, and the disagreement among the answers the device keeps
    extra["reference"] = reference_from(scores, keep, ~answered, np.array(answers.truncated, bool), None, [],
                                        np.zeros(len(part), int),
                                        float(np.mean(~agree[answered])) if answered.any() else None)
    return extra | router_record(
        config, fitted, threshold, keep,
        {"agreement_rate": float(agree.mean()), "mean_agreed_tokens": float(answers.agreed_tokens[keep].mean()),
         "temperature_fit": {"temperature": temperature, "bias": bias, "before": {"ece": before, "nll": None},
                             "after": {"ece": binary_ece(scores, agree), "nll": None}}},
        head={"task": "open"}, prompting={"prompt": None, "template": template, "answer_tokens": config.answer_tokens},
        label_free=True, labels=[])


def evaluate_open(device, cloud, data, config, router: dict, plots=None, progress=None) -> dict:
    """``route eval`` of an open-prompt router on held-out prompts: agreement with the cloud instead of accuracy
    (the report without its ``schema``, which ``evaluate`` adds).

    ``data``: prompts the router was not calibrated on (labelled data gives its test split; unlabelled data
    is used whole, and the report says whether it is the data the router was calibrated on)."""
    recorded = router.get("data") or {}
    if data is None:
        if recorded.get("unlabelled"):
            raise EdgeshrinkError("this router was calibrated on every row of unlabelled prompts: give held-out "
                                  "prompts with --data")
        data = recorded.get("source") or recorded.get("name")
    examples = load_data(data)
    test = split_examples(examples, policy_split(router)).test if examples.label_names else examples
    same = bool(recorded.get("unlabelled")) and recorded.get("source") == examples.source.source
    if progress is not None:
        progress("loading the device and cloud models")
    device_gen, cloud_gen = load(device), load(cloud)
    answers = open_answers(device_gen, cloud_gen, list(test.texts), int(router["answer_tokens"]),
                           router.get("template", "{text}"), None if progress is None else
                           lambda d, t: progress(f"{PROMPTS_DONE} {d}/{t}"))
    fitted = {"temperature": float(router["temperature"]), "bias": router["bias"]}
    signal = router["signal"]
    scores = confidence_scores(signal, np.zeros((len(test), 2)), answers.signals, fitted)
    truncated = np.array(answers.truncated)
    escalate = (scores < threshold_of(router)) | (truncated & router["rules"]["escalate_truncated"])
    agree = answers.agree
    n = len(agree)

    def rate(flags):
        low, high = accuracy_interval(int(flags.sum()), len(flags))
        return {"agreement": float(flags.mean()), "agreeing": int(flags.sum()), "ci95": [low, high]}

    curve = curves(scores, agree, np.ones(n, bool), 101)
    report = {
        "task": "open", "device": str(device), "cloud": str(cloud), "data": test.name, "n": n,
        "same_rows_as_calibration": same,
        "router": {k: router[k] for k in ("signal", "temperature", "bias", "threshold", "escalate_everything",
                                          "alpha", "delta", "label_free", "n", "guarantee", "feasible")}
        | {"policy": router["policy"]["policy"]},
        "answer_tokens": router["answer_tokens"],
        "device_only": rate(agree), "hybrid": rate(np.where(escalate, True, agree)),
        "escalated_fraction": float(escalate.mean()), "on_device_fraction": float((~escalate).mean()),
        "realised_disagreement_on_device": float((~agree[~escalate]).mean()) if (~escalate).any() else None,
        "mean_agreed_tokens": float(answers.agreed_tokens.mean()),
        "calibration_on_test": {"ece_before": binary_ece(np.exp(answers.signals[signal]), agree)
                                if signal != "neg-mean-entropy" else None,
                                "ece_after": binary_ece(scores, agree)},
        "routing": apgr_cpt(curve, float(agree.mean()), 1.0), "curves": curve,
    }
    keep = ~truncated
    policy = PolicyConfig.from_dict({k: v for k, v in router["policy"].items() if k in PolicyConfig.model_fields})
    # only a risk policy promises a bound (a budget policy given --alpha, for the handoff, promises none)
    if config.resplits and policy.policy.startswith("risk") and policy.alpha is not None and not too_small(
            keep.sum() // 2, policy.alpha, policy.delta, policy.min_examples):
        # The guarantee check, label-free: recalibrate on half-size draws, measure disagreement on the whole pool.
        rng = np.random.default_rng(config.seed)
        raw, pool_agree = answers.signals[signal][keep], agree[keep]
        held = []
        for _ in range(config.resplits):
            cal = rng.choice(len(raw), len(raw) // 2, replace=True)
            t, b = fit_platt(raw[cal], pool_agree[cal])
            f = {"temperature": t, "bias": b}
            cal_scores = confidence_scores(signal, np.zeros((len(cal), 2)), {signal: raw[cal]}, f)
            chosen = choose_threshold(CalibrationData(cal_scores, None, None, pool_agree[cal]), policy, 2)
            on = confidence_scores(signal, np.zeros((len(raw), 2)), {signal: raw}, f) >= chosen.value
            held.append(float((~pool_agree[on]).mean()) <= policy.alpha if on.any() else True)
        report["guarantee_check"] = {"risk_is": "disagreement", "alpha": policy.alpha, "delta": policy.delta,
                                     "resplits": config.resplits, "held_fraction": float(np.mean(held)),
                                     "target": 1 - policy.delta, "ok": float(np.mean(held)) >= 1 - policy.delta}
    if router.get("handoff"):
        report["handoff"] = evaluate_handoff(answers, keep, router["handoff"], config.resplits, config.seed)
    return report

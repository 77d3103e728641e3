"""The LLM service's drift watch on real answers (issue 31): does it stay quiet on held-out prompts like the
calibration's, and how fast does it fire when the prompts shift?

    PYTHONPATH=src:. .venv/bin/python benchmarks/llm_drift.py --device runs/smollm2-int4-handoff \
        [--prompts 300] [--streams 200] [--json benchmarks/results/llm-drift.json]

The device bundle's router must come from ``route calibrate --task open --handoff`` (its references). The device
answers, greedy and at the calibration's answer length, three pools of prompts: held-out ``open-prompts`` (the
test part: the calibration used the other part) and two shifted ones, ``shakespeare`` passages to explain and
``sentiment-tweets`` tweets to reply to.
Then streams are replayed through serve/llm/watch.py's ``LLMWatch`` (its defaults: window 300, tests every 25
answers from 100 on, p < 1e-3), for both policies (handoff: the mean token signal up to the handoff and whether it
happened; answer: the router's calibrated confidence and whether it escalated):
- in distribution: ``--streams`` streams of 600 answers drawn with replacement from the held-out pool; the
  false-alarm rate is the share of streams in which any signal ever fired;
- shifted: 300 held-out answers, then 300 shifted ones (Shakespeare passages to explain, or tweets to reply to);
  the detection rate within those 300, and the delay (answers after the shift until the first firing).
Each pool's mean token log-probability, median answer confidence and escalation / handoff rates are printed too:
a shift the device is as sure about as its calibration prompts moves no signal (the audit is what sees it).
No audit here (no cloud): the audit signal is tested in tests/serve/test_llm_watch.py.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgeshrink.doctor import cpu_info


def answers(generator, prompts: list, tokens: int, label: str) -> list[list]:
    out = []
    for i, messages in enumerate(prompts):
        ids = generator.encode(messages)
        out.append([SimpleNamespace(id=t.id, logprob=t.logprob, entropy=t.entropy, margin=t.margin)
                    for t in generator.stream(ids, tokens)])
        if (i + 1) % 50 == 0:
            print(f"{label}: {i + 1}/{len(prompts)} answers", flush=True)
    return out


def replay(router: dict, policy: str, stream: list[list], confidence) -> dict:
    from edgeshrink.route.monitor import MonitorConfig
    from edgeshrink.route.router import threshold_of
    from edgeshrink.serve.llm.watch import LLMWatch, token_value
    from edgeshrink.serve.metrics import LLMMetrics

    watch = LLMWatch(".", router, policy, MonitorConfig(), LLMMetrics(), confidence, log=lambda message: None)
    first = None
    for n, tokens in enumerate(stream, 1):
        if policy == "handoff":
            threshold = router["handoff"]["threshold"]
            cut = next((i for i, t in enumerate(tokens) if token_value(t, router["handoff"]["signal"]) < threshold),
                       None) if threshold is not None else 0
            generated = tokens if cut is None else tokens[:cut + 1]
            watch.after_answer("handoff", [], generated, len(tokens) if cut is None else cut, cut is not None, None)
        else:
            sure = confidence(tokens) >= threshold_of(router)
            watch.after_answer("answer", [], tokens, len(tokens) if sure else 0, not sure, None)
        if first is None and watch.monitor.firing():
            first = n
    return {"first_fired_at": first, "fired": sorted(k for k, v in watch.monitor.state.items() if v["fired"])}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from edgeshrink.data import SplitConfig, load_data, split_examples
    from edgeshrink.route.confidence import confidence_scores
    from edgeshrink.route.router import read_router
    from edgeshrink.runtime.generate import Generator
    from edgeshrink.runtime.prompted import answer_signals

    router = read_router(args.device)
    if not (router.get("handoff") or {}).get("reference") or not router.get("reference"):
        raise SystemExit(f"{args.device}: router.json has no drift references: calibrate with --task open --handoff")
    generator = Generator(args.device, threads=args.threads)
    tokens = int(router.get("answer_tokens") or 32)
    template = router.get("template") or "{text}"
    held_out = split_examples(load_data("open-prompts"), SplitConfig()).test.texts[:args.prompts]
    held_out = [[{"role": "user", "content": template.replace("{text}", t)}] for t in held_out]
    paragraphs = [p.strip() for work in load_data("shakespeare").texts for p in work.split("\n\n")
                  if len(p.strip()) > 200]
    passages = [paragraphs[i] for i in np.random.default_rng(1).choice(len(paragraphs), args.prompts, replace=False)]
    shakespeare = [[{"role": "user", "content": f"Explain this passage in plain English.\n\n{t[:600]}"}]
                   for t in passages]
    tweets = load_data("sentiment-tweets").texts
    tweets = [[{"role": "user", "content": f"Reply to this tweet: {tweets[i]}"}]
              for i in np.random.default_rng(2).choice(len(tweets), args.prompts, replace=False)]
    pools = {"held-out": answers(generator, held_out, tokens, "held-out"),
             "shakespeare": answers(generator, shakespeare, tokens, "shakespeare"),
             "tweets": answers(generator, tweets, tokens, "tweets")}

    def confidence(toks) -> float:
        signals = answer_signals([(t.logprob, t.entropy) for t in toks])
        fitted = {"temperature": float(router["temperature"]), "bias": router.get("bias")}
        return float(confidence_scores(router["signal"], np.zeros((1, 2)),
                                       {k: np.array([v]) for k, v in signals.items()}, fitted)[0])

    from edgeshrink.route.router import threshold_of
    from edgeshrink.serve.llm.watch import token_value

    def handed_off(toks) -> bool:
        threshold = router["handoff"]["threshold"]
        return threshold is None or any(token_value(t, router["handoff"]["signal"]) < threshold for t in toks)

    rng = np.random.default_rng(0)
    result = {"machine": {"isa": cpu_info()["isa"]}, "device": str(args.device), "answer_tokens": tokens,
              "prompts": {k: len(v) for k, v in pools.items()}, "policies": {},
              "pools": {name: {"mean_token_logprob": float(np.mean([t.logprob for a in pool for t in a])),
                               "answer_confidence_median": float(np.median([confidence(a) for a in pool])),
                               "escalated": float(np.mean([confidence(a) < threshold_of(router) for a in pool])),
                               "handed_off": float(np.mean([handed_off(a) for a in pool]))}
                        for name, pool in pools.items()}}
    print(json.dumps(result["pools"]), flush=True)
    for policy, shifted in (("handoff", "shakespeare"), ("answer", "shakespeare"), ("handoff", "tweets"),
                            ("answer", "tweets")):
        quiet = [replay(router, policy, [pools["held-out"][i] for i in rng.integers(0, len(pools["held-out"]), 600)],
                        confidence) for _ in range(args.streams)]
        shifts = []
        for _ in range(args.streams):
            before = [pools["held-out"][i] for i in rng.integers(0, len(pools["held-out"]), 300)]
            after = [pools[shifted][i] for i in rng.integers(0, len(pools[shifted]), 300)]
            shifts.append(replay(router, policy, before + after, confidence))
        false_alarms = [r for r in quiet if r["first_fired_at"] is not None]
        early = [r for r in shifts if r["first_fired_at"] is not None and r["first_fired_at"] <= 300]
        detected = [r["first_fired_at"] - 300 for r in shifts if r["first_fired_at"] is not None
                    and r["first_fired_at"] > 300]
        result["policies"][f"{policy}, {shifted}"] = {
            "false_alarm_rate": len(false_alarms) / len(quiet),
            "false_alarm_signals": sorted({s for r in false_alarms for s in r["fired"]}),
            "detection_rate": len(detected) / len(shifts), "fired_before_the_shift": len(early) / len(shifts),
            "delay_median": statistics.median(detected) if detected else None,
            "delay_p90": float(np.percentile(detected, 90)) if detected else None,
            "signals_fired_after_shift": sorted({s for r in shifts for s in r["fired"]})}
        print(policy, shifted, json.dumps(result["policies"][f"{policy}, {shifted}"]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

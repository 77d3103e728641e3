"""The device speaks first (issue 31): time to first token, who writes the tokens, and agreement with the cloud, for
answer-level routing (the service before streaming handoff) against token-level handoff, both served on loopback and
read with the official ``openai`` client.

    PYTHONPATH=src:. .venv/bin/python benchmarks/handoff_stream.py --device runs/smollm2-int4-handoff \
        --cloud runs/smollm2-fp32 [--threads 1] [--bbc 30] [--chat 30] [--sentiment 200] [--max-tokens 48] \
        [--also runs/smollm2-int4-answerloss | --threshold -2.73] [--json benchmarks/results/handoff-stream.json]

``--device`` is a device bundle whose router.json has a handoff section (``route calibrate --task open
--handoff``). One ``serve-cloud`` on the cloud bundle and one ``serve`` on the device bundle (``--cloud``), each
with ``--threads``; every request is greedy with no repetition penalty (the calibration's settings). Per prompt,
interleaved: the device service with ``edgeshrink.route`` "answer" (score the whole answer, then keep it or
escalate: today's service), "handoff" (stream at once, hand off at the first unsure token) and "device" (never
escalate), and the cloud service alone (its greedy answer, the reference). With ``--also`` (a second calibration
of the device, e.g. ``--handoff-loss answer``) or ``--threshold`` (a hand-set copy), a second device service adds
the mode "handoff-strict".

Prompts: ``--bbc`` BBC articles (test split) cut so that the rendered chat prompt is exactly 128 tokens ("Summarise
this article"), ``--chat`` held-out ``open-prompts`` chat prompts, and ``--sentiment`` movie reviews (test split)
asked for one word, positive or negative; the word is the label (accuracy against the truth and agreement with the
cloud's word, with a paired McNemar test).

Token agreement: each answer's device-written tokens (re-tokenized from its device span) checked against the cloud's
greedy choice in one teacher-forced pass of the cloud bundle (in process, after the timed part).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from edgeshrink.doctor import cpu_info

MODES = ["answer", "handoff", "device", "cloud"]  # + "handoff-strict" with --threshold
SENTIMENT = ("Here is a movie review.\n\n{text}\n\nIs this review positive or negative? Answer with one word: "
             "positive or negative.")


def with_threshold(bundle: Path, threshold: float) -> Path:
    """A copy of ``bundle`` (in a temporary folder, named as the bundle) whose router's handoff threshold is
    ``threshold``."""
    import shutil
    import tempfile

    from edgeshrink.route.calibrate import write_router
    from edgeshrink.route.router import read_router

    out = Path(tempfile.mkdtemp(prefix="handoff-")) / bundle.name
    shutil.copytree(bundle, out)
    router = read_router(out)
    router["handoff"] = {**router["handoff"], "threshold": threshold, "guarantee": "set by hand: none"}
    write_router(out, router)
    return out


def bbc_prompts(generator, n: int, length: int = 128) -> list[list[dict]]:
    from edgeshrink.data import SplitConfig, load_data, split_examples

    texts = split_examples(load_data("bbc-news"), SplitConfig()).test.texts[:n]
    prompts = []
    for text in texts:
        words = text.split()
        lo, hi = 1, len(words)
        while lo < hi:  # the most words whose rendered prompt is at most `length` tokens
            mid = (lo + hi + 1) // 2
            if len(generator.encode(chat(" ".join(words[:mid])))) <= length:
                lo = mid
            else:
                hi = mid - 1
        prompts.append(chat(" ".join(words[:lo])))
    return prompts


def chat(article: str) -> list[dict]:
    return [{"role": "user", "content": f"Summarise this article in two sentences.\n\n{article}"}]


def chat_prompts(n: int) -> list[list[dict]]:
    from edgeshrink.data import SplitConfig, load_data, split_examples

    examples = load_data("open-prompts")
    try:
        texts = split_examples(examples, SplitConfig()).test.texts
    except Exception:  # noqa: BLE001 - unlabelled: the second half
        texts = examples.texts[len(examples.texts) // 2:]
    return [[{"role": "user", "content": t}] for t in texts[:n]]


def sentiment_prompts(n: int) -> tuple[list[list[dict]], list[str]]:
    from edgeshrink.data import SplitConfig, load_data, split_examples

    test = split_examples(load_data("sentiment-movies"), SplitConfig()).test
    rng = np.random.default_rng(0)
    rows = rng.choice(len(test.texts), min(n, len(test.texts)), replace=False)
    return ([[{"role": "user", "content": SENTIMENT.format(text=test.texts[i][:1500])}] for i in rows],
            [test.labels[i] for i in rows])


def ask(client, model: str, messages, max_tokens: int, route: str | None) -> dict:
    """One streamed answer: time to first content chunk and to the end, the text by span, the end's facts."""
    extra = {"repetition_penalty": 1.0} | ({"edgeshrink": {"route": route}} if route else {})
    started = time.perf_counter()
    first, pieces, end, usage = None, [], {}, None
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True},
                                                extra_body=extra):
        facts = (chunk.model_extra or {}).get("edgeshrink") or {}
        usage = chunk.usage or usage
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces.append((chunk.choices[0].delta.content, facts.get("span", "cloud")))
        if chunk.choices and chunk.choices[0].finish_reason:
            end = facts
    done = time.perf_counter()
    return {"ttft_s": None if first is None else first - started, "total_s": done - started,
            "text": "".join(p for p, _ in pieces), "device_text": "".join(p for p, s in pieces if s == "device"),
            "source": end.get("source", "cloud"), "handoff_at": (end.get("handoff") or {}).get("at_token"),
            "completion_tokens": usage.completion_tokens if usage else None}


def label_of(text: str) -> str | None:
    """The first of "positive" / "negative" the answer says (None: neither)."""
    import re

    found = re.search(r"\b(positive|negative)\b", text.lower())
    return found.group(1) if found else None


def token_agreement(cloud_gen, device_gen, messages, device_text: str) -> tuple[int, int]:
    """(agreeing, total) device-written tokens against the cloud's greedy choice after the same prefix."""
    if not device_text:
        return 0, 0
    prompt = device_gen.encode(messages)
    answer = device_gen.tokenizer.encode(device_text, add_special_tokens=False).ids
    choices = cloud_gen.logits(prompt + answer)[len(prompt) - 1:-1].argmax(axis=-1)
    return int(np.sum(choices == np.array(answer))), len(answer)


def summarise(rows: list[dict], name: str) -> dict:
    out = {"set": name, "prompts": len(rows) // len(MODES)}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        ttft = [r["ttft_s"] for r in mine if r["ttft_s"] is not None]
        out[mode] = {"ttft_median_s": statistics.median(ttft), "ttft_p90_s": float(np.percentile(ttft, 90)),
                     "total_median_s": statistics.median(r["total_s"] for r in mine),
                     "sources": {s: sum(r["source"] == s for r in mine) for s in sorted({r["source"] for r in mine})}}
        if mode != "cloud":
            cloud = {r["prompt"]: r["text"] for r in rows if r["mode"] == "cloud"}
            for r in mine:
                r["equal_to_cloud"] = r["text"] == cloud[r["prompt"]]
            out[mode]["whole_answer_equal_to_cloud"] = float(np.mean([r["equal_to_cloud"] for r in mine]))
            tokens = sum(r["completion_tokens"] or 0 for r in mine)
            device = sum(r["device_tokens"] for r in mine)
            out[mode]["device_token_share"] = device / max(tokens, 1)
            out[mode]["cloud_token_share"] = 1 - device / max(tokens, 1)
            agree = sum(r["agree"][0] for r in mine)
            total = sum(r["agree"][1] for r in mine)
            out[mode]["device_token_agreement"] = agree / total if total else None
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", type=Path, required=True)
    parser.add_argument("--cloud", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bbc", type=int, default=30)
    parser.add_argument("--chat", type=int, default=30)
    parser.add_argument("--sentiment", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threshold", type=float, default=None, help="Serve a copy of --device whose handoff "
                        "threshold is this instead of the calibrated one (a point of the calibration curve; no "
                        "guarantee is claimed for it).")
    parser.add_argument("--also", type=Path, default=None, help="A second device bundle (another handoff "
                        "calibration of the same model), served beside --device: mode handoff-strict.")
    args = parser.parse_args()
    strict = with_threshold(args.device, args.threshold) if args.threshold is not None else args.also
    if strict is not None:
        MODES.insert(2, "handoff-strict")

    import openai

    from edgeshrink.route.router import read_router
    from edgeshrink.runtime.generate import Generator
    from edgeshrink.serve.process import ServerProcess
    from edgeshrink.stats import accuracy_interval, mcnemar_p

    handoff = read_router(args.device)["handoff"]
    device_gen = Generator(args.device, threads=2)
    sets = {"bbc-128": bbc_prompts(device_gen, args.bbc), "chat": chat_prompts(args.chat)}
    sentiment, truth = sentiment_prompts(args.sentiment)
    sets["sentiment"] = sentiment
    print(f"handoff threshold {handoff['threshold']} ({handoff['signal']}); prompts: "
          + ", ".join(f"{k} {len(v)}" for k, v in sets.items()), flush=True)
    threads = ["--threads", args.threads, "--rate", 0, "--port", 0]
    names = {"device": args.device.name, "cloud": args.cloud.name, "strict": strict.name if strict else None}
    from contextlib import ExitStack

    with ExitStack() as stack:
        cloud = stack.enter_context(ServerProcess(["serve-cloud", args.cloud, *threads]))
        serving = {"device": args.device} | ({"strict": strict} if strict is not None else {})
        urls = {"cloud": cloud.url} | {
            key: stack.enter_context(ServerProcess(["serve", path, "--cloud", cloud.url, "--cloud-model",
                                                    names["cloud"], "--deadline-ms", 20000, "--read-timeout-s", 20,
                                                    *threads])).url for key, path in serving.items()}
        clients = {key: openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) for key, url in urls.items()}
        ask(clients["device"], names["device"], sets["chat"][0], 4, "device")  # warm both
        ask(clients["cloud"], names["cloud"], sets["chat"][0], 4, None)
        if strict is not None:
            ask(clients["strict"], names["strict"], sets["chat"][0], 4, "device")
        rows = []
        for name, prompts in sets.items():
            tokens = 10 if name == "sentiment" else args.max_tokens
            for i, messages in enumerate(prompts):
                for mode in MODES:  # interleaved per prompt
                    key = {"cloud": "cloud", "handoff-strict": "strict"}.get(mode, "device")
                    r = ask(clients[key], names[key], messages, tokens,
                            {"cloud": None, "handoff-strict": "handoff"}.get(mode, mode))
                    rows.append(r | {"set": name, "prompt": i, "mode": mode})
                if (i + 1) % 10 == 0:
                    print(f"{name}: {i + 1}/{len(prompts)} prompts", flush=True)
    cloud_gen = Generator(args.cloud, threads=2)
    for r in rows:  # device-written tokens and their agreement with the cloud's greedy choice
        messages = sets[r["set"]][r["prompt"]]
        device_text = r["device_text"] if r["mode"] != "cloud" else ""
        if r["mode"] == "answer" and r["source"] != "device":
            device_text = ""  # escalated: the cloud wrote it
        r["device_tokens"] = (r["handoff_at"] if r["source"] in ("handoff", "cloud") and r["handoff_at"] is not None
                              else r["completion_tokens"] or 0) if r["mode"] != "cloud" and device_text else 0
        r["agree"] = token_agreement(cloud_gen, device_gen, messages, device_text) if r["mode"] != "cloud" else (0, 0)
    result = {"machine": {"isa": cpu_info()["isa"], "threads": args.threads}, "handoff": {
        k: handoff.get(k) for k in ("signal", "threshold", "alpha", "delta", "loss")},
        "strict": None if strict is None else {k: read_router(strict)["handoff"].get(k) for k in
                                               ("signal", "threshold", "alpha", "delta", "loss", "guarantee")},
        "max_tokens": args.max_tokens,
        "sets": [summarise([r for r in rows if r["set"] == name], name) for name in sets]}
    labels = {mode: [label_of(r["text"]) for r in rows if r["set"] == "sentiment" and r["mode"] == mode]
              for mode in MODES}
    truth_ok = {mode: np.array([p == t for p, t in zip(labels[mode], truth)]) for mode in MODES}
    result["sentiment"] = {}
    for mode in MODES:
        ok = truth_ok[mode]
        low, high = accuracy_interval(int(ok.sum()), len(ok))
        same = np.array([a == b for a, b in zip(labels[mode], labels["cloud"])])
        result["sentiment"][mode] = {
            "accuracy": float(ok.mean()), "ci95": [low, high], "agreement_with_cloud": float(same.mean()),
            "unparsed": sum(p is None for p in labels[mode]),
            "mcnemar_p_vs_cloud": mcnemar_p(int((ok & ~truth_ok["cloud"]).sum()), int((truth_ok["cloud"] & ~ok).sum()))}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        fields = ["set", "prompt", "mode", "source", "handoff_at", "completion_tokens", "device_tokens", "agree",
                  "equal_to_cloud", "ttft_s", "total_s"]  # per answer: the figures, not the texts
        slim = [[round(r.get(k), 4) if isinstance(r.get(k), float) else r.get(k) for k in fields] for r in rows]
        args.json.write_text(json.dumps(result | {"row_fields": fields, "rows": slim}))


if __name__ == "__main__":
    main()

"""The web runtime against the native one, on the same bundles, in one interleaved run (issue 29): onnxruntime-web's
wasm backend under Node (the runtime `edgeshrink pack --target web` writes) against Python ONNX Runtime, 1 thread
each; the pack's sizes; the time the demo page needs to become ready in headless Chromium.

    PYTHONPATH=src:. .venv/bin/python benchmarks/web_bench.py --classifier runs/sentiment-edge/device \
        --llm runs/smollm2-int4 [--rounds 3] [--json benchmarks/results/web.json]

Classifier: p50 of one 64-token text (rounds x --repeats calls each side, the median of each round's p50), wasm timed
after --warmup-s seconds of calls (V8 swaps its baseline code for optimized code in the background meanwhile).
Language model: greedy, --new-tokens after the chat prompt "What is the capital of France?", EOS ignored: time to
first token (prefill of the prompt) and decode tokens/s. Rounds alternate native and wasm. Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from edgeshrink.doctor import cpu_info
from tests.web.node import browser_run, node_run

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def text_of(predictor, tokens: int) -> str:
    """A text the bundle's tokenizer makes exactly ``tokens`` ids of (special tokens included)."""
    words = ["the", "film", "was", "a", "quiet", "and", "warm", "surprise"]
    text = ""
    for i in range(4 * tokens):
        longer = (text + " " + words[i % len(words)]).strip()
        if len(predictor.encode([longer])[0]["input_ids"][0]) > tokens:
            break
        text = longer
    assert len(predictor.encode([text])[0]["input_ids"][0]) == tokens, "cannot make a text of that many tokens"
    return text


def native_classifier(predictor, text: str, repeats: int) -> float:
    for _ in range(20):
        predictor.predict([text])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict([text])
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def native_llm(generator, new_tokens: int) -> dict:
    result = generator.generate(PROMPT, max_new_tokens=new_tokens, ignore_eos=True)
    return {"first_token_ms": result.first_token_ms, "decode_tokens_per_s": result.decode_tokens_per_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", type=Path, required=True, help="a text-classification bundle")
    parser.add_argument("--llm", type=Path, required=True, help="a text-generation bundle")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=200, help="classifier calls per round and side")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="wasm: seconds of calls before timing (V8 tiers "
                        "the wasm up to optimized code in the background)")
    parser.add_argument("--tokens", type=int, default=64, help="classifier text length in tokens")
    parser.add_argument("--new-tokens", type=int, default=32, help="language model: tokens generated per run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from edgeshrink.runtime import load
    from edgeshrink.web.pack import pack_web
    from edgeshrink.web.serve import serve_in_thread

    cpu = cpu_info()
    print(f"{cpu['model']}, ISA {' '.join(cpu['isa'])}")
    work = Path(tempfile.mkdtemp(prefix="edgeshrink-web-bench-"))
    packs = {name: pack_web(bundle, work / name, demo=True) for name, bundle in
             (("classifier", args.classifier), ("llm", args.llm))}
    predictor = load(args.classifier, threads=1)
    generator = load(args.llm, threads=1)
    text = text_of(predictor, args.tokens)
    rounds = []
    for r in range(args.rounds):
        row = {"native_classifier_p50_ms": native_classifier(predictor, text, args.repeats)}
        reply = node_run(work / "classifier", {"bench_classify": text, "repeats": args.repeats, "warmup_s": args.warmup_s})
        row["wasm_classifier_p50_ms"] = statistics.median(reply["times_ms"])
        row["native_llm"] = native_llm(generator, args.new_tokens)
        reply = node_run(work / "llm", {"bench_generate": PROMPT, "repeats": 1,
                                        "options": {"maxNewTokens": args.new_tokens, "ignoreEos": True}}, timeout=1800)
        row["wasm_llm"] = reply["runs"][0]
        row["wasm_llm_load_ms"] = reply["load_ms"]
        rounds.append(row)
        print(f"round {r + 1}: {json.dumps(row)}", flush=True)
    ready = {}
    for name in packs:  # the demo page in headless Chromium: cross-origin isolated, so up to 4 wasm threads
        server, url = serve_in_thread(work / name)
        steps = [{"stream": PROMPT, "options": {"maxNewTokens": args.new_tokens, "ignoreEos": True}}] \
            if name == "llm" else [{"classify": text}]
        try:
            page = browser_run({"url": url, "steps": steps}, timeout=1800)
        finally:
            server.shutdown()
        ready[name] = {"page_ready_ms": page.get("ready_ms"), "runtime_load_ms": page["state"]["loadMs"],
                       "status": page.get("status")}
        if name == "llm":
            ready[name]["page_decode_tokens_per_s"] = page["steps"][0]["decodeTokensPerS"]
            ready[name]["page_first_token_ms"] = page["steps"][0]["firstTokenMs"]

    med = lambda values: statistics.median(values)  # noqa: E731
    summary = {
        "classifier": {"native_p50_ms": med([r["native_classifier_p50_ms"] for r in rounds]),
                       "wasm_p50_ms": med([r["wasm_classifier_p50_ms"] for r in rounds])},
        "llm": {"native_tokens_per_s": med([r["native_llm"]["decode_tokens_per_s"] for r in rounds]),
                "wasm_tokens_per_s": med([r["wasm_llm"]["decode_tokens_per_s"] for r in rounds]),
                "native_first_token_ms": med([r["native_llm"]["first_token_ms"] for r in rounds]),
                "wasm_first_token_ms": med([r["wasm_llm"]["first_token_ms"] for r in rounds])}}
    summary["classifier"]["wasm_over_native"] = summary["classifier"]["wasm_p50_ms"] / summary["classifier"]["native_p50_ms"]
    summary["llm"]["wasm_share_of_native"] = summary["llm"]["wasm_tokens_per_s"] / summary["llm"]["native_tokens_per_s"]
    c, l = summary["classifier"], summary["llm"]
    print("\n| bundle | native (Python ORT, 1 thread) | wasm (onnxruntime-web in Node, 1 thread) | ratio |")
    print("|---|---|---|---|")
    print(f"| {args.classifier.name}: p50, {args.tokens} tokens | {c['native_p50_ms']:.1f} ms | {c['wasm_p50_ms']:.1f} ms "
          f"| wasm {c['wasm_over_native']:.2f}x slower |")
    print(f"| {args.llm.name}: decode | {l['native_tokens_per_s']:.1f} tok/s | {l['wasm_tokens_per_s']:.2f} tok/s | "
          f"wasm {l['wasm_share_of_native']:.3f} of native |")
    print(f"| {args.llm.name}: first token ({generator.encode(PROMPT).__len__()}-token prompt) | "
          f"{l['native_first_token_ms']:.0f} ms | {l['wasm_first_token_ms']:.0f} ms | |")
    print("\n| pack | model | runtime wasm | runtime js | tokenizer | total | page ready (Chromium) | runtime load |")
    print("|---|---|---|---|---|---|---|---|")
    for name, pack in packs.items():
        s = pack["sizes"]
        print(f"| {name} | {s['model_bytes'] / 1e6:.1f} MB | {s['runtime_wasm_bytes'] / 1e6:.1f} MB | "
              f"{s['runtime_js_bytes'] / 1e6:.2f} MB | {s['tokenizer_bytes'] / 1e6:.2f} MB | {s['total_bytes'] / 1e6:.1f} MB"
              f" | {ready[name]['page_ready_ms']} ms | {ready[name]['runtime_load_ms']:.0f} ms |")
    llm_page = ready["llm"]
    print(f"\nIn Chromium ({llm_page['status'].split(': ')[1].split(',')[1].strip()}): {args.llm.name} decodes "
          f"{llm_page['page_decode_tokens_per_s']:.2f} tok/s, first token {llm_page['page_first_token_ms']:.0f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": cpu, "args": {k: str(v) for k, v in vars(args).items()},
                                         "rounds": rounds, "summary": summary, "ready": ready,
                                         "sizes": {k: v["sizes"] for k, v in packs.items()},
                                         "runtime": packs["classifier"]["runtime"]}, indent=2))


if __name__ == "__main__":
    main()

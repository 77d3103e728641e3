"""Speculative decoding device → cloud on the real pair: SmolLM2 fp32 (the cloud) verifies, an INT4 draft of it
(and, if given, the pruned and healed device model) proposes. Greedy, 16 chat prompts, interleaved per prompt:

    target alone      the cloud bundle generates by itself (one forward pass per token)
    in-process        speculate(draft, LocalTarget(cloud))
    loopback HTTP     speculate(draft, HTTPTarget(serve-cloud on 127.0.0.1)) — one round trip per round

Checks every speculative output is token-identical to the target's own, and reports acceptance rate, cloud
forward passes (= round trips over HTTP) per generated token, passes saved, and wall time (medians over the
prompts, and the ratio to the target alone on the same prompt).

    .venv/bin/python benchmarks/speculative.py --target runs/spec/smollm2-fp32 --draft runs/spec/smollm2-int4 \
        [--draft runs/smollm2-small/cache/04-quantize-*/bundle] [--tokens 128] [--threads 2] [--out runs/spec]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

from edgeshrink.doctor import cpu_info
from edgeshrink.runtime import load
from edgeshrink.runtime.speculative import LocalTarget, check_same_vocabulary, speculate
from edgeshrink.serve.llm_client import HTTPTarget
from edgeshrink.serve.process import ServerProcess

PROMPTS = ["Explain what a CPU cache is.", "Write a short story about a lighthouse keeper.",
           "What are the benefits of drinking water?", "Describe how a bicycle works.",
           "Give me three tips for learning a new language.", "Why is the sky blue?",
           "Write a polite email declining a meeting.", "Summarise the plot of Romeo and Juliet.",
           "How do plants make food?", "What is the difference between weather and climate?",
           "Describe a busy market in the morning.", "Explain recursion to a child.",
           "List some healthy breakfast ideas.", "What should I pack for a weekend hike?",
           "Write a haiku about autumn and explain it.", "How does a refrigerator keep food cold?"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--draft", type=Path, action="append", required=True)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/spec"))
    args = parser.parse_args()
    target = load(args.target, threads=args.threads)
    drafts = {str(d): load(d, threads=args.threads) for d in args.draft}
    for d in drafts.values():
        check_same_vocabulary(d, target)
    rows = {name: [] for name in ["alone"] + [f"{m}:{d}" for d in drafts for m in ("local", "http")]}
    with ServerProcess(["serve-cloud", args.target, "--port", 0, "--rate", 0, "--threads", args.threads]) as server:
        for i, text in enumerate(PROMPTS):
            prompt = [{"role": "user", "content": text}]
            started = time.perf_counter()
            alone = target.generate(prompt, args.tokens)
            alone_s = time.perf_counter() - started
            rows["alone"].append({"seconds": alone_s, "tokens": len(alone.token_ids)})
            for name, draft in drafts.items():
                for mode in ("local", "http"):
                    verifier = LocalTarget(target) if mode == "local" else HTTPTarget(server.url)
                    started = time.perf_counter()
                    result = speculate(draft, verifier, prompt, args.tokens, k=args.k)
                    seconds = time.perf_counter() - started
                    if mode == "http":
                        verifier.close()
                    st = result.stats
                    rows[f"{mode}:{name}"].append({
                        "seconds": seconds, "vs_alone": seconds / alone_s, "identical": result.token_ids == alone.token_ids,
                        "tokens": st["generated"], "acceptance_rate": st["acceptance_rate"],
                        "passes_per_token": st["target_passes_per_token"], "passes_saved": st["target_passes_saved"],
                        "mean_draft_length": st["mean_draft_length"]})
            print(f"prompt {i + 1}/{len(PROMPTS)}: alone {alone_s:.2f} s, " + ", ".join(
                f"{k} {v[-1]['seconds']:.2f} s ({v[-1]['passes_per_token']:.2f} passes/token)"
                for k, v in rows.items() if k != "alone"), flush=True)
    summary = {"machine": {"isa": cpu_info()["isa"]}, "target": str(args.target), "tokens": args.tokens,
               "threads": args.threads, "k_start": args.k, "prompts": len(PROMPTS), "runs": rows, "median": {}}
    for name, runs in rows.items():
        med = {"seconds": statistics.median(r["seconds"] for r in runs),
               "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in runs)}
        if name != "alone":
            total_tokens = sum(r["tokens"] for r in runs)
            med |= {"vs_alone": statistics.median(r["vs_alone"] for r in runs),
                    "identical": sum(r["identical"] for r in runs),
                    "acceptance_rate": statistics.median(r["acceptance_rate"] for r in runs),
                    "passes_per_token_pooled": sum(r["passes_per_token"] * r["tokens"] for r in runs) / total_tokens,
                    "passes_per_token": statistics.median(r["passes_per_token"] for r in runs),
                    "passes_saved": sum(r["passes_saved"] for r in runs), "tokens": total_tokens,
                    "mean_draft_length": statistics.median(r["mean_draft_length"] for r in runs)}
        summary["median"][name] = med
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speculative.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{'run':<60} {'median s':>9} {'tok/s':>7} {'vs alone':>9} {'identical':>9} {'accept':>7} "
          f"{'passes/tok':>10} {'saved':>6}")
    for name, m in summary["median"].items():
        if name == "alone":
            print(f"{name:<60} {m['seconds']:>9.2f} {m['tokens_per_s']:>7.1f}")
        else:
            print(f"{name:<60} {m['seconds']:>9.2f} {m['tokens_per_s']:>7.1f} {m['vs_alone']:>8.2f}x "
                  f"{m['identical']:>6}/{len(PROMPTS)} {100 * m['acceptance_rate']:>6.1f}% "
                  f"{m['passes_per_token_pooled']:>10.3f} {m['passes_saved']:>6}")


if __name__ == "__main__":
    main()

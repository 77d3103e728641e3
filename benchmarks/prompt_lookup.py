"""Prompt-lookup drafting against the target alone, greedy, on the real SmolLM2 bundles (issue 28).

Three prompt sets, chat-templated: "rewrite" and "summarise" put the first ~200 tokens of a BBC test article in
the prompt (input-grounded: the answer copies from it), "open" are `open-prompts` chat questions (nothing to copy).
For each bundle and prompt, interleaved (the order alternates per prompt): the bundle alone (`Generator.stream`),
and the same with `prompt_lookup=N` (what `generate --draft prompt-lookup` and `serve --prompt-lookup` run).
Reports per set the ratio of total wall times (alone / lookup: > 1 is a speed-up), the median per-prompt ratio,
acceptance, passes per token, and how many outputs are token-identical to the bundle's own.

    PYTHONPATH=src .venv/bin/python benchmarks/prompt_lookup.py --bundle runs/smollm2-fp32 \
        --bundle runs/smollm2-int4 [--prompts 16] [--tokens 128] [--threads 2] [--out runs/prompt-lookup]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

from edgeshrink.data import load_data
from edgeshrink.data.lm_text import load_lm_text
from edgeshrink.doctor import cpu_info
from edgeshrink.runtime import load
from edgeshrink.runtime.sampling import DEFAULT_REPETITION_PENALTY

TASKS = {"rewrite": "Rewrite this news article in your own words: {}",
         "summarise": "Summarise this news article: {}"}


def prompt_sets(tokenizer, count: int, article_tokens: int) -> dict[str, list[str]]:
    articles = load_lm_text("bbc-news").texts[:count]  # the test split's articles
    heads = [tokenizer.decode(tokenizer.encode(a).ids[:article_tokens]) for a in articles]
    sets = {task: [template.format(h) for h in heads] for task, template in TASKS.items()}
    sets["open"] = load_data("open-prompts").texts[:count]
    return sets


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--article-tokens", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ngram", type=int, default=3)
    parser.add_argument("--repetition-penalty", type=float, default=DEFAULT_REPETITION_PENALTY)
    parser.add_argument("--sets", default="rewrite,summarise,open")
    parser.add_argument("--out", type=Path, default=Path("runs/prompt-lookup"))
    args = parser.parse_args()
    summary = {"machine": {"isa": cpu_info()["isa"]}, "settings": {k: str(v) for k, v in vars(args).items()},
               "results": {}}
    for bundle in args.bundle:
        llm = load(bundle, threads=args.threads)
        sets = prompt_sets(llm.tokenizer, args.prompts, args.article_tokens)
        for name in args.sets.split(","):
            runs = []
            for i, text in enumerate(sets[name]):
                prompt = [{"role": "user", "content": text}]
                timed = {}
                for mode in (("alone", "lookup") if i % 2 == 0 else ("lookup", "alone")):
                    started = time.perf_counter()
                    info: dict = {}
                    tokens = list(llm.stream(prompt, args.tokens, info=info, repetition_penalty=args.repetition_penalty,
                                             prompt_lookup=args.ngram if mode == "lookup" else 0))
                    timed[mode] = (time.perf_counter() - started, [t.id for t in tokens], info)
                (alone_s, alone, _), (lookup_s, ids, st) = timed["alone"], timed["lookup"]
                runs.append({"alone_s": alone_s, "lookup_s": lookup_s, "speedup": alone_s / lookup_s,
                             "identical": ids == alone, "tokens": len(ids), "drafted": st["drafted"],
                             "accepted": st["accepted"], "passes_per_token": st["target_passes"] / max(1, len(ids))})
                print(f"{bundle.name} {name} {i + 1}/{len(sets[name])}: alone {alone_s:.2f} s, lookup {lookup_s:.2f} s "
                      f"({alone_s / lookup_s:.2f}x), {len(ids)} tokens, {st['accepted']}/{st['drafted']} "
                      f"drafted kept, identical {runs[-1]['identical']}", flush=True)
            drafted = sum(r["drafted"] for r in runs)
            summary["results"][f"{bundle.name}:{name}"] = {
                "prompts": len(runs), "identical": sum(r["identical"] for r in runs),
                "speedup_total": sum(r["alone_s"] for r in runs) / sum(r["lookup_s"] for r in runs),
                "speedup_median": statistics.median(r["speedup"] for r in runs),
                "acceptance_rate": sum(r["accepted"] for r in runs) / drafted if drafted else None,
                "passes_per_token": sum(r["passes_per_token"] * r["tokens"] for r in runs)
                / sum(r["tokens"] for r in runs),
                "tokens_median": statistics.median(r["tokens"] for r in runs), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prompt_lookup.json").write_text(json.dumps(summary, indent=1))
    for key, r in summary["results"].items():
        print(f"{key}: {r['speedup_total']:.2f}x wall (median {r['speedup_median']:.2f}x), acceptance "
              f"{100 * (r['acceptance_rate'] or 0):.0f}%, {r['passes_per_token']:.2f} passes/token, "
              f"identical {r['identical']}/{r['prompts']}")


if __name__ == "__main__":
    main()

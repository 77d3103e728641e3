"""Prompted classification accuracy of language-model bundles, zero- and few-shot, on the built-in tasks.

Every model answers the data's built-in prompt (route/prompts.py), scored by label log-likelihood over the
test split (the torch-free runtime, the same code the router uses). Accuracy with a Wilson 95% interval,
and an exact McNemar test of every model against the first one on the same examples (is a would-be cloud
model significantly better than a would-be device model? A router can only show gains if it is).

    .venv/bin/python benchmarks/llm_prompted.py --model runs/smollm2-fp32 --model runs/gemma3-fp32 \
        [--data sentiment-movies --data bbc-news] [--shots 0,4] [--limit 400] [--out runs/prompted.json]

The models answer the same examples (the first --limit of the test split), so McNemar pairs them.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgeshrink.data import SplitConfig, load_data, split_examples
from edgeshrink.doctor import cpu_info
from edgeshrink.route.prompts import prompt_for
from edgeshrink.runtime import load
from edgeshrink.runtime.prompted import PromptedLLM
from edgeshrink.stats import accuracy_interval, mcnemar_p


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--data", action="append")
    parser.add_argument("--shots", default="0,4")
    parser.add_argument("--limit", type=int, default=None, help="The first N test examples only (time).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/prompted.json"))
    args = parser.parse_args()
    results = {"machine": {"isa": cpu_info()["isa"]}, "rows": []}
    for data in args.data or ["sentiment-movies", "bbc-news"]:
        examples = load_data(data)
        split = split_examples(examples, SplitConfig())
        for shots in [int(s) for s in args.shots.split(",")]:
            test = split.test if args.limit is None else split.test.head(args.limit)
            truth = np.array(test.labels)
            correct_by_model = {}
            for path in args.model:
                prompt = prompt_for(examples, shots=split.train, few_shot=shots).to_dict()
                model = PromptedLLM(load(path, threads=args.threads), prompt)
                started = time.perf_counter()
                predicted = model.predict(test.texts)
                correct = np.array(predicted.labels) == truth
                correct_by_model[str(path)] = correct
                low, high = accuracy_interval(int(correct.sum()), len(correct))
                first = correct_by_model[str(args.model[0])]
                row = {"data": data, "shots": shots, "model": str(path), "n": len(correct),
                       "accuracy": float(correct.mean()), "ci95": [low, high],
                       "truncated": float(np.mean(predicted.truncated)),
                       "ms_per_example": 1000 * (time.perf_counter() - started) / len(correct),
                       "vs_first": {"only_this_right": int((correct & ~first).sum()),
                                    "only_first_right": int((first & ~correct).sum()),
                                    "mcnemar_p": mcnemar_p(int((correct & ~first).sum()), int((first & ~correct).sum()))}}
                results["rows"].append(row)
                print(f"{data:<17} {shots}-shot {path.name:<28} n={len(correct):>5} "
                      f"{100 * row['accuracy']:6.2f}% [{100 * low:.1f}, {100 * high:.1f}]  "
                      f"vs {args.model[0].name}: p={row['vs_first']['mcnemar_p']:.3g}  "
                      f"{row['ms_per_example']:.0f} ms/example", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

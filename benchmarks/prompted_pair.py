"""Accuracy of language-model bundles on a prompted classification task, side by side on the same examples
(issue 28: the fine-tuned cloud and its INT4 device models).

Each bundle answers the data's built-in prompt (runtime/prompted.py, label log-likelihood) on the test split
(and, with --parts calibration,test, the calibration split too). Bundles take turns by chunks of 64 examples,
so slow drift of a shared host hits them alike. Reports accuracy with a 95% Wilson interval and, against the
first bundle (the cloud), the difference with an exact McNemar test; writes every example's probabilities and
answer signals to an .npz per bundle and part (enough to fit and check a router offline).

    PYTHONPATH=src .venv/bin/python benchmarks/prompted_pair.py runs/sentiment-llm-fp32 runs/sentiment-llm-int4 \
        [--data sentiment-movies] [--parts test] [--threads 1] [--out runs/prompted-pair] [--against CLOUD.npz]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from edgeshrink.data import load_data, split_examples
from edgeshrink.doctor import cpu_info
from edgeshrink.route.prompts import prompt_for
from edgeshrink.runtime import load
from edgeshrink.runtime.prompted import PromptedLLM


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict:
    """Exact McNemar on paired right/wrong vectors: b right where a is wrong vs the reverse."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_first_right": only_a, "only_second_right": only_b, "p": float(p)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--data", default="sentiment-movies")
    parser.add_argument("--parts", default="test")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/prompted-pair"))
    parser.add_argument("--against", type=Path, default=None,
                        help="an .npz this script wrote for the same part (the cloud's): every bundle is compared "
                             "with those saved answers (bundles are deterministic, so the cloud need not run again)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    examples = load_data(args.data)
    split = split_examples(examples)
    prompt = prompt_for(examples, shots=split.train).to_dict()
    models = [PromptedLLM(load(b, threads=args.threads), prompt) for b in args.bundles]
    report = {"isa": cpu_info()["isa"], "data": args.data, "threads": args.threads, "parts": {}}
    for part_name in args.parts.split(","):
        part = getattr(split, part_name)
        texts, labels = part.texts[:args.limit], part.labels[:args.limit]
        n = len(texts)
        probs = [[] for _ in models]
        signals = [[] for _ in models]
        seconds = [0.0 for _ in models]
        started = time.perf_counter()
        for lo in range(0, n, args.chunk):
            for i, model in enumerate(models):
                t0 = time.perf_counter()
                pred = model.predict(texts[lo:lo + args.chunk])
                seconds[i] += time.perf_counter() - t0
                probs[i].append(pred.probabilities)
                signals[i].append(pred.signals)
            done = min(n, lo + args.chunk)
            left = (time.perf_counter() - started) / done * (n - done)
            print(f"{part_name}: {done}/{n} examples (about {left:.0f} s left)", flush=True)
        truth = np.array([list(models[0].labels).index(label) for label in labels])
        rows, right = [], []
        reference = None  # the saved answers' right/wrong, when --against
        if args.against is not None:
            saved = np.load(args.against)
            if not np.array_equal(saved["truth"], truth):
                raise SystemExit(f"{args.against} was scored on other examples")
            reference = saved["probs"].argmax(1) == truth
        for i, bundle in enumerate(args.bundles):
            p = np.concatenate(probs[i])
            sig = {k: np.concatenate([s[k] for s in signals[i]]) for k in signals[i][0]}
            np.savez(args.out / f"{bundle.name}-{part_name}.npz", probs=p, truth=truth, **sig)
            ok = p.argmax(1) == truth
            right.append(ok)
            lo_ci, hi_ci = wilson(int(ok.sum()), n)
            row = {"bundle": str(bundle), "accuracy": float(ok.mean()), "ci95": [lo_ci, hi_ci], "n": n,
                   "ms_per_example": 1000 * seconds[i] / n}
            if i:
                row["vs_first"] = {"difference": float(ok.mean() - right[0].mean()), **mcnemar(right[0], ok)}
            if reference is not None:
                row["vs_against"] = {"against": str(args.against), "difference": float(ok.mean() - reference.mean()),
                                     **mcnemar(reference, ok)}
                print(f"{part_name} {bundle.name}: {100 * row['vs_against']['difference']:+.2f} points vs "
                      f"{args.against.name} ({100 * reference.mean():.2f}%), McNemar p = "
                      f"{row['vs_against']['p']:.3g} ({row['vs_against']['only_first_right']} vs "
                      f"{row['vs_against']['only_second_right']} examples only one gets right)", flush=True)
            rows.append(row)
            extra = (f", {100 * row['vs_first']['difference']:+.2f} points vs {args.bundles[0].name} "
                     f"(McNemar p = {row['vs_first']['p']:.3g})") if i else ""
            print(f"{part_name} {bundle.name}: {100 * ok.mean():.2f}% [{100 * lo_ci:.1f}, {100 * hi_ci:.1f}], "
                  f"{row['ms_per_example']:.0f} ms/example{extra}", flush=True)
        report["parts"][part_name] = rows
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"isa {' '.join(report['isa'])}")


if __name__ == "__main__":
    main()

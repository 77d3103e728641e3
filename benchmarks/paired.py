"""Paired comparison on the same test examples: accuracy with Wilson 95% intervals, exact McNemar vs the first.

    .venv/bin/python benchmarks/paired.py sentiment-movies runs/demo/distilled-l3-aug2 runs/demo/labels-only-l3 ...

Each model is a bundle or a PyTorch model directory. Prints JSON.
"""

import json
import sys

import numpy as np

from edgeshrink.data import load_data, split_examples
from edgeshrink.models.torch_text import load_predictor
from edgeshrink.stats import accuracy_interval, mcnemar_p


def main(data: str, models: list[str]) -> dict:
    test = split_examples(load_data(data)).test
    correct = {}
    for model in models:
        labels = load_predictor(model).predict(test.texts).labels
        correct[model] = np.array([p == y for p, y in zip(labels, test.labels)])
    first = correct[models[0]]
    out = {"data": data, "n": len(test), "models": []}
    for model, c in correct.items():
        low, high = accuracy_interval(int(c.sum()), len(c))
        only_first, only_this = int((first & ~c).sum()), int((c & ~first).sum())
        out["models"].append({"model": model, "accuracy": float(c.mean()), "ci95": [low, high],
                              "vs_first": {"only_first_right": only_first, "only_this_right": only_this,
                                           "mcnemar_p": mcnemar_p(only_first, only_this)}})
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:]), indent=2))

"""Does the architecture layer change the MiniLM path? Old code vs this checkout, on the real model and data.

    git worktree add /tmp/old a290f40        # the last commit before models/arch.py
    .venv/bin/python benchmarks/arch_equivalence.py --old-src /tmp/old/src --out benchmarks/results/arch-equivalence.json

Each step runs in a subprocess with PYTHONPATH pointing at one version's source: MiniLM with a seeded
head (the teacher) -> prune (the sentiment-edge recipe's shape: 4 layers, half the heads, 1/8 of the FFN,
vocabulary; 256 importance examples) -> one distillation epoch on 320 train texts (+1 augmented copy) ->
export. Compared: student and distilled weights, tokenizer, calibration history, test correct count,
ONNX op counts and logits, and batch-1 latency of both exports at 64 tokens, interleaved.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The same scripts run on the code before issue 26 (prune(teacher, data, out, ...), configs beside the verb)
# and after it (prune(model, out, config, *, data), configs in the per-task module).
PRUNE = ('import sys\ntry:\n    from edgeshrink.compress.prune.encoder import PruneConfig\n    new = True\n'
         'except ImportError:\n    from edgeshrink.compress.prune import PruneConfig\n    new = False\n'
         'from edgeshrink.compress.prune import prune\n'
         'config = PruneConfig(layers=4, heads_keep=0.5, ffn_keep=0.125, vocab=True, importance_examples=256)\n'
         'if new:\n    prune(sys.argv[1], sys.argv[2], config, data="sentiment-movies", force=True)\n'
         'else:\n    prune(sys.argv[1], "sentiment-movies", sys.argv[2], config, force=True)')
DISTILL = ('import sys\ntry:\n    from edgeshrink.compress.distill.encoder import DistillConfig\n    new = True\n'
           'except ImportError:\n    from edgeshrink.compress.distill import DistillConfig\n    new = False\n'
           'from edgeshrink.compress.distill import distill\n'
           'config = DistillConfig(epochs=1, gamma_hidden=1.0, max_train_examples=320, augment={"copies": 1})\n'
           'if new:\n    distill(sys.argv[1], sys.argv[2], sys.argv[3], config, data="sentiment-movies", force=True)\n'
           'else:\n    distill(sys.argv[1], sys.argv[2], "sentiment-movies", sys.argv[3], config, force=True)')
EXPORT = 'import sys\nfrom edgeshrink.export import export\nexport(sys.argv[1], sys.argv[2], force=True)'


def run(code: str, src: str, *args) -> None:
    subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": src})


def max_weight_diff(a: Path, b: Path) -> tuple[bool, float]:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    if sorted(x) != sorted(y) or any(x[k].shape != y[k].shape for k in x):
        return False, float("inf")
    return True, max(float((x[k] - y[k]).abs().max()) for k in x)


def latency_ms(paths: dict[str, Path], rounds: int = 6, runs: int = 100) -> dict[str, float]:
    import numpy as np
    import onnxruntime as ort

    sessions, feeds = {}, {}
    ids = np.random.default_rng(0).integers(1000, 5000, (1, 64))
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sessions[name] = ort.InferenceSession(str(path / "model.onnx"), options, providers=["CPUExecutionProvider"])
        all_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds[name] = {i.name: all_feeds[i.name] for i in sessions[name].get_inputs()}
        for _ in range(10):
            sessions[name].run(None, feeds[name])
    times = {name: [] for name in paths}
    for _ in range(rounds):  # interleaved: old and new take turns
        for name in paths:
            for _ in range(runs // rounds):
                start = time.perf_counter()
                sessions[name].run(None, feeds[name])
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-src", required=True, help="src/ of a checkout before the architecture layer")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    new_src = str(Path(__file__).resolve().parents[1] / "src")
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    root = Path(tempfile.mkdtemp(prefix="arch-equivalence-"))
    torch.manual_seed(0)
    from edgeshrink.models.sources import resolve_model
    from edgeshrink.models.torch_text import load_classifier

    net, tok = load_classifier(resolve_model("minilm"), label_names=("negative", "positive"))
    net.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    (root / "teacher" / "edgeshrink.json").write_text(json.dumps({"max_length": 64}))
    started = time.perf_counter()
    for name, src in (("old", args.old_src), ("new", new_src)):
        run(PRUNE, src, root / "teacher", root / f"{name}-student")
        run(DISTILL, src, root / "teacher", root / f"{name}-student", root / f"{name}-distilled")
        run(EXPORT, src, root / f"{name}-student", root / f"{name}-bundle")
    result = {"machine": __import__("edgeshrink.doctor", fromlist=["cpu_info"]).cpu_info(),
              "seconds": round(time.perf_counter() - started, 1)}
    same, diff = max_weight_diff(root / "old-student", root / "new-student")
    result["student"] = {"same_shapes": same, "max_abs_weight_diff": diff,
                         "tokenizer_identical": (root / "old-student" / "tokenizer.json").read_bytes()
                         == (root / "new-student" / "tokenizer.json").read_bytes()}
    same, diff = max_weight_diff(root / "old-distilled", root / "new-distilled")
    records = {n: json.loads((root / f"{n}-distilled" / "edgeshrink.json").read_text()) for n in ("old", "new")}
    result["distilled"] = {"same_shapes": same, "max_abs_weight_diff": diff,
                           "history": {n: r["history"] for n, r in records.items()},
                           "test_correct": {n: r["test"]["correct"] for n, r in records.items()}}
    bundles = {n: root / f"{n}-bundle" for n in ("old", "new")}
    ops = {n: collections.Counter(node.op_type for node in onnx.load(str(p / "model.onnx")).graph.node)
           for n, p in bundles.items()}
    ids = np.random.default_rng(1).integers(1000, 5000, (4, 64))
    all_feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    logits = {}
    for n, p in bundles.items():
        session = ort.InferenceSession(str(p / "model.onnx"), providers=["CPUExecutionProvider"])
        logits[n] = session.run(None, {i.name: all_feeds[i.name] for i in session.get_inputs()})[0]
    result["export"] = {"op_counts_equal": ops["old"] == ops["new"],
                        "max_abs_logit_diff": float(np.abs(logits["old"] - logits["new"]).max()),
                        "p50_ms_batch1_64_tokens_1_thread": latency_ms(bundles)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Student-shape and distillation-loss sweep behind recipes/sentiment-edge.yaml's student (BENCHMARKS.md).

    python benchmarks/student_sweep.py TEACHER [VARIANT ...] [--device cuda] [--jobs 6] [--out DIR]

TEACHER is the recipe's fine-tuned cloud model (runs/sentiment-edge/cache/00-finetune-*/model). Each
variant prunes the teacher (`prune`) and distills the student (`distill`, 4 epochs, [CLS] hidden loss,
4 augmented copies, as in the recipe) in its own process, and prints one JSON line: calibration accuracy
per epoch (what the choice is made on) and the test accuracy of the fp32 student (reported, not used to
choose). The published sweep ran on a GPU (one H100, 6 variants at a time): on the 2-core CPU one variant
takes ~25 minutes. The published figures came from a first, ad-hoc form of this script with the same
prune/distill calls and settings (the variants listed in DEFAULT).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE = {"layers": 3, "heads_keep": 0.5, "ffn_keep": 0.25}
SHAPES = {  # prune kwargs (vocab=True always)
    "L3": BASE, "L3-h1": {**BASE, "heads_keep": 1.0}, "L3-f50": {**BASE, "ffn_keep": 0.5},
    "L4": {**BASE, "layers": 4}, "L4-f125": {**BASE, "layers": 4, "ffn_keep": 0.125},
    "L4-h33": {**BASE, "layers": 4, "heads_keep": 0.3334},
    "L4-h33-f125": {"layers": 4, "heads_keep": 0.3334, "ffn_keep": 0.125},
    "L5-f125": {**BASE, "layers": 5, "ffn_keep": 0.125},
}
LOSSES = {  # distill kwargs on top of the recipe's
    "": {}, "-att": {"delta_attention": 1.0}, "-kdonly": {"alpha_ce": 0.0, "beta_kd": 1.0},
    "-lr3": {"learning_rate": 3e-4}, "-T4": {"temperature": 4.0}, "-ep5": {"epochs": 5},
    "-ep6": {"epochs": 6, "patience": 3}, "-aug8": {"augment": {"copies": 8}},
}
DEFAULT = ["L3-s0", "L3-s1", "L3-s2", "L3-s3", "L4-s0", "L4-s1", "L4-s2", "L4-s3", "L3-h1-s0", "L3-h1-s1",
           "L3-h1-s2", "L3-f50-s0", "L3-att-s0", "L3-kdonly-s0", "L3-lr3-s0", "L3-T4-s0", "L3-ep6-s0",
           "L3-aug8-s0", "L4-f125-s0", "L4-f125-s1", "L4-f125-s2", "L4-f125-s3", "L4-h33-s0", "L4-h33-s1",
           "L4-h33-f125-s0", "L4-h33-f125-s1", "L5-f125-s0", "L5-f125-s1", "L4-f125-ep5-s0", "L4-f125-ep5-s1"]


def parse(name: str) -> tuple[dict, dict]:
    """'L4-f125-ep5-s1' → (prune kwargs, distill kwargs)."""
    stem, _, seed = name.rpartition("-s")
    for shape in sorted(SHAPES, key=len, reverse=True):
        if stem == shape or stem.startswith(shape + "-"):
            loss = stem[len(shape):]
            if loss in LOSSES:
                return SHAPES[shape], {**LOSSES[loss], "seed": int(seed)}
    raise SystemExit(f"unknown variant {name!r}: SHAPE[-LOSS]-sSEED with SHAPE in {sorted(SHAPES)}, "
                     f"LOSS in {sorted(k[1:] for k in LOSSES if k)}")


def one(name: str, teacher: str, device: str, work: Path) -> dict:
    prune_kw, distill_kw = parse(name)
    code = f"""
import json, time
from edgeshrink.compress.prune import prune
from edgeshrink.compress.prune.encoder import PruneConfig
from edgeshrink.compress.distill import distill
from edgeshrink.compress.distill.encoder import DistillConfig
prune({teacher!r}, {str(work / ('p-' + name))!r}, PruneConfig(vocab=True, **{prune_kw!r}), data='sentiment-movies',
      force=True)
kw = dict(epochs=4, gamma_hidden=1.0, augment={{'copies': 4}}, device={device!r})
kw.update({distill_kw!r})
t = time.time()
r = distill({teacher!r}, {str(work / ('p-' + name))!r}, {str(work / ('d-' + name))!r}, DistillConfig(**kw),
            data='sentiment-movies', force=True)
print('RESULT', json.dumps({{'name': {name!r}, 'test': r['test']['accuracy'], 'params': r['parameters'],
      'cal': [h['calibration_accuracy'] for h in r['history']], 's': round(time.time() - t, 1)}}))
"""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "3"), TERM="dumb")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"name": name, "error": (proc.stderr or proc.stdout)[-1500:]}


def summary(rows: list[dict]) -> list[dict]:
    """Per variant without the seed: mean best calibration accuracy and mean test accuracy over seeds."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if "error" not in row:
            groups.setdefault(row["name"].rpartition("-s")[0], []).append(row)
    return [{"variant": name, "seeds": len(rs), "params": rs[0]["params"],
             "calibration_best_mean": sum(max(r["cal"]) for r in rs) / len(rs),
             "test_mean": sum(r["test"] for r in rs) / len(rs), "tests": [r["test"] for r in rs]}
            for name, rs in groups.items()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("variants", nargs="*", help=f"default: {len(DEFAULT)} variants")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeshrink-student-sweep"))
    args = parser.parse_args()
    names = args.variants or DEFAULT
    for name in names:
        parse(name)
    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(lambda n: one(n, args.teacher, args.device, args.work), names):
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "student-sweep.json").write_text(json.dumps({"rows": rows, "summary": summary(rows)}, indent=1))

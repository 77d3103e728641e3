"""How far can SmolLM2 be cut by depth before it falls apart? Drop k blocks (block influence, and uniform for
comparison), export, INT4 on the GGUF grid, then one interleaved LLM bench of every candidate with quality
against the unpruned fp32 bundle. No healing yet (distillation of decoders is not built).

    .venv/bin/python benchmarks/llm_depth_sweep.py [--drops 4,8,12] [--out runs/depth-sweep]

Writes OUT/sweep.json (the bench report plus each student's prune record) and OUT/sweep.md (the table),
OUT/sweep.png (perplexity against decode tokens/s). Steps already done are reused (their directories).
"""
import argparse
import json
from pathlib import Path

from edgeshrink.bench.config import LLMBenchConfig
from edgeshrink.bench.llm import bench_llm
from edgeshrink.compress import QuantConfig, quantize
from edgeshrink.compress.llm_prune import LLMPruneConfig, prune_llm
from edgeshrink.export.llm import LLMExportConfig, export_llm

# A cut model's logits drift further from PyTorch's in fp32 than the unpruned one's (uniform-drop8: 1.0e-3 at
# prefill, 5.5e-3 at a decode step, greedy text still 16/16 identical): students are validated at 1e-2.
STUDENT_EXPORT = LLMExportConfig(tolerance=1e-2)


def step(path: Path, make):
    if not (path / "manifest.json").exists():
        make()
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drops", default="4,8,12")
    parser.add_argument("--uniform", default="8", help="drop counts also tried with uniform choice")
    parser.add_argument("--out", default="runs/depth-sweep")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    int4 = QuantConfig(method="int4-weight", accuracy_level=4, evaluate=False)
    teacher = step(out / "teacher-bundle", lambda: export_llm("smollm2", out / "teacher-bundle", force=True))
    candidates = {"teacher fp32": teacher,
                  "teacher int4": step(out / "teacher-int4", lambda: quantize(teacher, out / "teacher-int4", int4,
                                                                             force=True))}
    records = {}
    plans = [("block-influence", int(k)) for k in args.drops.split(",")] + \
            [("uniform", int(k)) for k in args.uniform.split(",") if k]
    for importance, k in plans:
        name = f"{importance}-drop{k}"
        model = out / name
        if not (model / "config.json").exists():
            prune_llm("smollm2", model, LLMPruneConfig(drop_blocks=k, importance=importance), force=True)
        records[name] = json.loads((model / "edgeshrink.json").read_text())["prune"]
        bundle = step(out / f"{name}-bundle", lambda: export_llm(model, out / f"{name}-bundle", STUDENT_EXPORT,
                                                                            force=True))
        candidates[f"{name} int4"] = step(out / f"{name}-int4", lambda: quantize(bundle, out / f"{name}-int4", int4,
                                                                                force=True))
    config = LLMBenchConfig(threads=[1], prompt_tokens=[128], new_tokens=64, repeats=2, peer="none",
                            reference=str(teacher))
    report = bench_llm(list(candidates.values()), config, progress=lambda *a, **k: print(a[0]) if a else None)
    report["students"] = records
    (out / "sweep.json").write_text(json.dumps(report, indent=2))
    rows = ["| candidate | dropped blocks | size MB | decode tok/s (1 thr) | BBC ppl | Shakespeare ppl | "
            "top-1 agree BBC | KL BBC |", "|---|---|---|---|---|---|---|---|"]
    points = []
    for (label, _), c in zip(candidates.items(), report["candidates"]):
        q = c.get("quality") or {}
        bbc, sh = q.get("bbc-news", {}), q.get("shakespeare", {})
        name = label.replace(" int4", "")
        dropped = records.get(name, {}).get("dropped_blocks", [])
        rate = c["decode"][0]["tokens_per_s"]
        rows.append(f"| {label} | {dropped} | {c['size_bytes'] / 1e6:.1f} | {rate:.1f} | {bbc.get('perplexity', 0):.2f} | "
                    f"{sh.get('perplexity', 0):.2f} | {100 * bbc.get('top1_agreement', 0):.1f}% | "
                    f"{bbc.get('kl_to_reference', 0):.3f} |")
        points.append((label, rate, bbc.get("perplexity", 0)))
    (out / "sweep.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rate, ppl in points:
        ax.scatter([rate], [ppl])
        ax.annotate(label, (rate, ppl), fontsize=7)
    ax.set(xlabel="decode tokens/s, 1 thread", ylabel="BBC test perplexity", yscale="log",
           title="SmolLM2: depth pruning without healing")
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)


if __name__ == "__main__":
    main()

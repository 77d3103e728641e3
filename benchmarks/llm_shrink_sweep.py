"""How far can SmolLM2 be cut before it falls apart, with and without healing? Each plan prunes the imported
model (blocks by block influence or uniformly, or FFN neurons), heals a copy by distillation from the
unpruned model (a fixed token budget), exports both, INT4 on the GGUF grid, then ONE interleaved LLM bench of
every candidate (the teacher fp32 and INT4, each plan unhealed INT4, healed fp32 and healed INT4) with
quality against the unpruned fp32 bundle; then a paired ablation on the BBC test articles (per-article NLL in
PyTorch fp32, bootstrap over articles): healed vs not at the same cut, block influence vs uniform.

    .venv/bin/python benchmarks/llm_shrink_sweep.py [--plans bi4,bi8,bi12,uniform8] [--heal-tokens 100000]
                                                   [--out runs/depth-sweep]

Writes OUT/sweep.json, OUT/sweep.md (tables), OUT/sweep.png (BBC perplexity against decode tokens/s, the
Pareto curve). Steps already done are reused (their directories), so a rerun only benches.
"""
import argparse
import json
import math
import time
from pathlib import Path

from edgeshrink.bench.config import LLMBenchConfig
from edgeshrink.bench import bench
from edgeshrink.compress import LLMQuantConfig, quantize
from edgeshrink.compress.distill import distill
from edgeshrink.compress.distill.decoder import LLMDistillConfig
from edgeshrink.compress.prune import prune
from edgeshrink.compress.prune.decoder import LLMPruneConfig
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.stats import paired_perplexity_bootstrap

# A cut model's logits drift further from PyTorch's in fp32 than the unpruned one's (uniform-drop8: 1.0e-3 at
# prefill, 5.5e-3 at a decode step; healed drop8: 1.1e-2 at prefill, greedy text still 16/16 identical; the
# logits span about ±30): students are validated at 5e-2 absolute, with the 16 greedy continuations identical.
STUDENT_EXPORT = LLMExportConfig(tolerance=5e-2)
PLANS = {"bi4": ("block-influence-drop4", {"drop_blocks": 4}),
         "bi8": ("block-influence-drop8", {"drop_blocks": 8}),
         "bi12": ("block-influence-drop12", {"drop_blocks": 12}),
         "uniform8": ("uniform-drop8", {"drop_blocks": 8, "importance": "uniform"}),
         "ffn50": ("ffn-keep0.5", {"ffn_keep": 0.5}),
         "bi4-ffn50": ("block-influence-drop4-ffn0.5", {"drop_blocks": 4, "ffn_keep": 0.5})}


def step(path: Path, make):
    if not (path / "manifest.json").exists() and not (path / "config.json").exists():
        make()
    return path


def article_nll(model_dir: Path, articles: list[str], max_tokens: int) -> tuple[list[float], list[int]]:
    """Per article: total next-token NLL (nats) of its first max_tokens tokens, and how many were predicted."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    net = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    prefix = tok("", add_special_tokens=True)["input_ids"]
    nll, counts = [], []
    with torch.inference_mode():
        for text in articles:
            ids = prefix + tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
            x = torch.tensor([ids])
            logits = net(input_ids=x, use_cache=False).logits[0, :-1].float()
            nll.append(float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")))
            counts.append(len(ids) - 1)
    return nll, counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plans", default="bi4,bi8,bi12,uniform8,ffn50")
    parser.add_argument("--heal-tokens", type=int, default=100_000)
    parser.add_argument("--learning-rate", type=float, default=4e-4)
    parser.add_argument("--articles", type=int, default=120, help="BBC test articles in the paired ablation")
    parser.add_argument("--out", default="runs/depth-sweep")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    heal = LLMDistillConfig(epochs=1, train_tokens=args.heal_tokens, learning_rate=args.learning_rate)
    int4 = LLMQuantConfig(method="int4-weight", accuracy_level=4, evaluate=False)
    teacher = step(out / "teacher-bundle", lambda: export_llm("smollm2", out / "teacher-bundle", force=True))
    candidates = {"teacher fp32": teacher,
                  "teacher int4": step(out / "teacher-int4", lambda: quantize(teacher, out / "teacher-int4", int4,
                                                                             force=True))}
    records, models = {}, {}
    for plan in args.plans.split(","):
        name, spec = PLANS[plan]
        model = step(out / name, lambda: prune("smollm2", out / name, LLMPruneConfig(**spec), data="bbc-news",
                                                  force=True))
        healed = step(out / f"{name}-healed", lambda: distill("smollm2", model, out / f"{name}-healed", heal,
                                                             data="bbc-news", force=True))
        records[name] = {"prune": json.loads((model / "edgeshrink.json").read_text())["prune"],
                         "distill": json.loads((healed / "edgeshrink.json").read_text())["distill"]}
        models[name], models[f"{name} healed"] = model, healed
        for label, source in ((name, model), (f"{name}-healed", healed)):
            bundle = step(out / f"{label}-bundle", lambda: export_llm(source, out / f"{label}-bundle", STUDENT_EXPORT,
                                                                      force=True))
            if label.endswith("healed"):
                candidates[f"{label} fp32"] = bundle
            candidates[f"{label} int4"] = step(out / f"{label}-int4", lambda: quantize(
                bundle, out / f"{label}-int4", int4, force=True))
    started = time.perf_counter()
    config = LLMBenchConfig(threads=[1], prompt_tokens=[128], new_tokens=64, repeats=2, peer="none",
                            reference=str(teacher))
    report = bench(list(candidates.values()), config, progress=lambda *a, **k: print(a[0]) if a else None)
    report["bench_seconds"] = round(time.perf_counter() - started, 1)
    report["students"] = records
    report["ablation"] = ablation(models, args.articles)
    (out / "sweep.json").write_text(json.dumps(report, indent=2))
    write_tables(out, candidates, report, records)


def ablation(models: dict, count: int) -> dict:
    """Paired perplexity differences on the same BBC test articles (bootstrap over articles)."""
    from edgeshrink.data.lm_text import load_lm_text
    from edgeshrink.models.llm import import_llm

    articles = load_lm_text("bbc-news", "test").texts[:count]
    scored = {"teacher": article_nll(import_llm("smollm2"), articles, 512)}
    for label, path in models.items():
        scored[label] = article_nll(path, articles, 512)
    pairs = [(f"{n} healed", n) for n in models if not n.endswith("healed")]
    if "uniform-drop8" in models and "block-influence-drop8" in models:
        pairs += [("uniform-drop8", "block-influence-drop8"), ("uniform-drop8 healed", "block-influence-drop8 healed")]
    pairs += [(n, "teacher") for n in models]
    tokens = scored["teacher"][1]
    return {"articles": len(articles), "max_tokens_per_article": 512,
            "perplexity": {k: math.exp(sum(v[0]) / sum(v[1])) for k, v in scored.items()},
            "pairs": [{"a": a, "b": b, **paired_perplexity_bootstrap(scored[a][0], scored[b][0], tokens)}
                      for a, b in pairs]}


def write_tables(out: Path, candidates: dict, report: dict, records: dict) -> None:
    rows = ["| candidate | cut | GFLOP/token | size MB | decode tok/s (1 thr) | BBC ppl | Shakespeare ppl | "
            "top-1 agree BBC | KL BBC | heal min |", "|---|---|---|---|---|---|---|---|---|---|"]
    points = []
    for label, c in zip(candidates, report["candidates"]):
        q = c.get("quality") or {}
        bbc, sh = q.get("bbc-news", {}), q.get("shakespeare", {})
        base = label.split(" ")[0].replace("-healed", "")
        rec = records.get(base)
        cut = "-" if rec is None else " + ".join(
            ([f"blocks {rec['prune']['dropped_blocks']}"] if rec["prune"]["dropped_blocks"] else [])
            + ([f"FFN {rec['prune']['ffn_neurons']}/1536"] if rec["prune"].get("ffn_neurons", 1536) != 1536 else []))
        heal = f"{rec['distill']['train_seconds'] / 60:.1f}" if rec and "healed" in label else "-"
        rate = c["decode"][0]["tokens_per_s"]
        rows.append(f"| {label} | {cut} | {c['cost']['flops_per_token'] / 1e9:.3f} | {c['size_bytes'] / 1e6:.1f} | {rate:.1f} | "
                    f"{bbc.get('perplexity', 0):.2f} | {sh.get('perplexity', 0):.2f} | "
                    f"{100 * bbc.get('top1_agreement', 0):.1f}% | {bbc.get('kl_to_reference', 0):.3f} | {heal} |")
        points.append((label, rate, bbc.get("perplexity", 0)))
    ab = report["ablation"]
    rows += ["", f"Paired ablation: {ab['articles']} BBC test articles (first {ab['max_tokens_per_article']} tokens "
             "each), PyTorch fp32; 95% intervals from 2,000 bootstrap resamples of the articles.", "",
             "| a | b | ppl a | ppl b | a − b [95% CI] | a ÷ b [95% CI] |", "|---|---|---|---|---|---|"]
    for p in ab["pairs"]:
        rows.append(f"| {p['a']} | {p['b']} | {p['perplexity_a']:.2f} | {p['perplexity_b']:.2f} | "
                    f"{p['difference']:+.2f} [{p['difference_ci95'][0]:+.2f}, {p['difference_ci95'][1]:+.2f}] | "
                    f"{p['ratio']:.3f} [{p['ratio_ci95'][0]:.3f}, {p['ratio_ci95'][1]:.3f}] |")
    (out / "sweep.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = {"teacher": "k", "healed int4": "tab:green", "healed fp32": "tab:olive", "int4": "tab:red"}
    for label, rate, ppl in points:
        kind = next(g for g in groups if g == "teacher" and label.startswith("teacher") or label.endswith(g))
        ax.scatter([rate], [ppl], color=groups[kind], label=kind)
        ax.annotate(label.replace("block-influence", "BI"), (rate, ppl), fontsize=6)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), [("not healed int4" if k == "int4" else k) for k in unique], fontsize=7)
    ax.set(xlabel="decode tokens/s, 1 thread", ylabel="BBC test perplexity", yscale="log",
           title="SmolLM2 cut by depth/width: before and after healing")
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)


if __name__ == "__main__":
    main()

"""Language-model recipes: import → [prune → distill] → export → quantize → bench (against the fp32 bundle and
llama.cpp) → report; recipes/smollm2-edge.yaml is one. ``model`` is a short name, a GGUF file or an HF
causal-LM directory; ``data`` a text set whose calibration part quantize scores (bench reads its own texts).

With ``prune`` (and ``distill``, which heals the pruned model from the imported one), the recipe makes a
smaller device model (recipes/smollm2-small.yaml): ``export`` and ``quantize`` then also make the source's
fp32 and quantized bundles, and the bench runs all of them, so ``min_decode_vs_source`` and
``max_perplexity_increase`` compare the device model with the source in one interleaved run
(perplexity against the source's fp32 bundle, the cloud model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field

from edgeshrink.bench.report import perplexity_change
from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.recipes.report import pareto_front, plotting, save_plot, target_row, targets_section
from edgeshrink.recipes.schema import Recipe, RecipeKind


class LLMImportConfig(Config):
    version: int = 1


class LLMTargets(Config):
    threads: int = Field(1, ge=1)  # the thread count the speed targets are read at
    ttft_prompt_tokens: int = Field(128, ge=1)  # the prompt length max_ttft_vs_peer is read at
    max_size_mb: float | None = Field(None, gt=0)
    max_size_vs_gguf: float | None = Field(None, gt=0)  # device bundle size ÷ the GGUF it was imported from
    min_decode_vs_peer: float | None = Field(None, gt=0)  # decode tokens/s ÷ llama.cpp's (same GGUF, threads, run)
    min_decode_limit_fraction: float | None = Field(None, gt=0, le=1)  # decode tokens/s ÷ the machine's limit
    max_ttft_vs_peer: float | None = Field(None, gt=0)  # time to first token ÷ llama.cpp's
    # on the bench's first text (test part), vs the fp32 bundle; a fraction: 0.05 = +5%
    max_perplexity_increase: float | None = Field(None, ge=0)
    min_decode_vs_source: float | None = Field(None, gt=0)  # device ÷ the source's quantized bundle (prune recipes)
    max_distill_minutes: float | None = Field(None, gt=0)  # wall time of the distill step when it ran


class GenerationRecipe(Recipe):
    data: str = "bbc-news"
    targets: LLMTargets = LLMTargets()


# -- steps ---------------------------------------------------------------------------------------------------
def _import(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.models.llm import import_llm
    from edgeshrink.models.sources import read_record

    started = time.perf_counter()
    path = import_llm(state["model"], progress=progress)
    record = read_record(path).get("source") or {}
    return {"state": {"model": str(path), "gguf": record.get("gguf")},
            "result": {"path": str(path), "gguf": record.get("gguf"), "seconds": round(time.perf_counter() - started, 1)}}


def _prune(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.compress.prune import prune

    record = prune(state["model"], out / "model", config, data=data, force=True, progress=progress)["prune"]
    return {"state": {"model": str(out / "model"), "source_model": state["model"]},
            "result": {k: record[k] for k in ("dropped_blocks", "kept_blocks", "ffn_neurons", "attention_heads",
                                              "parameters", "teacher_parameters", "seconds")}}


def _distill(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.compress.distill import distill

    record = distill(state["source_model"], state["model"], out / "model", config, data=data, force=True,
                     progress=progress)["distill"]
    return {"state": {"model": str(out / "model")},
            "result": {k: record[k] for k in ("calibration_perplexity", "history", "train_tokens", "train_seconds",
                                              "precision", "parameters")}}


def _export(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.export.llm import export_llm
    from edgeshrink.models.llm import import_llm
    from edgeshrink.models.sources import read_record

    model = state["model"]
    manifest = export_llm(model, out / "bundle", config, force=True, progress=progress)
    gguf = state.get("gguf") or (read_record(import_llm(model)).get("source") or {}).get("gguf")
    bundle = str(out / "bundle")
    new = {"bundle": bundle, "fp32_bundle": bundle, "gguf": gguf}
    result = {"size_bytes": manifest["size_bytes"], "exporter": manifest["export"]["exporter"],
              "validation": manifest["validation"]}
    if state.get("source_model"):  # a pruned model: the source too, the reference it is measured against
        progress("exporting the source model")
        source = export_llm(state["source_model"], out / "source", config, force=True, progress=progress)
        new.update(fp32_bundle=str(out / "source"), source_bundle=str(out / "source"), device_fp32_bundle=bundle)
        result["source_size_bytes"] = source["size_bytes"]
    return {"state": new, "result": result}


def _quantize(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.compress.quantize import quantize

    manifest = quantize(state["bundle"], out / "bundle", config, data=data, force=True, progress=progress)
    q = manifest["quantization"]
    new = {"bundle": str(out / "bundle")}
    result = {"size_bytes": manifest["size_bytes"], "grid": q.get("grid"), "evaluation": q.get("evaluation")}
    if state.get("source_bundle"):
        progress("quantizing the source model")
        source = quantize(state["source_bundle"], out / "source", config, data=data, force=True, progress=progress)
        new["source_quantized_bundle"] = str(out / "source")
        result["source_size_bytes"] = source["size_bytes"]
    return {"state": new, "result": result}


def _bench(state, config, out: Path, data, progress) -> dict:
    from edgeshrink.bench import bench

    out.mkdir(parents=True, exist_ok=True)
    device = state["bundle"] if state["bundle"] != state["fp32_bundle"] else None
    roles = [("fp32", state["fp32_bundle"]), ("source", state.get("source_quantized_bundle")), ("device", device)]
    roles = [(role, path) for role, path in roles if path]
    if config.peer == "auto" and state.get("gguf"):
        config = config.model_copy(update={"peer": state["gguf"]})
    report = bench([path for _, path in roles], config, progress=progress)
    report["roles"] = [role for role, _ in roles] + ["peer"] * (len(report["candidates"]) - len(roles))
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    return {"state": {}, "result": {"bench": str(out / "bench.json")}}


# -- targets -------------------------------------------------------------------------------------------------
def _row(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def check_llm_targets(recipe: GenerationRecipe, bench: dict | None, device_size: int | None, gguf: str | None,
                      distill: dict | None = None) -> list[dict]:
    t = recipe.targets
    rows = []

    def add(*row, **note):
        rows.append(target_row(*row, **note))

    if t.max_size_mb is not None:
        size = device_size / 1e6
        add("max_size_mb", size, t.max_size_mb, size <= t.max_size_mb, "MB")
    if t.max_size_vs_gguf is not None:
        if not gguf or not Path(gguf).is_file():
            raise EdgeshrinkError("max_size_vs_gguf: the model was not imported from a GGUF file")
        ratio = device_size / Path(gguf).stat().st_size
        add("max_size_vs_gguf (device bundle ÷ GGUF)", ratio, t.max_size_vs_gguf, ratio <= t.max_size_vs_gguf, "x",
            f"GGUF {Path(gguf).stat().st_size / 1e6:.1f} MB")
    if t.max_distill_minutes is not None:
        if distill is None:
            raise EdgeshrinkError("max_distill_minutes: the recipe has no `distill` step")
        minutes = distill["train_seconds"] / 60
        add("max_distill_minutes (healing wall time)", minutes, t.max_distill_minutes, minutes <= t.max_distill_minutes,
            "min")
    speed = [t.min_decode_vs_peer, t.min_decode_limit_fraction, t.max_ttft_vs_peer, t.max_perplexity_increase,
             t.min_decode_vs_source]
    if all(v is None for v in speed):
        return rows
    if bench is None:
        raise EdgeshrinkError("the recipe states speed/quality targets but has no `bench` step to measure them")
    roles = bench["roles"]
    device = bench["candidates"][roles.index("device") if "device" in roles else 0]
    decode = _row(device["decode"], threads=t.threads)
    ttft = _row(device["ttft"], threads=t.threads, prompt_tokens=t.ttft_prompt_tokens)
    for name in ("min_decode_vs_peer", "max_ttft_vs_peer"):
        if getattr(t, name) is not None and "peer" not in roles:
            raise EdgeshrinkError(f"{name}: the bench ran no llama.cpp peer (pip install 'edgeshrink[llamacpp]')")
    if t.min_decode_vs_peer is not None:
        add(f"min_decode_vs_peer ({t.threads} thread, decode tokens/s ÷ llama.cpp's)", decode["vs_peer"],
            t.min_decode_vs_peer, decode["vs_peer"] >= t.min_decode_vs_peer, "x")
    if t.min_decode_vs_source is not None:
        if "source" not in roles:
            raise EdgeshrinkError("min_decode_vs_source: the recipe made no smaller model (no `prune` step)")
        source = _row(bench["candidates"][roles.index("source")]["decode"], threads=t.threads)
        ratio = decode["tokens_per_s"] / source["tokens_per_s"]
        add(f"min_decode_vs_source ({t.threads} thread, decode tokens/s ÷ the source's quantized bundle)", ratio,
            t.min_decode_vs_source, ratio >= t.min_decode_vs_source, "x")
    if t.min_decode_limit_fraction is not None:
        value = decode.get("fraction_of_limit")
        add(f"min_decode_limit_fraction ({t.threads} thread)", value, t.min_decode_limit_fraction,
            value is not None and value >= t.min_decode_limit_fraction)
    if t.max_ttft_vs_peer is not None:
        if ttft is None:
            raise EdgeshrinkError(f"max_ttft_vs_peer: the bench did not time {t.ttft_prompt_tokens} prompt tokens at "
                                  f"{t.threads} thread(s)")
        ratio = ttft["time_vs_peer"]  # device ms ÷ llama.cpp's
        add(f"max_ttft_vs_peer ({t.threads} thread, {t.ttft_prompt_tokens} prompt tokens, device ÷ llama.cpp)",
            ratio, t.max_ttft_vs_peer, ratio <= t.max_ttft_vs_peer, "x")
    if t.max_perplexity_increase is not None:
        fp32 = bench["candidates"][roles.index("fp32")]
        text = next(iter(device.get("quality") or {}), None)
        if text is None or text not in (fp32.get("quality") or {}):
            raise EdgeshrinkError("max_perplexity_increase: the bench scored no text (quality: false?)")
        increase = device["quality"][text]["perplexity"] / fp32["quality"][text]["perplexity"] - 1
        change = perplexity_change(device, fp32, text)
        interval = "" if change is None else " [{:+.1f}, {:+.1f}] (95%, windows resampled in pairs)".format(
            *(100 * (r - 1) for r in change["ratio_ci95"]))
        add(f"max_perplexity_increase ({text} test, vs the fp32 bundle)", increase, t.max_perplexity_increase,
            increase <= t.max_perplexity_increase, "", f"{100 * increase:+.2f}%{interval}")
    return rows


# -- the report ----------------------------------------------------------------------------------------------
def _sections(recipe: GenerationRecipe, paths: list, done: list[dict], data) -> dict:
    """One path: its steps, bundles, targets and the bench report."""
    path = done[0]
    state, results = path["state"], path["results"]
    bench = json.loads(Path(results["bench"]["bench"]).read_text()) if "bench" in results else None
    device_size = (results.get("quantize") or results.get("export") or {}).get("size_bytes")
    targets = check_llm_targets(recipe, bench, device_size, state.get("gguf"), results.get("distill"))
    return {"steps": path["steps"], "device_bundle": state.get("bundle"), "fp32_bundle": state.get("fp32_bundle"),
            "gguf": state.get("gguf"), "targets": targets, "bench": bench,
            "all_targets_met": all(t["met"] for t in targets)}


def _candidates(report: dict) -> list[tuple[str, dict]]:
    bench = report.get("bench") or {}
    return list(zip(bench.get("roles", []), bench.get("candidates", [])))


def llm_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Recipe report: {report['name']}", "",
             f"Recipe `{report['recipe']}` (sha256 {report['recipe_sha256'][:12]}), edgeshrink "
             f"{report['edgeshrink_version']}; machine: {m['cpu']['model']}, {m['logical_cores']} logical cores, "
             f"ISA {' '.join(m['cpu']['isa'])}. Wall time this run: {report['wall_seconds_this_run']:.0f} s.", ""]
    lines += targets_section(report) + ["## Steps", "", "| step | seconds | cached |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['seconds']:.0f} | {'yes' if s['cached'] else 'no'} |" for s in report["steps"]]
    lines.append("")
    candidates = _candidates(report)
    if candidates:
        texts = list((candidates[0][1].get("quality") or {}).keys())
        lines += ["## Models (one interleaved bench run)", "",
                  "| role | model | size MB | peak RSS MB | threads | decode tok/s | of limit | decode ÷ llama.cpp | "
                  "TTFT ms (prompt tokens) | " + " | ".join(f"ppl {t}" for t in texts) + " |",
                  "|---" * (9 + len(texts)) + "|"]
        for role, c in candidates:
            for d in c["decode"]:
                ttft = ", ".join(f"{r['median_ms']:.0f} ({r['prompt_tokens']})" for r in c["ttft"]
                                 if r["threads"] == d["threads"])
                quality = [f"{c['quality'][t]['perplexity']:.2f}" if t in (c.get("quality") or {}) else "—"
                           for t in texts]
                limit = f"{100 * d['fraction_of_limit']:.0f}%" if d.get("fraction_of_limit") else "—"
                peer = f"{d['vs_peer']:.2f}x" if d.get("vs_peer") else "—"
                lines.append(f"| {role} | {c['name']} | {c['size_bytes'] / 1e6:.1f} | "
                             f"{c.get('peak_rss_bytes', 0) / 1e6:.0f} | {d['threads']} | {d['tokens_per_s']:.1f} | "
                             f"{limit} | {peer} | {ttft} | " + " | ".join(quality) + " |")
        lines.append("")
    lines += [f"![{name}](plots/{name})" for name in report.get("plots") or []]
    return "\n".join(lines) + "\n"


def decode_quality_points(candidates: list[tuple[str, dict]], threads: int | None = None) -> list[dict]:
    """Each candidate scored on text and timed at ``threads`` (default: the first thread count timed): its
    decode tokens/s, and its perplexity on the first text against the fp32 candidate's (the role ``fp32``, else
    the first fp32 bundle) with the paired 95% interval (None where the windows were not kept)."""
    if not candidates:
        return []
    threads = threads or min(d["threads"] for _, c in candidates for d in c["decode"])
    fp32 = next((c for role, c in candidates if role == "fp32"), None) or \
        next((c for _, c in candidates if c.get("precision") == "fp32"), candidates[0][1])
    text = next(iter(fp32.get("quality") or {}), None)
    points = []
    for role, c in candidates:
        decode = _row(c["decode"], threads=threads)
        if text is None or decode is None or text not in (c.get("quality") or {}):
            continue
        change = perplexity_change(c, fp32, text)
        ratio = c["quality"][text]["perplexity"] / fp32["quality"][text]["perplexity"]
        points.append({"role": role, "name": c["name"], "tokens_per_s": decode["tokens_per_s"], "threads": threads,
                       "text": text, "perplexity": c["quality"][text]["perplexity"], "increase": ratio - 1,
                       "interval": None if change is None else [r - 1 for r in change["ratio_ci95"]]})
    return points


def plot_decode_quality(plt, points: list[dict], title: str):
    """Perplexity increase (with its interval) against decode speed, the Pareto front dashed: (fig, ax)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    front = pareto_front([(-p["tokens_per_s"], -p["increase"]) for p in points])
    ax.plot([points[i]["tokens_per_s"] for i in front], [100 * points[i]["increase"] for i in front], "--",
            color="grey", alpha=0.6, label="Pareto front" if len(points) > 2 else None)
    for p in points:
        lo, hi = p["interval"] or (p["increase"], p["increase"])
        below, above = 100 * (p["increase"] - lo), 100 * (hi - p["increase"])
        ax.errorbar([p["tokens_per_s"]], [100 * p["increase"]], yerr=[[below], [above]], fmt="o", capsize=3,
                    label=f"{p['role']}: {p['name']}" if p["name"] else p["role"])
    ax.set(xlabel=f"decode tokens/s ({points[0]['threads']} thread(s))",
           ylabel=f"perplexity vs fp32, {points[0]['text']} test (%)", title=title)
    return fig, ax


def write_llm_plots(report: dict, out: Path) -> list[str]:
    """Decode tokens/s per thread count, time to first token against prompt length, and perplexity against
    decode speed with intervals (where text was scored), every candidate."""
    from edgeshrink._plots import log_axis

    candidates = _candidates(report)
    if not candidates:
        return []
    names = []
    with plotting(report, out) as plt:
        fig, ax = plt.subplots(figsize=(6, 4))
        threads = sorted({d["threads"] for _, c in candidates for d in c["decode"]})
        width = 0.8 / len(candidates)
        for i, (role, c) in enumerate(candidates):
            rates = [next((d["tokens_per_s"] for d in c["decode"] if d["threads"] == t), 0) for t in threads]
            ax.bar([t + (i - (len(candidates) - 1) / 2) * width for t in range(len(threads))], rates, width,
                   label=f"{role}: {c['name']}")
        ax.set(xticks=range(len(threads)), xticklabels=[f"{t} thread(s)" for t in threads], ylabel="decode tokens/s",
               title=f"{report['name']}: decode speed")
        names.append(save_plot(fig, ax, out, "decode.png"))
        fig, ax = plt.subplots(figsize=(6, 4))
        for role, c in candidates:
            rows = sorted((r for r in c["ttft"] if r["threads"] == threads[0]), key=lambda r: r["prompt_tokens"])
            ax.plot([r["prompt_tokens"] for r in rows], [r["median_ms"] for r in rows], "o-",
                    label=f"{role}: {c['name']}")
        log_axis(ax, "xy")
        ax.set(xlabel="prompt tokens", ylabel="time to first token (ms)",
               title=f"{report['name']}: time to first token, {threads[0]} thread(s)")
        names.append(save_plot(fig, ax, out, "ttft.png"))
        points = decode_quality_points(candidates, threads[0])
        if len(points) > 1:
            fig, ax = plot_decode_quality(plt, points, f"{report['name']}: quality against decode speed")
            names.append(save_plot(fig, ax, out, "decode_vs_perplexity.png"))
    return names


# -- the kind ------------------------------------------------------------------------------------------------
# A step whose output changes meaning gets a new version, which enters its cache key (every version does, 1
# too): quantize 2 fuses sibling projections into one MatMulNBits; quantize 3 gives weights off a GGUF grid the
# calibrated grid (grid auto), not round to nearest; distill 2 leaves a GGUF model's frozen vocabulary tables on the
# GGUF's grid when it heals through the INT4 grid (quantization_aware), instead of bringing them to 4 bits.
GENERATE = RecipeKind(
    "text-generation", {"import": _import, "prune": _prune, "distill": _distill, "export": _export,
                        "quantize": _quantize, "bench": _bench},
    sections=_sections, markdown=llm_markdown, plots=write_llm_plots,
    configs={"import": "edgeshrink.recipes.generate:LLMImportConfig"},
    needs=(("quantize", "export"), ("bench", "export"), ("distill", "prune")),
    after=(("export", "prune"), ("export", "distill")),  # a model step, when present, comes first
    once=True, search=False, key_tag=("llm",), versions={"quantize": 3, "distill": 2}, unversioned=None,
    report_tag={"kind": "language-model"})

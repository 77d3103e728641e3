"""Language-model recipes: import → [prune → distill] → export → quantize → bench (against the fp32 bundle and
llama.cpp) → report.

    version: 1
    name: smollm2-edge
    model: smollm2                    # a short name, a GGUF file or an HF causal-LM directory
    data: bbc-news                    # text: calibration part for quantize's scores (bench reads its own texts)
    steps:
      - import: {}
      - export: {}
      - quantize: {method: int4-weight, accuracy_level: 4}
      - bench: {threads: [1, 2]}
    targets:
      max_size_vs_gguf: 1.1           # device bundle size ÷ the GGUF it was imported from
      min_decode_vs_peer: 1.2         # decode tokens/s ÷ llama.cpp's (same GGUF, same threads, same run)
      min_decode_limit_fraction: 0.5  # decode tokens/s ÷ the machine's limit for this model
      max_ttft_vs_peer: 1.0           # time to first token ÷ llama.cpp's, at ttft_prompt_tokens
      max_perplexity_increase: 0.05   # on the bench's first text (test part), vs the fp32 bundle

With ``prune`` (and ``distill``, which heals the pruned model from the imported one), the recipe makes a
smaller device model (recipes/smollm2-small.yaml): ``export`` and ``quantize`` then also make the source's
fp32 and quantized bundles, and the bench runs all of them, so ``min_decode_vs_source`` and
``max_perplexity_increase`` compare the device model with the source in one interleaved run
(perplexity against the source's fp32 bundle, the cloud model).

A recipe is a language-model recipe when its ``model`` is one (see export/llm.py ``is_language_model``).
Steps are cached exactly like the classifier recipes' (runner.py: a step's key hashes the previous key,
its config and the data; ``step.json`` marks it done; paths are stored relative to the cache), so a
rerun takes seconds and an interrupted run resumes at the step it was in.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, ValidationError

from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.recipes.executors import StepResources


class LLMImportConfig(Config):
    version: int = 1


class LLMTargets(Config):
    threads: int = Field(1, ge=1)  # the thread count the speed targets are read at
    ttft_prompt_tokens: int = Field(128, ge=1)  # the prompt length max_ttft_vs_peer is read at
    max_size_mb: float | None = Field(None, gt=0)
    max_size_vs_gguf: float | None = Field(None, gt=0)
    min_decode_vs_peer: float | None = Field(None, gt=0)
    min_decode_limit_fraction: float | None = Field(None, gt=0, le=1)
    max_ttft_vs_peer: float | None = Field(None, gt=0)
    max_perplexity_increase: float | None = Field(None, ge=0)  # a fraction: 0.05 = +5%
    min_decode_vs_source: float | None = Field(None, gt=0)  # device ÷ the source's quantized bundle (prune recipes)
    max_distill_minutes: float | None = Field(None, gt=0)  # wall time of the distill step when it ran


class LLMRecipe(Config):
    version: Literal[1] = 1
    name: str
    model: str
    data: str = "bbc-news"
    steps: list[dict[str, Any]] = Field(min_length=1)
    targets: LLMTargets = LLMTargets()
    seed: int = 0
    resources: dict[str, StepResources] = {}  # per step: what its task asks of a Ray cluster

    def parsed_steps(self) -> list[tuple[str, Config]]:
        registry = llm_step_configs()
        return [(name, registry[name].model_validate(values or {}))
                for name, values in (next(iter(step.items())) for step in self.steps)]


def llm_step_configs() -> dict[str, type[Config]]:
    from edgeshrink.bench.config import LLMBenchConfig
    from edgeshrink.compress.llm_distill import LLMDistillConfig
    from edgeshrink.compress.llm_prune import LLMPruneConfig
    from edgeshrink.compress.quantize import QuantConfig
    from edgeshrink.export.llm import LLMExportConfig

    return {"import": LLMImportConfig, "prune": LLMPruneConfig, "distill": LLMDistillConfig, "export": LLMExportConfig,
            "quantize": QuantConfig, "bench": LLMBenchConfig}


def is_llm_recipe(raw: dict) -> bool:
    from edgeshrink.export.llm import is_language_model

    return isinstance(raw, dict) and isinstance(raw.get("model"), str) and is_language_model(raw["model"])


def validate_llm_recipe(raw: dict, path: Path, lines: dict) -> LLMRecipe:
    """The recipe and its steps, or a one-line error naming the file, the line and the key."""
    from edgeshrink.recipes.schema import _first_error, _where

    try:
        recipe = LLMRecipe.model_validate(raw)
    except ValidationError as exc:
        loc, what = _first_error(exc, LLMRecipe.model_fields)
        raise EdgeshrinkError(f"{path}: {_where(lines, loc)}: {'.'.join(map(str, loc)) or 'recipe'}: {what} "
                              "(a language-model recipe)") from None
    registry, steps = llm_step_configs(), []
    for i, step in enumerate(recipe.steps):
        where = _where(lines, ("steps", i))
        name, values = next(iter(step.items())) if len(step) == 1 else (None, None)
        if name not in registry:
            raise EdgeshrinkError(f"{path}: {where}: steps.{i}: a language-model recipe takes the steps "
                                  f"{', '.join(registry)}; got {name or sorted(step)!r}")
        if values is not None and not isinstance(values, dict):
            raise EdgeshrinkError(f"{path}: {where}: steps.{i}.{name}: expected a mapping of "
                                  f"{registry[name].__name__} keys")
        if "search" in (values or {}):
            raise EdgeshrinkError(f"{path}: {where}: steps.{i}.{name}.search: a language-model recipe has no search")
        try:
            steps.append((name, registry[name].model_validate(values or {})))
        except ValidationError as exc:
            inner, what = _first_error(exc, registry[name].model_fields)
            loc = ("steps", i, name) + inner
            raise EdgeshrinkError(f"{path}: {_where(lines, loc)}: {'.'.join(map(str, loc))}: {what} "
                                  f"({registry[name].__name__})") from None
    names = [n for n, _ in steps]
    from edgeshrink.recipes.schema import check_resources

    check_resources(recipe.resources, names, path, lines)
    if len(set(names)) != len(names):
        raise EdgeshrinkError(f"{path}: each step appears once in a language-model recipe")
    for later, optional in (("export", "prune"), ("export", "distill")):  # a model step, when present, comes first
        if later in names and optional in names and names.index(optional) > names.index(later):
            raise EdgeshrinkError(f"{path}: {_where(lines, ('steps', names.index(later)))}: step {later!r} comes "
                                  f"after {optional!r}")
    for later, needs in (("quantize", "export"), ("bench", "export"), ("distill", "prune")):
        if later in names and needs not in names[:names.index(later)]:
            raise EdgeshrinkError(f"{path}: {_where(lines, ('steps', names.index(later)))}: step {later!r} needs "
                                  f"a {needs!r} step before it")
    return recipe


# -- steps ---------------------------------------------------------------------------------------------------
def _import(state, config, out: Path, data) -> dict:
    from edgeshrink.models.llm import import_llm
    from edgeshrink.models.sources import read_record

    started = time.perf_counter()
    path = import_llm(state["model"])
    record = read_record(path).get("source") or {}
    return {"state": {"model": str(path), "gguf": record.get("gguf")},
            "result": {"path": str(path), "gguf": record.get("gguf"), "seconds": round(time.perf_counter() - started, 1)}}


def _prune(state, config, out: Path, data) -> dict:
    from edgeshrink.compress.llm_prune import prune_llm

    record = prune_llm(state["model"], out / "model", config, data=data, force=True)["prune"]
    return {"state": {"model": str(out / "model"), "source_model": state["model"]},
            "result": {k: record[k] for k in ("dropped_blocks", "kept_blocks", "ffn_neurons", "attention_heads",
                                              "parameters", "teacher_parameters", "seconds")}}


def _distill(state, config, out: Path, data) -> dict:
    from edgeshrink.compress.llm_distill import distill_llm

    record = distill_llm(state["source_model"], state["model"], out / "model", config, text=data, force=True)["distill"]
    return {"state": {"model": str(out / "model")},
            "result": {k: record[k] for k in ("calibration_perplexity", "history", "train_tokens", "train_seconds",
                                              "precision", "parameters")}}


def _export(state, config, out: Path, data) -> dict:
    from edgeshrink.export.llm import export_llm
    from edgeshrink.models.llm import import_llm
    from edgeshrink.models.sources import read_record

    model = state["model"]
    manifest = export_llm(model, out / "bundle", config, force=True)
    gguf = state.get("gguf") or (read_record(import_llm(model)).get("source") or {}).get("gguf")
    bundle = str(out / "bundle")
    new = {"bundle": bundle, "fp32_bundle": bundle, "gguf": gguf}
    result = {"size_bytes": manifest["size_bytes"], "exporter": manifest["export"]["exporter"],
              "validation": manifest["validation"]}
    if state.get("source_model"):  # a pruned model: the source too, the reference it is measured against
        source = export_llm(state["source_model"], out / "source", config, force=True)
        new.update(fp32_bundle=str(out / "source"), source_bundle=str(out / "source"), device_fp32_bundle=bundle)
        result["source_size_bytes"] = source["size_bytes"]
    return {"state": new, "result": result}


def _quantize(state, config, out: Path, data) -> dict:
    from edgeshrink.compress.quantize import quantize

    manifest = quantize(state["bundle"], out / "bundle", config, data=data, force=True)
    q = manifest["quantization"]
    new = {"bundle": str(out / "bundle")}
    result = {"size_bytes": manifest["size_bytes"], "grid": q.get("grid"), "evaluation": q.get("evaluation")}
    if state.get("source_bundle"):
        source = quantize(state["source_bundle"], out / "source", config, data=data, force=True)
        new["source_quantized_bundle"] = str(out / "source")
        result["source_size_bytes"] = source["size_bytes"]
    return {"state": new, "result": result}


def _bench(state, config, out: Path, data) -> dict:
    from edgeshrink.bench import bench

    out.mkdir(parents=True, exist_ok=True)
    bundles, roles = [state["fp32_bundle"]], ["fp32"]
    if state.get("source_quantized_bundle"):
        bundles.append(state["source_quantized_bundle"])
        roles.append("source")
    if state["bundle"] != state["fp32_bundle"]:
        bundles.append(state["bundle"])
        roles.append("device")
    if config.peer == "auto" and state.get("gguf"):
        config = config.model_copy(update={"peer": state["gguf"]})
    report = bench(bundles, config)
    report["roles"] = roles + ["peer"] * (len(report["candidates"]) - len(bundles))
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    return {"state": {}, "result": {"bench": str(out / "bench.json")}}


LLM_STEPS: dict[str, Callable] = {"import": _import, "prune": _prune, "distill": _distill, "export": _export,
                                  "quantize": _quantize, "bench": _bench}
# A step whose output changes meaning gets a new version, which enters its cache key (as in runner.py):
# quantize 2 fuses sibling projections into one MatMulNBits.
LLM_STEP_VERSIONS = {"quantize": 2}


# -- targets -------------------------------------------------------------------------------------------------
def _row(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def check_llm_targets(recipe: LLMRecipe, bench: dict | None, device_size: int | None, gguf: str | None,
                      distill: dict | None = None) -> list[dict]:
    t = recipe.targets
    rows = []

    def add(name, value, bound, ok, unit="", note=None):
        rows.append({"target": name, "value": value, "bound": bound, "met": bool(ok), "unit": unit,
                     "miss": None if ok or value is None else abs(value - bound), **({"note": note} if note else {})})

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
    has_peer = "peer" in roles
    if t.min_decode_vs_peer is not None:
        if not has_peer:
            raise EdgeshrinkError("min_decode_vs_peer: the bench ran no llama.cpp peer (pip install 'edgeshrink[llamacpp]')")
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
        if not has_peer:
            raise EdgeshrinkError("max_ttft_vs_peer: the bench ran no llama.cpp peer (pip install 'edgeshrink[llamacpp]')")
        if ttft is None:
            raise EdgeshrinkError(f"max_ttft_vs_peer: the bench did not time {t.ttft_prompt_tokens} prompt tokens at "
                                  f"{t.threads} thread(s)")
        ratio = 1 / ttft["vs_peer"]  # vs_peer: peer ms ÷ device ms
        add(f"max_ttft_vs_peer ({t.threads} thread, {t.ttft_prompt_tokens} prompt tokens, device ÷ llama.cpp)",
            ratio, t.max_ttft_vs_peer, ratio <= t.max_ttft_vs_peer, "x")
    if t.max_perplexity_increase is not None:
        fp32 = bench["candidates"][roles.index("fp32")]
        text = next(iter(device.get("quality") or {}), None)
        if text is None or text not in (fp32.get("quality") or {}):
            raise EdgeshrinkError("max_perplexity_increase: the bench scored no text (quality: false?)")
        increase = device["quality"][text]["perplexity"] / fp32["quality"][text]["perplexity"] - 1
        add(f"max_perplexity_increase ({text} test, vs the fp32 bundle)", increase, t.max_perplexity_increase,
            increase <= t.max_perplexity_increase, "", f"{100 * increase:+.2f}%")
    return rows


# -- the run -------------------------------------------------------------------------------------------------
def run_llm(recipe_path, recipe: LLMRecipe, recipe_hash: str, out: Path, progress, executor) -> dict:
    from edgeshrink import __version__
    from edgeshrink._files import atomic_write_text
    from edgeshrink.doctor import report as machine_report
    from edgeshrink.recipes.executors import PathPlan, StepTask, resources_for
    from edgeshrink.recipes.runner import _key, step_log

    steps = recipe.parsed_steps()
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    key = _key(recipe.model, recipe.data, recipe.seed, "llm")
    tasks = []
    for i, (name, config) in enumerate(steps):
        key = _key(key, name, config.to_dict(), LLM_STEP_VERSIONS.get(name, 1))
        tasks.append(StepTask("llm", name, config.to_dict(), f"{i:02d}-{name}-{key}", key,
                              f"step {i + 1}/{len(steps)} {name}", recipe.data, resources_for(name, recipe.resources)))
    records = executor.run_paths([PathPlan(tasks)], {"model": recipe.model}, cache, lambda *a: None, progress)[0]["records"]
    state: dict = {"model": recipe.model}
    for record in records:
        state.update(record["state"])
    results = {t.name: r["result"] for t, r in zip(tasks, records)}
    log = step_log(tasks, records, cache)
    bench = json.loads(Path(results["bench"]["bench"]).read_text()) if "bench" in results else None
    device_size = (results.get("quantize") or results.get("export") or {}).get("size_bytes")
    machine = machine_report()
    report = {
        "schema": "edgeshrink-recipe-report/1", "kind": "language-model", "recipe": str(recipe_path),
        "recipe_sha256": recipe_hash, "name": recipe.name, "out": str(out), "edgeshrink_version": __version__,
        "seed": recipe.seed,
        "machine": {"cpu": machine["cpu"], "logical_cores": machine["logical_cores"], "versions": machine["versions"],
                    "python": platform.python_version()},
        "wall_seconds_this_run": round(time.perf_counter() - started, 1), "executor": executor.describe(),
        "steps": log, "device_bundle": state.get("bundle"), "fp32_bundle": state.get("fp32_bundle"),
        "gguf": state.get("gguf"),
        "targets": check_llm_targets(recipe, bench, device_size, state.get("gguf"), results.get("distill")),
        "bench": bench,
    }
    report["all_targets_met"] = all(t["met"] for t in report["targets"])
    from edgeshrink.recipes.report import html_page

    report["plots"] = write_llm_plots(report, out / "plots")
    text = llm_markdown(report)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.html", html_page(report, text, out / "plots"))
    return report


def _candidates(report: dict) -> list[tuple[str, dict]]:
    bench = report.get("bench") or {}
    return list(zip(bench.get("roles", []), bench.get("candidates", [])))


def llm_markdown(report: dict) -> str:
    from edgeshrink.recipes.report import targets_table

    m = report["machine"]
    lines = [f"# Recipe report: {report['name']}", "",
             f"Recipe `{report['recipe']}` (sha256 {report['recipe_sha256'][:12]}), edgeshrink "
             f"{report['edgeshrink_version']}; machine: {m['cpu']['model']}, {m['logical_cores']} logical cores, "
             f"ISA {' '.join(m['cpu']['isa'])}. Wall time this run: {report['wall_seconds_this_run']:.0f} s.", "",
             "## Targets", ""] + targets_table(report["targets"])
    lines += ["", f"All targets met: **{'yes' if report['all_targets_met'] else 'no'}**.", "",
              "## Steps", "", "| step | seconds | cached |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['seconds']:.0f} | {'yes' if s['cached'] else 'no'} |" for s in report["steps"]]
    lines.append("")
    candidates = _candidates(report)
    if candidates:
        texts = list((candidates[0][1].get("quality") or {}).keys())
        lines += ["## Models (one interleaved bench run)", "",
                  "| role | model | size MB | peak RSS MB | threads | decode tok/s | of limit | vs llama.cpp | "
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
    for name in report.get("plots") or []:
        lines.append(f"![{name}](plots/{name})")
    return "\n".join(lines) + "\n"


def write_llm_plots(report: dict, out: Path) -> list[str]:
    """Decode tokens/s per thread count and time to first token against prompt length, every candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candidates = _candidates(report)
    if not candidates:
        return []
    out.mkdir(parents=True, exist_ok=True)
    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    threads = sorted({d["threads"] for _, c in candidates for d in c["decode"]})
    width = 0.8 / len(candidates)
    for i, (role, c) in enumerate(candidates):
        rates = [next((d["tokens_per_s"] for d in c["decode"] if d["threads"] == t), 0) for t in threads]
        ax.bar([t + (i - (len(candidates) - 1) / 2) * width for t in range(len(threads))], rates, width,
               label=f"{role}: {c['name']}")
    ax.set(xticks=range(len(threads)), xticklabels=[f"{t} thread(s)" for t in threads], ylabel="decode tokens/s",
           title=f"{report['name']}: decode speed")
    names.append(_save(fig, ax, out, "decode.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for role, c in candidates:
        rows = sorted((r for r in c["ttft"] if r["threads"] == threads[0]), key=lambda r: r["prompt_tokens"])
        ax.plot([r["prompt_tokens"] for r in rows], [r["median_ms"] for r in rows], "o-", label=f"{role}: {c['name']}")
    ax.set(xlabel="prompt tokens", ylabel="time to first token (ms)", xscale="log", yscale="log",
           title=f"{report['name']}: time to first token, {threads[0]} thread(s)")
    names.append(_save(fig, ax, out, "ttft.png"))
    return names


def _save(fig, ax, out: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


"""Language-model recipes: import → export → quantize → bench → report, cached; validated before anything runs."""

import json

import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.recipes.generate import GenerationRecipe
from edgeshrink.recipes.runner import run
from edgeshrink.recipes.schema import load_recipe
from tests.conftest import make_texts
from tests.families import make_causal_lm

RECIPE = """version: 1
name: tiny-llm
model: {model}
data: {text}
steps:
  - import: {{}}
  - export: {{validation_prompts: 2, validation_new_tokens: 4}}
  - quantize: {{method: int4-weight, max_eval_examples: 16}}
  - bench: {{threads: [1], prompt_tokens: [8, 16], new_tokens: 4, repeats: 1, warmup_runs: 0, texts: [{text}],
             windows: 2, window_tokens: 16, peer: none}}
targets:
  max_size_mb: 50
  min_decode_limit_fraction: 0.0001
  max_perplexity_increase: 10
"""


@pytest.fixture(scope="module")
def llm_recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("llmrecipe")
    model = make_causal_lm("llama", root / "model", tie_word_embeddings=True)
    text = root / "text.txt"
    text.write_text("\n\n".join(t for t, _ in make_texts(80, seed=3)))
    path = root / "tiny.yaml"
    path.write_text(RECIPE.format(model=model, text=text))
    return path, root


def test_run_writes_a_report_and_reruns_from_cache(llm_recipe):
    path, root = llm_recipe
    messages = []
    report = run(path, root / "out", progress=messages.append)
    assert [s["step"] for s in report["steps"]] == ["import", "export", "quantize", "bench"]
    assert not any(s["cached"] for s in report["steps"]) and report["kind"] == "language-model"
    assert {t["target"].split(" ")[0] for t in report["targets"]} == {
        "max_size_mb", "min_decode_limit_fraction", "max_perplexity_increase"}
    assert report["all_targets_met"], report["targets"]
    roles = report["bench"]["roles"]
    assert roles == ["fp32", "device"]
    fp32, device = report["bench"]["candidates"]
    assert device["decode"][0]["tokens_per_s"] > 0 and device["quality"]
    assert fp32["name"] != device["name"]  # both directories are called "bundle": each is scored, not one twice
    text_name = next(iter(device["quality"]))
    assert device["quality"][text_name]["perplexity"] != fp32["quality"][text_name]["perplexity"]
    text = (root / "out" / "report.md").read_text()
    assert text.startswith("# Recipe report: tiny-llm") and "decode tok/s" in text
    assert report["plots"] == ["decode.png", "ttft.png", "decode_vs_perplexity.png"]
    assert (root / "out" / "report.html").read_text().count("data:image/png;base64,") == 3
    increase = next(t for t in report["targets"] if t["target"].startswith("max_perplexity_increase"))
    assert "(95%, windows resampled in pairs)" in increase["note"]
    again = run(path, root / "out")
    assert all(s["cached"] for s in again["steps"]) and again["wall_seconds_this_run"] < 30
    assert json.loads((root / "out" / "report.json").read_text())["targets"] == again["targets"]


def test_unmet_targets_are_reported_not_hidden(llm_recipe, tmp_path):
    path, root = llm_recipe
    strict = tmp_path / "strict.yaml"
    strict.write_text(path.read_text().replace("max_size_mb: 50", "max_size_mb: 0.001"))
    report = run(strict, root / "out")  # same steps: every one from the cache
    size = next(t for t in report["targets"] if t["target"] == "max_size_mb")
    assert not size["met"] and size["miss"] > 0 and not report["all_targets_met"]


@pytest.mark.parametrize("edit, message", [
    (("  - import: {}\n", "  - finetune: {}\n"), "takes the steps import, prune, distill, export, quantize, bench"),
    (("max_size_mb: 50", "max_size_md: 50"), "unknown key"),
    (("repeats: 1", "repeatz: 1"), "LLMBenchConfig"),
    (("  - export: {validation_prompts: 2, validation_new_tokens: 4}\n", ""), "needs a 'export' step"),
])
def test_bad_recipes_are_refused_in_one_line(llm_recipe, tmp_path, edit, message):
    path, _ = llm_recipe
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace(*edit))
    with pytest.raises(EdgeshrinkError, match=message) as info:
        load_recipe(bad)
    assert "\n" not in str(info.value) and "line " in str(info.value)
    result = CliRunner().invoke(app, ["run", str(bad), "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and not (tmp_path / "never" / "report.json").exists()


def test_the_shipped_recipes_validate():
    recipe, _ = load_recipe("recipes/smollm2-edge.yaml")
    assert isinstance(recipe, GenerationRecipe)
    assert [name for name, _ in recipe.parsed_steps()] == ["import", "export", "quantize", "bench"]
    small, _ = load_recipe("recipes/smollm2-small.yaml")
    assert [name for name, _ in small.parsed_steps()] == ["import", "prune", "distill", "export", "quantize", "bench"]


SMALL = """version: 1
name: tiny-small
model: {model}
data: {text}
steps:
  - import: {{}}
  - prune: {{drop_blocks: 1, ffn_keep: 0.5, calibration_documents: 4, max_tokens: 32}}
  - distill: {{epochs: 1, sequence_tokens: 32, train_tokens: 640, top_k: 8, calibration_windows: 2, precision: fp32}}
  - export: {{validation_prompts: 2, validation_new_tokens: 4, tolerance: 0.01}}
  - quantize: {{method: int4-weight, max_eval_examples: 16}}
  - bench: {{threads: [1], prompt_tokens: [8], new_tokens: 4, repeats: 1, warmup_runs: 0, texts: [{text}],
             windows: 2, window_tokens: 16, peer: none}}
targets:
  min_decode_vs_source: 0.0001
  max_perplexity_increase: 100
  max_distill_minutes: 30
"""


def test_a_prune_recipe_benches_the_device_model_against_the_source(llm_recipe, tmp_path):
    _, root = llm_recipe
    path = tmp_path / "small.yaml"
    path.write_text(SMALL.format(model=root / "model", text=root / "text.txt"))
    report = run(path, tmp_path / "out")
    assert [s["step"] for s in report["steps"]] == ["import", "prune", "distill", "export", "quantize", "bench"]
    assert report["bench"]["roles"] == ["fp32", "source", "device"]
    fp32, source, device = report["bench"]["candidates"]
    assert device["size_bytes"] < source["size_bytes"] < fp32["size_bytes"]
    assert {t["target"].split(" ")[0] for t in report["targets"]} == {
        "min_decode_vs_source", "max_perplexity_increase", "max_distill_minutes"}
    assert all(t["value"] is not None for t in report["targets"]), report["targets"]
    distill = next(s for s in report["steps"] if s["step"] == "distill")["result"]
    assert distill["train_tokens"] == 640 and distill["calibration_perplexity"]["after"] > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("  - prune: {drop_blocks: 1, ffn_keep: 0.5, calibration_documents: 4, "
                                            "max_tokens: 32}\n", ""))
    with pytest.raises(EdgeshrinkError, match="needs a 'prune' step"):
        load_recipe(bad)

"""LLM export: every decoder family exports with a KV cache, validated token for token against PyTorch."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.models.arch import unique_families
from tests.families import make_causal_lm

DECODERS = [f.name for f in unique_families("decoder")]
QUICK = LLMExportConfig(validation_prompts=4, validation_new_tokens=16)


@pytest.fixture(scope="module", params=DECODERS)
def llm_bundle(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model = make_causal_lm(request.param, root / "model")
    return request.param, model, root / "bundle", export_llm(model, root / "bundle", QUICK)


def test_export_validates_and_describes_the_bundle(llm_bundle):
    family, model, bundle, manifest = llm_bundle
    v = manifest["validation"]
    assert v["ok"] and v["token_identical"] == v["prompts"] == 4 and v["new_tokens"] == 16
    assert v["prefill_max_abs_diff"] < 1e-4 and v["decode_step_max_abs_diff"] < 1e-4
    assert manifest["task"] == "text-generation" and manifest["family"] == family
    assert manifest["generation"]["context_length"] == 128 and manifest["generation"]["eos_token_ids"]
    assert manifest["tokenizer"]["chat_template"] == "chat_template.jinja"
    assert manifest["cost"]["flops_per_token"] == 2 * manifest["cost"]["matmul_parameters"]
    names = {i["name"] for i in manifest["inputs"]}
    assert {"input_ids", "attention_mask", "past_key_values.0.key"} <= names
    assert set(manifest["files"]) >= {"model.onnx", "tokenizer.json", "chat_template.jinja"}


def test_validation_failure_is_an_error_and_writes_nothing(tmp_path):
    model = make_causal_lm("llama", tmp_path / "model")
    with pytest.raises(EdgeshrinkError, match="does not match its source"):
        export_llm(model, tmp_path / "bundle", LLMExportConfig(validation_prompts=1, validation_new_tokens=4,
                                                               tolerance=1e-12))
    assert not (tmp_path / "bundle").exists() and not list(tmp_path.glob(".bundle*"))


def test_cli_export_of_a_language_model(tmp_path):
    model = make_causal_lm("qwen2", tmp_path / "model")
    result = CliRunner().invoke(app, ["export", str(model), "--out", str(tmp_path / "b"), "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert "16/16 greedy continuations of 32 tokens identical" in result.stdout
    assert json.loads((tmp_path / "m.json").read_text())["validation"]["ok"]
    refused = CliRunner().invoke(app, ["export", str(model), "--out", str(tmp_path / "c"), "--optimize", "fusion"])
    assert refused.exit_code == 2 and "--optimize applies to tensor-classification and text-classification models; " \
        "a text-generation model takes --opset, --tolerance, --exporter" in refused.stderr


def test_export_keeps_the_callers_config_and_refuses_another_tasks(tmp_path):
    """The public verb exports a language model with the LLMExportConfig given (it used to take the defaults),
    and refuses a classifier's ExportConfig in one line, as a classifier refuses an LLMExportConfig."""
    from edgeshrink.export import ExportConfig, export
    from tests.conftest import make_tiny_bert

    model = make_causal_lm("llama", tmp_path / "model")
    manifest = export(model, tmp_path / "b", LLMExportConfig(validation_prompts=1, validation_new_tokens=3))
    assert manifest["export"]["validation_prompts"] == 1 and manifest["validation"]["new_tokens"] == 3
    with pytest.raises(EdgeshrinkError, match="export: ExportConfig does not apply to a text-generation model "
                                              r"\(it configures text-classification and tensor-classification models\); "
                                              "give a LLMExportConfig"):
        export(model, tmp_path / "c", ExportConfig())
    with pytest.raises(EdgeshrinkError, match="LLMExportConfig does not apply to a text-classification model"):
        export(make_tiny_bert(tmp_path / "bert"), tmp_path / "d", LLMExportConfig())
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("family", DECODERS)
def test_a_tied_lm_head_is_stored_once(family, tmp_path):
    """Gemma 3's exporter folds the tied head's transpose into a second table: re-tied, validated after."""
    import onnx

    model = make_causal_lm(family, tmp_path / "model", tie_word_embeddings=True)
    manifest = export_llm(model, tmp_path / "bundle", LLMExportConfig(validation_prompts=2, validation_new_tokens=8))
    config = json.loads((model / "config.json").read_text())
    table = config["vocab_size"] * config["hidden_size"]
    graph = onnx.load(str(tmp_path / "bundle" / "model.onnx")).graph
    sizes = [int(np.prod(i.dims)) for i in graph.initializer]
    assert sizes.count(table) == 1 and manifest["validation"]["ok"]
    assert manifest["export"]["retied_lm_heads"] in (0, 1)


def test_the_exporter_is_chosen_per_family_and_shape(tmp_path):
    """Auto: the family's first exporter that takes the model (the builder's GroupQueryAttention needs head
    sizes that are multiples of 16); an explicit choice that cannot work is refused in one line."""
    from edgeshrink.export.llm import choose_exporter
    from edgeshrink.models.arch import unique_families

    llama = next(f for f in unique_families("decoder") if f.name == "llama")
    model = make_causal_lm("llama", tmp_path / "m8", hidden_size=32)  # 4 heads of 8
    from transformers import AutoConfig

    small_heads = AutoConfig.from_pretrained(model)
    assert choose_exporter(llama, "auto", small_heads) == "optimum"
    with pytest.raises(EdgeshrinkError, match="head size 8 is not a multiple of 16"):
        choose_exporter(llama, "builder", small_heads)
    manifest = export_llm(model, tmp_path / "bundle", LLMExportConfig(validation_prompts=2, validation_new_tokens=8))
    assert manifest["export"]["exporter"] == "optimum" and manifest["validation"]["ok"]
    forced = export_llm(make_causal_lm("llama", tmp_path / "m16"), tmp_path / "b16",
                        LLMExportConfig(exporter="optimum", validation_prompts=2, validation_new_tokens=8))
    assert forced["export"]["exporter"] == "optimum" and forced["validation"]["ok"]

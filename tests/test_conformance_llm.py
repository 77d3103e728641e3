"""Every registered decoder family through every language-model verb, on a tiny random model built here.

One tiny causal LM per family (``tests/families.py::make_causal_lm``, sizes from the registry's
``test_config``) is exported once (module-scoped ``exported``) and quantized once with the CLI's defaults
(``int4``); each verb's checks take those fixtures: import, export (validation and manifest), the INT4
variants ``LLMQuantConfig`` offers a language model, generation (greedy identity with PyTorch, streaming,
logprobs, chat), perplexity on text, and the refusals (one line, exit 2, nothing written). A verb that
scores bundles (the bench's perplexity) takes ``exported`` and ``int4`` the same way.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.compress import LLMQuantConfig, quantize
from edgeshrink.compress.quantize.decoder import compare_on_text
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.models.arch import unique_families
from edgeshrink.models.llm import import_llm
from edgeshrink.runtime import load
from tests.conftest import make_texts
from tests.families import make_causal_lm

DECODERS = [f.name for f in unique_families("decoder")]
QUICK = LLMExportConfig(validation_prompts=3, validation_new_tokens=12)
CHAT = [{"role": "user", "content": "a good film"}]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm-text") / "text.txt"
    path.write_text("\n\n".join(t for t, _ in make_texts(60, seed=9)))
    return path


@pytest.fixture(scope="module", params=DECODERS)
def exported(request, tmp_path_factory):
    """(family name, HF model directory, fp32 bundle, its manifest), one export per family."""
    root = tmp_path_factory.mktemp(f"llm-{request.param}")
    model = make_causal_lm(request.param, root / "model")
    return request.param, model, root / "fp32", export_llm(model, root / "fp32", QUICK)


@pytest.fixture(scope="module")
def int4(exported, text_file):
    """The fp32 bundle quantized by the CLI with its defaults (int4-weight, block 32, symmetric)."""
    _, _, bundle, _ = exported
    out = bundle.parent / "int4"
    result = CliRunner().invoke(app, ["quantize", str(bundle), "--method", "int4-weight", "--out", str(out),
                                      "--data", str(text_file)])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.stdout and "top-1 agreement" in result.stdout
    return out


def _torch_greedy(model_dir, ids: list[int], new_tokens: int) -> list[int]:
    """PyTorch's greedy continuation, eos included (generate()'s min_new_tokens would mask eos)."""
    import torch
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = list(ids)
    with torch.inference_mode():
        for _ in range(new_tokens):
            ids.append(int(net(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-new_tokens:]


# -- import and export ------------------------------------------------------------------------------
def test_import_uses_an_hf_directory_in_place(exported, tmp_path):
    family, model, _, _ = exported
    assert import_llm(model) == model
    result = CliRunner().invoke(app, ["import", str(model), "--json", str(tmp_path / "i.json")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(model) and json.loads((tmp_path / "i.json").read_text())["path"] == str(model)


def test_export_validates_and_describes_the_bundle(exported):
    family, model, bundle, manifest = exported
    v = manifest["validation"]
    assert v["ok"] and v["token_identical"] == v["prompts"] == 3 and v["new_tokens"] == 12
    assert max(v["prefill_max_abs_diff"], v["decode_step_max_abs_diff"]) <= v["tolerance"]
    assert manifest["task"] == "text-generation" and manifest["family"] == family
    assert manifest["model_type"] == json.loads((model / "config.json").read_text())["model_type"]
    assert manifest["source"]["parameters"] > 0 and manifest["source"]["weights_sha256"]
    gen = manifest["generation"]
    assert gen["context_length"] == 128 and gen["eos_token_ids"] and gen["bos_token_id"] is not None
    assert manifest["tokenizer"]["chat_template"] == "chat_template.jinja"
    assert manifest["cost"]["flops_per_token"] == 2 * manifest["cost"]["matmul_parameters"] > 0
    names = {i["name"] for i in manifest["inputs"]}
    layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    assert {"input_ids", "attention_mask"} | {f"past_key_values.{i}.key" for i in range(layers)} <= names
    assert {"model.onnx", "tokenizer.json", "chat_template.jinja"} <= set(manifest["files"])


# -- quantize ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", [dict(block_size=32, symmetric=True), dict(block_size=16, symmetric=False),
                                     dict(block_size=32, symmetric=True, accuracy_level=4)],
                         ids=["b32-sym", "b16-asym", "b32-sym-int8-compute"])
def test_int4_variants_quantize_and_generate(exported, text_file, variant):
    _, _, bundle, manifest = exported
    out = bundle.parent / ("int4-" + "-".join(f"{v}" for v in variant.values()))
    q = quantize(bundle, out, LLMQuantConfig(method="int4-weight", **variant), data=str(text_file))["quantization"]
    assert q["config"]["block_size"] == variant["block_size"] and q["config"]["symmetric"] == variant["symmetric"]
    by_type = q["weights"]["bytes_by_type"]
    assert by_type.get("uint4", 0) + by_type.get("int4", 0) > 0
    ev = q["evaluation"]
    assert ev["tokens"] > 0 and 0 <= ev["top1_agreement"] <= 1 and ev["perplexity"] > 1
    result = load(out).generate(CHAT, max_new_tokens=6, ignore_eos=True)
    assert len(result.token_ids) == 6 and all(lp <= 0 for lp in result.logprobs)


def test_cli_int4_records_the_defaults(int4):
    manifest = json.loads((int4 / "manifest.json").read_text())
    q = manifest["quantization"]
    assert manifest["task"] == "text-generation" and q["method"] == "int4-weight"
    assert q["config"]["block_size"] == 32 and q["config"]["symmetric"] is True
    assert manifest["size_bytes"] < q["parent"]["size_bytes"]


# -- generate ---------------------------------------------------------------------------------------
def test_greedy_generation_equals_pytorch_and_streams(exported):
    _, model, bundle, _ = exported
    llm = load(bundle)
    ids = llm.encode(CHAT)
    result = llm.generate(CHAT, max_new_tokens=10, ignore_eos=True)
    assert result.token_ids == _torch_greedy(model, ids, 10)
    streamed = list(llm.stream(CHAT, max_new_tokens=10, ignore_eos=True))
    assert [t.id for t in streamed] == result.token_ids
    assert "".join(t.text for t in streamed) == result.text
    assert [t.logprob for t in streamed] == result.logprobs and all(lp <= 0 for lp in result.logprobs)
    assert result.prompt_tokens == len(ids) and result.stop_reason == "length"


def test_chat_template_renders_as_transformers_does(exported):
    from transformers import AutoTokenizer

    _, model, bundle, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(model)
    want = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    assert load(bundle).encode(CHAT) == list(want)


def test_quantized_bundle_generates_like_the_cli_says(int4):
    result = CliRunner().invoke(app, ["generate", str(int4), "--chat", "a good film", "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output


# -- scoring text -----------------------------------------------------------------------------------
def test_perplexity_of_fp32_and_int4_on_text(exported, int4, text_file):
    _, _, bundle, _ = exported
    report = compare_on_text(bundle, int4, str(text_file), 8, lambda *_: None)
    assert report["tokens"] > 0 and report["documents"] == 8
    assert 1 < report["source_perplexity"] < 10 * 400 and 1 < report["perplexity"]  # tiny random: about vocab size
    assert np.isclose(report["perplexity"] / report["source_perplexity"] - 1, report["perplexity_change"])
    same = compare_on_text(bundle, bundle, str(text_file), 8, lambda *_: None)
    assert same["top1_agreement"] == 1 and same["perplexity_change"] == 0


def test_bench_times_and_scores_fp32_and_int4(exported, int4, text_file):
    """The LLM bench on every family: timings, the decode limit, perplexity / bits per byte, agreement and KL
    against the fp32 bundle (which agrees with itself exactly)."""
    from edgeshrink.bench.config import LLMBenchConfig
    from edgeshrink.bench import bench

    _, _, bundle, _ = exported
    config = LLMBenchConfig(threads=[1], prompt_tokens=[8], new_tokens=4, repeats=1, warmup_runs=0,
                            texts=[str(text_file)], windows=2, window_tokens=16, peer="none")
    report = bench([bundle, int4], config)
    fp32, quantized = report["candidates"]
    assert fp32["decode"][0]["tokens_per_s"] > 0 and 0 < fp32["decode"][0]["fraction_of_limit"]
    assert quantized["size_bytes"] < fp32["size_bytes"] and quantized["ttft"][0]["median_ms"] > 0
    (name, score), = fp32["quality"].items()
    assert score["top1_agreement"] == 1 and score["kl_to_reference"] == pytest.approx(0, abs=1e-6)
    assert score["perplexity"] > 1 and np.isclose(
        score["bits_per_byte"], score["nll_nats"] / np.log(2) / score["bytes"])
    assert quantized["quality"][name]["kl_to_reference"] > 0


# -- refusals: one line, exit 2, nothing written ----------------------------------------------------
def _refused(args: list[str], message: str, written) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not written.exists()


def test_generate_refusals(exported, tmp_path):
    _, _, bundle, _ = exported
    json_out = tmp_path / "g.json"
    base = ["generate", str(bundle), "--json", str(json_out)]
    _refused(base + ["a film", "--max-new-tokens", "0"], "max_new_tokens must be positive", json_out)
    _refused(base + ["film " * 200, "--max-new-tokens", "4"], "exceeds the context length 128", json_out)
    _refused(base + ["a film", "--max-new-tokens", "200"], "exceeds the context length 128", json_out)


def test_chat_without_a_chat_template_is_refused(exported, tmp_path):
    from edgeshrink.export.bundle import write_manifest

    _, _, bundle, manifest = exported
    plain = tmp_path / "plain"
    shutil.copytree(bundle, plain)
    (plain / "chat_template.jinja").unlink()
    fields = {k: v for k, v in manifest.items() if k not in ("files", "size_bytes")}
    write_manifest(plain, {**fields, "tokenizer": {**manifest["tokenizer"], "chat_template": None}})
    _refused(["generate", str(plain), "--chat", "hi", "--json", str(tmp_path / "g.json")], "no chat template",
             tmp_path / "g.json")
    assert len(load(plain).generate("a film", max_new_tokens=3, ignore_eos=True).token_ids) == 3  # plain prompts run


@pytest.mark.parametrize("tampered", ["model.onnx", "tokenizer.json", "chat_template.jinja"])
def test_tampered_bundles_are_refused(exported, tmp_path, text_file, tampered):
    _, _, bundle, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with open(broken / tampered, "ab") as fh:
        fh.write(b" ")
    _refused(["generate", str(broken), "a film", "--json", str(tmp_path / "g.json")], "corrupt or was modified",
             tmp_path / "g.json")
    _refused(["quantize", str(broken), "--method", "int4-weight", "--out", str(tmp_path / "q"), "--data",
              str(text_file)], "corrupt or was modified", tmp_path / "q")


def test_prune_and_distill_make_a_smaller_model_that_exports(exported, text_file, tmp_path):
    """Depth everywhere; width where the registry says it applies (else a one-line refusal); then healing."""
    from edgeshrink.compress.distill import distill
    from edgeshrink.compress.distill.decoder import LLMDistillConfig
    from edgeshrink.compress.prune import prune
    from edgeshrink.compress.prune.decoder import LLMPruneConfig
    from edgeshrink.errors import EdgeshrinkError
    from edgeshrink.models.arch import unique_families

    family, model, _, _ = exported
    entry = next(f for f in unique_families("decoder") if f.name == family)
    width = {"ffn_keep": 0.5, "heads_keep": 0.5}
    if not (entry.applies("prune_ffn") and entry.applies("prune_heads")):
        with pytest.raises(EdgeshrinkError, match="cannot prune") as info:
            prune(model, tmp_path / "never", LLMPruneConfig(drop_blocks=1, **width), data=str(text_file))
        assert "\n" not in str(info.value) and not (tmp_path / "never").exists()
        width = {}
    prune(model, tmp_path / "student", LLMPruneConfig(drop_blocks=1, calibration_documents=4, max_tokens=32,
                                                          **width), data=str(text_file))
    config = LLMDistillConfig(epochs=1, sequence_tokens=32, batch_size=2, train_tokens=32 * 4, top_k=4,
                              calibration_windows=2, precision="fp32")
    record = distill(model, tmp_path / "student", tmp_path / "healed", config, data=str(text_file))
    assert record["distill"]["history"][0]["calibration_perplexity"] > 0
    manifest = export_llm(tmp_path / "healed", tmp_path / "bundle", LLMExportConfig(
        validation_prompts=2, validation_new_tokens=8, tolerance=1e-2))
    assert manifest["validation"]["ok"]

"""INT4 of LLM bundles: the tied LM head is untied and quantized too; perplexity and agreement are recorded;
a model imported from a GGUF keeps the GGUF's own grid."""

import json
import os
import shutil

import numpy as np
import pytest

from edgeshrink.compress import LLMQuantConfig, QuantConfig, quantize
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.runtime import load
from tests.conftest import make_texts
from tests.families import make_causal_lm


@pytest.fixture(scope="module")
def tied_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("llmq")
    model = make_causal_lm("llama", root / "model", tie_word_embeddings=True)  # like SmolLM2 and Gemma 3
    export_llm(model, root / "fp32", LLMExportConfig(validation_prompts=2, validation_new_tokens=8))
    text = root / "text.txt"
    text.write_text("\n\n".join(t for t, _ in make_texts(60, seed=9)))
    return root, text


@pytest.mark.parametrize("block_size, symmetric", [(32, True), (16, False)])
def test_int4_of_an_llm_bundle(tied_bundle, block_size, symmetric):
    root, text = tied_bundle
    out = root / f"int4-{block_size}-{symmetric}"
    manifest = quantize(root / "fp32", out, LLMQuantConfig(method="int4-weight", block_size=block_size,
                                                         symmetric=symmetric), data=str(text))
    q = manifest["quantization"]
    assert manifest["task"] == "text-generation" and q["grid"] == "rtn"
    assert list(q["gguf_grid"]["rounded"].values())[0]["bits"] == 4  # the tied table, once for both uses
    import onnx

    nodes = onnx.load(str(out / "model.onnx")).graph.node
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    attrs = [{a.name: a.i for a in n.attribute} for n in nbits]
    assert nbits and all(a["bits"] == 4 and a["block_size"] == block_size for a in attrs)
    assert sum(n.op_type == "GatherBlockQuantized" for n in nodes) == 1
    by_type = q["weights"]["bytes_by_type"]
    assert by_type.get("fp32", 0) < manifest["size_bytes"] / 4  # the head and the embedding are quantized too
    assert manifest["size_bytes"] < 0.7 * manifest["quantization"]["parent"]["size_bytes"]  # graph overhead is large here
    ev = q["evaluation"]
    assert ev["part"] == "calibration" and ev["tokens"] > 0 and 0 <= ev["top1_agreement"] <= 1
    assert ev["perplexity"] > 1 and ev["source_perplexity"] > 1
    assert len(load(out).generate("a good film", max_new_tokens=5, ignore_eos=True).token_ids) == 5


def test_llm_bundles_take_int4_only(tied_bundle):
    root, text = tied_bundle
    with pytest.raises(EdgeshrinkError, match="QuantConfig does not apply to a text-generation model .* give a LLMQuantConfig"):
        quantize(root / "fp32", root / "int8", QuantConfig(method="dynamic-int8"), data=str(text))
    assert not (root / "int8").exists()


def test_the_cli_refuses_a_classifier_flag_for_an_llm_bundle(tied_bundle, tmp_path):
    from typer.testing import CliRunner

    from edgeshrink.cli import app

    root, _ = tied_bundle
    result = CliRunner().invoke(app, ["quantize", str(root / "fp32"), "--method", "int4-weight", "--target", "avx2",
                                      "--tolerance", "1", "--out", str(tmp_path / "q")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert ("--target, --tolerance apply to tensor-classification and text-classification models; a text-generation "
            "model takes --method, --block-size, --symmetric, --accuracy-level, --grid, --head-bits") in result.output
    assert not (tmp_path / "q").exists()


def _onto_gguf_grid(model_dir, gguf_path):
    """Put a tiny model's linear weights onto Q4_1 and its tied embedding onto Q8_0, write them as a GGUF and
    record it as the model's source, as `edgeshrink import model.gguf` would have."""
    import hashlib

    import gguf
    import numpy as np
    import torch
    from gguf.quants import dequantize, quantize as gguf_quantize
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    writer = gguf.GGUFWriter(str(gguf_path), "llama")
    for name, param in model.named_parameters():
        if param.ndim != 2:
            continue
        qtype = gguf.GGMLQuantizationType.Q8_0 if "embed" in name else gguf.GGMLQuantizationType.Q4_1
        raw = gguf_quantize(param.detach().numpy().astype(np.float32), qtype)
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.asarray(dequantize(raw, qtype), np.float32)))
        writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model.save_pretrained(model_dir)
    sha = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    (model_dir / "edgeshrink.json").write_text(json.dumps({"source": {"gguf": str(gguf_path), "sha256": sha}}))


@pytest.fixture(scope="module")
def gguf_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("llmgguf")
    model = make_causal_lm("llama", root / "model", tie_word_embeddings=True, hidden_size=64, intermediate_size=128)
    _onto_gguf_grid(model, root / "model.gguf")
    export_llm(model, root / "fp32", LLMExportConfig(validation_prompts=2, validation_new_tokens=8))
    text = root / "text.txt"
    text.write_text("\n\n".join(t for t, _ in make_texts(60, seed=9)))
    return root, text


def test_int4_keeps_the_gguf_grid_of_an_imported_model(gguf_bundle):
    root, text = gguf_bundle
    manifest = quantize(root / "fp32", root / "q", LLMQuantConfig(method="int4-weight", block_size=32), data=str(text))
    q = manifest["quantization"]
    assert q["grid"] == "gguf" and q["gguf_grid"]["matmuls_left"] == [] and q["gguf_grid"]["rounded"] == {}
    assert q["gguf_grid"]["kept"]["Q4_1"] > 0 and q["gguf_grid"]["kept"]["Q8_0"] == 1
    assert q["gguf_grid"]["fused_projections"] == 2  # each layer's gate and up projections: one MatMulNBits
    ev = q["evaluation"]
    assert abs(ev["perplexity_change"]) < 0.01 and ev["top1_agreement"] > 0.97  # the same weights: nothing re-rounded
    rtn = quantize(root / "fp32", root / "rtn", LLMQuantConfig(method="int4-weight", block_size=32, grid="rtn"),
                   data=str(text))["quantization"]
    assert rtn["grid"] == "rtn"
    ids = load(root / "fp32").encode("a good film about the sea")
    reference = load(root / "fp32").logits(ids)
    kept_error = np.abs(load(root / "q").logits(ids) - reference).max()
    rtn_error = np.abs(load(root / "rtn").logits(ids) - reference).max()
    assert kept_error < rtn_error / 3  # re-rounding the grid costs far more than carrying it over
    small = quantize(root / "fp32", root / "h4", LLMQuantConfig(method="int4-weight", block_size=32, head_bits=4,
                                                             evaluate=False), data=str(text))
    assert small["quantization"]["gguf_grid"]["rounded"] and small["size_bytes"] < manifest["size_bytes"]
    assert len(load(root / "q").generate("a good film", max_new_tokens=4, ignore_eos=True).token_ids) == 4


def test_grid_gguf_needs_a_gguf_source(tied_bundle):
    root, text = tied_bundle
    with pytest.raises(EdgeshrinkError, match="was not imported from a GGUF"):
        quantize(root / "fp32", root / "g", LLMQuantConfig(method="int4-weight", grid="gguf"), data=str(text))
    assert not (root / "g").exists()


def test_llm_quantize_never_writes_into_its_source_nor_copies_what_is_not_listed(tied_bundle, tmp_path):
    """Issue 25, items 1 and 2 on the LLM path: only listed regular files are copied, none is a symlink."""
    root, text = tied_bundle
    source, victim, secret = tmp_path / "B", tmp_path / "victim", tmp_path / "secret"
    shutil.copytree(root / "fp32", source)
    victim.write_text("victim")
    secret.write_text("secret")
    config = LLMQuantConfig(method="int4-weight", evaluate=False)
    for name, make, rule in [("model-inferred.onnx", lambda p: p.symlink_to(victim), "symbolic link"),
                             ("notes.txt", lambda p: p.symlink_to(secret), "symbolic link"),
                             ("stray.txt", lambda p: p.write_text("not listed"), "not listed in the manifest")]:
        make(source / name)  # the gate refuses the source in one line, before anything is written
        with pytest.raises(EdgeshrinkError, match=f"{name}.*{rule}"):
            quantize(source, tmp_path / "Q", config, data=str(text))
        (source / name).unlink()
        assert not (tmp_path / "Q").exists()
    os.utime(source, ns=(10**18, 10**18))
    before = sorted((p.name, p.is_symlink(), p.lstat().st_size) for p in source.iterdir()), source.stat().st_mtime_ns
    manifest = quantize(source, tmp_path / "Q", LLMQuantConfig(method="int4-weight", evaluate=False), data=str(text))
    assert victim.read_bytes() == b"victim" and secret.read_bytes() == b"secret"
    assert (sorted((p.name, p.is_symlink(), p.lstat().st_size) for p in source.iterdir()),
            source.stat().st_mtime_ns) == before
    names = sorted(p.name for p in (tmp_path / "Q").iterdir())
    assert "notes.txt" not in names and "stray.txt" not in names and "notes.txt" not in manifest["files"]
    assert sorted([*manifest["files"], "manifest.json"]) == names
    assert not any(p.is_symlink() for p in (tmp_path / "Q").iterdir())

    outside = tmp_path / "model.onnx.data"  # the weights, moved out and linked back: same bytes, same hash
    (source / "model.onnx.data").rename(outside)
    (source / "model.onnx.data").symlink_to(outside)
    with pytest.raises(EdgeshrinkError, match=r"model\.onnx\.data.*symbolic link"):
        quantize(source, tmp_path / "Q2", LLMQuantConfig(method="int4-weight", evaluate=False), data=str(text))
    assert not (tmp_path / "Q2").exists()

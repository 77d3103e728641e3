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
                                                         symmetric=symmetric, grid="rtn"), data=str(text))
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


def _dequantized(path, out):
    """The quantized graph with every MatMulNBits / GatherBlockQuantized replaced by a MatMul / Gather of the
    fp32 weights numpy reads back from its codes, scales and zero points: the reference its logits must equal."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts = dict(inits)
    for node in graph.node:  # the fp16 scales' Cast nodes
        if node.op_type == "Cast" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]].astype(np.float32)
        if node.op_type == "Reshape" and node.input[0] in consts and node.input[1] in consts:
            consts[node.output[0]] = consts[node.input[0]].reshape(consts[node.input[1]])

    def table(codes, scales, zero_points, n, k, block):
        packed = consts[codes].reshape(n, -1)
        q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, -1)[:, :k].astype(np.float32)
        if zero_points is None:
            z = np.full((n, k // block), 8, np.float32)
        else:
            zp = consts[zero_points].reshape(n, -1)
            z = np.stack([zp & 15, zp >> 4], axis=-1).reshape(n, -1)[:, :k // block].astype(np.float32)
        s = consts[scales].reshape(n, k // block)
        return ((q.reshape(n, -1, block) - z[..., None]) * s[..., None]).reshape(n, k)

    nodes = []
    for node in graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type == "MatMulNBits":
            n, k = attrs["N"], attrs["K"]
            w = table(node.input[1], node.input[2], node.input[3] if len(node.input) > 3 else None, n, k,
                      attrs["block_size"])
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), node.name + "/ref"))
            nodes.append(helper.make_node("MatMul", [node.input[0], node.name + "/ref"], list(node.output)))
        elif node.op_type == "GatherBlockQuantized":
            rows = consts[node.input[0]].shape[0]
            k = consts[node.input[2]].shape[1] * attrs["block_size"]
            w = table(node.input[0], node.input[2], node.input[3] if len(node.input) > 3 else None, rows, k,
                      attrs["block_size"])
            graph.initializer.append(numpy_helper.from_array(w, node.name + "/ref"))
            nodes.append(helper.make_node("Gather", [node.name + "/ref", node.input[1]], list(node.output)))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(out))
    return out


def _equals_its_dequantized_reference(bundle, scratch):
    import onnxruntime as ort

    reference = ort.InferenceSession(str(_dequantized(bundle / "model.onnx", scratch)),
                                     providers=["CPUExecutionProvider"])
    int4 = load(bundle)
    ids = int4.encode("a good film about the sea and a dull one")
    feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
    inputs = {i.name: i for i in reference.get_inputs()}
    if "position_ids" in inputs:
        feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
    for name, meta in inputs.items():
        if name.startswith("past_key_values."):
            feeds[name] = np.zeros([1 if isinstance(d, str) and "batch" in d else (0 if isinstance(d, str) else d)
                                    for d in meta.shape], np.float32)
    expected = reference.run(["logits"], feeds)[0][0]
    np.testing.assert_allclose(int4.logits(ids), expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-4)


def _kl_and_top1(source, quantized, ids_list):
    from edgeshrink.runtime.generate import log_softmax

    kl, agree = [], []
    for ids in ids_list:
        p, q = source.logits(ids), quantized.logits(ids)
        lp, lq = np.stack([log_softmax(r) for r in p]), np.stack([log_softmax(r) for r in q])
        kl += list((np.exp(lp) * (lp - lq)).sum(axis=1))
        agree += list(p.argmax(axis=1) == q.argmax(axis=1))
    return float(np.mean(kl)), float(np.mean(agree))


def test_the_calibrated_grid_is_what_the_onnx_computes_and_beats_round_to_nearest(tied_bundle, tmp_path):
    import onnx

    from edgeshrink.data.lm_text import load_lm_text

    root, text = tied_bundle
    config = LLMQuantConfig(method="int4-weight", answer_prompts=0, accuracy_level=0)
    manifest = quantize(root / "fp32", tmp_path / "cal", config, data=str(text))  # grid auto: no GGUF here
    q = manifest["quantization"]
    assert q["grid"] == "calibrated" and q["gguf_grid"]["matmuls_left"] == []
    searched = q["gguf_grid"]["calibrated"]
    assert searched and all(r["bits"] == 4 and r["method"] == "search" for r in searched.values())
    assert all(r["weighted_error"] <= r["rtn_weighted_error"] * (1 + 1e-5) for r in searched.values())
    calibration = q["gguf_grid"]["calibration"]
    assert calibration["part"] == "calibration" and calibration["tokens"] >= 64 and calibration["documents"] > 0
    nodes = onnx.load(str(tmp_path / "cal" / "model.onnx")).graph.node
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert nbits and all(len(n.input) == 4 for n in nbits)  # uint8 zero points: no float offset terms
    assert sum(n.op_type == "GatherBlockQuantized" for n in nodes) == 1  # the tied table, shared with the head
    assert not any(n.op_type == "MatMul" for n in nodes if "block_sum" in n.name or "offset" in n.name)

    int4 = load(tmp_path / "cal")
    _equals_its_dequantized_reference(tmp_path / "cal", tmp_path / "ref.onnx")

    # GPTQ on request: kept where it lowers a weight's output error, never for the table read as an embedding
    gptq = quantize(root / "fp32", tmp_path / "gptq", config.model_copy(update={"error_feedback": True,
                                                                             "evaluate": False}), data=str(text))
    methods = {name: r["method"] for name, r in gptq["quantization"]["gguf_grid"]["calibrated"].items()}
    assert "gptq" in methods.values() and not any(m == "gptq" and "embed" in name for name, m in methods.items())
    assert all(r["output_error"] <= r.get("gptq_output_error", np.inf) + 1e-12 and r["output_error"] >= 0
               for r in gptq["quantization"]["gguf_grid"]["calibrated"].values() if "gptq_output_error" in r)
    _equals_its_dequantized_reference(tmp_path / "gptq", tmp_path / "ref-gptq.onnx")

    rtn = quantize(root / "fp32", tmp_path / "rtn", config.model_copy(update={"grid": "rtn"}), data=str(text))
    fp32 = load(root / "fp32")
    docs = [fp32.encode(t)[:64] for t in load_lm_text(str(text), "calibration").texts]
    kl_cal, top1_cal = _kl_and_top1(fp32, int4, docs)
    kl_rtn, top1_rtn = _kl_and_top1(fp32, load(tmp_path / "rtn"), docs)
    assert kl_cal <= kl_rtn and top1_cal >= top1_rtn, (kl_cal, kl_rtn, top1_cal, top1_rtn)
    assert rtn["quantization"]["gguf_grid"]["calibrated"] == {}
    assert manifest["size_bytes"] <= rtn["quantization"]["parent"]["size_bytes"]


def test_calibration_text_too_short_for_the_search_is_refused_in_one_line(tied_bundle, tmp_path):
    from typer.testing import CliRunner

    from edgeshrink.cli import app

    root, _ = tied_bundle
    short = tmp_path / "short.txt"
    short.write_text("\n\n".join(["a good film", "a dull one", "the sea", "fine", "bad", "long", "short"]))
    for grid in ([], ["--grid", "calibrated"]):
        result = CliRunner().invoke(app, ["quantize", str(root / "fp32"), "--method", "int4-weight", *grid,
                                          "--data", str(short), "--out", str(tmp_path / "q")])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert "--grid calibrated: the calibration part of 'short.txt' gives" in result.output
        assert "needs at least 64: give more text (--data) or --grid rtn" in result.output
        assert not (tmp_path / "q").exists()
    result = CliRunner().invoke(app, ["quantize", str(root / "fp32"), "--method", "int4-weight", "--grid", "rtn",
                                      "--data", str(short), "--no-eval", "--out", str(tmp_path / "q")])
    assert result.exit_code == 0, result.output  # round to nearest needs no calibration text


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
    # the Q8_0 table brought to 4 bits gets the calibrated search, on the LM head's importances
    assert list(small["quantization"]["gguf_grid"]["calibrated"].values())[0]["bits"] == 4
    assert small["size_bytes"] < manifest["size_bytes"]
    assert len(load(root / "q").generate("a good film", max_new_tokens=4, ignore_eos=True).token_ids) == 4


def test_grid_calibrated_searches_even_the_weights_on_a_gguf_grid(gguf_bundle):
    root, text = gguf_bundle
    q = quantize(root / "fp32", root / "cal", LLMQuantConfig(method="int4-weight", grid="calibrated", evaluate=False),
                 data=str(text))["quantization"]
    assert q["grid"] == "calibrated" and q["gguf_grid"]["kept"] == {} and q["gguf_grid"]["gguf"] is None
    assert len(q["gguf_grid"]["calibrated"]) > 1 and q["gguf_grid"]["calibration"]["tokens"] >= 64
    assert q["gguf_grid"]["fused_projections"] == 2  # gate and up still share one MatMulNBits
    kept = quantize(root / "fp32", root / "kept", LLMQuantConfig(method="int4-weight", evaluate=False),
                    data=str(text))["quantization"]
    assert kept["grid"] == "gguf" and kept["gguf_grid"]["calibrated"] == {} and "calibration" not in kept["gguf_grid"]


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

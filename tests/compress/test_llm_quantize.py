"""INT4 of LLM bundles: the tied LM head is untied and quantized too; perplexity and agreement are recorded."""

import pytest

from edgeshrink.compress import QuantConfig, quantize
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
    manifest = quantize(root / "fp32", out, QuantConfig(method="int4-weight", block_size=block_size,
                                                         symmetric=symmetric), data=str(text))
    q = manifest["quantization"]
    assert manifest["task"] == "text-generation" and q["untied_lm_heads"] == 1
    by_type = q["weights"]["bytes_by_type"]
    assert by_type.get("uint4", 0) + by_type.get("int4", 0) > 0
    assert by_type.get("fp32", 0) < manifest["size_bytes"] / 4  # the head and the embedding are quantized too
    assert manifest["size_bytes"] < 0.7 * manifest["quantization"]["parent"]["size_bytes"]  # graph overhead is large here
    ev = q["evaluation"]
    assert ev["part"] == "calibration" and ev["tokens"] > 0 and 0 <= ev["top1_agreement"] <= 1
    assert ev["perplexity"] > 1 and ev["source_perplexity"] > 1
    assert len(load(out).generate("a good film", max_new_tokens=5, ignore_eos=True).token_ids) == 5


def test_llm_bundles_take_int4_only(tied_bundle):
    root, text = tied_bundle
    with pytest.raises(EdgeshrinkError, match="an LLM bundle takes int4-weight"):
        quantize(root / "fp32", root / "int8", QuantConfig(method="dynamic-int8"), data=str(text))
    assert not (root / "int8").exists()


@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_matmulnbits_float_zero_points_reproduce_a_q4_1_block_grid(accuracy_level):
    """The assumption a faithful GGUF import rests on: Q4_1 blocks (w = d·q + m, float minimum m) are exactly
    MatMulNBits with scale d and a float zero point −m/d, which ORT's CPU kernel accepts."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    K, N, B = 64, 8, 32
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (N, K)).astype(np.uint8)
    d = rng.uniform(0.01, 0.1, (N, K // B)).astype(np.float32)
    m = rng.uniform(-0.5, 0.0, (N, K // B)).astype(np.float32)
    w = (q.reshape(N, K // B, B) * d[..., None] + m[..., None]).reshape(N, K)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(N, K // B, B // 2)
    node = helper.make_node("MatMulNBits", ["x", "w", "s", "z"], ["y"], domain="com.microsoft", K=K, N=N, bits=4,
                            block_size=B, accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "q4_1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])],
                              [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(d.reshape(-1), "s"),
                               numpy_helper.from_array((-m / d).astype(np.float32).reshape(-1), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, K)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ w.T, atol=1e-5)

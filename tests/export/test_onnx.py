import json

import numpy as np
import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export import ExportConfig, export, export_module


def test_export_writes_validated_bundle(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    v = manifest["validation"]
    assert v["ok"] and v["max_abs_diff"] <= 1e-4
    assert [s["shape"] for s in v["per_shape"]] == [[1, 8], [1, 128], [4, 16], [4, 128]]
    assert {i["name"] for i in manifest["inputs"]} == {"input_ids", "attention_mask", "token_type_ids"}
    assert manifest["inputs"][0]["shape"] == ["batch_size", "sequence_length"]  # dynamic axes
    assert manifest["labels"] == ["negative", "positive"]
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert manifest["size_bytes"] == sum(f["size_bytes"] for f in manifest["files"].values())
    assert manifest["source"]["weights_sha256"] and manifest["opset"] == 17
    flops = manifest["flops_per_example"]
    assert flops["64"] > 2 * flops["32"] * 0.99  # grows at least linearly with length


@pytest.mark.parametrize("level,applied", [("basic", "basic"), ("fusion", "fusion:bert")])
def test_optimised_export_is_validated(tiny_model, tmp_path, level, applied):
    manifest = export(tiny_model, tmp_path / "b", ExportConfig(optimize=level, opset=14))
    assert manifest["export"]["optimization"] == applied
    assert manifest["validation"]["ok"] and manifest["opset"] == 14


def test_failed_validation_is_an_error_and_leaves_nothing(tiny_model, tmp_path):
    with pytest.raises(EdgeshrinkError, match="does not match its source"):
        export(tiny_model, tmp_path / "b", ExportConfig(tolerance=1e-15))
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary directory


def test_existing_output_refused_unless_force(tiny_model, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep").write_text("x")
    with pytest.raises(EdgeshrinkError, match="already exists"):
        export(tiny_model, tmp_path / "b")
    export(tiny_model, tmp_path / "b", force=True)
    assert not (tmp_path / "b" / "keep").exists() and (tmp_path / "b" / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_export_plain_module(tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 8 * 8, 3))
    example = torch.randn(5, 1, 8, 8)
    manifest = export_module(net, (example,), tmp_path / "cnn", labels=["a", "b", "c"])
    assert manifest["task"] == "tensor-classification" and manifest["validation"]["ok"]
    assert manifest["flops_per_example"]["fixed"] == 2 * (4 * 8 * 8 * 9 + 3 * 256)

    from edgeshrink.runtime import load

    model = load(tmp_path / "cnn")
    got = model.predict(example.numpy())
    want = net(example).argmax(1).tolist()
    assert [model.labels.index(label) for label in got.labels] == want
    np.testing.assert_allclose(got.probabilities.sum(1), 1, atol=1e-5)


def test_export_module_label_count_mismatch(tmp_path):
    import torch

    with pytest.raises(EdgeshrinkError, match="outputs 2 classes but 3 labels"):
        export_module(torch.nn.Linear(4, 2), (torch.randn(2, 4),), tmp_path / "m", labels=["a", "b", "c"])


def test_export_a_cnn_directory(trained_cnn, digits_sample, tmp_path):
    """A CNN directory exports through the same verb into a validated tensor bundle that records its split."""
    from edgeshrink.data import load_data, split_examples
    from edgeshrink.models.cnn import load_cnn, predict_proba
    from edgeshrink.runtime import load

    manifest = export(trained_cnn, tmp_path / "b", ExportConfig(optimize="basic"))
    record = json.loads((trained_cnn / "edgeshrink.json").read_text())
    assert manifest["task"] == "tensor-classification" and manifest["model_type"] == "cnn"
    assert manifest["validation"]["ok"] and manifest["inputs"][0]["shape"] == ["batch", 1, 8, 8]
    assert manifest["split"] == record["data"]["split"] and manifest["architecture"] == record["architecture"]
    assert manifest["test_accuracy_source"] == record["test"]["accuracy"]
    assert manifest["source"]["parameters"] == record["parameters"] and manifest["flops_per_example"]["fixed"] > 0
    test = split_examples(load_data(digits_sample)).test
    got = load(tmp_path / "b").predict(test.inputs).probabilities
    np.testing.assert_allclose(got, predict_proba(load_cnn(trained_cnn)[0], test.inputs), atol=1e-5)
    with pytest.raises(EdgeshrinkError, match="untrained architecture: train it first"):
        export("digits-cnn", tmp_path / "c")

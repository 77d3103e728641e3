"""`export --format triton`: a Triton model repository whose configs parse as Triton's own ModelConfig protobuf,
whose ensemble is wired consistently, and whose pipeline (the tokenizer's model.py, then ONNX Runtime) gives
the bundle's logits; every kind of breakage is caught by the structural check. (No container runtime runs on
these machines, so Triton itself does not serve it here.)"""

import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.triton import TritonConfig, check_triton_repository, export_triton

pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def repo(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    return export_triton(tiny_bundle, out, TritonConfig(name="sentiment")), out


def test_repository_layout_and_record(repo, tiny_bundle):
    record, out = repo
    assert record["models"] == ["sentiment", "sentiment_onnx", "sentiment_tokenizer"]
    assert sorted(p.name for p in out.iterdir()) == ["edgeshrink-triton.json", *record["models"]]
    assert (out / "sentiment_onnx" / "1" / "model.onnx").read_bytes() == (tiny_bundle / "model.onnx").read_bytes()
    assert (out / "sentiment" / "labels.txt").read_text().split() == ["negative", "positive"]
    check = record["check"]
    assert check["steps"] == ["sentiment_tokenizer", "sentiment_onnx"] and check["served_by_triton"] is False
    assert check["pipeline_max_abs_diff"] <= 1e-4 and check["pipeline_texts"] >= 5
    assert json.loads((out / "edgeshrink-triton.json").read_text()) == record


def test_configs_are_tritons_model_config(repo):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    _, out = repo
    ensemble = text_format.Parse((out / "sentiment" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 64
    assert ensemble.input[0].data_type == model_config_pb2.TYPE_STRING
    assert ensemble.output[0].label_filename == "labels.txt"
    onnx_model = text_format.Parse((out / "sentiment_onnx" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert onnx_model.platform == "onnxruntime_onnx" and [i.name for i in onnx_model.input][0] == "input_ids"


def _broken(repo, tmp_path, path: str, old: str, new: str, regex: bool = False):
    _, out = repo
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    target = copy / path
    text = target.read_text()
    target.write_text(re.sub(old, new, text, count=1) if regex else text.replace(old, new, 1))
    return copy


@pytest.mark.parametrize("path, old, new, message", [
    ("sentiment_onnx/config.pbtxt", 'name: "sentiment_onnx"', 'name: "other"', "names the model 'other'"),
    ("sentiment_onnx/config.pbtxt", "max_batch_size: 64", "max_batch_size: sixty", "not a valid Triton ModelConfig"),
    ("sentiment_onnx/config.pbtxt", 'dims: [ 2 ]', 'dims: [ 3 ]', "dims [3] vs the graph's [2]"),
    ("sentiment_onnx/config.pbtxt", 'name: "input_ids" data_type: TYPE_INT64', 'name: "input_ids" data_type: TYPE_INT32',
     "is TYPE_INT64 in the graph"),
    ("sentiment/config.pbtxt", 'input_map { key: "input_ids" value: "input_ids" }',
     'input_map { key: "input_ids" value: "ids" }', "reads 'ids', which nothing produces"),
    ("sentiment/config.pbtxt", 'model_name: "sentiment_onnx"', 'model_name: "sentiment_gpu"', "lacks"),
    ("sentiment_tokenizer/config.pbtxt", "max_batch_size: 64", "max_batch_size: 8", "below the ensemble's"),
    ("sentiment/labels.txt", "negative\npositive", "positive\nnegative", "labels.txt is not the bundle's"),
    ("sentiment_tokenizer/1/tokenizer_config.json", r'"max_length": \d+', '"max_length": 8',
     "sentiment_tokenizer encodes input_ids differently from the device runtime"),
])
def test_the_check_catches_breakage(repo, tiny_bundle, tmp_path, path, old, new, message):
    broken = _broken(repo, tmp_path, path, old, new, regex=path.endswith(".json"))
    with pytest.raises(EdgeshrinkError, match=re.escape(message)):
        check_triton_repository(broken, tiny_bundle)


def test_cli_from_a_model_directory_and_refusals(tiny_model, cnn_bundle, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tiny_model), "--out", str(tmp_path / "repo"), "--format", "triton",
                                 "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "Not served by Triton here (no container runtime)" in result.output
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["name"] == "tiny-bert" and record["source_bundle"] is None
    for args, message in ((["export", str(cnn_bundle), "--out", str(tmp_path / "c"), "--format", "triton"],
                           "export-triton does not apply to a tensor-classification model"),
                          (["export", str(tiny_model), "--out", str(tmp_path / "d"), "--format", "onnx"],
                           "unknown format 'onnx'"),
                          (["export", str(tiny_model), "--out", str(tmp_path / "e"), "--name", "x"],
                           "--name applies to --format triton"),
                          (["export", str(tiny_model), "--out", str(tmp_path / "repo"), "--format", "triton"],
                           "already exists")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_model_py_encodes_like_the_device_runtime(repo, tiny_bundle):
    """The tokenizer model alone, against Predictor.encode, on texts the check does not use."""
    from edgeshrink.export.triton import _Tensor, _stand_in_backend_utils
    from edgeshrink.runtime import load

    import importlib.util
    import sys

    _, out = repo
    texts = ["the plot was not quite superb", "x", "great " * 200]
    sys.modules["triton_python_backend_utils"] = _stand_in_backend_utils()
    try:
        spec = importlib.util.spec_from_file_location("m", out / "sentiment_tokenizer" / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.TritonPythonModel()
        model.initialize({})
        got = model.execute([{"text": _Tensor("text", np.array([[t.encode()] for t in texts], dtype=object))}])[0]
    finally:
        sys.modules.pop("triton_python_backend_utils", None)
    expected, _ = load(tiny_bundle).encode(texts)
    assert set(got) == set(expected)
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name


def test_the_check_catches_another_model_in_place_of_the_bundles(repo, tiny_bundle, tmp_path):
    from edgeshrink.export import export
    from tests.conftest import make_tiny_bert

    other = export(make_tiny_bert(tmp_path / "other", seed=7), tmp_path / "other-bundle")
    assert other["size_bytes"] > 0
    _, out = repo
    shutil.copytree(out, tmp_path / "copy")
    shutil.copy(tmp_path / "other-bundle" / "model.onnx", tmp_path / "copy" / "sentiment_onnx" / "1" / "model.onnx")
    with pytest.raises(EdgeshrinkError, match="the pipeline's logits differ from the bundle's"):
        check_triton_repository(tmp_path / "copy", tiny_bundle)

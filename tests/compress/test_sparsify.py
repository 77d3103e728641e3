import pytest

from edgeshrink.compress.sparsify import SparsifyConfig, magnitude_masks, schedule, sparsify
from edgeshrink.errors import EdgeshrinkError
from tests.conftest import make_texts, write_csv

TUNE = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(write_csv(tmp_path_factory.mktemp("sparse") / "d.csv", make_texts(160)))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_global_and_per_layer_masks():
    import torch

    weights = {"small": torch.linspace(-1, 1, 100).reshape(10, 10), "large": 10 * torch.linspace(-1, 1, 100).reshape(10, 10)}
    per_layer = magnitude_masks(weights, 0.3, "per-layer")
    assert all(int((~m).sum()) == 30 for m in per_layer.values())
    glob = magnitude_masks(weights, 0.3, "global")
    assert int((~glob["small"]).sum()) + int((~glob["large"]).sum()) == 60
    assert int((~glob["small"]).sum()) > int((~glob["large"]).sum())  # one threshold: the small matrix loses more


def test_schedule_rises_cubically_to_the_target():
    config = SparsifyConfig(sparsity=0.8, steps=4, ramp_fraction=0.5)
    cuts = [(step, schedule(step, 100, config)) for step in range(1, 101)]
    cuts = [(step, s) for step, s in cuts if s is not None]
    assert [step for step, _ in cuts] == [12, 25, 38, 50]  # evenly over the first half
    values = [s for _, s in cuts]
    assert values == sorted(values) and values[-1] == pytest.approx(0.8)
    assert values[0] > 0.8 / 4  # cubic: cut most early, while the model can still recover


def test_one_shot_zeroes_the_fraction(tiny_model, data, tmp_path):
    record = sparsify(tiny_model, data, tmp_path / "s", SparsifyConfig(sparsity=0.6, finetune=None, steps=1))
    s = record["sparsify"]
    assert s["sparsity_targeted"] == pytest.approx(0.6, abs=0.01)
    weights = _weights(tmp_path / "s")
    ffn = weights["bert.encoder.layer.0.intermediate.dense.weight"]
    assert 0.3 < float((ffn == 0).float().mean()) < 0.9
    import torch

    key = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(weights[key], _weights(tiny_model)[key])  # embeddings untouched
    assert s["weights_bytes"] == pytest.approx(s["source_weights_bytes"], rel=0.01)  # dense: same size on disk
    assert s["weights_compressed_bytes"] < s["source_weights_compressed_bytes"]


def test_gradual_pruning_keeps_zeros_through_fine_tuning(tiny_model, data, tmp_path):
    config = SparsifyConfig.from_dict({"sparsity": 0.5, "scope": "per-layer", "steps": 3, "finetune": TUNE})
    record = sparsify(tiny_model, data, tmp_path / "g", config)
    assert len(record["history"]) == 1 and record["test"]["n"] == 24
    assert all(v == pytest.approx(0.5, abs=0.01) for v in record["sparsify"]["per_weight"].values())
    assert SparsifyConfig.from_json(config.to_json()) == config


def test_pruned_model_exports_and_validates(tiny_model, data, tmp_path):
    from edgeshrink.export import ExportConfig, export

    sparsify(tiny_model, data, tmp_path / "s", SparsifyConfig(sparsity=0.5, finetune=None, steps=1))
    manifest = export(tmp_path / "s", tmp_path / "bundle", ExportConfig())
    assert manifest["validation"]["ok"]


def test_bad_inputs(tiny_model, data, tmp_path):
    for bad in ({"sparsity": 1.0}, {"sparsity": 0}, {"scope": "row"}, {"finetune": None, "steps": 4}, {"sparsty": 0.5}):
        with pytest.raises(EdgeshrinkError):
            SparsifyConfig.from_dict(bad)
    other = write_csv(tmp_path / "other.csv", [("good film", "neutral")] * 40 + [("bad film", "negative")] * 40)
    with pytest.raises(EdgeshrinkError, match="does not have"):
        sparsify(tiny_model, str(other), tmp_path / "o", SparsifyConfig(finetune=None, steps=1))
    assert not (tmp_path / "o").exists()

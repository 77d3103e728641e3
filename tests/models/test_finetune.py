import json

import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.finetune import FinetuneConfig, finetune
from edgeshrink.models.sources import model_labels


def test_finetune_learns_and_records(tiny_model, tiny_csv, tmp_path):
    out = tmp_path / "ft"
    record = finetune(tiny_model, out, FinetuneConfig(epochs=8, batch_size=16, learning_rate=3e-3, max_length=32),
                      data=str(tiny_csv))
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    saved = json.loads((out / "edgeshrink.json").read_text())
    assert saved["test"] == record["test"]
    assert saved["data"]["split"]["sizes"] == {"train": 140, "calibration": 30, "test": 30}
    # where the data came from, resolved, and how it was read: enough to read it again from anywhere
    assert saved["data"]["source"] == saved["data"]["split"]["data"]["source"] == str(tiny_csv.resolve())
    assert saved["data"]["name"] == "tiny.csv" and saved["data"]["split"]["data"]["text_column"] == "text"
    assert model_labels(out) == ("negative", "positive")
    # the toy labels follow sentiment words, which a tiny model learns well above chance
    assert record["test"]["accuracy"] >= 0.75
    assert record["history"][-1]["train_loss"] < record["history"][0]["train_loss"]


def test_finetune_refuses_existing_output(tiny_model, tiny_csv, tmp_path):
    (tmp_path / "ft").mkdir()
    with pytest.raises(EdgeshrinkError, match="already exists"):
        finetune(tiny_model, tmp_path / "ft", FinetuneConfig(epochs=0.1), data=str(tiny_csv))

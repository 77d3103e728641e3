import json

import numpy as np
import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink import tasks
from edgeshrink.models.cnn import ARCHITECTURES, CNNConfig, build_cnn, init_cnn, load_cnn, predict_proba
from edgeshrink.models.finetune import FinetuneConfig, finetune
from tests.conftest import make_tiny_cnn, make_texts, write_csv


def test_config_round_trips_and_checks_itself():
    config = CNNConfig(channels=[4, 8], hidden=[16, 16], pool=4)
    assert CNNConfig.from_json(config.to_json()) == config
    assert config.flat_features == 8 * 2 * 2
    for bad in ({"channels": []}, {"channels": [0]}, {"pool": 3}, {"num_classes": 1}, {"chanels": [4]}):
        with pytest.raises(EdgeshrinkError):
            CNNConfig.from_dict(bad)


@pytest.mark.parametrize("architecture", [{}, {"pool": 1, "hidden": []}, {"channels": [3, 5, 7], "hidden": [9, 6]}])
def test_built_net_takes_images_and_gives_logits(architecture):
    import torch

    config = CNNConfig(**architecture)
    net = build_cnn(config)
    assert net(torch.rand(3, *config.input_shape)).shape == (3, config.num_classes)
    assert [n for n, _ in net.named_children()][0] == "conv0" and hasattr(net, "classifier")


def test_finetune_trains_and_saves_a_cnn_directory(trained_cnn, digits_sample):
    record = json.loads((trained_cnn / "edgeshrink.json").read_text())
    assert record["task"] == "tensor-classification" and record["model_type"] == "cnn"
    assert record["labels"] == [str(d) for d in range(10)]
    assert record["data"]["split"]["sizes"]["train"] == 280 and len(record["data"]["split"]["sha256"]) == 64
    assert record["test"]["n"] == record["data"]["split"]["sizes"]["test"]
    assert record["test"]["accuracy"] > 0.6  # 10 epochs on 280 images; chance is 0.1
    assert len(record["history"]) == 10 and record["history"][-1]["train_loss"] < record["history"][0]["train_loss"]
    assert record["source"]["weights_sha256"]  # trained from an init directory, whose weights it names
    cnn = tasks.named("tensor-classification")
    assert tasks.of_model(trained_cnn) is cnn and tasks.of_model("digits-cnn") is cnn
    assert tasks.of_model(trained_cnn.parent) is not cnn
    net, loaded = load_cnn(trained_cnn)
    assert loaded == record
    # the saved weights give the recorded test accuracy
    from edgeshrink.data import load_data, split_examples

    test = split_examples(load_data(digits_sample)).test
    predicted = predict_proba(net, test.inputs).argmax(1)
    assert np.mean([str(p) == y for p, y in zip(predicted, test.labels)]) == record["test"]["accuracy"]


def test_finetune_is_seeded(tmp_path, digits_sample):
    config = FinetuneConfig(epochs=1, learning_rate=5e-3, threads=1)
    init = make_tiny_cnn(tmp_path / "init")
    a = finetune(init, tmp_path / "a", config, data=digits_sample)
    b = finetune(init, tmp_path / "b", config, data=digits_sample)
    assert a["history"] == b["history"] and a["test"] == b["test"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_builtin_architecture_trains_from_scratch(tmp_path, digits_sample):
    record = finetune("digits-cnn", tmp_path / "m", FinetuneConfig(epochs=0.1, threads=1, max_train_examples=64),
                      data=digits_sample)
    assert record["architecture"] == ARCHITECTURES["digits-cnn"].to_dict() and record["train_examples"] == 64


def test_wrong_kind_of_data_or_model(tmp_path, tiny_model, digits_sample):
    text = write_csv(tmp_path / "t.csv", make_texts(60))
    with pytest.raises(EdgeshrinkError, match="takes images; data 't.csv' is text"):
        finetune("digits-cnn", tmp_path / "a", FinetuneConfig(epochs=1), data=str(text))
    with pytest.raises(EdgeshrinkError, match="is a text classifier; data 'digits' is images"):
        finetune(tiny_model, tmp_path / "b", FinetuneConfig(epochs=1), data=digits_sample)
    with pytest.raises(EdgeshrinkError, match="untrained architecture"):
        load_cnn("digits-cnn")
    with pytest.raises(EdgeshrinkError, match="not a CNN directory"):
        load_cnn(tmp_path)
    with pytest.raises(EdgeshrinkError, match="3 labels for an architecture with 10 classes"):
        init_cnn(CNNConfig(), ["a", "b", "c"], tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

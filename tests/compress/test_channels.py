import json

import pytest

from edgeshrink.compress.channels import ChannelPruneConfig, channel_importance, prune_channels, remove_channels
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models.cnn import CNNConfig, build_cnn, load_cnn
from tests.conftest import make_texts, write_csv

CONFIG = CNNConfig(channels=[6, 10], hidden=[12])


def _net(seed=0):
    import torch

    torch.manual_seed(seed)
    return build_cnn(CONFIG).eval()


def test_config_round_trips_and_rejects_bad_values():
    config = ChannelPruneConfig(channels_keep=0.25, hidden_keep=0.5, recover_epochs=2)
    assert ChannelPruneConfig.from_json(config.to_json()) == config
    for bad in ({"channels_keep": 0}, {"channels_keep": 1.5}, {"recover_epochs": -1}, {"chanels_keep": 0.5}):
        with pytest.raises(EdgeshrinkError):
            ChannelPruneConfig.from_dict(bad)


def test_keeping_everything_gives_the_same_outputs():
    import torch

    net = _net()
    same, config = remove_channels(net, CONFIG, [list(range(6)), list(range(10))], [list(range(12))])
    x = torch.rand(5, 1, 8, 8)
    assert config == CONFIG
    torch.testing.assert_close(same(x), net(x), rtol=0, atol=0)


def test_removing_dead_channels_and_neurons_changes_nothing():
    """Channels whose filters are zero (and whose outputs feed nothing) can go without changing a single output."""
    import torch

    net = _net()
    with torch.no_grad():
        net.conv0.weight[[1, 4]] = 0
        net.conv0.bias[[1, 4]] = 0
        net.conv1.weight[[0, 3, 7]] = 0
        net.conv1.bias[[0, 3, 7]] = -1  # ReLU(-1) = 0: dead whatever the input
        net.fc0.weight[[2, 5]] = 0
        net.fc0.bias[[2, 5]] = 0
    keep = [[0, 2, 3, 5], [1, 2, 4, 5, 6, 8, 9]]
    hidden = [[i for i in range(12) if i not in (2, 5)]]
    smaller, config = remove_channels(net, CONFIG, keep, hidden)
    assert config.channels == [4, 7] and config.hidden == [10]
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in net.parameters())
    assert smaller.conv1.weight.shape == (7, 4, 3, 3) and smaller.fc0.weight.shape == (10, 7 * 4 * 4)
    x = torch.rand(8, 1, 8, 8)
    torch.testing.assert_close(smaller(x), net(x), rtol=1e-5, atol=1e-6)


def test_taylor_importance_ranks_dead_channels_last():
    import torch

    net = _net()
    with torch.no_grad():
        net.conv1.weight[[2, 6]] = 0
        net.conv1.bias[[2, 6]] = -1
    conv, hidden = channel_importance(net, CONFIG, torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,)), 16)
    assert [len(s) for s in conv] == [6, 10] and [len(s) for s in hidden] == [12]
    assert set(torch.argsort(conv[1])[:2].tolist()) == {2, 6} and float(conv[1][[2, 6]].sum()) == 0.0
    assert not any(module._forward_hooks for module in net.modules()) and not net.training  # left as it was


def test_prune_channels_makes_a_smaller_cnn_that_still_works(trained_cnn, digits_sample, tmp_path):
    teacher = json.loads((trained_cnn / "edgeshrink.json").read_text())
    record = prune_channels(trained_cnn, digits_sample, tmp_path / "p",
                            ChannelPruneConfig(channels_keep=0.5, hidden_keep=0.5, recover_epochs=2, threads=1))
    assert record["architecture"]["channels"] == [4, 8] and record["architecture"]["hidden"] == [16]
    assert record["parameters"] < teacher["parameters"] / 3
    info = record["prune_channels"]
    assert [len(k) for k in info["kept_channels"]] == [4, 8] and info["teacher_parameters"] == teacher["parameters"]
    assert record["data"]["split"]["sha256"] == teacher["data"]["split"]["sha256"]
    assert len(record["history"]) == 2 and 0 < record["test"]["accuracy"] <= 1
    net, loaded = load_cnn(tmp_path / "p")
    assert loaded["test"] == record["test"]


def test_bad_inputs(trained_cnn, tiny_model, digits_sample, tmp_path):
    with pytest.raises(EdgeshrinkError, match="not smaller than its teacher"):
        prune_channels(trained_cnn, digits_sample, tmp_path / "a", ChannelPruneConfig(channels_keep=1.0))
    with pytest.raises(EdgeshrinkError, match="prune-channels does not apply to a text-classification model"):
        prune_channels(tiny_model, digits_sample, tmp_path / "b")
    text = write_csv(tmp_path / "t.csv", make_texts(40))
    with pytest.raises(EdgeshrinkError, match="takes images; data 't.csv' is text"):
        prune_channels(trained_cnn, str(text), tmp_path / "c")
    from edgeshrink.compress.prune import prune
    from edgeshrink.compress.prune.encoder import PruneConfig

    with pytest.raises(EdgeshrinkError, match="prune does not apply to a tensor-classification model.*prune-channels"):
        prune(trained_cnn, tmp_path / "d", PruneConfig(layers=1), data=digits_sample)
    assert not any((tmp_path / name).exists() for name in "abcd")

"""Every config object round-trips through JSON and rejects unknown keys, naming them."""

import pytest

from edgeshrink.bench import BenchConfig
from edgeshrink.compress import QuantConfig
from edgeshrink.compress.prune.encoder import PruneConfig
from edgeshrink.data import DataConfig, SplitConfig
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export import ExportConfig
from edgeshrink.export.triton import TritonConfig
from edgeshrink.models.finetune import FinetuneConfig
from edgeshrink.recipes.executors import StepResources
from edgeshrink.serve.config import CloudConfig
from edgeshrink.serve.ray_engine import RayServeConfig

CONFIGS = [
    BenchConfig(threads=[1], seq_lengths=[16]),
    DataConfig(source="x.csv", text_column="t"),
    SplitConfig(seed=3),
    ExportConfig(optimize="fusion", validation_shapes=[(1, 8)]),
    FinetuneConfig(epochs=0.5),
    QuantConfig(method="static-int8", calibration_method="entropy", op_types=["MatMul"]),
    PruneConfig(layers=[0, 5], heads_keep=0.5, ffn_keep=0.25),
    StepResources(cpus="node", gpus=1, memory_gb=2),
    RayServeConfig(address="auto", min_replicas=1, max_replicas=3, replica_cpus=2),
    TritonConfig(name="sentiment", max_batch_size=32),
    CloudConfig(url="http://127.0.0.1:8001", protocol="v2", model="bundle"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_round_trip(config):
    assert type(config).from_json(config.to_json()) == config


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_unknown_key_rejected(config):
    data = config.to_dict() | {"learnin_rate": 1}
    with pytest.raises(EdgeshrinkError, match="learnin_rate: unknown key"):
        type(config).from_dict(data)


def test_bad_values_rejected():
    with pytest.raises(EdgeshrinkError, match="optimize"):
        ExportConfig.build(optimize="turbo")
    with pytest.raises(EdgeshrinkError, match="test split"):
        SplitConfig.build(train_fraction=0.9, calibration_fraction=0.2)
    with pytest.raises(EdgeshrinkError, match="threads"):
        BenchConfig.build(threads=[0])

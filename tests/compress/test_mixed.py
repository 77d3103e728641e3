"""The `auto` search logic on a synthetic model whose accuracy falls as more nodes lose precision."""

from pathlib import Path

import numpy as np
import pytest

from edgeshrink.compress.quantize import mixed
from edgeshrink.compress.quantize import QuantConfig
from edgeshrink.compress.quantize.passes import QuantContext

N_NODES, N_TEXTS = 12, 200
COST = {"int4": 1.0, "fp32": 0.0}


def damage(levels: dict, int8_cost: float) -> float:
    cost = {**COST, "int8": int8_cost}
    return sum((i + 1) / N_NODES * cost[levels[f"n{i}"]] for i in range(N_NODES))


class FakeBuilder:
    """Example j is answered right while the total damage stays under its threshold."""

    int8_cost = 0.02

    def __init__(self, ctx):
        self.units = [{"node": f"n{i}", "op": "MatMul", "weight": f"w{i}", "elements": 4096} for i in range(N_NODES)]
        self.builds = 0

    def probabilities(self, levels, texts):
        self.builds += 1
        d = damage(levels, self.int8_cost)
        thresholds = np.linspace(0.05, 6.0, N_TEXTS)[: len(texts)]
        right = d < thresholds
        probs = np.where(right[:, None], [0.9, 0.1], [0.1, 0.9]) * (1 - 0.01 * d) + [0, 0.01 * d]
        size = int(sum({"int4": 1, "int8": 2, "fp32": 8}[v] for v in levels.values()))
        return probs / probs.sum(1, keepdims=True), size

    def build(self, levels, dst):
        Path(dst).write_text(repr(sorted(levels.items())))


def _ctx(tmp_path, tolerance):
    return QuantContext(source_onnx=tmp_path / "src.onnx", output_onnx=tmp_path / "out.onnx", work_dir=tmp_path,
                        config=QuantConfig(method="auto", tolerance=tolerance), types={}, manifest={"labels": ["a", "b"]},
                        encode=lambda texts: ({}, []), calibration_texts=[f"t{i}" for i in range(N_TEXTS)],
                        calibration_labels=["a"] * N_TEXTS)


def _accuracy(levels, int8_cost):
    return float(np.mean(damage(levels, int8_cost) < np.linspace(0.05, 6.0, N_TEXTS)))


@pytest.mark.parametrize("tolerance", [2.0, 10.0, 30.0])
def test_int4_prefix_is_the_largest_within_tolerance(tmp_path, monkeypatch, tolerance):
    monkeypatch.setattr(mixed, "_Builder", FakeBuilder)
    FakeBuilder.int8_cost = 0.02
    result = mixed.search(_ctx(tmp_path, tolerance))
    assert result["tolerance_met"] and result["chosen"]["drop_points"] <= tolerance
    levels = {n["node"]: n["precision"] for n in result["per_node"]}
    k = result["chosen"]["counts"]["int4"]
    # the least sensitive nodes (small index) are the ones in int4
    assert all(levels[f"n{i}"] == "int4" for i in range(k)) and result["chosen"]["counts"]["fp32"] == 0
    one_more = {f"n{i}": ("int4" if i <= k else "int8") for i in range(N_NODES)}
    if k < N_NODES:
        assert 100 * (1 - _accuracy(one_more, 0.02)) > tolerance  # k is the boundary, not just any passing k


def test_falls_back_to_fp32_when_int8_is_too_lossy(tmp_path, monkeypatch):
    monkeypatch.setattr(mixed, "_Builder", FakeBuilder)
    FakeBuilder.int8_cost = 0.8
    result = mixed.search(_ctx(tmp_path, 5.0))
    counts = result["chosen"]["counts"]
    assert result["tolerance_met"] and counts["int4"] == 0 and 0 < counts["fp32"] < N_NODES
    levels = {n["node"]: n["precision"] for n in result["per_node"]}
    assert levels[f"n{N_NODES - 1}"] == "fp32"  # the most sensitive node is the first one kept in fp32


def test_always_returns_a_model_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(mixed, "_Builder", FakeBuilder)
    FakeBuilder.int8_cost = 50.0
    result = mixed.search(_ctx(tmp_path, 0.0))
    assert not result["tolerance_met"] and "no candidate met" in result["message"]
    assert (tmp_path / "out.onnx").exists()
    assert result["chosen"]["drop_points"] == min(c["drop_points"] for c in result["candidates"])

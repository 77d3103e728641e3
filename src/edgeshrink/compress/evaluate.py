"""Score a quantized bundle against its source on the same examples, and list what precision each weight has."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeshrink.stats import accuracy_interval, mcnemar_p


def accuracy_of(predictor, examples) -> tuple[list[str], dict]:
    """Predicted labels and accuracy of a bundle on text examples or image examples (tensor bundles)."""
    from edgeshrink.data.images import model_inputs

    predicted = predictor.predict(model_inputs(examples)).labels
    correct = sum(p == y for p, y in zip(predicted, examples.labels))
    low, high = accuracy_interval(correct, len(examples))
    return predicted, {"value": correct / len(examples), "correct": correct, "n": len(examples), "ci95": [low, high]}


def evaluate_pair(source, quantized_dir: Path, test, progress) -> dict:
    """Test-split accuracy of the source bundle and the quantized one, their agreement, and McNemar's p."""
    from edgeshrink.runtime import load

    progress("scoring the test split (source)")
    source_pred, source_acc = accuracy_of(source, test)
    progress("scoring the test split (quantized)")
    quant_pred, quant_acc = accuracy_of(load(quantized_dir, verify=False), test)
    only_source = sum(s == y != q for s, q, y in zip(source_pred, quant_pred, test.labels))
    only_quant = sum(q == y != s for s, q, y in zip(source_pred, quant_pred, test.labels))
    return {"split": "test", "source_accuracy": source_acc, "accuracy": quant_acc,
            "accuracy_drop_points": 100 * (source_acc["value"] - quant_acc["value"]),
            "agreement": float(np.mean([s == q for s, q in zip(source_pred, quant_pred)])),
            "mcnemar": {"only_source_correct": only_source, "only_quantized_correct": only_quant,
                        "p_value": mcnemar_p(only_source, only_quant)}}


_PRECISION = {1: "fp32", 10: "fp16", 2: "uint8", 3: "int8", 21: "uint4", 22: "int4", 6: "int32", 7: "int64",
              16: "bf16"}


def weight_precisions(onnx_path: Path, min_elements: int = 1024) -> dict:
    """Every weight tensor of at least ``min_elements`` values: its stored type, and bytes by type. Codes
    packed into uint8 for MatMulNBits (directly or through a Reshape to GatherBlockQuantized) count as
    ``uint<bits>``, the width the kernel reads them at."""
    import onnx

    model = onnx.load(str(onnx_path))
    packed: dict[str, int] = {}
    reshaped = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Reshape"}
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            data = node.input[1] if node.op_type == "MatMulNBits" else node.input[0]
            packed[reshaped.get(data, data)] = bits
    per_weight, bytes_by_type = {}, {}
    for init in model.graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        if count < min_elements:
            continue
        kind = _PRECISION.get(init.data_type, str(init.data_type))
        if init.name in packed and init.data_type == onnx.TensorProto.UINT8:
            kind = f"uint{packed[init.name]}"
        per_weight[init.name] = kind
        nbytes = len(init.raw_data) if init.raw_data else count * 4
        bytes_by_type[kind] = bytes_by_type.get(kind, 0) + nbytes
    return {"per_weight": per_weight, "bytes_by_type": bytes_by_type}

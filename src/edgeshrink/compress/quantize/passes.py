"""ORT's quantization passes over a classifier bundle's graph, each a function of a QuantContext: dynamic INT8,
static INT8 (streamed calibration), block-wise INT4 weights and FP16. ``dynamic_int8`` and ``int4_weight`` also
take the nodes to leave alone, for the mixed-precision search (mixed.py) and a language model's rounded weights.

Pass order matters: ORT's transformer fusions replace MatMul/Gather with fused contrib ops, and
quantization then cannot infer types of their weights unless told that untyped tensors are float
(``DefaultTensorType``). Every ORT quantizer call here sets it, so fused and unfused graphs both work.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeshrink._quiet import quiet
from edgeshrink.compress.quantize.config import MIN_CALIBRATION_EXAMPLES, QuantConfig
from edgeshrink.errors import EdgeshrinkError, first_line


@dataclass
class QuantContext:
    """What a method gets: paths, config, and helpers bound to the source bundle and its data."""

    source_onnx: Path  # in a private copy of the source bundle, with its manifest: a method may write beside it
    output_onnx: Path
    work_dir: Path
    config: QuantConfig
    types: dict
    manifest: dict
    encode: Callable | None  # texts -> (feeds, truncated), the device tokenizer
    calibration_texts: list[str]
    calibration_labels: list[str]
    progress: Callable = field(default=lambda *a, **k: None)
    calibration_inputs: np.ndarray | None = None  # tensor bundles: the calibration split's arrays

    def require_calibration(self, method: str) -> list[str]:
        if self.encode is None:
            raise EdgeshrinkError(f"{method} needs text calibration data; this bundle takes tensors")
        return _enough(method, self.calibration_texts[: self.config.calibration_samples])

    def calibration_reader(self, method: str, on_batch: Callable[[int], None] | None = None):
        """(a CalibrationReader over the calibration split, its example count), for text or tensor bundles: texts
        tokenized by the device's own tokenizer, arrays as they are."""
        if self.encode is not None:
            # similar lengths per batch: few padding positions calibrated
            texts = sorted(self.require_calibration(method), key=len)
            return CalibrationReader(texts, lambda batch: self.encode(batch)[0], self.config, on_batch), len(texts)
        if self.calibration_inputs is None:
            raise EdgeshrinkError(f"{method} needs calibration data: this bundle records no data split, pass --data")
        inputs = _enough(method, self.calibration_inputs[: self.config.calibration_samples])
        (name,) = [spec["name"] for spec in self.manifest["inputs"]]
        return (CalibrationReader(inputs, lambda batch: {name: np.ascontiguousarray(batch, dtype=np.float32)},
                                  self.config, on_batch), len(inputs))


def _enough(method: str, examples):
    if len(examples) < MIN_CALIBRATION_EXAMPLES:
        raise EdgeshrinkError(f"{method} needs at least {MIN_CALIBRATION_EXAMPLES} calibration examples, "
                              f"got {len(examples)}: give more data or a larger calibration split")
    return examples


class CalibrationReader:
    """An onnxruntime CalibrationDataReader over the calibration split, streamed one batch of feeds per
    ``get_next``, so memory stays bounded however many samples are used."""

    def __init__(self, examples, feeds: Callable, config: QuantConfig, on_batch: Callable[[int], None] | None):
        self.examples, self.feeds, self.on_batch = examples, feeds, on_batch
        self.batch_size, self.position = config.calibration_batch_size, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.examples):
            return None
        batch = self.examples[self.position:self.position + self.batch_size]
        self.position += len(batch)
        if self.on_batch:
            self.on_batch(len(batch))
        return self.feeds(batch)


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[name]


def _float_default() -> dict:
    import onnx

    return {"DefaultTensorType": onnx.TensorProto.FLOAT}


@contextmanager
def reported(what: str, limit: int = 300):
    """onnx and ORT's many exception types as one line saying what failed; our own errors pass as they are."""
    try:
        yield
    except EdgeshrinkError:
        raise
    except Exception as exc:
        raise EdgeshrinkError(f"{what} failed: {first_line(exc, limit)}") from None


def dynamic_int8(src: Path, dst: Path, ctx: QuantContext, nodes_to_exclude: list[str] | None = None) -> None:
    from onnxruntime.quantization import quantize_dynamic

    cfg, types = ctx.config, ctx.types
    with quiet():
        quantize_dynamic(str(src), str(dst), per_channel=cfg.per_channel, reduce_range=types["reduce_range"],
                         weight_type=_qtype(types["weight_type"]), op_types_to_quantize=cfg.op_types,
                         nodes_to_exclude=nodes_to_exclude or [],
                         extra_options={**_float_default(), "MatMulConstBOnly": True})


def dynamic(ctx: QuantContext) -> dict:
    """Weights int8 ahead of time, activations quantized per batch at run time (no calibration)."""
    with reported("dynamic-int8"):
        dynamic_int8(ctx.source_onnx, ctx.output_onnx, ctx)
    return {"format": "QOperator (MatMulInteger / DynamicQuantizeMatMul)"}


def static(ctx: QuantContext) -> dict:
    """QDQ int8 with activation ranges calibrated on the calibration split.

    Calibration is ours, streamed: ORT's own `CalibMaxIntermediateOutputs` discards the collected batches
    instead of folding them into the ranges (onnxruntime 1.32), and its histogram calibrators keep every
    batch in memory. We feed ORT's calibrator one batch per call (min/max ranges merge, histograms
    accumulate), save the ranges with ORT's cache format, and quantize from that cache.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    cfg, types = ctx.config, ctx.types
    reader, n_examples = ctx.calibration_reader("static-int8",
                                                on_batch=lambda n: ctx.progress("calibrating", advance=n))
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[cfg.calibration_method]
    # Text: MatMul/Gemm/Gather (Gather: the embedding tables). Tensor bundles (CNNs): every op ORT can
    # quantize (None), so Relu and MaxPool stay in int8 between QLinearConvs instead of adding Q/DQ pairs
    # (measured faster than Conv/Gemm only on AVX2).
    op_types = cfg.op_types or (["MatMul", "Gemm", "Gather"] if ctx.encode is not None else None)
    symmetric = types["activation_type"] == "int8"
    cache = ctx.work_dir / "calibration.json"
    with reported("static-int8"), quiet():
        calibrator = create_calibrator(ctx.source_onnx, op_types,
                                       augmented_model_path=str(ctx.work_dir / "augmented.onnx"),
                                       calibrate_method=method, extra_options={"symmetric": symmetric})
        ctx.progress("calibrating", total=n_examples)
        while reader.position < n_examples:
            # one batch per call: histogram calibrators stack a call's batches, which must share a shape
            calibrator.collect_data(_Chunk(reader, batches=1))
        save_tensors_data(calibrator.compute_data(), cache)
        del calibrator
        quantize_static(str(ctx.source_onnx), str(ctx.output_onnx), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=op_types, per_channel=cfg.per_channel,
                        reduce_range=types["reduce_range"], activation_type=_qtype(types["activation_type"]),
                        weight_type=_qtype(types["weight_type"]), calibrate_method=method,
                        extra_options={**_float_default(), "ActivationSymmetric": symmetric},
                        calibration_cache_path=cache)
    return {"format": "QDQ", "calibration_examples": n_examples, "op_types": op_types or "all"}


class _Chunk:
    """A view of the next few batches of a reader: ORT's calibrator reads until None, then folds them in."""

    def __init__(self, reader, batches: int):
        self.reader, self.left = reader, batches

    def get_next(self):
        if self.left == 0:
            return None
        self.left -= 1
        return self.reader.get_next()


def int4_weight(src: Path, dst: Path, cfg, nodes_to_exclude: list[str] | None = None,
                embeddings: bool | None = None) -> None:
    """``cfg``: a QuantConfig or an LLMQuantConfig (block_size, symmetric, accuracy_level)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    embeddings = cfg.quantize_embeddings if embeddings is None else embeddings
    op_types = ("MatMul", "Gather") if embeddings else ("MatMul",)
    algo = DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                        accuracy_level=cfg.accuracy_level, op_types_to_quantize=op_types,
                                        quant_axes=(("MatMul", 0), ("Gather", 1)))
    with quiet():
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=algo,
                                         nodes_to_exclude=nodes_to_exclude or [])
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def int4(ctx: QuantContext) -> dict:
    """Block-wise weight-only INT4 of MatMuls (MatMulNBits) and of the embedding tables (GatherBlockQuantized)."""
    with reported("int4-weight"):
        int4_weight(ctx.source_onnx, ctx.output_onnx, ctx.config)
    return {"format": "MatMulNBits + GatherBlockQuantized" if ctx.config.quantize_embeddings else "MatMulNBits"}


def fp16(ctx: QuantContext) -> dict:
    """float16 weights and compute; graph inputs/outputs stay as they were (fp32 logits)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(ctx.config.fp16_block_list))
    with reported("fp16"):
        with quiet():
            model = convert_float_to_float16(onnx.load(str(ctx.source_onnx)), keep_io_types=True, op_block_list=block)
        onnx.save(model, str(ctx.output_onnx))
    return {"fp32_op_types": block}


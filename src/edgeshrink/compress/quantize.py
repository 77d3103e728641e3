"""Quantize a device bundle: one registered function per method, one config object for all of them.

    from edgeshrink.compress import quantize, QuantConfig
    manifest = quantize("runs/bundle", "runs/bundle-int8", QuantConfig(method="dynamic-int8"))

Every method reads the fp32 bundle, writes a new bundle (atomically), and records in its manifest the
method and its parameters, the calibration split hash, the precision of every weight, the size, and
accuracy on the test split next to the source bundle's (same examples, McNemar test on the pairs).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeshrink._files import atomic_output_dir, check_output_dir, copy_listed_files
from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.bundle import MANIFEST_NAME, read_manifest

Method = Literal["dynamic-int8", "static-int8", "int4-weight", "fp16", "auto"]
Target = Literal["host", "avx2", "avx512-vnni", "arm64"]

# Weight/activation types and range per hardware target. On AVX2 without VNNI, ORT's u8s8 kernels use
# VPMADDUBSW, which can saturate: 7-bit weights (reduce_range) avoid it. VNNI has no such issue; Arm's
# dot-product kernels prefer signed activations.
TARGETS: dict[str, dict] = {
    "avx2": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": True},
    "avx512-vnni": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": False},
    "arm64": {"activation_type": "int8", "weight_type": "int8", "reduce_range": False},
}
MIN_CALIBRATION_EXAMPLES = 16


class QuantConfig(Config):
    version: int = 1
    method: Method
    target: Target = "host"
    per_channel: bool = True  # per-channel weight scales: measured 0.6-0.9 pt better than per-tensor here
    weight_type: Literal["int8", "uint8"] | None = None  # None: the target's
    activation_type: Literal["int8", "uint8"] | None = None  # static only; None: the target's
    reduce_range: bool | None = None  # None: the target's
    op_types: list[str] | None = None  # None: the method's default
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    calibration_samples: int = Field(512, ge=1)
    calibration_batch_size: int = Field(16, ge=1)
    block_size: Literal[16, 32, 64, 128] | None = None  # int4; None: 128 for classifiers, 32 (a GGUF's block) for LLMs
    symmetric: bool = True
    quantize_embeddings: bool = True
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None  # MatMulNBits compute precision (4 = int8)
    grid: Literal["auto", "gguf", "rtn"] = "auto"  # LLM int4: keep the GGUF's grid when imported from one (auto)
    head_bits: Literal[4, 8] | None = None  # LLM int4: cap on the embedding / LM-head bits (None: the grid's own)
    fp16_block_list: list[str] = []  # op types kept in fp32 besides ORT's default block list
    tolerance: float = Field(0.5, ge=0)  # auto: max accuracy drop in points on the calibration split
    max_eval_examples: int | None = Field(None, ge=MIN_CALIBRATION_EXAMPLES)  # auto: cap per evaluation
    evaluate: bool = True  # score the test split (source and quantized) into the manifest

    def resolved(self) -> dict:
        """The concrete types this config means on its target (``host`` = the CPU it runs on)."""
        target = host_target() if self.target == "host" else self.target
        preset = TARGETS[target]
        return {"target": target,
                "weight_type": self.weight_type or preset["weight_type"],
                "activation_type": self.activation_type or preset["activation_type"],
                "reduce_range": preset["reduce_range"] if self.reduce_range is None else self.reduce_range}


def host_target() -> str:
    from edgeshrink.doctor import cpu_info

    isa = set(cpu_info()["isa"])
    if {"avx512-vnni", "avx-vnni", "amx-int8"} & isa:
        return "avx512-vnni"
    if {"neon", "arm-dotprod", "arm-i8mm"} & isa:
        return "arm64"
    return "avx2"


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
        texts = self.calibration_texts[: self.config.calibration_samples]
        if len(texts) < MIN_CALIBRATION_EXAMPLES:
            raise EdgeshrinkError(f"{method} needs at least {MIN_CALIBRATION_EXAMPLES} calibration examples, "
                                  f"got {len(texts)}: give more data or a larger calibration split")
        return texts

    def calibration_reader(self, method: str, on_batch: Callable[[int], None] | None = None):
        """(a CalibrationDataReader over the calibration split, its example count), for text or tensor bundles."""
        from edgeshrink.compress.calibration import TensorCalibrationReader, TextCalibrationReader

        batch_size = self.config.calibration_batch_size
        if self.encode is not None:
            texts = self.require_calibration(method)
            return TextCalibrationReader(self.encode, texts, batch_size, on_batch=on_batch), len(texts)
        if self.calibration_inputs is None:
            raise EdgeshrinkError(f"{method} needs calibration data: this bundle records no data split, pass --data")
        inputs = self.calibration_inputs[: self.config.calibration_samples]
        if len(inputs) < MIN_CALIBRATION_EXAMPLES:
            raise EdgeshrinkError(f"{method} needs at least {MIN_CALIBRATION_EXAMPLES} calibration examples, "
                                  f"got {len(inputs)}: give more data or a larger calibration split")
        (name,) = [spec["name"] for spec in self.manifest["inputs"]]
        return TensorCalibrationReader(name, inputs, batch_size, on_batch=on_batch), len(inputs)


METHODS: dict[str, Callable[[QuantContext], dict]] = {}


def register(name: str):
    def wrap(fn: Callable[[QuantContext], dict]) -> Callable[[QuantContext], dict]:
        METHODS[name] = fn
        return fn

    return wrap


def _split_for(manifest: dict, data):
    """The bundle's own split of its data: the recorded data, or ``data``; refused unless it gives the recorded hash."""
    from edgeshrink.data import load_data
    from edgeshrink.data.provenance import data_to_read, split_as_recorded

    recorded = manifest.get("split")
    examples = load_data(data_to_read(recorded, data, "this bundle"))
    _check_data_kind(manifest, examples)
    return split_as_recorded(examples, recorded, "this bundle")


def _check_data_kind(manifest: dict, examples) -> None:
    """Text bundles take text data; tensor bundles take image arrays of their input shape."""
    from edgeshrink.data.images import ImageExamples

    images = isinstance(examples, ImageExamples)
    if manifest["task"] == "text-classification" and images:
        raise EdgeshrinkError(f"this bundle takes text; data {examples.name!r} is images")
    if manifest["task"] != "text-classification":
        if not images:
            raise EdgeshrinkError(f"this bundle takes tensors; data {examples.name!r} is text")
        want = [spec["shape"][1:] for spec in manifest["inputs"]]
        if len(want) != 1 or list(examples.inputs.shape[1:]) != list(want[0]):
            raise EdgeshrinkError(f"this bundle takes inputs of shape {want}; data {examples.name!r} has "
                                  f"{list(examples.inputs.shape[1:])}")


def quantize(bundle: str | Path, out: str | Path, config: QuantConfig, data=None, force: bool = False,
             progress: Callable | None = None) -> dict:
    """Quantize ``bundle`` into a new bundle at ``out``; return the new manifest."""
    from edgeshrink.compress.evaluate import evaluate_pair, weight_precisions
    from edgeshrink.export.bundle import write_manifest
    from edgeshrink.runtime import load

    progress = progress or (lambda *a, **k: None)
    bundle, out = Path(bundle), Path(out)
    if out.absolute().resolve() == bundle.absolute().resolve():
        raise EdgeshrinkError("--out must be a new directory, not the input bundle")
    source_manifest = read_manifest(bundle, verify=True)
    previous = source_manifest.get("quantization")
    if previous:
        same = " with the same method" if previous["method"] == config.method else f" ({previous['method']})"
        raise EdgeshrinkError(f"{bundle} is already quantized{same}; quantize its fp32 parent instead")
    if config.method not in METHODS:
        raise EdgeshrinkError(f"unknown method {config.method!r}; known: {', '.join(METHODS)}")
    if source_manifest.get("task") == "text-generation":  # an LLM bundle: compress/llm_quantize.py
        from edgeshrink.compress.llm_quantize import quantize_llm

        return quantize_llm(bundle, out, config, data=data, force=force, progress=progress)
    if config.grid != "auto" or config.head_bits is not None:
        raise EdgeshrinkError("grid and head_bits apply to LLM bundles (a GGUF's grid, the LM head); "
                              f"{bundle} is a {source_manifest.get('task')} bundle")
    check_output_dir(out, force)
    text = source_manifest["task"] == "text-classification"
    # Tensor bundles are scored and calibrated too when they record their split (or data is given).
    wants_split = config.evaluate or config.method in ("static-int8", "auto")
    split = _split_for(source_manifest, data) if wants_split and (text or source_manifest.get("split") or data) \
        else None
    source = load(bundle, verify=False)

    with atomic_output_dir(out, force) as tmp:
        work = Path(tempfile.mkdtemp(prefix="_work-", dir=tmp))  # no name a manifest could list beforehand
        # ONNX Runtime writes beside the model it is given (model-inferred.onnx), following any symlink there:
        # it gets a private copy of the bundle, never the source. Only the files the manifest lists are copied.
        private = work / "source"
        copy_listed_files(bundle, [*source_manifest["files"], MANIFEST_NAME], private)
        copy_listed_files(private, [name for name in source_manifest["files"] if name != "model.onnx"], tmp)
        ctx = QuantContext(source_onnx=private / "model.onnx", output_onnx=tmp / "model.onnx", work_dir=work,
                           config=config, types=config.resolved(), manifest=source_manifest,
                           encode=source.encode if text else None,
                           calibration_texts=split.calibration.texts if split and text else [],
                           calibration_labels=split.calibration.labels if split else [], progress=progress,
                           calibration_inputs=split.calibration.inputs if split and not text else None)
        started = time.perf_counter()
        details = METHODS[config.method](ctx)
        seconds = time.perf_counter() - started
        shutil.rmtree(work)
        progress("quantized")
        quantization = {"method": config.method, "config": config.to_dict(), "resolved": ctx.types,
                        "seconds": round(seconds, 1),
                        "calibration_split_sha256": split.sha256 if split and config.method in ("static-int8", "auto")
                        else None,
                        "parent": {"path": str(bundle.resolve()),
                                   "model_sha256": source_manifest["files"]["model.onnx"]["sha256"],
                                   "size_bytes": source_manifest["size_bytes"],
                                   "model_size_bytes": source_manifest["files"]["model.onnx"]["size_bytes"]},
                        "model_size_ratio": (tmp / "model.onnx").stat().st_size
                        / source_manifest["files"]["model.onnx"]["size_bytes"],
                        "weights": weight_precisions(tmp / "model.onnx"), **details}
        fields = {k: v for k, v in source_manifest.items()
                  if k not in ("files", "size_bytes", "schema_version", "kind", "edgeshrink_version", "created_at",
                               "created_on")}
        fields["quantization"] = quantization
        manifest = write_manifest(tmp, fields)  # the bundle is complete here; scoring reads it
        if split is not None and config.evaluate:
            quantization["evaluation"] = evaluate_pair(source, tmp, split.test, progress)
            manifest = write_manifest(tmp, fields)
    return manifest

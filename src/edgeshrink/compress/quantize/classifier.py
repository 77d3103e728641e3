"""The classifier part of ``quantize`` (text- or tensor-classification bundles): one of METHODS, run by ORT on
a private copy of the model, calibrated on the bundle's calibration split and scored on its test split.

    from edgeshrink.compress import quantize, QuantConfig
    manifest = quantize("runs/bundle", "runs/bundle-int8", QuantConfig(method="dynamic-int8"))

The manifest records the method's parameters as resolved for the target, the calibration split hash, and
accuracy on the test split next to the source bundle's (same examples, McNemar test on the pairs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgeshrink._files import copy_listed_files
from edgeshrink.compress.quantize.config import QuantConfig
from edgeshrink.compress.quantize.mixed import search
from edgeshrink.compress.quantize.passes import QuantContext, dynamic, fp16, int4, static
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.bundle import MANIFEST_NAME
from edgeshrink.runtime.tasks import runtime_task

METHODS: dict[str, Callable[[QuantContext], dict]] = {
    "dynamic-int8": dynamic, "static-int8": static, "int4-weight": int4, "fp16": fp16, "auto": search}
CALIBRATED = ("static-int8", "auto")  # the methods that read the calibration split


class ClassifierQuantization:
    """The classifier part of ``quantize``: the data split read (and checked) first, then the method on a
    private copy of the bundle, then test-split accuracy of both bundles."""

    drops = ()

    def __init__(self, bundle: Path, manifest: dict, config: QuantConfig, data, progress):
        from edgeshrink.runtime import load

        self.bundle, self.manifest, self.config, self.progress = bundle, manifest, config, progress
        self.text = runtime_task(manifest["task"]).tokenized
        # Tensor bundles are scored and calibrated too when they record their split (or data is given).
        wants_split = config.evaluate or config.method in CALIBRATED
        self.split = (split_for(manifest, data, self.text)
                      if wants_split and (self.text or manifest.get("split") or data) else None)
        self.source = load(bundle, verify=False)

    def run(self, work: Path, model_out: Path) -> dict:
        # ONNX Runtime writes beside the model it is given (model-inferred.onnx), following any symlink there:
        # it gets a private copy of the bundle, never the source. Only the files the manifest lists are copied.
        private, manifest, split, text = work / "source", self.manifest, self.split, self.text
        copy_listed_files(self.bundle, [*manifest["files"], MANIFEST_NAME], private)
        ctx = QuantContext(source_onnx=private / "model.onnx", output_onnx=model_out, work_dir=work,
                           config=self.config, types=self.config.resolved(), manifest=manifest,
                           encode=self.source.encode if text else None,
                           calibration_texts=split.calibration.texts if split and text else [],
                           calibration_labels=split.calibration.labels if split else [], progress=self.progress,
                           calibration_inputs=split.calibration.inputs if split and not text else None)
        details = METHODS[self.config.method](ctx)
        model = manifest["files"]["model.onnx"]
        return {"resolved": ctx.types,
                "calibration_split_sha256": split.sha256 if split and self.config.method in CALIBRATED else None,
                "parent": {"path": str(self.bundle.resolve()), "model_sha256": model["sha256"],
                           "size_bytes": manifest["size_bytes"], "model_size_bytes": model["size_bytes"]},
                "model_size_ratio": model_out.stat().st_size / model["size_bytes"], **details}

    def evaluate(self, out_dir: Path) -> dict | None:
        from edgeshrink.compress.evaluate import evaluate_pair

        return None if self.split is None else evaluate_pair(self.source, out_dir, self.split.test, self.progress)

    @staticmethod
    def describe(manifest: dict, out: Path) -> str:
        """The lines the CLI prints."""
        q = manifest["quantization"]
        line = (f"bundle {out}: {q['method']} ({q['resolved']['target']}), {manifest['size_bytes'] / 1e6:.1f} MB "
                f"= {100 * manifest['size_bytes'] / q['parent']['size_bytes']:.1f}% of the source (model.onnx: "
                f"{100 * q['model_size_ratio']:.1f}%), {q['seconds']:.0f} s")
        ev = q.get("evaluation")
        if ev:
            line += (f"; test accuracy {100 * ev['accuracy']['value']:.2f}% vs source "
                     f"{100 * ev['source_accuracy']['value']:.2f}% (drop {ev['accuracy_drop_points']:.2f} pt, "
                     f"McNemar p={ev['mcnemar']['p_value']:.3f})")
        if q["method"] == "auto":
            line += (f"\nauto: {q['message']}; precision counts {q['chosen']['counts']}; "
                     f"search {q['search_seconds']:.0f} s")
        return line


def split_for(manifest: dict, data, text: bool):
    """The bundle's own split of its data: the recorded data, or ``data``; refused unless it gives the recorded
    hash, or when its kind is not the bundle's (text for a tokenized bundle, arrays of its input shape else)."""
    from edgeshrink.data import load_data
    from edgeshrink.data.images import ImageExamples
    from edgeshrink.data.provenance import data_to_read, split_as_recorded

    recorded = manifest.get("split")
    examples = load_data(data_to_read(recorded, data, "this bundle"))
    images = isinstance(examples, ImageExamples)
    if text and images:
        raise EdgeshrinkError(f"this bundle takes text; data {examples.name!r} is images")
    if not text:
        if not images:
            raise EdgeshrinkError(f"this bundle takes tensors; data {examples.name!r} is text")
        want = [spec["shape"][1:] for spec in manifest["inputs"]]
        if len(want) != 1 or list(examples.inputs.shape[1:]) != list(want[0]):
            raise EdgeshrinkError(f"this bundle takes inputs of shape {want}; data {examples.name!r} has "
                                  f"{list(examples.inputs.shape[1:])}")
    return split_as_recorded(examples, recorded, "this bundle")

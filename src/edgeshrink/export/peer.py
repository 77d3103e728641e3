"""The peer pipeline: what a user would do instead of edgeshrink, packed as a bundle to compare against.

    from edgeshrink.export.peer import peer_bundle
    manifest = peer_bundle("runs/cloud", "runs/peer")

That is the cloud model exported by optimum-onnx as is (no edgeshrink graph passes) and quantized by
optimum's ``ORTQuantizer`` with ``AutoQuantizationConfig.avx2(is_static=False)``: ONNX Runtime dynamic
INT8, the documented recipe for CPUs. Per-channel weight scales are on by default (they measured 0.6-0.9
point more accurate than per-tensor here), so the peer is the stronger of optimum's two presets.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeshrink._files import atomic_output_dir, check_output_dir
from edgeshrink._quiet import quiet
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.bundle import MANIFEST_NAME, read_manifest

PEER_NAME = "optimum-onnx export + ORT dynamic INT8"


def peer_bundle(model: str | Path, out: str | Path, per_channel: bool = True, force: bool = False) -> dict:
    """Build the peer pipeline's bundle of ``model`` (a fine-tuned HF directory) at ``out``; return its manifest."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from edgeshrink.compress.evaluate import weight_precisions
    from edgeshrink.export import ExportConfig, export
    from edgeshrink.export.bundle import write_manifest

    out = Path(out)
    check_output_dir(out, force)
    with atomic_output_dir(out, force) as tmp:
        fp32 = tmp / "_fp32"
        manifest = export(model, fp32, ExportConfig(optimize="none"))
        qconfig = AutoQuantizationConfig.avx2(is_static=False, per_channel=per_channel)
        try:
            with quiet():
                quantizer = ORTQuantizer.from_pretrained(str(fp32), file_name="model.onnx")
                quantizer.quantize(save_dir=str(tmp / "_int8"), quantization_config=qconfig)
        except Exception as exc:  # optimum and onnxruntime raise many types
            raise EdgeshrinkError(f"optimum quantization of {model} failed: {str(exc).splitlines()[0]}") from None
        quantized = next((tmp / "_int8").glob("*.onnx"), None)
        if quantized is None:
            raise EdgeshrinkError("optimum's ORTQuantizer wrote no ONNX file")
        shutil.move(quantized, tmp / "model.onnx")
        for path in fp32.iterdir():
            if path.is_file() and path.name not in (MANIFEST_NAME, "model.onnx"):
                shutil.move(path, tmp / path.name)
        shutil.rmtree(fp32)
        shutil.rmtree(tmp / "_int8")
        fields = {k: v for k, v in manifest.items()
                  if k not in ("files", "size_bytes", "schema_version", "kind", "edgeshrink_version", "created_at",
                               "created_on", "validation")}
        fields["peer"] = {"pipeline": PEER_NAME, "quantizer": "optimum ORTQuantizer",
                          "config": f"AutoQuantizationConfig.avx2(is_static=False, per_channel={per_channel})",
                          "weight_bytes_by_type": weight_precisions(tmp / "model.onnx")["bytes_by_type"]}
        fields["quantization"] = {"method": "dynamic-int8", "by": "peer pipeline (optimum)",
                                  "parent": {"size_bytes": manifest["size_bytes"]}}
        manifest = write_manifest(tmp, fields)
    read_manifest(out, verify=True, trust=[])  # its own fresh output: not signed yet
    return manifest

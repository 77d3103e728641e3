"""Quantize a device bundle: the verb, its shared skeleton, and one part per kind of bundle.

    from edgeshrink.compress import quantize, QuantConfig, LLMQuantConfig
    manifest = quantize("runs/bundle", "runs/bundle-int8", QuantConfig(method="dynamic-int8"))
    manifest = quantize("runs/smollm2-fp32", "runs/smollm2-int4", LLMQuantConfig(method="int4-weight"))

The task registry (edgeshrink/tasks.py) names, for the bundle's task, the config class and the part:
    classifier.py  text- and tensor-classification bundles: METHODS (passes.py's ORT INT8, INT4 and FP16
                   passes and calibration, mixed.py's accuracy-aware mix of them), test-split scores
    decoder.py     text-generation bundles: INT4 weights on the GGUF's own grid (gguf_grid.py) or rounded
The part refuses before anything is written, runs in a work directory, and scores the source and the result;
the manifest gets a ``quantization`` record (method, config, seconds, every weight's precision, the part's facts).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edgeshrink import tasks
from edgeshrink._files import atomic_output_dir, check_output_dir, copy_listed_files
from edgeshrink.compress.quantize.classifier import METHODS
from edgeshrink.compress.quantize.config import LLMQuantConfig, QuantConfig
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.bundle import read_manifest

__all__ = ["METHODS", "LLMQuantConfig", "QuantConfig", "quantize"]



def quantize(bundle: str | Path, out: str | Path, config: QuantConfig | LLMQuantConfig, *, data=None,
             force: bool = False, progress: Callable | None = None) -> dict:
    """Quantize ``bundle`` into a new bundle at ``out`` (written atomically); return the new manifest."""
    from edgeshrink.compress.evaluate import weight_precisions
    from edgeshrink.export.bundle import WRITTEN_KEYS, write_manifest

    progress = progress or (lambda *a, **k: None)
    bundle, out = Path(bundle), Path(out)
    if out.absolute().resolve() == bundle.absolute().resolve():
        raise EdgeshrinkError("--out must be a new directory, not the input bundle")
    source_manifest = read_manifest(bundle, verify=True)
    impl = tasks.of_bundle(bundle).implementation("quantize")
    config = impl.check_config(config)
    previous = source_manifest.get("quantization")
    if previous:
        same = " with the same method" if previous["method"] == config.method else f" ({previous['method']})"
        raise EdgeshrinkError(f"{bundle} is already quantized{same}; quantize its fp32 parent instead")
    check_output_dir(out, force)
    part = impl.function()(bundle, source_manifest, config, data, progress)

    with atomic_output_dir(out, force) as tmp:
        copy_listed_files(bundle, [name for name in source_manifest["files"] if not name.startswith("model.onnx")],
                          tmp)
        work = Path(tempfile.mkdtemp(prefix="_work-", dir=tmp))  # no name a manifest could list beforehand
        started = time.perf_counter()
        details = part.run(work, tmp / "model.onnx")
        seconds = time.perf_counter() - started
        shutil.rmtree(work)
        progress("quantized")
        quantization = {"method": config.method, "config": config.to_dict(), "seconds": round(seconds, 1),
                        **details, "weights": weight_precisions(tmp / "model.onnx")}
        fields = {k: v for k, v in source_manifest.items() if k not in WRITTEN_KEYS + part.drops}
        fields["quantization"] = quantization
        manifest = write_manifest(tmp, fields)  # the bundle is complete here; scoring reads it
        if config.evaluate and (evaluation := part.evaluate(tmp)) is not None:
            quantization["evaluation"] = evaluation
            manifest = write_manifest(tmp, fields)
    return manifest

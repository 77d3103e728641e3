"""Export a model to ONNX, validate it against the source, and pack it as a device bundle.

    from edgeshrink.export import export, ExportConfig, LLMExportConfig
    export("runs/cloud", "runs/bundle", ExportConfig(optimize="fusion"))   # a text classifier (onnx.py)
    export("runs/cnn", "runs/cnn-bundle")                                   # a CNN: a tensor bundle (onnx.py)
    export("smollm2", "runs/smollm2-fp32", LLMExportConfig())               # a decoder: KV cache (llm.py)

``export`` asks the task registry (edgeshrink/tasks.py) which exporter takes the model and which config
class applies; config.py holds the configs, bundle.py and validate.py what every exporter shares,
triton.py a Triton model repository made from a classifier bundle, peer.py the peer pipeline's bundle.
"""

from __future__ import annotations

from pathlib import Path

from edgeshrink.export.config import ExportConfig, LLMExportConfig
from edgeshrink.export.onnx import export_module

__all__ = ["ExportConfig", "LLMExportConfig", "export", "export_module"]


def export(model: str | Path, out: str | Path, config: ExportConfig | LLMExportConfig | None = None, *,
           force: bool = False, progress=None) -> dict:
    """Export ``model`` to a validated device bundle at ``out``; return its manifest. ``config`` is the config
    class of the model's task (None: its defaults); another task's is refused in one line."""
    from edgeshrink import tasks

    impl = tasks.of_model(model).implementation("export")
    return impl.function()(model, out, impl.check_config(config), force=force, progress=progress)

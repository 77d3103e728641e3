"""Export a model to ONNX, validate it against the source, and pack it as a device bundle."""

from edgeshrink.export.config import ExportConfig
from edgeshrink.export.onnx import export, export_module

__all__ = ["ExportConfig", "export", "export_module"]

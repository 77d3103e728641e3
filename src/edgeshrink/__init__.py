"""edgeshrink: turn a cloud model into a device model and route each request to the one that should answer it.

Importing this package is cheap: torch, transformers and onnx are imported inside the functions
that need them. The public API lives in the stage packages::

    from edgeshrink.export import export, ExportConfig
    from edgeshrink.runtime import load
    from edgeshrink.bench import bench, BenchConfig
"""

__version__ = "0.1.0"

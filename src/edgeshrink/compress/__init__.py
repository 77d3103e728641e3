"""Compression: quantization now; distillation and pruning come with their issue."""

from edgeshrink.compress.quantize import METHODS, QuantConfig, quantize
from edgeshrink.compress import methods as _methods  # noqa: E402,F401  (fills METHODS; imports nothing heavy)

__all__ = ["METHODS", "QuantConfig", "quantize"]

"""Compression: quantization now; distillation and pruning come with their issue."""

from edgeshrink.compress.quantize import METHODS, QuantConfig, quantize

__all__ = ["METHODS", "QuantConfig", "quantize"]

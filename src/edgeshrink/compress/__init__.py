"""Compression, by stage: quantize/ (a bundle's weights to fewer bits: the verb, its skeleton and one part per
kind of bundle), structured and unstructured pruning (prune, channels, vocab, sparsify), distillation (distill,
with trainer.py's training loop and augment.py's extra examples), and the scores they share (evaluate.py for
classifiers, lm_eval.py for language models)."""

from edgeshrink.compress.quantize import METHODS, LLMQuantConfig, QuantConfig, quantize

__all__ = ["METHODS", "LLMQuantConfig", "QuantConfig", "quantize"]

"""Silence the chatty libraries (optimum, torch.onnx, onnxruntime's quantizers) while they work for us."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

_LOGGERS = ("optimum", "transformers", "torch.onnx", "onnxruntime", "onnxruntime.quantization",
            "onnxruntime.quantization.matmul_nbits_quantizer")


@contextlib.contextmanager
def quiet():
    """Warnings and stdout/stderr chatter (progress bars of onnxruntime-genai's builder) are not the user's
    business on success; errors still propagate as exceptions."""
    saved = {name: logging.getLogger(name).level for name in ("", *_LOGGERS)}  # "": the root logger
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        for name in saved:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)

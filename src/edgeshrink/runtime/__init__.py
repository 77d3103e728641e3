"""The device runtime: load a bundle and predict with onnxruntime, tokenizers and numpy only.

    from edgeshrink.runtime import load
    model = load("runs/demo/bundle", threads=1)
    result = model.predict(["a gorgeous, witty film"])
    result.labels, result.probabilities
    llm = load("runs/smollm2-bundle")             # a language-model bundle: a streaming Generator
    llm.generate("The capital of France is", max_new_tokens=16).text

Nothing here imports torch, transformers or onnx (a test checks it).
"""

from edgeshrink.runtime.bundle import read_manifest
from edgeshrink.runtime.predictor import Predictions, Predictor, load

__all__ = ["Predictions", "Predictor", "load", "read_manifest"]

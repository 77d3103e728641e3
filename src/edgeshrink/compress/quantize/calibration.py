"""Calibration inputs for static quantization: the calibration split, tokenized on the device's own
tokenizer (or, for tensor bundles, its arrays as they are), streamed in batches so memory stays bounded
however many samples are used."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class TextCalibrationReader:
    """An onnxruntime CalibrationDataReader over texts (``get_next`` returns one batch of feeds)."""

    def __init__(self, encode: Callable[[list[str]], tuple[dict[str, np.ndarray], list[bool]]], texts: list[str],
                 batch_size: int, on_batch: Callable[[int], None] | None = None):
        self.encode = encode
        self.texts = sorted(texts, key=len)  # similar lengths per batch: few padding positions calibrated
        self.batch_size = batch_size
        self.on_batch = on_batch
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.texts):
            return None
        batch = self.texts[self.position:self.position + self.batch_size]
        self.position += len(batch)
        if self.on_batch:
            self.on_batch(len(batch))
        return self.encode(batch)[0]

    def rewind(self) -> None:
        self.position = 0


class TensorCalibrationReader:
    """An onnxruntime CalibrationDataReader over an array of inputs (tensor bundles, one graph input)."""

    def __init__(self, input_name: str, inputs: np.ndarray, batch_size: int,
                 on_batch: Callable[[int], None] | None = None):
        self.input_name = input_name
        self.inputs = inputs
        self.batch_size = batch_size
        self.on_batch = on_batch
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.inputs):
            return None
        batch = self.inputs[self.position:self.position + self.batch_size]
        self.position += len(batch)
        if self.on_batch:
            self.on_batch(len(batch))
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        self.position = 0
